//! Certificate renewal without action: replaced certificate files are served to new handshakes within
//! 2 s; a half-written or mismatched pair is ignored until it becomes valid; open sessions are untouched.

use crate::common;
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Replaces a file the way renewal tools do (write aside, then rename), so a reader never sees half.
fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A client that trusts both certificates, so the test can see which one the gateway presents.
async fn handshake(
    roots: &[CertificateDer<'static>],
    addr: SocketAddr,
) -> (TlsStream<TcpStream>, CertificateDer<'static>) {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(common::server_name(), tcp)
        .await
        .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    (tls, presented)
}

async fn echoes(s: &mut TlsStream<TcpStream>) -> bool {
    if s.write_all(b"still here\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 11];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"still here\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_is_served_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a, der_a) = common::write_cert(dir.path(), "localhost", &rcgen::PKCS_ECDSA_P256_SHA256);
    // The renewal, prepared aside.
    let next = tempfile::tempdir().unwrap();
    let (cert_b, key_b, der_b) = common::write_cert(next.path(), "localhost", &rcgen::PKCS_ECDSA_P256_SHA256);
    let (new_cert, new_key) = (std::fs::read(cert_b).unwrap(), std::fs::read(key_b).unwrap());

    let up = common::echo_backend().await;
    let toml = format!(
        "{}[[front]]\nname = \"w\"\nkind = \"peer\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tls\"\nupstreams = [\"{up}\"]\n\
         [front.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        common::RELAXED,
        cert_a.display(),
        key_a.display()
    );
    let running = common::start_in(dir.path(), &toml).await;
    let addr = running.addr("w");
    let roots = [der_a.clone(), der_b.clone()];

    let (mut open_session, first) = handshake(&roots, addr).await;
    assert_eq!(first, der_a);
    assert!(echoes(&mut open_session).await);

    // Half a renewal: a truncated certificate, then the new certificate with the old key. Neither is a
    // valid pair, so the old certificate stays.
    replace(&cert_a, &new_cert[..new_cert.len() / 2]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        handshake(&roots, addr).await.1,
        der_a,
        "half-written certificate must be ignored"
    );
    replace(&cert_a, &new_cert);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        handshake(&roots, addr).await.1,
        der_a,
        "mismatched pair must be ignored"
    );

    // The key arrives: from now on new handshakes get the new certificate within 2 s.
    replace(&key_a, &new_key);
    let done = Instant::now();
    loop {
        let (_s, presented) = handshake(&roots, addr).await;
        if presented == der_b {
            break;
        }
        assert!(
            done.elapsed() < Duration::from_secs(2),
            "new certificate not served within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The session made before the renewal carries on.
    assert!(echoes(&mut open_session).await);
}
