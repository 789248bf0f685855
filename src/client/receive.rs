//! What the client does with each server message: positions, holes, duplicates, health,
//! bars, replies to its own commands, and the node's `reconnect`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bars::Bars;
use super::books::{BookMessage, Books, Outcome};
use super::config::{ClientConfig, Plan};
use super::conn::Conn;
use super::health::{self, Change};
use super::message::{Candle, ServerMessage, SymbolState, TickMessage};
use super::report;
use super::{Counters, Event, Position};
use crate::protocol::channel::Interval;
use crate::protocol::GapReason;
use crate::tick::{Symbol, Tick};

/// What the messages of every connection update.
#[derive(Default)]
pub(super) struct State {
    pub positions: HashMap<Symbol, Position>,
    pub plan: Plan,
    pub counters: Counters,
    pub recheck: health::Recheck,
    pub ever_connected: bool,
    pub bars: Bars,
    pub books: Books,
    pub latency: report::Window,
    /// The node announced a planned close (`reconnect`): its reason and `in_ms`.
    pub move_asked: Option<(String, u64)>,
}

/// What the messages of one frame of one connection update.
pub(super) struct Receiver<'a> {
    pub conn: &'a mut Conn,
    /// A move is under way: two connections may deliver the same values.
    pub overlap: bool,
    pub st: &'a mut State,
    pub pending: &'a mut VecDeque<Event>,
    pub cfg: &'a ClientConfig,
    /// Failed attempts since the last healthy connection.
    pub attempt: u32,
    /// When the frame was received, ns since the Unix epoch.
    pub now: u64,
}

/// The position of `symbol`, made when a pattern of a `ticks` subscription matches it
/// (a symbol that joined later); `None` for a symbol not subscribed.
fn position<'p>(
    positions: &'p mut HashMap<Symbol, Position>,
    plan: &mut Plan,
    symbol: &Symbol,
) -> Option<&'p mut Position> {
    if !positions.contains_key(symbol) {
        if !plan.learn(symbol) {
            return None;
        }
        positions.insert(symbol.clone(), Position::default());
    }
    positions.get_mut(symbol)
}

impl Receiver<'_> {
    /// Takes one server message: updates the positions and counters and queues the
    /// message, after the events it makes (a repeat is dropped).
    pub fn take(&mut self, mut msg: ServerMessage) {
        if let ServerMessage::Book(m) = &msg {
            self.book(m);
            return;
        }
        if self.note(&mut msg) {
            self.pending.push_back(Event::Message(msg));
        }
    }

    /// A `book` or `book_update`: applied to the book held and passed on, followed by
    /// [`Event::Book`]; a stale one dropped; a mismatch reported ([`Event::BookMismatch`])
    /// and dropped, its re-sync due (see [`super::books`]).
    fn book(&mut self, m: &BookMessage) {
        self.conn.got_data = true;
        let st = &mut *self.st;
        let Some(depth) = st
            .plan
            .book_sub(&m.msg.symbol)
            .and_then(|s| match s.channel {
                crate::protocol::Channel::Book { depth } => Some(depth),
                _ => None,
            })
        else {
            // Not a book this client subscribes (any more): nothing to keep.
            return;
        };
        match st.books.take(m, depth, self.overlap) {
            Outcome::Applied(book) => {
                st.counters.books += 1;
                self.pending
                    .push_back(Event::Message(ServerMessage::Book(m.clone())));
                self.pending.push_back(Event::Book(book));
            }
            Outcome::Stale | Outcome::Resyncing => st.counters.book_dropped += 1,
            Outcome::Mismatch(why) => {
                st.counters.book_mismatches += 1;
                st.counters.book_dropped += 1;
                self.pending.push_back(Event::BookMismatch {
                    symbol: m.msg.symbol.clone(),
                    why,
                    resync: !self.overlap,
                });
            }
        }
    }

    /// Updates the state for `msg` and queues the events it makes; false for a message
    /// not passed on (a repeat, or a reply to the client's own command).
    fn note(&mut self, msg: &mut ServerMessage) -> bool {
        match msg {
            ServerMessage::Tick(t) => return self.tick(t),
            ServerMessage::Snapshot(t) => return self.snapshot(t),
            ServerMessage::Gap {
                symbol,
                channel: None,
                from,
                to,
                reason,
            } => return self.gap(symbol, from, *to, *reason),
            ServerMessage::Status { symbol, state } => return self.status(symbol, state),
            ServerMessage::Pong { id, .. } => return self.pong(*id),
            ServerMessage::Candles {
                symbol,
                interval,
                bars,
            } => return self.candles(symbol, *interval, bars),
            ServerMessage::Candle {
                symbol,
                interval,
                candle,
            } => {
                self.conn.got_data = true;
                let news = self.st.bars.candle(symbol, *interval, candle, self.overlap);
                self.st.counters.candles += u64::from(news);
                return news;
            }
            ServerMessage::Subscribed { id, .. } | ServerMessage::Unsubscribed { id, .. }
                if self.st.books.answers(*id) =>
            {
                return false;
            }
            ServerMessage::Reported { id } if self.st.latency.is_ours(*id) => {
                self.st.counters.reports_acked += 1;
                return false;
            }
            ServerMessage::Welcome {
                node, heartbeat_ms, ..
            } => self.welcome(node, *heartbeat_ms),
            ServerMessage::Subscribed {
                id,
                channel,
                symbols,
                ..
            } => self.subscribed(*id, channel.is_none(), symbols),
            ServerMessage::Error { id, .. } if self.st.books.refused(*id) => {}
            ServerMessage::Error {
                id, code, symbols, ..
            } => self.error(*id, code, symbols),
            ServerMessage::Reconnect { reason, in_ms } if !self.conn.for_move => {
                self.st.move_asked = Some((reason.clone(), *in_ms));
            }
            _ => {}
        }
        true
    }

    /// Moves the symbol's position to tick `t`, queueing a reset or a hole first when
    /// it brings either; false for a duplicate, which is dropped. The ticks a paced
    /// tick says it folded (`skipped`) are no hole.
    fn tick(&mut self, t: &TickMessage) -> bool {
        self.conn.got_data = true;
        let st = &mut *self.st;
        if let Some(p) = position(&mut st.positions, &mut st.plan, &t.symbol) {
            let folded = t.skipped.unwrap_or(0);
            if !p.epoch.is_empty() && !t.epoch.is_empty() && p.epoch != t.epoch {
                st.counters.resets += 1;
                st.counters.skipped += folded;
                self.pending.push_back(Event::Reset {
                    symbol: t.symbol.clone(),
                    epoch: t.epoch.clone(),
                });
            } else if p.seq != 0 && t.seq <= p.seq {
                st.counters.duplicates += 1;
                return false;
            } else if p.seq != 0 {
                let jump = t.seq - p.seq - 1;
                st.counters.skipped += folded.min(jump);
                if jump > folded {
                    st.counters.holes += 1;
                    self.pending.push_back(Event::Hole {
                        symbol: t.symbol.clone(),
                        from: p.seq + 1,
                        to: p.seq + jump - folded,
                    });
                }
            } else {
                st.counters.skipped += folded;
            }
            p.seq = t.seq;
            if !t.epoch.is_empty() {
                p.epoch = t.epoch.clone();
            }
            p.stale = false;
        }
        st.counters.ticks += 1;
        if self.cfg.report_every.is_some() {
            st.latency.record(self.now, t.ts);
        }
        true
    }

    /// Replaces the symbol's position with snapshot `t`'s; during a move, false for a
    /// snapshot of a position already held, which is dropped.
    fn snapshot(&mut self, t: &Tick) -> bool {
        self.conn.got_data = true;
        let st = &mut *self.st;
        if let Some(p) = position(&mut st.positions, &mut st.plan, &t.symbol) {
            if self.overlap && p.seq > 0 && p.epoch == t.epoch && t.seq <= p.seq {
                st.counters.duplicates += 1;
                return false;
            }
            p.seq = t.seq;
            p.epoch = t.epoch.clone();
            p.stale = false;
        }
        st.counters.snapshots += 1;
        true
    }

    /// Moves the symbol's position past a gap ending at `to` (not for a reset, whose
    /// numbering starts again) and marks it stale. During a move, a gap of what is
    /// held already is dropped (false) or cut to what is not, and a reset of an epoch
    /// left already is dropped.
    fn gap(&mut self, symbol: &Symbol, from: &mut u64, to: u64, reason: GapReason) -> bool {
        if let Some(p) = self.st.positions.get_mut(symbol) {
            if self.overlap && p.seq > 0 {
                let moot = match reason {
                    GapReason::Reset => self
                        .conn
                        .resumed_epochs
                        .get(symbol)
                        .is_some_and(|e| *e != p.epoch),
                    _ => to <= p.seq,
                };
                if moot {
                    return false;
                }
                if reason != GapReason::Reset {
                    *from = (*from).max(p.seq + 1);
                }
            }
            if reason != GapReason::Reset {
                p.seq = p.seq.max(to);
            }
            p.stale = true;
        }
        self.st.counters.gaps += 1;
        true
    }

    /// Takes a `status` of `symbol` into its health, queueing the change it makes;
    /// during a move, false for one that changes nothing (the other connection said it).
    fn status(&mut self, symbol: &Symbol, state: &SymbolState) -> bool {
        self.st.recheck.heard(symbol);
        let Some(p) = self.st.positions.get_mut(symbol) else {
            return true;
        };
        let was_stale = p.health.is_stale();
        let change = p.health.apply(state, Instant::now());
        if !was_stale && p.health.is_stale() {
            self.st.counters.stale += 1;
        }
        let news = change.is_some();
        self.changed(symbol, change);
        news || !self.overlap
    }

    /// A `pong`: false for the client's own (the probe of a subscription, the recheck
    /// of stale marks), which is not passed on.
    fn pong(&mut self, id: Option<u64>) -> bool {
        let mut ours = false;
        if id.is_some() && self.conn.probe == id {
            self.conn.probe = None;
            self.conn.probed = true;
            ours = true;
        }
        if let Some(live) = self.st.recheck.answered(id) {
            self.rechecked(live);
            ours = true;
        }
        !ours
    }

    /// A `candles` message; during a move, false when it is passed on as the `candle`
    /// messages of its bars that are news (see [`Bars::candles`]).
    fn candles(&mut self, symbol: &Symbol, interval: Interval, bars: &[Candle]) -> bool {
        self.conn.got_data = true;
        let Some(news) = self.st.bars.candles(symbol, interval, bars, self.overlap) else {
            self.st.counters.candles += 1;
            return true;
        };
        self.st.counters.candles += news.len() as u64;
        for candle in news {
            self.pending
                .push_back(Event::Message(ServerMessage::Candle {
                    symbol: symbol.clone(),
                    interval,
                    candle,
                }));
        }
        false
    }

    /// A `subscribed`: the command is answered, and on `ticks` the symbols its patterns
    /// matched are held from now on.
    fn subscribed(&mut self, id: Option<u64>, ticks: bool, symbols: &[String]) {
        self.conn.awaiting.retain(|a| Some(*a) != id);
        if ticks {
            for s in symbols {
                let sym: Symbol = Arc::from(s.as_str());
                position(&mut self.st.positions, &mut self.st.plan, &sym);
            }
        }
    }

    /// An `error`: a command answered; symbols refused for good are no longer asked for.
    fn error(&mut self, id: Option<u64>, code: &str, symbols: &[String]) {
        if id.is_some() {
            self.conn.awaiting.retain(|a| Some(*a) != id);
        }
        if matches!(code, "unknown_symbol" | "bad_symbol" | "forbidden") {
            // Asking again on the next connection would be refused again.
            self.st.plan.forget(symbols);
            self.st
                .positions
                .retain(|w, _| !symbols.iter().any(|s| s == &**w));
        }
    }

    /// The recheck after a reconnect ended: `live` were not called stale by the new node.
    fn rechecked(&mut self, live: Vec<Symbol>) {
        let now = Instant::now();
        for s in live {
            if let Some(p) = self.st.positions.get_mut(&s) {
                let change = p.health.apply(&SymbolState::Live, now);
                self.changed(&s, change);
            }
        }
    }

    /// Queues the event of a change of `symbol`'s health.
    fn changed(&mut self, symbol: &Symbol, change: Option<Change>) {
        let ev = match change {
            None => return,
            Some(Change::Stale { reason, since }) => Event::Stale {
                symbol: symbol.clone(),
                reason,
                since,
            },
            Some(Change::Live(after)) => Event::Live {
                symbol: symbol.clone(),
                after,
            },
        };
        self.pending.push_back(ev);
    }

    /// Marks the connection welcomed and takes the server's heartbeat for its silence
    /// deadline; queues [`Event::Connected`] unless the connection is one being moved to.
    fn welcome(&mut self, node: &str, heartbeat_ms: u64) {
        let conn = &mut *self.conn;
        conn.welcomed = true;
        conn.node = node.to_owned();
        self.st.counters.connections += 1;
        if heartbeat_ms > 0 {
            conn.idle = Duration::from_millis(heartbeat_ms) + self.cfg.heartbeat_grace;
        }
        if conn.for_move {
            return;
        }
        self.pending.push_back(Event::Connected {
            url: conn.url.clone(),
            node: node.to_owned(),
            attempt: self.attempt,
            resumed: conn.resumed_epochs.len(),
            reconnect: self.st.ever_connected,
            dialed: conn.dialed,
        });
        self.st.ever_connected = true;
    }
}
