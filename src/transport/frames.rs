//! WebSocket frames on the server's side of a connection, for every endpoint
//! (subscribers and publishers), held to RFC 6455.
//!
//! - [`FrameReader`] reads the client's frames. It holds bytes only while a frame is
//!   incomplete: a read lands on the stack first, so an idle connection keeps no read
//!   buffer at all. Reserved bits, reserved opcodes, an unmasked frame, a frame over the
//!   endpoint's size limit and a control frame over 125 bytes are refused from the
//!   header, before the payload is read.
//! - [`Reassembler`] turns frames into whole messages: fragments reassembled up to the
//!   endpoint's size limit and its [`Fragments`] limits, text checked for UTF-8 as it
//!   arrives (each byte once, so a message in many small fragments costs no more than
//!   its bytes), control frames checked (at most 125 bytes, never fragmented, a Close's
//!   code and reason valid) and passed through.
//! - [`FrameBudget`] charges every frame a client sends to its connection's budget.
//! - [`FrameReader::take_fragments`] takes the middle fragments of a message that a read
//!   brought in whole, in one tight loop: a storm of tiny fragments costs the node a
//!   header's parsing and a few bytes' copy per frame, not a call and a [`Frame`] each.
//! - [`seal`] and [`control`] make the server's frames (unmasked, never fragmented), and
//!   [`send`] writes one within the send timeout.
//!
//! Every breach is a [`Refusal`] with the RFC's close code.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use governor::clock::Clock;
use governor::Quota;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::protocol::CloseCode;

/// One whole inbound message, or a control frame.
#[derive(Debug)]
pub enum Message<'a> {
    /// A text message (valid UTF-8), in one piece.
    Text(Payload<'a>),
    /// A binary message.
    Binary(Payload<'a>),
    /// A Ping with its payload (to be answered with a Pong).
    Ping(Payload<'a>),
    /// A Pong.
    Pong,
    /// The client's Close (its code and reason already checked).
    Close,
}

/// Why a connection must close, with the code to close it with.
pub type Refusal = (CloseCode, &'static str);

/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;

/// How a message may be split into frames (a whole message is one fragment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragments {
    /// Most frames one message may come in.
    pub most: usize,
    /// Most of those that may be empty (zero-length).
    pub empty: usize,
}

impl Fragments {
    /// The limits a node's settings give (`--max-fragments`, `--max-empty-fragments`).
    pub fn of(settings: &crate::config::Settings) -> Fragments {
        Fragments {
            most: settings.max_fragments,
            empty: settings.max_empty_fragments,
        }
    }
}

/// Reassembles fragmented messages, bounded by the endpoint's largest message and by
/// [`Fragments`]. The work is linear in the bytes received: each fragment is appended
/// once, and text is checked as UTF-8 over the new bytes only (plus the at most three
/// bytes of a character that an earlier fragment left incomplete).
#[derive(Debug)]
pub struct Reassembler {
    max: usize,
    fragments: Fragments,
    partial: Vec<u8>,
    op: Option<OpCode>,
    /// Text only: `partial[..checked]` is whole characters of valid UTF-8.
    checked: usize,
    /// Frames of the message being assembled, and how many of them were empty (`u32`s,
    /// as the limits are: a connection holds its reassembler all its life).
    frames: u32,
    empties: u32,
    /// Bytes handed to the UTF-8 check so far (what the check costs, for the tests).
    #[cfg(test)]
    utf8_work: usize,
}

impl Reassembler {
    /// Messages of at most `max` bytes, split in at most `fragments`.
    pub fn new(max: usize, fragments: Fragments) -> Reassembler {
        Reassembler {
            max,
            fragments,
            partial: Vec::new(),
            op: None,
            checked: 0,
            frames: 0,
            empties: 0,
            #[cfg(test)]
            utf8_work: 0,
        }
    }

    /// Whether a message is being assembled: its first fragment is in, its last is not.
    pub fn assembling(&self) -> bool {
        self.op.is_some()
    }

    /// Takes one frame (from a [`FrameReader`], which refuses unmasked ones); a whole
    /// message once its last fragment is in, `None` while one is being assembled, or the
    /// refusal that must close the connection.
    pub fn push<'a>(&mut self, frame: Frame<'a>) -> Result<Option<Message<'a>>, Refusal> {
        let (op, fin) = (frame.opcode, frame.fin);
        match op {
            OpCode::Close | OpCode::Ping | OpCode::Pong => return control_message(frame).map(Some),
            OpCode::Text | OpCode::Binary if fin && self.op.is_none() => {
                if frame.payload.len() > self.max {
                    return Err(too_big());
                }
                if op == OpCode::Text && simdutf8::basic::from_utf8(&frame.payload).is_err() {
                    return Err(bad_utf8());
                }
                return Ok(Some(match op {
                    OpCode::Binary => Message::Binary(frame.payload),
                    _ => Message::Text(frame.payload),
                }));
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {}
        }
        self.fragment(op, frame.payload.len())?;
        if self.partial.len() + frame.payload.len() > self.max {
            return Err(too_big());
        }
        self.partial.extend_from_slice(&frame.payload);
        if self.op == Some(OpCode::Text) {
            self.check_text(fin)?;
        }
        if !fin {
            return Ok(None);
        }
        let whole = std::mem::take(&mut self.partial);
        Ok(Some(match self.op.take() {
            Some(OpCode::Binary) => Message::Binary(Payload::Owned(whole)),
            _ => Message::Text(Payload::Owned(whole)),
        }))
    }

    /// Counts one fragment of `len` bytes: starts a message or continues one, within
    /// the fragment limits.
    #[inline]
    fn fragment(&mut self, op: OpCode, len: usize) -> Result<(), Refusal> {
        let starts = op != OpCode::Continuation;
        if starts && self.op.is_some() {
            return Err((
                CloseCode::ProtocolError,
                "new message before the last one ended",
            ));
        }
        if !starts && self.op.is_none() {
            return Err((CloseCode::ProtocolError, "continuation without a start"));
        }
        if starts {
            self.op = Some(op);
            self.partial.clear();
            (self.checked, self.frames, self.empties) = (0, 0, 0);
        }
        self.frames = self.frames.saturating_add(1);
        if self.frames as usize > self.fragments.most {
            return Err((CloseCode::Policy, "message in too many fragments"));
        }
        if len == 0 {
            self.empties = self.empties.saturating_add(1);
            if self.empties as usize > self.fragments.empty {
                return Err((CloseCode::Policy, "too many empty fragments"));
            }
        }
        Ok(())
    }

    /// Frames the message being assembled may still come in.
    #[inline]
    fn frames_left(&self) -> usize {
        self.fragments.most.saturating_sub(self.frames as usize)
    }

    /// Counts a middle fragment (a continuation that is not the last) of `len` bytes,
    /// `pending` more bytes of the message being on their way: within the fragment
    /// limits and the size, as [`Reassembler::push`] checks.
    #[inline]
    fn middle(&mut self, len: usize, pending: usize) -> Result<(), Refusal> {
        self.fragment(OpCode::Continuation, len)?;
        if self.partial.len() + pending + len > self.max {
            return Err(too_big());
        }
        Ok(())
    }

    /// Checks the text received since the last check: nothing before the end may be
    /// invalid (fail fast, §8.1), and a message may end only after a whole character.
    /// An incomplete character at the end is checked again with the next fragment.
    fn check_text(&mut self, fin: bool) -> Result<(), Refusal> {
        let new = &self.partial[self.checked..];
        #[cfg(test)]
        {
            self.utf8_work += new.len();
        }
        if new.is_ascii() {
            // Nothing incomplete before it (that would not be ASCII): all whole.
            self.checked = self.partial.len();
            return Ok(());
        }
        match simdutf8::compat::from_utf8(new) {
            Ok(_) => self.checked = self.partial.len(),
            Err(e) if e.error_len().is_none() && !fin => self.checked += e.valid_up_to(),
            Err(_) => return Err(bad_utf8()),
        }
        Ok(())
    }
}

/// A control frame as a message: at most 125 bytes, never fragmented, a Close's code
/// and reason valid (§5.5).
fn control_message(frame: Frame<'_>) -> Result<Message<'_>, Refusal> {
    if !frame.fin {
        return Err((CloseCode::ProtocolError, "fragmented control frame"));
    }
    if frame.payload.len() > MAX_CONTROL {
        return Err((CloseCode::ProtocolError, "control frame over 125 bytes"));
    }
    Ok(match frame.opcode {
        OpCode::Close => {
            check_close(&frame.payload)?;
            Message::Close
        }
        OpCode::Ping => Message::Ping(frame.payload),
        _ => Message::Pong,
    })
}

/// Checks a Close frame's payload: empty, or a valid code and a UTF-8 reason (§5.5.1,
/// §7.4).
fn check_close(payload: &[u8]) -> Result<(), Refusal> {
    match payload {
        [] => Ok(()),
        [_] => Err((CloseCode::ProtocolError, "close payload of one byte")),
        [hi, lo, reason @ ..] => {
            if !valid_close_code(u16::from_be_bytes([*hi, *lo])) {
                return Err((CloseCode::ProtocolError, "invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err((CloseCode::InvalidData, "close reason is not valid UTF-8"));
            }
            Ok(())
        }
    }
}

/// Whether a peer may send this close code: the defined ones (1000–1003, 1007–1014) and
/// the registered and private ranges (3000–4999). 1004–1006 and 1015 are reserved or
/// never sent; everything else is invalid.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn too_big() -> Refusal {
    (CloseCode::TooBig, "message too big")
}

fn bad_utf8() -> Refusal {
    (CloseCode::InvalidData, "text is not valid UTF-8")
}

/// What a connection's frames may cost, per second: every frame the client sends —
/// data, continuation or control, empty or not — is charged, so that no kind of frame
/// is free work for the node. A frame costs one unit; a Ping, which the node answers
/// with a write of its own, costs as much as a whole message in its most fragments.
/// Frames are paid for in groups (at most 32, at most 1/64 of the burst), so that the
/// clock is read once per group, not once per frame.
#[derive(Debug)]
pub struct FrameBudget {
    limiter: governor::DefaultDirectRateLimiter,
    ping: u32,
    /// Units charged and not paid for yet.
    owed: u32,
    /// Units paid for at once.
    group: u32,
}

impl FrameBudget {
    /// `per_s` units a second, up to `burst` saved; a Ping costs `ping` (at most the
    /// burst).
    pub fn new(per_s: u32, burst: u32, ping: u32) -> FrameBudget {
        let per_s = NonZeroU32::new(per_s).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN).max(per_s);
        FrameBudget {
            limiter: governor::RateLimiter::direct(Quota::per_second(per_s).allow_burst(burst)),
            ping: ping.clamp(1, burst.get()),
            owed: 0,
            group: (burst.get() / 64).clamp(1, 32),
        }
    }

    /// The budget of a subscriber connection: whatever its message rate limit lets it
    /// send, each message in up to its most fragments — `--rate-limit` ×
    /// `--max-fragments` frames a second, `--rate-burst` × `--max-fragments` saved, a
    /// Ping charged like a message.
    pub fn subscriber(settings: &crate::config::Settings) -> FrameBudget {
        let most = u32::try_from(settings.max_fragments).unwrap_or(u32::MAX);
        FrameBudget::new(
            settings.rate_limit.saturating_mul(most),
            settings.rate_burst.saturating_mul(most),
            most,
        )
    }

    /// The budget of a publisher connection: `--publish-rate-limit` frames a second,
    /// every frame (a Ping too) one.
    pub fn publisher(settings: &crate::config::Settings) -> FrameBudget {
        let rate = settings.publish_rate_limit;
        FrameBudget::new(rate, rate, 1)
    }

    /// Charges a frame of `op`: `Ok`, or how long until the budget can pay for what is
    /// owed ([`FrameBudget::pay`] then).
    pub fn charge(&mut self, op: OpCode) -> Result<(), Duration> {
        if op == OpCode::Ping && self.ping > 1 {
            // Paid at once, after what is owed before it.
            self.pay()?;
            self.owed = self.ping;
            return self.pay();
        }
        self.owed += 1;
        if self.owed < self.group {
            return Ok(());
        }
        self.pay()
    }

    /// Pays for what is owed: `Ok`, or how long until the budget can.
    pub fn pay(&mut self) -> Result<(), Duration> {
        let Some(owed) = NonZeroU32::new(self.owed) else {
            return Ok(());
        };
        match self.limiter.check_n(owed) {
            Ok(Ok(())) => {
                self.owed = 0;
                Ok(())
            }
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.limiter.clock().now())),
            // Never more than the burst is owed (a group, or one Ping).
            Err(_) => Err(Duration::from_secs(1)),
        }
    }

    /// Frames that can be charged before a payment falls due.
    #[inline]
    fn free(&self) -> usize {
        self.group.saturating_sub(self.owed + 1) as usize
    }

    /// Charges one frame of a run ([`FrameReader::take_fragments`]) as
    /// [`FrameBudget::charge`] would; false, and nothing charged, when a payment falls
    /// due that the budget cannot make now (the frame is then read and charged alone).
    #[inline]
    fn charge_in_run(&mut self) -> bool {
        self.owed += 1;
        if self.owed < self.group || self.pay().is_ok() {
            return true;
        }
        self.owed -= 1;
        false
    }

    /// Charges a frame of `op`, waiting until the budget can pay for it (back-pressure:
    /// the connection is read more slowly, nothing is dropped).
    pub async fn wait(&mut self, op: OpCode) {
        if let Err(mut wait) = self.charge(op) {
            loop {
                tokio::time::sleep(wait).await;
                match self.pay() {
                    Ok(()) => return,
                    Err(w) => wait = w,
                }
            }
        }
    }
}

/// Reads and drops raw bytes until EOF or an error.
pub async fn drain<R: AsyncRead + Unpin>(mut read: R) {
    let mut buf = vec![0u8; 4096];
    while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Why no frame was read.
#[derive(Debug)]
pub enum ReadError {
    /// The connection ended (EOF or an I/O error): nothing more can be sent on it.
    Gone,
    /// The client broke the protocol: close with this.
    Refused(Refusal),
}

impl From<Refusal> for ReadError {
    fn from(r: Refusal) -> ReadError {
        ReadError::Refused(r)
    }
}

/// Bytes read onto the stack at a time when nothing is held.
const STACK_READ: usize = 4096;

/// Reads a client's frames off a stream (see the module doc): the bytes of an incomplete
/// frame are all it holds between reads.
#[derive(Debug)]
pub struct FrameReader {
    max: usize,
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    pos: usize,
    /// Bytes arrived since [`FrameReader::arrived`] was last asked.
    fresh: bool,
    /// Unmasked frames are refused (every client frame must be masked, §5.1).
    masked: bool,
}

/// How far a run may take plain frames with no check that could stop it: frames
/// (before the fragment limit or a budget payment), empty ones, and bytes of the message.
#[derive(Clone, Copy)]
struct Room {
    frames: usize,
    empties: usize,
    bytes: usize,
}

/// What [`FrameReader::plain`] took: frames, and how many of them were empty.
struct Plain {
    frames: usize,
    empties: usize,
}

/// A frame's header, parsed.
struct Head {
    fin: bool,
    op: OpCode,
    key: Option<[u8; 4]>,
    /// Header bytes, masking key included.
    len: usize,
    payload: usize,
}

impl FrameReader {
    /// Frames whose payload is at most `max` bytes (a larger one is refused with 1009).
    pub fn new(max: usize) -> FrameReader {
        FrameReader {
            max,
            buf: Vec::new(),
            pos: 0,
            fresh: false,
            masked: true,
        }
    }

    /// A reader of the server's own frames (unmasked), for the tests.
    #[cfg(test)]
    fn of_server(max: usize) -> FrameReader {
        FrameReader {
            masked: false,
            ..FrameReader::new(max)
        }
    }

    /// Whether a whole frame (or a header to refuse) is held: the next
    /// [`FrameReader::read`] returns without waiting for the stream.
    pub fn holds_frame(&self) -> bool {
        match self.head() {
            Ok(Some(h)) => self.buf.len() - self.pos >= h.len + h.payload,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Whether bytes arrived since the last call: a sign of life looked at once per
    /// read from the stream, not per frame (a caller reads the clock for it).
    pub fn arrived(&mut self) -> bool {
        std::mem::take(&mut self.fresh)
    }

    /// Reads the next frame, its payload unmasked. Cancel-safe: bytes read are kept for
    /// the next call.
    pub async fn read<S: AsyncRead + Unpin>(&mut self, io: &mut S) -> Result<Frame<'_>, ReadError> {
        poll_fn(|cx| self.poll_frame(cx, io)).await?;
        self.take_frame()
    }

    /// Reads until a whole frame (or a header to refuse) is held, for a reader that is
    /// a state machine of its own; [`FrameReader::take_frame`] then takes it.
    pub fn poll_frame<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
    ) -> Poll<Result<(), ReadError>> {
        self.release();
        loop {
            let need = match self.head() {
                Err(_) => return Poll::Ready(Ok(())),
                Ok(Some(h)) if self.buf.len() - self.pos >= h.len + h.payload => {
                    return Poll::Ready(Ok(()))
                }
                Ok(Some(h)) => h.len + h.payload,
                Ok(None) => 14,
            };
            ready!(self.poll_fill(cx, io, need))?;
        }
    }

    /// Reads and drops what the client sends after the server's Close: `Ready` at the
    /// client's own Close, EOF or an error. A stream that no longer parses as frames
    /// (the close was for broken framing) is left unread, never `Ready`: the caller's
    /// bound on the time is then what the client has to read the Close before the
    /// connection goes.
    pub fn poll_discard<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
    ) -> Poll<()> {
        loop {
            if let Err(ReadError::Gone) = ready!(self.poll_frame(cx, io)) {
                return Poll::Ready(());
            }
            match self.take_frame() {
                Ok(frame) if frame.opcode == OpCode::Close => return Poll::Ready(()),
                Ok(_) => {}
                Err(ReadError::Gone) => return Poll::Ready(()),
                // Left unread: the caller's bound on the time ends the wait.
                Err(ReadError::Refused(_)) => return Poll::Pending,
            }
        }
    }

    /// The frame [`FrameReader::poll_frame`] found held, its payload unmasked.
    pub fn take_frame(&mut self) -> Result<Frame<'_>, ReadError> {
        let head = match self.head()? {
            Some(h) if self.buf.len() - self.pos >= h.len + h.payload => h,
            _ => return Err(ReadError::Gone),
        };
        let start = self.pos + head.len;
        self.pos = start + head.payload;
        let payload = &mut self.buf[start..self.pos];
        if let Some(key) = head.key {
            unmask(payload, key);
        }
        Ok(Frame::new(
            head.fin,
            head.op,
            head.key,
            Payload::BorrowedMut(payload),
        ))
    }

    /// Takes, in one go, the middle fragments of the message `whole` is assembling that
    /// are already held whole — no call and no [`Frame`] per frame: each is charged to
    /// `budget`, counted and bounded as [`FrameReader::read`], [`FrameBudget::charge`]
    /// and [`Reassembler::push`] would, and appended unmasked; the text they add is
    /// checked once, before anything that stopped the run is reported (an invalid byte is
    /// refused first, as frame by frame). The run stops before anything else — a control
    /// frame, the last fragment, a frame not all in, a header to refuse, a frame the
    /// budget cannot pay for now — which `read`, `charge` and `push` then take, in
    /// order. Returns how many frames were taken.
    pub fn take_fragments(
        &mut self,
        whole: &mut Reassembler,
        budget: &mut FrameBudget,
    ) -> Result<usize, Refusal> {
        if !whole.assembling() {
            return Ok(0);
        }
        let before = whole.partial.len();
        let run = self.run(whole, budget);
        if whole.op == Some(OpCode::Text) && whole.partial.len() > before {
            whole.check_text(false)?;
        }
        run
    }

    /// The loop of [`FrameReader::take_fragments`], up to its stop or a refusal: each
    /// payload is unmasked and moved down over the bytes already read, next to the one
    /// before, and the run is appended to the message at once.
    fn run(&mut self, whole: &mut Reassembler, budget: &mut FrameBudget) -> Result<usize, Refusal> {
        let (start, mut end) = (self.pos, self.pos);
        let mut taken = 0;
        let mut refused = None;
        loop {
            // The plain frames of a storm, up to the first that a check could stop.
            let room = Room {
                frames: whole.frames_left().min(budget.free()),
                empties: whole.fragments.empty.saturating_sub(whole.empties as usize),
                bytes: whole.max.saturating_sub(whole.partial.len() + end - start),
            };
            let plain = self.plain(room, &mut end);
            let frames = u32::try_from(plain.frames).expect("fewer frames than the group");
            whole.frames = whole.frames.saturating_add(frames);
            whole.empties = whole.empties.saturating_add(plain.empties as u32);
            budget.owed += frames;
            taken += plain.frames;
            // The next frame, whatever it is, with every check.
            let Some((at, len, key)) = self.held_middle() else {
                break;
            };
            if !budget.charge_in_run() {
                break;
            }
            if let Err(r) = whole.middle(len, end - start) {
                refused = Some(r);
                break;
            }
            unmask_down(&mut self.buf, at, end, len, key);
            (self.pos, end, taken) = (at + len, end + len, taken + 1);
        }
        whole.partial.extend_from_slice(&self.buf[start..end]);
        refused.map_or(Ok(taken), Err)
    }

    /// Takes the frames of a storm — short masked middle fragments held whole, the
    /// header two bytes and the key — while `room` lasts, each payload unmasked down to
    /// `end`: the counts and the size are checked against `room`, which stops short of
    /// every limit and budget payment, so that nothing taken here could be refused.
    #[inline]
    fn plain(&mut self, room: Room, end: &mut usize) -> Plain {
        let buf = &mut self.buf[..];
        let (mut pos, mut to, mut bytes) = (self.pos, *end, room.bytes.min(self.max));
        let mut got = Plain {
            frames: 0,
            empties: 0,
        };
        while got.frames < room.frames {
            let Some(&[0x00, b1 @ 0x80..=0xfd, k0, k1, k2, k3]) = buf.get(pos..pos + 6) else {
                break;
            };
            let (at, len) = (pos + 6, usize::from(b1 & 0x7f));
            if len > bytes || at + len > buf.len() {
                break;
            }
            if len == 0 {
                if got.empties == room.empties {
                    break;
                }
                got.empties += 1;
            }
            let key = [k0, k1, k2, k3];
            for i in 0..len {
                buf[to + i] = buf[at + i] ^ key[i & 3];
            }
            (pos, to, bytes) = (at + len, to + len, bytes - len);
            got.frames += 1;
        }
        (self.pos, *end) = (pos, to);
        got
    }

    /// Where the next frame's payload starts, its length and its key, when that frame
    /// is a middle fragment held whole; `None` for anything else.
    #[inline]
    fn held_middle(&self) -> Option<(usize, usize, Option<[u8; 4]>)> {
        let (at, len, key) = match self.buf[self.pos..] {
            // The frame of a storm: a short masked continuation, not the last (FIN,
            // reserved bits and opcode all 0), its header two bytes and the key. The
            // checks `head` makes hold for it (masked, at most 125 bytes) but the size.
            [0x00, b1 @ 0x80..=0xfd, k0, k1, k2, k3, ..] if usize::from(b1 & 0x7f) <= self.max => {
                (self.pos + 6, usize::from(b1 & 0x7f), Some([k0, k1, k2, k3]))
            }
            _ => match self.head() {
                Ok(Some(h)) if h.op == OpCode::Continuation && !h.fin => {
                    (self.pos + h.len, h.payload, h.key)
                }
                _ => return None,
            },
        };
        (at + len <= self.buf.len()).then_some((at, len, key))
    }

    /// Frees what the frames already read used: an idle connection holds no buffer.
    fn release(&mut self) {
        if self.pos == self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    /// The header of the next frame, once it is all in.
    #[inline]
    fn head(&self) -> Result<Option<Head>, Refusal> {
        let b = &self.buf[self.pos..];
        let [b0, b1, ..] = *b else { return Ok(None) };
        if b0 & 0x70 != 0 {
            return Err((CloseCode::ProtocolError, "reserved bits set"));
        }
        let op = match b0 & 0x0f {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xa => OpCode::Pong,
            _ => return Err((CloseCode::ProtocolError, "reserved opcode")),
        };
        let (payload, mut len) = match b1 & 0x7f {
            126 => match b.get(2..4) {
                Some(n) => (u64::from(u16::from_be_bytes([n[0], n[1]])), 4),
                None => return Ok(None),
            },
            127 => match b.get(2..10) {
                // The most significant bit must be 0 (§5.2): not a length at all.
                Some(n) if n[0] & 0x80 != 0 => {
                    return Err((
                        CloseCode::ProtocolError,
                        "64-bit length with the top bit set",
                    ))
                }
                Some(n) => (u64::from_be_bytes(n.try_into().expect("8 bytes")), 10),
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if self.masked && b1 & 0x80 == 0 {
            return Err((CloseCode::ProtocolError, "client frames must be masked"));
        }
        let control = b0 & 0x08 != 0;
        if control && payload > MAX_CONTROL as u64 {
            return Err((CloseCode::ProtocolError, "control frame over 125 bytes"));
        }
        let payload = match usize::try_from(payload) {
            Ok(p) if p <= self.max => p,
            _ => return Err(too_big()),
        };
        let key = if b1 & 0x80 != 0 {
            match b.get(len..len + 4) {
                Some(k) => {
                    len += 4;
                    Some(k.try_into().expect("4 bytes"))
                }
                None => return Ok(None),
            }
        } else {
            None
        };
        Ok(Some(Head {
            fin: b0 & 0x80 != 0,
            op,
            key,
            len,
            payload,
        }))
    }

    /// Reads more, towards `need` bytes from the frame's start. The buffer grows with
    /// what arrives (at most doubling what is held), not with what a header announces:
    /// a header alone never makes the node hold its announced length.
    fn poll_fill<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        need: usize,
    ) -> Poll<Result<(), ReadError>> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let read = if self.buf.is_empty() {
            // Nothing held: read on the stack, and keep only what arrived.
            let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
            let mut rb = ReadBuf::uninit(&mut stack);
            match ready!(Pin::new(&mut *io).poll_read(cx, &mut rb)) {
                Ok(()) => {
                    self.buf.extend_from_slice(rb.filled());
                    Ok(rb.filled().len())
                }
                Err(e) => Err(e),
            }
        } else {
            let missing = need.saturating_sub(self.buf.len());
            self.buf
                .reserve(missing.clamp(1, self.buf.len().max(STACK_READ)));
            ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut *io),
                cx,
                &mut self.buf
            ))
        };
        Poll::Ready(match read {
            Ok(n) if n > 0 => {
                self.fresh = true;
                Ok(())
            }
            _ => Err(ReadError::Gone),
        })
    }
}

/// Unmasks (or masks) `data` with the client's key (RFC 6455 §5.3).
pub fn unmask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = data.chunks_exact_mut(8);
    for w in &mut words {
        let v = u64::from_ne_bytes((&*w).try_into().expect("8 bytes")) ^ wide;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Moves the `len` bytes at `from` in `buf` down to `to` (at most `from`), unmasked with
/// `key` (as they are without one). A short payload (a fragment of a storm) is unmasked
/// byte by byte as it moves, with no call to copy a few bytes.
#[inline]
fn unmask_down(buf: &mut [u8], from: usize, to: usize, len: usize, key: Option<[u8; 4]>) {
    match key {
        Some(key) if len < 8 => {
            for i in 0..len {
                buf[to + i] = buf[from + i] ^ key[i & 3];
            }
        }
        _ => {
            buf.copy_within(from..from + len, to);
            if let Some(key) = key {
                unmask(&mut buf[to..to + len], key);
            }
        }
    }
}

/// Bytes kept at the front of a frame buffer for [`seal`] to write the header into.
pub const HEAD_ROOM: usize = 10;

/// Makes `buf` — [`HEAD_ROOM`] bytes of room, then the payload — one final frame of
/// `op`, and returns it: the header goes right before the payload, so the frame is
/// written with one write and no copy.
pub fn seal(buf: &mut [u8], op: OpCode) -> &[u8] {
    let len = buf.len() - HEAD_ROOM;
    let mut head = [0u8; HEAD_ROOM];
    head[0] = 0x80 | op as u8;
    let n = if len < 126 {
        head[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        head[1] = 126;
        head[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    let start = HEAD_ROOM - n;
    buf[start..HEAD_ROOM].copy_from_slice(&head[..n]);
    &buf[start..]
}

/// Writes one whole frame; false when that failed or took longer than `timeout` (a
/// client that does not read is dropped, not waited for).
pub async fn send<S: AsyncWrite + Unpin>(io: &mut S, timeout: Duration, frame: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(timeout, io.write_all(frame)).await,
        Ok(Ok(()))
    )
}

/// One control frame (Ping, Pong, Close) of the server, `payload` cut at 125 bytes.
pub fn control(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_CONTROL)];
    let mut frame = Vec::with_capacity(2 + payload.len());
    frame.push(0x80 | op as u8);
    frame.push(payload.len() as u8);
    frame.extend_from_slice(payload);
    frame
}

/// A server Close frame with `code` and `reason`.
pub fn close(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut payload = code.code().to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    control(OpCode::Close, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, op: OpCode, data: &[u8]) -> Frame<'static> {
        Frame::new(fin, op, Some([0; 4]), Payload::Owned(data.to_vec()))
    }

    fn refused(r: &mut Reassembler, f: Frame<'static>) -> CloseCode {
        r.push(f).unwrap_err().0
    }

    /// A reassembler of messages up to `max` bytes in any number of fragments.
    fn loose(max: usize) -> Reassembler {
        let any = Fragments {
            most: usize::MAX,
            empty: usize::MAX,
        };
        Reassembler::new(max, any)
    }

    #[test]
    fn text_in_one_byte_fragments_is_checked_once_per_byte() {
        // One-, two-, three- and four-byte characters, cut everywhere.
        let text = "a\u{e9}\u{20ac}\u{1f600}".repeat(6_400);
        let bytes = text.as_bytes();
        let mut r = loose(bytes.len());
        let last = bytes.len() - 1;
        for (i, b) in bytes.iter().enumerate() {
            let op = if i == 0 {
                OpCode::Text
            } else {
                OpCode::Continuation
            };
            match r.push(frame(i == last, op, &[*b])).unwrap() {
                None => assert!(i < last),
                Some(Message::Text(p)) => assert!(i == last && p[..] == *bytes),
                Some(other) => panic!("{other:?}"),
            }
        }
        // Each byte is checked when it arrives, and again only while it begins a
        // character that is not complete yet (at most three more times).
        assert!(
            r.utf8_work <= bytes.len() * 4,
            "{} bytes checked for {} received",
            r.utf8_work,
            bytes.len()
        );
        // An invalid byte is still refused as soon as it arrives.
        let mut r = loose(64);
        assert!(r.push(frame(false, OpCode::Text, b"ok")).unwrap().is_none());
        assert!(r
            .push(frame(false, OpCode::Continuation, &[0xf0, 0x9f]))
            .unwrap()
            .is_none());
        let bad = frame(false, OpCode::Continuation, &[0x41]);
        assert_eq!(refused(&mut r, bad), CloseCode::InvalidData);
    }

    #[test]
    fn a_message_may_come_in_at_most_its_fragments_and_few_of_them_empty() {
        let limits = Fragments { most: 4, empty: 2 };
        let mut r = Reassembler::new(1024, limits);
        // Four fragments, two of them empty: a message.
        for (i, part) in [&b"a"[..], b"", b"", b"b"].iter().enumerate() {
            let op = if i == 0 {
                OpCode::Binary
            } else {
                OpCode::Continuation
            };
            let got = r.push(frame(i == 3, op, part)).unwrap();
            assert_eq!(got.is_some(), i == 3);
        }
        // The count starts again with each message; control frames between fragments
        // are not fragments.
        assert!(r.push(frame(false, OpCode::Text, b"x")).unwrap().is_none());
        for _ in 0..5 {
            assert!(r.push(frame(true, OpCode::Ping, b"")).unwrap().is_some());
        }
        for _ in 0..2 {
            let more = frame(false, OpCode::Continuation, b"y");
            assert!(r.push(more).unwrap().is_none());
        }
        let fifth = frame(false, OpCode::Continuation, b"z");
        assert!(r
            .push(frame(false, OpCode::Continuation, b"z"))
            .unwrap()
            .is_none());
        assert_eq!(refused(&mut r, fifth), CloseCode::Policy);
        // A third empty fragment is refused even within the frame limit.
        let mut r = Reassembler::new(1024, limits);
        assert!(r.push(frame(false, OpCode::Text, b"")).unwrap().is_none());
        assert!(r
            .push(frame(false, OpCode::Continuation, b""))
            .unwrap()
            .is_none());
        let third = frame(true, OpCode::Continuation, b"");
        assert_eq!(refused(&mut r, third), CloseCode::Policy);
        // A message that is not fragmented is one fragment, whatever the limits.
        let mut r = Reassembler::new(1024, Fragments { most: 1, empty: 0 });
        assert!(r.push(frame(true, OpCode::Text, b"")).unwrap().is_some());
        assert!(r.push(frame(false, OpCode::Text, b"a")).unwrap().is_none());
        let second = frame(true, OpCode::Continuation, b"b");
        assert_eq!(refused(&mut r, second), CloseCode::Policy);
    }

    #[test]
    fn every_frame_is_charged_and_a_ping_like_a_message() {
        // One unit a second, ten saved: within this test nothing refills.
        let mut budget = FrameBudget::new(1, 10, 4);
        for _ in 0..4 {
            assert!(budget.charge(OpCode::Continuation).is_ok());
        }
        assert!(budget.charge(OpCode::Ping).is_ok());
        assert!(budget.charge(OpCode::Pong).is_ok());
        assert!(budget.charge(OpCode::Close).is_ok());
        let wait = budget.charge(OpCode::Text).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        let mut budget = FrameBudget::new(1, 10, 4);
        for _ in 0..7 {
            assert!(budget.charge(OpCode::Continuation).is_ok());
        }
        let wait = budget.charge(OpCode::Ping).unwrap_err();
        assert!(
            wait > Duration::ZERO,
            "a Ping costs 4, 3 are left: {wait:?}"
        );
        // A large budget is paid in groups of 32 frames.
        let mut budget = FrameBudget::new(1_000, 6_400, 1);
        for _ in 0..31 {
            assert!(budget.charge(OpCode::Continuation).is_ok());
        }
        assert_eq!(budget.owed, 31);
        assert!(budget.charge(OpCode::Continuation).is_ok());
        assert_eq!(budget.owed, 0);
    }

    #[test]
    fn fragments_become_one_message_within_the_limit() {
        let mut r = loose(8);
        assert!(r.push(frame(false, OpCode::Text, b"ab")).unwrap().is_none());
        assert!(matches!(
            r.push(frame(true, OpCode::Ping, b"p")),
            Ok(Some(Message::Ping(_)))
        ));
        match r.push(frame(true, OpCode::Continuation, b"cd")).unwrap() {
            Some(Message::Text(p)) => assert_eq!(&p[..], b"abcd"),
            other => panic!("{other:?}"),
        }
        // Over the limit across fragments.
        assert!(r
            .push(frame(false, OpCode::Text, b"12345"))
            .unwrap()
            .is_none());
        let big = frame(true, OpCode::Continuation, b"6789");
        assert_eq!(refused(&mut r, big), CloseCode::TooBig);
        let mut r = loose(8);
        let lone = frame(true, OpCode::Continuation, b"x");
        assert_eq!(refused(&mut r, lone), CloseCode::ProtocolError);
        // A character split across fragments is fine.
        assert!(r
            .push(frame(false, OpCode::Text, &[0xe2, 0x82]))
            .unwrap()
            .is_none());
        assert!(matches!(
            r.push(frame(true, OpCode::Continuation, &[0xac])),
            Ok(Some(Message::Text(_)))
        ));
        // An invalid byte fails at once, before the message ends.
        let bad = frame(false, OpCode::Text, &[b'a', 0xff]);
        assert_eq!(refused(&mut r, bad), CloseCode::InvalidData);
        // A message ending inside a character fails at its end.
        let mut r = loose(8);
        assert!(r
            .push(frame(false, OpCode::Text, &[0xe2]))
            .unwrap()
            .is_none());
        let cut = frame(true, OpCode::Continuation, &[0x82]);
        assert_eq!(refused(&mut r, cut), CloseCode::InvalidData);
    }

    #[test]
    fn control_frames_and_masking_follow_the_rfc() {
        let mut r = loose(1024);
        let long_pong = frame(true, OpCode::Pong, &[0; 126]);
        assert_eq!(refused(&mut r, long_pong), CloseCode::ProtocolError);
        let split_ping = frame(false, OpCode::Ping, b"");
        assert_eq!(refused(&mut r, split_ping), CloseCode::ProtocolError);
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let close = frame(true, OpCode::Close, &code.to_be_bytes());
            assert_eq!(refused(&mut r, close), CloseCode::ProtocolError, "{code}");
        }
        for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            let close = frame(true, OpCode::Close, &code.to_be_bytes());
            assert!(matches!(r.push(close), Ok(Some(Message::Close))), "{code}");
        }
        let one_byte = frame(true, OpCode::Close, &[3]);
        assert_eq!(refused(&mut r, one_byte), CloseCode::ProtocolError);
        let bad_reason = frame(true, OpCode::Close, &[3, 232, 0xff]);
        assert_eq!(refused(&mut r, bad_reason), CloseCode::InvalidData);
        assert!(matches!(
            r.push(frame(true, OpCode::Close, b"")),
            Ok(Some(Message::Close))
        ));
    }

    /// A client frame: masked with `key`, of `op`, `fin` as given.
    fn client_frame(fin: bool, op: u8, key: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | op];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        let mut body = payload.to_vec();
        unmask(&mut body, key);
        f.extend_from_slice(&body);
        f
    }

    /// Hands its bytes out `step` at a time, then EOF.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self
                .step
                .min(self.data.len() - self.at)
                .min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_reader_reads_every_length_form_whatever_the_pieces_it_arrives_in() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let sizes = [
            0usize, 1, 7, 125, 126, 127, 4095, 4096, 4097, 65535, 65536, 70_000,
        ];
        let mut wire = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let body: Vec<u8> = (0..*n).map(|b| (b * 7 + i) as u8).collect();
            wire.extend(client_frame(true, 0x2, key, &body));
        }
        wire.extend(client_frame(false, 0x1, key, b"frag"));
        wire.extend(client_frame(true, 0x9, key, b"ping"));
        for step in [1, 3, 4096, usize::MAX] {
            let mut io = Trickle {
                data: wire.clone(),
                at: 0,
                step,
            };
            let mut r = FrameReader::new(70_000);
            for (i, n) in sizes.iter().enumerate() {
                let f = r.read(&mut io).await.unwrap();
                assert_eq!((f.fin, f.opcode), (true, OpCode::Binary));
                let want: Vec<u8> = (0..*n).map(|b| (b * 7 + i) as u8).collect();
                assert!(f.payload[..] == want[..], "size {n}, step {step}");
            }
            let f = r.read(&mut io).await.unwrap();
            assert_eq!(
                (f.fin, f.opcode, &f.payload[..]),
                (false, OpCode::Text, &b"frag"[..])
            );
            let f = r.read(&mut io).await.unwrap();
            assert_eq!((f.opcode, &f.payload[..]), (OpCode::Ping, &b"ping"[..]));
            assert!(matches!(r.read(&mut io).await, Err(ReadError::Gone)));
        }
    }

    #[tokio::test]
    async fn the_reader_refuses_from_the_header_before_reading_the_payload() {
        let refused = |bytes: Vec<u8>, max: usize| async move {
            // Only the header is there: the refusal cannot have waited for the payload.
            let mut io = Trickle {
                data: bytes,
                at: 0,
                step: usize::MAX,
            };
            match FrameReader::new(max).read(&mut io).await {
                Err(ReadError::Refused((code, why))) => (code, why),
                Err(e) => panic!("{e:?}"),
                Ok(f) => panic!("read a frame of {}", f.payload.len()),
            }
        };
        let key = [1, 2, 3, 4];
        let mut rsv = client_frame(true, 0x1, key, b"x");
        rsv[0] |= 0x40;
        assert_eq!(
            refused(rsv, 16).await,
            (CloseCode::ProtocolError, "reserved bits set")
        );
        let op = client_frame(true, 0x3, key, b"x");
        assert_eq!(
            refused(op, 16).await,
            (CloseCode::ProtocolError, "reserved opcode")
        );
        let unmasked = vec![0x81, 1, b'x'];
        assert_eq!(
            refused(unmasked, 16).await,
            (CloseCode::ProtocolError, "client frames must be masked")
        );
        // 1 GiB announced, 14 bytes sent.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 30).to_be_bytes());
        huge.extend_from_slice(&key);
        assert_eq!(refused(huge, 1 << 20).await.0, CloseCode::TooBig);
        // A 64-bit length must have its most significant bit clear (§5.2).
        let mut top = vec![0x82, 0x80 | 127];
        top.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
        top.extend_from_slice(&key);
        assert_eq!(
            refused(top, usize::MAX).await,
            (
                CloseCode::ProtocolError,
                "64-bit length with the top bit set"
            )
        );
        let mut long_ping = vec![0x89, 0x80 | 126];
        long_ping.extend_from_slice(&200u16.to_be_bytes());
        assert_eq!(
            refused(long_ping, 1 << 20).await.0,
            CloseCode::ProtocolError
        );
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(1 << 16);
        let big = vec![b'a'; 10_000];
        tokio::io::AsyncWriteExt::write_all(&mut client, &client_frame(true, 1, [9; 4], &big))
            .await
            .unwrap();
        assert_eq!(r.read(&mut server).await.unwrap().payload.len(), 10_000);
        // Waiting for the next frame, with nothing to read: nothing held.
        let wait = tokio::time::timeout(std::time::Duration::from_millis(20), r.read(&mut server));
        assert!(wait.await.is_err());
        assert_eq!(r.buf.capacity(), 0);
        // Half a frame is kept across the wait, and the rest completes it.
        let f = client_frame(true, 1, [9; 4], b"hello");
        tokio::io::AsyncWriteExt::write_all(&mut client, &f[..4])
            .await
            .unwrap();
        let wait = tokio::time::timeout(std::time::Duration::from_millis(20), r.read(&mut server));
        assert!(wait.await.is_err());
        tokio::io::AsyncWriteExt::write_all(&mut client, &f[4..])
            .await
            .unwrap();
        assert_eq!(&r.read(&mut server).await.unwrap().payload[..], b"hello");
    }

    #[tokio::test]
    async fn the_buffer_grows_with_what_arrives_not_with_what_a_header_announces() {
        let (mut client, mut server) = tokio::io::duplex(1 << 21);
        let body: Vec<u8> = (0..1usize << 20).map(|b| b as u8).collect();
        let whole = client_frame(true, 2, [5, 6, 7, 8], &body);
        // The header announces 1 MiB; 10 bytes of it are sent.
        let head = 14;
        tokio::io::AsyncWriteExt::write_all(&mut client, &whole[..head + 10])
            .await
            .unwrap();
        let mut r = FrameReader::new(1 << 20);
        let wait = tokio::time::timeout(std::time::Duration::from_millis(20), r.read(&mut server));
        assert!(wait.await.is_err());
        assert!(r.buf.capacity() <= 3 * STACK_READ, "{}", r.buf.capacity());
        // As the rest arrives the buffer grows with it, and the frame reads whole.
        tokio::io::AsyncWriteExt::write_all(&mut client, &whole[head + 10..])
            .await
            .unwrap();
        let f = r.read(&mut server).await.unwrap();
        assert!(f.payload[..] == body[..]);
    }

    #[tokio::test]
    async fn server_frames_read_back_as_written() {
        for n in [0usize, 125, 126, 65535, 65536] {
            let body: Vec<u8> = (0..n).map(|b| b as u8).collect();
            let mut buf = vec![0u8; HEAD_ROOM];
            buf.extend_from_slice(&body);
            let frame = seal(&mut buf, OpCode::Text).to_vec();
            let mut io = Trickle {
                data: frame,
                at: 0,
                step: usize::MAX,
            };
            let mut r = FrameReader::of_server(1 << 17);
            let f = r.read(&mut io).await.unwrap();
            assert_eq!((f.fin, f.opcode), (true, OpCode::Text));
            assert!(f.payload[..] == body[..], "{n}");
        }
        let close = close(CloseCode::SlowConsumer, "slow consumer");
        let mut io = Trickle {
            data: close,
            at: 0,
            step: usize::MAX,
        };
        let mut r = FrameReader::of_server(125);
        let f = r.read(&mut io).await.unwrap();
        assert_eq!(f.opcode, OpCode::Close);
        assert_eq!(&f.payload[..2], &4008u16.to_be_bytes());
        assert_eq!(&f.payload[2..], b"slow consumer");
        assert_eq!(control(OpCode::Ping, &[]), [0x89, 0]);
    }

    /// A budget that never runs out within a test.
    fn ample() -> FrameBudget {
        FrameBudget::new(1_000_000, 64_000_000, 1)
    }

    #[tokio::test]
    async fn held_middle_fragments_are_taken_in_one_run_and_the_rest_read_in_order() {
        let key = [0x11, 0x22, 0x33, 0x44];
        let mut wire = client_frame(false, 0x1, key, b"ab");
        for part in [&b"c"[..], b"", b"defghijklm"] {
            wire.extend(client_frame(false, 0x0, key, part));
        }
        wire.extend(client_frame(true, 0x9, key, b"p"));
        wire.extend(client_frame(false, 0x0, key, b"n"));
        wire.extend(client_frame(true, 0x0, key, b"o"));
        let mut io = Trickle {
            data: wire,
            at: 0,
            step: usize::MAX,
        };
        let (mut r, mut whole, mut budget) = (FrameReader::new(64), loose(64), ample());
        // Nothing is being assembled: nothing is taken.
        assert_eq!(r.take_fragments(&mut whole, &mut budget), Ok(0));
        let first = r.read(&mut io).await.unwrap();
        budget.charge(first.opcode).unwrap();
        assert!(whole.push(first).unwrap().is_none());
        // The three middle fragments (one of them empty), up to the Ping, each charged.
        assert_eq!(r.take_fragments(&mut whole, &mut budget), Ok(3));
        assert_eq!((budget.owed, whole.frames, whole.empties), (4, 4, 1));
        let ping = r.read(&mut io).await.unwrap();
        assert!(matches!(whole.push(ping), Ok(Some(Message::Ping(p))) if &p[..] == b"p"));
        // One more middle fragment; the last is read alone.
        assert_eq!(r.take_fragments(&mut whole, &mut budget), Ok(1));
        assert_eq!(r.take_fragments(&mut whole, &mut budget), Ok(0));
        let last = r.read(&mut io).await.unwrap();
        match whole.push(last).unwrap() {
            Some(Message::Text(p)) => assert_eq!(&p[..], b"abcdefghijklmno"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.read(&mut io).await, Err(ReadError::Gone)));
        // A frame not all in stops the run, and is read whole once the rest arrives.
        let first = client_frame(false, 0x2, key, b"x");
        let middle = client_frame(false, 0x0, key, b"yz");
        let mut data = [first.clone(), middle.clone(), middle].concat();
        data.extend(client_frame(true, 0x0, key, b"!"));
        let mut io = Trickle {
            data,
            at: 0,
            step: first.len() + 10,
        };
        let (mut r, mut whole) = (FrameReader::new(64), loose(64));
        assert!(whole
            .push(r.read(&mut io).await.unwrap())
            .unwrap()
            .is_none());
        assert_eq!(r.take_fragments(&mut whole, &mut budget), Ok(1));
        let f = r.read(&mut io).await.unwrap();
        assert_eq!(
            (f.fin, f.opcode, &f.payload[..]),
            (false, OpCode::Continuation, &b"yz"[..])
        );
    }

    /// What `wire` gives, read frame by frame or with runs: each message (or Ping) and
    /// the refusal that ended it, if any.
    async fn outcome(
        wire: &[u8],
        runs: bool,
        max: usize,
        limits: Fragments,
    ) -> (Vec<Vec<u8>>, Option<Refusal>) {
        let mut io = Trickle {
            data: wire.to_vec(),
            at: 0,
            step: usize::MAX,
        };
        let (mut r, mut whole, mut budget) = (
            FrameReader::new(max),
            Reassembler::new(max, limits),
            ample(),
        );
        let mut got = Vec::new();
        loop {
            if runs {
                if let Err(refusal) = r.take_fragments(&mut whole, &mut budget) {
                    return (got, Some(refusal));
                }
            }
            let frame = match r.read(&mut io).await {
                Ok(f) => f,
                Err(ReadError::Gone) => return (got, None),
                Err(ReadError::Refused(refusal)) => return (got, Some(refusal)),
            };
            match whole.push(frame) {
                Ok(Some(Message::Text(p) | Message::Binary(p) | Message::Ping(p))) => {
                    got.push(p.to_vec());
                }
                Ok(_) => {}
                Err(refusal) => return (got, Some(refusal)),
            }
        }
    }

    #[tokio::test]
    async fn a_run_refuses_what_frame_by_frame_refuses_with_the_same_close() {
        let key = [9, 8, 7, 6];
        let message = |first: u8, parts: &[&[u8]]| {
            let mut w = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                let op = if i == 0 { first } else { 0x0 };
                w.extend(client_frame(i == parts.len() - 1, op, key, part));
            }
            w
        };
        let limits = Fragments { most: 6, empty: 1 };
        let mut reserved = message(0x2, &[b"a", b"b", b"c"]);
        reserved[7] |= 0x40;
        let cases: Vec<(Vec<u8>, Option<u16>)> = vec![
            // A character cut over three fragments.
            (
                message(0x1, &[b"a", &[0xf0, 0x9f], &[0x98], &[0x80], b"z"]),
                None,
            ),
            // An invalid byte, then more fragments than allowed: the byte is refused.
            (
                message(0x1, &[b"a", &[0xff], b"", b"c", b"d", b"e", b"f", b"g"]),
                Some(1007),
            ),
            (
                message(0x1, &[b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h"]),
                Some(1008),
            ),
            (message(0x2, &[b"a", b"", b"", b"b"]), Some(1008)),
            (message(0x2, &[b"abcd", b"efgh", b"ijkl", b"m"]), Some(1009)),
            // A message ending inside a character.
            (message(0x1, &[b"a", &[0xe2, 0x82]]), Some(1007)),
            (reserved, Some(1002)),
            // Two messages; a new message inside one; a fragmented Ping.
            (
                message(0x1, &[b"a", b"b"])
                    .into_iter()
                    .chain(message(0x2, &[b"c"]))
                    .collect(),
                None,
            ),
            (
                [
                    client_frame(false, 0x1, key, b"a"),
                    client_frame(false, 0x2, key, b"b"),
                ]
                .concat(),
                Some(1002),
            ),
            (
                [
                    client_frame(false, 0x1, key, b"a"),
                    client_frame(false, 0x9, key, b""),
                ]
                .concat(),
                Some(1002),
            ),
        ];
        for (i, (wire, code)) in cases.iter().enumerate() {
            let by_frame = outcome(wire, false, 10, limits).await;
            let by_run = outcome(wire, true, 10, limits).await;
            assert_eq!(by_run, by_frame, "case {i}");
            assert_eq!(
                by_run.1.map(|(c, _)| c.code()),
                *code,
                "case {i}: {by_run:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_run_stops_before_a_frame_the_budget_cannot_pay_for() {
        let key = [1, 3, 5, 7];
        let mut wire = client_frame(false, 0x2, key, b"a");
        for i in 0..20u8 {
            wire.extend(client_frame(false, 0x0, key, &[i]));
        }
        let mut io = Trickle {
            data: wire,
            at: 0,
            step: usize::MAX,
        };
        // Ten frames saved, one a second: each frame is paid for as it comes.
        let mut budget = FrameBudget::new(1, 10, 1);
        let (mut r, mut whole) = (FrameReader::new(64), loose(64));
        let first = r.read(&mut io).await.unwrap();
        budget.charge(first.opcode).unwrap();
        assert!(whole.push(first).unwrap().is_none());
        assert_eq!(r.take_fragments(&mut whole, &mut budget), Ok(9));
        assert_eq!((budget.owed, whole.partial.len()), (0, 10));
        // The next frame was neither charged nor taken: read alone, it is over budget.
        let next = r.read(&mut io).await.unwrap();
        assert_eq!(&next.payload[..], &[9]);
        assert!(budget.charge(next.opcode).is_err());
    }

    #[tokio::test]
    async fn a_run_pays_for_its_frames_in_groups_and_stops_where_a_payment_fails() {
        let key = [2, 4, 6, 8];
        let mut wire = client_frame(false, 0x2, key, b"a");
        for i in 0..300u16 {
            wire.extend(client_frame(false, 0x0, key, &[i as u8]));
        }
        let mut io = Trickle {
            data: wire,
            at: 0,
            step: usize::MAX,
        };
        // 256 frames saved, paid for four at a time, one more a second.
        let mut budget = FrameBudget::new(1, 256, 1);
        assert_eq!(budget.group, 4);
        let (mut r, mut whole) = (FrameReader::new(1024), loose(1024));
        let first = r.read(&mut io).await.unwrap();
        budget.charge(first.opcode).unwrap();
        assert!(whole.push(first).unwrap().is_none());
        // Frames 2 to 259 are charged; the 260th falls due with a payment of four that
        // the 256 saved cannot make, as it would frame by frame.
        assert_eq!(r.take_fragments(&mut whole, &mut budget), Ok(258));
        assert_eq!(
            (budget.owed, whole.frames, whole.partial.len()),
            (3, 259, 259)
        );
        assert!(whole.partial[1..]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == i as u8));
        let next = r.read(&mut io).await.unwrap();
        assert_eq!(&next.payload[..], &[2]);
        assert!(budget.charge(next.opcode).is_err());
    }

    #[test]
    fn unmasking_matches_the_rfc_byte_by_byte() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        for n in 0..40 {
            let data: Vec<u8> = (0..n).map(|b| (b * 31) as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, key);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(fast, slow, "{n}");
        }
    }
}
