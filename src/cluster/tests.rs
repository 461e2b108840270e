//! Several nodes on loopback, real sockets, each with its own ban table.

use super::*;
use crate::wire::acl::CidrSet;
use std::net::IpAddr;
use std::time::Instant;

const HOUR: Duration = Duration::from_secs(3600);
/// Long enough for an echo, if there were one, to have come back.
const SETTLE: Duration = Duration::from_millis(600);

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f().then(|| start.elapsed())
}

struct Node {
    cluster: Cluster,
    bans: Arc<BanTable>,
}

/// Seeds so a node can be restarted with the same key.
fn seeds(n: usize) -> Vec<[u8; 32]> {
    (0..n).map(|_| NodeKey::generate_seed()).collect()
}

async fn start_node(i: usize, seeds: &[[u8; 32]], addrs: &[SocketAddr], ae: Duration, bans: Arc<BanTable>) -> Node {
    start_node_with(i, seeds, addrs, ae, bans, RecordLimits::default()).await
}

async fn start_node_with(
    i: usize,
    seeds: &[[u8; 32]],
    addrs: &[SocketAddr],
    ae: Duration,
    bans: Arc<BanTable>,
    limits: RecordLimits,
) -> Node {
    let peers = (0..seeds.len())
        .filter(|&j| j != i)
        .map(|j| (addrs[j], NodeKey::from_seed(seeds[j]).public()))
        .collect();
    let config = ClusterConfig {
        node_key_path: PathBuf::new(),
        listen: addrs[i],
        peers,
        anti_entropy: ae,
        cost: Default::default(),
        backend: Backend::Links,
        limits,
    };
    let cluster = Cluster::start_with_key(config, NodeKey::from_seed(seeds[i]), bans.clone())
        .await
        .unwrap();
    Node { cluster, bans }
}

async fn start_mesh(n: usize, ae: Duration) -> (Vec<Node>, Vec<[u8; 32]>, Vec<SocketAddr>) {
    let s = seeds(n);
    let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(start_node(i, &s, &addrs, ae, Arc::new(BanTable::default())).await);
    }
    let all_up = eventually(Duration::from_secs(5), || {
        nodes.iter().all(|n| n.cluster.status().peers.iter().all(|p| p.up))
    })
    .await;
    assert!(all_up.is_some(), "links did not come up");
    (nodes, s, addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ban_on_a_reaches_b_and_c_and_unban_on_b_reaches_a_and_c() {
    let (nodes, _, _) = start_mesh(3, Duration::from_secs(5)).await;
    let [a, b, c] = &nodes[..] else { unreachable!() };
    a.bans.ban(net("192.0.2.0/24"), HOUR, "scanner").unwrap();
    let took = eventually(Duration::from_secs(1), || {
        b.bans.is_banned(ip("192.0.2.77")) && c.bans.is_banned(ip("192.0.2.77"))
    })
    .await
    .expect("ban reached B and C within 1 s");
    println!("ban A→B,C in {took:?}");
    let at_b = b.bans.lookup(ip("192.0.2.77")).unwrap().1;
    assert_eq!(at_b.reason, "scanner");
    let left = crate::state::bans::remaining(at_b.until);
    assert!(left > HOUR - Duration::from_secs(5) && left <= HOUR, "{left:?}");

    b.bans.unban(net("192.0.2.0/24")).unwrap().unwrap();
    let took = eventually(Duration::from_secs(1), || {
        !a.bans.is_banned(ip("192.0.2.77")) && !c.bans.is_banned(ip("192.0.2.77"))
    })
    .await
    .expect("unban reached A and C within 1 s");
    println!("unban B→A,C in {took:?}");
    // Nothing echoes back: a while later, still lifted everywhere and nothing was rejected.
    tokio::time::sleep(SETTLE).await;
    for n in &nodes {
        assert!(!n.bans.is_banned(ip("192.0.2.77")));
        let s = n.cluster.stats();
        assert_eq!(
            (
                s.rejected_bad_signature,
                s.rejected_unlisted_origin,
                s.rejected_malformed,
                s.refused_links
            ),
            (0, 0, 0, 0),
            "{s:?}"
        );
    }
    assert_eq!(a.cluster.stats().published, 1);
    assert_eq!(b.cluster.stats().published, 1);
    assert_eq!(c.cluster.stats().published, 0);
}

/// A listed peer played by the test, so it can send whatever it likes over a genuine link.
async fn rogue_link(target: &Node, seed: [u8; 32]) -> (link::LinkReader, link::LinkWriter) {
    let key = NodeKey::from_seed(seed);
    link::connect(target.cluster.local_addr(), &key, target.cluster.node())
        .await
        .expect("a listed key may link")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unlisted_signer_tampered_record_and_replay_after_unban_are_rejected() {
    // Node 0 is A; node 1 is B, a real node; node 2 is played by the test over a real link.
    let s = seeds(3);
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let a = start_node(0, &s, &addrs, Duration::from_secs(5), Arc::new(BanTable::default())).await;
    let b = start_node(1, &s, &addrs, Duration::from_secs(5), Arc::new(BanTable::default())).await;
    let (_r, mut w) = rogue_link(&a, s[2]).await;
    let peer = NodeKey::from_seed(s[2]);
    let stranger = NodeKey::generate();
    let carry = |rec: SignedRecord| {
        Msg::Record(Carried {
            rec,
            remaining_ms: 3_600_000,
        })
    };
    let now = unix_ms(SystemTime::now());

    // Signed by a key nobody listed.
    let r = SignedRecord::sign(
        &stranger,
        Op::Ban,
        net("198.51.100.1/32"),
        "x".into(),
        now,
        3_600_000,
        now_micros(),
    );
    w.send(&carry(r)).await.unwrap();
    // Signed by the listed peer, then altered in transit (a longer ban, a wider prefix).
    let mut t = SignedRecord::sign(
        &peer,
        Op::Ban,
        net("198.51.100.2/32"),
        "x".into(),
        now,
        60_000,
        now_micros(),
    );
    t.duration_ms = 3_600_000;
    w.send(&carry(t)).await.unwrap();
    let mut t = SignedRecord::sign(
        &peer,
        Op::Ban,
        net("198.51.100.3/32"),
        "x".into(),
        now,
        60_000,
        now_micros(),
    );
    t.prefix = net("198.51.100.0/24");
    w.send(&carry(t)).await.unwrap();
    let got = eventually(Duration::from_secs(2), || {
        let s = a.cluster.stats();
        s.rejected_unlisted_origin == 1 && s.rejected_bad_signature == 2
    })
    .await;
    assert!(got.is_some(), "{:?}", a.cluster.stats());

    // A genuine ban from the peer, then its unban, then the ban replayed.
    let v = now_micros();
    let ban = SignedRecord::sign(&peer, Op::Ban, net("203.0.113.9/32"), "peer".into(), now, 3_600_000, v);
    let unban = SignedRecord::sign(
        &peer,
        Op::Unban,
        net("203.0.113.9/32"),
        String::new(),
        now,
        3_600_000,
        v + 1,
    );
    w.send(&carry(ban.clone())).await.unwrap();
    assert!(
        eventually(Duration::from_secs(1), || a.bans.is_banned(ip("203.0.113.9"))
            && b.bans.is_banned(ip("203.0.113.9")))
        .await
        .is_some()
    );
    w.send(&carry(unban)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(1), || !a.bans.is_banned(ip("203.0.113.9"))
            && !b.bans.is_banned(ip("203.0.113.9")))
        .await
        .is_some()
    );
    let stale_before = a.cluster.stats().stale;
    w.send(&carry(ban)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(1), || a.cluster.stats().stale > stale_before)
            .await
            .is_some()
    );
    tokio::time::sleep(SETTLE).await;

    for n in [&a, &b] {
        for host in [
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.3",
            "198.51.100.200",
            "203.0.113.9",
        ] {
            assert!(!n.bans.is_banned(ip(host)), "{host} banned");
        }
    }
    let sb = b.cluster.stats();
    assert_eq!(
        (sb.rejected_bad_signature, sb.rejected_unlisted_origin),
        (0, 0),
        "rejects never relayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_from_an_unlisted_node_is_refused() {
    let (nodes, _, addrs) = start_mesh(2, Duration::from_secs(5)).await;
    let a = &nodes[0];
    // A whole gatehouse node, configured with A as its peer, whose key A does not list.
    let stranger_seed = NodeKey::generate_seed();
    let stranger_key = NodeKey::from_seed(stranger_seed);
    let stranger_bans = Arc::new(BanTable::default());
    stranger_bans.ban(net("192.0.2.1/32"), HOUR, "injected").unwrap();
    let config = ClusterConfig {
        node_key_path: PathBuf::new(),
        listen: free_addr(),
        peers: vec![(addrs[0], a.cluster.node())],
        anti_entropy: Duration::from_millis(100),
        cost: Default::default(),
        backend: Backend::Links,
        limits: Default::default(),
    };
    // The stranger's node dials A only if its key is the smaller; the hand-made dial covers the other case.
    let stranger = Cluster::start_with_key(config, NodeKey::from_seed(stranger_seed), stranger_bans)
        .await
        .unwrap();
    let e = link::connect(addrs[0], &stranger_key, a.cluster.node())
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, link::LinkError::Io(_)), "A closes at the hello: {e:?}");
    let refused = eventually(Duration::from_secs(2), || a.cluster.stats().refused_links >= 1).await;
    assert!(refused.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!a.bans.is_banned(ip("192.0.2.1")));
    assert!(!nodes[1].bans.is_banned(ip("192.0.2.1")));
    assert!(!stranger.status().peers[0].up);
    assert!(a.cluster.status().peers.iter().all(|p| p.key != stranger_key.public()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_converges_by_anti_entropy() {
    let ae = Duration::from_millis(300);
    let (mut nodes, s, addrs) = start_mesh(3, ae).await;
    let b = nodes.remove(1);
    b.cluster.shutdown();
    // While B is down: bans and an unban on A and C.
    let (a, c) = (&nodes[0], &nodes[1]);
    a.bans.ban(net("192.0.2.1/32"), HOUR, "a1").unwrap();
    a.bans.ban(net("192.0.2.2/32"), HOUR, "a2").unwrap();
    c.bans.ban(net("2001:db8::/48"), HOUR, "c1").unwrap();
    assert!(
        eventually(Duration::from_secs(1), || a.bans.is_banned(ip("2001:db8::1"))
            && c.bans.is_banned(ip("192.0.2.2")))
        .await
        .is_some()
    );
    c.bans.unban(net("192.0.2.2/32")).unwrap().unwrap();
    assert!(
        eventually(Duration::from_secs(1), || !a.bans.is_banned(ip("192.0.2.2")))
            .await
            .is_some()
    );
    // B comes back with the same key and an empty table (as after losing its disk).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = start_node(1, &s, &addrs, ae, Arc::new(BanTable::default())).await;
    let took = eventually(ae * 2 + Duration::from_secs(5), || {
        b.bans.is_banned(ip("192.0.2.1")) && b.bans.is_banned(ip("2001:db8::1"))
    })
    .await
    .expect("B converged");
    println!("B converged in {took:?}");
    let live: Vec<String> = b.bans.list(None).iter().map(|r| r.prefix.to_string()).collect();
    assert_eq!(live, ["192.0.2.1/32", "2001:db8::/48"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_follows_the_hop_remainder_not_the_origins_clock() {
    let (nodes, s, _) = start_mesh(2, Duration::from_secs(5)).await;
    let a = &nodes[0];
    let peer = NodeKey::from_seed(s[1]);
    // The origin's clock is 2 minutes ahead: created "in the future"; the hop says 30 s are left.
    let created = unix_ms(SystemTime::now()) + 120_000;
    let rec = SignedRecord::sign(
        &peer,
        Op::Ban,
        net("192.0.2.50/32"),
        "skew".into(),
        created,
        60_000,
        now_micros(),
    );
    assert_eq!(
        a.cluster.ingest(Carried {
            rec: rec.clone(),
            remaining_ms: 30_000
        }),
        Verdict::Applied
    );
    let until = a.bans.lookup(ip("192.0.2.50")).unwrap().1.until;
    let left = crate::state::bans::remaining(until);
    assert!(
        left > Duration::from_secs(28) && left <= Duration::from_secs(30),
        "{left:?}"
    );
    // Replays change nothing, and a relay cannot stretch the ban past its signed duration.
    assert_eq!(
        a.cluster.ingest(Carried {
            rec: rec.clone(),
            remaining_ms: 60_000
        }),
        Verdict::Duplicate
    );
    assert_eq!(a.bans.lookup(ip("192.0.2.50")).unwrap().1.until, until);
    let rec2 = SignedRecord {
        version: rec.version + 1,
        ..rec
    };
    let rec2 = SignedRecord::sign(
        &peer,
        rec2.op,
        rec2.prefix,
        rec2.reason,
        rec2.created_ms,
        rec2.duration_ms,
        rec2.version,
    );
    assert_eq!(
        a.cluster.ingest(Carried {
            rec: rec2,
            remaining_ms: 999_999_999
        }),
        Verdict::Applied
    );
    let left = crate::state::bans::remaining(a.bans.lookup(ip("192.0.2.50")).unwrap().1.until);
    assert!(left <= Duration::from_secs(60), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peers_ban_is_listed_under_the_origin_node() {
    let (nodes, _, _) = start_mesh(3, Duration::from_secs(5)).await;
    let [a, b, c] = &nodes[..] else { unreachable!() };
    let made = a.bans.ban(net("192.0.2.0/24"), HOUR, "scanner").unwrap();
    assert!(eventually(Duration::from_secs(1), || b.bans.is_banned(ip("192.0.2.1"))
        && c.bans.is_banned(ip("192.0.2.1")))
    .await
    .is_some());
    assert_eq!(a.bans.list(None)[0].origin, crate::state::bans::LOCAL_ORIGIN);
    let a_id = a.cluster.node().to_string();
    for n in [b, c] {
        let listed = n.bans.list(None);
        assert_eq!(listed.len(), 1);
        let r = &listed[0];
        assert_eq!((r.origin.as_str(), r.version), (a_id.as_str(), made.version), "{r:?}");
        assert!(r.attachment.is_some());
    }
    // Remote statements are not re-published as the receivers' own.
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        (
            a.cluster.stats().published,
            b.cluster.stats().published,
            c.cluster.stats().published
        ),
        (1, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_holds_remote_statements_without_any_peer() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("b.journal");
    let s = seeds(2);
    let addrs: Vec<SocketAddr> = (0..2).map(|_| free_addr()).collect();
    let ae = Duration::from_secs(5);
    let a = start_node(0, &s, &addrs, ae, Arc::new(BanTable::default())).await;
    let b_bans = Arc::new(BanTable::open(&journal, CidrSet::new()).unwrap());
    let b = start_node(1, &s, &addrs, ae, b_bans).await;
    a.bans.ban(net("192.0.2.1/32"), HOUR, "a1").unwrap();
    a.bans.ban(net("192.0.2.2/32"), HOUR, "a2").unwrap();
    a.bans.ban(net("2001:db8::/48"), HOUR, "a3").unwrap();
    b.bans.ban(net("198.51.100.0/24"), HOUR, "b1").unwrap();
    assert!(eventually(Duration::from_secs(2), || b.bans.is_banned(ip("192.0.2.2"))
        && b.bans.is_banned(ip("2001:db8::1"))
        && a.bans.is_banned(ip("198.51.100.1")))
    .await
    .is_some());
    a.bans.unban(net("192.0.2.2/32")).unwrap().unwrap();
    assert!(
        eventually(Duration::from_secs(1), || !b.bans.is_banned(ip("192.0.2.2")))
            .await
            .is_some()
    );
    let before = b.cluster.status().records;
    assert_eq!(before, 4, "three of A's statements (one a lift) and B's own ban");
    // The journal keeps times to the millisecond; everything else must come back exactly.
    let summary = |t: &BanTable| {
        t.list(None)
            .into_iter()
            .map(|r| (r.prefix, r.origin, r.version, r.reason, r.attachment))
            .collect::<Vec<_>>()
    };
    let listed_before = summary(&b.bans);
    a.cluster.shutdown();
    b.cluster.shutdown();
    drop(b.bans);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // B alone, from its journal: no peer is up to teach it anything.
    let b_bans = Arc::new(BanTable::open(&journal, CidrSet::new()).unwrap());
    let b = start_node(1, &s, &addrs, ae, b_bans).await;
    assert!(b.cluster.status().peers.iter().all(|p| !p.up));
    assert_eq!(b.cluster.status().records, before);
    assert_eq!(summary(&b.bans), listed_before);
    let a_id = NodeKey::from_seed(s[0]).public().to_string();
    assert_eq!(b.bans.lookup(ip("192.0.2.1")).unwrap().1.origin, a_id);
    assert!(!b.bans.is_banned(ip("192.0.2.2")));
    // Only B's own ban was re-signed; A's statements are held as A signed them.
    assert_eq!(b.cluster.stats().published, 1);
    // A comes back and finds nothing to exchange beyond what both already hold.
    let a = start_node(0, &s, &addrs, Duration::from_millis(200), Arc::new(BanTable::default())).await;
    assert!(
        eventually(Duration::from_secs(3), || a.bans.is_banned(ip("192.0.2.1"))
            && a.bans.is_banned(ip("198.51.100.1")))
        .await
        .is_some(),
        "A relearns from B"
    );
    assert_eq!(a.bans.lookup(ip("192.0.2.1")).unwrap().1.origin, a_id);
    assert_eq!(b.cluster.stats().rejected_bad_signature, 0);
}

/// A chain A — B — C (C is not linked to A): a burst of 10,000 bans on A reaches C through B's relay in
/// batches, with nothing dropped on the way and long before any anti-entropy round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_bans_is_relayed_in_batches_without_drops() {
    let s = seeds(3);
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let key = |i: usize| NodeKey::from_seed(s[i]).public();
    let mut nodes = Vec::new();
    // C lists A's key (so it trusts A's records) at an address nothing listens on: no link between them.
    let nowhere = free_addr();
    for (i, peers) in [vec![1], vec![0, 2], vec![1, 0]].into_iter().enumerate() {
        let config = ClusterConfig {
            node_key_path: PathBuf::new(),
            listen: addrs[i],
            peers: peers
                .into_iter()
                .map(|j| (if (i, j) == (2, 0) { nowhere } else { addrs[j] }, key(j)))
                .collect(),
            anti_entropy: Duration::from_secs(3600),
            cost: Default::default(),
            backend: Backend::Links,
            limits: Default::default(),
        };
        let bans = Arc::new(BanTable::default());
        let cluster = Cluster::start_with_key(config, NodeKey::from_seed(s[i]), bans.clone())
            .await
            .unwrap();
        nodes.push(Node { cluster, bans });
    }
    let up = eventually(Duration::from_secs(5), || {
        nodes
            .iter()
            .map(|n| n.cluster.status().peers.iter().filter(|p| p.up).count())
            .sum::<usize>()
            == 4
    })
    .await;
    assert!(up.is_some(), "links did not come up");
    const N: u32 = 10_000;
    for i in 0..N {
        let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        nodes[0]
            .bans
            .ban(IpNetwork::from(IpAddr::V4(a)), HOUR, "burst")
            .unwrap();
    }
    let reached = eventually(Duration::from_secs(30), || nodes[2].bans.len() == N as usize).await;
    assert!(
        reached.is_some(),
        "C holds {} of {N}, B {}; {:?} {:?} {:?}",
        nodes[2].bans.len(),
        nodes[1].bans.len(),
        nodes[0].cluster.stats(),
        nodes[1].cluster.stats(),
        nodes[2].cluster.stats()
    );
    eprintln!("C holds all {N} after {reached:?}");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n.cluster.stats().dropped_sends, 0, "node {i}: {:?}", n.cluster.stats());
    }
}

#[test]
fn fingerprints_ignore_order_and_see_one_changed_id() {
    let ids: Vec<u64> = (0..5_000u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xabcd)
        .collect();
    let n = summary::bucket_count(ids.len());
    let forward = summary::fingerprints(ids.iter().copied(), n);
    assert_eq!(forward, summary::fingerprints(ids.iter().rev().copied(), n));
    let mut shuffled = ids.clone();
    shuffled.sort_unstable();
    assert_eq!(forward, summary::fingerprints(shuffled, n));

    let mut changed = ids.clone();
    changed[1234] ^= 1 << 40;
    let other = summary::fingerprints(changed.iter().copied(), n);
    let differ: Vec<usize> = (0..n as usize).filter(|&b| forward[b] != other[b]).collect();
    let (old, new) = (summary::bucket_of(ids[1234], n), summary::bucket_of(changed[1234], n));
    // Bit 40 is above the bucket bits, so the id stays in its bucket and only that bucket differs.
    assert_eq!(old, new);
    assert_eq!(differ, [old as usize]);
    // One id fewer differs too.
    let fewer = summary::fingerprints(ids[1..].iter().copied(), n);
    assert_ne!(fewer, forward);
}

#[test]
fn bucket_count_is_a_clamped_power_of_two() {
    assert_eq!(summary::bucket_count(0), summary::MIN_BUCKETS);
    assert_eq!(summary::bucket_count(1_024), 64);
    assert_eq!(summary::bucket_count(5_000), 256);
    assert_eq!(summary::bucket_count(100_000), 4_096);
    assert_eq!(summary::bucket_count(10_000_000), summary::MAX_BUCKETS);
    for n in [0, 1, 31, 33, 2_047, 2_049, 123_456, usize::MAX] {
        let b = summary::bucket_count(n);
        assert!(summary::valid_count(b) && b >= summary::MIN_BUCKETS, "{n} -> {b}");
    }
    assert!(!summary::valid_count(0) && !summary::valid_count(96) && !summary::valid_count(1 << 17));
}

/// A and B share 5,000 of A's bans; while their link is down, A makes 2 more and B 3 more. Once linked
/// again they converge through bucket summaries: no flat digest goes either way, a round costs a few
/// kilobytes, and only records of the differing buckets travel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_tables_converge_through_bucket_summaries() {
    const N: u32 = 5_000;
    let ae = Duration::from_millis(300);
    let s = seeds(2);
    let addrs: Vec<SocketAddr> = (0..2).map(|_| free_addr()).collect();
    let a_bans = Arc::new(BanTable::default());
    let a = start_node(0, &s, &addrs, ae, a_bans.clone()).await;
    let b = start_node(1, &s, &addrs, ae, Arc::new(BanTable::default())).await;
    for i in 0..N {
        let host = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        a.bans.ban(IpNetwork::from(IpAddr::V4(host)), HOUR, "bulk").unwrap();
    }
    let shared = eventually(Duration::from_secs(30), || b.bans.len() == N as usize).await;
    assert!(shared.is_some(), "B holds {} of {N}", b.bans.len());

    a.cluster.shutdown();
    let down = eventually(Duration::from_secs(5), || !b.cluster.status().peers[0].up).await;
    assert!(down.is_some(), "B still sees the link up");
    for h in ["192.0.2.1/32", "192.0.2.2/32"] {
        a_bans.ban(net(h), HOUR, "a-only").unwrap();
    }
    for h in ["198.51.100.1/32", "198.51.100.2/32", "198.51.100.3/32"] {
        b.bans.ban(net(h), HOUR, "b-only").unwrap();
    }
    let b_before = b.cluster.stats();
    let a = start_node(0, &s, &addrs, ae, a_bans).await;

    let total = N as usize + 5;
    let met = eventually(Duration::from_secs(20), || {
        a.bans.len() == total && b.bans.len() == total
    })
    .await;
    assert!(met.is_some(), "A {} B {} of {total}", a.bans.len(), b.bans.len());
    // A few more rounds with nothing to repair.
    tokio::time::sleep(ae * 4).await;
    let listed = |t: &BanTable| t.list(None).into_iter().map(|r| r.prefix).collect::<HashSet<_>>();
    assert_eq!(listed(&a.bans), listed(&b.bans));
    assert_eq!(a.cluster.status().records, total);
    assert_eq!(b.cluster.status().records, total);

    let (sa, sb) = (a.cluster.stats(), b.cluster.stats());
    assert_eq!(sa.digests_sent, 0, "A sent a flat digest: {sa:?}");
    assert_eq!(sb.digests_sent, b_before.digests_sent, "B sent a flat digest: {sb:?}");
    let b_summaries = sb.summaries_sent - b_before.summaries_sent;
    assert!(sa.summaries_sent >= 3 && b_summaries >= 3, "{sa:?} {sb:?}");
    assert!(sa.bucket_digests_sent + sb.bucket_digests_sent >= 1, "{sa:?} {sb:?}");
    // A flat digest of 5,000 ids is ~100 kB of JSON; a summary of 256 buckets is ~5 kB, and a bucket
    // digest carries only the few buckets that differed.
    for (who, bytes, msgs) in [
        ("A", sa.digest_bytes_sent, sa.summaries_sent + sa.bucket_digests_sent),
        (
            "B",
            sb.digest_bytes_sent - b_before.digest_bytes_sent,
            b_summaries + sb.bucket_digests_sent - b_before.bucket_digests_sent,
        ),
    ] {
        assert!(bytes / msgs < 10_000, "{who}: {bytes} bytes in {msgs} messages");
    }
    // Only the differing buckets' records travelled: answering with every record the peer's bucket
    // digest did not list would have re-sent thousands of held ones.
    assert!(sa.duplicate < 50, "A received {} duplicates", sa.duplicate);
    assert!(
        sb.duplicate - b_before.duplicate < 50,
        "B received {} duplicates",
        sb.duplicate - b_before.duplicate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listed_peer_cannot_ban_everyone_forever_endlessly_or_from_the_future() {
    // Node 0 is A, with a small per-origin cap; node 1 is a listed peer played by the test.
    let s = seeds(2);
    let addrs: Vec<SocketAddr> = (0..2).map(|_| free_addr()).collect();
    let limits = RecordLimits {
        max_duration: Duration::from_secs(86_400),
        max_per_origin: 3,
    };
    let ae = Duration::from_secs(30);
    let a = start_node_with(0, &s, &addrs, ae, Arc::new(BanTable::default()), limits).await;
    let (_r, mut w) = rogue_link(&a, s[1]).await;
    let peer = NodeKey::from_seed(s[1]);
    let now = unix_ms(SystemTime::now());
    let ban = |prefix: &str, duration_ms: u64, version: u64| {
        Msg::Record(Carried {
            rec: SignedRecord::sign(&peer, Op::Ban, net(prefix), "forged".into(), now, duration_ms, version),
            remaining_ms: duration_ms,
        })
    };
    let day = 86_400_000;
    // Everyone, or a sizeable part of the Internet: refused whatever the signature.
    for p in ["0.0.0.0/0", "::/0", "10.0.0.0/7", "2001::/18"] {
        w.send(&ban(p, 60_000, now_micros())).await.unwrap();
    }
    // Longer than max_record_duration.
    w.send(&ban("198.51.100.1/32", 2 * day, now_micros())).await.unwrap();
    // From the future: an hour ahead, and far ahead on a record that has already expired.
    w.send(&ban("198.51.100.2/32", 60_000, now_micros() + 3_600_000_000))
        .await
        .unwrap();
    let expired = Msg::Record(Carried {
        rec: SignedRecord::sign(
            &peer,
            Op::Ban,
            net("198.51.100.3/32"),
            "old".into(),
            now - 10_000,
            1_000,
            u64::MAX / 2,
        ),
        remaining_ms: 0,
    });
    w.send(&expired).await.unwrap();
    let refused = eventually(Duration::from_secs(2), || {
        let st = a.cluster.stats();
        (st.rejected_too_wide, st.rejected_too_long, st.rejected_future_version) == (4, 1, 2)
    })
    .await;
    assert!(refused.is_some(), "{:?}", a.cluster.stats());
    for host in [
        "192.0.2.1",
        "10.1.2.3",
        "2001::1",
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
    ] {
        assert!(!a.bans.is_banned(ip(host)), "{host} banned");
    }
    // Nothing pushed this node's clock ahead: its own next statement is versioned about now.
    let mine = a.bans.ban(net("192.0.2.9/32"), HOUR, "local").unwrap();
    assert!(
        mine.version < now_micros() + 60_000_000,
        "the clock was pushed to {}",
        mine.version
    );

    // At most three statements held for this origin; replacing one it holds is still fine.
    for i in 1..=5 {
        w.send(&ban(&format!("203.0.113.{i}/32"), 60_000, now_micros()))
            .await
            .unwrap();
    }
    let capped = eventually(Duration::from_secs(2), || {
        let st = a.cluster.stats();
        st.applied == 3 && st.rejected_origin_full == 2
    })
    .await;
    assert!(capped.is_some(), "{:?}", a.cluster.stats());
    assert!(a.bans.is_banned(ip("203.0.113.3")) && !a.bans.is_banned(ip("203.0.113.4")));
    w.send(&ban("203.0.113.1/32", 120_000, now_micros())).await.unwrap();
    assert!(
        eventually(Duration::from_secs(2), || a.cluster.stats().applied == 4)
            .await
            .is_some(),
        "{:?}",
        a.cluster.stats()
    );
    assert_eq!(a.cluster.status().records, 4, "three of the peer's and A's own");
}
