//! WebSocket frames on the server's side of a connection, for every endpoint
//! (subscribers and publishers), held to RFC 6455.
//!
//! - [`FrameReader`] reads the client's frames. It holds bytes only while a frame is
//!   incomplete: a read lands on the stack first, so an idle connection keeps no read
//!   buffer at all. Reserved bits, reserved opcodes, a frame over the endpoint's size
//!   limit and a control frame over 125 bytes are refused from the header, before the
//!   payload is read.
//! - [`Reassembler`] turns frames into whole messages: fragments reassembled up to the
//!   endpoint's size limit, text checked for UTF-8, control frames checked (at most 125
//!   bytes, never fragmented, a Close's code and reason valid) and passed through, client
//!   frames required to be masked.
//! - [`seal`] and [`control`] make the server's frames (unmasked, never fragmented), and
//!   [`send`] writes one within the send timeout.
//!
//! Every breach is a [`Refusal`] with the RFC's close code.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Poll};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
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

/// Reassembles fragmented messages, bounded by the endpoint's largest message.
#[derive(Debug)]
pub struct Reassembler {
    max: usize,
    partial: Vec<u8>,
    op: Option<OpCode>,
}

impl Reassembler {
    /// Messages of at most `max` bytes.
    pub fn new(max: usize) -> Reassembler {
        Reassembler {
            max,
            partial: Vec::new(),
            op: None,
        }
    }

    /// Takes one frame (from a [`FrameReader`]); a whole message once
    /// its last fragment is in, `None` while one is being assembled, or the refusal that
    /// must close the connection.
    pub fn push<'a>(&mut self, mut frame: Frame<'a>) -> Result<Option<Message<'a>>, Refusal> {
        if !masked(&mut frame) {
            return Err((CloseCode::ProtocolError, "client frames must be masked"));
        }
        let (op, fin) = (frame.opcode, frame.fin);
        match op {
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                if !fin {
                    return Err((CloseCode::ProtocolError, "fragmented control frame"));
                }
                if frame.payload.len() > MAX_CONTROL {
                    return Err((CloseCode::ProtocolError, "control frame over 125 bytes"));
                }
                return Ok(Some(match op {
                    OpCode::Close => {
                        check_close(&frame.payload)?;
                        Message::Close
                    }
                    OpCode::Ping => Message::Ping(frame.payload),
                    _ => Message::Pong,
                }));
            }
            OpCode::Text | OpCode::Binary if fin && self.op.is_none() => {
                if frame.payload.len() > self.max {
                    return Err(too_big());
                }
                if op == OpCode::Text && std::str::from_utf8(&frame.payload).is_err() {
                    return Err(bad_utf8());
                }
                return Ok(Some(match op {
                    OpCode::Binary => Message::Binary(frame.payload),
                    _ => Message::Text(frame.payload),
                }));
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {}
        }
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
        }
        if self.partial.len() + frame.payload.len() > self.max {
            return Err(too_big());
        }
        self.partial.extend_from_slice(&frame.payload);
        if self.op == Some(OpCode::Text) && !utf8_so_far(&self.partial, fin) {
            return Err(bad_utf8());
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
}

/// Whether the frame came with a masking key (every client frame must, RFC 6455 §5.1).
fn masked(frame: &mut Frame<'_>) -> bool {
    // fastwebsockets keeps the key private; its header encoding shows whether there is one.
    let mut head = [0u8; 14];
    frame.fmt_head(&mut head);
    head[1] & 0x80 != 0
}

/// Whether text is valid UTF-8 so far: a complete message must be; a partial one may end
/// inside a character, but nothing before that may be invalid (fail fast, §8.1).
fn utf8_so_far(text: &[u8], fin: bool) -> bool {
    match std::str::from_utf8(text) {
        Ok(_) => true,
        Err(e) => !fin && e.error_len().is_none(),
    }
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

/// Reads and drops what the client sends after the server's Close, until the client's
/// own Close, EOF or an error. A stream that no longer parses as frames (the close was
/// for broken framing) is left unread: the caller's bound on the time is then what the
/// client has to read the Close before the connection goes. The caller bounds the time.
pub async fn discard<S: AsyncRead + Unpin>(mut reader: FrameReader, mut io: S) {
    loop {
        match reader.read(&mut io).await {
            Ok(frame) if frame.opcode == OpCode::Close => return,
            Ok(_) => {}
            Err(ReadError::Gone) => return,
            Err(ReadError::Refused(_)) => return std::future::pending().await,
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
        }
    }

    /// Reads the next frame, its payload unmasked. Cancel-safe: bytes read are kept for
    /// the next call.
    pub async fn read<S: AsyncRead + Unpin>(&mut self, io: &mut S) -> Result<Frame<'_>, ReadError> {
        self.release();
        let head = loop {
            let need = match self.head()? {
                Some(h) if self.buf.len() - self.pos >= h.len + h.payload => break h,
                Some(h) => h.len + h.payload,
                None => 14,
            };
            self.fill(io, need).await?;
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

    /// Frees what the frames already read used: an idle connection holds no buffer.
    fn release(&mut self) {
        if self.pos == self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    /// The header of the next frame, once it is all in.
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
                Some(n) => (u64::from_be_bytes(n.try_into().expect("8 bytes")), 10),
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
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

    /// Reads more, towards `need` bytes from the frame's start.
    async fn fill<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        need: usize,
    ) -> Result<(), ReadError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let read = poll_fn(|cx| {
            if self.buf.is_empty() {
                // Nothing held: read on the stack, and keep only what arrived.
                let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
                let mut rb = ReadBuf::uninit(&mut stack);
                ready!(Pin::new(&mut *io).poll_read(cx, &mut rb))?;
                self.buf.extend_from_slice(rb.filled());
                return Poll::Ready(Ok::<usize, std::io::Error>(rb.filled().len()));
            }
            self.buf
                .reserve(need.saturating_sub(self.buf.len()).max(STACK_READ));
            tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut self.buf)
        })
        .await;
        match read {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(ReadError::Gone),
        }
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

    #[test]
    fn fragments_become_one_message_within_the_limit() {
        let mut r = Reassembler::new(8);
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
        let mut r = Reassembler::new(8);
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
        let mut r = Reassembler::new(8);
        assert!(r
            .push(frame(false, OpCode::Text, &[0xe2]))
            .unwrap()
            .is_none());
        let cut = frame(true, OpCode::Continuation, &[0x82]);
        assert_eq!(refused(&mut r, cut), CloseCode::InvalidData);
    }

    #[test]
    fn control_frames_and_masking_follow_the_rfc() {
        let mut r = Reassembler::new(1024);
        let unmasked = Frame::new(true, OpCode::Text, None, Payload::Owned(b"x".to_vec()));
        assert_eq!(refused(&mut r, unmasked), CloseCode::ProtocolError);
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
            // A masked frame stays marked as masked for the reassembler's check.
            let mut whole = Reassembler::new(16);
            let ping = Frame::new(true, OpCode::Ping, Some(key), Payload::Owned(b"p".to_vec()));
            assert!(whole.push(ping).is_ok());
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
        // 1 GiB announced, 14 bytes sent.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 30).to_be_bytes());
        huge.extend_from_slice(&key);
        assert_eq!(refused(huge, 1 << 20).await.0, CloseCode::TooBig);
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
            let mut r = FrameReader::new(1 << 17);
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
        let mut r = FrameReader::new(125);
        let f = r.read(&mut io).await.unwrap();
        assert_eq!(f.opcode, OpCode::Close);
        assert_eq!(&f.payload[..2], &4008u16.to_be_bytes());
        assert_eq!(&f.payload[2..], b"slow consumer");
        assert_eq!(control(OpCode::Ping, &[]), [0x89, 0]);
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
