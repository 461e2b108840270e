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

/// What the gateway knows of a served certificate, read once when it is loaded (for metrics, `gatehouse
/// certs` and renewal), so nothing parses X.509 per handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Validity, in Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// The issuer's distinguished name as RFC 4514 text.
    pub issuer: String,
    /// The DNS names the leaf covers (subjectAltName).
    pub names: Vec<String>,
    pub source: CertSource,
}

/// Where a served certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// Files named in the configuration, watched for renewal.
    File,
    /// Issued by the built-in ACME client.
    Acme,
    /// A self-signed stand-in served until ACME issues the real one.
    Placeholder,
}

impl CertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::File => "file",
            CertSource::Acme => "acme",
            CertSource::Placeholder => "placeholder",
        }
    }
}

/// Reads validity, issuer and names from a DER certificate; `None` when it is not parseable X.509.
pub fn cert_info(der: &[u8], source: CertSource) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(CertInfo {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        issuer: cert.issuer().to_string(),
        names,
        source,
    })
}

/// One certificate as served: the signing pair and what is known about it.
#[derive(Debug)]
pub struct Served {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

impl Served {
    /// Wraps a loaded pair, reading its leaf; a leaf that is not parseable X.509 (rustls would still
    /// serve it) gets an unknown validity of 0.
    pub fn new(key: Arc<CertifiedKey>, source: CertSource) -> Served {
        let info = key
            .cert
            .first()
            .and_then(|c| cert_info(c.as_ref(), source))
            .unwrap_or(CertInfo {
                not_before: 0,
                not_after: 0,
                issuer: String::new(),
                names: Vec::new(),
                source,
            });
        Served { key, info }
    }
}

/// A certificate slot that handshakes read with one atomic load and that a renewal replaces whole (the
/// file watcher for files, the ACME client for issued ones): new handshakes get the new pair at once,
/// existing sessions keep theirs.
#[derive(Debug)]
pub struct LiveCert {
    current: arc_swap::ArcSwap<Served>,
}

impl LiveCert {
    pub fn new(served: Served) -> LiveCert {
        LiveCert {
            current: arc_swap::ArcSwap::from_pointee(served),
        }
    }
    pub fn load(&self) -> Arc<Served> {
        self.current.load_full()
    }
    pub fn store(&self, served: Served) {
        self.current.store(Arc::new(served));
    }
}

/// Picks the certificate by SNI name (exact, case-insensitive), falling back to the default, so clients
/// that send no SNI (many Electrum wallets connect by IP) still get a certificate.
#[derive(Debug)]
pub struct SniResolver {
    default: Arc<LiveCert>,
    by_name: HashMap<String, Arc<LiveCert>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            if let Some(live) = self.by_name.get(&name.to_ascii_lowercase()) {
                return Some(live.current.load().key.clone());
            }
        }
        Some(self.default.current.load().key.clone())
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

/// Where one certificate of a front comes from.
#[derive(Debug, Clone)]
pub enum CertOrigin {
    Files(CertFiles),
    /// A certificate of `[[acme.certificate]]`, by name; the ACME client keeps its slot current.
    Acme(String),
}

/// One certificate of a front (the default, or one SNI name's) and what was last loaded from it.
struct Watched {
    name: Option<String>,
    origin: CertOrigin,
    live: Arc<LiveCert>,
    state: std::sync::Mutex<WatchedState>,
}

struct WatchedState {
    loaded: (Option<Stamp>, Option<Stamp>),
    /// The file state last warned about, so a bad pair is reported once, not every poll.
    warned: Option<(Option<Stamp>, Option<Stamp>)>,
}

/// A front's certificates, reloaded from disk when their files change (certificate renewal needs no
/// action from the operator). Handshakes read the current set through one atomic load; existing
/// sessions keep the certificate they were made with.
pub struct CertWatch {
    watched: Vec<Watched>,
    resolver: SniResolver,
    /// Answers TLS-ALPN-01 validation handshakes when the front serves an ACME certificate.
    challenge: Option<Arc<ServerConfig>>,
}

impl std::fmt::Debug for CertWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertWatch")
            .field("certificates", &self.watched.len())
            .finish()
    }
}

/// One certificate of a front as served now, for metrics and `gatehouse certs`.
#[derive(Debug, Clone)]
pub struct FrontCert {
    /// The SNI name it is chosen for (None: the default).
    pub sni: Option<String>,
    /// The `[[acme.certificate]]` name, for ACME certificates.
    pub acme: Option<String>,
    pub served: Arc<Served>,
}

impl CertWatch {
    /// Reloads every certificate whose files changed and now form a valid pair. A half-written or
    /// mismatched pair is skipped with one warning and retried at the next check. Returns how many
    /// certificates were replaced.
    pub fn check(&self) -> usize {
        let mut replaced = 0;
        for w in &self.watched {
            let CertOrigin::Files(files) = &w.origin else {
                continue;
            };
            let now = (stamp(&files.cert), stamp(&files.key));
            let mut st = w.state.lock().unwrap_or_else(|p| p.into_inner());
            if now == st.loaded {
                continue;
            }
            match load_certified_key(files) {
                Ok(ck) => {
                    w.live.store(Served::new(ck, CertSource::File));
                    st.loaded = now;
                    st.warned = None;
                    replaced += 1;
                    tracing::info!(cert = %files.cert.display(), sni = w.name.as_deref().unwrap_or("(default)"), "certificate reloaded");
                }
                Err(e) => {
                    if st.warned != Some(now) {
                        st.warned = Some(now);
                        tracing::warn!(error = %e, "changed certificate files are not a valid pair yet; still serving the previous certificate");
                    }
                }
            }
        }
        replaced
    }

    /// Every certificate of the front as served now, the default first.
    pub fn certificates(&self) -> Vec<FrontCert> {
        self.watched
            .iter()
            .map(|w| FrontCert {
                sni: w.name.clone(),
                acme: match &w.origin {
                    CertOrigin::Acme(n) => Some(n.clone()),
                    CertOrigin::Files(_) => None,
                },
                served: w.live.load(),
            })
            .collect()
    }

    /// The server config for handshakes that offer ALPN `acme-tls/1` (RFC 8737), when this front serves
    /// an ACME certificate.
    pub fn challenge_config(&self) -> Option<&Arc<ServerConfig>> {
        self.challenge.as_ref()
    }
}

impl ResolvesServerCert for CertWatch {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.resolver.resolve(hello)
    }
}

/// One certificate of a front as configured: where it comes from and its slot.
pub struct LoadedCert {
    pub name: Option<String>,
    pub origin: CertOrigin,
    pub live: Arc<LiveCert>,
}

impl LoadedCert {
    /// A certificate from files, already loaded and proven a pair.
    pub fn files(name: Option<String>, files: CertFiles, key: Arc<CertifiedKey>) -> LoadedCert {
        LoadedCert {
            name,
            origin: CertOrigin::Files(files),
            live: Arc::new(LiveCert::new(Served::new(key, CertSource::File))),
        }
    }
}

/// Builds a server config that speaks TLS 1.2 and 1.3 only, serving `certs` (the first is the default,
/// the rest are chosen by SNI name; at least one is required), and the watch that keeps them current.
/// `challenge` answers TLS-ALPN-01 validations (given when a certificate is ACME's).
pub fn server_config(
    certs: Vec<LoadedCert>,
    challenge: Option<Arc<ServerConfig>>,
) -> (Arc<ServerConfig>, Arc<CertWatch>) {
    let watched: Vec<Watched> = certs
        .into_iter()
        .map(|c| {
            let loaded = match &c.origin {
                CertOrigin::Files(f) => (stamp(&f.cert), stamp(&f.key)),
                CertOrigin::Acme(_) => (None, None),
            };
            Watched {
                state: std::sync::Mutex::new(WatchedState { loaded, warned: None }),
                name: c.name,
                origin: c.origin,
                live: c.live,
            }
        })
        .collect();
    let resolver = SniResolver {
        default: watched[0].live.clone(),
        by_name: watched[1..]
            .iter()
            .filter_map(|w| w.name.as_ref().map(|n| (n.to_ascii_lowercase(), w.live.clone())))
            .collect(),
    };
    let watch = Arc::new(CertWatch {
        watched,
        resolver,
        challenge,
    });
    let mut cfg = base_config().with_cert_resolver(watch.clone());
    // Wallets reconnect often; tickets make reconnects cheap without server-side state per client.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    // One ticket is enough for the one reconnect a wallet makes at a time; each extra ticket is paid on
    // every full handshake.
    cfg.send_tls13_tickets = 1;
    (Arc::new(cfg), watch)
}

/// TLS 1.2 and 1.3 with aws-lc-rs, no client certificates: every server config of the gateway.
pub fn base_config() -> rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert> {
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
}
