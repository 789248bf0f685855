//! The dashboard at `/` in a real browser: Debian's headless Chromium, driven by
//! `tests/browser/dashboard.js` (playwright-core), against the real `tickstream` binary.
//!
//! A feed publishes into a real `redis-server`; the page's node joins through it. The
//! page loads, a symbol is added through the box and ticks within a second; the node is
//! then killed and started again on the same port, and the page shows its countdown,
//! reconnects and resumes every symbol from the Redis history with no hole. Then Redis
//! restarts under the node, and the `gap` it announces shows on the rows it hit. Last,
//! with 200 symbols and ticks arriving faster than frames, the page renders at most once
//! per animation frame (both counted in the page). The pictures are kept in
//! `target/test-artifacts/dashboard.png` (and `dashboard-gap.png`).

#[path = "common/redis.rs"]
mod env;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use env::{free_port, repo_path, Proc, RedisServer};

const CHROMIUM: &str = "/usr/bin/chromium";

/// A child process killed with its whole process group when dropped (the browser the
/// driver starts included).
struct Group(Option<Child>);

impl Group {
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tickstream serve` on `port` (fixed, so that a restart takes the same one).
fn node(port: u16, name: &str, redis: &str, log: &Path) -> Group {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::create(log.join(format!("{name}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--node", name, "--redis", redis])
        .env("TICKSTREAM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(file)
        .process_group(0)
        .spawn()
        .expect("tickstream runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{name} does not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Group(Some(child))
}

/// Installs the driver's npm packages from the lock file when they are missing.
fn npm_ci(dir: &Path) {
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .expect("npm runs (scripts/test installs node and npm)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

struct Driver {
    proc: Group,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Driver {
    /// The next line the driver prints, or a failure naming `what` after `wait`.
    fn expect(&mut self, want: &str, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(want) => return l,
                Ok(_) => {}
                Err(_) => {
                    let status = self
                        .proc
                        .0
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    panic!("the browser driver did not say {want:?} within {wait:?} (exit: {status:?})");
                }
            }
        }
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("the driver reads its stdin");
    }
}

#[test]
fn the_dashboard_adds_a_symbol_and_resumes_after_a_node_restart_without_a_hole() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: scripts/test installs Debian's chromium"
    );
    let browser_dir = repo_path("tests/browser");
    npm_ci(&browser_dir);
    let artifacts: PathBuf = repo_path("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);

    let logs = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start();
    let url = redis.url();
    let _feed = Proc::serve(
        "feed",
        &["--redis", &url, "--feed", "synthetic", "--rate", "1000"],
        logs.path(),
    );
    let port = free_port(false);
    let mut server = node(port, "dash-a", &url, logs.path());

    use std::os::unix::process::CommandExt;
    let mut child = Command::new("node")
        .arg(browser_dir.join("dashboard.js"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .arg(&shot)
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("node runs (scripts/test installs it)");
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let errors = std::thread::spawn(move || {
        let mut all = String::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    let mut driver = Driver {
        proc: Group(Some(child)),
        stdin,
        lines,
    };

    let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        driver.expect("KILL", Duration::from_secs(60));
        server.kill();
        driver.say("KILLED");
        driver.expect("RESTART", Duration::from_secs(20));
        server = node(port, "dash-b", &url, logs.path());
        driver.say("RESTARTED");
        driver.expect("GAP", Duration::from_secs(60));
        redis.kill();
        std::thread::sleep(Duration::from_millis(500));
        redis.restart();
        driver.say("REDIS_RESTARTED");
        driver.expect("RESULT ", Duration::from_secs(60))
    }));
    let result = match step {
        Ok(line) => line,
        Err(e) => {
            // Ends the driver and its browser, so that its stderr reaches its end.
            driver.proc.kill();
            let err = errors.join().unwrap_or_default();
            panic!("{}\nthe driver said:\n{err}", panic_text(&e));
        }
    };
    let status = driver
        .proc
        .0
        .as_mut()
        .unwrap()
        .wait()
        .expect("the driver exits");
    let err = errors.join().unwrap_or_default();
    assert!(status.success(), "the browser driver failed:\n{err}");

    let r: serde_json::Value = serde_json::from_str(&result["RESULT ".len()..]).unwrap();
    eprintln!("dashboard: {r}");
    assert_eq!(r["node1"], "dash-a", "{r}");
    assert_eq!(
        r["node2"], "dash-b",
        "the page reconnected to the new node: {r}"
    );
    assert!(r["changedAfterMs"].as_u64().unwrap() <= 1000, "{r}");
    assert_eq!(r["after"]["holes"], 0, "{r}");
    assert_eq!(
        r["after"]["gaps"], 0,
        "resumed from history, nothing missing: {r}"
    );
    assert!(r["after"]["reconnects"].as_u64().unwrap() >= 1, "{r}");
    assert!(
        r["after"]["ticks"].as_u64().unwrap() > r["before"]["ticks"].as_u64().unwrap(),
        "{r}"
    );
    assert!(
        r["countdown"]
            .as_str()
            .unwrap()
            .starts_with("reconnecting in"),
        "{r}"
    );
    let c = &r["coalesce"];
    assert!(
        c["renders"].as_u64().unwrap() <= c["frames"].as_u64().unwrap() + 1,
        "at most one render per animation frame: {c}"
    );
    assert!(
        c["ticks"].as_u64().unwrap() > c["renders"].as_u64().unwrap(),
        "{c}"
    );
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "a screenshot in {}",
        shot.display()
    );
    drop(server);
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}
