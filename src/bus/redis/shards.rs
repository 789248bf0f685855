//! Connections to Redis and the hash slot of a symbol: how a connection is opened
//! (credentials and TLS from the URL), how a cluster's masters are read (`CLUSTER
//! SLOTS`) and reached (with the seed's scheme and credentials), and the message of a
//! failed first connection. [`super::topology`] routes with them; [`super::link`] makes
//! the subscription connections itself.
//!
//! Cluster routing is done here rather than through the crate's cluster client
//! (`redis::cluster_async`) because a node needs to know which server it lost, to
//! announce the gap and resend snapshots of that server's symbols, and to tell an
//! unsubscribe Redis sends by itself (a slot moved) from the confirmation of its own;
//! the cluster client resubscribes by itself and says neither.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};

use super::RedisConfig;

/// Number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// The hash slot of a symbol's keys and channel: CRC16 (XMODEM) of the hash tag (the
/// symbol itself, between the braces), modulo 16384.
pub fn slot_of(symbol: &str) -> u16 {
    (crc16::State::<crc16::XMODEM>::calculate(symbol.as_bytes()) as usize % SLOTS) as u16
}

/// Opens a multiplexed connection to `url`, for commands only (RESP2: no push can
/// arrive on it). The URL's user and password (an ACL user, `redis://user:pass@host`)
/// authenticate it; a `rediss://` URL is TLS, trusting the CAs of
/// [`RedisConfig::ca_file`] when given, else the system's roots.
pub(crate) async fn open_commands(
    url: &str,
    cfg: &RedisConfig,
) -> redis::RedisResult<MultiplexedConnection> {
    let client = match &cfg.ca_file {
        Some(path) if url.starts_with("rediss://") => {
            let pem = std::fs::read(path).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cannot read the Redis CA file",
                    format!("{}: {e}", path.display()),
                ))
            })?;
            Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )?
        }
        _ => Client::open(url)?,
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(cfg.timeout))
        .set_response_timeout(Some(cfg.timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The URL of a cluster master at `addr` (`host:port` from `CLUSTER SLOTS`), with the
/// scheme, credentials, database and options of the seed it was learnt from.
pub(crate) fn master_url(seed: &str, addr: &str) -> redis::RedisResult<String> {
    let bad = |what: &str| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "bad cluster address",
            format!("{what}: {}", host_port(seed)),
        ))
    };
    let mut url = url::Url::parse(seed).map_err(|_| bad("seed URL"))?;
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad(addr))?;
    let port: u16 = port.parse().map_err(|_| bad(addr))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    url.set_host(Some(host)).map_err(|_| bad(addr))?;
    url.set_port(Some(port)).map_err(|_| bad(addr))?;
    Ok(url.into())
}

/// The message of a failed first connection: refused credentials and TLS trust are told
/// apart from an unreachable server. Never contains the URL's password.
pub(crate) fn startup_error(cfg: &RedisConfig, e: &redis::RedisError) -> String {
    let at = cfg.describe();
    let text = e.to_string();
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
        || text.contains("WRONGPASS")
    {
        format!(
            "Redis at {at} refused the credentials: {e}; check the user and password of the \
             URL (redis://user:password@host:port) and the user's ACL"
        )
    } else if text.contains("certificate") || text.contains("InvalidCertificate") {
        format!(
            "cannot reach Redis at {at} over TLS: {e}; give the CA that signed its \
             certificate with --redis-ca-file"
        )
    } else {
        format!("cannot reach Redis at {at}: {e}")
    }
}

/// `host:port` of a `redis://` URL, for messages.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

pub(crate) type Masters = Vec<(String, Vec<(u16, u16)>)>;

/// Reads `CLUSTER SLOTS` from one seed: every master's address and slot ranges.
pub(crate) async fn cluster_masters(seed: &str, cfg: &RedisConfig) -> redis::RedisResult<Masters> {
    let mut conn = open_commands(seed, cfg).await?;
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

    #[test]
    fn masters_inherit_the_seed_scheme_and_credentials() {
        assert_eq!(
            master_url(
                "rediss://feed:pw@127.0.0.1:7000/0?protocol=resp3",
                "10.0.0.2:7001"
            )
            .unwrap(),
            "rediss://feed:pw@10.0.0.2:7001/0?protocol=resp3"
        );
        assert_eq!(
            master_url("redis://127.0.0.1:7000", "127.0.0.1:7002").unwrap(),
            "redis://127.0.0.1:7002"
        );
    }
}
