//! `tickstream-bench`: measures publish-to-receive latency as clients see it.
//!
//! `tickstream-bench latency --url ws://… [--url …] --conns N --symbols A,B,… --duration D`
//! opens N subscriber connections spread over the URLs, subscribes each to the symbols,
//! and records receive time minus the tick's `ts` (stamped by the feed when it
//! published) in an HDR histogram. After a warm-up it prints one line of percentiles in
//! microseconds, `key=value` separated, for scripts to read.

mod cluster;

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use tickstream::client::{Client, ClientConfig, Event, ServerMessage};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "tickstream-bench", about = "tickstream benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish-to-receive latency of live ticks.
    Latency(LatencyArgs),
    /// SPUBLISH → receive on a Redis Cluster: the node's slot routing against the redis
    /// crate's cluster client.
    ClusterPubsub(cluster::ClusterArgs),
}

#[derive(clap::Args, Clone)]
struct LatencyArgs {
    /// WebSocket URL of a node (repeat for several; connections go round-robin).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Subscriber connections in all.
    #[arg(long, default_value_t = 10)]
    conns: usize,
    /// Symbols each connection subscribes, comma-separated.
    #[arg(long, default_value = "AAPL,MSFT,NVDA,AMZN,TSLA")]
    symbols: String,
    /// How long to record.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Ticks received before this are not recorded.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// A name for this run, printed first.
    #[arg(long, default_value = "run")]
    label: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Latency(a) => rt.block_on(latency(a)),
        Cmd::ClusterPubsub(a) => rt.block_on(cluster::run(a)),
    }
}

async fn latency(a: LatencyArgs) -> anyhow::Result<()> {
    let symbols = tickstream::tick::parse_symbols([a.symbols.as_str()])?;
    let start = Instant::now();
    let record_from = start + a.warmup;
    let until = record_from + a.duration;
    let mut tasks = Vec::with_capacity(a.conns);
    for i in 0..a.conns.max(1) {
        let url = a.urls[i % a.urls.len()].clone();
        let symbols = symbols.clone();
        tasks.push(tokio::spawn(async move {
            one_connection(&url, &symbols, record_from, until).await
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for t in tasks {
        let h = t.await??;
        all.add(&h)?;
    }
    let us = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{} n={} p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1}",
        a.label,
        all.len(),
        us(0.50),
        us(0.90),
        us(0.99),
        us(0.999),
        all.max() as f64 / 1000.0
    );
    Ok(())
}

async fn one_connection(
    url: &str,
    symbols: &[String],
    record_from: Instant,
    until: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let client = Client::new(ClientConfig {
        urls: vec![url.to_owned()],
        symbols: symbols.to_vec(),
        snapshot: false,
        ..ClientConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let stop = CancellationToken::new();
    let (mut events, task) = client.spawn(4096, stop.clone());
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let ev = match tokio::time::timeout(until - now, events.recv()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(ev)) => ev,
        };
        if let Event::Message(ServerMessage::Tick(t)) = ev {
            let recv = tickstream::tick::now_ns();
            if t.ts > 0 && Instant::now() >= record_from {
                let _ = hist.record(recv.saturating_sub(t.ts).max(1));
            }
        }
    }
    stop.cancel();
    drop(events);
    if let Ok(Err(e)) = task.await {
        anyhow::bail!("{url}: {e}");
    }
    Ok(hist)
}
