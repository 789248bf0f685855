//! Server messages as the client sees them, decoded from the JSON arrays the server
//! sends (one or more messages per frame, see the protocol document), and with
//! `encoding=binary` from the records of its binary frames.
//!
//! Decoding borrows from the frame: a message is first read into [`Raw`], whose strings
//! point into the frame's bytes, and only then turned into a [`ServerMessage`]. Symbol
//! and epoch names are looked up in the client's own table ([`Names`]) so that a tick
//! costs no string allocation once its symbol has been seen.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use serde_json::value::RawValue;

use super::books::BookMessage;
use crate::book::{BookMsg, Level, Spec};
use crate::hub::candles::bar::Flagged;
use crate::hub::candles::Bar;
use crate::protocol::channel::Interval;
use crate::protocol::{binary, GapReason};
use crate::tick::{Kind, Symbol, Tick};

/// One message from the server.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message of every connection.
    Welcome {
        /// The node's name.
        node: String,
        /// This connection's id.
        session: String,
        /// Interval of the server's Pings, in milliseconds.
        heartbeat_ms: u64,
        /// `json` or `binary`.
        encoding: String,
        /// The limits in force, when the server announced them.
        #[serde(skip_serializing_if = "Option::is_none")]
        limits: Option<Limits>,
    },
    /// Reply to `subscribe`.
    Subscribed {
        /// The command's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel, when not `ticks`.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// The candle interval, when the command named one.
        #[serde(skip_serializing_if = "Option::is_none")]
        interval: Option<String>,
        /// The symbols now subscribed: those named, then those the patterns matched.
        symbols: Vec<String>,
        /// The patterns of the command, when it had some.
        #[serde(skip_serializing_if = "Option::is_none")]
        patterns: Option<Vec<String>>,
        /// The pace, when the command gave one.
        #[serde(skip_serializing_if = "Option::is_none")]
        throttle_ms: Option<u64>,
    },
    /// Reply to `unsubscribe`.
    Unsubscribed {
        /// The command's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel, when not `ticks`.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// The candle interval, when the command named one.
        #[serde(skip_serializing_if = "Option::is_none")]
        interval: Option<String>,
        /// The symbols dropped.
        symbols: Vec<String>,
        /// The patterns dropped.
        #[serde(skip_serializing_if = "Option::is_none")]
        patterns: Option<Vec<String>>,
    },
    /// Reply to `list`.
    Subscriptions {
        /// The command's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel, when not `ticks`.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// The candle interval, when the command named one.
        #[serde(skip_serializing_if = "Option::is_none")]
        interval: Option<String>,
        /// Every symbol subscribed.
        symbols: Vec<String>,
        /// Every pattern held.
        #[serde(skip_serializing_if = "Option::is_none")]
        patterns: Option<Vec<String>>,
    },
    /// The latest state of a symbol: replaces whatever the client held for it.
    Snapshot(Tick),
    /// One update; on a paced subscription it says how many ticks were folded into it.
    Tick(TickMessage),
    /// Ticks `from..=to` of `symbol` will not be delivered.
    Gap {
        /// The symbol.
        symbol: Symbol,
        /// The channel, when not `ticks`.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
        /// Why. A reason this client does not know reads as `upstream`.
        reason: GapReason,
    },
    /// Reply to `ping`.
    Pong {
        /// The command's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Server time, nanoseconds since the Unix epoch.
        ts: u64,
    },
    /// Whether a symbol's latest value is current, as the node says: `stale` when it
    /// knows the symbol's source stopped, `live` when values flow again.
    Status {
        /// The symbol.
        symbol: Symbol,
        /// Live, or stale and why.
        #[serde(flatten)]
        state: SymbolState,
    },
    /// The bars a `candles` subscription starts with: up to `backfill` closed bars,
    /// oldest first, then the forming bar if there is one. Replaces what was held.
    Candles {
        /// The symbol.
        symbol: Symbol,
        /// The bar length.
        #[serde(serialize_with = "interval_name")]
        interval: Interval,
        /// The bars.
        bars: Vec<Candle>,
    },
    /// The forming bar changed (`closed` false, paced), or a bar ended (`closed` true,
    /// exactly once per bar).
    Candle {
        /// The symbol.
        symbol: Symbol,
        /// The bar length.
        #[serde(serialize_with = "interval_name")]
        interval: Interval,
        /// The bar.
        #[serde(flatten)]
        candle: Candle,
    },
    /// Reply to `report`.
    Reported {
        /// The command's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// The server will close this connection (`reason`: `shutdown`, `lifetime`…) and
    /// keeps streaming for `in_ms` meanwhile: time to open the next one.
    Reconnect {
        /// Why, as the server names it.
        reason: String,
        /// How long the server keeps streaming, in milliseconds.
        in_ms: u64,
    },
    /// A refused command or part of one.
    Error {
        /// The command's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The error code, e.g. `unknown_symbol`.
        code: String,
        /// The channel, when not `ticks`.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// What went wrong.
        message: String,
        /// The symbols concerned.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        symbols: Vec<String>,
    },
    /// A `book` (the whole book at a `seq`) or a `book_update` (the levels that
    /// changed since `prev_seq`) of the `book` channel.
    #[serde(skip)]
    Book(BookMessage),
    /// A message type this client does not know (the protocol may add some); ignored.
    #[serde(skip)]
    Unknown,
}

impl ServerMessage {
    /// Appends this message as one JSON object (no newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            ServerMessage::Tick(t) => t.write_json(out),
            ServerMessage::Snapshot(t) => t.write_json(Kind::Snapshot, out),
            ServerMessage::Book(b) => b.write_json(out),
            ServerMessage::Unknown => out.extend_from_slice(br#"{"type":"unknown"}"#),
            // Strings and numbers always serialize.
            other => {
                let _ = serde_json::to_writer(out, other);
            }
        }
    }
}

/// A `tick` message: the tick, and on a paced subscription (`throttle_ms`) the ticks of
/// its symbol folded into it since the previous one (`skipped`, so that `seq` − previous
/// `seq` − 1 = `skipped`). Reads as the [`Tick`] it holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TickMessage {
    /// The tick.
    #[serde(flatten)]
    pub tick: Tick,
    /// Ticks folded into this one by pacing; `None` on an unpaced subscription.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u64>,
}

impl TickMessage {
    /// Appends the `tick` message as the server writes it: `skipped`, when there, last.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.tick.write_json(Kind::Tick, out);
        if let Some(k) = self.skipped {
            out.pop();
            out.extend_from_slice(b",\"skipped\":");
            out.extend_from_slice(k.to_string().as_bytes());
            out.push(b'}');
        }
    }
}

impl From<Tick> for TickMessage {
    fn from(tick: Tick) -> TickMessage {
        TickMessage {
            tick,
            skipped: None,
        }
    }
}

impl std::ops::Deref for TickMessage {
    type Target = Tick;
    fn deref(&self) -> &Tick {
        &self.tick
    }
}

/// One bar of a `candles` or `candle` message: its fields (see
/// [`crate::hub::candles::Bar`]), and whether it has ended.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct Candle {
    /// Opening time, open, high, low, close, volume and ticks.
    #[serde(flatten)]
    pub bar: Bar,
    /// Whether the bar has ended (`false`: it is still forming).
    pub closed: bool,
}

impl Serialize for Candle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Flagged::new(&self.bar, "closed", self.closed).serialize(s)
    }
}

fn interval_name<S: serde::Serializer>(i: &Interval, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(i.as_str())
}

/// What a `status` message says of a symbol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum SymbolState {
    /// Values flow: the latest value is current.
    Live,
    /// The symbol's source stopped: its latest value is no longer current.
    Stale(StaleReason),
}

/// Why a node says a symbol is stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StaleReason {
    /// The feed publishing the symbol stopped (its lease lapsed, it said it stopped, or
    /// its publisher connection ended).
    Feed,
    /// The node lost its connection to the bus.
    Bus,
    /// The node lost the symbol's channel on the bus (e.g. its slot moved).
    Channel,
    /// A reason this client does not know, as the node named it.
    Other(String),
}

impl StaleReason {
    /// The reason as the protocol names it.
    pub fn as_str(&self) -> &str {
        match self {
            StaleReason::Feed => "feed",
            StaleReason::Bus => "bus",
            StaleReason::Channel => "channel",
            StaleReason::Other(s) => s,
        }
    }

    fn parse(s: &str) -> StaleReason {
        match s {
            "feed" => StaleReason::Feed,
            "bus" => StaleReason::Bus,
            "channel" => StaleReason::Channel,
            other => StaleReason::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for StaleReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The limits a node announces in `welcome`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most symbols one connection may hold.
    pub max_symbols: u64,
    /// Largest inbound message, in bytes.
    pub max_msg_bytes: u64,
    /// Sustained inbound messages per second.
    pub rate_per_s: u64,
}

/// A message as read from the frame, borrowing its strings where it can.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Raw<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    symbol: Option<Cow<'a, str>>,
    #[serde(borrow)]
    epoch: Option<Cow<'a, str>>,
    seq: u64,
    ts: u64,
    bid: f64,
    ask: f64,
    bid_size: u64,
    ask_size: u64,
    last: f64,
    last_size: u64,
    volume: u64,
    src_ts: Option<u64>,
    from: u64,
    to: u64,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    state: Option<Cow<'a, str>>,
    id: Option<u64>,
    #[serde(borrow)]
    node: Option<Cow<'a, str>>,
    #[serde(borrow)]
    session: Option<Cow<'a, str>>,
    heartbeat_ms: u64,
    #[serde(borrow)]
    encoding: Option<Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    symbols: Option<Vec<String>>,
    limits: Option<Limits>,
    skipped: Option<u64>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    interval: Option<Cow<'a, str>>,
    patterns: Option<Vec<String>>,
    throttle_ms: Option<u64>,
    in_ms: u64,
    bars: Option<Vec<Candle>>,
    start: u64,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    ticks: u64,
    closed: bool,
    prev_seq: Option<u64>,
    #[serde(borrow)]
    bids: Option<Vec<(&'a RawValue, u64)>>,
    #[serde(borrow)]
    asks: Option<Vec<(&'a RawValue, u64)>>,
    checksum: Option<u32>,
}

/// Interned symbol and epoch names, so decoding a tick allocates no string.
#[derive(Default)]
pub struct Names {
    names: HashSet<Arc<str>>,
}

impl Names {
    /// The shared copy of `s`, made on first sight.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(a.clone());
        a
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable frame from the server: {0}")]
pub struct DecodeError(String);

fn owned(s: Option<Cow<'_, str>>) -> Option<String> {
    s.map(Cow::into_owned)
}

fn gap_reason(s: &str) -> GapReason {
    match s {
        "slow_consumer" => GapReason::SlowConsumer,
        "expired" => GapReason::Expired,
        "reset" => GapReason::Reset,
        _ => GapReason::Upstream,
    }
}

impl Raw<'_> {
    /// The typed message, with names taken from `names`.
    pub fn into_message(self, names: &mut Names) -> Result<ServerMessage, DecodeError> {
        Ok(match &*self.kind {
            "tick" => ServerMessage::Tick(TickMessage {
                tick: self.tick(names)?,
                skipped: self.skipped,
            }),
            "snapshot" => ServerMessage::Snapshot(self.tick(names)?),
            "gap" => ServerMessage::Gap {
                symbol: self.symbol(names)?,
                channel: owned(self.channel),
                from: self.from,
                to: self.to,
                reason: gap_reason(self.reason.as_deref().unwrap_or("")),
            },
            "status" => self.status(names)?,
            "book" | "book_update" => self.book(names)?,
            "welcome" => ServerMessage::Welcome {
                node: self.node.unwrap_or_default().into_owned(),
                session: self.session.unwrap_or_default().into_owned(),
                heartbeat_ms: self.heartbeat_ms,
                encoding: self.encoding.unwrap_or_default().into_owned(),
                limits: self.limits,
            },
            "subscribed" => ServerMessage::Subscribed {
                id: self.id,
                channel: owned(self.channel),
                interval: owned(self.interval),
                symbols: self.symbols.unwrap_or_default(),
                patterns: self.patterns,
                throttle_ms: self.throttle_ms,
            },
            "unsubscribed" => ServerMessage::Unsubscribed {
                id: self.id,
                channel: owned(self.channel),
                interval: owned(self.interval),
                symbols: self.symbols.unwrap_or_default(),
                patterns: self.patterns,
            },
            "subscriptions" => ServerMessage::Subscriptions {
                id: self.id,
                channel: owned(self.channel),
                interval: owned(self.interval),
                symbols: self.symbols.unwrap_or_default(),
                patterns: self.patterns,
            },
            "pong" => ServerMessage::Pong {
                id: self.id,
                ts: self.ts,
            },
            "reported" => ServerMessage::Reported { id: self.id },
            "reconnect" => ServerMessage::Reconnect {
                reason: self.reason.unwrap_or_default().into_owned(),
                in_ms: self.in_ms,
            },
            "candles" | "candle" => self.candles(names)?,
            "error" => ServerMessage::Error {
                id: self.id,
                code: self.code.unwrap_or_default().into_owned(),
                channel: owned(self.channel),
                message: self.message.unwrap_or_default().into_owned(),
                symbols: self.symbols.unwrap_or_default(),
            },
            _ => ServerMessage::Unknown,
        })
    }

    /// A `candles` or `candle`; one of an interval this client does not know reads as
    /// [`ServerMessage::Unknown`].
    fn candles(self, names: &mut Names) -> Result<ServerMessage, DecodeError> {
        let Some(Ok(interval)) = self.interval.as_deref().map(Interval::parse) else {
            return Ok(ServerMessage::Unknown);
        };
        let symbol = self.symbol(names)?;
        if self.kind == "candles" {
            return Ok(ServerMessage::Candles {
                symbol,
                interval,
                bars: self.bars.unwrap_or_default(),
            });
        }
        let bar = Bar {
            start: self.start,
            open: self.open,
            high: self.high,
            low: self.low,
            close: self.close,
            volume: self.volume,
            ticks: self.ticks,
        };
        Ok(ServerMessage::Candle {
            symbol,
            interval,
            candle: Candle {
                bar,
                closed: self.closed,
            },
        })
    }

    /// A `book` or `book_update`, its prices read as written: each a price on the
    /// grid of the decimals it is written with, the same for all.
    fn book(self, names: &mut Names) -> Result<ServerMessage, DecodeError> {
        let symbol = self.symbol(names)?;
        let bad = |why: String| DecodeError(format!("{} of {symbol}: {why}", self.kind));
        let update = self.kind == "book_update";
        if update != self.prev_seq.is_some() {
            return Err(bad(
                "prev_seq belongs to a book_update, and only to one".into()
            ));
        }
        let mut decimals = None;
        let mut side = |levels: &Option<Vec<(&RawValue, u64)>>, name: &str| {
            let Some(levels) = levels else {
                return Err(bad(format!("missing field {name}")));
            };
            levels
                .iter()
                .map(|(p, size)| {
                    let (ticks, d) = price_ticks(p.get())
                        .ok_or_else(|| bad(format!("{name}: bad price {}", p.get())))?;
                    if *decimals.get_or_insert(d) != d {
                        return Err(bad(format!(
                            "{name}: {} is not written with the decimals of the other prices",
                            p.get()
                        )));
                    }
                    Ok(Level::new(ticks, *size))
                })
                .collect::<Result<Vec<Level>, DecodeError>>()
        };
        let bids = side(&self.bids, "bids")?;
        let asks = side(&self.asks, "asks")?;
        let msg = BookMsg {
            epoch: names.intern(self.epoch.as_deref().unwrap_or("")),
            symbol,
            seq: self.seq,
            prev_seq: self.prev_seq,
            ts: self.ts,
            bids,
            asks,
            checksum: self.checksum,
        };
        Ok(ServerMessage::Book(BookMessage {
            msg,
            // A message with no level says nothing of the decimals.
            spec: decimals.map(Spec::new),
        }))
    }

    /// The message's symbol, which it must have.
    fn symbol(&self, names: &mut Names) -> Result<Symbol, DecodeError> {
        match self.symbol.as_deref() {
            Some(s) => Ok(names.intern(s)),
            None => Err(DecodeError(format!("a {} without \"symbol\"", self.kind))),
        }
    }

    /// The tick of a `tick` or `snapshot`.
    fn tick(&self, names: &mut Names) -> Result<Tick, DecodeError> {
        Ok(Tick {
            symbol: self.symbol(names)?,
            epoch: names.intern(self.epoch.as_deref().unwrap_or("")),
            seq: self.seq,
            ts: self.ts,
            bid: self.bid,
            ask: self.ask,
            bid_size: self.bid_size,
            ask_size: self.ask_size,
            last: self.last,
            last_size: self.last_size,
            volume: self.volume,
            src_ts: self.src_ts,
        })
    }

    /// A `status`; one in a state this client does not know says nothing it can act
    /// on, and reads as [`ServerMessage::Unknown`].
    fn status(&self, names: &mut Names) -> Result<ServerMessage, DecodeError> {
        let state = match self.state.as_deref() {
            Some("live") => SymbolState::Live,
            Some("stale") => {
                SymbolState::Stale(StaleReason::parse(self.reason.as_deref().unwrap_or("")))
            }
            _ => return Ok(ServerMessage::Unknown),
        };
        Ok(ServerMessage::Status {
            symbol: self.symbol(names)?,
            state,
        })
    }
}

struct Each<'f, F>(&'f mut F);

impl<'de, F> Visitor<'de> for Each<'_, F>
where
    F: FnMut(Raw<'de>),
{
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of messages")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(raw) = seq.next_element::<Raw<'de>>()? {
            (self.0)(raw);
            n += 1;
        }
        Ok(n)
    }
}

impl<'de, F> DeserializeSeed<'de> for Each<'_, F>
where
    F: FnMut(Raw<'de>),
{
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

/// Calls `each` with every message of one text frame (a JSON array of objects), in
/// order, without collecting them. Returns how many there were.
pub fn for_each_raw<'de>(
    frame: &'de [u8],
    mut each: impl FnMut(Raw<'de>),
) -> Result<usize, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(frame);
    let n = Each(&mut each)
        .deserialize(&mut de)
        .map_err(|e| DecodeError(e.to_string()))?;
    de.end().map_err(|e| DecodeError(e.to_string()))?;
    Ok(n)
}

/// The tick count and decimals of a price as written (`189.10` is 18910 ticks of 2
/// decimals): digits, with at most one point and at most 9 decimals.
fn price_ticks(text: &str) -> Option<(u64, u8)> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || text.ends_with('.') {
        return None;
    }
    let d = u8::try_from(frac.len())
        .ok()
        .filter(|d| *d <= crate::book::MAX_DECIMALS)?;
    let ticks = int
        .parse::<u64>()
        .ok()?
        .checked_mul(10u64.pow(u32::from(d)))?
        .checked_add(if frac.is_empty() {
            0
        } else {
            frac.parse().ok()?
        })?;
    Some((ticks, d))
}

/// Calls `each` with every record of one binary frame (`encoding=binary`, see
/// [`crate::protocol::binary`]) as a `tick`, `snapshot`, `book` or `book_update`
/// message, in order. A frame with a record that does not decode yields nothing.
pub fn for_each_record(
    frame: &[u8],
    names: &mut Names,
    mut each: impl FnMut(ServerMessage),
) -> Result<usize, DecodeError> {
    let records = binary::decode_any(frame).map_err(|e| DecodeError(e.to_string()))?;
    let n = records.len();
    for rec in records {
        each(match rec {
            binary::AnyRecord::Tick(rec) => {
                let tick = rec.to_tick(|s| names.intern(s));
                match rec.kind {
                    Kind::Tick => ServerMessage::Tick(TickMessage {
                        tick,
                        skipped: rec.skipped,
                    }),
                    Kind::Snapshot => ServerMessage::Snapshot(tick),
                }
            }
            binary::AnyRecord::Book(rec) => {
                let mut msg = rec.to_msg();
                msg.symbol = names.intern(rec.symbol);
                msg.epoch = names.intern(rec.epoch);
                ServerMessage::Book(BookMessage {
                    msg,
                    spec: Some(rec.spec),
                })
            }
        });
    }
    Ok(n)
}

/// Decodes one text frame into its messages (a convenience over [`for_each_raw`]).
pub fn decode_frame(
    frame: &[u8],
    names: &mut Names,
    out: &mut Vec<ServerMessage>,
) -> Result<(), DecodeError> {
    let mut err = None;
    for_each_raw(frame, |raw| match raw.into_message(names) {
        Ok(m) => out.push(m),
        Err(e) => err = Some(e),
    })?;
    err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAMES: &str = r#"[{"type":"welcome","node":"node-a","session":"c1f0","heartbeat_ms":30000,"encoding":"json","limits":{"max_symbols":1024,"max_msg_bytes":65536,"rate_per_s":50}}]
[{"type":"subscribed","id":7,"symbols":["AAPL","MSFT"]}]
[{"type":"snapshot","symbol":"AAPL","epoch":"k3v9q1","seq":1042,"ts":1764284400123456789,"bid":189.10,"ask":189.12,"bid_size":300,"ask_size":200,"last":189.11,"last_size":100,"volume":1234567}]
[{"type":"tick","symbol":"AAPL","seq":1043,"ts":1764284400124456789,"bid":189.10,"ask":189.13,"bid_size":300,"ask_size":100,"last":189.12,"last_size":25,"volume":1234592},{"type":"tick","symbol":"MSFT","seq":88,"ts":1764284400124461000,"bid":412.01,"ask":412.03,"bid_size":100,"ask_size":100,"last":412.02,"last_size":10,"volume":50211}]
[{"type":"gap","symbol":"AAPL","from":1044,"to":1050,"reason":"slow_consumer"}]
[{"type":"unsubscribed","id":8,"symbols":["AAPL"]}]
[{"type":"subscriptions","id":9,"symbols":["MSFT"]}]
[{"type":"pong","id":10,"ts":1764284400200000000}]
[{"type":"error","id":7,"code":"unknown_symbol","message":"not served \"here\": XXXX","symbols":["XXXX"]}]
[{"type":"status","symbol":"AAPL","state":"stale","reason":"feed"},{"type":"status","symbol":"AAPL","state":"live"}]
[{"type":"status","symbol":"MSFT","state":"stale","reason":"moon_phase"}]
[{"type":"from_the_future","x":1},{"type":"status","symbol":"AAPL","state":"paused"}]"#;

    #[test]
    fn decodes_every_documented_message() {
        let mut names = Names::default();
        let mut out = Vec::new();
        for line in FRAMES.lines() {
            decode_frame(line.as_bytes(), &mut names, &mut out).unwrap();
        }
        assert_eq!(out.len(), 15);
        assert!(
            matches!(&out[0], ServerMessage::Welcome { node, heartbeat_ms: 30000, .. } if node == "node-a")
        );
        let ServerMessage::Snapshot(s) = &out[2] else {
            panic!("{:?}", out[2])
        };
        assert_eq!(
            (&*s.symbol, &*s.epoch, s.seq, s.bid, s.volume),
            ("AAPL", "k3v9q1", 1042, 189.10, 1234567)
        );
        let ServerMessage::Tick(t) = &out[3] else {
            panic!()
        };
        assert_eq!((t.seq, t.ts, t.ask), (1043, 1764284400124456789, 189.13));
        assert!(
            Arc::ptr_eq(&t.symbol, &s.symbol),
            "symbols are interned, not allocated per tick"
        );
        assert!(matches!(&out[4], ServerMessage::Tick(t) if &*t.symbol == "MSFT"));
        assert_eq!(
            out[5],
            ServerMessage::Gap {
                symbol: "AAPL".into(),
                channel: None,
                from: 1044,
                to: 1050,
                reason: GapReason::SlowConsumer
            }
        );
        assert!(matches!(&out[8], ServerMessage::Pong { id: Some(10), .. }));
        assert!(
            matches!(&out[9], ServerMessage::Error { code, message, symbols, .. }
                if code == "unknown_symbol" && message == "not served \"here\": XXXX" && symbols == &["XXXX"])
        );
        assert_eq!(
            out[10],
            ServerMessage::Status {
                symbol: "AAPL".into(),
                state: SymbolState::Stale(StaleReason::Feed)
            }
        );
        assert_eq!(
            out[11],
            ServerMessage::Status {
                symbol: "AAPL".into(),
                state: SymbolState::Live
            }
        );
        assert!(matches!(&out[12], ServerMessage::Status {
                state: SymbolState::Stale(StaleReason::Other(r)), ..
            } if r == "moon_phase"));
        assert_eq!(out[13], ServerMessage::Unknown);
        assert_eq!(
            out[14],
            ServerMessage::Unknown,
            "a state not known is ignored"
        );
    }

    #[test]
    fn re_encodes_as_the_server_sent_it() {
        let mut names = Names::default();
        let mut out = Vec::new();
        for line in FRAMES.lines().take(11) {
            out.clear();
            decode_frame(line.as_bytes(), &mut names, &mut out).unwrap();
            let orig: serde_json::Value = serde_json::from_str(line).unwrap();
            for (i, m) in out.iter().enumerate() {
                let mut json = Vec::new();
                m.write_json(&mut json);
                let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
                assert_eq!(v, orig[i], "{line}");
            }
        }
    }

    /// The messages of protocol v1.1, as the node writes them.
    const V11: &str = r#"[{"type":"subscribed","id":8,"channel":"candles","interval":"1m","symbols":["BTC-USD","BTC-EUR"],"patterns":["BTC-*"],"throttle_ms":250}]
[{"type":"tick","symbol":"AAPL","epoch":"k3v9q1","seq":1049,"ts":1764284400124456789,"bid":189.1,"ask":189.13,"bid_size":300,"ask_size":100,"last":189.12,"last_size":25,"volume":1234592,"skipped":5}]
[{"type":"candles","symbol":"AAPL","interval":"1m","bars":[{"start":1764284400000000000,"open":189.12,"high":189.5,"low":188.75,"close":188.75,"volume":30,"ticks":3,"closed":true},{"start":1764284460000000000,"open":189.0,"high":189.0,"low":189.0,"close":189.0,"volume":0,"ticks":1,"closed":false}]}]
[{"type":"candle","symbol":"AAPL","interval":"1m","start":1764284460000000000,"open":189.12,"high":189.5,"low":188.75,"close":188.75,"volume":30,"ticks":3,"closed":false}]
[{"type":"gap","symbol":"AAPL","channel":"candles","from":3,"to":4,"reason":"upstream"}]
[{"type":"unsubscribed","id":9,"channel":"candles","symbols":["BTC-USD"],"patterns":["BTC-*"]}]
[{"type":"subscriptions","id":10,"channel":"candles","interval":"1s","symbols":[],"patterns":["ETH-*"]}]
[{"type":"error","id":11,"code":"bad_request","channel":"book","message":"channel book is not served yet"}]
[{"type":"reported","id":12},{"type":"reconnect","reason":"shutdown","in_ms":5000}]"#;

    #[test]
    fn decodes_and_re_encodes_the_messages_of_v1_1() {
        let mut names = Names::default();
        let mut out = Vec::new();
        for line in V11.lines() {
            let start = out.len();
            decode_frame(line.as_bytes(), &mut names, &mut out).unwrap();
            let orig: serde_json::Value = serde_json::from_str(line).unwrap();
            for (i, m) in out[start..].iter().enumerate() {
                assert_ne!(m, &ServerMessage::Unknown, "{line}");
                let mut json = Vec::new();
                m.write_json(&mut json);
                let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
                assert_eq!(v, orig[i], "{line}");
            }
        }
        let ServerMessage::Tick(t) = &out[1] else {
            panic!("{:?}", out[1])
        };
        assert_eq!((t.seq, t.skipped), (1049, Some(5)));
        let mut json = Vec::new();
        out[1].write_json(&mut json);
        assert!(
            json.ends_with(br#","skipped":5}"#),
            "skipped is the last field"
        );
        let ServerMessage::Candles { interval, bars, .. } = &out[2] else {
            panic!("{:?}", out[2])
        };
        assert_eq!(
            (*interval, bars.len(), bars[0].closed, bars[1].closed),
            (Interval::M1, 2, true, false)
        );
        assert_eq!((bars[0].bar.high, bars[0].bar.ticks), (189.5, 3));
        assert!(
            matches!(&out[3], ServerMessage::Candle { candle, .. } if !candle.closed && candle.bar.volume == 30)
        );
        assert_eq!(
            out[9],
            ServerMessage::Reconnect {
                reason: "shutdown".into(),
                in_ms: 5000
            }
        );
        // A candle of an interval this client does not know says nothing it can use.
        out.clear();
        decode_frame(
            br#"[{"type":"candle","symbol":"A","interval":"1d","start":0}]"#,
            &mut names,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [ServerMessage::Unknown]);
    }

    #[test]
    fn book_messages_keep_their_prices_as_written_and_re_encode_the_same() {
        let frame = r#"[{"type":"book","symbol":"AAPL","epoch":"k3v9q1","seq":1043,"ts":1764284400123456789,"bids":[[189.10,300],[189.09,100]],"asks":[[189.12,200],[189.13,500]],"checksum":2436380950},{"type":"book_update","symbol":"AAPL","epoch":"k3v9q1","seq":1044,"prev_seq":1043,"ts":1764284400124456789,"bids":[[189.10,0],[189.08,400]],"asks":[[189.13,100]],"checksum":3732196271}]"#;
        let mut names = Names::default();
        let mut out = Vec::new();
        decode_frame(frame.as_bytes(), &mut names, &mut out).unwrap();
        let ServerMessage::Book(b) = &out[0] else {
            panic!("{:?}", out[0])
        };
        assert_eq!(b.spec, Some(Spec::new(2)));
        assert_eq!(b.msg.bids, [Level::new(18910, 300), Level::new(18909, 100)]);
        let ServerMessage::Book(u) = &out[1] else {
            panic!("{:?}", out[1])
        };
        assert_eq!((u.msg.seq, u.msg.prev_seq), (1044, Some(1043)));
        assert_eq!(u.msg.checksum, Some(3_732_196_271));
        let objects: Vec<serde_json::Value> = serde_json::from_str(frame).unwrap();
        for (m, orig) in out.iter().zip(&objects) {
            let mut json = Vec::new();
            m.write_json(&mut json);
            assert_eq!(
                &serde_json::from_slice::<serde_json::Value>(&json).unwrap(),
                orig
            );
        }
        assert_eq!(price_ticks("0.07"), Some((7, 2)));
        assert_eq!(price_ticks("151.200"), Some((151_200, 3)));
        assert_eq!(price_ticks("42"), Some((42, 0)));
        for bad in ["1e3", "-1.00", "1.", ".5", "1.0000000001", "\"1.00\""] {
            assert_eq!(price_ticks(bad), None, "{bad}");
        }
        for bad in [
            r#"[{"type":"book","symbol":"A","epoch":"e","seq":1,"ts":1,"bids":[[1.0,1],[0.95,1]],"asks":[],"checksum":0}]"#,
            r#"[{"type":"book_update","symbol":"A","epoch":"e","seq":2,"ts":1,"bids":[],"asks":[],"checksum":0}]"#,
            r#"[{"type":"book","symbol":"A","epoch":"e","seq":1,"ts":1,"asks":[],"checksum":0}]"#,
        ] {
            assert!(
                decode_frame(bad.as_bytes(), &mut names, &mut out).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn prices_decode_to_the_exact_double_sent() {
        let mut names = Names::default();
        let mut out = Vec::new();
        for p in [100.03999999999999_f64, 1.4333333333333333, 0.1 + 0.2, 1e-7] {
            let mut t = crate::tick::Tick {
                symbol: "A".into(),
                epoch: "e".into(),
                seq: 1,
                ts: 1,
                bid: p,
                ask: p,
                bid_size: 0,
                ask_size: 0,
                last: p,
                last_size: 0,
                volume: 0,
                src_ts: None,
            };
            let mut frame = b"[".to_vec();
            t.write_json(crate::tick::Kind::Tick, &mut frame);
            frame.push(b']');
            out.clear();
            decode_frame(&frame, &mut names, &mut out).unwrap();
            let ServerMessage::Tick(got) = &out[0] else {
                panic!()
            };
            t.symbol = got.symbol.clone();
            assert_eq!((&got.tick, got.skipped), (&t, None), "{p:?}");
            assert_eq!(got.bid.to_bits(), p.to_bits());
        }
    }

    #[test]
    fn refuses_what_is_not_a_frame() {
        let mut names = Names::default();
        let mut out = Vec::new();
        for bad in [
            "",
            "{}",
            "[1]",
            "[{\"type\":\"tick\"}]",
            "[{\"type\":\"tick\",\"symbol\":\"A\",\"seq\":\"x\"}]",
            "[] x",
            "[{\"type\":\"status\",\"state\":\"live\"}]",
        ] {
            assert!(
                decode_frame(bad.as_bytes(), &mut names, &mut out).is_err(),
                "{bad:?}"
            );
        }
    }
}
