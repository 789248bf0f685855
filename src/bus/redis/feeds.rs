//! Whether the feeds publishing into Redis are alive.
//!
//! A feed's publisher says so every [`RedisConfig::heartbeat`] on the channel
//! `<prefix>feeds` (plain Pub/Sub, which a Redis Cluster carries to every master):
//! `{"type":"feed","feed":"ID","instance":"…","state":"up","interval_ms":500}`, and
//! `"state":"down"` when it stops cleanly. `"lost":["AAPL",…]` in a beat names symbols
//! the feed stopped publishing while it goes on (a publisher connection of a node's
//! `/v1/publish` ended). A node knows which feed publishes each symbol it watches from
//! the symbol's lease key `owner:{S}`, read when it starts watching and every few
//! seconds after.
//!
//! A feed not heard for three intervals is lost (also its clean `down`): the node marks
//! the symbols it owns stale at once (within 1.5 s at the default interval), and they
//! are live again with their next tick. Silence is judged only while the node has
//! itself been listening for that long: a node that cannot hear the channel does not
//! take that for dead feeds. A symbol whose lease names no feed (a publisher that keeps
//! no lease, following only the protocol's bus section) is never judged by this.
//!
//! One identity, one running feed: a feed holds `<prefix>feed:{ID}` (its instance, with
//! an expiry of three intervals, renewed by each beat). A feed started under the id of
//! one that crashed takes it as soon as that expires, and its symbols at once (their
//! leases name its id); a second feed started under an id in use is refused.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::tick::Symbol;

/// Beats missed before a feed is lost.
pub const MISSED_BEATS: u32 = 3;

/// Whether a feed goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Publishing.
    Up,
    /// Stopped cleanly.
    Down,
}

/// One heartbeat of a feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    /// Always `feed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The feed's id, as in the lease keys.
    pub feed: String,
    /// This run of the feed (a restart under the same id has a new one).
    pub instance: String,
    /// Up or down.
    pub state: State,
    /// Time to the next beat.
    pub interval_ms: u64,
    /// Symbols the feed stopped publishing while it goes on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<String>,
}

impl Beat {
    /// A beat of `feed`'s `instance`.
    pub fn new(feed: &str, instance: &str, state: State, interval: Duration) -> Beat {
        Beat {
            kind: "feed".into(),
            feed: feed.to_owned(),
            instance: instance.to_owned(),
            state,
            interval_ms: interval.as_millis() as u64,
            lost: Vec::new(),
        }
    }

    /// Its JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain fields serialize")
    }

    /// Reads a beat; `None` for anything else.
    pub fn parse(payload: &[u8]) -> Option<Beat> {
        let b: Beat = serde_json::from_slice(payload).ok()?;
        (b.kind == "feed" && !b.feed.is_empty() && b.interval_ms > 0).then_some(b)
    }
}

struct Heard {
    at: Instant,
    interval: Duration,
    lost: bool,
}

/// What a node knows of the feeds: when each was last heard, and which feed owns each
/// watched symbol.
#[derive(Default)]
pub struct Liveness {
    feeds: HashMap<String, Heard>,
    owners: HashMap<Symbol, String>,
}

impl Liveness {
    /// Takes a beat heard at `now`; returns the symbols it makes stale now (those of a
    /// feed that said `down`, and those it names as lost).
    pub fn heard(&mut self, beat: &Beat, now: Instant) -> Vec<Symbol> {
        let interval = Duration::from_millis(beat.interval_ms).max(Duration::from_millis(10));
        let down = beat.state == State::Down;
        let was_lost = self.feeds.get(&beat.feed).is_some_and(|h| h.lost);
        self.feeds.insert(
            beat.feed.clone(),
            Heard {
                at: now,
                interval,
                lost: down,
            },
        );
        let mut stale: Vec<Symbol> = if down && !was_lost {
            self.owned_by(&beat.feed)
        } else {
            Vec::new()
        };
        for s in &beat.lost {
            if let Some((sym, _)) = self.owners.get_key_value(s.as_str()) {
                if !stale.contains(sym) {
                    stale.push(sym.clone());
                }
            }
        }
        stale
    }

    /// Feeds silent for [`MISSED_BEATS`] intervals at `now` become lost; returns their
    /// symbols. `listening_since`: since when the node has heard the channel without a
    /// break (a silence longer than that is not judged).
    pub fn sweep(&mut self, now: Instant, listening_since: Option<Instant>) -> Vec<Symbol> {
        let Some(since) = listening_since else {
            return Vec::new();
        };
        let mut gone: Vec<String> = Vec::new();
        for (feed, h) in &mut self.feeds {
            let silent_for = h.interval * MISSED_BEATS;
            let deadline = h.at.max(since) + silent_for;
            if !h.lost && now >= deadline {
                h.lost = true;
                gone.push(feed.clone());
            }
        }
        gone.iter().flat_map(|f| self.owned_by(f)).collect()
    }

    /// Records that `feed` owns `symbol` (or that nobody does). True when this names a
    /// new owner that is already lost (it went silent, or said `down`, before the node
    /// read the lease): the symbol is stale now.
    pub fn set_owner(&mut self, symbol: Symbol, feed: Option<String>) -> bool {
        match feed {
            Some(f) => {
                let lost = self.feeds.get(&f).is_some_and(|h| h.lost);
                let before = self.owners.insert(symbol, f.clone());
                lost && before.as_deref() != Some(f.as_str())
            }
            None => {
                self.owners.remove(&symbol);
                false
            }
        }
    }

    /// Forgets `symbol` (no longer watched).
    pub fn forget(&mut self, symbol: &str) {
        self.owners.remove(symbol);
    }

    /// Whether a feed is known to hold `symbol`'s lease.
    pub fn owned(&self, symbol: &str) -> bool {
        self.owners.contains_key(symbol)
    }

    /// Whether the feed owning `symbol` is known lost now.
    pub fn owner_lost(&self, symbol: &str) -> bool {
        self.owners
            .get(symbol)
            .and_then(|f| self.feeds.get(f))
            .is_some_and(|h| h.lost)
    }

    fn owned_by(&self, feed: &str) -> Vec<Symbol> {
        self.owners
            .iter()
            .filter(|(_, f)| *f == feed)
            .map(|(s, _)| s.clone())
            .collect()
    }
}

/// Takes `<prefix>feed:{ID}` for `instance` when free or already its own.
const HOLD: &str = "local v = redis.call('GET', KEYS[1]) \
if v == false or v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
return v";

/// Gives `<prefix>feed:{ID}` up when it is `instance`'s.
const LET_GO: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// What a feed's publisher says of itself: its identity and the beats.
pub(crate) struct Presence {
    /// The feed's id.
    pub feed: String,
    /// This run's instance.
    pub instance: String,
    key: String,
    channel: String,
    interval: Duration,
}

impl Presence {
    /// The presence of feed `feed`, a new instance.
    pub fn new(keys: &super::Keys, feed: &str, interval: Duration) -> Presence {
        Presence {
            feed: feed.to_owned(),
            instance: format!("{:016x}", rand::random::<u64>()),
            key: keys.feed(feed),
            channel: keys.feeds(),
            interval,
        }
    }

    fn ttl_ms(&self) -> u64 {
        (self.interval * MISSED_BEATS).as_millis().max(1) as u64
    }

    /// Holds the identity for this instance; the holder's instance when another runs
    /// under it.
    pub async fn hold(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<Option<String>> {
        let r: redis::Value = redis::cmd("EVAL")
            .arg(HOLD)
            .arg(1)
            .arg(&self.key)
            .arg(&self.instance)
            .arg(self.ttl_ms())
            .query_async(conn)
            .await?;
        Ok(match r {
            redis::Value::Int(1) => None,
            redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            other => Some(format!("{other:?}")),
        })
    }

    /// Holds the identity, waiting while an instance that stopped without a word still
    /// holds it (its expiry is three beats); an error naming the holder when it is
    /// still held after that.
    pub async fn claim(&self, conn: &mut redis::aio::MultiplexedConnection) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.interval * (MISSED_BEATS + 1);
        loop {
            match self.hold(conn).await {
                Ok(None) => return Ok(()),
                Ok(Some(holder)) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!(
                        "feed id {:?} is in use by a running feed (instance {holder}); give each \
                         feed its own --feed-id",
                        self.feed
                    ))
                }
                Ok(Some(_)) => tokio::time::sleep(self.interval / 2).await,
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// The channel the beats go to.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// One beat: `up` with the symbols it stopped publishing, or `down`.
    pub fn beat(&self, state: State, lost: Vec<String>) -> Vec<u8> {
        let mut beat = Beat::new(&self.feed, &self.instance, state, self.interval);
        beat.lost = lost;
        beat.to_json()
    }

    /// Adds to `p` the command that renews the identity (`up`) or gives it up
    /// (`down`), on the identity key's slot.
    pub fn keep(&self, state: State, p: &mut redis::Pipeline) {
        match state {
            State::Up => p
                .cmd("EVAL")
                .arg(HOLD)
                .arg(1)
                .arg(&self.key)
                .arg(&self.instance)
                .arg(self.ttl_ms()),
            State::Down => p
                .cmd("EVAL")
                .arg(LET_GO)
                .arg(1)
                .arg(&self.key)
                .arg(&self.instance),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(s: &str) -> Symbol {
        Symbol::from(s)
    }

    #[test]
    fn a_silent_feed_is_lost_after_three_beats_and_only_while_listening() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Liveness::default();
        l.set_owner(sym("AAPL"), Some("synth".into()));
        l.set_owner(sym("MSFT"), Some("synth".into()));
        l.set_owner(sym("EUR/USD"), Some("fx".into()));
        let beat = Beat::new("synth", "i1", State::Up, ms(500));
        assert!(l.heard(&beat, t0).is_empty());
        l.heard(&Beat::new("fx", "i2", State::Up, ms(500)), t0 + ms(1000));
        assert!(l.sweep(t0 + ms(1499), Some(t0)).is_empty());
        let mut lost = l.sweep(t0 + ms(1500), Some(t0));
        lost.sort();
        assert_eq!(lost, [sym("AAPL"), sym("MSFT")]);
        assert!(l.owner_lost("AAPL") && !l.owner_lost("EUR/USD"));
        // Lost once, not at every sweep.
        assert!(l.sweep(t0 + ms(1600), Some(t0)).is_empty());
        // Heard again: alive; a node that was deaf judges from when it listens again.
        l.heard(&beat, t0 + ms(1700));
        assert!(!l.owner_lost("AAPL"));
        assert!(l.sweep(t0 + ms(5000), None).is_empty());
        assert!(l.sweep(t0 + ms(5000), Some(t0 + ms(4000))).is_empty());
        assert_eq!(l.sweep(t0 + ms(5500), Some(t0 + ms(4000))).len(), 3);
    }

    #[test]
    fn an_owner_learned_after_its_feed_was_lost_makes_the_symbol_stale() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Liveness::default();
        l.heard(&Beat::new("synth", "i1", State::Up, ms(500)), t0);
        assert!(!l.set_owner(sym("AAPL"), Some("synth".into())));
        assert_eq!(l.sweep(t0 + ms(1500), Some(t0)), [sym("AAPL")]);
        // Read after the feed went silent: stale at once, and only the first time.
        assert!(l.set_owner(sym("MSFT"), Some("synth".into())));
        assert!(!l.set_owner(sym("MSFT"), Some("synth".into())));
        // A feed that stopped cleanly is lost too; an unknown or live one is not.
        l.heard(&Beat::new("fx", "i2", State::Down, ms(500)), t0);
        assert!(l.set_owner(sym("EUR/USD"), Some("fx".into())));
        assert!(!l.set_owner(sym("GBP/USD"), Some("unheard".into())));
        assert!(!l.set_owner(sym("GBP/USD"), None));
    }

    #[test]
    fn a_clean_stop_and_named_symbols_are_stale_at_once() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.set_owner(sym("AAPL"), Some("pub".into()));
        l.set_owner(sym("MSFT"), Some("pub".into()));
        let mut beat = Beat::new("pub", "i", State::Up, Duration::from_millis(500));
        beat.lost = vec!["MSFT".into(), "NOT-WATCHED".into()];
        assert_eq!(l.heard(&beat, t0), [sym("MSFT")]);
        let down = Beat::new("pub", "i", State::Down, Duration::from_millis(500));
        let mut gone = l.heard(&down, t0);
        gone.sort();
        assert_eq!(gone, [sym("AAPL"), sym("MSFT")]);
        let json = down.to_json();
        assert_eq!(Beat::parse(&json), Some(down));
        assert_eq!(Beat::parse(br#"{"type":"tick"}"#), None);
    }
}
