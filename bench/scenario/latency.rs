//! `latency`: percentiles at a fixed rate and shape.

use crate::common::{targets_with_references, Common, Shape};
use crate::scenario::{finish, reference_pairs, run_alternating, Ctx, Defaults, Load};

/// Publish-to-receive latency at a fixed rate and load shape.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example (one command: spawns a node, paces 10,000 ticks/s into its \
/v1/publish, 100 connections × 10 of 100 symbols = 100k msgs/s, 3 runs alternating with the references):

  tickstream-bench latency --spawn --server-cpus 0 --client-cpus 1 --against floor,node
  tickstream-bench latency --source redis --shape 100x10/100 --rate 10000
  tickstream-bench latency --url ws://127.0.0.1:8080/v1/ws --source synthetic --server-pid 1234"
)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Load shape C×K/N: C connections, each subscribed to K of N symbols.
    #[arg(long, default_value = "100x10/100")]
    pub shape: Shape,
    /// Ticks per second over the N symbols.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
}

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    let targets = targets_with_references(&a.common)?;
    let mut ctx = Ctx::new(a.common, "latency", Defaults::default())?;
    let load = Load::plain(a.shape, a.rate);
    let runs = run_alternating(&mut ctx, &targets, &load)?;
    let title = format!(
        "latency, {} at {} ticks/s ({:.0} msgs/s)",
        a.shape,
        a.rate,
        a.rate * a.shape.fanout()
    );
    finish(
        &ctx,
        &title,
        &runs,
        &reference_pairs(&targets),
        serde_json::json!({"shape": a.shape.to_string(), "rate": a.rate}),
    )?;
    Ok(())
}
