//! Retry delays: capped exponential backoff with full jitter, shared by the client's
//! reconnects and the Redis bus's.
//!
//! Before retry number `n` (0 for the first retry after a loss) the caller waits a
//! uniformly random time in `[0, min(cap, base · 2ⁿ))`. Spreading over the whole window,
//! rather than around its end, is what keeps a crowd that lost the same server at the
//! same instant from arriving at the next one together: `N` such callers reach it at
//! about `N / min(cap, base)` per second during the first window.
//!
//! The count of retries starts again only once a connection has proved healthy (stayed
//! up long enough, or carried data): a server that accepts connections and drops them at
//! once keeps being retried ever more slowly instead of being hammered at the base rate.

use std::time::{Duration, Instant};

use rand::Rng;

/// Backoff parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Window of the first retry. Default: 500ms.
    pub base: Duration,
    /// Largest window. Default: 30s.
    pub cap: Duration,
    /// Consecutive failed attempts after which the caller gives up; 0 retries forever.
    /// Default: 30.
    pub max_attempts: u32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            max_attempts: 30,
        }
    }
}

/// The retry state of one connection.
#[derive(Clone, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    next_at: Instant,
    up_since: Option<Instant>,
}

impl Backoff {
    /// A fresh state: the next retry is the first.
    pub fn new(config: BackoffConfig) -> Backoff {
        Backoff {
            config,
            attempt: 0,
            next_at: Instant::now(),
            up_since: None,
        }
    }

    /// The parameters.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// Retries made since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the attempt limit is used up.
    pub fn exhausted(&self) -> bool {
        self.config.max_attempts != 0 && self.attempt >= self.config.max_attempts
    }

    /// The window of the next retry: `min(cap, base · 2^attempt)`.
    pub fn window(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.config
            .base
            .checked_mul(factor)
            .unwrap_or(self.config.cap)
            .min(self.config.cap)
    }

    /// Draws the delay before the next retry from `rng` and counts the retry.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let window = self.window();
        self.attempt = self.attempt.saturating_add(1);
        self.up_since = None;
        let delay = if window.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(
                rng.random_range(0..window.as_nanos().min(u64::MAX as u128) as u64),
            )
        };
        self.next_at = Instant::now() + delay;
        delay
    }

    /// Records a failure and draws the delay before the next try (from the thread's
    /// random generator); [`Backoff::ready`] says when it has passed.
    pub fn failed(&mut self) -> Duration {
        self.next_delay(&mut rand::rng())
    }

    /// Whether the delay drawn by the last failure has passed.
    pub fn ready(&self) -> bool {
        Instant::now() >= self.next_at
    }

    /// Records that a connection is up. Its loss resets the backoff through
    /// [`Backoff::lost`] only if it stayed up the healthy period.
    pub fn connected(&mut self) {
        self.up_since = Some(Instant::now());
    }

    /// Records the loss of the connection recorded by [`Backoff::connected`]: when it was
    /// up at least `healthy_after`, past failures are forgotten. Returns whether they were.
    pub fn lost(&mut self, healthy_after: Duration) -> bool {
        let healthy = self
            .up_since
            .take()
            .is_some_and(|t| t.elapsed() >= healthy_after);
        if healthy {
            self.reset();
        }
        healthy
    }

    /// Forgets past failures, once a connection has proved healthy.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.next_at = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cfg(base_ms: u64, cap_ms: u64, max: u32) -> BackoffConfig {
        BackoffConfig {
            base: Duration::from_millis(base_ms),
            cap: Duration::from_millis(cap_ms),
            max_attempts: max,
        }
    }

    #[test]
    fn windows_double_up_to_the_cap() {
        let mut b = Backoff::new(cfg(100, 1000, 0));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut windows = Vec::new();
        for _ in 0..8 {
            windows.push(b.window().as_millis());
            b.next_delay(&mut rng);
        }
        assert_eq!(windows, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        for _ in 0..100 {
            b.next_delay(&mut rng);
        }
        assert_eq!(
            b.window().as_millis(),
            1000,
            "no overflow after many attempts"
        );
        assert!(!b.exhausted(), "0 means forever");
        b.reset();
        assert_eq!(b.window().as_millis(), 100);
    }

    #[test]
    fn delays_are_spread_over_the_whole_window() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let mut b = Backoff::new(cfg(1000, 1000, 0));
            let d = b.next_delay(&mut rng);
            assert!(d < Duration::from_secs(1));
            buckets[(d.as_millis() / 100) as usize] += 1;
        }
        // Uniform: 1,000 expected per tenth; 4.7 standard deviations either side.
        for (i, n) in buckets.iter().enumerate() {
            assert!((850..=1150).contains(n), "tenth {i} holds {n}: {buckets:?}");
        }
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut b = Backoff::new(cfg(1, 10, 3));
        for _ in 0..3 {
            assert!(!b.exhausted());
            b.next_delay(&mut rng);
        }
        assert!(b.exhausted());
        assert_eq!(b.attempt(), 3);
    }

    #[test]
    fn only_a_connection_that_stayed_up_resets_and_ready_waits_for_the_delay() {
        let mut b = Backoff::new(cfg(60_000, 60_000, 0));
        b.failed();
        b.failed();
        assert_eq!(b.attempt(), 2);
        // A draw from [0, 60s) under 1ms is a one-in-60,000 event.
        assert!(!b.ready(), "a delay was drawn and has not passed");
        b.connected();
        assert!(
            !b.lost(Duration::from_secs(5)),
            "dropped at once: not healthy"
        );
        assert_eq!(b.attempt(), 2, "a flapping server keeps its backoff");
        b.connected();
        std::thread::sleep(Duration::from_millis(20));
        assert!(b.lost(Duration::from_millis(10)));
        assert_eq!(b.attempt(), 0);
        assert!(b.ready());
        assert!(!b.lost(Duration::ZERO), "no connection recorded");
    }
}
