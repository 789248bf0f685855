//! Symbol → the queues of the connections subscribed to it, and the server's counters.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

/// The outbound queue of one subscriber connection: encoded messages waiting for its
/// writer, bounded in count.
pub struct Outbox {
    queue: Mutex<VecDeque<Bytes>>,
    ready: Notify,
    cap: usize,
}

impl Outbox {
    /// An empty queue holding at most `cap` ticks.
    pub fn new(cap: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            cap,
        }
    }

    /// Queues a tick; false (and nothing queued) when the queue is full.
    pub fn push(&self, msg: Bytes) -> bool {
        self.push_inner(msg, false)
    }

    /// Queues a reply to the client's own command, past the bound: replies are few and
    /// must not be lost.
    pub fn push_reply(&self, msg: Bytes) {
        self.push_inner(msg, true);
    }

    fn push_inner(&self, msg: Bytes, always: bool) -> bool {
        let mut q = self.queue.lock();
        if !always && q.len() >= self.cap {
            return false;
        }
        let was_empty = q.is_empty();
        q.push_back(msg);
        drop(q);
        // The writer waits only after it found the queue empty, so waking it on the
        // first message after that is enough.
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Moves up to `max` queued messages into `into`.
    pub fn take(&self, into: &mut Vec<Bytes>, max: usize) {
        let mut q = self.queue.lock();
        let n = q.len().min(max);
        into.extend(q.drain(..n));
    }

    /// Resolves once something may have been queued since the queue was last found empty.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }
}

/// Counters, printed at exit.
#[derive(Default)]
pub struct Stats {
    /// Subscriber connections accepted.
    pub subscribers: AtomicU64,
    /// Publisher connections accepted.
    pub publishers: AtomicU64,
    /// Frames received from publishers.
    pub frames_in: AtomicU64,
    /// Ticks accepted from publishers.
    pub ticks_in: AtomicU64,
    /// Items of publisher frames that were not tick objects.
    pub refused: AtomicU64,
    /// Tick messages queued for subscribers.
    pub delivered: AtomicU64,
    /// Tick messages dropped because a subscriber's queue was full.
    pub dropped: AtomicU64,
    /// Frames written to subscribers.
    pub frames_out: AtomicU64,
    /// Payload bytes written to subscribers.
    pub bytes_out: AtomicU64,
}

impl Stats {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as one JSON object.
    pub fn to_json(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "subscribers": get(&self.subscribers),
            "publishers": get(&self.publishers),
            "frames_in": get(&self.frames_in),
            "ticks_in": get(&self.ticks_in),
            "refused": get(&self.refused),
            "delivered": get(&self.delivered),
            "dropped": get(&self.dropped),
            "frames_out": get(&self.frames_out),
            "bytes_out": get(&self.bytes_out),
        })
        .to_string()
    }
}

/// Who is subscribed to what.
#[derive(Default)]
pub struct Hub {
    subs: RwLock<HashMap<Box<str>, Vec<Arc<Outbox>>>>,
    /// The server's counters.
    pub stats: Stats,
}

impl Hub {
    /// Adds `out` to the subscribers of `symbol` (the caller subscribes each symbol once).
    pub fn subscribe(&self, symbol: &str, out: &Arc<Outbox>) {
        self.subs
            .write()
            .entry(symbol.into())
            .or_default()
            .push(out.clone());
    }

    /// Removes `out` from the subscribers of `symbol`.
    pub fn unsubscribe(&self, symbol: &str, out: &Arc<Outbox>) {
        let mut subs = self.subs.write();
        if let Some(list) = subs.get_mut(symbol) {
            list.retain(|o| !Arc::ptr_eq(o, out));
            if list.is_empty() {
                subs.remove(symbol);
            }
        }
    }

    /// Queues each tick's bytes for every subscriber of its symbol.
    pub fn fan_out(&self, ticks: &[(String, Bytes)]) {
        let (mut delivered, mut dropped) = (0u64, 0u64);
        let subs = self.subs.read();
        for (symbol, bytes) in ticks {
            for out in subs.get(symbol.as_str()).into_iter().flatten() {
                if out.push(bytes.clone()) {
                    delivered += 1;
                } else {
                    dropped += 1;
                }
            }
        }
        drop(subs);
        Stats::add(&self.stats.delivered, delivered);
        Stats::add(&self.stats.dropped, dropped);
    }
}
