//! Connections to Redis: one server, or every master of a Redis Cluster with the slot
//! map that routes a symbol to its shard.
//!
//! Cluster routing is done here rather than through the crate's cluster client because a
//! node needs one subscription connection per shard that it controls itself (sharded
//! `SSUBSCRIBE`, resubscription and gap announcement after a reconnect). The map is read
//! with `CLUSTER SLOTS` when connecting; a node that meets `MOVED` treats it as a broken
//! link and reconnects, which reads the map again.

use std::time::Duration;

use redis::aio::{AsyncPushSender, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Value};

use super::{RedisConfig, RedisMode};

/// Number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// The hash slot of a symbol's keys and channel: CRC16 (XMODEM) of the hash tag (the
/// symbol itself, between the braces), modulo 16384.
pub fn slot_of(symbol: &str) -> u16 {
    (crc16::State::<crc16::XMODEM>::calculate(symbol.as_bytes()) as usize % SLOTS) as u16
}

/// One Redis server (a plain server or a cluster master).
#[derive(Clone)]
pub(crate) struct Shard {
    /// `host:port`, for messages and tests.
    pub addr: String,
    /// Multiplexed RESP3 connection.
    pub conn: MultiplexedConnection,
}

/// The servers and the routing from symbol to server.
#[derive(Clone)]
pub(crate) struct Shards {
    /// Whether this is a cluster (sharded Pub/Sub) or a single server.
    pub sharded: bool,
    /// Every server, in a fixed order.
    pub list: Vec<Shard>,
    /// For a cluster, the index in `list` of each slot's master.
    slots: Vec<u16>,
}

impl Shards {
    /// Connects to the server or every master, each connection with `push` as its push
    /// sender when given (for subscriptions).
    pub async fn connect<F>(cfg: &RedisConfig, push: Option<F>) -> redis::RedisResult<Shards>
    where
        F: Fn(usize) -> Box<dyn AsyncPushSender>,
    {
        match &cfg.mode {
            RedisMode::Single(url) => {
                let conn = open(url, cfg.timeout, push.as_ref().map(|f| f(0))).await?;
                Ok(Shards {
                    sharded: false,
                    list: vec![Shard {
                        addr: host_port(url),
                        conn,
                    }],
                    slots: Vec::new(),
                })
            }
            RedisMode::Cluster(seeds) => {
                let mut last_err = None;
                for seed in seeds {
                    match cluster_masters(seed, cfg.timeout).await {
                        Ok(masters) => {
                            let mut list = Vec::with_capacity(masters.len());
                            let mut slots = vec![u16::MAX; SLOTS];
                            for (i, (addr, ranges)) in masters.into_iter().enumerate() {
                                let url = format!("redis://{addr}");
                                let conn =
                                    open(&url, cfg.timeout, push.as_ref().map(|f| f(i))).await?;
                                for (a, b) in ranges {
                                    for s in a..=b.min(SLOTS as u16 - 1) {
                                        slots[s as usize] = i as u16;
                                    }
                                }
                                list.push(Shard { addr, conn });
                            }
                            if slots.contains(&u16::MAX) {
                                return Err(redis::RedisError::from((
                                    redis::ErrorKind::Client,
                                    "cluster does not cover every hash slot",
                                )));
                            }
                            return Ok(Shards {
                                sharded: true,
                                list,
                                slots,
                            });
                        }
                        Err(e) => last_err = Some(e),
                    }
                }
                Err(last_err.unwrap_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Client, "no cluster seed given"))
                }))
            }
        }
    }

    /// Index in [`Shards::list`] of the server holding `symbol`.
    pub fn index_of(&self, symbol: &str) -> usize {
        if self.sharded {
            self.slots[slot_of(symbol) as usize] as usize
        } else {
            0
        }
    }
}

async fn open(
    url: &str,
    timeout: Duration,
    push: Option<Box<dyn AsyncPushSender>>,
) -> redis::RedisResult<MultiplexedConnection> {
    let client = Client::open(with_resp3(url))?;
    let mut config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    if let Some(push) = push {
        config = config.set_push_sender(BoxedSender(push));
    }
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

struct BoxedSender(Box<dyn AsyncPushSender>);

impl AsyncPushSender for BoxedSender {
    fn send(&self, info: redis::PushInfo) -> Result<(), redis::aio::SendError> {
        self.0.send(info)
    }
}

fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

/// `host:port` of a `redis://` URL, for messages.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

type Masters = Vec<(String, Vec<(u16, u16)>)>;

/// Reads `CLUSTER SLOTS` from one seed: every master's address and slot ranges.
async fn cluster_masters(seed: &str, timeout: Duration) -> redis::RedisResult<Masters> {
    let mut conn = open(seed, timeout, None).await?;
    let v: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    let bad =
        || redis::RedisError::from((redis::ErrorKind::Parse, "unexpected CLUSTER SLOTS reply"));
    let Value::Array(ranges) = v else {
        return Err(bad());
    };
    let mut masters: Masters = Vec::new();
    for r in ranges {
        let Value::Array(parts) = r else {
            return Err(bad());
        };
        let (Some(Value::Int(a)), Some(Value::Int(b)), Some(Value::Array(m))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return Err(bad());
        };
        let host = match m.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => return Err(bad()),
        };
        let Some(Value::Int(port)) = m.get(1) else {
            return Err(bad());
        };
        let host = if host.is_empty() {
            host_port(seed)
                .rsplit_once(':')
                .map_or("127.0.0.1".to_owned(), |(h, _)| h.to_owned())
        } else {
            host
        };
        let addr = format!("{host}:{port}");
        let range = (*a as u16, *b as u16);
        match masters.iter_mut().find(|(m, _)| *m == addr) {
            Some((_, rs)) => rs.push(range),
            None => masters.push((addr, vec![range])),
        }
    }
    masters.sort_by(|a, b| a.0.cmp(&b.0));
    if masters.is_empty() {
        return Err(bad());
    }
    Ok(masters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from CLUSTER KEYSLOT on a real server.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("123456789"), 12739);
        assert_eq!(host_port("redis://:pw@127.0.0.1:6390/0"), "127.0.0.1:6390");
    }
}
