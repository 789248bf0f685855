//! Real `redis-server`, Redis Cluster and nginx instances for the tests, on free loopback
//! ports in temporary directories. Each handle kills exactly the processes it started
//! when dropped (also when a test panics).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Value;

/// `c` with the short timeouts, backoff and lease the tests want: a lost connection
/// is noticed and repaired within a second.
pub fn fast(mut c: tickstream::bus::RedisConfig) -> tickstream::bus::RedisConfig {
    c.timeout = Duration::from_millis(500);
    c.ping_interval = Duration::from_millis(200);
    c.backoff_max = Duration::from_millis(300);
    c.lease = Duration::from_secs(3);
    c
}

/// A port nothing listens on now (and, with `bus`, whose cluster bus port +10000 too).
pub fn free_port(bus: bool) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let p = l.local_addr().unwrap().port();
        drop(l);
        if !bus {
            return p;
        }
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

fn wait_until(what: &str, wait: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + wait;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server without persistence on a free port.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. an ACL `--user`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            port: free_port(extra.contains(&"--cluster-enabled")),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let dir = self.dir.path();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test installs it)");
        self.child = Some(child);
        let url = self.url();
        wait_until("redis-server to answer", Duration::from_secs(10), || {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command and returns the reply.
    pub fn cmd(&self, args: &[&str]) -> Value {
        let mut c = redis::Client::open(self.url().as_str())
            .unwrap()
            .get_connection()
            .expect("connect to redis");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c).expect("redis command")
    }

    /// The strings of an array reply (e.g. `PUBSUB CHANNELS`).
    pub fn strings(&self, args: &[&str]) -> Vec<String> {
        match self.cmd(args) {
            Value::Array(v) | Value::Set(v) => v
                .into_iter()
                .filter_map(|x| match x {
                    Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    Value::SimpleString(s) => Some(s),
                    _ => None,
                })
                .collect(),
            other => panic!("not an array: {other:?}"),
        }
    }

    /// SIGKILLs the server (data is lost: no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `n` masters without replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        Self::start_with_replicas(n, 0, 3000)
    }

    /// `masters` masters with `replicas` replicas each; a node unreachable for
    /// `node_timeout_ms` is failed over.
    pub fn start_with_replicas(
        masters: usize,
        replicas: usize,
        node_timeout_ms: u64,
    ) -> RedisCluster {
        let timeout = node_timeout_ms.to_string();
        let n = masters * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &timeout,
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes };
        wait_until("the cluster to be ok", Duration::from_secs(20), || {
            c.nodes.iter().all(|s| match s.cmd(&["CLUSTER", "INFO"]) {
                Value::BulkString(b) => String::from_utf8_lossy(&b).contains("cluster_state:ok"),
                Value::VerbatimString { text, .. } => text.contains("cluster_state:ok"),
                _ => false,
            })
        });
        c
    }

    /// Waits until every node agrees that the cluster is ok and every replica is in
    /// sync with its master.
    pub fn wait_ok(&self) {
        wait_until("the cluster to be ok", Duration::from_secs(30), || {
            self.nodes.iter().all(|s| {
                let info = text(&s.cmd(&["CLUSTER", "INFO"]));
                let repl = text(&s.cmd(&["INFO", "replication"]));
                info.contains("cluster_state:ok")
                    && (!repl.contains("role:slave") || repl.contains("master_link_status:up"))
            })
        });
    }

    /// This node's cluster id.
    pub fn id(server: &RedisServer) -> String {
        text(&server.cmd(&["CLUSTER", "MYID"]))
    }

    /// The masters, by what `CLUSTER NODES` says now.
    pub fn masters(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|s| text(&s.cmd(&["INFO", "replication"])).contains("role:master"))
            .collect()
    }

    /// The replica of the master at `master`.
    pub fn replica_of(&self, master: &RedisServer) -> &RedisServer {
        let id = Self::id(master);
        self.nodes
            .iter()
            .find(|s| {
                s.port != master.port
                    && text(&s.cmd(&["CLUSTER", "NODES"]))
                        .lines()
                        .any(|l| l.contains("myself,slave") && l.contains(&id))
            })
            .expect("the master has a replica")
    }

    /// Moves the hash slot of `symbol` to `to`, the way an operator rebalances: the
    /// target imports, the source migrates, its keys are moved with MIGRATE, then every
    /// master is told the new owner.
    pub fn migrate(&self, symbol: &str, to: &RedisServer) {
        let slot = tickstream::bus::redis::shards::slot_of(symbol).to_string();
        let from = self.owner(symbol);
        let (from_id, to_id) = (Self::id(from), Self::id(to));
        to.cmd(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        from.cmd(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        loop {
            let keys = from.strings(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            if keys.is_empty() {
                break;
            }
            let port = to.port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            from.cmd(&args);
        }
        to.cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        from.cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        for m in self.masters() {
            if m.port != to.port && m.port != from.port {
                m.cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
            }
        }
    }

    /// The node on `port`.
    pub fn at(&self, port: u16) -> &RedisServer {
        self.nodes.iter().find(|s| s.port == port).expect("ours")
    }

    /// The node on `port`, to kill or restart.
    pub fn at_mut(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|s| s.port == port)
            .expect("ours")
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|s| s.url()).collect()
    }

    /// Every shard channel subscribed on any master, sorted.
    pub fn shard_channels(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .nodes
            .iter()
            .flat_map(|n| n.strings(&["PUBSUB", "SHARDCHANNELS", "*"]))
            .collect();
        all.sort();
        all
    }

    /// The server whose slots hold `symbol`.
    pub fn owner(&self, symbol: &str) -> &RedisServer {
        let slot = tickstream::bus::redis::shards::slot_of(symbol) as i64;
        // Asked of a node that is running (a test may have killed some).
        let alive = self
            .nodes
            .iter()
            .find(|s| s.pid().is_some())
            .expect("a live node");
        let v = alive.cmd(&["CLUSTER", "SLOTS"]);
        let Value::Array(ranges) = v else {
            panic!("CLUSTER SLOTS")
        };
        for r in ranges {
            let Value::Array(p) = r else { continue };
            let (Value::Int(a), Value::Int(b), Value::Array(m)) = (&p[0], &p[1], &p[2]) else {
                continue;
            };
            if (*a..=*b).contains(&slot) {
                let Value::Int(port) = m[1] else { continue };
                return self
                    .nodes
                    .iter()
                    .find(|s| s.port as i64 == port)
                    .expect("owner is one of ours");
            }
        }
        panic!("no owner for slot {slot}");
    }
}

/// The text of a bulk or verbatim string reply.
pub fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// A `tickstream` process (a node or a feed), killed when dropped.
pub struct Proc {
    pub child: Option<Child>,
    pub port: u16,
    pub name: String,
}

impl Proc {
    /// `tickstream serve --listen 127.0.0.1:<free> --node NAME` with `args`.
    pub fn serve(name: &str, args: &[&str], log: &Path) -> Proc {
        let port = free_port(false);
        let file = std::fs::File::create(log.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tickstream"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--node",
                name,
            ])
            .args(args)
            .env("TICKSTREAM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("tickstream runs");
        let p = Proc {
            child: Some(child),
            port,
            name: name.to_owned(),
        };
        wait_until(
            &format!("{name} to listen"),
            Duration::from_secs(20),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        p
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An nginx in front of `upstreams`, from the shipped template, as a non-daemon with its
/// own prefix, configuration, pid and logs in a temporary directory.
pub struct Nginx {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

impl Nginx {
    pub fn start(upstreams: &[u16]) -> Nginx {
        let port = free_port(false);
        let dir = tempfile::tempdir().unwrap();
        let template =
            std::fs::read_to_string(repo_path("scripts/nginx.conf.template")).expect("template");
        let servers: String = upstreams
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n"))
            .collect();
        let conf = template
            .replace("@PREFIX@", dir.path().to_str().unwrap())
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@UPSTREAMS@", &servers);
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let nginx = if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx".to_owned()
        } else {
            "nginx".to_owned()
        };
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx runs (scripts/test installs it)");
        let mut n = Nginx {
            port,
            dir,
            child: Some(child),
        };
        wait_until("nginx to listen", Duration::from_secs(10), || {
            if let Some(Ok(Some(status))) = n.child.as_mut().map(|c| c.try_wait()) {
                let log =
                    std::fs::read_to_string(n.dir.path().join("error.log")).unwrap_or_default();
                panic!("nginx exited with {status}: {log}");
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        n
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGKILL of the master would leave its workers behind: TERM stops them all.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
