//! The WebSocket upgrade both socket endpoints (`/v1/ws`, `/v1/publish`) go through:
//! the handshake, the `Origin` check, and the task that serves the connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::future::Either;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::Instrument;

use super::door::{ClientAddr, Hold};
use super::reply::{text, Body};
use super::socket::Conn;
use crate::metrics::Refused;
use crate::node::Node;

/// An upgraded connection's stream, as handed to the code that serves it: the
/// WebSocket frames on it are read and written by [`frames`](super::frames).
///
/// A plain TCP connection is taken back from hyper whole ([`Stream::Plain`]): served
/// in place, it costs no allocation of its own and no dynamic call per read or write
/// (hyper keeps an upgraded stream boxed behind a trait object). A TLS one stays
/// hyper's.
pub enum Stream {
    /// A plain connection.
    Plain(Conn),
    /// A plain connection whose client sent bytes past its handshake before the
    /// answer, which hyper had read already: they are read first.
    Rewound(Box<(Bytes, Conn)>),
    /// Any other stream (TLS), as hyper hands it over.
    Hyper(TokioIo<hyper::upgrade::Upgraded>),
}

impl Stream {
    fn new(upgraded: hyper::upgrade::Upgraded) -> Stream {
        match upgraded.downcast::<TokioIo<Conn>>() {
            Ok(parts) if parts.read_buf.is_empty() => Stream::Plain(parts.io.into_inner()),
            Ok(parts) => Stream::Rewound(Box::new((parts.read_buf, parts.io.into_inner()))),
            Err(upgraded) => Stream::Hyper(TokioIo::new(upgraded)),
        }
    }

    /// The stream to write to.
    fn writer(&mut self) -> Pin<&mut (dyn AsyncWrite + Unpin + Send)> {
        match self {
            Stream::Plain(c) => Pin::new(c),
            Stream::Rewound(r) => Pin::new(&mut r.1),
            Stream::Hyper(h) => Pin::new(h),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(c) => Pin::new(c).poll_read(cx, buf),
            Stream::Rewound(r) => {
                let (pre, conn) = &mut **r;
                if pre.is_empty() {
                    return Pin::new(conn).poll_read(cx, buf);
                }
                let n = pre.len().min(buf.remaining());
                buf.put_slice(&pre[..n]);
                pre.advance(n);
                Poll::Ready(Ok(()))
            }
            Stream::Hyper(h) => Pin::new(h).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(c) => Pin::new(c).poll_write(cx, buf),
            other => other.writer().poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().writer().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().writer().poll_shutdown(cx)
    }
}

/// Answers a WebSocket upgrade request and, once the client has switched, runs `serve`
/// on the connection as a task the node waits for at shutdown.
pub fn upgrade<F, Fut>(node: Arc<Node>, req: &mut Request<Incoming>, serve: F) -> Response<Body>
where
    F: FnOnce(Arc<Node>, Stream) -> Fut + Send + 'static,
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
    // A combinator, not an `async` block: the upgrade's state and the serving future
    // then share the task's memory instead of lying side by side in it.
    let conn = fut.then(move |upgraded| match upgraded {
        // The door's place is dropped with the serving future.
        Ok(ws) => {
            let io = Stream::new(ws.into_inner().into_inner());
            Either::Left(serve(node, io).map(move |()| drop(hold)))
        }
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            Either::Right(std::future::ready(()))
        }
    });
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
