//! The HTTP routes on the node's port: the WebSocket upgrade and the small JSON and text
//! endpoints beside it.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::node::Node;
use crate::tick::valid_symbol;

/// Response body type of every route.
pub type Body = Full<Bytes>;

/// Routes one request.
pub async fn route(
    node: Arc<Node>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here\n",
        ));
    }
    let resp = match req.uri().path() {
        "/v1/ws" => upgrade_ws(node, &mut req),
        "/v1/publish" => super::publish::upgrade(node, &mut req),
        "/healthz" => {
            if node.bus.healthy() {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "bus down\n")
            }
        }
        "/v1/symbols" => {
            let symbols = node.hub.symbols();
            let names: Vec<&str> = symbols.iter().map(|s| &**s).collect();
            json(
                StatusCode::OK,
                serde_json::to_vec(&names).unwrap_or_default(),
            )
        }
        "/v1/snapshot" => snapshot(&node, req.uri().query()),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

fn upgrade_ws(node: Arc<Node>, req: &mut Request<Incoming>) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(req) {
        return text(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket\n",
        );
    }
    if let Some(enc) = query_param(req.uri().query(), "encoding") {
        if enc != "json" {
            return text(StatusCode::BAD_REQUEST, "encoding must be json\n");
        }
    }
    let (resp, fut) = match fastwebsockets::upgrade::upgrade(req) {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("bad WebSocket handshake: {e}\n"),
            )
        }
    };
    let tasks = node.tasks.clone();
    tasks.spawn(async move {
        match fut.await {
            Ok(ws) => {
                node.connections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                super::ws::serve(node.clone(), ws).await;
                node.connections
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

fn snapshot(node: &Node, query: Option<&str>) -> Response<Body> {
    let wanted: Vec<String> = match query_param(query, "symbols") {
        Some(list) => list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        None => node.hub.symbols().iter().map(|s| s.to_string()).collect(),
    };
    let malformed: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|s| !valid_symbol(s))
        .collect();
    if !malformed.is_empty() {
        return error(StatusCode::BAD_REQUEST, "bad_symbol", &malformed);
    }
    let unknown: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|s| !node.hub.serves(s))
        .collect();
    if !unknown.is_empty() {
        return error(StatusCode::NOT_FOUND, "unknown_symbol", &unknown);
    }
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

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
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

pub(crate) fn text(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap_or_default()
}
