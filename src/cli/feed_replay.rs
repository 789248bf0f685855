//! `tickstream feed replay` (not built yet).

/// Options.
#[derive(clap::Args)]
pub struct Args {}

pub(super) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
