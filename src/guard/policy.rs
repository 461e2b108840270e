//! Admission policy: the rules one level (global or one front) applies to new connections.

use crate::state::tier::{Scale, Tiers};
use crate::wire::acl::CidrSet;
use crate::wire::units::Rate;
use std::sync::Arc;
use std::time::Duration;

/// Global `max_connections` when unset: far above one host's wallets, below the descriptors it can hold.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Global `max_connections_per_ip` when unset: a wallet holds one or two, a household behind NAT a few more.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 32;
/// Global `max_connections_per_group` when unset: one /24 (or /48) shares it.
pub const DEFAULT_MAX_CONNECTIONS_PER_GROUP: usize = 256;
/// IPv4 prefix that makes a client group when unset (one provider's customers share a /24).
pub const DEFAULT_GROUP_PREFIX_V4: u8 = 24;
/// IPv6 prefix that makes a client group when unset (one site holds a /48).
pub const DEFAULT_GROUP_PREFIX_V6: u8 = 48;
/// Global connection rate per address when unset: 10 a second sustained, 20 at once.
pub const DEFAULT_RATE_PER_IP: RateLimit = RateLimit {
    rate: Rate {
        count: 10,
        per: Duration::from_secs(1),
    },
    burst: 20,
};

/// Connection-rate allowance: `rate` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub rate: Rate,
    pub burst: u32,
}

impl RateLimit {
    /// The allowance a tier gets: rate and burst multiplied (never below one), or none when exempt.
    pub fn scaled(self, s: Scale) -> Option<RateLimit> {
        let k = match s {
            Scale::Exempt => return None,
            Scale::Times(k) => k,
        };
        let mul = |n: u32| (f64::from(n) * k).round().clamp(1.0, f64::from(u32::MAX)) as u32;
        Some(RateLimit {
            rate: Rate {
                count: mul(self.rate.count),
                per: self.rate.per,
            },
            burst: mul(self.burst),
        })
    }
}

/// One level of admission rules (global or one front).
#[derive(Debug, Clone)]
pub struct Admission {
    pub allow: CidrSet,
    pub deny: CidrSet,
    pub allowlist_only: bool,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_connections_per_group: Option<usize>,
    pub group_prefix_v4: u8,
    pub group_prefix_v6: u8,
    pub rate_per_ip: Option<RateLimit>,
    pub rate_per_group: Option<RateLimit>,
    /// Trusted tiers (the same for every level): multiples of the caps and rates above, and a group of
    /// their own per tier network.
    pub tiers: Arc<Tiers>,
}

impl Admission {
    /// The global level as an empty `[admission]` table means it: every default, no lists.
    pub fn global_default() -> Admission {
        Admission {
            allow: CidrSet::default(),
            deny: CidrSet::default(),
            allowlist_only: false,
            max_connections: Some(DEFAULT_MAX_CONNECTIONS),
            max_connections_per_ip: Some(DEFAULT_MAX_CONNECTIONS_PER_IP),
            max_connections_per_group: Some(DEFAULT_MAX_CONNECTIONS_PER_GROUP),
            group_prefix_v4: DEFAULT_GROUP_PREFIX_V4,
            group_prefix_v6: DEFAULT_GROUP_PREFIX_V6,
            rate_per_ip: Some(DEFAULT_RATE_PER_IP),
            rate_per_group: None,
            tiers: Arc::new(Tiers::default()),
        }
    }
}
