//! The client library against a scripted server on a real socket, for what a correct
//! node never does on purpose: duplicates, holes without a gap, a new epoch without a
//! snapshot, and close codes that forbid reconnecting; and for the exact order of
//! `status` messages around a reconnect.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use tickstream::client::{
    BackoffConfig, Client, ClientConfig, ClientError, Event, Health, ServerMessage, StaleReason,
    SymbolState,
};

fn tick(kind: &str, epoch: &str, seq: u64) -> String {
    format!(
        r#"{{"type":"{kind}","symbol":"AAPL","epoch":"{epoch}","seq":{seq},"ts":{seq},"bid":1.5,"ask":1.75,"bid_size":1,"ask_size":1,"last":1.5,"last_size":1,"volume":{seq}}}"#
    )
}

const WELCOME: &str =
    r#"{"type":"welcome","node":"scripted","session":"s","heartbeat_ms":30000,"encoding":"json"}"#;

type Server = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn accept(l: &TcpListener) -> (Server, Value) {
    let (tcp, _) = l.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    ws.send(Message::text(format!("[{WELCOME}]")))
        .await
        .unwrap();
    let cmd = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => break serde_json::from_str::<Value>(&t).unwrap(),
            _ => continue,
        }
    };
    (ws, cmd)
}

async fn close(ws: &mut Server, code: u16) {
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: "scripted".into(),
    })))
    .await
    .unwrap();
}

/// Collects events until `n` messages, holes or resets have arrived.
async fn take(client: &mut Client, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .expect("an event in time")
            .expect("the client goes on");
        if matches!(
            ev,
            Event::Message(ref m) if !matches!(m, ServerMessage::Welcome { .. })
        ) || matches!(ev, Event::Hole { .. } | Event::Reset { .. })
        {
            out.push(ev);
        }
    }
    out
}

fn seq_of(ev: &Event) -> (String, u64) {
    match ev {
        Event::Message(ServerMessage::Tick(t)) => (format!("tick {}", t.epoch), t.seq),
        Event::Message(ServerMessage::Snapshot(t)) => (format!("snapshot {}", t.epoch), t.seq),
        Event::Hole { from, to, .. } => (format!("hole to {to}"), *from),
        Event::Reset { epoch, .. } => (format!("reset {epoch}"), 0),
        Event::Message(ServerMessage::Gap { to, .. }) => (format!("gap to {to}"), 0),
        other => (format!("{other:?}"), 0),
    }
}

#[tokio::test]
async fn tracks_sequences_resumes_and_stops_on_policy_close() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ws", l.local_addr().unwrap());
    let mut client = Client::new(ClientConfig {
        urls: vec![url],
        symbols: vec!["AAPL".into()],
        backoff: BackoffConfig {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(50),
            max_attempts: 5,
        },
        ..ClientConfig::default()
    })
    .unwrap();

    let server = tokio::spawn(async move {
        let (mut ws, cmd) = accept(&l).await;
        assert_eq!(cmd["op"], "subscribe");
        assert_eq!(cmd["symbols"], serde_json::json!(["AAPL"]));
        assert!(cmd.get("resume").is_none(), "nothing to resume yet: {cmd}");
        let frames = [
            tick("snapshot", "e", 1),
            format!("{},{}", tick("tick", "e", 2), tick("tick", "e", 2)),
            tick("tick", "e", 5),
            tick("tick", "f", 6),
            r#"{"type":"gap","symbol":"AAPL","from":7,"to":9,"reason":"slow_consumer"}"#.into(),
            tick("tick", "f", 10),
        ];
        for f in frames {
            ws.send(Message::text(format!("[{f}]"))).await.unwrap();
        }
        close(&mut ws, 1011).await;
        drop(ws);
        // The client comes back and resumes from the last position it holds.
        let (mut ws, cmd) = accept(&l).await;
        close(&mut ws, 1008).await;
        let _ = ws.next().await;
        cmd
    });

    let evs = take(&mut client, 8).await;
    let got: Vec<(String, u64)> = evs.iter().map(seq_of).collect();
    let want: Vec<(String, u64)> = vec![
        ("snapshot e".into(), 1),
        ("tick e".into(), 2),
        ("hole to 4".into(), 3),
        ("tick e".into(), 5),
        ("reset f".into(), 0),
        ("tick f".into(), 6),
        ("gap to 9".into(), 0),
        ("tick f".into(), 10),
    ];
    assert_eq!(got, want);
    let c = client.counters();
    assert_eq!(
        (c.duplicates, c.holes, c.resets, c.gaps),
        (1, 1, 1, 1),
        "{c:?}"
    );
    let p = client.position("AAPL").unwrap();
    assert_eq!((&*p.epoch, p.seq, p.stale), ("f", 10, false));

    // 1011: reconnect with backoff; 1008: stop.
    let mut seen = Vec::new();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .expect("an outcome in time")
        {
            Ok(ev) => seen.push(ev),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&err, ClientError::Closed { code: 1008, .. }),
        "{err}"
    );
    assert!(
        matches!(
            &seen[0],
            Event::Disconnected {
                code: Some(1011),
                ..
            }
        ),
        "{seen:?}"
    );
    assert!(
        matches!(&seen[1], Event::Retrying { attempt: 1, delay, .. } if *delay < Duration::from_millis(20)),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|e| matches!(
            e,
            Event::Connected {
                reconnect: true,
                resumed: 1,
                ..
            }
        )),
        "{seen:?}"
    );
    let cmd = server.await.unwrap();
    assert_eq!(
        cmd["resume"],
        serde_json::json!({"AAPL": {"epoch": "f", "seq": 10}}),
        "{cmd}"
    );
}

#[tokio::test]
async fn gives_up_after_the_attempt_limit() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ws", l.local_addr().unwrap());
    let mut client = Client::new(ClientConfig {
        urls: vec![url],
        symbols: vec!["AAPL".into()],
        backoff: BackoffConfig {
            base: Duration::from_millis(5),
            cap: Duration::from_millis(20),
            max_attempts: 3,
        },
        ..ClientConfig::default()
    })
    .unwrap();
    let server = tokio::spawn(async move {
        let (mut ws, _) = accept(&l).await;
        ws.send(Message::text(format!("[{}]", tick("tick", "e", 1))))
            .await
            .unwrap();
        drop(ws);
        drop(l);
    });
    let mut retries = 0;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .expect("an outcome in time")
        {
            Ok(Event::Retrying { .. }) => retries += 1,
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    server.await.unwrap();
    assert!(
        matches!(err, ClientError::GaveUp { attempts: 3, .. }),
        "{err}"
    );
    assert_eq!(retries, 3);
}

fn status(symbol: &str, state: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) => {
            format!(r#"{{"type":"status","symbol":"{symbol}","state":"{state}","reason":"{r}"}}"#)
        }
        None => format!(r#"{{"type":"status","symbol":"{symbol}","state":"{state}"}}"#),
    }
}

fn snapshot_of(symbol: &str, seq: u64) -> String {
    tick("snapshot", "e", seq).replace("AAPL", symbol)
}

/// The next event that is not a connection change.
async fn next_message_or_health(client: &mut Client) -> Event {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .expect("an event in time")
            .expect("the client goes on");
        match ev {
            Event::Connected { .. } | Event::Disconnected { .. } | Event::Retrying { .. } => {}
            Event::Message(ServerMessage::Welcome { .. }) => {}
            other => return other,
        }
    }
}

#[tokio::test]
async fn health_follows_status_and_is_rechecked_on_the_next_node() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ws", l.local_addr().unwrap());
    let mut client = Client::new(ClientConfig {
        urls: vec![url],
        symbols: vec!["AAPL".into(), "MSFT".into()],
        backoff: BackoffConfig {
            base: Duration::from_millis(5),
            cap: Duration::from_millis(10),
            max_attempts: 5,
        },
        ..ClientConfig::default()
    })
    .unwrap();
    let (to_server, mut steps) = tokio::sync::mpsc::channel::<()>(1);
    let server = tokio::spawn(async move {
        let (mut ws, cmd) = accept(&l).await;
        assert_eq!(cmd["op"], "subscribe");
        let first = [
            format!("{},{}", snapshot_of("AAPL", 1), snapshot_of("MSFT", 1)),
            status("AAPL", "stale", Some("feed")),
            status("MSFT", "stale", Some("bus")),
            // A value alone does not make a stale symbol live.
            tick("tick", "e", 2),
        ];
        for f in first {
            ws.send(Message::text(format!("[{f}]"))).await.unwrap();
        }
        steps.recv().await;
        close(&mut ws, 1011).await;
        drop(ws);
        // The next connection: the subscription, then the ping that closes the check.
        let (mut ws, cmd) = accept(&l).await;
        assert_eq!(cmd["op"], "subscribe", "{cmd}");
        let ping = loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(t) => break serde_json::from_str::<Value>(&t).unwrap(),
                _ => continue,
            }
        };
        assert_eq!(ping["op"], "ping", "{ping}");
        let id = ping["id"].as_u64().unwrap();
        // This node says AAPL is still stale, and nothing of MSFT: live here.
        let second = [
            format!(
                "{},{}",
                snapshot_of("AAPL", 2),
                status("AAPL", "stale", Some("feed"))
            ),
            snapshot_of("MSFT", 1),
            format!(r#"{{"type":"pong","id":{id},"ts":1}}"#),
            status("AAPL", "live", None),
            r#"{"type":"pong","id":999,"ts":2}"#.into(),
        ];
        for f in second {
            ws.send(Message::text(format!("[{f}]"))).await.unwrap();
        }
        let _ = ws.next().await;
    });

    let mut seen = Vec::new();
    while seen.len() < 6 {
        seen.push(next_message_or_health(&mut client).await);
    }
    assert!(
        matches!(
            &seen[..2],
            [
                Event::Message(ServerMessage::Snapshot(_)),
                Event::Message(ServerMessage::Snapshot(_))
            ]
        ),
        "{seen:?}"
    );
    let since = match &seen[2] {
        Event::Stale {
            symbol,
            reason: StaleReason::Feed,
            since,
        } if &**symbol == "AAPL" => *since,
        other => panic!("AAPL stale (feed) first: {seen:?} ({other:?})"),
    };
    assert!(
        matches!(&seen[3], Event::Message(ServerMessage::Status { symbol, state: SymbolState::Stale(StaleReason::Feed) }) if &**symbol == "AAPL"),
        "the change, then the message: {seen:?}"
    );
    assert!(
        matches!(&seen[4], Event::Stale { symbol, reason: StaleReason::Bus, .. } if &**symbol == "MSFT"),
        "{seen:?}"
    );
    assert!(matches!(
        &seen[5],
        Event::Message(ServerMessage::Status { .. })
    ));
    assert!(matches!(
        next_message_or_health(&mut client).await,
        Event::Message(ServerMessage::Tick(_))
    ));
    let aapl = client.health("AAPL").unwrap().clone();
    assert_eq!(
        aapl,
        Health::Stale {
            since,
            reason: StaleReason::Feed
        },
        "a tick does not end a stale mark"
    );
    assert_eq!(client.stale().count(), 2);
    assert_eq!(client.counters().stale, 2);

    tokio::time::sleep(Duration::from_millis(50)).await;
    let moved_at = std::time::Instant::now();
    to_server.send(()).await.unwrap();
    let mut after = Vec::new();
    loop {
        let ev = next_message_or_health(&mut client).await;
        let done = matches!(
            &ev,
            Event::Message(ServerMessage::Pong { id: Some(999), .. })
        );
        after.push(ev);
        if done {
            break;
        }
    }
    let kinds: Vec<String> = after
        .iter()
        .map(|e| match e {
            Event::Message(ServerMessage::Snapshot(t)) => format!("snapshot {}", t.symbol),
            Event::Message(ServerMessage::Status { symbol, .. }) => format!("status {symbol}"),
            Event::Message(ServerMessage::Pong { id, .. }) => format!("pong {id:?}"),
            Event::Live { symbol, .. } => format!("live {symbol}"),
            Event::Stale { symbol, .. } => format!("stale {symbol}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "snapshot AAPL",
            // Stale still, for the same reason: no change, the same start.
            "status AAPL",
            "snapshot MSFT",
            // The client's own pong is not passed on; MSFT was not called stale.
            "live MSFT",
            "live AAPL",
            "status AAPL",
            "pong Some(999)",
        ],
        "{after:?}"
    );
    let Event::Live { after: was, .. } = &after[4] else {
        panic!()
    };
    assert!(
        *was >= moved_at - since,
        "AAPL's age ran on across the reconnect: {was:?}"
    );
    assert_eq!(client.stale().count(), 0);
    assert_eq!(client.health("AAPL"), Some(&Health::Live));
    assert_eq!(
        client.counters().stale,
        2,
        "no new stale on the second node"
    );
    server.abort();
}
