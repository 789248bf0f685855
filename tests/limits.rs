//! Connection limits at the door, per source address and for the node, and the
//! `/metrics` auth setting: real clients on loopback, bound to distinct source
//! addresses (127.0.0.2, 127.0.0.3, …) before they connect.

mod common;

use std::net::SocketAddr;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::MaybeTlsStream;

/// A TCP connection to `addr` from source address `src`.
async fn tcp_from(src: &str, addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap())
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    sock.connect(addr).await.expect("connect")
}

/// What a refused upgrade was answered: status and `Retry-After`.
#[derive(Debug)]
struct Refused {
    status: u16,
    retry_after: Option<u64>,
}

type Ws = tokio_tungstenite::WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket on `path` from `src` with the `extra` headers; the socket, or how
/// the upgrade was refused.
async fn ws_from(
    src: &str,
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> Result<Ws, Refused> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in extra {
        req.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            tungstenite::http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let tcp = tcp_from(src, addr).await;
    let r = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("an answer to the upgrade");
    match r {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(Refused {
            status: resp.status().as_u16(),
            retry_after: resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok()),
        }),
        Err(e) => panic!("upgrade from {src} to {path} failed: {e}"),
    }
}

/// Opens a WebSocket on `/v1/ws` from `src`, which must be let in; reads the welcome.
async fn open_ws(src: &str, addr: SocketAddr) -> Ws {
    let mut ws = ws_from(src, addr, "/v1/ws", &[])
        .await
        .unwrap_or_else(|r| panic!("{src} refused: {r:?}"));
    let first = next_text(&mut ws).await;
    assert!(first.contains("\"welcome\""), "{first}");
    ws
}

/// Expects the upgrade from `src` to be refused; how.
async fn refused_ws(src: &str, addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Refused {
    match ws_from(src, addr, path, extra).await {
        Ok(_) => panic!("{src} on {path} was let in"),
        Err(r) => r,
    }
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no text frame: {other:?}"),
        }
    }
}

/// The established connection still answers a ping.
async fn still_served(ws: &mut Ws) {
    ws.send(Message::text(r#"{"op":"ping","id":42}"#))
        .await
        .unwrap();
    loop {
        let t = next_text(ws).await;
        if t.contains("\"pong\"") {
            assert!(t.contains("\"id\":42"), "{t}");
            return;
        }
    }
}

/// An SSE stream from `src`: the status line and head, and the open socket.
async fn sse_from(src: &str, addr: SocketAddr) -> (String, TcpStream) {
    let mut tcp = tcp_from(src, addr).await;
    let req = format!("GET /v1/sse?symbols=AAPL HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut byte))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before the head: {head:?}");
        head.push(byte[0]);
    }
    (String::from_utf8(head).unwrap(), tcp)
}

/// A GET from `src` with `extra` header lines; (status, head, body).
async fn get_from(src: &str, addr: SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
    let mut tcp = tcp_from(src, addr).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// The value of one sample of `/metrics` (0 when absent).
async fn metric(addr: SocketAddr, sample: &str) -> u64 {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_address_at_its_cap_gets_429_while_others_are_served() {
    let mut s = settings();
    s.max_conns_per_addr = 2;
    s.retry_after = std::time::Duration::from_secs(7);
    let run = start(s).await;
    let addr = run.addr;
    let busy = r#"tickstream_refused_total{reason="address_busy"}"#;
    let before = metric(addr, busy).await;

    let mut first = open_ws("127.0.0.2", addr).await;
    // SSE and publisher streams count toward the same cap.
    let (head, _sse) = sse_from("127.0.0.2", addr).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for path in ["/v1/ws", "/v1/publish"] {
        let r = refused_ws("127.0.0.2", addr, path, &[]).await;
        assert_eq!(r.status, 429, "{path}");
        assert_eq!(r.retry_after, Some(7), "{path}");
    }
    let (head, _) = sse_from("127.0.0.2", addr).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 7"),
        "{head}"
    );
    // Plain GETs are not streams: still answered.
    let (status, _, _) = get_from("127.0.0.2", addr, "/v1/symbols", "").await;
    assert_eq!(status, 200);

    // Another address is served, and the established connection keeps working.
    let mut other = open_ws("127.0.0.3", addr).await;
    still_served(&mut other).await;
    still_served(&mut first).await;
    assert_eq!(metric(addr, busy).await - before, 3, "each refusal counted");

    // Closing a stream frees its place.
    first.close(None).await.unwrap();
    drop(first);
    let deadline = std::time::Instant::now() + WAIT;
    let mut again = loop {
        match ws_from("127.0.0.2", addr, "/v1/ws", &[]).await {
            Ok(ws) => break ws,
            Err(r) => {
                assert_eq!(r.status, 429);
                assert!(std::time::Instant::now() < deadline, "place never freed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    assert!(next_text(&mut again).await.contains("welcome"));
    run.shutdown().await;
}

#[tokio::test]
async fn an_address_over_its_per_second_quota_gets_429() {
    let mut s = settings();
    s.max_new_conns_per_addr = 2;
    let run = start(s).await;
    let addr = run.addr;
    let rate = r#"tickstream_refused_total{reason="address_rate"}"#;
    let before = metric(addr, rate).await;
    // A burst of 2 passes; soon one is refused (the quota refills at 2 per second,
    // slower than these attempts follow each other).
    let mut held = Vec::new();
    let refusal = loop {
        match ws_from("127.0.0.2", addr, "/v1/ws", &[]).await {
            Ok(ws) => held.push(ws),
            Err(r) => break r,
        }
        assert!(held.len() < 50, "never limited");
    };
    assert!(held.len() >= 2, "the burst passes: {}", held.len());
    assert_eq!(refusal.status, 429);
    assert_eq!(
        refusal.retry_after,
        Some(1),
        "the quota frees one within a second"
    );
    // Another address has its own quota; the established connections are served.
    let mut other = open_ws("127.0.0.3", addr).await;
    still_served(&mut other).await;
    still_served(&mut held[0]).await;
    assert!(metric(addr, rate).await > before, "the refusal counted");
    run.shutdown().await;
}

#[tokio::test]
async fn the_node_at_its_cap_answers_503() {
    let mut s = settings();
    s.max_conns = 2;
    s.retry_after = std::time::Duration::from_millis(1500);
    let run = start(s).await;
    let addr = run.addr;
    let mut a = open_ws("127.0.0.2", addr).await;
    let (head, _sse) = sse_from("127.0.0.3", addr).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for path in ["/v1/ws", "/v1/publish"] {
        let r = refused_ws("127.0.0.4", addr, path, &[]).await;
        assert_eq!(r.status, 503, "{path}");
        assert_eq!(r.retry_after, Some(2), "rounded up to whole seconds");
    }
    still_served(&mut a).await;
    let (status, _, _) = get_from("127.0.0.4", addr, "/healthz", "").await;
    assert_eq!(status, 200, "plain GETs are not counted");
    assert_eq!(
        metric(addr, r#"tickstream_refused_total{reason="node_busy"}"#).await,
        2
    );
    run.shutdown().await;
}

#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    let mut s = settings();
    s.max_conns_per_addr = 1;
    s.trusted_proxies = vec!["127.0.0.2/32".parse().unwrap()];
    let run = start(s).await;
    let addr = run.addr;
    let xff = |v: &'static str| [("X-Forwarded-For", v)];
    // Through the trusted proxy 127.0.0.2: each forwarded client has its own cap.
    let mut c7 = ws_from("127.0.0.2", addr, "/v1/ws", &xff("203.0.113.7"))
        .await
        .expect("first client through the proxy");
    let _c8 = ws_from("127.0.0.2", addr, "/v1/ws", &xff("203.0.113.8"))
        .await
        .expect("another client through the proxy");
    let r = refused_ws("127.0.0.2", addr, "/v1/ws", &xff("203.0.113.7")).await;
    assert_eq!(r.status, 429, "203.0.113.7 is at its cap");
    // The right-most untrusted hop counts: a forged address in front changes nothing.
    let r = refused_ws(
        "127.0.0.2",
        addr,
        "/v1/ws",
        &xff("198.51.100.1, 203.0.113.7"),
    )
    .await;
    assert_eq!(r.status, 429, "forged left-most entry ignored");
    still_served(&mut c7).await;

    // From an untrusted peer the header is ignored: the peer is the client.
    let _u = ws_from("127.0.0.3", addr, "/v1/ws", &xff("203.0.113.9"))
        .await
        .expect("first from 127.0.0.3");
    let r = refused_ws("127.0.0.3", addr, "/v1/ws", &xff("203.0.113.10")).await;
    assert_eq!(
        r.status, 429,
        "a different header does not make a new client"
    );
    run.shutdown().await;
}

#[tokio::test]
async fn metrics_have_their_own_auth() {
    use tickstream::config::MetricsAuth;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("metrics.token");
    std::fs::write(&token, "scrape-me-scrape-me-1234\n").unwrap();

    // Open by default, even with the streams' auth on.
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, b"test-secret-test-secret-test-secret!").unwrap();
    let mut s = settings();
    s.jwt_secret_file = Some(secret.clone());
    let run = start(s).await;
    let (status, _, body) = get_from("127.0.0.2", run.addr, "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("tickstream_refused_total"), "{body}");
    assert_eq!(
        refused_ws("127.0.0.2", run.addr, "/v1/ws", &[])
            .await
            .status,
        401,
        "the streams still need a token"
    );
    run.shutdown().await;

    // A token of its own, streams open.
    let mut s = settings();
    s.metrics_auth = MetricsAuth::Token(token.clone());
    let run = start(s).await;
    let addr = run.addr;
    let (status, head, _) = get_from("127.0.0.2", addr, "/metrics", "").await;
    assert_eq!(status, 401);
    assert!(head
        .to_ascii_lowercase()
        .contains("www-authenticate: bearer"));
    let wrong = "Authorization: Bearer scrape-me-scrape-me-1235\r\n";
    assert_eq!(get_from("127.0.0.2", addr, "/metrics", wrong).await.0, 401);
    let right = "Authorization: Bearer scrape-me-scrape-me-1234\r\n";
    let (status, _, body) = get_from("127.0.0.2", addr, "/metrics", right).await;
    assert_eq!(status, 200);
    let refused: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix(r#"tickstream_refused_total{reason="auth"} "#))
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused >= 2, "both refusals counted: {refused}");
    let mut ws = open_ws("127.0.0.2", addr).await;
    still_served(&mut ws).await;
    run.shutdown().await;

    // A JWT with the metrics role.
    let mut s = settings();
    s.jwt_secret_file = Some(secret);
    s.metrics_auth = MetricsAuth::Jwt;
    let run = start(s).await;
    let signer = tickstream::auth::Signer::secret(b"test-secret-test-secret-test-secret!");
    let mint = |roles: Option<Vec<String>>| {
        signer
            .sign(&tickstream::auth::Claims {
                sub: "scraper".into(),
                exp: tickstream::auth::expiry_in(std::time::Duration::from_secs(600)),
                symbols: None,
                roles,
            })
            .unwrap()
    };
    assert!(!mint(Some(vec!["metrics".into()])).is_empty());
    // `tickstream token` issues it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .args([
            "token",
            "--sub",
            "scraper",
            "--roles",
            "metrics",
            "--secret-file",
        ])
        .arg(dir.path().join("jwt.secret"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let metrics = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let subscriber = mint(None);
    let with = |t: &str| format!("Authorization: Bearer {t}\r\n");
    assert_eq!(get_from("127.0.0.2", run.addr, "/metrics", "").await.0, 401);
    assert_eq!(
        get_from("127.0.0.2", run.addr, "/metrics", &with(&subscriber))
            .await
            .0,
        403
    );
    assert_eq!(
        get_from("127.0.0.2", run.addr, "/metrics", &with(&metrics))
            .await
            .0,
        200
    );
    run.shutdown().await;
}

#[tokio::test]
async fn refusals_of_origin_and_oversized_heads_are_counted() {
    let mut s = settings();
    s.allowed_origins = vec!["https://app.example.com".into()];
    let run = start(s).await;
    let addr = run.addr;
    let r = refused_ws(
        "127.0.0.2",
        addr,
        "/v1/ws",
        &[("Origin", "https://evil.example.net")],
    )
    .await;
    assert_eq!(r.status, 403);
    // The server answers (and stops reading) before a head over the limit is all
    // written: read the status line only.
    let tcp = tcp_from("127.0.0.2", addr).await;
    let (mut rd, mut wr) = tcp.into_split();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nX-Pad: {}\r\n\r\n",
        "x".repeat(20_000)
    );
    let writer = tokio::spawn(async move { wr.write_all(head.as_bytes()).await });
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(WAIT, rd.read(&mut chunk))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 431"), "{got:?}");
    let _ = writer.await;
    assert_eq!(
        metric(addr, r#"tickstream_refused_total{reason="origin"}"#).await,
        1
    );
    // Counted when the refused connection ends, just after its answer.
    let deadline = std::time::Instant::now() + WAIT;
    while metric(
        addr,
        r#"tickstream_refused_total{reason="header_too_large"}"#,
    )
    .await
        != 1
    {
        assert!(std::time::Instant::now() < deadline, "431 not counted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    run.shutdown().await;
}
