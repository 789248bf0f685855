//! The node's side of bars in Redis ([`super::bars`] is the layout): continuing the
//! forming bars of a symbol it starts receiving, reading closed bars for backfill, and
//! writing the whole bars of symbols whose feed writes none.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::bars;
use super::topology::Topology;
use super::Keys;
use crate::hub::candles::{Bar, Interval, Written};
use crate::hub::Hub;
use crate::tick::Symbol;

/// How often the bars this node made whole are written, for the symbols it writes.
const WRITE_EVERY: Duration = Duration::from_millis(250);

/// Where a node's bars are read and written: the servers, the key names, how much of
/// `hist:` a restore may read, and how many bars a set keeps.
pub(crate) struct Store<'a> {
    /// Routing and command connections.
    pub topology: &'a Topology,
    /// Key names.
    pub keys: &'a Keys,
    /// Ticks a `hist:` stream holds at most.
    pub history: usize,
    /// Bars a set keeps.
    pub keep: usize,
}

impl Store<'_> {
    /// Continues the forming bars of `symbols` (just subscribed) from their stored state
    /// and the `hist:` ticks after it. A symbol with no stored state keeps the bars made
    /// from what the node receives; a failed read is logged and leaves them so too.
    pub async fn restore(&self, hub: &Hub, symbols: &[Symbol]) {
        match bars::read_formed(self.topology, self.keys, symbols, self.history).await {
            Ok(found) => {
                for (s, formed, after) in found {
                    hub.restore_candles(&s, formed, &after);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the forming bars from Redis failed"),
        }
    }

    /// The newest `n` closed bars of each `(symbol, interval)`, oldest first, and how
    /// many stored bars were malformed.
    pub async fn read(
        &self,
        wants: &[(Symbol, Interval)],
        n: usize,
    ) -> redis::RedisResult<(Vec<Vec<Bar>>, usize)> {
        let mut by_symbol: HashMap<Symbol, Vec<Interval>> = HashMap::new();
        for (s, iv) in wants {
            by_symbol.entry(s.clone()).or_default().push(*iv);
        }
        let syms: Vec<Symbol> = by_symbol.keys().cloned().collect();
        let keys = self.keys;
        let replies = self
            .topology
            .per_symbol(&syms, |s, p| {
                for iv in &by_symbol[s] {
                    bars::read(p, keys, s, *iv, n);
                }
            })
            .await?;
        let mut found: HashMap<(Symbol, Interval), Vec<Bar>> = HashMap::new();
        let mut malformed = 0;
        for (s, r) in syms.iter().zip(replies) {
            for (iv, reply) in by_symbol[s].iter().zip(r) {
                let (got, bad) = bars::parse_bars(reply, *iv);
                malformed += bad;
                found.insert((s.clone(), *iv), got);
            }
        }
        let out = wants
            .iter()
            .map(|w| found.remove(w).unwrap_or_default())
            .collect();
        Ok((out, malformed))
    }

    /// Writes `written`, whole bars this node made, for the symbols `owned` says no
    /// tickstream feed holds (those feeds write their own).
    async fn write(
        &self,
        written: Vec<Written>,
        owned: impl Fn(&str) -> bool,
    ) -> redis::RedisResult<()> {
        let mut by_symbol: HashMap<Symbol, Vec<(Interval, Bar)>> = HashMap::new();
        for w in written {
            if !owned(&w.symbol) {
                by_symbol
                    .entry(w.symbol)
                    .or_default()
                    .push((w.interval, w.bar));
            }
        }
        if by_symbol.is_empty() {
            return Ok(());
        }
        let syms: Vec<Symbol> = by_symbol.keys().cloned().collect();
        let (keys, keep) = (self.keys, self.keep);
        self.topology
            .per_symbol(&syms, |s, p| {
                for (iv, bar) in &by_symbol[s] {
                    bars::add(p, keys, s, *iv, bar, keep);
                }
            })
            .await
            .map(|_| ())
    }
}

/// Writes the whole bars the node makes every [`WRITE_EVERY`] (those of the symbols
/// `owned` says no feed holds), until `stop`.
pub(crate) async fn write_loop(
    store: Store<'_>,
    hub: Arc<Hub>,
    owned: impl Fn(&str) -> bool,
    stop: CancellationToken,
) {
    let candles = hub.candles();
    candles.collect_writes(true);
    let mut every = tokio::time::interval(WRITE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        let written = candles.take_writes();
        if written.is_empty() {
            continue;
        }
        if let Err(e) = store.write(written, &owned).await {
            tracing::debug!(error = %e, "writing bars to Redis failed");
        }
    }
    candles.collect_writes(false);
}
