//! Feeds: where ticks come from.
//!
//! A feed produces [`Tick`](crate::tick::Tick)s and is their origin of truth: it owns
//! each symbol's `seq` (rising by exactly one per symbol within an `epoch`) and stamps
//! `ts` when a tick is produced. The synthetic generator walks the symbols of a
//! [`Universe`]; other feeds (replays of recorded sessions, external publishers) sit
//! beside it in this module.

pub mod recording;
pub mod synthetic;
pub mod universe;

pub use synthetic::{new_epoch, Generator, SynthConfig};
pub use universe::{AssetClass, Instrument, Universe, UniverseError};
