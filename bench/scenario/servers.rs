//! Starting the servers of one target (tickstream nodes, the references, redis-server)
//! or naming the ones given with `--url`, and where the run connects to them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::common::{Common, Server, Source, Target};
use crate::spawn::{self, Procs};

use super::{Ctx, Load};

/// Where a run's connections and publisher go.
pub struct Endpoints {
    /// Subscriber URLs; connection `i` uses `ws[i % len]`.
    pub ws: Vec<String>,
    /// The publisher's `/v1/publish`, when the target has one.
    pub publish: Option<String>,
    /// The Redis the nodes read, when ticks go through one.
    pub redis: Option<String>,
}

/// Starts the servers of `target` (when spawning) and says where to connect.
pub fn start_servers(
    ctx: &mut Ctx,
    target: &Target,
    load: &Load,
    procs: &mut Procs,
    tag: &str,
) -> anyhow::Result<Endpoints> {
    let query = if target.encoding == "json" {
        String::new()
    } else {
        format!("?encoding={}", target.encoding)
    };
    if !ctx.common.spawning() {
        return given(&ctx.common, target, &query);
    }
    let universe = ctx.universe(load.shape.symbols)?;
    let mut launch = Launch {
        ctx,
        procs,
        tag,
        query,
    };
    let redis = if target.source == Source::Redis || target.nodes > 1 {
        Some(launch.redis()?)
    } else {
        None
    };
    let (ws, publish) = match target.server {
        Server::Tickstream => launch.tickstream(target, load, &universe, redis.as_deref())?,
        Server::Floor => launch.floor()?,
        Server::NodeWs => launch.node_ws(redis.as_deref().expect("node-ws reads Redis"))?,
    };
    Ok(Endpoints { ws, publish, redis })
}

/// The servers named by `--url` (and `--publish-url`, `--redis`).
fn given(c: &Common, target: &Target, query: &str) -> anyhow::Result<Endpoints> {
    let ws: Vec<String> = c.urls.iter().map(|u| format!("{u}{query}")).collect();
    let publish = c
        .publish_url
        .clone()
        .or_else(|| ws.first().map(|u| u.replace("/v1/ws", "/v1/publish")));
    if target.source == Source::Redis && c.redis.is_none() {
        bail!("--source redis with --url needs --redis URL: the Redis the server reads");
    }
    Ok(Endpoints {
        ws,
        publish,
        redis: c.redis.clone(),
    })
}

/// What starting one target's processes shares: placement, logs, the run's tag.
struct Launch<'a> {
    ctx: &'a Ctx,
    procs: &'a mut Procs,
    tag: &'a str,
    /// `?encoding=…` of the subscriber URLs.
    query: String,
}

impl Launch<'_> {
    fn log(&self, what: &str) -> PathBuf {
        self.ctx
            .out
            .join("logs")
            .join(format!("{}-{what}.log", self.tag))
    }

    /// Starts a measured server on the server CPUs and waits until it serves on `port`;
    /// returns its subscriber URL.
    fn server(
        &mut self,
        name: &str,
        cmd: &mut Command,
        port: u16,
        log: &str,
    ) -> anyhow::Result<String> {
        self.start(name, cmd, log)?;
        self.serving(port)
    }

    /// Starts a measured server on the server CPUs, its output to the run's log `log`.
    fn start(&mut self, name: &str, cmd: &mut Command, log: &str) -> anyhow::Result<()> {
        let log = self.log(log);
        self.procs
            .start(name, cmd, self.ctx.server_cpus.as_deref(), log, true)?;
        Ok(())
    }

    /// Waits until `/healthz` on `port` answers; returns the subscriber URL there.
    fn serving(&mut self, port: u16) -> anyhow::Result<String> {
        spawn::wait_http(self.procs, port, "/healthz", Duration::from_secs(20))?;
        Ok(format!("ws://127.0.0.1:{port}/v1/ws{}", self.query))
    }

    /// redis-server on a free port, on the Redis CPUs, saving nothing; returns its URL.
    fn redis(&mut self) -> anyhow::Result<String> {
        let port = spawn::free_port()?;
        let dir = self.ctx.out.join("redis");
        std::fs::create_dir_all(&dir)?;
        let args = [
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.display().to_string(),
        ];
        let log = self.log("redis");
        self.procs
            .start(
                "redis-server",
                Command::new("redis-server").args(args),
                self.ctx.redis_cpus.as_deref(),
                log,
                false,
            )
            .context("is redis-server installed? (Debian: apt-get install redis-server)")?;
        spawn::wait_redis(self.procs, port, Duration::from_secs(10))?;
        Ok(format!("redis://127.0.0.1:{port}"))
    }

    /// `target.nodes` tickstream nodes; the first one takes the publisher.
    fn tickstream(
        &mut self,
        target: &Target,
        load: &Load,
        universe: &Path,
        redis: Option<&str>,
    ) -> anyhow::Result<(Vec<String>, Option<String>)> {
        let bin = spawn::sibling("tickstream")?;
        if !bin.exists() {
            bail!(
                "{} not found: build it beside the bench (cargo build --release --bin tickstream)",
                bin.display()
            );
        }
        let mut ws = Vec::new();
        let mut publish = None;
        for n in 0..target.nodes {
            let port = spawn::free_port()?;
            let args = node_args(&self.ctx.common, target, load, n, port, universe, redis);
            let url = self.server(
                &format!("tickstream-{n}"),
                Command::new(&bin).args(&args),
                port,
                &format!("node{n}"),
            )?;
            ws.push(url);
            if n == 0 {
                publish = Some(format!("ws://127.0.0.1:{port}/v1/publish"));
            }
        }
        Ok((ws, publish))
    }

    /// tickstream-floor, built beside the bench.
    fn floor(&mut self) -> anyhow::Result<(Vec<String>, Option<String>)> {
        let bin = spawn::sibling("tickstream-floor")?;
        if !bin.exists() {
            bail!(
                "--against floor: {} not found; the floor reference lives in bench/peers/floor \
                 and is built with `cargo build --release --bin tickstream-floor`",
                bin.display()
            );
        }
        let port = spawn::free_port()?;
        let url = self.server(
            "tickstream-floor",
            Command::new(&bin).args(["--listen".into(), format!("127.0.0.1:{port}")]),
            port,
            "floor",
        )?;
        Ok((vec![url], Some(format!("ws://127.0.0.1:{port}/v1/publish"))))
    }

    /// The Node.js reference reading `redis` (its packages installed on first use).
    fn node_ws(&mut self, redis: &str) -> anyhow::Result<(Vec<String>, Option<String>)> {
        let dir = self.ctx.peers().join("node-ws");
        let script = dir.join("server.js");
        if !script.exists() {
            bail!(
                "--against node: {} not found (the Node.js reference lives in bench/peers/node-ws)",
                script.display()
            );
        }
        npm_ci(&dir)?;
        let port = spawn::free_port()?;
        let mut cmd = Command::new("node");
        cmd.current_dir(&dir).args([
            script.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--redis".into(),
            redis.to_owned(),
            "--prefix".into(),
            self.ctx.common.redis_prefix.clone(),
        ]);
        self.start("node-ws", &mut cmd, "node-ws")
            .context("is node installed? (Debian: apt-get install nodejs)")?;
        Ok((vec![self.serving(port)?], None))
    }
}

/// The `serve` arguments of node `n`: listener, universe, Redis, feed, the target's own
/// options, the scenario's heartbeat and options, then `--node-arg`s.
fn node_args(
    c: &Common,
    target: &Target,
    load: &Load,
    n: usize,
    port: u16,
    universe: &Path,
    redis: Option<&str>,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--node".into(),
        format!("bench-{n}"),
        "--universe".into(),
        universe.display().to_string(),
        "--log".into(),
        "warn".into(),
    ];
    if let Some(r) = redis {
        args.extend([
            "--redis".into(),
            r.to_owned(),
            "--redis-prefix".into(),
            c.redis_prefix.clone(),
        ]);
    }
    match target.source {
        Source::Synthetic => args.extend([
            "--feed".into(),
            "synthetic".into(),
            "--rate".into(),
            load.rate.to_string(),
            "--seed".into(),
            "7".into(),
        ]),
        _ => args.extend(["--feed".into(), "none".into()]),
    }
    let own = target.serve_args();
    args.extend(own.iter().map(|a| a.to_string()));
    if let Some(hb) = load
        .heartbeat
        .as_ref()
        .filter(|_| !own.contains(&"--heartbeat"))
    {
        args.extend(["--heartbeat".into(), hb.clone()]);
    }
    args.extend(load.node_args.iter().cloned());
    args.extend(c.node_args.iter().cloned());
    args
}

/// Installs the Node reference's packages unless they are there.
fn npm_ci(dir: &Path) -> anyhow::Result<()> {
    if dir.join("node_modules").exists() {
        return Ok(());
    }
    eprintln!("tickstream-bench: installing the Node reference's packages (npm ci)");
    let st = Command::new("npm")
        .arg("ci")
        .arg("--no-audit")
        .arg("--no-fund")
        .current_dir(dir)
        .status()
        .context("running npm ci (is npm installed? Debian: apt-get install npm)")?;
    if !st.success() {
        bail!("npm ci in {} failed ({st})", dir.display());
    }
    Ok(())
}
