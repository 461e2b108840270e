//! A real node behind a `kind = "peer"` front with the Bitcoin guard on (v1 framing checked message by
//! message, v2 refused, the node's addr messages filtered): node B, whose only peer is the gateway, syncs
//! node A's regtest chain through it (101 blocks, then one more, then a wallet transaction), and A sees
//! B's connection arrive from the gateway.

use crate::support::bitcoind::{Bitcoind, REWARD_ADDR};
use crate::support::gateway::{self, RELAXED};
use crate::support::net;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_syncs_a_regtest_chain_through_a_peer_front() {
    // A keeps a wallet (the support's default is none) to send a transaction later.
    let a = Bitcoind::start(&["-listen=1", "-disablewallet=0"]).await;
    let wallet_addr = a.rpc("getnewaddress", json!([])).await;
    a.rpc("generatetoaddress", json!([101, wallet_addr])).await;
    // This node's regtest magic is dab5bffa on the wire; the second stream of an association opens with
    // `createstrm` instead of `version`.
    let guard = "[front.peer]\nprotocol = \"bitcoin\"\nmagic = \"dab5bffa\"\n\
                 first_commands = [\"version\", \"createstrm\"]\nv2 = \"refuse\"\nfilter_addr = true\n";
    let running = gateway::start(&format!("{RELAXED}{}", gateway::tcp_front("p2p", a.p2p, guard))).await;
    let front = running.addr("p2p");
    let connect = format!("-connect={front}");
    let b = Bitcoind::start(&[&connect, "-listen=0"]).await;

    let synced = net::within(Duration::from_secs(30), async || b.block_count().await == 101).await;
    assert!(
        synced.is_some(),
        "B holds {} of A's 101 blocks after 30 s",
        b.block_count().await
    );

    // A new block reaches B through the same relayed connection.
    let tip = a.mine(1).await.pop().unwrap();
    let got = net::within(Duration::from_secs(30), async || {
        b.rpc("getbestblockhash", json!([])).await == json!(tip)
    })
    .await;
    assert!(got.is_some(), "B never got A's block {tip}");

    // A wallet transaction reaches B's mempool through it too.
    let txid = a.rpc("sendtoaddress", json!([REWARD_ADDR, 1.5])).await;
    let got = net::within(Duration::from_secs(30), async || {
        b.rpc("getrawmempool", json!([]))
            .await
            .as_array()
            .is_some_and(|m| m.contains(&txid))
    })
    .await;
    assert!(got.is_some(), "B never got A's transaction {txid}");
    // Nothing the real nodes sent broke the guard.
    let metrics = gatehouse::telemetry::metrics::render(None);
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("gatehouse_peer_refusals_total{front=\"p2p\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refused, 0.0, "{metrics}");

    // B's only peer is the front. A's only peer is inbound, from a socket this process holds: the
    // gateway's upstream side (B is another process). This node version opens each association as two
    // streams (GENERAL and DATA1), so both of B's connections are the gateway's sessions.
    // The second stream is set up beside the first and shows as a peer of its own until it joins the
    // association: wait for one peer with two streams on each side.
    let one_association = async |node: &Bitcoind| {
        let peers = node.rpc("getpeerinfo", json!([])).await;
        let joined = peers.as_array().unwrap().len() == 1 && peers[0]["streams"].as_array().map(Vec::len) == Some(2);
        (joined, peers)
    };
    let settled = net::within(Duration::from_secs(10), async || {
        one_association(&a).await.0 && one_association(&b).await.0
    })
    .await;
    let (_, a_peers) = one_association(&a).await;
    let (_, b_peers) = one_association(&b).await;
    assert!(settled.is_some(), "A: {a_peers}\nB: {b_peers}");
    assert_eq!(b_peers[0]["addr"], front.to_string(), "{b_peers}");
    assert_eq!(a_peers[0]["inbound"], true, "{a_peers}");
    let from: std::net::SocketAddr = a_peers[0]["addr"].as_str().unwrap().parse().unwrap();
    assert!(
        net::holds_tcp(from, a.p2p),
        "A's peer {from} is not the gateway's connection"
    );
    assert_eq!(running.open_sessions(), 2);
}
