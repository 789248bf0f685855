//! Shared helpers of the end-to-end tests: a node on a free loopback port and an
//! independent WebSocket client (tokio-tungstenite).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use tickstream::bus::{RedisConfig, RedisPublisher};
use tickstream::config::{FeedSpec, Settings};
use tickstream::server::Running;
use tickstream::tick::Tick;

/// Settings for a test node: loopback, free port, no feed of its own, and a short
/// reconnect notice (a shutdown keeps its clients streaming that long).
pub fn settings() -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        feed: FeedSpec::None,
        node: "test-node".into(),
        reconnect_notice: Duration::from_millis(200),
        ..Settings::default()
    }
}

/// `s` with auth on: `secret` (HS256) in a file of the returned directory, no leeway
/// on expiry.
pub fn with_jwt_secret(mut s: Settings, secret: &[u8]) -> (Settings, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, secret).unwrap();
    s.jwt_secret_file = Some(path);
    s.jwt_leeway = Duration::ZERO;
    (s, dir)
}

pub async fn start(settings: Settings) -> Running {
    tickstream::server::start(settings)
        .await
        .expect("server starts")
}

/// A tick of `symbol` with prices derived from `seq`.
pub fn tick(symbol: &str, epoch: &str, seq: u64) -> Tick {
    let p = 100.0 + seq as f64 / 100.0;
    Tick {
        symbol: symbol.into(),
        epoch: epoch.into(),
        seq,
        ts: tickstream::tick::now_ns(),
        bid: p,
        ask: p + 0.02,
        bid_size: 100,
        ask_size: 200,
        last: p + 0.01,
        last_size: 10,
        volume: seq * 10,
        src_ts: None,
    }
}

pub fn publish(run: &Running, symbol: &str, epoch: &str, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        run.node.bus.publish(tick(symbol, epoch, seq)).unwrap();
    }
}

/// A node on the Redis at `url`, and a feed publishing into it as `feed_id`, the first
/// tick of `symbol` (epoch `e1`, seq 1) published.
pub async fn node_with_a_feed(url: &str, feed_id: &str, symbol: &str) -> (Running, RedisPublisher) {
    let cfg = RedisConfig::single(url);
    let run = start(Settings {
        redis: Some(cfg.clone()),
        ..settings()
    })
    .await;
    let feed = RedisPublisher::connect(&cfg, feed_id)
        .await
        .expect("the feed connects");
    feed.publish(tick(symbol, "e1", 1)).unwrap();
    (run, feed)
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A test client that hands out messages one at a time.
pub struct Client {
    pub ws: Ws,
    pending: std::collections::VecDeque<Value>,
    pub close: Option<Option<CloseFrame>>,
}

pub const WAIT: Duration = Duration::from_secs(5);

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::connect_path(addr, "/v1/ws").await
    }

    /// A client over a WebSocket opened elsewhere.
    pub fn from_ws(ws: Ws) -> Client {
        Client {
            ws,
            pending: Default::default(),
            close: None,
        }
    }

    pub async fn connect_path(addr: SocketAddr, path: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
            .await
            .expect("websocket connects");
        Client {
            ws,
            pending: Default::default(),
            close: None,
        }
    }

    /// Connects and consumes the welcome.
    pub async fn ready(addr: SocketAddr) -> (Client, Value) {
        let mut c = Self::connect(addr).await;
        let w = c.next().await;
        assert_eq!(w["type"], "welcome", "{w}");
        (c, w)
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_msg(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// The next server message, failing the test after [`WAIT`].
    pub async fn next(&mut self) -> Value {
        match self.try_next(WAIT).await {
            Some(v) => v,
            None => panic!("no message within {WAIT:?} (close: {:?})", self.close),
        }
    }

    /// The next server message, or None on timeout or close.
    pub async fn try_next(&mut self, wait: Duration) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("server frames are JSON");
                    let arr = v.as_array().expect("server frames are JSON arrays").clone();
                    assert!(!arr.is_empty(), "empty frame");
                    self.pending.extend(arr);
                    return self.pending.pop_front();
                }
                Ok(Message::Close(c)) => {
                    self.close = Some(c);
                    return None;
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Skips messages until one of type `ty` arrives.
    pub async fn until(&mut self, ty: &str) -> Value {
        loop {
            let m = self.next().await;
            if m["type"] == ty {
                return m;
            }
        }
    }

    /// Reads until the server closes; returns the close code (None if no close frame).
    pub async fn closed(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        while self.close.is_none() {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("connection not closed within {wait:?}"),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Close(c)))) => self.close = Some(c),
                Ok(Some(Ok(_))) => {}
            }
        }
        self.close.clone().flatten().map(|c| u16::from(c.code))
    }
}

/// Polls `cond` every 10 ms for up to [`WAIT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    (status, body.to_owned())
}

/// Resident memory of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Publishes ticks of `symbol` (epoch `e1`, seq from 1) at about 2,000 a second from a
/// plain thread until `stop`; the thread returns the last seq published.
pub fn ticking(
    run: &Running,
    symbol: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let bus = run.node.bus.clone();
    std::thread::spawn(move || {
        let mut seq = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for _ in 0..10 {
                seq += 1;
                bus.publish(tick(symbol, "e1", seq)).unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        seq
    })
}

/// A GET whose head is read now and whose body is read to its end (or for [`WAIT`]) in
/// a task: (status, the task giving the body as text, chunk framing included).
pub async fn http_get_stream(
    addr: SocketAddr,
    path: &str,
) -> (u16, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("a response head");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).expect("utf-8 head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let body = tokio::spawn(async move {
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await;
        String::from_utf8_lossy(&raw).into_owned()
    });
    (status, body)
}
