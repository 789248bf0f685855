//! Transports move frames between a session and its client.
//!
//! From the top down: [`http`] routes every request on the node's port to one of the
//! routes below it: the WebSocket subscriber stream ([`ws`], its frames read and
//! written by [`frames`]), Server-Sent Events ([`sse`]), the publisher endpoint through
//! which external feeds push ticks in ([`publish`]), and the dashboard's page and
//! scripts ([`dashboard`]). Below the routes lies what they share: the WebSocket
//! [`upgrade`]; the [`door`], the limits every stream passes before its upgrade; what a
//! route reads from its [`request`] (query parameters, the token and its role); and the
//! [`reply`] it builds (body types, text and JSON answers); and, lowest, the accepted
//! [`socket`] itself, which a transport may ask to reset. No module imports from one
//! above it.

pub mod dashboard;
pub mod door;
pub mod frames;
pub mod http;
pub mod publish;
pub mod reply;
pub mod request;
pub mod socket;
pub mod sse;
pub mod upgrade;
pub mod ws;
