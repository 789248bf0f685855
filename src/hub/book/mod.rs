//! Books on a node: per symbol the one current book (at the depth its feed or
//! publisher gives), a bounded history of what each message changed, and the local
//! subscribers of its depth windows (10 or 50 levels a side).
//!
//! A message arrives once per symbol ([`Books::publish`]); under the symbol's lock the
//! book is updated, and each depth window that has subscribers in step is compared
//! with the window before: what changed (a level entering the window with its size, a
//! level leaving it as size 0) is encoded once per depth, position and encoding, and
//! the same bytes go to every subscriber that needs them. A window that did not change
//! sends nothing. A subscriber that fell behind (its queue was full), a paced one at
//! its boundary and a resuming one get one update that nets out everything since the
//! book they hold, rebuilt from the history; where the history no longer reaches it,
//! a `gap` and a fresh `book`. So a client never gets an update that does not apply to
//! the book it holds: every update names that book's seq as `prev_seq`.

mod lag;
mod paced;
mod view;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexMap;
use parking_lot::Mutex;

use super::pace::Pacer;
use super::queue::{Behind, Outbox, Wakes, NEED_SNAPSHOT};
use super::{Cause, Tally};
use crate::book::{Book, BookMsg, Levels, Spec};
use crate::protocol::channel::Depth;
use crate::protocol::{Encoding, GapReason, ResumeFrom};
use crate::tick::Symbol;
use view::{History, Made, Render};

/// The limits of the books a node keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BookSettings {
    /// Messages whose changes are kept per symbol, for resuming and netting.
    pub history: usize,
    /// Most levels a side a book may hold (a publisher's larger book is refused).
    pub max_levels: usize,
}

impl Default for BookSettings {
    fn default() -> Self {
        BookSettings {
            history: 1024,
            max_levels: 1000,
        }
    }
}

/// Counters of the books.
#[derive(Debug, Default)]
pub struct BookStats {
    /// Book messages applied.
    pub applied: AtomicU64,
    /// Messages with a seq the book already has, dropped.
    pub duplicates: AtomicU64,
    /// Messages that could not apply (no book to apply to, a hole, a bad book), dropped.
    pub refused: AtomicU64,
}

/// What became of a book message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BookPublished {
    /// Applied, and handed to this many subscribers.
    Applied(usize),
    /// A seq the book already has.
    Duplicate,
    /// It cannot apply to the book held, for this reason.
    Refused(String),
    /// No book of this symbol is kept here.
    UnknownSymbol,
}

/// The book a resuming client holds, rebuilt elsewhere (from the bus's history) for a
/// position this node's own history does not reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookBase {
    /// Its epoch.
    pub epoch: Arc<str>,
    /// Its seq (the resume position).
    pub seq: u64,
    /// Its levels, every one of them.
    pub levels: Levels,
}

/// How a book subscription starts, as the client asked.
#[derive(Clone, Debug, Default)]
pub struct BookStart {
    /// Resume from this position instead of a `book`.
    pub resume: Option<ResumeFrom>,
    /// The book at the resume position, when the bus had it: used where this node's
    /// history does not reach back to it.
    pub base: Option<Box<BookBase>>,
    /// Levels per side.
    pub depth: Depth,
    /// How the messages are encoded.
    pub encoding: Encoding,
    /// The pace in ms (0: every change).
    pub throttle_ms: u32,
}

/// The books of every symbol a node serves books of.
pub struct Books {
    slots: HashMap<Symbol, Arc<BookSlot>>,
    settings: BookSettings,
    stats: BookStats,
}

/// One symbol's book, its history and subscribers.
pub struct BookSlot {
    symbol: Symbol,
    spec: Spec,
    max_levels: usize,
    state: Mutex<BookState>,
}

impl BookSlot {
    /// The renderer of this symbol's messages for `book` with its `checksum`.
    fn render<'a>(&'a self, book: &'a Book, checksum: u32) -> Render<'a> {
        Render {
            symbol: &self.symbol,
            spec: self.spec,
            book,
            checksum,
        }
    }
}

/// How a subscription that started before its symbol had a book begins.
#[derive(Clone, Debug, PartialEq, Eq)]
enum First {
    /// Streaming.
    Live,
    /// Its first message is the first book.
    Book,
    /// The client holds this position: the first book is judged by the resume rules.
    After(ResumeFrom),
}

/// One subscriber of a book.
struct BookSub {
    outbox: Arc<Outbox>,
    behind: Behind,
    depth: Depth,
    encoding: Encoding,
    first: First,
    /// The seq of the last message it was sent (the `prev_seq` of its next update); 0
    /// when it holds no book.
    sent: u64,
    /// A seq whose window at its depth is the one it holds (at least `sent`: a window
    /// that did not change sends nothing). Kept up to date while it is not in step.
    holds: u64,
    /// The book its resume position names, rebuilt from the bus, until it starts.
    base: Option<Box<BookBase>>,
}

struct BookState {
    book: Option<Book>,
    checksum: u32,
    history: History,
    /// Unpaced subscribers, by session.
    subs: IndexMap<u64, BookSub>,
    /// Paced subscribers, one group per interval.
    paced: Vec<paced::Group>,
    /// Subscribers waiting for the first book.
    waiting: usize,
    /// The windows before a message, for the diff (room kept between messages).
    before: Levels,
    /// Why the book is not current now (a [`Cause`] bit each), and the first reason.
    causes: u8,
    reason: &'static str,
    ever_stale: bool,
}

/// What a message did to the book.
enum Arrival {
    /// It applied to the book at this seq.
    Step { prev: u64 },
    /// It replaced the book (the first one, a new epoch, or after a hole), announced
    /// by this `gap` (from, to, reason) if any.
    Fresh(Option<(u64, u64, GapReason)>),
}

impl Books {
    /// Books of `specs` (symbol, price decimals), kept within `settings`.
    pub fn new(specs: impl IntoIterator<Item = (Symbol, Spec)>, settings: BookSettings) -> Books {
        let slots = specs
            .into_iter()
            .map(|(symbol, spec)| {
                let slot = BookSlot {
                    symbol: symbol.clone(),
                    spec,
                    max_levels: settings.max_levels,
                    state: Mutex::new(BookState::new(settings.history)),
                };
                (symbol, Arc::new(slot))
            })
            .collect();
        Books {
            slots,
            settings,
            stats: BookStats::default(),
        }
    }

    /// Whether any book is kept.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The limits in force.
    pub fn settings(&self) -> BookSettings {
        self.settings
    }

    /// Counters.
    pub fn stats(&self) -> &BookStats {
        &self.stats
    }

    /// How `symbol`'s prices are written, when its book is kept here.
    pub fn spec(&self, symbol: &str) -> Option<Spec> {
        self.slots.get(symbol).map(|s| s.spec)
    }

    /// The current book of `symbol`, if it has one.
    pub fn current(&self, symbol: &str) -> Option<Book> {
        self.slots.get(symbol)?.state.lock().book.clone()
    }

    /// Subscribers of `symbol`'s book now.
    pub fn subscriber_count(&self, symbol: &str) -> usize {
        self.slots.get(symbol).map_or(0, |s| {
            let st = s.state.lock();
            st.subs.len() + st.paced.iter().map(|g| g.subs.len()).sum::<usize>()
        })
    }

    /// Bytes `symbol`'s book and its history hold, and the steps in the history.
    pub fn footprint(&self, symbol: &str) -> Option<(usize, usize)> {
        let st = self.slots.get(symbol)?.state.lock();
        let levels = st.book.as_ref().map_or(0, |b| b.levels.bytes());
        Some((
            std::mem::size_of::<BookSlot>() + levels + st.history.bytes() + st.before.bytes(),
            st.history.len(),
        ))
    }

    /// Applies `msgs` in order, each to its symbol's book, and hands what changed to the
    /// subscribers; their writers are woken once all are queued. Returns what became of
    /// each.
    pub(super) fn publish(
        &self,
        msgs: &[BookMsg],
        pacer: &Pacer,
        tally: &mut Tally,
    ) -> Vec<BookPublished> {
        let mut wakes = Wakes::default();
        let out = msgs
            .iter()
            .map(|m| match self.slots.get(&m.symbol) {
                None => BookPublished::UnknownSymbol,
                Some(slot) => slot.publish(m, pacer, &mut wakes, tally),
            })
            .collect::<Vec<_>>();
        drop(wakes);
        for r in &out {
            let counter = match r {
                BookPublished::Applied(_) => &self.stats.applied,
                BookPublished::Duplicate => &self.stats.duplicates,
                _ => &self.stats.refused,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    /// Adds a subscriber of `symbol`'s book, first queueing its start (a `book`, or
    /// what a resume calls for) under the symbol's lock, so that updates follow without
    /// a hole. Subscribing again changes the pace only, unless it resumes or asks
    /// another depth: then the subscription starts again. False when no book of the
    /// symbol is kept here.
    pub(super) fn subscribe(
        &self,
        symbol: &str,
        outbox: &Arc<Outbox>,
        behind: &Behind,
        start: &BookStart,
        pacer: &Pacer,
    ) -> bool {
        match self.slots.get(symbol) {
            Some(slot) => {
                slot.subscribe(outbox, behind, start, pacer);
                true
            }
            None => false,
        }
    }

    /// Whether a book subscriber resuming `symbol` from `from` is answered from this
    /// node alone: its book is of that epoch and its history reaches back to the seq
    /// (or the seq is not behind the book). False when no book is held yet.
    pub fn covers(&self, symbol: &str, from: &ResumeFrom) -> bool {
        let Some(slot) = self.slots.get(symbol) else {
            return true;
        };
        let st = slot.state.lock();
        let Some(book) = &st.book else {
            return false;
        };
        let same = from.epoch.as_deref().is_none_or(|e| e == &*book.epoch);
        same && (from.seq >= book.seq || from.seq >= st.history.reach(book))
    }

    /// Removes session `session`'s subscription of `symbol`'s book; whether it had one.
    pub fn unsubscribe(&self, symbol: &str, session: u64) -> bool {
        self.slots
            .get(symbol)
            .is_some_and(|s| s.state.lock().remove(session).is_some())
    }

    /// The books of `symbols` are stale for `cause`: their subscribers get `status`
    /// stale with `reason` (`"channel":"book"`), until the next message of the book.
    pub(super) fn lost(&self, symbols: &[Symbol], cause: Cause, reason: &'static str) {
        for s in symbols {
            let Some(slot) = self.slots.get(s) else {
                continue;
            };
            let mut st = slot.state.lock();
            let was = st.causes;
            st.causes |= cause as u8;
            if was != 0 {
                continue;
            }
            st.reason = reason;
            st.ever_stale = true;
            let msg = view::status(&slot.symbol, Some(reason));
            st.each_in_step(|sub| {
                sub.outbox
                    .push(slot, &sub.behind, msg.clone(), sub.sent + 1);
            });
        }
    }

    /// `cause` no longer holds for `symbol`'s book, which missed nothing meanwhile (the
    /// bus gave it again at the seq held): when nothing else keeps it stale, its
    /// subscribers get `status` live.
    pub fn regained(&self, symbol: &str, cause: Cause) {
        let Some(slot) = self.slots.get(symbol) else {
            return;
        };
        let mut st = slot.state.lock();
        let was = st.causes;
        st.causes &= !(cause as u8);
        if was == 0 || st.causes != 0 {
            return;
        }
        let msg = view::status(&slot.symbol, None);
        st.each_in_step(|sub| {
            sub.outbox
                .push(slot, &sub.behind, msg.clone(), sub.sent + 1);
        });
    }
}

impl BookState {
    fn new(history: usize) -> BookState {
        BookState {
            book: None,
            checksum: 0,
            history: History::new(history),
            subs: IndexMap::new(),
            paced: Vec::new(),
            waiting: 0,
            before: Levels::default(),
            causes: 0,
            reason: "",
            ever_stale: false,
        }
    }

    /// Calls `f` with every subscriber that is streaming and in step.
    fn each_in_step(&self, mut f: impl FnMut(&BookSub)) {
        let paced = self.paced.iter().flat_map(|g| g.subs.values());
        for sub in self.subs.values().chain(paced) {
            if sub.first == First::Live && sub.behind.load(Ordering::Acquire) == 0 {
                f(sub);
            }
        }
    }

    /// Every subscriber, to change.
    fn all_mut(&mut self) -> impl Iterator<Item = &mut BookSub> {
        let paced = self.paced.iter_mut().flat_map(|g| g.subs.values_mut());
        self.subs.values_mut().chain(paced)
    }

    /// Session `session`'s subscriber, wherever it is.
    fn find_mut(&mut self, session: u64) -> Option<&mut BookSub> {
        if let Some(sub) = self.subs.get_mut(&session) {
            return Some(sub);
        }
        self.paced.iter_mut().find_map(|g| g.subs.get_mut(&session))
    }

    /// Takes session `session`'s subscriber out, with its pace (0: unpaced).
    fn remove(&mut self, session: u64) -> Option<(BookSub, u32)> {
        let (sub, every) = match self.subs.swap_remove(&session) {
            Some(sub) => (sub, 0),
            None => paced::take(&mut self.paced, session)?,
        };
        sub.behind.store(0, Ordering::Release);
        if sub.first != First::Live {
            self.waiting -= 1;
        }
        Some((sub, every))
    }

    /// Takes `msg` into the book: a step from the book held, a fresh book, or a reason
    /// to drop it (with the book unchanged).
    fn take(&mut self, msg: &BookMsg, max_levels: usize) -> Result<Arrival, BookPublished> {
        let Some((epoch_differs, seq)) =
            self.book.as_ref().map(|b| (*b.epoch != *msg.epoch, b.seq))
        else {
            return self.fresh(msg, max_levels, None);
        };
        if epoch_differs {
            return self.fresh(msg, max_levels, Some((seq + 1, seq + 1, GapReason::Reset)));
        }
        if msg.seq <= seq {
            return Err(BookPublished::Duplicate);
        }
        match msg.prev_seq {
            None if msg.seq > seq + 1 => {
                let hole = (seq + 1, msg.seq - 1, GapReason::Upstream);
                self.fresh(msg, max_levels, Some(hole))
            }
            Some(p) if p != seq => Err(BookPublished::Refused(format!(
                "prev_seq {p} does not follow the book held, seq {seq}"
            ))),
            _ => {
                let book = self.book.as_mut().expect("looked at above");
                let changes = book
                    .apply(msg, max_levels)
                    .map_err(BookPublished::Refused)?;
                self.checksum = book.levels.checksum();
                self.history.push(seq, msg.seq, &changes);
                Ok(Arrival::Step { prev: seq })
            }
        }
    }

    /// Takes a whole book in place of what was held (nothing of it can be rebuilt).
    fn fresh(
        &mut self,
        msg: &BookMsg,
        max_levels: usize,
        gap: Option<(u64, u64, GapReason)>,
    ) -> Result<Arrival, BookPublished> {
        if msg.prev_seq.is_some() {
            return Err(BookPublished::Refused(format!(
                "no book of epoch {} to apply an update to: a whole book comes first",
                msg.epoch
            )));
        }
        let mut book = Book::from_msg(&BookMsg {
            bids: Vec::new(),
            asks: Vec::new(),
            ..msg.clone()
        });
        book.apply(msg, max_levels)
            .map_err(BookPublished::Refused)?;
        self.checksum = book.levels.checksum();
        self.book = Some(book);
        self.history.clear();
        Ok(Arrival::Fresh(gap))
    }

    /// The message's renderer, once a book is held.
    fn render<'a>(&'a self, slot: &'a BookSlot) -> Option<Render<'a>> {
        Some(slot.render(self.book.as_ref()?, self.checksum))
    }
}

impl BookSlot {
    /// Applies one message and hands what it changed to the subscribers.
    fn publish(
        self: &Arc<Self>,
        msg: &BookMsg,
        pacer: &Pacer,
        wakes: &mut Wakes,
        tally: &mut Tally,
    ) -> BookPublished {
        let mut st = self.state.lock();
        let windows = !st.subs.is_empty() && st.book.is_some();
        if windows {
            let BookState { book, before, .. } = &mut *st;
            if let Some(b) = book {
                before.copy_top(&b.levels, Depth::Top50.levels());
            }
        }
        let arrival = match st.take(msg, self.max_levels) {
            Ok(a) => a,
            Err(why) => return why,
        };
        let live = (st.causes != 0).then(|| {
            st.causes = 0;
            view::status(&self.symbol, None)
        });
        let mut fan = Fan {
            slot: self,
            delivered: 0,
            dropped: 0,
        };
        match arrival {
            Arrival::Step { prev } if windows => fan.step(&mut st, prev, wakes),
            Arrival::Step { .. } => {}
            Arrival::Fresh(gap) => fan.fresh(&mut st, gap, wakes),
        }
        if st.waiting > 0 {
            fan.first(&mut st);
        }
        if let Some(live) = live {
            st.each_in_step(|sub| {
                sub.outbox
                    .push_deferred(self, &sub.behind, live.clone(), sub.sent + 1, wakes);
            });
        }
        paced::mark(&mut st, self, pacer);
        tally.delivered += fan.delivered;
        tally.dropped += fan.dropped;
        BookPublished::Applied(fan.delivered as usize)
    }

    fn subscribe(
        self: &Arc<Self>,
        outbox: &Arc<Outbox>,
        behind: &Behind,
        start: &BookStart,
        pacer: &Pacer,
    ) {
        let mut st = self.state.lock();
        if let Some(sub) = st.find_mut(outbox.id()) {
            if start.resume.is_none() && sub.depth == start.depth {
                paced::repace(&mut st, self, outbox.id(), start.throttle_ms, pacer);
                return;
            }
            st.remove(outbox.id());
        }
        behind.store(0, Ordering::Release);
        let mut sub = BookSub {
            outbox: outbox.clone(),
            behind: behind.clone(),
            depth: start.depth,
            encoding: start.encoding,
            first: First::Live,
            sent: 0,
            holds: 0,
            base: start.base.clone(),
        };
        match st.render(self) {
            Some(render) => {
                let (sent, holds) = begin(self, &render, &st.history, &sub, start.resume.as_ref());
                (sub.sent, sub.holds, sub.base) = (sent, holds, None);
            }
            None => {
                sub.first = start.resume.clone().map_or(First::Book, First::After);
                st.waiting += 1;
            }
        }
        if st.causes != 0 && sub.first == First::Live {
            let msg = view::status(&self.symbol, Some(st.reason));
            outbox.push(self, behind, msg, sub.sent + 1);
        }
        paced::insert(&mut st, sub, start.throttle_ms);
    }
}

/// Queues the start of a subscription to a book that exists: its `book`, or what its
/// resume position calls for (`docs/protocol.md`, section 9, "Order books"). Returns
/// the subscriber's `sent` and `holds` after it.
fn begin(
    slot: &Arc<BookSlot>,
    render: &Render<'_>,
    history: &History,
    sub: &BookSub,
    resume: Option<&ResumeFrom>,
) -> (u64, u64) {
    let book = render.book;
    let last = book.seq;
    let push = |msg: Bytes, missed: u64| sub.outbox.push(slot, &sub.behind, msg, missed);
    let whole = |gap: Option<(u64, u64, GapReason)>| {
        if let Some((from, to, reason)) = gap {
            if !push(view::gap(&slot.symbol, from, to, reason), NEED_SNAPSHOT) {
                return (0, 0);
            }
        }
        match push(render.book(sub.depth, sub.encoding), NEED_SNAPSHOT) {
            true => (last, last),
            false => (0, 0),
        }
    };
    let Some(from) = resume else {
        return whole(None);
    };
    let n = from.seq;
    if from.epoch.as_deref().is_some_and(|e| e != &*book.epoch) || n > last {
        let next = n.saturating_add(1);
        return whole(Some((next, next, GapReason::Reset)));
    }
    if n == last {
        return (last, last);
    }
    let rebuilt = || {
        let base = sub.base.as_deref()?;
        (base.seq == n && base.epoch == book.epoch).then(|| base.levels.clone())
    };
    let Some(held) = history.levels_at(book, n).or_else(rebuilt) else {
        let lost = (n + 1 < last).then_some((n + 1, last - 1, GapReason::Expired));
        return whole(lost);
    };
    let (bids, asks) = view::window_diff(&held, &book.levels, sub.depth);
    if bids.is_empty() && asks.is_empty() {
        return (n, last);
    }
    let msg = render.message(Some(n), &bids, &asks, sub.encoding);
    match push(msg, n + 1) {
        true => (last, last),
        false => (n, n),
    }
}

/// One message's fan-out to the subscribers of a book, and its tally.
struct Fan<'a> {
    slot: &'a Arc<BookSlot>,
    delivered: u64,
    dropped: u64,
}

impl Fan<'_> {
    /// A step: each depth window that changed is sent to its unpaced subscribers in
    /// step, encoded once per position and encoding.
    fn step(&mut self, st: &mut BookState, prev: u64, wakes: &mut Wakes) {
        let slot = self.slot;
        let BookState {
            book,
            checksum,
            subs,
            before,
            ..
        } = st;
        let Some(book) = book.as_ref() else { return };
        let render = slot.render(book, *checksum);
        for depth in [Depth::Top10, Depth::Top50] {
            let mut at_depth = subs
                .values_mut()
                .filter(|s| s.depth == depth && s.first == First::Live)
                .peekable();
            if at_depth.peek().is_none() {
                continue;
            }
            let (bids, asks) = view::window_diff(before, &book.levels, depth);
            if bids.is_empty() && asks.is_empty() {
                continue;
            }
            let mut made = Made::default();
            for sub in at_depth {
                if sub.behind.load(Ordering::Acquire) != 0 {
                    self.dropped += 1;
                    continue;
                }
                let (sent, enc) = (sub.sent, sub.encoding);
                let msg = made.get((sent, enc), || {
                    render.message(Some(sent), &bids, &asks, enc)
                });
                if sub
                    .outbox
                    .push_deferred(slot, &sub.behind, msg, sent + 1, wakes)
                {
                    (sub.sent, sub.holds) = (book.seq, book.seq);
                    self.delivered += 1;
                } else {
                    sub.holds = prev;
                    self.dropped += 1;
                }
            }
        }
    }

    /// A fresh book: every subscriber in step gets the `gap` (if any) and the `book` at
    /// its depth at once, paced or not; one behind gets the book when it catches up.
    fn fresh(&mut self, st: &mut BookState, gap: Option<(u64, u64, GapReason)>, wakes: &mut Wakes) {
        let slot = self.slot;
        let note =
            gap.map(|(from, to, reason)| (view::gap_note(&slot.symbol, from, to, reason), reason));
        let mut made = Made::default();
        let Some(book) = st.book.clone() else { return };
        let render = slot.render(&book, st.checksum);
        let mut notes = 0;
        for sub in st.all_mut().filter(|s| s.first == First::Live) {
            if sub.behind.load(Ordering::Acquire) != 0 {
                sub.behind.store(NEED_SNAPSHOT, Ordering::Release);
                (sub.sent, sub.holds) = (0, 0);
                continue;
            }
            if let Some((note, _)) = &note {
                if !sub
                    .outbox
                    .push_deferred(slot, &sub.behind, note.clone(), NEED_SNAPSHOT, wakes)
                {
                    self.dropped += 1;
                    continue;
                }
                notes += 1;
            }
            let (depth, enc) = (sub.depth, sub.encoding);
            let msg = made.get((depth, enc), || render.book(depth, enc));
            if sub
                .outbox
                .push_deferred(slot, &sub.behind, msg, NEED_SNAPSHOT, wakes)
            {
                (sub.sent, sub.holds) = (book.seq, book.seq);
                self.delivered += 1;
            } else {
                self.dropped += 1;
            }
        }
        if let Some((_, reason)) = note {
            view::count_gaps(reason, notes);
        }
    }

    /// The subscribers that came before the book's first message start now.
    fn first(&mut self, st: &mut BookState) {
        let slot = self.slot;
        let BookState {
            book,
            checksum,
            history,
            subs,
            paced,
            waiting,
            ..
        } = st;
        let Some(book) = book.as_ref() else { return };
        let render = slot.render(book, *checksum);
        let paced = paced.iter_mut().flat_map(|g| g.subs.values_mut());
        for sub in subs.values_mut().chain(paced) {
            let resume = match std::mem::replace(&mut sub.first, First::Live) {
                First::Live => continue,
                First::Book => None,
                First::After(from) => Some(from),
            };
            *waiting -= 1;
            (sub.sent, sub.holds) = begin(slot, &render, history, sub, resume.as_ref());
            sub.base = None;
            self.delivered += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::Level;
    use crate::hub::{Hub, Receiver, SlowPolicy};

    fn hub() -> Hub {
        Hub::new(["AAPL".into()], 4)
            .with_books([("AAPL".into(), Spec::new(2))], BookSettings::default())
    }

    fn msg(seq: u64, prev: Option<u64>, bids: &[(u64, u64)]) -> BookMsg {
        BookMsg {
            symbol: "AAPL".into(),
            epoch: "e1".into(),
            seq,
            prev_seq: prev,
            ts: seq,
            bids: bids.iter().map(|&(p, s)| Level::new(p, s)).collect(),
            asks: vec![Level::new(200, 1)],
            checksum: None,
        }
    }

    fn sub(hub: &Hub, id: u64, depth: Depth) -> (Arc<Outbox>, Receiver) {
        let (outbox, rx) = Outbox::new(id, 64, SlowPolicy::Conflate);
        let behind: Behind = Arc::new(AtomicU64::new(0));
        let start = BookStart {
            depth,
            ..BookStart::default()
        };
        assert!(hub.subscribe_book("AAPL", &outbox, &behind, &start));
        (outbox, rx)
    }

    #[test]
    fn an_update_is_encoded_once_per_depth_and_shared() {
        let hub = hub();
        hub.publish_books(&[msg(1, None, &[(100, 1)])]);
        let mut rx: Vec<Receiver> = (1..=3)
            .map(|id| sub(&hub, id, if id < 3 { Depth::Top10 } else { Depth::Top50 }).1)
            .collect();
        for r in &mut rx {
            assert!(r.try_recv().unwrap().starts_with(b"{\"type\":\"book\""));
        }
        hub.publish_books(&[msg(2, Some(1), &[(99, 5)])]);
        let got: Vec<Bytes> = rx.iter_mut().map(|r| r.try_recv().unwrap()).collect();
        assert_eq!(
            got[0].as_ptr(),
            got[1].as_ptr(),
            "the same bytes at one depth"
        );
        assert_eq!(
            got[0], got[2],
            "the same change at the other depth, encoded apart"
        );
        assert_eq!(hub.books().subscriber_count("AAPL"), 3);
        assert!(hub.books().unsubscribe("AAPL", 1));
        assert_eq!(hub.books().subscriber_count("AAPL"), 2);
    }

    #[test]
    fn a_lost_source_makes_book_subscribers_stale_until_the_next_message() {
        let hub = hub();
        hub.publish_books(&[msg(1, None, &[(100, 1)])]);
        let (_o, mut rx) = sub(&hub, 1, Depth::Top10);
        rx.try_recv().unwrap();
        hub.lost(&["AAPL".into()], Cause::Feed, "feed");
        let stale = rx.try_recv().unwrap();
        assert_eq!(
            &stale[..],
            br#"{"type":"status","symbol":"AAPL","channel":"book","state":"stale","reason":"feed"}"#
        );
        hub.publish_books(&[msg(2, Some(1), &[(100, 2)])]);
        assert!(rx
            .try_recv()
            .unwrap()
            .starts_with(b"{\"type\":\"book_update\""));
        let live = rx.try_recv().unwrap();
        assert!(live.ends_with(br#""state":"live"}"#), "{live:?}");
    }

    #[test]
    fn a_new_epoch_or_a_hole_is_a_gap_then_a_book_and_a_stray_update_is_refused() {
        let hub = hub();
        hub.publish_books(&[msg(1, None, &[(100, 1)])]);
        let (_o, mut rx) = sub(&hub, 1, Depth::Top10);
        rx.try_recv().unwrap();
        let r = hub.publish_books(&[msg(5, Some(3), &[(100, 2)])]);
        assert!(matches!(&r[0], BookPublished::Refused(why) if why.contains("does not follow")));
        assert_eq!(
            hub.publish_books(&[msg(1, None, &[])])[0],
            BookPublished::Duplicate
        );
        hub.publish_books(&[msg(4, None, &[(101, 1)])]);
        let gap = rx.try_recv().unwrap();
        assert_eq!(
            &gap[..],
            br#"{"type":"gap","symbol":"AAPL","channel":"book","from":2,"to":3,"reason":"upstream"}"#
        );
        assert!(rx.try_recv().unwrap().starts_with(b"{\"type\":\"book\""));
        let mut other = msg(1, None, &[(100, 1)]);
        other.epoch = "e2".into();
        hub.publish_books(&[other]);
        let gap = rx.try_recv().unwrap();
        assert!(
            gap.ends_with(br#""from":5,"to":5,"reason":"reset"}"#),
            "{gap:?}"
        );
        let book = rx.try_recv().unwrap();
        assert!(book.starts_with(br#"{"type":"book","symbol":"AAPL","epoch":"e2","seq":1"#));
    }
}
