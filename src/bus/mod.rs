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
//!
//! Books ([`BookMsg`]) travel beside ticks on a bus that carries them
//! ([`Bus::carries_books`]), watched per symbol like ticks but separately
//! ([`Bus::watch_books`]), so that a node receives a symbol's book only while one of
//! its clients wants that book.

pub mod local;
pub mod redis;

use std::future::Future;
use std::pin::Pin;

use crate::book::BookMsg;
use crate::hub::book::BookBase;
use crate::hub::candles::{Bar, Interval};
use crate::protocol::ResumeFrom;
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
#[error("{error} (after {published} messages of the batch)")]
pub struct BatchError {
    /// How many ticks of the batch, from the first, were published.
    pub published: usize,
    /// Why the next one was not.
    pub error: BusError,
}

/// What a node receives of a symbol: its ticks (which candles are made from too), or
/// its book.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Ticks.
    Ticks,
    /// The order book.
    Book,
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

    /// Whether this bus carries books; a node serves the `book` channel only then.
    fn carries_books(&self) -> bool {
        false
    }

    /// Publishes book messages in order to every node (checked by the sender: see
    /// [`BookMsg::check`]); per symbol they reach each node's hub in this order. On
    /// error the messages before the failing one were published, the rest not.
    fn publish_books(&self, books: Vec<BookMsg>) -> Result<(), BatchError> {
        let error = BusError::Unavailable("this bus does not carry books".into());
        match books.is_empty() {
            true => Ok(()),
            false => Err(BatchError {
                published: 0,
                error,
            }),
        }
    }

    /// Starts receiving the books of `symbols` (none of which is watched now), as
    /// [`Bus::watch`] does their ticks: before returning, the bus receives them and has
    /// given the hub their current book where it knows one.
    fn watch_books<'a>(&'a self, symbols: &'a [Symbol]) -> BoxFuture<'a, Result<(), BusError>> {
        let _ = symbols;
        Box::pin(async { Ok(()) })
    }

    /// Stops receiving the books of `symbols` (each of them watched now).
    fn unwatch_books<'a>(&'a self, symbols: &'a [Symbol]) -> BoxFuture<'a, ()> {
        let _ = symbols;
        Box::pin(async {})
    }

    /// The feed that published `symbols` through this bus stopped publishing them (it
    /// ended, or the publisher connection it came through did): every node tells their
    /// subscribers they are stale (`status`, reason `feed`) until their next tick.
    fn sources_lost(&self, symbols: &[Symbol]) {
        let _ = symbols;
    }

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

    /// For each `(symbol, position)`, the book a client resuming from that position
    /// holds, when the bus's history still reaches back to it (for a client that
    /// resumes its book here after another node). A bus without history returns none.
    fn book_bases<'a>(
        &'a self,
        wants: &'a [(Symbol, ResumeFrom)],
    ) -> BoxFuture<'a, Result<Vec<Option<Box<BookBase>>>, BusError>> {
        Box::pin(async move { Ok(vec![None; wants.len()]) })
    }

    /// The newest `n` closed bars the bus's store holds for each `(symbol, interval)`,
    /// oldest first (for a node that starts serving candles it did not make). A bus
    /// without a store returns nothing.
    fn bars<'a>(
        &'a self,
        wants: &'a [(Symbol, Interval)],
        _n: usize,
    ) -> BoxFuture<'a, Result<Vec<Vec<Bar>>, BusError>> {
        Box::pin(async move { Ok(vec![Vec::new(); wants.len()]) })
    }

    /// Flushes what is queued for publishing and stops background work.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
