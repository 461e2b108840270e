//! Integration tests: the real gateway on real loopback sockets.

mod acme;
mod admin;
mod admission;
mod bans;
mod cluster;
mod cluster_cost;
mod cluster_redis;
mod crowdsec;
mod drain;
mod electrum_cost;
mod electrum_protocol;
mod electrum_transport;
mod electrum_versions;
mod feeds;
mod hard_limit;
mod memory;
mod metrics;
mod node_api;
mod node_api_ledger;
mod node_relay;
mod peer_shape;
mod proxy;
mod reload;
mod sni_routing;
#[path = "../support/mod.rs"]
mod support;
mod tiers;
mod timeouts;
mod tls;
mod upstream;
mod upstream_budget;
