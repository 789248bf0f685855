//! One connection to a node. A task of its own dials it, upgrades it and reads it,
//! handing each frame to the client through a channel; the client keeps the write half.
//! Waiting on a channel can be given up without losing anything, so the client can wait
//! on two connections at once (while it moves from one to the next) and on its timers:
//! a frame half read is never dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastwebsockets::{
    FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError, WebSocketWrite,
};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::connect::{connect_with_headers, ClientTls, ConnectError};
use crate::tick::Symbol;

type Stream = TokioIo<Upgraded>;
type Writer = WebSocketWrite<WriteHalf<Stream>>;

/// Frames read ahead of the client, per connection.
const READ_AHEAD: usize = 64;

/// What a connection's task hands to the client.
pub(super) enum Up {
    /// The upgrade is done: the write half, for the client to subscribe with.
    Open(Writer),
    /// The connection could not be opened.
    Failed(DialError),
    /// A data or control frame, whole.
    Frame(Frame<'static>),
    /// Reading failed; the task has ended.
    Lost(String),
}

/// Why a connection could not be opened.
pub(super) enum DialError {
    /// Retrying as is will not help (bad URL, 401, 403…).
    Refused(ConnectError),
    /// It may work later.
    Failed(String),
}

/// How connections are opened: the same for every one of a client.
#[derive(Clone)]
pub(super) struct Dialer {
    pub token: Option<String>,
    pub tls: Option<ClientTls>,
    pub timeout: Duration,
    pub headers: Arc<[(String, String)]>,
}

/// The task of a connection, aborted when the connection is dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One connection and what the client knows of it.
pub(super) struct Conn {
    rx: mpsc::Receiver<Up>,
    _task: Task,
    write: Option<Writer>,
    /// The URL dialed (as listed, without `encoding=`).
    pub url: Arc<str>,
    /// Its place in the client's list.
    pub url_idx: usize,
    /// When the dial began.
    pub dialed: Instant,
    /// When the upgrade was done.
    pub since: Instant,
    /// The node's name, once welcomed.
    pub node: String,
    /// `welcome` received.
    pub welcomed: bool,
    /// A value (tick, snapshot, bars) received.
    pub got_data: bool,
    /// Silence allowed before the connection is given up.
    pub idle: Duration,
    heard: tokio::time::Instant,
    /// Opened to move to, on the node's `reconnect`.
    pub for_move: bool,
    /// Ids of `subscribe` commands not answered yet.
    pub awaiting: Vec<u64>,
    /// Id of the `ping` sent after the subscription, until its `pong`.
    pub probe: Option<u64>,
    /// The probe's `pong` arrived: everything the subscription queued came before it.
    pub probed: bool,
    /// Symbols subscribed with `resume`, and the epoch each was resumed in.
    pub resumed_epochs: HashMap<Symbol, Arc<str>>,
}

impl Conn {
    /// Starts dialing `url` (with `dial_url`, which carries the encoding asked for).
    pub fn dial(dialer: &Dialer, url: Arc<str>, url_idx: usize, dial_url: String) -> Conn {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let task = tokio::spawn(run(dialer.clone(), dial_url, tx));
        Conn {
            rx,
            _task: Task(task),
            write: None,
            url,
            url_idx,
            dialed: Instant::now(),
            since: Instant::now(),
            node: String::new(),
            welcomed: false,
            got_data: false,
            idle: dialer.timeout,
            heard: tokio::time::Instant::now(),
            for_move: false,
            awaiting: Vec::new(),
            probe: None,
            probed: false,
            resumed_epochs: HashMap::new(),
        }
    }

    /// The next thing its task hands over; `None` once the task has ended. Safe to give
    /// up: nothing is lost.
    pub async fn recv(&mut self) -> Option<Up> {
        let up = self.rx.recv().await;
        self.heard = tokio::time::Instant::now();
        up
    }

    /// Whether its task has handed over something not taken yet: a client that was
    /// slow to run has not heard it, but the connection was not silent.
    pub fn has_queued(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Takes the write half of an opened connection.
    pub fn opened(&mut self, write: Writer) {
        self.write = Some(write);
        self.since = Instant::now();
        self.heard = tokio::time::Instant::now();
    }

    /// When the connection is given up as silent; `None` while it is being opened (its
    /// task gives up on its own then).
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.write.as_ref().map(|_| self.heard + self.idle)
    }

    /// Whether it carries the subscription by now: welcomed, every `subscribe`
    /// answered, and a first value or the probe's `pong` received.
    pub fn live(&self) -> bool {
        self.welcomed && self.awaiting.is_empty() && (self.got_data || self.probed)
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, text: String) -> Result<(), WebSocketError> {
        self.send(Frame::text(Payload::Owned(text.into_bytes())))
            .await
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: Frame<'_>) -> Result<(), WebSocketError> {
        match self.write.as_mut() {
            Some(w) => w.write_frame(frame).await,
            None => Err(WebSocketError::ConnectionClosed),
        }
    }

    /// Sends a Close frame, waiting at most a second for the socket to take it.
    pub async fn close(&mut self, code: u16, reason: &str) {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.send(Frame::close(code, reason.as_bytes())),
        )
        .await;
    }
}

/// A connection's task: dial, upgrade, hand over the write half, then read frames
/// until the connection ends or the client drops it.
async fn run(dialer: Dialer, url: String, tx: mpsc::Sender<Up>) {
    let attempt = tokio::time::timeout(
        dialer.timeout,
        connect_with_headers(
            &url,
            dialer.token.as_deref(),
            dialer.tls.as_ref(),
            &dialer.headers,
        ),
    )
    .await;
    let mut ws = match attempt {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            let why = match e.is_transient() {
                true => DialError::Failed(e.to_string()),
                false => DialError::Refused(e),
            };
            let _ = tx.send(Up::Failed(why)).await;
            return;
        }
        Err(_) => {
            let why = format!("no connection within {:?}", dialer.timeout);
            let _ = tx.send(Up::Failed(DialError::Failed(why))).await;
            return;
        }
    };
    // Pings and Closes are answered by the client, so that a Ping counts as a sign of
    // life for its silence timer.
    ws.set_auto_pong(false);
    ws.set_auto_close(false);
    let (read, write) = ws.split(tokio::io::split);
    if tx.send(Up::Open(write)).await.is_err() {
        return;
    }
    let mut read: FragmentCollectorRead<ReadHalf<Stream>> = FragmentCollectorRead::new(read);
    // With the automatic answers off, nothing is ever handed to this.
    let mut nothing_to_send = |_: Frame<'static>| async { Ok::<(), std::convert::Infallible>(()) };
    loop {
        let up = match read.read_frame(&mut nothing_to_send).await {
            Ok(frame) => {
                let last = frame.opcode == OpCode::Close;
                if tx.send(Up::Frame(frame)).await.is_err() || last {
                    return;
                }
                continue;
            }
            Err(e) => Up::Lost(e.to_string()),
        };
        let _ = tx.send(up).await;
        return;
    }
}
