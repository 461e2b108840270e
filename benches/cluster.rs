//! Cluster, ban-table and cost-ledger benchmark: `cargo bench --bench cluster` (add `-- --quick` for a short run).
//!
//! Two real cluster nodes on loopback (their own journaled ban tables in a temporary directory, real
//! links), then the ban table alone. Prints one markdown table. Timings are of this machine under whatever
//! else it runs; the targets are the project's, not assertions.

use gatehouse::cluster::keys::NodeKey;
use gatehouse::cluster::{Cluster, ClusterConfig};
use gatehouse::state::bans::BanTable;
use gatehouse::state::journal::{CompactPolicy, Entry, Journal, Op};
use gatehouse::wire::acl::CidrSet;
use ipnetwork::IpNetwork;
use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const HOUR: Duration = Duration::from_secs(3600);

struct Row {
    what: String,
    result: String,
    target: &'static str,
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// The i-th address of a block no test network uses, so banned and probed addresses never collide.
fn addr(i: u32) -> IpAddr {
    IpAddr::from((0x0a00_0000u32 + i * 2).to_be_bytes())
}

/// Addresses between the banned ones: never banned.
fn clear_addr(i: u32) -> IpAddr {
    IpAddr::from((0x0a00_0001u32 + i * 2).to_be_bytes())
}

struct Pair {
    seeds: [[u8; 32]; 2],
    addrs: [SocketAddr; 2],
}

impl Pair {
    fn new() -> Pair {
        Pair {
            seeds: [NodeKey::generate_seed(), NodeKey::generate_seed()],
            addrs: [free_addr(), free_addr()],
        }
    }

    async fn start(&self, i: usize, bans: Arc<BanTable>) -> Cluster {
        let j = 1 - i;
        let config = ClusterConfig {
            node_key_path: PathBuf::new(),
            listen: self.addrs[i],
            peers: vec![(self.addrs[j], NodeKey::from_seed(self.seeds[j]).public())],
            anti_entropy: Duration::from_secs(5),
            cost: Default::default(),
            backend: gatehouse::cluster::Backend::Links,
            limits: Default::default(),
        };
        Cluster::start_with_key(config, NodeKey::from_seed(self.seeds[i]), bans)
            .await
            .expect("cluster node starts")
    }
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fmt_d(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else if d < Duration::from_secs(10) {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// A journal of `n` local bans, written in one go: `n` fsyncs would measure the disk, not the table.
fn write_journal(path: &Path, n: u32) {
    let (mut j, _) = Journal::open(path, CompactPolicy::default()).expect("journal opens");
    let now = SystemTime::now();
    let entries: Vec<Entry> = (0..n)
        .map(|i| Entry {
            op: Op::Ban,
            prefix: IpNetwork::from(addr(i)),
            until: now + HOUR,
            reason: "cost hard limit".into(),
            origin: "local".into(),
            created: now,
            version: u64::from(i) + 1,
            attachment: None,
        })
        .collect();
    j.compact(entries.iter()).expect("journal written");
}

/// (1) Ban on A until B enforces it, one ban at a time.
async fn propagation(dir: &Path, n: usize, rows: &mut Vec<Row>) {
    let pair = Pair::new();
    let a_bans = Arc::new(BanTable::open(&dir.join("prop-a.journal"), CidrSet::new()).expect("journal"));
    let b_bans = Arc::new(BanTable::open(&dir.join("prop-b.journal"), CidrSet::new()).expect("journal"));
    let a = pair.start(0, a_bans.clone()).await;
    let b = pair.start(1, b_bans.clone()).await;
    let up = wait_until(Duration::from_secs(10), || {
        a.status().peers.iter().all(|p| p.up) && b.status().peers.iter().all(|p| p.up)
    })
    .await;
    assert!(up.is_some(), "links did not come up");
    let mut took = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let ip = addr(i);
        let start = Instant::now();
        a_bans.ban(IpNetwork::from(ip), HOUR, "bench").expect("ban");
        // B applies remote statements without a feed event, so watch its table; yielding keeps the
        // spin from starving the link tasks on this runtime.
        while !b_bans.is_banned(ip) {
            assert!(start.elapsed() < Duration::from_secs(10), "ban {i} never reached B");
            tokio::task::yield_now().await;
        }
        took.push(start.elapsed());
    }
    took.sort();
    let label = format!("{n} bans, ban() on A → is_banned on B");
    rows.push(Row {
        what: format!("Propagation p50 ({label})"),
        result: fmt_d(percentile(&took, 0.5)),
        target: "ms, not the old 100–200 ms poll",
    });
    rows.push(Row {
        what: "Propagation p99".into(),
        result: fmt_d(percentile(&took, 0.99)),
        target: "",
    });
    rows.push(Row {
        what: "Propagation max".into(),
        result: fmt_d(*took.last().expect("at least one ban")),
        target: "",
    });
    assert_eq!(b.stats().rejected_bad_signature, 0);
}

/// (2) A holds `n` bans; B starts empty and links up. Then B restarts from its journal.
async fn anti_entropy(dir: &Path, n: u32, rows: &mut Vec<Row>) {
    let pair = Pair::new();
    let a_path = dir.join("ae-a.journal");
    let b_path = dir.join("ae-b.journal");
    write_journal(&a_path, n);
    let a_bans = Arc::new(BanTable::open(&a_path, CidrSet::new()).expect("journal"));
    let started = Instant::now();
    let a = pair.start(0, a_bans.clone()).await;
    let signing = started.elapsed();
    rows.push(Row {
        what: format!("Cluster start with {n} local bans (signing them)"),
        result: fmt_d(signing),
        target: "",
    });

    let b_bans = Arc::new(BanTable::open(&b_path, CidrSet::new()).expect("journal"));
    let started = Instant::now();
    let b = pair.start(1, b_bans.clone()).await;
    let took = wait_until(Duration::from_secs(600), || b_bans.len() == n as usize)
        .await
        .map(|_| started.elapsed());
    match took {
        Some(t) => rows.push(Row {
            what: format!("Anti-entropy: empty B → holds all {n} (journaled)"),
            result: fmt_d(t),
            target: "",
        }),
        None => rows.push(Row {
            what: format!("Anti-entropy: empty B → holds all {n} (journaled)"),
            result: format!("gave up at 600 s with {}", b_bans.len()),
            target: "",
        }),
    }
    let held = b.status().records;
    let s = b.stats();
    eprintln!(
        "anti-entropy: B holds {held} records; applied {} duplicate {} stale {} bad signature {}; A dropped sends {}",
        s.applied,
        s.duplicate,
        s.stale,
        s.rejected_bad_signature,
        a.stats().dropped_sends
    );
    let sa = a.stats();
    eprintln!(
        "anti-entropy messages from A: {} flat digests, {} summaries, {} bucket digests, {} bytes",
        sa.digests_sent, sa.summaries_sent, sa.bucket_digests_sent, sa.digest_bytes_sent
    );
    drop(b);
    a.shutdown();
    drop(b_bans);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // B's journal now holds `n` remote statements with their signatures.
    let started = Instant::now();
    let b_bans = Arc::new(BanTable::open(&b_path, CidrSet::new()).expect("journal"));
    let replay = started.elapsed();
    rows.push(Row {
        what: format!("Journal replay, {n} remote bans with signatures (B's journal)"),
        result: fmt_d(replay),
        target: "< 1 s",
    });
    let started = Instant::now();
    let b = pair.start(1, b_bans).await;
    let rebuild = started.elapsed();
    rows.push(Row {
        what: format!("Cluster restart: {n} held records rebuilt from the journal, no peer up"),
        result: fmt_d(rebuild),
        target: "",
    });
    assert_eq!(b.status().records, held, "the restarted node holds what it had");
}

/// (3) and (4): the table alone.
fn table(dir: &Path, n: u32, rows: &mut Vec<Row>) {
    let path = dir.join("replay.journal");
    write_journal(&path, n);
    let started = Instant::now();
    let t = BanTable::open(&path, CidrSet::new()).expect("journal");
    let replay = started.elapsed();
    assert_eq!(t.len(), n as usize);
    rows.push(Row {
        what: format!("Journal replay, {n} local bans (BanTable::open)"),
        result: fmt_d(replay),
        target: "< 1 s",
    });
    const ROUNDS: u32 = 10;
    for (label, probe) in [("banned", addr as fn(u32) -> IpAddr), ("unbanned", clear_addr)] {
        let probes: Vec<IpAddr> = (0..n).map(probe).collect();
        let started = Instant::now();
        let mut hits = 0u32;
        for _ in 0..ROUNDS {
            for p in &probes {
                hits += u32::from(t.is_banned(black_box(*p)));
            }
        }
        let per = started.elapsed().as_nanos() as f64 / f64::from(ROUNDS * n);
        assert_eq!(hits, if label == "banned" { ROUNDS * n } else { 0 });
        rows.push(Row {
            what: format!("is_banned with {n} bans, {label} address"),
            result: format!("{per:.0} ns"),
            target: "< 1 µs",
        });
    }
}

/// (5): the cost ledger's charge path, in a group of one session and in a group of `members` sessions that
/// all charge in turn (an abusive /24's shape), as a ratio to the lone session's.
fn ledger(members: usize, rounds: usize, rows: &mut Vec<Row>) {
    use gatehouse::state::cost::{CostParams, Ledger, SystemClock};
    // The limits at their defaults (so costs decay at the real rate); each session starts with a
    // connection's cost, which keeps it counted for seconds, and then charges a thousandth of a unit per
    // request, so the group stays under the hard limit unless pushed over on purpose. `over`: the group
    // is past the hard limit, so every charge also tells every member to stop. `busy`: how many of the `n`
    // sessions charge (the first ones); the others hold their connection's cost.
    let per_charge = |n: usize, over: bool, busy: usize| {
        let params = CostParams {
            group_private: true,
            ..CostParams::default()
        };
        let hard_limit = params.hard_limit;
        let l = Ledger::new(params, Arc::new(SystemClock::new()));
        let accounts: Vec<_> = (0..n)
            .map(|i| l.open(IpAddr::from([10, 9, 8, (i % 250) as u8 + 1])))
            .collect();
        for a in &accounts {
            a.charge(5.0);
        }
        if over {
            assert!(accounts[0].charge(2.0 * hard_limit).over_hard);
        }
        let charges = rounds * members;
        let started = Instant::now();
        let mut hard = 0usize;
        for i in 0..charges {
            hard += usize::from(accounts[i % busy].charge(black_box(0.001)).over_hard);
        }
        assert_eq!(hard, if over { charges } else { 0 });
        started.elapsed().as_nanos() as f64 / charges as f64
    };
    let lone = per_charge(1, false, 1);
    rows.push(Row {
        what: "Cost ledger: one charge, the session alone in its group".to_string(),
        result: format!("{lone:.0} ns"),
        target: "",
    });
    for (over, busy, label) in [
        (false, members, "all busy"),
        (false, 1, "one busy, the others idle"),
        (true, members, "over the hard limit"),
    ] {
        let crowd = per_charge(members, over, busy);
        rows.push(Row {
            what: format!("Cost ledger: one charge, {members} sessions in the group, {label}"),
            result: format!("{crowd:.0} ns ({:.2}× alone)", crowd / lone),
            target: "≤ 2× alone",
        });
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (prop_n, ae_n, table_n) = if quick {
        (200, 20_000, 100_000)
    } else {
        (1_000, 100_000, 100_000)
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut rows = Vec::new();
    let started = Instant::now();
    rt.block_on(async {
        propagation(dir.path(), prop_n, &mut rows).await;
        anti_entropy(dir.path(), ae_n, &mut rows).await;
    });
    table(dir.path(), table_n, &mut rows);
    ledger(1_000, if quick { 200 } else { 1_000 }, &mut rows);
    println!();
    println!("| Measure | Result | Target |");
    println!("|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} |", r.what, r.result, r.target);
    }
    println!();
    println!(
        "{} mode, {} s in all; journals in a temporary directory (fsync'd), nodes on loopback.",
        if quick { "quick" } else { "full" },
        started.elapsed().as_secs()
    );
}
