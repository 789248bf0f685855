//! The HTTP endpoints beside the WebSocket.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn healthz_symbols_and_snapshot() {
    let run = start(settings()).await;
    let (status, body) = http_get(run.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let (status, body) = http_get(run.addr, "/v1/symbols").await;
    assert_eq!(status, 200);
    let symbols: Vec<String> = serde_json::from_str(&body).unwrap();
    assert!(symbols.len() >= 500, "{} symbols", symbols.len());
    for s in ["AAPL", "MSFT", "EUR/USD", "BTC-USD"] {
        assert!(symbols.iter().any(|x| x == s), "{s} missing");
    }

    publish(&run, "AAPL", "e1", 1..=3);
    publish(&run, "MSFT", "e1", 1..=9);
    let (status, body) = http_get(run.addr, "/v1/snapshot?symbols=AAPL,MSFT,NVDA").await;
    assert_eq!(status, 200);
    let snaps: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(snaps.len(), 2, "NVDA has no value yet: {body}");
    assert_eq!(
        (
            snaps[0]["type"].as_str(),
            snaps[0]["symbol"].as_str(),
            snaps[0]["seq"].as_u64()
        ),
        (Some("snapshot"), Some("AAPL"), Some(3))
    );
    assert_eq!(
        (snaps[1]["symbol"].as_str(), snaps[1]["seq"].as_u64()),
        (Some("MSFT"), Some(9))
    );

    let (status, body) = http_get(run.addr, "/v1/snapshot?symbols=AAPL,NOPE").await;
    assert_eq!(status, 404);
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (err["code"].as_str(), err["symbols"].clone()),
        (Some("unknown_symbol"), serde_json::json!(["NOPE"]))
    );
    let (status, _) = http_get(run.addr, "/v1/snapshot?symbols=aapl").await;
    assert_eq!(status, 400);
    let (status, _) = http_get(run.addr, "/nowhere").await;
    assert_eq!(status, 404);
    let (status, _) = http_get(run.addr, "/v1/ws").await;
    assert_eq!(
        status, 426,
        "a plain GET on the WebSocket path asks for an upgrade"
    );
    run.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = settings();
    s.header_timeout = std::time::Duration::from_millis(300);
    let run = start(s).await;
    let mut silent = tokio::net::TcpStream::connect(run.addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(run.addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    for conn in [&mut silent, &mut partial] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(WAIT, conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "still open after {WAIT:?}");
    }
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t0.elapsed()
    );
    let (status, _) = http_get(run.addr, "/healthz").await;
    assert_eq!(status, 200, "others are served meanwhile");
    run.shutdown().await;
}
