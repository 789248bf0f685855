//! Make before break on real sockets: a node's `reconnect` (put on the wire by a relay in
//! front of a real node) moves the Rust client to its next connection, subscribed with
//! `resume` there before the old one is closed, while ticks flow the whole time — no
//! hole and no duplicate; and a move whose new connection fails leaves the client where
//! it was.

mod common;
#[path = "common/relay.rs"]
mod relay;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use relay::Relay;
use tickstream::client::{Client, ClientConfig, Counters, Event, ServerMessage, TickMessage};
use tickstream::server::Running;

/// Publishes AAPL seq 1, 2, … every 2 ms until `stop`; `last` holds the last seq.
fn ticking(run: &Running, stop: Arc<AtomicBool>, last: Arc<AtomicU64>) {
    let node = run.node.clone();
    tokio::spawn(async move {
        let mut seq = 0;
        while !stop.load(Ordering::SeqCst) {
            seq += 1;
            node.bus.publish(tick("AAPL", "m", seq)).unwrap();
            last.store(seq, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
}

/// What the program saw: the seq of every AAPL value, and every other event.
#[derive(Default)]
struct Seen {
    seqs: Vec<u64>,
    events: Vec<Event>,
}

impl Seen {
    async fn until(&mut self, c: &mut Client, what: &str, mut done: impl FnMut(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(self) {
            let ev = tokio::time::timeout_at(deadline, c.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", self.events))
                .unwrap();
            match ev {
                Event::Message(
                    ServerMessage::Snapshot(t) | ServerMessage::Tick(TickMessage { tick: t, .. }),
                ) => self.seqs.push(t.seq),
                other => self.events.push(other),
            }
        }
    }

    fn has(&self, f: impl Fn(&Event) -> bool) -> bool {
        self.events.iter().any(f)
    }
}

fn client(urls: Vec<String>) -> Client {
    Client::new(ClientConfig {
        urls,
        symbols: vec!["AAPL".into()],
        report_every: None,
        ..ClientConfig::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_reconnect_moves_without_a_hole_or_a_duplicate() {
    let run = start(settings()).await;
    let relay = Relay::start(run.addr).await;
    let to = format!("ws://{}/v1/ws", run.addr);
    let mut c = client(vec![format!("ws://{}/v1/ws", relay.addr), to.clone()]);
    let (stop, last) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    ticking(&run, stop.clone(), last.clone());
    let mut seen = Seen::default();
    seen.until(&mut c, "100 ticks on the first connection", |s| {
        s.seqs.len() >= 100
    })
    .await;
    relay.announce();
    seen.until(&mut c, "the move", |s| {
        s.has(|e| matches!(e, Event::Moved { .. }))
    })
    .await;
    let at_move = seen.seqs.last().copied().unwrap();
    seen.until(&mut c, "200 ticks after the move", |s| {
        s.seqs.last().is_some_and(|q| *q >= at_move + 200)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let n = last.load(Ordering::SeqCst);
    seen.until(&mut c, "the last tick", |s| s.seqs.last() == Some(&n))
        .await;

    let first = seen.seqs[0];
    assert_eq!(
        seen.seqs,
        (first..=n).collect::<Vec<_>>(),
        "every seq once, in order, across the move"
    );
    let moving = seen
        .events
        .iter()
        .position(|e| matches!(e, Event::Moving { .. }));
    let announced = seen.events.iter().position(|e| {
        matches!(e, Event::Message(ServerMessage::Reconnect { reason, in_ms: 5000 }) if reason == "lifetime")
    });
    assert!(
        announced.is_some() && moving > announced,
        "{:?}",
        seen.events
    );
    let Some(Event::Moved {
        from,
        to: moved_to,
        resumed,
        ..
    }) = seen
        .events
        .iter()
        .find(|e| matches!(e, Event::Moved { .. }))
    else {
        unreachable!()
    };
    assert_eq!(
        (&**from, &**moved_to, *resumed),
        (&*format!("ws://{}/v1/ws", relay.addr), &*to, 1)
    );
    assert!(
        !seen.has(|e| matches!(
            e,
            Event::Hole { .. } | Event::Disconnected { .. } | Event::Retrying { .. }
        )),
        "{:?}",
        seen.events
    );
    let Counters {
        moves,
        disconnects,
        holes,
        ..
    } = c.counters();
    assert_eq!((moves, disconnects, holes), (1, 0, 0));
    // The old connection is gone: one subscriber of AAPL is left on the node.
    eventually("the old connection closed", || {
        run.node.hub.subscriber_count("AAPL") == 1
    })
    .await;
    c.close().await;
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_that_cannot_connect_stays_on_the_old_connection() {
    let run = start(settings()).await;
    let relay = Relay::start(run.addr).await;
    // Nothing listens at the next URL.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("ws://{}/v1/ws", gone.local_addr().unwrap());
    drop(gone);
    let mut c = client(vec![format!("ws://{}/v1/ws", relay.addr), nowhere]);
    let (stop, last) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    ticking(&run, stop.clone(), last.clone());
    let mut seen = Seen::default();
    seen.until(&mut c, "ticks", |s| s.seqs.len() >= 20).await;
    relay.announce();
    seen.until(&mut c, "the failed move", |s| {
        s.has(|e| matches!(e, Event::MoveFailed { .. }))
    })
    .await;
    let at = seen.seqs.last().copied().unwrap();
    seen.until(&mut c, "ticks after it, on the old connection", |s| {
        s.seqs.last().is_some_and(|q| *q >= at + 50)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let first = seen.seqs[0];
    let upto = *seen.seqs.last().unwrap();
    assert_eq!(seen.seqs, (first..=upto).collect::<Vec<_>>());
    assert!(!seen.has(|e| matches!(e, Event::Moved { .. } | Event::Disconnected { .. })));
    assert_eq!(c.counters().moves, 0);
    c.close().await;
    run.shutdown().await;
}
