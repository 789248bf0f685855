//! Opening a WebSocket to a tickstream node (`ws://`; `wss://` once TLS is built in).

use std::future::Future;

use bytes::Bytes;
use fastwebsockets::WebSocket;
use http_body_util::Empty;
use hyper::header::{AUTHORIZATION, CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An open client WebSocket.
pub type ClientWs = WebSocket<TokioIo<Upgraded>>;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not a usable `ws://` URL.
    #[error("bad url {url:?}: {why}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Io {
        /// host:port.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The server answered the upgrade with an HTTP status instead of switching.
    #[error("server refused the WebSocket upgrade with HTTP {status}")]
    Refused {
        /// The HTTP status, e.g. 401 or 403.
        status: u16,
    },
    /// The handshake failed otherwise.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
}

impl ConnectError {
    /// Whether trying again later may succeed (a refusal for auth will not).
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::BadUrl { .. } => false,
            ConnectError::Refused { status } => !matches!(status, 400 | 401 | 403 | 404),
            _ => true,
        }
    }
}

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// Opens a WebSocket to `url` (e.g. `ws://127.0.0.1:8080/v1/ws`), sending `token` as a
/// bearer token when given.
pub async fn connect(url: &str, token: Option<&str>) -> Result<ClientWs, ConnectError> {
    let bad = |why: &str| ConnectError::BadUrl {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    match parsed.scheme() {
        "ws" => {}
        "wss" => return Err(bad("wss:// is not supported by this build; use ws://")),
        _ => return Err(bad("the scheme must be ws://")),
    }
    let host = parsed.host_str().ok_or_else(|| bad("no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|source| ConnectError::Io {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let mut path = parsed.path().to_owned();
    if let Some(q) = parsed.query() {
        path.push('?');
        path.push_str(q);
    }
    let mut req = Request::builder()
        .method("GET")
        .uri(path)
        .header(HOST, &addr)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13");
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| bad(&e.to_string()))?;
    match fastwebsockets::handshake::client(&SpawnExecutor, req, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(fastwebsockets::WebSocketError::InvalidStatusCode(status)) => {
            Err(ConnectError::Refused { status })
        }
        Err(e) => Err(ConnectError::Handshake(e.to_string())),
    }
}
