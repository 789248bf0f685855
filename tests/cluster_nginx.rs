//! Nodes as real processes behind a real nginx (the shipped template), joined by a real
//! `redis-server`, with a feed in its own process: stickiness, and a client that loses
//! its node to `kill -9` and resumes on another through nginx without a hole.

mod common;
#[path = "common/redis.rs"]
mod env;

use std::time::Duration;

use common::Client;
use env::{Nginx, Proc, RedisServer};

const UNIVERSE: &str =
    "symbol,class,price,volatility,activity\nAAA,equity,100,0.2,1\nBBB,equity,50,0.2,1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_through_nginx_and_resume_on_another_node_after_kill_9() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let universe = dir.path().join("u.csv");
    std::fs::write(&universe, UNIVERSE).unwrap();
    let u = universe.to_str().unwrap();
    let url = redis.url();
    let common_args = ["--redis", url.as_str(), "--universe", u];
    let _feed = Proc::serve(
        "feed",
        &[&common_args[..], &["--feed", "synthetic", "--rate", "200"]].concat(),
        dir.path(),
    );
    let mut nodes: Vec<Proc> = (1..=3)
        .map(|i| Proc::serve(&format!("node-{i}"), &common_args, dir.path()))
        .collect();
    let nginx = Nginx::start(&nodes.iter().map(|n| n.port).collect::<Vec<_>>());

    // The same client address lands on the same node, connection after connection.
    let (mut c, w) = Client::ready(nginx.addr()).await;
    let home = w["node"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        let (_, w2) = Client::ready(nginx.addr()).await;
        assert_eq!(w2["node"], home.as_str(), "sticky by client address");
    }

    // With the affinity cookie, the cookie decides: the same value, the same node.
    let mut by_cookie = std::collections::HashSet::new();
    for key in ["desk-1", "desk-2", "desk-3", "desk-4", "desk-5", "desk-6"] {
        let first = welcome_with_cookie(&nginx, key).await;
        assert_eq!(
            welcome_with_cookie(&nginx, key).await,
            first,
            "sticky by cookie {key}"
        );
        by_cookie.insert(first);
    }
    assert!(
        by_cookie.len() > 1,
        "cookies spread clients over nodes: {by_cookie:?}"
    );

    c.send(r#"{"op":"subscribe","symbols":["AAA"]}"#).await;
    assert_eq!(c.next().await["type"], "subscribed");
    let mut last = 0u64;
    let mut seen = 0;
    while seen < 30 {
        let m = c.next().await;
        if m["type"] == "tick" || m["type"] == "snapshot" {
            let s = m["seq"].as_u64().unwrap();
            if m["type"] == "tick" && last > 0 {
                assert_eq!(s, last + 1, "{m}");
            }
            last = s;
            seen += 1;
        }
    }
    let epoch = {
        let snap = common::http_get(nginx.addr(), "/v1/snapshot?symbols=AAA")
            .await
            .1;
        let v: serde_json::Value = serde_json::from_str(&snap).unwrap();
        v[0]["epoch"].as_str().unwrap().to_owned()
    };

    // kill -9 the node serving the client.
    nodes
        .iter_mut()
        .find(|n| n.name == home)
        .expect("the home node is one of ours")
        .kill9();
    while c.try_next(Duration::from_secs(5)).await.is_some() {
        // Drain what was in flight; the connection then ends.
    }

    let (mut c, w) = Client::ready(nginx.addr()).await;
    let moved = w["node"].as_str().unwrap().to_owned();
    assert_ne!(moved, home, "nginx moved the client to a live node");
    let resume = serde_json::json!({"op":"subscribe","symbols":["AAA"],
        "resume":{"AAA":{"epoch":epoch,"seq":last}}});
    c.send(&resume.to_string()).await;
    assert_eq!(c.next().await["type"], "subscribed");
    // Everything after `last`, from the Redis history then live, without hole or duplicate.
    for want in last + 1..=last + 60 {
        let m = c.next().await;
        assert_eq!(m["type"], "tick", "{m}");
        assert_eq!(m["seq"].as_u64().unwrap(), want, "{m}");
    }
}

/// The node that answers a WebSocket opened with the affinity cookie set to `key`.
async fn welcome_with_cookie(nginx: &Nginx, key: &str) -> String {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/v1/ws", nginx.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Cookie", format!("tickstream_node={key}").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connects");
    let set = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(set.starts_with(&format!("tickstream_node={key};")), "{set}");
    let msg = tokio::time::timeout(common::WAIT, ws.next())
        .await
        .expect("welcome in time")
        .expect("a frame")
        .expect("a message");
    let v: serde_json::Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    v[0]["node"].as_str().unwrap().to_owned()
}
