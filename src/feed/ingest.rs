//! Ingest of ticks and books that external feeds push into a node through the publisher
//! endpoint (`GET /v1/publish`): every message is checked on its own before it reaches
//! the bus, and each frame is answered with what became of its messages.
//!
//! A frame holds one object or a JSON array of them: the protocol's `tick` object
//! (`type` may be left out), `book` or `book_update`. A bad tick (missing or mistyped
//! field, bad price, bid above ask, seq not rising, unknown or malformed symbol) or a
//! bad book message (crossed, levels out of order or repeated, prices off the tick
//! grid, more levels than allowed, a `prev_seq` that does not follow the book this
//! connection published, a checksum that does not match) is refused with an `error`
//! naming it (its index in the frame, symbol and seq) and counted, never forwarded; the
//! rest of the frame goes on, and other symbols are untouched. The answer ends with
//! `{"type":"published","accepted":N,"refused":M}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth::Claims;
use crate::book::{Book, BookMsg};
use crate::bus::Bus;
use crate::hub::Hub;
use crate::tick::{new_epoch, uint_field, valid_symbol, Symbol, Tick};

/// Counters of the publisher endpoint's ingest.
#[derive(Debug, Default)]
pub struct PublishStats {
    /// Publisher connections open now.
    pub connections: AtomicU64,
    /// Frames received.
    pub frames: AtomicU64,
    /// Ticks and book messages accepted and published on the bus.
    pub accepted: AtomicU64,
    /// Ticks and book messages refused (bad field, bid > ask, seq not rising, a bad
    /// book, unknown or bad symbol).
    pub refused: AtomicU64,
}

/// Limits announced in the publisher `welcome`.
#[derive(Serialize)]
pub struct PublishLimits {
    /// Largest inbound message.
    pub max_msg_bytes: usize,
    /// Frames per second per connection.
    pub frames_per_s: u32,
}

/// What the node sends a publisher (`type` first, as in every server message).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply<'a> {
    /// Sent on connect.
    Welcome {
        /// The node's name.
        node: &'a str,
        /// Always `publisher`.
        role: &'static str,
        /// Silence after which the node closes the connection.
        idle_timeout_ms: u64,
        /// The endpoint's limits.
        limits: PublishLimits,
    },
    /// A refused tick or frame.
    #[allow(missing_docs)]
    Error {
        code: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        index: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        symbol: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// What became of a frame's ticks.
    #[allow(missing_docs)]
    Published { accepted: u64, refused: u64 },
}

/// The `published` answer of a frame.
pub fn ack(accepted: u64, refused: u64) -> Reply<'static> {
    Reply::Published { accepted, refused }
}

/// A refused frame as an `error` message.
pub fn refusal(code: &'static str, message: &str) -> Reply<'static> {
    Reply::Error {
        code,
        message: message.to_owned(),
        index: None,
        symbol: None,
        seq: None,
    }
}

/// A refused tick as an `error` message naming it.
fn tick_error(r: Refused) -> Reply<'static> {
    Reply::Error {
        code: r.code,
        message: describe(&r),
        index: Some(r.index),
        symbol: r.symbol,
        seq: r.seq,
    }
}

/// Where a refused message was and why.
#[derive(Clone)]
struct Refused {
    /// `tick`, `book` or `book_update`.
    kind: &'static str,
    index: usize,
    symbol: Option<String>,
    seq: Option<u64>,
    code: &'static str,
    why: String,
}

/// The last seq accepted for a symbol, with its epoch.
type Position = (Arc<str>, u64);

/// Checks the ticks of one publisher connection and publishes the good ones.
pub struct Checker<'a> {
    hub: &'a Hub,
    bus: &'a dyn Bus,
    stats: &'a PublishStats,
    /// Used for ticks that carry no `epoch`: one per connection.
    epoch: Arc<str>,
    /// The last seq this connection had accepted per symbol, with its epoch.
    last: HashMap<Symbol, Position>,
    /// The publisher's token claims, when auth is on: ticks of symbols they do not
    /// allow are refused.
    claims: Option<Claims>,
    /// The book of each symbol as this connection's messages made it.
    books: HashMap<Symbol, Book>,
}

/// The connection it checked for ended: the symbols it published have lost their
/// source (until another feed publishes them).
impl Drop for Checker<'_> {
    fn drop(&mut self) {
        let mut published: Vec<Symbol> = self.last.keys().cloned().collect();
        published.extend(
            self.books
                .keys()
                .filter(|s| !self.last.contains_key(*s))
                .cloned(),
        );
        if !published.is_empty() {
            self.bus.sources_lost(&published);
        }
    }
}

impl<'a> Checker<'a> {
    /// A checker for one connection, publishing on `bus` the ticks of `hub`'s symbols.
    pub fn new(hub: &'a Hub, bus: &'a dyn Bus, stats: &'a PublishStats) -> Checker<'a> {
        Checker {
            hub,
            bus,
            stats,
            epoch: new_epoch(),
            last: HashMap::new(),
            claims: None,
            books: HashMap::new(),
        }
    }

    /// Refuses ticks of the symbols `claims` do not allow (a publisher token limited to
    /// some symbols).
    pub fn limited_to(mut self, claims: Option<Claims>) -> Checker<'a> {
        self.claims = claims;
        self
    }

    /// Checks and publishes the ticks and books of one message; returns the reply
    /// messages.
    pub fn frame(&mut self, payload: &[u8]) -> Vec<Reply<'static>> {
        let stats = self.stats;
        let value: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                let why = format!("the frame is not JSON: {e}");
                return vec![refusal("bad_request", &why), ack(0, 0)];
            }
        };
        let items = match value {
            Value::Array(items) => items,
            other => vec![other],
        };
        // The good ticks go to the bus as one batch at the end of the frame; `last`
        // moves on as each is checked (the next tick of the same symbol in the frame
        // must rise above it) and is put back for any the bus then refuses. Book
        // messages, likewise, after the book this connection holds took each of them.
        let mut errors: Vec<(usize, Reply<'static>)> = Vec::new();
        let mut good = Good::default();
        for (index, item) in items.into_iter().enumerate() {
            if let Some(kind) = book_kind(&item) {
                match self.check_book(index, kind, item) {
                    Ok(msg) => good.books.push((index, msg)),
                    Err(r) => errors.push((index, tick_error(r))),
                }
                continue;
            }
            match self.check(index, item) {
                Ok(tick) => {
                    let before = self
                        .last
                        .insert(tick.symbol.clone(), (tick.epoch.clone(), tick.seq));
                    good.placed.push((index, before));
                    good.ticks.push(tick);
                }
                Err(r) => errors.push((index, tick_error(r))),
            }
        }
        let accepted = self.publish_books(good.books, &mut errors)
            + self.publish_ticks(good.ticks, good.placed, &mut errors);
        let refused = errors.len() as u64;
        errors.sort_by_key(|(index, _)| *index);
        let mut out: Vec<Reply<'static>> = errors.into_iter().map(|(_, r)| r).collect();
        stats.accepted.fetch_add(accepted, Ordering::Relaxed);
        stats.refused.fetch_add(refused, Ordering::Relaxed);
        out.push(ack(accepted, refused));
        out
    }

    /// Publishes a frame's good ticks as one batch; returns how many the bus took, with
    /// an `unavailable` error for each of the others (whose `last` is put back).
    fn publish_ticks(
        &mut self,
        good: Vec<Tick>,
        placed: Vec<(usize, Option<Position>)>,
        errors: &mut Vec<(usize, Reply<'static>)>,
    ) -> u64 {
        let names: Vec<(Symbol, u64)> = good.iter().map(|t| (t.symbol.clone(), t.seq)).collect();
        match self.bus.publish_batch(good) {
            Ok(()) => names.len() as u64,
            Err(e) => {
                let why = e.error.to_string();
                for k in (e.published..names.len()).rev() {
                    let (symbol, seq) = &names[k];
                    let (index, before) = placed[k].clone();
                    match before {
                        Some(b) => self.last.insert(symbol.clone(), b),
                        None => self.last.remove(symbol),
                    };
                    let r = Refused {
                        kind: "tick",
                        index,
                        symbol: Some(symbol.to_string()),
                        seq: Some(*seq),
                        code: "unavailable",
                        why: why.clone(),
                    };
                    errors.push((index, tick_error(r)));
                }
                e.published as u64
            }
        }
    }

    /// Publishes a frame's good book messages in order; returns how many the bus took,
    /// with an `unavailable` error for each of the others (their symbols' books are
    /// forgotten: the publisher sends a whole `book` again).
    fn publish_books(
        &mut self,
        good: Vec<(usize, BookMsg)>,
        errors: &mut Vec<(usize, Reply<'static>)>,
    ) -> u64 {
        let names: Vec<(usize, Symbol, u64, bool)> = good
            .iter()
            .map(|(i, m)| (*i, m.symbol.clone(), m.seq, m.prev_seq.is_some()))
            .collect();
        let msgs = good.into_iter().map(|(_, m)| m).collect();
        match self.bus.publish_books(msgs) {
            Ok(()) => names.len() as u64,
            Err(e) => {
                let why = e.error.to_string();
                for (index, symbol, seq, update) in &names[e.published..] {
                    self.books.remove(symbol);
                    let r = Refused {
                        kind: if *update { "book_update" } else { "book" },
                        index: *index,
                        symbol: Some(symbol.to_string()),
                        seq: Some(*seq),
                        code: "unavailable",
                        why: why.clone(),
                    };
                    errors.push((*index, tick_error(r)));
                }
                e.published as u64
            }
        }
    }

    /// Checks the book message at `index` of a frame and applies it to the book this
    /// connection holds of its symbol: `Ok` to publish it, else where and why it is
    /// refused (with the book held unchanged).
    fn check_book(
        &mut self,
        index: usize,
        kind: &'static str,
        item: Value,
    ) -> Result<BookMsg, Refused> {
        let Value::Object(obj) = item else {
            unreachable!("a book message is an object");
        };
        let r = Refused {
            kind,
            index,
            symbol: obj.get("symbol").and_then(Value::as_str).map(str::to_owned),
            seq: obj.get("seq").and_then(Value::as_u64),
            code: "bad_book",
            why: String::new(),
        };
        let refuse = |(code, why): Fault| Refused {
            code,
            why,
            ..r.clone()
        };
        let symbol = self.symbol(&obj).map_err(refuse)?;
        let books = self.hub.books();
        let Some(spec) = books.spec(&symbol) else {
            return Err(refuse((
                "unknown_symbol",
                format!("no book of {symbol} is served here"),
            )));
        };
        let epoch = self.epoch(&obj).map_err(|why| refuse(("bad_book", why)))?;
        let max = books.settings().max_levels;
        let msg = crate::book::json::from_object(&obj, symbol, epoch, spec)
            .and_then(|m| m.check(max).map(|()| m))
            .map_err(|why| refuse(("bad_book", why)))?;
        self.take_book(&msg, max)
            .map_err(|why| refuse(("bad_book", why)))?;
        Ok(msg)
    }

    /// Applies `msg` to the book this connection holds of its symbol (at first, the
    /// node's own, so that a publisher may go on from where a previous connection
    /// left off): a whole book newer than what is held replaces it; an update must
    /// follow it. On error nothing changes.
    fn take_book(&mut self, msg: &BookMsg, max: usize) -> Result<(), String> {
        if !self.books.contains_key(&msg.symbol) {
            if let Some(b) = self.hub.books().current(&msg.symbol) {
                self.books.insert(msg.symbol.clone(), b);
            }
        }
        let held = self.books.get_mut(&msg.symbol);
        if let Some(b) = held
            .as_ref()
            .filter(|b| *b.epoch == *msg.epoch && msg.seq <= b.seq)
        {
            return Err(format!(
                "seq {} is not above {}, the last accepted for epoch {}",
                msg.seq, b.seq, b.epoch
            ));
        }
        match (held, msg.prev_seq) {
            (Some(b), Some(_)) => b.apply(msg, max).map(drop),
            (None, Some(prev)) => Err(format!(
                "prev_seq {prev} does not follow: no book of {} is held; send a whole book first",
                msg.symbol
            )),
            (held, None) => {
                let mut fresh = Book::from_msg(&BookMsg {
                    bids: Vec::new(),
                    asks: Vec::new(),
                    ..msg.clone()
                });
                fresh.apply(msg, max)?;
                match held {
                    Some(b) => *b = fresh,
                    None => {
                        self.books.insert(msg.symbol.clone(), fresh);
                    }
                }
                Ok(())
            }
        }
    }

    /// Checks the tick at `index` of a frame: `Ok` to publish it, else where and why it
    /// is refused.
    fn check(&self, index: usize, item: Value) -> Result<Tick, Refused> {
        let mut r = Refused {
            kind: "tick",
            index,
            symbol: None,
            seq: None,
            code: "bad_tick",
            why: String::new(),
        };
        let Value::Object(mut obj) = item else {
            r.why = "not a JSON object".into();
            return Err(r);
        };
        r.symbol = obj.get("symbol").and_then(Value::as_str).map(str::to_owned);
        r.seq = obj.get("seq").and_then(Value::as_u64);
        self.tick_of(&mut obj)
            .map_err(|(code, why)| Refused { code, why, ..r })
    }

    /// The tick object `obj` holds, checked in turn: its type, its symbol, its epoch,
    /// its fields, their sense, and its seq against the last accepted.
    fn tick_of(&self, obj: &mut Map<String, Value>) -> Result<Tick, Fault> {
        match obj.remove("type") {
            None => {}
            Some(Value::String(t)) if t == "tick" => {}
            Some(other) => return Err(bad(format!("type must be \"tick\", found {other}"))),
        }
        let symbol = self.symbol(obj)?;
        let epoch = self.epoch(obj).map_err(bad)?;
        let tick = fields(obj, symbol, epoch).map_err(bad)?;
        if tick.seq == 0 {
            return Err(bad("seq must start at 1".into()));
        }
        if tick.bid > tick.ask {
            return Err(bad(format!("bid {} is above ask {}", tick.bid, tick.ask)));
        }
        self.rises(&tick).map_err(bad)?;
        Ok(tick)
    }

    /// The tick's symbol: a well-formed one this node serves and the token allows.
    fn symbol(&self, obj: &Map<String, Value>) -> Result<Symbol, Fault> {
        let symbol = match obj.get("symbol") {
            None => return Err(bad("missing field symbol".into())),
            Some(Value::String(s)) => s,
            Some(other) => return Err(bad(format!("symbol must be a string, found {other}"))),
        };
        if !valid_symbol(symbol) {
            return Err(("bad_symbol", format!("malformed symbol {symbol:?}")));
        }
        let Some(symbol) = self.hub.symbol(symbol) else {
            return Err(("unknown_symbol", format!("{symbol} is not served here")));
        };
        if self.claims.as_ref().is_some_and(|c| !c.allows(&symbol)) {
            return Err((
                "forbidden",
                format!("the token does not allow publishing {symbol}"),
            ));
        }
        Ok(symbol)
    }

    /// The tick's epoch: its own, or the connection's when it has none.
    fn epoch(&self, obj: &Map<String, Value>) -> Result<Arc<str>, String> {
        match obj.get("epoch") {
            None => Ok(self.epoch.clone()),
            Some(Value::String(e)) if !e.is_empty() && e.len() <= 64 => Ok(e.as_str().into()),
            Some(other) => Err(format!(
                "epoch must be a string of 1 to 64 characters, found {other}"
            )),
        }
    }

    /// Whether the tick's seq rises above the last one held for its symbol and epoch,
    /// by the hub or by this connection.
    fn rises(&self, tick: &Tick) -> Result<(), String> {
        let mut held = self
            .hub
            .latest(&tick.symbol)
            .filter(|e| e.tick.epoch == tick.epoch)
            .map_or(0, |e| e.tick.seq);
        if let Some((e, s)) = self.last.get(&tick.symbol) {
            if *e == tick.epoch {
                held = held.max(*s);
            }
        }
        if tick.seq <= held {
            return Err(format!(
                "seq {} is not above {held}, the last accepted for epoch {}",
                tick.seq, tick.epoch
            ));
        }
        Ok(())
    }
}

/// Why a tick is refused: the error code, and the reason in words.
type Fault = (&'static str, String);

/// A `bad_tick` refusal for `why`.
fn bad(why: String) -> Fault {
    ("bad_tick", why)
}

/// The tick of `symbol` and `epoch` whose fields `obj` holds, or the first field
/// missing or mistyped.
fn fields(obj: &Map<String, Value>, symbol: Symbol, epoch: Arc<str>) -> Result<Tick, String> {
    Ok(Tick {
        symbol,
        epoch,
        seq: uint_field(obj, "seq")?,
        ts: uint_field(obj, "ts")?,
        bid: price(obj, "bid")?,
        ask: price(obj, "ask")?,
        bid_size: uint_field(obj, "bid_size")?,
        ask_size: uint_field(obj, "ask_size")?,
        last: price(obj, "last")?,
        last_size: uint_field(obj, "last_size")?,
        volume: uint_field(obj, "volume")?,
        src_ts: match obj.get("src_ts") {
            None | Some(Value::Null) => None,
            Some(_) => Some(uint_field(obj, "src_ts")?),
        },
    })
}

/// Field `name` of `obj` as a positive, finite price.
fn price(obj: &Map<String, Value>, name: &str) -> Result<f64, String> {
    match obj.get(name) {
        None => Err(format!("missing field {name}")),
        Some(v) => match v.as_f64() {
            Some(p) if v.is_number() && p.is_finite() && p > 0.0 => Ok(p),
            _ => Err(format!("{name} must be a positive number, found {v}")),
        },
    }
}

fn describe(r: &Refused) -> String {
    let (kind, index) = (r.kind, r.index);
    let what = match (&r.symbol, r.seq) {
        (Some(s), Some(q)) => format!("{kind} {index} of the frame ({s} seq {q})"),
        (Some(s), None) => format!("{kind} {index} of the frame ({s})"),
        _ => format!("{kind} {index} of the frame"),
    };
    format!("{what}: {}", r.why)
}

/// The good messages of a frame, to publish at its end.
#[derive(Default)]
struct Good {
    ticks: Vec<Tick>,
    /// Where each tick was in the frame, and the position it moved `last` from.
    placed: Vec<(usize, Option<Position>)>,
    /// Book messages, with where each was in the frame.
    books: Vec<(usize, BookMsg)>,
}

/// `book` or `book_update` when `item` is a book message (an object of that `type`).
fn book_kind(item: &Value) -> Option<&'static str> {
    match item.get("type").and_then(Value::as_str) {
        Some("book") => Some("book"),
        Some("book_update") => Some("book_update"),
        _ => None,
    }
}

/// Checks and publishes the messages `frames`, in order, as one publisher connection
/// would, and returns the reply to each (the JSON array the publisher receives). The
/// endpoint's parser without the socket, for fuzzing and property tests.
pub fn answer_frames<'f>(
    hub: &Hub,
    bus: &dyn Bus,
    stats: &PublishStats,
    frames: impl IntoIterator<Item = &'f [u8]>,
) -> Vec<Vec<u8>> {
    let mut checker = Checker::new(hub, bus, stats);
    frames
        .into_iter()
        .map(|f| serde_json::to_vec(&checker.frame(f)).unwrap_or_default())
        .collect()
}
