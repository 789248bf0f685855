//! The wire contract: client commands in ([`command`]), server messages out (see
//! `docs/protocol.md`).
//!
//! Commands are parsed with simd-json from the frame's own buffer. Server messages are
//! JSON objects; the transport sends one or more of them per frame as a JSON array.
//! With `encoding=binary`, ticks and snapshots are [`binary`] records instead. A
//! subscription is a symbol on a [`channel`], paced or not.

pub mod binary;
pub mod channel;
mod close;
pub mod command;

use std::fmt;

use serde::Serialize;

use crate::tick::now_ns;

pub use channel::{Channel, ChannelName, Selection, Stream};
pub use close::CloseCode;
pub use command::{parse_command, sort_entries, Command, CommandError, ResumeFrom, Subscribe};

/// How a WebSocket session's ticks and snapshots are encoded (`encoding=` on `/v1/ws`).
/// Control messages are JSON either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// JSON objects in text frames (the default).
    #[default]
    Json,
    /// [`binary`] records in binary frames.
    Binary,
}

impl Encoding {
    /// The name used in `encoding=` and in `welcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Binary => "binary",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Encoding::Json),
            "binary" => Ok(Encoding::Binary),
            other => Err(format!(
                "unknown encoding {:?}: use json (the default) or binary",
                truncate(other, 64)
            )),
        }
    }
}

/// Error codes of the `error` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, a missing or wrongly typed field.
    BadRequest,
    /// An `op` this server does not know.
    UnknownOp,
    /// A well-formed symbol this node does not serve.
    UnknownSymbol,
    /// A symbol that does not match the symbol grammar.
    BadSymbol,
    /// The subscription would exceed the per-connection symbol limit.
    TooManySymbols,
    /// The inbound rate limit was exceeded; the command was dropped.
    RateLimited,
    /// The token does not allow the symbol.
    Forbidden,
}

/// `s` cut to at most `max` characters (for echoing client input in errors).
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Why a `gap` was announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// Conflated for this client, which was not reading fast enough.
    SlowConsumer,
    /// The bus lost messages.
    Upstream,
    /// Too old to replay.
    Expired,
    /// The feed restarted the numbering; a snapshot with the new epoch follows.
    Reset,
}

/// The limits announced in `welcome`.
#[derive(Clone, Debug, Serialize)]
pub struct Limits {
    /// Most symbols one connection may hold.
    pub max_symbols: usize,
    /// Largest inbound message, in bytes.
    pub max_msg_bytes: usize,
    /// Sustained inbound messages per second.
    pub rate_per_s: u32,
}

/// The body of the replies about subscriptions (`subscribed`, `unsubscribed`,
/// `subscriptions`). Only `symbols` is always there: a v1 command gets a v1 reply.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Listing<'a> {
    /// The command's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The channel, other than `ticks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'static str>,
    /// The candles' interval, where the command named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<&'static str>,
    /// The symbols.
    pub symbols: &'a [&'a str],
    /// The patterns, where there are any.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub patterns: &'a [&'a str],
    /// The pace, where the command gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle_ms: Option<u32>,
}

/// Server-to-client control messages (ticks and snapshots are encoded by [`crate::tick`]).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg<'a> {
    /// First message of every connection.
    Welcome {
        /// This node's name.
        node: &'a str,
        /// This connection's id.
        session: &'a str,
        /// Interval of server Pings.
        heartbeat_ms: u64,
        /// `json` or `binary`.
        encoding: &'a str,
        /// The limits in force.
        limits: &'a Limits,
    },
    /// Reply to `subscribe`: the symbols (and patterns) now subscribed by that command.
    Subscribed(Listing<'a>),
    /// Reply to `unsubscribe`: the symbols (and patterns) dropped.
    Unsubscribed(Listing<'a>),
    /// Reply to `list`: every symbol (and pattern) held on a channel, sorted.
    Subscriptions(Listing<'a>),
    /// Reply to `report`.
    Reported {
        #[serde(skip_serializing_if = "Option::is_none")]
        /// The command's id.
        id: Option<u64>,
    },
    /// Reply to `ping`.
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        /// The command's id.
        id: Option<u64>,
        /// Server time, nanoseconds since the Unix epoch.
        ts: u64,
    },
    /// Ticks `from..=to` of `symbol` will not be delivered.
    Gap {
        /// The symbol.
        symbol: &'a str,
        /// The channel, other than `ticks`.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
        /// Why.
        reason: GapReason,
    },
    /// Whether a symbol's last value is current: `stale` when the node knows its source
    /// stopped (feed, bus or channel lost), `live` when values flow again.
    Status {
        /// The symbol.
        symbol: &'a str,
        /// The channel, other than `ticks` (an addition: `book`).
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        /// `stale` or `live`.
        state: &'a str,
        /// Why it is stale: `feed`, `bus` or `channel`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    /// The server will close this connection in `in_ms` (shutdown, the connection's
    /// lifetime) and streams until then: open the next one now, resume there, then
    /// close this one.
    Reconnect {
        /// `shutdown` or `lifetime`.
        reason: &'a str,
        /// Milliseconds until the close.
        in_ms: u64,
    },
    /// A refused command or part of one.
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        /// The command's id.
        id: Option<u64>,
        /// The error code.
        code: ErrorCode,
        /// The channel of the command, other than `ticks`.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        /// What went wrong.
        message: &'a str,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        /// The symbols concerned, where the error is about symbols.
        symbols: &'a [&'a str],
    },
}

impl ServerMsg<'_> {
    /// This message as one JSON object.
    pub fn to_json(&self) -> bytes::Bytes {
        // Serializing strings and integers into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// A `status` message: `stale` with its reason, or `live` (`reason` `None`).
    pub fn status(symbol: &str, reason: Option<&str>) -> bytes::Bytes {
        ServerMsg::status_of(symbol, None, reason)
    }

    /// A `status` message of a symbol's `channel` (`None`: ticks).
    pub fn status_of(symbol: &str, channel: Option<&str>, reason: Option<&str>) -> bytes::Bytes {
        ServerMsg::Status {
            symbol,
            channel,
            state: if reason.is_some() { "stale" } else { "live" },
            reason,
        }
        .to_json()
    }

    /// A `pong` stamped now.
    pub fn pong(id: Option<u64>) -> bytes::Bytes {
        ServerMsg::Pong { id, ts: now_ns() }.to_json()
    }
}

/// An `error` message for a refused command on `channel`.
pub fn error_json(err: &CommandError, symbols: &[&str], channel: ChannelName) -> bytes::Bytes {
    ServerMsg::Error {
        id: err.id,
        code: err.code,
        channel: channel.in_reply(),
        message: &err.message,
        symbols,
    }
    .to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_encode_as_documented() {
        let j = ServerMsg::Subscribed(Listing {
            id: Some(7),
            symbols: &["AAPL"],
            ..Listing::default()
        })
        .to_json();
        assert_eq!(
            &j[..],
            br#"{"type":"subscribed","id":7,"symbols":["AAPL"]}"#
        );
        let j = ServerMsg::Subscribed(Listing {
            id: Some(8),
            channel: ChannelName::Candles.in_reply(),
            interval: Some("1m"),
            symbols: &["BTC-USD", "BTC-EUR"],
            patterns: &["BTC-*"],
            throttle_ms: Some(250),
        })
        .to_json();
        assert_eq!(
            &j[..],
            br#"{"type":"subscribed","id":8,"channel":"candles","interval":"1m","symbols":["BTC-USD","BTC-EUR"],"patterns":["BTC-*"],"throttle_ms":250}"#
        );
        let j = ServerMsg::Gap {
            symbol: "AAPL",
            channel: None,
            from: 3,
            to: 9,
            reason: GapReason::SlowConsumer,
        }
        .to_json();
        assert_eq!(
            &j[..],
            br#"{"type":"gap","symbol":"AAPL","from":3,"to":9,"reason":"slow_consumer"}"#
        );
        let e = CommandError {
            id: None,
            code: ErrorCode::UnknownSymbol,
            message: "not served here: X".into(),
        };
        assert_eq!(
            &error_json(&e, &["X"], ChannelName::Ticks)[..],
            br#"{"type":"error","code":"unknown_symbol","message":"not served here: X","symbols":["X"]}"#
        );
        assert_eq!(
            &ServerMsg::Reported { id: Some(4) }.to_json()[..],
            br#"{"type":"reported","id":4}"#
        );
        let r = ServerMsg::Reconnect {
            reason: "shutdown",
            in_ms: 2000,
        };
        assert_eq!(
            &r.to_json()[..],
            br#"{"type":"reconnect","reason":"shutdown","in_ms":2000}"#
        );
    }
}
