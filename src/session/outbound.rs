//! The outbound side of a session: what the transport's writer sends, and when.
//!
//! [`Outbound::next`] waits for whatever comes first — queued messages (replies, ticks,
//! and for a subscription that fell behind its `gap` and newest tick), the heartbeat,
//! the silence deadline, the token's expiry, an overflow under the `disconnect` policy,
//! a close asked for by the inbound side, or the node shutting down — and tells the
//! transport what to write. The deadlines are looked at before the queue, so a client
//! that is always behind still gets its heartbeats and its close on time. The
//! transport only encodes and writes.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use super::plan::{Due, Plan};
use crate::hub::{Alarm, Hub, Outbox, Receiver};
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

/// What [`Outbound::poll_next`] found: [`Out`] without the messages it borrows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Messages, in [`Outbound::out`].
    Messages,
    /// A heartbeat.
    Heartbeat,
    /// The close.
    Close(CloseCode, &'static str),
}

/// The outbound side of one session, driven by its transport's writer.
pub struct Outbound {
    node: Arc<Node>,
    rx: Receiver,
    transport: Transport,
    /// How the session's ticks and snapshots are encoded (for catching up).
    encoding: Encoding,
    /// When the next heartbeat is due.
    next_beat: tokio::time::Instant,
    expires: Option<tokio::time::Instant>,
    /// The session's alarm in the node's one timer ([`Alarms`](crate::hub::Alarms)),
    /// set while it waits to whichever of the heartbeat, the silence deadline, the
    /// token's expiry and the planned close comes first.
    alarm: Alarm,
    batch: Vec<Bytes>,
    /// The `welcome` (queued first) has been taken.
    started: bool,
    /// The close to return once what was queued before it has been sent.
    closing: Option<(CloseCode, &'static str)>,
    /// A close the server planned (drain, lifetime), told first with `reconnect`.
    /// Boxed: most connections never have one.
    plan: Option<Box<Plan>>,
    /// The node's drain has been seen.
    drained: bool,
    /// Closed for silence: the client is taken for gone.
    gone: bool,
}

/// What makes a writer give up a write it is blocked in: the session was evicted for
/// the node's output bound, or the client fell silent past its deadline (a client that
/// does not read a frame does not answer Pings either).
pub struct Watch {
    outbox: Arc<Outbox>,
    /// Heartbeat + grace, on a transport that watches silence.
    silence: Option<Duration>,
}

/// How often a writer blocked in a write looks whether its session was evicted.
const EVICTION_CHECK: Duration = Duration::from_millis(100);

impl Watch {
    /// Whether the write in progress should be given up now.
    pub fn give_up(&self) -> bool {
        give_up(&self.outbox, self.silent_at())
    }

    /// When to look again at [`Watch::give_up`] while a write is blocked.
    pub fn next_look(&self) -> tokio::time::Instant {
        next_look(self.silent_at())
    }

    fn silent_at(&self) -> Option<tokio::time::Instant> {
        Some(self.outbox.life().last_heard() + self.silence?)
    }
}

/// Whether a write blocked now is given up: the session was evicted, or its client has
/// been silent since `silent_at`.
fn give_up(outbox: &Outbox, silent_at: Option<tokio::time::Instant>) -> bool {
    outbox.evicted() || silent_at.is_some_and(|at| at <= tokio::time::Instant::now())
}

/// When a writer blocked in a write looks at [`give_up`] again.
fn next_look(silent_at: Option<tokio::time::Instant>) -> tokio::time::Instant {
    let soon = tokio::time::Instant::now() + EVICTION_CHECK;
    silent_at.map_or(soon, |at| at.min(soon))
}

impl Outbound {
    // Everything a session's outbound side holds is made by `Session::with_encoding`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        node: Arc<Node>,
        rx: Receiver,
        outbox: Arc<Outbox>,
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
        let cfg = &node.settings;
        let plan =
            Plan::lifetime(now, cfg.max_connection_lifetime, cfg.reconnect_notice).map(Box::new);
        outbox.first(welcome);
        Outbound {
            node,
            rx,
            transport,
            encoding,
            next_beat,
            expires: expires_in.map(|d| now + d),
            alarm: Alarm::default(),
            batch: Vec::new(),
            started: false,
            closing: None,
            plan,
            drained: false,
            gone: false,
        }
    }

    /// The session's outbound queue (a writer counts its frames against the budget
    /// with it).
    pub fn outbox(&self) -> &Arc<Outbox> {
        self.rx.outbox()
    }

    /// What makes a writer give up a write it is blocked in (see [`Watch`]).
    pub fn watch(&self) -> Watch {
        let cfg = &self.node.settings;
        Watch {
            outbox: self.outbox().clone(),
            silence: self
                .transport
                .closes_when_silent()
                .then(|| cfg.heartbeat + cfg.heartbeat_grace),
        }
    }

    /// Whether the write a writer is blocked in should be given up now (as
    /// [`Watch::give_up`], for a writer that holds the outbound side itself).
    pub fn give_up(&self) -> bool {
        give_up(self.outbox(), self.silent_at())
    }

    /// When to look again at [`Outbound::give_up`] while a write is blocked.
    pub fn next_look(&self) -> tokio::time::Instant {
        next_look(self.silent_at())
    }

    /// How long one frame's write may take (`--send-timeout`).
    pub fn send_timeout(&self) -> Duration {
        self.node.settings.send_timeout
    }

    /// Whether the session closed because the client fell silent: it is taken for
    /// gone, and its connection is reset rather than closed gracefully.
    pub fn peer_gone(&self) -> bool {
        self.gone
    }

    /// Whether messages are waiting to be written.
    #[cfg(test)]
    pub fn has_queued(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Waits for what the transport must write next. Cancel-safe: a transport may drop
    /// the future (to answer a Ping, say) and call again without losing anything.
    /// After it returns [`Out::Close`], the transport writes the close and stops.
    pub async fn next(&mut self) -> Out<'_> {
        let next = std::future::poll_fn(|cx| self.poll_next(cx)).await;
        self.out(next)
    }

    /// The messages of the last [`Next::Messages`], until the next
    /// [`Outbound::poll_next`].
    pub fn batch(&self) -> &[Bytes] {
        &self.batch
    }

    /// What [`Outbound::poll_next`] found, as [`Outbound::next`] returns it.
    pub fn out(&self, next: Next) -> Out<'_> {
        match next {
            Next::Messages => Out::Messages(self.batch()),
            Next::Heartbeat => Out::Heartbeat,
            Next::Close(code, reason) => Out::Close(code, reason),
        }
    }

    /// [`Outbound::next`] as a poll, for a writer that is a state machine of its own:
    /// what is due now, or `Pending` with the task woken when something may be (its
    /// queue, its timer, the node's drain or shutdown — [`Node::drain`]). The messages
    /// of [`Next::Messages`] are in [`Outbound::out`] until the next call. A session
    /// that waits holds no batch and no queue room.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        self.batch.clear();
        if self.batch.capacity() > KEEP_BATCH {
            // A burst's batch is not kept by a connection that goes back to idle.
            self.batch = Vec::new();
        }
        if !self.started {
            // The `welcome` heads the queue: it goes first, whatever else is due.
            self.started = true;
            self.rx.take(&mut self.batch, MAX_BATCH);
            #[cfg(feature = "fault-hooks")]
            super::fault::writer(&self.node.settings, &self.batch);
            return Poll::Ready(Next::Messages);
        }
        loop {
            self.batch.clear();
            if let Some((code, reason)) = self.forced_close() {
                return Poll::Ready(Next::Close(code, reason));
            }
            if let Some(close) = self.outbox().life().take_close() {
                // What the session queued before closing (errors, replies) goes first.
                self.rx.take(&mut self.batch, usize::MAX);
                if self.batch.is_empty() {
                    return Poll::Ready(Next::Close(close.0, close.1));
                }
                self.closing = Some(close);
                return Poll::Ready(Next::Messages);
            }
            // The clock before the queue: a backlog delays no heartbeat and no close.
            let now = tokio::time::Instant::now();
            match self.planned(now) {
                Some(Due::Close(code, reason)) => return Poll::Ready(Next::Close(code, reason)),
                Some(Due::Notice(msg)) => {
                    self.batch.push(msg);
                    return Poll::Ready(Next::Messages);
                }
                None => {}
            }
            if let Some(due) = self.due(now) {
                return Poll::Ready(due);
            }
            self.rx.take(&mut self.batch, MAX_BATCH);
            if self.outbox().overflowed() {
                return Poll::Ready(Next::Close(CloseCode::SlowConsumer, "slow consumer"));
            }
            if self.outbox().has_lagging() && self.rx.is_empty() {
                for (slot, behind) in self.outbox().take_lagging() {
                    Hub::catch_up(
                        &slot,
                        &behind,
                        self.outbox().id(),
                        self.encoding,
                        &mut self.batch,
                    );
                }
            }
            if !self.batch.is_empty() {
                #[cfg(feature = "fault-hooks")]
                super::fault::writer(&self.node.settings, &self.batch);
                return Poll::Ready(Next::Messages);
            }
            // Nothing to send: wait for the queue or the next deadline. The node's drain
            // and shutdown wake the queue (`Node::drain`).
            // (Nothing was due at `now`, so the deadline is after it; one passed since
            // rings at once.)
            let wake_at = self.next_deadline();
            let alarms = &self.node.alarms;
            self.alarm = alarms.set(self.alarm, wake_at, self.rx.outbox());
            if self.rx.poll_woken(cx).is_ready() {
                continue;
            }
            // Idle: no room kept for a batch, here or in the queue.
            self.batch = Vec::new();
            self.rx.release_room();
            return Poll::Pending;
        }
    }

    /// A close due before anything else: one the session set up (after flushing what
    /// it had queued), the node's shutdown, or an eviction for the node's output bound.
    fn forced_close(&mut self) -> Option<(CloseCode, &'static str)> {
        if let Some(close) = self.closing.take() {
            return Some(close);
        }
        if self.node.shutdown.is_cancelled() {
            return Some((CloseCode::GoingAway, "server shutting down"));
        }
        if self.outbox().evicted() {
            return Some((CloseCode::SlowConsumer, "slow consumer: node output bound"));
        }
        None
    }

    /// What the planned close says is due at `now`; a drain begun since the last look
    /// plans one (unless the lifetime's closes sooner).
    fn planned(&mut self, now: tokio::time::Instant) -> Option<Due> {
        if !self.drained && self.node.draining.is_cancelled() {
            self.drained = true;
            let drain = Plan::shutdown(now, self.node.settings.reconnect_notice);
            self.plan = Some(Box::new(drain.first(self.plan.as_deref().copied())));
        }
        self.plan.as_mut()?.due(now)
    }

    /// What the clock says is due at `now`, whatever is queued: the token's expiry and
    /// the silence deadline close at once (what is still queued is not sent: the token
    /// no longer allows it, or the client is gone); a heartbeat goes out between two
    /// batches, so the messages stay in order (at most one batch's write late).
    fn due(&mut self, now: tokio::time::Instant) -> Option<Next> {
        if self.expires.is_some_and(|at| at <= now) {
            return Some(Next::Close(CloseCode::Policy, "token expired"));
        }
        if self.silent_at().is_some_and(|at| at <= now) {
            self.gone = true;
            return Some(Next::Close(CloseCode::Normal, "heartbeat timeout"));
        }
        if self.next_beat <= now {
            self.next_beat = now + self.node.settings.heartbeat;
            return Some(Next::Heartbeat);
        }
        None
    }

    /// When a silent client is closed, on a transport that watches silence.
    fn silent_at(&self) -> Option<tokio::time::Instant> {
        let cfg = &self.node.settings;
        self.transport
            .closes_when_silent()
            .then(|| self.outbox().life().last_heard() + cfg.heartbeat + cfg.heartbeat_grace)
    }

    /// The first of the heartbeat, the silence deadline, the token's expiry and the
    /// planned close's next step.
    fn next_deadline(&self) -> tokio::time::Instant {
        let planned = self.plan.as_deref().map(Plan::deadline);
        [self.silent_at(), self.expires, planned]
            .into_iter()
            .flatten()
            .fold(self.next_beat, |a, b| a.min(b))
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        self.node.alarms.clear(self.alarm, self.rx.outbox());
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
            .command(Command::Subscribe(crate::protocol::Subscribe {
                id: Some(1),
                symbols: vec!["AAPL".into()],
                ..Default::default()
            }))
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

    /// A session whose queue never empties: ticks keep coming faster than they are
    /// taken. Returns what it was told to write, with the (paused) time of each,
    /// until the close.
    async fn under_backlog(
        node: &Arc<Node>,
        claims: Option<Box<crate::auth::Claims>>,
    ) -> Vec<(u64, String)> {
        let (mut session, mut out) = Session::new(node.clone(), claims, Transport::WebSocket);
        let t0 = tokio::time::Instant::now();
        session
            .command(Command::Subscribe(crate::protocol::Subscribe {
                id: Some(1),
                symbols: vec!["AAPL".into()],
                snapshot: false,
                ..Default::default()
            }))
            .await;
        let mut seq = 0;
        let mut seen = Vec::new();
        while seen.len() < 1_000 {
            for _ in 0..MAX_BATCH + 2 {
                seq += 1;
                node.bus.publish(tick(seq)).unwrap();
            }
            tokio::time::advance(Duration::from_millis(10)).await;
            let got = types(out.next().await);
            assert!(out.has_queued(), "the backlog never empties");
            let ms = t0.elapsed().as_millis() as u64;
            let closed = got[0].starts_with("close");
            seen.push((ms, got[0].clone()));
            if closed {
                session.finish().await;
                return seen;
            }
        }
        panic!("no close in 10 s: {:?}", &seen[..20]);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_and_closes_are_on_time_under_a_permanent_backlog() {
        // Silent client: pinged every 100 ms, closed at 150 ms although never idle.
        let node = node();
        let seen = under_backlog(&node, None).await;
        let beats: Vec<u64> = seen
            .iter()
            .filter(|(_, t)| t == "heartbeat")
            .map(|(ms, _)| *ms)
            .collect();
        assert!(!beats.is_empty() && beats[0] <= 110, "{seen:?}");
        let (at, close) = seen.last().unwrap();
        assert_eq!(close, "close 1000 heartbeat timeout");
        assert!((150..=160).contains(at), "closed at {at} ms");

        // A token that expires in 2 s closes then, with heartbeats every 500 ms before.
        let settings = Settings {
            heartbeat: Duration::from_millis(500),
            heartbeat_grace: Duration::from_secs(3600),
            queue: 16_384,
            ..Settings::default()
        };
        let hub = Arc::new(Hub::new(["AAPL".into()], 16));
        let bus = Arc::new(LocalBus::new(hub.clone()));
        let node = Node::new(settings, hub, bus, None);
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 2;
        let claims = crate::auth::Claims {
            sub: "t".into(),
            exp,
            symbols: None,
            roles: None,
        };
        let seen = under_backlog(&node, Some(Box::new(claims))).await;
        let mut beats: Vec<u64> = seen
            .iter()
            .filter(|(_, t)| t == "heartbeat")
            .map(|(ms, _)| *ms)
            .collect();
        beats.insert(0, 0);
        beats.push(2_000);
        assert!(
            beats.windows(2).all(|w| w[1] - w[0] <= 510),
            "heartbeats at {beats:?} ms"
        );
        let (at, close) = seen.last().unwrap();
        assert_eq!(close, "close 1008 token expired");
        assert!((2_000..=2_010).contains(at), "closed at {at} ms");
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
