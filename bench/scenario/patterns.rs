//! `patterns`: what subscribing with a pattern costs. Every connection holds the whole
//! universe, once as `"*"` and once with every symbol named, alternating over runs:
//! server CPU per delivered message and latency of each.

use crate::common::{Common, Shape, Target};
use crate::load::Subscription;
use crate::scenario::{finish, run_variants, Ctx, Defaults, Load, Variant};

/// `"*"` against the same symbols named.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example (20 connections × all 508 symbols at 10,000 ticks/s: 200k msgs/s):

  tickstream-bench patterns --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3

Both variants get the same load and the same node; the pattern variant's connections send \
`{\"op\":\"subscribe\",\"symbols\":[\"*\"]}`, which matches exactly the N symbols of the \
bench's flat universe. Each is checked as every run is: received = published × fan-out."
)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Load shape C×N/N: C connections, each holding all N symbols.
    #[arg(long, default_value = "20x508/508")]
    pub shape: Shape,
    /// Ticks per second over the N symbols.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
}

/// Label of the variant that names its symbols.
pub const NAMED: &str = "named";
/// Label of the variant that subscribes `*`.
pub const PATTERN: &str = "pattern";

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    if a.shape.per_conn != a.shape.symbols {
        anyhow::bail!(
            "--shape {}: every connection must hold all N symbols (C×N/N), as `*` does",
            a.shape
        );
    }
    let source = a.common.source;
    let variant = |label: &str, pattern: Option<&str>| Variant {
        target: Target {
            label: label.into(),
            ..Target::tickstream(source)
        },
        load: Load {
            subscription: Subscription {
                throttle_ms: 0,
                pattern: pattern.map(str::to_owned),
                ..Subscription::default()
            },
            ..Load::plain(a.shape, a.rate)
        },
        may_fail: false,
    };
    let variants = [variant(PATTERN, Some("*")), variant(NAMED, None)];
    let mut ctx = Ctx::new(a.common, "patterns", Defaults::default())?;
    let (runs, _) = run_variants(&mut ctx, &variants)?;
    let title = format!(
        "patterns, {} at {} ticks/s (\"*\" against named)",
        a.shape, a.rate
    );
    finish(
        &ctx,
        &title,
        &runs,
        &[(PATTERN.into(), NAMED.into())],
        serde_json::json!({"shape": a.shape.to_string(), "rate": a.rate}),
    )?;
    Ok(())
}
