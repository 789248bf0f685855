//! Candles: the bars the node makes against bars computed here from the same ticks, the
//! engine's properties, replays at `max` and at 1×, and backfill through a real
//! `redis-server` across nodes and restarts.

mod common;
#[path = "common/redis.rs"]
mod env;
mod feedkit;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Client};
use env::{RedisCluster, RedisServer};
use feedkit::*;
use proptest::prelude::*;
use tickstream::bus::{RedisConfig, RedisPublisher};
use tickstream::config::Settings;
use tickstream::hub::candles::{Bar, Bars, Interval};
use tickstream::hub::Hub;
use tickstream::server::Running;
use tickstream::tick::{Symbol, Tick};

// ---------------------------------------------------------------------------------------
// The reference: bars as the contract describes them, computed from a list of ticks.

/// A bar computed here.
#[derive(Clone, Debug, PartialEq)]
struct RefBar {
    start: u64,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: u64,
    ticks: u64,
    /// Every tick followed the one before it without a hole.
    whole: bool,
}

fn time_of(t: &Tick) -> u64 {
    t.src_ts.unwrap_or(t.ts)
}

/// The bars of one symbol's ticks (in order, times not going back within an epoch) in
/// intervals of `iv` ns: grouped by interval of their time; OHLC of `last`; the volume
/// of a tick is its rise over the tick before it in the same epoch (nothing when it went
/// down), its whole volume when it is `seq` 1 of an epoch, else nothing.
fn reference(ticks: &[Tick], iv: u64) -> Vec<RefBar> {
    let mut rows: Vec<(&Tick, u64, bool)> = Vec::new();
    for (k, t) in ticks.iter().enumerate() {
        let prev = k.checked_sub(1).map(|j| &ticks[j]);
        let same = prev.filter(|p| p.epoch == t.epoch);
        let rise = match same {
            Some(p) => t.volume.saturating_sub(p.volume),
            None if t.seq == 1 => t.volume,
            None => 0,
        };
        let follows = same.map_or(t.seq == 1, |p| t.seq == p.seq + 1);
        rows.push((t, rise, follows));
    }
    rows.chunk_by(|a, b| time_of(a.0) / iv == time_of(b.0) / iv)
        .map(|g| RefBar {
            start: time_of(g[0].0) / iv * iv,
            open: g[0].0.last,
            high: g.iter().map(|r| r.0.last).fold(f64::MIN, f64::max),
            low: g.iter().map(|r| r.0.last).fold(f64::MAX, f64::min),
            close: g[g.len() - 1].0.last,
            volume: g.iter().map(|r| r.1).sum(),
            ticks: g.len() as u64,
            whole: g.iter().all(|r| r.2),
        })
        .collect()
}

fn from_bar(b: &Bar, whole: bool) -> RefBar {
    RefBar {
        start: b.start,
        open: b.open,
        high: b.high,
        low: b.low,
        close: b.close,
        volume: b.volume,
        ticks: b.ticks,
        whole,
    }
}

/// Closed then forming bars of `symbol` as the hub holds them (whole flags left out).
fn held(hub: &Hub, symbol: &str, iv: Interval) -> Vec<RefBar> {
    let c = hub.candles();
    let mut out: Vec<RefBar> = c
        .closed(symbol, iv, usize::MAX)
        .iter()
        .map(|b| from_bar(b, true))
        .collect();
    out.extend(c.forming_bar(symbol, iv).map(|(b, _)| from_bar(&b, true)));
    out
}

fn unwhole(mut v: Vec<RefBar>) -> Vec<RefBar> {
    for b in &mut v {
        b.whole = true;
    }
    v
}

fn by_symbol(ticks: &[Tick]) -> HashMap<Symbol, Vec<Tick>> {
    let mut m: HashMap<Symbol, Vec<Tick>> = HashMap::new();
    for t in ticks {
        m.entry(t.symbol.clone()).or_default().push(t.clone());
    }
    m
}

// ---------------------------------------------------------------------------------------
// The engine against the reference.

#[test]
fn bars_of_the_sample_session_are_the_reference_bars_in_every_interval() {
    let ticks = read_ticks(&sample());
    let per = by_symbol(&ticks);
    let hub = Hub::new(per.keys().cloned(), 16);
    for t in &ticks {
        hub.publish(t.clone());
    }
    let mut closed = 0;
    for (s, list) in &per {
        for iv in Interval::ALL {
            let want = unwhole(reference(list, iv.nanos()));
            assert_eq!(held(&hub, s, iv), want, "{s} {iv}");
            closed += want.len() - 1;
        }
    }
    // A minute over 50 symbols: one-second bars for most of its seconds.
    assert!(closed > 50 * 40, "{closed} closed bars");
}

#[test]
fn the_candles_message_carries_the_newest_closed_bars_then_the_forming_one() {
    let hub = Hub::new(["AAPL".into()], 16).with_candle_keep(5);
    let t0 = 1_764_284_460_000_000_000u64;
    for seq in 1..=20u64 {
        let mut t = common::tick("AAPL", "e", seq);
        t.ts = t0 + (seq - 1) * 500_000_000;
        hub.publish(t);
    }
    let c = hub.candles();
    let msg: serde_json::Value =
        serde_json::from_slice(&c.start("AAPL", Interval::S1, 3).unwrap()).unwrap();
    assert_eq!(msg["type"], "candles");
    assert_eq!(
        (msg["symbol"].as_str(), msg["interval"].as_str()),
        (Some("AAPL"), Some("1s"))
    );
    let bars = msg["bars"].as_array().unwrap();
    let starts: Vec<u64> = bars.iter().map(|b| b["start"].as_u64().unwrap()).collect();
    // Ten seconds of two ticks: 6..=8 closed (three asked), 9 forming.
    let want: Vec<u64> = (6..=9).map(|k| t0 + k * 1_000_000_000).collect();
    assert_eq!(starts, want);
    let closed: Vec<bool> = bars
        .iter()
        .map(|b| b["closed"].as_bool().unwrap())
        .collect();
    assert_eq!(closed, [true, true, true, false]);
    assert_eq!(bars[0]["ticks"], 2);
    // At most what is kept, whatever is asked.
    let all = c.start("AAPL", Interval::S1, 1000).unwrap();
    let all: serde_json::Value = serde_json::from_slice(&all).unwrap();
    assert_eq!(all["bars"].as_array().unwrap().len(), 6);
    // The forming bar's message is encoded once until the bar changes.
    let a = c.forming("AAPL", Interval::S1).unwrap();
    let b = c.forming("AAPL", Interval::S1).unwrap();
    assert_eq!(a.as_ptr(), b.as_ptr());
    let m: serde_json::Value = serde_json::from_slice(&a).unwrap();
    assert_eq!(
        (m["type"].as_str(), m["closed"].as_bool()),
        (Some("candle"), Some(false))
    );
    let mut t = common::tick("AAPL", "e", 21);
    t.ts = t0 + 9_600_000_000;
    hub.publish(t);
    let after = c.forming("AAPL", Interval::S1).unwrap();
    assert_ne!(after, a);
    assert!(c.start("ZZZZ", Interval::S1, 3).is_none());
}

/// A tick of the generated sequences: time step, price, volume step, seq step, new epoch.
#[derive(Clone, Debug)]
struct Step {
    dt: u64,
    last: f64,
    dvol: i64,
    skip: u64,
    new_epoch: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![Just(0u64), 0..3_000_000_000u64, Just(1_000_000_000)],
        1u32..10_000,
        prop_oneof![8 => 0i64..500, 1 => -300i64..0],
        prop_oneof![12 => Just(0u64), 1 => 1u64..4],
        proptest::bool::weighted(0.03),
    )
        .prop_map(|(dt, p, dvol, skip, new_epoch)| Step {
            dt,
            last: p as f64 / 100.0,
            dvol,
            skip,
            new_epoch,
        })
}

/// The ticks of a generated sequence; times never go back.
fn ticks_of(steps: &[Step]) -> Vec<Tick> {
    let (mut time, mut seq, mut vol, mut epoch) = (1_764_284_399_000_000_000u64, 0u64, 0i64, 0);
    let mut out = Vec::new();
    for s in steps {
        time += s.dt;
        if s.new_epoch {
            epoch += 1;
            seq = 0;
            vol = 0;
        }
        seq += 1 + s.skip;
        vol = (vol + s.dvol).max(0);
        let mut t = common::tick("PROP", &format!("e{epoch}"), seq);
        t.ts = time;
        t.last = s.last;
        t.volume = vol as u64;
        out.push(t);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Bars partition the ticks, each closes once, hold together, carry the whole rise
    /// of the volume, and are the reference bars.
    #[test]
    fn bars_partition_the_ticks_and_are_the_reference(steps in proptest::collection::vec(step(), 1..400)) {
        let ticks = ticks_of(&steps);
        let mut bars = Bars::new(100_000);
        let mut closes: Vec<Vec<(u64, bool)>> = vec![Vec::new(); 4];
        for t in &ticks {
            let f = bars.fold(t);
            prop_assert!(f.any());
            for (iv, b, whole) in f.closed() {
                closes[iv.index()].push((b.start, whole));
            }
        }
        for iv in Interval::ALL {
            let want = reference(&ticks, iv.nanos());
            let closed = bars.closed(iv, usize::MAX);
            let (forming, whole) = bars.forming(iv).unwrap();
            let mut got: Vec<RefBar> = closed.iter().zip(&closes[iv.index()])
                .map(|(b, (start, w))| { assert_eq!(b.start, *start); from_bar(b, *w) })
                .collect();
            got.push(from_bar(&forming, whole));
            prop_assert_eq!(closes[iv.index()].len(), closed.len(), "each bar closes once");
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(got.iter().map(|b| b.ticks).sum::<u64>(), ticks.len() as u64);
            for b in closed.iter().chain([&forming]) {
                prop_assert!(b.valid(iv), "{:?}", b);
                prop_assert!(b.high >= b.open.max(b.close) && b.low <= b.open.min(b.close));
            }
            prop_assert!(closed.windows(2).all(|w| w[0].start < w[1].start));
            let total: u64 = want.iter().map(|b| b.volume).sum();
            prop_assert_eq!(got.iter().map(|b| b.volume).sum::<u64>(), total);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Replays: the recorded time makes the bars, whatever the speed.

/// The last seconds of the sample, replayed by the real binary into the node at `addr`.
fn replay_into(
    addr: std::net::SocketAddr,
    speed: &str,
) -> tokio::task::JoinHandle<std::process::Output> {
    spawn_bin(
        vec![
            "feed".into(),
            "replay".into(),
            sample().display().to_string(),
            "--to".into(),
            publish_url(addr),
            "--speed".into(),
            speed.into(),
            "--from".into(),
            "54s".into(),
        ],
        LONG,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_at_max_speed_makes_the_bars_of_a_replay_at_1x() {
    let file = read_ticks(&sample());
    let first = file[0].ts;
    let played: Vec<Tick> = file
        .into_iter()
        .filter(|t| t.ts >= first + 54_000_000_000)
        .collect();
    let per = by_symbol(&played);
    let fast = common::start(common::settings()).await;
    let slow = common::start(common::settings()).await;
    let (a, b) = (replay_into(fast.addr, "max"), replay_into(slow.addr, "1"));
    for out in [a.await.unwrap(), b.await.unwrap()] {
        let (stdout, stderr) = texts(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
    }
    for run in [&fast, &slow] {
        eventually("every replayed tick stored", || {
            run.node
                .hub
                .stats()
                .ticks
                .load(std::sync::atomic::Ordering::Relaxed)
                == played.len() as u64
        })
        .await;
    }
    for (s, list) in &per {
        for iv in Interval::ALL {
            let want = unwhole(reference(list, iv.nanos()));
            let at_max = held(&fast.node.hub, s, iv);
            assert_eq!(at_max, want, "{s} {iv} at max");
            assert_eq!(held(&slow.node.hub, s, iv), at_max, "{s} {iv} at 1x");
        }
    }
    fast.shutdown().await;
    slow.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Through Redis: the same backfill on every node and after a restart.

/// A bar boundary of every interval: the start of an hour.
const T0: u64 = 1_764_284_400_000_000_000;

/// A `redis-server` and the configuration of a bus on it, with short timeouts.
fn redis_server() -> (RedisServer, RedisConfig) {
    let redis = RedisServer::start();
    let cfg = fast_redis(&redis.url());
    (redis, cfg)
}

/// Quick reconnects, with the default response timeout: these tests look at bars, not
/// at how fast a lost Redis is noticed, and a busy machine can hold a reply for 500 ms.
fn fast_redis(url: &str) -> RedisConfig {
    let mut c = RedisConfig::single(url);
    c.backoff_max = Duration::from_millis(300);
    c
}

async fn redis_node(cfg: &RedisConfig, name: &str) -> Running {
    common::start(Settings {
        redis: Some(cfg.clone()),
        node: name.into(),
        ..common::settings()
    })
    .await
}

/// A node on Redis with a client subscribed to `symbol`'s ticks, so it receives them.
async fn watching(cfg: &RedisConfig, name: &str, symbol: &str) -> (Running, Client) {
    let run = redis_node(cfg, name).await;
    let (mut c, _) = Client::ready(run.addr).await;
    c.send(&format!(r#"{{"op":"subscribe","symbols":["{symbol}"]}}"#))
        .await;
    c.until("subscribed").await;
    (run, c)
}

/// Publishes `ticks` with `feed`, and waits until `run` stored the last one.
async fn publish_all(feed: &RedisPublisher, run: &Running, ticks: &[Tick]) {
    for t in ticks {
        feed.publish(t.clone()).unwrap();
    }
    let last = ticks.last().unwrap();
    stored_seq(run, &last.symbol, last.seq).await;
}

/// Ticks `seqs` of `symbol`, 400 ms apart from `t0`, volume rising by 10 a tick.
fn timed(symbol: &str, seqs: std::ops::RangeInclusive<u64>, t0: u64) -> Vec<Tick> {
    seqs.map(|seq| {
        let mut t = common::tick(symbol, "e1", seq);
        t.ts = t0 + (seq - 1) * 400_000_000;
        t.last = 100.0 + ((seq * 7919) % 97) as f64 / 10.0;
        t
    })
    .collect()
}

async fn stored_seq(run: &Running, symbol: &str, seq: u64) {
    eventually(
        &format!("{} holds seq {seq}", run.node.settings.node),
        || {
            run.node
                .hub
                .latest(symbol)
                .is_some_and(|e| e.tick.seq == seq)
        },
    )
    .await;
}

/// The `candles` message `run` would start a subscription with, after its store read.
async fn backfill(run: &Running, symbol: &str, iv: Interval) -> serde_json::Value {
    let sym: Symbol = Arc::from(symbol);
    run.node.load_candles(&[(sym, iv)]).await;
    let msg = run.node.hub.candles().start(symbol, iv, 1000).unwrap();
    serde_json::from_slice(&msg).unwrap()
}

fn reference_json(ticks: &[Tick], iv: Interval) -> Vec<serde_json::Value> {
    let bars = reference(ticks, iv.nanos());
    let n = bars.len();
    bars.iter()
        .enumerate()
        .map(|(k, b)| {
            serde_json::json!({"start": b.start, "open": b.open, "high": b.high, "low": b.low,
                "close": b.close, "volume": b.volume, "ticks": b.ticks, "closed": k + 1 < n})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_is_the_same_on_two_nodes_and_after_a_restart() {
    let (_redis, cfg) = redis_server();
    let ticks = timed("AAPL", 1..=150, T0);
    let (a, _ca) = watching(&cfg, "node-a", "AAPL").await;
    let feed = RedisPublisher::connect(&cfg, "feed-1").await.unwrap();
    publish_all(&feed, &a, &ticks[..70]).await;
    // Node B starts receiving the symbol in the middle of a bar.
    let (b, _cb) = watching(&cfg, "node-b", "AAPL").await;
    publish_all(&feed, &a, &ticks[70..]).await;
    stored_seq(&b, "AAPL", 150).await;
    for iv in [Interval::S1, Interval::M1] {
        let want = reference_json(&ticks, iv);
        let on_a = backfill(&a, "AAPL", iv).await;
        assert_eq!(on_a["bars"].as_array().unwrap(), &want, "{iv} on node A");
        assert_eq!(backfill(&b, "AAPL", iv).await, on_a, "{iv} on node B");
    }
    // A node that starts after everything was published (A restarted) reads it all.
    a.shutdown().await;
    feed.close().await;
    let (a2, _ca2) = watching(&cfg, "node-a", "AAPL").await;
    for iv in [Interval::S1, Interval::M1, Interval::M5] {
        let want = reference_json(&ticks, iv);
        let got = backfill(&a2, "AAPL", iv).await;
        assert_eq!(
            got["bars"].as_array().unwrap(),
            &want,
            "{iv} after a restart"
        );
    }
    b.shutdown().await;
    a2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_that_restarts_mid_bar_continues_the_stored_bars() {
    let (_redis, cfg) = redis_server();
    let ticks = timed("MSFT", 1..=60, T0);
    let (a, _ca) = watching(&cfg, "node-a", "MSFT").await;
    let feed = RedisPublisher::connect(&cfg, "feed-1").await.unwrap();
    publish_all(&feed, &a, &ticks[..31]).await;
    feed.close().await;
    // The same feed again (a new process): tick 32 is in the middle of a 1s bar.
    let again = RedisPublisher::connect(&cfg, "feed-1").await.unwrap();
    publish_all(&again, &a, &ticks[31..]).await;
    again.close().await;
    let (fresh, _cf) = watching(&cfg, "node-b", "MSFT").await;
    for iv in [Interval::S1, Interval::M1] {
        let want = reference_json(&ticks, iv);
        let got = backfill(&fresh, "MSFT", iv).await;
        assert_eq!(got["bars"].as_array().unwrap(), &want, "{iv}");
        assert_eq!(
            backfill(&a, "MSFT", iv).await,
            got,
            "{iv} on the node that saw it all"
        );
    }
    a.shutdown().await;
    fresh.shutdown().await;
}

/// Publishes like a process that follows only the bus section: `XADD hist`, `SET last`,
/// `PUBLISH`, no lease and no bars.
fn publish_plain(redis: &RedisServer, ticks: &[Tick]) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    for t in ticks {
        let json = t.to_json(tickstream::tick::Kind::Tick);
        let s = &t.symbol;
        let mut p = redis::pipe();
        p.cmd("XADD")
            .arg(format!("tickstream:hist:{{{s}}}"))
            .arg(format!("{}-0", t.seq))
            .arg("t")
            .arg(&json)
            .ignore();
        p.cmd("SET")
            .arg(format!("tickstream:last:{{{s}}}"))
            .arg(&json)
            .ignore();
        p.cmd("PUBLISH")
            .arg(format!("tickstream:tick:{{{s}}}"))
            .arg(&json)
            .ignore();
        p.exec(&mut conn).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_write_the_whole_bars_of_a_feed_that_writes_none() {
    let (redis, cfg) = redis_server();
    let ticks = timed("IBM", 1..=40, T0);
    let (a, _ca) = watching(&cfg, "node-a", "IBM").await;
    publish_plain(&redis, &ticks);
    stored_seq(&a, "IBM", 40).await;
    let want = reference_json(&ticks, Interval::S1);
    let closed = want.len() - 1;
    eventually("node A wrote its closed bars", || {
        redis
            .strings(&["ZRANGE", "tickstream:bars:{IBM}:1s", "0", "-1"])
            .len()
            == closed
    })
    .await;
    assert!(
        redis.strings(&["KEYS", "tickstream:forming:*"]).is_empty(),
        "nodes write no forming state"
    );
    let (b, _cb) = watching(&cfg, "node-b", "IBM").await;
    let got = backfill(&b, "IBM", Interval::S1).await;
    let bars = got["bars"].as_array().unwrap();
    // B did not see the forming bar begin: it has the closed ones from the store, and
    // no forming bar of its own until a tick comes.
    assert_eq!(bars[..], want[..closed]);
    let seen: HashSet<u64> = bars.iter().map(|b| b["start"].as_u64().unwrap()).collect();
    assert_eq!(seen.len(), closed);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_link_the_missed_bars_come_from_the_store() {
    let (redis, cfg) = redis_server();
    let ticks = timed("NVDA", 1..=160, T0);
    let (a, _ca) = watching(&cfg, "node-a", "NVDA").await;
    let feed = RedisPublisher::connect(&cfg, "feed-1").await.unwrap();
    publish_all(&feed, &a, &ticks[..40]).await;
    for iv in [Interval::S1, Interval::M1] {
        let before = backfill(&a, "NVDA", iv).await;
        assert_eq!(
            before["bars"].as_array().unwrap(),
            &reference_json(&ticks[..40], iv)
        );
    }
    // Drop the node's subscription link and publish at once, until it misses ticks.
    let stored = || {
        a.node
            .hub
            .stats()
            .ticks
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut sent = 40;
    while stored() == sent as u64 && sent < 120 {
        redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        publish_all(&feed, &a, &ticks[sent..sent + 10]).await;
        sent += 10;
    }
    assert!(
        stored() < sent as u64,
        "the node missed ticks while its link was down"
    );
    publish_all(&feed, &a, &ticks[sent..]).await;
    for iv in [Interval::S1, Interval::M1] {
        let want = reference_json(&ticks, iv);
        let got = backfill(&a, "NVDA", iv).await;
        assert_eq!(got["bars"].as_array().unwrap(), &want, "{iv}");
    }
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_through_a_redis_cluster_is_the_same_on_two_nodes() {
    let cluster = RedisCluster::start(3);
    let cfg = RedisConfig::cluster(&cluster.urls());
    let symbols = ["AAPL", "MSFT", "EUR/USD"];
    let ticks: Vec<Vec<Tick>> = symbols.iter().map(|s| timed(s, 1..=40, T0)).collect();
    let a = redis_node(&cfg, "node-a").await;
    let (mut ca, _) = Client::ready(a.addr).await;
    ca.send(r#"{"op":"subscribe","symbols":["AAPL","MSFT","EUR/USD"]}"#)
        .await;
    ca.until("subscribed").await;
    let feed = RedisPublisher::connect(&cfg, "feed-1").await.unwrap();
    for list in &ticks {
        publish_all(&feed, &a, &list[..25]).await;
    }
    // Node B starts mid-bar on every symbol, each on its own master or not.
    let b = redis_node(&cfg, "node-b").await;
    let (mut cb, _) = Client::ready(b.addr).await;
    cb.send(r#"{"op":"subscribe","symbols":["AAPL","MSFT","EUR/USD"]}"#)
        .await;
    cb.until("subscribed").await;
    for list in &ticks {
        publish_all(&feed, &a, &list[25..]).await;
        stored_seq(&b, &list[0].symbol, 40).await;
    }
    feed.close().await;
    for (s, list) in symbols.iter().zip(&ticks) {
        for iv in [Interval::S1, Interval::M1] {
            let want = reference_json(list, iv);
            let on_b = backfill(&b, s, iv).await;
            assert_eq!(
                on_b["bars"].as_array().unwrap(),
                &want,
                "{s} {iv} on node B"
            );
            assert_eq!(backfill(&a, s, iv).await, on_b, "{s} {iv} on node A");
        }
    }
    let slots: HashSet<String> = symbols.iter().map(|s| cluster.owner(s).url()).collect();
    assert!(slots.len() > 1, "the symbols live on more than one master");
    a.shutdown().await;
    b.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// On the wire: the `candles` channel of `/v1/ws` and `/v1/sse`.

/// Reads until a `candles` or `candle` message of `symbol`, skipping the rest.
async fn next_bar(c: &mut Client) -> serde_json::Value {
    loop {
        let m = c.next().await;
        if m["type"] == "candles" || m["type"] == "candle" {
            return m;
        }
    }
}

fn bar_json(b: &RefBar, closed: bool) -> serde_json::Value {
    serde_json::json!({"start": b.start, "open": b.open, "high": b.high, "low": b.low,
        "close": b.close, "volume": b.volume, "ticks": b.ticks, "closed": closed})
}

/// A `candle` message's bar fields, as in a `candles` message.
fn fields(m: &serde_json::Value) -> serde_json::Value {
    let mut b = m.clone();
    let o = b.as_object_mut().unwrap();
    for k in ["type", "symbol", "interval"] {
        o.remove(k);
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_gets_its_backfill_then_each_closed_bar_once_and_the_forming_bar_paced() {
    let run = common::start(common::settings()).await;
    let ticks = timed("AAPL", 1..=40, T0);
    for t in &ticks[..20] {
        run.node.bus.publish(t.clone()).unwrap();
    }
    let (mut c, _) = Client::ready(run.addr).await;
    c.send(r#"{"op":"subscribe","id":1,"channel":"candles","interval":"1s","backfill":3,"symbols":["AAPL"]}"#)
        .await;
    let ok = c.until("subscribed").await;
    assert_eq!(
        (&ok["channel"], &ok["interval"]),
        (&"candles".into(), &"1s".into()),
        "{ok}"
    );
    // Backfill: the three newest closed bars, then the forming one.
    let reference_bars = reference(&ticks[..20], Interval::S1.nanos());
    let n = reference_bars.len();
    let mut want: Vec<serde_json::Value> = reference_bars[n - 4..n - 1]
        .iter()
        .map(|b| bar_json(b, true))
        .collect();
    want.push(bar_json(&reference_bars[n - 1], false));
    let first = next_bar(&mut c).await;
    assert_eq!(
        (&first["type"], &first["interval"]),
        (&"candles".into(), &"1s".into()),
        "{first}"
    );
    assert_eq!(first["bars"].as_array().unwrap(), &want);
    // Live: each bar closed once, as the reference makes it; the forming bar paced.
    let started = std::time::Instant::now();
    for t in &ticks[20..] {
        run.node.bus.publish(t.clone()).unwrap();
    }
    let all = reference(&ticks, Interval::S1.nanos());
    let closing: Vec<&RefBar> = all
        .iter()
        .filter(|b| b.start >= reference_bars[n - 1].start)
        .collect();
    let closing = &closing[..closing.len() - 1];
    let (mut closed, mut forming) = (Vec::new(), 0);
    while closed.len() < closing.len() {
        let m = next_bar(&mut c).await;
        assert_eq!(m["type"], "candle", "{m}");
        if m["closed"] == true {
            closed.push(fields(&m));
        } else {
            forming += 1;
        }
    }
    let want: Vec<serde_json::Value> = closing.iter().map(|b| bar_json(b, true)).collect();
    assert_eq!(
        closed, want,
        "every bar closed once, as the reference makes it"
    );
    let paced = started.elapsed().as_millis() as usize / 250 + 2;
    assert!(
        forming <= paced,
        "{forming} forming updates in {:?}",
        started.elapsed()
    );
    // The forming bar arrives at its pace, not closed.
    let m = next_bar(&mut c).await;
    assert_eq!(
        (&m["type"], &m["closed"]),
        (&"candle".into(), &false.into()),
        "{m}"
    );
    assert_eq!(fields(&m), bar_json(all.last().unwrap(), false));
    // Unsubscribed: no more bars.
    c.send(r#"{"op":"unsubscribe","channel":"candles","interval":"1s","symbols":["AAPL"]}"#)
        .await;
    c.until("unsubscribed").await;
    run.node
        .bus
        .publish(common::tick("AAPL", "e1", 41))
        .unwrap();
    assert!(c.try_next(Duration::from_millis(400)).await.is_none());
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_node_gets_the_same_backfill_on_the_wire() {
    let (_redis, cfg) = redis_server();
    let ticks = timed("NVDA", 1..=100, T0);
    let (a, _ca) = watching(&cfg, "node-a", "NVDA").await;
    let feed = RedisPublisher::connect(&cfg, "feed-1").await.unwrap();
    publish_all(&feed, &a, &ticks).await;
    // Node B never received NVDA: its client's backfill comes from the store.
    let b = redis_node(&cfg, "node-b").await;
    let (mut c, _) = Client::ready(b.addr).await;
    c.send(r#"{"op":"subscribe","channel":"candles","interval":"1s","backfill":1000,"symbols":["NVDA"]}"#)
        .await;
    let m = next_bar(&mut c).await;
    assert_eq!(m["type"], "candles", "{m}");
    let want = reference_json(&ticks, Interval::S1);
    assert_eq!(m["bars"].as_array().unwrap(), &want);
    feed.close().await;
    a.shutdown().await;
    b.shutdown().await;
}
