//! Protocol violations per peer address, across connections. A peer's session ends at its first
//! violation, so counting per session (as the Electrum front does) would never reach `max_violations`:
//! the count lives here, keyed by address, until the address is banned or the count goes stale.

use crate::state::bans::{BanPolicy, BanTable};
use crate::telemetry;
use crate::wire::addr::canonical;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most addresses remembered at once: a scan from many addresses cannot grow the table without bound.
pub const MAX_OFFENDERS: usize = 65_536;
/// A count not added to for this long starts again from zero.
pub const OFFENCE_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct Offences {
    counts: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    cap: usize,
}

impl Default for Offences {
    fn default() -> Self {
        Offences::with_cap(MAX_OFFENDERS)
    }
}

impl Offences {
    pub fn with_cap(cap: usize) -> Offences {
        Offences {
            counts: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records one violation of `ip`; bans it (through the shared ban path: journaled, escalating,
    /// replicated) once it has more than `policy.max_violations`. True when it was banned.
    pub fn record(&self, ip: IpAddr, policy: &BanPolicy, bans: &BanTable, what: &str) -> bool {
        if !policy.enabled {
            return false;
        }
        let ip = canonical(ip);
        let now = Instant::now();
        let count = {
            let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            if m.len() >= self.cap && !m.contains_key(&ip) {
                m.retain(|_, (_, t)| now.duration_since(*t) < OFFENCE_WINDOW);
            }
            let count = if m.len() < self.cap || m.contains_key(&ip) {
                let e = m.entry(ip).or_insert((0, now));
                if now.duration_since(e.1) >= OFFENCE_WINDOW {
                    e.0 = 0;
                }
                e.0 += 1;
                e.1 = now;
                let c = e.0;
                if c > policy.max_violations {
                    m.remove(&ip);
                }
                c
            } else {
                // Full of fresh offenders: this one is judged on this violation alone.
                1
            };
            telemetry::peer::offenders(m.len());
            count
        };
        if count > policy.max_violations {
            return bans
                .ban_offender(ip, policy.duration, policy.max_duration, what)
                .is_some();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::acl::CidrSet;

    fn policy(max_violations: u32) -> BanPolicy {
        BanPolicy {
            enabled: true,
            duration: Duration::from_secs(60),
            max_duration: Duration::from_secs(600),
            max_violations,
            journal: None,
            limits: Default::default(),
        }
    }

    #[test]
    fn the_violation_past_the_limit_bans_and_is_forgotten() {
        let bans = BanTable::new(CidrSet::default());
        let o = Offences::default();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert!(!o.record(ip, &policy(2), &bans, "x"));
        assert!(!o.record(ip, &policy(2), &bans, "x"));
        assert!(!bans.is_banned(ip));
        assert!(o.record(ip, &policy(2), &bans, "x"));
        assert!(bans.is_banned(ip));
        assert!(o.is_empty());
        // A mapped IPv6 address is the same offender.
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.51.100.1".parse().unwrap();
        assert!(!o.record(other, &policy(1), &bans, "x"));
        assert!(o.record(mapped, &policy(1), &bans, "x"));
        // Bans off: nothing is counted.
        let mut off = policy(0);
        off.enabled = false;
        assert!(!o.record("203.0.113.1".parse().unwrap(), &off, &bans, "x"));
        assert!(o.is_empty());
    }

    #[test]
    fn a_full_table_judges_newcomers_alone() {
        let bans = BanTable::new(CidrSet::default());
        let o = Offences::with_cap(2);
        for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            assert!(!o.record(ip.parse().unwrap(), &policy(1), &bans, "x"));
        }
        assert_eq!(o.len(), 2);
        // The third was not remembered: its second violation is again its first.
        assert!(!o.record("192.0.2.3".parse().unwrap(), &policy(1), &bans, "x"));
        // The remembered ones still count.
        assert!(o.record("192.0.2.1".parse().unwrap(), &policy(1), &bans, "x"));
    }
}
