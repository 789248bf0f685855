//! The server: builds a node from its settings, starts its feed, accepts connections,
//! and shuts down in order: stop accepting, tell every client `reconnect` and keep
//! streaming for the notice, close what is still open with 1001, drain, stop the feed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::Auth;
use crate::bus::{Bus, LocalBus, RedisBus};
use crate::config::{FeedSpec, Settings};
use crate::feed::pump::{FeedThreads, RunningFeed};
use crate::feed::{self, Universe};
use crate::hub::Hub;
use crate::node::Node;
use crate::transport::door::Door;
use crate::transport::socket::{Conn, Reset};

/// A started node.
pub struct Running {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// The node itself.
    pub node: Arc<Node>,
    accept: tokio::task::JoinHandle<()>,
    feed: Option<RunningFeed>,
    certs: Option<Arc<crate::tls::CertResolver>>,
}

/// Loads the universe the settings name, or the bundled one.
pub fn load_universe(settings: &Settings) -> anyhow::Result<Universe> {
    match &settings.universe {
        Some(path) => {
            Universe::load(path).with_context(|| format!("loading universe {}", path.display()))
        }
        None => Ok(Universe::bundled()),
    }
}

/// Builds the node, binds its port and starts its feed and accept loop.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let universe = load_universe(&settings)?;
    crate::metrics::set_enabled(settings.metrics);
    let keys = crate::auth::KeySources {
        secret_file: settings.jwt_secret_file.clone(),
        keys: settings.jwt_keys.clone(),
        dir: settings.jwt_key_dir.clone(),
    };
    let auth = match keys.is_empty() {
        true => None,
        false => Some(Auth::load(keys, settings.jwt_leeway)?),
    };
    let (tls, certs) = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => {
            let (acceptor, certs) = crate::tls::acceptor(cert, key)?;
            (Some(acceptor), Some(certs))
        }
        _ => (None, None),
    };
    let door = Arc::new(Door::new(&settings)?);
    let books = crate::hub::book::BookSettings {
        history: settings.book_history,
        max_levels: settings.book_max_levels,
    };
    let hub = Hub::new(universe.symbols().cloned(), settings.history)
        .with_candle_keep(settings.candles_keep)
        .with_books(universe.book_specs(), books);
    let hub = Arc::new(hub);
    let bus: Arc<dyn Bus> = match &settings.redis {
        None => Arc::new(LocalBus::new(hub.clone())),
        Some(cfg) => {
            // With Redis, the hub gets ticks from Redis only; a feed here publishes there.
            let feed_id = (settings.feed != FeedSpec::None).then_some(settings.feed_id.as_str());
            let bus = RedisBus::connect(cfg.clone(), hub.clone(), feed_id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::info!(redis = %cfg.describe(), prefix = %cfg.prefix, "joined through Redis");
            Arc::new(bus)
        }
    };
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let feed = match &settings.feed {
        FeedSpec::Synthetic => Some(start_synthetic(&settings, universe, bus.clone())),
        FeedSpec::None => None,
        FeedSpec::Replay(path) => Some(RunningFeed::Threads(start_replay(
            &settings,
            path,
            &hub,
            bus.clone(),
        )?)),
    };
    let node = Node::new(settings, hub, bus, auth);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let accept = tokio::spawn(accept_loop(node.clone(), door, listener, tls));
    if certs.is_some() || node.auth.is_some() {
        // Installed before start returns, so a SIGHUP from then on reloads, never kills.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only"))
            .ok();
        tokio::spawn(reload_loop(node.clone(), certs.clone(), hangup));
    }
    tracing::info!(%addr, %scheme, node = %node.settings.node, "serving");
    Ok(Running {
        addr,
        node,
        accept,
        feed,
        certs,
    })
}

/// Reloads the TLS certificate and the JWT keys on SIGHUP (everything) and every
/// `reload_poll` (what changed), until shutdown. A bad new file is logged and the old
/// certificate or keys stay in use.
async fn reload_loop(
    node: Arc<Node>,
    certs: Option<Arc<crate::tls::CertResolver>>,
    mut hangup: Option<tokio::signal::unix::Signal>,
) {
    let poll = node.settings.reload_poll;
    let mut tick = tokio::time::interval(if poll.is_zero() {
        Duration::from_secs(3600)
    } else {
        poll
    });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let all = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = async { hangup.as_mut()?.recv().await }, if hangup.is_some() => true,
            _ = tick.tick() => false,
        };
        if !all && poll.is_zero() {
            continue;
        }
        if let Some(certs) = &certs {
            match if all {
                Some(certs.reload())
            } else {
                certs.reload_if_changed()
            } {
                Some(Ok(())) => tracing::info!("TLS certificate reloaded"),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "TLS certificate not reloaded; keeping the one in use")
                }
                None => {}
            }
        }
        if let Some(auth) = &node.auth {
            match if all {
                Some(auth.reload())
            } else {
                auth.reload_if_changed()
            } {
                Some(Ok(n)) => tracing::info!(keys = n, "JWT keys reloaded"),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "JWT keys not reloaded; keeping the ones in use")
                }
                None => {}
            }
        }
    }
}

fn start_synthetic(settings: &Settings, universe: Universe, bus: Arc<dyn Bus>) -> RunningFeed {
    let config = feed::SynthConfig {
        rate: settings.rate,
        seed: settings.seed,
        duration: None,
        batch: settings.feed_batch,
        books: true,
    };
    RunningFeed::synthetic(universe, config, bus)
}

fn start_replay(
    settings: &Settings,
    path: &std::path::Path,
    hub: &Hub,
    bus: Arc<dyn Bus>,
) -> anyhow::Result<FeedThreads> {
    let config = feed::ReplayConfig {
        speed: settings.replay_speed,
        looping: settings.replay_loop,
        ..Default::default()
    };
    FeedThreads::replay(path, config, hub, bus)
}

async fn accept_loop(
    node: Arc<Node>,
    door: Arc<Door>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let accepted = tokio::select! {
            _ = node.draining.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                if let Some(bytes) = node.settings.send_buffer {
                    let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(bytes);
                }
                let (node, door, peer) = (node.clone(), door.clone(), peer.ip());
                let reset = Reset::new();
                let conn = Conn::new(tcp, reset.clone());
                match &tls {
                    None => {
                        node.tasks
                            .spawn(serve_connection(node.clone(), door, peer, conn, reset))
                    }
                    Some(tls) => node.tasks.spawn(serve_tls(
                        node.clone(),
                        door,
                        peer,
                        (conn, reset),
                        tls.clone(),
                    )),
                };
            }
            Err(e) => {
                // Out of descriptors or a reset before accept: log, breathe, go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs the TLS handshake of an accepted connection in its own task, bounded by
/// `tls_handshake_timeout` (and by shutdown), then serves it like a plain one.
async fn serve_tls(
    node: Arc<Node>,
    door: Arc<Door>,
    peer: std::net::IpAddr,
    (tcp, reset): (Conn, Reset),
    tls: TlsAcceptor,
) {
    let limit = node.settings.tls_handshake_timeout;
    let stream = tokio::select! {
        _ = node.shutdown.cancelled() => return,
        r = tokio::time::timeout(limit, tls.accept(tcp)) => match r {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, ?limit, "TLS handshake timed out");
                return;
            }
        },
    };
    serve_connection(node, door, peer, stream, reset).await;
}

/// Serves HTTP/1.1 (and the WebSocket upgrades) on one connection from `peer`, plain
/// or TLS; its requests carry `reset`, and asking for it drops the connection at once.
async fn serve_connection<S>(
    node: Arc<Node>,
    door: Arc<Door>,
    peer: std::net::IpAddr,
    io: S,
    reset: Reset,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_node = node.clone();
    let svc_reset = reset.clone();
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(svc_reset.clone());
        crate::transport::http::route(svc_node.clone(), door.clone(), peer, req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(node.settings.header_timeout)
        // A larger request head is answered 431 (hyper's own floor is 8192).
        .max_buf_size(node.settings.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                if e.is_parse_too_large() {
                    crate::metrics::global().refused(crate::metrics::Refused::HeaderTooLarge);
                }
                tracing::debug!(%peer, error = %e, "http connection ended");
            }
        }
        _ = node.draining.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(node.settings.drain, conn).await;
        }
        // A stream on it gave up on its client: the socket is reset as it is dropped.
        _ = reset.wait() => {}
    }
}

/// Waits while the node's clients are told to reconnect: the reconnect notice, or until
/// the last of them has gone.
async fn wait_for_notice(node: &Node) {
    let until = tokio::time::Instant::now() + node.settings.reconnect_notice;
    while tokio::time::Instant::now() < until
        && node.connections.load(std::sync::atomic::Ordering::Relaxed) > 0
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Running {
    /// The certificate a TLS node serves, to reload it in place (as SIGHUP does).
    pub fn certs(&self) -> Option<&Arc<crate::tls::CertResolver>> {
        self.certs.as_ref()
    }

    /// Stops accepting and tells every client `reconnect` (they keep streaming for the
    /// reconnect notice and then close with 1001), closes what is still open after the
    /// notice with 1001, waits for the connections up to the drain time in all, then
    /// stops the feed.
    pub async fn shutdown(self) {
        let node = self.node;
        let deadline = tokio::time::Instant::now() + node.settings.drain;
        node.drain();
        let _ = self.accept.await;
        wait_for_notice(&node).await;
        node.shut_down();
        node.tasks.close();
        if tokio::time::timeout_at(deadline, node.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain time elapsed with connections still open");
        }
        if let Some(feed) = self.feed {
            feed.stop().await;
        }
        node.bus.close().await;
        tracing::info!("stopped");
    }
}
