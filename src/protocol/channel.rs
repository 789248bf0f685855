//! Channels (protocol v1.1): a subscription is a symbol on a channel — `ticks` (v1's
//! stream, the default), `candles` or `book` — with the options of that channel, and a
//! pace (`throttle_ms`) that any channel takes.
//!
//! [`Channel`] is a channel with its options as a `subscribe` gives them; [`Stream`] is
//! what tells one subscription of a symbol from another on the same connection (the
//! channel, and for candles the interval: a chart may hold `1s` and `1m` bars of one
//! symbol at once); [`Selection`] is what `unsubscribe` and `list` name. Every check of
//! a value is here, shared by the JSON commands and the query of `/v1/sse`.

use std::fmt;

/// Shortest pace other than 0 (no pacing), in milliseconds.
pub const MIN_THROTTLE_MS: u64 = 10;
/// Longest pace, in milliseconds.
pub const MAX_THROTTLE_MS: u64 = 60_000;
/// Most closed bars a candles subscription may ask for as backfill.
pub const MAX_BACKFILL: u64 = 1000;

/// The channels by name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelName {
    /// Every tick (v1).
    #[default]
    Ticks,
    /// Bars made from the ticks.
    Candles,
    /// L2 depth: a snapshot, then updates.
    Book,
}

impl ChannelName {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelName::Ticks => "ticks",
            ChannelName::Candles => "candles",
            ChannelName::Book => "book",
        }
    }

    /// Reads `"channel"`.
    pub fn parse(s: &str) -> Result<ChannelName, String> {
        match s {
            "ticks" => Ok(ChannelName::Ticks),
            "candles" => Ok(ChannelName::Candles),
            "book" => Ok(ChannelName::Book),
            other => Err(format!(
                "unknown channel {:?}: ticks (the default), candles or book",
                super::truncate(other, 32)
            )),
        }
    }

    /// The name to put in a reply: `None` for `ticks`, whose replies stay as in v1.
    pub fn in_reply(self) -> Option<&'static str> {
        (self != ChannelName::Ticks).then_some(self.as_str())
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The length of a candle: `1s`, `1m`, `5m` or `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interval {
    /// One second.
    S1,
    /// One minute.
    M1,
    /// Five minutes.
    M5,
    /// One hour.
    H1,
}

impl Interval {
    /// Every interval, shortest first.
    pub const ALL: [Interval; 4] = [Interval::S1, Interval::M1, Interval::M5, Interval::H1];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::S1 => "1s",
            Interval::M1 => "1m",
            Interval::M5 => "5m",
            Interval::H1 => "1h",
        }
    }

    /// Its length in nanoseconds (bars are aligned to multiples of it in UTC).
    pub fn nanos(self) -> u64 {
        const S: u64 = 1_000_000_000;
        match self {
            Interval::S1 => S,
            Interval::M1 => 60 * S,
            Interval::M5 => 300 * S,
            Interval::H1 => 3600 * S,
        }
    }

    /// Its place in [`Interval::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The start of the bar that holds time `t` (ns since the Unix epoch).
    pub fn start_of(self, t: u64) -> u64 {
        t - t % self.nanos()
    }

    /// Reads `"interval"`.
    pub fn parse(s: &str) -> Result<Interval, String> {
        Interval::ALL
            .into_iter()
            .find(|i| i.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown interval {:?}: 1s, 1m, 5m or 1h",
                    super::truncate(s, 32)
                )
            })
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Interval {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Interval::parse(s)
    }
}

/// Levels per side of a book subscription: 10 or 50.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Depth {
    /// The top 10 levels (the default).
    #[default]
    Top10,
    /// The top 50 levels.
    Top50,
}

impl Depth {
    /// Levels per side.
    pub fn levels(self) -> usize {
        match self {
            Depth::Top10 => 10,
            Depth::Top50 => 50,
        }
    }

    /// Reads `"depth"`.
    pub fn parse(n: u64) -> Result<Depth, String> {
        match n {
            10 => Ok(Depth::Top10),
            50 => Ok(Depth::Top50),
            other => Err(format!("depth {other} is not served: 10 or 50")),
        }
    }
}

/// A channel with the options a `subscribe` gave it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Channel {
    /// Every tick (v1).
    #[default]
    Ticks,
    /// Bars of `interval`, starting with up to `backfill` closed ones.
    Candles {
        /// The bar length.
        interval: Interval,
        /// Closed bars sent first, 0 to [`MAX_BACKFILL`].
        backfill: u16,
    },
    /// The book, `depth` levels per side.
    Book {
        /// Levels per side.
        depth: Depth,
    },
}

/// The options of a channel as a command or a query gives them, before they are checked.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChannelFields<'a> {
    /// `channel`.
    pub channel: Option<&'a str>,
    /// `interval`.
    pub interval: Option<&'a str>,
    /// `backfill`.
    pub backfill: Option<u64>,
    /// `depth`.
    pub depth: Option<u64>,
}

impl Channel {
    /// The channel's name.
    pub fn name(&self) -> ChannelName {
        match self {
            Channel::Ticks => ChannelName::Ticks,
            Channel::Candles { .. } => ChannelName::Candles,
            Channel::Book { .. } => ChannelName::Book,
        }
    }

    /// What tells this channel's subscriptions of a symbol apart from the others.
    pub fn stream(&self) -> Stream {
        match *self {
            Channel::Ticks => Stream::Ticks,
            Channel::Candles { interval, .. } => Stream::Candles(interval),
            Channel::Book { .. } => Stream::Book,
        }
    }

    /// Checks a `subscribe`'s channel and its options: `interval` is required with
    /// candles, `backfill` (0 to 1000, default 0) belongs to candles only, `depth` (10
    /// or 50, default 10) to the book only.
    pub fn from_fields(f: ChannelFields<'_>) -> Result<Channel, String> {
        let name = f
            .channel
            .map_or(Ok(ChannelName::Ticks), ChannelName::parse)?;
        let only = |field: &str, on: ChannelName| {
            format!("\"{field}\" belongs to channel {on} only, not to {name}")
        };
        if name != ChannelName::Candles {
            if f.interval.is_some() {
                return Err(only("interval", ChannelName::Candles));
            }
            if f.backfill.is_some() {
                return Err(only("backfill", ChannelName::Candles));
            }
        }
        if name != ChannelName::Book && f.depth.is_some() {
            return Err(only("depth", ChannelName::Book));
        }
        Ok(match name {
            ChannelName::Ticks => Channel::Ticks,
            ChannelName::Candles => {
                let interval = f
                    .interval
                    .ok_or("channel candles needs \"interval\": 1s, 1m, 5m or 1h".to_owned())?;
                let backfill = f.backfill.unwrap_or(0);
                if backfill > MAX_BACKFILL {
                    return Err(format!(
                        "backfill {backfill} is over {MAX_BACKFILL} closed bars"
                    ));
                }
                Channel::Candles {
                    interval: Interval::parse(interval)?,
                    backfill: backfill as u16,
                }
            }
            ChannelName::Book => Channel::Book {
                depth: f.depth.map_or(Ok(Depth::default()), Depth::parse)?,
            },
        })
    }
}

/// One subscription of a symbol among those a connection may hold on it at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    /// Its ticks.
    Ticks,
    /// Its bars of one interval.
    Candles(Interval),
    /// Its book (whatever the depth: one book per symbol and connection).
    Book,
}

impl Stream {
    /// The channel it belongs to.
    pub fn name(self) -> ChannelName {
        match self {
            Stream::Ticks => ChannelName::Ticks,
            Stream::Candles(_) => ChannelName::Candles,
            Stream::Book => ChannelName::Book,
        }
    }
}

/// The subscriptions an `unsubscribe` or a `list` is about: a channel, and for candles
/// optionally one interval (all of them when absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// The channel.
    pub name: ChannelName,
    /// Candles of this interval only.
    pub interval: Option<Interval>,
}

impl Selection {
    /// Checks `channel` and `interval` (which belongs to candles only).
    pub fn from_fields(channel: Option<&str>, interval: Option<&str>) -> Result<Self, String> {
        let name = channel.map_or(Ok(ChannelName::Ticks), ChannelName::parse)?;
        let interval = match interval {
            None => None,
            Some(_) if name != ChannelName::Candles => {
                return Err(format!(
                    "\"interval\" belongs to channel candles only, not to {name}"
                ))
            }
            Some(i) => Some(Interval::parse(i)?),
        };
        Ok(Selection { name, interval })
    }

    /// The streams selected.
    pub fn streams(&self) -> Vec<Stream> {
        match (self.name, self.interval) {
            (ChannelName::Ticks, _) => vec![Stream::Ticks],
            (ChannelName::Book, _) => vec![Stream::Book],
            (ChannelName::Candles, Some(i)) => vec![Stream::Candles(i)],
            (ChannelName::Candles, None) => Interval::ALL.map(Stream::Candles).to_vec(),
        }
    }

    /// Whether `stream` is one of the subscriptions selected.
    pub fn covers(&self, stream: Stream) -> bool {
        match stream {
            Stream::Candles(i) => {
                self.name == ChannelName::Candles && self.interval.is_none_or(|want| want == i)
            }
            other => other.name() == self.name,
        }
    }
}

/// Checks a pace: 0 (every message) or [`MIN_THROTTLE_MS`] to [`MAX_THROTTLE_MS`].
pub fn check_throttle(ms: u64) -> Result<u32, String> {
    if ms == 0 || (MIN_THROTTLE_MS..=MAX_THROTTLE_MS).contains(&ms) {
        Ok(ms as u32)
    } else {
        Err(format!(
            "throttle_ms {ms} is out of range: 0 (no pacing) or {MIN_THROTTLE_MS} to {MAX_THROTTLE_MS}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(channel: &'a str) -> ChannelFields<'a> {
        ChannelFields {
            channel: Some(channel),
            ..ChannelFields::default()
        }
    }

    #[test]
    fn each_channel_takes_its_own_options_and_refuses_the_others() {
        assert_eq!(
            Channel::from_fields(ChannelFields::default()),
            Ok(Channel::Ticks)
        );
        let candles = ChannelFields {
            interval: Some("1m"),
            backfill: Some(60),
            ..fields("candles")
        };
        assert_eq!(
            Channel::from_fields(candles),
            Ok(Channel::Candles {
                interval: Interval::M1,
                backfill: 60
            })
        );
        assert_eq!(
            Channel::from_fields(fields("book")),
            Ok(Channel::Book {
                depth: Depth::Top10
            })
        );
        for (bad, why) in [
            (fields("candles"), "needs \"interval\""),
            (
                ChannelFields {
                    interval: Some("2m"),
                    ..fields("candles")
                },
                "unknown interval",
            ),
            (
                ChannelFields {
                    interval: Some("1s"),
                    backfill: Some(1001),
                    ..fields("candles")
                },
                "over 1000",
            ),
            (
                ChannelFields {
                    depth: Some(20),
                    ..fields("book")
                },
                "depth 20",
            ),
            (
                ChannelFields {
                    depth: Some(10),
                    ..fields("ticks")
                },
                "belongs to channel book",
            ),
            (
                ChannelFields {
                    interval: Some("1s"),
                    ..fields("book")
                },
                "belongs to channel candles",
            ),
            (fields("trades"), "unknown channel"),
        ] {
            let e = Channel::from_fields(bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn a_selection_covers_its_channel_and_for_candles_its_interval() {
        let all = Selection::from_fields(Some("candles"), None).unwrap();
        let one = Selection::from_fields(Some("candles"), Some("1s")).unwrap();
        let ticks = Selection::from_fields(None, None).unwrap();
        assert!(all.covers(Stream::Candles(Interval::H1)));
        assert!(one.covers(Stream::Candles(Interval::S1)));
        assert!(!one.covers(Stream::Candles(Interval::M1)));
        assert!(ticks.covers(Stream::Ticks) && !ticks.covers(Stream::Book));
        assert!(Selection::from_fields(Some("book"), Some("1m")).is_err());
    }

    #[test]
    fn paces_are_zero_or_ten_ms_to_a_minute() {
        for ok in [0, 10, 250, 60_000] {
            assert_eq!(check_throttle(ok), Ok(ok as u32));
        }
        for bad in [1, 9, 60_001, u64::MAX] {
            assert!(check_throttle(bad).unwrap_err().contains("out of range"));
        }
    }
}
