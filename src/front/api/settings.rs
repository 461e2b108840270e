//! Settings of a `kind = "api"` front: the profile, the node's credentials, the clients' users and the
//! HTTP limits, with their defaults.

use super::auth::{BackendAuth, Token, User};
use super::rest::RestPolicy;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Default `max_body`: the largest request body read; bigger ones get 413 unread. A raw transaction
/// of a few hundred kilobytes in hex fits several times over.
pub const DEFAULT_MAX_BODY: usize = 4 << 20;
/// Default `max_response`: the largest node reply relayed (a verbose `getblock` of a full block is
/// tens of megabytes on big-block chains).
pub const DEFAULT_MAX_RESPONSE: usize = 64 << 20;
/// Default `header_timeout`: how long a request's headers may take to arrive (slowloris).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `keepalive_timeout`: how long a connection may sit between requests.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `request_timeout`: how long the node may take to answer one request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request head (request line and headers) accepted; larger ones get 431. JSON-RPC clients
/// send a few hundred bytes of headers.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default `max_batch`: requests in one JSON-RPC batch.
pub const DEFAULT_MAX_BATCH: usize = 100;

/// Which node family the front speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiProfile {
    Bitcoind,
    /// stoxumd / rippled: its settings are `front::api::ledger::settings::LedgerSettings`.
    Ledger,
}

/// Protocol settings of one API front.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub profile: ApiProfile,
    /// What the gateway sends to the node as `Authorization`; never shown to clients.
    pub backend: BackendAuth,
    pub users: Vec<User>,
    /// Methods anyone may call without credentials.
    pub public_methods: HashSet<String>,
    pub max_body: usize,
    pub max_response: usize,
    pub max_batch: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub request_timeout: Duration,
    /// Per-method cost overrides; other methods cost their class.
    pub method_costs: HashMap<String, f64>,
    /// Bearer tokens, each bound to a method set like a user.
    pub tokens: Vec<Token>,
    /// The REST path prefixes let through (none: REST off).
    pub rest: RestPolicy,
    /// Whether requests to the node carry `Forwarded: for=<client>`.
    pub forwarded: bool,
}
