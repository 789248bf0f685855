//! `fanout`: raises the rate (or the connections) step by step until p99 passes a bound
//! or anything is lost; reports the highest delivered msgs/s within the bound.

use std::time::Duration;

use serde::Serialize;

use crate::common::{targets_with_references, Common, Shape, Target};
use crate::report::{self, Medians};
use crate::scenario::{finish, run_once, Ctx, Defaults, Load, RunResult};

/// The highest sustained fan-out within a latency bound.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example (rates 10k…100k ticks/s over 100×10/100, i.e. 100k…1M msgs/s; \
stops at the first step whose median p99 passes 50 ms or that loses anything):

  tickstream-bench fanout --spawn --rates 10000,20000,50000,100000 --p99-bound 50ms
  tickstream-bench fanout --spawn --rate 2000 --shapes 100x10/100,500x10/100,1000x10/100"
)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Load shape C×K/N (with --rates).
    #[arg(long, default_value = "100x10/100")]
    pub shape: Shape,
    /// Rates to step through, ticks/s.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,20000,50000,100000"
    )]
    pub rates: Vec<f64>,
    /// Step through these shapes at --rate instead of through rates.
    #[arg(long, value_delimiter = ',')]
    pub shapes: Vec<Shape>,
    /// The rate with --shapes, ticks/s.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// A step passes while its median p99 stays within this.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub p99_bound: Duration,
}

#[derive(Serialize)]
struct Step {
    target: String,
    shape: String,
    rate: f64,
    offered_msgs_per_s: f64,
    medians: Medians,
    passed: bool,
    why_not: Vec<String>,
}

/// The p99 by delivered rate, over the steps.
const PLOT: &str = "fanout.svg";

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    let targets = targets_with_references(&a.common)?;
    let mut ctx = Ctx::new(a.common, "fanout", Defaults::default())?;
    ctx.plot = PLOT.into();
    let by_shapes = !a.shapes.is_empty();
    let steps: Vec<(Shape, f64)> = if by_shapes {
        a.shapes.iter().map(|&s| (s, a.rate)).collect()
    } else {
        a.rates.iter().map(|&r| (a.shape, r)).collect()
    };
    let bound_us = a.p99_bound.as_secs_f64() * 1e6;
    let mut stopped = vec![false; targets.len()];
    let mut all = Vec::new();
    let mut table: Vec<Step> = Vec::new();
    for (shape, rate) in steps {
        let step_runs = run_step(&mut ctx, &targets, &stopped, shape, rate, by_shapes)?;
        for (ti, runs) in step_runs.into_iter().enumerate() {
            if runs.is_empty() {
                continue;
            }
            let step = Step::judge(&targets[ti].label, shape, rate, &runs, bound_us);
            stopped[ti] |= !step.passed;
            table.push(step);
            all.extend(runs);
        }
        if stopped.iter().all(|s| *s) {
            break;
        }
    }
    print_steps(&table);
    let best = best(&targets, &table, bound_us);
    plot(&ctx, &targets, &table)?;
    finish(
        &ctx,
        "fan-out, every step",
        &all,
        &[],
        serde_json::json!({"steps": table, "best_msgs_per_s": best, "p99_bound_ms": bound_us / 1e3}),
    )?;
    Ok(())
}

/// Runs one step for every target not stopped yet, `--runs` times alternating; a
/// target's runs are labelled with the step's rate (or connections).
fn run_step(
    ctx: &mut Ctx,
    targets: &[Target],
    stopped: &[bool],
    shape: Shape,
    rate: f64,
    by_shapes: bool,
) -> anyhow::Result<Vec<Vec<RunResult>>> {
    let load = Load::plain(shape, rate);
    let mut step_runs: Vec<Vec<RunResult>> = targets.iter().map(|_| Vec::new()).collect();
    for run in 1..=ctx.runs {
        for (ti, t) in targets.iter().enumerate() {
            if stopped[ti] {
                continue;
            }
            let mut tl = t.clone();
            tl.label = if by_shapes {
                format!("{}@{}", t.label, shape.conns)
            } else {
                format!("{}@{}", t.label, rate)
            };
            let r = run_once(ctx, &tl, &load, run)?;
            report::print_run(&r);
            report::write_hgrm(&ctx.out, &r)?;
            step_runs[ti].push(r);
        }
    }
    Ok(step_runs)
}

impl Step {
    /// A target's step from its runs: passed while the median p99 keeps the bound,
    /// nothing was lost and some run was valid.
    fn judge(target: &str, shape: Shape, rate: f64, runs: &[RunResult], bound_us: f64) -> Step {
        let m = report::medians(runs).remove(0);
        let mut why = Vec::new();
        if m.latency.p99 > bound_us {
            why.push(format!(
                "p99 {:.1} ms > {:.1} ms",
                m.latency.p99 / 1e3,
                bound_us / 1e3
            ));
        }
        if m.conflated > 0 || m.gaps_and_holes > 0 {
            why.push(format!(
                "{} conflated, {} gaps/holes",
                m.conflated, m.gaps_and_holes
            ));
        }
        if runs.iter().any(|r| r.complete == Some(false)) {
            why.push("not everything published was received".into());
        }
        if m.valid_runs == 0 {
            why.push(format!("no valid run: {}", runs[0].invalid.join("; ")));
        }
        Step {
            target: target.to_owned(),
            shape: shape.to_string(),
            rate,
            offered_msgs_per_s: rate * shape.fanout(),
            medians: m,
            passed: why.is_empty(),
            why_not: why,
        }
    }
}

fn print_steps(table: &[Step]) {
    println!("\nfan-out steps (median of runs)");
    println!(
        "{:<22}{:>14}{:>14}{:>14}{:>10}{:>8}  verdict",
        "target", "shape", "offered/s", "delivered/s", "p99 ms", "CPU%"
    );
    for s in table {
        println!(
            "{:<22}{:>14}{:>14.0}{:>14.0}{:>10.2}{:>8.0}  {}",
            s.target,
            s.shape,
            s.offered_msgs_per_s,
            s.medians.msgs_per_s,
            s.medians.latency.p99 / 1e3,
            s.medians.cpu_util * 100.0,
            if s.passed {
                "ok".to_owned()
            } else {
                s.why_not.join("; ")
            }
        );
    }
}

/// Each target's highest delivered msgs/s over the steps it passed, printed.
fn best(
    targets: &[Target],
    table: &[Step],
    bound_us: f64,
) -> serde_json::Map<String, serde_json::Value> {
    let mut best = serde_json::Map::new();
    for t in targets {
        let b = table
            .iter()
            .filter(|s| s.target == t.label && s.passed)
            .map(|s| s.medians.msgs_per_s)
            .fold(0.0, f64::max);
        println!(
            "{}: highest delivered within p99 ≤ {:.0} ms and nothing lost: {:.0} msgs/s",
            t.label,
            bound_us / 1e3,
            b
        );
        best.insert(t.label.clone(), serde_json::json!(b));
    }
    best
}

/// `fanout.svg`: each target's p99 by delivered msgs/s over its steps.
fn plot(ctx: &Ctx, targets: &[Target], table: &[Step]) -> anyhow::Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = targets
        .iter()
        .map(|t| {
            (
                t.label.clone(),
                table
                    .iter()
                    .filter(|s| s.target == t.label)
                    .map(|s| {
                        (
                            s.medians.msgs_per_s,
                            (s.medians.latency.p99 / 1e3).max(1e-3),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    crate::plot::lines(
        &ctx.out.join(PLOT),
        "fan-out: p99 by delivered messages per second",
        "delivered msgs/s",
        "p99 (ms)",
        &series,
        true,
    )
}
