//! Feeds: where ticks come from.
//!
//! A feed produces [`Tick`](crate::tick::Tick)s and is their origin of truth: it owns
//! each symbol's `seq` (rising by exactly one per symbol within an `epoch`) and stamps
//! `ts` when a tick is produced. The synthetic generator walks the symbols of a
//! [`Universe`]; [`replay`] plays a [`recording`] back; [`publish`] carries a feed's
//! ticks to a node, a bus or a file when the feed runs as its own process.

pub mod ingest;
pub mod publish;
pub mod pump;
pub mod recording;
pub mod replay;
pub mod synthetic;
pub mod universe;

pub use replay::{ReplayConfig, Speed};
pub use synthetic::{Generator, SynthConfig};
pub use universe::{AssetClass, Instrument, Universe, UniverseError};
