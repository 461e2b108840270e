//! Cluster-wide abuse cost: three gateways share what each client group costs them, so
//! an address spreading its requests over all three is cut off at about the total cost one gateway alone
//! allows; with sharing off, each gateway sees a third and lets it run.
//!
//! Real gateways, real cluster links and real Electrum sessions on loopback, in real time. The abuser's
//! pace (one request to each gateway every 50 ms) is the load being tested, not a synchronisation.

use crate::support::backends::stub_backend;
use crate::support::cost::{abuse, three_gateways, CLUSTER_HARD as HARD};
use crate::support::net::{self, ip};
use std::net::SocketAddr;
use std::time::Duration;

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
        assert!(g.ledger().remote_cost(ip("127.0.2.0")) > 0.0);
    }
    // The automatic ban the cut-off raised refuses the address at every gateway within a second of -101.
    for g in &gateways {
        let addr = g.addr("electrum");
        let mut refused = false;
        while spread.cut_when.elapsed() < Duration::from_secs(1) {
            if net::is_refused("127.0.2.2", addr).await {
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
        assert_eq!(g.ledger().remote_cost(ip("127.0.2.0")), 0.0);
        let own = g.ledger().group_cost(ip("127.0.2.0"));
        assert!(own < 0.6 * HARD, "{own}");
    }
    assert_eq!(gateways[0].cluster().unwrap().stats().cost_reports_sent, 0);
}
