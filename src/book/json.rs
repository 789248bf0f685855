//! Book messages as JSON: `book` and `book_update` objects (`docs/protocol.md`, section
//! 9, "Order books"), written by hand so that every price carries exactly its symbol's
//! decimals (`189.10`, never `189.1`), and read from what publishers send.
//!
//! ```json
//! {"type":"book","symbol":"AAPL","epoch":"k3v9q1","seq":7,"ts":1764284400123456789,"bids":[[189.10,300]],"asks":[[189.12,200]],"checksum":3810180913}
//! {"type":"book_update","symbol":"AAPL","epoch":"k3v9q1","seq":8,"prev_seq":7,"ts":1764284400124456789,"bids":[[189.10,0]],"asks":[],"checksum":…}
//! ```

use std::sync::Arc;

use serde_json::{Map, Value};

use super::{digits, BookMsg, Level, Side, Spec};
use crate::tick::{uint_field, valid_symbol, Symbol};

/// What a message is about: the symbol, its numbering and position, and how its prices
/// are written.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    /// The symbol.
    pub symbol: &'a str,
    /// The epoch.
    pub epoch: &'a str,
    /// The book's seq after this message.
    pub seq: u64,
    /// Source time.
    pub ts: u64,
    /// The symbol's price decimals.
    pub spec: Spec,
}

impl BookMsg {
    /// Appends this message to `out` as one JSON object, as the node writes it: its
    /// prices with `spec`'s decimals, its checksum (0 when it has none).
    pub fn write_json(&self, spec: Spec, out: &mut Vec<u8>) {
        let head = Head {
            symbol: &self.symbol,
            epoch: &self.epoch,
            seq: self.seq,
            ts: self.ts,
            spec,
        };
        let checksum = self.checksum.unwrap_or(0);
        write(out, &head, self.prev_seq, &self.bids, &self.asks, checksum);
    }
}

/// Appends one message to `out`: a `book` when `prev_seq` is `None`, else a
/// `book_update` that applies to the book at `prev_seq`.
pub fn write(
    out: &mut Vec<u8>,
    head: &Head<'_>,
    prev_seq: Option<u64>,
    bids: &[Level],
    asks: &[Level],
    checksum: u32,
) {
    out.reserve(160 + 24 * (bids.len() + asks.len()));
    out.extend_from_slice(match prev_seq {
        None => b"{\"type\":\"book\",\"symbol\":\"".as_slice(),
        Some(_) => b"{\"type\":\"book_update\",\"symbol\":\"".as_slice(),
    });
    // Symbols of the grammar need no escaping.
    out.extend_from_slice(head.symbol.as_bytes());
    out.extend_from_slice(b"\",\"epoch\":");
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, head.epoch);
    let mut buf = [0u8; 20];
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(digits(head.seq, &mut buf));
    if let Some(prev) = prev_seq {
        out.extend_from_slice(b",\"prev_seq\":");
        out.extend_from_slice(digits(prev, &mut buf));
    }
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(digits(head.ts, &mut buf));
    out.extend_from_slice(b",\"bids\":");
    write_levels(out, bids, head.spec);
    out.extend_from_slice(b",\"asks\":");
    write_levels(out, asks, head.spec);
    out.extend_from_slice(b",\"checksum\":");
    out.extend_from_slice(digits(u64::from(checksum), &mut buf));
    out.push(b'}');
}

/// `[[price,size],…]`.
fn write_levels(out: &mut Vec<u8>, levels: &[Level], spec: Spec) {
    out.push(b'[');
    let mut buf = [0u8; 20];
    for (i, l) in levels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        write_price(out, l.price, spec);
        out.push(b',');
        out.extend_from_slice(digits(l.size, &mut buf));
        out.push(b']');
    }
    out.push(b']');
}

/// A price of `ticks` with exactly the spec's decimals: `18910` with 2 is `189.10`, `7`
/// is `0.07`.
pub fn write_price(out: &mut Vec<u8>, ticks: u64, spec: Spec) {
    let mut buf = [0u8; 20];
    if spec.decimals == 0 {
        out.extend_from_slice(digits(ticks, &mut buf));
        return;
    }
    let scale = spec.scale();
    out.extend_from_slice(digits(ticks / scale, &mut buf));
    out.push(b'.');
    let frac = digits(ticks % scale, &mut buf);
    out.extend(std::iter::repeat_n(
        b'0',
        usize::from(spec.decimals) - frac.len(),
    ));
    out.extend_from_slice(frac);
}

/// The price text of `ticks`, as [`write_price`] writes it.
pub fn price_text(ticks: u64, spec: Spec) -> String {
    let mut out = Vec::with_capacity(24);
    write_price(&mut out, ticks, spec);
    String::from_utf8(out).unwrap_or_default()
}

/// Reads a `book` or `book_update` object whose symbol, epoch and price decimals the
/// caller has established (the publisher endpoint checks the symbol against what it
/// serves and allows). Fails on the first field missing, mistyped or out of its
/// rules, naming it; the message's own checks ([`BookMsg::check`]) come after.
pub fn from_object(
    obj: &Map<String, Value>,
    symbol: Symbol,
    epoch: Arc<str>,
    spec: Spec,
) -> Result<BookMsg, String> {
    let update = match obj.get("type").and_then(Value::as_str) {
        Some("book") => false,
        Some("book_update") => true,
        _ => return Err("type must be \"book\" or \"book_update\"".into()),
    };
    let prev_seq = match (update, obj.get("prev_seq")) {
        (true, None) => return Err("missing field prev_seq (a book_update names it)".into()),
        (true, Some(_)) => Some(uint_field(obj, "prev_seq")?),
        (false, None) => None,
        (false, Some(_)) => {
            return Err("prev_seq belongs to a book_update; a book has none".into());
        }
    };
    let checksum = match obj.get("checksum") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|c| u32::try_from(c).ok())
                .ok_or_else(|| format!("checksum must be an unsigned 32-bit integer, found {v}"))?,
        ),
    };
    Ok(BookMsg {
        symbol,
        epoch,
        seq: uint_field(obj, "seq")?,
        prev_seq,
        ts: uint_field(obj, "ts")?,
        bids: levels(obj, Side::Bid, spec)?,
        asks: levels(obj, Side::Ask, spec)?,
        checksum,
    })
}

/// Reads one whole message (its own symbol and epoch included), with the price
/// decimals `spec_of` gives for its symbol, and checks it on its own (at most
/// `max_levels` a side). For clients and tests; a node's publisher endpoint reads
/// objects with [`from_object`].
pub fn parse(
    text: &[u8],
    spec_of: impl Fn(&str) -> Option<Spec>,
    max_levels: usize,
) -> Result<BookMsg, String> {
    let value: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let obj = value.as_object().ok_or("not a JSON object")?;
    let symbol = match obj.get("symbol").and_then(Value::as_str) {
        Some(s) if valid_symbol(s) => s,
        _ => return Err("symbol must be a symbol of the grammar".into()),
    };
    let spec = spec_of(symbol).ok_or_else(|| format!("no book is known for {symbol}"))?;
    let epoch = match obj.get("epoch").and_then(Value::as_str) {
        Some(e) => Arc::from(e),
        None => return Err("epoch must be a string".into()),
    };
    let msg = from_object(obj, symbol.into(), epoch, spec)?;
    msg.check(max_levels)?;
    Ok(msg)
}

/// The `[[price,size],…]` array of `side`.
fn levels(obj: &Map<String, Value>, side: Side, spec: Spec) -> Result<Vec<Level>, String> {
    let name = side.field();
    let arr = match obj.get(name) {
        None => return Err(format!("missing field {name}")),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(format!("{name} must be an array of [price,size]")),
    };
    arr.iter()
        .enumerate()
        .map(|(i, v)| level(v, spec).map_err(|why| format!("{name}[{i}]: {why}")))
        .collect()
}

/// One `[price,size]`: a positive price on the tick grid, a non-negative integer size.
fn level(v: &Value, spec: Spec) -> Result<Level, String> {
    let pair = match v.as_array() {
        Some(p) if p.len() == 2 => p,
        _ => return Err(format!("a level is [price,size], found {v}")),
    };
    let price = pair[0]
        .as_f64()
        .filter(|_| pair[0].is_number())
        .ok_or_else(|| format!("price must be a number, found {}", pair[0]))?;
    let ticks = spec.ticks(price).ok_or_else(|| {
        format!(
            "price {price} is not a positive price on the tick grid of {} decimals",
            spec.decimals
        )
    })?;
    let size = pair[1]
        .as_u64()
        .ok_or_else(|| format!("size must be a non-negative integer, found {}", pair[1]))?;
    Ok(Level::new(ticks, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec = Spec { decimals: 2 };

    #[test]
    fn prices_keep_their_decimals() {
        for (ticks, spec, text) in [
            (18910, SPEC, "189.10"),
            (7, SPEC, "0.07"),
            (100, SPEC, "1.00"),
            (108_513, Spec::new(5), "1.08513"),
            (42, Spec::new(0), "42"),
            (151_200, Spec::new(3), "151.200"),
        ] {
            assert_eq!(price_text(ticks, spec), text);
            let back: f64 = text.parse().unwrap();
            assert_eq!(spec.ticks(back), Some(ticks), "{text}");
        }
    }

    #[test]
    fn messages_are_written_as_documented_and_read_back() {
        let head = Head {
            symbol: "AAPL",
            epoch: "k3v9q1",
            seq: 8,
            ts: 11,
            spec: SPEC,
        };
        let mut out = Vec::new();
        let bids = [Level::new(18910, 0)];
        write(&mut out, &head, Some(7), &bids, &[], 42);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"type":"book_update","symbol":"AAPL","epoch":"k3v9q1","seq":8,"prev_seq":7,"ts":11,"bids":[[189.10,0]],"asks":[],"checksum":42}"#
        );
        let back = parse(&out, |_| Some(SPEC), 50).unwrap();
        assert_eq!(
            (back.seq, back.prev_seq, back.checksum),
            (8, Some(7), Some(42))
        );
        assert_eq!(back.bids, bids);
        out.clear();
        write(
            &mut out,
            &Head {
                epoch: "a\"b",
                ..head
            },
            None,
            &[],
            &[],
            0,
        );
        let back = parse(&out, |_| Some(SPEC), 50).unwrap();
        assert_eq!((&*back.epoch, back.prev_seq), ("a\"b", None));
    }

    #[test]
    fn bad_fields_are_named() {
        let good = r#""symbol":"AAPL","epoch":"e","seq":2,"ts":1,"bids":[[1.00,1]],"asks":[]"#;
        assert!(parse(
            format!(r#"{{"type":"book",{good}}}"#).as_bytes(),
            |_| Some(SPEC),
            50
        )
        .is_ok());
        for (body, why) in [
            (r#""type":"book","prev_seq":1,"#, "belongs to a book_update"),
            (r#""type":"book_update","#, "missing field prev_seq"),
            (r#""type":"trade","#, "type must be"),
            (r#""type":"book","checksum":-1,"#, "checksum must be"),
            (
                r#""type":"book","checksum":4294967296,"#,
                "checksum must be",
            ),
        ] {
            let text = format!("{{{body}{good}}}");
            let e = parse(text.as_bytes(), |_| Some(SPEC), 50).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        for (levels, why) in [
            (r#""bids":[[1.005,1]]"#, "tick grid"),
            (r#""bids":[["1.00",1]]"#, "price must be a number"),
            (r#""bids":[[1.00,1.5]]"#, "size must be"),
            (r#""bids":[[1.00,-1]]"#, "size must be"),
            (r#""bids":[[1.00]]"#, "[price,size]"),
            (r#""bids":{}"#, "array"),
            (r#""bids":[[1.00,1],[1.00,2]]"#, "repeated"),
        ] {
            let text = format!(
                r#"{{"type":"book","symbol":"AAPL","epoch":"e","seq":2,"ts":1,{levels},"asks":[]}}"#
            );
            let e = parse(text.as_bytes(), |_| Some(SPEC), 50).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
