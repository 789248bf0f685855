//! Transports move frames between a session and its client: WebSocket (`ws`), and the
//! HTTP routes that share its port (`http`).

pub mod http;
pub mod ws;
