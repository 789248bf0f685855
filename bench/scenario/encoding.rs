//! `encoding`: the same load with `encoding=json` and `encoding=binary`: bytes per
//! message, CPU per message, latency.

use crate::common::{Common, Shape, Target};
use crate::scenario::{finish, run_once, Ctx, Defaults, Load};

/// JSON against binary frames.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:

  tickstream-bench encoding --spawn --shape 100x10/100 --rate 10000

Binary frames are counted (frames, bytes) but not decoded; a server that does not offer \
`encoding=binary` is reported as such.")]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Load shape C×K/N.
    #[arg(long, default_value = "100x10/100")]
    pub shape: Shape,
    /// Ticks per second over the N symbols.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
}

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    let source = a.common.source;
    let json = Target {
        label: "json".into(),
        ..Target::tickstream(source)
    };
    let binary = Target {
        label: "binary".into(),
        encoding: "binary".into(),
        ..Target::tickstream(source)
    };
    let mut ctx = Ctx::new(a.common, "encoding", Defaults::default())?;
    let load = Load::plain(a.shape, a.rate);
    let mut runs = Vec::new();
    let mut notes = Vec::new();
    for run in 1..=ctx.runs {
        for t in [&json, &binary] {
            match run_once(&mut ctx, t, &load, run) {
                Ok(r) => {
                    if t.encoding == "binary" && r.counts.binary_frames == 0 {
                        let n = "the server sent no binary frames for encoding=binary: binary \
                                 encoding is not offered (what arrived was JSON)";
                        println!("binary run {run}: {n}");
                        notes.push(n.to_owned());
                        continue;
                    }
                    crate::report::print_run(&r);
                    crate::report::write_hgrm(&ctx.out, &r)?;
                    runs.push(r);
                }
                Err(e) if t.encoding == "binary" => {
                    let n = format!("binary run {run}: not offered by this server: {e:#}");
                    println!("{n}");
                    notes.push(n);
                }
                Err(e) => return Err(e),
            }
        }
    }
    for r in &runs {
        println!(
            "{} run {}: {:.1} bytes/msg, {:.3} server CPU µs/msg, {:.1} msgs/frame",
            r.target,
            r.run,
            if r.setup.encoding == "binary" {
                (r.counts.binary_bytes as f64) / (r.counts.ticks.max(1) as f64)
            } else {
                r.bytes_per_msg
            },
            r.server.cpu_us_per_msg,
            r.msgs_per_frame
        );
    }
    finish(
        &ctx,
        &format!("encoding, {} at {} ticks/s", a.shape, a.rate),
        &runs,
        &[("binary".into(), "json".into())],
        serde_json::json!({"notes": notes}),
    )?;
    Ok(())
}
