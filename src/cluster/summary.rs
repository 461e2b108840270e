//! Bucketed anti-entropy summaries: a fingerprint per bucket of digest ids instead of every id.
//!
//! A node holding many records sends one fingerprint per bucket (`Msg::Summary`); the peer compares
//! them with its own, computed with the sender's bucket count, and exchanges ids only for the buckets
//! that differ (`Msg::BucketDigest`). When both sides agree, an anti-entropy round costs a few
//! kilobytes however many records they hold.

/// Below this many live records a flat digest (every id) is smaller than a summary, so it is sent
/// instead.
pub const FLAT_LIMIT: usize = 1024;
/// Fewest buckets a summary uses: fewer would make one divergent record drag a large share of the ids
/// into the reply.
pub const MIN_BUCKETS: u32 = 64;
/// Most buckets a summary uses, and the most a peer's summary may claim (bounds the work a peer can ask
/// of us).
pub const MAX_BUCKETS: u32 = 65_536;
/// Aimed-for records per bucket: a differing bucket costs about this many ids in the reply.
const PER_BUCKET: usize = 32;

/// The bucket count for a node holding `records` live records.
pub fn bucket_count(records: usize) -> u32 {
    let wanted = (records / PER_BUCKET).max(1).next_power_of_two();
    u32::try_from(wanted)
        .unwrap_or(MAX_BUCKETS)
        .clamp(MIN_BUCKETS, MAX_BUCKETS)
}

/// Whether a bucket count from a peer is one we agree to work with: a power of two, so `id % n` buckets
/// alike on both sides whatever the count, and no more than we would ever send ourselves.
pub fn valid_count(n: u32) -> bool {
    n.is_power_of_two() && n <= MAX_BUCKETS
}

pub fn bucket_of(id: u64, buckets: u32) -> u32 {
    // `buckets` is at most 2^16, so the remainder fits.
    (id % u64::from(buckets)) as u32
}

/// A 64-bit finaliser (SplitMix64's): digest ids are FNV hashes whose low bits also pick the bucket, so
/// the ids within one bucket share those bits; summing them unmixed would let related differences
/// cancel far more easily than sums of well-spread values do.
fn mix(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Per bucket, the wrapping sum of the mixed ids in it. A sum is order-independent, so equal sets give
/// equal fingerprints however each node came to hold them; unlike XOR, an id counted twice does not
/// vanish.
pub fn fingerprints(ids: impl IntoIterator<Item = u64>, buckets: u32) -> Vec<u64> {
    let mut out = vec![0u64; buckets as usize];
    for id in ids {
        let b = &mut out[bucket_of(id, buckets) as usize];
        *b = b.wrapping_add(mix(id));
    }
    out
}
