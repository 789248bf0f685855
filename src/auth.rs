//! Authentication: JWTs (HS256, RS256, ES256) checked before the WebSocket upgrade, with
//! claims that can limit the symbols a client sees and the endpoints it may use. Several
//! keys, told apart by the token's `kid`, let keys rotate: add the new one, move the
//! issuers to it, remove the old one, reloading in between (SIGHUP or a file change).
//!
//! A token comes as `Authorization: Bearer <JWT>` or, where headers cannot be set
//! (browsers), as the `token` query parameter. Missing, malformed, badly signed or
//! expired: HTTP 401. Valid but without the role the path needs: HTTP 403.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

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

/// `*` matches everything, `PREFIX*` matches by prefix, anything else exactly: the
/// patterns of `subscribe` and of the `symbols` claim are one grammar.
pub use crate::tick::pattern_matches;

/// Why a request was refused; `status` is the HTTP status to answer with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// 401 or 403.
    pub status: u16,
    /// Said to the client.
    pub message: String,
}

fn unauthorized(message: impl Into<String>) -> Refusal {
    Refusal {
        status: 401,
        message: message.into(),
    }
}

/// One `--jwt-key` value, `[KID=]FILE`: a key file and the key id (`kid` header) tokens
/// signed with it carry. Without a kid the key checks tokens that carry none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    /// The key id, if any.
    pub kid: Option<String>,
    /// A public-key PEM (RSA: RS256, P-256: ES256) or a shared secret (HS256).
    pub path: PathBuf,
}

impl FromStr for KeySpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (kid, path) = match s.split_once('=') {
            // A `=` after a `/` belongs to the file name.
            Some((kid, path)) if !kid.contains('/') => (Some(kid.to_owned()), path),
            _ => (None, s),
        };
        if kid.as_deref() == Some("") {
            return Err(format!(
                "JWT key {s:?} has an empty key id; write [KID=]FILE"
            ));
        }
        if path.is_empty() {
            return Err(format!("JWT key {s:?} names no file; write [KID=]FILE"));
        }
        Ok(KeySpec {
            kid,
            path: PathBuf::from(path),
        })
    }
}

impl serde::Serialize for KeySpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.kid {
            Some(kid) => s.serialize_str(&format!("{kid}={}", self.path.display())),
            None => s.serialize_str(&self.path.display().to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for KeySpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Each key file (and the key directory) with its modification time and length.
type Stamp = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

/// Where a node's verification keys come from; read at start and again on every reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySources {
    /// `--jwt-secret-file`: an HS256 secret without kid.
    pub secret_file: Option<PathBuf>,
    /// `--jwt-key`: key files, each with an optional kid.
    pub keys: Vec<KeySpec>,
    /// `--jwt-key-dir`: every file in it is a key, its kid the file name without its
    /// extension (`2026-q1.pem` → `2026-q1`); names starting with `.` are skipped.
    pub dir: Option<PathBuf>,
}

impl KeySources {
    /// Whether no key is configured (auth off).
    pub fn is_empty(&self) -> bool {
        self.secret_file.is_none() && self.keys.is_empty() && self.dir.is_none()
    }

    /// Every key file, with its kid, in the order they are tried.
    fn specs(&self) -> anyhow::Result<Vec<KeySpec>> {
        let mut specs: Vec<KeySpec> = self
            .secret_file
            .iter()
            .map(|p| KeySpec {
                kid: None,
                path: p.clone(),
            })
            .chain(self.keys.iter().cloned())
            .collect();
        if let Some(dir) = &self.dir {
            let entries = std::fs::read_dir(dir).map_err(|e| {
                anyhow::anyhow!("cannot read JWT key directory {}: {e}", dir.display())
            })?;
            let mut found = Vec::new();
            for entry in entries {
                let path = entry?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if name.starts_with('.') || !path.is_file() {
                    continue;
                }
                let kid = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or(name)
                    .to_owned();
                found.push(KeySpec {
                    kid: Some(kid),
                    path,
                });
            }
            found.sort_by(|a, b| a.path.cmp(&b.path));
            specs.extend(found);
        }
        Ok(specs)
    }

    /// Modification time and length of every file, to notice a change.
    fn stamp(&self) -> Stamp {
        let mut paths: Vec<PathBuf> = self.secret_file.iter().cloned().collect();
        paths.extend(self.keys.iter().map(|k| k.path.clone()));
        if let Some(dir) = &self.dir {
            paths.push(dir.clone());
            if let Ok(entries) = std::fs::read_dir(dir) {
                let mut inside: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                inside.sort();
                paths.extend(inside);
            }
        }
        paths
            .into_iter()
            .map(|p| {
                let meta = std::fs::metadata(&p).ok();
                let s = meta.and_then(|m| Some((m.modified().ok()?, m.len())));
                (p, s)
            })
            .collect()
    }
}

/// One verification key.
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The DER of the P-256 curve's object identifier (1.2.840.10045.3.1.7).
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Reads a key of type `K` from PEM bytes (one of `jsonwebtoken`'s `from_*_pem`).
type FromPem<K> = fn(&[u8]) -> jsonwebtoken::errors::Result<K>;

/// The algorithm and key of the PEM file `what` names, read by `rsa` and then `ec`:
/// RS256 for an RSA key, ES256 for an EC key on P-256; else the error says what was
/// `expected`.
fn pem_key<K>(
    raw: &[u8],
    what: &str,
    [rsa, ec]: [FromPem<K>; 2],
    expected: &str,
) -> anyhow::Result<(Algorithm, K)> {
    if let Ok(key) = rsa(raw) {
        return Ok((Algorithm::RS256, key));
    }
    let Ok(key) = ec(raw) else {
        anyhow::bail!("{what}: not an RSA or P-256 {expected}");
    };
    anyhow::ensure!(
        pem_is_p256(raw),
        "{what}: an EC key on a curve other than P-256 (ES256 needs P-256)"
    );
    Ok((Algorithm::ES256, key))
}

/// Whether the first PEM block of `bytes` holds a P-256 key.
fn pem_is_p256(bytes: &[u8]) -> bool {
    let mut reader = bytes;
    matches!(
        tokio_rustls::rustls::pki_types::pem::from_buf(&mut reader),
        Ok(Some((_, der))) if der.windows(P256_OID.len()).any(|w| w == P256_OID)
    )
}

/// Reads a verification key: a PEM public key (RSA → RS256, P-256 → ES256) or, for
/// anything else, an HS256 secret (see [`read_secret`]).
fn load_key(spec: &KeySpec) -> anyhow::Result<Key> {
    let path = &spec.path;
    let raw = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read JWT key file {}: {e}", path.display()))?;
    let (algorithm, key) = if is_pem(&raw) {
        if raw.windows(11).any(|w| w == b"PRIVATE KEY") {
            anyhow::bail!(
                "JWT key file {} holds a private key; give the node the public key \
                 (openssl pkey -in private.pem -pubout) and keep the private one for signing",
                path.display()
            );
        }
        pem_key(
            &raw,
            &format!("JWT key file {}", path.display()),
            [DecodingKey::from_rsa_pem, DecodingKey::from_ec_pem],
            "public key (expected PEM \"BEGIN PUBLIC KEY\")",
        )?
    } else {
        (
            Algorithm::HS256,
            DecodingKey::from_secret(&read_secret(path)?),
        )
    };
    Ok(Key {
        kid: spec.kid.clone(),
        algorithm,
        key,
    })
}

fn load_keys(sources: &KeySources) -> anyhow::Result<Vec<Key>> {
    let specs = sources.specs()?;
    if specs.is_empty() {
        anyhow::bail!("no JWT key configured (the key directory is empty?)");
    }
    let mut keys: Vec<Key> = Vec::with_capacity(specs.len());
    for spec in &specs {
        if let Some(kid) = &spec.kid {
            if keys.iter().any(|k| k.kid.as_ref() == Some(kid)) {
                anyhow::bail!(
                    "JWT key id {kid:?} is given twice ({})",
                    spec.path.display()
                );
            }
        }
        keys.push(load_key(spec)?);
    }
    Ok(keys)
}

/// Token checking for a node with auth enabled: HS256, RS256 and ES256 keys, chosen by
/// the token's `kid` (a token without kid is tried with each key without kid, in
/// order). `exp` and `nbf` are checked with the configured leeway. The keys can be
/// re-read while the node runs ([`reload`](Self::reload)).
pub struct Auth {
    sources: KeySources,
    keys: RwLock<Arc<Vec<Key>>>,
    stamp: Mutex<Stamp>,
    leeway: u64,
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
    /// Checks HS256 tokens without kid signed with `secret`, allowing `leeway` of clock
    /// skew.
    pub fn new(secret: &[u8], leeway: Duration) -> Auth {
        let key = Key {
            kid: None,
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        };
        Auth {
            sources: KeySources::default(),
            keys: RwLock::new(Arc::new(vec![key])),
            stamp: Mutex::new(Vec::new()),
            leeway: leeway.as_secs(),
        }
    }

    /// Reads every key of `sources`; fails, naming the file, when one is unusable.
    pub fn load(sources: KeySources, leeway: Duration) -> anyhow::Result<Auth> {
        let stamp = sources.stamp();
        let keys = load_keys(&sources)?;
        Ok(Auth {
            sources,
            keys: RwLock::new(Arc::new(keys)),
            stamp: Mutex::new(stamp),
            leeway: leeway.as_secs(),
        })
    }

    /// Reads the key files again and checks tokens with what they hold from now on;
    /// returns how many keys there are. On error the keys so far stay in use.
    pub fn reload(&self) -> anyhow::Result<usize> {
        if self.sources.is_empty() {
            return Ok(self.keys.read().len());
        }
        *self.stamp.lock() = self.sources.stamp();
        let keys = load_keys(&self.sources)?;
        let n = keys.len();
        *self.keys.write() = Arc::new(keys);
        Ok(n)
    }

    /// [`reload`](Self::reload)s when a key file (or the key directory) changed since the
    /// last load; None when none did.
    pub fn reload_if_changed(&self) -> Option<anyhow::Result<usize>> {
        if self.sources.is_empty() || *self.stamp.lock() == self.sources.stamp() {
            return None;
        }
        Some(self.reload())
    }

    /// The key ids known now (keys without kid are not listed).
    pub fn kids(&self) -> Vec<String> {
        self.keys
            .read()
            .iter()
            .filter_map(|k| k.kid.clone())
            .collect()
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation
    }

    fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthorized(format!("invalid token: {e}")))?;
        let keys = self.keys.read().clone();
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) => keys
                .iter()
                .filter(|k| k.kid.as_ref() == Some(kid))
                .collect(),
            None => keys.iter().filter(|k| k.kid.is_none()).collect(),
        };
        if candidates.is_empty() {
            return Err(unauthorized(match &header.kid {
                Some(kid) => format!("unknown key id {kid:?}"),
                None => "the token names no key id (kid) and every key has one".to_owned(),
            }));
        }
        let mut refusal = unauthorized(format!(
            "token algorithm {:?} does not match its key",
            header.alg
        ));
        for key in candidates.into_iter().filter(|k| k.algorithm == header.alg) {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key.algorithm)) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    refusal = unauthorized(match e.kind() {
                        ErrorKind::ExpiredSignature => "token expired".to_owned(),
                        ErrorKind::ImmatureSignature => "token not valid yet (nbf)".to_owned(),
                        ErrorKind::InvalidSignature => "bad token signature".to_owned(),
                        _ => format!("invalid token: {e}"),
                    });
                    // Past the signature the key was the right one: no other will do.
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        return Err(refusal);
                    }
                }
            }
        }
        Err(refusal)
    }

    /// Validates `token` and checks it grants `role`.
    pub fn check(&self, token: Option<&str>, role: &str) -> Result<Claims, Refusal> {
        let token = token.ok_or_else(|| {
            unauthorized("a token is required (Authorization: Bearer or ?token=)")
        })?;
        let claims = self.verify(token)?;
        if !claims.has_role(role) {
            return Err(Refusal {
                status: 403,
                message: format!("token does not grant the {role} role"),
            });
        }
        Ok(claims)
    }
}

/// A key that signs tokens: an HS256 secret or an RS256/ES256 private key, with the key
/// id put in the token header.
pub struct Signer {
    header: Header,
    key: EncodingKey,
}

impl Signer {
    /// Signs HS256 with `secret`, without kid.
    pub fn secret(secret: &[u8]) -> Signer {
        Signer {
            header: Header::new(Algorithm::HS256),
            key: EncodingKey::from_secret(secret),
        }
    }

    /// Reads a signing key: a PEM private key (PKCS#8; RSA → RS256, P-256 EC → ES256)
    /// or, for anything else, an HS256 secret (see [`read_secret`]). `kid`, when given,
    /// goes in every token's header.
    pub fn from_file(path: &Path, kid: Option<String>) -> anyhow::Result<Signer> {
        let raw = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read signing key {}: {e}", path.display()))?;
        let (algorithm, key) = if is_pem(&raw) {
            pem_key(
                &raw,
                &format!("signing key {}", path.display()),
                [EncodingKey::from_rsa_pem, EncodingKey::from_ec_pem],
                "private key in PKCS#8 PEM \
                 (\"BEGIN PRIVATE KEY\"; convert with openssl pkcs8 -topk8 -nocrypt)",
            )?
        } else {
            (
                Algorithm::HS256,
                EncodingKey::from_secret(&read_secret(path)?),
            )
        };
        let mut header = Header::new(algorithm);
        header.kid = kid;
        Ok(Signer { header, key })
    }

    /// The algorithm tokens are signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.header.alg
    }

    /// Signs `claims` (any serializable claims, so tests can add `nbf`).
    pub fn sign<T: Serialize>(&self, claims: &T) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(&self.header, claims, &self.key)?)
    }
}

/// Signs an HS256 token without kid (used by tests).
pub fn issue(secret: &[u8], claims: &Claims) -> anyhow::Result<String> {
    Signer::secret(secret).sign(claims)
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
