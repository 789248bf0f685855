//! A session's bounded outbound queue, and what happens when it is full.
//!
//! The hub pushes already-encoded messages with a non-blocking `try_send`; it never
//! waits for a client. When the queue is full the [`SlowPolicy`] decides: `Conflate`
//! marks the subscription as behind (the writer later sends a `gap` and the newest
//! tick), `Disconnect` marks the session for closing with code 4008.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

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

/// The sending side of one session's outbound queue, shared with the hub.
pub struct Outbox {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    policy: SlowPolicy,
    lagging: Mutex<Vec<(Arc<Slot>, Behind)>>,
    has_lagging: AtomicBool,
    overflowed: AtomicBool,
    wake: Notify,
}

impl Outbox {
    /// A queue of `capacity` messages; returns the receiving side for the writer.
    pub fn new(
        id: u64,
        capacity: usize,
        policy: SlowPolicy,
    ) -> (Arc<Outbox>, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let outbox = Outbox {
            id,
            tx,
            policy,
            lagging: Mutex::new(Vec::new()),
            has_lagging: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            wake: Notify::new(),
        };
        (Arc::new(outbox), rx)
    }

    /// The session this queue belongs to.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues a message of the session's own (replies, errors), waiting for room.
    /// Returns false when the session is gone.
    pub async fn send(&self, msg: Bytes) -> bool {
        self.tx.send(msg).await.is_ok()
    }

    /// Pushes a message for a subscription without waiting. On a full queue, applies
    /// the slow-consumer policy; `missed` is what the subscriber now lacks (the tick's
    /// seq, or [`NEED_SNAPSHOT`]). Called by the hub with the symbol's slot locked.
    pub fn push(&self, slot: &Arc<Slot>, behind: &Behind, msg: Bytes, missed: u64) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
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
                self.wake.notify_one();
                false
            }
        }
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

    /// Resolves when the queue overflowed (either policy).
    pub async fn overflow_notified(&self) {
        self.wake.notified().await
    }
}
