//! The receiving side: worker processes (this binary re-run as the hidden `worker`
//! subcommand), each on its own source address, each a single thread holding its share
//! of the connections, parsing only what the checks need (type, symbol, seq, ts and a
//! gap's range), with one HDR histogram per connection merged at the end.
//!
//! Parent and worker talk over the worker's stdin and stdout, one line each:
//! parent → `<spec JSON>`, later `GO <window JSON>`; worker → `READY <json>`,
//! `P <messages so far>` (progress), and last `R <result JSON>` carrying the serialized
//! histograms.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::common::{symbol_name, Shape};
use crate::scan::{self, Msg};
use tickstream::protocol::binary;
use tickstream::tick::Kind;

/// Latency histogram bounds: 1 ns to 100 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds")
}

/// Which second of a window starting at `from` the time `t` falls in (ns; 0 before it).
pub fn second_of(from: u64, t: u64) -> usize {
    (t.saturating_sub(from) / 1_000_000_000) as usize
}

/// How one connection behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// Reads everything as fast as it can.
    #[default]
    Healthy,
    /// Stops reading for the whole recorded window, then reads again.
    Stalled,
    /// Reads, but sleeps a little after every frame.
    Slow,
    /// Stops reading for a while, again and again (soak).
    Intermittent,
}

/// Churn of the soak: connections that close and reopen, subscriptions that change.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Churn {
    /// Shortest life of a connection, ms.
    pub life_min_ms: u64,
    /// Longest life of a connection, ms.
    pub life_max_ms: u64,
    /// Every this many ms a connection swaps one of its symbols for another.
    pub resub_ms: u64,
}

/// What each connection's `subscribe` asks for beside its symbols.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// `throttle_ms` of every subscribe (0: not sent, every tick).
    pub throttle_ms: u32,
    /// A pattern subscribed instead of naming the connection's symbols (`*` over the
    /// whole universe).
    pub pattern: Option<String>,
    /// Subscribe the symbols' order books at this depth (`"channel":"book"`) instead
    /// of their ticks.
    #[serde(default)]
    pub book_depth: Option<u16>,
    /// Connections (the first ones, by global index) that keep their whole books and
    /// check every book message's checksum; the others check `prev_seq` alone.
    #[serde(default)]
    pub book_checks: usize,
}

/// What a worker is asked to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Worker number.
    pub index: usize,
    /// Source address to bind before connecting.
    pub bind: Option<IpAddr>,
    /// Subscriber URLs; connection `i` uses `urls[i % len]`.
    pub urls: Vec<String>,
    /// The load shape (which symbols connection `i` takes).
    pub shape: Shape,
    /// Global indices of this worker's connections, each with its behaviour.
    pub conns: Vec<(usize, Behaviour)>,
    /// Connections opened per second by this worker (0: as fast as possible).
    pub open_rate: f64,
    /// Soak churn, if any.
    pub churn: Option<Churn>,
    /// What each `subscribe` asks for.
    #[serde(default)]
    pub subscription: Subscription,
    /// A connection the server asks to reconnect (or closes) opens again, to the next
    /// URL first, and resumes from the last seq it holds of each symbol: a loss is then
    /// replayed or announced, and the sequence checks carry on across the move. A
    /// connection that cannot open tries the next URL.
    #[serde(default)]
    pub follow: bool,
}

/// The recorded window, sent with `GO`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Window {
    /// Ticks whose `ts` is at or after this are recorded (ns since the Unix epoch).
    pub record_from: u64,
    /// … and before this.
    pub until: u64,
    /// The worker reports and exits at this time.
    pub stop_at: u64,
}

/// Counters of a set of connections; ticks count when their `ts` is in the window,
/// frames and bytes when they arrive in it, sequence events after it began.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Connections opened (churn included).
    pub opened: u64,
    /// Connections that could not be opened or subscribed.
    pub connect_failed: u64,
    /// Ticks received with `ts` in the window.
    pub ticks: u64,
    /// Ticks received in all (warm-up and drain too).
    pub ticks_all: u64,
    /// Snapshots (and whole `book`s) received.
    pub snapshots: u64,
    /// Data frames (text and binary) arriving in the window.
    pub frames: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// … of which binary frames (`encoding=binary`: tick and snapshot records).
    pub binary_frames: u64,
    /// Their payload bytes.
    pub binary_bytes: u64,
    /// `gap` messages.
    pub gaps: u64,
    /// Ticks they announced missing.
    pub gap_ticks: u64,
    /// … of which with reason `slow_consumer` (conflated).
    pub conflated: u64,
    /// Gap ticks by reason.
    pub gap_reasons: BTreeMap<String, u64>,
    /// Paced ticks (those carrying `skipped`).
    #[serde(default)]
    pub paced: u64,
    /// Ticks they said were folded into them (`skipped`, summed).
    #[serde(default)]
    pub folded: u64,
    /// Seq jumps with no `gap` before them (nor `skipped` to account for them).
    pub holes: u64,
    /// Ticks missing in those jumps.
    pub hole_ticks: u64,
    /// Ticks with a seq at or below the last one.
    pub duplicates: u64,
    /// `error` messages.
    pub errors: u64,
    /// Book messages whose checksum was compared with the book they make (connections
    /// that check books).
    #[serde(default)]
    pub books_checked: u64,
    /// … of which did not match (or did not apply to the book held).
    #[serde(default)]
    pub checksum_mismatches: u64,
    /// Connections ended by the server, by close code (`drop` where it just went away).
    pub closes: BTreeMap<String, u64>,
    /// `reconnect` notices received (the server's planned close).
    #[serde(default)]
    pub reconnect_notices: u64,
    /// Connections opened again with `resume` from the last seq of each symbol, after
    /// a notice or a close (connections that follow, [`WorkerSpec::follow`]).
    #[serde(default)]
    pub resumed: u64,
    /// `status` messages received once the window began, by state (`stale`, `live`).
    #[serde(default)]
    pub status: BTreeMap<String, u64>,
}

impl Counts {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &Counts) {
        self.opened += o.opened;
        self.connect_failed += o.connect_failed;
        self.ticks += o.ticks;
        self.ticks_all += o.ticks_all;
        self.snapshots += o.snapshots;
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.binary_frames += o.binary_frames;
        self.binary_bytes += o.binary_bytes;
        self.gaps += o.gaps;
        self.gap_ticks += o.gap_ticks;
        self.conflated += o.conflated;
        self.paced += o.paced;
        self.folded += o.folded;
        for (k, v) in &o.gap_reasons {
            *self.gap_reasons.entry(k.clone()).or_default() += v;
        }
        self.holes += o.holes;
        self.hole_ticks += o.hole_ticks;
        self.duplicates += o.duplicates;
        self.errors += o.errors;
        self.books_checked += o.books_checked;
        self.checksum_mismatches += o.checksum_mismatches;
        for (k, v) in &o.closes {
            *self.closes.entry(k.clone()).or_default() += v;
        }
        self.reconnect_notices += o.reconnect_notices;
        self.resumed += o.resumed;
        for (k, v) in &o.status {
            *self.status.entry(k.clone()).or_default() += v;
        }
    }
}

/// What a worker reports at the end.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    /// Worker number.
    pub index: usize,
    /// Healthy connections' counters.
    pub healthy: Counts,
    /// Other connections' counters (stalled, slow, intermittent).
    pub other: Counts,
    /// Healthy connections' latency histogram (V2 deflate, hex).
    pub hist: String,
    /// The others' latency histogram.
    pub other_hist: String,
    /// One histogram per second of the window, healthy connections.
    pub seconds: Vec<String>,
    /// CPU seconds this process used during the window.
    pub cpu_s: f64,
    /// Length of the window, s.
    pub wall_s: f64,
    /// Scheduling lag of the worker's own loop (a 10 ms timer's overshoot), p99, µs.
    pub lag_p99_us: f64,
    /// … its maximum, µs.
    pub lag_max_us: f64,
    /// … its maximum in each second of the window, µs.
    #[serde(default)]
    pub lag_max_by_second_us: Vec<f64>,
    /// Where it ran (`Cpus_allowed_list`).
    pub cpus: String,
    /// Its descriptor limit after raising it.
    pub nofile: u64,
}

/// Sent with `READY`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ready {
    /// Connections open and subscribed.
    pub open: u64,
    /// Connections that failed.
    pub failed: u64,
    /// Time to open them all, s.
    pub setup_s: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

pub fn hist_to_hex(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .expect("serializing to memory");
    let mut s = String::with_capacity(buf.len() * 2);
    for b in buf {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn hist_from_hex(s: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| anyhow!("bad histogram from a worker: {e:?}"))?;
    Ok(h)
}

/// Raises the soft descriptor limit to the hard one; returns the limit now in force.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 0,
    }
}

/// CPU time (user + system) of this process, s.
pub fn self_cpu_s() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => 0.0,
    }
}

// ---------------------------------------------------------------------------------
// Parent side.

/// Events from the workers.
enum FromWorker {
    Ready(usize, Ready),
    Progress(usize, u64),
    Result(usize, Box<WorkerResult>),
    Gone(usize, String),
}

/// The running workers of one measurement.
pub struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    rx: crossbeam_channel::Receiver<FromWorker>,
    progress: Vec<u64>,
    /// Each worker's pid.
    pub pids: Vec<u32>,
}

impl Workers {
    /// Starts one worker per spec (each inherits this process's CPU placement).
    pub fn start(specs: Vec<WorkerSpec>) -> anyhow::Result<Workers> {
        let exe = std::env::current_exe().context("finding this binary")?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        let mut pids = Vec::new();
        for spec in &specs {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting worker {}", spec.index))?;
            let mut stdin = child.stdin.take().expect("piped");
            writeln!(stdin, "{}", serde_json::to_string(spec)?)?;
            stdin.flush()?;
            let stdout = child.stdout.take().expect("piped");
            let tx = tx.clone();
            let i = spec.index;
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let ev = if let Some(r) = line.strip_prefix("READY ") {
                        serde_json::from_str(r)
                            .map(|r| FromWorker::Ready(i, r))
                            .ok()
                    } else if let Some(p) = line.strip_prefix("P ") {
                        p.trim().parse().map(|n| FromWorker::Progress(i, n)).ok()
                    } else if let Some(r) = line.strip_prefix("R ") {
                        match serde_json::from_str(r) {
                            Ok(r) => Some(FromWorker::Result(i, Box::new(r))),
                            Err(e) => Some(FromWorker::Gone(i, format!("bad result: {e}"))),
                        }
                    } else {
                        None
                    };
                    if let Some(ev) = ev {
                        if tx.send(ev).is_err() {
                            break;
                        }
                    }
                }
                let _ = tx.send(FromWorker::Gone(i, "its output ended".into()));
            });
            pids.push(child.id());
            children.push(child);
            stdins.push(stdin);
        }
        Ok(Workers {
            progress: vec![0; children.len()],
            children,
            stdins,
            rx,
            pids,
        })
    }

    /// Waits until every worker has opened its connections.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Vec<Ready>> {
        let deadline = Instant::now() + timeout;
        let mut ready: Vec<Option<Ready>> = (0..self.children.len()).map(|_| None).collect();
        while ready.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(FromWorker::Ready(i, r)) => ready[i] = Some(r),
                Ok(FromWorker::Progress(i, n)) => self.progress[i] = n,
                Ok(FromWorker::Gone(i, why)) => {
                    bail!("worker {i} ended before it was ready: {why}")
                }
                Ok(FromWorker::Result(..)) => {}
                Err(_) => bail!(
                    "the workers did not open their connections within {}",
                    humantime::format_duration(timeout)
                ),
            }
        }
        Ok(ready.into_iter().map(|r| r.expect("all ready")).collect())
    }

    /// Tells every worker the window.
    pub fn go(&mut self, w: &Window) -> anyhow::Result<()> {
        let line = format!("GO {}\n", serde_json::to_string(w)?);
        for s in &mut self.stdins {
            s.write_all(line.as_bytes())?;
            s.flush()?;
        }
        Ok(())
    }

    /// Messages received so far by all workers (from their progress lines).
    pub fn progress(&mut self) -> u64 {
        while let Ok(ev) = self.rx.try_recv() {
            if let FromWorker::Progress(i, n) = ev {
                self.progress[i] = n;
            }
        }
        self.progress.iter().sum()
    }

    /// Waits for every worker's result.
    pub fn results(mut self, timeout: Duration) -> anyhow::Result<Vec<WorkerResult>> {
        let deadline = Instant::now() + timeout;
        let mut out: Vec<Option<WorkerResult>> = (0..self.children.len()).map(|_| None).collect();
        while out.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(FromWorker::Result(i, r)) => out[i] = Some(*r),
                Ok(FromWorker::Gone(i, why)) if out[i].is_none() => {
                    bail!("worker {i} ended without a result: {why}")
                }
                Ok(_) => {}
                Err(_) => bail!("the workers sent no result in time"),
            }
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        self.children.clear();
        Ok(out.into_iter().map(|r| r.expect("all in")).collect())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------
// Worker side.

/// What one connection holds: its counters, owned by its task and read by the worker at
/// the end (one thread: no lock, a `RefCell`).
struct ConnState {
    behaviour: Behaviour,
    counts: Counts,
    /// symbol → last seq (looked up once per tick: a fast hash).
    last: foldhash::HashMap<String, u64>,
    /// What it holds of its books.
    books: crate::books::Seen,
    /// A `reconnect` notice arrived: the connection should move.
    moving: bool,
}

/// What the worker's connections record into. One histogram per recorded second for
/// the healthy connections (their whole-window histogram is the sum), one for the rest:
/// a latency is recorded once, into a histogram likely in cache, and a connection holds
/// no histogram of its own (one is 230 KB).
struct Shared {
    window: Cell<Window>,
    received: Cell<u64>,
    seconds: RefCell<Vec<Histogram<u64>>>,
    other: RefCell<Histogram<u64>>,
    conns: RefCell<Vec<Rc<RefCell<ConnState>>>>,
}

fn now_ns() -> u64 {
    tickstream::tick::now_ns()
}

/// Entry point of `tickstream-bench worker`.
pub fn worker_main() -> anyhow::Result<()> {
    let nofile = raise_nofile();
    let mut first = String::new();
    std::io::stdin().read_line(&mut first)?;
    let spec: WorkerSpec = serde_json::from_str(first.trim()).context("worker spec")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, worker(spec, nofile))
}

async fn worker(spec: WorkerSpec, nofile: u64) -> anyhow::Result<()> {
    let far = Window {
        record_from: u64::MAX,
        until: u64::MAX,
        stop_at: u64::MAX,
    };
    let shared = Rc::new(Shared {
        window: Cell::new(far),
        received: Cell::new(0),
        seconds: RefCell::new(Vec::new()),
        other: RefCell::new(new_hist()),
        conns: RefCell::new(Vec::new()),
    });
    let spec = Rc::new(spec);
    let ready = open_all(&spec, &shared).await;
    println!("READY {}", serde_json::to_string(&ready)?);
    let progress = spawn_progress(&shared);
    let w = wait_go().await?;
    shared.window.set(w);
    let secs = ((w.until.saturating_sub(w.record_from)) as f64 / 1e9).ceil() as usize;
    *shared.seconds.borrow_mut() = (0..secs.max(1)).map(|_| new_hist()).collect();
    let lag = Lag::spawn(w, secs.max(1));
    let (cpu_s, wall_s) = through_window(&w).await;
    progress.abort();
    let result = WorkerResult {
        cpu_s,
        wall_s,
        lag_p99_us: lag.hist.borrow().value_at_quantile(0.99) as f64 / 1000.0,
        lag_max_us: lag.hist.borrow().max() as f64 / 1000.0,
        lag_max_by_second_us: lag
            .by_second
            .borrow()
            .iter()
            .map(|&ns| ns as f64 / 1000.0)
            .collect(),
        cpus: crate::spawn::cpus_allowed(std::process::id()),
        nofile,
        ..shared.result(spec.index)?
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "R {}", serde_json::to_string(&result)?)?;
    out.flush()?;
    // The connections' tasks are simply dropped with the process.
    std::process::exit(0)
}

/// Opens the worker's connections, at most 256 at a time, paced by its open rate;
/// returns when each has opened and subscribed or failed.
async fn open_all(spec: &Rc<WorkerSpec>, shared: &Rc<Shared>) -> Ready {
    let started = Instant::now();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let total = spec.conns.len();
    let opener = {
        let spec = spec.clone();
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
            for (n, &(i, behaviour)) in spec.conns.iter().enumerate() {
                if spec.open_rate > 0.0 {
                    let due = started + Duration::from_secs_f64(n as f64 / spec.open_rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let permit = sem.clone().acquire_owned().await.expect("open");
                let spec = spec.clone();
                let shared = shared.clone();
                let done = done_tx.clone();
                tokio::task::spawn_local(async move {
                    connection(spec, shared, i, behaviour, Some((done, permit))).await;
                });
            }
        })
    };
    let mut ready = Ready {
        open: 0,
        failed: 0,
        setup_s: 0.0,
        first_error: None,
    };
    while (ready.open + ready.failed) < total as u64 {
        match done_rx.recv().await {
            Some(Ok(())) => ready.open += 1,
            Some(Err(e)) => {
                ready.failed += 1;
                ready.first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    let _ = opener.await;
    ready.setup_s = started.elapsed().as_secs_f64();
    ready
}

/// Prints `P <messages so far>` every 500 ms until aborted.
fn spawn_progress(shared: &Rc<Shared>) -> tokio::task::JoinHandle<()> {
    let shared = shared.clone();
    tokio::task::spawn_local(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            println!("P {}", shared.received.get());
        }
    })
}

/// The parent's `GO <window>` line, read on a thread of its own.
async fn wait_go() -> anyhow::Result<Window> {
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<Option<String>>();
    std::thread::spawn(move || {
        let mut line = String::new();
        let got = loop {
            line.clear();
            match std::io::stdin().read_line(&mut line) {
                Ok(0) | Err(_) => break None,
                Ok(_) => {
                    if let Some(w) = line.trim().strip_prefix("GO ") {
                        break Some(w.to_owned());
                    }
                }
            }
        };
        let _ = go_tx.send(got);
    });
    match go_rx.await.ok().flatten() {
        Some(w) => Ok(serde_json::from_str(&w)?),
        None => bail!("the parent went away"),
    }
}

/// The worker's own scheduling lag: how late a 10 ms timer fires during the window,
/// and its worst in each second (a stall counts in every second it covered, from when
/// the timer was due).
struct Lag {
    hist: Rc<RefCell<Histogram<u64>>>,
    by_second: Rc<RefCell<Vec<u64>>>,
}

impl Lag {
    /// Starts the timer's task for window `w` of `secs` seconds.
    fn spawn(w: Window, secs: usize) -> Lag {
        let lag = Lag {
            hist: Rc::new(RefCell::new(new_hist())),
            by_second: Rc::new(RefCell::new(vec![0u64; secs])),
        };
        let (hist, by_second) = (lag.hist.clone(), lag.by_second.clone());
        tokio::task::spawn_local(async move {
            loop {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(10)).await;
                let late = t.elapsed().saturating_sub(Duration::from_millis(10));
                let now = now_ns();
                if now >= w.record_from && now < w.until {
                    let ns = late.as_nanos().max(1) as u64;
                    let _ = hist.borrow_mut().record(ns);
                    let mut by_second = by_second.borrow_mut();
                    let first = second_of(w.record_from, now.saturating_sub(ns));
                    for s in first..=second_of(w.record_from, now) {
                        if let Some(m) = by_second.get_mut(s) {
                            *m = (*m).max(ns);
                        }
                    }
                }
            }
        });
        lag
    }
}

/// Sleeps through the window and the drain; returns the CPU seconds this process
/// used within the window and the window's length, s.
async fn through_window(w: &Window) -> (f64, f64) {
    let at = |ns: u64| {
        let now = now_ns();
        Instant::now() + Duration::from_nanos(ns.saturating_sub(now))
    };
    tokio::time::sleep_until(at(w.record_from).into()).await;
    let cpu0 = self_cpu_s();
    let t0 = Instant::now();
    tokio::time::sleep_until(at(w.until).into()).await;
    let cpu_s = self_cpu_s() - cpu0;
    let wall_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep_until(at(w.stop_at).into()).await;
    (cpu_s, wall_s)
}

impl Shared {
    /// The connections' counters and histograms as worker `index` reports them (the
    /// process's own figures left at zero).
    fn result(&self, index: usize) -> anyhow::Result<WorkerResult> {
        let mut healthy = Counts::default();
        let mut other = Counts::default();
        for c in self.conns.borrow().iter() {
            let c = c.borrow();
            if c.behaviour == Behaviour::Healthy {
                healthy.add(&c.counts);
            } else {
                other.add(&c.counts);
            }
        }
        let mut hist = new_hist();
        for h in self.seconds.borrow().iter() {
            hist.add(h)?;
        }
        Ok(WorkerResult {
            index,
            healthy,
            other,
            hist: hist_to_hex(&hist),
            other_hist: hist_to_hex(&self.other.borrow()),
            seconds: self.seconds.borrow().iter().map(hist_to_hex).collect(),
            ..WorkerResult::default()
        })
    }
}

/// Receive buffer of a stalled connection, bytes.
pub const STALLED_RCVBUF: u32 = 16 * 1024;

type Ws = FragmentCollector<TokioIo<hyper::upgrade::Upgraded>>;

struct SpawnLocal;

impl<Fut> hyper::rt::Executor<Fut> for SpawnLocal
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// Opens a WebSocket from `bind` (source address, port chosen by the kernel).
async fn open_ws(url: &str, bind: Option<IpAddr>, rcvbuf: Option<u32>) -> anyhow::Result<Ws> {
    let u = url::Url::parse(url)?;
    if u.scheme() != "ws" {
        bail!("{url}: the bench speaks ws:// only");
    }
    let host = u.host_str().ok_or_else(|| anyhow!("{url}: no host"))?;
    let port = u.port_or_known_default().unwrap_or(80);
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| anyhow!("{url}: no address"))?;
    let sock = tokio::net::TcpSocket::new_v4()?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    if let (Some(b), true) = (bind, addr.ip().is_loopback()) {
        sock.bind(SocketAddr::new(b, 0))
            .with_context(|| format!("binding {b}"))?;
    }
    let tcp = sock
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let mut path = u.path().to_owned();
    if let Some(q) = u.query() {
        path.push('?');
        path.push_str(q);
    }
    let req = hyper::Request::builder()
        .method("GET")
        .uri(path)
        .header(HOST, format!("{host}:{port}"))
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())?;
    let (ws, _) = fastwebsockets::handshake::client(&SpawnLocal, req, tcp)
        .await
        .map_err(|e| anyhow!("{url}: {e}"))?;
    Ok(FragmentCollector::new(ws))
}

/// The last seq held of each symbol, for `resume`.
type Resume = foldhash::HashMap<String, u64>;

fn subscribe_frame(id: u64, op: &str, symbols: &[String], sub: &Subscription) -> Frame<'static> {
    subscribe_frame_from(id, op, symbols, sub, None)
}

/// A `subscribe` (or `unsubscribe`) frame; a subscribe given `resume` names the last
/// seq held of each of `symbols` that has one.
fn subscribe_frame_from(
    id: u64,
    op: &str,
    symbols: &[String],
    sub: &Subscription,
    resume: Option<&Resume>,
) -> Frame<'static> {
    let mut body = serde_json::json!({"op": op, "id": id, "symbols": symbols, "snapshot": false});
    if let Some(held) = resume.filter(|_| op == "subscribe" && sub.book_depth.is_none()) {
        let from: serde_json::Map<String, serde_json::Value> = symbols
            .iter()
            .filter_map(|s| held.get(s).map(|&seq| (s.clone(), seq.into())))
            .collect();
        body["resume"] = from.into();
    }
    if op == "subscribe" && sub.throttle_ms > 0 {
        body["throttle_ms"] = sub.throttle_ms.into();
    }
    if let Some(depth) = sub.book_depth {
        // A book subscription always starts with its `book`: `snapshot` does not apply.
        body = serde_json::json!({"op": op, "id": id, "channel": "book", "symbols": symbols});
        if op == "subscribe" {
            body["depth"] = depth.into();
        }
    }
    Frame::text(Payload::Owned(body.to_string().into_bytes()))
}

/// Opens, subscribes (to `symbols`, or to the subscription's pattern; resuming from
/// `resume` when given) and waits for `subscribed`; returns the connection and the
/// text frame that brought `subscribed` when more messages follow it there (a book's
/// first `book` may).
async fn open_subscribed(
    url: &str,
    bind: Option<IpAddr>,
    rcvbuf: Option<u32>,
    symbols: &[String],
    sub: &Subscription,
    resume: Option<&Resume>,
) -> anyhow::Result<(Ws, Option<Vec<u8>>)> {
    let mut ws = open_ws(url, bind, rcvbuf).await?;
    let pattern: Vec<String> = sub.pattern.iter().cloned().collect();
    let named = if pattern.is_empty() {
        symbols
    } else {
        &pattern
    };
    ws.write_frame(subscribe_frame_from(1, "subscribe", named, sub, resume))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let f = tokio::time::timeout_at(deadline.into(), ws.read_frame())
            .await
            .map_err(|_| anyhow!("{url}: no `subscribed` within 20 s"))??;
        match f.opcode {
            OpCode::Text => {
                let msgs =
                    scan::messages(&f.payload).map_err(|e| anyhow!("{url}: bad frame: {e}"))?;
                let n = msgs.len();
                for (i, m) in msgs.into_iter().enumerate() {
                    match &*m.ty {
                        "subscribed" => {
                            let rest = (i + 1 < n).then(|| f.payload.to_vec());
                            return Ok((ws, rest));
                        }
                        "error" => bail!("{url}: the subscribe was refused"),
                        _ => {}
                    }
                }
            }
            OpCode::Close => bail!("{url}: closed before `subscribed`"),
            _ => {}
        }
    }
}

type Done = (
    tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
    tokio::sync::OwnedSemaphorePermit,
);

/// Tells the opener how the first open went; false when it was told already.
fn tell(done: &mut Option<Done>, r: Result<(), String>) -> bool {
    match done.take() {
        Some((tx, _permit)) => {
            let _ = tx.send(r);
            true
        }
        None => false,
    }
}

/// One connection: opens and subscribes, reads until it ends, and opens again where
/// churn asks for it (or the server closed it under churn); one that follows
/// ([`WorkerSpec::follow`]) moves when the server asks it to or closes it, resuming.
async fn connection(
    spec: Rc<WorkerSpec>,
    shared: Rc<Shared>,
    i: usize,
    behaviour: Behaviour,
    mut done: Option<Done>,
) {
    let state = Rc::new(RefCell::new(ConnState::new(&spec, i, behaviour)));
    shared.conns.borrow_mut().push(state.clone());
    let mut life = Life::new(&spec, i, behaviour);
    // A stalled client's small receive window lets the server see it stall soon, as
    // it would across a real network.
    let rcvbuf = (behaviour == Behaviour::Stalled).then_some(STALLED_RCVBUF);
    let mut route = Route::new(i, spec.urls.len(), spec.follow);
    // The connection being left for a new one: closed once the new one is live.
    let mut leaving: Option<Ws> = None;
    let mut resume = false;
    loop {
        let held = resume.then(|| state.borrow().last.clone());
        let url = &spec.urls[route.at];
        let opened = open_subscribed(
            url,
            spec.bind,
            rcvbuf,
            &life.symbols,
            &spec.subscription,
            held.as_ref(),
        );
        let mut ws = match opened.await {
            Ok((ws, rest)) => {
                opened_now(&state, &shared, rest, resume);
                tell(&mut done, Ok(()));
                ws
            }
            Err(e) => {
                state.borrow_mut().counts.connect_failed += 1;
                if tell(&mut done, Err(format!("{e:#}"))) {
                    return;
                }
                route.elsewhere();
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if let Some(mut old) = leaving.take() {
            let _ = old.write_frame(Frame::close(1000, b"bench: moved")).await;
        }
        life.opened();
        match read_loop(&mut ws, &shared, &state, &mut life).await {
            // Our own close (churn): open again at home, as a new client would.
            End::Closed => {
                resume = false;
                route.home();
            }
            // Asked to reconnect: open the next connection, then close this one.
            End::Move => {
                resume = true;
                route.elsewhere();
                leaving = Some(ws);
            }
            End::Server(code) => {
                *state.borrow_mut().counts.closes.entry(code).or_default() += 1;
                if spec.follow {
                    resume = true;
                    route.elsewhere();
                } else if spec.churn.is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl ConnState {
    /// Connection `i`'s, before it opens: it checks its books' checksums when it is
    /// among the first `book_checks`.
    fn new(spec: &WorkerSpec, i: usize, behaviour: Behaviour) -> ConnState {
        let books = if i < spec.subscription.book_checks {
            crate::books::Seen::checking()
        } else {
            crate::books::Seen::default()
        };
        ConnState {
            behaviour,
            counts: Counts::default(),
            last: Default::default(),
            books,
            moving: false,
        }
    }
}

/// A connection has opened: counted; a fresh one starts each symbol's sequence again
/// from the first tick (or `book`) it brings (it subscribes without snapshot), a
/// resumed one carries on from what it held. Reads what came with `subscribed`.
fn opened_now(state: &RefCell<ConnState>, shared: &Shared, rest: Option<Vec<u8>>, resumed: bool) {
    let mut st = state.borrow_mut();
    st.counts.opened += 1;
    if resumed {
        st.counts.resumed += 1;
    } else {
        st.last.clear();
        st.books.clear();
    }
    if let Some(frame) = rest {
        let at = Arrival {
            shared,
            w: shared.window.get(),
            recv: now_ns(),
        };
        on_text(&frame, &mut st, &at);
    }
}

/// Which of the URLs a connection opens next: its own (`i mod len`), or under
/// [`WorkerSpec::follow`] the next one when it is asked to move or cannot open.
struct Route {
    home: usize,
    at: usize,
    len: usize,
    follow: bool,
}

impl Route {
    fn new(i: usize, len: usize, follow: bool) -> Route {
        Route {
            home: i % len,
            at: i % len,
            len,
            follow,
        }
    }

    fn home(&mut self) {
        self.at = self.home;
    }

    fn elsewhere(&mut self) {
        if self.follow {
            self.at = (self.at + 1) % self.len;
        }
    }
}

/// What a connection changes while it lives: under churn it swaps a symbol now and
/// then and closes when its life is over; an intermittent one pauses now and then.
struct Life {
    spec: Rc<WorkerSpec>,
    /// The connection's global index.
    i: usize,
    behaviour: Behaviour,
    /// Its symbols now.
    symbols: Vec<String>,
    rng: rand::rngs::SmallRng,
    /// The next symbol to swap in, counted past the connection's first ones.
    next_swap: usize,
    /// When the current connection opened, and how long it lives (churn).
    opened: Instant,
    life: Option<Duration>,
    last_swap: Instant,
    next_pause: Instant,
}

impl Life {
    fn new(spec: &Rc<WorkerSpec>, i: usize, behaviour: Behaviour) -> Life {
        let now = Instant::now();
        Life {
            spec: spec.clone(),
            i,
            behaviour,
            symbols: spec.shape.symbols_of(i).map(symbol_name).collect(),
            rng: rand::rngs::SmallRng::seed_from_u64(i as u64 * 7919 + spec.index as u64),
            next_swap: spec.shape.per_conn,
            opened: now,
            life: None,
            last_swap: now,
            next_pause: now,
        }
    }

    /// A connection has just opened: draws its life and its first pause.
    fn opened(&mut self) {
        self.opened = Instant::now();
        self.life = self.spec.churn.map(|c| {
            Duration::from_millis(
                self.rng
                    .random_range(c.life_min_ms..=c.life_max_ms.max(c.life_min_ms)),
            )
        });
        self.last_swap = Instant::now();
        self.next_pause = Instant::now() + Duration::from_millis(self.rng.random_range(2000..6000));
    }

    /// What to do after the frame just read.
    fn control(&mut self) -> Ctl {
        let mut ctl = Ctl::default();
        if let Some(c) = self.spec.churn {
            if self.last_swap.elapsed() >= Duration::from_millis(c.resub_ms)
                && !self.symbols.is_empty()
            {
                self.last_swap = Instant::now();
                let old = self.symbols.remove(0);
                let shape = self.spec.shape;
                let new = symbol_name((self.i * shape.per_conn + self.next_swap) % shape.symbols);
                self.next_swap += 1;
                ctl.unsub = Some(old);
                if !self.symbols.contains(&new) {
                    self.symbols.push(new.clone());
                    ctl.sub = Some(new);
                }
            }
        }
        if self.behaviour == Behaviour::Intermittent && Instant::now() >= self.next_pause {
            self.next_pause =
                Instant::now() + Duration::from_millis(self.rng.random_range(4000..8000));
            ctl.pause = Some(Duration::from_millis(self.rng.random_range(1000..3000)));
        }
        if self.life.is_some_and(|l| self.opened.elapsed() >= l) {
            ctl.close = true;
        }
        ctl
    }
}

#[derive(Default)]
struct Ctl {
    close: bool,
    sub: Option<String>,
    unsub: Option<String>,
    pause: Option<Duration>,
}

enum End {
    /// We closed it.
    Closed,
    /// The server asked it to reconnect (`reconnect`), and it follows.
    Move,
    /// The server closed it (code, or `drop`).
    Server(String),
}

/// Reads frames until the connection ends: counts and checks each message, behaves
/// as the connection's behaviour says, and carries out what its life asks.
async fn read_loop(
    ws: &mut Ws,
    shared: &Shared,
    state: &RefCell<ConnState>,
    life: &mut Life,
) -> End {
    let mut cmd_id = 2u64;
    loop {
        let frame = match ws.read_frame().await {
            Ok(f) => f,
            Err(_) => return End::Server("drop".into()),
        };
        let w = shared.window.get();
        let at = Arrival {
            shared,
            w,
            recv: now_ns(),
        };
        let data: Option<OnData> = match frame.opcode {
            OpCode::Text => Some(on_text),
            OpCode::Binary => Some(on_binary),
            OpCode::Close => return End::Server(close_code(&frame.payload)),
            _ => None,
        };
        if let Some(on) = data {
            on(&frame.payload, &mut state.borrow_mut(), &at);
        }
        if std::mem::take(&mut state.borrow_mut().moving) && life.spec.follow {
            return End::Move;
        }
        behave(life.behaviour, &w).await;
        let ctl = life.control();
        let sub = &life.spec.subscription;
        if let Some(end) = carry_out(ws, state, ctl, sub, &mut cmd_id).await {
            return end;
        }
    }
}

/// A data frame as it arrived: where its latencies go, the window, when it came.
struct Arrival<'a> {
    shared: &'a Shared,
    w: Window,
    recv: u64,
}

impl Arrival<'_> {
    /// Counts a frame of `len` payload bytes if it arrived inside the window; says
    /// whether it did.
    fn count(&self, st: &mut ConnState, len: u64) -> bool {
        let inside = self.recv >= self.w.record_from && self.recv < self.w.until;
        if inside {
            st.counts.frames += 1;
            st.counts.bytes += len;
        }
        inside
    }

    fn message(&self, st: &mut ConnState, m: Msg<'_>) {
        on_message(st, self.shared, &self.w, self.recv, m);
    }
}

/// What reads the messages of a data frame.
type OnData = fn(&[u8], &mut ConnState, &Arrival<'_>);

/// A text frame: an array of JSON messages.
fn on_text(payload: &[u8], st: &mut ConnState, at: &Arrival<'_>) {
    at.count(st, payload.len() as u64);
    let Ok(msgs) = scan::messages(payload) else {
        st.counts.errors += 1;
        return;
    };
    for m in msgs {
        at.message(st, m);
    }
    if st.books.checks() {
        check_books_json(payload, st);
    }
}

/// On a connection that checks its books: every book message of a text frame read
/// whole (prices with the flat universe's decimals), applied to the book held and its
/// checksum compared with the book it makes.
fn check_books_json(payload: &[u8], st: &mut ConnState) {
    use serde_json::Value;
    let Ok(values) = serde_json::from_slice::<Vec<Value>>(payload) else {
        return;
    };
    let spec = tickstream::book::Spec::new(crate::books::DECIMALS);
    for obj in values.iter().filter_map(Value::as_object) {
        let ty = obj.get("type").and_then(Value::as_str);
        if !matches!(ty, Some("book" | "book_update")) {
            continue;
        }
        let text = |k: &str| obj.get(k).and_then(Value::as_str);
        let read = match (text("symbol"), text("epoch")) {
            (Some(sym), Some(epoch)) => {
                tickstream::book::json::from_object(obj, sym.into(), epoch.into(), spec)
            }
            _ => Err("no symbol or epoch".into()),
        };
        match read {
            Ok(m) => check_book(st, &m),
            Err(_) => {
                st.counts.books_checked += 1;
                st.counts.checksum_mismatches += 1;
            }
        }
    }
}

/// Applies a book message to the book a checking connection holds and counts whether
/// its checksum is the book's.
fn check_book(st: &mut ConnState, m: &tickstream::book::BookMsg) {
    if let Some(ok) = st.books.check(m) {
        st.counts.books_checked += 1;
        if !ok {
            st.counts.checksum_mismatches += 1;
        }
    }
}

/// A binary frame: records of which only kind, symbol, seq and ts are read, at fixed
/// offsets.
fn on_binary(payload: &[u8], st: &mut ConnState, at: &Arrival<'_>) {
    let len = payload.len() as u64;
    if at.count(st, len) {
        st.counts.binary_frames += 1;
        st.counts.binary_bytes += len;
    }
    if matches!(
        payload.first(),
        Some(&(binary::book::KIND_BOOK | binary::book::KIND_BOOK_UPDATE))
    ) {
        on_book_records(payload, st, at);
        return;
    }
    for rec in binary::records(payload) {
        let Ok(r) = rec else {
            st.counts.errors += 1;
            break;
        };
        let ty = match r.kind {
            Kind::Tick => "tick",
            Kind::Snapshot => "snapshot",
        };
        let m = Msg {
            symbol: Some(Cow::Borrowed(r.symbol)),
            seq: Some(r.seq),
            ts: Some(r.ts),
            skipped: r.skipped,
            ..Msg::of(ty)
        };
        at.message(st, m);
    }
}

/// A binary frame of book records (and perhaps ticks): each record's head read, and on
/// a connection that checks its books, its levels applied and its checksum compared.
fn on_book_records(payload: &[u8], st: &mut ConnState, at: &Arrival<'_>) {
    use binary::AnyRecord;
    let Ok(records) = binary::decode_any(payload) else {
        st.counts.errors += 1;
        return;
    };
    for rec in records {
        let m = match &rec {
            AnyRecord::Book(b) => Msg {
                symbol: Some(Cow::Borrowed(b.symbol)),
                seq: Some(b.seq),
                ts: Some(b.ts),
                prev_seq: b.prev_seq,
                ..Msg::of(match b.prev_seq {
                    Some(_) => "book_update",
                    None => "book",
                })
            },
            AnyRecord::Tick(r) => Msg {
                symbol: Some(Cow::Borrowed(r.symbol)),
                seq: Some(r.seq),
                ts: Some(r.ts),
                skipped: r.skipped,
                ..Msg::of(match r.kind {
                    Kind::Tick => "tick",
                    Kind::Snapshot => "snapshot",
                })
            },
        };
        at.message(st, m);
        if let (AnyRecord::Book(b), true) = (&rec, st.books.checks()) {
            check_book(st, &b.to_msg());
        }
    }
}

/// The code of a Close frame (1005 when it carries none).
fn close_code(payload: &[u8]) -> String {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]]).to_string()
    } else {
        "1005".into()
    }
}

/// A stalled connection stops reading for the rest of the window; a slow one sleeps a
/// little after every frame.
async fn behave(behaviour: Behaviour, w: &Window) {
    let now = now_ns();
    match behaviour {
        Behaviour::Stalled if now >= w.record_from && now < w.until => {
            let left = Duration::from_nanos(w.until - now);
            tokio::time::sleep(left).await;
        }
        Behaviour::Slow => tokio::time::sleep(Duration::from_millis(20)).await,
        _ => {}
    }
}

/// Pauses, swaps subscriptions or closes as `ctl` says; `Some` when the connection
/// ended.
async fn carry_out(
    ws: &mut Ws,
    state: &RefCell<ConnState>,
    ctl: Ctl,
    sub: &Subscription,
    cmd_id: &mut u64,
) -> Option<End> {
    if let Some(p) = ctl.pause {
        tokio::time::sleep(p).await;
    }
    for (op, symbol) in [("unsubscribe", ctl.unsub), ("subscribe", ctl.sub)] {
        let Some(s) = symbol else { continue };
        state.borrow_mut().last.remove(&s);
        *cmd_id += 1;
        if ws
            .write_frame(subscribe_frame(*cmd_id, op, &[s], sub))
            .await
            .is_err()
        {
            return Some(End::Server("drop".into()));
        }
    }
    if ctl.close {
        let _ = ws
            .write_frame(Frame::close(1000, b"bench: connection life over"))
            .await;
        return Some(End::Closed);
    }
    None
}

fn on_message(st: &mut ConnState, shared: &Shared, w: &Window, recv: u64, m: Msg<'_>) {
    match &*m.ty {
        "tick" => {
            let (Some(sym), Some(seq)) = (m.symbol, m.seq) else {
                st.counts.errors += 1;
                return;
            };
            let ts = m.ts.unwrap_or(0);
            st.counts.ticks_all += 1;
            let counted = ts >= w.record_from && ts < w.until;
            if !in_sequence(st, sym, seq, m.skipped, counted) {
                return;
            }
            if counted {
                if let Some(k) = m.skipped {
                    st.counts.paced += 1;
                    st.counts.folded += k;
                }
                deliver(st, shared, w, recv, ts);
            }
        }
        "snapshot" => {
            st.counts.snapshots += 1;
            if let (Some(sym), Some(seq)) = (m.symbol, m.seq) {
                st.last.insert(sym.into_owned(), seq);
            }
        }
        "book" => match (m.symbol, m.seq) {
            (Some(sym), Some(seq)) => {
                st.counts.snapshots += 1;
                st.books.book(&sym, seq);
            }
            _ => st.counts.errors += 1,
        },
        "book_update" => on_book_update(st, shared, w, recv, m),
        "gap" => on_gap(st, w, recv, m),
        "error" => st.counts.errors += 1,
        "reconnect" => {
            st.counts.reconnect_notices += 1;
            st.moving = true;
        }
        "status" if recv >= w.record_from => {
            let state = m.state.as_deref().unwrap_or("?").to_owned();
            *st.counts.status.entry(state).or_default() += 1;
        }
        _ => {}
    }
}

/// Counts a message whose `ts` lies in the window as delivered and records its
/// latency: a healthy connection's in the histogram of its second, another's with
/// the other behaviours.
fn deliver(st: &mut ConnState, shared: &Shared, w: &Window, recv: u64, ts: u64) {
    st.counts.ticks += 1;
    let lat = recv.saturating_sub(ts).max(1);
    if st.behaviour == Behaviour::Healthy {
        // The caller put ts within the window, so within one of its seconds.
        let s = second_of(w.record_from, ts);
        if let Some(h) = shared.seconds.borrow_mut().get_mut(s) {
            let _ = h.record(lat);
        }
    } else {
        let _ = shared.other.borrow_mut().record(lat);
    }
    shared.received.set(shared.received.get() + 1);
}

/// A `book_update`: it must name the seq of the book held (`prev_seq`); one that names
/// a later one is a hole (updates lost), one with no book before it a hole too, a
/// repeat is dropped. Counted and timed like a tick.
fn on_book_update(st: &mut ConnState, shared: &Shared, w: &Window, recv: u64, m: Msg<'_>) {
    use crate::books::Step;
    let (Some(sym), Some(seq), Some(prev)) = (m.symbol, m.seq, m.prev_seq) else {
        st.counts.errors += 1;
        return;
    };
    let ts = m.ts.unwrap_or(0);
    st.counts.ticks_all += 1;
    let counted = ts >= w.record_from && ts < w.until;
    let step = st.books.update(&sym, seq, prev);
    if step == Step::Stale {
        if counted {
            st.counts.duplicates += 1;
        }
        return;
    }
    if counted {
        match step {
            Step::Hole(n) => {
                st.counts.holes += 1;
                st.counts.hole_ticks += n;
            }
            Step::NoBook => st.counts.holes += 1,
            _ => {}
        }
        deliver(st, shared, w, recv, ts);
    }
}

/// A `gap`: counted by reason once the window began; the next tick follows its `to`,
/// and on the book channel the book held is dropped (a fresh `book` follows).
fn on_gap(st: &mut ConnState, w: &Window, recv: u64, m: Msg<'_>) {
    let (Some(sym), Some(from), Some(to)) = (m.symbol, m.from, m.to) else {
        st.counts.errors += 1;
        return;
    };
    if recv >= w.record_from {
        let n = to.saturating_sub(from) + 1;
        st.counts.gaps += 1;
        st.counts.gap_ticks += n;
        let reason = m.reason.as_deref().unwrap_or("?").to_owned();
        if reason == "slow_consumer" {
            st.counts.conflated += n;
        }
        *st.counts.gap_reasons.entry(reason).or_default() += n;
    }
    if m.channel.as_deref() == Some("book") {
        st.books.gap(&sym);
        return;
    }
    // The next tick after the gap follows `to`.
    match st.last.get_mut(&*sym) {
        Some(v) => *v = (*v).max(to),
        None => {
            st.last.insert(sym.into_owned(), to);
        }
    }
}

/// Checks a tick's seq against the last one of its symbol and moves it on: a jump that
/// `skipped` (a paced tick's folded count) does not account for is a hole, a `skipped`
/// larger than the jump an error. False for a duplicate, which is dropped.
fn in_sequence(
    st: &mut ConnState,
    sym: Cow<'_, str>,
    seq: u64,
    skipped: Option<u64>,
    counted: bool,
) -> bool {
    let Some(l) = st.last.get_mut(&*sym) else {
        st.last.insert(sym.into_owned(), seq);
        return true;
    };
    if seq <= *l {
        if counted {
            st.counts.duplicates += 1;
        }
        return false;
    }
    let next = *l + 1 + skipped.unwrap_or(0);
    if counted && seq > next {
        st.counts.holes += 1;
        st.counts.hole_ticks += seq - next;
    } else if counted && seq < next {
        st.counts.errors += 1;
    }
    *l = seq;
    true
}

/// Source address of worker `i`: 127.0.0.2, 127.0.0.3, …
pub fn source_addr(i: usize) -> IpAddr {
    let n = i + 1;
    IpAddr::V4(Ipv4Addr::new(127, 0, (n / 253) as u8, (n % 253) as u8 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> Window {
        Window {
            record_from: 1_000,
            until: 10_000_000_000,
            stop_at: u64::MAX,
        }
    }

    fn state() -> (ConnState, Shared) {
        let st = ConnState {
            behaviour: Behaviour::Healthy,
            counts: Counts::default(),
            last: Default::default(),
            books: crate::books::Seen::default(),
            moving: false,
        };
        let sh = Shared {
            window: Cell::new(window()),
            received: Cell::new(0),
            seconds: RefCell::new(vec![new_hist(); 10]),
            other: RefCell::new(new_hist()),
            conns: RefCell::new(Vec::new()),
        };
        (st, sh)
    }

    fn feed(st: &mut ConnState, sh: &Shared, frame: &str) {
        let msgs = scan::messages(frame.as_bytes()).unwrap();
        for m in msgs {
            on_message(st, sh, &window(), 5_000, m);
        }
    }

    #[test]
    fn holes_gaps_and_duplicates_are_told_apart() {
        let (mut st, sh) = state();
        feed(
            &mut st,
            &sh,
            r#"[{"type":"tick","symbol":"A","seq":1,"ts":2000,"bid":1.5,"x":{"y":[1,2]}},{"type":"tick","symbol":"A","seq":2,"ts":2000}]"#,
        );
        feed(
            &mut st,
            &sh,
            r#"[{"type":"tick","symbol":"A","seq":5,"ts":2000}]"#,
        );
        feed(
            &mut st,
            &sh,
            r#"[{"type":"gap","symbol":"A","from":6,"to":9,"reason":"slow_consumer"},{"type":"tick","symbol":"A","seq":10,"ts":2000},{"type":"tick","symbol":"A","seq":10,"ts":2000}]"#,
        );
        let c = &st.counts;
        assert_eq!(c.ticks, 4);
        assert_eq!((c.holes, c.hole_ticks), (1, 2));
        assert_eq!((c.gaps, c.gap_ticks, c.conflated), (1, 4, 4));
        assert_eq!(c.duplicates, 1);
        let secs = sh.seconds.borrow();
        assert_eq!(secs[0].len(), 4);
        assert_eq!(secs[0].max(), secs[0].highest_equivalent(3_000));
        assert!(secs[1..].iter().all(|h| h.is_empty()));
        assert!(sh.other.borrow().is_empty());
    }

    #[test]
    fn skipped_accounts_for_a_paced_ticks_jump_and_nothing_more() {
        let (mut st, sh) = state();
        feed(
            &mut st,
            &sh,
            r#"[{"type":"tick","symbol":"A","seq":1,"ts":2000},{"type":"tick","symbol":"A","seq":6,"ts":2000,"skipped":4},{"type":"tick","symbol":"A","seq":9,"ts":2000,"skipped":1}]"#,
        );
        // 6 after 1 with 4 folded: in sequence; 9 after 6 with 1 folded: 8 is missing.
        let c = &st.counts;
        assert_eq!((c.ticks, c.paced, c.folded), (3, 2, 5));
        assert_eq!((c.holes, c.hole_ticks, c.errors), (1, 1, 0));
        feed(
            &mut st,
            &sh,
            r#"[{"type":"tick","symbol":"A","seq":10,"ts":2000,"skipped":3}]"#,
        );
        assert_eq!(st.counts.errors, 1, "more folded than the jump");
    }

    #[test]
    fn latencies_land_in_their_second_or_with_the_other_connections() {
        let (mut st, sh) = state();
        feed(
            &mut st,
            &sh,
            r#"[{"type":"tick","symbol":"A","seq":1,"ts":2000},{"type":"tick","symbol":"A","seq":2,"ts":3000000000}]"#,
        );
        st.behaviour = Behaviour::Stalled;
        feed(
            &mut st,
            &sh,
            r#"[{"type":"tick","symbol":"A","seq":3,"ts":4000}]"#,
        );
        let secs = sh.seconds.borrow();
        let lens: Vec<u64> = secs.iter().map(|h| h.len()).collect();
        assert_eq!(lens, [1, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(sh.other.borrow().len(), 1);
        assert_eq!(st.counts.ticks, 3);
    }

    #[test]
    fn book_updates_must_follow_the_book_held() {
        let (mut st, sh) = state();
        let up = |seq: u64, prev: u64| {
            format!(
                r#"{{"type":"book_update","symbol":"A","epoch":"e","seq":{seq},"prev_seq":{prev},"ts":2000,"bids":[[1.00,5]],"asks":[],"checksum":1}}"#
            )
        };
        // An update before any book applies to nothing.
        feed(&mut st, &sh, &format!("[{}]", up(2, 1)));
        assert_eq!(st.counts.holes, 1);
        feed(
            &mut st,
            &sh,
            &format!(
                r#"[{{"type":"book","symbol":"A","epoch":"e","seq":3,"ts":1,"bids":[[1.00,5]],"asks":[],"checksum":1}},{},{}]"#,
                up(4, 3),
                up(5, 4)
            ),
        );
        assert_eq!((st.counts.holes, st.counts.snapshots), (1, 1));
        // 6 and 7 lost: the update naming 7 shows it; a repeat is dropped.
        feed(&mut st, &sh, &format!("[{},{}]", up(8, 7), up(8, 7)));
        assert_eq!((st.counts.holes, st.counts.hole_ticks), (2, 2));
        assert_eq!(st.counts.duplicates, 1);
        // A gap on the book channel: the fresh book after it starts the sequence again.
        feed(
            &mut st,
            &sh,
            &format!(
                r#"[{{"type":"gap","channel":"book","symbol":"A","from":9,"to":11,"reason":"upstream"}},{{"type":"book","symbol":"A","epoch":"e","seq":12,"ts":1,"bids":[],"asks":[],"checksum":0}},{}]"#,
                up(13, 12)
            ),
        );
        let c = &st.counts;
        assert_eq!((c.gaps, c.gap_ticks, c.holes), (1, 3, 2));
        // Every update counted and timed (the repeat aside), as ticks are.
        assert_eq!(c.ticks, 5);
        assert_eq!(sh.seconds.borrow()[0].len(), 5);
        assert_eq!(c.errors, 0);
    }

    #[test]
    fn histograms_survive_the_pipe() {
        let mut h = new_hist();
        for v in [1u64, 10, 1_000, 1_000_000, 7_000_000_000] {
            h.record(v).unwrap();
        }
        let back = hist_from_hex(&hist_to_hex(&h)).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), h.max());
    }

    #[test]
    fn source_addresses_skip_the_network_and_broadcast_numbers() {
        assert_eq!(source_addr(0).to_string(), "127.0.0.2");
        assert_eq!(source_addr(1).to_string(), "127.0.0.3");
        for i in 0..2000 {
            let IpAddr::V4(a) = source_addr(i) else {
                panic!()
            };
            assert_ne!(a.octets()[3], 0);
            assert_ne!(a.octets()[3], 255);
        }
    }
}
