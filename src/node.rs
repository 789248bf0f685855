//! The node: what one server process shares between its connections.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::bus::Bus;
use crate::config::Settings;
use crate::hub::Hub;

/// Settings, hub, bus and the shutdown signal of one node.
pub struct Node {
    /// Resolved settings.
    pub settings: Settings,
    /// The registry of symbols and local subscribers.
    pub hub: Arc<Hub>,
    /// Where ticks come from and go to.
    pub bus: Arc<dyn Bus>,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Connections open now.
    pub connections: AtomicU64,
    /// Token checking, when auth is enabled.
    pub auth: Option<Auth>,
    /// Counters of the publisher endpoint.
    pub publish: crate::transport::publish::PublishStats,
}

impl Node {
    /// A node over `hub` and `bus`.
    pub fn new(
        settings: Settings,
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        auth: Option<Auth>,
    ) -> Arc<Node> {
        Arc::new(Node {
            settings,
            hub,
            bus,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            connections: AtomicU64::new(0),
            auth,
            publish: Default::default(),
        })
    }
}
