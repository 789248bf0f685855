//! TLS with rustls and its `ring` provider: the certificate a node serves (`--tls-cert`,
//! `--tls-key`), and the trust a client puts in `wss://` servers (the Mozilla roots built
//! into the binary, plus an optional CA bundle such as the one `scripts/dev-cert` makes).
//!
//! Files are read at start-up; a missing or malformed one is an error that names the
//! file. The server's certificate and key can be replaced while it runs
//! ([`CertResolver::reload`], on SIGHUP or when the files change): new handshakes get the
//! new certificate, established connections keep going, and unusable new files are
//! refused while the old certificate stays.
//!
//! The `ring` provider builds with a C compiler alone (no cmake, nasm or Go) and quickly.
//! The roots are webpki-roots rather than the system store: the same trust on every
//! machine, none missing in minimal containers without `ca-certificates`, and no file to
//! read when a client starts; private CAs are added with a CA file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

const CERT: &str = "TLS certificate file";
const KEY: &str = "TLS key file";

/// ALPN protocol offered and accepted: WebSocket upgrades ride on HTTP/1.1.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A TLS file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    // `error`, not `source`: the message holds it already, and an error chain would
    // print it twice.
    #[error("cannot read {what} {path}: {error}")]
    Read {
        /// What the file was meant to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file was read but does not hold what it should.
    #[error("{what} {path}: {why}")]
    Invalid {
        /// What the file was meant to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_owned(),
        error,
    })
}

fn invalid(path: &Path, what: &'static str, why: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        what,
        path: path.to_owned(),
        why: why.into(),
    }
}

/// Every certificate of a PEM file, in order; at least one.
fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, what, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            path,
            what,
            "no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)",
        ));
    }
    Ok(certs)
}

/// Reads a node's certificate chain (leaf first) from `cert` and its private key
/// (PKCS#8, PKCS#1 or SEC1 PEM) from `key`. Fails when either file is unreadable or
/// malformed, or the key does not belong to the certificate.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert, CERT)?;
    let key_pem = read(key, KEY)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => invalid(
            key,
            KEY,
            "no private key in it (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)",
        ),
        e => invalid(key, KEY, format!("not valid PEM: {e}")),
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        invalid(
            cert,
            CERT,
            format!("unusable with the key in {}: {e}", key.display()),
        )
    })
}

/// The server side of TLS for a node: serves the certificate of [`load_certified_key`].
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    Ok(server_tls(cert, key)?.0)
}

/// Modification time and length of a file, to notice that it changed.
type Stamp = Option<(std::time::SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The certificate a node serves, replaceable while it runs: each new TLS handshake gets
/// the current one, established connections keep theirs. [`reload`](Self::reload)
/// re-reads the files and keeps the old certificate when the new files are unusable.
pub struct CertResolver {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<(Stamp, Stamp)>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    /// Reads `cert` and `key` (see [`load_certified_key`]).
    pub fn new(cert: &Path, key: &Path) -> Result<CertResolver, TlsError> {
        let stamps = (stamp(cert), stamp(key));
        let current = load_certified_key(cert, key)?;
        Ok(CertResolver {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(current)),
            stamps: Mutex::new(stamps),
        })
    }

    /// Reads the files again and serves what they hold from the next handshake on. On
    /// error the certificate served so far stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.stamps.lock() = (stamp(&self.cert), stamp(&self.key));
        let fresh = load_certified_key(&self.cert, &self.key)?;
        *self.current.write() = Arc::new(fresh);
        Ok(())
    }

    /// [`reload`](Self::reload)s when either file's modification time or length changed
    /// since the last load; None when neither did.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = (stamp(&self.cert), stamp(&self.key));
        if *self.stamps.lock() == now {
            return None;
        }
        Some(self.reload())
    }

    /// The certificate chain served now, leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.read().cert.clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// The server TLS configuration for a node, with the resolver that lets its
/// certificate be replaced while it runs.
pub fn server_tls(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<rustls::ServerConfig>, Arc<CertResolver>), TlsError> {
    let resolver = Arc::new(CertResolver::new(cert, key)?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(cert, CERT, e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok((Arc::new(config), resolver))
}

/// The acceptor for a node serving `cert` and `key`, and the resolver that reloads them.
pub fn acceptor(
    cert: &Path,
    key: &Path,
) -> Result<(tokio_rustls::TlsAcceptor, Arc<CertResolver>), TlsError> {
    let (config, resolver) = server_tls(cert, key)?;
    Ok((config.into(), resolver))
}

/// How a client verifies `wss://` servers: against the Mozilla root certificates built
/// into the binary (webpki-roots), plus the CAs of an optional PEM bundle. The server
/// name checked is the URL's host; it is also sent as SNI.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    extra: Option<PathBuf>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_file", &self.extra)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the built-in roots and, when given, every certificate in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<ClientTls, TlsError> {
        const CA: &str = "CA file";
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca_file {
            for cert in read_certs(path, CA)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(path, CA, format!("not a usable CA certificate: {e}")))?;
            }
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
            extra: ca_file.map(Path::to_owned),
        })
    }

    /// Trust for a server reached by a protocol of its own (Redis): only the CAs of
    /// `ca_file` when given, else the built-in roots; no ALPN offered.
    pub fn exclusive(ca_file: Option<&Path>) -> Result<ClientTls, TlsError> {
        const CA: &str = "CA file";
        let roots = match ca_file {
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(path, CA)? {
                    roots.add(cert).map_err(|e| {
                        invalid(path, CA, format!("not a usable CA certificate: {e}"))
                    })?;
                }
                roots
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
            extra: ca_file.map(Path::to_owned),
        })
    }

    /// The built-in roots only, built once per process.
    pub fn platform() -> &'static ClientTls {
        static PLATFORM: OnceLock<ClientTls> = OnceLock::new();
        PLATFORM.get_or_init(|| ClientTls::new(None).expect("no file to read"))
    }

    /// A connector using this trust.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.clone())
    }
}

/// Whether an I/O error from a TLS handshake is the peer's certificate being refused
/// (unknown issuer, wrong name, expired…), which trying again will not fix.
pub fn is_certificate_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}
