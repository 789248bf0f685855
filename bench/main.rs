//! `tickstream-bench`: how fast, how many, at what latency, at what cost — measured
//! from the outside, as clients see it, with references measured beside it.
//!
//! Each scenario is a subcommand (`tickstream-bench SCENARIO --help` shows an example).
//! A run: servers started (`--spawn`) or given (`--url`); the receiving side in several
//! worker processes (this binary, `worker`), each on its own source address; an
//! open-loop publisher stamping each tick with its intended send time; the server's
//! CPU and memory sampled from /proc; then a table, `summary.json`, `.hgrm` files and
//! SVG plots in `--out`.
//!
//! # Layout
//!
//! - `common`: the common flags, load shape `C×K/N`, flat universe, targets.
//! - `publisher`: the paced publisher (into `/v1/publish` or Redis).
//! - `load`: the worker processes and their connections, seq checks, histograms.
//! - `scan`: reading a JSON frame's checked fields without decoding the rest.
//! - `spawn`: starting and stopping servers on chosen CPUs; /proc samples.
//! - `scenario`: one measured run (`run_once`) and each scenario on top of it.
//! - `measured`: what one run measured (`RunResult`, `Percentiles`).
//! - `report`, `plot`: tables, medians, ratios, JSON, `.hgrm`, SVG.
//! - `page`: `bench/RESULTS.md`, written from the summaries kept in
//!   `bench/results/current/`, one a row.
//! - `books`: the publisher's order books and what a connection keeps to check them.
//! - `candles`: what bars cost a node, measured in process on its hub.
//! - `cluster`: Redis Cluster sharded Pub/Sub, the node's slot routing against the
//!   redis crate's cluster client.

mod books;
mod candles;
mod cluster;
mod common;
mod load;
mod measured;
mod page;
mod plot;
mod publisher;
mod report;
mod scan;
mod scenario;
mod spawn;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tickstream-bench",
    about = "tickstream benchmarks: latency, fan-out and scale, with references in the same run",
    after_help = "One-command answer: tickstream-bench latency --spawn\n\
                  Every scenario: tickstream-bench SCENARIO --help"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Latency percentiles at a fixed rate and shape.
    Latency(scenario::latency::Args),
    /// Raise the rate (or connections) until p99 passes a bound; the highest delivered rate.
    Fanout(scenario::fanout::Args),
    /// Many connections held: setup rate, memory per connection, idle CPU, heartbeat rounds.
    Connections(scenario::connections::Args),
    /// A share of clients stop reading: healthy clients' latency, stalled clients' conflation.
    SlowConsumers(scenario::slow::Args),
    /// Publisher into Redis, subscribers on two nodes, against one node.
    CrossNode(scenario::cross_node::Args),
    /// The same load in JSON and binary frames.
    Encoding(scenario::encoding::Args),
    /// Churn for a long time at a steady rate; fails when memory, descriptors or threads grow.
    Soak(scenario::soak::Args),
    /// Connections holding many symbols paced by `throttle_ms`, against the same load unpaced.
    Dashboard(scenario::dashboard::Args),
    /// Subscribing `*` against naming the same symbols: cost per delivered message.
    Patterns(scenario::patterns::Args),
    /// Order books at depth 10 against ticks of the same rate: CPU per delivered
    /// update, bytes per update in JSON and binary, latency, checked sequences and
    /// checksums; and the memory of a symbol's book.
    Book(scenario::book::Args),
    /// What candles cost a node, in process: CPU per tick with candle subscriptions
    /// against none, and the time to answer a backfill of 1,000 bars.
    Candles(candles::Args),
    /// Write bench/RESULTS.md from the summaries in bench/results/current/ (`--take DIR`
    /// promotes a run, `--check` fails when the page is stale).
    Results(page::Args),
    /// SPUBLISH → receive on a Redis Cluster: the node's slot routing against the redis
    /// crate's cluster client.
    ClusterPubsub(cluster::ClusterArgs),
    /// CPU per byte received: one-byte fragments against whole messages.
    Fragments(scenario::fragments::Args),
    /// A rolling restart of scripts/cluster under many clients through nginx: latency in
    /// the steady state against the roll, holes, duplicates, time until every client moved.
    Roll(scenario::roll::Args),
    /// Hundreds of connections stop reading at 20k ticks/s: the node's memory against
    /// its --max-outbound-bytes, what its policy did, and the memory given back after.
    Storm(scenario::storm::Args),
    /// A receiving process (started by the bench itself).
    #[command(hide = true)]
    Worker,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Latency(a) => scenario::latency::run(a),
        Cmd::Fanout(a) => scenario::fanout::run(a),
        Cmd::Connections(a) => scenario::connections::run(a),
        Cmd::SlowConsumers(a) => scenario::slow::run(a),
        Cmd::CrossNode(a) => scenario::cross_node::run(a),
        Cmd::Encoding(a) => scenario::encoding::run(a),
        Cmd::Soak(a) => scenario::soak::run(a),
        Cmd::Dashboard(a) => scenario::dashboard::run(a),
        Cmd::Patterns(a) => scenario::patterns::run(a),
        Cmd::Book(a) => scenario::book::run(a),
        Cmd::Candles(a) => candles::run(a),
        Cmd::Results(a) => page::run(a),
        Cmd::Fragments(a) => scenario::fragments::run(a),
        Cmd::Roll(a) => scenario::roll::run(a),
        Cmd::Storm(a) => scenario::storm::run(a),
        Cmd::ClusterPubsub(a) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(cluster::run(a))),
        Cmd::Worker => load::worker_main(),
    };
    if let Err(e) = r {
        eprintln!("tickstream-bench: {e:#}");
        std::process::exit(1);
    }
}
