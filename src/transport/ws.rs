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
use fastwebsockets::OpCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::Notify;

use super::frames::{self, send, FrameReader, Message, ReadError, Reassembler, HEAD_ROOM};
use crate::auth::Claims;
use crate::node::Node;
use crate::protocol::{binary, CloseCode, Encoding};
use crate::session::{Flow, Inbound, Out, Outbound, Session, Transport};

/// Runs one WebSocket connection (`io`, past the upgrade), whose ticks and snapshots go
/// in `encoding`, to its end, then frees the session.
pub async fn serve<S>(node: Arc<Node>, io: S, claims: Option<Box<Claims>>, encoding: Encoding)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut session, outbound) =
        Session::with_encoding(node.clone(), claims, Transport::WebSocket, encoding);
    let metrics = crate::metrics::global();
    metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
    node.connections.fetch_add(1, Ordering::Relaxed);
    let max = node.settings.max_msg_bytes;
    let timeout = node.settings.send_timeout;

    let (read, write) = tokio::io::split(io);
    let mut read = Reader {
        frames: FrameReader::new(max),
        io: read,
    };

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
            // Boxed, as below: an open connection's task should not carry the room
            // its ending takes.
            Box::pin(async {
                let _ = tokio::time::timeout(timeout, &mut writer).await;
                session.finish().await;
            })
            .await;
        }
        // The server closes: a lingering close, so that the code reaches the client.
        _ => {
            let writing = ended.is_some();
            let linger = node.settings.close_linger;
            Box::pin(close_lingering(
                writer, writing, read, session, timeout, linger,
            ))
            .await;
        }
    }
    metrics.ws_connections.fetch_sub(1, Ordering::Relaxed);
    node.connections.fetch_sub(1, Ordering::Relaxed);
}

/// The connection's reading side.
struct Reader<S> {
    frames: FrameReader,
    io: ReadHalf<S>,
}

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
    let drain = frames::discard(read.frames, read.io);
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
        let msg = match read.frames.read(&mut read.io).await {
            Ok(frame) => {
                session.heard();
                match whole.push(frame) {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err((code, reason)) => return session.close(code, reason),
                }
            }
            Err(ReadError::Refused((code, reason))) => return session.close(code, reason),
            Err(ReadError::Gone) => return Flow::Continue,
        };
        let inbound = match msg {
            Message::Close => return session.close(CloseCode::Normal, ""),
            Message::Ping(p) => {
                pongs.owe(p.to_vec()).await;
                continue;
            }
            Message::Pong => continue,
            Message::Text(mut text) => {
                // Boxed: a command is handled now and then, and an idle connection's
                // task should not carry the room its handling takes.
                let flow = Box::pin(session.receive(Inbound::Text(text.to_mut()))).await;
                if flow != Flow::Continue {
                    return flow;
                }
                continue;
            }
            Message::Binary(_) => Inbound::Binary,
        };
        let flow = Box::pin(session.receive(inbound)).await;
        if flow != Flow::Continue {
            return flow;
        }
    }
}

/// Writes what the session's outbound side says, and Pongs, until the close.
async fn write_loop<S>(mut write: WriteHalf<S>, mut out: Outbound, pongs: &Pongs, timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut frame_buf: Vec<u8> = Vec::new();
    loop {
        let next = tokio::select! {
            biased;
            p = pongs.next() => {
                let Some(p) = p else { return };
                if !send(&mut write, timeout, &frames::control(OpCode::Pong, &p)).await {
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
                    frame_buf.clear();
                    frame_buf.resize(HEAD_ROOM, 0);
                    let op = if records {
                        encode_records(run, &mut frame_buf);
                        OpCode::Binary
                    } else {
                        encode_batch(run, &mut frame_buf);
                        OpCode::Text
                    };
                    let len = frame_buf.len() - HEAD_ROOM;
                    sent = send(&mut write, timeout, frames::seal(&mut frame_buf, op)).await;
                    if !sent {
                        break;
                    }
                    crate::metrics::global().wrote(len, newest);
                }
                sent
            }
            Out::Heartbeat => send(&mut write, timeout, &frames::control(OpCode::Ping, &[])).await,
            Out::Close(code, reason) => {
                crate::metrics::global().disconnected(code.code());
                let _ = send(&mut write, timeout, &frames::close(code, reason)).await;
                return;
            }
        };
        if !sent {
            return;
        }
        if frame_buf.capacity() > KEEP_FRAME_BUF || !out.has_queued() {
            // The buffer is kept only while more is waiting: a connection that goes
            // back to idle holds none, and a large batch (a backfill, a burst) is not
            // held after it.
            frame_buf = Vec::new();
        }
    }
}

/// The most a busy connection's frame buffer keeps between batches.
const KEEP_FRAME_BUF: usize = 4096;

/// Appends `msgs` as one JSON array to `out`.
fn encode_batch(msgs: &[Bytes], out: &mut Vec<u8>) {
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

/// Appends `records` back to back to `out`: the payload of one binary frame.
fn encode_records(records: &[Bytes], out: &mut Vec<u8>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection's task is most of what an idle connection costs: what it holds
    /// across its waits stays within a budget (see bench/RESULTS.md, `connections`).
    #[tokio::test]
    async fn a_connection_task_stays_within_its_memory_budget() {
        let hub = Arc::new(crate::hub::Hub::new(["AAPL".into()], 16));
        let bus = Arc::new(crate::bus::LocalBus::new(hub.clone()));
        let node = Node::new(crate::config::Settings::default(), hub, bus, None);
        let (io, _peer) = tokio::io::duplex(64);
        let task = serve(node, io, None, Encoding::Json);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "the connection future is {size} bytes");
    }
}
