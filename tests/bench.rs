//! `tickstream-bench` at a tiny scale (a second or two, a few connections, everything
//! spawned by the bench itself): each scenario produces its files, its JSON parses and
//! its counts add up. Nothing here asserts a speed.
//!
//! The comparison with the references (`--against floor,node`) runs only where they
//! exist: `bench/peers/node-ws/server.js` in the tree and `tickstream-floor` built beside
//! the bench; otherwise that test says so and returns.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_tickstream-bench");

/// Runs the bench with `args` plus a tiny common scale, output into a fresh directory.
fn bench(args: &[&str]) -> (Output, Option<Value>, tempfile::TempDir) {
    // The node the bench spawns is the `tickstream` binary beside it.
    let _ = env!("CARGO_BIN_EXE_tickstream");
    let dir = tempfile::tempdir().unwrap();
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    for (k, v) in [
        ("--duration", "1500ms"),
        ("--warmup", "500ms"),
        ("--runs", "1"),
        ("--drain", "1s"),
        ("--clients", "2"),
        // A debug build on a busy machine may lag; these tests check counts, not pace.
        ("--max-behind", "2s"),
        ("--max-client-lag", "2s"),
    ] {
        if !args.contains(&k) {
            all.push(k.into());
            all.push(v.into());
        }
    }
    all.push("--out".into());
    all.push(dir.path().display().to_string());
    let out = Command::new(BENCH)
        .args(&all)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the bench runs");
    let summary = std::fs::read_to_string(dir.path().join("summary.json"))
        .ok()
        .map(|s| serde_json::from_str(&s).expect("summary.json parses"));
    (out, summary, dir)
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "bench failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn exists(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing", p.display());
    p
}

fn runs_of<'a>(s: &'a Value, target: &str) -> Vec<&'a Value> {
    s["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target"] == target)
        .collect()
}

/// Received = published × fan-out, nothing lost, nothing extra.
fn assert_complete(r: &Value, fanout: u64) {
    let published = r["published_in_window"].as_u64().unwrap();
    assert!(published > 0, "nothing published: {r}");
    let c = &r["counts"];
    assert_eq!(r["expected"].as_u64().unwrap(), published * fanout, "{r}");
    assert_eq!(c["ticks"].as_u64().unwrap(), published * fanout, "{c}");
    assert_eq!(c["gaps"], 0);
    assert_eq!(c["holes"], 0);
    assert_eq!(c["duplicates"], 0);
    assert_eq!(r["complete"], true);
    assert_eq!(r["latency"]["count"].as_u64().unwrap(), published * fanout);
    assert!(r["latency"]["p50"].as_f64().unwrap() > 0.0);
    assert!(r["frames_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["server"]["samples"].as_array().unwrap().len() > 2);
    assert!(!r["placement"].as_array().unwrap().is_empty());
}

#[test]
fn latency_through_publish_counts_add_up() {
    let (out, s, dir) = bench(&["latency", "--spawn", "--shape", "6x2/4", "--rate", "400"]);
    ok(&out);
    let s = s.unwrap();
    exists(dir.path(), "latency.svg");
    exists(dir.path(), "universe.csv");
    let hgrm = std::fs::read_to_string(exists(dir.path(), "tickstream-publish-run1.hgrm")).unwrap();
    assert!(hgrm.contains("Percentile"), "{hgrm}");
    let runs = runs_of(&s, "tickstream-publish");
    assert_eq!(runs.len(), 1);
    // 6 connections × 2 of 4 symbols: every tick reaches 3 connections.
    assert_complete(runs[0], 3);
    let p = &runs[0]["publisher"];
    assert_eq!(p["refused"], 0);
    assert_eq!(p["accepted"], p["published"]);
    assert!(s["medians"][0]["latency"]["p99"].as_f64().unwrap() > 0.0);
    // The workers ran from their own source addresses.
    let placement = runs[0]["placement"].to_string();
    assert!(
        placement.contains("127.0.0.2") && placement.contains("127.0.0.3"),
        "{placement}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("p99.99"), "{stdout}");
}

#[test]
fn an_injected_gap_is_counted() {
    // 400 ticks/s over 4 symbols: seq 200 of the first symbol falls 1.0 s after the
    // start, inside the recorded window (0.5 s to 2.0 s).
    let (out, s, _dir) = bench(&[
        "latency",
        "--spawn",
        "--shape",
        "6x2/4",
        "--rate",
        "400",
        "--skip-seq",
        "100",
    ]);
    ok(&out);
    let s = s.unwrap();
    let r = runs_of(&s, "tickstream-publish")[0];
    let c = &r["counts"];
    // Symbol 0 has 3 subscribers: each sees the one missing seq, announced or not.
    let events = c["holes"].as_u64().unwrap() + c["gaps"].as_u64().unwrap();
    let missing = c["hole_ticks"].as_u64().unwrap() + c["gap_ticks"].as_u64().unwrap();
    assert_eq!(events, 3, "{c}");
    assert_eq!(missing, 3, "{c}");
    // Everything that was published still arrived.
    assert_eq!(c["ticks"], r["expected"]);
    assert_eq!(r["complete"], false);
}

#[test]
fn latency_through_redis_counts_add_up() {
    let (out, s, dir) = bench(&[
        "latency", "--spawn", "--source", "redis", "--shape", "4x2/4", "--rate", "400",
    ]);
    ok(&out);
    let s = s.unwrap();
    let r = runs_of(&s, "tickstream-redis")[0];
    assert_complete(r, 2);
    assert!(r["redis"]["pids"].as_array().unwrap().len() == 1);
    exists(dir.path(), "tickstream-redis-run1.hgrm");
}

#[test]
fn latency_from_the_nodes_own_feed() {
    let (out, s, _dir) = bench(&[
        "latency",
        "--spawn",
        "--source",
        "synthetic",
        "--shape",
        "4x2/4",
        "--rate",
        "400",
    ]);
    ok(&out);
    let s = s.unwrap();
    let r = runs_of(&s, "tickstream-synthetic")[0];
    let c = &r["counts"];
    // No publisher of ours: no exact expectation, but ticks in order over the flat universe.
    assert!(r["expected"].is_null());
    assert!(c["ticks"].as_u64().unwrap() > 100, "{c}");
    assert_eq!(c["holes"], 0);
    assert_eq!(c["duplicates"], 0);
}

#[test]
fn fanout_steps_and_stops() {
    // A bound no busy test machine misses: this checks the stepping, not the latency.
    let (out, s, dir) = bench(&[
        "fanout",
        "--spawn",
        "--shape",
        "4x2/4",
        "--rates",
        "100,300",
        "--p99-bound",
        "5s",
    ]);
    ok(&out);
    let s = s.unwrap();
    exists(dir.path(), "fanout.svg");
    let steps = s["extra"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{steps:?}");
    for st in steps {
        assert_eq!(st["passed"], true, "{st}");
    }
    for r in s["runs"].as_array().unwrap() {
        assert_complete(r, 2);
    }
    assert!(
        s["extra"]["best_msgs_per_s"]["tickstream-publish"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // Stepping by connections instead.
    let (out, s, _dir) = bench(&[
        "fanout",
        "--spawn",
        "--rate",
        "200",
        "--shapes",
        "2x1/2,4x1/2",
        "--p99-bound",
        "10s",
    ]);
    ok(&out);
    let steps = s.unwrap()["extra"]["steps"].as_array().unwrap().len();
    assert_eq!(steps, 2);
}

#[test]
fn connections_reports_memory_per_connection() {
    let (out, s, dir) = bench(&[
        "connections",
        "--spawn",
        "--shape",
        "40x1/4",
        "--rate",
        "40",
        "--open-rate",
        "200",
        "--heartbeat",
        "1s",
        "--against",
        "tickstream-noheartbeat",
    ]);
    ok(&out);
    let s = s.unwrap();
    exists(dir.path(), "p999-by-second.svg");
    let held = &s["extra"]["held"][0];
    assert!(held["setup_conns_per_s"].as_f64().unwrap() > 0.0, "{held}");
    assert!(held["rss_held_kb"].as_u64().unwrap() > 0, "{held}");
    for target in ["tickstream-publish", "tickstream-noheartbeat"] {
        let runs = runs_of(&s, target);
        assert_eq!(runs.len(), 1, "{target}");
        assert_eq!(runs[0]["counts"]["opened"], 40);
        assert_complete(runs[0], 10);
        // The steady seconds are a subset of the window's, and their latency is the
        // window's when every second was kept.
        let r = runs[0];
        let steady = &r["steady"];
        let of = steady["of"].as_u64().unwrap();
        let kept = steady["seconds"].as_u64().unwrap();
        assert_eq!(
            of as usize,
            r["seconds"].as_array().unwrap().len(),
            "{steady}"
        );
        assert!(kept <= of, "{steady}");
        let (n_steady, n_all) = (
            steady["latency"]["count"].as_u64().unwrap(),
            r["latency"]["count"].as_u64().unwrap(),
        );
        assert!(n_steady <= n_all, "{steady}");
        if kept == of {
            assert_eq!(n_steady, n_all, "{steady}");
        }
    }
    // The twin without heartbeats in the window gives what the rounds cost.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("heartbeat rounds (every 1s) move p99.9 by"),
        "{stdout}"
    );
}

#[test]
fn slow_consumers_are_told_apart_from_healthy_ones() {
    let (out, s, dir) = bench(&[
        "slow-consumers",
        "--spawn",
        "--shape",
        "10x5/10",
        "--rate",
        "1000",
        "--slow-share",
        "0.2",
        "--queue",
        "256",
        "--duration",
        "2s",
        "--send-buffer",
        "8192",
    ]);
    ok(&out);
    let s = s.unwrap();
    exists(dir.path(), "rss.svg");
    let r = &s["runs"][0];
    // 2 of 10 connections stall; the other 8 receive everything.
    let expected = r["expected"].as_u64().unwrap();
    let published = r["published_in_window"].as_u64().unwrap();
    assert_eq!(expected, published * 8 * 5 / 10);
    assert_eq!(
        r["counts"]["ticks"].as_u64().unwrap(),
        expected,
        "{}",
        r["counts"]
    );
    assert_eq!(r["counts"]["gaps"], 0);
    assert!(s["extra"]["stalled"].as_array().unwrap().len() == 1);
    // The stalled ones got less, announced as conflation, or were disconnected.
    let o = &r["counts_other"];
    let got = o["ticks"].as_u64().unwrap();
    let closed = o["closes"].as_object().is_some_and(|c| !c.is_empty());
    assert!(got < published * 2 * 5 / 10 || closed, "{o}");
    assert!(o["conflated"].as_u64().unwrap() > 0 || closed, "{o}");
    // Whatever they missed was announced: no silent hole.
    assert_eq!(o["holes"], 0, "{o}");
}

#[test]
fn cross_node_compares_two_nodes_with_one() {
    let (out, s, _dir) = bench(&["cross-node", "--spawn", "--shape", "4x2/4", "--rate", "400"]);
    ok(&out);
    let s = s.unwrap();
    assert_complete(runs_of(&s, "single-node")[0], 2);
    let cross = runs_of(&s, "cross-node")[0];
    assert_complete(cross, 2);
    assert_eq!(cross["server"]["pids"].as_array().unwrap().len(), 2);
    assert_eq!(s["ratios"][0]["target"], "cross-node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("added by the hop through Redis"),
        "{stdout}"
    );
}

#[test]
fn encoding_runs_the_same_load_in_json_and_binary() {
    let (out, s, _dir) = bench(&["encoding", "--spawn", "--shape", "4x2/4", "--rate", "400"]);
    ok(&out);
    let s = s.unwrap();
    let json = runs_of(&s, "json");
    let binary = runs_of(&s, "binary");
    assert_eq!((json.len(), binary.len()), (1, 1), "{s}");
    // Every tick reached every subscriber, in order, in either encoding.
    assert_complete(json[0], 2);
    assert_complete(binary[0], 2);
    assert_eq!(json[0]["counts"]["binary_frames"], 0);
    let c = &binary[0]["counts"];
    assert!(c["binary_frames"].as_u64().unwrap() > 0, "{c}");
    // Binary frames are the data frames of the window (text frames only for replies).
    assert!(c["binary_frames"].as_u64().unwrap() <= c["frames"].as_u64().unwrap());
    assert!(c["binary_bytes"].as_u64().unwrap() <= c["bytes"].as_u64().unwrap());
    let per_run = s["extra"]["per_run"].as_array().unwrap();
    assert_eq!(per_run.len(), 2);
    for r in per_run {
        assert!(r["bytes_per_msg"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["p50_us"].as_f64().unwrap() > 0.0, "{r}");
    }
    let m = &s["extra"]["medians"];
    assert!(m["json"]["bytes_per_msg"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["binary"]["bytes_per_msg"].as_f64().unwrap() > 0.0, "{m}");
    // A record (86 bytes and the names) is smaller than the JSON object of a tick.
    assert!(
        m["binary"]["bytes_per_msg"].as_f64().unwrap()
            < m["json"]["bytes_per_msg"].as_f64().unwrap(),
        "{m}"
    );
    assert!(s["extra"]["notes"].as_array().unwrap().is_empty(), "{s}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("binary ÷ json (medians)"), "{stdout}");
}

#[test]
fn soak_samples_and_judges_growth() {
    let (out, s, dir) = bench(&[
        "soak",
        "--spawn",
        "--shape",
        "20x2/10",
        "--rate",
        "200",
        "--duration",
        "4s",
        "--warmup",
        "1s",
        "--life-min",
        "500ms",
        "--life-max",
        "1500ms",
        "--resub",
        "700ms",
    ]);
    ok(&out);
    let s = s.unwrap();
    exists(dir.path(), "soak-rss-run1.svg");
    exists(dir.path(), "soak-fds-run1.svg");
    exists(dir.path(), "soak-tasks-run1.svg");
    let v = s["extra"]["verdicts"].as_array().unwrap();
    // Memory, descriptors, threads and tasks of the one node.
    assert_eq!(v.len(), 4, "{v:?}");
    assert!(v
        .iter()
        .any(|v| v["what"] == "tasks" && v["first"].as_f64().unwrap() > 0.0));
    assert_eq!(s["extra"]["failed"], false);
    let r = &s["runs"][0];
    // Connections closed and opened again, more than there are connections.
    assert!(
        r["counts"]["opened"].as_u64().unwrap() + r["counts_other"]["opened"].as_u64().unwrap()
            > 20,
        "{}",
        r["counts"]
    );
    assert!(r["counts"]["ticks"].as_u64().unwrap() > 0);
    // Reconnected and resubscribed connections start their sequences afresh: no hole.
    assert_eq!(r["counts"]["holes"], 0, "{}", r["counts"]);
}

/// Two nodes behind Redis; Redis restarted, then node 1 (it drains and asks its clients
/// to reconnect): the connections follow to the other node resuming, every loss is a
/// `gap`, and each node is judged over its own life.
#[test]
fn soak_restarts_redis_and_a_node_and_every_loss_is_announced() {
    let (out, s, dir) = bench(&[
        "soak",
        "--spawn",
        "--source",
        "redis",
        "--shape",
        "20x2/10",
        "--rate",
        "200",
        "--duration",
        "9s",
        "--warmup",
        "1s",
        "--life-min",
        "1s",
        "--life-max",
        "3s",
        "--resub",
        "700ms",
        "--restart-redis-at",
        "2s",
        "--restart-node-at",
        "5s",
        "--down-for",
        "300ms",
        "--node-arg=--reconnect-notice=500ms",
    ]);
    ok(&out);
    let s = s.unwrap();
    let e = &s["extra"];
    let restarted: Vec<&str> = e["restarts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["process"].as_str().unwrap())
        .collect();
    assert_eq!(restarted, ["redis-server", "tickstream-1"], "{e}");
    for r in e["restarts"].as_array().unwrap() {
        assert_ne!(r["pids"][0], r["pids"][1], "{r}");
        assert!(r["serving_s"].as_f64() >= r["exited_s"].as_f64(), "{r}");
    }
    let nodes = e["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{e}");
    assert_eq!(nodes[0]["restarted"], false);
    assert_eq!(nodes[1]["restarted"], true);
    assert!(nodes[0]["tasks"]["first"].as_f64().unwrap() > 0.0, "{e}");
    let l = &e["losses"][0];
    assert_eq!(l["holes"], 0, "a loss went unannounced: {l}");
    assert_eq!(l["duplicates"], 0, "{l}");
    // Node 1's clients were told to move, and resumed elsewhere.
    assert!(l["reconnect_notices"].as_u64().unwrap() > 0, "{l}");
    assert!(l["resumed"].as_u64().unwrap() > 0, "{l}");
    // Redis away: the nodes said their symbols were stale, then live, and what they
    // missed came as upstream gaps.
    assert!(l["status"]["stale"].as_u64().unwrap_or(0) > 0, "{l}");
    assert!(l["status"]["live"].as_u64().unwrap_or(0) > 0, "{l}");
    assert!(l["gap_ticks"]["upstream"].as_u64().unwrap_or(0) > 0, "{l}");
    assert_eq!(e["failed"], false, "{e}");
    for f in ["rss", "fds", "tasks"] {
        exists(dir.path(), &format!("soak-{f}-run1.svg"));
    }
    let svg = std::fs::read_to_string(dir.path().join("soak-tasks-run1.svg")).unwrap();
    assert!(
        svg.contains("tickstream-1 restarted"),
        "the restart is marked"
    );
}

/// Restarts need what they restart: Redis behind the nodes, and a window to fit in.
#[test]
fn soak_refuses_restarts_it_cannot_do() {
    for (args, says) in [
        (vec!["--restart-node-at", "1s"], "needs --source redis"),
        (
            vec!["--source", "redis", "--restart-redis-at", "9s"],
            "inside the recorded window",
        ),
        (
            vec!["--source", "redis", "--restart-redis-at", "soon"],
            "a duration (e.g. 10m) or `off`",
        ),
    ] {
        let mut all = vec!["soak", "--spawn", "--duration", "2s"];
        all.extend(args);
        let (out, _, _) = bench(&all);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{says:?} not in {err}");
    }
}

#[test]
fn every_scenario_has_help_with_an_example() {
    for s in [
        "latency",
        "fanout",
        "connections",
        "slow-consumers",
        "cross-node",
        "encoding",
        "soak",
        "dashboard",
        "patterns",
        "storm",
    ] {
        let out = Command::new(BENCH).args([s, "--help"]).output().unwrap();
        ok(&out);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Example"), "{s}: {text}");
        assert!(
            text.contains("--spawn") && text.contains("--against"),
            "{s}: {text}"
        );
    }
    let out = Command::new(BENCH)
        .args(["latency", "--shape", "10x20/10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot exceed N"));
}

#[test]
fn candles_counts_what_it_measures() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BENCH)
        .args([
            "candles",
            "--symbols",
            "20",
            "--rate",
            "2000",
            "--fanout",
            "3",
        ])
        .args([
            "--duration",
            "1500ms",
            "--pace",
            "100ms",
            "--samples",
            "20",
            "--runs",
            "1",
        ])
        .arg("--out")
        .arg(dir.path())
        .output()
        .expect("the bench runs");
    ok(&out);
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    for pass in ["none", "subscribed"] {
        let p = &s[pass];
        let ticks = p["ticks"].as_u64().unwrap();
        assert!(ticks > 1000, "{pass}: {p}");
        assert_eq!(
            p["tick_msgs"].as_u64(),
            Some(ticks * 3),
            "{pass}: every tick queued 3 times"
        );
        assert!(p["cpu_ns_per_tick"].as_f64().unwrap() > 0.0, "{pass}: {p}");
    }
    assert_eq!(s["none"]["candle_msgs"], 0);
    // 20 symbols × (1s closes + forming updates every 100 ms) over 1.5 s.
    let candle = s["subscribed"]["candle_msgs"].as_u64().unwrap();
    assert!(candle >= 20 * 2 * 5, "{candle} candle messages");
    for b in ["backfill_memory_us", "backfill_redis_us"] {
        assert_eq!(s[b]["samples"], 20, "{b}: {}", s[b]);
        assert!(s[b]["p99"].as_u64().unwrap() >= s[b]["p50"].as_u64().unwrap());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("subscribed ÷ none"), "{text}");
}

fn peers_present() -> bool {
    let floor = Path::new(BENCH).with_file_name("tickstream-floor");
    let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/peers/node-ws/server.js");
    floor.exists() && node.exists()
}

#[test]
fn a_missing_reference_is_a_clear_error() {
    let floor = Path::new(BENCH).with_file_name("tickstream-floor");
    if floor.exists() {
        eprintln!("tickstream-floor is built: nothing missing to check");
        return;
    }
    let (out, _s, _dir) = bench(&[
        "latency",
        "--spawn",
        "--shape",
        "2x1/2",
        "--rate",
        "100",
        "--against",
        "floor",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--against floor") && err.contains("tickstream-floor"),
        "{err}"
    );
}

#[test]
fn references_measured_in_the_same_run() {
    if !peers_present() {
        eprintln!(
            "skipped: the references are not here (bench/peers/node-ws/server.js and a built \
             tickstream-floor); this test runs once they are"
        );
        return;
    }
    let (out, s, _dir) = bench(&[
        "latency",
        "--spawn",
        "--shape",
        "4x2/4",
        "--rate",
        "400",
        "--against",
        "floor,node",
    ]);
    ok(&out);
    let s = s.unwrap();
    assert_complete(runs_of(&s, "floor")[0], 2);
    assert_complete(runs_of(&s, "node-ws")[0], 2);
    assert_complete(runs_of(&s, "tickstream-redis")[0], 2);
    let ratios = s["ratios"].as_array().unwrap();
    assert_eq!(ratios.len(), 2, "{ratios:?}");
}

#[test]
fn the_results_page_is_what_the_committed_summaries_give() {
    let out = Command::new(BENCH)
        .args(["results", "--check"])
        .output()
        .unwrap();
    ok(&out);
}

fn results(args: &[&str]) -> Output {
    Command::new(BENCH)
        .arg("results")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_run_promoted_to_its_row_fills_the_results_table() {
    let (ran, s, run) = bench(&["latency", "--spawn", "--shape", "6x2/4", "--rate", "400"]);
    ok(&ran);
    let s = s.unwrap();
    // What the row needs is in the summary: the command to run again, when, the plot.
    let command = s["command_line"].as_str().unwrap();
    assert!(
        command.starts_with("tickstream-bench latency --spawn --shape 6x2/4 --rate 400"),
        "{command}"
    );
    assert!(!command.contains("--out"), "{command}");
    let date = &s["started_utc"].as_str().unwrap()[..10];
    assert_eq!(s["plot"], "latency.svg");

    // A bench directory of its own, with the history the unmeasured rows point into.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::create_dir_all(dir.path().join("results")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/HISTORY.md"),
        dir.path().join("results/HISTORY.md"),
    )
    .unwrap();
    let r = run.path().display().to_string();
    // Three rows take a latency run, and this one's command is none of theirs.
    let out = results(&["--dir", &d, "--take", &r]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--row"));
    // A row of another scenario refuses it, and nothing is copied.
    let out = results(&["--dir", &d, "--take", &r, "--row", "fanout-redis"]);
    assert!(!out.status.success());
    assert!(!dir
        .path()
        .join("results/current/fanout-redis.json")
        .exists());

    ok(&results(&[
        "--dir",
        &d,
        "--take",
        &r,
        "--row",
        "latency-publish",
    ]));
    exists(dir.path(), "results/current/latency-publish.json");
    exists(dir.path(), "results/current/latency-publish.svg");
    let page = std::fs::read_to_string(dir.path().join("RESULTS.md")).unwrap();
    let row = page
        .lines()
        .find(|l| l.starts_with("| `latency-publish` |"))
        .unwrap();
    let m = &s["medians"][0];
    assert_eq!(m["target"], "tickstream-publish");
    // One run: its medians are its own figures, as the bench printed them.
    let stdout = String::from_utf8_lossy(&ran.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("tickstream-publish run 1:"))
        .unwrap();
    let after = |k: &str| line.split(k).nth(1).unwrap().split(' ').next().unwrap();
    let figure = format!(
        "p50 {} · p99 {} ms · {:.2} µs/msg",
        after(" p50 "),
        after(" p99 "),
        m["cpu_us_per_msg"].as_f64().unwrap()
    );
    let valid = format!("| {}/{} |", m["valid_runs"], m["all_runs"]);
    for cell in [
        figure.as_str(),
        valid.as_str(),
        date,
        &format!("`{command}`"),
        "[latency-publish.svg](results/current/latency-publish.svg)",
    ] {
        assert!(row.contains(cell), "{cell:?} not in {row}");
    }
    // No floor in this run: no reference, no ratio.
    assert!(row.contains("| — | — |"), "{row}");
    let other = page
        .lines()
        .find(|l| l.starts_with("| `latency-redis` |"))
        .unwrap();
    assert!(
        other.contains("not measured since 2026-12-02: see [HISTORY](results/HISTORY.md#targets-1-and-3-through-redis)"),
        "{other}"
    );
    assert!(page.lines().count() <= 100, "{page}");

    // The page is what the summaries give, until someone edits it.
    ok(&results(&["--dir", &d, "--check"]));
    std::fs::write(
        dir.path().join("RESULTS.md"),
        page.replace(&figure, "p50 0.100 · p99 0.200 ms · 1.00 µs/msg"),
    )
    .unwrap();
    let out = results(&["--dir", &d, "--check"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not what the summaries"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A summary under a name that is no row is refused, not left out.
    std::fs::copy(
        dir.path().join("results/current/latency-publish.json"),
        dir.path().join("results/current/latency-extra.json"),
    )
    .unwrap();
    let out = results(&["--dir", &d]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such row"));
}

#[test]
fn dashboard_paces_and_accounts_for_every_folded_tick() {
    // 8 symbols at 800 ticks/s: 100 a second each, folded ten to one at 100 ms.
    let (out, s, dir) = bench(&[
        "dashboard",
        "--spawn",
        "--shape",
        "6x4/8",
        "--rate",
        "800",
        "--throttle-ms",
        "100",
    ]);
    ok(&out);
    let s = s.unwrap();
    exists(dir.path(), "paced-run1.hgrm");
    let paced = runs_of(&s, "paced")[0];
    let c = &paced["counts"];
    for k in ["holes", "gaps", "duplicates", "errors"] {
        assert_eq!(c[k], 0, "{k}: {c}");
    }
    let (ticks, folded) = (c["ticks"].as_u64().unwrap(), c["folded"].as_u64().unwrap());
    assert_eq!(c["paced"].as_u64().unwrap(), ticks, "every tick paced: {c}");
    assert!(folded > ticks * 3, "most ticks folded: {c}");
    assert_eq!(
        paced["complete"],
        Value::Null,
        "a paced run is not complete by count"
    );
    let per_run = s["extra"]["per_run"].as_array().unwrap();
    let p = per_run.iter().find(|r| r["target"] == "paced").unwrap();
    // One frame per connection per 100 ms boundary at most (the window may hold one more).
    let frames = p["frames_per_conn_per_s"].as_f64().unwrap();
    assert!(frames > 0.0 && frames <= 11.0, "{frames} frames/conn/s");
    let accounted = p["accounted"].as_f64().unwrap();
    assert!((0.8..=1.2).contains(&accounted), "{accounted}");
    // The same load unpaced is carried in full at this scale.
    let unpaced = runs_of(&s, "unpaced")[0];
    assert_complete(unpaced, 3);
    assert_eq!(unpaced["counts"]["paced"], 0);
}

#[test]
fn a_pattern_subscription_receives_what_naming_every_symbol_does() {
    let (out, s, _dir) = bench(&["patterns", "--spawn", "--shape", "3x8/8", "--rate", "400"]);
    ok(&out);
    let s = s.unwrap();
    for target in ["pattern", "named"] {
        let r = runs_of(&s, target);
        assert_eq!(r.len(), 1, "{target}");
        assert_complete(r[0], 3);
    }
    assert!(
        s["ratios"].to_string().contains("pattern"),
        "{}",
        s["ratios"]
    );
}

/// The checks every book run's clients made: each update in order after its book,
/// every checksum of the checking connections matching.
fn assert_books_checked(r: &Value, subscriptions: u64) {
    let c = &r["counts"];
    assert!(
        c["snapshots"].as_u64().unwrap() >= subscriptions,
        "every subscription got its book first: {c}"
    );
    assert!(c["books_checked"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(c["checksum_mismatches"], 0, "{c}");
    assert_eq!(c["errors"], 0, "{c}");
    assert!(r["server"]["cpu_us_per_msg"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["bytes_per_msg"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn book_runs_books_against_ticks_and_every_update_arrives_in_order() {
    let (out, s, dir) = bench(&[
        "book",
        "--spawn",
        "--shape",
        "6x2/4",
        "--symbol-rate",
        "100",
        "--levels",
        "20",
        "--check-books",
        "2",
        "--memory-symbols",
        "2",
    ]);
    ok(&out);
    let s = s.unwrap();
    assert_eq!(s["scenario"], "book");
    exists(dir.path(), "latency.svg");
    exists(dir.path(), "book-json-run1.hgrm");
    // 6 connections × 2 of 4 symbols: every update and every tick reaches 3 of them.
    for label in ["book-json", "book-binary", "ticks-json", "ticks-binary"] {
        let runs = runs_of(&s, label);
        assert_eq!(runs.len(), 1, "{label}: {s}");
        assert_complete(runs[0], 3);
    }
    let json = runs_of(&s, "book-json")[0];
    let binary = runs_of(&s, "book-binary")[0];
    assert_books_checked(json, 12);
    assert_books_checked(binary, 12);
    assert_eq!(json["counts"]["binary_frames"], 0);
    assert!(binary["counts"]["binary_frames"].as_u64().unwrap() > 0);
    assert!(
        binary["bytes_per_msg"].as_f64().unwrap() < json["bytes_per_msg"].as_f64().unwrap(),
        "{binary} {json}"
    );
    let x = &s["extra"];
    for enc in ["json", "binary"] {
        assert!(x["cpu_ratio"][enc].as_f64().unwrap() > 0.0, "{x}");
    }
    let lost = &x["lost"];
    for k in [
        "holes",
        "gaps",
        "duplicates",
        "checksum_mismatches",
        "incomplete_runs",
    ] {
        assert_eq!(lost[k], 0, "{k}: {lost}");
    }
    let m = &x["memory"];
    assert_eq!(
        (m["levels"].as_u64(), m["history"].as_u64()),
        (Some(50), Some(1024))
    );
    assert!(
        m["counted_bytes_per_symbol"].as_u64().unwrap() > 50 * 2 * 16,
        "{m}"
    );
    assert!(m["rss_bytes_per_symbol"].as_f64().is_some(), "{m}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CPU per delivered update"), "{stdout}");
}

#[test]
fn book_through_redis_counts_add_up() {
    let (out, s, _dir) = bench(&[
        "book",
        "--spawn",
        "--source",
        "redis",
        "--shape",
        "4x2/4",
        "--symbol-rate",
        "100",
        "--encodings",
        "json",
        "--memory-symbols",
        "0",
    ]);
    ok(&out);
    let s = s.unwrap();
    let book = runs_of(&s, "book-json");
    assert_eq!(book.len(), 1, "{s}");
    assert_complete(book[0], 2);
    assert_books_checked(book[0], 8);
    assert!(book[0]["redis"]["pids"].as_array().unwrap().len() == 1);
    assert_complete(runs_of(&s, "ticks-json")[0], 2);
    assert!(runs_of(&s, "book-binary").is_empty());
    assert!(s["extra"]["memory"].is_null());
}

#[test]
fn book_refuses_what_it_cannot_measure_before_starting_anything() {
    for (args, why) in [
        (&["--depth", "20"][..], "--depth 20 is not offered"),
        (
            &["--source", "synthetic"][..],
            "synthetic feed makes a tick",
        ),
        (&["--levels", "5"][..], "--levels 5 is out of range"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BENCH)
            .arg("book")
            .args(args)
            .arg("--out")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
        assert!(!dir.path().join("summary.json").exists());
    }
}

/// `roll` at a tiny scale: `scripts/cluster` in the output directory, 20 library clients
/// through its nginx, every node restarted in turn; nothing lost or repeated, every
/// client of a rolled node moved, the files written. The verdict's latency bound is not
/// asserted (a debug build on a busy machine).
#[test]
fn roll_restarts_every_node_and_the_clients_lose_nothing() {
    let _ = env!("CARGO_BIN_EXE_tickstream");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BENCH)
        .args([
            "roll",
            "--connections",
            "20",
            "--symbols",
            "10",
            "--per-connection",
            "2",
            "--rate",
            "200",
            "--open-rate",
            "0",
            "--warmup",
            "500ms",
            "--steady",
            "2s",
            "--after",
            "1s",
            "--max-client-lag",
            "2s",
            "--pause",
            "1",
            "--out",
        ])
        .arg(dir.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the bench runs");
    let text = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("summary.json"))
            .unwrap_or_else(|e| panic!("summary.json: {e}\n{text}")),
    )
    .unwrap();
    let c = &s["checks"];
    assert_eq!(c["holes"], 0, "{text}");
    assert_eq!(c["duplicates"], 0, "{text}");
    assert_eq!(s["steps"].as_array().unwrap().len(), 3, "{text}");
    assert_eq!(s["restarted"].as_array().unwrap().len(), 3, "{text}");
    assert_eq!(s["all_moved"], true, "{text}");
    let moved: u64 = s["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| st["moved"].as_u64().unwrap() + st["reconnected"].as_u64().unwrap())
        .sum();
    assert!(moved >= 20, "every client was on a rolled node: {text}");
    assert!(c["moves"].as_u64().unwrap() >= 1, "{text}");
    for w in ["steady", "roll"] {
        assert!(
            s["windows"][w]["count"].as_u64().unwrap() > 0,
            "{w}: {text}"
        );
    }
    let verdict = s["verdict"].as_str().unwrap();
    assert_eq!(out.status.success(), verdict == "pass", "{text}");
    if verdict == "fail" {
        for f in s["failures"].as_array().unwrap() {
            assert!(f.as_str().unwrap().starts_with("roll p99"), "{f}: {text}");
        }
    }
    for f in ["roll.svg", "steady.hgrm", "roll.hgrm"] {
        exists(dir.path(), f);
    }
    assert!(
        !dir.path().join("cluster/pids").exists(),
        "the cluster was stopped"
    );
}

#[test]
fn a_stall_storm_is_measured_against_the_bound_and_spares_the_reading_connections() {
    // 8 connections × all 100 symbols stop reading at 5,000 ticks/s against a 1 MiB
    // bound: their queues together pass it within the storm. The slack and the bound
    // after are wide open: this checks what is measured, not how well.
    let (out, s, dir) = bench(&[
        "storm",
        "--spawn",
        "--stalled",
        "8",
        "--stalled-symbols",
        "100",
        "--symbols",
        "100",
        "--healthy",
        "2",
        "--healthy-symbols",
        "5",
        "--rate",
        "5000",
        "--duration",
        "2s",
        "--idle",
        "500ms",
        "--read-out",
        "1s",
        "--after",
        "2s",
        "--bound-mib",
        "1",
        "--slack",
        "4096",
        "--recover",
        "100",
    ]);
    ok(&out);
    let s = s.unwrap();
    assert_eq!(s["scenario"], "storm");
    exists(dir.path(), s["plot"].as_str().unwrap());
    let e = &s["extra"];
    assert_eq!(e["passed"], true);
    let r = &e["storms"][0];
    // The node was given the bound, and its policy acted on the stalled connections.
    assert_eq!(
        r["bound"]["bound"].as_u64().unwrap(),
        1 << 20,
        "{}",
        r["bound"]
    );
    let acted = r["bound"]["conflated"].as_u64().unwrap() + r["bound"]["closed"].as_u64().unwrap();
    assert!(acted > 0, "{}", r["bound"]);
    assert!(r["buffered_peak"].as_u64().unwrap() > 0);
    // Memory sampled before, through and after the storm.
    // The node may give memory back during the storm (the peak can sit below before).
    let (before, peak) = (
        r["before_kb"].as_u64().unwrap(),
        r["peak_kb"].as_u64().unwrap(),
    );
    assert!(before > 0 && peak > 0, "{r}");
    assert_eq!(
        r["growth_bytes"].as_u64().unwrap(),
        peak.saturating_sub(before) * 1024,
        "{r}"
    );
    assert!(r["after_kb"].as_u64().unwrap() > 0);
    let points = r["points"].as_array().unwrap();
    assert!(points.iter().any(|p| p["t"].as_f64().unwrap() < 0.0));
    assert!(
        points.iter().any(|p| p["t"].as_f64().unwrap() >= 5.0),
        "sampled past +after"
    );
    // Every stalled connection's end is accounted for; the reading ones got every tick.
    let ends: u64 = r["stalled_closes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(ends, 8, "{}", r["stalled_closes"]);
    let h = &r["healthy"];
    assert!(h["expected"].as_u64().unwrap() > 0);
    assert_eq!(h["received"], h["expected"], "{h}");
    assert_eq!(h["untouched"], true, "{h}");
    assert_eq!(e["by_binary"][0]["runs"], 1);
}

#[test]
fn a_stall_storm_refuses_what_it_cannot_measure() {
    for (args, says) in [
        (
            &["--stalled-symbols", "600"][..],
            "--stalled-symbols must be between 1 and --symbols",
        ),
        (&["--binaries", "jemalloc"][..], "expected NAME=PATH"),
        (
            &["--binaries", "x=/nonexistent/tickstream"][..],
            "not found",
        ),
        (&["--source", "redis"][..], "--source publish"),
    ] {
        let out = Command::new(BENCH)
            .arg("storm")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
