//! The certificates the gateway serves, as `GET /v1/certs`, `/readyz` and the expiry metrics see them:
//! every front's certificates (files and ACME) and the ACME certificates no front serves yet.

use super::api::{CertEntry, CertList};
use crate::front::FrontSlot;
use crate::listen::acme::Registry;
use crate::listen::tls::CertSource;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::sync::Arc;

/// Where the certificates are read from; follows reloads.
#[derive(Clone)]
pub struct Certs {
    fronts: Arc<ArcSwap<Vec<Arc<FrontSlot>>>>,
    acme: Arc<ArcSwapOption<Registry>>,
}

impl Certs {
    pub fn new(fronts: Arc<ArcSwap<Vec<Arc<FrontSlot>>>>, acme: Arc<ArcSwapOption<Registry>>) -> Certs {
        Certs { fronts, acme }
    }

    pub fn list(&self) -> CertList {
        let registry = self.acme.load_full();
        let mut out = Vec::new();
        let mut served_acme: Vec<String> = Vec::new();
        for slot in self.fronts.load().iter() {
            let st = slot.state.load();
            let Some(w) = &st.cfg.cert_watch else { continue };
            for c in w.certificates() {
                let status = match (&c.acme, &registry) {
                    (Some(n), Some(r)) => {
                        served_acme.push(n.clone());
                        Some(r.status(n))
                    }
                    _ => None,
                };
                let info = &c.served.info;
                out.push(CertEntry {
                    front: Some(st.cfg.name.clone()),
                    name: c
                        .acme
                        .clone()
                        .or_else(|| c.sni.clone())
                        .unwrap_or_else(|| "default".to_string()),
                    sni: c.sni.clone(),
                    source: info.source.as_str().to_string(),
                    issuer: info.issuer.clone(),
                    names: info.names.clone(),
                    not_before: info.not_before,
                    not_after: info.not_after,
                    next_renewal: status.as_ref().and_then(|s| s.next_attempt),
                    failures: status.as_ref().map_or(0, |s| s.failures),
                    ordered_by: status.as_ref().and_then(|s| s.ordered_by.clone()),
                    last_error: status.and_then(|s| s.last_error),
                });
            }
        }
        if let Some(r) = &registry {
            for (name, live) in r.slots() {
                if served_acme.contains(&name) {
                    continue;
                }
                let served = live.load();
                let status = r.status(&name);
                out.push(CertEntry {
                    front: None,
                    name,
                    sni: None,
                    source: served.info.source.as_str().to_string(),
                    issuer: served.info.issuer.clone(),
                    names: served.info.names.clone(),
                    not_before: served.info.not_before,
                    not_after: served.info.not_after,
                    next_renewal: status.next_attempt,
                    failures: status.failures,
                    ordered_by: status.ordered_by,
                    last_error: status.last_error,
                });
            }
        }
        CertList { certificates: out }
    }

    /// Why `/readyz` adds a remark: certificates still served as self-signed placeholders.
    pub fn placeholders(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .list()
            .certificates
            .into_iter()
            .filter(|c| c.source == CertSource::Placeholder.as_str())
            .map(|c| c.name)
            .collect();
        names.dedup();
        names
    }
}
