//! `tickstream-bench results`: `bench/RESULTS.md` written from the scenarios' JSON
//! summaries kept in `bench/results/current/`, one a row (`<row>.json`, with its plot
//! `<row>.svg`), so that the page says what the runs measured and nothing typed by
//! hand.
//!
//! `--take DIR` promotes a run: it copies the `summary.json` a scenario wrote in `DIR`
//! and the plot it names into `current/` under the row's name, then writes the page.
//! `--check` fails when the page is not what the summaries give. Each row is defined in
//! [`rows`]: its scenario, the command that fills it, and how its figures are read
//! from a summary. A row without a summary says so and points into
//! `bench/results/HISTORY.md`, the dated record of every earlier measurement.

mod history;
mod rows;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

pub use rows::ROWS;

/// Write `bench/RESULTS.md` from the summaries in `bench/results/current/`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:

  tickstream-bench results                     # write bench/RESULTS.md
  tickstream-bench results --take target/tickstream-bench/latency-1765000000
  tickstream-bench results --check             # exit 1 when RESULTS.md is stale

Rows and the commands that fill them: bench/README.md, \"Results\".")]
pub struct Args {
    /// Promote the run whose output directory this is: copy its `summary.json` and
    /// plot into `results/current/` under its row's name, then write the page.
    #[arg(long, value_name = "DIR", conflicts_with = "check")]
    pub take: Option<PathBuf>,
    /// The row `--take` fills (default: the only row of the run's scenario, or the
    /// row whose command the run's is).
    #[arg(long, requires = "take")]
    pub row: Option<String>,
    /// Write nothing; fail when RESULTS.md is not what the summaries give.
    #[arg(long)]
    pub check: bool,
    /// The bench directory holding RESULTS.md and results/ (default: this source
    /// tree's `bench/`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// A row's figures, as the table shows them.
pub struct Figures {
    /// The headline figure.
    pub figure: String,
    /// The reference measured beside it, named ("—" when none was).
    pub reference: String,
    /// The figure against the reference: a ratio or a difference.
    pub against: String,
    /// Valid runs of the runs behind the figure, e.g. `3/3`.
    pub valid: String,
}

/// The summaries of `results/current/`, by row name.
pub type Current = BTreeMap<String, Value>;

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    let dir = a
        .dir
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bench"));
    let page = dir.join("RESULTS.md");
    if let Some(from) = &a.take {
        let row = take(&dir, from, a.row.as_deref())?;
        println!(
            "{} now holds {}",
            row_file(&dir, row, "json").display(),
            from.display()
        );
    }
    let text = generate(&dir)?;
    if a.check {
        let now = std::fs::read_to_string(&page)
            .with_context(|| format!("reading {}", page.display()))?;
        if now != text {
            bail!(
                "{} is not what the summaries in {} give{}: run `tickstream-bench results`",
                page.display(),
                current_dir(&dir).display(),
                first_difference(&now, &text)
            );
        }
        println!("{} is up to date", page.display());
        return Ok(());
    }
    std::fs::write(&page, &text).with_context(|| format!("writing {}", page.display()))?;
    println!("wrote {}", page.display());
    Ok(())
}

fn current_dir(dir: &Path) -> PathBuf {
    dir.join("results").join("current")
}

fn row_file(dir: &Path, row: &rows::Row, ext: &str) -> PathBuf {
    current_dir(dir).join(format!("{}.{ext}", row.name))
}

/// Where the page first differs from what it should be, for the error.
fn first_difference(now: &str, want: &str) -> String {
    let mut a = now.lines();
    let mut b = want.lines();
    for n in 1.. {
        match (a.next(), b.next()) {
            (Some(x), Some(y)) if x == y => continue,
            (None, None) => return String::new(),
            (x, y) => {
                return format!(
                    " (line {n} is {:?}, should be {:?})",
                    x.unwrap_or("<end>"),
                    y.unwrap_or("<end>")
                )
            }
        }
    }
    String::new()
}

/// The page the summaries in `dir/results/current/` give.
pub fn generate(dir: &Path) -> anyhow::Result<String> {
    let current = read_current(&current_dir(dir))?;
    let history_path = dir.join("results").join("HISTORY.md");
    let history = history::Headings::read(&history_path)?;
    let mut s = String::from(HEAD);
    s.push_str("| row | figure | reference beside it | against it | valid runs | date (UTC) | command | plot |\n");
    s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    let mut machines: Vec<String> = Vec::new();
    for row in ROWS {
        let cells = match current.get(row.name) {
            Some(summary) => {
                let m = machine(summary);
                if !machines.contains(&m) {
                    machines.push(m);
                }
                measured(dir, row, summary, &current)?
            }
            None => unmeasured(row, &history)?,
        };
        let _ = writeln!(s, "| `{}` | {} |", row.name, cells.join(" | "));
    }
    s.push_str(PLACEMENT);
    s.push_str("\n## What each row shows\n\n");
    for row in ROWS {
        let _ = writeln!(s, "- `{}`: {}", row.name, row.what);
    }
    if !machines.is_empty() {
        s.push_str("\nMeasured on: ");
        s.push_str(&machines.join("; "));
        s.push_str(".\n");
    }
    Ok(s)
}

const HEAD: &str = "# Benchmark results

The current figure of every scenario, one row each, written by `tickstream-bench results`
from the runs' summaries in [results/current/](results/current/): do not edit it by
hand; [README.md](README.md#results) says how a run is promoted to a row. Every
measurement before these, dated and with what limited it:
[results/HISTORY.md](results/HISTORY.md).

";

const PLACEMENT: &str = "
Every command pins the servers to CPU 0 and the bench (publisher, receiving processes,
redis-server) to CPU 1. Latency in ms, medians over the valid runs; µs/msg is server CPU
per delivered message; the reference is measured in the same run unless it names a row.
";

/// The cells of a row that has a summary.
fn measured(
    dir: &Path,
    row: &rows::Row,
    summary: &Value,
    current: &Current,
) -> anyhow::Result<Vec<String>> {
    let f = row.headline.figures(summary, current).with_context(|| {
        format!(
            "row {}: reading {}",
            row.name,
            row_file(dir, row, "json").display()
        )
    })?;
    let date = text(summary, "started_utc")?;
    let date = date.get(..10).unwrap_or(date);
    let command = text(summary, "command_line")?;
    let plot = row_file(dir, row, "svg");
    let plot = if plot.exists() {
        format!("[{0}.svg](results/current/{0}.svg)", row.name)
    } else {
        "—".to_owned()
    };
    Ok(vec![
        f.figure,
        f.reference,
        f.against,
        f.valid,
        date.to_owned(),
        format!("`{command}`"),
        plot,
    ])
}

/// The cells of a row with no summary yet: where its last figure is, and how to fill it.
fn unmeasured(row: &rows::Row, history: &history::Headings) -> anyhow::Result<Vec<String>> {
    let figure = match row.history {
        Some(heading) => {
            let (anchor, date) = history.find(heading).with_context(|| {
                format!(
                    "row {}: no heading {heading:?} in results/HISTORY.md",
                    row.name
                )
            })?;
            let since = date.map(|d| format!(" since {d}")).unwrap_or_default();
            format!("not measured{since}: see [HISTORY](results/HISTORY.md#{anchor})")
        }
        None => "not measured yet".to_owned(),
    };
    Ok(vec![
        figure,
        "—".into(),
        "—".into(),
        "—".into(),
        "—".into(),
        format!("`{}`", row.command),
        "—".into(),
    ])
}

/// The machine a summary was measured on, in a few words.
fn machine(summary: &Value) -> String {
    let m = &summary["machine"];
    format!(
        "{} ({} CPUs, Linux {})",
        m["cpu_model"].as_str().unwrap_or("?"),
        m["cpus"].as_u64().unwrap_or(0),
        m["kernel"].as_str().unwrap_or("?")
    )
}

/// A string field of a summary.
pub fn text<'a>(v: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    v[key].as_str().with_context(|| {
        format!("the summary has no `{key}` (written by a bench older than `results`?)")
    })
}

/// Every `<row>.json` of `dir`; a JSON file that names no row is an error.
fn read_current(dir: &Path) -> anyhow::Result<Current> {
    let mut out = Current::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in entries {
        let path = e?.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let row = rows::find(&name).with_context(|| format!("{}: no such row", path.display()))?;
        let summary = read_summary(&path)?;
        let scenario = text(&summary, "scenario")?;
        if scenario != row.scenario {
            bail!(
                "{}: a `{scenario}` summary, but row {} is filled by `{}`",
                path.display(),
                row.name,
                row.scenario
            );
        }
        out.insert(name, summary);
    }
    Ok(out)
}

fn read_summary(path: &Path) -> anyhow::Result<Value> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&s).with_context(|| format!("{} is not JSON", path.display()))
}

/// Copies the run in `from` into `current/` as its row (checked first: the row must
/// be of the run's scenario and read its figures from it); returns the row.
fn take(dir: &Path, from: &Path, row: Option<&str>) -> anyhow::Result<&'static rows::Row> {
    let path = from.join("summary.json");
    let summary = read_summary(&path)?;
    let scenario = text(&summary, "scenario")?;
    let row = match row {
        Some(name) => rows::find(name)?,
        None => rows::of_run(scenario, text(&summary, "command_line")?)?,
    };
    if row.scenario != scenario {
        bail!(
            "{}: a `{scenario}` run cannot fill row {}, which is filled by `{}`",
            path.display(),
            row.name,
            row.scenario
        );
    }
    let mut current = read_current(&current_dir(dir))?;
    current.remove(row.name);
    row.headline
        .figures(&summary, &current)
        .with_context(|| format!("row {}: reading {}", row.name, path.display()))?;
    let plot = from.join(text(&summary, "plot")?);
    if !plot.exists() {
        bail!(
            "{}: the plot the summary names is not there",
            plot.display()
        );
    }
    std::fs::create_dir_all(current_dir(dir))?;
    std::fs::copy(&path, row_file(dir, row, "json"))?;
    std::fs::copy(&plot, row_file(dir, row, "svg"))?;
    Ok(row)
}
