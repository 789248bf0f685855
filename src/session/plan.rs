//! Planned closes: a connection the server chose to close (the node drains, or the
//! connection reached its lifetime) is first told `reconnect` with the time left, keeps
//! streaming for that long, then closes with 1001.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::protocol::{CloseCode, ServerMsg};

/// Why a planned close happens, as `reconnect` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The node is shutting down (SIGTERM, SIGINT).
    Shutdown = 0,
    /// The connection reached its lifetime (`--max-connection-lifetime`).
    Lifetime = 1,
}

impl Reason {
    /// The `reason` of `reconnect` (and of the metrics' label).
    pub fn as_str(self) -> &'static str {
        crate::metrics::RECONNECT_REASONS[self as usize]
    }

    /// The close that ends it: 1001 either way (a client reconnects after it).
    pub fn close(self) -> (CloseCode, &'static str) {
        match self {
            Reason::Shutdown => (CloseCode::GoingAway, "server shutting down"),
            Reason::Lifetime => (CloseCode::GoingAway, "connection lifetime reached"),
        }
    }
}

/// A planned close of one connection.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    reason: Reason,
    /// When `reconnect` is sent.
    notice_at: Instant,
    /// When the connection closes.
    close_at: Instant,
    /// `reconnect` has been sent.
    told: bool,
}

/// What a plan says is due now.
pub enum Due {
    /// Send this `reconnect`.
    Notice(Bytes),
    /// Close now.
    Close(CloseCode, &'static str),
}

impl Plan {
    /// The close of a connection opened at `opened` after `lifetime` (zero: none),
    /// give or take 10 % drawn at random, told `notice` before.
    pub fn lifetime(opened: Instant, lifetime: Duration, notice: Duration) -> Option<Plan> {
        if lifetime.is_zero() {
            return None;
        }
        let close_at = opened + lifetime.mul_f64(rand::random_range(0.9..=1.1));
        Some(Plan {
            reason: Reason::Lifetime,
            notice_at: close_at.checked_sub(notice).unwrap_or(opened),
            close_at,
            told: false,
        })
    }

    /// The close of a connection of a node that began to drain `now`: closed `notice`
    /// later, and told at a moment drawn in the first half of the notice. Told all at
    /// once, a node's clients would all open their next connection and resume in the
    /// same instant: a rolling restart of a node holding 1,000 of them raised tick p99
    /// from 3.2 ms to 16.7 ms (`tickstream-bench roll`). Each still has at least half the
    /// notice to move.
    pub fn shutdown(now: Instant, notice: Duration) -> Plan {
        Plan {
            reason: Reason::Shutdown,
            notice_at: now + notice.mul_f64(rand::random_range(0.0..0.5)),
            close_at: now + notice,
            told: false,
        }
    }

    /// The plan of the two that closes first (`self` on a tie).
    pub fn first(self, other: Option<Plan>) -> Plan {
        match other {
            Some(o) if o.close_at < self.close_at => o,
            _ => self,
        }
    }

    /// When something is due next.
    pub fn deadline(&self) -> Instant {
        if self.told {
            self.close_at
        } else {
            self.notice_at
        }
    }

    /// What is due at `now`: the close, or the notice with the time left (the notice
    /// is skipped when no time is left).
    pub fn due(&mut self, now: Instant) -> Option<Due> {
        if self.close_at <= now {
            let (code, reason) = self.reason.close();
            return Some(Due::Close(code, reason));
        }
        if self.told || self.notice_at > now {
            return None;
        }
        self.told = true;
        crate::metrics::global().reconnects[self.reason as usize]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let msg = ServerMsg::Reconnect {
            reason: self.reason.as_str(),
            in_ms: (self.close_at - now).as_millis() as u64,
        };
        Some(Due::Notice(msg.to_json()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lifetime_is_jittered_and_told_before_its_close() {
        let t0 = Instant::now();
        let life = Duration::from_secs(100);
        let notice = Duration::from_secs(2);
        let closes: Vec<Duration> = (0..200)
            .map(|_| Plan::lifetime(t0, life, notice).unwrap().close_at - t0)
            .collect();
        assert!(closes
            .iter()
            .all(|c| (90_000..=110_000).contains(&c.as_millis())));
        let (lo, hi) = (closes.iter().min().unwrap(), closes.iter().max().unwrap());
        assert!(*hi - *lo > Duration::from_secs(10), "spread {lo:?}..{hi:?}");
        assert!(Plan::lifetime(t0, Duration::ZERO, notice).is_none());

        let mut p = Plan::lifetime(t0, life, notice).unwrap();
        assert!(p.due(p.notice_at - Duration::from_millis(1)).is_none());
        let Some(Due::Notice(msg)) = p.due(p.notice_at) else {
            panic!("no notice")
        };
        let v: serde_json::Value = serde_json::from_slice(&msg).unwrap();
        assert_eq!(v["type"], "reconnect");
        assert_eq!(v["reason"], "lifetime");
        assert_eq!(v["in_ms"], 2000);
        assert!(p.due(p.notice_at).is_none(), "told once");
        assert_eq!(p.deadline(), p.close_at);
        let Some(Due::Close(code, _)) = p.due(p.close_at) else {
            panic!("no close")
        };
        assert_eq!(code.code(), 1001);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_that_closes_first_wins_over_the_lifetime() {
        let t0 = Instant::now();
        let life = Plan::lifetime(t0, Duration::from_secs(60), Duration::from_secs(2));
        let drain = Plan::shutdown(t0 + Duration::from_secs(5), Duration::from_secs(2));
        assert_eq!(drain.first(life).reason, Reason::Shutdown);
        let late = Plan::shutdown(t0 + Duration::from_secs(80), Duration::from_secs(2));
        assert_eq!(late.first(life).reason, Reason::Lifetime);
    }
}
