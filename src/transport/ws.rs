//! The WebSocket transport: one reader and one writer per connection.
//!
//! The reader turns frames into session commands and enforces the inbound limits. The
//! writer drains the session's queue and sends everything queued as one frame holding a
//! JSON array, pings on the heartbeat, closes silent connections, catches up
//! subscriptions that fell behind, and closes with the code the situation calls for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{
    Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use crate::auth::Claims;
use crate::hub::Hub;
use crate::node::Node;
use crate::session::outbox::Outbox;
use crate::session::{close, Flow, Session};

/// Most messages taken from the queue for one frame.
pub const MAX_BATCH: usize = 512;

enum Ctrl {
    Pong(Vec<u8>),
    Close(u16, &'static str),
}

/// Runs one WebSocket connection to its end, then frees the session.
pub async fn serve<S>(node: Arc<Node>, ws: WebSocket<S>, claims: Option<Claims>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let expires = claims
        .as_ref()
        .map(|c| tokio::time::Instant::now() + c.remaining());
    let (mut session, rx) = Session::new(node.clone(), claims);
    let outbox = session.outbox().clone();
    outbox.send(session.welcome("json")).await;

    let (mut read, write) = ws.split(tokio::io::split);
    read.set_auto_close(false);
    read.set_auto_pong(false);
    read.set_max_message_size(node.settings.max_msg_bytes.saturating_add(1));

    let clock = Clock::new();
    let (ctrl_tx, ctrl_rx) = mpsc::channel(16);
    let mut writer = tokio::spawn(write_loop(
        node.clone(),
        write,
        rx,
        ctrl_rx,
        outbox,
        clock.clone(),
        expires,
    ));

    let ended = tokio::select! {
        flow = read_loop(&node, &mut read, &mut session, &ctrl_tx, &clock) => Some(flow),
        _ = &mut writer => None,
    };
    if let Some(flow) = ended {
        if let Flow::Close(code, reason) = flow {
            let _ = ctrl_tx.send(Ctrl::Close(code, reason)).await;
        }
        drop(ctrl_tx);
        if tokio::time::timeout(node.settings.send_timeout, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
    session.finish().await;
}

/// When the peer was last heard from, in milliseconds since the connection opened.
#[derive(Clone)]
struct Clock {
    start: Instant,
    last_heard_ms: Arc<AtomicU64>,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
            last_heard_ms: Arc::new(AtomicU64::new(0)),
        }
    }
    fn heard(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_heard_ms.store(ms, Ordering::Relaxed);
    }
    fn last_heard(&self) -> tokio::time::Instant {
        let ms = self.last_heard_ms.load(Ordering::Relaxed);
        tokio::time::Instant::from_std(self.start + Duration::from_millis(ms))
    }
}

type Reader<S> = WebSocketRead<ReadHalf<S>>;

/// One whole inbound message, as the session sees it.
enum Inbound<'a> {
    /// A text message (its bytes are parsed in place, without a copy).
    Text(Payload<'a>),
    /// A text message whose payload is not UTF-8.
    BadUtf8,
    /// A binary message: commands are text only.
    Binary,
}

/// Reads until the connection ends or must close. Each whole message is rate-limited
/// once and handed to the session once, however many frames it came in.
async fn read_loop<S>(
    node: &Node,
    read: &mut Reader<S>,
    session: &mut Session,
    ctrl: &mpsc::Sender<Ctrl>,
    clock: &Clock,
) -> Flow
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max = node.settings.max_msg_bytes;
    let mut partial: Vec<u8> = Vec::new();
    let mut partial_op: Option<OpCode> = None;
    loop {
        let got = read
            .read_frame::<_, std::io::Error>(&mut |_| std::future::ready(Ok(())))
            .await;
        let msg = match got {
            Err(WebSocketError::FrameTooLarge) => {
                return Flow::Close(close::TOO_BIG, "message too big")
            }
            Err(WebSocketError::InvalidUTF8) => {
                clock.heard();
                Inbound::BadUtf8
            }
            Err(_) => return Flow::Continue,
            Ok(frame) => {
                clock.heard();
                let (op, fin) = (frame.opcode, frame.fin);
                match op {
                    OpCode::Close => return Flow::Close(close::NORMAL, ""),
                    OpCode::Ping => {
                        let _ = ctrl.send(Ctrl::Pong(frame.payload.to_vec())).await;
                        continue;
                    }
                    OpCode::Pong => continue,
                    OpCode::Binary if fin && partial_op.is_none() => Inbound::Binary,
                    OpCode::Text if fin && partial_op.is_none() => Inbound::Text(frame.payload),
                    OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                        let starts = op != OpCode::Continuation;
                        if starts == partial_op.is_some() {
                            return Flow::Close(1002, "unexpected continuation frame");
                        }
                        if starts {
                            partial_op = Some(op);
                            partial.clear();
                        }
                        if partial.len() + frame.payload.len() > max {
                            return Flow::Close(close::TOO_BIG, "message too big");
                        }
                        partial.extend_from_slice(&frame.payload);
                        if !fin {
                            continue;
                        }
                        let whole = std::mem::take(&mut partial);
                        match partial_op.take() {
                            Some(OpCode::Binary) => Inbound::Binary,
                            _ if std::str::from_utf8(&whole).is_err() => Inbound::BadUtf8,
                            _ => Inbound::Text(Payload::Owned(whole)),
                        }
                    }
                }
            }
        };
        if let Some(flow) = session.admit().await {
            if flow != Flow::Continue {
                return flow;
            }
            continue;
        }
        match msg {
            Inbound::Text(mut text) => session.handle_text(text.to_mut()).await,
            Inbound::BadUtf8 => session.refuse("text frame is not valid UTF-8").await,
            Inbound::Binary => {
                session
                    .refuse("binary frames are not accepted; send commands as JSON text")
                    .await
            }
        }
    }
}

async fn write_loop<S>(
    node: Arc<Node>,
    mut write: WebSocketWrite<WriteHalf<S>>,
    mut rx: mpsc::Receiver<Bytes>,
    mut ctrl: mpsc::Receiver<Ctrl>,
    outbox: Arc<Outbox>,
    clock: Clock,
    expires: Option<tokio::time::Instant>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = &node.settings;
    let silence = cfg.heartbeat + cfg.heartbeat_grace;
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + cfg.heartbeat, cfg.heartbeat);
    let mut batch: Vec<Bytes> = Vec::with_capacity(64);
    let mut frame_buf: Vec<u8> = Vec::with_capacity(4096);
    let timeout = cfg.send_timeout;
    loop {
        let deadline = clock.last_heard() + silence;
        tokio::select! {
            biased;
            _ = node.shutdown.cancelled() => {
                let _ = send(&mut write, timeout, Frame::close(close::GOING_AWAY, b"server shutting down")).await;
                return;
            }
            c = ctrl.recv() => match c {
                Some(Ctrl::Pong(p)) => {
                    if !send(&mut write, timeout, Frame::pong(Payload::Owned(p))).await {
                        return;
                    }
                    continue;
                }
                Some(Ctrl::Close(code, reason)) => {
                    // What the session queued before closing (errors, replies) goes first.
                    while let Ok(m) = rx.try_recv() {
                        batch.push(m);
                    }
                    if !batch.is_empty() {
                        encode_batch(&batch, &mut frame_buf);
                        if !send(&mut write, timeout, Frame::text(Payload::Borrowed(&frame_buf))).await {
                            return;
                        }
                    }
                    let _ = send(&mut write, timeout, Frame::close(code, reason.as_bytes())).await;
                    return;
                }
                None => return,
            },
            n = rx.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    return;
                }
            }
            _ = outbox.overflow_notified() => {}
            _ = sleep_until_some(expires) => {
                let _ = send(&mut write, timeout, Frame::close(close::POLICY, b"token expired")).await;
                return;
            }
            _ = ping.tick() => {
                if !send(&mut write, timeout, Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]))).await {
                    return;
                }
                continue;
            }
            _ = tokio::time::sleep_until(deadline) => {
                if clock.last_heard() + silence <= tokio::time::Instant::now() {
                    let _ = send(&mut write, timeout, Frame::close(close::NORMAL, b"heartbeat timeout")).await;
                    return;
                }
                continue;
            }
        }
        if outbox.overflowed() {
            let _ = send(
                &mut write,
                timeout,
                Frame::close(close::SLOW_CONSUMER, b"slow consumer"),
            )
            .await;
            return;
        }
        if outbox.has_lagging() && rx.is_empty() {
            for (slot, behind) in outbox.take_lagging() {
                Hub::catch_up(&slot, &behind, &mut batch);
            }
        }
        if batch.is_empty() {
            continue;
        }
        encode_batch(&batch, &mut frame_buf);
        batch.clear();
        if !send(
            &mut write,
            timeout,
            Frame::text(Payload::Borrowed(&frame_buf)),
        )
        .await
        {
            return;
        }
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes one frame; false when it failed or took longer than `timeout`.
async fn send<S: AsyncWrite + Unpin>(
    write: &mut WebSocketWrite<S>,
    timeout: Duration,
    frame: Frame<'_>,
) -> bool {
    matches!(
        tokio::time::timeout(timeout, write.write_frame(frame)).await,
        Ok(Ok(()))
    )
}

/// Writes `msgs` as one JSON array into `out`.
pub fn encode_batch(msgs: &[Bytes], out: &mut Vec<u8>) {
    out.clear();
    out.push(b'[');
    for (i, m) in msgs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m);
    }
    out.push(b']');
}
