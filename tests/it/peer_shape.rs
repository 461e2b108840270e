//! Peer fronts that know their protocol: Bitcoin's v1 framing checked before and while bytes reach the
//! node (refusals counted by reason, repeat offenders banned across the cluster), BIP324 v2 allowed or
//! refused, a TLS ClientHello check, and the per-peer paces, slow-peer cut-off and buffer cap.

use crate::support::{backends, clients, gateway, net, tls};
use gatehouse::wire::bitcoin::{self, command, write_message, Magic, V1Check};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAGIC: Magic = [0xda, 0xb5, 0xbf, 0xfa];

fn guard(extra: &str) -> String {
    format!("[front.peer]\nprotocol = \"bitcoin\"\nmagic = \"dab5bffa\"\n{extra}")
}

fn msg(cmd: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    write_message(&MAGIC, &command(cmd).unwrap(), payload, &mut v);
    v
}

fn version() -> Vec<u8> {
    msg("version", &[7u8; 102])
}

/// The value of `gatehouse_<series>` now (0 when absent).
fn metric(series: &str) -> f64 {
    clients::sample(
        &gatehouse::telemetry::metrics::render(None),
        &format!("gatehouse_{series}"),
    )
    .unwrap_or(0.0)
}

fn refusals(front: &str, reason: &str) -> f64 {
    metric(&format!("peer_refusals_total{{front=\"{front}\",reason=\"{reason}\"}}"))
}

/// An echo backend that counts the connections it accepted.
async fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    let addr = backends::serve(move |mut s| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    })
    .await;
    (addr, n)
}

/// Sends `bytes` from `from` and expects the gateway to close without a byte back.
async fn refused_after(from: &str, to: SocketAddr, bytes: &[u8]) {
    let mut s = net::connect_from(from, to).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(matches!(r, Ok(Ok(_)) | Ok(Err(_))), "{from}: not closed within 5 s");
    assert!(got.is_empty(), "{from}: got {got:?}");
}

/// Sends `bytes` and expects them echoed back through the front (false: closed, or nothing within 5 s).
async fn passes(from: &str, to: SocketAddr, bytes: &[u8]) -> bool {
    match net::connect_from(from, to).await {
        Ok(mut s) => net::echoes_line(&mut s, bytes).await,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_shapes_are_refused_before_the_node_and_repeat_offenders_banned_across_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (node, accepted) = counting_echo().await;
    let links: Vec<SocketAddr> = (0..2).map(|_| net::free_addr()).collect();
    let keys = gateway::node_keys(dir.path(), 2);
    let mut gws = Vec::new();
    for i in 0..2 {
        let toml = format!(
            "{}[bans]\nmax_violations = 1\n\n[cluster]\nnode_key = \"node{i}.key\"\nlisten = \"{}\"\n\
             anti_entropy = \"1s\"\n{}\n{}",
            gateway::RELAXED,
            links[i],
            gateway::cluster_peers(i, &links, &keys),
            gateway::tcp_front(
                &format!("shape{i}"),
                node,
                &guard("v2 = \"refuse\"\nmax_payload = \"1MB\"\n")
            )
        );
        gws.push(gateway::start_in(dir.path(), &toml).await);
    }
    let front = gws[0].addr("shape0");

    // A v1 peer passes, and its bytes reach the node.
    assert!(passes("127.0.0.2", front, &[version(), msg("verack", &[])].concat()).await);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let mut wrong_magic = version();
    wrong_magic[..4].copy_from_slice(&[0xf9, 0xbe, 0xb4, 0xd9]);
    let mut random = vec![0u8; 64];
    for (i, b) in random.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(77);
    }
    let mut bad_checksum = version();
    bad_checksum[21] ^= 0xff;
    let mut oversized = version()[..24].to_vec();
    oversized[16..20].copy_from_slice(&2_000_000u32.to_le_bytes());
    // A good version, then a message whose checksum is wrong: caught mid-stream, before its last byte.
    let mut later = version();
    let mut ping = msg("ping", &[1; 8]);
    ping[20] ^= 1;
    later.extend(ping);
    let cases: [(&str, &[u8], &str); 6] = [
        ("127.0.0.3", &wrong_magic, "wrong_magic"),
        ("127.0.0.4", b"GET / HTTP/1.1\r\nHost: node\r\n\r\n", "http"),
        ("127.0.0.5", &random, "v2_refused"),
        ("127.0.0.6", &bad_checksum, "bad_checksum"),
        ("127.0.0.8", &oversized, "oversized"),
        ("127.0.0.9", &msg("ping", &[1; 8]), "first_not_version"),
    ];
    for (from, bytes, reason) in cases {
        let before = refusals("shape0", reason);
        refused_after(from, front, bytes).await;
        let counted = net::within(Duration::from_secs(2), async || {
            refusals("shape0", reason) == before + 1.0
        })
        .await;
        assert!(counted.is_some(), "{reason} not counted");
    }
    // None of them reached the node: it was not even connected to.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let before = refusals("shape0", "bad_checksum");
    refused_after("127.0.0.10", front, &later).await;
    assert!(
        net::within(Duration::from_secs(2), async || refusals("shape0", "bad_checksum")
            == before + 1.0)
        .await
        .is_some()
    );

    // One violation each is within max_violations = 1: nobody is banned yet.
    assert!(passes("127.0.0.3", gws[1].addr("shape1"), &version()).await);
    assert!(passes("127.0.0.3", front, &version()).await);
    // A second one from the same address bans it: here, and at the other gateway.
    refused_after("127.0.0.3", front, &wrong_magic).await;
    for (i, g) in gws.iter().enumerate() {
        let addr = g.addr(&format!("shape{i}"));
        let banned = net::within(Duration::from_secs(3), async || {
            !passes("127.0.0.3", addr, &version()).await
        })
        .await;
        assert!(banned.is_some(), "gateway {i} still admits the repeat offender");
    }
    // A refused v2 attempt is no offence: the same address may come back with v1.
    refused_after("127.0.0.5", front, &random).await;
    assert!(passes("127.0.0.5", front, &version()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_passes_where_v2_is_refused_and_v2_where_it_is_allowed() {
    let (node, _) = counting_echo().await;
    let toml = format!(
        "{}{}{}",
        gateway::RELAXED,
        gateway::tcp_front_at("v2refuse", "127.0.0.1:0", node, &guard("v2 = \"refuse\"\n")),
        gateway::tcp_front_at("v2allow", "127.0.1.1:0", node, &guard("v2 = \"allow\"\n"))
    );
    let gw = gateway::start(&toml).await;
    let v2_hello: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(29).wrapping_add(200)).collect();
    assert!(passes("127.0.0.2", gw.addr("v2refuse"), &version()).await);
    refused_after("127.0.0.2", gw.addr("v2refuse"), &v2_hello).await;
    assert!(passes("127.0.0.2", gw.addr("v2allow"), &v2_hello).await);
    assert!(passes("127.0.0.2", gw.addr("v2allow"), &version()).await);
    // An allowed v2 stream is opaque: what would break v1 framing passes.
    assert!(
        passes(
            "127.0.0.2",
            gw.addr("v2allow"),
            &[v2_hello.clone(), b"GET / HTTP/1.1\r\n".to_vec()].concat()
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rustls_client_passes_the_tls_check_and_plain_bytes_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = tls::localhost_cert(dir.path(), "node");
    let echo = backends::echo_backend().await;
    // The TLS "node" is a second front of the same gateway terminating TLS in front of an echo server.
    let node = gateway::start(&format!(
        "{}{}",
        gateway::RELAXED,
        gateway::tls_front("tlsnode", &cert, &key, &[echo], "")
    ))
    .await;
    let toml = format!(
        "{}{}",
        gateway::RELAXED,
        gateway::tcp_front("tlspeer", node.addr("tlsnode"), "[front.peer]\nprotocol = \"tls\"\n")
    );
    let gw = gateway::start(&toml).await;
    let mut s = tls::tls_connect(&der, gw.addr("tlspeer")).await;
    assert!(net::echoes(&mut s).await);
    let node_accepted = || metric("connections_accepted_total{front=\"tlsnode\"}");
    let before = (refusals("tlspeer", "not_client_hello"), node_accepted());
    refused_after("127.0.0.2", gw.addr("tlspeer"), b"hello there, node\n").await;
    refused_after("127.0.0.3", gw.addr("tlspeer"), b"GET / HTTP/1.1\r\n\r\n").await;
    let counted = net::within(Duration::from_secs(2), async || {
        refusals("tlspeer", "not_client_hello") == before.0 + 2.0
    })
    .await;
    assert!(counted.is_some());
    assert_eq!(node_accepted(), before.1, "plain bytes reached the TLS node");
}

/// A stub node: on a peer's first bytes, sends `reply` and then keeps the connection open.
async fn node_sending(reply: Vec<u8>) -> SocketAddr {
    let reply = Arc::new(reply);
    backends::serve(move |mut s| {
        let reply = reply.clone();
        async move {
            let mut b = [0u8; 4096];
            if s.read(&mut b).await.unwrap_or(0) == 0 {
                return;
            }
            let _ = s.write_all(&reply).await;
            let _ = s.read_to_end(&mut Vec::new()).await;
        }
    })
    .await
}

async fn read_exactly(s: &mut tokio::net::TcpStream, n: usize) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut got))
        .await
        .expect("20 s")
        .unwrap();
    (got, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paces_slow_peers_and_buffer_caps_show_on_the_wire_and_in_metrics() {
    const LEN: usize = 256 * 1024;
    let node = node_sending(vec![9u8; LEN]).await;
    let toml = format!(
        "{}{}{}",
        gateway::RELAXED,
        gateway::tcp_front_at(
            "paced",
            "127.0.0.1:0",
            node,
            "[front.peer]\nbytes_per_second_out = \"128KiB\"\nburst_out = \"16KiB\"\n"
        ),
        gateway::tcp_front_at("unpaced", "127.0.1.1:0", node, ""),
    );
    let gw = gateway::start(&toml).await;
    let mut fast = net::connect_from("127.0.0.2", gw.addr("unpaced")).await.unwrap();
    fast.write_all(b"x").await.unwrap();
    let (_, quick) = read_exactly(&mut fast, LEN).await;
    let mut slow = net::connect_from("127.0.0.2", gw.addr("paced")).await.unwrap();
    slow.write_all(b"x").await.unwrap();
    let (_, paced) = read_exactly(&mut slow, LEN).await;
    // 256 KiB at 128 KiB/s after a 16 KiB burst: at least 1.8 s.
    assert!(paced >= Duration::from_millis(1700), "paced {paced:?}");
    assert!(quick < Duration::from_millis(1000), "unpaced {quick:?}");
    assert!(metric("peer_throttled_total{front=\"paced\",pace=\"bytes_out\"}") >= 1.0);
    assert_eq!(
        metric("peer_throttled_total{front=\"unpaced\",pace=\"bytes_out\"}"),
        0.0
    );

    // The message pace: 13 messages at 4/s with a burst of 4 leave a debt of 9, so the peer's next
    // message waits more than 2 s.
    let (echo, _) = counting_echo().await;
    let gw2 = gateway::start(&format!(
        "{}{}",
        gateway::RELAXED,
        gateway::tcp_front("msgpaced", echo, &guard("message_rate = \"4/s\"\nmessage_burst = 4\n"))
    ))
    .await;
    let mut s = net::connect_from("127.0.0.2", gw2.addr("msgpaced")).await.unwrap();
    let mut all = version();
    for _ in 0..12 {
        all.extend(msg("ping", &[1; 8]));
    }
    s.write_all(&all).await.unwrap();
    let _ = read_exactly(&mut s, all.len()).await;
    let start = Instant::now();
    s.write_all(&msg("ping", &[2; 8])).await.unwrap();
    let _ = read_exactly(&mut s, 32).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "the 14th message passed after {took:?}"
    );
    assert!(metric("peer_throttled_total{front=\"msgpaced\",pace=\"messages\"}") >= 1.0);
    drop(s);

    // A peer that stops reading is cut off after slow_peer_timeout.
    let flood = node_sending(vec![5u8; 64 << 20]).await;
    let gw3 = gateway::start(&format!(
        "{}{}",
        gateway::RELAXED,
        gateway::tcp_front("slowpeer", flood, "[front.peer]\nslow_peer_timeout = \"1s\"\n")
    ))
    .await;
    let mut s = net::connect_from("127.0.0.2", gw3.addr("slowpeer")).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let cut = net::within(Duration::from_secs(10), async || {
        metric("peer_slow_disconnects_total{front=\"slowpeer\"}") == 1.0
    })
    .await;
    assert!(cut.is_some(), "a peer that reads nothing was not cut off");
    assert!(net::within(Duration::from_secs(2), async || gw3.open_sessions() == 0)
        .await
        .is_some());
    drop(s);
    assert!(
        net::within(Duration::from_secs(2), async || metric("peer_buffered_bytes") == 0.0)
            .await
            .is_some()
    );
}

fn v1_entry(ip: std::net::IpAddr, port: u16) -> Vec<u8> {
    let v6 = match ip {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
        std::net::IpAddr::V6(a) => a,
    };
    let mut e = vec![1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0];
    e.extend_from_slice(&v6.octets());
    e.extend_from_slice(&port.to_be_bytes());
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_addr_messages_lose_private_and_upstream_addresses() {
    // The node answers a peer with: an addr naming a public, a private, a loopback address and the
    // node itself; an addr too large for max_buffered; then a ping.
    let mut addr = vec![4];
    for ip in ["203.0.113.7", "10.1.2.3", "127.0.0.1", "192.168.7.7"] {
        addr.extend(v1_entry(ip.parse().unwrap(), 8333));
    }
    let mut huge = vec![0xfd, 0xe8, 0x03];
    for _ in 0..1000 {
        huge.extend(v1_entry("198.51.100.1".parse().unwrap(), 8333));
    }
    huge.extend(vec![0u8; 40_000]);
    let reply = [msg("addr", &addr), msg("addr", &huge), msg("ping", &[3; 8])].concat();
    let node = node_sending(reply).await;
    let toml = format!(
        "{}{}",
        gateway::RELAXED,
        gateway::tcp_front("scrub", node, &guard("filter_addr = true\nmax_buffered = \"64KiB\"\n"))
    );
    let gw = gateway::start(&toml).await;
    let mut s = net::connect_from("127.0.0.2", gw.addr("scrub")).await.unwrap();
    s.write_all(&version()).await.unwrap();
    let mut kept = vec![1];
    kept.extend(v1_entry("203.0.113.7".parse().unwrap(), 8333));
    let want = [msg("addr", &kept), msg("ping", &[3; 8])].concat();
    let (got, _) = read_exactly(&mut s, want.len()).await;
    assert_eq!(got, want);
    assert_eq!(V1Check::new(MAGIC).feed(&got, &bitcoin::PayloadCaps::default()), Ok(2));
    assert_eq!(metric("peer_addr_entries_dropped_total{front=\"scrub\"}"), 3.0);
    assert_eq!(metric("peer_addr_messages_dropped_total{front=\"scrub\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_buffers_count_toward_the_memory_budget_and_the_largest_are_cut() {
    // The node announces a 200 KB addr message to each peer and sends 150 KB of it: the address filter
    // holds what arrived. Eight such peers hold more than the 1 MiB budget.
    let mut partial = Vec::new();
    partial.extend_from_slice(&MAGIC);
    partial.extend_from_slice(&command("addr").unwrap());
    partial.extend_from_slice(&200_000u32.to_le_bytes());
    partial.extend_from_slice(&[0; 4]);
    partial.extend(vec![0u8; 150_000]);
    let node = node_sending(partial).await;
    let toml = format!(
        "{}[limits]\nmemory_budget = \"1MiB\"\n\n{}",
        gateway::RELAXED,
        gateway::tcp_front(
            "budget",
            node,
            &guard("filter_addr = true\nmax_buffered = \"256KiB\"\n")
        )
    );
    let gw = gateway::start(&toml).await;
    let held_before = metric("peer_buffered_bytes");
    let mut peers = Vec::new();
    for i in 0..8 {
        let mut s = net::connect_from(&format!("127.0.0.{}", 2 + i), gw.addr("budget"))
            .await
            .unwrap();
        s.write_all(&version()).await.unwrap();
        peers.push(s);
        // One at a time, so the budget fills in a known order.
        let held = net::within(Duration::from_secs(5), async || {
            metric("peer_buffered_bytes") - held_before >= (150_000 * (i + 1)) as f64 || gw.memory().cuts() > 0
        })
        .await;
        assert!(held.is_some(), "peer {i}: {} bytes held", metric("peer_buffered_bytes"));
    }
    assert!(gw.memory().cuts() >= 1, "the budget cut nobody");
    // A cut peer's connection is closed, with nothing of the held message sent on.
    let mut closed = 0;
    for s in &mut peers {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no peer connection was closed");
    // What the cut sessions held is released, from the gauge and the budget alike.
    let released = net::within(Duration::from_secs(2), async || {
        metric("peer_buffered_bytes") - held_before < (8 * 150_000) as f64
    })
    .await;
    assert!(released.is_some(), "{} bytes held", metric("peer_buffered_bytes"));
    assert!(gw.memory().used() < 8 * 150_000, "{} bytes charged", gw.memory().used());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_opening_is_refused_at_the_handshake_timeout_before_the_node_is_connected() {
    let (node, accepted) = counting_echo().await;
    let extra = |proto: &str| {
        format!(
            "[front.peer]\nprotocol = \"{proto}\"\n{}[front.timeouts]\nhandshake = \"1s\"\n",
            if proto == "bitcoin" {
                "magic = \"dab5bffa\"\n"
            } else {
                ""
            }
        )
    };
    let toml = format!(
        "{}{}{}",
        gateway::RELAXED,
        gateway::tcp_front_at("slowtls", "127.0.0.1:0", node, &extra("tls")),
        gateway::tcp_front_at("slowbtc", "127.0.1.1:0", node, &extra("bitcoin")),
    );
    let gw = gateway::start(&toml).await;
    for (front, opening) in [("slowtls", &[22u8, 3, 1][..]), ("slowbtc", &version()[..20])] {
        let before = refusals(front, "timeout");
        let mut s = net::connect_from("127.0.0.2", gw.addr(front)).await.unwrap();
        // Slowloris: a few bytes of a plausible opening, then nothing.
        s.write_all(opening).await.unwrap();
        let took = net::closed_within(&mut s, Duration::from_secs(5)).await;
        assert!(took >= Duration::from_millis(800), "{front}: closed after {took:?}");
        assert_eq!(refusals(front, "timeout"), before + 1.0, "{front}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the node was connected to");
}
