//! Auth: tokens checked before the upgrade (401/403), symbol claims (`forbidden`), and
//! a token that expires while connected (1008).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tickstream::auth::{self, Claims};

const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

async fn start_with_auth() -> (tickstream::server::Running, tempfile::TempDir) {
    let (s, dir) = with_jwt_secret(settings(), SECRET);
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
    // Another parameter whose name ends in "symbols" names nothing: the allowed
    // symbols are answered, as without any.
    let (status, body) = http_get(run.addr, &format!("/v1/snapshot?xsymbols=MSFT&token={t}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("MSFT") && body.contains("BTC-USD"), "{body}");
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

/// Keys made by `openssl` in a temporary directory: private keys never leave it.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Makes `NAME.key` (PKCS#8 private) and `NAME.pem` (public); `kind` is rsa or ec.
    fn pair(&self, name: &str, kind: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = self.path(&format!("{name}.key"));
        let public = self.path(&format!("{name}.pem"));
        let gen: &[&str] = match kind {
            "rsa" => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            _ => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        };
        openssl(&[&["genpkey"], gen, &["-out", key.to_str().unwrap()]].concat());
        openssl(&[
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        (key, public)
    }

    fn secret(&self, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn claims_for(sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        exp: auth::expiry_in(Duration::from_secs(60)),
        symbols: None,
        roles: None,
    }
}

fn sign(key: &std::path::Path, kid: Option<&str>, claims: &impl serde::Serialize) -> String {
    auth::Signer::from_file(key, kid.map(str::to_owned))
        .unwrap()
        .sign(claims)
        .unwrap()
}

fn spec(s: &str) -> auth::KeySpec {
    s.parse().unwrap()
}

#[tokio::test]
async fn rs256_es256_and_hs256_keys_are_picked_by_kid() {
    let keys = Keys::new();
    let (rsa_key, rsa_pub) = keys.pair("rsa", "rsa");
    let (ec_key, ec_pub) = keys.pair("ec", "ec");
    let (other_rsa, _) = keys.pair("other-rsa", "rsa");
    let (other_ec, _) = keys.pair("other-ec", "ec");
    let hs = keys.secret("hs.secret", SECRET);
    let mut s = settings();
    s.jwt_leeway = Duration::ZERO;
    s.jwt_keys = vec![
        spec(&format!("rsa={}", rsa_pub.display())),
        spec(&format!("ec={}", ec_pub.display())),
        spec(&format!("hs={}", hs.display())),
    ];
    let run = start(s).await;
    let c = claims_for("alg");
    for (key, kid, what) in [
        (&rsa_key, "rsa", "RS256"),
        (&ec_key, "ec", "ES256"),
        (&hs, "hs", "HS256"),
    ] {
        let t = sign(key, Some(kid), &c);
        assert_eq!(
            upgrade_status(run.addr, "/v1/ws", Some(&t)).await,
            101,
            "{what}"
        );
        let (status, body) = http_get(run.addr, &format!("/v1/snapshot?token={t}")).await;
        assert_eq!(status, 200, "{what} on the snapshot: {body}");
    }
    // The same kid, another key of the same kind: the signature does not verify.
    for (key, kid) in [(&other_rsa, "rsa"), (&other_ec, "ec")] {
        let t = sign(key, Some(kid), &c);
        assert_eq!(
            upgrade_status(run.addr, "/v1/ws", Some(&t)).await,
            401,
            "wrong {kid} key"
        );
    }
    // An RSA token naming the EC key's id, and an HS256 token "signed" with the public
    // RSA key as secret (algorithm confusion): both refused.
    let t = sign(&rsa_key, Some("ec"), &c);
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&t)).await,
        401,
        "alg mismatch"
    );
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("rsa".into());
    let confused = jsonwebtoken::encode(
        &header,
        &c,
        &jsonwebtoken::EncodingKey::from_secret(&std::fs::read(&rsa_pub).unwrap()),
    )
    .unwrap();
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&confused)).await,
        401,
        "confusion"
    );
    let t = sign(&rsa_key, Some("nope"), &c);
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&t)).await,
        401,
        "unknown kid"
    );
    let t = sign(&rsa_key, None, &c);
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&t)).await,
        401,
        "no kid, every key has one"
    );
    let refusal = run
        .node
        .auth
        .as_ref()
        .unwrap()
        .check(Some(&sign(&ec_key, Some("gone"), &c)), auth::ROLE_SUBSCRIBE)
        .unwrap_err();
    assert_eq!(refusal.message, "unknown key id \"gone\"");
    run.shutdown().await;
}

#[tokio::test]
async fn not_before_in_the_future_is_refused() {
    let (run, _dir) = start_with_auth().await;
    let now = auth::expiry_in(Duration::ZERO);
    let signer = auth::Signer::secret(SECRET);
    let later = json!({"sub": "n", "exp": now + 3600, "nbf": now + 600});
    let t = signer.sign(&later).unwrap();
    assert_eq!(upgrade_status(run.addr, "/v1/ws", Some(&t)).await, 401);
    let e = run
        .node
        .auth
        .as_ref()
        .unwrap()
        .check(Some(&t), "subscribe")
        .unwrap_err();
    assert_eq!(e.message, "token not valid yet (nbf)");
    let past = json!({"sub": "n", "exp": now + 3600, "nbf": now - 5});
    let t = signer.sign(&past).unwrap();
    assert_eq!(upgrade_status(run.addr, "/v1/ws", Some(&t)).await, 101);
    run.shutdown().await;
}

#[tokio::test]
async fn keys_without_kid_are_tried_in_order() {
    let keys = Keys::new();
    let first = keys.secret("first", SECRET);
    let second = keys.secret("second", b"a-second-secret-a-second-secret-xyz");
    let mut s = settings();
    s.jwt_secret_file = Some(first);
    s.jwt_keys = vec![spec(second.to_str().unwrap())];
    let run = start(s).await;
    for key in [&keys.path("first"), &second] {
        let t = sign(key, None, &claims_for("order"));
        assert_eq!(
            upgrade_status(run.addr, "/v1/ws", Some(&t)).await,
            101,
            "{}",
            key.display()
        );
    }
    let t = sign(&second, Some("second"), &claims_for("order"));
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&t)).await,
        401,
        "a kid no key has"
    );
    run.shutdown().await;
}

#[tokio::test]
async fn bearer_header_and_query_work_on_every_authenticated_route() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (run, _dir) = start_with_auth().await;
    let t = token(None, None, 60);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let mut s = tokio::net::TcpStream::connect(run.addr).await.unwrap();
        let req = format!(
            "GET /v1/snapshot HTTP/1.1\r\nHost: x\r\nAuthorization: {scheme} {t}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        assert!(raw.starts_with("HTTP/1.1 200"), "{scheme}: {raw}");
    }
    let p = token(None, Some(&["publish"]), 60);
    assert_eq!(
        upgrade_status(run.addr, &format!("/v1/publish?token={p}"), None).await,
        101
    );
    let (status, _) = http_get(run.addr, &format!("/v1/snapshot?token={t}")).await;
    assert_eq!(status, 200);
    run.shutdown().await;
}

#[tokio::test]
async fn rotation_through_the_key_directory() {
    let keys = Keys::new();
    let (k1, _) = keys.pair("k1", "ec");
    let (k2, _) = keys.pair("k2", "rsa");
    let (k3, k3_pub) = keys.pair("k3", "ec");
    let dir = keys.path("public");
    std::fs::create_dir(&dir).unwrap();
    for name in ["k1", "k2"] {
        std::fs::copy(
            keys.path(&format!("{name}.pem")),
            dir.join(format!("{name}.pem")),
        )
        .unwrap();
    }
    let mut s = settings();
    s.jwt_key_dir = Some(dir.clone());
    s.reload_poll = Duration::from_millis(100);
    let run = start(s).await;
    let auth = run.node.auth.as_ref().unwrap();
    assert_eq!(auth.kids(), vec!["k1".to_string(), "k2".to_string()]);
    let t1 = sign(&k1, Some("k1"), &claims_for("one"));
    let t2 = sign(&k2, Some("k2"), &claims_for("two"));
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&t1)).await,
        101,
        "k1"
    );
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&t2)).await,
        101,
        "k2"
    );

    // Retire k2: its tokens are refused once the node has reloaded, k1's still pass.
    std::fs::remove_file(dir.join("k2.pem")).unwrap();
    assert_eq!(auth.reload().unwrap(), 1);
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&t2)).await,
        401,
        "k2 removed"
    );
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&t1)).await,
        101,
        "k1 stays"
    );

    // A bad file is refused as a whole: the keys in use stay.
    std::fs::write(
        dir.join("broken.pem"),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let e = auth.reload().unwrap_err().to_string();
    assert!(e.contains("broken.pem"), "{e}");
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&t1)).await,
        101,
        "old keys kept"
    );
    std::fs::remove_file(dir.join("broken.pem")).unwrap();

    // A new key dropped in the directory is picked up by the poll, without a signal.
    std::fs::copy(&k3_pub, dir.join("k3.pem")).unwrap();
    eventually("k3 loaded by the poll", || {
        auth.kids().contains(&"k3".to_string())
    })
    .await;
    let t3 = sign(&k3, Some("k3"), &claims_for("three"));
    assert_eq!(
        upgrade_status(run.addr, "/v1/ws", Some(&t3)).await,
        101,
        "k3"
    );
    run.shutdown().await;
}

#[test]
fn serve_refuses_unusable_jwt_keys_naming_the_file() {
    let keys = Keys::new();
    let (private, _) = keys.pair("p", "ec");
    let short = keys.secret("short", b"tiny");
    let p384 = keys.path("p384.key");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-out",
        p384.to_str().unwrap(),
    ]);
    let p384_pub = keys.path("p384.pem");
    openssl(&[
        "pkey",
        "-in",
        p384.to_str().unwrap(),
        "-pubout",
        "-out",
        p384_pub.to_str().unwrap(),
    ]);
    for (file, expect) in [
        (&private, "holds a private key"),
        (&short, "at least 32"),
        (&p384_pub, "P-256"),
        (&keys.path("missing.pem"), "cannot read JWT key file"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickstream"))
            .args(["serve", "--listen", "127.0.0.1:0", "--jwt-key"])
            .arg(format!("a={}", file.display()))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}", file.display());
        assert!(
            err.contains(expect) && err.contains(file.to_str().unwrap()),
            "{err}"
        );
    }
}

#[test]
fn the_token_command_signs_rs256_and_es256_with_a_kid() {
    let keys = Keys::new();
    let (rsa_key, rsa_pub) = keys.pair("rsa", "rsa");
    let (ec_key, ec_pub) = keys.pair("ec", "ec");
    let auth = auth::Auth::load(
        auth::KeySources {
            keys: vec![
                spec(&format!("r1={}", rsa_pub.display())),
                spec(&format!("e1={}", ec_pub.display())),
            ],
            ..Default::default()
        },
        Duration::ZERO,
    )
    .unwrap();
    for (key, kid) in [(&rsa_key, "r1"), (&ec_key, "e1")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickstream"))
            .env_remove("TICKSTREAM_JWT_SECRET_FILE")
            .args([
                "token",
                "--key",
                key.to_str().unwrap(),
                "--kid",
                kid,
                "--sub",
                "cli",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let jwt = String::from_utf8(out.stdout).unwrap();
        let claims = auth.check(Some(jwt.trim()), auth::ROLE_SUBSCRIBE).unwrap();
        assert_eq!(claims.sub, "cli");
        // Signed without the kid, the node does not know which key to use.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickstream"))
            .env_remove("TICKSTREAM_JWT_SECRET_FILE")
            .args(["token", "--key", key.to_str().unwrap(), "--sub", "cli"])
            .output()
            .unwrap();
        let jwt = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            auth.check(Some(jwt.trim()), "subscribe")
                .unwrap_err()
                .status,
            401
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .env_remove("TICKSTREAM_JWT_SECRET_FILE")
        .args(["token", "--sub", "cli"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--key"));
}

#[test]
fn jwt_key_flags_and_toml_keys_resolve() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: tickstream::config::ServeArgs,
    }
    let cli = Cli::try_parse_from([
        "x",
        "--jwt-key",
        "2026-q1=/keys/q1.pem",
        "--jwt-key",
        "/keys/plain.secret,q2=/keys/q2.pem",
        "--reload-poll",
        "0s",
    ])
    .unwrap();
    let s = cli.serve.resolve().unwrap();
    assert_eq!(
        s.jwt_keys,
        vec![
            spec("2026-q1=/keys/q1.pem"),
            spec("/keys/plain.secret"),
            spec("q2=/keys/q2.pem")
        ]
    );
    assert_eq!(s.jwt_keys[0].kid.as_deref(), Some("2026-q1"));
    assert_eq!(s.jwt_keys[1].kid, None);
    assert_eq!(s.reload_poll, Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "jwt_key = [\"a=/k/a.pem\"]\njwt_key_dir = \"/k\"\nreload_poll = \"2s\"\n",
    )
    .unwrap();
    let cli = Cli::try_parse_from(["x", "--config", path.to_str().unwrap()]).unwrap();
    let s = cli.serve.resolve().unwrap();
    assert_eq!(s.jwt_keys, vec![spec("a=/k/a.pem")]);
    assert_eq!(s.jwt_key_dir.as_deref(), Some(std::path::Path::new("/k")));
    assert_eq!(s.reload_poll, Duration::from_secs(2));
    assert_eq!(
        tickstream::config::Settings::default().reload_poll,
        Duration::from_secs(5)
    );
    for bad in ["=", "=/k/a.pem", "kid=", ""] {
        assert!(bad.parse::<auth::KeySpec>().is_err(), "{bad:?}");
    }
    assert_eq!(spec("/k/a=b.pem").kid, None, "an = in the file name");
}

#[tokio::test]
async fn a_publisher_token_limited_to_symbols_refuses_ticks_outside_them() {
    let (run, _dir) = start_with_auth().await;
    let t = token(Some(&["AAPL", "BTC-*"]), Some(&["publish"]), 60);
    let mut p = Client::connect_path(run.addr, &format!("/v1/publish?token={t}")).await;
    assert_eq!(p.next().await["role"], "publisher");
    let frame = json!([
        tick("AAPL", "e1", 1),
        tick("MSFT", "e1", 1),
        tick("BTC-USD", "e1", 1)
    ]);
    p.send(&frame.to_string()).await;
    let e = p.next().await;
    assert_eq!(
        (
            e["code"].as_str(),
            e["index"].as_u64(),
            e["symbol"].as_str()
        ),
        (Some("forbidden"), Some(1), Some("MSFT")),
        "{e}"
    );
    let ack = p.next().await;
    assert_eq!(
        (ack["accepted"].as_u64(), ack["refused"].as_u64()),
        (Some(2), Some(1)),
        "{ack}"
    );
    assert_eq!(run.node.hub.latest("AAPL").map(|e| e.tick.seq), Some(1));
    assert!(
        run.node.hub.latest("MSFT").is_none(),
        "nothing of MSFT reached the hub"
    );
    run.shutdown().await;
}
