//! The node: what one server process shares between its connections, and the
//! coordinator of their subscriptions.
//!
//! Sessions ask the node for symbols; the node counts local interest per symbol
//! ([`subscriptions`]), makes the bus watch a symbol's channel for its first local
//! subscriber and unwatch it after the last, fetches what a resuming client lacks from
//! the bus's history, and registers the subscriber with the hub. A bus call that fails
//! leaves the hub untouched and the session gets the error to answer its client with.

pub mod subscriptions;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::bus::{Bus, BusError};
use crate::config::Settings;
use crate::hub::{Behind, Hub, Outbox, Start};
use crate::protocol::ResumeFrom;
use crate::tick::{Symbol, Tick};
use subscriptions::Interest;

/// Settings, hub, bus and the shutdown signal of one node.
pub struct Node {
    /// Resolved settings.
    pub settings: Settings,
    /// The registry of symbols and local subscribers.
    pub hub: Arc<Hub>,
    /// Where ticks come from and go to.
    pub bus: Arc<dyn Bus>,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Connections open now.
    pub connections: AtomicU64,
    /// Token checking, when auth is enabled.
    pub auth: Option<Auth>,
    /// Counters of the publisher endpoint.
    pub publish: crate::feed::ingest::PublishStats,
    /// Local subscribers per symbol.
    interest: Interest,
}

/// One symbol a session wants, and how its stream starts.
pub struct Want {
    /// The symbol (one the hub serves).
    pub symbol: Symbol,
    /// The subscription's catch-up mark.
    pub behind: Behind,
    /// Snapshot, or the position to resume from.
    pub start: Start,
    /// The session already holds the symbol: its stream restarts from `start`, and
    /// local interest does not change.
    pub held: bool,
}

impl Node {
    /// A node over `hub` and `bus`.
    pub fn new(
        settings: Settings,
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        auth: Option<Auth>,
    ) -> Arc<Node> {
        let interest = Interest::new(&hub.symbols());
        Arc::new(Node {
            settings,
            hub,
            bus,
            shutdown: CancellationToken::new(),
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

    /// Subscribes `outbox`'s session to every symbol of `wants`: the bus watches those
    /// that had no local subscriber, what a resume needs from the bus's history is
    /// fetched, `confirm` (the `subscribed` reply) is queued, then the hub queues each
    /// stream's start and registers the subscriber. On error nothing was subscribed
    /// and nothing queued.
    pub async fn subscribe(
        &self,
        outbox: &Arc<Outbox>,
        wants: Vec<Want>,
        confirm: bytes::Bytes,
    ) -> Result<(), BusError> {
        let fresh: Vec<Symbol> = wants
            .iter()
            .filter(|w| !w.held)
            .map(|w| w.symbol.clone())
            .collect();
        let bus = &self.bus;
        self.interest
            .acquire(&fresh, |first| async move { bus.watch(&first).await })
            .await?;
        let mut backfill = self.backfill(&wants).await;
        outbox.send(confirm).await;
        for mut w in wants {
            if let Some(ticks) = backfill.remove(&w.symbol) {
                w.start.backfill = ticks;
            }
            self.hub.subscribe(&w.symbol, outbox, &w.behind, &w.start);
        }
        Ok(())
    }

    /// Ends the subscriptions of session `session` to `symbols`; the bus unwatches the
    /// symbols nobody here wants any more.
    pub async fn unsubscribe(&self, session: u64, symbols: &[Symbol]) {
        if symbols.is_empty() {
            return;
        }
        for s in symbols {
            self.hub.unsubscribe(s, session);
        }
        let bus = &self.bus;
        self.interest
            .release(symbols, |gone| async move {
                bus.unwatch(&gone).await;
                Vec::new()
            })
            .await;
    }

    /// For each resumed symbol whose range the local ring does not hold (a client that
    /// moved here from another node), the ticks the bus still has after its position.
    async fn backfill(&self, wants: &[Want]) -> HashMap<Symbol, Vec<Tick>> {
        let needed: Vec<(Symbol, u64)> = wants
            .iter()
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
