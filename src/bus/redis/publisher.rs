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
//! Two feeds must not publish the same symbol: before its first tick of a symbol the
//! publisher claims the lease key `owner:{S}` (value: its feed id, expiry
//! [`RedisConfig::lease`]) and renews it every third of that time. A symbol whose lease
//! another feed holds is refused: its ticks are dropped, the conflict is logged and
//! reported by [`RedisPublisher::conflicts`]. A lease left by a feed that died expires,
//! and a waiting feed takes the symbol over then.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::shards::Shards;
use super::{Keys, RedisConfig};
use crate::backoff::Backoff;
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
    /// Ticks dropped because the queue was full.
    pub dropped_full: AtomicU64,
    /// Ticks dropped because Redis was unreachable.
    pub dropped_down: AtomicU64,
    /// Ticks dropped because another feed owns their symbol.
    pub refused: AtomicU64,
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
    tx: mpsc::Sender<Tick>,
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
        let shards = Shards::connect(
            cfg,
            None::<fn(usize) -> Box<dyn redis::aio::AsyncPushSender>>,
        )
        .await
        .map_err(|e| BusError::Unavailable(super::shards::startup_error(cfg, &e)))?;
        let (tx, rx) = mpsc::channel(cfg.publish_queue.max(1));
        let shared = Arc::new(Shared {
            stats: PublisherStats::default(),
            conflicts: Mutex::new(Vec::new()),
            healthy: std::sync::atomic::AtomicBool::new(true),
        });
        let stop = CancellationToken::new();
        let worker = Worker {
            cfg: cfg.clone(),
            keys: Keys::new(&cfg.prefix),
            feed_id: feed_id.to_owned(),
            shards: Some(shards),
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
        match self.tx.try_send(tick) {
            Ok(()) => Ok(()),
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
                Ok(())
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
            .blocking_send(tick)
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
    feed_id: String,
    shards: Option<Shards>,
    shared: Arc<Shared>,
    /// Epoch last written per symbol by this publisher.
    epochs: HashMap<Symbol, Arc<str>>,
    owned: HashSet<Symbol>,
    /// Symbols another feed holds, and when the claim was last tried.
    refused: HashMap<Symbol, Instant>,
    last_renew: Instant,
    backoff: Backoff,
    down_since_log: Option<Instant>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Tick>, stop: CancellationToken) {
        let mut batch: Vec<Tick> = Vec::with_capacity(BATCH);
        let renew_every = self.cfg.lease / 3;
        let mut renew = tokio::time::interval(renew_every.max(Duration::from_millis(10)));
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
        self.release().await;
    }

    async fn ensure_connected(&mut self) -> bool {
        if self.shards.is_some() {
            return true;
        }
        if !self.backoff.ready() {
            return false;
        }
        match Shards::connect(
            &self.cfg,
            None::<fn(usize) -> Box<dyn redis::aio::AsyncPushSender>>,
        )
        .await
        {
            Ok(s) => {
                tracing::info!("publisher reconnected to Redis");
                self.shards = Some(s);
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

    fn broken(&mut self, e: &redis::RedisError) {
        tracing::warn!(error = %e, "publishing to Redis failed; reconnecting");
        self.shards = None;
        self.shared.healthy.store(false, Ordering::Release);
        // A link that stayed up as long as the longest wait proved healthy.
        self.backoff.lost(self.cfg.backoff_max);
        self.backoff.failed();
    }

    async fn send(&mut self, batch: &mut Vec<Tick>) {
        if batch.is_empty() {
            return;
        }
        if !self.ensure_connected().await {
            self.shared
                .stats
                .dropped_down
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
            return;
        }
        // Claim the symbols seen for the first time.
        let mut new: Vec<Symbol> = Vec::new();
        for t in batch.iter() {
            if !self.owned.contains(&t.symbol)
                && !new.contains(&t.symbol)
                && self
                    .refused
                    .get(&t.symbol)
                    .is_none_or(|at| at.elapsed() >= self.cfg.lease / 3)
            {
                new.push(t.symbol.clone());
            }
        }
        if !new.is_empty() {
            if let Err(e) = self.claim(&new).await {
                self.broken(&e);
                self.shared
                    .stats
                    .dropped_down
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
                return;
            }
        }
        let Some(shards) = &self.shards else {
            return;
        };
        let mut pipes: Vec<redis::Pipeline> =
            (0..shards.list.len()).map(|_| redis::pipe()).collect();
        let mut counts = vec![0u64; shards.list.len()];
        let publish = if shards.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut refused = 0u64;
        let mut json = Vec::with_capacity(256);
        for t in batch.drain(..) {
            if !self.owned.contains(&t.symbol) {
                refused += 1;
                continue;
            }
            let i = shards.index_of(&t.symbol);
            let p = &mut pipes[i];
            let hist = self.keys.hist(&t.symbol);
            if self.epochs.get(&t.symbol) != Some(&t.epoch) {
                p.cmd("DEL").arg(&hist).ignore();
                self.epochs.insert(t.symbol.clone(), t.epoch.clone());
            }
            json.clear();
            t.write_json(Kind::Tick, &mut json);
            p.cmd("XADD")
                .arg(&hist)
                .arg("MAXLEN")
                .arg(self.cfg.history)
                .arg(format!("{}-0", t.seq))
                .arg("t")
                .arg(&json[..]);
            p.cmd("SET").arg(self.keys.last(&t.symbol)).arg(&json[..]);
            p.cmd(publish)
                .arg(self.keys.channel(&t.symbol))
                .arg(&json[..]);
            counts[i] += 1;
        }
        if refused > 0 {
            self.shared
                .stats
                .refused
                .fetch_add(refused, Ordering::Relaxed);
        }
        let mut first_err = None;
        let mut published = 0;
        for (i, p) in pipes.iter_mut().enumerate() {
            if counts[i] == 0 {
                continue;
            }
            p.ignore_errors();
            let mut conn = shards.list[i].conn.clone();
            match p.query_async::<Vec<redis::Value>>(&mut conn).await {
                Ok(replies) => {
                    published += counts[i];
                    if let Some(e) = replies.iter().find_map(server_error) {
                        if super::is_redirect_code(Some(e.code())) {
                            // The cluster's slots moved: reconnect, reading the map again.
                            first_err.get_or_insert(redis::RedisError::from((
                                redis::ErrorKind::Io,
                                "cluster slot map changed",
                                e.to_string(),
                            )));
                        } else {
                            // An XADD below the stream's top (a seq this epoch already had)
                            // is refused by Redis; the tick is still announced.
                            tracing::debug!(error = %e, "Redis refused part of a batch");
                        }
                    }
                }
                Err(e) => {
                    self.shared
                        .stats
                        .dropped_down
                        .fetch_add(counts[i], Ordering::Relaxed);
                    first_err.get_or_insert(e);
                }
            }
        }
        self.shared
            .stats
            .published
            .fetch_add(published, Ordering::Relaxed);
        match first_err {
            Some(e)
                if e.is_unrecoverable_error()
                    || e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped() =>
            {
                self.broken(&e)
            }
            Some(e) => tracing::warn!(error = %e, "publishing to Redis failed"),
            None => self.shared.healthy.store(true, Ordering::Release),
        }
    }

    /// Claims (or renews) the lease of each symbol, one pipeline per shard.
    async fn claim(&mut self, symbols: &[Symbol]) -> redis::RedisResult<()> {
        let Some(shards) = &self.shards else {
            return Ok(());
        };
        let mut pipes: Vec<(redis::Pipeline, Vec<Symbol>)> = (0..shards.list.len())
            .map(|_| (redis::pipe(), Vec::new()))
            .collect();
        let ttl = self.cfg.lease.as_millis().max(1) as u64;
        for s in symbols {
            let (p, names) = &mut pipes[shards.index_of(s)];
            p.cmd("EVAL")
                .arg(CLAIM)
                .arg(1)
                .arg(self.keys.owner(s))
                .arg(&self.feed_id)
                .arg(ttl);
            names.push(s.clone());
        }
        for (i, (p, names)) in pipes.into_iter().enumerate() {
            if names.is_empty() {
                continue;
            }
            let mut conn = shards.list[i].conn.clone();
            let replies: Vec<redis::Value> = p.query_async(&mut conn).await?;
            for (s, r) in names.into_iter().zip(replies) {
                match r {
                    redis::Value::Int(1) => {
                        if self.refused.remove(&s).is_some() {
                            tracing::info!(symbol = %s, "lease taken over; publishing it now");
                            self.shared.conflicts.lock().retain(|c| c.symbol != s);
                        }
                        self.owned.insert(s);
                    }
                    other => {
                        let holder = match other {
                            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                            redis::Value::SimpleString(s) => s,
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
                }
            }
        }
        Ok(())
    }

    async fn renew(&mut self) {
        if self.shards.is_none() || self.last_renew.elapsed() < self.cfg.lease / 4 {
            return;
        }
        self.last_renew = Instant::now();
        let mut all: Vec<Symbol> = self.owned.iter().cloned().collect();
        all.extend(self.refused.keys().cloned());
        if all.is_empty() {
            return;
        }
        if let Err(e) = self.claim(&all).await {
            self.broken(&e);
        }
    }

    async fn release(&mut self) {
        let Some(shards) = &self.shards else {
            return;
        };
        let mut pipes: Vec<redis::Pipeline> =
            (0..shards.list.len()).map(|_| redis::pipe()).collect();
        for s in &self.owned {
            pipes[shards.index_of(s)]
                .cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(self.keys.owner(s))
                .arg(&self.feed_id)
                .ignore();
        }
        for (i, p) in pipes.into_iter().enumerate() {
            let mut conn = shards.list[i].conn.clone();
            let _ = p.exec_async(&mut conn).await;
        }
    }
}

fn server_error(v: &redis::Value) -> Option<&redis::ServerError> {
    match v {
        redis::Value::ServerError(e) => Some(e),
        _ => None,
    }
}
