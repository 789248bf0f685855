//! Authentication: JWTs (HS256) checked before the WebSocket upgrade, with claims that
//! can limit the symbols a client sees and the endpoints it may use.
//!
//! A token comes as `Authorization: Bearer <JWT>` or, where headers cannot be set
//! (browsers), as the `token` query parameter. Missing, malformed, badly signed or
//! expired: HTTP 401. Valid but without the role the path needs: HTTP 403.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// A role a token can grant. A token without `roles` may subscribe only.
pub const ROLE_SUBSCRIBE: &str = "subscribe";
/// The role a feed needs to push ticks into a node.
pub const ROLE_PUBLISH: &str = "publish";

/// The claims tickstream reads from a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token is for (logged, never trusted for anything else).
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Symbols the holder may receive: exact names, `*` for all, or prefixes like
    /// `BTC-*`. Absent means every symbol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbols: Option<Vec<String>>,
    /// Roles granted (`subscribe`, `publish`). Absent means `subscribe` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

impl Claims {
    /// Whether these claims grant `role`.
    pub fn has_role(&self, role: &str) -> bool {
        match &self.roles {
            None => role == ROLE_SUBSCRIBE,
            Some(r) => r.iter().any(|x| x == role),
        }
    }

    /// Whether the holder may receive `symbol`.
    pub fn allows(&self, symbol: &str) -> bool {
        match &self.symbols {
            None => true,
            Some(list) => list.iter().any(|p| pattern_matches(p, symbol)),
        }
    }

    /// Time left before the token expires (zero when it already has).
    pub fn remaining(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Duration::from_secs(self.exp.saturating_sub(now))
    }
}

/// `*` matches everything, `PREFIX*` matches by prefix, anything else exactly.
pub fn pattern_matches(pattern: &str, symbol: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => symbol.starts_with(prefix),
        None => pattern == symbol,
    }
}

/// Why a request was refused; `status` is the HTTP status to answer with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// 401 or 403.
    pub status: u16,
    /// Said to the client.
    pub message: String,
}

/// Token checking for a node with auth enabled.
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

/// Reads a shared secret from a file (trailing newline ignored); refuses short ones.
pub fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read JWT secret file {}: {e}", path.display()))?;
    let secret = raw.trim_ascii_end().to_vec();
    if secret.len() < 32 {
        anyhow::bail!(
            "JWT secret in {} is {} bytes; use at least 32 (e.g. `head -c 48 /dev/urandom | base64`)",
            path.display(),
            secret.len()
        );
    }
    Ok(secret)
}

impl Auth {
    /// Checks HS256 tokens signed with `secret`, allowing `leeway` of clock skew.
    pub fn new(secret: &[u8], leeway: Duration) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway.as_secs();
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Validates `token` and checks it grants `role`.
    pub fn check(&self, token: Option<&str>, role: &str) -> Result<Claims, Refusal> {
        let token = token.ok_or_else(|| Refusal {
            status: 401,
            message: "a token is required (Authorization: Bearer or ?token=)".into(),
        })?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| Refusal {
                status: 401,
                message: match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired".into(),
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                        "bad token signature".into()
                    }
                    _ => format!("invalid token: {e}"),
                },
            })?
            .claims;
        if !claims.has_role(role) {
            return Err(Refusal {
                status: 403,
                message: format!("token does not grant the {role} role"),
            });
        }
        Ok(claims)
    }
}

/// Signs a token (used by `tickstream token` and tests).
pub fn issue(secret: &[u8], claims: &Claims) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )?)
}

/// Seconds since the Unix epoch `ttl` from now.
pub fn expiry_in(ttl: Duration) -> u64 {
    (SystemTime::now() + ttl)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(ttl_s: i64) -> Claims {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        Claims {
            sub: "t".into(),
            exp: (now + ttl_s) as u64,
            symbols: Some(vec!["AAPL".into(), "BTC-*".into()]),
            roles: None,
        }
    }

    #[test]
    fn valid_expired_forged_and_role() {
        let auth = Auth::new(SECRET, Duration::ZERO);
        let good = issue(SECRET, &claims(60)).unwrap();
        let c = auth.check(Some(&good), ROLE_SUBSCRIBE).unwrap();
        assert!(c.allows("AAPL") && c.allows("BTC-USD") && !c.allows("MSFT"));
        assert_eq!(
            auth.check(Some(&good), ROLE_PUBLISH).unwrap_err().status,
            403
        );
        let old = issue(SECRET, &claims(-120)).unwrap();
        let e = auth.check(Some(&old), ROLE_SUBSCRIBE).unwrap_err();
        assert_eq!((e.status, e.message.as_str()), (401, "token expired"));
        let forged = issue(b"another-secret-another-secret-xx", &claims(60)).unwrap();
        assert_eq!(
            auth.check(Some(&forged), ROLE_SUBSCRIBE)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            auth.check(Some("not.a.jwt"), ROLE_SUBSCRIBE)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(auth.check(None, ROLE_SUBSCRIBE).unwrap_err().status, 401);
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "X"));
        assert!(pattern_matches("BTC-*", "BTC-USD"));
        assert!(!pattern_matches("BTC-*", "ETH-USD"));
        assert!(pattern_matches("AAPL", "AAPL"));
        assert!(!pattern_matches("AAPL", "AAPLX"));
    }
}
