//! A session is one client, whatever the transport carrying it: its subscriptions, its
//! commands, its inbound limits, and (in [`outbound`]) the life of its outbound side —
//! the bounded queue, heartbeats, the silence deadline, token expiry, catching up a
//! subscription that fell behind, and the close code when it ends.
//!
//! A transport drives a session through a small interface: it hands each whole inbound
//! message to [`Session::receive`] (and calls [`Session::heard`] for any sign of life),
//! and writes what [`Outbound::next`] returns: messages to send, a heartbeat, or the
//! close. Replies go into the same queue as the ticks, so they are ordered with them.

#[cfg(feature = "fault-hooks")]
mod fault;
pub mod outbound;
pub mod plan;
mod subscribe;

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::auth::Claims;
pub use crate::hub::Life;
use crate::hub::Outbox;
use crate::node::Node;
use crate::protocol::command::Report;
use crate::protocol::{
    self, ChannelName, CloseCode, Command, CommandError, Encoding, ErrorCode, ServerMsg, Stream,
};
pub use outbound::{Next, Out, Outbound, Transport, Watch};
use subscribe::Subs;

/// What the transport should do after a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Stop reading: the session closes with this code and reason (the outbound side
    /// sends what is queued, then the close).
    Close(CloseCode, &'static str),
}

/// One whole inbound message, as a transport hands it over.
pub enum Inbound<'a> {
    /// A text message; its bytes are parsed in place.
    Text(&'a mut [u8]),
    /// A binary message: commands are text only.
    Binary,
}

/// A token bucket: `rate` tokens per second, at most `burst` saved.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            at: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One connected client: its commands, limits and subscriptions.
pub struct Session {
    node: Arc<Node>,
    outbox: Arc<Outbox>,
    /// Its subscriptions, each a symbol on a stream of a channel.
    subs: Subs,
    /// The patterns it holds, by stream.
    patterns: BTreeSet<(Stream, String)>,
    bucket: TokenBucket,
    strikes: u32,
    claims: Option<Box<Claims>>,
    /// How its ticks and snapshots are encoded.
    encoding: Encoding,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Session {
    /// A new session on `node` over `transport`, with its `welcome` queued; returns it
    /// with its outbound side, which the transport's writer drives. `claims` are the
    /// client's token claims when the node has auth enabled. Ticks and snapshots are
    /// JSON; see [`Session::with_encoding`].
    pub fn new(
        node: Arc<Node>,
        claims: Option<Box<Claims>>,
        transport: Transport,
    ) -> (Session, Outbound) {
        Session::with_encoding(node, claims, transport, Encoding::Json)
    }

    /// A new session whose ticks and snapshots are sent in `encoding` (announced in its
    /// `welcome`); otherwise as [`Session::new`].
    pub fn with_encoding(
        node: Arc<Node>,
        claims: Option<Box<Claims>>,
        transport: Transport,
        encoding: Encoding,
    ) -> (Session, Outbound) {
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cfg = &node.settings;
        let (outbox, rx) = Outbox::in_budget(id, cfg.queue, cfg.slow_policy, node.budget.clone());
        let bucket = TokenBucket::new(cfg.rate_limit, cfg.rate_burst);
        let expires = claims.as_ref().map(|c| c.remaining());
        let session = Session {
            node: node.clone(),
            outbox: outbox.clone(),
            subs: Subs::default(),
            patterns: BTreeSet::new(),
            bucket,
            strikes: 0,
            claims,
            encoding,
        };
        let welcome = session.welcome();
        let out = Outbound::new(node, rx, outbox, transport, encoding, expires, welcome);
        (session, out)
    }

    /// This session's id, unique within the process.
    pub fn id(&self) -> u64 {
        self.outbox.id()
    }

    /// The `welcome` message.
    fn welcome(&self) -> Bytes {
        let cfg = &self.node.settings;
        // The id sent in `welcome`: 128 random bits, sent as hex (an opaque label, not a
        // secret; nothing else refers to it, so it is not kept). ThreadRng is a CSPRNG
        // seeded from the OS: one id says nothing of another.
        let label = format!("{:032x}", rand::random::<u128>());
        ServerMsg::Welcome {
            node: &cfg.node,
            session: &label,
            heartbeat_ms: cfg.heartbeat.as_millis() as u64,
            encoding: self.encoding.as_str(),
            limits: &protocol::Limits {
                max_symbols: cfg.max_symbols,
                max_msg_bytes: cfg.max_msg_bytes,
                rate_per_s: cfg.rate_limit,
            },
        }
        .to_json()
    }

    /// The client showed a sign of life (any frame, a Pong included): the silence
    /// deadline moves.
    pub fn heard(&self) {
        self.outbox.life().heard();
    }

    /// Asks the outbound side to send what is queued, then close with `code`.
    pub fn close(&self, code: CloseCode, reason: &'static str) -> Flow {
        self.outbox.life().close(code, reason);
        self.outbox.wake_writer();
        Flow::Close(code, reason)
    }

    /// Handles one whole inbound message: counts it as a sign of life, applies the
    /// inbound rate limit, then runs it as a command (replies are queued).
    pub async fn receive(&mut self, msg: Inbound<'_>) -> Flow {
        self.heard();
        #[cfg(feature = "fault-hooks")]
        if let Inbound::Text(text) = &msg {
            fault::reader(&self.node.settings, text);
        }
        if !self.bucket.take(Instant::now()) {
            crate::metrics::global()
                .rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.strikes += 1;
            if self.strikes > self.node.settings.rate_strikes {
                return self.close(CloseCode::Policy, "rate limit exceeded repeatedly");
            }
            let err = CommandError {
                id: None,
                code: ErrorCode::RateLimited,
                message: format!(
                    "more than {} messages per second; message dropped",
                    self.node.settings.rate_limit
                ),
            };
            self.reply(protocol::error_json(&err, &[], ChannelName::Ticks))
                .await;
            return Flow::Continue;
        }
        self.strikes = 0;
        match msg {
            Inbound::Text(buf) => match protocol::parse_command(buf) {
                Ok(cmd) => self.command(cmd).await,
                Err(e) => {
                    self.reply(protocol::error_json(&e, &[], ChannelName::Ticks))
                        .await
                }
            },
            Inbound::Binary => {
                self.refuse("binary frames are not accepted; send commands as JSON text")
                    .await
            }
        }
        Flow::Continue
    }

    /// Answers a message that is not a command (bad UTF-8, a binary frame):
    /// `bad_request`, and the connection goes on.
    async fn refuse(&mut self, message: &str) {
        let err = CommandError {
            id: None,
            code: ErrorCode::BadRequest,
            message: message.to_owned(),
        };
        self.reply(protocol::error_json(&err, &[], ChannelName::Ticks))
            .await;
    }

    async fn reply(&self, msg: Bytes) {
        self.outbox.send(msg).await;
    }

    /// Runs one command; replies are queued. Transports without a command channel (SSE)
    /// call this with the command their request stands for.
    pub async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe(sub) => self.subscribe(sub).await,
            Command::Unsubscribe {
                id,
                symbols,
                channel,
            } => self.unsubscribe(id, symbols, channel).await,
            Command::List { id, channel } => self.list(id, channel).await,
            Command::Ping { id } => self.reply(ServerMsg::pong(id)).await,
            Command::Report(r) => self.report(&r).await,
        }
    }

    /// Takes a client's latency report into the node's metrics.
    async fn report(&self, r: &Report) {
        crate::metrics::global().client_report(r.p50_ms, r.p99_ms, r.max_ms, r.count);
        self.reply(ServerMsg::Reported { id: r.id }.to_json()).await;
    }

    /// Ends the session: every subscription is removed and its memory freed (dropping
    /// the session does the same).
    pub async fn finish(self) {
        drop(self);
    }
}

/// Counts and logs a panic of a session's code, caught by its transport (which then
/// closes that connection alone with 1011).
pub fn panicked(panic: &(dyn std::any::Any + Send)) {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "a connection's code panicked; closing it with 1011");
    let metrics = crate::metrics::global();
    metrics
        .panics
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    metrics.disconnected(CloseCode::Internal.code());
}

impl Drop for Session {
    fn drop(&mut self) {
        self.release_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::Symbol;
    use std::collections::HashMap;
    use std::time::Duration;

    #[test]
    fn token_bucket_refills_at_rate_up_to_burst() {
        let mut b = TokenBucket::new(10, 5);
        let t0 = Instant::now();
        assert!((0..5).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 5);
    }

    /// A bus whose watch and history wait for a permit each, as a slow Redis would; it
    /// records what it was asked.
    struct Slow {
        hub: Arc<crate::hub::Hub>,
        watch: tokio::sync::Semaphore,
        history: tokio::sync::Semaphore,
        calls: parking_lot::Mutex<Vec<String>>,
    }

    impl crate::bus::Bus for Slow {
        fn publish(&self, t: crate::tick::Tick) -> Result<(), crate::bus::BusError> {
            self.hub.publish(t);
            Ok(())
        }
        fn watch<'a>(
            &'a self,
            s: &'a [Symbol],
        ) -> crate::bus::BoxFuture<'a, Result<(), crate::bus::BusError>> {
            Box::pin(async move {
                let _p = self.watch.acquire().await.unwrap();
                self.calls.lock().push(format!("watch {}", s.join(",")));
                Ok(())
            })
        }
        fn unwatch<'a>(&'a self, s: &'a [Symbol]) -> crate::bus::BoxFuture<'a, ()> {
            Box::pin(async move {
                self.calls.lock().push(format!("unwatch {}", s.join(",")));
            })
        }
        fn history<'a>(
            &'a self,
            w: &'a [(Symbol, u64)],
        ) -> crate::bus::BoxFuture<'a, Result<Vec<Vec<crate::tick::Tick>>, crate::bus::BusError>>
        {
            Box::pin(async move {
                let _p = self.history.acquire().await.unwrap();
                Ok(vec![Vec::new(); w.len()])
            })
        }
    }

    fn slow_node(queue: usize) -> (Arc<Node>, Arc<Slow>) {
        let hub = Arc::new(crate::hub::Hub::new(["AAPL".into(), "MSFT".into()], 16));
        let bus = Arc::new(Slow {
            hub: hub.clone(),
            watch: tokio::sync::Semaphore::new(0),
            history: tokio::sync::Semaphore::new(0),
            calls: Default::default(),
        });
        let settings = crate::config::Settings {
            queue,
            ..Default::default()
        };
        (Node::new(settings, hub, bus.clone(), None), bus)
    }

    fn subscribe(resume: bool) -> Command {
        let mut from = HashMap::new();
        if resume {
            let at = protocol::ResumeFrom {
                epoch: Some("e".into()),
                seq: 1,
            };
            from.insert("AAPL".to_owned(), at);
        }
        Command::Subscribe(protocol::Subscribe {
            id: Some(1),
            symbols: vec!["AAPL".into(), "MSFT".into()],
            resume: from,
            ..Default::default()
        })
    }

    /// Polls `fut` until it has waited a while without finishing: it is parked at an
    /// await.
    async fn parked(fut: &mut Pin<Box<impl std::future::Future<Output = ()>>>, at: &str) {
        let r = tokio::time::timeout(Duration::from_millis(50), fut.as_mut()).await;
        assert!(r.is_err(), "{at}: the subscribe must be waiting");
    }

    use std::pin::Pin;

    /// Whatever await a subscribe is dropped at — the bus's watch, the history fetched
    /// for a resume, room in the queue for the reply — the session gives back all it
    /// took: no local holder is left, the hub has no subscriber and the bus unwatches.
    #[tokio::test(start_paused = true)]
    async fn a_session_dropped_at_any_await_of_a_subscribe_leaves_nothing() {
        for at in ["watch", "history", "room"] {
            let (node, bus) = slow_node(if at == "room" { 1 } else { 64 });
            if at != "watch" {
                bus.watch.add_permits(100);
            }
            let (mut session, out) = Session::new(node.clone(), None, Transport::WebSocket);
            if at == "room" {
                // The `welcome`, queued first and not taken, fills the queue: the
                // `subscribed` reply waits for room.
                use futures_util::FutureExt;
                assert!(out.has_queued());
                let more = session.outbox.send(Bytes::from_static(b"{}"));
                assert!(more.now_or_never().is_none(), "the queue is full");
            } else {
                node.hub.publish(crate::hub::conflation_tests::tick("e", 5));
            }
            {
                let mut fut = Box::pin(session.command(subscribe(at == "history")));
                parked(&mut fut, at).await;
                assert_eq!(
                    node.interest().count("AAPL"),
                    1,
                    "{at}: taken while waiting"
                );
            }
            drop(session);
            drop(out);
            bus.watch.add_permits(100);
            bus.history.add_permits(100);
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(node.interest().count("AAPL"), 0, "{at}");
            assert_eq!(node.interest().watched(), 0, "{at}");
            assert_eq!(node.hub.subscriber_count("AAPL"), 0, "{at}");
            assert!(!node.interest().on_bus("AAPL"), "{at}: unwatched");
            let calls = bus.calls.lock().clone();
            assert_eq!(
                calls.last().map(String::as_str),
                Some("unwatch AAPL,MSFT"),
                "{at}: {calls:?}"
            );
        }
    }
}
