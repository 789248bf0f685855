//! What a node reads from Redis is checked as the publisher endpoint checks what a feed
//! pushes: a payload must be one whole, well-formed `tick` object, of the symbol its
//! channel names, and pass [`Tick::check`] (`seq` from 1 to `MAX_SEQ`, positive finite
//! prices, bid not above ask, a bounded epoch). Its size is bounded before it is read
//! (the link's `--redis-max-payload`). Anything else is dropped and counted: it never
//! reaches the hub.
//!
//! A payload that passes keeps its bytes: a `"type":"tick"` object is forwarded to
//! clients as it arrived (PROTOCOL.md allows it); one without `type` is encoded afresh.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use crate::hub::{Entry, Hub};
use crate::tick::{Kind, Symbol, Tick};

/// A tick object as published into Redis, the fields borrowed from the payload.
#[derive(serde::Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    symbol: Cow<'a, str>,
    #[serde(default, borrow)]
    epoch: Option<Cow<'a, str>>,
    seq: u64,
    ts: u64,
    bid: f64,
    ask: f64,
    bid_size: u64,
    ask_size: u64,
    last: f64,
    last_size: u64,
    volume: u64,
    #[serde(default)]
    src_ts: Option<u64>,
}

thread_local! {
    /// The parse's scratch copy of a payload (simd-json rewrites what it parses) and its
    /// buffers, reused from one message to the next.
    static SCRATCH: std::cell::RefCell<(Vec<u8>, simd_json::Buffers)> =
        std::cell::RefCell::new((Vec::new(), simd_json::Buffers::new(512)));
}

/// Why a payload was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Not one whole, well-formed tick object.
    Malformed,
    /// A tick of another symbol than its channel's.
    WrongChannel,
    /// A tick whose fields fail [`Tick::check`] (the reason).
    Refused(String),
}

/// Checks one payload read from `channel_symbol`'s channel (see the module doc).
pub fn arrival(hub: &Hub, channel_symbol: &str, payload: &[u8]) -> Result<Arc<Entry>, Dropped> {
    let first = payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .ok_or(Dropped::Malformed)?;
    if *first != b'{' {
        return Err(Dropped::Malformed);
    }
    let (tick, as_is) = SCRATCH
        .with(|cell| {
            let (scratch, buffers) = &mut *cell.borrow_mut();
            scratch.clear();
            scratch.extend_from_slice(payload);
            let w: Wire<'_> = simd_json::serde::from_slice_with_buffers(scratch, buffers).ok()?;
            let symbol = match hub.symbol(&w.symbol) {
                Some(s) => s,
                None => Symbol::from(&*w.symbol),
            };
            let tick = Tick {
                symbol,
                epoch: w.epoch.as_deref().unwrap_or("").into(),
                seq: w.seq,
                ts: w.ts,
                bid: w.bid,
                ask: w.ask,
                bid_size: w.bid_size,
                ask_size: w.ask_size,
                last: w.last,
                last_size: w.last_size,
                volume: w.volume,
                src_ts: w.src_ts,
            };
            Some((tick, w.kind.as_deref() == Some("tick")))
        })
        .ok_or(Dropped::Malformed)?;
    if *tick.symbol != *channel_symbol {
        return Err(Dropped::WrongChannel);
    }
    tick.check().map_err(Dropped::Refused)?;
    Ok(if as_is {
        Entry::forwarded(tick, Bytes::copy_from_slice(payload))
    } else {
        let json = Bytes::from(tick.to_json(Kind::Tick));
        Entry::forwarded(tick, json)
    })
}

/// A stored tick object (`last:`, a `hist:` entry), checked like a payload; `None` when
/// it is not a valid tick of `symbol`.
pub fn stored(symbol: &str, json: &mut [u8]) -> Option<Tick> {
    let t: Tick = simd_json::serde::from_slice(json).ok()?;
    (*t.symbol == *symbol && t.check().is_ok()).then_some(t)
}

/// The tick of one stream entry `[id, [field, value, …]]`.
pub fn stream_tick(symbol: &str, entry: redis::Value) -> Option<Tick> {
    let redis::Value::Array(parts) = entry else {
        return None;
    };
    let fields = parts.into_iter().nth(1)?;
    let mut payload = match fields {
        redis::Value::Array(f) => f.into_iter().nth(1)?,
        redis::Value::Map(m) => m.into_iter().next()?.1,
        _ => return None,
    };
    match &mut payload {
        redis::Value::BulkString(b) => stored(symbol, b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub::new(["AAPL".into(), "EUR/USD".into()], 4)
    }

    const TICK: &str = r#"{"type":"tick","symbol":"AAPL","epoch":"e1","seq":7,"ts":5,"bid":1.5,"ask":1.75,"bid_size":1,"ask_size":2,"last":1.5,"last_size":3,"volume":9}"#;

    #[test]
    fn a_tick_payload_is_forwarded_as_it_arrived() {
        let e = arrival(&hub(), "AAPL", TICK.as_bytes()).unwrap();
        assert_eq!(&e.json[..], TICK.as_bytes());
        assert_eq!(
            (&*e.tick.symbol, &*e.tick.epoch, e.tick.seq),
            ("AAPL", "e1", 7)
        );
        assert_eq!((e.tick.bid, e.tick.ask, e.tick.volume), (1.5, 1.75, 9));
        // Escapes are read, and the bytes forwarded untouched.
        let escaped = TICK.replace("AAPL", r#"EUR\/USD"#);
        let e = arrival(&hub(), "EUR/USD", escaped.as_bytes()).unwrap();
        assert_eq!(&*e.tick.symbol, "EUR/USD");
        assert_eq!(&e.json[..], escaped.as_bytes());
    }

    #[test]
    fn a_payload_without_its_type_is_encoded_afresh() {
        let bare = TICK.replace(r#""type":"tick","#, "");
        let e = arrival(&hub(), "AAPL", bare.as_bytes()).unwrap();
        assert!(e.json.starts_with(br#"{"type":"tick","symbol":"AAPL""#));
        assert_eq!(e.tick.seq, 7);
    }

    #[test]
    fn what_is_not_one_whole_tick_object_is_refused() {
        let bad = [
            format!("{TICK} x"),
            format!("{TICK}{TICK}"),
            format!("[{TICK}]"),
            TICK.replace(r#""seq":7"#, r#""seq":"7""#),
            TICK.replace(r#","volume":9"#, ""),
            TICK[..TICK.len() - 1].to_owned(),
            r#"["AAPL","e1",7,5,1.5,1.75,1,2,1.5,3,9]"#.to_owned(),
            String::new(),
        ];
        for b in bad {
            assert_eq!(
                arrival(&hub(), "AAPL", b.as_bytes()).err(),
                Some(Dropped::Malformed),
                "{b}"
            );
        }
    }

    #[test]
    fn ticks_are_checked_like_a_publishers() {
        // Another symbol's tick on AAPL's channel.
        assert_eq!(
            arrival(&hub(), "EUR/USD", TICK.as_bytes()).err(),
            Some(Dropped::WrongChannel)
        );
        for (from, to) in [
            (r#""seq":7"#, r#""seq":0"#),
            (r#""seq":7"#, r#""seq":18446744073709551615"#),
            (r#""seq":7"#, r#""seq":9007199254740992"#),
            (r#""bid":1.5"#, r#""bid":2.5"#),
            (r#""ask":1.75"#, r#""ask":-1.75"#),
            (r#""last":1.5"#, r#""last":0"#),
            (
                r#""epoch":"e1""#,
                &format!(r#""epoch":"{}""#, "e".repeat(65)),
            ),
        ] {
            let t = TICK.replace(from, to);
            assert!(
                matches!(
                    arrival(&hub(), "AAPL", t.as_bytes()),
                    Err(Dropped::Refused(_))
                ),
                "{t}"
            );
        }
        let max = TICK.replace(r#""seq":7"#, r#""seq":9007199254740991"#);
        assert!(arrival(&hub(), "AAPL", max.as_bytes()).is_ok());
    }
}
