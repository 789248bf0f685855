//! Limits at the door, before any upgrade: raw HTTP requests on loopback.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends an upgrade request to `/v1/ws` with `pad` bytes of extra headers and returns
/// the status line of the answer.
async fn upgrade_with_headers(addr: SocketAddr, pad: usize) -> String {
    upgrade_with(addr, "/v1/ws", "", pad).await
}

/// Sends an upgrade request to `path` with the `extra` header lines and `pad` bytes of
/// padding headers; the status line of the answer.
async fn upgrade_with(addr: SocketAddr, path: &str, extra: &str, pad: usize) -> String {
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Upgrade: websocket\r\nConnection: Upgrade\r\n\
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

#[tokio::test]
async fn browser_upgrades_from_other_origins_are_refused_with_403() {
    let mut s = settings();
    s.allowed_origins = vec!["https://app.example.com".into()];
    let run = start(s).await;
    let addr = run.addr;
    for path in ["/v1/ws", "/v1/publish"] {
        let status = |extra: String| async move { upgrade_with(addr, path, &extra, 0).await };
        let listed = status("Origin: https://app.example.com\r\n".into()).await;
        assert!(
            listed.starts_with("HTTP/1.1 101"),
            "{path} listed: {listed}"
        );
        let same = status(format!("Origin: http://{addr}\r\n")).await;
        assert!(
            same.starts_with("HTTP/1.1 101"),
            "{path} same origin: {same}"
        );
        let none = status(String::new()).await;
        assert!(none.starts_with("HTTP/1.1 101"), "{path} no Origin: {none}");
        let other = status("Origin: https://evil.example.net\r\n".into()).await;
        assert!(
            other.starts_with("HTTP/1.1 403"),
            "{path} other origin: {other}"
        );
    }
    run.shutdown().await;
    // Unset: every origin may upgrade.
    let run = start(settings()).await;
    let any = upgrade_with(
        run.addr,
        "/v1/ws",
        "Origin: https://evil.example.net\r\n",
        0,
    )
    .await;
    assert!(any.starts_with("HTTP/1.1 101"), "{any}");
    run.shutdown().await;
}
