//! The reference servers the benchmarks measure tickstream against (`bench/peers/`), run
//! as real processes on loopback: `tickstream-floor` fed through its `/v1/publish`, and
//! the Node.js `ws` + `ioredis` server fed through a real `redis-server`.

#[path = "common/redis.rs"]
mod env;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use env::{free_port, repo_path, RedisServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A server process, stopped with SIGTERM by [`Server::stop`] or killed when dropped.
struct Server {
    child: Option<Child>,
    port: u16,
}

impl Server {
    fn start(mut cmd: Command, port: u16) -> Server {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("server starts");
        let mut s = Server {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = s.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("the server exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "the server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// Sends SIGTERM, waits for the exit, asserts it was clean and returns stdout.
    fn stop(&mut self) -> String {
        let child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let term = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(term.success());
        let out = child.wait_with_output().expect("the server exits");
        assert!(out.status.success(), "exit status {}", out.status);
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn connect(port: u16, path: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
        .await
        .expect("websocket connects");
    ws
}

/// The next text frame, parsed; fails the test after [`WAIT`] or on anything else.
async fn frame(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a frame in time")
            .expect("connection open")
            .expect("frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("frames are JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next frame, which must be an array holding exactly one message of type `ty`.
async fn single(ws: &mut Ws, ty: &str) -> Value {
    let f = frame(ws).await;
    let arr = f.as_array().expect("frames are arrays");
    assert_eq!(arr.len(), 1, "{f}");
    assert_eq!(arr[0]["type"], ty, "{f}");
    arr[0].clone()
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

fn tick(symbol: &str, seq: u64) -> Value {
    let p = 100.0 + seq as f64 / 100.0;
    json!({
        "type": "tick", "symbol": symbol, "epoch": "e1", "seq": seq, "ts": 1_764_284_400_000_000_000u64 + seq,
        "bid": p, "ask": p + 0.02, "bid_size": 100, "ask_size": 200, "last": p + 0.01,
        "last_size": 10, "volume": seq * 10,
    })
}

/// Reads array frames until `n` messages arrived; returns them and the frame count.
async fn collect(ws: &mut Ws, n: usize) -> (Vec<Value>, usize) {
    let (mut got, mut frames) = (Vec::new(), 0);
    while got.len() < n {
        let f = frame(ws).await;
        let arr = f.as_array().expect("frames are arrays");
        assert!(!arr.is_empty(), "empty frame");
        got.extend(arr.iter().cloned());
        frames += 1;
    }
    assert_eq!(got.len(), n, "more messages than published");
    (got, frames)
}

fn key(m: &Value) -> (String, u64) {
    (
        m["symbol"].as_str().unwrap().to_owned(),
        m["seq"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn floor_fans_out_every_tick_in_order_in_array_frames() {
    let port = free_port(false);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickstream-floor"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
    let mut floor = Server::start(cmd, port);

    let mut subs = Vec::new();
    for i in 0..2 {
        let mut ws = connect(floor.port, "/v1/ws").await;
        let w = single(&mut ws, "welcome").await;
        assert_eq!(w["encoding"], "json");
        send(
            &mut ws,
            json!({"op": "subscribe", "id": i, "symbols": ["AAA", "BBB"]}),
        )
        .await;
        let s = single(&mut ws, "subscribed").await;
        assert_eq!(s["id"], i);
        assert_eq!(s["symbols"], json!(["AAA", "BBB"]));
        subs.push(ws);
    }

    let mut publisher = connect(floor.port, "/v1/publish").await;
    single(&mut publisher, "welcome").await;
    // 40 frames of 5 ticks over three symbols (nobody wants CCC), then one single tick
    // without "type": 200 + 1 ticks published, 134 + 1 of them subscribed.
    let symbols = ["AAA", "BBB", "CCC"];
    let mut seqs = [0u64; 3];
    let mut wanted = Vec::new();
    for f in 0..40 {
        let mut ticks = Vec::new();
        for i in 0..5 {
            let s = (f * 5 + i) % 3;
            seqs[s] += 1;
            let t = tick(symbols[s], seqs[s]);
            if s < 2 {
                wanted.push(key(&t));
            }
            ticks.push(t);
        }
        send(&mut publisher, Value::Array(ticks)).await;
        let ack = single(&mut publisher, "published").await;
        assert_eq!(
            (ack["accepted"].as_u64(), ack["refused"].as_u64()),
            (Some(5), Some(0))
        );
    }
    seqs[0] += 1;
    let mut untyped = tick("AAA", seqs[0]);
    untyped.as_object_mut().unwrap().remove("type");
    wanted.push(key(&untyped));
    send(&mut publisher, untyped).await;
    let ack = single(&mut publisher, "published").await;
    assert_eq!(ack["accepted"], 1);
    // Items that are not tick objects are counted as refused, the rest go on.
    send(&mut publisher, json!([{"seq": 1}, 7])).await;
    let ack = single(&mut publisher, "published").await;
    assert_eq!(
        (ack["accepted"].as_u64(), ack["refused"].as_u64()),
        (Some(0), Some(2))
    );

    for ws in &mut subs {
        let (got, _) = collect(ws, wanted.len()).await;
        assert!(got.iter().all(|m| m["type"] == "tick"), "only ticks");
        let keys: Vec<(String, u64)> = got.iter().map(key).collect();
        assert_eq!(keys, wanted, "every subscribed tick, in publish order");
        // Prices arrive as published.
        assert_eq!(got[0]["bid"], tick("AAA", 1)["bid"]);
    }

    // After unsubscribing BBB, the first client gets only AAA.
    send(
        &mut subs[0],
        json!({"op": "unsubscribe", "id": 9, "symbols": ["BBB"]}),
    )
    .await;
    let u = single(&mut subs[0], "unsubscribed").await;
    assert_eq!(u["id"], 9);
    send(&mut subs[0], json!({"op": "ping", "id": 10})).await;
    assert_eq!(single(&mut subs[0], "pong").await["id"], 10);
    send(
        &mut publisher,
        json!([tick("BBB", seqs[1] + 1), tick("AAA", seqs[0] + 1)]),
    )
    .await;
    single(&mut publisher, "published").await;
    let (first, _) = collect(&mut subs[0], 1).await;
    assert_eq!(key(&first[0]), ("AAA".to_owned(), seqs[0] + 1));
    let (second, _) = collect(&mut subs[1], 2).await;
    assert_eq!(key(&second[0]), ("BBB".to_owned(), seqs[1] + 1));

    let counters: Value = serde_json::from_str(floor.stop().trim()).expect("counters as JSON");
    let delivered = 2 * wanted.len() as u64 + 3;
    assert_eq!(counters["delivered"], delivered, "{counters}");
    assert_eq!(counters["ticks_in"], 200 + 1 + 2, "{counters}");
    assert_eq!(counters["refused"], 2, "{counters}");
    assert_eq!(counters["dropped"], 0, "{counters}");
    assert_eq!(counters["subscribers"], 2, "{counters}");
}

fn on_path(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the Node peer's locked dependencies when they are missing.
fn npm_ci(dir: &Path) {
    if dir.join("node_modules").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("npm runs");
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

/// Waits until the Redis channels with `prefix` are exactly `want`.
fn channels_become(redis: &RedisServer, prefix: &str, want: &[&str]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut now = redis.strings(&["PUBSUB", "CHANNELS", &format!("{prefix}*")]);
        now.sort();
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "channels {now:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn node_ws_forwards_redis_messages_one_frame_each() {
    if !on_path("node") {
        eprintln!(
            "node is not on PATH: the Node peer is not tested here (scripts/test installs it)"
        );
        return;
    }
    let dir = repo_path("bench/peers/node-ws");
    npm_ci(&dir);
    let redis = RedisServer::start();
    let prefix = "peer:";
    let last = format!("{prefix}last:{{AAA}}");
    let channel = format!("{prefix}tick:{{AAA}}");
    redis.cmd(&["SET", &last, &tick("AAA", 7).to_string()]);

    let port = free_port(false);
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("server.js"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis", &redis.url(), "--prefix", prefix]);
    let mut node = Server::start(cmd, port);

    let mut a = connect(node.port, "/v1/ws").await;
    let w = single(&mut a, "welcome").await;
    assert_eq!(w["node"], "node-ws");
    send(
        &mut a,
        json!({"op": "subscribe", "id": 1, "symbols": ["AAA"]}),
    )
    .await;
    assert_eq!(single(&mut a, "subscribed").await["id"], 1);
    let snap = single(&mut a, "snapshot").await;
    assert_eq!(key(&snap), ("AAA".to_owned(), 7));

    let mut b = connect(node.port, "/v1/ws").await;
    single(&mut b, "welcome").await;
    send(
        &mut b,
        json!({"op": "subscribe", "symbols": ["AAA"], "snapshot": false}),
    )
    .await;
    let s = single(&mut b, "subscribed").await;
    assert!(s.get("id").is_none(), "no id, none echoed: {s}");
    channels_become(&redis, prefix, &[&channel]);

    for seq in 8..=57 {
        redis.cmd(&["PUBLISH", &channel, &tick("AAA", seq).to_string()]);
    }
    for ws in [&mut a, &mut b] {
        for seq in 8..=57 {
            // One frame per Redis message, holding it alone.
            let t = single(ws, "tick").await;
            assert_eq!(key(&t), ("AAA".to_owned(), seq));
        }
    }

    // The channel stays while one client wants the symbol, and goes with the last.
    send(
        &mut a,
        json!({"op": "unsubscribe", "id": 2, "symbols": ["AAA"]}),
    )
    .await;
    assert_eq!(single(&mut a, "unsubscribed").await["id"], 2);
    send(&mut a, json!({"op": "ping", "id": 3})).await;
    assert_eq!(single(&mut a, "pong").await["id"], 3);
    channels_become(&redis, prefix, &[&channel]);
    b.close(None).await.expect("close");
    while let Some(Ok(_)) = b.next().await {}
    drop(b);
    channels_become(&redis, prefix, &[]);

    let counters: Value = serde_json::from_str(node.stop().trim()).expect("counters as JSON");
    assert_eq!(counters["sent"], 100, "{counters}");
}
