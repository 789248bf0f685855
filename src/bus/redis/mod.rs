//! The Redis bus: ticks travel between nodes over Redis Pub/Sub (or sharded Pub/Sub on
//! Redis Cluster), laid out as PROTOCOL.md's bus section says so that any process can
//! publish into a cluster.
//!
//! Keys and channels, with the default prefix `tickstream:` and the symbol as the hash tag:
//!
//! | name | what |
//! | --- | --- |
//! | `tickstream:tick:{S}` | channel; payload the `tick` JSON object |
//! | `tickstream:last:{S}` | string; the latest `tick` object |
//! | `tickstream:hist:{S}` | stream of the recent ticks of the current epoch, entry id `<seq>-0`, one field `t` holding the `tick` object, trimmed to `--redis-history` entries |
//! | `tickstream:owner:{S}` | string; id of the feed publishing `S` (a lease with expiry) |
//!
//! A node keeps one connection per Redis server (one in all for a single server, one per
//! master for a cluster) which carries its subscriptions and its reads. The node tells
//! the bus when to watch a symbol (its first local subscriber) and when to stop (the
//! last one left); each call is one command for all its symbols (one pipeline per shard
//! in cluster mode, where `SSUBSCRIBE` takes one slot per command).
//!
//! The connection's reader only checks what arrives: a payload must be a well-formed
//! `tick` object (else it is counted as malformed and dropped); its bytes are then
//! forwarded to clients as they arrived (PROTOCOL.md allows it), not encoded again. A
//! payload without `"type":"tick"` is encoded afresh. The ticks read go to the hub in
//! batches, in the order Redis delivered them: everything the reader took off the
//! socket since the last batch is fanned out at once, so each subscriber is woken once
//! per batch.
//!
//! When Redis goes away the node keeps its clients, reports unhealthy, reconnects with
//! capped, jittered exponential backoff, resubscribes every wanted channel and, per
//! symbol, announces what it missed (`gap` reason `upstream`) and sends a fresh `snapshot`.

mod publisher;
pub mod shards;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, Bus, BusError};
use crate::backoff::{Backoff, BackoffConfig};
use crate::hub::{Entry, Hub};
use crate::tick::{Kind, Symbol, Tick};
pub use publisher::{Conflict, PublisherStats, RedisPublisher};
use shards::Shards;

/// Which Redis deployment to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisMode {
    /// One server (`redis://host:port`): `PUBLISH`/`SUBSCRIBE`.
    Single(String),
    /// A Redis Cluster, given by one or more seed URLs: `SPUBLISH`/`SSUBSCRIBE`.
    Cluster(Vec<String>),
}

/// How to reach Redis and lay out the keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// Server or cluster.
    pub mode: RedisMode,
    /// Prefix of every key and channel. Default: `tickstream:`.
    pub prefix: String,
    /// Entries kept in each `hist:` stream. Default: 10000.
    pub history: usize,
    /// Longest wait between reconnection attempts. Default: 2s.
    pub backoff_max: Duration,
    /// Connect and response timeout. Default: 2s.
    pub timeout: Duration,
    /// Interval of the health check `PING`. Default: 1s.
    pub ping_interval: Duration,
    /// Feed lease expiry (two feeds must not publish one symbol). Default: 10s.
    pub lease: Duration,
    /// Ticks queued between a feed and the publishing task. Default: 65536.
    pub publish_queue: usize,
    /// PEM file of the CAs trusted for `rediss://` servers; when given, only these are.
    /// Default: none (the system's trusted roots).
    pub ca_file: Option<std::path::PathBuf>,
}

impl RedisConfig {
    /// A configuration with the defaults for `mode`.
    pub fn new(mode: RedisMode) -> RedisConfig {
        RedisConfig {
            mode,
            prefix: "tickstream:".into(),
            history: 10_000,
            backoff_max: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(1),
            lease: Duration::from_secs(10),
            publish_queue: 65_536,
            ca_file: None,
        }
    }

    /// One server at `url`.
    pub fn single(url: &str) -> RedisConfig {
        RedisConfig::new(RedisMode::Single(url.to_owned()))
    }

    /// A cluster reached through `seeds`.
    pub fn cluster<S: AsRef<str>>(seeds: &[S]) -> RedisConfig {
        RedisConfig::new(RedisMode::Cluster(
            seeds.iter().map(|s| s.as_ref().to_owned()).collect(),
        ))
    }

    /// The reconnection backoff: windows from 50ms doubling up to
    /// [`RedisConfig::backoff_max`], full jitter, retried for ever.
    pub fn backoff(&self) -> BackoffConfig {
        let base = Duration::from_millis(50);
        BackoffConfig {
            base,
            cap: self.backoff_max.max(base),
            max_attempts: 0,
        }
    }

    /// Where Redis is, for messages.
    pub fn describe(&self) -> String {
        match &self.mode {
            RedisMode::Single(u) => shards::host_port(u),
            RedisMode::Cluster(s) => format!(
                "cluster {}",
                s.iter()
                    .map(|u| shards::host_port(u))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// Names of a symbol's channel and keys.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }
    /// `<prefix>tick:{S}`.
    pub fn channel(&self, s: &str) -> String {
        format!("{}tick:{{{s}}}", self.prefix)
    }
    /// `<prefix>last:{S}`.
    pub fn last(&self, s: &str) -> String {
        format!("{}last:{{{s}}}", self.prefix)
    }
    /// `<prefix>hist:{S}`.
    pub fn hist(&self, s: &str) -> String {
        format!("{}hist:{{{s}}}", self.prefix)
    }
    /// `<prefix>owner:{S}`.
    pub fn owner(&self, s: &str) -> String {
        format!("{}owner:{{{s}}}", self.prefix)
    }
}

/// Counters of the node side of the Redis bus.
#[derive(Debug, Default)]
pub struct RedisBusStats {
    /// Ticks received from Redis.
    pub received: AtomicU64,
    /// Messages that were not a valid tick object.
    pub malformed: AtomicU64,
    /// Reconnections to Redis.
    pub reconnects: AtomicU64,
}

struct Inner {
    cfg: RedisConfig,
    keys: Keys,
    hub: Arc<Hub>,
    links: RwLock<Option<Arc<Links>>>,
    /// The symbols whose channels the node watches (the node decides when), subscribed
    /// again after a reconnection. Never held across a Redis call.
    watched: Mutex<HashSet<Symbol>>,
    healthy: AtomicBool,
    broken: Notify,
    generation: AtomicU64,
    stats: RedisBusStats,
    /// Ticks read from Redis and not yet handed to the hub.
    arrived: Mutex<Vec<Arc<Entry>>>,
    /// Notified when `arrived` stops being empty.
    arrived_ready: Notify,
    /// Held while a batch goes to the hub, so that batches keep their order.
    forwarding: Mutex<()>,
}

impl Inner {
    /// Hands every tick read so far to the hub, as one batch, in arrival order.
    fn forward(&self) {
        let _order = self.forwarding.lock();
        let batch = std::mem::take(&mut *self.arrived.lock());
        if !batch.is_empty() {
            self.hub.publish_entries(batch);
        }
    }
}

/// Forwards what the subscription connections read to the hub, a batch at a time,
/// until the bus stops.
async fn forward(inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = inner.arrived_ready.notified() => inner.forward(),
        }
    }
}

struct Links {
    shards: Shards,
}

/// The node side of the Redis bus (and, when the node runs a feed, its publisher).
pub struct RedisBus {
    inner: Arc<Inner>,
    publisher: Option<RedisPublisher>,
    stop: CancellationToken,
}

impl RedisBus {
    /// Connects a node's hub to Redis, failing fast with a clear message when it is
    /// unreachable, and starts the reconnecting supervisor. With `feed_id`, the node
    /// also publishes (its own feed's ticks) under that feed id.
    pub async fn connect(
        cfg: RedisConfig,
        hub: Arc<Hub>,
        feed_id: Option<&str>,
    ) -> Result<RedisBus, BusError> {
        let inner = Arc::new(Inner {
            keys: Keys::new(&cfg.prefix),
            cfg,
            hub,
            links: RwLock::new(None),
            watched: Mutex::new(HashSet::new()),
            healthy: AtomicBool::new(false),
            broken: Notify::new(),
            generation: AtomicU64::new(0),
            stats: RedisBusStats::default(),
            arrived: Mutex::new(Vec::new()),
            arrived_ready: Notify::new(),
            forwarding: Mutex::new(()),
        });
        let links = connect_links(&inner)
            .await
            .map_err(|e| BusError::Unavailable(shards::startup_error(&inner.cfg, &e)))?;
        *inner.links.write() = Some(Arc::new(links));
        inner.healthy.store(true, Ordering::Release);
        let publisher = match feed_id {
            Some(id) => Some(RedisPublisher::connect(&inner.cfg, id).await?),
            None => None,
        };
        let stop = CancellationToken::new();
        tokio::spawn(supervise(inner.clone(), stop.clone()));
        tokio::spawn(forward(inner.clone(), stop.clone()));
        Ok(RedisBus {
            inner,
            publisher,
            stop,
        })
    }

    /// Counters.
    pub fn stats(&self) -> &RedisBusStats {
        &self.inner.stats
    }

    /// The publisher of this node's own feed, if it has one.
    pub fn publisher(&self) -> Option<&RedisPublisher> {
        self.publisher.as_ref()
    }

    /// `host:port` of the Redis server holding `symbol` (its shard in a cluster).
    pub fn server_of(&self, symbol: &str) -> Option<String> {
        let links = self.inner.links.read().clone()?;
        Some(
            links.shards.list[links.shards.index_of(symbol)]
                .addr
                .clone(),
        )
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.stop.cancel();
        // Breaking the reference cycle through the connections' push handlers.
        *self.inner.links.write() = None;
    }
}

async fn connect_links(inner: &Arc<Inner>) -> redis::RedisResult<Links> {
    let gen = inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
    let weak = Arc::downgrade(inner);
    let make = move |_shard: usize| -> Box<dyn redis::aio::AsyncPushSender> {
        let weak = weak.clone();
        Box::new(move |info: PushInfo| -> Result<(), ()> {
            on_push(&weak, gen, info);
            Ok(())
        })
    };
    let shards = Shards::connect(&inner.cfg, Some(make)).await?;
    Ok(Links { shards })
}

/// Handles what a subscription connection receives: ticks are checked and queued for
/// the hub (see [`forward`]).
fn on_push(weak: &Weak<Inner>, gen: u64, info: PushInfo) {
    let Some(inner) = weak.upgrade() else {
        return;
    };
    match info.kind {
        PushKind::Message | PushKind::SMessage => {
            let Some(Value::BulkString(payload)) = info.data.into_iter().nth(1) else {
                inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            match arrival(&inner.hub, payload) {
                Some(entry) => {
                    inner.stats.received.fetch_add(1, Ordering::Relaxed);
                    let m = crate::metrics::global();
                    m.ingested(crate::metrics::Source::Redis);
                    let lag = crate::tick::now_ns().saturating_sub(entry.tick.ts);
                    m.bus_lag_ns.store(lag, Ordering::Relaxed);
                    let mut arrived = inner.arrived.lock();
                    let first = arrived.is_empty();
                    arrived.push(entry);
                    drop(arrived);
                    if first {
                        inner.arrived_ready.notify_one();
                    }
                }
                None => {
                    inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        PushKind::Disconnection if inner.generation.load(Ordering::Acquire) == gen => {
            inner.healthy.store(false, Ordering::Release);
            inner.broken.notify_one();
        }
        _ => {}
    }
}

/// A tick object as published into Redis, the fields borrowed from the payload.
#[derive(serde::Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    symbol: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    epoch: Option<std::borrow::Cow<'a, str>>,
    seq: u64,
    ts: u64,
    bid: f64,
    ask: f64,
    bid_size: u64,
    ask_size: u64,
    last: f64,
    last_size: u64,
    volume: u64,
    #[serde(default)]
    src_ts: Option<u64>,
}

thread_local! {
    /// The parse's scratch copy of a payload (simd-json rewrites what it parses) and its
    /// buffers, reused from one message to the next.
    static SCRATCH: std::cell::RefCell<(Vec<u8>, simd_json::Buffers)> =
        std::cell::RefCell::new((Vec::new(), simd_json::Buffers::new(512)));
}

/// Checks one payload read from Redis: it must be a whole, well-formed `tick` object.
/// The entry keeps the payload's bytes to forward when they are a `"type":"tick"`
/// object, else the tick encoded afresh. `None` when it is not a tick.
fn arrival(hub: &Hub, payload: Vec<u8>) -> Option<Arc<Entry>> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    let (tick, as_is) = SCRATCH.with(|cell| {
        let (scratch, buffers) = &mut *cell.borrow_mut();
        scratch.clear();
        scratch.extend_from_slice(&payload);
        let w: Wire<'_> = simd_json::serde::from_slice_with_buffers(scratch, buffers).ok()?;
        let symbol = match hub.symbol(&w.symbol) {
            Some(s) => s,
            None => Symbol::from(&*w.symbol),
        };
        let tick = Tick {
            symbol,
            epoch: w.epoch.as_deref().unwrap_or("").into(),
            seq: w.seq,
            ts: w.ts,
            bid: w.bid,
            ask: w.ask,
            bid_size: w.bid_size,
            ask_size: w.ask_size,
            last: w.last,
            last_size: w.last_size,
            volume: w.volume,
            src_ts: w.src_ts,
        };
        Some((tick, w.kind.as_deref() == Some("tick")))
    })?;
    Some(if as_is {
        Entry::forwarded(tick, Bytes::from(payload))
    } else {
        let json = Bytes::from(tick.to_json(Kind::Tick));
        Entry::forwarded(tick, json)
    })
}

/// Watches the links: a failed health check or a dropped connection starts the
/// reconnection, which ends with every wanted channel subscribed again and the missed
/// ranges announced.
async fn supervise(inner: Arc<Inner>, stop: CancellationToken) {
    let mut ping = tokio::time::interval(inner.cfg.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One backoff for the node's life: a Redis that drops the node again soon after a
    // reconnection is retried more slowly; one that stayed up a while starts afresh.
    let mut backoff = Backoff::new(inner.cfg.backoff());
    backoff.connected();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = inner.broken.notified() => {}
            _ = ping.tick() => {
                if ping_all(&inner).await {
                    continue;
                }
            }
        }
        inner.healthy.store(false, Ordering::Release);
        let old = inner.links.write().take();
        drop(old);
        tracing::warn!(redis = %inner.cfg.describe(), "lost Redis; clients stay connected, reconnecting");
        // Every watched symbol will need its missed range announced and a snapshot.
        let syms: Vec<Symbol> = inner.watched.lock().iter().cloned().collect();
        inner.hub.mark_stale(&syms);
        backoff.lost(inner.cfg.backoff_max);
        loop {
            let wait = backoff.failed();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match reconnect(&inner).await {
                Ok(()) => break,
                Err(e) => tracing::debug!(error = %e, "Redis reconnection failed"),
            }
        }
        backoff.connected();
        inner.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        crate::metrics::global()
            .bus_reconnects
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(redis = %inner.cfg.describe(), "Redis back; channels resubscribed");
    }
}

async fn ping_all(inner: &Inner) -> bool {
    let Some(links) = inner.links.read().clone() else {
        return false;
    };
    for shard in &links.shards.list {
        let mut conn = shard.conn.clone();
        let r = tokio::time::timeout(
            inner.cfg.timeout,
            redis::cmd("PING").query_async::<Value>(&mut conn),
        )
        .await;
        if !matches!(r, Ok(Ok(_))) {
            return false;
        }
    }
    true
}

async fn reconnect(inner: &Arc<Inner>) -> redis::RedisResult<()> {
    let links = connect_links(inner).await?;
    let syms: Vec<Symbol> = inner.watched.lock().iter().cloned().collect();
    subscribe(inner, &links, &syms, true).await?;
    let last = fetch_last(inner, &links, &syms).await?;
    inner.forward();
    for (s, t) in syms.iter().zip(last) {
        inner.hub.resync(s, t);
    }
    *inner.links.write() = Some(Arc::new(links));
    inner.healthy.store(true, Ordering::Release);
    // A symbol watched while the new links were being made (its watch failed, the
    // links were down) is subscribed by the session's retry; one unwatched meanwhile
    // was subscribed here for nothing: drop it.
    let gone: Vec<Symbol> = {
        let watched = inner.watched.lock();
        syms.into_iter().filter(|s| !watched.contains(s)).collect()
    };
    let links = inner.links.read().clone();
    if let Some(links) = links {
        let _ = subscribe(inner, &links, &gone, false).await;
    }
    Ok(())
}

/// (Un)subscribes the channels of `symbols`: one command per server, or in cluster mode
/// one pipeline of single-slot `SSUBSCRIBE`s per master.
async fn subscribe(
    inner: &Inner,
    links: &Links,
    symbols: &[Symbol],
    on: bool,
) -> redis::RedisResult<()> {
    if symbols.is_empty() {
        return Ok(());
    }
    let shards = &links.shards;
    let mut per: Vec<Vec<String>> = vec![Vec::new(); shards.list.len()];
    for s in symbols {
        per[shards.index_of(s)].push(inner.keys.channel(s));
    }
    for (i, channels) in per.into_iter().enumerate() {
        if channels.is_empty() {
            continue;
        }
        let mut conn = shards.list[i].conn.clone();
        if shards.sharded {
            let mut p = redis::pipe();
            for c in &channels {
                p.cmd(if on { "SSUBSCRIBE" } else { "SUNSUBSCRIBE" }).arg(c);
            }
            let replies: Vec<Value> = p.query_async(&mut conn).await?;
            if let Some(Value::ServerError(e)) =
                replies.iter().find(|v| matches!(v, Value::ServerError(_)))
            {
                return Err(redis::RedisError::from(e.clone()));
            }
        } else if on {
            conn.subscribe(&channels).await?;
        } else {
            conn.unsubscribe(&channels).await?;
        }
    }
    Ok(())
}

/// The `last:` value of each symbol, in order: `MGET` on one server, one pipeline of
/// `GET`s per master in a cluster.
async fn fetch_last(
    inner: &Inner,
    links: &Links,
    symbols: &[Symbol],
) -> redis::RedisResult<Vec<Option<Tick>>> {
    let mut out: Vec<Option<Tick>> = vec![None; symbols.len()];
    if symbols.is_empty() {
        return Ok(out);
    }
    let shards = &links.shards;
    let mut per: Vec<Vec<usize>> = vec![Vec::new(); shards.list.len()];
    for (k, s) in symbols.iter().enumerate() {
        per[shards.index_of(s)].push(k);
    }
    for (i, idx) in per.into_iter().enumerate() {
        if idx.is_empty() {
            continue;
        }
        let mut conn = shards.list[i].conn.clone();
        let values: Vec<Value> = if shards.sharded {
            let mut p = redis::pipe();
            for &k in &idx {
                p.cmd("GET").arg(inner.keys.last(&symbols[k]));
            }
            p.query_async(&mut conn).await?
        } else {
            let keys: Vec<String> = idx.iter().map(|&k| inner.keys.last(&symbols[k])).collect();
            redis::cmd("MGET").arg(keys).query_async(&mut conn).await?
        };
        for (&k, v) in idx.iter().zip(values) {
            if let Value::BulkString(mut b) = v {
                match decode_tick(&mut b) {
                    Some(t) if *t.symbol == *symbols[k] => out[k] = Some(t),
                    _ => {
                        inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Reads `hist:` after the given seqs, one pipeline of `XRANGE` per server.
async fn fetch_history(
    inner: &Inner,
    links: &Links,
    wants: &[(Symbol, u64)],
) -> redis::RedisResult<Vec<Vec<Tick>>> {
    let mut out: Vec<Vec<Tick>> = vec![Vec::new(); wants.len()];
    let shards = &links.shards;
    let mut per: Vec<Vec<usize>> = vec![Vec::new(); shards.list.len()];
    for (k, (s, _)) in wants.iter().enumerate() {
        per[shards.index_of(s)].push(k);
    }
    for (i, idx) in per.into_iter().enumerate() {
        if idx.is_empty() {
            continue;
        }
        let mut p = redis::pipe();
        for &k in &idx {
            let (s, after) = &wants[k];
            p.cmd("XRANGE")
                .arg(inner.keys.hist(s))
                .arg(format!("({after}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(inner.cfg.history);
        }
        let mut conn = shards.list[i].conn.clone();
        let values: Vec<Value> = p.query_async(&mut conn).await?;
        for (&k, v) in idx.iter().zip(values) {
            let Value::Array(entries) = v else { continue };
            for e in entries {
                if let Some(t) = stream_tick(e) {
                    if *t.symbol == *wants[k].0 {
                        out[k].push(t);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The tick in one stream entry `[id, [field, value, …]]`.
fn stream_tick(entry: Value) -> Option<Tick> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let fields = parts.into_iter().nth(1)?;
    let mut payload = match fields {
        Value::Array(f) => f.into_iter().nth(1)?,
        Value::Map(m) => m.into_iter().next()?.1,
        _ => return None,
    };
    match &mut payload {
        Value::BulkString(b) => decode_tick(b),
        _ => None,
    }
}

/// A tick object as stored and published in Redis (parsed in place with simd-json).
fn decode_tick(json: &mut [u8]) -> Option<Tick> {
    simd_json::serde::from_slice::<Tick>(json).ok()
}

/// Whether Redis Cluster sent the request elsewhere (the slot map is out of date).
pub(crate) fn is_redirect(e: &redis::RedisError) -> bool {
    is_redirect_code(e.code())
}

/// Whether an error code is a cluster redirection (`MOVED`, `ASK`) or a cluster between
/// slot maps (`CLUSTERDOWN`): the only check of it, for commands and pipeline replies.
pub(crate) fn is_redirect_code(code: Option<&str>) -> bool {
    matches!(code, Some("MOVED" | "ASK" | "CLUSTERDOWN"))
}

fn unavailable(inner: &Inner, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("Redis at {}: {e}", inner.cfg.describe()))
}

impl Bus for RedisBus {
    fn publish(&self, tick: Tick) -> Result<(), BusError> {
        match &self.publisher {
            Some(p) => p.publish(tick),
            None => Err(BusError::Unavailable(
                "this node runs no feed; publish with a feed process".into(),
            )),
        }
    }

    fn watch<'a>(&'a self, symbols: &'a [Symbol]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            if symbols.is_empty() {
                return Ok(());
            }
            let links = inner
                .links
                .read()
                .clone()
                .ok_or_else(|| unavailable(inner, "down, reconnecting"))?;
            inner.watched.lock().extend(symbols.iter().cloned());
            let undo = || {
                let mut watched = inner.watched.lock();
                for s in symbols {
                    watched.remove(s);
                }
            };
            if let Err(e) = subscribe(inner, &links, symbols, true).await {
                if is_redirect(&e) {
                    // The cluster's slots moved: reconnect, which reads the map again.
                    inner.broken.notify_one();
                }
                undo();
                let _ = subscribe(inner, &links, symbols, false).await;
                return Err(unavailable(inner, e));
            }
            match fetch_last(inner, &links, symbols).await {
                Ok(last) => {
                    inner.forward();
                    for t in last.into_iter().flatten() {
                        inner.hub.seed(t);
                    }
                    Ok(())
                }
                Err(e) => {
                    undo();
                    let _ = subscribe(inner, &links, symbols, false).await;
                    Err(unavailable(inner, e))
                }
            }
        })
    }

    fn unwatch<'a>(&'a self, symbols: &'a [Symbol]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let inner = &*self.inner;
            {
                let mut watched = inner.watched.lock();
                for s in symbols {
                    watched.remove(s);
                }
            }
            let links = inner.links.read().clone();
            if let Some(links) = links {
                if let Err(e) = subscribe(inner, &links, symbols, false).await {
                    // The reconnection subscribes only what is watched; until then the
                    // hub receives a few ticks nobody here wants.
                    tracing::warn!(error = %e, "unsubscribing from Redis failed");
                }
            }
        })
    }

    fn history<'a>(
        &'a self,
        wants: &'a [(Symbol, u64)],
    ) -> BoxFuture<'a, Result<Vec<Vec<Tick>>, BusError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            let links = inner
                .links
                .read()
                .clone()
                .ok_or_else(|| unavailable(inner, "down, reconnecting"))?;
            fetch_history(inner, &links, wants)
                .await
                .map_err(|e| unavailable(inner, e))
        })
    }

    fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire)
            && self.publisher.as_ref().is_none_or(|p| p.healthy())
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(p) = &self.publisher {
                p.close().await;
            }
            self.stop.cancel();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub::new(["AAPL".into(), "EUR/USD".into()], 4)
    }

    const TICK: &str = r#"{"type":"tick","symbol":"AAPL","epoch":"e1","seq":7,"ts":5,"bid":1.5,"ask":1.75,"bid_size":1,"ask_size":2,"last":1.5,"last_size":3,"volume":9}"#;

    #[test]
    fn a_tick_payload_is_forwarded_as_it_arrived() {
        let e = arrival(&hub(), TICK.as_bytes().to_vec()).unwrap();
        assert_eq!(&e.json[..], TICK.as_bytes());
        assert_eq!(
            (&*e.tick.symbol, &*e.tick.epoch, e.tick.seq),
            ("AAPL", "e1", 7)
        );
        assert_eq!((e.tick.bid, e.tick.ask, e.tick.volume), (1.5, 1.75, 9));
        // Escapes are read, and the bytes forwarded untouched.
        let escaped = TICK.replace("AAPL", r#"EUR\/USD"#);
        let e = arrival(&hub(), escaped.clone().into_bytes()).unwrap();
        assert_eq!(&*e.tick.symbol, "EUR/USD");
        assert_eq!(&e.json[..], escaped.as_bytes());
    }

    #[test]
    fn a_payload_without_its_type_is_encoded_afresh() {
        let bare = TICK.replace(r#""type":"tick","#, "");
        let e = arrival(&hub(), bare.into_bytes()).unwrap();
        assert!(e.json.starts_with(br#"{"type":"tick","symbol":"AAPL""#));
        assert_eq!(e.tick.seq, 7);
    }

    #[test]
    fn what_is_not_one_whole_tick_object_is_refused() {
        let bad = [
            format!("{TICK} x"),
            format!("{TICK}{TICK}"),
            format!("[{TICK}]"),
            TICK.replace(r#""seq":7"#, r#""seq":"7""#),
            TICK.replace(r#","volume":9"#, ""),
            TICK[..TICK.len() - 1].to_owned(),
            r#"["AAPL","e1",7,5,1.5,1.75,1,2,1.5,3,9]"#.to_owned(),
            String::new(),
        ];
        for b in bad {
            assert!(arrival(&hub(), b.clone().into_bytes()).is_none(), "{b}");
        }
    }
}
