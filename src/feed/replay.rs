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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::recording::{Reader, RecordingError};
use crate::tick::{now_ns, Tick};

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
    fn wants(&self, tick: &Tick) -> bool {
        self.symbols.is_empty() || self.symbols.contains(&*tick.symbol)
    }
}

/// What a scan of a recording found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scan {
    /// Tick lines in the file.
    pub ticks: u64,
    /// Tick lines a pass will play (after the offset and the symbol filter).
    pub selected: u64,
    /// Distinct symbols among the selected ticks.
    pub symbols: usize,
    /// Those symbols, sorted.
    pub symbol_names: Vec<Arc<str>>,
    /// Recorded `ts` of the first tick in the file.
    pub first_ts: u64,
    /// Recorded time from the first to the last selected tick.
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
    for item in Reader::open(path)? {
        let (_, tick) = item?;
        scan.ticks += 1;
        if scan.ticks == 1 {
            scan.first_ts = tick.ts;
        }
        if tick.ts < scan.first_ts.saturating_add(config.from.as_nanos() as u64)
            || !config.wants(&tick)
        {
            continue;
        }
        scan.selected += 1;
        first_sel.get_or_insert(tick.ts);
        last_sel = last_sel.max(tick.ts);
        if !symbols.contains(&tick.symbol) {
            symbols.insert(tick.symbol.clone());
        }
    }
    if scan.selected == 0 {
        let why = if scan.ticks == 0 {
            " (the file holds no tick lines)".to_owned()
        } else {
            format!(
                " ({} ticks in the file, none selected by the offset and symbol filter)",
                scan.ticks
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
    /// Passes started.
    pub passes: AtomicU64,
}

/// What a finished replay did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplayReport {
    /// Ticks published.
    pub ticks: u64,
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
/// sleeps between ticks to keep the recorded spacing.
///
/// The file should have been checked with [`scan`] first; a bad line met during play
/// still ends the replay with its error.
pub fn play(
    path: &Path,
    config: &ReplayConfig,
    stop: &AtomicBool,
    progress: &Progress,
    mut emit: impl FnMut(Tick) -> bool,
) -> Result<ReplayReport, ReplayError> {
    let mut report = ReplayReport::default();
    let mut symbols: HashSet<Arc<str>> = HashSet::new();
    let mut started: Option<Instant> = None;
    let mut last_emit = Instant::now();
    let offset = config.from.as_nanos() as u64;
    loop {
        report.passes += 1;
        progress.passes.fetch_add(1, Ordering::Relaxed);
        let mut epochs: HashMap<Arc<str>, Arc<str>> = HashMap::new();
        let mut reader = Reader::open(path)?;
        let mut file_first: Option<u64> = None;
        // (recorded ts of the pass's first tick, when the pass started)
        let mut origin: Option<(u64, Instant)> = None;
        let mut pass_ticks = 0u64;
        while let Some((_, mut tick)) = reader.next_tick()? {
            if stop.load(Ordering::Relaxed) {
                report.stopped = true;
                return Ok(finish(report, symbols, started, last_emit));
            }
            let first = *file_first.get_or_insert(tick.ts);
            // Opening quotes may be stamped a little before the first tick: `--from`
            // skips nothing unless given.
            let early = offset > 0 && tick.ts < first.saturating_add(offset);
            if early || !config.wants(&tick) {
                continue;
            }
            let recorded = tick.ts;
            let (t0, at) = *origin.get_or_insert((recorded, Instant::now()));
            if let Speed::Factor(speed) = config.speed {
                let ahead = recorded.saturating_sub(t0) as f64 / speed;
                let due = at + Duration::from_nanos(ahead as u64);
                if !sleep_until(due, stop) {
                    report.stopped = true;
                    return Ok(finish(report, symbols, started, last_emit));
                }
            }
            let epoch = epochs
                .entry(tick.epoch.clone())
                .or_insert_with(crate::tick::new_epoch)
                .clone();
            tick.epoch = epoch;
            tick.src_ts = Some(tick.src_ts.unwrap_or(recorded));
            tick.ts = now_ns();
            if !symbols.contains(&tick.symbol) {
                symbols.insert(tick.symbol.clone());
            }
            if !emit(tick) {
                report.stopped = true;
                return Ok(finish(report, symbols, started, last_emit));
            }
            last_emit = Instant::now();
            started.get_or_insert(last_emit);
            report.ticks += 1;
            pass_ticks += 1;
            report.span = report
                .span
                .max(Duration::from_nanos(recorded.saturating_sub(t0)));
            progress.ticks.fetch_add(1, Ordering::Relaxed);
        }
        if !config.looping || pass_ticks == 0 {
            return Ok(finish(report, symbols, started, last_emit));
        }
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

/// Runs [`play`] on its own OS thread named `feed-replay`, sending every tick to `sink`
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
            let r = play(&path, &config, &stop, &progress, |t| {
                sink.send_batch(vec![t], &stop) == 1
            });
            match &r {
                Ok(rep) => tracing::info!(
                    ticks = rep.ticks,
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
        let rep = play(path, config, &stop, &Progress::default(), |t| {
            got.push(t);
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
}
