//! The hub: this node's registry of symbols — latest value, bounded history and local
//! subscribers — and the fan-out of every tick to them.
//!
//! A tick is encoded once when it arrives; every subscriber's queue gets a clone of the
//! same bytes (a reference count, not a copy). Each symbol has its own lock, taken once
//! per tick and once per subscribe or unsubscribe, so a snapshot or a replay and the
//! live ticks after it can never interleave out of order.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use indexmap::IndexMap;
use parking_lot::Mutex;

use crate::protocol::{binary, Encoding, GapReason, ResumeFrom, ServerMsg};
use crate::tick::{Kind, Symbol, Tick};

pub mod queue;

pub use queue::{Behind, Outbox, Receiver, SlowPolicy, Wakes, NEED_SNAPSHOT};

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
}

/// How a subscription that started before its symbol had any value begins.
#[derive(Clone, Debug, PartialEq, Eq)]
enum First {
    /// Already streaming.
    Live,
    /// The first value is sent as its `snapshot`.
    Snapshot,
    /// The client holds this position: the first value continues it as a tick when it
    /// is the next one, else it is announced (`gap`) and sent as a `snapshot`.
    After(ResumeFrom),
}

#[derive(Default)]
struct SlotState {
    latest: Option<Arc<Entry>>,
    history: VecDeque<Arc<Entry>>,
    /// By session id: found, added and removed in O(1), iterated densely.
    subscribers: IndexMap<u64, Subscriber>,
    /// Subscribers still waiting for their first message (see [`First`]).
    waiting_first: usize,
    /// The bus lost this symbol for a while: the next value is announced with a `gap`
    /// for what was missed and sent as a fresh `snapshot`.
    stale: bool,
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
    history_len: usize,
    stats: HubStats,
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
    pub backfill: Vec<Tick>,
    /// How the session's ticks and snapshots are encoded.
    pub encoding: Encoding,
}

impl Hub {
    /// A hub serving `symbols`, keeping `history_len` recent ticks per symbol.
    pub fn new<I: IntoIterator<Item = Symbol>>(symbols: I, history_len: usize) -> Hub {
        let slots = symbols
            .into_iter()
            .map(|s| {
                let slot = Arc::new(Slot {
                    symbol: s.clone(),
                    state: Mutex::new(SlotState::default()),
                });
                (s, slot)
            })
            .collect();
        Hub {
            slots,
            history_len: history_len.max(1),
            stats: HubStats::default(),
        }
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
        let mut v: Vec<Symbol> = self.slots.keys().cloned().collect();
        v.sort();
        v
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
            .map_or(0, |s| s.state.lock().subscribers.len())
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
        let tick = &entry.tick;
        let Some(slot) = self.slot(&tick.symbol) else {
            return Published::UnknownSymbol;
        };
        let mut st = slot.state.lock();
        let mut announce: Option<(Bytes, GapReason)> = None;
        let mut reset = false;
        if let Some(prev) = &st.latest {
            if prev.tick.epoch == tick.epoch {
                if tick.seq <= prev.tick.seq {
                    tally.duplicates += 1;
                    return Published::Duplicate;
                }
                if tick.seq > prev.tick.seq + 1 {
                    announce = Some(gap_note(
                        &tick.symbol,
                        prev.tick.seq + 1,
                        tick.seq - 1,
                        GapReason::Upstream,
                    ));
                }
            } else {
                announce = Some(gap_note(
                    &tick.symbol,
                    prev.tick.seq + 1,
                    prev.tick.seq + 1,
                    GapReason::Reset,
                ));
                reset = true;
                st.history.clear();
            }
        }
        let seq = tick.seq;
        if st.history.len() >= self.history_len {
            st.history.pop_front();
        }
        st.history.push_back(entry.clone());
        st.latest = Some(entry.clone());
        tally.ticks += 1;

        let snapshot = (reset || std::mem::take(&mut st.stale))
            .then(|| (entry.snapshot_json(), std::cell::OnceCell::new()));
        // Subscribers that came before the symbol's first value get it as a snapshot
        // (or as the continuation of the position they resumed from).
        let waiting = std::mem::take(&mut st.waiting_first) > 0;
        let mut delivered = 0usize;
        let mut dropped = 0u64;
        let mut notes = 0u64;
        for sub in st.subscribers.values() {
            if waiting && sub.first != First::Live {
                if first_message(&st, slot, sub, &entry) {
                    delivered += 1;
                } else {
                    dropped += 1;
                }
                continue;
            }
            if sub.behind.load(Ordering::Acquire) != 0 {
                if reset {
                    // What it missed belongs to the old epoch: it catches up with a
                    // snapshot of the new one instead.
                    sub.behind.store(NEED_SNAPSHOT, Ordering::Release);
                }
                dropped += 1;
                continue;
            }
            let push = |msg: Bytes, missed: u64, wakes: &mut Wakes| {
                sub.outbox
                    .push_deferred(slot, &sub.behind, msg, missed, wakes)
            };
            if let Some((note, _)) = &announce {
                if !push(note.clone(), NEED_SNAPSHOT, wakes) {
                    dropped += 1;
                    continue;
                }
                notes += 1;
            }
            let ok = match (&snapshot, sub.encoding) {
                (Some((json, _)), Encoding::Json) => push(json.clone(), NEED_SNAPSHOT, wakes),
                (Some((_, bin)), enc) => {
                    let s = bin.get_or_init(|| entry.snapshot(enc)).clone();
                    push(s, NEED_SNAPSHOT, wakes)
                }
                (None, enc) => push(entry.record(enc), seq, wakes),
            };
            if ok {
                delivered += 1;
            } else {
                dropped += 1;
            }
        }
        if waiting {
            for sub in st.subscribers.values_mut() {
                sub.first = First::Live;
            }
        }
        drop(st);
        if let Some((_, reason)) = announce {
            let m = crate::metrics::global();
            m.gaps[gap_index(reason)].fetch_add(notes, Ordering::Relaxed);
        }
        tally.delivered += delivered as u64;
        tally.dropped += dropped;
        Published::Delivered(delivered)
    }

    /// Adds a subscriber to `symbol`, first queueing what `start` asks for (a snapshot,
    /// or a replay from history with `gap`s for what is gone), all under the symbol's
    /// lock so that live ticks follow without a hole or a duplicate. A symbol that has
    /// no value yet sends its first one as the snapshot.
    ///
    /// Returns false when the symbol is not served here. Subscribing twice queues
    /// nothing, unless `start` resumes from a position: then the subscription restarts
    /// from there (how a client re-syncs after it saw a hole).
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
        if st.subscribers.contains_key(&outbox.id()) {
            if start.resume.is_none() {
                return true;
            }
            remove(&mut st, outbox.id());
        }
        behind.store(0, Ordering::Release);
        let first = match st.latest.clone() {
            Some(latest) => {
                let push = |msg: Bytes, missed: u64| outbox.push(slot, behind, msg, missed);
                let enc = start.encoding;
                match &start.resume {
                    Some(from) => {
                        replay(&st, &slot.symbol, &latest, from, &start.backfill, enc, push)
                    }
                    None if start.snapshot => {
                        push(latest.snapshot(enc), NEED_SNAPSHOT);
                    }
                    None => {}
                }
                First::Live
            }
            None => match &start.resume {
                Some(from) => First::After(from.clone()),
                None if start.snapshot => First::Snapshot,
                None => First::Live,
            },
        };
        if first != First::Live {
            st.waiting_first += 1;
        }
        st.subscribers.insert(
            outbox.id(),
            Subscriber {
                outbox: outbox.clone(),
                behind: behind.clone(),
                encoding: start.encoding,
                first,
            },
        );
        true
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
        let entry = Entry::new(tick);
        if st.history.len() >= self.history_len {
            st.history.pop_front();
        }
        st.history.push_back(entry.clone());
        st.latest = Some(entry);
        st.stale = false;
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
        if !std::mem::take(&mut st.stale) {
            return;
        }
        let Some(latest) = st.latest.clone() else {
            return;
        };
        let snap = latest.snapshot_json();
        let bin = std::cell::OnceCell::new();
        for sub in st.subscribers.values() {
            if sub.behind.load(Ordering::Acquire) == 0 {
                let msg = match sub.encoding {
                    Encoding::Json => snap.clone(),
                    enc => bin.get_or_init(|| latest.snapshot(enc)).clone(),
                };
                sub.outbox.push(slot, &sub.behind, msg, NEED_SNAPSHOT);
            }
        }
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

    /// Brings a subscription that fell behind up to date: under the symbol's lock, the
    /// messages that replace what was dropped (a `gap` and the newest tick, or a fresh
    /// snapshot), and the mark cleared so live ticks flow again. Appends to `out`, with
    /// ticks and snapshots in `encoding`.
    pub fn catch_up(slot: &Arc<Slot>, behind: &Behind, encoding: Encoding, out: &mut Vec<Bytes>) {
        let st = slot.state.lock();
        let missed = behind.swap(0, Ordering::AcqRel);
        if missed == 0 {
            return;
        }
        let Some(latest) = st.latest.as_ref() else {
            return;
        };
        if missed == NEED_SNAPSHOT {
            out.push(latest.snapshot(encoding));
            return;
        }
        let to = latest.tick.seq;
        if to > missed {
            out.push(gap(&slot.symbol, missed, to - 1, GapReason::SlowConsumer));
        }
        if to >= missed {
            out.push(latest.record(encoding));
        }
    }
}

/// Takes a subscriber out of a symbol's state; whether it was there.
fn remove(st: &mut SlotState, session: u64) -> bool {
    match st.subscribers.swap_remove(&session) {
        Some(sub) => {
            sub.behind.store(0, Ordering::Release);
            if sub.first != First::Live {
                st.waiting_first -= 1;
            }
            true
        }
        None => false,
    }
}

/// Queues the first message of a subscriber that came before its symbol had a value,
/// now that `entry` is the first one. Returns whether it was queued.
fn first_message(st: &SlotState, slot: &Arc<Slot>, sub: &Subscriber, entry: &Entry) -> bool {
    let push = |msg: Bytes, missed: u64| sub.outbox.push(slot, &sub.behind, msg, missed);
    match &sub.first {
        First::Live => true,
        First::Snapshot => push(entry.snapshot(sub.encoding), NEED_SNAPSHOT),
        First::After(from) => {
            let mut ok = true;
            replay(
                st,
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
        from,
        to,
        reason,
    }
    .to_json();
    (msg, reason)
}

/// Queues the replay of `symbol` after `from`, per the resume rules of the protocol,
/// with ticks and snapshots in `enc`.
fn replay(
    st: &SlotState,
    symbol: &str,
    latest: &Entry,
    from: &ResumeFrom,
    backfill: &[Tick],
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
            gap(symbol, from.seq + 1, from.seq + 1, GapReason::Reset),
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
        st.history.iter().cloned().collect()
    } else {
        let mut by_seq: std::collections::BTreeMap<u64, Arc<Entry>> = backfill
            .iter()
            .filter(|t| t.epoch == latest.tick.epoch && t.seq > from.seq && t.seq <= last)
            .map(|t| (t.seq, Entry::new(t.clone())))
            .collect();
        for e in &st.history {
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
    use super::queue::SlowPolicy;
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn tick(seq: u64) -> Tick {
        Tick {
            symbol: "AAPL".into(),
            epoch: "e1".into(),
            seq,
            ts: seq,
            bid: 1.0,
            ask: 1.1,
            bid_size: 1,
            ask_size: 1,
            last: 1.0,
            last_size: 1,
            volume: seq,
            src_ts: None,
        }
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
        Start {
            snapshot: true,
            resume: Some(ResumeFrom {
                epoch: Some("e1".into()),
                seq,
            }),
            backfill,
            encoding: Encoding::Json,
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
    use super::queue::SlowPolicy;
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

    fn drain(rx: &mut Receiver) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(m) = rx.try_recv() {
            out.push(String::from_utf8(m.to_vec()).unwrap());
        }
        out
    }

    #[test]
    fn a_lagging_subscriber_catches_up_with_gap_then_newest_tick() {
        let hub = Hub::new(["AAPL".into()], 16);
        let (outbox, mut rx) = Outbox::new(1, 2, SlowPolicy::Conflate);
        let behind: Behind = Arc::new(AtomicU64::new(0));
        assert!(hub.subscribe("AAPL", &outbox, &behind, &Start::default()));
        for seq in 1..=6 {
            hub.publish(tick("e", seq));
        }
        assert_eq!(behind.load(Ordering::Relaxed), 3, "first tick not queued");
        let queued = drain(&mut rx);
        assert_eq!(queued.len(), 2);
        let mut out = Vec::new();
        for (slot, b) in outbox.take_lagging() {
            Hub::catch_up(&slot, &b, Encoding::Json, &mut out);
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
        let hub = Hub::new(["AAPL".into()], 16);
        let (outbox, mut rx) = Outbox::new(1, 1, SlowPolicy::Conflate);
        let behind: Behind = Arc::new(AtomicU64::new(0));
        hub.subscribe("AAPL", &outbox, &behind, &Start::default());
        hub.publish(tick("old", 1));
        hub.publish(tick("old", 2));
        hub.publish(tick("new", 1));
        drain(&mut rx);
        let mut out = Vec::new();
        for (slot, b) in outbox.take_lagging() {
            Hub::catch_up(&slot, &b, Encoding::Json, &mut out);
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
        let hub = Hub::new(["AAPL".into()], 16);
        let (outbox, mut rx) = Outbox::new(1, 64, SlowPolicy::Conflate);
        let behind: Behind = Arc::new(AtomicU64::new(0));
        hub.subscribe("AAPL", &outbox, &behind, &Start::default());
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
