//! Local interest per symbol and bus topic: how many subscriptions of this node's
//! sessions hold each symbol's ticks (on the `ticks` or `candles` channel, both made from
//! ticks) and its book, the one source of truth for what the node wants from the bus.
//! Each (topic, symbol) is watched while it has a holder and unwatched when it has none,
//! so a node receives a symbol's book only while one of its clients wants that book.
//!
//! Counts change synchronously, never across an await: a session records a symbol as
//! its own and takes a count in one step, and gives both back in one step when it
//! unsubscribes, ends, or is dropped at any point of a subscribe (its task cancelled,
//! its writer gone). Nothing is left behind whichever await a session was waiting at.
//!
//! The bus follows the counts: a reconciler watches the symbols that have a count and
//! are not watched, and unwatches those watched with none. Each bus call runs as a task
//! of its own, so no session's cancellation cancels it, and calls for different symbols
//! run side by side (a symbol waits only for its own round trip); a symbol whose count
//! changed while its call was in flight is looked at again when the call ends. A session
//! that took a symbol not watched yet waits for the watch ([`Interest::ready`]); a
//! failed watch fails every session waiting for it, which gives its counts back.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusError, Topic};
use crate::tick::Symbol;

/// What a subscription holds on the bus: a symbol's ticks or its book.
pub type Interested = (Topic, Symbol);

/// The topics, in the order of a symbol's counts.
const TOPICS: [Topic; 2] = [Topic::Ticks, Topic::Book];

fn index(topic: Topic) -> usize {
    match topic {
        Topic::Ticks => 0,
        Topic::Book => 1,
    }
}

/// Where the bus stands for one symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
enum OnBus {
    /// Not received.
    Unwatched,
    /// A watch is in flight.
    Watching,
    /// Received.
    Watched,
    /// An unwatch is in flight.
    Unwatching,
}

#[derive(Debug)]
struct Count {
    /// Sessions holding the symbol.
    holders: usize,
    on_bus: OnBus,
    /// Number of the last watch attempt, and its error when it failed.
    attempt: u64,
    failed: Option<String>,
    /// The attempt count when the latest holder took it: a holder that came after an
    /// attempt began waits for another one.
    asked: u64,
}

/// What a session took that the bus does not receive yet: wait for it with
/// [`Interest::ready`].
#[derive(Debug, Default)]
pub struct Ticket {
    symbols: Vec<Interested>,
    /// Attempts up to this one were made before the session asked.
    asked_after: u64,
}

/// Local subscriber counts over a fixed set of symbols, per topic, and the bus kept in
/// step.
pub struct Interest {
    counts: HashMap<Symbol, [Mutex<Count>; 2]>,
    /// Topics of symbols to look at again.
    dirty: Mutex<Vec<Interested>>,
    wake: Notify,
    /// Bumped whenever a bus call ends.
    settled: watch::Sender<u64>,
    attempts: std::sync::atomic::AtomicU64,
}

impl Interest {
    /// No interest yet in any of `symbols`.
    pub fn new<'a>(symbols: impl IntoIterator<Item = &'a Symbol>) -> Interest {
        Interest {
            counts: symbols
                .into_iter()
                .map(|s| {
                    let c = || {
                        Mutex::new(Count {
                            holders: 0,
                            on_bus: OnBus::Unwatched,
                            attempt: 0,
                            failed: None,
                            asked: 0,
                        })
                    };
                    (s.clone(), [c(), c()])
                })
                .collect(),
            dirty: Mutex::new(Vec::new()),
            wake: Notify::new(),
            settled: watch::Sender::new(0),
            attempts: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn of(&self, topic: Topic, symbol: &str) -> Option<&Mutex<Count>> {
        self.counts.get(symbol).map(|c| &c[index(topic)])
    }

    fn at(&self, (topic, symbol): &Interested) -> &Mutex<Count> {
        &self.counts[symbol][index(*topic)]
    }

    /// Local subscribers of `symbol` now, on every topic.
    pub fn count(&self, symbol: &str) -> usize {
        TOPICS.iter().map(|t| self.count_of(*t, symbol)).sum()
    }

    /// Local subscribers of `symbol`'s `topic` now.
    pub fn count_of(&self, topic: Topic, symbol: &str) -> usize {
        self.of(topic, symbol).map_or(0, |c| c.lock().holders)
    }

    /// Symbols with at least one local subscriber, on any topic.
    pub fn watched(&self) -> usize {
        self.counts
            .values()
            .filter(|c| c.iter().any(|c| c.lock().holders > 0))
            .count()
    }

    /// Whether the bus receives `symbol`'s ticks now (for tests and metrics).
    pub fn on_bus(&self, symbol: &str) -> bool {
        self.on_bus_of(Topic::Ticks, symbol)
    }

    /// Whether the bus receives `symbol`'s `topic` now.
    pub fn on_bus_of(&self, topic: Topic, symbol: &str) -> bool {
        self.of(topic, symbol)
            .is_some_and(|c| c.lock().on_bus == OnBus::Watched)
    }

    /// One more holder for each of `keys` (symbols served here; one entry per
    /// subscription, so a symbol's ticks held on two channels come twice). Returns what
    /// the bus does not receive yet.
    pub fn take(&self, keys: &[Interested]) -> Ticket {
        let asked_after = self.attempts.load(std::sync::atomic::Ordering::Acquire);
        let mut waiting = Vec::new();
        let mut dirty = Vec::new();
        for s in keys {
            if !self.counts.contains_key(&s.1) {
                continue;
            }
            let mut c = self.at(s).lock();
            c.holders += 1;
            c.asked = c.asked.max(asked_after);
            if c.on_bus != OnBus::Watched {
                waiting.push(s.clone());
                if c.on_bus == OnBus::Unwatched || c.on_bus == OnBus::Unwatching {
                    dirty.push(s.clone());
                }
            }
        }
        self.mark(dirty);
        Ticket {
            symbols: waiting,
            asked_after,
        }
    }

    /// One holder fewer for each of `keys` (each held; one entry per subscription).
    pub fn give(&self, keys: &[Interested]) {
        let mut dirty = Vec::new();
        for s in keys {
            if !self.counts.contains_key(&s.1) {
                continue;
            }
            let mut c = self.at(s).lock();
            c.holders = c.holders.saturating_sub(1);
            if c.holders == 0 && c.on_bus != OnBus::Unwatched {
                dirty.push(s.clone());
            }
        }
        self.mark(dirty);
    }

    fn mark(&self, symbols: Vec<Interested>) {
        if symbols.is_empty() {
            return;
        }
        self.dirty.lock().extend(symbols);
        self.wake.notify_one();
    }

    /// Waits until the bus receives every symbol of `ticket`; the error of a watch
    /// attempted after the ticket was taken when one failed. Cancel-safe: it takes
    /// nothing.
    pub async fn ready(&self, ticket: &Ticket) -> Result<(), BusError> {
        let mut settled = self.settled.subscribe();
        loop {
            let mut done = true;
            for s in &ticket.symbols {
                let c = self.at(s).lock();
                match (&c.on_bus, &c.failed) {
                    (OnBus::Watched, _) => {}
                    (_, Some(e)) if c.attempt > ticket.asked_after => {
                        return Err(BusError::Unavailable(e.clone()));
                    }
                    _ => done = false,
                }
            }
            if done {
                return Ok(());
            }
            if settled.changed().await.is_err() {
                return Err(BusError::Unavailable("the node is stopping".into()));
            }
        }
    }

    /// Keeps the bus in step with the counts until `stop`.
    pub async fn reconcile(self: Arc<Self>, bus: Arc<dyn Bus>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            let dirty = std::mem::take(&mut *self.dirty.lock());
            let (to_watch, to_unwatch) = self.plan(dirty);
            for topic in TOPICS {
                let on = of_topic(&to_watch, topic);
                if !on.is_empty() {
                    let (me, bus) = (self.clone(), bus.clone());
                    tokio::spawn(async move {
                        let r = match topic {
                            Topic::Ticks => bus.watch(&on).await,
                            Topic::Book => bus.watch_books(&on).await,
                        };
                        me.watched_done(topic, &on, r);
                    });
                }
                let off = of_topic(&to_unwatch, topic);
                if !off.is_empty() {
                    let (me, bus) = (self.clone(), bus.clone());
                    tokio::spawn(async move {
                        match topic {
                            Topic::Ticks => bus.unwatch(&off).await,
                            Topic::Book => bus.unwatch_books(&off).await,
                        }
                        me.unwatched_done(topic, &off);
                    });
                }
            }
        }
    }

    /// The symbols to watch (held, not received) and to unwatch (received, held by
    /// none) among `dirty`, marked in flight. Symbols in flight wait for their call.
    fn plan(&self, mut dirty: Vec<Interested>) -> (Vec<Interested>, Vec<Interested>) {
        dirty.sort_unstable();
        dirty.dedup();
        let attempt = self
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for s in dirty {
            let mut c = self.at(&s).lock();
            match (&c.on_bus, c.holders > 0) {
                (OnBus::Unwatched, true) => {
                    c.on_bus = OnBus::Watching;
                    c.attempt = attempt;
                    c.failed = None;
                    on.push(s.clone());
                }
                (OnBus::Watched, false) => {
                    c.on_bus = OnBus::Unwatching;
                    off.push(s.clone());
                }
                _ => {}
            }
        }
        (on, off)
    }

    fn watched_done(&self, topic: Topic, symbols: &[Symbol], result: Result<(), BusError>) {
        let mut again = Vec::new();
        for s in symbols {
            let key = (topic, s.clone());
            let mut c = self.at(&key).lock();
            match &result {
                Ok(()) => {
                    c.on_bus = OnBus::Watched;
                    if c.holders == 0 {
                        again.push(key.clone());
                    }
                }
                Err(BusError::Unavailable(why)) => {
                    c.on_bus = OnBus::Unwatched;
                    c.failed = Some(why.clone());
                    if c.holders > 0 && c.asked >= c.attempt {
                        // A holder that asked after this attempt began waits for another.
                        again.push(key.clone());
                    }
                }
            }
        }
        if let Err(e) = &result {
            tracing::warn!(error = %e, symbols = symbols.len(), "the bus refused to watch");
        }
        self.settle(again);
    }

    fn unwatched_done(&self, topic: Topic, symbols: &[Symbol]) {
        let mut again = Vec::new();
        for s in symbols {
            let key = (topic, s.clone());
            let mut c = self.at(&key).lock();
            c.on_bus = OnBus::Unwatched;
            if c.holders > 0 {
                again.push(key.clone());
            }
        }
        self.settle(again);
    }

    /// A bus call ended: waiters look again, and what changed meanwhile is planned.
    fn settle(&self, again: Vec<Interested>) {
        self.settled.send_modify(|n| *n += 1);
        self.mark(again);
    }
}

/// The symbols of `keys` on `topic`, in order.
fn of_topic(keys: &[Interested], topic: Topic) -> Vec<Symbol> {
    keys.iter()
        .filter(|(t, _)| *t == topic)
        .map(|(_, s)| s.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BoxFuture;
    use crate::tick::Tick;
    use std::time::Duration;

    fn syms(names: &[&str]) -> Vec<Symbol> {
        names.iter().map(|s| Symbol::from(*s)).collect()
    }

    /// The ticks of `names`.
    fn ticks(names: &[&str]) -> Vec<Interested> {
        names
            .iter()
            .map(|s| (Topic::Ticks, Symbol::from(*s)))
            .collect()
    }

    /// A bus that records its calls; a watch waits while `hold` is set, and fails while
    /// `fail` is.
    struct Recording {
        calls: parking_lot::Mutex<Vec<String>>,
        hold: tokio::sync::Semaphore,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Default for Recording {
        fn default() -> Self {
            Recording {
                calls: Default::default(),
                hold: tokio::sync::Semaphore::new(0),
                fail: Default::default(),
            }
        }
    }

    impl Bus for Recording {
        fn publish(&self, _: Tick) -> Result<(), BusError> {
            Ok(())
        }
        fn watch<'a>(&'a self, s: &'a [Symbol]) -> BoxFuture<'a, Result<(), BusError>> {
            Box::pin(async move {
                let _permit = self.hold.acquire().await.unwrap();
                self.calls.lock().push(format!("watch {}", s.join(",")));
                if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(BusError::Unavailable("down".into()));
                }
                Ok(())
            })
        }
        fn unwatch<'a>(&'a self, s: &'a [Symbol]) -> BoxFuture<'a, ()> {
            Box::pin(async move {
                self.calls.lock().push(format!("unwatch {}", s.join(",")));
            })
        }
    }

    fn start(bus: &Arc<Recording>) -> (Arc<Interest>, CancellationToken) {
        let interest = Arc::new(Interest::new(&syms(&["A", "B", "C"])));
        let stop = CancellationToken::new();
        tokio::spawn(interest.clone().reconcile(bus.clone(), stop.clone()));
        (interest, stop)
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_holder_watches_the_last_one_unwatches() {
        let bus = Arc::new(Recording::default());
        bus.hold.add_permits(1000);
        let (interest, _stop) = start(&bus);
        let t = interest.take(&ticks(&["A", "B"]));
        interest.ready(&t).await.unwrap();
        // Held already: nothing to wait for, no bus call.
        let t2 = interest.take(&ticks(&["A"]));
        assert!(t2.symbols.is_empty());
        interest.give(&ticks(&["A"]));
        settle().await;
        assert_eq!(*bus.calls.lock(), ["watch A,B"]);
        interest.give(&ticks(&["A", "B"]));
        settle().await;
        assert_eq!(*bus.calls.lock(), ["watch A,B", "unwatch A,B"]);
        assert_eq!(interest.watched(), 0);
        assert!(!interest.on_bus("A"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_gone_while_its_watch_is_in_flight_leaves_nothing_watched() {
        let bus = Arc::new(Recording::default());
        let (interest, _stop) = start(&bus);
        let t = interest.take(&ticks(&["A"]));
        // The session waits for the bus, which blocks; then it is dropped.
        let waiting = tokio::time::timeout(Duration::from_millis(50), interest.ready(&t)).await;
        assert!(waiting.is_err(), "the watch is held");
        interest.give(&ticks(&["A"]));
        bus.hold.add_permits(1000);
        settle().await;
        assert_eq!(*bus.calls.lock(), ["watch A", "unwatch A"]);
        assert!(!interest.on_bus("A"));
        assert_eq!(interest.count("A"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_watch_fails_its_waiters_and_a_later_one_tries_again() {
        let bus = Arc::new(Recording::default());
        bus.hold.add_permits(1000);
        bus.fail.store(true, std::sync::atomic::Ordering::Relaxed);
        let (interest, _stop) = start(&bus);
        let t = interest.take(&ticks(&["C"]));
        assert!(interest.ready(&t).await.is_err());
        interest.give(&ticks(&["C"]));
        bus.fail.store(false, std::sync::atomic::Ordering::Relaxed);
        let t = interest.take(&ticks(&["C"]));
        interest.ready(&t).await.unwrap();
        assert!(interest.on_bus("C"));
        assert_eq!(*bus.calls.lock(), ["watch C", "watch C"]);
    }
}
