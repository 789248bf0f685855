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
        /// The symbols now subscribed.
        symbols: Vec<String>,
    },
    /// Reply to `unsubscribe`.
    Unsubscribed {
        /// The command's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The symbols dropped.
        symbols: Vec<String>,
    },
    /// Reply to `list`.
    Subscriptions {
        /// The command's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Every symbol subscribed.
        symbols: Vec<String>,
    },
    /// The latest state of a symbol: replaces whatever the client held for it.
    Snapshot(Tick),
    /// One update.
    Tick(Tick),
    /// Ticks `from..=to` of `symbol` will not be delivered.
    Gap {
        /// The symbol.
        symbol: Symbol,
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
    /// A refused command or part of one.
    Error {
        /// The command's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The error code, e.g. `unknown_symbol`.
        code: String,
        /// What went wrong.
        message: String,
        /// The symbols concerned.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        symbols: Vec<String>,
    },
    /// A message type this client does not know (the protocol may add some); ignored.
    #[serde(skip)]
    Unknown,
}

impl ServerMessage {
    /// Appends this message as one JSON object (no newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            ServerMessage::Tick(t) => t.write_json(crate::tick::Kind::Tick, out),
            ServerMessage::Snapshot(t) => t.write_json(crate::tick::Kind::Snapshot, out),
            ServerMessage::Unknown => out.extend_from_slice(br#"{"type":"unknown"}"#),
            // Strings and integers always serialize.
            other => {
                let _ = serde_json::to_writer(out, other);
            }
        }
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
        let symbol = |names: &mut Names| match self.symbol.as_deref() {
            Some(s) => Ok(names.intern(s)),
            None => Err(DecodeError(format!("a {} without \"symbol\"", self.kind))),
        };
        Ok(match &*self.kind {
            "tick" | "snapshot" => {
                let symbol = symbol(names)?;
                let epoch = match &self.epoch {
                    Some(e) => names.intern(e),
                    None => names.intern(""),
                };
                let tick = Tick {
                    symbol,
                    epoch,
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
                };
                if self.kind == "tick" {
                    ServerMessage::Tick(tick)
                } else {
                    ServerMessage::Snapshot(tick)
                }
            }
            "gap" => ServerMessage::Gap {
                symbol: symbol(names)?,
                from: self.from,
                to: self.to,
                reason: gap_reason(self.reason.as_deref().unwrap_or("")),
            },
            "welcome" => ServerMessage::Welcome {
                node: self.node.unwrap_or_default().into_owned(),
                session: self.session.unwrap_or_default().into_owned(),
                heartbeat_ms: self.heartbeat_ms,
                encoding: self.encoding.unwrap_or_default().into_owned(),
                limits: self.limits,
            },
            "subscribed" => ServerMessage::Subscribed {
                id: self.id,
                symbols: self.symbols.unwrap_or_default(),
            },
            "unsubscribed" => ServerMessage::Unsubscribed {
                id: self.id,
                symbols: self.symbols.unwrap_or_default(),
            },
            "subscriptions" => ServerMessage::Subscriptions {
                id: self.id,
                symbols: self.symbols.unwrap_or_default(),
            },
            "pong" => ServerMessage::Pong {
                id: self.id,
                ts: self.ts,
            },
            "error" => ServerMessage::Error {
                id: self.id,
                code: self.code.unwrap_or_default().into_owned(),
                message: self.message.unwrap_or_default().into_owned(),
                symbols: self.symbols.unwrap_or_default(),
            },
            _ => ServerMessage::Unknown,
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

/// Calls `each` with every record of one binary frame (`encoding=binary`, see
/// [`crate::protocol::binary`]) as a `tick` or `snapshot` message, in order. Stops at
/// the first record that does not decode, after the good ones before it.
pub fn for_each_record(
    frame: &[u8],
    names: &mut Names,
    mut each: impl FnMut(ServerMessage),
) -> Result<usize, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError(binary::DecodeError::Empty.to_string()));
    }
    let mut n = 0;
    for rec in binary::records(frame) {
        let rec = rec.map_err(|e| DecodeError(e.to_string()))?;
        let tick = rec.to_tick(|s| names.intern(s));
        each(match rec.kind {
            Kind::Tick => ServerMessage::Tick(tick),
            Kind::Snapshot => ServerMessage::Snapshot(tick),
        });
        n += 1;
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
[{"type":"from_the_future","x":1}]"#;

    #[test]
    fn decodes_every_documented_message() {
        let mut names = Names::default();
        let mut out = Vec::new();
        for line in FRAMES.lines() {
            decode_frame(line.as_bytes(), &mut names, &mut out).unwrap();
        }
        assert_eq!(out.len(), 11);
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
        assert_eq!(out[10], ServerMessage::Unknown);
    }

    #[test]
    fn re_encodes_as_the_server_sent_it() {
        let mut names = Names::default();
        let mut out = Vec::new();
        for line in FRAMES.lines().take(9) {
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
            assert_eq!(got, &t, "{p:?}");
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
        ] {
            assert!(
                decode_frame(bad.as_bytes(), &mut names, &mut out).is_err(),
                "{bad:?}"
            );
        }
    }
}
