//! `dashboard`: what a screen of quotes costs the node. Every connection holds K symbols
//! paced at `--throttle-ms` (a trading dashboard's watchlist), against the same load
//! unpaced, where that load can be carried at all.

use crate::common::{Common, Shape, Target};
use crate::load::Subscription;
use crate::scenario::{finish, median, run_variants, Ctx, Defaults, Load, RunResult, Variant};

/// Paced subscriptions against the same load unpaced.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example (1,000 connections × 200 of 508 symbols at 250 ms, 10,000 \
ticks/s over the universe, alternating with the same load unpaced):

  tickstream-bench dashboard --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3
  tickstream-bench dashboard --spawn --shape 100x50/508 --rate 2000 --throttle-ms 100 --unpaced false

Reported per run and as medians: server CPU per delivered message, frames per connection \
per second (a paced connection gets one frame per interval, plus control frames), the \
server's RSS, the latency of paced ticks measured from the `ts` of the tick sent (not of \
the first one folded into it), the ticks folded (`skipped`) and the share of published \
ticks accounted for (delivered + folded, against published × fan-out). An unpaced run \
that cannot be carried (a connection that cannot be opened, a server that falls over) \
is a note; one the bench's clients cannot keep up with is marked invalid, with the reason."
)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Load shape C×K/N: C connections, each subscribed to K of N symbols.
    #[arg(long, default_value = "1000x200/508")]
    pub shape: Shape,
    /// Ticks per second over the N symbols.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// The connections' pace, ms (10 to 60000).
    #[arg(long, default_value_t = 250)]
    pub throttle_ms: u32,
    /// Also run the same load unpaced, alternating with the paced one.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub unpaced: bool,
}

/// Label of the paced variant.
pub const PACED: &str = "paced";
/// Label of the unpaced variant.
pub const UNPACED: &str = "unpaced";

/// The figures of one run that the medians do not hold.
fn figures(r: &RunResult, conns: usize) -> serde_json::Value {
    let c = &r.counts;
    let accounted = r
        .expected
        .map(|e| (c.ticks + c.folded) as f64 / e.max(1) as f64);
    serde_json::json!({
        "target": r.target,
        "run": r.run,
        "valid": r.valid,
        "frames_per_conn_per_s": r.frames_per_s / conns as f64,
        "msgs_per_conn_per_s": r.msgs_per_s / conns as f64,
        "cpu_us_per_msg": r.server.cpu_us_per_msg,
        "cpu_util": r.server.cpu_util,
        "rss_max_kb": r.server.rss_max_kb,
        "p50_us": r.latency.p50,
        "p99_us": r.latency.p99,
        "paced": c.paced,
        "folded": c.folded,
        "accounted": accounted,
        "holes": c.holes,
        "gaps": c.gaps,
        "conflated": c.conflated,
    })
}

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    if !(10..=60_000).contains(&a.throttle_ms) {
        anyhow::bail!(
            "--throttle-ms {} is out of range: 10 to 60000",
            a.throttle_ms
        );
    }
    let source = a.common.source;
    let variant = |label: &str, throttle_ms: u32| Variant {
        target: Target {
            label: label.into(),
            ..Target::tickstream(source)
        },
        load: Load {
            subscription: Subscription {
                throttle_ms,
                pattern: None,
                ..Subscription::default()
            },
            ..Load::plain(a.shape, a.rate)
        },
        may_fail: throttle_ms == 0,
    };
    let mut variants = vec![variant(PACED, a.throttle_ms)];
    if a.unpaced {
        variants.push(variant(UNPACED, 0));
    }
    let mut ctx = Ctx::new(a.common, "dashboard", Defaults::default())?;
    let (runs, notes) = run_variants(&mut ctx, &variants)?;
    let conns = a.shape.conns;
    print_per_run(&runs, conns);
    let per_run: Vec<serde_json::Value> = runs.iter().map(|r| figures(r, conns)).collect();
    let of = |label: &str, key: &str| {
        median(
            per_run
                .iter()
                .filter(|f| f["target"] == label)
                .filter_map(|f| f[key].as_f64())
                .collect(),
        )
    };
    let title = format!(
        "dashboard, {} at {} ticks/s, throttle {} ms",
        a.shape, a.rate, a.throttle_ms
    );
    finish(
        &ctx,
        &title,
        &runs,
        &[(PACED.into(), UNPACED.into())],
        serde_json::json!({
            "shape": a.shape.to_string(),
            "rate": a.rate,
            "throttle_ms": a.throttle_ms,
            "conns": conns,
            "asked_msgs_per_s": a.rate * a.shape.fanout(),
            "notes": notes,
            "per_run": per_run,
            "frames_per_conn_per_s": {
                PACED: of(PACED, "frames_per_conn_per_s"),
                UNPACED: of(UNPACED, "frames_per_conn_per_s"),
            },
            "accounted": of(PACED, "accounted"),
        }),
    )?;
    Ok(())
}

/// The figures compared, a line per run.
fn print_per_run(runs: &[RunResult], conns: usize) {
    println!();
    println!(
        "{:<8} {:>4} {:>14} {:>12} {:>11} {:>9} {:>9} {:>10} {:>9}",
        "variant",
        "run",
        "frames/conn/s",
        "msgs/conn/s",
        "CPU µs/msg",
        "p50 ms",
        "p99 ms",
        "folded",
        "RSS MB"
    );
    for r in runs {
        println!(
            "{:<8} {:>4} {:>14.2} {:>12.1} {:>11.3} {:>9} {:>9} {:>10} {:>9.1}",
            r.target,
            r.run,
            r.frames_per_s / conns as f64,
            r.msgs_per_s / conns as f64,
            r.server.cpu_us_per_msg,
            crate::report::ms(r.latency.p50),
            crate::report::ms(r.latency.p99),
            r.counts.folded,
            r.server.rss_max_kb as f64 / 1024.0
        );
    }
}
