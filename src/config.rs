//! Settings of `tickstream serve`: flags, `TICKSTREAM_*` environment variables and a TOML
//! file, in that order of precedence, over built-in defaults.
//!
//! The layering is generic: clap reads flags and the environment into [`ServeArgs`], whose
//! fields are all optional; what was given there and what the file gives become two
//! tables of named values, the first laid over the second, and the result is read into
//! [`Settings`], whose missing fields come from [`Settings::default`] — the one place that
//! states each default. The Redis options are one group, [`RedisArgs`], shared with the
//! feed commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::bus::redis::{RedisConfig, RedisMode};
use crate::hub::SlowPolicy;

/// A duration written like `500ms`, `30s` or `5m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write it like 500ms, 30s or 5m"))
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

/// Reads a duration written like `Dur` into a plain [`Duration`].
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Dur::deserialize(d).map(|d| d.0)
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a node's ticks come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedSpec {
    /// The built-in synthetic generator.
    Synthetic,
    /// A recorded session, replayed.
    Replay(PathBuf),
    /// No feed of its own: ticks arrive over the bus or the publisher endpoint.
    None,
}

impl FromStr for FeedSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "synthetic" => Ok(FeedSpec::Synthetic),
            "none" => Ok(FeedSpec::None),
            _ => match s.strip_prefix("replay:") {
                Some(p) if !p.is_empty() => Ok(FeedSpec::Replay(PathBuf::from(p))),
                _ => Err(format!("unknown feed {s:?} (synthetic|replay:FILE|none)")),
            },
        }
    }
}

impl std::fmt::Display for FeedSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedSpec::Synthetic => f.write_str("synthetic"),
            FeedSpec::Replay(p) => write!(f, "replay:{}", p.display()),
            FeedSpec::None => f.write_str("none"),
        }
    }
}

impl Serialize for FeedSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn slow_policy_name<S: serde::Serializer>(p: &Option<SlowPolicy>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(SlowPolicy::Conflate) => s.serialize_str("conflate"),
        Some(SlowPolicy::Disconnect) => s.serialize_str("disconnect"),
        None => s.serialize_none(),
    }
}

fn display_opt<T: std::fmt::Display, S: serde::Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

impl<'de> Deserialize<'de> for FeedSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Who may read `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MetricsAuth {
    /// Anyone who reaches the port.
    #[default]
    Open,
    /// `Authorization: Bearer` with the token kept in this file.
    Token(PathBuf),
    /// A JWT from the node's keys that grants the `metrics` role.
    Jwt,
}

impl FromStr for MetricsAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(MetricsAuth::Open),
            "jwt" => Ok(MetricsAuth::Jwt),
            _ => match s.strip_prefix("token:") {
                Some(p) if !p.is_empty() => Ok(MetricsAuth::Token(PathBuf::from(p))),
                _ => Err(format!("unknown metrics auth {s:?} (open|token:FILE|jwt)")),
            },
        }
    }
}

impl std::fmt::Display for MetricsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAuth::Open => f.write_str("open"),
            MetricsAuth::Token(p) => write!(f, "token:{}", p.display()),
            MetricsAuth::Jwt => f.write_str("jwt"),
        }
    }
}

impl<'de> Deserialize<'de> for MetricsAuth {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The Redis options, one group shared by `serve` and the feed commands (`#[command(flatten)]`
/// in each); in a TOML file the same names as keys (`redis_prefix = "md:"`). Every field is
/// optional: [`RedisArgs::config`] fills what is not given from [`RedisConfig::new`].
#[derive(Args, Clone, Debug, Default, Deserialize, Serialize)]
pub struct RedisArgs {
    /// The Redis server of the bus: `redis://host:port`, `redis://user:password@host:port`
    /// for an ACL user, `rediss://…` for TLS. A node on Redis gets its ticks only from
    /// there, and its default feed becomes `none`. Default: in-process bus.
    #[arg(
        long,
        env = "TICKSTREAM_REDIS",
        hide_env_values = true,
        value_name = "URL",
        conflicts_with = "redis_cluster"
    )]
    pub redis: Option<String>,

    /// A Redis Cluster instead (sharded Pub/Sub, Redis 7), given by seed URLs; the scheme and
    /// credentials of the seed are used for every master.
    #[arg(
        long,
        env = "TICKSTREAM_REDIS_CLUSTER",
        hide_env_values = true,
        value_name = "URL[,URL…]"
    )]
    pub redis_cluster: Option<String>,

    /// Prefix of every Redis key and channel. Default: tickstream:.
    #[arg(long, env = "TICKSTREAM_REDIS_PREFIX", value_name = "PREFIX")]
    pub redis_prefix: Option<String>,

    /// Ticks kept per symbol in the Redis `hist:` stream (resume across nodes). Default: 10000.
    #[arg(long, env = "TICKSTREAM_REDIS_HISTORY", value_name = "N")]
    pub redis_history: Option<usize>,

    /// Closed bars kept per symbol and interval in the Redis `bars:` sets (candle
    /// backfill across nodes and restarts), 1 to 100000. Default: 1000.
    #[arg(long, env = "TICKSTREAM_REDIS_BARS", value_name = "N")]
    pub redis_bars: Option<usize>,

    /// Book messages kept (about) per symbol in the Redis `bookhist:` stream, so that a
    /// client resuming its book on another node gets one netted update, 1 to 1000000.
    /// Default: 1024.
    #[arg(long, env = "TICKSTREAM_REDIS_BOOK_HISTORY", value_name = "N")]
    pub redis_book_history: Option<usize>,

    /// Longest wait between Redis reconnection attempts. Default: 2s.
    #[arg(long, env = "TICKSTREAM_REDIS_BACKOFF_MAX", value_name = "DURATION")]
    pub redis_backoff_max: Option<Dur>,

    /// Redis connect and response timeout, and the health-check interval when given.
    /// Default: 2s (health check every 1s).
    #[arg(long, env = "TICKSTREAM_REDIS_TIMEOUT", value_name = "DURATION")]
    pub redis_timeout: Option<Dur>,

    /// Expiry of a feed's claim on its symbols in Redis. Default: 10s.
    #[arg(long, env = "TICKSTREAM_REDIS_LEASE", value_name = "DURATION")]
    pub redis_lease: Option<Dur>,

    /// PEM file of the CA(s) that signed the Redis server's certificate, for `rediss://`
    /// URLs. Default: the system's trusted roots.
    #[arg(long, env = "TICKSTREAM_REDIS_CA_FILE", value_name = "FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Interval of a feed's heartbeat; nodes take a feed silent for three intervals for
    /// lost and mark its symbols stale. Default: 500ms.
    #[arg(long, env = "TICKSTREAM_REDIS_HEARTBEAT", value_name = "DURATION")]
    pub redis_heartbeat: Option<Dur>,

    /// Largest message a node reads from Redis, in bytes; a larger one is dropped unread
    /// and counted. Default: 65536.
    #[arg(long, env = "TICKSTREAM_REDIS_MAX_PAYLOAD", value_name = "BYTES")]
    pub redis_max_payload: Option<usize>,
}

impl RedisArgs {
    /// The Redis bus these options name, if any, checked.
    pub fn config(&self) -> Result<Option<RedisConfig>, ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        let mode = match (&self.redis, &self.redis_cluster) {
            (Some(_), Some(_)) => return bad("give redis or redis-cluster, not both"),
            (Some(url), None) => RedisMode::Single(url.trim().to_owned()),
            (None, Some(list)) => RedisMode::Cluster(
                list.split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            (None, None) => {
                if self.redis_ca_file.is_some() {
                    return bad("redis-ca-file needs --redis or --redis-cluster");
                }
                return Ok(None);
            }
        };
        let mut c = RedisConfig::new(mode);
        if let Some(p) = &self.redis_prefix {
            c.prefix = p.clone();
        }
        if let Some(h) = self.redis_history {
            c.history = h;
        }
        if let Some(n) = self.redis_bars {
            c.bars = n;
        }
        if let Some(n) = self.redis_book_history {
            if !(1..=1_000_000).contains(&n) {
                return bad("redis-book-history must be 1 to 1000000");
            }
            c.book_history = n;
        }
        if let Some(d) = self.redis_backoff_max {
            c.backoff_max = d.0;
        }
        if let Some(d) = self.redis_timeout {
            c.timeout = d.0;
            c.ping_interval = d.0;
        }
        if let Some(d) = self.redis_lease {
            c.lease = d.0;
        }
        c.ca_file = self.redis_ca_file.clone();
        if let Some(d) = self.redis_heartbeat {
            c.heartbeat = d.0;
        }
        if let Some(n) = self.redis_max_payload {
            c.max_payload = n;
        }
        check_urls(&c)?;
        check_bounds(&c)?;
        Ok(Some(c))
    }
}

/// Checks the URLs of a Redis configuration: schemes, syntax, TLS with a CA file.
fn check_urls(c: &RedisConfig) -> Result<(), ConfigError> {
    let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
    let urls: Vec<&String> = match &c.mode {
        RedisMode::Single(u) => vec![u],
        RedisMode::Cluster(v) => v.iter().collect(),
    };
    if urls.is_empty() {
        return bad("--redis-cluster needs at least one URL");
    }
    for u in &urls {
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            return Err(ConfigError::Invalid(format!(
                    "Redis URL {u:?} must start with redis:// or rediss:// (e.g. redis://127.0.0.1:6379)"
                )));
        }
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(u.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "Redis URL {}: {e}",
                crate::bus::redis::shards::host_port(u)
            )));
        }
    }
    if c.ca_file.is_some() && !urls.iter().all(|u| u.starts_with("rediss://")) {
        return bad("redis-ca-file is for TLS: give rediss:// URLs with it");
    }
    Ok(())
}

/// The most closed bars kept per symbol and interval, in memory or in Redis.
const MAX_BARS: usize = 100_000;

/// Checks the names, sizes and times of a Redis configuration.
fn check_bounds(c: &RedisConfig) -> Result<(), ConfigError> {
    let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
    if c.prefix.contains(['{', '}', ' ']) {
        return bad("redis-prefix must not contain braces or spaces");
    }
    if c.history == 0 {
        return bad("redis-history must be at least 1");
    }
    if !(1..=MAX_BARS).contains(&c.bars) {
        return bad("redis-bars must be from 1 to 100000");
    }
    if c.timeout.is_zero() || c.lease < Duration::from_millis(100) {
        return bad("redis-timeout must be longer than 0 and redis-lease at least 100ms");
    }
    if c.heartbeat < Duration::from_millis(10) || c.heartbeat > Duration::from_secs(60) {
        return bad("redis-heartbeat must be from 10ms to 60s");
    }
    if c.max_payload < 1024 {
        return bad("redis-max-payload must be at least 1024 bytes");
    }
    Ok(())
}

/// Options of `tickstream serve`. Every one may also come from the environment
/// (`TICKSTREAM_<NAME>`) or the TOML file given by `--config` (key `<name>` with `_`).
///
/// Only what is given is kept (every field is optional); [`ServeArgs::resolve`] layers it
/// over the file and the defaults of [`Settings::default`].
#[derive(Args, Debug, Default, Deserialize, Serialize)]
pub struct ServeArgs {
    /// TOML file with any of these options (keys like `max_symbols = 512`).
    #[arg(long, env = "TICKSTREAM_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on. Default: 127.0.0.1:8080.
    #[arg(long, env = "TICKSTREAM_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Name of this node, sent in `welcome`. Default: the host name and port.
    #[arg(long, env = "TICKSTREAM_NODE")]
    pub node: Option<String>,

    /// Where ticks come from: synthetic, replay:FILE or none. Default: synthetic.
    #[arg(
        long,
        env = "TICKSTREAM_FEED",
        value_name = "synthetic|replay:FILE|none"
    )]
    pub feed: Option<FeedSpec>,

    /// Symbol universe (CSV, see feeds/README.md). Default: the bundled feeds/universe.csv.
    #[arg(long, env = "TICKSTREAM_UNIVERSE", value_name = "FILE")]
    pub universe: Option<PathBuf>,

    /// Synthetic feed: total ticks per second over all symbols. Default: 1000.
    #[arg(long, env = "TICKSTREAM_RATE", value_name = "N")]
    pub rate: Option<f64>,

    /// Synthetic feed: random seed; the same seed gives the same ticks. Default: random.
    #[arg(long, env = "TICKSTREAM_SEED")]
    pub seed: Option<u64>,

    /// Synthetic feed: everything due within this interval is handed to the hub at once,
    /// so each subscriber is woken once for it (ticks keep the time they were made); 0
    /// hands each tick over when it is due. At most 1s. Default: 500us.
    #[arg(long, env = "TICKSTREAM_FEED_BATCH", value_name = "DURATION")]
    pub feed_batch: Option<Dur>,

    /// Replay feed: speed factor (0.5, 1, 10) or `max`. Default: 1 (recorded spacing).
    #[arg(long, env = "TICKSTREAM_REPLAY_SPEED", value_name = "X|max")]
    #[serde(serialize_with = "display_opt")]
    pub replay_speed: Option<crate::feed::Speed>,

    /// Replay feed: start again at the end, each pass with a new epoch. Default: false.
    #[arg(long, env = "TICKSTREAM_REPLAY_LOOP", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub replay_loop: Option<bool>,

    /// Publisher endpoint (/v1/publish): largest inbound message in bytes; larger closes
    /// with 1009. Default: 1048576.
    #[arg(long, env = "TICKSTREAM_PUBLISH_MAX_MSG_BYTES", value_name = "BYTES")]
    pub publish_max_msg_bytes: Option<usize>,

    /// Publisher endpoint: frames per second per connection (each frame may hold many
    /// ticks); past it the node reads more slowly, dropping nothing. Default: 20000.
    #[arg(long, env = "TICKSTREAM_PUBLISH_RATE_LIMIT", value_name = "N")]
    pub publish_rate_limit: Option<u32>,

    /// Recent ticks kept per symbol for `resume`. Default: 1024.
    #[arg(long, env = "TICKSTREAM_HISTORY", value_name = "N")]
    pub history: Option<usize>,

    /// Book messages whose changes are kept per symbol, so that a resuming, paced or
    /// slow book subscriber is sent one update netting out what it lacks. Default: 1024.
    #[arg(long, env = "TICKSTREAM_BOOK_HISTORY", value_name = "N")]
    pub book_history: Option<usize>,

    /// Most levels a side a book may hold; a published book or update that would pass
    /// it is refused. Default: 1000.
    #[arg(long, env = "TICKSTREAM_BOOK_MAX_LEVELS", value_name = "N")]
    pub book_max_levels: Option<usize>,

    /// Closed bars kept in memory per symbol and interval, the most a candle backfill
    /// sends, 1 to 100000. Default: 1000.
    #[arg(long, env = "TICKSTREAM_CANDLES_KEEP", value_name = "N")]
    pub candles_keep: Option<usize>,

    /// Interval of server Pings. Default: 30s.
    #[arg(long, env = "TICKSTREAM_HEARTBEAT", value_name = "DURATION")]
    pub heartbeat: Option<Dur>,

    /// A connection silent for heartbeat + this grace is closed. Default: 10s.
    #[arg(long, env = "TICKSTREAM_HEARTBEAT_GRACE", value_name = "DURATION")]
    pub heartbeat_grace: Option<Dur>,

    /// Largest inbound message in bytes; larger closes with 1009. Default: 65536.
    #[arg(long, env = "TICKSTREAM_MAX_MSG_BYTES", value_name = "BYTES")]
    pub max_msg_bytes: Option<usize>,

    /// Most frames one inbound message may come in, on every endpoint; more closes
    /// with 1008. Also sets the frame budget of a subscriber connection: rate-limit ×
    /// max-fragments frames per second. Default: 1024.
    #[arg(long, env = "TICKSTREAM_MAX_FRAGMENTS", value_name = "N")]
    pub max_fragments: Option<usize>,

    /// Most empty (zero-length) frames one inbound message may come in; more closes
    /// with 1008. Default: 16.
    #[arg(long, env = "TICKSTREAM_MAX_EMPTY_FRAGMENTS", value_name = "N")]
    pub max_empty_fragments: Option<usize>,

    /// Inbound messages per second per connection (token bucket refill). Default: 50.
    #[arg(long, env = "TICKSTREAM_RATE_LIMIT", value_name = "N")]
    pub rate_limit: Option<u32>,

    /// Inbound burst per connection (token bucket size). Default: 100.
    #[arg(long, env = "TICKSTREAM_RATE_BURST", value_name = "N")]
    pub rate_burst: Option<u32>,

    /// Rate-limited messages in a row after which the connection closes with 1008. Default: 20.
    #[arg(long, env = "TICKSTREAM_RATE_STRIKES", value_name = "N")]
    pub rate_strikes: Option<u32>,

    /// Most symbols one connection may subscribe (per channel and interval; the symbols
    /// a pattern matches count too). Default: 1024.
    #[arg(long, env = "TICKSTREAM_MAX_SYMBOLS", value_name = "N")]
    pub max_symbols: Option<usize>,

    /// Most patterns (`*`, `PREFIX*`) one connection may hold at once. Default: 32.
    #[arg(long, env = "TICKSTREAM_MAX_PATTERNS", value_name = "N")]
    pub max_patterns: Option<usize>,

    /// Outbound queue per connection, in messages. Default: 4096.
    #[arg(long, env = "TICKSTREAM_QUEUE", value_name = "N")]
    pub queue: Option<usize>,

    /// What to do when a client's queue is full: conflate (gap + newest tick per symbol)
    /// or disconnect (close 4008). Default: conflate.
    #[arg(
        long,
        env = "TICKSTREAM_SLOW_POLICY",
        value_name = "conflate|disconnect"
    )]
    #[serde(serialize_with = "slow_policy_name")]
    pub slow_policy: Option<SlowPolicy>,

    /// A write to a client that takes longer than this drops the connection. Default: 10s.
    #[arg(long, env = "TICKSTREAM_SEND_TIMEOUT", value_name = "DURATION")]
    pub send_timeout: Option<Dur>,

    /// Kernel send buffer per client socket, in bytes; bounds the memory a stalled client
    /// can hold in the kernel. Default: the OS default (autotuned).
    #[arg(long, env = "TICKSTREAM_SEND_BUFFER", value_name = "BYTES")]
    pub send_buffer: Option<usize>,

    /// Output the node may hold buffered for its clients in all, in bytes: queued
    /// messages (each counted in every queue it is in) and frames being written. Past
    /// it the connections holding the most are conflated, then closed with 4008, largest
    /// first (under --slow-policy disconnect: closed at once; see --outbound-floor); 0:
    /// no bound. Default: a quarter of the memory the node may use (its cgroup limit,
    /// else the RAM), at least 16777216 (16 MiB), at most 268435456 (256 MiB).
    #[arg(long, env = "TICKSTREAM_MAX_OUTBOUND_BYTES", value_name = "BYTES")]
    pub max_outbound_bytes: Option<u64>,

    /// A connection holding less than this many bytes of output (queued and being
    /// written) is never conflated or closed for --max-outbound-bytes. Default: 65536.
    #[arg(long, env = "TICKSTREAM_OUTBOUND_FLOOR", value_name = "BYTES")]
    pub outbound_floor: Option<u64>,

    /// On SIGINT/SIGTERM, how long clients get to be closed before exit (the reconnect
    /// notice included). Default: 5s.
    #[arg(long, env = "TICKSTREAM_DRAIN", value_name = "DURATION")]
    pub drain: Option<Dur>,

    /// Before the server closes a connection it chose to close (shutdown, the connection
    /// lifetime), it sends `reconnect` with `in_ms` of this and keeps streaming that long;
    /// 0s closes at once. Shorter than --drain. Default: 4s, or four fifths of --drain
    /// when that is shorter.
    #[arg(long, env = "TICKSTREAM_RECONNECT_NOTICE", value_name = "DURATION")]
    pub reconnect_notice: Option<Dur>,

    /// Each connection is closed (1001, after its reconnect notice) once it has been open
    /// this long, give or take 10 % drawn per connection, so that connections opened
    /// together do not leave together; 0s: never. At least twice --reconnect-notice.
    /// Default: 0s.
    #[arg(
        long,
        env = "TICKSTREAM_MAX_CONNECTION_LIFETIME",
        value_name = "DURATION"
    )]
    pub max_connection_lifetime: Option<Dur>,

    /// Allow plain ws on a non-loopback address (behind a TLS-terminating balancer); not
    /// needed with --tls-cert.
    #[arg(long, env = "TICKSTREAM_ALLOW_PLAINTEXT_PUBLIC", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub allow_plaintext_public: Option<bool>,

    /// PEM certificate chain (leaf first) to serve every endpoint over TLS (https, wss);
    /// needs --tls-key. Default: plain http and ws.
    #[arg(long, env = "TICKSTREAM_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1). Default: none.
    #[arg(long, env = "TICKSTREAM_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// With TLS: a connection that has not finished its TLS handshake this long after
    /// being accepted is dropped. Default: 10s.
    #[arg(
        long,
        env = "TICKSTREAM_TLS_HANDSHAKE_TIMEOUT",
        value_name = "DURATION"
    )]
    pub tls_handshake_timeout: Option<Dur>,

    /// A connection whose HTTP request headers have not all arrived this long after it
    /// started sending them (or after it was accepted) is closed. Default: 10s.
    #[arg(long, env = "TICKSTREAM_HEADER_TIMEOUT", value_name = "DURATION")]
    pub header_timeout: Option<Dur>,

    /// File holding the HS256 secret (32+ bytes) that signs client JWTs; enables auth.
    /// Default: no auth.
    #[arg(long, env = "TICKSTREAM_JWT_SECRET_FILE", value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Clock skew allowed when checking a token's expiry and not-before. Default: 30s.
    #[arg(long, env = "TICKSTREAM_JWT_LEEWAY", value_name = "DURATION")]
    pub jwt_leeway: Option<Dur>,

    /// A key that verifies client JWTs, `[KID=]FILE`: a PEM public key (RSA: RS256,
    /// P-256: ES256) or a 32+ byte secret (HS256); enables auth. Repeat it (or separate
    /// with commas) for several keys; tokens pick theirs by `kid`. Default: none.
    #[arg(
        id = "jwt_key",
        long = "jwt-key",
        env = "TICKSTREAM_JWT_KEY",
        value_name = "[KID=]FILE",
        value_delimiter = ','
    )]
    #[serde(rename = "jwt_key")]
    pub jwt_keys: Option<Vec<crate::auth::KeySpec>>,

    /// Directory of JWT verification keys, each file one key named by its file name
    /// without extension as `kid`; enables auth. Re-read on reload. Default: none.
    #[arg(long, env = "TICKSTREAM_JWT_KEY_DIR", value_name = "DIR")]
    pub jwt_key_dir: Option<PathBuf>,

    /// How often TLS and JWT key files are checked for changes (they are reloaded when
    /// changed, and on SIGHUP); 0s checks only on SIGHUP. Default: 5s.
    #[arg(long, env = "TICKSTREAM_RELOAD_POLL", value_name = "DURATION")]
    pub reload_poll: Option<Dur>,

    #[command(flatten)]
    #[serde(flatten)]
    pub redis: RedisArgs,

    /// Id of this node's feed in Redis lease keys. Default: the node name and process id.
    #[arg(long, env = "TICKSTREAM_FEED_ID", value_name = "ID")]
    pub feed_id: Option<String>,

    /// After the server sends a WebSocket Close, how long it waits for the client's Close
    /// or EOF (dropping what arrives) before closing the connection. Default: 2s.
    #[arg(long, env = "TICKSTREAM_CLOSE_LINGER", value_name = "DURATION")]
    pub close_linger: Option<Dur>,

    /// Largest HTTP request head (request line and headers) in bytes, at least 8192;
    /// larger is refused with 431. Default: 16384.
    #[arg(long, env = "TICKSTREAM_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,

    /// Origins (like `https://app.example.com`, comma-separated) whose browser pages may
    /// open WebSockets here; another Origin is refused with 403. Same-origin pages and
    /// clients that send no Origin are always allowed. Default: every origin.
    #[arg(
        long,
        env = "TICKSTREAM_ALLOWED_ORIGINS",
        value_name = "ORIGIN[,ORIGIN…]"
    )]
    pub allowed_origins: Option<String>,

    /// Open streams (`/v1/ws`, `/v1/sse`, `/v1/publish`) one source address may hold;
    /// past it a new one is refused with 429 and `Retry-After`. 0: no cap. Default: 0.
    #[arg(long, env = "TICKSTREAM_MAX_CONNS_PER_ADDR", value_name = "N")]
    pub max_conns_per_addr: Option<u32>,

    /// New streams one source address may open per second (also the burst); past it a
    /// request is refused with 429 and `Retry-After`. 0: no cap. Default: 0.
    #[arg(long, env = "TICKSTREAM_MAX_NEW_CONNS_PER_ADDR", value_name = "N")]
    pub max_new_conns_per_addr: Option<u32>,

    /// Open streams the node holds in all; past it a new one is refused with 503 and
    /// `Retry-After`. 0: no cap. Default: 0.
    #[arg(long, env = "TICKSTREAM_MAX_CONNS", value_name = "N")]
    pub max_conns: Option<u32>,

    /// The `Retry-After` sent when a stream is refused for a cap on open streams (the
    /// per-second quota sends the time until it allows one). Default: 5s.
    #[arg(long, env = "TICKSTREAM_RETRY_AFTER", value_name = "DURATION")]
    pub retry_after: Option<Dur>,

    /// Proxies (addresses and CIDRs, comma-separated) whose `X-Forwarded-For` names the
    /// client: the right-most address in it that is not one of them. From any other
    /// peer the header is ignored. Default: none.
    #[arg(long, env = "TICKSTREAM_TRUSTED_PROXIES", value_name = "ADDR|CIDR[,…]")]
    pub trusted_proxies: Option<String>,

    /// Who may read `/metrics`: `open`, `token:FILE` (`Authorization: Bearer` with the
    /// token in FILE, 16+ bytes) or `jwt` (a token from the JWT keys with the `metrics`
    /// role). Independent of the streams' auth. Default: open.
    #[arg(long, env = "TICKSTREAM_METRICS_AUTH", value_name = "MODE")]
    #[serde(serialize_with = "display_opt")]
    pub metrics_auth: Option<MetricsAuth>,

    /// Log filter (error, warn, info, debug, trace or a tracing directive). Default: RUST_LOG, else info.
    #[arg(long, env = "TICKSTREAM_LOG", value_name = "FILTER")]
    pub log: Option<String>,

    /// Count ticks, bytes and frames on the hot path and answer `/metrics`; with false the
    /// per-message counting is skipped and `/metrics` answers 404. Default: true.
    #[arg(long, env = "TICKSTREAM_METRICS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub metrics: Option<bool>,
}

/// Resolved settings of a node. [`Settings::default`] holds every default, stated once;
/// the layered options are read into it by name.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Listening address.
    pub listen: SocketAddr,
    /// Node name.
    #[serde(skip)]
    pub node: String,
    /// Feed.
    #[serde(skip)]
    pub feed: FeedSpec,
    /// Universe file, or the bundled one.
    pub universe: Option<PathBuf>,
    /// Synthetic rate, ticks per second.
    pub rate: f64,
    /// Synthetic seed.
    pub seed: u64,
    /// Synthetic feed batch interval.
    #[serde(deserialize_with = "duration")]
    pub feed_batch: Duration,
    /// Replay feed speed.
    pub replay_speed: crate::feed::Speed,
    /// Replay feed loops.
    pub replay_loop: bool,
    /// Largest inbound message on the publisher endpoint.
    pub publish_max_msg_bytes: usize,
    /// Frames per second per publisher connection.
    pub publish_rate_limit: u32,
    /// History ring length per symbol.
    pub history: usize,
    /// Book messages whose changes are kept per symbol.
    pub book_history: usize,
    /// Most levels a side of a book.
    pub book_max_levels: usize,
    /// Closed bars kept per symbol and interval.
    pub candles_keep: usize,
    /// Ping interval.
    #[serde(deserialize_with = "duration")]
    pub heartbeat: Duration,
    /// Grace after the heartbeat interval.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_grace: Duration,
    /// Largest inbound message.
    pub max_msg_bytes: usize,
    /// Most frames per inbound message.
    pub max_fragments: usize,
    /// Most empty frames per inbound message.
    pub max_empty_fragments: usize,
    /// Inbound messages per second.
    pub rate_limit: u32,
    /// Inbound burst.
    pub rate_burst: u32,
    /// Rate-limited messages in a row before close 1008.
    pub rate_strikes: u32,
    /// Symbols per connection.
    pub max_symbols: usize,
    /// Patterns per connection.
    pub max_patterns: usize,
    /// Outbound queue per connection.
    pub queue: usize,
    /// Slow-consumer policy.
    pub slow_policy: SlowPolicy,
    /// Write timeout per frame.
    #[serde(deserialize_with = "duration")]
    pub send_timeout: Duration,
    /// Kernel send buffer per client socket (None: OS default).
    pub send_buffer: Option<usize>,
    /// Node-wide bound on buffered output, bytes (0: none).
    pub max_outbound_bytes: u64,
    /// Connections holding less output than this are never acted on for the bound.
    pub outbound_floor: u64,
    /// Shutdown drain time.
    #[serde(deserialize_with = "duration")]
    pub drain: Duration,
    /// The `in_ms` of `reconnect`: how long a connection keeps streaming after it
    /// (zero: closed without notice).
    #[serde(deserialize_with = "duration")]
    pub reconnect_notice: Duration,
    /// Connection lifetime before jitter (zero: unlimited).
    #[serde(deserialize_with = "duration")]
    pub max_connection_lifetime: Duration,
    /// Test builds only: a session panics when it receives a text message equal to
    /// this (its reader), or is about to send a message about this symbol (its
    /// writer). Set by tests, never by a flag.
    #[cfg(feature = "fault-hooks")]
    #[serde(skip)]
    pub fault_panic_on: Option<String>,
    /// Plain ws allowed on a public address.
    pub allow_plaintext_public: bool,
    /// TLS certificate chain file; TLS is on when set (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key file.
    pub tls_key: Option<PathBuf>,
    /// Longest time a TLS handshake may take after accept.
    #[serde(deserialize_with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// Longest time the request headers may take to arrive.
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// JWT secret file; auth is on when set.
    pub jwt_secret_file: Option<PathBuf>,
    /// Clock skew allowed on token expiry.
    #[serde(deserialize_with = "duration")]
    pub jwt_leeway: Duration,
    /// JWT verification key files (`--jwt-key`).
    #[serde(rename = "jwt_key")]
    pub jwt_keys: Vec<crate::auth::KeySpec>,
    /// JWT verification key directory.
    pub jwt_key_dir: Option<PathBuf>,
    /// How often key and certificate files are checked for changes (zero: never).
    #[serde(deserialize_with = "duration")]
    pub reload_poll: Duration,
    /// Longest wait for the client's Close after the server's.
    #[serde(deserialize_with = "duration")]
    pub close_linger: Duration,
    /// Largest HTTP request head, in bytes.
    pub max_header_bytes: usize,
    /// Origins allowed to upgrade besides the same origin (lower case, no trailing
    /// `/`); empty: every origin.
    #[serde(skip)]
    pub allowed_origins: Vec<String>,
    /// Open streams per source address (0: no cap).
    pub max_conns_per_addr: u32,
    /// New streams per source address per second (0: no cap).
    pub max_new_conns_per_addr: u32,
    /// Open streams in all (0: no cap).
    pub max_conns: u32,
    /// `Retry-After` of the caps on open streams.
    #[serde(deserialize_with = "duration")]
    pub retry_after: Duration,
    /// Proxies whose `X-Forwarded-For` is read.
    #[serde(skip)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Who may read `/metrics`.
    #[serde(skip)]
    pub metrics_auth: MetricsAuth,
    /// Log filter, if set.
    pub log: Option<String>,
    /// Hot-path counting and `/metrics` on.
    pub metrics: bool,
    /// The Redis bus, when the node joins others.
    #[serde(skip)]
    pub redis: Option<RedisConfig>,
    /// Id of this node's feed in Redis lease keys.
    #[serde(skip)]
    pub feed_id: String,
}

impl Default for Settings {
    /// Every default of a node, stated once.
    fn default() -> Self {
        let listen = SocketAddr::from(([127, 0, 0, 1], 8080));
        let node = default_node_name(listen);
        Settings {
            listen,
            feed_id: default_feed_id(&node),
            node,
            feed: FeedSpec::Synthetic,
            universe: None,
            rate: 1000.0,
            seed: rand::random(),
            feed_batch: crate::feed::synthetic::DEFAULT_BATCH,
            replay_speed: crate::feed::Speed::default(),
            replay_loop: false,
            publish_max_msg_bytes: 1 << 20,
            publish_rate_limit: 20_000,
            history: 1024,
            book_history: 1024,
            book_max_levels: 1000,
            candles_keep: crate::hub::candles::DEFAULT_KEEP,
            heartbeat: Duration::from_secs(30),
            heartbeat_grace: Duration::from_secs(10),
            max_msg_bytes: 65536,
            max_fragments: 1024,
            max_empty_fragments: 16,
            rate_limit: 50,
            rate_burst: 100,
            rate_strikes: 20,
            max_symbols: 1024,
            max_patterns: 32,
            queue: 4096,
            slow_policy: SlowPolicy::default(),
            send_timeout: Duration::from_secs(10),
            send_buffer: None,
            max_outbound_bytes: default_outbound_bound(),
            outbound_floor: 64 * 1024,
            drain: Duration::from_secs(5),
            reconnect_notice: default_reconnect_notice(Duration::from_secs(5)),
            max_connection_lifetime: Duration::ZERO,
            #[cfg(feature = "fault-hooks")]
            fault_panic_on: None,
            allow_plaintext_public: false,
            tls_cert: None,
            tls_key: None,
            tls_handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            jwt_secret_file: None,
            jwt_leeway: Duration::from_secs(30),
            jwt_keys: Vec::new(),
            jwt_key_dir: None,
            reload_poll: Duration::from_secs(5),
            close_linger: Duration::from_secs(2),
            max_header_bytes: 16 * 1024,
            allowed_origins: Vec::new(),
            max_conns_per_addr: 0,
            max_new_conns_per_addr: 0,
            max_conns: 0,
            retry_after: Duration::from_secs(5),
            trusted_proxies: Vec::new(),
            metrics_auth: MetricsAuth::Open,
            log: None,
            metrics: true,
            redis: None,
        }
    }
}

/// A configuration error, reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid for these options.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of its range.
    #[error("{0}")]
    Invalid(String),
}

impl ServeArgs {
    /// Reads the TOML file named by `--config`, if any, lays what was given here over it
    /// and resolves every option.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let mut layers = match &self.config {
            Some(path) => Self::load_file(path)?,
            None => Map::new(),
        };
        layers.extend(self.given());
        let s = Settings::from_layers(layers)?;
        s.validate()?;
        Ok(s)
    }

    /// The options given, by name (absent ones left out).
    fn given(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut m)) => {
                m.retain(|_, v| !v.is_null());
                m
            }
            // Plain strings, numbers and paths always serialize to an object.
            _ => Map::new(),
        }
    }

    /// The option names a file may use: those of the flags, with `_`.
    fn known_keys() -> Vec<String> {
        use clap::Args as _;
        ServeArgs::augment_args(clap::Command::new("serve"))
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .filter(|id| id != "config")
            .collect()
    }

    fn load_file(path: &Path) -> Result<Map<String, Value>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parse = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| parse(e.to_string()))?;
        let known = Self::known_keys();
        if let Some(k) = table.keys().find(|k| !known.contains(k)) {
            return Err(parse(format!(
                "unknown option `{k}` (keys are the flag names with `_`, e.g. max_symbols)"
            )));
        }
        // Read with the flags' types, so that a wrong value is reported at its line.
        let args: ServeArgs = toml::from_str(&text).map_err(|e| parse(e.to_string()))?;
        Ok(args.given())
    }
}

/// The reconnect notice when none is given: 4 s, or four fifths of the drain when that
/// is shorter (a notice must end within the drain, and leave time to close). On a
/// drain each client is told at a moment drawn in the first half of the notice: with
/// 2 s, a node's 334 clients of a rolling restart moved within 1 s and raised tick p99
/// by 5 ms on a shared CPU; with 4 s, by 1.1 ms (`tickstream-bench roll`).
fn default_reconnect_notice(drain: Duration) -> Duration {
    Duration::from_secs(4).min(drain * 4 / 5)
}

impl Settings {
    /// Reads the layered options into settings; what none of them gives is the default.
    fn from_layers(layers: Map<String, Value>) -> Result<Settings, ConfigError> {
        let invalid = |e: serde_json::Error| ConfigError::Invalid(e.to_string());
        let opts: ServeArgs =
            serde_json::from_value(Value::Object(layers.clone())).map_err(invalid)?;
        let mut s: Settings = serde_json::from_value(Value::Object(layers)).map_err(invalid)?;
        // The defaults that depend on other settings.
        s.redis = opts.redis.config()?;
        s.node = opts.node.unwrap_or_else(|| default_node_name(s.listen));
        s.feed_id = opts.feed_id.unwrap_or_else(|| default_feed_id(&s.node));
        s.feed = opts.feed.unwrap_or(if s.redis.is_some() {
            FeedSpec::None
        } else {
            FeedSpec::Synthetic
        });
        if opts.rate_burst.is_none() {
            s.rate_burst = s.rate_limit.saturating_mul(2);
        }
        if opts.reconnect_notice.is_none() {
            s.reconnect_notice = default_reconnect_notice(s.drain);
        }
        s.allowed_origins = opts
            .allowed_origins
            .iter()
            .flat_map(|l| l.split(','))
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        s.trusted_proxies = match &opts.trusted_proxies {
            Some(list) => parse_proxies(list)?,
            None => Vec::new(),
        };
        s.metrics_auth = opts.metrics_auth.unwrap_or_default();
        Ok(s)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.max_header_bytes < 8192 {
            return bad("max-header-bytes must be at least 8192");
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return bad("rate must be a positive number of ticks per second");
        }
        if self.history == 0 {
            return bad("history must be at least 1");
        }
        if self.book_history == 0
            || self.book_max_levels < crate::protocol::channel::Depth::Top50.levels()
        {
            return bad("book-history must be at least 1 and book-max-levels at least 50");
        }
        if !(1..=MAX_BARS).contains(&self.candles_keep) {
            return bad("candles-keep must be from 1 to 100000");
        }
        if self.feed_batch > Duration::from_secs(1) {
            return bad("feed-batch must be at most 1s");
        }
        if self.heartbeat.is_zero() {
            return bad("heartbeat must be longer than 0");
        }
        if self.max_msg_bytes < 64 {
            return bad("max-msg-bytes must be at least 64");
        }
        if self.publish_max_msg_bytes < 64 {
            return bad("publish-max-msg-bytes must be at least 64");
        }
        if self.max_fragments == 0 {
            return bad("max-fragments must be at least 1");
        }
        if self.publish_rate_limit == 0 {
            return bad("publish-rate-limit must be at least 1");
        }
        if self.rate_limit == 0 || self.rate_burst == 0 {
            return bad("rate-limit and rate-burst must be at least 1");
        }
        if self.max_symbols == 0 || self.queue == 0 || self.max_patterns == 0 {
            return bad("max-symbols, max-patterns and queue must be at least 1");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls-cert and tls-key go together: give both to serve TLS, or neither");
        }
        if self.tls_handshake_timeout.is_zero() {
            return bad("tls-handshake-timeout must be longer than 0");
        }
        if self.retry_after.is_zero() {
            return bad("retry-after must be longer than 0");
        }
        self.check_reconnect()?;
        let keys = self.jwt_secret_file.is_some()
            || !self.jwt_keys.is_empty()
            || self.jwt_key_dir.is_some();
        if self.metrics_auth == MetricsAuth::Jwt && !keys {
            return bad(
                "metrics-auth jwt checks tokens with the JWT keys: give --jwt-key, \
                 --jwt-key-dir or --jwt-secret-file, or use metrics-auth token:FILE",
            );
        }
        let tls = self.tls_cert.is_some();
        if !self.listen.ip().is_loopback() && !tls && !self.allow_plaintext_public {
            return Err(ConfigError::Invalid(format!(
                "refusing to serve plain http/ws on non-loopback address {}; give --tls-cert and \
                 --tls-key, or put a TLS-terminating balancer in front and pass \
                 --allow-plaintext-public, or listen on 127.0.0.1",
                self.listen
            )));
        }
        Ok(())
    }
}

impl Settings {
    /// The reconnect notice must fit in the drain, and the lifetime leave room for it.
    fn check_reconnect(&self) -> Result<(), ConfigError> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        let notice = self.reconnect_notice;
        if !notice.is_zero() && notice >= self.drain {
            return Err(ConfigError::Invalid(format!(
                "reconnect-notice ({}) must be shorter than drain ({}): clients are closed \
                 after the notice, within the drain",
                show(notice),
                show(self.drain)
            )));
        }
        let life = self.max_connection_lifetime;
        if !life.is_zero() && life < notice * 2 {
            return Err(ConfigError::Invalid(format!(
                "max-connection-lifetime ({}) must be at least twice reconnect-notice ({})",
                show(life),
                show(notice)
            )));
        }
        Ok(())
    }
}

/// The default bound on buffered output: a quarter of the memory the process may use
/// (its cgroup's limit where one is set, else the machine's RAM), at most 256 MiB and at
/// least 16 MiB.
fn default_outbound_bound() -> u64 {
    const MAX: u64 = 256 << 20;
    let limit = memory_limit().unwrap_or(u64::MAX);
    (limit / 4).clamp(16 << 20, MAX)
}

/// The memory this process may use: the cgroup v2 or v1 limit, else `MemTotal`.
fn memory_limit() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|v| v.trim().parse::<u64>().ok());
    let total = read("/proc/meminfo").and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    });
    match (cgroup, total) {
        (Some(c), Some(t)) => Some(c.min(t)),
        (c, t) => c.or(t),
    }
}

/// Reads a list of proxy addresses and CIDRs (`10.0.0.7,10.1.0.0/16,fd00::/8`); a bare
/// address is a network of one.
fn parse_proxies(list: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError::Invalid(format!(
                        "trusted-proxies: {p:?} is not an address or a CIDR like 10.0.0.0/8"
                    ))
                })
        })
        .collect()
}

/// A node's feed id: its name, the same across restarts, so that a node restarted
/// under its name takes its symbols back at once (see the bus's `feeds`).
fn default_feed_id(node: &str) -> String {
    node.to_owned()
}

fn default_node_name(listen: SocketAddr) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tickstream".to_owned());
    format!("{host}:{}", listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn flag_beats_file_and_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "max_symbols = 7\nqueue = 9\nheartbeat = \"2s\"\nslow_policy = \"disconnect\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["x", "--config", path.to_str().unwrap(), "--queue", "11"])
            .unwrap();
        let s = cli.serve.resolve().unwrap();
        assert_eq!(s.max_symbols, 7);
        assert_eq!(s.queue, 11);
        assert_eq!(s.heartbeat, Duration::from_secs(2));
        assert_eq!(s.slow_policy, SlowPolicy::Disconnect);
        assert_eq!(s.history, 1024);
    }

    #[test]
    fn metrics_are_on_unless_turned_off_by_flag_or_file() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.serve.resolve());
        assert!(parse(&["x"]).unwrap().unwrap().metrics);
        assert!(parse(&["x", "--metrics"]).unwrap().unwrap().metrics);
        assert!(
            !parse(&["x", "--metrics", "false"])
                .unwrap()
                .unwrap()
                .metrics
        );
        assert!(parse(&["x", "--metrics", "maybe"]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "metrics = false\n").unwrap();
        let file = path.to_str().unwrap();
        assert!(!parse(&["x", "--config", file]).unwrap().unwrap().metrics);
        assert!(
            parse(&["x", "--config", file, "--metrics=true"])
                .unwrap()
                .unwrap()
                .metrics
        );
    }

    #[test]
    fn unknown_file_key_and_public_plaintext_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "max_symbolz = 7\n").unwrap();
        let cli = Cli::try_parse_from(["x", "--config", path.to_str().unwrap()]).unwrap();
        let e = cli.serve.resolve().unwrap_err().to_string();
        assert!(e.contains("max_symbolz"), "{e}");
        let cli = Cli::try_parse_from(["x", "--listen", "0.0.0.0:9"]).unwrap();
        assert!(cli
            .serve
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("--allow-plaintext-public"));
        let cli = Cli::try_parse_from(["x", "--listen", "0.0.0.0:9", "--allow-plaintext-public"])
            .unwrap();
        assert!(cli.serve.resolve().is_ok());
        // With TLS a public address needs no waiver.
        let cli = Cli::try_parse_from([
            "x",
            "--listen",
            "0.0.0.0:9",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .unwrap();
        assert!(cli.serve.resolve().is_ok());
    }

    #[test]
    fn tls_cert_and_key_go_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "tls_key = \"k.pem\"\ntls_handshake_timeout = \"3s\"\n",
        )
        .unwrap();
        // The key from the file and the certificate from a flag make a pair.
        let cli = Cli::try_parse_from([
            "x",
            "--config",
            path.to_str().unwrap(),
            "--tls-cert",
            "c.pem",
        ])
        .unwrap();
        let s = cli.serve.resolve().unwrap();
        assert_eq!(s.tls_cert.as_deref(), Some(Path::new("c.pem")));
        assert_eq!(s.tls_key.as_deref(), Some(Path::new("k.pem")));
        assert_eq!(s.tls_handshake_timeout, Duration::from_secs(3));
        let cli = Cli::try_parse_from(["x", "--config", path.to_str().unwrap()]).unwrap();
        let e = cli.serve.resolve().unwrap_err().to_string();
        assert!(e.contains("tls-cert and tls-key go together"), "{e}");
        let cli = Cli::try_parse_from(["x", "--tls-cert", "c.pem"]).unwrap();
        assert!(cli.serve.resolve().is_err());
        assert_eq!(
            Settings::default().tls_handshake_timeout,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn redis_options_resolve_and_bad_ones_are_refused() {
        let cli = Cli::try_parse_from([
            "x",
            "--redis",
            "redis://127.0.0.1:6379",
            "--redis-prefix",
            "md:",
            "--redis-history",
            "50",
        ])
        .unwrap();
        let s = cli.serve.resolve().unwrap();
        let r = s.redis.expect("redis configured");
        assert_eq!(r.mode, RedisMode::Single("redis://127.0.0.1:6379".into()));
        assert_eq!((r.prefix.as_str(), r.history), ("md:", 50));
        assert_eq!(
            s.feed,
            FeedSpec::None,
            "a node joining others runs no feed by default"
        );
        let cli = Cli::try_parse_from([
            "x",
            "--redis-cluster",
            "redis://127.0.0.1:7000, redis://127.0.0.1:7001",
        ])
        .unwrap();
        let r = cli.serve.resolve().unwrap().redis.unwrap();
        assert_eq!(
            r.mode,
            RedisMode::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ])
        );
        for bad in [
            &["x", "--redis", "127.0.0.1:6379"][..],
            &["x", "--redis", "redis://h:1", "--redis-history", "0"],
            &["x", "--redis", "redis://h:1", "--redis-prefix", "a{b}"],
        ] {
            let cli = Cli::try_parse_from(bad).unwrap();
            assert!(cli.serve.resolve().is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from([
            "x",
            "--redis",
            "redis://a:1",
            "--redis-cluster",
            "redis://b:1"
        ])
        .is_err());
        assert_eq!(Settings::default().redis, None);
    }

    #[test]
    fn the_reconnect_notice_follows_a_short_drain_unless_it_is_given() {
        let notice = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["x"][..], args].concat()).unwrap();
            cli.serve.resolve().map(|s| s.reconnect_notice)
        };
        assert_eq!(notice(&[]).unwrap(), Duration::from_secs(4));
        assert_eq!(
            notice(&["--drain", "3s"]).unwrap(),
            Duration::from_millis(2400)
        );
        assert_eq!(
            notice(&["--drain", "3s", "--reconnect-notice", "1s"]).unwrap(),
            Duration::from_secs(1)
        );
        let e = notice(&["--drain", "3s", "--reconnect-notice", "3s"]).unwrap_err();
        assert!(e.to_string().contains("shorter than drain"), "{e}");
    }

    #[test]
    fn every_kind_of_value_passes_through_the_layers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "replay_speed = 10\nrate = 5.5\nsend_buffer = 4096\nnode = \"n1\"\n\
             redis = \"redis://h:1\"\nredis_lease = \"3s\"\nslow_policy = \"conflate\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "x",
            "--config",
            path.to_str().unwrap(),
            "--slow-policy",
            "disconnect",
            "--replay-speed",
            "max",
            "--feed",
            "replay:x.ndjson",
            "--listen",
            "127.0.0.1:9",
            "--rate-limit",
            "7",
            "--drain",
            "1m",
        ])
        .unwrap();
        let s = cli.serve.resolve().unwrap();
        assert_eq!(s.replay_speed, crate::feed::Speed::Max);
        assert_eq!(s.slow_policy, SlowPolicy::Disconnect);
        assert_eq!((s.rate, s.send_buffer), (5.5, Some(4096)));
        assert_eq!(s.node, "n1");
        assert_eq!(s.feed, FeedSpec::Replay("x.ndjson".into()));
        assert_eq!(s.listen, "127.0.0.1:9".parse().unwrap());
        assert_eq!(s.rate_burst, 14, "the burst follows the rate limit");
        assert_eq!(s.drain, Duration::from_secs(60));
        assert_eq!(s.reconnect_notice, Duration::from_secs(4));
        assert_eq!(s.redis.unwrap().lease, Duration::from_secs(3));
        assert_eq!(s.feed_id, "n1", "the node's name: the same after a restart");

        std::fs::write(&path, "queue = 5\nheartbeat = \"soon\"\n").unwrap();
        let cli = Cli::try_parse_from(["x", "--config", path.to_str().unwrap()]).unwrap();
        let e = cli.serve.resolve().unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("soon"), "{e}");
    }

    #[test]
    fn redis_credentials_and_tls_options_are_checked() {
        let cli = Cli::try_parse_from([
            "x",
            "--redis",
            "rediss://feed:s3cret@127.0.0.1:6380",
            "--redis-ca-file",
            "ca.pem",
        ])
        .unwrap();
        let r = cli.serve.resolve().unwrap().redis.unwrap();
        assert_eq!(r.ca_file.as_deref(), Some(Path::new("ca.pem")));
        assert_eq!(r.describe(), "127.0.0.1:6380", "no password in messages");
        let cli = Cli::try_parse_from([
            "x",
            "--redis",
            "redis://127.0.0.1:6380",
            "--redis-ca-file",
            "ca.pem",
        ])
        .unwrap();
        let e = cli.serve.resolve().unwrap_err().to_string();
        assert!(e.contains("rediss://"), "{e}");
        let cli = Cli::try_parse_from(["x", "--redis-ca-file", "ca.pem"]).unwrap();
        assert!(cli.serve.resolve().is_err());
    }

    #[test]
    fn door_limits_resolve_from_file_and_flags_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "max_conns_per_addr = 8\nmax_new_conns_per_addr = 3\nmax_conns = 100\n\
             retry_after = \"2s\"\ntrusted_proxies = \"10.0.0.0/8, 192.168.1.5, fd00::1/8\"\n\
             metrics_auth = \"token:/run/m.token\"\n",
        )
        .unwrap();
        let cli =
            Cli::try_parse_from(["x", "--config", path.to_str().unwrap(), "--max-conns", "50"])
                .unwrap();
        let s = cli.serve.resolve().unwrap();
        assert_eq!(
            (s.max_conns_per_addr, s.max_new_conns_per_addr, s.max_conns),
            (8, 3, 50)
        );
        assert_eq!(s.retry_after, Duration::from_secs(2));
        let nets: Vec<String> = s.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.168.1.5/32", "fd00::/8"]);
        assert_eq!(s.metrics_auth, MetricsAuth::Token("/run/m.token".into()));
        let d = Settings::default();
        assert_eq!(
            (d.max_conns_per_addr, d.max_conns),
            (0, 0),
            "no caps by default"
        );
        assert_eq!(d.metrics_auth, MetricsAuth::Open, "metrics open by default");

        let cli = Cli::try_parse_from(["x", "--trusted-proxies", "10.0.0.0/8,proxy.local"]);
        let e = cli.unwrap().serve.resolve().unwrap_err().to_string();
        assert!(e.contains("proxy.local"), "{e}");
        assert!(Cli::try_parse_from(["x", "--metrics-auth", "token:"]).is_err());
        assert!(Cli::try_parse_from(["x", "--metrics-auth", "basic"]).is_err());
        let cli = Cli::try_parse_from(["x", "--metrics-auth", "jwt"]).unwrap();
        let e = cli.serve.resolve().unwrap_err().to_string();
        assert!(e.contains("JWT keys"), "jwt metrics auth needs keys: {e}");
        let cli = Cli::try_parse_from(["x", "--metrics-auth", "jwt", "--jwt-key", "k.pem"]);
        assert!(cli.unwrap().serve.resolve().is_ok());
        let cli = Cli::try_parse_from(["x", "--retry-after", "0s"]).unwrap();
        assert!(cli.serve.resolve().is_err());
    }

    #[test]
    fn fragment_limits_resolve_from_flag_and_file_and_zero_is_refused() {
        let d = Settings::default();
        assert_eq!((d.max_fragments, d.max_empty_fragments), (1024, 16));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "max_fragments = 64\nmax_empty_fragments = 2\n").unwrap();
        let file = path.to_str().unwrap();
        let s = Cli::try_parse_from(["x", "--config", file])
            .unwrap()
            .serve
            .resolve();
        let s = s.unwrap();
        assert_eq!((s.max_fragments, s.max_empty_fragments), (64, 2));
        let cli = Cli::try_parse_from(["x", "--config", file, "--max-fragments", "9"]).unwrap();
        assert_eq!(cli.serve.resolve().unwrap().max_fragments, 9);
        let cli = Cli::try_parse_from(["x", "--max-fragments", "0"]).unwrap();
        let e = cli.serve.resolve().unwrap_err().to_string();
        assert!(e.contains("max-fragments"), "{e}");
        assert!(Cli::try_parse_from(["x", "--max-empty-fragments", "-1"]).is_err());
    }

    #[test]
    fn durations_and_feeds_parse() {
        assert_eq!(
            "500ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("5m".parse::<Dur>().unwrap().0, Duration::from_secs(300));
        assert!("5 parsecs".parse::<Dur>().is_err());
        assert_eq!(
            "replay:a.ndjson".parse::<FeedSpec>().unwrap(),
            FeedSpec::Replay("a.ndjson".into())
        );
        assert!("replay:".parse::<FeedSpec>().is_err());
    }
}
