//! The node coordinates subscriptions per symbol: a subscribe that waits on Redis for
//! one symbol holds up no other symbol's.

mod common;
#[path = "common/redis.rs"]
mod env;

use std::time::Duration;

use common::Client;
use env::RedisServer;
use tickstream::bus::RedisConfig;
use tickstream::config::Settings;

/// Sends `kill -SIG pid`.
fn signal(sig: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Resumes a stopped redis-server even when the test fails half-way.
struct Cont(u32);
impl Drop for Cont {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_waiting_on_redis_holds_up_no_other_symbol() {
    let redis = RedisServer::start();
    let mut cfg = RedisConfig::single(&redis.url());
    // Long enough that the first subscribe to AAPL is still waiting while Redis is
    // stopped, and that the health check does not give up on Redis meanwhile.
    cfg.timeout = Duration::from_secs(5);
    cfg.ping_interval = Duration::from_secs(30);
    let run = common::start(Settings {
        redis: Some(cfg),
        ..common::settings()
    })
    .await;

    // MSFT is watched already.
    let (mut first, _) = Client::ready(run.addr).await;
    first
        .send(r#"{"op":"subscribe","id":1,"symbols":["MSFT"]}"#)
        .await;
    assert_eq!(first.until("subscribed").await["id"], 1);
    let (mut waiting, _) = Client::ready(run.addr).await;
    let (mut other, _) = Client::ready(run.addr).await;

    let pid = redis.pid().expect("redis-server runs");
    signal("-STOP", pid);
    let cont = Cont(pid);
    // AAPL's first local subscriber: the node must SUBSCRIBE in Redis, which is stopped.
    waiting
        .send(r#"{"op":"subscribe","id":2,"symbols":["AAPL"]}"#)
        .await;
    assert!(
        waiting.try_next(Duration::from_millis(300)).await.is_none(),
        "answered although Redis is stopped"
    );
    // MSFT needs no Redis call: answered while Redis is still stopped.
    other
        .send(r#"{"op":"subscribe","id":3,"symbols":["MSFT"]}"#)
        .await;
    let m = other
        .try_next(Duration::from_secs(2))
        .await
        .expect("a subscribe to a watched symbol is answered at once");
    assert_eq!(
        (m["type"].as_str(), m["id"].as_u64()),
        (Some("subscribed"), Some(3)),
        "{m}"
    );
    assert_eq!(run.node.hub.subscriber_count("MSFT"), 2);
    assert!(waiting.try_next(Duration::from_millis(50)).await.is_none());

    drop(cont);
    let m = waiting.next().await;
    assert_eq!(
        (m["type"].as_str(), m["id"].as_u64()),
        (Some("subscribed"), Some(2)),
        "{m}"
    );
    assert_eq!(run.node.interest().count("AAPL"), 1);
    assert_eq!(run.node.interest().count("MSFT"), 2);
    run.shutdown().await;
}
