//! Deadlines under a permanent backlog: a client that reads more slowly than ticks come
//! (its queue never empty) still gets its heartbeats on time, and a token that expires
//! still closes it on time, with ticks in order up to the close.

mod common;
#[path = "common/raw.rs"]
mod raw;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use raw::*;
use tickstream::auth::{self, Claims};

const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

/// Ticks a second of the feed.
const FEED_RATE: u64 = 5_000;

/// A node whose queue is large enough never to conflate in these tests, and a feed of
/// about [`FEED_RATE`] AAPL ticks a second for `for_s`.
async fn backlogged(
    mut s: tickstream::config::Settings,
    for_s: u64,
) -> tickstream::server::Running {
    s.queue = 100_000;
    s.send_buffer = Some(8 * 1024);
    let run = start(s).await;
    let node = run.node.clone();
    tokio::spawn(async move {
        let t0 = Instant::now();
        let mut seq = 1;
        while t0.elapsed() < Duration::from_secs(for_s) {
            for _ in 0..FEED_RATE / 200 {
                let _ = node.bus.publish(tick("AAPL", "e1", seq));
                seq += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    run
}

/// A raw client on a socket with a small receive buffer, subscribed to AAPL.
async fn slow_client(addr: SocketAddr, token: Option<&str>) -> Raw {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut raw = Raw::upgrade(tcp, addr, "/v1/ws", &auth).await;
    raw.send(&whole(
        TEXT,
        br#"{"op":"subscribe","id":1,"symbols":["AAPL"]}"#,
    ))
    .await;
    raw
}

/// What a slow reader saw: when each Ping came, the ticks, gaps and the close code.
#[derive(Default, Debug)]
struct Seen {
    pings: Vec<Duration>,
    ticks: u64,
    gaps: u64,
    close: Option<u16>,
}

/// Reads at most 4 KiB every 10 ms (about 2,000 ticks a second, less than the feed)
/// for up to `for_s`, checking that ticks come in order.
async fn read_slowly(raw: &mut Raw, for_s: u64) -> Seen {
    let t0 = Instant::now();
    let mut seen = Seen::default();
    let mut last = 0;
    while t0.elapsed() < Duration::from_secs(for_s) && seen.close.is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if !raw.fill_at_most(4096).await {
            break;
        }
        while let Some((op, payload)) = raw.take_frame() {
            match op {
                PING => seen.pings.push(t0.elapsed()),
                CLOSE => seen.close = Some(u16::from_be_bytes([payload[0], payload[1]])),
                TEXT => {
                    let batch: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                    for m in batch.as_array().unwrap() {
                        match m["type"].as_str().unwrap() {
                            "tick" | "snapshot" => {
                                let seq = m["seq"].as_u64().unwrap();
                                // From the snapshot on: in order, nothing missed.
                                assert!(last == 0 || seq == last + 1, "{seq} after {last}");
                                last = seq;
                                seen.ticks += 1;
                            }
                            "gap" => seen.gaps += 1,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_under_a_permanent_backlog_is_pinged_on_time() {
    let mut s = settings();
    s.heartbeat = Duration::from_millis(300);
    s.heartbeat_grace = Duration::from_secs(60);
    let run = backlogged(s, 5).await;
    let mut raw = slow_client(run.addr, None).await;
    let seen = read_slowly(&mut raw, 4).await;
    // Far behind the feed all along (reading less than half of it), yet pinged every
    // 300 ms, each Ping at most one batch (512 ticks, 0.25 s at this pace) late.
    assert!(seen.ticks > 0 && seen.ticks < 3 * FEED_RATE, "{seen:?}");
    let late = seen
        .pings
        .iter()
        .filter(|t| **t >= Duration::from_secs(1))
        .count();
    assert!(late >= 4, "{late} Pings in the last 3 s: {seen:?}");
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_under_a_permanent_backlog_closes_on_time() {
    let (s, _dir) = with_jwt_secret(settings(), SECRET);
    let run = backlogged(s, 15).await;
    let claims = Claims {
        sub: "slow".into(),
        exp: auth::expiry_in(Duration::from_secs(2)),
        symbols: None,
        roles: None,
    };
    let token = auth::issue(SECRET, &claims).unwrap();
    let t0 = Instant::now();
    let mut raw = slow_client(run.addr, Some(&token)).await;
    let seen = read_slowly(&mut raw, 12).await;
    assert_eq!(seen.close, Some(1008), "{seen:?}");
    assert!(seen.ticks > 0, "{seen:?}");
    // Expiry within 2 s, read by a client behind by what the kernel buffers hold.
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        t0.elapsed()
    );
    run.shutdown().await;
}
