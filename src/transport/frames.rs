//! Inbound WebSocket frames to whole messages, for every endpoint (subscribers and
//! publishers): fragments reassembled up to the endpoint's size limit, text checked for
//! UTF-8, control frames passed through.
//!
//! fastwebsockets' own collector has no limit on a message's total size across
//! fragments, so the endpoints share this one instead.

use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};

use crate::protocol::CloseCode;

/// One whole inbound message, or a control frame.
#[derive(Debug)]
pub enum Message<'a> {
    /// A text message (valid UTF-8), in one piece.
    Text(Payload<'a>),
    /// A text message whose payload is not UTF-8.
    BadUtf8,
    /// A binary message.
    Binary(Payload<'a>),
    /// A Ping with its payload (to be answered with a Pong).
    Ping(Payload<'a>),
    /// A Pong.
    Pong,
    /// The client's Close.
    Close,
}

/// Why a connection must close, with the code to close it with.
pub type Refusal = (CloseCode, &'static str);

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

    /// Takes one frame; a whole message once its last fragment is in, `None` while one
    /// is being assembled, or the refusal that must close the connection.
    pub fn push<'a>(&mut self, frame: Frame<'a>) -> Result<Option<Message<'a>>, Refusal> {
        let (op, fin) = (frame.opcode, frame.fin);
        match op {
            OpCode::Close => return Ok(Some(Message::Close)),
            OpCode::Ping => return Ok(Some(Message::Ping(frame.payload))),
            OpCode::Pong => return Ok(Some(Message::Pong)),
            OpCode::Text | OpCode::Binary if fin && self.op.is_none() => {
                if frame.payload.len() > self.max {
                    return Err(too_big());
                }
                return Ok(Some(match op {
                    OpCode::Binary => Message::Binary(frame.payload),
                    _ => Message::Text(frame.payload),
                }));
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {}
        }
        let starts = op != OpCode::Continuation;
        if starts == self.op.is_some() {
            return Err((CloseCode::ProtocolError, "unexpected continuation frame"));
        }
        if starts {
            self.op = Some(op);
            self.partial.clear();
        }
        if self.partial.len() + frame.payload.len() > self.max {
            return Err(too_big());
        }
        self.partial.extend_from_slice(&frame.payload);
        if !fin {
            return Ok(None);
        }
        let whole = std::mem::take(&mut self.partial);
        Ok(Some(match self.op.take() {
            Some(OpCode::Binary) => Message::Binary(Payload::Owned(whole)),
            _ if std::str::from_utf8(&whole).is_err() => Message::BadUtf8,
            _ => Message::Text(Payload::Owned(whole)),
        }))
    }
}

/// What a read error means for the connection: a message to answer (a text frame that
/// is not UTF-8), or the refusal to close with; `Err(None)` when the connection is gone.
pub fn read_error<'a>(e: WebSocketError) -> Result<Message<'a>, Option<Refusal>> {
    match e {
        WebSocketError::FrameTooLarge => Err(Some(too_big())),
        WebSocketError::InvalidUTF8 => Ok(Message::BadUtf8),
        _ => Err(None),
    }
}

fn too_big() -> Refusal {
    (CloseCode::TooBig, "message too big")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, op: OpCode, data: &[u8]) -> Frame<'static> {
        Frame::new(fin, op, None, Payload::Owned(data.to_vec()))
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
        assert_eq!(
            r.push(frame(true, OpCode::Continuation, b"6789"))
                .unwrap_err()
                .0,
            CloseCode::TooBig
        );
        let mut r = Reassembler::new(8);
        assert_eq!(
            r.push(frame(true, OpCode::Continuation, b"x"))
                .unwrap_err()
                .0,
            CloseCode::ProtocolError
        );
        assert!(r
            .push(frame(false, OpCode::Text, &[0xe2, 0x82]))
            .unwrap()
            .is_none());
        assert!(matches!(
            r.push(frame(true, OpCode::Continuation, &[0xac])),
            Ok(Some(Message::Text(_)))
        ));
        assert!(r
            .push(frame(false, OpCode::Text, &[0xff]))
            .unwrap()
            .is_none());
        assert!(matches!(
            r.push(frame(true, OpCode::Continuation, b"a")),
            Ok(Some(Message::BadUtf8))
        ));
    }
}
