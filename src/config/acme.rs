//! `[acme]` and the fronts' `[front.tls]` certificates (files or ACME), validated into
//! `listen::acme::AcmeSettings` and the fronts' TLS configs.

use super::schema::{RawAcme, RawTls};
use super::{journal_writable, ConfigError, Validator};
use crate::front::Front;
use crate::listen::acme::{self, AcmeCert, AcmeSettings, Challenge};
use crate::listen::tls::{self, CertFiles, LoadedCert};
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use toml::Spanned;

impl Validator<'_> {
    pub(super) fn acme(&self, raw: Option<&RawAcme>) -> Result<Option<AcmeSettings>, ConfigError> {
        let Some(a) = raw else { return Ok(None) };
        let directory = match &a.directory {
            None => acme::DEFAULT_DIRECTORY.to_string(),
            Some(d) => {
                let ok = d
                    .get_ref()
                    .parse::<http::Uri>()
                    .is_ok_and(|u| u.scheme_str() == Some("https") && u.host().is_some());
                if !ok {
                    return Err(self.err(
                        "acme.directory",
                        Some(d.span()),
                        "must be an https:// URL (RFC 8555 directories are served over HTTPS)",
                    ));
                }
                d.get_ref().clone()
            }
        };
        for (i, c) in a.contact.iter().enumerate() {
            let v = c.get_ref();
            if !v.starts_with("mailto:") || v.len() <= "mailto:".len() || v.contains([' ', ',']) {
                return Err(self.err(
                    format!("acme.contact[{i}]"),
                    Some(c.span()),
                    "must be one mailto: URL, e.g. \"mailto:ops@example.com\"",
                ));
            }
        }
        let state_dir = self.path(a.state_dir.get_ref());
        journal_writable(&state_dir.join("acme.check"))
            .map_err(|r| self.err("acme.state_dir", Some(a.state_dir.span()), r.to_string()))?;
        let ca_root = match &a.ca_root {
            None => None,
            Some(p) => {
                let path = self.path(p.get_ref());
                acme::load_roots(Some(&path)).map_err(|e| self.err("acme.ca_root", Some(p.span()), e.to_string()))?;
                Some(path)
            }
        };
        let challenge = a.challenge.as_ref().map_or(Challenge::TlsAlpn01, |c| *c.get_ref());
        let http_listen = match (&a.http_listen, challenge) {
            (None, Challenge::Http01) => {
                return Err(self.err(
                    "acme.http_listen",
                    a.challenge.as_ref().map(Spanned::span),
                    "challenge = \"http-01\" needs http_listen (the CA connects to port 80)",
                ))
            }
            (Some(h), Challenge::TlsAlpn01) => {
                return Err(self.err(
                    "acme.http_listen",
                    Some(h.span()),
                    "is only used with challenge = \"http-01\"",
                ))
            }
            (None, _) => None,
            (Some(h), _) => Some(h.get_ref().parse::<SocketAddr>().map_err(|_| {
                self.err(
                    "acme.http_listen",
                    Some(h.span()),
                    "expected IP:PORT, e.g. \"0.0.0.0:80\"",
                )
            })?),
        };
        let time = |v: &Option<Spanned<crate::wire::units::Duration>>, k: &str, d: std::time::Duration| match v {
            None => Ok(d),
            Some(x) if x.get_ref().0.is_zero() => {
                Err(self.err(format!("acme.{k}"), Some(x.span()), "must be greater than 0s"))
            }
            Some(x) => Ok(x.get_ref().0),
        };
        let retry_min = time(&a.retry_min, "retry_min", acme::DEFAULT_RETRY_MIN)?;
        let retry_max = time(&a.retry_max, "retry_max", acme::DEFAULT_RETRY_MAX)?;
        let orderer_grace = time(&a.orderer_grace, "orderer_grace", acme::DEFAULT_ORDERER_GRACE)?;
        if retry_max < retry_min {
            return Err(self.err(
                "acme.retry_max",
                a.retry_max.as_ref().map(Spanned::span),
                "must not be shorter than retry_min",
            ));
        }
        if a.certificates.is_empty() {
            return Err(self.err(
                "acme.certificate",
                None,
                "at least one [[acme.certificate]] is required",
            ));
        }
        if a.certificates.len() > acme::MAX_CERTIFICATES {
            return Err(self.err(
                "acme.certificate",
                None,
                format!("at most {} certificates", acme::MAX_CERTIFICATES),
            ));
        }
        let mut certificates: Vec<AcmeCert> = Vec::new();
        for (i, c) in a.certificates.iter().enumerate() {
            let key = format!("acme.certificate[{i}]");
            let name = c.name.get_ref();
            acme::check_cert_name(name).map_err(|r| self.err(format!("{key}.name"), Some(c.name.span()), r))?;
            if certificates.iter().any(|o| &o.name == name) {
                return Err(self.err(
                    format!("{key}.name"),
                    Some(c.name.span()),
                    format!("duplicate certificate name `{name}`"),
                ));
            }
            let domains = c.domains.get_ref();
            if domains.is_empty() || domains.len() > acme::MAX_DOMAINS {
                return Err(self.err(
                    format!("{key}.domains"),
                    Some(c.domains.span()),
                    format!("needs 1 to {} names", acme::MAX_DOMAINS),
                ));
            }
            let mut lower: Vec<String> = Vec::with_capacity(domains.len());
            for (j, d) in domains.iter().enumerate() {
                acme::check_domain(d).map_err(|r| {
                    self.err(
                        format!("{key}.domains[{j}]"),
                        Some(c.domains.span()),
                        format!("`{d}` {r}"),
                    )
                })?;
                let d = d.to_ascii_lowercase();
                if !lower.contains(&d) {
                    lower.push(d);
                }
            }
            certificates.push(AcmeCert {
                name: name.clone(),
                domains: lower,
            });
        }
        Ok(Some(AcmeSettings {
            directory,
            contact: a.contact.iter().map(|c| c.get_ref().clone()).collect(),
            state_dir,
            ca_root,
            challenge,
            http_listen,
            retry_min,
            retry_max,
            orderer_grace,
            certificates,
        }))
    }

    /// One certificate of a front: files (`cert` and `key`) or an `[acme]` certificate (`acme`).
    fn front_cert(
        &self,
        key: &str,
        name: Option<String>,
        cert: &Option<Spanned<PathBuf>>,
        keyf: &Option<Spanned<PathBuf>>,
        acme_ref: &Option<Spanned<String>>,
    ) -> Result<LoadedCert, ConfigError> {
        match (cert, keyf, acme_ref) {
            (Some(cert), Some(keyf), None) => {
                let files = CertFiles {
                    cert: self.path(cert.get_ref()),
                    key: self.path(keyf.get_ref()),
                };
                let loaded = tls::load_certified_key(&files).map_err(|e| {
                    let (field, span) = match e {
                        tls::TlsError::Cert { .. } => ("cert", cert.span()),
                        tls::TlsError::Key { .. } | tls::TlsError::Mismatch { .. } => ("key", keyf.span()),
                    };
                    self.err(format!("{key}.{field}"), Some(span), e.to_string())
                })?;
                Ok(LoadedCert::files(name, files, loaded))
            }
            (None, None, Some(r)) => {
                let Some(settings) = &self.acme else {
                    return Err(self.err(
                        format!("{key}.acme"),
                        Some(r.span()),
                        "names an ACME certificate, but there is no [acme] section",
                    ));
                };
                let Some(spec) = settings.certificates.iter().find(|c| &c.name == r.get_ref()) else {
                    return Err(self.err(
                        format!("{key}.acme"),
                        Some(r.span()),
                        format!("no [[acme.certificate]] is named `{}`", r.get_ref()),
                    ));
                };
                let live = acme::registry(&settings.state_dir)
                    .slot(spec)
                    .map_err(|e| self.err(format!("{key}.acme"), Some(r.span()), e.to_string()))?;
                Ok(LoadedCert {
                    name,
                    origin: tls::CertOrigin::Acme(spec.name.clone()),
                    live,
                })
            }
            (_, _, Some(r)) => Err(self.err(
                format!("{key}.acme"),
                Some(r.span()),
                "give either acme or cert and key, not both",
            )),
            (Some(c), None, None) => Err(self.err(format!("{key}.key"), Some(c.span()), "cert needs a key")),
            (None, Some(k), None) => Err(self.err(format!("{key}.cert"), Some(k.span()), "key needs a cert")),
            (None, None, None) => Err(self.err(key, None, "needs cert and key, or acme")),
        }
    }

    pub(super) fn tls(&self, key: &str, t: &RawTls) -> Result<(Arc<ServerConfig>, Arc<tls::CertWatch>), ConfigError> {
        let mut certs = vec![self.front_cert(key, None, &t.cert, &t.key, &t.acme)?];
        for (i, s) in t.sni.iter().enumerate() {
            if s.name.is_empty() {
                return Err(self.err(format!("{key}.sni[{i}].name"), None, "must not be empty"));
            }
            // A routed name may be covered by the default certificate (a wildcard or several names).
            if s.route.is_some() && s.cert.is_none() && s.key.is_none() && s.acme.is_none() {
                continue;
            }
            certs.push(self.front_cert(
                &format!("{key}.sni[{i}]"),
                Some(s.name.clone()),
                &s.cert,
                &s.key,
                &s.acme,
            )?);
        }
        // A front serving an ACME certificate answers TLS-ALPN-01 validations for it.
        let challenge = match &self.acme {
            Some(a) if a.challenge == Challenge::TlsAlpn01 => certs
                .iter()
                .any(|c| matches!(c.origin, tls::CertOrigin::Acme(_)))
                .then(|| acme::registry(&a.state_dir).challenge_config()),
            _ => None,
        };
        Ok(tls::server_config(certs, challenge))
    }

    /// With TLS-ALPN-01 the CA validates on a TLS front serving the certificate: one must exist.
    pub(super) fn acme_served(&self, fronts: &[Front]) -> Result<(), ConfigError> {
        let Some(a) = &self.acme else { return Ok(()) };
        if a.challenge != Challenge::TlsAlpn01 {
            return Ok(());
        }
        for (i, c) in a.certificates.iter().enumerate() {
            let served = fronts.iter().any(|f| {
                f.cert_watch
                    .as_ref()
                    .is_some_and(|w| w.certificates().iter().any(|fc| fc.acme.as_deref() == Some(&c.name)))
            });
            if !served {
                return Err(self.err(
                    format!("acme.certificate[{i}].name"),
                    None,
                    format!(
                        "no TLS front serves `{}` ([front.tls] acme = \"{}\"), so nothing can answer its \
                         tls-alpn-01 validation (the CA connects to port 443)",
                        c.name, c.name
                    ),
                ));
            }
        }
        Ok(())
    }
}
