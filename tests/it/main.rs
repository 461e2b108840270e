//! Integration tests: the real gateway on real loopback sockets.

mod admission;
mod common;
mod electrum_cost;
mod electrum_protocol;
mod electrum_transport;
mod proxy;
mod timeouts;
mod tls;
mod upstream;
