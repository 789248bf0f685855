//! `connections`: many subscribed connections held open at a low rate: setup rate,
//! memory per connection, CPU while idle, latency through heartbeat rounds.

use crate::common::{targets_with_references, Common, Server, Shape, NOHEARTBEAT, NOMETRICS};
use crate::scenario::{
    finish, line_per_run, reference_pairs, run_alternating, Ctx, Defaults, Load, RunResult,
};

/// Many connections, held.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example (15,000 connections, 1 of 100 symbols each, 100 ticks/s, opened \
at 2,000/s over 4 processes, heartbeat every 5 s so rounds fall in the 20 s held):

  tickstream-bench connections --spawn --shape 15000x1/100 --rate 100 --clients 4 --open-rate 2000"
)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Load shape C×K/N.
    #[arg(long, default_value = "2000x1/100")]
    pub shape: Shape,
    /// Ticks per second over the N symbols.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Connections opened per second over all client processes (0: all at once).
    #[arg(long, default_value_t = 2000.0)]
    pub open_rate: f64,
    /// Heartbeat of a spawned tickstream node, so that rounds fall inside the window.
    #[arg(long, default_value = "5s")]
    pub heartbeat: String,
    /// Spawned tickstream nodes joined by a spawned redis-server, connection `i` on node
    /// `i mod N` (more connections than one process may hold files for).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
}

/// p99.9 second by second while the connections are held.
const PLOT: &str = "p999-by-second.svg";

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    if a.nodes == 0 {
        anyhow::bail!("--nodes must be at least 1");
    }
    let mut targets = targets_with_references(&a.common)?;
    for t in &mut targets {
        if t.server == Server::Tickstream {
            t.nodes = a.nodes;
        }
    }
    let d = Defaults {
        duration: std::time::Duration::from_secs(20),
        runs: 1,
        ..Defaults::default()
    };
    let mut ctx = Ctx::new(a.common, "connections", d)?;
    ctx.plot = PLOT.into();
    let mut load = Load::plain(a.shape, a.rate);
    load.open_rate = a.open_rate;
    load.heartbeat = Some(a.heartbeat.clone());
    let runs = run_alternating(&mut ctx, &targets, &load)?;
    println!("\nconnections held");
    let rows: Vec<serde_json::Value> = runs.iter().map(held).collect();
    let series = line_per_run(&runs, |r| {
        r.seconds
            .iter()
            .enumerate()
            .filter(|(_, p)| p.count > 0)
            .map(|(i, p)| (i as f64, (p.p999 / 1e3).max(1e-3)))
            .collect()
    });
    crate::plot::lines(
        &ctx.out.join(PLOT),
        "p99.9 per second while the connections are held",
        "second of the window",
        "p99.9 (ms)",
        &series,
        true,
    )?;
    let medians = finish(
        &ctx,
        &format!("connections, {} at {} ticks/s", a.shape, a.rate),
        &runs,
        &reference_pairs(&targets),
        serde_json::json!({"held": rows, "open_rate": a.open_rate, "heartbeat": a.heartbeat}),
    )?;
    if let Some(line) = steady_heartbeat_cost(&runs, &a.heartbeat) {
        println!("{line}");
    }
    if let Some(line) = heartbeat_cost(&medians, &a.heartbeat) {
        println!("{line}");
    }
    Ok(())
}

/// What a run held, printed and as a JSON row: setup rate, memory per connection
/// (process and kernel), CPU while held, and how much heartbeat rounds move p99.9
/// from second to second.
fn held(r: &RunResult) -> serde_json::Value {
    let per_sec_p999: Vec<f64> = r
        .seconds
        .iter()
        .filter(|p| p.count > 0)
        .map(|p| p.p999)
        .collect();
    let mut sorted = per_sec_p999.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let med = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let max = sorted.last().copied().unwrap_or(0.0);
    let tcp = match r.tcp_mem_kb {
        (Some(a), Some(b)) => Some((b.saturating_sub(a)) as f64 * 1024.0 / a_conns(r) as f64),
        _ => None,
    };
    println!(
        "{} run {}: {} connections opened at {:.0}/s; server RSS idle {:.1} MB, held {:.1} MB = {:.0} bytes/connection; kernel TCP memory {} bytes/connection; server CPU {:.1}% while held; per-second p99.9 median {:.2} ms, worst {:.2} ms (moves by {:.2} ms)",
        r.target,
        r.run,
        a_conns(r),
        r.setup_conns_per_s,
        r.server.rss_idle_kb as f64 / 1024.0,
        r.server.rss_mean_kb as f64 / 1024.0,
        r.server.rss_per_conn_bytes,
        tcp.map(|t| format!("{t:.0}")).unwrap_or_else(|| "?".into()),
        r.server.cpu_util * 100.0,
        med / 1e3,
        max / 1e3,
        (max - med) / 1e3,
    );
    serde_json::json!({
        "target": r.target, "run": r.run,
        "setup_conns_per_s": r.setup_conns_per_s,
        "rss_idle_kb": r.server.rss_idle_kb,
        "rss_held_kb": r.server.rss_mean_kb,
        "rss_per_conn_bytes": r.server.rss_per_conn_bytes,
        "kernel_tcp_bytes_per_conn": tcp,
        "cpu_util_held": r.server.cpu_util,
        "per_second_p999_us": per_sec_p999,
        "p999_moves_by_us": max - med,
    })
}

/// What heartbeat rounds cost in latency: tickstream's p99.9 with its heartbeats in
/// the window against the same node's with none there (`--against
/// tickstream-noheartbeat`), medians over runs of the same load.
fn heartbeat_cost(medians: &[crate::report::Medians], every: &str) -> Option<String> {
    let off = medians.iter().find(|m| m.target == NOHEARTBEAT)?;
    let on = medians.iter().find(|m| pings(&m.target))?;
    let (with, without) = (on.latency.p999 / 1e3, off.latency.p999 / 1e3);
    Some(format!(
        "heartbeat rounds (every {every}) move p99.9 by {:+.2} ms: {with:.2} ms with them, {without:.2} ms without ({} and {} runs)",
        with - without,
        on.runs,
        off.runs,
    ))
}

/// The same comparison over only the seconds in which the load side kept its bounds
/// (`RunResult::steady`), every run counted: medians over runs of each target's
/// p99.9 over its steady seconds.
fn steady_heartbeat_cost(runs: &[RunResult], every: &str) -> Option<String> {
    let median_of = |want: &dyn Fn(&str) -> bool| -> Option<(f64, usize, usize, usize)> {
        let mut v: Vec<f64> = Vec::new();
        let (mut kept, mut of) = (0, 0);
        for r in runs
            .iter()
            .filter(|r| want(&r.target) && r.steady.seconds > 0)
        {
            v.push(r.steady.latency.p999 / 1e3);
            kept += r.steady.seconds;
            of += r.steady.of;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Some((*v.get(v.len() / 2)?, v.len(), kept, of))
    };
    let (without, n_off, k_off, o_off) = median_of(&|t| t == NOHEARTBEAT)?;
    let (with, n_on, k_on, o_on) = median_of(&pings)?;
    Some(format!(
        "over the seconds the load side kept its bounds ({k_on} of {o_on} and {k_off} of {o_off}), heartbeat rounds (every {every}) move p99.9 by {:+.2} ms: {with:.2} ms with them, {without:.2} ms without ({n_on} and {n_off} runs)",
        with - without,
    ))
}

/// The tickstream target that pings in the window (not its twins).
fn pings(target: &str) -> bool {
    target.starts_with("tickstream-") && target != NOHEARTBEAT && !target.starts_with(NOMETRICS)
}

fn a_conns(r: &RunResult) -> u64 {
    r.counts.opened + r.counts_other.opened
}
