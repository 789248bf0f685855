//! `tickstream feed record`: subscribe to a node and write what arrives to a recording.
//!
//! The file is the recording format of [`crate::feed::recording`]: a header line, then
//! one server message per line — `tick` lines exactly as sent (symbol, epoch, seq,
//! original `ts`, prices, sizes), and the `snapshot` and `gap` lines received, which
//! replays skip. A name ending in `.zst` or `.zstd` is written zstd-compressed. Lines
//! are flushed every `--flush` interval, so a recorder killed outright loses at most
//! that much; SIGINT, SIGTERM, `--duration` and `--count` finish the file cleanly.
//!
//! With `--books DEPTH` the book channel of the same symbols is recorded too, over a
//! second connection to the first `--url`: each `book` and `book_update` is written as
//! its line exactly as the node sent it, in the order lines reach the recorder (ticks
//! and books come on separate connections, so their relative order is that of
//! arrival; each stream keeps its own order exactly). A lost book connection is opened
//! again with the same backoff as the ticks' and resumes each book from its last line
//! (the node answers with one update that nets out what was missed, or a `gap` and a
//! fresh `book`), so the lines still apply one after the other.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::subscribe::{describe, parse_symbols, ConnArgs};
use crate::client::{Client, Event, ServerMessage};
use crate::config::Dur;
use crate::feed::recording::{RecordingError, Writer};
use crate::tick::{Kind, Tick};

/// Options (boxed: the command enum stays small).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    inner: Box<RecordArgs>,
}

/// Options.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  tickstream feed record --symbols AAPL,MSFT --out session.ndjson --duration 5m
  tickstream feed record --url ws://127.0.0.1:8080/v1/ws AAPL BTC-USD --out s.ndjson.zst

Progress and connection events go to stderr. Exit status: 0 when stopped by --duration,
--count or SIGINT/SIGTERM with the file complete; 1 when the file cannot be written, the
client gives up, or the server refuses a symbol.")]
pub struct RecordArgs {
    /// Symbols, as separate arguments or comma-separated.
    #[arg(value_name = "SYMBOL")]
    pub symbols: Vec<String>,

    /// Symbols, comma-separated (the same as giving them as arguments).
    #[arg(long = "symbols", value_name = "SYMBOLS")]
    pub symbols_opt: Vec<String>,

    /// The recording to write (NDJSON; zstd-compressed when it ends in .zst or .zstd).
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,

    #[command(flatten)]
    pub conn: ConnArgs,

    /// Stop after this long (e.g. 5m).
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<Dur>,

    /// Stop after this many ticks.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Interval between flushes to the file.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub flush: Dur,

    /// Write the snapshots received too (skipped by replays; default: on).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub snapshots: bool,

    /// Record the book channel of the symbols too, at this depth (10 or 50 levels a
    /// side): `book` and `book_update` lines beside the ticks.
    #[arg(long, value_name = "DEPTH")]
    pub books: Option<u8>,

    /// Log filter for the client's own logs (stderr). Default: RUST_LOG, else warn.
    #[arg(long, env = "TICKSTREAM_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

pub(super) fn run(args: Args) -> anyhow::Result<()> {
    let args = *args.inner;
    super::init_logs(Some(args.log.as_deref().unwrap_or("warn")));
    let mut all = args.symbols.clone();
    all.extend(args.symbols_opt.iter().cloned());
    let symbols = parse_symbols(&all)?;
    anyhow::ensure!(!args.flush.0.is_zero(), "--flush must be more than 0");
    if let Some(d) = args.books {
        anyhow::ensure!(
            d == 10 || d == 50,
            "--books takes a depth of 10 or 50 levels a side, not {d}"
        );
    }
    let book_symbols = symbols.clone();
    let client = Client::new(args.conn.client_config(symbols)?)?;
    let source = args.conn.url.join(",");
    let writer = Writer::create(&args.out, &source)
        .with_context(|| format!("cannot create the recording {}", args.out.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(record(client, writer, &args, book_symbols))
}

/// Where the recording's book of each symbol is: the epoch and seq of its last line.
type Held = std::collections::HashMap<String, (String, u64)>;

/// How a session of the book connection ended.
enum BookEnd {
    /// The recorder stopped listening.
    Done,
    /// The node refused the subscription: no use trying again.
    Refused(anyhow::Error),
    /// The connection failed or was closed, after `connected` it was open.
    Lost {
        error: anyhow::Error,
        connected: bool,
    },
}

/// Reads the book channel of `symbols` at `depth` from the node at the first `--url`
/// and hands each `book`, `book_update` and book `gap` line, as sent, to `tx`. A lost
/// connection is opened again with the backoff of `conn` and resumes each symbol from
/// the last line recorded, so the lines still apply one after the other. Returns why
/// it stopped (the recorder stopping it drops the receiver).
async fn book_stream(
    conn: ConnArgs,
    symbols: Vec<String>,
    depth: u8,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> anyhow::Result<()> {
    let mut backoff = crate::backoff::Backoff::new(crate::backoff::BackoffConfig {
        base: conn.backoff_base.0,
        cap: conn.backoff_cap.0,
        max_attempts: conn.max_attempts,
    });
    let mut held = Held::new();
    loop {
        match book_session(&conn, &symbols, depth, &tx, &mut held).await {
            BookEnd::Done => return Ok(()),
            BookEnd::Refused(e) => return Err(e),
            BookEnd::Lost { error, connected } => {
                if connected {
                    backoff.reset();
                }
                if backoff.exhausted() {
                    return Err(error.context("the book connection gave up"));
                }
                let delay = backoff.failed();
                eprintln!(
                    "tickstream: book connection: {error:#}; again in {} ms",
                    delay.as_millis()
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One connection of [`book_stream`]: subscribes (resuming what `held` says) and
/// forwards the book lines until it ends.
async fn book_session(
    conn: &ConnArgs,
    symbols: &[String],
    depth: u8,
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
    held: &mut Held,
) -> BookEnd {
    use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
    let lost = |error: anyhow::Error, connected| BookEnd::Lost { error, connected };
    let mut ws = match book_connect(conn).await {
        Ok(ws) => ws,
        Err(e) => return lost(e, false),
    };
    let mut cmd =
        serde_json::json!({"op":"subscribe","channel":"book","depth":depth,"symbols":symbols});
    if !held.is_empty() {
        let resume: serde_json::Map<String, serde_json::Value> = held
            .iter()
            .map(|(s, (e, q))| (s.clone(), serde_json::json!({"epoch": e, "seq": q})))
            .collect();
        cmd["resume"] = resume.into();
    }
    let sent = ws
        .write_frame(Frame::text(Payload::Owned(cmd.to_string().into_bytes())))
        .await;
    if let Err(e) = sent {
        return lost(anyhow::anyhow!("subscribing to the books: {e}"), true);
    }
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = match ws.read_frame().await {
            Ok(f) => f,
            Err(e) => return lost(anyhow::anyhow!("the book connection failed: {e}"), true),
        };
        match frame.opcode {
            OpCode::Close => {
                return lost(anyhow::anyhow!("the node closed the book connection"), true)
            }
            OpCode::Text => {}
            _ => continue,
        }
        match book_lines(&frame.payload, held) {
            Ok(lines) => {
                for line in lines {
                    if tx.send(line).await.is_err() {
                        return BookEnd::Done;
                    }
                }
            }
            Err(e) => return BookEnd::Refused(e),
        }
    }
}

/// Opens the book connection to the first `--url`.
async fn book_connect(conn: &ConnArgs) -> anyhow::Result<crate::client::connect::ClientWs> {
    let url = conn.url.first().context("no --url")?;
    let tls = match &conn.ca_file {
        Some(path) => Some(crate::client::ClientTls::new(Some(path))?),
        None => None,
    };
    crate::client::connect::connect_with(url, conn.token.as_deref(), tls.as_ref())
        .await
        .with_context(|| format!("the book connection to {url}"))
}

/// The lines of one frame a recording keeps (book messages and book gaps, as sent),
/// noting in `held` where each symbol's book is; `Err` when the node refused the
/// subscription.
fn book_lines(payload: &[u8], held: &mut Held) -> anyhow::Result<Vec<Vec<u8>>> {
    let msgs: Vec<&serde_json::value::RawValue> =
        serde_json::from_slice(payload).context("a book frame that is not a JSON array")?;
    let mut lines = Vec::new();
    for m in msgs {
        let head: serde_json::Value = serde_json::from_str(m.get())?;
        match head["type"].as_str().unwrap_or("") {
            "book" | "book_update" => {
                let symbol = head["symbol"].as_str().unwrap_or("").to_owned();
                let epoch = head["epoch"].as_str().unwrap_or("").to_owned();
                held.insert(symbol, (epoch, head["seq"].as_u64().unwrap_or(0)));
            }
            "gap" if head["channel"] == "book" => {}
            "error" => anyhow::bail!(
                "the node refused the book subscription: {}: {}",
                head["code"].as_str().unwrap_or(""),
                head["message"].as_str().unwrap_or("")
            ),
            _ => continue,
        }
        lines.push(m.get().as_bytes().to_vec());
    }
    Ok(lines)
}

/// Records what `client` receives into `writer` until a signal, `--duration`,
/// `--count`, a refused symbol, or a failed write.
async fn record(
    client: Client,
    writer: Writer,
    args: &RecordArgs,
    symbols: Vec<String>,
) -> anyhow::Result<()> {
    let stop_client = CancellationToken::new();
    let (mut rx, task) = client.spawn(8192, stop_client.clone());
    let mut books = BookFeed::start(args, symbols);
    let started = tokio::time::Instant::now();
    let deadline = started
        + args
            .duration
            .map_or(Duration::from_secs(100 * 365 * 86400), |d| d.0);
    let mut flush = tokio::time::interval(args.flush.0);
    let signal = super::wait_for_signal();
    tokio::pin!(signal);
    let mut rec = Recorder::new(writer, args.snapshots);
    let mut failure: Option<anyhow::Error> = None;
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = flush.tick() => {
                if let Err(e) = rec.writer.flush() {
                    failure = Some(e.into());
                    break;
                }
            }
            line = books.rx.recv(), if books.task.is_some() => {
                let Some(line) = line else {
                    failure = Some(books.ended().await);
                    break;
                };
                rec.books += 1;
                if let Err(e) = rec.writer.write_line(&line) {
                    failure = Some(e.into());
                    break;
                }
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                if let Some(text) = describe(&ev) {
                    eprintln!("tickstream: {text}");
                }
                if let Err(e) = rec.take(&ev) {
                    failure = Some(e);
                    break;
                }
                if args.count.is_some_and(|c| rec.ticks >= c) {
                    break;
                }
            }
        }
    }
    stop_client.cancel();
    books.stop();
    let result = task.await.context("the client task failed")?;
    eprintln!(
        "tickstream: recorded {} to {} in {:.1}s",
        rec.summary(args.books.is_some()),
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    let finished = rec.writer.finish();
    if let Some(f) = failure {
        return Err(f);
    }
    finished?;
    result.map_err(Into::into)
}

/// The book connection of `--books`: its task and the lines it reads.
struct BookFeed {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl BookFeed {
    /// Starts reading the books of `symbols` when `--books` asks for them.
    fn start(args: &RecordArgs, symbols: Vec<String>) -> BookFeed {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8192);
        let task = args.books.map(|depth| {
            let conn = args.conn.clone();
            tokio::spawn(book_stream(conn, symbols, depth, tx))
        });
        BookFeed { rx, task }
    }

    /// Why the stream ended by itself (its own error, when it has one).
    async fn ended(&mut self) -> anyhow::Error {
        let why = match self.task.take() {
            Some(t) => t.await.ok().and_then(Result::err),
            None => None,
        };
        why.unwrap_or_else(|| anyhow::anyhow!("the book stream ended"))
    }

    /// Stops the stream.
    fn stop(self) {
        if let Some(t) = self.task {
            t.abort();
        }
    }
}

/// The recording being written, and what it holds so far.
struct Recorder {
    writer: Writer,
    /// Whether snapshots are written as such (`--snapshots`).
    keep_snapshots: bool,
    ticks: u64,
    snapshots: u64,
    gaps: u64,
    /// Book lines (`book`, `book_update`, book `gap`).
    books: u64,
    /// Symbols whose first value has been recorded: a symbol's first snapshot is its
    /// opening quote, which readers (and replays) take as its first tick.
    opened: HashSet<String>,
    /// One JSON line being written.
    line: Vec<u8>,
}

impl Recorder {
    fn new(writer: Writer, keep_snapshots: bool) -> Recorder {
        Recorder {
            writer,
            keep_snapshots,
            ticks: 0,
            snapshots: 0,
            gaps: 0,
            books: 0,
            opened: HashSet::new(),
            line: Vec::with_capacity(512),
        }
    }

    /// What was recorded, in words (book lines counted when `books`).
    fn summary(&self, books: bool) -> String {
        let (t, s, g) = (self.ticks, self.snapshots, self.gaps);
        match books {
            true => format!(
                "{t} ticks, {s} snapshots, {g} gaps, {} book lines",
                self.books
            ),
            false => format!("{t} ticks, {s} snapshots, {g} gaps"),
        }
    }

    /// Records the server message of `ev`, if it is one a recording keeps; a symbol
    /// the server refused ends the recording with an error.
    fn take(&mut self, ev: &Event) -> anyhow::Result<()> {
        let Event::Message(m) = ev else {
            return Ok(());
        };
        match m {
            ServerMessage::Tick(t) => {
                self.ticks += 1;
                if !self.opened.contains(&*t.symbol) {
                    self.opened.insert(t.symbol.to_string());
                }
                self.writer.write_tick(t)?;
            }
            ServerMessage::Snapshot(t) => self.snapshot(t)?,
            ServerMessage::Gap { .. } => {
                self.gaps += 1;
                self.line.clear();
                m.write_json(&mut self.line);
                self.writer.write_line(&self.line)?;
            }
            ServerMessage::Error {
                code,
                message,
                symbols,
                ..
            } if !symbols.is_empty() => {
                anyhow::bail!(
                    "the server refused {}: {code}: {message}",
                    symbols.join(",")
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Records a snapshot: a symbol's first one as its opening tick (as a snapshot
    /// line with `--snapshots`), later ones only with `--snapshots`.
    fn snapshot(&mut self, t: &Tick) -> Result<(), RecordingError> {
        if !self.opened.contains(&*t.symbol) {
            self.opened.insert(t.symbol.to_string());
            self.ticks += 1;
            if !self.keep_snapshots {
                return self.writer.write_tick(t);
            }
        } else if !self.keep_snapshots {
            return Ok(());
        }
        self.snapshots += 1;
        self.line.clear();
        t.write_json(Kind::Snapshot, &mut self.line);
        self.writer.write_line(&self.line)
    }
}
