//! The cost-accounting set-ups several test modules share: one gateway priced for exact arithmetic with
//! the model its clients keep, and three clustered gateways that share what a client group costs them,
//! with an abuser that spreads its requests over them.

use super::clients::Client;
use super::gateway::{cluster_peers, node_keys, start_in, RELAXED};
use super::net::free_addr;
use gatehouse::Running;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// `[cost] bandwidth_unit` of [`config`].
pub const BYTES_PER_UNIT: f64 = 5000.0;
/// What the gateway charges for opening a session.
pub const CONNECTION_COST: f64 = 5.0;
/// What it charges for `server.version`.
pub const VERSION_COST: f64 = 0.5;
pub const SCRIPTHASH: &str = "\"8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161\"";

/// Cost of `n` bytes on the wire.
pub fn bytes(n: usize) -> f64 {
    n as f64 / BYTES_PER_UNIT
}

/// One gateway priced for the cost tests: the [cost] settings the constants above describe, `methods` as
/// `[cost.methods]` lines, one Electrum tcp front named "electrum" on `listen`.
pub fn config(backend: SocketAddr, cost_extra: &str, methods: &str, listen: &str, front_extra: &str) -> String {
    format!(
        "{RELAXED}[cost]\nsoft_limit = 1000\nhard_limit = 10000\nmax_sleep = \"2500ms\"\ninitial_concurrency = 10\n\
         bandwidth_unit = \"5000B\"\nretained_drain = \"600/300s\"\ngroup_private = true\n{cost_extra}\n\
         [cost.methods]\n{methods}\n\n\
         [[front]]\nname = \"electrum\"\nkind = \"electrum\"\nlisten = [{listen}]\ntransport = \"tcp\"\n\
         upstreams = [\"{backend}\"]\n{front_extra}\n"
    )
}

/// What one `blockchain.estimatefee` costs in [`start_crossing`]: the whole hard limit of [`config`].
pub const CROSSING_COST: f64 = 10000.0;

/// A gateway from [`config`] on a loopback port where one `blockchain.estimatefee` costs the whole hard
/// limit, so a single call takes its group over.
pub async fn start_crossing(backend: SocketAddr) -> Running {
    let methods = format!("\"blockchain.estimatefee\" = {CROSSING_COST}");
    super::gateway::start(&config(backend, "", &methods, "\"127.0.0.1:0\"", "")).await
}

/// `[cost] hard_limit` of [`three_gateways`].
pub const CLUSTER_HARD: f64 = 3000.0;
/// `server.ping`, priced by [`three_gateways`] so that 60 requests reach the hard limit.
pub const CLUSTER_PING: f64 = 50.0;

/// Three clustered gateways with one Electrum front each; `cost` is the `[cluster.cost]` body.
pub async fn three_gateways(dir: &Path, backend: SocketAddr, cost: &str) -> Vec<Running> {
    let links: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let keys = node_keys(dir, 3);
    let mut gateways = Vec::new();
    for i in 0..3 {
        let peers = cluster_peers(i, &links, &keys);
        let toml = format!(
            "{RELAXED}[cost]\nsoft_limit = 2000\nhard_limit = {CLUSTER_HARD}\nmax_sleep = \"20ms\"\ngroup_private = true\n\
             [cost.methods]\n\"server.ping\" = {CLUSTER_PING}\n\n\
             [cluster]\nnode_key = \"node{i}.key\"\nlisten = \"{}\"\nanti_entropy = \"1s\"\n{peers}\n\
             [cluster.cost]\n{cost}\n\n\
             [[front]]\nname = \"electrum\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\n\
             upstreams = [\"{backend}\"]\n",
            links[i]
        );
        gateways.push(start_in(dir, &toml).await);
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
pub struct Run {
    /// Cost charged over all sessions (the client's cost model: method, bytes, connection) when a
    /// gateway answered -101, or None if none did.
    pub cut_at: Option<f64>,
    /// When the -101 arrived (or the run ended).
    pub cut_when: std::time::Instant,
    pub charged: f64,
}

/// Sends pings from `from`, one to each of `targets` in turn, one round every 50 ms, until a gateway
/// answers -101 or closes, or `budget` units have been spent.
pub async fn abuse(from: &str, targets: &[SocketAddr], budget: f64) -> Run {
    let mut clients = Vec::new();
    for &t in targets {
        clients.push(Client::open(from, t).await);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        for c in clients.iter_mut() {
            let r = c.call("server.ping", "[]", CLUSTER_PING).await;
            if r.error_code() == Some(-101) {
                // The refused request was not charged by the gateway.
                c.charged -= CLUSTER_PING;
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
