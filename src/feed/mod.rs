//! Feeds: where ticks come from.
//!
//! A feed produces [`Tick`](crate::tick::Tick)s and is their origin of truth: it owns
//! each symbol's `seq` (rising by exactly one per symbol within an `epoch`) and stamps
//! `ts` when a tick is produced. The synthetic generator walks the symbols of a
//! [`Universe`]; [`replay`] plays a [`recording`] back; [`publish`] carries a feed's
//! ticks to a node, a bus or a file when the feed runs as its own process.

pub mod ingest;
pub mod publish;
pub mod pump;
pub mod recording;
pub mod replay;
pub mod synthetic;
pub mod universe;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{SendTimeoutError, Sender};

use crate::tick::Tick;

pub use recording::{BookItem, Item};
pub use replay::{ReplayConfig, Speed};
pub use synthetic::{Generator, SynthConfig};
pub use universe::{AssetClass, Instrument, Universe, UniverseError};

/// How long one blocked hand-over waits before checking the stop flag again.
const SEND_POLL: Duration = Duration::from_millis(20);

/// Where a feed's producing thread hands its ticks over: a channel of single ticks, or
/// of batches (what a feed inside a node uses, so that a batch costs one wake-up).
pub trait Sink: Send + 'static {
    /// Hands `batch` over in order, waiting while the receiver is full. Returns how many
    /// ticks were taken: fewer than all when the receiver is gone or `stop` was set
    /// while waiting.
    fn send_batch(&self, batch: Vec<Tick>, stop: &AtomicBool) -> usize;

    /// Hands `items` (ticks and book messages, as a replay plays them) over in order,
    /// like [`Sink::send_batch`]; returns how many were taken. A sink that carries
    /// ticks only takes its ticks and passes over the book messages (counted as taken).
    fn send_items(&self, items: Vec<Item>, stop: &AtomicBool) -> usize {
        let n = items.len();
        let ticks: Vec<Tick> = items
            .into_iter()
            .filter_map(|i| match i {
                Item::Tick(t) => Some(t),
                Item::Book(_) => None,
            })
            .collect();
        let want = ticks.len();
        let sent = self.send_batch(ticks, stop);
        if sent == want {
            n
        } else {
            sent
        }
    }
}

/// Sends `item`, waiting while the channel is full; false when the receiver is gone or
/// `stop` was set meanwhile.
fn send_polling<T>(sink: &Sender<T>, mut item: T, stop: &AtomicBool) -> bool {
    loop {
        match sink.send_timeout(item, SEND_POLL) {
            Ok(()) => return true,
            Err(SendTimeoutError::Disconnected(_)) => return false,
            Err(SendTimeoutError::Timeout(back)) => {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                item = back;
            }
        }
    }
}

impl Sink for Sender<Tick> {
    fn send_batch(&self, batch: Vec<Tick>, stop: &AtomicBool) -> usize {
        let mut sent = 0;
        for tick in batch {
            if !send_polling(self, tick, stop) {
                break;
            }
            sent += 1;
        }
        sent
    }
}

impl Sink for Sender<Item> {
    fn send_batch(&self, batch: Vec<Tick>, stop: &AtomicBool) -> usize {
        self.send_items(batch.into_iter().map(Item::Tick).collect(), stop)
    }

    fn send_items(&self, items: Vec<Item>, stop: &AtomicBool) -> usize {
        let mut sent = 0;
        for item in items {
            if !send_polling(self, item, stop) {
                break;
            }
            sent += 1;
        }
        sent
    }
}

impl Sink for Sender<Vec<Item>> {
    fn send_batch(&self, batch: Vec<Tick>, stop: &AtomicBool) -> usize {
        self.send_items(batch.into_iter().map(Item::Tick).collect(), stop)
    }

    fn send_items(&self, items: Vec<Item>, stop: &AtomicBool) -> usize {
        let n = items.len();
        match n > 0 && send_polling(self, items, stop) {
            true => n,
            false => 0,
        }
    }
}

impl Sink for Sender<Vec<Tick>> {
    fn send_batch(&self, batch: Vec<Tick>, stop: &AtomicBool) -> usize {
        let n = batch.len();
        if n == 0 {
            return 0;
        }
        if send_polling(self, batch, stop) {
            n
        } else {
            0
        }
    }
}
