//! What the ACME client shares with the fronts of one state folder: each certificate's slot (served by
//! every front that names it), the challenge answers being offered, and each certificate's renewal
//! status. One registry per state folder lives for the process, so a reload's new front settings find
//! the slots the running client keeps current.

use super::settings::AcmeCert;
use super::store;
use crate::listen::tls::{self, CertSource, LiveCert, Served};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Most challenge answers offered at once: one per name of the orders in flight.
const MAX_CHALLENGES: usize = super::settings::MAX_CERTIFICATES * super::settings::MAX_DOMAINS;

/// Where one certificate's renewal stands, for `gatehouse certs` and the log.
#[derive(Debug, Clone, Default)]
pub struct CertStatus {
    /// When the next order is due (Unix seconds).
    pub next_attempt: Option<i64>,
    /// Orders failed since the last success.
    pub failures: u32,
    pub last_error: Option<String>,
    /// The cluster peer whose order this gateway serves (None: ordered here).
    pub ordered_by: Option<String>,
}

pub struct Registry {
    state_dir: PathBuf,
    slots: Mutex<HashMap<String, Arc<LiveCert>>>,
    status: Mutex<HashMap<String, CertStatus>>,
    /// HTTP-01: token → key authorization.
    http: Mutex<HashMap<String, String>>,
    alpn: Arc<AlpnChallenges>,
    challenge_config: Arc<ServerConfig>,
}

static REGISTRIES: LazyLock<Mutex<HashMap<PathBuf, Arc<Registry>>>> = LazyLock::new(Default::default);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The registry of a state folder (made on first use).
pub fn registry(state_dir: &Path) -> Arc<Registry> {
    let mut all = lock(&REGISTRIES);
    all.entry(state_dir.to_path_buf())
        .or_insert_with(|| {
            let alpn = Arc::new(AlpnChallenges::default());
            let mut cfg = tls::base_config().with_cert_resolver(alpn.clone());
            cfg.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
            Arc::new(Registry {
                state_dir: state_dir.to_path_buf(),
                slots: Mutex::default(),
                status: Mutex::default(),
                http: Mutex::default(),
                alpn,
                challenge_config: Arc::new(cfg),
            })
        })
        .clone()
}

/// Whether `served` can stand for `cert` now: issued (not a placeholder), unexpired and naming every domain.
pub(crate) fn usable(served: &Served, cert: &AcmeCert, now: i64) -> bool {
    served.info.source == CertSource::Acme
        && served.info.not_after > now
        && cert
            .domains
            .iter()
            .all(|d| served.info.names.iter().any(|n| n.eq_ignore_ascii_case(d)))
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Registry {
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The slot fronts serve `cert` from: on first use, the certificate kept in the state folder when it
    /// is still good for the names, else a self-signed placeholder until the first order succeeds.
    pub fn slot(&self, cert: &AcmeCert) -> Result<Arc<LiveCert>, rcgen::Error> {
        let mut slots = lock(&self.slots);
        if let Some(s) = slots.get(&cert.name) {
            return Ok(s.clone());
        }
        let served = match store::load_cert(&self.state_dir, &cert.name) {
            Some(s) if usable(&s, cert, unix_now()) => s,
            _ => placeholder(&cert.domains)?,
        };
        let live = Arc::new(LiveCert::new(served));
        slots.insert(cert.name.clone(), live.clone());
        Ok(live)
    }

    /// The slots made so far, by certificate name.
    pub fn slots(&self) -> Vec<(String, Arc<LiveCert>)> {
        let mut v: Vec<_> = lock(&self.slots).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn status(&self, name: &str) -> CertStatus {
        lock(&self.status).get(name).cloned().unwrap_or_default()
    }

    /// Sets where the renewal stands; who ordered the certificate is kept as last recorded.
    pub(crate) fn set_status(&self, name: &str, mut st: CertStatus) {
        let mut all = lock(&self.status);
        if let Some(old) = all.get(name) {
            st.ordered_by = st.ordered_by.or_else(|| old.ordered_by.clone());
        }
        all.insert(name.to_string(), st);
    }

    pub(crate) fn set_ordered_by(&self, name: &str, peer: Option<String>) {
        lock(&self.status).entry(name.to_string()).or_default().ordered_by = peer;
    }

    /// The server config for `acme-tls/1` handshakes: it serves only the challenge certificates.
    pub fn challenge_config(&self) -> Arc<ServerConfig> {
        self.challenge_config.clone()
    }

    /// The key authorization for an HTTP-01 token being offered.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        lock(&self.http).get(token).cloned()
    }

    pub(crate) fn offer_http(&self, token: &str, key_authorization: &str) -> bool {
        let mut m = lock(&self.http);
        if m.len() >= MAX_CHALLENGES {
            return false;
        }
        m.insert(token.to_string(), key_authorization.to_string());
        true
    }

    pub(crate) fn withdraw_http(&self, token: &str) {
        lock(&self.http).remove(token);
    }

    pub(crate) fn offer_alpn(&self, domain: &str, digest: &[u8]) -> Result<bool, rcgen::Error> {
        let ck = challenge_cert(domain, digest)?;
        let mut m = lock(&self.alpn.by_name);
        if m.len() >= MAX_CHALLENGES {
            return Ok(false);
        }
        m.insert(domain.to_ascii_lowercase(), ck);
        Ok(true)
    }

    pub(crate) fn withdraw_alpn(&self, domain: &str) {
        lock(&self.alpn.by_name).remove(&domain.to_ascii_lowercase());
    }
}

/// The TLS-ALPN-01 certificates offered now, by name. Read only by validation handshakes.
#[derive(Debug, Default)]
struct AlpnChallenges {
    by_name: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for AlpnChallenges {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        lock(&self.by_name).get(&name).cloned()
    }
}

fn certified(cert: rcgen::Certificate, key: &rcgen::KeyPair) -> Result<Arc<CertifiedKey>, rcgen::Error> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = tls::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|_| rcgen::Error::CouldNotParseKeyPair)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signing,
    )))
}

/// RFC 8737 §3: a self-signed certificate for `domain` carrying the SHA-256 of the key authorization in
/// the critical acmeIdentifier extension.
fn challenge_cert(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    certified(cert, &key)
}

/// A self-signed stand-in for the names, served until the first order succeeds, so the TLS front can
/// listen (and answer TLS-ALPN-01) from the start.
pub(crate) fn placeholder(domains: &[String]) -> Result<Served, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(domains.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Gatehouse placeholder (ACME order pending)");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Served::new(certified(cert, &key)?, CertSource::Placeholder))
}
