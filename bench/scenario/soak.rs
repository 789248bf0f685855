//! `soak`: a long run with connections opening and closing, subscriptions changing,
//! slow and stalled clients mixed in, at a steady rate; with `--source redis`, two
//! nodes behind one Redis, and Redis and one node restarted in the middle. Samples each
//! node's memory, descriptors, threads and tasks and fails when one keeps growing after
//! its warm-up, or when a loss went unannounced.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use crate::common::{Common, Shape, Source, Target};
use crate::load::{Behaviour, Churn, Counts};
use crate::measured::{Restart, Restartable, Restarted};
use crate::scenario::{finish, run_once, Ctx, Defaults, Load, RunResult};
use crate::spawn::Sample;

/// Churn for a long time, restart what a cluster restarts; nothing may grow without
/// bound and nothing may be lost unannounced.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples (connections live 2–10 s, swap a symbol every 3 s; one in ten reads \
slowly, one in twenty stalls now and then):

  # 10 minutes on one node
  tickstream-bench soak --spawn --duration 10m --shape 200x5/100 --rate 2000

  # 30 minutes, two nodes behind Redis; Redis restarted at 10m, node 1 at 20m
  tickstream-bench soak --spawn --source redis --duration 30m --server-cpus 0 --client-cpus 1

Exit status 1 when a node's resident memory, descriptors, threads or tasks grew through
the run, or when a connection saw a seq jump no `gap` announced."
)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Load shape C×K/N.
    #[arg(long, default_value = "200x5/100")]
    pub shape: Shape,
    /// Ticks per second over the N symbols.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Shortest life of a connection.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub life_min: Duration,
    /// Longest life of a connection.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub life_max: Duration,
    /// Each connection swaps one symbol for another this often.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub resub: Duration,
    /// Growth of resident memory allowed between the first and last third of the
    /// window, as a fraction (plus 4 MiB).
    #[arg(long, default_value_t = 0.15)]
    pub rss_tolerance: f64,
    /// With `--source redis`: when in the recorded window to restart redis-server
    /// (stopped, then started again on its port, empty), or `off`. Default: a third
    /// of a window of 30 minutes or more, off for shorter ones.
    #[arg(long, value_parser = parse_at)]
    pub restart_redis_at: Option<At>,
    /// With `--source redis`: when to restart node 1 of the two (SIGTERM: it drains and
    /// tells its clients to reconnect; started again on its port once it has exited),
    /// or `off`. Default: two thirds of a window of 30 minutes or more, off for shorter.
    #[arg(long, value_parser = parse_at)]
    pub restart_node_at: Option<At>,
    /// How long a restarted process stays down once it has exited.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub down_for: Duration,
}

/// A moment of the window, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// Not at all.
    Off,
    /// This long after the recorded window began.
    After(Duration),
}

fn parse_at(s: &str) -> Result<At, String> {
    if s == "off" {
        return Ok(At::Off);
    }
    humantime::parse_duration(s)
        .map(At::After)
        .map_err(|e| format!("{s:?}: a duration (e.g. 10m) or `off`: {e}"))
}

/// Windows this long or longer restart by default.
const RESTARTS_FROM: Duration = Duration::from_secs(30 * 60);

/// The restarts asked for (or by default) in a window of `duration`; checked against
/// the source and the window.
fn restarts(a: &Args, duration: Duration) -> anyhow::Result<Vec<Restart>> {
    let long = a.common.source == Source::Redis && duration >= RESTARTS_FROM;
    let pick = |given: Option<At>, share: u32| match given {
        Some(At::After(d)) => Some(d),
        Some(At::Off) => None,
        None => long.then(|| duration * share / 3),
    };
    let mut out = Vec::new();
    for (what, at, flag) in [
        (
            Restartable::Redis,
            pick(a.restart_redis_at, 1),
            "--restart-redis-at",
        ),
        (
            Restartable::Node(1),
            pick(a.restart_node_at, 2),
            "--restart-node-at",
        ),
    ] {
        let Some(at) = at else { continue };
        if a.common.source != Source::Redis {
            bail!("{flag} needs --source redis: the restarts are of the Redis two nodes read and of one of them");
        }
        if !a.common.spawning() {
            bail!("{flag} needs --spawn: the bench restarts only what it started");
        }
        if at.is_zero() || at >= duration {
            bail!(
                "{flag} {}: must fall inside the recorded window (--duration {})",
                humantime::format_duration(at),
                humantime::format_duration(duration)
            );
        }
        out.push(Restart { what, at });
    }
    Ok(out)
}

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    let redis = a.common.source == Source::Redis;
    let target = Target {
        label: "soak".into(),
        // Two nodes through one Redis: one of them may restart while the other serves.
        nodes: if redis { 2 } else { 1 },
        ..Target::tickstream(a.common.source)
    };
    let d = Defaults {
        duration: Duration::from_secs(60),
        warmup: Duration::from_secs(10),
        runs: 1,
    };
    let mut load = churning(&a);
    let mut ctx = Ctx::new(a.common.clone(), "soak", d)?;
    load.restarts = restarts(&a, ctx.duration)?;
    ctx.plot = "soak-rss-run1.svg".into();
    let mut runs = Vec::new();
    let mut failed = Vec::new();
    let mut verdicts = Vec::new();
    let mut nodes = Vec::new();
    let mut losses = Vec::new();
    for run in 1..=ctx.runs {
        let r = run_once(&mut ctx, &target, &load, run)?;
        crate::report::print_run(&r);
        crate::report::write_hgrm(&ctx.out, &r)?;
        for j in judge(&r, ctx.duration, ctx.warmup, a.rss_tolerance) {
            if j.verdicts.is_empty() {
                println!(
                    "run {run}: {} not judged: {} samples in {} (the window ends too soon after its warm-up)",
                    j.process, j.samples, j.span
                );
            }
            for (what, (bad, first, last)) in &j.verdicts {
                let line = format!(
                    "run {run}: {} {what}: highest {first:.0} in the first third of {}, {last:.0} in the last: {}",
                    j.process,
                    j.span,
                    if *bad { "GROWING" } else { "steady" }
                );
                println!("{line}");
                verdicts.push(
                    serde_json::json!({"run": run, "node": j.process, "what": what,
                    "first": first, "last": last, "growing": bad}),
                );
                if *bad {
                    failed.push(line);
                }
            }
            nodes.push(j.summary(run));
        }
        let l = Losses::of(&r);
        println!("run {run}: {}", l.line());
        if l.holes > 0 {
            failed.push(format!(
                "run {run}: {} seq jumps ({} ticks) no gap announced",
                l.holes, l.hole_ticks
            ));
        }
        losses.push(serde_json::to_value(&l)?);
        plot(&ctx, &r)?;
        runs.push(r);
    }
    let restarts: Vec<&Restarted> = runs.iter().flat_map(|r| &r.restarts).collect();
    finish(
        &ctx,
        &format!("soak, {} at {} ticks/s with churn", a.shape, a.rate),
        &runs,
        &[],
        serde_json::json!({"verdicts": verdicts, "failed": !failed.is_empty(),
            "rss_tolerance": a.rss_tolerance, "nodes": nodes, "restarts": restarts,
            "restarts_asked": load.restarts.len(), "losses": losses,
            "source": a.common.source.to_string()}),
    )?;
    if !failed.is_empty() {
        anyhow::bail!("the soak found growth or loss: {}", failed.join("; "));
    }
    Ok(())
}

/// The soak's load: connections that live a while and reopen, swap symbols, and a
/// share of slow and pausing ones; each follows its node's `reconnect` (or a close) to
/// the other node, resuming, and each node is sampled on its own.
fn churning(a: &Args) -> Load {
    let mut load = Load::plain(a.shape, a.rate);
    load.churn = Some(Churn {
        life_min_ms: a.life_min.as_millis() as u64,
        life_max_ms: a.life_max.as_millis() as u64,
        resub_ms: a.resub.as_millis() as u64,
    });
    load.behaviour = Arc::new(|i| match i % 20 {
        9 | 19 => Behaviour::Slow,
        4 => Behaviour::Intermittent,
        _ => Behaviour::Healthy,
    });
    load.follow = true;
    load.per_node = a.common.spawning();
    load.down_for = a.down_for;
    load
}

/// Whether `f` of the last third of the samples grew past the first third's by more
/// than `rel` plus `abs`; returns the verdict and the two values.
pub fn grew(
    samples: &[Sample],
    f: impl Fn(&Sample) -> f64,
    rel: f64,
    abs: f64,
) -> (bool, f64, f64) {
    if samples.len() < 6 {
        return (false, 0.0, 0.0);
    }
    let n = samples.len() / 3;
    let first = samples[..n].iter().map(&f).fold(0.0, f64::max);
    let last = samples[samples.len() - n..]
        .iter()
        .map(&f)
        .fold(0.0, f64::max);
    (last > first * (1.0 + rel) + abs, first, last)
}

/// The verdicts on one node (or on the servers together, when not sampled apart).
struct Judged {
    process: String,
    /// The span judged, in words.
    span: String,
    from_s: f64,
    until_s: f64,
    restarted: bool,
    samples: usize,
    verdicts: Vec<(&'static str, (bool, f64, f64))>,
}

impl Judged {
    fn summary(&self, run: usize) -> serde_json::Value {
        let v = |what: &str| {
            self.verdicts
                .iter()
                .find(|(w, _)| *w == what)
                .map(|(_, (bad, first, last))| {
                    serde_json::json!({"first": first, "last": last, "growing": bad})
                })
        };
        serde_json::json!({"run": run, "process": self.process, "restarted": self.restarted,
            "from_s": self.from_s, "until_s": self.until_s, "samples": self.samples,
            "rss_kb": v(RSS), "fds": v(FDS), "threads": v(THREADS), "tasks": v(TASKS)})
    }
}

const RSS: &str = "resident memory (kB)";
const FDS: &str = "open descriptors";
const THREADS: &str = "threads";
const TASKS: &str = "tasks";

/// Fewer samples than this in a span are not judged (a third of them is one sample).
const JUDGED_FROM: usize = 6;

/// Each node's verdicts. A node is judged from the end of the warm-up to the end of
/// the window; a restarted one from its return plus a warm-up of its own. The warm-up
/// after every restart (of Redis or of the other node: the moved connections come back
/// with churn) is left out of every node's span.
fn judge(r: &RunResult, duration: Duration, warmup: Duration, rss_tol: f64) -> Vec<Judged> {
    let end = duration.as_secs_f64();
    let settle = warmup.as_secs_f64();
    let unsettled = |t: f64| {
        r.restarts
            .iter()
            .any(|x| t >= x.asked_s && t < x.serving_s + settle)
    };
    if r.nodes.is_empty() {
        let w: Vec<Sample> = r
            .server
            .samples
            .iter()
            .filter(|s| s.t >= 0.0 && s.t <= end)
            .copied()
            .collect();
        return vec![judged("server", 0.0, end, false, &w, rss_tol)];
    }
    let mut out = Vec::new();
    for n in &r.nodes {
        let back = r
            .restarts
            .iter()
            .filter(|x| x.process == n.process)
            .map(|x| x.serving_s + settle)
            .reduce(f64::max);
        let from = back.unwrap_or(0.0);
        let w: Vec<Sample> = n
            .samples
            .iter()
            .filter(|s| s.t >= from && s.t <= end && !unsettled(s.t))
            .copied()
            .collect();
        out.push(judged(&n.process, from, end, back.is_some(), &w, rss_tol));
    }
    out
}

fn judged(
    process: &str,
    from_s: f64,
    until_s: f64,
    restarted: bool,
    w: &[Sample],
    rss_tol: f64,
) -> Judged {
    let tasks: Vec<Sample> = w.iter().filter(|s| s.tasks.is_some()).copied().collect();
    let mut verdicts = Vec::new();
    if w.len() >= JUDGED_FROM {
        verdicts = vec![
            (RSS, grew(w, |s| s.rss_kb as f64, rss_tol, 4096.0)),
            (FDS, grew(w, |s| s.fds as f64, 0.10, 16.0)),
            (THREADS, grew(w, |s| s.threads as f64, 0.0, 2.0)),
        ];
    }
    if tasks.len() >= JUDGED_FROM {
        let f = |s: &Sample| s.tasks.unwrap_or(0) as f64;
        verdicts.push((TASKS, grew(&tasks, f, 0.10, 32.0)));
    }
    Judged {
        process: process.to_owned(),
        span: format!(
            "{from_s:.0}–{until_s:.0} s{}",
            if restarted {
                " (after its restart)"
            } else {
                ""
            }
        ),
        from_s,
        until_s,
        restarted,
        samples: w.len(),
        verdicts,
    }
}

/// What the connections lost over a run, and how it was announced.
#[derive(serde::Serialize)]
struct Losses {
    /// Seq jumps no `gap` announced (the soak's bound: 0).
    holes: u64,
    hole_ticks: u64,
    duplicates: u64,
    /// `gap`s and the ticks they announced, by reason.
    gaps: u64,
    gap_ticks: std::collections::BTreeMap<String, u64>,
    /// `status` messages by state.
    status: std::collections::BTreeMap<String, u64>,
    reconnect_notices: u64,
    resumed: u64,
    opened: u64,
    connect_failed: u64,
    closes: std::collections::BTreeMap<String, u64>,
    /// Ticks the publisher could not put into Redis while it was away.
    lost_to_outage: u64,
}

impl Losses {
    fn of(r: &RunResult) -> Losses {
        let mut c = Counts::default();
        c.add(&r.counts);
        c.add(&r.counts_other);
        Losses {
            holes: c.holes,
            hole_ticks: c.hole_ticks,
            duplicates: c.duplicates,
            gaps: c.gaps,
            gap_ticks: c.gap_reasons,
            status: c.status,
            reconnect_notices: c.reconnect_notices,
            resumed: c.resumed,
            opened: c.opened,
            connect_failed: c.connect_failed,
            closes: c.closes,
            lost_to_outage: r.publisher.as_ref().map_or(0, |p| p.lost_to_outage),
        }
    }

    fn line(&self) -> String {
        let by = |m: &std::collections::BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "unannounced holes {} ({} ticks), duplicates {}; gaps {} (ticks by reason: {}); \
             status: {}; reconnect notices {}, resumed {}, connections opened {} ({} failed)",
            self.holes,
            self.hole_ticks,
            self.duplicates,
            self.gaps,
            by(&self.gap_ticks),
            by(&self.status),
            self.reconnect_notices,
            self.resumed,
            self.opened,
            self.connect_failed
        )
    }
}

/// A figure of the servers over a soak run: `soak-<file>-run<k>.svg`.
struct Plot {
    file: &'static str,
    title: &'static str,
    unit: &'static str,
    value: fn(&Sample) -> Option<f64>,
}

const PLOTS: [Plot; 4] = [
    Plot {
        file: "rss",
        title: "resident memory",
        unit: "MB",
        value: |s| Some(s.rss_kb as f64 / 1024.0),
    },
    Plot {
        file: "fds",
        title: "open descriptors",
        unit: "descriptors",
        value: |s| Some(s.fds as f64),
    },
    Plot {
        file: "threads",
        title: "threads",
        unit: "threads",
        value: |s| Some(s.threads as f64),
    },
    Plot {
        file: "tasks",
        title: "tasks (tickstream_tasks)",
        unit: "tasks",
        value: |s| s.tasks.map(|t| t as f64),
    },
];

/// The run's memory, descriptors, threads and tasks over time: a line per node (or
/// the servers together), each restart marked.
fn plot(ctx: &Ctx, r: &RunResult) -> anyhow::Result<()> {
    let lines: Vec<(String, &[Sample])> = if r.nodes.is_empty() {
        vec![(format!("run {}", r.run), r.server.samples.as_slice())]
    } else {
        r.nodes
            .iter()
            .map(|n| (n.process.clone(), n.samples.as_slice()))
            .collect()
    };
    let marks: Vec<(f64, String)> = r
        .restarts
        .iter()
        .map(|x| (x.asked_s, format!(" {} restarted", x.process)))
        .collect();
    for p in &PLOTS {
        let series: Vec<(String, Vec<(f64, f64)>)> = lines
            .iter()
            .map(|(name, s)| {
                let pts = s
                    .iter()
                    .filter_map(|x| (p.value)(x).map(|v| (x.t, v)))
                    .collect();
                (name.clone(), pts)
            })
            .collect();
        crate::plot::lines_marked(
            &ctx.out.join(format!("soak-{}-run{}.svg", p.file, r.run)),
            &format!("soak: {} over the run", p.title),
            "s",
            p.unit,
            &series,
            false,
            &marks,
        )?;
    }
    Ok(())
}
