//! The WebSocket transport of the subscriber stream: one reader and one writer per
//! connection, both in the connection's one task, moving frames for a [`Session`].
//!
//! The reader turns frames into whole messages ([`frames`](super::frames)) and hands
//! them to the session; the writer writes what the session's [`Outbound`] says — every
//! queued message as one frame holding a JSON array (with `encoding=binary`: runs of
//! tick and snapshot records as one binary frame, runs of JSON messages as one text
//! frame, in queue order), a Ping for the heartbeat, the close — and answers the
//! client's Pings. Limits, deadlines and catching up are the session's. A panic in the
//! connection's code ends that connection alone, with 1011.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::OpCode;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;

use super::frames::{
    self, send, Fragments, FrameBudget, FrameReader, Message, ReadError, Reassembler, HEAD_ROOM,
};
use super::reply::{text, Body};
use super::request::query_param;
use super::socket::Reset;
use crate::auth::Claims;
use crate::config::Settings;
use crate::hub::Outbox;
use crate::node::Node;
use crate::protocol::{binary, CloseCode, Encoding};
use crate::session::{Flow, Inbound, Out, Outbound, Session, Transport, Watch};

/// Answers `GET /v1/ws` from a client the token check let in with `claims`: reads the
/// `encoding` it asks for (400 when unknown), then upgrades and serves the connection.
pub fn upgrade(
    node: Arc<Node>,
    req: &mut Request<Incoming>,
    claims: Option<Claims>,
) -> Response<Body> {
    let encoding = match query_param(req.uri().query(), "encoding") {
        None => Encoding::Json,
        Some(enc) => match enc.parse() {
            Ok(e) => e,
            Err(why) => return text(StatusCode::BAD_REQUEST, &format!("{why}\n")),
        },
    };
    // Boxed: the claims are held for the connection's life, in the few bytes of a
    // pointer.
    let claims = claims.map(Box::new);
    let reset = req.extensions().get::<Reset>().cloned().unwrap_or_default();
    super::upgrade::upgrade(node, req, move |node, io| {
        serve(node, io, claims, encoding, reset)
    })
}

/// Runs one WebSocket connection (`io`, past the upgrade), whose ticks and snapshots go
/// in `encoding`, to its end, then frees the session. A client taken for gone (silent
/// past its deadline, or not reading what is written) has its connection reset through
/// `reset`. A panic in the connection's code is contained here: it is counted, and the
/// connection alone closes with 1011.
pub async fn serve<S>(
    node: Arc<Node>,
    io: S,
    claims: Option<Box<Claims>>,
    encoding: Encoding,
    reset: Reset,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let metrics = crate::metrics::global();
    metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
    node.connections.fetch_add(1, Ordering::Relaxed);
    let (read, mut write) = tokio::io::split(io);
    let mut read = Reader {
        frames: FrameReader::new(node.settings.max_msg_bytes),
        io: read,
    };
    // Set while a frame is half written: no other frame may follow it then.
    let mid_frame = AtomicBool::new(false);
    let run = drive(&node, claims, encoding, &mut read, &mut write, &mid_frame);
    let wrote = match AssertUnwindSafe(run).catch_unwind().await {
        Ok(wrote) => wrote,
        Err(panic) => {
            Box::pin(contain(&node, panic, &mut read, &mut write, &mid_frame)).await;
            Wrote::Closed
        }
    };
    if wrote == Wrote::GaveUp {
        reset.ask();
    }
    metrics.ws_connections.fetch_sub(1, Ordering::Relaxed);
    node.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Serves the connection with a session of its own until it ends; says how the writer
/// ended. (The session is made here rather than passed in: an async function's
/// arguments take room in its future of their own.)
async fn drive<S>(
    node: &Arc<Node>,
    claims: Option<Box<Claims>>,
    encoding: Encoding,
    read: &mut Reader<S>,
    write: &mut WriteHalf<S>,
    mid_frame: &AtomicBool,
) -> Wrote
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The outbound side lives here and the writer borrows it: moved into the writer's
    // future, it would be held twice there (the argument and the moved-to local).
    let (mut session, mut outbound) =
        Session::with_encoding(node.clone(), claims, Transport::WebSocket, encoding);
    let timeout = node.settings.send_timeout;
    let pongs = Pongs::default();
    // The writer runs beside the reader in this task, not in a task of its own: an
    // idle connection then costs one task allocation, not two.
    let writer = write_loop(write, &mut outbound, &pongs, timeout, mid_frame);
    tokio::pin!(writer);
    let ended = tokio::select! {
        flow = read_loop(read, &mut session, &pongs, &node.settings) => Ok(flow),
        wrote = &mut writer => Err(wrote),
    };
    match ended {
        Ok(Flow::Continue) => {
            // The client went away: the writer stops at its next turn.
            pongs.close();
            // Boxed, as below: an open connection's task should not carry the room
            // its ending takes.
            Box::pin(async {
                let wrote = tokio::time::timeout(timeout, &mut writer).await;
                session.finish().await;
                wrote.unwrap_or(Wrote::GaveUp)
            })
            .await
        }
        Err(Wrote::GaveUp) => {
            session.finish().await;
            Wrote::GaveUp
        }
        // The server closes: a lingering close, so that the code reaches the client.
        ended => {
            let writing = ended.is_ok();
            let linger = node.settings.close_linger;
            Box::pin(close_lingering(
                writer, writing, read, session, timeout, linger,
            ))
            .await
        }
    }
}

/// After a panic in the connection's code (its session already dropped, and with it
/// its subscriptions): counts it, then closes with 1011 unless a frame was half
/// written, letting the client read the close before the connection goes.
async fn contain<S>(
    node: &Node,
    panic: Box<dyn std::any::Any + Send>,
    read: &mut Reader<S>,
    write: &mut WriteHalf<S>,
    mid_frame: &AtomicBool,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    crate::session::panicked(&*panic);
    if mid_frame.load(Ordering::Relaxed) {
        return;
    }
    let close = frames::close(CloseCode::Internal, "internal error");
    if send(write, node.settings.send_timeout, &close).await {
        let _ = tokio::time::timeout(node.settings.close_linger, frames::drain(&mut read.io)).await;
    }
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
/// Returns how the writer ended.
async fn close_lingering<S, W>(
    mut writer: Pin<&mut W>,
    writing: bool,
    read: &mut Reader<S>,
    session: Session,
    timeout: Duration,
    linger: Duration,
) -> Wrote
where
    S: AsyncRead + AsyncWrite + Unpin,
    W: Future<Output = Wrote>,
{
    let frames = std::mem::replace(&mut read.frames, FrameReader::new(0));
    let drain = frames::discard(frames, &mut read.io);
    tokio::pin!(drain);
    let mut wrote = Wrote::Closed;
    // A finished writer is not polled again.
    let drained = writing
        && tokio::select! {
            w = tokio::time::timeout(timeout, writer.as_mut()) => {
                wrote = w.unwrap_or(Wrote::GaveUp);
                false
            }
            _ = &mut drain => true,
        };
    if drained {
        wrote = tokio::time::timeout(timeout, writer.as_mut())
            .await
            .unwrap_or(Wrote::GaveUp);
    }
    session.finish().await;
    if !drained && wrote != Wrote::GaveUp {
        let _ = tokio::time::timeout(linger, drain).await;
    }
    wrote
}

/// Reads until the connection ends (`Flow::Continue`) or must close (`Flow::Close`,
/// already passed to the session's outbound side). Every frame is charged to the
/// connection's [`FrameBudget`]; a client past it is closed with 1008. The middle
/// fragments of a message that a read brought in whole are taken in one run
/// ([`FrameReader::take_fragments`]), with the same charges and checks.
async fn read_loop<S>(
    read: &mut Reader<S>,
    session: &mut Session,
    pongs: &Pongs,
    cfg: &Settings,
) -> Flow
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut whole = Reassembler::new(cfg.max_msg_bytes, Fragments::of(cfg));
    let mut budget = FrameBudget::subscriber(cfg);
    loop {
        if read.frames.arrived() {
            session.heard();
        }
        // The middle fragments already held, in one go; what stops the run is read next.
        if let Err((code, reason)) = read.frames.take_fragments(&mut whole, &mut budget) {
            return session.close(code, reason);
        }
        let msg = match read.frames.read(&mut read.io).await {
            Ok(frame) => {
                if budget.charge(frame.opcode).is_err() {
                    return session.close(CloseCode::Policy, "frame rate limit exceeded");
                }
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

/// How a writer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wrote {
    /// It wrote the close, or stopped after the reader: the connection closes as usual.
    Closed,
    /// The client is gone or does not read: a write failed, timed out or was given up,
    /// or the session closed for silence. The connection is reset.
    GaveUp,
}

/// Writes what the session's outbound side says, and Pongs, until the close. Each
/// frame counts against the node's output budget while written, and a write is given
/// up when the session is evicted or the client falls silent ([`Watch`]).
async fn write_loop<S>(
    write: &mut WriteHalf<S>,
    out: &mut Outbound,
    pongs: &Pongs,
    timeout: Duration,
    mid_frame: &AtomicBool,
) -> Wrote
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let watch = out.watch();
    let outbox = out.outbox().clone();
    let mut frame_buf: Vec<u8> = Vec::new();
    let mut w = Writer {
        io: write,
        timeout,
        watch: &watch,
        mid_frame,
    };
    loop {
        let next = tokio::select! {
            biased;
            p = pongs.next() => {
                let Some(p) = p else { return Wrote::Closed };
                if !w.send(&frames::control(OpCode::Pong, &p)).await {
                    return Wrote::GaveUp;
                }
                continue;
            }
            next = out.next() => next,
        };
        let sent = match next {
            Out::Messages(msgs) => w.messages(msgs, &mut frame_buf, &outbox).await,
            Out::Heartbeat => w.send(&frames::control(OpCode::Ping, &[])).await,
            Out::Close(code, reason) => {
                crate::metrics::global().disconnected(code.code());
                let close = frames::close(code, reason);
                if out.peer_gone() {
                    // Written if it fits at once; the connection is reset either way.
                    let _ = tokio::time::timeout(Duration::ZERO, w.io.write_all(&close)).await;
                    return Wrote::GaveUp;
                }
                return match w.send(&close).await {
                    true => Wrote::Closed,
                    false => Wrote::GaveUp,
                };
            }
        };
        if !sent {
            return Wrote::GaveUp;
        }
        if frame_buf.capacity() > KEEP_FRAME_BUF || !out.has_queued() {
            // The buffer is kept only while more is waiting: a connection that goes
            // back to idle holds none, and a large batch (a backfill, a burst) is not
            // held after it.
            frame_buf = Vec::new();
        }
    }
}

/// The writing half of a connection, with what bounds each write.
struct Writer<'a, S> {
    io: &'a mut WriteHalf<S>,
    timeout: Duration,
    watch: &'a Watch,
    mid_frame: &'a AtomicBool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Writer<'_, S> {
    /// Writes one whole frame; false when that failed, took longer than the timeout or
    /// was given up ([`Watch`]).
    async fn send(&mut self, frame: &[u8]) -> bool {
        self.mid_frame.store(true, Ordering::Relaxed);
        let give_up_at = tokio::time::Instant::now() + self.timeout;
        let mut written = 0;
        // One timer for the timeout and the watch's looks.
        let look = tokio::time::sleep_until(self.watch.next_look().min(give_up_at));
        tokio::pin!(look);
        while written < frame.len() {
            tokio::select! {
                n = self.io.write(&frame[written..]) => match n {
                    Ok(n) if n > 0 => written += n,
                    _ => return false,
                },
                _ = look.as_mut() => {
                    if self.watch.give_up() || tokio::time::Instant::now() >= give_up_at {
                        return false;
                    }
                    look.as_mut().reset(self.watch.next_look().min(give_up_at));
                }
            }
        }
        self.mid_frame.store(false, Ordering::Relaxed);
        true
    }

    /// Writes `msgs` as frames: binary records (only a binary session has them) and
    /// JSON messages in frames of their own, in queue order; a JSON session has one run.
    async fn messages(&mut self, msgs: &[Bytes], frame_buf: &mut Vec<u8>, outbox: &Outbox) -> bool {
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
                encode_records(run, frame_buf);
                OpCode::Binary
            } else {
                encode_batch(run, frame_buf);
                OpCode::Text
            };
            let len = frame_buf.len() - HEAD_ROOM;
            let _counted = outbox.writing(frame_buf.len());
            if !self.send(frames::seal(frame_buf, op)).await {
                return false;
            }
            crate::metrics::global().wrote(len, newest);
        }
        true
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
        let task = serve(node, io, None, Encoding::Json, Reset::default());
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "the connection future is {size} bytes");
    }
}
