//! What a book subscriber is sent, made from the one book a node holds per symbol: the
//! history of what each message changed (so the book a client holds can be rebuilt and
//! the difference sent as one update), the depth windows, and the messages encoded once
//! and shared.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::book::json::{self, Head};
use crate::book::{diff, Book, Change, Level, Levels, Side, Spec};
use crate::protocol::binary::book::{self as records, BookHead};
use crate::protocol::channel::Depth;
use crate::protocol::{Encoding, GapReason, ServerMsg};

/// One message applied to the book: the seq it applied to, its own seq, and how many
/// changes it made (kept in [`History::changes`], in order).
struct Step {
    prev: u64,
    seq: u64,
    changes: u32,
}

/// One change kept in the history, what undoes it: its side in the top bit of the
/// price (prices are under 2⁵³) and the size there was.
#[derive(Clone, Copy)]
struct Kept {
    side_price: u64,
    was: u64,
}

const ASK_BIT: u64 = 1 << 63;

impl Kept {
    fn new(c: &Change) -> Kept {
        let side = match c.side {
            Side::Bid => 0,
            Side::Ask => ASK_BIT,
        };
        Kept {
            side_price: side | c.price,
            was: c.was,
        }
    }

    /// Puts back the size there was.
    fn undo(&self, levels: &mut Levels) {
        let side = match self.side_price & ASK_BIT {
            0 => Side::Bid,
            _ => Side::Ask,
        };
        levels.set(side, self.side_price & !ASK_BIT, self.was);
    }
}

/// The recent steps of a book, contiguous up to its current seq, at most `cap` of them;
/// their changes one after the other in one ring, so that a message costs no
/// allocation of its own.
pub(super) struct History {
    steps: VecDeque<Step>,
    changes: VecDeque<Kept>,
    cap: usize,
}

impl History {
    /// An empty history of at most `cap` steps.
    pub(super) fn new(cap: usize) -> History {
        History {
            steps: VecDeque::new(),
            changes: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Forgets every step (the book was replaced: nothing before it can be rebuilt).
    pub(super) fn clear(&mut self) {
        self.steps.clear();
        self.changes.clear();
    }

    /// Keeps what the message of `seq` (applied to the book at `prev`) changed,
    /// dropping the oldest step past `cap`.
    pub(super) fn push(&mut self, prev: u64, seq: u64, changes: &[Change]) {
        if self.steps.len() >= self.cap {
            if let Some(old) = self.steps.pop_front() {
                self.changes.drain(..old.changes as usize);
            }
        }
        self.steps.push_back(Step {
            prev,
            seq,
            changes: changes.len() as u32,
        });
        self.changes.extend(changes.iter().map(Kept::new));
    }

    /// Steps held.
    pub(super) fn len(&self) -> usize {
        self.steps.len()
    }

    /// Bytes the steps hold (for the memory report).
    pub(super) fn bytes(&self) -> usize {
        self.steps.capacity() * std::mem::size_of::<Step>()
            + self.changes.capacity() * std::mem::size_of::<Kept>()
    }

    /// The oldest seq of `book`'s epoch whose levels the steps can rebuild: the book
    /// the oldest step applied to.
    pub(super) fn reach(&self, book: &Book) -> u64 {
        self.steps.front().map_or(book.seq, |s| s.prev)
    }

    /// The levels `book` had at `seq` of its epoch, when the steps reach back to it.
    pub(super) fn levels_at(&self, book: &Book, seq: u64) -> Option<Levels> {
        if seq == book.seq {
            return Some(book.levels.clone());
        }
        if seq > book.seq || seq < self.reach(book) {
            return None;
        }
        let mut levels = book.levels.clone();
        let mut undone = self.changes.iter().rev();
        for step in self.steps.iter().rev().take_while(|s| s.seq > seq) {
            for kept in undone.by_ref().take(step.changes as usize) {
                kept.undo(&mut levels);
            }
        }
        Some(levels)
    }
}

/// What a `depth` window of `old` must change to become that of `new`: bids, asks.
pub(super) fn window_diff(old: &Levels, new: &Levels, depth: Depth) -> (Vec<Level>, Vec<Level>) {
    let d = depth.levels();
    let mut out = (Vec::new(), Vec::new());
    diff(
        Side::Bid,
        old.top(Side::Bid, d),
        new.top(Side::Bid, d),
        &mut out.0,
    );
    diff(
        Side::Ask,
        old.top(Side::Ask, d),
        new.top(Side::Ask, d),
        &mut out.1,
    );
    out
}

/// What a message is about beside its levels: the book after it, its checksum and how
/// its prices are written.
#[derive(Clone, Copy)]
pub(super) struct Render<'a> {
    pub(super) symbol: &'a str,
    pub(super) spec: Spec,
    pub(super) book: &'a Book,
    pub(super) checksum: u32,
}

impl Render<'_> {
    /// A `book` (`prev_seq` `None`) or `book_update` of these levels, in `enc`. A book
    /// whose binary record cannot be made (an epoch over 255 bytes) goes as JSON.
    pub(super) fn message(
        &self,
        prev_seq: Option<u64>,
        bids: &[Level],
        asks: &[Level],
        enc: Encoding,
    ) -> Bytes {
        let b = self.book;
        if enc == Encoding::Binary {
            let head = BookHead {
                symbol: self.symbol,
                epoch: &b.epoch,
                spec: self.spec,
                seq: b.seq,
                prev_seq,
                ts: b.ts,
                checksum: self.checksum,
            };
            let mut out = Vec::new();
            if records::write(&head, bids, asks, &mut out).is_ok() {
                return Bytes::from(out);
            }
        }
        let head = Head {
            symbol: self.symbol,
            epoch: &b.epoch,
            seq: b.seq,
            ts: b.ts,
            spec: self.spec,
        };
        let mut out = Vec::new();
        json::write(&mut out, &head, prev_seq, bids, asks, self.checksum);
        Bytes::from(out)
    }

    /// The `book` of the current levels at `depth`, in `enc`.
    pub(super) fn book(&self, depth: Depth, enc: Encoding) -> Bytes {
        let l = &self.book.levels;
        let d = depth.levels();
        self.message(None, l.top(Side::Bid, d), l.top(Side::Ask, d), enc)
    }
}

/// Messages made once and shared by every subscriber that needs the same one: keyed by
/// what tells them apart (a depth, a position, an encoding).
pub(super) struct Made<K> {
    made: Vec<(K, Bytes)>,
}

impl<K> Default for Made<K> {
    fn default() -> Self {
        Made { made: Vec::new() }
    }
}

impl<K: PartialEq> Made<K> {
    /// The message of `key`, made by `make` the first time.
    pub(super) fn get(&mut self, key: K, make: impl FnOnce() -> Bytes) -> Bytes {
        if let Some((_, b)) = self.made.iter().find(|(k, _)| *k == key) {
            return b.clone();
        }
        let b = make();
        self.made.push((key, b.clone()));
        b
    }
}

/// A `gap` of a symbol's book (`"channel":"book"`), counted in the metrics.
pub(super) fn gap(symbol: &str, from: u64, to: u64, reason: GapReason) -> Bytes {
    count_gaps(reason, 1);
    gap_note(symbol, from, to, reason)
}

/// A `status` of a symbol's book: stale with `reason`, or live.
pub(super) fn status(symbol: &str, reason: Option<&str>) -> Bytes {
    ServerMsg::status_of(symbol, Some("book"), reason)
}

/// A `gap` of a symbol's book sent to several subscribers: counted per subscriber it
/// reached, with [`count_gaps`].
pub(super) fn gap_note(symbol: &str, from: u64, to: u64, reason: GapReason) -> Bytes {
    ServerMsg::Gap {
        symbol,
        channel: Some("book"),
        from,
        to,
        reason,
    }
    .to_json()
}

/// Counts `n` `gap`s of `reason` queued.
pub(super) fn count_gaps(reason: GapReason, n: u64) {
    let m = crate::metrics::global();
    m.gaps[super::super::gap_index(reason)].fetch_add(n, Ordering::Relaxed);
}
