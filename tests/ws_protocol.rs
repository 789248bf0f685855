//! The WebSocket protocol end to end, on real loopback sockets, with an independent client.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn welcome_announces_node_heartbeat_and_limits() {
    let mut s = settings();
    s.max_symbols = 77;
    s.rate_limit = 33;
    s.max_msg_bytes = 4096;
    s.heartbeat = Duration::from_millis(1500);
    let run = start(s).await;
    let (_c, w) = Client::ready(run.addr).await;
    assert_eq!(w["node"], "test-node");
    assert_eq!(w["heartbeat_ms"], 1500);
    assert_eq!(w["encoding"], "json");
    assert_eq!(
        w["limits"],
        json!({"max_symbols":77,"max_msg_bytes":4096,"rate_per_s":33})
    );
    assert!(w["session"].as_str().is_some_and(|s| s.len() == 32));
    run.shutdown().await;
}

#[tokio::test]
async fn snapshot_comes_before_ticks_and_seqs_are_continuous() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=5);
    let (mut c, _) = Client::ready(run.addr).await;
    c.send(r#"{"op":"subscribe","id":7,"symbols":["AAPL","MSFT"]}"#)
        .await;
    let sub = c.next().await;
    assert_eq!(
        sub,
        json!({"type":"subscribed","id":7,"symbols":["AAPL","MSFT"]})
    );
    let snap = c.next().await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["symbol"], "AAPL");
    assert_eq!(snap["epoch"], "e1");
    assert_eq!(snap["seq"], 5);
    for k in [
        "ts",
        "bid",
        "ask",
        "bid_size",
        "ask_size",
        "last",
        "last_size",
        "volume",
    ] {
        assert!(snap[k].is_number(), "snapshot lacks {k}: {snap}");
    }
    publish(&run, "AAPL", "e1", 6..=300);
    publish(&run, "MSFT", "e1", 1..=50);
    let mut next = std::collections::HashMap::from([("AAPL", 6u64), ("MSFT", 1u64)]);
    while next["AAPL"] <= 300 || next["MSFT"] <= 50 {
        let m = c.next().await;
        let sym = m["symbol"].as_str().unwrap();
        // MSFT had no value when subscribed: its first value comes as its snapshot.
        let first_of_msft = sym == "MSFT" && next["MSFT"] == 1;
        let want_type = if first_of_msft { "snapshot" } else { "tick" };
        assert_eq!(m["type"], want_type, "{m}");
        let want = next.get_mut(sym).unwrap();
        assert_eq!(m["seq"].as_u64().unwrap(), *want, "{sym} out of sequence");
        assert!(m["bid"].as_f64().unwrap() < m["ask"].as_f64().unwrap());
        *want += 1;
    }
    run.shutdown().await;
}

#[tokio::test]
async fn snapshot_false_sends_only_ticks() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=3);
    let (mut c, _) = Client::ready(run.addr).await;
    c.send(r#"{"op":"subscribe","symbols":["AAPL"],"snapshot":false}"#)
        .await;
    assert_eq!(c.next().await["type"], "subscribed");
    publish(&run, "AAPL", "e1", 4..=4);
    let m = c.next().await;
    assert_eq!(
        (m["type"].as_str(), m["seq"].as_u64()),
        (Some("tick"), Some(4))
    );
    run.shutdown().await;
}

#[tokio::test]
async fn unsubscribe_stops_the_flow_and_list_reflects_it() {
    let run = start(settings()).await;
    let (mut c, _) = Client::ready(run.addr).await;
    c.send(r#"{"op":"subscribe","symbols":["AAPL","MSFT"],"snapshot":false}"#)
        .await;
    c.until("subscribed").await;
    c.send(r#"{"op":"list","id":9}"#).await;
    assert_eq!(
        c.next().await,
        json!({"type":"subscriptions","id":9,"symbols":["AAPL","MSFT"]})
    );
    c.send(r#"{"op":"unsubscribe","id":8,"symbols":["AAPL"]}"#)
        .await;
    assert_eq!(
        c.next().await,
        json!({"type":"unsubscribed","id":8,"symbols":["AAPL"]})
    );
    assert_eq!(run.node.hub.subscriber_count("AAPL"), 0);
    publish(&run, "AAPL", "e1", 1..=10);
    publish(&run, "MSFT", "e1", 1..=1);
    let m = c.next().await;
    assert_eq!(m["symbol"], "MSFT", "no AAPL tick after unsubscribe: {m}");
    c.send(r#"{"op":"list","id":10}"#).await;
    assert_eq!(
        c.next().await,
        json!({"type":"subscriptions","id":10,"symbols":["MSFT"]})
    );
    run.shutdown().await;
}

#[tokio::test]
async fn ping_is_answered_with_pong_and_id() {
    let run = start(settings()).await;
    let (mut c, _) = Client::ready(run.addr).await;
    let before = tickstream::tick::now_ns();
    c.send(r#"{"op":"ping","id":10}"#).await;
    let p = c.next().await;
    assert_eq!(p["type"], "pong");
    assert_eq!(p["id"], 10);
    assert!(p["ts"].as_u64().unwrap() >= before);
    run.shutdown().await;
}

async fn expect_error(c: &mut Client, code: &str) -> Value {
    let e = c.until("error").await;
    assert_eq!(e["code"], code, "{e}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    e
}

/// The connection still works after an error.
async fn still_alive(c: &mut Client) {
    c.send(r#"{"op":"ping","id":4242}"#).await;
    let p = c.until("pong").await;
    assert_eq!(p["id"], 4242);
}

#[tokio::test]
async fn every_error_code_keeps_the_connection() {
    let mut s = settings();
    s.max_symbols = 2;
    let run = start(s).await;
    let (mut c, _) = Client::ready(run.addr).await;

    c.send("this is not json").await;
    expect_error(&mut c, "bad_request").await;
    c.send("[1,2,3]").await;
    expect_error(&mut c, "bad_request").await;
    c.send(r#"{"op":"subscribe","id":3,"symbols":"AAPL"}"#)
        .await;
    assert_eq!(expect_error(&mut c, "bad_request").await["id"], 3);
    c.send(r#"{"op":"fly","id":5}"#).await;
    assert_eq!(expect_error(&mut c, "unknown_op").await["id"], 5);
    c.send(r#"{"op":"subscribe","id":6,"symbols":["XXXX"]}"#)
        .await;
    let e = expect_error(&mut c, "unknown_symbol").await;
    assert_eq!(
        (e["id"].clone(), e["symbols"].clone()),
        (json!(6), json!(["XXXX"]))
    );
    c.send(r#"{"op":"subscribe","id":7,"symbols":["aapl"]}"#)
        .await;
    assert_eq!(
        expect_error(&mut c, "bad_symbol").await["symbols"],
        json!(["aapl"])
    );
    c.send(r#"{"op":"subscribe","id":8,"symbols":["AAPL","MSFT","NVDA"]}"#)
        .await;
    assert_eq!(expect_error(&mut c, "too_many_symbols").await["id"], 8);
    c.send(r#"{"op":"list","id":1}"#).await;
    assert_eq!(
        c.until("subscriptions").await["symbols"],
        json!([]),
        "a refused subscribe changes nothing"
    );
    still_alive(&mut c).await;

    // Binary frames are refused without closing (text that is not UTF-8 closes with
    // 1007: tests/rfc6455.rs).
    c.send_msg(Message::Binary(vec![1u8, 2, 3].into())).await;
    expect_error(&mut c, "bad_request").await;
    still_alive(&mut c).await;

    // Another client was never disturbed.
    let (mut other, _) = Client::ready(run.addr).await;
    still_alive(&mut other).await;
    run.shutdown().await;
}

#[tokio::test]
async fn a_fragmented_command_is_reassembled() {
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::Data, coding::OpCode, Frame};
    let run = start(settings()).await;
    let (mut c, _) = Client::ready(run.addr).await;
    let text = br#"{"op":"ping","id":77}"#;
    c.send_msg(Message::Frame(Frame::message(
        text[..5].to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    c.send_msg(Message::Frame(Frame::message(
        text[5..].to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await;
    assert_eq!(c.until("pong").await["id"], 77);
    run.shutdown().await;
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let mut s = settings();
    s.max_msg_bytes = 1024;
    let run = start(s).await;
    let (mut c, _) = Client::ready(run.addr).await;
    let (mut other, _) = Client::ready(run.addr).await;
    let big = format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(2000));
    c.send(&big).await;
    assert_eq!(c.closed(WAIT).await, Some(1009));
    still_alive(&mut other).await;
    run.shutdown().await;
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_closed_with_1008() {
    let mut s = settings();
    s.rate_limit = 10;
    s.rate_burst = 10;
    s.rate_strikes = 5;
    let run = start(s).await;
    let (mut c, _) = Client::ready(run.addr).await;
    let (mut other, _) = Client::ready(run.addr).await;
    for i in 0..40 {
        // The server may close before the whole flood is written.
        if c.ws
            .send(Message::text(format!(r#"{{"op":"ping","id":{i}}}"#)))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut pongs = 0;
    let mut limited = 0;
    while let Some(m) = c.try_next(WAIT).await {
        match m["type"].as_str() {
            Some("pong") => pongs += 1,
            Some(t) if std::env::var("DBG").is_ok() => eprintln!("{t} {m}"),
            Some("error") => {
                assert_eq!(m["code"], "rate_limited");
                limited += 1;
            }
            _ => {}
        }
    }
    assert_eq!(pongs, 10, "the burst is served (close {:?})", c.close);
    assert_eq!(
        limited, 5,
        "then rate_limited errors up to the strike limit"
    );
    assert_eq!(
        c.close.clone().flatten().map(|f| u16::from(f.code)),
        Some(1008)
    );
    still_alive(&mut other).await;
    run.shutdown().await;
}

#[tokio::test]
async fn resume_within_the_ring_replays_without_hole_or_duplicate() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=100);
    let (mut c, _) = Client::ready(run.addr).await;
    c.send(r#"{"op":"subscribe","symbols":["AAPL"],"resume":{"AAPL":{"epoch":"e1","seq":90}}}"#)
        .await;
    c.until("subscribed").await;
    publish(&run, "AAPL", "e1", 101..=110);
    for want in 91..=110u64 {
        let m = c.next().await;
        assert_eq!(
            (m["type"].as_str(), m["seq"].as_u64()),
            (Some("tick"), Some(want)),
            "{m}"
        );
    }
    // A bare number is accepted too.
    let (mut d, _) = Client::ready(run.addr).await;
    d.send(r#"{"op":"subscribe","symbols":["AAPL"],"resume":{"AAPL":108}}"#)
        .await;
    d.until("subscribed").await;
    assert_eq!(d.next().await["seq"], 109);
    assert_eq!(d.next().await["seq"], 110);
    run.shutdown().await;
}

#[tokio::test]
async fn resume_beyond_the_ring_sends_expired_gap_then_snapshot() {
    let mut s = settings();
    s.history = 16;
    let run = start(s).await;
    publish(&run, "AAPL", "e1", 1..=100);
    let (mut c, _) = Client::ready(run.addr).await;
    c.send(r#"{"op":"subscribe","symbols":["AAPL"],"resume":{"AAPL":10}}"#)
        .await;
    c.until("subscribed").await;
    assert_eq!(
        c.next().await,
        json!({"type":"gap","symbol":"AAPL","from":11,"to":99,"reason":"expired"})
    );
    let snap = c.next().await;
    assert_eq!(
        (snap["type"].as_str(), snap["seq"].as_u64()),
        (Some("snapshot"), Some(100))
    );
    publish(&run, "AAPL", "e1", 101..=101);
    assert_eq!(c.next().await["seq"], 101);
    run.shutdown().await;
}

/// A `gap` with reason `reset`, then the snapshot of the new epoch.
async fn expect_reset(c: &mut Client, epoch: &str, seq: u64) {
    let g = c.next().await;
    assert_eq!(
        (g["type"].as_str(), g["reason"].as_str()),
        (Some("gap"), Some("reset")),
        "{g}"
    );
    let snap = c.next().await;
    assert_eq!(
        (
            snap["type"].as_str(),
            snap["epoch"].as_str(),
            snap["seq"].as_u64()
        ),
        (Some("snapshot"), Some(epoch), Some(seq))
    );
}

#[tokio::test]
async fn resume_from_another_epoch_sends_reset_gap_then_snapshot() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e2", 1..=5);
    let (mut c, _) = Client::ready(run.addr).await;
    c.send(r#"{"op":"subscribe","symbols":["AAPL"],"resume":{"AAPL":{"epoch":"e1","seq":3}}}"#)
        .await;
    c.until("subscribed").await;
    expect_reset(&mut c, "e2", 5).await;
    run.shutdown().await;
}

#[tokio::test]
async fn a_feed_restart_mid_stream_is_announced_as_reset() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=3);
    let (mut c, _) = Client::ready(run.addr).await;
    c.send(r#"{"op":"subscribe","symbols":["AAPL"]}"#).await;
    c.until("snapshot").await;
    publish(&run, "AAPL", "e2", 1..=2);
    expect_reset(&mut c, "e2", 1).await;
    let t = c.next().await;
    assert_eq!(
        (t["type"].as_str(), t["seq"].as_u64()),
        (Some("tick"), Some(2))
    );
    run.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_after_heartbeat_and_grace() {
    let mut s = settings();
    s.heartbeat = Duration::from_millis(200);
    s.heartbeat_grace = Duration::from_millis(200);
    // The client reads nothing, so the lingering close runs its full bound.
    s.close_linger = Duration::from_millis(100);
    let run = start(s).await;
    let (mut c, _) = Client::ready(run.addr).await;
    c.send(r#"{"op":"subscribe","symbols":["AAPL"]}"#).await;
    eventually("subscribed", || run.node.hub.subscriber_count("AAPL") == 1).await;
    // Not reading means not answering the server's pings.
    let t0 = std::time::Instant::now();
    eventually("the silent connection is freed", || {
        run.node.hub.subscriber_count("AAPL") == 0
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "closed too early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "closed too late: {took:?}"
    );
    eventually("the connection is closed", || {
        run.node
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    })
    .await;
    // A client that reads (and so answers pings) stays connected past the same time.
    let (mut live, _) = Client::ready(run.addr).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(900);
    while tokio::time::Instant::now() < until {
        live.try_next(Duration::from_millis(50)).await;
    }
    assert!(live.close.is_none());
    still_alive(&mut live).await;
    run.shutdown().await;
}

#[tokio::test]
async fn a_resume_for_a_held_symbol_restarts_its_stream_and_a_plain_repeat_does_nothing() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=10);
    let (mut c, _) = Client::ready(run.addr).await;
    c.send(r#"{"op":"subscribe","id":1,"symbols":["AAPL"]}"#)
        .await;
    assert_eq!(c.until("subscribed").await["id"], 1);
    assert_eq!(c.next().await["seq"], 10, "the snapshot");
    // A plain repeated subscribe: answered, nothing replayed.
    c.send(r#"{"op":"subscribe","id":2,"symbols":["AAPL"]}"#)
        .await;
    assert_eq!(c.next().await["id"], 2);
    assert!(c.try_next(Duration::from_millis(200)).await.is_none());
    // A client that saw a hole after 6 re-syncs from there.
    c.send(
        r#"{"op":"subscribe","id":3,"symbols":["AAPL"],"resume":{"AAPL":{"epoch":"e1","seq":6}}}"#,
    )
    .await;
    assert_eq!(c.next().await["id"], 3);
    for seq in 7..=10 {
        let m = c.next().await;
        assert_eq!(
            (m["type"].as_str(), m["seq"].as_u64()),
            (Some("tick"), Some(seq))
        );
    }
    // From another epoch: a reset and a fresh snapshot.
    c.send(
        r#"{"op":"subscribe","id":4,"symbols":["AAPL"],"resume":{"AAPL":{"epoch":"old","seq":3}}}"#,
    )
    .await;
    assert_eq!(c.next().await["id"], 4);
    let gap = c.next().await;
    assert_eq!(
        (gap["type"].as_str(), gap["reason"].as_str()),
        (Some("gap"), Some("reset"))
    );
    let snap = c.next().await;
    assert_eq!(
        (snap["type"].as_str(), snap["seq"].as_u64()),
        (Some("snapshot"), Some(10))
    );
    // Live ticks follow once, with no duplicate.
    publish(&run, "AAPL", "e1", 11..=12);
    assert_eq!(c.next().await["seq"], 11);
    assert_eq!(c.next().await["seq"], 12);
    assert!(c.try_next(Duration::from_millis(200)).await.is_none());
    assert_eq!(run.node.hub.subscriber_count("AAPL"), 1);
    run.shutdown().await;
}

#[tokio::test]
async fn a_symbol_with_no_value_yet_sends_its_first_tick_as_the_snapshot() {
    let run = start(settings()).await;
    let (mut c, _) = Client::ready(run.addr).await;
    c.send(r#"{"op":"subscribe","symbols":["AAPL","MSFT"],"snapshot":true}"#)
        .await;
    c.until("subscribed").await;
    publish(&run, "MSFT", "e1", 1..=2);
    let first = c.next().await;
    assert_eq!(
        (first["type"].as_str(), first["seq"].as_u64()),
        (Some("snapshot"), Some(1))
    );
    assert_eq!(c.next().await["type"], "tick");
    // Without a snapshot asked for, the first value is a plain tick.
    let (mut d, _) = Client::ready(run.addr).await;
    d.send(r#"{"op":"subscribe","symbols":["AAPL"],"snapshot":false}"#)
        .await;
    d.until("subscribed").await;
    publish(&run, "AAPL", "e1", 1..=1);
    assert_eq!(d.next().await["type"], "tick");
    assert_eq!(c.next().await["type"], "snapshot");
    run.shutdown().await;
}

#[tokio::test]
async fn heartbeats_of_connections_opened_together_are_spread_over_the_interval() {
    use futures_util::StreamExt;
    let mut s = settings();
    s.heartbeat = Duration::from_millis(1000);
    let run = start(s).await;
    const N: usize = 40;
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(Client::ready(run.addr).await.0);
    }
    let t0 = std::time::Instant::now();
    // Each connection's first Ping, timed from when all were open.
    let mut firsts = futures_util::future::join_all(clients.into_iter().map(|mut c| async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(3), c.ws.next()).await {
                Ok(Some(Ok(Message::Ping(_)))) => return t0.elapsed(),
                Ok(Some(Ok(_))) => continue,
                other => panic!("no Ping within 3 s: {other:?}"),
            }
        }
    }))
    .await;
    firsts.sort();
    // Spread over the interval: the first Pings span most of it, and no tenth of it
    // holds most of them (all at once would put all 40 in one).
    let span = firsts[N - 1] - firsts[0];
    assert!(span >= Duration::from_millis(400), "{firsts:?}");
    let crowd = (0..N)
        .map(|i| {
            firsts[i..]
                .iter()
                .take_while(|&&t| t - firsts[i] < Duration::from_millis(100))
                .count()
        })
        .max()
        .unwrap();
    assert!(crowd <= 30, "{crowd} of {N} within 100 ms: {firsts:?}");
    assert!(firsts[N - 1] < Duration::from_millis(1500), "{firsts:?}");
    run.shutdown().await;
}

#[tokio::test]
async fn the_options_of_a_channel_are_checked_before_anything_is_subscribed() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=1);
    let (mut c, _) = Client::ready(run.addr).await;
    c.send(r#"{"op":"subscribe","id":2,"channel":"book","depth":20,"symbols":["AAPL"]}"#)
        .await;
    let e = expect_error(&mut c, "bad_request").await;
    assert_eq!(e["id"].as_u64(), Some(2));
    assert_eq!(e["message"], "depth 20 is not served: 10 or 50");
    c.send(r#"{"op":"subscribe","id":3,"channel":"candles","symbols":["AAPL"]}"#)
        .await;
    let e = expect_error(&mut c, "bad_request").await;
    assert!(e["message"].as_str().unwrap().contains("interval"), "{e}");
    c.send(r#"{"op":"subscribe","id":4,"depth":10,"symbols":["AAPL"]}"#)
        .await;
    expect_error(&mut c, "bad_request").await;
    assert_eq!(run.node.interest().watched(), 0, "nothing subscribed");
    // Ticks are the default, and replies about them stay as in v1.
    c.send(r#"{"op":"subscribe","id":5,"channel":"ticks","symbols":["AAPL"]}"#)
        .await;
    assert_eq!(
        c.next().await,
        json!({"type":"subscribed","id":5,"symbols":["AAPL"]})
    );
    assert_eq!(c.next().await["type"], "snapshot");
    c.send(r#"{"op":"list","id":6,"channel":"candles","interval":"1s"}"#)
        .await;
    assert_eq!(
        c.next().await,
        json!({"type":"subscriptions","id":6,"channel":"candles","interval":"1s","symbols":[]})
    );
    c.send(r#"{"op":"unsubscribe","id":7,"channel":"book","symbols":["AAPL"]}"#)
        .await;
    assert_eq!(
        c.next().await,
        json!({"type":"unsubscribed","id":7,"channel":"book","symbols":["AAPL"]})
    );
    c.send(r#"{"op":"list","id":8}"#).await;
    assert_eq!(
        c.next().await["symbols"],
        json!(["AAPL"]),
        "still held on ticks"
    );
    run.shutdown().await;
}
