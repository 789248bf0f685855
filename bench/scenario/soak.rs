//! `soak`: a long run with connections opening and closing, subscriptions changing,
//! slow and stalled clients mixed in, at a steady rate; samples the server's memory,
//! descriptors and threads and fails when one keeps growing after the warm-up.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{Common, Shape, Target};
use crate::load::{Behaviour, Churn};
use crate::scenario::{finish, run_once, Ctx, Defaults, Load, RunResult};
use crate::spawn::Sample;

/// Churn for a long time; nothing may grow without bound.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example (10 minutes; connections live 2–10 s, swap a symbol every 3 s; \
one in ten reads slowly, one in twenty pauses now and then):

  tickstream-bench soak --spawn --duration 10m --shape 200x5/100 --rate 2000

Exit status 1 when resident memory, descriptors or threads grew through the run."
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

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    let target = Target {
        label: "soak".into(),
        ..Target::tickstream(a.common.source)
    };
    let d = Defaults {
        duration: Duration::from_secs(60),
        warmup: Duration::from_secs(10),
        runs: 1,
    };
    let load = churning(&a);
    let mut ctx = Ctx::new(a.common, "soak", d)?;
    ctx.plot = "soak-rss-run1.svg".into();
    let mut runs = Vec::new();
    let mut failed = Vec::new();
    let mut verdicts = Vec::new();
    for run in 1..=ctx.runs {
        let r = run_once(&mut ctx, &target, &load, run)?;
        crate::report::print_run(&r);
        crate::report::write_hgrm(&ctx.out, &r)?;
        for (name, (bad, first, last)) in judge(&r, ctx.duration, a.rss_tolerance) {
            let line = format!(
                "run {run}: {name}: highest {first:.0} in the first third of the window, {last:.0} in the last: {}",
                if bad { "GROWING" } else { "steady" }
            );
            println!("{line}");
            verdicts.push(serde_json::json!({"run": run, "what": name, "first": first, "last": last, "growing": bad}));
            if bad {
                failed.push(line);
            }
        }
        plot(&ctx, &r)?;
        runs.push(r);
    }
    finish(
        &ctx,
        &format!("soak, {} at {} ticks/s with churn", a.shape, a.rate),
        &runs,
        &[],
        serde_json::json!({"verdicts": verdicts, "failed": !failed.is_empty(), "rss_tolerance": a.rss_tolerance}),
    )?;
    if !failed.is_empty() {
        anyhow::bail!("the soak found growth: {}", failed.join("; "));
    }
    Ok(())
}

/// The soak's load: connections that live a while and reopen, swap symbols, and a
/// share of slow and pausing ones.
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
    load
}

/// Whether the server's resident memory, descriptors and threads grew over the
/// window of `r`: each with [`grew`]'s verdict and values.
fn judge(
    r: &RunResult,
    duration: Duration,
    rss_tolerance: f64,
) -> [(&'static str, (bool, f64, f64)); 3] {
    let w: Vec<Sample> = r
        .server
        .samples
        .iter()
        .filter(|s| s.t >= 0.0 && s.t <= duration.as_secs_f64())
        .copied()
        .collect();
    [
        (
            "resident memory (kB)",
            grew(&w, |s| s.rss_kb as f64, rss_tolerance, 4096.0),
        ),
        ("open descriptors", grew(&w, |s| s.fds as f64, 0.10, 16.0)),
        ("threads", grew(&w, |s| s.threads as f64, 0.0, 2.0)),
    ]
}

/// A figure of the server plotted over a soak run: `soak-<file>-run<k>.svg`.
struct Plot {
    file: &'static str,
    title: &'static str,
    unit: &'static str,
    value: fn(&Sample) -> f64,
}

const PLOTS: [Plot; 3] = [
    Plot {
        file: "rss",
        title: "server resident memory",
        unit: "MB",
        value: |s| s.rss_kb as f64 / 1024.0,
    },
    Plot {
        file: "fds",
        title: "server open descriptors",
        unit: "descriptors",
        value: |s| s.fds as f64,
    },
    Plot {
        file: "threads",
        title: "server threads",
        unit: "threads",
        value: |s| s.threads as f64,
    },
];

/// The run's memory, descriptors and threads over time.
fn plot(ctx: &Ctx, r: &RunResult) -> anyhow::Result<()> {
    for p in &PLOTS {
        let series = vec![(
            format!("run {}", r.run),
            r.server
                .samples
                .iter()
                .map(|s| (s.t, (p.value)(s)))
                .collect(),
        )];
        crate::plot::lines(
            &ctx.out.join(format!("soak-{}-run{}.svg", p.file, r.run)),
            p.title,
            "s",
            p.unit,
            &series,
            false,
        )?;
    }
    Ok(())
}
