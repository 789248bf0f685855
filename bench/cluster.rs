//! `tickstream-bench cluster-pubsub --seed redis://…`: SPUBLISH → receive on a Redis
//! Cluster, through the node's own slot routing (one multiplexed RESP3 connection per
//! master, `src/bus/redis/shards.rs`) and through the `redis` crate's cluster client
//! (sharded Pub/Sub with RESP3 push messages), alternately in one run.
//!
//! Two measures per implementation and round: `rtt`, one message at a time (publish,
//! then wait for it to arrive on the subscription), and `burst`, `--tasks` publishers at
//! once until `--n` messages have arrived. CPU is this process's user + system time.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

/// Options.
#[derive(clap::Args, Clone)]
pub struct ClusterArgs {
    /// A seed URL of the cluster (repeat for several).
    #[arg(long = "seed", required = true)]
    seeds: Vec<String>,
    /// Messages per measure.
    #[arg(long, default_value_t = 20_000)]
    n: usize,
    /// Rounds; each runs both implementations, alternating which goes first.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent publishers of the burst measure.
    #[arg(long, default_value_t = 64)]
    tasks: usize,
    /// Symbols published round-robin (their channels spread over the masters).
    #[arg(
        long,
        default_value = "AAPL,MSFT,NVDA,AMZN,TSLA,META,AMD,SPY,QQQ,BTC-USD"
    )]
    symbols: String,
}

#[derive(Clone)]
enum Publisher {
    /// One connection per master and the slot → master map.
    Routed {
        conns: Vec<MultiplexedConnection>,
        slots: Vec<usize>,
    },
    /// The crate's cluster connection.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Publisher {
    async fn spublish(
        &mut self,
        symbol: &str,
        channel: &str,
        payload: &[u8],
    ) -> redis::RedisResult<()> {
        let mut cmd = redis::cmd("SPUBLISH");
        cmd.arg(channel).arg(payload);
        match self {
            Publisher::Routed { conns, slots } => {
                let i = slots[tickstream::bus::redis::shards::slot_of(symbol) as usize];
                cmd.query_async::<Value>(&mut conns[i]).await?;
            }
            Publisher::Cluster(c) => {
                cmd.query_async::<Value>(c).await?;
            }
        }
        Ok(())
    }
}

fn channel(s: &str) -> String {
    format!("bench:tick:{{{s}}}")
}

fn sender(tx: mpsc::UnboundedSender<PushInfo>) -> impl redis::aio::AsyncPushSender {
    tx
}

async fn routed(
    seeds: &[String],
    symbols: &[String],
) -> anyhow::Result<(Publisher, mpsc::UnboundedReceiver<PushInfo>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let seed = redis::Client::open(format!("{}?protocol=resp3", seeds[0]))?;
    let mut c = seed.get_multiplexed_async_connection().await?;
    let v: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut c)
        .await?;
    let Value::Array(ranges) = v else {
        anyhow::bail!("CLUSTER SLOTS")
    };
    let mut addrs: Vec<String> = Vec::new();
    let mut slots = vec![0usize; 16384];
    for r in ranges {
        let Value::Array(p) = r else {
            anyhow::bail!("CLUSTER SLOTS")
        };
        let (Value::Int(a), Value::Int(b), Value::Array(m)) = (&p[0], &p[1], &p[2]) else {
            anyhow::bail!("CLUSTER SLOTS")
        };
        let host = match &m[0] {
            Value::BulkString(h) => String::from_utf8_lossy(h).into_owned(),
            Value::SimpleString(h) => h.clone(),
            _ => anyhow::bail!("CLUSTER SLOTS"),
        };
        let Value::Int(port) = m[1] else {
            anyhow::bail!("CLUSTER SLOTS")
        };
        let addr = format!("{host}:{port}");
        let i = addrs.iter().position(|x| *x == addr).unwrap_or_else(|| {
            addrs.push(addr.clone());
            addrs.len() - 1
        });
        for s in *a..=*b {
            slots[s as usize] = i;
        }
    }
    let mut conns = Vec::new();
    for addr in &addrs {
        let client = redis::Client::open(format!("redis://{addr}?protocol=resp3"))?;
        let cfg = AsyncConnectionConfig::new().set_push_sender(sender(tx.clone()));
        conns.push(
            client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?,
        );
    }
    for s in symbols {
        let i = slots[tickstream::bus::redis::shards::slot_of(s) as usize];
        redis::cmd("SSUBSCRIBE")
            .arg(channel(s))
            .exec_async(&mut conns[i])
            .await?;
    }
    Ok((Publisher::Routed { conns, slots }, rx))
}

async fn cluster(
    seeds: &[String],
    symbols: &[String],
) -> anyhow::Result<(Publisher, mpsc::UnboundedReceiver<PushInfo>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = redis::cluster::ClusterClientBuilder::new(seeds.to_vec())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(sender(tx))
        .build()?;
    let mut c = client.get_async_connection().await?;
    // One channel per call: the cluster client refuses channels of several slots in one
    // SSUBSCRIBE (CROSSSLOT), as Redis does.
    for s in symbols {
        c.ssubscribe(channel(s)).await?;
    }
    Ok((Publisher::Cluster(c), rx))
}

/// User + system CPU time of this process.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // Fields 14 and 15 of stat (utime, stime), in clock ticks of 1/100 s.
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

async fn next_message(rx: &mut mpsc::UnboundedReceiver<PushInfo>) -> anyhow::Result<()> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("a message did not arrive within 5s"))?
            .ok_or_else(|| anyhow::anyhow!("the subscription closed"))?;
        if m.kind == PushKind::SMessage {
            return Ok(());
        }
    }
}

async fn measure(
    name: &str,
    mut p: Publisher,
    mut rx: mpsc::UnboundedReceiver<PushInfo>,
    a: &ClusterArgs,
    symbols: &[String],
) -> anyhow::Result<()> {
    let payload = vec![b'x'; 200];
    let channels: Vec<String> = symbols.iter().map(|s| channel(s)).collect();
    // Warm-up.
    for k in 0..1000 {
        let i = k % symbols.len();
        p.spublish(&symbols[i], &channels[i], &payload).await?;
        next_message(&mut rx).await?;
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (t0, c0) = (Instant::now(), cpu());
    for k in 0..a.n {
        let i = k % symbols.len();
        let t = Instant::now();
        p.spublish(&symbols[i], &channels[i], &payload).await?;
        next_message(&mut rx).await?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    let (wall, used) = (t0.elapsed(), cpu() - c0);
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name} rtt n={} p50_us={:.1} p99_us={:.1} max_us={:.1} wall_s={:.2} cpu_us_per_msg={:.1}",
        a.n,
        us(0.5),
        us(0.99),
        h.max() as f64 / 1000.0,
        wall.as_secs_f64(),
        used.as_secs_f64() * 1e6 / a.n as f64
    );
    let (t0, c0) = (Instant::now(), cpu());
    let per = a.n / a.tasks.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..a.tasks.max(1) {
        let mut p = p.clone();
        let (symbols, channels, payload) = (symbols.to_vec(), channels.clone(), payload.clone());
        tasks.spawn(async move {
            for k in 0..per {
                let i = (t + k) % symbols.len();
                p.spublish(&symbols[i], &channels[i], &payload).await?;
            }
            redis::RedisResult::Ok(())
        });
    }
    for _ in 0..per * a.tasks.max(1) {
        next_message(&mut rx).await?;
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let (wall, used) = (t0.elapsed(), cpu() - c0);
    let n = per * a.tasks.max(1);
    println!(
        "{name} burst n={n} tasks={} msgs_per_s={:.0} cpu_us_per_msg={:.1}",
        a.tasks,
        n as f64 / wall.as_secs_f64(),
        used.as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}

/// Runs the comparison.
pub async fn run(a: ClusterArgs) -> anyhow::Result<()> {
    let symbols = tickstream::tick::parse_symbols([a.symbols.as_str()])?;
    for round in 0..a.rounds.max(1) {
        for k in 0..2 {
            if (round + k) % 2 == 0 {
                let (p, rx) = routed(&a.seeds, &symbols).await?;
                measure("routed", p, rx, &a, &symbols).await?;
            } else {
                let (p, rx) = cluster(&a.seeds, &symbols).await?;
                measure("cluster_async", p, rx, &a, &symbols).await?;
            }
        }
    }
    Ok(())
}
