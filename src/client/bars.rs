//! The newest bar held of each candles subscription: what tells a bar repeated by the
//! second connection of a move from news while both deliver the same bars.
//!
//! A bar only grows: the same `start` with more `ticks`, then `closed`, then a later
//! `start`. So a `candle` that says no more than the bar held is a repeat. And a fresh
//! `candles` message that the connection being moved to starts with is not a
//! replacement (nothing was missed): only its bars newer than the one held are passed on,
//! as the `candle` messages they would have been.

use std::collections::HashMap;

use super::message::Candle;
use crate::protocol::channel::Interval;
use crate::tick::Symbol;

/// How far a bar has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    start: u64,
    ticks: u64,
    closed: bool,
}

impl Held {
    fn of(c: &Candle) -> Held {
        Held {
            start: c.bar.start,
            ticks: c.bar.ticks,
            closed: c.closed,
        }
    }

    /// Whether `c` says more than this: a later bar, or this one with more ticks, or
    /// closed.
    fn older_than(&self, c: &Candle) -> bool {
        c.bar.start > self.start
            || (c.bar.start == self.start && !self.closed && (c.closed || c.bar.ticks > self.ticks))
    }
}

/// The newest bar held per symbol and interval.
#[derive(Default)]
pub(super) struct Bars(HashMap<(Symbol, Interval), Held>);

impl Bars {
    /// Takes a `candle`; false when, during a move (`overlap`), it repeats what is held.
    pub fn candle(
        &mut self,
        symbol: &Symbol,
        interval: Interval,
        c: &Candle,
        overlap: bool,
    ) -> bool {
        let key = (symbol.clone(), interval);
        match self.0.get(&key) {
            Some(h) if overlap && !h.older_than(c) => false,
            _ => {
                self.0.insert(key, Held::of(c));
                true
            }
        }
    }

    /// Takes a `candles` message. Outside a move, or when nothing is held, it replaces
    /// what was held: `None`, pass it on. During a move, the bars of it newer than the
    /// one held, to pass on as `candle` messages instead.
    pub fn candles(
        &mut self,
        symbol: &Symbol,
        interval: Interval,
        bars: &[Candle],
        overlap: bool,
    ) -> Option<Vec<Candle>> {
        let key = (symbol.clone(), interval);
        let held = self.0.get(&key).copied();
        let Some(mut held) = held.filter(|_| overlap) else {
            match bars.last() {
                Some(last) => self.0.insert(key, Held::of(last)),
                None => self.0.remove(&key),
            };
            return None;
        };
        let mut news = Vec::new();
        for c in bars {
            if held.older_than(c) {
                held = Held::of(c);
                news.push(*c);
            }
        }
        self.0.insert(key, held);
        Some(news)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::candles::Bar;

    fn bar(start: u64, ticks: u64, closed: bool) -> Candle {
        let mut b = Bar::open_at(start * 60_000_000_000, 10.0, 1);
        b.ticks = ticks;
        Candle { bar: b, closed }
    }

    #[test]
    fn during_a_move_only_news_pass() {
        let mut bars = Bars::default();
        let s = Symbol::from("AAPL");
        let i = Interval::M1;
        assert_eq!(
            bars.candles(&s, i, &[bar(1, 5, true), bar(2, 3, false)], false),
            None
        );
        assert!(bars.candle(&s, i, &bar(2, 4, false), true));
        assert!(!bars.candle(&s, i, &bar(2, 4, false), true), "a repeat");
        assert!(!bars.candle(&s, i, &bar(2, 3, false), true), "older");
        assert!(
            !bars.candle(&s, i, &bar(1, 5, true), true),
            "an earlier bar"
        );
        // The next connection starts with what it has: bar 2 closed, bar 3 forming.
        let news = bars.candles(
            &s,
            i,
            &[bar(1, 5, true), bar(2, 6, true), bar(3, 1, false)],
            true,
        );
        assert_eq!(news, Some(vec![bar(2, 6, true), bar(3, 1, false)]));
        assert!(!bars.candle(&s, i, &bar(2, 6, true), true), "closed once");
        assert!(bars.candle(&s, i, &bar(3, 2, false), true));
        // Outside a move a candles message replaces what is held, even if older.
        assert_eq!(bars.candles(&s, i, &[bar(1, 5, true)], false), None);
        assert!(bars.candle(&s, i, &bar(2, 1, false), true));
    }
}
