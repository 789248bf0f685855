//! Topology changes of a real Redis Cluster with replicas, under a node serving a symbol
//! while a feed publishes it: a live slot migration, a replica promoted by `CLUSTER
//! FAILOVER`, a master killed under its replica, a master restarted. In each case the
//! symbol's clients are told it is stale, its ticks resume from the new owner (what was
//! lost announced with a `gap` and a `snapshot`, never a silent hole), it is live again,
//! and a symbol of another master is not disturbed.

mod common;
#[path = "common/redis.rs"]
mod env;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Client;
use env::{RedisCluster, RedisServer};
use serde_json::Value;
use tickstream::bus::{RedisConfig, RedisPublisher};
use tickstream::config::Settings;
use tickstream::server::Running;
use tokio_util::sync::CancellationToken;

/// The symbol whose slot moves.
const MOVED: &str = "AAPL";

/// Recovery after the change must come well within this (the target is 1 s; the
/// measured times are printed and quoted in the README).
const RECOVERY_BOUND: Duration = Duration::from_millis(2500);

fn fast(mut c: RedisConfig) -> RedisConfig {
    c.timeout = Duration::from_millis(500);
    c.ping_interval = Duration::from_millis(200);
    c.backoff_max = Duration::from_millis(300);
    c.lease = Duration::from_secs(3);
    c
}

/// A symbol of the bundled universe on another master than `MOVED`.
fn other_symbol(cluster: &RedisCluster) -> &'static str {
    let moved = cluster.owner(MOVED).port;
    [
        "MSFT", "NVDA", "EUR/USD", "BTC-USD", "GOOG", "AMZN", "TSLA", "META",
    ]
    .into_iter()
    .find(|s| cluster.owner(s).port != moved)
    .expect("a symbol on another master")
}

/// A node on the cluster, a feed publishing `symbols` every 5 ms, and a client
/// subscribed to them with every message recorded.
struct Scene {
    node: Running,
    feed: Arc<RedisPublisher>,
    stop: CancellationToken,
    feeder: tokio::task::JoinHandle<()>,
    client: Client,
    /// Last seq per symbol, and every message read after the change.
    last: HashMap<String, u64>,
}

async fn scene(cluster: &RedisCluster, symbols: &[&'static str]) -> Scene {
    let cfg = fast(RedisConfig::cluster(&cluster.urls()));
    let settings = Settings {
        redis: Some(cfg.clone()),
        node: "node-a".into(),
        ..common::settings()
    };
    let node = common::start(settings).await;
    let feed = Arc::new(
        RedisPublisher::connect(&cfg, "feed-1")
            .await
            .expect("the feed connects"),
    );
    let stop = CancellationToken::new();
    let feeder = {
        let (feed, stop) = (feed.clone(), stop.clone());
        let symbols = symbols.to_vec();
        tokio::spawn(async move {
            let mut seq = 0;
            while !stop.is_cancelled() {
                seq += 1;
                for s in &symbols {
                    feed.publish(common::tick(s, "e1", seq)).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let (mut client, _) = Client::ready(node.addr).await;
    let body = serde_json::json!({"op":"subscribe","symbols":symbols}).to_string();
    client.send(&body).await;
    assert_eq!(client.until("subscribed").await["type"], "subscribed");
    let mut s = Scene {
        node,
        feed,
        stop,
        feeder,
        client,
        last: HashMap::new(),
    };
    // Every symbol streaming before the change.
    let deadline = Instant::now() + Duration::from_secs(10);
    while symbols
        .iter()
        .any(|sym| s.last.get(*sym).is_none_or(|q| *q < 20))
    {
        assert!(Instant::now() < deadline, "ticks flow before the change");
        let m = s.client.next().await;
        s.take(&m);
    }
    s
}

impl Scene {
    /// Checks one message against what the symbol held: a tick continues it by one, or
    /// follows a `gap`/`snapshot` that announced the jump.
    fn take(&mut self, m: &Value) {
        let Some(symbol) = m["symbol"].as_str() else {
            return;
        };
        let seq = m["seq"].as_u64();
        match (m["type"].as_str(), seq) {
            (Some("tick"), Some(q)) => {
                if let Some(prev) = self.last.get(symbol) {
                    assert_eq!(q, prev + 1, "a silent hole in {symbol}: {m}");
                }
                self.last.insert(symbol.to_owned(), q);
            }
            (Some("snapshot"), Some(q)) => {
                self.last.insert(symbol.to_owned(), q);
            }
            (Some("gap"), _) => {
                let to = m["to"].as_u64().unwrap();
                assert_eq!(m["reason"], "upstream", "{m}");
                self.last.insert(symbol.to_owned(), to);
            }
            _ => {}
        }
    }

    /// After the change made at `at`: reads until `MOVED` is live again and has ticked
    /// ten times; returns the recovery time (change → first tick after it) and every
    /// message read meanwhile.
    async fn recover(&mut self, at: Instant) -> (Duration, Vec<Value>) {
        let mut seen = Vec::new();
        let mut first_tick: Option<Instant> = None;
        let mut after = 0;
        let start_seq = self.last.get(MOVED).copied().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while after < 10 {
            let wait = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(wait, self.client.next())
                .await
                .expect("the moved symbol streams again");
            self.take(&m);
            if m["symbol"] == MOVED && m["type"] == "tick" {
                let q = m["seq"].as_u64().unwrap();
                if q > start_seq {
                    first_tick.get_or_insert_with(Instant::now);
                    after += 1;
                }
            }
            seen.push(m);
        }
        let recovered = first_tick.expect("a tick after the change");
        (recovered.saturating_duration_since(at), seen)
    }

    async fn finish(self) {
        self.stop.cancel();
        let _ = self.feeder.await;
        self.feed.close().await;
        self.node.shutdown().await;
    }
}

/// The status messages of `symbol` among `seen`, as `state reason`.
fn statuses(seen: &[Value], symbol: &str) -> Vec<String> {
    seen.iter()
        .filter(|m| m["type"] == "status" && m["symbol"] == symbol)
        .map(|m| {
            format!(
                "{} {}",
                m["state"].as_str().unwrap(),
                m["reason"].as_str().unwrap_or("")
            )
            .trim()
            .to_owned()
        })
        .collect()
}

/// Whether `server` carries the shard channel of `symbol`.
fn carries(server: &RedisServer, symbol: &str) -> bool {
    let ch = format!("tickstream:tick:{{{symbol}}}");
    server
        .strings(&["PUBSUB", "SHARDCHANNELS", &ch])
        .contains(&ch)
}

/// Waits until the replica on `replica` is the master of `MOVED`'s slot.
fn wait_promoted(cluster: &RedisCluster, replica: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while cluster.owner(MOVED).port != replica {
        assert!(Instant::now() < deadline, "the replica is promoted");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// After the change just made: `MOVED` streams again within the bound, `other` was not
/// disturbed; returns `MOVED`'s status messages.
async fn recovered(s: &mut Scene, case: &str, other: &str) -> Vec<String> {
    let (took, seen) = s.recover(Instant::now()).await;
    report(case, took);
    assert!(
        statuses(&seen, other).is_empty(),
        "{other} was not disturbed"
    );
    statuses(&seen, MOVED)
}

fn report(case: &str, took: Duration) {
    eprintln!(
        "{case}: {MOVED} streamed again {} ms after the change",
        took.as_millis()
    );
    assert!(took <= RECOVERY_BOUND, "{case}: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_slot_migration_moves_the_subscription_to_the_new_owner() {
    let cluster = RedisCluster::start_with_replicas(3, 1, 2000);
    let other = other_symbol(&cluster);
    let mut s = scene(&cluster, &[MOVED, other]).await;
    let from = cluster.owner(MOVED).port;
    let to = cluster
        .masters()
        .into_iter()
        .find(|m| m.port != from && m.port != cluster.owner(other).port)
        .expect("a third master")
        .port;
    cluster.migrate(MOVED, cluster.at(to));
    let st = recovered(&mut s, "slot migration", other).await;
    assert_eq!(st, ["stale channel", "live"]);
    assert!(
        carries(cluster.at(to), MOVED),
        "subscribed at the new owner"
    );
    assert!(!carries(cluster.at(from), MOVED), "not at the old one");
    let metrics = common::http_get(s.node.addr, "/metrics").await.1;
    for line in [
        "tickstream_bus_reroutes_total 1",
        r#"tickstream_stale_total{reason="channel"} 1"#,
        "tickstream_stale_symbols 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_promoted_by_failover_takes_the_subscription() {
    let cluster = RedisCluster::start_with_replicas(3, 1, 2000);
    cluster.wait_ok();
    let other = other_symbol(&cluster);
    let mut s = scene(&cluster, &[MOVED, other]).await;
    let master = cluster.owner(MOVED).port;
    let replica = cluster.replica_of(cluster.at(master)).port;
    cluster.at(replica).cmd(&["CLUSTER", "FAILOVER"]);
    wait_promoted(&cluster, replica, Duration::from_secs(10));
    let st = recovered(&mut s, "failover", other).await;
    assert_eq!(st, ["stale channel", "live"]);
    assert!(carries(cluster.at(replica), MOVED));
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_its_replica_is_replaced() {
    let mut cluster = RedisCluster::start_with_replicas(3, 1, 1000);
    cluster.wait_ok();
    let other = other_symbol(&cluster);
    let mut s = scene(&cluster, &[MOVED, other]).await;
    let master = cluster.owner(MOVED).port;
    let replica = cluster.replica_of(cluster.at(master)).port;
    cluster.at_mut(master).kill();
    wait_promoted(&cluster, replica, Duration::from_secs(20));
    let st = recovered(&mut s, "master killed", other).await;
    assert_eq!(st.last().map(String::as_str), Some("live"), "{st:?}");
    assert!(
        st.iter().all(|x| x == "live" || x.starts_with("stale")),
        "{st:?}"
    );
    assert!(carries(cluster.at(replica), MOVED));
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_master_is_subscribed_again() {
    // A node timeout long enough that the restart is not taken for a failure.
    let mut cluster = RedisCluster::start_with_replicas(3, 1, 15000);
    cluster.wait_ok();
    let other = other_symbol(&cluster);
    let mut s = scene(&cluster, &[MOVED, other]).await;
    let master = cluster.owner(MOVED).port;
    cluster.at_mut(master).restart();
    let st = recovered(&mut s, "master restarted", other).await;
    assert_eq!(st, ["stale bus", "live"]);
    assert!(carries(cluster.at(master), MOVED));
    s.finish().await;
}
