//! Bringing a book subscriber that is not in step up to date: one that fell behind
//! (its queue was full), or that leaves pacing.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::view::{self, History, Render};
use super::{BookSlot, BookState, BookSub, First};
use crate::hub::queue::{Behind, Lagging, NEED_SNAPSHOT};
use crate::protocol::{Encoding, GapReason};

/// Appends to `out` what brings `sub` from the window it holds to the current one: one
/// update that nets out everything since (nothing when its window did not change), or,
/// where the history no longer reaches what it holds, a `gap` of `reason` for what it
/// will not get and a fresh `book`. `sub` is in step afterwards.
pub(super) fn bring_up(
    render: &Render<'_>,
    history: &History,
    sub: &mut BookSub,
    reason: GapReason,
    out: &mut Vec<Bytes>,
) {
    let book = render.book;
    let last = book.seq;
    let held = (sub.sent != 0)
        .then(|| history.levels_at(book, sub.holds))
        .flatten();
    match held {
        Some(held) => {
            let (bids, asks) = view::window_diff(&held, &book.levels, sub.depth);
            if !(bids.is_empty() && asks.is_empty()) {
                out.push(render.message(Some(sub.sent), &bids, &asks, sub.encoding));
                sub.sent = last;
            }
        }
        None => {
            if sub.sent != 0 && sub.sent + 1 < last {
                out.push(view::gap(render.symbol, sub.sent + 1, last - 1, reason));
            }
            out.push(render.book(sub.depth, sub.encoding));
            sub.sent = last;
        }
    }
    sub.holds = last;
}

impl Lagging for BookSlot {
    /// Under the symbol's lock: one netted update, or a `gap` (`slow_consumer`) and a
    /// fresh `book` (also when what it missed was a book or a `gap`); then its
    /// `status` if the book has been stale at some time.
    fn catch_up(&self, behind: &Behind, session: u64, _: Encoding, out: &mut Vec<Bytes>) {
        let mut st = self.state.lock();
        let missed = behind.swap(0, Ordering::AcqRel);
        if missed == 0 {
            return;
        }
        let Some(book) = st.book.clone() else { return };
        let (checksum, ever_stale) = (st.checksum, st.ever_stale);
        let reason = (st.causes != 0).then_some(st.reason);
        let BookState {
            history,
            subs,
            paced,
            ..
        } = &mut *st;
        let sub = match subs.get_mut(&session) {
            Some(sub) => sub,
            None => match paced.iter_mut().find_map(|g| g.subs.get_mut(&session)) {
                Some(sub) => sub,
                None => return,
            },
        };
        if sub.first != First::Live {
            return;
        }
        if missed == NEED_SNAPSHOT {
            sub.sent = 0;
        }
        let render = self.render(&book, checksum);
        bring_up(&render, history, sub, GapReason::SlowConsumer, out);
        if ever_stale {
            // A change of its status may have been among what it missed.
            out.push(view::status(&self.symbol, reason));
        }
    }
}
