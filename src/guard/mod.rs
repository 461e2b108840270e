//! Admission: the one place that answers "may this address connect now?". Every front calls
//! [`Guard::admit`]; no front re-implements allow/deny/ban/limit logic.
//!
//! Order of decisions: ban → blocklist feeds → deny → allowlist → caps → rate. Rate comes last so that a connection
//! refused by a list or a cap does not also spend the client's rate allowance. Limiters are charged
//! as they are checked (governor has no dry run), so a connection refused by the group rate has
//! still spent its own per-IP allowance: that only makes a flooding client wait longer.

pub mod limits;
pub mod policy;

use crate::state::bans::BanTable;
use crate::state::feeds::FeedSet;
use crate::telemetry::log_gate::RefusalLog;
use crate::wire::addr;
use arc_swap::ArcSwap;
use limits::{ConnectRate, KeyedCounts, TotalCount};
pub use policy::{Admission, RateLimit};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why a connection was refused. The string form is what logs and metrics show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Banned,
    /// Listed by a blocklist feed or a CrowdSec decision (which one: `gatehouse_feed_refusals_total`).
    Feed,
    Denied,
    NotAllowlisted,
    MaxConnections,
    PerIpCap,
    PerGroupCap,
    IpRate,
    GroupRate,
    ProxyUntrusted,
    ProxyMalformed,
}

impl Refusal {
    pub const ALL: [Refusal; 11] = [
        Refusal::Banned,
        Refusal::Feed,
        Refusal::Denied,
        Refusal::NotAllowlisted,
        Refusal::MaxConnections,
        Refusal::PerIpCap,
        Refusal::PerGroupCap,
        Refusal::IpRate,
        Refusal::GroupRate,
        Refusal::ProxyUntrusted,
        Refusal::ProxyMalformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Banned => "banned",
            Refusal::Feed => "feed",
            Refusal::Denied => "denied",
            Refusal::NotAllowlisted => "not_allowlisted",
            Refusal::MaxConnections => "max_connections",
            Refusal::PerIpCap => "per_ip_cap",
            Refusal::PerGroupCap => "per_group_cap",
            Refusal::IpRate => "ip_rate",
            Refusal::GroupRate => "group_rate",
            Refusal::ProxyUntrusted => "proxy_untrusted",
            Refusal::ProxyMalformed => "proxy_malformed",
        }
    }

    fn index(self) -> usize {
        Refusal::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rules of one level plus the rate limiters built from them; swapped whole on reload.
pub struct LevelPolicy {
    pub admission: Admission,
    ip_rate: Option<ConnectRate>,
    group_rate: Option<ConnectRate>,
    /// Per tier (in the order of `admission.tiers`): its own per-IP and per-group limiters, with the
    /// tier's multiple of this level's rates.
    tier_rates: Vec<(Option<ConnectRate>, Option<ConnectRate>)>,
}

impl LevelPolicy {
    pub fn new(admission: Admission) -> LevelPolicy {
        let tier_rates = admission
            .tiers
            .iter()
            .map(|t| {
                let scaled = |r: Option<RateLimit>| r.and_then(|r| r.scaled(t.connect_rate)).map(ConnectRate::new);
                (scaled(admission.rate_per_ip), scaled(admission.rate_per_group))
            })
            .collect();
        LevelPolicy {
            ip_rate: admission.rate_per_ip.map(ConnectRate::new),
            group_rate: admission.rate_per_group.map(ConnectRate::new),
            tier_rates,
            admission,
        }
    }

    /// The per-IP and per-group limiters that apply to a client of tier `index` (or a stranger).
    fn rates(&self, tier: Option<usize>) -> (Option<&ConnectRate>, Option<&ConnectRate>) {
        match tier.and_then(|i| self.tier_rates.get(i)) {
            Some((ip, group)) => (ip.as_ref(), group.as_ref()),
            None => (self.ip_rate.as_ref(), self.group_rate.as_ref()),
        }
    }
}

/// One level of admission (the whole gateway, or one front): its policy and its live counts.
pub struct Level {
    policy: ArcSwap<LevelPolicy>,
    total: TotalCount,
    per_ip: KeyedCounts,
    per_group: KeyedCounts,
    /// Connections per tier network, kept apart from `per_group` so a tier network's address never
    /// counts as the /24 that starts at the same address.
    per_tier_group: KeyedCounts,
}

impl Level {
    pub fn new(admission: Admission) -> Arc<Level> {
        Arc::new(Level {
            policy: ArcSwap::from_pointee(LevelPolicy::new(admission)),
            total: TotalCount::default(),
            per_ip: KeyedCounts::default(),
            per_group: KeyedCounts::default(),
            per_tier_group: KeyedCounts::default(),
        })
    }

    pub fn set_policy(&self, admission: Admission) {
        self.policy.store(Arc::new(LevelPolicy::new(admission)));
    }

    pub fn open_connections(&self) -> usize {
        self.total.get()
    }

    fn housekeep(&self) {
        let p = self.policy.load();
        let tiers = p.tier_rates.iter().flat_map(|(a, b)| [a, b]);
        for r in [&p.ip_rate, &p.group_rate].into_iter().chain(tiers).flatten() {
            r.housekeep();
        }
    }
}

/// Which group a connection counts in at one level.
#[derive(Clone, Copy)]
enum GroupSlot {
    /// The address group (its /24 or /48).
    Net(IpAddr),
    /// A tier network, by its address.
    Tier(IpAddr),
}

impl GroupSlot {
    fn key(self) -> IpAddr {
        match self {
            GroupSlot::Net(k) | GroupSlot::Tier(k) => k,
        }
    }
}

/// Slots held at one level; released on drop.
struct Held {
    level: Arc<Level>,
    ip: IpAddr,
    group: Option<GroupSlot>,
}

impl Held {
    fn counts(level: &Level, g: GroupSlot) -> &KeyedCounts {
        match g {
            GroupSlot::Net(_) => &level.per_group,
            GroupSlot::Tier(_) => &level.per_tier_group,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.level.total.release();
        self.level.per_ip.release(self.ip);
        if let Some(g) = self.group {
            Held::counts(&self.level, g).release(g.key());
        }
    }
}

/// Proof of admission: holds the connection's slots in every cap until the connection ends.
pub struct Permit {
    _held: [Held; 2],
}

pub struct Guard {
    global: Arc<Level>,
    bans: Arc<BanTable>,
    feeds: Arc<FeedSet>,
    refused: [AtomicU64; Refusal::ALL.len()],
    refusal_log: Arc<RefusalLog>,
}

impl Guard {
    pub fn new(global: Admission, bans: Arc<BanTable>, log_interval: Duration) -> Guard {
        Guard {
            global: Level::new(global),
            bans,
            feeds: Arc::default(),
            refused: Default::default(),
            refusal_log: Arc::new(RefusalLog::new(log_interval)),
        }
    }

    /// Refuses what the blocklist feeds and CrowdSec list.
    pub fn with_feeds(mut self, feeds: Arc<FeedSet>) -> Guard {
        self.feeds = feeds;
        self
    }

    pub fn feeds(&self) -> &Arc<FeedSet> {
        &self.feeds
    }

    /// The refusal log gate, for other listeners (the cluster's) to log their refusals through.
    pub fn refusal_log(&self) -> &Arc<RefusalLog> {
        &self.refusal_log
    }

    pub fn global(&self) -> &Arc<Level> {
        &self.global
    }

    pub fn bans(&self) -> &Arc<BanTable> {
        &self.bans
    }

    /// Decides whether `ip` (already the real client address, after PROXY intake) may connect to the
    /// front whose level is `front`.
    pub fn admit(&self, front: &Arc<Level>, ip: IpAddr) -> Result<Permit, Refusal> {
        let ip = addr::canonical(ip);
        let result = self.decide(front, ip);
        if let Err(r) = result {
            self.count(r);
        }
        result
    }

    fn decide(&self, front: &Arc<Level>, ip: IpAddr) -> Result<Permit, Refusal> {
        if self.bans.is_banned(ip) {
            return Err(Refusal::Banned);
        }
        if self.feeds.refuse(ip).is_some() {
            return Err(Refusal::Feed);
        }
        let gp = self.global.policy.load();
        let fp = front.policy.load();
        let (ga, fa) = (&gp.admission, &fp.admission);
        if ga.deny.contains(ip) || fa.deny.contains(ip) {
            return Err(Refusal::Denied);
        }
        let allowed = ga.allow.contains(ip) || fa.allow.contains(ip);
        if (ga.allowlist_only || fa.allowlist_only) && !allowed {
            return Err(Refusal::NotAllowlisted);
        }
        // Allowlisted networks are operators' own or trusted peers: they keep per-IP limits but are
        // not lumped into a group with strangers.
        let (g, gt) = self.hold(&self.global, &gp, ip, allowed)?;
        let (f, ft) = self.hold(front, &fp, ip, allowed)?;
        // The front is checked before the global level so that a front's refusal leaves the global
        // allowance untouched; per IP before per group so that one client's refusal cannot spend its
        // neighbours' group allowance.
        for (p, group, tier) in [(&fp, f.group, ft), (&gp, g.group, gt)] {
            let (ip_rate, group_rate) = p.rates(tier);
            if ip_rate.is_some_and(|r| !r.check(ip)) {
                return Err(Refusal::IpRate);
            }
            if let (Some(r), Some(group)) = (group_rate, group) {
                if !r.check(group.key()) {
                    return Err(Refusal::GroupRate);
                }
            }
        }
        Ok(Permit { _held: [g, f] })
    }

    /// Takes the connection's slots at one level; also returns the index of the client's tier there.
    fn hold(
        &self,
        level: &Arc<Level>,
        p: &LevelPolicy,
        ip: IpAddr,
        allowed: bool,
    ) -> Result<(Held, Option<usize>), Refusal> {
        let a = &p.admission;
        let tier = a.tiers.lookup(ip);
        let (per_ip, per_group) = match &tier {
            Some(t) => (
                t.tier.connections_per_ip.cap(a.max_connections_per_ip),
                t.tier.connections_per_group.cap(a.max_connections_per_group),
            ),
            None => (a.max_connections_per_ip, a.max_connections_per_group),
        };
        if !level.total.try_acquire(a.max_connections) {
            return Err(Refusal::MaxConnections);
        }
        if !level.per_ip.try_acquire(ip, per_ip) {
            level.total.release();
            return Err(Refusal::PerIpCap);
        }
        // A tier client's group is its tier network, never the /24 it sits in.
        let group = (!allowed).then(|| match &tier {
            Some(t) => GroupSlot::Tier(t.group.network()),
            None => GroupSlot::Net(addr::group_of(ip, a.group_prefix_v4, a.group_prefix_v6)),
        });
        if let Some(g) = group {
            if !Held::counts(level, g).try_acquire(g.key(), per_group) {
                level.total.release();
                level.per_ip.release(ip);
                return Err(Refusal::PerGroupCap);
            }
        }
        let index = tier.map(|t| t.index);
        Ok((
            Held {
                level: level.clone(),
                ip,
                group,
            },
            index,
        ))
    }

    /// Counts a refusal decided outside [`Guard::admit`] (PROXY header problems).
    pub fn count(&self, r: Refusal) {
        self.refused[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r.index()].load(Ordering::Relaxed)
    }

    /// True if this (address, reason) has not been logged within the interval, so a flood produces one
    /// log line per offender per interval instead of one per connection.
    pub fn should_log(&self, ip: IpAddr, r: Refusal) -> bool {
        self.refusal_log.should_log(ip, r.as_str())
    }

    /// Periodic upkeep: forget idle rate-limit keys, expired bans and stale log-gate entries.
    pub fn housekeep(&self, fronts: &[Arc<Level>]) {
        self.global.housekeep();
        for f in fronts {
            f.housekeep();
        }
        self.bans.purge_expired();
        self.refusal_log.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::log_gate::LOG_GATE_MAX;

    fn guard(interval: Duration) -> Guard {
        Guard::new(
            Admission::global_default(),
            Arc::new(BanTable::new(crate::wire::acl::CidrSet::default())),
            interval,
        )
    }

    #[test]
    fn refusals_are_logged_once_per_address_and_reason_per_interval() {
        let g = guard(Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(g.should_log(a, Refusal::Denied));
        assert!(!g.should_log(a, Refusal::Denied));
        assert!(g.should_log(a, Refusal::IpRate), "another reason is another line");
        assert!(g.should_log("192.0.2.2".parse().unwrap(), Refusal::Denied));
        let again = guard(Duration::ZERO);
        assert!(again.should_log(a, Refusal::Denied));
        assert!(again.should_log(a, Refusal::Denied), "interval 0 logs every refusal");
    }

    #[test]
    fn an_exempt_tier_has_no_cap_and_a_multiplied_one_its_multiple() {
        use crate::state::tier::{Scale, Tier, Tiers};
        let mut free = Tier::new("free");
        free.networks = vec!["192.0.2.7/32".parse().unwrap()];
        free.connections_per_ip = Scale::Exempt;
        free.connect_rate = Scale::Exempt;
        let mut twice = Tier::new("twice");
        twice.networks = vec!["192.0.2.8/32".parse().unwrap()];
        twice.connections_per_ip = Scale::Times(2.0);
        let admission = Admission {
            max_connections_per_ip: Some(2),
            tiers: Arc::new(Tiers::new(vec![free, twice])),
            ..Admission::global_default()
        };
        let g = Guard::new(
            admission,
            Arc::new(BanTable::new(crate::wire::acl::CidrSet::default())),
            Duration::from_secs(60),
        );
        let front = Level::new(Admission {
            tiers: g.global().policy.load().admission.tiers.clone(),
            ..Admission::global_default()
        });
        let admit = |ip: &str| g.admit(&front, ip.parse().unwrap());
        let held: Vec<Permit> = (0..50).map(|_| admit("192.0.2.7").expect("exempt")).collect();
        let twice: Vec<Permit> = (0..4).map(|_| admit("192.0.2.8").expect("within 2 × 2")).collect();
        assert_eq!(admit("192.0.2.8").err(), Some(Refusal::PerIpCap));
        let stranger: Vec<Permit> = (0..2).map(|_| admit("192.0.2.9").expect("within 2")).collect();
        assert_eq!(admit("192.0.2.9").err(), Some(Refusal::PerIpCap));
        drop((held, twice, stranger));
    }

    #[test]
    fn a_flood_from_more_addresses_than_the_gate_holds_stays_bounded() {
        let g = guard(Duration::from_secs(60));
        let logged = (0..(LOG_GATE_MAX as u32 * 2))
            .filter(|i| g.should_log(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), Refusal::Denied))
            .count();
        // Each shard fills, then stays quiet: at most the gate's size, however many addresses come.
        assert!(logged <= LOG_GATE_MAX, "{logged} lines logged");
        assert!(logged >= LOG_GATE_MAX / 2, "only {logged} lines logged");
        let held = g.refusal_log.held();
        assert!(held <= LOG_GATE_MAX);
    }
}
