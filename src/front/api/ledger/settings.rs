//! Settings of a `profile = "ledger"` API front (a stoxumd / rippled-family node's public API port): the
//! per-command fees, the subscription caps, the HTTP and WebSocket limits, with their defaults.
//!
//! The balance those fees feed, its decay and its thresholds are the cost engine's (`[cost.ledger]`), shared
//! by every front; only what one front charges and allows is set here.

use super::commands::FeeClass;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Default fee of an ordinary command (the node's reference RPC fee).
pub const DEFAULT_FEE_REFERENCE: f64 = 20.0;
/// Default fee of a command that walks an account's or a book's objects, or submits a transaction.
pub const DEFAULT_FEE_MEDIUM: f64 = 400.0;
/// Default fee of path finding, signing, gateway balances and a full ledger.
pub const DEFAULT_FEE_HIGH: f64 = 3000.0;
/// Default fee of a request the gateway refuses: malformed, unknown or walled off.
pub const DEFAULT_FEE_MALFORMED: f64 = 100.0;
/// Default `max_subscriptions`: streams, accounts, books and path_find requests one session may hold.
/// A wallet follows a handful of accounts; an explorer the ledger and transaction streams.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 1000;
/// Default `max_subscriptions_per_group`: the same, summed over a client group's sessions.
pub const DEFAULT_MAX_SUBSCRIPTIONS_PER_GROUP: usize = 10_000;
/// Default `max_message`: the largest client request (HTTP body or WebSocket message). The node itself
/// refuses requests over 1 MB.
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// Default `max_response`: the largest node reply or notification relayed. A full ledger with
/// transactions runs to tens of megabytes.
pub const DEFAULT_MAX_RESPONSE: usize = 64 << 20;
/// Default `max_pending_output`: bytes of replies and notifications queued for one WebSocket client that
/// does not read; past it the client is cut off.
pub const DEFAULT_MAX_PENDING_OUTPUT: usize = 8 << 20;
/// Default `slow_reader_timeout`: how long one message may wait for a client to take it.
pub const DEFAULT_SLOW_READER_TIMEOUT: Duration = Duration::from_secs(20);

/// The four fee classes' prices and the per-command overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Fees {
    pub reference: f64,
    pub medium: f64,
    pub high: f64,
    pub malformed: f64,
    /// Command name → fee, replacing its class's price.
    pub commands: HashMap<String, f64>,
}

impl Default for Fees {
    fn default() -> Self {
        Fees {
            reference: DEFAULT_FEE_REFERENCE,
            medium: DEFAULT_FEE_MEDIUM,
            high: DEFAULT_FEE_HIGH,
            malformed: DEFAULT_FEE_MALFORMED,
            commands: HashMap::new(),
        }
    }
}

impl Fees {
    /// What `command` costs in `class`: its override, else the class's price. A refused request always
    /// costs `malformed`.
    pub fn of(&self, command: &str, class: FeeClass) -> f64 {
        if class == FeeClass::Malformed {
            return self.malformed;
        }
        if let Some(f) = self.commands.get(command) {
            return *f;
        }
        match class {
            FeeClass::Reference => self.reference,
            FeeClass::Medium => self.medium,
            FeeClass::High => self.high,
            FeeClass::Malformed => self.malformed,
        }
    }
}

/// Protocol settings of one ledger-profile API front.
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    pub fees: Fees,
    /// Public commands the gateway's table does not know yet (a newer node's), let through at the
    /// reference fee.
    pub extra_commands: HashSet<String>,
    pub max_subscriptions: usize,
    pub max_subscriptions_per_group: usize,
    pub max_message: usize,
    pub max_response: usize,
    pub max_pending_output: usize,
    pub slow_reader_timeout: Duration,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub request_timeout: Duration,
    /// Whether requests to the node carry `Forwarded: for=<client>`.
    pub forwarded: bool,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        use super::super::settings as api;
        LedgerSettings {
            fees: Fees::default(),
            extra_commands: HashSet::new(),
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_subscriptions_per_group: DEFAULT_MAX_SUBSCRIPTIONS_PER_GROUP,
            max_message: DEFAULT_MAX_MESSAGE,
            max_response: DEFAULT_MAX_RESPONSE,
            max_pending_output: DEFAULT_MAX_PENDING_OUTPUT,
            slow_reader_timeout: DEFAULT_SLOW_READER_TIMEOUT,
            header_timeout: api::DEFAULT_HEADER_TIMEOUT,
            keepalive_timeout: api::DEFAULT_KEEPALIVE_TIMEOUT,
            request_timeout: api::DEFAULT_REQUEST_TIMEOUT,
            forwarded: false,
        }
    }
}
