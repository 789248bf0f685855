//! Record then replay: `feed record` against a node with a live synthetic feed, then
//! `feed replay` of that file into a second node, reproduces the same sequence of
//! (symbol, seq, prices) at a subscriber of the second node.

mod common;
mod feedkit;

use std::time::Duration;

use common::*;
use feedkit::*;
use tickstream::config::FeedSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_then_replay_reproduces_the_sequence() {
    let mut live = settings();
    live.feed = FeedSpec::Synthetic;
    live.rate = 2000.0;
    live.seed = 11;
    let source = start(live).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session.ndjson.zst");
    let symbols = "AAPL,MSFT,NVDA,SPY,EUR/USD,BTC-USD";

    let rec = run_bin(
        &[
            "feed",
            "record",
            "--url",
            &format!("ws://{}/v1/ws", source.addr),
            "--symbols",
            symbols,
            "--out",
            file.to_str().unwrap(),
            "--count",
            "400",
        ],
        Duration::from_secs(30),
    );
    let (_, err) = texts(&rec);
    assert!(rec.status.success(), "record failed: {err}");
    source.shutdown().await;
    let recorded = read_ticks(&file);
    assert!(recorded.len() >= 400, "{} ticks recorded", recorded.len());
    let distinct: std::collections::HashSet<&str> = recorded.iter().map(|t| &*t.symbol).collect();
    assert!(distinct.len() >= 4, "only {distinct:?}");

    let target = start(settings()).await;
    let list: Vec<&str> = symbols.split(',').collect();
    let mut sub = subscriber(target.addr, &list).await;
    let replay = spawn_bin(
        vec![
            "feed".into(),
            "replay".into(),
            file.to_str().unwrap().into(),
            "--to".into(),
            publish_url(target.addr),
            "--speed".into(),
            "max".into(),
        ],
        Duration::from_secs(30),
    );
    let got = collect_ticks(&mut sub, recorded.len(), SHORT).await;
    let out = replay.await.unwrap();
    assert!(out.status.success(), "replay failed: {}", texts(&out).1);
    let want: Vec<_> = recorded.iter().map(key_of_tick).collect();
    let seen: Vec<_> = got.iter().map(key_of).collect();
    assert_eq!(
        seen, want,
        "the replayed sequence differs from the recorded one"
    );
    for (m, t) in got.iter().zip(&recorded) {
        assert_eq!(
            m["src_ts"].as_u64(),
            Some(t.ts),
            "the original ts is kept as src_ts"
        );
    }
    // The replay's publisher connection ended: what it published is stale now.
    let mut stale = quiet(&mut sub).await;
    stale.sort();
    let mut published: Vec<String> = recorded.iter().map(|t| t.symbol.to_string()).collect();
    published.sort();
    published.dedup();
    assert_eq!(
        stale, published,
        "every symbol the replay published is stale"
    );
    target.shutdown().await;
}
