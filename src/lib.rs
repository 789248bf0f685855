//! # tickstream
//!
//! Market-data streaming: ticks from feeds reach every subscriber of their symbol over
//! WebSocket, on one node or many joined by Redis Pub/Sub.
//!
//! # Layout
//!
//! The data flows `feed → bus → hub → session → transport`. The modules form layers: each
//! imports only from the layers above it in this list (bottom first), never from below.
//!
//! 1. [`tick`]: the tick, symbols and their grammar, epochs; its JSON encoding;
//!    [`book`]: the order book (L2) as fixed-point levels, its messages and checksum.
//! 2. [`protocol`]: the wire messages (commands, channels and their options), and the
//!    close codes with their meaning;
//!    [`metrics`]: process-wide counters and their Prometheus exposition.
//! 3. [`auth`] (tokens), [`tls`] (certificates and trust for `https`/`wss`), [`backoff`]
//!    (retry delays of the client and the Redis bus).
//! 4. [`hub`]: symbol → latest value, history ring and local subscribers; fan-out into
//!    each session's bounded queue ([`hub::queue`], with the slow-consumer policy), the
//!    node's one pacer of paced subscriptions (`throttle_ms`), its one timer of every
//!    waiting session's deadlines ([`hub::alarms`]), and the bars of every
//!    symbol, folded from its ticks ([`hub::candles`]).
//! 5. [`bus`]: carries ticks to the hub of every node (in-process by default, Redis
//!    Pub/Sub or sharded Pub/Sub between nodes); watches the channels the node asks for.
//! 6. [`client`]: the Rust client (reconnects, resumes; also what feed processes use to
//!    reach a node).
//! 7. [`feed`]: produces ticks (synthetic generator, replays of recordings) and owns
//!    `seq`; runs a feed inside a node ([`feed::pump`]); checks the ticks external feeds
//!    push in ([`feed::ingest`]); carries a feed process's ticks to a node, a bus or a file.
//! 8. [`config`]: settings from flags, environment and TOML.
//! 9. [`node`]: what one server's connections share, and the coordinator of
//!    subscriptions: local interest per symbol, first/last subscriber to the bus.
//! 10. [`session`]: one client whatever the transport: commands, inbound limits,
//!     heartbeat and silence deadlines, token expiry, catching up, the close.
//! 11. [`transport`]: moves frames: WebSocket (subscriber and publisher endpoints, one
//!     reassembly path), SSE and the HTTP routes on the same port; the router
//!     ([`transport::http`]) above the routes, what they share (upgrade, door, request,
//!     reply) below them.
//! 12. [`server`]: listen, accept, TLS hand-off, shutdown.
//! 13. [`cli`]: the command line.

pub mod auth;
pub mod backoff;
pub mod book;
pub mod bus;
pub mod cli;
pub mod client;
pub mod config;
pub mod feed;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod server;
pub mod session;
pub mod tick;
pub mod tls;
pub mod transport;
