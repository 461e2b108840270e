//! TLS material and TLS clients: self-signed certificates written to files, rustls connectors that trust
//! them, and file replacement as certificate renewal does it.

use super::net::connect_from;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
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

/// Writes `name.crt` / `name.key` into `dir`: a self-signed certificate for `name` and 127.0.0.1.
pub fn write_cert(
    dir: &Path,
    name: &str,
    alg: &'static rcgen::SignatureAlgorithm,
) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    write_cert_as(dir, name, name, alg)
}

/// Writes `stem.crt` / `stem.key` into `dir`: a self-signed ECDSA P-256 certificate for "localhost" and
/// 127.0.0.1 whose common name is `stem`, so that two of them (the original and the renewal) differ.
pub fn localhost_cert(dir: &Path, stem: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    write_cert_as(dir, stem, "localhost", &rcgen::PKCS_ECDSA_P256_SHA256)
}

fn write_cert_as(
    dir: &Path,
    stem: &str,
    name: &str,
    alg: &'static rcgen::SignatureAlgorithm,
) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    write_cert_names(dir, stem, &[name], alg)
}

/// Writes `stem.crt` / `stem.key` into `dir`: a self-signed certificate for every DNS name of `names`
/// and 127.0.0.1 (one certificate serving several SNI names).
pub fn write_cert_names(
    dir: &Path,
    stem: &str,
    names: &[&str],
    alg: &'static rcgen::SignatureAlgorithm,
) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    sans.push("127.0.0.1".to_string());
    let mut params = rcgen::CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, stem);
    let cert = params.self_signed(&key).unwrap();
    let cp = dir.join(format!("{stem}.crt"));
    let kp = dir.join(format!("{stem}.key"));
    std::fs::write(&cp, cert.pem()).unwrap();
    std::fs::write(&kp, key.serialize_pem()).unwrap();
    (cp, kp, cert.der().clone())
}

/// Replaces a file the way renewal tools and editors do (write aside, then rename), so a reader never
/// sees half of it.
pub fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A rustls client that trusts every certificate of `roots` and speaks `versions` (e.g.
/// `rustls::DEFAULT_VERSIONS`).
pub fn tls_connector<'a>(
    roots: impl IntoIterator<Item = &'a CertificateDer<'static>>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// Connects a rustls client (TLS 1.2 and 1.3 allowed) trusting `der` to `addr` with SNI "localhost".
pub async fn tls_connect(der: &CertificateDer<'static>, addr: SocketAddr) -> TlsStream<TcpStream> {
    tls_connect_with(der, addr, &[&rustls::version::TLS13, &rustls::version::TLS12]).await
}

pub async fn tls_connect_with(
    der: &CertificateDer<'static>,
    addr: SocketAddr,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsStream<TcpStream> {
    let tcp = connect_from("127.0.0.1", addr).await.unwrap();
    let connector = tls_connector([der], versions);
    tokio::time::timeout(Duration::from_secs(5), connector.connect(server_name(), tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake failed")
}
