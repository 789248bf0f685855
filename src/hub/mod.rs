//! The hub: this node's registry of symbols — latest value, bounded history and local
//! subscribers — and the fan-out of every tick to them.
//!
//! A tick is encoded once when it arrives; every subscriber's queue gets a clone of the
//! same bytes (a reference count, not a copy). Each symbol has its own lock, taken once
//! per tick and once per subscribe or unsubscribe, so a snapshot or a replay and the
//! live ticks after it can never interleave out of order. Paced subscribers
//! (`throttle_ms`) are not sent each tick: their symbol is marked, and the node's one
//! pacer sends them the newest tick at the next boundary of their interval.

use std::cell::OnceCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use indexmap::IndexMap;
use parking_lot::Mutex;

use crate::protocol::{binary, Encoding, GapReason, ResumeFrom, ServerMsg};
use crate::tick::{Kind, Symbol, Tick};

pub mod alarms;
pub mod book;
pub mod budget;
mod candled;
pub mod candles;
mod pace;
pub mod policy;
pub mod queue;

pub use alarms::{Alarm, Alarms};
pub use budget::Budget;
use pace::{PaceGroup, Pacer};
pub use policy::SlowPolicy;
pub use queue::{Behind, Lagging, Life, Outbox, Receiver, Wakes, Writing, NEED_SNAPSHOT};

/// A tick as the hub keeps it: decoded, and encoded once as a `tick` message.
#[derive(Debug)]
pub struct Entry {
    /// The tick.
    pub tick: Tick,
    /// Its JSON `tick` object, shared by every subscriber.
    pub json: Bytes,
    /// Its binary `tick` record, made on the first push to a binary subscriber and then
    /// shared like `json` (a node without binary subscribers never makes one).
    binary: OnceLock<Bytes>,
}

impl Entry {
    /// Encodes `tick` once.
    pub fn new(tick: Tick) -> Arc<Entry> {
        let json = Bytes::from(tick.to_json(Kind::Tick));
        Arc::new(Entry {
            tick,
            json,
            binary: OnceLock::new(),
        })
    }

    /// A tick whose `tick` object arrived already encoded (from the bus): `json` is
    /// forwarded to subscribers as it is, so it must be that tick's well-formed object.
    pub fn forwarded(tick: Tick, json: Bytes) -> Arc<Entry> {
        Arc::new(Entry {
            tick,
            json,
            binary: OnceLock::new(),
        })
    }

    /// Ticks as entries encoded for `encoding` ahead of use (a resume's backfill), so
    /// that nothing is encoded while a symbol's lock is held.
    pub fn ready(ticks: Vec<Tick>, encoding: Encoding) -> Vec<Arc<Entry>> {
        ticks
            .into_iter()
            .map(|t| {
                let e = Entry::new(t);
                if encoding == Encoding::Binary {
                    e.record(encoding);
                }
                e
            })
            .collect()
    }

    /// This tick as a `snapshot` message.
    pub fn snapshot_json(&self) -> Bytes {
        Bytes::from(self.tick.to_json(Kind::Snapshot))
    }

    /// This tick as a `tick` message in `encoding`. A tick with no binary record (an
    /// epoch over 255 bytes) goes to binary subscribers as its JSON object.
    pub fn record(&self, encoding: Encoding) -> Bytes {
        match encoding {
            Encoding::Json => self.json.clone(),
            Encoding::Binary => self
                .binary
                .get_or_init(|| match binary::encode(&self.tick, Kind::Tick) {
                    Ok(r) => Bytes::from(r),
                    Err(_) => self.json.clone(),
                })
                .clone(),
        }
    }

    /// This tick as a `snapshot` message in `encoding` (JSON where it has no record).
    pub fn snapshot(&self, encoding: Encoding) -> Bytes {
        match encoding {
            Encoding::Json => self.snapshot_json(),
            Encoding::Binary => match binary::encode(&self.tick, Kind::Snapshot) {
                Ok(r) => Bytes::from(r),
                Err(_) => self.snapshot_json(),
            },
        }
    }
}

struct Subscriber {
    outbox: Arc<Outbox>,
    behind: Behind,
    /// How its ticks and snapshots are encoded.
    encoding: Encoding,
    /// What the first message this subscriber gets must be, while the symbol has no value.
    first: First,
    /// Paced: the seq of the last tick (or snapshot, or `to` of a `gap`) queued for it;
    /// a paced tick's `skipped` counts from there.
    sent: u64,
}

/// How a subscription that started before its symbol had any value begins.
#[derive(Clone, Debug, PartialEq, Eq)]
enum First {
    /// Already streaming.
    Live,
    /// The first value is sent as its `snapshot`.
    Snapshot,
    /// The client holds this position, which the symbol has not reached here yet (it
    /// had no value, or the client came from a node further on): the first value past
    /// it continues it as a tick when it is the next one, else what is missing is
    /// announced (`gap`); values up to it are not sent. Boxed: a subscriber is kept
    /// for every subscription, and few wait this way.
    After(Box<ResumeFrom>),
}

#[derive(Default)]
struct SlotState {
    latest: Option<Arc<Entry>>,
    history: VecDeque<Arc<Entry>>,
    /// By session id: found, added and removed in O(1), iterated densely. Unpaced only.
    subscribers: IndexMap<u64, Subscriber>,
    /// Paced subscribers, one group per interval.
    paced: Vec<PaceGroup>,
    /// Subscribers of the symbol's bars (the `candles` channel).
    candled: candled::Candled,
    /// Subscribers still waiting for their first message (see [`First`]).
    waiting_first: usize,
    /// The bus lost this symbol for a while: the next value is announced with a `gap`
    /// for what was missed and sent as a fresh `snapshot`.
    stale: bool,
    /// Why the latest value is not current now: a [`Cause`] bit each; 0 while live.
    causes: u8,
    /// The reason the `status` stale gave (that of the first cause).
    reason: &'static str,
    /// The symbol has been stale at some time: a subscriber that catches up is told
    /// its status (it may have missed a change of it).
    ever_stale: bool,
}

/// What makes a symbol's latest value stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The node lost the bus, or the symbol's channel on it: cleared when the bus gives
    /// the symbol again (a resync) or a value arrives.
    Bus = 1,
    /// The feed publishing the symbol stopped: cleared when a value arrives.
    Feed = 2,
}

impl SlotState {
    /// Every subscriber, unpaced and paced.
    fn all(&self) -> impl Iterator<Item = &Subscriber> {
        let paced = self.paced.iter().flat_map(|g| g.subs.values());
        self.subscribers.values().chain(paced)
    }

    /// Every subscriber, unpaced and paced, to change.
    fn all_mut(&mut self) -> impl Iterator<Item = &mut Subscriber> {
        let paced = self.paced.iter_mut().flat_map(|g| g.subs.values_mut());
        self.subscribers.values_mut().chain(paced)
    }

    /// Takes `entry` as the symbol's latest value and the newest of its history (of at
    /// most `history_len`), and says what else it brings; `None` for a seq this epoch
    /// already has, which changes nothing.
    fn store(&mut self, entry: &Arc<Entry>, history_len: usize) -> Option<Arrival> {
        let tick = &entry.tick;
        let mut arrival = Arrival {
            announce: None,
            reset: false,
        };
        if let Some(prev) = &self.latest {
            let last = prev.tick.seq;
            if prev.tick.epoch != tick.epoch {
                let gap = gap_note(&tick.symbol, last + 1, last + 1, GapReason::Reset);
                arrival.announce = Some(gap);
                arrival.reset = true;
                self.history.clear();
            } else if tick.seq <= last {
                return None;
            } else if tick.seq > last + 1 {
                let gap = gap_note(&tick.symbol, last + 1, tick.seq - 1, GapReason::Upstream);
                arrival.announce = Some(gap);
            }
        }
        if self.history.len() >= history_len {
            self.history.pop_front();
        }
        self.history.push_back(entry.clone());
        self.latest = Some(entry.clone());
        Some(arrival)
    }
}

/// What a stored tick brings beside itself.
struct Arrival {
    /// The `gap` to queue before it (a hole upstream, or a new epoch), and its reason.
    announce: Option<(Bytes, GapReason)>,
    /// A new epoch: the history restarted, and subscribers get a `snapshot`.
    reset: bool,
}

/// One tick's fan-out to the live subscribers of its symbol: what each one is sent,
/// made once for all of them, and the tally of what was queued.
struct FanOut<'a> {
    slot: &'a Arc<Slot>,
    entry: &'a Entry,
    /// The `gap` queued before the tick, if it brings one.
    note: Option<&'a Bytes>,
    /// Set when subscribers get the tick as a `snapshot`: its JSON, and its binary
    /// record once a binary subscriber needs it.
    snapshot: Option<(Bytes, OnceCell<Bytes>)>,
    /// A new epoch (see [`Arrival::reset`]).
    reset: bool,
    /// The `status` live that follows the tick, when the symbol was stale.
    live: Option<&'a Bytes>,
    delivered: u64,
    dropped: u64,
    /// `gap` messages queued.
    notes: u64,
    /// Subscribers that resumed from a position this tick does not reach yet: they
    /// still wait (see [`First::After`]).
    still_waiting: usize,
}

impl FanOut<'_> {
    /// Counts one subscriber's message as queued, or as dropped for a slow one.
    #[inline]
    fn count(&mut self, queued: bool) {
        if queued {
            self.delivered += 1;
        } else {
            self.dropped += 1;
        }
    }

    /// Queues the tick (after its `gap`, if any) for `sub`, unless `sub` is behind: it
    /// then catches up by itself later, from a snapshot after a new epoch.
    #[inline]
    fn push(&mut self, sub: &Subscriber, wakes: &mut Wakes) {
        if sub.behind.load(Ordering::Acquire) != 0 {
            if self.reset {
                // What it missed belongs to the old epoch: it catches up with a
                // snapshot of the new one instead.
                sub.behind.store(NEED_SNAPSHOT, Ordering::Release);
            }
            self.dropped += 1;
            return;
        }
        if !self.note(sub, wakes) {
            return;
        }
        let (msg, missed) = match self.snapshot_msg(sub.encoding) {
            Some(snap) => (snap, NEED_SNAPSHOT),
            None => (self.entry.record(sub.encoding), self.entry.tick.seq),
        };
        let queued = sub
            .outbox
            .push_deferred(self.slot, &sub.behind, msg, missed, wakes);
        self.count(queued);
        if queued {
            self.live(sub, wakes);
        }
    }

    /// Queues the `gap` the tick brings, if any; false when it was refused (counted as
    /// dropped).
    fn note(&mut self, sub: &Subscriber, wakes: &mut Wakes) -> bool {
        if let Some(note) = self.note {
            if !sub
                .outbox
                .push_deferred(self.slot, &sub.behind, note.clone(), NEED_SNAPSHOT, wakes)
            {
                self.dropped += 1;
                return false;
            }
            self.notes += 1;
        }
        true
    }

    /// The tick as a `snapshot` in `enc`, when subscribers get it as one.
    fn snapshot_msg(&self, enc: Encoding) -> Option<Bytes> {
        match (&self.snapshot, enc) {
            (Some((json, _)), Encoding::Json) => Some(json.clone()),
            (Some((_, bin)), enc) => Some(bin.get_or_init(|| self.entry.snapshot(enc)).clone()),
            (None, _) => None,
        }
    }

    /// Queues the `status` live that follows the tick, if the symbol was stale.
    fn live(&self, sub: &Subscriber, wakes: &mut Wakes) {
        if let Some(live) = self.live {
            let seq = self.entry.tick.seq;
            sub.outbox
                .push_deferred(self.slot, &sub.behind, live.clone(), seq, wakes);
        }
    }

    /// Queues the first message of a subscriber that came before the symbol's first
    /// value, now that this tick is it (see [`First`]); it is live from now on.
    fn first(&mut self, history: &VecDeque<Arc<Entry>>, sub: &mut Subscriber, wakes: &mut Wakes) {
        if let First::After(from) = &sub.first {
            if ahead_of(self.entry, from) {
                self.still_waiting += 1;
                return;
            }
        }
        let queued = first_message(history, self.slot, sub, self.entry);
        self.count(queued);
        if queued {
            self.live(sub, wakes);
        }
        sub.first = First::Live;
        sub.sent = self.entry.tick.seq;
    }

    /// Hands the tick to every unpaced subscriber; `waiting` when some subscriber
    /// still waits for the symbol's first value.
    fn unpaced(&mut self, st: &mut SlotState, waiting: bool, wakes: &mut Wakes) {
        let SlotState {
            history,
            subscribers,
            ..
        } = st;
        for sub in subscribers.values_mut() {
            if waiting && sub.first != First::Live {
                self.first(history, sub, wakes);
            } else {
                self.push(sub, wakes);
            }
        }
    }
}

/// One symbol's state. Sessions hold it only to catch up a subscription that fell behind.
pub struct Slot {
    symbol: Symbol,
    state: Mutex<SlotState>,
}

/// What became of a published tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// Stored and fanned out to this many subscribers.
    Delivered(usize),
    /// A seq this node already has for the symbol's epoch; dropped.
    Duplicate,
    /// The symbol is not served here.
    UnknownSymbol,
}

/// What one batch did, added to [`HubStats`] once per batch.
#[derive(Default)]
struct Tally {
    ticks: u64,
    delivered: u64,
    duplicates: u64,
    dropped: u64,
}

/// Counters the hub keeps.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Ticks accepted.
    pub ticks: AtomicU64,
    /// Messages handed to subscriber queues.
    pub deliveries: AtomicU64,
    /// Ticks dropped as duplicates.
    pub duplicates: AtomicU64,
    /// Ticks not queued for a slow subscriber (conflated or overflowed).
    pub dropped_slow: AtomicU64,
}

/// The registry of symbols and subscribers of one node. The symbol table is fixed when
/// the hub is made, so looking a symbol up takes no lock.
pub struct Hub {
    slots: HashMap<Symbol, Arc<Slot>>,
    /// The symbols, sorted: patterns match a range of it.
    sorted: Vec<Symbol>,
    history_len: usize,
    stats: HubStats,
    /// When paced subscribers are sent their newest tick (or book update).
    pacer: Pacer,
    /// The order books of the symbols that have one here.
    books: book::Books,
    /// The bars of every symbol, folded from the ticks as they are stored.
    candles: candles::Candles,
}

/// How a subscription starts, as asked by the client.
#[derive(Clone, Debug, Default)]
pub struct Start {
    /// Send a snapshot of the latest value first.
    pub snapshot: bool,
    /// Replay what follows this position instead.
    pub resume: Option<ResumeFrom>,
    /// Ticks after the resume position fetched from the bus's history, for a range the
    /// local ring does not hold; merged with the ring (by `seq`) under the symbol's lock.
    /// Encoded before (see [`Entry::ready`]): nothing is encoded under the lock.
    pub backfill: Vec<Arc<Entry>>,
    /// How the session's ticks and snapshots are encoded.
    pub encoding: Encoding,
    /// The pace in ms (0: every tick), `throttle_ms`.
    pub throttle_ms: u32,
    /// On the `candles` channel: closed bars sent first.
    pub bars: usize,
}

impl Hub {
    /// A hub serving `symbols`, keeping `history_len` recent ticks per symbol.
    pub fn new<I: IntoIterator<Item = Symbol>>(symbols: I, history_len: usize) -> Hub {
        let slots: HashMap<Symbol, Arc<Slot>> = symbols
            .into_iter()
            .map(|s| {
                let slot = Arc::new(Slot {
                    symbol: s.clone(),
                    state: Mutex::new(SlotState::default()),
                });
                (s, slot)
            })
            .collect();
        let mut sorted: Vec<Symbol> = slots.keys().cloned().collect();
        sorted.sort();
        let candles = candles::Candles::new(slots.keys().cloned(), candles::DEFAULT_KEEP);
        Hub {
            slots,
            sorted,
            history_len: history_len.max(1),
            stats: HubStats::default(),
            pacer: Pacer::default(),
            candles,
            books: book::Books::new([], book::BookSettings::default()),
        }
    }

    /// This hub with the order books of `specs` (symbols it serves, with their price
    /// decimals), kept within `settings`.
    pub fn with_books(
        mut self,
        specs: impl IntoIterator<Item = (Symbol, crate::book::Spec)>,
        settings: book::BookSettings,
    ) -> Hub {
        let served = specs
            .into_iter()
            .filter(|(s, _)| self.slots.contains_key(s));
        self.books = book::Books::new(served, settings);
        self
    }

    /// The order books.
    pub fn books(&self) -> &book::Books {
        &self.books
    }

    /// Applies book messages in order and hands what changed to their subscribers,
    /// whose writers are woken once for all of it.
    pub fn publish_books(&self, msgs: &[crate::book::BookMsg]) -> Vec<book::BookPublished> {
        let mut tally = Tally::default();
        let out = self.books.publish(msgs, &self.pacer, &mut tally);
        self.count(&tally);
        out
    }

    /// Adds (or restarts, or repaces) a subscriber of `symbol`'s book; see
    /// [`book::Books::subscribe`].
    pub fn subscribe_book(
        &self,
        symbol: &str,
        outbox: &Arc<Outbox>,
        behind: &Behind,
        start: &book::BookStart,
    ) -> bool {
        self.books
            .subscribe(symbol, outbox, behind, start, &self.pacer)
    }

    /// This hub keeping `keep` closed bars per symbol and interval (default
    /// [`candles::DEFAULT_KEEP`]).
    pub fn with_candle_keep(mut self, keep: usize) -> Hub {
        self.candles = candles::Candles::new(self.slots.keys().cloned(), keep);
        self
    }

    /// The bars of every symbol served.
    pub fn candles(&self) -> &candles::Candles {
        &self.candles
    }

    /// Counters.
    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    /// Whether this node serves `symbol`.
    pub fn serves(&self, symbol: &str) -> bool {
        self.slots.contains_key(symbol)
    }

    /// Every symbol served, sorted.
    pub fn symbols(&self) -> Vec<Symbol> {
        self.sorted.clone()
    }

    /// The symbols served that `pattern` (`*` or `PREFIX*`) matches, sorted.
    pub fn matching(&self, pattern: &str) -> &[Symbol] {
        let prefix = pattern.strip_suffix('*').unwrap_or(pattern);
        let from = self
            .sorted
            .partition_point(|s| s.as_bytes() < prefix.as_bytes());
        let n = self.sorted[from..]
            .iter()
            .take_while(|s| s.starts_with(prefix))
            .count();
        &self.sorted[from..from + n]
    }

    /// The shared name of a served symbol.
    pub fn symbol(&self, symbol: &str) -> Option<Symbol> {
        self.slot(symbol).map(|s| s.symbol.clone())
    }

    fn slot(&self, symbol: &str) -> Option<&Arc<Slot>> {
        self.slots.get(symbol)
    }

    /// The latest tick of `symbol`, if it has one.
    pub fn latest(&self, symbol: &str) -> Option<Arc<Entry>> {
        self.slot(symbol)?.state.lock().latest.clone()
    }

    /// Number of local subscribers of `symbol`.
    pub fn subscriber_count(&self, symbol: &str) -> usize {
        self.slot(symbol)
            .map_or(0, |s| s.state.lock().all().count())
    }

    /// Stores `tick` as the symbol's latest value and hands it to every subscriber.
    pub fn publish(&self, tick: Tick) -> Published {
        let mut tally = Tally::default();
        let mut wakes = Wakes::default();
        let r = self.publish_entry(Entry::new(tick), &mut tally, &mut wakes);
        drop(wakes);
        self.count(&tally);
        r
    }

    /// Publishes `ticks` in order, as [`Hub::publish`] does one by one, except that each
    /// subscriber's writer is woken once when the whole batch is queued. Returns the
    /// number of messages handed to subscribers.
    pub fn publish_batch(&self, ticks: Vec<Tick>) -> u64 {
        self.publish_entries(ticks.into_iter().map(Entry::new))
    }

    /// Like [`Hub::publish_batch`], for ticks already encoded (see [`Entry::forwarded`]).
    pub fn publish_entries<I: IntoIterator<Item = Arc<Entry>>>(&self, entries: I) -> u64 {
        let mut tally = Tally::default();
        let mut wakes = Wakes::default();
        for entry in entries {
            self.publish_entry(entry, &mut tally, &mut wakes);
        }
        drop(wakes);
        self.count(&tally);
        tally.delivered
    }

    /// Adds what a publish did to the counters, once per batch.
    fn count(&self, t: &Tally) {
        let stats = &self.stats;
        if t.ticks > 0 {
            stats.ticks.fetch_add(t.ticks, Ordering::Relaxed);
        }
        if t.delivered > 0 {
            stats.deliveries.fetch_add(t.delivered, Ordering::Relaxed);
        }
        if t.duplicates > 0 {
            stats.duplicates.fetch_add(t.duplicates, Ordering::Relaxed);
        }
        if t.dropped > 0 {
            stats.dropped_slow.fetch_add(t.dropped, Ordering::Relaxed);
        }
    }

    /// Stores one tick and queues it for every subscriber; the writers are woken with
    /// `wakes`.
    fn publish_entry(&self, entry: Arc<Entry>, tally: &mut Tally, wakes: &mut Wakes) -> Published {
        let Some(slot) = self.slot(&entry.tick.symbol) else {
            return Published::UnknownSymbol;
        };
        let mut st = slot.state.lock();
        // What paced subscribers may have folded, sent before a loss is announced.
        let before = (!st.paced.is_empty()).then(|| st.latest.clone()).flatten();
        let Some(arrival) = st.store(&entry, self.history_len) else {
            tally.duplicates += 1;
            return Published::Duplicate;
        };
        tally.ticks += 1;
        let folded = self.candles.fold(&entry.tick);
        // Taken whether or not the epoch changed: a reset while stale must not leave the
        // mark for the next tick to be sent as a snapshot again.
        let was_stale = std::mem::take(&mut st.stale);
        let fresh = arrival.reset || was_stale;
        // A value arriving shows its source and the bus alive: live again, said after it.
        let live = (st.causes != 0).then(|| {
            st.causes = 0;
            ServerMsg::status(&entry.tick.symbol, None)
        });
        let mut fan = FanOut {
            slot,
            entry: &entry,
            note: arrival.announce.as_ref().map(|(note, _)| note),
            snapshot: fresh.then(|| (entry.snapshot_json(), OnceCell::new())),
            reset: arrival.reset,
            live: live.as_ref(),
            delivered: 0,
            dropped: 0,
            notes: 0,
            still_waiting: 0,
        };
        // Subscribers that came before the symbol's first value get it as a snapshot
        // (or as the continuation of the position they resumed from).
        let waiting = std::mem::take(&mut st.waiting_first) > 0;
        fan.unpaced(&mut st, waiting, wakes);
        if !st.paced.is_empty() {
            fan.paced(&mut st, before.as_deref(), waiting, &self.pacer, wakes);
        }
        st.waiting_first = fan.still_waiting;
        if !st.candled.is_empty() {
            if folded.any() {
                st.candled.folded(slot, &folded, &self.pacer, wakes, tally);
            }
            if let Some(live) = &live {
                tell_candled(&st, live, wakes);
            }
        }
        drop(st);
        if let Some((_, reason)) = arrival.announce {
            let m = crate::metrics::global();
            m.gaps[gap_index(reason)].fetch_add(fan.notes, Ordering::Relaxed);
        }
        tally.delivered += fan.delivered;
        tally.dropped += fan.dropped;
        Published::Delivered(fan.delivered as usize)
    }

    /// Adds a subscriber to `symbol`, first queueing what `start` asks for (a snapshot,
    /// or a replay from history with `gap`s for what is gone), all under the symbol's
    /// lock so that live ticks follow without a hole or a duplicate. A symbol that has
    /// no value yet sends its first one as the snapshot. A paced subscriber
    /// (`start.throttle_ms`) gets that start at once, and its ticks paced after it.
    ///
    /// Returns false when the symbol is not served here. Subscribing twice queues
    /// nothing but a change of pace, unless `start` resumes from a position: then the
    /// subscription restarts from there (how a client re-syncs after it saw a hole).
    pub fn subscribe(
        &self,
        symbol: &str,
        outbox: &Arc<Outbox>,
        behind: &Behind,
        start: &Start,
    ) -> bool {
        let Some(slot) = self.slot(symbol) else {
            return false;
        };
        let mut st = slot.state.lock();
        if let Some(held) = pace::held_pace(&st, outbox.id()) {
            if start.resume.is_none() {
                if held != start.throttle_ms {
                    pace::repace(&mut st, slot, outbox.id(), start.throttle_ms, &self.pacer);
                }
                return true;
            }
            remove(&mut st, outbox.id());
        }
        behind.store(0, Ordering::Release);
        let first = begin(&st, slot, outbox, behind, start);
        if first != First::Live {
            st.waiting_first += 1;
        }
        let sub = Subscriber {
            outbox: outbox.clone(),
            behind: behind.clone(),
            encoding: start.encoding,
            first,
            sent: st.latest.as_ref().map_or(0, |l| l.tick.seq),
        };
        pace::insert(&mut st, sub, start.throttle_ms);
        if st.causes != 0 {
            // What it was just given is not current.
            let next = st.latest.as_ref().map_or(1, |l| l.tick.seq + 1);
            let msg = ServerMsg::status(&slot.symbol, Some(st.reason));
            outbox.push(slot, behind, msg, next);
        }
        true
    }

    /// Subscribes `outbox`'s session to the bars of `symbol` in `interval`, paced at
    /// `throttle_ms` (0: the default pace): its `candles` message (up to `backfill`
    /// closed bars, then the forming bar) is queued and the subscriber registered under
    /// the symbol's lock, so no bar is missed or sent twice. Subscribing again replaces
    /// the subscription (a fresh `candles`). False when the symbol is not served here.
    pub fn subscribe_candles(
        &self,
        symbol: &str,
        outbox: &Arc<Outbox>,
        interval: candles::Interval,
        backfill: usize,
        throttle_ms: u32,
    ) -> bool {
        let Some(slot) = self.slot(symbol) else {
            return false;
        };
        let mut st = slot.state.lock();
        let Some(start) = self.candles.start(symbol, interval, backfill) else {
            return false;
        };
        let every = candled::pace_of(throttle_ms);
        st.candled
            .add(slot, &self.pacer, outbox, interval, backfill, every, start);
        if st.causes != 0 {
            let msg = ServerMsg::status(&slot.symbol, Some(st.reason));
            outbox.offer(msg, &mut Wakes::default());
        }
        true
    }

    /// Ends session `session`'s subscription to the bars of `symbol` in `interval`.
    pub fn unsubscribe_candles(&self, symbol: &str, session: u64, interval: candles::Interval) {
        if let Some(slot) = self.slot(symbol) {
            slot.state.lock().candled.remove(session, interval);
        }
    }

    /// Removes a subscriber. Returns whether it was subscribed.
    pub fn unsubscribe(&self, symbol: &str, session: u64) -> bool {
        let Some(slot) = self.slot(symbol) else {
            return false;
        };
        remove(&mut slot.state.lock(), session)
    }

    /// Takes `tick` (read from the bus's store) as the latest value of a symbol that no
    /// local client watched until now, when it is newer than what the hub holds. Nobody
    /// is subscribed yet, so nothing is sent; a ring that would have a hole is emptied.
    pub fn seed(&self, tick: Tick) {
        let Some(slot) = self.slot(&tick.symbol) else {
            return;
        };
        let mut st = slot.state.lock();
        let contiguous = match &st.latest {
            Some(prev) if prev.tick.epoch == tick.epoch => {
                if tick.seq <= prev.tick.seq {
                    return;
                }
                tick.seq == prev.tick.seq + 1
            }
            _ => false,
        };
        if !contiguous {
            st.history.clear();
        }
        self.candles.continue_from(&tick);
        let entry = Entry::new(tick);
        if st.history.len() >= self.history_len {
            st.history.pop_front();
        }
        st.history.push_back(entry.clone());
        st.latest = Some(entry);
        st.stale = false;
        // Read from the bus just now: the bus gives it (its feed may still be lost).
        st.causes &= !(Cause::Bus as u8);
    }

    /// Continues the bars of `symbol` from `formed`, a forming state read from the bus's
    /// store, and `after`, the ticks the store holds after it, completed by those of the
    /// ring: under the symbol's lock, so that no live tick comes between.
    pub fn restore_candles(&self, symbol: &str, formed: candles::Formed, after: &[Tick]) {
        let Some(slot) = self.slot(symbol) else {
            return;
        };
        let st = slot.state.lock();
        // The ring continues what the store gave unless an epoch came between.
        let same = |l: &Arc<Entry>| after.last().is_none_or(|t| t.epoch == l.tick.epoch);
        let ring = st.latest.as_ref().is_some_and(same);
        let ring = st.history.iter().filter(|_| ring).map(|e| &e.tick);
        self.candles
            .restore(symbol, formed, after.iter().chain(ring));
    }

    /// `symbols` are stale for `cause`: subscribers of a symbol that was live get
    /// `status` stale with `reason` (encoded once per symbol), and so does every
    /// subscriber that comes while it stays stale.
    pub fn lost(&self, symbols: &[Symbol], cause: Cause, reason: &'static str) {
        self.books.lost(symbols, cause, reason);
        for s in symbols {
            let Some(slot) = self.slot(s) else { continue };
            let mut st = slot.state.lock();
            let was = st.causes;
            st.causes |= cause as u8;
            if was != 0 {
                continue;
            }
            st.reason = reason;
            st.ever_stale = true;
            let m = crate::metrics::global();
            if let Some(i) = crate::metrics::STALE_REASONS
                .iter()
                .position(|r| *r == reason)
            {
                m.stale[i].fetch_add(1, Ordering::Relaxed);
            }
            let msg = ServerMsg::status(&slot.symbol, Some(reason));
            let next = st.latest.as_ref().map_or(1, |l| l.tick.seq + 1);
            for sub in st.all() {
                if sub.behind.load(Ordering::Acquire) == 0 {
                    sub.outbox.push(slot, &sub.behind, msg.clone(), next);
                }
            }
            tell_candled(&st, &msg, &mut Wakes::default());
        }
    }

    /// `cause` no longer holds for `symbol`: when nothing else keeps it stale, its
    /// subscribers get `status` live (after what was queued for the return).
    fn regained(slot: &Arc<Slot>, st: &mut SlotState, cause: Cause) {
        let was = st.causes;
        st.causes &= !(cause as u8);
        if was == 0 || st.causes != 0 {
            return;
        }
        let msg = ServerMsg::status(&slot.symbol, None);
        let next = st.latest.as_ref().map_or(1, |l| l.tick.seq + 1);
        for sub in st.all() {
            if sub.behind.load(Ordering::Acquire) == 0 {
                sub.outbox.push(slot, &sub.behind, msg.clone(), next);
            }
        }
        tell_candled(st, &msg, &mut Wakes::default());
    }

    /// Symbols stale now.
    pub fn stale_count(&self) -> usize {
        self.slots
            .values()
            .filter(|s| s.state.lock().causes != 0)
            .count()
    }

    /// Whether `symbol` is stale now, and why.
    pub fn stale_reason(&self, symbol: &str) -> Option<&'static str> {
        let st = self.slot(symbol)?.state.lock();
        (st.causes != 0).then_some(st.reason)
    }

    /// Marks `symbols` as lost by the bus (its connection went down): their next value
    /// is announced with a `gap` (reason `upstream`) for the missed range and sent as a
    /// `snapshot`.
    pub fn mark_stale(&self, symbols: &[Symbol]) {
        for s in symbols {
            if let Some(slot) = self.slot(s) {
                slot.state.lock().stale = true;
            }
        }
    }

    /// After the bus came back: `last` is the symbol's latest value as the bus's store
    /// knows it. A newer value is published (announcing the missed range and sent as a
    /// snapshot); otherwise subscribers get a fresh snapshot of what the hub holds. With
    /// no value known, the symbol stays marked until its next tick.
    pub fn resync(&self, symbol: &str, last: Option<Tick>) {
        let Some(slot) = self.slot(symbol) else {
            return;
        };
        if let Some(t) = last {
            let newer = {
                let st = slot.state.lock();
                st.latest
                    .as_ref()
                    .is_none_or(|p| p.tick.epoch != t.epoch || t.seq > p.tick.seq)
            };
            if newer {
                self.publish(t);
                return;
            }
        } else {
            return;
        }
        let mut st = slot.state.lock();
        if std::mem::take(&mut st.stale) {
            resend_snapshot(slot, &mut st);
        }
        Hub::regained(slot, &mut st, Cause::Bus);
    }

    /// Whether the local ring holds every tick after `from` up to the latest (or a resume
    /// from there needs no replay: nothing newer, or another epoch).
    pub fn covers(&self, symbol: &str, from: &ResumeFrom) -> bool {
        let Some(slot) = self.slot(symbol) else {
            return true;
        };
        let st = slot.state.lock();
        let Some(latest) = &st.latest else {
            return false;
        };
        if from
            .epoch
            .as_deref()
            .is_some_and(|e| e != &*latest.tick.epoch)
            || from.seq >= latest.tick.seq
        {
            return true;
        }
        let held = st
            .history
            .iter()
            .rev()
            .take_while(|e| e.tick.seq > from.seq)
            .count() as u64;
        held == latest.tick.seq - from.seq
    }

    /// The catch-up mark of session `session`'s unpaced subscription to `symbol`, with
    /// the symbol's slot (what a conflation for the budget marks).
    fn unpaced_subscription(&self, symbol: &str, session: u64) -> Option<(Arc<Slot>, Behind)> {
        let slot = self.slot(symbol)?;
        let behind = slot.state.lock().subscribers.get(&session)?.behind.clone();
        Some((slot.clone(), behind))
    }

    /// Brings the subscription of session `session` that fell behind on `slot` (a
    /// symbol's ticks or book, as [`Outbox::take_lagging`] gives them) up to date; see
    /// [`Lagging::catch_up`].
    pub fn catch_up(
        slot: &Arc<dyn Lagging>,
        behind: &Behind,
        session: u64,
        encoding: Encoding,
        out: &mut Vec<Bytes>,
    ) {
        slot.catch_up(behind, session, encoding, out);
    }
}

impl Lagging for Slot {
    /// Under the symbol's lock, the messages that replace what was dropped (a `gap` and
    /// the newest tick, or a fresh snapshot), and the mark cleared so live ticks flow
    /// again; ticks and snapshots in `encoding`.
    fn catch_up(&self, behind: &Behind, session: u64, encoding: Encoding, out: &mut Vec<Bytes>) {
        let slot = self;
        let mut st = slot.state.lock();
        let missed = behind.swap(0, Ordering::AcqRel);
        if missed == 0 {
            return;
        }
        let Some(latest) = st.latest.clone() else {
            return;
        };
        if let Some(sub) = pace::find_mut(&mut st, session) {
            pace::catch_up(sub, slot, &latest, missed, out);
        } else if missed == NEED_SNAPSHOT {
            out.push(latest.snapshot(encoding));
        } else {
            let to = latest.tick.seq;
            if to > missed {
                out.push(gap(&slot.symbol, missed, to - 1, GapReason::SlowConsumer));
            }
            if to >= missed {
                out.push(latest.record(encoding));
            }
        }
        if st.ever_stale {
            // A change of its status may have been among what it missed.
            let reason = (st.causes != 0).then_some(st.reason);
            out.push(ServerMsg::status(&slot.symbol, reason));
        }
    }
}

/// Queues the start of a new subscription (a snapshot, or the replay of a resume) and
/// says how its first message goes while the symbol has no value yet.
fn begin(
    st: &SlotState,
    slot: &Arc<Slot>,
    outbox: &Outbox,
    behind: &Behind,
    start: &Start,
) -> First {
    let Some(latest) = st.latest.clone() else {
        return match &start.resume {
            Some(from) => First::After(Box::new(from.clone())),
            None if start.snapshot => First::Snapshot,
            None => First::Live,
        };
    };
    let push = |msg: Bytes, missed: u64| outbox.push(slot, behind, msg, missed);
    let enc = start.encoding;
    match &start.resume {
        // Ticks this node has not received yet: they continue the client's position
        // as they arrive.
        Some(from) if ahead_of(&latest, from) => return First::After(Box::new(from.clone())),
        Some(from) => replay(
            &st.history,
            &slot.symbol,
            &latest,
            from,
            &start.backfill,
            enc,
            push,
        ),
        None if start.snapshot => {
            push(latest.snapshot(enc), NEED_SNAPSHOT);
        }
        None => {}
    }
    First::Live
}

/// Tells the candle subscribers of a symbol that do not hold its ticks (those were told
/// already) `msg`, a `status`.
fn tell_candled(st: &SlotState, msg: &Bytes, wakes: &mut Wakes) {
    for outbox in st.candled.outboxes() {
        let id = outbox.id();
        let told =
            st.subscribers.contains_key(&id) || st.paced.iter().any(|g| g.subs.contains_key(&id));
        if !told {
            outbox.offer(msg.clone(), wakes);
        }
    }
}

/// Sends every subscriber in step a fresh snapshot of the latest value.
fn resend_snapshot(slot: &Arc<Slot>, st: &mut SlotState) {
    let Some(latest) = st.latest.clone() else {
        return;
    };
    let snap = latest.snapshot_json();
    let bin = OnceCell::new();
    for sub in st.all_mut() {
        if sub.behind.load(Ordering::Acquire) == 0 {
            let msg = match sub.encoding {
                Encoding::Json => snap.clone(),
                enc => bin.get_or_init(|| latest.snapshot(enc)).clone(),
            };
            sub.outbox.push(slot, &sub.behind, msg, NEED_SNAPSHOT);
            sub.sent = latest.tick.seq;
        }
    }
}

/// Takes a subscriber out of a symbol's state; whether it was there.
fn remove(st: &mut SlotState, session: u64) -> bool {
    let sub = match st.subscribers.swap_remove(&session) {
        Some(sub) => sub,
        None => match pace::take(st, session) {
            Some((sub, _)) => sub,
            None => return false,
        },
    };
    sub.behind.store(0, Ordering::Release);
    if sub.first != First::Live {
        st.waiting_first -= 1;
    }
    true
}

/// Queues the first message of a subscriber that came before its symbol had a value,
/// now that `entry` is the first one. Returns whether it was queued.
fn first_message(
    history: &VecDeque<Arc<Entry>>,
    slot: &Arc<Slot>,
    sub: &Subscriber,
    entry: &Entry,
) -> bool {
    let push = |msg: Bytes, missed: u64| sub.outbox.push(slot, &sub.behind, msg, missed);
    match &sub.first {
        First::Live => true,
        First::Snapshot => push(entry.snapshot(sub.encoding), NEED_SNAPSHOT),
        First::After(from) => {
            let mut ok = true;
            replay(
                history,
                &slot.symbol,
                entry,
                from,
                &[],
                sub.encoding,
                |m, missed| {
                    ok = push(m, missed);
                    ok
                },
            );
            ok
        }
    }
}

/// A `gap` for one subscriber, counted in the metrics.
fn gap(symbol: &str, from: u64, to: u64, reason: GapReason) -> Bytes {
    crate::metrics::global().gaps[gap_index(reason)].fetch_add(1, Ordering::Relaxed);
    gap_note(symbol, from, to, reason).0
}

/// Where `reason` is counted in [`crate::metrics::Metrics::gaps`].
fn gap_index(reason: GapReason) -> usize {
    match reason {
        GapReason::SlowConsumer => 0,
        GapReason::Upstream => 1,
        GapReason::Expired => 2,
        GapReason::Reset => 3,
    }
}

/// A `gap` announced to every subscriber of a symbol (counted per subscriber it reached).
fn gap_note(symbol: &str, from: u64, to: u64, reason: GapReason) -> (Bytes, GapReason) {
    let msg = ServerMsg::Gap {
        symbol,
        channel: None,
        from,
        to,
        reason,
    }
    .to_json();
    (msg, reason)
}

/// How far past a node's latest seq a resume of the same epoch may be and still be
/// waited for (see [`ahead_of`]).
const AHEAD_LIMIT: u64 = 4096;

/// Whether a client resuming from `from` holds ticks of `latest`'s epoch that this node
/// has not received yet: it moved here from a node that was ahead (each node reads the
/// bus on its own), so its next ticks are on their way. It then waits for them instead
/// of being told its epoch was reset. Only with the epoch named, and at most
/// [`AHEAD_LIMIT`] ahead: a position by seq alone, or further, may be of another epoch.
fn ahead_of(latest: &Entry, from: &ResumeFrom) -> bool {
    from.epoch.as_deref() == Some(&*latest.tick.epoch)
        && from.seq > latest.tick.seq
        && from.seq - latest.tick.seq <= AHEAD_LIMIT
}

/// Queues the replay of `symbol` after `from`, per the resume rules of the protocol,
/// with ticks and snapshots in `enc`.
fn replay(
    history: &VecDeque<Arc<Entry>>,
    symbol: &str,
    latest: &Entry,
    from: &ResumeFrom,
    backfill: &[Arc<Entry>],
    enc: Encoding,
    mut push: impl FnMut(Bytes, u64) -> bool,
) {
    let last = latest.tick.seq;
    let epoch_differs = from
        .epoch
        .as_deref()
        .is_some_and(|e| e != &*latest.tick.epoch);
    if epoch_differs || from.seq > last {
        if push(
            gap(
                symbol,
                from.seq.saturating_add(1),
                from.seq.saturating_add(1),
                GapReason::Reset,
            ),
            NEED_SNAPSHOT,
        ) {
            push(latest.snapshot(enc), NEED_SNAPSHOT);
        }
        return;
    }
    if from.seq == last {
        return;
    }
    // The ring, completed from the bus's history where it has holes, in seq order.
    let merged: Vec<Arc<Entry>> = if backfill.is_empty() {
        history.iter().cloned().collect()
    } else {
        let mut by_seq: std::collections::BTreeMap<u64, Arc<Entry>> = backfill
            .iter()
            .filter(|e| {
                let t = &e.tick;
                t.epoch == latest.tick.epoch && t.seq > from.seq && t.seq <= last
            })
            .map(|e| (e.tick.seq, e.clone()))
            .collect();
        for e in history {
            by_seq.insert(e.tick.seq, e.clone());
        }
        by_seq.into_values().collect()
    };
    let oldest = merged.first().map_or(last, |e| e.tick.seq);
    if from.seq + 1 < oldest {
        if push(
            gap(symbol, from.seq + 1, last - 1, GapReason::Expired),
            NEED_SNAPSHOT,
        ) {
            push(latest.snapshot(enc), NEED_SNAPSHOT);
        }
        return;
    }
    let mut expected = from.seq + 1;
    for e in merged.iter().filter(|e| e.tick.seq > from.seq) {
        if e.tick.seq > expected
            && !push(
                gap(symbol, expected, e.tick.seq - 1, GapReason::Upstream),
                e.tick.seq,
            )
        {
            return;
        }
        if !push(e.record(enc), e.tick.seq) {
            return;
        }
        expected = e.tick.seq + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::policy::SlowPolicy;
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn tick(seq: u64) -> Tick {
        super::conflation_tests::tick("e1", seq)
    }

    /// (type, seq or from..to) of every message queued.
    fn drain(rx: &mut Receiver) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(b) = rx.try_recv() {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            out.push(match v["type"].as_str().unwrap() {
                "gap" => format!(
                    "gap {}-{} {}",
                    v["from"],
                    v["to"],
                    v["reason"].as_str().unwrap()
                ),
                "status" => format!(
                    "status {} {}",
                    v["state"].as_str().unwrap(),
                    v["reason"].as_str().unwrap_or("-")
                ),
                t => format!("{t} {}", v["seq"]),
            });
        }
        out
    }

    fn sub(hub: &Hub, start: Start) -> Receiver {
        static ID: AtomicU64 = AtomicU64::new(1);
        let id = ID.fetch_add(1, Ordering::Relaxed);
        let (outbox, rx) = Outbox::new(id, 1024, SlowPolicy::Conflate);
        let behind: Behind = Arc::new(AtomicU64::new(0));
        assert!(hub.subscribe("AAPL", &outbox, &behind, &start));
        rx
    }

    fn resume(seq: u64, backfill: Vec<Tick>) -> Start {
        let backfill = Entry::ready(backfill, Encoding::Json);
        Start {
            snapshot: true,
            resume: Some(ResumeFrom {
                epoch: Some("e1".into()),
                seq,
            }),
            backfill,
            encoding: Encoding::Json,
            ..Start::default()
        }
    }

    #[test]
    fn a_resume_merges_the_bus_history_with_the_ring_without_hole_or_duplicate() {
        let hub = Hub::new(["AAPL".into()], 100);
        // A node that only saw 20 (seeded) and then 23..25 live.
        hub.seed(tick(20));
        for s in 23..=25 {
            hub.publish(tick(s));
        }
        assert!(!hub.covers(
            "AAPL",
            &ResumeFrom {
                epoch: None,
                seq: 17
            }
        ));
        assert!(hub.covers(
            "AAPL",
            &ResumeFrom {
                epoch: None,
                seq: 22
            }
        ));
        // The bus still holds 18..=24 (overlapping the ring).
        let backfill: Vec<Tick> = (18..=24).map(tick).collect();
        let mut rx = sub(&hub, resume(17, backfill));
        let got = drain(&mut rx);
        let want: Vec<String> = (18..=25).map(|s| format!("tick {s}")).collect();
        assert_eq!(got, want);
        // Without the bus's history the hole is announced instead.
        let mut rx = sub(&hub, resume(17, Vec::new()));
        assert_eq!(
            drain(&mut rx),
            vec!["gap 18-24 expired".to_string(), "snapshot 25".to_string()]
        );
    }

    #[test]
    fn a_resume_ahead_of_this_node_waits_for_its_next_tick_instead_of_a_reset() {
        let hub = Hub::new(["AAPL".into()], 100);
        for s in 1..=5 {
            hub.publish(tick(s));
        }
        // A client from a node that already had 7: 6 and 7 are on their way here.
        let mut rx = sub(&hub, resume(7, Vec::new()));
        assert!(
            drain(&mut rx).is_empty(),
            "nothing yet: it holds more than this node"
        );
        hub.publish(tick(6));
        hub.publish(tick(7));
        assert!(drain(&mut rx).is_empty(), "what it holds is not sent again");
        hub.publish(tick(8));
        hub.publish(tick(9));
        assert_eq!(drain(&mut rx), vec!["tick 8", "tick 9"]);

        // Waiting for 12, it learns of a hole the node saw (10..11 never came): the
        // first tick past its position is replayed with the gap announced.
        let mut rx = sub(&hub, resume(11, Vec::new()));
        hub.publish(tick(13));
        assert_eq!(drain(&mut rx), vec!["gap 12-12 upstream", "tick 13"]);

        // By seq alone, or too far ahead, the position may be another epoch's: reset.
        let mut by_seq = resume(20, Vec::new());
        by_seq.resume.as_mut().unwrap().epoch = None;
        let mut rx = sub(&hub, by_seq);
        assert_eq!(drain(&mut rx), vec!["gap 21-21 reset", "snapshot 13"]);
        let mut rx = sub(&hub, resume(13 + AHEAD_LIMIT + 1, Vec::new()));
        let far = 13 + AHEAD_LIMIT + 2;
        assert_eq!(
            drain(&mut rx),
            vec![format!("gap {far}-{far} reset"), "snapshot 13".to_string()]
        );
        // A new epoch while it waits: reset.
        let mut rx = sub(&hub, resume(15, Vec::new()));
        hub.publish(super::conflation_tests::tick("e2", 1));
        assert_eq!(drain(&mut rx), vec!["gap 16-16 reset", "snapshot 1"]);
    }

    #[test]
    fn after_a_bus_outage_the_missed_range_is_a_gap_then_a_snapshot() {
        let hub = Hub::new(["AAPL".into()], 100);
        hub.publish(tick(1));
        let mut rx = sub(&hub, Start::default());
        hub.publish(tick(2));
        hub.mark_stale(&["AAPL".into()]);
        // The store knows 9: 3..8 were missed.
        hub.resync("AAPL", Some(tick(9)));
        hub.publish(tick(10));
        assert_eq!(
            drain(&mut rx),
            vec!["tick 2", "gap 3-8 upstream", "snapshot 9", "tick 10"]
        );
        // Nothing missed: still a fresh snapshot, once.
        hub.mark_stale(&["AAPL".into()]);
        hub.resync("AAPL", Some(tick(10)));
        hub.publish(tick(11));
        assert_eq!(drain(&mut rx), vec!["snapshot 10", "tick 11"]);
        // The store lost everything: the next tick carries the gap and the snapshot.
        hub.mark_stale(&["AAPL".into()]);
        hub.resync("AAPL", None);
        hub.publish(tick(15));
        assert_eq!(drain(&mut rx), vec!["gap 12-14 upstream", "snapshot 15"]);
    }

    #[test]
    fn a_new_epoch_while_stale_is_one_snapshot_then_live_then_ticks() {
        let hub = Hub::new(["AAPL".into()], 100);
        hub.publish(tick(1));
        let mut rx = sub(&hub, Start::default());
        let aapl: Symbol = "AAPL".into();
        hub.mark_stale(std::slice::from_ref(&aapl));
        hub.lost(std::slice::from_ref(&aapl), Cause::Bus, "bus");
        // The feed restarted while the bus was away: a new epoch comes back first.
        let next = |seq| crate::hub::conflation_tests::tick("e2", seq);
        hub.publish(next(1));
        hub.publish(next(2));
        assert_eq!(
            drain(&mut rx),
            [
                "status stale bus",
                "gap 2-2 reset",
                "snapshot 1",
                "status live -",
                "tick 2"
            ],
            "the new epoch's second tick is a tick, not a second snapshot"
        );
        // A subscriber that comes while it is stale is told so after its snapshot.
        hub.lost(std::slice::from_ref(&aapl), Cause::Feed, "feed");
        let mut late = sub(
            &hub,
            Start {
                snapshot: true,
                ..Start::default()
            },
        );
        assert_eq!(drain(&mut late), ["snapshot 2", "status stale feed"]);
        assert_eq!(hub.stale_reason("AAPL"), Some("feed"));
        assert_eq!(hub.stale_count(), 1);
    }

    #[test]
    fn seeding_keeps_the_newest_value_and_empties_a_ring_with_a_hole() {
        let hub = Hub::new(["AAPL".into()], 100);
        for s in 1..=3 {
            hub.publish(tick(s));
        }
        hub.seed(tick(2));
        assert_eq!(hub.latest("AAPL").unwrap().tick.seq, 3);
        hub.seed(tick(50));
        assert_eq!(hub.latest("AAPL").unwrap().tick.seq, 50);
        assert!(!hub.covers(
            "AAPL",
            &ResumeFrom {
                epoch: None,
                seq: 2
            }
        ));
    }
}

#[cfg(test)]
pub(crate) mod conflation_tests {
    use super::policy::SlowPolicy;
    use super::*;

    /// An AAPL tick of `epoch` (also used by the session's tests).
    pub(crate) fn tick(epoch: &str, seq: u64) -> Tick {
        Tick {
            symbol: "AAPL".into(),
            epoch: epoch.into(),
            seq,
            ts: seq,
            bid: 1.0,
            ask: 1.5,
            bid_size: 1,
            ask_size: 1,
            last: 1.25,
            last_size: 1,
            volume: seq,
            src_ts: None,
        }
    }

    /// A hub serving AAPL and its one subscriber, whose queue holds `queue` messages
    /// and conflates past that: the hub, the subscriber's outbox, its queue and its
    /// behind mark.
    fn subscribed(queue: usize) -> (Hub, Arc<Outbox>, Receiver, Behind) {
        let hub = Hub::new(["AAPL".into()], 16);
        let (outbox, rx) = Outbox::new(1, queue, SlowPolicy::Conflate);
        let behind: Behind = Arc::new(AtomicU64::new(0));
        assert!(hub.subscribe("AAPL", &outbox, &behind, &Start::default()));
        (hub, outbox, rx, behind)
    }

    fn drain(rx: &mut Receiver) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(m) = rx.try_recv() {
            out.push(String::from_utf8(m.to_vec()).unwrap());
        }
        out
    }

    #[test]
    fn a_lagging_subscriber_catches_up_with_gap_then_newest_tick() {
        let (hub, outbox, mut rx, behind) = subscribed(2);
        for seq in 1..=6 {
            hub.publish(tick("e", seq));
        }
        assert_eq!(behind.load(Ordering::Relaxed), 3, "first tick not queued");
        let queued = drain(&mut rx);
        assert_eq!(queued.len(), 2);
        let mut out = Vec::new();
        for (slot, b) in outbox.take_lagging() {
            Hub::catch_up(&slot, &b, outbox.id(), Encoding::Json, &mut out);
        }
        let out: Vec<String> = out
            .iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect();
        assert_eq!(
            out[0],
            r#"{"type":"gap","symbol":"AAPL","from":3,"to":5,"reason":"slow_consumer"}"#
        );
        assert!(out[1].contains(r#""seq":6"#) && out[1].starts_with(r#"{"type":"tick""#));
        hub.publish(tick("e", 7));
        assert!(drain(&mut rx)[0].contains(r#""seq":7"#), "live again");
    }

    #[test]
    fn a_lagging_subscriber_gets_a_snapshot_of_a_new_epoch() {
        let (hub, outbox, mut rx, _) = subscribed(1);
        hub.publish(tick("old", 1));
        hub.publish(tick("old", 2));
        hub.publish(tick("new", 1));
        drain(&mut rx);
        let mut out = Vec::new();
        for (slot, b) in outbox.take_lagging() {
            Hub::catch_up(&slot, &b, outbox.id(), Encoding::Json, &mut out);
        }
        assert_eq!(out.len(), 1);
        let snap = String::from_utf8(out[0].to_vec()).unwrap();
        assert!(
            snap.starts_with(r#"{"type":"snapshot","symbol":"AAPL","epoch":"new","seq":1"#),
            "{snap}"
        );
    }

    #[test]
    fn duplicates_are_dropped_and_jumps_announced() {
        let (hub, _, mut rx, _) = subscribed(64);
        assert_eq!(hub.publish(tick("e", 1)), Published::Delivered(1));
        assert_eq!(hub.publish(tick("e", 1)), Published::Duplicate);
        hub.publish(tick("e", 5));
        let got = drain(&mut rx);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[1],
            r#"{"type":"gap","symbol":"AAPL","from":2,"to":4,"reason":"upstream"}"#
        );
        let mut t = tick("e", 9);
        t.symbol = "ZZZZ".into();
        assert_eq!(hub.publish(t), Published::UnknownSymbol);
    }
}
