//! A loopback HTTP server of files the test changes as it goes (blocklists and their signatures), with
//! an `ETag` on each answer and `304 Not Modified` for a request that names the current one, and how
//! many requests it served.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Clone, Default)]
pub struct Files {
    map: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    served: Arc<AtomicUsize>,
    bodies: Arc<AtomicUsize>,
    not_modified: Arc<AtomicUsize>,
}

impl Files {
    /// Serves `path` (`/drop.txt`) with `body` from now on.
    pub fn put(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.map.lock().unwrap().insert(path.to_string(), body.into());
    }

    /// Requests answered so far (any path, any status).
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Answers that carried a file (200).
    pub fn bodies(&self) -> usize {
        self.bodies.load(Ordering::SeqCst)
    }

    /// Answers `304 Not Modified` (the client's `If-None-Match` named the current copy).
    pub fn not_modified(&self) -> usize {
        self.not_modified.load(Ordering::SeqCst)
    }
}

/// Starts the server on 127.0.0.1; unknown paths get 404. One request per connection.
pub async fn serve() -> (SocketAddr, Files) {
    serve_with(None).await
}

/// As [`serve`], over TLS with the certificate `cert` and its key file (`https://127.0.0.1:PORT/`).
pub async fn serve_tls(cert: CertificateDer<'static>, key: &Path) -> (SocketAddr, Files) {
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    serve_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
}

async fn serve_with(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Files) {
    let files = Files::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let f = files.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            let f = f.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => answer(tcp, f).await,
                    Some(t) => {
                        if let Ok(s) = t.accept(tcp).await {
                            answer(s, f).await
                        }
                    }
                }
            });
        }
    });
    (addr, files)
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, f: Files) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split(' ').nth(1).unwrap_or("/").to_string();
    let asked = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("if-none-match").then(|| v.trim().to_string())
    });
    let body = f.map.lock().unwrap().get(&path).cloned();
    f.served.fetch_add(1, Ordering::SeqCst);
    let (status, etag, body) = match body {
        Some(b) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&b, &mut h);
            let etag = format!("\"{:x}\"", std::hash::Hasher::finish(&h));
            if asked.as_deref() == Some(etag.as_str()) {
                f.not_modified.fetch_add(1, Ordering::SeqCst);
                ("304 Not Modified", etag, Vec::new())
            } else {
                f.bodies.fetch_add(1, Ordering::SeqCst);
                ("200 OK", etag, b)
            }
        }
        None => ("404 Not Found", "\"none\"".to_string(), b"not found\n".to_vec()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nETag: {etag}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(&body).await;
    let _ = s.shutdown().await;
}
