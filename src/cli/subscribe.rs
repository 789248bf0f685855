//! `tickstream subscribe`: subscribe to symbols and show what arrives.
//!
//! Output, by where stdout goes:
//!
//! - a terminal: a live table (symbol, bid, ask, last, change, ticks/s, latency) that
//!   redraws in place ten times a second, with connection events under it;
//! - a pipe or a file, or `--json`: every server message as one JSON object per line
//!   (NDJSON), in the order received; connection events go to stderr as text lines;
//! - `--stats`: one line per second with the tick rate, gaps, holes, reconnects and the
//!   latency percentiles of that second, on stdout instead of the messages — or on
//!   stderr when `--json` keeps the messages on stdout.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::client::{BackoffConfig, Client, ClientConfig, Event, ServerMessage};
use crate::config::Dur;
use crate::tick::{now_ns, valid_symbol, Tick};

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

/// Options.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  tickstream subscribe AAPL --resume AAPL=k3v9q1:1042 --json   replay what followed seq 1042
  tickstream subscribe AAPL MSFT                       live table in a terminal
  tickstream subscribe AAPL,BTC-USD --count 5 | jq .   NDJSON when piped
  tickstream subscribe AAPL --stats                    rate, gaps and latency every second
  tickstream subscribe AAPL --encoding binary --json   binary frames, printed as NDJSON
  tickstream subscribe --url ws://n1:8080/v1/ws,ws://n2:8080/v1/ws AAPL --json

Connection events (reconnects, resumes) go to stderr, or under the table. Exit status:
0 when stopped by --count, --duration or SIGINT/SIGTERM; 1 when the client gives up,
the server refuses a symbol, or the server closes with 1008/1009.")]
pub struct Args {
    /// Symbols, as separate arguments or comma-separated.
    #[arg(required = true, value_name = "SYMBOL")]
    pub symbols: Vec<String>,

    #[command(flatten)]
    pub conn: ConnArgs,

    /// Print NDJSON even when stdout is a terminal.
    #[arg(long)]
    pub json: bool,

    /// Print rate, gaps and latency percentiles every second (on stdout; on stderr with --json).
    #[arg(long)]
    pub stats: bool,

    /// Stop after this long (e.g. 30s).
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<Dur>,

    /// Stop after this many ticks and snapshots.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Do not ask for a snapshot before the first ticks.
    #[arg(long)]
    pub no_snapshot: bool,

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
    let symbols = parse_symbols(&args.symbols)?;
    let mut cfg = args.conn.client_config(symbols.clone())?;
    cfg.snapshot = !args.no_snapshot;
    cfg.encoding = args.encoding;
    for r in &args.resume {
        let (sym, at) = parse_resume(r)?;
        anyhow::ensure!(
            symbols.contains(&sym),
            "--resume {r}: {sym} is not among the symbols subscribed"
        );
        cfg.start_from.insert(sym, at);
    }
    let client = Client::new(cfg)?;
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
    second: Histogram<u64>,
    total: Histogram<u64>,
    ticks_second: u64,
    ticks: u64,
    gaps: u64,
    holes: u64,
    reconnects: u64,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            second: histogram(),
            total: histogram(),
            ticks_second: 0,
            ticks: 0,
            gaps: 0,
            holes: 0,
            reconnects: 0,
        }
    }

    fn tick(&mut self, t: &Tick, now: u64) -> u64 {
        let us = now.saturating_sub(t.ts) / 1000;
        self.second.saturating_record(us.max(1));
        self.total.saturating_record(us.max(1));
        self.ticks_second += 1;
        self.ticks += 1;
        us
    }

    fn line(&self, h: &Histogram<u64>, rate: u64) -> String {
        let q = |p: f64| ms(h.value_at_quantile(p));
        format!(
            "rate {rate}/s  ticks {}  gaps {}  holes {}  reconnects {}  latency p50 {} p90 {} p99 {} max {}",
            self.ticks,
            self.gaps,
            self.holes,
            self.reconnects,
            q(0.5),
            q(0.9),
            q(0.99),
            ms(h.max()),
        )
    }

    /// The stats line of the second that ended, then a fresh second.
    fn roll(&mut self) -> String {
        let line = format!("{} {}", clock(), self.line(&self.second, self.ticks_second));
        self.second.reset();
        self.ticks_second = 0;
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

/// UTC wall-clock time `HH:MM:SS`.
fn clock() -> String {
    let s = now_ns() / 1_000_000_000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
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
        Event::Hole { symbol, from, to } => {
            format!("{symbol}: seq {from}..={to} missing without a gap message")
        }
        Event::Reset { symbol, epoch } => format!("{symbol}: new epoch {epoch}, state replaced"),
        Event::Message(ServerMessage::Gap {
            symbol,
            from,
            to,
            reason,
        }) => format!(
            "{symbol}: gap {from}..={to} ({}); state replaced by what follows",
            gap_reason(*reason)
        ),
        Event::Message(_) => return None,
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
            Event::Message(ServerMessage::Tick(_) | ServerMessage::Snapshot(_))
        ) {
            self.seen += 1;
        }
        self.count.is_some_and(|c| self.seen >= c)
    }
}

async fn watch(client: Client, mode: Mode, args: &Args) -> anyhow::Result<()> {
    let stop_client = CancellationToken::new();
    let (mut rx, task) = client.spawn(8192, stop_client.clone());
    let deadline = args
        .duration
        .map(|d| tokio::time::Instant::now() + d.0)
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86400));
    let mut stats = Stats::new();
    let mut stop = Stop {
        count: args.count,
        ..Stop::default()
    };
    let mut second = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut redraw = tokio::time::interval(Duration::from_millis(100));
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let mut table = Table::default();
    let mut line = Vec::with_capacity(512);
    let signal = super::wait_for_signal();
    tokio::pin!(signal);
    let mut failure: Option<String> = None;
    let stats_to_stderr = args.stats && mode == Mode::Json;

    'outer: loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = second.tick() => {
                table.roll();
                let l = stats.roll();
                if mode == Mode::Stats {
                    if writeln!(out, "{l}").and_then(|_| out.flush()).is_err() {
                        break;
                    }
                } else if stats_to_stderr {
                    eprintln!("{l}");
                }
            }
            _ = redraw.tick(), if mode == Mode::Table => {
                if table.draw(&mut out, &stats).is_err() {
                    break;
                }
            }
            ev = rx.recv() => {
                let Some(mut ev) = ev else { break };
                loop {
                    let now = now_ns();
                    match &ev {
                        Event::Connected { reconnect: true, .. } => stats.reconnects += 1,
                        Event::Hole { .. } => stats.holes += 1,
                        Event::Message(ServerMessage::Gap { .. }) => stats.gaps += 1,
                        _ => {}
                    }
                    if let Some(r) = refusal(&ev) {
                        failure = Some(r);
                        break 'outer;
                    }
                    match &ev {
                        Event::Message(ServerMessage::Tick(t)) => {
                            let us = stats.tick(t, now);
                            table.update(t, false, us);
                        }
                        Event::Message(ServerMessage::Snapshot(t)) => table.update(t, true, 0),
                        _ => {}
                    }
                    if let Some(text) = describe(&ev) {
                        match mode {
                            Mode::Table => table.event(text),
                            _ => eprintln!("tickstream: {text}"),
                        }
                    }
                    if mode == Mode::Json {
                        if let Event::Message(m) = &ev {
                            line.clear();
                            m.write_json(&mut line);
                            line.push(b'\n');
                            if out.write_all(&line).is_err() {
                                break 'outer;
                            }
                        }
                    }
                    if stop.counted(&ev) {
                        break 'outer;
                    }
                    match rx.try_recv() {
                        Ok(next) => ev = next,
                        Err(_) => break,
                    }
                }
                if out.flush().is_err() {
                    break;
                }
            }
        }
    }
    stop_client.cancel();
    let result = task.await.context("the client task failed")?;
    if mode == Mode::Table {
        let _ = table.draw(&mut out, &stats);
        let _ = table.finish(&mut out);
    }
    let _ = out.flush();
    drop(out);
    if args.stats || mode == Mode::Table {
        eprintln!(
            "tickstream: total {}",
            stats.line(&stats.total, 0).replacen("rate 0/s  ", "", 1)
        );
    }
    if let Some(f) = failure {
        anyhow::bail!(f);
    }
    result.map_err(Into::into)
}

/// One row of the live table.
struct Row {
    tick: Tick,
    first_last: f64,
    count_second: u64,
    rate: u64,
    latency_us: u64,
}

/// The live table: rows in first-seen order, and the latest connection events.
#[derive(Default)]
struct Table {
    order: Vec<String>,
    rows: HashMap<String, Row>,
    events: std::collections::VecDeque<String>,
    drawn: u16,
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

    fn event(&mut self, text: String) {
        if self.events.len() == 4 {
            self.events.pop_front();
        }
        self.events.push_back(format!("{} {text}", clock()));
    }

    fn draw(&mut self, out: &mut impl Write, stats: &Stats) -> std::io::Result<()> {
        use crossterm::{cursor, queue, terminal};
        let (cols, rows) = terminal::size().unwrap_or((100, 40));
        // Header, "more", stats and events around the rows, and one line spare so that
        // the last newline never scrolls the table off its own top.
        let room = rows.saturating_sub(4 + self.events.len() as u16).max(1) as usize;
        if self.drawn > 0 {
            queue!(out, cursor::MoveToPreviousLine(self.drawn))?;
        }
        let mut lines: Vec<String> = Vec::with_capacity(room + 8);
        lines.push(format!(
            "{:<12} {:>12} {:>12} {:>12} {:>18} {:>8} {:>9}",
            "SYMBOL", "BID", "ASK", "LAST", "CHANGE", "TICKS/S", "LATENCY"
        ));
        for sym in self.order.iter().take(room) {
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
            lines.push(format!(
                "{:<12} {:>12} {:>12} {:>12} {:>18} {:>8} {:>9}",
                t.symbol,
                price(t.bid),
                price(t.ask),
                price(t.last),
                format!("{change:+.4} {pct:+.2}%"),
                r.rate,
                lat
            ));
        }
        if self.order.len() > room {
            lines.push(format!("… {} more symbols", self.order.len() - room));
        }
        lines.push(stats.line(&stats.total, stats.ticks_second));
        lines.extend(self.events.iter().cloned());
        for l in &lines {
            let cut: String = l.chars().take(cols.max(1) as usize - 1).collect();
            queue!(out, terminal::Clear(terminal::ClearType::CurrentLine))?;
            out.write_all(cut.as_bytes())?;
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
    fn latency_lines_read_well() {
        assert_eq!(ms(0), "-");
        assert_eq!(ms(250), "0.25ms");
        assert_eq!(ms(25_000), "25ms");
        assert_eq!(short(Duration::from_millis(734)), "734ms");
        assert_eq!(short(Duration::from_secs(12)), "12.0s");
    }
}
