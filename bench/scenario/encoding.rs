//! `encoding`: the same load with `encoding=json` and `encoding=binary`: bytes per
//! message, CPU per message, latency.

use crate::common::{Common, FixedLoad, Target};
use crate::scenario::{finish, median, run_once, Ctx, Defaults, Load, RunResult};

/// JSON against binary frames.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:

  tickstream-bench encoding --spawn --shape 100x10/100 --rate 10000

Both runs get the same load, alternating over --runs. Binary frames are decoded by the \
load clients (kind, symbol, seq and ts of every record, with the same sequence checks as \
JSON); bytes per message count every data frame's payload. A server that does not offer \
`encoding=binary` is reported as such.")]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: FixedLoad,
}

/// The figures compared, per run.
fn figures(r: &RunResult) -> serde_json::Value {
    serde_json::json!({
        "encoding": r.setup.encoding,
        "run": r.run,
        "bytes_per_msg": r.bytes_per_msg,
        "cpu_us_per_msg": r.server.cpu_us_per_msg,
        "msgs_per_frame": r.msgs_per_frame,
        "p50_us": r.latency.p50,
        "p99_us": r.latency.p99,
        "ticks": r.counts.ticks,
        "binary_frames": r.counts.binary_frames,
    })
}

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    let source = a.common.source;
    let json = Target {
        label: "json".into(),
        ..Target::tickstream(source)
    };
    let binary = Target {
        label: "binary".into(),
        encoding: "binary".into(),
        ..Target::tickstream(source)
    };
    let mut ctx = Ctx::new(a.common, "encoding", Defaults::default())?;
    let l = a.load;
    let (runs, notes) = run_both(&mut ctx, [&json, &binary], &Load::plain(l.shape, l.rate))?;
    let per_run: Vec<serde_json::Value> = runs.iter().map(figures).collect();
    print_per_run(&runs);
    let medians = medians_by_encoding(&runs);
    if let (Some(j), Some(b)) = (medians.get("json"), medians.get("binary")) {
        let ratio = |k: &str| b[k].as_f64().unwrap_or(0.0) / j[k].as_f64().unwrap_or(0.0).max(1e-9);
        println!(
            "binary ÷ json (medians): bytes/msg {:.2}, CPU/msg {:.2}, p50 {:.2}, p99 {:.2}",
            ratio("bytes_per_msg"),
            ratio("cpu_us_per_msg"),
            ratio("p50_us"),
            ratio("p99_us")
        );
    }
    finish(
        &ctx,
        &format!("encoding, {}", l.describe()),
        &runs,
        &[("binary".into(), "json".into())],
        serde_json::json!({"notes": notes, "per_run": per_run, "medians": medians}),
    )?;
    Ok(())
}

/// Runs both targets `--runs` times, alternating. A binary run that fails, or gets no
/// binary frame, is a note (the server does not offer it) rather than an error.
fn run_both(
    ctx: &mut Ctx,
    targets: [&Target; 2],
    load: &Load,
) -> anyhow::Result<(Vec<RunResult>, Vec<String>)> {
    let mut runs = Vec::new();
    let mut notes = Vec::new();
    for run in 1..=ctx.runs {
        for t in targets {
            match run_once(ctx, t, load, run) {
                Ok(r) => {
                    if t.encoding == "binary" && r.counts.binary_frames == 0 {
                        let n = "the server sent no binary frames for encoding=binary: binary \
                                 encoding is not offered (what arrived was JSON)";
                        println!("binary run {run}: {n}");
                        notes.push(n.to_owned());
                        continue;
                    }
                    crate::report::print_run(&r);
                    crate::report::write_hgrm(&ctx.out, &r)?;
                    runs.push(r);
                }
                Err(e) if t.encoding == "binary" => {
                    let n = format!("binary run {run}: not offered by this server: {e:#}");
                    println!("{n}");
                    notes.push(n);
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok((runs, notes))
}

/// The figures compared, a line per run.
fn print_per_run(runs: &[RunResult]) {
    println!();
    println!(
        "{:<8} {:>4} {:>10} {:>14} {:>10} {:>10} {:>10}",
        "encoding", "run", "bytes/msg", "CPU µs/msg", "msgs/frame", "p50 µs", "p99 µs"
    );
    for r in runs {
        println!(
            "{:<8} {:>4} {:>10.1} {:>14.3} {:>10.1} {:>10.0} {:>10.0}",
            r.setup.encoding,
            r.run,
            r.bytes_per_msg,
            r.server.cpu_us_per_msg,
            r.msgs_per_frame,
            r.latency.p50,
            r.latency.p99
        );
    }
}

/// Per encoding that ran, the medians over its runs of the figures compared.
fn medians_by_encoding(runs: &[RunResult]) -> serde_json::Map<String, serde_json::Value> {
    let mut medians = serde_json::Map::new();
    for enc in ["json", "binary"] {
        let of = |f: fn(&RunResult) -> f64| {
            median(
                runs.iter()
                    .filter(|r| r.setup.encoding == enc)
                    .map(f)
                    .collect(),
            )
        };
        if !runs.iter().any(|r| r.setup.encoding == enc) {
            continue;
        }
        medians.insert(
            enc.into(),
            serde_json::json!({
                "bytes_per_msg": of(|r| r.bytes_per_msg),
                "cpu_us_per_msg": of(|r| r.server.cpu_us_per_msg),
                "p50_us": of(|r| r.latency.p50),
                "p99_us": of(|r| r.latency.p99),
            }),
        );
    }
    medians
}
