//! The wire contract: client commands in, server messages out (see `docs/protocol.md`).
//!
//! Commands are parsed with simd-json from the frame's own buffer. Server messages are
//! JSON objects; the transport sends one or more of them per frame as a JSON array.
//! With `encoding=binary`, ticks and snapshots are [`binary`] records instead.

pub mod binary;
mod close;

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use simd_json::prelude::*;
use simd_json::BorrowedValue;

use crate::tick::{now_ns, valid_symbol};

pub use close::CloseCode;

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

/// A client's position in a symbol's sequence, from `resume`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeFrom {
    /// The epoch the client's `seq` belongs to, when it said.
    pub epoch: Option<String>,
    /// The last `seq` the client holds.
    pub seq: u64,
}

/// A parsed client command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `{"op":"subscribe",...}`
    Subscribe {
        /// Echoed in replies.
        id: Option<u64>,
        /// Symbols as given (validated later, per symbol).
        symbols: Vec<String>,
        /// Send a `snapshot` before the ticks (default true).
        snapshot: bool,
        /// Last `seq` held per symbol.
        resume: HashMap<String, ResumeFrom>,
    },
    /// `{"op":"unsubscribe",...}`
    Unsubscribe {
        /// Echoed in replies.
        id: Option<u64>,
        /// Symbols to drop.
        symbols: Vec<String>,
    },
    /// `{"op":"list"}`: the current subscriptions.
    List {
        /// Echoed in replies.
        id: Option<u64>,
    },
    /// `{"op":"ping"}`: answered with `pong`.
    Ping {
        /// Echoed in replies.
        id: Option<u64>,
    },
}

/// Why a command was refused; becomes an `error` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandError {
    /// The command's `id`, where it could be read.
    pub id: Option<u64>,
    /// The error code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl CommandError {
    fn bad(id: Option<u64>, message: impl Into<String>) -> Self {
        CommandError {
            id,
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

/// Parses one client text message. The buffer is used as scratch space by simd-json.
pub fn parse_command(buf: &mut [u8]) -> Result<Command, CommandError> {
    let value = simd_json::to_borrowed_value(buf)
        .map_err(|e| CommandError::bad(None, format!("not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| CommandError::bad(None, "a command must be a JSON object"))?;
    let id = match obj.get("id") {
        None | Some(BorrowedValue::Static(simd_json::StaticNode::Null)) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| CommandError::bad(None, "\"id\" must be an unsigned integer"))?,
        ),
    };
    let op = obj
        .get("op")
        .ok_or_else(|| CommandError::bad(id, "missing field \"op\""))?
        .as_str()
        .ok_or_else(|| CommandError::bad(id, "\"op\" must be a string"))?;
    match op {
        "subscribe" => {
            let symbols = symbol_list(obj.get("symbols"), id)?;
            let snapshot = match obj.get("snapshot") {
                None => true,
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| CommandError::bad(id, "\"snapshot\" must be true or false"))?,
            };
            let resume = match obj.get("resume") {
                None => HashMap::new(),
                Some(v) => resume_map(v, id)?,
            };
            Ok(Command::Subscribe {
                id,
                symbols,
                snapshot,
                resume,
            })
        }
        "unsubscribe" => Ok(Command::Unsubscribe {
            id,
            symbols: symbol_list(obj.get("symbols"), id)?,
        }),
        "list" => Ok(Command::List { id }),
        "ping" => Ok(Command::Ping { id }),
        other => Err(CommandError {
            id,
            code: ErrorCode::UnknownOp,
            message: format!("unknown op: {}", truncate(other, 64)),
        }),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn symbol_list(v: Option<&BorrowedValue>, id: Option<u64>) -> Result<Vec<String>, CommandError> {
    let arr = v
        .ok_or_else(|| CommandError::bad(id, "missing field \"symbols\""))?
        .as_array()
        .ok_or_else(|| CommandError::bad(id, "\"symbols\" must be an array of strings"))?;
    arr.iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| CommandError::bad(id, "\"symbols\" must be an array of strings"))
        })
        .collect()
}

fn resume_map(
    v: &BorrowedValue,
    id: Option<u64>,
) -> Result<HashMap<String, ResumeFrom>, CommandError> {
    let obj = v
        .as_object()
        .ok_or_else(|| CommandError::bad(id, "\"resume\" must be an object of symbol to seq"))?;
    let mut out = HashMap::with_capacity(obj.len());
    for (sym, pos) in obj.iter() {
        let from = if let Some(seq) = pos.as_u64() {
            ResumeFrom { epoch: None, seq }
        } else if let Some(o) = pos.as_object() {
            let seq = o.get("seq").and_then(|s| s.as_u64()).ok_or_else(|| {
                CommandError::bad(
                    id,
                    format!("resume of {sym}: \"seq\" must be an unsigned integer"),
                )
            })?;
            let epoch = match o.get("epoch") {
                None => None,
                Some(e) => Some(
                    e.as_str()
                        .ok_or_else(|| {
                            CommandError::bad(
                                id,
                                format!("resume of {sym}: \"epoch\" must be a string"),
                            )
                        })?
                        .to_owned(),
                ),
            };
            ResumeFrom { epoch, seq }
        } else {
            return Err(CommandError::bad(
                id,
                format!("resume of {sym}: expected a seq or {{\"epoch\":…,\"seq\":…}}"),
            ));
        };
        out.insert(sym.to_string(), from);
    }
    Ok(out)
}

/// Splits requested symbols into well-formed ones and malformed ones.
pub fn partition_symbols(symbols: Vec<String>) -> (Vec<String>, Vec<String>) {
    symbols.into_iter().partition(|s| valid_symbol(s))
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
    /// Reply to `subscribe`.
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        /// The command's id.
        id: Option<u64>,
        /// The symbols now subscribed by that command.
        symbols: &'a [&'a str],
    },
    /// Reply to `unsubscribe`.
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        /// The command's id.
        id: Option<u64>,
        /// The symbols dropped.
        symbols: &'a [&'a str],
    },
    /// Reply to `list`.
    Subscriptions {
        #[serde(skip_serializing_if = "Option::is_none")]
        /// The command's id.
        id: Option<u64>,
        /// Every symbol subscribed, sorted.
        symbols: &'a [&'a str],
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
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
        /// Why.
        reason: GapReason,
    },
    /// A refused command or part of one.
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        /// The command's id.
        id: Option<u64>,
        /// The error code.
        code: ErrorCode,
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

    /// A `pong` stamped now.
    pub fn pong(id: Option<u64>) -> bytes::Bytes {
        ServerMsg::Pong { id, ts: now_ns() }.to_json()
    }
}

/// An `error` message for a refused command.
pub fn error_json(err: &CommandError, symbols: &[&str]) -> bytes::Bytes {
    ServerMsg::Error {
        id: err.id,
        code: err.code,
        message: &err.message,
        symbols,
    }
    .to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command, CommandError> {
        let mut b = s.as_bytes().to_vec();
        parse_command(&mut b)
    }

    #[test]
    fn parses_every_op() {
        let c = parse(r#"{"op":"subscribe","id":7,"symbols":["AAPL","MSFT"],"snapshot":false,"resume":{"AAPL":1042,"MSFT":{"epoch":"e1","seq":5}}}"#).unwrap();
        let Command::Subscribe {
            id,
            symbols,
            snapshot,
            resume,
        } = c
        else {
            panic!()
        };
        assert_eq!(id, Some(7));
        assert_eq!(symbols, ["AAPL", "MSFT"]);
        assert!(!snapshot);
        assert_eq!(
            resume["AAPL"],
            ResumeFrom {
                epoch: None,
                seq: 1042
            }
        );
        assert_eq!(
            resume["MSFT"],
            ResumeFrom {
                epoch: Some("e1".into()),
                seq: 5
            }
        );
        assert_eq!(
            parse(r#"{"op":"unsubscribe","symbols":["A"]}"#).unwrap(),
            Command::Unsubscribe {
                id: None,
                symbols: vec!["A".into()]
            }
        );
        assert_eq!(
            parse(r#"{"op":"list","id":9}"#).unwrap(),
            Command::List { id: Some(9) }
        );
        assert_eq!(
            parse(r#"{"op":"ping","id":10,"extra":1}"#).unwrap(),
            Command::Ping { id: Some(10) }
        );
        let Command::Subscribe { snapshot, .. } =
            parse(r#"{"op":"subscribe","symbols":[]}"#).unwrap()
        else {
            panic!()
        };
        assert!(snapshot, "snapshot defaults to true");
    }

    #[test]
    fn refuses_bad_input_with_codes() {
        for (input, code, id) in [
            ("nope", ErrorCode::BadRequest, None),
            ("[1,2]", ErrorCode::BadRequest, None),
            (r#"{"id":3}"#, ErrorCode::BadRequest, Some(3)),
            (r#"{"op":5,"id":3}"#, ErrorCode::BadRequest, Some(3)),
            (r#"{"op":"ping","id":-1}"#, ErrorCode::BadRequest, None),
            (r#"{"op":"ping","id":"x"}"#, ErrorCode::BadRequest, None),
            (
                r#"{"op":"subscribe","id":4}"#,
                ErrorCode::BadRequest,
                Some(4),
            ),
            (
                r#"{"op":"subscribe","id":4,"symbols":"AAPL"}"#,
                ErrorCode::BadRequest,
                Some(4),
            ),
            (
                r#"{"op":"subscribe","id":4,"symbols":[1]}"#,
                ErrorCode::BadRequest,
                Some(4),
            ),
            (
                r#"{"op":"subscribe","id":4,"symbols":["A"],"snapshot":1}"#,
                ErrorCode::BadRequest,
                Some(4),
            ),
            (
                r#"{"op":"subscribe","id":4,"symbols":["A"],"resume":{"A":"x"}}"#,
                ErrorCode::BadRequest,
                Some(4),
            ),
            (
                r#"{"op":"subscribe","id":4,"symbols":["A"],"resume":[1]}"#,
                ErrorCode::BadRequest,
                Some(4),
            ),
            (r#"{"op":"fly","id":5}"#, ErrorCode::UnknownOp, Some(5)),
        ] {
            let e = parse(input).unwrap_err();
            assert_eq!((e.code, e.id), (code, id), "{input}: {e}");
        }
    }

    #[test]
    fn messages_encode_as_documented() {
        let j = ServerMsg::Subscribed {
            id: Some(7),
            symbols: &["AAPL"],
        }
        .to_json();
        assert_eq!(
            &j[..],
            br#"{"type":"subscribed","id":7,"symbols":["AAPL"]}"#
        );
        let j = ServerMsg::Gap {
            symbol: "AAPL",
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
            &error_json(&e, &["X"])[..],
            br#"{"type":"error","code":"unknown_symbol","message":"not served here: X","symbols":["X"]}"#
        );
    }
}
