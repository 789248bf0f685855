//! Faults stay with the connection they happen on: a panic in one connection's code
//! closes that connection alone with 1011 (counted), and a client whose host vanishes
//! is freed, kernel buffers included, within heartbeat + grace.
//!
//! The panics come from the fault hook of test builds (`Settings::fault_panic_on`,
//! cargo feature `fault-hooks`): a session panics on a text message equal to the hook's
//! value (its reader) or when about to send a message about the symbol of that name (its
//! writer).

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Reads `n` AAPL ticks from `c`, each the one after the last.
async fn contiguous(c: &mut Client, n: usize) {
    let mut last = None;
    let mut got = 0;
    while got < n {
        let m = c.next().await;
        if m["type"] != "tick" {
            assert_ne!(m["type"], "gap", "{m}");
            continue;
        }
        let seq = m["seq"].as_u64().unwrap();
        if let Some(l) = last {
            assert_eq!(seq, l + 1, "a hole after {l}");
        }
        last = Some(seq);
        got += 1;
    }
}

async fn subscribed(addr: std::net::SocketAddr, symbol: &str) -> Client {
    let (mut c, _) = Client::ready(addr).await;
    c.send(&format!(r#"{{"op":"subscribe","symbols":["{symbol}"]}}"#))
        .await;
    c.until("subscribed").await;
    c
}

fn panics() -> u64 {
    tickstream::metrics::global().panics.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_closes_its_connection_alone_with_1011() {
    let run = start(tickstream::config::Settings {
        fault_panic_on: Some("MSFT".into()),
        ..settings()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = ticking(&run, "AAPL", stop.clone());
    let mut others = vec![
        subscribed(run.addr, "AAPL").await,
        subscribed(run.addr, "AAPL").await,
    ];
    let before = panics();

    // The reader's code panics on the victim's message.
    let mut victim = subscribed(run.addr, "AAPL").await;
    victim.send("MSFT").await;
    assert_eq!(victim.closed(WAIT).await, Some(1011));
    for c in &mut others {
        contiguous(c, 200).await;
    }

    // The writer's code panics on a message about MSFT: a WebSocket and an SSE stream.
    let mut victim = subscribed(run.addr, "AAPL").await;
    victim
        .send(r#"{"op":"subscribe","symbols":["MSFT"]}"#)
        .await;
    let (status, sse) = http_get_stream(run.addr, "/v1/sse?symbols=MSFT").await;
    assert_eq!(status, 200);
    run.node.bus.publish(tick("MSFT", "e1", 1)).unwrap();
    assert_eq!(victim.closed(WAIT).await, Some(1011));
    let sse = sse.await.unwrap();
    assert!(
        sse.contains("event: close\ndata: {\"code\":1011"),
        "the SSE stream ends with a close event of 1011: {sse}"
    );
    for c in &mut others {
        contiguous(c, 200).await;
    }
    assert_eq!(panics() - before, 3, "each panic counted");
    let (_, text) = http_get(run.addr, "/metrics").await;
    assert!(
        text.contains("tickstream_connection_panics_total"),
        "{text}"
    );

    // The node still serves: a new client streams, and the victims' subscriptions are
    // gone.
    let mut fresh = subscribed(run.addr, "AAPL").await;
    contiguous(&mut fresh, 100).await;
    eventually("the victims' subscriptions are released", || {
        run.node.hub.subscriber_count("AAPL") == 3 && run.node.hub.subscriber_count("MSFT") == 0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    run.shutdown().await;
}

/// The node's sockets on `port` other than its listener, with their send queues
/// (from /proc/net/tcp).
fn sockets_on(port: u16) -> Vec<(String, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            let state = f[3];
            let tx_queue = u64::from_str_radix(f[4].split(':').next()?, 16).ok()?;
            (local_port == port && state != "0A").then(|| (state.to_owned(), tx_queue))
        })
        .collect()
}

/// A real client process whose host "vanishes": it connects, subscribes and is stopped
/// (SIGSTOP: no FIN, no reset, its kernel still acknowledging) while ticks flood it. The
/// node frees it within heartbeat + grace, and resets the socket so that the kernel
/// drops what was queued for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_is_freed_with_its_kernel_buffers_within_heartbeat_and_grace() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let heartbeat = Duration::from_millis(300);
    let grace = Duration::from_millis(300);
    let run = start(tickstream::config::Settings {
        heartbeat,
        heartbeat_grace: grace,
        ..settings()
    })
    .await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .args(["subscribe", "--json", "--url"])
        .arg(format!("ws://{}/v1/ws", run.addr))
        .arg("AAPL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the client starts");
    let pid = Pid::from_raw(child.id() as i32);
    eventually("the client subscribed", || {
        run.node.hub.subscriber_count("AAPL") == 1
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = ticking(&run, "AAPL", stop.clone());
    // Streaming, answering Pings: still there after several heartbeats.
    tokio::time::sleep(heartbeat * 4).await;
    assert_eq!(run.node.connections.load(Ordering::Relaxed), 1);

    kill(pid, Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let port = run.addr.port();
    let mut backlog = 0;
    let freed = loop {
        let held = sockets_on(port);
        backlog = backlog.max(held.iter().map(|(_, q)| *q).max().unwrap_or(0));
        if run.node.connections.load(Ordering::Relaxed) == 0 && held.is_empty() {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "not freed: connections {}, sockets {held:?}",
            run.node.connections.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(backlog > 0, "the stopped client's socket never backed up");
    // Slack for a shared machine running other tests at once; the send timeout (10 s)
    // would free it only much later.
    assert!(
        freed <= heartbeat + grace + Duration::from_secs(1),
        "freed after {freed:?}"
    );
    assert_eq!(run.node.hub.subscriber_count("AAPL"), 0);
    eprintln!(
        "freed {freed:?} after SIGSTOP (heartbeat + grace {:?})",
        heartbeat + grace
    );

    let _ = kill(pid, Signal::SIGKILL);
    let _ = child.wait();
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    run.shutdown().await;
}
