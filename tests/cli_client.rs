//! The real binary's `subscribe` and `feed record` against real nodes: a subscriber that
//! outlives a server restart, recordings that hold exactly what the server sent, exit
//! codes, and a symbol shown stale while its feed is gone (as NDJSON, and in the live
//! table on a terminal).

#[path = "common/book.rs"]
mod book_client;
mod common;
#[path = "common/redis.rs"]
mod env;
#[path = "common/relay.rs"]
mod relay;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tickstream::bus::{RedisConfig, RedisPublisher};
use tickstream::feed::recording::Reader;
use tickstream::tick::Tick;

const BIN: &str = env!("CARGO_BIN_EXE_tickstream");

/// A child process whose stdout and stderr lines are collected as they come.
struct Proc {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
}

fn collect(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            match line {
                Ok(line) => l.lock().unwrap().push(line),
                Err(_) => break,
            }
        }
    });
    lines
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        Proc::spawn_program(BIN, args)
    }

    fn spawn_program(program: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        Proc { child, out, err }
    }

    fn out(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    fn err(&self) -> String {
        self.err.lock().unwrap().join("\n")
    }

    /// Stdout lines parsed as JSON.
    fn json(&self) -> Vec<Value> {
        self.out()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    async fn wait_for(&self, what: &str, mut cond: impl FnMut(&Proc) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\nstdout:\n{}\nstderr:\n{}",
                self.out().join("\n"),
                self.err()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Let the reader threads take the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the process did not exit within {within:?}\nstderr:\n{}",
                    self.err()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/v1/ws")
}

/// The (symbol, epoch, seq) of every `tick` line.
/// The (epoch, seq) of every value of `symbol` received: ticks, and the snapshot that
/// brings a symbol's first value.
fn ticks_of(lines: &[Value], symbol: &str) -> Vec<(String, u64)> {
    lines
        .iter()
        .filter(|v| (v["type"] == "tick" || v["type"] == "snapshot") && v["symbol"] == symbol)
        .map(|v| {
            (
                v["epoch"].as_str().unwrap().to_owned(),
                v["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn has_tick(p: &Proc, symbol: &str, epoch: &str, seq: u64) -> bool {
    ticks_of(&p.json(), symbol).contains(&(epoch.to_owned(), seq))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_survives_a_server_restart_and_resumes() {
    let first = start(settings()).await;
    let addr = first.addr;
    let url = ws_url(addr);
    let mut sub = Proc::spawn(&[
        "subscribe",
        "--url",
        &url,
        "AAPL",
        "MSFT",
        "--json",
        "--backoff-base",
        "100ms",
        "--backoff-cap",
        "400ms",
    ]);
    eventually("the subscriber's subscription", || {
        first.node.hub.subscriber_count("AAPL") == 1 && first.node.hub.subscriber_count("MSFT") == 1
    })
    .await;
    publish(&first, "AAPL", "e1", 1..=10);
    publish(&first, "MSFT", "e1", 1..=10);
    sub.wait_for("AAPL 10 and MSFT 10", |p| {
        has_tick(p, "AAPL", "e1", 10) && has_tick(p, "MSFT", "e1", 10)
    })
    .await;

    // The server restarts on the same port: its clients are closed with 1001.
    first.shutdown().await;
    let mut s = settings();
    s.listen = addr;
    let deadline = Instant::now() + Duration::from_secs(5);
    let second = loop {
        match tickstream::server::start(s.clone()).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot listen again: {e:#}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // AAPL's feed carried on (same epoch): what it published while the subscriber was
    // away is replayed from the new node's history, or arrives live.
    publish(&second, "AAPL", "e1", 11..=15);
    eventually("the resubscription", || {
        second.node.hub.subscriber_count("AAPL") == 1
            && second.node.hub.subscriber_count("MSFT") == 1
    })
    .await;
    publish(&second, "AAPL", "e1", 16..=20);
    // MSFT's feed restarted its numbering under a new epoch.
    publish(&second, "MSFT", "e2", 1..=5);
    sub.wait_for("AAPL 20 and MSFT e2 5", |p| {
        has_tick(p, "AAPL", "e1", 20) && has_tick(p, "MSFT", "e2", 5)
    })
    .await;

    sub.sigterm();
    let status = sub.exit(Duration::from_secs(5)).await;
    let lines = sub.json();
    let err = sub.err();
    assert!(status.success(), "{status:?}\n{err}");
    assert_eq!(
        ticks_of(&lines, "AAPL"),
        (1..=20).map(|s| ("e1".to_owned(), s)).collect::<Vec<_>>(),
        "every AAPL tick once, in order, across the restart"
    );
    let msft: Vec<(String, u64)> = (1..=10)
        .map(|s| ("e1".to_owned(), s))
        .chain((1..=5).map(|s| ("e2".to_owned(), s)))
        .collect();
    assert_eq!(ticks_of(&lines, "MSFT"), msft);
    assert!(
        !lines
            .iter()
            .any(|v| v["type"] == "gap" && v["symbol"] == "AAPL"),
        "no gap for AAPL"
    );
    assert_eq!(
        lines.iter().filter(|v| v["type"] == "welcome").count(),
        2,
        "two connections"
    );
    assert!(err.contains("close 1001"), "{err}");
    assert!(
        err.contains("reconnected to") && err.contains("resuming 2 symbols"),
        "{err}"
    );
    // MSFT resumed from e1 on a node whose first MSFT value is of e2: a reset.
    assert!(err.contains("MSFT: gap 11..=11 (reset)"), "{err}");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_record_writes_exactly_what_the_server_sent() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["rec.ndjson", "rec.ndjson.zst"] {
        let run = start(settings()).await;
        let url = ws_url(run.addr);
        let path = dir.path().join(name);
        let epoch = format!("rec-{name}");
        // One tick of each before the recorder starts, so that it gets their snapshots
        // first.
        let mut sent: Vec<Tick> = Vec::new();
        for sym in ["AAPL", "MSFT"] {
            let t = tick(sym, &epoch, 1);
            run.node.bus.publish(t.clone()).unwrap();
            // Readers take a symbol's opening snapshot as its first tick.
            sent.push(t);
        }
        let mut rec = Proc::spawn(&[
            "feed",
            "record",
            "--url",
            &url,
            "--symbols",
            "AAPL,MSFT",
            "--out",
            path.to_str().unwrap(),
            "--count",
            "42",
        ]);
        eventually("the recorder's subscription", || {
            run.node.hub.subscriber_count("AAPL") == 1 && run.node.hub.subscriber_count("MSFT") == 1
        })
        .await;
        for seq in 2..=21 {
            for sym in ["AAPL", "MSFT"] {
                let mut t = tick(sym, &epoch, seq);
                // Distinct, awkward prices and an old source time, kept as they are.
                t.bid = 0.1 + seq as f64 / 3.0;
                t.ts = 1_700_000_000_000_000_000 + seq * 1_000_003;
                run.node.bus.publish(t.clone()).unwrap();
                sent.push(t);
            }
        }
        let status = rec.exit(Duration::from_secs(10)).await;
        assert!(status.success(), "{status:?}\n{}", rec.err());
        assert!(
            rec.err().contains("recorded 42 ticks, 2 snapshots"),
            "{}",
            rec.err()
        );
        let got: Vec<Tick> = Reader::open(&path)
            .unwrap()
            .map(|r| r.expect("a readable line").1)
            .collect();
        assert_eq!(got, sent, "{name}: the ticks as sent, with their ts");
        let raw = std::fs::read(&path).unwrap();
        if name.ends_with(".zst") {
            assert_eq!(&raw[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
        } else {
            let text = String::from_utf8(raw).unwrap();
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines[0]["type"], "recording");
            for snap in &lines[1..3] {
                assert_eq!(
                    (snap["type"].as_str(), snap["seq"].as_u64()),
                    (Some("snapshot"), Some(1))
                );
            }
            assert_eq!(lines.len(), 3 + 40);
        }
        run.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_record_finishes_the_file_on_sigterm() {
    let run = start(settings()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.ndjson.zst");
    let mut rec = Proc::spawn(&[
        "feed",
        "record",
        "--url",
        &ws_url(run.addr),
        "BTC-USD",
        "--out",
        path.to_str().unwrap(),
        "--flush",
        "50ms",
    ]);
    eventually("the recorder's subscription", || {
        run.node.hub.subscriber_count("BTC-USD") == 1
    })
    .await;
    publish(&run, "BTC-USD", "s", 1..=25);
    // Flushed every 50 ms: the ticks show up in the file while it is being written.
    let readable = || {
        Reader::open(&path)
            .map(|r| r.take_while(Result::is_ok).count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + WAIT;
    while readable() < 25 {
        assert!(
            Instant::now() < deadline,
            "ticks not flushed: {}",
            readable()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rec.sigterm();
    let status = rec.exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}\n{}", rec.err());
    let seqs: Vec<u64> = Reader::open(&path)
        .unwrap()
        .map(|r| r.expect("the finished file reads to its end").1.seq)
        .collect();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_stats_prints_a_line_per_second() {
    let run = start(settings()).await;
    let mut sub = Proc::spawn(&[
        "subscribe",
        "--url",
        &ws_url(run.addr),
        "AAPL",
        "--stats",
        "--duration",
        "2500ms",
    ]);
    eventually("the subscription", || {
        run.node.hub.subscriber_count("AAPL") == 1
    })
    .await;
    let mut seq = 0;
    let publisher = async {
        while sub.child.try_wait().unwrap().is_none() && seq < 400 {
            seq += 1;
            run.node.bus.publish(tick("AAPL", "st", seq)).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), publisher)
        .await
        .unwrap();
    let status = sub.exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{}", sub.err());
    let out = sub.out();
    assert!(out.len() >= 2, "{out:?}");
    for l in &out {
        assert!(
            l.contains(" rate ")
                && l.contains("/s")
                && l.contains("latency p50 ")
                && l.contains(" p99 "),
            "{l}"
        );
    }
    assert!(
        out.iter().any(|l| !l.contains("rate 0/s")),
        "ticks were counted: {out:?}"
    );
    assert!(sub.err().contains("total ticks"), "{}", sub.err());
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_exit_non_zero_with_a_clear_message() {
    let run = start(settings()).await;
    let url = ws_url(run.addr);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        ws_url(l.local_addr().unwrap())
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["subscribe", "--url", &dead, "AAPL"], "gave up"),
        (
            vec!["subscribe", "--url", &url, "aapl"],
            "bad symbol \"aapl\"",
        ),
        (
            vec!["subscribe", "--url", &url, "AAPL,NOPE9"],
            "the server refused NOPE9: unknown_symbol",
        ),
        (
            vec![
                "subscribe",
                "--url",
                "wss://127.0.0.1:1/v1/ws",
                "--ca-file",
                "/nonexistent/ca.pem",
                "AAPL",
            ],
            "cannot read CA file /nonexistent/ca.pem",
        ),
        (
            vec![
                "subscribe",
                "--url",
                &url,
                "AAPL",
                "--duration",
                "5 parsecs",
            ],
            "write it like 500ms",
        ),
        (
            vec![
                "feed",
                "record",
                "--url",
                &url,
                "AAPL",
                "--out",
                "/nonexistent/dir/x.ndjson",
            ],
            "cannot create the recording",
        ),
        (
            vec![
                "feed",
                "record",
                "--url",
                &url,
                "--out",
                "/tmp/never-written.ndjson",
            ],
            "no symbol given",
        ),
    ];
    for (args, needle) in cases {
        let mut p = Proc::spawn(&args);
        let status = p.exit(Duration::from_secs(10)).await;
        assert!(!status.success(), "{args:?} succeeded");
        assert!(p.err().contains(needle), "{args:?}: {}", p.err());
    }
    for cmd in [
        &["subscribe", "--help"][..],
        &["feed", "record", "--help"][..],
    ] {
        let mut p = Proc::spawn(cmd);
        assert!(p.exit(Duration::from_secs(5)).await.success());
        assert!(p.out().join("\n").contains("Examples:"), "{cmd:?}");
    }
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_resume_starts_after_a_given_position() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "r", 1..=10);
    for at in ["AAPL=r:5", "AAPL=5"] {
        let mut sub = Proc::spawn(&[
            "subscribe",
            "--url",
            &ws_url(run.addr),
            "AAPL",
            "--resume",
            at,
            "--count",
            "5",
        ]);
        let status = sub.exit(Duration::from_secs(10)).await;
        assert!(status.success(), "{at}: {}", sub.err());
        let lines = sub.json();
        assert_eq!(
            ticks_of(&lines, "AAPL"),
            (6..=10).map(|s| ("r".to_owned(), s)).collect::<Vec<_>>(),
            "{at}"
        );
        assert!(
            !lines
                .iter()
                .any(|v| v["type"] == "snapshot" || v["type"] == "gap"),
            "{at}: {lines:?}"
        );
    }
    // A position from another epoch gets the reset the protocol promises.
    let mut sub = Proc::spawn(&[
        "subscribe",
        "--url",
        &ws_url(run.addr),
        "AAPL",
        "--resume",
        "AAPL=old:5",
        "--count",
        "1",
    ]);
    assert!(sub.exit(Duration::from_secs(10)).await.success());
    let lines = sub.json();
    assert_eq!(lines[2]["type"], "gap", "{lines:?}");
    assert_eq!(lines[2]["reason"], "reset");
    assert_eq!(lines[3]["type"], "snapshot");
    assert_eq!(lines[3]["seq"], 10);
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_record_resumes_across_a_node_restart_without_holes_or_repeats() {
    let first = start(settings()).await;
    let addr = first.addr;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("across.ndjson");
    let mut rec = Proc::spawn(&[
        "feed",
        "record",
        "--url",
        &ws_url(addr),
        "AAPL",
        "--out",
        path.to_str().unwrap(),
        "--count",
        "30",
        "--flush",
        "20ms",
        "--backoff-base",
        "100ms",
        "--backoff-cap",
        "400ms",
    ]);
    eventually("the recorder's subscription", || {
        first.node.hub.subscriber_count("AAPL") == 1
    })
    .await;
    let mut sent: Vec<Tick> = (1..=10).map(|s| tick("AAPL", "k", s)).collect();
    for t in &sent {
        first.node.bus.publish(t.clone()).unwrap();
    }
    // The recorder has written them (it flushes every 20 ms) before the node goes.
    let deadline = Instant::now() + WAIT;
    while Reader::open(&path)
        .map(|r| r.take_while(Result::is_ok).count())
        .unwrap_or(0)
        < 10
    {
        assert!(
            Instant::now() < deadline,
            "the first ticks were not recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.shutdown().await;
    let mut s = settings();
    s.listen = addr;
    let deadline = Instant::now() + Duration::from_secs(5);
    let second = loop {
        match tickstream::server::start(s.clone()).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot listen again: {e:#}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // The feed carried on: the node has the same history the old one had, and more.
    let more: Vec<Tick> = (11..=30).map(|s| tick("AAPL", "k", s)).collect();
    for t in sent.iter().chain(&more[..10]) {
        second.node.bus.publish(t.clone()).unwrap();
    }
    eventually("the resubscription", || {
        second.node.hub.subscriber_count("AAPL") == 1
    })
    .await;
    for t in &more[10..] {
        second.node.bus.publish(t.clone()).unwrap();
    }
    sent.extend(more);
    let status = rec.exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", rec.err());
    let got: Vec<Tick> = Reader::open(&path).unwrap().map(|r| r.unwrap().1).collect();
    assert_eq!(got, sent, "every tick once, in order, with its ts");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("\"gap\""), "{text}");
    assert!(rec.err().contains("reconnected to"), "{}", rec.err());
    second.shutdown().await;
}

/// The feed stops (AAPL goes stale), then comes back under the same id and publishes
/// `seqs` (AAPL is live again); `shown_stale` is awaited in between.
async fn feed_stops_and_returns<F: std::future::Future<Output = ()>>(
    redis: &env::RedisServer,
    feed: RedisPublisher,
    shown_stale: F,
    seqs: std::ops::RangeInclusive<u64>,
) -> RedisPublisher {
    feed.close().await;
    shown_stale.await;
    let cfg = RedisConfig::single(&redis.url());
    let feed = RedisPublisher::connect(&cfg, "feed-a").await.unwrap();
    for seq in seqs {
        feed.publish(tick("AAPL", "e1", seq)).unwrap();
    }
    feed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_prints_a_symbols_status_and_says_when_it_changes() {
    let redis = env::RedisServer::start();
    let (run, feed) = node_with_a_feed(&redis.url(), "feed-a", "AAPL").await;
    let mut sub = Proc::spawn(&["subscribe", "--url", &ws_url(run.addr), "AAPL", "--json"]);
    sub.wait_for("AAPL's snapshot", |p| has_tick(p, "AAPL", "e1", 1))
        .await;
    let status_lines = |p: &Proc| -> Vec<Value> {
        p.json()
            .into_iter()
            .filter(|v| v["type"] == "status")
            .collect()
    };
    let shown = sub.wait_for("the stale status and its line on stderr", |p| {
        !status_lines(p).is_empty() && p.err().contains("AAPL: stale (feed)")
    });
    let feed = feed_stops_and_returns(&redis, feed, shown, 2..=3).await;
    sub.wait_for("the live status and its line on stderr", |p| {
        status_lines(p).len() == 2 && p.err().contains("AAPL: live again after ")
    })
    .await;
    sub.wait_for("tick 3", |p| has_tick(p, "AAPL", "e1", 3))
        .await;
    sub.sigterm();
    assert!(sub.exit(Duration::from_secs(5)).await.success());
    let lines = sub.json();
    let kinds: Vec<String> = lines
        .iter()
        .filter(|v| v["symbol"] == "AAPL")
        .map(|v| {
            format!(
                "{} {}",
                v["type"].as_str().unwrap(),
                v["state"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        kinds,
        ["snapshot ", "status stale", "tick ", "status live", "tick "],
        "{lines:?}"
    );
    assert_eq!(
        status_lines(&sub)[0],
        serde_json::json!({"type": "status", "symbol": "AAPL", "state": "stale", "reason": "feed"})
    );
    assert_eq!(
        sub.err().matches("AAPL: stale").count(),
        1,
        "one line per change: {}",
        sub.err()
    );
    feed.close().await;
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_table_dims_a_stale_row_with_its_age_and_reason() {
    let redis = env::RedisServer::start();
    let (run, feed) = node_with_a_feed(&redis.url(), "feed-a", "AAPL").await;
    // A terminal of 160 columns, made by script(1).
    let cmd = format!(
        "stty cols 160 rows 30; exec {BIN} subscribe --url {} AAPL --duration 30s",
        ws_url(run.addr)
    );
    let table = Proc::spawn_program("script", &["-qfec", &cmd, "/dev/null"]);
    let screen = |p: &Proc| p.out().join("\n");
    table
        .wait_for("AAPL's row", |p| {
            screen(p).contains("AAPL ") && screen(p).contains("STATUS")
        })
        .await;
    assert!(!screen(&table).contains("STALE"), "{}", screen(&table));
    let shown = table.wait_for("AAPL dimmed, stale with its age and reason", |p| {
        let s = screen(p);
        // Dim on, the row, then its status column.
        s.split("\x1b[2m").skip(1).any(|row| {
            row.starts_with("AAPL ")
                && row
                    .split("STALE ")
                    .nth(1)
                    .and_then(|rest| rest.split_once("s (feed)"))
                    .is_some_and(|(age, _)| age.parse::<f64>().is_ok())
        })
    });
    let feed = feed_stops_and_returns(&redis, feed, shown, 2..=3).await;
    table
        .wait_for("AAPL live again, under the table", |p| {
            screen(p).contains("AAPL: live again after ")
        })
        .await;
    feed.close().await;
    run.shutdown().await;
}

/// The `tick` lines of `symbol`: (seq, skipped).
fn paced_of(lines: &[Value], symbol: &str) -> Vec<(u64, Option<u64>)> {
    lines
        .iter()
        .filter(|v| v["type"] == "tick" && v["symbol"] == symbol)
        .map(|v| (v["seq"].as_u64().unwrap(), v["skipped"].as_u64()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_paces_what_a_pattern_matches() {
    let run = start(settings()).await;
    let mut btc: Vec<String> = run
        .node
        .hub
        .symbols()
        .iter()
        .filter(|s| s.starts_with("BTC-"))
        .map(|s| s.to_string())
        .collect();
    btc.sort();
    assert!(btc.len() >= 2, "{btc:?}");
    // One with a value from the start, one that gets its first value later.
    let (paced, late) = (vec![btc[0].as_str()], btc[1].as_str());
    for sym in paced.iter().chain(&["AAPL"]) {
        publish(&run, sym, "p", 1..=1);
    }
    let mut sub = Proc::spawn(&[
        "subscribe",
        "--url",
        &ws_url(run.addr),
        "BTC-*",
        "--throttle",
        "200ms",
    ]);
    sub.wait_for("the subscription", |p| {
        p.json().iter().any(|v| v["type"] == "subscribed")
    })
    .await;
    // 1.5 s of ticks, one of each symbol every 5 ms.
    let started = Instant::now();
    let mut seq = 1;
    while started.elapsed() < Duration::from_millis(1500) {
        seq += 1;
        for sym in paced.iter().chain(&["AAPL"]) {
            run.node.bus.publish(tick(sym, "p", seq)).unwrap();
        }
        if seq == 150 {
            publish(&run, late, "p", 1..=1);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    sub.wait_for("the newest ticks", |p| {
        let l = p.json();
        paced
            .iter()
            .all(|s| paced_of(&l, s).last().is_some_and(|(q, _)| *q == seq))
    })
    .await;
    sub.sigterm();
    assert!(sub.exit(WAIT).await.success(), "{}", sub.err());
    let lines = sub.json();
    let subscribed = lines.iter().find(|v| v["type"] == "subscribed").unwrap();
    assert_eq!(
        subscribed["patterns"],
        serde_json::json!(["BTC-*"]),
        "{subscribed}"
    );
    assert_eq!(subscribed["throttle_ms"], 200, "{subscribed}");
    assert!(
        !lines.iter().any(|v| v["symbol"] == "AAPL"),
        "AAPL is not matched"
    );
    for sym in &paced {
        let ticks = paced_of(&lines, sym);
        // At most one per 200 ms (and one for the edge of each end).
        let most = elapsed.as_millis() as usize / 200 + 2;
        assert!(
            (2..=most).contains(&ticks.len()),
            "{sym}: {} ticks in {elapsed:?}",
            ticks.len()
        );
        // Every seq accounted for: the snapshot's, then each tick's skipped.
        let mut prev = 1;
        for (q, skipped) in &ticks {
            assert_eq!(Some(q - prev - 1), *skipped, "{sym}: {ticks:?}");
            prev = *q;
        }
    }
    let joined: Vec<&Value> = lines.iter().filter(|v| v["symbol"] == late).collect();
    assert_eq!(
        joined.first().map(|v| &v["type"]),
        Some(&"snapshot".into()),
        "a symbol that gets its first value later joins with its snapshot: {joined:?}"
    );
    run.shutdown().await;
}

#[test]
fn subscribe_refuses_a_bad_pace_or_pattern() {
    for (args, says) in [
        (&["AAPL", "--throttle", "5ms"][..], "out of range"),
        (&["AAPL", "--throttle", "61s"][..], "out of range"),
        (&["AAPL", "--throttle", "10500us"][..], "whole number"),
        (&["BTC*USD"][..], "bad symbol"),
        (&["AAPL", "--backfill", "3"][..], "--candles"),
        (&["AAPL", "--candles", "2m"][..], "2m"),
        (
            &["AAPL", "--candles", "1m", "--backfill", "1001"][..],
            "1001",
        ),
        (&["AAPL", "--report-every", "10ms"][..], "at least 100ms"),
    ] {
        let out = Command::new(BIN)
            .args(["subscribe", "--url", "ws://127.0.0.1:9/v1/ws"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// `n` ticks of `symbol` four a second from `base` ns: their bars of one second (start,
/// open, high, low, close, volume, ticks), as the contract makes them.
fn quarter_second_ticks(symbol: &str, base: u64, n: u64) -> (Vec<Tick>, Vec<Value>) {
    let ticks: Vec<Tick> = (1..=n)
        .map(|seq| {
            let mut t = tick(symbol, "c", seq);
            t.ts = base + (seq - 1) * 250_000_000;
            t
        })
        .collect();
    let mut bars: Vec<Value> = Vec::new();
    for group in ticks.chunk_by(|a, b| a.ts / 1_000_000_000 == b.ts / 1_000_000_000) {
        let lasts: Vec<f64> = group.iter().map(|t| t.last).collect();
        bars.push(serde_json::json!({
            "start": group[0].ts / 1_000_000_000 * 1_000_000_000,
            "open": lasts[0],
            "high": lasts.iter().cloned().fold(f64::MIN, f64::max),
            "low": lasts.iter().cloned().fold(f64::MAX, f64::min),
            "close": lasts[lasts.len() - 1],
            // Volume rises by 10 a tick (the first tick's own 10 included).
            "volume": 10 * group.len() as u64,
            "ticks": group.len() as u64,
        }));
    }
    (ticks, bars)
}

/// A node that has AAPL ticks of six whole seconds of ten seconds ago: the start of
/// the first second, and the bars the ticks make.
async fn node_with_six_bars() -> (tickstream::server::Running, u64, Vec<Value>) {
    let run = start(settings()).await;
    let base = (tickstream::tick::now_ns() / 1_000_000_000 - 10) * 1_000_000_000;
    let (ticks, bars) = quarter_second_ticks("AAPL", base, 24);
    for t in &ticks {
        run.node.bus.publish(t.clone()).unwrap();
    }
    (run, base, bars)
}

/// A bar of a `candles` or `candle` line without its `closed`.
fn bar_fields(b: &Value) -> Value {
    let mut b = b.clone();
    let o = b.as_object_mut().unwrap();
    for k in ["type", "symbol", "interval", "closed"] {
        o.remove(k);
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_candles_prints_backfill_then_bars_as_ndjson_when_piped() {
    let (run, base, bars) = node_with_six_bars().await;
    let mut sub = Proc::spawn(&[
        "subscribe",
        "--url",
        &ws_url(run.addr),
        "AAPL",
        "--candles",
        "1s",
        "--backfill",
        "3",
    ]);
    sub.wait_for("the backfill", |p| {
        p.json().iter().any(|v| v["type"] == "candles")
    })
    .await;
    // A tick of the second after: the last bar closes.
    let mut next = tick("AAPL", "c", 25);
    next.ts = base + 6_000_000_000;
    run.node.bus.publish(next).unwrap();
    sub.wait_for("the last bar closed", |p| {
        p.json()
            .iter()
            .any(|v| v["type"] == "candle" && v["closed"] == true && v["start"] == bars[5]["start"])
    })
    .await;
    sub.sigterm();
    assert!(sub.exit(WAIT).await.success(), "{}", sub.err());
    let lines = sub.json();
    let first = lines.iter().find(|v| v["type"] == "candles").unwrap();
    assert_eq!(
        (&first["symbol"], &first["interval"]),
        (&"AAPL".into(), &"1s".into())
    );
    let got: Vec<Value> = first["bars"].as_array().unwrap().to_vec();
    let closed: Vec<Value> = got
        .iter()
        .filter(|b| b["closed"] == true)
        .map(bar_fields)
        .collect();
    assert_eq!(
        closed,
        bars[2..5].to_vec(),
        "the three newest closed bars: {first}"
    );
    let forming: Vec<Value> = got
        .iter()
        .filter(|b| b["closed"] == false)
        .map(bar_fields)
        .collect();
    assert_eq!(
        forming,
        vec![bars[5].clone()],
        "then the forming bar: {first}"
    );
    let closing: Vec<&Value> = lines
        .iter()
        .filter(|v| v["type"] == "candle" && v["closed"] == true)
        .collect();
    assert_eq!(closing.len(), 1, "the bar closes once: {closing:?}");
    assert_eq!(bar_fields(closing[0]), bars[5]);
    assert!(
        !lines.iter().any(|v| v["type"] == "tick"),
        "bars, not ticks"
    );
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_candles_draws_a_table_of_bars_in_a_terminal() {
    let (run, _, _) = node_with_six_bars().await;
    let cmd = format!(
        "stty cols 160 rows 30; exec {BIN} subscribe --url {} AAPL --candles 1s --backfill 5 --duration 30s",
        ws_url(run.addr)
    );
    let table = Proc::spawn_program("script", &["-qfec", &cmd, "/dev/null"]);
    let screen = |p: &Proc| p.out().join("\n");
    // The header, five closed bars of four ticks each and the forming one.
    let row = |s: &str, state: &str| {
        s.lines()
            .filter(|l| l.contains("AAPL ") && l.contains(" 1s ") && l.ends_with(state))
            .count()
    };
    table
        .wait_for("the table of bars", |p| {
            let s = screen(p);
            s.contains("SYMBOL")
                && s.contains("OPEN")
                && row(&s, "4  closed") >= 5
                && row(&s, "4  forming") >= 1
        })
        .await;
    assert!(!screen(&table).contains("BID"), "{}", screen(&table));
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_reports_its_latency_to_the_node() {
    let run = start(settings()).await;
    let reports = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("tickstream_client_latency_reports_total "))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    let before = reports(&http_get(run.addr, "/metrics").await.1);
    let mut sub = Proc::spawn(&[
        "subscribe",
        "--url",
        &ws_url(run.addr),
        "AAPL",
        "--report-every",
        "300ms",
    ]);
    eventually("the subscription", || {
        run.node.hub.subscriber_count("AAPL") == 1
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 0;
    let mut now = before;
    while now < before + 2 {
        assert!(Instant::now() < deadline, "no reports reached the node");
        seq += 1;
        run.node.bus.publish(tick("AAPL", "r", seq)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = reports(&http_get(run.addr, "/metrics").await.1);
    }
    sub.sigterm();
    assert!(sub.exit(WAIT).await.success(), "{}", sub.err());
    let lines = sub.json();
    assert!(
        !lines.iter().any(|v| v["type"] == "reported"),
        "the node's answers are the client's own"
    );
    // A subscriber that never reports.
    let quiet = Proc::spawn(&[
        "subscribe",
        "--url",
        &ws_url(run.addr),
        "MSFT",
        "--report-every",
        "0",
    ]);
    eventually("the quiet subscription", || {
        run.node.hub.subscriber_count("MSFT") == 1
    })
    .await;
    let then = reports(&http_get(run.addr, "/metrics").await.1);
    for seq in 1..=30 {
        run.node.bus.publish(tick("MSFT", "r", seq)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reports(&http_get(run.addr, "/metrics").await.1), then);
    drop(quiet);
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_moves_on_a_planned_reconnect_printing_each_tick_once() {
    let run = start(settings()).await;
    let relay = relay::Relay::start(run.addr).await;
    let urls = format!("ws://{}/v1/ws,{}", relay.addr, ws_url(run.addr));
    let mut sub = Proc::spawn(&["subscribe", "--url", &urls, "AAPL", "--json"]);
    eventually("the subscription", || {
        run.node.hub.subscriber_count("AAPL") == 1
    })
    .await;
    let mut seq = 0;
    publish_until(&run, &sub, &mut seq, |p| {
        ticks_of(&p.json(), "AAPL").len() >= 50
    })
    .await;
    relay.announce();
    publish_until(&run, &sub, &mut seq, |p| p.err().contains("moved to")).await;
    let at = seq;
    let mut n = 0;
    publish_until(&run, &sub, &mut seq, |_| {
        n += 1;
        n > 100
    })
    .await;
    let last = seq;
    assert!(last > at);
    sub.wait_for("the last tick", |p| has_tick(p, "AAPL", "mv", last))
        .await;
    sub.sigterm();
    assert!(sub.exit(WAIT).await.success(), "{}", sub.err());
    let err = sub.err();
    assert!(
        err.contains("moving: ") && err.contains("(lifetime)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("moved to {}", ws_url(run.addr))),
        "{err}"
    );
    assert!(
        !err.contains("disconnected") && !err.contains("missing"),
        "{err}"
    );
    let got: Vec<u64> = ticks_of(&sub.json(), "AAPL")
        .iter()
        .map(|(_, q)| *q)
        .collect();
    assert_eq!(
        got,
        (got[0]..=last).collect::<Vec<_>>(),
        "each seq once, in order"
    );
    run.shutdown().await;
}

/// Publishes AAPL ticks of epoch `mv`, one every 2 ms from `seq` + 1, until `done`.
async fn publish_until(
    run: &tickstream::server::Running,
    sub: &Proc,
    seq: &mut u64,
    mut done: impl FnMut(&Proc) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(sub) {
        assert!(Instant::now() < deadline, "stderr:\n{}", sub.err());
        *seq += 1;
        run.node.bus.publish(tick("AAPL", "mv", *seq)).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The book of `symbol` rebuilt from the NDJSON lines printed, with the tests' own code
/// (which checks `prev_seq` and the checksum at every message).
fn rebuilt(p: &Proc, symbol: &str, decimals: usize) -> book_client::Mirror {
    let mut m = book_client::Mirror::new(decimals);
    for line in p.out() {
        let v: Value = serde_json::from_str(&line).unwrap();
        if (v["type"] == "book" || v["type"] == "book_update") && v["symbol"] == symbol {
            m.apply(&v, &line);
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_book_piped_prints_ndjson_that_rebuilds_the_book() {
    use tickstream::book::Side;
    let run = start(settings()).await;
    let mut g =
        tickstream::feed::Generator::new(&book_client::universe(), 9, "e1".into()).with_books();
    let mut feed = |n: u64| {
        let ticks = g.batch(n);
        run.node.bus.publish_books(g.take_books()).unwrap();
        run.node.bus.publish_batch(ticks).unwrap();
    };
    feed(20);
    let url = ws_url(run.addr);
    let procs = [
        Proc::spawn(&["subscribe", "--book", "EUR/USD", "--url", &url]),
        Proc::spawn(&[
            "subscribe",
            "--book",
            "EUR/USD",
            "--depth",
            "50",
            "--encoding",
            "binary",
            "--url",
            &url,
        ]),
    ];
    for p in &procs {
        p.wait_for("the first book", |p| {
            p.out().iter().any(|l| l.contains("\"type\":\"book\""))
        })
        .await;
    }
    for _ in 0..50 {
        feed(20);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_, levels) = g.book("EUR/USD").unwrap();
    let levels = levels.clone();
    for (p, depth) in procs.iter().zip([10, 50]) {
        p.wait_for("the feed's book", |p| {
            let m = rebuilt(p, "EUR/USD", 5);
            Side::BOTH
                .iter()
                .all(|&s| m.levels(s) == levels.top(s, depth))
        })
        .await;
        let m = rebuilt(p, "EUR/USD", 5);
        m.assert_window(&levels, depth, "printed");
        assert!(m.messages > 20, "{} messages", m.messages);
        // Prices as the node writes them: 5 decimals for EUR/USD, checked by the mirror.
        assert!(!p.err().contains("mismatch"), "{}", p.err());
    }
    run.shutdown().await;
}

#[test]
fn subscribe_book_refuses_what_it_cannot_show() {
    for (args, want) in [
        (
            &["subscribe", "--book", "AAPL", "--depth", "20"][..],
            "depth 20 is not served: 10 or 50",
        ),
        (
            &["subscribe", "--book", "AAPL", "MSFT"][..],
            "cannot be used with",
        ),
        (&["subscribe", "--book", "aapl"][..], "--book \"aapl\""),
        (&["subscribe", "--depth", "50", "AAPL"][..], "--book"),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_book_draws_a_ladder_in_a_terminal_with_the_best_levels_highlighted() {
    use tickstream::book::{BookMsg, Level};
    let run = start(settings()).await;
    let msg = |seq: u64, prev: Option<u64>, bids: &[(u64, u64)], asks: &[(u64, u64)]| BookMsg {
        symbol: "AAPL".into(),
        epoch: "e1".into(),
        seq,
        prev_seq: prev,
        ts: seq,
        bids: bids.iter().map(|&(p, s)| Level::new(p, s)).collect(),
        asks: asks.iter().map(|&(p, s)| Level::new(p, s)).collect(),
        checksum: None,
    };
    run.node
        .bus
        .publish_books(vec![msg(
            1,
            None,
            &[(10_000, 300), (9_999, 100)],
            &[(10_002, 200), (10_005, 500)],
        )])
        .unwrap();
    // A terminal of 120 columns, made by script(1).
    let cmd = format!(
        "stty cols 120 rows 30; exec {BIN} subscribe --url {} --book AAPL --duration 30s",
        ws_url(run.addr)
    );
    let ladder = Proc::spawn_program("script", &["-qfec", &cmd, "/dev/null"]);
    let screen = |p: &Proc| p.out().join("\n");
    ladder
        .wait_for("the ladder", |p| {
            screen(p).contains("spread 0.02 (2 ticks)")
        })
        .await;
    let s = screen(&ladder);
    // Asks above, worst first; the spread; bids below, best first.
    let at = |what: &str| s.find(what).unwrap_or_else(|| panic!("{what}: {s}"));
    assert!(at("100.05") < at("100.02") && at("100.02") < at("spread"));
    assert!(at("spread") < at("100.00") && at("100.00") < at("99.99"));
    let row = |price: &str| -> Vec<String> {
        let line = s.lines().find(|l| l.contains(price)).unwrap();
        let clean = line.rsplit('m').next().unwrap_or(line);
        clean.split_whitespace().map(str::to_owned).collect()
    };
    // Price, size, and the size summed from the best level.
    assert_eq!(row("100.05")[1..], ["100.05", "500", "700"]);
    assert_eq!(row("99.99")[1..], ["99.99", "100", "400"]);
    // The best levels are highlighted (bold), the others not.
    let bold = |price: &str| {
        s.split("\x1b[1m")
            .skip(1)
            .any(|seg| seg.split('\n').next().unwrap().contains(price))
    };
    assert!(bold("100.02") && bold("100.00"), "{s:?}");
    assert!(!bold("100.05") && !bold("99.99"), "{s:?}");
    // An update redraws it in place.
    run.node
        .bus
        .publish_books(vec![msg(2, Some(1), &[(10_001, 50)], &[])])
        .unwrap();
    ladder
        .wait_for("the update", |p| {
            let s = screen(p);
            s.contains("spread 0.01 (1 ticks)") && s.contains("book seq 2")
        })
        .await;
    assert!(screen(&ladder).contains("mismatches 0"));
    run.shutdown().await;
}
