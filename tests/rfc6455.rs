//! RFC 6455 held strictly, against hostile clients that write frames by hand on a raw
//! TCP connection after a real upgrade: each breach closes only its own connection,
//! with the RFC's code, while another client on the same node keeps getting ticks.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONT: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// One frame as a client would write it: `first` is the first header byte's flags and
/// opcode, the payload masked unless `masked` is false.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let key = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    let bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n < 65536 => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A final frame of `op`, masked.
fn whole(op: u8, payload: &[u8]) -> Vec<u8> {
    frame(0x80 | op, payload, true)
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A raw WebSocket client: the handshake written by hand, then bytes.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr, path: &str) -> Raw {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await, "connection ended during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        raw.buf.drain(..end);
        raw
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, self.tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // A write may fail once the server has closed; what it answered is still read.
        let _ = self.tcp.write_all(bytes).await;
    }

    /// The next server frame (opcode, payload), or None at EOF, reset or timeout.
    async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let op = self.buf[0] & 0x0f;
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((op, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The code of the server's Close, skipping what comes before it; None when the
    /// connection ended without one (what a client sees as 1006).
    async fn close_code(&mut self) -> Option<u16> {
        while let Some((op, payload)) = self.next_frame().await {
            if op == CLOSE {
                assert!(payload.len() >= 2, "the server's Close carries a code");
                return Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }
}

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
