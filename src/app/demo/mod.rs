//! `gatehouse demo`: a newcomer's first run. Gateway, self-signed certificate and sample Electrum backend
//! on loopback, a scripted wallet session through it, then serving until Ctrl-C.

pub mod backend;

use crate::app::Gatehouse;
use crate::config::Config;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cert(#[from] rcgen::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{}: {source}", dir.display())]
    TempDir { dir: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Start(#[from] crate::app::StartError),
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
}

/// Writes a fresh ECDSA P-256 certificate for localhost/127.0.0.1 into `dir`; returns its DER form.
pub fn self_signed(dir: &Path) -> Result<CertificateDer<'static>, DemoError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Gatehouse demo");
    let cert = params.self_signed(&key)?;
    std::fs::write(dir.join("demo.crt"), cert.pem())?;
    std::fs::write(dir.join("demo.key"), key.serialize_pem())?;
    Ok(cert.der().clone())
}

fn demo_config(backend: SocketAddr, tls_port: u16, tcp_port: u16) -> String {
    format!(
        r#"
[log]
level = "warn"

[[front]]
name = "electrum-tls"
kind = "electrum"
listen = ["127.0.0.1:{tls_port}"]
transport = "tls"
upstreams = ["{backend}"]
[front.tls]
cert = "demo.crt"
key = "demo.key"

[[front]]
name = "electrum-tcp"
kind = "electrum"
listen = ["127.0.0.1:{tcp_port}"]
transport = "tcp"
upstreams = ["{backend}"]
"#
    )
}

pub fn run() -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(demo()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("demo failed: {e}");
            1
        }
    }
}

async fn demo() -> Result<(), DemoError> {
    crate::telemetry::init(&crate::telemetry::LogFormat::Human, "warn");
    let dir = std::env::temp_dir().join(format!("gatehouse-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| DemoError::TempDir {
        dir: dir.clone(),
        source,
    })?;
    let der = self_signed(&dir)?;
    let backend = backend::spawn("127.0.0.1:0".parse().expect("literal")).await?;
    let file = dir.join("gatehouse.toml");
    // The usual Electrum ports when free, so a wallet can be pointed at the well-known numbers.
    let running = match Gatehouse::start(Config::parse(&demo_config(backend, 50002, 50001), &file)?).await {
        Ok(r) => r,
        Err(_) => Gatehouse::start(Config::parse(&demo_config(backend, 0, 0), &file)?).await?,
    };
    let tls = running.addr("electrum-tls");
    let tcp = running.addr("electrum-tcp");
    let fp: Vec<String> = Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    println!("Gatehouse demo");
    println!("  sample Electrum backend   {backend} (private side)");
    println!("  wallet TLS (ssl) port     {tls}");
    println!("  wallet TCP port           {tcp}");
    println!("  certificate SHA-256       {}", fp.join(":"));
    println!("  files                     {}", dir.display());
    println!();
    println!("Scripted wallet session over TLS:");
    wallet_session(tls, &der).await?;
    println!();
    println!(
        "Serving until Ctrl-C. Try: electrum --oneserver --server 127.0.0.1:{}:s",
        tls.port()
    );
    let _ = tokio::signal::ctrl_c().await;
    println!("stopping…");
    let _ = running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn wallet_session(addr: SocketAddr, der: &CertificateDer<'static>) -> Result<(), DemoError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone())?;
    let cfg = rustls::ClientConfig::builder_with_provider(crate::listen::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("literal");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(DemoError::Handshake)?;
    println!(
        "  TLS handshake ok ({:?})",
        tls.get_ref()
            .1
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default()
    );
    let (r, mut w) = tokio::io::split(tls);
    let mut r = BufReader::new(r);
    let requests = [
        r#"{"jsonrpc":"2.0","id":1,"method":"server.version","params":["gatehouse-demo","1.4"]}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"blockchain.headers.subscribe","params":[]}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"blockchain.scripthash.get_balance","params":["8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161"]}"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"server.ping","params":[]}"#,
    ];
    let mut line = String::new();
    for req in requests {
        w.write_all(req.as_bytes()).await?;
        w.write_all(b"\n").await?;
        line.clear();
        r.read_line(&mut line).await?;
        let shown: String = line.trim_end().chars().take(110).collect();
        println!("  → {req}");
        println!("  ← {shown}");
    }
    Ok(())
}
