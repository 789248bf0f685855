//! The node-wide bound on buffered output (`max_outbound_bytes`): stalled clients
//! together never hold more than the bound (give or take what arrives while the policy
//! acts); the largest are conflated (or, under `disconnect`, closed), and a client
//! whose queue is small is never touched.
//!
//! The client that keeps up reads MSFT, published once per 100 AAPL ticks: at 20,000
//! ticks/s a test client of a debug build on a busy machine would not keep up with
//! AAPL itself, and the bound would rightly act on it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tickstream::config::Settings;
use tickstream::hub::SlowPolicy;
use tickstream::server::Running;
use tokio_tungstenite::tungstenite::Message;

const BOUND: u64 = 512 * 1024;

fn bounded(policy: SlowPolicy) -> Settings {
    Settings {
        max_outbound_bytes: BOUND,
        outbound_floor: 64 * 1024,
        queue: 8192,
        slow_policy: policy,
        // Small kernel buffers: a stalled client backs up into the node soon.
        send_buffer: Some(16 * 1024),
        send_timeout: Duration::from_secs(30),
        ..settings()
    }
}

/// A client with a small receive buffer, subscribed to AAPL, that reads nothing more
/// until told to.
async fn stalled(run: &Running) -> Client {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(8 * 1024).unwrap();
    let tcp = sock.connect(run.addr).await.unwrap();
    let url = format!("ws://{}/v1/ws", run.addr);
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
    let mut c = Client::from_ws(ws);
    c.ws.send(Message::text(r#"{"op":"subscribe","symbols":["AAPL"]}"#))
        .await
        .unwrap();
    c.until("subscribed").await;
    c
}

/// Publishes AAPL 1..=`n` at about 20,000 a second, and MSFT 1..=`n / 100` (one per
/// 100 AAPL), while sampling what the node holds; returns the most it held.
async fn flood(run: &Running, n: u64) -> u64 {
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (bus, done) = (run.node.bus.clone(), done.clone());
        std::thread::spawn(move || {
            for seq in 1..=n {
                bus.publish(tick("AAPL", "e1", seq)).unwrap();
                if seq % 100 == 0 {
                    bus.publish(tick("MSFT", "e1", seq / 100)).unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            done.store(true, Ordering::Relaxed);
        })
    };
    let mut most = 0;
    while !done.load(Ordering::Relaxed) {
        most = most.max(run.node.budget.held());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    publisher.join().unwrap();
    most
}

/// Reads `c` to `symbol`'s seq `last`: every tick the next one, or a `gap`
/// (slow_consumer) covering exactly what was skipped. Returns the gaps.
async fn orderly(c: &mut Client, symbol: &str, last: u64) -> u64 {
    let (mut want, mut gaps) = (1, 0);
    while want <= last {
        let m = c.next().await;
        if m.get("symbol").is_some_and(|s| s != symbol) {
            continue;
        }
        match m["type"].as_str().unwrap() {
            "snapshot" | "tick" => {
                assert_eq!(m["seq"].as_u64().unwrap(), want, "a hole: {m}");
                want += 1;
            }
            "gap" => {
                assert_eq!(m["reason"], "slow_consumer", "{m}");
                assert_eq!(m["from"].as_u64().unwrap(), want, "{m}");
                want = m["to"].as_u64().unwrap() + 1;
                gaps += 1;
            }
            _ => {}
        }
    }
    gaps
}

/// A client subscribed to MSFT that reads all it is sent, in a task that ends once it
/// has read MSFT to `last`, giving back its gaps and the client (still connected).
async fn keeping_up(run: &Running, last: u64) -> tokio::task::JoinHandle<(u64, Client)> {
    let (mut reader, _) = Client::ready(run.addr).await;
    reader
        .send(r#"{"op":"subscribe","symbols":["MSFT"]}"#)
        .await;
    reader.until("subscribed").await;
    tokio::spawn(async move { (orderly(&mut reader, "MSFT", last).await, reader) })
}

/// AAPL ticks of a storm.
const TOTAL: u64 = 30_000;

/// A node under `policy` after a storm: four stalled AAPL subscribers, and one client
/// reading MSFT that lost nothing (checked here) and is still connected.
struct Storm {
    run: Running,
    stuck: Vec<Client>,
    _reader: Client,
    /// The most output the node held during the storm, bytes.
    most: u64,
}

async fn storm(policy: SlowPolicy) -> Storm {
    let run = start(bounded(policy)).await;
    let mut stuck = Vec::new();
    for _ in 0..4 {
        stuck.push(stalled(&run).await);
    }
    let reading = keeping_up(&run, TOTAL / 100).await;
    let most = flood(&run, TOTAL).await;
    let (gaps, reader) = reading.await.unwrap();
    assert_eq!(gaps, 0, "the reading client lost nothing");
    Storm {
        run,
        stuck,
        _reader: reader,
        most,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_the_largest_are_conflated_and_a_reading_client_is_untouched() {
    let Storm {
        run,
        mut stuck,
        most,
        _reader,
    } = storm(SlowPolicy::Conflate).await;
    let budget = &run.node.budget;
    assert!(budget.conflations() > 0, "the bound never acted");
    assert!(
        most <= BOUND + BOUND / 2,
        "held {most} bytes against a bound of {BOUND}"
    );
    // The stalled ones read again: an orderly stream with gaps, to the last tick.
    for c in &mut stuck {
        assert!(orderly(c, "AAPL", TOTAL).await > 0);
    }
    let (_, text) = http_get(run.addr, "/metrics").await;
    for line in [
        format!("tickstream_outbound_bound_bytes {BOUND}"),
        r#"tickstream_outbound_bound_actions_total{action="conflate"}"#.to_owned(),
    ] {
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_disconnect_the_largest_are_closed_and_a_reading_client_is_untouched() {
    // Every client is kept connected until the closed ones are counted.
    let Storm {
        run,
        most,
        stuck: _stuck,
        _reader,
    } = storm(SlowPolicy::Disconnect).await;
    let closes = run.node.budget.closes();
    assert!(closes > 0, "the bound never closed anyone");
    assert!(most <= BOUND + BOUND / 2, "held {most} bytes");
    assert_eq!(run.node.budget.conflations(), 0);
    eventually(
        "the closed sessions are gone, the reading one stays",
        || {
            run.node.hub.subscriber_count("AAPL") == 4 - closes as usize
                && run.node.hub.subscriber_count("MSFT") == 1
        },
    )
    .await;
    run.shutdown().await;
}
