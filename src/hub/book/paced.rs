//! Paced book subscriptions (`throttle_ms`): at most one update per interval, netting
//! out every change since the previous one it was sent.
//!
//! A book's paced subscribers are grouped by interval. A message does not visit them:
//! it marks each group once per interval in the node's one pacer (the ticks' pacer).
//! At the boundary the group's subscribers get one update each from the window they
//! hold to the current one, computed once per depth and position and encoded once per
//! encoding; the group keeps the windows it last fired with, so that the next firing
//! nets from them without walking the history.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexMap;

use super::lag::bring_up;
use super::view::{window_diff, History, Made, Render};
use super::{BookSlot, BookState, BookSub, First};
use crate::book::{Book, Level, Levels};
use crate::hub::candles::Candles;
use crate::hub::pace::{Fire, Pacer};
use crate::hub::queue::Wakes;
use crate::hub::Tally;
use crate::protocol::channel::Depth;
use crate::protocol::GapReason;

/// The paced subscribers of one book that share an interval.
pub(super) struct Group {
    every_ms: u32,
    /// A message came since the group last fired: the book waits in the pacer.
    marked: bool,
    /// By session id.
    pub(super) subs: IndexMap<u64, BookSub>,
    /// The seq and the windows (top 50 a side) of the group's last firing.
    last: Option<(u64, Levels)>,
}

/// Takes session `session`'s paced subscriber out of `groups`, with its pace; a group
/// left empty goes too.
pub(super) fn take(groups: &mut Vec<Group>, session: u64) -> Option<(BookSub, u32)> {
    let i = groups.iter().position(|g| g.subs.contains_key(&session))?;
    let sub = groups[i].subs.swap_remove(&session)?;
    let every = groups[i].every_ms;
    if groups[i].subs.is_empty() {
        groups.swap_remove(i);
    }
    Some((sub, every))
}

/// Adds a subscriber at pace `every_ms` (0: unpaced).
pub(super) fn insert(st: &mut BookState, sub: BookSub, every_ms: u32) {
    let id = sub.outbox.id();
    if every_ms == 0 {
        st.subs.insert(id, sub);
        return;
    }
    let group = match st.paced.iter().position(|g| g.every_ms == every_ms) {
        Some(i) => &mut st.paced[i],
        None => {
            st.paced.push(Group {
                every_ms,
                marked: false,
                subs: IndexMap::new(),
                last: None,
            });
            st.paced.last_mut().expect("just pushed")
        }
    };
    group.subs.insert(id, sub);
}

/// A message changed the book: each group not marked yet waits for its boundary.
pub(super) fn mark(st: &mut BookState, slot: &Arc<BookSlot>, pacer: &Pacer) {
    for group in st.paced.iter_mut().filter(|g| !g.marked) {
        group.marked = true;
        pacer.mark(group.every_ms, slot.clone());
    }
}

/// Moves session `session`'s subscription to pace `every_ms` (0: unpaced). Leaving
/// pacing, it is sent at once what nets out the changes it has not had; a paced one
/// keeps counting from what it holds, at the new pace's boundaries.
pub(super) fn repace(
    st: &mut BookState,
    slot: &Arc<BookSlot>,
    session: u64,
    every_ms: u32,
    pacer: &Pacer,
) {
    let (mut sub, was) = match st.subs.swap_remove(&session) {
        Some(sub) => (sub, 0),
        None => match take(&mut st.paced, session) {
            Some(taken) => taken,
            None => return,
        },
    };
    let in_step = sub.first == First::Live && sub.behind.load(Ordering::Acquire) == 0;
    if let (true, Some(book)) = (in_step && was != every_ms, st.book.as_ref()) {
        if was == 0 {
            // Unpaced and in step, it holds the current windows.
            sub.holds = book.seq;
        } else if every_ms == 0 && sub.holds < book.seq {
            let render = slot.render(book, st.checksum);
            let mut out = Vec::new();
            bring_up(&render, &st.history, &mut sub, GapReason::Expired, &mut out);
            for msg in out {
                sub.outbox.push(slot, &sub.behind, msg, sub.sent + 1);
            }
        }
    }
    insert(st, sub, every_ms);
    if every_ms > 0 {
        mark(st, slot, pacer);
    }
}

impl Fire for BookSlot {
    /// Sends each subscriber of the group of `every_ms` one update from the windows it
    /// holds to the current ones.
    fn fire(
        self: Arc<Self>,
        every_ms: u32,
        _candles: &Candles,
        wakes: &mut Wakes,
        tally: &mut Tally,
    ) {
        let mut st = self.state.lock();
        let BookState {
            book,
            checksum,
            history,
            paced,
            ..
        } = &mut *st;
        let (Some(book), Some(group)) = (
            book.as_ref(),
            paced.iter_mut().find(|g| g.every_ms == every_ms),
        ) else {
            return;
        };
        group.marked = false;
        let render = self.render(book, *checksum);
        let mut firing = Firing {
            slot: &self,
            render,
            history,
            last: group.last.as_ref(),
            nets: Vec::new(),
            made: Made::default(),
        };
        for sub in group.subs.values_mut() {
            if sub.first == First::Live
                && sub.behind.load(Ordering::Acquire) == 0
                && sub.holds < book.seq
            {
                firing.send(sub, wakes, tally);
            }
        }
        let mut windows = group.last.take().map(|(_, l)| l).unwrap_or_default();
        windows.copy_top(&book.levels, Depth::Top50.levels());
        group.last = Some((book.seq, windows));
    }
}

/// What changed in a window since a position, both sides.
type Net = (Vec<Level>, Vec<Level>);

/// One firing of one group: the nets and messages made once and shared.
struct Firing<'a> {
    slot: &'a Arc<BookSlot>,
    render: Render<'a>,
    history: &'a History,
    last: Option<&'a (u64, Levels)>,
    /// By depth and position: what changed since, `None` where it cannot be known.
    nets: Vec<((Depth, u64), Option<Net>)>,
    /// By depth, position, previous seq and encoding.
    made: Made<(Depth, u64, u64, crate::protocol::Encoding)>,
}

impl Firing<'_> {
    /// Sends `sub` its update (or, where its windows cannot be rebuilt, a `gap` and a
    /// `book`).
    fn send(&mut self, sub: &mut BookSub, wakes: &mut Wakes, tally: &mut Tally) {
        let (depth, holds, sent, enc) = (sub.depth, sub.holds, sub.sent, sub.encoding);
        let Firing {
            slot,
            render,
            history,
            last,
            nets,
            made,
        } = self;
        let seq = render.book.seq;
        let msgs: Vec<Bytes> = match net(nets, *last, history, render.book, depth, holds) {
            Some((bids, asks)) if bids.is_empty() && asks.is_empty() => {
                sub.holds = seq;
                return;
            }
            Some((bids, asks)) => {
                let key = (depth, holds, sent, enc);
                vec![made.get(key, || render.message(Some(sent), bids, asks, enc))]
            }
            None => {
                let mut out = Vec::new();
                bring_up(render, history, sub, GapReason::Expired, &mut out);
                (sub.sent, sub.holds) = (sent, holds);
                out
            }
        };
        for msg in msgs {
            if !sub
                .outbox
                .push_deferred(*slot, &sub.behind, msg, sent + 1, wakes)
            {
                tally.dropped += 1;
                return;
            }
            tally.delivered += 1;
        }
        (sub.sent, sub.holds) = (seq, seq);
    }
}

/// What changed at `depth` since `holds`, computed once per firing: from the group's
/// last windows when it fired at `holds`, else rebuilt from the history; `None` where
/// the history no longer reaches it.
fn net<'n>(
    nets: &'n mut Vec<((Depth, u64), Option<Net>)>,
    last: Option<&(u64, Levels)>,
    history: &History,
    book: &Book,
    depth: Depth,
    holds: u64,
) -> Option<&'n Net> {
    let key = (depth, holds);
    let i = match nets.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            let net = match last {
                Some((seq, windows)) if *seq == holds => {
                    Some(window_diff(windows, &book.levels, depth))
                }
                _ => history
                    .levels_at(book, holds)
                    .map(|held| window_diff(&held, &book.levels, depth)),
            };
            nets.push((key, net));
            nets.len() - 1
        }
    };
    nets[i].1.as_ref()
}
