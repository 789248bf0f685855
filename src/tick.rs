//! The tick: one update of one symbol's quote and trade state, and its encodings.
//!
//! A tick is encoded to JSON once, when it enters a node's hub; the same bytes are then
//! shared by every subscriber, the history ring and (with the Redis bus) the wire.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rand::Rng;

use serde::{Deserialize, Serialize};

/// A symbol name, shared cheaply between the hub, sessions and ticks.
pub type Symbol = Arc<str>;

/// Nanoseconds since the Unix epoch, as used for `ts`.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Whether `s` is a well-formed symbol: `^[A-Z0-9][A-Z0-9._:/-]{0,31}$`.
pub fn valid_symbol(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 32 {
        return false;
    }
    if !(b[0].is_ascii_uppercase() || b[0].is_ascii_digit()) {
        return false;
    }
    b[1..].iter().all(|&c| {
        c.is_ascii_uppercase()
            || c.is_ascii_digit()
            || matches!(c, b'.' | b'_' | b':' | b'/' | b'-')
    })
}

/// Whether `s` is a symbol pattern: `*` (every symbol), or a prefix that a symbol may
/// start with followed by `*` (`BTC-*`, `EUR/*`), so that the prefix and one more
/// character fit the symbol grammar of [`valid_symbol`].
pub fn valid_pattern(s: &str) -> bool {
    match s.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => prefix.len() < 32 && valid_symbol(prefix),
        None => false,
    }
}

/// Whether `symbol` is one that `pattern` (see [`valid_pattern`]) matches.
pub fn pattern_matches(pattern: &str, symbol: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => symbol.starts_with(prefix),
        None => pattern == symbol,
    }
}

/// Symbols of a list that do not match the symbol grammar, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadSymbols(pub Vec<String>);

impl std::fmt::Display for BadSymbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.len() == 1 {
            "bad symbol "
        } else {
            "bad symbols "
        })?;
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{s:?}")?;
        }
        f.write_str(": symbols are 1 to 32 of A-Z 0-9 . _ : / - starting with a letter or digit")
    }
}

impl std::error::Error for BadSymbols {}

/// Parses symbol lists: each part is split on commas, every name trimmed, empty names
/// skipped and repeats dropped (the first kept). Any name outside the grammar of
/// [`valid_symbol`] fails the whole list with every such name. An empty result is not an
/// error here: callers decide whether "no symbol" means none or all.
///
/// ```
/// use tickstream::tick::parse_symbols;
/// assert_eq!(parse_symbols(["AAPL, MSFT", "AAPL", ""]).unwrap(), ["AAPL", "MSFT"]);
/// assert!(parse_symbols(["aapl"]).is_err());
/// ```
pub fn parse_symbols<'a, I, S>(parts: I) -> Result<Vec<String>, BadSymbols>
where
    I: IntoIterator<Item = &'a S>,
    S: AsRef<str> + ?Sized + 'a,
{
    let mut out: Vec<String> = Vec::new();
    let mut bad: Vec<String> = Vec::new();
    for s in parts
        .into_iter()
        .flat_map(|p| p.as_ref().split(','))
        .map(str::trim)
    {
        if s.is_empty() {
            continue;
        }
        if !valid_symbol(s) {
            if !bad.iter().any(|b| b == s) {
                bad.push(s.to_owned());
            }
        } else if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(BadSymbols(bad))
    }
}

/// The largest `seq` a feed may give a tick: 2⁵³ − 1, the largest integer that every
/// JSON reader (a browser's among them) holds exactly. Leaves room above it for the
/// marks the hub keeps beside a subscriber's position.
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// Longest `epoch`, in bytes.
pub const MAX_EPOCH: usize = 64;

/// One update of a symbol, as produced by a feed.
///
/// `seq` rises by exactly one per symbol within an `epoch`; `ts` is the source time in
/// nanoseconds since the Unix epoch. A replayed tick keeps its recorded time in `src_ts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// The instrument, e.g. `AAPL`, `EUR/USD`, `BTC-USD`.
    pub symbol: Symbol,
    /// Names the numbering `seq` belongs to; new whenever a feed restarts it.
    #[serde(default, skip_serializing_if = "str_is_empty")]
    pub epoch: Arc<str>,
    /// Per-symbol sequence number, from 1.
    pub seq: u64,
    /// Source time, nanoseconds since the Unix epoch.
    pub ts: u64,
    /// Best bid price.
    pub bid: f64,
    /// Best ask price.
    pub ask: f64,
    /// Size at the best bid.
    pub bid_size: u64,
    /// Size at the best ask.
    pub ask_size: u64,
    /// Last trade price.
    pub last: f64,
    /// Last trade size.
    pub last_size: u64,
    /// Cumulative traded volume.
    pub volume: u64,
    /// Original source time of a replayed tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_ts: Option<u64>,
}

fn str_is_empty(s: &Arc<str>) -> bool {
    s.is_empty()
}

/// The `type` a tick object is sent as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A live or replayed update.
    Tick,
    /// The latest state, sent before the ticks of a new subscription.
    Snapshot,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Tick => "tick",
            Kind::Snapshot => "snapshot",
        }
    }
}

#[derive(Serialize)]
struct Tagged<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    tick: &'a Tick,
}

impl Tick {
    /// The checks a tick passes wherever it enters a node, whoever sent it (the
    /// publisher endpoint, Redis): a well-formed symbol, `seq` from 1 to [`MAX_SEQ`], an
    /// epoch of at most [`MAX_EPOCH`] bytes, prices that are positive finite numbers and
    /// a bid not above the ask. The reason of a refusal names the field.
    pub fn check(&self) -> Result<(), String> {
        if !valid_symbol(&self.symbol) {
            return Err(format!("malformed symbol {:?}", &*self.symbol));
        }
        if self.seq == 0 || self.seq > MAX_SEQ {
            return Err(format!("seq {} is outside 1..={MAX_SEQ}", self.seq));
        }
        if self.epoch.len() > MAX_EPOCH {
            return Err(format!("epoch is longer than {MAX_EPOCH} bytes"));
        }
        for (name, p) in [("bid", self.bid), ("ask", self.ask), ("last", self.last)] {
            if !(p.is_finite() && p > 0.0) {
                return Err(format!("{name} must be a positive number, found {p}"));
            }
        }
        if self.bid > self.ask {
            return Err(format!("bid {} is above ask {}", self.bid, self.ask));
        }
        Ok(())
    }

    /// The AAPL tick of the examples in `docs/protocol.md` (JSON and binary).
    pub fn example() -> Tick {
        Tick {
            symbol: "AAPL".into(),
            epoch: "k3v9q1".into(),
            seq: 1043,
            ts: 1_764_284_400_124_456_789,
            bid: 189.10,
            ask: 189.13,
            bid_size: 300,
            ask_size: 100,
            last: 189.12,
            last_size: 25,
            volume: 1_234_592,
            src_ts: None,
        }
    }

    /// Appends this tick as one JSON object of the given `type` to `out`.
    pub fn write_json(&self, kind: Kind, out: &mut Vec<u8>) {
        // Serializing plain numbers and strings into a Vec cannot fail.
        let _ = serde_json::to_writer(
            out,
            &Tagged {
                kind: kind.as_str(),
                tick: self,
            },
        );
    }

    /// This tick as one JSON object of the given `type`.
    pub fn to_json(&self, kind: Kind) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_json(kind, &mut out);
        out
    }
}

/// A new epoch name: 7 random base36 characters, different on every call and run.
pub fn new_epoch() -> Arc<str> {
    const RADIX: u64 = 36;
    const LEN: u32 = 7;
    const SPACE: u64 = RADIX.pow(LEN);
    // Coprime with 36^7, so successive calls walk a permutation of the whole space.
    const STRIDE: u64 = 48_431_716_907;
    static BASE: OnceLock<u64> = OnceLock::new();
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| rand::rng().random_range(0..SPACE));
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let mut v = ((base as u128 + n as u128 * STRIDE as u128) % SPACE as u128) as u64;
    let mut out = [b'0'; LEN as usize];
    for c in out.iter_mut().rev() {
        let d = (v % RADIX) as u8;
        *c = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        v /= RADIX;
    }
    out.iter().map(|&b| b as char).collect::<String>().into()
}

/// Field `name` of a JSON object as a non-negative integer, or the error a publisher
/// is shown (the publisher endpoint's tick and book checks share it).
pub fn uint_field(
    obj: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<u64, String> {
    match obj.get(name) {
        None => Err(format!("missing field {name}")),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("{name} must be a non-negative integer, found {v}")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn epochs_are_short_base36_and_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let e = new_epoch();
            assert!((6..=8).contains(&e.len()), "{e}");
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
                "{e}"
            );
            assert!(seen.insert(e.clone()), "{e} repeated");
        }
    }

    use super::*;

    fn sample() -> Tick {
        Tick::example()
    }

    #[test]
    fn json_has_type_first_and_round_trips() {
        let t = sample();
        let json = t.to_json(Kind::Tick);
        let text = std::str::from_utf8(&json).unwrap();
        assert!(
            text.starts_with(r#"{"type":"tick","symbol":"AAPL","epoch":"k3v9q1","seq":1043,"#),
            "{text}"
        );
        assert!(text.contains(r#""bid":189.1,"#), "{text}");
        let back: Tick = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, t);
        let snap = t.to_json(Kind::Snapshot);
        assert!(std::str::from_utf8(&snap)
            .unwrap()
            .starts_with(r#"{"type":"snapshot""#));
    }

    #[test]
    fn symbol_grammar() {
        for ok in [
            "AAPL", "EUR/USD", "BTC-USD", "BRK.B", "X", "0", "ES:H6", "A_B",
        ] {
            assert!(valid_symbol(ok), "{ok}");
        }
        let long = "A".repeat(33);
        for bad in ["", "aapl", "-X", ".A", "A B", "AAPL!", long.as_str(), "Ä"] {
            assert!(!valid_symbol(bad), "{bad}");
        }
        assert!(valid_symbol(&"A".repeat(32)));
    }

    #[test]
    fn pattern_grammar_and_matching() {
        for ok in ["*", "BTC-*", "EUR/*", "A*", &format!("{}*", "A".repeat(31))] {
            assert!(valid_pattern(ok), "{ok}");
        }
        let long = format!("{}*", "A".repeat(32));
        for bad in ["", "**", "btc-*", "-*", "A*B", "AAPL", "*A", long.as_str()] {
            assert!(!valid_pattern(bad), "{bad}");
        }
        // Matching is tested with the token claims that share it (auth).
        assert!(pattern_matches("EUR/*", "EUR/USD") && !pattern_matches("EUR/*", "EUR"));
    }

    #[test]
    fn symbol_lists_split_trim_dedupe_and_name_every_bad_one() {
        assert_eq!(
            parse_symbols(["AAPL,MSFT", " BTC-USD ", "AAPL", ",,"]).unwrap(),
            ["AAPL", "MSFT", "BTC-USD"]
        );
        assert_eq!(parse_symbols::<_, str>([]).unwrap(), Vec::<String>::new());
        let e = parse_symbols(&["AAPL,aapl".to_owned(), "x y".to_owned()]).unwrap_err();
        assert_eq!(e, BadSymbols(vec!["aapl".into(), "x y".into()]));
        assert!(
            e.to_string().starts_with(r#"bad symbols "aapl", "x y": "#),
            "{e}"
        );
    }
}
