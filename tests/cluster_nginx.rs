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
    // Twelve keys: the upstream ports are random, so the hash ring is too, and six
    // keys all landed on one node now and then.
    for n in 1..=12 {
        let key = &format!("desk-{n}");
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
    // The library client sends the same cookie through `ClientConfig::headers`.
    for n in 1..=3 {
        let key = format!("desk-{n}");
        let by_raw = welcome_with_cookie(&nginx, &key).await;
        let mut lib = tickstream::client::Client::new(tickstream::client::ClientConfig {
            urls: vec![format!("ws://{}/v1/ws", nginx.addr())],
            symbols: vec!["AAA".into()],
            headers: vec![("Cookie".into(), format!("tickstream_node={key}"))],
            ..Default::default()
        })
        .unwrap();
        let node = loop {
            match tokio::time::timeout(common::WAIT, lib.next())
                .await
                .expect("connected in time")
                .unwrap()
            {
                tickstream::client::Event::Connected { node, .. } => break node,
                _ => continue,
            }
        };
        assert_eq!(
            node, by_raw,
            "the library client's cookie {key} decides its node"
        );
        lib.close().await;
    }

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

/// `scripts/cluster` starts Redis, a feed, three nodes and nginx, prints the URLs, and
/// `scripts/cluster stop` stops exactly those processes. It runs the way the README
/// says: `scripts/cluster` from the root of a checkout (a throw-away copy of `scripts/`
/// and `feeds/`), with its default state directory and feed rate and no `TICKSTREAM_*`
/// variable but `TICKSTREAM_BIN`, which names the binary the tests built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_script_starts_a_working_cluster_and_stops_exactly_it() {
    let root = tempfile::tempdir().unwrap();
    copy_tree(&env::repo_path("scripts"), &root.path().join("scripts"));
    copy_tree(&env::repo_path("feeds"), &root.path().join("feeds"));
    let state = root.path().join("target/cluster");
    let run = |arg: &str| cluster_script(root.path(), arg, &[]);
    // Stops what was started even if the test fails half-way.
    struct Stop<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Stop<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let started = run("start");
    let _stop = Stop(|| {
        let _ = run("stop");
    });
    let out = String::from_utf8_lossy(&started.stdout).into_owned();
    assert!(
        started.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert!(
        out.contains(&format!("state in {}", state.display())),
        "the default state directory, absolute: {out}"
    );
    // Redis opened its log in the default (relative) state directory.
    let redis_log = std::fs::read_to_string(state.join("redis.log")).expect("redis.log");
    assert!(
        redis_log.contains("Ready to accept connections"),
        "{redis_log}"
    );
    let pids: Vec<u32> = std::fs::read_to_string(state.join("pids"))
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 6, "redis, feed, three nodes, nginx");
    let status = run("status");
    let status_out = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        status_out.matches(" running").count(),
        6,
        "all six run: {status_out}"
    );
    let ws = out
        .lines()
        .find(|l| l.trim_start().starts_with("nginx"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("ws://")))
        .expect("the nginx URL is printed")
        .to_owned();
    let addr: std::net::SocketAddr = ws
        .trim_start_matches("ws://")
        .trim_end_matches("/v1/ws")
        .parse()
        .unwrap();
    let (mut c, w) = Client::ready(addr).await;
    assert!(w["node"].as_str().unwrap().starts_with("node-"), "{w}");
    c.send(r#"{"op":"subscribe","symbols":["NVDA"]}"#).await;
    assert_eq!(c.next().await["type"], "subscribed");
    let t = c.until("tick").await;
    assert_eq!(t["symbol"], "NVDA");
    drop(c);

    let stopped = run("stop");
    assert!(stopped.status.success());
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(true),
            "process {pid} still runs after stop"
        );
    }
    assert!(!state.join("pids").exists());
}

/// Runs `scripts/cluster ARG` in `root` (a copy of `scripts/` and `feeds/`) with no
/// `TICKSTREAM_*` variable but `TICKSTREAM_BIN` and `extra`.
fn cluster_script(
    root: &std::path::Path,
    arg: &str,
    extra: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = std::process::Command::new("scripts/cluster");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TICKSTREAM_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg(arg)
        .current_dir(root)
        .env("TICKSTREAM_BIN", env!("CARGO_BIN_EXE_tickstream"))
        .envs(extra.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("scripts/cluster runs")
}

/// The `name pid` lines of the cluster's pids file.
fn cluster_pids(state: &std::path::Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(state.join("pids"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next().unwrap().to_owned();
            (name, w.next().unwrap().parse().unwrap())
        })
        .collect()
}

/// The address printed on the line of `name` (`node-1`, `nginx`) by `scripts/cluster`.
fn printed_addr(out: &str, name: &str) -> std::net::SocketAddr {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} is printed: {out}"));
    let url = line.split_whitespace().nth(1).unwrap();
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// `scripts/cluster roll` restarts every node in turn (SIGTERM, exit, start again on the
/// same port, `/healthz`): each node has a new pid and answers, and a library client
/// connected through nginx before the roll moves with the nodes' `reconnect` and goes on
/// receiving every tick: no hole, no duplicate, no reconnect after a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_script_rolls_every_node_and_a_client_through_nginx_loses_nothing() {
    use tickstream::client::{Client, ClientConfig};
    let root = tempfile::tempdir().unwrap();
    copy_tree(&env::repo_path("scripts"), &root.path().join("scripts"));
    copy_tree(&env::repo_path("feeds"), &root.path().join("feeds"));
    let state = root.path().join("target/cluster");
    let feed = [("TICKSTREAM_FEED_ARGS", "--rate 500")];
    let started = cluster_script(root.path(), "start", &feed);
    struct Stop<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Stop<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let _stop = Stop(|| {
        let _ = cluster_script(root.path(), "stop", &[]);
    });
    let out = String::from_utf8_lossy(&started.stdout).into_owned();
    assert!(
        started.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let before = cluster_pids(&state);
    let nginx = printed_addr(&out, "nginx");

    let client = Client::new(ClientConfig {
        urls: vec![format!("ws://{nginx}/v1/ws")],
        symbols: vec!["AAPL".into(), "MSFT".into(), "NVDA".into()],
        ..ClientConfig::default()
    })
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (mut rx, task) = client.spawn(4096, stop.clone());
    let roll = tokio::task::spawn_blocking({
        let root = root.path().to_owned();
        move || {
            std::thread::sleep(Duration::from_secs(2));
            cluster_script(&root, "roll", &[("TICKSTREAM_ROLL_PAUSE", "1")])
        }
    });
    let (moves, rolled) = follow_through_roll(&mut rx, roll).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let roll_out = String::from_utf8_lossy(&rolled.stdout).into_owned();
    assert!(
        rolled.status.success(),
        "{roll_out}{}",
        String::from_utf8_lossy(&rolled.stderr)
    );
    assert!(roll_out.contains("rolled 3 nodes in"), "{roll_out}");
    assert!(moves >= 1, "the client moved off its node: {roll_out}");

    let after = cluster_pids(&state);
    assert_eq!(after.len(), before.len());
    for ((name, old), (name2, new)) in before.iter().zip(&after) {
        assert_eq!(name, name2);
        if name.starts_with("node-") {
            assert_ne!(old, new, "{name} was restarted: {roll_out}");
            let (code, _) = common::http_get(printed_addr(&out, name), "/healthz").await;
            assert_eq!(code, 200, "{name} answers on its port after the roll");
        } else {
            assert_eq!(old, new, "{name} is left alone");
        }
    }
}

/// Takes the client's events until `roll` has ended and 200 more ticks have come,
/// checking every symbol's seq (no hole, no duplicate, no gap, no loss of the
/// connection). Returns the moves and the roll's output.
async fn follow_through_roll(
    rx: &mut tokio::sync::mpsc::Receiver<tickstream::client::Event>,
    roll: tokio::task::JoinHandle<std::process::Output>,
) -> (u32, std::process::Output) {
    use tickstream::client::{Event, ServerMessage};
    let mut last = std::collections::HashMap::<String, u64>::new();
    let (mut moves, mut ticks_after, mut rolled) = (0, 0, None);
    tokio::pin!(roll);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while rolled.is_none() || ticks_after < 200 {
        let ev = tokio::select! {
            r = &mut roll, if rolled.is_none() => {
                rolled = Some(r.unwrap());
                continue;
            }
            ev = tokio::time::timeout_at(deadline, rx.recv()) => {
                ev.expect("events in time").expect("the client runs")
            }
        };
        match ev {
            Event::Message(ServerMessage::Tick(t)) => {
                let (sym, seq) = (t.tick.symbol.to_string(), t.tick.seq);
                if let Some(prev) = last.insert(sym.clone(), seq) {
                    assert_eq!(seq, prev + 1, "{sym}: after {prev} came {seq}");
                }
                if rolled.is_some() {
                    ticks_after += 1;
                }
            }
            Event::Message(ServerMessage::Snapshot(t)) => {
                let sym = t.symbol.to_string();
                assert!(!last.contains_key(&sym), "a second snapshot of {sym}");
                last.insert(sym, t.seq);
            }
            Event::Moved { .. } => moves += 1,
            Event::Hole { .. }
            | Event::Disconnected { .. }
            | Event::MoveFailed { .. }
            | Event::Message(ServerMessage::Gap { .. }) => panic!("{ev:?}"),
            _ => {}
        }
    }
    (moves, rolled.unwrap())
}

/// Copies the files under `from` to `to`, keeping their permissions.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}
