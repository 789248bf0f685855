//! How current each symbol's value is, as its node says (`status`, protocol v1.1).
//!
//! A node says `status` stale when it knows a symbol's source stopped (its feed, the
//! bus, or the symbol's channel on the bus), and `live` when values flow again, after
//! whatever `gap` or `snapshot` the return needs. A tick or a snapshot does not by itself
//! make a stale symbol live: only the node's `live` does.
//!
//! A new connection is a new session, and its node says `status` stale right after the
//! subscription's snapshot (or replay) for every symbol stale there, and nothing for the
//! others. So a reconnecting client keeps the marks it holds, and when some symbol is
//! marked stale it sends a `ping` after its subscription: the `pong` comes after
//! everything the subscription queued, so a symbol the new node has not called stale by
//! then is live there ([`Recheck`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::message::{StaleReason, SymbolState};
use crate::tick::Symbol;

/// Whether a symbol's latest value is current, as its node last said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Health {
    /// Values flow, or the node never said otherwise.
    #[default]
    Live,
    /// The node said the symbol's source stopped: the value held is not current.
    Stale {
        /// When this client was told.
        since: Instant,
        /// Why, as the node said.
        reason: StaleReason,
    },
}

/// What a `status` changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The symbol went stale, or is stale for another reason now.
    Stale {
        /// Why.
        reason: StaleReason,
        /// When it went stale (before now when only the reason changed).
        since: Instant,
    },
    /// The symbol is live again after having been stale this long.
    Live(Duration),
}

impl Health {
    /// Whether the node says the value is not current.
    pub fn is_stale(&self) -> bool {
        matches!(self, Health::Stale { .. })
    }

    /// How long the symbol has been stale at `now`; `None` while live.
    pub fn stale_for(&self, now: Instant) -> Option<Duration> {
        match self {
            Health::Live => None,
            Health::Stale { since, .. } => Some(now.saturating_duration_since(*since)),
        }
    }

    /// Why the symbol is stale; `None` while live.
    pub fn reason(&self) -> Option<&StaleReason> {
        match self {
            Health::Live => None,
            Health::Stale { reason, .. } => Some(reason),
        }
    }

    /// Takes what a `status` says, received at `now`; returns what it changed. A stale
    /// symbol said stale again keeps when it went stale.
    pub fn apply(&mut self, state: &SymbolState, now: Instant) -> Option<Change> {
        match (state, &mut *self) {
            (SymbolState::Live, Health::Live) => None,
            (SymbolState::Live, Health::Stale { since, .. }) => {
                let after = now.saturating_duration_since(*since);
                *self = Health::Live;
                Some(Change::Live(after))
            }
            (SymbolState::Stale(r), Health::Stale { reason, since }) => {
                if reason == r {
                    return None;
                }
                *reason = r.clone();
                Some(Change::Stale {
                    reason: r.clone(),
                    since: *since,
                })
            }
            (SymbolState::Stale(r), Health::Live) => {
                *self = Health::Stale {
                    since: now,
                    reason: r.clone(),
                };
                Some(Change::Stale {
                    reason: r.clone(),
                    since: now,
                })
            }
        }
    }
}

/// After a reconnect: the symbols still marked stale when the subscription was sent,
/// until the new node speaks of them or answers the `ping` sent after the subscription.
#[derive(Debug, Default)]
pub struct Recheck {
    ping: Option<u64>,
    symbols: HashSet<Symbol>,
}

impl Recheck {
    /// Starts a check of `stale` closed by the `pong` of `ping`, dropping any earlier
    /// one (whose connection is gone).
    pub fn start(&mut self, ping: u64, stale: impl IntoIterator<Item = Symbol>) {
        self.ping = Some(ping);
        self.symbols = stale.into_iter().collect();
    }

    /// Whether a check is under way, with a `ping` to send.
    pub fn pending(&self) -> bool {
        self.ping.is_some()
    }

    /// The node said a `status` of `symbol`: it is no longer in question.
    pub fn heard(&mut self, symbol: &str) {
        self.symbols.remove(symbol);
    }

    /// A `pong` with `id` arrived: when it closes the check, the symbols the node did
    /// not call stale (live there); `None` when the pong is not the check's.
    pub fn answered(&mut self, id: Option<u64>) -> Option<Vec<Symbol>> {
        if id.is_none() || id != self.ping {
            return None;
        }
        self.ping = None;
        Some(self.symbols.drain().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_change_is_reported_and_a_repeated_stale_keeps_its_start() {
        let t0 = Instant::now();
        let mut h = Health::default();
        let feed = SymbolState::Stale(StaleReason::Feed);
        assert_eq!(h.apply(&SymbolState::Live, t0), None);
        let went = Change::Stale {
            reason: StaleReason::Feed,
            since: t0,
        };
        assert_eq!(h.apply(&feed, t0), Some(went));
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(h.apply(&feed, t1), None);
        assert_eq!(h.stale_for(t1), Some(Duration::from_millis(1500)));
        let bus = SymbolState::Stale(StaleReason::Bus);
        let moved = Change::Stale {
            reason: StaleReason::Bus,
            since: t0,
        };
        assert_eq!(
            h.apply(&bus, t1),
            Some(moved),
            "a new reason, the same start"
        );
        assert_eq!(h.reason(), Some(&StaleReason::Bus));
        let t2 = t0 + Duration::from_secs(3);
        assert_eq!(
            h.apply(&SymbolState::Live, t2),
            Some(Change::Live(Duration::from_secs(3)))
        );
        assert!(!h.is_stale() && h.stale_for(t2).is_none());
    }

    #[test]
    fn a_recheck_ends_with_its_own_pong_only() {
        let mut r = Recheck::default();
        assert_eq!(r.answered(Some(1)), None, "no check under way");
        r.start(7, ["AAPL".into(), "MSFT".into()]);
        assert!(r.pending());
        r.heard("MSFT");
        assert_eq!(r.answered(None), None);
        assert_eq!(r.answered(Some(6)), None);
        let live: Vec<Symbol> = r.answered(Some(7)).unwrap();
        assert_eq!(live, vec![Symbol::from("AAPL")]);
        assert!(!r.pending());
        assert_eq!(r.answered(Some(7)), None, "answered once");
    }
}
