//! `/metrics`: the exposition parses, and its counters move as ticks are delivered.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use tickstream::config::Settings;

/// Parses an OpenMetrics / Prometheus text exposition strictly enough to catch a broken
/// one: every sample belongs to a family declared by `# TYPE` before it, names and
/// labels are well formed, values are numbers, and the text ends with `# EOF`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.splitn(3, ' ');
            let (kind, name, what) = (w.next().unwrap(), w.next().unwrap(), w.next());
            assert!(name_ok(name), "{line}");
            match kind {
                "TYPE" => {
                    let t = what.unwrap();
                    assert!(
                        ["counter", "gauge", "histogram", "info", "unknown"].contains(&t),
                        "{line}"
                    );
                    assert!(
                        families.insert(name.to_owned(), t.to_owned()).is_none(),
                        "{line}"
                    );
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unknown comment {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "{line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .expect("labels in braces");
                for pair in inner.split(',') {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(
                        name_ok(k) && v.starts_with('"') && v.ends_with('"'),
                        "{line}"
                    );
                }
            }
        }
        let family = families
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample without a # TYPE: {line}"));
        let suffix = &name[family.len()..];
        let allowed: &[&str] = match families[family].as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        assert!(
            allowed.contains(&suffix),
            "{line}: suffix {suffix:?} of a {}",
            families[family]
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

async fn scrape(addr: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    parse(&body)
}

#[tokio::test]
async fn metrics_parse_and_move_as_ticks_are_delivered() {
    let run = start(settings()).await;
    let before = scrape(run.addr).await;
    let names: BTreeSet<&str> = before
        .keys()
        .map(|k| k.split('{').next().unwrap())
        .collect();
    for want in [
        "tickstream_build_info",
        "tickstream_connections",
        "tickstream_subscriptions",
        "tickstream_watched_symbols",
        "tickstream_ticks_ingested_total",
        "tickstream_ticks_delivered_total",
        "tickstream_ticks_conflated_total",
        "tickstream_bytes_out_total",
        "tickstream_frames_out_total",
        "tickstream_gaps_total",
        "tickstream_disconnects_total",
        "tickstream_rate_limited_total",
        "tickstream_auth_refused_total",
        "tickstream_bus_reconnects_total",
        "tickstream_bus_up",
        "tickstream_bus_lag_seconds",
        "tickstream_write_latency_seconds_bucket",
        "tickstream_write_latency_seconds_count",
        "tickstream_tasks",
    ] {
        assert!(names.contains(want), "{want} missing from {names:?}");
    }
    assert_eq!(before["tickstream_bus_up"], 1.0);
    assert_eq!(before["tickstream_subscriptions"], 0.0);

    let (mut c, _) = Client::ready(run.addr).await;
    c.send(r#"{"op":"subscribe","symbols":["AAPL","MSFT"]}"#)
        .await;
    c.until("subscribed").await;
    publish(&run, "AAPL", "e1", 1..=50);
    // seq 52 after 50: the hub announces an upstream gap.
    run.node.bus.publish(tick("AAPL", "e1", 52)).unwrap();
    let mut seen = 0;
    while seen < 51 {
        let m = c.next().await;
        if m["type"] == "tick" || m["type"] == "snapshot" {
            seen += 1;
        }
    }
    let after = scrape(run.addr).await;
    let delta = |k: &str| after[k] - before.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        after["tickstream_connections{transport=\"websocket\"}"],
        1.0
    );
    assert_eq!(after["tickstream_subscriptions"], 2.0);
    assert_eq!(after["tickstream_watched_symbols"], 2.0);
    assert!(delta("tickstream_ticks_delivered_total") >= 51.0);
    assert!(delta("tickstream_frames_out_total") >= 1.0);
    assert!(delta("tickstream_bytes_out_total") > 51.0 * 100.0);
    assert!(delta("tickstream_write_latency_seconds_count") >= 1.0);
    assert_eq!(delta("tickstream_gaps_total{reason=\"upstream\"}"), 1.0);
    assert_eq!(
        after["tickstream_write_latency_seconds_bucket{le=\"+Inf\"}"],
        after["tickstream_write_latency_seconds_count"]
    );

    // Closing is counted by code; a refused token by the auth counter.
    c.send_msg(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    eventually("the session ends", || {
        run.node.hub.subscriber_count("AAPL") == 0
    })
    .await;
    // The connection itself ends after the lingering close (the client's EOF or the
    // linger bound).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let end = loop {
        let end = scrape(run.addr).await;
        if end["tickstream_connections{transport=\"websocket\"}"] == 0.0 {
            break end;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection gauge stays up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        end["tickstream_disconnects_total{code=\"1000\"}"]
            > before["tickstream_disconnects_total{code=\"1000\"}"]
    );
    run.shutdown().await;
}

/// Kills the child when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node started with `TICKSTREAM_METRICS=false` (a process of its own: the switch is
/// process-wide) answers `/metrics` with 404 and a body that says why, and still
/// delivers ticks.
#[tokio::test]
async fn metrics_turned_off_answer_404_and_ticks_still_flow() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let _node = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_tickstream"))
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--feed", "synthetic", "--rate", "2000", "--log", "warn"])
            .env("TICKSTREAM_METRICS", "false")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("tickstream runs"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "the node listens");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("metrics are off"), "{body}");
    let (status, _) = http_get(addr, "/healthz").await;
    assert_eq!(status, 200);

    let (mut c, _) = Client::ready(addr).await;
    c.send(r#"{"op":"subscribe","symbols":["AAPL"]}"#).await;
    c.until("subscribed").await;
    let mut ticks = 0;
    while ticks < 3 {
        if c.next().await["type"] == "tick" {
            ticks += 1;
        }
    }
}

#[tokio::test]
async fn client_reports_are_answered_and_show_in_the_client_latency_metrics() {
    let run = start(settings()).await;
    let before = scrape(run.addr).await;
    let (mut c, _) = Client::ready(run.addr).await;
    let report = |id: u64, p50: f64, p99: f64, max: f64| {
        serde_json::json!({"op":"report","id":id,"latency_ms":{"p50":p50,"p99":p99,"max":max},
                           "count":1000,"window_ms":10000})
        .to_string()
    };
    c.send(&report(1, 0.4, 3.0, 20.0)).await;
    assert_eq!(
        c.next().await,
        serde_json::json!({"type":"reported","id":1})
    );
    c.send(&report(2, 30.0, 700.0, 2000.0)).await;
    assert_eq!(c.next().await["type"], "reported");
    // Refused: out of order, negative, no count. Nothing is counted for them.
    for bad in [
        report(3, 5.0, 1.0, 9.0),
        report(4, -1.0, 1.0, 9.0),
        r#"{"op":"report","id":5,"latency_ms":{"p50":1,"p99":2,"max":3},"window_ms":10}"#.into(),
    ] {
        c.send(&bad).await;
        let e = c.next().await;
        assert_eq!(e["code"], "bad_request", "{e}");
    }
    let after = scrape(run.addr).await;
    let delta = |k: &str| after[k] - before.get(k).copied().unwrap_or(0.0);
    assert_eq!(delta("tickstream_client_latency_reports_total"), 2.0);
    assert_eq!(delta("tickstream_client_latency_messages_total"), 2000.0);
    for q in ["p50", "p99", "max"] {
        assert_eq!(
            delta(&format!("tickstream_client_latency_{q}_seconds_count")),
            2.0
        );
    }
    // 0.4 ms and 30 ms of p50: one at or under 0.5 ms, both at or under 50 ms.
    assert_eq!(
        delta("tickstream_client_latency_p50_seconds_bucket{le=\"0.0005\"}"),
        1.0
    );
    assert_eq!(
        delta("tickstream_client_latency_p50_seconds_bucket{le=\"0.05\"}"),
        2.0
    );
    // 2 s of max: past the 1 s bucket.
    assert_eq!(
        delta("tickstream_client_latency_max_seconds_bucket{le=\"1.0\"}"),
        1.0
    );
    let sum = delta("tickstream_client_latency_p99_seconds_sum");
    assert!((sum - 0.703).abs() < 1e-6, "{sum}");
    run.shutdown().await;
}

/// `GET /v1/latency` on `addr`, parsed.
async fn latency(addr: std::net::SocketAddr, query: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(addr, &format!("/v1/latency{query}")).await;
    (status, serde_json::from_str(&body).unwrap_or_default())
}

#[tokio::test]
async fn the_latency_endpoint_summarises_what_clients_reported_in_the_last_minute() {
    let run = start(settings()).await;
    let (status, none) = latency(run.addr, "").await;
    assert_eq!(status, 200);
    assert_eq!(
        none,
        serde_json::json!({"window_ms":60000,"reports":0,"messages":0,"p50_ms":null,
                           "p99_ms":null,"max_ms":null,"reports_total":0})
    );
    // Two clients, three reports: p50s 1, 2, 3 ms; p99s 4, 8, 20 ms; maxes 9, 12, 30 ms.
    let mut clients = [
        Client::ready(run.addr).await.0,
        Client::ready(run.addr).await.0,
    ];
    for (i, p50, p99, max, count) in [
        (0, 1.0, 4.0, 9.0, 100),
        (1, 2.0, 8.0, 12.0, 300),
        (0, 3.0, 20.0, 30.0, 600),
    ] {
        let c = &mut clients[i];
        c.send(
            &serde_json::json!({"op":"report","latency_ms":{"p50":p50,"p99":p99,"max":max},
                                   "count":count,"window_ms":10000})
            .to_string(),
        )
        .await;
        assert_eq!(c.next().await["type"], "reported");
    }
    // A refused report is not counted.
    let a = &mut clients[0];
    a.send(r#"{"op":"report","latency_ms":{"p50":1,"p99":2,"max":999},"window_ms":10}"#)
        .await;
    assert_eq!(a.next().await["code"], "bad_request");
    let (_, s) = latency(run.addr, "").await;
    assert_eq!(
        (&s["reports"], &s["messages"]),
        (&3.into(), &1000.into()),
        "{s}"
    );
    assert_eq!(
        (&s["reports_total"], &s["window_ms"]),
        (&3.into(), &60000.into()),
        "{s}"
    );
    assert_eq!(s["max_ms"], 30.0, "the largest max reported: {s}");
    // Read inside the buckets of the histograms: the median p50 (2 ms) in (1, 2.5] ms,
    // the p99 of the p99s (20 ms) in (10, 25] ms.
    let p50 = s["p50_ms"].as_f64().unwrap();
    assert!(p50 > 1.0 && p50 <= 2.5, "{s}");
    let p99 = s["p99_ms"].as_f64().unwrap();
    assert!(p99 > 10.0 && p99 <= 25.0, "{s}");
    run.shutdown().await;
}

#[tokio::test]
async fn the_latency_endpoint_needs_a_subscriber_token_when_auth_is_on() {
    const SECRET: &[u8] = b"the-latency-endpoint-test-secret-of-enough-bytes";
    let (s, _dir) = with_jwt_secret(settings(), SECRET);
    let run = start(s).await;
    assert_eq!(latency(run.addr, "").await.0, 401);
    let claims = tickstream::auth::Claims {
        sub: "dashboard".into(),
        exp: tickstream::auth::expiry_in(Duration::from_secs(60)),
        symbols: None,
        roles: None,
    };
    let t = tickstream::auth::issue(SECRET, &claims).unwrap();
    let (status, body) = latency(run.addr, &format!("?token={t}")).await;
    assert_eq!((status, &body["reports"]), (200, &0.into()), "{body}");
    run.shutdown().await;
}

#[tokio::test]
async fn reports_are_subject_to_the_inbound_rate_limit() {
    let run = start(Settings {
        rate_limit: 1,
        rate_burst: 2,
        ..settings()
    })
    .await;
    let (mut c, _) = Client::ready(run.addr).await;
    let body =
        r#"{"op":"report","latency_ms":{"p50":1,"p99":2,"max":3},"count":5,"window_ms":10000}"#;
    for _ in 0..3 {
        c.send(body).await;
    }
    let got: Vec<String> = [c.next().await, c.next().await, c.next().await]
        .iter()
        .map(|m| format!("{} {}", m["type"], m["code"]))
        .collect();
    assert_eq!(
        got,
        [
            "\"reported\" null",
            "\"reported\" null",
            "\"error\" \"rate_limited\""
        ]
    );
    run.shutdown().await;
}

/// `tickstream_tasks` counts the runtime's live tasks: it rises with every connection
/// opened and falls back once they have closed, so a soak can tell a leak from load.
#[tokio::test]
async fn the_task_gauge_rises_with_connections_and_falls_back_when_they_close() {
    const N: usize = 20;
    let run = start(settings()).await;
    let gauge = |m: &BTreeMap<String, f64>| m["tickstream_tasks"];
    let ws_open = |m: &BTreeMap<String, f64>| m["tickstream_connections{transport=\"websocket\"}"];
    let before = scrape(run.addr).await;
    assert!(gauge(&before) >= 1.0, "the scrape itself runs on a task");
    let mut clients = Vec::new();
    for _ in 0..N {
        let (mut c, _) = Client::ready(run.addr).await;
        c.send(r#"{"op":"subscribe","symbols":["AAPL"]}"#).await;
        c.until("subscribed").await;
        clients.push(c);
    }
    let open = scrape(run.addr).await;
    assert_eq!(ws_open(&open), N as f64);
    assert!(
        gauge(&open) >= gauge(&before) + N as f64,
        "{N} connections, tasks {} → {}",
        gauge(&before),
        gauge(&open)
    );
    for c in &mut clients {
        c.send_msg(tokio_tungstenite::tungstenite::Message::Close(None))
            .await;
    }
    drop(clients);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = scrape(run.addr).await;
        if ws_open(&now) == 0.0 && gauge(&now) <= gauge(&before) + 2.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tasks stay up after the connections closed: {} before, {} open, {} now ({} connections)",
            gauge(&before),
            gauge(&open),
            gauge(&now),
            ws_open(&now)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.shutdown().await;
}
