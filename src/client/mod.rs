//! The Rust client of tickstream.

pub mod connect;

pub use connect::{connect, ClientWs, ConnectError};
