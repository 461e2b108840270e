//! Three gateways sharing bans over their cluster links: a ban raised on one refuses the address at the
//! others within a second, and lifting it on another readmits it everywhere.

use crate::support::{backends, clients, gateway, net};
use std::net::SocketAddr;
use std::time::Duration;

const TOKEN: &str = "cluster-test-token-0123456789";

async fn cluster_status(admin: SocketAddr) -> serde_json::Value {
    serde_json::from_str(&clients::admin_get(admin, TOKEN, "/v1/cluster").await).unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_on_one_gateway_is_enforced_by_all_and_lifted_by_any() {
    let dir = tempfile::tempdir().unwrap();
    let up = backends::echo_backend().await;
    let links: Vec<SocketAddr> = (0..3).map(|_| net::free_addr()).collect();
    let keys = gateway::node_keys(dir.path(), 3);
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let mut gateways = Vec::new();
    for i in 0..3 {
        let peers = gateway::cluster_peers(i, &links, &keys);
        let admin = "[admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n";
        let toml = format!(
            "{}{admin}[cluster]\nnode_key = \"node{i}.key\"\nlisten = \"{}\"\nanti_entropy = \"1s\"\n{peers}\n{}",
            gateway::RELAXED,
            links[i],
            gateway::tcp_front("p", up, "")
        );
        gateways.push(gateway::start_in(dir.path(), &toml).await);
    }
    let admins: Vec<SocketAddr> = gateways
        .iter()
        .map(|g| match g.admin_addr() {
            Some(gatehouse::admin::AdminListen::Tcp(a)) => *a,
            other => panic!("admin not on TCP: {other:?}"),
        })
        .collect();
    // The admin API of the first gateway reports both links up.
    let admin = admins[0];
    let up = net::within(Duration::from_secs(3), async || {
        let v = cluster_status(admin).await;
        v["backend"] == "embedded"
            && v["peers"]
                .as_array()
                .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["up"] == true))
    })
    .await;
    assert!(up.is_some(), "links not reported up: {}", cluster_status(admin).await);
    let metrics = clients::admin_get(admin, TOKEN, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "gatehouse_cluster_links_up 2"),
        "{metrics}"
    );
    assert!(metrics.lines().any(|l| l == "gatehouse_cluster_peers 2"), "{metrics}");
    // Each link starts with an anti-entropy exchange (small tables: the flat digest).
    let exchanged = net::within(Duration::from_secs(2), async || {
        clients::admin_get(admin, TOKEN, "/metrics").await.lines().any(|l| {
            l.strip_prefix("gatehouse_cluster_antientropy_messages_sent_total{kind=\"digest\"} ")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= 2)
        })
    })
    .await;
    assert!(
        exchanged.is_some(),
        "{}",
        clients::admin_get(admin, TOKEN, "/metrics").await
    );

    // Every gateway admits 127.0.0.2 before the ban.
    for g in &gateways {
        assert!(!net::is_refused("127.0.0.2", g.addr("p")).await);
    }
    let bearer = format!("Bearer {TOKEN}");
    let body = r#"{"prefix": "127.0.0.2", "duration": "10m", "reason": "scraping"}"#;
    let (status, v) = clients::http(admins[0], "POST", "/v1/bans", Some(&bearer), Some(body)).await;
    assert_eq!(status, 201, "{v}");
    for (i, g) in gateways.iter().enumerate().skip(1) {
        let addr = g.addr("p");
        let took = net::within(Duration::from_secs(1), async || {
            net::is_refused("127.0.0.2", addr).await
        })
        .await;
        assert!(took.is_some(), "gateway {i} still admits the banned address after 1 s");
    }
    // Others are unaffected.
    assert!(!net::is_refused("127.0.0.3", gateways[2].addr("p")).await);
    // C lists the ban under the node that raised it, with its reason.
    let (status, v) = clients::http(admins[2], "GET", "/v1/bans", Some(&bearer), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["bans"][0]["prefix"], "127.0.0.2/32", "{v}");
    assert_eq!(v["bans"][0]["origin"], keys[0].as_str(), "{v}");
    assert_eq!(v["bans"][0]["reason"], "scraping", "{v}");

    // Lifted on B: A and C readmit within a second.
    let (status, v) = clients::http(admins[1], "DELETE", "/v1/bans/127.0.0.2", Some(&bearer), None).await;
    assert!(status == 200 || status == 204, "{status} {v}");
    for i in [0, 2] {
        let addr = gateways[i].addr("p");
        let took = net::within(Duration::from_secs(1), async || {
            !net::is_refused("127.0.0.2", addr).await
        })
        .await;
        assert!(took.is_some(), "gateway {i} still refuses after the lift on B");
    }
}

/// B is stopped while A bans and C lifts; restarted from its journal, B ends with exactly the live set
/// within two anti-entropy intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_converges_to_the_live_set() {
    let dir = tempfile::tempdir().unwrap();
    let up = backends::echo_backend().await;
    let links: Vec<SocketAddr> = (0..3).map(|_| net::free_addr()).collect();
    let keys = gateway::node_keys(dir.path(), 3);
    let config = |i: usize| {
        let peers = gateway::cluster_peers(i, &links, &keys);
        format!(
            "{}[bans]\njournal = \"bans{i}.journal\"\n\n[cluster]\nnode_key = \"node{i}.key\"\nlisten = \"{}\"\n\
             anti_entropy = \"500ms\"\n{peers}\n{}",
            gateway::RELAXED,
            links[i],
            gateway::tcp_front("p", up, "")
        )
    };
    let a = gateway::start_in(dir.path(), &config(0)).await;
    let b = gateway::start_in(dir.path(), &config(1)).await;
    let c = gateway::start_in(dir.path(), &config(2)).await;
    let x: ipnetwork::IpNetwork = "127.0.0.2/32".parse().unwrap();
    let y: ipnetwork::IpNetwork = "127.0.0.3/32".parse().unwrap();
    a.bans().ban(x, Duration::from_secs(600), "x").unwrap();
    let b_addr = b.addr("p");
    assert!(
        net::within(Duration::from_secs(1), async || net::is_refused("127.0.0.2", b_addr)
            .await)
        .await
        .is_some(),
        "B never got the first ban"
    );
    // C must hold X too, or its lift below would lift nothing.
    let has_x = net::within(Duration::from_secs(1), async || {
        c.bans().lookup("127.0.0.2".parse().unwrap()).is_some()
    });
    assert!(has_x.await.is_some(), "C never got the first ban");

    // B goes down; meanwhile C lifts X and A bans Y.
    b.shutdown().await;
    assert!(c.bans().unban(x).unwrap().is_some());
    a.bans().ban(y, Duration::from_secs(600), "y").unwrap();
    let lifted_on_a = net::within(Duration::from_secs(1), async || {
        a.bans().lookup("127.0.0.2".parse().unwrap()).is_none()
    });
    assert!(lifted_on_a.await.is_some(), "C's lift never reached A");

    // B comes back from its journal (which still holds X) and converges within two intervals.
    let b = gateway::start_in(dir.path(), &config(1)).await;
    let b_addr = b.addr("p");
    let converged = net::within(Duration::from_secs(1), async || {
        b.bans().lookup("127.0.0.3".parse().unwrap()).is_some()
            && b.bans().lookup("127.0.0.2".parse().unwrap()).is_none()
    })
    .await;
    assert!(
        converged.is_some(),
        "B did not converge: {:?}\n{:?}",
        b.bans().list(None),
        b.cluster().map(|c| c.status())
    );
    assert!(net::is_refused("127.0.0.3", b_addr).await);
    assert!(!net::is_refused("127.0.0.2", b_addr).await);
    // And B's restart did not undo C's lift anywhere.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for g in [&a, &c] {
        assert!(
            g.bans().lookup("127.0.0.2".parse().unwrap()).is_none(),
            "the lift was undone"
        );
    }
}
