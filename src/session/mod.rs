//! A session is one client, whatever the transport carrying it: its subscriptions, its
//! commands, its inbound limits, and (in [`outbound`]) the life of its outbound side —
//! the bounded queue, heartbeats, the silence deadline, token expiry, catching up a
//! subscription that fell behind, and the close code when it ends.
//!
//! A transport drives a session through a small interface: it hands each whole inbound
//! message to [`Session::receive`] (and calls [`Session::heard`] for any sign of life),
//! and writes what [`Outbound::next`] returns: messages to send, a heartbeat, or the
//! close. Replies go into the same queue as the ticks, so they are ordered with them.

pub mod outbound;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::auth::Claims;
use crate::hub::{Behind, Outbox, Start};
use crate::node::{Node, Want};
use crate::protocol::{self, CloseCode, Command, CommandError, Encoding, ErrorCode, ServerMsg};
use crate::tick::Symbol;
pub use outbound::{Life, Out, Outbound, Transport};

/// What the transport should do after a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Stop reading: the session closes with this code and reason (the outbound side
    /// sends what is queued, then the close).
    Close(CloseCode, &'static str),
}

/// One whole inbound message, as a transport hands it over.
pub enum Inbound<'a> {
    /// A text message; its bytes are parsed in place.
    Text(&'a mut [u8]),
    /// A binary message: commands are text only.
    Binary,
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

/// One connected client: its commands, limits and subscriptions.
pub struct Session {
    node: Arc<Node>,
    outbox: Arc<Outbox>,
    life: Arc<Life>,
    subs: HashMap<Symbol, Behind>,
    bucket: TokenBucket,
    strikes: u32,
    claims: Option<Box<Claims>>,
    /// The id sent in `welcome`: 128 random bits, hex (an opaque label, not a secret).
    label: String,
    /// How its ticks and snapshots are encoded.
    encoding: Encoding,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Session {
    /// A new session on `node` over `transport`, with its `welcome` queued; returns it
    /// with its outbound side, which the transport's writer drives. `claims` are the
    /// client's token claims when the node has auth enabled. Ticks and snapshots are
    /// JSON; see [`Session::with_encoding`].
    pub fn new(
        node: Arc<Node>,
        claims: Option<Box<Claims>>,
        transport: Transport,
    ) -> (Session, Outbound) {
        Session::with_encoding(node, claims, transport, Encoding::Json)
    }

    /// A new session whose ticks and snapshots are sent in `encoding` (announced in its
    /// `welcome`); otherwise as [`Session::new`].
    pub fn with_encoding(
        node: Arc<Node>,
        claims: Option<Box<Claims>>,
        transport: Transport,
        encoding: Encoding,
    ) -> (Session, Outbound) {
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cfg = &node.settings;
        let (outbox, rx) = Outbox::new(id, cfg.queue, cfg.slow_policy);
        let bucket = TokenBucket::new(cfg.rate_limit, cfg.rate_burst);
        let expires = claims.as_ref().map(|c| c.remaining());
        let life = Arc::new(Life::new());
        let session = Session {
            node: node.clone(),
            outbox: outbox.clone(),
            life: life.clone(),
            subs: HashMap::new(),
            bucket,
            strikes: 0,
            claims,
            // ThreadRng is a CSPRNG seeded from the OS: one id says nothing of another.
            label: format!("{:032x}", rand::random::<u128>()),
            encoding,
        };
        let welcome = session.welcome();
        let out = Outbound::new(
            node, rx, outbox, life, transport, encoding, expires, welcome,
        );
        (session, out)
    }

    /// This session's id, unique within the process.
    pub fn id(&self) -> u64 {
        self.outbox.id()
    }

    /// The `welcome` message.
    fn welcome(&self) -> Bytes {
        let cfg = &self.node.settings;
        ServerMsg::Welcome {
            node: &cfg.node,
            session: &self.label,
            heartbeat_ms: cfg.heartbeat.as_millis() as u64,
            encoding: self.encoding.as_str(),
            limits: &protocol::Limits {
                max_symbols: cfg.max_symbols,
                max_msg_bytes: cfg.max_msg_bytes,
                rate_per_s: cfg.rate_limit,
            },
        }
        .to_json()
    }

    /// The client showed a sign of life (any frame, a Pong included): the silence
    /// deadline moves.
    pub fn heard(&self) {
        self.life.heard();
    }

    /// Asks the outbound side to send what is queued, then close with `code`.
    pub fn close(&self, code: CloseCode, reason: &'static str) -> Flow {
        self.life.close(code, reason);
        self.outbox.wake_writer();
        Flow::Close(code, reason)
    }

    /// Handles one whole inbound message: counts it as a sign of life, applies the
    /// inbound rate limit, then runs it as a command (replies are queued).
    pub async fn receive(&mut self, msg: Inbound<'_>) -> Flow {
        self.heard();
        if !self.bucket.take(Instant::now()) {
            crate::metrics::global()
                .rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.strikes += 1;
            if self.strikes > self.node.settings.rate_strikes {
                return self.close(CloseCode::Policy, "rate limit exceeded repeatedly");
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
            return Flow::Continue;
        }
        self.strikes = 0;
        match msg {
            Inbound::Text(buf) => match protocol::parse_command(buf) {
                Ok(cmd) => self.command(cmd).await,
                Err(e) => self.reply(protocol::error_json(&e, &[])).await,
            },
            Inbound::Binary => {
                self.refuse("binary frames are not accepted; send commands as JSON text")
                    .await
            }
        }
        Flow::Continue
    }

    /// Answers a message that is not a command (bad UTF-8, a binary frame):
    /// `bad_request`, and the connection goes on.
    async fn refuse(&mut self, message: &str) {
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

    /// Runs one command; replies are queued. Transports without a command channel (SSE)
    /// call this with the command their request stands for.
    pub async fn command(&mut self, cmd: Command) {
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
        resume: HashMap<String, protocol::ResumeFrom>,
    ) {
        let Some(known) = self.admit(id, symbols).await else {
            return;
        };
        self.subscribe_admitted(id, known, snapshot, resume).await;
    }

    /// Steps 1 to 5 of a `subscribe` (see docs/protocol.md): the served, allowed
    /// symbols asked for, once each, with an `error` queued for every other; `None`
    /// when nothing is left to subscribe or the symbol limit refuses the command.
    async fn admit(&mut self, id: Option<u64>, symbols: Vec<String>) -> Option<Vec<Symbol>> {
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
                    return None;
                }
            }
        }
        if known.is_empty() {
            if malformed.is_empty() && unknown.is_empty() {
                self.reply(ServerMsg::Subscribed { id, symbols: &[] }.to_json())
                    .await;
            }
            return None;
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
            return None;
        }
        Some(known)
    }

    async fn subscribe_admitted(
        &mut self,
        id: Option<u64>,
        known: Vec<Symbol>,
        snapshot: bool,
        mut resume: HashMap<String, protocol::ResumeFrom>,
    ) {
        // New symbols, and held ones given a position to restart from.
        let wants: Vec<Want> = known
            .iter()
            .filter_map(|sym| {
                let resume = resume.remove(&**sym);
                let held = self.subs.contains_key(sym);
                if held && resume.is_none() {
                    return None;
                }
                let behind = self
                    .subs
                    .get(sym)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(AtomicU64::new(0)));
                Some(Want {
                    symbol: sym.clone(),
                    behind,
                    start: Start {
                        snapshot,
                        resume,
                        backfill: Vec::new(),
                        encoding: self.encoding,
                    },
                    held,
                })
            })
            .collect();
        let names: Vec<&str> = known.iter().map(|s| &**s).collect();
        let confirm = ServerMsg::Subscribed {
            id,
            symbols: &names,
        }
        .to_json();
        let added: Vec<(Symbol, Behind)> = wants
            .iter()
            .filter(|w| !w.held)
            .map(|w| (w.symbol.clone(), w.behind.clone()))
            .collect();
        if let Err(e) = self.node.subscribe(&self.outbox, wants, confirm).await {
            tracing::warn!(error = %e, "bus refused a subscription");
            let names: Vec<&str> = added.iter().map(|(s, _)| &**s).collect();
            let e = CommandError {
                id,
                code: ErrorCode::BadRequest,
                message: format!("subscription failed, nothing was subscribed; try again: {e}"),
            };
            self.reply(protocol::error_json(&e, &names)).await;
            return;
        }
        self.subs.extend(added);
    }

    async fn unsubscribe(&mut self, id: Option<u64>, symbols: Vec<String>) {
        let mut dropped: Vec<Symbol> = Vec::with_capacity(symbols.len());
        for s in &symbols {
            if let Some((sym, _)) = self.subs.remove_entry(s.as_str()) {
                dropped.push(sym);
            }
        }
        let names: Vec<&str> = symbols.iter().map(String::as_str).collect();
        self.node.unsubscribe(self.id(), &dropped).await;
        self.reply(
            ServerMsg::Unsubscribed {
                id,
                symbols: &names,
            }
            .to_json(),
        )
        .await;
    }

    /// Ends the session: every subscription is removed and its memory freed.
    pub async fn finish(mut self) {
        let all: Vec<Symbol> = self.subs.drain().map(|(s, _)| s).collect();
        self.node.unsubscribe(self.id(), &all).await;
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
