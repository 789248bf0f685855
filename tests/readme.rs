//! The examples of the README and of the `docs/` pages it links to, run as written:
//! every fenced block is either run here against real processes (a `tickstream serve`
//! node, `redis-server`, Node for the browser snippet) and its printed output compared
//! with what the binary prints now, or named with the test that runs it elsewhere. A new
//! block without a check fails `every_readme_block_is_run_or_checked`.
//!
//! The examples assume a node on `127.0.0.1:8080` (and Redis on `127.0.0.1:6379`). Here
//! each block gets free ports instead: those addresses in the commands are rewritten,
//! and `TICKSTREAM_LISTEN` / `TICKSTREAM_URL` point the commands that rely on the
//! defaults at them. `cargo run --release --` is the test build of `tickstream`.
//!
//! Outputs are compared by shape: a JSON line by its `type` and keys, any other line
//! word by word with every word that holds a digit counted as one number (prices, times,
//! ports, epochs), so wording and layout must match and values may differ.

mod common;
#[path = "common/redis.rs"]
mod env;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The pages whose examples are run: the README and the `docs/` pages (but the
/// protocol, whose examples `tests/binary.rs` and the protocol tests check).
const PAGES: &[(&str, &str)] = &[
    ("README.md", include_str!("../README.md")),
    ("docs/client.md", include_str!("../docs/client.md")),
    ("docs/cluster.md", include_str!("../docs/cluster.md")),
    (
        "docs/configuration.md",
        include_str!("../docs/configuration.md"),
    ),
    ("docs/dashboard.md", include_str!("../docs/dashboard.md")),
    ("docs/feeds.md", include_str!("../docs/feeds.md")),
    ("docs/metrics.md", include_str!("../docs/metrics.md")),
    ("docs/security.md", include_str!("../docs/security.md")),
];

/// Every fenced block of the pages, by a phrase of its first line, and where it is
/// checked. The phrase must match exactly one block.
const BLOCKS: &[(&str, &str)] = &[
    ("cargo run --release -- serve     #", "quick_start"),
    ("# tickstream.toml", "configuration_file"),
    (
        "const symbols = [",
        "browser_snippet_prints_ticks_only_and_resumes_after_a_reconnect",
    ),
    (
        "$ tickstream subscribe AAPL MSFT BTC-USD EUR/USD",
        "subscribe_table_in_a_terminal",
    ),
    (
        "$ tickstream subscribe AAPL,MSFT --count 3",
        "subscribe_ndjson",
    ),
    (
        "$ tickstream subscribe AAPL MSFT BTC-USD --stats",
        "subscribe_stats",
    ),
    (
        "$ tickstream subscribe AAPL --json --backoff-base 1s",
        "subscribe_reconnects_and_resumes",
    ),
    (
        "$ tickstream subscribe 'BTC-*' --throttle 250ms",
        "subscribe_paced_candles_and_reports",
    ),
    (
        "$ tickstream subscribe AAPL MSFT --candles 1s",
        "subscribe_candles_table",
    ),
    ("$ tickstream subscribe --book AAPL", "subscribe_book_ladder"),
    (
        "const sub = {op: \"subscribe\", channel: \"book\"",
        "browser_book_snippet_keeps_a_checked_book_and_starts_afresh_on_a_mismatch",
    ),
    (
        "$ tickstream subscribe AAPL --candles 1s --backfill 3 --count 3",
        "subscribe_paced_candles_and_reports",
    ),
    (
        "$ tickstream subscribe AAPL --report-every 1s",
        "subscribe_paced_candles_and_reports",
    ),
    ("$ tickstream feed record", "feed_record"),
    (
        "feed (its own process, or a node",
        "a figure, not an example",
    ),
    (
        "scripts/cluster            #",
        "cluster_commands (and cluster_nginx)",
    ),
    ("scripts/dev-cert .dev-tls", "tls_with_dev_cert"),
    ("head -c 48 /dev/urandom", "tokens"),
    ("src/tick.rs", "a figure (the layout), not an example"),
    ("$ tickstream serve --feed none &", "feed_synth"),
    (
        "$ tickstream feed replay feeds/sample.ndjson.zst --to",
        "feed_replay",
    ),
    ("$ tickstream serve --feed replay:", "serve_a_replay"),
    (
        "$ tickstream feed replay feeds/sample.ndjson.zst --redis",
        "feeds_into_redis",
    ),
    ("$ cat mixed.ndjson", "publishing_into_a_node"),
    (
        "cargo build --release",
        "bench::references_measured_in_the_same_run runs it at a tiny scale",
    ),
    (
        "cd fuzz",
        "not run: fuzzing needs the nightly toolchain; binary(properties) runs the same parsers",
    ),
    (
        "openssl genpkey -algorithm EC",
        "auth::the_token_command_signs_rs256_and_es256_with_a_kid and auth::rotation_through_the_key_directory do the same with openssl",
    ),
    (
        "curl -N '127.0.0.1:8080/v1/sse",
        "readme_curl_example_streams_and_resumes (tests/sse.rs)",
    ),
];

/// Commands of the pages not run here, and where they are.
const NOT_RUN: &[(&str, &str)] = &[
    ("scripts/test", "it is the command that runs these tests"),
    ("cargo build --release", "the bench tests build and run tickstream-bench"),
    ("openssl genpkey", "auth tests make their keys with openssl the same way"),
    ("cd fuzz", "fuzzing needs the nightly toolchain"),
    ("cargo +nightly fuzz", "fuzzing needs the nightly toolchain"),
    ("mkdir -p jwt-keys", "auth::rotation_through_the_key_directory"),
    ("target/release/tickstream-bench", "tests/bench.rs runs every scenario at a tiny scale"),
    ("scripts/cluster", "cluster_nginx::the_cluster_script_starts_a_working_cluster_and_stops_exactly_it"),
    ("scripts/cluster stop", "the same test"),
    ("scripts/cluster roll", "cluster_nginx::the_cluster_script_rolls_every_node_and_a_client_through_nginx_loses_nothing"),
    ("tickstream serve --listen 127.0.0.1:900", "fixed ports; their flags are checked here, nodes joined by Redis in cluster_nginx and redis_bus"),
];

// ---------------------------------------------------------------------------------
// Reading the pages

struct Block {
    /// The page it is on.
    page: &'static str,
    lang: String,
    /// 1-based line of the opening fence.
    line: usize,
    text: String,
}

impl Block {
    fn first_line(&self) -> &str {
        self.text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }
}

fn blocks() -> Vec<Block> {
    PAGES
        .iter()
        .flat_map(|(page, text)| page_blocks(page, text))
        .collect()
}

fn page_blocks(page: &'static str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        if let Some(rest) = line.strip_prefix("```") {
            match open.take() {
                Some(b) => out.push(b),
                None => {
                    open = Some(Block {
                        page,
                        lang: rest.trim().to_owned(),
                        line: i + 1,
                        text: String::new(),
                    })
                }
            }
        } else if let Some(b) = open.as_mut() {
            b.text.push_str(line);
            b.text.push('\n');
        }
    }
    assert!(open.is_none(), "an unclosed fence in {page}");
    out
}

/// The one block whose first line contains `key`.
fn block(key: &str) -> Block {
    let mut found: Vec<Block> = blocks()
        .into_iter()
        .filter(|b| b.first_line().contains(key))
        .collect();
    assert_eq!(found.len(), 1, "blocks starting with {key:?}");
    found.pop().unwrap()
}

/// One command of a block and the output the README shows for it.
#[derive(Debug)]
struct Step {
    cmd: String,
    expect: Vec<String>,
}

fn steps(b: &Block) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    for line in b.text.lines() {
        let cmd = match b.lang.as_str() {
            "console" => line.strip_prefix("$ "),
            _ => {
                let t = line.trim();
                if let Some(shown) = t.strip_prefix("# →") {
                    out.last_mut()
                        .expect("output after a command")
                        .expect
                        .push(shown.trim().to_owned());
                    continue;
                }
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                Some(t)
            }
        };
        match cmd {
            Some(c) => out.push(Step {
                cmd: c.replace("cargo run --release -- ", "tickstream "),
                expect: Vec::new(),
            }),
            None => out
                .last_mut()
                .expect("output after a command")
                .expect
                .push(line.to_owned()),
        }
    }
    out
}

/// The `tickstream …` commands anywhere on the pages: in blocks and in `code spans`.
fn all_commands() -> Vec<String> {
    let mut cmds: Vec<String> = blocks()
        .iter()
        .filter(|b| b.lang == "sh" || b.lang == "console")
        .flat_map(|b| steps(b).into_iter().map(|s| s.cmd))
        .collect();
    cmds.extend(
        code_spans()
            .into_iter()
            .filter(|s| s.starts_with("tickstream ")),
    );
    cmds
}

/// The `code spans` of the pages' text, outside fenced blocks (a span may wrap).
fn code_spans() -> Vec<String> {
    PAGES
        .iter()
        .flat_map(|(_, page)| page_spans(page))
        .collect()
}

fn page_spans(page: &str) -> Vec<String> {
    let mut text = String::new();
    let mut in_fence = false;
    for line in page.lines() {
        if line.starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence {
            text.push_str(line);
            text.push(' ');
        }
    }
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

// ---------------------------------------------------------------------------------
// Comparing outputs

/// Strips terminal escapes and splits on `\n` and `\r` (a redrawn table).
fn lines(text: &str) -> Vec<String> {
    let mut clean = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else {
            clean.push(c);
        }
    }
    clean
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The shape of a line (see the top of this file).
fn shape(line: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        let one = match &v {
            Value::Array(a) if !a.is_empty() => &a[0],
            other => other,
        };
        if let Value::Object(m) = one {
            let keys: Vec<&str> = m.keys().map(String::as_str).collect();
            let kind = if v.is_array() { "[json]" } else { "json" };
            return format!("{kind} {} {}", one["type"], keys.join(","));
        }
    }
    // An epoch is a random name, digits or not: it is a value, like a number.
    let mut after_epoch = false;
    line.split_whitespace()
        .map(|w| {
            let value = after_epoch || w.bytes().any(|b| b.is_ascii_digit());
            after_epoch = w == "epoch";
            if w.starts_with("epoch=") {
                "epoch=#"
            } else if value {
                "#"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn an_epoch_has_the_same_shape_whether_or_not_its_name_has_digits() {
    assert_eq!(
        shape("seed 1, epoch gmgeuat); 6"),
        shape("seed 7, epoch k3x9q2a); 6")
    );
    assert_eq!(shape("x epoch=zrbgzxj y"), shape("x epoch=4k2m y"));
    assert_ne!(shape("the epoch ends"), shape("the epoch ends here"));
}

fn shapes(lines: &[String]) -> BTreeSet<String> {
    lines.iter().map(|l| shape(l)).collect()
}

/// Every line the README shows is printed (by shape); with `exact`, nothing else is.
/// A shown line ending in `…` is a prefix that must appear as written.
fn compare(what: &str, expect: &[String], actual: &str, exact: bool, ports: &Ports) {
    if expect.is_empty() {
        return; // the README claims nothing about it
    }
    let got = lines(actual);
    let (prefixes, whole): (Vec<&String>, Vec<&String>) =
        expect.iter().partition(|l| l.contains('…'));
    let prefixes: Vec<String> = prefixes
        .into_iter()
        .map(|p| ports.subst(p.split('…').next().unwrap().trim()))
        .collect();
    for want in &prefixes {
        assert!(
            actual.contains(want.as_str()),
            "{what}: README shows {want:?}…; printed:\n{actual}"
        );
    }
    if whole.is_empty() {
        return;
    }
    let whole: Vec<String> = whole.into_iter().cloned().collect();
    let want = shapes(&whole);
    let have = shapes(&got);
    let missing: Vec<&String> = want.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "{what}: the README shows lines of these shapes that were not printed: {missing:#?}\n\
         printed:\n{actual}"
    );
    if exact {
        // A line the README shows by its beginning (`…`) may end in any way.
        let shown = |l: &String| prefixes.iter().any(|p| l.starts_with(p.as_str()));
        let rest: Vec<String> = got.iter().filter(|l| !shown(l)).cloned().collect();
        let have = shapes(&rest);
        let extra: Vec<&String> = have.difference(&want).collect();
        assert!(
            extra.is_empty(),
            "{what}: printed lines of shapes the README does not show: {extra:#?}\n\
             printed:\n{actual}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Running a block

/// The free ports that stand in for the README's fixed ones.
struct Ports {
    node: u16,
    redis: Option<u16>,
}

impl Ports {
    fn subst(&self, s: &str) -> String {
        let mut s = s
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", self.node))
            .replace("localhost:8080", &format!("localhost:{}", self.node));
        if let Some(r) = self.redis {
            s = s.replace("127.0.0.1:6379", &format!("127.0.0.1:{r}"));
        }
        s
    }
}

/// How a block is run.
#[derive(Default)]
struct Spec {
    /// Start a node first (`tickstream serve` with these arguments), for blocks that do
    /// not start their own.
    node: Option<&'static [&'static str]>,
    /// Start a `redis-server` for `127.0.0.1:6379`.
    redis: bool,
    /// Run long-running commands in a terminal (a pty of 120×40).
    tty: bool,
    /// Files the block's commands read, made beforehand: (name, content).
    files: &'static [(&'static str, &'static str)],
    /// Commands (by prefix) expected to exit 1.
    fail: &'static [&'static str],
}

/// A temporary directory with `scripts/` and `feeds/` of this checkout, a `tickstream`
/// on `PATH`, free ports, and the processes started for the block.
struct Run {
    dir: tempfile::TempDir,
    bin: tempfile::TempDir,
    ports: Ports,
    _redis: Option<env::RedisServer>,
    /// Processes left running by the block: (child, its output file, README output).
    procs: Vec<(Child, PathBuf, Step)>,
}

impl Run {
    fn new(spec: &Spec) -> Run {
        let dir = tempfile::tempdir().unwrap();
        for d in ["scripts", "feeds"] {
            std::os::unix::fs::symlink(env::repo_path(d), dir.path().join(d)).unwrap();
        }
        for (name, text) in spec.files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let bin = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_tickstream"),
            bin.path().join("tickstream"),
        )
        .unwrap();
        let redis = spec.redis.then(env::RedisServer::start);
        let mut run = Run {
            dir,
            bin,
            ports: Ports {
                node: env::free_port(false),
                redis: redis.as_ref().map(|r| r.port),
            },
            _redis: redis,
            procs: Vec::new(),
        };
        if let Some(args) = spec.node {
            let cmd = format!("tickstream serve {}", args.join(" "));
            run.start(Step {
                cmd,
                expect: vec![],
            });
            if !args.contains(&"none") {
                run.wait_for_values();
            }
        }
        run
    }

    /// Until the symbols the examples use have had a first tick, as they have on a node
    /// that has run for a moment.
    fn wait_for_values(&self) {
        let url = format!(
            "127.0.0.1:{}/v1/snapshot?symbols=AAPL,MSFT,BTC-USD,EUR/USD",
            self.ports.node
        );
        wait_for("a first tick of the symbols the examples use", || {
            let out = Command::new("curl").args(["-s", &url]).output().unwrap();
            serde_json::from_slice::<Vec<Value>>(&out.stdout).is_ok_and(|v| v.len() == 4)
        });
    }

    /// `bash -c SCRIPT` in the block's directory, its stderr into its stdout, with the
    /// environment of a user who set nothing but the two addresses.
    fn bash(&self, script: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg("-c").arg(format!("exec 2>&1; {script}"));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("TICKSTREAM_") || k == "RUST_LOG" {
                c.env_remove(&*k);
            }
        }
        let path = std::env::var("PATH").unwrap_or_default();
        c.current_dir(self.dir.path())
            .env("PATH", format!("{}:{path}", self.bin.path().display()))
            .env(
                "TICKSTREAM_LISTEN",
                format!("127.0.0.1:{}", self.ports.node),
            )
            .env(
                "TICKSTREAM_URL",
                format!("ws://127.0.0.1:{}/v1/ws", self.ports.node),
            )
            .stdin(Stdio::null());
        c
    }

    /// Starts a command that keeps running (a node, a feed in the background); a node
    /// is waited for until it answers `/healthz`.
    fn start(&mut self, step: Step) {
        let n = self.procs.len();
        let log = self.dir.path().join(format!("started-{n}.log"));
        let cmd = self.ports.subst(step.cmd.trim_end().trim_end_matches('&'));
        let child = self
            .bash(&format!("exec {cmd}"))
            .stdout(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let serve = cmd.starts_with("tickstream serve");
        self.procs.push((child, log, step));
        if serve {
            self.wait_healthy();
        } else {
            // A feed in the background: give it time to connect and claim its symbols.
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Until the node answers `/healthz` with `ok`, over plain HTTP or TLS.
    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let p = self.ports.node;
        loop {
            let ok = ["http", "https"].iter().any(|scheme| {
                let out = Command::new("curl")
                    .args(["-sk", "--max-time", "1"])
                    .arg(format!("{scheme}://127.0.0.1:{p}/healthz"))
                    .output()
                    .expect("curl runs (scripts/test installs it)");
                out.stdout.trim_ascii() == b"ok"
            });
            if ok {
                return;
            }
            let (c, log, _) = self.procs.last().unwrap();
            assert!(
                Instant::now() < deadline,
                "the node (pid {}) did not answer: {}",
                c.id(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs every command of `b` in order and compares what each prints.
    fn block(&mut self, b: &Block, spec: &Spec) {
        let mut last_rc = 0;
        for step in steps(b) {
            let what = format!("{} line {}: `{}`", b.page, b.line, step.cmd);
            if let Some((_, why)) = NOT_RUN.iter().find(|(c, _)| step.cmd.starts_with(c)) {
                eprintln!("not run here: {} ({why})", step.cmd);
                continue;
            }
            let cmd = self.ports.subst(&step.cmd);
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let stops = cmd.contains("--count")
                || cmd.contains("--duration")
                || cmd.contains("| head")
                || cmd.contains('>');
            if cmd.trim_end().ends_with('&')
                || (words.get(1) == Some(&"serve") && words[0] == "tickstream")
            {
                self.start(step);
                continue;
            }
            let long = words[0] == "tickstream" && words.get(1) == Some(&"subscribe") && !stops;
            let script = if cmd == "echo $?" {
                format!("(exit {last_rc}); echo $?")
            } else if long && spec.tty {
                format!(
                    "script -qefc 'stty cols 120 rows 40; timeout --preserve-status -s INT 3 {cmd}' /dev/null"
                )
            } else if long {
                format!("timeout --preserve-status -s INT 3 {cmd}")
            } else {
                cmd.clone()
            };
            let out = self.bash(&script).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let rc = out.status.code().unwrap_or(-1);
            last_rc = rc;
            if spec.fail.iter().any(|f| step.cmd.starts_with(f)) {
                assert_eq!(rc, 1, "{what} exits 1:\n{text}");
            } else {
                assert_eq!(rc, 0, "{what} failed:\n{text}");
            }
            if long {
                assert!(!lines(&text).is_empty(), "{what} printed nothing");
            }
            if let Some(files) = cmd.strip_prefix("ls -l ") {
                // Compare the names listed (sizes, owners and dates differ).
                let names = |t: &str| -> BTreeSet<String> {
                    lines(t)
                        .iter()
                        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
                        .collect()
                };
                assert_eq!(
                    names(&text),
                    names(&step.expect.join("\n")),
                    "{what} ({files})"
                );
                continue;
            }
            compare(&what, &step.expect, &text, !long, &self.ports);
        }
    }

    /// Stops what the block left running (SIGINT, as Ctrl-C would) and checks what
    /// those processes printed against the README.
    fn finish(mut self) {
        for (child, log, step) in self.procs.drain(..).rev().collect::<Vec<_>>() {
            let mut child = child;
            interrupt(&mut child);
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            compare(
                &format!("`{}`", step.cmd),
                &step.expect,
                &text,
                false,
                &self.ports,
            );
        }
    }
}

/// SIGINT, then SIGKILL if it has not ended in 10 s; reaps it.
fn interrupt(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Run {
    fn drop(&mut self) {
        for (child, _, _) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run_block(key: &str, spec: Spec) -> Run {
    let b = block(key);
    let mut run = Run::new(&spec);
    run.block(&b, &spec);
    run
}

// ---------------------------------------------------------------------------------
// The checks

#[test]
fn every_readme_block_is_run_or_checked() {
    let all = blocks();
    for b in &all {
        let by: Vec<_> = BLOCKS
            .iter()
            .filter(|(k, _)| b.first_line().contains(k))
            .collect();
        assert_eq!(
            by.len(),
            1,
            "{} line {}: the block starting {:?} needs exactly one check in BLOCKS",
            b.page,
            b.line,
            b.first_line()
        );
    }
    for (k, _) in BLOCKS {
        block(k);
    }
}

/// Every `tickstream` command of the pages names a subcommand that exists and only
/// options its `--help` lists.
#[test]
fn every_readme_command_uses_options_that_exist() {
    let mut helps = std::collections::HashMap::new();
    let mut checked = 0;
    for cmd in all_commands() {
        let line = cmd.split(" #").next().unwrap();
        for part in line.split(['|', '&', ';']) {
            let words: Vec<&str> = part.split_whitespace().collect();
            let Some(at) = words.iter().position(|w| *w == "tickstream") else {
                continue;
            };
            let mut sub = vec![words.get(at + 1).copied().unwrap_or("")];
            if sub[0] == "feed" {
                sub.push(words.get(at + 2).copied().unwrap_or(""));
            }
            let help = helps.entry(sub.join(" ")).or_insert_with(|| {
                let out = Command::new(env!("CARGO_BIN_EXE_tickstream"))
                    .args(&sub)
                    .arg("--help")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "`tickstream {}` exists ({cmd})",
                    sub.join(" ")
                );
                String::from_utf8(out.stdout).unwrap()
            });
            for w in &words[at + 1 + sub.len()..] {
                if !w.starts_with('-') || *w == "-" {
                    continue;
                }
                let flag = w.split('=').next().unwrap();
                let listed = help.match_indices(flag).any(|(i, _)| {
                    let before = help[..i].chars().last().unwrap_or(' ');
                    let after = help[i + flag.len()..].chars().next().unwrap_or(' ');
                    (before == ' ' || before == '\n')
                        && !(after.is_ascii_alphanumeric() || after == '-')
                });
                assert!(
                    listed,
                    "`{flag}` of `{cmd}` is not in `tickstream {} --help`",
                    sub.join(" ")
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 50, "the commands were found ({checked} options)");
}

/// The example config file: the node starts from it and announces what it sets.
#[test]
fn configuration_file() {
    let b = block("# tickstream.toml");
    assert_eq!(b.lang, "toml");
    let mut run = Run::new(&Spec::default());
    let text = b
        .text
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{}", run.ports.node));
    assert_ne!(text, b.text, "the example sets the address");
    std::fs::write(run.dir.path().join("tickstream.toml"), text).unwrap();
    // The file's address, not TICKSTREAM_LISTEN (which would win over it).
    run.start(Step {
        cmd: "env -u TICKSTREAM_LISTEN tickstream serve --config tickstream.toml".into(),
        expect: vec![],
    });
    run.wait_healthy();
    let out = run
        .bash("tickstream subscribe AAPL --json --count 1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let welcome: Value = lines(&text)
        .iter()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("a welcome: {text}"));
    assert_eq!(welcome["type"], "welcome", "{text}");
    assert_eq!(welcome["heartbeat_ms"], 15000, "heartbeat = \"15s\"");
    assert_eq!(welcome["limits"]["max_symbols"], 512);
    assert_eq!(welcome["limits"]["rate_per_s"], 20);
    run.finish();
}

#[test]
fn quick_start() {
    let run = run_block("cargo run --release -- serve     #", Spec::default());
    // "a node on 127.0.0.1:8080 with a synthetic feed of 500+ symbols"
    let out = run
        .bash(&format!("curl -s 127.0.0.1:{}/v1/symbols", run.ports.node))
        .output()
        .unwrap();
    let symbols: Vec<String> = serde_json::from_slice(&out.stdout).expect("a JSON array");
    assert!(symbols.len() >= 500, "{} symbols", symbols.len());
    // AAPL has a value once the feed has ticked it: within moments of the start, later
    // on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let out = run
            .bash(&format!(
                "curl -s '127.0.0.1:{}/v1/snapshot?symbols=AAPL'",
                run.ports.node
            ))
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&out.stdout).into_owned();
        if answer.contains("\"snapshot\"") || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(answer.contains("\"snapshot\""), "{answer}");
    run.finish();
    assert!(
        env::repo_path("scripts/test").exists()
            && Command::new("bash")
                .arg("-n")
                .arg(env::repo_path("scripts/test"))
                .status()
                .unwrap()
                .success()
    );
}

const NODE: Option<&[&str]> = Some(&[]);
const QUIET_NODE: Option<&[&str]> = Some(&["--feed", "none"]);

/// The `curl` examples in the text beside the browser snippet.
#[test]
fn plain_http_examples() {
    let spec = Spec {
        node: NODE,
        ..Spec::default()
    };
    let run = Run::new(&spec);
    let curls: Vec<String> = code_spans()
        .into_iter()
        .filter(|s| s.starts_with("curl "))
        .collect();
    assert!(curls.len() >= 3, "{curls:?}");
    for c in curls {
        let out = run.bash(&run.ports.subst(&c)).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{c}: {text}");
        // The body is the last line (curl's progress meter went to stderr, here merged).
        let body = text.lines().last().unwrap_or("");
        // Health, JSON arrays, or the metrics exposition (which ends with `# EOF`).
        assert!(
            body == "ok" || body.starts_with('[') || body == "# EOF",
            "{c}: {text}"
        );
    }
    run.finish();
}

#[test]
fn subscribe_table_in_a_terminal() {
    run_block(
        "$ tickstream subscribe AAPL MSFT BTC-USD EUR/USD",
        Spec {
            node: NODE,
            tty: true,
            ..Spec::default()
        },
    )
    .finish();
}

#[test]
fn subscribe_ndjson() {
    run_block(
        "$ tickstream subscribe AAPL,MSFT --count 3",
        Spec {
            node: NODE,
            ..Spec::default()
        },
    )
    .finish();
}

#[test]
fn subscribe_stats() {
    run_block(
        "$ tickstream subscribe AAPL MSFT BTC-USD --stats",
        Spec {
            node: Some(&["--rate", "2000"]),
            ..Spec::default()
        },
    )
    .finish();
}

/// The node restarts under a running `subscribe` (a new epoch); what it reports on stderr
/// has the shapes the README shows, and it resumes.
#[test]
fn subscribe_reconnects_and_resumes() {
    let b = block("$ tickstream subscribe AAPL --json --backoff-base 1s");
    let st = steps(&b);
    assert_eq!(st.len(), 1);
    let spec = Spec {
        node: NODE,
        ..Spec::default()
    };
    let mut run = Run::new(&spec);
    let mut sub = run
        .bash(&format!("exec {}", run.ports.subst(&st[0].cmd)))
        .stdout(std::fs::File::create(run.dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let ndjson = run.dir.path().join("aapl.ndjson");
    let log = run.dir.path().join("stderr.log");
    wait_for("a tick in aapl.ndjson", || {
        read(&ndjson).contains("\"tick\"")
    });
    // Stop the node (close 1001), wait past one retry, start it again.
    let (mut node, _, step) = run.procs.pop().unwrap();
    interrupt(&mut node);
    wait_for("a retry", || read(&log).contains("retrying"));
    std::thread::sleep(Duration::from_millis(1500));
    run.start(step);
    wait_for("the resume", || read(&log).contains("gap"));
    interrupt(&mut sub);
    let text = read(&log);
    // Every line is one the README shows; those that must happen do.
    compare("reconnect", &st[0].expect, &text, true, &run.ports);
    run.finish();
}

/// The examples of patterns with pacing, bars as NDJSON and latency reports.
#[test]
fn subscribe_paced_candles_and_reports() {
    for key in [
        "$ tickstream subscribe 'BTC-*' --throttle 250ms",
        "$ tickstream subscribe AAPL --candles 1s --backfill 3 --count 3",
        "$ tickstream subscribe AAPL --report-every 1s",
    ] {
        run_block(
            key,
            Spec {
                node: NODE,
                ..Spec::default()
            },
        )
        .finish();
    }
}

#[test]
fn subscribe_candles_table() {
    run_block(
        "$ tickstream subscribe AAPL MSFT --candles 1s",
        Spec {
            node: NODE,
            tty: true,
            ..Spec::default()
        },
    )
    .finish();
}

#[test]
fn subscribe_book_ladder() {
    run_block(
        "$ tickstream subscribe --book AAPL",
        Spec {
            node: NODE,
            tty: true,
            ..Spec::default()
        },
    )
    .finish();
}

#[test]
fn feed_record() {
    run_block(
        "$ tickstream feed record",
        Spec {
            node: NODE,
            ..Spec::default()
        },
    )
    .finish();
}

#[test]
fn tls_with_dev_cert() {
    run_block("scripts/dev-cert .dev-tls", Spec::default()).finish();
}

#[test]
fn tokens() {
    let b = block("head -c 48 /dev/urandom");
    let spec = Spec::default();
    let mut run = Run::new(&spec);
    run.block(&b, &spec);
    // "ws://127.0.0.1:8080/v1/ws?token=…  or  Authorization: Bearer …"
    let token_cmd = steps(&b)
        .into_iter()
        .find(|s| s.cmd.starts_with("tickstream token"))
        .unwrap()
        .cmd;
    let out = run.bash(&token_cmd).output().unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let port = run.ports.node;
    let status = |url: String, bearer: Option<&str>| -> u16 {
        let mut args = vec![
            "-s".to_owned(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "--max-time".into(),
            "2".into(),
            "-H".into(),
            "Connection: Upgrade".into(),
            "-H".into(),
            "Upgrade: websocket".into(),
            "-H".into(),
            "Sec-WebSocket-Version: 13".into(),
            "-H".into(),
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".into(),
        ];
        if let Some(t) = bearer {
            args.push("-H".into());
            args.push(format!("Authorization: Bearer {t}"));
        }
        args.push(url);
        let out = Command::new("curl").args(&args).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let base = format!("http://127.0.0.1:{port}/v1/ws");
    assert_eq!(status(format!("{base}?token={token}"), None), 101);
    assert_eq!(status(base.clone(), Some(&token)), 101);
    assert_eq!(status(base, None), 401);
    run.finish();
}

#[test]
fn feed_synth() {
    run_block("$ tickstream serve --feed none &", Spec::default()).finish();
}

/// A recording whose first tick (line 2) has its `seq` as a string.
const BROKEN: &str = concat!(
    r#"{"type":"recording","version":1,"source":"test","started_ns":1764284400000000000}"#,
    "\n",
    r#"{"type":"tick","symbol":"AAPL","seq":"2","ts":1764284400100000000,"bid":189.1,"ask":189.12,"bid_size":300,"ask_size":200,"last":189.11,"last_size":100,"volume":200}"#,
    "\n",
);

#[test]
fn feed_replay() {
    run_block(
        "$ tickstream feed replay feeds/sample.ndjson.zst --to",
        Spec {
            node: QUIET_NODE,
            files: &[("broken.ndjson", BROKEN)],
            fail: &["tickstream feed replay broken.ndjson"],
            ..Spec::default()
        },
    )
    .finish();
}

#[test]
fn serve_a_replay() {
    run_block("$ tickstream serve --feed replay:", Spec::default()).finish();
}

#[test]
fn feeds_into_redis() {
    run_block(
        "$ tickstream feed replay feeds/sample.ndjson.zst --redis",
        Spec {
            redis: true,
            fail: &[
                "tickstream feed synth --redis redis://127.0.0.1:6379 --symbols AAPL --rate 100",
            ],
            ..Spec::default()
        },
    )
    .finish();
}

/// AAPL 1, AAPL 2 with bid above ask, XXXX (not served), AAPL 3.
const MIXED: &str = concat!(
    r#"{"type":"recording","version":1,"source":"test","started_ns":1764284400000000000}"#,
    "\n",
    r#"{"type":"tick","symbol":"AAPL","seq":1,"ts":1764284400000000000,"bid":189.1,"ask":189.12,"bid_size":300,"ask_size":200,"last":189.11,"last_size":100,"volume":100}"#,
    "\n",
    r#"{"type":"tick","symbol":"AAPL","seq":2,"ts":1764284400100000000,"bid":189.15,"ask":189.12,"bid_size":300,"ask_size":200,"last":189.12,"last_size":50,"volume":150}"#,
    "\n",
    r#"{"type":"tick","symbol":"XXXX","seq":1,"ts":1764284400200000000,"bid":10.0,"ask":10.01,"bid_size":300,"ask_size":200,"last":10.0,"last_size":50,"volume":50}"#,
    "\n",
    r#"{"type":"tick","symbol":"AAPL","seq":3,"ts":1764284400300000000,"bid":189.11,"ask":189.13,"bid_size":300,"ask_size":200,"last":189.12,"last_size":50,"volume":250}"#,
    "\n",
);

#[test]
fn publishing_into_a_node() {
    run_block(
        "$ cat mixed.ndjson",
        Spec {
            node: QUIET_NODE,
            files: &[("mixed.ndjson", MIXED)],
            fail: &["tickstream feed replay mixed.ndjson"],
            ..Spec::default()
        },
    )
    .finish();
}

/// The cluster block: `scripts/cluster` is run by cluster_nginx; here the by-hand
/// commands' options are checked (every_readme_command_uses_options_that_exist) and
/// every command of the block is one of those two kinds.
#[test]
fn cluster_commands() {
    let b = block("scripts/cluster            #");
    for s in steps(&b) {
        assert!(
            NOT_RUN.iter().any(|(c, _)| s.cmd.starts_with(c)),
            "{} is neither run nor listed in NOT_RUN",
            s.cmd
        );
    }
}

// ---------------------------------------------------------------------------------
// The browser snippet

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the harness around the snippet: records what the snippet sends and prints,
/// closes its first connection once it printed three values of each symbol, and ends
/// once the second connection did too.
const HARNESS: &str = r#"
const fs = require("fs");
const snippet = fs.readFileSync(process.argv[process.argv.length - 1], "utf8");
const opened = [], sent = [], printed = [];
const Native = typeof WebSocket === "function" ? WebSocket : require("ws");
globalThis.WebSocket = class extends Native {
  constructor(...a) { super(...a); opened.push(this); }
  send(d) { sent.push({conn: opened.indexOf(this), msg: JSON.parse(d)}); super.send(d); }
};
console.log = (...args) => printed.push({conn: opened.length - 1, args});
(0, eval)(snippet);
const done = (code) => {
  process.stdout.write(JSON.stringify({sent, printed, opened: opened.length}) + "\n");
  process.exit(code);
};
const seen = (conn, sym) => printed.filter((p) => p.conn === conn && p.args[1] === sym).length;
let closed = false;
setInterval(() => {
  if (!closed && seen(0, "AAPL") >= 3 && seen(0, "EUR/USD") >= 3) { closed = true; opened[0].close(); }
  if (closed && seen(1, "AAPL") >= 3 && seen(1, "EUR/USD") >= 3) done(0);
}, 20);
setTimeout(() => done(1), 60000);
"#;

/// Runs the snippet against a node whose connections reach their lifetime: records
/// each connection's subscribe, who closed it first (the snippet, or the node with its
/// close code), and what was printed; ends once the snippet moved to a second
/// connection, closed the first, and printed three more values of each symbol.
const MOVE_HARNESS: &str = r#"
const fs = require("fs");
const snippet = fs.readFileSync(process.argv[process.argv.length - 1], "utf8");
const opened = [], sent = [], printed = [], closedBy = [];
const Native = typeof WebSocket === "function" ? WebSocket : require("ws");
globalThis.WebSocket = class extends Native {
  constructor(...a) {
    super(...a);
    const i = opened.push(this) - 1;
    this.addEventListener("close", (e) => { closedBy[i] ??= {by: "node", code: e.code}; });
  }
  send(d) { sent.push({conn: opened.indexOf(this), msg: JSON.parse(d)}); super.send(d); }
  close(...a) { closedBy[opened.indexOf(this)] ??= {by: "snippet"}; super.close(...a); }
};
console.log = (...args) => printed.push({args});
(0, eval)(snippet);
const done = (code) => {
  process.stdout.write(JSON.stringify({sent, printed, closedBy, opened: opened.length}) + "\n");
  process.exit(code);
};
let mark = null;
setInterval(() => {
  if (mark === null && closedBy[0]) mark = printed.length;
  if (mark === null) return;
  const after = printed.slice(mark);
  const n = (sym) => after.filter((p) => p.args[1] === sym).length;
  if (n("AAPL") >= 3 && n("EUR/USD") >= 3) done(0);
}, 20);
setTimeout(() => done(1), 60000);
"#;

/// `node` and the arguments that give it a WHATWG `WebSocket` (the browser's API):
/// built in since Node 22, behind a flag in Node 20.10+, else the `ws` package that
/// `scripts/test` installs into `target/node`.
fn node() -> (Command, &'static str) {
    let has = |flag: Option<&str>| {
        let mut c = Command::new("node");
        c.args(flag);
        c.args([
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    };
    let mut c = Command::new("node");
    if has(None) {
        return (c, "built-in");
    }
    if has(Some("--experimental-websocket")) {
        c.arg("--experimental-websocket");
        return (c, "--experimental-websocket");
    }
    let ws = env::repo_path("target/node/node_modules");
    assert!(
        ws.join("ws").exists(),
        "node with a WebSocket (Node 20.10+), or the ws package in target/node: run scripts/test"
    );
    c.env("NODE_PATH", ws);
    (c, "ws package")
}

/// Runs the README's JavaScript block that starts with `key` in Node, inside `harness`
/// (which gets the snippet's path as its last argument), against `run`'s node; what
/// the harness printed, as JSON.
fn run_snippet(run: &Run, key: &str, harness: &str) -> Value {
    let b = block(key);
    assert_eq!(b.lang, "js");
    let snippet = run.dir.path().join("snippet.js");
    std::fs::write(&snippet, run.ports.subst(&b.text)).unwrap();
    let harness_js = run.dir.path().join("harness.js");
    std::fs::write(&harness_js, harness).unwrap();
    let (mut node, how) = node();
    let out = node
        .arg(&harness_js)
        .arg(&snippet)
        .output()
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "harness ({how}): {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap()
}

#[test]
fn browser_snippet_prints_ticks_only_and_resumes_after_a_reconnect() {
    let run = Run::new(&Spec {
        node: Some(&["--rate", "5000"]),
        ..Spec::default()
    });
    let r = run_snippet(&run, "const symbols = [", HARNESS);
    let printed = r["printed"].as_array().unwrap();
    let sent = r["sent"].as_array().unwrap();
    assert_eq!(r["opened"], 2, "one reconnect");

    // Ticks and snapshots only, each with its six values.
    let mut last: std::collections::HashMap<(u64, String), u64> = Default::default();
    let mut first_after: std::collections::HashMap<String, (String, u64)> = Default::default();
    for p in printed {
        let a = p["args"].as_array().unwrap();
        assert_eq!(a.len(), 6, "{p}");
        let kind = a[0].as_str().unwrap();
        assert!(kind == "tick" || kind == "snapshot", "{p}");
        let sym = a[1].as_str().unwrap().to_owned();
        let seq = a[2].as_u64().unwrap();
        assert!(a[3].as_f64().unwrap() > 0.0 && a[4].as_f64().unwrap() >= a[3].as_f64().unwrap());
        let latency = a[5].as_str().unwrap();
        let ms: f64 = latency.strip_suffix(" ms").unwrap().parse().unwrap();
        // Same machine: ts / 1e6 and the wall clock in ms agree to within the time a busy
        // test machine takes to deliver (a unit slip would be off by 10⁶ or more).
        assert!((-50.0..20_000.0).contains(&ms), "latency {latency}: {p}");
        let conn = p["conn"].as_u64().unwrap();
        if let Some(prev) = last.get(&(conn, sym.clone())) {
            assert_eq!(seq, prev + 1, "in order, no hole: {p}");
        }
        if conn == 1 {
            first_after
                .entry(sym.clone())
                .or_insert((kind.to_owned(), seq));
        }
        last.insert((conn, sym), seq);
    }
    // The first subscribe resumes nothing; the second resumes what was printed last.
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0]["msg"]["resume"], serde_json::json!({}));
    let resume = &sent[1]["msg"]["resume"];
    for sym in ["AAPL", "EUR/USD"] {
        let held = last[&(0, sym.to_owned())];
        assert_eq!(resume[sym]["seq"], held, "{resume}");
        assert!(resume[sym]["epoch"].as_str().is_some_and(|e| !e.is_empty()));
        // The node replays from there: the next seq, as a tick, no snapshot.
        assert_eq!(first_after[sym], ("tick".to_owned(), held + 1), "{sym}");
    }
    run.finish();
}

#[test]
fn browser_snippet_makes_before_it_breaks_when_the_node_asks_it_to_reconnect() {
    let run = Run::new(&Spec {
        node: Some(&[
            "--rate",
            "2000",
            "--max-connection-lifetime",
            "3s",
            "--reconnect-notice",
            "1s",
        ]),
        ..Spec::default()
    });
    let r = run_snippet(&run, "const symbols = [", MOVE_HARNESS);
    assert!(r["opened"].as_u64().unwrap() >= 2, "{r}");
    // The snippet closed the old connection itself, before the node's 1001.
    assert_eq!(r["closedBy"][0]["by"], "snippet", "{}", r["closedBy"]);
    // The second subscribe resumed what the first had shown.
    let sent = r["sent"].as_array().unwrap();
    assert!(sent.len() >= 2, "{sent:?}");
    for sym in ["AAPL", "EUR/USD"] {
        assert!(
            sent[1]["msg"]["resume"][sym]["seq"].as_u64().is_some(),
            "{sent:?}"
        );
    }
    // Across both connections every value is printed once, in order, with no hole.
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    for p in r["printed"].as_array().unwrap() {
        let a = p["args"].as_array().unwrap();
        let (sym, seq) = (a[1].as_str().unwrap().to_owned(), a[2].as_u64().unwrap());
        if let Some(prev) = last.get(&sym) {
            assert_eq!(seq, prev + 1, "once each, in order, no hole: {p}");
        }
        last.insert(sym, seq);
    }
    run.finish();
}

/// Runs the book snippet: records what it prints; after ten messages spoils its book
/// (every bid's size, so that no single update can set them all right again), so that
/// the next message's checksum does not match and the snippet starts afresh; ends once
/// ten messages of the fresh book were printed.
const BOOK_HARNESS: &str = r#"
const fs = require("fs");
const snippet = fs.readFileSync(process.argv[process.argv.length - 1], "utf8");
const printed = [];
const Native = typeof WebSocket === "function" ? WebSocket : require("ws");
globalThis.WebSocket = Native;
console.log = (...args) => printed.push(args);
(0, eval)(snippet + "\nglobalThis.__book = book;");
const done = (code) => {
  process.stdout.write(JSON.stringify({printed}) + "\n");
  process.exit(code);
};
let spoiled = -1;
setInterval(() => {
  if (spoiled < 0 && printed.length >= 10 && __book.bids.size > 0) {
    for (const [p, q] of [...__book.bids]) __book.bids.set(p, q + 1);
    spoiled = printed.length;
  }
  const fresh = printed.findIndex((a, i) => spoiled >= 0 && i >= spoiled && a[0] === "book");
  if (fresh >= 0 && printed.length >= fresh + 10) done(0);
}, 5);
setTimeout(() => done(1), 60000);
"#;

#[test]
fn browser_book_snippet_keeps_a_checked_book_and_starts_afresh_on_a_mismatch() {
    let run = Run::new(&Spec {
        node: Some(&["--rate", "5000"]),
        ..Spec::default()
    });
    let r = run_snippet(
        &run,
        "const sub = {op: \"subscribe\", channel: \"book\"",
        BOOK_HARNESS,
    );
    let printed: Vec<(String, u64, String)> = r["printed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a[0].as_str().unwrap().to_owned(),
                a[1].as_u64().unwrap(),
                a[2].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // One mismatch, the one the harness made; then a fresh book, every message after it
    // checked, each update following the one before.
    let bad: Vec<usize> = (0..printed.len())
        .filter(|&i| printed[i].2 != "checksum ok")
        .collect();
    assert_eq!(bad.len(), 1, "{printed:?}");
    assert_eq!(printed[bad[0]].2, "checksum mismatch");
    assert_eq!(printed[0].0, "book");
    let fresh = bad[0]
        + 1
        + printed[bad[0] + 1..]
            .iter()
            .position(|p| p.0 == "book")
            .expect("a fresh book after the mismatch");
    assert!(printed.len() >= fresh + 10, "{printed:?}");
    for w in printed[..bad[0]]
        .windows(2)
        .chain(printed[fresh..].windows(2))
    {
        assert_eq!(w[1].0, "book_update", "{printed:?}");
        assert!(w[1].1 > w[0].1, "{printed:?}");
    }
    run.finish();
}
