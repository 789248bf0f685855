//! `candles`: what bars cost a node, measured in this process on the node's own hub.
//!
//! - **CPU per tick.** The hub of a node fed `--rate` ticks/s over `--symbols` symbols
//!   (stamped now, so bars close as they do live), each tick queued for `--fanout`
//!   tick subscribers (the default 10,000 × 10 = 100k msgs/s), twice for `--duration`:
//!   with no candle subscription, then with every symbol subscribed in `1s` and `1m`
//!   (`--candle-fanout` subscribers each). The candle subscribers get what the node
//!   sends them: each closed bar's `candle` message encoded once, and the forming bar
//!   every `--pace`, encoded once per change, each pushed to every subscriber's queue.
//!   CPU is the time the publishing thread and the pacing thread ran
//!   (`/proc/thread-self/schedstat`), per tick.
//! - **Backfill.** The `candles` message of 1,000 closed bars, from the node's memory
//!   and cold (read from a spawned `redis-server`, merged, encoded: what a node's first
//!   candles subscription to a symbol costs), `--samples` times each: p50, p99, max.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use tickstream::bus::{Bus, RedisBus, RedisConfig, RedisPublisher};
use tickstream::hub::candles::{Candles, Interval};
use tickstream::hub::{Behind, Hub, Outbox, Receiver, SlowPolicy, Start};
use tickstream::tick::{now_ns, Symbol, Tick};

/// What candles cost a node: CPU per tick with candle subscriptions against none, and
/// the time to answer a backfill of 1,000 bars.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example (10,000 ticks/s × 10 subscribers = 100k msgs/s, then the same \
with 200 symbols × 2 intervals subscribed; backfill from memory and from a spawned redis-server):

  tickstream-bench candles --cpus 0 --duration 10s"
)]
pub struct Args {
    /// Symbols of the hub, every one subscribed to candles in the second pass.
    #[arg(long, default_value_t = 200)]
    pub symbols: usize,
    /// Ticks per second over all symbols.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Tick subscribers of each symbol.
    #[arg(long, default_value_t = 10)]
    pub fanout: usize,
    /// Candle subscribers of each symbol and interval in the second pass.
    #[arg(long, default_value_t = 1)]
    pub candle_fanout: usize,
    /// How long each pass runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Passes of each kind, alternating (none, subscribed, none, …); the medians count.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// How often candle subscribers get the forming bar.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub pace: Duration,
    /// Backfills timed, from memory and from Redis each.
    #[arg(long, default_value_t = 1000)]
    pub samples: usize,
    /// CPUs to run on (taskset list, e.g. `0`); default: wherever the OS puts it.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Directory of `summary.json` (default `target/tickstream-bench/candles-<time>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The intervals the second pass subscribes.
const SUBSCRIBED: [Interval; 2] = [Interval::S1, Interval::M1];

/// What one CPU pass measured.
#[derive(Debug, Default)]
struct Pass {
    ticks: u64,
    /// Tick messages queued for subscribers.
    tick_msgs: u64,
    /// Candle messages queued for subscribers.
    candle_msgs: u64,
    /// CPU of the publishing thread, ns.
    publish_ns: u64,
    /// CPU of the pacing thread, ns.
    pace_ns: u64,
}

impl Pass {
    fn ns_per_tick(&self) -> f64 {
        (self.publish_ns + self.pace_ns) as f64 / self.ticks.max(1) as f64
    }

    fn json(&self) -> serde_json::Value {
        json!({"ticks": self.ticks, "tick_msgs": self.tick_msgs, "candle_msgs": self.candle_msgs,
               "publish_cpu_ns": self.publish_ns, "pace_cpu_ns": self.pace_ns,
               "cpu_ns_per_tick": self.ns_per_tick()})
    }
}

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    if let Some(list) = &a.cpus {
        crate::spawn::pin_self(&crate::common::parse_cpus(list)?)?;
    }
    let out = a.out.clone().unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("target/tickstream-bench/candles-{t}"))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let started = std::time::SystemTime::now();
    let (mut nones, mut subs) = (Vec::new(), Vec::new());
    for _ in 0..a.runs.max(1) {
        nones.push(cpu_pass(&a, false));
        subs.push(cpu_pass(&a, true));
    }
    let (none, subscribed) = (median(&nones), median(&subs));
    let fold = fold_ns(a.symbols);
    let memory = backfill_memory(a.samples);
    let redis = backfill_redis(a.samples, &out)?;
    print(&a, none, subscribed, fold, &memory, &redis);
    let summary = json!({
        "scenario": "candles",
        "command_line": std::env::args().collect::<Vec<_>>().join(" "),
        "started_utc": humantime::format_rfc3339_seconds(started).to_string(),
        "machine": crate::report::machine(),
        "load": {"symbols": a.symbols, "rate": a.rate, "fanout": a.fanout,
                 "candle_fanout": a.candle_fanout, "pace_ms": a.pace.as_millis() as u64,
                 "duration_s": a.duration.as_secs_f64()},
        "none": none.json(),
        "subscribed": subscribed.json(),
        "passes": {"none": nones.iter().map(Pass::json).collect::<Vec<_>>(),
                   "subscribed": subs.iter().map(Pass::json).collect::<Vec<_>>()},
        "cpu_ratio": subscribed.ns_per_tick() / none.ns_per_tick(),
        "candle_work_ns_per_tick": subscribed.pace_ns as f64 / subscribed.ticks.max(1) as f64,
        "fold_ns": fold,
        "backfill_memory_us": percentiles(&memory),
        "backfill_redis_us": percentiles(&redis),
    });
    crate::report::write_summary(&out, &summary)
}

/// The pass of median CPU per tick.
fn median(passes: &[Pass]) -> &Pass {
    let mut v: Vec<&Pass> = passes.iter().collect();
    v.sort_by(|a, b| a.ns_per_tick().total_cmp(&b.ns_per_tick()));
    v[v.len() / 2]
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    json!({"p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99), "max": h.max(),
           "samples": h.len()})
}

fn print(
    a: &Args,
    none: &Pass,
    sub: &Pass,
    fold: f64,
    memory: &Histogram<u64>,
    redis: &Histogram<u64>,
) {
    let msgs = a.rate as f64 * a.fanout as f64;
    println!(
        "candles: {} symbols, {} ticks/s × {} subscribers = {msgs:.0} msgs/s, {:?} a pass, \
         median of {} passes each",
        a.symbols, a.rate, a.fanout, a.duration, a.runs
    );
    for (name, p) in [("no candle subscription", none), ("200×2 subscribed", sub)] {
        println!(
            "  {name:<24} {:>8.0} ns CPU/tick (publish {:.2} s, pace {:.3} s) · {} tick msgs, {} candle msgs",
            p.ns_per_tick(),
            p.publish_ns as f64 / 1e9,
            p.pace_ns as f64 / 1e9,
            p.tick_msgs,
            p.candle_msgs
        );
    }
    let base = none.ns_per_tick();
    println!("  subscribed ÷ none: {:.3}×", sub.ns_per_tick() / base);
    let work = sub.pace_ns as f64 / sub.ticks.max(1) as f64;
    println!(
        "  the subscribers' candle work: {work:.0} ns/tick ({:.1} % of none); folding a tick \
         into its bars (every pass): {fold:.0} ns ({:.1} % of none)",
        100.0 * work / base,
        100.0 * fold / base
    );
    for (name, h) in [
        ("backfill 1000 bars, memory", memory),
        ("backfill 1000 bars, Redis", redis),
    ] {
        println!(
            "  {name:<28} p50 {} µs · p99 {} µs · max {} µs ({} samples)",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max(),
            h.len()
        );
    }
}

/// CPU time the calling thread has run, ns.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU of folding one tick into the bars of every interval, ns: a million ticks round
/// `n` symbols, as the hub folds them.
fn fold_ns(n: usize) -> f64 {
    let symbols: Vec<Symbol> = (0..n).map(|i| Symbol::from(format!("S{i:04}"))).collect();
    let candles = Candles::new(symbols.iter().cloned(), 1000);
    let t0 = now_ns();
    let ticks: Vec<Tick> = (0..1_000_000u64)
        .map(|k| {
            let s = &symbols[k as usize % n];
            let mut t = tick(s, k / n as u64 + 1, 100.0 + (k % 37) as f64 / 10.0, k);
            t.ts = t0 + k * 100_000;
            t
        })
        .collect();
    let cpu0 = thread_cpu_ns();
    for t in &ticks {
        std::hint::black_box(candles.fold(t));
    }
    (thread_cpu_ns() - cpu0) as f64 / ticks.len() as f64
}

/// A hub over `n` symbols, each with `fanout` tick subscribers, and their queues.
fn hub_with_subscribers(n: usize, fanout: usize) -> (Arc<Hub>, Vec<Symbol>, Vec<Receiver>) {
    let symbols: Vec<Symbol> = (0..n).map(|i| Symbol::from(format!("S{i:04}"))).collect();
    let hub = Arc::new(Hub::new(symbols.iter().cloned(), 1024));
    let mut receivers = Vec::new();
    for k in 0..fanout {
        let (outbox, rx) = Outbox::new(k as u64 + 1, 1 << 20, SlowPolicy::Conflate);
        for s in &symbols {
            let behind: Behind = Arc::new(AtomicU64::new(0));
            hub.subscribe(s, &outbox, &behind, &Start::default());
        }
        receivers.push(rx);
    }
    (hub, symbols, receivers)
}

/// Drains the tick queues until `stop`; returns the messages taken.
fn drain(mut receivers: Vec<Receiver>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut got = Vec::with_capacity(4096);
        let mut n = 0u64;
        loop {
            let done = stop.load(Ordering::Acquire);
            for rx in &mut receivers {
                while rx.take(&mut got, 4096) > 0 {
                    n += got.len() as u64;
                    got.clear();
                }
            }
            if done {
                return n;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

/// One pass: ticks at the rate for the duration, with or without candle subscribers.
fn cpu_pass(a: &Args, candles: bool) -> Pass {
    let (hub, symbols, receivers) = hub_with_subscribers(a.symbols, a.fanout);
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = drain(receivers, stop.clone());
    let pacer = candles.then(|| {
        let p = Pacer::new(hub.clone(), &symbols, a.candle_fanout);
        p.spawn(a.pace, stop.clone())
    });
    let publish_ns = feed(&hub, &symbols, a.rate, a.duration);
    stop.store(true, Ordering::Release);
    let (pace_ns, candle_msgs) = pacer.map_or((0, 0), |p| p.join().unwrap_or_default());
    Pass {
        ticks: hub.stats().ticks.load(Ordering::Relaxed),
        tick_msgs: drainer.join().unwrap_or(0),
        candle_msgs,
        publish_ns,
        pace_ns,
    }
}

/// Publishes `rate` ticks/s round the symbols, one batch a millisecond, for
/// `duration`; returns the CPU the publishing took, ns.
fn feed(hub: &Hub, symbols: &[Symbol], rate: u64, duration: Duration) -> u64 {
    let per_ms = (rate / 1000).max(1) as usize;
    let mut state: Vec<(u64, f64, u64)> = vec![(0, 100.0, 0); symbols.len()];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let (start, cpu0) = (Instant::now(), thread_cpu_ns());
    let mut next = 0usize;
    let mut ms = 0u64;
    while start.elapsed() < duration {
        let mut batch = Vec::with_capacity(per_ms);
        for _ in 0..per_ms {
            let k = next % symbols.len();
            next += 1;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let (seq, price, volume) = &mut state[k];
            *seq += 1;
            *price = (*price + ((rng % 21) as f64 - 10.0) / 100.0).max(1.0);
            *volume += rng % 500;
            batch.push(tick(&symbols[k], *seq, *price, *volume));
        }
        hub.publish_batch(batch);
        ms += 1;
        let due = start + Duration::from_millis(ms);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    thread_cpu_ns() - cpu0
}

fn tick(symbol: &Symbol, seq: u64, price: f64, volume: u64) -> Tick {
    Tick {
        symbol: symbol.clone(),
        epoch: "bench".into(),
        seq,
        ts: now_ns(),
        bid: price - 0.01,
        ask: price + 0.01,
        bid_size: 100,
        ask_size: 100,
        last: price,
        last_size: 10,
        volume,
        src_ts: None,
    }
}

/// A candle subscriber's queue.
type Sink = Mutex<VecDeque<Bytes>>;

/// One subscribed symbol and interval: its subscribers, and what they were last sent.
struct Series {
    symbol: Symbol,
    interval: Interval,
    sinks: Vec<Sink>,
    last_closed: u64,
    last_forming: Option<Bytes>,
}

/// What the node does for candle subscribers: closed bars once each, the forming bar
/// at the pace, each encoded once and queued for every subscriber.
struct Pacer {
    hub: Arc<Hub>,
    series: Vec<Series>,
}

impl Pacer {
    fn new(hub: Arc<Hub>, symbols: &[Symbol], fanout: usize) -> Pacer {
        let series = symbols
            .iter()
            .flat_map(|s| SUBSCRIBED.map(|iv| (s.clone(), iv)))
            .map(|(symbol, interval)| Series {
                symbol,
                interval,
                sinks: (0..fanout.max(1)).map(|_| Mutex::default()).collect(),
                last_closed: 0,
                last_forming: None,
            })
            .collect();
        Pacer { hub, series }
    }

    /// Runs a round every `pace` until `stop`; returns its CPU (ns) and the messages
    /// it queued.
    fn spawn(
        mut self,
        pace: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<(u64, u64)> {
        std::thread::spawn(move || {
            let cpu0 = thread_cpu_ns();
            let mut msgs = 0;
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(pace);
                msgs += self.round();
            }
            (thread_cpu_ns() - cpu0, msgs)
        })
    }

    /// One round: bars closed since the last one, then the forming bar where it changed.
    fn round(&mut self) -> u64 {
        let candles = self.hub.candles();
        let mut msgs = 0;
        for s in &mut self.series {
            for bar in candles.closed(&s.symbol, s.interval, 2) {
                if bar.start > s.last_closed {
                    s.last_closed = bar.start;
                    let json = bar.candle_json(&s.symbol, s.interval, true);
                    msgs += queue(&s.sinks, &json);
                }
            }
            if let Some(json) = candles.forming(&s.symbol, s.interval) {
                if s.last_forming
                    .as_ref()
                    .is_none_or(|l| l.as_ptr() != json.as_ptr())
                {
                    msgs += queue(&s.sinks, &json);
                    s.last_forming = Some(json);
                }
            }
            for sink in &s.sinks {
                sink.lock().clear();
            }
        }
        msgs
    }
}

/// Queues `msg` for every sink; the number queued.
fn queue(sinks: &[Sink], msg: &Bytes) -> u64 {
    for sink in sinks {
        sink.lock().push_back(msg.clone());
    }
    sinks.len() as u64
}

/// A hub whose symbol `BACK` has 1,000 closed 1s bars and a forming one.
fn hub_with_bars() -> (Hub, Vec<Tick>) {
    let hub = Hub::new([Symbol::from("BACK")], 16);
    let t0 = now_ns() / 1_000_000_000 * 1_000_000_000 - 2_000_000_000_000;
    let ticks: Vec<Tick> = (0..=1000u64)
        .map(|k| {
            let mut t = tick(
                &Symbol::from("BACK"),
                k + 1,
                100.0 + (k % 50) as f64 / 10.0,
                k * 10,
            );
            t.ts = t0 + k * 1_000_000_000;
            t
        })
        .collect();
    for t in &ticks {
        hub.publish(t.clone());
    }
    (hub, ticks)
}

/// Times the `candles` message of 1,000 bars held in memory, µs.
fn backfill_memory(samples: usize) -> Histogram<u64> {
    let (hub, _) = hub_with_bars();
    let mut h = Histogram::<u64>::new(3).expect("a histogram");
    for _ in 0..samples {
        let t = Instant::now();
        let msg = hub.candles().start("BACK", Interval::S1, 1000);
        let _ = h.record(t.elapsed().as_micros() as u64);
        assert!(msg.is_some_and(|m| m.len() > 100_000));
    }
    h
}

/// Times a cold backfill of 1,000 bars from a spawned `redis-server`: read, merged,
/// encoded, µs.
fn backfill_redis(samples: usize, out: &std::path::Path) -> anyhow::Result<Histogram<u64>> {
    let port = crate::spawn::free_port()?;
    let dir = out.join("redis");
    std::fs::create_dir_all(&dir)?;
    let mut child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("is redis-server installed? (Debian: apt-get install redis-server)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let r = rt.block_on(time_redis(samples, format!("redis://127.0.0.1:{port}")));
    let _ = child.kill();
    let _ = child.wait();
    r
}

async fn time_redis(samples: usize, url: String) -> anyhow::Result<Histogram<u64>> {
    let cfg = RedisConfig::single(&url);
    let mut feed = None;
    for _ in 0..100 {
        match RedisPublisher::connect(&cfg, "bench-candles").await {
            Ok(p) => {
                feed = Some(p);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let feed = feed.context("redis-server did not answer")?;
    let (_, ticks) = hub_with_bars();
    for t in ticks {
        feed.publish(t)?;
    }
    feed.close().await;
    let mut h = Histogram::<u64>::new(3)?;
    let sym = Symbol::from("BACK");
    let wants = [(sym.clone(), Interval::S1)];
    let hub = Arc::new(Hub::new([sym.clone()], 16));
    let bus = RedisBus::connect(cfg, hub, None).await?;
    for _ in 0..samples {
        // A node that never held the symbol's bars.
        let candles = Candles::new([sym.clone()], 1000);
        let t = Instant::now();
        let mut found = bus.bars(&wants, 1000).await?;
        let bars = found.pop().unwrap_or_default();
        anyhow::ensure!(bars.len() == 1000, "{} bars stored", bars.len());
        candles.load("BACK", Interval::S1, bars);
        let msg = candles.start("BACK", Interval::S1, 1000);
        let _ = h.record(t.elapsed().as_micros() as u64);
        anyhow::ensure!(msg.is_some_and(|m| m.len() > 100_000), "a full message");
    }
    Ok(h)
}
