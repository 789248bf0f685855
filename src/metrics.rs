//! Process-wide counters for `/metrics`, and their Prometheus text exposition.
//!
//! Counting is a relaxed atomic add (no lock, nothing per subscriber): the hot paths
//! touch [`global`] directly. Values other layers already keep (hub, node, publisher
//! endpoint) are read at scrape time and handed to [`render`] in a [`Scrape`]. This
//! module imports nothing from the rest of the crate, so every layer may use it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

mod reports;
pub use reports::{ReportWindow, Summary as ReportSummary, WINDOW_MS as REPORT_WINDOW_MS};

/// Upper bounds, in seconds, of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The index of the bucket of [`LATENCY_BUCKETS`] (or `+Inf`, the one after them) that
/// holds `secs`.
fn bucket_of(secs: f64) -> usize {
    LATENCY_BUCKETS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(LATENCY_BUCKETS.len())
}

/// A histogram of durations kept in atomics: one add per bucket hit, no lock.
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl AtomicHistogram {
    /// Records one duration, in nanoseconds.
    pub fn observe_ns(&self, ns: u64) {
        self.buckets[bucket_of(ns as f64 / 1e9)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder sums the buckets itself: each one is passed with its own count.
        let mut count = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
        for (i, upper) in LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .enumerate()
        {
            let n = self.buckets[i].load(Ordering::Relaxed);
            count += n;
            buckets.push((upper, n));
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Where ingested ticks came from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// The feed running inside the node.
    Feed = 0,
    /// The Redis bus (ticks other nodes or feed processes published).
    Redis = 1,
}

/// The gap reasons, in the order of [`Metrics::gaps`].
pub const GAP_REASONS: [&str; 4] = ["slow_consumer", "upstream", "expired", "reset"];

/// Why a message from the bus was dropped, in the order of [`Metrics::bus_dropped`].
pub const BUS_DROPS: [&str; 3] = ["malformed", "wrong_channel", "refused"];

/// Why a symbol became stale, in the order of [`Metrics::stale`].
pub const STALE_REASONS: [&str; 3] = ["bus", "channel", "feed"];

/// Why the server sent `reconnect`, in the order of [`Metrics::reconnects`].
pub const RECONNECT_REASONS: [&str; 2] = ["shutdown", "lifetime"];

/// Close codes counted by [`Metrics::disconnected`]; anything else is counted as `other`.
pub const CLOSE_CODES: [u16; 9] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 4008];

/// Why a request was refused at the door, before any upgrade (token refusals are
/// [`Metrics::auth_refused`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// 429: the source address opened too many new streams this second.
    AddressRate = 0,
    /// 429: the source address holds too many open streams.
    AddressBusy = 1,
    /// 503: the node holds as many open streams as it may.
    NodeBusy = 2,
    /// 403: a browser page of an origin not allowed.
    Origin = 3,
    /// 431: the request head is over the limit.
    HeaderTooLarge = 4,
}

/// The `reason` labels of [`Refused`], in its order; `auth` follows them in the
/// exposition, read from [`Metrics::auth_refused`].
pub const REFUSED_REASONS: [&str; 5] = [
    "address_rate",
    "address_busy",
    "node_busy",
    "origin",
    "header_too_large",
];

/// The process's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Ticks ingested by [`Source`].
    pub ingested: [AtomicU64; 2],
    /// Bytes written to subscribers (WebSocket payloads, SSE chunks).
    pub bytes_out: AtomicU64,
    /// Frames (WebSocket) or chunks (SSE) written to subscribers.
    pub frames_out: AtomicU64,
    /// `gap` messages queued, by reason ([`GAP_REASONS`]).
    pub gaps: [AtomicU64; 4],
    /// Subscriber connections closed, by code ([`CLOSE_CODES`], then `other`).
    pub disconnects: [AtomicU64; CLOSE_CODES.len() + 1],
    /// Inbound messages refused by the rate limit.
    pub rate_limited: AtomicU64,
    /// Requests refused for a missing, bad or insufficient token.
    pub auth_refused: AtomicU64,
    /// Requests refused at the door, by [`Refused`].
    pub refused: [AtomicU64; REFUSED_REASONS.len()],
    /// Reconnections of the bus.
    pub bus_reconnects: AtomicU64,
    /// Messages read from the bus and dropped, by [`BUS_DROPS`] reason.
    pub bus_dropped: [AtomicU64; 3],
    /// Watched symbols routed to another Redis server (a slot moved).
    pub bus_reroutes: AtomicU64,
    /// Symbols that became stale (`status` stale sent), by [`STALE_REASONS`].
    pub stale: [AtomicU64; 3],
    /// Now minus `ts` of the last tick the bus delivered, in nanoseconds.
    pub bus_lag_ns: AtomicU64,
    /// Open subscriber connections over WebSocket.
    pub ws_connections: AtomicI64,
    /// Open subscriber connections over SSE.
    pub sse_connections: AtomicI64,
    /// Now minus the newest tick's `ts` when a frame holding it was written.
    pub write_latency: AtomicHistogram,
    /// What clients report (`report`): one observation per report of its p50, p99 and
    /// max.
    pub client_latency: [AtomicHistogram; 3],
    /// Reports taken.
    pub client_reports: AtomicU64,
    /// Messages the reports counted, summed.
    pub client_messages: AtomicU64,
    /// `reconnect` notices sent, by [`RECONNECT_REASONS`].
    pub reconnects: [AtomicU64; 2],
    /// Connections whose code panicked (each closed with 1011).
    pub panics: AtomicU64,
    /// The reports of the last minute, for `GET /v1/latency`.
    pub client_window: ReportWindow,
}

impl Metrics {
    /// Counts one request refused at the door.
    pub fn refused(&self, why: Refused) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one ingested tick.
    pub fn ingested(&self, from: Source) {
        if !enabled() {
            return;
        }
        self.ingested[from as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one `gap` of reason `reason` (one of [`GAP_REASONS`]).
    pub fn gap(&self, reason: &str) {
        if let Some(i) = GAP_REASONS.iter().position(|r| *r == reason) {
            self.gaps[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one subscriber connection closed with `code`.
    pub fn disconnected(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.disconnects[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one client's latency report: its p50, p99 and max (ms) into their
    /// histograms, and the messages it counted.
    pub fn client_report(&self, p50_ms: f64, p99_ms: f64, max_ms: f64, count: u64) {
        for (h, ms) in self.client_latency.iter().zip([p50_ms, p99_ms, max_ms]) {
            h.observe_ns((ms * 1e6) as u64);
        }
        self.client_reports.fetch_add(1, Ordering::Relaxed);
        self.client_messages.fetch_add(count, Ordering::Relaxed);
        self.client_window.record(p50_ms, p99_ms, max_ms, count);
    }

    /// Counts one write of `bytes` to a subscriber; `newest_ts` is the `ts` of the
    /// newest tick it held, if any (the clock is read only then).
    pub fn wrote(&self, bytes: usize, newest_ts: Option<u64>) {
        if !enabled() {
            return;
        }
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        self.frames_out.fetch_add(1, Ordering::Relaxed);
        if let Some(ts) = newest_ts {
            let now = crate::tick::now_ns();
            self.write_latency.observe_ns(now.saturating_sub(ts));
        }
    }
}

/// Whether the per-message counting is on (`serve --metrics`).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the per-message counting ([`Metrics::ingested`], [`Metrics::wrote`],
/// [`newest_tick_ts`]) on or off for the whole process. On by default.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the per-message counting is on: one relaxed load.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The process's counters.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

/// The `ts` of the newest `tick` message among `msgs` (encoded tick objects start
/// `{"type":"tick"` and hold `"ts":` before the prices), found without parsing; `None`
/// when the counting is off.
pub fn newest_tick_ts<B: AsRef<[u8]>>(msgs: &[B]) -> Option<u64> {
    if !enabled() {
        return None;
    }
    const HEAD: &[u8] = br#"{"type":"tick""#;
    const KEY: &[u8] = br#","ts":"#;
    let m = msgs.iter().rev().find(|m| m.as_ref().starts_with(HEAD))?;
    let m = m.as_ref();
    let at = memchr::memmem::find(m, KEY)? + KEY.len();
    let digits = m[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&m[at..at + digits]).ok()?.parse().ok()
}

/// What the layers above keep themselves, read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    /// Ticks the hub accepted.
    pub hub_ticks: u64,
    /// Messages handed to subscriber queues.
    pub delivered: u64,
    /// Ticks not queued for a slow subscriber (conflated, or overflowed).
    pub conflated: u64,
    /// Ticks accepted from the publisher endpoint.
    pub publisher_ticks: u64,
    /// Open publisher connections.
    pub publisher_connections: u64,
    /// Subscriptions (session, symbol) now.
    pub subscriptions: u64,
    /// Symbols with at least one local subscriber.
    pub watched: u64,
    /// Whether the bus is connected.
    pub bus_up: bool,
    /// Symbols stale now.
    pub stale_symbols: u64,
    /// Output buffered for clients now (queued and being written), bytes.
    pub outbound_bytes: u64,
    /// The bound on it, bytes (0: none).
    pub outbound_bound: u64,
    /// Connections conflated because the bound was reached.
    pub outbound_conflations: u64,
    /// Connections closed (4008) because the bound was reached.
    pub outbound_closes: u64,
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    reg.register(name, help, ConstCounter::new(v));
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    reg.register(name, help, ConstGauge::new(v));
}

type Labels = Vec<(&'static str, String)>;

/// A counter family from fixed label values.
fn labelled(reg: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, u64)>) {
    let family = Family::<Labels, prometheus_client::metrics::counter::Counter>::default();
    for (labels, v) in rows {
        family.get_or_create(&labels).inc_by(v);
    }
    reg.register(name, help, family);
}

/// The exposition (OpenMetrics text, which Prometheus reads) of [`global`] and `s`.
pub fn render(s: &Scrape) -> String {
    let m = global();
    let mut reg = Registry::with_prefix("tickstream");
    register_state(&mut reg, m, s);
    register_flow(&mut reg, m, s);
    register_losses(&mut reg, m);
    register_bus(&mut reg, m, s);
    reg.register(
        "write_latency_seconds",
        "Now minus the newest tick's ts when a frame holding it was written",
        HistogramRef(&m.write_latency),
    );
    register_clients(&mut reg, m);
    register_outbound(&mut reg, m, s);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// One row per counter of `counts`, labelled `key` = the name beside it in `names`.
fn by_label<N: ToString>(
    key: &'static str,
    names: impl IntoIterator<Item = N>,
    counts: &[AtomicU64],
) -> Vec<(Labels, u64)> {
    names
        .into_iter()
        .zip(counts)
        .map(|(n, v)| (vec![(key, n.to_string())], load(v)))
        .collect()
}

/// What the node holds now: its build, open connections, subscriptions.
fn register_state(reg: &mut Registry, m: &Metrics, s: &Scrape) {
    reg.register(
        "build",
        "Build information",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_owned())]),
    );
    let conns = Family::<Labels, prometheus_client::metrics::gauge::Gauge>::default();
    for (t, v) in [
        ("websocket", m.ws_connections.load(Ordering::Relaxed)),
        ("sse", m.sse_connections.load(Ordering::Relaxed)),
        ("publisher", s.publisher_connections as i64),
    ] {
        conns
            .get_or_create(&vec![("transport", t.to_owned())])
            .set(v);
    }
    reg.register("connections", "Open connections by transport", conns);
    gauge(
        reg,
        "subscriptions",
        "Subscriptions (connection, symbol) now",
        s.subscriptions as i64,
    );
    gauge(
        reg,
        "watched_symbols",
        "Symbols with local subscribers",
        s.watched as i64,
    );
    gauge(
        reg,
        "stale_symbols",
        "Symbols whose source is known lost now (status stale)",
        s.stale_symbols as i64,
    );
    labelled(
        reg,
        "stale",
        "Symbols that became stale (status stale sent), by reason",
        by_label("reason", STALE_REASONS, &m.stale),
    );
    gauge(
        reg,
        "tasks",
        "Tasks alive on the node's async runtime now (connections, sessions, the bus, timers)",
        tasks_alive() as i64,
    );
}

/// Tasks alive on the runtime this scrape runs on (0 outside one).
fn tasks_alive() -> usize {
    tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_alive_tasks())
        .unwrap_or(0)
}

/// Ticks on their way through: in by source, through the hub, out to subscribers.
fn register_flow(reg: &mut Registry, m: &Metrics, s: &Scrape) {
    // In the order of `Source`.
    let mut ingested = by_label("source", ["feed", "redis"], &m.ingested);
    ingested.push((vec![("source", "publisher".into())], s.publisher_ticks));
    labelled(reg, "ticks_ingested", "Ticks ingested, by source", ingested);
    counter(
        reg,
        "hub_ticks",
        "Ticks the hub accepted (all sources)",
        s.hub_ticks,
    );
    counter(
        reg,
        "ticks_delivered",
        "Messages handed to subscriber queues",
        s.delivered,
    );
    counter(
        reg,
        "ticks_conflated",
        "Ticks not queued for a slow subscriber",
        s.conflated,
    );
    counter(
        reg,
        "bytes_out",
        "Bytes written to subscribers",
        load(&m.bytes_out),
    );
    counter(
        reg,
        "frames_out",
        "Frames (WebSocket) or chunks (SSE) written to subscribers",
        load(&m.frames_out),
    );
}

/// What did not get through: gaps, closes, refused messages and requests.
fn register_losses(reg: &mut Registry, m: &Metrics) {
    labelled(
        reg,
        "gaps",
        "gap messages queued, by reason",
        by_label("reason", GAP_REASONS, &m.gaps),
    );
    let codes = CLOSE_CODES.iter().map(u16::to_string);
    labelled(
        reg,
        "disconnects",
        "Subscriber connections closed, by close code",
        by_label("code", codes.chain(["other".to_owned()]), &m.disconnects),
    );
    counter(
        reg,
        "rate_limited",
        "Inbound messages refused by the rate limit",
        load(&m.rate_limited),
    );
    counter(
        reg,
        "auth_refused",
        "Requests refused for a missing, bad or insufficient token",
        load(&m.auth_refused),
    );
    let mut refused = by_label("reason", REFUSED_REASONS, &m.refused);
    refused.push((vec![("reason", "auth".to_owned())], load(&m.auth_refused)));
    labelled(
        reg,
        "refused",
        "Requests refused before any upgrade, by reason",
        refused,
    );
}

/// The bus between nodes: reconnections, whether it is up, how far behind it runs.
fn register_bus(reg: &mut Registry, m: &Metrics, s: &Scrape) {
    counter(
        reg,
        "bus_reconnects",
        "Reconnections of the bus",
        load(&m.bus_reconnects),
    );
    gauge(
        reg,
        "bus_up",
        "1 while the bus is connected, else 0",
        i64::from(s.bus_up),
    );
    labelled(
        reg,
        "bus_dropped",
        "Messages read from the bus and dropped, by reason",
        by_label("reason", BUS_DROPS, &m.bus_dropped),
    );
    counter(
        reg,
        "bus_reroutes",
        "Watched symbols routed to another Redis server (a slot moved)",
        load(&m.bus_reroutes),
    );
    reg.register(
        "bus_lag_seconds",
        "Now minus ts of the last tick the bus delivered",
        ConstGauge::new(load(&m.bus_lag_ns) as f64 / 1e9),
    );
}

/// What clients report of the latency they see (`report`).
fn register_clients(reg: &mut Registry, m: &'static Metrics) {
    for (q, h) in ["p50", "p99", "max"].iter().zip(&m.client_latency) {
        reg.register(
            format!("client_latency_{q}_seconds"),
            format!("The {q} latency clients reported, one observation per report"),
            HistogramRef(h),
        );
    }
    counter(
        reg,
        "client_latency_reports",
        "Latency reports clients sent",
        load(&m.client_reports),
    );
    counter(
        reg,
        "client_latency_messages",
        "Messages the clients' latency reports counted",
        load(&m.client_messages),
    );
}

/// Buffered output against its bound, what the bound's policy did, planned
/// reconnects and contained faults.
fn register_outbound(reg: &mut Registry, m: &Metrics, s: &Scrape) {
    gauge(
        reg,
        "outbound_buffered_bytes",
        "Output buffered for clients now: queued messages (per queue) and frames being written",
        s.outbound_bytes as i64,
    );
    gauge(
        reg,
        "outbound_bound_bytes",
        "The bound on buffered output (max-outbound-bytes; 0: none)",
        s.outbound_bound as i64,
    );
    labelled(
        reg,
        "outbound_bound_actions",
        "Connections the bound on buffered output acted on, by action",
        vec![
            (vec![("action", "conflate".into())], s.outbound_conflations),
            (vec![("action", "close".into())], s.outbound_closes),
        ],
    );
    labelled(
        reg,
        "reconnects_sent",
        "reconnect notices sent, by reason",
        by_label("reason", RECONNECT_REASONS, &m.reconnects),
    );
    counter(
        reg,
        "connection_panics",
        "Connections whose code panicked, each closed with 1011",
        load(&m.panics),
    );
}

/// A histogram registered by reference for one scrape.
#[derive(Debug)]
struct HistogramRef(&'static AtomicHistogram);

impl EncodeMetric for HistogramRef {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_newest_ticks_ts_without_parsing() {
        let msgs = [
            br#"{"type":"tick","symbol":"A","seq":1,"ts":5,"bid":1}"#.to_vec(),
            br#"{"type":"tick","symbol":"A","seq":2,"ts":1234,"bid":1}"#.to_vec(),
            br#"{"type":"gap","symbol":"A","from":3,"to":4}"#.to_vec(),
        ];
        assert_eq!(newest_tick_ts(&msgs), Some(1234));
        assert_eq!(newest_tick_ts(&msgs[2..]), None);
    }

    #[test]
    fn client_reports_show_in_the_exposition() {
        let m = global();
        let before = load(&m.client_reports);
        m.client_report(0.2, 3.0, 40.0, 500);
        assert_eq!(load(&m.client_reports), before + 1);
        let text = render(&Scrape::default());
        for name in [
            "tickstream_client_latency_p50_seconds_bucket{le=\"0.00025\"}",
            "tickstream_client_latency_p99_seconds_count",
            "tickstream_client_latency_max_seconds_sum",
            "tickstream_client_latency_reports_total",
            "tickstream_client_latency_messages_total",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn the_histogram_counts_into_cumulative_buckets() {
        let h = AtomicHistogram::default();
        h.observe_ns(50_000);
        h.observe_ns(2_000_000);
        h.observe_ns(60_000_000_000);
        assert_eq!(h.count(), 3);
        assert_eq!(h.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(h.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed), 1);
    }
}
