//! TLS termination: protocol versions, bulk transfer in both directions, RSA certificates, SNI certificate
//! selection, and half-close (close_notify) handling, against real rustls clients.

use crate::support::gateway::{tls_front, RELAXED};
use crate::support::tls::{tls_connect, tls_connect_with};
use crate::support::{backends, gateway, net, tls};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MB5: usize = 5 * 1024 * 1024;

/// Deterministic pseudo-random bytes (xorshift64*), so both ends can agree on the content.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` in uneven chunks while concurrently reading the same number of bytes back; returns what
/// was read. Reading and writing at once avoids a deadlock on backpressure.
async fn roundtrip<S>(stream: S, data: Arc<Vec<u8>>) -> Vec<u8>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let d = data.clone();
    let writer = tokio::spawn(async move {
        let mut off = 0;
        let mut step = 1;
        while off < d.len() {
            // 1 B, 7 B, 49 B … up to 64 KiB, so record boundaries fall everywhere.
            let end = (off + step).min(d.len());
            w.write_all(&d[off..end]).await.unwrap();
            off = end;
            step = if step >= 65536 { 1 } else { step * 7 };
        }
        w.flush().await.unwrap();
        w
    });
    let mut got = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut got))
        .await
        .expect("echo did not come back within 30s")
        .unwrap();
    writer.await.unwrap();
    got
}

/// Index of the first differing byte, for a readable failure instead of a 5 MB dump.
fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

async fn version_roundtrip(version: &'static rustls::SupportedProtocolVersion, expect: rustls::ProtocolVersion) {
    let c = tls::certs();
    let echo = backends::echo_backend().await;
    let running = gateway::start_in(
        c.dir.path(),
        &format!("{RELAXED}{}", tls_front("ssl", &c.cert, &c.key, &[echo], "")),
    )
    .await;
    let mut s = tls_connect_with(&c.der, running.addr("ssl"), &[version]).await;
    assert_eq!(s.get_ref().1.protocol_version(), Some(expect));
    // Every byte value, including NUL, CR, LF and 0xFF, must pass untouched.
    let sent: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    s.write_all(&sent).await.unwrap();
    s.flush().await.unwrap();
    let mut got = vec![0u8; sent.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("no echo within 5s")
        .unwrap();
    assert_eq!(got, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_handshake_and_echo() {
    version_roundtrip(&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_handshake_and_echo() {
    version_roundtrip(&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_megabytes_echo_through_tls() {
    let c = tls::certs();
    let echo = backends::echo_backend().await;
    let running = gateway::start_in(
        c.dir.path(),
        &format!("{RELAXED}{}", tls_front("ssl", &c.cert, &c.key, &[echo], "")),
    )
    .await;
    let s = tls_connect(&c.der, running.addr("ssl")).await;
    let data = Arc::new(pattern(0x5eed, MB5));
    let got = roundtrip(s, data.clone()).await;
    assert_eq!(got.len(), MB5);
    assert_eq!(first_diff(&got, &data), None, "echoed bytes differ");
}

/// A backend that waits for one `\n`-terminated line, then sends `len` bytes of `pattern(seed)` and closes.
async fn sending_backend(seed: u64, len: usize) -> SocketAddr {
    backends::serve(move |mut s| async move {
        let mut b = [0u8; 1];
        loop {
            match s.read(&mut b).await {
                Ok(1) if b[0] == b'\n' => break,
                Ok(1) => {}
                _ => return,
            }
        }
        let data = pattern(seed, len);
        if s.write_all(&data).await.is_ok() {
            let _ = s.shutdown().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_megabytes_from_backend_through_tls() {
    let c = tls::certs();
    let backend = sending_backend(0xfeed, MB5).await;
    let running = gateway::start_in(
        c.dir.path(),
        &format!("{RELAXED}{}", tls_front("ssl", &c.cert, &c.key, &[backend], "")),
    )
    .await;
    let mut s = tls_connect(&c.der, running.addr("ssl")).await;
    s.write_all(b"send\n").await.unwrap();
    s.flush().await.unwrap();
    let mut got = Vec::with_capacity(MB5);
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
        .await
        .expect("download did not finish within 30s")
        .expect("download ended with an error instead of close_notify");
    assert_eq!(got.len(), MB5, "received {} bytes", got.len());
    assert_eq!(first_diff(&got, &pattern(0xfeed, MB5)), None, "downloaded bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_2048_certificate() {
    let dir = tempfile::tempdir().unwrap();
    // rcgen generates RSA keys only with aws-lc-rs (which this crate uses); 2048 bits is its default size.
    let (cert, key, der) = tls::write_cert(dir.path(), "localhost", &rcgen::PKCS_RSA_SHA256);
    let echo = backends::echo_backend().await;
    let running = gateway::start_in(
        dir.path(),
        &format!("{RELAXED}{}", tls_front("ssl", &cert, &key, &[echo], "")),
    )
    .await;
    for (version, expect) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let mut s = tls_connect_with(&der, running.addr("ssl"), &[version]).await;
        assert_eq!(s.get_ref().1.protocol_version(), Some(expect));
        let peer = s.get_ref().1.peer_certificates().expect("server sent a certificate");
        assert_eq!(peer[0], der, "the RSA certificate is served");
        s.write_all(b"rsa works\n").await.unwrap();
        s.flush().await.unwrap();
        let mut got = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("no echo within 5s")
            .unwrap();
        assert_eq!(&got, b"rsa works\n");
    }
}

/// Connects with SNI `name` (or none for an IP), trusting every root in `roots`; returns the leaf the
/// server presented after checking the session relays.
async fn leaf_for(
    roots: &[&CertificateDer<'static>],
    addr: SocketAddr,
    name: ServerName<'static>,
) -> CertificateDer<'static> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = net::connect_from("127.0.0.1", addr).await.unwrap();
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name.clone(), tcp),
    )
    .await
    .expect("TLS handshake timed out")
    .unwrap_or_else(|e| panic!("TLS handshake for {name:?} failed: {e}"));
    let leaf = s.get_ref().1.peer_certificates().expect("server sent a certificate")[0].clone();
    s.write_all(b"sni\n").await.unwrap();
    s.flush().await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("no echo within 5s")
        .unwrap();
    assert_eq!(&got, b"sni\n");
    leaf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_certificate() {
    let c = tls::certs();
    let (wcert, wkey, wder) = tls::write_cert(c.dir.path(), "wallet.example", &rcgen::PKCS_ECDSA_P256_SHA256);
    assert_ne!(wder, c.der);
    let echo = backends::echo_backend().await;
    let sni = format!(
        "[[front.tls.sni]]\nname = \"wallet.example\"\ncert = \"{}\"\nkey = \"{}\"\n",
        wcert.display(),
        wkey.display()
    );
    let running = gateway::start_in(
        c.dir.path(),
        &format!("{RELAXED}{}", tls_front("ssl", &c.cert, &c.key, &[echo], &sni)),
    )
    .await;
    let addr = running.addr("ssl");
    let roots = [&c.der, &wder];
    let wallet = ServerName::try_from("wallet.example").unwrap();
    assert_eq!(
        leaf_for(&roots, addr, wallet).await,
        wder,
        "SNI wallet.example gets its own certificate"
    );
    // A name without an entry falls back to the default.
    let localhost = ServerName::try_from("localhost").unwrap();
    assert_eq!(
        leaf_for(&roots, addr, localhost).await,
        c.der,
        "SNI localhost gets the default"
    );
    // Connecting by IP sends no SNI at all: the default too.
    let ip = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    assert_eq!(leaf_for(&roots, addr, ip).await, c.der, "no SNI gets the default");
    // And the SNI entry still wins afterwards (no sticky state from the previous handshakes).
    let wallet = ServerName::try_from("wallet.example").unwrap();
    assert_eq!(leaf_for(&roots, addr, wallet).await, wder);
}

/// Sends `data`, shuts the write side down right away (while most of it is still in flight), and reads
/// until the gateway closes. Returns what came back and whether it ended in a clean EOF.
async fn send_then_half_close<S>(stream: S, data: Arc<Vec<u8>>) -> (Vec<u8>, bool)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let d = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&d).await.unwrap();
        // TLS: close_notify then FIN; TCP: FIN.
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    let clean = loop {
        match tokio::time::timeout(
            Duration::from_secs(10).saturating_sub(start.elapsed()),
            r.read(&mut buf),
        )
        .await
        {
            Err(_) => panic!(
                "gateway did not close within 10s; got {} of {} bytes",
                got.len(),
                data.len()
            ),
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break false,
        }
    };
    let _w = writer.await.unwrap();
    (got, clean)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_tls_still_receives_echo() {
    let c = tls::certs();
    let echo = backends::echo_backend().await;
    let running = gateway::start_in(
        c.dir.path(),
        &format!("{RELAXED}{}", tls_front("ssl", &c.cert, &c.key, &[echo], "")),
    )
    .await;
    let s = tls_connect(&c.der, running.addr("ssl")).await;
    let data = Arc::new(pattern(7, 512 * 1024));
    let (got, clean) = send_then_half_close(s, data.clone()).await;
    assert_eq!(got.len(), data.len(), "echo truncated after close_notify");
    assert_eq!(first_diff(&got, &data), None);
    assert!(
        clean,
        "the gateway should end the session with close_notify, not an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_tcp_still_receives_echo() {
    let echo = backends::echo_backend().await;
    let running = gateway::start(&format!("{RELAXED}{}", gateway::tcp_front("p2p", echo, ""))).await;
    let s = net::connect_from("127.0.0.1", running.addr("p2p")).await.unwrap();
    let data = Arc::new(pattern(8, 512 * 1024));
    let (got, clean) = send_then_half_close(s, data.clone()).await;
    assert_eq!(got.len(), data.len(), "echo truncated after FIN");
    assert_eq!(first_diff(&got, &data), None);
    assert!(clean, "the gateway should end the session with FIN, not a reset");
}
