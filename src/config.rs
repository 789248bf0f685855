//! Settings of `tickstream serve`: flags, `TICKSTREAM_*` environment variables and a TOML
//! file, in that order of precedence, over built-in defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

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

impl<'de> Deserialize<'de> for FeedSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Options of `tickstream serve`. Every one may also come from the environment
/// (`TICKSTREAM_<NAME>`) or the TOML file given by `--config` (key `<name>` with `_`).
#[derive(Args, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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

    /// Replay feed: speed factor (0.5, 1, 10) or `max`. Default: 1 (recorded spacing).
    #[arg(long, env = "TICKSTREAM_REPLAY_SPEED", value_name = "X|max")]
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

    /// Interval of server Pings. Default: 30s.
    #[arg(long, env = "TICKSTREAM_HEARTBEAT", value_name = "DURATION")]
    pub heartbeat: Option<Dur>,

    /// A connection silent for heartbeat + this grace is closed. Default: 10s.
    #[arg(long, env = "TICKSTREAM_HEARTBEAT_GRACE", value_name = "DURATION")]
    pub heartbeat_grace: Option<Dur>,

    /// Largest inbound message in bytes; larger closes with 1009. Default: 65536.
    #[arg(long, env = "TICKSTREAM_MAX_MSG_BYTES", value_name = "BYTES")]
    pub max_msg_bytes: Option<usize>,

    /// Inbound messages per second per connection (token bucket refill). Default: 50.
    #[arg(long, env = "TICKSTREAM_RATE_LIMIT", value_name = "N")]
    pub rate_limit: Option<u32>,

    /// Inbound burst per connection (token bucket size). Default: 100.
    #[arg(long, env = "TICKSTREAM_RATE_BURST", value_name = "N")]
    pub rate_burst: Option<u32>,

    /// Rate-limited messages in a row after which the connection closes with 1008. Default: 20.
    #[arg(long, env = "TICKSTREAM_RATE_STRIKES", value_name = "N")]
    pub rate_strikes: Option<u32>,

    /// Most symbols one connection may subscribe. Default: 1024.
    #[arg(long, env = "TICKSTREAM_MAX_SYMBOLS", value_name = "N")]
    pub max_symbols: Option<usize>,

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
    pub slow_policy: Option<SlowPolicy>,

    /// A write to a client that takes longer than this drops the connection. Default: 10s.
    #[arg(long, env = "TICKSTREAM_SEND_TIMEOUT", value_name = "DURATION")]
    pub send_timeout: Option<Dur>,

    /// Kernel send buffer per client socket, in bytes; bounds the memory a stalled client
    /// can hold in the kernel. Default: the OS default (autotuned).
    #[arg(long, env = "TICKSTREAM_SEND_BUFFER", value_name = "BYTES")]
    pub send_buffer: Option<usize>,

    /// On SIGINT/SIGTERM, how long clients get to be closed before exit. Default: 5s.
    #[arg(long, env = "TICKSTREAM_DRAIN", value_name = "DURATION")]
    pub drain: Option<Dur>,

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

    /// Clock skew allowed when checking a token's expiry. Default: 30s.
    #[arg(long, env = "TICKSTREAM_JWT_LEEWAY", value_name = "DURATION")]
    pub jwt_leeway: Option<Dur>,

    /// Join other nodes through this Redis server (`redis://host:port`). Ticks then reach
    /// the hub only from Redis, and the default feed becomes `none`. Default: in-process bus.
    #[arg(
        long,
        env = "TICKSTREAM_REDIS",
        value_name = "URL",
        conflicts_with = "redis_cluster"
    )]
    pub redis: Option<String>,

    /// Join through a Redis Cluster (sharded Pub/Sub, Redis 7), given by seed URLs.
    #[arg(long, env = "TICKSTREAM_REDIS_CLUSTER", value_name = "URL[,URL…]")]
    pub redis_cluster: Option<String>,

    /// Prefix of every Redis key and channel. Default: tickstream:.
    #[arg(long, env = "TICKSTREAM_REDIS_PREFIX", value_name = "PREFIX")]
    pub redis_prefix: Option<String>,

    /// Ticks kept per symbol in the Redis `hist:` stream (resume across nodes). Default: 10000.
    #[arg(long, env = "TICKSTREAM_REDIS_HISTORY", value_name = "N")]
    pub redis_history: Option<usize>,

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

    /// Log filter (error, warn, info, debug, trace or a tracing directive). Default: RUST_LOG, else info.
    #[arg(long, env = "TICKSTREAM_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

/// Resolved settings of a node.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Listening address.
    pub listen: SocketAddr,
    /// Node name.
    pub node: String,
    /// Feed.
    pub feed: FeedSpec,
    /// Universe file, or the bundled one.
    pub universe: Option<PathBuf>,
    /// Synthetic rate, ticks per second.
    pub rate: f64,
    /// Synthetic seed.
    pub seed: u64,
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
    /// Ping interval.
    pub heartbeat: Duration,
    /// Grace after the heartbeat interval.
    pub heartbeat_grace: Duration,
    /// Largest inbound message.
    pub max_msg_bytes: usize,
    /// Inbound messages per second.
    pub rate_limit: u32,
    /// Inbound burst.
    pub rate_burst: u32,
    /// Rate-limited messages in a row before close 1008.
    pub rate_strikes: u32,
    /// Symbols per connection.
    pub max_symbols: usize,
    /// Outbound queue per connection.
    pub queue: usize,
    /// Slow-consumer policy.
    pub slow_policy: SlowPolicy,
    /// Write timeout per frame.
    pub send_timeout: Duration,
    /// Kernel send buffer per client socket (None: OS default).
    pub send_buffer: Option<usize>,
    /// Shutdown drain time.
    pub drain: Duration,
    /// Plain ws allowed on a public address.
    pub allow_plaintext_public: bool,
    /// TLS certificate chain file; TLS is on when set (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key file.
    pub tls_key: Option<PathBuf>,
    /// Longest time a TLS handshake may take after accept.
    pub tls_handshake_timeout: Duration,
    /// Longest time the request headers may take to arrive.
    pub header_timeout: Duration,
    /// JWT secret file; auth is on when set.
    pub jwt_secret_file: Option<PathBuf>,
    /// Clock skew allowed on token expiry.
    pub jwt_leeway: Duration,
    /// Longest wait for the client's Close after the server's.
    pub close_linger: Duration,
    /// Largest HTTP request head, in bytes.
    pub max_header_bytes: usize,
    /// Origins allowed to upgrade besides the same origin; empty: every origin.
    pub allowed_origins: Vec<String>,
    /// Log filter, if set.
    pub log: Option<String>,
    /// The Redis bus, when the node joins others.
    pub redis: Option<RedisConfig>,
    /// Id of this node's feed in Redis lease keys.
    pub feed_id: String,
}

impl Default for Settings {
    fn default() -> Self {
        ServeArgs::default().resolve_with(ServeArgs::default())
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

macro_rules! fill_from_file {
    ($cli:ident, $file:ident: $($field:ident),* $(,)?) => {
        $( if $cli.$field.is_none() { $cli.$field = $file.$field.take(); } )*
    };
}

impl ServeArgs {
    /// Reads the TOML file named by `--config`, if any, and resolves every option.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => Self::load_file(path)?,
            None => ServeArgs::default(),
        };
        if (self.redis.is_some() || file.redis.is_some())
            && (self.redis_cluster.is_some() || file.redis_cluster.is_some())
        {
            return Err(ConfigError::Invalid(
                "give redis or redis-cluster, not both".into(),
            ));
        }
        let s = self.resolve_with(file);
        s.validate()?;
        Ok(s)
    }

    fn load_file(path: &Path) -> Result<ServeArgs, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    fn resolve_with(mut self, mut file: ServeArgs) -> Settings {
        fill_from_file!(self, file: listen, node, feed, universe, rate, seed, replay_speed,
            replay_loop, publish_max_msg_bytes, publish_rate_limit, history,
            heartbeat, heartbeat_grace, max_msg_bytes, rate_limit, rate_burst, rate_strikes,
            max_symbols, queue, slow_policy, send_timeout, send_buffer, drain, allow_plaintext_public, jwt_secret_file, jwt_leeway, log,
            redis, redis_cluster, redis_prefix, redis_history, redis_backoff_max, redis_timeout,
            redis_lease, feed_id);
        fill_from_file!(self, file: tls_cert, tls_key, tls_handshake_timeout, header_timeout);
        fill_from_file!(self, file: close_linger, max_header_bytes, allowed_origins);
        let redis = self.redis_config();
        let listen = self
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let rate_limit = self.rate_limit.unwrap_or(50);
        let node = self.node.unwrap_or_else(|| default_node_name(listen));
        Settings {
            listen,
            feed_id: self
                .feed_id
                .unwrap_or_else(|| format!("{node}/{}", std::process::id())),
            node,
            feed: self.feed.unwrap_or(if redis.is_some() {
                FeedSpec::None
            } else {
                FeedSpec::Synthetic
            }),
            redis,
            universe: self.universe,
            rate: self.rate.unwrap_or(1000.0),
            seed: self.seed.unwrap_or_else(rand::random),
            replay_speed: self.replay_speed.unwrap_or_default(),
            replay_loop: self.replay_loop.unwrap_or(false),
            publish_max_msg_bytes: self.publish_max_msg_bytes.unwrap_or(1 << 20),
            publish_rate_limit: self.publish_rate_limit.unwrap_or(20_000),
            history: self.history.unwrap_or(1024),
            heartbeat: self.heartbeat.map_or(Duration::from_secs(30), |d| d.0),
            heartbeat_grace: self
                .heartbeat_grace
                .map_or(Duration::from_secs(10), |d| d.0),
            max_msg_bytes: self.max_msg_bytes.unwrap_or(65536),
            rate_limit,
            rate_burst: self.rate_burst.unwrap_or(rate_limit.saturating_mul(2)),
            rate_strikes: self.rate_strikes.unwrap_or(20),
            max_symbols: self.max_symbols.unwrap_or(1024),
            queue: self.queue.unwrap_or(4096),
            slow_policy: self.slow_policy.unwrap_or_default(),
            send_timeout: self.send_timeout.map_or(Duration::from_secs(10), |d| d.0),
            send_buffer: self.send_buffer,
            drain: self.drain.map_or(Duration::from_secs(5), |d| d.0),
            allow_plaintext_public: self.allow_plaintext_public.unwrap_or(false),
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_handshake_timeout: self
                .tls_handshake_timeout
                .map_or(Duration::from_secs(10), |d| d.0),
            header_timeout: self.header_timeout.map_or(Duration::from_secs(10), |d| d.0),
            jwt_secret_file: self.jwt_secret_file,
            jwt_leeway: self.jwt_leeway.map_or(Duration::from_secs(30), |d| d.0),
            close_linger: self.close_linger.map_or(Duration::from_secs(2), |d| d.0),
            max_header_bytes: self.max_header_bytes.unwrap_or(16 * 1024),
            allowed_origins: self
                .allowed_origins
                .iter()
                .flat_map(|l| l.split(','))
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
            log: self.log,
        }
    }
}

impl ServeArgs {
    fn redis_config(&self) -> Option<RedisConfig> {
        let mode = match (&self.redis, &self.redis_cluster) {
            (Some(url), _) => RedisMode::Single(url.trim().to_owned()),
            (None, Some(list)) => RedisMode::Cluster(
                list.split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            (None, None) => return None,
        };
        let mut c = RedisConfig::new(mode);
        if let Some(p) = &self.redis_prefix {
            c.prefix = p.clone();
        }
        if let Some(h) = self.redis_history {
            c.history = h;
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
        Some(c)
    }
}

impl Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if let Some(r) = &self.redis {
            let urls: Vec<&String> = match &r.mode {
                RedisMode::Single(u) => vec![u],
                RedisMode::Cluster(v) => v.iter().collect(),
            };
            if urls.is_empty() {
                return bad("--redis-cluster needs at least one URL");
            }
            for u in urls {
                if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                    return Err(ConfigError::Invalid(format!(
                        "Redis URL {u:?} must start with redis:// (e.g. redis://127.0.0.1:6379)"
                    )));
                }
            }
            if r.prefix.contains(['{', '}', ' ']) {
                return bad("redis-prefix must not contain braces or spaces");
            }
            if r.history == 0 {
                return bad("redis-history must be at least 1");
            }
            if r.timeout.is_zero() || r.lease < Duration::from_millis(100) {
                return bad("redis-timeout must be longer than 0 and redis-lease at least 100ms");
            }
        }
        if self.max_header_bytes < 8192 {
            return bad("max-header-bytes must be at least 8192");
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return bad("rate must be a positive number of ticks per second");
        }
        if self.history == 0 {
            return bad("history must be at least 1");
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
        if self.publish_rate_limit == 0 {
            return bad("publish-rate-limit must be at least 1");
        }
        if self.rate_limit == 0 || self.rate_burst == 0 {
            return bad("rate-limit and rate-burst must be at least 1");
        }
        if self.max_symbols == 0 || self.queue == 0 {
            return bad("max-symbols and queue must be at least 1");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls-cert and tls-key go together: give both to serve TLS, or neither");
        }
        if self.tls_handshake_timeout.is_zero() {
            return bad("tls-handshake-timeout must be longer than 0");
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
