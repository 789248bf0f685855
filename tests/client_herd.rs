//! The client library against real nodes: 2,000 clients lose their node at once and
//! come back on another, spread over the backoff window, each resuming with no hole.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tickstream::client::{BackoffConfig, Client, ClientConfig, Event, ServerMessage, TickMessage};
use tickstream::server::Running;
use tickstream::tick::Tick;

const CLIENTS: usize = 2_000;
const SYMBOLS: [&str; 2] = ["AAPL", "MSFT"];
/// Ticks both nodes have before the failure.
const BEFORE: u64 = 5;
/// Last tick published, on the surviving node, after the failure.
const LAST: u64 = 30;
/// Width of the histogram's slots.
const SLOT: Duration = Duration::from_millis(100);
/// The backoff window of the first retry (base); the cap is twice that.
const BASE: Duration = Duration::from_secs(3);

/// A node in its own runtime, so that it can be made to vanish at once: shutting the
/// runtime down drops every connection task, closing the sockets without close frames.
fn isolated_node() -> (tokio::runtime::Runtime, Running) {
    // Built on a thread of its own: a runtime cannot be entered from inside another.
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let run = rt.block_on(tickstream::server::start(settings())).unwrap();
        (rt, run)
    })
    .join()
    .unwrap()
}

/// What one client saw after the failure.
#[derive(Default, Debug)]
struct Outcome {
    reconnected_after: Option<Duration>,
    resumed: usize,
    out_of_order: u64,
    gaps: u64,
    holes: u64,
    duplicates: u64,
    last: [u64; 2],
}

async fn run_client(
    urls: Vec<String>,
    ready: Arc<AtomicUsize>,
    failed_at: Arc<tokio::sync::OnceCell<Instant>>,
) -> (Outcome, Client) {
    let mut client = Client::new(ClientConfig {
        urls,
        symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
        backoff: BackoffConfig {
            base: BASE,
            cap: BASE * 2,
            max_attempts: 10,
        },
        ..ClientConfig::default()
    })
    .unwrap();
    let mut out = Outcome::default();
    let mut counted_ready = false;
    while out.last != [LAST, LAST] {
        let ev = client.next().await.expect("the client keeps going");
        match ev {
            Event::Connected {
                reconnect: true,
                resumed,
                dialed,
                ..
            } => {
                let t0 = *failed_at.get().expect("reconnects only after the failure");
                out.reconnected_after = Some(dialed.duration_since(t0));
                out.resumed = resumed;
            }
            Event::Hole { .. } => out.holes += 1,
            Event::Message(ServerMessage::Gap { .. }) => out.gaps += 1,
            Event::Message(ServerMessage::Snapshot(t)) => {
                let i = SYMBOLS.iter().position(|s| *s == &*t.symbol).unwrap();
                out.last[i] = t.seq;
            }
            Event::Message(ServerMessage::Tick(t)) => {
                let i = SYMBOLS.iter().position(|s| *s == &*t.symbol).unwrap();
                if t.seq != out.last[i] + 1 {
                    out.out_of_order += 1;
                }
                out.last[i] = t.seq;
            }
            _ => {}
        }
        if !counted_ready && out.last == [BEFORE, BEFORE] {
            counted_ready = true;
            ready.fetch_add(1, Ordering::SeqCst);
        }
    }
    out.duplicates = client.counters().duplicates;
    // The client is handed back still connected, so node B's count of open
    // connections only grows while the arrivals are sampled.
    (out, client)
}

fn tick_pair(seq: u64) -> Vec<Tick> {
    SYMBOLS.iter().map(|s| tick(s, "herd", seq)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thundering_herd_spreads_over_the_backoff_window_and_resumes_without_holes() {
    let (rt_a, node_a) = isolated_node();
    // Node B runs apart from the clients too, so that what it sees is arrivals, not
    // the test's own scheduling.
    let (rt_b, node_b) = isolated_node();
    for seq in 1..=BEFORE {
        for t in tick_pair(seq) {
            node_a.node.bus.publish(t.clone()).unwrap();
            node_b.node.bus.publish(t).unwrap();
        }
    }
    let urls = vec![
        format!("ws://{}/v1/ws", node_a.addr),
        format!("ws://{}/v1/ws", node_b.addr),
    ];
    let ready = Arc::new(AtomicUsize::new(0));
    let failed_at = Arc::new(tokio::sync::OnceCell::new());
    let mut tasks = Vec::with_capacity(CLIENTS);
    // Connect in waves well under the listen backlog.
    let setup = Instant::now();
    for wave in 0..CLIENTS / 200 {
        for _ in 0..200 {
            tasks.push(tokio::spawn(run_client(
                urls.clone(),
                ready.clone(),
                failed_at.clone(),
            )));
        }
        let want = (wave + 1) * 200;
        let deadline = Instant::now() + Duration::from_secs(20);
        while ready.load(Ordering::SeqCst) < want {
            assert!(
                Instant::now() < deadline,
                "only {} of {want} clients ready",
                ready.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(node_a.node.hub.subscriber_count("AAPL"), CLIENTS);
    eprintln!(
        "{CLIENTS} clients connected to node A in {:?}",
        setup.elapsed()
    );

    // Node A dies: every connection drops at once, without a close frame.
    let t0 = Instant::now();
    failed_at.set(t0).unwrap();
    rt_a.shutdown_background();
    drop(node_a);

    // Arrivals at node B, sampled every 5 ms by a thread of its own.
    let b_node = node_b.node.clone();
    let sampler = std::thread::spawn(move || {
        let mut arrivals: Vec<Duration> = Vec::with_capacity(CLIENTS);
        let mut seen = 0u64;
        let end = t0 + BASE * 4;
        while (seen as usize) < CLIENTS && Instant::now() < end {
            let now = b_node.connections.load(Ordering::Relaxed);
            let at = t0.elapsed();
            arrivals.extend((seen..now).map(|_| at));
            seen = seen.max(now);
            std::thread::sleep(Duration::from_millis(5));
        }
        arrivals
    });

    // The market goes on, on node B, while the clients come back.
    let publish_for = BASE;
    let steps = LAST - BEFORE;
    for seq in BEFORE + 1..=LAST {
        for t in tick_pair(seq) {
            node_b.node.bus.publish(t).unwrap();
        }
        tokio::time::sleep(publish_for / steps as u32).await;
    }

    let mut outcomes = Vec::with_capacity(CLIENTS);
    let mut clients = Vec::with_capacity(CLIENTS);
    let deadline = Duration::from_secs(30);
    for t in tasks {
        let (o, c) = tokio::time::timeout(deadline, t)
            .await
            .expect("every client finishes")
            .unwrap();
        outcomes.push(o);
        clients.push(c);
    }

    // Two histograms in 100 ms slots from the failure: when each client dialed node B
    // (what the jitter decides), and when node B saw each connection open (what the
    // node has to absorb, including its own handshake work on a shared machine).
    let arrivals = sampler.join().unwrap();
    drop(clients);
    assert_eq!(arrivals.len(), CLIENTS, "every client arrived at node B");
    let dials: Vec<Duration> = outcomes
        .iter()
        .map(|o| o.reconnected_after.expect("every client reconnected"))
        .collect();
    let window_slots = (BASE.as_millis() / SLOT.as_millis()) as usize;
    let slots = window_slots + 10;
    let histogram = |times: &[Duration]| {
        let mut hist = vec![0usize; slots];
        for t in times {
            hist[((t.as_millis() / SLOT.as_millis()) as usize).min(slots - 1)] += 1;
        }
        hist
    };
    let (dialed, arrived) = (histogram(&dials), histogram(&arrivals));
    let mut report = String::from("after node A failed   dialed B            node B saw open\n");
    for i in 0..slots {
        let bar = |n: usize| format!("{n:>5} {:<14}", "#".repeat(n.div_ceil(10)));
        let upper = if i + 1 == slots {
            "    ".to_owned()
        } else {
            format!("{:<4}", (i + 1) * 100)
        };
        report.push_str(&format!(
            "{:>5}-{upper}ms {} {}\n",
            i * 100,
            bar(dialed[i]),
            bar(arrived[i])
        ));
    }
    eprintln!("{report}");

    // Full jitter draws each first retry uniformly in [0, base): with base = 3 s, each of
    // the 30 slots expects 2000/30 ≈ 67 dials (3.3 %), binomial σ ≈ 8. The bound is 10 %
    // (200, three slots' worth): a stall of this process on a busy machine releases
    // the timers that expired during it together, and 200 tolerates a 200 ms stall.
    // Without jitter every client would dial in the same slot.
    let max = *dialed.iter().max().unwrap();
    assert!(
        max <= CLIENTS / 10,
        "a 100 ms slot holds {max} of {CLIENTS} reconnects\n{report}"
    );
    let in_window: usize = dialed[..slots - 1].iter().sum();
    assert!(
        in_window >= CLIENTS * 95 / 100,
        "only {in_window} of {CLIENTS} dialed within the window plus 900 ms\n{report}"
    );
    let busy = dialed[..window_slots].iter().filter(|n| **n > 0).count();
    assert!(
        busy >= window_slots * 9 / 10,
        "dials left {} of {window_slots} slots empty\n{report}",
        window_slots - busy
    );
    // What the node sees follows, later and lumpier; it still never takes a herd.
    let max_seen = *arrived.iter().max().unwrap();
    assert!(
        max_seen <= CLIENTS / 5,
        "node B saw {max_seen} of {CLIENTS} connections open in one slot\n{report}"
    );

    // Every client resumed both symbols and saw every tick after the failure exactly once.
    for (i, o) in outcomes.iter().enumerate() {
        assert_eq!(o.resumed, 2, "client {i}: {o:?}");
        assert_eq!(
            (o.out_of_order, o.gaps, o.holes, o.duplicates),
            (0, 0, 0, 0),
            "client {i} has a hole: {o:?}"
        );
        assert_eq!(o.last, [LAST, LAST], "client {i}");
    }
    rt_b.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_past_the_history_gets_a_gap_then_a_snapshot() {
    let (rt_a, node_a) = isolated_node();
    let mut s = settings();
    s.history = 4;
    let node_b = start(s).await;
    for seq in 1..=3 {
        let t = tick("AAPL", "x", seq);
        node_a.node.bus.publish(t.clone()).unwrap();
        node_b.node.bus.publish(t).unwrap();
    }
    let mut client = Client::new(ClientConfig {
        urls: vec![
            format!("ws://{}/v1/ws", node_a.addr),
            format!("ws://{}/v1/ws", node_b.addr),
        ],
        symbols: vec!["AAPL".into()],
        backoff: BackoffConfig {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(100),
            max_attempts: 5,
        },
        ..ClientConfig::default()
    })
    .unwrap();
    while !matches!(next_event(&mut client).await, Event::Message(ServerMessage::Snapshot(t)) if t.seq == 3)
    {
    }
    rt_a.shutdown_background();
    drop(node_a);
    publish(&node_b, "AAPL", "x", 4..=20);
    let mut after = Vec::new();
    while after.len() < 2 {
        match next_event(&mut client).await {
            Event::Message(m @ (ServerMessage::Gap { .. } | ServerMessage::Snapshot(_))) => {
                after.push(m)
            }
            Event::Message(ServerMessage::Tick(t)) => panic!("a tick before the snapshot: {t:?}"),
            _ => {}
        }
    }
    assert!(
        matches!(&after[0], ServerMessage::Gap { from: 4, to: 19, reason, .. } if *reason == tickstream::protocol::GapReason::Expired),
        "{after:?}"
    );
    assert!(
        matches!(&after[1], ServerMessage::Snapshot(t) if t.seq == 20),
        "{after:?}"
    );
    let p = client.position("AAPL").unwrap();
    assert!(!p.stale, "the snapshot replaced the state");
    assert_eq!(client.counters().holes, 0);
    node_b.shutdown().await;
}

async fn next_event(c: &mut Client) -> Event {
    tokio::time::timeout(WAIT, c.next())
        .await
        .expect("an event in time")
        .expect("the client goes on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_connection_lives_on_pings_both_ways() {
    let mut s = settings();
    s.heartbeat = Duration::from_millis(100);
    s.heartbeat_grace = Duration::from_millis(100);
    let node = start(s).await;
    let client = Client::new(ClientConfig {
        urls: vec![format!("ws://{}/v1/ws", node.addr)],
        symbols: vec!["AAPL".into()],
        heartbeat_grace: Duration::from_millis(150),
        ..ClientConfig::default()
    })
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (mut rx, task) = client.spawn(64, stop.clone());
    // No tick for ten times the silence either side allows: the server's Pings keep the
    // client's idle timer fed, and the client's Pongs keep the server from closing.
    let quiet = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(quiet);
    let mut events = Vec::new();
    loop {
        tokio::select! {
            _ = &mut quiet => break,
            ev = rx.recv() => events.push(ev.expect("the client goes on")),
        }
    }
    assert!(
        matches!(events.first(), Some(Event::Connected { .. })),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. } | Event::Retrying { .. })),
        "{events:?}"
    );
    publish(&node, "AAPL", "q", 1..=1);
    let ev = tokio::time::timeout(WAIT, async {
        loop {
            // The symbol had no value yet: its first one comes as the snapshot.
            if let Some(Event::Message(
                ServerMessage::Snapshot(t) | ServerMessage::Tick(TickMessage { tick: t, .. }),
            )) = rx.recv().await
            {
                break t;
            }
        }
    })
    .await
    .expect("the tick after the quiet spell");
    assert_eq!(ev.seq, 1);
    stop.cancel();
    task.await.unwrap().unwrap();
    node.shutdown().await;
}
