//! Certificates issued by the gateway itself over ACME (RFC 8555): settings, the slots fronts serve from,
//! the challenge answers (TLS-ALPN-01 in the TLS fronts' handshake, HTTP-01 on a listener of its own) and
//! the renewal loop. The protocol is `instant-acme`'s; this module decides when to order and where the
//! results go.
//!
//! Everything an order produces lives in `<state_dir>/acme/` with mode 0600: `account.json` (the account
//! key), `<name>.pem` (the chain) and `<name>.key`. Nothing of them is logged.

mod client;
pub mod http01;
mod issue;
pub mod registry;
mod renew;
mod settings;
mod store;

pub use client::{roots as load_roots, RootsError};
pub use registry::{registry, CertStatus, Registry, ACME_TLS_ALPN};
pub use renew::{AcmeRun, AcmeStartError, Peers};
pub use settings::*;
