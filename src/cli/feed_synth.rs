//! `tickstream feed synth`: the synthetic generator as its own process, publishing to a
//! node, a bus or a recording file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use super::feed_replay::{
    checked_symbols, rate, refusals, runtime, stop_on_signal, Dest, Target, FEED_BUFFER,
};
use crate::config::Dur;
use crate::feed::Item;
use crate::feed::{self, publish, SynthConfig, Universe};

/// Options.
#[derive(clap::Args, Debug)]
#[command(
    group(clap::ArgGroup::new("dest").required(true).args(["to", "redis", "redis_cluster", "out"])),
    after_help = "Examples:\n  tickstream feed synth --to ws://127.0.0.1:8080/v1/publish --rate 5000 --duration 30s\n  tickstream feed synth --out session.ndjson.zst --symbols AAPL,MSFT,EUR/USD --duration 1m --seed 7"
)]
pub struct Args {
    /// Symbol universe (CSV, see feeds/README.md). Default: the bundled feeds/universe.csv.
    #[arg(long, value_name = "FILE")]
    universe: Option<PathBuf>,

    /// Generate only these symbols of the universe (separate arguments or comma-separated).
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "SYMBOL")]
    symbols: Vec<String>,

    /// Total ticks per second over all symbols.
    #[arg(long, default_value_t = 1000.0, value_name = "N")]
    rate: f64,

    /// Stop after this long, e.g. 30s or 5m. Default: until interrupted.
    #[arg(long, value_name = "DURATION")]
    duration: Option<Dur>,

    /// Random seed; the same seed gives the same ticks. Default: random (printed at the end).
    #[arg(long)]
    seed: Option<u64>,

    /// Write the ticks to this recording file instead (zstd when it ends in .zst).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    #[command(flatten)]
    target: Target,
}

pub(super) fn run(args: Args) -> anyhow::Result<()> {
    super::init_logs(Some("warn"));
    if !(args.rate.is_finite() && args.rate > 0.0) {
        anyhow::bail!("--rate must be a positive number of ticks per second");
    }
    let mut universe = match &args.universe {
        Some(p) => {
            Universe::load(p).with_context(|| format!("loading universe {}", p.display()))?
        }
        None => Universe::bundled(),
    };
    let symbols = checked_symbols(&args.symbols)?;
    if !symbols.is_empty() {
        universe = universe.filter(&symbols)?;
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let config = SynthConfig {
        rate: args.rate,
        seed,
        duration: args.duration.map(|d| d.0),
        ..Default::default()
    };
    let rt = runtime()?;
    let dest = match &args.out {
        Some(_) => None,
        None => Some(rt.block_on(Dest::open(&args.target))?),
    };
    let n_symbols = universe.len();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = crossbeam_channel::bounded::<Item>(FEED_BUFFER);
    let epoch = crate::tick::new_epoch();
    let signal = stop_on_signal(&rt, stop.clone())?;
    let started = Instant::now();
    let generator = feed::synthetic::spawn(universe, config, epoch.clone(), tx, stop.clone());
    let delivered = match (dest, &args.out) {
        (Some(dest), _) => rt.block_on(dest.deliver(rx)),
        (None, Some(path)) => {
            let source = format!("tickstream feed synth --rate {} --seed {seed}", args.rate);
            publish::to_file(rx, path, &source).map_err(anyhow::Error::from)
        }
        (None, None) => unreachable!("clap requires a destination"),
    };
    signal.abort();
    stop.store(true, Ordering::Release);
    let _generated = generator
        .join()
        .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?;
    let sink = delivered?;
    let secs = started.elapsed().as_secs_f64();
    let dest = match &args.out {
        Some(p) => p.display().to_string(),
        None => args.target.describe(),
    };
    println!(
        "published {} ticks over {n_symbols} symbols to {dest} in {secs:.2}s ({:.0} ticks/s, seed {seed}, epoch {epoch}); {} accepted, {} refused",
        sink.sent,
        rate(sink.sent, secs),
        sink.accepted,
        sink.refused,
    );
    refusals(&sink)
}
