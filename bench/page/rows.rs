//! The rows of `bench/RESULTS.md`: what each measures, the command that fills it, and
//! how its headline figure and reference are read from a scenario's `summary.json`.
//!
//! A new scenario (or a new load of an old one) is one more [`Row`] in [`ROWS`], with a
//! [`Headline`] that says which figures count.

use std::fmt::Write as _;

use anyhow::{bail, Context};
use serde_json::Value;

use super::{Current, Figures};
use crate::report::ms;

/// One row of the table.
pub struct Row {
    /// Its name: the file stem in `results/current/` and the first cell.
    pub name: &'static str,
    /// The scenario whose summary fills it.
    pub scenario: &'static str,
    /// What it shows, a sentence under the table.
    pub what: &'static str,
    /// The command that fills it.
    pub command: &'static str,
    /// The heading of `results/HISTORY.md` holding its last figure before this page
    /// (`None` for a row measured only since).
    pub history: Option<&'static str>,
    /// Which figures count.
    pub headline: Headline,
}

/// Which figures of a summary a row shows.
pub enum Headline {
    /// p50 · p99 and server CPU per message of `target`, against `reference` measured
    /// in the same run.
    Latency {
        /// The tickstream target.
        target: &'static str,
        /// The reference target.
        reference: &'static str,
    },
    /// The highest delivered msgs/s of `target` within the bound with nothing lost,
    /// against another row's.
    Fanout {
        /// The tickstream target.
        target: &'static str,
        /// The row and target compared with, if any.
        against: Option<(&'static str, &'static str)>,
    },
    /// Server memory per held connection and p99.9 of `target` against `reference`.
    Memory {
        /// The tickstream target.
        target: &'static str,
        /// The reference target.
        reference: &'static str,
    },
    /// p99.9 over the steady seconds with heartbeat rounds in the window against the
    /// same node with none there: the difference.
    Heartbeats {
        /// The target that pings.
        target: &'static str,
        /// Its twin that does not.
        twin: &'static str,
    },
    /// The healthy connections' p99 beside stalled ones, against another row's p99
    /// (the same load with no stalled connection).
    Stalled {
        /// The tickstream target.
        target: &'static str,
        /// The row and target compared with.
        against: (&'static str, &'static str),
    },
    /// The latency a hop through Redis to another node adds.
    CrossNode,
    /// Bytes per message of binary frames against JSON.
    Encoding,
    /// Each node's resident memory, descriptors and tasks from the first to the last
    /// third of its span, the restarts done, and the losses (unannounced, announced).
    Soak,
    /// Paced connections: frames per connection per second, CPU per message, RSS and
    /// the paced ticks' latency, against the same load unpaced.
    Dashboard,
    /// `*` against the same symbols named: CPU per message and latency.
    Patterns,
    /// Book updates against ticks of the same rate on the same node: CPU per delivered
    /// update and tick, bytes per update in JSON and binary, latency, what was lost, and
    /// the memory of a symbol's book.
    Book,
    /// A rolling restart: the roll's p99 against the steady window's, what was lost or
    /// repeated, and the time until every client had moved.
    Roll,
    /// A stall storm: each binary's peak growth of resident memory against the node's
    /// bound on buffered output, and its memory after the storm against before.
    Storm,
}

/// Every row, in table order.
pub const ROWS: &[Row] = &[
    Row {
        name: "latency-publish",
        scenario: "latency",
        what: "100 connections × 10 of 100 symbols at 10,000 ticks/s (100k msgs/s), the bench's \
               publisher into the node's `/v1/publish`, against tickstream-floor fed the same way.",
        command: "tickstream-bench latency --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3 --against floor",
        history: Some("latency"),
        headline: Headline::Latency {
            target: "tickstream-publish",
            reference: "floor",
        },
    },
    Row {
        name: "latency-synthetic",
        scenario: "latency",
        what: "the same load from the node's own feed, against the floor fed the same ticks \
               in the feed's (shuffled) order: the in-process path.",
        command: "tickstream-bench latency --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3 --source synthetic --order shuffled --against floor",
        history: Some("Targets 1 and 3 with the new receiving side: the node's own feed"),
        headline: Headline::Latency {
            target: "tickstream-synthetic",
            reference: "floor",
        },
    },
    Row {
        name: "latency-redis",
        scenario: "latency",
        what: "the same load published into Redis and read by the node, against the floor fed \
               directly: what the bus costs.",
        command: "tickstream-bench latency --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3 --source redis --against floor",
        history: Some("Targets 1 and 3 through Redis"),
        headline: Headline::Latency {
            target: "tickstream-redis",
            reference: "floor",
        },
    },
    Row {
        name: "fanout-redis",
        scenario: "fanout",
        what: "the highest rate through Redis (`PUBLISH` alone) delivered in full with p99 within \
               the bound, against the node's own feed at the same steps (row `fanout-synthetic`).",
        command: "tickstream-bench fanout --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3 --source redis --redis-history 0 --rates 90000,100000 --p99-bound 50ms",
        history: Some("Target 2: Redis ingest, ≥ 900k msgs/s delivered in full (met)"),
        headline: Headline::Fanout {
            target: "tickstream-redis",
            against: Some(("fanout-synthetic", "tickstream-synthetic")),
        },
    },
    Row {
        name: "fanout-synthetic",
        scenario: "fanout",
        what: "the same steps from the node's own feed: the in-process path's highest rate.",
        command: "tickstream-bench fanout --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3 --source synthetic --rates 90000,100000 --p99-bound 50ms",
        history: Some("Target 2: Redis ingest, ≥ 900k msgs/s delivered in full (met)"),
        headline: Headline::Fanout {
            target: "tickstream-synthetic",
            against: None,
        },
    },
    Row {
        name: "connections-15k",
        scenario: "connections",
        what: "15,000 connections held (1 of 100 symbols each, 100 ticks/s through Redis): \
               server memory per connection over idle and p99.9, against the Node.js `ws` server.",
        command: "tickstream-bench connections --spawn --server-cpus 0 --client-cpus 1 --shape 15000x1/100 --rate 100 --clients 4 --runs 3 --against node",
        history: Some("Memory per connection (target: ≤ 4 KiB at 15,000, below node-ws)"),
        headline: Headline::Memory {
            target: "tickstream-redis",
            reference: "node-ws",
        },
    },
    Row {
        name: "connections-19k-heartbeats",
        scenario: "connections",
        what: "19,000 connections on one process with heartbeat rounds every 5 s in the window, \
               against the same node with none there: p99.9 over the seconds the load side kept \
               its bounds (bench/README, \"Steady seconds\").",
        command: "tickstream-bench connections --spawn --server-cpus 0 --client-cpus 1 --shape 19000x1/100 --rate 100 --clients 4 --runs 3 --against tickstream-noheartbeat",
        history: Some("Target 5: heartbeat rounds at 19,000 connections, now with valid runs"),
        headline: Headline::Heartbeats {
            target: "tickstream-publish",
            twin: "tickstream-noheartbeat",
        },
    },
    Row {
        name: "connections-100k",
        scenario: "connections",
        what: "100,000 connections over six nodes joined by Redis (one process may hold 20,000 \
               files here), 1 of 100 symbols each, 20 ticks/s through Redis (every connection \
               gets a tick every 5 s), heartbeat rounds every 5 s: memory per connection over \
               idle summed over the nodes, and p99.9 with the rounds in the window; all six \
               nodes on one CPU, seven receiving processes on the other.",
        command: "tickstream-bench connections --spawn --server-cpus 0 --client-cpus 1 --nodes 6 --source redis --shape 100000x1/100 --rate 20 --clients 7 --heartbeat 5s --duration 30s --runs 1",
        history: None,
        headline: Headline::Memory {
            target: "tickstream-redis",
            reference: "none",
        },
    },
    Row {
        name: "slow-consumers",
        scenario: "slow-consumers",
        what: "one connection in ten stops reading for the window (queue 1,024): the healthy \
               ones' p99 and losses, against row `latency-publish` (the same load, nobody stalled).",
        command: "tickstream-bench slow-consumers --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3 --slow-share 0.1 --queue 1024",
        history: Some("slow-consumers"),
        headline: Headline::Stalled {
            target: "tickstream-publish",
            against: ("latency-publish", "tickstream-publish"),
        },
    },
    Row {
        name: "cross-node",
        scenario: "cross-node",
        what: "the publisher into Redis with the connections on two nodes, against one node fed \
               through `/v1/publish`: the latency the hop adds.",
        command: "tickstream-bench cross-node --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3",
        history: Some("cross-node"),
        headline: Headline::CrossNode,
    },
    Row {
        name: "encoding",
        scenario: "encoding",
        what: "the `latency` load in binary frames against JSON: bytes per message on the wire \
               and server CPU per message.",
        command: "tickstream-bench encoding --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3",
        history: Some("encoding"),
        headline: Headline::Encoding,
    },
    Row {
        name: "soak",
        scenario: "soak",
        what: "30 minutes of churn (connections reopening, subscriptions changing, slow and \
               pausing clients) on two nodes behind one Redis, Redis restarted at a third of the \
               window and one node at two thirds, the connections following with `resume`: each \
               node's resident memory, descriptors and tasks from the first third of its span to \
               the last (after its warm-up; the restarted node's after its return), the seq \
               jumps no `gap` announced and the gaps announced. A summary from before the \
               restarts (one node) shows its RSS alone.",
        command: "tickstream-bench soak --spawn --server-cpus 0 --client-cpus 1 --clients 1 --source redis --duration 30m",
        history: Some("soak"),
        headline: Headline::Soak,
    },
    Row {
        name: "dashboard",
        scenario: "dashboard",
        what: "1,000 connections × 200 of 508 symbols paced at `throttle_ms: 250`, 10,000 \
               ticks/s over the universe: frames per connection per second, server CPU per \
               delivered message, RSS and p99 of paced ticks (from the `ts` of the tick sent), \
               against the same load unpaced where it can be carried.",
        command: "tickstream-bench dashboard --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3",
        history: None,
        headline: Headline::Dashboard,
    },
    Row {
        name: "patterns",
        scenario: "patterns",
        what: "20 connections holding all 508 symbols at 10,000 ticks/s (200k msgs/s), \
               subscribed as `\"*\"` against the same symbols named: server CPU per delivered \
               message.",
        command: "tickstream-bench patterns --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3",
        history: None,
        headline: Headline::Patterns,
    },
    Row {
        name: "book",
        scenario: "book",
        what: "500 connections × the books of 20 of 100 symbols at depth 10, 50 updates/s per \
               symbol (5,000 updates/s in, 500,000 delivered), through the node's \
               `/v1/publish`: server CPU per delivered update against per delivered tick at the \
               same rate and shape in the same run (bound 1.5×), bytes per update in JSON and \
               binary, latency of updates from their `ts`, updates lost or failing their \
               checksum; and the resident memory of a 50-level book with 1,024 updates of history.",
        command: "tickstream-bench book --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3",
        history: None,
        headline: Headline::Book,
    },
    Row {
        name: "book-redis",
        scenario: "book",
        what: "the same books published into Redis as a feed does (`SET booksnap:{S}`, \
               `PUBLISH book:{S}`) and read by the node, against ticks through Redis at the same rate.",
        command: "tickstream-bench book --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3 --source redis",
        history: None,
        headline: Headline::Book,
    },
    Row {
        name: "rolling-restart",
        scenario: "roll",
        what: "`scripts/cluster roll` (three nodes, each SIGTERMed, drained and started again in \
               turn) under 1,000 library clients × 5 of 100 symbols through nginx, spread over \
               the nodes by their affinity cookies, the synthetic feed at 300 ticks/s (15,000 \
               messages/s delivered), the nodes' reconnect notice at its default (4 s): tick latency during the roll against the 20 s before it \
               (bound: steady p99 + 5 ms), holes and duplicates (bound: 0), and the time from \
               the first SIGTERM until every client had moved.",
        command: "tickstream-bench roll --server-cpus 0 --client-cpus 1",
        history: None,
        headline: Headline::Roll,
    },
    Row {
        name: "storm",
        scenario: "storm",
        what: "300 connections × 500 of 500 symbols stop reading for 20 s at 20,000 ticks/s \
               beside 5 reading ones, the node's `--max-outbound-bytes` at 64 MiB: the peak growth \
               of its resident memory against the bound (plus the slack allowed), and its memory \
               30 s after the stalled connections are gone against before the storm.",
        command: "tickstream-bench storm --spawn --server-cpus 0 --client-cpus 1 --clients 1",
        history: None,
        headline: Headline::Storm,
    },
    Row {
        name: "storm-allocators",
        scenario: "storm",
        what: "the same storm on the binary built with each global allocator (glibc's malloc, \
               jemalloc, mimalloc; `scripts/alloc-binaries`), alternating.",
        command: "tickstream-bench storm --spawn --server-cpus 0 --client-cpus 1 --clients 1 \
                  --binaries system=target/alloc/tickstream-system,jemalloc=target/alloc/tickstream-jemalloc,mimalloc=target/alloc/tickstream-mimalloc",
        history: None,
        headline: Headline::Storm,
    },
];

/// The row named `name`.
pub fn find(name: &str) -> anyhow::Result<&'static Row> {
    ROWS.iter()
        .find(|r| r.name == name)
        .with_context(|| format!("no row {name:?} (rows: {})", names(ROWS.iter())))
}

/// The row a run of `scenario` with `command` fills: the scenario's only row, or the
/// one whose command it is.
pub fn of_run(scenario: &str, command: &str) -> anyhow::Result<&'static Row> {
    let rows: Vec<&Row> = ROWS.iter().filter(|r| r.scenario == scenario).collect();
    match rows.as_slice() {
        [] => bail!("no row is filled by a `{scenario}` run"),
        [one] => Ok(one),
        _ => match rows.iter().find(|r| r.command == command) {
            Some(r) => Ok(r),
            None => bail!(
                "a `{scenario}` run fills one of {}: name it with --row",
                names(rows.into_iter())
            ),
        },
    }
}

fn names<'a>(rows: impl Iterator<Item = &'a Row>) -> String {
    rows.map(|r| r.name).collect::<Vec<_>>().join(", ")
}

impl Headline {
    /// The row's figures from its summary (and the other rows', where it names one).
    pub fn figures(&self, s: &Value, current: &Current) -> anyhow::Result<Figures> {
        match *self {
            Headline::Latency { target, reference } => latency(s, target, reference),
            Headline::Fanout { target, against } => fanout(s, target, against, current),
            Headline::Memory { target, reference } => memory(s, target, reference),
            Headline::Heartbeats { target, twin } => heartbeats(s, target, twin),
            Headline::Stalled { target, against } => stalled(s, target, against, current),
            Headline::CrossNode => cross_node(s),
            Headline::Encoding => encoding(s),
            Headline::Soak => soak(s),
            Headline::Dashboard => dashboard(s),
            Headline::Patterns => patterns(s),
            Headline::Book => book(s),
            Headline::Roll => roll(s),
            Headline::Storm => storm(s),
        }
    }
}

/// The medians of `target` in a summary.
fn medians<'a>(s: &'a Value, target: &str) -> Option<&'a Value> {
    s["medians"]
        .as_array()?
        .iter()
        .find(|m| m["target"] == target)
}

fn medians_of<'a>(s: &'a Value, target: &str) -> anyhow::Result<&'a Value> {
    medians(s, target).with_context(|| format!("no medians of target {target}"))
}

/// The number at `path` below `v`.
fn num(v: &Value, path: &[&str]) -> anyhow::Result<f64> {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_f64()
        .with_context(|| format!("no number at {}", path.join(".")))
}

/// `valid/all` runs behind a target's medians.
fn valid(m: &Value) -> String {
    format!("{}/{}", m["valid_runs"], m["all_runs"])
}

/// A ratio, `1.23×`.
fn x(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

/// A whole number with thousands separated: `1,000,000`.
fn thousands(v: f64) -> String {
    let digits = (v.round().max(0.0) as u64).to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// p50 · p99 · µs/msg of a target's medians.
fn p50_p99_cpu(m: &Value) -> anyhow::Result<(f64, f64, f64)> {
    Ok((
        num(m, &["latency", "p50"])?,
        num(m, &["latency", "p99"])?,
        num(m, &["cpu_us_per_msg"])?,
    ))
}

fn latency(s: &Value, target: &str, reference: &str) -> anyhow::Result<Figures> {
    let t = medians_of(s, target)?;
    let (p50, p99, cpu) = p50_p99_cpu(t)?;
    let mut f = Figures {
        figure: format!("p50 {} · p99 {} ms · {cpu:.2} µs/msg", ms(p50), ms(p99)),
        reference: "—".into(),
        against: "—".into(),
        valid: valid(t),
    };
    if let Some(r) = medians(s, reference) {
        let (r50, r99, rcpu) = p50_p99_cpu(r)?;
        f.reference = format!(
            "{reference}: p50 {} · p99 {} ms · {rcpu:.2} µs/msg",
            ms(r50),
            ms(r99)
        );
        f.against = format!(
            "p50 {} · p99 {} · CPU {}",
            x(p50, r50),
            x(p99, r99),
            x(cpu, rcpu)
        );
        f.valid = format!("{} · {}", f.valid, valid(r));
    }
    Ok(f)
}

/// The highest msgs/s a target passed, and the valid runs of that step.
fn best(s: &Value, target: &str) -> anyhow::Result<(f64, String)> {
    let best = num(&s["extra"]["best_msgs_per_s"], &[target])?;
    let step = s["extra"]["steps"]
        .as_array()
        .context("no steps")?
        .iter()
        .filter(|st| st["target"] == target && st["passed"] == true)
        .max_by(|a, b| {
            let r = |v: &Value| v["medians"]["msgs_per_s"].as_f64().unwrap_or(0.0);
            r(a).total_cmp(&r(b))
        });
    let valid = step
        .map(|st| valid(&st["medians"]))
        .unwrap_or_else(|| "—".into());
    Ok((best, valid))
}

fn fanout(
    s: &Value,
    target: &str,
    against: Option<(&str, &str)>,
    current: &Current,
) -> anyhow::Result<Figures> {
    let (b, valid) = best(s, target)?;
    let bound = num(s, &["extra", "p99_bound_ms"])?;
    let mut f = Figures {
        figure: format!(
            "{} msgs/s within p99 ≤ {bound:.0} ms, nothing lost",
            thousands(b)
        ),
        reference: "—".into(),
        against: "—".into(),
        valid,
    };
    if let Some((row, t)) = against {
        match current.get(row) {
            Some(other) => {
                let (r, _) = best(other, t).with_context(|| format!("row {row}"))?;
                f.reference = format!("{} msgs/s (row `{row}`)", thousands(r));
                f.against = x(b, r);
            }
            None => f.reference = format!("row `{row}` not measured"),
        }
    }
    Ok(f)
}

/// The median over runs of `target` of the held memory per connection, bytes.
fn bytes_per_conn(s: &Value, target: &str) -> anyhow::Result<f64> {
    let mut v: Vec<f64> = s["extra"]["held"]
        .as_array()
        .context("no held connections")?
        .iter()
        .filter(|h| h["target"] == target)
        .filter_map(|h| h["rss_per_conn_bytes"].as_f64())
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2)
        .copied()
        .with_context(|| format!("no held connections of {target}"))
}

fn memory(s: &Value, target: &str, reference: &str) -> anyhow::Result<Figures> {
    let t = medians_of(s, target)?;
    let bytes = bytes_per_conn(s, target)?;
    let p999 = num(t, &["latency", "p999"])?;
    let mut f = Figures {
        figure: format!(
            "{} bytes/connection · p99.9 {} ms",
            thousands(bytes),
            ms(p999)
        ),
        reference: "—".into(),
        against: "—".into(),
        valid: valid(t),
    };
    if let Some(r) = medians(s, reference) {
        let (rb, r999) = (bytes_per_conn(s, reference)?, num(r, &["latency", "p999"])?);
        f.reference = format!(
            "{reference}: {} bytes · p99.9 {} ms",
            thousands(rb),
            ms(r999)
        );
        f.against = format!("memory {} · p99.9 {}", x(bytes, rb), x(p999, r999));
        f.valid = format!("{} · {}", f.valid, valid(r));
    }
    Ok(f)
}

/// The median over the runs of `target` that had steady seconds of their p99.9 over
/// them, with the steady seconds and all seconds of those runs.
fn steady_p999(s: &Value, target: &str) -> anyhow::Result<(f64, u64, u64)> {
    let mut v = Vec::new();
    let (mut kept, mut of) = (0, 0);
    for r in s["runs"].as_array().context("no runs")? {
        let st = &r["steady"];
        let k = st["seconds"].as_u64().unwrap_or(0);
        if r["target"] != target || k == 0 {
            continue;
        }
        v.push(num(st, &["latency", "p999"])?);
        kept += k;
        of += st["of"].as_u64().unwrap_or(0);
    }
    v.sort_by(f64::total_cmp);
    let m = v
        .get(v.len() / 2)
        .copied()
        .with_context(|| format!("no run of {target} had a steady second"))?;
    Ok((m, kept, of))
}

fn heartbeats(s: &Value, target: &str, twin: &str) -> anyhow::Result<Figures> {
    let (with, k, n) = steady_p999(s, target)?;
    let (without, tk, tn) = steady_p999(s, twin)?;
    Ok(Figures {
        figure: format!("steady p99.9 {} ms ({k} of {n} s steady)", ms(with)),
        reference: format!(
            "no heartbeat in the window: {} ms ({tk} of {tn} s)",
            ms(without)
        ),
        against: format!("{:+.2} ms", (with - without) / 1e3),
        valid: format!(
            "{} · {}",
            valid(medians_of(s, target)?),
            valid(medians_of(s, twin)?)
        ),
    })
}

fn stalled(
    s: &Value,
    target: &str,
    against: (&str, &str),
    current: &Current,
) -> anyhow::Result<Figures> {
    let t = medians_of(s, target)?;
    let p99 = num(t, &["latency", "p99"])?;
    let mut lost = 0.0;
    for row in s["extra"]["stalled"]
        .as_array()
        .context("no stalled rows")?
    {
        if row["target"] == target {
            lost += num(row, &["healthy_gaps"])? + num(row, &["healthy_holes"])?;
            lost += (num(row, &["healthy_expected"]).unwrap_or(0.0)
                - num(row, &["healthy_received"])?)
            .max(0.0);
        }
    }
    let mut f = Figures {
        figure: format!("healthy p99 {} ms, {} lost", ms(p99), thousands(lost)),
        reference: "—".into(),
        against: "—".into(),
        valid: valid(t),
    };
    let (row, rt) = against;
    match current.get(row) {
        Some(other) => {
            let r99 = num(medians_of(other, rt)?, &["latency", "p99"])?;
            f.reference = format!("p99 {} ms with nobody stalled (row `{row}`)", ms(r99));
            f.against = x(p99, r99);
        }
        None => f.reference = format!("row `{row}` not measured"),
    }
    Ok(f)
}

fn cross_node(s: &Value) -> anyhow::Result<Figures> {
    let c = medians_of(s, "cross-node")?;
    let one = medians_of(s, "single-node")?;
    let (c50, c99, _) = p50_p99_cpu(c)?;
    let (s50, s99, _) = p50_p99_cpu(one)?;
    Ok(Figures {
        figure: format!(
            "adds p50 {:+.3} · p99 {:+.3} ms",
            (c50 - s50) / 1e3,
            (c99 - s99) / 1e3
        ),
        reference: format!("one node: p50 {} · p99 {} ms", ms(s50), ms(s99)),
        against: format!("p50 {} · p99 {}", x(c50, s50), x(c99, s99)),
        valid: format!("{} · {}", valid(c), valid(one)),
    })
}

fn encoding(s: &Value) -> anyhow::Result<Figures> {
    let m = &s["extra"]["medians"];
    if m["binary"].is_null() {
        bail!("no binary run: {}", s["extra"]["notes"]);
    }
    let (b, bcpu) = (
        num(m, &["binary", "bytes_per_msg"])?,
        num(m, &["binary", "cpu_us_per_msg"])?,
    );
    let (j, jcpu) = (
        num(m, &["json", "bytes_per_msg"])?,
        num(m, &["json", "cpu_us_per_msg"])?,
    );
    Ok(Figures {
        figure: format!("binary {b:.1} bytes/msg · {bcpu:.2} µs/msg"),
        reference: format!("json {j:.1} bytes/msg · {jcpu:.2} µs/msg"),
        against: format!("bytes {} · CPU {}", x(b, j), x(bcpu, jcpu)),
        valid: format!(
            "{} · {}",
            valid(medians_of(s, "binary")?),
            valid(medians_of(s, "json")?)
        ),
    })
}

fn soak(s: &Value) -> anyhow::Result<Figures> {
    if s["extra"]["nodes"].is_array() {
        return soak_nodes(s);
    }
    let v = s["extra"]["verdicts"]
        .as_array()
        .context("no verdicts")?
        .iter()
        .find(|v| v["what"] == "resident memory (kB)")
        .context("no verdict on resident memory")?;
    let (first, last) = (num(v, &["first"])?, num(v, &["last"])?);
    let verdict = if v["growing"] == true {
        "GROWING"
    } else {
        "steady"
    };
    Ok(Figures {
        figure: format!(
            "RSS {:.1} → {:.1} MB, {verdict}",
            first / 1024.0,
            last / 1024.0
        ),
        reference: soak_allowed(s),
        against: x(last, first),
        valid: valid(medians_of(s, "soak")?),
    })
}

fn soak_allowed(s: &Value) -> String {
    match s["extra"]["rss_tolerance"].as_f64() {
        Some(t) => format!("allowed: +{:.0} % + 4 MiB", t * 100.0),
        None => "—".into(),
    }
}

/// A soak judged node by node (restarts, tasks, losses): the window, the restarts
/// done, each node's RSS, descriptors and tasks from the first third of its span to
/// the last, and what the connections lost and how it was announced.
fn soak_nodes(s: &Value) -> anyhow::Result<Figures> {
    let e = &s["extra"];
    let secs = num(s, &["duration_s"])?;
    let window = if secs >= 60.0 && secs % 60.0 == 0.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{secs:.0} s")
    };
    let restarts: Vec<String> = e["restarts"]
        .as_array()
        .context("no restarts")?
        .iter()
        .map(|r| {
            let t = r["asked_s"].as_f64().unwrap_or(0.0).round() as u64;
            let name = r["process"].as_str().unwrap_or("?");
            format!("{name} at {}:{:02}", t / 60, t % 60)
        })
        .collect();
    let nodes = e["nodes"].as_array().context("no nodes")?;
    let per = |key: &str, scale: f64, unit: &str| -> String {
        let one = |n: &Value| {
            let v = &n[key];
            match (v["first"].as_f64(), v["last"].as_f64()) {
                (Some(a), Some(b)) => format!("{:.0}→{:.0}{unit}", a / scale, b / scale),
                _ => "—".into(),
            }
        };
        nodes.iter().map(one).collect::<Vec<_>>().join(" / ")
    };
    let growing = nodes.iter().any(|n| {
        ["rss_kb", "fds", "threads", "tasks"]
            .iter()
            .any(|k| n[*k]["growing"] == true)
    });
    let l = &e["losses"][0];
    let holes = l["holes"].as_u64().context("no holes counted")?;
    let gaps: Vec<String> = l["gap_ticks"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
        .unwrap_or_default();
    let worst = nodes
        .iter()
        .filter_map(|n| Some(n["rss_kb"]["last"].as_f64()? / n["rss_kb"]["first"].as_f64()?))
        .fold(0.0, f64::max);
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["process"].as_str()).collect();
    Ok(Figures {
        figure: format!(
            "{window}, restarted: {} · {}: RSS {} · fds {} · tasks {} · unannounced holes {holes} · \
             gaps {} (ticks: {}) · {}",
            if restarts.is_empty() { "none".into() } else { restarts.join(", ") },
            names.join(" / "),
            per("rss_kb", 1024.0, " MB"),
            per("fds", 1.0, ""),
            per("tasks", 1.0, ""),
            l["gaps"],
            gaps.join(", "),
            if growing { "GROWING" } else { "steady" }
        ),
        reference: format!("{}; fds +10 % + 16, tasks +10 % + 32", soak_allowed(s)),
        against: if worst > 0.0 { format!("RSS {worst:.2}×") } else { "—".into() },
        valid: valid(medians_of(s, "soak")?),
    })
}

fn storm(s: &Value) -> anyhow::Result<Figures> {
    let e = &s["extra"];
    let bound = num(e, &["bound_bytes"])?;
    let rows = e["by_binary"].as_array().context("no by_binary")?;
    let (mut figure, mut against) = (Vec::new(), Vec::new());
    let (mut valid_runs, mut runs) = (0.0, 0.0);
    for b in rows {
        let name = b["name"].as_str().context("a binary without a name")?;
        let (before, growth) = (num(b, &["before_kb"])?, num(b, &["growth_bytes"])?);
        let after = num(b, &["after_kb"])?;
        figure.push(format!(
            "{name}: {:.1} MB, peak +{:.1} MiB, after {:.1} MB",
            before / 1024.0,
            growth / 1048576.0,
            after / 1024.0
        ));
        against.push(format!(
            "{name}: {} bound, {} before",
            x(growth, bound),
            x(after, before)
        ));
        valid_runs += num(b, &["valid_runs"])?;
        runs += num(b, &["runs"])?;
    }
    Ok(Figures {
        figure: figure.join(" · "),
        reference: format!(
            "bound {:.0} MiB + slack {:.0} MiB; after ≤ {:.2}× before",
            bound / 1048576.0,
            num(e, &["slack_bytes"])? / 1048576.0,
            num(e, &["recover"])?
        ),
        against: against.join(" · "),
        valid: format!("{valid_runs}/{runs}"),
    })
}

fn dashboard(s: &Value) -> anyhow::Result<Figures> {
    let p = medians_of(s, "paced")?;
    let throttle = num(s, &["extra", "throttle_ms"])?;
    let frames = num(s, &["extra", "frames_per_conn_per_s", "paced"])?;
    let (_, p99, cpu) = p50_p99_cpu(p)?;
    let rss = num(p, &["rss_max_kb"])? / 1024.0;
    let mut f = Figures {
        figure: format!(
            "{throttle:.0} ms: {frames:.2} frames/conn/s · {cpu:.2} µs/msg · p99 {} ms · RSS {rss:.0} MB",
            ms(p99)
        ),
        reference: "—".into(),
        against: "—".into(),
        valid: valid(p),
    };
    let Some(u) = medians(s, "unpaced") else {
        if let Some(note) = s["extra"]["notes"].as_array().and_then(|n| n.first()) {
            f.reference = format!("unpaced: not carried ({})", note.as_str().unwrap_or("?"));
        }
        return Ok(f);
    };
    let (_, u99, ucpu) = p50_p99_cpu(u)?;
    let (pu, uu) = (num(p, &["cpu_util"])?, num(u, &["cpu_util"])?);
    let (pm, um) = (num(p, &["msgs_per_s"])?, num(u, &["msgs_per_s"])?);
    let asked = num(s, &["extra", "asked_msgs_per_s"])?;
    f.reference = format!(
        "unpaced: {} of {} msgs/s asked · {ucpu:.2} µs/msg · p99 {} ms · CPU {:.0} %",
        thousands(um),
        thousands(asked),
        ms(u99),
        uu * 100.0
    );
    f.against = format!("msgs {} · server CPU {}", x(pm, um), x(pu, uu));
    f.valid = format!("{} · {}", f.valid, valid(u));
    Ok(f)
}

fn patterns(s: &Value) -> anyhow::Result<Figures> {
    let p = medians_of(s, "pattern")?;
    let n = medians_of(s, "named")?;
    let (p50, p99, cpu) = p50_p99_cpu(p)?;
    let (n50, n99, ncpu) = p50_p99_cpu(n)?;
    Ok(Figures {
        figure: format!(
            "\"*\": {cpu:.2} µs/msg · p50 {} · p99 {} ms",
            ms(p50),
            ms(p99)
        ),
        reference: format!(
            "named: {ncpu:.2} µs/msg · p50 {} · p99 {} ms",
            ms(n50),
            ms(n99)
        ),
        against: format!("CPU {} · p99 {}", x(cpu, ncpu), x(p99, n99)),
        valid: format!("{} · {}", valid(p), valid(n)),
    })
}

fn book(s: &Value) -> anyhow::Result<Figures> {
    let b = medians_of(s, "book-json")?;
    let t = medians_of(s, "ticks-json")?;
    let (b50, b99, bcpu) = p50_p99_cpu(b)?;
    let bytes = num(b, &["bytes_per_msg"])?;
    let mut figure = format!(
        "json {bcpu:.2} µs/update · {bytes:.0} B · p50 {} · p99 {} ms",
        ms(b50),
        ms(b99)
    );
    let mut against = format!("CPU {}", x(bcpu, num(t, &["cpu_us_per_msg"])?));
    if let (Some(bin), Some(tbin)) = (medians(s, "book-binary"), medians(s, "ticks-binary")) {
        let bb = num(bin, &["bytes_per_msg"])?;
        let _ = write!(figure, "; binary {bb:.0} B");
        let (bc, tc) = (
            num(bin, &["cpu_us_per_msg"])?,
            num(tbin, &["cpu_us_per_msg"])?,
        );
        let _ = write!(against, " json, {} binary", x(bc, tc));
    }
    let lost = &s["extra"]["lost"];
    let _ = write!(
        against,
        " (bound {}×) · {} lost · {} checksum mismatches",
        s["extra"]["cpu_bound"],
        num(lost, &["holes"])? + num(lost, &["gaps"])? + num(lost, &["duplicates"])?,
        num(lost, &["checksum_mismatches"])?
    );
    if let Some(rss) = s["extra"]["memory"]["rss_bytes_per_symbol"].as_f64() {
        let _ = write!(
            figure,
            "; a 50-level book + 1,024 updates: {} B RSS",
            thousands(rss)
        );
    }
    Ok(Figures {
        figure,
        reference: format!("ticks: json {:.2} µs/tick", num(t, &["cpu_us_per_msg"])?),
        against,
        valid: format!("{} · {}", valid(b), valid(t)),
    })
}

fn roll(s: &Value) -> anyhow::Result<Figures> {
    let w = &s["windows"];
    let (r99, rmax) = (num(w, &["roll", "p99_ms"])?, num(w, &["roll", "max_ms"])?);
    let (s50, s99) = (
        num(w, &["steady", "p50_ms"])?,
        num(w, &["steady", "p99_ms"])?,
    );
    let c = &s["checks"];
    let last = s["until_all_moved_ms"]
        .as_f64()
        .map_or("—".into(), |v| format!("{:.1} s", v / 1e3));
    let moved = if s["all_moved"] == true {
        format!("every client moved within {last}")
    } else {
        format!("not every client moved (last move {last} after the first SIGTERM)")
    };
    Ok(Figures {
        figure: format!(
            "roll p99 {} · max {} ms; {} holes · {} duplicates; {moved}",
            ms(r99 * 1e3),
            ms(rmax * 1e3),
            num(c, &["holes"])?,
            num(c, &["duplicates"])?
        ),
        reference: format!("steady: p50 {} · p99 {} ms", ms(s50 * 1e3), ms(s99 * 1e3)),
        against: format!(
            "p99 {:+.2} ms (bound +{} ms) · {}",
            r99 - s99,
            s["latency_slack_ms"],
            s["verdict"].as_str().unwrap_or("?")
        ),
        valid: if s["valid"] == true { "1/1" } else { "0/1" }.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_soak_row_names_its_restarts_each_nodes_figures_and_its_losses() {
        let node = |p: &str, restarted: bool, rss: (f64, f64), tasks: (f64, f64)| {
            serde_json::json!({"process": p, "restarted": restarted,
                "rss_kb": {"first": rss.0, "last": rss.1, "growing": false},
                "fds": {"first": 114.0, "last": 116.0, "growing": false},
                "threads": {"first": 2.0, "last": 2.0, "growing": false},
                "tasks": {"first": tasks.0, "last": tasks.1, "growing": false}})
        };
        let mut s = summary(
            serde_json::json!([{"target": "soak", "valid_runs": 1, "all_runs": 1}]),
            serde_json::json!({"rss_tolerance": 0.15,
                "restarts": [{"process": "redis-server", "asked_s": 600.2},
                             {"process": "tickstream-1", "asked_s": 1200.0}],
                "nodes": [node("tickstream-0", false, (71680.0, 73728.0), (110.0, 112.0)),
                          node("tickstream-1", true, (61440.0, 61440.0), (108.0, 110.0))],
                "losses": [{"holes": 0, "gaps": 957, "gap_ticks": {"upstream": 32267}}]}),
        );
        s["duration_s"] = 1800.0.into();
        let f = soak(&s).unwrap();
        assert_eq!(
            f.figure,
            "30 min, restarted: redis-server at 10:00, tickstream-1 at 20:00 · \
             tickstream-0 / tickstream-1: RSS 70→72 MB / 60→60 MB · fds 114→116 / 114→116 · \
             tasks 110→112 / 108→110 · unannounced holes 0 · gaps 957 (ticks: upstream 32267) · \
             steady"
        );
        assert_eq!(f.against, "RSS 1.03×");
        assert_eq!(f.valid, "1/1");
        // A soak from before the restarts (one node, RSS alone) still reads.
        let old = summary(
            serde_json::json!([{"target": "soak", "valid_runs": 1, "all_runs": 1}]),
            serde_json::json!({"rss_tolerance": 0.15, "verdicts": [
                {"what": "resident memory (kB)", "first": 71168.0, "last": 74650.0, "growing": false}]}),
        );
        assert_eq!(soak(&old).unwrap().figure, "RSS 69.5 → 72.9 MB, steady");
    }

    /// A summary as the scenarios write it, cut to what the rows read.
    fn summary(medians: Value, extra: Value) -> Value {
        serde_json::json!({"scenario": "x", "medians": medians, "extra": extra, "runs": []})
    }

    fn m(target: &str, p50: f64, p99: f64, cpu: f64) -> Value {
        serde_json::json!({
            "target": target, "valid_runs": 3, "all_runs": 3, "cpu_us_per_msg": cpu,
            "latency": {"p50": p50, "p99": p99, "p999": p99 * 2.0},
        })
    }

    #[test]
    fn latency_is_read_against_the_reference_of_the_same_run() {
        let s = summary(
            serde_json::json!([
                m("tickstream-redis", 250.0, 1450.0, 5.42),
                m("floor", 200.0, 1000.0, 5.0)
            ]),
            Value::Null,
        );
        let f = latency(&s, "tickstream-redis", "floor").unwrap();
        assert_eq!(f.figure, "p50 0.250 · p99 1.45 ms · 5.42 µs/msg");
        assert_eq!(f.reference, "floor: p50 0.200 · p99 1.00 ms · 5.00 µs/msg");
        assert_eq!(f.against, "p50 1.25× · p99 1.45× · CPU 1.08×");
        assert_eq!(f.valid, "3/3 · 3/3");
        // Without the reference in the run the row says so rather than guess.
        let f = latency(&s, "tickstream-redis", "node-ws").unwrap();
        assert_eq!((f.reference.as_str(), f.against.as_str()), ("—", "—"));
        assert!(latency(&s, "tickstream-publish", "floor").is_err());
    }

    #[test]
    fn fanout_compares_with_the_row_it_names_once_that_row_is_measured() {
        let step = |t: &str, r: f64, passed: bool| serde_json::json!({"target": t, "passed": passed, "medians": {"msgs_per_s": r, "valid_runs": 2, "all_runs": 3}});
        let redis = summary(
            Value::Null,
            serde_json::json!({
                "best_msgs_per_s": {"tickstream-redis": 900000.0}, "p99_bound_ms": 50.0,
                "steps": [step("tickstream-redis", 900000.0, true), step("tickstream-redis", 1000000.0, false)],
            }),
        );
        let against = Some(("fanout-synthetic", "tickstream-synthetic"));
        let mut current = Current::new();
        let f = fanout(&redis, "tickstream-redis", against, &current).unwrap();
        assert_eq!(f.figure, "900,000 msgs/s within p99 ≤ 50 ms, nothing lost");
        assert_eq!(f.valid, "2/3");
        assert_eq!(f.reference, "row `fanout-synthetic` not measured");
        let synthetic = summary(
            Value::Null,
            serde_json::json!({"best_msgs_per_s": {"tickstream-synthetic": 1000000.0}, "steps": []}),
        );
        current.insert("fanout-synthetic".into(), synthetic);
        let f = fanout(&redis, "tickstream-redis", against, &current).unwrap();
        assert_eq!(f.reference, "1,000,000 msgs/s (row `fanout-synthetic`)");
        assert_eq!(f.against, "0.90×");
    }

    #[test]
    fn heartbeats_compare_the_steady_seconds_of_both_twins() {
        let run = |t: &str, kept: u64, p999: f64| serde_json::json!({"target": t, "steady": {"seconds": kept, "of": 20, "latency": {"p999": p999}}});
        let mut s = summary(
            serde_json::json!([
                m("tickstream-publish", 1.0, 1.0, 1.0),
                m("tickstream-noheartbeat", 1.0, 1.0, 1.0)
            ]),
            Value::Null,
        );
        s["runs"] = serde_json::json!([
            run("tickstream-publish", 5, 8_000.0),
            run("tickstream-publish", 0, 90_000.0),
            run("tickstream-noheartbeat", 4, 9_000.0),
        ]);
        let f = heartbeats(&s, "tickstream-publish", "tickstream-noheartbeat").unwrap();
        assert_eq!(f.figure, "steady p99.9 8.00 ms (5 of 20 s steady)");
        assert_eq!(f.against, "-1.00 ms");
    }

    #[test]
    fn dashboard_and_patterns_read_both_variants_of_their_run() {
        let with = |m: Value, t: &str, util: f64, msgs: f64| {
            let mut m = m;
            m["target"] = t.into();
            m["cpu_util"] = util.into();
            m["msgs_per_s"] = msgs.into();
            m["rss_max_kb"] = (300.0 * 1024.0).into();
            m
        };
        let paced = with(
            m("paced", 120_000.0, 260_000.0, 1.5),
            "paced",
            0.6,
            800_000.0,
        );
        let unpaced = with(m("unpaced", 9e6, 4e7, 2.0), "unpaced", 1.0, 900_000.0);
        let extra = serde_json::json!({"throttle_ms": 250, "asked_msgs_per_s": 3.9e6, "frames_per_conn_per_s": {"paced": 4.02}});
        let s = summary(serde_json::json!([paced, unpaced]), extra.clone());
        let f = dashboard(&s).unwrap();
        assert_eq!(
            f.figure,
            "250 ms: 4.02 frames/conn/s · 1.50 µs/msg · p99 260 ms · RSS 300 MB"
        );
        assert_eq!(f.against, "msgs 0.89× · server CPU 0.60×");
        assert!(
            f.reference
                .starts_with("unpaced: 900,000 of 3,900,000 msgs/s asked"),
            "{}",
            f.reference
        );
        // Without an unpaced run: the note says why.
        let mut extra = extra;
        extra["notes"] = serde_json::json!(["unpaced run 1 could not be carried: x"]);
        let s = summary(serde_json::json!([m("paced", 1.0, 1.0, 1.0)]), extra);
        let mut s = s;
        s["medians"][0]["rss_max_kb"] = 1024.0.into();
        let f = dashboard(&s).unwrap();
        assert!(
            f.reference.starts_with("unpaced: not carried"),
            "{}",
            f.reference
        );
        let s = summary(
            serde_json::json!([
                m("pattern", 250.0, 900.0, 2.2),
                m("named", 250.0, 1000.0, 2.0)
            ]),
            Value::Null,
        );
        let f = patterns(&s).unwrap();
        assert_eq!(f.against, "CPU 1.10× · p99 0.90×");
    }

    #[test]
    fn book_reads_updates_against_ticks_of_the_same_run() {
        let with_bytes = |mut m: Value, b: f64| {
            m["bytes_per_msg"] = b.into();
            m
        };
        let extra = serde_json::json!({
            "cpu_bound": 1.5,
            "lost": {"holes": 0, "gaps": 0, "duplicates": 0, "checksum_mismatches": 0},
            "memory": {"rss_bytes_per_symbol": 61234.4},
        });
        let s = summary(
            serde_json::json!([
                with_bytes(m("book-json", 300.0, 2000.0, 1.2), 171.0),
                with_bytes(m("ticks-json", 250.0, 1500.0, 1.0), 185.0),
                with_bytes(m("book-binary", 300.0, 2000.0, 1.1), 98.0),
                with_bytes(m("ticks-binary", 250.0, 1500.0, 1.0), 99.0),
            ]),
            extra,
        );
        let f = book(&s).unwrap();
        assert_eq!(
            f.figure,
            "json 1.20 µs/update · 171 B · p50 0.300 · p99 2.00 ms; binary 98 B; a 50-level book + 1,024 updates: 61,234 B RSS"
        );
        assert_eq!(f.reference, "ticks: json 1.00 µs/tick");
        assert_eq!(
            f.against,
            "CPU 1.20× json, 1.10× binary (bound 1.5×) · 0 lost · 0 checksum mismatches"
        );
    }

    #[test]
    fn every_row_is_named_once_and_its_command_runs_its_scenario() {
        for (i, r) in ROWS.iter().enumerate() {
            assert!(ROWS[..i].iter().all(|o| o.name != r.name), "{}", r.name);
            // Every row's servers are started by the bench and pinned (`roll` starts
            // them through scripts/cluster, so it has no --spawn).
            let prefix = format!("tickstream-bench {} ", r.scenario);
            assert!(r.command.starts_with(&prefix), "{}", r.command);
            assert!(
                r.command.contains("--server-cpus 0 --client-cpus 1"),
                "{}",
                r.command
            );
            assert_eq!(of_run(r.scenario, r.command).unwrap().name, r.name);
        }
        assert!(of_run("latency", "tickstream-bench latency").is_err());
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
