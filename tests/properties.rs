//! Properties of the parsers that read untrusted bytes (client commands, publisher
//! frames, recording files, binary frames): no input panics, every input gets a value or an error
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
    Names, ServerMessage,
};
use tickstream::config::Settings;
use tickstream::feed::ingest::answer_frames;
use tickstream::feed::recording::{Reader, RecordingError, Writer};
use tickstream::hub::Hub;
use tickstream::node::Node;
use tickstream::protocol::{binary, parse_command, Command, ResumeFrom};
use tickstream::tick::{Kind, Tick};

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
        prop_assert_eq!(parsed, Command::Subscribe {
            id,
            symbols,
            snapshot: snapshot.unwrap_or(true),
            resume: want,
        });
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
        prop_assert_eq!(out, vec![ServerMessage::Tick(t)]);
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
                (ServerMessage::Snapshot(g), true) | (ServerMessage::Tick(g), false) => g,
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
