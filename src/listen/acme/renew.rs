//! The renewal loop: one task per certificate. It orders at once when the slot holds no usable
//! certificate, otherwise at two thirds of the lifetime (less a random part of a twentieth, so a fleet
//! does not renew in step); a failed order keeps the old certificate, is a warning, and is retried after
//! a doubling wait (or as long as the CA's `Retry-After` asks, when longer).

use super::client::{self, Https, RetryAfter};
use super::http01;
use super::issue;
use super::registry::{self, unix_now, usable, CertStatus, Registry};
use super::settings::{AcmeCert, AcmeSettings, EXPIRY_ALARM, ORDER_TIMEOUT};
use super::store;
use crate::listen::tls::{CertInfo, CertSource, LiveCert};
use crate::telemetry::metrics;
use crate::wire::acme::AcmeShare;
use rand_core::RngCore;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum AcmeStartError {
    #[error(transparent)]
    Roots(#[from] client::RootsError),
    #[error("acme.http_listen: cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("acme.certificate `{name}`: cannot make its placeholder: {source}")]
    Placeholder { name: String, source: rcgen::Error },
}

/// The cluster's other gateways, as the ACME client reaches them: one gateway (`orders`) orders every
/// certificate and shares it; the others serve what it shares and answer the challenges it offers.
#[derive(Clone)]
pub struct Peers {
    pub orders: bool,
    pub send: Arc<issue::Share>,
    /// Messages from peers, with the sender's id; shared by the clients a reload starts in turn.
    pub inbound: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<(String, AcmeShare)>>>,
}

/// How often a gateway that does not order asks the orderer for a certificate it lacks.
const ASK_EVERY: Duration = Duration::from_secs(2);

/// The running ACME client; stopped (its tasks and the HTTP-01 listener) by [`AcmeRun::stop`] or drop.
pub struct AcmeRun {
    settings: AcmeSettings,
    peers: Option<Peers>,
    registry: Arc<Registry>,
    stop: CancellationToken,
    http_addr: Option<std::net::SocketAddr>,
}

impl Drop for AcmeRun {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What every certificate task of one run shares.
struct Ctx {
    settings: AcmeSettings,
    registry: Arc<Registry>,
    account: OnceCell<instant_acme::Account>,
    roots: rustls::RootCertStore,
    retry_after: RetryAfter,
    peers: Option<Peers>,
}

impl AcmeRun {
    /// Starts a task per certificate and, for HTTP-01, the challenge listener. Must run inside tokio.
    pub async fn start(settings: AcmeSettings, peers: Option<Peers>) -> Result<AcmeRun, AcmeStartError> {
        let registry = registry::registry(&settings.state_dir);
        let roots = client::roots(settings.ca_root.as_deref())?;
        let stop = CancellationToken::new();
        let mut http_addr = None;
        if let Some(addr) = settings.http_listen {
            let l = bind_retrying(addr)
                .await
                .map_err(|source| AcmeStartError::Bind { addr, source })?;
            http_addr = l.local_addr().ok();
            tokio::spawn(http01::serve(l, registry.clone(), stop.clone()));
        }
        let ctx = Arc::new(Ctx {
            settings: settings.clone(),
            registry: registry.clone(),
            account: OnceCell::new(),
            roots,
            retry_after: RetryAfter::default(),
            peers: peers.clone(),
        });
        if peers.is_some() {
            tokio::spawn(listen_to_peers(ctx.clone(), stop.clone()));
        }
        for cert in &settings.certificates {
            let slot = registry.slot(cert).map_err(|source| AcmeStartError::Placeholder {
                name: cert.name.clone(),
                source,
            })?;
            tokio::spawn(keep(ctx.clone(), cert.clone(), slot, stop.clone()));
        }
        Ok(AcmeRun {
            settings,
            peers,
            registry,
            stop,
            http_addr,
        })
    }

    pub fn settings(&self) -> &AcmeSettings {
        &self.settings
    }

    /// The cluster hookup, for the client a reload starts next.
    pub fn peers(&self) -> Option<Peers> {
        self.peers.clone()
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The HTTP-01 listener's address as bound (port 0 resolved).
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http_addr
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Binds the HTTP-01 port, waiting up to a second while it is still held: on a reload the stopped
/// client's listener closes a moment after it is told to.
async fn bind_retrying(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let mut tries = 0;
    loop {
        match crate::listen::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return r,
        }
    }
}

/// When a certificate valid from `not_before` to `not_after` is renewed: at two thirds of its lifetime,
/// less up to a twentieth of it drawn at random.
pub fn renew_at(info: &CertInfo, random: u64) -> i64 {
    let life = (info.not_after - info.not_before).max(0);
    let jitter = match life / 20 {
        0 => 0,
        j => (random % j as u64) as i64,
    };
    info.not_before + life * 2 / 3 - jitter
}

/// When a gateway that does not order starts asking for a renewed certificate: at three quarters of the
/// lifetime, after the orderer's whole renewal window (two thirds, less up to a twentieth), so the
/// orderer's own jitter never looks like an absent orderer.
pub fn follower_due(info: &CertInfo) -> i64 {
    let life = (info.not_after - info.not_before).max(0);
    info.not_before + life * 3 / 4
}

/// The wait after the `failures`-th failure in a row: `retry_min` doubled per earlier failure, at most
/// `retry_max`, and never shorter than the CA asked.
pub fn backoff(min: Duration, max: Duration, failures: u32, asked: Option<Duration>) -> Duration {
    let doubled = min.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    doubled.min(max).max(asked.unwrap_or_default())
}

async fn attempt(ctx: &Ctx, cert: &AcmeCert) -> Result<(), issue::IssueError> {
    let account = ctx
        .account
        .get_or_try_init(|| issue::account(&ctx.settings, Https::new(ctx.roots.clone(), ctx.retry_after.clone())))
        .await?;
    let share = ctx.peers.as_ref().map(|p| &*p.send);
    let issued = issue::order(account, ctx.settings.challenge, &ctx.registry, cert, share).await?;
    store::save_cert(&ctx.settings.state_dir, &cert.name, &issued.chain_pem, &issued.key_pem)?;
    if let Some(p) = &ctx.peers {
        (p.send)(AcmeShare::Certificate {
            name: cert.name.clone(),
            chain_pem: issued.chain_pem,
            key_pem: issued.key_pem,
        });
    }
    Ok(())
}

/// A gateway that does not order: serves what the orderer shares, asking for it while it lacks a usable
/// certificate or the one it has is due for renewal. Returns (so this gateway orders itself) when that has
/// lasted `orderer_grace`: an orderer gone for good must not let the cluster's certificates expire.
async fn follow(ctx: &Ctx, peers: &Peers, cert: &AcmeCert, slot: &LiveCert, stop: &CancellationToken) -> bool {
    let mut due_since: Option<std::time::Instant> = None;
    loop {
        let served = slot.load();
        let now = unix_now();
        let due = !usable(&served, cert, now) || now >= follower_due(&served.info);
        if !due {
            due_since = None;
        } else if due_since.get_or_insert_with(std::time::Instant::now).elapsed() >= ctx.settings.orderer_grace {
            tracing::warn!(certificate = %cert.name, grace_s = ctx.settings.orderer_grace.as_secs(), "no certificate from the cluster's orderer in time; ordering here");
            return true;
        }
        ctx.registry.set_status(
            &cert.name,
            CertStatus {
                next_attempt: None,
                failures: 0,
                last_error: due.then(|| "waiting for the cluster's orderer".to_string()),
                ordered_by: None,
            },
        );
        if due {
            (peers.send)(AcmeShare::Want {
                name: cert.name.clone(),
            });
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(ASK_EVERY) => {}
        }
    }
}

/// Takes what the cluster's other gateways send: challenge answers to offer, certificates from the
/// orderer, requests for this orderer's certificates.
async fn listen_to_peers(ctx: Arc<Ctx>, stop: CancellationToken) {
    let Some(peers) = ctx.peers.clone() else { return };
    let mut inbound = tokio::select! {
        _ = stop.cancelled() => return,
        g = peers.inbound.lock() => g,
    };
    loop {
        let (peer, m) = tokio::select! {
            _ = stop.cancelled() => return,
            m = inbound.recv() => match m {
                Some(m) => m,
                None => return,
            },
        };
        let registry = &ctx.registry;
        match m {
            AcmeShare::Http {
                token,
                key_authorization: Some(ka),
            } => {
                registry.offer_http(&token, &ka);
            }
            AcmeShare::Http { token, .. } => registry.withdraw_http(&token),
            AcmeShare::Alpn {
                domain,
                digest: Some(d),
            } => {
                if let Err(e) = registry.offer_alpn(&domain, &d) {
                    tracing::warn!(error = %e, "cannot make a TLS-ALPN-01 answer a peer offered");
                }
            }
            AcmeShare::Alpn { domain, .. } => registry.withdraw_alpn(&domain),
            AcmeShare::Certificate {
                name,
                chain_pem,
                key_pem,
            } if !peers.orders => {
                let Some(cert) = ctx.settings.certificates.iter().find(|c| c.name == name) else {
                    continue;
                };
                let Ok(slot) = registry.slot(cert) else { continue };
                let current = slot.load();
                let now = unix_now();
                // Checked under a name of its own first, so a stale or foreign pair never replaces the
                // files of the certificate in force.
                let incoming = format!("{name}.incoming");
                let dir = &ctx.settings.state_dir;
                let taken = store::save_cert(dir, &incoming, &chain_pem, &key_pem)
                    .ok()
                    .and_then(|()| store::load_cert(dir, &incoming))
                    .filter(|new| {
                        usable(new, cert, now)
                            && (!usable(&current, cert, now) || new.info.not_after > current.info.not_after)
                    });
                let files = store::cert_files(dir, &incoming);
                let _ = std::fs::remove_file(&files.cert);
                let _ = std::fs::remove_file(&files.key);
                let Some(new) = taken else { continue };
                if let Err(e) = store::save_cert(dir, &name, &chain_pem, &key_pem) {
                    tracing::warn!(certificate = %name, error = %e, "cannot keep the certificate a peer shared");
                    continue;
                }
                tracing::info!(certificate = %name, ordered_by = %peer, not_after = new.info.not_after, "certificate received from the cluster's orderer; new handshakes use it now");
                slot.store(new);
                registry.set_ordered_by(&name, Some(peer));
            }
            AcmeShare::Want { name } if peers.orders => {
                let Some(cert) = ctx.settings.certificates.iter().find(|c| c.name == name) else {
                    continue;
                };
                let files = store::cert_files(&ctx.settings.state_dir, &name);
                let served = registry.slot(cert).map(|s| s.load());
                if served.is_ok_and(|s| usable(&s, cert, unix_now())) {
                    if let (Ok(chain_pem), Ok(key_pem)) = (
                        std::fs::read_to_string(&files.cert),
                        std::fs::read_to_string(&files.key),
                    ) {
                        (peers.send)(AcmeShare::Certificate {
                            name,
                            chain_pem,
                            key_pem,
                        });
                    }
                }
            }
            _ => {}
        }
    }
}

async fn keep(ctx: Arc<Ctx>, cert: AcmeCert, slot: Arc<LiveCert>, stop: CancellationToken) {
    if let Some(p) = ctx.peers.clone().filter(|p| !p.orders) {
        if !follow(&ctx, &p, &cert, &slot, &stop).await {
            return;
        }
    }
    let name = cert.name.as_str();
    let mut failures = 0u32;
    let mut last_error: Option<String> = None;
    let mut retry_at: Option<i64> = None;
    let mut random = rand_core::OsRng.next_u64();
    if slot.load().info.source == CertSource::Placeholder {
        tracing::warn!(certificate = name, domains = ?cert.domains, "no valid ACME certificate yet: serving a self-signed placeholder until the order succeeds");
    }
    loop {
        let served = slot.load();
        let now = unix_now();
        let good = usable(&served, &cert, now);
        let due = match retry_at {
            Some(t) => t,
            None if good => renew_at(&served.info, random),
            None => now,
        };
        ctx.registry.set_status(
            name,
            CertStatus {
                next_attempt: Some(due),
                failures,
                last_error: last_error.clone(),
                ordered_by: None,
            },
        );
        if good && served.info.not_after - now < EXPIRY_ALARM.as_secs() as i64 {
            tracing::error!(
                certificate = name,
                expires_in_s = served.info.not_after - now,
                "ACME certificate expires within 7 days and is not renewed yet"
            );
        }
        let wait = Duration::from_secs(due.saturating_sub(now).max(0) as u64);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(ORDER_TIMEOUT, attempt(&ctx, &cert)) => match r {
                Ok(r) => r,
                Err(_) => Err(issue::IssueError::Timeout(ORDER_TIMEOUT)),
            },
        };
        let result = result.and_then(|()| {
            store::load_cert(&ctx.settings.state_dir, &cert.name).ok_or(issue::IssueError::Store(
                std::io::Error::other("the saved certificate does not load"),
            ))
        });
        match result {
            Ok(new) => {
                metrics::acme_order(true);
                tracing::info!(certificate = name, domains = ?cert.domains, issuer = %new.info.issuer, not_after = new.info.not_after, "ACME certificate issued; new handshakes use it now");
                slot.store(new);
                failures = 0;
                last_error = None;
                retry_at = None;
                random = rand_core::OsRng.next_u64();
            }
            Err(e) => {
                metrics::acme_order(false);
                failures = failures.saturating_add(1);
                let now_t = std::time::SystemTime::now();
                let asked = ctx.retry_after.take().and_then(|t| t.duration_since(now_t).ok());
                let wait = backoff(ctx.settings.retry_min, ctx.settings.retry_max, failures, asked);
                retry_at = Some(unix_now() + wait.as_secs().max(1) as i64);
                last_error = Some(e.to_string());
                if good {
                    tracing::warn!(certificate = name, error = %e, retry_in_s = wait.as_secs(), "ACME renewal failed; still serving the current certificate");
                } else {
                    tracing::warn!(certificate = name, error = %e, retry_in_s = wait.as_secs(), "ACME order failed; still serving the placeholder");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(nb: i64, na: i64) -> CertInfo {
        CertInfo {
            not_before: nb,
            not_after: na,
            issuer: String::new(),
            names: Vec::new(),
            source: CertSource::Acme,
        }
    }

    #[test]
    fn renews_at_two_thirds_less_jitter() {
        // 90 days: renewal 60 days in, up to 4.5 days earlier.
        let i = info(0, 90 * 86400);
        assert_eq!(renew_at(&i, 0), 60 * 86400);
        let r = renew_at(&i, u64::MAX);
        assert!(r <= 60 * 86400 && r > 60 * 86400 - 90 * 86400 / 20);
    }

    #[test]
    fn followers_ask_only_after_the_orderers_whole_window() {
        let i = info(0, 90 * 86400);
        assert!(follower_due(&i) > renew_at(&i, 0));
        assert_eq!(follower_due(&i), 90 * 86400 * 3 / 4);
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_honours_the_ca() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        assert_eq!(backoff(min, max, 1, None), min);
        assert_eq!(backoff(min, max, 3, None), Duration::from_secs(240));
        assert_eq!(backoff(min, max, 40, None), max);
        assert_eq!(
            backoff(min, max, 1, Some(Duration::from_secs(900))),
            Duration::from_secs(900)
        );
    }
}
