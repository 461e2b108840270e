//! What the test crates share, by role. The tests that run the real binary (cli, operations, systemd) and
//! the in-process integration tests (it) include this one module, so each helper exists once; a crate
//! uses only part of it.
//!
//! - `process`: the `gatehouse` binary as a child process (stderr lines, waiting for it to listen).
//! - `net`: free loopback ports, clients bound to a source address, refusal and echo checks, polling.
//! - `tls`: certificates written to files, rustls connectors trusting them, renewal by file replacement.
//! - `parts`: where the third-party parts `tests/run` installs are (its variables, else its cache).
//! - `ledger`: a stub stoxumd / rippled API port (JSON-RPC and WebSocket) that records what reached it.
//! - `pebble`: a real ACME server (Pebble, with pebble-challtestsrv as its DNS) on loopback, and TLS probes.
//! - `bitcoind`: a real regtest node (Bitcoin SV's bitcoind, installed by `tests/run`) and its JSON-RPC.
//! - `backends`: stub upstreams (echo, recording, a null-answering Electrum server, a notification flood,
//!   an Electrum server of modelled capacity that records the order it served requests in).
//! - `gateway`: the gateway started in-process from TOML, the config snippets, its refusal counters, ban
//!   journal lines planted for it.
//! - `clients`: an Electrum client that keeps its session's cost model, admin API requests, metric samples.
//! - `cost`: the cost-accounting set-ups several modules share (one priced gateway, three clustered ones).
//! - `files`: a loopback HTTP server of files the test changes (blocklist feeds and their signatures).
//! - `crowdsec`: a real CrowdSec Local API on a free loopback port, and `cscli` against it.

#![allow(dead_code)]

pub mod backends;
pub mod bitcoind;
pub mod clients;
pub mod cost;
pub mod crowdsec;
pub mod files;
pub mod gateway;
pub mod ledger;
pub mod net;
pub mod parts;
pub mod pebble;
pub mod process;
pub mod tls;
