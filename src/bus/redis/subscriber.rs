//! The node's side of the Redis bus: which channels it holds, on which server, and
//! keeping them through reconnections and topology changes.
//!
//! Every server (every master of a cluster) has a [`Shard`]: a subscription link made
//! and remade by its own task with capped, jittered backoff. A watched symbol is routed
//! to the shard of its slot's master; the shard subscribes it, and after every
//! (re)subscription the node reads the symbol's `last:` and `owner:` keys, announces what
//! it missed (`gap` + `snapshot`) and marks it live again.
//!
//! What can take a channel away, and what follows:
//!
//! - the link breaks (the server stopped, restarted, or a health check failed): the
//!   shard's symbols are marked stale (reason `bus`) until the link is made again, only
//!   that shard's;
//! - Redis unsubscribes a channel by itself (a slot moved: a migration's `CLUSTER SETSLOT
//!   … NODE`, a failover): that symbol is marked stale (reason `channel`) and routed
//!   again at once;
//! - a subscription is answered with a redirection: the slot is routed again.
//!
//! A symbol's book is watched apart from its ticks, on its own channel in the same hash
//! tag (so on the same shard); what is routed is a [`Watch`], a symbol's ticks or its
//! book. After every (re)subscription of a book the node reads its snapshot through the
//! [`Gate`] ([`super::books`]).
//!
//! Routing again reads the slot map from a master that answers, moves each symbol whose
//! slot changed master to the new master's shard (making the shard when the master is
//! new), and retries every 100 ms while anything is left unrouted or a shard cannot
//! connect (a master killed under its replica is replaced once the replica is
//! promoted). One moved slot never touches the other symbols.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::arrival::{self, Dropped};
use super::books::{self, Gate};
use super::candles;
use super::feeds::{Beat, Liveness, State};
use super::link::{self, Handler, Link, LinkConfig, LinkError, LinkReader};
use super::topology::{parse_redirect_line, Topology};
use super::{Keys, RedisBusStats, RedisConfig};
use crate::backoff::Backoff;
use crate::book::BookMsg;
use crate::bus::{BusError, Topic};
use crate::hub::book::BookBase;
use crate::hub::candles::{Bar, Interval};
use crate::hub::{Cause, Entry, Hub};
use crate::protocol::ResumeFrom;
use crate::tick::{Symbol, Tick};

/// How often routing is tried again while something is left unrouted.
const REROUTE_EVERY: Duration = Duration::from_millis(100);

/// How long a slot map that still names the server that dropped a channel is taken for
/// out of date (after that, the server is believed: it may have been restarted).
const MAP_SETTLES: Duration = Duration::from_secs(2);

/// Times a book's snapshot is read before its messages are let through unrepaired.
const BOOK_READS: usize = 20;

/// How often the feeds' silence is judged.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// How often the owners of the watched symbols are read again.
const OWNERS_EVERY: Duration = Duration::from_secs(2);

/// How often the owner of a symbol watched recently and not known yet is read (its feed
/// may have claimed it just after the node started watching).
const OWNERS_SOON: Duration = Duration::from_millis(250);

/// How long a symbol without a known owner is read at [`OWNERS_SOON`].
const OWNERS_SOON_FOR: Duration = Duration::from_secs(5);

/// What is routed and subscribed: a symbol's ticks, or its book.
pub(crate) type Watch = (Topic, Symbol);

/// The symbols of the watches of `topic` among `watches`.
fn of(topic: Topic, watches: &[Watch]) -> Vec<Symbol> {
    watches
        .iter()
        .filter(|w| w.0 == topic)
        .map(|w| w.1.clone())
        .collect()
}

/// Each symbol of `watches` once.
fn symbols_of(watches: &[Watch]) -> Vec<Symbol> {
    let mut out: Vec<Symbol> = watches.iter().map(|w| w.1.clone()).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// One server's subscription link and the symbols routed to it.
pub(crate) struct Shard {
    /// `host:port`.
    pub addr: String,
    url: String,
    link: RwLock<Option<Arc<Link>>>,
    /// Watched symbols routed here: subscribed while the link is up, and again whenever
    /// it is made again.
    symbols: Mutex<HashSet<Watch>>,
    /// Whether the link is up and listening to the feeds' channel.
    listening: std::sync::atomic::AtomicBool,
}

impl Shard {
    fn link(&self) -> Option<Arc<Link>> {
        self.link.read().clone()
    }
}

/// The state shared by the shards' tasks, the routing task and the bus.
pub(crate) struct Inner {
    pub cfg: RedisConfig,
    pub keys: Keys,
    pub hub: Arc<Hub>,
    pub topology: Topology,
    pub stats: RedisBusStats,
    shards: Mutex<HashMap<String, Arc<Shard>>>,
    /// Watched symbols and the shard each is routed to (its address).
    watched: Mutex<HashMap<Watch, String>>,
    /// Symbols that lost their route and wait for a new one, with the server that
    /// dropped them and when (a map that still names it is not believed for a while).
    unrouted: Mutex<HashMap<Watch, Option<(String, Instant)>>>,
    /// Book messages on their way to the hub, held while a snapshot is read.
    gate: Gate,
    /// The slot map may be out of date: read it again.
    suspect: std::sync::atomic::AtomicBool,
    wake: Notify,
    /// Told whenever a shard is made or its link is up: what waits for a link.
    link_up: Notify,
    liveness: Mutex<Liveness>,
    /// Watched symbols whose owner is not known yet, since when.
    unowned: Mutex<HashMap<Symbol, Instant>>,
    listeners: AtomicUsize,
    listening_since: Mutex<Option<Instant>>,
    stop: CancellationToken,
    /// The channel of the feeds' heartbeats.
    feeds_channel: String,
    reroutes: AtomicU64,
}

/// Connects to every server (failing fast), and starts the shards' tasks and the
/// routing task.
pub(crate) async fn start(
    cfg: RedisConfig,
    hub: Arc<Hub>,
    stop: CancellationToken,
) -> Result<Arc<Inner>, BusError> {
    let topology = Topology::connect(&cfg)
        .await
        .map_err(|e| BusError::Unavailable(super::shards::startup_error(&cfg, &e)))?;
    let keys = Keys::new(&cfg.prefix);
    let inner = Arc::new(Inner {
        feeds_channel: keys.feeds(),
        keys,
        hub,
        topology,
        stats: RedisBusStats::default(),
        shards: Mutex::new(HashMap::new()),
        watched: Mutex::new(HashMap::new()),
        unrouted: Mutex::new(HashMap::new()),
        gate: Gate::default(),
        suspect: std::sync::atomic::AtomicBool::new(false),
        wake: Notify::new(),
        link_up: Notify::new(),
        liveness: Mutex::new(Liveness::default()),
        unowned: Mutex::new(HashMap::new()),
        listeners: AtomicUsize::new(0),
        listening_since: Mutex::new(None),
        stop,
        reroutes: AtomicU64::new(0),
        cfg,
    });
    // Fail fast: every link is made once before the node starts.
    for server in inner.topology.servers() {
        let shard = inner.shard_for(&server.addr, &server.url);
        let (link, reader) = connect_link(&inner, &shard)
            .await
            .map_err(|e| BusError::Unavailable(format!("Redis at {}: {e}", shard.addr)))?;
        spawn_shard(inner.clone(), shard, Some((link, reader)));
    }
    tokio::spawn(route_loop(inner.clone()));
    tokio::spawn(liveness_loop(inner.clone()));
    let writer = inner.clone();
    tokio::spawn(async move {
        let (hub, stop) = (writer.hub.clone(), writer.stop.clone());
        candles::write_loop(writer.store(), hub, |s| writer.owned(s), stop).await
    });
    Ok(inner)
}

impl Inner {
    /// The shard of the server at `addr`, made when new (its task not started).
    fn shard_for(&self, addr: &str, url: &str) -> Arc<Shard> {
        self.shards
            .lock()
            .entry(addr.to_owned())
            .or_insert_with(|| {
                self.link_up.notify_waiters();
                Arc::new(Shard {
                    addr: addr.to_owned(),
                    url: url.to_owned(),
                    link: RwLock::new(None),
                    symbols: Mutex::new(HashSet::new()),
                    listening: std::sync::atomic::AtomicBool::new(false),
                })
            })
            .clone()
    }

    fn shard(&self, addr: &str) -> Option<Arc<Shard>> {
        self.shards.lock().get(addr).cloned()
    }

    /// Whether every server's link is up.
    pub fn healthy(&self) -> bool {
        let shards = self.shards.lock();
        !shards.is_empty() && shards.values().all(|s| s.link.read().is_some())
    }

    /// `host:port` of the server `symbol` is routed to.
    pub fn server_of(&self, symbol: &str) -> String {
        self.topology.server_of(symbol).addr.clone()
    }

    /// Times a symbol was routed to another server.
    pub fn reroutes(&self) -> u64 {
        self.reroutes.load(Ordering::Relaxed)
    }

    /// What a channel's name carries (ticks or a book) and its symbol, when it is one
    /// of those.
    fn channel_symbol<'a>(&self, channel: &'a [u8]) -> Option<(Topic, &'a str)> {
        let name = std::str::from_utf8(channel).ok()?;
        let (topic, rest) = match name.strip_prefix(self.keys.tick_prefix().as_str()) {
            Some(rest) => (Topic::Ticks, rest),
            None => (
                Topic::Book,
                name.strip_prefix(self.keys.book_prefix().as_str())?,
            ),
        };
        Some((topic, rest.strip_prefix('{')?.strip_suffix('}')?))
    }

    /// The channel of a watch.
    fn channel(&self, w: &Watch) -> String {
        match w.0 {
            Topic::Ticks => self.keys.channel(&w.1),
            Topic::Book => self.keys.book_channel(&w.1),
        }
    }

    /// The route of `symbols` is lost: marked stale with `reason`, routed again soon;
    /// `from`: the server that dropped them.
    fn unroute(&self, symbols: Vec<Watch>, reason: &'static str, from: Option<&str>) {
        if symbols.is_empty() {
            return;
        }
        self.hub.mark_stale(&of(Topic::Ticks, &symbols));
        self.hub.lost(&symbols_of(&symbols), Cause::Bus, reason);
        let dropped = from.map(|a| (a.to_owned(), Instant::now()));
        self.unrouted
            .lock()
            .extend(symbols.into_iter().map(|s| (s, dropped.clone())));
        self.suspect.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Starts watching `topic` of `symbols` (none watched now); see
    /// [`crate::bus::Bus::watch`] and [`crate::bus::Bus::watch_books`].
    pub async fn watch(self: &Arc<Self>, topic: Topic, symbols: &[Symbol]) -> Result<(), BusError> {
        let mut by_shard: HashMap<String, Vec<Watch>> = HashMap::new();
        for s in symbols {
            let server = self.topology.server_of(s);
            by_shard
                .entry(server.addr.clone())
                .or_default()
                .push((topic, s.clone()));
        }
        let mut done: Vec<(Arc<Shard>, Vec<Watch>)> = Vec::new();
        for (addr, syms) in by_shard {
            let result = self.watch_on(&addr, &syms).await;
            match result {
                Ok(shard) => done.push((shard, syms)),
                Err(e) => {
                    for (shard, syms) in done {
                        self.forget(&shard, &syms).await;
                    }
                    return Err(e);
                }
            }
        }
        if topic == Topic::Book {
            self.resync_books(symbols.to_vec()).await;
            return Ok(());
        }
        let all: Vec<Symbol> = symbols.to_vec();
        match self.read_state(&all).await {
            Ok(last) => {
                for t in last.into_iter().flatten() {
                    self.hub.seed(t);
                }
                self.store().restore(&self.hub, &all).await;
                Ok(())
            }
            Err(e) => {
                for (shard, syms) in done {
                    self.forget(&shard, &syms).await;
                }
                Err(self.unavailable(e))
            }
        }
    }

    /// The shard at `addr` and its link, waiting up to the Redis timeout while the link
    /// is being made (a node that just started sets its links up as it begins to serve;
    /// a link being made again). Cancel-safe: it takes nothing.
    async fn link_of(&self, addr: &str) -> Result<(Arc<Shard>, Arc<Link>), BusError> {
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        loop {
            // Registered before looking, so that a link made in between is not missed.
            let up = self.link_up.notified();
            tokio::pin!(up);
            up.as_mut().enable();
            let shard = self.shard(addr);
            if let Some((shard, link)) = shard.as_ref().and_then(|s| Some((s.clone(), s.link()?))) {
                return Ok((shard, link));
            }
            if tokio::time::timeout_at(deadline, up).await.is_err() {
                return Err(match shard {
                    None => self.unavailable(format!("{addr} is not connected yet")),
                    Some(_) => self.unavailable("down, reconnecting"),
                });
            }
        }
    }

    /// Subscribes `symbols` (all routed to `addr`) on that shard's link.
    async fn watch_on(&self, addr: &str, symbols: &[Watch]) -> Result<Arc<Shard>, BusError> {
        let (shard, link) = self.link_of(addr).await?;
        {
            let mut watched = self.watched.lock();
            let mut mine = shard.symbols.lock();
            for s in symbols {
                watched.insert(s.clone(), shard.addr.clone());
                mine.insert(s.clone());
            }
        }
        match self.subscribe(&link, symbols).await {
            Ok(refused) if refused.is_empty() => Ok(shard),
            Ok(refused) => {
                // A slot moved under us: those symbols are routed again; the rest is
                // subscribed. The caller sees a failure and may try again.
                self.unroute_refused(&shard, refused);
                self.forget(&shard, symbols).await;
                Err(self.unavailable("the cluster is moving slots; try again"))
            }
            Err(e) => {
                self.forget(&shard, symbols).await;
                Err(self.unavailable(e))
            }
        }
    }

    /// Drops `symbols` from the watched set and from `shard`, unsubscribing them.
    async fn forget(&self, shard: &Shard, symbols: &[Watch]) {
        {
            let mut watched = self.watched.lock();
            let mut mine = shard.symbols.lock();
            let mut unrouted = self.unrouted.lock();
            let mut live = self.liveness.lock();
            for w in symbols {
                watched.remove(w);
                mine.remove(w);
                unrouted.remove(w);
                if w.0 == Topic::Ticks {
                    live.forget(&w.1);
                }
            }
        }
        self.gate.forget(&of(Topic::Book, symbols));
        self.hub.candles().forget(&of(Topic::Ticks, symbols));
        if let Some(link) = shard.link() {
            let _ = self.unsubscribe(&link, symbols).await;
        }
    }

    /// Stops watching `topic` of `symbols`.
    pub async fn unwatch(&self, topic: Topic, symbols: &[Symbol]) {
        let mut by_shard: HashMap<String, Vec<Watch>> = HashMap::new();
        {
            let watched = self.watched.lock();
            for s in symbols {
                let w = (topic, s.clone());
                if let Some(addr) = watched.get(&w) {
                    by_shard.entry(addr.clone()).or_default().push(w);
                }
            }
        }
        for (addr, syms) in by_shard {
            match self.shard(&addr) {
                Some(shard) => self.forget(&shard, &syms).await,
                None => {
                    let mut watched = self.watched.lock();
                    for s in &syms {
                        watched.remove(s);
                    }
                }
            }
        }
    }

    /// Subscribes the channels of `symbols` on `link`, one command per slot (sharded)
    /// or one in all. Returns the symbols whose subscription was refused with a
    /// redirection, and their error lines. The messages of the books among them are
    /// held from now until their snapshot is read ([`Inner::resync`]).
    async fn subscribe(
        &self,
        link: &Link,
        symbols: &[Watch],
    ) -> Result<Vec<(Watch, String)>, LinkError> {
        self.gate.hold(&of(Topic::Book, symbols));
        let (command, groups, owners) = self.groups(symbols, true);
        let results = link.send(command, &groups).await?;
        let mut refused = Vec::new();
        for (result, syms) in results.into_iter().zip(owners) {
            if let Err(e) = result {
                refused.extend(syms.into_iter().map(|s| (s, e.clone())));
            }
        }
        Ok(refused)
    }

    async fn unsubscribe(&self, link: &Link, symbols: &[Watch]) -> Result<(), LinkError> {
        let (command, groups, _) = self.groups(symbols, false);
        link.send(command, &groups).await.map(|_| ())
    }

    /// The (un)subscribe command and its groups of channels: one group per slot in a
    /// cluster, one in all on a single server; with the symbols of each group.
    fn groups(
        &self,
        symbols: &[Watch],
        on: bool,
    ) -> (&'static str, Vec<Vec<String>>, Vec<Vec<Watch>>) {
        let sharded = self.topology.sharded();
        let command = match (sharded, on) {
            (true, true) => "SSUBSCRIBE",
            (true, false) => "SUNSUBSCRIBE",
            (false, true) => "SUBSCRIBE",
            (false, false) => "UNSUBSCRIBE",
        };
        if !sharded {
            let channels = symbols.iter().map(|w| self.channel(w)).collect();
            return (command, vec![channels], vec![symbols.to_vec()]);
        }
        let mut by_slot: HashMap<u16, (Vec<String>, Vec<Watch>)> = HashMap::new();
        for w in symbols {
            let e = by_slot.entry(super::shards::slot_of(&w.1)).or_default();
            e.0.push(self.channel(w));
            e.1.push(w.clone());
        }
        let (groups, owners) = by_slot.into_values().unzip();
        (command, groups, owners)
    }

    /// Symbols whose subscription was refused: a redirection routes them again; any
    /// other refusal is logged and they are routed again too (the map is read anew).
    fn unroute_refused(&self, shard: &Shard, refused: Vec<(Watch, String)>) {
        let mut syms = Vec::with_capacity(refused.len());
        {
            let mut mine = shard.symbols.lock();
            for (s, e) in refused {
                if parse_redirect_line(&e).is_none() {
                    tracing::warn!(symbol = %s.1, error = %e, redis = %shard.addr, "Redis refused a subscription");
                }
                mine.remove(&s);
                syms.push(s);
            }
        }
        self.unroute(syms, "channel", Some(&shard.addr));
    }

    /// Reads `last:` and `owner:` of `symbols`: the latest value of each (checked), and
    /// the owners recorded for the feeds' liveness.
    async fn read_state(&self, symbols: &[Symbol]) -> redis::RedisResult<Vec<Option<Tick>>> {
        let keys = &self.keys;
        let replies = self
            .topology
            .per_symbol(symbols, |s, p| {
                p.cmd("GET").arg(keys.last(s));
                p.cmd("GET").arg(keys.owner(s));
            })
            .await?;
        let mut out = Vec::with_capacity(symbols.len());
        let mut live = self.liveness.lock();
        let mut unowned = self.unowned.lock();
        let mut lost = Vec::new();
        for (s, r) in symbols.iter().zip(replies) {
            let mut r = r.into_iter();
            let last = match r.next() {
                Some(redis::Value::BulkString(mut b)) => {
                    let t = arrival::stored(s, &mut b);
                    if t.is_none() {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                    t
                }
                _ => None,
            };
            let owner = match r.next() {
                Some(redis::Value::BulkString(b)) => String::from_utf8(b).ok(),
                _ => None,
            };
            if owner.is_some() {
                unowned.remove(s);
            } else if !unowned.contains_key(s) {
                unowned.insert(s.clone(), Instant::now());
                // Read again soon: its feed may claim it in a moment.
                self.wake.notify_one();
            }
            if live.set_owner(s.clone(), owner) {
                lost.push(s.clone());
            }
            out.push(last);
        }
        drop((live, unowned));
        self.feeds_lost(lost);
        Ok(out)
    }

    /// After a (re)subscription of `watches`: what they missed is announced and they
    /// are live again. Symbols whose state cannot be read stay stale until their next
    /// tick.
    async fn resync(self: &Arc<Self>, watches: &[Watch]) {
        let books = of(Topic::Book, watches);
        if !books.is_empty() {
            self.resync_books(books).await;
        }
        let symbols = &of(Topic::Ticks, watches)[..];
        if symbols.is_empty() {
            return;
        }
        match self.read_state(symbols).await {
            Ok(last) => {
                for (s, t) in symbols.iter().zip(last) {
                    self.hub.resync(s, t);
                }
                self.store().restore(&self.hub, symbols).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the latest values after a resubscription failed")
            }
        }
    }

    /// Reads the snapshot of each of `symbols`' books (held by the gate since their
    /// subscription) and lets their messages through after it; reads again, after a
    /// wait, those whose held messages do not follow the snapshot read.
    pub async fn resync_books(self: &Arc<Self>, mut symbols: Vec<Symbol>) {
        for attempt in 0..BOOK_READS {
            if symbols.is_empty() || self.stop.is_cancelled() {
                return;
            }
            if attempt > 0 {
                tokio::time::sleep(REROUTE_EVERY).await;
            }
            let snaps = match self.read_books(&symbols).await {
                Ok(snaps) => snaps,
                Err(e) => {
                    tracing::debug!(error = %e, "reading book snapshots failed");
                    vec![None; symbols.len()]
                }
            };
            symbols = symbols
                .into_iter()
                .zip(snaps)
                .filter(|(s, snap)| self.gate.settle(&self.hub, s, snap.clone()))
                .map(|(s, _)| s)
                .collect();
        }
        // Let them through anyway: the next message that does not follow asks again.
        for s in &symbols {
            self.gate.forget(std::slice::from_ref(s));
        }
    }

    /// The `booksnap:` of each of `symbols`, checked.
    async fn read_books(&self, symbols: &[Symbol]) -> redis::RedisResult<Vec<Option<BookMsg>>> {
        let keys = &self.keys;
        let replies = self
            .topology
            .per_symbol(symbols, |s, p| {
                p.cmd("GET").arg(keys.book_snapshot(s));
            })
            .await?;
        Ok(symbols
            .iter()
            .zip(replies)
            .map(|(s, r)| match r.into_iter().next() {
                Some(redis::Value::BulkString(b)) => {
                    let snap = books::snapshot(&self.hub, s, &b);
                    if snap.is_none() {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                    snap
                }
                _ => None,
            })
            .collect())
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> BusError {
        BusError::Unavailable(format!("Redis at {}: {e}", self.cfg.describe()))
    }

    /// The ticks the bus still holds after each `(symbol, seq)`, in order.
    pub async fn history(&self, wants: &[(Symbol, u64)]) -> Result<Vec<Vec<Tick>>, BusError> {
        let syms: Vec<Symbol> = wants.iter().map(|(s, _)| s.clone()).collect();
        let after: HashMap<&Symbol, u64> = wants.iter().map(|(s, q)| (s, *q)).collect();
        let (keys, count) = (&self.keys, self.cfg.history);
        let replies = self
            .topology
            .per_symbol(&syms, |s, p| {
                xrange_after(p, keys.hist(s), after[s], count);
            })
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(syms
            .iter()
            .zip(replies)
            .map(|(s, r)| match r.into_iter().next() {
                Some(redis::Value::Array(entries)) => entries
                    .into_iter()
                    .filter_map(|e| arrival::stream_tick(s, e))
                    .collect(),
                _ => Vec::new(),
            })
            .collect())
    }

    /// For each `(symbol, position)`, the book a client resuming from there holds,
    /// rebuilt from `booksnap:` and `bookhist:` ([`books::base`]) when they reach it.
    pub async fn book_bases(
        &self,
        wants: &[(Symbol, ResumeFrom)],
    ) -> Result<Vec<Option<Box<BookBase>>>, BusError> {
        let syms: Vec<Symbol> = wants.iter().map(|(s, _)| s.clone()).collect();
        let after: HashMap<&Symbol, u64> = wants.iter().map(|(s, f)| (s, f.seq)).collect();
        let (keys, count) = (&self.keys, self.cfg.book_history.saturating_mul(2) + 128);
        let replies = self
            .topology
            .per_symbol(&syms, |s, p| {
                p.cmd("GET").arg(keys.book_snapshot(s));
                xrange_after(p, keys.book_history(s), after[s], count);
            })
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(wants
            .iter()
            .zip(replies)
            .map(|((s, from), r)| {
                let mut r = r.into_iter();
                let (Some(redis::Value::BulkString(snap)), Some(redis::Value::Array(entries))) =
                    (r.next(), r.next())
                else {
                    return None;
                };
                books::base(&self.hub, s, from, &snap, entries).map(Box::new)
            })
            .collect())
    }

    /// Where this node's bars are read and written.
    fn store(&self) -> candles::Store<'_> {
        candles::Store {
            topology: &self.topology,
            keys: &self.keys,
            history: self.cfg.history,
            keep: self.cfg.bars,
        }
    }

    /// The newest `n` closed bars the store holds for each `(symbol, interval)`.
    pub async fn bars(
        &self,
        wants: &[(Symbol, Interval)],
        n: usize,
    ) -> Result<Vec<Vec<Bar>>, BusError> {
        let (found, malformed) = self
            .store()
            .read(wants, n)
            .await
            .map_err(|e| self.unavailable(e))?;
        if malformed > 0 {
            self.stats
                .malformed
                .fetch_add(malformed as u64, Ordering::Relaxed);
        }
        Ok(found)
    }

    /// Whether a tickstream feed holds the lease of `symbol` (and so writes its bars).
    pub fn owned(&self, symbol: &str) -> bool {
        self.liveness.lock().owned(symbol)
    }

    /// Adds to `out` those of `names` this node watches ticks of and `out` lacks.
    fn watched_ticks(&self, names: &[String], out: &mut Vec<Symbol>) {
        let watched = self.watched.lock();
        for name in names {
            let Some(sym) = self.hub.symbol(name) else {
                continue;
            };
            if !out.contains(&sym) && watched.contains_key(&(Topic::Ticks, sym.clone())) {
                out.push(sym);
            }
        }
    }

    /// Feeds heard or lost: `symbols` are stale, reason `feed`.
    fn feeds_lost(&self, symbols: Vec<Symbol>) {
        if !symbols.is_empty() {
            self.hub.lost(&symbols, Cause::Feed, "feed");
        }
    }

    /// A shard's link started (or stopped) listening to the feeds' channel.
    fn listening(&self, shard: &Shard, on: bool) {
        if shard.listening.swap(on, Ordering::AcqRel) == on {
            return;
        }
        let mut since = self.listening_since.lock();
        if on {
            if self.listeners.fetch_add(1, Ordering::AcqRel) == 0 {
                *since = Some(Instant::now());
            }
        } else if self.listeners.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = None;
        }
    }
}

/// Adds to `p` the read of stream `key`'s entries after id `<after>-0`, at most `count`.
fn xrange_after(p: &mut redis::Pipeline, key: String, after: u64, count: usize) {
    p.cmd("XRANGE")
        .arg(key)
        .arg(format!("({after}-0"))
        .arg("+")
        .arg("COUNT")
        .arg(count);
}

/// Connects a shard's link and subscribes the feeds' channel on it.
async fn connect_link(inner: &Inner, shard: &Shard) -> Result<(Arc<Link>, LinkReader), LinkError> {
    let cfg = LinkConfig {
        url: shard.url.clone(),
        ca_file: inner.cfg.ca_file.clone(),
        timeout: inner.cfg.timeout,
        max_payload: inner.cfg.max_payload,
    };
    let (link, reader) = link::connect(&cfg).await?;
    Ok((link, reader))
}

/// Starts a shard's task, with its first link when already made.
fn spawn_shard(inner: Arc<Inner>, shard: Arc<Shard>, first: Option<(Arc<Link>, LinkReader)>) {
    tokio::spawn(run_shard(inner, shard, first));
}

/// A shard's life: make the link, subscribe what is routed here, read until it breaks,
/// mark what it carried stale; again, with backoff, until the bus stops or the server
/// is no longer a master.
async fn run_shard(
    inner: Arc<Inner>,
    shard: Arc<Shard>,
    mut first: Option<(Arc<Link>, LinkReader)>,
) {
    let mut backoff = Backoff::new(inner.cfg.backoff());
    backoff.connected();
    let mut ever = false;
    loop {
        if inner.stop.is_cancelled() || inner.shard(&shard.addr).is_none() {
            return;
        }
        let made = match first.take() {
            Some(made) => Ok(made),
            None => connect_link(&inner, &shard).await,
        };
        match made {
            Ok((link, reader)) => {
                backoff.connected();
                if ever {
                    // The server may have restarted: its command connection too.
                    if let Err(e) = inner.topology.reopen(&shard.addr).await {
                        tracing::debug!(redis = %shard.addr, error = %e, "reopening the command connection failed");
                    }
                    inner.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::global()
                        .bus_reconnects
                        .fetch_add(1, Ordering::Relaxed);
                }
                ever = true;
                serve_link(&inner, &shard, link, reader).await;
                backoff.lost(inner.cfg.backoff_max);
            }
            Err(e) => {
                tracing::debug!(redis = %shard.addr, error = %e, "Redis link failed");
                // Perhaps it is no master any more: the routing task reads the map.
                inner.suspect.store(true, Ordering::Release);
                inner.wake.notify_one();
            }
        }
        let wait = backoff.failed();
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs one link: subscribes the feeds' channel and the shard's symbols, announces what
/// they missed, then reads and checks its health until it breaks.
async fn serve_link(inner: &Arc<Inner>, shard: &Arc<Shard>, link: Arc<Link>, reader: LinkReader) {
    let mut handler = ShardHandler {
        inner: inner.clone(),
        shard: shard.clone(),
        batch: Vec::new(),
        books: Vec::new(),
    };
    let reading = reader.run(&mut handler);
    tokio::pin!(reading);
    let setup = setup_link(inner, shard, &link);
    tokio::pin!(setup);
    // The reader runs while the setup waits for its confirmations.
    let why = tokio::select! {
        why = &mut reading => Some(why),
        ok = &mut setup => if ok { None } else { Some(LinkError::Broken("setup failed".into())) },
    };
    let why = match why {
        Some(why) => why,
        None => {
            tokio::select! {
                why = &mut reading => why,
                why = health(inner, &link) => why,
                _ = inner.stop.cancelled() => LinkError::Broken("stopping".into()),
            }
        }
    };
    *shard.link.write() = None;
    inner.listening(shard, false);
    if inner.stop.is_cancelled() {
        return;
    }
    let carried: Vec<Watch> = shard.symbols.lock().iter().cloned().collect();
    tracing::warn!(redis = %shard.addr, error = %why, symbols = carried.len(), "lost a Redis link; clients stay connected, reconnecting");
    if !carried.is_empty() {
        inner.hub.mark_stale(&of(Topic::Ticks, &carried));
        inner.hub.lost(&symbols_of(&carried), Cause::Bus, "bus");
    }
}

/// Subscribes the feeds' channel and every symbol routed to the shard, then installs the
/// link and announces what the symbols missed. False when the link broke meanwhile.
async fn setup_link(inner: &Arc<Inner>, shard: &Arc<Shard>, link: &Arc<Link>) -> bool {
    let feeds = vec![vec![inner.feeds_channel.clone()]];
    match link.send("SUBSCRIBE", &feeds).await {
        Ok(r) if r.iter().all(Result::is_ok) => inner.listening(shard, true),
        Ok(r) => {
            tracing::warn!(redis = %shard.addr, error = ?r, "cannot hear the feeds' heartbeats")
        }
        Err(_) => return false,
    }
    let symbols: Vec<Watch> = shard.symbols.lock().iter().cloned().collect();
    let refused = match inner.subscribe(link, &symbols).await {
        Ok(refused) => refused,
        Err(_) => return false,
    };
    let refused_syms: HashSet<Watch> = refused.iter().map(|(s, _)| s.clone()).collect();
    inner.unroute_refused(shard, refused);
    *shard.link.write() = Some(link.clone());
    inner.link_up.notify_waiters();
    // Unwatched while this was being made: subscribed here for nothing.
    let now: HashSet<Watch> = shard.symbols.lock().clone();
    let gone: Vec<Watch> = symbols
        .iter()
        .filter(|s| !now.contains(*s) && !refused_syms.contains(*s))
        .cloned()
        .collect();
    if !gone.is_empty() {
        let _ = inner.unsubscribe(link, &gone).await;
    }
    let kept: Vec<Watch> = symbols.into_iter().filter(|s| now.contains(s)).collect();
    if !kept.is_empty() {
        inner.resync(&kept).await;
    }
    true
}

/// Checks the link every `ping_interval`; returns when a check fails.
async fn health(inner: &Inner, link: &Link) -> LinkError {
    let mut every = tokio::time::interval(inner.cfg.ping_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        if let Err(e) = link.ping().await {
            return e;
        }
    }
}

/// What a shard's link reads goes to the hub in batches, one per read.
struct ShardHandler {
    inner: Arc<Inner>,
    shard: Arc<Shard>,
    batch: Vec<Arc<Entry>>,
    books: Vec<BookMsg>,
}

impl ShardHandler {
    /// A book message read from `symbol`'s book channel, checked and batched.
    fn book(&mut self, symbol: &str, payload: &[u8]) {
        let inner = &self.inner;
        match books::arrival(&inner.hub, symbol, payload) {
            Ok(msg) => {
                inner.stats.received.fetch_add(1, Ordering::Relaxed);
                self.books.push(msg);
            }
            Err(why) => inner.stats.dropped(&why),
        }
    }

    /// A feed's heartbeat read from the feeds' channel: the symbols of a feed lost or
    /// stopped become stale. What the feed published before this beat goes first: a
    /// feed that stops cleanly says so right after its last ticks, often in the same
    /// read, and its symbols must not be stale before those.
    fn beat(&mut self, payload: &[u8]) {
        let Some(beat) = Beat::parse(payload) else {
            return;
        };
        self.flush();
        let inner = &self.inner;
        let mut stale = inner.liveness.lock().heard(&beat, Instant::now());
        if beat.state == State::Down {
            // The symbols it gave up, also those whose lease this node has not read yet.
            inner.watched_ticks(&beat.lost, &mut stale);
        }
        inner.feeds_lost(stale);
    }
}

impl Handler for ShardHandler {
    fn message(&mut self, channel: &[u8], payload: &[u8]) {
        if channel == self.inner.feeds_channel.as_bytes() {
            return self.beat(payload);
        }
        let inner = &self.inner;
        let Some((topic, symbol)) = inner.channel_symbol(channel) else {
            inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if topic == Topic::Book {
            return self.book(symbol, payload);
        }
        match arrival::arrival(&inner.hub, symbol, payload) {
            Ok(entry) => {
                inner.stats.received.fetch_add(1, Ordering::Relaxed);
                let m = crate::metrics::global();
                m.ingested(crate::metrics::Source::Redis);
                let lag = crate::tick::now_ns().saturating_sub(entry.tick.ts);
                m.bus_lag_ns.store(lag, Ordering::Relaxed);
                self.batch.push(entry);
            }
            Err(why) => inner.stats.dropped(&why),
        }
    }

    fn oversize(&mut self, _channel: &[u8]) {
        self.inner.stats.dropped(&Dropped::Malformed);
    }

    fn lost(&mut self, channel: &[u8]) {
        let inner = &self.inner;
        let Some((topic, symbol)) = inner.channel_symbol(channel) else {
            return;
        };
        let Some(sym) = inner.hub.symbol(symbol) else {
            return;
        };
        let w = (topic, sym);
        let routed_here = inner.watched.lock().get(&w) == Some(&self.shard.addr);
        if routed_here && self.shard.symbols.lock().remove(&w) {
            tracing::info!(symbol = %w.1, redis = %self.shard.addr, "Redis dropped a channel (its slot moved); routing it again");
            inner.unroute(vec![w], "channel", Some(&self.shard.addr));
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            self.inner.hub.publish_entries(self.batch.drain(..));
        }
        if !self.books.is_empty() {
            let repair = self.inner.gate.pass(&self.inner.hub, &mut self.books);
            if !repair.is_empty() {
                tracing::debug!(
                    symbols = repair.len(),
                    "a book message did not follow; reading the snapshot"
                );
                let inner = self.inner.clone();
                tokio::spawn(async move { inner.resync_books(repair).await });
            }
        }
    }
}

/// Routes again what lost its route, reads the slot map when it may be out of date,
/// and moves symbols whose slot changed master; every [`REROUTE_EVERY`] while anything
/// is left to do. Also reads the owners of the watched symbols every
/// [`OWNERS_EVERY`].
async fn route_loop(inner: Arc<Inner>) {
    let mut owners_at = Instant::now() + OWNERS_EVERY;
    let mut owners_read = Instant::now();
    loop {
        if !inner.unowned.lock().is_empty() {
            owners_at = owners_at.min(owners_read + OWNERS_SOON);
        }
        let busy = inner.suspect.load(Ordering::Acquire) || !inner.unrouted.lock().is_empty();
        let wait = if busy {
            REROUTE_EVERY
        } else {
            owners_at.saturating_duration_since(Instant::now())
        };
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        if inner.suspect.swap(false, Ordering::AcqRel) {
            if let Err(e) = refresh(&inner).await {
                tracing::debug!(error = %e, "reading the cluster's slots failed");
                inner.suspect.store(true, Ordering::Release);
                continue;
            }
        }
        reroute(&inner).await;
        if Instant::now() >= owners_at {
            owners_read = Instant::now();
            let watched: Vec<Symbol> = of(
                Topic::Ticks,
                &inner.watched.lock().keys().cloned().collect::<Vec<_>>(),
            );
            if !watched.is_empty() {
                let _ = inner.read_state(&watched).await;
            }
            let soon = {
                let mut unowned = inner.unowned.lock();
                unowned.retain(|_, since| since.elapsed() < OWNERS_SOON_FOR);
                !unowned.is_empty()
            };
            owners_at = Instant::now() + if soon { OWNERS_SOON } else { OWNERS_EVERY };
        }
    }
}

/// Reads the slot map again, makes shards for new masters and retires those of servers
/// that are no master any more; symbols routed to another master than their slot's now
/// are moved.
async fn refresh(inner: &Arc<Inner>) -> redis::RedisResult<()> {
    inner.topology.refresh().await?;
    let masters = inner.topology.servers();
    let names: HashSet<&str> = masters.iter().map(|s| s.addr.as_str()).collect();
    for server in &masters {
        if inner.shard(&server.addr).is_none() {
            let shard = inner.shard_for(&server.addr, &server.url);
            tracing::info!(redis = %shard.addr, "a new Redis master; linking to it");
            spawn_shard(inner.clone(), shard, None);
        }
    }
    let retired: Vec<Arc<Shard>> = {
        let mut shards = inner.shards.lock();
        let gone: Vec<String> = shards
            .keys()
            .filter(|a| !names.contains(a.as_str()))
            .cloned()
            .collect();
        gone.iter().filter_map(|a| shards.remove(a)).collect()
    };
    for shard in retired {
        tracing::info!(redis = %shard.addr, "no longer a Redis master; its symbols move");
        inner.listening(&shard, false);
        let syms: Vec<Watch> = shard.symbols.lock().drain().collect();
        let link = shard.link.write().take();
        if let Some(link) = link {
            let _ = inner.unsubscribe(&link, &syms).await;
        }
        inner.unroute(syms, "channel", None);
    }
    // Symbols whose link is down while their slot is now another master's (a master
    // killed under its replica). A symbol whose link is up is moved only when Redis
    // says so (an unsubscribe it sends, a redirection): masters do not all learn a
    // change at once, and a map read from one that has not yet would move it back.
    let moved: Vec<Watch> = {
        let watched = inner.watched.lock();
        watched
            .iter()
            .filter(|(w, addr)| {
                let down = inner.shard(addr).is_none_or(|sh| sh.link().is_none());
                down && inner.topology.server_of(&w.1).addr != **addr
            })
            .map(|(s, _)| s.clone())
            .collect()
    };
    for s in &moved {
        let from = inner.watched.lock().get(s).cloned();
        if let Some(shard) = from.and_then(|a| inner.shard(&a)) {
            if shard.symbols.lock().remove(s) {
                if let Some(link) = shard.link() {
                    let _ = inner.unsubscribe(&link, std::slice::from_ref(s)).await;
                }
            }
        }
    }
    inner.unroute(moved, "channel", None);
    Ok(())
}

/// Subscribes every unrouted symbol at its slot's master.
async fn reroute(inner: &Arc<Inner>) {
    let pending: Vec<(Watch, Option<(String, Instant)>)> = {
        let watched = inner.watched.lock();
        let mut unrouted = inner.unrouted.lock();
        unrouted.retain(|s, _| watched.contains_key(s));
        unrouted
            .iter()
            .map(|(s, d)| (s.clone(), d.clone()))
            .collect()
    };
    if pending.is_empty() {
        return;
    }
    let mut by_shard: HashMap<String, Vec<Watch>> = HashMap::new();
    for (s, dropped) in pending {
        let server = inner.topology.server_of(&s.1);
        // The server that just dropped it still named as its master: the map read is
        // older than the change; read it again rather than go back there.
        if dropped.is_some_and(|(a, at)| a == server.addr && at.elapsed() < MAP_SETTLES) {
            inner.suspect.store(true, Ordering::Release);
            continue;
        }
        by_shard.entry(server.addr.clone()).or_default().push(s);
    }
    for (addr, syms) in by_shard {
        let Some(shard) = inner.shard(&addr) else {
            inner.suspect.store(true, Ordering::Release);
            continue;
        };
        {
            let mut watched = inner.watched.lock();
            let mut mine = shard.symbols.lock();
            let mut unrouted = inner.unrouted.lock();
            for s in &syms {
                if watched.contains_key(s) {
                    watched.insert(s.clone(), addr.clone());
                    mine.insert(s.clone());
                    unrouted.remove(s);
                }
            }
        }
        // A shard whose link is down subscribes them when it is made again.
        let Some(link) = shard.link() else { continue };
        match inner.subscribe(&link, &syms).await {
            Ok(refused) => {
                let bad: HashSet<Watch> = refused.iter().map(|(s, _)| s.clone()).collect();
                inner.unroute_refused(&shard, refused);
                let ok: Vec<Watch> = syms.into_iter().filter(|s| !bad.contains(s)).collect();
                inner.reroutes.fetch_add(ok.len() as u64, Ordering::Relaxed);
                crate::metrics::global()
                    .bus_reroutes
                    .fetch_add(ok.len() as u64, Ordering::Relaxed);
                if !ok.is_empty() {
                    tracing::info!(redis = %addr, symbols = ok.len(), "channels routed to their new master");
                    inner.resync(&ok).await;
                }
            }
            Err(e) => {
                tracing::debug!(redis = %addr, error = %e, "subscribing at the new master failed");
                let mut mine = shard.symbols.lock();
                for s in &syms {
                    mine.remove(s);
                }
                drop(mine);
                inner
                    .unrouted
                    .lock()
                    .extend(syms.into_iter().map(|s| (s, None)));
                inner.suspect.store(true, Ordering::Release);
            }
        }
    }
}

/// Judges the feeds' silence every [`SWEEP_EVERY`].
async fn liveness_loop(inner: Arc<Inner>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let since = *inner.listening_since.lock();
        let lost = inner.liveness.lock().sweep(Instant::now(), since);
        inner.feeds_lost(lost);
    }
}

impl RedisBusStats {
    /// Counts a payload dropped for `why`.
    fn dropped(&self, why: &Dropped) {
        let (mine, i) = match why {
            Dropped::Malformed => (&self.malformed, 0),
            Dropped::WrongChannel => (&self.wrong_channel, 1),
            Dropped::Refused(_) => (&self.refused, 2),
        };
        mine.fetch_add(1, Ordering::Relaxed);
        crate::metrics::global().bus_dropped[i].fetch_add(1, Ordering::Relaxed);
    }
}
