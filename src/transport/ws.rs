//! The WebSocket transport of the subscriber stream: one reader and one writer per
//! connection, state machines polled together in the connection's one task, moving
//! frames for a [`Session`].
//!
//! The reader turns frames into whole messages ([`frames`](super::frames)) and hands
//! them to the session; the writer writes what the session's [`Outbound`] says — every
//! queued message as one frame holding a JSON array (with `encoding=binary`: runs of
//! tick and snapshot records as one binary frame, runs of JSON messages as one text
//! frame, in queue order), a Ping for the heartbeat, the close — and answers the
//! client's Pings. Limits, deadlines and catching up are the session's. A panic in the
//! connection's code ends that connection alone, with 1011.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::OpCode;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::frames::{
    self, send, Fragments, FrameBudget, FrameReader, Message, ReadError, Reassembler, HEAD_ROOM,
};
use super::reply::{text, Body};
use super::request::query_param;
use super::socket::Reset;
use crate::auth::Claims;
use crate::node::Node;
use crate::protocol::{binary, CloseCode, Encoding};
use crate::session::{Flow, Inbound, Out, Outbound, Session, Transport};

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
///
/// (This and the functions it calls return `async` blocks rather than being `async fn`s:
/// an `async fn` keeps its arguments twice in its future, as given and as moved in,
/// and every byte of this future is held by every open connection.)
#[allow(clippy::manual_async_fn)] // see the last paragraph above
pub fn serve<S>(
    node: Arc<Node>,
    mut io: S,
    claims: Option<Box<Claims>>,
    encoding: Encoding,
    reset: Reset,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        crate::metrics::global()
            .ws_connections
            .fetch_add(1, Ordering::Relaxed);
        node.connections.fetch_add(1, Ordering::Relaxed);
        // Set while a frame is half written: no other frame may follow it then.
        let mid_frame = AtomicBool::new(false);
        let run = drive(&node, claims, encoding, &mut io, &mid_frame);
        let wrote = match AssertUnwindSafe(run).catch_unwind().await {
            Ok(wrote) => wrote,
            Err(panic) => {
                Box::pin(contain(&node, panic, &mut io, &mid_frame)).await;
                Wrote::Closed
            }
        };
        if wrote == Wrote::GaveUp {
            reset.ask();
        }
        crate::metrics::global()
            .ws_connections
            .fetch_sub(1, Ordering::Relaxed);
        node.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves the connection with a session of its own until it ends; says how the writer
/// ended. The reader and the writer are one state machine each, polled together in
/// the connection's one task: an idle connection holds what they need between two
/// events and nothing more (no second task, no split of the stream, no future per
/// wait).
// Not an `async fn`: see `serve`.
#[allow(clippy::manual_async_fn)]
fn drive<'a, S>(
    node: &'a Arc<Node>,
    claims: Option<Box<Claims>>,
    encoding: Encoding,
    io: &'a mut S,
    mid_frame: &'a AtomicBool,
) -> impl Future<Output = Wrote> + use<'a, S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let (mut session, mut out) =
            Session::with_encoding(node.clone(), claims, Transport::WebSocket, encoding);
        let mut w = Writer::new(mid_frame);
        let mut frames = FrameReader::new(node.settings.max_msg_bytes);
        let ended = read_loop(io, &mut frames, &mut session, &mut out, &mut w, node).await;
        let timeout = node.settings.send_timeout;
        match ended {
            Ok(Flow::Continue) => {
                // The client went away: the writer stops at its next turn.
                w.reader_done = true;
                // Boxed, as below: an open connection's task should not carry the room
                // its ending takes.
                Box::pin(async {
                    let writing = poll_fn(|cx| w.poll(cx, io, &mut out));
                    let wrote = tokio::time::timeout(timeout, writing).await;
                    session.finish().await;
                    wrote.unwrap_or(Wrote::GaveUp)
                })
                .await
            }
            Err(Wrote::GaveUp) => {
                Box::pin(session.finish()).await;
                Wrote::GaveUp
            }
            // The server closes: a lingering close, so that the code reaches the client.
            ended => {
                let writing = ended.is_ok();
                let linger = node.settings.close_linger;
                let side = Side {
                    w: &mut w,
                    out: &mut out,
                    io,
                };
                Box::pin(close_lingering(
                    side, writing, frames, session, timeout, linger,
                ))
                .await
            }
        }
    }
}

/// After a panic in the connection's code (its session already dropped, and with it
/// its subscriptions): counts it, then closes with 1011 unless a frame was half
/// written, letting the client read the close before the connection goes.
async fn contain<S>(
    node: &Node,
    panic: Box<dyn std::any::Any + Send>,
    io: &mut S,
    mid_frame: &AtomicBool,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    crate::session::panicked(&*panic);
    if mid_frame.load(Ordering::Relaxed) {
        return;
    }
    let close = frames::close(CloseCode::Internal, "internal error");
    if send(io, node.settings.send_timeout, &close).await {
        let _ = tokio::time::timeout(node.settings.close_linger, frames::drain(io)).await;
    }
}

/// The writing side of a connection, borrowed together for its ending.
struct Side<'a, 'w, S> {
    w: &'a mut Writer<'w>,
    out: &'a mut Outbound,
    io: &'a mut S,
}

/// Most Pongs owed at once: a reader with more waits for the writer.
const MAX_OWED_PONGS: usize = 16;

/// Lets the writer send its Close (within `timeout`; `writing`: the writer has not
/// finished yet) while whatever the client sends is read and dropped, frees the
/// session, then waits up to `linger` for the client's Close or EOF: closing with
/// unread data would reset the connection, and the client would never see the code.
/// Returns how the writer ended.
async fn close_lingering<S>(
    side: Side<'_, '_, S>,
    writing: bool,
    mut frames: FrameReader,
    session: Session,
    timeout: Duration,
    linger: Duration,
) -> Wrote
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Side { w, out, io } = side;
    let mut wrote = Wrote::Closed;
    let mut drained = false;
    if writing {
        let ending = poll_fn(|cx| {
            if !drained && frames.poll_discard(cx, io).is_ready() {
                drained = true;
            }
            w.poll(cx, io, out)
        });
        wrote = tokio::time::timeout(timeout, ending)
            .await
            .unwrap_or(Wrote::GaveUp);
    }
    session.finish().await;
    if !drained && wrote != Wrote::GaveUp {
        let rest = poll_fn(|cx| frames.poll_discard(cx, io));
        let _ = tokio::time::timeout(linger, rest).await;
    }
    wrote
}

/// Reads until the connection ends (`Ok(Flow::Continue)`) or must close
/// (`Ok(Flow::Close)`, already passed to the session's outbound side), writing
/// meanwhile; `Err` when the writer ended first. Every frame is charged to the
/// connection's [`FrameBudget`]; a client past it is closed with 1008. The middle
/// fragments of a message that a read brought in whole are taken in one run
/// ([`FrameReader::take_fragments`]), with the same charges and checks. A command is
/// handled while the writer goes on (its replies may wait for room in the queue); the
/// next frame is read once it is done.
// Not an `async fn`: see `serve`.
#[allow(clippy::manual_async_fn)]
fn read_loop<'a, 'w, S>(
    io: &'a mut S,
    frames: &'a mut FrameReader,
    session: &'a mut Session,
    out: &'a mut Outbound,
    w: &'a mut Writer<'w>,
    node: &'a Node,
) -> impl Future<Output = Result<Flow, Wrote>> + use<'a, 'w, S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let cfg = &node.settings;
        let mut whole = Reassembler::new(cfg.max_msg_bytes, Fragments::of(cfg));
        let mut budget = FrameBudget::subscriber(cfg);
        loop {
            if frames.arrived() {
                session.heard();
            }
            // The middle fragments already held, in one go; what stops the run is read next.
            if let Err((code, reason)) = frames.take_fragments(&mut whole, &mut budget) {
                return Ok(session.close(code, reason));
            }
            // The writer first: a Pong it sends makes room for the reader's next.
            let got = poll_fn(|cx| {
                if let Poll::Ready(wrote) = w.poll(cx, io, out) {
                    return Poll::Ready(Err(wrote));
                }
                if w.pongs_owed() >= MAX_OWED_PONGS {
                    // The writer is blocked in a write, and wakes the task when it moves.
                    return Poll::Pending;
                }
                frames.poll_frame(cx, io).map(Ok)
            })
            .await?;
            let frame = match got.and_then(|()| frames.take_frame()) {
                Ok(frame) => frame,
                Err(ReadError::Refused((code, reason))) => return Ok(session.close(code, reason)),
                Err(ReadError::Gone) => return Ok(Flow::Continue),
            };
            if budget.charge(frame.opcode).is_err() {
                return Ok(session.close(CloseCode::Policy, "frame rate limit exceeded"));
            }
            let msg = match whole.push(frame) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err((code, reason)) => return Ok(session.close(code, reason)),
            };
            let flow = match msg {
                Message::Close => return Ok(session.close(CloseCode::Normal, "")),
                Message::Ping(p) => {
                    w.owe_pong(p.to_vec());
                    continue;
                }
                Message::Pong => continue,
                // Boxed, with the message moved in: a command is handled now and then,
                // and an idle connection's task should not carry the room its handling
                // takes.
                msg => {
                    let side = Side {
                        w: &mut *w,
                        out: &mut *out,
                        io: &mut *io,
                    };
                    Box::pin(receive(&mut *session, msg, side)).await?
                }
            };
            if flow != Flow::Continue {
                return Ok(flow);
            }
        }
    }
}

/// Hands one message (text or binary) to the session while the writer goes on; `Err`
/// when the writer ended first (the message's handling is dropped with the connection).
async fn receive<S>(
    session: &mut Session,
    msg: Message<'_>,
    side: Side<'_, '_, S>,
) -> Result<Flow, Wrote>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Side { w, out, io } = side;
    let mut msg = msg;
    let inbound = match &mut msg {
        Message::Text(text) => Inbound::Text(text.to_mut()),
        _ => Inbound::Binary,
    };
    let handling = session.receive(inbound);
    tokio::pin!(handling);
    poll_fn(|cx| {
        if let Poll::Ready(flow) = handling.as_mut().poll(cx) {
            return Poll::Ready(Ok(flow));
        }
        w.poll(cx, io, out).map(Err)
    })
    .await
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

/// What follows the frame being written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    /// More frames.
    More,
    /// Nothing: it is the close.
    End(Wrote),
}

/// The writing side of a connection, a state machine its task polls ([`Writer::poll`]):
/// it writes what the session's outbound side says — every queued message as one frame
/// holding a JSON array (with `encoding=binary`: runs of tick and snapshot records as
/// one binary frame, runs of JSON messages as one text frame, in queue order), a Ping
/// for the heartbeat, the close — and the Pongs the reader owes, until the close. Each
/// frame counts against the node's output budget while written, and a write is given
/// up when it takes longer than the send timeout, the session is evicted or the client
/// falls silent ([`Outbound::give_up`]).
struct Writer<'a> {
    mid_frame: &'a AtomicBool,
    /// The frame being written: `buf[at..]` is what is left of it.
    buf: Vec<u8>,
    at: usize,
    /// The payload's length and newest tick's `ts` (0: none), counted once the frame is
    /// written (a length of 0: not a frame of messages).
    payload: usize,
    newest: u64,
    /// Set while the frame in hand is blocked in its write (made the first time a
    /// write blocks, dropped once idle).
    blocked: Option<Pin<Box<Blocked>>>,
    /// The Pongs the reader owes the client, in order (boxed: an idle connection owes
    /// none).
    #[allow(clippy::box_collection)] // 8 bytes in every connection, where a VecDeque takes 32
    pongs: Option<Box<VecDeque<Vec<u8>>>>,
    /// Where the batch's next run starts, in the outbound side's messages (0: none).
    run: u32,
    then: Then,
    /// A frame is in hand (written or not yet).
    in_frame: bool,
    /// The frame in hand is counted against the node's budget (its whole buffer).
    counted: bool,
    /// `blocked` is set for the frame in hand.
    armed: bool,
    /// The reader stopped: once the owed Pongs are sent, the writer stops too.
    reader_done: bool,
}

pin_project_lite::pin_project! {
    /// A write blocked: when it is given up, and the timer of its looks.
    struct Blocked {
        give_up_at: tokio::time::Instant,
        #[pin]
        look: tokio::time::Sleep,
    }
}

impl<'a> Writer<'a> {
    fn new(mid_frame: &'a AtomicBool) -> Writer<'a> {
        Writer {
            mid_frame,
            buf: Vec::new(),
            at: 0,
            run: 0,
            payload: 0,
            newest: 0,
            blocked: None,
            pongs: None,
            then: Then::More,
            in_frame: false,
            counted: false,
            armed: false,
            reader_done: false,
        }
    }

    /// Writes until there is nothing to write (`Pending`, the task woken when there is)
    /// or the writer ends.
    fn poll<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        out: &mut Outbound,
    ) -> Poll<Wrote> {
        loop {
            if self.in_frame {
                while self.at < self.buf.len() {
                    match Pin::new(&mut *io).poll_write(cx, &self.buf[self.at..]) {
                        Poll::Ready(Ok(n)) if n > 0 => self.at += n,
                        Poll::Ready(_) => return Poll::Ready(Wrote::GaveUp),
                        Poll::Pending => return self.blocked(cx, out),
                    }
                }
                self.written(out);
                if let Then::End(wrote) = self.then {
                    return Poll::Ready(wrote);
                }
            }
            // A Pong owed goes first, then the rest of a batch, then what the session says.
            if let Some(p) = self.next_pong() {
                self.begin(frames::control(OpCode::Pong, &p), Then::More);
                continue;
            }
            if self.reader_done {
                return Poll::Ready(Wrote::Closed);
            }
            if self.run > 0 {
                let run = self.run as usize;
                if run < out.batch().len() {
                    self.run += self.messages(&out.batch()[run..], out);
                    continue;
                }
                self.run = 0;
            }
            let next = match out.poll_next(cx) {
                Poll::Ready(next) => next,
                Poll::Pending => {
                    // Idle: no frame buffer and no timer kept.
                    self.buf = Vec::new();
                    self.blocked = None;
                    return Poll::Pending;
                }
            };
            match out.out(next) {
                Out::Messages(msgs) => self.run = self.messages(msgs, out),
                Out::Heartbeat => self.begin(frames::control(OpCode::Ping, &[]), Then::More),
                Out::Close(code, reason) => {
                    crate::metrics::global().disconnected(code.code());
                    let close = frames::close(code, reason);
                    if out.peer_gone() {
                        // Written if it fits at once; the connection is reset either way.
                        let _ = Pin::new(&mut *io).poll_write(cx, &close);
                        return Poll::Ready(Wrote::GaveUp);
                    }
                    self.begin(close, Then::End(Wrote::Closed));
                }
            }
        }
    }

    /// A Pong is owed for a Ping of payload `p`.
    fn owe_pong(&mut self, p: Vec<u8>) {
        self.pongs.get_or_insert_with(Default::default).push_back(p);
    }

    /// How many Pongs are owed.
    fn pongs_owed(&self) -> usize {
        self.pongs.as_ref().map_or(0, |p| p.len())
    }

    /// The next Pong's payload, if one is owed.
    fn next_pong(&mut self) -> Option<Vec<u8>> {
        let pongs = self.pongs.as_mut()?;
        let p = pongs.pop_front();
        if pongs.is_empty() {
            self.pongs = None;
        }
        p
    }

    /// Takes `frame` in hand, followed by `then`.
    fn begin(&mut self, frame: Vec<u8>, then: Then) {
        self.buf = frame;
        self.start(0, then);
    }

    fn start(&mut self, at: usize, then: Then) {
        self.at = at;
        self.then = then;
        self.in_frame = true;
        self.armed = false;
        self.mid_frame.store(true, Ordering::Relaxed);
    }

    /// The frame in hand is all written.
    fn written(&mut self, out: &Outbound) {
        self.in_frame = false;
        self.mid_frame.store(false, Ordering::Relaxed);
        if std::mem::take(&mut self.counted) {
            out.outbox().write_ends(self.buf.len() as u64);
        }
        if self.payload > 0 {
            let newest = (self.newest != 0).then_some(self.newest);
            crate::metrics::global().wrote(std::mem::take(&mut self.payload), newest);
        }
        if self.buf.capacity() > KEEP_FRAME_BUF {
            // A large batch (a backfill, a burst) is not held after it.
            self.buf = Vec::new();
        }
    }

    /// A write blocked: `Pending` until it may go on, or given up ([`Outbound::give_up`], the
    /// send timeout, counted from the first time the frame's write blocked). One timer
    /// for the timeout and the watch's looks.
    fn blocked(&mut self, cx: &mut Context<'_>, out: &Outbound) -> Poll<Wrote> {
        if !self.armed {
            // The frame's first block: its deadline, and the timer (kept while busy).
            let give_up_at = tokio::time::Instant::now() + out.send_timeout();
            let at = out.next_look().min(give_up_at);
            match self.blocked.as_mut() {
                Some(blocked) => {
                    let b = blocked.as_mut().project();
                    *b.give_up_at = give_up_at;
                    b.look.reset(at);
                }
                None => {
                    self.blocked = Some(Box::pin(Blocked {
                        give_up_at,
                        look: tokio::time::sleep_until(at),
                    }))
                }
            }
            self.armed = true;
        }
        let blocked = self.blocked.as_mut().expect("armed above");
        loop {
            let b = blocked.as_mut().project();
            if b.look.poll(cx).is_pending() {
                return Poll::Pending;
            }
            let b = blocked.as_mut().project();
            if out.give_up() || tokio::time::Instant::now() >= *b.give_up_at {
                return Poll::Ready(Wrote::GaveUp);
            }
            let next = out.next_look().min(*b.give_up_at);
            b.look.reset(next);
        }
    }

    /// Takes the first run of `msgs` in hand as one frame: binary records (only a binary
    /// session has them) or JSON messages, in queue order (a JSON session has one run).
    /// Returns how many messages it holds.
    fn messages(&mut self, msgs: &[Bytes], out: &Outbound) -> u32 {
        let records = binary::is_record(&msgs[0]);
        let n = msgs
            .iter()
            .take_while(|m| binary::is_record(m) == records)
            .count();
        let run = &msgs[..n];
        self.newest = match (crate::metrics::enabled(), records) {
            (false, _) => None,
            (true, true) => newest_record_ts(run),
            (true, false) => crate::metrics::newest_tick_ts(run),
        }
        .unwrap_or(0);
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(HEAD_ROOM, 0);
        let op = if records {
            encode_records(run, &mut buf);
            OpCode::Binary
        } else {
            encode_batch(run, &mut buf);
            OpCode::Text
        };
        self.payload = buf.len() - HEAD_ROOM;
        let at = buf.len() - frames::seal(&mut buf, op).len();
        out.outbox().write_begins(buf.len() as u64);
        self.counted = true;
        self.buf = buf;
        self.start(at, Then::More);
        n as u32
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
        // 720 over a pipe today; with the task's header and trailer, the upgrade's state
        // and the tracker's handle, the task is one 896-byte allocation over TCP.
        assert!(size <= 768, "the connection future is {size} bytes");
    }
}
