//! The Redis bus against a real `redis-server` (and a real three-master Redis Cluster):
//! nodes in this process, each with its own connection to Redis.

mod common;
#[path = "common/redis.rs"]
mod env;

use std::time::Duration;

use futures_util::SinkExt;

use common::{eventually, http_get, Client, WAIT};
use env::{fast, RedisCluster, RedisServer};
use serde_json::Value;
use tickstream::bus::{RedisConfig, RedisPublisher};
use tickstream::config::{FeedSpec, Settings};
use tickstream::server::Running;

fn node_settings(cfg: &RedisConfig, name: &str) -> Settings {
    Settings {
        redis: Some(cfg.clone()),
        node: name.into(),
        ..common::settings()
    }
}

async fn node(cfg: &RedisConfig, name: &str) -> Running {
    common::start(node_settings(cfg, name)).await
}

async fn publisher(cfg: &RedisConfig, id: &str) -> RedisPublisher {
    RedisPublisher::connect(cfg, id)
        .await
        .expect("publisher connects")
}

fn publish(p: &RedisPublisher, symbol: &str, epoch: &str, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        p.publish(common::tick(symbol, epoch, seq)).unwrap();
    }
}

async fn subscribe(c: &mut Client, body: &str) {
    c.send(body).await;
    let m = c.next().await;
    assert_eq!(m["type"], "subscribed", "{m}");
}

/// The seq of the first snapshot or tick (a subscription made before the feed's first
/// tick has no snapshot).
async fn first_seq(c: &mut Client) -> u64 {
    let m = c.next().await;
    assert!(m["type"] == "snapshot" || m["type"] == "tick", "{m}");
    m["seq"].as_u64().unwrap()
}

/// Reads ticks of `symbol` until `last`, asserting they come one by one from `first`.
async fn expect_run(c: &mut Client, symbol: &str, first: u64, last: u64) {
    let mut want = first;
    while want <= last {
        let m = c.next().await;
        assert_eq!(m["type"], "tick", "expected tick {want}: {m}");
        assert_eq!(m["symbol"], symbol, "{m}");
        assert_eq!(m["seq"], want, "{m}");
        want += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_ingested_on_one_node_reaches_clients_of_another_in_order() {
    let redis = RedisServer::start();
    let cfg = fast(RedisConfig::single(&redis.url()));
    let dir = tempfile::tempdir().unwrap();
    let universe = dir.path().join("u.csv");
    std::fs::write(
        &universe,
        "symbol,class,price,volatility,activity\nAAA,equity,100,0.2,1\nBBB,equity,50,0.2,1\n",
    )
    .unwrap();
    let b = common::start(Settings {
        feed: FeedSpec::Synthetic,
        rate: 400.0,
        universe: Some(universe.clone()),
        ..node_settings(&cfg, "node-b")
    })
    .await;
    let a = common::start(Settings {
        universe: Some(universe),
        ..node_settings(&cfg, "node-a")
    })
    .await;
    let (mut ca, _) = Client::ready(a.addr).await;
    let (mut cb, _) = Client::ready(b.addr).await;
    subscribe(&mut ca, r#"{"op":"subscribe","symbols":["AAA"]}"#).await;
    subscribe(&mut cb, r#"{"op":"subscribe","symbols":["AAA"]}"#).await;
    let from = first_seq(&mut ca).await;
    expect_run(&mut ca, "AAA", from + 1, from + 100).await;
    // Node B's own clients get the same ticks, through Redis too.
    let fb = first_seq(&mut cb).await;
    expect_run(&mut cb, "AAA", fb + 1, fb + 20).await;
    // Nothing reaches the hub twice but, at most, the one tick a subscription's catch-up
    // (`last:`, read on another connection) and the channel both bring: the hub drops it.
    let duplicates = b
        .node
        .hub
        .stats()
        .duplicates
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(duplicates <= 1, "{duplicates} duplicates");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_is_counted_batched_and_released() {
    let redis = RedisServer::start();
    let cfg = fast(RedisConfig::single(&redis.url()));
    let a = node(&cfg, "node-a").await;
    let symbols: Vec<String> = a
        .node
        .hub
        .symbols()
        .iter()
        .take(500)
        .map(|s| s.to_string())
        .collect();
    let (mut c1, _) = Client::ready(a.addr).await;
    let (mut c2, _) = Client::ready(a.addr).await;
    redis.cmd(&["CONFIG", "RESETSTAT"]);
    let body = serde_json::json!({"op":"subscribe","symbols":symbols}).to_string();
    subscribe(&mut c1, &body).await;
    let channels = redis.strings(&["PUBSUB", "CHANNELS", "tickstream:tick:*"]);
    assert_eq!(channels.len(), 500);
    let stats = match redis.cmd(&["INFO", "commandstats"]) {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        v => panic!("{v:?}"),
    };
    let line = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_subscribe:"))
        .expect("subscribe was called");
    assert!(
        line.starts_with("cmdstat_subscribe:calls=1,"),
        "one SUBSCRIBE for 500 symbols: {line}"
    );

    subscribe(&mut c2, r#"{"op":"subscribe","symbols":["AAPL"]}"#).await;
    // One connection carries every subscription of the node, whatever the clients.
    let clients = match redis.cmd(&["CLIENT", "LIST"]) {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        v => panic!("{v:?}"),
    };
    // (One more channel: the feeds' heartbeats.)
    let subscribers: Vec<&str> = clients.lines().filter(|l| !l.contains(" sub=0 ")).collect();
    assert_eq!(subscribers.len(), 1, "{clients}");
    assert!(subscribers[0].contains(" sub=501 "), "{clients}");
    assert!(
        subscribers[0].contains(" name=tickstream-subscriber "),
        "{clients}"
    );
    c1.send(r#"{"op":"unsubscribe","symbols":["AAPL"]}"#).await;
    assert_eq!(c1.until("unsubscribed").await["type"], "unsubscribed");
    let chan = "tickstream:tick:{AAPL}".to_string();
    assert!(
        redis
            .strings(&["PUBSUB", "CHANNELS", "tickstream:tick:*"])
            .contains(&chan),
        "c2 still wants AAPL"
    );
    c2.send(r#"{"op":"unsubscribe","symbols":["AAPL"]}"#).await;
    assert_eq!(c2.until("unsubscribed").await["type"], "unsubscribed");
    // The bus lets go of a channel after the reply, as it reconciles the node's interest.
    eventually("the last local unsubscribe removes the channel", || {
        !redis
            .strings(&["PUBSUB", "CHANNELS", "tickstream:tick:*"])
            .contains(&chan)
    })
    .await;
    // Closing the connection releases the rest.
    drop(c1);
    eventually("every channel released", || {
        redis
            .strings(&["PUBSUB", "CHANNELS", "tickstream:tick:*"])
            .is_empty()
    })
    .await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_resume_come_from_redis_on_a_node_that_never_saw_the_symbol() {
    let redis = RedisServer::start();
    let mut cfg = fast(RedisConfig::single(&redis.url()));
    cfg.history = 30;
    let p = publisher(&cfg, "feed-1").await;
    publish(&p, "AAPL", "e1", 1..=50);
    eventually("50 ticks written", || {
        p.stats()
            .published
            .load(std::sync::atomic::Ordering::Relaxed)
            == 50
    })
    .await;
    let a = node(&cfg, "node-a").await;
    let (mut c, _) = Client::ready(a.addr).await;
    subscribe(&mut c, r#"{"op":"subscribe","symbols":["AAPL"]}"#).await;
    let snap = c.next().await;
    assert_eq!(snap["type"], "snapshot", "{snap}");
    assert_eq!(snap["seq"], 50);
    assert_eq!(snap["epoch"], "e1");

    // A client that held up to 20 on another node moves to a fresh node C.
    let node_c = node(&cfg, "node-c").await;
    let (mut m, _) = Client::ready(node_c.addr).await;
    subscribe(
        &mut m,
        r#"{"op":"subscribe","symbols":["AAPL"],"resume":{"AAPL":{"epoch":"e1","seq":20}}}"#,
    )
    .await;
    expect_run(&mut m, "AAPL", 21, 50).await;
    publish(&p, "AAPL", "e1", 51..=60);
    expect_run(&mut m, "AAPL", 51, 60).await;
    expect_run(&mut c, "AAPL", 51, 60).await;

    // What Redis no longer holds (it keeps 30) is a gap, then a snapshot.
    let node_d = node(&cfg, "node-d").await;
    let (mut old, _) = Client::ready(node_d.addr).await;
    subscribe(
        &mut old,
        r#"{"op":"subscribe","symbols":["AAPL"],"resume":{"AAPL":5}}"#,
    )
    .await;
    let g = old.next().await;
    assert_eq!(g["type"], "gap", "{g}");
    assert_eq!(g["reason"], "expired");
    assert_eq!(g["from"], 6);
    let s = old.next().await;
    assert_eq!(s["type"], "snapshot", "{s}");
    assert_eq!(s["seq"], 60);
    p.close().await;
    for n in [a, node_c, node_d] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_gives_gap_and_snapshot_then_live_ticks() {
    let mut redis = RedisServer::start();
    let cfg = fast(RedisConfig::single(&redis.url()));
    let a = node(&cfg, "node-a").await;
    let p = std::sync::Arc::new(publisher(&cfg, "feed-1").await);
    let stop = tokio_util::sync::CancellationToken::new();
    let feeder = {
        let p = p.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            while !stop.is_cancelled() {
                seq += 1;
                p.publish(common::tick("AAPL", "e1", seq)).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let (mut c, _) = Client::ready(a.addr).await;
    subscribe(&mut c, r#"{"op":"subscribe","symbols":["AAPL"]}"#).await;
    let first = c.until("tick").await;
    let s0 = first["seq"].as_u64().unwrap();
    expect_run(&mut c, "AAPL", s0 + 1, s0 + 10).await;
    assert_eq!(http_get(a.addr, "/healthz").await.0, 200);
    redis.kill();
    let mut down = false;
    for _ in 0..300 {
        if http_get(a.addr, "/healthz").await.0 == 503 {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(down, "/healthz answers 503 while Redis is down");
    // The client stays connected meanwhile.
    c.send(r#"{"op":"ping","id":1}"#).await;
    let mut before = Vec::new();
    let pong = loop {
        let m = c.next().await;
        if m["type"] == "pong" {
            break m;
        }
        before.push(m);
    };
    assert_eq!(pong["id"], 1);
    redis.restart();
    let (gap, s) =
        expect_upstream_gap_then_live(&mut c, "AAPL", Duration::from_secs(20), before).await;
    assert_eq!(gap["to"].as_u64().unwrap(), s - 1);
    eventually_async(|| async { http_get(a.addr, "/healthz").await.0 == 200 }).await;
    stop.cancel();
    feeder.await.unwrap();
    p.close().await;
    a.shutdown().await;
}

/// After Redis (or a shard) went away and came back (`read`: what the client read
/// since, first): `status` stale (reason `bus`) before anything else of the symbol, then a `gap` with reason `upstream`, a
/// `snapshot`, `status` live, then ten live ticks in order. Returns the gap and the
/// snapshot's seq.
async fn expect_upstream_gap_then_live(
    c: &mut Client,
    symbol: &str,
    wait: Duration,
    read: Vec<Value>,
) -> (Value, u64) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut stale = None;
    let mut read = read.into_iter();
    let gap = loop {
        let m = match read.next() {
            Some(m) => m,
            None => tokio::time::timeout_at(deadline, c.next())
                .await
                .expect("a gap after Redis came back"),
        };
        if m["type"] == "status" {
            assert!(stale.is_none(), "one stale status: {m}");
            stale = Some(m);
            continue;
        }
        if m["type"] == "gap" {
            break m;
        }
        assert!(
            stale.is_none(),
            "nothing but the return after the stale status: {m}"
        );
    };
    let stale = stale.expect("the loss was announced before the return");
    assert_eq!(
        (&stale["symbol"], &stale["state"], &stale["reason"]),
        (
            &Value::from(symbol),
            &Value::from("stale"),
            &Value::from("bus")
        ),
        "{stale}"
    );
    assert_eq!(gap["reason"], "upstream", "{gap}");
    let snap = c.next().await;
    assert_eq!(snap["type"], "snapshot", "{snap}");
    let live = c.next().await;
    assert_eq!(
        (&live["type"], &live["symbol"], &live["state"]),
        (
            &Value::from("status"),
            &Value::from(symbol),
            &Value::from("live")
        ),
        "{live}"
    );
    assert!(live.get("reason").is_none(), "{live}");
    let s = snap["seq"].as_u64().unwrap();
    expect_run(c, symbol, s + 1, s + 10).await;
    (gap, s)
}

async fn eventually_async<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_fails_fast_and_a_failed_subscribe_rolls_back() {
    let port = env::free_port(false);
    let cfg = fast(RedisConfig::single(&format!("redis://127.0.0.1:{port}")));
    let started = std::time::Instant::now();
    let err = tickstream::server::start(node_settings(&cfg, "n"))
        .await
        .err()
        .expect("refuses to start");
    assert!(
        err.to_string().contains("cannot reach Redis at 127.0.0.1:"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut redis = RedisServer::start();
    let cfg = fast(RedisConfig::single(&redis.url()));
    let a = node(&cfg, "node-a").await;
    let (mut c, _) = Client::ready(a.addr).await;
    redis.kill();
    eventually_async(|| async { http_get(a.addr, "/healthz").await.0 == 503 }).await;
    c.send(r#"{"op":"subscribe","id":3,"symbols":["AAPL"]}"#)
        .await;
    let e = c.next().await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["id"], 3);
    c.send(r#"{"op":"list","id":4}"#).await;
    let l = c.next().await;
    assert_eq!(
        l["symbols"],
        Value::Array(vec![]),
        "nothing was subscribed: {l}"
    );
    redis.restart();
    eventually_async(|| async { http_get(a.addr, "/healthz").await.0 == 200 }).await;
    subscribe(&mut c, r#"{"op":"subscribe","symbols":["AAPL"]}"#).await;
    assert_eq!(
        redis.strings(&["PUBSUB", "CHANNELS", "tickstream:tick:*"]),
        vec!["tickstream:tick:{AAPL}".to_string()]
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_feed_on_the_same_symbol_is_refused() {
    let redis = RedisServer::start();
    let cfg = fast(RedisConfig::single(&redis.url()));
    let p1 = publisher(&cfg, "feed-1").await;
    let p2 = publisher(&cfg, "feed-2").await;
    publish(&p1, "AAPL", "e1", 1..=3);
    eventually("p1 wrote", || {
        p1.stats()
            .published
            .load(std::sync::atomic::Ordering::Relaxed)
            == 3
    })
    .await;
    publish(&p2, "AAPL", "e2", 1..=3);
    publish(&p2, "MSFT", "e2", 1..=1);
    eventually("p2 noticed", || !p2.conflicts().is_empty()).await;
    let c = &p2.conflicts()[0];
    assert_eq!(&*c.symbol, "AAPL");
    assert_eq!(c.holder, "feed-1");
    eventually("p2 published MSFT", || {
        p2.stats()
            .published
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    assert_eq!(
        p2.stats()
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    let last = match redis.cmd(&["GET", "tickstream:last:{AAPL}"]) {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        v => panic!("{v:?}"),
    };
    assert!(last.contains(r#""epoch":"e1""#), "{last}");
    assert_eq!(redis.strings(&["KEYS", "tickstream:owner:*"]).len(), 2);
    p1.close().await;
    p2.close().await;
    // Leases are released on close.
    assert!(redis.strings(&["KEYS", "tickstream:owner:*"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_master_cluster_carries_ticks_for_symbols_on_every_shard() {
    let cluster = RedisCluster::start(3);
    let cfg = fast(RedisConfig::cluster(&cluster.urls()));
    let a = node(&cfg, "node-a").await;
    // One symbol per shard.
    let mut picked: Vec<(String, u16)> = Vec::new();
    for s in a.node.hub.symbols() {
        let owner = cluster.owner(&s).port;
        if !picked.iter().any(|(_, p)| *p == owner) {
            picked.push((s.to_string(), owner));
        }
        if picked.len() == 3 {
            break;
        }
    }
    assert_eq!(picked.len(), 3);
    let names: Vec<&str> = picked.iter().map(|(s, _)| s.as_str()).collect();
    let (mut c, _) = Client::ready(a.addr).await;
    subscribe(
        &mut c,
        &serde_json::json!({"op":"subscribe","symbols":names}).to_string(),
    )
    .await;
    for (s, _) in &picked {
        let owner = cluster.owner(s);
        assert_eq!(
            owner.strings(&["PUBSUB", "SHARDCHANNELS", "*"]),
            vec![format!("tickstream:tick:{{{s}}}")]
        );
    }
    let p = publisher(&cfg, "feed-1").await;
    for (s, _) in &picked {
        publish(&p, s, "e1", 1..=20);
    }
    let mut next: std::collections::HashMap<String, u64> =
        picked.iter().map(|(s, _)| (s.clone(), 1)).collect();
    while next.values().any(|n| *n <= 20) {
        let m = c.next().await;
        // Each symbol's first value comes as its snapshot, then ticks.
        if m["type"] != "tick" && m["type"] != "snapshot" {
            continue;
        }
        let s = m["symbol"].as_str().unwrap().to_owned();
        let want = next.get_mut(&s).unwrap();
        assert_eq!(
            m["type"],
            if *want == 1 { "snapshot" } else { "tick" },
            "{m}"
        );
        assert_eq!(m["seq"].as_u64().unwrap(), *want, "{m}");
        *want += 1;
    }
    // Resume on another node from the shard's stream.
    let b = node(&cfg, "node-b").await;
    let (mut m, _) = Client::ready(b.addr).await;
    let (s0, _) = &picked[2];
    subscribe(
        &mut m,
        &serde_json::json!({"op":"subscribe","symbols":[s0],"resume":{s0: 15}}).to_string(),
    )
    .await;
    expect_run(&mut m, s0, 16, 20).await;
    c.send(&serde_json::json!({"op":"unsubscribe","symbols":names}).to_string())
        .await;
    c.until("unsubscribed").await;
    let owner = cluster.owner(s0);
    assert_eq!(
        owner.strings(&["PUBSUB", "SHARDCHANNELS", "*"]),
        vec![format!("tickstream:tick:{{{s0}}}")],
        "node B still wants it"
    );
    drop(m);
    eventually("every shard channel released", || {
        cluster.shard_channels().is_empty()
    })
    .await;
    p.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_shard_restart_gives_gap_and_snapshot_then_live_ticks() {
    let mut cluster = RedisCluster::start(3);
    let cfg = fast(RedisConfig::cluster(&cluster.urls()));
    let a = node(&cfg, "node-a").await;
    let symbol = "AAPL";
    let owner_port = cluster.owner(symbol).port;
    let p = std::sync::Arc::new(publisher(&cfg, "feed-1").await);
    let stop = tokio_util::sync::CancellationToken::new();
    let feeder = {
        let p = p.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            while !stop.is_cancelled() {
                seq += 1;
                p.publish(common::tick(symbol, "e1", seq)).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let (mut c, _) = Client::ready(a.addr).await;
    subscribe(&mut c, r#"{"op":"subscribe","symbols":["AAPL"]}"#).await;
    let s0 = c.until("tick").await["seq"].as_u64().unwrap();
    expect_run(&mut c, symbol, s0 + 1, s0 + 5).await;

    let shard = cluster
        .nodes
        .iter_mut()
        .find(|n| n.port == owner_port)
        .unwrap();
    shard.kill();
    eventually_async(|| async { http_get(a.addr, "/healthz").await.0 == 503 }).await;
    shard.restart();
    expect_upstream_gap_then_live(&mut c, symbol, Duration::from_secs(30), Vec::new()).await;
    stop.cancel();
    feeder.await.unwrap();
    p.close().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_commands_publish_into_redis_and_a_second_feed_is_refused() {
    let redis = RedisServer::start();
    let cfg = fast(RedisConfig::single(&redis.url()));
    let a = node(&cfg, "node-a").await;
    let mut c = Client::ready(a.addr).await.0;
    subscribe(
        &mut c,
        r#"{"op":"subscribe","symbols":["AAPL"],"snapshot":false}"#,
    )
    .await;

    // A replay published into Redis reaches a client of a node, in recorded order.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aapl.ndjson");
    let mut w = tickstream::feed::recording::Writer::create(&file, "test").unwrap();
    for seq in 1..=50 {
        w.write_tick(&common::tick("AAPL", "rec", seq)).unwrap();
    }
    w.finish().unwrap();
    let bin = env!("CARGO_BIN_EXE_tickstream");
    let replay = tokio::process::Command::new(bin)
        .args([
            "feed",
            "replay",
            file.to_str().unwrap(),
            "--redis",
            &redis.url(),
            "--speed",
            "max",
        ])
        .args(["--feed-id", "replayer"])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), replay)
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect_run(&mut c, "AAPL", 1, 50).await;

    // `feed synth --redis` publishes the universe it is given; while it holds AAPL, a
    // second feed publishing AAPL is refused and says so.
    let synth = tokio::process::Command::new(bin)
        .args([
            "feed",
            "synth",
            "--redis",
            &redis.url(),
            "--symbols",
            "AAPL,MSFT",
        ])
        .args(["--rate", "200", "--duration", "3s", "--feed-id", "synth-1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let owner = cfg.prefix.clone() + "owner:{AAPL}";
    eventually(
        "synth-1 holds AAPL",
        || matches!(redis.cmd(&["GET", &owner]), redis::Value::BulkString(b) if b == b"synth-1"),
    )
    .await;
    let second = tokio::process::Command::new(bin)
        .args([
            "feed",
            "synth",
            "--redis",
            &redis.url(),
            "--symbols",
            "AAPL",
        ])
        .args(["--rate", "100", "--duration", "1s", "--feed-id", "synth-2"])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second feed must fail");
    assert!(
        err.contains("synth-1"),
        "names the feed holding AAPL: {err}"
    );
    let out = tokio::time::timeout(Duration::from_secs(20), synth.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("0 refused"), "{summary}");
    a.shutdown().await;
}

/// Ticks published through `p` reach a client of `node`.
async fn ticks_flow(node: &Running, p: &RedisPublisher, symbol: &str) {
    let mut c = Client::ready(node.addr).await.0;
    let body = format!(r#"{{"op":"subscribe","symbols":["{symbol}"],"snapshot":false}}"#);
    subscribe(&mut c, &body).await;
    publish(p, symbol, "acl", 1..=5);
    expect_run(&mut c, symbol, 1, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_with_its_password_is_served_and_a_wrong_one_is_refused_at_start() {
    // A user limited to the keys and channels under the prefix: the bus needs no more.
    let redis = RedisServer::start_with(&[
        "--user",
        "feed",
        "on",
        ">s3cret",
        "~tickstream:*",
        "&tickstream:*",
        "+@all",
    ]);
    let url = format!("redis://feed:s3cret@127.0.0.1:{}", redis.port);
    let cfg = fast(RedisConfig::single(&url));
    let a = node(&cfg, "node-a").await;
    let p = publisher(&cfg, "feed-acl").await;
    ticks_flow(&a, &p, "AAPL").await;
    p.close().await;

    let wrong = fast(RedisConfig::single(&format!(
        "redis://feed:nope@127.0.0.1:{}",
        redis.port
    )));
    let err = tickstream::server::start(node_settings(&wrong, "n"))
        .await
        .err()
        .expect("a wrong password stops the node at start-up")
        .to_string();
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("nope"), "the password is not shown: {err}");
    let err = RedisPublisher::connect(&wrong, "f")
        .await
        .err()
        .expect("and the publisher")
        .to_string();
    assert!(err.contains("refused the credentials"), "{err}");

    // The feed commands take the same URL: the right user publishes, a wrong one fails.
    let bin = env!("CARGO_BIN_EXE_tickstream");
    let mut c = Client::ready(a.addr).await.0;
    subscribe(
        &mut c,
        r#"{"op":"subscribe","symbols":["MSFT"],"snapshot":false}"#,
    )
    .await;
    let out = tokio::process::Command::new(bin)
        .args(["feed", "synth", "--symbols", "MSFT", "--rate", "200"])
        .args(["--duration", "1s", "--feed-id", "synth-acl"])
        .env("TICKSTREAM_REDIS", &url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = c.next().await;
    assert_eq!((&m["type"], &m["symbol"]), (&"tick".into(), &"MSFT".into()));
    let bad_url = format!("redis://feed:nope@127.0.0.1:{}", redis.port);
    let out = tokio::process::Command::new(bin)
        .args(["feed", "synth", "--redis", &bad_url, "--duration", "1s"])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("refused the credentials"), "{err}");
    a.shutdown().await;
}

/// A `redis-server` that speaks only TLS, with a certificate from `scripts/dev-cert`.
struct TlsRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let script = env::repo_path("scripts/dev-cert");
        let out = std::process::Command::new(script)
            .arg(dir.path())
            .output()
            .expect("scripts/dev-cert runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = env::free_port(false);
        let p = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args([
                "--tls-cert-file",
                &p("server.pem"),
                "--tls-key-file",
                &p("server.key"),
            ])
            .args([
                "--tls-ca-cert-file",
                &p("ca.pem"),
                "--tls-auth-clients",
                "no",
            ])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args([
                "--protected-mode",
                "no",
                "--dir",
                &p(""),
                "--logfile",
                &p("redis.log"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "TLS redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis { port, dir, child }
    }
    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_ca_file_carries_ticks_and_an_unknown_ca_is_refused() {
    let redis = TlsRedis::start();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    // A TLS handshake in a debug build on a busy machine can take longer than `fast`'s
    // 500ms timeout.
    let tls = |mut c: RedisConfig| {
        c.timeout = Duration::from_secs(5);
        c
    };
    let mut cfg = tls(fast(RedisConfig::single(&url)));
    cfg.ca_file = Some(redis.ca());
    let a = node(&cfg, "node-tls").await;
    let p = publisher(&cfg, "feed-tls").await;
    ticks_flow(&a, &p, "AAPL").await;
    p.close().await;

    // Without the CA the server's certificate is not trusted: a clear error at start-up.
    let untrusted = tls(fast(RedisConfig::single(&url)));
    let err = RedisPublisher::connect(&untrusted, "f")
        .await
        .err()
        .expect("an unknown CA is refused")
        .to_string();
    assert!(err.contains("--redis-ca-file"), "{err}");

    // `feed synth` over TLS with --redis-ca-file.
    let mut c = Client::ready(a.addr).await.0;
    subscribe(
        &mut c,
        r#"{"op":"subscribe","symbols":["MSFT"],"snapshot":false}"#,
    )
    .await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .args(["feed", "synth", "--redis", &url, "--symbols", "MSFT"])
        .args(["--redis-ca-file", redis.ca().to_str().unwrap()])
        .args([
            "--rate",
            "200",
            "--duration",
            "1s",
            "--feed-id",
            "synth-tls",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = c.next().await;
    assert_eq!((&m["type"], &m["symbol"]), (&"tick".into(), &"MSFT".into()));
    a.shutdown().await;
}

/// Clients that subscribe through Redis and never read: their writers stall, time out
/// and end while later subscribes of theirs wait for room; once they are all closed,
/// the node holds no symbol and Redis carries none of its channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_leave_no_channel_subscribed() {
    let redis = RedisServer::start();
    let cfg = fast(RedisConfig::single(&redis.url()));
    let settings = Settings {
        queue: 8,
        send_timeout: Duration::from_millis(300),
        send_buffer: Some(4096),
        ..node_settings(&cfg, "node-a")
    };
    let a = common::start(settings).await;
    let symbols: Vec<String> = a
        .node
        .hub
        .symbols()
        .iter()
        .take(60)
        .map(|s| s.to_string())
        .collect();
    let p = std::sync::Arc::new(publisher(&cfg, "feed-1").await);
    let stop = tokio_util::sync::CancellationToken::new();
    let feeder = {
        let (p, stop, symbols) = (p.clone(), stop.clone(), symbols.clone());
        tokio::spawn(async move {
            let mut seq = 0;
            while !stop.is_cancelled() {
                seq += 1;
                for s in &symbols {
                    p.publish(common::tick(s, "e1", seq)).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // Each client sends twenty subscribes of three symbols, one every 100 ms, and reads
    // none of the replies: its writer stalls and times out while later subscribes wait
    // for room in its queue.
    let mut clients = Vec::new();
    for _ in 0..20 {
        let symbols = symbols.clone();
        let addr = a.addr;
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            for chunk in symbols.chunks(3) {
                let body = serde_json::json!({"op":"subscribe","symbols":chunk}).to_string();
                if c.ws
                    .send(tokio_tungstenite::tungstenite::Message::text(body))
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    eventually("the node holds no symbol", || {
        a.node.interest().watched() == 0
    })
    .await;
    eventually("Redis carries none of its channels", || {
        redis
            .strings(&["PUBSUB", "CHANNELS", "tickstream:tick:*"])
            .is_empty()
    })
    .await;
    for s in &symbols {
        assert_eq!(a.node.hub.subscriber_count(s), 0, "{s}");
    }
    stop.cancel();
    feeder.await.unwrap();
    p.close().await;
    a.shutdown().await;
}

/// A feed process killed without a word: its symbols' clients are told they are stale
/// within two seconds (three missed heartbeats), not after the 10 s of the leases; the
/// same feed restarted under its id takes its symbols back at once (a new epoch: `gap`
/// reset, `snapshot`, then `status` live).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_feed_is_announced_stale_and_its_restart_takes_its_symbols_back() {
    let redis = RedisServer::start();
    let cfg = fast(RedisConfig::single(&redis.url()));
    let a = node(&cfg, "node-a").await;
    let bin = env!("CARGO_BIN_EXE_tickstream");
    let feed = || {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["feed", "synth", "--redis", &redis.url()])
            .args([
                "--symbols",
                "AAPL,MSFT",
                "--rate",
                "400",
                "--feed-id",
                "synth-1",
            ])
            .args(["--redis-lease", "10s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        env::Proc {
            child: Some(cmd.spawn().expect("the feed starts")),
            port: 0,
            name: "feed".into(),
        }
    };
    let mut first = feed();
    let (mut c, _) = Client::ready(a.addr).await;
    subscribe(&mut c, r#"{"op":"subscribe","symbols":["AAPL"]}"#).await;
    let epoch = c.until("tick").await["epoch"].clone();
    first.kill9();
    let killed = std::time::Instant::now();
    let stale = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), c.next())
            .await
            .expect("the loss is announced");
        if m["type"] == "status" {
            break m;
        }
        assert_eq!(m["type"], "tick", "{m}");
    };
    let took = killed.elapsed();
    eprintln!("feed killed: stale after {} ms", took.as_millis());
    assert_eq!(
        (&stale["state"], &stale["reason"]),
        (&Value::from("stale"), &Value::from("feed"))
    );
    assert!(
        took < Duration::from_secs(2),
        "announced within 2 s: {took:?}"
    );
    assert!(
        c.try_next(Duration::from_millis(300)).await.is_none(),
        "nothing else while the feed is gone"
    );
    let _second = feed();
    let restarted = std::time::Instant::now();
    let gap = c.until("gap").await;
    assert_eq!(gap["reason"], "reset", "{gap}");
    let snap = c.next().await;
    assert_eq!(snap["type"], "snapshot", "{snap}");
    assert_ne!(snap["epoch"], epoch, "a new epoch");
    let live = c.next().await;
    assert_eq!(
        (&live["type"], &live["state"]),
        (&Value::from("status"), &Value::from("live"))
    );
    let back = restarted.elapsed();
    eprintln!("feed restarted: live again after {} ms", back.as_millis());
    assert!(
        back < Duration::from_secs(5),
        "not after the lease's 10 s: {back:?}"
    );
    a.shutdown().await;
}

/// What a node reads from Redis is checked like what a publisher pushes: a tick on
/// another symbol's channel, a `seq` of 0 or past 2⁵³−1, a payload over
/// `--redis-max-payload` and one that is not a tick are dropped and counted by reason;
/// the clients see only the good tick after them, and the link stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_from_redis_are_checked_and_bad_ones_counted() {
    let redis = RedisServer::start();
    let mut cfg = fast(RedisConfig::single(&redis.url()));
    cfg.max_payload = 4096;
    let a = node(&cfg, "node-a").await;
    let (mut c, _) = Client::ready(a.addr).await;
    subscribe(
        &mut c,
        r#"{"op":"subscribe","symbols":["AAPL"],"snapshot":false}"#,
    )
    .await;
    let ch = "tickstream:tick:{AAPL}";
    let good = |seq: u64| {
        serde_json::to_string(&tickstream::tick::Tick {
            ts: 1,
            ..common::tick("AAPL", "e1", seq)
        })
        .unwrap()
    };
    let bad = [
        good(1).replace("AAPL", "MSFT"),
        good(0),
        good(1).replace(r#""seq":1"#, r#""seq":18446744073709551615"#),
        format!(r#"{{"pad":"{}"}}"#, "x".repeat(5000)),
        "not a tick".to_owned(),
    ];
    for b in &bad {
        redis.cmd(&["PUBLISH", ch, b]);
    }
    redis.cmd(&["PUBLISH", ch, &good(1)]);
    let m = c.next().await;
    assert_eq!(
        (&m["type"], &m["seq"]),
        (&Value::from("tick"), &Value::from(1)),
        "{m}"
    );
    assert!(c.try_next(Duration::from_millis(200)).await.is_none());
    let metrics = http_get(a.addr, "/metrics").await.1;
    for line in [
        r#"tickstream_bus_dropped_total{reason="malformed"} 2"#,
        r#"tickstream_bus_dropped_total{reason="wrong_channel"} 1"#,
        r#"tickstream_bus_dropped_total{reason="refused"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert_eq!(
        http_get(a.addr, "/healthz").await.0,
        200,
        "the link stayed up"
    );
    a.shutdown().await;
}
