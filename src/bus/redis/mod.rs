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
//! | `tickstream:bars:{S}:<interval>` | sorted set of closed bars by start; see [`bars`] |
//! | `tickstream:forming:{S}` | string; the forming bars and the tick they continue; see [`bars`] |
//! | `tickstream:owner:{S}` | string; id of the feed publishing `S` (a lease with expiry) |
//! | `tickstream:feeds` | channel (plain Pub/Sub, every master); the feeds' heartbeats ([`feeds`]) |
//! | `tickstream:feed:{ID}` | string; the running instance of feed `ID` (expires after three heartbeats) |
//! | `tickstream:book:{S}` | channel; payload one `book` or `book_update` object ([`books`]) |
//! | `tickstream:booksnap:{S}` | string; the whole current book, a `book` object ([`books`]) |
//! | `tickstream:bookhist:{S}` | stream of the recent book messages of the current epoch, with what undoes each, trimmed to about `--redis-book-history` entries ([`books`]) |
//!
//! A node keeps, per server (per master of a cluster), one connection for commands and
//! one that carries only its subscriptions ([`link`]), so a push is never read as a reply.
//! The node tells the bus when to watch a symbol (its first local subscriber) and when to
//! stop (the last one left). How the subscriptions are kept through reconnections,
//! slot migrations and failovers is [`subscriber`]'s; where each symbol lives, and how
//! redirections are followed per slot, [`topology`]'s.
//!
//! What the node reads is checked like what a publisher pushes ([`arrival`]) and handed
//! to the hub in batches by the link's reader, one batch per read: nothing waits between
//! the socket and the hub but the frame being read.
//!
//! When Redis goes away the node keeps its clients, marks the symbols of that server
//! stale (`status`), reports unhealthy, reconnects with capped, jittered exponential
//! backoff, resubscribes and, per symbol, announces what it missed (`gap` reason
//! `upstream`) and sends a fresh `snapshot`, then `status` live.

pub mod arrival;
pub mod bars;
pub mod books;
mod candles;
pub mod feeds;
pub mod link;
mod publisher;
pub mod resp;
pub mod shards;
mod subscriber;
pub mod topology;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{BatchError, BoxFuture, Bus, BusError, Topic};
use crate::backoff::BackoffConfig;
use crate::book::BookMsg;
use crate::hub::book::BookBase;
use crate::hub::candles::{Bar, Interval};
use crate::hub::Hub;
use crate::protocol::ResumeFrom;
use crate::tick::{Symbol, Tick};
pub use publisher::{Conflict, PublisherStats, RedisPublisher};

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
    /// Closed bars kept in each `bars:` set. Default: 1000.
    pub bars: usize,
    /// Book messages kept (about) in each `bookhist:` stream. Default: 1024.
    pub book_history: usize,
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
    /// Largest payload a node reads from Redis; a larger message is dropped unread and
    /// counted. Default: 65536.
    pub max_payload: usize,
    /// Interval of a feed's heartbeat on the feeds' channel; a feed silent for three is
    /// taken for lost. Default: 500ms.
    pub heartbeat: Duration,
}

impl RedisConfig {
    /// A configuration with the defaults for `mode`.
    pub fn new(mode: RedisMode) -> RedisConfig {
        RedisConfig {
            mode,
            prefix: "tickstream:".into(),
            history: 10_000,
            bars: 1000,
            book_history: 1024,
            backoff_max: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(1),
            lease: Duration::from_secs(10),
            publish_queue: 65_536,
            ca_file: None,
            max_payload: 65_536,
            heartbeat: Duration::from_millis(500),
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
    /// `<prefix>tick:`, what every tick channel's name starts with.
    pub fn tick_prefix(&self) -> String {
        format!("{}tick:", self.prefix)
    }
    /// `<prefix>feeds`: the channel of the feeds' heartbeats.
    pub fn feeds(&self) -> String {
        format!("{}feeds", self.prefix)
    }
    /// `<prefix>feed:{ID}`: the running instance of feed `ID`.
    pub fn feed(&self, id: &str) -> String {
        format!("{}feed:{{{id}}}", self.prefix)
    }
}

/// Counters of the node side of the Redis bus.
#[derive(Debug, Default)]
pub struct RedisBusStats {
    /// Ticks and book messages received from Redis.
    pub received: AtomicU64,
    /// Messages that were not a valid tick object, or larger than `max_payload`.
    pub malformed: AtomicU64,
    /// Ticks of another symbol than their channel's.
    pub wrong_channel: AtomicU64,
    /// Ticks whose fields failed the checks (seq out of range, bad price…).
    pub refused: AtomicU64,
    /// Reconnections to Redis.
    pub reconnects: AtomicU64,
}

/// The node side of the Redis bus (and, when the node runs a feed, its publisher).
pub struct RedisBus {
    inner: Arc<subscriber::Inner>,
    publisher: Option<RedisPublisher>,
    stop: CancellationToken,
}

impl RedisBus {
    /// Connects a node's hub to Redis, failing fast with a clear message when it is
    /// unreachable, and starts the tasks that keep its subscriptions. With `feed_id`,
    /// the node also publishes (its own feed's ticks) under that feed id.
    pub async fn connect(
        cfg: RedisConfig,
        hub: Arc<Hub>,
        feed_id: Option<&str>,
    ) -> Result<RedisBus, BusError> {
        let stop = CancellationToken::new();
        let publisher = match feed_id {
            Some(id) => Some(RedisPublisher::connect(&cfg, id).await?),
            None => None,
        };
        let inner = subscriber::start(cfg, hub, stop.clone()).await?;
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
        Some(self.inner.server_of(symbol))
    }

    /// Times a watched symbol was routed to another server (a slot moved).
    pub fn reroutes(&self) -> u64 {
        self.inner.reroutes()
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Whether an error code is a cluster redirection (`MOVED`, `ASK`) or a cluster between
/// slot maps (`CLUSTERDOWN`): the only check of it, for commands and pipeline replies.
pub(crate) fn is_redirect_code(code: Option<&str>) -> bool {
    matches!(code, Some("MOVED" | "ASK" | "CLUSTERDOWN"))
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

    fn sources_lost(&self, symbols: &[Symbol]) {
        // Said in the feed's heartbeat: every node, this one too, hears it.
        if let Some(p) = &self.publisher {
            p.lost(symbols);
        }
    }

    fn watch<'a>(&'a self, symbols: &'a [Symbol]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if symbols.is_empty() {
                return Ok(());
            }
            self.inner.watch(Topic::Ticks, symbols).await
        })
    }

    fn unwatch<'a>(&'a self, symbols: &'a [Symbol]) -> BoxFuture<'a, ()> {
        Box::pin(self.inner.unwatch(Topic::Ticks, symbols))
    }

    fn carries_books(&self) -> bool {
        true
    }

    fn publish_books(&self, books: Vec<BookMsg>) -> Result<(), BatchError> {
        let Some(p) = &self.publisher else {
            let error = BusError::Unavailable(
                "this node runs no feed; publish books with a feed process".into(),
            );
            return match books.is_empty() {
                true => Ok(()),
                false => Err(BatchError {
                    published: 0,
                    error,
                }),
            };
        };
        let hub_books = self.inner.hub.books();
        let max = hub_books.settings().max_levels;
        for (published, m) in books.iter().enumerate() {
            let spec = hub_books.spec(&m.symbol).ok_or_else(|| BatchError {
                published,
                error: BusError::Unavailable(format!("no book is kept of {}", m.symbol)),
            })?;
            p.publish_book(m, spec, max)
                .map_err(|error| BatchError { published, error })?;
        }
        Ok(())
    }

    fn watch_books<'a>(&'a self, symbols: &'a [Symbol]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if symbols.is_empty() {
                return Ok(());
            }
            self.inner.watch(Topic::Book, symbols).await
        })
    }

    fn unwatch_books<'a>(&'a self, symbols: &'a [Symbol]) -> BoxFuture<'a, ()> {
        Box::pin(self.inner.unwatch(Topic::Book, symbols))
    }

    fn history<'a>(
        &'a self,
        wants: &'a [(Symbol, u64)],
    ) -> BoxFuture<'a, Result<Vec<Vec<Tick>>, BusError>> {
        Box::pin(self.inner.history(wants))
    }

    fn book_bases<'a>(
        &'a self,
        wants: &'a [(Symbol, ResumeFrom)],
    ) -> BoxFuture<'a, Result<Vec<Option<Box<BookBase>>>, BusError>> {
        Box::pin(self.inner.book_bases(wants))
    }

    fn bars<'a>(
        &'a self,
        wants: &'a [(Symbol, Interval)],
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<Vec<Bar>>, BusError>> {
        Box::pin(self.inner.bars(wants, n))
    }

    fn healthy(&self) -> bool {
        self.inner.healthy() && self.publisher.as_ref().is_none_or(|p| p.healthy())
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
