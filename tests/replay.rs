//! `tickstream feed replay` and `serve --feed replay:FILE` against real nodes, and the
//! shipped sample session.

mod common;
mod feedkit;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use feedkit::*;
use tickstream::config::FeedSpec;
use tickstream::feed::Speed;

#[test]
fn the_sample_is_a_minute_over_fifty_symbols_under_5mb() {
    let path = sample();
    let bytes = std::fs::metadata(&path).unwrap().len();
    assert!(bytes < 5 * 1024 * 1024, "{bytes} bytes");
    let ticks = read_ticks(&path);
    let symbols: HashSet<_> = ticks.iter().map(|t| t.symbol.clone()).collect();
    assert_eq!(symbols.len(), 50);
    let span = ticks.last().unwrap().ts - ticks[0].ts;
    assert!(
        (50_000_000_000..=70_000_000_000).contains(&span),
        "{span} ns"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_sample_reproduces_its_sequence() {
    let file = read_ticks(&sample());
    let symbols: Vec<String> = file
        .iter()
        .map(|t| t.symbol.to_string())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut s = settings();
    s.queue = file.len() + 16;
    let run = start(s).await;
    let refs: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let mut sub = subscriber(run.addr, &refs).await;
    let cli = spawn_bin(
        vec![
            "feed".into(),
            "replay".into(),
            sample().display().to_string(),
            "--to".into(),
            publish_url(run.addr),
            "--speed".into(),
            "max".into(),
        ],
        LONG,
    );
    let got = collect_ticks(&mut sub, file.len(), Duration::from_secs(10)).await;
    let out = cli.await.unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("replayed {} ticks over 50 symbols", file.len())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{} accepted, 0 refused", file.len())),
        "{stdout}"
    );
    let want: Vec<_> = file.iter().map(key_of_tick).collect();
    let seen: Vec<_> = got.iter().map(key_of).collect();
    assert_eq!(seen, want);
    // Re-stamped at publish time, with the recorded time kept, under a new epoch.
    for (m, t) in got.iter().zip(&file) {
        assert_eq!(m["src_ts"].as_u64(), Some(t.ts));
        assert!(m["ts"].as_u64().unwrap() > t.ts);
        assert_ne!(m["epoch"].as_str(), Some(&*t.epoch));
    }
    quiet(&mut sub).await;
    assert_eq!(
        run.node.publish.accepted.load(Ordering::Relaxed),
        file.len() as u64
    );
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_feed_replay_plays_the_file_in_process() {
    let file = read_ticks(&sample());
    let mut s = settings();
    s.feed = FeedSpec::Replay(sample());
    s.replay_speed = Speed::Max;
    let run = start(s).await;
    let hub = run.node.hub.clone();
    eventually("the whole sample is played", || {
        hub.stats().ticks.load(Ordering::Relaxed) == file.len() as u64
    })
    .await;
    let mut last: HashMap<&str, &tickstream::tick::Tick> = HashMap::new();
    for t in &file {
        last.insert(&t.symbol, t);
    }
    for (symbol, t) in last {
        let got = hub.latest(symbol).expect("a latest value");
        assert_eq!(key_of_tick(&got.tick), key_of_tick(t), "{symbol}");
        assert_eq!(got.tick.src_ts, Some(t.ts));
    }
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_replay_loop_gives_each_pass_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recording(dir.path(), "loop.ndjson", &spaced("AAPL", 3, 30));
    let mut s = settings();
    s.feed = FeedSpec::Replay(path);
    s.replay_loop = true;
    let run = start(s).await;
    let mut sub = subscriber(run.addr, &["AAPL"]).await;
    let mut epochs: Vec<String> = Vec::new();
    let mut resets = 0;
    let mut last_seq = 0;
    while epochs.len() < 3 {
        let m = sub.next().await;
        match m["type"].as_str().unwrap() {
            "tick" | "snapshot" => {
                let e = m["epoch"].as_str().unwrap().to_owned();
                let seq = m["seq"].as_u64().unwrap();
                if epochs.last() != Some(&e) {
                    assert!(!epochs.contains(&e), "epoch {e} came back");
                    epochs.push(e);
                } else {
                    assert_eq!(seq, last_seq + 1, "{m}");
                }
                last_seq = seq;
            }
            "gap" => {
                assert_eq!(m["reason"], "reset", "{m}");
                resets += 1;
            }
            _ => panic!("unexpected {m}"),
        }
    }
    assert!(resets >= 1, "a new pass is announced with a reset gap");
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_and_symbol_filter_select_what_is_played() {
    let file = read_ticks(&sample());
    let first = file[0].ts;
    let want: Vec<_> = file
        .iter()
        .filter(|t| t.ts >= first + 30_000_000_000 && matches!(&*t.symbol, "AAPL" | "EUR/USD"))
        .map(key_of_tick)
        .collect();
    assert!(want.len() > 100, "the sample has ticks to select");
    let run = start(settings()).await;
    let mut sub = subscriber(run.addr, &["AAPL", "EUR/USD", "MSFT"]).await;
    let out = spawn_bin(
        [
            "feed",
            "replay",
            &sample().display().to_string(),
            "--to",
            &publish_url(run.addr),
            "--speed",
            "max",
            "--from",
            "30s",
            "--symbols",
            "AAPL,EUR/USD",
        ]
        .map(String::from)
        .to_vec(),
        LONG,
    );
    let got = collect_ticks(&mut sub, want.len(), Duration::from_secs(10)).await;
    let out = out.await.unwrap();
    assert!(out.status.success(), "{:?}", texts(&out));
    assert_eq!(got.iter().map(key_of).collect::<Vec<_>>(), want);
    quiet(&mut sub).await;
    run.shutdown().await;
}

/// Elapsed seconds as the replay's summary line reports them (its own clock).
fn elapsed_of(stdout: &str) -> f64 {
    let after = stdout.split(" in ").nth(1).expect("an elapsed time");
    after.split('s').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_divides_the_recorded_time_and_max_does_not_wait() {
    let dir = tempfile::tempdir().unwrap();
    // 3 s recorded: about 0.3 s at 10x.
    let path = write_recording(dir.path(), "spaced.ndjson", &spaced("MSFT", 31, 100));
    let run = start(settings()).await;
    let url = publish_url(run.addr);
    let file = path.display().to_string();
    let out = spawn_bin(
        ["feed", "replay", &file, "--to", &url, "--speed", "10"]
            .map(String::from)
            .to_vec(),
        LONG,
    )
    .await
    .unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("recorded span 3.00s"), "{stdout}");
    let secs = elapsed_of(&stdout);
    assert!((0.21..=0.39).contains(&secs), "10x of 3 s took {secs} s");

    let out = spawn_bin(
        ["feed", "replay", &file, "--to", &url, "--speed", "max"]
            .map(String::from)
            .to_vec(),
        LONG,
    )
    .await
    .unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let secs = elapsed_of(&stdout);
    assert!(secs < 0.2, "max speed over 3 s of ticks took {secs} s");
    // Both passes are accepted: each has its own epoch.
    assert_eq!(run.node.publish.accepted.load(Ordering::Relaxed), 62);
    run.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_fail_with_the_line_number_and_publish_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good: Vec<String> = spaced("AAPL", 3, 10)
        .iter()
        .map(|t| String::from_utf8(t.to_json(tickstream::tick::Kind::Tick)).unwrap())
        .collect();
    let cases = [
        (
            "truncated.ndjson",
            format!("{}\n{}\n{}", good[0], good[1], &good[2][..50]),
            ":3: truncated line",
        ),
        (
            "corrupt.ndjson",
            format!("{}\n{{\"type\":\"tick\",,}}\n{}\n", good[0], good[1]),
            ":2: not a JSON object",
        ),
        (
            "types.ndjson",
            format!(
                "{}\n{}\n{}\n",
                good[0],
                good[1],
                good[2].replace("\"seq\":3", "\"seq\":\"3\"")
            ),
            ":3: bad tick",
        ),
        ("empty.ndjson", String::new(), "no ticks to play"),
    ];
    let run = start(settings()).await;
    let url = publish_url(run.addr);
    for (name, body, needle) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let out = spawn_bin(
            [
                "feed",
                "replay",
                &path.display().to_string(),
                "--to",
                &url,
                "--speed",
                "max",
            ]
            .map(String::from)
            .to_vec(),
            SHORT,
        )
        .await
        .unwrap();
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {stdout}{stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    // The file is checked before anything is sent.
    assert_eq!(run.node.publish.frames.load(Ordering::Relaxed), 0);
    assert!(run.node.hub.latest("AAPL").is_none());
    // serve refuses to start on a bad file, with the same message.
    let mut s = settings();
    s.feed = FeedSpec::Replay(dir.path().join("corrupt.ndjson"));
    let e = tickstream::server::start(s).await.err().expect("refused");
    assert!(format!("{e:#}").contains(":2: not a JSON object"), "{e:#}");
    run.shutdown().await;
}

#[test]
fn usage_errors_exit_non_zero_and_help_has_an_example() {
    for args in [
        vec!["feed", "replay", "x.ndjson"],
        vec![
            "feed",
            "replay",
            "x.ndjson",
            "--to",
            "ws://127.0.0.1:1/v1/publish",
            "--speed",
            "fast",
        ],
        vec![
            "feed",
            "replay",
            "x.ndjson",
            "--redis",
            "redis://127.0.0.1:1",
            "--from",
            "5 parsecs",
        ],
        vec!["feed", "synth", "--rate", "100"],
        vec!["feed", "synth", "--out", "x.ndjson", "--rate", "-1"],
        vec!["feed", "synth", "--out", "x.ndjson", "--symbols", "NOPE1"],
    ] {
        let out = run_bin(&args, SHORT);
        let (_, stderr) = texts(&out);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            !stderr.is_empty() && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
    for cmd in ["replay", "synth"] {
        let out = run_bin(&["feed", cmd, "--help"], SHORT);
        let (stdout, _) = texts(&out);
        assert!(out.status.success());
        assert!(
            stdout.contains(&format!("tickstream feed {cmd} ")),
            "{stdout}"
        );
    }
    let out = run_bin(
        &[
            "feed",
            "replay",
            "x.ndjson",
            "--redis",
            "redis://127.0.0.1:1",
        ],
        SHORT,
    );
    let (_, stderr) = texts(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("x.ndjson"),
        "the file is checked first: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_runs_until_interrupted_then_summarizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recording(dir.path(), "three.ndjson", &spaced("AAPL", 3, 1));
    let run = start(settings()).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .args(["feed", "replay", path.to_str().unwrap(), "--loop", "--to"])
        .arg(publish_url(run.addr))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let node = run.node.clone();
    eventually("ten passes", || {
        node.publish.accepted.load(Ordering::Relaxed) >= 30
    })
    .await;
    let pid = child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + SHORT;
        while child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "still running after SIGINT"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let passes: u64 = stdout
        .split(" passes")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a pass count in {stdout}"));
    assert!(passes >= 10, "{stdout}");
    // Everything sent was accepted: each pass had its own epoch.
    let accepted = node.publish.accepted.load(Ordering::Relaxed);
    assert!(
        stdout.contains(&format!("; {accepted} accepted, 0 refused")),
        "{stdout} (node accepted {accepted})"
    );
    run.shutdown().await;
}
