//! The replies a subscription link reads, in RESP2 (the protocol of a connection in
//! subscribed mode): what arrives is an array of bulk strings and integers (a message,
//! a confirmation, a `pong`) or an error line. Parsed in place from the read buffer, one
//! frame at a time, without copying a payload; a frame that does not fit what a
//! subscription connection receives is a protocol error (the link is dropped and made
//! again).
//!
//! A message's payload is its array's last element. One larger than the link's limit is
//! not buffered: [`Parsed::Oversize`] says how many bytes to step over, and the frame is
//! complete once they are gone.

use std::ops::Range;

/// Most elements an array of a subscription connection holds (`pmessage` has four).
const MAX_ITEMS: usize = 8;

/// Longest header or error line read before it is called broken.
const MAX_LINE: usize = 4096;

/// One element of an array frame: where its bytes are in the buffer, or an integer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A bulk or simple string: its bytes in the buffer.
    Bytes(Range<usize>),
    /// An integer.
    Int(i64),
    /// A null bulk string or array.
    Null,
}

/// One whole frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// An array (messages, confirmations, `pong`).
    Array(Vec<Item>),
    /// An error reply (`-MOVED 3999 127.0.0.1:7001`): the line without its `-`.
    Error(Range<usize>),
    /// A simple string, integer or bulk string on its own (not sent in subscribed
    /// mode; kept so that a reply to something else is not a protocol error).
    Other,
}

/// What [`parse`] found at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not all of the next frame is in yet.
    Incomplete,
    /// A frame, and how many bytes of the buffer it took.
    Frame(Frame, usize),
    /// An array whose last element is a bulk string over the limit: the header and the
    /// elements before it took `consumed` bytes; the next `skip` bytes are the payload
    /// and its line end, to be dropped. `items` are the elements before it.
    Oversize {
        /// Elements before the payload.
        items: Vec<Item>,
        /// Bytes of the buffer taken so far.
        consumed: usize,
        /// Bytes still to drop (payload and `\r\n`).
        skip: usize,
    },
}

/// A stream that is not RESP2, or not what a subscription connection receives.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
pub struct ProtocolError(pub &'static str);

/// Parses the frame at the start of `buf`; bulk strings longer than `max_payload` are
/// only allowed as an array's last element, and are not waited for (see
/// [`Parsed::Oversize`]).
pub fn parse(buf: &[u8], max_payload: usize) -> Result<Parsed, ProtocolError> {
    let Some((first, mut at)) = line(buf, 0)? else {
        return Ok(Parsed::Incomplete);
    };
    let (kind, rest) = (first.start, first.start + 1..first.end);
    match buf[kind] {
        b'-' => Ok(Parsed::Frame(Frame::Error(rest), at)),
        b'+' | b':' => Ok(Parsed::Frame(Frame::Other, at)),
        b'$' => match bulk(buf, at, number(&buf[rest])?, usize::MAX)? {
            Some((_, end)) => Ok(Parsed::Frame(Frame::Other, end)),
            None => Ok(Parsed::Incomplete),
        },
        b'*' | b'>' => {
            let n = number(&buf[rest])?;
            if n < 0 {
                return Ok(Parsed::Frame(Frame::Array(Vec::new()), at));
            }
            let n = n as usize;
            if n > MAX_ITEMS {
                return Err(ProtocolError("an array longer than a message"));
            }
            let mut items = Vec::with_capacity(n);
            for i in 0..n {
                let Some((head, next)) = line(buf, at)? else {
                    return Ok(Parsed::Incomplete);
                };
                let body = head.start + 1..head.end;
                match buf[head.start] {
                    b'$' => {
                        let len = number(&buf[body])?;
                        let last = i + 1 == n;
                        if last && len > 0 && len as usize > max_payload {
                            return Ok(Parsed::Oversize {
                                items,
                                consumed: next,
                                skip: len as usize + 2,
                            });
                        }
                        let limit = if last { max_payload } else { MAX_LINE };
                        match bulk(buf, next, len, limit)? {
                            Some((item, end)) => {
                                items.push(item);
                                at = end;
                            }
                            None => return Ok(Parsed::Incomplete),
                        }
                    }
                    b':' => {
                        items.push(Item::Int(number(&buf[body])?));
                        at = next;
                    }
                    b'+' => {
                        items.push(Item::Bytes(body));
                        at = next;
                    }
                    _ => return Err(ProtocolError("a nested or unknown element")),
                }
            }
            Ok(Parsed::Frame(Frame::Array(items), at))
        }
        _ => Err(ProtocolError("an unknown reply type")),
    }
}

/// The line starting at `from` (without `\r\n`) and where the next one starts.
fn line(buf: &[u8], from: usize) -> Result<Option<(Range<usize>, usize)>, ProtocolError> {
    let window = &buf[from..buf.len().min(from + MAX_LINE)];
    match memchr::memchr(b'\n', window) {
        Some(i) if i >= 2 && window[i - 1] == b'\r' => Ok(Some((from..from + i - 1, from + i + 1))),
        Some(_) => Err(ProtocolError("an empty line, or one not ended by CRLF")),
        None if window.len() == MAX_LINE => Err(ProtocolError("a line too long")),
        None => Ok(None),
    }
}

/// A bulk string of `len` bytes starting at `from`: its item and where it ends.
fn bulk(
    buf: &[u8],
    from: usize,
    len: i64,
    limit: usize,
) -> Result<Option<(Item, usize)>, ProtocolError> {
    if len < 0 {
        return Ok(Some((Item::Null, from)));
    }
    let len = len as usize;
    if len > limit {
        return Err(ProtocolError("a string longer than allowed here"));
    }
    let end = from + len;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(ProtocolError("a string not ended by CRLF"));
    }
    Ok(Some((Item::Bytes(from..end), end + 2)))
}

fn number(digits: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ProtocolError("a length or integer that is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text<'a>(buf: &'a [u8], item: &Item) -> &'a str {
        match item {
            Item::Bytes(r) => std::str::from_utf8(&buf[r.clone()]).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn messages_confirmations_and_errors_parse_whatever_the_pieces() {
        let wire: &[u8] = b"*3\r\n$8\r\nsmessage\r\n$9\r\nt:{AAPL}x\r\n$5\r\nhello\r\n\
*3\r\n$12\r\nsunsubscribe\r\n$2\r\nch\r\n:0\r\n\
-MOVED 3999 127.0.0.1:7001\r\n\
*2\r\n$4\r\npong\r\n$0\r\n\r\n";
        // Every prefix is incomplete or a whole first frame; never an error.
        for cut in 0..wire.len() {
            match parse(&wire[..cut], 64).unwrap() {
                Parsed::Incomplete => {}
                Parsed::Frame(_, n) => assert!(n <= cut),
                other => panic!("{other:?}"),
            }
        }
        let mut at = 0;
        let mut seen = Vec::new();
        while at < wire.len() {
            let Parsed::Frame(f, n) = parse(&wire[at..], 64).unwrap() else {
                panic!("whole frames")
            };
            let b = &wire[at..];
            seen.push(match f {
                Frame::Array(items) => items
                    .iter()
                    .map(|i| match i {
                        Item::Int(n) => n.to_string(),
                        i => text(b, i).to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                Frame::Error(r) => format!("error {}", std::str::from_utf8(&b[r]).unwrap()),
                Frame::Other => "other".into(),
            });
            at += n;
        }
        assert_eq!(
            seen,
            [
                "smessage t:{AAPL}x hello",
                "sunsubscribe ch 0",
                "error MOVED 3999 127.0.0.1:7001",
                "pong ",
            ]
        );
    }

    #[test]
    fn an_oversize_payload_is_stepped_over_not_awaited() {
        let wire = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$100\r\n";
        match parse(wire, 10).unwrap() {
            Parsed::Oversize {
                items,
                consumed,
                skip,
            } => {
                assert_eq!(items.len(), 2);
                assert_eq!(consumed, wire.len());
                assert_eq!(skip, 102);
            }
            other => panic!("{other:?}"),
        }
        // Not in last place: a channel name over the line limit is broken.
        let long = format!("*3\r\n$5000\r\n{}\r\n$1\r\nx\r\n:1\r\n", "c".repeat(5000));
        assert!(parse(long.as_bytes(), 10).is_err());
    }

    #[test]
    fn what_a_subscription_never_receives_is_a_protocol_error() {
        for bad in [
            &b"*9\r\n"[..],
            b"*1\r\n*1\r\n:1\r\n",
            b"%1\r\n",
            b"*1\r\n$x\r\n",
            b"*1\r\n$1\r\nab\r\n",
            b"\r\n",
            b"*1\n",
        ] {
            assert!(parse(bad, 64).is_err(), "{bad:?}");
        }
        let long_line = vec![b'+'; MAX_LINE + 1];
        assert!(parse(&long_line, 64).is_err());
    }
}
