//! The publisher endpoint `/v1/publish` and `tickstream feed synth --to`, on real sockets.

mod common;
mod feedkit;

use std::sync::atomic::Ordering;

use common::*;
use feedkit::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn good(symbol: &str, seq: u64) -> Value {
    json!({"type":"tick","symbol":symbol,"epoch":"pub1","seq":seq,"ts":1_764_284_400_000_000_000u64 + seq,
           "bid":10.0,"ask":10.02,"bid_size":100,"ask_size":200,"last":10.01,"last_size":5,"volume":seq * 5})
}

fn without(mut v: Value, field: &str) -> Value {
    v.as_object_mut().unwrap().remove(field);
    v
}

fn with(mut v: Value, field: &str, value: Value) -> Value {
    v[field] = value;
    v
}

/// Sends one frame and returns the reply frame's messages.
async fn exchange(p: &mut Client, frame: &Value) -> Vec<Value> {
    p.send(&frame.to_string()).await;
    let mut msgs = Vec::new();
    loop {
        let m = p.next().await;
        let done = m["type"] == "published";
        msgs.push(m);
        if done {
            return msgs;
        }
    }
}

#[tokio::test]
async fn bad_ticks_are_refused_one_by_one_and_good_ones_forwarded() {
    let run = start(settings()).await;
    let mut sub = subscriber(run.addr, &["AAPL", "MSFT"]).await;
    let (mut p, _) = publisher(run.addr).await;

    let frame = json!([
        good("AAPL", 1),
        without(good("AAPL", 2), "bid"),
        with(good("AAPL", 2), "bid_size", json!("lots")),
        with(good("AAPL", 2), "bid", json!(10.5)),
        good("AAPL", 1),
        good("ZZZZ9", 1),
        good("aapl", 2),
        with(good("AAPL", 2), "ask", json!(-1)),
        json!(42),
        good("AAPL", 2),
    ]);
    let reply = exchange(&mut p, &frame).await;
    let ack = reply.last().unwrap();
    assert_eq!(ack, &json!({"type":"published","accepted":2,"refused":8}));
    let errors = &reply[..reply.len() - 1];
    let expect = [
        (1, "bad_tick", "missing field bid"),
        (2, "bad_tick", "bid_size must be a non-negative integer"),
        (3, "bad_tick", "bid 10.5 is above ask 10.02"),
        (4, "bad_tick", "seq 1 is not above 1"),
        (5, "unknown_symbol", "ZZZZ9 is not served here"),
        (6, "bad_symbol", "malformed symbol \"aapl\""),
        (7, "bad_tick", "ask must be a positive number"),
        (8, "bad_tick", "not a JSON object"),
    ];
    assert_eq!(errors.len(), expect.len(), "{reply:?}");
    for (e, (index, code, text)) in errors.iter().zip(expect) {
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["index"], index, "{e}");
        assert_eq!(e["code"], code, "{e}");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("tick {index}")), "{msg}");
        assert!(msg.contains(text), "{msg}");
    }
    assert_eq!(errors[0]["symbol"], "AAPL");
    assert_eq!(errors[0]["seq"], 2);
    assert!(errors[3]["message"]
        .as_str()
        .unwrap()
        .contains("AAPL seq 1"));
    assert_eq!(run.node.publish.refused.load(Ordering::Relaxed), 8);
    assert_eq!(run.node.publish.accepted.load(Ordering::Relaxed), 2);

    // Only the good ticks reached the subscriber.
    let got = collect_ticks(&mut sub, 2, SHORT).await;
    assert_eq!(got[0]["seq"], 1);
    assert_eq!(got[1]["seq"], 2);
    assert_eq!(got[1]["bid"], 10.0);
    quiet(&mut sub).await;

    // The connection survived: a frame that is not JSON, then a single tick object
    // without `type` or `epoch` (the connection's own epoch is used).
    p.send("this is not json").await;
    let e = p.next().await;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert_eq!(p.next().await["type"], "published");
    p.send_msg(Message::binary(b"\x01\x02".to_vec())).await;
    let e = p.next().await;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert_eq!(
        p.next().await,
        json!({"type":"published","accepted":0,"refused":0})
    );
    let pings_ok = exchange(&mut p, &good("AAPL", 3)).await;
    assert_eq!(pings_ok.last().unwrap()["accepted"], 1);
    let t = sub.next().await;
    assert_eq!(t["seq"], 3);
    let reply = exchange(&mut p, &without(without(good("MSFT", 7), "type"), "epoch")).await;
    assert_eq!(
        reply,
        vec![json!({"type":"published","accepted":1,"refused":0})]
    );
    let t = sub.next().await;
    assert_eq!(
        (t["symbol"].as_str(), t["seq"].as_u64()),
        (Some("MSFT"), Some(7))
    );
    assert!(t["epoch"]
        .as_str()
        .is_some_and(|e| !e.is_empty() && e != "pub1"));
    quiet(&mut sub).await;
    run.shutdown().await;
}

#[tokio::test]
async fn publisher_limits_are_its_own() {
    let mut s = settings();
    s.max_msg_bytes = 256;
    s.publish_max_msg_bytes = 8192;
    let run = start(s).await;
    let (mut p, w) = publisher(run.addr).await;
    assert_eq!(w["limits"]["max_msg_bytes"], 8192, "{w}");
    // Far above the subscriber limit, within the publisher's.
    let frame = Value::Array((1..=20).map(|s| good("AAPL", s)).collect());
    assert!(frame.to_string().len() > 2048);
    let reply = exchange(&mut p, &frame).await;
    assert_eq!(reply.last().unwrap()["accepted"], 20);
    // Above the publisher's: closed with 1009.
    let big = Value::Array((21..=80).map(|s| good("AAPL", s)).collect());
    p.send_msg(Message::text(big.to_string())).await;
    assert_eq!(p.closed(SHORT).await, Some(1009));
    assert_eq!(run.node.hub.latest("AAPL").unwrap().tick.seq, 20);
    run.shutdown().await;
}

#[tokio::test]
async fn plain_get_on_the_publisher_path_is_told_to_upgrade() {
    let run = start(settings()).await;
    let (status, body) = http_get(run.addr, "/v1/publish").await;
    assert_eq!(status, 426);
    assert!(body.contains("WebSocket"), "{body}");
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_synth_to_a_node_reaches_a_subscriber() {
    let run = start(settings()).await;
    let mut sub = subscriber(run.addr, &["AAPL", "EUR/USD"]).await;
    let out = spawn_bin(
        [
            "feed",
            "synth",
            "--to",
            &publish_url(run.addr),
            "--symbols",
            "AAPL",
            "EUR/USD",
            "--rate",
            "300",
            "--duration",
            "1s",
            "--seed",
            "9",
        ]
        .map(String::from)
        .to_vec(),
        LONG,
    )
    .await
    .unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("published 300 ticks over 2 symbols"),
        "{stdout}"
    );
    assert!(stdout.contains("300 accepted, 0 refused"), "{stdout}");
    let got = collect_ticks(&mut sub, 300, SHORT).await;
    let mut next = std::collections::HashMap::new();
    for m in &got {
        let seq = next
            .entry(m["symbol"].as_str().unwrap().to_owned())
            .or_insert(1);
        assert_eq!(m["seq"].as_u64(), Some(*seq), "{m}");
        *seq += 1;
    }
    assert_eq!(next.len(), 2);
    quiet(&mut sub).await;
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synth_out_writes_a_recording_that_replays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.ndjson.zst");
    let out = run_bin(
        &[
            "feed",
            "synth",
            "--out",
            path.to_str().unwrap(),
            "--symbols",
            "BTC-USD,ETH-USD",
            "--rate",
            "200",
            "--duration",
            "500ms",
            "--seed",
            "3",
        ],
        LONG,
    );
    assert!(out.status.success(), "{:?}", texts(&out));
    let ticks = read_ticks(&path);
    assert_eq!(ticks.len(), 100);
    assert!(ticks
        .iter()
        .all(|t| matches!(&*t.symbol, "BTC-USD" | "ETH-USD") && t.bid <= t.ask));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replay_keeps_its_publisher_connection_alive() {
    // The node closes connections silent for 600 ms; the ticks are 1.5 s apart.
    let mut s = settings();
    s.heartbeat = std::time::Duration::from_millis(300);
    s.heartbeat_grace = std::time::Duration::from_millis(300);
    let run = start(s).await;
    let (_, w) = publisher(run.addr).await;
    assert_eq!(w["idle_timeout_ms"], 600);
    let dir = tempfile::tempdir().unwrap();
    let path = write_recording(dir.path(), "slow.ndjson", &spaced("AAPL", 2, 1500));
    let out = spawn_bin(
        [
            "feed",
            "replay",
            path.to_str().unwrap(),
            "--to",
            &publish_url(run.addr),
        ]
        .map(String::from)
        .to_vec(),
        LONG,
    )
    .await
    .unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("2 accepted, 0 refused"), "{stdout}");
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_whose_node_goes_away_fails_with_the_reason() {
    let run = start(settings()).await;
    let cli = spawn_bin(
        [
            "feed",
            "synth",
            "--to",
            &publish_url(run.addr),
            "--rate",
            "500",
        ]
        .map(String::from)
        .to_vec(),
        LONG,
    );
    let node = run.node.clone();
    eventually("the feed is publishing", || {
        node.publish.accepted.load(Ordering::Relaxed) > 0
    })
    .await;
    run.shutdown().await;
    let out = cli.await.unwrap();
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("1001 server shutting down"), "{stderr}");
}
