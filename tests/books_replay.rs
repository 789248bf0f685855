//! Recordings with books: `feed record --books` against a node with its synthetic feed
//! records `book`/`book_update` lines beside the ticks; `feed replay` of that file into
//! a fresh node gives a book subscriber there the recorded final books exactly (checksum
//! checked at every message); a malformed book line is refused naming its line.

#[path = "common/book.rs"]
mod book_client;
mod common;
#[path = "common/redis.rs"]
mod env;
mod feedkit;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use book_client::{mirrors, subscribed, Reader};
use common::*;
use feedkit::*;
use serde_json::json;
use tickstream::book::{Book, Side};
use tickstream::bus::RedisConfig;
use tickstream::config::{FeedSpec, Settings};
use tickstream::feed::recording::{self, Item};
use tickstream::feed::Speed;

const SYMBOLS: [&str; 4] = ["AAPL", "MSFT", "EUR/USD", "BTC-USD"];

/// The final book of each symbol a recording holds, and its tick and book line counts.
fn recorded_books(path: &std::path::Path) -> (HashMap<String, Book>, usize, usize) {
    let mut books: HashMap<String, Book> = HashMap::new();
    let (mut ticks, mut msgs) = (0, 0);
    let mut r = recording::Reader::open(path).unwrap();
    while let Some((_, item)) = r.next_item().unwrap() {
        match item {
            Item::Tick(_) => ticks += 1,
            Item::Book(b) => {
                msgs += 1;
                let m = &b.msg;
                match books.get_mut(&*m.symbol) {
                    Some(book) => {
                        book.apply(m, usize::MAX).unwrap();
                    }
                    None => {
                        assert_eq!(m.prev_seq, None, "a symbol's first book line is whole");
                        books.insert(m.symbol.to_string(), Book::from_msg(m));
                    }
                }
            }
        }
    }
    (books, ticks, msgs)
}

/// Records a synthetic session with books (a node started here, with its feed) into
/// `dir`; the file, and its final books and tick and book line counts.
async fn record_session(dir: &std::path::Path) -> (PathBuf, HashMap<String, Book>, usize) {
    let mut live = settings();
    live.feed = FeedSpec::Synthetic;
    live.rate = 2000.0;
    live.seed = 21;
    let source = start(live).await;
    let file = dir.join("books.ndjson.zst");
    let rec = run_bin(
        &[
            "feed",
            "record",
            "--url",
            &format!("ws://{}/v1/ws", source.addr),
            "--symbols",
            &SYMBOLS.join(","),
            "--books",
            "50",
            "--out",
            file.to_str().unwrap(),
            "--count",
            "400",
        ],
        Duration::from_secs(30),
    );
    let (_, err) = texts(&rec);
    assert!(rec.status.success(), "record failed: {err}");
    assert!(err.contains(" book lines"), "{err}");
    source.shutdown().await;
    let (want, ticks, msgs) = recorded_books(&file);
    assert!(ticks >= 400, "{ticks} ticks recorded");
    assert_eq!(want.len(), SYMBOLS.len(), "a book of every symbol: {err}");
    assert!(msgs > want.len() * 3, "only {msgs} book lines");
    (file, want, msgs)
}

/// A subscriber of the book channel of every symbol at depth 50.
async fn book_subscriber(addr: std::net::SocketAddr) -> Reader {
    let mut sub = Reader::connect(addr).await;
    subscribed(
        &mut sub,
        json!({"op":"subscribe","channel":"book","depth":50,"symbols":SYMBOLS}),
    )
    .await;
    sub
}

/// Rebuilds what `sub` receives (checksum and `prev_seq` checked at every message)
/// and compares it with the recorded final books, level by level.
async fn expect_books(sub: &mut Reader, want: &HashMap<String, Book>) {
    let mut mirrors = mirrors();
    sub.drain(&mut mirrors, Duration::from_millis(1500)).await;
    for (symbol, book) in want {
        let m = &mirrors[symbol];
        assert!(
            m.messages > 0,
            "{symbol}: no book message reached the subscriber"
        );
        for side in Side::BOTH {
            assert_eq!(
                m.levels(side),
                book.levels.side(side),
                "{symbol} {side:?}: the replayed book differs from the recorded one"
            );
        }
        assert_eq!(m.seq, book.seq, "{symbol}: the recorded seq");
    }
}

/// Runs `feed replay FILE --speed max` with `dest` arguments; its stdout.
async fn replay(file: &std::path::Path, dest: &[String]) -> String {
    let mut args: Vec<String> = ["feed", "replay", file.to_str().unwrap(), "--speed", "max"]
        .map(String::from)
        .to_vec();
    args.extend_from_slice(dest);
    let out = spawn_bin(args, Duration::from_secs(30)).await.unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "replay failed: {stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_books_replay_into_a_fresh_node_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (file, want, msgs) = record_session(dir.path()).await;

    // Through the publisher endpoint of a fresh node.
    let target = start(settings()).await;
    let mut sub = book_subscriber(target.addr).await;
    let stdout = replay(&file, &["--to".into(), publish_url(target.addr)]).await;
    assert!(
        stdout.contains(&format!("and {msgs} book messages")) && stdout.contains(" 0 refused"),
        "{stdout}"
    );
    expect_books(&mut sub, &want).await;
    target.shutdown().await;

    // Through Redis, to a node on that bus.
    let redis = env::RedisServer::start();
    let cfg = env::fast(RedisConfig::single(&redis.url()));
    let node = start(Settings {
        redis: Some(cfg),
        node: "node-r".into(),
        ..settings()
    })
    .await;
    let mut sub = book_subscriber(node.addr).await;
    let dest = [
        "--redis".into(),
        redis.url(),
        "--feed-id".into(),
        "rec".into(),
    ];
    let stdout = replay(&file, &dest).await;
    assert!(stdout.contains(" 0 refused"), "{stdout}");
    expect_books(&mut sub, &want).await;
    node.shutdown().await;

    // Played by a node itself (`serve --feed replay:FILE`).
    let mut s = settings();
    s.feed = FeedSpec::Replay(file.clone());
    s.replay_speed = Speed::Factor(1.0);
    let node = start(s).await;
    let mut sub = book_subscriber(node.addr).await;
    expect_books(&mut sub, &want).await;
    node.shutdown().await;
}

#[test]
fn a_malformed_book_line_is_refused_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"type":"book","symbol":"AAPL","epoch":"e","seq":1,"ts":5,"bids":[[189.10,300]],"asks":[[189.12,200]]}"#;
    for (bad, why) in [
        (
            r#"{"type":"book_update","symbol":"AAPL","epoch":"e","seq":2,"prev_seq":1,"ts":6,"bids":[[189.1,5]],"asks":[]}"#,
            "not written with the 2 decimals",
        ),
        (
            r#"{"type":"book_update","symbol":"AAPL","epoch":"e","seq":3,"prev_seq":2,"ts":6,"bids":[[189.11,5]],"asks":[]}"#,
            "does not follow",
        ),
        (
            r#"{"type":"book_update","symbol":"AAPL","epoch":"e","seq":2,"prev_seq":1,"ts":6,"bids":[[189.13,5]],"asks":[]}"#,
            "crossed book",
        ),
        (
            r#"{"type":"book","symbol":"AAPL","epoch":"e","seq":2,"ts":6,"bids":[[189.10,"x"]],"asks":[]}"#,
            "bad book message",
        ),
    ] {
        let path = dir.path().join("bad.ndjson");
        std::fs::write(&path, format!("{good}\n\n{bad}\n")).unwrap();
        let out = run_bin(
            &[
                "feed",
                "replay",
                path.to_str().unwrap(),
                "--to",
                "ws://127.0.0.1:9/v1/publish",
            ],
            Duration::from_secs(10),
        );
        let (_, err) = texts(&out);
        assert!(!out.status.success(), "{bad}");
        assert!(err.contains("bad.ndjson:3: "), "{err}");
        assert!(err.contains(why), "{why}: {err}");
    }
}

#[test]
fn record_takes_a_book_depth_of_10_or_50() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("x.ndjson");
    let out = run_bin(
        &[
            "feed",
            "record",
            "--url",
            "ws://127.0.0.1:9/v1/ws",
            "AAPL",
            "--books",
            "20",
            "--out",
            out_file.to_str().unwrap(),
        ],
        Duration::from_secs(10),
    );
    let (_, err) = texts(&out);
    assert!(!out.status.success());
    assert!(err.contains("--books takes a depth of 10 or 50"), "{err}");
    assert!(!out_file.exists(), "nothing is written");
}

/// Publishes `n` ticks of `g` and their book messages on `run`'s bus.
fn feed(run: &tickstream::server::Running, g: &mut tickstream::feed::Generator, n: u64) {
    let ticks = g.batch(n);
    run.node.bus.publish_books(g.take_books()).unwrap();
    run.node.bus.publish_batch(ticks).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_resumes_the_books_across_a_node_restart() {
    let first = start(settings()).await;
    let addr = first.addr;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("across.ndjson");
    let recorder = spawn_bin(
        [
            "feed",
            "record",
            "--url",
            &format!("ws://{addr}/v1/ws"),
            "--symbols",
            &SYMBOLS.join(","),
            "--books",
            "10",
            "--out",
            path.to_str().unwrap(),
            "--count",
            "600",
            "--flush",
            "20ms",
            "--backoff-base",
            "100ms",
            "--backoff-cap",
            "400ms",
        ]
        .map(String::from)
        .to_vec(),
        Duration::from_secs(30),
    );
    eventually("the recorder's book subscription", || {
        first.node.hub.books().subscriber_count("AAPL") == 1
    })
    .await;
    let mut g =
        tickstream::feed::Generator::new(&book_client::universe(), 5, "e1".into()).with_books();
    for _ in 0..10 {
        feed(&first, &mut g, 20);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.shutdown().await;
    let mut s = settings();
    s.listen = addr;
    let second = loop {
        match tickstream::server::start(s.clone()).await {
            Ok(r) => break r,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut g =
        tickstream::feed::Generator::new(&book_client::universe(), 6, "e2".into()).with_books();
    while !recorder.is_finished() {
        feed(&second, &mut g, 10);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = recorder.await.unwrap();
    let (_, err) = texts(&out);
    assert!(out.status.success(), "record failed: {err}");
    assert!(err.contains("book connection"), "the loss is told: {err}");
    second.shutdown().await;

    // Every line applies to the one before it and matches its checksum (the reader
    // checks), and both epochs are there: an update of e2 applies only after a whole
    // book of e2, so the resume brought one.
    let mut epochs: HashMap<String, Vec<String>> = HashMap::new();
    let mut r = recording::Reader::open(&path).unwrap();
    while let Some((_, item)) = r.next_item().unwrap() {
        if let Item::Book(b) = item {
            let e = epochs.entry(b.msg.symbol.to_string()).or_default();
            if e.last().map(String::as_str) != Some(&*b.msg.epoch) {
                e.push(b.msg.epoch.to_string());
            }
        }
    }
    let (books, _, _) = recorded_books(&path);
    for symbol in SYMBOLS {
        assert_eq!(epochs[symbol], ["e1", "e2"], "{symbol}");
        assert!(
            books[symbol].seq > 1,
            "{symbol}: updates of e2 were recorded"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_resumes_the_books_of_a_closed_connection_without_a_fresh_book() {
    // The node closes every connection after about 300 ms: the book connection comes
    // back with `resume`, and the node answers with what follows the last line held.
    let mut s = settings();
    s.max_connection_lifetime = Duration::from_millis(300);
    let node = start(s).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("closed.ndjson");
    let recorder = spawn_bin(
        [
            "feed",
            "record",
            "--url",
            &format!("ws://{}/v1/ws", node.addr),
            "--symbols",
            &SYMBOLS.join(","),
            "--books",
            "10",
            "--out",
            path.to_str().unwrap(),
            "--count",
            "1500",
            "--backoff-base",
            "50ms",
            "--backoff-cap",
            "100ms",
        ]
        .map(String::from)
        .to_vec(),
        Duration::from_secs(30),
    );
    eventually("the recorder's book subscription", || {
        node.node.hub.books().subscriber_count("AAPL") == 1
    })
    .await;
    let mut g =
        tickstream::feed::Generator::new(&book_client::universe(), 7, "e1".into()).with_books();
    while !recorder.is_finished() {
        feed(&node, &mut g, 10);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = recorder.await.unwrap();
    let (_, err) = texts(&out);
    assert!(out.status.success(), "record failed: {err}");
    let losses = err.matches("tickstream: book connection").count();
    assert!(losses >= 1, "the book connection was closed: {err}");
    node.shutdown().await;

    // One whole book per symbol: after each reconnect the lines go on from the seq held.
    let mut wholes: HashMap<String, usize> = HashMap::new();
    let mut r = recording::Reader::open(&path).unwrap();
    while let Some((_, item)) = r.next_item().unwrap() {
        if let Item::Book(b) = item {
            if b.msg.prev_seq.is_none() {
                *wholes.entry(b.msg.symbol.to_string()).or_default() += 1;
            }
        }
    }
    for symbol in SYMBOLS {
        assert_eq!(wholes.get(symbol), Some(&1), "{symbol}: {err}");
    }
}
