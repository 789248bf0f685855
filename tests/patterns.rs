//! Patterns (`*`, `PREFIX*`) in `subscribe` and `unsubscribe` on real sockets: what they
//! match, symbols that get their first value later, resume per matched symbol, token
//! claims, the limits, and the same through a real Redis and a real Redis Cluster.

mod common;
#[path = "common/redis.rs"]
mod env;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use env::{fast, RedisCluster, RedisServer};
use serde_json::{json, Value};
use tickstream::auth::{self, Claims};
use tickstream::bus::{RedisConfig, RedisPublisher};
use tickstream::config::Settings;
use tickstream::server::Running;

async fn send(c: &mut Client, body: Value) -> Value {
    c.send(&body.to_string()).await;
    c.next().await
}

/// The served symbols starting with `prefix`, sorted.
fn served(run: &Running, prefix: &str) -> Vec<String> {
    let all = run.node.hub.symbols();
    all.iter()
        .filter(|s| s.starts_with(prefix))
        .map(|s| s.to_string())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_prefix_subscribes_what_it_matches_and_a_symbol_joins_with_its_first_value() {
    let run = start(settings()).await;
    let (mut c, _) = Client::ready(run.addr).await;
    let ok = send(&mut c, json!({"op":"subscribe","id":1,"symbols":["BTC-*"]})).await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    assert_eq!(ok["patterns"], json!(["BTC-*"]));
    let btc = served(&run, "BTC-");
    assert!(btc.len() >= 2, "{btc:?}");
    assert_eq!(strings(&ok["symbols"]), btc);
    assert_eq!(run.node.interest().count("BTC-USD"), 1);
    assert_eq!(run.node.interest().count("ETH-USD"), 0);
    // No value yet: nothing comes until the first one, which is the snapshot.
    assert!(c.try_next(Duration::from_millis(200)).await.is_none());
    publish(&run, "BTC-EUR", "e1", 1..=3);
    publish(&run, "ETH-USD", "e1", 1..=3);
    let got: Vec<(String, u64)> = [c.next().await, c.next().await, c.next().await]
        .iter()
        .map(|m| {
            (
                m["type"].as_str().unwrap().to_owned(),
                m["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("snapshot".into(), 1),
            ("tick".into(), 2),
            ("tick".into(), 3)
        ]
    );
    assert!(
        c.try_next(Duration::from_millis(200)).await.is_none(),
        "ETH-USD is not matched"
    );
    run.shutdown().await;
}

#[tokio::test]
async fn star_matches_everything_once_and_unsubscribing_it_gives_everything_back() {
    let run = start(settings()).await;
    let (mut c, _) = Client::ready(run.addr).await;
    let ok = send(
        &mut c,
        json!({"op":"subscribe","symbols":["BTC-USD","*","BTC-*"]}),
    )
    .await;
    let symbols = strings(&ok["symbols"]);
    assert_eq!(symbols[0], "BTC-USD", "named first");
    assert_eq!(
        symbols.len(),
        run.node.hub.symbols().len(),
        "each symbol once"
    );
    assert_eq!(symbols.iter().collect::<HashSet<_>>().len(), symbols.len());
    assert_eq!(ok["patterns"], json!(["*", "BTC-*"]));
    assert_eq!(run.node.interest().watched(), symbols.len());
    let list = send(&mut c, json!({"op":"list"})).await;
    assert_eq!(list["patterns"], json!(["*", "BTC-*"]));
    assert_eq!(list["symbols"].as_array().unwrap().len(), symbols.len());
    // Dropping one symbol keeps the patterns; dropping a pattern drops its matches.
    let off = send(&mut c, json!({"op":"unsubscribe","symbols":["AAPL"]})).await;
    assert_eq!(off["symbols"], json!(["AAPL"]));
    let off = send(&mut c, json!({"op":"unsubscribe","symbols":["BTC-*"]})).await;
    assert_eq!(off["patterns"], json!(["BTC-*"]));
    assert_eq!(strings(&off["symbols"]), served(&run, "BTC-"));
    let list = send(&mut c, json!({"op":"list"})).await;
    assert_eq!(list["patterns"], json!(["*"]));
    assert_eq!(
        list["symbols"].as_array().unwrap().len(),
        symbols.len() - 1 - served(&run, "BTC-").len()
    );
    let off = send(&mut c, json!({"op":"unsubscribe","id":4,"symbols":["*"]})).await;
    assert_eq!(off["id"], 4);
    assert_eq!(run.node.interest().watched(), 0);
    let list = send(&mut c, json!({"op":"list"})).await;
    assert_eq!(list, json!({"type":"subscriptions","symbols":[]}));
    run.shutdown().await;
}

#[tokio::test]
async fn resume_applies_to_each_matched_symbol() {
    let run = start(settings()).await;
    publish(&run, "EUR/USD", "e1", 1..=10);
    publish(&run, "EUR/GBP", "e1", 1..=4);
    let (mut c, _) = Client::ready(run.addr).await;
    let ok = send(
        &mut c,
        json!({"op":"subscribe","symbols":["EUR/*"],"resume":{"EUR/USD":{"epoch":"e1","seq":7}}}),
    )
    .await;
    assert_eq!(ok["type"], "subscribed");
    let mut got: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    while let Some(m) = c.try_next(Duration::from_millis(300)).await {
        let s = m["symbol"].as_str().unwrap().to_owned();
        got.entry(s).or_default().push((
            m["type"].as_str().unwrap().to_owned(),
            m["seq"].as_u64().unwrap(),
        ));
    }
    let ticks = |from: u64, to: u64| {
        (from..=to)
            .map(|s| ("tick".to_owned(), s))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        got["EUR/USD"],
        ticks(8, 10),
        "replayed from the position given"
    );
    assert_eq!(
        got["EUR/GBP"],
        [("snapshot".to_owned(), 4)],
        "not resumed: snapshot"
    );
    run.shutdown().await;
}

#[tokio::test]
async fn the_limits_count_matched_symbols_and_patterns_and_refuse_the_whole_command() {
    let run = start(Settings {
        max_symbols: 100,
        max_patterns: 2,
        ..settings()
    })
    .await;
    let (mut c, _) = Client::ready(run.addr).await;
    let e = send(&mut c, json!({"op":"subscribe","id":1,"symbols":["*"]})).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("too_many_symbols"), Some(1)),
        "{e}"
    );
    let e = send(
        &mut c,
        json!({"op":"subscribe","id":2,"symbols":["BTC-*","ETH-*","EUR/*"]}),
    )
    .await;
    assert_eq!(e["code"], "too_many_symbols", "{e}");
    assert!(e["message"].as_str().unwrap().contains("patterns"), "{e}");
    assert_eq!(run.node.interest().watched(), 0, "nothing subscribed");
    let e = send(
        &mut c,
        json!({"op":"subscribe","id":3,"symbols":["btc-*","A*B","**"]}),
    )
    .await;
    assert_eq!(e["code"], "bad_symbol");
    assert_eq!(e["symbols"], json!(["btc-*", "A*B", "**"]));
    let ok = send(
        &mut c,
        json!({"op":"subscribe","id":4,"symbols":["BTC-*","ETH-*"]}),
    )
    .await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    // The same patterns again are not new.
    let ok = send(&mut c, json!({"op":"subscribe","id":5,"symbols":["ETH-*"]})).await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    // A pattern that matches nothing is held all the same.
    let e = send(&mut c, json!({"op":"subscribe","id":6,"symbols":["ZZZ-*"]})).await;
    assert_eq!(e["code"], "too_many_symbols", "a third pattern: {e}");
    run.shutdown().await;
}

const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

#[tokio::test]
async fn token_claims_restrict_what_a_pattern_matches_without_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, SECRET).unwrap();
    let run = start(Settings {
        jwt_secret_file: Some(path),
        ..settings()
    })
    .await;
    let claims = Claims {
        sub: "dash".into(),
        exp: auth::expiry_in(Duration::from_secs(60)),
        symbols: Some(vec!["BTC-*".into(), "AAPL".into()]),
        roles: None,
    };
    let token = auth::issue(SECRET, &claims).unwrap();
    let mut c = Client::connect_path(run.addr, &format!("/v1/ws?token={token}")).await;
    assert_eq!(c.next().await["type"], "welcome");
    let ok = send(&mut c, json!({"op":"subscribe","symbols":["*"]})).await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    let mut want = served(&run, "BTC-");
    want.push("AAPL".into());
    let mut got = strings(&ok["symbols"]);
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let ok =
        subscribed_once_the_bus_is_up(&mut c, json!({"op":"subscribe","symbols":["ETH-*"]})).await;
    assert_eq!(ok["symbols"], json!([]), "matches nothing it may see: {ok}");
    // A symbol named outside the claims is still refused by name.
    let e = send(
        &mut c,
        json!({"op":"subscribe","symbols":["ETH-USD","ETH-*"]}),
    )
    .await;
    assert_eq!(
        (e["code"].as_str(), &e["symbols"]),
        (Some("forbidden"), &json!(["ETH-USD"]))
    );
    assert_eq!(c.next().await["type"], "subscribed");
    run.shutdown().await;
}

/// Sends `body` until it is answered `subscribed`: a node whose bus link is still
/// coming up refuses with `bad_request` ("try again"), as the protocol says.
async fn subscribed_once_the_bus_is_up(c: &mut Client, body: Value) -> Value {
    for _ in 0..100 {
        let m = send(c, body.clone()).await;
        if m["type"] == "subscribed" {
            return m;
        }
        let why = m["message"].as_str().unwrap_or_default();
        assert!(why.contains("try again"), "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the bus never came up");
}

async fn redis_node(cfg: &RedisConfig, name: &str) -> Running {
    start(Settings {
        redis: Some(cfg.clone()),
        node: name.into(),
        ..settings()
    })
    .await
}

/// Reads `n` tick or snapshot messages: (symbol, type, seq) of each, in order.
async fn data(c: &mut Client, n: usize) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = c.next().await;
        if m["type"] == "tick" || m["type"] == "snapshot" {
            let s = |k: &str| m[k].as_str().unwrap().to_owned();
            out.push((s("symbol"), s("type"), m["seq"].as_u64().unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_redis_a_node_watches_what_a_pattern_matches_and_late_symbols_join() {
    let redis = RedisServer::start();
    let cfg = fast(RedisConfig::single(&redis.url()));
    let a = redis_node(&cfg, "node-a").await;
    let (mut c, _) = Client::ready(a.addr).await;
    let ok =
        subscribed_once_the_bus_is_up(&mut c, json!({"op":"subscribe","symbols":["ETH-*"]})).await;
    let eth = served(&a, "ETH-");
    assert_eq!(strings(&ok["symbols"]), eth);
    let mut channels = redis.strings(&["PUBSUB", "CHANNELS", "tickstream:tick:*"]);
    channels.sort();
    let mut want: Vec<String> = eth
        .iter()
        .map(|s| format!("tickstream:tick:{{{s}}}"))
        .collect();
    want.sort();
    assert_eq!(channels, want);
    // A feed publishing a symbol for the first time: the client gets its snapshot.
    let p = RedisPublisher::connect(&cfg, "feed-1").await.unwrap();
    for seq in 1..=3 {
        p.publish(common::tick("ETH-EUR", "e1", seq)).unwrap();
    }
    let got = data(&mut c, 3).await;
    let want: Vec<(String, String, u64)> = [("snapshot", 1), ("tick", 2), ("tick", 3)]
        .iter()
        .map(|(t, s)| ("ETH-EUR".to_owned(), t.to_string(), *s))
        .collect();
    assert_eq!(got, want);
    let off = send(&mut c, json!({"op":"unsubscribe","symbols":["ETH-*"]})).await;
    assert_eq!(off["patterns"], json!(["ETH-*"]));
    eventually("the node unwatches every matched channel", || {
        redis
            .strings(&["PUBSUB", "CHANNELS", "tickstream:tick:*"])
            .is_empty()
    })
    .await;
    p.close().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_redis_cluster_a_pattern_spans_every_shard() {
    let cluster = RedisCluster::start(3);
    let cfg = fast(RedisConfig::cluster(&cluster.urls()));
    let a = redis_node(&cfg, "node-a").await;
    // A one-letter prefix whose symbols live on all three shards.
    let (prefix, matched) = ('A'..='Z')
        .map(|l| {
            let p = l.to_string();
            let m = served(&a, &p);
            (p, m)
        })
        .find(|(_, m)| {
            let shards: HashSet<u16> = m.iter().map(|s| cluster.owner(s).port).collect();
            shards.len() == 3 && m.len() <= 60
        })
        .expect("a prefix spread over the three shards");
    let (mut c, _) = Client::ready(a.addr).await;
    let body = json!({"op":"subscribe","symbols":[format!("{prefix}*")]});
    let ok = subscribed_once_the_bus_is_up(&mut c, body).await;
    assert_eq!(strings(&ok["symbols"]), matched);
    let sharded = cluster.shard_channels();
    let mut want: Vec<String> = matched
        .iter()
        .map(|s| format!("tickstream:tick:{{{s}}}"))
        .collect();
    want.sort();
    assert_eq!(sharded, want);
    // One symbol per shard gets its first values now.
    let mut per_shard: HashMap<u16, String> = HashMap::new();
    for s in &matched {
        per_shard
            .entry(cluster.owner(s).port)
            .or_insert_with(|| s.clone());
    }
    let p = RedisPublisher::connect(&cfg, "feed-1").await.unwrap();
    for s in per_shard.values() {
        for seq in 1..=2 {
            p.publish(common::tick(s, "e1", seq)).unwrap();
        }
    }
    let mut got = data(&mut c, 6).await;
    got.sort();
    let mut want: Vec<(String, String, u64)> = per_shard
        .values()
        .flat_map(|s| {
            [
                (s.clone(), "snapshot".to_owned(), 1),
                (s.clone(), "tick".to_owned(), 2),
            ]
        })
        .collect();
    want.sort();
    assert_eq!(got, want);
    drop(c);
    eventually("every shard channel released", || {
        cluster.shard_channels().is_empty()
    })
    .await;
    p.close().await;
    a.shutdown().await;
}
