//! Log rate gating: one line per (address, reason) per interval, whatever the flood.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The refusal log gate: a refusal is logged at most once per (address, reason) per interval, so a flood
/// produces one line per offender instead of one per connection. The listeners and the cluster share it.
pub struct RefusalLog {
    shards: Box<[Mutex<GateShard>]>,
    interval: Duration,
}

/// Bound on remembered (address, reason) pairs for log suppression; a flood from many addresses must
/// not grow it without limit.
pub const LOG_GATE_MAX: usize = 65_536;
/// Shards of the log gate: refusals are the flood path, so they must not all queue on one lock.
const LOG_GATE_SHARDS: usize = 32;

/// Part of the log gate: when each (address, reason) was last logged.
struct GateShard {
    last: HashMap<(IpAddr, &'static str), Instant>,
    /// When this shard was last swept; a full shard is swept at most once a second, so a flood from more
    /// addresses than the gate holds costs a lookup per refusal, not a sweep.
    swept: Instant,
}

impl RefusalLog {
    pub fn new(interval: Duration) -> RefusalLog {
        RefusalLog {
            shards: (0..LOG_GATE_SHARDS)
                .map(|_| {
                    Mutex::new(GateShard {
                        last: HashMap::new(),
                        swept: Instant::now(),
                    })
                })
                .collect(),
            interval,
        }
    }

    /// True if `reason` (a refusal's short name) has not been logged for `ip`
    /// within the interval.
    pub fn should_log(&self, ip: IpAddr, reason: &'static str) -> bool {
        let now = Instant::now();
        let interval = self.interval;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&ip, &mut h);
        let shard = &self.shards[std::hash::Hasher::finish(&h) as usize % LOG_GATE_SHARDS];
        let mut gate = shard.lock().unwrap_or_else(|p| p.into_inner());
        if gate.last.len() >= LOG_GATE_MAX / LOG_GATE_SHARDS {
            if now.duration_since(gate.swept) >= std::time::Duration::from_secs(1) {
                gate.swept = now;
                gate.last.retain(|_, t| now.duration_since(*t) < interval);
            }
            if gate.last.len() >= LOG_GATE_MAX / LOG_GATE_SHARDS {
                // More offenders than the gate remembers: stay quiet rather than flood the log.
                return false;
            }
        }
        match gate.last.get_mut(&(ip, reason)) {
            Some(t) if now.duration_since(*t) < interval => false,
            Some(t) => {
                *t = now;
                true
            }
            None => {
                gate.last.insert((ip, reason), now);
                true
            }
        }
    }

    /// Pairs remembered now, over every shard.
    pub fn held(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).last.len())
            .sum()
    }

    /// Forgets entries older than the interval.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut g = shard.lock().unwrap_or_else(|p| p.into_inner());
            g.last.retain(|_, t| now.duration_since(*t) < self.interval);
            g.swept = now;
        }
    }
}
