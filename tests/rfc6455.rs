//! RFC 6455 held strictly, against hostile clients that write frames by hand on a raw
//! TCP connection after a real upgrade: each breach closes only its own connection,
//! with the RFC's code, while another client on the same node keeps getting ticks.

mod common;
#[path = "common/raw.rs"]
mod raw;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use raw::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A node whose `AAPL` ticks keep coming, and a well-behaved client watching them.
struct Bench {
    run: tickstream::server::Running,
    watcher: Client,
    stop: Arc<AtomicBool>,
}

impl Bench {
    async fn new(mut s: tickstream::config::Settings) -> Bench {
        s.max_msg_bytes = 1024;
        s.close_linger = Duration::from_secs(2);
        let run = start(s).await;
        let stop = Arc::new(AtomicBool::new(false));
        let (node, done) = (run.node.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 1;
            while !done.load(Ordering::Relaxed) {
                let _ = node.bus.publish(tick("AAPL", "e1", seq));
                seq += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let (mut watcher, _) = Client::ready(run.addr).await;
        watcher
            .send(r#"{"op":"subscribe","id":1,"symbols":["AAPL"]}"#)
            .await;
        watcher.until("tick").await;
        Bench { run, watcher, stop }
    }

    /// Opens a raw connection, writes `bytes`, and returns the server's close code;
    /// then checks the watcher still gets ticks.
    async fn close_for(&mut self, path: &str, bytes: &[u8]) -> Option<u16> {
        let mut raw = Raw::connect(self.run.addr, path).await;
        raw.send(bytes).await;
        let code = raw.close_code().await;
        self.watcher_served().await;
        code
    }

    async fn watcher_served(&mut self) {
        for _ in 0..3 {
            let t = self.watcher.until("tick").await;
            assert_eq!(t["symbol"], "AAPL");
        }
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.run.shutdown().await;
    }
}

/// Every breach, on `path`, with the code RFC 6455 asks for.
fn breaches() -> Vec<(&'static str, Vec<u8>, u16)> {
    let mut cases: Vec<(&'static str, Vec<u8>, u16)> = Vec::new();
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        let name: &'static str = Box::leak(format!("close code {code}").into_boxed_str());
        cases.push((name, whole(CLOSE, &close_payload(code, b"")), 1002));
    }
    cases.push(("close payload of one byte", whole(CLOSE, &[3]), 1002));
    cases.push((
        "close reason not UTF-8",
        whole(CLOSE, &close_payload(1000, &[b'o', 0xff, b'k'])),
        1007,
    ));
    cases.push((
        "unmasked text",
        frame(0x80 | TEXT, br#"{"op":"ping"}"#, false),
        1002,
    ));
    cases.push(("ping of 126 bytes", whole(PING, &[b'p'; 126]), 1002));
    cases.push(("pong of 126 bytes", whole(PONG, &[b'p'; 126]), 1002));
    let mut long_close = close_payload(1000, b"");
    long_close.extend_from_slice(&[b'r'; 124]);
    cases.push(("close of 126 bytes", whole(CLOSE, &long_close), 1002));
    cases.push(("fragmented ping", frame(PING, b"p", true), 1002));
    cases.push(("fragmented close", frame(CLOSE, b"", true), 1002));
    cases.push(("reserved data opcode 3", whole(0x3, b"x"), 1002));
    cases.push(("reserved control opcode 0xB", whole(0xB, b""), 1002));
    cases.push(("RSV1 set", whole(0x40 | TEXT, b"{}"), 1002));
    cases.push(("RSV3 set", whole(0x10 | BINARY, b"{}"), 1002));
    cases.push(("continuation without a start", whole(CONT, b"{}"), 1002));
    cases.push((
        "text not UTF-8",
        whole(TEXT, &[b'{', 0xff, 0xfe, b'}']),
        1007,
    ));
    let mut split = frame(TEXT, &[b'"', 0xe2, 0x82], true);
    split.extend(frame(CONT, &[0xff, b'"'], true));
    split.extend(whole(CONT, b""));
    cases.push(("text not UTF-8 across fragments", split, 1007));
    let mut cut = frame(TEXT, b"\"ab", true);
    cut.extend(whole(CONT, &[0xe2, 0x82]));
    cases.push(("text ending inside a character", cut, 1007));
    let mut many = Vec::new();
    for i in 0..40 {
        let op = if i == 0 { TEXT } else { CONT };
        many.extend(frame(op, &[b' '; 100], true));
    }
    many.extend(whole(CONT, b" "));
    cases.push(("message over the limit in many fragments", many, 1009));
    let mut top_bit = vec![0x80 | BINARY, 0x80 | 127];
    top_bit.extend_from_slice(&(1u64 << 63 | 2).to_be_bytes());
    top_bit.extend_from_slice(&[1, 2, 3, 4, b'{', b'}']);
    cases.push(("64-bit length with the top bit set", top_bit, 1002));
    let mut interleaved = frame(TEXT, b"{", true);
    interleaved.extend(whole(TEXT, b"{}"));
    cases.push(("new message inside a fragmented one", interleaved, 1002));
    cases
}

#[tokio::test]
async fn subscriber_breaches_close_with_the_rfc_code() {
    let mut bench = Bench::new(settings()).await;
    for (name, bytes, want) in breaches() {
        let got = bench.close_for("/v1/ws", &bytes).await;
        assert_eq!(got, Some(want), "{name}");
    }
    bench.finish().await;
}

#[tokio::test]
async fn publisher_breaches_close_with_the_rfc_code() {
    let mut bench = Bench::new(settings()).await;
    for (name, bytes, want) in breaches() {
        if name.contains("over the limit") {
            continue; // the publisher's limit is its own (--publish-max-msg-bytes)
        }
        let got = bench.close_for("/v1/publish", &bytes).await;
        assert_eq!(got, Some(want), "{name}");
    }
    bench.finish().await;
}

#[tokio::test]
async fn valid_close_codes_are_answered_normally() {
    let mut bench = Bench::new(settings()).await;
    for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
        for path in ["/v1/ws", "/v1/publish"] {
            let got = bench
                .close_for(path, &whole(CLOSE, &close_payload(code, b"bye")))
                .await;
            assert_eq!(got, Some(1000), "{path} close {code}");
        }
    }
    // An empty Close is valid too.
    assert_eq!(
        bench.close_for("/v1/ws", &whole(CLOSE, b"")).await,
        Some(1000)
    );
    bench.finish().await;
}

#[tokio::test]
async fn data_after_the_clients_close_is_ignored() {
    let mut bench = Bench::new(settings()).await;
    let mut raw = Raw::connect(bench.run.addr, "/v1/ws").await;
    let mut bytes = whole(CLOSE, &close_payload(1000, b""));
    bytes.extend(whole(TEXT, br#"{"op":"ping","id":5}"#));
    bytes.extend(whole(0x3, b"garbage"));
    raw.send(&bytes).await;
    let mut frames = Vec::new();
    while let Some(f) = raw.next_frame().await {
        let close = f.0 == CLOSE;
        frames.push(f);
        if close {
            break;
        }
    }
    let (op, payload) = frames.pop().expect("a Close");
    assert_eq!(op, CLOSE);
    assert_eq!(payload[..2], 1000u16.to_be_bytes());
    for (op, payload) in &frames {
        let text = String::from_utf8_lossy(payload);
        assert!(!text.contains("pong"), "answered after Close: {op} {text}");
    }
    drop(raw);
    bench.watcher_served().await;
    bench.finish().await;
}

/// A flooding client is closed with 1008 and reads that close frame, not a reset:
/// the server lingers, dropping what the client still sends, until the client's EOF.
#[tokio::test]
async fn a_flooder_reads_its_1008() {
    let mut s = settings();
    s.rate_limit = 10;
    s.rate_burst = 10;
    s.rate_strikes = 5;
    let mut bench = Bench::new(s).await;
    for round in 0..4 {
        let Raw { tcp, mut buf } = Raw::connect(bench.run.addr, "/v1/ws").await;
        let (mut rd, mut wr) = tcp.into_split();
        let flood = tokio::spawn(async move {
            let ping = whole(TEXT, br#"{"op":"ping","id":1}"#);
            let batch: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 64).collect();
            while wr.write_all(&batch).await.is_ok() {}
            wr
        });
        let code = loop {
            let mut chunk = [0u8; 4096];
            let got = tokio::time::timeout(WAIT, rd.read(&mut chunk)).await;
            match got {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                other => break Err(format!("{other:?}")),
            }
            if let Some(code) = close_in(&mut buf) {
                break Ok(code);
            }
        };
        flood.abort();
        assert_eq!(code, Ok(1008), "round {round}");
        bench.watcher_served().await;
    }
    bench.finish().await;
}

/// Takes whole frames off `buf`; the code of a Close among them.
fn close_in(buf: &mut Vec<u8>) -> Option<u16> {
    loop {
        if buf.len() < 2 {
            return None;
        }
        let (len, at) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
            127 if buf.len() >= 10 => (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if buf.len() < at + len {
            return None;
        }
        let op = buf[0] & 0x0f;
        let frame: Vec<u8> = buf.drain(..at + len).collect();
        if op == CLOSE {
            return Some(u16::from_be_bytes([frame[at], frame[at + 1]]));
        }
    }
}

/// Every Ping is answered with a Pong of its payload, in order, also when a client
/// sends more Pings at once than the server keeps owed.
#[tokio::test]
async fn pings_are_answered_in_order_with_their_payloads() {
    let mut bench = Bench::new(settings()).await;
    let mut raw = Raw::connect(bench.run.addr, "/v1/ws").await;
    let pings: Vec<Vec<u8>> = (0..40u8).map(|i| vec![b'p', i]).collect();
    let bytes: Vec<u8> = pings.iter().flat_map(|p| whole(PING, p)).collect();
    raw.send(&bytes).await;
    let mut pongs = Vec::new();
    while pongs.len() < pings.len() {
        let (op, payload) = raw.next_frame().await.expect("a Pong for every Ping");
        if op == PONG {
            pongs.push(payload);
        }
    }
    assert_eq!(pongs, pings);
    drop(raw);
    bench.watcher_served().await;
    bench.finish().await;
}

/// Frames a client writes together with its handshake, before the server's answer,
/// are served in order after it: hyper has read them with the request, and the
/// connection reads them first.
#[tokio::test]
async fn frames_sent_with_the_handshake_are_read_first() {
    let mut bench = Bench::new(settings()).await;
    let tcp = tokio::net::TcpStream::connect(bench.run.addr)
        .await
        .unwrap();
    let mut early = whole(PING, b"early");
    early.extend(whole(
        TEXT,
        br#"{"op":"subscribe","id":5,"symbols":["AAPL"]}"#,
    ));
    let mut raw = Raw::upgrade_then(tcp, bench.run.addr, "/v1/ws", "", &early).await;
    let mut pong = None;
    let mut subscribed = false;
    while pong.is_none() || !subscribed {
        let (op, payload) = raw.next_frame().await.expect("answers to the early frames");
        match op {
            PONG => pong = Some(payload),
            TEXT => {
                let text = String::from_utf8(payload).unwrap();
                subscribed |= text.contains(r#""type":"subscribed""#) && text.contains(r#""id":5"#);
            }
            _ => {}
        }
    }
    assert_eq!(pong.unwrap(), b"early");
    drop(raw);
    bench.watcher_served().await;
    bench.finish().await;
}

/// `text` as a message in fragments of `size` bytes, `empties` empty ones at its end.
fn fragmented(text: &[u8], size: usize, empties: usize) -> Vec<u8> {
    let parts: Vec<&[u8]> = text.chunks(size).collect();
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let op = if i == 0 { TEXT } else { CONT };
        let fin = i == parts.len() - 1 && empties == 0;
        out.extend(frame(if fin { 0x80 | op } else { op }, part, true));
    }
    for e in 0..empties {
        out.extend(frame(if e == empties - 1 { 0x80 } else { 0 }, b"", true));
    }
    out
}

/// A message may come in at most `--max-fragments` frames, at most
/// `--max-empty-fragments` of them empty, on both endpoints; within them it is whole.
#[tokio::test]
async fn messages_in_too_many_fragments_close_with_1008_on_both_endpoints() {
    let mut s = settings();
    s.max_fragments = 8;
    s.max_empty_fragments = 2;
    let mut bench = Bench::new(s).await;
    let ping = br#"{"op":"ping","id":7}"#;
    for path in ["/v1/ws", "/v1/publish"] {
        // 20 bytes in 4-byte fragments and 2 empty ones: 7 frames, answered.
        let mut raw = Raw::connect(bench.run.addr, path).await;
        raw.send(&fragmented(ping, 4, 2)).await;
        let answered = loop {
            let (op, payload) = raw.next_frame().await.expect("an answer");
            let text = String::from_utf8_lossy(&payload).to_string();
            if op == TEXT && !text.contains("welcome") {
                break text;
            }
        };
        assert!(
            answered.contains("pong") || answered.contains("published"),
            "{answered}"
        );
        // 9 frames, or a third empty one: closed.
        let nine = fragmented(ping, 3, 2);
        assert_eq!(bench.close_for(path, &nine).await, Some(1008), "{path}");
        let empty = fragmented(ping, 10, 3);
        assert_eq!(bench.close_for(path, &empty).await, Some(1008), "{path}");
    }
    bench.finish().await;
}

/// Every frame is charged to a subscriber's frame budget, control frames too: a client
/// that only sends Pongs is closed with 1008 past it.
#[tokio::test]
async fn frames_that_are_not_messages_are_charged_too() {
    let mut s = settings();
    // 4 frames a second, 4 saved.
    s.rate_limit = 1;
    s.rate_burst = 1;
    s.max_fragments = 4;
    let mut bench = Bench::new(s).await;
    let pongs: Vec<u8> = (0..12).flat_map(|_| whole(PONG, b"")).collect();
    assert_eq!(bench.close_for("/v1/ws", &pongs).await, Some(1008));
    let empties: Vec<u8> = (0..3).flat_map(|_| fragmented(b"{}", 2, 1)).collect();
    assert_eq!(bench.close_for("/v1/ws", &empties).await, Some(1008));
    bench.finish().await;
}

/// On `/v1/publish` continuation frames count against `--publish-rate-limit` like whole
/// messages: one message in four frames at one frame a second is read in three seconds.
#[tokio::test]
async fn a_publishers_continuation_frames_count_against_its_frame_rate() {
    let mut s = settings();
    s.publish_rate_limit = 1;
    let bench = Bench::new(s).await;
    let mut raw = Raw::connect(bench.run.addr, "/v1/publish").await;
    let welcome = raw.next_frame().await.expect("welcome");
    assert!(String::from_utf8_lossy(&welcome.1).contains("welcome"));
    let t0 = std::time::Instant::now();
    raw.send(&fragmented(b"[1,2,3,4]", 3, 1)).await;
    let (op, payload) = tokio::time::timeout(Duration::from_secs(15), raw.next_frame())
        .await
        .expect("answered")
        .expect("a reply");
    assert_eq!(op, TEXT);
    assert!(String::from_utf8_lossy(&payload).contains("published"));
    // The first frame is saved up; the other three wait a second each.
    assert!(
        t0.elapsed() >= Duration::from_millis(2_500),
        "{:?}",
        t0.elapsed()
    );
    bench.finish().await;
}

/// A storm of one-byte fragments on one connection moves nothing on another: the
/// watcher gets every tick, in order, with no gap, while the storm is read.
#[tokio::test]
async fn a_fragment_storm_leaves_other_connections_complete_and_in_order() {
    let mut s = settings();
    s.rate_limit = 10_000;
    s.rate_burst = 10_000;
    let run = start(s).await;
    let (mut watcher, _) = Client::ready(run.addr).await;
    watcher
        .send(r#"{"op":"subscribe","id":1,"symbols":["AAPL"]}"#)
        .await;
    watcher.until("subscribed").await;
    let node = run.node.clone();
    let feed = tokio::spawn(async move {
        for seq in 1..=400u64 {
            node.bus.publish(tick("AAPL", "e1", seq)).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // 100 messages of 1000 bytes, each in 1000 one-byte fragments.
    let mut raw = Raw::connect(run.addr, "/v1/ws").await;
    let storm = tokio::spawn(async move {
        let mut text = br#"{"op":"ping","id":1,"x":""#.to_vec();
        text.resize(998, b'x');
        text.extend_from_slice(br#""}"#);
        let msg = fragmented(&text, 1, 0);
        for _ in 0..100 {
            raw.send(&msg).await;
        }
        // Every message was read and answered: the storm ran beside the ticks.
        let mut answers = 0;
        while answers < 100 {
            let (_, payload) = raw.next_frame().await.expect("answers to the storm");
            answers += String::from_utf8_lossy(&payload)
                .matches("\"error\"")
                .count();
            answers += String::from_utf8_lossy(&payload)
                .matches("\"pong\"")
                .count();
        }
    });
    let mut next = 1u64;
    while next <= 400 {
        let m = watcher.next().await;
        assert_ne!(m["type"], "gap", "{m}");
        // The symbol had no value at the subscribe: its first comes as the snapshot.
        if m["type"] == "tick" || m["type"] == "snapshot" {
            assert_eq!(m["seq"], next, "{m}");
            next += 1;
        }
    }
    storm.await.unwrap();
    feed.await.unwrap();
    run.shutdown().await;
}
