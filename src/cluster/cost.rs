//! Cluster-wide abuse cost (issue 4 item 4, DESIGN §3 and §5): every `interval` this node tells each linked
//! peer the cost of its own groups at or above `threshold`; each peer adds those figures to the groups'
//! effective cost (see `guard::cost`), so an abuser spreading requests over N gateways meets one budget,
//! not N.
//!
//! Reports travel over the same authenticated links as ban records, directly from the node that measured
//! them (every pair of nodes has a link), so they need no signature of their own and are never relayed.
//! A report is a full snapshot of the sender's groups above the threshold: a group it leaves out stops
//! counting at the receiver at once, and a figure not renewed within `expiry` (the sender went away)
//! stops counting then. Only local cost is reported, so figures never echo around the cluster.

use crate::guard::cost::{GroupCost, Ledger};
use std::sync::Arc;
use std::time::Duration;

/// A report's figures beyond this are ignored, whatever the sender's `max_groups`.
const MAX_FIGURES: usize = 100_000;

/// Settings of `[cluster.cost]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CostSharing {
    pub enabled: bool,
    /// How often a node reports its groups.
    pub interval: Duration,
    /// Groups whose local cost is below this are not reported (most clients cost almost nothing).
    pub threshold: f64,
    /// How long a peer's figure counts without being renewed.
    pub expiry: Duration,
    /// Reports carry at most this many groups, the costliest first.
    pub max_groups: usize,
}

impl Default for CostSharing {
    fn default() -> Self {
        CostSharing {
            enabled: true,
            interval: Duration::from_secs(1),
            threshold: 100.0,
            expiry: Duration::from_secs(5),
            max_groups: 10_000,
        }
    }
}

/// What a node needs to take part: its ledger and the settings.
pub(super) struct Sharing {
    pub ledger: Arc<Ledger>,
    pub settings: CostSharing,
}

impl Sharing {
    /// The next report, or None when it would repeat an empty one (an empty report is sent once, to clear
    /// what the previous one said, and then not again until there is something to say).
    pub fn report(&self, last_was_empty: &mut bool) -> Option<Vec<GroupCost>> {
        let figures = self
            .ledger
            .local_costs(self.settings.threshold, self.settings.max_groups);
        if figures.is_empty() && *last_was_empty {
            return None;
        }
        *last_was_empty = figures.is_empty();
        Some(figures)
    }

    /// Takes a peer's report; returns how many figures counted.
    pub fn receive(&self, peer: [u8; 32], figures: &[GroupCost]) -> usize {
        let n = figures.len().min(MAX_FIGURES);
        self.ledger.apply_remote(peer, &figures[..n], self.settings.expiry)
    }
}
