//! `tickstream subscribe`: subscribe to symbols and show what arrives.
//!
//! Output, by where stdout goes:
//!
//! - a terminal: a live table (symbol, bid, ask, last, change, ticks/s, latency,
//!   status) that redraws in place ten times a second, with connection events under it;
//!   a symbol the node says is stale is dimmed, its status `STALE 3.2s (feed)`. With
//!   `--candles`, a table of bars instead (symbol, interval, start, open, high, low,
//!   close, volume, ticks, forming or closed), the newest of each symbol. With
//!   `--book SYMBOL`, the symbol's depth ladder (see [`ladder`]), kept by the client
//!   and checked against the node's checksum after every message;
//! - a pipe or a file, or `--json`: every server message as one JSON object per line
//!   (NDJSON), in the order received (`status`, `candles` and `candle` included);
//!   connection events and changes of a symbol's status go to stderr as text lines;
//! - `--stats`: one line per second with the tick rate, gaps, holes, reconnects, moves,
//!   the symbols stale now and the latency percentiles of that second, on stdout instead
//!   of the messages — or on stderr when `--json` keeps the messages on stdout.
//!
//! Symbols may be patterns (`'BTC-*'`, `'*'`); `--throttle` paces what is sent; every
//! `--report-every` the client tells the node the latency it measured.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::client::{
    BackoffConfig, Client, ClientConfig, Event, ServerMessage, StaleReason, Subscription,
};
use crate::config::Dur;
use crate::protocol::channel::{check_throttle, Interval};
use crate::protocol::Channel;
use crate::tick::{now_ns, pattern_matches, valid_pattern, valid_symbol, Tick};
use bars::BarTable;
use ladder::{Ladder, Look};

mod bars;
mod ladder;

/// How to reach the nodes; shared by the commands that subscribe.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Node WebSocket URL; several (repeated or comma-separated) are tried in turn when
    /// one fails.
    #[arg(
        long,
        env = "TICKSTREAM_URL",
        value_name = "WS_URL",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/v1/ws"
    )]
    pub url: Vec<String>,

    /// Bearer token (JWT) sent with the upgrade.
    #[arg(long, env = "TICKSTREAM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// PEM bundle of extra CAs trusted for wss:// URLs, besides the built-in roots
    /// (e.g. the ca.pem that scripts/dev-cert makes).
    #[arg(long, env = "TICKSTREAM_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,

    /// Window of the first reconnect attempt; each failed attempt doubles it, up to
    /// --backoff-cap. The delay is drawn uniformly in the window (full jitter).
    #[arg(
        long,
        env = "TICKSTREAM_BACKOFF_BASE",
        value_name = "DURATION",
        default_value = "500ms"
    )]
    pub backoff_base: Dur,

    /// Largest reconnect window.
    #[arg(
        long,
        env = "TICKSTREAM_BACKOFF_CAP",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub backoff_cap: Dur,

    /// Consecutive failed reconnect attempts before giving up (0: never give up).
    #[arg(
        long,
        env = "TICKSTREAM_MAX_ATTEMPTS",
        value_name = "N",
        default_value_t = 30
    )]
    pub max_attempts: u32,
}

impl ConnArgs {
    /// The client configuration for `symbols`.
    pub fn client_config(&self, symbols: Vec<String>) -> anyhow::Result<ClientConfig> {
        anyhow::ensure!(!self.url.is_empty(), "--url: give at least one URL");
        anyhow::ensure!(
            !self.backoff_base.0.is_zero(),
            "--backoff-base must be more than 0"
        );
        anyhow::ensure!(
            self.backoff_cap.0 >= self.backoff_base.0,
            "--backoff-cap must be at least --backoff-base"
        );
        Ok(ClientConfig {
            urls: self.url.clone(),
            token: self.token.clone(),
            ca_file: self.ca_file.clone(),
            symbols,
            backoff: BackoffConfig {
                base: self.backoff_base.0,
                cap: self.backoff_cap.0,
                max_attempts: self.max_attempts,
            },
            ..ClientConfig::default()
        })
    }
}

/// Splits symbol arguments on commas and checks each; at least one is required.
pub fn parse_symbols(args: &[String]) -> anyhow::Result<Vec<String>> {
    let out = crate::tick::parse_symbols(args)?;
    anyhow::ensure!(!out.is_empty(), "no symbol given");
    Ok(out)
}

/// Splits symbol arguments on commas and checks each: a symbol, or a pattern (`*`, or a
/// prefix followed by `*`). At least one is required; repeats are dropped.
pub fn parse_entries(args: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut bad: Vec<String> = Vec::new();
    for e in args.iter().flat_map(|a| a.split(',')).map(str::trim) {
        if e.is_empty() || out.iter().chain(&bad).any(|o| o == e) {
            continue;
        }
        if valid_symbol(e) || valid_pattern(e) {
            out.push(e.to_owned());
        } else {
            bad.push(format!("{e:?}"));
        }
    }
    anyhow::ensure!(
        bad.is_empty(),
        "bad symbol {}: symbols are 1 to 32 of A-Z 0-9 . _ : / - starting with a letter or digit; a pattern is * or such a prefix followed by * (quote it for the shell: 'BTC-*')",
        bad.join(", ")
    );
    anyhow::ensure!(!out.is_empty(), "no symbol given");
    Ok(out)
}

/// Parses `SYMBOL=EPOCH:SEQ` or `SYMBOL=SEQ`.
pub fn parse_resume(s: &str) -> anyhow::Result<(String, (String, u64))> {
    let bad = || anyhow::anyhow!("--resume {s:?}: write it like AAPL=k3v9q1:1042 or AAPL=1042");
    let (sym, at) = s.trim().split_once('=').ok_or_else(bad)?;
    anyhow::ensure!(valid_symbol(sym), "--resume {s:?}: bad symbol {sym:?}");
    let (epoch, seq) = match at.rsplit_once(':') {
        Some((e, n)) => (e.to_owned(), n),
        None => (String::new(), at),
    };
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    Ok((sym.to_owned(), (epoch, seq)))
}

/// Parses `--depth`: 10 or 50.
fn parse_depth(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number: 10 or 50"))?;
    crate::protocol::channel::Depth::parse(n).map(|d| d.levels() as u64)
}

/// Parses a pace: `250ms`, `1s`, or a plain number of milliseconds; 0 (none) or 10 ms
/// to 60 s, in whole milliseconds.
fn parse_throttle(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let ms = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>().map_err(|e| e.to_string())?
    } else {
        let d = s.parse::<Dur>()?.0;
        if d.subsec_nanos() % 1_000_000 != 0 {
            return Err(format!("{s:?} is not a whole number of milliseconds"));
        }
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    };
    check_throttle(ms)
        .map(|_| ms)
        .map_err(|_| format!("{s:?} is out of range: 0 (every tick) or 10ms to 60s"))
}

/// Options.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  tickstream subscribe AAPL MSFT                       live table in a terminal
  tickstream subscribe AAPL,BTC-USD --count 5 | jq .   NDJSON when piped
  tickstream subscribe 'BTC-*' --throttle 250ms        every BTC- symbol, 4 updates a second
  tickstream subscribe AAPL --candles 1m --backfill 30 one-minute bars, the last 30 first
  tickstream subscribe AAPL --stats                    rate, gaps and latency every second
  tickstream subscribe --book AAPL --depth 50          a live depth ladder of 50 levels a side
  tickstream subscribe AAPL --resume AAPL=k3v9q1:1042 --json   replay what followed seq 1042
  tickstream subscribe AAPL --encoding binary --json   binary frames, printed as NDJSON
  tickstream subscribe --url ws://n1:8080/v1/ws,ws://n2:8080/v1/ws AAPL --json

A pattern ('*', or a prefix then *, quoted for the shell) subscribes every symbol the
node serves that it matches, and those that get their first value later. With
--throttle the node sends at most one tick per symbol per interval, the newest, with
\"skipped\": the ticks folded into it (no loss: seq - previous seq - 1 = skipped).

A symbol whose source the node says has stopped (its feed, the bus, or its channel on
the bus) is dimmed in the table, its status STALE with how long and why, e.g. STALE 3.2s
(feed), until the node says it is live again; NDJSON output carries the node's status
messages as they come.

Connection events (reconnects, resumes, moves) and status changes (\"AAPL: stale
(feed)…\", \"AAPL: live again after 3.2s\") go to stderr, or under the table. When the
node announces it will close the connection (a restart, a connection's lifetime), the
next connection is opened and subscribed first, and the old one closed once it is live:
\"moving…\", then \"moved to…\". Every --report-every the latency measured (receive
time - ts) is reported to the node, which shows it in its /metrics. Exit status:
0 when stopped by --count, --duration or SIGINT/SIGTERM; 1 when the client gives up,
the server refuses a symbol, or the server closes with 1008/1009.

With --book the client keeps the symbol's order book from the node's book and
book_update messages, checking after each one that it follows the book held (prev_seq)
and that the book's checksum is the node's; on a mismatch it says so on stderr (or
under the ladder), keeps the book it verified and re-syncs it from there. Piped, it
prints the book messages as NDJSON.")]
pub struct Args {
    /// Symbols and patterns ('*', 'BTC-*'), as separate arguments or comma-separated.
    #[arg(required_unless_present = "book", value_name = "SYMBOL")]
    pub symbols: Vec<String>,

    /// The order book of this symbol instead of ticks: a live depth ladder in a
    /// terminal, the book messages as NDJSON when piped.
    #[arg(
        long,
        value_name = "SYMBOL",
        conflicts_with_all = ["symbols", "candles", "resume", "no_snapshot"]
    )]
    pub book: Option<String>,

    /// With --book: levels a side, 10 (the default) or 50.
    #[arg(long, value_name = "N", value_parser = parse_depth)]
    pub depth: Option<u64>,

    #[command(flatten)]
    pub conn: ConnArgs,

    /// Print NDJSON even when stdout is a terminal.
    #[arg(long)]
    pub json: bool,

    /// Print rate, gaps, stale symbols and latency percentiles every second (on stdout;
    /// on stderr with --json).
    #[arg(long)]
    pub stats: bool,

    /// Stop after this long (e.g. 30s).
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<Dur>,

    /// Stop after this many values (ticks and snapshots; with --candles, bar messages;
    /// with --book, book messages applied).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Do not ask for a snapshot before the first ticks.
    #[arg(long)]
    pub no_snapshot: bool,

    /// At most one tick per symbol per interval, the newest (e.g. 250ms, 1s, or 250 for
    /// milliseconds; 10ms to 60s). With --candles: the pace of the forming bar's
    /// updates (the node's default is 250ms).
    #[arg(long, value_name = "INTERVAL", value_parser = parse_throttle)]
    pub throttle: Option<u64>,

    /// Bars of this interval instead of ticks: 1s, 1m, 5m or 1h.
    #[arg(long, value_name = "INTERVAL")]
    pub candles: Option<Interval>,

    /// With --candles: this many closed bars first (0 to 1000).
    #[arg(
        long,
        value_name = "N",
        requires = "candles",
        value_parser = clap::value_parser!(u16).range(0..=1000)
    )]
    pub backfill: Option<u16>,

    /// How often to report the latency measured to the node: 0 (never) or 100ms and
    /// more.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub report_every: Dur,

    /// How the node sends ticks and snapshots: json, or binary (records in binary
    /// frames, decoded here). What is printed is the same either way.
    #[arg(
        long,
        env = "TICKSTREAM_ENCODING",
        value_name = "ENCODING",
        default_value = "json"
    )]
    pub encoding: crate::protocol::Encoding,

    /// Start after a position already held, e.g. from an earlier run's last line:
    /// SYMBOL=EPOCH:SEQ or SYMBOL=SEQ, repeated or comma-separated. The node replays
    /// what follows, or says with a gap what it no longer has.
    #[arg(long, value_name = "SYM=EPOCH:SEQ", value_delimiter = ',')]
    pub resume: Vec<String>,

    /// Log filter for the client's own logs (stderr). Default: RUST_LOG, else warn.
    #[arg(long, env = "TICKSTREAM_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

pub(super) fn run(args: Args) -> anyhow::Result<()> {
    super::init_logs(Some(args.log.as_deref().unwrap_or("warn")));
    let client = Client::new(client_config(&args)?)?;
    let mode = if args.stats && !args.json {
        Mode::Stats
    } else if args.json || !std::io::stdout().is_terminal() {
        Mode::Json
    } else {
        Mode::Table
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(watch(client, mode, &args))
}

/// The shortest `--report-every` taken.
const MIN_REPORT_EVERY: Duration = Duration::from_millis(100);

/// The client configuration the options ask for.
fn client_config(args: &Args) -> anyhow::Result<ClientConfig> {
    let mut cfg = args.conn.client_config(Vec::new())?;
    anyhow::ensure!(
        args.depth.is_none() || args.book.is_some(),
        "--depth is the depth of a --book"
    );
    if let Some(symbol) = &args.book {
        anyhow::ensure!(
            valid_symbol(symbol),
            "--book {symbol:?}: a symbol of 1 to 32 of A-Z 0-9 . _ : / - starting with a letter or digit"
        );
        let depth = crate::protocol::channel::Depth::parse(args.depth.unwrap_or(10))
            .map_err(anyhow::Error::msg)?;
        cfg.encoding = args.encoding;
        cfg.report_every = None;
        cfg.subscriptions.push(Subscription {
            channel: Channel::Book { depth },
            symbols: vec![symbol.clone()],
            throttle_ms: args.throttle,
        });
        return Ok(cfg);
    }
    let entries = parse_entries(&args.symbols)?;
    cfg.snapshot = !args.no_snapshot;
    cfg.encoding = args.encoding;
    let every = args.report_every.0;
    anyhow::ensure!(
        every.is_zero() || every >= MIN_REPORT_EVERY,
        "--report-every {}: 0 (never) or at least {}ms, to stay well within the node's command rate",
        humantime::format_duration(every),
        MIN_REPORT_EVERY.as_millis()
    );
    cfg.report_every = Some(every).filter(|d| !d.is_zero());
    let channel = match args.candles {
        Some(interval) => Channel::Candles {
            interval,
            backfill: args.backfill.unwrap_or(0),
        },
        None => Channel::Ticks,
    };
    match (channel, args.throttle) {
        (Channel::Ticks, None) => cfg.symbols = entries.clone(),
        (channel, throttle_ms) => cfg.subscriptions.push(Subscription {
            channel,
            symbols: entries.clone(),
            throttle_ms,
        }),
    }
    anyhow::ensure!(
        args.resume.is_empty() || args.candles.is_none(),
        "--resume gives positions in ticks; bars (--candles) start with --backfill instead"
    );
    for r in &args.resume {
        let (sym, at) = parse_resume(r)?;
        anyhow::ensure!(
            entries.iter().any(|e| pattern_matches(e, &sym)),
            "--resume {r}: {sym} is not among the symbols subscribed"
        );
        cfg.start_from.insert(sym, at);
    }
    Ok(cfg)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Table,
    Json,
    Stats,
}

/// Latency histogram in microseconds, up to an hour.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Counts of one interval and of the whole run.
struct Stats {
    /// Bars are watched (`--candles`), not ticks.
    candles: bool,
    /// A book is watched (`--book`), not ticks.
    book: bool,
    /// Book messages applied, and those that did not match.
    books: u64,
    mismatches: u64,
    second: Histogram<u64>,
    total: Histogram<u64>,
    /// Values (ticks, or bar messages) of the current second.
    values_second: u64,
    ticks: u64,
    bars: u64,
    closed: u64,
    gaps: u64,
    holes: u64,
    reconnects: u64,
    moves: u64,
    /// Symbols the node says are stale now.
    stale: usize,
}

impl Stats {
    fn new(candles: bool, book: bool) -> Stats {
        Stats {
            candles,
            book,
            books: 0,
            mismatches: 0,
            second: histogram(),
            total: histogram(),
            values_second: 0,
            ticks: 0,
            bars: 0,
            closed: 0,
            gaps: 0,
            holes: 0,
            reconnects: 0,
            moves: 0,
            stale: 0,
        }
    }

    fn tick(&mut self, t: &Tick, now: u64) -> u64 {
        let us = now.saturating_sub(t.ts) / 1000;
        self.second.saturating_record(us.max(1));
        self.total.saturating_record(us.max(1));
        self.values_second += 1;
        self.ticks += 1;
        us
    }

    fn bar(&mut self, closed: bool) {
        self.values_second += 1;
        self.bars += 1;
        self.closed += u64::from(closed);
    }

    fn line(&self, h: &Histogram<u64>, rate: u64) -> String {
        if self.book {
            return format!(
                "rate {rate}/s  book messages {}  mismatches {}  gaps {}  reconnects {}  moves {}  stale {}",
                self.books, self.mismatches, self.gaps, self.reconnects, self.moves, self.stale,
            );
        }
        if self.candles {
            return format!(
                "rate {rate}/s  bars {}  closed {}  reconnects {}  moves {}  stale {}",
                self.bars, self.closed, self.reconnects, self.moves, self.stale,
            );
        }
        let q = |p: f64| ms(h.value_at_quantile(p));
        format!(
            "rate {rate}/s  ticks {}  gaps {}  holes {}  reconnects {}  moves {}  stale {}  latency p50 {} p90 {} p99 {} max {}",
            self.ticks,
            self.gaps,
            self.holes,
            self.reconnects,
            self.moves,
            self.stale,
            q(0.5),
            q(0.9),
            q(0.99),
            ms(h.max()),
        )
    }

    /// The stats line of the second that ended, then a fresh second.
    fn roll(&mut self) -> String {
        let line = format!(
            "{} {}",
            clock(),
            self.line(&self.second, self.values_second)
        );
        self.second.reset();
        self.values_second = 0;
        line
    }
}

fn ms(us: u64) -> String {
    if us == 0 {
        "-".into()
    } else if us < 10_000 {
        format!("{:.2}ms", us as f64 / 1000.0)
    } else {
        format!("{:.0}ms", us as f64 / 1000.0)
    }
}

/// A duration as `734ms` or `12.3s`.
pub(super) fn short(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// How long a symbol has been stale: `3.2s`, `4m05s`, `2h07m`.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s / 60) % 60)
    }
}

/// UTC wall-clock time `HH:MM:SS` of `ns` since the Unix epoch.
fn clock_of(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// UTC wall-clock time `HH:MM:SS` now.
fn clock() -> String {
    clock_of(now_ns())
}

/// A connection event as a line for humans, or None for plain messages.
pub(super) fn describe(ev: &Event) -> Option<String> {
    Some(match ev {
        Event::Connected {
            url,
            node,
            resumed,
            reconnect,
            ..
        } => {
            let verb = if *reconnect {
                "reconnected"
            } else {
                "connected"
            };
            if *resumed > 0 {
                format!(
                    "{verb} to {url} (node {node}); resuming {resumed} symbols from their last seq"
                )
            } else {
                format!("{verb} to {url} (node {node})")
            }
        }
        Event::Disconnected { url, code, reason } => match code {
            Some(c) => format!("disconnected from {url}: close {c} {reason}"),
            None => format!("disconnected from {url}: {reason}"),
        },
        Event::Retrying {
            url,
            attempt,
            delay,
            error,
        } => {
            let why = error
                .as_deref()
                .map(|e| format!(" after: {e}"))
                .unwrap_or_default();
            format!(
                "retrying {url} in {} (attempt {attempt}){why}",
                short(*delay)
            )
        }
        other => return describe_more(other),
    })
}

/// The lines of [`describe`] for moves, sequence and health events.
fn describe_more(ev: &Event) -> Option<String> {
    Some(match ev {
        Event::Moving {
            from,
            to,
            reason,
            in_ms,
        } => format!(
            "moving: {from} closes in {} ({reason}); subscribing on {to} first",
            short(Duration::from_millis(*in_ms))
        ),
        Event::Moved {
            to,
            node,
            resumed,
            took,
            ..
        } => format!(
            "moved to {to} (node {node}) in {}, resuming {resumed} symbols; the old connection closed",
            short(*took)
        ),
        Event::MoveFailed { url, error } => format!(
            "could not move to {url}: {error}; staying until the node closes, then reconnecting"
        ),
        Event::Hole { symbol, from, to } => {
            format!("{symbol}: seq {from}..={to} missing without a gap message")
        }
        Event::Reset { symbol, epoch } => format!("{symbol}: new epoch {epoch}, state replaced"),
        Event::Stale { symbol, reason, .. } => {
            format!("{symbol}: stale ({reason}): the node lost its source; the last value is not current")
        }
        Event::Live { symbol, after } => format!("{symbol}: live again after {}", age(*after)),
        Event::BookMismatch {
            symbol,
            why,
            resync,
        } => {
            let then = if *resync {
                "re-syncing from the book held"
            } else {
                "the other connection carries the book"
            };
            format!("{symbol}: book mismatch ({why}); dropped, {then}")
        }
        Event::Message(ServerMessage::Gap {
            symbol,
            from,
            to,
            reason,
            ..
        }) => format!(
            "{symbol}: gap {from}..={to} ({}); state replaced by what follows",
            gap_reason(*reason)
        ),
        _ => return None,
    })
}

fn gap_reason(r: crate::protocol::GapReason) -> &'static str {
    use crate::protocol::GapReason::*;
    match r {
        SlowConsumer => "slow_consumer",
        Upstream => "upstream",
        Expired => "expired",
        Reset => "reset",
    }
}

/// A symbol refused by the server ends the command: it asked for something impossible.
fn refusal(ev: &Event) -> Option<String> {
    match ev {
        Event::Message(ServerMessage::Error {
            code,
            message,
            symbols,
            ..
        }) if !symbols.is_empty() => Some(format!(
            "the server refused {}: {code}: {message}",
            symbols.join(",")
        )),
        _ => None,
    }
}

/// What ends a watch without an error.
#[derive(Default)]
struct Stop {
    count: Option<u64>,
    seen: u64,
}

impl Stop {
    fn counted(&mut self, ev: &Event) -> bool {
        if matches!(
            ev,
            Event::Message(
                ServerMessage::Tick(_)
                    | ServerMessage::Snapshot(_)
                    | ServerMessage::Candles { .. }
                    | ServerMessage::Candle { .. }
                    | ServerMessage::Book(_)
            )
        ) {
            self.seen += 1;
        }
        self.count.is_some_and(|c| self.seen >= c)
    }
}

/// Shows what `client` receives in `mode` until a signal, `--duration`, `--count`, a
/// refused symbol, or the client giving up.
async fn watch(client: Client, mode: Mode, args: &Args) -> anyhow::Result<()> {
    let stop_client = CancellationToken::new();
    let (mut rx, task) = client.spawn(8192, stop_client.clone());
    let deadline = args
        .duration
        .map(|d| tokio::time::Instant::now() + d.0)
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86400));
    let mut second = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut redraw = tokio::time::interval(Duration::from_millis(100));
    let signal = super::wait_for_signal();
    tokio::pin!(signal);
    let mut w = Watch::new(mode, args);
    loop {
        let going = tokio::select! {
            _ = &mut signal => false,
            _ = tokio::time::sleep_until(deadline) => false,
            _ = second.tick() => w.second(),
            _ = redraw.tick(), if mode == Mode::Table => w.draw().is_ok(),
            ev = rx.recv() => match ev {
                Some(ev) => w.take_queued(ev, &mut rx),
                None => false,
            },
        };
        if !going {
            break;
        }
    }
    stop_client.cancel();
    let result = task.await.context("the client task failed")?;
    w.finish(args.stats)?;
    result.map_err(Into::into)
}

/// What a watch carries from one event to the next: where it writes, the live table,
/// the statistics, and what ends it.
struct Watch {
    mode: Mode,
    /// `--stats` beside `--json`: the per-second lines go to stderr.
    stats_to_stderr: bool,
    stats: Stats,
    stop: Stop,
    table: Table,
    /// With `--candles`: the table of bars, shown instead of `table`.
    bars: Option<BarTable>,
    /// With `--book`: the symbol and its ladder, shown instead of `table`.
    ladder: Option<(String, Ladder)>,
    screen: Screen,
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
    /// One NDJSON line being written.
    line: Vec<u8>,
    /// Why the watch ended in error (a refused symbol).
    failure: Option<String>,
}

impl Watch {
    fn new(mode: Mode, args: &Args) -> Watch {
        Watch {
            mode,
            stats_to_stderr: args.stats && mode == Mode::Json,
            stats: Stats::new(args.candles.is_some(), args.book.is_some()),
            stop: Stop {
                count: args.count,
                ..Stop::default()
            },
            table: Table::default(),
            bars: args.candles.map(|_| BarTable::default()),
            ladder: args.book.clone().map(|s| (s, Ladder::default())),
            screen: Screen::default(),
            out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock()),
            line: Vec::with_capacity(512),
            failure: None,
        }
    }

    /// Ends a second: the rates roll over, and the statistics line is written where
    /// it goes. False when stdout is gone.
    fn second(&mut self) -> bool {
        self.table.roll();
        let l = self.stats.roll();
        if self.mode == Mode::Stats {
            return writeln!(self.out, "{l}")
                .and_then(|_| self.out.flush())
                .is_ok();
        }
        if self.stats_to_stderr {
            eprintln!("{l}");
        }
        true
    }

    /// Redraws the live table in place.
    fn draw(&mut self) -> std::io::Result<()> {
        let now = Instant::now();
        let room = self.screen.room();
        let stale = &self.table.stale;
        let mut lines: Vec<(String, Look)> = match (&self.ladder, &self.bars) {
            (Some((symbol, ladder)), _) => ladder.lines(symbol, room),
            (None, Some(bars)) => plain(bars.lines(room, stale)),
            (None, None) => plain(self.table.lines(room, now)),
        };
        lines.push((
            self.stats.line(&self.stats.total, self.stats.values_second),
            Look::Plain,
        ));
        self.screen.draw(&mut self.out, lines)
    }

    /// Takes `ev` and every event queued behind it, then flushes what they wrote.
    /// False when the watch ends.
    fn take_queued(&mut self, ev: Event, rx: &mut tokio::sync::mpsc::Receiver<Event>) -> bool {
        let mut ev = ev;
        loop {
            if !self.take(&ev) {
                return false;
            }
            match rx.try_recv() {
                Ok(next) => ev = next,
                Err(_) => break,
            }
        }
        self.out.flush().is_ok()
    }

    /// Counts and shows one event. False when the watch ends with it: a refused
    /// symbol, the `--count` reached, or stdout gone.
    fn take(&mut self, ev: &Event) -> bool {
        self.count(ev);
        if let Some(r) = refusal(ev) {
            self.failure = Some(r);
            return false;
        }
        if let Some(text) = describe(ev) {
            match self.mode {
                Mode::Table => self.screen.event(text),
                _ => eprintln!("tickstream: {text}"),
            }
        }
        if self.mode == Mode::Json {
            if let Event::Message(m) = ev {
                self.line.clear();
                m.write_json(&mut self.line);
                self.line.push(b'\n');
                if self.out.write_all(&self.line).is_err() {
                    return false;
                }
            }
        }
        !self.stop.counted(ev)
    }

    /// Takes what `ev` changes in the statistics and the tables.
    fn count(&mut self, ev: &Event) {
        let stats = &mut self.stats;
        match ev {
            Event::Connected {
                reconnect: true, ..
            } => stats.reconnects += 1,
            Event::Moved { .. } => stats.moves += 1,
            Event::Hole { .. } => stats.holes += 1,
            Event::Message(ServerMessage::Gap { .. }) => stats.gaps += 1,
            Event::Message(ServerMessage::Tick(t)) => {
                let us = stats.tick(t, now_ns());
                self.table.update(t, false, us);
            }
            Event::Message(ServerMessage::Snapshot(t)) => self.table.update(t, true, 0),
            Event::Message(m @ (ServerMessage::Candles { .. } | ServerMessage::Candle { .. })) => {
                if let ServerMessage::Candle { candle, .. } = m {
                    stats.bar(candle.closed);
                } else {
                    stats.bar(false);
                }
                if let Some(bars) = &mut self.bars {
                    bars.take(m);
                }
            }
            Event::Stale {
                symbol,
                reason,
                since,
            } => {
                let held = (*since, reason.clone());
                self.table.stale.insert(symbol.to_string(), held);
                stats.stale = self.table.stale.len();
            }
            Event::Live { symbol, .. } => {
                self.table.stale.remove(&**symbol);
                stats.stale = self.table.stale.len();
            }
            Event::Book(book) => {
                stats.books += 1;
                stats.values_second += 1;
                if let Some((_, ladder)) = &mut self.ladder {
                    ladder.messages += 1;
                    ladder.book = Some(book.clone());
                }
            }
            Event::BookMismatch { .. } => {
                stats.mismatches += 1;
                if let Some((_, ladder)) = &mut self.ladder {
                    ladder.mismatches += 1;
                }
            }
            _ => {}
        }
    }

    /// Leaves the terminal tidy, prints the totals (with `--stats`, or after a table)
    /// and reports a refused symbol as the error.
    fn finish(mut self, stats: bool) -> anyhow::Result<()> {
        if self.mode == Mode::Table {
            let _ = self.draw();
            let _ = self.screen.finish(&mut self.out);
        }
        let _ = self.out.flush();
        drop(self.out);
        if stats || self.mode == Mode::Table {
            eprintln!(
                "tickstream: total {}",
                self.stats
                    .line(&self.stats.total, 0)
                    .replacen("rate 0/s  ", "", 1)
            );
        }
        match self.failure {
            Some(f) => anyhow::bail!(f),
            None => Ok(()),
        }
    }
}

/// One row of the live table.
struct Row {
    tick: Tick,
    first_last: f64,
    count_second: u64,
    rate: u64,
    latency_us: u64,
}

/// The live table of ticks: rows in first-seen order.
#[derive(Default)]
struct Table {
    order: Vec<String>,
    rows: HashMap<String, Row>,
    /// Symbols the node says are stale: since when, and why.
    stale: HashMap<String, (Instant, StaleReason)>,
}

/// The table's columns: symbol, bid, ask, last, change, ticks/s, latency, status.
macro_rules! columns {
    () => {
        "{:<12} {:>12} {:>12} {:>12} {:>18} {:>8} {:>9}  {}"
    };
}

impl Table {
    fn update(&mut self, t: &Tick, snapshot: bool, latency_us: u64) {
        match self.rows.get_mut(&*t.symbol) {
            Some(r) => {
                if snapshot && r.tick.epoch != t.epoch {
                    r.first_last = t.last;
                }
                r.tick = t.clone();
                if !snapshot {
                    r.count_second += 1;
                    r.latency_us = latency_us;
                }
            }
            None => {
                self.order.push(t.symbol.to_string());
                self.rows.insert(
                    t.symbol.to_string(),
                    Row {
                        tick: t.clone(),
                        first_last: t.last,
                        count_second: u64::from(!snapshot),
                        rate: 0,
                        latency_us,
                    },
                );
            }
        }
    }

    fn roll(&mut self) {
        for r in self.rows.values_mut() {
            r.rate = r.count_second;
            r.count_second = 0;
        }
    }

    /// One row's line, and whether it is shown dimmed (the node says it is stale).
    fn row_line(&self, sym: &str, now: Instant) -> (String, bool) {
        let r = &self.rows[sym];
        let t = &r.tick;
        let change = t.last - r.first_last;
        let pct = if r.first_last != 0.0 {
            100.0 * change / r.first_last
        } else {
            0.0
        };
        let lat = if r.latency_us == 0 {
            "-".to_owned()
        } else {
            ms(r.latency_us)
        };
        let status = match self.stale.get(sym) {
            Some((since, reason)) => {
                format!(
                    "STALE {} ({reason})",
                    age(now.saturating_duration_since(*since))
                )
            }
            None => "live".to_owned(),
        };
        let line = format!(
            columns!(),
            t.symbol,
            price(t.bid),
            price(t.ask),
            price(t.last),
            format!("{change:+.4} {pct:+.2}%"),
            r.rate,
            lat,
            status
        );
        (line, self.stale.contains_key(sym))
    }

    /// The header and at most `room` rows (and a line for the rest).
    fn lines(&self, room: usize, now: Instant) -> Vec<(String, bool)> {
        let mut lines: Vec<(String, bool)> = Vec::with_capacity(room + 8);
        let head = format!(
            columns!(),
            "SYMBOL", "BID", "ASK", "LAST", "CHANGE", "TICKS/S", "LATENCY", "STATUS"
        );
        lines.push((head, false));
        for sym in self.order.iter().take(room) {
            lines.push(self.row_line(sym, now));
        }
        if self.order.len() > room {
            lines.push((format!("… {} more symbols", self.order.len() - room), false));
        }
        lines
    }
}

/// The terminal a live table is drawn on, in place, with the latest connection events
/// under it.
#[derive(Default)]
struct Screen {
    events: std::collections::VecDeque<String>,
    drawn: u16,
}

impl Screen {
    fn event(&mut self, text: String) {
        if self.events.len() == 4 {
            self.events.pop_front();
        }
        self.events.push_back(format!("{} {text}", clock()));
    }

    /// How many rows a table may take: the terminal's height less the header, the
    /// "more" line, the stats line, the events and one line spare (so that the last
    /// newline never scrolls the table off its own top).
    fn room(&self) -> usize {
        let (_, rows) = crossterm::terminal::size().unwrap_or((100, 40));
        rows.saturating_sub(4 + self.events.len() as u16).max(1) as usize
    }

    /// Draws `lines` (each as it looks), then the events, over what was drawn last.
    fn draw(
        &mut self,
        out: &mut impl Write,
        mut lines: Vec<(String, Look)>,
    ) -> std::io::Result<()> {
        use crossterm::style::{Attribute, Color, SetAttribute, SetForegroundColor};
        use crossterm::{cursor, queue, terminal};
        let (cols, _) = terminal::size().unwrap_or((100, 40));
        if self.drawn > 0 {
            queue!(out, cursor::MoveToPreviousLine(self.drawn))?;
        }
        lines.extend(self.events.iter().map(|e| (e.clone(), Look::Plain)));
        for (l, look) in &lines {
            let cut: String = l.chars().take(cols.max(1) as usize - 1).collect();
            queue!(out, terminal::Clear(terminal::ClearType::CurrentLine))?;
            match look {
                Look::Plain => {}
                Look::Dim => queue!(out, SetAttribute(Attribute::Dim))?,
                Look::BestAsk => queue!(
                    out,
                    SetAttribute(Attribute::Bold),
                    SetForegroundColor(Color::Red)
                )?,
                Look::BestBid => queue!(
                    out,
                    SetAttribute(Attribute::Bold),
                    SetForegroundColor(Color::Green)
                )?,
            }
            out.write_all(cut.as_bytes())?;
            if *look != Look::Plain {
                queue!(out, SetAttribute(Attribute::Reset))?;
            }
            out.write_all(b"\n")?;
        }
        queue!(out, terminal::Clear(terminal::ClearType::FromCursorDown))?;
        out.flush()?;
        self.drawn = lines.len() as u16;
        Ok(())
    }

    fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        self.drawn = 0;
        out.flush()
    }
}

/// Lines that are dimmed or not, as they look.
fn plain(lines: Vec<(String, bool)>) -> Vec<(String, Look)> {
    lines.into_iter().map(|(l, d)| (l, Look::from(d))).collect()
}

/// A price as shown: two decimals from 1000 up, four below.
fn price(p: f64) -> String {
    if p.abs() >= 1000.0 {
        format!("{p:.2}")
    } else {
        format!("{p:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_split_on_commas_and_are_checked() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_symbols(&args(&["AAPL,MSFT", "BTC-USD", "AAPL"])).unwrap(),
            ["AAPL", "MSFT", "BTC-USD"]
        );
        assert!(parse_symbols(&args(&["aapl"]))
            .unwrap_err()
            .to_string()
            .contains("bad symbol \"aapl\""));
        assert!(parse_symbols(&args(&[","])).is_err());
    }

    #[test]
    fn resume_positions_parse() {
        assert_eq!(
            parse_resume("AAPL=k3v9q1:1042").unwrap(),
            ("AAPL".into(), ("k3v9q1".into(), 1042))
        );
        assert_eq!(
            parse_resume("ES:H6=e:7").unwrap(),
            ("ES:H6".into(), ("e".into(), 7))
        );
        assert_eq!(
            parse_resume("AAPL=5").unwrap(),
            ("AAPL".into(), (String::new(), 5))
        );
        for bad in ["AAPL", "AAPL=x", "aapl=1", "AAPL=e:", "=1"] {
            assert!(parse_resume(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_stale_row_is_dimmed_with_its_age_and_reason() {
        let mut table = Table::default();
        for sym in ["AAPL", "MSFT"] {
            let t = Tick {
                symbol: sym.into(),
                ..Tick::example()
            };
            table.update(&t, true, 0);
        }
        let now = Instant::now();
        let since = now - Duration::from_millis(3240);
        table
            .stale
            .insert("AAPL".into(), (since, StaleReason::Feed));
        let (line, dim) = table.row_line("AAPL", now);
        assert!(dim && line.ends_with("  STALE 3.2s (feed)"), "{line}");
        let (line, dim) = table.row_line("MSFT", now);
        assert!(!dim && line.ends_with("  live"), "{line}");
    }

    #[test]
    fn latency_lines_read_well() {
        assert_eq!(ms(0), "-");
        assert_eq!(ms(250), "0.25ms");
        assert_eq!(ms(25_000), "25ms");
        assert_eq!(short(Duration::from_millis(734)), "734ms");
        assert_eq!(short(Duration::from_secs(12)), "12.0s");
        assert_eq!(age(Duration::from_millis(3240)), "3.2s");
        assert_eq!(age(Duration::from_secs(245)), "4m05s");
        assert_eq!(age(Duration::from_secs(7620)), "2h07m");
    }
}
