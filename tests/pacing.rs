//! Pacing chosen by the subscriber (`throttle_ms`) on real sockets: at most one tick per
//! symbol per interval with `skipped` accounting for every seq folded, resume then pace,
//! a change of pace, bad values, and binary records. Counts and seq arithmetic only:
//! no latency is asserted.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tickstream::protocol::binary;
use tokio_tungstenite::tungstenite::Message;

/// Publishes ticks of `symbols` (one of each every `every`) with seqs from `from` for
/// `for_`, from a task of its own; returns the last seq published.
async fn feed(
    run: &tickstream::server::Running,
    symbols: &[&str],
    from: u64,
    every: Duration,
    for_: Duration,
) -> u64 {
    let node = run.node.clone();
    let symbols: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
    tokio::spawn(async move {
        let end = tokio::time::Instant::now() + for_;
        let mut seq = from;
        let mut tick = tokio::time::interval(every);
        while tokio::time::Instant::now() < end {
            tick.tick().await;
            for s in &symbols {
                node.bus.publish(tick_of(s, seq)).unwrap();
            }
            seq += 1;
        }
        seq - 1
    })
    .await
    .unwrap()
}

fn tick_of(symbol: &str, seq: u64) -> tickstream::tick::Tick {
    common::tick(symbol, "e1", seq)
}

/// Messages until none came for `quiet`.
async fn drain(c: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(m) = c.try_next(quiet).await {
        out.push(m);
    }
    out
}

/// Checks the paced ticks of `symbol` in `msgs` against the position `from`: each one's
/// `skipped` is its jump minus one, with no `gap`; returns how many and the last seq.
fn paced_run(msgs: &[Value], symbol: &str, from: u64) -> (usize, u64) {
    let mut prev = from;
    let mut n = 0;
    for m in msgs.iter().filter(|m| m["symbol"] == symbol) {
        assert_eq!(m["type"], "tick", "only paced ticks: {m}");
        let seq = m["seq"].as_u64().unwrap();
        let skipped = m["skipped"].as_u64().expect("a paced tick has skipped");
        assert_eq!(seq - prev - 1, skipped, "{m} after {prev}");
        prev = seq;
        n += 1;
    }
    (n, prev)
}

/// A node holding AAPL seq 1, and a client subscribed to it at `throttle_ms`, past
/// its snapshot.
async fn paced_aapl(throttle_ms: u64) -> (tickstream::server::Running, Client) {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=1);
    let (mut c, _) = Client::ready(run.addr).await;
    let body = json!({"op":"subscribe","symbols":["AAPL"],"throttle_ms":throttle_ms});
    subscribed(&mut c, body).await;
    c.until("snapshot").await;
    (run, c)
}

async fn subscribed(c: &mut Client, body: Value) -> Value {
    c.send(&body.to_string()).await;
    let m = c.next().await;
    assert_eq!(m["type"], "subscribed", "{m}");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_feed_paced_at_100ms_gives_at_most_one_tick_per_interval_and_skipped_adds_up() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=1);
    publish(&run, "MSFT", "e1", 1..=1);
    let (mut c, _) = Client::ready(run.addr).await;
    let ok = subscribed(
        &mut c,
        json!({"op":"subscribe","id":1,"symbols":["AAPL","MSFT"],"throttle_ms":100}),
    )
    .await;
    assert_eq!(ok["throttle_ms"], 100, "echoed: {ok}");
    for s in ["AAPL", "MSFT"] {
        let snap = c.next().await;
        assert_eq!(
            (snap["type"].as_str(), snap["seq"].as_u64()),
            (Some("snapshot"), Some(1))
        );
        assert_eq!(snap["symbol"], s);
    }
    // A tick of each every 2 ms for 1 s: some 500 ticks per symbol.
    let last = feed(
        &run,
        &["AAPL", "MSFT"],
        2,
        Duration::from_millis(2),
        Duration::from_secs(1),
    )
    .await;
    let msgs = drain(&mut c, Duration::from_millis(400)).await;
    for s in ["AAPL", "MSFT"] {
        let (n, end) = paced_run(&msgs, s, 1);
        // Boundaries every 100 ms after the first tick, up to 100 ms after the last.
        assert!(
            (2..=11).contains(&n),
            "{s}: {n} paced ticks for 1 s at 100 ms"
        );
        assert_eq!(end, last, "{s}: the newest tick is always sent in the end");
    }
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_replays_in_full_then_paces() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=50);
    let (mut c, _) = Client::ready(run.addr).await;
    subscribed(
        &mut c,
        json!({"op":"subscribe","symbols":["AAPL"],"throttle_ms":200,"resume":{"AAPL":{"epoch":"e1","seq":40}}}),
    )
    .await;
    for want in 41..=50 {
        let m = c.next().await;
        assert_eq!(
            (m["type"].as_str(), m["seq"].as_u64()),
            (Some("tick"), Some(want))
        );
        assert!(
            m.get("skipped").is_none(),
            "a replayed tick is not paced: {m}"
        );
    }
    publish(&run, "AAPL", "e1", 51..=60);
    let m = c.next().await;
    assert_eq!(
        (m["seq"].as_u64(), m["skipped"].as_u64()),
        (Some(60), Some(9)),
        "{m}"
    );
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pace_applies_at_once_and_zero_sends_every_tick() {
    let (run, mut c) = paced_aapl(60_000).await;
    let sub = |ms: u64| json!({"op":"subscribe","symbols":["AAPL"],"throttle_ms":ms});
    publish(&run, "AAPL", "e1", 2..=5);
    // A minute's pace: nothing yet. Then unpaced: what was folded comes at once.
    assert!(c.try_next(Duration::from_millis(300)).await.is_none());
    let ok = subscribed(&mut c, sub(0)).await;
    assert_eq!(ok["throttle_ms"], 0);
    let m = c.next().await;
    assert_eq!(
        (m["seq"].as_u64(), m["skipped"].as_u64()),
        (Some(5), Some(3)),
        "{m}"
    );
    publish(&run, "AAPL", "e1", 6..=8);
    for want in 6..=8 {
        let m = c.next().await;
        assert_eq!(m["seq"].as_u64(), Some(want));
        assert!(m.get("skipped").is_none(), "unpaced: {m}");
    }
    // Paced again, at 50 ms: counting starts from the last tick sent.
    subscribed(&mut c, sub(50)).await;
    publish(&run, "AAPL", "e1", 9..=30);
    let msgs = drain(&mut c, Duration::from_millis(300)).await;
    let (n, end) = paced_run(&msgs, "AAPL", 8);
    assert!(n >= 1 && end == 30, "{msgs:?}");
    // Resubscribing with the same pace sends nothing again.
    subscribed(&mut c, sub(50)).await;
    assert!(c.try_next(Duration::from_millis(200)).await.is_none());
    run.shutdown().await;
}

#[tokio::test]
async fn bad_paces_are_refused_and_change_nothing() {
    let (run, mut c) = paced_aapl(60_000).await;
    for (i, bad) in [
        json!(5),
        json!(9),
        json!(60_001),
        json!(-10),
        json!("250"),
        json!(2.5),
    ]
    .into_iter()
    .enumerate()
    {
        let id = 10 + i as u64;
        c.send(
            &json!({"op":"subscribe","id":id,"symbols":["AAPL","MSFT"],"throttle_ms":bad})
                .to_string(),
        )
        .await;
        let e = c.next().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{e}"
        );
        assert_eq!(e["id"], id);
        assert!(
            e["message"].as_str().unwrap().contains("throttle_ms"),
            "{e}"
        );
    }
    c.send(r#"{"op":"list","id":30}"#).await;
    assert_eq!(
        c.next().await["symbols"],
        json!(["AAPL"]),
        "MSFT was not subscribed"
    );
    // Still at a minute's pace: a tick now is folded, not sent.
    publish(&run, "AAPL", "e1", 2..=3);
    assert!(c.try_next(Duration::from_millis(300)).await.is_none());
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_paced_records_carry_skipped_that_adds_up() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=1);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?encoding=binary", run.addr))
            .await
            .unwrap();
    use futures_util::SinkExt;
    ws.send(Message::text(
        json!({"op":"subscribe","symbols":["AAPL"],"throttle_ms":100}).to_string(),
    ))
    .await
    .unwrap();
    // The snapshot first, so that the feed starts after the subscription.
    let mut prev = None;
    while prev.is_none() {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Binary(frame) = msg {
            let records = binary::decode(&frame).unwrap();
            assert_eq!(records.len(), 1, "{records:?}");
            let r = &records[0];
            assert_eq!((r.seq, r.skipped), (1, None), "the snapshot");
            prev = Some(r.seq);
        }
    }
    let last = feed(
        &run,
        &["AAPL"],
        2,
        Duration::from_millis(2),
        Duration::from_millis(600),
    )
    .await;
    let mut paced = 0;
    while prev != Some(last) {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Binary(frame) = msg else {
            continue;
        };
        for r in binary::decode(&frame).unwrap() {
            match (prev, r.skipped) {
                (Some(p), Some(k)) => {
                    assert_eq!(r.seq - p - 1, k);
                    paced += 1;
                }
                other => panic!("unexpected record {r:?} after {other:?}"),
            }
            prev = Some(r.seq);
        }
    }
    assert!(
        (1..=8).contains(&paced),
        "{paced} paced records in 0.6 s at 100 ms"
    );
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_upstream_is_still_a_gap_on_a_paced_subscription() {
    let (run, mut c) = paced_aapl(60_000).await;
    publish(&run, "AAPL", "e1", 2..=3);
    // 4..=6 never reach the node.
    publish(&run, "AAPL", "e1", 7..=7);
    let m = c.next().await;
    assert_eq!(
        (m["seq"].as_u64(), m["skipped"].as_u64()),
        (Some(3), Some(1)),
        "{m}"
    );
    let g = c.next().await;
    assert_eq!(
        (
            g["type"].as_str(),
            g["from"].as_u64(),
            g["to"].as_u64(),
            g["reason"].as_str()
        ),
        (Some("gap"), Some(4), Some(6), Some("upstream"))
    );
    run.shutdown().await;
}
