//! A session's subscriptions: `subscribe` (symbols and patterns on a channel, paced or
//! not), `unsubscribe` and `list`, in the steps `docs/protocol.md` (section 3) gives.
//!
//! A subscription is a symbol on one stream of a channel ([`Key`]), with its pace. A
//! pattern (`*`, `PREFIX*`) is held as such and stands for the symbols it matched when
//! it was subscribed: the served symbols the token allows, those without a value yet
//! included (their first value comes as their snapshot).

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::Session;
use crate::hub::{Behind, Start};
use crate::node::{Key, Want};
use crate::protocol::{
    self, sort_entries, Channel, ChannelName, CommandError, ErrorCode, Selection, ServerMsg,
    Stream, Subscribe,
};
use crate::protocol::{command::Entries, Listing};
use crate::tick::{pattern_matches, Symbol};

/// What a session holds of one subscription.
pub(super) struct Held {
    /// Its catch-up mark, shared with the hub.
    pub(super) behind: Behind,
}

/// A session's subscriptions by [`Key`]: a sorted vector, found by binary search. A
/// connection holds a few keys more often than many, and a map's least table takes
/// room for several (four times one key's, with its control bytes); the vector holds
/// just what it has (see bench/RESULTS.md, `connections`).
#[derive(Default)]
pub(super) struct Subs(Vec<(Key, Held)>);

impl Subs {
    fn find(&self, key: &Key) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(key))
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn contains_key(&self, key: &Key) -> bool {
        self.find(key).is_ok()
    }

    pub(super) fn get(&self, key: &Key) -> Option<&Held> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// Holds `key` with `held`, in place of what it held before.
    pub(super) fn insert(&mut self, key: Key, held: Held) {
        match self.find(&key) {
            Ok(i) => self.0[i].1 = held,
            Err(i) => {
                if self.0.len() == self.0.capacity() && self.0.len() < 4 {
                    // Room for one more at a time while few are held.
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (key, held));
            }
        }
    }

    pub(super) fn remove(&mut self, key: &Key) -> Option<Held> {
        self.remove_entry(key).map(|(_, h)| h)
    }

    pub(super) fn remove_entry(&mut self, key: &Key) -> Option<(Key, Held)> {
        let i = self.find(key).ok()?;
        Some(self.0.remove(i))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &Key> {
        self.0.iter().map(|(k, _)| k)
    }

    /// Takes every key out.
    pub(super) fn drain_keys(&mut self) -> Vec<Key> {
        std::mem::take(&mut self.0)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }
}

/// The symbols a `subscribe` takes, once checked: those it named that may be served,
/// then those its patterns matched.
struct Admitted {
    symbols: Vec<Symbol>,
    patterns: Vec<String>,
}

impl Session {
    /// Answers an `error` about `symbols` on `channel`.
    async fn error(
        &self,
        id: Option<u64>,
        code: ErrorCode,
        message: String,
        symbols: &[&str],
        channel: ChannelName,
    ) {
        let e = CommandError { id, code, message };
        self.reply(protocol::error_json(&e, symbols, channel)).await;
    }

    /// Runs a `subscribe`: steps 1 to 8 of the protocol document.
    pub(super) async fn subscribe(&mut self, cmd: Subscribe) {
        if let Err(why) = self.node.serves_channel(&cmd.channel) {
            let channel = cmd.channel.name();
            self.error(cmd.id, ErrorCode::BadRequest, why, &[], channel)
                .await;
            return;
        }
        let Some(admitted) = self.admit(&cmd).await else {
            return;
        };
        self.subscribe_admitted(cmd, admitted).await;
    }

    /// Steps 1 to 5: the served, allowed symbols asked for and matched, once each,
    /// with an `error` queued for every other; `None` when nothing is left to
    /// subscribe or a limit refuses the command.
    async fn admit(&mut self, cmd: &Subscribe) -> Option<Admitted> {
        let (id, channel) = (cmd.id, cmd.channel.name());
        let Entries {
            symbols,
            patterns,
            malformed,
        } = sort_entries(cmd.symbols.clone());
        if !malformed.is_empty() {
            let names: Vec<&str> = malformed.iter().map(String::as_str).collect();
            let message = format!("malformed symbol: {}", names.join(","));
            self.error(id, ErrorCode::BadSymbol, message, &names, channel)
                .await;
        }
        let (mut known, refused) = self.named(id, channel, &symbols).await;
        self.matched(&patterns, &mut known);
        if known.is_empty() && patterns.is_empty() {
            if malformed.is_empty() && !refused {
                self.reply(
                    ServerMsg::Subscribed(Listing {
                        id,
                        ..listing(&cmd.channel)
                    })
                    .to_json(),
                )
                .await;
            }
            return None;
        }
        if !self.within_limits(cmd, &known, &patterns).await {
            return None;
        }
        Some(Admitted {
            symbols: known,
            patterns,
        })
    }

    /// Steps 2 and 3 for the symbols named: those served here and allowed by the token,
    /// once each, and whether any was refused (with its `error` queued).
    async fn named(
        &self,
        id: Option<u64>,
        channel: ChannelName,
        symbols: &[String],
    ) -> (Vec<Symbol>, bool) {
        let mut known: Vec<Symbol> = Vec::with_capacity(symbols.len());
        let mut unknown: Vec<&str> = Vec::new();
        for s in symbols {
            match self.node.hub.symbol(s) {
                Some(sym) if !known.contains(&sym) => known.push(sym),
                Some(_) => {}
                None => unknown.push(s),
            }
        }
        if !unknown.is_empty() {
            let message = format!("not served here: {}", unknown.join(","));
            self.error(id, ErrorCode::UnknownSymbol, message, &unknown, channel)
                .await;
        }
        let Some(claims) = &self.claims else {
            return (known, !unknown.is_empty());
        };
        let (allowed, denied): (Vec<Symbol>, Vec<Symbol>) =
            known.into_iter().partition(|s| claims.allows(s));
        if !denied.is_empty() {
            let names: Vec<&str> = denied.iter().map(|s| &**s).collect();
            let message = format!("token does not allow: {}", names.join(","));
            self.error(id, ErrorCode::Forbidden, message, &names, channel)
                .await;
        }
        (allowed, !unknown.is_empty() || !denied.is_empty())
    }

    /// Adds to `known` the served symbols `patterns` match that the token allows (a
    /// pattern is never refused for what the token does not allow: it matches less).
    fn matched(&self, patterns: &[String], known: &mut Vec<Symbol>) {
        if patterns.is_empty() {
            return;
        }
        let mut seen: HashSet<Symbol> = known.iter().cloned().collect();
        for p in patterns {
            for s in self.node.hub.matching(p) {
                let allowed = self.claims.as_ref().is_none_or(|c| c.allows(s));
                if allowed && seen.insert(s.clone()) {
                    known.push(s.clone());
                }
            }
        }
    }

    /// Step 5: the limits on patterns and symbols per connection; false (with the
    /// `error` queued) when the command would pass one.
    async fn within_limits(&self, cmd: &Subscribe, known: &[Symbol], patterns: &[String]) -> bool {
        let stream = cmd.channel.stream();
        let cfg = &self.node.settings;
        let new_patterns = patterns
            .iter()
            .filter(|p| !self.patterns.contains(&(stream, (*p).clone())))
            .count();
        let added = known
            .iter()
            .filter(|s| !self.subs.contains_key(&(stream, (*s).clone())))
            .count();
        let (message, names): (String, Vec<&str>) = if let Some(m) = over_limit(
            "patterns",
            new_patterns,
            self.patterns.len(),
            cfg.max_patterns,
        ) {
            (m, patterns.iter().map(String::as_str).collect())
        } else if let Some(m) = over_limit("symbols", added, self.subs.len(), cfg.max_symbols) {
            (m, known.iter().map(|s| &**s).collect())
        } else {
            return true;
        };
        let channel = cmd.channel.name();
        self.error(cmd.id, ErrorCode::TooManySymbols, message, &names, channel)
            .await;
        false
    }

    /// Steps 6 to 8: records the new subscriptions and patterns as the session's own,
    /// waits for the bus, then hands the streams' starts to the node after the
    /// `subscribed` reply.
    async fn subscribe_admitted(&mut self, cmd: Subscribe, admitted: Admitted) {
        let stream = cmd.channel.stream();
        let wants = self.wants(&cmd, &admitted.symbols);
        let names: Vec<&str> = admitted.symbols.iter().map(|s| &**s).collect();
        let patterns: Vec<&str> = admitted.patterns.iter().map(String::as_str).collect();
        let confirm = ServerMsg::Subscribed(Listing {
            id: cmd.id,
            symbols: &names,
            patterns: &patterns,
            throttle_ms: cmd.throttle_ms,
            ..listing(&cmd.channel)
        })
        .to_json();
        // Recorded as the session's own and counted in one step, before any await:
        // whatever stops this command, the session gives them back when it ends.
        let added: Vec<Symbol> = wants
            .iter()
            .filter(|w| !w.held)
            .map(|w| {
                let held = Held {
                    behind: w.behind.clone(),
                };
                self.subs.insert((stream, w.symbol.clone()), held);
                w.symbol.clone()
            })
            .collect();
        let new_patterns: Vec<(Stream, String)> = admitted
            .patterns
            .iter()
            .map(|p| (stream, p.clone()))
            .filter(|k| self.patterns.insert(k.clone()))
            .collect();
        let keys: Vec<Key> = added.iter().map(|s| (stream, s.clone())).collect();
        let ticket = self.node.take(&keys);
        if let Err(e) = self.node.ready(&ticket).await {
            tracing::warn!(error = %e, "bus refused a subscription");
            self.undo(stream, &added, &new_patterns);
            let names: Vec<&str> = added.iter().map(|s| &**s).collect();
            let message = format!("subscription failed, nothing was subscribed; try again: {e}");
            self.error(
                cmd.id,
                ErrorCode::BadRequest,
                message,
                &names,
                cmd.channel.name(),
            )
            .await;
            return;
        }
        self.node.attach(&self.outbox, wants, confirm).await;
    }

    /// What each symbol of a `subscribe` asks of the hub: a new subscription, or a held
    /// one restarted from a `resume` position or given the command's pace.
    fn wants(&self, cmd: &Subscribe, symbols: &[Symbol]) -> Vec<Want> {
        let stream = cmd.channel.stream();
        let mut resume = cmd.resume.clone();
        symbols
            .iter()
            .map(|sym| {
                let held = self.subs.get(&(stream, sym.clone()));
                let behind = held.map_or_else(|| Arc::new(AtomicU64::new(0)), |h| h.behind.clone());
                Want {
                    symbol: sym.clone(),
                    channel: cmd.channel,
                    behind,
                    start: Start {
                        snapshot: cmd.snapshot,
                        resume: resume.remove(&**sym),
                        backfill: Vec::new(),
                        encoding: self.encoding,
                        throttle_ms: cmd.throttle_ms.unwrap_or(0),
                        bars: match cmd.channel {
                            Channel::Candles { backfill, .. } => usize::from(backfill),
                            _ => 0,
                        },
                    },
                    held: held.is_some(),
                }
            })
            .collect()
    }

    /// Gives back what a failed `subscribe` recorded.
    fn undo(&mut self, stream: Stream, added: &[Symbol], patterns: &[(Stream, String)]) {
        let keys: Vec<Key> = added.iter().map(|s| (stream, s.clone())).collect();
        for k in &keys {
            self.subs.remove(k);
        }
        for p in patterns {
            self.patterns.remove(p);
        }
        self.node.release(self.id(), &keys);
    }

    /// Runs an `unsubscribe`: the symbols named and those the patterns match are
    /// dropped from the channel selected, and the patterns with them. The reply lists
    /// the entries asked for, then the symbols the patterns dropped.
    pub(super) async fn unsubscribe(
        &mut self,
        id: Option<u64>,
        entries: Vec<String>,
        sel: Selection,
    ) {
        let streams = sel.streams();
        let mut listed: Vec<String> = entries.clone();
        let Entries { patterns, .. } = sort_entries(entries);
        listed.retain(|e| !patterns.contains(e));
        let mut dropped: Vec<Key> = Vec::new();
        for name in &listed {
            for &stream in &streams {
                if let Some((key, _)) = self
                    .subs
                    .remove_entry(&(stream, Symbol::from(name.as_str())))
                {
                    dropped.push(key);
                }
            }
        }
        for p in &patterns {
            self.patterns.retain(|(s, q)| !(sel.covers(*s) && q == p));
            let mut matched: Vec<Key> = self
                .subs
                .keys()
                .filter(|(s, sym)| sel.covers(*s) && pattern_matches(p, sym))
                .cloned()
                .collect();
            matched.sort_unstable_by(|a, b| a.1.cmp(&b.1));
            for key in matched {
                self.subs.remove(&key);
                if !listed.iter().any(|l| **l == *key.1) {
                    listed.push(key.1.to_string());
                }
                dropped.push(key);
            }
        }
        self.node.release(self.id(), &dropped);
        let names: Vec<&str> = listed.iter().map(String::as_str).collect();
        let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let reply = ServerMsg::Unsubscribed(Listing {
            id,
            symbols: &names,
            patterns: &patterns,
            ..selected(&sel)
        });
        self.reply(reply.to_json()).await;
    }

    /// Answers a `list`: the symbols and patterns held on the channel selected, sorted.
    pub(super) async fn list(&self, id: Option<u64>, sel: Selection) {
        let mut names: Vec<&str> = self
            .subs
            .keys()
            .filter(|(s, _)| sel.covers(*s))
            .map(|(_, sym)| &**sym)
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut patterns: Vec<&str> = self
            .patterns
            .iter()
            .filter(|(s, _)| sel.covers(*s))
            .map(|(_, p)| p.as_str())
            .collect();
        patterns.sort_unstable();
        patterns.dedup();
        let reply = ServerMsg::Subscriptions(Listing {
            id,
            symbols: &names,
            patterns: &patterns,
            ..selected(&sel)
        });
        self.reply(reply.to_json()).await;
    }

    /// Every subscription and pattern given up (the session ends).
    pub(super) fn release_all(&mut self) {
        self.patterns.clear();
        let all: Vec<Key> = self.subs.drain_keys();
        self.node.release(self.id(), &all);
    }
}

/// Why adding `adding` `what` to the `now` a connection holds would pass `max`, if it
/// would.
fn over_limit(what: &str, adding: usize, now: usize, max: usize) -> Option<String> {
    (now + adding > max).then(|| {
        format!(
            "subscribing {adding} more would exceed {max} {what} per connection (now {now}); nothing was subscribed"
        )
    })
}

/// The channel fields of a reply about `channel`'s subscriptions.
fn listing(channel: &Channel) -> Listing<'static> {
    let interval = match channel {
        Channel::Candles { interval, .. } => Some(interval.as_str()),
        _ => None,
    };
    Listing {
        channel: channel.name().in_reply(),
        interval,
        ..Listing::default()
    }
}

/// The channel fields of a reply about the subscriptions `sel` selects.
fn selected(sel: &Selection) -> Listing<'static> {
    Listing {
        channel: sel.name.in_reply(),
        interval: sel.interval.map(|i| i.as_str()),
        ..Listing::default()
    }
}
