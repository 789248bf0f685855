//! A client that stops reading never delays the others and never grows memory without
//! bound: it is conflated (gaps) or disconnected (4008), by configuration.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tickstream::hub::SlowPolicy;

const TOTAL: u64 = 20_000;

/// Publishes `TOTAL` ticks of AAPL at about 10,000/s from a plain thread.
fn publish_paced(run: &tickstream::server::Running) -> std::thread::JoinHandle<()> {
    let bus = run.node.bus.clone();
    std::thread::spawn(move || {
        let mut seq = 1;
        while seq <= TOTAL {
            for _ in 0..50 {
                if seq > TOTAL {
                    break;
                }
                bus.publish(tick("AAPL", "e1", seq)).unwrap();
                seq += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// Reads a client to the final seq, checking the sequence: every tick is the next one,
/// or a `gap` covers exactly what was skipped. Returns (ticks, gaps, worst latency).
async fn read_all(c: &mut Client) -> (u64, u64, Duration) {
    let (mut expected, mut ticks, mut gaps, mut worst) = (1u64, 0u64, 0u64, Duration::ZERO);
    while expected <= TOTAL {
        let m = c.next().await;
        match m["type"].as_str().unwrap() {
            // The symbol had no value when the client subscribed: its first is the snapshot.
            "snapshot" => {
                assert_eq!((m["seq"].as_u64().unwrap(), expected), (1, 1), "{m}");
                expected += 1;
                ticks += 1;
            }
            "tick" => {
                assert_eq!(m["seq"].as_u64().unwrap(), expected, "hole without a gap");
                let lat = tickstream::tick::now_ns().saturating_sub(m["ts"].as_u64().unwrap());
                worst = worst.max(Duration::from_nanos(lat));
                expected += 1;
                ticks += 1;
            }
            "gap" => {
                assert_eq!(m["reason"], "slow_consumer");
                assert_eq!(m["from"].as_u64().unwrap(), expected, "{m}");
                expected = m["to"].as_u64().unwrap() + 1;
                gaps += 1;
            }
            _ => {}
        }
    }
    (ticks, gaps, worst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_conflated_while_others_get_every_tick() {
    let mut s = settings();
    s.queue = 512;
    // Small kernel buffers, so that a stalled client fills its queue after a few
    // thousand ticks rather than megabytes.
    s.send_buffer = Some(32 * 1024);
    let run = start(s).await;
    let (mut slow, _) = Client::ready(run.addr).await;
    slow.send(r#"{"op":"subscribe","symbols":["AAPL"]}"#).await;
    let (mut fast, _) = Client::ready(run.addr).await;
    fast.send(r#"{"op":"subscribe","symbols":["AAPL"]}"#).await;
    eventually("both subscribed", || {
        run.node.hub.subscriber_count("AAPL") == 2
    })
    .await;
    fast.until("subscribed").await;

    let rss_before = rss_bytes();
    let publisher = publish_paced(&run);
    let (ticks, gaps, worst) = read_all(&mut fast).await;
    publisher.join().unwrap();
    assert_eq!(
        (ticks, gaps),
        (TOTAL, 0),
        "the reading client misses nothing"
    );
    assert!(
        worst < Duration::from_secs(1),
        "the reading client was held up: worst latency {worst:?}"
    );
    let dropped = run.node.hub.stats().dropped_slow.load(Ordering::Relaxed);
    assert!(dropped > 0, "the stalled client's queue never filled");
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 64 << 20, "memory grew by {} MiB", grown >> 20);

    // The stalled client wakes up: an orderly stream with gaps, ending at the last tick.
    slow.until("subscribed").await;
    let (ticks, gaps, _) = read_all(&mut slow).await;
    assert!(gaps > 0 && ticks < TOTAL, "ticks {ticks}, gaps {gaps}");
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_disconnected_with_4008_under_that_policy() {
    let mut s = settings();
    s.queue = 512;
    // Small kernel buffers, so that a stalled client fills its queue after a few
    // thousand ticks rather than megabytes.
    s.send_buffer = Some(32 * 1024);
    s.slow_policy = SlowPolicy::Disconnect;
    let run = start(s).await;
    let (mut slow, _) = Client::ready(run.addr).await;
    slow.send(r#"{"op":"subscribe","symbols":["AAPL"],"snapshot":false}"#)
        .await;
    let (mut fast, _) = Client::ready(run.addr).await;
    fast.send(r#"{"op":"subscribe","symbols":["AAPL"],"snapshot":false}"#)
        .await;
    eventually("both subscribed", || {
        run.node.hub.subscriber_count("AAPL") == 2
    })
    .await;
    fast.until("subscribed").await;

    let publisher = publish_paced(&run);
    let (ticks, gaps, _) = read_all(&mut fast).await;
    publisher.join().unwrap();
    assert_eq!((ticks, gaps), (TOTAL, 0));
    assert!(run.node.hub.stats().dropped_slow.load(Ordering::Relaxed) > 0);
    // Reading again, the stalled client finds what was sent before, then 4008.
    assert_eq!(slow.closed(Duration::from_secs(10)).await, Some(4008));
    eventually("the slow session is gone", || {
        run.node.hub.subscriber_count("AAPL") == 1
    })
    .await;
    run.shutdown().await;
}
