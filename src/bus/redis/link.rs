//! A subscription link: one connection to one Redis server that carries nothing but
//! subscriptions, in RESP2's subscribed mode. Commands (`GET`, `XRANGE`, the health
//! check of the data) go over other connections, so a push is never read as the reply
//! of a command.
//!
//! Confirmations are matched to what was asked by channel name, not by position: an
//! `sunsubscribe` that nobody asked for (Redis Cluster sends one when the slot of a
//! shard channel moves, in a migration or a failover) is told apart from the
//! confirmation of an `SUNSUBSCRIBE` and reported as a lost channel. An error reply
//! (`MOVED`, `CLUSTERDOWN`…) answers the oldest command still waiting, as Redis answers
//! in order.
//!
//! The link's reader hands each message to a [`Handler`] as it is parsed, and calls
//! [`Handler::flush`] once everything read so far is handed over: the hub's fan-out runs
//! there, on the reader's task. Nothing is buffered between the socket and the hub but
//! the frame being read, so a hub that falls behind stops the reading, and Redis holds
//! what follows (up to its `client-output-buffer-limit` for Pub/Sub clients, past which
//! it drops the link; the node then reconnects and announces what was lost). A message
//! larger than the link's limit is not read into memory: it is stepped over and
//! reported with [`Handler::oversize`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::resp::{self, Frame, Item, Parsed};

type Reader = Pin<Box<dyn AsyncRead + Send>>;
type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// How a link connects and what it accepts.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// `redis://[user:password@]host:port` or `rediss://…` (TLS).
    pub url: String,
    /// With `rediss://`: the CAs trusted (only these), else the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// Connect and reply timeout.
    pub timeout: Duration,
    /// Largest message payload read; a larger one is stepped over.
    pub max_payload: usize,
}

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The server answered the command with an error (`MOVED 3999 host:port`, …).
    #[error("{0}")]
    Refused(String),
    /// The connection is gone, timed out, or spoke something else than RESP.
    #[error("{0}")]
    Broken(String),
}

impl LinkError {
    fn broken(what: impl std::fmt::Display) -> LinkError {
        LinkError::Broken(what.to_string())
    }
}

/// What a link's reader hands over.
pub trait Handler {
    /// A message published on `channel` (a pattern subscription's too).
    fn message(&mut self, channel: &[u8], payload: &[u8]);
    /// A message on `channel` larger than the link's limit, dropped unread.
    fn oversize(&mut self, channel: &[u8]);
    /// The server unsubscribed `channel` without being asked.
    fn lost(&mut self, channel: &[u8]);
    /// Everything read so far has been handed over.
    fn flush(&mut self);
}

/// Which command a reply belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Subscribe,
    Unsubscribe,
    Ping,
}

/// A channel (or a `PING`) of a command sent and not answered yet.
struct Waiting {
    /// Channels of one command share it: an error reply answers all of them.
    command: u64,
    kind: Kind,
    channel: Vec<u8>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

#[derive(Default)]
struct Replies {
    waiting: VecDeque<Waiting>,
}

impl Replies {
    /// The confirmation of `kind` for `channel`: answers the first command waiting for
    /// it. Returns false when nobody asked (an unsolicited unsubscribe).
    fn confirm(&mut self, kind: Kind, channel: &[u8]) -> bool {
        let Some(i) = self
            .waiting
            .iter()
            .position(|w| w.kind == kind && w.channel == channel)
        else {
            return false;
        };
        let w = self.waiting.remove(i).expect("found above");
        if let Some(done) = w.done {
            let _ = done.send(Ok(()));
        }
        true
    }

    /// An error reply: answers every channel of the oldest command waiting.
    fn refuse(&mut self, error: &str) {
        let Some(command) = self.waiting.front().map(|w| w.command) else {
            return;
        };
        while self.waiting.front().is_some_and(|w| w.command == command) {
            let w = self.waiting.pop_front().expect("checked");
            if let Some(done) = w.done {
                let _ = done.send(Err(error.to_owned()));
            }
        }
    }
}

/// The writing side of a link: sends (un)subscriptions and `PING`s, and waits for their
/// replies, which its [`LinkReader`] reads. Dropping every clone and the reader closes
/// the connection.
pub struct Link {
    addr: String,
    replies: Arc<Mutex<Replies>>,
    write: tokio::sync::Mutex<Writer>,
    next_command: AtomicU64,
    timeout: Duration,
}

/// The reading side of a link.
pub struct LinkReader {
    read: Reader,
    buf: Vec<u8>,
    /// Bytes of an oversize payload still to drop.
    skip: usize,
    replies: Arc<Mutex<Replies>>,
    max_payload: usize,
}

/// Connects, authenticates as the URL says and names the connection; the link is then
/// ready for subscriptions.
pub async fn connect(cfg: &LinkConfig) -> Result<(Arc<Link>, LinkReader), LinkError> {
    let info = redis::IntoConnectionInfo::into_connection_info(cfg.url.as_str())
        .map_err(|e| LinkError::broken(format!("bad Redis URL: {e}")))?;
    let (host, port, tls) = match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p, false),
        redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port, true),
        _ => return Err(LinkError::broken("only TCP Redis URLs are supported")),
    };
    let addr = format!("{host}:{port}");
    let tcp = tokio::time::timeout(cfg.timeout, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| LinkError::broken(format!("connecting to {addr} timed out")))?
        .map_err(|e| LinkError::broken(format!("cannot connect to {addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let (read, write): (Reader, Writer) = if tls {
        let trust =
            crate::tls::ClientTls::exclusive(cfg.ca_file.as_deref()).map_err(LinkError::broken)?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| LinkError::broken(format!("bad server name {host}: {e}")))?;
        let stream = tokio::time::timeout(cfg.timeout, trust.connector().connect(name, tcp))
            .await
            .map_err(|_| LinkError::broken(format!("TLS with {addr} timed out")))?
            .map_err(|e| LinkError::broken(format!("TLS with {addr}: {e}")))?;
        let (r, w) = tokio::io::split(stream);
        (Box::pin(r), Box::pin(w))
    } else {
        let (r, w) = tcp.into_split();
        (Box::pin(r), Box::pin(w))
    };
    let replies = Arc::new(Mutex::new(Replies::default()));
    let mut reader = LinkReader {
        read,
        buf: Vec::new(),
        skip: 0,
        replies: replies.clone(),
        max_payload: cfg.max_payload,
    };
    let link = Arc::new(Link {
        addr,
        replies,
        write: tokio::sync::Mutex::new(write),
        next_command: AtomicU64::new(1),
        timeout: cfg.timeout,
    });
    let mut hello = Vec::new();
    let redis = info.redis_settings();
    if let Some(password) = redis.password() {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = redis.username() {
            auth.arg(user);
        }
        auth.arg(password);
        hello.push(auth);
    }
    hello.push(
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("tickstream-subscriber")
            .clone(),
    );
    tokio::time::timeout(cfg.timeout, link.handshake(&mut reader, hello))
        .await
        .map_err(|_| LinkError::broken(format!("{} did not answer in time", link.addr)))??;
    Ok((link, reader))
}

impl Link {
    /// `host:port` of the server.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends the commands of the handshake and reads their replies (before the reader
    /// runs): the first error stops it.
    async fn handshake(
        &self,
        reader: &mut LinkReader,
        commands: Vec<redis::Cmd>,
    ) -> Result<(), LinkError> {
        let mut bytes = Vec::new();
        for c in &commands {
            c.write_packed_command(&mut bytes);
        }
        self.write(&bytes).await?;
        for _ in &commands {
            if let Some(e) = reader.plain_reply().await? {
                let e = if e.contains("WRONGPASS") || e.contains("NOAUTH") || e.contains("NOPERM") {
                    format!("{} refused the credentials: {e}", self.addr)
                } else {
                    e
                };
                return Err(LinkError::Refused(e));
            }
        }
        Ok(())
    }

    async fn write(&self, bytes: &[u8]) -> Result<(), LinkError> {
        let mut w = self.write.lock().await;
        self.write_locked(&mut w, bytes).await
    }

    /// Writes `bytes` with the write lock held by the caller, so that the commands
    /// waiting for replies are in the order their bytes went out.
    async fn write_locked(&self, w: &mut Writer, bytes: &[u8]) -> Result<(), LinkError> {
        match tokio::time::timeout(self.timeout, async {
            w.write_all(bytes).await?;
            w.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LinkError::broken(format!("writing to {}: {e}", self.addr))),
            Err(_) => Err(LinkError::broken(format!(
                "writing to {} timed out",
                self.addr
            ))),
        }
    }

    /// Sends one command per group (`SUBSCRIBE`/`SSUBSCRIBE`/`UNSUBSCRIBE`/
    /// `SUNSUBSCRIBE` `command`, the group's channels as arguments; in a cluster a
    /// group must be one slot) in one write, and waits for every confirmation. Returns
    /// one result per group; `Err` only when the link broke or the replies did not come
    /// in time.
    pub async fn send(
        &self,
        command: &str,
        groups: &[Vec<String>],
    ) -> Result<Vec<Result<(), String>>, LinkError> {
        let kind = if command.to_ascii_uppercase().contains("UNSUB") {
            Kind::Unsubscribe
        } else {
            Kind::Subscribe
        };
        let mut bytes = Vec::new();
        let mut answers = Vec::with_capacity(groups.len());
        // Waiting entries are made under the write lock, in the order of the bytes.
        let mut w = self.write.lock().await;
        {
            let mut replies = self.replies.lock();
            for group in groups.iter().filter(|g| !g.is_empty()) {
                let id = self.next_command.fetch_add(1, Ordering::Relaxed);
                let mut cmd = redis::cmd(command);
                let mut rxs = Vec::with_capacity(group.len());
                for channel in group {
                    cmd.arg(channel);
                    let (tx, rx) = oneshot::channel();
                    replies.waiting.push_back(Waiting {
                        command: id,
                        kind,
                        channel: channel.as_bytes().to_vec(),
                        done: Some(tx),
                    });
                    rxs.push(rx);
                }
                cmd.write_packed_command(&mut bytes);
                answers.push(rxs);
            }
        }
        if bytes.is_empty() {
            return Ok(vec![Ok(()); groups.len()]);
        }
        self.write_locked(&mut w, &bytes).await?;
        drop(w);
        let waited = tokio::time::timeout(self.timeout, async {
            let mut out = Vec::with_capacity(answers.len());
            for rxs in answers {
                let mut result = Ok(());
                for rx in rxs {
                    match rx.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => result = Err(e),
                        Err(_) => return Err(LinkError::broken("the link closed")),
                    }
                }
                out.push(result);
            }
            Ok(out)
        })
        .await
        .map_err(|_| LinkError::broken(format!("{} did not confirm in time", self.addr)))??;
        // Empty groups were skipped: put their (trivial) results back in place.
        let mut filled = waited.into_iter();
        Ok(groups
            .iter()
            .map(|g| {
                if g.is_empty() {
                    Ok(())
                } else {
                    filled.next().unwrap_or(Ok(()))
                }
            })
            .collect())
    }

    /// A `PING` through the link, answered by its reader: the health check of a
    /// subscription connection.
    pub async fn ping(&self) -> Result<(), LinkError> {
        let (tx, rx) = oneshot::channel();
        let mut w = self.write.lock().await;
        self.replies.lock().waiting.push_back(Waiting {
            command: self.next_command.fetch_add(1, Ordering::Relaxed),
            kind: Kind::Ping,
            channel: Vec::new(),
            done: Some(tx),
        });
        self.write_locked(&mut w, &redis::cmd("PING").get_packed_command())
            .await?;
        drop(w);
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(LinkError::Refused(e)),
            Ok(Err(_)) => Err(LinkError::broken("the link closed")),
            Err(_) => Err(LinkError::broken(format!(
                "{} did not answer PING",
                self.addr
            ))),
        }
    }
}

impl LinkReader {
    /// Reads until the connection ends, handing what arrives to `handler`. Returns why it
    /// ended; every command still waiting then fails.
    pub async fn run(mut self, handler: &mut impl Handler) -> LinkError {
        let why = loop {
            match self.fill().await {
                Ok(()) => {}
                Err(e) => break e,
            }
            if let Err(e) = self.dispatch(handler) {
                break e;
            }
            handler.flush();
        };
        // Whoever waits learns the link is gone.
        self.replies.lock().waiting.clear();
        why
    }

    /// Reads what the socket has, dropping what an oversize payload still owes.
    async fn fill(&mut self) -> Result<(), LinkError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let n = self
            .read
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| LinkError::broken(format!("reading: {e}")))?;
        if n == 0 {
            return Err(LinkError::broken("the server closed the connection"));
        }
        let dropped = self.skip.min(self.buf.len());
        if dropped > 0 {
            self.buf.drain(..dropped);
            self.skip -= dropped;
        }
        Ok(())
    }

    /// Hands every whole frame in the buffer to `handler`.
    fn dispatch(&mut self, handler: &mut impl Handler) -> Result<(), LinkError> {
        let mut at = 0;
        while self.skip == 0 && at < self.buf.len() {
            match resp::parse(&self.buf[at..], self.max_payload).map_err(LinkError::broken)? {
                Parsed::Incomplete => break,
                Parsed::Frame(frame, n) => {
                    self.frame(&frame, at, handler)?;
                    at += n;
                }
                Parsed::Oversize {
                    items,
                    consumed,
                    skip,
                } => {
                    if let Some(channel) = message_channel(&self.buf[at..], &items) {
                        handler.oversize(channel);
                    }
                    at += consumed;
                    let dropped = skip.min(self.buf.len() - at);
                    at += dropped;
                    self.skip = skip - dropped;
                }
            }
        }
        self.buf.drain(..at);
        if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// One frame: a message, a confirmation, an unsolicited unsubscribe, a `pong` or an
    /// error reply.
    fn frame(&self, frame: &Frame, at: usize, handler: &mut impl Handler) -> Result<(), LinkError> {
        let buf = &self.buf[at..];
        let items = match frame {
            Frame::Array(items) => items,
            Frame::Error(r) => {
                let text = String::from_utf8_lossy(&buf[r.clone()]).into_owned();
                self.replies.lock().refuse(&text);
                return Ok(());
            }
            Frame::Other => return Err(LinkError::broken("a reply outside subscribed mode")),
        };
        let bytes = |i: usize| match items.get(i) {
            Some(Item::Bytes(r)) => Some(&buf[r.clone()]),
            _ => None,
        };
        let kind = bytes(0).ok_or_else(|| LinkError::broken("an array without a kind"))?;
        let lower = kind.to_ascii_lowercase();
        match lower.as_slice() {
            b"message" | b"smessage" => {
                if let (Some(ch), Some(payload)) = (bytes(1), bytes(2)) {
                    handler.message(ch, payload);
                }
            }
            b"pmessage" => {
                if let (Some(ch), Some(payload)) = (bytes(2), bytes(3)) {
                    handler.message(ch, payload);
                }
            }
            b"subscribe" | b"ssubscribe" | b"psubscribe" => {
                if let Some(ch) = bytes(1) {
                    self.replies.lock().confirm(Kind::Subscribe, ch);
                }
            }
            b"unsubscribe" | b"sunsubscribe" | b"punsubscribe" => {
                if let Some(ch) = bytes(1) {
                    if !self.replies.lock().confirm(Kind::Unsubscribe, ch) {
                        handler.lost(ch);
                    }
                }
            }
            b"pong" => {
                self.replies.lock().confirm(Kind::Ping, b"");
            }
            _ => return Err(LinkError::broken("an unknown push kind")),
        }
        Ok(())
    }

    /// The reply of a command sent before subscribing: `None` when it succeeded, its
    /// error text when it failed.
    async fn plain_reply(&mut self) -> Result<Option<String>, LinkError> {
        loop {
            if let Parsed::Frame(frame, n) =
                resp::parse(&self.buf, self.max_payload).map_err(LinkError::broken)?
            {
                let error = match frame {
                    Frame::Error(r) => Some(String::from_utf8_lossy(&self.buf[r]).into_owned()),
                    _ => None,
                };
                self.buf.drain(..n);
                return Ok(error);
            }
            self.fill().await?;
        }
    }
}

/// The channel of a message frame whose payload was stepped over.
fn message_channel<'a>(buf: &'a [u8], items: &[Item]) -> Option<&'a [u8]> {
    let at = match items.len() {
        2 => 1, // message, channel, (payload)
        3 => 2, // pmessage, pattern, channel, (payload)
        _ => return None,
    };
    match &items[at] {
        Item::Bytes(r) => Some(&buf[r.clone()]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_are_matched_by_channel_and_errors_by_command() {
        let mut r = Replies::default();
        let mut rxs = Vec::new();
        for (command, channel) in [(1, "a"), (1, "b"), (2, "c")] {
            let (tx, rx) = oneshot::channel();
            r.waiting.push_back(Waiting {
                command,
                kind: Kind::Subscribe,
                channel: channel.into(),
                done: Some(tx),
            });
            rxs.push(rx);
        }
        // An unsubscribe nobody asked for is not a confirmation.
        assert!(!r.confirm(Kind::Unsubscribe, b"b"));
        assert!(r.confirm(Kind::Subscribe, b"b"));
        // The error answers what is left of the oldest command, not the next one.
        r.refuse("MOVED 1 127.0.0.1:7001");
        assert_eq!(r.waiting.len(), 1);
        assert_eq!(r.waiting[0].channel, b"c");
        let got: Vec<_> = rxs.into_iter().map(|mut rx| rx.try_recv().ok()).collect();
        assert_eq!(
            got,
            [
                Some(Err("MOVED 1 127.0.0.1:7001".to_owned())),
                Some(Ok(())),
                None
            ]
        );
    }
}
