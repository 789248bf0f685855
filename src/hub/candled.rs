//! The subscribers of a symbol's `candles` channel, kept in the symbol's state beside its
//! tick subscribers: grouped by interval and pace, so that what a tick changes is
//! encoded once per interval and shared.
//!
//! - A subscription starts, under the symbol's lock, with its `candles` message (up to
//!   its `backfill` closed bars, then the forming bar): no bar is missed or sent twice.
//! - A bar a tick closes goes at once, `"closed":true`, to every subscriber of its
//!   interval (encoded once): exactly once per bar.
//! - The forming bar is paced: a tick that changes it marks its groups in the node's one
//!   pacer ([`super::pace`]), and at the group's boundary each subscriber gets the forming
//!   bar's `candle` message (encoded once per change). The pace is the subscription's
//!   `throttle_ms`, else [`DEFAULT_PACE`].
//! - After a rewind (a replay started over) the bars are made again: a fresh `candles`
//!   message replaces what the subscriber held.
//! - A subscriber whose queue is full when a bar is due is not caught up bar by bar: at
//!   its group's next boundary it gets a fresh `candles` message instead (or, under the
//!   `disconnect` policy, its connection is closed with 4008, as for a tick).

use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexMap;

use super::candles::{Candles, Folded, Interval, DEFAULT_PACE};
use super::pace::Pacer;
use super::queue::{Outbox, Wakes};
use super::{Slot, Tally};

/// One subscriber of one interval.
pub(super) struct CandleSub {
    outbox: Arc<Outbox>,
    /// Closed bars it asked for first (sent again with a fresh `candles`).
    backfill: usize,
    /// A bar was not queued for it: it gets a fresh `candles` at the next boundary.
    resync: bool,
}

/// The subscribers of one interval that share a pace.
pub(super) struct CandleGroup {
    interval: Interval,
    /// The pace of the forming bar, ms.
    every_ms: u32,
    /// The forming bar changed, or a subscriber needs a fresh `candles`, since the
    /// group last fired: the symbol waits in the pacer.
    marked: bool,
    /// By session id.
    subs: IndexMap<u64, CandleSub>,
}

/// The pace of a candles subscription that gave `throttle_ms` (0: the default).
pub(super) fn pace_of(throttle_ms: u32) -> u32 {
    if throttle_ms == 0 {
        DEFAULT_PACE.as_millis() as u32
    } else {
        throttle_ms
    }
}

/// The candle subscribers of one symbol.
#[derive(Default)]
pub(super) struct Candled {
    groups: Vec<CandleGroup>,
}

impl Candled {
    /// Whether nobody holds the symbol's candles.
    pub(super) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Every subscriber, to tell them what concerns the symbol (a `status`).
    pub(super) fn outboxes(&self) -> impl Iterator<Item = &Arc<Outbox>> {
        self.groups
            .iter()
            .flat_map(|g| g.subs.values().map(|s| &s.outbox))
    }

    /// Adds session `outbox`'s subscription to `interval` at pace `every_ms` (replacing
    /// one it held), after queueing its `candles` message `start` (when that finds no
    /// room, a fresh one follows at the group's next boundary).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add(
        &mut self,
        slot: &Arc<Slot>,
        pacer: &Pacer,
        outbox: &Arc<Outbox>,
        interval: Interval,
        backfill: usize,
        every_ms: u32,
        start: Bytes,
    ) {
        self.remove(outbox.id(), interval);
        let queued = outbox.offer(start, &mut Wakes::default());
        let sub = CandleSub {
            outbox: outbox.clone(),
            backfill,
            resync: !queued,
        };
        let group = match self
            .groups
            .iter()
            .position(|g| g.interval == interval && g.every_ms == every_ms)
        {
            Some(i) => &mut self.groups[i],
            None => {
                self.groups.push(CandleGroup {
                    interval,
                    every_ms,
                    marked: false,
                    subs: IndexMap::new(),
                });
                self.groups.last_mut().expect("just pushed")
            }
        };
        if sub.resync && !group.marked {
            group.marked = true;
            pacer.mark(every_ms, slot.clone());
        }
        group.subs.insert(outbox.id(), sub);
    }

    /// Removes session `session`'s subscription to `interval`; whether it held one.
    pub(super) fn remove(&mut self, session: u64, interval: Interval) -> bool {
        let mut found = false;
        for g in self.groups.iter_mut().filter(|g| g.interval == interval) {
            found |= g.subs.swap_remove(&session).is_some();
        }
        self.groups.retain(|g| !g.subs.is_empty());
        found
    }

    /// What a folded tick changed, for the subscribers: closed bars at once, a fresh
    /// `candles` after a rewind, the forming bar marked for its groups' boundaries.
    pub(super) fn folded(
        &mut self,
        slot: &Arc<Slot>,
        folded: &Folded,
        pacer: &Pacer,
        wakes: &mut Wakes,
        tally: &mut Tally,
    ) {
        for (interval, bar, _) in folded.closed() {
            let msg = bar.candle_json(&slot.symbol, interval, true);
            for g in self.groups.iter_mut().filter(|g| g.interval == interval) {
                for sub in g.subs.values_mut() {
                    send(sub, msg.clone(), wakes, tally);
                }
            }
        }
        for g in &mut self.groups {
            let change = &folded.changes[g.interval.index()];
            if change.rewound {
                for sub in g.subs.values_mut() {
                    sub.resync = true;
                }
            }
            let due = change.forming || change.rewound || change.closed.is_some();
            if due && !g.marked {
                g.marked = true;
                pacer.mark(g.every_ms, slot.clone());
            }
        }
    }

    /// A boundary of pace `every_ms`: each marked group's subscribers get the forming
    /// bar (or a fresh `candles`, where one is owed).
    pub(super) fn fire(
        &mut self,
        slot: &Arc<Slot>,
        candles: &Candles,
        every_ms: u32,
        wakes: &mut Wakes,
        tally: &mut Tally,
    ) {
        for g in self
            .groups
            .iter_mut()
            .filter(|g| g.every_ms == every_ms && g.marked)
        {
            g.marked = false;
            let forming = candles.forming(&slot.symbol, g.interval);
            for sub in g.subs.values_mut() {
                if sub.resync {
                    if let Some(fresh) = candles.start(&slot.symbol, g.interval, sub.backfill) {
                        sub.resync = false;
                        send(sub, fresh, wakes, tally);
                    }
                } else if let Some(msg) = &forming {
                    send(sub, msg.clone(), wakes, tally);
                }
            }
        }
    }
}

/// Queues `msg` for `sub`; a full queue owes it a fresh `candles` instead.
fn send(sub: &mut CandleSub, msg: Bytes, wakes: &mut Wakes, tally: &mut Tally) {
    if sub.resync {
        tally.dropped += 1;
        return;
    }
    if sub.outbox.offer(msg, wakes) {
        tally.delivered += 1;
    } else {
        sub.resync = true;
        tally.dropped += 1;
    }
}
