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

#[derive(Debug, Default)]
pub struct Offences {
    counts: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Offences {
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
            if m.len() >= MAX_OFFENDERS && !m.contains_key(&ip) {
                m.retain(|_, (_, t)| now.duration_since(*t) < OFFENCE_WINDOW);
            }
            let count = if m.len() < MAX_OFFENDERS || m.contains_key(&ip) {
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
