//! `slow-consumers`: a share of the connections stop reading for the whole window; the
//! healthy ones' latency and losses, the stalled ones' conflation, server memory over
//! time.

use std::sync::Arc;

use crate::common::{targets_with_references, Common, FixedLoad};
use crate::load::Behaviour;
use crate::scenario::{
    finish, line_per_run, reference_pairs, run_alternating, Ctx, Defaults, Load, RunResult,
};

/// Stalled clients beside healthy ones.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example (one in ten of 100 connections stops reading while 10,000 \
ticks/s flow; the node's outbound queue is 1,024 messages):

  tickstream-bench slow-consumers --spawn --slow-share 0.1 --queue 1024
  tickstream-bench slow-consumers --spawn --node-arg=--slow-policy=disconnect"
)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: FixedLoad,
    /// Share of the connections that stall (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    pub slow_share: f64,
    /// Outbound queue of a spawned tickstream node, messages (`serve --queue`).
    #[arg(long, default_value_t = 1024)]
    pub queue: usize,
    /// Kernel send buffer per client socket of a spawned tickstream node, bytes
    /// (`serve --send-buffer`): on loopback the kernel would otherwise take megabytes
    /// for a stalled client before the node's own queue fills.
    #[arg(long, default_value_t = 65536)]
    pub send_buffer: usize,
}

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&a.slow_share) {
        anyhow::bail!("--slow-share must be at least 0 and below 1");
    }
    let targets = targets_with_references(&a.common)?;
    let mut ctx = Ctx::new(a.common, "slow-consumers", Defaults::default())?;
    let l = a.load;
    let mut load = Load::plain(l.shape, l.rate);
    let every = if a.slow_share > 0.0 {
        (1.0 / a.slow_share).round().max(1.0) as usize
    } else {
        0
    };
    load.behaviour = Arc::new(move |i| {
        if every > 0 && i % every == every - 1 {
            Behaviour::Stalled
        } else {
            Behaviour::Healthy
        }
    });
    load.node_args = vec![
        "--queue".into(),
        a.queue.to_string(),
        "--send-buffer".into(),
        a.send_buffer.to_string(),
    ];
    let runs = run_alternating(&mut ctx, &targets, &load)?;
    let rows = stalled(&runs);
    let series = line_per_run(&runs, |r| {
        r.server
            .samples
            .iter()
            .map(|s| (s.t, s.rss_kb as f64 / 1024.0))
            .collect()
    });
    crate::plot::lines(
        &ctx.out.join("rss.svg"),
        "server resident memory while clients stall",
        "s since recording began",
        "RSS (MB)",
        &series,
        false,
    )?;
    finish(
        &ctx,
        &format!(
            "slow consumers: healthy connections, {}, {:.0}% stalled",
            l.describe(),
            a.slow_share * 100.0
        ),
        &runs,
        &reference_pairs(&targets),
        serde_json::json!({"slow_share": a.slow_share, "queue": a.queue, "send_buffer": a.send_buffer, "stalled": rows}),
    )?;
    Ok(())
}

/// What healthy and stalled connections got in each run, printed and as JSON rows.
fn stalled(runs: &[RunResult]) -> Vec<serde_json::Value> {
    println!("\nstalled connections (they read again after the window)");
    let mut rows = Vec::new();
    for r in runs {
        let o = &r.counts_other;
        println!(
            "{} run {}: healthy: {} received of {} expected, {} gaps, {} holes; stalled: {} ticks conflated ({} gaps), closes {:?}; server RSS max {:.1} MB",
            r.target,
            r.run,
            r.counts.ticks,
            r.expected.map(|e| e.to_string()).unwrap_or_else(|| "?".into()),
            r.counts.gaps,
            r.counts.holes,
            o.conflated,
            o.gaps,
            o.closes,
            r.server.rss_max_kb as f64 / 1024.0,
        );
        rows.push(serde_json::json!({
            "target": r.target, "run": r.run,
            "healthy_received": r.counts.ticks, "healthy_expected": r.expected,
            "healthy_gaps": r.counts.gaps, "healthy_holes": r.counts.holes,
            "stalled_conflated": o.conflated, "stalled_gaps": o.gaps,
            "stalled_gap_reasons": o.gap_reasons, "stalled_closes": o.closes,
        }));
    }
    rows
}
