//! Opening a WebSocket to a tickstream node, over `ws://` or `wss://` (TLS with rustls:
//! the server's certificate is checked against [`ClientTls`], for the URL's host name).

use std::future::Future;

use bytes::Bytes;
use fastwebsockets::WebSocket;
use http_body_util::Empty;
use hyper::header::{AUTHORIZATION, CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;

pub use crate::tls::ClientTls;

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
    /// The TLS handshake failed: the server's certificate was refused (unknown issuer,
    /// wrong name, expired), or the server does not speak TLS.
    // `error`, not `source`: the message already holds it, and an error chain would
    // print it twice.
    #[error("TLS handshake with {addr} failed: {error}{}", tls_hint(error))]
    Tls {
        /// host:port.
        addr: String,
        /// The error; for a refused certificate it wraps the rustls error.
        error: std::io::Error,
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
            ConnectError::Tls { error, .. } => !crate::tls::is_certificate_error(error),
            _ => true,
        }
    }
}

fn tls_hint(e: &std::io::Error) -> &'static str {
    if crate::tls::is_certificate_error(e) {
        " (the server's certificate is not trusted for this host name; to trust a private CA, pass its certificate with --ca-file)"
    } else {
        ""
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

/// Opens a WebSocket to `url` (e.g. `ws://127.0.0.1:8080/v1/ws` or
/// `wss://example.com/v1/ws`), sending `token` as a bearer token when given. A `wss://`
/// server is verified against the built-in roots ([`ClientTls::platform`]).
pub async fn connect(url: &str, token: Option<&str>) -> Result<ClientWs, ConnectError> {
    connect_with(url, token, None).await
}

/// Like [`connect`], verifying a `wss://` server with `tls` (e.g. one that also trusts a
/// private CA) instead of the built-in roots alone when given.
pub async fn connect_with(
    url: &str,
    token: Option<&str>,
    tls: Option<&ClientTls>,
) -> Result<ClientWs, ConnectError> {
    connect_with_headers(url, token, tls, &[]).await
}

/// Like [`connect_with`], sending `headers` with the upgrade besides its own (e.g. a
/// load balancer's affinity cookie). A header name or value that HTTP does not allow is
/// an error before anything is sent.
pub async fn connect_with_headers(
    url: &str,
    token: Option<&str>,
    tls: Option<&ClientTls>,
    headers: &[(String, String)],
) -> Result<ClientWs, ConnectError> {
    let bad = |why: &str| ConnectError::BadUrl {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    let secure = match parsed.scheme() {
        "ws" => false,
        "wss" => true,
        _ => return Err(bad("the scheme must be ws:// or wss://")),
    };
    let (name, server_name) = match parsed.host() {
        Some(url::Host::Domain(d)) => (
            d.to_owned(),
            ServerName::try_from(d.to_owned()).map_err(|e| bad(&e.to_string()))?,
        ),
        Some(url::Host::Ipv4(ip)) => (ip.to_string(), ServerName::IpAddress(ip.into())),
        Some(url::Host::Ipv6(ip)) => (format!("[{ip}]"), ServerName::IpAddress(ip.into())),
        None => return Err(bad("no host")),
    };
    let port = parsed
        .port_or_known_default()
        .unwrap_or(if secure { 443 } else { 80 });
    let addr = format!("{name}:{port}");
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
    for (name, value) in headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| bad(&e.to_string()))?;
    if !secure {
        return handshake(req, tcp).await;
    }
    let tls = tls.unwrap_or_else(|| ClientTls::platform());
    let stream = tls
        .connector()
        .connect(server_name, tcp)
        .await
        .map_err(|error| ConnectError::Tls { addr, error })?;
    handshake(req, stream).await
}

async fn handshake<S>(req: Request<Empty<Bytes>>, stream: S) -> Result<ClientWs, ConnectError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    match fastwebsockets::handshake::client(&SpawnExecutor, req, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(fastwebsockets::WebSocketError::InvalidStatusCode(status)) => {
            Err(ConnectError::Refused { status })
        }
        Err(e) => Err(ConnectError::Handshake(e.to_string())),
    }
}
