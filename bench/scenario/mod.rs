//! One measured run of a load against a target, and what every scenario builds on it.

pub mod book;
pub mod connections;
pub mod cross_node;
pub mod dashboard;
pub mod encoding;
pub mod fanout;
pub mod fragments;
pub mod latency;
pub mod patterns;
mod restarts;
pub mod roll;
mod run;
mod servers;
pub mod slow;
pub mod soak;
pub mod storm;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::common::{parse_cpus, write_universe, Common, Server, Shape, Target};
use crate::load::{self, Behaviour, Churn, Subscription};
use crate::spawn;

pub use crate::measured::RunResult;
pub use run::run_once;

/// What a scenario asks of one run, beside the target.
#[derive(Clone)]
pub struct Load {
    /// The shape.
    pub shape: Shape,
    /// Ticks per second over the universe.
    pub rate: f64,
    /// Behaviour of connection `i`.
    pub behaviour: std::sync::Arc<dyn Fn(usize) -> Behaviour + Send + Sync>,
    /// Connections opened per second over all workers (0: at once).
    pub open_rate: f64,
    /// Soak churn.
    pub churn: Option<Churn>,
    /// Extra `serve` arguments for this scenario (before `--node-arg`s).
    pub node_args: Vec<String>,
    /// `--heartbeat` of the spawned nodes, unless the target sets its own.
    pub heartbeat: Option<String>,
    /// What each connection's `subscribe` asks for: its pace, a pattern, or books.
    pub subscription: Subscription,
    /// The publisher sends order books of this many levels a side instead of ticks
    /// (the `book` scenario; connections then subscribe the `book` channel).
    pub book_levels: Option<usize>,
    /// Connections move when asked to reconnect or closed, resuming ([`load::WorkerSpec::follow`]).
    pub follow: bool,
    /// Processes restarted in the window (the soak).
    pub restarts: Vec<crate::measured::Restart>,
    /// How long a restarted process stays down once it has exited.
    pub down_for: Duration,
    /// Sample each node on its own, with its tasks (from its `/metrics`).
    pub per_node: bool,
}

impl Load {
    /// Every connection healthy, opened at once, no churn.
    pub fn plain(shape: Shape, rate: f64) -> Load {
        Load {
            shape,
            rate,
            behaviour: std::sync::Arc::new(|_| Behaviour::Healthy),
            open_rate: 0.0,
            churn: None,
            node_args: Vec::new(),
            heartbeat: None,
            subscription: Subscription::default(),
            book_levels: None,
            follow: false,
            restarts: Vec::new(),
            down_for: Duration::ZERO,
            per_node: false,
        }
    }
}

/// What the scenario shares between runs: flags, output directory, CPU lists.
pub struct Ctx {
    /// The common flags.
    pub common: Common,
    /// The scenario's name.
    pub scenario: String,
    /// Output directory (created).
    pub out: PathBuf,
    /// Server CPUs.
    pub server_cpus: Option<Vec<usize>>,
    /// Client CPUs.
    pub client_cpus: Option<Vec<usize>>,
    /// Redis CPUs.
    pub redis_cpus: Option<Vec<usize>>,
    /// The flat universe file.
    pub universe: PathBuf,
    /// Universe size the file holds.
    pub universe_n: usize,
    /// Runs so far (for file names).
    pub seq: usize,
    /// Recorded time per run.
    pub duration: Duration,
    /// Warm-up per run.
    pub warmup: Duration,
    /// Runs per target.
    pub runs: usize,
    /// When the scenario started.
    pub started: SystemTime,
    /// The plot `bench/RESULTS.md` links for this scenario, in `out`.
    pub plot: String,
}

/// A scenario's defaults for the common flags left out.
pub struct Defaults {
    /// Recorded time.
    pub duration: Duration,
    /// Warm-up.
    pub warmup: Duration,
    /// Runs.
    pub runs: usize,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(3),
            runs: 3,
        }
    }
}

impl Ctx {
    /// Prepares the output directory and pins this process to the client CPUs.
    pub fn new(common: Common, scenario: &str, d: Defaults) -> anyhow::Result<Ctx> {
        let started = SystemTime::now();
        let out = match &common.out {
            Some(d) => d.clone(),
            None => {
                let t = started.duration_since(UNIX_EPOCH)?.as_secs();
                PathBuf::from(format!("target/tickstream-bench/{scenario}-{t}"))
            }
        };
        std::fs::create_dir_all(out.join("logs"))
            .with_context(|| format!("creating {}", out.display()))?;
        let server_cpus = common.server_cpus.as_deref().map(parse_cpus).transpose()?;
        let client_cpus = common.client_cpus.as_deref().map(parse_cpus).transpose()?;
        let redis_cpus = match &common.redis_cpus {
            Some(c) => Some(parse_cpus(c)?),
            None => client_cpus.clone(),
        };
        if let Some(c) = &client_cpus {
            spawn::pin_self(c)?;
        }
        load::raise_nofile();
        Ok(Ctx {
            duration: common.duration.unwrap_or(d.duration),
            warmup: common.warmup.unwrap_or(d.warmup),
            runs: common.runs.unwrap_or(d.runs).max(1),
            universe: out.join("universe.csv"),
            universe_n: 0,
            common,
            scenario: scenario.to_owned(),
            out,
            server_cpus,
            client_cpus,
            redis_cpus,
            seq: 0,
            started,
            plot: LATENCY_PLOT.into(),
        })
    }

    fn universe(&mut self, n: usize) -> anyhow::Result<PathBuf> {
        if self.universe_n != n {
            write_universe(&self.universe, n)?;
            self.universe_n = n;
        }
        Ok(self.universe.clone())
    }

    fn peers(&self) -> PathBuf {
        self.common
            .peers
            .clone()
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/peers"))
    }
}

/// The percentile plot every scenario draws, in its output directory.
pub const LATENCY_PLOT: &str = "latency.svg";

/// The command as run, for a reader to run again: the program named
/// `tickstream-bench`, each argument quoted where a shell would split it, `--out DIR`
/// left out (the output goes where the reader chooses).
pub fn command_line(args: impl IntoIterator<Item = String>) -> String {
    let mut out = vec!["tickstream-bench".to_owned()];
    let mut args = args.into_iter().skip(1);
    while let Some(a) = args.next() {
        if a == "--out" {
            args.next();
            continue;
        }
        if a.starts_with("--out=") {
            continue;
        }
        let plain = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=.,:/@+%×".contains(c));
        out.push(if plain {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        });
    }
    out.join(" ")
}

/// Runs every target `runs` times, alternating (t1 r1, t2 r1, …, t1 r2, …), and
/// writes each run's `.hgrm` file as it ends. A target that fails to start is an error.
pub fn run_alternating(
    ctx: &mut Ctx,
    targets: &[Target],
    load: &Load,
) -> anyhow::Result<Vec<RunResult>> {
    let mut out = Vec::new();
    for run in 1..=ctx.runs {
        for t in targets {
            let r =
                run_once(ctx, t, load, run).with_context(|| format!("{} run {run}", t.label))?;
            crate::report::print_run(&r);
            crate::report::write_hgrm(&ctx.out, &r)?;
            out.push(r);
        }
    }
    Ok(out)
}

/// One of the loads a scenario compares on the same server: the target (its label
/// names the variant) and its load.
pub struct Variant {
    /// The server, labelled by the variant.
    pub target: Target,
    /// The load.
    pub load: Load,
    /// A run that fails is a note rather than an error (a load that may not be carried).
    pub may_fail: bool,
}

/// Runs every variant `runs` times, alternating, and writes each run's `.hgrm` file as
/// it ends. Returns the runs and the notes of the failed runs of variants that may fail.
pub fn run_variants(
    ctx: &mut Ctx,
    variants: &[Variant],
) -> anyhow::Result<(Vec<RunResult>, Vec<String>)> {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for run in 1..=ctx.runs {
        for v in variants {
            let label = &v.target.label;
            match run_once(ctx, &v.target, &v.load, run) {
                Ok(r) => {
                    crate::report::print_run(&r);
                    crate::report::write_hgrm(&ctx.out, &r)?;
                    out.push(r);
                }
                Err(e) if v.may_fail => {
                    let n = format!("{label} run {run} could not be carried: {e:#}");
                    println!("{n}");
                    notes.push(n);
                }
                Err(e) => return Err(e.context(format!("{label} run {run}"))),
            }
        }
    }
    Ok((out, notes))
}

/// The median of `v` (0 when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One line per run, named `<target> run <k>`, of the points `points` draws from it.
pub fn line_per_run(
    runs: &[RunResult],
    points: impl Fn(&RunResult) -> Vec<(f64, f64)>,
) -> Vec<(String, Vec<(f64, f64)>)> {
    runs.iter()
        .map(|r| (format!("{} run {}", r.target, r.run), points(r)))
        .collect()
}

/// Label pairs (tickstream target, reference) for the ratios.
pub fn reference_pairs(targets: &[Target]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in targets {
        if t.server == Server::Tickstream && t.serve_args().is_empty() {
            continue;
        }
        if let Some(ts) = targets.iter().find(|x| {
            x.server == Server::Tickstream
                && x.serve_args().is_empty()
                && x.source == t.source
                && x.nodes == 1
        }) {
            out.push((ts.label.clone(), t.label.clone()));
        }
    }
    out
}

/// `rest` (an object) after what every `summary.json` begins with: the scenario, the
/// command, when it started, the machine, the plot, the window, the clients and the
/// placement asked for.
pub(crate) fn summary_with_head(
    ctx: &Ctx,
    rest: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let mut summary = serde_json::json!({
        "scenario": ctx.scenario,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "command_line": command_line(std::env::args()),
        "started_unix": ctx.started.duration_since(UNIX_EPOCH)?.as_secs(),
        "started_utc": humantime::format_rfc3339_seconds(ctx.started).to_string(),
        "plot": ctx.plot,
        "machine": crate::report::machine(),
        "duration_s": ctx.duration.as_secs_f64(),
        "runs_per_target": ctx.runs,
        "clients": ctx.common.clients,
        "server_cpus": ctx.common.server_cpus,
        "client_cpus": ctx.common.client_cpus,
        "node_args": ctx.common.node_args,
    });
    if let (Some(head), serde_json::Value::Object(rest)) = (summary.as_object_mut(), rest) {
        head.extend(rest);
    }
    Ok(summary)
}

/// Prints the medians and ratios, draws the percentile plot and writes `summary.json`
/// with `extra` merged in. Returns the medians.
pub fn finish(
    ctx: &Ctx,
    title: &str,
    runs: &[RunResult],
    pairs: &[(String, String)],
    extra: serde_json::Value,
) -> anyhow::Result<Vec<crate::report::Medians>> {
    use crate::report;
    let medians = report::medians(runs);
    report::print_medians(title, &medians);
    let p: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let ratios = report::ratios(&medians, &p);
    report::print_ratios(&ratios);
    let curves: Vec<crate::plot::Curve> = runs
        .iter()
        .map(|r| crate::plot::Curve {
            target: &r.target,
            hist: &r.hist,
        })
        .collect();
    crate::plot::percentiles(&ctx.out.join(LATENCY_PLOT), title, &curves)?;
    let summary = summary_with_head(
        ctx,
        serde_json::json!({
            "warmup_s": ctx.warmup.as_secs_f64(),
            "client_cpu_list": ctx.client_cpus,
            "redis_cpus": ctx.common.redis_cpus.clone().or(ctx.common.client_cpus.clone()),
            "medians": medians,
            "ratios": ratios,
            "runs": runs,
            "extra": extra,
        }),
    )?;
    report::write_summary(&ctx.out, &summary)?;
    Ok(medians)
}
