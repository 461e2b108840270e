//! Certificate renewal without action: replaced certificate files are served to new handshakes within
//! 2 s; a half-written or mismatched pair is ignored until it becomes valid; open sessions are untouched.

use crate::support::{backends, gateway, net, tls};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A client that trusts both certificates, so the test can see which one the gateway presents.
async fn handshake(
    roots: &[CertificateDer<'static>],
    addr: SocketAddr,
) -> (TlsStream<TcpStream>, CertificateDer<'static>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tls::tls_connector(roots, rustls::DEFAULT_VERSIONS)
        .connect(tls::server_name(), tcp)
        .await
        .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    (tls, presented)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_is_served_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a, der_a) = tls::write_cert(dir.path(), "localhost", &rcgen::PKCS_ECDSA_P256_SHA256);
    // The renewal, prepared aside.
    let next = tempfile::tempdir().unwrap();
    let (cert_b, key_b, der_b) = tls::write_cert(next.path(), "localhost", &rcgen::PKCS_ECDSA_P256_SHA256);
    let (new_cert, new_key) = (std::fs::read(cert_b).unwrap(), std::fs::read(key_b).unwrap());

    let up = backends::echo_backend().await;
    let toml = format!(
        "{}[[front]]\nname = \"w\"\nkind = \"peer\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tls\"\nupstreams = [\"{up}\"]\n\
         [front.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        gateway::RELAXED,
        cert_a.display(),
        key_a.display()
    );
    let running = gateway::start_in(dir.path(), &toml).await;
    let addr = running.addr("w");
    let roots = [der_a.clone(), der_b.clone()];

    let (mut open_session, first) = handshake(&roots, addr).await;
    assert_eq!(first, der_a);
    assert!(net::echoes_line(&mut open_session, b"still here\n").await);

    // Half a renewal: a truncated certificate, then the new certificate with the old key. Neither is a
    // valid pair, so the old certificate stays.
    tls::replace(&cert_a, &new_cert[..new_cert.len() / 2]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        handshake(&roots, addr).await.1,
        der_a,
        "half-written certificate must be ignored"
    );
    tls::replace(&cert_a, &new_cert);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        handshake(&roots, addr).await.1,
        der_a,
        "mismatched pair must be ignored"
    );

    // The key arrives: from now on new handshakes get the new certificate within 2 s.
    tls::replace(&key_a, &new_key);
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
    assert!(net::echoes_line(&mut open_session, b"still here\n").await);
}

/// Reload with a new config: parsed like the file would be, relative to `dir`.
async fn reload(running: &mut gatehouse::Running, dir: &Path, toml: &str) -> gatehouse::ReloadSummary {
    let cfg = gatehouse::config::Config::parse(toml, &dir.join("gatehouse.toml")).unwrap();
    running.reload(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_new_rules_to_new_connections_and_keeps_open_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let up = backends::echo_backend().await;
    let fixed = net::free_addr();
    let base = format!(
        "{}{}",
        gateway::RELAXED,
        gateway::tcp_front_at("p", &fixed.to_string(), up, "")
    );
    let mut running = gateway::start_in(dir.path(), &base).await;
    let addr = running.addr("p");
    let mut open = net::connect_from("127.0.0.2", addr).await.unwrap();
    assert!(net::echoes(&mut open).await);

    // Deny 127.0.0.2 from now on; same listen address, so the front is updated in place.
    let denied = format!(
        "{}{}",
        gateway::RELAXED,
        gateway::tcp_front_at(
            "p",
            &fixed.to_string(),
            up,
            "[front.admission]\ndeny = [\"127.0.0.2/32\"]"
        )
    );
    let summary = reload(&mut running, dir.path(), &denied).await;
    assert_eq!(
        summary.updated,
        vec!["p".to_string()],
        "same listen addresses: updated in place"
    );
    assert!(
        net::is_refused("127.0.0.2", running.addr("p")).await,
        "new rule not applied"
    );
    assert!(!net::is_refused("127.0.0.3", running.addr("p")).await);
    assert!(net::echoes(&mut open).await, "open session cut by the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_fronts() {
    let dir = tempfile::tempdir().unwrap();
    let up = backends::echo_backend().await;
    let fixed = net::free_addr();
    let one = format!(
        "{}{}",
        gateway::RELAXED,
        gateway::tcp_front_at("a", &fixed.to_string(), up, "")
    );
    let mut running = gateway::start_in(dir.path(), &one).await;
    let a = running.addr("a");
    let mut open = net::connect_from("127.0.0.2", a).await.unwrap();
    assert!(net::echoes(&mut open).await);

    // Front b added, front a removed.
    let two = format!(
        "{}{}",
        gateway::RELAXED,
        gateway::tcp_front_at("b", "127.0.0.1:0", up, "")
    );
    let summary = reload(&mut running, dir.path(), &two).await;
    assert_eq!(summary.added, vec!["b".to_string()]);
    assert_eq!(summary.removed, vec!["a".to_string()]);
    let b = running.addr("b");
    let mut s = net::connect_from("127.0.0.3", b).await.unwrap();
    assert!(net::echoes(&mut s).await, "added front does not serve");
    assert!(
        tokio::net::TcpStream::connect(a).await.is_err(),
        "removed front still accepts"
    );
    assert!(
        net::echoes(&mut open).await,
        "open session of the removed front was cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_hard_limit_applies_to_the_next_request_of_an_open_session() {
    let dir = tempfile::tempdir().unwrap();
    let backend = gatehouse::demo::backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let fixed = net::free_addr();
    let front = format!(
        "[[front]]\nname = \"e\"\nkind = \"electrum\"\nlisten = [\"{fixed}\"]\ntransport = \"tcp\"\nupstreams = [\"{backend}\"]\n"
    );
    let mut running = gateway::start_in(dir.path(), &format!("{}{front}", gateway::RELAXED)).await;
    let mut s = net::connect_from("127.0.0.2", running.addr("e")).await.unwrap();
    let mut line = String::new();
    let (r, mut w) = s.split();
    let mut r = tokio::io::BufReader::new(r);
    use tokio::io::AsyncBufReadExt;
    w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"server.version\",\"params\":[\"t\",\"1.4\"]}\n")
        .await
        .unwrap();
    r.read_line(&mut line).await.unwrap();
    assert!(line.contains("result"), "{line}");

    let strict = format!("{}[cost]\nsoft_limit = 1\nhard_limit = 2\n\n{front}", gateway::RELAXED);
    reload(&mut running, dir.path(), &strict).await;
    line.clear();
    w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"server.ping\",\"params\":[]}\n")
        .await
        .unwrap();
    r.read_line(&mut line).await.unwrap();
    assert!(
        line.contains("-101"),
        "expected the new hard limit to apply at once: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_hard_limit_cuts_an_idle_session_already_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let backend = gatehouse::demo::backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let fixed = net::free_addr();
    let front = format!(
        "[[front]]\nname = \"e\"\nkind = \"electrum\"\nlisten = [\"{fixed}\"]\ntransport = \"tcp\"\nupstreams = [\"{backend}\"]\n"
    );
    let loose = format!("{}[cost]\ngroup_private = true\n\n{front}", gateway::RELAXED);
    let mut running = gateway::start_in(dir.path(), &loose).await;
    let s = net::connect_from("127.0.0.2", running.addr("e")).await.unwrap();
    let mut r = tokio::io::BufReader::new(s);
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    r.get_mut()
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"server.version\",\"params\":[\"t\",\"1.4\"]}\n")
        .await
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert!(line.contains("result"), "{line}");

    // The session now sends nothing: the new limit must reach it anyway.
    let strict = format!(
        "{}[cost]\ngroup_private = true\nsoft_limit = 1\nhard_limit = 2\n\n{front}",
        gateway::RELAXED
    );
    reload(&mut running, dir.path(), &strict).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "an idle session over the lowered hard limit was left open"
    );
}
