//! The protocol-aware Electrum front: newline framing, JSON-RPC parsing of only what policy needs,
//! the method table with its costs, reply rewriting, the session loop and the WebSocket transport.

pub mod frame;
pub mod gate;
pub mod jsonrpc;
pub mod methods;
pub mod probe;
pub mod rewrite;
pub mod session;
pub mod settings;
pub mod versions;
pub mod ws;

use super::drain::Drain;
use crate::guard::limits::KeyedCounts;
use crate::state::bans::{BanPolicy, BanTable};
use crate::state::cost::{CostConfig, Ledger};
use crate::state::memory::MemoryBudget;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// What Electrum sessions read and write besides their front's settings, shared by every Electrum front
/// so a client's budget spans them.
pub struct Handles {
    /// Electrum cost accounting.
    pub ledger: Arc<Ledger>,
    /// Swapped whole on reload; sessions pick the new value up before their next request.
    pub cost: ArcSwap<CostConfig>,
    pub ban_policy: ArcSwap<BanPolicy>,
    /// Subscriptions held per client group.
    pub group_subs: KeyedCounts,
    /// Subscriptions held per tier group, by the tier network's address (apart from `group_subs`, whose
    /// /24 keys could equal it).
    pub tier_subs: KeyedCounts,
    /// Bytes buffered by every Electrum session together, against `[limits] memory_budget`.
    pub memory: Arc<MemoryBudget>,
    /// The `hosts` object announced in server.features.
    pub features_hosts: ArcSwap<serde_json::Value>,
    /// Where a session's automatic bans go.
    pub bans: Arc<BanTable>,
    pub drain: Arc<Drain>,
    /// The in-flight budget of every backend an Electrum front names, by address.
    pub budgets: crate::upstream::budget::Budgets,
    /// What each backend answered to server.version, for the sessions that answer it themselves.
    pub versions: versions::BackendVersions,
}
