//! The real binary: starts with a synthetic feed, serves ticks, and on SIGTERM closes its
//! clients with 1001 and exits 0 within the drain time.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Starts `tickstream serve` on a free port; returns the child and its address.
fn spawn_server(extra: &[&str]) -> (Child, SocketAddr) {
    spawn_server_with(extra, &[])
}

/// Like [`spawn_server`], with extra environment variables.
fn spawn_server_with(extra: &[&str], env: &[(&str, &str)]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log", "info"])
        .args(extra)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_zero() {
    let (mut child, addr) = spawn_server(&["--rate", "2000", "--seed", "7", "--drain", "3s"]);
    let mut clients = Vec::new();
    for _ in 0..5 {
        let (mut c, _) = Client::ready(addr).await;
        c.send(r#"{"op":"subscribe","symbols":["AAPL","MSFT","NVDA","TSLA","SPY"]}"#)
            .await;
        c.until("tick").await;
        clients.push(c);
    }
    let t0 = Instant::now();
    sigterm(&child);
    for c in &mut clients {
        assert_eq!(c.closed(Duration::from_secs(5)).await, Some(1001));
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "not exited within the drain time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn the_synthetic_feed_streams_continuous_seqs() {
    let (mut child, addr) = spawn_server(&["--rate", "5000"]);
    let (mut c, _) = Client::ready(addr).await;
    c.send(r#"{"op":"subscribe","symbols":["AAPL","NVDA","EUR/USD","BTC-USD"]}"#)
        .await;
    let mut next = std::collections::HashMap::<String, u64>::new();
    let mut ticks = 0;
    while ticks < 300 {
        let m = c.next().await;
        let sym = m["symbol"].as_str().map(str::to_owned);
        match (m["type"].as_str(), sym) {
            (Some("snapshot"), Some(s)) => {
                next.insert(s, m["seq"].as_u64().unwrap() + 1);
            }
            (Some("tick"), Some(s)) => {
                let seq = m["seq"].as_u64().unwrap();
                if let Some(want) = next.get(&s) {
                    assert_eq!(seq, *want, "{s}");
                }
                assert!(m["bid"].as_f64().unwrap() < m["ask"].as_f64().unwrap());
                next.insert(s, seq + 1);
                ticks += 1;
            }
            _ => {}
        }
    }
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_public_address_without_tls_is_refused_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-plaintext-public"), "{err}");
}

/// Reads the `welcome` of a binary started with `args` and `env`, then stops it.
async fn welcome_of(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut all = vec!["--feed", "none"];
    all.extend_from_slice(args);
    let (child, addr) = spawn_server_with(&all, env);
    let (_c, w) = Client::ready(addr).await;
    sigterm(&child);
    let mut child = child;
    assert!(child.wait().unwrap().success());
    w
}

#[tokio::test]
async fn flags_beat_environment_beat_file_beat_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "max_symbols = 7\nrate_limit = 9\nmax_msg_bytes = 2048\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let w = welcome_of(
        &["--config", file, "--max-symbols", "5"],
        &[
            ("TICKSTREAM_MAX_SYMBOLS", "6"),
            ("TICKSTREAM_RATE_LIMIT", "8"),
        ],
    )
    .await;
    let limits = &w["limits"];
    assert_eq!(limits["max_symbols"], 5, "flag over environment");
    assert_eq!(limits["rate_per_s"], 8, "environment over file");
    assert_eq!(limits["max_msg_bytes"], 2048, "file over default");
    let w = welcome_of(&[], &[]).await;
    assert_eq!(w["limits"]["max_symbols"], 1024, "default");
}
