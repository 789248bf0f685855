//! A TCP relay in front of a node for the tests of planned reconnects: it passes every
//! byte on both ways and, when told, puts the node's `reconnect` message between two of
//! the node's frames, as a node about to close the connection would.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The relay: its address, and the switch that announces the reconnect.
pub struct Relay {
    pub addr: SocketAddr,
    announce: Arc<AtomicBool>,
}

impl Relay {
    /// A relay to `node` on a free loopback port.
    pub async fn start(node: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let announce = Arc::new(AtomicBool::new(false));
        let flag = announce.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, node, flag.clone()));
            }
        });
        Relay { addr, announce }
    }

    /// The next frame from the node is preceded by
    /// `[{"type":"reconnect","reason":"lifetime","in_ms":N}]`.
    pub fn announce(&self) {
        self.announce.store(true, Ordering::SeqCst);
    }
}

async fn relay(client: TcpStream, node: SocketAddr, announce: Arc<AtomicBool>) {
    let Ok(upstream) = TcpStream::connect(node).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await;
    });
    // The HTTP answer to the upgrade, as it is.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if ur.read_exact(&mut b).await.is_err() {
            return;
        }
        head.push(b[0]);
    }
    if cw.write_all(&head).await.is_err() {
        return;
    }
    // Then frame by frame (a server's frames are not masked).
    loop {
        let mut h = [0u8; 2];
        if ur.read_exact(&mut h).await.is_err() {
            break;
        }
        let mut frame = h.to_vec();
        let len = match h[1] & 0x7f {
            126 => extended(&mut ur, 2, &mut frame).await,
            127 => extended(&mut ur, 8, &mut frame).await,
            n => Some(n as usize),
        };
        let Some(len) = len else {
            break;
        };
        let at = frame.len();
        frame.resize(at + len, 0);
        if ur.read_exact(&mut frame[at..]).await.is_err() {
            break;
        }
        // Only between whole messages: not inside a fragmented one.
        let whole = h[0] & 0x80 != 0 && h[0] & 0x0f != 0;
        if whole && announce.swap(false, Ordering::SeqCst) {
            let text = br#"[{"type":"reconnect","reason":"lifetime","in_ms":5000}]"#;
            let mut ann = vec![0x81, text.len() as u8];
            ann.extend_from_slice(text);
            if cw.write_all(&ann).await.is_err() {
                break;
            }
        }
        if cw.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = cw.shutdown().await;
}

/// Reads an extended payload length of `n` bytes (big-endian) onto `frame`.
async fn extended(
    r: &mut (impl AsyncReadExt + Unpin),
    n: usize,
    frame: &mut Vec<u8>,
) -> Option<usize> {
    let mut l = [0u8; 8];
    r.read_exact(&mut l[8 - n..]).await.ok()?;
    frame.extend_from_slice(&l[8 - n..]);
    Some(u64::from_be_bytes(l) as usize)
}
