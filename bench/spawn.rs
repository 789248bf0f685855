//! Starting what a run measures (tickstream nodes, redis-server, the references) on
//! chosen CPUs, waiting until each serves, stopping exactly those; and reading a
//! process's CPU time, memory, descriptors, threads and placement from /proc.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn cpuset(cpus: &[usize]) -> anyhow::Result<CpuSet> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).map_err(|e| anyhow!("CPU {c}: {e}"))?;
    }
    Ok(set)
}

/// Pins the calling thread (and so every thread and process it starts afterwards).
pub fn pin_self(cpus: &[usize]) -> anyhow::Result<()> {
    sched_setaffinity(Pid::from_raw(0), &cpuset(cpus)?)
        .map_err(|e| anyhow!("sched_setaffinity {cpus:?}: {e}"))
}

/// Spawns `cmd` on `cpus` (inherited from this thread, which is pinned for the moment
/// of the spawn and then put back), so the child's threads start there.
pub fn spawn_on(cmd: &mut Command, cpus: Option<&[usize]>) -> anyhow::Result<Child> {
    let Some(cpus) = cpus else {
        return Ok(cmd.spawn()?);
    };
    let before = sched_getaffinity(Pid::from_raw(0)).map_err(|e| anyhow!("{e}"))?;
    pin_self(cpus)?;
    let child = cmd.spawn();
    sched_setaffinity(Pid::from_raw(0), &before).map_err(|e| anyhow!("{e}"))?;
    Ok(child?)
}

/// One started process.
pub struct Proc {
    /// Its role, e.g. `tickstream`, `redis-server`.
    pub name: String,
    /// The child.
    pub child: Child,
    /// Its log file.
    pub log: PathBuf,
    /// Whether it is a server measured (its CPU counts as the server's).
    pub measured: bool,
    /// How to start it again ([`Procs::relaunch`]).
    again: Again,
    /// Stopped on purpose and not started again yet: not an exit to fail on.
    pub down: bool,
}

/// What starting a process again needs: its command and its CPUs.
struct Again {
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
    dir: Option<PathBuf>,
    cpus: Option<Vec<usize>>,
}

impl Again {
    fn of(cmd: &Command, cpus: Option<&[usize]>) -> Again {
        Again {
            program: cmd.get_program().to_owned(),
            args: cmd.get_args().map(|a| a.to_owned()).collect(),
            dir: cmd.get_current_dir().map(|d| d.to_owned()),
            cpus: cpus.map(|c| c.to_vec()),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        if let Some(d) = &self.dir {
            cmd.current_dir(d);
        }
        cmd
    }
}

/// Everything a run started; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Default)]
pub struct Procs {
    /// The processes, in start order.
    pub list: Vec<Proc>,
}

impl Procs {
    /// Starts `cmd` on `cpus`, its output to `log`.
    pub fn start(
        &mut self,
        name: &str,
        cmd: &mut Command,
        cpus: Option<&[usize]>,
        log: PathBuf,
        measured: bool,
    ) -> anyhow::Result<u32> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = spawn_on(cmd, cpus).with_context(|| {
            format!(
                "starting {} ({})",
                name,
                cmd.get_program().to_string_lossy()
            )
        })?;
        let pid = child.id();
        self.list.push(Proc {
            name: name.to_owned(),
            child,
            log,
            measured,
            again: Again::of(cmd, cpus),
            down: false,
        });
        Ok(pid)
    }

    fn named(&mut self, name: &str) -> anyhow::Result<&mut Proc> {
        self.list
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow!("no process named {name} was started"))
    }

    /// The pid of the process `name` while it runs (not while it is down).
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.list
            .iter()
            .find(|p| p.name == name && !p.down)
            .map(|p| p.child.id())
    }

    /// Sends SIGTERM to `name` and marks it down (its exit is then not a failure).
    pub fn take_down(&mut self, name: &str) -> anyhow::Result<()> {
        let p = self.named(name)?;
        p.down = true;
        nix::sys::signal::kill(
            Pid::from_raw(p.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .map_err(|e| anyhow!("SIGTERM to {name}: {e}"))
    }

    /// Whether the process `name`, taken down, has exited; SIGKILLs it once `kill` is
    /// true (it took too long) and then waits for it.
    pub fn gone(&mut self, name: &str, kill: bool) -> anyhow::Result<bool> {
        let p = self.named(name)?;
        if p.child.try_wait()?.is_some() {
            return Ok(true);
        }
        if kill {
            p.child.kill()?;
            p.child.wait()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Starts the process `name` again, with the same command and CPUs, its output
    /// appended to its log; returns its new pid.
    pub fn relaunch(&mut self, name: &str) -> anyhow::Result<u32> {
        let p = self.named(name)?;
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(&p.log)
            .with_context(|| format!("opening {}", p.log.display()))?;
        let mut cmd = p.again.command();
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        p.child = spawn_on(&mut cmd, p.again.cpus.as_deref())
            .with_context(|| format!("starting {name} again"))?;
        p.down = false;
        Ok(p.child.id())
    }

    /// Fails when one of the processes has exited, naming it and its log's end.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in self.list.iter_mut().filter(|p| !p.down) {
            if let Some(st) = p.child.try_wait()? {
                let tail = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: String = tail
                    .lines()
                    .rev()
                    .take(8)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                bail!(
                    "{} exited ({st}); the end of {}:\n{tail}",
                    p.name,
                    p.log.display()
                );
            }
        }
        Ok(())
    }

    /// Pids of the measured servers.
    pub fn measured_pids(&self) -> Vec<u32> {
        self.list
            .iter()
            .filter(|p| p.measured && !p.down)
            .map(|p| p.child.id())
            .collect()
    }

    /// Stops everything, last started first.
    pub fn stop(&mut self) {
        for p in self.list.iter_mut().rev() {
            let _ = nix::sys::signal::kill(
                Pid::from_raw(p.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in self.list.iter_mut().rev() {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.list.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `GET path` on 127.0.0.1:`port` answers 200.
pub fn wait_http(
    procs: &mut Procs,
    port: u16,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if !wait_answer(procs, port, req.as_bytes(), b"HTTP/1.1 200", timeout)? {
        bail!("nothing answered 200 on 127.0.0.1:{port}{path} within {timeout:?}");
    }
    Ok(())
}

/// Waits until redis on `port` answers PING.
pub fn wait_redis(procs: &mut Procs, port: u16, timeout: Duration) -> anyhow::Result<()> {
    if !wait_answer(procs, port, b"PING\r\n", b"+PONG", timeout)? {
        bail!("redis-server on port {port} did not answer within {timeout:?}");
    }
    Ok(())
}

/// Sends `request` on a new connection to 127.0.0.1:`port` every 50 ms until the reply
/// starts with `expect` (true) or `timeout` passes (false); fails as soon as one of
/// `procs` has exited.
fn wait_answer(
    procs: &mut Procs,
    port: u16,
    request: &[u8],
    expect: &[u8],
    timeout: Duration,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        procs.check_alive()?;
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            if s.write_all(request).is_ok() {
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf) {
                    if buf[..n].starts_with(expect) {
                        return Ok(true);
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A binary built next to this one (`target/<profile>/NAME`).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("no directory of {}", exe.display()))?;
    Ok(dir.join(name))
}

/// One sample of a process from /proc.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Sample {
    /// Seconds since the run's recording began (negative: warm-up).
    pub t: f64,
    /// CPU time used so far, s (user + system, all threads).
    pub cpu_s: f64,
    /// Resident memory, kB.
    pub rss_kb: u64,
    /// Open descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
    /// Tasks alive on its runtime (`tickstream_tasks` of its `/metrics`), where read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<u64>,
}

fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as f64)
        .unwrap_or(100.0)
}

/// CPU time (s) of `pid` from /proc/PID/stat (utime + stime).
pub fn cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3; utime 14 and stime 15 (1-based).
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / clk_tck())
}

fn status_field(pid: u32, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
}

/// Samples `pid` now.
pub fn sample(pid: u32, t: f64) -> Option<Sample> {
    sample_with(pid, t, true)
}

/// Samples `pid` now, counting its descriptors only when `count_fds` (else `fds` is
/// 0): listing /proc/PID/fd costs the bench's CPU about a microsecond per descriptor,
/// 100 ms a look at 100,000 connections.
pub fn sample_with(pid: u32, t: f64, count_fds: bool) -> Option<Sample> {
    let rss_kb = status_field(pid, "VmRSS:")?
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let threads = status_field(pid, "Threads:")?.parse().ok()?;
    let fds = match count_fds {
        true => std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0),
        false => 0,
    };
    Some(Sample {
        t,
        cpu_s: cpu_s(pid)?,
        rss_kb,
        fds,
        threads,
        tasks: None,
    })
}

/// `tickstream_tasks` of the node serving on 127.0.0.1:`port` (its `/metrics`), or
/// `None` when it does not answer within a second.
pub fn node_tasks(port: u16) -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let req =
        format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("tickstream_tasks "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Where `pid` may run, as the kernel lists it (`Cpus_allowed_list`).
pub fn cpus_allowed(pid: u32) -> String {
    status_field(pid, "Cpus_allowed_list:").unwrap_or_else(|| "?".into())
}

/// The kernel's TCP memory in use, kB (`/proc/net/sockstat`, pages × 4 KiB).
pub fn tcp_mem_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            let pages: u64 = it.next()?.parse().ok()?;
            return Some(pages * 4);
        }
    }
    None
}
