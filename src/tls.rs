//! TLS: PEM files -> a rustls `ServerConfig` and the leaf's expiry. A reload sends a new one
//! through the live settings.
//!
//! Each new connection reads the current acceptor when its handshake starts; open connections
//! keep the config they were made with, so a renewed certificate never drops anyone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate or key could not be used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable, not PEM, or holds no certificate.
    #[error("tls.cert = {path:?} is not valid: {problem}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        problem: String,
    },
    /// The key file is unreadable, not PEM, or holds no private key.
    #[error("tls.key = {path:?} is not valid: {problem}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        problem: String,
    },
    /// The two files parse but do not belong together (or rustls refuses the key).
    #[error("tls.key = {key:?} does not fit tls.cert = {cert:?}: {problem}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        problem: String,
    },
}

/// A loaded certificate and key, ready for handshakes.
#[derive(Debug)]
pub struct Loaded {
    /// The rustls config.
    pub config: Arc<ServerConfig>,
    /// When the leaf certificate expires, in seconds since the Unix epoch.
    pub not_after: i64,
}

/// Reads the chain and key and builds a server config for TLS 1.2 and 1.3 with ALPN `http/1.1`.
pub fn load(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert { path: cert.into(), problem: pem_problem(e) })?;
    if chain.is_empty() {
        return Err(TlsError::Cert { path: cert.into(), problem: "no CERTIFICATE block found".into() });
    }
    let not_after =
        x509_parser::parse_x509_certificate(&chain[0]).map(|(_, leaf)| leaf.validity().not_after.timestamp()).map_err(
            |e| TlsError::Cert { path: cert.into(), problem: format!("the leaf certificate does not parse: {e}") },
        )?;
    let private_key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.into(), problem: pem_problem(e) })?;
    let mismatch = |e: rustls::Error| TlsError::Mismatch { cert: cert.into(), key: key.into(), problem: e.to_string() };
    // ring rather than aws-lc-rs: it builds with a plain C compiler on any Debian machine.
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(mismatch)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded { config: Arc::new(config), not_after })
}

fn pem_problem(e: rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no matching PEM block found".into(),
        other => format!("not a valid PEM file ({other:?})"),
    }
}
