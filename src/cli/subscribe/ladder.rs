//! The live depth ladder of `tickstream subscribe --book`: the asks above (best at the
//! bottom), the spread, the bids below (best at the top); for each level its price, its
//! size and the size from the best level down to it; the best levels highlighted.

use crate::book::{Level, Side};
use crate::client::LocalBook;

/// The columns: side, price, size, cumulative size.
macro_rules! ladder_columns {
    () => {
        "{:<5} {:>14} {:>14} {:>16}"
    };
}

/// How a line of the screen looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Look {
    /// As is.
    Plain,
    /// Dimmed: a symbol the node says is stale.
    Dim,
    /// The best ask, highlighted.
    BestAsk,
    /// The best bid, highlighted.
    BestBid,
}

impl From<bool> for Look {
    fn from(dim: bool) -> Look {
        if dim {
            Look::Dim
        } else {
            Look::Plain
        }
    }
}

/// The book shown, and what was counted of it.
#[derive(Default)]
pub(super) struct Ladder {
    pub book: Option<LocalBook>,
    /// Book messages applied.
    pub messages: u64,
    /// Book messages that did not match (a hole, a checksum): each re-synced.
    pub mismatches: u64,
}

impl Ladder {
    /// The ladder in at most `room` lines (the header and the spread included).
    pub fn lines(&self, symbol: &str, room: usize) -> Vec<(String, Look)> {
        let Some(b) = &self.book else {
            return vec![(format!("{symbol}: waiting for the book…"), Look::Plain)];
        };
        let head = format!(
            "{symbol}  book seq {}  epoch {}  depth {}  checksum {}  messages {}  mismatches {}",
            b.book.seq,
            b.book.epoch,
            b.depth.levels(),
            b.checksum(),
            self.messages,
            self.mismatches
        );
        let mut lines = vec![
            (head, Look::Plain),
            (
                format!(ladder_columns!(), "", "PRICE", "SIZE", "CUMULATIVE"),
                Look::Plain,
            ),
        ];
        let per_side = (room.saturating_sub(3) / 2).max(1);
        let asks = b.levels().top(Side::Ask, per_side);
        let bids = b.levels().top(Side::Bid, per_side);
        let mut rows = side_rows(b, "ASK", asks, Look::BestAsk);
        rows.reverse();
        lines.extend(rows);
        let spread = match b.spread() {
            Some(t) => format!("spread {} ({t} ticks)", b.price_text(t)),
            None => "spread -".to_owned(),
        };
        lines.push((format!("      {spread}"), Look::Plain));
        lines.extend(side_rows(b, "BID", bids, Look::BestBid));
        lines
    }
}

/// The rows of one side, best first, with sizes summed from the best level.
fn side_rows(b: &LocalBook, name: &str, levels: &[Level], best: Look) -> Vec<(String, Look)> {
    let mut cum = 0u64;
    levels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            cum += l.size;
            let line = format!(ladder_columns!(), name, b.price_text(l.price), l.size, cum);
            (line, if i == 0 { best } else { Look::Plain })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::{Book, Levels, Spec};
    use crate::protocol::channel::Depth;

    #[test]
    fn asks_above_bids_below_with_cumulative_sizes_and_the_best_highlighted() {
        let lv = |p: &[(u64, u64)]| p.iter().map(|&(p, s)| Level::new(p, s)).collect();
        let book = LocalBook {
            symbol: "AAPL".into(),
            book: Book {
                epoch: "e1".into(),
                seq: 7,
                ts: 0,
                levels: Levels::new(
                    lv(&[(18910, 300), (18909, 100)]),
                    lv(&[(18912, 200), (18913, 500)]),
                ),
            },
            spec: Spec::new(2),
            depth: Depth::Top10,
        };
        let ladder = Ladder {
            book: Some(book),
            messages: 3,
            mismatches: 0,
        };
        let lines = ladder.lines("AAPL", 40);
        let text: Vec<String> = lines
            .iter()
            .map(|(l, _)| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            text[2..],
            [
                "ASK 189.13 500 700",
                "ASK 189.12 200 200",
                "spread 0.02 (2 ticks)",
                "BID 189.10 300 300",
                "BID 189.09 100 400",
            ]
        );
        assert_eq!(lines[3].1, Look::BestAsk);
        assert_eq!(lines[5].1, Look::BestBid);
        assert_eq!(lines[6].1, Look::Plain);
        assert!(text[0].contains("book seq 7") && text[0].contains("mismatches 0"));
        // A short terminal shows the levels nearest the touch.
        let short = ladder.lines("AAPL", 5);
        assert_eq!(short.len(), 5, "{short:?}");
    }
}
