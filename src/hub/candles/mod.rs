//! Candles: bars of every served symbol in each [`Interval`], made by the node from the
//! ticks it receives (the rules are [`series`]'s), with the newest closed bars kept for
//! backfill.
//!
//! The hub folds each tick it stores with [`Candles::fold`], under the symbol's lock, so
//! bars follow the ticks' order. What a subscription of the `candles` channel is sent:
//!
//! - first, [`Candles::start`]: the `candles` message (up to `backfill` closed bars, oldest
//!   first, then the forming bar), taken under the same lock as it is registered, so no
//!   bar is missed or sent twice;
//! - each bar a tick closes ([`Folded::closed`]) as its `candle` message with
//!   `"closed":true`, encoded once ([`Bar::candle_json`]) for every subscriber;
//! - the forming bar, paced: [`Candles::forming`] gives its `candle` message, encoded at
//!   most once per change whoever asks. The default pace is [`DEFAULT_PACE`];
//! - after a rewind ([`series::Change::rewound`]) or a restore from the bus's store, a
//!   fresh `candles` message.
//!
//! A bar with no tick is never made nor sent: an interval with no tick has no bar.
//!
//! With Redis, closed bars live in the bus's store too: [`Candles::needs_load`] and
//! [`Candles::load`] complete a series from there when a client first asks for it, and
//! [`Candles::restore`] continues a symbol's forming bars from the stored state when the
//! node starts receiving it mid-bar.

pub mod bar;
pub mod series;
pub mod stored;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::tick::{Symbol, Tick};
pub use bar::{candles_json, Bar, Interval, INTERVALS};
pub use series::{Bars, Base, Change, Folded};
pub use stored::Formed;

/// Closed bars kept per symbol and interval unless configured: the most a `candles`
/// message carries.
pub const DEFAULT_KEEP: usize = 1000;

/// How often a subscriber gets the forming bar unless it asks for another pace
/// (`throttle_ms`): four times a second, what a chart can show, and what bounds the
/// node's encoding to four messages per symbol and interval per second however fast the
/// ticks come.
pub const DEFAULT_PACE: Duration = Duration::from_millis(250);

/// One symbol's bars and the `candle` message of each forming bar, once encoded.
struct Held {
    bars: Bars,
    /// Per interval: the forming bar's message, until the bar changes.
    forming: [Option<Bytes>; INTERVALS],
}

impl Held {
    /// Drops the encodings of the forming bars `folded` changed.
    fn changed(&mut self, folded: &Folded) {
        for (cache, c) in self.forming.iter_mut().zip(&folded.changes) {
            if c.forming || c.rewound || c.closed.is_some() {
                *cache = None;
            }
        }
    }
}

/// A whole closed bar this node made, to be written to the bus's store.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    /// The symbol.
    pub symbol: Symbol,
    /// Its interval.
    pub interval: Interval,
    /// The bar.
    pub bar: Bar,
}

/// The bars of every symbol a node serves. The symbol table is fixed when made, so
/// finding a symbol takes no lock; each symbol has its own.
pub struct Candles {
    symbols: HashMap<Symbol, Mutex<Held>>,
    keep: usize,
    /// Whole closed bars are collected for the store.
    writing: AtomicBool,
    writes: Mutex<Vec<Written>>,
}

impl Candles {
    /// Bars for `symbols`, keeping up to `keep` closed bars per symbol and interval.
    pub fn new<I: IntoIterator<Item = Symbol>>(symbols: I, keep: usize) -> Candles {
        let keep = keep.max(1);
        Candles {
            symbols: symbols
                .into_iter()
                .map(|s| {
                    let held = Held {
                        bars: Bars::new(keep),
                        forming: Default::default(),
                    };
                    (s, Mutex::new(held))
                })
                .collect(),
            keep,
            writing: AtomicBool::new(false),
            writes: Mutex::new(Vec::new()),
        }
    }

    /// Closed bars kept per symbol and interval: the largest backfill.
    pub fn keep(&self) -> usize {
        self.keep
    }

    fn held(&self, symbol: &str) -> Option<parking_lot::MutexGuard<'_, Held>> {
        self.symbols.get(symbol).map(|h| h.lock())
    }

    /// Folds a stored tick into its symbol's bars; says what changed (the bars it closed
    /// are sent to the subscribers of their interval). Called in the ticks' order.
    pub fn fold(&self, tick: &Tick) -> Folded {
        let Some(mut held) = self.held(&tick.symbol) else {
            return Folded::default();
        };
        let folded = held.bars.fold(tick);
        held.changed(&folded);
        drop(held);
        self.collect(&tick.symbol, &folded);
        folded
    }

    /// Keeps the whole bars `folded` closed for the store, when this node writes them.
    fn collect(&self, symbol: &Symbol, folded: &Folded) {
        if !self.writing.load(Ordering::Relaxed) || folded.closed().all(|(_, _, w)| !w) {
            return;
        }
        whole_bars(symbol, folded, &mut self.writes.lock());
    }

    /// Takes `tick` (the latest value read from the bus) as what the next tick of its
    /// symbol continues, without folding it.
    pub fn continue_from(&self, tick: &Tick) {
        if let Some(mut held) = self.held(&tick.symbol) {
            held.bars.continue_from(tick);
        }
    }

    /// The `candles` message of a new subscription to `symbol` in `interval`: up to
    /// `backfill` closed bars (at most [`Candles::keep`]), oldest first, then the forming
    /// bar. `None` when the symbol is not served here.
    pub fn start(&self, symbol: &str, interval: Interval, backfill: usize) -> Option<Bytes> {
        let held = self.held(symbol)?;
        let closed = held.bars.closed(interval, backfill);
        let forming = held.bars.forming(interval).map(|(b, _)| b);
        drop(held);
        Some(candles_json(symbol, interval, &closed, forming.as_ref()))
    }

    /// The forming bar of `symbol` in `interval` as its `candle` message
    /// (`"closed":false`), encoded once per change and shared.
    pub fn forming(&self, symbol: &str, interval: Interval) -> Option<Bytes> {
        let mut held = self.held(symbol)?;
        let k = interval.index();
        if let Some(json) = &held.forming[k] {
            return Some(json.clone());
        }
        let (bar, _) = held.bars.forming(interval)?;
        let json = bar.candle_json(symbol, interval, false);
        held.forming[k] = Some(json.clone());
        Some(json)
    }

    /// The newest `n` closed bars of `symbol` in `interval`, oldest first.
    pub fn closed(&self, symbol: &str, interval: Interval, n: usize) -> Vec<Bar> {
        self.held(symbol)
            .map_or_else(Vec::new, |h| h.bars.closed(interval, n))
    }

    /// The forming bar of `symbol` in `interval`, and whether it is whole.
    pub fn forming_bar(&self, symbol: &str, interval: Interval) -> Option<(Bar, bool)> {
        self.held(symbol)?.bars.forming(interval)
    }

    /// The forming state of `symbol`, as the bus's store keeps it ([`stored`]).
    pub fn state_json(&self, symbol: &str) -> Option<Vec<u8>> {
        stored::to_json(&self.held(symbol)?.bars)
    }

    /// Whether the closed bars of `symbol` in `interval` were not read from the bus's
    /// store since the node started receiving it.
    pub fn needs_load(&self, symbol: &str, interval: Interval) -> bool {
        self.held(symbol)
            .is_some_and(|h| !h.bars.series(interval).loaded)
    }

    /// Completes the closed bars of `symbol` in `interval` with those read from the
    /// bus's store (oldest first): the store's bar wins where both have one.
    pub fn load(&self, symbol: &str, interval: Interval, stored: Vec<Bar>) {
        if let Some(mut held) = self.held(symbol) {
            let s = held.bars.series_mut(interval);
            s.merge(stored, self.keep);
            s.loaded = true;
        }
    }

    /// Continues the bars of `symbol` from a forming state read from the bus's store,
    /// then folds `after`, the ticks that followed it (those already folded are
    /// skipped). Closed bars from each stored forming bar's start on are made again.
    pub fn restore<'a>(&self, symbol: &str, formed: Formed, after: impl Iterator<Item = &'a Tick>) {
        let Some(mut held) = self.held(symbol) else {
            return;
        };
        let (base, forming) = formed;
        held.bars.restore(base, forming);
        held.forming = Default::default();
        let writing = self.writing.load(Ordering::Relaxed);
        let mut whole = Vec::new();
        for t in after {
            let folded = held.bars.fold(t);
            if writing {
                whole_bars(&t.symbol, &folded, &mut whole);
            }
        }
        drop(held);
        if !whole.is_empty() {
            self.writes.lock().extend(whole);
        }
    }

    /// The node no longer receives `symbols`: their forming bars are dropped (what comes
    /// next may not continue them) and their series will be read from the store again.
    pub fn forget(&self, symbols: &[Symbol]) {
        for s in symbols {
            if let Some(mut held) = self.held(s) {
                held.bars.forget();
                held.forming = Default::default();
            }
        }
    }

    /// Has whole closed bars collected for [`Candles::take_writes`] (a node that writes
    /// the bars of symbols whose feed writes none).
    pub fn collect_writes(&self, on: bool) {
        self.writing.store(on, Ordering::Relaxed);
    }

    /// The whole closed bars collected since the last call.
    pub fn take_writes(&self) -> Vec<Written> {
        std::mem::take(&mut *self.writes.lock())
    }
}

/// Appends the whole bars `folded` closed, as writes for the store.
fn whole_bars(symbol: &Symbol, folded: &Folded, out: &mut Vec<Written>) {
    for (interval, bar, whole) in folded.closed() {
        if whole {
            out.push(Written {
                symbol: symbol.clone(),
                interval,
                bar: *bar,
            });
        }
    }
}
