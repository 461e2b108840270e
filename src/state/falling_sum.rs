//! The sum of many values that each fall at their own steady rate until they reach zero and stay there, read
//! in O(log n) rather than O(n).
//!
//! A cost group's live sessions are such values: each session's cost decays linearly and never below zero.
//! Summing every member on every charge made a group of n busy sessions cost O(n²) per round of requests, which
//! is exactly the shape of an abusive /24. Here each value is kept as a line `level - slope · t`, the lines are
//! summed into one, and a value that reaches zero leaves the sum at the moment it does, found through a heap of
//! zero times.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Handle of one value in a [`FallingSum`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

/// One value's line, counted in the sum until `zero_at` (when the line crosses zero).
#[derive(Debug, Clone, Copy)]
struct Line {
    level: f64,
    slope: f64,
    zero_at: f64,
}

#[derive(Debug, Default)]
struct Entry {
    /// `None` while the value is zero (or the slot is free).
    line: Option<Line>,
    /// Bumped whenever the line changes, so heap entries for an old line are recognised and skipped.
    gen: u32,
}

/// A value reaching zero at `at` (seconds), valid while its slot's generation is still `gen`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Zero {
    at: f64,
    slot: usize,
    gen: u32,
}

impl Eq for Zero {}

impl PartialOrd for Zero {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Zero {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at
            .total_cmp(&other.at)
            .then(self.slot.cmp(&other.slot))
            .then(self.gen.cmp(&other.gen))
    }
}

/// Heap entries past this many per slot (plus a constant) are compacted away: every change pushes a new zero
/// time and leaves the old one behind. Per slot rather than per counted line, so a compaction (a pass over
/// the slots) comes at most once per as many changes as there are slots: one busy member among many idle
/// ones does not pay a pass over all of them every few charges.
const STALE_FACTOR: usize = 2;
const STALE_SLACK: usize = 32;

#[derive(Debug, Default)]
pub struct FallingSum {
    entries: Vec<Entry>,
    free: Vec<usize>,
    /// Sums of the counted lines' levels and slopes.
    level: f64,
    slope: f64,
    counted: usize,
    zeros: BinaryHeap<Reverse<Zero>>,
}

impl FallingSum {
    /// A new value, zero until [`FallingSum::set`].
    pub fn insert(&mut self) -> Slot {
        match self.free.pop() {
            Some(i) => {
                let e = &mut self.entries[i];
                e.gen = e.gen.wrapping_add(1);
                Slot(i)
            }
            None => {
                self.entries.push(Entry::default());
                Slot(self.entries.len() - 1)
            }
        }
    }

    /// Drops a value from the sum for good; its slot may be handed out again.
    pub fn remove(&mut self, slot: Slot) {
        self.uncount(slot.0);
        let e = &mut self.entries[slot.0];
        e.gen = e.gen.wrapping_add(1);
        self.free.push(slot.0);
    }

    /// The value is `value` at time `t` (seconds) and falls by `slope` per second from then on, down to zero.
    /// A non-positive slope holds it at `value`.
    pub fn set(&mut self, slot: Slot, value: f64, t: f64, slope: f64) {
        self.uncount(slot.0);
        let e = &mut self.entries[slot.0];
        e.gen = e.gen.wrapping_add(1);
        if !(value > 0.0 && value.is_finite()) {
            return;
        }
        let slope = if slope > 0.0 && slope.is_finite() { slope } else { 0.0 };
        let zero_at = if slope > 0.0 { t + value / slope } else { f64::INFINITY };
        let line = Line {
            level: value + slope * t,
            slope,
            zero_at,
        };
        e.line = Some(line);
        let gen = e.gen;
        self.level += line.level;
        self.slope += line.slope;
        self.counted += 1;
        if zero_at.is_finite() {
            self.zeros.push(Reverse(Zero {
                at: zero_at,
                slot: slot.0,
                gen,
            }));
            if self.zeros.len() > STALE_FACTOR * self.entries.len() + STALE_SLACK {
                self.compact();
            }
        }
    }

    /// The sum of every value as of `now` (seconds). Values that reached zero by then leave the sum.
    pub fn total(&mut self, now: f64) -> f64 {
        while let Some(Reverse(z)) = self.zeros.peek().copied() {
            if z.at > now {
                break;
            }
            self.zeros.pop();
            if self.entries[z.slot].gen == z.gen {
                self.uncount(z.slot);
            }
        }
        if self.counted == 0 {
            return 0.0;
        }
        (self.level - self.slope * now).max(0.0)
    }

    /// Values currently counted (above zero as of the last read or change).
    #[cfg(test)]
    fn counted(&self) -> usize {
        self.counted
    }

    fn uncount(&mut self, i: usize) {
        if let Some(line) = self.entries[i].line.take() {
            self.counted -= 1;
            if self.counted == 0 {
                // Nothing counts: start the running sums over exactly, shedding rounding error.
                self.level = 0.0;
                self.slope = 0.0;
            } else {
                self.level -= line.level;
                self.slope -= line.slope;
            }
        }
    }

    /// Rebuilds the heap from the counted lines alone, and the running sums from scratch.
    fn compact(&mut self) {
        self.zeros.clear();
        self.level = 0.0;
        self.slope = 0.0;
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(line) = e.line {
                self.level += line.level;
                self.slope += line.slope;
                if line.zero_at.is_finite() {
                    self.zeros.push(Reverse(Zero {
                        at: line.zero_at,
                        slot: i,
                        gen: e.gen,
                    }));
                }
            }
        }
    }

    /// Heap entries held, stale ones included.
    #[cfg(test)]
    fn heap_len(&self) -> usize {
        self.zeros.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sum the slow way: each value decayed and clamped on its own.
    fn by_hand(values: &[(f64, f64, f64)], now: f64) -> f64 {
        values
            .iter()
            .map(|&(v, t, slope)| (v - slope * (now - t)).max(0.0))
            .sum()
    }

    #[test]
    fn values_fall_at_their_own_rates_and_stop_at_zero() {
        let mut s = FallingSum::default();
        let (a, b) = (s.insert(), s.insert());
        s.set(a, 10.0, 0.0, 1.0);
        s.set(b, 30.0, 0.0, 2.0);
        assert_eq!(s.total(0.0), 40.0);
        assert_eq!(s.total(5.0), 25.0);
        // a reaches zero at 10 s; without leaving the sum it would pull the total below b's 10 at 10 s.
        assert_eq!(s.total(10.0), 10.0);
        assert_eq!(s.total(12.0), 6.0);
        assert_eq!(s.counted(), 1);
        assert_eq!(s.total(20.0), 0.0);
        assert_eq!(s.counted(), 0);
    }

    #[test]
    fn a_changed_value_replaces_its_old_line() {
        let mut s = FallingSum::default();
        let a = s.insert();
        s.set(a, 5.0, 0.0, 1.0);
        // Settled at 3 s to 2 and charged 8 more: 10 from 3 s on, now at half the rate.
        s.set(a, 10.0, 3.0, 0.5);
        assert_eq!(s.total(3.0), 10.0);
        // The old line's zero time (5 s) must not drop the new one.
        assert_eq!(s.total(7.0), 8.0);
        assert_eq!(s.total(23.0), 0.0);
        s.set(a, 4.0, 30.0, 0.0);
        assert_eq!(s.total(1e9), 4.0, "a value with no slope holds");
    }

    #[test]
    fn removed_values_leave_and_slots_are_reused() {
        let mut s = FallingSum::default();
        let a = s.insert();
        let b = s.insert();
        s.set(a, 10.0, 0.0, 1.0);
        s.set(b, 10.0, 0.0, 1.0);
        s.remove(a);
        assert_eq!(s.total(1.0), 9.0);
        let c = s.insert();
        assert_eq!(c, a, "the freed slot is handed out again");
        assert_eq!(s.total(1.0), 9.0, "a reused slot starts at zero");
        s.set(c, 1.0, 1.0, 1.0);
        assert_eq!(s.total(1.0), 10.0);
    }

    #[test]
    fn bad_values_count_as_zero() {
        let mut s = FallingSum::default();
        let a = s.insert();
        s.set(a, f64::NAN, 0.0, 1.0);
        assert_eq!(s.total(0.0), 0.0);
        s.set(a, 5.0, 0.0, f64::NAN);
        assert_eq!(
            s.total(100.0),
            5.0,
            "a bad slope holds the value rather than poisoning the sum"
        );
        s.set(a, f64::INFINITY, 0.0, 1.0);
        assert_eq!(s.total(0.0), 0.0);
    }

    #[test]
    fn many_changes_keep_the_heap_bounded_and_the_sum_exact() {
        let mut s = FallingSum::default();
        let slots: Vec<Slot> = (0..50).map(|_| s.insert()).collect();
        let mut values = vec![(0.0, 0.0, 0.0); slots.len()];
        let mut now = 0.0;
        for round in 0..2000usize {
            now += 0.01;
            let i = (round * 7) % slots.len();
            let (v, t, slope): (f64, f64, f64) = values[i];
            let settled = (v - slope * (now - t)).max(0.0);
            let slope = 1.0 + (i % 5) as f64;
            values[i] = (settled + 3.0, now, slope);
            s.set(slots[i], settled + 3.0, now, slope);
            assert!(s.heap_len() <= STALE_FACTOR * slots.len() + STALE_SLACK + 1);
            let want = by_hand(&values, now);
            assert!(
                (s.total(now) - want).abs() < 1e-9,
                "round {round}: {} vs {want}",
                s.total(now)
            );
        }
    }
}
