//! The node's one timer for its sessions' deadlines: an idle session's next heartbeat,
//! silence deadline, token expiry or planned close.
//!
//! A session that waits sets its next deadline here ([`Alarms::set`]) instead of
//! keeping a timer of its own; at the deadline, the alarms' task wakes its writer the
//! way a queued message does ([`Outbox::wake_writer`]), and the session looks at what
//! is due. An alarm costs an entry of an ordered map (about 40 bytes), where a tokio
//! timer costs each idle connection an allocation of 112 bytes: at 100,000 connections
//! that is the difference between 4 and 11 MB. One task serves them all; a session
//! that sets its alarm earlier than every other pokes it.
//!
//! Deadlines are kept in whole milliseconds from the node's start, rounded up: a
//! session is never woken before its deadline, at most a millisecond after it.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Outbox;

/// The node's timer for its sessions (see the module's doc).
pub struct Alarms {
    /// Where the milliseconds of an alarm count from.
    epoch: Instant,
    /// Every alarm set, by its millisecond and its session's id.
    set: Mutex<BTreeMap<(u64, u64), Weak<Outbox>>>,
    /// Wakes the task: an alarm was set before the one it sleeps until.
    earlier: Notify,
}

/// An alarm's place among the others, kept by its session to move or clear it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Alarm(u64);

impl Alarm {
    /// Whether it is set.
    pub fn is_set(self) -> bool {
        self.0 != 0
    }
}

/// How long the task sleeps when no alarm is set, at most.
const IDLE_LOOK: Duration = Duration::from_secs(1);

impl Alarms {
    pub fn new() -> Arc<Alarms> {
        Arc::new(Alarms {
            epoch: Instant::now(),
            set: Mutex::new(BTreeMap::new()),
            earlier: Notify::new(),
        })
    }

    /// Whole milliseconds from the epoch to `at`, rounded up (never 0: that is "not set").
    fn ms(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.epoch);
        let ms = d.as_millis() as u64;
        let up = u64::from(d > Duration::from_millis(ms));
        (ms + up).max(1)
    }

    /// Moves `outbox`'s alarm (`alarm`, set or not) to `at`: its writer is woken then.
    /// Returns the alarm as it is now.
    pub fn set(&self, alarm: Alarm, at: Instant, outbox: &Arc<Outbox>) -> Alarm {
        let ms = self.ms(at);
        if alarm.0 == ms {
            return alarm;
        }
        let id = outbox.id();
        let first = {
            let mut set = self.set.lock();
            if alarm.is_set() {
                set.remove(&(alarm.0, id));
            }
            set.insert((ms, id), Arc::downgrade(outbox));
            set.first_key_value().map(|(k, _)| k.0) == Some(ms)
        };
        if first {
            self.earlier.notify_one();
        }
        Alarm(ms)
    }

    /// Clears `outbox`'s alarm (its session ends).
    pub fn clear(&self, alarm: Alarm, outbox: &Outbox) {
        if alarm.is_set() {
            self.set.lock().remove(&(alarm.0, outbox.id()));
        }
    }

    /// How many alarms are set.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.set.lock().len()
    }

    /// Whether no alarm is set.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The task: wakes each session's writer at its alarm, until `stop`.
    pub async fn run(self: Arc<Alarms>, stop: CancellationToken) {
        let mut due = Vec::new();
        loop {
            // Due: every alarm at or before now's whole millisecond.
            let now = Instant::now()
                .saturating_duration_since(self.epoch)
                .as_millis() as u64;
            let next = {
                let mut set = self.set.lock();
                while let Some(entry) = set.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    due.push(entry.remove());
                }
                set.first_key_value().map(|(k, _)| k.0)
            };
            for outbox in due.drain(..) {
                if let Some(outbox) = outbox.upgrade() {
                    outbox.wake_writer();
                }
            }
            let until = match next {
                Some(ms) => self.epoch + Duration::from_millis(ms),
                None => Instant::now() + IDLE_LOOK,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(until) => {}
                _ = self.earlier.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Receiver, SlowPolicy};
    use std::task::Poll;

    /// Whether `rx`'s writer has been woken since it last looked.
    fn woken(rx: &Receiver) -> bool {
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        rx.poll_woken(&mut cx) == Poll::Ready(())
    }

    /// Lets the alarms' task run at the paused clock's `ms` from the start.
    async fn at(t0: Instant, ms: u64) {
        tokio::time::sleep_until(t0 + Duration::from_millis(ms)).await;
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_is_woken_at_its_alarm_never_before_and_a_moved_one_moves() {
        let alarms = Alarms::new();
        let stop = CancellationToken::new();
        tokio::spawn(alarms.clone().run(stop.clone()));
        let t0 = Instant::now();
        let (a, rx_a) = Outbox::new(1, 4, SlowPolicy::Conflate);
        let (b, rx_b) = Outbox::new(2, 4, SlowPolicy::Conflate);
        let (c, rx_c) = Outbox::new(3, 4, SlowPolicy::Conflate);
        // `a` at 100.4 ms (woken at 101), `b` at 50 ms then moved to 300, `c` cleared.
        let alarm_a = alarms.set(Alarm::default(), t0 + Duration::from_micros(100_400), &a);
        let alarm_b = alarms.set(Alarm::default(), t0 + Duration::from_millis(50), &b);
        let alarm_b = alarms.set(alarm_b, t0 + Duration::from_millis(300), &b);
        let alarm_c = alarms.set(Alarm::default(), t0 + Duration::from_millis(20), &c);
        assert_eq!(alarms.len(), 3);
        alarms.clear(alarm_c, &c);
        assert_eq!(alarms.len(), 2);
        // Setting the same deadline again changes nothing.
        assert_eq!(
            alarms.set(alarm_a, t0 + Duration::from_micros(100_400), &a),
            alarm_a
        );

        at(t0, 100).await;
        assert!(!woken(&rx_a) && !woken(&rx_b) && !woken(&rx_c));
        at(t0, 101).await;
        assert!(woken(&rx_a), "woken at its deadline, rounded up to the ms");
        assert!(!woken(&rx_b) && !woken(&rx_c));
        assert_eq!(alarms.len(), 1, "a rung alarm is gone");
        at(t0, 299).await;
        assert!(
            !woken(&rx_b),
            "the moved alarm is not rung at its first deadline"
        );
        at(t0, 300).await;
        assert!(woken(&rx_b));
        assert!(!woken(&rx_c), "a cleared alarm never rings");
        assert!(alarms.is_empty());
        let _ = alarm_b;

        // An alarm set earlier than the one the task sleeps until pokes it.
        let alarm_a = alarms.set(Alarm::default(), t0 + Duration::from_secs(10), &a);
        alarms.set(Alarm::default(), t0 + Duration::from_millis(400), &b);
        at(t0, 400).await;
        assert!(woken(&rx_b) && !woken(&rx_a));
        // A session gone before its alarm: the alarm rings for nobody.
        drop((a, rx_a));
        at(t0, 10_000).await;
        assert!(alarms.is_empty());
        let _ = alarm_a;
        stop.cancel();
    }
}
