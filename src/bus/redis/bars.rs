//! Bars in Redis: the closed bars of every symbol and interval, and the forming state a
//! holder continues from, so that backfill is the same on every node and after a
//! restart.
//!
//! | name | what |
//! | --- | --- |
//! | `<prefix>bars:{S}:<interval>` | sorted set of closed bars; score the bar's `start` in ms, member its bar object (JSON, `"closed":true`); the newest `--redis-bars` kept |
//! | `<prefix>forming:{S}` | string; the forming state ([`crate::hub::candles::stored`]): the last tick folded and each interval's forming bar |
//!
//! Who writes: the feed's publisher, which sees every tick of its symbols, adds each bar
//! it closes (`ZADD NX`, then trims) and sets the forming state at most every
//! [`FORMING_EVERY`] per symbol, after the ticks it covers are in `hist:`. For a symbol
//! with no tickstream feed holding its lease (a publisher that follows only the bus
//! section), each node adds the bars it made whole from an unbroken run of ticks: the
//! same bar from every node, so adding it twice changes nothing.
//!
//! Who reads: a node that starts receiving a symbol reads its forming state and the
//! `hist:` ticks after it, and continues the same forming bars; a node asked for the
//! candles of a symbol reads its closed bars once, then keeps them up to date itself.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use redis::{Pipeline, Value};

use super::arrival::stream_tick;
use super::topology::Topology;
use super::Keys;
use crate::hub::candles::{stored, Bar, Bars, Formed, Interval};
use crate::tick::{Symbol, Tick};

/// How often, at most, a publisher writes the forming state of a symbol. A node that
/// starts receiving it reads the ticks since from `hist:`, so this bounds that read.
pub const FORMING_EVERY: Duration = Duration::from_millis(100);

impl Keys {
    /// `<prefix>bars:{S}:<interval>`.
    pub fn bars(&self, s: &str, interval: Interval) -> String {
        format!("{}bars:{{{s}}}:{interval}", self.prefix)
    }
    /// `<prefix>forming:{S}`.
    pub fn forming(&self, s: &str) -> String {
        format!("{}forming:{{{s}}}", self.prefix)
    }
}

/// The score of a bar: its start in ms (exact: bars start on whole seconds).
fn score(bar: &Bar) -> u64 {
    bar.start / 1_000_000
}

/// Adds a closed bar to its set (nothing when that very bar is there) and trims the set
/// to its newest `keep`.
pub(crate) fn add(
    p: &mut Pipeline,
    keys: &Keys,
    symbol: &str,
    iv: Interval,
    bar: &Bar,
    keep: usize,
) {
    let key = keys.bars(symbol, iv);
    let mut json = Vec::with_capacity(160);
    bar.write_json(true, &mut json);
    p.cmd("ZADD")
        .arg(&key)
        .arg("NX")
        .arg(score(bar))
        .arg(json)
        .ignore();
    p.cmd("ZREMRANGEBYRANK")
        .arg(&key)
        .arg(0)
        .arg(-(keep.max(1) as i64) - 1)
        .ignore();
}

/// Removes the bars of a set from `start` (ns) on: the series went back in time.
pub(crate) fn rewind(p: &mut Pipeline, keys: &Keys, symbol: &str, iv: Interval, start: u64) {
    p.cmd("ZREMRANGEBYSCORE")
        .arg(keys.bars(symbol, iv))
        .arg(start / 1_000_000)
        .arg("+inf")
        .ignore();
}

/// Reads the newest `n` closed bars of a set.
pub(crate) fn read(p: &mut Pipeline, keys: &Keys, symbol: &str, iv: Interval, n: usize) {
    let n = n.max(1) as i64;
    p.cmd("ZRANGE").arg(keys.bars(symbol, iv)).arg(-n).arg(-1);
}

/// The bars of a `ZRANGE` reply, oldest first: malformed members are skipped, and of
/// two bars with one start the one with more ticks is kept (a whole bar over a part).
pub(crate) fn parse_bars(reply: Value, iv: Interval) -> (Vec<Bar>, usize) {
    let Value::Array(members) = reply else {
        return (Vec::new(), 0);
    };
    let mut bad = 0;
    let mut out: Vec<Bar> = Vec::with_capacity(members.len());
    for m in members {
        let bar = match &m {
            Value::BulkString(b) => Bar::parse(b, iv),
            _ => None,
        };
        match (bar, out.last_mut()) {
            (None, _) => bad += 1,
            (Some(b), Some(prev)) if prev.start == b.start => {
                if b.ticks > prev.ticks {
                    *prev = b;
                }
            }
            (Some(b), _) => out.push(b),
        }
    }
    (out, bad)
}

/// The forming state of a `GET` reply, when there is a well-formed one.
fn parse_formed(reply: &Value) -> Option<Formed> {
    match reply {
        Value::BulkString(b) => stored::parse(b),
        _ => None,
    }
}

/// Reads the ticks of `hist:` after `seq`, or all of it (`seq` `None`).
fn read_hist(p: &mut Pipeline, keys: &Keys, symbol: &str, seq: Option<u64>, n: usize) {
    let from = seq.map_or_else(|| "-".to_owned(), |s| format!("({s}-0"));
    p.cmd("XRANGE")
        .arg(keys.hist(symbol))
        .arg(from)
        .arg("+")
        .arg("COUNT")
        .arg(n.max(1));
}

/// The ticks of an `XRANGE` reply on `hist:`, checked.
fn parse_hist(symbol: &str, reply: Value) -> Vec<Tick> {
    match reply {
        Value::Array(entries) => entries
            .into_iter()
            .filter_map(|e| stream_tick(symbol, e))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether the ticks read after a forming state continue it: of its epoch (the stream
/// starts again with each epoch, so ids after the state's `seq` in another epoch would
/// skip that epoch's first ticks).
fn continues(formed: &Formed, after: &[Tick]) -> bool {
    after.first().is_none_or(|t| t.epoch == formed.0.epoch)
}

/// Reads the stored forming state of each of `symbols` and the `hist:` ticks after it
/// (up to `history`): the symbols that have one, with both.
pub(crate) async fn read_formed(
    q: &Topology,
    keys: &Keys,
    symbols: &[Symbol],
    history: usize,
) -> redis::RedisResult<Vec<(Symbol, Formed, Vec<Tick>)>> {
    let replies = q
        .per_symbol(symbols, |s, p| {
            p.cmd("GET").arg(keys.forming(s));
        })
        .await?;
    let formed: HashMap<Symbol, Formed> = symbols
        .iter()
        .zip(replies)
        .filter_map(|(s, r)| Some((s.clone(), parse_formed(r.first()?)?)))
        .collect();
    if formed.is_empty() {
        return Ok(Vec::new());
    }
    let syms: Vec<Symbol> = formed.keys().cloned().collect();
    let after = hist_after(q, keys, &syms, history, |s| Some(formed[s].0.seq)).await?;
    let (mut out, mut again) = (Vec::new(), Vec::new());
    for (s, ticks) in syms.into_iter().zip(after) {
        if continues(&formed[&s], &ticks) {
            out.push((s, ticks));
        } else {
            again.push(s);
        }
    }
    // The stream holds another epoch than the state: all of it follows the state.
    let all = hist_after(q, keys, &again, history, |_| None).await?;
    out.extend(again.into_iter().zip(all));
    Ok(out
        .into_iter()
        .map(|(s, ticks)| {
            let f = formed[&s].clone();
            (s, f, ticks)
        })
        .collect())
}

/// The `hist:` ticks of each symbol after the `seq` `from` gives (all of it for `None`).
async fn hist_after(
    q: &Topology,
    keys: &Keys,
    symbols: &[Symbol],
    history: usize,
    from: impl Fn(&Symbol) -> Option<u64>,
) -> redis::RedisResult<Vec<Vec<Tick>>> {
    if symbols.is_empty() {
        return Ok(Vec::new());
    }
    let replies = q
        .per_symbol(symbols, |s, p| read_hist(p, keys, s, from(s), history))
        .await?;
    Ok(symbols
        .iter()
        .zip(replies)
        .map(|(s, r)| parse_hist(s, r.into_iter().next().unwrap_or(Value::Nil)))
        .collect())
}

/// The bars a feed's publisher makes of the symbols it publishes, and what of them it
/// has yet to write.
pub(crate) struct FeedBars {
    bars: HashMap<Symbol, Bars>,
    /// When the forming state of each symbol was last written.
    written_at: HashMap<Symbol, Instant>,
    /// Symbols whose forming state changed since it was written.
    unwritten: HashSet<Symbol>,
    /// Bars closed while restoring, written with the next batch.
    pending: Vec<(Symbol, Interval, Bar)>,
    /// Bars kept per set.
    keep: usize,
}

impl FeedBars {
    /// Nothing folded yet; sets trimmed to `keep` bars.
    pub fn new(keep: usize) -> FeedBars {
        FeedBars {
            bars: HashMap::new(),
            written_at: HashMap::new(),
            unwritten: HashSet::new(),
            pending: Vec::new(),
            keep,
        }
    }

    /// Folds a published tick, adding to `p` (its symbol's shard's pipeline, after the
    /// tick's own commands) the bars it closed, or the removal of those a rewind undid.
    pub fn fold(&mut self, t: &Tick, p: &mut Pipeline, keys: &Keys) {
        let bars = self
            .bars
            .entry(t.symbol.clone())
            .or_insert_with(|| Bars::new(1));
        let folded = bars.fold(t);
        if !folded.any() {
            return;
        }
        for (iv, change) in Interval::ALL.into_iter().zip(&folded.changes) {
            if let (true, Some((f, _))) = (change.rewound, bars.forming(iv)) {
                rewind(p, keys, &t.symbol, iv, f.start);
            }
            if let Some((bar, _)) = &change.closed {
                add(p, keys, &t.symbol, iv, bar, self.keep);
            }
        }
        self.unwritten.insert(t.symbol.clone());
    }

    /// The forming states to write now, by symbol: those changed and last written
    /// [`FORMING_EVERY`] ago or more, or every changed one with `all`.
    pub fn due(&mut self, now: Instant, all: bool) -> Vec<(Symbol, Vec<u8>)> {
        let mut out = Vec::new();
        let written_at = &mut self.written_at;
        let bars = &self.bars;
        self.unwritten.retain(|s| {
            let due = all
                || written_at
                    .get(s)
                    .is_none_or(|at| now.saturating_duration_since(*at) >= FORMING_EVERY);
            if !due {
                return true;
            }
            if let Some(json) = bars.get(s).and_then(stored::to_json) {
                written_at.insert(s.clone(), now);
                out.push((s.clone(), json));
            }
            false
        });
        out
    }

    /// Whether some forming state waits to be written.
    pub fn pending(&self) -> bool {
        !self.unwritten.is_empty()
    }

    /// Continues the bars of `symbol` from its stored forming state and the ticks after
    /// it (a feed that restarted, or took the symbol over from another). The bars those
    /// ticks close are written with the next batch ([`FeedBars::take_pending`]).
    pub fn restore(&mut self, symbol: &Symbol, formed: Formed, after: &[Tick]) {
        let bars = self
            .bars
            .entry(symbol.clone())
            .or_insert_with(|| Bars::new(1));
        let (base, forming) = formed;
        bars.restore(base, forming);
        for t in after {
            let folded = bars.fold(t);
            for (iv, bar, _) in folded.closed() {
                self.pending.push((symbol.clone(), iv, *bar));
            }
        }
        self.unwritten.insert(symbol.clone());
    }

    /// Takes the bars closed while restoring (their symbol, interval and bar).
    pub fn take_pending(&mut self) -> Vec<(Symbol, Interval, Bar)> {
        std::mem::take(&mut self.pending)
    }

    /// Bars kept per set.
    pub fn keep(&self) -> usize {
        self.keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_symbol_as_hash_tag() {
        let k = Keys::new("tickstream:");
        assert_eq!(k.bars("AAPL", Interval::M1), "tickstream:bars:{AAPL}:1m");
        assert_eq!(k.forming("EUR/USD"), "tickstream:forming:{EUR/USD}");
    }

    #[test]
    fn a_reply_keeps_the_fuller_of_two_bars_with_one_start() {
        let s = 1_764_284_460_000_000_000;
        let mut part = Bar::open_at(s, 10.0, 1);
        let mut whole = part;
        whole.add(11.0, 2);
        whole.add(10.5, 0);
        part.add(9.0, 0);
        let next = Bar::open_at(s + 60_000_000_000, 12.0, 3);
        let json = |b: &Bar| {
            let mut v = Vec::new();
            b.write_json(true, &mut v);
            Value::BulkString(v)
        };
        let reply = Value::Array(vec![
            json(&part),
            json(&whole),
            Value::BulkString(b"nope".to_vec()),
            json(&next),
        ]);
        let (bars, bad) = parse_bars(reply, Interval::M1);
        assert_eq!(bad, 1);
        assert_eq!(bars.len(), 2);
        assert_eq!(bars[0], whole);
        assert_eq!(bars[1], next);
    }
}
