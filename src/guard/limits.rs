//! Connection caps (total, per IP, per group) and connection-rate limits.
//!
//! Counters are written by every accept, so they are sharded: a flood from one address contends on one
//! shard only, and no lock is ever held across an await.

use super::policy::RateLimit;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const SHARDS: usize = 32;

/// Concurrent connections per key.
pub struct KeyedCounts {
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

impl Default for KeyedCounts {
    fn default() -> Self {
        KeyedCounts {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl KeyedCounts {
    fn shard(&self, key: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[h.finish() as usize % SHARDS]
    }

    /// Takes one slot for `key` unless it already holds `cap`.
    pub fn try_acquire(&self, key: IpAddr, cap: Option<usize>) -> bool {
        let mut map = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        if cap.is_some_and(|c| *n as usize >= c) {
            if *n == 0 {
                map.remove(&key);
            }
            return false;
        }
        *n += 1;
        true
    }

    pub fn release(&self, key: IpAddr) {
        let mut map = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        if let Entry::Occupied(mut e) = map.entry(key) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                // Entries exist only while connections do, so the map cannot grow with past visitors.
                e.remove();
            }
        }
    }

    pub fn get(&self, key: IpAddr) -> u32 {
        let map = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key).copied().unwrap_or(0)
    }
}

/// Total concurrent connections at one level.
#[derive(Default)]
pub struct TotalCount(AtomicUsize);

impl TotalCount {
    pub fn try_acquire(&self, cap: Option<usize>) -> bool {
        match cap {
            None => {
                self.0.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(c) => self
                .0
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < c).then_some(n + 1))
                .is_ok(),
        }
    }

    pub fn release(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// New-connection rate per key (GCRA via governor: constant memory per key, no timers).
pub struct ConnectRate {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl ConnectRate {
    pub fn new(limit: RateLimit) -> ConnectRate {
        let per_one = limit.rate.per / limit.rate.count.max(1);
        let quota = Quota::with_period(per_one.max(std::time::Duration::from_nanos(1)))
            .expect("period is non-zero")
            .allow_burst(NonZeroU32::new(limit.burst.max(1)).expect("burst is non-zero"));
        ConnectRate {
            limiter: RateLimiter::keyed(quota),
        }
    }

    pub fn check(&self, key: IpAddr) -> bool {
        self.limiter.check_key(&key).is_ok()
    }

    /// Forgets keys whose allowance is full again, so the table holds only recent visitors.
    pub fn housekeep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_counts_cap_and_release() {
        let c = KeyedCounts::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(c.try_acquire(a, Some(2)));
        assert!(c.try_acquire(a, Some(2)));
        assert!(!c.try_acquire(a, Some(2)));
        assert!(c.try_acquire(b, Some(2)));
        c.release(a);
        assert!(c.try_acquire(a, Some(2)));
        c.release(a);
        c.release(a);
        c.release(b);
        assert_eq!(c.get(a), 0);
        assert!(c.shards.iter().all(|s| s.lock().unwrap().is_empty()));
    }

    #[test]
    fn total_count_cap() {
        let t = TotalCount::default();
        assert!(t.try_acquire(Some(1)));
        assert!(!t.try_acquire(Some(1)));
        t.release();
        assert!(t.try_acquire(Some(1)));
        assert!(t.try_acquire(None));
        assert_eq!(t.get(), 2);
    }
}
