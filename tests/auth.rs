//! Auth: tokens checked before the upgrade (401/403), symbol claims (`forbidden`), and
//! a token that expires while connected (1008).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tickstream::auth::{self, Claims};

const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

async fn start_with_auth() -> (tickstream::server::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, SECRET).unwrap();
    let mut s = settings();
    s.jwt_secret_file = Some(path);
    s.jwt_leeway = Duration::ZERO;
    (start(s).await, dir)
}

fn token(symbols: Option<&[&str]>, roles: Option<&[&str]>, ttl_s: u64) -> String {
    let claims = Claims {
        sub: "tester".into(),
        exp: auth::expiry_in(Duration::from_secs(ttl_s)),
        symbols: symbols.map(|s| s.iter().map(|x| x.to_string()).collect()),
        roles: roles.map(|r| r.iter().map(|x| x.to_string()).collect()),
    };
    auth::issue(SECRET, &claims).unwrap()
}

async fn upgrade_status(addr: std::net::SocketAddr, path: &str, bearer: Option<&str>) -> u16 {
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}{path}"),
    )
    .unwrap();
    if let Some(t) = bearer {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn tokens_are_checked_before_the_upgrade() {
    let (run, _dir) = start_with_auth().await;
    let good = token(None, None, 60);
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", None).await,
        401,
        "missing"
    );
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some("garbage")).await,
        401,
        "malformed"
    );
    let forged = auth::issue(
        b"some-other-secret-some-other-secret!",
        &Claims {
            sub: "x".into(),
            exp: auth::expiry_in(Duration::from_secs(60)),
            symbols: None,
            roles: None,
        },
    )
    .unwrap();
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&forged)).await,
        401,
        "badly signed"
    );
    let expired = auth::issue(
        SECRET,
        &Claims {
            sub: "x".into(),
            exp: 1_000,
            symbols: None,
            roles: None,
        },
    )
    .unwrap();
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&expired)).await,
        401,
        "expired"
    );
    let publisher_only = token(None, Some(&["publish"]), 60);
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&publisher_only)).await,
        403,
        "wrong role"
    );
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&good)).await,
        101,
        "header"
    );
    assert_eq!(
        upgrade_status(run.addr, &format!("/v1/ws?token={good}"), None).await,
        101,
        "query"
    );
    let (status, _) = http_get(run.addr, "/v1/snapshot?symbols=AAPL").await;
    assert_eq!(status, 401, "the snapshot needs a token too");
    let (status, _) = http_get(run.addr, "/healthz").await;
    assert_eq!(status, 200, "health stays open");
    assert_eq!(
        upgrade_status(run.addr, "/v1/publish", None).await,
        401,
        "publishing needs a token"
    );
    assert_eq!(
        upgrade_status(run.addr, "/v1/publish", Some(&good)).await,
        403,
        "and the publish role"
    );
    assert_eq!(
        upgrade_status(run.addr, "/v1/publish", Some(&publisher_only)).await,
        101
    );
    run.shutdown().await;
}

#[tokio::test]
async fn symbol_claims_give_forbidden_and_keep_the_rest() {
    let (run, _dir) = start_with_auth().await;
    publish(&run, "BTC-USD", "e1", 1..=2);
    let t = token(Some(&["AAPL", "BTC-*"]), None, 60);
    let mut c = Client::connect_path(run.addr, &format!("/v1/ws?token={t}")).await;
    c.until("welcome").await;
    c.send(r#"{"op":"subscribe","id":3,"symbols":["AAPL","MSFT","BTC-USD"]}"#)
        .await;
    let e = c.next().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_u64()),
        (Some("error"), Some("forbidden"), Some(3)),
        "{e}"
    );
    assert_eq!(e["symbols"], json!(["MSFT"]));
    assert_eq!(
        c.next().await,
        json!({"type":"subscribed","id":3,"symbols":["AAPL","BTC-USD"]})
    );
    assert_eq!(c.next().await["symbol"], "BTC-USD");
    let (status, body) = http_get(run.addr, &format!("/v1/snapshot?symbols=MSFT&token={t}")).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) =
        http_get(run.addr, &format!("/v1/snapshot?symbols=BTC-USD&token={t}")).await;
    assert_eq!(status, 200, "{body}");
    run.shutdown().await;
}

#[tokio::test]
async fn a_token_expiring_while_connected_closes_with_1008() {
    let (run, _dir) = start_with_auth().await;
    let t = token(None, None, 1);
    let mut c = Client::connect_path(run.addr, &format!("/v1/ws?token={t}")).await;
    c.until("welcome").await;
    assert_eq!(c.closed(Duration::from_secs(4)).await, Some(1008));
    run.shutdown().await;
}

#[test]
fn the_token_command_signs_what_the_node_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, SECRET).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .args([
            "token",
            "--secret-file",
            path.to_str().unwrap(),
            "--sub",
            "dash",
            "--symbols",
            "AAPL,BTC-*",
            "--ttl",
            "5m",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwt = String::from_utf8(out.stdout).unwrap();
    let claims = auth::Auth::new(SECRET, Duration::ZERO)
        .check(Some(jwt.trim()), auth::ROLE_SUBSCRIBE)
        .unwrap();
    assert_eq!(claims.sub, "dash");
    assert_eq!(
        claims.symbols,
        Some(vec!["AAPL".to_string(), "BTC-*".to_string()])
    );
    assert!(claims.remaining() > Duration::from_secs(290));
    std::fs::write(&path, b"short").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .args([
            "token",
            "--secret-file",
            path.to_str().unwrap(),
            "--sub",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32"));
}
