//! The Rust client's order books against a real node over real sockets: it rebuilds the
//! node's books exactly (level by level, at depth 10 and 50, JSON and binary); a book
//! message lost or corrupted on the way (by a relay between them) is noticed, re-synced
//! by the client itself, and the book ends right; after a reconnect the books resume.

#[path = "common/book.rs"]
mod book_client;
mod common;
#[path = "common/relay.rs"]
mod relay;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use book_client::universe;
use common::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use relay::Fate;
use tickstream::book::{BookMsg, Level, Levels, Side};
use tickstream::client::{Client, ClientConfig, Event, LocalBook, ServerMessage, Subscription};
use tickstream::feed::Generator;
use tickstream::protocol::channel::Depth;
use tickstream::protocol::{Channel, Encoding};
use tickstream::server::Running;

/// A client of the `book` channel for `symbols` at `depth`, through `addr`.
fn book_client(addr: SocketAddr, symbols: &[&str], depth: Depth, encoding: Encoding) -> Client {
    Client::new(ClientConfig {
        urls: vec![format!("ws://{addr}/v1/ws")],
        subscriptions: vec![Subscription {
            channel: Channel::Book { depth },
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
            throttle_ms: None,
        }],
        encoding,
        report_every: None,
        backoff: tickstream::client::BackoffConfig {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(200),
            max_attempts: 0,
        },
        ..ClientConfig::default()
    })
    .unwrap()
}

/// The events of a client running in its own task.
struct Watched {
    rx: mpsc::Receiver<Event>,
    stop: CancellationToken,
    /// The latest book per symbol.
    books: HashMap<String, LocalBook>,
    mismatches: Vec<String>,
    /// Book messages passed on, in order: (symbol, seq, prev_seq).
    messages: Vec<(String, u64, Option<u64>)>,
    connections: u64,
}

impl Watched {
    fn start(client: Client) -> Watched {
        let stop = CancellationToken::new();
        let (rx, _task) = client.spawn(65_536, stop.clone());
        Watched {
            rx,
            stop,
            books: HashMap::new(),
            mismatches: Vec::new(),
            messages: Vec::new(),
            connections: 0,
        }
    }

    fn take(&mut self, ev: Event) {
        match ev {
            Event::Book(b) => {
                assert_eq!(b.checksum(), b.book.levels.checksum());
                self.books.insert(b.symbol.to_string(), b);
            }
            Event::BookMismatch { symbol, why, .. } => {
                self.mismatches.push(format!("{symbol}: {why}"))
            }
            Event::Message(ServerMessage::Book(m)) => {
                self.messages
                    .push((m.msg.symbol.to_string(), m.msg.seq, m.msg.prev_seq))
            }
            Event::Connected { .. } => self.connections += 1,
            _ => {}
        }
    }

    /// Takes events until `done` holds of what was taken, or 15 s have passed.
    async fn until(&mut self, what: &str, mut done: impl FnMut(&Watched) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(ev)) => self.take(ev),
                Ok(None) => panic!("the client stopped before {what}"),
                Err(_) => panic!(
                    "timed out waiting for {what}; mismatches {:?}, books {:?}",
                    self.mismatches,
                    self.books
                        .values()
                        .map(|b| (&b.symbol, b.book.seq))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }
}

/// Whether the client's book of `symbol` is the top `depth` levels of `levels`.
fn window_is(w: &Watched, symbol: &str, levels: &Levels, depth: usize) -> bool {
    w.books.get(symbol).is_some_and(|b| {
        Side::BOTH
            .iter()
            .all(|&s| b.levels().side(s) == levels.top(s, depth))
    })
}

/// Publishes `n` ticks of `g` and their book messages in batches of 40.
async fn feed(run: &Running, g: &mut Generator, n: u64) {
    let mut done = 0;
    while done < n {
        let ticks = g.batch(40.min(n - done));
        done += ticks.len() as u64;
        run.node.bus.publish_books(g.take_books()).unwrap();
        run.node.bus.publish_batch(ticks).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_rebuilds_the_nodes_books_at_depth_10_and_50_in_json_and_binary() {
    let run = start(settings()).await;
    let mut g = Generator::new(&universe(), 5, "e1".into()).with_books();
    let symbols = ["AAPL", "MSFT", "EUR/USD", "BTC-USD"];
    let mut clients = Vec::new();
    for depth in [Depth::Top10, Depth::Top50] {
        for enc in [Encoding::Json, Encoding::Binary] {
            let w = Watched::start(book_client(run.addr, &symbols, depth, enc));
            clients.push((depth, enc, w));
        }
    }
    // Every client has its first books before the feed moves on.
    feed(&run, &mut g, 40).await;
    for (_, _, w) in &mut clients {
        w.until("the first books", |w| w.books.len() == symbols.len())
            .await;
    }
    feed(&run, &mut g, 3_000).await;
    for (depth, enc, w) in &mut clients {
        let what = format!("the feed's books at depth {} in {enc:?}", depth.levels());
        let want: Vec<(String, Levels)> = symbols
            .iter()
            .map(|s| (s.to_string(), g.book(s).unwrap().1.clone()))
            .collect();
        let n = depth.levels();
        w.until(&what, |w| want.iter().all(|(s, l)| window_is(w, s, l, n)))
            .await;
        assert!(w.mismatches.is_empty(), "{what}: {:?}", w.mismatches);
        for (s, levels) in &want {
            let b = &w.books[s];
            // Level by level, prices and sizes both, best first on each side.
            for side in Side::BOTH {
                assert_eq!(b.levels().side(side), levels.top(side, n), "{s} {side:?}");
            }
            assert_eq!(
                b.levels().side(Side::Bid).len(),
                n.min(levels.side(Side::Bid).len())
            );
            assert_eq!(b.checksum(), levels.checksum(), "{s}: the top 10 agree");
            let node = run.node.hub.books().current(s).unwrap();
            assert!(b.book.seq <= node.seq && b.book.epoch == node.epoch);
            let messages = w.messages.iter().filter(|m| m.0 == *s).count();
            assert!(messages > 10, "{s}: {messages} book messages");
        }
        w.stop.cancel();
    }
    run.shutdown().await;
}

// ---------------------------------------------------------------------------------
// A relay that loses or spoils one book message

/// What the relay does to the next frame from the node that holds a `book_update`.
const PASS: u8 = 0;
const DROP: u8 = 1;
const CORRUPT: u8 = 2;
/// Closes every connection it relays (the next one passes).
const CUT: u8 = 3;

/// A TCP relay in front of a node that passes every byte both ways, but when armed
/// drops or corrupts (its checksum changed) the next frame holding a `book_update`,
/// or cuts the connection.
struct Spoiler {
    addr: SocketAddr,
    armed: Arc<AtomicU8>,
    /// Frames dropped or corrupted, and connections cut.
    done: Arc<AtomicUsize>,
}

impl Spoiler {
    async fn start(node: SocketAddr) -> Spoiler {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicU8::new(PASS));
        let done = Arc::new(AtomicUsize::new(0));
        let (a, d) = (armed.clone(), done.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, node, a.clone(), d.clone()));
            }
        });
        Spoiler { addr, armed, done }
    }

    fn arm(&self, what: u8) {
        self.armed.store(what, Ordering::SeqCst);
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }
}

/// Changes the checksum of the first `book_update` of a frame; false when it has none.
fn corrupt(frame: &mut [u8], at: usize) -> bool {
    let payload = &mut frame[at..];
    if payload.first() == Some(&0x04) {
        // A binary book_update record: its checksum is the u32 at offset 32.
        payload[32] ^= 0x5a;
        return true;
    }
    let text = String::from_utf8_lossy(payload).into_owned();
    let Some(u) = text.find("\"book_update\"") else {
        return false;
    };
    let Some(c) = text[u..].find("\"checksum\":").map(|c| u + c + 11) else {
        return false;
    };
    // The last digit of the checksum, moved by one (same length: the frame stays valid).
    let end = c + text[c..].find(|ch: char| !ch.is_ascii_digit()).unwrap();
    let d = payload[end - 1] - b'0';
    payload[end - 1] = b'0' + (d + 1) % 10;
    true
}

fn holds_update(frame: &[u8], at: usize) -> bool {
    let p = &frame[at..];
    p.first() == Some(&0x04) || p.windows(13).any(|w| w == b"\"book_update\"")
}

async fn relay(client: TcpStream, node: SocketAddr, armed: Arc<AtomicU8>, done: Arc<AtomicUsize>) {
    relay::pass_frames(client, node, move |frame, at| {
        let update = holds_update(frame, at);
        let fate = match armed.load(Ordering::SeqCst) {
            CUT => Fate::Close,
            DROP if update => Fate::Drop,
            CORRUPT if update && corrupt(frame, at) => Fate::Pass,
            _ => return Fate::Pass,
        };
        armed.store(PASS, Ordering::SeqCst);
        done.fetch_add(1, Ordering::SeqCst);
        fate
    })
    .await
}

/// A book message of AAPL.
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

/// Update `seq` of AAPL: the best bid's size becomes `seq`, and a level below the
/// touch comes and goes.
fn touch(seq: u64) -> BookMsg {
    let deep = if seq.is_multiple_of(2) { 5 } else { 0 };
    book_msg(
        seq,
        Some(seq - 1),
        &[(10_000, seq), (9_990, deep)],
        &[(10_010, 100 + seq)],
    )
}

/// Publishes AAPL's updates `from..=to`, one at a time so each travels in its own frame.
async fn updates(run: &Running, from: u64, to: u64) {
    for seq in from..=to {
        run.node.bus.publish_books(vec![touch(seq)]).unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// Waits until the client holds AAPL at `seq` with the node's book exactly.
async fn holds_the_nodes_book(w: &mut Watched, run: &Running, seq: u64) {
    let node = run.node.hub.books().current("AAPL").unwrap();
    assert_eq!(node.seq, seq);
    let levels = node.levels.clone();
    w.until(&format!("AAPL at seq {seq}"), |w| {
        w.books
            .get("AAPL")
            .is_some_and(|b| b.book.seq == seq && window_is(w, "AAPL", &levels, b.depth.levels()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_spoiled_update_is_resynced_by_the_client() {
    for (enc, how) in [
        (Encoding::Json, DROP),
        (Encoding::Binary, DROP),
        (Encoding::Json, CORRUPT),
        (Encoding::Binary, CORRUPT),
    ] {
        let run = start(settings()).await;
        let bids: Vec<(u64, u64)> = (0..12).map(|i| (10_000 - 10 * i, 100 + i)).collect();
        run.node
            .bus
            .publish_books(vec![book_msg(
                1,
                None,
                &bids,
                &[(10_010, 100), (10_020, 300)],
            )])
            .unwrap();
        let spoiler = Spoiler::start(run.addr).await;
        let mut w = Watched::start(book_client(spoiler.addr, &["AAPL"], Depth::Top10, enc));
        holds_the_nodes_book(&mut w, &run, 1).await;
        updates(&run, 2, 5).await;
        holds_the_nodes_book(&mut w, &run, 5).await;
        spoiler.arm(how);
        updates(&run, 6, 12).await;
        holds_the_nodes_book(&mut w, &run, 12).await;
        assert_eq!(spoiler.done(), 1, "{enc:?} {how}: one frame spoiled");
        assert_eq!(w.mismatches.len(), 1, "{enc:?} {how}: {:?}", w.mismatches);
        let want = if how == DROP {
            "names prev_seq"
        } else {
            "checksum"
        };
        assert!(w.mismatches[0].contains(want), "{:?}", w.mismatches);
        // Every message passed on applied to the one before: after the spoiled one,
        // the re-sync's netted update names the seq held.
        let seqs: Vec<(u64, Option<u64>)> = w.messages.iter().map(|m| (m.1, m.2)).collect();
        for pair in seqs.windows(2) {
            assert_eq!(pair[1].1, Some(pair[0].0), "{enc:?} {how}: {seqs:?}");
        }
        assert_eq!(w.connections, 1, "re-synced on the same connection");
        w.stop.cancel();
        run.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_the_books_resume_from_the_seq_held() {
    let run = start(settings()).await;
    let bids: Vec<(u64, u64)> = (0..12).map(|i| (10_000 - 10 * i, 100 + i)).collect();
    run.node
        .bus
        .publish_books(vec![book_msg(1, None, &bids, &[(10_010, 100)])])
        .unwrap();
    let spoiler = Spoiler::start(run.addr).await;
    let mut w = Watched::start(book_client(
        spoiler.addr,
        &["AAPL"],
        Depth::Top50,
        Encoding::Json,
    ));
    holds_the_nodes_book(&mut w, &run, 1).await;
    updates(&run, 2, 4).await;
    holds_the_nodes_book(&mut w, &run, 4).await;
    spoiler.arm(CUT);
    // The cut happens on the next frame; updates go on while the client is away.
    updates(&run, 5, 9).await;
    w.until("the reconnect", |w| w.connections == 2).await;
    updates(&run, 10, 11).await;
    holds_the_nodes_book(&mut w, &run, 11).await;
    assert!(w.mismatches.is_empty(), "{:?}", w.mismatches);
    // One whole book, at the start; since then updates, each naming the seq before.
    let seqs: Vec<(u64, Option<u64>)> = w.messages.iter().map(|m| (m.1, m.2)).collect();
    assert_eq!(seqs[0], (1, None), "{seqs:?}");
    for pair in seqs.windows(2) {
        assert_eq!(
            pair[1].1,
            Some(pair[0].0),
            "resumed, not restarted: {seqs:?}"
        );
    }
    w.stop.cancel();
    run.shutdown().await;
}
