//! The live table of bars of `tickstream subscribe --candles`: per symbol, in first-seen
//! order, its newest bars (as many as the terminal has room for), oldest first.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::{clock_of, price};
use crate::client::{Candle, ServerMessage, StaleReason};
use crate::protocol::channel::Interval;

/// Bars kept per symbol: more than a terminal shows.
const KEPT: usize = 120;

/// The columns: symbol, interval, start, open, high, low, close, volume, ticks, state.
macro_rules! bar_columns {
    () => {
        "{:<12} {:>4} {:>8} {:>12} {:>12} {:>12} {:>12} {:>10} {:>6}  {}"
    };
}

/// The bars of each symbol.
#[derive(Default)]
pub(super) struct BarTable {
    order: Vec<String>,
    bars: HashMap<String, (Interval, VecDeque<Candle>)>,
}

impl BarTable {
    /// Takes a `candles` message (the bars it holds replace the symbol's) or a
    /// `candle` (a new bar, or the newest state of one held).
    pub fn take(&mut self, m: &ServerMessage) {
        let (symbol, interval, new): (&str, Interval, &[Candle]) = match m {
            ServerMessage::Candles {
                symbol,
                interval,
                bars,
            } => (symbol, *interval, bars),
            ServerMessage::Candle {
                symbol,
                interval,
                candle,
            } => (symbol, *interval, std::slice::from_ref(candle)),
            _ => return,
        };
        if !self.bars.contains_key(symbol) {
            self.order.push(symbol.to_owned());
        }
        let (held_interval, held) = self
            .bars
            .entry(symbol.to_owned())
            .or_insert_with(|| (interval, VecDeque::new()));
        if matches!(m, ServerMessage::Candles { .. }) {
            held.clear();
        }
        *held_interval = interval;
        for c in new {
            if let Some(h) = held.iter_mut().rev().find(|h| h.bar.start == c.bar.start) {
                *h = *c;
            } else if held.back().is_none_or(|b| b.bar.start < c.bar.start) {
                held.push_back(*c);
                if held.len() > KEPT {
                    held.pop_front();
                }
            }
            // Otherwise older than the newest bar kept, and not kept itself: not shown.
        }
    }

    /// The header and the rows that fit in `room`: each symbol's newest bars, as many
    /// per symbol as there is room for (one at least); a stale symbol's rows dimmed.
    pub fn lines(
        &self,
        room: usize,
        stale: &HashMap<String, (Instant, StaleReason)>,
    ) -> Vec<(String, bool)> {
        let head = format!(
            bar_columns!(),
            "SYMBOL", "INT", "START", "OPEN", "HIGH", "LOW", "CLOSE", "VOLUME", "TICKS", "STATE"
        );
        let mut lines = vec![(head, false)];
        let per = (room / self.order.len().max(1)).max(1);
        let mut symbols = 0;
        for sym in &self.order {
            let left = room.saturating_sub(lines.len() - 1);
            if left == 0 {
                break;
            }
            let (interval, held) = &self.bars[sym];
            let dim = stale.contains_key(sym);
            let skip = held.len().saturating_sub(per.min(left));
            lines.extend(
                held.iter()
                    .skip(skip)
                    .map(|c| (row(sym, *interval, c), dim)),
            );
            symbols += 1;
        }
        if symbols < self.order.len() {
            let more = self.order.len() - symbols;
            lines.push((format!("… {more} more symbols"), false));
        }
        lines
    }
}

/// One bar's row.
fn row(symbol: &str, interval: Interval, c: &Candle) -> String {
    let b = &c.bar;
    format!(
        bar_columns!(),
        symbol,
        interval.as_str(),
        clock_of(b.start),
        price(b.open),
        price(b.high),
        price(b.low),
        price(b.close),
        b.volume,
        b.ticks,
        if c.closed { "closed" } else { "forming" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::candles::Bar;

    fn candle(minute: u64, ticks: u64, closed: bool) -> Candle {
        let mut bar = Bar::open_at(
            1_764_284_400_000_000_000 + minute * 60_000_000_000,
            189.5,
            10,
        );
        bar.add(190.25, 5);
        bar.ticks = ticks;
        Candle { bar, closed }
    }

    fn candle_msg(symbol: &str, c: Candle) -> ServerMessage {
        ServerMessage::Candle {
            symbol: symbol.into(),
            interval: Interval::M1,
            candle: c,
        }
    }

    #[test]
    fn bars_are_replaced_updated_and_appended_in_order() {
        let mut t = BarTable::default();
        t.take(&ServerMessage::Candles {
            symbol: "AAPL".into(),
            interval: Interval::M1,
            bars: vec![candle(0, 3, true), candle(1, 2, false)],
        });
        t.take(&candle_msg("AAPL", candle(1, 4, true)));
        t.take(&candle_msg("AAPL", candle(2, 1, false)));
        t.take(&candle_msg("MSFT", candle(2, 1, false)));
        let lines = t.lines(10, &HashMap::new());
        let text: Vec<&str> = lines.iter().map(|(l, _)| l.as_str()).collect();
        assert!(
            text[0].starts_with("SYMBOL") && text[0].ends_with("STATE"),
            "{text:?}"
        );
        assert_eq!(text.len(), 5, "{text:#?}");
        assert!(
            text[1].starts_with("AAPL") && text[1].contains(" 23:00:00 "),
            "{}",
            text[1]
        );
        assert!(
            text[2].contains(" 23:01:00 ") && text[2].ends_with("4  closed"),
            "{}",
            text[2]
        );
        assert!(
            text[3].contains(" 23:02:00 ") && text[3].ends_with("1  forming"),
            "{}",
            text[3]
        );
        assert!(text[4].starts_with("MSFT"));
        for col in ["189.5000", "190.2500", " 15 "] {
            assert!(text[1].contains(col), "{col} in {}", text[1]);
        }
        // Two rows of room: the newest bar of each symbol.
        let lines = t.lines(2, &HashMap::new());
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[1].0.contains(" 23:02:00 ") && lines[2].0.starts_with("MSFT"));
        // A fresh candles message replaces what was held.
        t.take(&ServerMessage::Candles {
            symbol: "AAPL".into(),
            interval: Interval::M1,
            bars: vec![candle(5, 1, false)],
        });
        assert_eq!(t.lines(10, &HashMap::new()).len(), 3);
    }
}
