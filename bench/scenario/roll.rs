//! `roll`: a rolling restart of every node of `scripts/cluster` under many connections
//! through its nginx, each a [`tickstream::client::Client`] that follows the node's
//! `reconnect` (make before break, `resume`). Tick latency (arrival − the feed's `ts`)
//! over a steady window before the roll against the roll itself, every connection's
//! per-symbol seq checked, and how long until every client of a node has moved.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tickstream::client::{Client, ClientConfig, Event, ServerMessage};
use tokio_util::sync::CancellationToken;

use crate::common::{parse_cpus, symbol_name, write_universe};
use crate::measured::Placement;
use crate::spawn;

mod report;

/// Rolling restart of a three-node cluster behind nginx.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example (scripts/cluster started in the output directory: redis, the \
synthetic feed at 300 ticks/s over 100 equal symbols, three nodes and nginx; 1,000 library \
clients through nginx, 5 symbols each, spread over the nodes by their affinity cookies; 20 s steady, then `scripts/cluster roll`):

  tickstream-bench roll --server-cpus 0 --client-cpus 1

Exit status 1 when a tick was lost (a hole) or seen twice, when a client did not move, or \
when the roll's p99 passed the steady p99 + --latency-slack; the run is marked invalid (also \
exit 1) when the bench itself was the limit (CPU or timer lag)."
)]
pub struct Args {
    /// Connections, each a library client through nginx.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Symbols of the flat universe the feed ticks and the nodes serve.
    #[arg(long, default_value_t = 100)]
    pub symbols: usize,
    /// Symbols each connection subscribes (connection i: (i·K + j) mod N).
    #[arg(long, default_value_t = 5)]
    pub per_connection: usize,
    /// The synthetic feed's ticks per second over the universe. Each is proxied by nginx
    /// to every connection holding its symbol: at 300, 15,000 messages/s leave the nodes
    /// and nginx; at 1,000 (50,000/s) nginx alone took 43 % of the one CPU it shares with
    /// the three nodes and the feed, which ran full and put steady p99 past 20 ms.
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// New connections per second while opening (0: all at once).
    #[arg(long, default_value_t = 500.0)]
    pub open_rate: f64,
    /// After every connection has its first tick, time before the steady window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// The steady window, before the first SIGTERM.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub steady: Duration,
    /// Recorded after the roll (reported apart).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub after: Duration,
    /// Pass when the roll's p99 is at most the steady p99 plus this.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub latency_slack: Duration,
    /// Seconds `scripts/cluster roll` waits between two nodes (`TICKSTREAM_ROLL_PAUSE`),
    /// so that each node's step stands apart in the plot.
    #[arg(long, default_value = "5")]
    pub pause: String,
    /// Longest wait, after the last node is back, for every client to have moved.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub move_limit: Duration,
    /// The bench's own timer lag (p99 of a 10 ms timer) past which the run is invalid.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub max_client_lag: Duration,
    /// CPUs of the nodes, the feed and nginx (a taskset list).
    #[arg(long)]
    pub server_cpus: Option<String>,
    /// CPUs of the bench and redis-server (a taskset list).
    #[arg(long)]
    pub client_cpus: Option<String>,
    /// Keep every connection on the node nginx hashes the bench's one address to, as
    /// many tabs of one browser without its cookie; default: each connection sends its
    /// own affinity cookie (`tickstream_node=c<i>`), as clients behind many addresses,
    /// and nginx spreads them over the nodes.
    #[arg(long)]
    pub one_address: bool,
    /// The cluster script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster"))]
    pub script: PathBuf,
    /// Output directory (default target/tickstream-bench/roll-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The phases of a run; ticks and timer lags are recorded into the one current.
const PHASES: [&str; 4] = ["warmup", "steady", "roll", "after"];
const STEADY: u8 = 1;
const ROLL: u8 = 2;
const AFTER: u8 = 3;

/// What every connection task records into, shared.
struct Shared {
    t0: Instant,
    phase: AtomicU8,
    /// Tick latency per phase, µs.
    lat: Mutex<[Histogram<u64>; 4]>,
    /// Tick latency per second since `t0`, µs.
    per_second: Mutex<Vec<Histogram<u64>>>,
    /// The bench's timer lag per phase, µs.
    lag: Mutex<[Histogram<u64>; 4]>,
    /// The node each connection is on.
    node_of: Mutex<Vec<String>>,
    /// When a connection moved (or reconnected after a loss), and whether it moved.
    moved_at: Mutex<Vec<(Instant, bool)>>,
    /// Connections that have had a first tick.
    ticking: AtomicUsize,
    /// Ticks received.
    ticks: AtomicU64,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

impl Shared {
    fn new(connections: usize) -> Shared {
        Shared {
            t0: Instant::now(),
            phase: AtomicU8::new(0),
            lat: Mutex::new(std::array::from_fn(|_| hist())),
            per_second: Mutex::new(Vec::new()),
            lag: Mutex::new(std::array::from_fn(|_| hist())),
            node_of: Mutex::new(vec![String::new(); connections]),
            moved_at: Mutex::new(Vec::new()),
            ticking: AtomicUsize::new(0),
            ticks: AtomicU64::new(0),
        }
    }

    fn record(&self, us: u64) {
        let phase = self.phase.load(Ordering::Relaxed) as usize;
        let us = us.clamp(1, 120_000_000);
        self.lat.lock()[phase].saturating_record(us);
        let s = self.t0.elapsed().as_secs() as usize;
        let mut per = self.per_second.lock();
        while per.len() <= s {
            per.push(hist());
        }
        per[s].saturating_record(us);
    }
}

/// What one connection saw.
#[derive(Default, Debug, Clone, serde::Serialize)]
struct ConnStats {
    ticks: u64,
    snapshots: u64,
    /// A seq further on than the last + 1 with no `gap` announcing it.
    holes: u64,
    /// Ticks missing in those holes.
    hole_ticks: u64,
    /// A seq at or below the last one seen.
    duplicates: u64,
    gaps: BTreeMap<String, u64>,
    moves: u64,
    move_failed: u64,
    /// What failed, by message.
    move_errors: BTreeMap<String, u64>,
    reconnects: u64,
    /// Holes the library itself reported (`Event::Hole`).
    library_holes: u64,
    /// Repeats the library dropped while two connections were open (not seen by the
    /// program: the make-before-break overlap).
    dropped_in_overlap: u64,
}

impl ConnStats {
    fn add(&mut self, o: &ConnStats) {
        self.ticks += o.ticks;
        self.snapshots += o.snapshots;
        self.holes += o.holes;
        self.hole_ticks += o.hole_ticks;
        self.duplicates += o.duplicates;
        for (k, v) in &o.gaps {
            *self.gaps.entry(k.clone()).or_default() += v;
        }
        self.moves += o.moves;
        self.move_failed += o.move_failed;
        for (k, v) in &o.move_errors {
            *self.move_errors.entry(k.clone()).or_default() += v;
        }
        self.reconnects += o.reconnects;
        self.library_holes += o.library_holes;
        self.dropped_in_overlap += o.dropped_in_overlap;
    }
}

/// One connection: a library client through nginx until `stop`.
async fn connection(
    i: usize,
    cfg: ClientConfig,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> anyhow::Result<ConnStats> {
    let mut c = Client::new(cfg)?;
    let mut st = ConnStats::default();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let ev = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            ev = c.next() => ev?,
        };
        match ev {
            Event::Message(m) => on_message(m, &mut st, &mut last, &shared),
            Event::Connected {
                node, reconnect, ..
            } => {
                shared.node_of.lock()[i] = node;
                if reconnect {
                    shared.moved_at.lock().push((Instant::now(), false));
                }
            }
            Event::Moved { node, .. } => {
                st.moves += 1;
                shared.node_of.lock()[i] = node;
                shared.moved_at.lock().push((Instant::now(), true));
            }
            Event::MoveFailed { error, .. } => {
                st.move_failed += 1;
                *st.move_errors.entry(error).or_default() += 1;
            }
            Event::Disconnected { .. } => st.reconnects += 1,
            Event::Hole { .. } => st.library_holes += 1,
            _ => {}
        }
    }
    st.dropped_in_overlap = c.counters().duplicates;
    c.close().await;
    Ok(st)
}

/// Checks a message's seq against the last one of its symbol; records a tick's latency.
fn on_message(
    m: ServerMessage,
    st: &mut ConnStats,
    last: &mut BTreeMap<String, u64>,
    shared: &Shared,
) {
    match m {
        ServerMessage::Tick(t) => {
            let now = tickstream::tick::now_ns();
            shared.record(now.saturating_sub(t.tick.ts) / 1000);
            st.ticks += 1;
            shared.ticks.fetch_add(1, Ordering::Relaxed);
            if st.ticks == 1 {
                shared.ticking.fetch_add(1, Ordering::Relaxed);
            }
            let seq = t.tick.seq;
            match last.insert(t.tick.symbol.to_string(), seq) {
                Some(prev) if seq <= prev => {
                    st.duplicates += 1;
                    last.insert(t.tick.symbol.to_string(), prev);
                }
                Some(prev) if seq > prev + 1 => {
                    st.holes += 1;
                    st.hole_ticks += seq - prev - 1;
                }
                _ => {}
            }
        }
        ServerMessage::Snapshot(t) => {
            st.snapshots += 1;
            let e = last.entry(t.symbol.to_string()).or_insert(t.seq);
            *e = (*e).max(t.seq);
        }
        ServerMessage::Gap {
            symbol, to, reason, ..
        } => {
            let reason = serde_json::to_value(reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *st.gaps.entry(reason).or_default() += 1;
            let e = last.entry(symbol.to_string()).or_insert(to);
            *e = (*e).max(to);
        }
        _ => {}
    }
}

/// The cluster script and its state directory.
#[derive(Clone)]
struct Place {
    script: PathBuf,
    dir: PathBuf,
}

impl Place {
    fn command(&self, arg: &str) -> Command {
        let mut c = Command::new(&self.script);
        c.arg(arg)
            .env("TICKSTREAM_CLUSTER_DIR", &self.dir)
            .stdin(Stdio::null());
        c
    }
}

/// `scripts/cluster` started in the output directory, stopped when dropped.
struct Cluster {
    place: Place,
    nginx: String,
}

impl Cluster {
    fn start(a: &Args, out: &Path, server_cpus: Option<&[usize]>) -> anyhow::Result<Cluster> {
        let universe = out.join("universe.csv");
        write_universe(&universe, a.symbols)?;
        let u = universe.display().to_string();
        let mut cl = Cluster {
            place: Place {
                script: a.script.clone(),
                dir: out.join("cluster"),
            },
            nginx: String::new(),
        };
        let mut cmd = cl.place.command("start");
        cmd.env("TICKSTREAM_BIN", spawn::sibling("tickstream")?)
            .env(
                "TICKSTREAM_FEED_ARGS",
                format!("--rate {} --universe {u}", a.rate),
            )
            .env("TICKSTREAM_NODE_ARGS", format!("--universe {u}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = spawn::spawn_on(&mut cmd, server_cpus)
            .with_context(|| format!("starting {}", a.script.display()))?;
        let o = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        if !o.status.success() {
            bail!(
                "scripts/cluster start failed:\n{text}{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        cl.nginx = text
            .split_whitespace()
            .find(|w| w.starts_with("ws://") && w.ends_with("/v1/ws"))
            .context("scripts/cluster printed no ws:// URL")?
            .to_owned();
        Ok(cl)
    }

    /// `name pid` of every process the cluster started.
    fn pids(&self) -> Vec<(String, u32)> {
        std::fs::read_to_string(self.place.dir.join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (n, p) = l.split_once(' ')?;
                Some((n.to_owned(), p.trim().parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.place.command("stop").stdout(Stdio::null()).status();
    }
}

/// Moves every thread of `pid` to `cpus` (redis-server, started by the script on the
/// server CPUs, belongs with the clients).
fn repin(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c)?;
    }
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: i32 = t?.file_name().to_string_lossy().parse()?;
        sched_setaffinity(Pid::from_raw(tid), &set)?;
    }
    Ok(())
}

/// One node's step of the roll, as the script printed it.
#[derive(Debug, Clone, serde::Serialize)]
struct Step {
    node: String,
    /// Seconds since the run's start when the script sent SIGTERM.
    sigterm_s: f64,
    #[serde(skip)]
    at: Option<Instant>,
    /// Connections on the node at its SIGTERM.
    clients: usize,
    /// Moves (and reconnects) attributed to this step.
    moved: usize,
    reconnected: usize,
    /// From the SIGTERM until the last of them had moved.
    until_all_moved_ms: Option<f64>,
    /// The script's line for this node (drain and start times).
    script: String,
}

/// Runs `scripts/cluster roll`, recording each SIGTERM as the script announces it.
/// Returns the steps and the script's output.
fn roll(
    place: &Place,
    pause: &str,
    shared: &Shared,
    server_cpus: Option<&[usize]>,
) -> anyhow::Result<(Vec<Step>, String)> {
    let mut cmd = place.command("roll");
    cmd.env("TICKSTREAM_ROLL_PAUSE", pause)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = spawn::spawn_on(&mut cmd, server_cpus)?;
    let out = child.stdout.take().context("the script's stdout")?;
    let (mut steps, mut text) = (Vec::<Step>::new(), String::new());
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        println!("  {line}");
        text.push_str(&line);
        text.push('\n');
        if let Some(rest) = line.strip_prefix("rolling ") {
            let node = rest.split(':').next().unwrap_or_default().to_owned();
            let clients = shared.node_of.lock().iter().filter(|n| **n == node).count();
            let at = Instant::now();
            steps.push(Step {
                node,
                sigterm_s: at.duration_since(shared.t0).as_secs_f64(),
                at: Some(at),
                clients,
                moved: 0,
                reconnected: 0,
                until_all_moved_ms: None,
                script: String::new(),
            });
        } else if let Some(s) = steps.last_mut().filter(|s| line.starts_with(&s.node)) {
            s.script = line.clone();
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("scripts/cluster roll failed ({status}):\n{text}");
    }
    Ok((steps, text))
}

/// Attributes every move to the last SIGTERM before it; whether every client of every
/// step has moved.
fn attribute_moves(steps: &mut [Step], moved_at: &[(Instant, bool)]) -> bool {
    for s in steps.iter_mut() {
        s.moved = 0;
        s.reconnected = 0;
        s.until_all_moved_ms = None;
    }
    for &(t, planned) in moved_at {
        let Some(s) = steps
            .iter_mut()
            .rev()
            .find(|s| s.at.is_some_and(|a| a <= t))
        else {
            continue;
        };
        if planned {
            s.moved += 1;
        } else {
            s.reconnected += 1;
        }
        let ms = t.duration_since(s.at.unwrap()).as_secs_f64() * 1e3;
        s.until_all_moved_ms = Some(s.until_all_moved_ms.unwrap_or(0.0).max(ms));
    }
    steps.iter().all(|s| s.moved + s.reconnected >= s.clients)
}

/// The bench's own 10 ms timer: how late it fires, per phase.
async fn timer_lag(shared: Arc<Shared>, stop: CancellationToken) {
    let tick = Duration::from_millis(10);
    while !stop.is_cancelled() {
        let t = Instant::now();
        tokio::time::sleep(tick).await;
        let lag = t.elapsed().saturating_sub(tick).as_micros() as u64;
        let phase = shared.phase.load(Ordering::Relaxed) as usize;
        shared.lag.lock()[phase].saturating_record(lag.max(1));
    }
}

/// CPU time of this process so far, s.
fn own_cpu_s() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = |v: nix::sys::time::TimeVal| v.tv_sec() as f64 + v.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0)
}

/// The client config of connection `i`.
fn client_config(a: &Args, url: &str, i: usize) -> ClientConfig {
    ClientConfig {
        urls: vec![url.to_owned()],
        symbols: (0..a.per_connection)
            .map(|j| symbol_name((i * a.per_connection + j) % a.symbols))
            .collect(),
        report_every: None,
        fail_fast: false,
        headers: match a.one_address {
            true => Vec::new(),
            false => vec![("Cookie".into(), format!("tickstream_node=c{i}"))],
        },
        ..ClientConfig::default()
    }
}

fn check_args(a: &Args) -> anyhow::Result<()> {
    if a.connections == 0 || a.symbols == 0 || a.per_connection == 0 {
        bail!("--connections, --symbols and --per-connection must be at least 1");
    }
    if a.per_connection > a.symbols {
        bail!(
            "--per-connection ({}) cannot exceed --symbols ({})",
            a.per_connection,
            a.symbols
        );
    }
    if a.rate.is_nan() || a.rate <= 0.0 {
        bail!("--rate must be more than 0");
    }
    if a.open_rate < 0.0 {
        bail!("--open-rate cannot be negative");
    }
    if !a
        .pause
        .parse::<f64>()
        .is_ok_and(|p| p >= 0.0 && p.is_finite())
    {
        bail!("--pause must be seconds (e.g. 5 or 0.5), not {:?}", a.pause);
    }
    if !a.script.is_file() {
        bail!("no cluster script at {} (--script)", a.script.display());
    }
    Ok(())
}

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    check_args(&a)?;
    let started = SystemTime::now();
    let out = match &a.out {
        Some(d) => d.clone(),
        None => PathBuf::from(format!(
            "target/tickstream-bench/roll-{}",
            started.duration_since(UNIX_EPOCH)?.as_secs()
        )),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = std::fs::canonicalize(&out)?;
    let server_cpus = a.server_cpus.as_deref().map(parse_cpus).transpose()?;
    let client_cpus = a.client_cpus.as_deref().map(parse_cpus).transpose()?;
    if let Some(c) = &client_cpus {
        spawn::pin_self(c)?;
    }
    crate::load::raise_nofile();
    let cl = Cluster::start(&a, &out, server_cpus.as_deref())?;
    if let Some(c) = &client_cpus {
        if let Some((_, pid)) = cl.pids().into_iter().find(|(n, _)| n == "redis") {
            repin(pid, c).context("moving redis-server to the client CPUs")?;
        }
    }
    let before = cl.pids();
    let workers = client_cpus.as_ref().map_or(1, |c| c.len()).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    let m = rt.block_on(measure(&a, &cl, server_cpus.as_deref()))?;
    let placement: Vec<Placement> = cl
        .pids()
        .into_iter()
        .chain(std::iter::once(("bench".to_owned(), std::process::id())))
        .map(|(n, p)| Placement::of(n, p))
        .collect();
    let restarted = restarted_nodes(&before, &cl.pids());
    drop(cl);
    let verdict = report::report(&a, &out, started, &m, placement, restarted)?;
    if !verdict {
        std::process::exit(1);
    }
    Ok(())
}

/// Nodes whose pid the roll changed.
fn restarted_nodes(before: &[(String, u32)], after: &[(String, u32)]) -> Vec<String> {
    before
        .iter()
        .filter(|(n, p)| n.starts_with("node-") && after.iter().any(|(m, q)| m == n && q != p))
        .map(|(n, _)| n.clone())
        .collect()
}

/// What a run measured.
pub struct Measured {
    shared: Arc<Shared>,
    stats: ConnStats,
    steps: Vec<Step>,
    all_moved: bool,
    script: String,
    /// Wall time and own CPU time of each phase, s.
    phase_wall: [f64; 4],
    phase_cpu: [f64; 4],
    client_cpus: usize,
    roll_s: f64,
    opened_s: f64,
    errors: Vec<String>,
}

/// Opens the connections and waits until every one has a first tick.
async fn open(
    a: &Args,
    cl: &Cluster,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<ConnStats>>>> {
    let mut tasks = Vec::with_capacity(a.connections);
    let gap = (a.open_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / a.open_rate));
    for i in 0..a.connections {
        let cfg = client_config(a, &cl.nginx, i);
        tasks.push(tokio::spawn(connection(
            i,
            cfg,
            shared.clone(),
            stop.clone(),
        )));
        if let Some(g) = gap {
            tokio::time::sleep(g).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.ticking.load(Ordering::Relaxed) < a.connections {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} connections had a tick after 60 s",
                shared.ticking.load(Ordering::Relaxed),
                a.connections
            );
        }
        if tasks.iter().any(|t| t.is_finished()) {
            bail!("a connection ended before the roll");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(tasks)
}

/// The run: open, warm up, steady window, roll, after; then every connection's counts.
async fn measure(
    a: &Args,
    cl: &Cluster,
    server_cpus: Option<&[usize]>,
) -> anyhow::Result<Measured> {
    let shared = Arc::new(Shared::new(a.connections));
    let stop = CancellationToken::new();
    tokio::spawn(timer_lag(shared.clone(), stop.clone()));
    let tasks = open(a, cl, &shared, &stop).await?;
    let opened_s = shared.t0.elapsed().as_secs_f64();
    println!(
        "{} connections through {} ticking after {opened_s:.1} s",
        a.connections, cl.nginx
    );
    let mut phase_wall = [0.0; 4];
    let mut phase_cpu = [0.0; 4];
    let mut mark = (Instant::now(), own_cpu_s());
    let mut enter = |p: u8, shared: &Shared| {
        let now = (Instant::now(), own_cpu_s());
        let prev = shared.phase.swap(p, Ordering::Relaxed) as usize;
        phase_wall[prev] += now.0.duration_since(mark.0).as_secs_f64();
        phase_cpu[prev] += now.1 - mark.1;
        mark = now;
    };
    tokio::time::sleep(a.warmup).await;
    enter(STEADY, &shared);
    println!("steady window: {:?}", a.steady);
    tokio::time::sleep(a.steady).await;
    enter(ROLL, &shared);
    let roll_start = Instant::now();
    let (steps, script, all_moved) = {
        let sh = shared.clone();
        let (pause, cpus) = (a.pause.clone(), server_cpus.map(|c| c.to_vec()));
        let place = cl.place.clone();
        let r = tokio::task::spawn_blocking(move || roll(&place, &pause, &sh, cpus.as_deref()))
            .await??;
        let (mut steps, script) = r;
        let until = Instant::now() + a.move_limit;
        let mut all = attribute_moves(&mut steps, &shared.moved_at.lock());
        while !all && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            all = attribute_moves(&mut steps, &shared.moved_at.lock());
        }
        (steps, script, all)
    };
    let roll_s = roll_start.elapsed().as_secs_f64();
    enter(AFTER, &shared);
    tokio::time::sleep(a.after).await;
    enter(0, &shared);
    stop.cancel();
    let (mut stats, mut errors) = (ConnStats::default(), Vec::new());
    for t in tasks {
        match t.await? {
            Ok(s) => stats.add(&s),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let mut steps = steps;
    attribute_moves(&mut steps, &shared.moved_at.lock());
    Ok(Measured {
        shared,
        stats,
        steps,
        all_moved,
        script,
        phase_wall,
        phase_cpu,
        client_cpus: a
            .client_cpus
            .as_deref()
            .map_or(Ok(vec![0]), parse_cpus)?
            .len(),
        roll_s,
        opened_s,
        errors,
    })
}

/// The pieces of a run the report reads.
impl Measured {
    /// Latency of phase `p`.
    pub fn latency(&self, p: u8) -> Histogram<u64> {
        self.shared.lat.lock()[p as usize].clone()
    }
    /// Timer lag of phase `p`.
    pub fn lag(&self, p: u8) -> Histogram<u64> {
        self.shared.lag.lock()[p as usize].clone()
    }
    /// p99 and max of every second since the start, ms.
    pub fn per_second(&self) -> Vec<(f64, f64, f64)> {
        self.shared
            .per_second
            .lock()
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(s, h)| {
                (
                    s as f64,
                    h.value_at_quantile(0.99) as f64 / 1e3,
                    h.max() as f64 / 1e3,
                )
            })
            .collect()
    }
    /// The bench's CPU share of its CPUs in phase `p`.
    pub fn cpu_share(&self, p: u8) -> f64 {
        let w = self.phase_wall[p as usize];
        if w <= 0.0 {
            return 0.0;
        }
        self.phase_cpu[p as usize] / w / self.client_cpus.max(1) as f64
    }
}
