//! What the guard reads and the cluster replicates: the ban table and its journal, the cost ledger, and
//! the memory budget every Electrum session draws from.

pub mod bans;
pub mod cost;
pub mod journal;
pub mod memory;
pub mod tier;
