//! The node: what one server process shares between its connections, and the
//! coordinator of their subscriptions.
//!
//! Sessions ask the node for subscriptions, each a symbol on a stream of a channel
//! ([`Key`]); the node counts local interest per symbol ([`subscriptions`]: the one
//! source of truth of what the node wants, one count per subscription), keeps the bus
//! watching exactly the symbols that have a local holder, fetches what a resuming client
//! lacks from the bus's history, and registers the subscriber with the hub. Counts are
//! taken and given back synchronously, so a session stopped at any await of a
//! subscribe leaves nothing behind. A watch that fails leaves the hub untouched and the
//! session gets the error to answer its client with. Which channels are served is
//! decided here ([`Node::serves_channel`]). Interest is counted per bus topic: a
//! symbol's ticks (the `ticks` and `candles` channels) and its book are watched apart.

pub mod subscriptions;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::bus::{Bus, BusError, Topic};
use crate::config::Settings;
use crate::hub::book::{BookBase, BookStart};
use crate::hub::candles::Interval;
use crate::hub::{Alarms, Behind, Budget, Hub, Outbox, Start};
use crate::protocol::{Channel, ResumeFrom, Stream};
use crate::tick::{Symbol, Tick};
use subscriptions::{Interest, Ticket};

/// Settings, hub, bus and the shutdown signal of one node.
pub struct Node {
    /// Resolved settings.
    pub settings: Settings,
    /// The registry of symbols and local subscribers.
    pub hub: Arc<Hub>,
    /// Where ticks come from and go to.
    pub bus: Arc<dyn Bus>,
    /// Cancelled when the node begins to drain ([`Node::drain`]): it stops accepting,
    /// and its sessions send `reconnect` and close after the notice.
    pub draining: CancellationToken,
    /// Cancelled when the node shuts down ([`Node::shut_down`]): what is still open
    /// closes now.
    pub shutdown: CancellationToken,
    /// The node-wide bound on buffered output, and its count.
    pub budget: Arc<Budget>,
    /// The one timer of every waiting session's next deadline.
    pub alarms: Arc<Alarms>,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Connections open now.
    pub connections: AtomicU64,
    /// Token checking, when auth is enabled.
    pub auth: Option<Auth>,
    /// Counters of the publisher endpoint.
    pub publish: crate::feed::ingest::PublishStats,
    /// Local subscribers per symbol.
    interest: Arc<Interest>,
}

/// One subscription of a session: a symbol on one stream of a channel.
pub type Key = (Stream, Symbol);

/// What a stream is made from on the bus: candles from ticks, the book from books.
pub fn topic(stream: Stream) -> Topic {
    match stream {
        Stream::Ticks | Stream::Candles(_) => Topic::Ticks,
        Stream::Book => Topic::Book,
    }
}

/// One symbol a session wants, and how its stream starts.
pub struct Want {
    /// The symbol (one the hub serves).
    pub symbol: Symbol,
    /// The channel, with its options (the book's depth).
    pub channel: Channel,
    /// The subscription's catch-up mark.
    pub behind: Behind,
    /// Snapshot, or the position to resume from.
    pub start: Start,
    /// The session already holds the symbol: its stream restarts from `start` (or
    /// only changes its pace), and local interest does not change.
    pub held: bool,
}

impl Node {
    /// A node over `hub` and `bus`; starts the task that keeps the bus in step with the
    /// node's interest (on the current tokio runtime).
    pub fn new(
        settings: Settings,
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        auth: Option<Auth>,
    ) -> Arc<Node> {
        let interest = Arc::new(Interest::new(&hub.symbols()));
        let shutdown = CancellationToken::new();
        tokio::spawn(
            interest
                .clone()
                .reconcile(bus.clone(), shutdown.child_token()),
        );
        tokio::spawn(hub.clone().pace(shutdown.child_token()));
        let budget = Budget::new(
            settings.max_outbound_bytes,
            settings.outbound_floor,
            settings.slow_policy,
        );
        tokio::spawn(budget.clone().enforce(hub.clone(), shutdown.child_token()));
        let alarms = Alarms::new();
        tokio::spawn(alarms.clone().run(shutdown.child_token()));
        Arc::new(Node {
            settings,
            hub,
            bus,
            draining: shutdown.child_token(),
            shutdown,
            budget,
            alarms,
            tasks: TaskTracker::new(),
            connections: AtomicU64::new(0),
            auth,
            publish: Default::default(),
            interest,
        })
    }

    /// Local interest per symbol.
    pub fn interest(&self) -> &Interest {
        &self.interest
    }

    /// Whether subscriptions on `channel` are served, and why not. The one place that
    /// says which channels this build streams: books where the hub keeps them and the
    /// bus carries them.
    pub fn serves_channel(&self, channel: &Channel) -> Result<(), String> {
        match channel {
            Channel::Ticks | Channel::Candles { .. } => Ok(()),
            Channel::Book { .. } if self.hub.books().is_empty() => {
                Err("channel book is not served: this node keeps no books".into())
            }
            Channel::Book { .. } if !self.bus.carries_books() => {
                Err("channel book is not served yet on this node's bus".into())
            }
            Channel::Book { .. } => Ok(()),
        }
    }

    /// Takes one local holder for each of `held` (one per new subscription: served
    /// here, not held by the session on that stream already), at once: the session
    /// records them as its own in the same step, and gives them back with
    /// [`Node::release`] whatever happens next. The ticket says what the bus does not
    /// receive yet.
    pub fn take(&self, held: &[Key]) -> Ticket {
        let keys: Vec<_> = held.iter().map(|(st, s)| (topic(*st), s.clone())).collect();
        self.interest.take(&keys)
    }

    /// Begins the drain: cancels [`Node::draining`] and wakes every session's writer to
    /// see it (a writer waits on nothing node-wide of its own).
    pub fn drain(&self) {
        self.draining.cancel();
        self.budget.wake_all();
    }

    /// Shuts the node's sessions down: cancels [`Node::shutdown`] and wakes every
    /// session's writer to close.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
        self.budget.wake_all();
    }

    /// Waits until the bus receives what `ticket` lists (see [`Interest::ready`]).
    pub async fn ready(&self, ticket: &Ticket) -> Result<(), BusError> {
        self.interest.ready(ticket).await
    }

    /// Ends the subscriptions `held` of session `session` (each held by it): off the
    /// hub and one holder fewer each; the bus unwatches what nobody here wants any more.
    /// Synchronous, so a session gives back what it holds wherever it stops.
    pub fn release(&self, session: u64, held: &[Key]) {
        if held.is_empty() {
            return;
        }
        let mut keys = Vec::with_capacity(held.len());
        for (stream, s) in held {
            match stream {
                Stream::Ticks => {
                    self.hub.unsubscribe(s, session);
                }
                Stream::Book => {
                    self.hub.books().unsubscribe(s, session);
                }
                Stream::Candles(iv) => self.hub.unsubscribe_candles(s, session, *iv),
            }
            keys.push((topic(*stream), s.clone()));
        }
        self.interest.give(&keys);
    }

    /// Starts the streams of `wants` for `outbox`'s session, whose symbols the bus
    /// receives: what a resume needs from the bus's history is fetched, `confirm` (the
    /// `subscribed` reply) is queued, then the hub queues each stream's start and
    /// registers the subscriber. Cancel-safe: until its last step it takes nothing.
    pub async fn attach(&self, outbox: &Arc<Outbox>, wants: Vec<Want>, confirm: bytes::Bytes) {
        let mut backfill = self.backfill(&wants).await;
        let mut bases = self.book_bases(&wants).await;
        let bars: Vec<(Symbol, Interval)> = wants
            .iter()
            .filter_map(|w| match w.channel {
                Channel::Candles { interval, .. } => Some((w.symbol.clone(), interval)),
                _ => None,
            })
            .collect();
        self.load_candles(&bars).await;
        if !outbox.send(confirm).await {
            return;
        }
        for mut w in wants {
            match w.channel {
                Channel::Ticks => {
                    if let Some(ticks) = backfill.remove(&w.symbol) {
                        w.start.backfill = crate::hub::Entry::ready(ticks, w.start.encoding);
                    }
                    self.hub.subscribe(&w.symbol, outbox, &w.behind, &w.start);
                }
                Channel::Candles { interval, .. } => {
                    let st = &w.start;
                    self.hub.subscribe_candles(
                        &w.symbol,
                        outbox,
                        interval,
                        st.bars,
                        st.throttle_ms,
                    );
                }
                Channel::Book { depth } => {
                    let start = BookStart {
                        base: bases.remove(&w.symbol),
                        resume: w.start.resume.take(),
                        depth,
                        encoding: w.start.encoding,
                        throttle_ms: w.start.throttle_ms,
                    };
                    self.hub
                        .subscribe_book(&w.symbol, outbox, &w.behind, &start);
                }
            }
        }
    }

    /// Completes, from the bus's store, the closed bars of each `(symbol, interval)` not
    /// read since the node started receiving the symbol, so that a backfill is the same
    /// whichever node serves it and after a node's restart. Called before a `candles`
    /// subscription starts; a failed read is logged and the backfill is what the node made.
    pub async fn load_candles(&self, wants: &[(Symbol, Interval)]) {
        let candles = self.hub.candles();
        let needed: Vec<(Symbol, Interval)> = wants
            .iter()
            .filter(|(s, iv)| candles.needs_load(s, *iv))
            .cloned()
            .collect();
        if needed.is_empty() {
            return;
        }
        match self.bus.bars(&needed, candles.keep()).await {
            Ok(found) => {
                for ((s, iv), bars) in needed.iter().zip(found) {
                    candles.load(s, *iv, bars);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading closed bars from the bus failed"),
        }
    }

    /// For each symbol whose book is resumed from a position the node's own book
    /// history does not reach (a client that moved here from another node), the book
    /// at that position, rebuilt from the bus's history where it still reaches it.
    async fn book_bases(&self, wants: &[Want]) -> HashMap<Symbol, Box<BookBase>> {
        let books = self.hub.books();
        let needed: Vec<(Symbol, ResumeFrom)> = wants
            .iter()
            .filter(|w| matches!(w.channel, Channel::Book { .. }))
            .filter_map(|w| {
                let from = w.start.resume.as_ref()?;
                (!books.covers(&w.symbol, from)).then(|| (w.symbol.clone(), from.clone()))
            })
            .collect();
        if needed.is_empty() {
            return HashMap::new();
        }
        match self.bus.book_bases(&needed).await {
            Ok(found) => needed
                .into_iter()
                .zip(found)
                .filter_map(|((s, _), b)| Some((s, b?)))
                .collect(),
            Err(e) => {
                // The resume is then answered with a gap and a fresh book.
                tracing::warn!(error = %e, "reading the bus's book history for a resume failed");
                HashMap::new()
            }
        }
    }

    /// For each resumed symbol whose range the local ring does not hold (a client that
    /// moved here from another node), the ticks the bus still has after its position.
    async fn backfill(&self, wants: &[Want]) -> HashMap<Symbol, Vec<Tick>> {
        let needed: Vec<(Symbol, u64)> = wants
            .iter()
            .filter(|w| w.channel == Channel::Ticks)
            .filter_map(|w| {
                let from: &ResumeFrom = w.start.resume.as_ref()?;
                (!self.hub.covers(&w.symbol, from)).then(|| (w.symbol.clone(), from.seq))
            })
            .collect();
        if needed.is_empty() {
            return HashMap::new();
        }
        match self.bus.history(&needed).await {
            Ok(found) => needed.into_iter().map(|(s, _)| s).zip(found).collect(),
            Err(e) => {
                // The replay then announces what it cannot send as a gap.
                tracing::warn!(error = %e, "reading the bus history for a resume failed");
                HashMap::new()
            }
        }
    }
}
