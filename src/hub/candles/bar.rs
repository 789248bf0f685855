//! One bar (candle) of one interval, and its JSON forms: the bar object of a `candles`
//! message and of the bus's store, and the `candle` message.

use bytes::Bytes;
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

pub use crate::protocol::channel::Interval;

/// How many intervals there are; every symbol has bars in each.
pub const INTERVALS: usize = Interval::ALL.len();

/// One bar: the ticks of one symbol whose time falls in `[start, start + interval)`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct Bar {
    /// Opening time, ns since the Unix epoch (a multiple of the interval).
    pub start: u64,
    /// `last` of the first tick.
    pub open: f64,
    /// Highest `last`.
    pub high: f64,
    /// Lowest `last`.
    pub low: f64,
    /// `last` of the latest tick.
    pub close: f64,
    /// The rise of the cumulative `volume` over the bar.
    pub volume: u64,
    /// Ticks folded in.
    pub ticks: u64,
}

impl Bar {
    /// A bar opened at `start` by a tick at `price` that added `rise` to the volume.
    pub fn open_at(start: u64, price: f64, rise: u64) -> Bar {
        Bar {
            start,
            open: price,
            high: price,
            low: price,
            close: price,
            volume: rise,
            ticks: 1,
        }
    }

    /// Folds in one more tick at `price` that added `rise` to the volume.
    pub fn add(&mut self, price: f64, rise: u64) {
        if price > self.high {
            self.high = price;
        }
        if price < self.low {
            self.low = price;
        }
        self.close = price;
        self.volume = self.volume.saturating_add(rise);
        self.ticks += 1;
    }

    /// Whether the fields hold together for `interval`: aligned, at least one tick,
    /// positive finite prices with the high above and the low below the others.
    pub fn valid(&self, interval: Interval) -> bool {
        let prices = [self.open, self.high, self.low, self.close];
        self.start.is_multiple_of(interval.nanos())
            && self.ticks >= 1
            && prices.iter().all(|p| p.is_finite() && *p > 0.0)
            && self.high >= self.open.max(self.close).max(self.low)
            && self.low <= self.open.min(self.close)
    }

    /// Appends the bar object of a `candles` message (and of the bus's store):
    /// `{"start":…,"open":…,"high":…,"low":…,"close":…,"volume":…,"ticks":N,"closed":…}`.
    pub fn write_json(&self, closed: bool, out: &mut Vec<u8>) {
        // Serializing numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(out, &Flagged::new(self, "closed", closed));
    }

    /// The `candle` message of this bar.
    pub fn candle_json(&self, symbol: &str, interval: Interval, closed: bool) -> Bytes {
        let msg = CandleMsg {
            symbol,
            interval,
            bar: Flagged::new(self, "closed", closed),
        };
        serde_json::to_vec(&msg).unwrap_or_default().into()
    }

    /// A bar object read back from the bus's store, when well formed for `interval`.
    pub fn parse(json: &[u8], interval: Interval) -> Option<Bar> {
        let bar: Bar = serde_json::from_slice(json).ok()?;
        bar.valid(interval).then_some(bar)
    }
}

/// A bar's fields followed by one flag: `closed` on the wire, `whole` in a stored
/// forming state.
pub(crate) struct Flagged<'a> {
    bar: &'a Bar,
    name: &'static str,
    flag: bool,
}

impl<'a> Flagged<'a> {
    /// `bar` with the flag `name` set to `flag`.
    pub(crate) fn new(bar: &'a Bar, name: &'static str, flag: bool) -> Flagged<'a> {
        Flagged { bar, name, flag }
    }

    /// Adds the fields to a struct being serialized.
    fn fields<S: SerializeStruct>(&self, s: &mut S) -> Result<(), S::Error> {
        let b = self.bar;
        s.serialize_field("start", &b.start)?;
        s.serialize_field("open", &b.open)?;
        s.serialize_field("high", &b.high)?;
        s.serialize_field("low", &b.low)?;
        s.serialize_field("close", &b.close)?;
        s.serialize_field("volume", &b.volume)?;
        s.serialize_field("ticks", &b.ticks)?;
        s.serialize_field(self.name, &self.flag)
    }
}

impl Serialize for Flagged<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut s = ser.serialize_struct("Bar", 8)?;
        self.fields(&mut s)?;
        s.end()
    }
}

/// The `candle` message: `type`, `symbol`, `interval`, then the bar object.
struct CandleMsg<'a> {
    symbol: &'a str,
    interval: Interval,
    bar: Flagged<'a>,
}

impl Serialize for CandleMsg<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut s = ser.serialize_struct("Candle", 11)?;
        s.serialize_field("type", "candle")?;
        s.serialize_field("symbol", self.symbol)?;
        s.serialize_field("interval", self.interval.as_str())?;
        self.bar.fields(&mut s)?;
        s.end()
    }
}

/// The `candles` message: up to `backfill` closed bars oldest first, then the forming
/// bar if there is one.
pub fn candles_json(
    symbol: &str,
    interval: Interval,
    closed: &[Bar],
    forming: Option<&Bar>,
) -> Bytes {
    let mut out = Vec::with_capacity(96 + 120 * (closed.len() + 1));
    let head = CandlesHead {
        kind: "candles",
        symbol,
        interval: interval.as_str(),
    };
    let _ = serde_json::to_writer(&mut out, &head);
    // The head is an object: reopen it to add the bars.
    out.pop();
    out.extend_from_slice(b",\"bars\":[");
    let all = closed
        .iter()
        .map(|b| (b, true))
        .chain(forming.map(|b| (b, false)));
    for (k, (bar, done)) in all.enumerate() {
        if k > 0 {
            out.push(b',');
        }
        bar.write_json(done, &mut out);
    }
    out.extend_from_slice(b"]}");
    out.into()
}

#[derive(Serialize)]
struct CandlesHead<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    symbol: &'a str,
    interval: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_name_and_align() {
        for i in Interval::ALL {
            assert_eq!(i.as_str().parse::<Interval>(), Ok(i));
            assert_eq!(Interval::ALL[i.index()], i);
        }
        assert!("2m"
            .parse::<Interval>()
            .unwrap_err()
            .contains("1s, 1m, 5m or 1h"));
        let t = 1_764_284_461_999_999_999;
        assert_eq!(Interval::S1.start_of(t), 1_764_284_461_000_000_000);
        assert_eq!(Interval::M1.start_of(t), 1_764_284_460_000_000_000);
        assert_eq!(
            Interval::M1.start_of(1_764_284_460_000_000_000),
            1_764_284_460_000_000_000
        );
        assert_eq!(Interval::H1.start_of(t), 1_764_284_400_000_000_000);
    }

    #[test]
    fn messages_have_the_contract_shape_and_bars_read_back() {
        let mut b = Bar::open_at(1_764_284_460_000_000_000, 189.12, 25);
        b.add(189.5, 5);
        b.add(188.75, 0);
        let j = b.candle_json("AAPL", Interval::M1, false);
        assert_eq!(
            std::str::from_utf8(&j).unwrap(),
            r#"{"type":"candle","symbol":"AAPL","interval":"1m","start":1764284460000000000,"open":189.12,"high":189.5,"low":188.75,"close":188.75,"volume":30,"ticks":3,"closed":false}"#
        );
        let all = candles_json("AAPL", Interval::M1, &[b, b], Some(&b));
        let v: serde_json::Value = serde_json::from_slice(&all).unwrap();
        assert_eq!(v["type"], "candles");
        assert_eq!(v["interval"], "1m");
        let bars = v["bars"].as_array().unwrap();
        assert_eq!(bars.len(), 3);
        assert_eq!(bars[0]["closed"], true);
        assert_eq!(bars[2]["closed"], false);
        let empty = candles_json("AAPL", Interval::S1, &[], None);
        assert_eq!(
            &empty[..],
            br#"{"type":"candles","symbol":"AAPL","interval":"1s","bars":[]}"#
        );
        let mut stored = Vec::new();
        b.write_json(true, &mut stored);
        assert_eq!(Bar::parse(&stored, Interval::M1), Some(b));
        // Not aligned to 1h, and a high below the close: refused.
        assert_eq!(Bar::parse(&stored, Interval::H1), None);
        let mut bad = b;
        bad.high = 1.0;
        stored.clear();
        bad.write_json(true, &mut stored);
        assert_eq!(Bar::parse(&stored, Interval::M1), None);
        assert_eq!(Bar::parse(b"{}", Interval::M1), None);
    }
}
