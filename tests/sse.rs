//! Server-Sent Events read with a plain HTTP client: events with ids, `Last-Event-ID`
//! resume of every symbol, auth, a stalled SSE client beside a WebSocket one, and a
//! symbol's `status` when its feed stops and comes back.

mod common;
#[path = "common/redis.rs"]
mod env;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// One server-sent event (or a block holding only `retry:` or a comment).
#[derive(Debug, Default, Clone)]
struct Event {
    event: Option<String>,
    id: Option<String>,
    data: Option<Value>,
    retry: Option<u64>,
    comment: bool,
}

impl Event {
    fn ty(&self) -> &str {
        self.event.as_deref().unwrap_or("")
    }
    fn seq(&self) -> u64 {
        self.data.as_ref().unwrap()["seq"].as_u64().unwrap()
    }
    fn symbol(&self) -> &str {
        self.data.as_ref().unwrap()["symbol"].as_str().unwrap()
    }
}

/// An SSE response being read.
struct Sse {
    status: u16,
    headers: hyper::HeaderMap,
    body: Incoming,
    buf: String,
}

async fn get(
    addr: SocketAddr,
    path: &str,
    last_event_id: Option<&str>,
    recv_buffer: Option<u32>,
) -> Sse {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        sock.set_recv_buffer_size(size).unwrap();
    }
    let tcp = sock.connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", addr.to_string());
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    Sse {
        status,
        headers,
        body: resp.into_body(),
        buf: String::new(),
    }
}

impl Sse {
    /// The next event, or None when the stream ended.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                return Some(parse(&block));
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("an event in time")?;
            if let Ok(data) = frame.unwrap().into_data() {
                self.buf.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next event that is not a heartbeat comment or a `retry:` block.
    async fn message(&mut self) -> Event {
        loop {
            let e = self.next().await.expect("the stream goes on");
            if e.event.is_some() {
                return e;
            }
        }
    }

    /// Reads until an event of type `ty`.
    async fn until(&mut self, ty: &str) -> Event {
        loop {
            let e = self.message().await;
            if e.ty() == ty {
                return e;
            }
        }
    }

    async fn body_text(mut self) -> String {
        let mut out = String::new();
        while let Some(Ok(f)) = self.body.frame().await {
            if let Ok(d) = f.into_data() {
                out.push_str(std::str::from_utf8(&d).unwrap());
            }
        }
        out
    }
}

fn parse(block: &str) -> Event {
    let mut e = Event::default();
    for line in block.lines() {
        if line.starts_with(':') {
            e.comment = true;
        } else if let Some(v) = line.strip_prefix("event: ") {
            e.event = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("id: ") {
            e.id = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            e.data = Some(serde_json::from_str(v).expect("data is JSON"));
        } else if let Some(v) = line.strip_prefix("retry: ") {
            e.retry = Some(v.parse().unwrap());
        } else if !line.is_empty() {
            panic!("unexpected line {line:?}");
        }
    }
    e
}

#[tokio::test]
async fn events_carry_ids_and_last_event_id_resumes_every_symbol() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=3);
    publish(&run, "EUR/USD", "e1", 1..=2);

    let mut sse = get(run.addr, "/v1/sse?symbols=AAPL,EUR/USD", None, None).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    let first = sse.next().await.unwrap();
    assert_eq!(first.retry, Some(2000), "{first:?}");
    let welcome = sse.message().await;
    assert_eq!(welcome.ty(), "welcome");
    assert!(welcome.id.is_none());
    assert_eq!(sse.message().await.ty(), "subscribed");
    let mut snaps = [sse.message().await, sse.message().await];
    snaps.sort_by(|a, b| a.symbol().cmp(b.symbol()));
    assert_eq!(
        snaps
            .iter()
            .map(|e| (e.ty(), e.symbol(), e.seq()))
            .collect::<Vec<_>>(),
        [("snapshot", "AAPL", 3), ("snapshot", "EUR/USD", 2)]
    );
    publish(&run, "AAPL", "e1", 4..=5);
    publish(&run, "EUR/USD", "e1", 3..=3);
    let mut last = None;
    for _ in 0..3 {
        let e = sse.message().await;
        assert_eq!(e.ty(), "tick");
        last = e.id.clone();
    }
    let last = last.unwrap();
    assert_eq!(last, "AAPL e1 5,EUR/USD e1 3", "one id holds every symbol");

    // The client goes away: its session ends.
    drop(sse);
    eventually("the SSE session ends with its client", || {
        run.node.hub.subscriber_count("AAPL") == 0 && run.node.hub.subscriber_count("EUR/USD") == 0
    })
    .await;

    // Published meanwhile, then replayed exactly on reconnect.
    publish(&run, "AAPL", "e1", 6..=7);
    publish(&run, "EUR/USD", "e1", 4..=4);
    let mut sse = get(run.addr, "/v1/sse?symbols=AAPL,EUR/USD", Some(&last), None).await;
    assert_eq!(sse.status, 200);
    sse.until("subscribed").await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = sse.message().await;
        got.push((e.ty().to_owned(), e.symbol().to_owned(), e.seq()));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("tick".into(), "AAPL".into(), 6),
            ("tick".into(), "AAPL".into(), 7),
            ("tick".into(), "EUR/USD".into(), 4)
        ]
    );
    // Nothing else was queued in between: the next event is the next live tick.
    publish(&run, "EUR/USD", "e1", 5..=5);
    let e = sse.message().await;
    assert_eq!((e.ty(), e.symbol(), e.seq()), ("tick", "EUR/USD", 5));
    assert_eq!(e.id.as_deref(), Some("AAPL e1 7,EUR/USD e1 5"));
    drop(sse);

    // An old epoch (through the query, as a page can pass it): reset gap, then snapshot.
    let mut sse = get(
        run.addr,
        "/v1/sse?symbols=AAPL&last_event_id=AAPL%20e0%202",
        None,
        None,
    )
    .await;
    assert_eq!(sse.status, 200);
    sse.until("subscribed").await;
    let gap = sse.message().await;
    assert_eq!(gap.ty(), "gap");
    assert_eq!(gap.data.as_ref().unwrap()["reason"], "reset");
    let snap = sse.message().await;
    assert_eq!((snap.ty(), snap.seq()), ("snapshot", 7));
    assert_eq!(snap.id.as_deref(), Some("AAPL e1 7"));
    drop(sse);

    // Bad requests change nothing and say why.
    let bad = get(run.addr, "/v1/sse?symbols=AAPL", Some("AAPL e1"), None).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body_text().await.contains("Last-Event-ID"));
    let bad = get(run.addr, "/v1/sse", None, None).await;
    assert_eq!(bad.status, 400);
    // A malformed or unknown symbol is an `error` event, as over WebSocket.
    let mut sse = get(run.addr, "/v1/sse?symbols=AAPL,NOPE", None, None).await;
    let err = sse.until("error").await;
    assert_eq!(err.data.as_ref().unwrap()["code"], "unknown_symbol");
    drop(sse);
    run.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_the_stream_with_a_close_event() {
    let run = start(settings()).await;
    let mut sse = get(run.addr, "/v1/sse?symbols=AAPL", None, None).await;
    sse.until("subscribed").await;
    let node = run.node.clone();
    let stopping = tokio::spawn(run.shutdown());
    let close = sse.until("close").await;
    assert_eq!(close.data.as_ref().unwrap()["code"], 1001);
    assert!(
        sse.next().await.is_none(),
        "the stream ends after the close"
    );
    stopping.await.unwrap();
    assert_eq!(node.connections.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn auth_applies_to_sse() {
    const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, SECRET).unwrap();
    let mut s = settings();
    s.jwt_secret_file = Some(path);
    let run = start(s).await;

    let refused = get(run.addr, "/v1/sse?symbols=AAPL", None, None).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.headers["www-authenticate"], "Bearer");

    let claims = tickstream::auth::Claims {
        sub: "tester".into(),
        exp: tickstream::auth::expiry_in(Duration::from_secs(60)),
        symbols: Some(vec!["AAPL".into()]),
        roles: None,
    };
    let token = tickstream::auth::issue(SECRET, &claims).unwrap();
    let mut sse = get(
        run.addr,
        &format!("/v1/sse?symbols=AAPL,MSFT&token={token}"),
        None,
        None,
    )
    .await;
    assert_eq!(sse.status, 200);
    let forbidden = sse.until("error").await;
    assert_eq!(forbidden.data.as_ref().unwrap()["code"], "forbidden");
    let subscribed = sse.until("subscribed").await;
    assert_eq!(
        subscribed.data.as_ref().unwrap()["symbols"],
        serde_json::json!(["AAPL"])
    );
    drop(sse);
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sse_client_is_conflated_and_does_not_hold_up_a_websocket_client() {
    const TOTAL: u64 = 20_000;
    let mut s = settings();
    s.queue = 512;
    s.send_buffer = Some(32 * 1024);
    let run = start(s).await;
    let mut slow = get(run.addr, "/v1/sse?symbols=AAPL", None, Some(4096)).await;
    assert_eq!(slow.status, 200);
    let (mut fast, _) = Client::ready(run.addr).await;
    fast.send(r#"{"op":"subscribe","symbols":["AAPL"]}"#).await;
    eventually("both subscribed", || {
        run.node.hub.subscriber_count("AAPL") == 2
    })
    .await;
    fast.until("subscribed").await;

    let bus = run.node.bus.clone();
    let publisher = std::thread::spawn(move || {
        let mut seq = 1;
        while seq <= TOTAL {
            for _ in 0..50 {
                if seq <= TOTAL {
                    bus.publish(tick("AAPL", "e1", seq)).unwrap();
                    seq += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let mut expected = 1;
    while expected <= TOTAL {
        let m = fast.next().await;
        if m["type"] == "tick" || m["type"] == "snapshot" {
            assert_eq!(
                m["seq"].as_u64().unwrap(),
                expected,
                "the WebSocket client missed a tick"
            );
            expected += 1;
        } else {
            assert_ne!(m["type"], "gap", "{m}");
        }
    }
    publisher.join().unwrap();
    assert!(
        run.node.hub.stats().dropped_slow.load(Ordering::Relaxed) > 0,
        "the stalled SSE client's queue never filled"
    );

    // The SSE client wakes up: an orderly stream with a slow_consumer gap, ending at the
    // last tick.
    let mut gaps = 0;
    let mut next = 1;
    while next <= TOTAL {
        let e = slow.message().await;
        match e.ty() {
            "tick" | "snapshot" => {
                assert_eq!(e.seq(), next, "hole without a gap");
                next += 1;
            }
            "gap" => {
                let d = e.data.as_ref().unwrap();
                assert_eq!(d["reason"], "slow_consumer");
                assert_eq!(d["from"].as_u64().unwrap(), next);
                next = d["to"].as_u64().unwrap() + 1;
                gaps += 1;
            }
            _ => {}
        }
    }
    assert!(gaps > 0);
    run.shutdown().await;
}

/// The README's `curl -N` block, run as written against a node (its address rewritten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_curl_example_streams_and_resumes() {
    let readme = include_str!("../README.md");
    let start_at = readme
        .find("```sh\ncurl -N '127.0.0.1:8080/v1/sse")
        .expect("the README's SSE example");
    let block = &readme[start_at + 6..];
    let block = &block[..block.find("```").unwrap()];
    let commands: Vec<&str> = block.lines().filter(|l| l.starts_with("curl ")).collect();
    assert_eq!(commands.len(), 2, "{block}");

    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=110);
    publish(&run, "EUR/USD", "e1", 1..=90);
    let addr = run.addr.to_string();
    let mut outputs = Vec::new();
    for cmd in commands {
        let cmd =
            cmd.replace("127.0.0.1:8080", &addr)
                .replacen("curl -N", "curl -sS -N --max-time 2", 1);
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .output()
            .await
            .expect("curl runs");
        outputs.push(String::from_utf8(out.stdout).unwrap());
    }
    let first = &outputs[0];
    assert!(
        first.starts_with("retry: 2000\n\nevent: welcome\n"),
        "{first}"
    );
    assert!(
        first.contains("event: snapshot\nid: AAPL e1 110"),
        "{first}"
    );
    assert!(first.contains("id: AAPL e1 110,EUR/USD e1 90\n"), "{first}");
    let resumed = &outputs[1];
    let ticks: Vec<Event> = resumed
        .split("\n\n")
        .map(parse)
        .filter(|e| e.ty() == "tick" || e.ty() == "snapshot")
        .collect();
    let mut got: Vec<(String, u64)> = ticks
        .iter()
        .map(|e| {
            assert_eq!(e.ty(), "tick", "a resume replays ticks: {resumed}");
            (e.symbol().to_owned(), e.seq())
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, u64)> = (106..=110).map(|s| ("AAPL".to_owned(), s)).collect();
    want.extend((89..=90).map(|s| ("EUR/USD".to_owned(), s)));
    assert_eq!(got, want);
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symbols_status_is_an_event_of_its_own() {
    use tickstream::bus::{RedisConfig, RedisPublisher};
    let redis = env::RedisServer::start();
    let (run, feed) = node_with_a_feed(&redis.url(), "feed-a", "AAPL").await;
    let mut sse = get(run.addr, "/v1/sse?symbols=AAPL", None, None).await;
    assert_eq!(sse.status, 200);
    let snap = sse.until("snapshot").await;
    assert_eq!(snap.seq(), 1);

    feed.close().await;
    let stale = sse.message().await;
    assert_eq!(stale.ty(), "status", "{stale:?}");
    assert_eq!(stale.id, None, "a status moves no position");
    assert_eq!(
        stale.data.unwrap(),
        serde_json::json!({"type": "status", "symbol": "AAPL", "state": "stale", "reason": "feed"})
    );

    let cfg = RedisConfig::single(&redis.url());
    let feed = RedisPublisher::connect(&cfg, "feed-a").await.unwrap();
    feed.publish(tick("AAPL", "e1", 2)).unwrap();
    let t = sse.message().await;
    assert_eq!((t.ty(), t.seq()), ("tick", 2), "{t:?}");
    let live = sse.message().await;
    assert_eq!(live.ty(), "status", "{live:?}");
    assert_eq!(
        live.data.unwrap(),
        serde_json::json!({"type": "status", "symbol": "AAPL", "state": "live"})
    );
    feed.close().await;
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_stream_sends_skipped_that_adds_up() {
    let run = start(settings()).await;
    publish(&run, "AAPL", "e1", 1..=1);
    let mut sse = get(run.addr, "/v1/sse?symbols=AAPL&throttle_ms=100", None, None).await;
    assert_eq!(sse.status, 200);
    let ok = sse.until("subscribed").await;
    assert_eq!(ok.data.as_ref().unwrap()["throttle_ms"], 100);
    assert_eq!(sse.message().await.ty(), "snapshot");
    // 300 ticks over some 0.6 s.
    let node = run.node.clone();
    let feeding = tokio::spawn(async move {
        for seq in 2..=301 {
            node.bus.publish(tick("AAPL", "e1", seq)).unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let (mut prev, mut paced) = (1, 0);
    while prev < 301 {
        let e = sse.message().await;
        assert_eq!(e.ty(), "tick", "{e:?}");
        let skipped = e.data.as_ref().unwrap()["skipped"].as_u64().unwrap();
        assert_eq!(e.seq() - prev - 1, skipped);
        assert_eq!(
            e.id.as_deref(),
            Some(format!("AAPL e1 {}", e.seq()).as_str())
        );
        prev = e.seq();
        paced += 1;
    }
    feeding.await.unwrap();
    assert!(paced < 50, "{paced} events for 300 ticks at 100 ms");
    run.shutdown().await;
}

#[tokio::test]
async fn a_pattern_streams_its_matches_and_resumes_each_from_the_event_id() {
    let run = start(settings()).await;
    publish(&run, "BTC-USD", "e1", 1..=5);
    let mut sse = get(run.addr, "/v1/sse?symbols=BTC-*", None, None).await;
    assert_eq!(sse.status, 200);
    let ok = sse.until("subscribed").await;
    let data = ok.data.unwrap();
    assert_eq!(data["patterns"], serde_json::json!(["BTC-*"]));
    assert!(data["symbols"].as_array().unwrap().len() >= 2, "{data}");
    let snap = sse.message().await;
    assert_eq!(
        (snap.ty(), snap.symbol(), snap.seq()),
        ("snapshot", "BTC-USD", 5)
    );
    // A matched symbol without a value joins with its first one.
    publish(&run, "BTC-EUR", "e1", 1..=1);
    let e = sse.message().await;
    assert_eq!((e.ty(), e.symbol(), e.seq()), ("snapshot", "BTC-EUR", 1));
    let last = e.id.unwrap();
    drop(sse);
    publish(&run, "BTC-USD", "e1", 6..=7);
    let mut sse = get(run.addr, "/v1/sse?symbols=BTC-*", Some(&last), None).await;
    sse.until("subscribed").await;
    let got: Vec<(String, u64)> = [sse.message().await, sse.message().await]
        .iter()
        .map(|e| (e.ty().to_owned(), e.seq()))
        .collect();
    assert_eq!(
        got,
        [("tick".to_owned(), 6), ("tick".to_owned(), 7)],
        "{last}"
    );
    run.shutdown().await;
}

#[tokio::test]
async fn bad_channel_and_pace_parameters_are_refused_with_400() {
    let run = start(settings()).await;
    for (query, why) in [
        (
            "symbols=AAPL&throttle_ms=5",
            "throttle_ms 5 is out of range",
        ),
        ("symbols=AAPL&throttle_ms=fast", "not an unsigned integer"),
        ("symbols=AAPL&channel=trades", "unknown channel"),
        ("symbols=AAPL&depth=10", "belongs to channel book"),
        ("symbols=AAPL&channel=candles&backfill=60", "interval"),
        (
            "symbols=AAPL&channel=book&depth=20",
            "depth 20 is not served: 10 or 50",
        ),
    ] {
        let bad = get(run.addr, &format!("/v1/sse?{query}"), None, None).await;
        assert_eq!(bad.status, 400, "{query}");
        let body = bad.body_text().await;
        assert!(body.contains(why), "{query}: {body}");
    }
    assert_eq!(run.node.interest().watched(), 0);
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_start_with_their_backfill_then_bars_follow() {
    let run = start(settings()).await;
    // Ticks 400 ms apart from the start of an hour: five 1s bars.
    let t0: u64 = 1_764_284_400_000_000_000;
    for seq in 1..=12 {
        let mut t = tick("MSFT", "e1", seq);
        t.ts = t0 + (seq - 1) * 400_000_000;
        run.node.bus.publish(t).unwrap();
    }
    let path = "/v1/sse?symbols=MSFT&channel=candles&interval=1s&backfill=2";
    let mut sse = get(run.addr, path, None, None).await;
    assert_eq!(sse.status, 200);
    let ok = sse.until("subscribed").await;
    assert_eq!(ok.data.as_ref().unwrap()["channel"], "candles");
    let c = sse.until("candles").await;
    assert_eq!(c.id, None, "bars move no position");
    let bars = c.data.unwrap()["bars"].as_array().unwrap().clone();
    let starts: Vec<u64> = bars.iter().map(|b| b["start"].as_u64().unwrap()).collect();
    let s = 1_000_000_000;
    assert_eq!(
        starts,
        [t0 + 2 * s, t0 + 3 * s, t0 + 4 * s],
        "two closed, then the forming one"
    );
    assert_eq!(bars[2]["closed"], false);
    // The next bar's first tick closes the forming one: a candle, closed.
    let mut t = tick("MSFT", "e1", 13);
    t.ts = t0 + 5 * s;
    run.node.bus.publish(t).unwrap();
    let closed = sse.until("candle").await;
    let d = closed.data.unwrap();
    assert_eq!(
        (d["start"].as_u64(), &d["closed"]),
        (Some(t0 + 4 * s), &true.into())
    );
    run.shutdown().await;
}
