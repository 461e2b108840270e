//! Integration tests: the real gateway on real loopback sockets.

mod admission;
mod common;
mod proxy;
mod timeouts;
mod tls;
mod upstream;
