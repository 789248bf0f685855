//! The answers the routes build: their body types, and plain-text and JSON responses.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// Response body of the routes that answer in one piece.
pub type Body = Full<Bytes>;

/// Response body of the router: one piece, or a stream (`/v1/sse`).
pub type RouteBody = BoxBody<Bytes, std::convert::Infallible>;

/// A `text/plain` answer of `status` holding `body`.
pub fn text(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap_or_default()
}

/// An `application/json` answer of `status` holding `body`, never cached.
pub fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}
