//! Cluster-wide abuse cost: every `interval` this node tells each linked
//! peer the cost of its own groups at or above `threshold`; each peer adds those figures to the groups'
//! effective cost (see `state::cost`), so an abuser spreading requests over N gateways meets one budget,
//! not N.
//!
//! Reports travel over the same authenticated links as ban records, directly from the node that measured
//! them (every pair of nodes has a link), so they need no signature of their own and are never relayed.
//! A report is a full snapshot of the sender's groups above the threshold: a group it leaves out stops
//! counting at the receiver at once, and a figure not renewed within `expiry` (the sender went away)
//! stops counting then. Only local cost is reported, so figures never echo around the cluster.

use super::keys::{NodeKey, PublicKey};
use crate::state::cost::{GroupCost, Ledger};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one peer's report may add, in multiples of `[cost] hard_limit`.
pub const DEFAULT_MAX_REPORT_COST: f64 = 100.0;

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
    /// Reports carry at most this many groups, the costliest first; a peer's report is read no further.
    pub max_groups: usize,
    /// The cost one report may add, in hard limits: each figure counts at most one hard limit, and
    /// all of them together at most this many (so a peer cannot cut off more groups at once).
    pub max_report_cost: f64,
}

impl Default for CostSharing {
    fn default() -> Self {
        CostSharing {
            enabled: true,
            interval: Duration::from_secs(1),
            threshold: 100.0,
            expiry: Duration::from_secs(5),
            max_groups: 10_000,
            max_report_cost: DEFAULT_MAX_REPORT_COST,
        }
    }
}

/// What a node needs to take part: its ledger and the settings.
pub struct Sharing {
    pub ledger: Arc<Ledger>,
    pub settings: CostSharing,
    /// The newest signed report taken from each origin, so an old report replayed through a shared
    /// service (Redis) cannot bring back figures its origin has since lowered.
    last_seq: Mutex<HashMap<[u8; 32], u64>>,
    /// Figures ignored: beyond `max_groups`, repeated, or past `max_report_cost`.
    pub ignored: std::sync::atomic::AtomicU64,
}

/// Why a signed report was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportVerdict {
    Taken,
    /// Not newer than the last report taken from its origin.
    Stale,
    UnlistedOrigin,
    BadSignature,
}

/// A cost report as it travels through a shared service, where anyone with access could write: signed
/// by the reporting node, with a sequence number (its clock in µs) so replays are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedCostReport {
    pub origin: [u8; 32],
    pub seq: u64,
    pub figures: Vec<GroupCost>,
    #[serde(with = "super::record::sig_serde")]
    pub sig: [u8; 64],
}

/// Domain separation from ban records and anything else a node key signs.
const REPORT_DOMAIN: &[u8] = b"gatehouse/cluster/cost-report/v1\0";

impl SignedCostReport {
    /// Fixed-width big-endian fields, as for ban records: every node encodes alike.
    fn canonical_bytes(origin: &[u8; 32], seq: u64, figures: &[GroupCost]) -> Vec<u8> {
        let mut b = Vec::with_capacity(REPORT_DOMAIN.len() + 48 + figures.len() * 25);
        b.extend_from_slice(REPORT_DOMAIN);
        b.extend_from_slice(origin);
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&(figures.len() as u64).to_be_bytes());
        for f in figures {
            super::record::push_ip(&mut b, f.group);
            b.extend_from_slice(&f.cost.to_bits().to_be_bytes());
        }
        b
    }

    pub fn sign(key: &NodeKey, seq: u64, figures: Vec<GroupCost>) -> SignedCostReport {
        let origin = key.public().0;
        let sig = key.sign(&Self::canonical_bytes(&origin, seq, &figures));
        SignedCostReport {
            origin,
            seq,
            figures,
            sig,
        }
    }

    /// A report as it arrives through a shared service (JSON).
    pub fn decode(data: &[u8]) -> Result<SignedCostReport, serde_json::Error> {
        serde_json::from_slice(data)
    }

    pub fn verify(&self) -> bool {
        PublicKey(self.origin).verify(&Self::canonical_bytes(&self.origin, self.seq, &self.figures), &self.sig)
    }
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

    pub fn new(ledger: Arc<Ledger>, settings: CostSharing) -> Sharing {
        Sharing {
            ledger,
            settings,
            last_seq: Mutex::new(HashMap::new()),
            ignored: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Takes a signed report from a shared service: only from a listed origin (never this node's own),
    /// with a valid signature and newer than the last one taken from that origin.
    pub fn receive_signed(&self, r: &SignedCostReport, listed: impl Fn(&PublicKey) -> bool) -> ReportVerdict {
        if !listed(&PublicKey(r.origin)) {
            return ReportVerdict::UnlistedOrigin;
        }
        if !r.verify() {
            return ReportVerdict::BadSignature;
        }
        {
            let mut last = self.last_seq.lock().unwrap_or_else(|p| p.into_inner());
            let seen = last.entry(r.origin).or_insert(0);
            if r.seq <= *seen {
                return ReportVerdict::Stale;
            }
            *seen = r.seq;
        }
        self.receive(r.origin, &r.figures);
        ReportVerdict::Taken
    }

    /// Takes a peer's report; returns how many figures counted.
    pub fn receive(&self, peer: [u8; 32], figures: &[GroupCost]) -> usize {
        let n = figures.len().min(self.settings.max_groups);
        let r = self.ledger.apply_remote_bounded(
            peer,
            &figures[..n],
            self.settings.expiry,
            Some(self.settings.max_report_cost),
        );
        let ignored = (figures.len() - n + r.ignored) as u64;
        if ignored > 0 {
            self.ignored.fetch_add(ignored, std::sync::atomic::Ordering::Relaxed);
        }
        r.taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::cost::{CostParams, SystemClock};

    fn sharing() -> Sharing {
        let params = CostParams {
            group_private: true,
            ..CostParams::default()
        };
        Sharing::new(
            Ledger::new(params, Arc::new(SystemClock::new())),
            CostSharing::default(),
        )
    }

    fn figures(cost: f64) -> Vec<GroupCost> {
        vec![GroupCost {
            group: "10.1.2.0".parse().unwrap(),
            cost,
        }]
    }

    #[test]
    fn a_signed_report_from_a_listed_node_counts_once_and_replays_do_not() {
        let s = sharing();
        let peer = NodeKey::generate();
        let listed = |k: &PublicKey| *k == peer.public();
        let first = SignedCostReport::sign(&peer, 10, figures(500.0));
        assert_eq!(s.receive_signed(&first, listed), ReportVerdict::Taken);
        let group = "10.1.2.0".parse().unwrap();
        assert_eq!(s.ledger.remote_cost(group), 500.0);
        let lower = SignedCostReport::sign(&peer, 11, figures(100.0));
        assert_eq!(s.receive_signed(&lower, listed), ReportVerdict::Taken);
        // The old, higher report replayed changes nothing.
        assert_eq!(s.receive_signed(&first, listed), ReportVerdict::Stale);
        assert_eq!(s.ledger.remote_cost(group), 100.0);
    }

    #[test]
    fn unlisted_and_tampered_reports_are_refused() {
        let s = sharing();
        let peer = NodeKey::generate();
        let stranger = NodeKey::generate();
        let listed = |k: &PublicKey| *k == peer.public();
        let r = SignedCostReport::sign(&stranger, 1, figures(500.0));
        assert_eq!(s.receive_signed(&r, listed), ReportVerdict::UnlistedOrigin);
        let mut r = SignedCostReport::sign(&peer, 1, figures(500.0));
        r.figures[0].cost = 5000.0;
        assert_eq!(s.receive_signed(&r, listed), ReportVerdict::BadSignature);
        // A report re-signed by a stranger under a listed origin fails too.
        let mut r = SignedCostReport::sign(&stranger, 2, figures(500.0));
        r.origin = peer.public().0;
        assert_eq!(s.receive_signed(&r, listed), ReportVerdict::BadSignature);
        assert_eq!(s.ledger.remote_cost("10.1.2.0".parse().unwrap()), 0.0);
        // The JSON form round-trips and still verifies.
        let good = SignedCostReport::sign(&peer, 3, figures(7.5));
        let back: SignedCostReport = serde_json::from_str(&serde_json::to_string(&good).unwrap()).unwrap();
        assert!(back.verify());
    }

    fn sharing_with(settings: CostSharing) -> Sharing {
        let params = CostParams {
            group_private: true,
            ..CostParams::default()
        };
        Sharing::new(Ledger::new(params, Arc::new(SystemClock::new())), settings)
    }

    fn figure(group: &str, cost: f64) -> GroupCost {
        GroupCost {
            group: group.parse().unwrap(),
            cost,
        }
    }

    #[test]
    fn a_listed_peers_report_is_read_up_to_its_group_cap() {
        let s = sharing_with(CostSharing {
            max_groups: 3,
            ..CostSharing::default()
        });
        let peer = NodeKey::generate();
        let listed = |k: &PublicKey| *k == peer.public();
        let figures: Vec<GroupCost> = (1..=5).map(|i| figure(&format!("10.0.{i}.0"), 500.0)).collect();
        let r = SignedCostReport::sign(&peer, 1, figures);
        assert_eq!(s.receive_signed(&r, listed), ReportVerdict::Taken);
        let counted = (1..=5)
            .filter(|i| s.ledger.remote_cost(format!("10.0.{i}.0").parse().unwrap()) > 0.0)
            .count();
        assert_eq!(counted, 3);
        assert_eq!(s.ignored.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn a_group_repeated_in_a_report_counts_once_and_replaces_the_last_figure() {
        let s = sharing();
        let peer = NodeKey::generate();
        let listed = |k: &PublicKey| *k == peer.public();
        let group = "10.1.2.0".parse().unwrap();
        let first = SignedCostReport::sign(&peer, 1, vec![figure("10.1.2.0", 300.0)]);
        assert_eq!(s.receive_signed(&first, listed), ReportVerdict::Taken);
        // The same /24 named three times, under three of its addresses.
        let repeated = vec![
            figure("10.1.2.0", 400.0),
            figure("10.1.2.7", 400.0),
            figure("10.1.2.0", 400.0),
        ];
        let r = SignedCostReport::sign(&peer, 2, repeated);
        assert_eq!(s.receive_signed(&r, listed), ReportVerdict::Taken);
        assert_eq!(s.ledger.remote_cost(group), 400.0);
        assert_eq!(s.ignored.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn one_report_adds_at_most_its_cost_cap() {
        let s = sharing_with(CostSharing {
            max_report_cost: 2.5,
            ..CostSharing::default()
        });
        let hard = CostParams::default().hard_limit;
        let peer = NodeKey::generate();
        let listed = |k: &PublicKey| *k == peer.public();
        let figures: Vec<GroupCost> = (1..=5).map(|i| figure(&format!("10.0.{i}.0"), 1e9)).collect();
        let r = SignedCostReport::sign(&peer, 1, figures);
        assert_eq!(s.receive_signed(&r, listed), ReportVerdict::Taken);
        let costs: Vec<f64> = (1..=5)
            .map(|i| s.ledger.remote_cost(format!("10.0.{i}.0").parse().unwrap()))
            .collect();
        // One hard limit per group at most, two and a half in all: two groups cut off, not five.
        assert_eq!(costs, [hard, hard, hard / 2.0, 0.0, 0.0]);
    }
}
