//! Trusted tiers: named networks (and, on API fronts, named credentials) whose clients get their own
//! multiple of each limit strangers get, or an exemption from it, while every other protection stays on.
//!
//! A tier's client is grouped with nobody but the other clients of the same tier network: a tier's /32
//! never shares the budget or the group caps of the /24 it sits in, and a stranger in that /24 is not
//! lifted by the tier either. The guard, the cost ledger and the fronts all read the same [`Tiers`],
//! swapped whole on reload, so a changed tier applies to new connections and new sessions.

use crate::telemetry::metrics::TierMetrics;
use crate::wire::acl::{CidrSet, PrefixMap};
use ipnetwork::IpNetwork;
use std::net::IpAddr;
use std::sync::Arc;

/// Most `[[tier]]` tables: each names a metric label, and a tier is an operator's handful of partners,
/// not a second allowlist.
pub const MAX_TIERS: usize = 64;
/// The largest multiplier: beyond it a limit means nothing, and `"exempt"` says so plainly.
pub const MAX_SCALE: f64 = 1_000_000.0;
/// What every limit of a tier is multiplied by when the tier does not say.
pub const DEFAULT_SCALE: Scale = Scale::Times(1.0);

/// How one limit applies to a tier's clients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// The limit strangers get, multiplied (finite, greater than 0).
    Times(f64),
    /// No such limit for the tier.
    Exempt,
}

impl Scale {
    /// A cap (`None` = none) scaled: never below 1, since a cap of 0 would refuse the tier altogether.
    pub fn cap(self, cap: Option<usize>) -> Option<usize> {
        match self {
            Scale::Exempt => None,
            Scale::Times(k) => cap.map(|c| ((c as f64) * k).round().max(1.0) as usize),
        }
    }

    /// The factor, infinite when exempt.
    pub fn factor(self) -> f64 {
        match self {
            Scale::Exempt => f64::INFINITY,
            Scale::Times(k) => k,
        }
    }
}

/// Whether the gateway's automatic bans (cost hard limit, protocol violations) may ban a tier's clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierBans {
    /// Like anyone else.
    Auto,
    /// Never: the session is still cut off, the address is not banned. Operators' bans still apply.
    Never,
}

/// One `[[tier]]`.
#[derive(Debug)]
pub struct Tier {
    pub name: String,
    pub networks: Vec<IpNetwork>,
    /// API front user and token names whose sessions belong to the tier wherever they connect from.
    pub credentials: Vec<String>,
    pub connections_per_ip: Scale,
    pub connections_per_group: Scale,
    pub connect_rate: Scale,
    /// The soft and hard cost limits (the client's budget) and the node-fee thresholds.
    pub cost: Scale,
    pub subscriptions: Scale,
    pub bans: TierBans,
    pub metrics: TierMetrics,
}

impl Tier {
    /// A tier that changes nothing, to be adjusted field by field.
    pub fn new(name: impl Into<String>) -> Tier {
        let name = name.into();
        Tier {
            metrics: TierMetrics::new(&name),
            name,
            networks: Vec::new(),
            credentials: Vec::new(),
            connections_per_ip: DEFAULT_SCALE,
            connections_per_group: DEFAULT_SCALE,
            connect_rate: DEFAULT_SCALE,
            cost: DEFAULT_SCALE,
            subscriptions: DEFAULT_SCALE,
            bans: TierBans::Auto,
        }
    }
}

/// Where a client stands: its tier and the tier network (or credential host) it is grouped by.
#[derive(Debug, Clone)]
pub struct TierMatch<'a> {
    pub index: usize,
    pub tier: &'a Arc<Tier>,
    /// The group: the tier network holding the address, or the address alone for a credential's tier.
    pub group: IpNetwork,
}

/// Every tier, with the networks indexed for a longest-prefix lookup per connection.
#[derive(Debug, Default)]
pub struct Tiers {
    list: Vec<Arc<Tier>>,
    nets: PrefixMap<usize>,
}

impl Tiers {
    /// Networks must not overlap between tiers (`config` checks it); should two, the later one wins.
    pub fn new(list: Vec<Tier>) -> Tiers {
        let list: Vec<Arc<Tier>> = list.into_iter().map(Arc::new).collect();
        let nets = list
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.networks.iter().map(move |n| (*n, i)))
            .collect();
        Tiers { list, nets }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tier>> + '_ {
        self.list.iter()
    }

    /// The tier whose network holds `ip`, if any.
    pub fn lookup(&self, ip: IpAddr) -> Option<TierMatch<'_>> {
        if self.list.is_empty() {
            return None;
        }
        let (net, &index) = self.nets.longest_match(ip)?;
        Some(TierMatch {
            index,
            tier: self.list.get(index)?,
            group: net,
        })
    }

    /// The tier an API credential (user or token name) belongs to, for a session from `ip`. Such a tier's
    /// sessions are grouped per client address.
    pub fn by_credential(&self, name: &str, ip: IpAddr) -> Option<TierMatch<'_>> {
        let index = self.list.iter().position(|t| t.credentials.iter().any(|c| c == name))?;
        Some(TierMatch {
            index,
            tier: &self.list[index],
            group: IpNetwork::from(crate::wire::addr::canonical(ip)),
        })
    }

    /// Networks automatic bans must never cover.
    pub fn never_banned(&self) -> CidrSet {
        CidrSet::from_nets(
            self.list
                .iter()
                .filter(|t| t.bans == TierBans::Never)
                .flat_map(|t| t.networks.iter().copied()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers() -> Tiers {
        let mut a = Tier::new("tor");
        a.networks = vec!["192.0.2.7/32".parse().unwrap(), "2001:db8::/64".parse().unwrap()];
        a.bans = TierBans::Never;
        let mut b = Tier::new("partner");
        b.networks = vec!["198.51.100.0/28".parse().unwrap()];
        b.credentials = vec!["wallet-team".into()];
        Tiers::new(vec![a, b])
    }

    #[test]
    fn lookup_finds_the_tier_network() {
        let t = tiers();
        let m = t.lookup("192.0.2.7".parse().unwrap()).unwrap();
        assert_eq!(
            (m.tier.name.as_str(), m.group),
            ("tor", "192.0.2.7/32".parse().unwrap())
        );
        assert!(
            t.lookup("192.0.2.8".parse().unwrap()).is_none(),
            "a neighbour is a stranger"
        );
        let m = t.lookup("::ffff:198.51.100.9".parse().unwrap()).unwrap();
        assert_eq!((m.index, m.group), (1, "198.51.100.0/28".parse().unwrap()));
        assert_eq!(t.lookup("2001:db8::5".parse().unwrap()).unwrap().tier.name, "tor");
        let c = t.by_credential("wallet-team", "203.0.113.4".parse().unwrap()).unwrap();
        assert_eq!((c.index, c.group), (1, "203.0.113.4/32".parse().unwrap()));
        assert!(t.by_credential("nobody", "203.0.113.4".parse().unwrap()).is_none());
        let never = t.never_banned();
        assert!(never.contains("192.0.2.7".parse().unwrap()) && !never.contains("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn scaled_caps() {
        assert_eq!(Scale::Times(4.0).cap(Some(3)), Some(12));
        assert_eq!(Scale::Times(0.1).cap(Some(3)), Some(1), "never 0");
        assert_eq!(Scale::Times(4.0).cap(None), None);
        assert_eq!(Scale::Exempt.cap(Some(3)), None);
    }
}
