//! One measured run of a load against a target, and what every scenario builds on it.

pub mod connections;
pub mod cross_node;
pub mod encoding;
pub mod fanout;
pub mod latency;
pub mod slow;
pub mod soak;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::common::{parse_cpus, write_universe, Common, Server, Shape, Source, Target};
use crate::load::{self, Behaviour, Churn, Counts, Window, WorkerSpec, Workers};
use crate::publisher::{self, Plan, Sink};
use crate::report::Percentiles;
use crate::spawn::{self, Procs, Sample};

/// What a scenario asks of one run, beside the target.
#[derive(Clone)]
pub struct Load {
    /// The shape.
    pub shape: Shape,
    /// Ticks per second over the universe.
    pub rate: f64,
    /// Behaviour of connection `i`.
    pub behaviour: std::sync::Arc<dyn Fn(usize) -> Behaviour + Send + Sync>,
    /// Connections opened per second over all workers (0: at once).
    pub open_rate: f64,
    /// Soak churn.
    pub churn: Option<Churn>,
    /// Extra `serve` arguments for this scenario (before `--node-arg`s).
    pub node_args: Vec<String>,
    /// `--heartbeat` of the spawned nodes, unless the target sets its own.
    pub heartbeat: Option<String>,
}

impl Load {
    /// Every connection healthy, opened at once, no churn.
    pub fn plain(shape: Shape, rate: f64) -> Load {
        Load {
            shape,
            rate,
            behaviour: std::sync::Arc::new(|_| Behaviour::Healthy),
            open_rate: 0.0,
            churn: None,
            node_args: Vec::new(),
            heartbeat: None,
        }
    }
}

/// What the scenario shares between runs: flags, output directory, CPU lists.
pub struct Ctx {
    /// The common flags.
    pub common: Common,
    /// The scenario's name.
    pub scenario: String,
    /// Output directory (created).
    pub out: PathBuf,
    /// Server CPUs.
    pub server_cpus: Option<Vec<usize>>,
    /// Client CPUs.
    pub client_cpus: Option<Vec<usize>>,
    /// Redis CPUs.
    pub redis_cpus: Option<Vec<usize>>,
    /// The flat universe file.
    pub universe: PathBuf,
    /// Universe size the file holds.
    pub universe_n: usize,
    /// Runs so far (for file names).
    pub seq: usize,
    /// Recorded time per run.
    pub duration: Duration,
    /// Warm-up per run.
    pub warmup: Duration,
    /// Runs per target.
    pub runs: usize,
}

/// A scenario's defaults for the common flags left out.
pub struct Defaults {
    /// Recorded time.
    pub duration: Duration,
    /// Warm-up.
    pub warmup: Duration,
    /// Runs.
    pub runs: usize,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(3),
            runs: 3,
        }
    }
}

impl Ctx {
    /// Prepares the output directory and pins this process to the client CPUs.
    pub fn new(common: Common, scenario: &str, d: Defaults) -> anyhow::Result<Ctx> {
        let out = match &common.out {
            Some(d) => d.clone(),
            None => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs();
                PathBuf::from(format!("target/tickstream-bench/{scenario}-{t}"))
            }
        };
        std::fs::create_dir_all(out.join("logs"))
            .with_context(|| format!("creating {}", out.display()))?;
        let server_cpus = common.server_cpus.as_deref().map(parse_cpus).transpose()?;
        let client_cpus = common.client_cpus.as_deref().map(parse_cpus).transpose()?;
        let redis_cpus = match &common.redis_cpus {
            Some(c) => Some(parse_cpus(c)?),
            None => client_cpus.clone(),
        };
        if let Some(c) = &client_cpus {
            spawn::pin_self(c)?;
        }
        load::raise_nofile();
        Ok(Ctx {
            duration: common.duration.unwrap_or(d.duration),
            warmup: common.warmup.unwrap_or(d.warmup),
            runs: common.runs.unwrap_or(d.runs).max(1),
            universe: out.join("universe.csv"),
            universe_n: 0,
            common,
            scenario: scenario.to_owned(),
            out,
            server_cpus,
            client_cpus,
            redis_cpus,
            seq: 0,
        })
    }

    fn universe(&mut self, n: usize) -> anyhow::Result<PathBuf> {
        if self.universe_n != n {
            write_universe(&self.universe, n)?;
            self.universe_n = n;
        }
        Ok(self.universe.clone())
    }

    fn peers(&self) -> PathBuf {
        self.common
            .peers
            .clone()
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/peers"))
    }
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct RunResult {
    /// Target label.
    pub target: String,
    /// Which server, source, nodes, encoding.
    pub setup: Target,
    /// Run number of this target (1-based).
    pub run: usize,
    /// The shape and rate.
    pub shape: String,
    /// Ticks per second offered.
    pub rate: f64,
    /// Whether the run counts.
    pub valid: bool,
    /// Why not.
    pub invalid: Vec<String>,
    /// Latency of healthy connections, µs.
    pub latency: Percentiles,
    /// Latency of the other connections (stalled, slow), µs.
    pub latency_other: Option<Percentiles>,
    /// Counters of healthy connections.
    pub counts: Counts,
    /// Counters of the others.
    pub counts_other: Counts,
    /// Ticks the publisher sent whose time lies in the window.
    pub published_in_window: Option<u64>,
    /// What healthy connections should have received (published × their fan-out).
    pub expected: Option<u64>,
    /// received == expected with nothing lost.
    pub complete: Option<bool>,
    /// Delivered messages per second (ticks in the window / window).
    pub msgs_per_s: f64,
    /// Frames per second.
    pub frames_per_s: f64,
    /// Payload bytes per second.
    pub bytes_per_s: f64,
    /// Messages per frame.
    pub msgs_per_frame: f64,
    /// Payload bytes per message.
    pub bytes_per_msg: f64,
    /// The servers measured.
    pub server: ServerStats,
    /// redis-server, when one ran.
    pub redis: Option<ServerStats>,
    /// The bench's own receiving processes.
    pub clients: ClientStats,
    /// The publisher.
    pub publisher: Option<publisher::Report>,
    /// Where each process ran.
    pub placement: Vec<Placement>,
    /// Connections opened per second during setup.
    pub setup_conns_per_s: f64,
    /// Kernel TCP memory before the connections and while they were held, kB.
    pub tcp_mem_kb: (Option<u64>, Option<u64>),
    /// Per-second latency of healthy connections during the window.
    pub seconds: Vec<Percentiles>,
    /// The same latency over only the seconds in which the load side kept its bounds.
    pub steady: Steady,
    /// Histogram of healthy connections (not in the JSON).
    #[serde(skip)]
    pub hist: Histogram<u64>,
}

/// A run's healthy latency over the seconds of its window in which the load side kept
/// its bounds: the publisher's worst lateness within `--max-behind` and each receiving
/// process's worst timer lag within `--max-client-lag`. A run is valid only when its
/// p99 keeps them; this keeps the seconds that kept them at their worst, so that a
/// stall of the bench's own CPUs is left out of a tail measured over many seconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Steady {
    /// Seconds kept.
    pub seconds: usize,
    /// Seconds in the window.
    pub of: usize,
    /// Latency over the kept seconds.
    pub latency: Percentiles,
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

/// Server CPU and memory over a run.
#[derive(Debug, Default, Serialize)]
pub struct ServerStats {
    /// Pids.
    pub pids: Vec<u32>,
    /// CPU seconds in the window.
    pub cpu_s: f64,
    /// … as a share of one core.
    pub cpu_util: f64,
    /// CPU µs per delivered message.
    pub cpu_us_per_msg: f64,
    /// Resident memory before any connection, kB.
    pub rss_idle_kb: u64,
    /// Highest resident memory sampled, kB.
    pub rss_max_kb: u64,
    /// Mean over the window, kB.
    pub rss_mean_kb: u64,
    /// Resident memory per connection over idle, bytes (held connections).
    pub rss_per_conn_bytes: f64,
    /// Samples every 250 ms (summed over the pids).
    pub samples: Vec<Sample>,
}

/// The bench's receiving side.
#[derive(Debug, Default, Serialize)]
pub struct ClientStats {
    /// Per worker: share of one core used in the window.
    pub cpu_util: Vec<f64>,
    /// Per worker: p99 of its own scheduling lag, µs.
    pub lag_p99_us: Vec<f64>,
    /// Per worker: largest lag, µs.
    pub lag_max_us: Vec<f64>,
    /// Descriptor limit of the workers.
    pub nofile: u64,
    /// Whether the clients, not the server, were the limit.
    pub limited: bool,
}

/// Where one process ran.
#[derive(Debug, Serialize)]
pub struct Placement {
    /// Role.
    pub process: String,
    /// Pid.
    pub pid: u32,
    /// `Cpus_allowed_list`.
    pub cpus: String,
}

/// Client CPU share past which the bench says its own clients were the limit.
const CLIENT_LIMIT_UTIL: f64 = 0.9;

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

struct Endpoints {
    ws: Vec<String>,
    publish: Option<String>,
    redis: Option<String>,
}

/// Starts the servers of `target` (when spawning) and says where to connect.
fn start_servers(
    ctx: &mut Ctx,
    target: &Target,
    load: &Load,
    procs: &mut Procs,
    tag: &str,
) -> anyhow::Result<Endpoints> {
    let c = ctx.common.clone();
    let query = if target.encoding == "json" {
        String::new()
    } else {
        format!("?encoding={}", target.encoding)
    };
    if !c.spawning() {
        let ws: Vec<String> = c.urls.iter().map(|u| format!("{u}{query}")).collect();
        let publish = c
            .publish_url
            .clone()
            .or_else(|| ws.first().map(|u| u.replace("/v1/ws", "/v1/publish")));
        if target.source == Source::Redis && c.redis.is_none() {
            bail!("--source redis with --url needs --redis URL: the Redis the server reads");
        }
        return Ok(Endpoints {
            ws,
            publish,
            redis: c.redis.clone(),
        });
    }
    let universe = ctx.universe(load.shape.symbols)?;
    let logs = ctx.out.join("logs");
    let needs_redis = target.source == Source::Redis || target.nodes > 1;
    let mut redis_url = None;
    if needs_redis {
        let port = spawn::free_port()?;
        let dir = ctx.out.join("redis");
        std::fs::create_dir_all(&dir)?;
        procs
            .start(
                "redis-server",
                std::process::Command::new("redis-server").args([
                    "--port".into(),
                    port.to_string(),
                    "--bind".into(),
                    "127.0.0.1".into(),
                    "--save".into(),
                    String::new(),
                    "--appendonly".into(),
                    "no".into(),
                    "--dir".into(),
                    dir.display().to_string(),
                ]),
                ctx.redis_cpus.as_deref(),
                logs.join(format!("{tag}-redis.log")),
                false,
            )
            .context("is redis-server installed? (Debian: apt-get install redis-server)")?;
        spawn::wait_redis(procs, port, Duration::from_secs(10))?;
        redis_url = Some(format!("redis://127.0.0.1:{port}"));
    }
    let mut ws = Vec::new();
    let mut publish = None;
    match target.server {
        Server::Tickstream => {
            let bin = spawn::sibling("tickstream")?;
            if !bin.exists() {
                bail!(
                    "{} not found: build it beside the bench (cargo build --release --bin tickstream)",
                    bin.display()
                );
            }
            for n in 0..target.nodes {
                let port = spawn::free_port()?;
                let mut args: Vec<String> = vec![
                    "serve".into(),
                    "--listen".into(),
                    format!("127.0.0.1:{port}"),
                    "--node".into(),
                    format!("bench-{n}"),
                    "--universe".into(),
                    universe.display().to_string(),
                    "--log".into(),
                    "warn".into(),
                ];
                if let Some(r) = &redis_url {
                    args.extend([
                        "--redis".into(),
                        r.clone(),
                        "--redis-prefix".into(),
                        c.redis_prefix.clone(),
                    ]);
                }
                match target.source {
                    Source::Synthetic => args.extend([
                        "--feed".into(),
                        "synthetic".into(),
                        "--rate".into(),
                        load.rate.to_string(),
                        "--seed".into(),
                        "7".into(),
                    ]),
                    _ => args.extend(["--feed".into(), "none".into()]),
                }
                let own = target.serve_args();
                args.extend(own.iter().map(|a| a.to_string()));
                if let Some(hb) = load
                    .heartbeat
                    .as_ref()
                    .filter(|_| !own.contains(&"--heartbeat"))
                {
                    args.extend(["--heartbeat".into(), hb.clone()]);
                }
                args.extend(load.node_args.iter().cloned());
                args.extend(c.node_args.iter().cloned());
                procs.start(
                    &format!("tickstream-{n}"),
                    std::process::Command::new(&bin).args(&args),
                    ctx.server_cpus.as_deref(),
                    logs.join(format!("{tag}-node{n}.log")),
                    true,
                )?;
                spawn::wait_http(procs, port, "/healthz", Duration::from_secs(20))?;
                ws.push(format!("ws://127.0.0.1:{port}/v1/ws{query}"));
                if n == 0 {
                    publish = Some(format!("ws://127.0.0.1:{port}/v1/publish"));
                }
            }
        }
        Server::Floor => {
            let bin = spawn::sibling("tickstream-floor")?;
            if !bin.exists() {
                bail!(
                    "--against floor: {} not found; the floor reference lives in bench/peers/floor \
                     and is built with `cargo build --release --bin tickstream-floor`",
                    bin.display()
                );
            }
            let port = spawn::free_port()?;
            procs.start(
                "tickstream-floor",
                std::process::Command::new(&bin)
                    .args(&["--listen".into(), format!("127.0.0.1:{port}")]),
                ctx.server_cpus.as_deref(),
                logs.join(format!("{tag}-floor.log")),
                true,
            )?;
            spawn::wait_http(procs, port, "/healthz", Duration::from_secs(20))?;
            ws.push(format!("ws://127.0.0.1:{port}/v1/ws{query}"));
            publish = Some(format!("ws://127.0.0.1:{port}/v1/publish"));
        }
        Server::NodeWs => {
            let dir = ctx.peers().join("node-ws");
            let script = dir.join("server.js");
            if !script.exists() {
                bail!(
                    "--against node: {} not found (the Node.js reference lives in bench/peers/node-ws)",
                    script.display()
                );
            }
            if !dir.join("node_modules").exists() {
                eprintln!("tickstream-bench: installing the Node reference's packages (npm ci)");
                let st = std::process::Command::new("npm")
                    .arg("ci")
                    .arg("--no-audit")
                    .arg("--no-fund")
                    .current_dir(&dir)
                    .status()
                    .context("running npm ci (is npm installed? Debian: apt-get install npm)")?;
                if !st.success() {
                    bail!("npm ci in {} failed ({st})", dir.display());
                }
            }
            let port = spawn::free_port()?;
            let redis = redis_url.clone().expect("node-ws reads Redis");
            procs
                .start(
                    "node-ws",
                    std::process::Command::new("node").current_dir(&dir).args([
                        script.display().to_string(),
                        "--listen".into(),
                        format!("127.0.0.1:{port}"),
                        "--redis".into(),
                        redis,
                        "--prefix".into(),
                        c.redis_prefix.clone(),
                    ]),
                    ctx.server_cpus.as_deref(),
                    logs.join(format!("{tag}-node-ws.log")),
                    true,
                )
                .context("is node installed? (Debian: apt-get install nodejs)")?;
            spawn::wait_http(procs, port, "/healthz", Duration::from_secs(20))?;
            ws.push(format!("ws://127.0.0.1:{port}/v1/ws{query}"));
        }
    }
    Ok(Endpoints {
        ws,
        publish,
        redis: redis_url,
    })
}

fn sum_samples(pids: &[u32], t: f64) -> Option<Sample> {
    let mut s = Sample {
        t,
        ..Sample::default()
    };
    for &p in pids {
        let x = spawn::sample(p, t)?;
        s.cpu_s += x.cpu_s;
        s.rss_kb += x.rss_kb;
        s.fds += x.fds;
        s.threads += x.threads;
    }
    Some(s)
}

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
    let mut server_pids = procs.measured_pids();
    server_pids.extend(c.server_pid.iter().copied());
    let redis_pid = procs
        .list
        .iter()
        .find(|p| p.name == "redis-server")
        .map(|p| p.child.id());
    let idle = sum_samples(&server_pids, 0.0);
    let tcp_before = spawn::tcp_mem_kb();

    // The receiving processes.
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
        })
        .collect();
    let mut behaviours = Vec::with_capacity(shape.conns);
    for i in 0..shape.conns {
        let b = (load.behaviour)(i);
        behaviours.push(b);
        specs[i % p].conns.push((i, b));
    }
    let mut workers = Workers::start(specs)?;
    let setup_timeout = Duration::from_secs(30)
        + Duration::from_secs_f64(if load.open_rate > 0.0 {
            shape.conns as f64 / load.open_rate * 2.0
        } else {
            shape.conns as f64 / 200.0
        });
    let ready = workers.wait_ready(setup_timeout)?;
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
    let setup_s = ready.iter().map(|r| r.setup_s).fold(0.0, f64::max);
    let setup_conns_per_s = shape.conns as f64 / setup_s.max(1e-9);
    procs.check_alive()?;

    // The window.
    let now = tickstream::tick::now_ns();
    // Time for the publisher to connect before its first tick is due.
    let t0 = now + 500_000_000;
    let record_from = t0 + ctx.warmup.as_nanos() as u64;
    let until = record_from + ctx.duration.as_nanos() as u64;
    let stop_at = until + c.drain.as_nanos() as u64;
    let w = Window {
        record_from,
        until,
        stop_at,
    };
    workers.go(&w)?;
    let publisher = if target.source == Source::Synthetic {
        None
    } else {
        let sink = match target.source {
            Source::Redis => Sink::Redis {
                url: ep.redis.clone().expect("redis endpoint"),
                prefix: c.redis_prefix.clone(),
                history: c.redis_history,
            },
            _ => Sink::Ws(
                ep.publish
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("no publisher endpoint"))?,
            ),
        };
        Some(publisher::start(
            Plan {
                rate: load.rate,
                symbols: shape.symbols,
                epoch: epoch_name(),
                t0,
                end: until,
                record_from,
                skip_seq: c.skip_seq,
                order: c.order,
            },
            sink,
        ))
    };

    // Sample the servers and show progress until the workers report.
    let tty = std::io::stderr().is_terminal();
    let mut samples = Vec::new();
    let mut redis_samples = Vec::new();
    let mut cpu_at_from = None;
    let mut cpu_at_until = None;
    let mut redis_cpu = (None, None);
    let mut tcp_held = None;
    let mut last_line = Instant::now();
    let mut last_count = 0u64;
    loop {
        let now = tickstream::tick::now_ns();
        if now >= stop_at {
            break;
        }
        let t = (now as f64 - record_from as f64) / 1e9;
        if tcp_held.is_none() && t >= ctx.duration.as_secs_f64() / 2.0 {
            tcp_held = spawn::tcp_mem_kb();
        }
        if let Some(s) = sum_samples(&server_pids, t) {
            if now >= record_from && cpu_at_from.is_none() {
                cpu_at_from = Some(s.cpu_s);
            }
            if now >= until && cpu_at_until.is_none() {
                cpu_at_until = Some(s.cpu_s);
            }
            samples.push(s);
        }
        if let Some(rp) = redis_pid {
            if let Some(s) = spawn::sample(rp, t) {
                if now >= record_from && redis_cpu.0.is_none() {
                    redis_cpu.0 = Some(s.cpu_s);
                }
                if now >= until && redis_cpu.1.is_none() {
                    redis_cpu.1 = Some(s.cpu_s);
                }
                redis_samples.push(s);
            }
        }
        if last_line.elapsed() >= Duration::from_secs(1) {
            let n = workers.progress();
            let rate = (n - last_count.min(n)) as f64 / last_line.elapsed().as_secs_f64();
            last_count = n;
            last_line = Instant::now();
            let phase = if now < record_from {
                "warm-up"
            } else if now < until {
                "recording"
            } else {
                "draining"
            };
            let cpu = samples
                .iter()
                .rev()
                .nth(4)
                .zip(samples.last())
                .map(|(a, b)| (b.cpu_s - a.cpu_s) / (b.t - a.t).max(1e-9) * 100.0)
                .unwrap_or(0.0);
            let line = format!(
                "{} run {run} [{phase} {t:+.0}s] {} msgs/s recorded, server CPU {cpu:.0}%, RSS {:.1} MB",
                target.label,
                rate as u64,
                samples.last().map(|s| s.rss_kb as f64 / 1024.0).unwrap_or(0.0)
            );
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
        }
        std::thread::sleep(Duration::from_millis(250));
        if let Err(e) = procs.check_alive() {
            if tty {
                eprintln!();
            }
            return Err(e);
        }
    }
    if tty {
        eprintln!();
    }
    let pub_report = match publisher {
        Some(h) => Some(
            h.join()
                .map_err(|_| anyhow::anyhow!("the publisher panicked"))??,
        ),
        None => None,
    };
    let mut placement: Vec<Placement> = procs
        .list
        .iter()
        .map(|p| Placement {
            process: p.name.clone(),
            pid: p.child.id(),
            cpus: spawn::cpus_allowed(p.child.id()),
        })
        .collect();
    placement.push(Placement {
        process: "tickstream-bench (publisher)".into(),
        pid: std::process::id(),
        cpus: spawn::cpus_allowed(std::process::id()),
    });
    for (i, pid) in workers.pids.iter().enumerate() {
        placement.push(Placement {
            process: format!("worker {i} ({})", load::source_addr(i)),
            pid: *pid,
            cpus: spawn::cpus_allowed(*pid),
        });
    }
    let results = workers.results(Duration::from_secs(30))?;
    procs.stop();

    // Merge.
    let mut counts = Counts::default();
    let mut other = Counts::default();
    let mut hist = load::new_hist();
    let mut other_hist = load::new_hist();
    let mut seconds: Vec<Histogram<u64>> = Vec::new();
    let mut clients = ClientStats::default();
    for r in &results {
        counts.add(&r.healthy);
        other.add(&r.other);
        hist.add(load::hist_from_hex(&r.hist)?)?;
        other_hist.add(load::hist_from_hex(&r.other_hist)?)?;
        for (i, s) in r.seconds.iter().enumerate() {
            let h = load::hist_from_hex(s)?;
            if seconds.len() <= i {
                seconds.push(load::new_hist());
            }
            seconds[i].add(h)?;
        }
        clients.cpu_util.push(r.cpu_s / r.wall_s.max(1e-9));
        clients.lag_p99_us.push(r.lag_p99_us);
        clients.lag_max_us.push(r.lag_max_us);
        clients.nofile = r.nofile;
    }
    clients.limited = clients.cpu_util.iter().any(|&u| u > CLIENT_LIMIT_UTIL)
        || clients
            .lag_p99_us
            .iter()
            .any(|&l| l > c.max_client_lag.as_secs_f64() * 1e6);

    let secs = ctx.duration.as_secs_f64();
    let delivered = counts.ticks + other.ticks;
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= 0.0 && s.t <= secs)
        .collect();
    let server_cpu = match (cpu_at_from, cpu_at_until) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let rss_mean = if window.is_empty() {
        0
    } else {
        window.iter().map(|s| s.rss_kb).sum::<u64>() / window.len() as u64
    };
    let rss_idle = idle.map(|s| s.rss_kb).unwrap_or(0);
    let server = ServerStats {
        pids: server_pids.clone(),
        cpu_s: server_cpu,
        cpu_util: server_cpu / secs,
        cpu_us_per_msg: if delivered > 0 {
            server_cpu * 1e6 / delivered as f64
        } else {
            0.0
        },
        rss_idle_kb: rss_idle,
        rss_max_kb: samples.iter().map(|s| s.rss_kb).max().unwrap_or(0),
        rss_mean_kb: rss_mean,
        rss_per_conn_bytes: (rss_mean.saturating_sub(rss_idle) as f64 * 1024.0)
            / shape.conns as f64,
        samples,
    };
    let redis = redis_pid.map(|pid| {
        let cpu = match redis_cpu {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        };
        ServerStats {
            pids: vec![pid],
            cpu_s: cpu,
            cpu_util: cpu / secs,
            cpu_us_per_msg: if delivered > 0 {
                cpu * 1e6 / delivered as f64
            } else {
                0.0
            },
            rss_max_kb: redis_samples.iter().map(|s| s.rss_kb).max().unwrap_or(0),
            samples: redis_samples,
            ..ServerStats::default()
        }
    });

    // What healthy connections should have received.
    let expected = pub_report.as_ref().and_then(|r| {
        if load.churn.is_some() {
            return None;
        }
        let mut e = 0u64;
        for (i, b) in behaviours.iter().enumerate() {
            if *b == Behaviour::Healthy {
                e += shape
                    .symbols_of(i)
                    .map(|s| r.in_window_per_symbol[s])
                    .sum::<u64>();
            }
        }
        Some(e)
    });
    let mut invalid = Vec::new();
    if let Some(r) = &pub_report {
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
    let complete = expected.map(|e| {
        counts.ticks == e && counts.holes == 0 && counts.gaps == 0 && counts.duplicates == 0
    });
    let frames = counts.frames + other.frames;
    let bytes = counts.bytes + other.bytes;
    let lags: Vec<&[f64]> = results
        .iter()
        .map(|r| r.lag_max_by_second_us.as_slice())
        .collect();
    let keep = steady_seconds(
        seconds.len(),
        pub_report
            .as_ref()
            .map(|r| r.behind_max_by_second_us.as_slice()),
        &lags,
        c.max_behind.as_secs_f64() * 1e6,
        c.max_client_lag.as_secs_f64() * 1e6,
    );
    let mut steady_hist = load::new_hist();
    for (h, _) in seconds.iter().zip(&keep).filter(|(_, k)| **k) {
        steady_hist.add(h)?;
    }
    let steady = Steady {
        seconds: keep.iter().filter(|k| **k).count(),
        of: keep.len(),
        latency: Percentiles::of(&steady_hist),
    };
    Ok(RunResult {
        target: target.label.clone(),
        setup: target.clone(),
        run,
        shape: shape.to_string(),
        rate: load.rate,
        valid: invalid.is_empty(),
        invalid,
        latency: Percentiles::of(&hist),
        latency_other: (!other_hist.is_empty()).then(|| Percentiles::of(&other_hist)),
        published_in_window: pub_report.as_ref().map(|r| r.in_window),
        expected,
        complete,
        msgs_per_s: delivered as f64 / secs,
        frames_per_s: frames as f64 / secs,
        bytes_per_s: bytes as f64 / secs,
        msgs_per_frame: delivered as f64 / frames.max(1) as f64,
        bytes_per_msg: bytes as f64 / delivered.max(1) as f64,
        counts,
        counts_other: other,
        server,
        redis,
        clients,
        publisher: pub_report,
        placement,
        setup_conns_per_s,
        tcp_mem_kb: (tcp_before, tcp_held),
        seconds: seconds.iter().map(Percentiles::of).collect(),
        steady,
        hist,
    })
}

/// Runs every target `runs` times, alternating (t1 r1, t2 r1, …, t1 r2, …), and
/// writes each run's `.hgrm` file as it ends. A target that fails to start is an error.
pub fn run_alternating(
    ctx: &mut Ctx,
    targets: &[Target],
    load: &Load,
) -> anyhow::Result<Vec<RunResult>> {
    let mut out = Vec::new();
    for run in 1..=ctx.runs {
        for t in targets {
            let r =
                run_once(ctx, t, load, run).with_context(|| format!("{} run {run}", t.label))?;
            crate::report::print_run(&r);
            crate::report::write_hgrm(&ctx.out, &r)?;
            out.push(r);
        }
    }
    Ok(out)
}

/// Label pairs (tickstream target, reference) for the ratios.
pub fn reference_pairs(targets: &[Target]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in targets {
        if t.server == Server::Tickstream && t.serve_args().is_empty() {
            continue;
        }
        if let Some(ts) = targets.iter().find(|x| {
            x.server == Server::Tickstream
                && x.serve_args().is_empty()
                && x.source == t.source
                && x.nodes == 1
        }) {
            out.push((ts.label.clone(), t.label.clone()));
        }
    }
    out
}

/// Prints the medians and ratios, draws the percentile plot and writes `summary.json`
/// with `extra` merged in. Returns the medians.
pub fn finish(
    ctx: &Ctx,
    title: &str,
    runs: &[RunResult],
    pairs: &[(String, String)],
    extra: serde_json::Value,
) -> anyhow::Result<Vec<crate::report::Medians>> {
    use crate::report;
    let medians = report::medians(runs);
    report::print_medians(title, &medians);
    let p: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let ratios = report::ratios(&medians, &p);
    report::print_ratios(&ratios);
    let curves: Vec<crate::plot::Curve> = runs
        .iter()
        .map(|r| crate::plot::Curve {
            target: &r.target,
            hist: &r.hist,
        })
        .collect();
    crate::plot::percentiles(&ctx.out.join("latency.svg"), title, &curves)?;
    let summary = serde_json::json!({
        "scenario": ctx.scenario,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "started_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "machine": report::machine(),
        "duration_s": ctx.duration.as_secs_f64(),
        "warmup_s": ctx.warmup.as_secs_f64(),
        "runs_per_target": ctx.runs,
        "clients": ctx.common.clients,
        "server_cpus": ctx.common.server_cpus,
        "client_cpus": ctx.common.client_cpus,
        "client_cpu_list": ctx.client_cpus,
        "redis_cpus": ctx.common.redis_cpus.clone().or(ctx.common.client_cpus.clone()),
        "node_args": ctx.common.node_args,
        "medians": medians,
        "ratios": ratios,
        "runs": runs,
        "extra": extra,
    });
    report::write_summary(&ctx.out, &summary)?;
    Ok(medians)
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
