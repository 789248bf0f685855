//! The bus carries ticks from whoever ingests them to the hub of every node: in-process
//! on one node ([`LocalBus`], the default), or through Redis between nodes ([`RedisBus`];
//! feed processes publish with [`RedisPublisher`]).
//!
//! Contract of every implementation: per symbol, ticks reach a node's hub in the order
//! they were published; delivery is at most once (a tick may be lost, for instance while
//! a connection to Redis is down, never duplicated by the bus itself); the hub detects a
//! jump in `seq` and announces it to subscribers as a `gap`. A node receives only the
//! symbols it watches. The bus knows nothing of sessions: the node counts local interest
//! and calls [`Bus::watch`] when a symbol gets its first local subscriber and
//! [`Bus::unwatch`] when its last one leaves, so for each symbol the calls alternate.

pub mod local;
pub mod redis;

use std::future::Future;
use std::pin::Pin;

use crate::tick::{Symbol, Tick};

pub use self::redis::{RedisBus, RedisConfig, RedisMode, RedisPublisher};
pub use local::LocalBus;

/// A boxed future, as returned by [`Bus`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus is not reachable now.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// A batch publish that stopped part way.
#[derive(Debug, thiserror::Error)]
#[error("{error} (after {published} ticks of the batch)")]
pub struct BatchError {
    /// How many ticks of the batch, from the first, were published.
    pub published: usize,
    /// Why the next one was not.
    pub error: BusError,
}

/// Moves ticks between feeds and the hubs of every node.
pub trait Bus: Send + Sync + 'static {
    /// Publishes one tick to every node. Never blocks on the network.
    fn publish(&self, tick: Tick) -> Result<(), BusError>;

    /// Publishes `ticks` in order, as [`Bus::publish`] would one by one, but as one
    /// batch: the in-process bus fans it out and wakes each subscriber once for all of
    /// it. On error the ticks before the failing one were published, the rest not.
    fn publish_batch(&self, ticks: Vec<Tick>) -> Result<(), BatchError> {
        for (published, tick) in ticks.into_iter().enumerate() {
            self.publish(tick)
                .map_err(|error| BatchError { published, error })?;
        }
        Ok(())
    }

    /// Starts receiving `symbols` (none of which is watched now). Before returning, the
    /// bus receives them and has given the hub their latest value where it knows one.
    /// On error nothing changed (the whole call is rolled back).
    fn watch<'a>(&'a self, symbols: &'a [Symbol]) -> BoxFuture<'a, Result<(), BusError>>;

    /// Stops receiving `symbols` (each of them watched now).
    fn unwatch<'a>(&'a self, symbols: &'a [Symbol]) -> BoxFuture<'a, ()>;

    /// Whether the bus is connected; `/healthz` answers 503 while it is not.
    fn healthy(&self) -> bool {
        true
    }

    /// The ticks the bus still holds after each `(symbol, seq)`, in order (for a client
    /// that resumes here after another node). A bus without history returns nothing.
    fn history<'a>(
        &'a self,
        wants: &'a [(Symbol, u64)],
    ) -> BoxFuture<'a, Result<Vec<Vec<Tick>>, BusError>> {
        Box::pin(async move { Ok(vec![Vec::new(); wants.len()]) })
    }

    /// Flushes what is queued for publishing and stops background work.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
