//! Handshake and idle timeouts: a client that never finishes its TLS handshake is dropped at the handshake
//! timeout; an established session is dropped after the idle timeout of inactivity, however old it is.

use crate::support::gateway::tls_front;
use crate::support::gateway::RELAXED;
use crate::support::tls::tls_connect;
use crate::support::{backends, gateway, net, tls};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HANDSHAKE: Duration = Duration::from_millis(300);
const IDLE: Duration = Duration::from_millis(400);

fn assert_between(elapsed: Duration, timeout: Duration, what: &str) {
    assert!(
        elapsed >= timeout.mul_f64(0.8),
        "{what}: closed after {elapsed:?}, before the {timeout:?} timeout"
    );
    assert!(
        elapsed <= timeout * 3,
        "{what}: closed after {elapsed:?}, long after the {timeout:?} timeout"
    );
}

/// The first bytes of a genuine ClientHello, as rustls would send them.
fn client_hello_prefix(n: usize) -> Vec<u8> {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), tls::server_name()).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert_eq!(hello[0], 0x16, "a handshake record");
    assert!(hello.len() > n, "ClientHello is only {} bytes", hello.len());
    hello.truncate(n);
    hello
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_closed_at_handshake_timeout() {
    let c = tls::certs();
    let echo = backends::echo_backend().await;
    let extra = "[front.timeouts]\nhandshake = \"300ms\"\n";
    let running = gateway::start_in(
        c.dir.path(),
        &format!("{RELAXED}{}", tls_front("ssl", &c.cert, &c.key, &[echo], extra)),
    )
    .await;
    let start = Instant::now();
    let mut s = net::connect_from("127.0.0.1", running.addr("ssl")).await.unwrap();
    net::closed_within(&mut s, Duration::from_secs(3)).await;
    assert_between(start.elapsed(), HANDSHAKE, "silent client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_client_hello_closed_at_handshake_timeout() {
    let c = tls::certs();
    let echo = backends::echo_backend().await;
    let extra = "[front.timeouts]\nhandshake = \"300ms\"\n";
    let running = gateway::start_in(
        c.dir.path(),
        &format!("{RELAXED}{}", tls_front("ssl", &c.cert, &c.key, &[echo], extra)),
    )
    .await;
    let start = Instant::now();
    let mut s = net::connect_from("127.0.0.1", running.addr("ssl")).await.unwrap();
    s.write_all(&client_hello_prefix(20)).await.unwrap();
    let mut first = [0u8; 1];
    // Half a ClientHello is not an error yet: the gateway must wait, then give up at the deadline.
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut first))
        .await
        .expect("connection still open after 3s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the gateway answered half a ClientHello");
    assert_between(start.elapsed(), HANDSHAKE, "half ClientHello (real prefix)");

    // A hand-made record header announcing 512 bytes of handshake, followed by only a few.
    let start = Instant::now();
    let mut s = net::connect_from("127.0.0.1", running.addr("ssl")).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03])
        .await
        .unwrap();
    net::closed_within(&mut s, Duration::from_secs(3)).await;
    assert_between(start.elapsed(), HANDSHAKE, "half ClientHello (hand-made)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_session_closed_at_idle_timeout() {
    let c = tls::certs();
    let echo = backends::echo_backend().await;
    let extra = "[front.timeouts]\nidle = \"400ms\"\n";
    let running = gateway::start_in(
        c.dir.path(),
        &format!("{RELAXED}{}", tls_front("ssl", &c.cert, &c.key, &[echo], extra)),
    )
    .await;
    let mut s = tls_connect(&c.der, running.addr("ssl")).await;
    s.write_all(b"hello\n").await.unwrap();
    s.flush().await.unwrap();
    let mut got = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("no echo within 5s")
        .unwrap();
    assert_eq!(&got, b"hello\n");
    let start = Instant::now();
    net::closed_within(&mut s, Duration::from_secs(3)).await;
    assert_between(start.elapsed(), IDLE, "silent session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_session_outlives_idle_timeout() {
    let c = tls::certs();
    let echo = backends::echo_backend().await;
    let extra = "[front.timeouts]\nidle = \"400ms\"\n";
    let running = gateway::start_in(
        c.dir.path(),
        &format!("{RELAXED}{}", tls_front("ssl", &c.cert, &c.key, &[echo], extra)),
    )
    .await;
    let mut s = tls_connect(&c.der, running.addr("ssl")).await;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut i = 0u32;
    // 1.2 s of traffic: three idle timeouts' worth of session age.
    while start.elapsed() < Duration::from_millis(1200) {
        tick.tick().await;
        let line = format!("ping {i:04}\n");
        s.write_all(line.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        let mut got = vec![0u8; line.len()];
        match tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got)).await {
            Ok(Ok(_)) => assert_eq!(got, line.as_bytes()),
            Ok(Err(e)) => panic!("active session closed after {:?} ({i} pings): {e}", start.elapsed()),
            Err(_) => panic!("no echo after {:?}", start.elapsed()),
        }
        i += 1;
    }
    assert!(i >= 10);
    // Once it falls silent, the idle timeout applies as usual.
    let quiet = Instant::now();
    net::closed_within(&mut s, Duration::from_secs(3)).await;
    assert_between(quiet.elapsed(), IDLE, "session gone quiet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_client_traffic_keeps_session_alive() {
    // Activity in the client-to-upstream direction alone counts: a backend that never answers does not
    // make a talking client idle.
    let c = tls::certs();
    let sink_addr = backends::serve(|mut s| async move {
        let mut buf = [0u8; 1024];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    let extra = "[front.timeouts]\nidle = \"400ms\"\n";
    let running = gateway::start_in(
        c.dir.path(),
        &format!("{RELAXED}{}", tls_front("ssl", &c.cert, &c.key, &[sink_addr], extra)),
    )
    .await;
    let s = tls_connect(&c.der, running.addr("ssl")).await;
    let (mut r, mut w) = tokio::io::split(s);
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        let n = r.read(&mut buf).await;
        (start.elapsed(), n.map_err(|e| e.kind()))
    });
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..12 {
        tick.tick().await;
        assert!(
            !reader.is_finished(),
            "closed after {:?} while the client kept sending",
            start.elapsed()
        );
        w.write_all(b"tx\n").await.unwrap();
        w.flush().await.unwrap();
    }
    assert!(
        !reader.is_finished(),
        "closed after {:?} while the client kept sending",
        start.elapsed()
    );
    let quiet = Instant::now();
    let (_, res) = tokio::time::timeout(Duration::from_secs(3), reader)
        .await
        .expect("not closed 3s after going quiet")
        .unwrap();
    assert!(matches!(res, Ok(0) | Err(_)), "unexpected data: {res:?}");
    assert_between(quiet.elapsed(), IDLE, "one-way session gone quiet");
}
