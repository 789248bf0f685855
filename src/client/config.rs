//! What a client is told to do ([`ClientConfig`], [`Subscription`]), and what it
//! subscribes on every connection ([`Plan`]): the same subscriptions each time, with
//! `resume` from the positions it holds.

use std::collections::HashMap;
use std::time::Duration;

use super::books::Books;
use super::message::Names;
use super::Position;
use crate::backoff::BackoffConfig;
use crate::protocol::channel::{check_throttle, MAX_BACKFILL};
use crate::protocol::{Channel, Encoding};
use crate::tick::{pattern_matches, valid_pattern, valid_symbol, Symbol};

/// What a client is told to do.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Node URLs (`ws://host:port/v1/ws`), tried in turn: a lost or failed connection
    /// moves to the next one.
    pub urls: Vec<String>,
    /// Bearer token sent with the upgrade, when set.
    pub token: Option<String>,
    /// PEM bundle of extra CAs trusted for `wss://` URLs, besides the built-in roots.
    /// Default: none.
    pub ca_file: Option<std::path::PathBuf>,
    /// Symbols to subscribe on the `ticks` channel, every tick: names, and patterns
    /// (`*`, `BTC-*`) whose matches are held like named symbols.
    pub symbols: Vec<String>,
    /// More subscriptions: ticks at a pace, candles. Default: none.
    pub subscriptions: Vec<Subscription>,
    /// Ask for a `snapshot` before the ticks of a symbol first subscribed. Default: true.
    pub snapshot: bool,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// A connection that has been welcomed and has stayed up this long, or has
    /// delivered a tick or snapshot, counts as healthy: its loss starts the backoff
    /// from the first window again. Default: 5s.
    pub healthy_after: Duration,
    /// Longest wait for TCP, the upgrade and the `welcome`. Default: 5s.
    pub connect_timeout: Duration,
    /// Silence allowed past the server's heartbeat interval before the connection is
    /// given up as dead. Default: 10s.
    pub heartbeat_grace: Duration,
    /// Stop with an error when no URL can be reached on the very first round, instead
    /// of retrying. Default: true.
    pub fail_fast: bool,
    /// Most symbols per `subscribe` command (a long list is sent as several). Default: 256.
    pub symbols_per_command: usize,
    /// Where to start: the last `(epoch, seq)` already held per symbol, as from an
    /// earlier run (an empty epoch resumes by `seq` alone). The first subscription
    /// asks the server to replay what follows. Default: none.
    pub start_from: HashMap<String, (String, u64)>,
    /// How ticks and snapshots are to be sent: `encoding=` is added to every URL (the
    /// events are the same either way). Default: JSON.
    pub encoding: Encoding,
    /// How often to tell the node the delivery latency measured (a `report` of the
    /// ticks received in the window: receive time − `ts`); `None`: never. A window
    /// with no tick sends nothing. Default: 10s.
    pub report_every: Option<Duration>,
    /// On a `reconnect` from the node, open the next connection at once and move to it
    /// before the old one closes (see the module documentation); `false`: wait for the
    /// close and reconnect as after any loss. Default: true.
    pub make_before_break: bool,
    /// More request headers sent with every upgrade, e.g. a load balancer's affinity
    /// cookie (`Cookie: tickstream_node=…`) so that clients behind one address spread
    /// over its nodes. Default: none.
    pub headers: Vec<(String, String)>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            urls: vec!["ws://127.0.0.1:8080/v1/ws".into()],
            token: None,
            ca_file: None,
            symbols: Vec::new(),
            subscriptions: Vec::new(),
            snapshot: true,
            backoff: BackoffConfig::default(),
            healthy_after: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            heartbeat_grace: Duration::from_secs(10),
            fail_fast: true,
            symbols_per_command: 256,
            start_from: HashMap::new(),
            encoding: Encoding::Json,
            report_every: Some(Duration::from_secs(10)),
            make_before_break: true,
            headers: Vec::new(),
        }
    }
}

/// One subscription beyond [`ClientConfig::symbols`]: symbols and patterns on a channel,
/// at a pace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// `ticks`, `candles` with its interval and backfill, or `book` with its depth
    /// (the client keeps each book, see [`crate::client`]).
    pub channel: Channel,
    /// Symbols and patterns (`*`, `BTC-*`).
    pub symbols: Vec<String>,
    /// At most one message per symbol per this many milliseconds (0, or 10 to 60000);
    /// `None`: the channel's own default (every tick; the forming bar every 250 ms).
    pub throttle_ms: Option<u64>,
}

/// One subscription as the client holds it: what it names, what its patterns matched
/// so far (on `ticks`, where each symbol has a position to resume from).
#[derive(Clone, Debug)]
pub(crate) struct Sub {
    pub channel: Channel,
    pub throttle_ms: Option<u64>,
    /// Named symbols, then those the patterns matched.
    pub symbols: Vec<Symbol>,
    pub patterns: Vec<String>,
}

/// Every subscription of a client, and the symbols it holds ticks of.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    pub subs: Vec<Sub>,
    /// Every symbol subscribed on `ticks`, named or matched, in the order first known.
    pub wanted: Vec<Symbol>,
}

/// One `subscribe` command to send: its id and text.
pub(crate) struct Command {
    pub id: u64,
    pub text: String,
}

impl Plan {
    /// The plan of `cfg`, with names interned in `names`; a clear error for a bad entry,
    /// pace, channel or backfill, or a symbol named twice on one stream.
    pub fn new(cfg: &ClientConfig, names: &mut Names) -> Result<Plan, String> {
        let ticks = Subscription {
            channel: Channel::Ticks,
            symbols: cfg.symbols.clone(),
            throttle_ms: None,
        };
        let mut plan = Plan::default();
        let mut named: HashMap<(crate::protocol::Stream, Symbol), ()> = HashMap::new();
        for s in std::iter::once(&ticks).chain(&cfg.subscriptions) {
            let sub = Sub::new(s, names)?;
            for sym in &sub.symbols {
                if named
                    .insert((sub.channel.stream(), sym.clone()), ())
                    .is_some()
                {
                    return Err(format!(
                        "{sym} is subscribed twice on {}: once per channel (and interval)",
                        sub.channel.name()
                    ));
                }
                if sub.channel == Channel::Ticks {
                    plan.wanted.push(sym.clone());
                }
            }
            if !sub.symbols.is_empty() || !sub.patterns.is_empty() {
                plan.subs.push(sub);
            }
        }
        Ok(plan)
    }

    /// Takes `symbol` as matched by a pattern of a `ticks` subscription, when one
    /// matches it and it is not held yet; true when it was added.
    pub fn learn(&mut self, symbol: &Symbol) -> bool {
        if self.wanted.contains(symbol) {
            return false;
        }
        let Some(sub) = self.subs.iter_mut().find(|s| {
            s.channel == Channel::Ticks && s.patterns.iter().any(|p| pattern_matches(p, symbol))
        }) else {
            return false;
        };
        sub.symbols.push(symbol.clone());
        self.wanted.push(symbol.clone());
        true
    }

    /// Drops what the server refused (asking again would be refused again).
    pub fn forget(&mut self, refused: &[String]) {
        let gone = |s: &str| refused.iter().any(|r| r == s);
        self.wanted.retain(|w| !gone(w));
        for sub in &mut self.subs {
            sub.symbols.retain(|w| !gone(w));
            sub.patterns.retain(|p| !gone(p));
        }
        self.subs
            .retain(|s| !s.symbols.is_empty() || !s.patterns.is_empty());
    }

    /// The `subscribe` commands of a connection: per subscription, its symbols in
    /// chunks of `per` (on `ticks` and `book` with `resume` for each position held),
    /// then its patterns, which then bring only what they match anew. Ids are taken
    /// from `next_id`.
    pub fn commands(
        &self,
        held: Held<'_>,
        snapshot: bool,
        per: usize,
        next_id: &mut u64,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        for sub in &self.subs {
            let chunks = sub.symbols.chunks(per.max(1)).map(|c| (c, &[][..]));
            let patterns = (!sub.patterns.is_empty()).then_some((&[][..], &sub.patterns[..]));
            for (symbols, patterns) in chunks.chain(patterns) {
                let text = sub.command(*next_id, symbols, patterns, held, snapshot);
                out.push(Command { id: *next_id, text });
                *next_id += 1;
            }
        }
        out
    }

    /// The book subscription that holds `symbol` (named, or matched by a pattern).
    pub fn book_sub(&self, symbol: &str) -> Option<&Sub> {
        self.subs.iter().find(|s| {
            matches!(s.channel, Channel::Book { .. })
                && (s.symbols.iter().any(|n| &**n == symbol)
                    || s.patterns.iter().any(|p| pattern_matches(p, symbol)))
        })
    }

    /// The commands that re-sync the book of `symbol`: a `subscribe` with `resume` from
    /// the book held, or, with none held, `unsubscribe` then `subscribe` (a fresh
    /// `book`). Ids are taken from `next_id`.
    pub fn resync(&self, symbol: &Symbol, books: &Books, next_id: &mut u64) -> Vec<Command> {
        let Some(sub) = self.book_sub(symbol) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let held = Held {
            positions: &HashMap::new(),
            books,
        };
        if books.position(symbol).is_none() {
            let cmd = serde_json::json!({"op": "unsubscribe", "id": *next_id, "channel": "book",
                "symbols": [&**symbol]});
            out.push(Command {
                id: *next_id,
                text: cmd.to_string(),
            });
            *next_id += 1;
        }
        let text = sub.command(*next_id, std::slice::from_ref(symbol), &[], held, true);
        out.push(Command { id: *next_id, text });
        *next_id += 1;
        out
    }
}

/// The positions a client holds, that its subscriptions resume from.
#[derive(Clone, Copy)]
pub(crate) struct Held<'a> {
    /// Of ticks.
    pub positions: &'a HashMap<Symbol, Position>,
    /// Of books.
    pub books: &'a Books,
}

impl Sub {
    /// Checks one subscription.
    fn new(s: &Subscription, names: &mut Names) -> Result<Sub, String> {
        if let Channel::Candles { backfill, .. } = s.channel {
            if u64::from(backfill) > MAX_BACKFILL {
                return Err(format!(
                    "backfill {backfill} is over {MAX_BACKFILL} closed bars"
                ));
            }
        }
        if let Some(ms) = s.throttle_ms {
            check_throttle(ms)?;
        }
        let mut sub = Sub {
            channel: s.channel,
            throttle_ms: s.throttle_ms,
            symbols: Vec::new(),
            patterns: Vec::new(),
        };
        for e in &s.symbols {
            if valid_symbol(e) {
                let sym = names.intern(e);
                if !sub.symbols.contains(&sym) {
                    sub.symbols.push(sym);
                }
            } else if valid_pattern(e) {
                if !sub.patterns.contains(e) {
                    sub.patterns.push(e.clone());
                }
            } else {
                return Err(format!(
                    "bad symbol {e:?}: symbols are 1 to 32 of A-Z 0-9 . _ : / - and start with a letter or digit; a pattern is * or such a prefix followed by *"
                ));
            }
        }
        Ok(sub)
    }

    /// One `subscribe` of this subscription for `symbols` and `patterns`.
    fn command(
        &self,
        id: u64,
        symbols: &[Symbol],
        patterns: &[String],
        held: Held<'_>,
        snapshot: bool,
    ) -> String {
        let entries: Vec<&str> = symbols
            .iter()
            .map(|s| &**s)
            .chain(patterns.iter().map(String::as_str))
            .collect();
        let mut cmd = serde_json::json!({"op": "subscribe", "id": id, "symbols": entries});
        match self.channel {
            Channel::Candles { interval, backfill } => {
                cmd["channel"] = "candles".into();
                cmd["interval"] = interval.as_str().into();
                if backfill > 0 {
                    cmd["backfill"] = backfill.into();
                }
            }
            Channel::Book { depth } => {
                cmd["channel"] = "book".into();
                cmd["depth"] = depth.levels().into();
                let resume = symbols.iter().filter_map(|s| {
                    let (epoch, seq) = held.books.position(s)?;
                    Some((
                        s.to_string(),
                        serde_json::json!({"epoch": &*epoch, "seq": seq}),
                    ))
                });
                let resume: serde_json::Map<_, _> = resume.collect();
                if !resume.is_empty() {
                    cmd["resume"] = serde_json::Value::Object(resume);
                }
            }
            Channel::Ticks => {
                cmd["snapshot"] = snapshot.into();
                let resume = resume_of(symbols, held.positions);
                if !resume.is_empty() {
                    cmd["resume"] = serde_json::Value::Object(resume);
                }
            }
        }
        if let Some(ms) = self.throttle_ms {
            cmd["throttle_ms"] = ms.into();
        }
        cmd.to_string()
    }
}

/// The `resume` entries of `symbols`: the position held of each that has one.
fn resume_of(
    symbols: &[Symbol],
    positions: &HashMap<Symbol, Position>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut resume = serde_json::Map::new();
    for s in symbols {
        if let Some(p) = positions.get(s).filter(|p| p.seq > 0) {
            let at = if p.epoch.is_empty() {
                serde_json::json!(p.seq)
            } else {
                serde_json::json!({"epoch": &*p.epoch, "seq": p.seq})
            };
            resume.insert(s.to_string(), at);
        }
    }
    resume
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::channel::Interval;

    fn cfg(symbols: &[&str], more: Vec<Subscription>) -> ClientConfig {
        ClientConfig {
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
            subscriptions: more,
            ..ClientConfig::default()
        }
    }

    fn candles(symbols: &[&str]) -> Subscription {
        Subscription {
            channel: Channel::Candles {
                interval: Interval::M1,
                backfill: 60,
            },
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
            throttle_ms: Some(1000),
        }
    }

    #[test]
    fn commands_resume_what_is_held_and_send_patterns_after_their_matches() {
        let mut names = Names::default();
        let mut plan = Plan::new(
            &cfg(&["AAPL", "BTC-*"], vec![candles(&["AAPL"])]),
            &mut names,
        )
        .unwrap();
        assert!(plan.learn(&names.intern("BTC-USD")));
        assert!(!plan.learn(&names.intern("BTC-USD")), "held already");
        assert!(!plan.learn(&names.intern("MSFT")), "no pattern matches it");
        assert_eq!(plan.wanted, ["AAPL", "BTC-USD"].map(Symbol::from));
        let mut positions = HashMap::new();
        positions.insert(
            Symbol::from("BTC-USD"),
            Position {
                epoch: "e".into(),
                seq: 7,
                ..Position::default()
            },
        );
        let mut id = 3;
        let books = Books::default();
        let held = Held {
            positions: &positions,
            books: &books,
        };
        let cmds = plan.commands(held, true, 256, &mut id);
        let got: Vec<serde_json::Value> = cmds
            .iter()
            .map(|c| serde_json::from_str(&c.text).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                serde_json::json!({"op":"subscribe","id":3,"symbols":["AAPL","BTC-USD"],"snapshot":true,
                    "resume":{"BTC-USD":{"epoch":"e","seq":7}}}),
                serde_json::json!({"op":"subscribe","id":4,"symbols":["BTC-*"],"snapshot":true}),
                serde_json::json!({"op":"subscribe","id":5,"symbols":["AAPL"],"channel":"candles",
                    "interval":"1m","backfill":60,"throttle_ms":1000}),
            ]
        );
        assert_eq!((cmds[2].id, id), (5, 6));
        plan.forget(&["AAPL".into(), "BTC-*".into()]);
        assert_eq!(plan.wanted, [Symbol::from("BTC-USD")]);
        assert_eq!(plan.subs.len(), 1, "the candles of AAPL are gone too");
    }

    #[test]
    fn bad_subscriptions_are_refused_with_the_reason() {
        let mut names = Names::default();
        let paced = |ms| Subscription {
            channel: Channel::Ticks,
            symbols: vec!["MSFT".into()],
            throttle_ms: Some(ms),
        };
        let cases = [
            (cfg(&["aapl"], vec![]), "bad symbol \"aapl\""),
            (cfg(&["BTC*X"], vec![]), "a pattern is *"),
            (cfg(&[], vec![paced(5)]), "10"),
            (
                cfg(&["MSFT"], vec![paced(250)]),
                "MSFT is subscribed twice on ticks",
            ),
            (
                cfg(&[], vec![candles(&["AAPL"]), candles(&["AAPL"])]),
                "twice on candles",
            ),
            (
                cfg(
                    &[],
                    vec![Subscription {
                        channel: Channel::Candles {
                            interval: Interval::S1,
                            backfill: 1001,
                        },
                        symbols: vec!["AAPL".into()],
                        throttle_ms: None,
                    }],
                ),
                "over 1000",
            ),
        ];
        for (c, want) in cases {
            let err = Plan::new(&c, &mut names).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
        assert!(Plan::new(&cfg(&["AAPL"], vec![paced(250)]), &mut names).is_ok());
    }
}
