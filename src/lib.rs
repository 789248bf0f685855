//! # tickstream
//!
//! Market-data streaming: ticks from feeds reach every subscriber of their symbol over
//! WebSocket, on one node or many joined by Redis Pub/Sub.
//!
//! # Layout
//!
//! The data flows `feed → bus → hub → session → transport`:
//!
//! - [`feed`]: produces ticks (synthetic generator, replays of recordings), owns `seq`,
//!   stamps `ts`; also carries a feed process's ticks to a node, a bus or a file.
//! - [`bus`]: carries ticks from feeds to the hub of every node (in-process by default,
//!   Redis Pub/Sub or sharded Pub/Sub between nodes).
//! - [`hub`]: symbol → latest value, history ring and local subscribers; fan-out.
//! - [`session`]: one client: commands, limits, bounded outbound queue.
//! - [`transport`]: WebSocket frames and the HTTP routes on the same port, including the
//!   publisher endpoint through which external feeds push ticks in.
//!
//! Around them: [`tick`] (the tick and its encoding), [`protocol`] (the wire messages),
//! [`auth`] (tokens), [`backoff`] (retry delays of the client and the Redis bus), [`config`] (settings), [`cli`] (the command line), [`client`] (the
//! Rust client), [`node`] (what connections share), [`server`] (listen, accept, shut
//! down) and [`tls`] (certificates and trust for `https`/`wss`).

pub mod auth;
pub mod backoff;
pub mod bus;
pub mod cli;
pub mod client;
pub mod config;
pub mod feed;
pub mod hub;
pub mod node;
pub mod protocol;
pub mod server;
pub mod session;
pub mod tick;
pub mod tls;
pub mod transport;
