//! `latency`: percentiles at a fixed rate and shape.

use crate::common::{targets_with_references, Common, FixedLoad};
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
    #[command(flatten)]
    pub load: FixedLoad,
}

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    let targets = targets_with_references(&a.common)?;
    let mut ctx = Ctx::new(a.common, "latency", Defaults::default())?;
    let l = a.load;
    let runs = run_alternating(&mut ctx, &targets, &Load::plain(l.shape, l.rate))?;
    let title = format!(
        "latency, {} ({:.0} msgs/s)",
        l.describe(),
        l.rate * l.shape.fanout()
    );
    finish(&ctx, &title, &runs, &reference_pairs(&targets), l.json())?;
    Ok(())
}
