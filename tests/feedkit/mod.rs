//! Helpers of the feed tests: the real `tickstream` binary, recordings, and a subscriber
//! that collects ticks.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::{Client, WAIT};
use tickstream::feed::recording::{Reader, Writer};
use tickstream::tick::Tick;

/// The shipped sample session.
pub fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/sample.ndjson.zst")
}

/// Every tick of a recording, in file order.
pub fn read_ticks(path: &Path) -> Vec<Tick> {
    Reader::open(path)
        .unwrap()
        .map(|r| r.expect("a good recording").1)
        .collect()
}

/// Writes `ticks` as a recording at `dir/name`.
pub fn write_recording(dir: &Path, name: &str, ticks: &[Tick]) -> PathBuf {
    let path = dir.join(name);
    let mut w = Writer::create(&path, "test").unwrap();
    for t in ticks {
        w.write_tick(t).unwrap();
    }
    w.finish().unwrap();
    path
}

/// `n` ticks of `symbol`, `gap_ms` apart in recorded time.
pub fn spaced(symbol: &str, n: u64, gap_ms: u64) -> Vec<Tick> {
    (1..=n)
        .map(|seq| {
            let mut t = super::common::tick(symbol, "rec", seq);
            t.ts = 1_700_000_000_000_000_000 + (seq - 1) * gap_ms * 1_000_000;
            t
        })
        .collect()
}

/// The publisher URL of a node.
pub fn publish_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/v1/publish")
}

/// Runs the real binary with `args`, killing it after `limit`.
pub fn run_bin(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "tickstream {args:?} still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the binary on a blocking thread, so the test's server and clients keep going.
pub fn spawn_bin(args: Vec<String>, limit: Duration) -> tokio::task::JoinHandle<Output> {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_bin(&refs, limit)
    })
}

/// stdout and stderr of a finished run, for assertion messages.
pub fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A publisher connection to `/v1/publish`, past its `welcome`.
pub async fn publisher(addr: SocketAddr) -> (Client, Value) {
    let mut c = Client::connect_path(addr, "/v1/publish").await;
    let w = c.next().await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["role"], "publisher", "{w}");
    (c, w)
}

/// A subscriber to `symbols` without snapshots; returns once subscribed.
pub async fn subscriber(addr: SocketAddr, symbols: &[&str]) -> Client {
    let (mut c, _) = Client::ready(addr).await;
    let cmd = serde_json::json!({"op":"subscribe","symbols":symbols,"snapshot":false});
    c.send(&cmd.to_string()).await;
    let m = c.next().await;
    assert_eq!(m["type"], "subscribed", "{m}");
    c
}

/// Collects `n` tick messages (failing on any other message type, or on a wait longer
/// than `idle` between two of them).
pub async fn collect_ticks(c: &mut Client, n: usize, idle: Duration) -> Vec<Value> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let Some(m) = c.try_next(idle).await else {
            panic!("only {} of {n} ticks arrived", got.len());
        };
        assert_eq!(m["type"], "tick", "{m}");
        got.push(m);
    }
    got
}

/// (symbol, seq, bid, ask, last) of a tick message.
pub fn key_of(m: &Value) -> (String, u64, f64, f64, f64) {
    (
        m["symbol"].as_str().unwrap().to_owned(),
        m["seq"].as_u64().unwrap(),
        m["bid"].as_f64().unwrap(),
        m["ask"].as_f64().unwrap(),
        m["last"].as_f64().unwrap(),
    )
}

/// (symbol, seq, bid, ask, last) of a recorded tick.
pub fn key_of_tick(t: &Tick) -> (String, u64, f64, f64, f64) {
    (t.symbol.to_string(), t.seq, t.bid, t.ask, t.last)
}

/// No more ticks arrive within a short while: only the `status` stale (reason `feed`)
/// that says the feed ended; returns those symbols.
pub async fn quiet(c: &mut Client) -> Vec<String> {
    let mut stale = Vec::new();
    while let Some(m) = c.try_next(Duration::from_millis(300)).await {
        let feed_ended = m["type"] == "status" && m["state"] == "stale" && m["reason"] == "feed";
        assert!(feed_ended, "unexpected message: {m}");
        stale.push(m["symbol"].as_str().unwrap().to_owned());
    }
    stale
}

/// The default wait, re-exported for callers.
pub const LONG: Duration = Duration::from_secs(60);
pub const SHORT: Duration = WAIT;
