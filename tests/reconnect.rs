//! Planned reconnects: before closing a connection it chose to close (the node drains,
//! the connection reached its lifetime), the server sends `reconnect` with `in_ms`,
//! keeps streaming that long, then closes with 1001. A client that opens its next
//! connection at once and resumes there misses and repeats nothing.

mod common;
#[path = "common/redis.rs"]
mod env;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use env::{fast, RedisServer};
use serde_json::Value;
use tickstream::bus::{RedisConfig, RedisPublisher};
use tickstream::config::Settings;

/// Subscribes `c` to AAPL (with `resume`, a JSON object, if given) and reads to the
/// `subscribed` reply.
async fn subscribe(c: &mut Client, resume: Option<String>) {
    let resume = resume.map_or(String::new(), |r| format!(r#","resume":{r}"#));
    c.send(&format!(
        r#"{{"op":"subscribe","symbols":["AAPL"]{resume}}}"#
    ))
    .await;
    c.until("subscribed").await;
}

/// Reads `c` until `reconnect`, checking that AAPL comes one by one after `last` (0:
/// from wherever it starts); returns the notice, when it came and the last seq before
/// it.
async fn until_notice(c: &mut Client, mut last: u64) -> (Value, Instant, u64) {
    loop {
        let m = c.next().await;
        match m["type"].as_str().unwrap() {
            "snapshot" => last = m["seq"].as_u64().unwrap(),
            "tick" => {
                let seq = m["seq"].as_u64().unwrap();
                assert!(last == 0 || seq == last + 1, "a hole after {last}: {m}");
                last = seq;
            }
            "reconnect" => return (m, Instant::now(), last),
            "gap" => panic!("a gap: {m}"),
            _ => {}
        }
    }
}

/// Reads the old connection to its close after the notice: the ticks it kept streaming
/// (each the one after `from`), the close code and when it came.
async fn rest_of_old(c: &mut Client, from: u64) -> (Vec<u64>, Option<u16>, Instant) {
    let mut seqs = Vec::new();
    let mut last = from;
    while let Some(m) = c.try_next(WAIT).await {
        assert_ne!(m["type"], "gap", "{m}");
        if m["type"] == "tick" {
            let seq = m["seq"].as_u64().unwrap();
            assert_eq!(seq, last + 1, "the old connection skipped after {last}");
            last = seq;
            seqs.push(seq);
        }
    }
    let code = c.closed(WAIT).await;
    (seqs, code, Instant::now())
}

/// Reads `n` ticks of the new connection, which must start right after `from`.
async fn first_of_new(c: &mut Client, from: u64, n: u64) {
    let mut want = from + 1;
    while want <= from + n {
        let m = c.next().await;
        assert!(
            m["type"] != "gap" && m["type"] != "snapshot",
            "the resume was not a replay: {m}"
        );
        if m["type"] == "tick" {
            assert_eq!(m["seq"].as_u64().unwrap(), want, "{m}");
            want += 1;
        }
    }
}

/// The resume a client sends for the AAPL position it holds.
fn resume_at(seq: u64) -> Option<String> {
    Some(format!(r#"{{"AAPL":{{"epoch":"e1","seq":{seq}}}}}"#))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_lifetime_a_connection_is_told_to_reconnect_and_a_resume_loses_nothing() {
    let life = Duration::from_millis(1500);
    let notice = Duration::from_millis(500);
    let run = start(Settings {
        max_connection_lifetime: life,
        reconnect_notice: notice,
        ..settings()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = ticking(&run, "AAPL", stop.clone());
    let opened = Instant::now();
    let (mut old, _) = Client::ready(run.addr).await;
    subscribe(&mut old, None).await;
    let (msg, told, held) = until_notice(&mut old, 0).await;
    assert_eq!(msg["reason"], "lifetime", "{msg}");
    let in_ms = msg["in_ms"].as_u64().unwrap();
    assert!((400..=500).contains(&in_ms), "{msg}");
    let at = told - opened;
    assert!(
        at >= life.mul_f64(0.9) - notice && at <= life.mul_f64(1.1) - notice + WAIT / 10,
        "told after {at:?}"
    );

    // Make before break: the next connection resumes from what the old one gave.
    let (mut new, _) = Client::ready(run.addr).await;
    subscribe(&mut new, resume_at(held)).await;
    first_of_new(&mut new, held, 200).await;
    let (streamed, code, closed) = rest_of_old(&mut old, held).await;
    assert_eq!(code, Some(1001));
    assert!(!streamed.is_empty(), "the old connection kept streaming");
    let open_for = closed - told;
    assert!(
        open_for >= Duration::from_millis(in_ms - 50),
        "closed {open_for:?} after a notice of {in_ms} ms"
    );
    let (_, text) = http_get(run.addr, "/metrics").await;
    assert!(
        text.contains(r#"tickstream_reconnects_sent_total{reason="lifetime"}"#),
        "{text}"
    );
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opened_together_do_not_leave_together() {
    let run = start(Settings {
        max_connection_lifetime: Duration::from_secs(2),
        reconnect_notice: Duration::from_millis(100),
        ..settings()
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..10 {
        // Binary sessions too: the notice is a JSON text frame for them.
        let path = if i % 2 == 0 {
            "/v1/ws"
        } else {
            "/v1/ws?encoding=binary"
        };
        let mut c = Client::connect_path(run.addr, path).await;
        c.until("welcome").await;
        clients.push(c);
    }
    let t0 = Instant::now();
    let told = futures_util::future::join_all(clients.iter_mut().map(|c| async {
        let m = c.until("reconnect").await;
        assert_eq!(m["reason"], "lifetime");
        t0.elapsed()
    }))
    .await;
    let (lo, hi) = (told.iter().min().unwrap(), told.iter().max().unwrap());
    assert!(*hi - *lo >= Duration::from_millis(40), "told at {told:?}");
    assert!(
        *lo >= Duration::from_millis(1_500) && *hi <= Duration::from_millis(2_400),
        "{told:?}"
    );
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_tells_its_clients_who_resume_on_another_node_losing_nothing() {
    let redis = RedisServer::start();
    let cfg = fast(RedisConfig::single(&redis.url()));
    let notice = Duration::from_millis(600);
    let draining = start(Settings {
        redis: Some(cfg.clone()),
        node: "a".into(),
        reconnect_notice: notice,
        ..settings()
    })
    .await;
    let other = start(Settings {
        redis: Some(cfg.clone()),
        node: "b".into(),
        ..settings()
    })
    .await;
    let feed = RedisPublisher::connect(&cfg, "feed").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                feed.publish_blocking(tick("AAPL", "e1", seq)).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let (mut old, _) = Client::ready(draining.addr).await;
    subscribe(&mut old, None).await;
    let (status, sse) = http_get_stream(draining.addr, "/v1/sse?symbols=AAPL").await;
    assert_eq!(status, 200);
    // Some ticks flow before the drain.
    let mut last = 0;
    for _ in 0..50 {
        last = old.until("tick").await["seq"].as_u64().unwrap();
    }
    let addr = draining.addr;
    let stopping = tokio::spawn(draining.shutdown());
    let (msg, told, held) = until_notice(&mut old, last).await;
    assert_eq!(msg["reason"], "shutdown", "{msg}");
    assert!(msg["in_ms"].as_u64().unwrap() <= 600, "{msg}");

    // While it drains the node takes no new connection: a balancer moves on.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    let (mut new, _) = Client::ready(other.addr).await;
    subscribe(&mut new, resume_at(held)).await;
    first_of_new(&mut new, held, 200).await;
    let (streamed, code, closed) = rest_of_old(&mut old, held).await;
    assert_eq!(code, Some(1001));
    assert!(!streamed.is_empty(), "the old connection kept streaming");
    // Told at a moment drawn in the first half of the notice, with the time left.
    let left = Duration::from_millis(msg["in_ms"].as_u64().unwrap());
    assert!(left >= notice / 2 - Duration::from_millis(50), "{msg}");
    assert!(closed - told >= left - Duration::from_millis(100), "{msg}");
    let sse = sse.await.unwrap();
    let (reconnect, close) = (
        sse.find("event: reconnect\ndata: {\"type\":\"reconnect\",\"reason\":\"shutdown\""),
        sse.find("event: close\ndata: {\"code\":1001"),
    );
    assert!(
        matches!((reconnect, close), (Some(r), Some(c)) if r < c),
        "the SSE stream is told, then closed: {}",
        &sse[sse.len().saturating_sub(600)..]
    );
    stopping.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    other.shutdown().await;
}
