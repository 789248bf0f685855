//! What every scenario shares: the common flags, the load shape `C×K/N`, the flat
//! universe of N equal symbols, and where a tick comes from.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};

/// Flags every scenario takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Drive a running server at this WebSocket URL instead of spawning one (repeat for
    /// several nodes; connections go round-robin).
    #[arg(long = "url", conflicts_with = "spawn")]
    pub urls: Vec<String>,
    /// Start what the scenario needs: a tickstream node (the `tickstream` binary next to
    /// this one), `redis-server` on a free port where ticks go through Redis, and the
    /// references named by `--against`. The default when no `--url` is given.
    #[arg(long)]
    pub spawn: bool,
    /// Where ticks come from: `publish` (this bench's paced publisher into the node's
    /// `/v1/publish`), `redis` (the publisher into Redis, read by `serve --redis`) or
    /// `synthetic` (the node's own synthetic feed over the same flat universe).
    #[arg(long, default_value = "publish")]
    pub source: Source,
    /// Publisher endpoint with `--url` and `--source publish` (default: the first URL
    /// with `/v1/ws` replaced by `/v1/publish`).
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Redis to publish into with `--url` and `--source redis`.
    #[arg(long)]
    pub redis: Option<String>,
    /// Prefix of Redis channels and keys (PROTOCOL.md).
    #[arg(long, default_value = "tickstream:")]
    pub redis_prefix: String,
    /// History the publisher into Redis keeps per symbol: each tick is `XADD hist` +
    /// `SET last` + `PUBLISH`, as a publisher of PROTOCOL.md does (each book message
    /// `SET booksnap` + `PUBLISH book`); 0 sends the `PUBLISH` alone (what the node reads
    /// while streaming), a third of Redis' work on the bench's CPUs.
    #[arg(long, default_value_t = 10_000)]
    pub redis_history: usize,
    /// Order of the publisher's symbols within each round of N ticks: `round-robin`
    /// (0, 1, 2, …: neighbouring ticks reach the same connections of a `C×K/N` shape)
    /// or `shuffled` (a new seeded permutation each round, the same for every target:
    /// neighbouring ticks are as unrelated as the synthetic feed's random draws).
    #[arg(long, default_value = "round-robin")]
    pub order: Order,
    /// Process id of the server behind `--url`, to sample its CPU and memory.
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// Recorded time of each run (default: 10s; connections 20s; soak 60s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Load applied before recording starts (default: 3s; soak 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub warmup: Option<Duration>,
    /// Runs per target; with several targets they alternate (default: 3; connections
    /// and soak 1).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Directory for the JSON summary, `.hgrm` files and SVG plots (default
    /// `target/tickstream-bench/<scenario>-<time>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Receiving processes; each binds its own source address 127.0.0.2, 127.0.0.3, …
    #[arg(long = "clients", default_value_t = 2)]
    pub clients: usize,
    /// CPUs of the server processes (taskset list, e.g. `0` or `0-1`).
    #[arg(long)]
    pub server_cpus: Option<String>,
    /// CPUs of the bench itself: publisher, receiving processes (and redis-server unless
    /// `--redis-cpus`).
    #[arg(long)]
    pub client_cpus: Option<String>,
    /// CPUs of a spawned redis-server (default: the client CPUs).
    #[arg(long)]
    pub redis_cpus: Option<String>,
    /// References measured with the same load right after tickstream, alternating over
    /// runs: `floor` (tickstream-floor, fed through `/v1/publish`), `node` (the Node.js
    /// `ws` + ioredis server, fed through Redis), `tickstream-nometrics` (tickstream
    /// itself with `--metrics false`, fed like tickstream: the cost of the metrics),
    /// `tickstream-noheartbeat` (tickstream itself with `--heartbeat 1h`, so that no
    /// heartbeat falls in the window: what heartbeat rounds cost, in `connections`).
    #[arg(long, value_delimiter = ',')]
    pub against: Vec<Reference>,
    /// Extra argument for every spawned `tickstream serve` (repeat), e.g. `--node-arg=--queue=256`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// The publisher falling behind its schedule by more than this (p99 over the run)
    /// makes the run invalid: the load asked for was not offered.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub max_behind: Duration,
    /// The bench's own receiving loop firing later than this (p99) makes the run
    /// invalid: the clients, not the server, may have set the latency.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub max_client_lag: Duration,
    /// After the publisher stops, time given to what is still in flight.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Where the reference servers live (default: `bench/peers` of this source tree).
    #[arg(long)]
    pub peers: Option<PathBuf>,
    /// Skip this seq of the first symbol when publishing (to check gap counting).
    #[arg(long, hide = true)]
    pub skip_seq: Option<u64>,
}

/// The load of a scenario run at one rate and shape.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct FixedLoad {
    /// Load shape C×K/N: C connections, each subscribed to K of N symbols.
    #[arg(long, default_value = "100x10/100")]
    pub shape: Shape,
    /// Ticks per second over the N symbols.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
}

impl FixedLoad {
    /// How a title names it: `100×10/100 at 10000 ticks/s`.
    pub fn describe(&self) -> String {
        format!("{} at {} ticks/s", self.shape, self.rate)
    }

    /// Its figures for `summary.json`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"shape": self.shape.to_string(), "rate": self.rate})
    }
}

impl Common {
    /// Whether the bench starts its own servers.
    pub fn spawning(&self) -> bool {
        self.spawn || self.urls.is_empty()
    }
}

/// Order of the publisher's symbols within a round (see [`Common::order`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// 0, 1, 2, … N−1, every round.
    RoundRobin,
    /// A fresh seeded permutation of the N symbols each round.
    Shuffled,
}

/// Where ticks come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The bench's publisher into `/v1/publish`.
    Publish,
    /// The bench's publisher into Redis.
    Redis,
    /// The node's own synthetic feed.
    Synthetic,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Publish => "publish",
            Source::Redis => "redis",
            Source::Synthetic => "synthetic",
        })
    }
}

/// A reference server measured beside tickstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// `tickstream-floor`: the least a fan-out costs on this machine.
    Floor,
    /// The Node.js `ws` + ioredis server.
    #[value(alias = "node-ws")]
    Node,
    /// tickstream with `--metrics false`.
    #[value(name = "tickstream-nometrics", alias = "nometrics")]
    NoMetrics,
    /// tickstream with no heartbeat inside the window (`--heartbeat 1h`).
    #[value(name = "tickstream-noheartbeat", alias = "noheartbeat")]
    NoHeartbeat,
}

/// Label of the tickstream target started with `--metrics false`.
pub const NOMETRICS: &str = "tickstream-nometrics";

/// Label of the tickstream target whose heartbeats never fall inside the window.
pub const NOHEARTBEAT: &str = "tickstream-noheartbeat";

/// Which server a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Server {
    /// A tickstream node (or two, for cross-node).
    Tickstream,
    /// tickstream-floor.
    Floor,
    /// bench/peers/node-ws.
    NodeWs,
}

/// One thing measured: a server, fed from a source, over some nodes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Target {
    /// Name in tables, files and plots.
    pub label: String,
    /// The server.
    pub server: Server,
    /// Where its ticks come from.
    pub source: Source,
    /// Nodes the connections are spread over (2 for cross-node).
    pub nodes: usize,
    /// `encoding=` asked for on `/v1/ws`.
    pub encoding: String,
}

impl Target {
    /// Extra `serve` arguments this target's nodes get.
    pub fn serve_args(&self) -> &'static [&'static str] {
        match self.server {
            Server::Tickstream if self.label.starts_with(NOMETRICS) => &["--metrics", "false"],
            Server::Tickstream if self.label.starts_with(NOHEARTBEAT) => &["--heartbeat", "1h"],
            _ => &[],
        }
    }

    /// tickstream fed from `source` on one node.
    pub fn tickstream(source: Source) -> Target {
        Target {
            label: format!("tickstream-{source}"),
            server: Server::Tickstream,
            source,
            nodes: 1,
            encoding: "json".into(),
        }
    }
}

/// The targets of a scenario: tickstream with the chosen source, and for each reference
/// the reference with the source it can take, plus tickstream with that same source when
/// it differs (so every ratio compares equal loads).
pub fn targets_with_references(c: &Common) -> anyhow::Result<Vec<Target>> {
    let mut out = vec![Target::tickstream(c.source)];
    for r in &c.against {
        let name = match r {
            Reference::Floor => "floor",
            Reference::Node => "node-ws",
            Reference::NoMetrics => NOMETRICS,
            Reference::NoHeartbeat => NOHEARTBEAT,
        };
        if !c.spawning() {
            bail!("--against {name} needs --spawn: the bench starts the references itself");
        }
        let (server, source) = match r {
            Reference::Floor => (Server::Floor, Source::Publish),
            Reference::Node => (Server::NodeWs, Source::Redis),
            Reference::NoMetrics | Reference::NoHeartbeat => {
                // The same node and load as the first target, counting off or with its
                // heartbeats out of the window.
                out.push(Target {
                    label: name.into(),
                    ..Target::tickstream(c.source)
                });
                continue;
            }
        };
        if !out.iter().any(|t| {
            t.server == Server::Tickstream && t.serve_args().is_empty() && t.source == source
        }) {
            out.push(Target::tickstream(source));
        }
        out.push(Target {
            label: name.into(),
            server,
            source,
            nodes: 1,
            encoding: "json".into(),
        });
    }
    Ok(out)
}

/// A load shape: C connections, each subscribed to K of N symbols, so that each tick
/// reaches C·K/N connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    /// Connections.
    pub conns: usize,
    /// Symbols per connection.
    pub per_conn: usize,
    /// Symbols in the universe.
    pub symbols: usize,
}

impl Shape {
    /// Connections each tick reaches (exact when C·K is a multiple of N).
    pub fn fanout(&self) -> f64 {
        (self.conns * self.per_conn) as f64 / self.symbols as f64
    }

    /// Subscribers of symbol `s`.
    #[cfg(test)]
    pub fn subscribers_of(&self, s: usize) -> u64 {
        let total = self.conns * self.per_conn;
        (total / self.symbols + usize::from(s < total % self.symbols)) as u64
    }

    /// The symbol indices connection `i` subscribes: `(i·K + j) mod N`, so that every
    /// symbol gets the same number of subscribers.
    pub fn symbols_of(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.per_conn).map(move |j| (i * self.per_conn + j) % self.symbols)
    }
}

impl FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a shape C×K/N (e.g. 100×10/100 or 100x10/100)");
        let s2 = s.replace('×', "x");
        let (c, rest) = s2.split_once(['x', 'X']).ok_or_else(bad)?;
        let (k, n) = rest.split_once('/').ok_or_else(bad)?;
        let num = |v: &str| v.trim().parse::<usize>().map_err(|_| bad());
        let shape = Shape {
            conns: num(c)?,
            per_conn: num(k)?,
            symbols: num(n)?,
        };
        if shape.conns == 0 || shape.per_conn == 0 || shape.symbols == 0 {
            return Err(format!("{s}: C, K and N must be at least 1"));
        }
        if shape.per_conn > shape.symbols {
            return Err(format!(
                "{s}: K ({}) cannot exceed N ({})",
                shape.per_conn, shape.symbols
            ));
        }
        Ok(shape)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}×{}/{}", self.conns, self.per_conn, self.symbols)
    }
}

/// Name of symbol `i` of the flat universe.
pub fn symbol_name(i: usize) -> String {
    format!("B{i:05}")
}

/// Writes a universe of `n` equal symbols (same class, price, volatility and activity)
/// in the format of feeds/universe.csv, so that a node's synthetic feed ticks each one
/// equally often and serves exactly those.
pub fn write_universe(path: &std::path::Path, n: usize) -> anyhow::Result<()> {
    let mut s = String::from(
        "# flat universe written by tickstream-bench: every symbol alike\nsymbol,class,price,volatility,activity\n",
    );
    for i in 0..n {
        s.push_str(&symbol_name(i));
        s.push_str(",equity,100.00,0.20,1\n");
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

/// Parses a CPU list as taskset writes it: `0`, `0,2`, `1-3`.
pub fn parse_cpus(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
                if a > b {
                    bail!("bad CPU range {part}");
                }
                out.extend(a..=b);
            }
            None => out.push(
                part.trim()
                    .parse()
                    .with_context(|| format!("bad CPU {part}"))?,
            ),
        }
    }
    if out.is_empty() {
        bail!("empty CPU list");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The common flags parsed from `args`.
    fn common(args: &[&str]) -> Common {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            c: Common,
        }
        let args = std::iter::once("x").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(args).unwrap().c
    }

    #[test]
    fn noheartbeat_is_tickstream_with_heartbeats_out_of_the_window() {
        let c = common(&["--spawn", "--against", "tickstream-noheartbeat"]);
        let t = targets_with_references(&c).unwrap();
        let labels: Vec<&str> = t.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["tickstream-publish", NOHEARTBEAT]);
        assert!(t[0].serve_args().is_empty());
        assert_eq!(t[1].serve_args(), ["--heartbeat", "1h"]);
    }

    #[test]
    fn nometrics_is_tickstream_with_metrics_off_paired_with_tickstream() {
        let c = common(&["--spawn", "--against", "tickstream-nometrics"]);
        let t = targets_with_references(&c).unwrap();
        let labels: Vec<&str> = t.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["tickstream-publish", NOMETRICS]);
        assert!(t[0].serve_args().is_empty());
        assert_eq!(t[1].serve_args(), ["--metrics", "false"]);
        assert_eq!(
            (t[1].server, t[1].source),
            (Server::Tickstream, Source::Publish)
        );
        assert_eq!(
            crate::scenario::reference_pairs(&t),
            [("tickstream-publish".to_owned(), NOMETRICS.to_owned())]
        );
    }

    #[test]
    fn shapes_parse_both_ways() {
        let s: Shape = "100×10/100".parse().unwrap();
        assert_eq!(
            s,
            Shape {
                conns: 100,
                per_conn: 10,
                symbols: 100
            }
        );
        assert_eq!("100x10/100".parse::<Shape>().unwrap(), s);
        assert_eq!(s.to_string(), "100×10/100");
        assert!("100x0/10".parse::<Shape>().is_err());
        assert!("10x20/10".parse::<Shape>().is_err());
        assert!("10/10".parse::<Shape>().is_err());
    }

    #[test]
    fn every_symbol_gets_its_share() {
        let s: Shape = "30x4/12".parse().unwrap();
        let mut count = [0u64; 12];
        for i in 0..s.conns {
            let syms: Vec<_> = s.symbols_of(i).collect();
            let mut d = syms.clone();
            d.dedup();
            assert_eq!(d.len(), 4);
            for x in syms {
                count[x] += 1;
            }
        }
        for (i, c) in count.iter().enumerate() {
            assert_eq!(*c, s.subscribers_of(i));
            assert_eq!(*c, 10);
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpus("0").unwrap(), vec![0]);
        assert_eq!(parse_cpus("0,2-3").unwrap(), vec![0, 2, 3]);
        assert!(parse_cpus("3-1").is_err());
    }
}
