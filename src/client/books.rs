//! The client's order books: one [`LocalBook`] per symbol of its `book` subscriptions,
//! rebuilt from the node's `book` and `book_update` messages and checked after each one.
//!
//! An update applies when its `prev_seq` is the `seq` held; one whose `seq` is not above
//! it is stale and dropped. Any other update (a hole), an update that cannot apply, or
//! a message whose checksum does not match the book it makes, is a **mismatch**: the
//! book is left as it was (at the last seq it was verified at), and the client asks the
//! node to re-sync it, with `resume` from that seq (the node answers one update that
//! nets out what was missed, or `gap` + a fresh `book`); with no book held yet it
//! unsubscribes and subscribes again, for a fresh `book`. Until the re-sync has brought
//! a message that applies, further updates of that symbol are dropped without asking
//! again.

use std::collections::HashMap;
use std::sync::Arc;

use crate::book::{Book, BookMsg, Levels, Side, Spec};
use crate::protocol::channel::Depth;
use crate::tick::Symbol;

/// A `book` or `book_update` as received: the message, and how its prices are written
/// (their decimals, as the node wrote them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookMessage {
    /// The message (its checksum always given by the node).
    pub msg: BookMsg,
    /// The symbol's price decimals, as the prices are written (`None` in a message
    /// with no level, which does not show them).
    pub spec: Option<Spec>,
}

impl BookMessage {
    /// Appends the message as one JSON object, as the node writes it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.msg.write_json(self.spec.unwrap_or(Spec::new(0)), out);
    }
}

/// A symbol's book as the client holds it: verified against the node's checksum after
/// every message applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalBook {
    /// The symbol.
    pub symbol: Symbol,
    /// Epoch, seq and time of the last message applied, and the levels (the top
    /// `depth` a side, best first).
    pub book: Book,
    /// How the symbol's prices are written.
    pub spec: Spec,
    /// Levels a side subscribed.
    pub depth: Depth,
}

impl LocalBook {
    /// The levels, both sides best first.
    pub fn levels(&self) -> &Levels {
        &self.book.levels
    }

    /// The CRC-32 of the book (`docs/protocol.md`, section 9).
    pub fn checksum(&self) -> u32 {
        self.book.levels.checksum()
    }

    /// The price of `ticks` as the node writes it (`189.10`).
    pub fn price_text(&self, ticks: u64) -> String {
        crate::book::json::price_text(ticks, self.spec)
    }

    /// Best ask minus best bid, in ticks, when both sides have a level.
    pub fn spread(&self) -> Option<u64> {
        let l = &self.book.levels;
        Some(
            l.best(Side::Ask)?
                .price
                .saturating_sub(l.best(Side::Bid)?.price),
        )
    }
}

/// What became of one book message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Applied: the book now.
    Applied(LocalBook),
    /// Not newer than the book held (or an update before any book): dropped.
    Stale,
    /// A re-sync is under way: dropped without asking again.
    Resyncing,
    /// Does not follow or does not check: the book is kept as it was; a re-sync is due
    /// (unless `quiet`: another connection carries the same book, during a move).
    Mismatch(String),
}

/// One symbol's book, and whether a re-sync is under way.
#[derive(Default)]
struct Held {
    book: Option<LocalBook>,
    resyncing: bool,
}

/// Every book of a client.
#[derive(Default)]
pub(crate) struct Books {
    held: HashMap<Symbol, Held>,
    /// Symbols whose re-sync is to be sent on the connection in use.
    pub due: Vec<Symbol>,
    /// Ids of the client's own re-sync commands, whose replies are not passed on, and
    /// the symbol each re-syncs.
    ids: HashMap<u64, Symbol>,
}

impl Books {
    /// The position held of `symbol`'s book: its epoch and seq.
    pub fn position(&self, symbol: &Symbol) -> Option<(Arc<str>, u64)> {
        let b = self.held.get(symbol)?.book.as_ref()?;
        Some((b.book.epoch.clone(), b.book.seq))
    }

    /// The book held of `symbol`.
    pub fn get(&self, symbol: &str) -> Option<&LocalBook> {
        self.held.get(symbol)?.book.as_ref()
    }

    /// A new connection resumes every book from where it is: re-syncs under way end.
    pub fn reconnected(&mut self) {
        self.due.clear();
        for h in self.held.values_mut() {
            h.resyncing = false;
        }
    }

    /// Notes a re-sync command of `symbol` sent.
    pub fn sent(&mut self, id: u64, symbol: Symbol) {
        self.ids.insert(id, symbol);
    }

    /// Whether a reply with `id` answers a re-sync (and is the client's own).
    pub fn answers(&mut self, id: Option<u64>) -> bool {
        id.is_some_and(|i| self.ids.remove(&i).is_some())
    }

    /// The node refused re-sync command `id` (e.g. `rate_limited`): the next mismatch
    /// of its book asks again. True when `id` was a re-sync's.
    pub fn refused(&mut self, id: Option<u64>) -> bool {
        let Some(symbol) = id.and_then(|i| self.ids.remove(&i)) else {
            return false;
        };
        if let Some(h) = self.held.get_mut(&symbol) {
            h.resyncing = false;
        }
        true
    }

    /// Takes one message of a book subscribed at `depth`; `quiet`: a mismatch asks for
    /// no re-sync (a move is under way; the other connection carries on).
    pub fn take(&mut self, m: &BookMessage, depth: Depth, quiet: bool) -> Outcome {
        let held = self.held.entry(m.msg.symbol.clone()).or_default();
        let outcome = apply(held, m, depth);
        match &outcome {
            Outcome::Applied(_) => held.resyncing = false,
            Outcome::Mismatch(_) if held.resyncing => return Outcome::Resyncing,
            Outcome::Mismatch(_) if !quiet => {
                held.resyncing = true;
                self.due.push(m.msg.symbol.clone());
            }
            _ => {}
        }
        outcome
    }
}

/// Applies `m` to what is held, checked; the book is unchanged unless it applied.
fn apply(held: &mut Held, m: &BookMessage, depth: Depth) -> Outcome {
    let msg = &m.msg;
    let Some(want) = msg.checksum else {
        return Outcome::Mismatch("a book message without a checksum".into());
    };
    // An update may remove every level of the window and bring as many new ones.
    if let Err(why) = msg.check(2 * depth.levels()) {
        return Outcome::Mismatch(why);
    }
    let Some(prev) = msg.prev_seq else {
        if let Some(b) = &held.book {
            if b.book.epoch == msg.epoch && msg.seq <= b.book.seq {
                return Outcome::Stale;
            }
        }
        let book = Book::from_msg(msg);
        let got = book.levels.checksum();
        if got != want {
            return Outcome::Mismatch(format!(
                "book seq {}: checksum {want} does not match its levels, whose checksum is {got}",
                msg.seq
            ));
        }
        let held_spec = held.book.as_ref().map(|b| b.spec);
        let local = LocalBook {
            symbol: msg.symbol.clone(),
            book,
            spec: m.spec.or(held_spec).unwrap_or(Spec::new(0)),
            depth,
        };
        held.book = Some(local.clone());
        return Outcome::Applied(local);
    };
    let Some(local) = held.book.as_mut() else {
        return Outcome::Stale;
    };
    let b = &mut local.book;
    if b.epoch == msg.epoch && msg.seq <= b.seq {
        return Outcome::Stale;
    }
    if b.epoch != msg.epoch || prev != b.seq {
        return Outcome::Mismatch(format!(
            "update seq {} names prev_seq {prev} of epoch {}; the book held is seq {} of epoch {}",
            msg.seq, msg.epoch, b.seq, b.epoch
        ));
    }
    match b.apply(msg, depth.levels()) {
        Ok(_) => {
            if let Some(spec) = m.spec {
                local.spec = spec;
            }
            Outcome::Applied(local.clone())
        }
        Err(why) => Outcome::Mismatch(format!("update seq {}: {why}", msg.seq)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::Level;

    fn msg(seq: u64, prev: Option<u64>, bids: &[(u64, u64)], asks: &[(u64, u64)]) -> BookMsg {
        let lv = |p: &[(u64, u64)]| p.iter().map(|&(p, s)| Level::new(p, s)).collect();
        BookMsg {
            symbol: "AAPL".into(),
            epoch: "e".into(),
            seq,
            prev_seq: prev,
            ts: seq,
            bids: lv(bids),
            asks: lv(asks),
            checksum: None,
        }
    }

    /// `m` with the checksum of `levels`, as a message of 2 decimals.
    fn signed(mut m: BookMsg, levels: &Levels) -> BookMessage {
        m.checksum = Some(levels.checksum());
        BookMessage {
            msg: m,
            spec: Some(Spec::new(2)),
        }
    }

    impl Outcome {
        fn is_resyncing(&self) -> bool {
            matches!(self, Outcome::Resyncing)
        }
    }

    fn applied(o: Outcome) -> LocalBook {
        match o {
            Outcome::Applied(b) => b,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn updates_apply_in_order_and_anything_else_asks_for_a_resync_once() {
        let mut books = Books::default();
        let d = Depth::Top10;
        let l1 = Levels::new(vec![Level::new(100, 5)], vec![Level::new(101, 4)]);
        let b = applied(books.take(
            &signed(msg(3, None, &[(100, 5)], &[(101, 4)]), &l1),
            d,
            false,
        ));
        assert_eq!((b.book.seq, b.spread()), (3, Some(1)));
        let l2 = Levels::new(vec![Level::new(100, 7)], vec![Level::new(101, 4)]);
        let b = applied(books.take(&signed(msg(5, Some(3), &[(100, 7)], &[]), &l2), d, false));
        assert_eq!((b.book.seq, b.checksum()), (5, l2.checksum()));
        // A stale one, then a hole: the book stays at 5 and one re-sync is due.
        let old = signed(msg(4, Some(3), &[(100, 9)], &[]), &l2);
        assert!(matches!(books.take(&old, d, false), Outcome::Stale));
        let hole = signed(msg(9, Some(8), &[(100, 1)], &[]), &l2);
        assert!(matches!(books.take(&hole, d, false), Outcome::Mismatch(_)));
        let again = signed(msg(10, Some(9), &[(100, 2)], &[]), &l2);
        assert!(matches!(books.take(&again, d, false), Outcome::Resyncing));
        assert_eq!(books.due, [Symbol::from("AAPL")]);
        assert_eq!(books.position(&"AAPL".into()), Some(("e".into(), 5)));
        // A wrong checksum changes nothing either; the netted update applies.
        let mut bad = signed(msg(11, Some(5), &[(100, 2)], &[]), &l2);
        bad.msg.checksum = Some(1);
        assert!(matches!(books.take(&bad, d, false), Outcome::Resyncing));
        assert_eq!(books.get("AAPL").unwrap().levels(), &l2);
        let l3 = Levels::new(vec![Level::new(100, 2)], vec![Level::new(101, 4)]);
        let b = applied(books.take(&signed(msg(11, Some(5), &[(100, 2)], &[]), &l3), d, false));
        assert_eq!(b.levels(), &l3);
        // A re-sync the node refused (rate_limited): the next mismatch asks again.
        books.due.clear();
        let hole = signed(msg(13, Some(12), &[(100, 1)], &[]), &l3);
        assert!(matches!(books.take(&hole, d, false), Outcome::Mismatch(_)));
        books.sent(7, "AAPL".into());
        assert!(books.take(&hole, d, false).is_resyncing());
        assert!(!books.refused(Some(8)) && books.refused(Some(7)));
        assert!(!books.answers(Some(7)), "answered once");
        assert!(matches!(books.take(&hole, d, false), Outcome::Mismatch(_)));
        assert_eq!(books.due.len(), 2);
        books.reconnected();
        assert!(books.due.is_empty());
        // Quiet (during a move): a mismatch asks for nothing.
        books.due.clear();
        let hole = signed(msg(20, Some(19), &[(100, 1)], &[]), &l3);
        assert!(matches!(books.take(&hole, d, true), Outcome::Mismatch(_)));
        assert!(books.due.is_empty());
    }
}
