//! `tickstream-floor`: the smallest fan-out server that speaks tickstream's protocol, run
//! by the benchmarks beside tickstream as a measuring stick of what the machine allows.
//!
//! Ticks come in over `GET /v1/publish` (a WebSocket; each text frame holds one tick
//! object or an array of them) and go out over `GET /v1/ws` to every connection
//! subscribed to their symbol. Each tick is encoded once and its bytes shared by every
//! subscriber; a connection's writer sends everything queued for it as one frame holding
//! a JSON array. Nothing else: no history, no snapshots, no Redis, no auth, no limits
//! beyond one bounded queue per connection (newest message dropped and counted when
//! full). On SIGTERM or SIGINT it prints its counters as one JSON line on stdout and
//! exits 0.
//!
//! Layout: `main.rs` (command line, accept, routes, shutdown) · `hub.rs` (symbol →
//! subscriber queues, counters) · `subscriber.rs` (one `/v1/ws` connection) ·
//! `publisher.rs` (one `/v1/publish` connection).

mod hub;
mod publisher;
mod subscriber;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use hub::Hub;

/// A minimal fan-out server for tickstream's protocol, to measure against.
#[derive(Parser, Debug)]
#[command(name = "tickstream-floor", version)]
#[command(after_help = "Example:\n  tickstream-floor --listen 127.0.0.1:9100")]
struct Cli {
    /// Address to listen on (port 0 picks a free one; the address is printed on stderr).
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Messages queued per subscriber connection; past it the newest is dropped and
    /// counted.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    queue: u64,
    /// Most messages written in one frame (tickstream writes at most 512).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    max_batch: u64,
    /// WebSocket Ping interval on subscriber connections, announced in `welcome` (0: none).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
}

/// Settings every connection reads.
pub struct Opts {
    /// Queue length per subscriber.
    pub queue: usize,
    /// Most messages per frame.
    pub max_batch: usize,
    /// Ping interval (zero: none).
    pub heartbeat: Duration,
}

type Body = Full<Bytes>;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tickstream-floor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> std::io::Result<()> {
    let opts = Arc::new(Opts {
        queue: cli.queue as usize,
        max_batch: cli.max_batch as usize,
        heartbeat: cli.heartbeat,
    });
    let hub = Arc::new(Hub::default());
    // The handlers are in place before the port opens: a signal sent once it listens
    // is never missed.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let listener = TcpListener::bind(cli.listen).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cli.listen))
    })?;
    eprintln!("tickstream-floor listening on {}", listener.local_addr()?);

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let (hub, opts) = (hub.clone(), opts.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| route(hub.clone(), opts.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        }
    }
    println!("{}", hub.stats.to_json());
    Ok(())
}

async fn route(
    hub: Arc<Hub>,
    opts: Arc<Opts>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    Ok(match path.as_str() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/v1/ws"
            if query
                .split('&')
                .any(|p| p.starts_with("encoding=") && p != "encoding=json") =>
        {
            text(StatusCode::BAD_REQUEST, "encoding must be json\n")
        }
        "/v1/ws" => upgrade(&mut req, move |ws| subscriber::serve(hub, opts, ws)),
        "/v1/publish" => upgrade(&mut req, move |ws| publisher::serve(hub, ws)),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// An upgraded connection's byte stream.
pub type TokioUpgraded = TokioIo<hyper::upgrade::Upgraded>;

/// An upgraded WebSocket connection.
pub type Ws = fastwebsockets::WebSocket<TokioUpgraded>;

/// Answers a WebSocket handshake and runs `serve` on the connection once upgraded.
fn upgrade<F, Fut>(req: &mut Request<Incoming>, serve: F) -> Response<Body>
where
    F: FnOnce(Ws) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if !fastwebsockets::upgrade::is_upgrade_request(req) {
        return text(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket\n",
        );
    }
    match fastwebsockets::upgrade::upgrade(req) {
        Ok((resp, fut)) => {
            tokio::spawn(async move {
                if let Ok(ws) = fut.await {
                    serve(ws).await;
                }
            });
            let (parts, _) = resp.into_parts();
            Response::from_parts(parts, Full::new(Bytes::new()))
        }
        Err(e) => text(
            StatusCode::BAD_REQUEST,
            &format!("bad WebSocket handshake: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
