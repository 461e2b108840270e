//! Helpers for the crate's own unit tests only (compiled only for them).

/// A xorshift64 generator for randomized tests: the same inputs from the same seed on every run, so a
/// failure names a round that can be replayed. Returns a value below `n` per call.
pub fn xorshift(seed: u64) -> impl FnMut(usize) -> usize {
    let mut state = seed.max(1);
    move |n| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    }
}
