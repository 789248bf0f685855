//! Ingest of ticks that external feeds push into a node through the publisher endpoint
//! (`GET /v1/publish`): every tick is checked on its own before it reaches the bus, and
//! each frame is answered with what became of its ticks.
//!
//! A frame holds one tick object or a JSON array of them (the protocol's `tick` object;
//! `type` may be left out). A bad tick (missing or mistyped field, bad price, bid above
//! ask, seq not rising, unknown or malformed symbol) is refused with an `error` naming
//! it (its index in the frame, symbol and seq) and counted, never forwarded; the rest of
//! the frame goes on. The answer ends with `{"type":"published","accepted":N,"refused":M}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::auth::Claims;
use crate::bus::Bus;
use crate::hub::Hub;
use crate::tick::{new_epoch, valid_symbol, Symbol, Tick};

/// Counters of the publisher endpoint's ingest.
#[derive(Debug, Default)]
pub struct PublishStats {
    /// Publisher connections open now.
    pub connections: AtomicU64,
    /// Frames received.
    pub frames: AtomicU64,
    /// Ticks accepted and published on the bus.
    pub accepted: AtomicU64,
    /// Ticks refused (bad field, bid > ask, seq not rising, unknown or bad symbol).
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

/// Where a refused tick was and why.
struct Refused {
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
        }
    }

    /// Refuses ticks of the symbols `claims` do not allow (a publisher token limited to
    /// some symbols).
    pub fn limited_to(mut self, claims: Option<Claims>) -> Checker<'a> {
        self.claims = claims;
        self
    }

    /// Checks and publishes the ticks of one message; returns the reply messages.
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
        // must rise above it) and is put back for any the bus then refuses.
        let mut errors: Vec<(usize, Reply<'static>)> = Vec::new();
        let mut good: Vec<Tick> = Vec::new();
        let mut placed: Vec<(usize, Option<Position>)> = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            match self.check(index, item) {
                Ok(tick) => {
                    let before = self
                        .last
                        .insert(tick.symbol.clone(), (tick.epoch.clone(), tick.seq));
                    placed.push((index, before));
                    good.push(tick);
                }
                Err(r) => errors.push((index, tick_error(r))),
            }
        }
        let mut refused = errors.len() as u64;
        let names: Vec<(Symbol, u64)> = good.iter().map(|t| (t.symbol.clone(), t.seq)).collect();
        let accepted = match self.bus.publish_batch(good) {
            Ok(()) => names.len(),
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
                        index,
                        symbol: Some(symbol.to_string()),
                        seq: Some(*seq),
                        code: "unavailable",
                        why: why.clone(),
                    };
                    errors.push((index, tick_error(r)));
                    refused += 1;
                }
                e.published
            }
        } as u64;
        errors.sort_by_key(|(index, _)| *index);
        let mut out: Vec<Reply<'static>> = errors.into_iter().map(|(_, r)| r).collect();
        stats.accepted.fetch_add(accepted, Ordering::Relaxed);
        stats.refused.fetch_add(refused, Ordering::Relaxed);
        out.push(ack(accepted, refused));
        out
    }

    fn check(&self, index: usize, item: Value) -> Result<Tick, Refused> {
        let mut r = Refused {
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
        let fail = |mut r: Refused, code: &'static str, why: String| {
            r.code = code;
            r.why = why;
            Err(r)
        };
        match obj.remove("type") {
            None => {}
            Some(Value::String(t)) if t == "tick" => {}
            Some(other) => {
                return fail(
                    r,
                    "bad_tick",
                    format!("type must be \"tick\", found {other}"),
                )
            }
        }
        let symbol = match obj.get("symbol") {
            None => return fail(r, "bad_tick", "missing field symbol".into()),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return fail(
                    r,
                    "bad_tick",
                    format!("symbol must be a string, found {other}"),
                )
            }
        };
        if !valid_symbol(&symbol) {
            return fail(r, "bad_symbol", format!("malformed symbol {symbol:?}"));
        }
        let Some(symbol) = self.hub.symbol(&symbol) else {
            return fail(r, "unknown_symbol", format!("{symbol} is not served here"));
        };
        if self.claims.as_ref().is_some_and(|c| !c.allows(&symbol)) {
            return fail(
                r,
                "forbidden",
                format!("the token does not allow publishing {symbol}"),
            );
        }
        let epoch: Arc<str> = match obj.get("epoch") {
            None => self.epoch.clone(),
            Some(Value::String(e)) if !e.is_empty() && e.len() <= 64 => e.as_str().into(),
            Some(other) => {
                return fail(
                    r,
                    "bad_tick",
                    format!("epoch must be a string of 1 to 64 characters, found {other}"),
                )
            }
        };
        let int = |name: &str| -> Result<u64, String> {
            match obj.get(name) {
                None => Err(format!("missing field {name}")),
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| format!("{name} must be a non-negative integer, found {v}")),
            }
        };
        let price = |name: &str| -> Result<f64, String> {
            match obj.get(name) {
                None => Err(format!("missing field {name}")),
                Some(v) => match v.as_f64() {
                    Some(p) if v.is_number() && p.is_finite() && p > 0.0 => Ok(p),
                    _ => Err(format!("{name} must be a positive number, found {v}")),
                },
            }
        };
        let fields = (|| {
            Ok::<_, String>(Tick {
                symbol: symbol.clone(),
                epoch: epoch.clone(),
                seq: int("seq")?,
                ts: int("ts")?,
                bid: price("bid")?,
                ask: price("ask")?,
                bid_size: int("bid_size")?,
                ask_size: int("ask_size")?,
                last: price("last")?,
                last_size: int("last_size")?,
                volume: int("volume")?,
                src_ts: match obj.get("src_ts") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(int("src_ts")?),
                },
            })
        })();
        let tick = match fields {
            Ok(t) => t,
            Err(why) => return fail(r, "bad_tick", why),
        };
        if tick.seq == 0 {
            return fail(r, "bad_tick", "seq must start at 1".into());
        }
        if tick.bid > tick.ask {
            return fail(
                r,
                "bad_tick",
                format!("bid {} is above ask {}", tick.bid, tick.ask),
            );
        }
        let mut held = self
            .hub
            .latest(&symbol)
            .filter(|e| e.tick.epoch == epoch)
            .map_or(0, |e| e.tick.seq);
        if let Some((e, s)) = self.last.get(&symbol) {
            if *e == epoch {
                held = held.max(*s);
            }
        }
        if tick.seq <= held {
            return fail(
                r,
                "bad_tick",
                format!(
                    "seq {} is not above {held}, the last accepted for epoch {epoch}",
                    tick.seq
                ),
            );
        }
        Ok(tick)
    }
}

fn describe(r: &Refused) -> String {
    let what = match (&r.symbol, r.seq) {
        (Some(s), Some(q)) => format!("tick {} of the frame ({s} seq {q})", r.index),
        (Some(s), None) => format!("tick {} of the frame ({s})", r.index),
        _ => format!("tick {} of the frame", r.index),
    };
    format!("{what}: {}", r.why)
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
