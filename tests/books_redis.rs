//! Order books across nodes, through a real `redis-server` and a real three-master Redis
//! Cluster: clients of two nodes rebuild the feed's books exactly (checking `prev_seq`
//! and the checksum at every message) while the feed runs and while a node starts and
//! stops watching; a message lost in Redis is announced as `gap` on the book channel
//! and repaired from the stored snapshot; a lost link makes the books stale, then a
//! `gap` and a fresh `book`.

#[path = "common/book.rs"]
mod book_client;
mod common;
#[path = "common/redis.rs"]
mod env;

use std::collections::HashMap;
use std::time::Duration;

use book_client::*;
use env::{fast, RedisCluster, RedisServer};
use serde_json::{json, Value};
use tickstream::book::Spec;
use tickstream::bus::{RedisConfig, RedisPublisher};
use tickstream::config::Settings;
use tickstream::feed::Generator;
use tickstream::server::Running;

async fn node(cfg: &RedisConfig, name: &str) -> Running {
    common::start(Settings {
        redis: Some(cfg.clone()),
        node: name.into(),
        ..common::settings()
    })
    .await
}

/// Publishes `n` ticks of `g` and their book messages through `p`, in batches of
/// `batch`, `pause` apart.
async fn feed(p: &RedisPublisher, g: &mut Generator, n: u64, batch: u64, pause: Duration) {
    let specs: HashMap<String, Spec> = universe()
        .instruments()
        .iter()
        .map(|i| (i.symbol.to_string(), Spec::new(i.price_decimals() as u8)))
        .collect();
    let mut done = 0;
    while done < n {
        let ticks = g.batch(batch.min(n - done));
        done += ticks.len() as u64;
        for b in g.take_books() {
            p.publish_book(&b, specs[&*b.symbol], 1000).unwrap();
        }
        for t in ticks {
            p.publish(t).unwrap();
        }
        tokio::time::sleep(pause).await;
    }
}

/// Feeds `mirrors` for `quiet`-separated messages; the other messages' types.
async fn types_beside_books(
    r: &mut Reader,
    mirrors: &mut HashMap<String, Mirror>,
    quiet: Duration,
) -> Vec<String> {
    r.drain(mirrors, quiet)
        .await
        .iter()
        .map(|v| v["type"].as_str().unwrap().to_owned())
        .collect()
}

/// A feed publishes books into Redis while clients of node A (depth 50) and node B
/// (depth 10) follow them, and a client of node C makes C stop and start watching the
/// books again and again: every client's books follow without a hole or a repeat, and
/// end as the feed's. Returns the nodes and their clients, still subscribed.
async fn clients_of_several_nodes_rebuild_the_feeds_books(
    cfg: &RedisConfig,
) -> ([Running; 3], Vec<Reader>) {
    let p = RedisPublisher::connect(cfg, "feed-books").await.unwrap();
    let nodes = [
        node(cfg, "node-a").await,
        node(cfg, "node-b").await,
        node(cfg, "node-c").await,
    ];
    let mut g = Generator::new(&universe(), 11, "e1".into()).with_books();
    feed(&p, &mut g, 400, 20, Duration::from_millis(1)).await;
    let symbols: Vec<String> = mirrors().keys().cloned().collect();
    let sub =
        |depth: u32| json!({"op":"subscribe","channel":"book","depth":depth,"symbols":symbols});
    let feeding = tokio::spawn(async move {
        feed(&p, &mut g, 3_000, 20, Duration::from_millis(2)).await;
        p.close().await;
        g
    });
    let mut readers = Vec::new();
    for (n, depth) in [(0, 50), (1, 10)] {
        let mut r = Reader::connect(nodes[n].addr).await;
        subscribed(&mut r, sub(depth)).await;
        readers.push((depth, r, mirrors()));
    }
    let mut c = Reader::connect(nodes[2].addr).await;
    let mut cm = mirrors();
    let unsub = json!({"op":"unsubscribe","channel":"book","symbols":symbols});
    for _ in 0..4 {
        subscribed(&mut c, sub(50)).await;
        let other = types_beside_books(&mut c, &mut cm, Duration::from_millis(150)).await;
        assert!(other.is_empty(), "{other:?}");
        assert!(cm.values().all(|m| m.messages > 0));
        c.send(unsub.clone()).await;
        let mut other = Vec::new();
        for _ in 0..50 {
            other.extend(types_beside_books(&mut c, &mut cm, Duration::from_millis(100)).await);
            if !other.is_empty() {
                break;
            }
        }
        assert_eq!(other, ["unsubscribed"]);
    }
    subscribed(&mut c, sub(50)).await;
    readers.push((50, c, cm));
    let g = feeding.await.unwrap();
    for (depth, r, mirrors) in &mut readers {
        let other = types_beside_books(r, mirrors, Duration::from_millis(600)).await;
        assert!(other.is_empty(), "{other:?}");
        for (symbol, m) in mirrors.iter() {
            let (seq, levels) = g.book(symbol).unwrap();
            assert_eq!(m.seq, seq, "{symbol} at depth {depth}");
            m.assert_window(
                levels,
                *depth as usize,
                &format!("{symbol} at depth {depth}"),
            );
        }
    }
    for n in &nodes {
        for symbol in &symbols {
            let (seq, levels) = g.book(symbol).unwrap();
            let book = n.node.hub.books().current(symbol).unwrap();
            assert_eq!((book.seq, &book.levels), (seq, levels), "the node's book");
        }
    }
    (nodes, readers.into_iter().map(|(_, r, _)| r).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_travel_through_redis_to_every_node() {
    let redis = RedisServer::start();
    let cfg = fast(RedisConfig::single(&redis.url()));
    let (nodes, _clients) = clients_of_several_nodes_rebuild_the_feeds_books(&cfg).await;
    let snap = env::text(&redis.cmd(&["GET", "tickstream:booksnap:{AAPL}"]));
    assert!(snap.starts_with(r#"{"type":"book","symbol":"AAPL","epoch":"e1","seq":"#));
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_travel_through_a_redis_cluster_on_their_symbols_shard() {
    let cluster = RedisCluster::start(3);
    let cfg = fast(RedisConfig::cluster(&cluster.urls()));
    let (nodes, _clients) = clients_of_several_nodes_rebuild_the_feeds_books(&cfg).await;
    let books: Vec<String> = cluster
        .shard_channels()
        .into_iter()
        .filter(|c| c.contains(":book:"))
        .collect();
    assert_eq!(books.len(), 4, "each book channel once: {books:?}");
    for symbol in mirrors().keys() {
        let owner = cluster.owner(symbol);
        let channels = owner.strings(&["PUBSUB", "SHARDCHANNELS", "*book*"]);
        let channel = format!("tickstream:book:{{{symbol}}}");
        assert!(
            channels.contains(&channel),
            "{channel} on its shard: {channels:?}"
        );
        let key = format!("tickstream:booksnap:{{{symbol}}}");
        assert!(env::text(&owner.cmd(&["GET", &key])).starts_with(r#"{"type":"book""#));
    }
    for n in nodes {
        n.shutdown().await;
    }
}

/// A `book` (no `prev`) or `book_update` of AAPL (two decimals) with one bid level.
fn aapl(seq: u64, prev: Option<u64>, bid: &str) -> String {
    match prev {
        None => format!(
            r#"{{"type":"book","symbol":"AAPL","epoch":"x1","seq":{seq},"ts":{seq},"bids":[[{bid},{seq}]],"asks":[[101.50,9]]}}"#
        ),
        Some(p) => format!(
            r#"{{"type":"book_update","symbol":"AAPL","epoch":"x1","seq":{seq},"prev_seq":{p},"ts":{seq},"bids":[[{bid},{seq}]],"asks":[]}}"#
        ),
    }
}

/// The messages `r` receives until nothing comes for 500ms, the book ones applied to
/// `m`.
async fn received(r: &mut Reader, m: &mut Mirror) -> Vec<Value> {
    let mut seen = Vec::new();
    while let Some((v, raw)) = r.try_next(Duration::from_millis(500)).await {
        if v["type"] == "book" || v["type"] == "book_update" {
            m.apply(&v, &raw);
        }
        seen.push(v);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_lost_in_redis_is_announced_as_a_gap_and_repaired_from_the_snapshot() {
    let redis = RedisServer::start();
    let cfg = fast(RedisConfig::single(&redis.url()));
    let a = node(&cfg, "node-a").await;
    let (snap, chan) = ("tickstream:booksnap:{AAPL}", "tickstream:book:{AAPL}");
    redis.cmd(&["SET", snap, &aapl(1, None, "100.10")]);
    let mut r = Reader::connect(a.addr).await;
    subscribed(
        &mut r,
        json!({"op":"subscribe","channel":"book","symbols":["AAPL"]}),
    )
    .await;
    let mut m = Mirror::new(2);
    let (v, raw) = r.next().await;
    m.apply(&v, &raw);
    assert_eq!(v["seq"], 1, "the book from the snapshot: {v}");
    // Seq 2 as a publisher writes it; seq 3 never reaches the channel.
    redis.cmd(&["PUBLISH", chan, &aapl(2, Some(1), "100.20")]);
    let whole4 = r#"{"type":"book","symbol":"AAPL","epoch":"x1","seq":4,"ts":4,"bids":[[100.40,4],[100.20,2],[100.10,1]],"asks":[[101.50,9]]}"#;
    redis.cmd(&["SET", snap, whole4]);
    redis.cmd(&["PUBLISH", chan, &aapl(4, Some(3), "100.40")]);
    let seen = received(&mut r, &mut m).await;
    let kinds: Vec<(&str, u64)> = seen
        .iter()
        .map(|v| (v["type"].as_str().unwrap(), v["seq"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(
        kinds,
        [("book_update", 2), ("gap", 0), ("book", 4)],
        "{seen:?}"
    );
    assert_eq!(
        seen[1],
        json!({"type":"gap","symbol":"AAPL","channel":"book","from":3,"to":3,"reason":"upstream"})
    );
    // And it goes on from the repaired book.
    let whole5 = whole4.replace("\"seq\":4,\"ts\":4", "\"seq\":5,\"ts\":5");
    let whole5 = whole5.replace("[100.40,4]", "[100.50,5],[100.40,4]");
    redis.cmd(&["SET", snap, &whole5]);
    redis.cmd(&["PUBLISH", chan, &aapl(5, Some(4), "100.50")]);
    let seen = received(&mut r, &mut m).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((m.seq, m.bids.len()), (5, 4), "{m:?}");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_link_makes_books_stale_then_a_gap_and_a_fresh_book() {
    let mut redis = RedisServer::start();
    let cfg = fast(RedisConfig::single(&redis.url()));
    let a = node(&cfg, "node-a").await;
    let p = RedisPublisher::connect(&cfg, "feed-books").await.unwrap();
    let mut g = Generator::new(&universe(), 5, "e1".into()).with_books();
    feed(&p, &mut g, 100, 10, Duration::from_millis(1)).await;
    let mut r = Reader::connect(a.addr).await;
    subscribed(
        &mut r,
        json!({"op":"subscribe","channel":"book","symbols":["AAPL"]}),
    )
    .await;
    let mut m = mirrors();
    assert!(
        types_beside_books(&mut r, &mut m, Duration::from_millis(300))
            .await
            .is_empty()
    );
    redis.restart();
    feed(&p, &mut g, 400, 10, Duration::from_millis(5)).await;
    let mut mirror = m.remove("AAPL").unwrap();
    let seen = received(&mut r, &mut mirror).await;
    let kinds: Vec<&str> = seen.iter().map(|v| v["type"].as_str().unwrap()).collect();
    let stale = kinds.iter().position(|k| *k == "status").expect("stale");
    assert_eq!(seen[stale]["channel"], "book");
    assert_eq!(seen[stale]["state"], "stale");
    let gap = kinds.iter().position(|k| *k == "gap").expect("a gap");
    assert!(gap > stale && kinds[gap + 1] == "book", "{kinds:?}");
    assert_eq!(seen[gap]["channel"], "book");
    assert_eq!(seen[gap]["reason"], "upstream");
    let live = seen
        .iter()
        .rposition(|v| v["state"] == "live")
        .expect("live");
    assert!(live > gap, "{kinds:?}");
    let (seq, levels) = g.book("AAPL").unwrap();
    assert_eq!(mirror.seq, seq);
    mirror.assert_window(levels, 10, "AAPL after the link came back");
    p.close().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_book_whose_link_comes_back_is_live_again_without_a_gap() {
    let redis = RedisServer::start();
    let cfg = fast(RedisConfig::single(&redis.url()));
    let a = node(&cfg, "node-a").await;
    let p = RedisPublisher::connect(&cfg, "feed-books").await.unwrap();
    let mut g = Generator::new(&universe(), 5, "e1".into()).with_books();
    feed(&p, &mut g, 100, 10, Duration::from_millis(1)).await;
    p.close().await;
    let mut r = Reader::connect(a.addr).await;
    subscribed(
        &mut r,
        json!({"op":"subscribe","channel":"book","symbols":["AAPL"]}),
    )
    .await;
    let mut m = mirrors().remove("AAPL").unwrap();
    let first = received(&mut r, &mut m).await;
    assert_eq!(first.len(), 1, "{first:?}");
    // The node's subscriber link is cut; Redis keeps its keys.
    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let seen = received(&mut r, &mut m).await;
    let statuses: Vec<(&str, &str)> = seen
        .iter()
        .map(|v| (v["state"].as_str().unwrap(), v["channel"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, [("stale", "book"), ("live", "book")], "{seen:?}");
    assert_eq!(seen[0]["reason"], "bus");
    assert_eq!(m.seq, g.book("AAPL").unwrap().0);
    a.shutdown().await;
}

/// The one message a client resuming AAPL's book at depth 10 from `held`'s position
/// on the node at `addr` receives before nothing comes for 500ms, and the others.
async fn resume_on(addr: std::net::SocketAddr, held: &mut Mirror) -> Vec<Value> {
    let mut r = Reader::connect(addr).await;
    let from = json!({"epoch": held.epoch, "seq": held.seq});
    subscribed(
        &mut r,
        json!({"op":"subscribe","channel":"book","depth":10,"symbols":["AAPL"],"resume":{"AAPL":from}}),
    )
    .await;
    received(&mut r, held).await
}

/// A client holding AAPL's book at seq N from node A moves to node B, which never
/// watched it: B rebuilds the book at N from Redis's `bookhist:` and sends one
/// `book_update` from N that gives the feed's book. A client whose seq the stream no
/// longer reaches gets `gap` `expired` and a fresh `book`.
async fn a_book_resumes_on_a_node_that_never_watched_it(cfg: &RedisConfig) -> [Running; 2] {
    let p = RedisPublisher::connect(cfg, "feed-books").await.unwrap();
    let a = node(cfg, "node-a").await;
    let b = node(cfg, "node-b").await;
    let mut g = Generator::new(&universe(), 7, "e1".into()).with_books();
    feed(&p, &mut g, 200, 20, Duration::from_millis(1)).await;
    let mut r = Reader::connect(a.addr).await;
    subscribed(
        &mut r,
        json!({"op":"subscribe","channel":"book","depth":10,"symbols":["AAPL"]}),
    )
    .await;
    let mut held = mirrors().remove("AAPL").unwrap();
    feed(&p, &mut g, 100, 20, Duration::from_millis(1)).await;
    received(&mut r, &mut held).await;
    drop(r);
    let n = held.seq;
    assert_eq!(n, g.book("AAPL").unwrap().0, "the client of A is in step");
    let mut old = Mirror::new(2);
    (old.epoch, old.seq) = (held.epoch.clone(), 3);
    feed(&p, &mut g, 60, 20, Duration::from_millis(1)).await;
    let (last, levels) = g.book("AAPL").unwrap();
    let kept = cfg.book_history as u64;
    assert!(
        last > n + 5 && last - n < kept && last - 3 > kept * 3,
        "{n} {last}"
    );
    assert!(
        b.node.hub.books().current("AAPL").is_none(),
        "B never watched it"
    );
    let seen = resume_on(b.addr, &mut held).await;
    assert_eq!(seen.len(), 1, "one message: {seen:?}");
    assert_eq!(seen[0]["type"], "book_update");
    assert_eq!((seen[0]["prev_seq"].as_u64(), held.seq), (Some(n), last));
    held.assert_window(levels, 10, "AAPL resumed on node B");
    let seen = resume_on(b.addr, &mut old).await;
    let kinds: Vec<&str> = seen.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["gap", "book"], "{seen:?}");
    assert_eq!(
        seen[0],
        json!({"type":"gap","symbol":"AAPL","channel":"book","from":4,"to":last - 1,"reason":"expired"})
    );
    old.assert_window(levels, 10, "AAPL after an expired resume");
    p.close().await;
    [a, b]
}

/// A Redis config whose `bookhist:` streams are kept short.
fn short_history(mut cfg: RedisConfig) -> RedisConfig {
    cfg.book_history = 40;
    fast(cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_book_resumes_across_nodes_from_the_history_in_redis() {
    let redis = RedisServer::start();
    let cfg = short_history(RedisConfig::single(&redis.url()));
    let nodes = a_book_resumes_on_a_node_that_never_watched_it(&cfg).await;
    let len = redis.cmd(&["XLEN", "tickstream:bookhist:{AAPL}"]);
    assert!(
        matches!(len, redis::Value::Int(n) if (40..200).contains(&n)),
        "trimmed to about the history: {len:?}"
    );
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_book_resumes_across_nodes_from_the_history_in_a_redis_cluster() {
    let cluster = RedisCluster::start(3);
    let cfg = short_history(RedisConfig::cluster(&cluster.urls()));
    let nodes = a_book_resumes_on_a_node_that_never_watched_it(&cfg).await;
    let owner = cluster.owner("AAPL");
    let len = owner.cmd(&["XLEN", "tickstream:bookhist:{AAPL}"]);
    assert!(matches!(len, redis::Value::Int(n) if n > 0), "{len:?}");
    for n in nodes {
        n.shutdown().await;
    }
}
