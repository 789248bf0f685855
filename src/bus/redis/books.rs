//! Order books on the Redis bus, beside the ticks and in the symbol's hash tag:
//!
//! | name | what |
//! | --- | --- |
//! | `<prefix>book:{S}` | channel; payload one `book` or `book_update` object (JSON, with its `epoch`) |
//! | `<prefix>booksnap:{S}` | string; the whole current book as a `book` object, every level, with its `seq` and `checksum` |
//! | `<prefix>bookhist:{S}` | stream of the current epoch's recent book messages, entry id `<seq>-0`, fields `m` (the message as published), `p` (the seq of the book it applied to; 0: none) and `u` (what undoes it: `{"bids":[[price,size]…],"asks":[…]}`, each level it changed with the size it had before, 0 for none, prices in ticks), trimmed to about `--redis-book-history` entries |
//!
//! A publisher writes `booksnap:` before it publishes each message on `book:` (one
//! pipeline, one server: the hash tag), so whatever seq a message has, the snapshot read
//! after it was published is at that seq or later.
//!
//! A node that starts watching a symbol's book (or subscribes it again after a lost
//! link, a moved slot, or a message that does not follow) holds back what the channel
//! brings from before its subscription until it has read `booksnap:`; then it applies
//! the snapshot and what it held, in order. Held messages the snapshot already covers are
//! duplicates and dropped; the others follow it. No message is lost or applied twice
//! between the snapshot and the first one forwarded ([`Gate`]). A snapshot ahead of the
//! book the node held is announced as `gap` with `"channel":"book"` and sent as a fresh
//! `book`.
//!
//! A client that resumes its book on a node whose own history does not reach back to
//! the seq it holds (it never watched the symbol, or restarted) is served from
//! `bookhist:` ([`base`]): the node reads `booksnap:` and the entries after the seq, and
//! undoes them from the snapshot down to it, one after the other while each entry's `p`
//! is the seq of the next one down. That gives the book the client holds, from which the
//! node nets one `book_update` to its current book as if it had seen every message. A
//! seq the stream no longer reaches (or of another epoch) is answered as on one node:
//! `gap` + `book`.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::arrival::Dropped;
use super::Keys;
use crate::book::{self, BookMsg, Change, Levels, Side};
use crate::hub::book::{BookBase, BookPublished};
use crate::hub::{Cause, Hub};
use crate::protocol::ResumeFrom;
use crate::tick::Symbol;

/// Messages held back per symbol while its snapshot is read; older ones are dropped
/// beyond this (the snapshot is then read again).
pub const HELD_MAX: usize = 65_536;

impl Keys {
    /// `<prefix>book:{S}`: the channel of a symbol's book messages.
    pub fn book_channel(&self, s: &str) -> String {
        format!("{}book:{{{s}}}", self.prefix)
    }
    /// `<prefix>booksnap:{S}`: the whole current book.
    pub fn book_snapshot(&self, s: &str) -> String {
        format!("{}booksnap:{{{s}}}", self.prefix)
    }
    /// `<prefix>bookhist:{S}`: the recent book messages, with what undoes each.
    pub fn book_history(&self, s: &str) -> String {
        format!("{}bookhist:{{{s}}}", self.prefix)
    }
    /// `<prefix>book:`, what every book channel's name starts with.
    pub fn book_prefix(&self) -> String {
        format!("{}book:", self.prefix)
    }
}

/// Checks one payload read from `channel_symbol`'s book channel: one whole `book` or
/// `book_update` object of that symbol passing [`BookMsg::check`].
pub fn arrival(hub: &Hub, channel_symbol: &str, payload: &[u8]) -> Result<BookMsg, Dropped> {
    let books = hub.books();
    let max = books.settings().max_levels;
    let mut msg = book::json::parse(payload, |s| books.spec(s), max).map_err(|why| {
        match why.starts_with("not JSON") || why.starts_with("not a JSON") {
            true => Dropped::Malformed,
            false => Dropped::Refused(why),
        }
    })?;
    if *msg.symbol != *channel_symbol {
        return Err(Dropped::WrongChannel);
    }
    if let Some(s) = hub.symbol(&msg.symbol) {
        msg.symbol = s;
    }
    Ok(msg)
}

/// The whole book of a `booksnap:` value, when it is a well-formed `book` of `symbol`.
pub fn snapshot(hub: &Hub, symbol: &str, value: &[u8]) -> Option<BookMsg> {
    arrival(hub, symbol, value)
        .ok()
        .filter(|m| m.prev_seq.is_none())
}

/// The `u` field of a `bookhist:` entry: what undoes `changes` (each level with the size
/// it had, prices in ticks).
pub fn write_undo(changes: &[Change]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + changes.len() * 16);
    for (side, open) in [(Side::Bid, "{\"bids\":["), (Side::Ask, "],\"asks\":[")] {
        out.extend_from_slice(open.as_bytes());
        let mut first = true;
        for c in changes.iter().filter(|c| c.side == side) {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            out.extend_from_slice(format!("[{},{}]", c.price, c.was).as_bytes());
        }
    }
    out.extend_from_slice(b"]}");
    out
}

/// The levels of a `u` field, when well formed.
fn read_undo(u: &[u8]) -> Option<Vec<(Side, u64, u64)>> {
    #[derive(serde::Deserialize)]
    struct Undo {
        bids: Vec<(u64, u64)>,
        asks: Vec<(u64, u64)>,
    }
    let undo: Undo = serde_json::from_slice(u).ok()?;
    let bids = undo.bids.into_iter().map(|(p, s)| (Side::Bid, p, s));
    let asks = undo.asks.into_iter().map(|(p, s)| (Side::Ask, p, s));
    Some(bids.chain(asks).collect())
}

/// One `bookhist:` entry: its message (`m`), the seq it applied to (`p`), its undo (`u`).
struct Entry {
    m: Vec<u8>,
    prev: u64,
    undo: Vec<u8>,
}

/// The seq and fields of one stream entry `[id, [field, value, …]]`.
fn entry(value: redis::Value) -> Option<(u64, Entry)> {
    let redis::Value::Array(parts) = value else {
        return None;
    };
    let mut parts = parts.into_iter();
    let id = match parts.next()? {
        redis::Value::BulkString(b) => String::from_utf8(b).ok()?,
        redis::Value::SimpleString(s) => s,
        _ => return None,
    };
    let seq = id.strip_suffix("-0")?.parse().ok()?;
    let pairs: Vec<(redis::Value, redis::Value)> = match parts.next()? {
        redis::Value::Array(f) => {
            let mut f = f.into_iter();
            std::iter::from_fn(|| Some((f.next()?, f.next()?))).collect()
        }
        redis::Value::Map(m) => m,
        _ => return None,
    };
    let mut e = Entry {
        m: Vec::new(),
        prev: u64::MAX,
        undo: Vec::new(),
    };
    for (k, v) in pairs {
        let (redis::Value::BulkString(k), redis::Value::BulkString(v)) = (k, v) else {
            continue;
        };
        match &k[..] {
            b"m" => e.m = v,
            b"p" => e.prev = std::str::from_utf8(&v).ok()?.parse().ok()?,
            b"u" => e.undo = v,
            _ => {}
        }
    }
    (e.prev != u64::MAX).then_some((seq, e))
}

/// The book a client resuming `symbol` from `from` holds, rebuilt from the `booksnap:`
/// value `snap` and the `bookhist:` entries read after it (`entries`, the reply of an
/// `XRANGE`): `None` when the entries do not reach back to it unbroken, in the
/// snapshot's epoch.
pub fn base(
    hub: &Hub,
    symbol: &str,
    from: &ResumeFrom,
    snap: &[u8],
    entries: Vec<redis::Value>,
) -> Option<BookBase> {
    let snap = snapshot(hub, symbol, snap)?;
    if from.epoch.as_deref().is_some_and(|e| e != &*snap.epoch) || from.seq > snap.seq {
        return None;
    }
    let by_seq: HashMap<u64, Entry> = entries.into_iter().filter_map(entry).collect();
    let mut levels = Levels::new(snap.bids, snap.asks);
    let mut at = snap.seq;
    while at > from.seq {
        let e = by_seq.get(&at)?;
        let msg = arrival(hub, symbol, &e.m).ok()?;
        if msg.seq != at || *msg.epoch != *snap.epoch || e.prev == 0 || e.prev >= at {
            return None;
        }
        for (side, price, was) in read_undo(&e.undo)? {
            levels.set(side, price, was);
        }
        at = e.prev;
    }
    (at == from.seq).then_some(BookBase {
        epoch: snap.epoch,
        seq: at,
        levels,
    })
}

/// Where a symbol's book messages go on their way to the hub: straight there, or held
/// back while its snapshot is read.
#[derive(Default)]
pub struct Gate {
    held: Mutex<HashMap<Symbol, Vec<BookMsg>>>,
}

impl Gate {
    /// From now on the messages of `symbols` are held until [`Gate::settle`]: call it
    /// before (re)subscribing their channels.
    pub fn hold(&self, symbols: &[Symbol]) {
        let mut held = self.held.lock();
        for s in symbols {
            held.entry(s.clone()).or_default();
        }
    }

    /// Whether messages of `symbol` are held now.
    pub fn holds(&self, symbol: &str) -> bool {
        self.held.lock().contains_key(symbol)
    }

    /// Drops what is held of `symbols` (no longer watched).
    pub fn forget(&self, symbols: &[Symbol]) {
        let mut held = self.held.lock();
        for s in symbols {
            held.remove(s);
        }
    }

    /// Hands `msgs` (in order of arrival) to the hub, holding back those of held
    /// symbols. Returns the symbols whose message did not follow the book held (a
    /// message was lost): they are held from now on, and want their snapshot read.
    pub fn pass(&self, hub: &Hub, msgs: &mut Vec<BookMsg>) -> Vec<Symbol> {
        let mut held = self.held.lock();
        let mut now = Vec::with_capacity(msgs.len());
        for m in msgs.drain(..) {
            match held.get_mut(&m.symbol) {
                Some(h) => keep(h, m),
                None => now.push(m),
            }
        }
        if now.is_empty() {
            return Vec::new();
        }
        let results = hub.publish_books(&now);
        let mut repair: Vec<Symbol> = Vec::new();
        for (m, r) in now.iter().zip(results) {
            if matches!(r, BookPublished::Refused(_)) && !repair.contains(&m.symbol) {
                held.insert(m.symbol.clone(), Vec::new());
                repair.push(m.symbol.clone());
            }
        }
        repair
    }

    /// The snapshot of `symbol` was read: applies it (when there is one) and what was
    /// held after it, and lets the next messages through. True when what was held does
    /// not follow the snapshot (its snapshot wants reading again; it stays held).
    pub fn settle(&self, hub: &Hub, symbol: &Symbol, snapshot: Option<BookMsg>) -> bool {
        let mut held = self.held.lock();
        let Some(waiting) = held.remove(symbol) else {
            // No longer watched.
            return false;
        };
        let known = snapshot.is_some();
        let msgs: Vec<BookMsg> = snapshot.into_iter().chain(waiting).collect();
        if msgs.is_empty() {
            return false;
        }
        let results = hub.publish_books(&msgs);
        if known && results[0] == BookPublished::Duplicate {
            // Nothing was missed: the book held is the bus's.
            hub.books().regained(symbol, Cause::Bus);
        }
        let broken = results
            .iter()
            .any(|r| matches!(r, BookPublished::Refused(_)));
        if broken && hub.books().current(symbol).is_some() {
            held.insert(symbol.clone(), Vec::new());
            return true;
        }
        false
    }
}

/// Holds `m`, dropping the oldest held beyond [`HELD_MAX`].
fn keep(held: &mut Vec<BookMsg>, m: BookMsg) {
    if held.len() >= HELD_MAX {
        held.remove(0);
    }
    held.push(m);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::{Level, Spec};
    use crate::hub::book::BookSettings;

    fn hub() -> Hub {
        Hub::new(["AAPL".into()], 4)
            .with_books([("AAPL".into(), Spec::new(2))], BookSettings::default())
    }

    fn msg(seq: u64, prev: Option<u64>, bid: u64) -> BookMsg {
        BookMsg {
            symbol: "AAPL".into(),
            epoch: "e".into(),
            seq,
            prev_seq: prev,
            ts: seq,
            bids: vec![Level::new(bid, seq)],
            asks: vec![Level::new(200, 1)],
            checksum: None,
        }
    }

    /// A `bookhist:` entry as an `XRANGE` reply holds it.
    fn stored(seq: u64, m: &BookMsg, prev: u64, changes: &[Change]) -> redis::Value {
        let mut json = Vec::new();
        let head = book::json::Head {
            symbol: &m.symbol,
            epoch: &m.epoch,
            seq,
            ts: seq,
            spec: Spec::new(2),
        };
        book::json::write(&mut json, &head, m.prev_seq, &m.bids, &m.asks, 0);
        let bulk = |b: Vec<u8>| redis::Value::BulkString(b);
        redis::Value::Array(vec![
            bulk(format!("{seq}-0").into_bytes()),
            redis::Value::Array(vec![
                bulk(b"m".to_vec()),
                bulk(json),
                bulk(b"p".to_vec()),
                bulk(prev.to_string().into_bytes()),
                bulk(b"u".to_vec()),
                bulk(write_undo(changes)),
            ]),
        ])
    }

    #[test]
    fn the_book_a_client_holds_is_rebuilt_by_undoing_the_stream_down_to_it() {
        let hub = hub();
        let first = msg(1, None, 100);
        let mut book = book::Book::from_msg(&first);
        let mut entries = Vec::new();
        let mut at = vec![book.levels.clone()];
        book.apply(&first, 10).unwrap();
        at[0] = book.levels.clone();
        for seq in 2..=5 {
            let m = msg(seq, Some(seq - 1), 100 + seq);
            let changes = book.apply(&m, 10).unwrap();
            entries.push(stored(seq, &m, seq - 1, &changes));
            at.push(book.levels.clone());
        }
        assert_eq!(&write_undo(&[])[..], br#"{"bids":[],"asks":[]}"#);
        let mut snap = Vec::new();
        let head = book::json::Head {
            symbol: "AAPL",
            epoch: "e",
            seq: 5,
            ts: 5,
            spec: Spec::new(2),
        };
        let (bids, asks) = (book.levels.side(Side::Bid), book.levels.side(Side::Ask));
        book::json::write(&mut snap, &head, None, bids, asks, 0);
        let from = |seq| ResumeFrom {
            epoch: Some("e".into()),
            seq,
        };
        for seq in 1..=5 {
            let got = base(&hub, "AAPL", &from(seq), &snap, entries.clone()).unwrap();
            assert_eq!((got.seq, &got.levels), (seq, &at[seq as usize - 1]));
        }
        let mut holed = entries.clone();
        holed.remove(1);
        assert!(base(&hub, "AAPL", &from(2), &snap, holed.clone()).is_none());
        assert!(base(&hub, "AAPL", &from(3), &snap, holed).is_some());
        let other = ResumeFrom {
            epoch: Some("x".into()),
            seq: 3,
        };
        assert!(base(&hub, "AAPL", &other, &snap, entries).is_none());
    }

    #[test]
    fn keys_carry_the_symbol_as_hash_tag() {
        let k = Keys::new("tickstream:");
        assert_eq!(k.book_channel("AAPL"), "tickstream:book:{AAPL}");
        assert_eq!(k.book_snapshot("EUR/USD"), "tickstream:booksnap:{EUR/USD}");
        assert_eq!(k.book_history("AAPL"), "tickstream:bookhist:{AAPL}");
        assert!(k.book_channel("X").starts_with(&k.book_prefix()));
    }

    #[test]
    fn held_messages_the_snapshot_covers_are_dropped_and_the_rest_follow_it() {
        let (hub, gate) = (hub(), Gate::default());
        let sym: Symbol = "AAPL".into();
        gate.hold(std::slice::from_ref(&sym));
        let mut arrived = vec![msg(4, Some(3), 100), msg(5, Some(4), 101)];
        assert!(gate.pass(&hub, &mut arrived).is_empty());
        assert!(hub.books().current("AAPL").is_none(), "held, not applied");
        assert!(!gate.settle(&hub, &sym, Some(msg(4, None, 100))));
        let book = hub.books().current("AAPL").unwrap();
        assert_eq!(book.seq, 5);
        let mut next = vec![msg(6, Some(5), 102)];
        assert!(gate.pass(&hub, &mut next).is_empty());
        assert_eq!(hub.books().current("AAPL").unwrap().seq, 6);
    }

    #[test]
    fn a_message_that_does_not_follow_holds_its_symbol_for_a_repair() {
        let (hub, gate) = (hub(), Gate::default());
        let sym: Symbol = "AAPL".into();
        let mut first = vec![msg(1, None, 100)];
        assert!(gate.pass(&hub, &mut first).is_empty());
        let mut hole = vec![msg(3, Some(2), 100), msg(4, Some(3), 100)];
        assert_eq!(gate.pass(&hub, &mut hole), vec![sym.clone()]);
        assert!(gate.holds("AAPL"));
        let mut later = vec![msg(5, Some(4), 100)];
        assert!(gate.pass(&hub, &mut later).is_empty());
        assert!(!gate.settle(&hub, &sym, Some(msg(4, None, 100))));
        assert_eq!(hub.books().current("AAPL").unwrap().seq, 5);
        assert!(!gate.holds("AAPL"));
    }
}
