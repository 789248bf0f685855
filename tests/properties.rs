//! Properties of the parsers that read untrusted bytes (client commands, publisher
//! frames, recording files, binary frames, WebSocket frames and their reassembly): no input panics, every input gets a value or an error
//! that says what is wrong, and what the node encodes decodes back to the same ticks.
//! The same parsers are fuzzed by the targets in `fuzz/`.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use tickstream::bus::LocalBus;
use tickstream::client::{
    message::{decode_frame, for_each_record},
    Names, ServerMessage, TickMessage,
};
use tickstream::config::Settings;
use tickstream::feed::ingest::answer_frames;
use tickstream::feed::recording::{Reader, RecordingError, Writer};
use tickstream::hub::Hub;
use tickstream::node::Node;
use tickstream::protocol::channel::{Depth, Interval};
use tickstream::protocol::command::Report;
use tickstream::protocol::{binary, parse_command, Channel, Command, ResumeFrom, Subscribe};
use tickstream::tick::{Kind, Tick};
use tickstream::transport::frames::{
    Fragments, FrameBudget, FrameReader, Message as FrameMessage, ReadError, Reassembler,
};

const SYMBOLS: [&str; 4] = ["AAPL", "BTC-USD", "EUR/USD", "ES:H6"];

fn symbol() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(SYMBOLS.to_vec()).prop_map(str::to_owned),
        "[A-Z0-9][A-Z0-9._:/-]{0,31}",
    ]
}

fn price() -> impl Strategy<Value = f64> {
    prop_oneof![
        1e-9f64..1e9,
        (1u64..10_000_000).prop_map(|c| c as f64 / 100.0)
    ]
}

/// A well-formed tick of one of [`SYMBOLS`].
fn tick() -> impl Strategy<Value = Tick> {
    tick_with_epoch("[a-z0-9]{0,16}")
}

/// A well-formed tick whose epoch matches `epoch` (a regex).
fn tick_with_epoch(epoch: &'static str) -> impl Strategy<Value = Tick> {
    (
        proptest::sample::select(SYMBOLS.to_vec()),
        epoch,
        1u64..u64::MAX,
        any::<u64>(),
        (price(), price(), price()),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(symbol, epoch, seq, ts, (a, b, last), (bs, asz, ls, volume), src_ts)| Tick {
                symbol: symbol.into(),
                epoch: epoch.as_str().into(),
                seq,
                ts,
                bid: a.min(b),
                ask: a.max(b),
                bid_size: bs,
                ask_size: asz,
                last,
                last_size: ls,
                volume,
                src_ts,
            },
        )
}

/// Any tick a binary record can carry: every symbol of the grammar, any epoch up to 255
/// bytes, any doubles (NaN and infinities included), any integers.
fn binary_tick() -> impl Strategy<Value = Tick> {
    (
        symbol(),
        prop_oneof!["[a-z0-9]{0,16}", ".{0,60}"],
        any::<u64>(),
        any::<u64>(),
        (any::<f64>(), any::<f64>(), any::<f64>()),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(symbol, epoch, seq, ts, (bid, ask, last), (bs, asz, ls, volume), src_ts)| Tick {
                symbol: symbol.as_str().into(),
                epoch: epoch.as_str().into(),
                seq,
                ts,
                bid,
                ask,
                bid_size: bs,
                ask_size: asz,
                last,
                last_size: ls,
                volume,
                src_ts,
            },
        )
}

/// Every field of a tick, prices as their bits (so NaN compares as itself).
fn fields(t: &Tick) -> impl PartialEq + std::fmt::Debug {
    (
        (t.symbol.to_string(), t.epoch.to_string(), t.seq, t.ts),
        (t.bid.to_bits(), t.ask.to_bits(), t.last.to_bits()),
        (t.bid_size, t.ask_size, t.last_size, t.volume, t.src_ts),
    )
}

/// Bytes close to a binary frame: well-formed records cut, patched or joined with
/// noise, and plain noise.
fn binary_like() -> impl Strategy<Value = Vec<u8>> {
    let records = || {
        proptest::collection::vec((binary_tick(), any::<bool>()), 1..4).prop_map(|ts| {
            let mut out = Vec::new();
            for (t, snap) in ts {
                let kind = if snap { Kind::Snapshot } else { Kind::Tick };
                binary::write(&t, kind, &mut out).unwrap();
            }
            out
        })
    };
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        (records(), any::<proptest::sample::Index>(), any::<u8>()).prop_map(|(mut r, i, b)| {
            let at = i.index(r.len());
            r[at] = b;
            r
        }),
        (records(), any::<proptest::sample::Index>()).prop_map(|(mut r, i)| {
            r.truncate(i.index(r.len()));
            r
        }),
        (records(), proptest::collection::vec(any::<u8>(), 0..100)).prop_map(|(mut r, noise)| {
            r.extend(noise);
            r
        }),
    ]
}

fn node() -> Arc<Node> {
    static SETTINGS: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();
    // A node starts its background tasks on the current runtime; here they need not run.
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    });
    let _entered = rt.enter();
    let hub = Arc::new(Hub::new(SYMBOLS.iter().map(|&s| s.into()), 16));
    let bus = Arc::new(LocalBus::new(hub.clone()));
    Node::new(
        SETTINGS.get_or_init(Settings::default).clone(),
        hub,
        bus,
        None,
    )
}

/// JSON text close to a command: often valid JSON, sometimes a real command.
fn command_like() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just("subscribe".to_owned()),
            Just("unsubscribe".to_owned()),
            Just("list".to_owned()),
            Just("ping".to_owned()),
            Just("report".to_owned()),
            Just("candles".to_owned()),
            Just("book".to_owned()),
            Just("1m".to_owned()),
            Just("BTC-*".to_owned()),
            symbol(),
            ".*",
        ]
        .prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::hash_map(
                prop_oneof![
                    Just("op".to_owned()),
                    Just("id".to_owned()),
                    Just("symbols".to_owned()),
                    Just("snapshot".to_owned()),
                    Just("resume".to_owned()),
                    Just("channel".to_owned()),
                    Just("interval".to_owned()),
                    Just("depth".to_owned()),
                    Just("backfill".to_owned()),
                    Just("throttle_ms".to_owned()),
                    Just("latency_ms".to_owned()),
                    Just("p50".to_owned()),
                    Just("count".to_owned()),
                    Just("window_ms".to_owned()),
                    Just("seq".to_owned()),
                    Just("epoch".to_owned()),
                    "[a-zA-Z0-9_]{0,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        value.prop_map(|v| serde_json::to_vec(&v).unwrap()),
        proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_command_text_gets_a_command_or_a_clear_error(mut bytes in command_like()) {
        match parse_command(&mut bytes) {
            Ok(_) => {}
            Err(e) => prop_assert!(!e.message.is_empty()),
        }
    }

    #[test]
    fn subscribe_commands_parse_back_to_what_was_sent(
        id in proptest::option::of(any::<u64>()),
        symbols in proptest::collection::vec(symbol(), 0..8),
        snapshot in proptest::option::of(any::<bool>()),
        resume in proptest::collection::hash_map(symbol(), (proptest::option::of("[a-z0-9]{1,8}"), any::<u64>()), 0..4),
    ) {
        let mut cmd = json!({"op": "subscribe", "symbols": symbols});
        if let Some(id) = id {
            cmd["id"] = json!(id);
        }
        if let Some(s) = snapshot {
            cmd["snapshot"] = json!(s);
        }
        if !resume.is_empty() {
            cmd["resume"] = resume
                .iter()
                .map(|(s, (e, q))| (s.clone(), match e {
                    None => json!(q),
                    Some(e) => json!({"epoch": e, "seq": q}),
                }))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        let mut bytes = serde_json::to_vec(&cmd).unwrap();
        let parsed = parse_command(&mut bytes).unwrap();
        let want: HashMap<String, ResumeFrom> = resume
            .into_iter()
            .map(|(s, (epoch, seq))| (s, ResumeFrom { epoch, seq }))
            .collect();
        prop_assert_eq!(parsed, Command::Subscribe(Subscribe {
            id,
            symbols,
            snapshot: snapshot.unwrap_or(true),
            resume: want,
            ..Subscribe::default()
        }));
    }

    #[test]
    fn channels_and_paces_parse_back_or_are_refused_by_their_rule(
        channel in proptest::option::of(prop_oneof![
            Just("ticks"), Just("candles"), Just("book"), Just("trades")
        ]),
        interval in proptest::option::of(prop_oneof![
            Just("1s"), Just("1m"), Just("5m"), Just("1h"), Just("2m")
        ]),
        depth in proptest::option::of(prop_oneof![Just(10u64), Just(50), 0u64..100]),
        backfill in proptest::option::of(0u64..1500),
        throttle in proptest::option::of(prop_oneof![Just(0u64), 0u64..70_000]),
        patterns in proptest::collection::vec(prop_oneof![Just("*"), Just("BTC-*"), Just("EUR/*")], 0..3),
    ) {
        let mut cmd = json!({"op": "subscribe", "id": 1, "symbols": patterns});
        for (k, v) in [("channel", channel.map(Value::from)), ("interval", interval.map(Value::from)),
                       ("depth", depth.map(Value::from)), ("backfill", backfill.map(Value::from)),
                       ("throttle_ms", throttle.map(Value::from))] {
            if let Some(v) = v {
                cmd[k] = v;
            }
        }
        let name = channel.unwrap_or("ticks");
        let want = match name {
            "trades" => None,
            _ if interval.is_some() != (name == "candles") => None,
            _ if backfill.is_some() && name != "candles" => None,
            _ if depth.is_some() && name != "book" => None,
            "candles" if backfill.unwrap_or(0) > 1000 || interval == Some("2m") => None,
            "book" if !matches!(depth.unwrap_or(10), 10 | 50) => None,
            "candles" => Some(Channel::Candles {
                interval: Interval::ALL.into_iter().find(|i| Some(i.as_str()) == interval).unwrap(),
                backfill: backfill.unwrap_or(0) as u16,
            }),
            "book" => Some(Channel::Book {
                depth: if depth == Some(50) { Depth::Top50 } else { Depth::Top10 },
            }),
            _ => Some(Channel::Ticks),
        };
        let pace_ok = throttle.is_none_or(|t| t == 0 || (10..=60_000).contains(&t));
        let mut bytes = serde_json::to_vec(&cmd).unwrap();
        match (parse_command(&mut bytes), want.filter(|_| pace_ok)) {
            (Ok(Command::Subscribe(s)), Some(channel)) => {
                prop_assert_eq!(s.channel, channel);
                prop_assert_eq!(s.throttle_ms, throttle.map(|t| t as u32));
                prop_assert_eq!(s.symbols, patterns);
            }
            (Err(e), None) => {
                prop_assert_eq!(e.id, Some(1));
                prop_assert!(!e.message.is_empty());
            }
            (got, want) => prop_assert!(false, "{cmd}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn reports_parse_back_or_are_refused_by_their_rule(
        p50 in prop_oneof![0.0f64..5000.0, -10.0f64..0.0, Just(4e6)],
        p99 in 0.0f64..5000.0,
        max in 0.0f64..5000.0,
        count in prop_oneof![Just(0u64), 1u64..1_000_000],
        window in prop_oneof![Just(0u64), 1u64..4_000_000],
    ) {
        let cmd = json!({"op": "report", "id": 9, "latency_ms": {"p50": p50, "p99": p99, "max": max},
                         "count": count, "window_ms": window});
        let mut bytes = serde_json::to_vec(&cmd).unwrap();
        let valid = (0.0..=3_600_000.0).contains(&p50) && p50 <= p99 && p99 <= max
            && count >= 1 && (1..=3_600_000).contains(&window);
        match parse_command(&mut bytes) {
            Ok(got) => {
                prop_assert!(valid, "{cmd} accepted");
                prop_assert_eq!(got, Command::Report(Report {
                    id: Some(9), p50_ms: p50, p99_ms: p99, max_ms: max, count, window_ms: window,
                }));
            }
            Err(e) => {
                prop_assert!(!valid, "{cmd} refused: {}", e.message);
                prop_assert_eq!(e.id, Some(9));
            }
        }
    }

    #[test]
    fn ticks_encoded_by_the_node_decode_to_the_same_tick(t in tick()) {
        let json = t.to_json(Kind::Tick);
        let back: Tick = serde_json::from_slice(&json).unwrap();
        prop_assert_eq!(&back, &t);
        // And through the Rust client's decoder, as a frame of the wire.
        let frame = [b"[".as_slice(), &json, b"]"].concat();
        let mut out = Vec::new();
        decode_frame(&frame, &mut Names::default(), &mut out).unwrap();
        prop_assert_eq!(out, vec![ServerMessage::Tick(t.into())]);
    }

    #[test]
    fn binary_records_decode_to_every_field_sent(
        ticks in proptest::collection::vec((binary_tick(), any::<bool>()), 1..8),
    ) {
        let mut frame = Vec::new();
        for (t, snap) in &ticks {
            let kind = if *snap { Kind::Snapshot } else { Kind::Tick };
            let rec = binary::encode(t, kind).unwrap();
            prop_assert!(binary::is_record(&rec));
            prop_assert_eq!(binary::peek(&rec), Some((kind, t.seq, t.ts)));
            frame.extend(rec);
        }
        let got = binary::decode(&frame).unwrap();
        prop_assert_eq!(got.len(), ticks.len());
        for (r, (t, snap)) in got.iter().zip(&ticks) {
            prop_assert_eq!(r.kind, if *snap { Kind::Snapshot } else { Kind::Tick });
            prop_assert_eq!(fields(&r.tick()), fields(t));
        }
        // And through the Rust client, as tick and snapshot messages.
        let mut msgs = Vec::new();
        let n = for_each_record(&frame, &mut Names::default(), |m| msgs.push(m)).unwrap();
        prop_assert_eq!(n, ticks.len());
        for (m, (t, snap)) in msgs.iter().zip(&ticks) {
            let got = match (m, snap) {
                (ServerMessage::Snapshot(g), true) | (ServerMessage::Tick(TickMessage { tick: g, .. }), false) => g,
                _ => return Err(TestCaseError::fail(format!("{m:?} for snapshot={snap}"))),
            };
            prop_assert_eq!(fields(got), fields(t));
        }
    }

    #[test]
    fn any_binary_frame_gets_records_or_a_clear_error(bytes in binary_like()) {
        let whole = binary::decode(&bytes);
        let each: Vec<_> = binary::records(&bytes).collect();
        match &whole {
            Ok(recs) => {
                prop_assert!(!bytes.is_empty());
                prop_assert_eq!(recs.len(), each.len());
                for r in recs {
                    prop_assert!(tickstream::tick::valid_symbol(r.symbol));
                    // What decoded encodes again to a record of the same fields.
                    let again = binary::encode(&r.tick(), r.kind).unwrap();
                    let back = binary::decode(&again).unwrap();
                    prop_assert_eq!(back[0].kind, r.kind);
                    prop_assert_eq!(fields(&back[0].tick()), fields(&r.tick()));
                }
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                // The iterator yields the good records before the bad one, then stops.
                if !bytes.is_empty() {
                    prop_assert!(each.last().unwrap().is_err());
                    prop_assert!(each[..each.len() - 1].iter().all(Result::is_ok));
                }
            }
        }
        let client = for_each_record(&bytes, &mut Names::default(), |_| {});
        prop_assert_eq!(client.is_ok(), whole.is_ok());
    }

    #[test]
    fn any_publisher_frames_get_one_counted_reply_each(
        frames in proptest::collection::vec(command_like(), 1..4),
    ) {
        let node = node();
        let replies = answer_frames(&node.hub, &*node.bus, &node.publish, frames.iter().map(Vec::as_slice));
        prop_assert_eq!(replies.len(), frames.len());
        for reply in replies {
            let msgs: Vec<Value> = serde_json::from_slice(&reply).unwrap();
            let last = msgs.last().unwrap();
            prop_assert_eq!(&last["type"], "published");
            for m in &msgs[..msgs.len() - 1] {
                prop_assert_eq!(&m["type"], "error");
                prop_assert!(!m["message"].as_str().unwrap().is_empty());
            }
        }
    }

    #[test]
    fn published_ticks_reach_the_hub_unchanged(
        // With an epoch each: a tick without one gets the connection's.
        ticks in proptest::collection::vec(tick_with_epoch("[a-z0-9]{1,16}"), 1..6),
    ) {
        let node = node();
        let frame = serde_json::to_vec(&ticks).unwrap();
        let reply: Vec<Value> = serde_json::from_slice(&answer_frames(&node.hub, &*node.bus, &node.publish, [frame.as_slice()])[0]).unwrap();
        let last = reply.last().unwrap();
        let accepted = last["accepted"].as_u64().unwrap();
        let refused = last["refused"].as_u64().unwrap();
        prop_assert_eq!(accepted + refused, ticks.len() as u64);
        // Every symbol's last accepted tick is what the hub holds (an earlier seq in
        // the same epoch is refused, so the hub never goes back).
        for sym in SYMBOLS {
            if let Some(e) = node.hub.latest(sym) {
                prop_assert!(ticks.contains(&e.tick), "{:?} was never sent", e.tick);
            }
        }
        if ticks.len() == 1 {
            prop_assert_eq!(accepted, 1);
            prop_assert_eq!(&node.hub.latest(&ticks[0].symbol).unwrap().tick, &ticks[0]);
        }
    }

    #[test]
    fn any_recording_bytes_give_ticks_then_an_end_or_a_numbered_error(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512),
            proptest::collection::vec(command_like(), 0..6).prop_map(|ls| ls.join(&b'\n')),
            proptest::collection::vec(tick(), 0..4).prop_map(|ts| {
                let mut out = Vec::new();
                for t in ts {
                    out.extend(t.to_json(Kind::Tick));
                    out.push(b'\n');
                }
                out.truncate(out.len().saturating_sub(7));
                out
            }),
        ],
    ) {
        let mut reader = Reader::from_lines(Path::new("p.ndjson"), Box::new(Cursor::new(bytes)));
        let mut last = 0;
        loop {
            match reader.next_tick() {
                Ok(None) => break,
                Ok(Some((line, _))) => {
                    prop_assert!(line > last);
                    last = line;
                }
                Err(RecordingError::Line { line, message, .. }) => {
                    prop_assert!(line > last && !message.is_empty());
                    break;
                }
                Err(e) => prop_assert!(false, "I/O error from memory: {e}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn recordings_read_back_the_ticks_written(
        ticks in proptest::collection::vec(tick(), 0..40),
        zstd in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(if zstd { "p.ndjson.zst" } else { "p.ndjson" });
        let mut w = Writer::create(&path, "properties").unwrap();
        for t in &ticks {
            w.write_tick(t).unwrap();
        }
        w.finish().unwrap();
        let back: Vec<Tick> = Reader::open(&path).unwrap().map(|r| r.unwrap().1).collect();
        prop_assert_eq!(back, ticks);
    }
}

/// One message as a client may send it: text or binary, cut into fragments of the
/// given sizes (0: an empty fragment), with a Ping after the fragments marked.
#[derive(Clone, Debug)]
struct Fragmented {
    text: bool,
    body: Vec<u8>,
    sizes: Vec<usize>,
    pings: Vec<bool>,
}

impl Fragmented {
    /// The fragments' payloads, in order (at least one).
    fn parts(&self) -> Vec<&[u8]> {
        let mut parts = Vec::new();
        let mut rest = &self.body[..];
        for &n in &self.sizes {
            let (part, tail) = rest.split_at(n.min(rest.len()));
            parts.push(part);
            rest = tail;
        }
        if !rest.is_empty() || parts.is_empty() {
            parts.push(rest);
        }
        parts
    }
}

fn fragmented() -> impl Strategy<Value = Fragmented> {
    let body = prop_oneof![
        "\\PC{0,80}".prop_map(|s| (true, s.into_bytes())),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|b| (false, b)),
    ];
    (
        body,
        proptest::collection::vec(prop_oneof![Just(0usize), 1usize..4, 1usize..64], 0..40),
        proptest::collection::vec(any::<bool>(), 0..40),
    )
        .prop_map(|((text, body), sizes, pings)| Fragmented {
            text,
            body,
            sizes,
            pings,
        })
}

/// A client frame, masked with `key`.
fn client_frame(fin: bool, op: u8, key: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | op];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// The wire bytes of `msgs`.
fn wire(msgs: &[Fragmented], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        let parts = m.parts();
        for (i, part) in parts.iter().enumerate() {
            let op = match (i, m.text) {
                (0, true) => 0x1,
                (0, false) => 0x2,
                _ => 0x0,
            };
            out.extend(client_frame(i == parts.len() - 1, op, key, part));
            if m.pings.get(i).copied().unwrap_or(false) {
                out.extend(client_frame(true, 0x9, key, b"p"));
            }
        }
    }
    out
}

/// What the node must make of `msgs` under `max` and `limits`: the messages up to the
/// first that breaks a limit, and that breach's close code.
fn expected(msgs: &[Fragmented], max: usize, limits: Fragments) -> (Vec<Fragmented>, Option<u16>) {
    let mut ok = Vec::new();
    for m in msgs {
        let parts = m.parts();
        let (mut len, mut empties) = (0, 0);
        for (i, part) in parts.iter().enumerate() {
            let whole = parts.len() == 1;
            if part.len() > max {
                return (ok, Some(1009));
            }
            if !whole && i + 1 > limits.most {
                return (ok, Some(1008));
            }
            empties += usize::from(part.is_empty());
            if !whole && empties > limits.empty {
                return (ok, Some(1008));
            }
            len += part.len();
            if len > max {
                return (ok, Some(1009));
            }
        }
        ok.push(m.clone());
    }
    (ok, None)
}

/// Hands out its bytes in pieces of the given sizes (cycled), then EOF.
#[derive(Clone)]
struct Pieces {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl tokio::io::AsyncRead for Pieces {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let size = self.sizes[self.turn % self.sizes.len()];
        self.turn += 1;
        let n = size.min(self.data.len() - self.at).min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Messages as read: whether text, and the payload.
type Messages = Vec<(bool, Vec<u8>)>;

/// What the reader and reassembler make of `io`: the messages and the close code that
/// ended it, if any. With `runs`, held middle fragments are taken in runs, as the
/// endpoints read them.
fn reassemble(
    io: &mut Pieces,
    max: usize,
    limits: Fragments,
    runs: bool,
) -> (Messages, Option<u16>) {
    use std::future::Future;
    let mut reader = FrameReader::new(max);
    let mut whole = Reassembler::new(max, limits);
    let mut budget = FrameBudget::new(u32::MAX, u32::MAX, 1);
    let mut msgs = Vec::new();
    loop {
        if runs {
            if let Err((code, _)) = reader.take_fragments(&mut whole, &mut budget) {
                return (msgs, Some(code.code()));
            }
        }
        // The pieces never wait: one poll reads the next frame or ends.
        let read = std::pin::pin!(reader.read(&mut *io));
        let waker = std::task::Waker::noop();
        let std::task::Poll::Ready(got) = read.poll(&mut std::task::Context::from_waker(waker))
        else {
            panic!("the reader waited on bytes that never wait");
        };
        let frame = match got {
            Ok(f) => f,
            Err(ReadError::Gone) => return (msgs, None),
            Err(ReadError::Refused((code, _))) => return (msgs, Some(code.code())),
        };
        match whole.push(frame) {
            Ok(None | Some(FrameMessage::Ping(_) | FrameMessage::Pong | FrameMessage::Close)) => {}
            Ok(Some(FrameMessage::Text(p))) => {
                assert!(std::str::from_utf8(&p).is_ok(), "text is UTF-8");
                msgs.push((true, p.to_vec()));
            }
            Ok(Some(FrameMessage::Binary(p))) => msgs.push((false, p.to_vec())),
            Err((code, _)) => return (msgs, Some(code.code())),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Messages in any fragments, read in any pieces, frame by frame or in runs, come
    /// out whole and in order up to the first that breaks a limit, which closes with its
    /// code.
    #[test]
    fn fragments_reassemble_to_the_messages_sent_within_the_limits(
        msgs in proptest::collection::vec(fragmented(), 1..6),
        key in any::<[u8; 4]>(),
        pieces in proptest::collection::vec(1usize..300, 1..8),
        max in 16usize..256,
        most in 1usize..48,
        empty in 0usize..4,
    ) {
        let limits = Fragments { most, empty };
        let io = Pieces { data: wire(&msgs, key), at: 0, sizes: pieces, turn: 0 };
        let (want, want_code) = expected(&msgs, max, limits);
        let want: Messages = want.into_iter().map(|m| (m.text, m.body)).collect();
        for runs in [false, true] {
            let (got, code) = reassemble(&mut io.clone(), max, limits, runs);
            prop_assert_eq!(&got, &want, "runs: {}", runs);
            prop_assert_eq!(code, want_code, "runs: {}", runs);
        }
    }

    /// Any bytes: every message within the limits and every text UTF-8; a refusal only
    /// with 1002, 1007, 1008 or 1009; the same whether middle fragments are taken in
    /// runs or frame by frame.
    #[test]
    fn any_stream_gives_messages_within_the_limits_or_an_rfc_close(
        msgs in proptest::collection::vec(fragmented(), 1..4),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        pieces in proptest::collection::vec(1usize..64, 1..4),
        most in 1usize..16,
    ) {
        let mut data = wire(&msgs, [1, 2, 3, 4]);
        for (at, x) in flips {
            let n = data.len();
            data[at % n] ^= x;
        }
        let limits = Fragments { most, empty: 2 };
        let io = Pieces { data, at: 0, sizes: pieces, turn: 0 };
        let (got, code) = reassemble(&mut io.clone(), 128, limits, false);
        prop_assert!(got.iter().all(|(_, p)| p.len() <= 128));
        prop_assert!(code.is_none_or(|c| matches!(c, 1002 | 1007 | 1008 | 1009)), "{:?}", code);
        let in_runs = reassemble(&mut io.clone(), 128, limits, true);
        prop_assert_eq!(in_runs, (got, code));
    }
}

/// A well-formed book message of AAPL (2 decimals): a whole book, or an update.
fn book_msg() -> impl Strategy<Value = tickstream::book::BookMsg> {
    use tickstream::book::{BookMsg, Level};
    let side = |lo: u64, hi: u64, zero: bool| {
        proptest::collection::btree_map(lo..hi, if zero { 0u64..1000 } else { 1u64..1000 }, 0..12)
    };
    (
        any::<bool>(),
        1u64..1000,
        any::<u64>(),
        side(1, 5000, true),
        side(5001, 10_000, true),
    )
        .prop_map(|(update, seq, ts, bids, asks)| {
            let fix = |s: u64| if update { s } else { s.max(1) };
            BookMsg {
                symbol: "AAPL".into(),
                epoch: "e1".into(),
                seq: seq + 1,
                prev_seq: update.then_some(seq),
                ts,
                bids: bids
                    .into_iter()
                    .rev()
                    .map(|(p, s)| Level::new(p, fix(s)))
                    .collect(),
                asks: asks
                    .into_iter()
                    .map(|(p, s)| Level::new(p, fix(s)))
                    .collect(),
                checksum: Some(0),
            }
        })
}

/// Bytes close to a book message: its JSON or its binary record, cut, patched or
/// joined with noise, and plain noise.
fn book_like() -> impl Strategy<Value = Vec<u8>> {
    use tickstream::book::json::{write, Head};
    use tickstream::book::Spec;
    use tickstream::protocol::binary::book::{self as rec, BookHead};
    let encoded = || {
        (book_msg(), any::<bool>()).prop_map(|(m, bin)| {
            let mut out = Vec::new();
            let spec = Spec::new(2);
            if bin {
                let head = BookHead {
                    symbol: &m.symbol,
                    epoch: &m.epoch,
                    spec,
                    seq: m.seq,
                    prev_seq: m.prev_seq,
                    ts: m.ts,
                    checksum: 7,
                };
                rec::write(&head, &m.bids, &m.asks, &mut out).unwrap();
            } else {
                let head = Head {
                    symbol: &m.symbol,
                    epoch: &m.epoch,
                    seq: m.seq,
                    ts: m.ts,
                    spec,
                };
                write(&mut out, &head, m.prev_seq, &m.bids, &m.asks, 7);
            }
            out
        })
    };
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        encoded(),
        (encoded(), any::<proptest::sample::Index>(), any::<u8>()).prop_map(|(mut r, i, b)| {
            let at = i.index(r.len());
            r[at] = b;
            r
        }),
        (encoded(), any::<proptest::sample::Index>())
            .prop_map(|(r, i)| r[..i.index(r.len() + 1)].to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The twin of the `book_decoder` fuzz target.
    #[test]
    fn any_book_bytes_get_messages_or_a_clear_error(bytes in book_like()) {
        use tickstream::book::{json, Book, Levels, Spec};
        use tickstream::protocol::binary::AnyRecord;
        match binary::decode_any(&bytes) {
            Ok(recs) => for r in recs {
                if let AnyRecord::Book(b) = r {
                    prop_assert!(tickstream::tick::valid_symbol(b.symbol));
                    let m = b.to_msg();
                    prop_assert_eq!((m.seq, m.prev_seq, m.bids.len()), (b.seq, b.prev_seq, b.bids.len()));
                }
            },
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        match json::parse(&bytes, |_| Some(Spec::new(2)), 1000) {
            Ok(msg) => {
                prop_assert!(msg.check(1000).is_ok());
                let mut book = Book { epoch: msg.epoch.clone(), seq: msg.prev_seq.unwrap_or(0), ts: 0, levels: Levels::default() };
                let before = book.clone();
                if book.apply(&msg, 1000).is_err() {
                    prop_assert_eq!(book, before);
                }
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    /// What the node writes (JSON and binary) reads back to the same message.
    #[test]
    fn book_messages_written_read_back_the_same(m in book_msg()) {
        use tickstream::book::json::{parse, write, Head};
        use tickstream::book::Spec;
        use tickstream::protocol::binary::{book::{self as rec, BookHead}, decode_any, AnyRecord};
        let spec = Spec::new(2);
        let mut text = Vec::new();
        let head = Head { symbol: &m.symbol, epoch: &m.epoch, seq: m.seq, ts: m.ts, spec };
        write(&mut text, &head, m.prev_seq, &m.bids, &m.asks, 0);
        prop_assert_eq!(&parse(&text, |_| Some(spec), 1000).unwrap(), &m);
        let mut bin = Vec::new();
        let head = BookHead { symbol: &m.symbol, epoch: &m.epoch, spec, seq: m.seq, prev_seq: m.prev_seq, ts: m.ts, checksum: 0 };
        rec::write(&head, &m.bids, &m.asks, &mut bin).unwrap();
        let AnyRecord::Book(b) = decode_any(&bin).unwrap().remove(0) else { panic!() };
        prop_assert_eq!(&b.to_msg(), &m);
    }
}
