//! The Rust client of tickstream: connect, subscribe, decode, and stay connected.
//!
//! A [`Client`] holds the subscriptions it wants and, for each symbol of its ticks, the
//! last `epoch`/`seq` it saw. [`Client::next`] drives everything and yields one
//! [`Event`] at a time: connection changes as they happen, and every server message in
//! order. When the connection is lost it reconnects by itself — to the next URL of its
//! list, after a delay drawn with full jitter (see [`crate::backoff`]) — and subscribes
//! again with `resume` set to the last position of every symbol, so the server replays
//! what was missed, or says with a `gap` what it no longer has.
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
//! # Channels, pacing and patterns (protocol v1.1)
//!
//! [`ClientConfig::symbols`] are the ticks of those symbols, every one;
//! [`ClientConfig::subscriptions`] add others, each a [`Subscription`]: ticks at a pace
//! (`throttle_ms`), or the bars of the `candles` channel at an interval, with `backfill`
//! closed bars first. An entry may be a pattern (`*`, `BTC-*`): the symbols the node
//! says it matched (in `subscribed`), and those that join later (they arrive with their
//! snapshot), are held like named ones — with a position on `ticks` — and subscribed by
//! name with `resume` on the next connection, before the pattern itself. Bars arrive as
//! [`ServerMessage::Candles`] (the start of a subscription: it replaces what was held)
//! and [`ServerMessage::Candle`].
//!
//! ```no_run
//! use tickstream::client::{Client, ClientConfig, Subscription};
//! use tickstream::protocol::{channel::Interval, Channel};
//!
//! # fn make() -> Result<Client, tickstream::client::ClientError> {
//! Client::new(ClientConfig {
//!     subscriptions: vec![
//!         Subscription { channel: Channel::Ticks, symbols: vec!["BTC-*".into()], throttle_ms: Some(250) },
//!         Subscription {
//!             channel: Channel::Candles { interval: Interval::M1, backfill: 60 },
//!             symbols: vec!["AAPL".into()],
//!             throttle_ms: None,
//!         },
//!     ],
//!     ..ClientConfig::default()
//! })
//! # }
//! ```
//!
//! # Order books
//!
//! A [`Subscription`] on [`Channel::Book`](crate::protocol::Channel::Book) (depth 10
//! or 50) makes the client keep that book per symbol ([`books`]): each `book` and
//! `book_update` is applied when it follows the book held (`prev_seq`) and the book's
//! checksum is the node's, then passed on as [`ServerMessage::Book`] followed by
//! [`Event::Book`] with the book after it. Anything else is a mismatch
//! ([`Event::BookMismatch`]): the book stays as verified last and the client re-syncs it
//! with `resume` from that seq, by itself. Reconnects resume books as they resume ticks.
//!
//! # Sequence tracking and re-snapshotting
//!
//! - A tick whose `seq` follows the last one is in order; so is a paced tick whose
//!   `skipped` accounts for the jump (`seq` − last − 1 = `skipped`: pacing folded
//!   those, no loss; counted in [`Counters::skipped`]). One at or below the last is a
//!   duplicate and is dropped (counted, not yielded). One further on than that, with no
//!   `gap` announced for the hole, is a hole the client found itself: [`Event::Hole`],
//!   then the tick.
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
//! # Health of a symbol
//!
//! The node says `status` stale when it knows a symbol's source stopped, and `live` when
//! values flow again. The client keeps the symbol's [`Health`] (stale since when, and
//! why) in its [`Position`], queues [`Event::Stale`] and [`Event::Live`] when it changes,
//! and passes the `status` message on like every other. Only the node's `live` ends a
//! stale mark, not a tick or a snapshot; across a reconnect the mark is kept until the
//! new node says otherwise (see [`health`]).
//!
//! # Planned reconnect: make before break
//!
//! A node that is going to close a connection (shutdown, a connection's lifetime) first
//! sends `reconnect` and streams on for `in_ms`. The client then opens its next
//! connection at once, with no backoff (the next URL of its list), and subscribes there
//! with `resume` from the positions it holds and the same options ([`Event::Moving`]).
//! While both are open it drops whatever it already holds, whichever connection brings
//! it: ticks by `seq`, a snapshot of a position held, a `gap` of ticks held, a `status`
//! that changes nothing, a bar that says no more than the one held (the new connection's
//! `candles` message is passed on as the `candle` messages of its bars that are news).
//! Once the new connection is live — every `subscribe` answered, and a first value or
//! the `pong` of the `ping` sent after the subscription received — the old one is
//! closed (1000) and [`Event::Moved`] says so; the program has missed nothing and seen
//! nothing twice. If the old one closes first, the new one simply carries on. If the new
//! one fails, [`Event::MoveFailed`], the client stays on the old one, and reconnects as
//! after any loss when it closes. Moves are counted in [`Counters::moves`], apart from
//! reconnects.
//!
//! # Latency reports
//!
//! Every [`ClientConfig::report_every`] (10 s by default) the client sends the node a
//! `report` of the ticks it passed on in that window: p50, p99 and maximum of receive
//! time − `ts`, in milliseconds, and their count (none for a window without ticks). The
//! node's `reported` answers are the client's own and are not passed on; they are
//! counted in [`Counters::reports_acked`].
//!
//! # Close codes
//!
//! The reconnect decision reads [`CloseCode::reconnect`]: after 1000, 1001, 1011, 4008
//! (and a connection that simply drops) the client reconnects with backoff; after 1002,
//! 1003, 1007, 1008 and 1009 it stops with [`ClientError::Closed`], since the same
//! request would meet the same refusal.

mod bars;
pub mod books;
pub mod config;
mod conn;
pub mod connect;
pub mod health;
pub mod message;
mod moving;
mod receive;
mod report;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::backoff::{Backoff, BackoffConfig};
pub use books::{BookMessage, LocalBook};
pub use config::{ClientConfig, Subscription};
pub use connect::{connect, connect_with, connect_with_headers, ClientTls, ClientWs, ConnectError};
pub use health::Health;
pub use message::{Candle, Names, ServerMessage, StaleReason, SymbolState, TickMessage};

use crate::protocol::{CloseCode, Encoding};
use crate::tick::{now_ns, Symbol};
use config::Plan;
use conn::{Conn, DialError, Dialer, Up};
use receive::{Receiver, State};

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
    /// The node announced it will close the connection (`reconnect`, passed on just
    /// before): the next connection is being opened, to move to before it does.
    Moving {
        /// The URL of the connection to be closed.
        from: Arc<str>,
        /// The URL being opened.
        to: Arc<str>,
        /// Why the node closes, as it said (`shutdown`, `lifetime`…).
        reason: String,
        /// How long the node streams on, in milliseconds.
        in_ms: u64,
    },
    /// The next connection is live and the old one closed: nothing was missed or
    /// repeated.
    Moved {
        /// The URL of the old connection.
        from: Arc<str>,
        /// The URL of the new one.
        to: Arc<str>,
        /// The new node's name.
        node: String,
        /// Symbols subscribed there with `resume`.
        resumed: usize,
        /// From the `reconnect` to the move.
        took: Duration,
    },
    /// The connection to move to failed: the client stays on the old one until it
    /// closes, then reconnects as after any loss.
    MoveFailed {
        /// The URL that failed.
        url: Arc<str>,
        /// What failed.
        error: String,
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
    /// The node says `symbol`'s latest value is no longer current (`status` stale), or
    /// gives another reason for it now. Queued before the `status` message.
    Stale {
        /// The symbol.
        symbol: Symbol,
        /// Why.
        reason: StaleReason,
        /// When it went stale (earlier than now when only the reason changed).
        since: Instant,
    },
    /// `symbol` is live again: its node said `status` live, or, after a reconnect, the
    /// new node did not call it stale.
    Live {
        /// The symbol.
        symbol: Symbol,
        /// How long it was stale.
        after: Duration,
    },
    /// A symbol's book after a `book` or `book_update` (passed on just before) was
    /// applied to it and its checksum verified.
    Book(LocalBook),
    /// A book message did not follow the book held (a hole, another epoch) or did not
    /// match its checksum: it was dropped, the book kept as it was, and (`resync`) the
    /// book is being re-synced from the seq held (see [`books`]).
    BookMismatch {
        /// The symbol.
        symbol: Symbol,
        /// What did not match.
        why: String,
        /// Whether a re-sync was asked for (not during a move, when the other
        /// connection carries the same book).
        resync: bool,
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
    /// Moves to the next connection on the node's `reconnect` (not counted as
    /// disconnects).
    pub moves: u64,
    /// Ticks received in order.
    pub ticks: u64,
    /// Ticks folded into paced ones (`skipped`): not received, and no loss.
    pub skipped: u64,
    /// Snapshots received.
    pub snapshots: u64,
    /// `candles` and `candle` messages passed on.
    pub candles: u64,
    /// `gap` messages received.
    pub gaps: u64,
    /// Holes found without a `gap`.
    pub holes: u64,
    /// Epoch changes seen on a tick without a snapshot.
    pub resets: u64,
    /// Ticks (and, during a move, snapshots) dropped as already seen.
    pub duplicates: u64,
    /// Times a symbol went from live to stale.
    pub stale: u64,
    /// Latency reports sent.
    pub reports: u64,
    /// Latency reports the node answered with `reported`.
    pub reports_acked: u64,
    /// `book` and `book_update` messages applied (their checksum verified).
    pub books: u64,
    /// Book messages dropped: stale (not above the seq held), not matching, or
    /// arriving while their book was being re-synced.
    pub book_dropped: u64,
    /// Book messages that did not follow the book held or did not match its checksum.
    pub book_mismatches: u64,
    /// Re-syncs of a book sent to the node.
    pub book_resyncs: u64,
}

/// Where a symbol stands.
#[derive(Clone, Debug, Default)]
pub struct Position {
    /// The epoch of `seq` (empty until known).
    pub epoch: Arc<str>,
    /// The last seq received or announced missing (0: nothing yet).
    pub seq: u64,
    /// A gap was announced and no tick or snapshot has replaced the state since (what
    /// the client holds is incomplete; the node's word on the source is `health`).
    pub stale: bool,
    /// Whether the node says the symbol's value is current (`status`).
    pub health: Health,
}

enum Lost {
    /// Reconnect with backoff.
    Retry(Option<u16>, String),
    /// Stop.
    Fatal(ClientError),
}

/// Which connection something came from: the one in use, or the one being moved to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Main,
    Next,
}

/// What the client was woken by.
enum Woke {
    /// Something from a connection's task.
    Up(Which, Option<Up>),
    /// A connection was silent past its deadline.
    Silent(Which),
    /// A latency report is due.
    Report,
}

/// A move under way (see the module documentation).
struct Move {
    from: Arc<str>,
    started: Instant,
}

/// A subscriber that reconnects and resumes by itself. See the module documentation.
pub struct Client {
    cfg: ClientConfig,
    dialer: Dialer,
    urls: Vec<Arc<str>>,
    url_idx: usize,
    backoff: Backoff,
    rng: SmallRng,
    names: Names,
    st: State,
    /// The connection in use.
    conn: Option<Conn>,
    /// The connection being moved to.
    next: Option<Conn>,
    moving: Option<Move>,
    wait_until: Option<tokio::time::Instant>,
    report_at: Option<tokio::time::Instant>,
    first_round_failures: usize,
    pending: VecDeque<Event>,
    next_id: u64,
    last_error: String,
}

/// Close codes after which reconnecting as is would meet the same refusal (see
/// [`CloseCode::reconnect`]).
pub fn close_is_fatal(code: u16) -> bool {
    !CloseCode::from_code(code).reconnect()
}

/// The connection `which` of the two slots.
fn pick<'a>(
    main: &'a mut Option<Conn>,
    next: &'a mut Option<Conn>,
    which: Which,
) -> Option<&'a mut Conn> {
    match which {
        Which::Main => main.as_mut(),
        Which::Next => next.as_mut(),
    }
}

async fn recv(conn: Option<&mut Conn>) -> Option<Up> {
    match conn {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep(until: Option<tokio::time::Instant>) {
    match until {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Client {
    /// A client for `cfg`; nothing connects until [`Client::next`] is called.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.urls.is_empty() {
            return Err(ClientError::Config("no URL to connect to".into()));
        }
        if cfg.report_every.is_some_and(|d| d.is_zero()) {
            return Err(ClientError::Config(
                "report_every must be more than 0 (None sends no report)".into(),
            ));
        }
        for (name, value) in &cfg.headers {
            let ok = hyper::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && hyper::header::HeaderValue::from_str(value).is_ok();
            if !ok {
                return Err(ClientError::Config(format!(
                    "header {name:?}: {value:?} is not a valid HTTP header"
                )));
            }
        }
        let mut names = Names::default();
        let plan = Plan::new(&cfg, &mut names).map_err(ClientError::Config)?;
        let mut st = State {
            positions: plan
                .wanted
                .iter()
                .map(|s| (s.clone(), Position::default()))
                .collect(),
            plan,
            ..State::default()
        };
        for (sym, (epoch, seq)) in &cfg.start_from {
            // A symbol a pattern matches is held from the start when it has a position.
            let named = names.intern(sym);
            if st.plan.learn(&named) {
                st.positions.insert(named, Position::default());
            }
            let p = st.positions.get_mut(sym.as_str()).ok_or_else(|| {
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
            dialer: Dialer {
                token: cfg.token.clone(),
                tls,
                timeout: cfg.connect_timeout,
                headers: cfg.headers.iter().cloned().collect(),
            },
            urls: cfg.urls.iter().map(|u| Arc::from(u.as_str())).collect(),
            url_idx: 0,
            backoff: Backoff::new(cfg.backoff),
            rng: SmallRng::from_os_rng(),
            names,
            st,
            conn: None,
            next: None,
            moving: None,
            wait_until: None,
            report_at: None,
            first_round_failures: 0,
            pending: VecDeque::with_capacity(1024),
            next_id: 1,
            last_error: String::new(),
            cfg,
        })
    }

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        self.st.counters
    }

    /// The book held of `symbol` (of a `book` subscription), verified at its seq; like
    /// [`Client::position`], it may be ahead of the events yielded.
    pub fn book(&self, symbol: &str) -> Option<&LocalBook> {
        self.st.books.get(symbol)
    }

    /// The position held for `symbol`: it counts every message of the frames read so
    /// far, which may be ahead of the events yielded yet.
    pub fn position(&self, symbol: &str) -> Option<&Position> {
        self.st.positions.get(symbol)
    }

    /// Whether the node says `symbol`'s value is current; `None` for a symbol not
    /// subscribed. Like [`Client::position`], it may be ahead of the events yielded.
    pub fn health(&self, symbol: &str) -> Option<&Health> {
        self.st.positions.get(symbol).map(|p| &p.health)
    }

    /// The symbols the node says are stale, with their health.
    pub fn stale(&self) -> impl Iterator<Item = (&Symbol, &Health)> {
        self.st
            .positions
            .iter()
            .filter(|(_, p)| p.health.is_stale())
            .map(|(s, p)| (s, &p.health))
    }

    /// The symbols whose ticks this client subscribes: those named, then those its
    /// patterns matched (those refused by the server are dropped).
    pub fn symbols(&self) -> &[Symbol] {
        &self.st.plan.wanted
    }

    /// The next event, connecting or reconnecting as needed.
    ///
    /// Not cancel-safe: dropping the future while it writes to a connection, or while
    /// it waits out a reconnect delay, loses that. To wait on something else at the same
    /// time, run the client with [`Client::spawn`].
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            if self.conn.is_none() {
                if let Some(at) = self.wait_until.take() {
                    tokio::time::sleep_until(at).await;
                }
                self.conn = Some(self.dial(self.url_idx, false));
            }
            match self.wait().await {
                Woke::Up(Which::Main, up) => self.on_main(up).await?,
                Woke::Up(Which::Next, up) => self.on_next(up).await,
                Woke::Silent(which) => self.silent(which)?,
                Woke::Report => self.report().await?,
            }
            self.advance_move().await;
        }
    }

    /// Closes the connections politely (close code 1000), if any is open.
    pub async fn close(&mut self) {
        for mut c in [self.conn.take(), self.next.take()].into_iter().flatten() {
            c.close(1000, "client done").await;
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

    /// Starts a connection to the URL at `idx` of the list (wrapping around).
    fn dial(&self, idx: usize, for_move: bool) -> Conn {
        let idx = idx % self.urls.len();
        let url = self.urls[idx].clone();
        let dial = with_encoding(&url, self.cfg.encoding);
        let mut conn = Conn::dial(&self.dialer, url, idx, dial);
        conn.for_move = for_move;
        conn
    }

    /// Waits for the next thing to do: something from a connection, a connection's
    /// silence, or a report due.
    async fn wait(&mut self) -> Woke {
        if self.report_at.is_none() {
            self.report_at = self
                .cfg
                .report_every
                .map(|every| tokio::time::Instant::now() + every);
        }
        let report_at = self.report_at;
        let main_quiet = self.conn.as_ref().and_then(Conn::deadline);
        let next_quiet = self.next.as_ref().and_then(Conn::deadline);
        tokio::select! {
            up = recv(self.conn.as_mut()) => Woke::Up(Which::Main, up),
            up = recv(self.next.as_mut()) => Woke::Up(Which::Next, up),
            () = sleep(main_quiet) => Woke::Silent(Which::Main),
            () = sleep(next_quiet) => Woke::Silent(Which::Next),
            () = sleep(report_at) => Woke::Report,
        }
    }

    /// Takes what the task of the connection in use handed over.
    async fn on_main(&mut self, up: Option<Up>) -> Result<(), ClientError> {
        let lost = match up {
            Some(Up::Open(write)) => {
                if let Some(c) = self.conn.as_mut() {
                    c.opened(write);
                }
                match self.subscribe(Which::Main).await {
                    Ok(()) => return Ok(()),
                    Err(e) => Lost::Retry(None, format!("sending the subscription failed: {e}")),
                }
            }
            Some(Up::Failed(DialError::Refused(e))) => Lost::Fatal(ClientError::Connect(e)),
            Some(Up::Failed(DialError::Failed(why))) => Lost::Retry(None, why),
            Some(Up::Frame(frame)) => match self.frame(Which::Main, frame).await {
                Ok(()) => return Ok(()),
                Err(lost) => lost,
            },
            Some(Up::Lost(why)) => Lost::Retry(None, why),
            None => Lost::Retry(None, "the connection's reader ended".into()),
        };
        self.lose(lost)
    }

    /// A connection said nothing past its deadline.
    fn silent(&mut self, which: Which) -> Result<(), ClientError> {
        let Some(conn) = pick(&mut self.conn, &mut self.next, which) else {
            return Ok(());
        };
        if conn.has_queued() {
            // Both were ready when the client ran again; what came is read next.
            return Ok(());
        }
        let why = format!("nothing heard for {:?}", conn.idle);
        match which {
            Which::Main => self.lose(Lost::Retry(None, why)),
            Which::Next => {
                self.move_failed(why);
                Ok(())
            }
        }
    }

    /// Handles one frame of a connection: data is decoded, a Ping answered, a Close
    /// ends the connection.
    async fn frame(&mut self, which: Which, frame: Frame<'static>) -> Result<(), Lost> {
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                self.read(which, &frame)?;
                self.resync(which)
                    .await
                    .map_err(|e| Lost::Retry(None, e.to_string()))
            }
            OpCode::Ping => {
                let Some(conn) = pick(&mut self.conn, &mut self.next, which) else {
                    return Ok(());
                };
                conn.send(Frame::pong(frame.payload))
                    .await
                    .map_err(|e| Lost::Retry(None, e.to_string()))
            }
            OpCode::Close => {
                if let Some(conn) = pick(&mut self.conn, &mut self.next, which) {
                    // The answer the protocol asks for, as far as the socket takes it.
                    let echo = Frame::close_raw(Payload::Owned(frame.payload.to_vec()));
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.send(echo)).await;
                }
                Err(closed(&frame.payload))
            }
            // Pongs need nothing.
            _ => Ok(()),
        }
    }

    /// Sends the subscription on a connection just opened: every `subscribe` of the
    /// plan, with `resume` from the positions held; then, when some symbol is marked
    /// stale or the connection is one being moved to, a `ping` whose `pong` comes after
    /// everything the subscription queued (see [`health`] and the module documentation).
    async fn subscribe(&mut self, which: Which) -> Result<(), WebSocketError> {
        let st = &mut self.st;
        if which == Which::Main {
            st.books.reconnected();
        }
        let held = config::Held {
            positions: &st.positions,
            books: &st.books,
        };
        let cmds = st.plan.commands(
            held,
            self.cfg.snapshot,
            self.cfg.symbols_per_command,
            &mut self.next_id,
        );
        let resumed = st
            .plan
            .wanted
            .iter()
            .filter_map(|s| {
                let p = st.positions.get(s).filter(|p| p.seq > 0)?;
                Some((s.clone(), p.epoch.clone()))
            })
            .collect();
        let stale: Vec<Symbol> = self.stale().map(|(s, _)| s.clone()).collect();
        let Some(conn) = pick(&mut self.conn, &mut self.next, which) else {
            return Ok(());
        };
        conn.resumed_epochs = resumed;
        for cmd in cmds {
            conn.awaiting.push(cmd.id);
            conn.send_text(cmd.text).await?;
        }
        if stale.is_empty() && !conn.for_move {
            self.st.recheck = health::Recheck::default();
            return Ok(());
        }
        let id = self.next_id;
        self.next_id += 1;
        if conn.for_move {
            conn.probe = Some(id);
        }
        if !stale.is_empty() {
            self.st.recheck.start(id, stale);
        }
        let ping = serde_json::json!({"op": "ping", "id": id}).to_string();
        conn.send_text(ping).await
    }

    /// Sends the re-syncs of the books that did not match (see [`books`]) on the
    /// connection that brought them.
    async fn resync(&mut self, which: Which) -> Result<(), WebSocketError> {
        if self.st.books.due.is_empty() {
            return Ok(());
        }
        let due = std::mem::take(&mut self.st.books.due);
        let Some(conn) = pick(&mut self.conn, &mut self.next, which) else {
            return Ok(());
        };
        for symbol in due {
            let cmds = self
                .st
                .plan
                .resync(&symbol, &self.st.books, &mut self.next_id);
            for cmd in cmds {
                self.st.books.sent(cmd.id, symbol.clone());
                conn.send_text(cmd.text).await?;
            }
            self.st.counters.book_resyncs += 1;
        }
        Ok(())
    }

    /// Sends the latency report of the window that ends now, when there is something
    /// to report and a connection to send it on.
    async fn report(&mut self) -> Result<(), ClientError> {
        self.report_at = self
            .cfg
            .report_every
            .map(|every| tokio::time::Instant::now() + every);
        let Some(conn) = self.conn.as_mut().filter(|c| c.welcomed) else {
            return Ok(());
        };
        let Some(text) = self.st.latency.take(self.next_id) else {
            return Ok(());
        };
        self.next_id += 1;
        self.st.counters.reports += 1;
        match conn.send_text(text).await {
            Ok(()) => Ok(()),
            Err(e) => self.lose(Lost::Retry(None, e.to_string())),
        }
    }

    /// Counts a failed attempt and schedules the next, or gives up.
    fn failed(&mut self, err: String) -> Result<(), ClientError> {
        if !self.st.ever_connected {
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

    /// Handles the loss of the connection in use. During a move the next connection
    /// takes over at once, with no backoff.
    fn lose(&mut self, lost: Lost) -> Result<(), ClientError> {
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        let (code, reason) = match lost {
            Lost::Fatal(e) => return Err(e),
            Lost::Retry(code, reason) => (code, reason),
        };
        if let Some(next) = self.next.take() {
            self.url_idx = next.url_idx;
            self.conn = Some(next);
            return Ok(());
        }
        if conn.for_move {
            // The connection moved to failed before it was live: an ordinary loss.
            self.moving = None;
        }
        if !conn.welcomed {
            return self.failed(reason);
        }
        self.st.counters.disconnects += 1;
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

    /// Decodes one data frame of a connection and queues the events it makes.
    fn read(&mut self, which: Which, frame: &Frame<'static>) -> Result<(), Lost> {
        let overlap = self.moving.is_some();
        let attempt = self.backoff.attempt();
        let Some(conn) = pick(&mut self.conn, &mut self.next, which) else {
            return Ok(());
        };
        let names = &mut self.names;
        let mut receiver = Receiver {
            conn,
            overlap,
            st: &mut self.st,
            pending: &mut self.pending,
            cfg: &self.cfg,
            attempt,
            now: now_ns(),
        };
        let mut bad = None;
        if frame.opcode == OpCode::Binary {
            bad = message::for_each_record(&frame.payload, names, |m| receiver.take(m)).err();
        } else {
            let decoded =
                message::for_each_raw(&frame.payload, |raw| match raw.into_message(names) {
                    Ok(m) => receiver.take(m),
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

/// How a connection the server closed with `payload` (code and reason) ends: for good
/// after a code on which reconnecting would meet the same refusal, else with a retry.
fn closed(payload: &[u8]) -> Lost {
    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
    match code {
        Some(c) if close_is_fatal(c) => Lost::Fatal(ClientError::Closed { code: c, reason }),
        _ => Lost::Retry(code, reason),
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

    #[test]
    fn a_header_http_does_not_allow_is_refused_before_any_connection() {
        let cfg = |name: &str, value: &str| ClientConfig {
            symbols: vec!["AAPL".into()],
            headers: vec![(name.into(), value.into())],
            ..ClientConfig::default()
        };
        assert!(Client::new(cfg("Cookie", "tickstream_node=desk-1")).is_ok());
        for (name, value) in [("Bad Name", "x"), ("Cookie", "a\nb"), ("", "x")] {
            match Client::new(cfg(name, value)) {
                Err(ClientError::Config(why)) => assert!(why.contains("header"), "{why}"),
                _ => panic!("{name:?}: {value:?} was taken"),
            }
        }
    }
}
