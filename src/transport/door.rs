//! The door: who a request comes from, and whether a new stream may open.
//!
//! Streams are the long-lived requests: `/v1/ws`, `/v1/sse` and `/v1/publish`. Each
//! request to one of them is counted against its source address's new-streams-per-second
//! quota ([`governor`]'s keyed limiter) and, while the stream is open, against the
//! address's and the node's cap on open streams. Past a per-address limit the answer is
//! 429, past the node's cap 503, both with `Retry-After` and before any upgrade. Plain
//! GETs (`/healthz`, `/metrics`, `/v1/symbols`, `/v1/snapshot`, the dashboard's files)
//! are answered at once and not counted.
//!
//! The source address is the TCP peer's, unless the peer is a listed proxy: then it is
//! the right-most address of `X-Forwarded-For` that is not a listed proxy. IPv6
//! addresses are counted by their /64, the block one host usually holds.
//!
//! `/metrics` has its own auth setting, [`MetricsAuth`], apart from the streams' tokens.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::header::{HeaderMap, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use ipnet::IpNet;
use parking_lot::Mutex;

use super::reply::{text, Body};
use super::request::bearer;
use crate::config::{MetricsAuth, Settings};
use crate::metrics::Refused;

/// The role a JWT needs to read `/metrics` when [`MetricsAuth::Jwt`] is set.
pub const ROLE_METRICS: &str = "metrics";

/// Checks per-second quotas run between two sweeps of idle addresses.
const SWEEP_EVERY: u64 = 4096;

/// The limits at the door of one node, and the streams open through it.
pub struct Door {
    per_addr: u32,
    total: u32,
    retry_after: Duration,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    checks: AtomicU64,
    trusted: Vec<IpNet>,
    open: Arc<Mutex<Open>>,
    metrics_token: Option<Vec<u8>>,
    metrics_jwt: bool,
}

/// Streams open now, by source address and in all.
#[derive(Default)]
struct Open {
    by_addr: HashMap<IpAddr, u32>,
    total: u32,
}

/// A stream's place at the door; dropping the last clone frees it.
#[derive(Clone)]
pub struct Hold {
    _release: Arc<Release>,
}

/// Frees a stream's place when dropped.
struct Release {
    key: IpAddr,
    open: Arc<Mutex<Open>>,
}

impl Drop for Release {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_addr.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.by_addr.remove(&self.key);
            }
        }
    }
}

/// The source address a request was attributed to, kept in its extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Why a stream was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address opened more new streams this second than allowed (429).
    AddressRate(Duration),
    /// The address holds as many open streams as allowed (429).
    AddressBusy(Duration),
    /// The node holds as many open streams as allowed (503).
    NodeBusy(Duration),
}

impl Refusal {
    /// The answer to send: status, `Retry-After` in whole seconds, a line of text.
    pub fn response(self) -> Response<Body> {
        let (status, wait, why) = match self {
            Refusal::AddressRate(w) => (
                StatusCode::TOO_MANY_REQUESTS,
                w,
                "too many new connections from this address\n",
            ),
            Refusal::AddressBusy(w) => (
                StatusCode::TOO_MANY_REQUESTS,
                w,
                "too many open connections from this address\n",
            ),
            Refusal::NodeBusy(w) => (
                StatusCode::SERVICE_UNAVAILABLE,
                w,
                "server at its connection limit\n",
            ),
        };
        let mut resp = text(status, why);
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_secs(wait)));
        resp
    }

    /// The metrics reason.
    pub fn reason(self) -> Refused {
        match self {
            Refusal::AddressRate(_) => Refused::AddressRate,
            Refusal::AddressBusy(_) => Refused::AddressBusy,
            Refusal::NodeBusy(_) => Refused::NodeBusy,
        }
    }
}

/// A wait in whole seconds for `Retry-After`, at least 1.
fn retry_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl Door {
    /// The door the settings describe; reads the `/metrics` token file if one is named.
    pub fn new(s: &Settings) -> anyhow::Result<Door> {
        let metrics_token = match &s.metrics_auth {
            MetricsAuth::Token(path) => {
                let raw = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("cannot read the metrics token file {}: {e}", path.display())
                })?;
                let token = raw.trim_ascii().to_vec();
                if token.len() < 16 {
                    anyhow::bail!(
                        "the metrics token in {} is shorter than 16 bytes",
                        path.display()
                    );
                }
                Some(token)
            }
            _ => None,
        };
        Ok(Door {
            per_addr: s.max_conns_per_addr,
            total: s.max_conns,
            retry_after: s.retry_after,
            rate: NonZeroU32::new(s.max_new_conns_per_addr)
                .map(|n| RateLimiter::keyed(Quota::per_second(n))),
            checks: AtomicU64::new(0),
            trusted: s.trusted_proxies.clone(),
            open: Default::default(),
            metrics_token,
            metrics_jwt: s.metrics_auth == MetricsAuth::Jwt,
        })
    }

    /// The source address of a request from TCP peer `peer` with `headers`.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_addr(&self.trusted, peer, headers)
    }

    /// Lets a new stream from `client` in, or says why not. The place is held until
    /// the returned [`Hold`] (and every clone of it) is dropped.
    pub fn admit(&self, client: IpAddr) -> Result<Hold, Refusal> {
        let key = limit_key(client);
        if let Some(rate) = &self.rate {
            if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
                rate.retain_recent();
                rate.shrink_to_fit();
            }
            if let Err(not_until) = rate.check_key(&key) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(Refusal::AddressRate(wait));
            }
        }
        let mut open = self.open.lock();
        let mine = open.by_addr.get(&key).copied().unwrap_or(0);
        if self.per_addr > 0 && mine >= self.per_addr {
            return Err(Refusal::AddressBusy(self.retry_after));
        }
        if self.total > 0 && open.total >= self.total {
            return Err(Refusal::NodeBusy(self.retry_after));
        }
        open.total += 1;
        *open.by_addr.entry(key).or_insert(0) += 1;
        drop(open);
        Ok(Hold {
            _release: Arc::new(Release {
                key,
                open: self.open.clone(),
            }),
        })
    }

    /// Streams open now through this door.
    pub fn open_streams(&self) -> u32 {
        self.open.lock().total
    }

    /// Checks a `/metrics` request: `None` to serve it, else the refusal to send.
    /// With [`MetricsAuth::Jwt`], `jwt` runs the node's token check for the
    /// [`ROLE_METRICS`] role.
    pub fn metrics_refusal<B>(
        &self,
        req: &hyper::Request<B>,
        jwt: impl FnOnce() -> Option<Response<Body>>,
    ) -> Option<Response<Body>> {
        if self.metrics_jwt {
            return jwt();
        }
        let want = self.metrics_token.as_deref()?;
        let given = bearer(req.headers()).unwrap_or_default();
        if subtle::ConstantTimeEq::ct_eq(given.as_bytes(), want).into() {
            return None;
        }
        crate::metrics::global()
            .auth_refused
            .fetch_add(1, Ordering::Relaxed);
        let mut resp = text(
            StatusCode::UNAUTHORIZED,
            "metrics need the metrics token as Authorization: Bearer\n",
        );
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(resp)
    }
}

/// The key an address is counted under: itself (IPv4, with IPv4-mapped IPv6 read as
/// IPv4), or its /64 (IPv6).
fn limit_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The source address of a request from `peer`: the peer itself unless it is one of
/// the `trusted` proxies; then the right-most address of the `X-Forwarded-For` chain
/// that is not a trusted proxy (all of them trusted: the left-most). An entry that is
/// not an address ends the walk at the hop to its right.
pub fn client_addr(trusted: &[IpNet], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(a));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut hops: Vec<&str> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(v) = v.to_str() else {
            return peer;
        };
        hops.extend(v.split(','));
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(addr) = parse_hop(hop.trim()) else {
            break;
        };
        client = addr;
        if !is_trusted(&addr) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:5`,
/// `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<std::net::SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|a| a.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_peer() {
        let trusted = nets(&["10.0.0.0/8", "192.168.1.5/32"]);
        let h = xff(&["203.0.113.7"]);
        assert_eq!(client_addr(&trusted, ip("10.1.2.3"), &h), ip("203.0.113.7"));
        assert_eq!(
            client_addr(&trusted, ip("192.168.1.5"), &h),
            ip("203.0.113.7")
        );
        // Not listed: the header is the client's own word, ignored.
        assert_eq!(
            client_addr(&trusted, ip("192.168.1.6"), &h),
            ip("192.168.1.6")
        );
        assert_eq!(
            client_addr(&[], ip("10.1.2.3"), &h),
            ip("10.1.2.3"),
            "no proxies listed"
        );
        // No header from a proxy: the proxy itself.
        assert_eq!(
            client_addr(&trusted, ip("10.1.2.3"), &HeaderMap::new()),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "2001:db8:1::/48"]);
        let cases: [(&str, &[&str], &str); 8] = [
            // The client put a forged address first; the proxies appended the real one.
            (
                "10.0.0.1",
                &["198.51.100.1, 203.0.113.7, 10.0.0.9"],
                "203.0.113.7",
            ),
            // Several header lines are one list, in order.
            (
                "10.0.0.1",
                &["198.51.100.1", "203.0.113.7", "10.0.0.9"],
                "203.0.113.7",
            ),
            // Every hop trusted: the left-most.
            ("10.0.0.1", &["10.0.0.3, 10.0.0.9"], "10.0.0.3"),
            // Ports and IPv6.
            (
                "2001:db8:1::1",
                &["[2001:db8:2::5]:4711, 2001:db8:1::9"],
                "2001:db8:2::5",
            ),
            ("10.0.0.1", &["203.0.113.7:999"], "203.0.113.7"),
            // Garbage ends the walk at the last good hop to its right.
            ("10.0.0.1", &["203.0.113.7, unknown, 10.0.0.9"], "10.0.0.9"),
            ("10.0.0.1", &["nonsense"], "10.0.0.1"),
            // An IPv4-mapped peer is matched as IPv4.
            ("::ffff:10.0.0.1", &["203.0.113.7"], "203.0.113.7"),
        ];
        for (peer, headers, client) in cases {
            assert_eq!(
                client_addr(&trusted, ip(peer), &xff(headers)),
                ip(client),
                "from {peer} with {headers:?}"
            );
        }
    }

    fn door(per_addr: u32, total: u32, per_second: u32) -> Door {
        let s = Settings {
            max_conns_per_addr: per_addr,
            max_conns: total,
            max_new_conns_per_addr: per_second,
            retry_after: Duration::from_millis(2500),
            ..Settings::default()
        };
        Door::new(&s).unwrap()
    }

    #[test]
    fn caps_count_open_streams_and_free_them_on_drop() {
        let d = door(2, 3, 0);
        let a = ip("192.0.2.1");
        let (h1, h2) = (d.admit(a).unwrap(), d.admit(a).unwrap());
        assert_eq!(
            d.admit(a).err(),
            Some(Refusal::AddressBusy(Duration::from_millis(2500)))
        );
        let h3 = d.admit(ip("192.0.2.2")).unwrap();
        assert!(matches!(
            d.admit(ip("192.0.2.3")),
            Err(Refusal::NodeBusy(_))
        ));
        // A clone shares its place: only the last drop frees it.
        let h1b = h1.clone();
        drop(h1);
        assert_eq!(d.open_streams(), 3);
        drop(h1b);
        assert_eq!(d.open_streams(), 2);
        let again = d.admit(a).unwrap();
        drop((h2, h3, again));
        assert_eq!(d.open_streams(), 0);
        assert!(d.open.lock().by_addr.is_empty(), "no address left behind");
    }

    #[test]
    fn the_per_second_quota_is_per_address_and_ipv6_counts_by_64() {
        let d = door(0, 0, 2);
        let a = ip("192.0.2.1");
        let _held = [d.admit(a).unwrap(), d.admit(a).unwrap()];
        match d.admit(a) {
            Err(Refusal::AddressRate(w)) => assert!(w <= Duration::from_secs(1), "{w:?}"),
            other => panic!("third in a second: {:?}", other.map(|_| ())),
        }
        assert!(d.admit(ip("192.0.2.2")).is_ok(), "another address");
        let _v6 = [
            d.admit(ip("2001:db8::1")).unwrap(),
            d.admit(ip("2001:db8::2")).unwrap(),
        ];
        assert!(
            d.admit(ip("2001:db8::ffff:3")).is_err(),
            "one /64 is one address"
        );
        assert!(d.admit(ip("2001:db8:0:1::1")).is_ok(), "another /64");
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_millis(2500)), 3);
        assert_eq!(retry_secs(Duration::ZERO), 1);
        let r = Refusal::NodeBusy(Duration::from_secs(7)).response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "7");
    }
}
