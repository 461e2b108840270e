//! A token bucket that may go into debt: a read takes what arrived (up to one buffer) and the next
//! read waits until the debt is paid. One comparison and a few float operations per chunk; no timer of
//! its own (the relay's one timer wakes the session).

use super::settings::Pace;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Bucket {
    pace: Pace,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(pace: Pace, now: Instant) -> Bucket {
        Bucket {
            pace,
            tokens: pace.burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.pace.per_second).min(self.pace.burst);
    }

    pub fn take(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.tokens -= n;
    }

    /// None when the bucket is out of debt; else when it will be.
    pub fn ready_at(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        (self.tokens < 0.0).then(|| now + std::time::Duration::from_secs_f64(-self.tokens / self.pace.per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn debt_is_paid_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(
            Pace {
                per_second: 1000.0,
                burst: 500.0,
            },
            t0,
        );
        b.take(400.0, t0);
        assert_eq!(b.ready_at(t0), None);
        b.take(1100.0, t0);
        let at = b.ready_at(t0).unwrap();
        assert_eq!(at.duration_since(t0), Duration::from_secs(1));
        assert_eq!(b.ready_at(t0 + Duration::from_secs(1)), None);
        // Refills stop at the burst.
        assert_eq!(b.ready_at(t0 + Duration::from_secs(100)), None);
        b.take(600.0, t0 + Duration::from_secs(100));
        assert!(b.ready_at(t0 + Duration::from_secs(100)).is_some());
    }
}
