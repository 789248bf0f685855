//! A session's bounded outbound queue, and what happens when it is full.
//!
//! The hub pushes already-encoded messages without waiting; it never waits for a client.
//! When the queue is full the [`SlowPolicy`] decides: `Conflate` marks the subscription
//! as behind (the writer later sends a `gap` and the newest tick), `Disconnect` marks
//! the session for closing with code 4008.
//!
//! The writer is woken only when its queue goes from empty to non-empty, and the hub,
//! fanning out a batch of ticks, wakes each writer it touched once when the whole batch
//! is queued ([`Wakes`]), not once per message: a writer then takes everything queued
//! in one go and sends it as one frame.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Slot;

/// What to do with a client whose outbound queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowPolicy {
    /// Keep only the newest tick per symbol and announce a `gap` (reason `slow_consumer`).
    #[default]
    Conflate,
    /// Close the connection with code 4008.
    Disconnect,
}

impl FromStr for SlowPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "conflate" => Ok(SlowPolicy::Conflate),
            "disconnect" => Ok(SlowPolicy::Disconnect),
            other => Err(format!(
                "unknown slow-consumer policy {other:?} (conflate|disconnect)"
            )),
        }
    }
}

/// `behind` value of a subscription that needs a fresh snapshot rather than a gap.
pub const NEED_SNAPSHOT: u64 = u64::MAX;

/// The per-subscription mark the hub checks before pushing: 0 while in step, else the
/// first `seq` this subscriber missed (or [`NEED_SNAPSHOT`]).
pub type Behind = Arc<AtomicU64>;

/// The most messages' room a drained queue keeps: one that held more gives its memory
/// back, so a connection that goes idle after a burst holds next to nothing.
const KEEP_DRAINED: usize = 4;

/// The messages waiting for the writer.
#[derive(Default)]
struct Queue {
    items: VecDeque<Bytes>,
    /// The writer is gone: nothing is queued any more.
    closed: bool,
}

/// Why a message was not queued.
enum Refused {
    Full,
    Closed,
}

/// The sending side of one session's outbound queue, shared with the hub.
pub struct Outbox {
    id: u64,
    capacity: usize,
    policy: SlowPolicy,
    queue: Mutex<Queue>,
    /// Wakes the writer: the queue went from empty to non-empty, it overflowed, or the
    /// session asked it to look ([`Outbox::wake_writer`]).
    ready: Notify,
    /// Wakes a session's own [`Outbox::send`] waiting for room.
    room: Notify,
    lagging: Mutex<Vec<(Arc<Slot>, Behind)>>,
    has_lagging: AtomicBool,
    overflowed: AtomicBool,
}

/// Writers to wake once a batch of messages is queued: each at most once per batch.
/// Dropping it wakes them.
#[derive(Default)]
pub struct Wakes(Vec<Arc<Outbox>>);

impl Wakes {
    /// Wakes every writer collected so far.
    pub fn wake(&mut self) {
        for outbox in self.0.drain(..) {
            outbox.ready.notify_one();
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.wake();
    }
}

impl Outbox {
    /// A queue of `capacity` messages; returns the receiving side for the writer.
    pub fn new(id: u64, capacity: usize, policy: SlowPolicy) -> (Arc<Outbox>, Receiver) {
        let outbox = Arc::new(Outbox {
            id,
            capacity: capacity.max(1),
            policy,
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            room: Notify::new(),
            lagging: Mutex::new(Vec::new()),
            has_lagging: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
        });
        let rx = Receiver {
            outbox: outbox.clone(),
        };
        (outbox, rx)
    }

    /// The session this queue belongs to.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues `msg` when there is room; `Ok(true)` when the queue was empty before (the
    /// writer needs a wake-up).
    fn enqueue(&self, msg: Bytes) -> Result<bool, Refused> {
        let mut q = self.queue.lock();
        if q.closed {
            return Err(Refused::Closed);
        }
        if q.items.len() >= self.capacity {
            return Err(Refused::Full);
        }
        let was_empty = q.items.is_empty();
        q.items.push_back(msg);
        Ok(was_empty)
    }

    /// Queues a message of the session's own (replies, errors), waiting for room.
    /// Returns false when the session is gone.
    pub async fn send(&self, msg: Bytes) -> bool {
        let mut msg = Some(msg);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Some(m) = msg.take() {
                match self.enqueue(m.clone()) {
                    Ok(was_empty) => {
                        if was_empty {
                            self.ready.notify_one();
                        }
                        return true;
                    }
                    Err(Refused::Closed) => return false,
                    Err(Refused::Full) => msg = Some(m),
                }
            }
            room.await;
        }
    }

    /// Pushes a message for a subscription without waiting, waking the writer now. On a
    /// full queue, applies the slow-consumer policy; `missed` is what the subscriber now
    /// lacks (the tick's seq, or [`NEED_SNAPSHOT`]). Called by the hub with the symbol's
    /// slot locked. Returns whether the message was queued.
    pub fn push(&self, slot: &Arc<Slot>, behind: &Behind, msg: Bytes, missed: u64) -> bool {
        match self.enqueue(msg) {
            Ok(was_empty) => {
                if was_empty {
                    self.ready.notify_one();
                }
                true
            }
            Err(why) => self.refused(why, slot, behind, missed),
        }
    }

    /// Like [`Outbox::push`], but the writer is woken when `wakes` is, once the whole
    /// batch is queued.
    pub fn push_deferred(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        behind: &Behind,
        msg: Bytes,
        missed: u64,
        wakes: &mut Wakes,
    ) -> bool {
        match self.enqueue(msg) {
            Ok(was_empty) => {
                if was_empty {
                    wakes.0.push(self.clone());
                }
                true
            }
            Err(why) => self.refused(why, slot, behind, missed),
        }
    }

    fn refused(&self, why: Refused, slot: &Arc<Slot>, behind: &Behind, missed: u64) -> bool {
        if let Refused::Full = why {
            match self.policy {
                SlowPolicy::Conflate => {
                    behind.store(missed, Ordering::Release);
                    self.lagging.lock().push((slot.clone(), behind.clone()));
                    self.has_lagging.store(true, Ordering::Release);
                }
                SlowPolicy::Disconnect => {
                    self.overflowed.store(true, Ordering::Release);
                }
            }
            self.ready.notify_one();
        }
        false
    }

    /// Whether the queue overflowed under the `disconnect` policy.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Takes the subscriptions that fell behind, if any.
    pub fn take_lagging(&self) -> Vec<(Arc<Slot>, Behind)> {
        if !self.has_lagging.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.lagging.lock())
    }

    /// Whether some subscription fell behind.
    pub fn has_lagging(&self) -> bool {
        self.has_lagging.load(Ordering::Acquire)
    }

    /// Wakes the writer to look at its session again (a close was asked for).
    pub fn wake_writer(&self) {
        self.ready.notify_one();
    }
}

/// The writer's side of a session's outbound queue. Dropping it closes the queue.
pub struct Receiver {
    outbox: Arc<Outbox>,
}

impl Receiver {
    /// Moves up to `max` queued messages, oldest first, to the end of `into`; returns
    /// how many.
    pub fn take(&mut self, into: &mut Vec<Bytes>, max: usize) -> usize {
        let mut q = self.outbox.queue.lock();
        let was_full = q.items.len() >= self.outbox.capacity;
        let n = q.items.len().min(max);
        into.extend(q.items.drain(..n));
        if q.items.is_empty() && q.items.capacity() > KEEP_DRAINED {
            q.items = VecDeque::new();
        }
        drop(q);
        if was_full && n > 0 {
            self.outbox.room.notify_waiters();
        }
        n
    }

    /// The oldest queued message, if any.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        let mut one = Vec::with_capacity(1);
        self.take(&mut one, 1);
        one.pop()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.outbox.queue.lock().items.is_empty()
    }

    /// Resolves once the writer has something to look at: a message queued, an
    /// overflow, or [`Outbox::wake_writer`]. It may resolve with nothing new (the
    /// caller looks and waits again). Cancel-safe: dropping it loses nothing.
    pub async fn woken(&self) {
        self.outbox.ready.notified().await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut q = self.outbox.queue.lock();
        q.closed = true;
        q.items = VecDeque::new();
        drop(q);
        self.outbox.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_reply_waits_for_room_and_a_closed_queue_refuses() {
        let (outbox, mut rx) = Outbox::new(1, 2, SlowPolicy::Conflate);
        assert!(outbox.send(Bytes::from_static(b"1")).await);
        assert!(outbox.send(Bytes::from_static(b"2")).await);
        let waiting = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.send(Bytes::from_static(b"3")).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the third waits for room");
        let mut got = Vec::new();
        assert_eq!(rx.take(&mut got, 1), 1);
        assert!(waiting.await.unwrap());
        rx.take(&mut got, 10);
        assert_eq!(got, [b"1", b"2", b"3"].map(|b| Bytes::from_static(b)));
        drop(rx);
        assert!(!outbox.send(Bytes::from_static(b"4")).await);
    }

    #[tokio::test]
    async fn deferred_pushes_wake_the_writer_once_the_batch_is_queued() {
        let hub = crate::hub::Hub::new(["AAPL".into()], 4);
        let slot = hub.slot("AAPL").unwrap().clone();
        let (outbox, mut rx) = Outbox::new(1, 16, SlowPolicy::Conflate);
        let behind: Behind = Arc::new(AtomicU64::new(0));
        let mut wakes = Wakes::default();
        for i in 0..3u8 {
            assert!(outbox.push_deferred(&slot, &behind, Bytes::from(vec![i]), 1, &mut wakes));
        }
        assert_eq!(wakes.0.len(), 1, "one wake for the batch");
        // Not woken yet: the writer, waiting, does not see the messages.
        let woken = tokio::time::timeout(Duration::from_millis(20), async {
            rx.outbox.ready.notified().await
        })
        .await;
        assert!(woken.is_err());
        drop(wakes);
        tokio::time::timeout(Duration::from_secs(1), rx.woken())
            .await
            .unwrap();
        let mut got = Vec::new();
        assert_eq!(rx.take(&mut got, 512), 3);
        assert!(rx.is_empty());
    }
}
