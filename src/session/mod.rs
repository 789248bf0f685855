//! A session is one client: its subscriptions, its inbound limits and its outbound queue.
//!
//! The transport reads frames and hands each text message to [`Session::handle_text`];
//! replies go into the same outbound queue as the ticks, so they are ordered with them.

pub mod outbox;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::auth::Claims;
use crate::hub::Start;
use crate::node::Node;
use crate::protocol::{self, Command, CommandError, ErrorCode, ServerMsg};
use crate::tick::Symbol;
use outbox::{Behind, Outbox};

/// Close codes this server uses (see the protocol document).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down: reconnect with backoff.
    pub const GOING_AWAY: u16 = 1001;
    /// Policy violation (rate-limit abuse): do not reconnect without a change.
    pub const POLICY: u16 = 1008;
    /// Message too big: do not resend it.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error: reconnect with backoff.
    pub const INTERNAL: u16 = 1011;
    /// Slow consumer disconnected: reconnect with backoff, and read faster.
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// What the transport should do after a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Close the connection with this code and reason.
    Close(u16, &'static str),
}

/// A token bucket: `rate` tokens per second, at most `burst` saved.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            at: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One connected client.
pub struct Session {
    node: Arc<Node>,
    outbox: Arc<Outbox>,
    subs: HashMap<Symbol, Behind>,
    bucket: TokenBucket,
    strikes: u32,
    claims: Option<Claims>,
    /// The id sent in `welcome`: 128 random bits, hex (an opaque label, not a secret).
    label: String,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Session {
    /// A new session on `node`; returns it with the receiving end of its queue.
    /// `claims` are the client's token claims when the node has auth enabled.
    pub fn new(
        node: Arc<Node>,
        claims: Option<Claims>,
    ) -> (Session, tokio::sync::mpsc::Receiver<Bytes>) {
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cfg = &node.settings;
        let (outbox, rx) = Outbox::new(id, cfg.queue, cfg.slow_policy);
        let bucket = TokenBucket::new(cfg.rate_limit, cfg.rate_burst);
        let session = Session {
            node,
            outbox,
            subs: HashMap::new(),
            bucket,
            strikes: 0,
            claims,
            // ThreadRng is a CSPRNG seeded from the OS: one id says nothing of another.
            label: format!("{:032x}", rand::random::<u128>()),
        };
        (session, rx)
    }

    /// The outbound queue.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The `welcome` message.
    pub fn welcome(&self, encoding: &str) -> Bytes {
        let cfg = &self.node.settings;
        ServerMsg::Welcome {
            node: &cfg.node,
            session: &self.label,
            heartbeat_ms: cfg.heartbeat.as_millis() as u64,
            encoding,
            limits: &protocol::Limits {
                max_symbols: cfg.max_symbols,
                max_msg_bytes: cfg.max_msg_bytes,
                rate_per_s: cfg.rate_limit,
            },
        }
        .to_json()
    }

    /// Applies the inbound rate limit to one message. `Some(flow)` means the message
    /// must be dropped (an error was queued), and how to go on.
    pub async fn admit(&mut self) -> Option<Flow> {
        if self.bucket.take(Instant::now()) {
            self.strikes = 0;
            return None;
        }
        self.strikes += 1;
        if self.strikes > self.node.settings.rate_strikes {
            return Some(Flow::Close(close::POLICY, "rate limit exceeded repeatedly"));
        }
        let err = CommandError {
            id: None,
            code: ErrorCode::RateLimited,
            message: format!(
                "more than {} messages per second; message dropped",
                self.node.settings.rate_limit
            ),
        };
        self.reply(protocol::error_json(&err, &[])).await;
        Some(Flow::Continue)
    }

    /// Answers a message the transport could not accept as a command (bad UTF-8, a
    /// binary frame): `bad_request`, and the connection goes on.
    pub async fn refuse(&mut self, message: &str) {
        let err = CommandError {
            id: None,
            code: ErrorCode::BadRequest,
            message: message.to_owned(),
        };
        self.reply(protocol::error_json(&err, &[])).await;
    }

    async fn reply(&self, msg: Bytes) {
        self.outbox.send(msg).await;
    }

    /// Handles one text message (parsed in place); replies are queued.
    pub async fn handle_text(&mut self, buf: &mut [u8]) {
        match protocol::parse_command(buf) {
            Ok(cmd) => self.handle(cmd).await,
            Err(e) => self.reply(protocol::error_json(&e, &[])).await,
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe {
                id,
                symbols,
                snapshot,
                resume,
            } => self.subscribe(id, symbols, snapshot, resume).await,
            Command::Unsubscribe { id, symbols } => self.unsubscribe(id, symbols).await,
            Command::List { id } => {
                let mut names: Vec<&str> = self.subs.keys().map(|s| &**s).collect();
                names.sort_unstable();
                self.reply(
                    ServerMsg::Subscriptions {
                        id,
                        symbols: &names,
                    }
                    .to_json(),
                )
                .await;
            }
            Command::Ping { id } => self.reply(ServerMsg::pong(id)).await,
        }
    }

    async fn subscribe(
        &mut self,
        id: Option<u64>,
        symbols: Vec<String>,
        snapshot: bool,
        mut resume: HashMap<String, protocol::ResumeFrom>,
    ) {
        let (good, malformed) = protocol::partition_symbols(symbols);
        if !malformed.is_empty() {
            let names: Vec<&str> = malformed.iter().map(String::as_str).collect();
            let e = CommandError {
                id,
                code: ErrorCode::BadSymbol,
                message: format!("malformed symbol: {}", names.join(",")),
            };
            self.reply(protocol::error_json(&e, &names)).await;
        }
        let mut known: Vec<Symbol> = Vec::with_capacity(good.len());
        let mut unknown: Vec<&str> = Vec::new();
        for s in &good {
            match self.node.hub.symbol(s) {
                Some(sym) if !known.contains(&sym) => known.push(sym),
                Some(_) => {}
                None => unknown.push(s),
            }
        }
        if !unknown.is_empty() {
            let e = CommandError {
                id,
                code: ErrorCode::UnknownSymbol,
                message: format!("not served here: {}", unknown.join(",")),
            };
            self.reply(protocol::error_json(&e, &unknown)).await;
        }
        if let Some(claims) = &self.claims {
            let (allowed, denied): (Vec<Symbol>, Vec<Symbol>) =
                known.into_iter().partition(|s| claims.allows(s));
            known = allowed;
            if !denied.is_empty() {
                let names: Vec<&str> = denied.iter().map(|s| &**s).collect();
                let e = CommandError {
                    id,
                    code: ErrorCode::Forbidden,
                    message: format!("token does not allow: {}", names.join(",")),
                };
                self.reply(protocol::error_json(&e, &names)).await;
                if known.is_empty() {
                    return;
                }
            }
        }
        if known.is_empty() {
            if malformed.is_empty() && unknown.is_empty() {
                self.reply(ServerMsg::Subscribed { id, symbols: &[] }.to_json())
                    .await;
            }
            return;
        }
        let added = known.iter().filter(|s| !self.subs.contains_key(*s)).count();
        let max = self.node.settings.max_symbols;
        if self.subs.len() + added > max {
            let names: Vec<&str> = known.iter().map(|s| &**s).collect();
            let e = CommandError {
                id,
                code: ErrorCode::TooManySymbols,
                message: format!(
                    "subscribing {added} more would exceed {max} symbols per connection (now {}); nothing was subscribed",
                    self.subs.len()
                ),
            };
            self.reply(protocol::error_json(&e, &names)).await;
            return;
        }
        let fresh: Vec<Symbol> = known
            .iter()
            .filter(|s| !self.subs.contains_key(*s))
            .cloned()
            .collect();
        if let Err(e) = self.node.bus.watch(&fresh).await {
            tracing::warn!(error = %e, "bus refused a subscription");
            let names: Vec<&str> = fresh.iter().map(|s| &**s).collect();
            let e = CommandError {
                id,
                code: ErrorCode::BadRequest,
                message: format!("subscription failed, nothing was subscribed; try again: {e}"),
            };
            self.reply(protocol::error_json(&e, &names)).await;
            return;
        }
        let names: Vec<&str> = known.iter().map(|s| &**s).collect();
        self.reply(
            ServerMsg::Subscribed {
                id,
                symbols: &names,
            }
            .to_json(),
        )
        .await;
        let mut backfill = self.backfill(&known, &resume).await;
        for sym in known {
            let behind = self
                .subs
                .entry(sym.clone())
                .or_insert_with(|| Arc::new(AtomicU64::new(0)))
                .clone();
            let start = Start {
                snapshot,
                resume: resume.remove(&*sym),
                backfill: backfill.remove(&sym).unwrap_or_default(),
            };
            self.node.hub.subscribe(&sym, &self.outbox, &behind, &start);
        }
    }

    /// For each resumed symbol whose range the local ring does not hold (a client that
    /// moved here from another node), the ticks the bus still has after its position.
    async fn backfill(
        &self,
        symbols: &[Symbol],
        resume: &HashMap<String, protocol::ResumeFrom>,
    ) -> HashMap<Symbol, Vec<crate::tick::Tick>> {
        let wants: Vec<(Symbol, u64)> = symbols
            .iter()
            .filter_map(|s| {
                let from = resume.get(&**s)?;
                (!self.node.hub.covers(s, from)).then(|| (s.clone(), from.seq))
            })
            .collect();
        if wants.is_empty() {
            return HashMap::new();
        }
        match self.node.bus.history(&wants).await {
            Ok(found) => wants.into_iter().map(|(s, _)| s).zip(found).collect(),
            Err(e) => {
                // The replay then announces what it cannot send as a gap.
                tracing::warn!(error = %e, "reading the bus history for a resume failed");
                HashMap::new()
            }
        }
    }

    async fn unsubscribe(&mut self, id: Option<u64>, symbols: Vec<String>) {
        let mut dropped: Vec<Symbol> = Vec::with_capacity(symbols.len());
        for s in &symbols {
            if let Some((sym, _)) = self.subs.remove_entry(s.as_str()) {
                dropped.push(sym);
            }
        }
        let names: Vec<&str> = symbols.iter().map(String::as_str).collect();
        self.unwatch(&dropped).await;
        self.reply(
            ServerMsg::Unsubscribed {
                id,
                symbols: &names,
            }
            .to_json(),
        )
        .await;
    }

    /// Removes this session from the hub for `symbols` and releases its bus interest.
    async fn unwatch(&self, symbols: &[Symbol]) {
        if symbols.is_empty() {
            return;
        }
        for s in symbols {
            self.node.hub.unsubscribe(s, self.outbox.id());
        }
        self.node.bus.unwatch(symbols).await;
    }

    /// Ends the session: every subscription is removed and its memory freed.
    pub async fn finish(mut self) {
        let all: Vec<Symbol> = self.subs.drain().map(|(s, _)| s).collect();
        self.unwatch(&all).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_bucket_refills_at_rate_up_to_burst() {
        let mut b = TokenBucket::new(10, 5);
        let t0 = Instant::now();
        assert!((0..5).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 5);
    }
}
