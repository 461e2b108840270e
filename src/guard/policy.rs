//! Admission policy: the rules one level (global or one front) applies to new connections.

use crate::wire::acl::CidrSet;
use crate::wire::units::Rate;

/// Connection-rate allowance: `rate` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub rate: Rate,
    pub burst: u32,
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
}
