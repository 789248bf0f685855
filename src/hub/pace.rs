//! Pacing (`throttle_ms`): a paced subscriber gets at most one tick of a symbol per
//! interval, the newest, carrying `skipped`, the ticks folded into it since the previous
//! one it was sent.
//!
//! A symbol's paced subscribers are grouped by interval ([`PaceGroup`]). A tick does not
//! visit them: it sets its group's mark, once per interval whatever the number of
//! subscribers, and the first mark of an interval puts the symbol in the node's one
//! [`Pacer`] — per interval, the symbols marked since its last boundary, and the next
//! boundary of each interval, aligned to wall-clock multiples of it so that every
//! subscriber with the same pace fires together. At the boundary the node's pacing task
//! ([`Hub::pace`]) sends each subscriber of the group the newest tick, encoded once per
//! `skipped` value and encoding and shared by every subscriber with that value (all of
//! them, when they were last sent the same tick). A skipped tick costs no allocation:
//! only a flag is looked at.
//!
//! What is not a tick is not paced: a snapshot, a `gap`, a `status` go at once. Before a
//! `gap` (a loss upstream, a new epoch) the newest tick already folded is sent first, so
//! that `seq` − previous `seq` − 1 = `skipped` holds across it: the `gap`'s `to` is the
//! previous `seq` of the next paced tick.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use indexmap::IndexMap;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::candles::Candles;
use super::NEED_SNAPSHOT;
use super::{gap, Entry, FanOut, First, Hub, Slot, SlotState, Subscriber, Tally, Wakes};
use crate::protocol::{binary, Encoding, GapReason};
use crate::tick::now_ns;

/// The paced subscribers of one symbol that share an interval.
pub(super) struct PaceGroup {
    /// The interval, ms.
    every_ms: u32,
    /// A tick came since the group last fired: the symbol waits in the pacer.
    marked: bool,
    /// By session id.
    pub(super) subs: IndexMap<u64, Subscriber>,
}

/// What the pacer fires at a boundary: a symbol's paced ticks, or its paced book.
pub(super) trait Fire: Send + Sync {
    /// Sends the subscribers of the group of `every_ms` what they are due (bars folded
    /// into `candles` among it).
    fn fire(
        self: Arc<Self>,
        every_ms: u32,
        candles: &Candles,
        wakes: &mut Wakes,
        tally: &mut Tally,
    );
}

impl Fire for Slot {
    fn fire(
        self: Arc<Self>,
        every_ms: u32,
        candles: &Candles,
        wakes: &mut Wakes,
        tally: &mut Tally,
    ) {
        fire(&self, every_ms, candles, wakes, tally);
    }
}

/// The node's one timer structure: per interval, the symbols to fire at its next
/// boundary.
#[derive(Default)]
pub(super) struct Pacer {
    schedule: Mutex<Schedule>,
    /// An interval got a boundary sooner than those the pacing task waits for.
    wake: Notify,
}

#[derive(Default)]
struct Schedule {
    /// Per interval (ms), the symbols marked since its last boundary.
    due: HashMap<u32, Vec<Arc<dyn Fire>>>,
    /// The next boundary (ns since the Unix epoch) of each interval in `due`.
    next: BTreeSet<(u64, u32)>,
    /// Lists given back after a firing, kept for the next marks.
    spare: Vec<Vec<Arc<dyn Fire>>>,
}

/// Lists of symbols kept for reuse at most.
const SPARE_LISTS: usize = 64;

/// The first multiple of `every_ms` after `now` (ns since the Unix epoch).
fn boundary_after(now: u64, every_ms: u32) -> u64 {
    let every = u64::from(every_ms) * 1_000_000;
    (now / every + 1) * every
}

impl Pacer {
    /// Puts `slot` among the symbols to fire at the next boundary of `every_ms`. Called
    /// with the slot locked, once per group and interval.
    pub(super) fn mark(&self, every_ms: u32, slot: Arc<dyn Fire>) {
        let mut guard = self.schedule.lock();
        let Schedule { due, next, spare } = &mut *guard;
        let list = due
            .entry(every_ms)
            .or_insert_with(|| spare.pop().unwrap_or_default());
        if list.is_empty() {
            let at = boundary_after(now_ns(), every_ms);
            let sooner = next.first().is_none_or(|&(t, _)| at < t);
            next.insert((at, every_ms));
            if sooner {
                self.wake.notify_one();
            }
        }
        list.push(slot);
    }

    /// The next boundary that has symbols to fire.
    fn next_at(&self) -> Option<u64> {
        self.schedule.lock().next.first().map(|&(at, _)| at)
    }

    /// Takes the symbols of every interval whose boundary is at or before `now`.
    fn take_due(&self, now: u64, out: &mut Vec<(u32, Vec<Arc<dyn Fire>>)>) {
        let mut s = self.schedule.lock();
        while let Some(&(at, every)) = s.next.first() {
            if at > now {
                break;
            }
            s.next.pop_first();
            if let Some(list) = s.due.remove(&every) {
                out.push((every, list));
            }
        }
    }

    /// Keeps a fired list for reuse.
    fn give_back(&self, mut list: Vec<Arc<dyn Fire>>) {
        list.clear();
        let mut s = self.schedule.lock();
        if s.spare.len() < SPARE_LISTS {
            s.spare.push(list);
        }
    }
}

impl Hub {
    /// Sends paced subscribers their ticks at the boundaries of their intervals, until
    /// `stop`: the node's one pacing task.
    pub async fn pace(self: Arc<Self>, stop: CancellationToken) {
        let mut due = Vec::new();
        loop {
            let wait = self
                .pacer
                .next_at()
                .map(|at| Duration::from_nanos(at.saturating_sub(now_ns())));
            let sleep = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.pacer.wake.notified() => continue,
                _ = sleep => {}
            }
            self.fire_due(now_ns(), &mut due);
        }
    }

    /// Fires every interval whose boundary is at or before `now`; returns the ticks
    /// queued. Writers are woken once the whole firing is queued, so a connection gets
    /// the ticks of all its paced symbols in one frame.
    pub(super) fn fire_due(&self, now: u64, due: &mut Vec<(u32, Vec<Arc<dyn Fire>>)>) -> u64 {
        self.pacer.take_due(now, due);
        let mut wakes = Wakes::default();
        let mut tally = Tally::default();
        for (every, slots) in due.drain(..) {
            for slot in &slots {
                slot.clone()
                    .fire(every, &self.candles, &mut wakes, &mut tally);
            }
            self.pacer.give_back(slots);
        }
        drop(wakes);
        self.count(&tally);
        tally.delivered
    }
}

/// Sends the subscribers of `slot`'s group of `every_ms` the newest tick, each with
/// what it folded since the last one it was sent; and its candle subscribers of that
/// pace their forming bars.
fn fire(slot: &Arc<Slot>, every_ms: u32, candles: &Candles, wakes: &mut Wakes, tally: &mut Tally) {
    let mut st = slot.state.lock();
    if !st.candled.is_empty() {
        st.candled.fire(slot, candles, every_ms, wakes, tally);
    }
    let Some(latest) = st.latest.clone() else {
        return;
    };
    let Some(group) = st.paced.iter_mut().find(|g| g.every_ms == every_ms) else {
        return;
    };
    group.marked = false;
    let seq = latest.tick.seq;
    let mut made = Made::default();
    for sub in group.subs.values_mut() {
        if seq <= sub.sent || sub.first != First::Live || sub.behind.load(Ordering::Acquire) != 0 {
            continue;
        }
        let msg = made.get(&latest, seq - sub.sent - 1, sub.encoding);
        if sub
            .outbox
            .push_deferred(slot, &sub.behind, msg, sub.sent + 1, wakes)
        {
            sub.sent = seq;
            tally.delivered += 1;
        } else {
            tally.dropped += 1;
        }
    }
}

/// The paced ticks made during one firing of one symbol, by `skipped` and encoding.
#[derive(Default)]
struct Made {
    made: [Option<(u64, Encoding, Bytes)>; 4],
}

impl Made {
    /// The tick with `skipped` in `enc`, made once and then shared.
    fn get(&mut self, entry: &Entry, skipped: u64, enc: Encoding) -> Bytes {
        let mut free = None;
        for (i, m) in self.made.iter().enumerate() {
            match m {
                Some((k, e, msg)) if *k == skipped && *e == enc => return msg.clone(),
                None if free.is_none() => free = Some(i),
                _ => {}
            }
        }
        let msg = paced_record(entry, skipped, enc);
        if let Some(i) = free {
            self.made[i] = Some((skipped, enc, msg.clone()));
        }
        msg
    }
}

/// `entry` as a paced `tick` carrying `skipped`, in `enc`.
pub(super) fn paced_record(entry: &Entry, skipped: u64, enc: Encoding) -> Bytes {
    let rec = entry.record(enc);
    if binary::is_record(&rec) {
        return Bytes::from(binary::with_skipped(&rec, skipped));
    }
    // The tick's JSON object with `"skipped":K` as its last field.
    let end = rec.iter().rposition(|&b| b == b'}').unwrap_or(rec.len());
    let mut out = Vec::with_capacity(end + 24);
    out.extend_from_slice(&rec[..end]);
    // Writing into a Vec cannot fail.
    let _ = write!(out, ",\"skipped\":{skipped}}}");
    Bytes::from(out)
}

impl FanOut<'_> {
    /// Hands the tick to the paced subscribers: marks each group for its next boundary,
    /// and sends at once what is not paced (a first value, a `gap`, a snapshot, a
    /// `status`). `before` is the symbol's latest value before this tick.
    pub(super) fn paced(
        &mut self,
        st: &mut SlotState,
        before: Option<&Entry>,
        waiting: bool,
        pacer: &Pacer,
        wakes: &mut Wakes,
    ) {
        let news = self.note.is_some() || self.snapshot.is_some();
        let SlotState { history, paced, .. } = st;
        for group in paced.iter_mut() {
            let mut pending = false;
            for sub in group.subs.values_mut() {
                if waiting && sub.first != First::Live {
                    self.first(history, sub, wakes);
                    continue;
                }
                if news {
                    self.news(sub, before, wakes);
                } else if sub.behind.load(Ordering::Acquire) == 0 {
                    self.live(sub, wakes);
                }
                pending |= self.snapshot.is_none();
            }
            if pending && !group.marked {
                group.marked = true;
                pacer.mark(group.every_ms, self.slot.clone());
            }
        }
    }

    /// A paced subscriber when the tick brings a `gap` or is sent as a snapshot: what
    /// it folded before goes first, then the `gap`, then the snapshot (otherwise the
    /// tick waits for the boundary, `skipped` counting from the `gap`'s end).
    fn news(&mut self, sub: &mut Subscriber, before: Option<&Entry>, wakes: &mut Wakes) {
        if sub.behind.load(Ordering::Acquire) != 0 {
            if self.reset {
                sub.behind.store(NEED_SNAPSHOT, Ordering::Release);
            }
            self.dropped += 1;
            return;
        }
        if let Some(prev) = before.filter(|p| p.tick.seq > sub.sent) {
            let msg = paced_record(prev, prev.tick.seq - sub.sent - 1, sub.encoding);
            let missed = sub.sent + 1;
            if !sub
                .outbox
                .push_deferred(self.slot, &sub.behind, msg, missed, wakes)
            {
                self.dropped += 1;
                return;
            }
            self.delivered += 1;
            sub.sent = prev.tick.seq;
        }
        if !self.note(sub, wakes) {
            return;
        }
        let seq = self.entry.tick.seq;
        match self.snapshot_msg(sub.encoding) {
            Some(snap) => {
                let queued =
                    sub.outbox
                        .push_deferred(self.slot, &sub.behind, snap, NEED_SNAPSHOT, wakes);
                self.count(queued);
                if queued {
                    sub.sent = seq;
                    self.live(sub, wakes);
                }
            }
            None => {
                sub.sent = seq - 1;
                self.live(sub, wakes);
            }
        }
    }
}

/// The pace of session `session`'s subscription (0: unpaced), if it has one.
pub(super) fn held_pace(st: &SlotState, session: u64) -> Option<u32> {
    if st.subscribers.contains_key(&session) {
        return Some(0);
    }
    st.paced
        .iter()
        .find(|g| g.subs.contains_key(&session))
        .map(|g| g.every_ms)
}

/// Adds a subscriber, at pace `every_ms` (0: unpaced).
pub(super) fn insert(st: &mut SlotState, sub: Subscriber, every_ms: u32) {
    let id = sub.outbox.id();
    if every_ms == 0 {
        st.subscribers.insert(id, sub);
        return;
    }
    let group = match st.paced.iter().position(|g| g.every_ms == every_ms) {
        Some(i) => &mut st.paced[i],
        None => {
            st.paced.push(PaceGroup {
                every_ms,
                marked: false,
                subs: IndexMap::new(),
            });
            st.paced.last_mut().expect("just pushed")
        }
    };
    group.subs.insert(id, sub);
}

/// Takes a paced subscriber out, with its pace; a group left empty goes too.
pub(super) fn take(st: &mut SlotState, session: u64) -> Option<(Subscriber, u32)> {
    let i = st
        .paced
        .iter()
        .position(|g| g.subs.contains_key(&session))?;
    let sub = st.paced[i].subs.swap_remove(&session)?;
    let every = st.paced[i].every_ms;
    if st.paced[i].subs.is_empty() {
        st.paced.swap_remove(i);
    }
    Some((sub, every))
}

/// The paced subscriber of session `session`, if it is one.
pub(super) fn find_mut(st: &mut SlotState, session: u64) -> Option<&mut Subscriber> {
    st.paced.iter_mut().find_map(|g| g.subs.get_mut(&session))
}

/// Moves session `session`'s subscription to pace `every_ms` (0: unpaced). Leaving
/// pacing, it is first sent what it folded; a paced one keeps counting from the last
/// tick it was sent, at the new pace's boundaries.
pub(super) fn repace(
    st: &mut SlotState,
    slot: &Arc<Slot>,
    session: u64,
    every_ms: u32,
    pacer: &Pacer,
) {
    let (mut sub, was) = match st.subscribers.swap_remove(&session) {
        Some(sub) => (sub, 0),
        None => match take(st, session) {
            Some(taken) => taken,
            None => return,
        },
    };
    let newest = st.latest.clone();
    let in_step = sub.first == First::Live && sub.behind.load(Ordering::Acquire) == 0;
    match (&newest, was, every_ms) {
        (Some(l), _, 0) if in_step && l.tick.seq > sub.sent => {
            let msg = paced_record(l, l.tick.seq - sub.sent - 1, sub.encoding);
            sub.outbox.push(slot, &sub.behind, msg, sub.sent + 1);
        }
        (_, 0, _) => {
            // Unpaced, it was sent every tick up to the newest, or up to what it missed.
            let latest = newest.as_ref().map_or(0, |l| l.tick.seq);
            sub.sent = match sub.behind.load(Ordering::Acquire) {
                0 | NEED_SNAPSHOT => latest,
                missed => missed - 1,
            };
        }
        _ => {}
    }
    let pending = newest.as_ref().is_some_and(|l| l.tick.seq > sub.sent);
    insert(st, sub, every_ms);
    if let (true, Some(group)) = (
        pending && every_ms > 0,
        st.paced.iter_mut().find(|g| g.every_ms == every_ms),
    ) {
        if !group.marked {
            group.marked = true;
            pacer.mark(every_ms, slot.clone());
        }
    }
}

/// Brings a paced subscriber that fell behind up to date: a `gap` (`slow_consumer`) for
/// everything since the last tick it was sent, then the newest tick with `skipped` 0
/// (or a fresh snapshot, where that is what it lacks).
pub(super) fn catch_up(
    sub: &mut Subscriber,
    slot: &Slot,
    latest: &Entry,
    missed: u64,
    out: &mut Vec<Bytes>,
) {
    let to = latest.tick.seq;
    if missed == NEED_SNAPSHOT {
        out.push(latest.snapshot(sub.encoding));
    } else {
        if to > sub.sent + 1 {
            out.push(gap(
                &slot.symbol,
                sub.sent + 1,
                to - 1,
                GapReason::SlowConsumer,
            ));
        }
        if to > sub.sent {
            out.push(paced_record(latest, 0, sub.encoding));
        }
    }
    sub.sent = to;
}

#[cfg(test)]
mod tests {
    use super::super::{Behind, Outbox, Receiver, SlowPolicy, Start};
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn tick(seq: u64) -> crate::tick::Tick {
        super::super::conflation_tests::tick("e1", seq)
    }

    /// (type, seq, skipped or gap range) of every message queued.
    fn drain(rx: &mut Receiver) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(b) = rx.try_recv() {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            out.push(match v["type"].as_str().unwrap() {
                "gap" => format!("gap {}-{} {}", v["from"], v["to"], v["reason"]),
                "tick" if !v["skipped"].is_null() => format!("tick {} +{}", v["seq"], v["skipped"]),
                t => format!("{t} {}", v["seq"]),
            });
        }
        out
    }

    fn paced(hub: &Hub, id: u64, every_ms: u32, queue: usize) -> (Arc<Outbox>, Receiver) {
        let (outbox, rx) = Outbox::new(id, queue, SlowPolicy::Conflate);
        let behind: Behind = Arc::new(AtomicU64::new(0));
        let start = Start {
            snapshot: true,
            throttle_ms: every_ms,
            ..Start::default()
        };
        assert!(hub.subscribe("AAPL", &outbox, &behind, &start));
        (outbox, rx)
    }

    /// Fires whatever is marked, as if its boundary had come.
    fn fire_all(hub: &Hub) -> u64 {
        hub.fire_due(u64::MAX, &mut Vec::new())
    }

    #[test]
    fn a_paced_subscriber_gets_the_newest_tick_once_per_boundary_with_what_it_folded() {
        let hub = Hub::new(["AAPL".into()], 64);
        let (_o, mut rx) = paced(&hub, 1, 100, 64);
        hub.publish(tick(1));
        assert_eq!(
            drain(&mut rx),
            ["snapshot 1"],
            "the first value is not paced"
        );
        for s in 2..=6 {
            hub.publish(tick(s));
        }
        assert!(drain(&mut rx).is_empty(), "nothing before the boundary");
        // One mark for the symbol, whatever the number of ticks.
        assert_eq!(hub.pacer.schedule.lock().due[&100].len(), 1);
        assert_eq!(fire_all(&hub), 1);
        assert_eq!(drain(&mut rx), ["tick 6 +4"]);
        assert_eq!(fire_all(&hub), 0, "nothing new, nothing sent");
        hub.publish(tick(7));
        fire_all(&hub);
        assert_eq!(drain(&mut rx), ["tick 7 +0"]);
    }

    #[test]
    fn a_loss_upstream_sends_what_was_folded_then_the_gap() {
        let hub = Hub::new(["AAPL".into()], 64);
        hub.publish(tick(1));
        let (_o, mut rx) = paced(&hub, 1, 250, 64);
        hub.publish(tick(2));
        hub.publish(tick(3));
        hub.publish(tick(7));
        assert_eq!(
            drain(&mut rx),
            ["snapshot 1", "tick 3 +1", "gap 4-6 \"upstream\""]
        );
        hub.publish(tick(8));
        fire_all(&hub);
        assert_eq!(drain(&mut rx), ["tick 8 +1"], "8 - 6 - 1: 7 was folded");
    }

    #[test]
    fn subscribers_with_the_same_pace_share_the_bytes_and_others_fire_apart() {
        let hub = Hub::new(["AAPL".into()], 64);
        hub.publish(tick(1));
        let (_a, mut a) = paced(&hub, 1, 100, 64);
        let (_b, mut b) = paced(&hub, 2, 100, 64);
        let (_c, mut c) = paced(&hub, 3, 1000, 64);
        for r in [&mut a, &mut b, &mut c] {
            r.try_recv().unwrap();
        }
        hub.publish(tick(2));
        hub.publish(tick(3));
        let due = hub.pacer.schedule.lock().next.clone();
        assert_eq!(
            due.iter()
                .map(|&(_, every)| every)
                .collect::<Vec<_>>()
                .len(),
            2
        );
        for &(at, every) in &due {
            assert_eq!(
                at % (u64::from(every) * 1_000_000),
                0,
                "aligned to the clock"
            );
        }
        fire_all(&hub);
        let (x, y, z) = (
            a.try_recv().unwrap(),
            b.try_recv().unwrap(),
            c.try_recv().unwrap(),
        );
        assert_eq!(
            x.as_ptr(),
            y.as_ptr(),
            "encoded once for the same pace and position"
        );
        assert_eq!(&x[..], &z[..]);
    }

    #[test]
    fn a_pace_change_keeps_the_count_and_leaving_pacing_sends_what_was_folded() {
        let hub = Hub::new(["AAPL".into()], 64);
        hub.publish(tick(1));
        let (o, mut rx) = paced(&hub, 1, 100, 64);
        drain(&mut rx);
        hub.publish(tick(2));
        hub.publish(tick(3));
        let behind: Behind = Arc::new(AtomicU64::new(0));
        let start = |throttle_ms| Start {
            throttle_ms,
            ..Start::default()
        };
        // Another pace: nothing is sent now; the new interval fires what was folded.
        assert!(hub.subscribe("AAPL", &o, &behind, &start(500)));
        assert!(drain(&mut rx).is_empty());
        fire_all(&hub);
        assert_eq!(drain(&mut rx), ["tick 3 +1"]);
        hub.publish(tick(4));
        hub.publish(tick(5));
        // Unpaced: what was folded goes at once, then every tick as it comes.
        assert!(hub.subscribe("AAPL", &o, &behind, &start(0)));
        hub.publish(tick(6));
        assert_eq!(drain(&mut rx), ["tick 5 +1", "tick 6"]);
        // Paced again: counting starts from the last tick sent.
        assert!(hub.subscribe("AAPL", &o, &behind, &start(100)));
        hub.publish(tick(7));
        hub.publish(tick(8));
        fire_all(&hub);
        assert_eq!(drain(&mut rx), ["tick 8 +1"]);
        assert_eq!(hub.subscriber_count("AAPL"), 1);
        assert!(hub.unsubscribe("AAPL", 1));
        assert!(hub.slot("AAPL").unwrap().state.lock().paced.is_empty());
    }

    #[test]
    fn a_slow_paced_subscriber_catches_up_with_a_gap_from_its_last_tick() {
        let hub = Hub::new(["AAPL".into()], 64);
        hub.publish(tick(1));
        let (o, mut rx) = paced(&hub, 1, 100, 1);
        // Its queue holds the snapshot: the firing of 3 finds it full.
        hub.publish(tick(2));
        hub.publish(tick(3));
        fire_all(&hub);
        assert_eq!(drain(&mut rx), ["snapshot 1"]);
        hub.publish(tick(4));
        hub.publish(tick(5));
        fire_all(&hub);
        assert!(
            drain(&mut rx).is_empty(),
            "behind: the pacer leaves it alone"
        );
        let mut out = Vec::new();
        for (slot, behind) in o.take_lagging() {
            Hub::catch_up(&slot, &behind, o.id(), Encoding::Json, &mut out);
        }
        let got: Vec<serde_json::Value> = out
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap())
            .collect();
        assert_eq!(
            (
                got[0]["type"].as_str(),
                got[0]["from"].as_u64(),
                got[0]["to"].as_u64()
            ),
            (Some("gap"), Some(2), Some(4))
        );
        assert_eq!(
            (got[1]["seq"].as_u64(), got[1]["skipped"].as_u64()),
            (Some(5), Some(0))
        );
        hub.publish(tick(6));
        fire_all(&hub);
        assert_eq!(drain(&mut rx), ["tick 6 +0"]);
    }

    #[test]
    fn a_paced_tick_that_finds_the_queue_full_closes_under_the_disconnect_policy() {
        let hub = Hub::new(["AAPL".into()], 64);
        hub.publish(tick(1));
        let (outbox, _rx) = Outbox::new(1, 1, SlowPolicy::Disconnect);
        let behind: Behind = Arc::new(AtomicU64::new(0));
        let start = Start {
            snapshot: true,
            throttle_ms: 100,
            ..Start::default()
        };
        assert!(hub.subscribe("AAPL", &outbox, &behind, &start));
        hub.publish(tick(2));
        assert!(!outbox.overflowed(), "the snapshot fits");
        fire_all(&hub);
        assert!(outbox.overflowed(), "the paced tick did not: close 4008");
    }

    #[test]
    fn a_new_epoch_goes_at_once_as_gap_and_snapshot() {
        let hub = Hub::new(["AAPL".into()], 64);
        hub.publish(tick(1));
        let (_o, mut rx) = paced(&hub, 1, 100, 64);
        hub.publish(tick(2));
        let mut t = tick(1);
        t.epoch = "e2".into();
        hub.publish(t);
        let got = drain(&mut rx);
        assert_eq!(
            got,
            ["snapshot 1", "tick 2 +0", "gap 3-3 \"reset\"", "snapshot 1"]
        );
        fire_all(&hub);
        assert!(drain(&mut rx).is_empty(), "the snapshot is the newest");
    }

    #[test]
    fn paced_json_carries_skipped_as_its_last_field() {
        let e = Entry::new(tick(9));
        let j = paced_record(&e, 12, Encoding::Json);
        let text = std::str::from_utf8(&j).unwrap();
        assert!(text.ends_with(r#","volume":9,"skipped":12}"#), "{text}");
        let b = paced_record(&e, 12, Encoding::Binary);
        assert_eq!(binary::decode(&b).unwrap()[0].skipped, Some(12));
    }
}
