//! TLS termination settings: certificate loading, SNI selection, protocol versions.
//!
//! The server config is built once per (re)load and shared by every handshake of a front, so handshakes
//! pay no parsing cost.

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read private key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("private key {key} does not match certificate {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// One certificate chain and key pair on disk, optionally bound to an SNI name.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads a chain and key and proves they belong together, so a bad pair is a config error rather than
/// a failure on every handshake.
pub fn load_certified_key(files: &CertFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_chain(&files.cert)?;
    let key = load_key(&files.key)?;
    let provider = provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(ck))
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Cert {
        path: path.to_path_buf(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(err("no CERTIFICATE block found".into()));
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| TlsError::Key {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| TlsError::Key {
        path: path.to_path_buf(),
        reason: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })
}

/// Picks the certificate by SNI name (exact, case-insensitive), falling back to the default, so clients
/// that send no SNI (many Electrum wallets connect by IP) still get a certificate.
#[derive(Debug)]
pub struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            if let Some(ck) = self.by_name.get(&name.to_ascii_lowercase()) {
                return Some(ck.clone());
            }
        }
        Some(self.default.clone())
    }
}

/// Builds a server config that speaks TLS 1.2 and 1.3 only.
pub fn server_config(default: Arc<CertifiedKey>, sni: Vec<(String, Arc<CertifiedKey>)>) -> Arc<ServerConfig> {
    let resolver = SniResolver {
        default,
        by_name: sni.into_iter().map(|(n, k)| (n.to_ascii_lowercase(), k)).collect(),
    };
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    // Wallets reconnect often; tickets make reconnects cheap without server-side state per client.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    // One ticket is enough for the one reconnect a wallet makes at a time; each extra ticket is paid on
    // every full handshake.
    cfg.send_tls13_tickets = 1;
    Arc::new(cfg)
}
