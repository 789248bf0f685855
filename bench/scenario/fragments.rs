//! `fragments`: what a fragment storm costs the node. The same messages are sent whole
//! (one frame each) and as one-byte fragments, at sizes up to each endpoint's limit, to
//! a spawned node whose limits are opened wide enough to read every storm to its end;
//! the node's CPU (from /proc) per byte it received is compared between the two. Work
//! linear in the bytes received keeps the ratio a constant: the cost of a frame header
//! per byte, whatever the size.
//!
//! The messages are the cheapest each endpoint answers — a `ping` command (`/v1/ws`) or
//! an empty tick array (`/v1/publish`), padded with JSON whitespace to the size — so
//! that framing, not the work a message asks for, is what is measured.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::common::parse_cpus;
use crate::spawn::{self, Procs};

/// CPU per byte received, whole messages against one-byte fragments.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example (spawns a node on CPU 0, sends from CPU 1, 3 runs):

  tickstream-bench fragments --server-cpus 0 --client-cpus 1
  tickstream-bench fragments --ws-sizes 65536 --publish-sizes 1048576 --duration 5s"
)]
pub struct Args {
    /// Message sizes on `/v1/ws`, bytes (its limit, `--max-msg-bytes`, is set to the
    /// largest).
    #[arg(long, value_delimiter = ',', default_value = "1024,8192,65536")]
    pub ws_sizes: Vec<usize>,
    /// Message sizes on `/v1/publish`, bytes (`--publish-max-msg-bytes` is set to the
    /// largest).
    #[arg(long, value_delimiter = ',', default_value = "1024,65536,1048576")]
    pub publish_sizes: Vec<usize>,
    /// Sending time of each case (then every message sent is waited for).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Runs; each spawns its own node and measures every case once.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// CPUs of the node (taskset list).
    #[arg(long)]
    pub server_cpus: Option<String>,
    /// CPUs of the bench (the sender).
    #[arg(long)]
    pub client_cpus: Option<String>,
    /// The node binary (default: `tickstream` beside the bench), e.g. an older build to
    /// compare with; the limits are given to it in `TICKSTREAM_*` variables, which an
    /// older build without some of them ignores.
    #[arg(long)]
    pub tickstream: Option<PathBuf>,
    /// Directory for `summary.json` (default `target/tickstream-bench/fragments-<time>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One case: an endpoint, a message size, whole or in one-byte fragments.
#[derive(Clone, Copy, Debug, Serialize)]
struct Case {
    endpoint: &'static str,
    size: usize,
    fragmented: bool,
}

/// What one case measured.
#[derive(Clone, Copy, Debug, Serialize)]
struct Measured {
    case: Case,
    messages: u64,
    /// Bytes the node received (frames, headers included).
    bytes: u64,
    /// Bytes of the messages themselves.
    payload: u64,
    cpu_s: f64,
    /// Node CPU nanoseconds per byte received.
    ns_per_byte: f64,
    /// … per payload byte.
    ns_per_payload_byte: f64,
}

/// Runs it.
pub fn run(a: Args) -> anyhow::Result<()> {
    let server_cpus = a.server_cpus.as_deref().map(parse_cpus).transpose()?;
    if let Some(c) = a.client_cpus.as_deref().map(parse_cpus).transpose()? {
        spawn::pin_self(&c)?;
    }
    let out = match &a.out {
        Some(d) => d.clone(),
        None => {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
            PathBuf::from(format!("target/tickstream-bench/fragments-{}", t.as_secs()))
        }
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let cases = cases(&a);
    let mut all: Vec<Measured> = Vec::new();
    for run in 1..=a.runs.max(1) {
        let mut procs = Procs::default();
        let (port, pid) = spawn_node(&a, &mut procs, server_cpus.as_deref(), &out, run)?;
        for case in &cases {
            let m = measure(port, pid, *case, a.duration)
                .with_context(|| format!("run {run}, {case:?}"))?;
            println!(
                "run {run} {:<12} {:>8} B {:<9} {:>10} msgs {:>12} B  {:>7.3} s CPU  {:>7.2} ns/B",
                m.case.endpoint,
                m.case.size,
                if m.case.fragmented { "1-byte" } else { "whole" },
                m.messages,
                m.bytes,
                m.cpu_s,
                m.ns_per_byte
            );
            all.push(m);
        }
        procs.stop();
    }
    report(&a, &cases, &all, &out)
}

fn cases(a: &Args) -> Vec<Case> {
    let mut out = Vec::new();
    for (endpoint, sizes) in [("/v1/ws", &a.ws_sizes), ("/v1/publish", &a.publish_sizes)] {
        for &size in sizes {
            for fragmented in [false, true] {
                out.push(Case {
                    endpoint,
                    size,
                    fragmented,
                });
            }
        }
    }
    out
}

/// Starts a node whose limits let every case through: messages up to the largest size,
/// each in as many fragments as it has bytes, rates that never slow a sender.
fn spawn_node(
    a: &Args,
    procs: &mut Procs,
    cpus: Option<&[usize]>,
    out: &std::path::Path,
    run: usize,
) -> anyhow::Result<(u16, u32)> {
    let bin = match &a.tickstream {
        Some(p) => p.clone(),
        None => spawn::sibling("tickstream")?,
    };
    if !bin.exists() {
        bail!("{} not found: build it beside the bench", bin.display());
    }
    let ws_max = a.ws_sizes.iter().copied().max().unwrap_or(65536).max(64);
    let pub_max = a
        .publish_sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(1 << 20)
        .max(64);
    let port = spawn::free_port()?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["serve", "--feed", "none", "--log", "warn"])
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    for (var, value) in [
        ("MAX_MSG_BYTES", ws_max.to_string()),
        ("PUBLISH_MAX_MSG_BYTES", pub_max.to_string()),
        ("MAX_FRAGMENTS", ws_max.max(pub_max).to_string()),
        ("RATE_LIMIT", "1000000".into()),
        ("PUBLISH_RATE_LIMIT", "4000000000".into()),
    ] {
        cmd.env(format!("TICKSTREAM_{var}"), value);
    }
    let log = out.join(format!("node-run{run}.log"));
    let pid = procs.start("tickstream", &mut cmd, cpus, log, true)?;
    spawn::wait_http(procs, port, "/healthz", Duration::from_secs(20))?;
    Ok((port, pid))
}

/// The text of one message of `size` bytes on `endpoint`, padded with whitespace.
fn message(endpoint: &str, size: usize) -> Vec<u8> {
    let core: &[u8] = if endpoint == "/v1/ws" {
        br#"{"op":"ping","id":1}"#
    } else {
        b"[]"
    };
    let mut m = core.to_vec();
    m.resize(size.max(core.len()), b' ');
    m
}

/// One client frame, masked.
fn frame(first: u8, payload: &[u8], out: &mut Vec<u8>) {
    const KEY: [u8; 4] = [0x1b, 0x2c, 0x3d, 0x4e];
    out.push(first);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
}

/// The wire bytes of one message of the case.
fn wire(case: Case) -> Vec<u8> {
    let text = message(case.endpoint, case.size);
    let mut out = Vec::new();
    if !case.fragmented {
        frame(0x81, &text, &mut out);
        return out;
    }
    let last = text.len() - 1;
    for (i, b) in text.iter().enumerate() {
        let op = if i == 0 { 0x1 } else { 0x0 };
        let fin = if i == last { 0x80 } else { 0 };
        frame(fin | op, std::slice::from_ref(b), &mut out);
    }
    out
}

/// Connects and upgrades; the response head is left for the reader.
fn connect(port: u16, path: &str) -> anyhow::Result<TcpStream> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes())?;
    Ok(tcp)
}

/// Reads everything the node sends on `tcp`, counting `marker` (one per answer).
fn count_answers(mut tcp: TcpStream, marker: &'static [u8], count: Arc<AtomicU64>) {
    let finder = memchr::memmem::Finder::new(marker);
    let mut buf = vec![0u8; 1 << 16];
    let mut keep = 0;
    while let Ok(n) = tcp.read(&mut buf[keep..]) {
        if n == 0 {
            return;
        }
        let end = keep + n;
        let found = finder.find_iter(&buf[..end]).count() as u64;
        count.fetch_add(found, Ordering::Relaxed);
        // Keep a tail shorter than the marker: one cut in two is found whole next time.
        keep = (marker.len() - 1).min(end);
        buf.copy_within(end - keep..end, 0);
    }
}

/// Sends the case's messages for `duration`, waits until every one is answered, and
/// reads what the node's CPU went up by.
fn measure(port: u16, pid: u32, case: Case, duration: Duration) -> anyhow::Result<Measured> {
    let wire = wire(case);
    let mut tcp = connect(port, case.endpoint)?;
    let answers = Arc::new(AtomicU64::new(0));
    let marker: &'static [u8] = if case.endpoint == "/v1/ws" {
        b"\"pong\""
    } else {
        b"\"published\""
    };
    let reader = {
        let (tcp, answers) = (tcp.try_clone()?, answers.clone());
        std::thread::spawn(move || count_answers(tcp, marker, answers))
    };
    let cpu0 = spawn::cpu_s(pid).context("reading the node's CPU")?;
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < duration || sent == 0 {
        tcp.write_all(&wire).context("sending")?;
        sent += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(60) + duration * 10;
    while answers.load(Ordering::Relaxed) < sent {
        if Instant::now() > deadline {
            bail!(
                "{} of {sent} messages answered",
                answers.load(Ordering::Relaxed)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let cpu_s = spawn::cpu_s(pid).context("reading the node's CPU")? - cpu0;
    let _ = tcp.shutdown(std::net::Shutdown::Both);
    let _ = reader.join();
    let bytes = sent * wire.len() as u64;
    let payload = sent * case.size as u64;
    Ok(Measured {
        case,
        messages: sent,
        bytes,
        payload,
        cpu_s,
        ns_per_byte: cpu_s * 1e9 / bytes as f64,
        ns_per_payload_byte: cpu_s * 1e9 / payload as f64,
    })
}

/// One size's medians and ratios.
#[derive(Debug, Serialize)]
struct Ratio {
    endpoint: &'static str,
    size: usize,
    whole_ns_per_byte: f64,
    fragmented_ns_per_byte: f64,
    /// Fragmented over whole, per byte received.
    ratio: f64,
    /// … per payload byte.
    ratio_per_payload_byte: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Prints the medians and ratios and writes `summary.json`.
fn report(a: &Args, cases: &[Case], all: &[Measured], out: &std::path::Path) -> anyhow::Result<()> {
    let med = |c: &Case, f: fn(&Measured) -> f64| {
        median(
            all.iter()
                .filter(|m| {
                    (m.case.endpoint, m.case.size, m.case.fragmented)
                        == (c.endpoint, c.size, c.fragmented)
                })
                .map(f)
                .collect(),
        )
    };
    let mut ratios = Vec::new();
    println!(
        "\nmedians of {} runs: node CPU per byte received",
        a.runs.max(1)
    );
    for pair in cases.chunks(2) {
        let (whole, frag) = (&pair[0], &pair[1]);
        let (w, f) = (med(whole, |m| m.ns_per_byte), med(frag, |m| m.ns_per_byte));
        let (wp, fp) = (
            med(whole, |m| m.ns_per_payload_byte),
            med(frag, |m| m.ns_per_payload_byte),
        );
        println!(
            "{:<12} {:>8} B  whole {:>7.3} ns/B  1-byte fragments {:>7.3} ns/B  ratio {:>5.2}× (per payload byte {:.1}×)",
            whole.endpoint, whole.size, w, f, f / w, fp / wp
        );
        ratios.push(Ratio {
            endpoint: whole.endpoint,
            size: whole.size,
            whole_ns_per_byte: w,
            fragmented_ns_per_byte: f,
            ratio: f / w,
            ratio_per_payload_byte: fp / wp,
        });
    }
    let summary = serde_json::json!({
        "scenario": "fragments",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": crate::report::machine(),
        "duration_s": a.duration.as_secs_f64(),
        "server_cpus": a.server_cpus,
        "client_cpus": a.client_cpus,
        "ratios": ratios,
        "runs": all,
    });
    crate::report::write_summary(out, &summary)
}
