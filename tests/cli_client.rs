//! The real binary's `subscribe` and `feed record` against real nodes: a subscriber that
//! outlives a server restart, recordings that hold exactly what the server sent, and
//! exit codes.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
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
        let mut child = Command::new(BIN)
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
