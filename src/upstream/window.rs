//! A backend's in-flight window learned from its latency, the way a delay-based congestion window is:
//! while answers come back about as fast as the backend answers when nothing queues inside it, the
//! window may grow; once they come back slower, requests are queueing inside the backend (where the
//! gateway can no longer choose who goes first), so the window shrinks.
//!
//! Latency is judged per class (light, heavy), each against its own base: a 2016-header read is slower
//! than a balance lookup without anything queueing, and a round of heavy answers must not read as
//! congestion. A round is one window's worth of answers; it is calm when its fastest answer, relative to
//! its class's base, came back within the tolerance. The fastest answer is the one that queued least, so
//! one slow method in the round does not shrink the window, and a round where even the fastest waited
//! means everything waited.

use std::time::Duration;

/// The smallest learned window: one light and one heavy request, so a slow heavy answer never stalls a
/// balance lookup, while an indexer that serves one request at a time holds at most one flood request
/// ahead of an honest wallet's.
pub const DEFAULT_MIN_WINDOW: u32 = 2;
/// The largest learned window: no indexer serves more requests at once than this usefully.
pub const DEFAULT_MAX_WINDOW: u32 = 1024;
/// Where learning starts, doubled each calm round while it is the limit: small, because a flood arriving
/// before the first congested round finds this many requests' room inside the backend.
pub const DEFAULT_INITIAL_WINDOW: u32 = 16;
/// A round is calm when its fastest answer took at most this many times its class's base latency…
pub const DEFAULT_TOLERANCE: f64 = 2.0;
/// …or at most this much longer than the base. Sub-millisecond answers on loopback jitter by more than
/// their own size, and the latency, measured inside the gateway, also holds the gateway's own scheduling
/// delay: neither is a queue inside the backend. Every millisecond allowed here is one an honest request
/// may wait inside the backend behind the flood, so it is kept just above that noise.
pub const DEFAULT_SLACK: Duration = Duration::from_millis(3);
/// What a congested round multiplies the window by (at most half when its fastest answer took over twice
/// the allowance: the backend holds a long queue).
pub const DEFAULT_SHRINK: f64 = 0.7;
/// Rounds after which the base latency is taken again from the fastest answers of the last period, so a
/// backend that became slower for good (a larger chain, a busier host) is not judged forever against the
/// speed it had once.
pub const DEFAULT_BASE_ROUNDS: u32 = 32;
/// Latencies are never taken below this, so a base of zero cannot make every later answer look slow.
const MIN_BASE: Duration = Duration::from_micros(50);

/// The limits of a learned window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowParams {
    pub min: u32,
    pub max: u32,
    pub initial: u32,
    pub tolerance: f64,
    pub slack: Duration,
    pub shrink: f64,
    pub base_rounds: u32,
}

impl Default for WindowParams {
    fn default() -> Self {
        WindowParams {
            min: DEFAULT_MIN_WINDOW,
            max: DEFAULT_MAX_WINDOW,
            initial: DEFAULT_INITIAL_WINDOW,
            tolerance: DEFAULT_TOLERANCE,
            slack: DEFAULT_SLACK,
            shrink: DEFAULT_SHRINK,
            base_rounds: DEFAULT_BASE_ROUNDS,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AutoWindow {
    p: WindowParams,
    window: u32,
    /// Doubling per calm round until the first congested one, as a new connection probes its path.
    slow_start: bool,
    /// Per class (light, heavy): the fastest answer seen in this base period and the last.
    base: [Option<Duration>; 2],
    /// Per class, the latency a calm answer may take, given its base: kept with the base, which changes
    /// seldom, rather than scaled again for every answer.
    allowed: [Duration; 2],
    next_base: [Option<Duration>; 2],
    rounds: u32,
    answers: u32,
    /// The round's lowest latency relative to what its class is allowed.
    best: f64,
    /// The window was the limit at some point this round: only then is growing it worth anything.
    full: bool,
}

impl AutoWindow {
    pub fn new(p: WindowParams) -> AutoWindow {
        let min = p.min.max(1);
        let max = p.max.max(min);
        AutoWindow {
            window: p.initial.clamp(min, max),
            p: WindowParams { min, max, ..p },
            slow_start: true,
            base: [None; 2],
            allowed: [Duration::ZERO; 2],
            next_base: [None; 2],
            rounds: 0,
            answers: 0,
            best: f64::INFINITY,
            full: false,
        }
    }

    pub fn window(&self) -> u32 {
        self.window
    }

    /// A request had to wait because the window was full.
    pub fn note_full(&mut self) {
        self.full = true;
    }

    /// One answer, `latency` after its request was written; `heavy` picks the class it is judged in.
    /// Returns whether the window changed.
    pub fn sample(&mut self, latency: Duration, heavy: bool) -> bool {
        let c = usize::from(heavy);
        let latency = latency.max(MIN_BASE);
        match self.base[c] {
            Some(base) if latency >= base => {}
            _ => self.set_base(c, latency),
        }
        self.next_base[c] = Some(self.next_base[c].map_or(latency, |b| b.min(latency)));
        self.best = self.best.min(latency.as_secs_f64() / self.allowed[c].as_secs_f64());
        self.answers += 1;
        if self.answers < self.window {
            return false;
        }
        self.end_round()
    }

    fn set_base(&mut self, c: usize, base: Duration) {
        self.base[c] = Some(base);
        self.allowed[c] = base.mul_f64(self.p.tolerance.max(1.0)).max(base + self.p.slack);
    }

    fn end_round(&mut self) -> bool {
        let before = self.window;
        if self.best <= 1.0 {
            if self.full {
                let grown = if self.slow_start {
                    self.window.saturating_mul(2)
                } else {
                    self.window.saturating_add(1)
                };
                self.window = grown.min(self.p.max);
            }
        } else {
            self.slow_start = false;
            // Far over the allowance, the backend holds a long queue: halve at once.
            let shrink = if self.best > 2.0 {
                self.p.shrink.min(0.5)
            } else {
                self.p.shrink
            };
            self.window = ((f64::from(self.window) * shrink) as u32).max(self.p.min);
        }
        self.rounds += 1;
        if self.p.base_rounds > 0 && self.rounds % self.p.base_rounds == 0 {
            for c in 0..2 {
                if let Some(b) = self.next_base[c].take() {
                    self.set_base(c, b);
                }
            }
        }
        self.answers = 0;
        self.best = f64::INFINITY;
        self.full = false;
        self.window != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Completes `rounds` rounds with answers all taking `latency`, with the window the limit in each.
    fn rounds(w: &mut AutoWindow, rounds: usize, latency: Duration, heavy: bool) {
        for _ in 0..rounds {
            w.note_full();
            for _ in w.answers..w.window() {
                w.sample(latency, heavy);
            }
        }
    }

    fn small() -> WindowParams {
        WindowParams {
            min: 2,
            max: 64,
            initial: 8,
            ..WindowParams::default()
        }
    }

    #[test]
    fn grows_while_calm_and_only_when_it_is_the_limit() {
        let mut w = AutoWindow::new(small());
        // Answers without any request having waited: nothing to gain from a larger window.
        for _ in 0..100 {
            w.sample(ms(10), false);
        }
        assert_eq!(w.window(), 8);
        // Slow start: doubling per calm round up to the maximum.
        rounds(&mut w, 1, ms(10), false);
        assert_eq!(w.window(), 16);
        rounds(&mut w, 5, ms(10), false);
        assert_eq!(w.window(), 64);
    }

    #[test]
    fn shrinks_when_latency_rises_and_grows_back_by_one_when_it_falls() {
        let mut w = AutoWindow::new(small());
        rounds(&mut w, 1, ms(10), false);
        assert_eq!(w.window(), 16);
        // Three times the base (1.5 times the allowance): the backend queues. Multiplicative decrease…
        rounds(&mut w, 1, ms(30), false);
        assert_eq!(w.window(), 11);
        rounds(&mut w, 1, ms(30), false);
        assert_eq!(w.window(), 7);
        // …by half when over twice the allowance, down to the floor.
        rounds(&mut w, 1, ms(50), false);
        assert_eq!(w.window(), 3);
        rounds(&mut w, 10, ms(50), false);
        assert_eq!(w.window(), 2);
        // Back to the base: linear growth now (slow start ended with the first congested round).
        rounds(&mut w, 1, ms(10), false);
        assert_eq!(w.window(), 3);
        rounds(&mut w, 3, ms(11), false);
        assert_eq!(w.window(), 6);
    }

    #[test]
    fn the_fastest_answer_of_a_round_decides() {
        let mut w = AutoWindow::new(small());
        w.sample(ms(10), false);
        w.note_full();
        // One answer at the base among slow ones: nothing queued in front of it.
        for i in 0..8 {
            w.sample(if i == 3 { ms(12) } else { ms(200) }, false);
        }
        assert_eq!(w.window(), 16);
    }

    #[test]
    fn heavy_answers_are_judged_against_their_own_base() {
        let mut w = AutoWindow::new(small());
        w.sample(ms(1), false);
        // Heavy reads take 40 ms with nothing queued: not congestion.
        rounds(&mut w, 1, ms(40), true);
        assert_eq!(w.window(), 16);
        // But 40 ms for a light request is.
        rounds(&mut w, 1, ms(40), false);
        assert!(w.window() < 16);
    }

    #[test]
    fn small_absolute_jitter_is_not_congestion() {
        let mut w = AutoWindow::new(small());
        rounds(&mut w, 1, Duration::from_micros(100), false);
        assert_eq!(w.window(), 16);
        // 15 times the base, but only 1.4 ms more: loopback noise.
        rounds(&mut w, 1, Duration::from_micros(1500), false);
        assert_eq!(w.window(), 32);
    }

    #[test]
    fn the_base_is_relearnt_when_the_backend_becomes_slower_for_good() {
        let p = WindowParams {
            base_rounds: 4,
            ..small()
        };
        let mut w = AutoWindow::new(p);
        rounds(&mut w, 1, ms(10), false);
        assert_eq!(w.window(), 16);
        // The backend now answers in 30 ms at best: congested, down to the floor…
        rounds(&mut w, 7, ms(30), false);
        assert_eq!(w.window(), 2);
        // …until a base period has passed without the old speed, and 30 ms is the new base.
        rounds(&mut w, 2, ms(30), false);
        assert_eq!(w.window(), 4);
    }
}
