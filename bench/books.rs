//! The bench's order books: the book each symbol of the flat universe follows while the
//! publisher moves it, written as the `book` and `book_update` messages of
//! `docs/protocol.md` §9 (JSON, for `/v1/publish` and Redis) or as the library's
//! [`BookMsg`] (for the in-process memory figure); and what a receiving connection keeps
//! of its books to check them ([`Seen`]).
//!
//! A book of `levels` levels a side on the tick grid of the flat universe (2 decimals):
//! bids from 99.99 down, asks from 100.00 up, a level on every tick. Update `k` (seq
//! `k + 1`; seq 1 is the whole book) changes the size of one of the best four bids and
//! one of the best four asks, and every fourth update takes the fifth bid or the sixth
//! ask out or puts it back, so that a level deeper than a depth-10 window enters it.
//! Every update changes the best ten levels: each one reaches every subscriber of its
//! symbol at depth 10 or 50, and a run can count exactly what should arrive.

use std::sync::Arc;

use tickstream::book::json::write_price;
use tickstream::book::{Book, BookMsg, Level, Spec};

/// Price decimals of the flat universe's symbols (class `equity`: a tick of 0.01).
pub const DECIMALS: u8 = 2;

/// Best bid of a bench book, in ticks (99.99); the best ask is one tick above.
const BEST_BID: u64 = 9_999;

/// Fewest and most levels a side a bench book may have (`--levels`).
pub const LEVELS: std::ops::RangeInclusive<usize> = 10..=1000;

/// One symbol's book as the publisher moves it: the size at each level (0: the level
/// is out of the book now).
#[derive(Clone, Debug)]
pub struct Model {
    bids: Vec<u64>,
    asks: Vec<u64>,
}

fn bid_price(j: usize) -> u64 {
    BEST_BID - j as u64
}

fn ask_price(j: usize) -> u64 {
    BEST_BID + 1 + j as u64
}

/// The size after `s`: 100 more, back to 100 past 2,000 (never the size it was).
fn next_size(s: u64) -> u64 {
    if s >= 2_000 {
        100
    } else {
        s + 100
    }
}

impl Model {
    /// A whole book of `levels` levels a side (at least 10).
    pub fn new(levels: usize) -> Model {
        let levels = levels.max(*LEVELS.start());
        let sizes: Vec<u64> = (0..levels).map(|j| 100 * (1 + j as u64 % 9)).collect();
        Model {
            bids: sizes.clone(),
            asks: sizes,
        }
    }

    /// The whole book, each side best first.
    pub fn whole(&self) -> (Vec<Level>, Vec<Level>) {
        let side = |sizes: &[u64], price: fn(usize) -> u64| {
            sizes
                .iter()
                .enumerate()
                .filter(|(_, s)| **s > 0)
                .map(|(j, s)| Level::new(price(j), *s))
                .collect()
        };
        (side(&self.bids, bid_price), side(&self.asks, ask_price))
    }

    /// Applies update `k` (1, 2, …) and returns the levels it changed, each side best
    /// first (size 0 removes a level).
    pub fn update(&mut self, k: u64) -> (Vec<Level>, Vec<Level>) {
        let b = (k % 4) as usize;
        let a = ((k + 1) % 4) as usize;
        self.bids[b] = next_size(self.bids[b]);
        self.asks[a] = next_size(self.asks[a]);
        let mut bids = vec![Level::new(bid_price(b), self.bids[b])];
        let mut asks = vec![Level::new(ask_price(a), self.asks[a])];
        let back = 100 * (1 + k % 5);
        match k % 8 {
            0 => self.bids[4] = 0,
            4 => self.bids[4] = back,
            2 => self.asks[5] = 0,
            6 => self.asks[5] = back,
            _ => return (bids, asks),
        }
        if k.is_multiple_of(4) {
            bids.push(Level::new(bid_price(4), self.bids[4]));
        } else {
            asks.push(Level::new(ask_price(5), self.asks[5]));
        }
        (bids, asks)
    }
}

/// What a message says besides its levels.
pub struct Head<'a> {
    /// The symbol.
    pub symbol: &'a str,
    /// The epoch.
    pub epoch: &'a str,
    /// Its seq.
    pub seq: u64,
    /// For an update, the seq it follows.
    pub prev_seq: Option<u64>,
    /// Its time (the publisher's intended send time).
    pub ts: u64,
}

/// Appends the message as a publisher sends it: `book` or `book_update`, prices with
/// the universe's decimals, no `checksum` (a publisher may leave it out; the node
/// computes its own for its subscribers).
pub fn write_json(out: &mut Vec<u8>, h: &Head<'_>, bids: &[Level], asks: &[Level]) {
    use std::io::Write as _;
    let ty = if h.prev_seq.is_some() {
        "book_update"
    } else {
        "book"
    };
    let _ = write!(
        out,
        r#"{{"type":"{ty}","symbol":"{}","epoch":"{}","seq":{}"#,
        h.symbol, h.epoch, h.seq
    );
    if let Some(p) = h.prev_seq {
        let _ = write!(out, r#","prev_seq":{p}"#);
    }
    let _ = write!(out, r#","ts":{}"#, h.ts);
    for (name, levels) in [("bids", bids), ("asks", asks)] {
        let _ = write!(out, r#","{name}":["#);
        for (i, l) in levels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            write_price(out, l.price, Spec::new(DECIMALS));
            let _ = write!(out, ",{}]", l.size);
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// The same message as the library holds it.
pub fn msg(h: &Head<'_>, bids: Vec<Level>, asks: Vec<Level>) -> BookMsg {
    BookMsg {
        symbol: h.symbol.into(),
        epoch: Arc::from(h.epoch),
        seq: h.seq,
        prev_seq: h.prev_seq,
        ts: h.ts,
        bids,
        asks,
        checksum: None,
    }
}

/// Where an update stands against the book a connection holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Its `prev_seq` is the seq held: it applies.
    InOrder,
    /// Its `prev_seq` is past the seq held: this many seqs were lost between them.
    Hole(u64),
    /// Its seq is not above the one held: a repeat, dropped.
    Stale,
    /// No book is held for its symbol: it applies to nothing.
    NoBook,
}

/// Most levels a side a checked book may hold.
const CHECK_MAX_LEVELS: usize = 1_000;

/// What one connection keeps of its books: per symbol the seq it holds, and, on a
/// connection that checks them, the whole window, so that each message's checksum is
/// compared with the book it makes.
#[derive(Debug, Default)]
pub struct Seen {
    last: foldhash::HashMap<String, u64>,
    held: Option<foldhash::HashMap<String, Book>>,
}

impl Seen {
    /// A connection that also keeps its books and checks every checksum.
    pub fn checking() -> Seen {
        Seen {
            held: Some(Default::default()),
            ..Seen::default()
        }
    }

    /// Whether it checks checksums.
    pub fn checks(&self) -> bool {
        self.held.is_some()
    }

    /// A `book` of `symbol` at `seq`: the book held from now on.
    pub fn book(&mut self, symbol: &str, seq: u64) {
        match self.last.get_mut(symbol) {
            Some(v) => *v = seq,
            None => {
                self.last.insert(symbol.to_owned(), seq);
            }
        }
    }

    /// A `book_update` of `symbol` from `prev_seq` to `seq`: where it stands, and the
    /// seq held moved on unless it is stale or applies to nothing.
    pub fn update(&mut self, symbol: &str, seq: u64, prev_seq: u64) -> Step {
        let Some(held) = self.last.get_mut(symbol) else {
            return Step::NoBook;
        };
        if seq <= *held {
            return Step::Stale;
        }
        let step = match prev_seq.cmp(held) {
            std::cmp::Ordering::Equal => Step::InOrder,
            std::cmp::Ordering::Greater => Step::Hole(prev_seq - *held),
            // Names a book before the one held, yet is newer: it does not apply to it.
            std::cmp::Ordering::Less => Step::Hole(0),
        };
        *held = seq;
        step
    }

    /// A `gap` on the book channel of `symbol`: the book held is dropped (a fresh
    /// `book` follows).
    pub fn gap(&mut self, symbol: &str) {
        self.last.remove(symbol);
        if let Some(h) = &mut self.held {
            h.remove(symbol);
        }
    }

    /// Every book forgotten (a new connection).
    pub fn clear(&mut self) {
        self.last.clear();
        if let Some(h) = &mut self.held {
            h.clear();
        }
    }

    /// On a checking connection: applies `m` (its `checksum` the node's) to the book
    /// held and says whether the book it makes has that checksum. `None` when this
    /// connection does not check, or `m` is an update that does not follow the book
    /// held (the sequence check counts that).
    pub fn check(&mut self, m: &BookMsg) -> Option<bool> {
        let held = self.held.as_mut()?;
        let want = m.checksum?;
        if m.prev_seq.is_none() {
            let book = Book::from_msg(m);
            let ok = book.levels.checksum() == want;
            held.insert(m.symbol.to_string(), book);
            return Some(ok);
        }
        let book = held.get_mut(&*m.symbol)?;
        if m.prev_seq != Some(book.seq) || *m.epoch != *book.epoch {
            held.remove(&*m.symbol);
            return None;
        }
        // `apply` refuses a checksum that differs, and anything else that does not apply.
        let ok = book.apply(m, CHECK_MAX_LEVELS).is_ok();
        if !ok {
            held.remove(&*m.symbol);
        }
        Some(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(seq: u64, prev_seq: Option<u64>) -> Head<'static> {
        Head {
            symbol: "B00000",
            epoch: "e1",
            seq,
            prev_seq,
            ts: 5,
        }
    }

    #[test]
    fn every_update_applies_and_changes_the_best_ten_levels() {
        let mut model = Model::new(20);
        let (bids, asks) = model.whole();
        let first = msg(&head(1, None), bids, asks);
        assert!(first.check(1000).is_ok());
        let mut book = Book::from_msg(&first);
        for k in 1..=64u64 {
            let before = book.levels.clone();
            let (bids, asks) = model.update(k);
            let m = msg(&head(k + 1, Some(k)), bids, asks);
            m.check(1000).unwrap();
            book.apply(&m, 1000).unwrap();
            let (bids, asks) = model.whole();
            assert_eq!(
                book.levels,
                tickstream::book::Levels::new(bids, asks),
                "{k}"
            );
            let top = |l: &tickstream::book::Levels| {
                use tickstream::book::Side;
                (l.top(Side::Bid, 10).to_vec(), l.top(Side::Ask, 10).to_vec())
            };
            assert_ne!(top(&before), top(&book.levels), "update {k}");
        }
    }

    #[test]
    fn json_is_what_the_library_reads_back() {
        let mut model = Model::new(12);
        let (bids, asks) = model.update(8);
        let mut out = Vec::new();
        write_json(&mut out, &head(9, Some(8)), &bids, &asks);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"type":"book_update","symbol":"B00000","epoch":"e1","seq":9,"prev_seq":8,"ts":5,"bids":[[99.99,"#),
            "{text}"
        );
        assert!(text.contains("[99.95,0]"), "{text}");
        let back = tickstream::book::json::parse(&out, |_| Some(Spec::new(DECIMALS)), 1000);
        assert_eq!(back.unwrap(), msg(&head(9, Some(8)), bids, asks));
    }

    #[test]
    fn seen_tells_order_holes_repeats_and_orphans_apart() {
        let mut s = Seen::default();
        assert_eq!(s.update("A", 2, 1), Step::NoBook);
        s.book("A", 1);
        assert_eq!(s.update("A", 2, 1), Step::InOrder);
        assert_eq!(s.update("A", 2, 1), Step::Stale);
        assert_eq!(s.update("A", 6, 4), Step::Hole(2));
        assert_eq!(s.update("A", 7, 6), Step::InOrder);
        s.gap("A");
        assert_eq!(s.update("A", 8, 7), Step::NoBook);
    }

    #[test]
    fn a_checking_connection_finds_a_wrong_checksum() {
        let mut model = Model::new(12);
        let mut s = Seen::checking();
        let (bids, asks) = model.whole();
        let mut first = msg(&head(1, None), bids, asks);
        let (b, a) = model.whole();
        first.checksum = Some(tickstream::book::checksum(&a, &b));
        assert_eq!(s.check(&first), Some(true));
        let (bids, asks) = model.update(1);
        let mut next = msg(&head(2, Some(1)), bids, asks);
        let (b, a) = model.whole();
        next.checksum = Some(tickstream::book::checksum(&a, &b) ^ 1);
        assert_eq!(s.check(&next), Some(false));
        // Not checking: nothing to say.
        assert_eq!(Seen::default().check(&first), None);
    }
}
