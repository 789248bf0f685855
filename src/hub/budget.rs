//! The node-wide bound on buffered output (`--max-outbound-bytes`): every session's
//! queued messages and the frame its writer is writing count against one [`Budget`].
//!
//! What is counted is what the node would have to write: a queued message counts its
//! length plus the queue slot holding it ([`SLOT`]) in every queue it is in, although a
//! tick fanned out to many subscribers is one allocation shared by all of them; a frame
//! counts while it is being written. The count is so an upper bound of the memory
//! buffered output holds.
//! Counting costs a queue's own lock (held anyway) and one atomic add per batch of the
//! hub, per reply and per frame written.
//!
//! When the count passes the bound, the budget's enforcer ([`Budget::enforce`]) acts on
//! the sessions holding the most first, and never on one holding less than the floor
//! (`--outbound-floor`), until the count is back under three quarters of the bound:
//! under the `conflate` policy it first conflates them
//! ([`Outbox::conflate`](super::Outbox::conflate): their queued ticks are dropped and
//! each subscription catches up with a `gap` and its newest tick), then, if that was
//! not enough, closes them with 4008; under
//! `disconnect` it closes them at once. A close gives up a write the session is blocked
//! in, so a stalled client's frame is freed at once.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::policy::SlowPolicy;
use super::Hub;
use crate::protocol::binary;
use crate::tick::Kind;

/// What a queued message counts beside its bytes: the queue slot that holds it.
pub const SLOT: u64 = std::mem::size_of::<bytes::Bytes>() as u64;

/// How long the enforcer waits before looking again while the count stays over: long
/// enough for closed sessions to give back what they hold, short enough that stalled
/// sessions caught up by a conflation do not refill far past the bound meanwhile (at
/// 20,000 ticks/s a stalled subscriber queues about 3 MB/s).
const PAUSE: Duration = Duration::from_millis(10);

/// Least time between two warnings that the bound is held by sessions under the floor.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A session counted against the budget, as its enforcer sees it (a session's
/// [`Outbox`](super::Outbox)).
pub(super) trait Member: Send + Sync {
    /// What it holds now: queued and being written.
    fn held(&self) -> u64;
    /// Drops its queued ticks, its subscriptions catching up; returns the bytes freed.
    fn conflate(&self, hub: &Hub) -> u64;
    /// Whether it was closed for the budget.
    fn evicted(&self) -> bool;
    /// Closes it for the budget (4008).
    fn evict(&self);
    /// Wakes its writer to look at its session again.
    fn wake(&self);
}

/// The node-wide count of buffered output, its bound, and the sessions counted.
pub struct Budget {
    /// Bytes; 0: no bound.
    bound: u64,
    /// A session holding less is never conflated or closed for the bound.
    floor: u64,
    policy: SlowPolicy,
    /// Signed: the hub adds a batch once it is queued, and a writer may take (and
    /// subtract) some of it before that, so the count may dip below zero a moment.
    held: AtomicI64,
    /// Wakes the enforcer: the count passed the bound.
    over: Notify,
    /// Every session counted, by id: the enforcer's candidates, and the writers
    /// [`Budget::wake_all`] wakes.
    members: Mutex<HashMap<u64, Weak<dyn Member>>>,
    conflations: AtomicU64,
    closes: AtomicU64,
}

impl Budget {
    /// A budget of `bound` bytes (0: none) whose enforcer spares sessions holding less
    /// than `floor` and conflates first under `policy` `conflate`.
    pub fn new(bound: u64, floor: u64, policy: SlowPolicy) -> Arc<Budget> {
        Arc::new(Budget {
            bound,
            floor,
            policy,
            held: AtomicI64::new(0),
            over: Notify::new(),
            members: Mutex::new(HashMap::new()),
            conflations: AtomicU64::new(0),
            closes: AtomicU64::new(0),
        })
    }

    /// A budget that counts and never acts.
    pub fn unbounded() -> Arc<Budget> {
        Budget::new(0, 0, SlowPolicy::Conflate)
    }

    /// Bytes buffered now: queued, and being written.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed).max(0) as u64
    }

    /// The bound, bytes (0: none).
    pub fn bound(&self) -> u64 {
        self.bound
    }

    /// Sessions conflated for the bound so far.
    pub fn conflations(&self) -> u64 {
        self.conflations.load(Ordering::Relaxed)
    }

    /// Sessions closed (4008) for the bound so far.
    pub fn closes(&self) -> u64 {
        self.closes.load(Ordering::Relaxed)
    }

    /// Counts `n` more bytes; wakes the enforcer when that passes the bound.
    #[inline]
    pub(super) fn add(&self, n: u64) {
        let n = n as i64;
        let now = self.held.fetch_add(n, Ordering::Relaxed).wrapping_add(n);
        if self.bound != 0 && now > self.bound as i64 {
            self.over.notify_one();
        }
    }

    /// Whether a session holding `queued` bytes is refused more of its subscriptions'
    /// data now: the node is over its bound and the session holds at least the floor.
    /// Its data is then conflated at once (under `--slow-policy disconnect`, it is
    /// closed with 4008), so the total stops growing while the enforcer, which acts on the
    /// largest first, has not run yet: a storm's first second does not overshoot.
    #[inline]
    pub(super) fn refuses(&self, queued: u64) -> bool {
        self.bound != 0
            && queued >= self.floor.max(1)
            && self.held.load(Ordering::Relaxed) > self.bound as i64
    }

    /// Counts a session conflated for the bound outside the enforcer.
    pub(super) fn counted_conflation(&self) {
        self.conflations.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a session closed for the bound outside the enforcer.
    pub(super) fn counted_close(&self) {
        self.closes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` bytes fewer.
    #[inline]
    pub(super) fn sub(&self, n: u64) {
        self.held.fetch_sub(n as i64, Ordering::Relaxed);
    }

    /// Counts session `id` among those the enforcer may act on.
    pub(super) fn join(&self, id: u64, member: Weak<dyn Member>) {
        self.members.lock().insert(id, member);
    }

    /// Session `id` is gone.
    pub(super) fn leave(&self, id: u64) {
        self.members.lock().remove(&id);
    }

    /// Wakes the writer of every session counted, to look at its session again (the
    /// node began to drain or to shut down). A writer waits on its own queue's wake
    /// only (its deadlines ring through it too), with no future per node-wide event
    /// kept in every idle connection.
    pub fn wake_all(&self) {
        for m in self.live_members() {
            m.wake();
        }
    }

    /// The sessions counted that are still there, taken out of the lock.
    fn live_members(&self) -> Vec<Arc<dyn Member>> {
        self.members
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Keeps the count under the bound until `stop`: whenever it passes the bound,
    /// acts on the sessions holding the most (see the module documentation).
    pub async fn enforce(self: Arc<Self>, hub: Arc<Hub>, stop: CancellationToken) {
        if self.bound == 0 {
            return;
        }
        let mut warned: Option<Instant> = None;
        loop {
            if self.held() <= self.bound {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.over.notified() => continue,
                }
            }
            if !self.reclaim(&hub).await && warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                warned = Some(Instant::now());
                tracing::warn!(
                    held = self.held(),
                    bound = self.bound,
                    floor = self.floor,
                    "outbound buffers over their bound, held by connections under the floor"
                );
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PAUSE) => {}
            }
        }
    }

    /// One round of the policy. Returns whether it found a session to act on.
    async fn reclaim(&self, hub: &Hub) -> bool {
        let target = self.bound / 4 * 3;
        let victims = self.largest();
        if victims.is_empty() {
            return false;
        }
        if self.policy == SlowPolicy::Conflate {
            for (_, o) in &victims {
                if self.held() <= target {
                    return true;
                }
                if o.conflate(hub) > 0 {
                    self.conflations.fetch_add(1, Ordering::Relaxed);
                }
                // Conflating a long queue takes a while: let the other tasks run.
                tokio::task::yield_now().await;
            }
        }
        // What is still held, largest first; a closed session frees it once its task
        // ends (it takes nothing more meanwhile), so the count is estimated without what
        // the sessions already closed still hold.
        let (closed, open): (Vec<_>, Vec<_>) =
            self.largest().into_iter().partition(|(_, o)| o.evicted());
        let mut left = self
            .held()
            .saturating_sub(closed.iter().map(|(held, _)| held).sum());
        for (held, o) in open {
            if left <= target {
                break;
            }
            o.evict();
            self.closes.fetch_add(1, Ordering::Relaxed);
            left = left.saturating_sub(held);
        }
        true
    }

    /// The sessions holding at least the floor, with what they hold, most first.
    fn largest(&self) -> Vec<(u64, Arc<dyn Member>)> {
        let mut v: Vec<(u64, Arc<dyn Member>)> = self
            .live_members()
            .into_iter()
            .map(|o| (o.held(), o))
            .filter(|(h, _)| *h >= self.floor.max(1))
            .collect();
        v.sort_by_key(|(held, _)| std::cmp::Reverse(*held));
        v
    }
}

/// What a conflation needs to know of a queued message.
pub(super) enum Head<'a> {
    /// A tick of the ticks channel; `first` is the first seq it stands for (its seq, or
    /// for a paced tick the first one folded into it).
    Tick { symbol: Cow<'a, str>, first: u64 },
    /// A snapshot of the ticks channel.
    Snapshot { symbol: Cow<'a, str> },
    /// A `gap` announcing a new epoch.
    Reset { symbol: Cow<'a, str> },
    /// Another message about a symbol of the ticks channel (`gap`, `status`).
    About { symbol: Cow<'a, str> },
    /// Anything else: replies, errors, other channels.
    Other,
}

impl Head<'_> {
    /// The symbol of the ticks channel the message is about.
    pub(super) fn symbol(&self) -> Option<&str> {
        match self {
            Head::Tick { symbol, .. }
            | Head::Snapshot { symbol }
            | Head::Reset { symbol }
            | Head::About { symbol } => Some(symbol),
            Head::Other => None,
        }
    }
}

/// Reads what a conflation needs of `msg`: a binary record, a tick as the node encodes
/// it (read without parsing), or any other JSON message.
pub(super) fn head(msg: &[u8]) -> Head<'_> {
    if binary::is_record(msg) {
        return match binary::records(msg).next() {
            Some(Ok(r)) if r.kind == Kind::Tick => Head::Tick {
                symbol: Cow::Borrowed(r.symbol),
                first: r.seq.saturating_sub(r.skipped.unwrap_or(0)),
            },
            Some(Ok(r)) => Head::Snapshot {
                symbol: Cow::Borrowed(r.symbol),
            },
            _ => Head::Other,
        };
    }
    quick_tick(msg).unwrap_or_else(|| parsed(msg))
}

/// A tick encoded as `{"type":"tick","symbol":"…",…,"seq":N,…}`, read without parsing.
fn quick_tick(msg: &[u8]) -> Option<Head<'_>> {
    const HEAD: &[u8] = br#"{"type":"tick","symbol":""#;
    let rest = msg.strip_prefix(HEAD)?;
    let end = memchr::memchr(b'"', rest)?;
    let symbol = std::str::from_utf8(&rest[..end]).ok()?;
    let seq = number_after(rest, br#","seq":"#)?;
    let skipped = number_after(rest, br#","skipped":"#).unwrap_or(0);
    Some(Head::Tick {
        symbol: Cow::Borrowed(symbol),
        first: seq.saturating_sub(skipped),
    })
}

/// The unsigned integer right after `key` in `msg`.
fn number_after(msg: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(msg, key)? + key.len();
    let digits = msg[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&msg[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// The fields of a JSON message a conflation reads.
#[derive(serde::Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    symbol: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    skipped: Option<u64>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
}

/// Any JSON message, parsed.
fn parsed(msg: &[u8]) -> Head<'_> {
    let Ok(raw) = serde_json::from_slice::<Raw<'_>>(msg) else {
        return Head::Other;
    };
    let (Some(symbol), None) = (raw.symbol, raw.channel) else {
        return Head::Other;
    };
    if matches!(&*raw.ty, "book" | "book_update") {
        // The book channel's own messages name no channel.
        return Head::Other;
    }
    match (&*raw.ty, raw.seq, raw.reason.as_deref()) {
        ("tick", Some(seq), _) => Head::Tick {
            symbol,
            first: seq.saturating_sub(raw.skipped.unwrap_or(0)),
        },
        ("snapshot", _, _) => Head::Snapshot { symbol },
        ("gap", _, Some("reset")) => Head::Reset { symbol },
        _ => Head::About { symbol },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbol_first(h: Head<'_>) -> (String, u64) {
        match h {
            Head::Tick { symbol, first } => (symbol.into_owned(), first),
            _ => panic!("not a tick"),
        }
    }

    #[test]
    fn heads_are_read_from_json_and_binary_messages() {
        let t = crate::hub::conflation_tests::tick("e1", 42);
        let json = t.to_json(Kind::Tick);
        assert_eq!(symbol_first(head(&json)), ("AAPL".into(), 42));
        let bin = binary::encode(&t, Kind::Tick).unwrap();
        assert_eq!(symbol_first(head(&bin)), ("AAPL".into(), 42));
        // Another field order and a paced tick are read too.
        let other = br#"{"symbol":"MSFT","type":"tick","skipped":3,"seq":10,"bid":1.5}"#;
        assert_eq!(symbol_first(head(other)), ("MSFT".into(), 7));
        let snap = t.to_json(Kind::Snapshot);
        assert!(matches!(head(&snap), Head::Snapshot { .. }));
        let reset = br#"{"type":"gap","symbol":"AAPL","from":3,"to":3,"reason":"reset"}"#;
        assert!(matches!(head(reset), Head::Reset { .. }));
        let status = br#"{"type":"status","symbol":"AAPL","state":"live"}"#;
        assert_eq!(head(status).symbol(), Some("AAPL"));
        for other in [
            &br#"{"type":"subscribed","id":1,"symbols":["AAPL"]}"#[..],
            br#"{"type":"gap","channel":"book","symbol":"AAPL","from":1,"to":2}"#,
            br#"{"type":"book_update","symbol":"AAPL","epoch":"e1","seq":2,"prev_seq":1}"#,
            br#"{"type":"book","symbol":"AAPL","epoch":"e1","seq":1,"bids":[],"asks":[]}"#,
            b"not json",
        ] {
            assert!(matches!(head(other), Head::Other));
        }
    }
}
