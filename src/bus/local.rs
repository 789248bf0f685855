//! The in-process bus: one node, ticks and books go straight from the feed to the hub.

use std::sync::Arc;

use super::{BatchError, BoxFuture, Bus, BusError};
use crate::book::BookMsg;
use crate::hub::Hub;
use crate::tick::{Symbol, Tick};

/// Delivers published ticks to this node's hub, synchronously and in order.
pub struct LocalBus {
    hub: Arc<Hub>,
}

impl LocalBus {
    /// A bus feeding `hub`.
    pub fn new(hub: Arc<Hub>) -> LocalBus {
        LocalBus { hub }
    }
}

impl Bus for LocalBus {
    fn publish(&self, tick: Tick) -> Result<(), BusError> {
        self.hub.publish(tick);
        Ok(())
    }

    fn publish_batch(&self, ticks: Vec<Tick>) -> Result<(), BatchError> {
        self.hub.publish_batch(ticks);
        Ok(())
    }

    fn carries_books(&self) -> bool {
        true
    }

    fn publish_books(&self, books: Vec<BookMsg>) -> Result<(), BatchError> {
        self.hub.publish_books(&books);
        Ok(())
    }

    fn sources_lost(&self, symbols: &[Symbol]) {
        self.hub.lost(symbols, crate::hub::Cause::Feed, "feed");
    }

    fn watch<'a>(&'a self, _symbols: &'a [Symbol]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }

    fn unwatch<'a>(&'a self, _symbols: &'a [Symbol]) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}
