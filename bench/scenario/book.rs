//! `book`: what order books cost a node. Connections hold the books of K symbols at
//! depth 10 (or 50) while the bench's publisher moves every book, each update changing
//! the best levels so that it reaches every subscriber; in JSON and binary frames, each
//! against ticks of the same rate and shape on the same node in the same run. Beside
//! it, the memory one symbol's book holds, measured in process on the node's own hub.
//!
//! The books enter through the node's `/v1/publish` (or Redis, `--source redis`), not
//! from its synthetic feed: that feed makes a tick with every book update, so its cost
//! would be books and ticks together; the bench's publisher sends books alone, stamps
//! each with the time it was due (open loop), and knows what it sent, so every delivery
//! is counted against published × fan-out. The tick reference goes the same way, so
//! both sides of the ratio pay the same ingest.

use anyhow::bail;

use crate::common::{symbol_name, Common, Shape, Source, Target};
use crate::load::Subscription;
use crate::scenario::{finish, median, run_variants, Ctx, Defaults, Load, RunResult, Variant};

/// CPU per delivered update the issue allows against a tick's.
pub const CPU_BOUND: f64 = 1.5;

/// Levels a side of the book the memory figure holds.
const MEMORY_LEVELS: usize = 50;

/// Books against ticks of the same rate and shape.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example (500 connections × the books of 20 of 100 symbols at \
depth 10, 50 updates/s per symbol: 5,000 updates/s in, 500,000 delivered):

  tickstream-bench book --spawn --server-cpus 0 --client-cpus 1 --clients 1 --runs 3
  tickstream-bench book --spawn --source redis --shape 20x5/10 --duration 5s --runs 1

Each run alternates four loads on the same node: books in JSON and in binary frames \
(`encoding=binary`) and ticks in each, at the same rate and shape. Reported per run and as \
medians: server CPU per delivered update against per delivered tick (the bound is 1.5×), \
bytes per update on the wire, latency of updates from their `ts` (p50, p99, p99.9), and \
what the clients found: every update's `prev_seq` checked against the book held (holes, \
gaps, repeats) and, on the first --check-books connections, every checksum against the \
book the message makes. Then the memory of a 50-level book with 1,024 updates of history: \
the node's own count of its structures, and the RSS it adds over --memory-symbols books."
)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Load shape C×K/N: C connections, each holding the books of K of N symbols.
    #[arg(long, default_value = "500x20/100")]
    pub shape: Shape,
    /// Book updates per second per symbol (the ticks of the reference go at the same rate).
    #[arg(long, default_value_t = 50.0)]
    pub symbol_rate: f64,
    /// Depth of every book subscription: 10 or 50.
    #[arg(long, default_value_t = 10)]
    pub depth: u16,
    /// Levels a side of the books the publisher keeps (10 to 1000).
    #[arg(long, default_value_t = 50)]
    pub levels: usize,
    /// Encodings measured, each with books and with ticks: `json`, `binary`.
    #[arg(long, value_delimiter = ',', default_value = "json,binary")]
    pub encodings: Vec<Encoding>,
    /// Connections (the first ones) that keep their whole books and check every
    /// message's checksum; the others check `prev_seq` alone.
    #[arg(long, default_value_t = 10)]
    pub check_books: usize,
    /// Books of the in-process memory figure (0 leaves it out; at most 10,000).
    #[arg(long, default_value_t = 200)]
    pub memory_symbols: usize,
}

/// An encoding of `/v1/ws`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// Text frames of JSON messages.
    Json,
    /// Binary records (`encoding=binary`).
    Binary,
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Binary => "binary",
        }
    }
}

/// Label of the book variant in `enc`.
fn book_label(enc: &str) -> String {
    format!("book-{enc}")
}

/// Label of the tick variant in `enc`.
fn ticks_label(enc: &str) -> String {
    format!("ticks-{enc}")
}

/// The flags checked: what this scenario can measure.
fn check(a: &Args) -> anyhow::Result<()> {
    if a.common.source == Source::Synthetic {
        bail!(
            "book: --source publish or redis: the node's synthetic feed makes a tick with \
             every book update, so what it costs is not the books' alone"
        );
    }
    if !a.common.against.is_empty() {
        bail!("book: --against is not offered: no reference server carries books (the reference is the node's own ticks)");
    }
    if a.common.skip_seq.is_some() {
        bail!(
            "book: --skip-seq is for ticks (a book update that skips one is refused by the node)"
        );
    }
    if !matches!(a.depth, 10 | 50) {
        bail!("--depth {} is not offered: 10 or 50", a.depth);
    }
    if !crate::books::LEVELS.contains(&a.levels) {
        bail!("--levels {} is out of range: 10 to 1000", a.levels);
    }
    if !(a.symbol_rate > 0.0 && a.symbol_rate.is_finite()) {
        bail!("--symbol-rate must be a positive number of updates per second");
    }
    if a.encodings.is_empty() {
        bail!("--encodings names none: json, binary or both");
    }
    if a.memory_symbols > 10_000 {
        bail!(
            "--memory-symbols {} is out of range: 0 to 10000",
            a.memory_symbols
        );
    }
    Ok(())
}

/// The four loads (two per encoding), alternating over the runs.
fn variants(a: &Args) -> Vec<Variant> {
    let rate = a.symbol_rate * a.shape.symbols as f64;
    let mut out = Vec::new();
    let mut encodings = a.encodings.clone();
    encodings.dedup();
    for enc in encodings {
        let target = |label: String| Target {
            label,
            encoding: enc.name().into(),
            ..Target::tickstream(a.common.source)
        };
        out.push(Variant {
            target: target(book_label(enc.name())),
            load: Load {
                subscription: Subscription {
                    book_depth: Some(a.depth),
                    book_checks: a.check_books,
                    ..Subscription::default()
                },
                book_levels: Some(a.levels),
                ..Load::plain(a.shape, rate)
            },
            may_fail: false,
        });
        out.push(Variant {
            target: target(ticks_label(enc.name())),
            load: Load::plain(a.shape, rate),
            may_fail: false,
        });
    }
    out
}

/// The figures of one run.
fn figures(r: &RunResult) -> serde_json::Value {
    let c = &r.counts;
    serde_json::json!({
        "target": r.target,
        "encoding": r.setup.encoding,
        "run": r.run,
        "valid": r.valid,
        "delivered": c.ticks,
        "expected": r.expected,
        "complete": r.complete,
        "cpu_us_per_msg": r.server.cpu_us_per_msg,
        "bytes_per_msg": r.bytes_per_msg,
        "msgs_per_frame": r.msgs_per_frame,
        "p50_us": r.latency.p50,
        "p99_us": r.latency.p99,
        "p999_us": r.latency.p999,
        "holes": c.holes,
        "gaps": c.gaps,
        "duplicates": c.duplicates,
        "books_checked": c.books_checked,
        "checksum_mismatches": c.checksum_mismatches,
    })
}

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    check(&a)?;
    let memory = match a.memory_symbols {
        0 => serde_json::Value::Null,
        n => memory(n)?,
    };
    let variants = variants(&a);
    let mut ctx = Ctx::new(a.common.clone(), "book", Defaults::default())?;
    let (runs, _) = run_variants(&mut ctx, &variants)?;
    print_per_run(&runs);
    let per_run: Vec<serde_json::Value> = runs.iter().map(figures).collect();
    let mut cpu_ratio = serde_json::Map::new();
    let mut pairs = Vec::new();
    for enc in ["json", "binary"] {
        let cpu = |label: &str| {
            median(
                runs.iter()
                    .filter(|r| r.target == label)
                    .map(|r| r.server.cpu_us_per_msg)
                    .collect(),
            )
        };
        let (b, t) = (cpu(&book_label(enc)), cpu(&ticks_label(enc)));
        if b > 0.0 && t > 0.0 {
            println!(
                "{enc}: CPU per delivered update {b:.3} µs, per delivered tick {t:.3} µs: {:.2}× (bound {CPU_BOUND}×)",
                b / t
            );
            cpu_ratio.insert(enc.into(), (b / t).into());
            pairs.push((book_label(enc), ticks_label(enc)));
        }
    }
    let lost = lost(&runs);
    println!(
        "book updates lost or out of order (holes + gaps + repeats), checksum mismatches: {lost}"
    );
    let title = format!(
        "book, {} at depth {}, {} updates/s per symbol",
        a.shape, a.depth, a.symbol_rate
    );
    finish(
        &ctx,
        &title,
        &runs,
        &pairs,
        serde_json::json!({
            "shape": a.shape.to_string(),
            "symbol_rate": a.symbol_rate,
            "rate": a.symbol_rate * a.shape.symbols as f64,
            "depth": a.depth,
            "levels": a.levels,
            "fanout": a.shape.fanout(),
            "check_books": a.check_books,
            "cpu_bound": CPU_BOUND,
            "cpu_ratio": cpu_ratio,
            "lost": lost,
            "per_run": per_run,
            "memory": memory,
        }),
    )?;
    Ok(())
}

/// What the book runs' clients found wrong, summed: holes, gaps, repeats, checksum
/// mismatches, and updates checked.
fn lost(runs: &[RunResult]) -> serde_json::Value {
    let book: Vec<&RunResult> = runs
        .iter()
        .filter(|r| r.target.starts_with("book-"))
        .collect();
    let sum = |f: fn(&RunResult) -> u64| book.iter().map(|r| f(r)).sum::<u64>();
    serde_json::json!({
        "holes": sum(|r| r.counts.holes),
        "gaps": sum(|r| r.counts.gaps),
        "duplicates": sum(|r| r.counts.duplicates),
        "checksum_mismatches": sum(|r| r.counts.checksum_mismatches),
        "books_checked": sum(|r| r.counts.books_checked),
        "incomplete_runs": book.iter().filter(|r| r.complete == Some(false)).count(),
    })
}

/// The figures compared, a line per run.
fn print_per_run(runs: &[RunResult]) {
    println!();
    println!(
        "{:<13} {:>4} {:>12} {:>11} {:>10} {:>9} {:>9} {:>9} {:>6} {:>9}",
        "variant",
        "run",
        "delivered",
        "CPU µs/msg",
        "bytes/msg",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "lost",
        "mismatch"
    );
    for r in runs {
        let c = &r.counts;
        println!(
            "{:<13} {:>4} {:>12} {:>11.3} {:>10.1} {:>9} {:>9} {:>9} {:>6} {:>9}",
            r.target,
            r.run,
            c.ticks,
            r.server.cpu_us_per_msg,
            r.bytes_per_msg,
            crate::report::ms(r.latency.p50),
            crate::report::ms(r.latency.p99),
            crate::report::ms(r.latency.p999),
            c.holes + c.gaps + c.duplicates,
            c.checksum_mismatches,
        );
    }
}

/// The memory of one symbol's 50-level book with a full history of updates, in this
/// process on the node's own hub: the hub's count of its structures
/// (`Books::footprint`) and the resident memory `n` such books add, per book.
fn memory(n: usize) -> anyhow::Result<serde_json::Value> {
    use tickstream::book::Spec;
    use tickstream::hub::book::{BookPublished, BookSettings};
    use tickstream::tick::Symbol;
    let names: Vec<Symbol> = (0..n).map(|i| Symbol::from(symbol_name(i))).collect();
    let settings = BookSettings::default();
    let spec = Spec::new(crate::books::DECIMALS);
    let hub = tickstream::hub::Hub::new(names.iter().cloned(), 16)
        .with_books(names.iter().map(|s| (s.clone(), spec)), settings);
    let rss = || crate::spawn::sample(std::process::id(), 0.0).map(|s| s.rss_kb * 1024);
    let before = rss();
    for name in &names {
        let mut model = crate::books::Model::new(MEMORY_LEVELS);
        let head = |seq: u64| crate::books::Head {
            symbol: name,
            epoch: "mem",
            seq,
            prev_seq: (seq > 1).then(|| seq - 1),
            ts: seq,
        };
        // One message at a time, so that nothing but the books stays in memory.
        for k in 0..=settings.history as u64 {
            let (bids, asks) = match k {
                0 => model.whole(),
                _ => model.update(k),
            };
            let r = hub.publish_books(&[crate::books::msg(&head(k + 1), bids, asks)]);
            if !matches!(r[..], [BookPublished::Applied(_)]) {
                bail!(
                    "memory: book message {} of {name} was not applied: {r:?}",
                    k + 1
                );
            }
        }
    }
    let after = rss();
    let (counted, history) = hub
        .books()
        .footprint(&names[0])
        .ok_or_else(|| anyhow::anyhow!("memory: the hub holds no book of {}", names[0]))?;
    let rss_per_book = before
        .zip(after)
        .map(|(b, a)| a.saturating_sub(b) as f64 / n as f64);
    println!(
        "memory per symbol of a {MEMORY_LEVELS}-level book with {history} updates of history: \
         {counted} bytes counted by the hub; {} bytes of RSS per book over {n} books",
        rss_per_book.map_or("?".into(), |v| format!("{v:.0}"))
    );
    drop(hub);
    Ok(serde_json::json!({
        "levels": MEMORY_LEVELS,
        "history": history,
        "books": n,
        "counted_bytes_per_symbol": counted,
        "rss_bytes_per_symbol": rss_per_book,
    }))
}
