//! Reconnect delays: exponential backoff with full jitter.
//!
//! Before retry number `n` (0 for the first retry after a loss) the client waits a
//! uniformly random time in `[0, min(cap, base · 2ⁿ))`. Spreading over the whole window,
//! rather than around its end, is what keeps a crowd of clients that lost the same node
//! at the same instant from arriving at the next one together: `N` such clients reach
//! it at about `N / min(cap, base)` per second during the first window.

use std::time::Duration;

use rand::Rng;

/// Backoff parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Window of the first retry. Default: 500ms.
    pub base: Duration,
    /// Largest window. Default: 30s.
    pub cap: Duration,
    /// Consecutive failed attempts after which the client gives up; 0 retries forever.
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

/// The retry state of one client.
#[derive(Clone, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// A fresh state: the next retry is the first.
    pub fn new(config: BackoffConfig) -> Backoff {
        Backoff { config, attempt: 0 }
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

    /// Draws the delay before the next retry and counts the retry.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let window = self.window();
        self.attempt = self.attempt.saturating_add(1);
        if window.is_zero() {
            return Duration::ZERO;
        }
        Duration::from_nanos(rng.random_range(0..window.as_nanos().min(u64::MAX as u128) as u64))
    }

    /// Forgets past failures, once a connection has proved healthy.
    pub fn reset(&mut self) {
        self.attempt = 0;
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
}
