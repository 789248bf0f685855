//! The recording format: one JSON object per line (NDJSON), zstd-compressed when the
//! file name ends in `.zst` or `.zstd`.
//!
//! A recording may start with a header line `{"type":"recording","version":1,…}`; every
//! other line is a server message as sent to clients. `tick` lines are what replays
//! play back: the tick object of the protocol, with its original `ts` (and `src_ts`
//! where it was itself replayed). A symbol's `snapshot` line that comes before any of its
//! `tick` lines is its opening quote (what a subscriber got first): readers, and so
//! replays, yield it as the symbol's first tick. Other `snapshot` lines and `gap` lines
//! are kept for the record and skipped by replays. Blank lines are ignored.
//!
//! `book` and `book_update` lines are the book messages of the protocol, as a node sent
//! them, in the order they came beside the ticks (a recording without them is a ticks
//! only recording, read as before). Their prices carry the symbol's decimals as written
//! (`189.10`: 2 decimals), which is how a reader learns them: every price of a symbol
//! must be written with the same number of decimals throughout the file. Each book
//! line is checked on its own and applied to the symbol's book so far: an update must
//! follow it (`prev_seq`) and match its `checksum`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::book::{Book, BookMsg, Level, Spec, MAX_DECIMALS};
use crate::tick::{valid_symbol, Kind, Symbol, Tick};

/// Most levels a side a recorded book line may have: the node enforces its own
/// `--book-max-levels` when the replay publishes it.
const MAX_LEVELS: usize = 100_000;

/// One thing a recording plays back: a tick, or a book message.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// A tick.
    Tick(Tick),
    /// A `book` or `book_update`, with its symbol's price decimals.
    Book(Box<BookItem>),
}

/// A book message as read from a recording: the message (its `checksum` always set)
/// and how its symbol's prices are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookItem {
    /// The message.
    pub msg: BookMsg,
    /// The symbol's price decimals.
    pub spec: Spec,
}

impl BookItem {
    /// Appends the message as one JSON object, its prices with the symbol's decimals.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.msg.write_json(self.spec, out);
    }
}

/// Format version written in the header line.
pub const VERSION: u32 = 1;

/// Why a recording could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// Opening, reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not a valid recording line.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

fn compressed(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("zst") | Some("zstd")
    )
}

/// Writes a recording.
pub struct Writer {
    path: PathBuf,
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
}

impl Writer {
    /// Creates `path` (compressed by its extension) and writes the header line.
    pub fn create(path: &Path, source: &str) -> Result<Writer, RecordingError> {
        let io = |source| RecordingError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::create(path).map_err(io)?;
        let out: Box<dyn Write + Send> = if compressed(path) {
            Box::new(zstd::Encoder::new(file, 3).map_err(io)?.auto_finish())
        } else {
            Box::new(BufWriter::with_capacity(64 * 1024, file))
        };
        let mut w = Writer {
            path: path.to_owned(),
            out,
            line: Vec::with_capacity(512),
        };
        let header = serde_json::json!({
            "type": "recording",
            "version": VERSION,
            "source": source,
            "started_ns": crate::tick::now_ns(),
        });
        w.write_line(header.to_string().as_bytes())?;
        Ok(w)
    }

    /// Appends one tick as a `tick` line.
    pub fn write_tick(&mut self, tick: &Tick) -> Result<(), RecordingError> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        tick.write_json(Kind::Tick, &mut line);
        let r = self.write_line(&line);
        self.line = line;
        r
    }

    /// Appends one book message as a `book` or `book_update` line.
    pub fn write_book(&mut self, book: &BookItem) -> Result<(), RecordingError> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        book.write_json(&mut line);
        let r = self.write_line(&line);
        self.line = line;
        r
    }

    /// Appends one server message (a JSON object) as it is.
    pub fn write_line(&mut self, json: &[u8]) -> Result<(), RecordingError> {
        let path = &self.path;
        let io = |source| RecordingError::Io {
            path: path.clone(),
            source,
        };
        self.out.write_all(json).map_err(io)?;
        self.out.write_all(b"\n").map_err(io)
    }

    /// Flushes buffered lines to the file (and, for zstd, the frame so far).
    pub fn flush(&mut self) -> Result<(), RecordingError> {
        self.out.flush().map_err(|source| RecordingError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Flushes and closes the file.
    pub fn finish(mut self) -> Result<(), RecordingError> {
        self.flush()
    }
}

#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a str>,
    #[serde(borrow)]
    symbol: Option<std::borrow::Cow<'a, str>>,
}

/// Reads the ticks of a recording, in file order, with their line numbers.
pub struct Reader {
    path: PathBuf,
    lines: Box<dyn BufRead + Send>,
    line_no: u64,
    buf: String,
    /// Symbols that had a tick (or an opening snapshot) already.
    seen: std::collections::HashSet<String>,
    /// Each symbol's book so far, and its price decimals once a price has shown them.
    books: HashMap<Symbol, (Book, Option<u8>)>,
}

/// A `book` or `book_update` line, its prices kept as written.
#[derive(Deserialize)]
struct BookLine<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    symbol: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    epoch: std::borrow::Cow<'a, str>,
    seq: u64,
    prev_seq: Option<u64>,
    ts: u64,
    #[serde(borrow)]
    bids: Vec<(&'a RawValue, u64)>,
    #[serde(borrow)]
    asks: Vec<(&'a RawValue, u64)>,
    checksum: Option<u32>,
}

/// The tick count and decimals of a price as written: digits, at most one point, no
/// sign or exponent (`189.10` is 18910 with 2 decimals).
fn price_ticks(text: &str) -> Option<(u64, u8)> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (text.contains('.') && !digits(frac)) {
        return None;
    }
    let decimals = u8::try_from(frac.len())
        .ok()
        .filter(|d| *d <= MAX_DECIMALS)?;
    let ticks: u64 = format!("{int}{frac}").parse().ok()?;
    (ticks > 0).then_some((ticks, decimals))
}

impl Reader {
    /// Opens `path` (decompressing by its extension).
    pub fn open(path: &Path) -> Result<Reader, RecordingError> {
        let io = |source| RecordingError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let lines: Box<dyn BufRead + Send> = if compressed(path) {
            Box::new(BufReader::new(zstd::Decoder::new(file).map_err(io)?))
        } else {
            Box::new(BufReader::with_capacity(64 * 1024, file))
        };
        Ok(Reader::from_lines(path, lines))
    }

    /// Reads the (uncompressed) recording `lines`, naming it `path` in errors.
    pub fn from_lines(path: &Path, lines: Box<dyn BufRead + Send>) -> Reader {
        Reader {
            path: path.to_owned(),
            lines,
            line_no: 0,
            buf: String::new(),
            seen: Default::default(),
            books: HashMap::new(),
        }
    }

    fn bad(&self, message: String) -> RecordingError {
        RecordingError::Line {
            path: self.path.clone(),
            line: self.line_no,
            message,
        }
    }

    /// The next tick and its line number; `None` at the end of the file. Book lines
    /// are checked and passed over.
    pub fn next_tick(&mut self) -> Result<Option<(u64, Tick)>, RecordingError> {
        loop {
            match self.next_item()? {
                None => return Ok(None),
                Some((n, Item::Tick(t))) => return Ok(Some((n, t))),
                Some((_, Item::Book(_))) => {}
            }
        }
    }

    /// The next tick or book message and its line number; `None` at the end of the file.
    pub fn next_item(&mut self) -> Result<Option<(u64, Item)>, RecordingError> {
        loop {
            self.buf.clear();
            self.line_no += 1;
            let n = self.lines.read_line(&mut self.buf).map_err(|e| {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    self.bad("not valid UTF-8 text".into())
                } else {
                    RecordingError::Io {
                        path: self.path.clone(),
                        source: e,
                    }
                }
            })?;
            if n == 0 {
                return Ok(None);
            }
            let text = self.buf.trim();
            if text.is_empty() {
                continue;
            }
            if !self.buf.ends_with('\n') {
                // A last line without its newline is a file cut short mid-write.
                serde_json::from_str::<serde::de::IgnoredAny>(text)
                    .map_err(|e| self.bad(format!("truncated line: {}", json_error(&e))))?;
            }
            let head = serde_json::from_str::<TypeOnly>(text)
                .map_err(|e| self.bad(format!("not a JSON object: {}", json_error(&e))))?;
            match head.kind {
                Some("tick") => {}
                Some("book" | "book_update") => {
                    let line = self.buf.trim().to_owned();
                    let book = self.book(&line).map_err(|why| self.bad(why))?;
                    return Ok(Some((self.line_no, Item::Book(Box::new(book)))));
                }
                Some("snapshot") if head.symbol.is_some_and(|s| !self.seen.contains(&*s)) => {}
                Some(_) => continue,
                None => return Err(self.bad("missing \"type\"".into())),
            }
            let tick: Tick = serde_json::from_str(text)
                .map_err(|e| self.bad(format!("bad tick: {}", json_error(&e))))?;
            if !valid_symbol(&tick.symbol) {
                return Err(self.bad(format!("bad symbol {:?}", tick.symbol)));
            }
            if !self.seen.contains(&*tick.symbol) {
                self.seen.insert(tick.symbol.to_string());
            }
            return Ok(Some((self.line_no, Item::Tick(tick))));
        }
    }

    /// Reads a book line, checks it and applies it to its symbol's book so far.
    fn book(&mut self, text: &str) -> Result<BookItem, String> {
        let line: BookLine = serde_json::from_str(text)
            .map_err(|e| format!("bad {}: {}", "book message", json_error(&e)))?;
        let what = format!("{} of {} seq {}", line.kind, line.symbol, line.seq);
        let bad = |why: String| format!("{what}: {why}");
        if (line.kind == "book_update") != line.prev_seq.is_some() {
            return Err(bad(
                "prev_seq belongs to a book_update, and only to one".into()
            ));
        }
        if !valid_symbol(&line.symbol) {
            return Err(format!("bad symbol {:?}", line.symbol));
        }
        let known = self.books.get(&*line.symbol).and_then(|(_, d)| *d);
        let mut decimals = known;
        let mut side = |levels: &[(&RawValue, u64)], name: &str| {
            let mut out = Vec::with_capacity(levels.len());
            for (i, (p, size)) in levels.iter().enumerate() {
                let (ticks, d) = price_ticks(p.get())
                    .ok_or_else(|| format!("{name}[{i}]: bad price {}", p.get()))?;
                match *decimals.get_or_insert(d) {
                    want if want != d => {
                        return Err(format!(
                            "{name}[{i}]: price {} is not written with the {want} decimals of \
                             the symbol's other prices",
                            p.get()
                        ))
                    }
                    _ => out.push(Level::new(ticks, *size)),
                }
            }
            Ok(out)
        };
        let bids = side(&line.bids, "bids").map_err(bad)?;
        let asks = side(&line.asks, "asks").map_err(bad)?;
        let symbol: Symbol = Arc::from(&*line.symbol);
        let mut msg = BookMsg {
            symbol: symbol.clone(),
            epoch: Arc::from(&*line.epoch),
            seq: line.seq,
            prev_seq: line.prev_seq,
            ts: line.ts,
            bids,
            asks,
            checksum: line.checksum,
        };
        msg.check(MAX_LEVELS).map_err(bad)?;
        // A symbol no line has shown a price of yet: its decimals do not matter so far.
        let spec = Spec::new(decimals.unwrap_or(0));
        let held = self.books.remove(&symbol);
        let (mut book, _) = match (held, msg.prev_seq) {
            (Some(h), _) => h,
            (None, None) => (Book::from_msg(&msg), decimals),
            (None, Some(_)) => {
                return Err(bad("a book_update before any book of its symbol".into()));
            }
        };
        let applied = book.apply(&msg, MAX_LEVELS);
        msg.checksum = Some(book.levels.checksum());
        self.books.insert(symbol, (book, decimals));
        applied.map_err(bad)?;
        Ok(BookItem { msg, spec })
    }
}

/// A JSON error of one line, placed by column only: serde's "line 1" would contradict
/// the file's line number beside it.
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(what) => format!("{what} (column {})", e.column()),
        None => text,
    }
}

impl Iterator for Reader {
    type Item = Result<(u64, Tick), RecordingError>;
    // Ticks only: books are read with [`Reader::next_item`].
    fn next(&mut self) -> Option<Self::Item> {
        self.next_tick().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::Levels;

    fn tick(seq: u64) -> Tick {
        Tick {
            symbol: "AAPL".into(),
            epoch: "e".into(),
            seq,
            ts: 1_000 + seq,
            bid: 1.5,
            ask: 1.75,
            bid_size: 1,
            ask_size: 2,
            last: 1.5,
            last_size: 3,
            volume: seq,
            src_ts: None,
        }
    }

    #[test]
    fn round_trips_plain_and_zstd() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["r.ndjson", "r.ndjson.zst"] {
            let path = dir.path().join(name);
            let mut w = Writer::create(&path, "test").unwrap();
            for s in 1..=100 {
                w.write_tick(&tick(s)).unwrap();
            }
            w.write_line(br#"{"type":"gap","symbol":"AAPL","from":1,"to":2,"reason":"upstream"}"#)
                .unwrap();
            w.finish().unwrap();
            let got: Vec<Tick> = Reader::open(&path).unwrap().map(|r| r.unwrap().1).collect();
            assert_eq!(got, (1..=100).map(tick).collect::<Vec<_>>(), "{name}");
        }
        let raw = std::fs::read(dir.path().join("r.ndjson.zst")).unwrap();
        assert_eq!(&raw[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let dir = tempfile::tempdir().unwrap();
        let good = String::from_utf8(tick(1).to_json(Kind::Tick)).unwrap();
        for (body, line, needle) in [
            (format!("{good}\nnot json\n"), 2, "not a JSON object"),
            (
                format!(
                    "{good}\n{good}\n{{\"type\":\"tick\",\"symbol\":\"AAPL\",\"seq\":\"x\"}}\n"
                ),
                3,
                "bad tick",
            ),
            (format!("\n{good}\n{{\"seq\":1}}\n"), 3, "missing \"type\""),
            (format!("{good}\n{}", &good[..40]), 2, "truncated"),
            (good.replace("AAPL", "aapl") + "\n", 1, "bad symbol"),
        ] {
            let path = dir.path().join("bad.ndjson");
            std::fs::write(&path, &body).unwrap();
            let err = Reader::open(&path)
                .unwrap()
                .find_map(Result::err)
                .expect("an error");
            let text = err.to_string();
            assert!(text.contains(&format!(":{line}: ")), "{text}");
            assert!(text.contains(needle), "{text}");
        }
    }

    fn book(seq: u64, prev: Option<u64>, bids: &[(u64, u64)], asks: &[(u64, u64)]) -> BookItem {
        let lv = |l: &[(u64, u64)]| l.iter().map(|&(p, q)| Level::new(p, q)).collect();
        let mut msg = BookMsg {
            symbol: "EUR/USD".into(),
            epoch: "e".into(),
            seq,
            prev_seq: prev,
            ts: 1_000 + seq,
            bids: lv(bids),
            asks: lv(asks),
            checksum: None,
        };
        msg.checksum = Some(crate::book::checksum(&msg.asks, &msg.bids));
        BookItem {
            msg,
            spec: Spec::new(5),
        }
    }

    #[test]
    fn book_lines_read_back_beside_ticks_with_their_decimals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.ndjson");
        let mut w = Writer::create(&path, "test").unwrap();
        let whole = book(1, None, &[(108_500, 3), (108_490, 1)], &[(108_513, 2)]);
        // The update's checksum is the book's after it.
        let mut upd = book(2, Some(1), &[(108_500, 0)], &[(108_520, 7)]);
        let after = Levels::new(
            vec![Level::new(108_490, 1)],
            vec![Level::new(108_513, 2), Level::new(108_520, 7)],
        );
        upd.msg.checksum = Some(after.checksum());
        w.write_tick(&tick(1)).unwrap();
        w.write_book(&whole).unwrap();
        w.write_book(&upd).unwrap();
        w.write_tick(&tick(2)).unwrap();
        w.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(r#""bids":[[1.08500,3],[1.08490,1]]"#),
            "{text}"
        );
        let mut r = Reader::open(&path).unwrap();
        let mut got = Vec::new();
        while let Some((_, item)) = r.next_item().unwrap() {
            got.push(item);
        }
        assert_eq!(
            got,
            [
                Item::Tick(tick(1)),
                Item::Book(Box::new(whole)),
                Item::Book(Box::new(upd)),
                Item::Tick(tick(2)),
            ]
        );
        // Readers of ticks pass over the books.
        let ticks: Vec<Tick> = Reader::open(&path).unwrap().map(|r| r.unwrap().1).collect();
        assert_eq!(ticks, [tick(1), tick(2)]);
    }

    #[test]
    fn bad_book_lines_are_reported_with_their_number() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"type":"book","symbol":"AAPL","epoch":"e","seq":1,"ts":5,"bids":[[189.10,300]],"asks":[[189.12,200]]}"#;
        let upd = |body: &str| {
            format!(
                r#"{{"type":"book_update","symbol":"AAPL","epoch":"e","seq":2,"prev_seq":1,"ts":6,{body}}}"#
            )
        };
        for (line, needle) in [
            (
                upd(r#""bids":[[189.11,5]],"asks":[],"checksum":7"#),
                "checksum 7",
            ),
            (
                upd(r#""bids":[[1.8911e2,5]],"asks":[]"#),
                "bad price 1.8911e2",
            ),
            (
                upd(r#""bids":[[-189.11,5]],"asks":[]"#),
                "bad price -189.11",
            ),
            (upd(r#""bids":[[189.05,0]],"asks":[]"#), "does not hold"),
            (upd(r#""asks":[]"#), "missing field `bids`"),
            (
                good.replace(r#""seq":1,"#, r#""seq":1,"prev_seq":0,"#),
                "prev_seq belongs to a book_update",
            ),
        ] {
            let path = dir.path().join("bad.ndjson");
            std::fs::write(&path, format!("{good}\n{line}\n")).unwrap();
            let mut r = Reader::open(&path).unwrap();
            let err = loop {
                match r.next_item() {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("no error for {line}"),
                    Err(e) => break e.to_string(),
                }
            };
            assert!(err.contains(":2: "), "{err}");
            assert!(err.contains(needle), "{needle}: {err}");
        }
        // A first book with no level shows no decimals: the next prices set them.
        let path = dir.path().join("empty.ndjson");
        let empty =
            r#"{"type":"book","symbol":"AAPL","epoch":"e","seq":1,"ts":5,"bids":[],"asks":[]}"#;
        std::fs::write(
            &path,
            format!("{empty}\n{}\n", upd(r#""bids":[[189.10,5]],"asks":[]"#)),
        )
        .unwrap();
        let mut r = Reader::open(&path).unwrap();
        r.next_item().unwrap().unwrap();
        let Some((2, Item::Book(b))) = r.next_item().unwrap() else {
            panic!("the update reads")
        };
        assert_eq!((b.spec, b.msg.bids[0].price), (Spec::new(2), 18_910));
        // An update before any book of its symbol.
        let path = dir.path().join("first.ndjson");
        std::fs::write(&path, upd(r#""bids":[],"asks":[]"#) + "\n").unwrap();
        let e = Reader::open(&path).unwrap().next_item().unwrap_err();
        assert!(e.to_string().contains(":1: "), "{e}");
        assert!(e.to_string().contains("before any book"), "{e}");
    }

    #[test]
    fn prices_as_written_give_ticks_and_decimals() {
        assert_eq!(price_ticks("189.10"), Some((18_910, 2)));
        assert_eq!(price_ticks("0.07"), Some((7, 2)));
        assert_eq!(price_ticks("42"), Some((42, 0)));
        assert_eq!(price_ticks("151.200"), Some((151_200, 3)));
        for bad in [
            "0",
            "0.00",
            "1.",
            ".5",
            "1e3",
            "-1.00",
            "1.0000000000",
            "\"1\"",
        ] {
            assert_eq!(price_ticks(bad), None, "{bad}");
        }
    }
}
