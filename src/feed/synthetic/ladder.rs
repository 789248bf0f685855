//! The synthetic feed's order book of one symbol: an L2 ladder of 64 to 80 levels a side
//! on the symbol's tick grid, moved by each tick of the walk.
//!
//! **Shape.** Levels are dense near the touch and sparser away from it: the step from
//! one level to the next is 1 tick plus a geometric number of empty ticks whose mean is
//! a quarter of the current spread (so a hot equity quoted a tick wide has a level on
//! every cent, a crypto pair quoted 200 ticks wide one every 50 or so), growing with
//! depth. Sizes are whole lots (equities 100 shares, FX 100,000 units, crypto one coin)
//! drawn around the symbol's typical quote size, growing with depth, with an
//! occasional wall of several times the size.
//!
//! **Motion.** Each tick sets the touch to the walk's new bid and ask: levels through
//! it are taken out, and a level is put at the new best price where there is none.
//! Then one to a few levels near the touch change (mostly the best three: a size
//! changes, a level is cancelled, or a level fills an empty tick), and the far end is
//! refilled or trimmed to stay within 64 to 80 levels. The quote is read off the book
//! after the step, so `bid`, `ask` and their sizes are the book's best levels.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::geometric;
use crate::book::{Level, Levels, Side};

/// Levels a side the ladder is refilled to.
pub const LEVELS: usize = 64;
/// Levels a side past which the far end is trimmed.
pub const MAX_LEVELS: usize = 80;

/// How one symbol's levels are drawn.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    /// Units in one lot.
    pub(super) lot: u64,
    /// Mean lots at the touch.
    pub(super) lots: f64,
}

/// A symbol's book in the synthetic feed.
#[derive(Clone, Debug, Default)]
pub(super) struct Ladder {
    pub(super) levels: Levels,
    /// Levels changed by the current step, with the size each had before (to build its
    /// update).
    touched: Vec<(Side, u64, u64)>,
}

impl Ladder {
    /// A full ladder around a touch of `bid` and `ask` ticks.
    pub(super) fn new(bid: u64, ask: u64, shape: Shape, rng: &mut ChaCha8Rng) -> Ladder {
        let mut l = Ladder::default();
        l.levels.set(Side::Bid, bid, size(shape, 0, rng));
        l.levels.set(Side::Ask, ask, size(shape, 0, rng));
        l.refill(shape, rng);
        l.touched.clear();
        l
    }

    /// Moves the book to a touch of `bid` and `ask` ticks (`bid` < `ask`) and changes a
    /// few levels near it; returns the levels changed, each side best first (size 0:
    /// removed).
    pub(super) fn step(
        &mut self,
        bid: u64,
        ask: u64,
        shape: Shape,
        rng: &mut ChaCha8Rng,
    ) -> (Vec<Level>, Vec<Level>) {
        self.touch(Side::Bid, bid, shape, rng);
        self.touch(Side::Ask, ask, shape, rng);
        let churn = 1 + geometric(rng, 0.8);
        for _ in 0..churn {
            let side = if rng.random::<bool>() {
                Side::Bid
            } else {
                Side::Ask
            };
            self.churn(side, shape, rng);
        }
        self.refill(shape, rng);
        self.changed()
    }

    fn set(&mut self, side: Side, price: u64, size: u64) {
        let was = self.levels.set(side, price, size);
        self.touched.push((side, price, was));
    }

    /// Takes out the levels through `best` and puts one at `best` where there is none.
    fn touch(&mut self, side: Side, best: u64, shape: Shape, rng: &mut ChaCha8Rng) {
        let through = |p: u64| match side {
            Side::Bid => p > best,
            Side::Ask => p < best,
        };
        while let Some(l) = self.levels.best(side).filter(|l| through(l.price)) {
            self.set(side, l.price, 0);
        }
        if self.levels.best(side).map(|l| l.price) != Some(best) {
            let s = size(shape, 0, rng);
            self.set(side, best, s);
        }
    }

    /// One change near the touch of `side`: a new size, a cancelled level, or a level
    /// in an empty tick. The best level is never cancelled (the touch is the quote's).
    fn churn(&mut self, side: Side, shape: Shape, rng: &mut ChaCha8Rng) {
        let n = self.levels.side(side).len();
        if n < 2 {
            return;
        }
        let i = (geometric(rng, 1.2) as usize).min(n - 2);
        let (here, next) = (self.levels.side(side)[i], self.levels.side(side)[i + 1]);
        let roll: f64 = rng.random();
        if roll < 0.7 {
            let s = size(shape, i, rng);
            self.set(side, here.price, s);
        } else if roll < 0.85 && i > 0 {
            self.set(side, here.price, 0);
        } else if here.price.abs_diff(next.price) > 1 {
            let gap = rng.random_range(1..here.price.abs_diff(next.price));
            let price = match side {
                Side::Bid => here.price - gap,
                Side::Ask => here.price + gap,
            };
            let s = size(shape, i + 1, rng);
            self.set(side, price, s);
        }
    }

    /// Refills each side to [`LEVELS`] at its far end (bids never below 1 tick), and
    /// trims it past [`MAX_LEVELS`].
    fn refill(&mut self, shape: Shape, rng: &mut ChaCha8Rng) {
        let spread = match (self.levels.best(Side::Bid), self.levels.best(Side::Ask)) {
            (Some(b), Some(a)) => a.price.saturating_sub(b.price).max(1),
            _ => 1,
        };
        for side in Side::BOTH {
            while self.levels.side(side).len() > MAX_LEVELS {
                let last = *self.levels.side(side).last().expect("not empty");
                self.set(side, last.price, 0);
            }
            while self.levels.side(side).len() < LEVELS {
                let depth = self.levels.side(side).len();
                let Some(last) = self.levels.side(side).last().copied() else {
                    return;
                };
                let mean = spread as f64 / 4.0 * (1.0 + depth as f64 / 20.0);
                let step = 1 + geometric(rng, mean);
                let price = match side {
                    Side::Bid if last.price > step => last.price - step,
                    Side::Bid => break,
                    Side::Ask => last.price + step,
                };
                let s = size(shape, depth, rng);
                self.set(side, price, s);
            }
        }
    }

    /// The levels the step changed, with their sizes now, each side best first (a level
    /// set and put back within the step is left out).
    fn changed(&mut self) -> (Vec<Level>, Vec<Level>) {
        let mut touched = std::mem::take(&mut self.touched);
        // Stable: the first change of a level, which knows its size before the step,
        // is the one kept.
        touched.sort_by_key(|&(side, p, _)| match side {
            Side::Bid => (0, !p),
            Side::Ask => (1, p),
        });
        touched.dedup_by_key(|&mut (side, p, _)| (side, p));
        let mut out = (Vec::new(), Vec::new());
        for &(side, price, was) in &touched {
            let level = Level::new(price, self.levels.size(side, price));
            if level.size == was {
                continue;
            }
            match side {
                Side::Bid => out.0.push(level),
                Side::Ask => out.1.push(level),
            }
        }
        touched.clear();
        self.touched = touched;
        out
    }
}

/// A level's size `depth` levels from the touch: whole lots around the symbol's
/// typical size, larger deeper, now and then a wall.
fn size(shape: Shape, depth: usize, rng: &mut ChaCha8Rng) -> u64 {
    let mean = shape.lots * (1.0 + depth as f64 / 10.0);
    let mut lots = 1 + geometric(rng, mean);
    if rng.random::<f64>() < 0.02 {
        lots *= rng.random_range(4..10);
    }
    lots * shape.lot
}
