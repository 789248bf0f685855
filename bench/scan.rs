//! Reading a server's JSON frame for the checks: only `type`, `symbol`, `seq`, `ts`, a
//! paced tick's `skipped`, a book update's `prev_seq` and a gap's `from`, `to`, `reason`
//! and `channel` are read; every other value (a book's levels too) is stepped over
//! without being decoded.
//!
//! At a million messages a second the receiving side shares one core with the publisher
//! and `redis-server`; a full parse, which decodes every price, cost half of that core.
//! The fast path here walks the frame once and borrows the strings it keeps. It hands
//! a frame to simd-json whenever anything is not plain: an escaped string, a number in
//! a field the checks read that is not a plain integer, a field twice, a value of the
//! wrong kind, or a frame that is not an array of objects. simd-json's answer is then
//! the answer, so a frame it rejects is an error here too. Values the checks skip are
//! only delimited (strings to their closing quote, nested values by depth, numbers and
//! literals to the next delimiter), not validated; a tick's object is left for its
//! closing brace as soon as its type, symbol, seq and ts are read, and a `skipped` is
//! then looked for where tickstream writes it, as the object's last field.

use std::borrow::Cow;

use serde::Deserialize;

/// One message as far as the checks read it.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Msg<'a> {
    #[serde(rename = "type", borrow)]
    pub ty: Cow<'a, str>,
    #[serde(default, borrow)]
    pub symbol: Option<Cow<'a, str>>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub ts: Option<u64>,
    #[serde(default)]
    pub from: Option<u64>,
    #[serde(default)]
    pub to: Option<u64>,
    #[serde(default, borrow)]
    pub reason: Option<Cow<'a, str>>,
    /// On a paced tick: the ticks folded into it.
    #[serde(default)]
    pub skipped: Option<u64>,
    /// On a `book_update`: the seq of the book it applies to.
    #[serde(default)]
    pub prev_seq: Option<u64>,
    /// On a `gap` or `status`: the channel it is about (absent: ticks).
    #[serde(default, borrow)]
    pub channel: Option<Cow<'a, str>>,
    /// On a `status`: `stale` or `live`.
    #[serde(default, borrow)]
    pub state: Option<Cow<'a, str>>,
}

impl<'a> Msg<'a> {
    /// A message of type `ty` with none of the other fields.
    pub fn of(ty: &'a str) -> Msg<'a> {
        Msg {
            ty: Cow::Borrowed(ty),
            symbol: None,
            seq: None,
            ts: None,
            from: None,
            to: None,
            reason: None,
            skipped: None,
            prev_seq: None,
            channel: None,
            state: None,
        }
    }

    fn into_owned(self) -> Msg<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        Msg {
            ty: own(self.ty),
            symbol: self.symbol.map(own),
            seq: self.seq,
            ts: self.ts,
            from: self.from,
            to: self.to,
            reason: self.reason.map(own),
            skipped: self.skipped,
            prev_seq: self.prev_seq,
            channel: self.channel.map(own),
            state: self.state.map(own),
        }
    }
}

/// The messages of one text frame, in order.
pub fn messages(frame: &[u8]) -> Result<Vec<Msg<'_>>, simd_json::Error> {
    if let Some(msgs) = Scanner::new(frame).and_then(Scanner::frame) {
        return Ok(msgs);
    }
    let mut copy = frame.to_vec();
    let msgs: Vec<Msg> = simd_json::serde::from_slice(&mut copy)?;
    Ok(msgs.into_iter().map(Msg::into_owned).collect())
}

/// The fast path; `None` hands the frame to simd-json.
struct Scanner<'a> {
    /// The frame, checked as UTF-8 once: a string's bounds are ASCII quotes, so each
    /// string kept is a slice of it.
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

/// Which of `Msg`'s fields a key names.
#[derive(Clone, Copy)]
enum Field {
    Ty,
    Symbol,
    Seq,
    Ts,
    From,
    To,
    Reason,
    Skipped,
    PrevSeq,
    Channel,
    State,
    Other,
}

impl Field {
    fn of(key: &[u8]) -> Field {
        match key {
            b"type" => Field::Ty,
            b"symbol" => Field::Symbol,
            b"seq" => Field::Seq,
            b"ts" => Field::Ts,
            b"from" => Field::From,
            b"to" => Field::To,
            b"reason" => Field::Reason,
            b"skipped" => Field::Skipped,
            b"prev_seq" => Field::PrevSeq,
            b"channel" => Field::Channel,
            b"state" => Field::State,
            _ => Field::Other,
        }
    }
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8]) -> Option<Self> {
        let s = simdutf8::basic::from_utf8(b).ok()?;
        Some(Scanner { s, b, i: 0 })
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// Skips white space and returns the next byte, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// After an element of an array or object: a `,` (more follow: false) or `close`
    /// (it ended: true), consumed; `None` for anything else.
    fn ended(&mut self, close: u8) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.i += 1;
                Some(false)
            }
            c if c == close => {
                self.i += 1;
                Some(true)
            }
            _ => None,
        }
    }

    fn frame(mut self) -> Option<Vec<Msg<'a>>> {
        self.eat(b'[')?;
        // A server's tick takes some 150 bytes.
        let mut out = Vec::with_capacity(self.b.len() / 128 + 1);
        if self.peek()? == b']' {
            self.i += 1;
        } else {
            loop {
                out.push(self.object()?);
                if self.ended(b']')? {
                    break;
                }
            }
        }
        (self.peek().is_none()).then_some(out)
    }

    fn object(&mut self) -> Option<Msg<'a>> {
        self.eat(b'{')?;
        let mut ty = None;
        let mut m = Msg::of("");
        if self.peek()? == b'}' {
            self.i += 1;
            return None; // no `type`: simd-json says so
        }
        loop {
            let key = self.key()?;
            self.eat(b':')?;
            match Field::of(key) {
                Field::Ty => set(&mut ty, self.str_value()?)?,
                Field::Symbol => set(&mut m.symbol, Cow::Borrowed(self.str_value()?))?,
                Field::Reason => set(&mut m.reason, Cow::Borrowed(self.str_value()?))?,
                Field::Seq => set(&mut m.seq, self.integer()?)?,
                Field::Ts => set(&mut m.ts, self.integer()?)?,
                Field::From => set(&mut m.from, self.integer()?)?,
                Field::To => set(&mut m.to, self.integer()?)?,
                Field::Skipped => set(&mut m.skipped, self.integer()?)?,
                Field::PrevSeq => set(&mut m.prev_seq, self.integer()?)?,
                Field::Channel => set(&mut m.channel, Cow::Borrowed(self.str_value()?))?,
                Field::State => set(&mut m.state, Cow::Borrowed(self.str_value()?))?,
                Field::Other => self.skip_value()?,
            }
            if ty == Some("tick") && m.symbol.is_some() && m.seq.is_some() && m.ts.is_some() {
                // All a tick's checks read: the prices and sizes after them are not
                // looked at, only stepped over to the object's end.
                self.skip_to_object_end()?;
                if m.skipped.is_none() {
                    m.skipped = self.trailing_skipped();
                }
                break;
            }
            if book_read(ty, &m) {
                // A book's levels are not looked at: stepped over to the object's end.
                self.skip_to_object_end()?;
                break;
            }
            if self.ended(b'}')? {
                break;
            }
        }
        m.ty = Cow::Borrowed(ty?);
        Some(m)
    }

    /// Just past an object's closing brace: the value of `"skipped"` when it is the
    /// object's last field (where tickstream puts it), read backwards from the brace.
    fn trailing_skipped(&self) -> Option<u64> {
        const KEY: &[u8] = b"\"skipped\":";
        let end = self.i.checked_sub(1)?;
        let digits = self.b[..end]
            .iter()
            .rev()
            .take_while(|c| c.is_ascii_digit())
            .count();
        let start = end - digits;
        if digits == 0 || digits > 19 || !self.b[..start].ends_with(KEY) {
            return None;
        }
        std::str::from_utf8(&self.b[start..end]).ok()?.parse().ok()
    }

    /// A string value without escapes, borrowed.
    fn str_value(&mut self) -> Option<&'a str> {
        let r = self.plain_string()?;
        self.s.get(r)
    }

    /// A key without escapes, as bytes.
    fn key(&mut self) -> Option<&'a [u8]> {
        let r = self.plain_string()?;
        Some(&self.b[r])
    }

    /// Where a string without escapes lies, quotes excluded.
    fn plain_string(&mut self) -> Option<std::ops::Range<usize>> {
        self.eat(b'"')?;
        let start = self.i;
        // Keys and the values read are short: a plain search beats memchr's set-up.
        let n = self.b[start..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\')?;
        if self.b[start + n] != b'"' {
            return None;
        }
        self.i = start + n + 1;
        Some(start..start + n)
    }

    /// A plain unsigned integer that fits a u64.
    fn integer(&mut self) -> Option<u64> {
        self.ws();
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(&d @ b'0'..=b'9') = self.b.get(self.i) {
            // Up to 19 digits cannot overflow; a 20th is checked.
            v = if self.i - start < 19 {
                v * 10 + u64::from(d - b'0')
            } else {
                v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?
            };
            self.i += 1;
        }
        let digits = self.i - start;
        // A leading zero, a fraction or an exponent: simd-json decides.
        if digits == 0 || (digits > 1 && self.b[start] == b'0') {
            return None;
        }
        match self.b.get(self.i) {
            Some(b'.' | b'e' | b'E') => None,
            _ => Some(v),
        }
    }

    /// Steps over one value without decoding it.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.skip_string_body()
            }
            b'{' | b'[' => {
                self.i += 1;
                self.close_nested(1)
            }
            _ => {
                let start = self.i;
                while let Some(b'0'..=b'9' | b'a'..=b'z' | b'E' | b'.' | b'+' | b'-') =
                    self.b.get(self.i)
                {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    /// Inside an object, outside a string: to just past the object's closing brace.
    fn skip_to_object_end(&mut self) -> Option<()> {
        // The common case, in a few vector passes: the next `}` closes the object when
        // nothing before it opens an object or escapes a quote, and its quotes pair up
        // (so the brace is not inside a string).
        let rest = &self.b[self.i..];
        if let Some(end) = memchr::memchr(b'}', rest) {
            let span = &rest[..end];
            if memchr::memchr2(b'{', b'\\', span).is_none()
                && span.iter().filter(|&&c| c == b'"').count() % 2 == 0
            {
                self.i += end + 1;
                return Some(());
            }
        }
        // Otherwise step by step.
        self.close_nested(1)
    }

    /// Inside `depth` open objects or arrays, outside a string: to just past the
    /// bracket that closes the outermost of them.
    fn close_nested(&mut self, mut depth: usize) -> Option<()> {
        loop {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            match c {
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(());
                    }
                }
                b'"' => self.skip_string_body()?,
                _ => {}
            }
        }
    }

    /// After an opening quote: to just past the closing one, stepping over escapes.
    fn skip_string_body(&mut self) -> Option<()> {
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
    }
}

/// Whether all a book message's checks read has been read: its symbol, seq and ts (and
/// an update's `prev_seq`).
fn book_read(ty: Option<&str>, m: &Msg<'_>) -> bool {
    let head = m.symbol.is_some() && m.seq.is_some() && m.ts.is_some();
    match ty {
        Some("book") => head,
        Some("book_update") => head && m.prev_seq.is_some(),
        _ => false,
    }
}

/// Sets a field once; a field twice goes to simd-json.
fn set<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(frame: &str) -> Result<Vec<Msg<'static>>, simd_json::Error> {
        let mut b = frame.as_bytes().to_vec();
        let msgs: Vec<Msg> = simd_json::serde::from_slice(&mut b)?;
        Ok(msgs.into_iter().map(Msg::into_owned).collect())
    }

    fn fast(frame: &str) -> Option<Vec<Msg<'_>>> {
        Scanner::new(frame.as_bytes())?.frame()
    }

    const TICKS: &str = r#"[{"type":"tick","symbol":"AAPL","epoch":"e1","seq":1043,"ts":1764284400124456789,"bid":189.10,"ask":189.13,"bid_size":300,"ask_size":100,"last":189.12,"last_size":25,"volume":1234592},
 {"type":"tick","symbol":"MSFT","seq":88,"ts":1764284400124461000,"bid":4.1e2,"x":{"y":[1,{"z":"]}"}],"n":null},"ok":true}]"#;

    #[test]
    fn the_fast_path_reads_what_a_full_parse_reads() {
        let frames = [
            TICKS,
            r#"[{"type":"gap","symbol":"A","from":6,"to":9,"reason":"slow_consumer"}]"#,
            r#"[{"type":"subscribed","id":1,"symbols":["A","B"]}]"#,
            r#" [ { "type" : "tick" , "symbol" : "A" , "seq" : 0 , "ts" : 18446744073709551615 } ] "#,
            r#"[]"#,
        ];
        for f in frames {
            let got = fast(f).unwrap_or_else(|| panic!("fast path refused {f}"));
            assert_eq!(got, full(f).unwrap(), "{f}");
            assert_eq!(messages(f.as_bytes()).unwrap(), got);
        }
        let got = fast(TICKS).unwrap();
        assert_eq!(got[0].symbol.as_deref(), Some("AAPL"));
        assert_eq!(
            (got[0].seq, got[0].ts),
            (Some(1043), Some(1764284400124456789))
        );
        assert_eq!(got[1].seq, Some(88));
        assert!(matches!(got[0].ty, Cow::Borrowed("tick")));
    }

    #[test]
    fn a_ticks_trailing_fields_are_stepped_over_braces_in_strings_and_all() {
        let f = r#"[{"type":"tick","symbol":"A","seq":1,"ts":2,"note":"}{","p":{"q":"}","r":[{}]}},{"type":"tick","symbol":"B","seq":7,"ts":3}]"#;
        let got = fast(f).unwrap();
        assert_eq!(got, full(f).unwrap());
        assert_eq!(got.len(), 2);
        assert_eq!((got[1].symbol.as_deref(), got[1].seq), (Some("B"), Some(7)));
        // An escaped quote before a brace in a string.
        let f = r#"[{"type":"tick","symbol":"A","seq":1,"ts":2,"n":"\"}"},{"type":"tick","symbol":"C","seq":2,"ts":3}]"#;
        let got = fast(f).unwrap();
        assert_eq!(got, full(f).unwrap());
        assert_eq!(got[1].symbol.as_deref(), Some("C"));
    }

    #[test]
    fn a_paced_ticks_skipped_is_read_on_the_fast_path() {
        let f = r#"[{"type":"tick","symbol":"A","seq":9,"ts":2,"bid":1.5,"volume":7,"skipped":4},{"type":"tick","symbol":"B","seq":3,"ts":2,"volume":1},{"type":"tick","skipped":2,"symbol":"C","seq":5,"ts":2}]"#;
        let got = fast(f).unwrap();
        assert_eq!(got, full(f).unwrap());
        let skipped: Vec<Option<u64>> = got.iter().map(|m| m.skipped).collect();
        assert_eq!(skipped, [Some(4), None, Some(2)]);
        // A number ending another field is not taken for it.
        let f = r#"[{"type":"tick","symbol":"A","seq":9,"ts":2,"not_skipped":4}]"#;
        assert_eq!(fast(f).unwrap()[0].skipped, None);
    }

    #[test]
    fn a_books_head_is_read_and_its_levels_stepped_over() {
        let f = r#"[{"type":"book","symbol":"B00001","epoch":"e1","seq":1,"ts":7,"bids":[[99.99,100],[99.98,200]],"asks":[[100.00,100]],"checksum":12},{"type":"book_update","symbol":"B00001","epoch":"e1","seq":2,"prev_seq":1,"ts":8,"bids":[[99.99,0]],"asks":[],"checksum":3},{"type":"gap","channel":"book","symbol":"B00001","from":3,"to":4,"reason":"upstream"}]"#;
        let got = fast(f).unwrap();
        assert_eq!(got, full(f).unwrap());
        assert_eq!(
            (got[0].seq, got[0].prev_seq, got[0].ts),
            (Some(1), None, Some(7))
        );
        assert_eq!(
            (got[1].seq, got[1].prev_seq, got[1].ts),
            (Some(2), Some(1), Some(8))
        );
        assert_eq!(got[2].channel.as_deref(), Some("book"));
    }

    #[test]
    fn what_is_not_plain_goes_to_simd_json_and_reads_the_same() {
        let frames = [
            // an escaped symbol, and an escaped quote in a skipped string
            r#"[{"type":"tick","symbol":"EUR\/USD","seq":1,"ts":2}]"#,
            r#"[{"type":"tick","note":"say \"hi\"","symbol":"A","seq":1,"ts":2}]"#,
            // a field with null
            r#"[{"type":"tick","symbol":null,"seq":1}]"#,
        ];
        for f in frames {
            let want = full(f).unwrap();
            assert_eq!(messages(f.as_bytes()).unwrap(), want, "{f}");
        }
        // The escaped quote is stepped over on the fast path.
        assert!(fast(frames[1]).is_some());
        assert_eq!(
            messages(frames[0].as_bytes()).unwrap()[0].symbol.as_deref(),
            Some("EUR/USD")
        );
    }

    #[test]
    fn a_frame_simd_json_rejects_is_an_error() {
        for f in [
            r#"[{"type":"tick","seq":1.5}]"#,
            r#"[{"type":"tick","seq":-1}]"#,
            r#"[{"type":"tick","seq":01}]"#,
            r#"[{"type":"tick","seq":18446744073709551616}]"#,
            r#"[{"type":"tick","seq":1,"seq":2}]"#,
            r#"[{"symbol":"A"}]"#,
            r#"[{"type":"tick"} {"type":"tick"}]"#,
            r#"[{"type":"tick"}] x"#,
            r#"[{"type":"tick","#,
            r#"{"type":"tick"}"#,
            r#"[{"type":7}]"#,
            "",
        ] {
            assert!(fast(f).is_none(), "fast path took {f}");
            assert!(messages(f.as_bytes()).is_err(), "{f}");
        }
    }
}
