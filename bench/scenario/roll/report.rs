//! What `roll` prints and writes: the windows' percentiles, the checks, the verdict,
//! `summary.json`, `steady.hgrm` / `roll.hgrm` and `roll.svg` (latency per second with
//! the SIGTERMs marked).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::{Args, Measured, AFTER, PHASES, ROLL, STEADY};

/// The plot a row of RESULTS.md links.
pub const PLOT: &str = "roll.svg";

fn pct(h: &Histogram<u64>) -> Value {
    let q = |x: f64| h.value_at_quantile(x) as f64 / 1e3;
    json!({
        "count": h.len(),
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": h.max() as f64 / 1e3,
    })
}

/// Why the run cannot be judged: the bench's own CPU or timer was the limit.
fn invalid_reasons(a: &Args, m: &Measured) -> Vec<String> {
    let mut out = Vec::new();
    let bound = a.max_client_lag.as_micros() as u64;
    for p in [STEADY, ROLL] {
        let name = PHASES[p as usize];
        let cpu = m.cpu_share(p);
        if cpu > 0.9 {
            out.push(format!(
                "the bench used {:.0} % of its CPUs in the {name} window",
                cpu * 100.0
            ));
        }
        let lag = m.lag(p).value_at_quantile(0.99);
        if lag > bound {
            out.push(format!(
                "the bench's timer lagged {:.1} ms (p99) in the {name} window, past --max-client-lag",
                lag as f64 / 1e3
            ));
        }
    }
    out
}

/// The checks that fail the run, each with what it found.
fn failures(a: &Args, m: &Measured, restarted: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let s = &m.stats;
    if s.holes > 0 {
        out.push(format!(
            "{} holes ({} ticks missing, no gap)",
            s.holes, s.hole_ticks
        ));
    }
    if s.duplicates > 0 {
        out.push(format!("{} duplicates", s.duplicates));
    }
    if !m.all_moved {
        out.push("not every client of a rolled node moved".into());
    }
    if restarted.len() != m.steps.len() || m.steps.is_empty() {
        out.push(format!(
            "{} nodes rolled, {} with a new pid",
            m.steps.len(),
            restarted.len()
        ));
    }
    for e in &m.errors {
        out.push(format!("a connection stopped: {e}"));
    }
    let (steady, roll) = (m.latency(STEADY), m.latency(ROLL));
    let bound = steady.value_at_quantile(0.99) + a.latency_slack.as_micros() as u64;
    if roll.value_at_quantile(0.99) > bound {
        out.push(format!(
            "roll p99 {:.2} ms > steady p99 + slack {:.2} ms",
            roll.value_at_quantile(0.99) as f64 / 1e3,
            bound as f64 / 1e3
        ));
    }
    out
}

fn print_tables(m: &Measured) {
    println!(
        "\n{:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "window", "ticks", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "cpu %", "lag p99"
    );
    for p in [STEADY, ROLL, AFTER] {
        let h = m.latency(p);
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1e3;
        println!(
            "{:<8} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7.0} {:>9.2}",
            PHASES[p as usize],
            h.len(),
            q(0.5),
            q(0.99),
            q(0.999),
            h.max() as f64 / 1e3,
            m.cpu_share(p) * 100.0,
            m.lag(p).value_at_quantile(0.99) as f64 / 1e3
        );
    }
    println!();
    for s in &m.steps {
        println!(
            "{}: SIGTERM at {:.1} s, {} clients on it, {} moved, {} reconnected, all moved after {}",
            s.node,
            s.sigterm_s,
            s.clients,
            s.moved,
            s.reconnected,
            s.until_all_moved_ms
                .map_or("-".into(), |v| format!("{v:.0} ms"))
        );
    }
    let st = &m.stats;
    println!(
        "holes {}  duplicates {}  gaps {:?}  moves {}  move failures {}  reconnects {}  \
         repeats dropped by the clients in the overlap {}",
        st.holes,
        st.duplicates,
        st.gaps,
        st.moves,
        st.move_failed,
        st.reconnects,
        st.dropped_in_overlap
    );
    for (e, n) in &st.move_errors {
        println!("  move failed {n}×: {e}");
    }
}

/// From the first SIGTERM until the last client of the last step had moved, ms.
fn overall_moved_ms(m: &Measured) -> Option<f64> {
    let first = m.steps.first()?.sigterm_s;
    m.steps
        .iter()
        .filter_map(|s| s.until_all_moved_ms.map(|v| s.sigterm_s * 1e3 + v))
        .reduce(f64::max)
        .map(|end| end - first * 1e3)
}

fn plot(out: &Path, m: &Measured) -> anyhow::Result<()> {
    let per = m.per_second();
    let p99: Vec<(f64, f64)> = per.iter().map(|&(s, p, _)| (s, p.max(0.001))).collect();
    let max: Vec<(f64, f64)> = per.iter().map(|&(s, _, x)| (s, x.max(0.001))).collect();
    let top = max.iter().map(|p| p.1).fold(1.0, f64::max);
    let low = p99.iter().map(|p| p.1).fold(f64::MAX, f64::min).min(top);
    let mut series = vec![
        ("p99 per second".to_owned(), p99),
        ("max per second".to_owned(), max),
    ];
    for s in &m.steps {
        series.push((
            format!("SIGTERM {}", s.node),
            vec![(s.sigterm_s, low), (s.sigterm_s, top)],
        ));
    }
    crate::plot::lines(
        &out.join(PLOT),
        "roll: tick latency per second, SIGTERMs marked",
        "seconds since the connections opened",
        "latency, ms",
        &series,
        true,
    )
}

/// Prints the results, writes the files; whether the run passed (and is valid).
pub fn report(
    a: &Args,
    out: &Path,
    started: SystemTime,
    m: &Measured,
    placement: Vec<crate::measured::Placement>,
    restarted: Vec<String>,
) -> anyhow::Result<bool> {
    print_tables(m);
    let invalid = invalid_reasons(a, m);
    let failed = failures(a, m, &restarted);
    crate::report::write_hgrm_file(&out.join("steady.hgrm"), &m.latency(STEADY))?;
    crate::report::write_hgrm_file(&out.join("roll.hgrm"), &m.latency(ROLL))?;
    plot(out, m)?;
    let verdict = if !invalid.is_empty() {
        "invalid"
    } else if failed.is_empty() {
        "pass"
    } else {
        "fail"
    };
    let summary = json!({
        "scenario": "roll",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "command_line": crate::scenario::command_line(std::env::args()),
        "started_unix": started.duration_since(UNIX_EPOCH)?.as_secs(),
        "started_utc": humantime::format_rfc3339_seconds(started).to_string(),
        "plot": PLOT,
        "machine": crate::report::machine(),
        "placement": placement,
        "load": {
            "connections": a.connections, "symbols": a.symbols,
            "per_connection": a.per_connection, "rate": a.rate,
            "msgs_per_s": a.rate * (a.connections * a.per_connection) as f64 / a.symbols as f64,
        },
        "windows": {
            "steady": pct(&m.latency(STEADY)), "roll": pct(&m.latency(ROLL)),
            "after": pct(&m.latency(AFTER)),
            "steady_s": m.phase_wall[STEADY as usize], "roll_s": m.roll_s,
        },
        "latency_slack_ms": a.latency_slack.as_secs_f64() * 1e3,
        "per_second": m.per_second().iter().map(|&(t, p99, max)| json!({"s": t, "p99_ms": p99, "max_ms": max})).collect::<Vec<_>>(),
        "checks": m.stats,
        "steps": m.steps,
        "all_moved": m.all_moved,
        "until_all_moved_ms": overall_moved_ms(m),
        "restarted": restarted,
        "script": m.script,
        "opened_s": m.opened_s,
        "client": {
            "cpu_share": {"steady": m.cpu_share(STEADY), "roll": m.cpu_share(ROLL)},
            "timer_lag": {"steady": pct(&m.lag(STEADY)), "roll": pct(&m.lag(ROLL))},
        },
        "valid": invalid.is_empty(),
        "invalid_reasons": invalid,
        "failures": failed,
        "verdict": verdict,
    });
    crate::report::write_summary(out, &summary)?;
    println!("verdict: {verdict}");
    for r in invalid.iter().chain(&failed) {
        println!("  {r}");
    }
    Ok(verdict == "pass")
}
