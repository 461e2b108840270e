//! A real ACME server for the tests: Let's Encrypt's Pebble (Debian package `pebble`, which `tests/run`
//! installs) on loopback, with its own HTTPS certificate from a throwaway CA, real challenge validation,
//! and `pebble-challtestsrv` as its DNS server answering 127.0.0.1 for every name, so Pebble validates
//! against the gateway's loopback ports.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::IpAddr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bin(name: &str) -> PathBuf {
    [PathBuf::from("/usr/bin").join(name), PathBuf::from("/usr/local/bin").join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is missing: run tests/run (the README's test command), which installs it, or apt-get install pebble")
        })
}

/// Pebble and its DNS server, killed on drop.
pub struct Pebble {
    pebble: Option<Child>,
    dns: Child,
    pub dir: tempfile::TempDir,
    /// The directory URL.
    pub directory: String,
    /// The CA that signed Pebble's own HTTPS certificate (the gateway's `acme.ca_root`).
    pub api_ca: PathBuf,
    api_ca_der: CertificateDer<'static>,
    mgmt: SocketAddr,
    listen: SocketAddr,
    config: PathBuf,
    dns_addr: SocketAddr,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}

fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port free on `ip` now. Each Pebble test keeps to a loopback address of its own, so ports picked
/// before they are bound cannot be taken by tests running beside it.
pub fn free_port_on(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_on(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, free_port_on(ip))
}

impl Pebble {
    /// Starts Pebble on `ip` validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of `ip`
    /// (every name resolves to it), issuing certificates valid for `validity` seconds (Pebble's default,
    /// five years, when None).
    pub fn start(ip: IpAddr, http_port: u16, tls_port: u16, validity: Option<u64>) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        // Pebble's own HTTPS certificate, from a CA of the test's.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gatehouse test CA for Pebble's API");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), ip.to_string()]).unwrap();
        let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
        let api_ca = dir.path().join("api-ca.pem");
        std::fs::write(&api_ca, ca.pem()).unwrap();
        std::fs::write(dir.path().join("api.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("api.key"), key.serialize_pem()).unwrap();

        let dns_addr = free_on(ip);
        let dns_mgmt = free_on(ip);
        let dns = Command::new(bin("pebble-challtestsrv"))
            .args(["-defaultIPv4", &ip.to_string(), "-defaultIPv6", ""])
            .args(["-dns01", &dns_addr.to_string(), "-management", &dns_mgmt.to_string()])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv");
        wait_listening(dns_mgmt, "pebble-challtestsrv");

        let listen = free_on(ip);
        let mgmt = free_on(ip);
        let mut cfg = serde_json::json!({"pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": mgmt.to_string(),
            "certificate": dir.path().join("api.pem"),
            "privateKey": dir.path().join("api.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = validity {
            cfg["pebble"]["certificateValidityPeriod"] = v.into();
        }
        let config = dir.path().join("pebble.json");
        std::fs::write(&config, cfg.to_string()).unwrap();
        let api_ca_der = CertificateDer::from_pem_file(&api_ca).unwrap();
        let mut p = Pebble {
            pebble: None,
            dns,
            directory: format!("https://{listen}/dir"),
            api_ca,
            api_ca_der,
            mgmt,
            listen,
            config,
            dns_addr,
            dir,
        };
        p.resume();
        p
    }

    /// Starts (again) the Pebble process on the same ports and config; its CA is new each time.
    pub fn resume(&mut self) {
        let child = Command::new(bin("pebble"))
            .arg("-config")
            .arg(&self.config)
            .arg("-dnsserver")
            .arg(self.dns_addr.to_string())
            // Validation at full speed, and no nonce refused at random: the tests time renewals.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble");
        self.pebble = Some(child);
        wait_listening(self.listen, "pebble");
        wait_listening(self.mgmt, "pebble's management API");
    }

    /// Stops Pebble (its DNS server stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pebble's issuing root, from its management API.
    pub async fn root(&self) -> CertificateDer<'static> {
        let pem = self.management_get("/roots/0").await;
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM root from /roots/0")
    }

    async fn management_get(&self, path: &str) -> String {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.api_ca_der.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(self.mgmt).await.unwrap();
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).to_string();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        body.to_string()
    }

    /// The `[acme]` keys pointing the gateway at this Pebble.
    pub fn acme_keys(&self, state_dir: &Path) -> String {
        format!(
            "directory = \"{}\"\nca_root = \"{}\"\nstate_dir = \"{}\"\ncontact = [\"mailto:ops@example.com\"]\n",
            self.directory,
            self.api_ca.display(),
            state_dir.display()
        )
    }
}

/// The certificate chain a TLS front presents to a client sending SNI `name`, accepted by any
/// verifier (the test judges the chain itself).
pub async fn presented(addr: SocketAddr, name: &str) -> Vec<CertificateDer<'static>> {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .unwrap();
    s.get_ref().1.peer_certificates().unwrap_or_default().to_vec()
}

/// A TLS client to `addr` for `name` that trusts only `root`: it connects only if the presented chain
/// leads to it and names `name`.
pub async fn connect_trusting(
    root: &CertificateDer<'static>,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
}

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
