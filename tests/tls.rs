//! TLS end to end: a node given a certificate (made by scripts/dev-cert) serves `https`
//! and `wss`; the Rust client, an independent client (tokio-rustls + tokio-tungstenite)
//! and the binaries connect with the test CA; what is not trusted, not TLS or never
//! finishes its handshake is refused without hurting the node.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;

use common::*;
use tickstream::client::{
    connect, connect_with, Client, ClientConfig, ClientError, ClientTls, ConnectError, Event,
    ServerMessage,
};
use tickstream::server::Running;

const BIN: &str = env!("CARGO_BIN_EXE_tickstream");

/// Certificates made by `scripts/dev-cert` in a fresh directory.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-cert");
        let out = Command::new(script)
            .arg(dir.path())
            .output()
            .expect("scripts/dev-cert runs");
        assert!(
            out.status.success(),
            "scripts/dev-cert failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Certs { dir }
    }
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

async fn tls_node(certs: &Certs, handshake_timeout: Duration) -> Running {
    let mut s = settings();
    s.tls_cert = Some(certs.cert());
    s.tls_key = Some(certs.key());
    s.tls_handshake_timeout = handshake_timeout;
    start(s).await
}

fn wss(addr: SocketAddr, path: &str) -> String {
    format!("wss://localhost:{}{path}", addr.port())
}

/// A TLS connector of the test's own (not the crate's), trusting only `ca`.
fn own_connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_stream(
    addr: SocketAddr,
    ca: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    own_connector(ca)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// GET over HTTPS with the test's own TLS client; returns (status, body).
async fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> (u16, String) {
    let mut s = tokio::time::timeout(WAIT, tls_stream(addr, ca))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // A peer that closes without close_notify ends the read with an error after the
    // bytes; what was read is what counts.
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("response in time");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

#[tokio::test]
async fn the_rust_client_subscribes_over_wss_and_gets_ticks_in_order() {
    let certs = Certs::new();
    let run = tls_node(&certs, Duration::from_secs(10)).await;
    publish(&run, "AAPL", "e1", 1..=5);
    let mut client = Client::new(ClientConfig {
        urls: vec![wss(run.addr, "/v1/ws")],
        ca_file: Some(certs.ca()),
        symbols: vec!["AAPL".into()],
        ..ClientConfig::default()
    })
    .unwrap();
    // The snapshot comes after the subscription is in place.
    loop {
        match tokio::time::timeout(WAIT, client.next())
            .await
            .expect("event in time")
            .unwrap()
        {
            Event::Message(ServerMessage::Snapshot(t)) => {
                assert_eq!(t.seq, 5);
                break;
            }
            Event::Message(ServerMessage::Tick(t)) => panic!("tick {} before snapshot", t.seq),
            _ => {}
        }
    }
    publish(&run, "AAPL", "e1", 6..=200);
    let mut want = 6;
    while want <= 200 {
        match tokio::time::timeout(WAIT, client.next())
            .await
            .expect("event in time")
            .unwrap()
        {
            Event::Message(ServerMessage::Tick(t)) => {
                assert_eq!(t.seq, want, "ticks in order");
                want += 1;
            }
            Event::Message(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(client.counters().connections, 1);
    run.shutdown().await;
}

/// The next JSON message of an independent client (server frames are JSON arrays).
async fn next_json<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    pending: &mut std::collections::VecDeque<Value>,
) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        if let Some(v) = pending.pop_front() {
            return v;
        }
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("message in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            pending.extend(v.as_array().unwrap().iter().cloned());
        }
    }
}

#[tokio::test]
async fn an_independent_client_subscribes_over_wss() {
    let certs = Certs::new();
    let run = tls_node(&certs, Duration::from_secs(10)).await;
    let stream = tls_stream(run.addr, &certs.ca()).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(wss(run.addr, "/v1/ws"), stream)
        .await
        .expect("WebSocket over TLS");
    assert_eq!(resp.status(), 101);
    let mut pending = std::collections::VecDeque::new();
    assert_eq!(next_json(&mut ws, &mut pending).await["type"], "welcome");
    ws.send(Message::text(
        r#"{"op":"subscribe","id":1,"symbols":["MSFT"],"snapshot":false}"#,
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws, &mut pending).await["type"], "subscribed");
    publish(&run, "MSFT", "e1", 1..=100);
    for want in 1..=100u64 {
        let m = next_json(&mut ws, &mut pending).await;
        assert_eq!(m["type"], "tick", "{m}");
        assert_eq!(m["symbol"], "MSFT");
        assert_eq!(m["seq"], want);
    }
    ws.close(None).await.unwrap();
    run.shutdown().await;
}

#[tokio::test]
async fn healthz_and_symbols_over_https() {
    let certs = Certs::new();
    let run = tls_node(&certs, Duration::from_secs(10)).await;
    assert_eq!(
        https_get(run.addr, &certs.ca(), "/healthz").await,
        (200, "ok\n".into())
    );
    let (status, body) = https_get(run.addr, &certs.ca(), "/v1/symbols").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"AAPL\""), "{body}");
    run.shutdown().await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_gets_a_certificate_error() {
    let certs = Certs::new();
    let run = tls_node(&certs, Duration::from_secs(10)).await;
    let url = wss(run.addr, "/v1/ws");

    // The built-in roots alone do not know the test CA.
    let e = connect(&url, None).await.err().expect("refused");
    let text = e.to_string();
    assert!(matches!(e, ConnectError::Tls { .. }), "{e:?}");
    assert!(
        text.contains("invalid peer certificate") && text.contains("UnknownIssuer"),
        "{text}"
    );
    assert!(text.contains("--ca-file"), "{text}");
    assert!(!e.is_transient(), "a refused certificate is not retried");

    // The Rust client stops at once with that error (fail fast, no retry loop).
    let mut client = Client::new(ClientConfig {
        urls: vec![url.clone()],
        symbols: vec!["AAPL".into()],
        ..ClientConfig::default()
    })
    .unwrap();
    let r = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = client.next().await {
                return e;
            }
        }
    })
    .await
    .expect("gives up in time");
    assert!(
        matches!(r, ClientError::Connect(ConnectError::Tls { .. })),
        "{r:?}"
    );

    // Trusting the CA, but asking for a name the certificate does not hold.
    let tls = ClientTls::new(Some(&certs.ca())).unwrap();
    let tcp = TcpStream::connect(run.addr).await.unwrap();
    let e = tls
        .connector()
        .connect(ServerName::try_from("example.com").unwrap(), tcp)
        .await
        .expect_err("a name the certificate lacks is refused");
    assert!(e.to_string().contains("not valid for name"), "{e}");
    assert!(tickstream::tls::is_certificate_error(&e));

    // And with the CA, the same URL works.
    assert!(connect_with(&url, None, Some(&tls)).await.is_ok());
    // A CA file that is not PEM is a clear error naming it.
    let bad = certs.dir.path().join("bad-ca.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let e = Client::new(ClientConfig {
        urls: vec![url],
        ca_file: Some(bad.clone()),
        ..ClientConfig::default()
    })
    .err()
    .expect("refused")
    .to_string();
    assert!(e.contains(&bad.display().to_string()), "{e}");
    run.shutdown().await;
}

#[tokio::test]
async fn a_stalled_handshake_is_dropped_after_the_timeout_while_others_are_served() {
    let certs = Certs::new();
    let limit = Duration::from_millis(500);
    let run = tls_node(&certs, limit).await;
    // Twenty clients open TCP and say nothing.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(TcpStream::connect(run.addr).await.unwrap());
    }
    let opened = Instant::now();
    // Meanwhile others are served at once.
    let t = Instant::now();
    assert_eq!(https_get(run.addr, &certs.ca(), "/healthz").await.0, 200);
    assert!(t.elapsed() < limit, "served in {:?}", t.elapsed());
    let mut ws = connect_with(
        &wss(run.addr, "/v1/ws"),
        None,
        Some(&ClientTls::new(Some(&certs.ca())).unwrap()),
    )
    .await
    .expect("a wss client connects while others stall");
    let welcome = ws.read_frame().await.unwrap();
    assert!(String::from_utf8_lossy(&welcome.payload).contains("welcome"));
    // Each stalled connection is closed by the node after the limit.
    for s in &mut stalled {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the node closes a stalled connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing is sent to a silent client");
    }
    let waited = opened.elapsed();
    assert!(
        waited >= limit - Duration::from_millis(50),
        "closed after {waited:?}, before the limit"
    );
    assert!(waited < limit * 6, "closed only after {waited:?}");
    // The node goes on serving.
    assert_eq!(https_get(run.addr, &certs.ca(), "/healthz").await.0, 200);
    run.shutdown().await;
}

#[tokio::test]
async fn plain_ws_and_http_to_the_tls_port_fail_cleanly() {
    let certs = Certs::new();
    let run = tls_node(&certs, Duration::from_secs(10)).await;
    let url = format!("ws://127.0.0.1:{}/v1/ws", run.addr.port());
    for _ in 0..3 {
        let r = tokio::time::timeout(WAIT, connect(&url, None))
            .await
            .expect("fails in time, does not hang");
        let e = r.err().expect("plain ws to a TLS port fails");
        assert!(
            matches!(e, ConnectError::Handshake(_) | ConnectError::Io { .. }),
            "{e:?}"
        );
    }
    // Plain HTTP gets no HTTP answer, and the connection ends.
    let mut s = TcpStream::connect(run.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("the node ends the connection");
    assert!(!raw.starts_with(b"HTTP/"), "{raw:?}");
    // The node is unharmed.
    assert_eq!(
        https_get(run.addr, &certs.ca(), "/healthz").await,
        (200, "ok\n".into())
    );
    // The other way round: wss:// to a plain node is a TLS error, not a hang.
    let plain = start(settings()).await;
    let tls = ClientTls::new(Some(&certs.ca())).unwrap();
    let e = tokio::time::timeout(
        WAIT,
        connect_with(&wss(plain.addr, "/v1/ws"), None, Some(&tls)),
    )
    .await
    .expect("fails in time")
    .err()
    .expect("refused");
    assert!(matches!(e, ConnectError::Tls { .. }), "{e:?}");
    plain.shutdown().await;
    run.shutdown().await;
}

/// Runs the binary to its exit (killed after 10 s); returns its status and stderr.
fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

#[test]
fn serve_refuses_missing_invalid_or_mismatched_certificates_naming_the_file() {
    let certs = Certs::new();
    let other = Certs::new();
    let dir = certs.dir.path();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let missing = dir.join("missing.pem");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let base = ["serve", "--listen", "127.0.0.1:0", "--feed", "none"];
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec![
                "--tls-cert".into(),
                s(&missing),
                "--tls-key".into(),
                s(&certs.key()),
            ],
            vec![s(&missing), "TLS certificate file".into()],
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&garbage),
                "--tls-key".into(),
                s(&certs.key()),
            ],
            vec![s(&garbage), "no certificate".into()],
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&certs.cert()),
                "--tls-key".into(),
                s(&garbage),
            ],
            vec![s(&garbage), "no private key".into()],
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&certs.cert()),
                "--tls-key".into(),
                s(&other.key()),
            ],
            vec![s(&certs.cert()), s(&other.key())],
        ),
        (
            vec!["--tls-cert".into(), s(&certs.cert())],
            vec!["tls-cert and tls-key go together".into()],
        ),
    ];
    for (extra, wanted) in cases {
        let args: Vec<&str> = base
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
            .collect();
        let (status, err) = run_to_exit(&args);
        assert!(!status.success(), "{args:?} exited {status}");
        for w in &wanted {
            assert!(err.contains(w.as_str()), "{args:?}: {w:?} not in {err}");
        }
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
        assert!(
            !err.contains("os error 2): No such"),
            "the cause once, not twice: {err}"
        );
    }
}

/// Starts `tickstream serve` with `args`; returns it, its address and its serving line.
fn spawn_serve(args: &[&str]) -> (Child, SocketAddr, String) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .args(["--log", "info"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (addr, line) = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            break (addr, line);
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr, line)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serve_on_a_public_address_with_tls_needs_no_plaintext_waiver() {
    let certs = Certs::new();
    let (child, addr, line) = spawn_serve(&[
        "--listen",
        "0.0.0.0:0",
        "--feed",
        "none",
        "--tls-cert",
        certs.cert().to_str().unwrap(),
        "--tls-key",
        certs.key().to_str().unwrap(),
    ]);
    let _child = Killed(child);
    assert!(line.contains("scheme=https"), "{line}");
    let local: SocketAddr = ([127, 0, 0, 1], addr.port()).into();
    assert_eq!(https_get(local, &certs.ca(), "/healthz").await.0, 200);
}

#[tokio::test]
async fn the_subscribe_binary_prints_ndjson_ticks_over_wss() {
    let certs = Certs::new();
    let (child, addr, line) = spawn_serve(&[
        "--listen",
        "127.0.0.1:0",
        "--rate",
        "5000",
        "--tls-cert",
        certs.cert().to_str().unwrap(),
        "--tls-key",
        certs.key().to_str().unwrap(),
    ]);
    let _child = Killed(child);
    assert!(line.contains("scheme=https"), "{line}");
    let url = wss(addr, "/v1/ws");
    let out = tokio::task::spawn_blocking(move || {
        let mut sub = Command::new(BIN)
            .args([
                "subscribe",
                "--url",
                &url,
                "--json",
                "--count",
                "10",
                "AAPL",
            ])
            .arg("--ca-file")
            .arg(certs.ca())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while sub.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = sub.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        sub.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    let ticks: Vec<u64> = lines
        .iter()
        .filter(|v| v["type"] == "tick" && v["symbol"] == "AAPL")
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert!(!ticks.is_empty(), "{stdout}");
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
}

/// Runs the binary with `args` to its exit on a blocking thread (killed after 20 s).
async fn output_of(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_synth_publishes_over_wss_with_the_ca_file() {
    let certs = Certs::new();
    let run = tls_node(&certs, Duration::from_secs(10)).await;
    let mut client = Client::new(ClientConfig {
        urls: vec![wss(run.addr, "/v1/ws")],
        ca_file: Some(certs.ca()),
        symbols: vec!["AAPL".into()],
        snapshot: false,
        ..ClientConfig::default()
    })
    .unwrap();
    loop {
        let e = tokio::time::timeout(WAIT, client.next()).await.unwrap();
        if let Event::Message(ServerMessage::Subscribed { .. }) = e.unwrap() {
            break;
        }
    }
    let synth = |ca: Option<&Path>| {
        let mut args: Vec<String> = [
            "feed",
            "synth",
            "--to",
            &wss(run.addr, "/v1/publish"),
            "--symbols",
            "AAPL",
            "--rate",
            "400",
            "--duration",
            "500ms",
        ]
        .map(String::from)
        .to_vec();
        if let Some(ca) = ca {
            args.extend(["--ca-file".into(), ca.to_str().unwrap().into()]);
        }
        output_of(args)
    };
    // Without the CA the node's certificate is refused, before any tick is made.
    let out = synth(None).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("UnknownIssuer"), "{err}");
    // With it, every tick reaches the subscriber, in order.
    let out = synth(Some(&certs.ca())).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("200 accepted, 0 refused"), "{stdout}");
    let mut want = 1;
    while want <= 200 {
        let e = tokio::time::timeout(WAIT, client.next()).await.unwrap();
        if let Event::Message(ServerMessage::Tick(t)) = e.unwrap() {
            assert_eq!(t.seq, want);
            want += 1;
        }
    }
    run.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_wss_clients_with_1001() {
    let certs = Certs::new();
    let run = tls_node(&certs, Duration::from_secs(10)).await;
    let stream = tls_stream(run.addr, &certs.ca()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(wss(run.addr, "/v1/ws"), stream)
        .await
        .unwrap();
    let mut pending = std::collections::VecDeque::new();
    assert_eq!(next_json(&mut ws, &mut pending).await["type"], "welcome");
    let stopping = tokio::spawn(run.shutdown());
    let code = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
    drop(ws);
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("the node stops within the drain time")
        .unwrap();
}

/// A node's certificate files in a directory of their own, replaced the way a
/// certificate manager does (write aside, rename over).
struct Served {
    dir: tempfile::TempDir,
}

impl Served {
    fn new(from: &Certs) -> Served {
        let s = Served {
            dir: tempfile::tempdir().unwrap(),
        };
        s.install(from);
        s
    }
    fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
    fn install(&self, from: &Certs) {
        for (src, dst) in [(from.cert(), self.cert()), (from.key(), self.key())] {
            let tmp = dst.with_extension("new");
            std::fs::copy(src, &tmp).unwrap();
            std::fs::rename(&tmp, &dst).unwrap();
        }
    }
}

/// Whether a TLS handshake trusting only `ca` succeeds.
async fn trusted_by(addr: SocketAddr, ca: &Path) -> bool {
    matches!(
        tokio::time::timeout(WAIT, tls_stream(addr, ca)).await,
        Ok(Ok(_))
    )
}

/// A subscribed independent client trusting only `ca`, and its pending messages.
async fn subscribed_client(
    addr: SocketAddr,
    ca: &Path,
    symbol: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
    std::collections::VecDeque<Value>,
) {
    let stream = tls_stream(addr, ca).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(wss(addr, "/v1/ws"), stream)
        .await
        .unwrap();
    let mut pending = std::collections::VecDeque::new();
    assert_eq!(next_json(&mut ws, &mut pending).await["type"], "welcome");
    let cmd = format!(r#"{{"op":"subscribe","id":1,"symbols":["{symbol}"],"snapshot":false}}"#);
    ws.send(Message::text(cmd)).await.unwrap();
    assert_eq!(next_json(&mut ws, &mut pending).await["type"], "subscribed");
    (ws, pending)
}

/// The next `tick` message, skipping others.
async fn next_tick_json<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    pending: &mut std::collections::VecDeque<Value>,
) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = next_json(ws, pending).await;
        if m["type"] == "tick" {
            return m;
        }
    }
}

#[tokio::test]
async fn a_changed_certificate_is_served_to_new_connections_and_old_ones_keep_going() {
    let (a, b) = (Certs::new(), Certs::new());
    let served = Served::new(&a);
    let mut s = settings();
    s.tls_cert = Some(served.cert());
    s.tls_key = Some(served.key());
    s.reload_poll = Duration::from_millis(100);
    let run = start(s).await;
    let (mut old, mut pending) = subscribed_client(run.addr, &a.ca(), "AAPL").await;
    assert!(!trusted_by(run.addr, &b.ca()).await, "B not served yet");

    // The files change: the poll notices, new handshakes get B.
    served.install(&b);
    let deadline = Instant::now() + WAIT;
    while !trusted_by(run.addr, &b.ca()).await {
        assert!(Instant::now() < deadline, "certificate B never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!trusted_by(run.addr, &a.ca()).await, "A no longer served");
    let b_leaf = CertificateDer::pem_file_iter(b.cert())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(run.certs().unwrap().chain()[0], b_leaf);

    // The connection made under A is still served.
    publish(&run, "AAPL", "e1", 1..=3);
    for want in 1..=3u64 {
        assert_eq!(next_tick_json(&mut old, &mut pending).await["seq"], want);
    }

    // A broken file is refused; B stays, for new and old connections alike.
    std::fs::write(served.cert(), "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let e = run.certs().unwrap().reload().unwrap_err().to_string();
    assert!(e.contains("server.pem"), "{e}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        trusted_by(run.addr, &b.ca()).await,
        "B kept after a bad file"
    );
    assert_eq!(run.certs().unwrap().chain()[0], b_leaf);
    publish(&run, "AAPL", "e1", 4..=4);
    assert_eq!(next_tick_json(&mut old, &mut pending).await["seq"], 4);
    run.shutdown().await;
}

/// Starts `tickstream serve` with `args`; returns it, its address and a channel of its
/// log lines from then on.
fn spawn_serve_logged(args: &[&str]) -> (Child, SocketAddr, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .args(["--log", "info"])
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, addr, rx)
}

fn sighup(child: &Child) {
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for a log line containing `needle`.
fn log_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no log line with {needle:?}"),
        }
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_the_binary_and_a_bad_one_is_logged() {
    let (a, b) = (Certs::new(), Certs::new());
    let served = Served::new(&a);
    let (child, addr, logs) = spawn_serve_logged(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        served.cert().to_str().unwrap(),
        "--tls-key",
        served.key().to_str().unwrap(),
        // Polling off: only the signal reloads.
        "--reload-poll",
        "0s",
    ]);
    let child = Killed(child);
    // The synthetic feed runs: the connection made under A gets live ticks.
    let (mut old, mut pending) = subscribed_client(addr, &a.ca(), "AAPL").await;
    next_tick_json(&mut old, &mut pending).await;

    served.install(&b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        trusted_by(addr, &a.ca()).await,
        "no reload before the signal"
    );
    sighup(&child.0);
    log_line(&logs, "TLS certificate reloaded");
    assert!(trusted_by(addr, &b.ca()).await, "B after SIGHUP");
    assert!(!trusted_by(addr, &a.ca()).await, "A no longer");
    let before = next_tick_json(&mut old, &mut pending).await["seq"]
        .as_u64()
        .unwrap();
    let after = next_tick_json(&mut old, &mut pending).await["seq"]
        .as_u64()
        .unwrap();
    assert!(after > before, "the old connection keeps receiving ticks");

    std::fs::write(served.key(), "garbage\n").unwrap();
    sighup(&child.0);
    let line = log_line(&logs, "TLS certificate not reloaded");
    assert!(line.contains("server.key"), "{line}");
    assert!(trusted_by(addr, &b.ca()).await, "B kept");
    next_tick_json(&mut old, &mut pending).await;
    drop(child);
}
