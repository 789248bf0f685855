//! The Rust client of tickstream: connect, subscribe, decode, and stay connected.
//!
//! A [`Client`] holds the symbols it wants and, for each, the last `epoch`/`seq` it saw.
//! [`Client::next`] drives everything and yields one [`Event`] at a time: connection
//! changes as they happen, and every server message in order. When the connection is
//! lost it reconnects by itself — to the next URL of its list, after a delay drawn with
//! full jitter (see [`crate::backoff`]) — and subscribes again with `resume` set to the last
//! position of every symbol, so the server replays what was missed, or says with a
//! `gap` what it no longer has.
//!
//! ```no_run
//! use tickstream::client::{Client, ClientConfig, Event, ServerMessage};
//!
//! # async fn run() -> Result<(), tickstream::client::ClientError> {
//! let mut client = Client::new(ClientConfig {
//!     urls: vec!["ws://127.0.0.1:8080/v1/ws".into(), "ws://127.0.0.1:8081/v1/ws".into()],
//!     symbols: vec!["AAPL".into(), "BTC-USD".into()],
//!     ..ClientConfig::default()
//! })?;
//! loop {
//!     match client.next().await? {
//!         Event::Message(ServerMessage::Tick(t)) => println!("{} {} {}", t.symbol, t.seq, t.last),
//!         Event::Connected { node, resumed, .. } => eprintln!("on {node}, resuming {resumed}"),
//!         _ => {}
//!     }
//! }
//! # }
//! ```
//!
//! # Sequence tracking and re-snapshotting
//!
//! - A tick whose `seq` follows the last one is in order. One at or below the last is a
//!   duplicate and is dropped (counted, not yielded). One further on, with no `gap`
//!   announced for the hole, is a hole the client found itself: [`Event::Hole`], then
//!   the tick.
//! - A `gap` moves the symbol's position to its `to` and marks the symbol stale. The
//!   next `snapshot` or `tick` of the symbol replaces its state whole and clears the
//!   mark: ticks carry the full quote (bid, ask, sizes, last, volume), not a change,
//!   so whatever comes first after a gap is a complete picture. The server follows
//!   `expired` and `reset` gaps with a `snapshot`, and `slow_consumer` gaps with the
//!   newest tick; after an `upstream` gap the next tick is the picture.
//! - A tick or snapshot under a new `epoch` replaces what the client held (the feed
//!   restarted its numbering); a tick that brings a new epoch without a `snapshot`
//!   before it is reported as [`Event::Reset`].
//!
//! # Close codes
//!
//! The reconnect decision reads [`CloseCode::reconnect`]: after 1000, 1001, 1011, 4008
//! (and a connection that simply drops) the client reconnects with backoff; after 1002,
//! 1003, 1007, 1008 and 1009 it stops with [`ClientError::Closed`], since the same
//! request would meet the same refusal.

pub mod connect;
pub mod message;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::backoff::{Backoff, BackoffConfig};
pub use connect::{connect, connect_with, ClientTls, ClientWs, ConnectError};
pub use message::{Names, ServerMessage};

use crate::protocol::{CloseCode, Encoding, GapReason};
use crate::tick::{valid_symbol, Symbol};

/// What a client is told to do.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Node URLs (`ws://host:port/v1/ws`), tried in turn: a lost or failed connection
    /// moves to the next one.
    pub urls: Vec<String>,
    /// Bearer token sent with the upgrade, when set.
    pub token: Option<String>,
    /// PEM bundle of extra CAs trusted for `wss://` URLs, besides the built-in roots.
    /// Default: none.
    pub ca_file: Option<std::path::PathBuf>,
    /// Symbols to subscribe.
    pub symbols: Vec<String>,
    /// Ask for a `snapshot` before the ticks of a symbol first subscribed. Default: true.
    pub snapshot: bool,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// A connection that has been welcomed and has stayed up this long, or has
    /// delivered a tick or snapshot, counts as healthy: its loss starts the backoff
    /// from the first window again. Default: 5s.
    pub healthy_after: Duration,
    /// Longest wait for TCP, the upgrade and the `welcome`. Default: 5s.
    pub connect_timeout: Duration,
    /// Silence allowed past the server's heartbeat interval before the connection is
    /// given up as dead. Default: 10s.
    pub heartbeat_grace: Duration,
    /// Stop with an error when no URL can be reached on the very first round, instead
    /// of retrying. Default: true.
    pub fail_fast: bool,
    /// Most symbols per `subscribe` command (a long list is sent as several). Default: 256.
    pub symbols_per_command: usize,
    /// Where to start: the last `(epoch, seq)` already held per symbol, as from an
    /// earlier run (an empty epoch resumes by `seq` alone). The first subscription
    /// asks the server to replay what follows. Default: none.
    pub start_from: HashMap<String, (String, u64)>,
    /// How ticks and snapshots are to be sent: `encoding=` is added to every URL (the
    /// events are the same either way). Default: JSON.
    pub encoding: Encoding,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            urls: vec!["ws://127.0.0.1:8080/v1/ws".into()],
            token: None,
            ca_file: None,
            symbols: Vec::new(),
            snapshot: true,
            backoff: BackoffConfig::default(),
            healthy_after: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            heartbeat_grace: Duration::from_secs(10),
            fail_fast: true,
            symbols_per_command: 256,
            start_from: HashMap::new(),
            encoding: Encoding::Json,
        }
    }
}

/// What happened, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A connection is open and welcomed; the subscription (with `resume` for every
    /// symbol the client holds a position in) has been sent.
    Connected {
        /// The URL connected to.
        url: Arc<str>,
        /// The node's name from `welcome`.
        node: String,
        /// Failed attempts before this one since the last healthy connection.
        attempt: u32,
        /// Symbols subscribed with `resume` (the others with a snapshot).
        resumed: usize,
        /// Whether this is a reconnection (not the first connection).
        reconnect: bool,
        /// When this connection attempt began (after its backoff delay).
        dialed: Instant,
    },
    /// The connection was lost.
    Disconnected {
        /// The URL it was to.
        url: Arc<str>,
        /// The close code, when the server sent a close frame.
        code: Option<u16>,
        /// The close reason or what failed.
        reason: String,
    },
    /// The next attempt will be made after `delay`.
    Retrying {
        /// The URL to be tried.
        url: Arc<str>,
        /// This retry's number since the last healthy connection (from 1).
        attempt: u32,
        /// The delay drawn.
        delay: Duration,
        /// Why the last attempt failed, when it failed before being welcomed.
        error: Option<String>,
    },
    /// A message from the server.
    Message(ServerMessage),
    /// `seq` jumped without a `gap`: ticks `from..=to` of `symbol` are missing.
    Hole {
        /// The symbol.
        symbol: Symbol,
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
    },
    /// A tick arrived under a new epoch without a snapshot: the feed restarted the
    /// symbol's numbering. What was held for the symbol is replaced by this tick.
    Reset {
        /// The symbol.
        symbol: Symbol,
        /// The new epoch.
        epoch: Arc<str>,
    },
}

/// Why a client stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A connection failed in a way retrying will not fix (bad URL, 401, 403…).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The server closed with a code that says not to reconnect as is.
    #[error("the server closed the connection with {code} ({reason}); not reconnecting")]
    Closed {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// No URL could be reached within the attempt limit (or on the first round).
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
}

/// Counters a client keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections welcomed.
    pub connections: u64,
    /// Connections lost.
    pub disconnects: u64,
    /// Ticks received in order.
    pub ticks: u64,
    /// Snapshots received.
    pub snapshots: u64,
    /// `gap` messages received.
    pub gaps: u64,
    /// Holes found without a `gap`.
    pub holes: u64,
    /// Epoch changes seen on a tick without a snapshot.
    pub resets: u64,
    /// Ticks dropped as already seen.
    pub duplicates: u64,
}

/// Where a symbol stands.
#[derive(Clone, Debug, Default)]
pub struct Position {
    /// The epoch of `seq` (empty until known).
    pub epoch: Arc<str>,
    /// The last seq received or announced missing (0: nothing yet).
    pub seq: u64,
    /// A gap was announced and no tick or snapshot has replaced the state since.
    pub stale: bool,
}

struct Conn {
    ws: FragmentCollector<TokioIo<Upgraded>>,
    url: Arc<str>,
    dialed: Instant,
    since: Instant,
    welcomed: bool,
    got_data: bool,
    idle: Duration,
}

enum Lost {
    /// Reconnect with backoff.
    Retry(Option<u16>, String),
    /// Stop.
    Fatal(ClientError),
}

/// A subscriber that reconnects and resumes by itself. See the module documentation.
pub struct Client {
    cfg: ClientConfig,
    tls: Option<ClientTls>,
    urls: Vec<Arc<str>>,
    url_idx: usize,
    backoff: Backoff,
    rng: SmallRng,
    names: Names,
    wanted: Vec<Symbol>,
    positions: HashMap<Symbol, Position>,
    conn: Option<Conn>,
    wait_until: Option<tokio::time::Instant>,
    first_round_failures: usize,
    ever_connected: bool,
    pending: VecDeque<Event>,
    counters: Counters,
    next_id: u64,
    last_error: String,
}

/// Close codes after which reconnecting as is would meet the same refusal (see
/// [`CloseCode::reconnect`]).
pub fn close_is_fatal(code: u16) -> bool {
    !CloseCode::from_code(code).reconnect()
}

impl Client {
    /// A client for `cfg`; nothing connects until [`Client::next`] is called.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.urls.is_empty() {
            return Err(ClientError::Config("no URL to connect to".into()));
        }
        let mut names = Names::default();
        let mut wanted: Vec<Symbol> = Vec::with_capacity(cfg.symbols.len());
        for s in &cfg.symbols {
            if !valid_symbol(s) {
                return Err(ClientError::Config(format!(
                    "bad symbol {s:?}: symbols are 1 to 32 of A-Z 0-9 . _ : / - and start with a letter or digit"
                )));
            }
            let sym = names.intern(s);
            if !wanted.contains(&sym) {
                wanted.push(sym);
            }
        }
        let mut positions: HashMap<Symbol, Position> = wanted
            .iter()
            .map(|s| (s.clone(), Position::default()))
            .collect();
        for (sym, (epoch, seq)) in &cfg.start_from {
            let p = positions.get_mut(sym.as_str()).ok_or_else(|| {
                ClientError::Config(format!(
                    "resume position for {sym}, which is not subscribed"
                ))
            })?;
            p.epoch = names.intern(epoch);
            p.seq = *seq;
        }
        let tls = match &cfg.ca_file {
            Some(path) => {
                Some(ClientTls::new(Some(path)).map_err(|e| ClientError::Config(e.to_string()))?)
            }
            None => None,
        };
        Ok(Client {
            tls,
            urls: cfg.urls.iter().map(|u| Arc::from(u.as_str())).collect(),
            url_idx: 0,
            backoff: Backoff::new(cfg.backoff),
            rng: SmallRng::from_os_rng(),
            names,
            wanted,
            positions,
            conn: None,
            wait_until: None,
            first_round_failures: 0,
            ever_connected: false,
            pending: VecDeque::with_capacity(1024),
            counters: Counters::default(),
            next_id: 1,
            last_error: String::new(),
            cfg,
        })
    }

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The position held for `symbol`: it counts every message of the frames read so
    /// far, which may be ahead of the events yielded yet.
    pub fn position(&self, symbol: &str) -> Option<&Position> {
        self.positions.get(symbol)
    }

    /// The symbols this client subscribes (those refused by the server are dropped).
    pub fn symbols(&self) -> &[Symbol] {
        &self.wanted
    }

    /// The next event, connecting or reconnecting as needed.
    ///
    /// Not cancel-safe: dropping the future while a frame is half read loses the
    /// connection's framing. To wait on something else at the same time, run the
    /// client with [`Client::spawn`].
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            if self.conn.is_none() {
                self.connect_once().await?;
                continue;
            }
            if let Err(lost) = self.read_once().await {
                self.lose(lost)?;
            }
        }
    }

    /// Closes the connection politely (close code 1000), if one is open.
    pub async fn close(&mut self) {
        if let Some(mut c) = self.conn.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                c.ws.write_frame(Frame::close(1000, b"client done")),
            )
            .await;
        }
    }

    /// Runs the client in its own task, sending events to the returned receiver
    /// (which holds up to `buffer` of them). The task ends when the client stops, or
    /// when `stop` is cancelled (it then closes with 1000); its result says why.
    pub fn spawn(
        mut self,
        buffer: usize,
        stop: CancellationToken,
    ) -> (
        mpsc::Receiver<Event>,
        tokio::task::JoinHandle<Result<(), ClientError>>,
    ) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let task = tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    biased;
                    _ = stop.cancelled() => {
                        self.close().await;
                        return Ok(());
                    }
                    ev = self.next() => ev?,
                };
                if tx.send(ev).await.is_err() {
                    self.close().await;
                    return Ok(());
                }
            }
        });
        (rx, task)
    }

    fn url(&self) -> Arc<str> {
        self.urls[self.url_idx % self.urls.len()].clone()
    }

    /// Waits out the current delay if any, then makes one connection attempt.
    async fn connect_once(&mut self) -> Result<(), ClientError> {
        if let Some(at) = self.wait_until.take() {
            tokio::time::sleep_until(at).await;
        }
        let url = self.url();
        let dial = with_encoding(&url, self.cfg.encoding);
        let dialed = Instant::now();
        let attempt = tokio::time::timeout(
            self.cfg.connect_timeout,
            connect_with(&dial, self.cfg.token.as_deref(), self.tls.as_ref()),
        )
        .await;
        let err = match attempt {
            Ok(Ok(mut ws)) => {
                // Pings are answered here rather than inside the socket, so that they
                // count as signs of life for the idle timer.
                ws.set_auto_pong(false);
                let mut ws = FragmentCollector::new(ws);
                match self.send_subscribe(&mut ws).await {
                    Ok(()) => {
                        self.conn = Some(Conn {
                            ws,
                            url,
                            dialed,
                            since: Instant::now(),
                            welcomed: false,
                            got_data: false,
                            idle: self.cfg.connect_timeout,
                        });
                        return Ok(());
                    }
                    Err(e) => format!("sending the subscription failed: {e}"),
                }
            }
            Ok(Err(e)) if !e.is_transient() => return Err(ClientError::Connect(e)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no connection within {:?}", self.cfg.connect_timeout),
        };
        self.failed(err)
    }

    /// Counts a failed attempt and schedules the next, or gives up.
    fn failed(&mut self, err: String) -> Result<(), ClientError> {
        if !self.ever_connected {
            self.first_round_failures += 1;
            if self.cfg.fail_fast && self.first_round_failures >= self.urls.len() {
                return Err(ClientError::GaveUp {
                    attempts: self.first_round_failures as u32,
                    last: err,
                });
            }
        }
        self.last_error = err.clone();
        self.url_idx += 1;
        self.schedule(Some(err))
    }

    fn schedule(&mut self, error: Option<String>) -> Result<(), ClientError> {
        if self.backoff.exhausted() {
            return Err(ClientError::GaveUp {
                attempts: self.backoff.attempt(),
                last: std::mem::take(&mut self.last_error),
            });
        }
        let delay = self.backoff.next_delay(&mut self.rng);
        self.wait_until = Some(tokio::time::Instant::now() + delay);
        self.pending.push_back(Event::Retrying {
            url: self.url(),
            attempt: self.backoff.attempt(),
            delay,
            error,
        });
        Ok(())
    }

    /// Handles the loss of the open connection.
    fn lose(&mut self, lost: Lost) -> Result<(), ClientError> {
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        let (code, reason) = match lost {
            Lost::Fatal(e) => return Err(e),
            Lost::Retry(code, reason) => (code, reason),
        };
        if !conn.welcomed {
            return self.failed(reason);
        }
        self.counters.disconnects += 1;
        if conn.got_data || conn.since.elapsed() >= self.cfg.healthy_after {
            self.backoff.reset();
        }
        self.pending.push_back(Event::Disconnected {
            url: conn.url,
            code,
            reason: reason.clone(),
        });
        self.last_error = reason;
        self.url_idx += 1;
        self.schedule(None)
    }

    async fn send_subscribe(
        &mut self,
        ws: &mut FragmentCollector<TokioIo<Upgraded>>,
    ) -> Result<(), fastwebsockets::WebSocketError> {
        let per = self.cfg.symbols_per_command.max(1);
        for chunk in self.wanted.chunks(per) {
            let mut resume = serde_json::Map::new();
            for s in chunk {
                if let Some(p) = self.positions.get(s).filter(|p| p.seq > 0) {
                    let at = if p.epoch.is_empty() {
                        serde_json::json!(p.seq)
                    } else {
                        serde_json::json!({"epoch": &*p.epoch, "seq": p.seq})
                    };
                    resume.insert(s.to_string(), at);
                }
            }
            let mut cmd = serde_json::json!({
                "op": "subscribe",
                "id": self.next_id,
                "symbols": chunk.iter().map(|s| &**s).collect::<Vec<_>>(),
                "snapshot": self.cfg.snapshot,
            });
            if !resume.is_empty() {
                cmd["resume"] = serde_json::Value::Object(resume);
            }
            self.next_id += 1;
            let text = cmd.to_string();
            ws.write_frame(Frame::text(Payload::Owned(text.into_bytes())))
                .await?;
        }
        Ok(())
    }

    /// Reads one frame and queues the events it makes.
    async fn read_once(&mut self) -> Result<(), Lost> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let frame = match tokio::time::timeout(conn.idle, conn.ws.read_frame()).await {
            Err(_) => {
                return Err(Lost::Retry(
                    None,
                    format!("nothing heard for {:?}", conn.idle),
                ))
            }
            Ok(Err(e)) => return Err(Lost::Retry(None, e.to_string())),
            Ok(Ok(f)) => f,
        };
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {}
            OpCode::Ping => {
                let pong = Frame::pong(frame.payload);
                return match conn.ws.write_frame(pong).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(Lost::Retry(None, e.to_string())),
                };
            }
            OpCode::Close => {
                let p = &frame.payload[..];
                let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                let reason = String::from_utf8_lossy(p.get(2..).unwrap_or_default()).into_owned();
                return Err(match code {
                    Some(c) if close_is_fatal(c) => {
                        Lost::Fatal(ClientError::Closed { code: c, reason })
                    }
                    _ => Lost::Retry(code, reason),
                });
            }
            // Pongs need nothing.
            _ => return Ok(()),
        }
        let Self {
            names,
            positions,
            pending,
            counters,
            wanted,
            cfg,
            ever_connected,
            backoff,
            ..
        } = self;
        let mut handle = |msg: ServerMessage| {
            match &msg {
                ServerMessage::Tick(t) => {
                    conn.got_data = true;
                    if let Some(p) = positions.get_mut(&*t.symbol) {
                        if !p.epoch.is_empty() && !t.epoch.is_empty() && p.epoch != t.epoch {
                            counters.resets += 1;
                            pending.push_back(Event::Reset {
                                symbol: t.symbol.clone(),
                                epoch: t.epoch.clone(),
                            });
                        } else if p.seq != 0 && t.seq <= p.seq {
                            counters.duplicates += 1;
                            return;
                        } else if p.seq != 0 && t.seq > p.seq + 1 {
                            counters.holes += 1;
                            pending.push_back(Event::Hole {
                                symbol: t.symbol.clone(),
                                from: p.seq + 1,
                                to: t.seq - 1,
                            });
                        }
                        p.seq = t.seq;
                        if !t.epoch.is_empty() {
                            p.epoch = t.epoch.clone();
                        }
                        p.stale = false;
                    }
                    counters.ticks += 1;
                }
                ServerMessage::Snapshot(t) => {
                    conn.got_data = true;
                    if let Some(p) = positions.get_mut(&*t.symbol) {
                        p.seq = t.seq;
                        p.epoch = t.epoch.clone();
                        p.stale = false;
                    }
                    counters.snapshots += 1;
                }
                ServerMessage::Gap {
                    symbol, to, reason, ..
                } => {
                    counters.gaps += 1;
                    if let Some(p) = positions.get_mut(&**symbol) {
                        if *reason != GapReason::Reset {
                            p.seq = p.seq.max(*to);
                        }
                        p.stale = true;
                    }
                }
                ServerMessage::Welcome {
                    node, heartbeat_ms, ..
                } => {
                    conn.welcomed = true;
                    counters.connections += 1;
                    if *heartbeat_ms > 0 {
                        conn.idle = Duration::from_millis(*heartbeat_ms) + cfg.heartbeat_grace;
                    }
                    let resumed = wanted
                        .iter()
                        .filter(|s| positions.get(*s).is_some_and(|p| p.seq > 0))
                        .count();
                    pending.push_back(Event::Connected {
                        url: conn.url.clone(),
                        node: node.clone(),
                        attempt: backoff.attempt(),
                        resumed,
                        reconnect: *ever_connected,
                        dialed: conn.dialed,
                    });
                    *ever_connected = true;
                }
                ServerMessage::Error { code, symbols, .. }
                    if matches!(code.as_str(), "unknown_symbol" | "bad_symbol" | "forbidden") =>
                {
                    // Asking again on the next connection would be refused again.
                    wanted.retain(|w| !symbols.iter().any(|s| s == &**w));
                    positions.retain(|w, _| !symbols.iter().any(|s| s == &**w));
                }
                _ => {}
            }
            pending.push_back(Event::Message(msg));
        };
        let mut bad = None;
        if frame.opcode == OpCode::Binary {
            bad = message::for_each_record(&frame.payload, names, &mut handle).err();
        } else {
            let decoded =
                message::for_each_raw(&frame.payload, |raw| match raw.into_message(names) {
                    Ok(m) => handle(m),
                    Err(e) => bad = Some(e),
                });
            if let Err(e) = decoded {
                bad = Some(e);
            }
        }
        match bad {
            Some(e) => Err(Lost::Retry(None, e.to_string())),
            None => Ok(()),
        }
    }
}

/// `url` with `encoding=` set for `encoding` (left as is for JSON, or when it does not
/// parse: connecting then reports the bad URL).
fn with_encoding(url: &str, encoding: Encoding) -> String {
    if encoding == Encoding::Json {
        return url.to_owned();
    }
    let Ok(mut u) = url::Url::parse(url) else {
        return url.to_owned();
    };
    let kept: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != "encoding")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    u.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("encoding", encoding.as_str());
    u.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_is_asked_for_in_the_url() {
        let u = "ws://127.0.0.1:8080/v1/ws";
        assert_eq!(with_encoding(u, Encoding::Json), u);
        assert_eq!(
            with_encoding(u, Encoding::Binary),
            "ws://127.0.0.1:8080/v1/ws?encoding=binary"
        );
        assert_eq!(
            with_encoding("ws://h/v1/ws?token=a.b&encoding=json", Encoding::Binary),
            "ws://h/v1/ws?token=a.b&encoding=binary"
        );
    }
}
