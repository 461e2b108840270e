//! The HTTPS transport under `instant-acme`: hyper over tokio-rustls with the gateway's own aws-lc-rs
//! provider (no second TLS stack), the web's roots or the operator's `ca_root`, bounded replies, and a
//! record of the server's last `Retry-After` so a rate-limited order waits as long as the CA asks.

use bytes::Bytes;
use http::Request;
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// One request (connect, handshake, answer) may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest reply read from the CA (a certificate chain is a few KiB).
const MAX_REPLY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: no usable PEM certificate")]
    Empty { path: String },
}

/// The roots the directory's certificate must chain to: the operator's file, or the web's.
pub fn roots(ca_root: Option<&Path>) -> Result<rustls::RootCertStore, RootsError> {
    let mut store = rustls::RootCertStore::empty();
    match ca_root {
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let show = path.display().to_string();
            let data = std::fs::read(path).map_err(|source| RootsError::Read {
                path: show.clone(),
                source,
            })?;
            for der in CertificateDer::pem_slice_iter(&data).flatten() {
                let _ = store.add(der);
            }
            if store.is_empty() {
                return Err(RootsError::Empty { path: show });
            }
        }
    }
    Ok(store)
}

/// When the CA last asked to be left alone (`Retry-After`), shared with the renewal loop.
#[derive(Debug, Clone, Default)]
pub struct RetryAfter(Arc<Mutex<Option<SystemTime>>>);

impl RetryAfter {
    /// The time asked for, once: a later order is not held back by an old answer.
    pub fn take(&self) -> Option<SystemTime> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
    fn set(&self, t: SystemTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
    }
}

fn parse_retry_after(v: &str) -> Option<SystemTime> {
    let v = v.trim();
    match v.parse::<u64>() {
        Ok(secs) => Some(SystemTime::now() + Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(v).ok(),
    }
}

pub struct Https {
    tls: tokio_rustls::TlsConnector,
    retry_after: RetryAfter,
}

impl Https {
    pub fn new(roots: rustls::RootCertStore, retry_after: RetryAfter) -> Https {
        let cfg = rustls::ClientConfig::builder_with_provider(crate::listen::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Https {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            retry_after,
        }
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Other(Box::new(e))
}

async fn send(
    tls: tokio_rustls::TlsConnector,
    retry_after: RetryAfter,
    mut req: Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, Error> {
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("https") {
        return Err(Error::Str("the ACME directory and its URLs must be https"));
    }
    let host = uri.host().ok_or(Error::Str("URL without a host"))?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(other)?;
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string()).map_err(other)?;
    let stream = tls.connect(name, tcp).await.map_err(other)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(other)?;
    tokio::spawn(conn);
    // HTTP/1.1 on a connection of our own: origin-form target and a Host header.
    let authority = uri.authority().map(|a| a.as_str().to_string()).unwrap_or(host);
    let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    *req.uri_mut() = target.parse().map_err(other)?;
    req.headers_mut().insert(
        http::header::HOST,
        http::HeaderValue::from_str(&authority).map_err(other)?,
    );
    let rsp = sender.send_request(req).await.map_err(other)?;
    if let Some(t) = rsp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
    {
        retry_after.set(t);
    }
    let (parts, body) = rsp.into_parts();
    let body = http_body_util::Limited::new(body, MAX_REPLY);
    Ok(BytesResponse::from(http::Response::from_parts(parts, body)))
}

impl HttpClient for Https {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let (tls, retry_after) = (self.tls.clone(), self.retry_after.clone());
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, send(tls, retry_after, req)).await {
                Ok(r) => r,
                Err(_) => Err(Error::Str("the ACME server did not answer in time")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let t = parse_retry_after("120").unwrap();
        let d = t.duration_since(SystemTime::now()).unwrap();
        assert!(d > Duration::from_secs(110) && d <= Duration::from_secs(120));
        let t = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_445_412_480
        );
        assert!(parse_retry_after("soon").is_none());
    }
}
