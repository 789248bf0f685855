//! The WebSocket transport of the subscriber stream: one reader and one writer per
//! connection, both in the connection's one task, moving frames for a [`Session`].
//!
//! The reader turns frames into whole messages ([`frames`](super::frames)) and hands
//! them to the session; the writer writes what the session's [`Outbound`] says — every
//! queued message as one frame holding a JSON array (with `encoding=binary`: runs of
//! tick and snapshot records as one binary frame, runs of JSON messages as one text
//! frame, in queue order), a Ping for the heartbeat, the close — and answers the
//! client's Pings. Limits, deadlines and catching up are the
//! session's.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketRead, WebSocketWrite};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::Notify;

use super::frames::{self, Message, Reassembler};
use crate::auth::Claims;
use crate::node::Node;
use crate::protocol::{binary, CloseCode, Encoding};
use crate::session::{Flow, Inbound, Out, Outbound, Session, Transport};

/// Runs one WebSocket connection, whose ticks and snapshots go in `encoding`, to its
/// end, then frees the session.
pub async fn serve<S>(node: Arc<Node>, ws: WebSocket<S>, claims: Option<Claims>, encoding: Encoding)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut session, outbound) =
        Session::with_encoding(node.clone(), claims, Transport::WebSocket, encoding);
    let metrics = crate::metrics::global();
    metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
    let max = node.settings.max_msg_bytes;
    let timeout = node.settings.send_timeout;

    let (mut read, write) = ws.split(tokio::io::split);
    read.set_auto_close(false);
    read.set_auto_pong(false);
    read.set_max_message_size(max.saturating_add(1));

    let pongs = Pongs::default();
    // The writer runs beside the reader in this task, not in a task of its own: an
    // idle connection then costs one task allocation, not two.
    let writer = write_loop(write, outbound, &pongs, timeout);
    tokio::pin!(writer);
    let ended = tokio::select! {
        flow = read_loop(&mut read, &mut session, &pongs, max) => Some(flow),
        _ = &mut writer => None,
    };
    match ended {
        Some(Flow::Continue) => {
            // The client went away: the writer stops at its next turn.
            pongs.close();
            let _ = tokio::time::timeout(timeout, &mut writer).await;
            session.finish().await;
        }
        // The server closes: a lingering close, so that the code reaches the client.
        _ => {
            let writing = ended.is_some();
            let linger = node.settings.close_linger;
            close_lingering(writer, writing, read, session, timeout, linger).await;
        }
    }
    metrics.ws_connections.fetch_sub(1, Ordering::Relaxed);
}

type Reader<S> = WebSocketRead<ReadHalf<S>>;

/// Most Pongs owed at once: a reader with more waits for the writer.
const MAX_OWED_PONGS: usize = 16;

/// The Pongs the reader owes the client, handed to the writer in order. Kept in the
/// connection's task (no channel to allocate): an idle connection owes none.
#[derive(Default)]
struct Pongs {
    owed: std::sync::Mutex<Owed>,
    /// Wakes the writer: a Pong is owed, or the reader stopped.
    ready: Notify,
    /// Wakes the reader: room for another Pong.
    room: Notify,
}

#[derive(Default)]
struct Owed {
    payloads: VecDeque<Vec<u8>>,
    /// The reader stopped: once the owed Pongs are sent, the writer stops too.
    closed: bool,
}

impl Pongs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Owed> {
        self.owed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Owes the Pong for a Ping of `payload`, waiting while the most are owed.
    async fn owe(&self, payload: Vec<u8>) {
        loop {
            {
                let mut owed = self.lock();
                if owed.payloads.len() < MAX_OWED_PONGS {
                    owed.payloads.push_back(payload);
                    break;
                }
            }
            self.room.notified().await;
        }
        self.ready.notify_one();
    }

    /// The reader stopped.
    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// The next owed Pong's payload; `None` once the reader stopped and none is owed.
    /// Cancel-safe.
    async fn next(&self) -> Option<Vec<u8>> {
        loop {
            {
                let mut owed = self.lock();
                if let Some(p) = owed.payloads.pop_front() {
                    drop(owed);
                    self.room.notify_one();
                    return Some(p);
                }
                if owed.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }
}

/// Lets the writer send its Close (within `timeout`; `writing`: the writer has not
/// finished yet) while whatever the client sends is read and dropped, frees the
/// session, then waits up to `linger` for the client's Close or EOF: closing with
/// unread data would reset the connection, and the client would never see the code.
async fn close_lingering<S, W>(
    mut writer: Pin<&mut W>,
    writing: bool,
    read: Reader<S>,
    session: Session,
    timeout: Duration,
    linger: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    W: Future<Output = ()>,
{
    let drain = frames::discard(read);
    tokio::pin!(drain);
    // A finished writer is not polled again.
    let drained = writing
        && tokio::select! {
            _ = tokio::time::timeout(timeout, writer.as_mut()) => false,
            _ = &mut drain => true,
        };
    if drained {
        let _ = tokio::time::timeout(timeout, writer.as_mut()).await;
    }
    session.finish().await;
    if !drained {
        let _ = tokio::time::timeout(linger, drain).await;
    }
}

/// Reads until the connection ends (`Flow::Continue`) or must close (`Flow::Close`,
/// already passed to the session's outbound side).
async fn read_loop<S>(
    read: &mut Reader<S>,
    session: &mut Session,
    pongs: &Pongs,
    max: usize,
) -> Flow
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut whole = Reassembler::new(max);
    loop {
        let got = read
            .read_frame::<_, std::io::Error>(&mut |_| std::future::ready(Ok(())))
            .await;
        let msg = match got {
            Ok(frame) => {
                session.heard();
                match whole.push(frame) {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err((code, reason)) => return session.close(code, reason),
                }
            }
            Err(e) => match frames::read_error(e) {
                Some((code, reason)) => return session.close(code, reason),
                None => return Flow::Continue,
            },
        };
        let inbound = match msg {
            Message::Close => return session.close(CloseCode::Normal, ""),
            Message::Ping(p) => {
                pongs.owe(p.to_vec()).await;
                continue;
            }
            Message::Pong => continue,
            Message::Text(mut text) => {
                let flow = session.receive(Inbound::Text(text.to_mut())).await;
                if flow != Flow::Continue {
                    return flow;
                }
                continue;
            }
            Message::Binary(_) => Inbound::Binary,
        };
        let flow = session.receive(inbound).await;
        if flow != Flow::Continue {
            return flow;
        }
    }
}

/// Writes what the session's outbound side says, and Pongs, until the close.
async fn write_loop<S>(
    mut write: WebSocketWrite<WriteHalf<S>>,
    mut out: Outbound,
    pongs: &Pongs,
    timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut frame_buf: Vec<u8> = Vec::new();
    loop {
        let next = tokio::select! {
            biased;
            p = pongs.next() => {
                let Some(p) = p else { return };
                if !send(&mut write, timeout, Frame::pong(Payload::Owned(p))).await {
                    return;
                }
                continue;
            }
            next = out.next() => next,
        };
        let sent = match next {
            Out::Messages(msgs) => {
                // Binary records (only a binary session has them) and JSON messages go
                // in frames of their own, in queue order; a JSON session has one run.
                let mut sent = true;
                for run in msgs.chunk_by(|a, b| binary::is_record(a) == binary::is_record(b)) {
                    let records = binary::is_record(&run[0]);
                    let newest = match (crate::metrics::enabled(), records) {
                        (false, _) => None,
                        (true, true) => newest_record_ts(run),
                        (true, false) => crate::metrics::newest_tick_ts(run),
                    };
                    let frame = if records {
                        encode_records(run, &mut frame_buf);
                        Frame::binary(Payload::Borrowed(&frame_buf))
                    } else {
                        encode_batch(run, &mut frame_buf);
                        Frame::text(Payload::Borrowed(&frame_buf))
                    };
                    let len = frame.payload.len();
                    sent = send(&mut write, timeout, frame).await;
                    if !sent {
                        break;
                    }
                    crate::metrics::global().wrote(len, newest);
                }
                sent
            }
            Out::Heartbeat => {
                let ping = Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]));
                send(&mut write, timeout, ping).await
            }
            Out::Close(code, reason) => {
                crate::metrics::global().disconnected(code.code());
                let close = Frame::close(code.code(), reason.as_bytes());
                let _ = send(&mut write, timeout, close).await;
                return;
            }
        };
        if !sent {
            return;
        }
        if frame_buf.capacity() > KEEP_FRAME_BUF {
            // One large batch (a backfill, a burst) would otherwise stay held by a
            // connection that goes back to idle.
            frame_buf = Vec::new();
        }
    }
}

/// The most a connection's frame buffer keeps between batches.
const KEEP_FRAME_BUF: usize = 4096;

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
    out.reserve(2 + msgs.len().saturating_sub(1) + msgs.iter().map(|m| m.len()).sum::<usize>());
    out.push(b'[');
    for (i, m) in msgs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m);
    }
    out.push(b']');
}

/// Writes `records` back to back into `out`: the payload of one binary frame.
pub fn encode_records(records: &[Bytes], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(records.iter().map(|r| r.len()).sum());
    for r in records {
        out.extend_from_slice(r);
    }
}

/// The `ts` of the newest `tick` record among `records`.
fn newest_record_ts(records: &[Bytes]) -> Option<u64> {
    records.iter().rev().find_map(|r| match binary::peek(r) {
        Some((crate::tick::Kind::Tick, _, ts)) => Some(ts),
        _ => None,
    })
}
