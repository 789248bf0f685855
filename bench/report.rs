//! Percentile tables, medians over runs, ratios to the references, the JSON summary
//! and `.hgrm` percentile files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::measured::RunResult;
pub use crate::measured::{Percentiles, COLUMNS};

/// µs as ms with the digits that matter: `0.215`, `1.45`, `20`.
pub fn ms(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.0}", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2}", us / 1000.0)
    } else {
        format!("{:.3}", us / 1000.0)
    }
}

/// One line per run on stdout.
pub fn print_run(r: &RunResult) {
    let l = &r.latency;
    let mut s = format!(
        "{} run {}: {} at {}/s  p50 {} p99 {} p99.9 {} max {} ms  {:.0} msgs/s ({:.1}/frame)  server {:.0}% CPU {:.2} µs/msg, RSS max {:.1} MB",
        r.target,
        r.run,
        r.shape,
        r.rate,
        ms(l.p50),
        ms(l.p99),
        ms(l.p999),
        ms(l.max),
        r.msgs_per_s,
        r.msgs_per_frame,
        r.server.cpu_util * 100.0,
        r.server.cpu_us_per_msg,
        r.server.rss_max_kb as f64 / 1024.0,
    );
    if let (Some(e), Some(c)) = (r.expected, r.complete) {
        let _ = write!(
            s,
            "  received {}/{} expected{}",
            r.counts.ticks,
            e,
            if c { "" } else { " (INCOMPLETE)" }
        );
    }
    let k = &r.counts;
    if k.gaps + k.holes + k.duplicates > 0 || !k.closes.is_empty() {
        let _ = write!(
            s,
            "  gaps {} ({} ticks) holes {} ({} ticks) dups {} closes {:?}",
            k.gaps, k.gap_ticks, k.holes, k.hole_ticks, k.duplicates, k.closes
        );
    }
    if !r.valid {
        let _ = write!(s, "  INVALID: {}", r.invalid.join("; "));
    }
    println!("{s}");
}

/// Writes `NAME.hgrm`: the percentile distribution as HdrHistogram prints it.
pub fn write_hgrm_file(path: &Path, h: &Histogram<u64>) -> anyhow::Result<()> {
    let mut s = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let inv = if q < 1.0 {
                1.0 / (1.0 - q)
            } else {
                f64::INFINITY
            };
            let _ = writeln!(
                s,
                "{:12.3} {:14.12} {:10} {:14.2}",
                v.value_iterated_to() as f64 / 1e6,
                q,
                total,
                inv
            );
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]",
        h.mean() / 1e6,
        h.stdev() / 1e6,
        h.max() as f64 / 1e6,
        h.len(),
    );
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

/// Writes the run's `.hgrm` (values in ms).
pub fn write_hgrm(dir: &Path, r: &RunResult) -> anyhow::Result<()> {
    write_hgrm_file(
        &dir.join(format!("{}-run{}.hgrm", r.target, r.run)),
        &r.hist,
    )
}

fn med(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians over the runs of one target.
#[derive(Clone, Debug, Serialize)]
pub struct Medians {
    /// Target label.
    pub target: String,
    /// Runs (valid ones; all runs when none was valid).
    pub runs: usize,
    /// Valid runs.
    pub valid_runs: usize,
    /// Every run of the target, valid or not.
    pub all_runs: usize,
    /// Median of each percentile, µs.
    pub latency: Percentiles,
    /// Median delivered msgs/s.
    pub msgs_per_s: f64,
    /// Median frames/s.
    pub frames_per_s: f64,
    /// Median bytes/s.
    pub bytes_per_s: f64,
    /// Median bytes per delivered message (every data frame's payload).
    pub bytes_per_msg: f64,
    /// Median server CPU share of a core.
    pub cpu_util: f64,
    /// Median server CPU µs per message.
    pub cpu_us_per_msg: f64,
    /// Median highest RSS, kB.
    pub rss_max_kb: f64,
    /// Conflated ticks (all runs).
    pub conflated: u64,
    /// Gaps + holes (all runs).
    pub gaps_and_holes: u64,
}

/// Medians per target, in first-seen order.
pub fn medians(runs: &[RunResult]) -> Vec<Medians> {
    let mut order: Vec<String> = Vec::new();
    for r in runs {
        if !order.contains(&r.target) {
            order.push(r.target.clone());
        }
    }
    order
        .into_iter()
        .map(|t| {
            let all: Vec<&RunResult> = runs.iter().filter(|r| r.target == t).collect();
            let valid: Vec<&RunResult> = all.iter().copied().filter(|r| r.valid).collect();
            let use_: Vec<&RunResult> = if valid.is_empty() {
                all.clone()
            } else {
                valid.clone()
            };
            let m = |f: &dyn Fn(&RunResult) -> f64| med(use_.iter().map(|r| f(r)).collect());
            Medians {
                target: t,
                runs: use_.len(),
                valid_runs: valid.len(),
                all_runs: all.len(),
                latency: Percentiles {
                    count: m(&|r| r.latency.count as f64) as u64,
                    p50: m(&|r| r.latency.p50),
                    p90: m(&|r| r.latency.p90),
                    p99: m(&|r| r.latency.p99),
                    p999: m(&|r| r.latency.p999),
                    p9999: m(&|r| r.latency.p9999),
                    max: m(&|r| r.latency.max),
                    mean: m(&|r| r.latency.mean),
                },
                msgs_per_s: m(&|r| r.msgs_per_s),
                frames_per_s: m(&|r| r.frames_per_s),
                bytes_per_s: m(&|r| r.bytes_per_s),
                bytes_per_msg: m(&|r| r.bytes_per_msg),
                cpu_util: m(&|r| r.server.cpu_util),
                cpu_us_per_msg: m(&|r| r.server.cpu_us_per_msg),
                rss_max_kb: m(&|r| r.server.rss_max_kb as f64),
                conflated: all.iter().map(|r| r.counts.conflated).sum(),
                gaps_and_holes: all.iter().map(|r| r.counts.gaps + r.counts.holes).sum(),
            }
        })
        .collect()
}

/// Prints the table of medians.
pub fn print_medians(title: &str, ms_: &[Medians]) {
    println!("\n{title} (latency in ms, medians over runs)");
    let mut head = format!("{:<22}", "target");
    for c in COLUMNS {
        let _ = write!(head, "{c:>9}");
    }
    let _ = write!(
        head,
        "{:>12}{:>11}{:>12}{:>7}{:>9}{:>9}",
        "msgs/s", "frames/s", "MB/s", "CPU%", "µs/msg", "RSS MB"
    );
    println!("{head}");
    for m in ms_ {
        let mut line = format!(
            "{:<22}",
            format!("{} ({}/{})", m.target, m.valid_runs, m.all_runs)
        );
        for v in m.latency.values() {
            let _ = write!(line, "{:>9}", ms(v));
        }
        let _ = write!(
            line,
            "{:>12.0}{:>11.0}{:>12.2}{:>7.0}{:>9.3}{:>9.1}",
            m.msgs_per_s,
            m.frames_per_s,
            m.bytes_per_s / 1e6,
            m.cpu_util * 100.0,
            m.cpu_us_per_msg,
            m.rss_max_kb / 1024.0
        );
        println!("{line}");
    }
}

/// tickstream ÷ reference, for each percentile and for CPU per message.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    /// Numerator.
    pub target: String,
    /// Denominator.
    pub reference: String,
    /// Per percentile, in [`COLUMNS`] order.
    pub latency: BTreeMap<String, f64>,
    /// CPU µs per message.
    pub cpu_per_msg: f64,
}

/// Ratios of `target` over each reference (pairs given by label).
pub fn ratios(ms_: &[Medians], pairs: &[(&str, &str)]) -> Vec<Ratio> {
    let get = |l: &str| ms_.iter().find(|m| m.target == l);
    pairs
        .iter()
        .filter_map(|(a, b)| {
            let (a, b) = (get(a)?, get(b)?);
            let mut latency = BTreeMap::new();
            for (i, c) in COLUMNS.iter().enumerate() {
                let d = b.latency.values()[i];
                latency.insert(
                    (*c).to_owned(),
                    if d > 0.0 {
                        a.latency.values()[i] / d
                    } else {
                        f64::NAN
                    },
                );
            }
            Some(Ratio {
                target: a.target.clone(),
                reference: b.target.clone(),
                latency,
                cpu_per_msg: if b.cpu_us_per_msg > 0.0 {
                    a.cpu_us_per_msg / b.cpu_us_per_msg
                } else {
                    f64::NAN
                },
            })
        })
        .collect()
}

fn ratio(r: f64) -> String {
    if r.abs() < 0.01 && r != 0.0 {
        format!("{r:.5}")
    } else {
        format!("{r:.2}")
    }
}

/// Prints ratios.
pub fn print_ratios(rs: &[Ratio]) {
    for r in rs {
        let lat: Vec<String> = COLUMNS
            .iter()
            .map(|c| format!("{c} {}", ratio(r.latency[*c])))
            .collect();
        println!(
            "{} ÷ {}: {}; CPU per message {}",
            r.target,
            r.reference,
            lat.join(", "),
            ratio(r.cpu_per_msg)
        );
    }
}

/// The machine, for the summary.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPUs online.
    pub cpus: usize,
    /// Model name.
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    /// Load average at the start.
    pub loadavg: String,
}

/// Reads what /proc says about the machine.
pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        loadavg: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// Writes `summary.json`.
pub fn write_summary(dir: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let p = dir.join("summary.json");
    std::fs::write(&p, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", p.display()))?;
    println!("results in {}", dir.display());
    Ok(())
}
