//! A small HTTP/1.1 client (hyper over TCP, rustls for `https://`) for feeds and the CrowdSec Local API:
//! one request per connection, a deadline on the whole exchange and a cap on the body read.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where Debian (and most distributions) keep the system's trusted roots.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("`{0}` is not an http:// or https:// URL with a host")]
    Url(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: std::io::Error },
    #[error("cannot connect to {host}: {source}")]
    Connect { host: String, source: std::io::Error },
    #[error("TLS with {host}: {source}")]
    Tls { host: String, source: std::io::Error },
    #[error("https:// needs trusted roots: {0}")]
    Roots(String),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the answer is larger than {cap} bytes")]
    TooLarge { cap: u64 },
}

/// A parsed `http(s)://host[:port]/path?query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    /// As written (brackets around an IPv6 literal kept), for the Host header.
    pub authority: String,
    /// Without brackets, for resolving and for TLS's server name.
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, HttpError> {
        let bad = || HttpError::Url(s.to_string());
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => default_port,
                None => return Err(bad()),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Url {
            tls,
            authority: authority.to_string(),
            host,
            port,
            path: path.to_string(),
        })
    }

    /// The URL with `path` (which starts with `/`) in place of this one's path.
    pub fn join(&self, path: &str) -> Url {
        let base = self.path.trim_end_matches('/');
        Url {
            path: format!("{base}{path}"),
            ..self.clone()
        }
    }
}

pub struct Response {
    pub status: StatusCode,
    pub body: Vec<u8>,
    /// The copy's `ETag` and `Last-Modified`, for asking next time whether it changed.
    pub validators: Validators,
}

/// What a server said identifies its copy; sent back as `If-None-Match` / `If-Modified-Since`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// Longest validator kept: a server's header is not a place to store megabytes.
const MAX_VALIDATOR: usize = 256;

impl Validators {
    fn of(headers: &hyper::HeaderMap) -> Validators {
        let get = |name: hyper::header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= MAX_VALIDATOR)
                .map(str::to_string)
        };
        Validators {
            etag: get(hyper::header::ETAG),
            last_modified: get(hyper::header::LAST_MODIFIED),
        }
    }

    /// The conditional request headers for these validators.
    pub fn conditions(&self) -> Vec<(&'static str, &str)> {
        let mut h = Vec::new();
        if let Some(e) = &self.etag {
            h.push(("If-None-Match", e.as_str()));
        }
        if let Some(m) = &self.last_modified {
            h.push(("If-Modified-Since", m.as_str()));
        }
        h
    }
}

/// A client for one kind of use: its roots, its deadline and its body cap.
#[derive(Clone)]
pub struct Client {
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    max_body: u64,
}

/// Loads PEM roots from `ca_file`, or the system bundle.
fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, HttpError> {
    let path: PathBuf = ca_file.map_or_else(|| PathBuf::from(SYSTEM_ROOTS), Path::to_path_buf);
    let data = std::fs::read(&path).map_err(|e| HttpError::Roots(format!("{}: {e}", path.display())))?;
    let mut store = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&data) {
        let c = c.map_err(|e| HttpError::Roots(format!("{}: {e}", path.display())))?;
        store
            .add(c)
            .map_err(|e| HttpError::Roots(format!("{}: {e}", path.display())))?;
    }
    if store.is_empty() {
        return Err(HttpError::Roots(format!("{}: no certificates", path.display())));
    }
    Ok(store)
}

impl Client {
    /// `tls`: whether `https://` will be used (then the roots are loaded now, so a bad CA file is an
    /// error at start rather than at the first fetch).
    pub fn new(tls: bool, ca_file: Option<&Path>, timeout: Duration, max_body: u64) -> Result<Client, HttpError> {
        let tls = if tls {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| HttpError::Roots(e.to_string()))?
                .with_root_certificates(roots(ca_file)?)
                .with_no_client_auth();
            Some(Arc::new(cfg))
        } else {
            None
        };
        Ok(Client { tls, timeout, max_body })
    }

    /// One request; the whole exchange (resolve, connect, TLS, headers, body) within the deadline.
    pub async fn request(
        &self,
        method: Method,
        url: &Url,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Response, HttpError> {
        tokio::time::timeout(self.timeout, self.exchange(method, url, headers, body))
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))?
    }

    async fn exchange(
        &self,
        method: Method,
        url: &Url,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Response, HttpError> {
        let addrs: Vec<_> = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .map_err(|source| HttpError::Resolve {
                host: url.host.clone(),
                source,
            })?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        let mut tcp = None;
        for a in addrs {
            match tokio::net::TcpStream::connect(a).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or_else(|| HttpError::Connect {
            host: url.authority.clone(),
            source: last,
        })?;
        let mut req = Request::builder()
            .method(method)
            .uri(url.path.as_str())
            .header(hyper::header::HOST, url.authority.as_str())
            .header(
                hyper::header::USER_AGENT,
                concat!("gatehouse/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|_| HttpError::Url(url.path.clone()))?;
        match (&self.tls, url.tls) {
            (Some(cfg), true) => {
                let name = ServerName::try_from(url.host.clone()).map_err(|_| HttpError::Url(url.host.clone()))?;
                let stream = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|source| HttpError::Tls {
                        host: url.authority.clone(),
                        source,
                    })?;
                self.send(stream, req).await
            }
            (None, true) => Err(HttpError::Roots("this client was made for http:// only".into())),
            (_, false) => self.send(tcp, req).await,
        }
    }

    async fn send<S>(&self, io: S, req: Request<Full<Bytes>>) -> Result<Response, HttpError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        // The connection task ends with the exchange (or with the deadline, when the caller drops us).
        let driver = tokio::spawn(conn);
        let resp = sender.send_request(req).await;
        let result = match resp {
            Ok(resp) => {
                let status = resp.status();
                let validators = Validators::of(resp.headers());
                let mut body = resp.into_body();
                let mut out = Vec::new();
                let mut result = Ok(());
                while let Some(frame) = body.frame().await {
                    let frame = match frame {
                        Ok(f) => f,
                        Err(e) => {
                            result = Err(HttpError::Http(e));
                            break;
                        }
                    };
                    if let Ok(data) = frame.into_data() {
                        if (out.len() + data.len()) as u64 > self.max_body {
                            result = Err(HttpError::TooLarge { cap: self.max_body });
                            break;
                        }
                        out.extend_from_slice(&data);
                    }
                }
                result.map(|()| Response {
                    status,
                    body: out,
                    validators,
                })
            }
            Err(e) => Err(HttpError::Http(e)),
        };
        driver.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_ports_paths_and_ipv6() {
        let u = Url::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 8080, "/")
        );
        let u = Url::parse("https://[::1]/drop.txt?x=1").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.authority.as_str()),
            (true, "::1", 443, "[::1]")
        );
        assert_eq!(u.path, "/drop.txt?x=1");
        assert_eq!(
            Url::parse("http://lapi:8080")
                .unwrap()
                .join("/v1/decisions/stream")
                .path,
            "/v1/decisions/stream"
        );
        for bad in ["ftp://x/", "http://", "http://:80/", "http://h:port/", "http://u@h/"] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
