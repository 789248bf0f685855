//! A WebSocket client of the book channel for the tests, with its own code: it keeps
//! each message's JSON text and rebuilds books from them, checking `prev_seq` and the
//! documented checksum at every message.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Ws, WAIT};
use tickstream::book::{Level, Levels, Side};
use tickstream::feed::Universe;

/// One side of a client's book: price in ticks → (price as written, size as written).
pub type Ladder = BTreeMap<u64, (String, String)>;

/// A book as a client rebuilds it from the messages, with its own code: prices kept as
/// written, checked to have exactly `decimals` decimals.
#[derive(Debug, Default)]
pub struct Mirror {
    pub epoch: String,
    pub seq: u64,
    pub decimals: usize,
    pub bids: Ladder,
    pub asks: Ladder,
    /// Updates that covered more than one seq: netted, or skipping messages that did
    /// not change this client's window.
    pub jumps: u64,
    pub messages: u64,
}

impl Mirror {
    pub fn new(decimals: usize) -> Mirror {
        Mirror {
            decimals,
            ..Mirror::default()
        }
    }

    /// Applies a `book` or `book_update` (`raw` is its JSON text as received) and
    /// checks its checksum; panics on an update that does not follow the book held.
    pub fn apply(&mut self, v: &Value, raw: &str) {
        let seq = v["seq"].as_u64().unwrap();
        match v["type"].as_str().unwrap() {
            "book" => {
                self.bids.clear();
                self.asks.clear();
                self.epoch = v["epoch"].as_str().unwrap().to_owned();
            }
            "book_update" => {
                let prev = v["prev_seq"].as_u64().unwrap();
                assert_eq!(prev, self.seq, "an update that does not apply: {v}");
                assert_eq!(v["epoch"], self.epoch.as_str());
                if seq > prev + 1 {
                    self.jumps += 1;
                }
            }
            other => panic!("not a book message: {other}"),
        }
        for (side, field) in [(Side::Bid, "bids"), (Side::Ask, "asks")] {
            for (price, size) in levels_text(raw, field) {
                let ticks = self.ticks(&price);
                let ladder = self.side_mut(side);
                if size == "0" {
                    assert!(
                        ladder.remove(&ticks).is_some(),
                        "removes a level not held: {raw}"
                    );
                } else {
                    ladder.insert(ticks, (price, size));
                }
            }
        }
        self.seq = seq;
        self.messages += 1;
        assert_eq!(
            self.checksum(),
            v["checksum"].as_u64().unwrap() as u32,
            "checksum after {raw}"
        );
    }

    pub fn side_mut(&mut self, side: Side) -> &mut Ladder {
        match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        }
    }

    /// The tick count of a price as written, checking its decimals.
    pub fn ticks(&self, price: &str) -> u64 {
        let (int, frac) = price.split_once('.').unwrap_or((price, ""));
        assert_eq!(
            frac.len(),
            self.decimals,
            "{price} has not {} decimals",
            self.decimals
        );
        format!("{int}{frac}").parse().unwrap()
    }

    /// Best first.
    pub fn levels(&self, side: Side) -> Vec<Level> {
        let l = |(t, (_, s)): (&u64, &(String, String))| Level::new(*t, s.parse().unwrap());
        match side {
            Side::Bid => self.bids.iter().rev().map(l).collect(),
            Side::Ask => self.asks.iter().map(l).collect(),
        }
    }

    /// The documented checksum, from the texts as written: zlib's CRC-32 of the top 10
    /// asks then the top 10 bids, price (point removed, leading zeros stripped) then
    /// size, no separator.
    pub fn checksum(&self) -> u32 {
        let mut text = String::new();
        let asks = self.asks.values().take(10);
        for (price, size) in asks.chain(self.bids.values().rev().take(10)) {
            let digits = price.replace('.', "");
            text.push_str(digits.trim_start_matches('0'));
            text.push_str(size);
        }
        crc32fast::hash(text.as_bytes())
    }

    /// Asserts this book is `levels` at `depth` levels a side.
    pub fn assert_window(&self, levels: &Levels, depth: usize, what: &str) {
        for side in Side::BOTH {
            assert_eq!(
                self.levels(side),
                levels.top(side, depth),
                "{what} {side:?}"
            );
        }
    }
}

/// The `[price,size]` pairs of array `field` of one message's JSON text, as written.
pub fn levels_text(raw: &str, field: &str) -> Vec<(String, String)> {
    let key = format!("\"{field}\":[");
    let at = raw.find(&key).expect("the field") + key.len();
    if raw[at..].starts_with(']') {
        return Vec::new();
    }
    let body = &raw[at..at + raw[at..].find("]]").expect("the array's end") + 1];
    body.split(']')
        .filter_map(|pair| {
            let pair = pair.trim_start_matches([',', '[']);
            let (p, s) = pair.split_once(',')?;
            Some((p.to_owned(), s.to_owned()))
        })
        .collect()
}

/// The top-level objects of a frame's JSON array, as text.
pub fn objects(frame: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start, mut in_str, mut esc) = (Vec::new(), 0, 0, false, false);
    for (i, c) in frame.char_indices() {
        match (in_str, esc, c) {
            (true, true, _) => esc = false,
            (true, false, '\\') => esc = true,
            (true, false, '"') => in_str = false,
            (true, ..) => {}
            (false, _, '"') => in_str = true,
            (false, _, '{') => {
                if depth == 0 {
                    start = i;
                }
                depth += 1;
            }
            (false, _, '}') => {
                depth -= 1;
                if depth == 0 {
                    out.push(&frame[start..=i]);
                }
            }
            _ => {}
        }
    }
    out
}

/// A WebSocket client that keeps each message's JSON text.
pub struct Reader {
    pub ws: Ws,
    pub pending: VecDeque<(Value, String)>,
}

impl Reader {
    pub async fn connect(addr: std::net::SocketAddr) -> Reader {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
            .await
            .expect("websocket connects");
        let mut r = Reader {
            ws,
            pending: VecDeque::new(),
        };
        assert_eq!(r.next().await.0["type"], "welcome");
        r
    }

    pub async fn send(&mut self, cmd: Value) {
        self.ws.send(Message::text(cmd.to_string())).await.unwrap();
    }

    pub async fn try_next(&mut self, wait: Duration) -> Option<(Value, String)> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await.ok()?? {
                Ok(Message::Text(t)) => {
                    for o in objects(&t) {
                        self.pending
                            .push_back((serde_json::from_str(o).unwrap(), o.to_owned()));
                    }
                    return self.pending.pop_front();
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn next(&mut self) -> (Value, String) {
        self.try_next(WAIT).await.expect("a message in time")
    }

    /// Feeds every book message into `mirrors` until nothing comes for `quiet`;
    /// returns the other messages.
    pub async fn drain(
        &mut self,
        mirrors: &mut HashMap<String, Mirror>,
        quiet: Duration,
    ) -> Vec<Value> {
        let mut other = Vec::new();
        while let Some((v, raw)) = self.try_next(quiet).await {
            match v["type"].as_str().unwrap() {
                "book" | "book_update" => {
                    let m = mirrors
                        .get_mut(v["symbol"].as_str().unwrap())
                        .expect("a mirror");
                    m.apply(&v, &raw);
                }
                _ => other.push(v),
            }
        }
        other
    }
}

/// The test universe.
pub fn universe() -> Universe {
    let syms = ["AAPL", "MSFT", "EUR/USD", "BTC-USD"].map(String::from);
    Universe::bundled().filter(&syms).unwrap()
}

/// The client mirrors of the test universe's symbols.
pub fn mirrors() -> HashMap<String, Mirror> {
    universe()
        .instruments()
        .iter()
        .map(|i| {
            (
                i.symbol.to_string(),
                Mirror::new(i.price_decimals() as usize),
            )
        })
        .collect()
}

/// Sends `cmd` and expects `subscribed`.
pub async fn subscribed(r: &mut Reader, cmd: Value) -> Value {
    r.send(cmd).await;
    let (m, _) = r.next().await;
    assert_eq!(m["type"], "subscribed", "{m}");
    m
}
