//! Latency reports (`op: "report"`, protocol v1.1): the client measures the delivery
//! latency of every tick it passes on (receive time − `ts`) and tells the node, once
//! per window, its p50, p99 and maximum and how many ticks they are of.

use std::collections::VecDeque;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::protocol::command::{MAX_REPORTED_MS, MAX_REPORT_COUNT, MAX_REPORT_WINDOW_MS};

/// Report ids remembered, to tell the replies to them from others.
const REMEMBERED: usize = 16;

/// The latencies of the current window, and the reports sent.
pub(super) struct Window {
    /// Microseconds; made on the first tick measured (two significant digits: 1 %
    /// precision in about 26 KB).
    hist: Option<Histogram<u64>>,
    since: Instant,
    sent: VecDeque<u64>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            hist: None,
            since: Instant::now(),
            sent: VecDeque::new(),
        }
    }
}

impl Window {
    /// Counts a tick stamped `ts` received at `now` (both ns since the Unix epoch).
    pub fn record(&mut self, now: u64, ts: u64) {
        let hist = self.hist.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, MAX_REPORT_WINDOW_MS * 1000, 2)
                .expect("valid histogram bounds")
        });
        hist.saturating_record((now.saturating_sub(ts) / 1000).max(1));
    }

    /// The `report` command of the window that ends now, with `id`, and a fresh window;
    /// `None` when no tick was measured (a window with nothing has nothing to report).
    pub fn take(&mut self, id: u64) -> Option<String> {
        let window_ms = (self.since.elapsed().as_millis() as u64).clamp(1, MAX_REPORT_WINDOW_MS);
        self.since = Instant::now();
        let hist = self.hist.as_mut().filter(|h| !h.is_empty())?;
        let ms = |us: u64| (us as f64 / 1000.0).min(MAX_REPORTED_MS);
        let max = ms(hist.max());
        let p99 = ms(hist.value_at_quantile(0.99)).min(max);
        let p50 = ms(hist.value_at_quantile(0.5)).min(p99);
        let count = hist.len().min(MAX_REPORT_COUNT);
        hist.reset();
        if self.sent.len() == REMEMBERED {
            self.sent.pop_front();
        }
        self.sent.push_back(id);
        let cmd = serde_json::json!({
            "op": "report",
            "id": id,
            "latency_ms": {"p50": p50, "p99": p99, "max": max},
            "count": count,
            "window_ms": window_ms,
        });
        Some(cmd.to_string())
    }

    /// Whether `id` is one of the reports sent (its reply is the client's own).
    pub fn is_ours(&self, id: Option<u64>) -> bool {
        id.is_some_and(|id| self.sent.contains(&id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_reports_its_quantiles_then_starts_again() {
        let mut w = Window::default();
        assert_eq!(w.take(1), None, "nothing measured, nothing sent");
        let now = 1_000_000_000_000;
        for ms in 1..=100u64 {
            w.record(now, now - ms * 1_000_000);
        }
        // A tick stamped ahead of the clock counts as the shortest latency.
        w.record(now, now + 5);
        let cmd: serde_json::Value = serde_json::from_str(&w.take(2).unwrap()).unwrap();
        assert_eq!(
            (&cmd["op"], &cmd["id"], &cmd["count"]),
            (&"report".into(), &2.into(), &101.into())
        );
        let l = &cmd["latency_ms"];
        let (p50, p99, max) = (
            l["p50"].as_f64().unwrap(),
            l["p99"].as_f64().unwrap(),
            l["max"].as_f64().unwrap(),
        );
        assert!((49.0..=51.0).contains(&p50), "{cmd}");
        assert!((98.0..=100.5).contains(&p99) && p99 <= max, "{cmd}");
        assert!((99.0..=101.0).contains(&max), "{cmd}");
        assert!(cmd["window_ms"].as_u64().unwrap() >= 1);
        assert!(w.is_ours(Some(2)) && !w.is_ours(Some(1)) && !w.is_ours(None));
        assert_eq!(w.take(3), None, "the next window starts empty");
    }
}
