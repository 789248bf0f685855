//! The outbound side of a session: what the transport's writer sends, and when.
//!
//! [`Outbound::next`] waits for whatever comes first — queued messages (replies, ticks,
//! and for a subscription that fell behind its `gap` and newest tick), the heartbeat,
//! the silence deadline, the token's expiry, an overflow under the `disconnect` policy,
//! a close asked for by the inbound side, or the node shutting down — and tells the
//! transport what to write. The transport only encodes and writes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::hub::{Hub, Outbox, Receiver};
use crate::node::Node;
use crate::protocol::{CloseCode, Encoding};

/// Most messages taken from the queue for one write.
pub const MAX_BATCH: usize = 512;

/// The most messages' room the batch keeps between turns: past it, the room is given
/// back once written.
const KEEP_BATCH: usize = 4;

/// Which transport carries a session, and what that changes in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket: the client answers Pings, so a silent connection is closed after
    /// heartbeat + grace.
    WebSocket,
    /// Server-Sent Events: one-way; heartbeats are comments, and a dead client shows as
    /// a failed write, not as silence.
    Sse,
}

impl Transport {
    fn closes_when_silent(self) -> bool {
        self == Transport::WebSocket
    }
}

/// What the transport should write next.
#[derive(Debug)]
pub enum Out<'a> {
    /// These messages, in order, as few writes as the transport allows (one WebSocket
    /// frame holding a JSON array; for a binary session, consecutive records in one
    /// binary frame and consecutive JSON messages in one text frame).
    Messages(&'a [Bytes]),
    /// A heartbeat: a WebSocket Ping, an SSE comment.
    Heartbeat,
    /// The close, with this code and reason; nothing more is sent after it.
    Close(CloseCode, &'static str),
}

/// What the inbound and outbound sides of a session share: when the client was last
/// heard from, and a close the inbound side asked for.
#[derive(Debug)]
pub struct Life {
    start: Instant,
    last_heard_ms: AtomicU64,
    closing: Mutex<Option<(CloseCode, &'static str)>>,
}

impl Life {
    /// Heard from just now.
    pub fn new() -> Life {
        Life {
            start: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            closing: Mutex::new(None),
        }
    }

    /// The client showed a sign of life.
    pub fn heard(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_heard_ms.store(ms, Ordering::Relaxed);
    }

    fn last_heard(&self) -> tokio::time::Instant {
        let ms = self.last_heard_ms.load(Ordering::Relaxed);
        tokio::time::Instant::from_std(self.start + Duration::from_millis(ms))
    }

    /// Asks the outbound side to send what is queued, then close with `code`; the
    /// caller wakes the writer ([`Outbox::wake_writer`]). The first close asked for
    /// wins.
    pub fn close(&self, code: CloseCode, reason: &'static str) {
        self.closing.lock().get_or_insert((code, reason));
    }

    fn take_close(&self) -> Option<(CloseCode, &'static str)> {
        self.closing.lock().take()
    }
}

impl Default for Life {
    fn default() -> Self {
        Life::new()
    }
}

/// The outbound side of one session, driven by its transport's writer.
pub struct Outbound {
    node: Arc<Node>,
    rx: Receiver,
    outbox: Arc<Outbox>,
    life: Arc<Life>,
    transport: Transport,
    /// How the session's ticks and snapshots are encoded (for catching up).
    encoding: Encoding,
    /// When the next heartbeat is due.
    next_beat: tokio::time::Instant,
    expires: Option<tokio::time::Instant>,
    /// The one timer of the session: set to whichever of the heartbeat, the silence
    /// deadline and the token's expiry comes first.
    timer: Pin<Box<tokio::time::Sleep>>,
    batch: Vec<Bytes>,
    /// The `welcome`, sent first.
    welcome: Option<Bytes>,
    /// The close to return once what was queued before it has been sent.
    closing: Option<(CloseCode, &'static str)>,
}

impl Outbound {
    // Everything a session's outbound side holds is made by `Session::with_encoding`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        node: Arc<Node>,
        rx: Receiver,
        outbox: Arc<Outbox>,
        life: Arc<Life>,
        transport: Transport,
        encoding: Encoding,
        expires_in: Option<Duration>,
        welcome: Bytes,
    ) -> Outbound {
        let every = node.settings.heartbeat;
        // The first heartbeat falls anywhere in the first interval, so that connections
        // opened together do not all ping at once ever after.
        let now = tokio::time::Instant::now();
        let next_beat = now + every.mul_f64(rand::random_range(0.05..=1.0));
        Outbound {
            node,
            rx,
            outbox,
            life,
            transport,
            encoding,
            next_beat,
            expires: expires_in.map(|d| now + d),
            timer: Box::pin(tokio::time::sleep_until(next_beat)),
            batch: Vec::new(),
            welcome: Some(welcome),
            closing: None,
        }
    }

    /// Whether messages are waiting to be written (a writer keeps its buffers while
    /// busy and frees them once idle).
    pub fn has_queued(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Waits for what the transport must write next. Cancel-safe: a transport may drop
    /// the future (to answer a Ping, say) and call again without losing anything.
    /// After it returns [`Out::Close`], the transport writes the close and stops.
    pub async fn next(&mut self) -> Out<'_> {
        self.batch.clear();
        if self.batch.capacity() > KEEP_BATCH {
            // A burst's batch is not kept by a connection that goes back to idle.
            self.batch = Vec::new();
        }
        if let Some(welcome) = self.welcome.take() {
            self.batch.push(welcome);
            self.rx.take(&mut self.batch, MAX_BATCH - 1);
            return Out::Messages(&self.batch);
        }
        loop {
            self.batch.clear();
            if let Some((code, reason)) = self.closing.take() {
                return Out::Close(code, reason);
            }
            if self.node.shutdown.is_cancelled() {
                return Out::Close(CloseCode::GoingAway, "server shutting down");
            }
            if let Some(close) = self.life.take_close() {
                // What the session queued before closing (errors, replies) goes first.
                self.rx.take(&mut self.batch, usize::MAX);
                if self.batch.is_empty() {
                    return Out::Close(close.0, close.1);
                }
                self.closing = Some(close);
                return Out::Messages(&self.batch);
            }
            self.rx.take(&mut self.batch, MAX_BATCH);
            if self.outbox.overflowed() {
                return Out::Close(CloseCode::SlowConsumer, "slow consumer");
            }
            if self.outbox.has_lagging() && self.rx.is_empty() {
                for (slot, behind) in self.outbox.take_lagging() {
                    Hub::catch_up(&slot, &behind, self.encoding, &mut self.batch);
                }
            }
            if !self.batch.is_empty() {
                return Out::Messages(&self.batch);
            }
            // Nothing to send: what the clock says.
            let now = tokio::time::Instant::now();
            if self.expires.is_some_and(|at| at <= now) {
                return Out::Close(CloseCode::Policy, "token expired");
            }
            let cfg = &self.node.settings;
            let silent_at = self.life.last_heard() + cfg.heartbeat + cfg.heartbeat_grace;
            let watch_silence = self.transport.closes_when_silent();
            if watch_silence && silent_at <= now {
                return Out::Close(CloseCode::Normal, "heartbeat timeout");
            }
            if self.next_beat <= now {
                self.next_beat = now + cfg.heartbeat;
                return Out::Heartbeat;
            }
            let mut wake_at = self.next_beat;
            if watch_silence {
                wake_at = wake_at.min(silent_at);
            }
            if let Some(at) = self.expires {
                wake_at = wake_at.min(at);
            }
            if self.timer.deadline() != wake_at {
                self.timer.as_mut().reset(wake_at);
            }
            tokio::select! {
                biased;
                _ = self.node.shutdown.cancelled() => {}
                _ = self.rx.woken() => {}
                _ = self.timer.as_mut() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::LocalBus;
    use crate::config::Settings;
    use crate::protocol::Command;
    use crate::session::Session;
    use crate::tick::Tick;

    fn node() -> Arc<Node> {
        let settings = Settings {
            heartbeat: Duration::from_millis(100),
            heartbeat_grace: Duration::from_millis(50),
            ..Settings::default()
        };
        let hub = Arc::new(Hub::new(["AAPL".into()], 16));
        let bus = Arc::new(LocalBus::new(hub.clone()));
        Node::new(settings, hub, bus, None)
    }

    fn types(out: Out<'_>) -> Vec<String> {
        match out {
            Out::Messages(m) => m
                .iter()
                .map(|b| {
                    let v: serde_json::Value = serde_json::from_slice(b).unwrap();
                    v["type"].as_str().unwrap().to_owned()
                })
                .collect(),
            Out::Heartbeat => vec!["heartbeat".into()],
            Out::Close(code, reason) => vec![format!("close {} {reason}", code.code())],
        }
    }

    fn tick(seq: u64) -> Tick {
        crate::hub::conflation_tests::tick("e", seq)
    }

    /// A session driven without any transport: what to send, and when, comes from the
    /// session alone.
    #[tokio::test(start_paused = true)]
    async fn the_session_decides_what_to_send_heartbeats_and_the_silence_close() {
        let node = node();
        let (mut session, mut out) = Session::new(node.clone(), None, Transport::WebSocket);
        assert_eq!(types(out.next().await), ["welcome"]);
        session
            .command(Command::Subscribe {
                id: Some(1),
                symbols: vec!["AAPL".into()],
                snapshot: true,
                resume: Default::default(),
            })
            .await;
        node.bus.publish(tick(1)).unwrap();
        node.bus.publish(tick(2)).unwrap();
        assert_eq!(types(out.next().await), ["subscribed", "snapshot", "tick"]);
        // Nothing queued: the next thing is a heartbeat, then, with the client silent,
        // the close after heartbeat + grace.
        assert_eq!(types(out.next().await), ["heartbeat"]);
        let mut seen = Vec::new();
        loop {
            let t = types(out.next().await);
            let done = t[0].starts_with("close");
            seen.push(t.join(","));
            if done {
                break;
            }
        }
        assert_eq!(seen.last().unwrap(), "close 1000 heartbeat timeout");
        session.finish().await;
        assert_eq!(node.hub.subscriber_count("AAPL"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn over_sse_silence_closes_nothing_and_an_inbound_close_flushes_first() {
        let node = node();
        let (session, mut out) = Session::new(node.clone(), None, Transport::Sse);
        assert_eq!(types(out.next().await), ["welcome"]);
        for _ in 0..5 {
            assert_eq!(types(out.next().await), ["heartbeat"]);
        }
        session
            .outbox
            .send(crate::protocol::ServerMsg::pong(Some(3)))
            .await;
        session.close(CloseCode::Policy, "enough");
        assert_eq!(types(out.next().await), ["pong"]);
        assert_eq!(types(out.next().await), ["close 1008 enough"]);
    }
}
