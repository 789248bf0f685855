//! `encoding=binary` end to end: the documented record byte for byte, a node on loopback
//! serving a binary and a JSON subscriber of the same symbol, the Rust client and
//! `tickstream subscribe` decoding binary frames, and a symbol's `status` reaching the
//! Rust client on binary and JSON sessions alike.

mod common;
#[path = "common/redis.rs"]
mod env;

use std::process::Command;

use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use tickstream::bus::{RedisConfig, RedisPublisher};
use tickstream::client::{
    Client as RustClient, ClientConfig, Event, Health, ServerMessage, StaleReason, Subscription,
    SymbolState, TickMessage,
};
use tickstream::protocol::binary::{self, Record};
use tickstream::protocol::{Channel, Encoding};
use tickstream::tick::{Kind, Tick};

/// The tick of the protocol document's examples.
fn documented_tick() -> Tick {
    Tick::example()
}

/// The bytes of the hex dump that follows `<!-- {marker} -->` in docs/protocol.md.
fn documented_bytes(marker: &str) -> Vec<u8> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md"))
        .expect("docs/protocol.md");
    let at = doc
        .find(&format!("<!-- {marker} -->"))
        .expect("the example's marker");
    let block = doc[at..]
        .split("```")
        .nth(1)
        .expect("a fenced block after it");
    let mut out = Vec::new();
    for (i, line) in block
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .enumerate()
    {
        let mut parts = line.split_whitespace();
        let offset = usize::from_str_radix(parts.next().unwrap(), 16).unwrap();
        assert_eq!(offset, i * 16, "offset column of {line:?}");
        for h in parts {
            assert_eq!(h.len(), 2, "{line:?}");
            out.push(u8::from_str_radix(h, 16).unwrap());
        }
    }
    out
}

#[test]
fn the_documented_example_is_what_the_encoder_makes() {
    let doc = documented_bytes("binary-example");
    assert_eq!(doc.len(), 96);
    let t = documented_tick();
    assert_eq!(binary::encode(&t, Kind::Tick).unwrap(), doc);
    let recs = binary::decode(&doc).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].kind, Kind::Tick);
    assert_eq!(recs[0].tick(), t);
    assert_eq!(recs[0].skipped, None);
}

#[test]
fn the_documented_paced_example_is_what_the_encoder_makes() {
    let doc = documented_bytes("binary-example-paced");
    assert_eq!(doc.len(), 104);
    let t = documented_tick();
    let plain = binary::encode(&t, Kind::Tick).unwrap();
    assert_eq!(binary::with_skipped(&plain, 4), doc);
    let recs = binary::decode(&doc).unwrap();
    assert_eq!((recs[0].tick(), recs[0].skipped), (t, Some(4)));
    // A reader of the v1 layout, going by `len`, finds the next record after it.
    let mut frame = doc.clone();
    frame.extend_from_slice(&plain);
    let seqs: Vec<_> = binary::records(&frame).map(|r| r.unwrap().seq).collect();
    assert_eq!(seqs, [1043, 1043]);
}

#[test]
fn the_documented_book_example_is_what_the_encoder_makes() {
    use tickstream::book::{Level, Spec};
    use tickstream::protocol::binary::book::{write, BookHead};
    let doc = documented_bytes("binary-example-book");
    assert_eq!(doc.len(), 98);
    let head = BookHead {
        symbol: "AAPL",
        epoch: "k3v9q1",
        spec: Spec::new(2),
        seq: 1044,
        prev_seq: Some(1043),
        ts: 1_764_284_400_124_456_789,
        checksum: 3_732_196_271,
    };
    let bids = [Level::new(18910, 0), Level::new(18908, 400)];
    let asks = [Level::new(18913, 100)];
    let mut rec = Vec::new();
    write(&head, &bids, &asks, &mut rec).unwrap();
    assert_eq!(rec, doc);
    let got = binary::decode_any(&doc).unwrap();
    let binary::AnyRecord::Book(b) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(
        (b.seq, b.prev_seq, b.ts, b.checksum),
        (1044, Some(1043), head.ts, head.checksum)
    );
    assert_eq!(
        (b.bids.as_slice(), b.asks.as_slice(), b.spec),
        (&bids[..], &asks[..], head.spec)
    );
}

/// Connects to `/v1/ws` with `query` and returns the socket and the welcome.
async fn connect(addr: std::net::SocketAddr, query: &str) -> (Ws, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws{query}"))
        .await
        .expect("websocket connects");
    let welcome = match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Value>(&t).unwrap()[0].clone(),
        other => panic!("no welcome: {other:?}"),
    };
    (ws, welcome)
}

/// What a subscriber got: ticks and snapshots as (kind, tick), other messages as JSON.
#[derive(Debug, PartialEq)]
enum Got {
    Data(Kind, Tick),
    Control(Value),
}

/// Reads frames until `n` messages arrived; binary frames must hold only records,
/// text frames only JSON arrays.
async fn read(ws: &mut Ws, n: usize, binary_frames: &mut usize) -> Vec<Got> {
    let mut out = Vec::new();
    while out.len() < n {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages: {out:?}", out.len()))
            .expect("open")
            .expect("a frame");
        match msg {
            Message::Binary(b) => {
                *binary_frames += 1;
                for r in binary::decode(&b).expect("the server's records decode") {
                    out.push(Got::Data(r.kind, r.tick()));
                }
            }
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                for m in v.as_array().unwrap() {
                    let kind = match m["type"].as_str().unwrap() {
                        "tick" => Kind::Tick,
                        "snapshot" => Kind::Snapshot,
                        _ => {
                            out.push(Got::Control(m.clone()));
                            continue;
                        }
                    };
                    let t: Tick = serde_json::from_value(m.clone()).unwrap();
                    out.push(Got::Data(kind, t));
                }
            }
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn a_binary_and_a_json_subscriber_get_the_same_ticks_and_gaps() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=3);
    let (mut bin, w) = connect(run.addr, "?encoding=binary").await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["encoding"], "binary");
    let (mut json, w) = connect(run.addr, "?encoding=json").await;
    assert_eq!(w["encoding"], "json");
    let sub = r#"{"op":"subscribe","id":1,"symbols":["AAPL"]}"#;
    for ws in [&mut bin, &mut json] {
        futures_util::SinkExt::send(ws, Message::text(sub))
            .await
            .unwrap();
    }
    // subscribed, snapshot 3, ticks 4..=40, gap 41..=44 (the bus skipped them), 45..=60.
    let mut ready = (0, 0);
    let b = read(&mut bin, 2, &mut ready.0).await;
    let j = read(&mut json, 2, &mut ready.1).await;
    assert_eq!(b, j);
    assert!(
        matches!(&b[1], Got::Data(Kind::Snapshot, t) if t.seq == 3),
        "{b:?}"
    );
    publish(&run, "AAPL", "e1", 4..=40);
    publish(&run, "AAPL", "e1", 45..=60);
    let n = 37 + 1 + 16;
    let mut frames = (0, 0);
    let b = read(&mut bin, n, &mut frames.0).await;
    let j = read(&mut json, n, &mut frames.1).await;
    assert_eq!(
        b, j,
        "the two encodings carry the same messages in the same order"
    );
    assert!(frames.0 > 0, "ticks came in binary frames");
    assert_eq!(frames.1, 0, "no binary frame for a JSON subscriber");
    let seqs: Vec<u64> = b
        .iter()
        .filter_map(|g| match g {
            Got::Data(Kind::Tick, t) => Some(t.seq),
            _ => None,
        })
        .collect();
    let want: Vec<u64> = (4..=40).chain(45..=60).collect();
    assert_eq!(seqs, want);
    let gap_at = b
        .iter()
        .position(|g| matches!(g, Got::Control(v) if v["type"] == "gap"))
        .expect("a gap");
    assert_eq!(gap_at, 37, "the gap stays between ticks 40 and 45: {b:?}");
    let Got::Control(gap) = &b[gap_at] else {
        unreachable!()
    };
    assert_eq!(
        (gap["from"].as_u64(), gap["to"].as_u64()),
        (Some(41), Some(44))
    );
    // Every field survived: the same ticks the node holds.
    let Got::Data(_, last) = b.last().unwrap() else {
        panic!()
    };
    assert_eq!(&run.node.hub.latest("AAPL").unwrap().tick, last);
    run.shutdown().await;
}

#[tokio::test]
async fn an_unknown_encoding_is_refused_before_the_upgrade() {
    let run = start(settings()).await;
    let (status, body) = http_get(run.addr, "/v1/ws?encoding=xml").await;
    assert_eq!(status, 400);
    assert!(
        body.contains(r#"unknown encoding "xml": use json (the default) or binary"#),
        "{body}"
    );
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?encoding=msgpack", run.addr)).await;
    assert!(refused.is_err());
    // Nothing else changed: a binary client still connects.
    let (_ws, w) = connect(run.addr, "?encoding=binary").await;
    assert_eq!(w["encoding"], "binary");
    run.shutdown().await;
}

/// The first `n` tick and snapshot events of the Rust client for `encoding`, resuming
/// AAPL from `e1:1`.
async fn client_ticks(
    addr: std::net::SocketAddr,
    encoding: Encoding,
    n: usize,
) -> Vec<ServerMessage> {
    let mut c = RustClient::new(ClientConfig {
        urls: vec![format!("ws://{addr}/v1/ws")],
        symbols: vec!["AAPL".into(), "MSFT".into()],
        start_from: [("AAPL".to_string(), ("e1".to_string(), 1))].into(),
        encoding,
        ..ClientConfig::default()
    })
    .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let ev = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
        match ev {
            Event::Message(m @ (ServerMessage::Tick(_) | ServerMessage::Snapshot(_))) => {
                out.push(m)
            }
            Event::Message(ServerMessage::Welcome { encoding: e, .. }) => {
                assert_eq!(e, encoding.as_str())
            }
            Event::Hole { .. } | Event::Reset { .. } => panic!("{ev:?}"),
            _ => {}
        }
    }
    assert_eq!(c.counters().holes, 0);
    c.close().await;
    out
}

#[tokio::test]
async fn the_rust_client_decodes_binary_frames_into_the_same_events() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=20);
    publish(&run, "MSFT", "m1", 1..=1);
    // AAPL 2..=20 replayed, then the snapshot of MSFT.
    let json = client_ticks(run.addr, Encoding::Json, 20).await;
    let bin = client_ticks(run.addr, Encoding::Binary, 20).await;
    assert!(matches!(&json[18], ServerMessage::Tick(t) if t.seq == 20));
    assert_eq!(json, bin);
    assert!(bin
        .iter()
        .any(|m| matches!(m, ServerMessage::Snapshot(t) if &*t.symbol == "MSFT")));
    run.shutdown().await;
}

/// The tick lines `tickstream subscribe --json` prints for `encoding`.
fn cli_ticks(addr: std::net::SocketAddr, encoding: &str) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .args([
            "subscribe",
            "--url",
            &format!("ws://{addr}/v1/ws"),
            "AAPL",
            "--resume",
            "AAPL=e1:1",
            "--json",
            "--count",
            "11",
            "--duration",
            "20s",
            "--encoding",
            encoding,
        ])
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["type"] == "tick")
        .collect();
    assert_eq!(lines.len(), 11, "{lines:?}");
    lines
}

#[tokio::test]
async fn tickstream_subscribe_prints_the_same_for_both_encodings() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=12);
    let addr = run.addr;
    let (json, bin) =
        tokio::task::spawn_blocking(move || (cli_ticks(addr, "json"), cli_ticks(addr, "binary")))
            .await
            .unwrap();
    assert_eq!(json, bin);
    let bad = Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .args(["subscribe", "AAPL", "--encoding", "xml"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown encoding"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    run.shutdown().await;
}

#[test]
fn a_record_reads_the_same_through_peek() {
    let t = documented_tick();
    let rec = binary::encode(&t, Kind::Snapshot).unwrap();
    assert_eq!(binary::peek(&rec), Some((Kind::Snapshot, 1043, t.ts)));
    let r: Record = binary::decode(&rec).unwrap()[0];
    assert_eq!((r.symbol, r.epoch), ("AAPL", "k3v9q1"));
}

#[test]
fn the_hub_encodes_a_record_once_and_catches_a_slow_binary_subscriber_up_in_records() {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use tickstream::hub::{Behind, Hub, Outbox, SlowPolicy, Start};

    let hub = Hub::new(["AAPL".into()], 16);
    let start = Start {
        snapshot: false,
        encoding: Encoding::Binary,
        ..Start::default()
    };
    let sub = |id: u64, cap: usize| {
        let (outbox, rx) = Outbox::new(id, cap, SlowPolicy::Conflate);
        let behind: Behind = Arc::new(AtomicU64::new(0));
        assert!(hub.subscribe("AAPL", &outbox, &behind, &start));
        (outbox, behind, rx)
    };
    let (_o1, _b1, mut fast1) = sub(1, 64);
    let (_o2, _b2, mut fast2) = sub(2, 64);
    let (slow, _b3, mut slow_rx) = sub(3, 2);
    for seq in 1..=6 {
        hub.publish(tick("AAPL", "e1", seq));
    }
    // The same bytes for both binary subscribers: encoded once, shared.
    let a: Vec<_> = std::iter::from_fn(|| fast1.try_recv()).collect();
    let b: Vec<_> = std::iter::from_fn(|| fast2.try_recv()).collect();
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.as_ptr(), y.as_ptr());
        assert_eq!(x[0], binary::KIND_TICK);
    }
    assert_eq!(
        binary::decode(&a[5]).unwrap()[0].tick(),
        hub.latest("AAPL").unwrap().tick
    );
    // The slow one got 1 and 2, then catches up with a JSON gap and the newest record.
    let queued: Vec<_> = std::iter::from_fn(|| slow_rx.try_recv()).collect();
    assert_eq!(queued.len(), 2);
    let mut out = Vec::new();
    for (slot, behind) in slow.take_lagging() {
        Hub::catch_up(&slot, &behind, slow.id(), Encoding::Binary, &mut out);
    }
    assert_eq!(out.len(), 2);
    let gap: Value = serde_json::from_slice(&out[0]).unwrap();
    assert_eq!(
        (
            gap["type"].as_str(),
            gap["from"].as_u64(),
            gap["to"].as_u64()
        ),
        (Some("gap"), Some(3), Some(5))
    );
    assert!(binary::is_record(&out[1]));
    // The newest tick, as the very record the others got.
    assert_eq!(out[1].as_ptr(), a[5].as_ptr());
    assert_eq!(
        binary::peek(&out[1]).map(|(k, seq, _)| (k, seq)),
        Some((Kind::Tick, 6))
    );
}

/// The next change of a symbol's health the client reports, with the `status` message
/// that follows it, and the seqs of the ticks before it.
async fn next_change(c: &mut RustClient) -> (Event, SymbolState, Vec<u64>) {
    let mut seqs = Vec::new();
    loop {
        let ev = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
        if let Event::Message(ServerMessage::Tick(t)) = &ev {
            seqs.push(t.seq);
        }
        if !matches!(ev, Event::Stale { .. } | Event::Live { .. }) {
            continue;
        }
        let msg = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
        let Event::Message(ServerMessage::Status { symbol, state }) = msg else {
            panic!("the status after {ev:?}: {msg:?}")
        };
        assert_eq!(&*symbol, "AAPL");
        return (ev, state, seqs);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symbols_status_reaches_the_rust_client_on_binary_and_json_sessions() {
    let redis = env::RedisServer::start();
    let cfg = RedisConfig::single(&redis.url());
    let (run, feed) = node_with_a_feed(&redis.url(), "feed-a", "AAPL").await;
    for seq in 2..=3 {
        feed.publish(tick("AAPL", "e1", seq)).unwrap();
    }
    let mut clients = Vec::new();
    for encoding in [Encoding::Json, Encoding::Binary] {
        let mut c = RustClient::new(ClientConfig {
            urls: vec![format!("ws://{}/v1/ws", run.addr)],
            symbols: vec!["AAPL".into()],
            encoding,
            ..ClientConfig::default()
        })
        .unwrap();
        loop {
            let ev = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
            if let Event::Message(
                ServerMessage::Snapshot(t) | ServerMessage::Tick(TickMessage { tick: t, .. }),
            ) = ev
            {
                if t.seq == 3 {
                    break;
                }
            }
        }
        clients.push(c);
    }

    // The feed stops: the node says AAPL is stale, to both sessions.
    feed.close().await;
    for c in &mut clients {
        let (ev, state, _) = next_change(c).await;
        assert!(
            matches!(&ev, Event::Stale { symbol, reason: StaleReason::Feed, .. } if &**symbol == "AAPL"),
            "{ev:?}"
        );
        assert_eq!(state, SymbolState::Stale(StaleReason::Feed));
        let h = c.health("AAPL").unwrap();
        assert!(
            matches!(
                h,
                Health::Stale {
                    reason: StaleReason::Feed,
                    ..
                }
            ),
            "{h:?}"
        );
    }

    // It comes back under the same identity: values flow, and the node says so.
    let feed = RedisPublisher::connect(&cfg, "feed-a").await.unwrap();
    for seq in 4..=6 {
        feed.publish(tick("AAPL", "e1", seq)).unwrap();
    }
    for c in &mut clients {
        let (ev, state, seqs) = next_change(c).await;
        assert_eq!(seqs, [4], "live is said after the value that shows it");
        let Event::Live { symbol, after } = &ev else {
            panic!("{ev:?}")
        };
        assert_eq!(&**symbol, "AAPL");
        assert!(*after > std::time::Duration::ZERO);
        assert_eq!(state, SymbolState::Live);
        assert_eq!(c.health("AAPL"), Some(&Health::Live));
        assert_eq!(c.counters().stale, 1);
        c.close().await;
    }
    feed.close().await;
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_takes_paced_binary_ticks_as_no_loss() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "pb", 1..=1);
    let mut c = RustClient::new(ClientConfig {
        urls: vec![format!("ws://{}/v1/ws", run.addr)],
        encoding: Encoding::Binary,
        subscriptions: vec![Subscription {
            channel: Channel::Ticks,
            symbols: vec!["AAPL".into()],
            throttle_ms: Some(100),
        }],
        report_every: None,
        ..ClientConfig::default()
    })
    .unwrap();
    loop {
        let ev = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
        if let Event::Message(ServerMessage::Snapshot(t)) = ev {
            assert_eq!(t.seq, 1);
            break;
        }
    }
    let started = std::time::Instant::now();
    for seq in 2..=300 {
        publish(&run, "AAPL", "pb", seq..=seq);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let mut ticks: Vec<(u64, Option<u64>)> = Vec::new();
    while ticks.last().map(|t| t.0) != Some(300) {
        let ev = tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap();
        match ev {
            Event::Message(ServerMessage::Tick(TickMessage { tick, skipped })) => {
                ticks.push((tick.seq, skipped));
            }
            Event::Hole { .. } | Event::Disconnected { .. } => panic!("{ev:?}"),
            _ => {}
        }
    }
    let most = started.elapsed().as_millis() as usize / 100 + 2;
    assert!(ticks.len() <= most, "{} ticks: {ticks:?}", ticks.len());
    let mut prev = 1;
    for (seq, skipped) in &ticks {
        assert_eq!(Some(seq - prev - 1), *skipped, "{ticks:?}");
        prev = *seq;
    }
    let n = c.counters();
    assert_eq!(
        (n.ticks, n.skipped, n.holes, n.duplicates),
        (ticks.len() as u64, 299 - ticks.len() as u64, 0, 0)
    );
    c.close().await;
    run.shutdown().await;
}
