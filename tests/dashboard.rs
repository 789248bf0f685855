//! The dashboard at `/` in a real browser: Debian's headless Chromium, driven by
//! `tests/browser/dashboard.js` (playwright-core), against the real `tickstream` binary.
//!
//! A feed publishes into a real `redis-server`; the page's node joins through it. The
//! page loads, a symbol is added through the box and ticks within a second; the node is
//! then killed and started again on the same port, and the page shows its countdown,
//! reconnects and resumes every symbol from the Redis history with no hole. Then Redis
//! restarts under the node, and the `gap` it announces shows on the rows it hit. Then the
//! feed process is killed: the node says its symbols are stale, and the page greys every
//! row with its age ticking and the reason, until the feed is started again and the node
//! says they are live. Last, with 200 symbols and ticks arriving faster than frames, the
//! page renders at most once per animation frame (both counted in the page). The
//! pictures are kept in `target/test-artifacts/dashboard.png` (and `dashboard-gap.png`,
//! `dashboard-stale.png`).
//!
//! The trading screen (`tests/browser/trading.js`) runs against a node fed from this
//! test with ticks of explicit `ts`, so that bars exist before the page opens: a row's
//! chart appears with its backfill within a second, a bar closes and the next starts,
//! the interval switches; beside the chart the row's order book (a book of 20 levels a
//! side published by this test with each tick) shows as a depth ladder within a second,
//! updates with every message's checksum matching, follows the selection (the last
//! symbol's book stops on the wire), and recovers from a lost update and a corrupted
//! level with its counters showing them; a paced row updates no more often than its pace, a pattern
//! adds rows (one of them when its symbol gets its first value), the page's latency
//! report reaches the node's `/v1/latency`, a planned `reconnect` moves the page to a
//! new connection with no gap, hole, duplicate or backoff, and a link's `?pace=` sets
//! the pace (a bad one is refused with a message). The node does not send
//! `reconnect` by itself here: a proxy in the driver, between the page and the node,
//! adds the message to the stream the node sends and closes that connection when its
//! `in_ms` is over, as a node closing a connection it chose to close would.

#[path = "common/redis.rs"]
mod env;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use env::{free_port, repo_path, Proc, RedisServer};

const CHROMIUM: &str = "/usr/bin/chromium";

/// A child process killed with its whole process group when dropped (the browser the
/// driver starts included).
struct Group(Option<Child>);

impl Group {
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tickstream serve` on `port` (fixed, so that a restart takes the same one).
fn node(port: u16, name: &str, redis: &str, log: &Path) -> Group {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::create(log.join(format!("{name}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--node", name, "--redis", redis])
        .env("TICKSTREAM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(file)
        .process_group(0)
        .spawn()
        .expect("tickstream runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{name} does not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Group(Some(child))
}

/// Installs the driver's npm packages from the lock file when they are missing.
fn npm_ci(dir: &Path) {
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .expect("npm runs (scripts/test installs node and npm)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

struct Driver {
    proc: Group,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    errors: Option<std::thread::JoinHandle<String>>,
}

impl Driver {
    /// `node SCRIPT ARGS…` from `tests/browser`, talking over stdio; its stderr is kept
    /// for the failure message.
    fn spawn(script: &str, args: &[&str]) -> Driver {
        use std::os::unix::process::CommandExt;
        let browser_dir = repo_path("tests/browser");
        let mut child = Command::new("node")
            .arg(browser_dir.join(script))
            .args(args)
            .env("CHROMIUM", CHROMIUM)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("node runs (scripts/test installs it)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let errors = std::thread::spawn(move || {
            let mut all = String::new();
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                all.push_str(&l);
                all.push('\n');
            }
            all
        });
        Driver {
            proc: Group(Some(child)),
            stdin,
            lines,
            errors: Some(errors),
        }
    }

    /// Runs `steps` (the test's side of the conversation, ending with the `RESULT` line),
    /// then waits for the driver to exit: the result as JSON, or a failure with what the
    /// driver said on stderr.
    fn conclude(mut self, steps: impl FnOnce(&mut Driver) -> String) -> serde_json::Value {
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| steps(&mut self)));
        let errors = self.errors.take().unwrap();
        let result = match step {
            Ok(line) => line,
            Err(e) => {
                // Ends the driver and its browser, so that its stderr reaches its end.
                self.proc.kill();
                let err = errors.join().unwrap_or_default();
                panic!("{}\nthe driver said:\n{err}", panic_text(&e));
            }
        };
        let status = self
            .proc
            .0
            .as_mut()
            .unwrap()
            .wait()
            .expect("the driver exits");
        let err = errors.join().unwrap_or_default();
        assert!(status.success(), "the browser driver failed:\n{err}");
        serde_json::from_str(&result["RESULT ".len()..]).unwrap()
    }

    /// The next line the driver prints, or a failure naming `what` after `wait`.
    fn expect(&mut self, want: &str, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(want) => return l,
                Ok(_) => {}
                Err(_) => {
                    let status = self
                        .proc
                        .0
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    panic!("the browser driver did not say {want:?} within {wait:?} (exit: {status:?})");
                }
            }
        }
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("the driver reads its stdin");
    }
}

#[test]
fn the_dashboard_adds_a_symbol_and_resumes_after_a_node_restart_without_a_hole() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: scripts/test installs Debian's chromium"
    );
    let browser_dir = repo_path("tests/browser");
    npm_ci(&browser_dir);
    let artifacts: PathBuf = repo_path("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);

    let logs = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start();
    let url_redis = redis.url();
    let feed_args: [&str; 6] = [
        "--redis",
        &url_redis,
        "--feed",
        "synthetic",
        "--rate",
        "1000",
    ];
    let mut feed = Proc::serve("feed", &feed_args, logs.path());
    let port = free_port(false);
    let mut server = node(port, "dash-a", &url_redis, logs.path());

    let url = format!("http://127.0.0.1:{port}/");
    let shot_arg = shot.to_string_lossy().into_owned();
    let driver = Driver::spawn("dashboard.js", &[&url, &shot_arg]);
    let r = driver.conclude(|driver| {
        driver.expect("KILL", Duration::from_secs(60));
        server.kill();
        driver.say("KILLED");
        driver.expect("RESTART", Duration::from_secs(20));
        server = node(port, "dash-b", &url_redis, logs.path());
        driver.say("RESTARTED");
        driver.expect("GAP", Duration::from_secs(60));
        redis.kill();
        std::thread::sleep(Duration::from_millis(500));
        redis.restart();
        driver.say("REDIS_RESTARTED");
        driver.expect("FEED_STOP", Duration::from_secs(60));
        feed.kill9();
        driver.say("FEED_STOPPED");
        driver.expect("FEED_START", Duration::from_secs(40));
        // The same name, so the same feed id: it takes its symbols back at once.
        feed = Proc::serve("feed", &feed_args, logs.path());
        driver.say("FEED_STARTED");
        driver.expect("RESULT ", Duration::from_secs(60))
    });
    eprintln!("dashboard: {r}");
    assert_eq!(r["node1"], "dash-a", "{r}");
    assert_eq!(
        r["node2"], "dash-b",
        "the page reconnected to the new node: {r}"
    );
    assert!(r["changedAfterMs"].as_u64().unwrap() <= 1000, "{r}");
    assert_eq!(r["after"]["holes"], 0, "{r}");
    assert_eq!(
        r["after"]["gaps"], 0,
        "resumed from history, nothing missing: {r}"
    );
    assert!(r["after"]["reconnects"].as_u64().unwrap() >= 1, "{r}");
    assert!(
        r["after"]["ticks"].as_u64().unwrap() > r["before"]["ticks"].as_u64().unwrap(),
        "{r}"
    );
    assert!(
        r["countdown"]
            .as_str()
            .unwrap()
            .starts_with("reconnecting in"),
        "{r}"
    );
    let s = &r["stale"];
    assert!(
        s["first"].as_str().unwrap().ends_with(" · feed"),
        "the row says why: {s}"
    );
    assert!(
        s["markedAfterMs"].as_u64().unwrap() <= 5000,
        "a dead feed is shown within seconds: {s}"
    );
    assert!(s["rows"].as_u64().unwrap() >= 3, "{s}");
    let c = &r["coalesce"];
    assert!(
        c["renders"].as_u64().unwrap() <= c["frames"].as_u64().unwrap() + 1,
        "at most one render per animation frame: {c}"
    );
    assert!(
        c["ticks"].as_u64().unwrap() > c["renders"].as_u64().unwrap(),
        "{c}"
    );
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "a screenshot in {}",
        shot.display()
    );
    drop(server);
    drop(feed);
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

// ---------------------------------------------------------------------------------------
// The trading screen.

/// The symbol charted, with three hours of history; the rest tick live only.
const CHARTED: &str = "BTC-USD";
/// Symbols that tick live, 20 times a second each: the default watchlist and a pattern's.
const LIVE: [&str; 6] = ["AAPL", "MSFT", "NVDA", "EUR/USD", "BTC-USD", "ETH-USD"];
/// A symbol the pattern `ETH-*` matches that has its first value only when the page asks.
const LATE: &str = "ETH-EUR";
/// Milliseconds between two ticks of a live symbol.
const LIVE_EVERY_MS: u64 = 50;

/// One symbol's ticks, numbered from 1, with a price that wanders around `base` (in
/// steps of `step`) and a volume that grows.
struct Walk {
    symbol: &'static str,
    base: f64,
    step: f64,
    seq: u64,
    volume: u64,
    rng: u64,
}

impl Walk {
    fn new(symbol: &'static str, base: f64) -> Walk {
        Walk {
            symbol,
            base,
            step: if base < 10.0 { 0.00001 } else { 0.01 },
            seq: 0,
            volume: 0,
            rng: 0x9e37_79b9_7f4a_7c15 ^ base.to_bits(),
        }
    }

    /// The next tick, stamped `ts` (ns since the Unix epoch).
    fn tick(&mut self, ts: u64) -> tickstream::tick::Tick {
        // xorshift: noise for the prices and sizes, the same on every run
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let noise = (self.rng % 2001) as f64 / 1000.0 - 1.0;
        self.seq += 1;
        let k = self.seq as f64;
        let drift = 0.004 * (k / 90.0).sin() + 0.002 * (k / 23.0).sin() + 0.0006 * noise;
        let on_step = |p: f64| (p / self.step).round() * self.step;
        let last = on_step(self.base * (1.0 + drift));
        let size = 1 + self.rng % 40;
        self.volume += size;
        tickstream::tick::Tick {
            symbol: self.symbol.into(),
            epoch: "walk".into(),
            seq: self.seq,
            ts,
            bid: on_step(last - self.step),
            ask: on_step(last + self.step),
            bid_size: 100 + self.rng % 500,
            ask_size: 100 + (self.rng >> 9) % 500,
            last,
            last_size: size,
            volume: self.volume,
            src_ts: None,
        }
    }
}

/// Levels a side of the books this test publishes (the page shows the best 10).
const BOOK_LEVELS: u64 = 20;

/// The order book of one [`Walk`]: a level on every tick of its grid from the quote's bid
/// down and from its ask up, the best sizes the quote's, a few sizes near the touch
/// changing with every tick, published as a `book` and then `book_update`s.
struct BookWalk {
    levels: Option<tickstream::book::Levels>,
    seq: u64,
    rng: u64,
}

impl BookWalk {
    fn new(seed: u64) -> BookWalk {
        BookWalk {
            levels: None,
            seq: 0,
            rng: seed | 1,
        }
    }

    fn noise(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// The book after `tick` (whose prices are on `step`): a whole book the first time,
    /// then the levels that changed (none: `None`).
    fn next(
        &mut self,
        tick: &tickstream::tick::Tick,
        step: f64,
    ) -> Option<tickstream::book::BookMsg> {
        use tickstream::book::{diff, Level, Levels, Side};
        let (bid, ask) = (
            (tick.bid / step).round() as u64,
            (tick.ask / step).round() as u64,
        );
        let held = self.levels.clone().unwrap_or_default();
        let mut side = |best: u64, down: bool, best_size: u64| -> Vec<Level> {
            (0..BOOK_LEVELS)
                .map(|k| {
                    let price = if down { best - k } else { best + k };
                    let s = if down { Side::Bid } else { Side::Ask };
                    let size = match (k, held.size(s, price)) {
                        (0, _) => best_size,
                        (1..=3, _) | (_, 0) => 100 * (1 + self.noise() % 30),
                        (_, was) => was,
                    };
                    Level::new(price, size)
                })
                .collect()
        };
        let bids = side(bid, true, tick.bid_size);
        let asks = side(ask, false, tick.ask_size);
        let new = Levels::new(bids, asks);
        let (mut bids, mut asks) = (Vec::new(), Vec::new());
        let prev_seq = match &self.levels {
            None => {
                bids = new.side(Side::Bid).to_vec();
                asks = new.side(Side::Ask).to_vec();
                None
            }
            Some(old) => {
                diff(
                    Side::Bid,
                    old.side(Side::Bid),
                    new.side(Side::Bid),
                    &mut bids,
                );
                diff(
                    Side::Ask,
                    old.side(Side::Ask),
                    new.side(Side::Ask),
                    &mut asks,
                );
                if bids.is_empty() && asks.is_empty() {
                    return None;
                }
                Some(self.seq)
            }
        };
        self.seq += 1;
        let checksum = Some(new.checksum());
        self.levels = Some(new);
        Some(tickstream::book::BookMsg {
            symbol: tick.symbol.clone(),
            epoch: "walk-book".into(),
            seq: self.seq,
            prev_seq,
            ts: tick.ts,
            bids,
            asks,
            checksum,
        })
    }
}

/// Ticks of `walk` every `every` ns from `from` up to (not including) `to`.
fn history(node: &tickstream::node::Node, walk: &mut Walk, from: u64, to: u64, every: u64) {
    let mut ts = from;
    while ts < to {
        node.bus.publish(walk.tick(ts)).unwrap();
        ts += every;
    }
}

/// Publishes a tick of every live symbol every [`LIVE_EVERY_MS`], each with its book's
/// update (and a tick of [`LATE`] once `late` is set) until `stop` is set.
fn live_feed(
    node: std::sync::Arc<tickstream::node::Node>,
    mut walks: Vec<Walk>,
    late: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let mut late_walk = Walk::new(LATE, 3138.06);
        let mut books: Vec<BookWalk> = (0..walks.len() as u64).map(BookWalk::new).collect();
        while !stop.load(Ordering::Relaxed) {
            let now = tickstream::tick::now_ns();
            for (w, b) in walks.iter_mut().zip(&mut books) {
                let tick = w.tick(now);
                if let Some(msg) = b.next(&tick, w.step) {
                    for r in node.hub.publish_books(&[msg]) {
                        assert!(
                            !matches!(
                                r,
                                tickstream::hub::book::BookPublished::Refused(_)
                                    | tickstream::hub::book::BookPublished::UnknownSymbol
                            ),
                            "the test's book of {} is taken: {r:?}",
                            w.symbol
                        );
                    }
                }
                let _ = node.bus.publish(tick);
            }
            if late.load(Ordering::Relaxed) {
                let _ = node.bus.publish(late_walk.tick(now));
            }
            std::thread::sleep(Duration::from_millis(LIVE_EVERY_MS));
        }
    })
}

/// A node with no feed of its own, fed by this test: three hours of `CHARTED` (a tick
/// every 10 s, then every 250 ms over the last three minutes), a few seconds of the other
/// live symbols; then every live symbol 20 times a second.
async fn fed_node() -> (tickstream::server::Running, Vec<Walk>) {
    let run = tickstream::server::start(tickstream::config::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        feed: tickstream::config::FeedSpec::None,
        node: "trade-a".into(),
        ..Default::default()
    })
    .await
    .expect("the node starts");
    let now = tickstream::tick::now_ns();
    let (s, min) = (1_000_000_000u64, 60_000_000_000u64);
    let mut walks: Vec<Walk> = LIVE
        .iter()
        .zip([189.1, 412.0, 131.5, 1.0842, 67012.35, 3402.18])
        .map(|(s, p)| Walk::new(s, p))
        .collect();
    for w in &mut walks {
        if w.symbol == CHARTED {
            history(&run.node, w, now - 180 * min, now - 3 * min, 10 * s);
            history(&run.node, w, now - 3 * min, now, s / 4);
        } else {
            history(&run.node, w, now - 5 * s, now, s / 4);
        }
    }
    (run, walks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trading_screen_charts_ladders_paces_matches_and_moves_without_a_break() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: scripts/test installs Debian's chromium"
    );
    npm_ci(&repo_path("tests/browser"));
    let artifacts: PathBuf = repo_path("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard-trading.png");
    let _ = std::fs::remove_file(&shot);

    let (run, walks) = fed_node().await;
    let (late, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let feeder = live_feed(run.node.clone(), walks, late.clone(), stop.clone());
    let url = format!("http://{}/", run.addr);
    let shot_arg = shot.to_string_lossy().into_owned();
    let r = tokio::task::spawn_blocking(move || {
        Driver::spawn("trading.js", &[&url, &shot_arg]).conclude(|driver| {
            driver.expect("LATE", Duration::from_secs(60));
            late.store(true, Ordering::Relaxed);
            driver.say("LATE_PUBLISHED");
            driver.expect("RESULT ", Duration::from_secs(60))
        })
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    eprintln!("trading: {r}");

    let chart = &r["chart"];
    assert!(
        chart["bars"].as_u64().unwrap() >= 100,
        "backfilled: {chart}"
    );
    assert!(
        chart["drawnMs"].as_f64().unwrap() <= 1000.0,
        "drawn within a second of the click: {chart}"
    );
    assert!(
        r["closed"]["next"].as_f64() > r["closed"]["was"].as_f64(),
        "{r}"
    );
    assert_eq!(r["minute"]["interval"], "1m", "{r}");
    assert_eq!(
        r["minute"]["oldInterval"], 0,
        "nothing of 1s after the switch: {r}"
    );
    let pace = &r["pace"];
    assert!(
        pace["updates"].as_u64().unwrap() <= pace["allowed"].as_u64().unwrap(),
        "{pace}"
    );
    assert!(pace["skipped"].as_u64().unwrap() > 0, "{pace}");
    assert!(pace["maxPerSecond"].as_u64().unwrap() <= 5, "{pace}");
    assert_eq!(
        r["pattern"]["rows"],
        serde_json::json!(["ETH-EUR", "ETH-USD"]),
        "{r}"
    );

    assert_eq!(r["paceLink"]["good"]["pace"], 1000, "{r}");
    assert_eq!(r["paceLink"]["bad"]["pace"], 250, "{r}");

    // The page's reports reached the node.
    let m = tickstream::metrics::global();
    assert!(m.client_reports.load(Ordering::Relaxed) >= 1);
    assert!(r["report"]["node"]["reports"].as_u64().unwrap() >= 1, "{r}");

    let mv = &r["move"];
    for k in ["holes", "gaps", "duplicates", "reconnects", "moveFailures"] {
        assert_eq!(mv["delta"][k], 0, "{k} during the move: {mv}");
    }
    assert_eq!(mv["delta"]["moves"], 1, "{mv}");
    assert_eq!(mv["old"]["closedBy"], "page", "{mv}");
    assert_eq!(
        mv["book"]["mismatches"], 0,
        "the book across the move: {mv}"
    );

    let ladder = &r["ladder"];
    assert!(
        ladder["shownMs"].as_f64().unwrap() <= 1000.0,
        "the ladder within a second of the click: {ladder}"
    );
    assert!(ladder["verified"].as_u64().unwrap() >= 20, "{ladder}");
    let switch = &r["ladderSwitch"];
    assert_eq!(switch["oldUpdates"], 0, "the last book dropped: {switch}");
    assert!(switch["fxUpdates"].as_u64().unwrap() > 0, "{switch}");
    let faults = &r["faults"];
    assert_eq!(faults["fixed"]["mismatches"], 1, "{faults}");
    assert_eq!(faults["after"]["mismatches"], 1, "{faults}");
    assert_eq!(faults["shown"]["mismatches"], "1", "{faults}");
    assert_eq!(faults["resumed"]["breaks"], 1, "{faults}");
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "a screenshot in {}",
        shot.display()
    );
    run.shutdown().await;
}
