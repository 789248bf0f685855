//! A raw WebSocket client for the tests that need frames written or read by hand: the
//! handshake written by hand, then bytes.
#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a read waits before the client gives up.
const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CONT: u8 = 0x0;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// One frame as a client would write it: `first` is the first header byte's flags and
/// opcode, the payload masked unless `masked` is false.
pub fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let key = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    let bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n < 65536 => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A final frame of `op`, masked.
pub fn whole(op: u8, payload: &[u8]) -> Vec<u8> {
    frame(0x80 | op, payload, true)
}

pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A raw WebSocket client: the handshake written by hand, then bytes.
pub struct Raw {
    pub tcp: TcpStream,
    pub buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr, path: &str) -> Raw {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Raw::upgrade(tcp, addr, path, "").await
    }

    /// Upgrades `tcp` with `extra` header lines (each ending in `\r\n`).
    pub async fn upgrade(tcp: TcpStream, addr: SocketAddr, path: &str, extra: &str) -> Raw {
        Raw::upgrade_then(tcp, addr, path, extra, &[]).await
    }

    /// Upgrades `tcp` as [`Raw::upgrade`], writing `early` in the same write as the
    /// request, before its answer.
    pub async fn upgrade_then(
        mut tcp: TcpStream,
        addr: SocketAddr,
        path: &str,
        extra: &str,
        early: &[u8],
    ) -> Raw {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(early);
        tcp.write_all(&bytes).await.unwrap();
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await, "connection ended during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        raw.buf.drain(..end);
        raw
    }

    async fn fill(&mut self) -> bool {
        self.fill_at_most(4096).await
    }

    /// Reads at most `n` bytes more; false at EOF, reset or timeout.
    pub async fn fill_at_most(&mut self, n: usize) -> bool {
        let mut chunk = [0u8; 4096];
        let chunk = &mut chunk[..n.min(4096)];
        match tokio::time::timeout(WAIT, self.tcp.read(chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        // A write may fail once the server has closed; what it answered is still read.
        let _ = self.tcp.write_all(bytes).await;
    }

    /// The next server frame (opcode, payload), or None at EOF, reset or timeout.
    pub async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some(f) = self.take_frame() {
                return Some(f);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// A whole server frame (opcode, payload) off what was read, if one is there.
    pub fn take_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        if self.buf.len() < 2 {
            return None;
        }
        assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
        let (len, at) = match self.buf[1] & 0x7f {
            126 if self.buf.len() >= 4 => {
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 if self.buf.len() >= 10 => (
                u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if self.buf.len() < at + len {
            return None;
        }
        let op = self.buf[0] & 0x0f;
        let payload = self.buf[at..at + len].to_vec();
        self.buf.drain(..at + len);
        Some((op, payload))
    }

    /// The code of the server's Close, skipping what comes before it; None when the
    /// connection ended without one (what a client sees as 1006).
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some((op, payload)) = self.next_frame().await {
            if op == CLOSE {
                assert!(payload.len() >= 2, "the server's Close carries a code");
                return Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }
}
