//! Gatehouse: a hardened frontline gateway for Electrum indexers and blockchain peer ports.
//!
//! Every connection walks `listen` (accept, PROXY intake, admission by the `guard`, TLS) → `front` (the
//! protocol session: Electrum, the L4 relay or a node API) → `upstream` (backend pool with failover). The
//! tree is a house of floors: a module may import the modules listed below it, never one above it, and no
//! two files import each other in a circle (`tests/layering.rs` reads the sources and holds this).
//!
//! | module | job | may import |
//! |---|---|---|
//! | `main.rs` | the CLI: parses arguments, calls `app` or the admin client | anything |
//! | [`app`] | composition root: start, reload, drain, live upgrade ([`app::upgrade`]); builds each stage's handles from the settings; `app::demo` runs a gateway on loopback | everything below |
//! | [`config`] | TOML → validated settings, built from the settings types of the modules below; only `app` and `main.rs` use it | everything below |
//! | [`admin`] | HTTP admin API, its client, settings and reload types (shared with the CLI), the scrape-time metrics ([`admin::live`]) | cluster, front, listen, upstream, guard, state, telemetry, wire, sys |
//! | [`cluster`] | ban and cost sharing between gateways: signed records, links, Redis, keys | state, telemetry, wire, sys |
//! | [`intel`] | blocklist feeds (fetch, verify, parse, keep) and CrowdSec (bouncer, reporter), filling the deny set in `state` | state, telemetry, wire, sys |
//! | [`front`] | the front (settings, handles, the one close-line logger) and its kinds: [`front::electrum`], [`front::relay`], [`front::api`] (node HTTP JSON-RPC); implements [`listen::Handler`] | listen, upstream, guard, state, telemetry, wire, sys |
//! | [`listen`] | bind, accept, PROXY intake, admission, TLS (certificate files, and ACME: [`listen::acme`]) → a [`listen::Conn`] handed to a [`listen::Handler`] trait object | guard, state, telemetry, wire, sys |
//! | [`upstream`] | backend pools, failover, PROXY v2 out | telemetry, wire, sys |
//! | [`guard`] | admission: "may this address connect now?" (ACLs, caps, rates, the ban lookup); its policy types | state, telemetry, wire, sys |
//! | [`state`] | what the guard reads and the cluster replicates: the ban table and its journal, the cost ledger, the memory budget | telemetry, wire, sys |
//! | [`telemetry`] | leaf: counters, histograms, the refusal log gate, log setup; reads no gateway state | nothing |
//! | [`wire`] | leaf: pure codecs and values: PROXY header, units, address prefix sets, the buffer pool, the ACME messages gateways share | nothing |
//! | [`sys`] | leaf: OS glue, the only `unsafe`: socket activation, descriptor passing, sd_notify, the journal's fcntl lock, rlimit | nothing |
//!
//! Settings types live beside the code that reads them (`guard::Admission`, `state::cost::CostConfig`,
//! `front::Front`, …), each with its `DEFAULT_*` constants; `config` only parses and validates into them.
//! A new front kind is a module under `front/` and a `kind` in `config/`: the listener never changes.

pub mod admin;
pub mod app;
pub mod cluster;
pub mod config;
pub mod front;
pub mod guard;
pub mod intel;
pub mod listen;
pub mod state;
pub mod sys;
pub mod telemetry;
pub mod upstream;
pub mod wire;

pub use admin::reload::{ReloadError, ReloadRequest, ReloadSummary};
pub use app::demo;
pub use app::{DrainReport, Gatehouse, Running, StartError, TokioClock};
