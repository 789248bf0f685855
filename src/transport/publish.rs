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
//! answered with a `bad_request` error and a `published` of zero (as is a binary
//! frame); the connection survives every such refusal. Breaches of RFC 6455 (text that
//! is not UTF-8, bad framing, a bad Close) close it with the RFC's code.
//!
//! Limits: `--publish-max-msg-bytes` (a larger message closes with 1009) and
//! `--publish-rate-limit` frames per second; past the rate the node reads the
//! connection more slowly (back-pressure), it drops nothing. A connection silent for
//! heartbeat + grace is closed; publishers ping when idle. A publisher must read its
//! replies: one not written within `--send-timeout` drops the connection.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Sleep;

use super::frames::{
    self, send, Fragments, FrameBudget, FrameReader, Message, ReadError, Reassembler, Refusal,
    HEAD_ROOM,
};
use super::reply::Body;
use crate::auth::Claims;
use crate::feed::ingest::{ack, refusal, Checker, PublishLimits, Reply};
use crate::node::Node;
use crate::protocol::CloseCode;

/// Decides whether `req` may publish into `node`.
///
/// Every publisher connection passes here before the upgrade; an `Err` is sent as the
/// HTTP answer. With auth enabled the token must grant the `publish` role (401 without
/// a valid token, 403 without the role); without auth every request is allowed. The
/// claims returned limit the symbols the connection may publish.
pub fn authorize_publisher(
    node: &Node,
    req: &Request<Incoming>,
) -> Result<Option<Claims>, Box<Response<Body>>> {
    super::request::authorize(node, req, crate::auth::ROLE_PUBLISH)
}

/// Answers `GET /v1/publish`: authorizes, upgrades and serves the connection.
pub fn upgrade(node: Arc<Node>, req: &mut Request<Incoming>) -> Response<Body> {
    let claims = match authorize_publisher(&node, req) {
        Ok(claims) => claims,
        Err(resp) => return *resp,
    };
    super::upgrade::upgrade(node, req, |node, ws| async move {
        node.publish.connections.fetch_add(1, Ordering::Relaxed);
        serve(&node, ws, claims).await;
        node.publish.connections.fetch_sub(1, Ordering::Relaxed);
    })
}

/// Runs one publisher connection (`ws`, past the upgrade) to its end.
pub async fn serve<S>(node: &Node, mut ws: S, claims: Option<Claims>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = &node.settings;
    let max = cfg.publish_max_msg_bytes;
    let silence = cfg.heartbeat + cfg.heartbeat_grace;
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
    let mut frames = FrameReader::new(max);
    let mut whole = Reassembler::new(max, Fragments::of(cfg));
    let mut budget = FrameBudget::publisher(cfg);
    let mut answers = Answers {
        node,
        checker: Checker::new(&node.hub, &*node.bus, &node.publish).limited_to(claims),
    };
    let idle = tokio::time::sleep(silence);
    tokio::pin!(idle);
    let end = loop {
        // The middle fragments already held, in one go; what stops the run is read next.
        if let Err(refusal) = frames.take_fragments(&mut whole, &mut budget) {
            break End::Close(refusal);
        }
        let frame = match next_frame(&mut frames, &mut ws, node, idle.as_mut()).await {
            Ok(frame) => frame,
            Err(e) => break End::from(e),
        };
        // Past the frame rate, wait: the publisher is slowed, nothing dropped.
        budget.wait(frame.opcode).await;
        let msg = match whole.push(frame) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(refusal) => break End::Close(refusal),
        };
        if let Err(end) = answers.answer(&mut ws, msg).await {
            break end;
        }
    };
    let End::Close((code, reason)) = end else {
        return;
    };
    // A lingering close: the Close, then the end of our sending side, then what the
    // client still sends is read and dropped until its EOF (bounded), so that the code
    // reaches it rather than a reset.
    if !send(&mut ws, cfg.send_timeout, &frames::close(code, reason)).await {
        return;
    }
    let _ = tokio::time::timeout(cfg.close_linger, async {
        let _ = ws.shutdown().await;
        frames::drain(&mut ws).await;
    })
    .await;
}

/// How a publisher connection ends: with a Close to send, or gone already.
enum End {
    Close(Refusal),
    Gone,
}

impl From<ReadError> for End {
    fn from(e: ReadError) -> End {
        match e {
            ReadError::Refused(refusal) => End::Close(refusal),
            ReadError::Gone => End::Gone,
        }
    }
}

/// The next frame. The node's shutdown and the silence deadline (`idle`, armed once and
/// moved only when bytes arrive) are looked at when the reader must wait for bytes:
/// no timer and no clock read per frame.
async fn next_frame<'f, S>(
    frames: &'f mut FrameReader,
    ws: &mut S,
    node: &Node,
    mut idle: Pin<&mut Sleep>,
) -> Result<Frame<'f>, ReadError>
where
    S: AsyncRead + Unpin,
{
    if frames.arrived() {
        let silence = node.settings.heartbeat + node.settings.heartbeat_grace;
        idle.as_mut().reset(tokio::time::Instant::now() + silence);
    }
    if frames.holds_frame() {
        return frames.read(ws).await;
    }
    tokio::select! {
        biased;
        _ = node.shutdown.cancelled() => Err((CloseCode::GoingAway, "server shutting down").into()),
        _ = idle => Err((CloseCode::Normal, "heartbeat timeout").into()),
        r = frames.read(ws) => r,
    }
}

/// What answers a publisher's messages: the node it publishes into and the checker of
/// its ticks.
struct Answers<'a> {
    node: &'a Node,
    checker: Checker<'a>,
}

impl Answers<'_> {
    /// Answers one whole message: a Ping with a Pong, a binary message with a
    /// refusal, a text one by checking and publishing its ticks. `Err` when the
    /// connection ends.
    async fn answer<S>(&mut self, ws: &mut S, msg: Message<'_>) -> Result<(), End>
    where
        S: AsyncWrite + Unpin,
    {
        let cfg = &self.node.settings;
        let sent = match msg {
            Message::Close => return Err(End::Close((CloseCode::Normal, ""))),
            Message::Ping(p) => {
                let pong = frames::control(OpCode::Pong, &p);
                send(ws, cfg.send_timeout, &pong).await
            }
            Message::Pong => true,
            Message::Binary(_) => {
                let why = "binary frames are not accepted; send ticks as JSON text";
                let msgs = vec![refusal("bad_request", why), ack(0, 0)];
                reply(ws, cfg.send_timeout, msgs).await
            }
            Message::Text(text) => {
                self.node.publish.frames.fetch_add(1, Ordering::Relaxed);
                let msgs = self.checker.frame(&text);
                reply(ws, cfg.send_timeout, msgs).await
            }
        };
        if sent {
            Ok(())
        } else {
            Err(End::Gone)
        }
    }
}

/// Sends `msgs` as one frame; false when that failed or took longer than `timeout` (a
/// publisher that does not read its replies is dropped, not waited for).
async fn reply<S>(ws: &mut S, timeout: Duration, msgs: Vec<Reply<'_>>) -> bool
where
    S: AsyncWrite + Unpin,
{
    let mut frame = vec![0u8; HEAD_ROOM];
    if serde_json::to_writer(&mut frame, &msgs).is_err() {
        return false;
    }
    send(ws, timeout, frames::seal(&mut frame, OpCode::Text)).await
}
