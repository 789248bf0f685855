//! A TCP relay in front of a node for the tests of planned reconnects: it passes every
//! byte on both ways and, when told, puts the node's `reconnect` message between two of
//! the node's frames, as a node about to close the connection would; [`pass_frames`]
//! lets a test do what it wants with each frame from the node.
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
    pass_frames(client, node, move |frame, _at| {
        // Only between whole messages: not inside a fragmented one.
        let whole = frame[0] & 0x80 != 0 && frame[0] & 0x0f != 0;
        if whole && announce.swap(false, Ordering::SeqCst) {
            let text = br#"[{"type":"reconnect","reason":"lifetime","in_ms":5000}]"#;
            let mut ann = vec![0x81, text.len() as u8];
            ann.extend_from_slice(text);
            return Fate::After(ann);
        }
        Fate::Pass
    })
    .await
}

/// What to do with one frame from the node.
pub enum Fate {
    /// Pass it on (as the hook may have changed it).
    Pass,
    /// Pass these bytes on first, then the frame.
    After(Vec<u8>),
    /// Leave it out.
    Drop,
    /// Close both ways.
    Close,
}

/// Relays `client` to `node`: every byte from the client as it is, the node's answer to
/// the upgrade as it is, then each frame from the node as `each` says, given the frame
/// (header included) and where its payload starts.
pub async fn pass_frames(
    client: TcpStream,
    node: SocketAddr,
    mut each: impl FnMut(&mut Vec<u8>, usize) -> Fate,
) {
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
    while let Some((mut frame, at)) = read_frame(&mut ur).await {
        let before = match each(&mut frame, at) {
            Fate::Pass => None,
            Fate::After(bytes) => Some(bytes),
            Fate::Drop => continue,
            Fate::Close => return,
        };
        if let Some(b) = before {
            if cw.write_all(&b).await.is_err() {
                break;
            }
        }
        if cw.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = cw.shutdown().await;
}

/// Reads one server frame (unmasked): its bytes, header included, and where the
/// payload starts.
async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> Option<(Vec<u8>, usize)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await.ok()?;
    let mut frame = h.to_vec();
    let len = match h[1] & 0x7f {
        126 => extended(r, 2, &mut frame).await?,
        127 => extended(r, 8, &mut frame).await?,
        n => n as usize,
    };
    let at = frame.len();
    frame.resize(at + len, 0);
    r.read_exact(&mut frame[at..]).await.ok()?;
    Some((frame, at))
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
