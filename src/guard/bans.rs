//! The ban table the guard consults at accept time.
//!
//! Reads happen on every accept and writes are rare, so a read-mostly lock over a longest-prefix map is
//! enough; lookups never hold it across an await.

use super::acl::PrefixMap;
use ipnetwork::IpNetwork;
use std::net::IpAddr;
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub until: SystemTime,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct BanTable {
    map: RwLock<PrefixMap<Ban>>,
}

impl BanTable {
    pub fn ban(&self, net: IpNetwork, duration: Duration, reason: impl Into<String>) {
        let ban = Ban {
            until: SystemTime::now() + duration,
            reason: reason.into(),
        };
        self.map.write().unwrap_or_else(|p| p.into_inner()).insert(net, ban);
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
