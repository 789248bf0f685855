//! Transports move frames between a session and its client: WebSocket (`ws`, its frames
//! read and written by `frames`), and the HTTP routes that share its port (`http`),
//! Server-Sent Events (`sse`), and the publisher endpoint through which external feeds
//! push ticks in (`publish`). The
//! dashboard page served at `/` lives in `dashboard`; the limits every stream passes
//! before its upgrade, in `door`.

pub mod dashboard;
pub mod door;
pub mod frames;
pub mod http;
pub mod publish;
pub mod sse;
pub mod ws;
