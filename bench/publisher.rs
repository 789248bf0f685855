//! The open-loop publisher: tick `i` is due at `t0 + i / rate` and is stamped with that
//! intended time in `ts`, whenever it actually leaves. A publisher (or a server) that
//! stalls cannot hide latency: what it delays shows as latency, and how far the
//! publisher fell behind its schedule is reported beside it.
//!
//! Ticks go in rounds over the N symbols of the flat universe (tick `i` is the
//! `i mod N`-th symbol of round `i / N`, with seq `i / N + 1`; a round is 0 … N−1, or a
//! seeded permutation with `--order shuffled`), everything due at once in one batch: one `/v1/publish`
//! text frame holding an array, or one Redis pipeline of `XADD hist`, `SET last` and
//! `PUBLISH tick` per tick (PROTOCOL.md, "The bus between nodes").
//!
//! With [`Plan::book_levels`] the messages are order book messages instead (the `book`
//! scenario): seq 1 of each symbol a whole `book`, every later one a `book_update`
//! naming the one before it ([`crate::books::Model`]); into Redis as a feed publishes
//! books, `SET booksnap:{S}` (the whole book after the message) then `PUBLISH book:{S}`.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use fastwebsockets::{Frame, OpCode, Payload};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::common::{symbol_name, Order};

/// Where the ticks go.
#[derive(Clone, Debug)]
pub enum Sink {
    /// A node's (or the floor's) `/v1/publish`.
    Ws(String),
    /// Redis, following the contract's channels and keys.
    Redis {
        /// `redis://127.0.0.1:PORT`.
        url: String,
        /// Key prefix, e.g. `tickstream:`.
        prefix: String,
        /// Length of `hist:` streams; 0 publishes only (no `SET last`, no `XADD`).
        history: usize,
    },
}

/// What to publish.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Ticks per second over all symbols.
    pub rate: f64,
    /// Symbols of the universe.
    pub symbols: usize,
    /// Epoch named in every tick.
    pub epoch: String,
    /// First tick due at this time (ns since the Unix epoch).
    pub t0: u64,
    /// No tick due at or after this is published.
    pub end: u64,
    /// The recorded window, to count what was published inside it.
    pub record_from: u64,
    /// Skip this seq of symbol 0 (a gap injected on purpose).
    pub skip_seq: Option<u64>,
    /// Rounds published before this plan under the same epoch: its first tick of each
    /// symbol has seq `seq_base + 1` (a plan that continues another).
    pub seq_base: u64,
    /// Order of the symbols within each round of N ticks.
    pub order: Order,
    /// Publish order books of this many levels a side instead of ticks.
    pub book_levels: Option<usize>,
    /// Into Redis: a pipeline that fails (Redis restarting) drops its ticks, counted in
    /// [`Report::lost_to_outage`], and the publisher connects again, as a feed that
    /// rides out an outage does; without it a failure ends the run.
    pub ride_outages: bool,
}

/// What the publisher did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Ticks published.
    pub published: u64,
    /// Ticks whose intended time lies in the recorded window.
    pub in_window: u64,
    /// The same, per symbol.
    pub in_window_per_symbol: Vec<u64>,
    /// Batches (frames or pipelines).
    pub batches: u64,
    /// How late against schedule each tick left: p50, µs.
    pub behind_p50_us: f64,
    /// … p99, µs.
    pub behind_p99_us: f64,
    /// … max, µs.
    pub behind_max_us: f64,
    /// … max of the ticks due in each second of the recorded window, µs.
    pub behind_max_by_second_us: Vec<f64>,
    /// Ticks the server acknowledged (`/v1/publish`).
    pub accepted: u64,
    /// Ticks it refused.
    pub refused: u64,
    /// Ticks not published because Redis was away ([`Plan::ride_outages`]); their seqs
    /// are skipped, so subscribers see the jump.
    #[serde(skip_serializing_if = "is_zero")]
    pub lost_to_outage: u64,
    /// Times the publisher connected to Redis again after losing it.
    #[serde(skip_serializing_if = "is_zero")]
    pub reconnects: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn now_ns() -> u64 {
    tickstream::tick::now_ns()
}

/// Shortest time between two batches: at high rates everything due in this quantum
/// shares one frame (or pipeline), so the publisher never sends more than 10,000
/// frames/s (a node limits each publisher connection to 20,000 by default).
const QUANTUM_NS: u64 = 100_000;

struct Schedule {
    plan: Plan,
    next: u64,
    last_batch: u64,
    behind: Histogram<u64>,
    report: Report,
    rounds: Rounds,
    /// Each symbol's book, when books are published.
    books: Vec<crate::books::Model>,
    /// Whether each book message comes with the whole book after it (for `booksnap:`).
    snapshots: bool,
}

/// The symbol order of each round of N ticks.
struct Rounds {
    order: Order,
    rng: rand_chacha::ChaCha8Rng,
    /// The round `perm` belongs to.
    round: u64,
    perm: Vec<usize>,
}

/// Seed of the shuffled order: every target of a run gets the same sequence.
const ORDER_SEED: u64 = 0x5eed;

impl Rounds {
    fn new(order: Order, symbols: usize) -> Rounds {
        use rand::SeedableRng;
        let mut r = Rounds {
            order,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(ORDER_SEED),
            round: 0,
            perm: (0..symbols).collect(),
        };
        r.shuffle();
        r
    }

    fn shuffle(&mut self) {
        if self.order == Order::Shuffled {
            use rand::seq::SliceRandom;
            self.perm.shuffle(&mut self.rng);
        }
    }

    /// The symbol of tick `i` (rounds are asked for in order).
    fn symbol(&mut self, i: u64) -> usize {
        let n = self.perm.len() as u64;
        while self.round < i / n {
            self.round += 1;
            self.shuffle();
        }
        self.perm[(i % n) as usize]
    }
}

impl Schedule {
    fn new(plan: Plan) -> Schedule {
        let rounds = Rounds::new(plan.order, plan.symbols);
        let books = match plan.book_levels {
            Some(l) => vec![crate::books::Model::new(l); plan.symbols],
            None => Vec::new(),
        };
        Schedule {
            rounds,
            books,
            snapshots: false,
            report: Report {
                in_window_per_symbol: vec![0; plan.symbols],
                ..Report::default()
            },
            plan,
            next: 0,
            last_batch: 0,
            behind: crate::load::new_hist(),
        }
    }

    fn due_at(&self, i: u64) -> u64 {
        self.plan.t0 + (i as f64 * 1e9 / self.plan.rate) as u64
    }

    /// Waits for the next tick's time; `None` when the schedule is over. Returns the
    /// range of ticks due now, at most `max` of them.
    fn wait_due(&mut self, max: u64) -> Option<(u64, u64)> {
        let first = self.due_at(self.next);
        if first >= self.plan.end {
            return None;
        }
        let now = now_ns();
        let start = first.max(self.last_batch + QUANTUM_NS);
        if now < start {
            std::thread::sleep(Duration::from_nanos(start - now));
        }
        let now = now_ns();
        self.last_batch = now;
        let mut end = self.next + 1;
        while end - self.next < max {
            let t = self.due_at(end);
            if t > now || t >= self.plan.end {
                break;
            }
            end += 1;
        }
        let r = (self.next, end);
        self.next = end;
        Some(r)
    }

    /// Writes messages `a..b` (ticks, or book messages), one JSON object each, handing
    /// each to `each` with its symbol and seq (and the whole book after it, when
    /// [`Schedule::snapshots`] asks for it).
    fn ticks(&mut self, a: u64, b: u64, mut each: impl FnMut(usize, u64, &[u8], Option<&[u8]>)) {
        let n = self.plan.symbols as u64;
        let mut buf = Vec::with_capacity(256);
        let mut snap = Vec::new();
        for i in a..b {
            let sym = self.rounds.symbol(i);
            let mut seq = i / n + 1 + self.plan.seq_base;
            if let Some(skip) = self.plan.skip_seq {
                if sym == 0 && seq >= skip {
                    seq += 1;
                }
            }
            let ts = self.due_at(i);
            buf.clear();
            let whole = if self.books.is_empty() {
                write_tick(&mut buf, &symbol_name(sym), &self.plan.epoch, seq, ts);
                None
            } else {
                self.write_book(&mut buf, &mut snap, sym, seq, ts);
                self.snapshots.then_some(snap.as_slice())
            };
            self.report.published += 1;
            if ts >= self.plan.record_from {
                self.report.in_window += 1;
                self.report.in_window_per_symbol[sym] += 1;
            }
            each(sym, seq, &buf, whole);
        }
    }

    /// Book message `seq` of symbol `sym` into `out` (seq 1 the whole book, then
    /// updates), and the whole book after it into `snap` when snapshots are asked for.
    fn write_book(&mut self, out: &mut Vec<u8>, snap: &mut Vec<u8>, sym: usize, seq: u64, ts: u64) {
        use crate::books::{write_json, Head};
        let name = symbol_name(sym);
        let model = &mut self.books[sym];
        let mut head = Head {
            symbol: &name,
            epoch: &self.plan.epoch,
            seq,
            prev_seq: (seq > 1).then(|| seq - 1),
            ts,
        };
        let (bids, asks) = match head.prev_seq {
            None => model.whole(),
            Some(_) => model.update(seq - 1),
        };
        write_json(out, &head, &bids, &asks);
        if self.snapshots {
            snap.clear();
            head.prev_seq = None;
            let (bids, asks) = model.whole();
            write_json(snap, &head, &bids, &asks);
        }
    }

    /// Records how late ticks `a..b` leave, now.
    fn sent(&mut self, a: u64, b: u64) {
        self.report.batches += 1;
        let now = now_ns();
        let due = self.due_at(a);
        let late = now.saturating_sub(due).max(1);
        let _ = self.behind.record_n(late, b - a);
        if due >= self.plan.record_from {
            let s = crate::load::second_of(self.plan.record_from, due);
            let v = &mut self.report.behind_max_by_second_us;
            if v.len() <= s {
                v.resize(s + 1, 0.0);
            }
            v[s] = v[s].max(late as f64 / 1000.0);
        }
    }

    fn finish(mut self) -> Report {
        let us = |v: u64| v as f64 / 1000.0;
        self.report.behind_p50_us = us(self.behind.value_at_quantile(0.5));
        self.report.behind_p99_us = us(self.behind.value_at_quantile(0.99));
        self.report.behind_max_us = us(self.behind.max());
        self.report
    }
}

/// One tick of the flat universe: prices that move with `seq`, stamped `ts`.
fn write_tick(buf: &mut Vec<u8>, symbol: &str, epoch: &str, seq: u64, ts: u64) {
    let cents = 10_000 + (seq % 200) as i64 - 100;
    let _ = write!(
        buf,
        r#"{{"type":"tick","symbol":"{symbol}","epoch":"{epoch}","seq":{seq},"ts":{ts},"bid":{}.{:02},"ask":{}.{:02},"bid_size":100,"ask_size":200,"last":{}.{:02},"last_size":10,"volume":{}}}"#,
        cents / 100,
        cents % 100,
        (cents + 1) / 100,
        (cents + 1) % 100,
        cents / 100,
        cents % 100,
        seq * 10,
    );
}

/// Starts the publisher on its own thread.
pub fn start(plan: Plan, sink: Sink) -> std::thread::JoinHandle<anyhow::Result<Report>> {
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || match sink {
            Sink::Redis {
                url,
                prefix,
                history,
            } => run_redis(plan, &url, &prefix, history),
            Sink::Ws(url) => run_ws(plan, &url),
        })
        .expect("spawning the publisher thread")
}

fn run_redis(plan: Plan, url: &str, prefix: &str, history: usize) -> anyhow::Result<Report> {
    let client = redis::Client::open(url).with_context(|| format!("redis url {url}"))?;
    let mut con = Some(
        client
            .get_connection()
            .with_context(|| format!("connecting to {url}"))?,
    );
    let books = plan.book_levels.is_some();
    let ride = plan.ride_outages;
    // A new epoch: the old history (or books) of these symbols goes (PROTOCOL.md: a
    // publisher starting a new epoch deletes it first).
    if history > 0 {
        let key = if books { "booksnap" } else { "hist" };
        let mut p = redis::pipe();
        for s in 0..plan.symbols {
            p.del(format!("{prefix}{key}:{{{}}}", symbol_name(s)))
                .ignore();
        }
        p.query::<()>(con.as_mut().expect("connected"))
            .context("deleting old history")?;
    }
    let mut sched = Schedule::new(plan);
    sched.snapshots = books && history > 0;
    let mut next_try = Instant::now();
    while let Some((a, b)) = sched.wait_due(5_000) {
        let mut p = redis::pipe();
        sched.ticks(a, b, |sym, seq, json, whole| {
            redis_commands(&mut p, prefix, history, books, sym, seq, json, whole);
        });
        sched.sent(a, b);
        if con.is_none() && Instant::now() >= next_try {
            next_try = Instant::now() + Duration::from_millis(50);
            con = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .ok();
            sched.report.reconnects += u64::from(con.is_some());
        }
        let Some(c) = con.as_mut() else {
            sched.report.lost_to_outage += b - a;
            continue;
        };
        match p.query::<()>(c) {
            Ok(()) => {}
            Err(_) if ride => {
                sched.report.lost_to_outage += b - a;
                con = None;
            }
            Err(e) => return Err(e).context("publishing into Redis"),
        }
    }
    Ok(sched.finish())
}

/// The commands of one message into `p`: a book's `SET booksnap` (when the whole book
/// is kept) and `PUBLISH book`, or a tick's `XADD hist` and `SET last` (when history
/// is kept) and `PUBLISH tick`.
#[allow(clippy::too_many_arguments)]
fn redis_commands(
    p: &mut redis::Pipeline,
    prefix: &str,
    history: usize,
    books: bool,
    sym: usize,
    seq: u64,
    json: &[u8],
    whole: Option<&[u8]>,
) {
    let name = symbol_name(sym);
    if books {
        if let Some(w) = whole {
            p.set(format!("{prefix}booksnap:{{{name}}}"), w).ignore();
        }
        p.publish(format!("{prefix}book:{{{name}}}"), json).ignore();
        return;
    }
    if history > 0 {
        p.cmd("XADD")
            .arg(format!("{prefix}hist:{{{name}}}"))
            .arg("MAXLEN")
            .arg("~")
            .arg(history)
            .arg(format!("{seq}-0"))
            .arg("t")
            .arg(json)
            .ignore();
        p.set(format!("{prefix}last:{{{name}}}"), json).ignore();
    }
    p.publish(format!("{prefix}tick:{{{name}}}"), json).ignore();
}

type Io = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

fn run_ws(plan: Plan, url: &str) -> anyhow::Result<Report> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let ws = rt
        .block_on(tickstream::client::connect(url, None))
        .map_err(|e| anyhow!("publisher: {e}"))?;
    let (rd, mut wr) = ws.split(tokio::io::split);
    let (acks_tx, acks_rx) = std::sync::mpsc::channel::<(u64, u64)>();
    let reader = rt.spawn(read_acks(rd, acks_tx));
    let mut sched = Schedule::new(plan);
    send_all(&rt, &mut wr, &mut sched, url)?;
    let mut report = sched.finish();
    (report.accepted, report.refused) = last_ack(&acks_rx, report.published);
    let _ = rt.block_on(wr.write_frame(Frame::close(1000, b"")));
    reader.abort();
    if report.refused > 0 {
        eprintln!(
            "tickstream-bench: the server refused {} of {} published ticks",
            report.refused, report.published
        );
    }
    if report.accepted + report.refused < report.published {
        bail!(
            "{url} acknowledged only {} of {} ticks",
            report.accepted + report.refused,
            report.published
        );
    }
    Ok(report)
}

/// Reads the node's replies, one `published` per frame (after an `error` per refused
/// tick), and sends the totals accepted and refused so far after each.
async fn read_acks(
    mut rd: fastwebsockets::WebSocketRead<tokio::io::ReadHalf<Io>>,
    acks: std::sync::mpsc::Sender<(u64, u64)>,
) {
    let (mut accepted, mut refused) = (0u64, 0u64);
    loop {
        let f = rd
            .read_frame::<_, fastwebsockets::WebSocketError>(&mut |_| async { Ok(()) })
            .await;
        let Ok(f) = f else { break };
        match f.opcode {
            OpCode::Text => {
                let v: serde_json::Value = serde_json::from_slice(&f.payload).unwrap_or_default();
                for m in v.as_array().into_iter().flatten() {
                    if m["type"] == "published" {
                        accepted += m["accepted"].as_u64().unwrap_or(0);
                        refused += m["refused"].as_u64().unwrap_or(0);
                        let _ = acks.send((accepted, refused));
                    }
                }
            }
            OpCode::Close => break,
            _ => {}
        }
    }
}

/// Sends every tick of the schedule as it falls due, everything due in one text frame.
fn send_all(
    rt: &tokio::runtime::Runtime,
    wr: &mut fastwebsockets::WebSocketWrite<tokio::io::WriteHalf<Io>>,
    sched: &mut Schedule,
    url: &str,
) -> anyhow::Result<()> {
    let mut frame = Vec::with_capacity(64 * 1024);
    while let Some((a, b)) = sched.wait_due(2_000) {
        frame.clear();
        frame.push(b'[');
        sched.ticks(a, b, |_, _, json, _| {
            if frame.len() > 1 {
                frame.push(b',');
            }
            frame.extend_from_slice(json);
        });
        frame.push(b']');
        let payload = Payload::Owned(std::mem::take(&mut frame));
        rt.block_on(wr.write_frame(Frame::text(payload)))
            .map_err(|e| anyhow!("publishing to {url}: {e}"))?;
        sched.sent(a, b);
        frame = Vec::with_capacity(64 * 1024);
    }
    Ok(())
}

/// The last totals (accepted, refused) acknowledged, once they cover `published`
/// ticks or after 10 s.
fn last_ack(acks: &std::sync::mpsc::Receiver<(u64, u64)>, published: u64) -> (u64, u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = (0, 0);
    while last.0 + last.1 < published {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match acks.recv_timeout(left) {
            Ok(v) => last = v,
            Err(_) => break,
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_rounds(order: Order, n: usize, rounds: u64) -> Vec<Vec<usize>> {
        let mut r = Rounds::new(order, n);
        (0..rounds)
            .map(|k| (0..n as u64).map(|j| r.symbol(k * n as u64 + j)).collect())
            .collect()
    }

    #[test]
    fn every_round_holds_each_symbol_once_in_either_order() {
        for order in [Order::RoundRobin, Order::Shuffled] {
            for round in first_rounds(order, 100, 5) {
                let mut sorted = round.clone();
                sorted.sort();
                assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "{order:?}");
            }
        }
        assert!(first_rounds(Order::RoundRobin, 100, 3)
            .iter()
            .all(|r| *r == (0..100).collect::<Vec<_>>()));
    }

    #[test]
    fn the_shuffled_order_changes_each_round_and_is_the_same_for_every_target() {
        let a = first_rounds(Order::Shuffled, 100, 4);
        assert_eq!(a, first_rounds(Order::Shuffled, 100, 4));
        assert_ne!(a[0], (0..100).collect::<Vec<_>>());
        assert_ne!(a[0], a[1]);
        // Neighbouring ticks rarely share a group of ten neighbouring symbols (which
        // reach the same connections of a 100×10/100 shape); round-robin mostly does.
        let same_group = |r: &Vec<usize>| r.windows(2).filter(|w| w[0] / 10 == w[1] / 10).count();
        assert!(same_group(&a[0]) < 30, "{}", same_group(&a[0]));
        assert_eq!(same_group(&(0..100).collect()), 90);
    }
}
