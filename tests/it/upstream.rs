//! Upstream pools: failover in order, all-down handling, marking a failed upstream down for the back-off,
//! upstream closing mid-session, and backpressure from a backend that stops reading.

use crate::support::gateway::tls_front;
use crate::support::gateway::RELAXED;
use crate::support::tls::tls_connect;
use crate::support::{backends, gateway, net, tls};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP (`kind = "peer"`) front with several upstreams, in order, and extra front keys.
fn front(name: &str, upstreams: &[SocketAddr], extra: &str) -> String {
    gateway::front("peer", name, "127.0.0.1:0", "tcp", upstreams, extra)
}

/// Reads until the gateway closes; returns what arrived and how long the close took. Panics after `limit`.
async fn drain_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, start.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// An address whose SYNs go unanswered: a listener with a backlog of 0 whose accept queue is already full,
/// so the kernel drops further connection attempts and a connect hangs until its timeout.
/// Returns the listener and the connections that fill it (keep both alive).
async fn blackhole() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    // Fill the queue until a connect attempt no longer completes promptly.
    for _ in 0..16 {
        match tokio::task::spawn_blocking(move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        })
        .await
        .unwrap()
        {
            Ok(s) => fill.push(s),
            Err(_) => return (sock, fill, addr),
        }
    }
    panic!("could not fill the accept queue of a backlog-0 listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_second_upstream() {
    let refusing = net::refusing_addr();
    let dead = refusing.addr;
    let echo = backends::echo_backend().await;
    // A back-off shorter than the gap between sessions, so every session tries the dead one first.
    let extra = "[front.upstream]\nretry_backoff = \"1ms\"\n";
    let running = gateway::start(&format!("{RELAXED}{}", front("p2p", &[dead, echo], extra))).await;
    for i in 0..5 {
        let mut s = net::connect_from("127.0.0.1", running.addr("p2p")).await.unwrap();
        assert!(
            net::echoes(&mut s).await,
            "session {i} did not reach the second upstream"
        );
        assert!(net::echoes(&mut s).await, "session {i} stopped relaying");
    }
    let pool = &running.front("p2p").unwrap().pool;
    assert!(pool.is_up(echo));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_over_tls() {
    let c = tls::certs();
    let refusing = net::refusing_addr();
    let dead = refusing.addr;
    let echo = backends::echo_backend().await;
    let running = gateway::start_in(
        c.dir.path(),
        &format!("{RELAXED}{}", tls_front("ssl", &c.cert, &c.key, &[dead, echo], "")),
    )
    .await;
    for i in 0..3 {
        let mut s = tls_connect(&c.der, running.addr("ssl")).await;
        s.write_all(b"over tls\n").await.unwrap();
        s.flush().await.unwrap();
        let mut got = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| panic!("session {i}: no echo"))
            .unwrap();
        assert_eq!(&got, b"over tls\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_upstreams_down_closes_client() {
    let refusing = net::refusing_addr();
    let dead = refusing.addr;
    let refusing2 = net::refusing_addr();
    let dead2 = refusing2.addr;
    let extra = "[front.upstream]\nconnect_timeout = \"500ms\"\n";
    let running = gateway::start(&format!("{RELAXED}{}", front("p2p", &[dead, dead2], extra))).await;
    for _ in 0..3 {
        let mut s = net::connect_from("127.0.0.1", running.addr("p2p")).await.unwrap();
        let _ = s.write_all(b"hello\n").await;
        let (got, took) = drain_until_closed(&mut s, Duration::from_secs(1)).await;
        assert!(got.is_empty(), "received {got:?} with every upstream down");
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
    let pool = &running.front("p2p").unwrap().pool;
    assert!(!pool.is_up(dead) && !pool.is_up(dead2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresponsive_upstream_hits_connect_timeout() {
    let (_l, _fill, hole) = blackhole().await;
    let extra = "[front.upstream]\nconnect_timeout = \"500ms\"\n";
    let running = gateway::start(&format!("{RELAXED}{}", front("p2p", &[hole], extra))).await;
    let start = Instant::now();
    let mut s = net::connect_from("127.0.0.1", running.addr("p2p")).await.unwrap();
    let (got, _) = drain_until_closed(&mut s, Duration::from_secs(3)).await;
    let took = start.elapsed();
    assert!(got.is_empty(), "received {got:?}");
    assert!(
        took >= Duration::from_millis(400) && took <= Duration::from_millis(1500),
        "closed after {took:?}, expected about the 500ms connect timeout"
    );
    assert!(!running.front("p2p").unwrap().pool.is_up(hole));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresponsive_first_upstream_fails_over_after_connect_timeout() {
    let (_l, _fill, hole) = blackhole().await;
    let echo = backends::echo_backend().await;
    let extra = "[front.upstream]\nconnect_timeout = \"300ms\"\nretry_backoff = \"60s\"\n";
    let running = gateway::start(&format!("{RELAXED}{}", front("p2p", &[hole, echo], extra))).await;
    let start = Instant::now();
    let mut s = net::connect_from("127.0.0.1", running.addr("p2p")).await.unwrap();
    assert!(net::echoes(&mut s).await);
    let first = start.elapsed();
    assert!(
        first >= Duration::from_millis(240),
        "first session did not wait for the connect timeout: {first:?}"
    );
    // Now the hole is marked down: the next session goes straight to the echo.
    let start = Instant::now();
    let mut s = net::connect_from("127.0.0.1", running.addr("p2p")).await.unwrap();
    assert!(net::echoes(&mut s).await);
    assert!(
        start.elapsed() < Duration::from_millis(250),
        "second session paid the connect timeout again: {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upstream_is_marked_down_and_skipped() {
    let refusing = net::refusing_addr();
    let dead = refusing.addr;
    let echo = backends::echo_backend().await;
    let extra = "[front.upstream]\nretry_backoff = \"60s\"\n";
    let running = gateway::start(&format!("{RELAXED}{}", front("p2p", &[dead, echo], extra))).await;
    let pool = &running.front("p2p").unwrap().pool;
    assert!(pool.is_up(dead), "nothing has failed yet");
    let mut s = net::connect_from("127.0.0.1", running.addr("p2p")).await.unwrap();
    assert!(net::echoes(&mut s).await);
    assert!(!pool.is_up(dead), "a failed upstream is marked down");
    assert!(pool.is_up(echo));
    // Bring the first upstream back as a backend that answers differently: within the back-off the gateway
    // must not try it, so sessions keep landing on the echo.
    let revived = refusing.revive();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = revived.accept().await {
            let _ = tx.send(());
            let _ = s.write_all(b"WRONG\n").await;
        }
    });
    for i in 0..3 {
        let mut s = net::connect_from("127.0.0.1", running.addr("p2p")).await.unwrap();
        assert!(
            net::echoes(&mut s).await,
            "session {i} went to the marked-down upstream"
        );
    }
    assert!(
        rx.try_recv().is_err(),
        "the gateway connected to an upstream marked down"
    );
    assert!(!pool.is_up(dead));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marked_down_upstream_is_retried_after_backoff() {
    let refusing = net::refusing_addr();
    let dead = refusing.addr;
    let echo = backends::echo_backend().await;
    let extra = "[front.upstream]\nretry_backoff = \"300ms\"\n";
    let running = gateway::start(&format!("{RELAXED}{}", front("p2p", &[dead, echo], extra))).await;
    let mut s = net::connect_from("127.0.0.1", running.addr("p2p")).await.unwrap();
    assert!(net::echoes(&mut s).await);
    let marked = Instant::now();
    let pool = &running.front("p2p").unwrap().pool;
    assert!(!pool.is_up(dead));
    // Bring the dead port back as an echo that reports each connection.
    let revived = refusing.revive();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = revived.accept().await {
            let _ = tx.send(());
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    // Waiting out the back-off is the point of the test.
    tokio::time::sleep(Duration::from_millis(300).saturating_sub(marked.elapsed()) + Duration::from_millis(50)).await;
    assert!(pool.is_up(dead), "back-off over: the upstream is up again");
    let mut s = net::connect_from("127.0.0.1", running.addr("p2p")).await.unwrap();
    assert!(net::echoes(&mut s).await);
    tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .expect("the first upstream was not retried after its back-off")
        .unwrap();
}

/// A backend that reads one line, then closes the connection.
async fn one_line_backend() -> SocketAddr {
    backends::serve(|mut s| async move {
        let mut b = [0u8; 1];
        while let Ok(1) = s.read(&mut b).await {
            if b[0] == b'\n' {
                break;
            }
        }
        drop(s);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_close_mid_session_closes_client() {
    let backend = one_line_backend().await;
    let running = gateway::start(&format!("{RELAXED}{}", front("p2p", &[backend], ""))).await;
    let mut s = net::connect_from("127.0.0.1", running.addr("p2p")).await.unwrap();
    s.write_all(b"one line\n").await.unwrap();
    let (got, took) = drain_until_closed(&mut s, Duration::from_secs(2)).await;
    assert!(got.is_empty(), "received {got:?}");
    assert!(took < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_close_mid_session_closes_tls_client() {
    let c = tls::certs();
    let backend = one_line_backend().await;
    let running = gateway::start_in(
        c.dir.path(),
        &format!("{RELAXED}{}", tls_front("ssl", &c.cert, &c.key, &[backend], "")),
    )
    .await;
    let mut s = tls_connect(&c.der, running.addr("ssl")).await;
    s.write_all(b"one line\n").await.unwrap();
    s.flush().await.unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("TLS client left hanging after the upstream closed");
    assert!(matches!(r, Ok(0)), "expected close_notify/EOF, got {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_not_reading_stalls_client_writes() {
    // The backend accepts and holds the connection without reading, until told to drain it.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (count_tx, count_rx) = tokio::sync::oneshot::channel::<u64>();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let _ = go_rx.await;
        let mut total = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        let _ = count_tx.send(total);
    });
    let running = gateway::start(&format!("{RELAXED}{}", front("p2p", &[backend], ""))).await;
    let mut s = net::connect_from("127.0.0.1", running.addr("p2p")).await.unwrap();
    const TOTAL: usize = 64 * 1024 * 1024;
    let mut writer = tokio::spawn(async move {
        let chunk = vec![0xabu8; 1024 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            s.write_all(&chunk).await.unwrap();
        }
        s.shutdown().await.unwrap();
        s
    });
    // Waiting for the write to (not) complete is the measurement.
    let stalled = tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_err();
    assert!(
        stalled,
        "64 MiB were accepted while the backend read nothing: the gateway buffers without bound"
    );
    // Once the backend reads, everything flows and nothing was lost.
    go_tx.send(()).unwrap();
    let _s = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("writes did not resume once the backend read")
        .unwrap();
    let total = tokio::time::timeout(Duration::from_secs(30), count_rx)
        .await
        .expect("backend did not see EOF")
        .unwrap();
    assert_eq!(total, TOTAL as u64);
}
