//! What the guard reads and the cluster replicates: the ban table and its journal, the deny set fed by
//! blocklists and CrowdSec, the cost ledger, and the memory budget every Electrum session draws from.

pub mod bans;
pub mod cost;
mod falling_sum;
pub mod feeds;
pub mod journal;
pub mod memory;
pub mod tier;
