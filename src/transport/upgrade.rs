//! The WebSocket upgrade both socket endpoints (`/v1/ws`, `/v1/publish`) go through:
//! the handshake, the `Origin` check, and the task that serves the connection.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tracing::Instrument;

use super::door::{ClientAddr, Hold};
use super::reply::{text, Body};
use crate::metrics::Refused;
use crate::node::Node;

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
    // The stream's place at the door, held until the connection ends. With debug
    // logging on, its lines in the log name the client's address; at the default
    // level the span is not made at all (an enabled one costs ~300 bytes of every
    // open connection's memory), and not carried either.
    let hold = req.extensions_mut().remove::<Hold>();
    let span = match req.extensions().get::<ClientAddr>() {
        Some(ClientAddr(client)) => tracing::debug_span!("conn", %client),
        None => tracing::debug_span!("conn"),
    };
    let tasks = node.tasks.clone();
    let conn = async move {
        let _held = hold;
        // The handshake's `WebSocket` is gone before the connection is served: a value
        // held across the await would take room in every connection's task.
        let io = match fut.await {
            Ok(ws) => ws.into_inner(),
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        serve(node, io).await
    };
    // Without debug logging the span is disabled: the task then carries no span at all.
    if span.is_disabled() {
        tasks.spawn(conn);
    } else {
        tasks.spawn(conn.instrument(span));
    }
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
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
