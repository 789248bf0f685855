//! An accepted TCP connection as the node holds it ([`Conn`]), with what a transport
//! needs beside reading and writing: [`Reset`], a way to end it abortively.
//!
//! A client that stopped reading (its host vanished, its process is stopped) leaves
//! what the node wrote in the kernel's send buffer. Closed the usual way, the socket
//! would keep that buffer, retrying, long after the node let go of the connection; reset
//! (`SO_LINGER` 0), the kernel frees it at once. The transport that gives up on such a
//! client asks for the reset; the socket is reset when it is dropped, and the HTTP
//! connection holding it (an SSE response) is dropped at once.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Asks for a connection to be reset rather than closed. Cloned into each request of
/// the connection; the default one (no connection, as in tests over pipes) does
/// nothing.
#[derive(Clone, Default)]
pub struct Reset(Option<Arc<Asked>>);

#[derive(Default)]
struct Asked {
    yes: AtomicBool,
    /// Wakes the task serving the HTTP connection.
    wake: Notify,
}

impl Reset {
    /// A handle for a new connection.
    pub fn new() -> Reset {
        Reset(Some(Arc::new(Asked::default())))
    }

    /// Asks for the reset: the connection is reset when dropped, and an HTTP connection
    /// holding it is dropped now.
    pub fn ask(&self) {
        if let Some(a) = &self.0 {
            a.yes.store(true, Ordering::Release);
            a.wake.notify_waiters();
        }
    }

    /// Whether the reset was asked for.
    pub fn asked(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|a| a.yes.load(Ordering::Acquire))
    }

    /// Resolves once the reset is asked for (never for the default handle).
    pub async fn wait(&self) {
        let Some(a) = &self.0 else {
            return std::future::pending().await;
        };
        loop {
            let woken = a.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if a.yes.load(Ordering::Acquire) {
                return;
            }
            woken.await;
        }
    }
}

/// An accepted connection: a TCP stream reset when dropped if its [`Reset`] was asked.
pub struct Conn {
    tcp: TcpStream,
    reset: Reset,
}

impl Conn {
    /// Wraps `tcp`; `reset` is the handle its requests carry.
    pub fn new(tcp: TcpStream, reset: Reset) -> Conn {
        Conn { tcp, reset }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.reset.asked() {
            // Closing with a zero linger sends RST and frees the send buffer now.
            let _ = socket2::SockRef::from(&self.tcp).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}
