//! Server-Sent Events: `GET /v1/sse?symbols=AAPL,MSFT` streams the subscriber messages
//! one way, one event per message, through the same [`Session`] as a WebSocket (auth,
//! limits, heartbeats, slow-consumer policy and the close all come with it). The query
//! says what a `subscribe` would: symbols and patterns, `channel` and its options,
//! `throttle_ms`.
//!
//! Each event is `event: <type>` and `data: <the message JSON>`; ticks and snapshots
//! also carry an `id:` holding the latest position of every symbol this stream has
//! seen, so the browser's `Last-Event-ID` on reconnect resumes all of them (see
//! [`encode_id`]). Heartbeats are `: hb` comment lines; `retry:` is sent once first.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use tokio::sync::mpsc;

use super::reply::{text, RouteBody};
use super::request::query_param;
use super::socket::Reset;
use crate::auth::Claims;
use crate::node::Node;
use crate::protocol::channel::{check_throttle, ChannelFields};
use crate::protocol::{Channel, CloseCode, Command, ResumeFrom, Subscribe};
use crate::session::{Out, Session, Transport, Watch};
use crate::tick::pattern_matches;

/// The reconnection delay announced to the browser with `retry:`, in milliseconds.
pub const RETRY_MS: u64 = 2000;

/// Characters escaped in the symbol and epoch fields of an event id: the two
/// separators, the escape itself, and control characters (non-ASCII is always escaped).
const ID_FIELD: &AsciiSet = &CONTROLS.add(b' ').add(b',').add(b'%');

/// The latest position (epoch, seq) per symbol seen by one stream.
pub type Positions = BTreeMap<String, (String, u64)>;

/// Answers `GET /v1/sse`: checks the query and the resume position, then streams the
/// session's messages from a task the node tracks.
pub fn serve<B>(node: Arc<Node>, req: &Request<B>, claims: Option<Claims>) -> Response<RouteBody> {
    let (cmd, positions) = match subscription(&node, req) {
        Ok(found) => found,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, &format!("{why}\n")),
    };
    // One chunk in flight: a client that does not read holds the writer back, so its
    // session queue fills and the slow-consumer policy applies, as over WebSocket.
    let (tx, rx) = mpsc::channel(1);
    let reset = req.extensions().get::<Reset>().cloned().unwrap_or_default();
    node.tasks.spawn(stream(
        node.clone(),
        claims,
        Command::Subscribe(cmd),
        positions,
        tx,
        reset,
    ));
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "text/event-stream")
        .header(CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(SseBody { rx: Some(rx) }.boxed())
        .unwrap_or_default()
}

/// The `subscribe` a request stands for (`symbols`, `channel`, `interval`, `depth`,
/// `backfill`, `throttle_ms`), resuming every symbol (named, or matched by a pattern)
/// that its `Last-Event-ID` names; the reason of a `400` otherwise.
fn subscription<B>(node: &Node, req: &Request<B>) -> Result<(Subscribe, Positions), String> {
    let query = req.uri().query();
    let symbols: Vec<String> = query_param(query, "symbols")
        .map(|list| {
            list.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if symbols.is_empty() {
        return Err("symbols=A,B,... is required: the symbols (or patterns) to stream".into());
    }
    let number = |name: &str| -> Result<Option<u64>, String> {
        query_param(query, name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{name}={v:?} is not an unsigned integer"))
            })
            .transpose()
    };
    let (channel, interval) = (
        query_param(query, "channel"),
        query_param(query, "interval"),
    );
    let channel = Channel::from_fields(ChannelFields {
        channel: channel.as_deref(),
        interval: interval.as_deref(),
        backfill: number("backfill")?,
        depth: number("depth")?,
    })?;
    node.serves_channel(&channel)?;
    let throttle_ms = number("throttle_ms")?.map(check_throttle).transpose()?;
    let mut positions = last_positions(node, req)?;
    positions.retain(|s, _| symbols.iter().any(|e| pattern_matches(e, s)));
    let resume = positions
        .iter()
        .map(|(s, (epoch, seq))| {
            let from = ResumeFrom {
                epoch: (!epoch.is_empty()).then(|| epoch.clone()),
                seq: *seq,
            };
            (s.clone(), from)
        })
        .collect();
    let cmd = Subscribe {
        symbols,
        channel,
        resume,
        throttle_ms,
        ..Subscribe::default()
    };
    Ok((cmd, positions))
}

/// The positions of the request's `Last-Event-ID` (header or `last_event_id`).
fn last_positions<B>(node: &Node, req: &Request<B>) -> Result<Positions, String> {
    let last_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query_param(req.uri().query(), "last_event_id"));
    match last_id {
        None => Ok(Positions::new()),
        Some(id) => {
            decode_id(&id, node.settings.max_symbols).map_err(|e| format!("bad Last-Event-ID: {e}"))
        }
    }
}

fn refuse(status: StatusCode, msg: &str) -> Response<RouteBody> {
    text(status, msg).map(BodyExt::boxed)
}

/// Runs one stream: the session's messages become events until the close, the node's
/// shutdown, or the client going away; then the session is freed. A client that does not
/// take what is written has its connection reset through `reset`. A panic in the
/// stream's code is contained here: it is counted, and the stream alone ends with a
/// `close` event of code 1011.
async fn stream(
    node: Arc<Node>,
    claims: Option<Claims>,
    cmd: Command,
    positions: Positions,
    tx: mpsc::Sender<Bytes>,
    reset: Reset,
) {
    node.connections.fetch_add(1, Ordering::Relaxed);
    let metrics = crate::metrics::global();
    metrics.sse_connections.fetch_add(1, Ordering::Relaxed);
    let run = events(&node, claims, cmd, positions, &tx);
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(true) => reset.ask(),
        Ok(false) => {}
        Err(panic) => {
            crate::session::panicked(&*panic);
            let close = close_event(CloseCode::Internal.code(), "internal error");
            let _ = send(&tx, Bytes::from(close), node.settings.send_timeout).await;
        }
    }
    drop(tx);
    node.connections.fetch_sub(1, Ordering::Relaxed);
    metrics.sse_connections.fetch_sub(1, Ordering::Relaxed);
}

/// The `close` event.
fn close_event(code: u16, reason: &str) -> String {
    let data = serde_json::json!({"type": "close", "code": code, "reason": reason});
    format!("event: close\ndata: {data}\n\n")
}

/// Writes the session's messages as events until the stream ends; true when the client
/// was given up on (a chunk not taken in time, or the session evicted).
async fn events(
    node: &Arc<Node>,
    claims: Option<Claims>,
    cmd: Command,
    mut positions: Positions,
    tx: &mpsc::Sender<Bytes>,
) -> bool {
    let metrics = crate::metrics::global();
    let (mut session, mut out) = Session::new(node.clone(), claims.map(Box::new), Transport::Sse);
    session.command(cmd).await;
    let timeout = node.settings.send_timeout;
    let (watch, outbox) = (out.watch(), out.outbox().clone());
    // The chunk last handed over, counted until the next one is taken: it waits in the
    // channel meanwhile.
    let mut _handed = None;
    let mut buf = BytesMut::with_capacity(4096);
    buf.extend_from_slice(format!("retry: {RETRY_MS}\n\n").as_bytes());
    let gave_up = loop {
        let mut newest = None;
        let closing = tokio::select! {
            _ = tx.closed() => break false,
            next = out.next() => match next {
                Out::Messages(msgs) => {
                    newest = crate::metrics::newest_tick_ts(msgs);
                    for m in msgs {
                        write_event(m, &mut positions, &mut buf);
                    }
                    false
                }
                Out::Heartbeat => {
                    buf.extend_from_slice(b": hb\n\n");
                    false
                }
                Out::Close(code, reason) => {
                    metrics.disconnected(code.code());
                    buf.extend_from_slice(close_event(code.code(), reason).as_bytes());
                    true
                }
            },
        };
        let chunk = buf.split().freeze();
        let len = chunk.len();
        let counted = outbox.writing(len);
        let sent = hand_over(tx, chunk, timeout, &watch).await;
        if !sent {
            break true;
        }
        _handed = Some(counted);
        metrics.wrote(len, newest);
        if closing {
            break false;
        }
    };
    session.finish().await;
    gave_up
}

/// Hands one chunk to the response body, giving up after `timeout` or when `watch`
/// says so (the session was evicted); false when it was not taken.
async fn hand_over(
    tx: &mpsc::Sender<Bytes>,
    chunk: Bytes,
    timeout: Duration,
    watch: &Watch,
) -> bool {
    let give_up_at = tokio::time::Instant::now() + timeout;
    let send = tx.send(chunk);
    tokio::pin!(send);
    loop {
        let look = watch.next_look().min(give_up_at);
        tokio::select! {
            sent = send.as_mut() => return sent.is_ok(),
            _ = tokio::time::sleep_until(look) => {
                if watch.give_up() || tokio::time::Instant::now() >= give_up_at {
                    return false;
                }
            }
        }
    }
}

/// Hands one chunk to the response body; false when the client is gone or did not take
/// it within `timeout`.
async fn send(tx: &mpsc::Sender<Bytes>, chunk: Bytes, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tx.send(chunk)).await,
        Ok(Ok(()))
    )
}

#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    symbol: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
}

/// Appends one message as an event; a tick or snapshot (a book or book update on the
/// book channel) moves its symbol's position and carries the id.
pub fn write_event(msg: &[u8], positions: &mut Positions, out: &mut BytesMut) {
    let head: Option<Head<'_>> = serde_json::from_slice(msg).ok();
    if let Some(h) = &head {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(h.ty.as_bytes());
        out.extend_from_slice(b"\n");
        let position = matches!(&*h.ty, "tick" | "snapshot" | "book" | "book_update");
        if let (true, Some(sym), Some(seq)) = (position, h.symbol.as_deref(), h.seq) {
            let epoch = h.epoch.as_deref().unwrap_or("").to_owned();
            positions.insert(sym.to_owned(), (epoch, seq));
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(encode_id(positions).as_bytes());
            out.extend_from_slice(b"\n");
        }
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(msg);
    out.extend_from_slice(b"\n\n");
}

/// The event id for `positions`: `SYMBOL EPOCH SEQ` per symbol, separated by commas,
/// e.g. `AAPL e1 105,EUR/USD e1 88`. Symbols and epochs are percent-encoded where they
/// hold a space, a comma, `%`, a control or a non-ASCII character (symbols never do).
/// A tick without an epoch has an empty epoch field.
pub fn encode_id(positions: &Positions) -> String {
    let mut id = String::with_capacity(positions.len() * 24);
    for (i, (sym, (epoch, seq))) in positions.iter().enumerate() {
        if i > 0 {
            id.push(',');
        }
        id.extend(utf8_percent_encode(sym, ID_FIELD));
        id.push(' ');
        id.extend(utf8_percent_encode(epoch, ID_FIELD));
        id.push(' ');
        id.push_str(&seq.to_string());
    }
    id
}

/// Reads an id made by [`encode_id`], of at most `max` symbols.
pub fn decode_id(id: &str, max: usize) -> Result<Positions, String> {
    let mut out = Positions::new();
    for entry in id.split(',').filter(|e| !e.trim().is_empty()) {
        if out.len() >= max {
            return Err(format!("more than {max} symbols"));
        }
        let mut parts = entry.trim().split(' ');
        let (Some(sym), Some(epoch), Some(seq), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{entry:?} is not \"SYMBOL EPOCH SEQ\""));
        };
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(Cow::into_owned)
                .map_err(|_| format!("{s:?} is not percent-encoded UTF-8"))
        };
        let seq: u64 = seq
            .parse()
            .map_err(|_| format!("seq {seq:?} is not a number"))?;
        out.insert(decode(sym)?, (decode(epoch)?, seq));
    }
    Ok(out)
}

/// The body of an SSE response: the chunks the stream's task sends, until it ends.
#[derive(Default)]
pub struct SseBody {
    rx: Option<mpsc::Receiver<Bytes>>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.rx.as_mut() {
            None => Poll::Ready(None),
            Some(rx) => rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_every_symbol_and_odd_epochs() {
        let mut p = Positions::new();
        p.insert("AAPL".into(), ("e1".into(), 105));
        p.insert("EUR/USD".into(), ("a b,c%é".into(), 7));
        p.insert("X:Y".into(), (String::new(), 3));
        let id = encode_id(&p);
        assert_eq!(id, "AAPL e1 105,EUR/USD a%20b%2Cc%25%C3%A9 7,X:Y  3");
        assert_eq!(decode_id(&id, 3).unwrap(), p);
        assert!(decode_id(&id, 2).unwrap_err().contains("more than 2"));
        assert!(decode_id("AAPL e1", 8).is_err());
        assert!(decode_id("AAPL e1 x", 8).is_err());
        assert!(decode_id("AAPL e1 1 2", 8).is_err());
        assert!(decode_id("", 8).unwrap().is_empty());
    }

    #[test]
    fn events_carry_type_data_and_the_id_of_all_positions() {
        let mut p = Positions::new();
        let mut out = BytesMut::new();
        write_event(
            br#"{"type":"tick","symbol":"MSFT","epoch":"e1","seq":4,"ts":1}"#,
            &mut p,
            &mut out,
        );
        write_event(
            br#"{"type":"gap","symbol":"AAPL","from":1,"to":2}"#,
            &mut p,
            &mut out,
        );
        write_event(
            br#"{"type":"snapshot","symbol":"AAPL","epoch":"e2","seq":9}"#,
            &mut p,
            &mut out,
        );
        let text = String::from_utf8(out.to_vec()).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 3);
        assert!(events[0].starts_with("event: tick\nid: MSFT e1 4\ndata: {"));
        assert!(!events[1].contains("id:"));
        assert!(events[2].contains("\nid: AAPL e2 9,MSFT e1 4\n"));
    }
}
