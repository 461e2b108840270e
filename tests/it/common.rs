//! Shared test harness: certificates, stub backends, clients bound to chosen loopback addresses, and a
//! gateway started in-process from a TOML snippet.

#![allow(dead_code)]

use gatehouse::config::Config;
use gatehouse::{Gatehouse, Running};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// A temp folder with a self-signed ECDSA P-256 certificate for "localhost" and 127.0.0.1.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

pub fn certs() -> Certs {
    certs_named("localhost")
}

pub fn certs_named(name: &str) -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = write_cert(dir.path(), name, &rcgen::PKCS_ECDSA_P256_SHA256);
    Certs { dir, cert, key, der }
}

/// Writes `name.crt` / `name.key` into `dir`.
pub fn write_cert(
    dir: &Path,
    name: &str,
    alg: &'static rcgen::SignatureAlgorithm,
) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string(), "127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    let cp = dir.join(format!("{name}.crt"));
    let kp = dir.join(format!("{name}.key"));
    std::fs::write(&cp, cert.pem()).unwrap();
    std::fs::write(&kp, key.serialize_pem()).unwrap();
    (cp, kp, cert.der().clone())
}

/// Parses `toml` (relative paths resolve against `dir`) and starts a gateway on the test's runtime.
pub async fn start_in(dir: &Path, toml: &str) -> Running {
    let cfg = Config::parse(toml, &dir.join("gatehouse.toml")).unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
    Gatehouse::start(cfg).await.expect("start")
}

pub async fn start(toml: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    start_in(dir.path(), toml).await
}

/// A backend that echoes every byte back.
pub async fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A backend that records the first `n` bytes of every connection (e.g. a PROXY header) on a channel,
/// then echoes.
pub async fn recording_backend(n: usize) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = vec![0u8; n];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let _ = tx.send(head);
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, rx)
}

/// An address nothing listens on (bound, then closed).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// Connects to `to` from source address `from` (127.0.0.2, ::1 …) so the gateway sees distinct clients.
pub async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let ip: IpAddr = from.parse().unwrap();
    let sock = if ip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(ip, 0))?;
    let s = sock.connect(to).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

pub fn tls_connector(
    der: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// Reads until the peer closes (EOF or reset) and returns how long that took; panics after `limit`.
pub async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// True if the gateway closes the connection straight away without sending anything (a refusal).
pub async fn is_refused(from: &str, to: SocketAddr) -> bool {
    let mut s = match connect_from(from, to).await {
        Ok(s) => s,
        Err(_) => return true,
    };
    let _ = s.write_all(b"ping\n").await;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("neither refused nor answered within 5s"),
    }
}

/// Sends a line through and expects it echoed back.
pub async fn echoes(s: &mut TcpStream) -> bool {
    if s.write_all(b"hello\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 6];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"hello\n"
}

/// A plain TCP front on 127.0.0.1:0 in front of `upstream`, with extra front keys appended.
pub fn tcp_front(name: &str, upstream: SocketAddr, extra: &str) -> String {
    format!(
        "[[front]]\nname = \"{name}\"\nkind = \"peer\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\nupstreams = [\"{upstream}\"]\n{extra}\n"
    )
}

/// Global admission loose enough that only what a test configures on its front can refuse.
pub const RELAXED: &str = "[admission]\nmax_connections_per_ip = 100000\nmax_connections_per_group = 100000\nconnect_rate_per_ip = \"100000/s\"\nconnect_burst_per_ip = 100000\n\n";

/// A loopback address with a port nothing listens on now (for cluster links, bound later).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Polls (bounded by `limit`) until `pred` holds; returns how long it took.
pub async fn within(limit: Duration, mut pred: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if pred().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Cluster node keys `node{i}.key` in `dir`; returns their public keys.
pub fn node_keys(dir: &Path, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            gatehouse::cluster::keys::NodeKey::generate_file(&dir.join(format!("node{i}.key")))
                .unwrap()
                .public()
                .to_string()
        })
        .collect()
}

/// The body of `GET path` on an admin API, with `token`.
pub async fn admin_get(admin: SocketAddr, token: &str, path: &str) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: gatehouse\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    text.split_once("\r\n\r\n").map_or("", |x| x.1).to_string()
}

/// The `[[cluster.peers]]` tables of gateway `me` of a full mesh: every other node's link address and
/// key (`links` empty: keys only, as under the Redis backend).
pub fn cluster_peers(me: usize, links: &[SocketAddr], keys: &[String]) -> String {
    (0..keys.len())
        .filter(|&j| j != me)
        .map(|j| match links.get(j) {
            Some(addr) => format!("[[cluster.peers]]\naddr = \"{addr}\"\nkey = \"{}\"\n", keys[j]),
            None => format!("[[cluster.peers]]\nkey = \"{}\"\n", keys[j]),
        })
        .collect()
}
