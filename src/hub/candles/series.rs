//! One symbol's bars in every interval, made from its ticks in order.
//!
//! The rules, which depend on nothing but the ticks and their order (so every node, and
//! the feed's publisher, make the same bars from the same ticks):
//!
//! - A tick's time is its recorded time `src_ts` when it has one (a replay re-stamps
//!   `ts`), else `ts`. Within an epoch, time never goes back: a tick stamped before the
//!   one folded before it counts at that one's time (it joins the forming bar).
//! - A tick whose time falls past the forming bar's interval closes that bar and opens
//!   the next one. An interval with no tick has no bar.
//! - OHLC come from each tick's `last`; `ticks` counts them.
//! - `volume` is the rise of the cumulative `volume`: a tick adds its volume minus that
//!   of the tick before it in the same epoch (ticks lost in between included, so the
//!   volumes of the bars add up to the whole rise). A volume that goes down adds nothing
//!   and becomes the new base. The first tick of an epoch (`seq` 1) adds its whole
//!   volume (the count starts with the epoch); a tick with no known predecessor (the
//!   first a holder ever sees, or the first of a new epoch that does not start at 1)
//!   adds nothing.
//! - A new epoch whose first tick lies in an interval before the forming bar's (a replay
//!   started over, or from the past) rewinds that interval's series: the bars from that
//!   interval on are dropped and made again from the new ticks.
//! - A bar is *whole* when each of its ticks followed its predecessor without a hole
//!   (`seq` + 1 in the same epoch, or `seq` 1 of a new epoch): such a bar is exactly
//!   what any holder that saw all the ticks makes.

use std::collections::VecDeque;
use std::sync::Arc;

use super::bar::{Bar, Interval, INTERVALS};
use crate::tick::Tick;

/// The last tick folded: what the next one continues.
#[derive(Clone, Debug, PartialEq)]
pub struct Base {
    /// Its epoch.
    pub epoch: Arc<str>,
    /// Its `seq`.
    pub seq: u64,
    /// Its cumulative `volume`.
    pub volume: u64,
    /// Its time as the bars count it (never before the time of the tick before it).
    pub time: u64,
}

/// What one tick does to the bars, before it is folded into each interval.
struct Step {
    price: f64,
    rise: u64,
    time: u64,
    /// Follows its predecessor without a hole.
    contiguous: bool,
}

/// The bars of one interval.
#[derive(Debug, Default)]
pub(crate) struct Series {
    /// Closed bars, oldest first.
    pub closed: VecDeque<Bar>,
    /// The bar being made.
    pub forming: Option<Bar>,
    /// The forming bar is whole (see the module's rules).
    pub whole: bool,
    /// Closed bars were read from the bus's store since the symbol was last forgotten.
    pub loaded: bool,
}

impl Series {
    /// Folds one step in, saying in `out` what changed.
    fn fold(&mut self, iv: Interval, s: &Step, keep: usize, out: &mut Change) {
        let start = iv.start_of(s.time);
        if let Some(f) = self.forming.as_mut() {
            if start == f.start {
                f.add(s.price, s.rise);
                self.whole &= s.contiguous;
                out.forming = true;
                return;
            }
            if start < f.start {
                // Only a new epoch gets here (within an epoch time never goes back).
                self.rewind(start);
                out.rewound = true;
            }
        }
        if let Some(done) = self.forming.take() {
            out.closed = Some((done, self.whole));
            self.push_closed(done, keep);
        }
        self.forming = Some(Bar::open_at(start, s.price, s.rise));
        self.whole = s.contiguous;
        out.forming = true;
    }

    /// Drops the forming bar and every closed bar from `start` on.
    fn rewind(&mut self, start: u64) {
        self.forming = None;
        while self.closed.back().is_some_and(|b| b.start >= start) {
            self.closed.pop_back();
        }
    }

    /// Appends a closed bar, the oldest dropped past `keep`.
    pub fn push_closed(&mut self, bar: Bar, keep: usize) {
        self.closed.push_back(bar);
        while self.closed.len() > keep {
            self.closed.pop_front();
        }
    }

    /// Merges closed bars read from the bus's store (oldest first) with those held:
    /// the store's bar wins where both have one; the newest `keep` are kept.
    pub fn merge(&mut self, stored: Vec<Bar>, keep: usize) {
        let forming = self.forming.map(|f| f.start);
        let mut all: Vec<Bar> = stored
            .into_iter()
            .filter(|b| forming.is_none_or(|f| b.start < f))
            .collect();
        all.extend(self.closed.drain(..));
        // Stable: for equal starts the stored bar, which comes first, is kept.
        all.sort_by_key(|b| b.start);
        all.dedup_by_key(|b| b.start);
        let skip = all.len().saturating_sub(keep);
        self.closed = all.into_iter().skip(skip).collect();
    }
}

/// What one tick did to one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Change {
    /// The bar it closed, and whether that bar was whole.
    pub closed: Option<(Bar, bool)>,
    /// The forming bar changed (the tick was folded in).
    pub forming: bool,
    /// The series went back in time (a new epoch from an earlier interval): bars a
    /// subscriber holds from there on are gone.
    pub rewound: bool,
}

/// What one tick did, per interval (indexed by [`Interval::index`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Folded {
    /// Per interval.
    pub changes: [Change; INTERVALS],
}

impl Folded {
    /// The bars the tick closed, with their interval and whether each was whole.
    pub fn closed(&self) -> impl Iterator<Item = (Interval, &Bar, bool)> + '_ {
        Interval::ALL
            .iter()
            .zip(&self.changes)
            .filter_map(|(iv, c)| c.closed.as_ref().map(|(b, w)| (*iv, b, *w)))
    }

    /// Whether the tick was folded at all (false for a `seq` already folded).
    pub fn any(&self) -> bool {
        self.changes.iter().any(|c| c.forming)
    }
}

/// One symbol's bars in every interval, and the tick they continue from.
#[derive(Debug)]
pub struct Bars {
    base: Option<Base>,
    series: [Series; INTERVALS],
    keep: usize,
}

impl Bars {
    /// No bars yet; at most `keep` closed bars are kept per interval.
    pub fn new(keep: usize) -> Bars {
        Bars {
            base: None,
            series: Default::default(),
            keep: keep.max(1),
        }
    }

    /// The last tick folded.
    pub fn base(&self) -> Option<&Base> {
        self.base.as_ref()
    }

    pub(crate) fn series(&self, iv: Interval) -> &Series {
        &self.series[iv.index()]
    }

    pub(crate) fn series_mut(&mut self, iv: Interval) -> &mut Series {
        &mut self.series[iv.index()]
    }

    /// The bar being made in `iv`, and whether it is whole.
    pub fn forming(&self, iv: Interval) -> Option<(Bar, bool)> {
        let s = self.series(iv);
        s.forming.map(|b| (b, s.whole))
    }

    /// The newest `n` closed bars of `iv`, oldest first.
    pub fn closed(&self, iv: Interval, n: usize) -> Vec<Bar> {
        let c = &self.series(iv).closed;
        c.iter().skip(c.len().saturating_sub(n)).copied().collect()
    }

    /// Takes `tick` as the last one seen without folding it (a latest value read from
    /// the bus when the symbol is first watched): the next tick continues it. Ignored
    /// when it is not newer than what was folded in its epoch.
    pub fn continue_from(&mut self, tick: &Tick) {
        if let Some(b) = &self.base {
            if b.epoch == tick.epoch && tick.seq <= b.seq {
                return;
            }
        }
        let time = tick_time(tick);
        self.base = Some(Base {
            epoch: tick.epoch.clone(),
            seq: tick.seq,
            volume: tick.volume,
            time: self.base.as_ref().map_or(time, |b| {
                if b.epoch == tick.epoch {
                    time.max(b.time)
                } else {
                    time
                }
            }),
        });
    }

    /// Folds `tick` into every interval. A `seq` this epoch already folded changes
    /// nothing.
    pub fn fold(&mut self, tick: &Tick) -> Folded {
        let mut out = Folded::default();
        let Some(step) = self.step(tick) else {
            return out;
        };
        for (k, iv) in Interval::ALL.into_iter().enumerate() {
            self.series[k].fold(iv, &step, self.keep, &mut out.changes[k]);
        }
        self.base = Some(Base {
            epoch: tick.epoch.clone(),
            seq: tick.seq,
            volume: tick.volume,
            time: step.time,
        });
        out
    }

    /// How `tick` continues the base, or `None` for a seq already folded.
    fn step(&self, tick: &Tick) -> Option<Step> {
        let time = tick_time(tick);
        let first_of_epoch = tick.seq == 1;
        let (rise, contiguous, time) = match &self.base {
            Some(b) if b.epoch == tick.epoch => {
                if tick.seq <= b.seq {
                    return None;
                }
                let rise = tick.volume.saturating_sub(b.volume);
                (rise, tick.seq == b.seq + 1, time.max(b.time))
            }
            _ => {
                let rise = if first_of_epoch { tick.volume } else { 0 };
                (rise, first_of_epoch, time)
            }
        };
        Some(Step {
            price: tick.last,
            rise,
            time,
            contiguous,
        })
    }

    /// Starts again from a stored state: the base and, per interval, the forming bar
    /// (with whether it is whole). Closed bars from a stored forming bar's start on are
    /// dropped (they are made again by the ticks folded next), and those before it may
    /// lack some the store has (the node missed ticks): the series is to be read from
    /// the store again. An interval the state has no bar for keeps its own.
    pub fn restore(&mut self, base: Base, forming: [Option<(Bar, bool)>; INTERVALS]) {
        for (s, f) in self.series.iter_mut().zip(forming) {
            if let Some((bar, whole)) = f {
                s.rewind(bar.start);
                s.forming = Some(bar);
                s.whole = whole;
                s.loaded = false;
            }
        }
        self.base = Some(base);
    }

    /// Forgets everything but the closed bars (the symbol is no longer received: what
    /// comes next may not continue what was folded), and marks every series as not
    /// loaded from the store.
    pub fn forget(&mut self) {
        self.base = None;
        for s in &mut self.series {
            s.forming = None;
            s.whole = false;
            s.loaded = false;
        }
    }
}

/// The time a tick counts at: its recorded time when replayed, else its `ts`.
pub fn tick_time(tick: &Tick) -> u64 {
    tick.src_ts.unwrap_or(tick.ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_764_284_460_000_000_000;
    const S: u64 = 1_000_000_000;

    fn tick(epoch: &str, seq: u64, time: u64, last: f64, volume: u64) -> Tick {
        let mut t = Tick::example();
        t.epoch = epoch.into();
        t.seq = seq;
        t.ts = time;
        t.last = last;
        t.volume = volume;
        t
    }

    #[test]
    fn a_tick_on_a_boundary_opens_the_next_bar() {
        let mut b = Bars::new(10);
        b.fold(&tick("e", 1, T0 - 1, 1.0, 10));
        let f = b.fold(&tick("e", 2, T0, 2.0, 15));
        let (iv, closed, whole) = f.closed().next().unwrap();
        assert_eq!(
            (iv, closed.start, closed.ticks, whole),
            (Interval::S1, T0 - S, 1, true)
        );
        assert_eq!(f.closed().count(), 2, "1s and 1m close at a minute's start");
        b.fold(&tick("e", 3, T0 + S - 1, 3.0, 16));
        let (bar, _) = b.forming(Interval::S1).unwrap();
        assert_eq!(
            (bar.start, bar.open, bar.close, bar.high, bar.low),
            (T0, 2.0, 3.0, 3.0, 2.0)
        );
        assert_eq!((bar.volume, bar.ticks), (6, 2));
        assert_eq!(
            b.closed(Interval::M1, 5)[0].volume,
            10,
            "seq 1 adds its whole volume"
        );
    }

    #[test]
    fn volume_is_the_rise_and_a_drop_or_an_unknown_start_adds_nothing() {
        let mut b = Bars::new(10);
        b.fold(&tick("e", 5, T0, 1.0, 100));
        b.fold(&tick("e", 6, T0 + 1, 1.0, 130));
        b.fold(&tick("e", 9, T0 + 2, 1.0, 150));
        b.fold(&tick("e", 10, T0 + 3, 1.0, 40));
        b.fold(&tick("e", 11, T0 + 4, 1.0, 45));
        let (bar, whole) = b.forming(Interval::S1).unwrap();
        // 0 (no predecessor) + 30 + 20 (ticks lost in between count) + 0 (down) + 5.
        assert_eq!((bar.volume, bar.ticks, whole), (55, 5, false));
        b.fold(&tick("f", 3, T0 + 5, 1.0, 1000));
        b.fold(&tick("g", 1, T0 + 6, 1.0, 7));
        assert_eq!(b.forming(Interval::S1).unwrap().0.volume, 62);
    }

    #[test]
    fn time_never_goes_back_within_an_epoch_but_a_new_epoch_rewinds() {
        let mut b = Bars::new(10);
        for (seq, t) in [(1, T0), (2, T0 + S), (3, T0 + 2 * S)] {
            b.fold(&tick("e", seq, t, seq as f64, seq));
        }
        // Stamped in the first second, folded into the forming third.
        let f = b.fold(&tick("e", 4, T0 + 10, 9.0, 4));
        assert_eq!(f.closed().count(), 0);
        let (bar, _) = b.forming(Interval::S1).unwrap();
        assert_eq!((bar.start, bar.close, bar.ticks), (T0 + 2 * S, 9.0, 2));
        // A replay started over: back to the second one.
        let f = b.fold(&tick("r", 1, T0 + S + 5, 5.0, 1));
        assert!(f.changes[Interval::S1.index()].rewound);
        assert!(
            !f.changes[Interval::M1.index()].rewound,
            "same minute: no rewind"
        );
        assert_eq!(
            b.closed(Interval::S1, 10).len(),
            1,
            "the second bar is made again"
        );
        assert_eq!(b.forming(Interval::S1).unwrap().0.start, T0 + S);
        assert_eq!(b.forming(Interval::M1).unwrap().0.ticks, 5);
    }

    #[test]
    fn a_seq_already_folded_changes_nothing_and_a_restore_continues() {
        let mut b = Bars::new(10);
        b.fold(&tick("e", 1, T0, 1.0, 1));
        b.fold(&tick("e", 2, T0 + 1, 2.0, 2));
        assert!(!b.fold(&tick("e", 2, T0 + 2, 3.0, 3)).any());
        let saved = (b.base().unwrap().clone(), {
            let mut f: [Option<(Bar, bool)>; INTERVALS] = Default::default();
            for iv in Interval::ALL {
                f[iv.index()] = b.forming(iv);
            }
            f
        });
        b.fold(&tick("e", 3, T0 + S, 3.0, 4));
        let mut other = Bars::new(10);
        other.continue_from(&tick("e", 9, T0 + 3, 1.0, 1));
        other.series_mut(Interval::S1).loaded = true;
        other.restore(saved.0, saved.1);
        assert!(
            !other.series(Interval::S1).loaded,
            "read from the store again"
        );
        let f = other.fold(&tick("e", 3, T0 + S, 3.0, 4));
        assert_eq!(
            f.closed().next().map(|(_, b, w)| (*b, w)),
            Some((b.closed(Interval::S1, 1)[0], true))
        );
        assert_eq!(other.forming(Interval::S1), b.forming(Interval::S1));
    }
}
