//! What clients reported (`report`) over the last minute, summarised for
//! `GET /v1/latency`: the same buckets as the `tickstream_client_latency_*` histograms,
//! kept per five-second slot so that old reports leave the summary, and read as
//! Prometheus's `histogram_quantile` reads a histogram (linear within a bucket).

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use super::{bucket_of, LATENCY_BUCKETS};

/// Seconds per slot.
const SLOT_SECS: u64 = 5;
/// Slots summarised: the current one and the ones before it, the last 55 to 60 s.
const SLOTS: usize = 12;
/// The span the summary covers, in milliseconds (at most).
pub const WINDOW_MS: u64 = SLOT_SECS * SLOTS as u64 * 1000;

const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// The reports of one slot.
#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// Which slot of time it holds (seconds since the process started / [`SLOT_SECS`]).
    index: u64,
    reports: u64,
    messages: u64,
    p50: [u64; BUCKETS],
    p99: [u64; BUCKETS],
    max_ns: u64,
}

/// The reports of the last minute, in slots of [`SLOT_SECS`]. Reports are rare (one per
/// client every few seconds), so a lock is cheap here.
#[derive(Debug, Default)]
pub struct ReportWindow {
    slots: Mutex<[Slot; SLOTS]>,
}

/// What clients reported over the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Reports taken in the window.
    pub reports: u64,
    /// Messages those reports counted, summed.
    pub messages: u64,
    /// The median of the p50s reported, in ms; `None` without reports.
    pub p50_ms: Option<f64>,
    /// The 99th percentile of the p99s reported, in ms.
    pub p99_ms: Option<f64>,
    /// The largest max reported, in ms.
    pub max_ms: Option<f64>,
}

/// Seconds since this process first asked.
fn uptime_secs() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

impl ReportWindow {
    /// Takes one report: its p50, p99 and max in ms, and the messages it counted.
    pub fn record(&self, p50_ms: f64, p99_ms: f64, max_ms: f64, count: u64) {
        self.record_at(uptime_secs(), p50_ms, p99_ms, max_ms, count);
    }

    /// What the window holds now.
    pub fn summary(&self) -> Summary {
        self.summary_at(uptime_secs())
    }

    fn record_at(&self, secs: u64, p50_ms: f64, p99_ms: f64, max_ms: f64, count: u64) {
        let index = secs / SLOT_SECS;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[index as usize % SLOTS];
        if slot.index != index {
            *slot = Slot {
                index,
                ..Slot::default()
            };
        }
        slot.reports += 1;
        slot.messages += count;
        slot.p50[bucket_of(p50_ms / 1e3)] += 1;
        slot.p99[bucket_of(p99_ms / 1e3)] += 1;
        slot.max_ns = slot.max_ns.max((max_ms * 1e6) as u64);
    }

    fn summary_at(&self, secs: u64) -> Summary {
        let now = secs / SLOT_SECS;
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let (mut reports, mut messages, mut max_ns) = (0, 0, 0);
        let (mut p50, mut p99) = ([0u64; BUCKETS], [0u64; BUCKETS]);
        for s in slots
            .iter()
            .filter(|s| s.reports > 0 && now.saturating_sub(s.index) < SLOTS as u64)
        {
            reports += s.reports;
            messages += s.messages;
            max_ns = max_ns.max(s.max_ns);
            for i in 0..BUCKETS {
                p50[i] += s.p50[i];
                p99[i] += s.p99[i];
            }
        }
        let max_ms = (reports > 0).then_some(max_ns as f64 / 1e6);
        // An estimate inside a bucket may pass the largest value reported: it stops there.
        let at = |counts: &[u64; BUCKETS], q: f64| {
            quantile(counts, q).map(|s| (s * 1e3).min(max_ms.unwrap_or(f64::MAX)))
        };
        Summary {
            reports,
            messages,
            p50_ms: at(&p50, 0.5),
            p99_ms: at(&p99, 0.99),
            max_ms,
        }
    }
}

/// The `q` quantile, in seconds, of a histogram of [`LATENCY_BUCKETS`] (plus `+Inf`):
/// linear within the bucket that holds it, the highest finite bound for `+Inf`.
fn quantile(counts: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = LATENCY_BUCKETS.get(i) else {
                return LATENCY_BUCKETS.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            return Some(lower + (upper - lower) * (rank - below as f64) / n as f64);
        }
        below += n;
    }
    LATENCY_BUCKETS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_without_reports_says_so() {
        let w = ReportWindow::default();
        let s = w.summary_at(100);
        assert_eq!((s.reports, s.messages), (0, 0));
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (None, None, None));
    }

    #[test]
    fn quantiles_are_read_inside_their_buckets_and_stop_at_the_max() {
        let w = ReportWindow::default();
        // p50s 1, 2 and 3 ms: the median is the second, in (1 ms, 2.5 ms].
        for (p50, p99, max) in [(1.0, 4.0, 9.0), (2.0, 8.0, 12.0), (3.0, 20.0, 30.0)] {
            w.record_at(7, p50, p99, max, 100);
        }
        let s = w.summary_at(8);
        assert_eq!((s.reports, s.messages), (3, 300));
        assert_eq!(s.max_ms, Some(30.0));
        let p50 = s.p50_ms.unwrap();
        assert!((1.0..=2.5).contains(&p50), "{p50}");
        // The highest p99 (20 ms) is in (10 ms, 25 ms]; the estimate stays below the max.
        let p99 = s.p99_ms.unwrap();
        assert!((10.0..=25.0).contains(&p99), "{p99}");
        // One report far above every bucket: the estimate is the highest bound, then
        // the max reported caps nothing more.
        w.record_at(9, 9000.0, 9000.0, 9500.0, 1);
        let s = w.summary_at(9);
        assert_eq!(s.max_ms, Some(9500.0));
        assert_eq!(s.p99_ms, Some(5000.0));
    }

    #[test]
    fn reports_leave_the_window_after_a_minute() {
        let w = ReportWindow::default();
        w.record_at(0, 1.0, 2.0, 3.0, 10);
        w.record_at(30, 5.0, 6.0, 7.0, 20);
        assert_eq!(w.summary_at(59).reports, 2);
        let later = w.summary_at(61);
        assert_eq!((later.reports, later.messages), (1, 20));
        assert_eq!(later.max_ms, Some(7.0));
        assert_eq!(w.summary_at(95).reports, 0);
        // A slot used again starts empty.
        w.record_at(120, 1.0, 1.0, 1.0, 1);
        assert_eq!(w.summary_at(120).messages, 1);
    }
}
