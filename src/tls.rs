//! TLS with rustls and its `ring` provider: the certificate a node serves (`--tls-cert`,
//! `--tls-key`), and the trust a client puts in `wss://` servers (the Mozilla roots built
//! into the binary, plus an optional CA bundle such as the one `scripts/dev-cert` makes).
//!
//! Files are read once, at start-up; a missing or malformed one is an error that names
//! the file.
//!
//! The `ring` provider builds with a C compiler alone (no cmake, nasm or Go) and quickly.
//! The roots are webpki-roots rather than the system store: the same trust on every
//! machine, none missing in minimal containers without `ca-certificates`, and no file to
//! read when a client starts; private CAs are added with a CA file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

/// The server side of TLS for a node: its certificate chain (leaf first) from `cert` and
/// its private key (PKCS#8, PKCS#1 or SEC1 PEM) from `key`. Fails when either file is
/// unreadable or malformed, or the key does not belong to the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    const CERT: &str = "TLS certificate file";
    const KEY: &str = "TLS key file";
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
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(cert, CERT, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            invalid(
                cert,
                CERT,
                format!("unusable with the key in {}: {e}", key.display()),
            )
        })?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The acceptor for a node whose settings name a certificate and key, else None.
pub fn acceptor(
    settings: &crate::config::Settings,
) -> Result<Option<tokio_rustls::TlsAcceptor>, TlsError> {
    match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(server_config(cert, key)?.into())),
        _ => Ok(None),
    }
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
