//! The ban table the guard consults at accept time.
//!
//! Reads happen on every accept and writes are rare, so a read-mostly lock over a longest-prefix map is
//! enough; lookups never hold it across an await.

use super::acl::PrefixMap;
use ipnetwork::IpNetwork;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub until: SystemTime,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct BanTable {
    map: RwLock<PrefixMap<Ban>>,
    /// Past offences per address, so repeat offenders get longer bans.
    offences: Mutex<HashMap<IpAddr, (u32, SystemTime)>>,
}

impl BanTable {
    pub fn ban(&self, net: IpNetwork, duration: Duration, reason: impl Into<String>) {
        let ban = Ban {
            until: SystemTime::now() + duration,
            reason: reason.into(),
        };
        self.map.write().unwrap_or_else(|p| p.into_inner()).insert(net, ban);
    }

    /// Bans one address for `base`, doubled for each earlier offence (up to `max`); offences older than
    /// `max` are forgiven. Returns the ban's duration.
    pub fn ban_offender(&self, ip: IpAddr, base: Duration, max: Duration, reason: &str) -> Duration {
        let ip = super::addr::canonical(ip);
        let now = SystemTime::now();
        let count = {
            let mut off = self.offences.lock().unwrap_or_else(|p| p.into_inner());
            let e = off.entry(ip).or_insert((0, now));
            if now.duration_since(e.1).unwrap_or_default() > max + max {
                e.0 = 0;
            }
            e.0 = e.0.saturating_add(1);
            e.1 = now;
            e.0
        };
        let factor = 1u32.checked_shl(count.saturating_sub(1)).unwrap_or(u32::MAX);
        let duration = base.checked_mul(factor).unwrap_or(max).min(max);
        self.ban(IpNetwork::from(ip), duration, reason);
        tracing::warn!(client = %ip, reason, ban_secs = duration.as_secs(), offence = count, "address banned");
        duration
    }

    pub fn unban(&self, net: &IpNetwork) -> Option<Ban> {
        self.map.write().unwrap_or_else(|p| p.into_inner()).remove(net)
    }

    /// The ban covering `ip` that is still in force, if any. Expiry is checked here, so an expired ban
    /// never refuses anyone even before housekeeping removes it.
    pub fn lookup(&self, ip: IpAddr) -> Option<(IpNetwork, Ban)> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return None;
        }
        let (net, ban) = map.longest_match(ip)?;
        (ban.until > SystemTime::now()).then(|| (net, ban.clone()))
    }

    pub fn purge_expired(&self) {
        let now = SystemTime::now();
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, b| b.until > now);
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
