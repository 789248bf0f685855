//! `tickstream feed replay FILE`: play a recording back into a node or a bus.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::Receiver;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Dur;
use crate::feed::publish::{self, SinkReport};
use crate::feed::replay::{self, Progress, ReplayConfig, Speed};
use crate::feed::Item;

/// Ticks buffered between the feed thread and its destination.
pub(super) const FEED_BUFFER: usize = 65_536;

/// Where a feed command publishes: a node's publisher endpoint or a Redis bus.
#[derive(clap::Args, Debug)]
pub(super) struct Target {
    /// Publish to a node's publisher endpoint, e.g. ws://127.0.0.1:8080/v1/publish.
    #[arg(long, value_name = "WS_URL", env = "TICKSTREAM_PUBLISH_URL")]
    pub to: Option<String>,

    /// The Redis bus to publish on (with --redis or --redis-cluster).
    #[command(flatten)]
    pub redis: crate::config::RedisArgs,

    /// This feed's id in the Redis lease keys and heartbeats: a feed restarted under it
    /// takes its symbols back at once; a second feed with another id is refused the
    /// symbols this one publishes. Default: feed-<host>.
    #[arg(long, value_name = "ID", env = "TICKSTREAM_FEED_ID")]
    pub feed_id: Option<String>,

    /// Bearer token sent to the publisher endpoint (with --to).
    #[arg(
        long,
        value_name = "JWT",
        env = "TICKSTREAM_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// PEM bundle of extra CAs trusted for a wss:// --to URL, besides the built-in roots.
    #[arg(long, value_name = "FILE", env = "TICKSTREAM_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

impl Target {
    /// The Redis bus named by `--redis` or `--redis-cluster`, if any.
    pub(super) fn redis_config(&self) -> anyhow::Result<Option<crate::bus::RedisConfig>> {
        Ok(self.redis.config()?)
    }

    /// A name of the destination, for summaries.
    pub(super) fn describe(&self) -> String {
        match (&self.to, self.redis_config()) {
            (Some(url), _) => url.clone(),
            (None, Ok(Some(cfg))) => cfg.describe(),
            (None, _) => String::new(),
        }
    }
}

/// Options.
#[derive(clap::Args, Debug)]
#[command(
    group(clap::ArgGroup::new("dest").required(true).args(["to", "redis", "redis_cluster"])),
    after_help = "Example:\n  tickstream feed replay feeds/sample.ndjson.zst --to ws://127.0.0.1:8080/v1/publish --speed 10 --symbols AAPL,MSFT"
)]
pub struct Args {
    /// The recording (NDJSON, zstd-compressed when it ends in .zst; see feeds/README.md).
    #[arg(value_name = "FILE")]
    file: PathBuf,

    /// Speed: a factor of the recorded spacing (0.5, 1, 10 or 10x) or `max`.
    #[arg(long, default_value = "1", value_name = "X|max")]
    speed: Speed,

    /// Start again from the beginning at the end, until interrupted; each pass is a new epoch.
    #[arg(long = "loop")]
    looping: bool,

    /// Skip ticks and book messages recorded less than this long after the first one, e.g. 30s.
    #[arg(long, value_name = "DURATION")]
    from: Option<Dur>,

    /// Play only these symbols (separate arguments or comma-separated; give FILE before them).
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "SYMBOL")]
    symbols: Vec<String>,

    #[command(flatten)]
    target: Target,
}

pub(super) fn run(args: Args) -> anyhow::Result<()> {
    super::init_logs(Some("warn"));
    let symbols = checked_symbols(&args.symbols)?;
    let config = ReplayConfig {
        speed: args.speed,
        looping: args.looping,
        from: args.from.map_or(Duration::ZERO, |d| d.0),
        symbols: symbols.into_iter().collect(),
    };
    // The whole file is checked before anything is published.
    let scan = replay::scan(&args.file, &config)?;
    let rt = runtime()?;
    let dest = rt.block_on(Dest::open(&args.target))?;

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let signal = stop_on_signal(&rt, stop.clone())?;
    let (tx, rx) = crossbeam_channel::bounded::<Item>(FEED_BUFFER);
    let player = replay::spawn(
        args.file.clone(),
        config.clone(),
        tx,
        stop.clone(),
        progress.clone(),
    );
    let bar = progress_bar(if config.looping {
        None
    } else {
        Some(scan.selected + scan.books_selected)
    });
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (bar, progress, done) = (bar.clone(), progress.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                bar.set_position(
                    progress.ticks.load(Ordering::Relaxed) + progress.books.load(Ordering::Relaxed),
                );
                if config.looping {
                    bar.set_message(format!("pass {}", progress.passes.load(Ordering::Relaxed)));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let delivered = rt.block_on(dest.deliver(rx));
    signal.abort();
    stop.store(true, Ordering::Release);
    let played = player
        .join()
        .map_err(|_| anyhow::anyhow!("the replay thread panicked"))?;
    done.store(true, Ordering::Release);
    let _ = ticker.join();
    bar.finish_and_clear();
    let sink = delivered?;
    let rep = played?;
    let secs = rep.elapsed.as_secs_f64();
    println!(
        "replayed {} ticks{} over {} symbols in {:.2}s ({:.0} ticks/s, speed {}, {} pass{}, recorded span {:.2}s); {} accepted, {} refused",
        rep.ticks,
        match rep.books {
            0 => String::new(),
            n => format!(" and {n} book messages"),
        },
        rep.symbols,
        secs,
        rate(rep.ticks, secs),
        args.speed,
        rep.passes,
        if rep.passes == 1 { "" } else { "es" },
        rep.span.as_secs_f64(),
        sink.accepted,
        sink.refused,
    );
    refusals(&sink)
}

/// Checks `--symbols` against the symbol grammar; none given means every symbol.
pub(super) fn checked_symbols(symbols: &[String]) -> anyhow::Result<Vec<String>> {
    Ok(crate::tick::parse_symbols(symbols)?)
}

/// Fails the command when the destination refused ticks, after listing the first ones.
pub(super) fn refusals(sink: &SinkReport) -> anyhow::Result<()> {
    if sink.refused == 0 {
        return Ok(());
    }
    for e in &sink.errors {
        eprintln!("refused: {e}");
    }
    anyhow::bail!("{} ticks were refused", sink.refused)
}

pub(super) fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// From now on SIGINT and SIGTERM set `stop` (which ends the feed, and so, once what it
/// sent is delivered, the command) instead of killing the process. The handlers are in
/// place when this returns.
pub(super) fn stop_on_signal(
    rt: &tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let _ctx = rt.enter();
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(rt.spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        stop.store(true, Ordering::Release);
    }))
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One worker, so spawned tasks (the signal watch) run while a thread blocks on a file.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn progress_bar(len: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match len {
        Some(n) => (
            ProgressBar::new(n),
            "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} messages, eta {eta}",
        ),
        None => (
            ProgressBar::no_length(),
            "{elapsed_precise} {spinner} {human_pos} messages, {msg}",
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// An opened destination, ready before the feed starts.
pub(super) enum Dest {
    /// A node's publisher endpoint.
    Node(String, crate::client::connect::ClientWs),
    /// A Redis bus (one server or a cluster).
    Redis(Arc<crate::bus::RedisPublisher>),
}

impl Dest {
    /// Connects what `target` names, failing fast before any tick is produced.
    pub(super) async fn open(target: &Target) -> anyhow::Result<Dest> {
        if let Some(cfg) = target.redis_config()? {
            let feed_id = target
                .feed_id
                .clone()
                .unwrap_or_else(publish::default_feed_id);
            let publisher = publish::redis_publisher(&cfg, &feed_id).await?;
            return Ok(Dest::Redis(Arc::new(publisher)));
        }
        let url = target
            .to
            .as_deref()
            .context("give --to WS_URL or --redis URL")?;
        let tls = match &target.ca_file {
            Some(path) => Some(crate::client::ClientTls::new(Some(path))?),
            None => None,
        };
        let ws = publish::connect_node(url, target.token.as_deref(), tls.as_ref()).await?;
        Ok(Dest::Node(url.to_owned(), ws))
    }

    /// Drains the feed into the destination until the feed ends.
    pub(super) async fn deliver(self, rx: Receiver<Item>) -> anyhow::Result<SinkReport> {
        let started = Instant::now();
        let r = match self {
            Dest::Node(url, ws) => publish::to_node(&url, ws, rx).await,
            Dest::Redis(publisher) => {
                let p = publisher.clone();
                let r = tokio::task::spawn_blocking(move || publish::to_redis(rx, &p))
                    .await
                    .context("the bus publisher panicked")?;
                publisher.close().await;
                r.map(|report| publish::redis_report(report, &publisher))
            }
        };
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "delivered"
        );
        Ok(r?)
    }
}
