//! The router of the node's port: every request is matched to its route here, the long-
//! lived streams let in by the [`door`](super::door) first. The WebSocket endpoints and
//! SSE are served by their own modules; the small JSON and text endpoints beside them
//! (`/healthz`, `/metrics`, `/v1/symbols`, `/v1/snapshot`, `/v1/latency`) are answered
//! here.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use super::door::{ClientAddr, Door, Hold};
use super::reply::{json, text, Body, RouteBody};
use super::request::{authorize, query_param};
use crate::auth::{Claims, ROLE_SUBSCRIBE};
use crate::node::Node;
use crate::tick::{parse_symbols, BadSymbols};

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
    if let Err(refused) = let_in(&door, peer, &mut req) {
        return Ok((*refused).map(BodyExt::boxed));
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
            Ok(claims) => super::ws::upgrade(node, &mut req, claims),
            Err(refused) => *refused,
        },
        "/v1/publish" => super::publish::upgrade(node, &mut req),
        "/healthz" => {
            if node.draining.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if node.bus.healthy() {
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
        "/v1/latency" => match authorize(&node, &req, ROLE_SUBSCRIBE) {
            Ok(_) => latency(),
            Err(refused) => *refused,
        },
        path => super::dashboard::serve(path, req.headers())
            .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n")),
    };
    Ok(resp.map(BodyExt::boxed))
}

/// Marks `req` with the address of the client it comes from and, for a stream, lets
/// it in at the `door`: its place is held in the request's extensions (an upgrade
/// moves it into the connection's task; otherwise it is dropped with the request).
/// `Err` is the 429/503 refusal to send.
fn let_in(
    door: &Door,
    peer: IpAddr,
    req: &mut Request<Incoming>,
) -> Result<(), Box<Response<Body>>> {
    let client = door.client_addr(peer, req.headers());
    req.extensions_mut().insert(ClientAddr(client));
    if !STREAM_PATHS.contains(&req.uri().path()) {
        return Ok(());
    }
    match door.admit(client) {
        Ok(hold) => {
            req.extensions_mut().insert(hold);
            Ok(())
        }
        Err(refusal) => {
            crate::metrics::global().refused(refusal.reason());
            tracing::debug!(%client, %peer, path = req.uri().path(), ?refusal, "refused at the door");
            Err(Box::new(refusal.response()))
        }
    }
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
        stale_symbols: node.hub.stale_count() as u64,
        outbound_bytes: node.budget.held(),
        outbound_bound: node.budget.bound(),
        outbound_conflations: node.budget.conflations(),
        outbound_closes: node.budget.closes(),
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

/// `GET /v1/latency`: what clients reported (`report`) over the last minute.
fn latency() -> Response<Body> {
    let m = crate::metrics::global();
    let s = m.client_window.summary();
    // Microseconds are as fine as a report is read.
    let ms = |v: Option<f64>| v.map(|x| (x * 1e3).round() / 1e3);
    let body = serde_json::json!({
        "window_ms": crate::metrics::REPORT_WINDOW_MS,
        "reports": s.reports,
        "messages": s.messages,
        "p50_ms": ms(s.p50_ms),
        "p99_ms": ms(s.p99_ms),
        "max_ms": ms(s.max_ms),
        "reports_total": m.client_reports.load(Ordering::Relaxed),
    });
    json(StatusCode::OK, body.to_string().into_bytes())
}

fn snapshot(node: &Node, query: Option<&str>, claims: Option<&Claims>) -> Response<Body> {
    let named = query_param(query, "symbols");
    let asked = named.is_some();
    let wanted: Vec<String> = match named.map(|l| parse_symbols([l.as_str()])) {
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
        // Named and not allowed: refused; not named, the allowed ones are answered.
        if asked && !forbidden.is_empty() {
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

fn error(status: StatusCode, code: &str, symbols: &[&str]) -> Response<Body> {
    let body = serde_json::json!({
        "type": "error",
        "code": code,
        "message": format!("{}: {}", code.replace('_', " "), symbols.join(",")),
        "symbols": symbols,
    });
    json(status, serde_json::to_vec(&body).unwrap_or_default())
}
