//! What a run does beside sampling the servers as a whole (the soak): each node
//! sampled on its own with the tasks its `/metrics` counts, and the restarts of the
//! plan carried out at their times while the load goes on.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use crate::measured::{NodeSeries, Restart, Restartable, Restarted};
use crate::spawn::{self, Procs};

use super::servers::Endpoints;
use super::Load;

/// Time a node taken down gets to exit beyond its own drain before it is SIGKILLed.
const EXIT_GRACE: Duration = Duration::from_secs(15);

/// The soak's work during the window: per-node samples and restarts.
pub struct Hooks {
    /// Per node: its process name, port and samples (empty unless the load asks).
    nodes: Vec<(String, u16, Vec<spawn::Sample>)>,
    plan: Vec<Restart>,
    ports: Vec<(String, u16)>,
    down_for: Duration,
    now: Option<InFlight>,
    done: Vec<Restarted>,
}

/// A restart under way.
struct InFlight {
    process: String,
    port: u16,
    asked_s: f64,
    pid: u32,
    deadline: Instant,
    /// Exited: when (s) and until when it stays down.
    exited: Option<(f64, Instant, bool)>,
}

/// The port of `ws://127.0.0.1:PORT/…` or `redis://127.0.0.1:PORT`.
fn port_of(url: &str) -> anyhow::Result<u16> {
    url::Url::parse(url)?
        .port()
        .ok_or_else(|| anyhow!("no port in {url}"))
}

impl Hooks {
    /// What `load` asks of a run whose servers are `ep`.
    pub fn new(load: &Load, ep: &Endpoints) -> anyhow::Result<Hooks> {
        let mut ports = Vec::new();
        for (n, u) in ep.ws.iter().enumerate() {
            ports.push((Restartable::Node(n).process(), port_of(u)?));
        }
        if let Some(r) = &ep.redis {
            ports.push((Restartable::Redis.process(), port_of(r)?));
        }
        let nodes = if load.per_node {
            ports
                .iter()
                .filter(|(name, _)| name.starts_with("tickstream-"))
                .map(|(name, port)| (name.clone(), *port, Vec::new()))
                .collect()
        } else {
            Vec::new()
        };
        let mut plan = load.restarts.clone();
        plan.sort_by_key(|r| r.at);
        for r in &plan {
            let name = r.what.process();
            if !ports.iter().any(|(p, _)| *p == name) {
                anyhow::bail!("a restart of {name} was asked for, but this run has none");
            }
        }
        Ok(Hooks {
            nodes,
            plan,
            ports,
            down_for: load.down_for,
            now: None,
            done: Vec::new(),
        })
    }

    /// Samples each node and moves the restarts on; `t` is the time in the window, s.
    pub fn tick(&mut self, procs: &mut Procs, t: f64) -> anyhow::Result<()> {
        for (name, port, samples) in &mut self.nodes {
            let Some(pid) = procs.pid_of(name) else {
                continue;
            };
            if let Some(mut s) = spawn::sample(pid, t) {
                s.tasks = spawn::node_tasks(*port);
                samples.push(s);
            }
        }
        self.restart(procs, t)
    }

    /// Starts the next restart when due, or carries the one under way a step further.
    fn restart(&mut self, procs: &mut Procs, t: f64) -> anyhow::Result<()> {
        let Some(mut f) = self.now.take() else {
            if self.plan.first().is_some_and(|r| t >= r.at.as_secs_f64()) {
                let r = self.plan.remove(0);
                self.now = Some(self.take_down(procs, r.what, t)?);
            }
            return Ok(());
        };
        match f.exited {
            None => {
                let late = Instant::now() >= f.deadline;
                if procs.gone(&f.process, late)? {
                    f.exited = Some((t, Instant::now() + self.down_for, late));
                }
                self.now = Some(f);
            }
            Some((_, until, _)) if Instant::now() < until => self.now = Some(f),
            Some((exited_s, _, killed)) => {
                let started = Instant::now();
                let pid = procs.relaunch(&f.process)?;
                self.serving(procs, &f)?;
                let serving_s = t + started.elapsed().as_secs_f64();
                eprintln!(
                    "{} restarted: SIGTERM at {:.1}s, exited at {exited_s:.1}s, serving again ({pid})",
                    f.process, f.asked_s
                );
                self.done.push(Restarted {
                    process: f.process,
                    asked_s: f.asked_s,
                    exited_s,
                    serving_s,
                    killed,
                    pids: (f.pid, pid),
                });
            }
        }
        Ok(())
    }

    fn take_down(
        &mut self,
        procs: &mut Procs,
        what: Restartable,
        t: f64,
    ) -> anyhow::Result<InFlight> {
        let process = what.process();
        let port = self
            .ports
            .iter()
            .find(|(p, _)| *p == process)
            .map(|(_, port)| *port)
            .expect("checked in new");
        let pid = procs
            .pid_of(&process)
            .ok_or_else(|| anyhow!("{process} is not running"))?;
        eprintln!("{process}: SIGTERM at {t:.1}s of the window");
        procs.take_down(&process)?;
        Ok(InFlight {
            process,
            port,
            asked_s: t,
            pid,
            deadline: Instant::now() + EXIT_GRACE,
            exited: None,
        })
    }

    /// Waits until the process started again answers on its port.
    fn serving(&self, procs: &mut Procs, f: &InFlight) -> anyhow::Result<()> {
        let wait = Duration::from_secs(20);
        if f.process == Restartable::Redis.process() {
            spawn::wait_redis(procs, f.port, wait)
        } else {
            spawn::wait_http(procs, f.port, "/healthz", wait)
        }
        .with_context(|| format!("{} started again", f.process))
    }

    /// Each node's samples and the restarts done; an error when one asked for is
    /// still to come or under way (the window ended first).
    pub fn finish(self) -> anyhow::Result<(Vec<NodeSeries>, Vec<Restarted>)> {
        let mut undone: Vec<String> = self
            .plan
            .iter()
            .map(|r| format!("{} at {:?}", r.what.process(), r.at))
            .collect();
        if let Some(f) = self.now {
            undone.push(format!("{} (under way at the end)", f.process));
        }
        let nodes = self
            .nodes
            .into_iter()
            .map(|(process, _, samples)| NodeSeries { process, samples })
            .collect();
        if !undone.is_empty() {
            anyhow::bail!("restarts not done in the window: {}", undone.join(", "));
        }
        Ok((nodes, self.done))
    }
}
