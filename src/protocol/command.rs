//! Client commands: one JSON object per text message, parsed with simd-json from the
//! frame's own buffer into a [`Command`], or refused with a [`CommandError`] that says
//! what is wrong (see `docs/protocol.md`, section 3).

use std::collections::HashMap;
use std::fmt;

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::channel::{check_throttle, Channel, ChannelFields, Selection};
use super::{truncate, ErrorCode};
use crate::tick::{valid_pattern, valid_symbol};

/// A client's position in a symbol's sequence, from `resume`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeFrom {
    /// The epoch the client's `seq` belongs to, when it said.
    pub epoch: Option<String>,
    /// The last `seq` the client holds.
    pub seq: u64,
}

/// `{"op":"subscribe",...}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Echoed in replies.
    pub id: Option<u64>,
    /// Symbols and patterns as given (validated later, one by one).
    pub symbols: Vec<String>,
    /// The channel and its options (`ticks` when not given).
    pub channel: Channel,
    /// Send a `snapshot` before the ticks (default true).
    pub snapshot: bool,
    /// Last `seq` held per symbol.
    pub resume: HashMap<String, ResumeFrom>,
    /// The pace, when the command gave one (echoed in `subscribed`); absent means 0.
    pub throttle_ms: Option<u32>,
}

impl Default for Subscribe {
    /// No symbol, on `ticks`, with a snapshot, unpaced.
    fn default() -> Self {
        Subscribe {
            id: None,
            symbols: Vec::new(),
            channel: Channel::Ticks,
            snapshot: true,
            resume: HashMap::new(),
            throttle_ms: None,
        }
    }
}

/// `{"op":"report",...}`: the delivery latency a client observed over its last window.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Echoed in `reported`.
    pub id: Option<u64>,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest latency, ms.
    pub max_ms: f64,
    /// Messages measured.
    pub count: u64,
    /// Length of the window, ms.
    pub window_ms: u64,
}

/// Largest latency a report may give, ms (an hour): more is not a latency.
pub const MAX_REPORTED_MS: f64 = 3_600_000.0;
/// Longest window a report may cover, ms (an hour).
pub const MAX_REPORT_WINDOW_MS: u64 = 3_600_000;
/// Most messages one report may count.
pub const MAX_REPORT_COUNT: u64 = 1_000_000_000;

/// A parsed client command.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `{"op":"subscribe",...}`
    Subscribe(Subscribe),
    /// `{"op":"unsubscribe",...}`
    Unsubscribe {
        /// Echoed in replies.
        id: Option<u64>,
        /// Symbols and patterns to drop.
        symbols: Vec<String>,
        /// On which channel (`ticks` when not given).
        channel: Selection,
    },
    /// `{"op":"list"}`: the current subscriptions of a channel.
    List {
        /// Echoed in replies.
        id: Option<u64>,
        /// Which channel (`ticks` when not given).
        channel: Selection,
    },
    /// `{"op":"ping"}`: answered with `pong`.
    Ping {
        /// Echoed in replies.
        id: Option<u64>,
    },
    /// `{"op":"report",...}`: answered with `reported`.
    Report(Report),
}

/// Why a command was refused; becomes an `error` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandError {
    /// The command's `id`, where it could be read.
    pub id: Option<u64>,
    /// The error code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl CommandError {
    /// A `bad_request` refusal.
    pub fn bad(id: Option<u64>, message: impl Into<String>) -> Self {
        CommandError {
            id,
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

type Object<'v> = simd_json::borrowed::Object<'v>;

/// Parses one client text message. The buffer is used as scratch space by simd-json.
pub fn parse_command(buf: &mut [u8]) -> Result<Command, CommandError> {
    let value = simd_json::to_borrowed_value(buf)
        .map_err(|e| CommandError::bad(None, format!("not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| CommandError::bad(None, "a command must be a JSON object"))?;
    let id = match obj.get("id") {
        None | Some(BorrowedValue::Static(simd_json::StaticNode::Null)) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| CommandError::bad(None, "\"id\" must be an unsigned integer"))?,
        ),
    };
    let op = obj
        .get("op")
        .ok_or_else(|| CommandError::bad(id, "missing field \"op\""))?
        .as_str()
        .ok_or_else(|| CommandError::bad(id, "\"op\" must be a string"))?;
    let bad = |m: String| CommandError::bad(id, m);
    match op {
        "subscribe" => subscribe(obj, id).map(Command::Subscribe),
        "unsubscribe" => Ok(Command::Unsubscribe {
            id,
            symbols: symbol_list(obj.get("symbols"), id)?,
            channel: selection(obj).map_err(bad)?,
        }),
        "list" => Ok(Command::List {
            id,
            channel: selection(obj).map_err(bad)?,
        }),
        "ping" => Ok(Command::Ping { id }),
        "report" => report(obj, id).map(Command::Report).map_err(bad),
        other => Err(CommandError {
            id,
            code: ErrorCode::UnknownOp,
            message: format!("unknown op: {}", truncate(other, 64)),
        }),
    }
}

fn subscribe(obj: &Object<'_>, id: Option<u64>) -> Result<Subscribe, CommandError> {
    let bad = |m: String| CommandError::bad(id, m);
    let symbols = symbol_list(obj.get("symbols"), id)?;
    let snapshot = match obj.get("snapshot") {
        None => true,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| CommandError::bad(id, "\"snapshot\" must be true or false"))?,
    };
    let resume = match obj.get("resume") {
        None => HashMap::new(),
        Some(v) => resume_map(v, id)?,
    };
    let fields = ChannelFields {
        channel: opt_str(obj, "channel").map_err(bad)?,
        interval: opt_str(obj, "interval").map_err(bad)?,
        backfill: opt_u64(obj, "backfill").map_err(bad)?,
        depth: opt_u64(obj, "depth").map_err(bad)?,
    };
    let throttle_ms = match opt_u64(obj, "throttle_ms").map_err(bad)? {
        None => None,
        Some(ms) => Some(check_throttle(ms).map_err(bad)?),
    };
    Ok(Subscribe {
        id,
        symbols,
        channel: Channel::from_fields(fields).map_err(bad)?,
        snapshot,
        resume,
        throttle_ms,
    })
}

fn selection(obj: &Object<'_>) -> Result<Selection, String> {
    Selection::from_fields(opt_str(obj, "channel")?, opt_str(obj, "interval")?)
}

/// An optional string field.
fn opt_str<'v>(obj: &'v Object<'_>, field: &str) -> Result<Option<&'v str>, String> {
    match obj.get(field) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| format!("\"{field}\" must be a string")),
    }
}

/// An optional unsigned integer field.
fn opt_u64(obj: &Object<'_>, field: &str) -> Result<Option<u64>, String> {
    match obj.get(field) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("\"{field}\" must be an unsigned integer")),
    }
}

/// Reads and checks a `report`: latencies are numbers from 0 to [`MAX_REPORTED_MS`] with
/// `p50 <= p99 <= max`, `count` from 1 to [`MAX_REPORT_COUNT`], `window_ms` from 1 to
/// [`MAX_REPORT_WINDOW_MS`].
fn report(obj: &Object<'_>, id: Option<u64>) -> Result<Report, String> {
    let latency = obj
        .get("latency_ms")
        .ok_or("missing field \"latency_ms\": {\"p50\":…,\"p99\":…,\"max\":…}")?
        .as_object()
        .ok_or("\"latency_ms\" must be an object {\"p50\":…,\"p99\":…,\"max\":…}")?;
    let ms = |q: &str| -> Result<f64, String> {
        let v = latency
            .get(q)
            .ok_or_else(|| format!("missing field \"latency_ms.{q}\""))?;
        let x = v
            .cast_f64()
            .filter(|_| v.is_number())
            .ok_or_else(|| format!("\"latency_ms.{q}\" must be a number of milliseconds"))?;
        if !(x.is_finite() && (0.0..=MAX_REPORTED_MS).contains(&x)) {
            return Err(format!(
                "\"latency_ms.{q}\" {x} is not a latency: 0 to {MAX_REPORTED_MS} ms"
            ));
        }
        Ok(x)
    };
    let (p50_ms, p99_ms, max_ms) = (ms("p50")?, ms("p99")?, ms("max")?);
    if !(p50_ms <= p99_ms && p99_ms <= max_ms) {
        return Err(format!(
            "latencies out of order: p50 {p50_ms} <= p99 {p99_ms} <= max {max_ms} must hold"
        ));
    }
    let within = |field: &str, max: u64| -> Result<u64, String> {
        match opt_u64(obj, field)? {
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(n) => Err(format!("\"{field}\" {n} is out of range: 1 to {max}")),
            None => Err(format!("missing field \"{field}\"")),
        }
    };
    Ok(Report {
        id,
        p50_ms,
        p99_ms,
        max_ms,
        count: within("count", MAX_REPORT_COUNT)?,
        window_ms: within("window_ms", MAX_REPORT_WINDOW_MS)?,
    })
}

fn symbol_list(v: Option<&BorrowedValue>, id: Option<u64>) -> Result<Vec<String>, CommandError> {
    let arr = v
        .ok_or_else(|| CommandError::bad(id, "missing field \"symbols\""))?
        .as_array()
        .ok_or_else(|| CommandError::bad(id, "\"symbols\" must be an array of strings"))?;
    arr.iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| CommandError::bad(id, "\"symbols\" must be an array of strings"))
        })
        .collect()
}

fn resume_map(
    v: &BorrowedValue,
    id: Option<u64>,
) -> Result<HashMap<String, ResumeFrom>, CommandError> {
    let obj = v
        .as_object()
        .ok_or_else(|| CommandError::bad(id, "\"resume\" must be an object of symbol to seq"))?;
    let mut out = HashMap::with_capacity(obj.len());
    for (sym, pos) in obj.iter() {
        let from = resume_from(sym, pos).map_err(|m| CommandError::bad(id, m))?;
        out.insert(sym.to_string(), from);
    }
    Ok(out)
}

/// One entry of `resume`: a seq, or `{"epoch":…,"seq":…}`.
fn resume_from(sym: &str, pos: &BorrowedValue) -> Result<ResumeFrom, String> {
    if let Some(seq) = pos.as_u64() {
        return Ok(ResumeFrom { epoch: None, seq });
    }
    let Some(o) = pos.as_object() else {
        return Err(format!(
            "resume of {sym}: expected a seq or {{\"epoch\":…,\"seq\":…}}"
        ));
    };
    let seq = o
        .get("seq")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| format!("resume of {sym}: \"seq\" must be an unsigned integer"))?;
    let epoch = match o.get("epoch") {
        None => None,
        Some(e) => Some(
            e.as_str()
                .ok_or_else(|| format!("resume of {sym}: \"epoch\" must be a string"))?
                .to_owned(),
        ),
    };
    Ok(ResumeFrom { epoch, seq })
}

/// The entries of a command's `symbols`, sorted by what they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    /// Symbols of the symbol grammar, in the order given.
    pub symbols: Vec<String>,
    /// Patterns (`*`, `PREFIX*`), in the order given, once each.
    pub patterns: Vec<String>,
    /// Everything else.
    pub malformed: Vec<String>,
}

/// Sorts requested entries into well-formed symbols, patterns and malformed ones.
pub fn sort_entries(entries: Vec<String>) -> Entries {
    let mut out = Entries::default();
    for e in entries {
        if valid_symbol(&e) {
            out.symbols.push(e);
        } else if valid_pattern(&e) {
            if !out.patterns.contains(&e) {
                out.patterns.push(e);
            }
        } else {
            out.malformed.push(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::channel::{Depth, Interval};
    use super::*;

    fn parse(s: &str) -> Result<Command, CommandError> {
        let mut b = s.as_bytes().to_vec();
        parse_command(&mut b)
    }

    fn sub(s: &str) -> Subscribe {
        match parse(s).unwrap() {
            Command::Subscribe(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_every_op() {
        let s = sub(
            r#"{"op":"subscribe","id":7,"symbols":["AAPL","MSFT"],"snapshot":false,"resume":{"AAPL":1042,"MSFT":{"epoch":"e1","seq":5}}}"#,
        );
        assert_eq!(
            (s.id, s.snapshot, s.channel),
            (Some(7), false, Channel::Ticks)
        );
        assert_eq!(s.symbols, ["AAPL", "MSFT"]);
        let aapl = ResumeFrom {
            epoch: None,
            seq: 1042,
        };
        assert_eq!(s.resume["AAPL"], aapl);
        let msft = ResumeFrom {
            epoch: Some("e1".into()),
            seq: 5,
        };
        assert_eq!(s.resume["MSFT"], msft);
        assert_eq!(
            parse(r#"{"op":"unsubscribe","symbols":["A"]}"#).unwrap(),
            Command::Unsubscribe {
                id: None,
                symbols: vec!["A".into()],
                channel: Selection::default(),
            }
        );
        assert_eq!(
            parse(r#"{"op":"list","id":9}"#).unwrap(),
            Command::List {
                id: Some(9),
                channel: Selection::default()
            }
        );
        assert_eq!(
            parse(r#"{"op":"ping","id":10,"extra":1}"#).unwrap(),
            Command::Ping { id: Some(10) }
        );
        let s = sub(r#"{"op":"subscribe","symbols":[]}"#);
        assert!(s.snapshot, "snapshot defaults to true");
        assert_eq!(s, Subscribe::default());
    }

    #[test]
    fn parses_channels_paces_and_reports() {
        let s = sub(
            r#"{"op":"subscribe","channel":"candles","interval":"1m","backfill":60,"throttle_ms":250,"symbols":["AAPL"]}"#,
        );
        let candles = Channel::Candles {
            interval: Interval::M1,
            backfill: 60,
        };
        assert_eq!((s.channel, s.throttle_ms), (candles, Some(250)));
        let s = sub(r#"{"op":"subscribe","channel":"book","depth":50,"symbols":["X"]}"#);
        let book = Channel::Book {
            depth: Depth::Top50,
        };
        assert_eq!((s.channel, s.throttle_ms), (book, None));
        let Command::Unsubscribe { channel, .. } =
            parse(r#"{"op":"unsubscribe","channel":"candles","interval":"1s","symbols":["X"]}"#)
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(channel.interval, Some(Interval::S1));
        let r = parse(
            r#"{"op":"report","id":3,"latency_ms":{"p50":1.5,"p99":12,"max":40.25},"count":900,"window_ms":10000}"#,
        )
        .unwrap();
        let want = Report {
            id: Some(3),
            p50_ms: 1.5,
            p99_ms: 12.0,
            max_ms: 40.25,
            count: 900,
            window_ms: 10_000,
        };
        assert_eq!(r, Command::Report(want));
    }

    #[test]
    fn refuses_bad_input_with_codes() {
        for (input, code, id) in [
            ("nope", ErrorCode::BadRequest, None),
            ("[1,2]", ErrorCode::BadRequest, None),
            (r#"{"id":3}"#, ErrorCode::BadRequest, Some(3)),
            (r#"{"op":5,"id":3}"#, ErrorCode::BadRequest, Some(3)),
            (r#"{"op":"ping","id":-1}"#, ErrorCode::BadRequest, None),
            (r#"{"op":"ping","id":"x"}"#, ErrorCode::BadRequest, None),
            (r#"{"op":"fly","id":5}"#, ErrorCode::UnknownOp, Some(5)),
        ] {
            let e = parse(input).unwrap_err();
            assert_eq!((e.code, e.id), (code, id), "{input}: {e}");
        }
        for body in [
            r#""op":"subscribe""#,
            r#""op":"subscribe","symbols":"AAPL""#,
            r#""op":"subscribe","symbols":[1]"#,
            r#""op":"subscribe","symbols":["A"],"snapshot":1"#,
            r#""op":"subscribe","symbols":["A"],"resume":{"A":"x"}"#,
            r#""op":"subscribe","symbols":["A"],"resume":[1]"#,
            r#""op":"subscribe","symbols":["A"],"throttle_ms":5"#,
            r#""op":"subscribe","symbols":["A"],"throttle_ms":"250""#,
            r#""op":"subscribe","symbols":["A"],"throttle_ms":-10"#,
            r#""op":"subscribe","symbols":["A"],"channel":7"#,
            r#""op":"subscribe","symbols":["A"],"channel":"trades""#,
            r#""op":"subscribe","symbols":["A"],"channel":"candles","interval":"3m""#,
            r#""op":"subscribe","symbols":["A"],"depth":10"#,
            r#""op":"list","channel":"book","interval":"1m""#,
            r#""op":"unsubscribe","symbols":["A"],"channel":"x""#,
        ] {
            let input = format!(r#"{{"id":4,{body}}}"#);
            let e = parse(&input).unwrap_err();
            assert_eq!(
                (e.code, e.id),
                (ErrorCode::BadRequest, Some(4)),
                "{input}: {e}"
            );
        }
    }

    #[test]
    fn bad_reports_say_what_is_wrong() {
        let good = r#""latency_ms":{"p50":1,"p99":2,"max":3},"count":5,"window_ms":10000"#;
        assert!(parse(&format!(r#"{{"op":"report",{good}}}"#)).is_ok());
        for (body, why) in [
            (
                r#""count":5,"window_ms":10"#,
                "missing field \"latency_ms\"",
            ),
            (
                r#""latency_ms":{"p50":1,"p99":2},"count":5,"window_ms":10"#,
                "latency_ms.max",
            ),
            (
                r#""latency_ms":{"p50":-1,"p99":2,"max":3},"count":5,"window_ms":10"#,
                "not a latency",
            ),
            (
                r#""latency_ms":{"p50":1,"p99":2,"max":1e12},"count":5,"window_ms":10"#,
                "not a latency",
            ),
            (
                r#""latency_ms":{"p50":"1","p99":2,"max":3},"count":5,"window_ms":10"#,
                "must be a number",
            ),
            (
                r#""latency_ms":{"p50":5,"p99":2,"max":3},"count":5,"window_ms":10"#,
                "out of order",
            ),
            (
                r#""latency_ms":{"p50":1,"p99":4,"max":3},"count":5,"window_ms":10"#,
                "out of order",
            ),
            (
                r#""latency_ms":{"p50":1,"p99":2,"max":3},"count":5,"window_ms":0"#,
                "window_ms",
            ),
            (
                r#""latency_ms":{"p50":1,"p99":2,"max":3},"count":0,"window_ms":10"#,
                "count",
            ),
            (
                r#""latency_ms":{"p50":1,"p99":2,"max":3},"window_ms":10"#,
                "count",
            ),
        ] {
            let e = parse(&format!(r#"{{"op":"report","id":2,{body}}}"#)).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.message.contains(why), "{body}: {}", e.message);
        }
        // Not JSON at all: NaN is no JSON number.
        let e = parse(r#"{"op":"report","latency_ms":{"p50":NaN}}"#).unwrap_err();
        assert!(e.message.starts_with("not valid JSON"), "{e}");
    }

    #[test]
    fn entries_are_sorted_into_symbols_patterns_and_malformed() {
        let got = sort_entries(
            ["AAPL", "BTC-*", "*", "btc-*", "BTC-*", "A*B", "MSFT"]
                .map(str::to_owned)
                .to_vec(),
        );
        assert_eq!(got.symbols, ["AAPL", "MSFT"]);
        assert_eq!(got.patterns, ["BTC-*", "*"]);
        assert_eq!(got.malformed, ["btc-*", "A*B"]);
    }
}
