//! Publishing ticks into Redis, as PROTOCOL.md's bus section says, from a node's own
//! feed or from a feed process.
//!
//! [`RedisPublisher::publish`] never touches the network: it hands the tick to a task
//! through a bounded queue (a full queue drops the tick and counts it). The task takes
//! whatever is queued as one batch and sends, per shard, one pipeline in which every tick
//! is written before it is announced: `XADD hist:{S} MAXLEN n <seq>-0 t <json>`,
//! `SET last:{S} <json>`, then `PUBLISH`/`SPUBLISH tick:{S} <json>`. The first tick of a
//! symbol (and of every new epoch) deletes the old stream first, so stream IDs are the
//! `seq` of the current epoch.
//!
//! Each server (each master of a cluster) is written on its own: a server that fails
//! loses only its own ticks (counted) and is tried again after a short, growing wait,
//! while the others go on; a redirection or a failure reads the cluster's slot map
//! again, so the feed follows a slot migration or a failover without stopping.
//!
//! The publisher also makes the bars of the symbols it holds ([`super::bars`]): after a
//! batch's ticks, each bar they closed is added to its set, and the forming state of a
//! symbol is set at most every [`super::bars::FORMING_EVERY`]. A symbol it takes
//! continues the bars from the stored state, so a feed that restarts mid-bar (or takes a
//! symbol over) makes the same bars as the nodes that saw every tick.
//!
//! Two feeds must not publish the same symbol: before its first tick of a symbol the
//! publisher claims the lease key `owner:{S}` (value: its feed id, expiry
//! [`RedisConfig::lease`]) and renews it every third of that time. A symbol whose lease
//! another feed holds is refused: its ticks are dropped, the conflict is logged and
//! reported by [`RedisPublisher::conflicts`]. A lease left by a feed that died expires,
//! and a waiting feed takes the symbol over then.
//!
//! Book messages ([`RedisPublisher::publish_book`]) share the queue, the leases and the
//! pipelines: each is applied to the publisher's copy of the book, which is written
//! whole to `booksnap:{S}` before the message is published on `book:{S}` (see
//! [`super::books`]). After a message of a symbol was dropped (a full queue, a server
//! down), its next one is published as a whole `book`, so that nodes never receive an
//! update that does not apply to what came before it. In the same pipeline, before the
//! snapshot, each message is appended to the stream `bookhist:{S}` (entry id its seq,
//! trimmed to about [`RedisConfig::book_history`] entries) with what undoes it, so that a
//! node can rebuild an older book for a client that resumes there; the first message of
//! a symbol (and of every new epoch) deletes the old stream first.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::bars::{self, FeedBars};
use super::feeds::{Presence, State};
use super::topology::{Server, Topology};
use super::{Keys, RedisConfig};
use crate::backoff::Backoff;
use crate::book::{json, Book, BookMsg, Side, Spec};
use crate::bus::BusError;
use crate::tick::{Kind, Symbol, Tick};

/// Ticks taken from the queue into one pipeline at most.
const BATCH: usize = 1024;

const CLAIM: &str = "local v = redis.call('GET', KEYS[1]) \
if v == false or v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
return v";

const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// Counters of a publisher.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// Ticks written to Redis.
    pub published: AtomicU64,
    /// Ticks and book messages dropped because the queue was full.
    pub dropped_full: AtomicU64,
    /// Ticks and book messages dropped because Redis was unreachable.
    pub dropped_down: AtomicU64,
    /// Ticks and book messages dropped because another feed owns their symbol.
    pub refused: AtomicU64,
    /// Book messages written to Redis.
    pub books: AtomicU64,
    /// Book messages that did not apply to the publisher's copy of their book, dropped.
    pub books_refused: AtomicU64,
}

/// One item of the publishing queue.
enum Out {
    /// A tick.
    Tick(Tick),
    /// A book message, ready to write.
    Book(Box<BookOut>),
}

impl Out {
    fn symbol(&self) -> &Symbol {
        match self {
            Out::Tick(t) => &t.symbol,
            Out::Book(b) => &b.symbol,
        }
    }
}

/// A book message as written: the message itself and the whole book after it.
struct BookOut {
    symbol: Symbol,
    /// The `book` or `book_update` object published on the channel.
    message: Vec<u8>,
    /// The whole book after the message, as a `book` object (also published in place
    /// of `message` after a loss).
    whole: Vec<u8>,
    /// Its seq, and the seq of the book it applied to (0: none).
    seq: u64,
    prev: u64,
    /// What undoes it, as the `u` field of its `bookhist:` entry.
    undo: Vec<u8>,
    /// The first message of its symbol here, or of a new epoch.
    fresh: bool,
}

/// The publisher's copy of a symbol's book.
struct PubBook {
    book: Book,
    /// A message of it was dropped: the next one goes out whole.
    whole_next: bool,
}

/// A symbol another feed publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The symbol.
    pub symbol: Symbol,
    /// The id of the feed that holds it.
    pub holder: String,
}

struct Shared {
    stats: PublisherStats,
    conflicts: Mutex<Vec<Conflict>>,
    healthy: std::sync::atomic::AtomicBool,
    /// Symbols this feed stopped publishing, said in the next beat.
    lost: Mutex<Vec<String>>,
    /// Beat now (something was lost).
    beat_now: tokio::sync::Notify,
    /// The books published, as the publisher holds them.
    books: Mutex<HashMap<Symbol, PubBook>>,
}

/// Publishes ticks into Redis (single server or cluster) without blocking the caller.
///
/// For a feed process: connect once (inside a tokio runtime), hand it every tick, check
/// [`RedisPublisher::conflicts`] to refuse running beside another feed, close at the end.
///
/// ```no_run
/// # async fn feed() -> Result<(), tickstream::bus::BusError> {
/// use tickstream::bus::{RedisConfig, RedisPublisher};
/// let cfg = RedisConfig::single("redis://127.0.0.1:6379");
/// let publisher = RedisPublisher::connect(&cfg, "synth-1").await?;
/// # let tick: tickstream::tick::Tick = unimplemented!();
/// publisher.publish(tick)?;
/// if let Some(c) = publisher.conflicts().first() {
///     eprintln!("{} is published by feed {}", c.symbol, c.holder);
/// }
/// publisher.close().await;
/// # Ok(()) }
/// ```
pub struct RedisPublisher {
    tx: mpsc::Sender<Out>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    feed_id: String,
}

impl RedisPublisher {
    /// Connects (failing fast with a clear message when Redis is unreachable) and starts
    /// the publishing task on the current tokio runtime. `feed_id` names this feed in
    /// the lease keys; it must differ between feeds.
    pub async fn connect(cfg: &RedisConfig, feed_id: &str) -> Result<RedisPublisher, BusError> {
        let topo = Topology::connect(cfg)
            .await
            .map_err(|e| BusError::Unavailable(super::shards::startup_error(cfg, &e)))?;
        let keys = Keys::new(&cfg.prefix);
        let presence = Presence::new(&keys, feed_id, cfg.heartbeat);
        let mut conn = topo.server_of(feed_id).conn.clone();
        presence
            .claim(&mut conn)
            .await
            .map_err(BusError::Unavailable)?;
        let (tx, rx) = mpsc::channel(cfg.publish_queue.max(1));
        let shared = Arc::new(Shared {
            stats: PublisherStats::default(),
            conflicts: Mutex::new(Vec::new()),
            healthy: std::sync::atomic::AtomicBool::new(true),
            lost: Mutex::new(Vec::new()),
            beat_now: tokio::sync::Notify::new(),
            books: Mutex::new(HashMap::new()),
        });
        let stop = CancellationToken::new();
        let worker = Worker {
            cfg: cfg.clone(),
            keys,
            presence,
            feed_id: feed_id.to_owned(),
            topo: Some(topo),
            down: HashMap::new(),
            suspect: false,
            shared: shared.clone(),
            epochs: HashMap::new(),
            owned: HashSet::new(),
            refused: HashMap::new(),
            last_renew: Instant::now(),
            backoff: {
                let mut b = Backoff::new(cfg.backoff());
                b.connected();
                b
            },
            down_since_log: None,
            candles: FeedBars::new(cfg.bars),
        };
        let task = tokio::spawn(worker.run(rx, stop.clone()));
        Ok(RedisPublisher {
            tx,
            shared,
            stop,
            task: Mutex::new(Some(task)),
            feed_id: feed_id.to_owned(),
        })
    }

    /// Queues a tick for publishing; never waits. A full queue drops it (counted).
    pub fn publish(&self, tick: Tick) -> Result<(), BusError> {
        self.queue(Out::Tick(tick)).map(|_| ())
    }

    /// Queues `out`; never waits. Whether it was queued (a full queue drops it, counted).
    fn queue(&self, out: Out) -> Result<bool, BusError> {
        match self.tx.try_send(out) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(_)) => {
                let n = self
                    .shared
                    .stats
                    .dropped_full
                    .fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(10_000) {
                    tracing::warn!(
                        dropped = n + 1,
                        "publishing to Redis falls behind the feed; ticks dropped"
                    );
                }
                Ok(false)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(BusError::Unavailable("publisher stopped".into()))
            }
        }
    }

    /// Queues a tick for publishing, waiting for room when the queue is full: for a feed
    /// process that would rather slow down than drop. Call it from a plain thread (not
    /// from async code).
    pub fn publish_blocking(&self, tick: Tick) -> Result<(), BusError> {
        self.tx
            .blocking_send(Out::Tick(tick))
            .map_err(|_| BusError::Unavailable("publisher stopped".into()))
    }

    /// Queues a book message of a symbol whose prices have `spec`'s decimals, checked by
    /// the caller ([`BookMsg::check`], at most `max_levels` a side); never waits. A
    /// message that does not apply to the book this publisher holds of its symbol (an
    /// update before any whole book, a `prev_seq` that does not follow) is dropped and
    /// counted in [`PublisherStats::books_refused`].
    pub fn publish_book(
        &self,
        msg: &BookMsg,
        spec: Spec,
        max_levels: usize,
    ) -> Result<(), BusError> {
        let mut books = self.shared.books.lock();
        let Some(out) = prepare(&mut books, msg, spec, max_levels) else {
            self.shared
                .stats
                .books_refused
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        if !self.queue(Out::Book(Box::new(out)))? {
            if let Some(b) = books.get_mut(&msg.symbol) {
                b.whole_next = true;
            }
        }
        Ok(())
    }

    /// Queues a book message like [`RedisPublisher::publish_book`], waiting for room
    /// when the queue is full (for a feed process that would rather slow down than
    /// drop). Call it from a plain thread (not from async code).
    pub fn publish_book_blocking(
        &self,
        msg: &BookMsg,
        spec: Spec,
        max_levels: usize,
    ) -> Result<(), BusError> {
        let out = {
            let mut books = self.shared.books.lock();
            prepare(&mut books, msg, spec, max_levels)
        };
        let Some(out) = out else {
            self.shared
                .stats
                .books_refused
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        self.tx
            .blocking_send(Out::Book(Box::new(out)))
            .map_err(|_| BusError::Unavailable("publisher stopped".into()))
    }

    /// Counters.
    pub fn stats(&self) -> &PublisherStats {
        &self.shared.stats
    }

    /// Symbols refused because another feed holds them, with that feed's id.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.shared.conflicts.lock().clone()
    }

    /// Whether the last write to Redis succeeded.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    /// This feed's id, as written in the lease keys.
    pub fn feed_id(&self) -> &str {
        &self.feed_id
    }

    /// Says at once, in a heartbeat, that this feed stopped publishing `symbols` while
    /// it goes on (nodes mark them stale until their next tick).
    pub fn lost(&self, symbols: &[Symbol]) {
        if symbols.is_empty() {
            return;
        }
        self.shared
            .lost
            .lock()
            .extend(symbols.iter().map(|s| s.to_string()));
        self.shared.beat_now.notify_one();
    }

    /// Publishes what is queued, releases the leases and stops the task.
    pub async fn close(&self) {
        self.stop.cancel();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// A publisher is a bus that only publishes, for feed processes: it receives nothing.
impl crate::bus::Bus for RedisPublisher {
    fn publish(&self, tick: Tick) -> Result<(), BusError> {
        RedisPublisher::publish(self, tick)
    }

    fn watch<'a>(
        &'a self,
        _symbols: &'a [Symbol],
    ) -> crate::bus::BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async {
            Err(BusError::Unavailable(
                "a feed's publisher receives no ticks".into(),
            ))
        })
    }

    fn unwatch<'a>(&'a self, _symbols: &'a [Symbol]) -> crate::bus::BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn sources_lost(&self, symbols: &[Symbol]) {
        self.lost(symbols);
    }

    fn healthy(&self) -> bool {
        RedisPublisher::healthy(self)
    }

    fn close(&self) -> crate::bus::BoxFuture<'_, ()> {
        Box::pin(RedisPublisher::close(self))
    }
}

impl Drop for RedisPublisher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Worker {
    cfg: RedisConfig,
    keys: Keys,
    /// The feed's identity and heartbeats.
    presence: Presence,
    feed_id: String,
    topo: Option<Topology>,
    /// Servers that failed, and when each may be tried again (with the wait that grows
    /// while it keeps failing).
    down: HashMap<String, (Instant, Duration)>,
    /// The slot map may be out of date: read it before the next batch.
    suspect: bool,
    shared: Arc<Shared>,
    /// Epoch last written per symbol by this publisher.
    epochs: HashMap<Symbol, Arc<str>>,
    owned: HashSet<Symbol>,
    /// Symbols another feed holds, and when the claim was last tried.
    refused: HashMap<Symbol, Instant>,
    last_renew: Instant,
    backoff: Backoff,
    down_since_log: Option<Instant>,
    /// The bars of the symbols this feed publishes.
    candles: FeedBars,
}

/// The first wait before a failed server is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(50);

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Out>, stop: CancellationToken) {
        let mut batch: Vec<Out> = Vec::with_capacity(BATCH);
        let renew_every = self.cfg.lease / 3;
        let mut renew = tokio::time::interval(renew_every.max(Duration::from_millis(10)));
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval(self.cfg.heartbeat.max(Duration::from_millis(10)));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut forming = tokio::time::interval(bars::FORMING_EVERY);
        forming.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        loop {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    self.send(&mut batch).await;
                }
                _ = renew.tick() => self.renew().await,
                _ = forming.tick() => self.write_forming(false).await,
                _ = beat.tick() => self.beat(State::Up).await,
                _ = shared.beat_now.notified() => self.beat(State::Up).await,
                _ = stop.cancelled() => {
                    while let Ok(t) = rx.try_recv() {
                        batch.push(t);
                        if batch.len() >= BATCH {
                            self.send(&mut batch).await;
                        }
                    }
                    self.send(&mut batch).await;
                    break;
                }
            }
        }
        self.write_forming(true).await;
        self.release().await;
        // The `down` beat names the symbols given up: a node that has not read their
        // leases yet (it began watching a moment ago) still learns whose they were.
        self.shared
            .lost
            .lock()
            .extend(self.owned.iter().map(|s| s.to_string()));
        self.beat(State::Down).await;
    }

    /// Says this feed is alive (or stopping), with the symbols it stopped publishing:
    /// the beat goes through any server that answers (plain Pub/Sub reaches every
    /// master), the identity is renewed on its own slot's master; one server down
    /// silences neither.
    async fn beat(&mut self, state: State) {
        let Some(topo) = &self.topo else {
            return;
        };
        let beat = self
            .presence
            .beat(state, std::mem::take(&mut *self.shared.lost.lock()));
        let now = Instant::now();
        let mut said = false;
        for server in topo.servers() {
            if self.down.get(&server.addr).is_some_and(|(at, _)| now < *at) {
                continue;
            }
            let mut conn = server.conn.clone();
            let publish = redis::cmd("PUBLISH")
                .arg(self.presence.channel())
                .arg(&beat[..])
                .exec_async(&mut conn)
                .await;
            if publish.is_ok() {
                said = true;
                break;
            }
        }
        let id = [Symbol::from(self.presence.feed.as_str())];
        let presence = &self.presence;
        let kept = topo.per_symbol(&id, |_, p| presence.keep(state, p)).await;
        if !said || kept.is_err() {
            tracing::debug!("the feed's heartbeat did not get through");
            self.suspect = true;
        }
    }

    /// Makes sure the servers are known: connects when nothing is, and reads the slot
    /// map again when it may be out of date. False while Redis cannot be reached.
    async fn ensure_connected(&mut self) -> bool {
        if let Some(topo) = &self.topo {
            if std::mem::take(&mut self.suspect) {
                if let Err(e) = topo.refresh().await {
                    tracing::debug!(error = %e, "reading the cluster's slots failed");
                    self.suspect = true;
                }
            }
            return true;
        }
        if !self.backoff.ready() {
            return false;
        }
        match Topology::connect(&self.cfg).await {
            Ok(t) => {
                tracing::info!("publisher reconnected to Redis");
                self.topo = Some(t);
                self.down.clear();
                self.backoff.connected();
                // Leases and streams may be gone with the server: claim and start afresh.
                self.owned.clear();
                self.epochs.clear();
                true
            }
            Err(e) => {
                self.backoff.failed();
                if self
                    .down_since_log
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(5))
                {
                    tracing::warn!(error = %e, "publisher cannot reach Redis; dropping ticks");
                    self.down_since_log = Some(Instant::now());
                }
                false
            }
        }
    }

    /// Redis cannot be reached at all: start again from connecting, after a wait.
    fn broken(&mut self, e: &redis::RedisError) {
        tracing::warn!(error = %e, "publishing to Redis failed; reconnecting");
        self.topo = None;
        self.shared.healthy.store(false, Ordering::Release);
        // A link that stayed up as long as the longest wait proved healthy.
        self.backoff.lost(self.cfg.backoff_max);
        self.backoff.failed();
    }

    /// Sends one batch: connects if need be, claims the symbols it has not claimed
    /// yet, then writes the ticks of the symbols it holds, one pipeline per server.
    async fn send(&mut self, batch: &mut Vec<Out>) {
        if batch.is_empty() {
            return;
        }
        if !self.ensure_connected().await {
            self.drop_down(batch);
            return;
        }
        let new = self.unclaimed(batch);
        if !new.is_empty() {
            if let Err(e) = self.claim(&new).await {
                tracing::debug!(error = %e, "claiming symbols failed");
                self.suspect = true;
                self.drop_down(batch);
                return;
            }
        }
        let Some(pipes) = self.pipelines(batch) else {
            return;
        };
        let outcome = pipes.send(&self.shared.stats).await;
        self.settle(outcome).await;
    }

    /// What one batch's sending showed: servers that failed wait before they are tried
    /// again (their connection is made anew), redirections and failures have the slot
    /// map read again.
    async fn settle(&mut self, outcome: Outcome) {
        if outcome.redirected || !outcome.failed.is_empty() {
            self.suspect = true;
        }
        let now = Instant::now();
        for addr in &outcome.ok {
            self.down.remove(addr);
        }
        for (addr, e) in outcome.failed {
            let wait = self
                .down
                .get(&addr)
                .map_or(RETRY_FIRST, |(_, w)| (*w * 2).min(self.cfg.backoff_max));
            tracing::warn!(redis = %addr, error = %e, "publishing to a Redis server failed; its ticks are dropped until it answers");
            self.down.insert(addr.clone(), (now + wait, wait));
            if let Some(topo) = &self.topo {
                let _ = topo.reopen(&addr).await;
            }
        }
        let healthy = self.down.is_empty();
        self.shared.healthy.store(healthy, Ordering::Release);
    }

    /// Drops the whole batch, counted as lost to Redis being down.
    fn drop_down(&self, batch: &mut Vec<Out>) {
        self.shared
            .stats
            .dropped_down
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for out in batch.drain(..) {
            self.lost_book(&out);
        }
    }

    /// `out` was not written: when it is a book message, the next one of its symbol
    /// goes out whole.
    fn lost_book(&self, out: &Out) {
        if let Out::Book(b) = out {
            if let Some(pb) = self.shared.books.lock().get_mut(&b.symbol) {
                pb.whole_next = true;
            }
        }
    }

    /// The symbols of `batch` seen for the first time, or refused long enough ago
    /// (a third of the lease) to try claiming them again.
    fn unclaimed(&self, batch: &[Out]) -> Vec<Symbol> {
        let mut new: Vec<Symbol> = Vec::new();
        for out in batch {
            let s = out.symbol();
            if !self.owned.contains(s)
                && !new.contains(s)
                && self
                    .refused
                    .get(s)
                    .is_none_or(|at| at.elapsed() >= self.cfg.lease / 3)
            {
                new.push(s.clone());
            }
        }
        new
    }

    /// Drains `batch` into one pipeline per server: the ticks of the symbols this feed
    /// holds (the others are counted refused), a new epoch's stream deleted first. The
    /// ticks of a server waiting after a failure are dropped (counted).
    fn pipelines(&mut self, batch: &mut Vec<Out>) -> Option<Pipes> {
        let topo = self.topo.as_ref()?;
        let mut pipes = Pipes::new(topo.sharded());
        let keep = self.candles.keep();
        for (s, iv, bar) in self.candles.take_pending() {
            let server = topo.server_of(&s);
            bars::add(pipes.pipe(&server), &self.keys, &s, iv, &bar, keep);
        }
        let (mut refused, mut down) = (0u64, 0u64);
        let now = Instant::now();
        for out in batch.drain(..) {
            let server = topo.server_of(out.symbol());
            let is_down = self.down.get(&server.addr).is_some_and(|(at, _)| now < *at);
            if !self.owned.contains(out.symbol()) || is_down {
                match is_down {
                    true => down += 1,
                    false => refused += 1,
                }
                self.lost_book(&out);
                continue;
            }
            let t = match out {
                Out::Tick(t) => t,
                Out::Book(b) => {
                    let whole = self
                        .shared
                        .books
                        .lock()
                        .get_mut(&b.symbol)
                        .is_some_and(|pb| std::mem::take(&mut pb.whole_next));
                    let keep = self.cfg.book_history;
                    pipes.add_book(&server, &b, whole, &self.keys, keep);
                    continue;
                }
            };
            let fresh = self.epochs.get(&t.symbol) != Some(&t.epoch);
            if fresh {
                self.epochs.insert(t.symbol.clone(), t.epoch.clone());
            }
            pipes.add(&server, &t, fresh, &self.keys, self.cfg.history);
            self.candles.fold(&t, pipes.pipe(&server), &self.keys);
        }
        pipes.forming(topo, &self.keys, self.candles.due(Instant::now(), false));
        let stats = &self.shared.stats;
        stats.refused.fetch_add(refused, Ordering::Relaxed);
        stats.dropped_down.fetch_add(down, Ordering::Relaxed);
        Some(pipes)
    }

    /// Claims (or renews) the lease of each symbol, following redirections per slot;
    /// the bars of a symbol it takes continue from their stored state.
    async fn claim(&mut self, symbols: &[Symbol]) -> redis::RedisResult<()> {
        let Some(topo) = &self.topo else {
            return Ok(());
        };
        let ttl = self.cfg.lease.as_millis().max(1) as u64;
        let (keys, id) = (&self.keys, &self.feed_id);
        let replies = topo
            .per_symbol(symbols, |s, p| {
                p.cmd("EVAL")
                    .arg(CLAIM)
                    .arg(1)
                    .arg(keys.owner(s))
                    .arg(id)
                    .arg(ttl);
            })
            .await?;
        let mut taken = Vec::new();
        for (s, r) in symbols.iter().zip(replies) {
            match r.into_iter().next() {
                Some(redis::Value::Int(1)) => {
                    if self.claimed(s.clone()) {
                        taken.push(s.clone());
                    }
                }
                Some(redis::Value::ServerError(e)) => {
                    tracing::debug!(symbol = %s, error = %e, "claiming a symbol failed")
                }
                other => self.held_by_another(s.clone(), other),
            }
        }
        self.resume_bars(&taken).await
    }

    /// This feed holds `s`'s lease; whether it did not before.
    fn claimed(&mut self, s: Symbol) -> bool {
        if self.refused.remove(&s).is_some() {
            tracing::info!(symbol = %s, "lease taken over; publishing it now");
            self.shared.conflicts.lock().retain(|c| c.symbol != s);
        }
        self.owned.insert(s)
    }

    /// Continues the bars of `symbols`, just taken, from their stored forming state and
    /// the ticks published after it (by this feed before a restart, or by another).
    async fn resume_bars(&mut self, symbols: &[Symbol]) -> redis::RedisResult<()> {
        let Some(topo) = &self.topo else {
            return Ok(());
        };
        if symbols.is_empty() {
            return Ok(());
        }
        let found = bars::read_formed(topo, &self.keys, symbols, self.cfg.history).await?;
        for (s, formed, after) in found {
            self.candles.restore(&s, formed, &after);
        }
        Ok(())
    }

    /// Writes the forming states that are due (all that changed with `all`).
    async fn write_forming(&mut self, all: bool) {
        if !self.candles.pending() {
            return;
        }
        let Some(topo) = &self.topo else {
            return;
        };
        let mut pipes = Pipes::new(topo.sharded());
        pipes.forming(topo, &self.keys, self.candles.due(Instant::now(), all));
        let outcome = pipes.send(&self.shared.stats).await;
        for (addr, e) in &outcome.failed {
            tracing::debug!(redis = %addr, error = %e, "writing forming bars to Redis failed");
        }
    }

    fn held_by_another(&mut self, s: Symbol, reply: Option<redis::Value>) {
        let holder = match reply {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s,
            v => format!("{v:?}"),
        };
        self.owned.remove(&s);
        let first = self.refused.insert(s.clone(), Instant::now()).is_none();
        if first {
            tracing::error!(symbol = %s, holder = %holder,
                "another feed publishes this symbol; refusing to publish it");
            self.shared
                .conflicts
                .lock()
                .push(Conflict { symbol: s, holder });
        }
    }

    async fn renew(&mut self) {
        if self.topo.is_none() || self.last_renew.elapsed() < self.cfg.lease / 4 {
            return;
        }
        self.last_renew = Instant::now();
        let mut all: Vec<Symbol> = self.owned.iter().cloned().collect();
        all.extend(self.refused.keys().cloned());
        if all.is_empty() {
            return;
        }
        if let Err(e) = self.claim(&all).await {
            if e.is_io_error() || e.is_connection_dropped() {
                self.suspect = true;
            } else {
                self.broken(&e);
            }
        }
    }

    async fn release(&mut self) {
        let Some(topo) = &self.topo else {
            return;
        };
        let owned: Vec<Symbol> = self.owned.iter().cloned().collect();
        let (keys, id) = (&self.keys, &self.feed_id);
        let _ = topo
            .per_symbol(&owned, |s, p| {
                p.cmd("EVAL").arg(RELEASE).arg(1).arg(keys.owner(s)).arg(id);
            })
            .await;
    }
}

/// What sending one batch showed, per server.
#[derive(Default)]
struct Outcome {
    /// Servers that took their pipeline.
    ok: Vec<String>,
    /// Servers that failed, with the error.
    failed: Vec<(String, redis::RedisError)>,
    /// Some command was answered with a redirection: the slot map is out of date.
    redirected: bool,
}

/// A server's pipeline, with the number of ticks and of book messages it carries.
type PipeOf = (Arc<Server>, redis::Pipeline, u64, u64);

/// The pipelines of a batch by server address.
type PipeMap = HashMap<String, PipeOf>;

/// One batch's commands: a pipeline per server, with the number of ticks and of book
/// messages it carries.
struct Pipes {
    pipes: PipeMap,
    /// `SPUBLISH` on a sharded bus, else `PUBLISH`.
    publish: &'static str,
    /// The tick being added, as JSON.
    json: Vec<u8>,
}

impl Pipes {
    /// No pipeline yet; `sharded`: the bus is a cluster.
    fn new(sharded: bool) -> Pipes {
        Pipes {
            pipes: HashMap::new(),
            publish: if sharded { "SPUBLISH" } else { "PUBLISH" },
            json: Vec::with_capacity(256),
        }
    }

    /// Adds tick `t` to the pipeline of `server`: written to its stream (deleted first
    /// when `fresh`, a new epoch) and its latest value, then announced.
    fn add(&mut self, server: &Arc<Server>, t: &Tick, fresh: bool, keys: &Keys, history: usize) {
        let (_, p, count, _) = Self::entry(&mut self.pipes, server);
        let hist = keys.hist(&t.symbol);
        if fresh {
            p.cmd("DEL").arg(&hist).ignore();
        }
        self.json.clear();
        t.write_json(Kind::Tick, &mut self.json);
        p.cmd("XADD")
            .arg(&hist)
            .arg("MAXLEN")
            .arg(history)
            .arg(format!("{}-0", t.seq))
            .arg("t")
            .arg(&self.json[..]);
        p.cmd("SET").arg(keys.last(&t.symbol)).arg(&self.json[..]);
        p.cmd(self.publish)
            .arg(keys.channel(&t.symbol))
            .arg(&self.json[..]);
        *count += 1;
    }

    /// The pipeline of `server` in `pipes`, made when new.
    fn entry<'a>(pipes: &'a mut PipeMap, server: &Arc<Server>) -> &'a mut PipeOf {
        pipes
            .entry(server.addr.clone())
            .or_insert_with(|| (server.clone(), redis::pipe(), 0, 0))
    }

    /// Adds book message `b` to the pipeline of `server`: appended to `bookhist:`
    /// (trimmed to about `keep` entries; deleted first when `fresh`), the whole book
    /// written to `booksnap:`, then the message (the whole book itself when `whole`)
    /// announced.
    fn add_book(
        &mut self,
        server: &Arc<Server>,
        b: &BookOut,
        whole: bool,
        keys: &Keys,
        keep: usize,
    ) {
        let publish = self.publish;
        let (_, p, _, books) = Self::entry(&mut self.pipes, server);
        let payload = if whole { &b.whole } else { &b.message };
        let hist = keys.book_history(&b.symbol);
        if b.fresh {
            p.cmd("DEL").arg(&hist).ignore();
        }
        p.cmd("XADD")
            .arg(&hist)
            .arg("MAXLEN")
            .arg("~")
            .arg(keep)
            .arg(format!("{}-0", b.seq))
            .arg("m")
            .arg(&payload[..])
            .arg("p")
            .arg(b.prev)
            .arg("u")
            .arg(&b.undo[..])
            .ignore();
        p.cmd("SET")
            .arg(keys.book_snapshot(&b.symbol))
            .arg(&b.whole[..])
            .ignore();
        p.cmd(publish)
            .arg(keys.book_channel(&b.symbol))
            .arg(&payload[..])
            .ignore();
        *books += 1;
    }

    /// Sets the forming states `due` (by symbol, as JSON), each in its server's pipeline.
    fn forming(&mut self, topo: &Topology, keys: &Keys, due: Vec<(Symbol, Vec<u8>)>) {
        for (s, json) in due {
            let server = topo.server_of(&s);
            self.pipe(&server)
                .cmd("SET")
                .arg(keys.forming(&s))
                .arg(json)
                .ignore();
        }
    }

    /// The pipeline of `server`, to add what follows the ticks (their bars).
    fn pipe(&mut self, server: &Arc<Server>) -> &mut redis::Pipeline {
        &mut Self::entry(&mut self.pipes, server).1
    }

    /// Sends every pipeline to its server and counts what was published or lost.
    async fn send(self, stats: &PublisherStats) -> Outcome {
        let mut out = Outcome::default();
        let (mut published, mut books) = (0, 0);
        for (addr, (server, mut p, count, n_books)) in self.pipes {
            p.ignore_errors();
            let mut conn = server.conn.clone();
            match p.query_async::<Vec<redis::Value>>(&mut conn).await {
                Ok(replies) => {
                    published += count;
                    books += n_books;
                    if let Some(e) = replies.iter().find_map(server_error) {
                        if super::is_redirect_code(Some(e.code())) {
                            // Published elsewhere than the slot's master: lost, and the
                            // map is read again before the next batch.
                            out.redirected = true;
                        } else {
                            // An XADD below the stream's top (a seq this epoch already had)
                            // is refused by Redis; the tick is still announced.
                            tracing::debug!(error = %e, "Redis refused part of a batch");
                        }
                    }
                    out.ok.push(addr);
                }
                Err(e) => {
                    stats
                        .dropped_down
                        .fetch_add(count + n_books, Ordering::Relaxed);
                    out.failed.push((addr, e));
                }
            }
        }
        stats.published.fetch_add(published, Ordering::Relaxed);
        stats.books.fetch_add(books, Ordering::Relaxed);
        out
    }
}

/// Applies `msg` to the publisher's copy of its book and writes what goes out: the
/// message and the whole book after it. `None` when it does not apply.
fn prepare(
    books: &mut HashMap<Symbol, PubBook>,
    msg: &BookMsg,
    spec: Spec,
    max_levels: usize,
) -> Option<BookOut> {
    let held = books.get_mut(&msg.symbol);
    let (prev, fresh, changes);
    let pb = match (msg.prev_seq, held) {
        (Some(_), None) => return None,
        (_, Some(pb)) => {
            (prev, fresh) = (pb.book.seq, *pb.book.epoch != *msg.epoch);
            changes = pb.book.apply(msg, max_levels).ok()?;
            pb
        }
        (None, None) => {
            let mut book = Book::from_msg(&BookMsg {
                bids: Vec::new(),
                asks: Vec::new(),
                ..msg.clone()
            });
            changes = book.apply(msg, max_levels).ok()?;
            (prev, fresh) = (0, true);
            let pb = PubBook {
                book,
                whole_next: false,
            };
            books.entry(msg.symbol.clone()).or_insert(pb)
        }
    };
    let book = &pb.book;
    let checksum = book.levels.checksum();
    let head = json::Head {
        symbol: &msg.symbol,
        epoch: &book.epoch,
        seq: book.seq,
        ts: book.ts,
        spec,
    };
    let mut message = Vec::new();
    json::write(
        &mut message,
        &head,
        msg.prev_seq,
        &msg.bids,
        &msg.asks,
        checksum,
    );
    let mut whole = Vec::new();
    let (bids, asks) = (book.levels.side(Side::Bid), book.levels.side(Side::Ask));
    json::write(&mut whole, &head, None, bids, asks, checksum);
    Some(BookOut {
        symbol: msg.symbol.clone(),
        message,
        whole,
        seq: book.seq,
        prev: if fresh { 0 } else { prev },
        undo: super::books::write_undo(&changes),
        fresh,
    })
}

fn server_error(v: &redis::Value) -> Option<&redis::ServerError> {
    match v {
        redis::Value::ServerError(e) => Some(e),
        _ => None,
    }
}
