//! Where a feed process sends its ticks: a node's publisher endpoint (`--to URL`), a bus
//! (`--redis URL`), or a recording file (`--out FILE`).
//!
//! A feed runs on its own thread and hands its ticks to a bounded crossbeam channel; one
//! of the functions here drains that channel into its destination and reports what
//! became of the ticks. When the destination fails, the function returns and drops the
//! receiver, which stops the feed thread at its next tick.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketRead, WebSocketWrite};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::bus::{RedisConfig, RedisPublisher};
use crate::client::connect::{connect_with, ClientTls, ClientWs};
use crate::feed::recording::{Item, Writer};
use crate::tick::{Kind, Tick};

/// Most ticks (and book messages) sent in one frame to a publisher endpoint.
pub const MAX_FRAME_TICKS: usize = 512;

/// An idle publisher connection sends a WebSocket Ping this often (or four times per
/// idle timeout the node announces in its `welcome`, when that is shorter), so that the
/// node does not close it for silence during long gaps of a slow replay.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// How long, after the last frame, to wait for the node to acknowledge every frame.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// Errors (at most) kept in a [`SinkReport`]; the rest are only counted.
const KEPT_ERRORS: usize = 10;

/// What became of the ticks a feed produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// Ticks handed to the destination.
    pub sent: u64,
    /// Ticks the destination accepted (equal to `sent` where it does not say).
    pub accepted: u64,
    /// Ticks the destination refused.
    pub refused: u64,
    /// The first refusals, as the destination explained them.
    pub errors: Vec<String>,
}

/// Why a destination failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The publisher endpoint could not be reached.
    #[error("cannot publish to {url}: {error}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        error: crate::client::connect::ConnectError,
    },
    /// The connection failed or the node closed it.
    #[error("publishing to {url}: {why}")]
    Lost {
        /// The URL.
        url: String,
        /// What happened.
        why: String,
    },
    /// Writing the recording failed.
    #[error("{0}")]
    Recording(crate::feed::recording::RecordingError),
    /// The bus refused the ticks.
    #[error("publishing to the bus: {0}")]
    Bus(crate::bus::BusError),
}

// Plain conversions, not `#[from]`: the messages already hold their cause, which a
// `source` would print a second time in an error chain.
impl From<crate::feed::recording::RecordingError> for PublishError {
    fn from(e: crate::feed::recording::RecordingError) -> Self {
        PublishError::Recording(e)
    }
}

impl From<crate::bus::BusError> for PublishError {
    fn from(e: crate::bus::BusError) -> Self {
        PublishError::Bus(e)
    }
}

/// Connects a Redis publisher for a feed process, failing fast when Redis is unreachable.
///
/// Every feed command reaches Redis through this one function.
pub async fn redis_publisher(cfg: &RedisConfig, feed_id: &str) -> anyhow::Result<RedisPublisher> {
    Ok(RedisPublisher::connect(cfg, feed_id).await?)
}

/// The feed id used in Redis lease keys when none is given: `feed-<host>`, the same
/// across restarts, so that a feed restarted on its host takes its symbols back at
/// once. A second feed on the same host needs its own `--feed-id` (it is refused
/// while the first runs).
pub fn default_feed_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    format!("feed-{}", host.trim())
}

/// Hands every tick and book message from `rx` to a Redis publisher, waiting for room
/// rather than dropping, until the feed ends. Call it from a plain thread.
pub fn to_redis(
    rx: Receiver<Item>,
    publisher: &RedisPublisher,
) -> Result<SinkReport, PublishError> {
    let mut report = SinkReport::default();
    let max = crate::hub::book::BookSettings::default().max_levels;
    for item in rx {
        report.sent += 1;
        match item {
            Item::Tick(tick) => publisher.publish_blocking(tick)?,
            Item::Book(b) => publisher.publish_book_blocking(&b.msg, b.spec, max)?,
        }
    }
    Ok(report)
}

/// Completes a report of [`to_redis`] once the publisher is closed: ticks refused because
/// another feed holds their symbol, or lost while Redis was down, count as refused.
pub fn redis_report(mut report: SinkReport, publisher: &RedisPublisher) -> SinkReport {
    let stats = publisher.stats();
    let refused = stats.refused.load(std::sync::atomic::Ordering::Relaxed);
    let lost = stats
        .dropped_down
        .load(std::sync::atomic::Ordering::Relaxed)
        + stats
            .dropped_full
            .load(std::sync::atomic::Ordering::Relaxed);
    let books_refused = stats
        .books_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    report.refused = refused + lost + books_refused;
    report.accepted = report.sent.saturating_sub(report.refused);
    for c in publisher.conflicts() {
        report.errors.push(format!(
            "{} is published by another feed ({}); refused",
            c.symbol, c.holder
        ));
    }
    if books_refused > 0 {
        report.errors.push(format!(
            "{books_refused} book messages did not follow the book published before them"
        ));
    }
    if lost > 0 {
        report
            .errors
            .push(format!("{lost} ticks lost while Redis was unreachable"));
    }
    report
}

/// Writes every tick and book message from `rx` to a new recording at `path` (zstd by
/// its extension).
pub fn to_file(rx: Receiver<Item>, path: &Path, source: &str) -> Result<SinkReport, PublishError> {
    let mut w = Writer::create(path, source)?;
    let mut report = SinkReport::default();
    for item in rx {
        match item {
            Item::Tick(tick) => w.write_tick(&tick)?,
            Item::Book(b) => w.write_book(&b)?,
        }
        report.sent += 1;
        report.accepted += 1;
    }
    w.finish()?;
    Ok(report)
}

/// A reply of the node on a publisher connection, or its end.
enum Event {
    Welcome { idle: Duration },
    Ack { accepted: u64, refused: u64 },
    Refused(String),
    Closed(String),
}

/// Opens a publisher connection to a node (`ws://HOST:PORT/v1/publish` or `wss://…`),
/// sending `token` as a bearer token when given and verifying a `wss://` node with `tls`
/// (the built-in roots when None).
pub async fn connect_node(
    url: &str,
    token: Option<&str>,
    tls: Option<&ClientTls>,
) -> Result<ClientWs, PublishError> {
    connect_with(url, token, tls)
        .await
        .map_err(|error| PublishError::Connect {
            url: url.to_owned(),
            error,
        })
}

/// Publishes every tick and book message from `rx` over `ws` (from [`connect_node`] to
/// `url`), in order, several per frame, until the feed ends; then waits for the node to acknowledge every
/// frame and closes normally. Refused ticks are counted and their errors kept; the
/// connection carries on past them.
pub async fn to_node(
    url: &str,
    ws: ClientWs,
    rx: Receiver<Item>,
) -> Result<SinkReport, PublishError> {
    let lost = |why: String| PublishError::Lost {
        url: url.to_owned(),
        why,
    };
    let (mut read, write) = ws.split(tokio::io::split);
    read.set_auto_close(false);
    read.set_auto_pong(false);

    // A blocking thread turns single ticks into frames' worth of ticks.
    let (batch_tx, mut batches) = mpsc::channel::<Vec<Item>>(8);
    let bridge = std::thread::Builder::new()
        .name("feed-batch".into())
        .spawn(move || batch_ticks(&rx, &batch_tx))
        .map_err(|e| lost(format!("cannot start the batching thread: {e}")))?;
    let (ev_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let reader = tokio::spawn(read_replies(read, ev_tx));

    let mut sending = Sending::new(write).await;
    let result = sending.run(&mut batches, &mut events).await.map_err(lost);
    // Dropping the batch receiver ends the bridge thread, which drops the feed's receiver.
    drop(batches);
    if result.is_ok() {
        let _ = sending
            .write
            .write_frame(Frame::close(1000, b"feed finished"))
            .await;
    }
    reader.abort();
    let _ = tokio::task::spawn_blocking(move || bridge.join()).await;
    result.map(|()| sending.report)
}

/// Gathers the feed's ticks from `rx` into batches of at most [`MAX_FRAME_TICKS`]
/// (what is there when the first arrives) and hands them to `tx`, until either side
/// is gone.
fn batch_ticks(rx: &Receiver<Item>, tx: &mpsc::Sender<Vec<Item>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::with_capacity(MAX_FRAME_TICKS);
        batch.push(first);
        while batch.len() < MAX_FRAME_TICKS {
            match rx.try_recv() {
                Ok(t) => batch.push(t),
                Err(_) => break,
            }
        }
        if tx.blocking_send(batch).is_err() {
            return;
        }
    }
}

/// Reads the node's frames and passes on its replies as events, ending with
/// [`Event::Closed`] when the node closes or the connection fails.
async fn read_replies<S>(mut read: WebSocketRead<S>, events: mpsc::UnboundedSender<Event>)
where
    S: AsyncRead + Unpin,
{
    let why = loop {
        let frame = match read
            .read_frame::<_, WebSocketError>(&mut |_| std::future::ready(Ok(())))
            .await
        {
            Ok(f) => f,
            Err(e) => break format!("connection failed: {e}"),
        };
        match frame.opcode {
            OpCode::Close => {
                let code = frame
                    .payload
                    .get(..2)
                    .map_or(1005, |b| u16::from_be_bytes([b[0], b[1]]));
                let reason = String::from_utf8_lossy(frame.payload.get(2..).unwrap_or(&[]));
                break format!("the node closed the connection ({code} {reason})");
            }
            OpCode::Text => {
                for ev in parse_replies(&frame.payload) {
                    if events.send(ev).is_err() {
                        return;
                    }
                }
            }
            _ => {}
        }
    };
    let _ = events.send(Event::Closed(why));
}

/// The sending side of a publisher connection, and what has become of what it sent.
struct Sending<S> {
    write: WebSocketWrite<S>,
    report: SinkReport,
    /// Frames sent.
    frames: u64,
    /// Frames the node has acknowledged.
    acked: u64,
    /// When to ping an idle connection.
    keepalive: tokio::time::Interval,
}

impl<S: AsyncWrite + Unpin> Sending<S> {
    async fn new(write: WebSocketWrite<S>) -> Sending<S> {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        Sending {
            write,
            report: SinkReport::default(),
            frames: 0,
            acked: 0,
            keepalive,
        }
    }

    /// Sends every batch from `batches` and takes the node's replies from `events`
    /// until the feed has ended and every frame is acknowledged; `Err` says why the
    /// connection was lost.
    async fn run(
        &mut self,
        batches: &mut mpsc::Receiver<Vec<Item>>,
        events: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Result<(), String> {
        let mut feeding = true;
        loop {
            if !feeding && self.acked >= self.frames {
                return Ok(());
            }
            tokio::select! {
                b = batches.recv(), if feeding => match b {
                    Some(batch) => self.send(&batch).await?,
                    None => feeding = false,
                },
                ev = events.recv() => match ev {
                    Some(ev) => self.take(ev)?,
                    None => return Err("the connection ended".into()),
                },
                _ = self.keepalive.tick(), if feeding => {
                    let ping = Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]));
                    self.write
                        .write_frame(ping)
                        .await
                        .map_err(|e| format!("sending failed: {e}"))?;
                }
                _ = tokio::time::sleep(ACK_WAIT), if !feeding => {
                    return Err(format!(
                        "{} of {} frames not acknowledged within {ACK_WAIT:?}",
                        self.frames - self.acked,
                        self.frames,
                    ));
                }
            }
        }
    }

    /// Sends `batch` as one frame.
    async fn send(&mut self, batch: &[Item]) -> Result<(), String> {
        let bytes = encode_items(batch);
        self.write
            .write_frame(Frame::text(Payload::Borrowed(&bytes)))
            .await
            .map_err(|e| format!("sending failed: {e}"))?;
        self.frames += 1;
        self.report.sent += batch.len() as u64;
        self.keepalive.reset();
        Ok(())
    }

    /// Takes one reply of the node; `Err` when it says the connection is gone.
    fn take(&mut self, ev: Event) -> Result<(), String> {
        match ev {
            Event::Welcome { idle } => {
                let every = (idle / 4).clamp(Duration::from_millis(20), KEEPALIVE);
                self.keepalive =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            }
            Event::Ack { accepted, refused } => {
                self.acked += 1;
                self.report.accepted += accepted;
                self.report.refused += refused;
            }
            Event::Refused(text) => {
                if self.report.errors.len() < KEPT_ERRORS {
                    self.report.errors.push(text);
                }
            }
            Event::Closed(why) => return Err(why),
        }
        Ok(())
    }
}

/// Reads the node's replies in one frame: `published` acknowledgements and `error`s.
fn parse_replies(payload: &[u8]) -> Vec<Event> {
    let Ok(serde_json::Value::Array(msgs)) = serde_json::from_slice::<serde_json::Value>(payload)
    else {
        return Vec::new();
    };
    msgs.iter()
        .filter_map(|m| match m["type"].as_str()? {
            "published" => Some(Event::Ack {
                accepted: m["accepted"].as_u64().unwrap_or(0),
                refused: m["refused"].as_u64().unwrap_or(0),
            }),
            "error" => Some(Event::Refused(format!(
                "{}: {}",
                m["code"].as_str().unwrap_or("error"),
                m["message"].as_str().unwrap_or("")
            ))),
            "welcome" => Some(Event::Welcome {
                idle: Duration::from_millis(m["idle_timeout_ms"].as_u64().unwrap_or(u64::MAX / 4)),
            }),
            _ => None,
        })
        .collect()
}

/// The bytes of a frame of ticks and book messages as [`to_node`] sends it: a JSON
/// array of `tick`, `book` and `book_update` objects, in order.
pub fn encode_items(items: &[Item]) -> Bytes {
    let mut buf = Vec::with_capacity(items.len() * 256 + 2);
    buf.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        match item {
            Item::Tick(t) => t.write_json(Kind::Tick, &mut buf),
            Item::Book(b) => b.write_json(&mut buf),
        }
    }
    buf.push(b']');
    Bytes::from(buf)
}

/// The bytes of a frame of ticks as [`to_node`] sends it: a JSON array of tick objects.
pub fn encode_frame(ticks: &[Tick]) -> Bytes {
    let mut buf = Vec::with_capacity(ticks.len() * 256 + 2);
    buf.push(b'[');
    for (i, t) in ticks.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        t.write_json(Kind::Tick, &mut buf);
    }
    buf.push(b']');
    Bytes::from(buf)
}
