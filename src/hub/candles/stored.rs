//! The forming state of a symbol as the bus's store keeps it: the tick the bars
//! continue from and the forming bar of each interval, so that whoever starts holding the
//! symbol mid-bar (a node that starts watching it, a feed that restarts) continues the
//! same bars.
//!
//! ```json
//! {"epoch":"k3v9q1","seq":1043,"volume":1234592,"time":1764284400124456789,
//!  "bars":{"1s":{"start":1764284400000000000,"open":189.12,"high":189.12,"low":189.1,
//!                "close":189.1,"volume":125,"ticks":4,"whole":true},"1m":{…},…}}
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::bar::{Bar, Flagged, Interval, INTERVALS};
use super::series::{Bars, Base};
use crate::tick::{MAX_EPOCH, MAX_SEQ};

/// A forming state read back: the base and each interval's forming bar (and whether it
/// is whole).
pub type Formed = (Base, [Option<(Bar, bool)>; INTERVALS]);

/// The state as written.
#[derive(Serialize)]
struct State<'a> {
    epoch: &'a str,
    seq: u64,
    volume: u64,
    time: u64,
    bars: BTreeMap<&'static str, Flagged<'a>>,
}

/// The state as read back.
#[derive(Deserialize)]
struct Read<'a> {
    #[serde(borrow)]
    epoch: std::borrow::Cow<'a, str>,
    seq: u64,
    volume: u64,
    time: u64,
    #[serde(borrow)]
    bars: BTreeMap<std::borrow::Cow<'a, str>, StoredBar>,
}

/// A stored forming bar: the bar and whether it is whole.
#[derive(Deserialize)]
struct StoredBar {
    #[serde(flatten)]
    bar: Bar,
    whole: bool,
}

/// The forming state of `bars` as JSON, or `None` before its first tick.
pub fn to_json(bars: &Bars) -> Option<Vec<u8>> {
    let base = bars.base()?;
    let forming: Vec<(Interval, Bar, bool)> = Interval::ALL
        .into_iter()
        .filter_map(|iv| bars.forming(iv).map(|(b, whole)| (iv, b, whole)))
        .collect();
    let state = State {
        epoch: &base.epoch,
        seq: base.seq,
        volume: base.volume,
        time: base.time,
        bars: forming
            .iter()
            .map(|(iv, b, whole)| (iv.as_str(), Flagged::new(b, "whole", *whole)))
            .collect(),
    };
    serde_json::to_vec(&state).ok()
}

/// A forming state read back, when well formed: an epoch of at most [`MAX_EPOCH`]
/// bytes, a `seq` from 1 to [`MAX_SEQ`], and each bar valid for its interval (an
/// unknown interval is skipped).
pub fn parse(json: &[u8]) -> Option<Formed> {
    let s: Read = serde_json::from_slice(json).ok()?;
    if s.epoch.len() > MAX_EPOCH || s.seq == 0 || s.seq > MAX_SEQ {
        return None;
    }
    let mut forming: [Option<(Bar, bool)>; INTERVALS] = Default::default();
    for (name, b) in s.bars {
        let Ok(iv) = name.parse::<Interval>() else {
            continue;
        };
        if !b.bar.valid(iv) {
            return None;
        }
        forming[iv.index()] = Some((b.bar, b.whole));
    }
    let base = Base {
        epoch: s.epoch.as_ref().into(),
        seq: s.seq,
        volume: s.volume,
        time: s.time,
    };
    Some((base, forming))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::Tick;

    #[test]
    fn a_state_reads_back_as_written_and_bad_ones_are_refused() {
        let mut bars = Bars::new(10);
        assert_eq!(to_json(&bars), None);
        let mut t = Tick::example();
        for k in 0..3 {
            t.seq += 1;
            t.ts += 400_000_000;
            t.volume += 10;
            t.last += 0.01 * k as f64;
            bars.fold(&t);
        }
        let json = to_json(&bars).unwrap();
        let (base, forming) = parse(&json).unwrap();
        assert_eq!(Some(&base), bars.base());
        for iv in Interval::ALL {
            assert_eq!(forming[iv.index()], bars.forming(iv), "{iv}");
        }
        let text = String::from_utf8(json).unwrap();
        for bad in [
            text.replace("\"seq\":1046", "\"seq\":0"),
            text.replace("\"ticks\":3", "\"ticks\":0"),
            "[]".to_owned(),
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad}");
        }
        let unknown = text.replace("\"1h\"", "\"2h\"");
        let (_, f) = parse(unknown.as_bytes()).unwrap();
        assert!(f[Interval::H1.index()].is_none());
    }
}
