//! The synthetic feed: a seeded, deterministic random walk per symbol with realistic
//! quotes, sizes and volume, paced to a configured rate on its own thread.
//!
//! # Model
//!
//! Each tick picks one symbol at random, weighted by its `activity` (an alias table,
//! O(1) per pick), and advances that symbol's log-price by one normal step.
//!
//! **Time step.** The generator's simulated clock assumes the whole universe ticks
//! [`NOMINAL_RATE`] times per second, so symbol *i* ticks on average every
//! `dt_i = total_activity / (NOMINAL_RATE * activity_i)` seconds, and one step has
//! standard deviation `volatility_i * sqrt(dt_i / year_i)`, where `year_i` is the trading
//! time in a year for its class (equity 252 days × 6.5 h, FX 260 × 24 h, crypto
//! 365 × 24 h). At the default rate of 1,000 ticks/s simulated and wall-clock time agree
//! and the annualised volatility of every symbol matches its universe entry; at another
//! rate the market simply runs faster or slower. The step does not depend on `ts`, so a
//! seed always yields the same sequence.
//!
//! **Quotes.** Prices are kept as whole ticks (see [`AssetClass::tick_size`]) and
//! converted to `f64` by dividing by a power of ten, so they print cleanly
//! (`189.1`, never `189.10000000000002`). The spread is a relative width that narrows
//! with activity (about 0.3 bp for the hottest equities up to about 6 bp for the quiet
//! tail; tighter for FX, wider for crypto), jittered per tick and occasionally widened,
//! and never less than one tick. The walk is reflected at 50 ticks so prices stay
//! positive.
//!
//! **Trades.** Every tick carries a trade at the bid, the ask or in between; `volume`
//! accumulates its size. Sizes are whole units: equities in round lots of 100 (trades
//! also in odd lots), FX in multiples of 100,000, crypto in whole coins scaled to a
//! notional.
//!
//! **Books.** Each symbol keeps an L2 book ([`ladder`]): the walk's bid and ask set its
//! touch, a few levels near it change with every tick, and the quote's `bid`, `ask`,
//! `bid_size` and `ask_size` are the book's best levels after the tick. A generator
//! made [`Generator::with_books`] also hands out the book's messages: a `book` per
//! symbol first, then a `book_update` per tick with the levels it changed
//! ([`Generator::take_books`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

mod ladder;

use super::universe::{AssetClass, Instrument, Universe};
use super::Sink;
use crate::book::{BookMsg, Levels, Side};
use crate::tick::{now_ns, Symbol, Tick};
use ladder::{Ladder, Shape};

pub use ladder::{LEVELS as BOOK_LEVELS, MAX_LEVELS as BOOK_MAX_LEVELS};

/// Simulated ticks per second of the whole universe that per-tick time steps assume.
pub const NOMINAL_RATE: f64 = 1000.0;

/// Name of the thread [`spawn`] starts.
pub const THREAD_NAME: &str = "feed-synth";

/// How long the pacing loop sleeps at most between checks of `stop`.
const STEP: Duration = Duration::from_millis(20);

/// Default of [`SynthConfig::batch`].
pub const DEFAULT_BATCH: Duration = Duration::from_micros(500);

/// Ticks emitted back to back before `stop` and the clock are checked again.
const MAX_BURST: u64 = 4096;

/// How far behind schedule (in seconds of ticks) the feed may fall before it gives up
/// on catching up, e.g. after the receiver stalled.
const MAX_LAG_SECS: f64 = 1.0;

/// Trading seconds in a year: equities 252 days of 6.5 hours.
const EQUITY_YEAR_SECS: f64 = 252.0 * 6.5 * 3600.0;
/// Trading seconds in a year: FX 260 days of 24 hours.
const FX_YEAR_SECS: f64 = 260.0 * 24.0 * 3600.0;
/// Trading seconds in a year: crypto never closes.
const CRYPTO_YEAR_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// The walk is reflected at this many ticks so a price never reaches zero.
const FLOOR_TICKS: f64 = 50.0;

/// Settings of the synthetic feed.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    /// Total ticks per second over the whole universe.
    pub rate: f64,
    /// Seed of the random stream; the same seed gives the same ticks.
    pub seed: u64,
    /// Stop after this long; `None` runs until stopped.
    pub duration: Option<Duration>,
    /// Shortest time between two batches: everything due within it is handed over at
    /// once, so that the hub fans it out and wakes each subscriber once for all of it
    /// (ticks are still stamped when produced). Zero hands over each tick when it is
    /// due. Default: [`DEFAULT_BATCH`] (500 µs).
    pub batch: Duration,
    /// Hand out the books' messages too (see [`Generator::with_books`]); the books are
    /// kept either way, since the quotes are read off them. Default: false.
    pub books: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            rate: NOMINAL_RATE,
            seed: 1,
            duration: None,
            batch: DEFAULT_BATCH,
            books: false,
        }
    }
}

/// Per-symbol state of the walk.
#[derive(Clone, Debug)]
struct State {
    symbol: Symbol,
    class: AssetClass,
    /// Ticks per unit of price: 100, 1,000 or 100,000.
    scale: f64,
    /// Natural log of the (unrounded) mid price.
    log_price: f64,
    /// Reflection floor of `log_price`.
    floor_log: f64,
    /// Standard deviation of one step of `log_price`.
    sigma: f64,
    /// Typical spread as a fraction of the price.
    spread: f64,
    /// 0 for the least active symbol of the universe, 1 for the most active.
    liquidity: f64,
    /// Mean crypto quote size in coins.
    coin_units: f64,
    seq: u64,
    volume: u64,
    /// How its book's levels are drawn.
    shape: Shape,
    /// Its book, and the seq of its last book message.
    ladder: Ladder,
    book_seq: u64,
}

impl State {
    fn new(inst: &Instrument, total_activity: f64, liquidity: f64) -> State {
        let decimals = inst.price_decimals();
        let scale = 10f64.powi(decimals as i32);
        let dt = total_activity / (NOMINAL_RATE * inst.activity);
        let year = match inst.class {
            AssetClass::Equity => EQUITY_YEAR_SECS,
            AssetClass::Fx => FX_YEAR_SECS,
            AssetClass::Crypto => CRYPTO_YEAR_SECS,
        };
        let illiquid = (1.0 - liquidity).powi(2);
        let spread_bp = match inst.class {
            AssetClass::Equity => 0.3 + 6.0 * illiquid,
            AssetClass::Fx => 0.1 + 1.5 * illiquid,
            AssetClass::Crypto => 0.3 + 8.0 * illiquid,
        };
        let floor_log = (FLOOR_TICKS / scale).ln();
        let shape = match inst.class {
            AssetClass::Equity => Shape {
                lot: 100,
                lots: 2.0 + 18.0 * liquidity,
            },
            AssetClass::Fx => Shape {
                lot: 100_000,
                lots: 5.0 + 45.0 * liquidity,
            },
            AssetClass::Crypto => Shape {
                lot: 1,
                lots: ((20_000.0 + 480_000.0 * liquidity) / inst.price).max(1.0),
            },
        };
        State {
            symbol: inst.symbol.clone(),
            class: inst.class,
            scale,
            log_price: inst.price.ln().max(floor_log),
            floor_log,
            sigma: inst.volatility * (dt / year).sqrt(),
            spread: spread_bp * 1e-4,
            liquidity,
            coin_units: ((20_000.0 + 480_000.0 * liquidity) / inst.price).max(1.0),
            seq: 0,
            volume: 0,
            shape,
            ladder: Ladder::default(),
            book_seq: 0,
        }
    }

    /// The bid and ask, in ticks, of a quote around the current mid `width` (relative)
    /// wide: at least a tick, at most a twentieth of the price.
    fn quote(&self, width: f64) -> (i64, i64) {
        let mid = self.log_price.exp();
        let mid_ticks = (mid * self.scale).round() as i64;
        let spread = ((mid * width * self.scale).round() as i64).clamp(1, (mid_ticks / 20).max(1));
        let bid = (mid_ticks - spread / 2).max(1);
        (bid, bid + spread)
    }

    /// Its book as a whole-book message of `seq`, stamped `ts`.
    fn book_msg(&self, epoch: &Arc<str>, ts: u64) -> BookMsg {
        let l = &self.ladder.levels;
        BookMsg {
            symbol: self.symbol.clone(),
            epoch: epoch.clone(),
            seq: self.book_seq,
            prev_seq: None,
            ts,
            bids: l.side(Side::Bid).to_vec(),
            asks: l.side(Side::Ask).to_vec(),
            checksum: None,
        }
    }

    fn price(&self, ticks: i64) -> f64 {
        // Both operands are exact integers, so the quotient is the double nearest to the
        // decimal price and serializes in its shortest form.
        ticks as f64 / self.scale
    }
}

/// Walker's alias table: O(1) weighted choice of an index.
#[derive(Clone, Debug)]
struct AliasTable {
    prob: Vec<f64>,
    alias: Vec<usize>,
}

impl AliasTable {
    fn new(weights: &[f64]) -> AliasTable {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut prob = vec![1.0; n];
        let mut alias: Vec<usize> = (0..n).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            prob[s] = scaled[s];
            alias[s] = l;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left in either list has weight 1 up to rounding error and keeps
        // `prob = 1`, pointing at itself.
        AliasTable { prob, alias }
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> usize {
        let i = rng.random_range(0..self.prob.len());
        if rng.random::<f64>() < self.prob[i] {
            i
        } else {
            self.alias[i]
        }
    }
}

/// A seeded, deterministic source of synthetic ticks over a universe.
#[derive(Clone, Debug)]
pub struct Generator {
    states: Vec<State>,
    table: AliasTable,
    rng: ChaCha8Rng,
    epoch: Arc<str>,
    /// The book messages made since the last [`Generator::take_books`], when they are
    /// handed out.
    books: Option<Vec<BookMsg>>,
}

impl Generator {
    /// A generator over `universe` whose random stream is fixed by `seed`; every tick
    /// carries `epoch`, and `seq` starts at 1 for each symbol.
    pub fn new(universe: &Universe, seed: u64, epoch: Arc<str>) -> Generator {
        let instruments = universe.instruments();
        let weights: Vec<f64> = instruments.iter().map(|i| i.activity).collect();
        let total: f64 = weights.iter().sum();
        let lo = weights.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = weights.iter().copied().fold(0.0, f64::max);
        let span = (hi / lo).ln();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let states = instruments
            .iter()
            .map(|inst| {
                let liquidity = if span > 0.0 {
                    (inst.activity / lo).ln() / span
                } else {
                    1.0
                };
                let mut st = State::new(inst, total, liquidity);
                let (bid, ask) = st.quote(st.spread);
                st.ladder = Ladder::new(bid as u64, ask as u64, st.shape, &mut rng);
                st.book_seq = 1;
                st
            })
            .collect();
        Generator {
            states,
            table: AliasTable::new(&weights),
            rng,
            epoch,
            books: None,
        }
    }

    /// This generator handing out its books' messages: first a `book` of every symbol
    /// (seq 1), then a `book_update` per tick ([`Generator::take_books`]).
    pub fn with_books(mut self) -> Generator {
        let ts = now_ns();
        let epoch = self.epoch.clone();
        self.books = Some(
            self.states
                .iter()
                .map(|st| st.book_msg(&epoch, ts))
                .collect(),
        );
        self
    }

    /// The book messages made since the last call, in order (none unless
    /// [`Generator::with_books`]).
    pub fn take_books(&mut self) -> Vec<BookMsg> {
        match &mut self.books {
            Some(b) => std::mem::take(b),
            None => Vec::new(),
        }
    }

    /// The current book of `symbol` and the seq of its last message.
    pub fn book(&self, symbol: &str) -> Option<(u64, &Levels)> {
        let st = self.states.iter().find(|s| &*s.symbol == symbol)?;
        Some((st.book_seq, &st.ladder.levels))
    }

    /// The epoch every tick of this generator carries.
    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// Produces the next `n` ticks, each stamped with [`now_ns`] as it is made.
    pub fn batch(&mut self, n: u64) -> Vec<Tick> {
        (0..n).map(|_| self.next_tick(now_ns())).collect()
    }

    /// Produces the next tick, stamped with `ts` (which does not affect the sequence).
    pub fn next_tick(&mut self, ts: u64) -> Tick {
        let i = self.table.sample(&mut self.rng);
        let rng = &mut self.rng;
        let st = &mut self.states[i];

        let z: f64 = StandardNormal.sample(rng);
        st.log_price += st.sigma * z;
        if st.log_price < st.floor_log {
            st.log_price = 2.0 * st.floor_log - st.log_price;
        }
        let mut width = st.spread * rng.random_range(0.6..1.4);
        if rng.random::<f64>() < 0.03 {
            width *= rng.random_range(2.0..4.0);
        }
        let (bid, ask) = st.quote(width);
        let (bids, asks) = st.ladder.step(bid as u64, ask as u64, st.shape, rng);
        st.book_seq += 1;
        if let Some(books) = &mut self.books {
            books.push(BookMsg {
                symbol: st.symbol.clone(),
                epoch: self.epoch.clone(),
                seq: st.book_seq,
                prev_seq: Some(st.book_seq - 1),
                ts,
                bids,
                asks,
                checksum: None,
            });
        }
        let size_at = |side| st.ladder.levels.best(side).map_or(0, |l| l.size);
        let (bid_size, ask_size) = (size_at(Side::Bid), size_at(Side::Ask));

        let side: f64 = rng.random();
        let last = if side < 0.45 {
            bid
        } else if side < 0.9 {
            ask
        } else {
            rng.random_range(bid..=ask)
        };

        let l = st.liquidity;
        let last_size = match st.class {
            AssetClass::Equity => {
                if rng.random::<f64>() < 0.35 {
                    rng.random_range(1..=99)
                } else {
                    100 * (1 + geometric(rng, 1.0 + 4.0 * l))
                }
            }
            AssetClass::Fx => 100_000 * (1 + geometric(rng, 2.0 + 10.0 * l)),
            AssetClass::Crypto => 1 + geometric(rng, st.coin_units / 4.0),
        };

        st.seq += 1;
        st.volume += last_size;
        Tick {
            symbol: st.symbol.clone(),
            epoch: self.epoch.clone(),
            seq: st.seq,
            ts,
            bid: st.price(bid),
            ask: st.price(ask),
            bid_size,
            ask_size,
            last: st.price(last),
            last_size,
            volume: st.volume,
            src_ts: None,
        }
    }
}

/// A draw from a geometric-like distribution on 0, 1, 2, … with the given mean.
fn geometric(rng: &mut ChaCha8Rng, mean: f64) -> u64 {
    // 1 - u lies in (0, 1], so the logarithm is finite.
    let u: f64 = rng.random();
    (-mean * (1.0 - u).ln()).floor().min(1e6) as u64
}

/// Runs the synthetic feed on its own OS thread named `feed-synth`.
///
/// Ticks are paced to `config.rate` per second, stamped with [`now_ns`] when produced,
/// and handed to `sink` in batches: everything due at once, at most one batch per
/// [`SynthConfig::batch`] (in bursts of at most 4,096 at high rates, keeping the
/// long-run rate exact); a full bounded channel blocks only this thread. The thread
/// ends when `stop` is set, when `config.duration` has elapsed (having sent
/// `rate × duration` ticks), or when the receiver is dropped, and returns the number of
/// ticks sent. A rate that is zero, negative or NaN sends nothing; an infinite rate
/// sends as fast as possible. If the receiver stalls for more than a second of ticks,
/// the missed ticks are skipped rather than sent in one flood.
///
/// # Panics
///
/// If the operating system cannot create the thread.
pub fn spawn<S: Sink>(
    universe: Universe,
    config: SynthConfig,
    epoch: Arc<str>,
    sink: S,
    stop: Arc<AtomicBool>,
) -> JoinHandle<u64> {
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            let sent = run(&universe, &config, epoch, &sink, &stop);
            tracing::info!(sent, "synthetic feed stopped");
            sent
        })
        .expect("failed to spawn the feed-synth thread")
}

/// The body of the `feed-synth` thread.
fn run(
    universe: &Universe,
    config: &SynthConfig,
    epoch: Arc<str>,
    sink: &impl Sink,
    stop: &AtomicBool,
) -> u64 {
    let mut generator = Generator::new(universe, config.seed, epoch);
    let mut pacer = Pacer::new(config);
    pacer.started(universe, &generator);
    loop {
        if stop.load(Ordering::Relaxed) {
            return pacer.sent;
        }
        match pacer.step() {
            Step::Emit(n) => {
                let batch = generator.batch(n);
                let taken = sink.send_batch(batch, stop) as u64;
                pacer.sent += taken;
                if taken < n {
                    return pacer.sent;
                }
            }
            Step::Wait(wait) => std::thread::sleep(wait),
            Step::Done => return pacer.sent,
        }
    }
}

/// Runs the synthetic feed as a task on the node's runtime, handing each batch straight
/// to `publish` (which must not block) with the book messages made for it (none unless
/// `config.books`: a `book` per symbol with the first batch, then one update per tick). Paced like [`spawn`], but it sleeps on a
/// timer with microsecond resolution registered with the runtime, so a batch costs no
/// thread wake-up and no hand-over between threads: the runtime's own thread wakes for
/// it, and the subscribers it wakes run on that thread next. A batch whose fan-out is
/// still being written when the next is due simply waits behind it, so under load
/// batches grow instead of queueing. Ends when the schedule does (`config.duration`)
/// and returns the number of ticks published; abort the task to stop it sooner.
pub async fn run_on_runtime(
    universe: Universe,
    config: SynthConfig,
    epoch: Arc<str>,
    mut publish: impl FnMut(Vec<Tick>, Vec<BookMsg>),
) -> std::io::Result<u64> {
    let mut generator = Generator::new(&universe, config.seed, epoch);
    if config.books {
        generator = generator.with_books();
    }
    let mut pacer = Pacer::new(&config);
    let mut timer = FineTimer::new()?;
    pacer.started(&universe, &generator);
    loop {
        match pacer.step() {
            Step::Emit(n) => {
                let ticks = generator.batch(n);
                publish(ticks, generator.take_books());
                pacer.sent += n;
                // The next burst follows at once: it must not hold the runtime's thread.
                // Otherwise the timer's wait lets the woken subscribers run.
                if pacer.more_due_now() {
                    tokio::task::yield_now().await;
                }
            }
            Step::Wait(wait) => timer.sleep(wait).await?,
            Step::Done => return Ok(pacer.sent),
        }
    }
}

/// A one-shot timer with the kernel's resolution (a `timerfd`), awaited on the runtime;
/// tokio's own timers round up to whole milliseconds, longer than a batch.
struct FineTimer {
    fd: tokio::io::unix::AsyncFd<OwnedTimer>,
}

/// The timer's descriptor, owned: it stays open, and is the same descriptor, for as long
/// as the runtime has it registered (what `AsyncFd` requires of its inner value).
struct OwnedTimer(nix::sys::timerfd::TimerFd);

impl std::os::fd::AsRawFd for OwnedTimer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl FineTimer {
    fn new() -> std::io::Result<FineTimer> {
        use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // Deprecated only for inner values that might close or swap their descriptor
        // while registered; `OwnedTimer` owns its descriptor and never does.
        #[allow(deprecated)]
        let fd =
            tokio::io::unix::AsyncFd::with_interest(OwnedTimer(fd), tokio::io::Interest::READABLE)?;
        Ok(FineTimer { fd })
    }

    /// Waits `wait` (at least a microsecond).
    async fn sleep(&mut self, wait: Duration) -> std::io::Result<()> {
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        let wait = wait.max(Duration::from_micros(1));
        self.fd.get_ref().0.set(
            Expiration::OneShot(TimeSpec::from_duration(wait)),
            TimerSetTimeFlags::empty(),
        )?;
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| fd.get_ref().0.wait().map_err(std::io::Error::from)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// What the feed's schedule asks for next.
#[derive(Debug, PartialEq)]
enum Step {
    /// Make this many ticks now and hand them over as one batch.
    Emit(u64),
    /// Nothing is due before this much time has passed.
    Wait(Duration),
    /// The schedule is over.
    Done,
}

/// The feed's schedule: ticks paced to the rate, everything due handed over at once and
/// at most one batch per [`SynthConfig::batch`], in bursts of at most [`MAX_BURST`].
struct Pacer {
    rate: f64,
    seed: u64,
    unlimited: bool,
    idle: bool,
    batch: Duration,
    duration: Option<Duration>,
    /// Ticks owed by the end of `duration`.
    limit: Option<u64>,
    max_lag: u64,
    start: Instant,
    /// Schedule slots used so far: ticks made plus ticks skipped after a stall.
    slots: u64,
    /// Ticks the receiver took.
    sent: u64,
    /// When the last batch was made.
    batch_at: Duration,
    /// The last batch stopped at MAX_BURST with more due.
    cut_short: bool,
}

impl Pacer {
    fn new(config: &SynthConfig) -> Pacer {
        let rate = config.rate;
        let unlimited = rate == f64::INFINITY;
        let idle = rate.is_nan() || rate <= 0.0;
        let limit = config.duration.filter(|_| !unlimited).map(|d| {
            if idle {
                0
            } else {
                (d.as_secs_f64() * rate) as u64
            }
        });
        let max_lag = if unlimited || idle {
            u64::MAX
        } else {
            ((rate * MAX_LAG_SECS) as u64).max(MAX_BURST)
        };
        Pacer {
            rate,
            seed: config.seed,
            unlimited,
            idle,
            batch: config.batch,
            duration: config.duration,
            limit,
            max_lag,
            start: Instant::now(),
            slots: 0,
            sent: 0,
            batch_at: Duration::ZERO,
            cut_short: false,
        }
    }

    /// Logs the start and sets the schedule's time zero to now.
    fn started(&mut self, universe: &Universe, generator: &Generator) {
        if self.idle {
            tracing::warn!(
                rate = self.rate,
                "synthetic feed rate is not positive; sending nothing"
            );
        }
        tracing::info!(
            rate = self.rate,
            seed = self.seed,
            symbols = universe.len(),
            epoch = %generator.epoch(),
            batch_us = self.batch.as_micros() as u64,
            "synthetic feed started"
        );
        self.start = Instant::now();
    }

    /// Whether the next step makes a batch at once (an unlimited rate, or the rest of
    /// a burst cut short), without waiting.
    fn more_due_now(&self) -> bool {
        self.unlimited || self.cut_short
    }

    /// What to do now.
    fn step(&mut self) -> Step {
        self.step_at(self.start.elapsed())
    }

    /// What to do `elapsed` after the start.
    fn step_at(&mut self, elapsed: Duration) -> Step {
        let finished = self.duration.is_some_and(|d| elapsed >= d);
        if self.unlimited {
            if finished {
                return Step::Done;
            }
            self.slots += MAX_BURST;
            return Step::Emit(MAX_BURST);
        }
        let mut due = if self.idle {
            0
        } else {
            (elapsed.as_secs_f64() * self.rate) as u64
        };
        if let Some(limit) = self.limit {
            due = due.min(limit);
        }
        if due.saturating_sub(self.slots) > self.max_lag {
            let skip = due - self.max_lag - self.slots;
            tracing::debug!(skip, "synthetic feed fell behind; skipping ticks");
            self.slots += skip;
        }
        // A batch is made at most once per interval, unless the last one was a burst cut
        // short at MAX_BURST (the rest of what was due follows at once) or the schedule
        // is over (what it owes goes now).
        let interval_over =
            self.slots == 0 || self.cut_short || finished || elapsed >= self.batch_at + self.batch;
        let burst_end = due.min(self.slots + MAX_BURST);
        if self.slots < burst_end && interval_over {
            if !self.cut_short {
                self.batch_at = elapsed;
            }
            let n = burst_end - self.slots;
            self.slots = burst_end;
            self.cut_short = self.slots < due;
            return Step::Emit(n);
        }
        if finished {
            return Step::Done;
        }
        // Wait until the next tick is due and a batch interval has passed since the
        // last batch, at most STEP (so a stop is seen soon).
        let mut wait = STEP;
        if !self.idle {
            // At a tiny rate the next tick lies past what a Duration holds: never.
            let next = Duration::try_from_secs_f64((self.slots + 1) as f64 / self.rate)
                .unwrap_or(Duration::MAX)
                .max(self.batch_at + self.batch);
            wait = wait.min(next.saturating_sub(elapsed));
        }
        if let Some(d) = self.duration {
            wait = wait.min(d.saturating_sub(elapsed));
        }
        Step::Wait(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn bundled_generator(seed: u64) -> Generator {
        Generator::new(&Universe::bundled(), seed, "test01".into())
    }

    /// The parts of a tick the seed decides (everything but `ts`).
    fn key(t: &Tick) -> (Symbol, u64, [u64; 3], [u64; 4]) {
        (
            t.symbol.clone(),
            t.seq,
            [t.bid.to_bits(), t.ask.to_bits(), t.last.to_bits()],
            [t.bid_size, t.ask_size, t.last_size, t.volume],
        )
    }

    #[test]
    fn same_seed_same_ticks_regardless_of_ts() {
        let mut a = bundled_generator(42);
        let mut b = bundled_generator(42);
        let mut c = bundled_generator(43);
        let mut differs = 0;
        for n in 0..10_000u64 {
            let ta = a.next_tick(n);
            let tb = b.next_tick(now_ns() + n * 7919);
            let tc = c.next_tick(n);
            assert_eq!(key(&ta), key(&tb), "tick {n}");
            assert_eq!(ta.ts, n);
            if key(&ta) != key(&tc) {
                differs += 1;
            }
        }
        assert!(
            differs > 9_000,
            "seeds 42 and 43 agree on {} ticks",
            10_000 - differs
        );
    }

    #[test]
    fn quotes_are_sane_and_on_tick() {
        let universe = Universe::bundled();
        let mut g = Generator::new(&universe, 1, "e".into());
        let mut json = Vec::new();
        for _ in 0..100_000 {
            let t = g.next_tick(0);
            assert!(t.bid > 0.0 && t.ask > 0.0, "{t:?}");
            assert!(t.bid < t.ask, "{t:?}");
            assert!(t.bid <= t.last && t.last <= t.ask, "{t:?}");
            assert!(t.bid_size > 0 && t.ask_size > 0 && t.last_size > 0, "{t:?}");
            assert_eq!(t.src_ts, None);
            assert_eq!(&*t.epoch, "e");
            let inst = universe.get(&t.symbol).unwrap();
            let scale = 10f64.powi(inst.price_decimals() as i32);
            let tick = inst.tick_size();
            for p in [t.bid, t.ask, t.last] {
                let ticks = (p / tick).round();
                assert!(
                    (p / tick - ticks).abs() < 1e-6,
                    "{p} is not a multiple of {tick}"
                );
                assert_eq!(p, ticks / scale, "{p} is not the clean decimal");
            }
            match inst.class {
                AssetClass::Equity => {
                    assert_eq!(t.bid_size % 100, 0, "{t:?}");
                    assert_eq!(t.ask_size % 100, 0, "{t:?}");
                    // A few ticks wide, relative to price for the quiet, high-priced tail.
                    assert!(t.ask - t.bid <= t.ask * 0.01, "{t:?}");
                }
                AssetClass::Fx => {
                    assert_eq!(t.bid_size % 100_000, 0, "{t:?}");
                    assert_eq!(t.last_size % 100_000, 0, "{t:?}");
                }
                AssetClass::Crypto => {}
            }
            // Printed prices carry no binary noise.
            json.clear();
            serde_json::to_writer(&mut json, &t).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
            for field in ["bid", "ask", "last"] {
                let text = v[field].to_string();
                let decimals = text.split_once('.').map_or(0, |(_, f)| f.len());
                assert!(
                    decimals <= inst.price_decimals() as usize && !text.contains('e'),
                    "{field} printed as {text}"
                );
            }
        }
    }

    #[test]
    fn quotes_are_the_books_best_levels_and_the_messages_rebuild_the_books() {
        let universe = small_universe();
        let mut g = Generator::new(&universe, 7, "e".into()).with_books();
        let mut books: HashMap<Symbol, crate::book::Book> = HashMap::new();
        let mut changed = 0usize;
        for n in 0..20_000 {
            let t = g.next_tick(n);
            for m in g.take_books() {
                m.check(BOOK_MAX_LEVELS).unwrap();
                match books.get_mut(&m.symbol) {
                    None => {
                        assert_eq!((m.seq, m.prev_seq), (1, None));
                        books.insert(m.symbol.clone(), crate::book::Book::from_msg(&m));
                    }
                    Some(b) => {
                        changed += m.bids.len() + m.asks.len();
                        b.apply(&m, BOOK_MAX_LEVELS).unwrap();
                    }
                }
            }
            let (seq, levels) = g.book(&t.symbol).unwrap();
            let book = &books[&t.symbol];
            assert_eq!((book.seq, &book.levels), (seq, levels), "{n}");
            let inst = universe.get(&t.symbol).unwrap();
            let spec = crate::book::Spec::new(inst.price_decimals() as u8);
            let best = |side| levels.best(side).unwrap();
            assert_eq!(spec.price(best(Side::Bid).price), t.bid, "{t:?}");
            assert_eq!(spec.price(best(Side::Ask).price), t.ask, "{t:?}");
            assert_eq!(
                (best(Side::Bid).size, best(Side::Ask).size),
                (t.bid_size, t.ask_size)
            );
            for side in Side::BOTH {
                let n = levels.side(side).len();
                assert!(
                    (50..=BOOK_MAX_LEVELS).contains(&n),
                    "{} {side:?}: {n} levels",
                    t.symbol
                );
            }
        }
        // Updates are small and near the touch: a few levels each.
        let per_update = changed as f64 / 20_000.0;
        assert!(
            (1.0..8.0).contains(&per_update),
            "{per_update} levels per update"
        );
    }

    #[test]
    fn prints_like_a_quote() {
        let g = bundled_generator(1);
        let st = &g.states[0];
        assert_eq!(st.scale, 100.0);
        assert_eq!(serde_json::to_string(&st.price(18910)).unwrap(), "189.1");
        assert_eq!(serde_json::to_string(&st.price(18913)).unwrap(), "189.13");
        assert_eq!(serde_json::to_string(&st.price(7)).unwrap(), "0.07");
        let u = Universe::bundled()
            .filter(&["EUR/USD".into(), "USD/JPY".into()])
            .unwrap();
        let g = Generator::new(&u, 1, "e".into());
        assert_eq!(
            serde_json::to_string(&g.states[0].price(108_513)).unwrap(),
            "1.08513"
        );
        assert_eq!(
            serde_json::to_string(&g.states[1].price(151_203)).unwrap(),
            "151.203"
        );
    }

    #[test]
    fn seq_starts_at_one_and_rises_by_one() {
        let mut g = bundled_generator(9);
        let mut last: HashMap<Symbol, (u64, u64)> = HashMap::new();
        for _ in 0..100_000 {
            let t = g.next_tick(0);
            let (seq, volume) = last.get(&t.symbol).copied().unwrap_or((0, 0));
            assert_eq!(t.seq, seq + 1, "{}", t.symbol);
            assert_eq!(t.volume, volume + t.last_size, "{}", t.symbol);
            last.insert(t.symbol.clone(), (t.seq, t.volume));
        }
        assert!(last.len() > 400, "only {} symbols ticked", last.len());
    }

    #[test]
    fn activity_skews_the_tick_counts() {
        const N: usize = 200_000;
        let universe = Universe::bundled();
        let mut g = Generator::new(&universe, 5, "e".into());
        let mut counts: HashMap<Symbol, usize> = HashMap::new();
        for _ in 0..N {
            *counts.entry(g.next_tick(0).symbol).or_default() += 1;
        }
        let mut by_activity: Vec<&Instrument> = universe.instruments().iter().collect();
        by_activity.sort_by(|a, b| b.activity.total_cmp(&a.activity));
        let total: f64 = by_activity.iter().map(|i| i.activity).sum();
        let count = |i: &Instrument| counts.get(&i.symbol).copied().unwrap_or(0);
        let share =
            |xs: &[&Instrument]| xs.iter().map(|i| count(i)).sum::<usize>() as f64 / N as f64;
        let weight = |xs: &[&Instrument]| xs.iter().map(|i| i.activity).sum::<f64>() / total;

        let n = by_activity.len();
        let top10 = &by_activity[..10];
        let top1pct = &by_activity[..n / 100];
        let bottom250 = &by_activity[n - 250..];
        let bottom_half = &by_activity[n / 2..];
        assert!(share(top10) > 0.20, "top 10 share {}", share(top10));
        assert!(
            share(top10) > share(bottom250),
            "{} vs {}",
            share(top10),
            share(bottom250)
        );
        assert!(
            share(top1pct) > 2.0 * share(bottom_half),
            "{} vs {}",
            share(top1pct),
            share(bottom_half)
        );
        assert!((share(top10) / weight(top10) - 1.0).abs() < 0.05);
        assert!((share(bottom250) / weight(bottom250) - 1.0).abs() < 0.10);
        for inst in &by_activity[..5] {
            let expected = inst.activity / total;
            let got = count(inst) as f64 / N as f64;
            assert!(
                (got / expected - 1.0).abs() < 0.15,
                "{}: share {got:.4}, expected {expected:.4}",
                inst.symbol
            );
        }
    }

    #[test]
    fn per_tick_steps_give_the_configured_volatility() {
        // Simulated time runs at NOMINAL_RATE ticks per second for the whole universe,
        // so the summed squared steps of a symbol over that time match its volatility.
        const N: usize = 400_000;
        let universe = Universe::bundled();
        let mut g = Generator::new(&universe, 3, "e".into());
        let before: Vec<f64> = g.states.iter().map(|s| s.log_price).collect();
        let mut prev = before.clone();
        let mut sq = vec![0.0; prev.len()];
        let index: HashMap<Symbol, usize> = g
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| (s.symbol.clone(), i))
            .collect();
        for _ in 0..N {
            let t = g.next_tick(0);
            let i = index[&t.symbol];
            let lp = g.states[i].log_price;
            sq[i] += (lp - prev[i]).powi(2);
            prev[i] = lp;
        }
        let seconds = N as f64 / NOMINAL_RATE;
        for name in ["SPY", "NVDA", "TSLA", "EUR/USD", "BTC-USD"] {
            let i = index[name];
            let inst = universe.get(name).unwrap();
            let year = match inst.class {
                AssetClass::Equity => EQUITY_YEAR_SECS,
                AssetClass::Fx => FX_YEAR_SECS,
                AssetClass::Crypto => CRYPTO_YEAR_SECS,
            };
            let annualised = (sq[i] / seconds * year).sqrt();
            assert!(
                (annualised / inst.volatility - 1.0).abs() < 0.1,
                "{name}: realised {annualised:.3}, configured {}",
                inst.volatility
            );
        }
    }

    #[test]
    fn alias_table_handles_equal_and_extreme_weights() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let t = AliasTable::new(&[1.0]);
        assert!((0..100).all(|_| t.sample(&mut rng) == 0));
        let t = AliasTable::new(&[1.0, 1e-9, 1.0]);
        let mut counts = [0usize; 3];
        for _ in 0..100_000 {
            counts[t.sample(&mut rng)] += 1;
        }
        assert!(counts[1] < 5, "{counts:?}");
        assert!(
            (counts[0] as i64 - counts[2] as i64).abs() < 2_000,
            "{counts:?}"
        );
    }

    /// Spawns the generator of `universe` (epoch `e`) into `sink` with a stop flag
    /// nothing sets: it ends with its duration or its receiver.
    pub(super) fn spawn_unstopped<S: Sink>(
        universe: Universe,
        config: SynthConfig,
        sink: S,
    ) -> JoinHandle<u64> {
        spawn(
            universe,
            config,
            "e".into(),
            sink,
            Arc::new(AtomicBool::new(false)),
        )
    }

    fn small_universe() -> Universe {
        let syms = ["AAPL", "MSFT", "EUR/USD", "BTC-USD"].map(String::from);
        Universe::bundled().filter(&syms).unwrap()
    }

    #[test]
    fn spawn_paces_to_the_rate_until_stopped() {
        let (tx, rx) = crossbeam_channel::unbounded::<Tick>();
        let stop = Arc::new(AtomicBool::new(false));
        let config = SynthConfig {
            rate: 5_000.0,
            ..SynthConfig::default()
        };
        let handle = spawn(Universe::bundled(), config, "e".into(), tx, stop.clone());
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        let received = 1 + rx.try_iter().count();
        let secs = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let sent = handle.join().unwrap();
        let rate = received as f64 / secs;
        assert!(
            (4_500.0..=5_500.0).contains(&rate),
            "{received} ticks in {secs:.3}s"
        );
        assert!(sent as usize >= received);
        assert_eq!(first.seq, 1);
        assert!(first.ts > 0 && first.ts <= now_ns());
    }

    #[test]
    fn spawn_stops_after_duration_with_exact_count() {
        let (tx, rx) = crossbeam_channel::unbounded::<Tick>();
        let config = SynthConfig {
            rate: 5_000.0,
            seed: 11,
            duration: Some(Duration::from_millis(500)),
            ..SynthConfig::default()
        };
        let t0 = Instant::now();
        let handle = spawn_unstopped(small_universe(), config, tx);
        let sent = handle.join().unwrap();
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(sent, 2_500);
        assert!((0.45..1.5).contains(&secs), "took {secs:.3}s");
        let ticks: Vec<Tick> = rx.try_iter().collect();
        assert_eq!(ticks.len(), 2_500);
        // Stamped when produced: non-decreasing, and the same ticks as a bare generator.
        assert!(ticks.windows(2).all(|w| w[0].ts <= w[1].ts));
        let mut g = Generator::new(&small_universe(), 11, "e".into());
        assert!(ticks.iter().all(|t| key(t) == key(&g.next_tick(0))));
    }

    #[test]
    fn spawn_stops_when_the_receiver_is_dropped() {
        let (tx, rx) = crossbeam_channel::bounded::<Tick>(16);
        let config = SynthConfig {
            rate: 20_000.0,
            ..SynthConfig::default()
        };
        let handle = spawn_unstopped(small_universe(), config, tx);
        for _ in 0..100 {
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        drop(rx);
        let t0 = Instant::now();
        let sent = handle.join().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!((100..=100 + 16 + 1).contains(&sent), "sent {sent}");
    }

    #[test]
    fn spawn_stops_while_blocked_on_a_full_channel() {
        let (tx, rx) = crossbeam_channel::bounded::<Tick>(4);
        let stop = Arc::new(AtomicBool::new(false));
        let handle = spawn(
            small_universe(),
            SynthConfig::default(),
            "e".into(),
            tx,
            stop.clone(),
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(rx.len(), 4);
        stop.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        assert_eq!(handle.join().unwrap(), 4);
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn spawn_runs_on_a_named_thread_and_handles_odd_rates() {
        let (tx, rx) = crossbeam_channel::unbounded::<Tick>();
        let stop = Arc::new(AtomicBool::new(false));
        let config = SynthConfig {
            rate: 0.0,
            duration: Some(Duration::from_millis(50)),
            ..SynthConfig::default()
        };
        let handle = spawn(small_universe(), config, "e".into(), tx, stop);
        assert_eq!(handle.thread().name(), Some(THREAD_NAME));
        assert_eq!(handle.join().unwrap(), 0);
        assert!(rx.try_recv().is_err());

        let (tx, rx) = crossbeam_channel::unbounded::<Tick>();
        let config = SynthConfig {
            rate: f64::INFINITY,
            duration: Some(Duration::from_millis(50)),
            ..SynthConfig::default()
        };
        let sent = spawn_unstopped(small_universe(), config, tx)
            .join()
            .unwrap();
        assert!(sent > 1_000, "unlimited rate sent only {sent}");
        assert_eq!(rx.try_iter().count() as u64, sent);
    }
}

#[cfg(test)]
mod batch_tests {
    use super::tests::spawn_unstopped;
    use super::*;

    #[test]
    fn ticks_are_handed_over_in_batches_one_interval_apart() {
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<Tick>>();
        let config = SynthConfig {
            rate: 20_000.0,
            duration: Some(Duration::from_millis(300)),
            batch: Duration::from_millis(5),
            ..SynthConfig::default()
        };
        let sent = spawn_unstopped(Universe::bundled(), config, tx)
            .join()
            .unwrap();
        assert_eq!(sent, 6_000);
        let batches: Vec<Vec<Tick>> = rx.try_iter().collect();
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 6_000);
        // At most one batch per 5 ms over 300 ms (and the last, at the end).
        assert!(batches.len() <= 62, "{} batches", batches.len());
        assert!(batches.iter().all(|b| !b.is_empty()));
        // Still in order, one seq after another per symbol.
        let mut g = Generator::new(&Universe::bundled(), 1, "e".into());
        assert!(batches
            .iter()
            .flatten()
            .all(|t| t.seq == g.next_tick(0).seq));
    }

    fn ms(x: f64) -> Duration {
        Duration::from_secs_f64(x / 1000.0)
    }

    #[test]
    fn the_pacer_makes_one_batch_per_interval_of_what_is_due() {
        let mut p = Pacer::new(&SynthConfig {
            rate: 10_000.0,
            batch: ms(1.0),
            ..SynthConfig::default()
        });
        // Nothing is due at the start; the first batch comes one interval in.
        assert_eq!(p.step_at(ms(0.0)), Step::Wait(ms(1.0)));
        assert_eq!(p.step_at(ms(1.05)), Step::Emit(10));
        // Five more are due by 1.5 ms, but the interval is not over: wait until 2.05 ms.
        match p.step_at(ms(1.5)) {
            Step::Wait(w) => assert!((w.as_secs_f64() - 0.000_55).abs() < 1e-9, "{w:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.step_at(ms(2.05)), Step::Emit(10));
        // Late (the runtime was busy): everything due goes in one batch.
        assert_eq!(p.step_at(ms(9.0)), Step::Emit(70));
    }

    #[test]
    fn the_pacer_splits_a_flood_into_bursts_that_follow_at_once() {
        let mut p = Pacer::new(&SynthConfig {
            rate: 10_000_000.0,
            batch: ms(5.0),
            ..SynthConfig::default()
        });
        assert_eq!(p.step_at(ms(1.0)), Step::Emit(MAX_BURST));
        assert_eq!(p.step_at(ms(1.0)), Step::Emit(MAX_BURST));
        assert_eq!(p.step_at(ms(1.0)), Step::Emit(10_000 - 2 * MAX_BURST));
        // All sent: the next batch waits for the interval, counted from the first burst.
        assert_eq!(p.step_at(ms(1.0)), Step::Wait(ms(5.0)));
    }

    #[test]
    fn the_pacer_ends_with_the_exact_count_of_its_duration() {
        let mut p = Pacer::new(&SynthConfig {
            rate: 1_000.0,
            duration: Some(ms(100.0)),
            batch: ms(5.0),
            ..SynthConfig::default()
        });
        assert_eq!(p.step_at(ms(50.0)), Step::Emit(50));
        assert_eq!(p.step_at(ms(500.0)), Step::Emit(50));
        assert_eq!(p.step_at(ms(500.0)), Step::Done);
    }

    #[test]
    fn the_pacer_waits_at_any_positive_rate() {
        // A tick every 1e20 s, and one every 1/5e-324 s (infinite): never due, a wait.
        for rate in [1e-20, f64::MIN_POSITIVE, 5e-324] {
            let mut p = Pacer::new(&SynthConfig {
                rate,
                ..SynthConfig::default()
            });
            assert_eq!(p.step_at(ms(1.0)), Step::Wait(STEP), "{rate}");
            assert_eq!(p.step_at(Duration::from_secs(86_400)), Step::Wait(STEP));
        }
    }

    /// The in-node feed: a task on the runtime, publishing each batch as it is made.
    #[tokio::test]
    async fn on_the_runtime_it_publishes_everything_in_batches_in_order() {
        let config = SynthConfig {
            rate: 20_000.0,
            duration: Some(ms(300.0)),
            batch: ms(5.0),
            ..SynthConfig::default()
        };
        let mut batches: Vec<Vec<Tick>> = Vec::new();
        let sent = run_on_runtime(Universe::bundled(), config, "e".into(), |b, _| {
            batches.push(b)
        })
        .await
        .unwrap();
        assert_eq!(sent, 6_000);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 6_000);
        assert!(batches.len() <= 62, "{} batches", batches.len());
        assert!(batches.len() >= 2, "{} batches", batches.len());
        let mut g = Generator::new(&Universe::bundled(), 1, "e".into());
        assert!(batches.iter().flatten().all(|t| {
            let want = g.next_tick(0);
            (&t.symbol, t.seq, t.bid.to_bits()) == (&want.symbol, want.seq, want.bid.to_bits())
        }));
        // Stamped as made: non-decreasing across batches.
        let ts: Vec<u64> = batches.iter().flatten().map(|t| t.ts).collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]));
    }

    #[tokio::test]
    async fn the_fine_timer_waits_at_least_what_it_is_asked() {
        let mut timer = FineTimer::new().unwrap();
        for wait in [ms(0.2), ms(0.7), ms(3.0)] {
            let t0 = Instant::now();
            timer.sleep(wait).await.unwrap();
            assert!(t0.elapsed() >= wait, "{wait:?} took {:?}", t0.elapsed());
        }
    }
}
