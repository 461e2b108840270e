//! The admin API under a hostile local process: connections without the token cannot hold its slots, one
//! peer holds at most its cap, and the operator's authenticated request gets through while others hold
//! every slot.

use crate::support::gateway::RELAXED;
use crate::support::net::connect_from;
use crate::support::{backends, clients, gateway};
use gatehouse::admin::AdminListen;
use gatehouse::Running;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "admin-test-token-0123456789abcdef";

/// A gateway with the admin API on a free loopback port (default per-peer cap: 8).
async fn start(dir: &Path) -> (Running, SocketAddr) {
    std::fs::write(dir.join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let up = backends::echo_backend().await;
    let toml = format!(
        "{RELAXED}[admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n{}",
        gateway::tcp_front("relay", up, "")
    );
    let running = gateway::start_in(dir, &toml).await;
    let admin = match running.admin_addr() {
        Some(AdminListen::Tcp(a)) => *a,
        other => panic!("admin API not on TCP: {other:?}"),
    };
    (running, admin)
}

/// One HTTP/1.1 reply read off `s`: its status and lower-cased head, or None if the connection ends first.
async fn read_reply(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + len {
                    let status = head.split(' ').nth(1)?.parse().ok()?;
                    return Some((status, head));
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .unwrap_or_else(|_| panic!("no reply within 5 s"))
}

/// Sends `GET path` (keep-alive, as browsers and probes do) with `auth` and reads the reply.
async fn get(s: &mut TcpStream, path: &str, auth: bool) -> Option<(u16, String)> {
    let auth = if auth {
        format!("Authorization: Bearer {TOKEN}\r\n")
    } else {
        String::new()
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    read_reply(s).await
}

/// A local process's connection that asked `/healthz` and would keep the connection for more.
async fn probe_holder(from: &str, admin: SocketAddr) -> TcpStream {
    let mut s = connect_from(from, admin).await.unwrap();
    let _ = get(&mut s, "/healthz", false).await;
    s
}

/// Whether the server has closed `s` (EOF or reset) within 5 s.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_gets_through_while_local_processes_hold_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let (_running, admin) = start(dir.path()).await;
    // The operator's script opened a keep-alive connection earlier and used its token on it.
    let mut script = connect_from("127.0.0.1", admin).await.unwrap();
    assert_eq!(get(&mut script, "/v1/bans", true).await.map(|r| r.0), Some(200));

    // A local process: keep-alive probes and silent connections, from 127.0.0.1 (more than one peer's cap)
    // and from 70 other loopback addresses each (more than all the slots together).
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(probe_holder("127.0.0.1", admin).await);
        held.push(connect_from("127.0.0.1", admin).await.unwrap());
    }
    for i in 1..=70 {
        held.push(probe_holder(&format!("127.0.1.{i}"), admin).await);
        held.push(connect_from(&format!("127.0.2.{i}"), admin).await.unwrap());
    }

    // The operator's new request, from the same address as the hoarder, is served at once.
    let started = Instant::now();
    let mut op = connect_from("127.0.0.1", admin).await.unwrap();
    let reply = get(&mut op, "/v1/bans", true).await;
    assert_eq!(reply.map(|r| r.0), Some(200), "the operator's request was dropped");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // And the script's authenticated connection was kept through it all.
    assert_eq!(get(&mut script, "/v1/bans", true).await.map(|r| r.0), Some(200));
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_holds_at_most_its_cap_and_probes_get_no_keep_alive() {
    let dir = tempfile::tempdir().unwrap();
    let (_running, admin) = start(dir.path()).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(connect_from("127.0.0.3", admin).await.unwrap());
    }
    // The 12 oldest made room for the newer ones: the server closed them.
    for (i, s) in silent.iter_mut().take(12).enumerate() {
        assert!(closed_by_server(s).await, "connection {i} of 127.0.0.3 still open");
    }
    // The 8 newest are served; a reply without the token ends its connection.
    for s in silent.iter_mut().skip(12) {
        let (status, head) = get(s, "/healthz", false).await.expect("a reply");
        assert_eq!(status, 200);
        assert!(head.contains("connection: close"), "{head}");
        assert!(closed_by_server(s).await, "kept alive without the token");
    }
    let metrics = clients::admin_get(admin, TOKEN, "/metrics").await;
    let displaced = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_admin_connections_shed_total{reason=\"displaced\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    // At least these 12 (the counter is process-wide, and other tests shed connections too).
    assert!(displaced.is_some_and(|n| n >= 12), "{metrics}");
}
