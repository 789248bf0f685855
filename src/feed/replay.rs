//! Replaying a recording: ticks played back with their recorded spacing (or faster,
//! slower, or as fast as possible), re-stamped at publish time.
//!
//! Pacing follows the recorded `ts` of each tick: a tick recorded `d` after the first
//! one played is published `d / speed` after the pass started. A tick whose recorded
//! time goes backwards is published at once. Every pass (and so every `--loop`
//! iteration) gets a new `epoch` per recorded epoch, because a pass restarts the
//! numbering: subscribers see a `reset` and a fresh snapshot. `seq` and prices are
//! published as recorded; `ts` becomes the publish time and the recorded time moves to
//! `src_ts` (a tick that already had a `src_ts` keeps it: that is the true origin).
//!
//! Book lines (`book`, `book_update`) are played in the same stream, in file order and
//! paced by their recorded `ts` like ticks: same epoch renaming (a book's recorded epoch
//! gets the same new epoch as ticks of that epoch), `ts` re-stamped, `seq`, `prev_seq`,
//! levels and checksum as recorded. With `--from`, the book messages skipped are
//! folded, and a symbol whose first message played is an update gets the book they made
//! as a whole `book` first, so that what is published always applies.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::recording::{BookItem, Item, Reader, RecordingError};
use crate::book::{Book, BookMsg};
use crate::tick::{now_ns, Symbol};

/// Playback speed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Speed {
    /// Recorded spacing divided by this factor (1 = real time, 10 = ten times faster).
    Factor(f64),
    /// As fast as the sink takes them.
    Max,
}

impl Default for Speed {
    fn default() -> Self {
        Speed::Factor(1.0)
    }
}

impl FromStr for Speed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("max") {
            return Ok(Speed::Max);
        }
        let num = t.strip_suffix(['x', 'X']).unwrap_or(t);
        match num.parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => Ok(Speed::Factor(f)),
            _ => Err(format!(
                "invalid speed {s:?}; write a positive factor like 0.5, 1, 10 or 10x, or max"
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Speed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(f) => f.to_string().parse(),
            Raw::Text(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Speed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Speed::Factor(x) => write!(f, "{x}x"),
            Speed::Max => f.write_str("max"),
        }
    }
}

/// What to play and how.
#[derive(Clone, Debug, Default)]
pub struct ReplayConfig {
    /// Playback speed.
    pub speed: Speed,
    /// Start again from the beginning after the last tick, until stopped.
    pub looping: bool,
    /// Skip ticks recorded less than this long after the first tick of the file.
    pub from: Duration,
    /// Play only these symbols (all when empty).
    pub symbols: HashSet<String>,
}

impl ReplayConfig {
    fn wants(&self, symbol: &str) -> bool {
        self.symbols.is_empty() || self.symbols.contains(symbol)
    }
}

fn symbol_of(item: &Item) -> &Symbol {
    match item {
        Item::Tick(t) => &t.symbol,
        Item::Book(b) => &b.msg.symbol,
    }
}

fn ts_of(item: &Item) -> u64 {
    match item {
        Item::Tick(t) => t.ts,
        Item::Book(b) => b.msg.ts,
    }
}

/// What a scan of a recording found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scan {
    /// Tick lines in the file.
    pub ticks: u64,
    /// Tick lines a pass will play (after the offset and the symbol filter).
    pub selected: u64,
    /// Book lines in the file.
    pub books: u64,
    /// Book lines a pass will play (after the offset and the symbol filter).
    pub books_selected: u64,
    /// Distinct symbols among the selected ticks.
    pub symbols: usize,
    /// Those symbols, sorted.
    pub symbol_names: Vec<Arc<str>>,
    /// Recorded `ts` of the first tick or book line in the file.
    pub first_ts: u64,
    /// Recorded time from the first to the last selected tick or book line.
    pub span: Duration,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The recording is unreadable or has a bad line. (Not a `source`: its message
    /// already holds the cause, which would otherwise be printed twice.)
    #[error("{0}")]
    Recording(RecordingError),
    /// Nothing in the file matches what was asked.
    #[error("{path}: no ticks to play{why}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What selected nothing.
        why: String,
    },
}

impl From<RecordingError> for ReplayError {
    fn from(e: RecordingError) -> Self {
        ReplayError::Recording(e)
    }
}

/// Reads the whole recording once, checking every line, and measures what a pass of
/// `config` will play. Nothing is published, so a bad file changes nothing.
pub fn scan(path: &Path, config: &ReplayConfig) -> Result<Scan, ReplayError> {
    let mut scan = Scan::default();
    let mut symbols: HashSet<Arc<str>> = HashSet::new();
    let mut first_sel: Option<u64> = None;
    let mut last_sel = 0u64;
    let mut first: Option<u64> = None;
    let mut reader = Reader::open(path)?;
    while let Some((_, item)) = reader.next_item()? {
        let is_tick = matches!(item, Item::Tick(_));
        match is_tick {
            true => scan.ticks += 1,
            false => scan.books += 1,
        }
        let ts = ts_of(&item);
        let first = *first.get_or_insert(ts);
        if ts < first.saturating_add(config.from.as_nanos() as u64)
            || !config.wants(symbol_of(&item))
        {
            continue;
        }
        match is_tick {
            true => scan.selected += 1,
            false => scan.books_selected += 1,
        }
        first_sel.get_or_insert(ts);
        last_sel = last_sel.max(ts);
        if !symbols.contains(symbol_of(&item)) {
            symbols.insert(symbol_of(&item).clone());
        }
    }
    scan.first_ts = first.unwrap_or(0);
    if scan.selected + scan.books_selected == 0 {
        let why = if scan.ticks + scan.books == 0 {
            " (the file holds no tick or book lines)".to_owned()
        } else {
            format!(
                " ({} ticks and {} book messages in the file, none selected by the offset and symbol filter)",
                scan.ticks, scan.books
            )
        };
        return Err(ReplayError::Empty {
            path: path.to_owned(),
            why,
        });
    }
    scan.symbols = symbols.len();
    scan.symbol_names = symbols.into_iter().collect();
    scan.symbol_names.sort();
    scan.span = Duration::from_nanos(last_sel.saturating_sub(first_sel.unwrap_or(last_sel)));
    Ok(scan)
}

/// Live counters of a running replay, readable from other threads (progress bars).
#[derive(Debug, Default)]
pub struct Progress {
    /// Ticks published so far, over all passes.
    pub ticks: AtomicU64,
    /// Book messages published so far, over all passes.
    pub books: AtomicU64,
    /// Passes started.
    pub passes: AtomicU64,
}

/// What a finished replay did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplayReport {
    /// Ticks published.
    pub ticks: u64,
    /// Book messages published.
    pub books: u64,
    /// Passes started over the file (1 without `--loop`).
    pub passes: u64,
    /// Distinct symbols published.
    pub symbols: usize,
    /// Wall time from the first published tick to the last, on the replay's own clock.
    pub elapsed: Duration,
    /// Recorded time from the first tick of the last pass to the furthest one published.
    pub span: Duration,
    /// Whether it ended because it was stopped or the sink went away.
    pub stopped: bool,
}

/// Plays `path` into `emit` until the file ends (or forever with `looping`), `stop` is
/// set, or `emit` returns false (the sink went away). Runs on the calling thread and
/// sleeps between items to keep the recorded spacing.
///
/// The file should have been checked with [`scan`] first; a bad line met during play
/// still ends the replay with its error.
pub fn play(
    path: &Path,
    config: &ReplayConfig,
    stop: &AtomicBool,
    progress: &Progress,
    mut emit: impl FnMut(Item) -> bool,
) -> Result<ReplayReport, ReplayError> {
    let mut run = Run {
        report: ReplayReport::default(),
        symbols: HashSet::new(),
        started: None,
        last_emit: Instant::now(),
    };
    loop {
        run.report.passes += 1;
        progress.passes.fetch_add(1, Ordering::Relaxed);
        let played = run.pass(path, config, stop, progress, &mut emit)?;
        if run.report.stopped || !config.looping || played == 0 {
            return Ok(run.finish());
        }
    }
}

/// A replay under way: what it has done so far.
struct Run {
    report: ReplayReport,
    symbols: HashSet<Arc<str>>,
    started: Option<Instant>,
    last_emit: Instant,
}

/// One pass's state: new epochs, its time origin, and the books skipped by `--from`.
#[derive(Default)]
struct Pass {
    epochs: HashMap<Arc<str>, Arc<str>>,
    file_first: Option<u64>,
    /// (recorded ts of the pass's first item, when the pass started)
    origin: Option<(u64, Instant)>,
    /// Books of symbols whose messages `--from` skipped, as those messages made them.
    skipped: HashMap<Symbol, Book>,
    played: u64,
}

impl Run {
    /// Plays the file once; how many items it played (the report says if it stopped).
    fn pass(
        &mut self,
        path: &Path,
        config: &ReplayConfig,
        stop: &AtomicBool,
        progress: &Progress,
        emit: &mut impl FnMut(Item) -> bool,
    ) -> Result<u64, ReplayError> {
        let offset = config.from.as_nanos() as u64;
        let mut reader = Reader::open(path)?;
        let mut pass = Pass::default();
        while let Some((_, item)) = reader.next_item()? {
            if stop.load(Ordering::Relaxed) {
                self.report.stopped = true;
                return Ok(pass.played);
            }
            let recorded = ts_of(&item);
            let first = *pass.file_first.get_or_insert(recorded);
            if !config.wants(symbol_of(&item)) {
                continue;
            }
            // Opening quotes may be stamped a little before the first tick: `--from`
            // skips nothing unless given.
            if offset > 0 && recorded < first.saturating_add(offset) {
                pass.skip(item);
                continue;
            }
            let (t0, at) = *pass.origin.get_or_insert((recorded, Instant::now()));
            if let Speed::Factor(speed) = config.speed {
                let ahead = recorded.saturating_sub(t0) as f64 / speed;
                let due = at + Duration::from_nanos(ahead as u64);
                if !sleep_until(due, stop) {
                    self.report.stopped = true;
                    return Ok(pass.played);
                }
            }
            for out in pass.restamp(item) {
                if !self.emit(out, progress, emit) {
                    self.report.stopped = true;
                    return Ok(pass.played);
                }
            }
            pass.played += 1;
            self.report.span = self
                .report
                .span
                .max(Duration::from_nanos(recorded.saturating_sub(t0)));
        }
        Ok(pass.played)
    }

    /// Hands one item over and counts it; false when the sink went away.
    fn emit(
        &mut self,
        item: Item,
        progress: &Progress,
        emit: &mut impl FnMut(Item) -> bool,
    ) -> bool {
        let symbol = symbol_of(&item).clone();
        let is_tick = matches!(item, Item::Tick(_));
        if !emit(item) {
            return false;
        }
        if !self.symbols.contains(&symbol) {
            self.symbols.insert(symbol);
        }
        self.last_emit = Instant::now();
        self.started.get_or_insert(self.last_emit);
        if is_tick {
            self.report.ticks += 1;
            progress.ticks.fetch_add(1, Ordering::Relaxed);
        } else {
            self.report.books += 1;
            progress.books.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    fn finish(self) -> ReplayReport {
        finish(self.report, self.symbols, self.started, self.last_emit)
    }
}

impl Pass {
    /// A skipped item: a book message is folded into its symbol's skipped book.
    fn skip(&mut self, item: Item) {
        let Item::Book(b) = item else { return };
        let msg = &b.msg;
        match self.skipped.get_mut(&msg.symbol) {
            Some(book) if msg.prev_seq.is_some() => {
                // The reader checked that it follows.
                let _ = book.apply(msg, usize::MAX);
            }
            _ => {
                if msg.prev_seq.is_none() {
                    self.skipped.insert(msg.symbol.clone(), Book::from_msg(msg));
                }
            }
        }
    }

    /// What to publish for `item`, re-stamped: the item, after the whole book the
    /// skipped messages of its symbol made when it is the first update played.
    fn restamp(&mut self, item: Item) -> Vec<Item> {
        let now = now_ns();
        match item {
            Item::Tick(mut tick) => {
                tick.epoch = self.epoch(&tick.epoch);
                tick.src_ts = Some(tick.src_ts.unwrap_or(tick.ts));
                tick.ts = now;
                vec![Item::Tick(tick)]
            }
            Item::Book(mut b) => {
                let mut out = Vec::with_capacity(2);
                if let Some(book) = self.skipped.remove(&b.msg.symbol) {
                    if b.msg.prev_seq.is_some() {
                        out.push(self.whole(&b, &book, now));
                    }
                }
                b.msg.epoch = self.epoch(&b.msg.epoch);
                b.msg.ts = now;
                out.push(Item::Book(b));
                out
            }
        }
    }

    /// The whole `book` of `book` (skipped messages of `like`'s symbol), re-stamped.
    fn whole(&mut self, like: &BookItem, book: &Book, now: u64) -> Item {
        let msg = BookMsg {
            symbol: like.msg.symbol.clone(),
            epoch: self.epoch(&book.epoch),
            seq: book.seq,
            prev_seq: None,
            ts: now,
            bids: book.levels.side(crate::book::Side::Bid).to_vec(),
            asks: book.levels.side(crate::book::Side::Ask).to_vec(),
            checksum: Some(book.levels.checksum()),
        };
        Item::Book(Box::new(BookItem {
            msg,
            spec: like.spec,
        }))
    }

    /// This pass's epoch for a recorded one.
    fn epoch(&mut self, recorded: &Arc<str>) -> Arc<str> {
        self.epochs
            .entry(recorded.clone())
            .or_insert_with(crate::tick::new_epoch)
            .clone()
    }
}

fn finish(
    mut report: ReplayReport,
    symbols: HashSet<Arc<str>>,
    started: Option<Instant>,
    last: Instant,
) -> ReplayReport {
    report.symbols = symbols.len();
    report.elapsed = started.map_or(Duration::ZERO, |s| last.saturating_duration_since(s));
    report
}

/// Sleeps until `due` in slices short enough to notice `stop`; false when stopped.
fn sleep_until(due: Instant, stop: &AtomicBool) -> bool {
    const SLICE: Duration = Duration::from_millis(50);
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(SLICE));
    }
}

/// Runs [`play`] on its own OS thread named `feed-replay`, sending every item to `sink`
/// (a full bounded channel blocks only this thread). The thread ends like [`play`] or
/// when the receiver is dropped.
///
/// # Panics
///
/// If the operating system cannot create the thread.
pub fn spawn<S: super::Sink>(
    path: PathBuf,
    config: ReplayConfig,
    sink: S,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> std::thread::JoinHandle<Result<ReplayReport, ReplayError>> {
    std::thread::Builder::new()
        .name("feed-replay".into())
        .spawn(move || {
            let r = play(&path, &config, &stop, &progress, |item| {
                sink.send_items(vec![item], &stop) == 1
            });
            match &r {
                Ok(rep) => tracing::info!(
                    ticks = rep.ticks,
                    books = rep.books,
                    passes = rep.passes,
                    elapsed_ms = rep.elapsed.as_millis() as u64,
                    "replay finished"
                ),
                Err(e) => tracing::error!(error = %e, "replay failed"),
            }
            r
        })
        .expect("failed to spawn the feed-replay thread")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::recording::Writer;
    use crate::tick::Tick;

    fn tick(symbol: &str, seq: u64, ts_ms: u64) -> Tick {
        Tick {
            symbol: symbol.into(),
            epoch: "rec".into(),
            seq,
            ts: 1_000_000_000_000 + ts_ms * 1_000_000,
            bid: 10.0 + seq as f64,
            ask: 10.5 + seq as f64,
            bid_size: 1,
            ask_size: 1,
            last: 10.25,
            last_size: 1,
            volume: seq,
            src_ts: None,
        }
    }

    fn write(dir: &Path, ticks: &[Tick]) -> PathBuf {
        let path = dir.join("r.ndjson");
        let mut w = Writer::create(&path, "test").unwrap();
        for t in ticks {
            w.write_tick(t).unwrap();
        }
        w.finish().unwrap();
        path
    }

    fn run(path: &Path, config: &ReplayConfig, limit: usize) -> (Vec<Tick>, ReplayReport) {
        let stop = AtomicBool::new(false);
        let mut got = Vec::new();
        let rep = play(path, config, &stop, &Progress::default(), |item| {
            if let Item::Tick(t) = item {
                got.push(t);
            }
            got.len() < limit
        })
        .unwrap();
        (got, rep)
    }

    #[test]
    fn speed_parses() {
        assert_eq!("max".parse::<Speed>().unwrap(), Speed::Max);
        assert_eq!("10".parse::<Speed>().unwrap(), Speed::Factor(10.0));
        assert_eq!("0.5x".parse::<Speed>().unwrap(), Speed::Factor(0.5));
        for bad in ["0", "-1", "fast", "inf", "NaN", ""] {
            assert!(bad.parse::<Speed>().is_err(), "{bad}");
        }
    }

    #[test]
    fn speed_reads_from_toml_as_number_or_text() {
        #[derive(serde::Deserialize)]
        struct C {
            a: Speed,
            b: Speed,
            c: Speed,
        }
        let c: C = toml::from_str("a = 10\nb = \"max\"\nc = 0.5\n").unwrap();
        assert_eq!(
            (c.a, c.b, c.c),
            (Speed::Factor(10.0), Speed::Max, Speed::Factor(0.5))
        );
        assert!(toml::from_str::<C>("a = 0\nb = 1\nc = 1\n").is_err());
    }

    #[test]
    fn restamps_keeps_order_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let ticks: Vec<Tick> = (1..=20u64)
            .map(|i| tick(if i % 2 == 0 { "A" } else { "B" }, i.div_ceil(2), i * 100))
            .collect();
        let path = write(dir.path(), &ticks);
        let before = now_ns();
        let cfg = ReplayConfig {
            speed: Speed::Max,
            from: Duration::from_millis(1000),
            symbols: ["A".to_owned()].into(),
            ..Default::default()
        };
        let (got, rep) = run(&path, &cfg, usize::MAX);
        // Offset 1 s after the first tick (100 ms): ts >= 1100 ms, symbol A: 1100..=2000.
        let want: Vec<_> = ticks
            .iter()
            .filter(|t| &*t.symbol == "A" && t.ts >= ticks[0].ts + 1_000_000_000)
            .collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                (&g.symbol, g.seq, g.bid, g.ask),
                (&w.symbol, w.seq, w.bid, w.ask)
            );
            assert_eq!(g.src_ts, Some(w.ts));
            assert!(g.ts >= before);
            assert_ne!(&*g.epoch, "rec");
        }
        assert_eq!(rep.ticks, want.len() as u64);
        assert_eq!(rep.symbols, 1);
        let s = scan(&path, &cfg).unwrap();
        assert_eq!(s.selected, want.len() as u64);
        assert_eq!(s.ticks, 20);
    }

    #[test]
    fn loop_gives_each_pass_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &[tick("A", 1, 0), tick("A", 2, 1)]);
        let cfg = ReplayConfig {
            speed: Speed::Max,
            looping: true,
            ..Default::default()
        };
        let (got, rep) = run(&path, &cfg, 6);
        assert_eq!(
            got.iter().map(|t| t.seq).collect::<Vec<_>>(),
            [1, 2, 1, 2, 1, 2]
        );
        assert_eq!(got[0].epoch, got[1].epoch);
        assert_ne!(got[1].epoch, got[2].epoch);
        assert_ne!(got[3].epoch, got[4].epoch);
        assert_eq!(rep.passes, 3);
        assert!(rep.stopped);
    }

    #[test]
    fn speed_divides_the_recorded_spacing() {
        let dir = tempfile::tempdir().unwrap();
        // 2 s recorded over 21 ticks, played at 10x: about 200 ms.
        let ticks: Vec<Tick> = (0..=20).map(|i| tick("A", i + 1, i * 100)).collect();
        let path = write(dir.path(), &ticks);
        let cfg = ReplayConfig {
            speed: Speed::Factor(10.0),
            ..Default::default()
        };
        let (_, rep) = run(&path, &cfg, usize::MAX);
        assert_eq!(rep.span, Duration::from_secs(2));
        let ms = rep.elapsed.as_millis();
        assert!((190..=400).contains(&ms), "{ms} ms");
    }

    #[test]
    fn empty_selection_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &[tick("A", 1, 0)]);
        let cfg = ReplayConfig {
            symbols: ["ZZZ".to_owned()].into(),
            ..Default::default()
        };
        let e = scan(&path, &cfg).unwrap_err().to_string();
        assert!(e.contains("none selected"), "{e}");
    }

    /// A book line of symbol A at `ts_ms` (2 decimals).
    fn book_line(seq: u64, prev: Option<u64>, ts_ms: u64, bid: (u64, u64)) -> String {
        let kind = if prev.is_some() {
            "book_update"
        } else {
            "book"
        };
        let prev = prev.map_or(String::new(), |p| format!(r#""prev_seq":{p},"#));
        let ts = 1_000_000_000_000 + ts_ms * 1_000_000;
        let price = crate::book::json::price_text(bid.0, crate::book::Spec::new(2));
        format!(
            r#"{{"type":"{kind}","symbol":"A","epoch":"rec","seq":{seq},{prev}"ts":{ts},"bids":[[{price},{}]],"asks":[]}}"#,
            bid.1
        )
    }

    #[test]
    fn books_play_in_order_and_from_folds_what_it_skips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.ndjson");
        let t = |seq, ms| String::from_utf8(tick("A", seq, ms).to_json(crate::tick::Kind::Tick));
        let lines = [
            book_line(1, None, 0, (1000, 5)),
            t(1, 100).unwrap(),
            book_line(2, Some(1), 200, (1001, 3)),
            book_line(3, Some(2), 1200, (1002, 4)),
            t(2, 1300).unwrap(),
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let stop = AtomicBool::new(false);
        let mut got = Vec::new();
        let cfg = ReplayConfig {
            speed: Speed::Max,
            ..Default::default()
        };
        let rep = play(&path, &cfg, &stop, &Progress::default(), |i| {
            got.push(i);
            true
        })
        .unwrap();
        assert_eq!((rep.ticks, rep.books), (2, 3));
        let kinds: Vec<String> = got
            .iter()
            .map(|i| match i {
                Item::Tick(t) => format!("t{}", t.seq),
                Item::Book(b) => format!("b{}", b.msg.seq),
            })
            .collect();
        assert_eq!(kinds, ["b1", "t1", "b2", "b3", "t2"]);
        let Item::Book(b) = &got[0] else { panic!() };
        let Item::Tick(t) = &got[1] else { panic!() };
        assert_eq!(b.msg.epoch, t.epoch, "one new epoch for ticks and books");
        assert_ne!(&*b.msg.epoch, "rec");

        // From 1 s on: the book the skipped lines made comes whole before update 3.
        let cfg = ReplayConfig {
            from: Duration::from_secs(1),
            ..cfg
        };
        got.clear();
        play(&path, &cfg, &stop, &Progress::default(), |i| {
            got.push(i);
            true
        })
        .unwrap();
        let Item::Book(whole) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!((whole.msg.seq, whole.msg.prev_seq), (2, None));
        assert_eq!(
            whole.msg.bids,
            [
                crate::book::Level::new(1001, 3),
                crate::book::Level::new(1000, 5)
            ]
        );
        let Item::Book(next) = &got[1] else { panic!() };
        assert_eq!((next.msg.seq, next.msg.prev_seq), (3, Some(2)));
        assert_eq!(whole.msg.epoch, next.msg.epoch);
        assert_eq!(got.len(), 3);
    }
}
