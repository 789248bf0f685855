//! Order books end to end on one node, over real sockets: a client that rebuilds each
//! book from its `book` and `book_update`s (checking `prev_seq` and the checksum at
//! every message, with its own code) ends with the feed's book exactly; depth windows;
//! resume; a slow consumer and a paced one get updates that net out what they missed;
//! a publisher's bad books are refused with nothing else affected; SSE.

#[path = "common/book.rs"]
mod book_client;
mod common;

use std::collections::HashMap;
use std::time::Duration;

use book_client::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use tickstream::book::{BookMsg, Level, Side};
use tickstream::config::Settings;
use tickstream::feed::Generator;
use tickstream::server::Running;

/// Publishes `n` ticks of `g` (and their book messages) on the node's bus in batches
/// of `batch`, `pause` apart.
async fn feed(run: &Running, g: &mut Generator, n: u64, batch: u64, pause: Duration) {
    let mut done = 0;
    while done < n {
        let ticks = g.batch(batch.min(n - done));
        done += ticks.len() as u64;
        run.node.bus.publish_books(g.take_books()).unwrap();
        run.node.bus.publish_batch(ticks).unwrap();
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_rebuild_the_feeds_books_exactly_at_depth_10_and_50() {
    let run = start(settings()).await;
    let mut g = Generator::new(&universe(), 3, "e1".into()).with_books();
    let symbols: Vec<String> = mirrors().keys().cloned().collect();
    let mut readers = Vec::new();
    for depth in [10, 50] {
        let mut r = Reader::connect(run.addr).await;
        let m = subscribed(
            &mut r,
            json!({"op":"subscribe","channel":"book","depth":depth,"symbols":symbols}),
        )
        .await;
        assert_eq!(m["channel"], "book");
        readers.push((depth, r, mirrors()));
    }
    feed(&run, &mut g, 4_000, 40, Duration::from_millis(2)).await;
    for (depth, r, mirrors) in &mut readers {
        let other = r.drain(mirrors, Duration::from_millis(400)).await;
        assert!(other.is_empty(), "{other:?}");
        for (symbol, m) in mirrors.iter() {
            let (seq, levels) = g.book(symbol).unwrap();
            m.assert_window(levels, *depth, &format!("{symbol} at depth {depth}"));
            let node = run.node.hub.books().current(symbol).unwrap();
            assert_eq!(
                (node.seq, &node.levels),
                (seq, levels),
                "the node's book is the feed's"
            );
            assert!(
                m.seq <= seq && m.messages > 1,
                "{symbol}: {} messages",
                m.messages
            );
            assert_eq!(m.checksum(), levels.checksum());
        }
    }
    run.shutdown().await;
}

fn book_msg(seq: u64, prev: Option<u64>, bids: &[(u64, u64)], asks: &[(u64, u64)]) -> BookMsg {
    let lv = |p: &[(u64, u64)]| p.iter().map(|&(p, s)| Level::new(p, s)).collect();
    BookMsg {
        symbol: "AAPL".into(),
        epoch: "e1".into(),
        seq,
        prev_seq: prev,
        ts: seq,
        bids: lv(bids),
        asks: lv(asks),
        checksum: None,
    }
}

#[tokio::test]
async fn a_level_entering_a_window_comes_with_its_size_and_one_leaving_as_size_0() {
    let run = start(settings()).await;
    // Bids 100.00 down to 99.40 in 5-cent steps (13 levels), one ask.
    let bids: Vec<(u64, u64)> = (0..13).map(|i| (10_000 - 5 * i, 100 * (i + 1))).collect();
    run.node
        .bus
        .publish_books(vec![book_msg(1, None, &bids, &[(10_010, 700)])])
        .unwrap();
    let mut r10 = Reader::connect(run.addr).await;
    subscribed(
        &mut r10,
        json!({"op":"subscribe","channel":"book","symbols":["AAPL"]}),
    )
    .await;
    let mut r50 = Reader::connect(run.addr).await;
    subscribed(
        &mut r50,
        json!({"op":"subscribe","channel":"book","depth":50,"symbols":["AAPL"]}),
    )
    .await;
    let (b10, raw) = r10.next().await;
    assert_eq!(
        (b10["type"].as_str(), b10["seq"].as_u64()),
        (Some("book"), Some(1))
    );
    assert_eq!(levels_text(&raw, "bids").len(), 10);
    assert_eq!(
        levels_text(&raw, "bids")[9],
        ("99.55".into(), "1000".into())
    );
    assert_eq!(r50.next().await.0["bids"].as_array().unwrap().len(), 13);
    // The best bid leaves: level 11 (99.50) enters the top 10.
    run.node
        .bus
        .publish_books(vec![book_msg(2, Some(1), &[(10_000, 0)], &[])])
        .unwrap();
    let (u10, raw10) = r10.next().await;
    assert_eq!(
        (u10["seq"].as_u64(), u10["prev_seq"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        levels_text(&raw10, "bids"),
        [
            ("100.00".into(), "0".into()),
            ("99.50".into(), "1100".into())
        ]
    );
    let (_, raw50) = r50.next().await;
    assert_eq!(
        levels_text(&raw50, "bids"),
        [("100.00".to_owned(), "0".to_owned())]
    );
    // A better bid enters: the 10th level (99.50 now) leaves the depth-10 window.
    run.node
        .bus
        .publish_books(vec![book_msg(3, Some(2), &[(10_005, 50)], &[])])
        .unwrap();
    let (_, raw10) = r10.next().await;
    assert_eq!(
        levels_text(&raw10, "bids"),
        [("100.05".into(), "50".into()), ("99.50".into(), "0".into())]
    );
    let (_, raw50) = r50.next().await;
    assert_eq!(
        levels_text(&raw50, "bids"),
        [("100.05".to_owned(), "50".to_owned())]
    );
    // A change deep in the book (level 12) reaches depth 50 only.
    run.node
        .bus
        .publish_books(vec![book_msg(4, Some(3), &[(9_945, 5)], &[])])
        .unwrap();
    let (u50, _) = r50.next().await;
    assert_eq!(
        (u50["seq"].as_u64(), u50["prev_seq"].as_u64()),
        (Some(4), Some(3))
    );
    assert!(
        r10.try_next(Duration::from_millis(200)).await.is_none(),
        "nothing at depth 10"
    );
    // The next change at depth 10 names the book it holds, seq 3.
    run.node
        .bus
        .publish_books(vec![book_msg(5, Some(4), &[(10_005, 60)], &[])])
        .unwrap();
    let (u10, _) = r10.next().await;
    assert_eq!(
        (u10["seq"].as_u64(), u10["prev_seq"].as_u64()),
        (Some(5), Some(3))
    );
    run.shutdown().await;
}

/// An update of AAPL's best bid (seq `seq`): its size becomes `seq`.
fn touch(seq: u64) -> BookMsg {
    book_msg(seq, Some(seq - 1), &[(10_000, seq)], &[])
}

#[tokio::test]
async fn resume_nets_what_was_missed_or_answers_gap_and_book() {
    let run = start(Settings {
        book_history: 8,
        ..settings()
    })
    .await;
    let bus = run.node.bus.clone();
    bus.publish_books(vec![book_msg(
        1,
        None,
        &[(10_000, 1), (9_990, 5)],
        &[(10_010, 7)],
    )])
    .unwrap();
    let mut m = Mirror::new(2);
    let mut r = Reader::connect(run.addr).await;
    subscribed(
        &mut r,
        json!({"op":"subscribe","channel":"book","symbols":["AAPL"]}),
    )
    .await;
    let (v, raw) = r.next().await;
    m.apply(&v, &raw);
    bus.publish_books((2..=4).map(touch).collect()).unwrap();
    for _ in 2..=4 {
        let (v, raw) = r.next().await;
        m.apply(&v, &raw);
    }
    drop(r);
    // Missed 5..=9, within the history of 8: one update from 4 to 9.
    bus.publish_books((5..=9).map(touch).collect()).unwrap();
    let mut r = Reader::connect(run.addr).await;
    let resume = json!({"AAPL": {"epoch": "e1", "seq": 4}});
    subscribed(
        &mut r,
        json!({"op":"subscribe","channel":"book","symbols":["AAPL"],"resume":resume}),
    )
    .await;
    let (v, raw) = r.next().await;
    assert_eq!(
        (
            v["type"].as_str(),
            v["prev_seq"].as_u64(),
            v["seq"].as_u64()
        ),
        (Some("book_update"), Some(4), Some(9))
    );
    m.apply(&v, &raw);
    let node = run.node.hub.books().current("AAPL").unwrap();
    m.assert_window(&node.levels, 10, "after the netted update");
    // Up to date: nothing is sent; the next update follows.
    let at = json!({"AAPL": {"epoch": "e1", "seq": 9}});
    let mut r2 = Reader::connect(run.addr).await;
    subscribed(
        &mut r2,
        json!({"op":"subscribe","channel":"book","symbols":["AAPL"],"resume":at}),
    )
    .await;
    bus.publish_books(vec![touch(10)]).unwrap();
    let (v, _) = r2.next().await;
    assert_eq!(
        (v["prev_seq"].as_u64(), v["seq"].as_u64()),
        (Some(9), Some(10))
    );
    // Older than the history: gap expired, then the book.
    bus.publish_books((11..=30).map(touch).collect()).unwrap();
    let old = json!({"AAPL": {"epoch": "e1", "seq": 9}});
    let mut r3 = Reader::connect(run.addr).await;
    subscribed(
        &mut r3,
        json!({"op":"subscribe","channel":"book","symbols":["AAPL"],"resume":old}),
    )
    .await;
    let (gap, _) = r3.next().await;
    assert_eq!(
        (
            gap["type"].as_str(),
            gap["channel"].as_str(),
            gap["reason"].as_str()
        ),
        (Some("gap"), Some("book"), Some("expired"))
    );
    assert_eq!(
        (gap["from"].as_u64(), gap["to"].as_u64()),
        (Some(10), Some(29))
    );
    assert_eq!(r3.next().await.0["type"], "book");
    // Another epoch: gap reset, then the book.
    let other = json!({"AAPL": {"epoch": "e0", "seq": 3}});
    let mut r4 = Reader::connect(run.addr).await;
    subscribed(
        &mut r4,
        json!({"op":"subscribe","channel":"book","symbols":["AAPL"],"resume":other}),
    )
    .await;
    let (gap, _) = r4.next().await;
    assert_eq!(
        (gap["reason"].as_str(), gap["from"].as_u64()),
        (Some("reset"), Some(4))
    );
    let (book, _) = r4.next().await;
    assert_eq!(
        (book["type"].as_str(), book["seq"].as_u64()),
        (Some("book"), Some(30))
    );
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_gets_updates_that_net_out_what_it_missed() {
    let run = start(Settings {
        queue: 16,
        send_buffer: Some(16 * 1024),
        ..settings()
    })
    .await;
    let mut g = Generator::new(&universe(), 5, "e1".into()).with_books();
    run.node.bus.publish_books(g.take_books()).unwrap();
    let symbols: Vec<String> = mirrors().keys().cloned().collect();
    let mut slow = Reader::connect(run.addr).await;
    subscribed(
        &mut slow,
        json!({"op":"subscribe","channel":"book","depth":50,"symbols":symbols}),
    )
    .await;
    // It reads nothing while 6,000 ticks' updates are published.
    feed(&run, &mut g, 6_000, 200, Duration::from_millis(1)).await;
    let mut m = mirrors();
    let other = slow.drain(&mut m, Duration::from_millis(500)).await;
    let received: u64 = m.values().map(|m| m.messages).sum();
    assert!(
        received < 3_000,
        "conflated: {received} messages for 6,000 updates"
    );
    let jumps: u64 = m.values().map(|m| m.jumps).sum();
    assert!(jumps > 0, "some updates net out several");
    // A gap comes only with a fresh book, never before an update.
    assert!(
        other
            .iter()
            .all(|v| v["type"] == "gap" && v["reason"] == "slow_consumer"),
        "{other:?}"
    );
    for (symbol, mirror) in &m {
        let (_, levels) = g.book(symbol).unwrap();
        mirror.assert_window(levels, 50, symbol);
    }
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_subscription_gets_one_netted_update_per_interval() {
    let run = start(settings()).await;
    let mut g = Generator::new(&universe(), 9, "e1".into()).with_books();
    run.node.bus.publish_books(g.take_books()).unwrap();
    let mut r = Reader::connect(run.addr).await;
    let m = subscribed(
        &mut r,
        json!({"op":"subscribe","channel":"book","symbols":["BTC-USD"],"throttle_ms":100}),
    )
    .await;
    assert_eq!(m["throttle_ms"], 100);
    let mut mirrors = mirrors();
    let (v, raw) = r.next().await;
    mirrors.get_mut("BTC-USD").unwrap().apply(&v, &raw);
    let t0 = std::time::Instant::now();
    // About 1 s of a fast feed: BTC-USD changes hundreds of times.
    feed(&run, &mut g, 20_000, 200, Duration::from_millis(10)).await;
    let elapsed = t0.elapsed();
    r.drain(&mut mirrors, Duration::from_millis(400)).await;
    let btc = &mirrors["BTC-USD"];
    let (seq, levels) = g.book("BTC-USD").unwrap();
    let intervals = elapsed.as_millis() as u64 / 100 + 3;
    assert!(
        btc.messages - 1 <= intervals,
        "{} updates in {elapsed:?}",
        btc.messages - 1
    );
    assert!(
        seq - 1 > 5 * (btc.messages - 1),
        "{seq} changes netted into {} updates",
        btc.messages - 1
    );
    btc.assert_window(levels, 10, "paced");
    run.shutdown().await;
}

/// Sends `frame` on a publisher connection and returns the reply messages.
async fn publish(c: &mut Client, frame: Value) -> Vec<Value> {
    c.send(&frame.to_string()).await;
    let mut out = Vec::new();
    loop {
        let m = c.next().await;
        let done = m["type"] == "published";
        out.push(m);
        if done {
            return out;
        }
    }
}

#[tokio::test]
async fn bad_books_from_a_publisher_are_refused_and_nothing_else_is_affected() {
    let run = start(Settings {
        book_max_levels: 60,
        ..settings()
    })
    .await;
    let mut watcher = Reader::connect(run.addr).await;
    subscribed(
        &mut watcher,
        json!({"op":"subscribe","channel":"book","symbols":["AAPL","MSFT"]}),
    )
    .await;
    let mut p = Client::connect_path(run.addr, "/v1/publish").await;
    assert_eq!(p.next().await["role"], "publisher");
    let book = |sym: &str, bids: Value, asks: Value| json!({"type":"book","symbol":sym,"epoch":"p1","seq":1,"ts":1,"bids":bids,"asks":asks});
    let many: Vec<Value> = (0..61).map(|i| json!([f64::from(100 - i), 1])).collect();
    let frame = json!([
        book("AAPL", json!([[189.10, 300], [189.09, 500]]), json!([[189.12, 200]])),
        book("MSFT", json!([[410.00, 1]]), json!([[409.99, 1]])),
        book("MSFT", json!([[409.99, 1], [410.00, 1]]), json!([])),
        book("MSFT", json!([[410.00, 1], [410.00, 2]]), json!([])),
        book("MSFT", json!([[410.001, 1]]), json!([])),
        book("MSFT", Value::Array(many), json!([])),
        {"type":"book_update","symbol":"AAPL","epoch":"p1","seq":3,"prev_seq":2,"ts":2,"bids":[],"asks":[]},
        {"type":"book_update","symbol":"AAPL","epoch":"p1","seq":2,"prev_seq":1,"ts":2,"bids":[[189.08,0]],"asks":[]},
        {"type":"book_update","symbol":"AAPL","epoch":"p1","seq":2,"prev_seq":1,"ts":2,"bids":[[189.10,0]],"asks":[],"checksum":1},
        {"type":"book_update","symbol":"AAPL","epoch":"p1","seq":2,"prev_seq":1,"ts":2,"bids":[[189.11,100]],"asks":[]},
        tick("AAPL", "p1", 1),
    ]);
    let replies = publish(&mut p, frame).await;
    let errors: Vec<(u64, &str, &str)> = replies
        .iter()
        .filter(|m| m["type"] == "error")
        .map(|m| {
            (
                m["index"].as_u64().unwrap(),
                m["code"].as_str().unwrap(),
                m["message"].as_str().unwrap(),
            )
        })
        .collect();
    let whys = [
        "crossed",
        "out of order",
        "repeated",
        "tick grid",
        "more than the 60",
        "does not follow",
        "does not hold",
        "checksum",
    ];
    assert_eq!(errors.len(), whys.len(), "{replies:?}");
    for ((index, code, message), (want, why)) in
        errors.iter().zip([1, 2, 3, 4, 5, 6, 7, 8].iter().zip(whys))
    {
        assert_eq!((index, *code), (want, "bad_book"), "{message}");
        assert!(message.contains(why), "{message}");
    }
    let ack = replies.last().unwrap();
    assert_eq!(
        (ack["accepted"].as_u64(), ack["refused"].as_u64()),
        (Some(3), Some(8)),
        "{ack}"
    );
    // The good book and its update reached the node and its subscriber; MSFT has none.
    let node = run.node.hub.books().current("AAPL").unwrap();
    assert_eq!(
        (node.seq, node.levels.best(Side::Bid)),
        (2, Some(Level::new(18911, 100)))
    );
    assert!(run.node.hub.books().current("MSFT").is_none());
    let mut m = HashMap::from([("AAPL".to_owned(), Mirror::new(2))]);
    let other = watcher.drain(&mut m, Duration::from_millis(300)).await;
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(m["AAPL"].seq, 2);
    m["AAPL"].assert_window(&node.levels, 10, "AAPL");
    assert_eq!(
        run.node.hub.latest("AAPL").unwrap().tick.seq,
        1,
        "the tick went through"
    );
    run.shutdown().await;
}

#[tokio::test]
async fn books_stream_over_sse_with_their_positions_as_event_ids() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let run = start(settings()).await;
    run.node
        .bus
        .publish_books(vec![book_msg(1, None, &[(10_000, 1)], &[(10_010, 7)])])
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(run.addr).await.unwrap();
    let req = "GET /v1/sse?symbols=AAPL&channel=book&depth=10 HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    for (until, then) in [("event: book\n", true), ("event: book_update", false)] {
        while !text.contains(until) {
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "the stream ended: {text}");
            text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        if then {
            run.node.bus.publish_books(vec![touch(2)]).unwrap();
        }
    }
    assert!(
        text.contains("event: book\nid: AAPL e1 1\ndata: {\"type\":\"book\""),
        "{text}"
    );
    assert!(
        text.contains("event: book_update\nid: AAPL e1 2\ndata: {\"type\":\"book_update\""),
        "{text}"
    );
    assert!(text.contains("\"bids\":[[100.00,2]]"), "{text}");
    let (status, body) = http_get(run.addr, "/v1/sse?symbols=AAPL&channel=book&depth=20").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("depth 20"), "{body}");
    run.shutdown().await;
}

/// The JSON block that follows `{"type":"…"` of `kind` in the "Order books" part of
/// docs/protocol.md.
fn documented(kind: &str) -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    let at = doc.find("### Order books").expect("the section");
    let key = format!("{{\"type\":\"{kind}\",\"symbol\":\"AAPL\"");
    let start = at + doc[at..].find(&key).expect("the example");
    doc[start..start + doc[start..].find('\n').unwrap()].to_owned()
}

#[test]
fn the_documented_checksums_are_zlibs_crc32_of_the_documented_strings() {
    // zlib.crc32(b"18912200189135001891030018909100") and
    // zlib.crc32(b"18912200189131001890910018908400"), computed with Python's zlib.
    assert_eq!(
        crc32fast::hash(b"18912200189135001891030018909100"),
        2_436_380_950
    );
    assert_eq!(
        crc32fast::hash(b"18912200189131001890910018908400"),
        3_732_196_271
    );
    let mut m = Mirror::new(2);
    for (kind, want) in [("book", 2_436_380_950u64), ("book_update", 3_732_196_271)] {
        let raw = documented(kind);
        let v: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(v["checksum"].as_u64(), Some(want));
        m.apply(&v, &raw);
    }
    // The node's model agrees, from the integers.
    let spec = |_: &str| Some(tickstream::book::Spec::new(2));
    let book = tickstream::book::json::parse(documented("book").as_bytes(), spec, 50).unwrap();
    let mut b = tickstream::book::Book::from_msg(&book);
    let update =
        tickstream::book::json::parse(documented("book_update").as_bytes(), spec, 50).unwrap();
    b.apply(&update, 50).unwrap();
    assert_eq!(b.levels.checksum(), 3_732_196_271);
    m.assert_window(&b.levels, 10, "documented");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_book_records_rebuild_the_same_book_as_json() {
    use tickstream::protocol::binary::{decode_any, AnyRecord};
    let run = start(settings()).await;
    let mut g = Generator::new(&universe(), 11, "e1".into()).with_books();
    run.node.bus.publish_books(g.take_books()).unwrap();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?encoding=binary", run.addr))
            .await
            .unwrap();
    let cmd = json!({"op":"subscribe","channel":"book","depth":50,"symbols":["EUR/USD"]});
    ws.send(Message::text(cmd.to_string())).await.unwrap();
    let mut json = Reader::connect(run.addr).await;
    subscribed(
        &mut json,
        json!({"op":"subscribe","channel":"book","depth":50,"symbols":["EUR/USD"]}),
    )
    .await;
    feed(&run, &mut g, 3_000, 50, Duration::from_millis(2)).await;
    let mut mirrors = mirrors();
    json.drain(&mut mirrors, Duration::from_millis(300)).await;
    let mut book: Option<tickstream::book::Book> = None;
    let mut records = 0;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_millis(300), ws.next()).await
    {
        let Message::Binary(frame) = msg else {
            continue;
        };
        for r in decode_any(&frame).expect("the node's records decode") {
            let AnyRecord::Book(r) = r else {
                panic!("a tick record")
            };
            assert_eq!((r.symbol, r.spec.decimals), ("EUR/USD", 5));
            let msg = r.to_msg();
            match &mut book {
                None => book = Some(tickstream::book::Book::from_msg(&msg)),
                // The checksum each record carries is checked by apply.
                Some(b) => {
                    b.apply(&msg, 1000).expect("each record applies");
                }
            }
            records += 1;
        }
    }
    let book = book.expect("a book record");
    let m = &mirrors["EUR/USD"];
    assert!(
        records > 10 && records == m.messages,
        "{records} records, {} JSON messages",
        m.messages
    );
    assert_eq!(book.seq, m.seq);
    m.assert_window(&book.levels, 50, "binary and JSON");
    run.shutdown().await;
}

/// Memory per symbol of a 50-level book with 1,024 updates of history: printed (run
/// with `--nocapture`), and held within a budget.
#[test]
fn memory_per_symbol_of_a_50_level_book_with_1024_updates() {
    use tickstream::hub::book::BookSettings;
    use tickstream::hub::Hub;
    let hub = Hub::new(["AAPL".into()], 16).with_books(
        [("AAPL".into(), tickstream::book::Spec::new(2))],
        BookSettings::default(),
    );
    let bids: Vec<(u64, u64)> = (0..50).map(|i| (10_000 - i, 100 * (i + 1))).collect();
    let asks: Vec<(u64, u64)> = (0..50).map(|i| (10_001 + i, 100 * (i + 1))).collect();
    hub.publish_books(&[book_msg(1, None, &bids, &asks)]);
    // Updates like the synthetic feed's: about three levels near the touch each.
    for seq in 2..=1025u64 {
        let near = |k: u64| (10_000 - (seq + k) % 4, 100 * (seq % 7 + 1));
        let bids = [near(0), near(2)];
        let mut bids = bids.to_vec();
        bids.sort_by_key(|l| std::cmp::Reverse(l.0));
        bids.dedup_by_key(|l| l.0);
        let ask = [(10_001 + seq % 3, 100 * (seq % 5 + 1))];
        let r = hub.publish_books(&[book_msg(seq, Some(seq - 1), &bids, &ask)]);
        assert!(
            matches!(r[0], tickstream::hub::book::BookPublished::Applied(_)),
            "{r:?}"
        );
    }
    let (bytes, steps) = hub.books().footprint("AAPL").unwrap();
    println!(
        "book memory per symbol: {bytes} bytes (50 levels a side, {steps} updates of history)"
    );
    assert_eq!(steps, 1024);
    assert!(bytes < 128 * 1024, "{bytes} bytes");
}
