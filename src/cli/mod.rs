//! The `tickstream` command line: one subcommand per file. `main.rs` only calls [`run`].

mod feed;
mod feed_record;
mod feed_replay;
mod feed_synth;
mod serve;
mod subscribe;
mod token;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Market-data streaming over WebSocket.
#[derive(Parser)]
#[command(name = "tickstream", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node: feed, hub and the WebSocket/HTTP endpoints on one port.
    ///
    /// Example: tickstream serve --listen 127.0.0.1:8080 --rate 5000
    Serve(Box<crate::config::ServeArgs>),
    /// Subscribe to symbols and show what arrives.
    Subscribe(subscribe::Args),
    /// Feeds as their own processes: synth, replay, record.
    #[command(subcommand)]
    Feed(feed::FeedCmd),
    /// Sign a client token (JWT) with the node's secret.
    Token(token::Args),
}

/// Starts logging to stderr with `filter`, else `RUST_LOG`, else `info`.
pub fn init_logs(filter: Option<&str>) {
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Parses the command line and runs the subcommand; the process exit code follows.
pub fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve(args) => serve::run(*args),
        Cmd::Subscribe(args) => subscribe::run(args),
        Cmd::Feed(cmd) => feed::run(cmd),
        Cmd::Token(args) => token::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tickstream: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called (inside
/// the runtime), not when the future is first polled, so a signal that arrives in
/// between is not lost to the default action.
pub fn wait_for_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}
