//! The publisher endpoint, `GET /v1/publish`: an external feed process pushes ticks into
//! this node over a WebSocket, and the node publishes them on its bus like its own feed.
//!
//! On connect the node sends `{"type":"welcome","role":"publisher","idle_timeout_ms":…,
//! "limits":{"max_msg_bytes":…,"frames_per_s":…}}`. Inbound: one text frame holds one tick object or a JSON array of them (the `tick`
//! object of the protocol; `type` may be left out). Every tick is checked on its own: a
//! bad one is refused with an `error` naming it (its index in the frame, symbol and
//! seq) and counted, never forwarded, and the rest of the frame goes on. Each frame is
//! answered with one frame: the errors of its refused ticks, then
//! `{"type":"published","accepted":N,"refused":M}`. A frame that is not JSON at all is
//! answered with a `bad_request` error and a `published` of zero. The connection
//! survives every refusal.
//!
//! Limits: `--publish-max-msg-bytes` (a larger message closes with 1009) and
//! `--publish-rate-limit` frames per second; past the rate the node reads the
//! connection more slowly (back-pressure), it drops nothing. A connection silent for
//! heartbeat + grace is closed; publishers ping when idle. A publisher must read its
//! replies: one not written within `--send-timeout` drops the connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketError};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use super::http::Body;
use crate::node::Node;
use crate::session::{close, TokenBucket};
use crate::tick::{valid_symbol, Symbol, Tick};

/// Counters of the publisher endpoint.
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

/// Decides whether `req` may publish into `node`.
///
/// Every publisher connection passes here before the upgrade; an `Err` is sent as the
/// HTTP answer. With auth enabled the token must grant the `publish` role (401 without
/// a valid token, 403 without the role); without auth every request is allowed.
pub fn authorize_publisher(
    node: &Node,
    req: &Request<Incoming>,
) -> Result<(), Box<Response<Body>>> {
    super::http::authorize(node, req, crate::auth::ROLE_PUBLISH).map(|_| ())
}

/// Answers `GET /v1/publish`: authorizes, upgrades and serves the connection.
pub fn upgrade(node: Arc<Node>, req: &mut Request<Incoming>) -> Response<Body> {
    if let Err(resp) = authorize_publisher(&node, req) {
        return *resp;
    }
    super::http::upgrade(node, req, |node, ws| async move {
        node.publish.connections.fetch_add(1, Ordering::Relaxed);
        serve(&node, ws).await;
        node.publish.connections.fetch_sub(1, Ordering::Relaxed);
    })
}

/// Runs one publisher connection to its end.
pub async fn serve<S>(node: &Node, mut ws: WebSocket<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = &node.settings;
    let max = cfg.publish_max_msg_bytes;
    ws.set_max_message_size(max.saturating_add(1));
    // Pings are answered here, not inside read_frame, so that they count as activity.
    ws.set_auto_pong(false);
    ws.set_auto_close(true);
    let silence = cfg.heartbeat + cfg.heartbeat_grace;
    let mut bucket = TokenBucket::new(cfg.publish_rate_limit, cfg.publish_rate_limit);
    let mut checker = Checker::new(node);
    let welcome = Reply::Welcome {
        node: &cfg.node,
        role: "publisher",
        idle_timeout_ms: silence.as_millis() as u64,
        limits: PublishLimits {
            max_msg_bytes: max,
            frames_per_s: cfg.publish_rate_limit,
        },
    };
    if !reply(&mut ws, cfg.send_timeout, vec![welcome]).await {
        return;
    }
    let mut partial: Vec<u8> = Vec::new();
    let mut in_partial = false;
    let (code, reason): (u16, &[u8]) = loop {
        let frame = tokio::select! {
            _ = node.shutdown.cancelled() => break (close::GOING_AWAY, b"server shutting down"),
            r = tokio::time::timeout(silence, ws.read_frame()) => match r {
                Err(_) => break (close::NORMAL, b"heartbeat timeout"),
                Ok(Err(WebSocketError::FrameTooLarge)) => break (close::TOO_BIG, b"message too big"),
                Ok(Err(WebSocketError::InvalidUTF8)) => {
                    let msg = refusal("bad_request", "text frame is not valid UTF-8");
                    if !reply(&mut ws, cfg.send_timeout, vec![msg, ack(0, 0)]).await {
                        return;
                    }
                    continue;
                }
                Ok(Err(_)) => return,
                Ok(Ok(f)) => f,
            },
        };
        let single;
        let whole: &[u8] = match frame.opcode {
            OpCode::Close => return,
            OpCode::Ping => {
                let pong = Frame::pong(Payload::Owned(frame.payload.to_vec()));
                if ws.write_frame(pong).await.is_err() {
                    return;
                }
                continue;
            }
            OpCode::Pong => continue,
            OpCode::Binary => {
                let msg = refusal(
                    "bad_request",
                    "binary frames are not accepted; send ticks as JSON text",
                );
                if !reply(&mut ws, cfg.send_timeout, vec![msg, ack(0, 0)]).await {
                    return;
                }
                continue;
            }
            OpCode::Text if frame.fin && !in_partial => {
                single = frame.payload;
                &single
            }
            OpCode::Text | OpCode::Continuation => {
                let starts = frame.opcode == OpCode::Text;
                if starts == in_partial {
                    break (1002, b"unexpected continuation frame");
                }
                if starts {
                    partial.clear();
                    in_partial = true;
                }
                if partial.len() + frame.payload.len() > max {
                    break (close::TOO_BIG, b"message too big");
                }
                partial.extend_from_slice(&frame.payload);
                if !frame.fin {
                    continue;
                }
                in_partial = false;
                &partial
            }
        };
        // Past the frame rate, wait for a token: the publisher is slowed, nothing dropped.
        while !bucket.take(Instant::now()) {
            let wait = Duration::from_secs_f64(1.0 / f64::from(cfg.publish_rate_limit.max(1)));
            tokio::time::sleep(wait).await;
        }
        node.publish.frames.fetch_add(1, Ordering::Relaxed);
        let msgs = checker.frame(whole);
        if !reply(&mut ws, cfg.send_timeout, msgs).await {
            return;
        }
    };
    let _ = ws.write_frame(Frame::close(code, reason)).await;
}

/// Checks and publishes the messages `frames`, in order, as one publisher connection to
/// `node` would, and returns the reply to each (the JSON array the publisher receives).
/// The endpoint's parser without the socket, for fuzzing and property tests.
pub fn answer_frames<'f>(node: &Node, frames: impl IntoIterator<Item = &'f [u8]>) -> Vec<Vec<u8>> {
    let mut checker = Checker::new(node);
    frames
        .into_iter()
        .map(|f| serde_json::to_vec(&checker.frame(f)).unwrap_or_default())
        .collect()
}

/// Sends `msgs` as one frame; false when that failed or took longer than `timeout` (a
/// publisher that does not read its replies is dropped, not waited for).
async fn reply<S>(ws: &mut WebSocket<S>, timeout: Duration, msgs: Vec<Reply<'_>>) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let body = serde_json::to_vec(&msgs).unwrap_or_default();
    let write = ws.write_frame(Frame::text(Payload::Owned(body)));
    matches!(tokio::time::timeout(timeout, write).await, Ok(Ok(())))
}

/// Limits announced in the publisher `welcome`.
#[derive(Serialize)]
struct PublishLimits {
    max_msg_bytes: usize,
    frames_per_s: u32,
}

/// What the node sends a publisher (`type` first, as in every server message).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Reply<'a> {
    Welcome {
        node: &'a str,
        role: &'static str,
        idle_timeout_ms: u64,
        limits: PublishLimits,
    },
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
    Published {
        accepted: u64,
        refused: u64,
    },
}

fn ack(accepted: u64, refused: u64) -> Reply<'static> {
    Reply::Published { accepted, refused }
}

/// A refused frame as an `error` message.
fn refusal(code: &'static str, message: &str) -> Reply<'static> {
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

/// Checks the ticks of one publisher connection.
struct Checker<'a> {
    node: &'a Node,
    /// Used for ticks that carry no `epoch`: one per connection.
    epoch: Arc<str>,
    /// The last seq this connection had accepted per symbol, with its epoch.
    last: HashMap<Symbol, (Arc<str>, u64)>,
}

impl<'a> Checker<'a> {
    fn new(node: &'a Node) -> Checker<'a> {
        Checker {
            node,
            epoch: crate::feed::new_epoch(),
            last: HashMap::new(),
        }
    }

    /// Checks and publishes the ticks of one message; returns the reply messages.
    fn frame(&mut self, payload: &[u8]) -> Vec<Reply<'static>> {
        let stats = &self.node.publish;
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
        let mut out = Vec::new();
        let (mut accepted, mut refused) = (0u64, 0u64);
        for (index, item) in items.into_iter().enumerate() {
            match self.check(index, item) {
                Ok(tick) => {
                    let symbol = tick.symbol.clone();
                    let (epoch, seq) = (tick.epoch.clone(), tick.seq);
                    match self.node.bus.publish(tick) {
                        Ok(()) => {
                            self.last.insert(symbol, (epoch, seq));
                            accepted += 1;
                        }
                        Err(e) => {
                            refused += 1;
                            let r = Refused {
                                index,
                                symbol: Some(symbol.to_string()),
                                seq: Some(seq),
                                code: "unavailable",
                                why: e.to_string(),
                            };
                            out.push(tick_error(r));
                        }
                    }
                }
                Err(r) => {
                    refused += 1;
                    out.push(tick_error(r));
                }
            }
        }
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
        let Some(symbol) = self.node.hub.symbol(&symbol) else {
            return fail(r, "unknown_symbol", format!("{symbol} is not served here"));
        };
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
            .node
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
