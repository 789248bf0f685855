//! `tickstream feed …`: feeds as their own processes.

use clap::Subcommand;

use super::{feed_record, feed_replay, feed_synth};

/// Feed subcommands.
#[derive(Subcommand)]
pub enum FeedCmd {
    /// Generate synthetic ticks and publish them to a node or a Redis bus.
    Synth(feed_synth::Args),
    /// Play a recording back, publishing to a node or a Redis bus.
    Replay(feed_replay::Args),
    /// Subscribe to a node and write what arrives to a recording file.
    Record(feed_record::Args),
}

pub(super) fn run(cmd: FeedCmd) -> anyhow::Result<()> {
    match cmd {
        FeedCmd::Synth(a) => feed_synth::run(a),
        FeedCmd::Replay(a) => feed_replay::run(a),
        FeedCmd::Record(a) => feed_record::run(a),
    }
}
