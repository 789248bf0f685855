//! `cross-node`: the publisher into Redis, the connections split over two nodes; the
//! latency added against one node fed the same load in-process.

use crate::common::{Common, FixedLoad, Server, Source, Target};
use crate::report::COLUMNS;
use crate::scenario::{finish, run_alternating, Ctx, Defaults, Load};

/// Two nodes joined by Redis against one node.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example (redis-server and two nodes spawned; the same 100×10/100 at \
10,000 ticks/s into one node's /v1/publish, then into Redis with half the connections on each node):

  tickstream-bench cross-node --spawn --server-cpus 0 --client-cpus 1"
)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: FixedLoad,
}

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    if !a.common.against.is_empty() {
        anyhow::bail!(
            "cross-node compares tickstream with itself; --against is for the other scenarios"
        );
    }
    if !a.common.spawning() && (a.common.urls.len() < 2 || a.common.redis.is_none()) {
        anyhow::bail!("cross-node with --url needs two --url (two nodes) and --redis");
    }
    let single = Target {
        label: "single-node".into(),
        ..Target::tickstream(Source::Publish)
    };
    let cross = Target {
        label: "cross-node".into(),
        server: Server::Tickstream,
        source: Source::Redis,
        nodes: 2,
        encoding: "json".into(),
    };
    let targets = vec![single, cross];
    let mut ctx = Ctx::new(a.common, "cross-node", Defaults::default())?;
    let l = a.load;
    let runs = run_alternating(&mut ctx, &targets, &Load::plain(l.shape, l.rate))?;
    let medians = finish(
        &ctx,
        &format!("cross-node against single node, {}", l.describe()),
        &runs,
        &[("cross-node".into(), "single-node".into())],
        l.json(),
    )?;
    if let (Some(s), Some(c)) = (
        medians.iter().find(|m| m.target == "single-node"),
        medians.iter().find(|m| m.target == "cross-node"),
    ) {
        let added: Vec<String> = COLUMNS
            .iter()
            .zip(c.latency.values().iter().zip(s.latency.values()))
            .map(|(n, (c, s))| format!("{n} {:+.3} ms", (c - s) / 1e3))
            .collect();
        println!(
            "added by the hop through Redis to another node: {}",
            added.join(", ")
        );
    }
    Ok(())
}
