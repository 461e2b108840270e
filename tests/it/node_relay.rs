//! A real node behind a `kind = "peer"` front: node B, whose only peer is the gateway, syncs node A's
//! regtest chain through it (101 blocks, then one more), and A sees B's connection arrive from the gateway.

use crate::support::bitcoind::Bitcoind;
use crate::support::gateway::{self, RELAXED};
use crate::support::net;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_syncs_a_regtest_chain_through_a_peer_front() {
    let a = Bitcoind::start(&["-listen=1"]).await;
    a.mine(101).await;
    let running = gateway::start(&format!("{RELAXED}{}", gateway::tcp_front("p2p", a.p2p, ""))).await;
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
