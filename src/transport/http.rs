//! The HTTP routes on the node's port: the WebSocket upgrade, the small JSON and text
//! endpoints beside it, and the dashboard's files.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};

use tracing::Instrument;

use super::door::{ClientAddr, Door, Hold};
use crate::auth::{Claims, ROLE_SUBSCRIBE};
use crate::metrics::Refused;
use crate::node::Node;
use crate::tick::{parse_symbols, BadSymbols};

/// Response body of the routes that answer in one piece.
pub type Body = Full<Bytes>;

/// Response body of [`route`]: one piece, or a stream (`/v1/sse`).
pub type RouteBody = BoxBody<Bytes, std::convert::Infallible>;

/// The paths of the long-lived streams, counted at the [`Door`].
pub const STREAM_PATHS: [&str; 3] = ["/v1/ws", "/v1/sse", "/v1/publish"];

/// Routes one request that came over a connection from `peer`. A stream request is let
/// in by the `door` first (429/503 before anything else), then authorized.
pub async fn route(
    node: Arc<Node>,
    door: Arc<Door>,
    peer: IpAddr,
    mut req: Request<Incoming>,
) -> Result<Response<RouteBody>, std::convert::Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(
            text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n").map(BodyExt::boxed),
        );
    }
    let client = door.client_addr(peer, req.headers());
    req.extensions_mut().insert(ClientAddr(client));
    if STREAM_PATHS.contains(&req.uri().path()) {
        match door.admit(client) {
            // An upgrade moves the hold into the connection's task; otherwise it is
            // dropped with the request.
            Ok(hold) => {
                req.extensions_mut().insert(hold);
            }
            Err(refusal) => {
                crate::metrics::global().refused(refusal.reason());
                tracing::debug!(%client, %peer, path = req.uri().path(), ?refusal, "refused at the door");
                return Ok(refusal.response().map(BodyExt::boxed));
            }
        }
    }
    if req.uri().path() == "/v1/sse" {
        let hold = req.extensions_mut().remove::<Hold>();
        return Ok(match authorize(&node, &req, ROLE_SUBSCRIBE) {
            // The stream's place is held as long as its body lives.
            Ok(claims) => super::sse::serve(node, &req, claims).map(|body| {
                body.map_frame(move |frame| {
                    let _held = &hold;
                    frame
                })
                .boxed()
            }),
            Err(refused) => refused.map(BodyExt::boxed),
        });
    }
    let resp = match req.uri().path() {
        "/v1/ws" => match authorize(&node, &req, ROLE_SUBSCRIBE) {
            Ok(claims) => upgrade_ws(node, &mut req, claims),
            Err(refused) => *refused,
        },
        "/v1/publish" => super::publish::upgrade(node, &mut req),
        "/healthz" => {
            if node.bus.healthy() {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "bus down\n")
            }
        }
        "/metrics" if !node.settings.metrics => text(StatusCode::NOT_FOUND, METRICS_OFF),
        "/metrics" => door
            .metrics_refusal(&req, || {
                authorize(&node, &req, super::door::ROLE_METRICS)
                    .err()
                    .map(|r| *r)
            })
            .unwrap_or_else(|| metrics(&node)),
        "/v1/symbols" => {
            let symbols = node.hub.symbols();
            let names: Vec<&str> = symbols.iter().map(|s| &**s).collect();
            json(
                StatusCode::OK,
                serde_json::to_vec(&names).unwrap_or_default(),
            )
        }
        "/v1/snapshot" => match authorize(&node, &req, ROLE_SUBSCRIBE) {
            Ok(claims) => snapshot(&node, req.uri().query(), claims.as_ref()),
            Err(refused) => *refused,
        },
        path => super::dashboard::serve(path, req.headers())
            .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n")),
    };
    Ok(resp.map(BodyExt::boxed))
}

/// Checks the request's token for `role` when the node has auth enabled: `Ok(None)`
/// without auth, `Ok(Some(claims))` with a good token, else the 401/403 response. The
/// token comes from `Authorization: Bearer` or, failing that, the `token` query
/// parameter; every authenticated route (`/v1/ws`, `/v1/publish`, `/v1/snapshot`)
/// calls this.
pub fn authorize<B>(
    node: &Node,
    req: &Request<B>,
    role: &str,
) -> Result<Option<Claims>, Box<Response<Body>>> {
    let Some(auth) = &node.auth else {
        return Ok(None);
    };
    let header = super::door::bearer(req.headers()).map(str::to_owned);
    let token = header.or_else(|| query_param(req.uri().query(), "token"));
    match auth.check(token.as_deref(), role) {
        Ok(claims) => Ok(Some(claims)),
        Err(refusal) => {
            crate::metrics::global()
                .auth_refused
                .fetch_add(1, Ordering::Relaxed);
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::UNAUTHORIZED);
            let mut resp = text(status, &format!("{}\n", refusal.message));
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer"),
                );
            }
            Err(Box::new(resp))
        }
    }
}

fn upgrade_ws(
    node: Arc<Node>,
    req: &mut Request<Incoming>,
    claims: Option<Claims>,
) -> Response<Body> {
    let encoding = match query_param(req.uri().query(), "encoding") {
        None => crate::protocol::Encoding::Json,
        Some(enc) => match enc.parse() {
            Ok(e) => e,
            Err(why) => return text(StatusCode::BAD_REQUEST, &format!("{why}\n")),
        },
    };
    // Boxed: the claims are held for the connection's life, in the few bytes of a
    // pointer.
    let claims = claims.map(Box::new);
    upgrade(node, req, move |node, io| {
        super::ws::serve(node, io, claims, encoding)
    })
}

/// An upgraded connection's stream, as handed to the code that serves it: the
/// WebSocket frames on it are read and written by [`frames`](super::frames).
pub type Upgraded = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

/// Answers a WebSocket upgrade request and, once the client has switched, runs `serve`
/// on the connection as a task the node waits for at shutdown.
pub fn upgrade<F, Fut>(node: Arc<Node>, req: &mut Request<Incoming>, serve: F) -> Response<Body>
where
    F: FnOnce(Arc<Node>, Upgraded) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if !fastwebsockets::upgrade::is_upgrade_request(req) {
        return text(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket\n",
        );
    }
    if !origin_allowed(&node.settings.allowed_origins, req) {
        crate::metrics::global().refused(Refused::Origin);
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let (resp, fut) = match fastwebsockets::upgrade::upgrade(&mut *req) {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("bad WebSocket handshake: {e}\n"),
            )
        }
    };
    // The stream's place at the door, held until the connection ends; its lines
    // in the log name the client's address.
    let hold = req.extensions_mut().remove::<Hold>();
    let span = match req.extensions().get::<ClientAddr>() {
        Some(ClientAddr(client)) => tracing::info_span!("conn", %client),
        None => tracing::info_span!("conn"),
    };
    let tasks = node.tasks.clone();
    tasks.spawn(
        async move {
            let _held = hold;
            match fut.await {
                Ok(ws) => serve(node, ws.into_inner()).await,
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        }
        .instrument(span),
    );
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// The answer of `/metrics` on a node started with `--metrics false`.
const METRICS_OFF: &str = "metrics are off on this node (serve --metrics false)\n";

/// `GET /metrics`: the Prometheus exposition, with what the node keeps read now.
fn metrics(node: &Node) -> Response<Body> {
    let hub = node.hub.stats();
    let scrape = crate::metrics::Scrape {
        hub_ticks: hub.ticks.load(Ordering::Relaxed),
        delivered: hub.deliveries.load(Ordering::Relaxed),
        conflated: hub.dropped_slow.load(Ordering::Relaxed),
        publisher_ticks: node.publish.accepted.load(Ordering::Relaxed),
        publisher_connections: node.publish.connections.load(Ordering::Relaxed),
        subscriptions: node
            .hub
            .symbols()
            .iter()
            .map(|s| node.hub.subscriber_count(s) as u64)
            .sum(),
        watched: node.interest().watched() as u64,
        bus_up: node.bus.healthy(),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .header(CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(crate::metrics::render(&scrape))))
        .unwrap_or_default()
}

/// Whether a browser page of the request's `Origin` may open a WebSocket: always
/// without an Origin (not a browser) or from the same origin (its host is the `Host`),
/// else when `allowed` is empty or lists it.
fn origin_allowed<B>(allowed: &[String], req: &Request<B>) -> bool {
    let Some(origin) = req.headers().get(hyper::header::ORIGIN) else {
        return true;
    };
    let origin = origin
        .to_str()
        .unwrap_or("")
        .trim_end_matches('/')
        .to_ascii_lowercase();
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok());
    let same = host.is_some_and(|h| {
        let h = h.to_ascii_lowercase();
        origin.strip_prefix("http://") == Some(&*h) || origin.strip_prefix("https://") == Some(&*h)
    });
    same || allowed.is_empty() || allowed.contains(&origin)
}

fn snapshot(node: &Node, query: Option<&str>, claims: Option<&Claims>) -> Response<Body> {
    let wanted: Vec<String> =
        match query_param(query, "symbols").map(|l| parse_symbols([l.as_str()])) {
            Some(Ok(list)) => list,
            Some(Err(BadSymbols(malformed))) => {
                let malformed: Vec<&str> = malformed.iter().map(String::as_str).collect();
                return error(StatusCode::BAD_REQUEST, "bad_symbol", &malformed);
            }
            None => node.hub.symbols().iter().map(|s| s.to_string()).collect(),
        };
    let unknown: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|s| !node.hub.serves(s))
        .collect();
    if !unknown.is_empty() {
        return error(StatusCode::NOT_FOUND, "unknown_symbol", &unknown);
    }
    if let Some(c) = claims {
        let forbidden: Vec<&str> = wanted
            .iter()
            .map(String::as_str)
            .filter(|s| !c.allows(s))
            .collect();
        if query.is_some_and(|q| q.contains("symbols=")) && !forbidden.is_empty() {
            return error(StatusCode::FORBIDDEN, "forbidden", &forbidden);
        }
    }
    let wanted: Vec<&String> = wanted
        .iter()
        .filter(|s| claims.is_none_or(|c| c.allows(s)))
        .collect();
    let mut body = Vec::with_capacity(64 + wanted.len() * 256);
    body.push(b'[');
    for entry in wanted.iter().filter_map(|s| node.hub.latest(s)) {
        if body.len() > 1 {
            body.push(b',');
        }
        entry
            .tick
            .write_json(crate::tick::Kind::Snapshot, &mut body);
    }
    body.push(b']');
    json(StatusCode::OK, body)
}

pub(super) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn error(status: StatusCode, code: &str, symbols: &[&str]) -> Response<Body> {
    let body = serde_json::json!({
        "type": "error",
        "code": code,
        "message": format!("{}: {}", code.replace('_', " "), symbols.join(",")),
        "symbols": symbols,
    });
    json(status, serde_json::to_vec(&body).unwrap_or_default())
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

pub(super) fn text(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap_or_default()
}
