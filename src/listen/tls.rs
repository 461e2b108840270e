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
    Cert { path: PathBuf, reason: PemProblem },
    #[error("cannot read private key file {path}: {reason}")]
    Key { path: PathBuf, reason: PemProblem },
    #[error("private key {key} does not match certificate {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: rustls::Error,
    },
}

/// What is wrong with a certificate or key file.
#[derive(Debug, thiserror::Error)]
pub enum PemProblem {
    #[error(transparent)]
    Read(std::io::Error),
    #[error("bad PEM: {0}")]
    BadPem(rustls_pki_types::pem::Error),
    #[error("no CERTIFICATE block found")]
    NoCertificate,
    #[error("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {0}")]
    NoKey(rustls_pki_types::pem::Error),
    /// The key is PEM, but the crypto provider cannot sign with it.
    #[error(transparent)]
    Unusable(rustls::Error),
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
        reason: PemProblem::Unusable(e),
    })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|reason| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason,
    })?;
    Ok(Arc::new(ck))
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: PemProblem| TlsError::Cert {
        path: path.to_path_buf(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| err(PemProblem::Read(e)))?;
    let chain = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(PemProblem::BadPem(e)))?;
    if chain.is_empty() {
        return Err(err(PemProblem::NoCertificate));
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| TlsError::Key {
        path: path.to_path_buf(),
        reason: PemProblem::Read(e),
    })?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| TlsError::Key {
        path: path.to_path_buf(),
        reason: PemProblem::NoKey(e),
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

/// When a file last changed, as far as a renewal tool's write-then-rename can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // metadata() follows symlinks, as Let's Encrypt's live/ links need.
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// One certificate of a front (the default, or one SNI name's) and what was last loaded from it.
struct Watched {
    name: Option<String>,
    files: CertFiles,
    state: std::sync::Mutex<WatchedState>,
}

struct WatchedState {
    loaded: (Option<Stamp>, Option<Stamp>),
    key: Arc<CertifiedKey>,
    /// The file state last warned about, so a bad pair is reported once, not every poll.
    warned: Option<(Option<Stamp>, Option<Stamp>)>,
}

/// A front's certificates, reloaded from disk when their files change (certificate renewal needs no
/// action from the operator). Handshakes read the current set through one atomic load; existing
/// sessions keep the certificate they were made with.
pub struct CertWatch {
    watched: Vec<Watched>,
    current: arc_swap::ArcSwap<SniResolver>,
}

impl std::fmt::Debug for CertWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertWatch")
            .field("certificates", &self.watched.len())
            .finish()
    }
}

/// The resolver for the certificates as currently loaded; `watched[0]` is the default.
fn resolver_of(watched: &[Watched]) -> SniResolver {
    let key = |w: &Watched| w.state.lock().unwrap_or_else(|p| p.into_inner()).key.clone();
    SniResolver {
        default: key(&watched[0]),
        by_name: watched[1..]
            .iter()
            .filter_map(|w| w.name.as_ref().map(|n| (n.to_ascii_lowercase(), key(w))))
            .collect(),
    }
}

impl CertWatch {
    /// Reloads every certificate whose files changed and now form a valid pair. A half-written or
    /// mismatched pair is skipped with one warning and retried at the next check. Returns how many
    /// certificates were replaced.
    pub fn check(&self) -> usize {
        let mut replaced = 0;
        for w in &self.watched {
            let now = (stamp(&w.files.cert), stamp(&w.files.key));
            let mut st = w.state.lock().unwrap_or_else(|p| p.into_inner());
            if now == st.loaded {
                continue;
            }
            match load_certified_key(&w.files) {
                Ok(ck) => {
                    st.key = ck;
                    st.loaded = now;
                    st.warned = None;
                    replaced += 1;
                    tracing::info!(cert = %w.files.cert.display(), sni = w.name.as_deref().unwrap_or("(default)"), "certificate reloaded");
                }
                Err(e) => {
                    if st.warned != Some(now) {
                        st.warned = Some(now);
                        tracing::warn!(error = %e, "changed certificate files are not a valid pair yet; still serving the previous certificate");
                    }
                }
            }
        }
        if replaced > 0 {
            self.current.store(Arc::new(resolver_of(&self.watched)));
        }
        replaced
    }
}

impl ResolvesServerCert for CertWatch {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().resolve(hello)
    }
}

/// A certificate pair as loaded at configuration time, with the files it came from.
pub struct LoadedCert {
    pub name: Option<String>,
    pub files: CertFiles,
    pub key: Arc<CertifiedKey>,
}

/// Builds a server config that speaks TLS 1.2 and 1.3 only, serving `certs` (the first is the default,
/// the rest are chosen by SNI name; at least one is required), and the watch that keeps them current.
pub fn server_config(certs: Vec<LoadedCert>) -> (Arc<ServerConfig>, Arc<CertWatch>) {
    let watched: Vec<Watched> = certs
        .into_iter()
        .map(|c| Watched {
            state: std::sync::Mutex::new(WatchedState {
                loaded: (stamp(&c.files.cert), stamp(&c.files.key)),
                key: c.key,
                warned: None,
            }),
            name: c.name,
            files: c.files,
        })
        .collect();
    let watch = Arc::new(CertWatch {
        current: arc_swap::ArcSwap::from_pointee(resolver_of(&watched)),
        watched,
    });
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(watch.clone());
    // Wallets reconnect often; tickets make reconnects cheap without server-side state per client.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    // One ticket is enough for the one reconnect a wallet makes at a time; each extra ticket is paid on
    // every full handshake.
    cfg.send_tls13_tickets = 1;
    (Arc::new(cfg), watch)
}
