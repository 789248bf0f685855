//! `storm`: hundreds of connections subscribed to hundreds of symbols stop reading while
//! ticks flow fast. The node's resident memory before, at its peak and 30 s after the
//! storm, against its `--max-outbound-bytes`; what the bound's policy did (from
//! `/metrics`); the close codes the stalled clients saw; and a handful of reading
//! connections that must come through untouched. `--binaries` runs the same storm on
//! builds with different allocators, alternating.

use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::common::{Common, Order, Shape, Source};
use crate::load::{
    self, Behaviour, Counts, Subscription, Window, WorkerResult, WorkerSpec, Workers,
};
use crate::measured::Placement;
use crate::publisher::{self, Plan, Sink};
use crate::spawn::{self, Procs};

use super::{median, Ctx, Defaults};

/// A stall storm against the node-wide bound on buffered output.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example (300 connections × 500 of 500 symbols stop reading for 20 s \
while 20,000 ticks/s flow; the node's bound is 64 MiB; memory sampled for 30 s after):

  tickstream-bench storm --spawn --server-cpus 0 --client-cpus 1 --clients 1

The allocators, alternating (build the binaries with bench/alloc-binaries):

  tickstream-bench storm --spawn --server-cpus 0 --client-cpus 1 --clients 1 \\
    --binaries system=target/alloc/tickstream-system,jemalloc=target/alloc/tickstream-jemalloc,mimalloc=target/alloc/tickstream-mimalloc

Exit status 1 when the peak growth passed the bound plus --slack, the memory 30 s after \
was above --recover × before, or a reading connection was closed or lost a tick."
)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Connections that stop reading for the storm.
    #[arg(long, default_value_t = 300)]
    pub stalled: usize,
    /// Symbols each stalled connection subscribes to.
    #[arg(long, default_value_t = 500)]
    pub stalled_symbols: usize,
    /// Connections that read throughout (the policy must leave them alone).
    #[arg(long, default_value_t = 5)]
    pub healthy: usize,
    /// Symbols each reading connection subscribes to.
    #[arg(long, default_value_t = 20)]
    pub healthy_symbols: usize,
    /// Symbols of the universe.
    #[arg(long, default_value_t = 500)]
    pub symbols: usize,
    /// Ticks per second over the universe during the storm.
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// The node's `--max-outbound-bytes`, MiB (passed to every spawned node).
    #[arg(long, default_value_t = 64)]
    pub bound_mib: u64,
    /// Peak growth of resident memory allowed above the bound, MiB: what the node
    /// holds beside the buffered output (the stalled connections' sockets and
    /// subscriptions, the allocator's own slack).
    #[arg(long, default_value_t = 48)]
    pub slack: u64,
    /// Resident memory this long after the stalled connections are gone must be
    /// within --recover × its level before the storm.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub after: Duration,
    /// The bound on memory after the storm, as a multiple of before.
    #[arg(long, default_value_t = 1.3)]
    pub recover: f64,
    /// Kernel send buffer per client socket of the node (`serve --send-buffer`), bytes:
    /// on loopback the kernel would otherwise hold megabytes per stalled client.
    #[arg(long, default_value_t = 65536)]
    pub send_buffer: usize,
    /// Memory sampled this long with only the reading connections open, before the storm.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// Before anything connects, ticks are published into the node this long at
    /// `--fill-rate` (whole rounds; the storm's ticks continue their seqs), so that its tick history is full when
    /// its memory is taken before the storm: the history is the node's steady state,
    /// not growth the storm caused. 0s: none.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    pub fill: Duration,
    /// Ticks per second of the `--fill` (default: 100,000 — 1,600 rounds of 500
    /// symbols in 8 s, more than the 1,024 ticks of history a symbol keeps).
    #[arg(long, default_value_t = 100_000.0)]
    pub fill_rate: f64,
    /// After the storm the stalled connections read this long (to see how the node
    /// closed them), then close.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub read_out: Duration,
    /// tickstream binaries to compare, `NAME=PATH` each (e.g. one per allocator),
    /// alternating over `--runs`. Default: the `tickstream` beside the bench.
    #[arg(long, value_delimiter = ',')]
    pub binaries: Vec<Binary>,
}

/// A tickstream binary under a name.
#[derive(Clone, Debug, Serialize)]
pub struct Binary {
    /// Its name in the tables, e.g. `jemalloc`.
    pub name: String,
    /// Its path.
    pub path: PathBuf,
}

impl FromStr for Binary {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok(Binary {
                name: n.to_owned(),
                path: PathBuf::from(p),
            }),
            _ => Err(format!(
                "{s:?}: expected NAME=PATH (e.g. jemalloc=target/alloc/tickstream-jemalloc)"
            )),
        }
    }
}

/// The bench's flags that the storm cannot honour, refused with a clear error.
fn check(a: &Args) -> anyhow::Result<()> {
    if !a.common.spawning() {
        bail!(
            "storm spawns its node (it samples its memory and passes its bound): leave out --url"
        );
    }
    if a.common.source != Source::Publish {
        bail!("storm publishes into the node's /v1/publish: --source publish");
    }
    if !a.common.against.is_empty() {
        bail!("storm has no reference (--against): compare builds with --binaries");
    }
    if a.stalled == 0 || a.healthy == 0 {
        bail!("--stalled and --healthy must be at least 1");
    }
    if a.stalled_symbols == 0 || a.stalled_symbols > a.symbols {
        bail!(
            "--stalled-symbols must be between 1 and --symbols ({})",
            a.symbols
        );
    }
    if a.healthy_symbols == 0 || a.healthy_symbols > a.symbols {
        bail!(
            "--healthy-symbols must be between 1 and --symbols ({})",
            a.symbols
        );
    }
    if a.bound_mib == 0 {
        bail!("--bound-mib must be at least 1 (the storm measures the node against it)");
    }
    if a.rate.is_nan() || a.rate <= 0.0 {
        bail!("--rate must be above 0");
    }
    if a.recover.is_nan() || a.recover < 1.0 {
        bail!("--recover must be at least 1 (a multiple of the memory before)");
    }
    let mut names: Vec<&str> = a.binaries.iter().map(|b| b.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        bail!("--binaries: each NAME once");
    }
    for b in &a.binaries {
        if !b.path.exists() {
            bail!("--binaries: {} not found ({})", b.path.display(), b.name);
        }
    }
    Ok(())
}

/// One point of a run's timeline (s from the storm's start; negative before it).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Point {
    /// Seconds since the storm began.
    pub t: f64,
    /// The node's resident memory, kB.
    pub rss_kb: u64,
    /// `tickstream_outbound_buffered_bytes` then, if it answered.
    pub buffered: Option<u64>,
}

/// What `/metrics` said of the bound.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Bound {
    /// `tickstream_outbound_buffered_bytes`.
    pub buffered: u64,
    /// `tickstream_outbound_bound_bytes`.
    pub bound: u64,
    /// `tickstream_outbound_bound_actions_total{action="conflate"}`.
    pub conflated: u64,
    /// `…{action="close"}`.
    pub closed: u64,
}

/// What the reading connections got.
#[derive(Debug, Default, Serialize)]
pub struct Healthy {
    /// Ticks they should have received (published in the storm × their subscriptions).
    pub expected: u64,
    /// Ticks received from the storm.
    pub received: u64,
    /// Gaps, holes, duplicates.
    pub gaps: u64,
    /// Seq jumps not announced.
    pub holes: u64,
    /// Repeated ticks.
    pub duplicates: u64,
    /// Closes by code.
    pub closes: std::collections::BTreeMap<String, u64>,
    /// Nothing closed, nothing lost.
    pub untouched: bool,
}

/// One storm on one binary.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// The binary's name.
    pub binary: String,
    /// Run number (per binary).
    pub run: usize,
    /// Whether the load was offered as asked.
    pub valid: bool,
    /// Why not.
    pub invalid: Vec<String>,
    /// Resident memory with the reading connections open, before the storm, kB.
    pub before_kb: u64,
    /// … once the stalled connections had subscribed, before the first tick, kB.
    pub subscribed_kb: u64,
    /// The highest through the storm and the read-out, kB.
    pub peak_kb: u64,
    /// Peak − before, bytes.
    pub growth_bytes: u64,
    /// Resident memory `--after` the stalled connections closed, kB.
    pub after_kb: u64,
    /// after ÷ before.
    pub after_ratio: f64,
    /// (subscribed − before) per stalled connection, bytes: an idle connection holding
    /// its subscriptions.
    pub idle_per_conn_bytes: f64,
    /// The highest buffered output `/metrics` showed.
    pub buffered_peak: u64,
    /// `/metrics` at the end.
    pub bound: Bound,
    /// Ticks the stalled connections were told were conflated.
    pub stalled_conflated: u64,
    /// How the stalled connections' ends came: close code (`drop`: no close frame)
    /// and `open` for those still open when they closed themselves.
    pub stalled_closes: std::collections::BTreeMap<String, u64>,
    /// The reading connections.
    pub healthy: Healthy,
    /// Ticks published in the storm.
    pub published: u64,
    /// How late the publisher was at p99, µs.
    pub publisher_behind_p99_us: f64,
    /// Verdicts failed.
    pub failed: Vec<String>,
    /// Timeline.
    pub points: Vec<Point>,
    /// Where each process ran.
    pub placement: Vec<Placement>,
}

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    check(&a)?;
    let binaries = if a.binaries.is_empty() {
        vec![Binary {
            name: "tickstream".into(),
            path: spawn::sibling("tickstream")?,
        }]
    } else {
        a.binaries.clone()
    };
    let d = Defaults {
        duration: Duration::from_secs(20),
        warmup: Duration::ZERO,
        runs: 1,
    };
    let mut ctx = Ctx::new(a.common.clone(), "storm", d)?;
    ctx.plot = PLOT.into();
    write_universe_once(&mut ctx, a.symbols)?;
    let mut outcomes = Vec::new();
    for run in 1..=ctx.runs {
        for b in &binaries {
            let o = storm_once(&mut ctx, &a, b, run)
                .with_context(|| format!("{} run {run}", b.name))?;
            print_outcome(&o, &a);
            outcomes.push(o);
        }
    }
    let by_binary = by_binary(&binaries, &outcomes);
    print_table(&by_binary, &a);
    plot(&ctx, &a, &outcomes)?;
    summary(&ctx, &a, &outcomes, by_binary)?;
    let failed: Vec<String> = outcomes
        .iter()
        .flat_map(|o| {
            o.failed
                .iter()
                .map(move |f| format!("{} run {}: {f}", o.binary, o.run))
        })
        .collect();
    if !failed.is_empty() {
        bail!("the storm missed its bounds: {}", failed.join("; "));
    }
    Ok(())
}

/// The plot a row of RESULTS.md links.
const PLOT: &str = "storm-rss.svg";

fn write_universe_once(ctx: &mut Ctx, n: usize) -> anyhow::Result<()> {
    ctx.universe(n).map(|_| ())
}

/// The node's `serve` arguments: the bound under test, the send buffer, then `--node-arg`s.
fn node_args(ctx: &Ctx, a: &Args, port: u16) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--node",
        "storm-0",
        "--universe",
        &ctx.universe.display().to_string(),
        "--log",
        "warn",
        "--feed",
        "none",
        "--max-outbound-bytes",
        &(a.bound_mib << 20).to_string(),
        "--send-buffer",
        &a.send_buffer.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(ctx.common.node_args.iter().cloned());
    args
}

/// Starts the node on the server CPUs; returns its port and pid once `/healthz` answers.
fn start_node(
    ctx: &mut Ctx,
    a: &Args,
    b: &Binary,
    procs: &mut Procs,
    run: usize,
) -> anyhow::Result<(u16, u32)> {
    if !b.path.exists() {
        bail!(
            "{} not found: build it (cargo build --release --bin tickstream)",
            b.path.display()
        );
    }
    ctx.seq += 1;
    let log = ctx
        .out
        .join("logs")
        .join(format!("{:03}-{}-run{run}-node.log", ctx.seq, b.name));
    let port = spawn::free_port()?;
    let args = node_args(ctx, a, port);
    let pid = procs.start(
        &format!("tickstream ({})", b.name),
        Command::new(&b.path).args(&args),
        ctx.server_cpus.as_deref(),
        log,
        true,
    )?;
    spawn::wait_http(procs, port, "/healthz", Duration::from_secs(20))?;
    Ok((port, pid))
}

/// Starts `procs` receiving processes for `conns` connections of `shape`, all behaving
/// as `behaviour`, the first binding source address `first_addr`; waits until every
/// connection has subscribed.
fn open_group(
    url: &str,
    shape: Shape,
    behaviour: Behaviour,
    procs: usize,
    first_addr: usize,
) -> anyhow::Result<Workers> {
    let p = procs.clamp(1, shape.conns);
    let mut specs: Vec<WorkerSpec> = (0..p)
        .map(|w| WorkerSpec {
            index: w,
            bind: Some(load::source_addr(first_addr + w)),
            urls: vec![url.to_owned()],
            shape,
            conns: Vec::new(),
            open_rate: 0.0,
            churn: None,
            subscription: Subscription::default(),
            follow: false,
        })
        .collect();
    for i in 0..shape.conns {
        specs[i % p].conns.push((i, behaviour));
    }
    let mut workers = Workers::start(specs)?;
    let timeout = Duration::from_secs(30) + Duration::from_secs_f64(shape.conns as f64 / 100.0);
    let ready = workers.wait_ready(timeout)?;
    let failed: u64 = ready.iter().map(|r| r.failed).sum();
    if failed > 0 {
        let why = ready
            .iter()
            .find_map(|r| r.first_error.clone())
            .unwrap_or_default();
        bail!(
            "{failed} of {} connections could not be opened: {why}",
            shape.conns
        );
    }
    Ok(workers)
}

/// The node's resident memory sampled every 250 ms for `d`: the median, kB, and the
/// samples (time in ns since the Unix epoch, kB).
fn idle_rss(pid: u32, d: Duration) -> anyhow::Result<(u64, Vec<(u64, u64)>)> {
    let start = Instant::now();
    let mut samples = Vec::new();
    loop {
        let s = spawn::sample(pid, 0.0).context("sampling the node")?;
        samples.push((now_ns(), s.rss_kb));
        if start.elapsed() >= d {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let m = median(samples.iter().map(|p| p.1 as f64).collect()) as u64;
    Ok((m, samples))
}

fn now_ns() -> u64 {
    tickstream::tick::now_ns()
}

/// The storm's times (ns since the Unix epoch): it begins at `t0` and ends at
/// `until`; the stalled connections read until `stalled_stop` and then close; the
/// reading ones stay until `stop`, after the memory `--after` has been sampled.
struct Timeline {
    t0: u64,
    until: u64,
    stalled_stop: u64,
    stop: u64,
}

impl Timeline {
    fn from_now(ctx: &Ctx, a: &Args) -> Timeline {
        let t0 = now_ns() + 500_000_000;
        let until = t0 + ctx.duration.as_nanos() as u64;
        let stalled_stop = until + a.read_out.as_nanos() as u64;
        let stop = stalled_stop + a.after.as_nanos() as u64 + 1_000_000_000;
        Timeline {
            t0,
            until,
            stalled_stop,
            stop,
        }
    }

    fn window(&self, stop_at: u64) -> Window {
        Window {
            record_from: self.t0,
            until: self.until,
            stop_at,
        }
    }

    /// Seconds of `ns` since the storm began.
    fn t(&self, ns: u64) -> f64 {
        (ns as f64 - self.t0 as f64) / 1e9
    }

    /// When `--after` is reached, s since the storm began.
    fn after_t(&self, a: &Args) -> f64 {
        self.t(self.stalled_stop) + a.after.as_secs_f64()
    }
}

/// One storm on binary `b`: node, reading connections, memory before, stalled
/// connections, the storm and what follows it.
fn storm_once(ctx: &mut Ctx, a: &Args, b: &Binary, run: usize) -> anyhow::Result<Outcome> {
    let mut procs = Procs::default();
    let (port, pid) = start_node(ctx, a, b, &mut procs, run)?;
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let healthy_shape = Shape {
        conns: a.healthy,
        per_conn: a.healthy_symbols,
        symbols: a.symbols,
    };
    let stalled_shape = Shape {
        conns: a.stalled,
        per_conn: a.stalled_symbols,
        symbols: a.symbols,
    };
    let seq_base = fill(a, port)?;
    let mut healthy = open_group(&url, healthy_shape, Behaviour::Healthy, 1, 0)?;
    let (before_kb, idle) = idle_rss(pid, a.idle)?;
    let mut stalled = open_group(
        &url,
        stalled_shape,
        Behaviour::Stalled,
        ctx.common.clients,
        1,
    )?;
    let subscribed_kb = spawn::sample(pid, 0.0).context("sampling the node")?.rss_kb;
    procs.check_alive()?;
    let tl = Timeline::from_now(ctx, a);
    stalled.go(&tl.window(tl.stalled_stop))?;
    healthy.go(&tl.window(tl.stop))?;
    let plan = Plan {
        rate: a.rate,
        symbols: a.symbols,
        epoch: storm_epoch(),
        t0: tl.t0,
        end: tl.until,
        record_from: tl.t0,
        skip_seq: None,
        seq_base,
        order: ctx.common.order,
        book_levels: None,
        ride_outages: false,
    };
    let publisher = publisher::start(plan, Sink::Ws(format!("ws://127.0.0.1:{port}/v1/publish")));
    let label = format!("{} run {run}", b.name);
    let watched = watch(&label, &tl, pid, port, &mut procs)?;
    let report = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("the publisher panicked"))??;
    let placement = placement(&procs, &healthy, &stalled);
    let stalled_r = stalled.results(Duration::from_secs(30))?;
    let healthy_r = healthy.results(Duration::from_secs(30))?;
    procs.stop();
    let mut points: Vec<Point> = idle
        .iter()
        .map(|&(ns, rss_kb)| Point {
            t: tl.t(ns),
            rss_kb,
            buffered: None,
        })
        .collect();
    points.extend(watched.points);
    let g = Gathered {
        before_kb,
        subscribed_kb,
        after_t: tl.after_t(a),
        storm_end_t: tl.t(tl.stalled_stop),
        points,
        bound: watched.bound,
        report,
        healthy: healthy_r,
        stalled: stalled_r,
        healthy_shape,
        placement,
    };
    Ok(outcome(a, b, run, g))
}

/// Fills the node's tick history before its memory is taken (`--fill`): whole
/// rounds of ticks into its `/v1/publish` with nobody subscribed, under the storm's
/// epoch. Returns the rounds published: the storm's ticks continue their seqs, so a
/// reading connection sees one stream, with no reset between the two.
fn fill(a: &Args, port: u16) -> anyhow::Result<u64> {
    let rounds = (a.fill.as_secs_f64() * a.fill_rate / a.symbols as f64).floor() as u64;
    if rounds == 0 {
        return Ok(0);
    }
    let ticks = rounds * a.symbols as u64;
    let t0 = now_ns() + 200_000_000;
    // The end falls half a tick after the last one due: exactly `rounds` rounds.
    let span = (ticks as f64 - 0.5) / a.fill_rate;
    let plan = Plan {
        rate: a.fill_rate,
        symbols: a.symbols,
        epoch: storm_epoch(),
        t0,
        end: t0 + (span * 1e9) as u64,
        record_from: t0,
        skip_seq: None,
        seq_base: 0,
        order: Order::RoundRobin,
        book_levels: None,
        ride_outages: false,
    };
    let report = publisher::start(plan, Sink::Ws(format!("ws://127.0.0.1:{port}/v1/publish")))
        .join()
        .map_err(|_| anyhow::anyhow!("the fill's publisher panicked"))?
        .context("filling the node's history")?;
    if report.published != ticks {
        bail!(
            "the fill published {} ticks, not the {ticks} of {rounds} whole rounds",
            report.published
        );
    }
    Ok(rounds)
}

/// The epoch of a storm's ticks (the fill's and the storm's alike).
fn storm_epoch() -> String {
    format!("storm{}", std::process::id())
}

/// Everything one storm measured, before it is judged.
struct Gathered {
    before_kb: u64,
    subscribed_kb: u64,
    /// When `--after` was reached and when the stalled connections closed, s.
    after_t: f64,
    storm_end_t: f64,
    points: Vec<Point>,
    bound: Bound,
    report: publisher::Report,
    healthy: Vec<WorkerResult>,
    stalled: Vec<WorkerResult>,
    healthy_shape: Shape,
    placement: Vec<Placement>,
}

/// What the watch saw: the timeline from the storm's start and `/metrics` at its end.
struct Watched {
    points: Vec<Point>,
    bound: Bound,
}

/// Samples the node's memory and `/metrics` every 250 ms until the reading
/// connections stop, with a progress line a second on stderr.
fn watch(
    label: &str,
    tl: &Timeline,
    pid: u32,
    port: u16,
    procs: &mut Procs,
) -> anyhow::Result<Watched> {
    let mut out = Watched {
        points: Vec::new(),
        bound: Bound::default(),
    };
    let mut shown = Instant::now();
    loop {
        let now = now_ns();
        if now >= tl.stop {
            break;
        }
        procs.check_alive()?;
        let scraped = scrape(port);
        if let Some(b) = scraped {
            out.bound = b;
        }
        let Some(s) = spawn::sample(pid, 0.0) else {
            break;
        };
        let p = Point {
            t: tl.t(now),
            rss_kb: s.rss_kb,
            buffered: scraped.map(|b| b.buffered),
        };
        out.points.push(p);
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            let phase = if now < tl.t0 {
                "starting"
            } else if now < tl.until {
                "storm"
            } else if now < tl.stalled_stop {
                "read-out"
            } else {
                "after"
            };
            eprintln!(
                "{label} [{phase} {:+.0}s] RSS {:.1} MB, buffered {:.1} MB, bound acted: {} conflated, {} closed",
                p.t,
                p.rss_kb as f64 / 1024.0,
                out.bound.buffered as f64 / 1048576.0,
                out.bound.conflated,
                out.bound.closed,
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(out)
}

/// `/metrics` of the node on `port`, the bound's figures (None when it did not answer
/// within a second).
fn scrape(port: u16) -> Option<Bound> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    let req =
        format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    if !body.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(parse_bound(&body))
}

/// The bound's figures in a Prometheus text exposition.
pub fn parse_bound(text: &str) -> Bound {
    let mut b = Bound::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let v = v as u64;
        match name {
            "tickstream_outbound_buffered_bytes" => b.buffered = v,
            "tickstream_outbound_bound_bytes" => b.bound = v,
            n if n.starts_with("tickstream_outbound_bound_actions")
                && n.contains("action=\"conflate\"") =>
            {
                b.conflated = v
            }
            n if n.starts_with("tickstream_outbound_bound_actions")
                && n.contains("action=\"close\"") =>
            {
                b.closed = v
            }
            _ => {}
        }
    }
    b
}

/// Where each process ran: the node, this process, the receiving processes.
fn placement(procs: &Procs, healthy: &Workers, stalled: &Workers) -> Vec<Placement> {
    let mut out = super::run::servers_and_publisher(procs);
    for (what, w) in [("reading", healthy), ("stalled", stalled)] {
        for (i, pid) in w.pids.iter().enumerate() {
            out.push(Placement::of(format!("{what} worker {i}"), *pid));
        }
    }
    out
}

/// What the reading connections got, against what was published to them.
fn healthy_of(g: &Gathered) -> Healthy {
    let mut c = Counts::default();
    for r in &g.healthy {
        c.add(&r.healthy);
    }
    let per_symbol = &g.report.in_window_per_symbol;
    let expected: u64 = (0..g.healthy_shape.conns)
        .flat_map(|i| g.healthy_shape.symbols_of(i).collect::<Vec<_>>())
        .map(|s| per_symbol.get(s).copied().unwrap_or(0))
        .sum();
    let untouched = c.closes.is_empty()
        && c.gaps == 0
        && c.holes == 0
        && c.duplicates == 0
        && c.ticks == expected;
    Healthy {
        expected,
        received: c.ticks,
        gaps: c.gaps,
        holes: c.holes,
        duplicates: c.duplicates,
        closes: c.closes,
        untouched,
    }
}

/// Judges one storm.
fn outcome(a: &Args, b: &Binary, run: usize, g: Gathered) -> Outcome {
    let in_storm = g
        .points
        .iter()
        .filter(|p| p.t >= 0.0 && p.t <= g.storm_end_t);
    let peak_kb = in_storm.map(|p| p.rss_kb).max().unwrap_or(g.before_kb);
    let after_kb = g
        .points
        .iter()
        .find(|p| p.t >= g.after_t)
        .or(g.points.last())
        .map(|p| p.rss_kb)
        .unwrap_or(0);
    let growth_bytes = peak_kb.saturating_sub(g.before_kb) * 1024;
    let after_ratio = after_kb as f64 / g.before_kb.max(1) as f64;
    let mut stalled = Counts::default();
    for r in &g.stalled {
        stalled.add(&r.other);
    }
    let mut stalled_closes = stalled.closes.clone();
    let ended: u64 = stalled_closes.values().sum();
    let open = (a.stalled as u64).saturating_sub(ended);
    if open > 0 {
        stalled_closes.insert("open".into(), open);
    }
    let healthy = healthy_of(&g);
    let mut failed = Vec::new();
    let allowed = (a.bound_mib + a.slack) << 20;
    if growth_bytes > allowed {
        failed.push(format!(
            "peak growth {:.1} MiB above the bound {} MiB + slack {} MiB",
            growth_bytes as f64 / 1048576.0,
            a.bound_mib,
            a.slack
        ));
    }
    if after_ratio > a.recover {
        failed.push(format!(
            "RSS {:.1} MB {}s after the storm is {after_ratio:.2}× its {:.1} MB before (bound {:.2}×)",
            after_kb as f64 / 1024.0,
            a.after.as_secs(),
            g.before_kb as f64 / 1024.0,
            a.recover
        ));
    }
    if !healthy.untouched {
        failed.push(format!("a reading connection was touched: {healthy:?}"));
    }
    let invalid = invalid_reasons(a, &g.report);
    Outcome {
        binary: b.name.clone(),
        run,
        valid: invalid.is_empty(),
        invalid,
        before_kb: g.before_kb,
        subscribed_kb: g.subscribed_kb,
        peak_kb,
        growth_bytes,
        after_kb,
        after_ratio,
        idle_per_conn_bytes: g.subscribed_kb.saturating_sub(g.before_kb) as f64 * 1024.0
            / a.stalled as f64,
        buffered_peak: g
            .points
            .iter()
            .filter_map(|p| p.buffered)
            .max()
            .unwrap_or(0),
        bound: g.bound,
        stalled_conflated: stalled.conflated,
        stalled_closes,
        healthy,
        published: g.report.published,
        publisher_behind_p99_us: g.report.behind_p99_us,
        failed,
        points: g.points,
        placement: g.placement,
    }
}

/// Why a storm does not count as the load asked for.
fn invalid_reasons(a: &Args, r: &publisher::Report) -> Vec<String> {
    let mut out = Vec::new();
    let bound = a.common.max_behind.as_secs_f64() * 1e6;
    if r.behind_p99_us > bound {
        out.push(format!(
            "the publisher fell {:.0} µs behind its schedule at p99 (bound {bound:.0} µs): the rate asked for was not offered",
            r.behind_p99_us
        ));
    }
    if r.refused > 0 {
        out.push(format!("the node refused {} published ticks", r.refused));
    }
    out
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// One storm's lines on stdout.
fn print_outcome(o: &Outcome, a: &Args) {
    println!(
        "{} run {}: RSS before {:.1} MB (subscribed {:.1}), peak {:.1} MB (+{:.1} MiB; bound {} MiB + slack {} MiB), \
         {}s after {:.1} MB ({:.2}× before); buffered peak {:.1} MiB; bound acted: {} conflated, {} closed",
        o.binary,
        o.run,
        mb(o.before_kb),
        mb(o.subscribed_kb),
        mb(o.peak_kb),
        o.growth_bytes as f64 / 1048576.0,
        a.bound_mib,
        a.slack,
        a.after.as_secs(),
        mb(o.after_kb),
        o.after_ratio,
        o.buffered_peak as f64 / 1048576.0,
        o.bound.conflated,
        o.bound.closed,
    );
    println!(
        "  stalled: ends {:?}, {} ticks conflated; reading: {} of {} ticks, {} gaps, {} holes, closes {:?}: {}; \
         publisher {} ticks, p99 {:.0} µs behind{}",
        o.stalled_closes,
        o.stalled_conflated,
        o.healthy.received,
        o.healthy.expected,
        o.healthy.gaps,
        o.healthy.holes,
        o.healthy.closes,
        if o.healthy.untouched { "untouched" } else { "TOUCHED" },
        o.published,
        o.publisher_behind_p99_us,
        if o.valid { String::new() } else { format!(" (INVALID: {})", o.invalid.join("; ")) },
    );
    for f in &o.failed {
        println!("  FAILED: {f}");
    }
}

/// One binary's figures: the medians of its runs.
#[derive(Debug, Serialize)]
pub struct ByBinary {
    /// Its name.
    pub name: String,
    /// Its path.
    pub path: PathBuf,
    /// Runs, and of them valid.
    pub runs: usize,
    /// Valid runs.
    pub valid_runs: usize,
    /// Runs that kept every bound.
    pub passed_runs: usize,
    /// Medians over its runs.
    pub before_kb: f64,
    /// Peak − before, bytes.
    pub growth_bytes: f64,
    /// The highest growth of its runs, bytes.
    pub growth_max_bytes: f64,
    /// Memory `--after` the storm, kB.
    pub after_kb: f64,
    /// after ÷ before.
    pub after_ratio: f64,
    /// An idle stalled connection with its subscriptions, bytes.
    pub idle_per_conn_bytes: f64,
    /// Buffered output at its highest, bytes.
    pub buffered_peak: f64,
}

fn by_binary(binaries: &[Binary], outcomes: &[Outcome]) -> Vec<ByBinary> {
    binaries
        .iter()
        .map(|b| {
            let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.binary == b.name).collect();
            let med = |f: fn(&Outcome) -> f64| median(of.iter().map(|o| f(o)).collect());
            ByBinary {
                name: b.name.clone(),
                path: b.path.clone(),
                runs: of.len(),
                valid_runs: of.iter().filter(|o| o.valid).count(),
                passed_runs: of.iter().filter(|o| o.failed.is_empty()).count(),
                before_kb: med(|o| o.before_kb as f64),
                growth_bytes: med(|o| o.growth_bytes as f64),
                growth_max_bytes: of.iter().map(|o| o.growth_bytes as f64).fold(0.0, f64::max),
                after_kb: med(|o| o.after_kb as f64),
                after_ratio: med(|o| o.after_ratio),
                idle_per_conn_bytes: med(|o| o.idle_per_conn_bytes),
                buffered_peak: med(|o| o.buffered_peak as f64),
            }
        })
        .collect()
}

/// The medians of each binary, one line each.
fn print_table(rows: &[ByBinary], a: &Args) {
    println!(
        "\nstall storm: {} stalled × {}/{} symbols, {} reading, {} ticks/s; bound {} MiB + slack {} MiB; after {}s within {:.2}× before",
        a.stalled, a.stalled_symbols, a.symbols, a.healthy, a.rate, a.bound_mib, a.slack, a.after.as_secs(), a.recover
    );
    println!(
        "{:<12} {:>5} {:>10} {:>12} {:>10} {:>10} {:>8} {:>12} {:>11}",
        "binary",
        "runs",
        "before MB",
        "growth MiB",
        "max MiB",
        "after MB",
        "after×",
        "idle B/conn",
        "buffer MiB"
    );
    for r in rows {
        println!(
            "{:<12} {:>5} {:>10.1} {:>12.1} {:>10.1} {:>10.1} {:>8.2} {:>12.0} {:>11.1}",
            r.name,
            format!("{}/{}", r.passed_runs, r.runs),
            r.before_kb / 1024.0,
            r.growth_bytes / 1048576.0,
            r.growth_max_bytes / 1048576.0,
            r.after_kb / 1024.0,
            r.after_ratio,
            r.idle_per_conn_bytes,
            r.buffered_peak / 1048576.0,
        );
    }
}

/// Memory above its level before the storm and the buffered output, each run, with
/// the bound, the bound plus slack, what is allowed after, and when the storm ended.
fn plot(ctx: &Ctx, a: &Args, outcomes: &[Outcome]) -> anyhow::Result<()> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for o in outcomes {
        let before = o.before_kb as f64;
        let growth = o
            .points
            .iter()
            .map(|p| (p.t, (p.rss_kb as f64 - before) / 1024.0))
            .collect();
        series.push((format!("{} run {}: RSS − before", o.binary, o.run), growth));
        let buffered = o
            .points
            .iter()
            .filter_map(|p| p.buffered.map(|b| (p.t, b as f64 / 1048576.0)))
            .collect();
        series.push((
            format!("{} run {}: buffered output", o.binary, o.run),
            buffered,
        ));
    }
    let Some(first) = outcomes.first() else {
        return Ok(());
    };
    let (x0, x1) = first
        .points
        .iter()
        .fold((0.0f64, 0.0f64), |(lo, hi), p| (lo.min(p.t), hi.max(p.t)));
    let flat = |name: String, y: f64| (name, vec![(x0, y), (x1, y)]);
    let bound = a.bound_mib as f64;
    series.push(flat(format!("bound ({} MiB)", a.bound_mib), bound));
    series.push(flat(
        format!("bound + slack ({} MiB)", a.bound_mib + a.slack),
        bound + a.slack as f64,
    ));
    let allowed_after = (a.recover - 1.0) * first.before_kb as f64 / 1024.0;
    series.push(flat(
        format!("allowed after ({:.2}× before)", a.recover),
        allowed_after,
    ));
    let end = ctx.duration.as_secs_f64();
    let top = bound + a.slack as f64;
    series.push(("storm ends".into(), vec![(end, 0.0), (end, top)]));
    let after = end + a.read_out.as_secs_f64() + a.after.as_secs_f64();
    series.push((
        format!("+{}s after", a.after.as_secs()),
        vec![(after, 0.0), (after, top)],
    ));
    crate::plot::lines(
        &ctx.out.join(PLOT),
        "stall storm: node memory above its level before, and its buffered output",
        "s since the storm began",
        "MB",
        &series,
        false,
    )
}

/// `summary.json`: the command, placement, every storm and each binary's medians.
fn summary(
    ctx: &Ctx,
    a: &Args,
    outcomes: &[Outcome],
    by_binary: Vec<ByBinary>,
) -> anyhow::Result<()> {
    let passed = outcomes.iter().all(|o| o.failed.is_empty());
    let s = super::summary_with_head(
        ctx,
        serde_json::json!({
            "extra": {
                "stalled": a.stalled,
                "stalled_symbols": a.stalled_symbols,
                "healthy": a.healthy,
                "healthy_symbols": a.healthy_symbols,
                "symbols": a.symbols,
                "rate": a.rate,
                "bound_bytes": a.bound_mib << 20,
                "slack_bytes": a.slack << 20,
                "recover": a.recover,
                "after_s": a.after.as_secs_f64(),
                "send_buffer": a.send_buffer,
                "passed": passed,
                "by_binary": by_binary,
                "storms": outcomes,
            },
        }),
    )?;
    crate::report::write_summary(&ctx.out, &s)
}
