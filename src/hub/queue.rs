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
//!
//! Every queue also counts against the node-wide [`Budget`] of buffered output: what it
//! holds and the frame its writer is writing ([`Outbox::writing`]). The hub's batches
//! are added to it once per batch, not once per message.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::budget::{head, Budget, Head, Member, SLOT};
use super::policy::SlowPolicy;
use super::{Hub, Slot};
use crate::protocol::{CloseCode, Encoding};

/// A stream of a symbol that a subscription fell behind on (ticks, a book): it brings
/// the subscription up to date when the writer has drained its queue.
pub trait Lagging: Send + Sync {
    /// Brings the subscription of session `session` marked by `behind` up to date: the
    /// messages that replace what it missed, appended to `out` (in `encoding`), and the
    /// mark cleared so that live messages flow again.
    fn catch_up(&self, behind: &Behind, session: u64, encoding: Encoding, out: &mut Vec<Bytes>);
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
    /// What they count against the budget: each one's length plus [`SLOT`].
    bytes: u64,
    /// The writer is gone: nothing is queued any more.
    closed: bool,
}

/// What `msg` counts against the budget while queued.
#[inline]
fn cost(msg: &Bytes) -> u64 {
    msg.len() as u64 + SLOT
}

/// Why a message was not queued.
enum Refused {
    Full,
    /// The node is over its bound on buffered output and this session holds at least
    /// the floor ([`Budget::refuses`]).
    Over,
    Closed,
    /// Its subscription is behind: it catches up by itself (see [`Outbox::conflate`]).
    Behind,
}

/// What the inbound and outbound sides of a session share beside the queue: when the
/// client was last heard from, and a close the inbound side asked for. Kept in the
/// [`Outbox`], which both sides hold already.
#[derive(Debug)]
pub struct Life {
    /// Milliseconds from [`epoch`] to when the client was last heard from.
    last_heard_ms: AtomicU64,
    closing: Mutex<Option<(CloseCode, &'static str)>>,
}

impl Life {
    /// Heard from just now.
    pub fn new() -> Life {
        Life {
            last_heard_ms: AtomicU64::new(since_epoch()),
            closing: Mutex::new(None),
        }
    }

    /// The client showed a sign of life.
    pub fn heard(&self) {
        self.last_heard_ms.store(since_epoch(), Ordering::Relaxed);
    }

    pub fn last_heard(&self) -> tokio::time::Instant {
        let ms = self.last_heard_ms.load(Ordering::Relaxed);
        tokio::time::Instant::from_std(epoch() + Duration::from_millis(ms))
    }

    /// Asks the outbound side to send what is queued, then close with `code`; the
    /// caller wakes the writer ([`Outbox::wake_writer`]). The first close asked for
    /// wins.
    pub fn close(&self, code: CloseCode, reason: &'static str) {
        self.closing.lock().get_or_insert((code, reason));
    }

    pub fn take_close(&self) -> Option<(CloseCode, &'static str)> {
        self.closing.lock().take()
    }
}

/// The process's one clock origin for [`Life`]: each session keeps 8 bytes of time,
/// not an `Instant` of its own.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`].
fn since_epoch() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Default for Life {
    fn default() -> Self {
        Life::new()
    }
}

/// The sending side of one session's outbound queue, shared with the hub.
pub struct Outbox {
    id: u64,
    /// Most messages queued (a `u32`: an idle session's every byte counts).
    capacity: u32,
    policy: SlowPolicy,
    queue: Mutex<Queue>,
    /// Wakes the writer: the queue went from empty to non-empty, it overflowed, or the
    /// session asked it to look ([`Outbox::wake_writer`]).
    ready: Ready,
    /// Wakes a session's own [`Outbox::send`] waiting for room.
    room: Notify,
    lagging: Mutex<Vec<(Arc<dyn Lagging>, Behind)>>,
    has_lagging: AtomicBool,
    overflowed: AtomicBool,
    /// The node-wide budget it counts against.
    budget: Arc<Budget>,
    life: Life,
    /// Bytes of the frame its writer is writing now.
    in_flight: AtomicU64,
    /// The budget's enforcer closes this session ([`Outbox::evict`]).
    evicted: AtomicBool,
}

/// What wakes an outbox's writer: a flag and the writer's waker. A writer polls it
/// in place (no future of its own to keep, as a `Notify` would need, in every idle
/// connection); a wake with no writer waiting is kept for its next look.
#[derive(Default)]
struct Ready {
    set: AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl Ready {
    fn notify(&self) {
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn poll(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if !self.set.swap(false, Ordering::AcqRel) {
            self.waker.register(cx.waker());
            // A wake between the look and the registration is not lost.
            if !self.set.swap(false, Ordering::AcqRel) {
                return std::task::Poll::Pending;
            }
        }
        std::task::Poll::Ready(())
    }
}

/// Writers to wake once a batch of messages is queued: each at most once per batch.
/// Dropping it wakes them, and adds what the batch queued to the budget.
#[derive(Default)]
pub struct Wakes {
    outboxes: Vec<Arc<Outbox>>,
    /// Queued since the last [`Wakes::wake`], not yet added to `budget`.
    added: u64,
    budget: Option<Arc<Budget>>,
}

impl Wakes {
    /// Wakes every writer collected so far, after adding what was queued to the budget.
    pub fn wake(&mut self) {
        self.settle();
        for outbox in self.outboxes.drain(..) {
            outbox.ready.notify();
        }
    }

    /// Counts `n` bytes queued in an outbox of `budget`.
    #[inline]
    fn add(&mut self, budget: &Arc<Budget>, n: u64) {
        match &self.budget {
            Some(b) if Arc::ptr_eq(b, budget) => {}
            _ => {
                self.settle();
                self.budget = Some(budget.clone());
            }
        }
        self.added += n;
    }

    /// Adds what was queued to its budget.
    fn settle(&mut self) {
        if let Some(b) = &self.budget {
            if self.added > 0 {
                b.add(std::mem::take(&mut self.added));
            }
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.wake();
    }
}

impl Outbox {
    /// A queue of `capacity` messages counted against a budget of its own, without a
    /// bound; returns the receiving side for the writer.
    pub fn new(id: u64, capacity: usize, policy: SlowPolicy) -> (Arc<Outbox>, Receiver) {
        Outbox::in_budget(id, capacity, policy, Budget::unbounded())
    }

    /// A queue of `capacity` messages counted against the node's `budget`, which may
    /// conflate or close it while the node holds more than its bound.
    pub fn in_budget(
        id: u64,
        capacity: usize,
        policy: SlowPolicy,
        budget: Arc<Budget>,
    ) -> (Arc<Outbox>, Receiver) {
        let outbox = Arc::new(Outbox {
            id,
            capacity: capacity.clamp(1, u32::MAX as usize) as u32,
            policy,
            queue: Mutex::new(Queue::default()),
            ready: Ready::default(),
            room: Notify::new(),
            lagging: Mutex::new(Vec::new()),
            has_lagging: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            budget,
            life: Life::new(),
            in_flight: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
        });
        let member: std::sync::Weak<dyn Member> = Arc::downgrade(&outbox) as _;
        outbox.budget.join(id, member);
        let rx = Receiver {
            outbox: outbox.clone(),
        };
        (outbox, rx)
    }

    /// When its client was last heard from, and a close its inbound side asked for.
    pub fn life(&self) -> &Life {
        &self.life
    }

    /// The session this queue belongs to.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues `msg` when there is room; `Ok(true)` when the queue was empty before (the
    /// writer needs a wake-up). The caller counts `cost(msg)` against the budget. A
    /// subscription's message (`behind` given) is refused once the subscription is
    /// behind, checked under the queue's lock, where [`Outbox::conflate`] marks it.
    fn enqueue(&self, msg: Bytes, behind: Option<&Behind>) -> Result<bool, Refused> {
        let mut q = self.queue.lock();
        // An evicted session takes nothing more: what it holds is only given back.
        if q.closed || self.evicted() {
            return Err(Refused::Closed);
        }
        if behind.is_some_and(|b| b.load(Ordering::Acquire) != 0) {
            return Err(Refused::Behind);
        }
        if q.items.len() >= self.capacity as usize {
            return Err(Refused::Full);
        }
        if behind.is_some() && self.budget.refuses(q.bytes) {
            // Over the node's bound: a subscription's data is refused (the session's
            // own replies still wait for room as usual).
            return Err(Refused::Over);
        }
        let was_empty = q.items.is_empty();
        q.bytes += cost(&msg);
        q.items.push_back(msg);
        Ok(was_empty)
    }

    /// Queues `msg` (for a subscription when `behind` is given), counts it against the
    /// budget, and wakes the writer if the queue was empty.
    fn queue(&self, msg: Bytes, behind: Option<&Behind>) -> Result<(), Refused> {
        let n = cost(&msg);
        let was_empty = self.enqueue(msg, behind)?;
        self.budget.add(n);
        if was_empty {
            self.ready.notify();
        }
        Ok(())
    }

    /// Queues the session's first message (its `welcome`) in its new, empty queue.
    pub fn first(&self, msg: Bytes) {
        let _ = self.queue(msg, None);
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
                match self.queue(m.clone(), None) {
                    Ok(()) => return true,
                    Err(Refused::Full) => msg = Some(m),
                    Err(_) => return false,
                }
            }
            room.await;
        }
    }

    /// Pushes a message for a subscription without waiting, waking the writer now. On a
    /// full queue, applies the slow-consumer policy; `missed` is what the subscriber now
    /// lacks (the tick's seq, or [`NEED_SNAPSHOT`]). Called by the hub with the symbol's
    /// slot locked. Returns whether the message was queued.
    pub fn push<L: Lagging + 'static>(
        &self,
        slot: &Arc<L>,
        behind: &Behind,
        msg: Bytes,
        missed: u64,
    ) -> bool {
        match self.queue(msg, Some(behind)) {
            Ok(()) => true,
            Err(why) => self.refused(why, slot, behind, missed),
        }
    }

    /// Like [`Outbox::push`], but the writer is woken when `wakes` is, once the whole
    /// batch is queued.
    pub fn push_deferred<L: Lagging + 'static>(
        self: &Arc<Self>,
        slot: &Arc<L>,
        behind: &Behind,
        msg: Bytes,
        missed: u64,
        wakes: &mut Wakes,
    ) -> bool {
        let n = cost(&msg);
        match self.enqueue(msg, Some(behind)) {
            Ok(was_empty) => {
                wakes.add(&self.budget, n);
                if was_empty {
                    wakes.outboxes.push(self.clone());
                }
                true
            }
            Err(why) => self.refused(why, slot, behind, missed),
        }
    }

    /// Queues a message that has no catch-up of its own (a bar) when there is room, the
    /// writer woken with `wakes`. False when it was not queued: the queue is full (under
    /// the `disconnect` policy the session is then closed with 4008, as for a tick) or
    /// closed.
    pub fn offer(self: &Arc<Self>, msg: Bytes, wakes: &mut Wakes) -> bool {
        let n = cost(&msg);
        match self.enqueue(msg, None) {
            Ok(was_empty) => {
                wakes.add(&self.budget, n);
                if was_empty {
                    wakes.outboxes.push(self.clone());
                }
                true
            }
            Err(Refused::Full) => {
                if self.policy == SlowPolicy::Disconnect {
                    self.overflowed.store(true, Ordering::Release);
                    self.ready.notify();
                }
                false
            }
            Err(Refused::Closed | Refused::Behind | Refused::Over) => false,
        }
    }

    fn refused<L: Lagging + 'static>(
        &self,
        why: Refused,
        slot: &Arc<L>,
        behind: &Behind,
        missed: u64,
    ) -> bool {
        if let (Refused::Behind, NEED_SNAPSHOT) = (&why, missed) {
            // What it lacks now is a snapshot (a new epoch began), not a gap.
            behind.store(NEED_SNAPSHOT, Ordering::Release);
        }
        if let Refused::Over = why {
            self.over_bound(slot, behind, missed);
            return false;
        }
        if let Refused::Full = why {
            match self.policy {
                SlowPolicy::Conflate => {
                    self.lag(slot, behind, missed);
                }
                SlowPolicy::Disconnect => {
                    self.overflowed.store(true, Ordering::Release);
                    self.ready.notify();
                }
            }
        }
        false
    }

    /// Marks a subscription behind by `missed` and wakes the writer, which catches it
    /// up once the queue has drained ([`Outbox::take_lagging`]). True when it is the
    /// session's first subscription behind now.
    fn lag<L: Lagging + 'static>(&self, slot: &Arc<L>, behind: &Behind, missed: u64) -> bool {
        behind.store(missed, Ordering::Release);
        let slot: Arc<dyn Lagging> = slot.clone();
        self.lagging.lock().push((slot, behind.clone()));
        let first = !self.has_lagging.swap(true, Ordering::AcqRel);
        self.ready.notify();
        first
    }

    /// A subscription's data refused for the node's bound ([`Refused::Over`]): under
    /// `conflate`, the subscription catches up later as from a full queue (counted once
    /// per session as a conflation for the bound); under `disconnect`, the session is
    /// closed with 4008 and gives back what it holds, as the enforcer would.
    fn over_bound<L: Lagging + 'static>(&self, slot: &Arc<L>, behind: &Behind, missed: u64) {
        match self.policy {
            SlowPolicy::Conflate => {
                if self.lag(slot, behind, missed) {
                    self.budget.counted_conflation();
                }
            }
            SlowPolicy::Disconnect => {
                if !self.evicted() {
                    self.budget.counted_close();
                    self.evict();
                }
            }
        }
    }

    /// Whether the queue overflowed under the `disconnect` policy.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Whether the budget's enforcer closes this session (close 4008).
    pub fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Closes the session for the budget: what it has queued is dropped at once (the
    /// writer closes with 4008 before writing anything queued), its writer is woken,
    /// and a write it is blocked in is given up at the writer's next look
    /// ([`Watch`](crate::session::Watch)).
    pub(super) fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        let mut q = self.queue.lock();
        let dropped = std::mem::take(&mut q.items);
        let freed = std::mem::take(&mut q.bytes);
        drop(q);
        drop(dropped);
        self.budget.sub(freed);
        self.ready.notify();
        self.room.notify_waiters();
    }

    /// Counts a frame of `len` bytes that the writer is writing, until the returned
    /// guard is dropped.
    pub fn writing(&self, len: usize) -> Writing<'_> {
        let n = len as u64;
        self.write_begins(n);
        Writing { outbox: self, n }
    }

    /// Counts `n` bytes of a frame the writer begins to write, until
    /// [`Outbox::write_ends`] (what [`Outbox::writing`] does for a writer that keeps
    /// the count itself).
    pub fn write_begins(&self, n: u64) {
        self.in_flight.fetch_add(n, Ordering::Relaxed);
        self.budget.add(n);
    }

    /// The frame of `n` bytes counted by [`Outbox::write_begins`] is written or given up.
    /// A frame already returned to the budget when the receiver was dropped is not
    /// returned twice.
    pub fn write_ends(&self, n: u64) {
        let was = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            })
            .unwrap_or_else(|v| v);
        self.budget.sub(was.min(n));
    }

    /// What the session holds now against the budget: queued and being written.
    pub(super) fn held(&self) -> u64 {
        self.queue.lock().bytes + self.in_flight.load(Ordering::Relaxed)
    }

    /// Conflates this session for the budget: from the first tick of a subscription
    /// still queued, everything of that subscription leaves the queue, and the
    /// subscription catches up by itself (a `gap` `slow_consumer` and its newest tick,
    /// or a fresh snapshot after a new epoch, as when its queue is full). Other messages
    /// (replies, errors, messages of paced subscriptions and other channels) stay, in
    /// order. Returns the bytes freed.
    pub(super) fn conflate(&self, hub: &Hub) -> u64 {
        // Read outside the lock; the queue changes meanwhile only at its two ends.
        let seen: Vec<Bytes> = self.queue.lock().items.iter().cloned().collect();
        let heads: Vec<Head<'_>> = seen.iter().map(|m| head(m)).collect();
        let mut marks = Marks::find(&heads, hub, self.id);
        if marks.0.is_empty() {
            return 0;
        }
        let mut q = self.queue.lock();
        let skip = q
            .items
            .front()
            .and_then(|f| seen.iter().position(|m| same(m, f)))
            .unwrap_or(seen.len());
        let mut kept = VecDeque::with_capacity(q.items.len());
        let mut freed = 0;
        for (i, m) in std::mem::take(&mut q.items).into_iter().enumerate() {
            let dropped = match seen.get(skip + i) {
                Some(s) if same(s, &m) => marks.drops(&heads[skip + i]),
                _ => marks.drops(&head(&m)),
            };
            if dropped {
                freed += cost(&m);
            } else {
                kept.push_back(m);
            }
        }
        q.items = kept;
        q.bytes -= freed;
        // Marked under the queue's lock: from here the hub's pushes for these
        // subscriptions are refused (see `enqueue`).
        let mut lagging = self.lagging.lock();
        for m in marks.0.into_iter().filter_map(Mark::missed) {
            lagging.push(m);
        }
        drop(lagging);
        self.has_lagging.store(true, Ordering::Release);
        drop(q);
        self.budget.sub(freed);
        self.ready.notify();
        self.room.notify_waiters();
        freed
    }

    /// Takes the subscriptions that fell behind, if any.
    pub fn take_lagging(&self) -> Vec<(Arc<dyn Lagging>, Behind)> {
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
        self.ready.notify();
    }
}

/// Whether `a` and `b` are the same message (the same bytes, not equal ones).
fn same(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

/// One subscription being conflated: what it lacks once its queued messages are gone.
struct Mark {
    symbol: String,
    slot: Arc<Slot>,
    behind: Behind,
    /// The first seq dropped, once a tick of it was.
    first: Option<u64>,
    /// A snapshot or a new epoch's `gap` was dropped: it lacks a snapshot.
    snapshot: bool,
}

impl Mark {
    /// Marks the subscription behind, if anything of it was dropped: the earliest
    /// position it lacks (a snapshot wins over a gap). Returns it for the writer's
    /// catch-up.
    fn missed(self) -> Option<(Arc<dyn Lagging>, Behind)> {
        let first = self.first?;
        let now = self.behind.load(Ordering::Acquire);
        let lacks = if self.snapshot || now == NEED_SNAPSHOT {
            NEED_SNAPSHOT
        } else if now == 0 {
            first
        } else {
            now.min(first)
        };
        self.behind.store(lacks, Ordering::Release);
        let slot: Arc<dyn Lagging> = self.slot;
        Some((slot, self.behind))
    }
}

/// The subscriptions a conflation drops the messages of.
struct Marks(Vec<Mark>);

impl Marks {
    /// The unpaced tick subscriptions of session `id` that have a tick among `heads`.
    fn find(heads: &[Head<'_>], hub: &Hub, id: u64) -> Marks {
        let mut marks: Vec<Mark> = Vec::new();
        for h in heads {
            let Head::Tick { symbol, .. } = h else {
                continue;
            };
            if marks.iter().any(|m| m.symbol == **symbol) {
                continue;
            }
            if let Some((slot, behind)) = hub.unpaced_subscription(symbol, id) {
                marks.push(Mark {
                    symbol: symbol.to_string(),
                    slot,
                    behind,
                    first: None,
                    snapshot: false,
                });
            }
        }
        Marks(marks)
    }

    /// Whether the message `h` is dropped: it belongs to a marked subscription, from
    /// its first tick on.
    fn drops(&mut self, h: &Head<'_>) -> bool {
        let Some(symbol) = h.symbol() else {
            return false;
        };
        let Some(m) = self.0.iter_mut().find(|m| m.symbol == symbol) else {
            return false;
        };
        match (h, m.first) {
            (Head::Tick { first, .. }, None) => m.first = Some(*first),
            (_, None) => return false,
            (Head::Snapshot { .. } | Head::Reset { .. }, Some(_)) => m.snapshot = true,
            _ => {}
        }
        true
    }
}

/// A frame being written, counted against the budget until dropped.
pub struct Writing<'a> {
    outbox: &'a Outbox,
    n: u64,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.outbox.write_ends(self.n);
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
        let was_full = q.items.len() >= self.outbox.capacity as usize;
        let n = q.items.len().min(max);
        let from = into.len();
        into.extend(q.items.drain(..n));
        let taken: u64 = into[from..].iter().map(cost).sum();
        q.bytes -= taken;
        if q.items.is_empty() && q.items.capacity() > KEEP_DRAINED {
            q.items = VecDeque::new();
        }
        drop(q);
        if taken > 0 {
            self.outbox.budget.sub(taken);
        }
        if was_full && n > 0 {
            self.outbox.room.notify_waiters();
        }
        n
    }

    /// The queue this side receives from.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Gives back the queue's room when nothing is queued: a writer going idle keeps
    /// none (the next message queued takes room again).
    pub fn release_room(&mut self) {
        let mut q = self.outbox.queue.lock();
        if q.items.is_empty() && q.items.capacity() > 0 {
            let room = std::mem::take(&mut q.items);
            drop(q);
            drop(room);
        }
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

    /// [`Receiver::poll_woken`] as a future, for the tests.
    #[cfg(test)]
    pub async fn woken(&self) {
        std::future::poll_fn(|cx| self.poll_woken(cx)).await
    }

    /// `Ready` once the writer has something to look at — a message queued, an
    /// overflow, or [`Outbox::wake_writer`] — else the task is woken when it has. It may
    /// be `Ready` with nothing new (the caller looks and waits again); a wake with no
    /// writer waiting is kept for its next look.
    pub fn poll_woken(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.outbox.ready.poll(cx)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut q = self.outbox.queue.lock();
        q.closed = true;
        q.items = VecDeque::new();
        let held = std::mem::take(&mut q.bytes);
        drop(q);
        // The frame its writer was writing, if the connection ended mid-write.
        let writing = self.outbox.in_flight.swap(0, Ordering::Relaxed);
        self.outbox.budget.sub(held + writing);
        self.outbox.budget.leave(self.outbox.id);
        self.outbox.room.notify_waiters();
    }
}

impl Member for Outbox {
    fn held(&self) -> u64 {
        Outbox::held(self)
    }

    fn conflate(&self, hub: &Hub) -> u64 {
        Outbox::conflate(self, hub)
    }

    fn evicted(&self) -> bool {
        Outbox::evicted(self)
    }

    fn evict(&self) {
        Outbox::evict(self)
    }

    fn wake(&self) {
        self.ready.notify()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
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

    /// A hub serving AAPL and one subscriber (id 7, room for 64 messages, no snapshot
    /// at first) whose queue counts against a budget of 1 MiB.
    fn in_budget_subscribed() -> (crate::hub::Hub, Arc<Budget>, Arc<Outbox>, Receiver, Behind) {
        use crate::hub::{Hub, Start};
        let hub = Hub::new(["AAPL".into()], 64);
        let budget = Budget::new(1 << 20, 0, SlowPolicy::Conflate);
        let (outbox, rx) = Outbox::in_budget(7, 64, SlowPolicy::Conflate, budget.clone());
        let behind: Behind = Arc::new(AtomicU64::new(0));
        let start = Start {
            snapshot: false,
            ..Start::default()
        };
        assert!(hub.subscribe("AAPL", &outbox, &behind, &start));
        (hub, budget, outbox, rx, behind)
    }

    /// A frame whose writing never finished (the connection ended mid-write) is given
    /// back to the budget with the queue when the receiver goes, and only once, whether
    /// the writer's own count ends before or after.
    #[test]
    fn a_frame_cut_off_mid_write_is_given_back_once() {
        for writer_last in [false, true] {
            let budget = Budget::new(1 << 20, 0, SlowPolicy::Conflate);
            let (outbox, rx) = Outbox::in_budget(7, 64, SlowPolicy::Conflate, budget.clone());
            let base = budget.held();
            outbox.write_begins(1000);
            assert_eq!(budget.held(), base + 1000);
            if writer_last {
                drop(rx);
                assert_eq!(budget.held(), base, "given back with the queue");
                outbox.write_ends(1000);
            } else {
                outbox.write_ends(1000);
                drop(rx);
            }
            assert_eq!(budget.held(), base, "given back once");
            assert_eq!(outbox.held(), 0);
        }
    }

    /// Over the node's bound, a session holding at least the floor queues none of its
    /// subscriptions' data: the tick is conflated at once (the subscription is behind,
    /// from that tick), and the count stays where it was; under the bound again, it
    /// queues as before.
    #[test]
    fn over_the_bound_a_session_past_the_floor_is_conflated_at_once() {
        use crate::hub::{conflation_tests::tick, Hub, Start};
        let hub = Hub::new(["AAPL".into()], 64);
        let budget = Budget::new(4 * SLOT, SLOT, SlowPolicy::Conflate);
        let (outbox, mut rx) = Outbox::in_budget(7, 64, SlowPolicy::Conflate, budget.clone());
        let behind: Behind = Arc::new(AtomicU64::new(0));
        let start = Start {
            snapshot: false,
            ..Start::default()
        };
        assert!(hub.subscribe("AAPL", &outbox, &behind, &start));
        // Another session's backlog puts the node over its bound.
        budget.add(5 * SLOT);
        hub.publish(tick("e1", 1));
        assert_eq!(behind.load(Ordering::Acquire), 0, "under the floor: queued");
        let held = budget.held();
        hub.publish(tick("e1", 2));
        assert_eq!(
            behind.load(Ordering::Acquire),
            2,
            "past the floor: conflated"
        );
        assert_eq!(budget.held(), held, "nothing more counted");
        let mut got = Vec::new();
        assert_eq!(rx.take(&mut got, 100), 1);
        budget.sub(5 * SLOT);
        assert!(budget.held() <= 4 * SLOT);
    }

    /// An evicted session gives back what it queued at once and takes nothing more.
    #[test]
    fn an_eviction_empties_the_queue_and_refuses_what_follows() {
        use crate::hub::conflation_tests::tick;
        let (hub, budget, outbox, mut rx, _) = in_budget_subscribed();
        for s in 1..=3 {
            hub.publish(tick("e1", s));
        }
        assert!(budget.held() > 3 * SLOT);
        outbox.evict();
        assert_eq!(budget.held(), 0);
        hub.publish(tick("e1", 4));
        assert!(!outbox
            .send(Bytes::from_static(br#"{"type":"pong"}"#))
            .now_or_never()
            .unwrap());
        let mut got = Vec::new();
        assert_eq!(rx.take(&mut got, 100), 0);
        assert_eq!(budget.held(), 0);
        assert!(outbox.evicted());
    }

    /// A queue holding ticks 1..=6 of AAPL with a reply among them, conflated: the
    /// ticks go, the reply stays, the budget gives back what they held, the hub's next
    /// push is refused, and the catch-up says what was missed.
    #[test]
    fn a_conflation_drops_the_queued_ticks_and_the_subscription_catches_up() {
        use crate::hub::{conflation_tests::tick, Hub};
        let (hub, budget, outbox, mut rx, behind) = in_budget_subscribed();
        hub.publish(tick("e1", 1));
        hub.publish(tick("e1", 2));
        assert!(outbox
            .send(Bytes::from_static(br#"{"type":"pong"}"#))
            .now_or_never()
            .unwrap());
        for s in 3..=6 {
            hub.publish(tick("e1", s));
        }
        let held = budget.held();
        assert!(held > 6 * SLOT, "{held}");
        let freed = outbox.conflate(&hub);
        assert_eq!(budget.held(), held - freed);
        assert_eq!(
            behind.load(Ordering::Acquire),
            1,
            "it lacks everything from seq 1"
        );
        // Refused now, under the queue's lock, as the hub checked before pushing.
        hub.publish(tick("e1", 7));
        let mut got = Vec::new();
        rx.take(&mut got, 100);
        assert_eq!(got, [Bytes::from_static(br#"{"type":"pong"}"#)]);
        assert_eq!(budget.held(), 0);
        let mut out = Vec::new();
        for (slot, b) in outbox.take_lagging() {
            Hub::catch_up(
                &slot,
                &b,
                outbox.id(),
                crate::protocol::Encoding::Json,
                &mut out,
            );
        }
        let v: Vec<serde_json::Value> = out
            .iter()
            .map(|m| serde_json::from_slice(m).unwrap())
            .collect();
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(
            (&v[0]["type"], &v[0]["from"], &v[0]["to"]),
            (&"gap".into(), &1.into(), &6.into())
        );
        assert_eq!((&v[1]["type"], &v[1]["seq"]), (&"tick".into(), &7.into()));
        // In step again: the next tick is queued.
        hub.publish(tick("e1", 8));
        assert_eq!(rx.take(&mut got, 100), 1);
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
        assert_eq!(wakes.outboxes.len(), 1, "one wake for the batch");
        // Not woken yet: the writer, waiting, does not see the messages.
        let woken = tokio::time::timeout(Duration::from_millis(20), rx.woken()).await;
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
