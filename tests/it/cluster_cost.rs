//! Cluster-wide abuse cost (issue 4 item 4): three gateways share what each client group costs them, so
//! an address spreading its requests over all three is cut off at about the total cost one gateway alone
//! allows; with sharing off, each gateway sees a third and lets it run.
//!
//! Real gateways, real cluster links and real Electrum sessions on loopback, in real time. The abuser's
//! pace (one request to each gateway every 50 ms) is the load being tested, not a synchronisation.

use crate::common::{self, RELAXED};
use crate::electrum_cost::{stub_backend, Client};
use gatehouse::Running;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

pub(crate) const HARD: f64 = 3000.0;
/// `server.ping`, priced by the test so that 60 requests reach the hard limit.
pub(crate) const PING: f64 = 50.0;

/// Three clustered gateways with one Electrum front each; `cost` is the `[cluster.cost]` body.
pub(crate) async fn three_gateways(dir: &Path, backend: SocketAddr, cost: &str) -> Vec<Running> {
    let links: Vec<SocketAddr> = (0..3).map(|_| common::free_addr()).collect();
    let keys = common::node_keys(dir, 3);
    let mut gateways = Vec::new();
    for i in 0..3 {
        let peers = common::cluster_peers(i, &links, &keys);
        let toml = format!(
            "{RELAXED}[cost]\nsoft_limit = 2000\nhard_limit = {HARD}\nmax_sleep = \"20ms\"\ngroup_private = true\n\
             [cost.methods]\n\"server.ping\" = {PING}\n\n\
             [cluster]\nnode_key = \"node{i}.key\"\nlisten = \"{}\"\nanti_entropy = \"1s\"\n{peers}\n\
             [cluster.cost]\n{cost}\n\n\
             [[front]]\nname = \"electrum\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\n\
             upstreams = [\"{backend}\"]\n",
            links[i]
        );
        gateways.push(common::start_in(dir, &toml).await);
    }
    // Reports only reach peers over links that are up.
    for g in &gateways {
        let c = g.cluster().expect("clustered");
        for _ in 0..300 {
            if c.status().peers.iter().all(|p| p.up) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(c.status().peers.iter().all(|p| p.up), "links not up");
    }
    gateways
}

/// What ended an abuser's run.
#[derive(Debug)]
pub(crate) struct Run {
    /// Cost charged over all sessions (the model of DESIGN §3: method, bytes, connection) when a
    /// gateway answered -101, or None if none did.
    pub(crate) cut_at: Option<f64>,
    /// When the -101 arrived (or the run ended).
    pub(crate) cut_when: std::time::Instant,
    pub(crate) charged: f64,
}

/// Sends pings from `from`, one to each of `targets` in turn, one round every 50 ms, until a gateway
/// answers -101 or closes, or `budget` units have been spent.
pub(crate) async fn abuse(from: &str, targets: &[SocketAddr], budget: f64) -> Run {
    let mut clients = Vec::new();
    for &t in targets {
        clients.push(Client::open(from, t).await);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        for c in clients.iter_mut() {
            let r = c.call("server.ping", "[]", PING).await;
            if r.error_code() == Some(-101) {
                // The refused request was not charged by the gateway.
                c.charged -= PING;
                let total = clients_total(&clients);
                return Run {
                    cut_at: Some(total),
                    cut_when: std::time::Instant::now(),
                    charged: total,
                };
            }
            assert!(r.v.get("error").is_none(), "unexpected error: {}", r.v);
        }
        let total = clients_total(&clients);
        if total >= budget {
            return Run {
                cut_at: None,
                cut_when: std::time::Instant::now(),
                charged: total,
            };
        }
    }
}

fn clients_total(clients: &[Client]) -> f64 {
    clients.iter().map(|c| c.charged).sum()
}

fn group(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abuser_spread_over_three_gateways_meets_one_budget() {
    let dir = tempfile::tempdir().unwrap();
    let backend = stub_backend(&[]).await;
    let gateways = three_gateways(
        dir.path(),
        backend,
        "interval = \"100ms\"\nexpiry = \"1s\"\nthreshold = 10",
    )
    .await;
    let fronts: Vec<SocketAddr> = gateways.iter().map(|g| g.addr("electrum")).collect();

    // The same pace against one gateway alone: where a single budget ends.
    let alone = abuse("127.0.1.2", &fronts[..1], 2.0 * HARD).await;
    let alone_at = alone.cut_at.expect("one gateway alone never cut the client off");
    assert!((HARD..HARD * 1.1).contains(&alone_at), "{alone:?}");

    // Spread over three: each gateway sees a third of the load, and still the client is cut off at about
    // the same total.
    let spread = abuse("127.0.2.2", &fronts, 2.0 * HARD).await;
    eprintln!("cut off: alone at {alone_at:.1}, spread at {:?}", spread.cut_at);
    let spread_at = spread
        .cut_at
        .unwrap_or_else(|| panic!("never cut off across three gateways: {spread:?}"));
    // The upper bound leaves room for a report interval or two of lag on a loaded machine; without
    // sharing the client is never cut off below twice the budget.
    assert!(
        spread_at <= alone_at * 1.4 && spread_at >= alone_at * 0.9,
        "cut off at {spread_at:.0} spread over three gateways vs {alone_at:.0} on one"
    );
    // Each gateway holds the others' figures for the group, and the cut-off banned the address everywhere.
    for g in &gateways {
        assert!(g.ledger().remote_cost(group("127.0.2.0")) > 0.0);
    }
    // The automatic ban the cut-off raised refuses the address at every gateway within a second of -101.
    for g in &gateways {
        let addr = g.addr("electrum");
        let mut refused = false;
        while spread.cut_when.elapsed() < Duration::from_secs(1) {
            if common::is_refused("127.0.2.2", addr).await {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "the cut-off's ban did not reach {addr} within 1 s");
    }
    let stats = gateways[1].cluster().unwrap().stats();
    assert!(
        stats.cost_reports_sent > 0 && stats.cost_reports_received > 0,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cluster_cost_disabled_each_gateway_grants_its_own_budget() {
    let dir = tempfile::tempdir().unwrap();
    let backend = stub_backend(&[]).await;
    let gateways = three_gateways(dir.path(), backend, "enabled = false").await;
    let fronts: Vec<SocketAddr> = gateways.iter().map(|g| g.addr("electrum")).collect();
    let spread = abuse("127.0.2.2", &fronts, 1.5 * HARD).await;
    assert!(spread.cut_at.is_none(), "{spread:?}");
    assert!(spread.charged >= 1.5 * HARD);
    for g in &gateways {
        assert_eq!(g.ledger().remote_cost(group("127.0.2.0")), 0.0);
        let own = g.ledger().group_cost(group("127.0.2.0"));
        assert!(own < 0.6 * HARD, "{own}");
    }
    assert_eq!(gateways[0].cluster().unwrap().stats().cost_reports_sent, 0);
}
