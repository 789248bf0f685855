//! The order book (L2): price levels per side as fixed-point integers, so that every
//! node holds the same book and computes the same checksum from the same messages.
//!
//! A price is a whole number of the symbol's ticks ([`Spec::decimals`]: 189.10 with 2
//! decimals is 18910); a size is a whole number of units. [`Levels`] holds both sides
//! best first (bids highest first, asks lowest first). A [`BookMsg`] is a `book` (the
//! whole book at a `seq`) or a `book_update` (the levels that changed since `prev_seq`;
//! size 0 removes a level), as clients receive them and as publishers send them;
//! [`json`] reads and writes them. [`Book::apply`] applies one to a book, checked, and
//! says what changed ([`Change`]), so that the change can be undone: a node walks its
//! history back to the book a client holds and sends one update that nets out the rest.

pub mod json;

use std::sync::Arc;

use crate::tick::{valid_symbol, Symbol, MAX_EPOCH, MAX_SEQ};

/// Levels the checksum covers on each side.
pub const CHECKSUM_LEVELS: usize = 10;

/// The largest price (in ticks) and size a book level may have: 2⁵³ − 1, which every
/// JSON reader holds exactly.
pub const MAX_VALUE: u64 = (1 << 53) - 1;

/// Most decimals a price may be written with.
pub const MAX_DECIMALS: u8 = 9;

/// A side of the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Buyers: best is the highest price.
    Bid,
    /// Sellers: best is the lowest price.
    Ask,
}

impl Side {
    /// Both sides, bids first.
    pub const BOTH: [Side; 2] = [Side::Bid, Side::Ask];

    /// The name of the side's array in a message.
    pub fn field(self) -> &'static str {
        match self {
            Side::Bid => "bids",
            Side::Ask => "asks",
        }
    }

    /// Orders prices best first: ascending rank is best first on either side.
    fn rank(self, price: u64) -> u64 {
        match self {
            Side::Ask => price,
            Side::Bid => !price,
        }
    }
}

/// One price level: a price in ticks and the size resting there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Level {
    /// Price, in ticks of the symbol.
    pub price: u64,
    /// Size, in units; 0 in an update removes the level.
    pub size: u64,
}

impl Level {
    /// A level of `price` ticks and `size` units.
    pub const fn new(price: u64, size: u64) -> Level {
        Level { price, size }
    }
}

/// How a symbol's prices are written: with exactly `decimals` decimals, a price being
/// its tick count divided by 10^`decimals` (the tick size is 10^−`decimals`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Spec {
    /// Decimals of a price, 0 to [`MAX_DECIMALS`].
    pub decimals: u8,
}

impl Spec {
    /// Prices with `decimals` decimals (at most [`MAX_DECIMALS`]).
    pub fn new(decimals: u8) -> Spec {
        Spec {
            decimals: decimals.min(MAX_DECIMALS),
        }
    }

    /// 10^`decimals`, the ticks in one unit of price.
    pub fn scale(self) -> u64 {
        10u64.pow(u32::from(self.decimals))
    }

    /// The tick count of `price`, if it is a positive price on this tick grid: the
    /// double the decimal `ticks / 10^decimals` denotes is `price`, bit for bit.
    pub fn ticks(self, price: f64) -> Option<u64> {
        if !(price.is_finite() && price > 0.0) {
            return None;
        }
        let scale = self.scale() as f64;
        let t = (price * scale).round();
        if !(1.0..=MAX_VALUE as f64).contains(&t) {
            return None;
        }
        let t = t as u64;
        // Both exact integers: the quotient is the double nearest the decimal.
        (t as f64 / scale == price).then_some(t)
    }

    /// The double a price of `ticks` is written as (what its decimal text denotes).
    pub fn price(self, ticks: u64) -> f64 {
        ticks as f64 / self.scale() as f64
    }
}

/// Both sides of a book, each best first, with no two levels at one price and no
/// level of size 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Levels {
    bids: Vec<Level>,
    asks: Vec<Level>,
}

impl Levels {
    /// A book of these sides, each already best first with distinct prices and
    /// non-zero sizes (see [`BookMsg::check`]).
    pub fn new(bids: Vec<Level>, asks: Vec<Level>) -> Levels {
        Levels { bids, asks }
    }

    /// One side, best first.
    pub fn side(&self, side: Side) -> &[Level] {
        match side {
            Side::Bid => &self.bids,
            Side::Ask => &self.asks,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut Vec<Level> {
        match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        }
    }

    /// The best `n` levels of `side` (fewer when it has fewer).
    pub fn top(&self, side: Side, n: usize) -> &[Level] {
        let s = self.side(side);
        &s[..n.min(s.len())]
    }

    /// The best level of `side`.
    pub fn best(&self, side: Side) -> Option<Level> {
        self.side(side).first().copied()
    }

    /// Where `price` is on `side`: `Ok` with its index, or `Err` with where it would go.
    fn find(&self, side: Side, price: u64) -> Result<usize, usize> {
        let key = side.rank(price);
        self.side(side)
            .binary_search_by_key(&key, |l| side.rank(l.price))
    }

    /// The size at `price` on `side` (0 when there is no level).
    pub fn size(&self, side: Side, price: u64) -> u64 {
        self.find(side, price)
            .map_or(0, |i| self.side(side)[i].size)
    }

    /// Sets the size at `price` on `side` (0 removes the level); returns the size
    /// there was.
    pub fn set(&mut self, side: Side, price: u64, size: u64) -> u64 {
        let at = self.find(side, price);
        let levels = self.side_mut(side);
        match (at, size) {
            (Ok(i), 0) => levels.remove(i).size,
            (Ok(i), _) => std::mem::replace(&mut levels[i].size, size),
            (Err(_), 0) => 0,
            (Err(i), _) => {
                levels.insert(i, Level::new(price, size));
                0
            }
        }
    }

    /// Makes these levels the best `n` of each side of `other` (reusing the room held).
    pub fn copy_top(&mut self, other: &Levels, n: usize) {
        for side in Side::BOTH {
            let mine = self.side_mut(side);
            mine.clear();
            mine.extend_from_slice(other.top(side, n));
        }
    }

    /// Levels on both sides.
    pub fn len(&self) -> usize {
        self.bids.len() + self.asks.len()
    }

    /// Whether both sides are empty.
    pub fn is_empty(&self) -> bool {
        self.bids.is_empty() && self.asks.is_empty()
    }

    /// Bytes the levels take (for the memory report).
    pub fn bytes(&self) -> usize {
        (self.bids.capacity() + self.asks.capacity()) * std::mem::size_of::<Level>()
    }

    /// Whether the best bid is at or above the best ask (a crossed or locked book).
    pub fn crossed(&self) -> bool {
        match (self.best(Side::Bid), self.best(Side::Ask)) {
            (Some(b), Some(a)) => b.price >= a.price,
            _ => false,
        }
    }

    /// Puts back what `changes` (in the order they were made) changed.
    pub fn undo(&mut self, changes: &[Change]) {
        for c in changes.iter().rev() {
            self.set(c.side, c.price, c.was);
        }
    }

    /// The CRC-32 of the top 10 asks then the top 10 bids, each level its price in
    /// ticks then its size, in decimal digits, with no separator (`docs/protocol.md`,
    /// "Order books": the digits of a price written with its decimals, the point
    /// removed and leading zeros stripped, are those of its tick count).
    pub fn checksum(&self) -> u32 {
        checksum(
            self.top(Side::Ask, CHECKSUM_LEVELS),
            self.top(Side::Bid, CHECKSUM_LEVELS),
        )
    }
}

/// The checksum of a book whose best asks and bids are these (each best first; only
/// the first 10 of each count).
pub fn checksum(asks: &[Level], bids: &[Level]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut buf = [0u8; 20];
    for l in asks
        .iter()
        .take(CHECKSUM_LEVELS)
        .chain(bids.iter().take(CHECKSUM_LEVELS))
    {
        h.update(digits(l.price, &mut buf));
        h.update(digits(l.size, &mut buf));
    }
    h.finalize()
}

/// `n` in decimal ASCII digits, in the end of `buf`.
pub fn digits(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// One level a book message changed: its side and price, the size it has now and the
/// size it had (0: absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The side.
    pub side: Side,
    /// The price, in ticks.
    pub price: u64,
    /// The size now (0: removed).
    pub size: u64,
    /// The size before (0: added).
    pub was: u64,
}

/// The levels that differ between two views of one side (each best first): for each
/// price of either, its size in `new` where it differs from `old` (0 where `new` has no
/// level there). Appended to `out` best first.
pub fn diff(side: Side, old: &[Level], new: &[Level], out: &mut Vec<Level>) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let o = old.get(i).map(|l| side.rank(l.price));
        let n = new.get(j).map(|l| side.rank(l.price));
        match (o, n) {
            (Some(a), Some(b)) if a == b => {
                if old[i].size != new[j].size {
                    out.push(new[j]);
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                out.push(Level::new(old[i].price, 0));
                i += 1;
            }
            (Some(_), None) => {
                out.push(Level::new(old[i].price, 0));
                i += 1;
            }
            _ => {
                out.push(new[j]);
                j += 1;
            }
        }
    }
}

/// A `book` (`prev_seq` `None`) or a `book_update` of one symbol: the wire message, as
/// a publisher sends it and the bus carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookMsg {
    /// The instrument.
    pub symbol: Symbol,
    /// The numbering `seq` belongs to.
    pub epoch: Arc<str>,
    /// The book's sequence number, per symbol and epoch (not the ticks').
    pub seq: u64,
    /// For an update, the seq of the book it applies to; `None` for a whole book.
    pub prev_seq: Option<u64>,
    /// Source time, nanoseconds since the Unix epoch.
    pub ts: u64,
    /// Bid levels, best (highest) first.
    pub bids: Vec<Level>,
    /// Ask levels, best (lowest) first.
    pub asks: Vec<Level>,
    /// The checksum of the book once applied, when the sender gives it.
    pub checksum: Option<u32>,
}

impl BookMsg {
    /// The levels of `side`.
    pub fn side(&self, side: Side) -> &[Level] {
        match side {
            Side::Bid => &self.bids,
            Side::Ask => &self.asks,
        }
    }

    /// The checks a book message passes on its own, wherever it enters a node: a
    /// well-formed symbol and epoch, `seq` 1 to 2⁵³ − 1 and above `prev_seq`, prices
    /// and sizes within [`MAX_VALUE`], each side strictly best first (no level twice),
    /// at most `max_levels` a side, and for a whole book no size 0 and no crossing.
    pub fn check(&self, max_levels: usize) -> Result<(), String> {
        if !valid_symbol(&self.symbol) {
            return Err(format!("malformed symbol {:?}", &*self.symbol));
        }
        if self.epoch.len() > MAX_EPOCH {
            return Err(format!("epoch is longer than {MAX_EPOCH} bytes"));
        }
        if self.seq == 0 || self.seq > MAX_SEQ {
            return Err(format!("seq {} is outside 1..={MAX_SEQ}", self.seq));
        }
        if let Some(prev) = self.prev_seq.filter(|p| *p >= self.seq) {
            return Err(format!("prev_seq {prev} is not below seq {}", self.seq));
        }
        for side in Side::BOTH {
            check_side(side, self.side(side), self.prev_seq.is_none(), max_levels)?;
        }
        if self.prev_seq.is_none() {
            if let (Some(b), Some(a)) = (self.bids.first(), self.asks.first()) {
                if b.price >= a.price {
                    return Err(crossed(b.price, a.price));
                }
            }
        }
        Ok(())
    }
}

fn crossed(bid: u64, ask: u64) -> String {
    format!("crossed book: best bid {bid} ticks is not below best ask {ask} ticks")
}

/// One side of a message: strictly best first, sizes within range (non-zero in a whole
/// book), at most `max_levels` levels.
fn check_side(side: Side, levels: &[Level], whole: bool, max: usize) -> Result<(), String> {
    let name = side.field();
    if levels.len() > max {
        return Err(format!(
            "{name} has {} levels, more than the {max} a side allowed",
            levels.len()
        ));
    }
    for (i, l) in levels.iter().enumerate() {
        if l.price == 0 || l.price > MAX_VALUE || l.size > MAX_VALUE {
            return Err(format!("{name}[{i}] is out of range"));
        }
        if whole && l.size == 0 {
            return Err(format!("{name}[{i}] has size 0 in a whole book"));
        }
        if i > 0 && side.rank(levels[i - 1].price) >= side.rank(l.price) {
            let order = match side {
                Side::Bid => "highest first",
                Side::Ask => "lowest first",
            };
            return Err(format!(
                "{name}[{i}] is out of order or repeated: {name} go {order}, each price once"
            ));
        }
    }
    Ok(())
}

/// One symbol's book at a position: its epoch, seq and time, and its levels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Book {
    /// The numbering the book's seq belongs to.
    pub epoch: Arc<str>,
    /// The seq of the last message applied.
    pub seq: u64,
    /// Its source time.
    pub ts: u64,
    /// The levels.
    pub levels: Levels,
}

impl Book {
    /// The book a whole-book message (`book`) holds.
    pub fn from_msg(msg: &BookMsg) -> Book {
        Book {
            epoch: msg.epoch.clone(),
            seq: msg.seq,
            ts: msg.ts,
            levels: Levels::new(msg.bids.clone(), msg.asks.clone()),
        }
    }

    /// Applies `msg` (checked by [`BookMsg::check`]): a whole book replaces the levels,
    /// an update must follow this book (same epoch, `prev_seq` = `seq`) and may remove
    /// only levels the book holds. Afterwards the book must not be crossed, hold at most
    /// `max_levels` a side, and match the message's checksum if it has one. Returns what
    /// changed, in order; on error the book is left as it was.
    pub fn apply(&mut self, msg: &BookMsg, max_levels: usize) -> Result<Vec<Change>, String> {
        let changes = match msg.prev_seq {
            None => self.replace(msg),
            Some(prev) => {
                if *msg.epoch != *self.epoch || prev != self.seq {
                    return Err(format!(
                        "prev_seq {prev} (epoch {}) does not follow the book held, seq {} of epoch {}",
                        msg.epoch, self.seq, self.epoch
                    ));
                }
                self.update(msg)?
            }
        };
        if let Err(why) = self.verify(msg, max_levels) {
            self.levels.undo(&changes);
            return Err(why);
        }
        self.epoch = msg.epoch.clone();
        self.seq = msg.seq;
        self.ts = msg.ts;
        Ok(changes)
    }

    /// Replaces the levels with those of a whole book; what changed.
    fn replace(&mut self, msg: &BookMsg) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut moved = Vec::new();
        for side in Side::BOTH {
            moved.clear();
            diff(side, self.levels.side(side), msg.side(side), &mut moved);
            for l in &moved {
                let was = self.levels.set(side, l.price, l.size);
                changes.push(Change {
                    side,
                    price: l.price,
                    size: l.size,
                    was,
                });
            }
        }
        changes
    }

    /// Applies an update's levels; what changed, or the first level that cannot apply
    /// (with nothing changed).
    fn update(&mut self, msg: &BookMsg) -> Result<Vec<Change>, String> {
        let mut changes = Vec::with_capacity(msg.bids.len() + msg.asks.len());
        for side in Side::BOTH {
            for (i, l) in msg.side(side).iter().enumerate() {
                let was = self.levels.set(side, l.price, l.size);
                if was == 0 && l.size == 0 {
                    self.levels.undo(&changes);
                    return Err(format!(
                        "{}[{i}] removes a level at {} ticks that the book does not hold",
                        side.field(),
                        l.price
                    ));
                }
                changes.push(Change {
                    side,
                    price: l.price,
                    size: l.size,
                    was,
                });
            }
        }
        Ok(changes)
    }

    /// The checks on the book a message made.
    fn verify(&self, msg: &BookMsg, max_levels: usize) -> Result<(), String> {
        if self.levels.crossed() {
            let (b, a) = (self.levels.bids[0].price, self.levels.asks[0].price);
            return Err(crossed(b, a));
        }
        for side in Side::BOTH {
            let n = self.levels.side(side).len();
            if n > max_levels {
                return Err(format!(
                    "the book would hold {n} {}, more than the {max_levels} a side allowed",
                    side.field()
                ));
            }
        }
        match msg.checksum {
            Some(c) if c != self.levels.checksum() => Err(format!(
                "checksum {c} does not match the book, whose checksum is {}",
                self.levels.checksum()
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lv(pairs: &[(u64, u64)]) -> Vec<Level> {
        pairs.iter().map(|&(p, s)| Level::new(p, s)).collect()
    }

    fn msg(seq: u64, prev: Option<u64>, bids: &[(u64, u64)], asks: &[(u64, u64)]) -> BookMsg {
        BookMsg {
            symbol: "AAPL".into(),
            epoch: "e1".into(),
            seq,
            prev_seq: prev,
            ts: seq,
            bids: lv(bids),
            asks: lv(asks),
            checksum: None,
        }
    }

    #[test]
    fn the_checksum_is_zlibs_crc32_of_the_digits() {
        // "18912200" + "18910300": asks first, then bids. The value is zlib's:
        // python3 -c 'import zlib; print(zlib.crc32(b"1891220018910300"))'.
        let l = Levels::new(lv(&[(18910, 300)]), lv(&[(18912, 200)]));
        assert_eq!(l.checksum(), 3_810_180_913);
        assert_eq!(
            crc32fast::hash(b"123456789"),
            0xCBF4_3926,
            "the IEEE check value"
        );
        assert_eq!(digits(0, &mut [0; 20]), b"0");
        assert_eq!(digits(u64::MAX, &mut [0; 20]), b"18446744073709551615");
    }

    #[test]
    fn prices_are_on_the_grid_or_refused() {
        let s = Spec::new(2);
        assert_eq!(s.ticks(189.10), Some(18910));
        assert_eq!(s.ticks(0.07), Some(7));
        assert_eq!(s.ticks(189.105), None);
        assert_eq!(s.ticks(0.0), None);
        assert_eq!(s.ticks(-1.0), None);
        assert_eq!(s.ticks(f64::NAN), None);
        assert_eq!(s.ticks(1e300), None);
        let fx = Spec::new(5);
        assert_eq!(fx.ticks(1.08513), Some(108_513));
        assert_eq!(fx.price(108_513), 1.08513);
    }

    #[test]
    fn levels_stay_best_first_and_diffs_say_what_moved() {
        let mut l = Levels::default();
        for (p, s) in [(100, 5), (102, 7), (101, 1)] {
            l.set(Side::Bid, p, s);
            l.set(Side::Ask, p + 10, s);
        }
        assert_eq!(l.side(Side::Bid), &lv(&[(102, 7), (101, 1), (100, 5)])[..]);
        assert_eq!(l.side(Side::Ask), &lv(&[(110, 5), (111, 1), (112, 7)])[..]);
        assert_eq!(l.set(Side::Bid, 101, 0), 1);
        assert_eq!(l.size(Side::Bid, 101), 0);
        let mut out = Vec::new();
        diff(
            Side::Bid,
            &lv(&[(102, 7), (101, 1), (100, 5)]),
            &lv(&[(103, 2), (102, 7), (100, 6)]),
            &mut out,
        );
        assert_eq!(out, lv(&[(103, 2), (101, 0), (100, 6)]));
    }

    #[test]
    fn updates_apply_in_order_and_a_bad_one_changes_nothing() {
        let mut b = Book::from_msg(&msg(1, None, &[(100, 5), (99, 3)], &[(101, 4)]));
        let ch = b
            .apply(&msg(2, Some(1), &[(100, 0)], &[(102, 1)]), 50)
            .unwrap();
        assert_eq!(ch.len(), 2);
        assert_eq!(
            ch[0],
            Change {
                side: Side::Bid,
                price: 100,
                size: 0,
                was: 5
            }
        );
        assert_eq!(b.levels.best(Side::Bid), Some(Level::new(99, 3)));
        let before = b.clone();
        for (bad, why) in [
            (msg(4, Some(3), &[], &[]), "does not follow"),
            (msg(3, Some(2), &[(98, 0)], &[]), "does not hold"),
            (msg(3, Some(2), &[(101, 1)], &[]), "crossed"),
            (
                msg(3, Some(2), &[(97, 1), (96, 1), (95, 1)], &[]),
                "more than the 3",
            ),
            (
                BookMsg {
                    checksum: Some(1),
                    ..msg(3, Some(2), &[(97, 1)], &[])
                },
                "checksum",
            ),
        ] {
            let e = b.apply(&bad, 3).unwrap_err();
            assert!(e.contains(why), "{e}");
            assert_eq!(b, before, "{why}: nothing changed");
        }
        let undo = b.apply(&msg(3, None, &[(90, 1)], &[(95, 2)]), 50).unwrap();
        assert_eq!(b.levels.side(Side::Bid), &lv(&[(90, 1)])[..]);
        b.levels.undo(&undo);
        assert_eq!(b.levels, before.levels);
    }

    #[test]
    fn messages_are_checked_on_their_own() {
        assert!(msg(1, None, &[(100, 5)], &[(101, 4)]).check(50).is_ok());
        for (bad, why) in [
            (msg(1, None, &[(100, 5), (100, 1)], &[]), "repeated"),
            (msg(1, None, &[(99, 5), (100, 1)], &[]), "out of order"),
            (msg(1, None, &[], &[(101, 5), (100, 1)]), "out of order"),
            (msg(1, None, &[(100, 0)], &[]), "size 0"),
            (msg(1, None, &[(101, 1)], &[(101, 1)]), "crossed"),
            (msg(0, None, &[], &[]), "seq 0"),
            (msg(2, Some(2), &[], &[]), "prev_seq 2"),
            (msg(1, None, &[(0, 1)], &[]), "out of range"),
            (
                msg(1, None, &[(3, 1), (2, 1), (1, 1)], &[]),
                "more than the 2",
            ),
        ] {
            let e = bad.check(2).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
