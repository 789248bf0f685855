//! Inbound WebSocket frames to whole messages, for every endpoint (subscribers and
//! publishers), held to RFC 6455: fragments reassembled up to the endpoint's size
//! limit, text checked for UTF-8, control frames checked (at most 125 bytes, never
//! fragmented, a Close's code and reason valid) and passed through. Every breach is a
//! [`Refusal`] with the RFC's close code; fastwebsockets' own read errors map to the
//! same codes in [`read_error`].
//!
//! fastwebsockets' own collector has no limit on a message's total size across
//! fragments, and it does not check that client frames are masked nor the size of
//! Close and Pong frames, so the endpoints share this one instead.

use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketRead};
use tokio::io::{AsyncRead, AsyncReadExt};

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

    /// Takes one frame (read with fastwebsockets' auto-close off); a whole message once
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

/// What a fastwebsockets read error means for the connection: the refusal to close
/// with, or `None` when the connection is gone (EOF, I/O error).
pub fn read_error(e: WebSocketError) -> Option<Refusal> {
    use WebSocketError as E;
    let protocol = |why| Some((CloseCode::ProtocolError, why));
    match e {
        E::FrameTooLarge => Some(too_big()),
        E::InvalidUTF8 => Some(bad_utf8()),
        E::ReservedBitsNotZero => protocol("reserved bits set"),
        E::InvalidValue => protocol("reserved opcode"),
        E::ControlFrameFragmented => protocol("fragmented control frame"),
        E::PingFrameTooLarge => protocol("control frame over 125 bytes"),
        E::InvalidFragment | E::InvalidContinuationFrame => protocol("invalid fragment"),
        E::InvalidCloseFrame => protocol("close payload of one byte"),
        E::InvalidCloseCode => protocol("invalid close code"),
        _ => None,
    }
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
pub async fn discard<S: AsyncRead + Unpin>(mut read: WebSocketRead<S>) {
    loop {
        let got = read
            .read_frame::<_, std::io::Error>(&mut |_| std::future::ready(Ok(())))
            .await;
        match got {
            Ok(frame) if frame.opcode == OpCode::Close => return,
            Ok(_) => {}
            Err(e) => match read_error(e) {
                None => return,
                Some(_) => return std::future::pending().await,
            },
        }
    }
}

/// Reads and drops raw bytes until EOF or an error.
pub async fn drain<R: AsyncRead + Unpin>(mut read: R) {
    let mut buf = vec![0u8; 4096];
    while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
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
}
