//! A feed running inside a node: the synthetic generator as a task on the node's
//! runtime, or a replay's producing thread and the pump thread that hands what it
//! produces to the bus, in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{Item, ReplayConfig, SynthConfig, Universe};
use crate::book::BookMsg;
use crate::bus::Bus;
use crate::hub::Hub;
use crate::tick::Tick;

/// Batches buffered between a feed thread and the bus.
const FEED_BUFFER: usize = 1_024;

/// Most ticks the pump hands to the bus at once (when batches queued up).
const MAX_BATCH: usize = 16_384;

/// A feed's producing thread, the pump that hands its ticks to the bus, and the flag
/// that stops them.
pub struct FeedThreads {
    stop: Arc<AtomicBool>,
    producer: Box<dyn FnOnce() + Send>,
    pump: std::thread::JoinHandle<()>,
}

impl FeedThreads {
    /// Starts a feed: `produce` spawns the producing thread, given the channel sender and
    /// the stop flag; a pump thread forwards what it sends to `bus`.
    pub fn start<R: Send + 'static>(
        bus: Arc<dyn Bus>,
        produce: impl FnOnce(
            crossbeam_channel::Sender<Vec<Item>>,
            Arc<AtomicBool>,
        ) -> std::thread::JoinHandle<R>,
    ) -> FeedThreads {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded::<Vec<Item>>(FEED_BUFFER);
        let producer = produce(tx, stop.clone());
        let pump = std::thread::Builder::new()
            .name("feed-pump".into())
            .spawn(move || pump(rx, bus))
            .expect("spawning the feed pump thread");
        FeedThreads {
            stop,
            producer: Box::new(move || {
                let _ = producer.join();
            }),
            pump,
        }
    }

    /// Stops the feed and waits for both threads.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        (self.producer)();
        let _ = self.pump.join();
    }
}

/// A feed running inside a node, until [`RunningFeed::stop`].
pub enum RunningFeed {
    /// The synthetic generator, a task on the node's runtime.
    Task(tokio::task::JoinHandle<()>),
    /// A replay: its thread and the pump.
    Threads(FeedThreads),
}

impl RunningFeed {
    /// Starts the synthetic generator over `universe` on the current runtime, publishing
    /// each batch on `bus` as it is made (with its book messages, when `config.books`
    /// and the bus carries books).
    pub fn synthetic(universe: Universe, config: SynthConfig, bus: Arc<dyn Bus>) -> RunningFeed {
        let epoch = crate::tick::new_epoch();
        // Books only where the bus carries them.
        let config = SynthConfig {
            books: config.books && bus.carries_books(),
            ..config
        };
        let symbols: Vec<crate::tick::Symbol> = universe.symbols().cloned().collect();
        RunningFeed::Task(tokio::spawn(async move {
            let to = bus.clone();
            let publish = move |batch: Vec<Tick>, books: Vec<BookMsg>| {
                // The book first: a quote is read off the book after its update.
                if let Err(e) = to.publish_books(books) {
                    tracing::warn!(error = %e, "publishing books failed");
                }
                hand_over(&*to, batch)
            };
            match super::synthetic::run_on_runtime(universe, config, epoch, publish).await {
                Ok(sent) => tracing::info!(sent, "synthetic feed ended"),
                Err(e) => tracing::error!(error = %e, "synthetic feed stopped: no timer"),
            }
            // Its symbols have no source any more.
            bus.sources_lost(&symbols);
        }))
    }

    /// Stops the feed and waits until it has.
    pub async fn stop(self) {
        match self {
            RunningFeed::Task(task) => {
                task.abort();
                let _ = task.await;
            }
            RunningFeed::Threads(threads) => {
                let _ = tokio::task::spawn_blocking(move || threads.stop()).await;
            }
        }
    }
}

impl FeedThreads {
    /// Checks the whole recording at `path` (so a bad file stops the start with its
    /// line number), then plays it on its own thread into `bus`.
    pub fn replay(
        path: &std::path::Path,
        config: ReplayConfig,
        hub: &Hub,
        bus: Arc<dyn Bus>,
    ) -> anyhow::Result<FeedThreads> {
        let scan = super::replay::scan(path, &config)?;
        tracing::info!(
            file = %path.display(),
            ticks = scan.ticks,
            books = scan.books,
            symbols = scan.symbols,
            span_ms = scan.span.as_millis() as u64,
            speed = %config.speed,
            looping = config.looping,
            "replay feed"
        );
        let unserved: Vec<&str> = scan
            .symbol_names
            .iter()
            .filter(|s| !hub.serves(s))
            .map(|s| &**s)
            .collect();
        if !unserved.is_empty() {
            tracing::warn!(
                count = unserved.len(),
                first = %unserved[..unserved.len().min(10)].join(","),
                "the recording has symbols outside the universe; their ticks are dropped (see --universe)"
            );
        }
        let path = path.to_owned();
        Ok(FeedThreads::start(bus, move |tx, stop| {
            super::replay::spawn(path, config, tx, stop, Default::default())
        }))
    }
}

/// Hands every batch a feed thread produces to the bus, in order, until the feed ends;
/// batches that queued up meanwhile go as one (ticks and book messages each in runs,
/// in their order).
/// When the feed ends, the symbols it published are lost ([`Bus::sources_lost`]).
pub fn pump(rx: crossbeam_channel::Receiver<Vec<Item>>, bus: Arc<dyn Bus>) {
    let mut published: std::collections::HashSet<crate::tick::Symbol> = Default::default();
    while let Ok(mut batch) = rx.recv() {
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let mut ticks: Vec<Tick> = Vec::with_capacity(batch.len());
        let mut books: Vec<BookMsg> = Vec::new();
        for item in batch {
            match item {
                Item::Tick(t) => {
                    if !books.is_empty() {
                        publish_books(&*bus, std::mem::take(&mut books));
                    }
                    if !published.contains(&t.symbol) {
                        published.insert(t.symbol.clone());
                    }
                    ticks.push(t);
                }
                Item::Book(b) => {
                    if !ticks.is_empty() {
                        hand_over(&*bus, std::mem::take(&mut ticks));
                    }
                    books.push(b.msg);
                }
            }
        }
        publish_books(&*bus, books);
        if !ticks.is_empty() {
            hand_over(&*bus, ticks);
        }
    }
    let gone: Vec<crate::tick::Symbol> = published.into_iter().collect();
    bus.sources_lost(&gone);
}

/// Publishes book messages of a feed inside the node on `bus` (where it carries books).
fn publish_books(bus: &dyn Bus, books: Vec<BookMsg>) {
    if books.is_empty() || !bus.carries_books() {
        return;
    }
    if let Err(e) = bus.publish_books(books) {
        tracing::warn!(error = %e, "publishing books failed");
    }
}

/// Publishes one batch of a feed inside the node on `bus`, counting what was ingested.
fn hand_over(bus: &dyn Bus, batch: Vec<Tick>) {
    let ingested = &crate::metrics::global().ingested[crate::metrics::Source::Feed as usize];
    let n = batch.len();
    match bus.publish_batch(batch) {
        Ok(()) => {
            ingested.fetch_add(n as u64, Ordering::Relaxed);
        }
        Err(e) => {
            ingested.fetch_add(e.published as u64, Ordering::Relaxed);
            tracing::warn!(error = %e, "publish failed");
        }
    }
}
