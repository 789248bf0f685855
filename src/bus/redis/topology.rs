//! Where each symbol lives: one Redis server, or the master of its hash slot in a Redis
//! Cluster, with a command connection to each (`GET`, `XRANGE`, `CLUSTER SLOTS`; no
//! subscriptions ever ride on these, so no push can be read as a reply).
//!
//! Redirections are handled per slot, as Redis Cluster asks: `MOVED` points that slot at
//! its new master and the command is sent there; `ASK` (a slot being migrated, its key
//! already moved) sends `ASKING` and the command to the importing master, once, without
//! changing the map; `TRYAGAIN` and `CLUSTERDOWN` (a migration or a failover under way)
//! are retried after a short wait. One moved slot never affects the others. The whole
//! map is read again ([`Topology::refresh`]) when a subscription link learns that a slot
//! moved, or while a server is unreachable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::MultiplexedConnection;
use redis::{Pipeline, Value};

use super::shards::{self, slot_of};
use super::{RedisConfig, RedisMode};
use crate::tick::Symbol;

/// Number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// Attempts of one command across redirections.
const MAX_REDIRECTS: usize = 6;

/// Wait before retrying a command answered `TRYAGAIN` or `CLUSTERDOWN`.
const RETRY_WAIT: Duration = Duration::from_millis(50);

/// One Redis server: a plain server or a cluster master.
pub(crate) struct Server {
    /// `host:port`.
    pub addr: String,
    /// Its URL, with the seed's scheme and credentials.
    pub url: String,
    /// Commands only.
    pub conn: MultiplexedConnection,
}

/// The servers by address and, in a cluster, the master of each slot.
struct Map {
    servers: HashMap<String, Arc<Server>>,
    /// In a cluster: the master's address of each slot.
    slots: Vec<Arc<str>>,
}

/// The routing from symbol to server, and the command connections.
pub(crate) struct Topology {
    cfg: RedisConfig,
    map: RwLock<Map>,
}

impl Topology {
    /// Connects to the server, or reads a cluster's slots from the first seed that
    /// answers and connects to every master.
    pub async fn connect(cfg: &RedisConfig) -> redis::RedisResult<Topology> {
        let t = Topology {
            cfg: cfg.clone(),
            map: RwLock::new(Map {
                servers: HashMap::new(),
                slots: Vec::new(),
            }),
        };
        match &cfg.mode {
            RedisMode::Single(url) => {
                let server = t.open(url).await?;
                t.map
                    .write()
                    .servers
                    .insert(server.addr.clone(), Arc::new(server));
            }
            RedisMode::Cluster(seeds) => t.read_slots(seeds).await?,
        }
        Ok(t)
    }

    /// Whether this is a cluster (sharded Pub/Sub).
    pub fn sharded(&self) -> bool {
        matches!(self.cfg.mode, RedisMode::Cluster(_))
    }

    /// The server holding `symbol`.
    pub fn server_of(&self, symbol: &str) -> Arc<Server> {
        let map = self.map.read();
        match map.slots.get(slot_of(symbol) as usize) {
            Some(addr) => map.servers[&**addr].clone(),
            None => map.servers.values().next().expect("one server").clone(),
        }
    }

    /// Every server known now.
    pub fn servers(&self) -> Vec<Arc<Server>> {
        let mut v: Vec<Arc<Server>> = self.map.read().servers.values().cloned().collect();
        v.sort_by(|a, b| a.addr.cmp(&b.addr));
        v
    }

    /// Reads the slot map again from a server that answers (the known masters first,
    /// then the seeds); connects to masters it did not know. A single server has no map:
    /// nothing to do.
    pub async fn refresh(&self) -> redis::RedisResult<()> {
        let RedisMode::Cluster(seeds) = &self.cfg.mode else {
            return Ok(());
        };
        let mut urls: Vec<String> = self.servers().iter().map(|s| s.url.clone()).collect();
        urls.extend(seeds.iter().cloned());
        self.read_slots(&urls).await
    }

    async fn read_slots(&self, urls: &[String]) -> redis::RedisResult<()> {
        let mut last_err = None;
        for url in urls {
            match shards::cluster_masters(url, &self.cfg).await {
                Ok(masters) => return self.install(url, masters).await,
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "no cluster seed given"))
        }))
    }

    /// Makes `masters` (read from `seed`) the map, connecting to the new ones.
    async fn install(&self, seed: &str, masters: shards::Masters) -> redis::RedisResult<()> {
        let mut servers: HashMap<String, Arc<Server>> = HashMap::new();
        let mut slots: Vec<Option<Arc<str>>> = vec![None; SLOTS];
        for (addr, ranges) in masters {
            let known = self.map.read().servers.get(&addr).cloned();
            let server = match known {
                Some(s) => s,
                None => Arc::new(self.open(&shards::master_url(seed, &addr)?).await?),
            };
            let name: Arc<str> = Arc::from(addr.as_str());
            for (a, b) in ranges {
                for s in a..=b.min(SLOTS as u16 - 1) {
                    slots[s as usize] = Some(name.clone());
                }
            }
            servers.insert(addr, server);
        }
        let Some(slots) = slots.into_iter().collect::<Option<Vec<_>>>() else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "cluster does not cover every hash slot",
            )));
        };
        let mut map = self.map.write();
        map.servers = servers;
        map.slots = slots;
        Ok(())
    }

    async fn open(&self, url: &str) -> redis::RedisResult<Server> {
        Ok(Server {
            addr: shards::host_port(url),
            url: url.to_owned(),
            conn: shards::open_commands(url, &self.cfg).await?,
        })
    }

    /// Opens the command connection to the server at `addr` again (after its link was
    /// made again: the old connection may have died with the server).
    pub async fn reopen(&self, addr: &str) -> redis::RedisResult<()> {
        let Some(old) = self.map.read().servers.get(addr).cloned() else {
            return Ok(());
        };
        let fresh = Arc::new(self.open(&old.url).await?);
        if let Some(entry) = self.map.write().servers.get_mut(addr) {
            *entry = fresh;
        }
        Ok(())
    }

    /// Points `slot` at the master at `addr` (a `MOVED`), connecting to it when new.
    async fn moved(&self, slot: u16, addr: &str) -> redis::RedisResult<Arc<Server>> {
        let known = self.map.read().servers.get(addr).cloned();
        let server = match known {
            Some(s) => s,
            None => {
                let any = self.servers().into_iter().next().map(|s| s.url.clone());
                let seed = any.unwrap_or_default();
                let s = Arc::new(self.open(&shards::master_url(&seed, addr)?).await?);
                self.map
                    .write()
                    .servers
                    .entry(addr.to_owned())
                    .or_insert(s)
                    .clone()
            }
        };
        let mut map = self.map.write();
        if let Some(entry) = map.slots.get_mut(slot as usize) {
            *entry = Arc::from(addr);
        }
        Ok(server)
    }

    /// Runs, for each symbol, the commands `build` adds for it (all on the symbol's
    /// slot), one pipeline per server, and returns each symbol's replies in order.
    /// Redirected commands follow their redirection, per symbol.
    pub async fn per_symbol(
        &self,
        symbols: &[Symbol],
        build: impl Fn(&Symbol, &mut Pipeline),
    ) -> redis::RedisResult<Vec<Vec<Value>>> {
        let mut out: Vec<Vec<Value>> = vec![Vec::new(); symbols.len()];
        let mut by_server: HashMap<String, (Arc<Server>, Vec<usize>)> = HashMap::new();
        for (k, s) in symbols.iter().enumerate() {
            let server = self.server_of(s);
            by_server
                .entry(server.addr.clone())
                .or_insert_with(|| (server, Vec::new()))
                .1
                .push(k);
        }
        for (_, (server, idx)) in by_server {
            let (pipe, counts) = pipeline_for(symbols, &idx, &build);
            let replies = self.query(&server, &pipe).await?;
            for (&k, mine) in idx.iter().zip(split_replies(replies, counts)) {
                out[k] = if mine.iter().any(redirected) {
                    self.follow(&symbols[k], &build, mine).await?
                } else {
                    mine
                };
            }
        }
        Ok(out)
    }

    /// Runs `pipe` on `server`; a connection that broke (the server restarted) is
    /// opened again and the pipeline sent once more.
    async fn query(&self, server: &Arc<Server>, pipe: &Pipeline) -> redis::RedisResult<Vec<Value>> {
        let mut conn = server.conn.clone();
        match pipe.query_async(&mut conn).await {
            Err(e)
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() =>
            {
                self.reopen(&server.addr).await?;
                let server = self.map.read().servers.get(&server.addr).cloned();
                let mut conn = server.map_or(conn, |s| s.conn.clone());
                pipe.query_async(&mut conn).await
            }
            r => r,
        }
    }

    /// Sends one symbol's commands again where a redirection says, until they are
    /// answered or the attempts run out.
    async fn follow(
        &self,
        symbol: &Symbol,
        build: &impl Fn(&Symbol, &mut Pipeline),
        mut replies: Vec<Value>,
    ) -> redis::RedisResult<Vec<Value>> {
        let slot = slot_of(symbol);
        for _ in 0..MAX_REDIRECTS {
            let Some(redirect) = replies.iter().find_map(redirection) else {
                return Ok(replies);
            };
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            let (server, asking) = match redirect {
                Redirect::Moved(addr) => (self.moved(slot, &addr).await?, false),
                Redirect::Ask(addr) => (self.ask_target(&addr).await?, true),
                Redirect::Retry => {
                    tokio::time::sleep(RETRY_WAIT).await;
                    (self.server_of(symbol), false)
                }
            };
            if asking {
                pipe.cmd("ASKING");
            }
            build(symbol, &mut pipe);
            let mut got = self.query(&server, &pipe).await?;
            if asking && !got.is_empty() {
                got.remove(0);
            }
            replies = got;
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "too many cluster redirections",
            format!("slot {slot}"),
        )))
    }

    /// The server an `ASK` names, connected if new, without changing the map.
    async fn ask_target(&self, addr: &str) -> redis::RedisResult<Arc<Server>> {
        if let Some(s) = self.map.read().servers.get(addr).cloned() {
            return Ok(s);
        }
        let seed = self
            .servers()
            .into_iter()
            .next()
            .map(|s| s.url.clone())
            .unwrap_or_default();
        Ok(Arc::new(
            self.open(&shards::master_url(&seed, addr)?).await?,
        ))
    }
}

/// One pipeline (errors kept as replies) of the commands `build` adds for each symbol of
/// `symbols` at `idx`, and how many commands each added.
pub(crate) fn pipeline_for(
    symbols: &[Symbol],
    idx: &[usize],
    build: &impl Fn(&Symbol, &mut Pipeline),
) -> (Pipeline, Vec<usize>) {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut counts = Vec::with_capacity(idx.len());
    for &k in idx {
        let before = pipe.len();
        build(&symbols[k], &mut pipe);
        counts.push(pipe.len() - before);
    }
    (pipe, counts)
}

/// The replies of a [`pipeline_for`], cut into each symbol's.
pub(crate) fn split_replies(replies: Vec<Value>, counts: Vec<usize>) -> Vec<Vec<Value>> {
    let mut replies = replies.into_iter();
    counts
        .into_iter()
        .map(|n| replies.by_ref().take(n).collect())
        .collect()
}

/// A redirection of Redis Cluster.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Redirect {
    /// The slot's master is now at this address.
    Moved(String),
    /// Ask this address, once (a migration under way).
    Ask(String),
    /// Try again shortly (`TRYAGAIN`, `CLUSTERDOWN`).
    Retry,
}

/// The redirection a reply asks for, if any.
fn redirection(v: &Value) -> Option<Redirect> {
    let Value::ServerError(e) = v else {
        return None;
    };
    parse_redirect(e.code(), e.details().unwrap_or(""))
}

fn redirected(v: &Value) -> bool {
    redirection(v).is_some()
}

/// Reads a redirection from an error's code and details (`MOVED`, `3999 host:port`).
pub(crate) fn parse_redirect(code: &str, details: &str) -> Option<Redirect> {
    let addr = || details.split_whitespace().nth(1).map(str::to_owned);
    match code {
        "MOVED" => addr().map(Redirect::Moved),
        "ASK" => addr().map(Redirect::Ask),
        "TRYAGAIN" | "CLUSTERDOWN" => Some(Redirect::Retry),
        _ => None,
    }
}

/// Reads a redirection from a whole error line (`MOVED 3999 host:port`).
pub(crate) fn parse_redirect_line(line: &str) -> Option<Redirect> {
    let (code, details) = line.split_once(' ').unwrap_or((line, ""));
    parse_redirect(code, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections_are_read_from_error_lines() {
        assert_eq!(
            parse_redirect_line("MOVED 3999 127.0.0.1:7001"),
            Some(Redirect::Moved("127.0.0.1:7001".into()))
        );
        assert_eq!(
            parse_redirect_line("ASK 13634 127.0.0.1:7000"),
            Some(Redirect::Ask("127.0.0.1:7000".into()))
        );
        assert_eq!(
            parse_redirect_line("CLUSTERDOWN The cluster is down"),
            Some(Redirect::Retry)
        );
        assert_eq!(parse_redirect_line("ERR unknown command"), None);
        assert_eq!(parse_redirect_line("MOVED"), None);
    }
}
