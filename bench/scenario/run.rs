//! One measured run, step by step: the servers, the receiving processes, the window,
//! the paced publisher, /proc samples while it lasts, then what it all adds up to.

use std::io::IsTerminal;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;

use crate::common::{Common, Source, Target};
use crate::load::{self, Behaviour, Counts, Window, WorkerResult, WorkerSpec, Workers};
use crate::measured::{
    ClientStats, NodeSeries, Percentiles, Placement, Restarted, RunResult, ServerStats, Steady,
};
use crate::publisher::{self, Plan, Sink};
use crate::spawn::{self, Procs, Sample};

use super::restarts::Hooks;
use super::servers::{start_servers, Endpoints};
use super::{Ctx, Load};

/// Client CPU share past which the bench says its own clients were the limit.
const CLIENT_LIMIT_UTIL: f64 = 0.9;

/// Runs `load` against `target` once.
pub fn run_once(
    ctx: &mut Ctx,
    target: &Target,
    load: &Load,
    run: usize,
) -> anyhow::Result<RunResult> {
    ctx.seq += 1;
    let tag = format!("{:03}-{}-run{run}", ctx.seq, target.label);
    let c = ctx.common.clone();
    let mut procs = Procs::default();
    let ep = start_servers(ctx, target, load, &mut procs, &tag)?;
    let mut measured = Measured::of(&procs, &c, Hooks::new(load, &ep)?);
    let tcp_before = spawn::tcp_mem_kb();
    let (mut workers, behaviours) = start_workers(&c, load, &ep)?;
    let setup_conns_per_s = wait_opened(&mut workers, load)?;
    procs.check_alive()?;
    let (t0, w) = window(ctx);
    workers.go(&w)?;
    let publisher = start_publisher(target, &ep, &c, load, t0, &w)?;
    let label = format!("{} run {run}", target.label);
    let watched = watch(ctx, &label, &w, &mut workers, &mut procs, &mut measured)?;
    let pub_report = join(publisher)?;
    let placement = placement(&procs, &workers);
    let results = workers.results(Duration::from_secs(30))?;
    procs.stop();

    let m = Merged::of(&results, c.max_client_lag)?;
    let report = pub_report.as_ref();
    let secs = ctx.duration.as_secs_f64();
    let delivered = m.counts.ticks + m.other.ticks;
    let frames = m.counts.frames + m.other.frames;
    let bytes = m.counts.bytes + m.other.bytes;
    let expected = expected(report, load, &behaviours);
    let invalid = invalid_reasons(report, &m.clients, &c);
    // A paced load receives fewer ticks than published × fan-out by design: what it
    // folded is counted instead (`counts.folded`).
    let paced = load.subscription.throttle_ms > 0;
    let complete = expected.filter(|_| !paced).map(|e| {
        m.counts.ticks == e && m.counts.holes == 0 && m.counts.gaps == 0 && m.counts.duplicates == 0
    });
    let steady = steady(&m.seconds, report, &results, &c)?;
    let conns = load.shape.conns;
    Ok(RunResult {
        target: target.label.clone(),
        setup: target.clone(),
        run,
        shape: load.shape.to_string(),
        rate: load.rate,
        valid: invalid.is_empty(),
        invalid,
        latency: Percentiles::of(&m.hist),
        latency_other: (!m.other_hist.is_empty()).then(|| Percentiles::of(&m.other_hist)),
        published_in_window: report.map(|r| r.in_window),
        expected,
        complete,
        msgs_per_s: delivered as f64 / secs,
        frames_per_s: frames as f64 / secs,
        bytes_per_s: bytes as f64 / secs,
        msgs_per_frame: delivered as f64 / frames.max(1) as f64,
        bytes_per_msg: bytes as f64 / delivered.max(1) as f64,
        counts: m.counts,
        counts_other: m.other,
        server: server_stats(&measured, watched.server, delivered, secs, conns),
        redis: measured
            .redis_pid
            .map(|pid| ServerStats::over(vec![pid], watched.redis, delivered, secs)),
        clients: m.clients,
        publisher: pub_report,
        placement,
        setup_conns_per_s,
        tcp_mem_kb: (tcp_before, watched.tcp_held),
        seconds: m.seconds.iter().map(Percentiles::of).collect(),
        steady,
        nodes: watched.nodes,
        restarts: watched.restarts,
        hist: m.hist,
    })
}

/// The processes a run samples: the servers measured (their figures summed) and the
/// redis-server, if one runs.
struct Measured {
    server_pids: Vec<u32>,
    /// Those given with `--server-pid`.
    given: Vec<u32>,
    redis_pid: Option<u32>,
    /// The servers before any connection.
    idle: Option<Sample>,
    /// Each node on its own, and the restarts (taken when the window ends).
    hooks: Option<Hooks>,
}

impl Measured {
    fn of(procs: &Procs, c: &Common, hooks: Hooks) -> Measured {
        let mut server_pids = procs.measured_pids();
        server_pids.extend(c.server_pid.iter().copied());
        let redis_pid = procs
            .list
            .iter()
            .find(|p| p.name == "redis-server")
            .map(|p| p.child.id());
        let idle = sum_samples(&server_pids, 0.0, true);
        Measured {
            server_pids,
            given: c.server_pid.clone(),
            redis_pid,
            idle,
            hooks: Some(hooks),
        }
    }

    /// The servers' pids now: those running of the ones started (a node restarted has
    /// a new one; while it is down, the others alone), and those given.
    fn pids(&self, procs: &Procs) -> Vec<u32> {
        let mut pids = procs.measured_pids();
        pids.extend(self.given.iter().copied());
        pids
    }
}

/// The servers are sampled every 250 ms; their descriptors are counted once in this
/// many samples (every 2 s), the last count carried between: a count lists every
/// descriptor, on the bench's own CPU (about a microsecond each).
const FDS_EVERY: u32 = 8;

/// Past this many descriptors the count is carried, not taken again: at 100,000
/// connections a listing takes the bench's CPU ~100 ms, beside the publisher and the
/// receiving processes. (The soak judges descriptors from its own samples of each
/// node, which holds about a hundred.)
const FDS_COUNTED_UP_TO: u64 = 10_000;

fn sum_samples(pids: &[u32], t: f64, count_fds: bool) -> Option<Sample> {
    let mut s = Sample {
        t,
        ..Sample::default()
    };
    for &p in pids {
        let x = spawn::sample_with(p, t, count_fds)?;
        s.cpu_s += x.cpu_s;
        s.rss_kb += x.rss_kb;
        s.fds += x.fds;
        s.threads += x.threads;
    }
    Some(s)
}

/// Starts the receiving processes, connection `i` in worker `i mod P`; returns them and
/// each connection's behaviour.
fn start_workers(
    c: &Common,
    load: &Load,
    ep: &Endpoints,
) -> anyhow::Result<(Workers, Vec<Behaviour>)> {
    let shape = load.shape;
    let p = c.clients.max(1).min(shape.conns);
    let mut specs: Vec<WorkerSpec> = (0..p)
        .map(|w| WorkerSpec {
            index: w,
            bind: Some(load::source_addr(w)),
            urls: ep.ws.clone(),
            shape,
            conns: Vec::new(),
            open_rate: load.open_rate / p as f64,
            churn: load.churn,
            subscription: load.subscription.clone(),
            follow: load.follow,
        })
        .collect();
    let mut behaviours = Vec::with_capacity(shape.conns);
    for i in 0..shape.conns {
        let b = (load.behaviour)(i);
        behaviours.push(b);
        specs[i % p].conns.push((i, b));
    }
    Ok((Workers::start(specs)?, behaviours))
}

/// Waits until every connection is open and subscribed; returns how many opened a
/// second. One that could not be opened fails the run.
fn wait_opened(workers: &mut Workers, load: &Load) -> anyhow::Result<f64> {
    let conns = load.shape.conns;
    let setup_timeout = Duration::from_secs(30)
        + Duration::from_secs_f64(if load.open_rate > 0.0 {
            conns as f64 / load.open_rate * 2.0
        } else {
            conns as f64 / 200.0
        });
    let ready = workers.wait_ready(setup_timeout)?;
    let failed: u64 = ready.iter().map(|r| r.failed).sum();
    if failed > 0 {
        let why = ready
            .iter()
            .find_map(|r| r.first_error.clone())
            .unwrap_or_default();
        bail!("{failed} of {conns} connections could not be opened: {why}");
    }
    let setup_s = ready.iter().map(|r| r.setup_s).fold(0.0, f64::max);
    Ok(conns as f64 / setup_s.max(1e-9))
}

/// The window from now: the first tick due in 0.5 s (time for the publisher to
/// connect), recording after the warm-up, then the drain. Returns the first tick's
/// time and the window.
fn window(ctx: &Ctx) -> (u64, Window) {
    let t0 = tickstream::tick::now_ns() + 500_000_000;
    let record_from = t0 + ctx.warmup.as_nanos() as u64;
    let until = record_from + ctx.duration.as_nanos() as u64;
    let stop_at = until + ctx.common.drain.as_nanos() as u64;
    let w = Window {
        record_from,
        until,
        stop_at,
    };
    (t0, w)
}

type Publisher = JoinHandle<anyhow::Result<publisher::Report>>;

/// Starts the bench's publisher into the target's `/v1/publish` or Redis (none when
/// the node ticks from its own feed).
fn start_publisher(
    target: &Target,
    ep: &Endpoints,
    c: &Common,
    load: &Load,
    t0: u64,
    w: &Window,
) -> anyhow::Result<Option<Publisher>> {
    let sink = match target.source {
        Source::Synthetic => return Ok(None),
        Source::Redis => Sink::Redis {
            url: ep.redis.clone().expect("redis endpoint"),
            prefix: c.redis_prefix.clone(),
            history: c.redis_history,
        },
        Source::Publish => Sink::Ws(
            ep.publish
                .clone()
                .ok_or_else(|| anyhow::anyhow!("no publisher endpoint"))?,
        ),
    };
    let plan = Plan {
        rate: load.rate,
        symbols: load.shape.symbols,
        epoch: epoch_name(),
        t0,
        end: w.until,
        record_from: w.record_from,
        skip_seq: c.skip_seq,
        seq_base: 0,
        order: c.order,
        book_levels: load.book_levels,
        ride_outages: load
            .restarts
            .iter()
            .any(|r| r.what == crate::measured::Restartable::Redis),
    };
    Ok(Some(publisher::start(plan, sink)))
}

fn epoch_name() -> String {
    let t = tickstream::tick::now_ns();
    let mut x = t ^ (t >> 17) ^ (std::process::id() as u64) << 32;
    let mut s = String::from("b");
    for _ in 0..6 {
        s.push(char::from(
            b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize],
        ));
        x /= 36;
    }
    s
}

fn join(publisher: Option<Publisher>) -> anyhow::Result<Option<publisher::Report>> {
    match publisher {
        Some(h) => {
            Ok(Some(h.join().map_err(|_| {
                anyhow::anyhow!("the publisher panicked")
            })??))
        }
        None => Ok(None),
    }
}

/// Samples of a process (or of processes summed) every 250 ms, and its CPU time when
/// the window opened and when it closed.
#[derive(Default)]
struct Series {
    samples: Vec<Sample>,
    cpu_from: Option<f64>,
    cpu_until: Option<f64>,
}

impl Series {
    fn push(&mut self, s: Sample, now: u64, w: &Window) {
        if now >= w.record_from && self.cpu_from.is_none() {
            self.cpu_from = Some(s.cpu_s);
        }
        if now >= w.until && self.cpu_until.is_none() {
            self.cpu_until = Some(s.cpu_s);
        }
        self.samples.push(s);
    }

    /// CPU seconds used within the window.
    fn cpu_in_window(&self) -> f64 {
        match (self.cpu_from, self.cpu_until) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        }
    }
}

/// What was sampled while the run lasted.
#[derive(Default)]
struct Watched {
    server: Series,
    redis: Series,
    /// Kernel TCP memory halfway through the window, kB.
    tcp_held: Option<u64>,
    /// Each node's samples (the soak).
    nodes: Vec<NodeSeries>,
    /// The restarts done.
    restarts: Vec<Restarted>,
}

/// Samples the servers and shows progress until the workers report; fails as soon as
/// a started process has exited.
fn watch(
    ctx: &Ctx,
    label: &str,
    w: &Window,
    workers: &mut Workers,
    procs: &mut Procs,
    measured: &mut Measured,
) -> anyhow::Result<Watched> {
    let mut hooks = measured.hooks.take().expect("hooks are taken once");
    let mut out = Watched::default();
    let mut progress = Progress::new(label);
    let half = ctx.duration.as_secs_f64() / 2.0;
    let mut round = 0u32;
    let ended = loop {
        let now = tickstream::tick::now_ns();
        if now >= w.stop_at {
            break Ok(());
        }
        let t = (now as f64 - w.record_from as f64) / 1e9;
        if out.tcp_held.is_none() && t >= half {
            out.tcp_held = spawn::tcp_mem_kb();
        }
        let last_fds = out.server.samples.last().map(|l| l.fds);
        let count_fds =
            round.is_multiple_of(FDS_EVERY) && last_fds.is_none_or(|n| n < FDS_COUNTED_UP_TO);
        round += 1;
        if let Some(mut s) = sum_samples(&measured.pids(procs), t, count_fds) {
            if !count_fds {
                s.fds = last_fds.unwrap_or(0);
            }
            out.server.push(s, now, w);
        }
        if let Err(e) = hooks.tick(procs, t) {
            break Err(e);
        }
        // Read by name: a restarted redis-server has a new pid.
        if let Some(s) = procs
            .pid_of("redis-server")
            .and_then(|p| spawn::sample(p, t))
        {
            out.redis.push(s, now, w);
        }
        progress.show(workers, now, w, &out.server.samples);
        std::thread::sleep(Duration::from_millis(250));
        if let Err(e) = procs.check_alive() {
            break Err(e);
        }
    };
    progress.end();
    ended?;
    (out.nodes, out.restarts) = hooks.finish()?;
    Ok(out)
}

/// A progress line on stderr once a second: in place on a terminal, a line each
/// otherwise.
struct Progress<'a> {
    label: &'a str,
    tty: bool,
    last_line: Instant,
    last_count: u64,
}

impl<'a> Progress<'a> {
    fn new(label: &'a str) -> Progress<'a> {
        Progress {
            label,
            tty: std::io::stderr().is_terminal(),
            last_line: Instant::now(),
            last_count: 0,
        }
    }

    fn show(&mut self, workers: &mut Workers, now: u64, w: &Window, samples: &[Sample]) {
        if self.last_line.elapsed() < Duration::from_secs(1) {
            return;
        }
        let n = workers.progress();
        let rate = (n - self.last_count.min(n)) as f64 / self.last_line.elapsed().as_secs_f64();
        self.last_count = n;
        self.last_line = Instant::now();
        let phase = if now < w.record_from {
            "warm-up"
        } else if now < w.until {
            "recording"
        } else {
            "draining"
        };
        let t = (now as f64 - w.record_from as f64) / 1e9;
        let cpu = samples
            .iter()
            .rev()
            .nth(4)
            .zip(samples.last())
            .map(|(a, b)| (b.cpu_s - a.cpu_s) / (b.t - a.t).max(1e-9) * 100.0)
            .unwrap_or(0.0);
        let line = format!(
            "{} [{phase} {t:+.0}s] {} msgs/s recorded, server CPU {cpu:.0}%, RSS {:.1} MB",
            self.label,
            rate as u64,
            samples
                .last()
                .map(|s| s.rss_kb as f64 / 1024.0)
                .unwrap_or(0.0)
        );
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn end(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// Where each process ran: the started servers, this process, the workers.
fn placement(procs: &Procs, workers: &Workers) -> Vec<Placement> {
    let mut placement = servers_and_publisher(procs);
    for (i, pid) in workers.pids.iter().enumerate() {
        placement.push(Placement::of(
            format!("worker {i} ({})", load::source_addr(i)),
            *pid,
        ));
    }
    placement
}

/// Where the started servers and this process (the publisher) run.
pub(super) fn servers_and_publisher(procs: &Procs) -> Vec<Placement> {
    let mut placement: Vec<Placement> = procs
        .list
        .iter()
        .map(|p| Placement::of(p.name.clone(), p.child.id()))
        .collect();
    placement.push(Placement::of(
        "tickstream-bench (publisher)",
        std::process::id(),
    ));
    placement
}

/// The workers' results added up.
struct Merged {
    counts: Counts,
    other: Counts,
    hist: Histogram<u64>,
    other_hist: Histogram<u64>,
    /// Healthy connections' latency per second of the window.
    seconds: Vec<Histogram<u64>>,
    clients: ClientStats,
}

impl Merged {
    fn of(results: &[WorkerResult], max_client_lag: Duration) -> anyhow::Result<Merged> {
        let mut m = Merged {
            counts: Counts::default(),
            other: Counts::default(),
            hist: load::new_hist(),
            other_hist: load::new_hist(),
            seconds: Vec::new(),
            clients: ClientStats::default(),
        };
        for r in results {
            m.counts.add(&r.healthy);
            m.other.add(&r.other);
            m.hist.add(load::hist_from_hex(&r.hist)?)?;
            m.other_hist.add(load::hist_from_hex(&r.other_hist)?)?;
            for (i, s) in r.seconds.iter().enumerate() {
                let h = load::hist_from_hex(s)?;
                if m.seconds.len() <= i {
                    m.seconds.push(load::new_hist());
                }
                m.seconds[i].add(h)?;
            }
            m.clients.cpu_util.push(r.cpu_s / r.wall_s.max(1e-9));
            m.clients.lag_p99_us.push(r.lag_p99_us);
            m.clients.lag_max_us.push(r.lag_max_us);
            m.clients.nofile = r.nofile;
        }
        let c = &mut m.clients;
        c.limited = c.cpu_util.iter().any(|&u| u > CLIENT_LIMIT_UTIL)
            || c.lag_p99_us
                .iter()
                .any(|&l| l > max_client_lag.as_secs_f64() * 1e6);
        Ok(m)
    }
}

impl ServerStats {
    /// CPU over the window (per delivered message too) and the highest RSS of the
    /// processes `pids` sampled as `series`.
    fn over(pids: Vec<u32>, series: Series, delivered: u64, secs: f64) -> ServerStats {
        let cpu = series.cpu_in_window();
        ServerStats {
            pids,
            cpu_s: cpu,
            cpu_util: cpu / secs,
            cpu_us_per_msg: if delivered > 0 {
                cpu * 1e6 / delivered as f64
            } else {
                0.0
            },
            rss_max_kb: series.samples.iter().map(|s| s.rss_kb).max().unwrap_or(0),
            samples: series.samples,
            ..ServerStats::default()
        }
    }
}

/// The measured servers' figures, with their memory before the connections, held
/// over the window, and per connection.
fn server_stats(
    measured: &Measured,
    series: Series,
    delivered: u64,
    secs: f64,
    conns: usize,
) -> ServerStats {
    let window: Vec<u64> = series
        .samples
        .iter()
        .filter(|s| s.t >= 0.0 && s.t <= secs)
        .map(|s| s.rss_kb)
        .collect();
    let rss_mean = if window.is_empty() {
        0
    } else {
        window.iter().sum::<u64>() / window.len() as u64
    };
    let rss_idle = measured.idle.map(|s| s.rss_kb).unwrap_or(0);
    ServerStats {
        rss_idle_kb: rss_idle,
        rss_mean_kb: rss_mean,
        rss_per_conn_bytes: (rss_mean.saturating_sub(rss_idle) as f64 * 1024.0) / conns as f64,
        ..ServerStats::over(measured.server_pids.clone(), series, delivered, secs)
    }
}

/// What healthy connections should have received: each symbol's ticks published in
/// the window, once per healthy subscriber (unknown under churn or without the
/// bench's publisher).
fn expected(
    report: Option<&publisher::Report>,
    load: &Load,
    behaviours: &[Behaviour],
) -> Option<u64> {
    let r = report?;
    if load.churn.is_some() {
        return None;
    }
    let mut e = 0u64;
    for (i, b) in behaviours.iter().enumerate() {
        if *b == Behaviour::Healthy {
            e += load
                .shape
                .symbols_of(i)
                .map(|s| r.in_window_per_symbol[s])
                .sum::<u64>();
        }
    }
    Some(e)
}

/// Why the run does not count, if it does not: the load was not offered, or the
/// bench's own clients may have set the latency.
fn invalid_reasons(
    report: Option<&publisher::Report>,
    clients: &ClientStats,
    c: &Common,
) -> Vec<String> {
    let mut invalid = Vec::new();
    if let Some(r) = report {
        let bound = c.max_behind.as_secs_f64() * 1e6;
        if r.behind_p99_us > bound {
            invalid.push(format!(
                "the publisher fell {:.0} µs behind its schedule at p99 (bound {:.0} µs): the load asked for was not offered",
                r.behind_p99_us, bound
            ));
        }
        if r.refused > 0 {
            invalid.push(format!("the server refused {} published ticks", r.refused));
        }
    }
    if clients.cpu_util.iter().any(|&u| u > CLIENT_LIMIT_UTIL) {
        invalid.push(format!(
            "the bench's own clients were the limit (CPU {} of a core): add --clients or client CPUs",
            clients.cpu_util.iter().map(|u| format!("{:.0}%", u * 100.0)).collect::<Vec<_>>().join("/"),
        ));
    } else if clients.limited {
        invalid.push(format!(
            "the bench's clients were scheduled late (their own 10 ms timer fired {} µs late at p99): \
             the machine is busy or their CPUs are shared",
            clients.lag_p99_us.iter().map(|l| format!("{l:.0}")).collect::<Vec<_>>().join("/"),
        ));
    }
    invalid
}

/// The healthy latency over the seconds in which the load side kept its bounds.
fn steady(
    seconds: &[Histogram<u64>],
    report: Option<&publisher::Report>,
    results: &[WorkerResult],
    c: &Common,
) -> anyhow::Result<Steady> {
    let lags: Vec<&[f64]> = results
        .iter()
        .map(|r| r.lag_max_by_second_us.as_slice())
        .collect();
    let keep = steady_seconds(
        seconds.len(),
        report.map(|r| r.behind_max_by_second_us.as_slice()),
        &lags,
        c.max_behind.as_secs_f64() * 1e6,
        c.max_client_lag.as_secs_f64() * 1e6,
    );
    let mut steady_hist = load::new_hist();
    for (h, _) in seconds.iter().zip(&keep).filter(|(_, k)| **k) {
        steady_hist.add(h)?;
    }
    Ok(Steady {
        seconds: keep.iter().filter(|k| **k).count(),
        of: keep.len(),
        latency: Percentiles::of(&steady_hist),
    })
}

/// Which of the window's `n` seconds the load side kept its bounds in (µs): the
/// publisher's worst lateness (when the bench published) and every receiving
/// process's worst timer lag.
fn steady_seconds(
    n: usize,
    behind: Option<&[f64]>,
    lags: &[&[f64]],
    max_behind_us: f64,
    max_lag_us: f64,
) -> Vec<bool> {
    (0..n)
        .map(|i| {
            behind.is_none_or(|b| b.get(i).is_none_or(|&v| v <= max_behind_us))
                && lags
                    .iter()
                    .all(|l| l.get(i).is_some_and(|&v| v <= max_lag_us))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::steady_seconds;

    #[test]
    fn a_second_is_steady_only_when_publisher_and_every_receiver_kept_their_bounds() {
        let behind = [100.0, 9_000.0, 200.0, 300.0];
        let lag_a = [1_000.0, 1_000.0, 1_000.0, 1_000.0];
        let lag_b = [1_000.0, 1_000.0, 7_000.0];
        let keep = steady_seconds(4, Some(&behind), &[&lag_a, &lag_b], 5_000.0, 5_000.0);
        // second 1: the publisher late; 2: one receiver late; 3: one receiver has no
        // figure for it.
        assert_eq!(keep, [true, false, false, false]);
        // Without the bench's publisher (the node's own feed) only the receivers count.
        let keep = steady_seconds(3, None, &[&lag_a, &lag_b], 5_000.0, 5_000.0);
        assert_eq!(keep, [true, true, false]);
    }
}
