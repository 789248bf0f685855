//! Limits at the door, before any upgrade: raw HTTP requests on loopback.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends an upgrade request to `/v1/ws` with `pad` bytes of extra headers and returns
/// the status line of the answer.
async fn upgrade_with_headers(addr: SocketAddr, pad: usize) -> String {
    let mut head = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    let mut left = pad;
    let mut i = 0;
    while left > 0 {
        let n = left.min(1000);
        head.push_str(&format!("X-Pad-{i}: {}\r\n", "p".repeat(n)));
        left -= n;
        i += 1;
    }
    head.push_str("\r\n");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    // The server may answer (and stop reading) before the whole head is written.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        wr
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(WAIT, rd.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            other => panic!("no answer to a head of {pad} padding bytes: {other:?}"),
        }
    }
    let _ = writer.await;
    let text = String::from_utf8_lossy(&got).to_string();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_request_head_over_the_limit_is_refused_with_431() {
    let mut s = settings();
    s.max_header_bytes = 16 * 1024;
    let run = start(s).await;
    let line = upgrade_with_headers(run.addr, 10 * 1024).await;
    assert!(line.starts_with("HTTP/1.1 101"), "under the limit: {line}");
    for pad in [20 * 1024, 200 * 1024] {
        let line = upgrade_with_headers(run.addr, pad).await;
        assert!(line.starts_with("HTTP/1.1 431"), "{pad} bytes: {line}");
    }
    // The limit is the setting's, not a fixed one.
    run.shutdown().await;
    let mut s = settings();
    s.max_header_bytes = 64 * 1024;
    let run = start(s).await;
    let line = upgrade_with_headers(run.addr, 40 * 1024).await;
    assert!(
        line.starts_with("HTTP/1.1 101"),
        "under a raised limit: {line}"
    );
    run.shutdown().await;
}
