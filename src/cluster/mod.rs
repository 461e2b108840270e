//! Cluster links, embedded default: ban statements signed by their origin
//! node, pushed to every peer over authenticated, encrypted links, and reconciled by anti-entropy.
//!
//! Choices:
//! - **Keys** ([`keys`]): one Ed25519 key per node (`ed25519-dalek` 2), stored as the base64 of the
//!   32-byte seed (file mode 0600); a node id is the base64 of its public key. The link layer's X25519
//!   key is derived from the same key (Ed25519 → Montgomery form, as libsodium does), so the config
//!   lists one public key per peer and each node has one secret file.
//! - **Records** ([`record`]): `{op: ban|unban, prefix, reason, created_ms, duration_ms, version, origin
//!   key}` plus the origin's Ed25519 signature over a fixed canonical byte encoding (domain-separated).
//!   Relays forward the signed statement unchanged; a statement whose origin is not a listed key (or
//!   this node), whose signature does not verify, or whose prefix is not normalised is dropped and
//!   counted, whichever link brought it.
//! - **Versions**: newest `(version, origin key)` per prefix wins, everywhere the same. Versions are µs
//!   hybrid-clock values, and a node making a statement about a prefix always picks a version above
//!   every version it has seen for it (a Lamport step), so an unban made after a ban was received beats
//!   that ban even if the unbanning node's clock is behind. A statement equal to the held one changes
//!   nothing (a duplicate); an older one is stale (a replay): both are dropped, stale ones counted. An
//!   unban is kept as a tombstone for as long as the lifted ban had left, so a replay of the ban cannot
//!   revive it.
//! - **Expiry and clock skew**: the signed statement carries `created` (origin's clock) and a
//!   `duration`; each hop carries, unsigned, how long the record has left by the *sender's* clock, and
//!   the receiver sets its own deadline to its receive time plus that remainder, capped by the signed
//!   duration. Only differences of one clock at a time are ever used, so a skew of seconds (or hours)
//!   between nodes moves expiry by the transit time only; comparing an absolute `until` against each
//!   node's own clock would expire bans early or late by the whole skew. A relay cannot lengthen a ban
//!   beyond its signed duration, and re-receiving a held statement never extends it.
//! - **Links** ([`link`]): TCP; a cleartext hello names both keys, then a Noise
//!   `Noise_KK_25519_ChaChaPoly_BLAKE2s` handshake (via `snow`) authenticates both sides by their listed
//!   keys and encrypts everything after. An unlisted dialer is dropped at the hello; one claiming a
//!   listed key fails the handshake. Frames are length-prefixed. To have one link per pair, the node
//!   with the smaller key dials; the other only accepts. Messages: `Record` (push), `Digest` (ids of
//!   every held statement), `Summary` (bucket fingerprints), `BucketDigest` (ids of some buckets),
//!   `Want` (ids), `Records` (answers). (The brief's `Hello{node}` is the cleartext hello.) A node
//!   drops the link on a message it does not know, so every node of a cluster must run a version that
//!   knows all of these: mixing versions across this change (pre-1.0) is not supported.
//! - **Propagation**: a new statement (made here, or received and newer than what was held) is sent to
//!   every link at once (flooding; idempotence stops the echo). Each link starts with an anti-entropy
//!   exchange and repeats it every `anti_entropy`, so a node that was down or partitioned converges. A
//!   node holding fewer than [`summary::FLAT_LIMIT`] live statements sends a `Digest` of every id; the
//!   receiver sends what the digest lacks and asks (`Want`) for what it lacks. A node holding more sends
//!   a `Summary` instead ([`summary`]): a power-of-two number of buckets chosen from its record count
//!   (about 32 records each, 64..=65,536 buckets), each the order-independent fingerprint of the ids
//!   with that remainder. The receiver fingerprints its own ids with the sender's bucket count and, for
//!   the buckets that differ, replies with a `BucketDigest` of its ids there, answered like a `Digest`
//!   confined to those buckets; if none differs it replies nothing. Agreeing nodes with 100,000
//!   statements thus exchange ~80 kB per round instead of ~2 MB each way.
//! - **Redis** ([`redis`], `cluster.backend = "redis"`): the same signed statements, checked by the same
//!   `ingest`, travel through a Redis deployment instead of links (one key per prefix, a Lua
//!   compare-and-set by rank, pub/sub for pushes, SCAN for resync); see that module's doc.
//! - **Local changes** come from the ban table's change feed ([`BanTable::subscribe`]): a task signs each
//!   local ban or lift with the version the table gave it and pushes it at once, so propagation costs a
//!   link round trip, not a polling interval. The table raises its clock to every version it hears of,
//!   so a local statement's own version already outranks whatever this node held for the prefix (the
//!   Lamport step); a feed entry that something newer overtook before the task saw it is skipped. A
//!   receiver that lags (the feed buffers a few thousand changes) catches up by comparing the whole table
//!   with what it last published (`publish_table`), as does [`Cluster::sync_now`]. There is no periodic
//!   poll: the feed either delivers every change or says it lagged, so a safety-net poll would only cost
//!   a full table scan for nothing.
//! - **Remote statements** reach the table through [`BanTable::apply_remote`]: journaled with the origin
//!   node's key as their origin (so `GET /v1/bans` names it), their signed version, and an attachment
//!   `<duration_ms>:<base64 signature>` (the signed duration is not derivable from this node's deadline).
//!   They never appear on the feed, so nothing echoes. Records arriving together (a `Records` message)
//!   are judged in order and journaled with one fsync. A winner is held (and counted, and relayed) only
//!   once the table has journaled it: if the journal fails, the record is not held, so the next
//!   anti-entropy round (or Redis resync) finds it missing and brings it again.
//! - **Bounds on peers**: a listed key is trusted to sign, not to exhaust this node. Bans wider than the
//!   table's minimum prefix, statements longer than `max_record_duration`, past `max_records_per_origin`
//!   held for their origin, or versioned more than [`bans::MAX_VERSION_AHEAD`] ahead of this clock are
//!   refused and counted, whether or not they would have won.
//! - **Restart**: the signed-record store is rebuilt from [`BanTable::statements`]: remote statements
//!   become held records again if their origin is still listed (others stay in the table but are not
//!   relayed), without checking their signatures again (the journal is this node's own; peers verify
//!   whatever it relays), and local ones are re-signed with the versions they were
//!   recorded with (Ed25519 signatures are deterministic, so they are the records peers already hold). A
//!   restarted node needs no re-learning, and a lift made elsewhere while it was down is newer and wins
//!   at the first anti-entropy exchange.
//! - Versions tie only if two nodes pick the same microsecond for one prefix; the table then breaks the
//!   tie on the origin string (`local` for this node) and the cluster on the key, which can disagree on
//!   that node until the prefix's next statement.
//! - **Cost** ([`cost`]): besides ban records, links carry each node's cost report (its costliest client
//!   groups, every `[cluster.cost].interval`), which peers add to those groups' cost.

pub mod acme_seal;
pub mod cost;
pub mod keys;
pub mod link;
pub mod record;
pub mod redis;
pub mod summary;

use crate::state::bans::{
    self, normalize, now_micros, unix_ms, BanChange, BanError, BanTable, Statement, LOCAL_ORIGIN,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ipnetwork::IpNetwork;
use keys::{NodeKey, PublicKey};
use link::{Carried, LinkReader, LinkWriter, Msg};
use record::{Op, SignedRecord};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Records per `Records` message.
const BATCH: usize = 1000;
/// Messages queued per link before pushes are dropped (anti-entropy repairs what is dropped).
const QUEUE: usize = 4096;
/// Signed deadlines (origin clock) further in our past than this are refused as stale whatever a hop
/// says about the remainder: bounds how long a statement can circulate under gross clock errors.
const MAX_SKEW: Duration = Duration::from_secs(600);

/// Default `redis_prefix`: the start of every key and channel the cluster uses in Redis.
pub const DEFAULT_REDIS_PREFIX: &str = "gatehouse:";
/// Default `anti_entropy`: how often peers compare what they hold.
pub const DEFAULT_ANTI_ENTROPY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_key_path: PathBuf,
    /// Links backend only ([`UNSPECIFIED_ADDR`] under Redis, which neither listens nor dials).
    pub listen: SocketAddr,
    /// The trusted origins; the address is used by the links backend only.
    pub peers: Vec<(SocketAddr, PublicKey)>,
    pub anti_entropy: Duration,
    pub cost: cost::CostSharing,
    pub backend: Backend,
    /// Bounds on what a listed peer's statements may say.
    pub limits: RecordLimits,
}

/// The longest ban (or tombstone) a peer's statement may carry.
pub const DEFAULT_MAX_RECORD_DURATION: Duration = Duration::from_secs(365 * 86_400);
/// Statements held per remote origin: twice the ban table's default cap, so a peer's full table fits.
pub const DEFAULT_MAX_RECORDS_PER_ORIGIN: usize = 200_000;

/// What a listed peer may say (`[cluster] max_record_duration`, `max_records_per_origin`). Its key
/// is trusted to sign, not to exhaust this node: a bug or a stolen key must not ban the Internet,
/// forever, a million times over. (The widest prefix is the ban table's own limit.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    pub max_duration: Duration,
    pub max_per_origin: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        RecordLimits {
            max_duration: DEFAULT_MAX_RECORD_DURATION,
            max_per_origin: DEFAULT_MAX_RECORDS_PER_ORIGIN,
        }
    }
}

/// How statements travel between gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Embedded, authenticated links between the listed nodes.
    Links,
    /// A shared Redis deployment.
    Redis(redis::RedisConfig),
}

/// Stands for "no address" where the Redis backend needs none (`0.0.0.0:0`).
pub const UNSPECIFIED_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error("cluster: cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cluster: peer {0} is this node's own key")]
    SelfPeer(PublicKey),
    #[error(transparent)]
    Redis(#[from] redis::RedisConfigError),
}

/// Counters for the metrics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Local statements signed and published.
    pub published: u64,
    /// Statements received that changed this node's view.
    pub applied: u64,
    /// Statements received again (no change).
    pub duplicate: u64,
    /// Statements older than the one held (replays), or already expired.
    pub stale: u64,
    pub rejected_unlisted_origin: u64,
    pub rejected_bad_signature: u64,
    pub rejected_malformed: u64,
    /// Winning bans the table refused (allowlisted here).
    pub refused_by_table: u64,
    /// Bans wider than the table's minimum prefix.
    pub rejected_too_wide: u64,
    /// Statements lasting longer than `max_record_duration`.
    pub rejected_too_long: u64,
    /// Statements from an origin already holding `max_records_per_origin`.
    pub rejected_origin_full: u64,
    /// Statements versioned further ahead of this node's clock than `bans::MAX_VERSION_AHEAD`.
    pub rejected_future_version: u64,
    /// Winning statements the journal could not take: not held, not relayed, asked for again at the
    /// next anti-entropy round.
    pub not_journaled: u64,
    /// Cost figures ignored: beyond a report's group cap, repeated, or past its cost cap.
    pub cost_figures_ignored: u64,
    /// Connections refused: unlisted node, failed handshake.
    pub refused_links: u64,
    /// Pushes dropped because a link's queue was full.
    pub dropped_sends: u64,
    /// Cost reports sent (one per link per report).
    pub cost_reports_sent: u64,
    /// Cost reports taken from peers.
    pub cost_reports_received: u64,
    /// Cost reports refused (through Redis: unlisted origin, bad signature, malformed).
    pub cost_reports_rejected: u64,
    /// Anti-entropy messages written to links, by kind: flat digests (every id), summaries (bucket
    /// fingerprints) and bucket digests (the ids of the buckets a summary found different).
    pub digests_sent: u64,
    pub summaries_sent: u64,
    pub bucket_digests_sent: u64,
    /// Encoded bytes of those three kinds of message (what anti-entropy costs when nothing differs).
    pub digest_bytes_sent: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    applied: AtomicU64,
    duplicate: AtomicU64,
    stale: AtomicU64,
    rejected_unlisted_origin: AtomicU64,
    rejected_bad_signature: AtomicU64,
    rejected_malformed: AtomicU64,
    refused_by_table: AtomicU64,
    rejected_too_wide: AtomicU64,
    rejected_too_long: AtomicU64,
    rejected_origin_full: AtomicU64,
    rejected_future_version: AtomicU64,
    not_journaled: AtomicU64,
    refused_links: AtomicU64,
    dropped_sends: AtomicU64,
    cost_reports_sent: AtomicU64,
    cost_reports_received: AtomicU64,
    cost_reports_rejected: AtomicU64,
    digests_sent: AtomicU64,
    summaries_sent: AtomicU64,
    bucket_digests_sent: AtomicU64,
    digest_bytes_sent: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One peer as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub addr: SocketAddr,
    pub key: PublicKey,
    pub up: bool,
    /// When the link last came up or went down.
    pub since: Option<SystemTime>,
    /// When this peer's last digest or summary arrived (the last anti-entropy exchange).
    pub last_sync: Option<SystemTime>,
}

/// Reads a cluster's status; holding it does not keep the links running.
#[derive(Clone)]
pub struct StatusHandle {
    inner: Arc<Inner>,
}

impl StatusHandle {
    pub fn status(&self) -> ClusterStatus {
        let i = &self.inner;
        let mut peers: Vec<PeerStatus> = lock(&i.status).values().cloned().collect();
        peers.sort_by_key(|p| p.addr);
        ClusterStatus {
            node: i.me,
            listen: i.listen,
            peers,
            records: lock(&i.state).records.len(),
            stats: i.stats(),
            redis: i.redis.as_ref().map(redis::RedisLink::status),
            cost_sharing: i.sharing.get().is_some(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub node: PublicKey,
    pub listen: SocketAddr,
    pub peers: Vec<PeerStatus>,
    /// Statements held (bans and unban tombstones).
    pub records: usize,
    pub stats: ClusterStats,
    /// The Redis connection, under the Redis backend.
    pub redis: Option<redis::RedisStatus>,
    /// Whether cluster-wide cost sharing runs.
    pub cost_sharing: bool,
}

/// A statement and this node's deadline for it.
#[derive(Debug, Clone)]
struct Held {
    rec: SignedRecord,
    until: SystemTime,
}

#[derive(Default)]
struct State {
    records: HashMap<IpNetwork, Held>,
    /// Per prefix, the table version of the last local statement published (or found overtaken).
    seen: HashMap<IpNetwork, u64>,
    /// Statements held per origin, for `max_records_per_origin`.
    per_origin: HashMap<[u8; 32], usize>,
}

impl State {
    fn hold(&mut self, h: Held) {
        *self.per_origin.entry(h.rec.origin).or_default() += 1;
        if let Some(old) = self.records.insert(h.rec.prefix, h) {
            self.forget_origin(old.rec.origin);
        }
    }

    fn forget_origin(&mut self, origin: [u8; 32]) {
        if let Some(n) = self.per_origin.get_mut(&origin) {
            *n -= 1;
            if *n == 0 {
                self.per_origin.remove(&origin);
            }
        }
    }

    fn expire(&mut self, now: SystemTime) {
        let per_origin = &mut self.per_origin;
        self.records.retain(|_, h| {
            let live = h.until > now;
            if !live {
                if let Some(n) = per_origin.get_mut(&h.rec.origin) {
                    *n = n.saturating_sub(1);
                }
            }
            live
        });
        per_origin.retain(|_, n| *n > 0);
    }

    /// Whether holding `rec` would take its origin past `max` statements.
    fn origin_full(&self, rec: &SignedRecord, max: usize) -> bool {
        let replaces_own = self
            .records
            .get(&rec.prefix)
            .is_some_and(|h| h.rec.origin == rec.origin);
        !replaces_own && self.per_origin.get(&rec.origin).copied().unwrap_or(0) >= max
    }
}

/// Checks many signatures on every core: at ~50-80 µs each, the 100,000 records of a full anti-entropy
/// exchange or of a restart are seconds of work on one core.
fn verify_all(recs: &[&SignedRecord]) -> Vec<bool> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || recs.len() < 256 {
        return recs.iter().map(|r| r.verify()).collect();
    }
    let per = recs.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = recs
            .chunks(per)
            .map(|c| s.spawn(move || c.iter().map(|r| r.verify()).collect::<Vec<bool>>()))
            .collect();
        parts.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

/// A local statement about to be signed.
struct Unsigned {
    op: Op,
    prefix: IpNetwork,
    reason: String,
    created_ms: u64,
    duration_ms: u64,
    version: u64,
    until: SystemTime,
}

impl Unsigned {
    fn sign(self, key: &NodeKey) -> SignedRecord {
        SignedRecord::sign(
            key,
            self.op,
            self.prefix,
            self.reason,
            self.created_ms,
            self.duration_ms,
            self.version,
        )
    }
}

/// Signs many statements on every core: a start with 100,000 local bans is seconds of signing on one.
fn sign_all(key: &NodeKey, items: Vec<Unsigned>) -> Vec<Held> {
    let sign = |u: Unsigned| {
        let until = u.until;
        Held {
            rec: u.sign(key),
            until,
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || items.len() < 256 {
        return items.into_iter().map(sign).collect();
    }
    let per = items.len().div_ceil(threads);
    let mut chunks: Vec<Vec<Unsigned>> = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        chunks.push(items.by_ref().take(per).collect());
    }
    std::thread::scope(|s| {
        let parts: Vec<_> = chunks
            .into_iter()
            .map(|c| s.spawn(move || c.into_iter().map(sign).collect::<Vec<Held>>()))
            .collect();
        parts.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

/// What the table keeps beside a remote statement so the signed record can be rebuilt after a restart.
fn attachment(rec: &SignedRecord) -> String {
    format!("{}:{}", rec.duration_ms, B64.encode(rec.sig))
}

/// The signed record a remote statement from the table was made from, if its attachment is intact.
fn from_statement(s: &Statement) -> Option<SignedRecord> {
    let (duration, sig) = s.attachment.as_deref()?.split_once(':')?;
    Some(SignedRecord {
        op: match s.op {
            bans::Op::Ban => Op::Ban,
            bans::Op::Unban => Op::Unban,
            bans::Op::Offence => return None,
        },
        prefix: s.prefix,
        reason: s.reason.clone(),
        created_ms: unix_ms(s.created),
        duration_ms: duration.parse().ok()?,
        version: s.version,
        origin: PublicKey::parse(&s.origin).ok()?.0,
        sig: B64.decode(sig).ok()?.try_into().ok()?,
    })
}

struct LinkHandle {
    id: u64,
    tx: mpsc::Sender<Msg>,
}

struct Inner {
    key: NodeKey,
    me: PublicKey,
    listen: SocketAddr,
    peers: Vec<(SocketAddr, PublicKey)>,
    bans: Arc<BanTable>,
    state: Mutex<State>,
    links: Mutex<HashMap<PublicKey, LinkHandle>>,
    status: Mutex<HashMap<PublicKey, PeerStatus>>,
    counters: Counters,
    next_link: AtomicU64,
    stop: CancellationToken,
    anti_entropy: Duration,
    cost_settings: cost::CostSharing,
    limits: RecordLimits,
    /// Set once cost sharing starts (it needs the gateway's ledger, which the cluster does not own).
    sharing: std::sync::OnceLock<cost::Sharing>,
    /// Under the Redis backend: where `broadcast` hands statements for Redis.
    redis: Option<redis::RedisLink>,
    /// The gateway's refusal log gate, once attached (see [`Cluster::gate_refusal_logs`]).
    refusal_log: std::sync::OnceLock<Arc<crate::telemetry::log_gate::RefusalLog>>,
    /// Where ACME messages from peers go, once the ACME client listens (see [`Cluster::acme_links`]).
    acme: std::sync::OnceLock<mpsc::Sender<(String, crate::wire::acme::AcmeShare)>>,
}

/// The log gate's address for what arrives without one of its own (messages read from Redis, records
/// relayed by listed peers): one line per reason per interval for all of them.
const NO_ADDR: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// A running cluster member. Dropping it stops its tasks.
pub struct Cluster {
    inner: Arc<Inner>,
    /// A copy of the link listener, to hand over to a successor process (a live upgrade).
    socket: Option<std::os::fd::OwnedFd>,
}

/// The ACME client's way to the other gateways over the links.
#[derive(Clone)]
pub struct AcmeLinks {
    inner: Arc<Inner>,
}

impl AcmeLinks {
    /// This node's key.
    pub fn me(&self) -> PublicKey {
        self.inner.me
    }

    /// Whether this node orders the cluster's certificates: the lowest key of the listed nodes, a choice
    /// every node makes alike without asking anyone.
    pub fn orders(&self) -> bool {
        self.inner.peers.iter().all(|(_, k)| self.inner.me < *k)
    }

    /// Sends `m` to every peer linked now; returns how many took it.
    pub fn send(&self, m: crate::wire::acme::AcmeShare) -> usize {
        if let Some(r) = &self.inner.redis {
            return usize::from(r.offer_acme(m));
        }
        let msg = Msg::Acme(m);
        lock(&self.inner.links)
            .values()
            .filter(|l| l.tx.try_send(msg.clone()).is_ok())
            .count()
    }

    /// Sends `m` to one peer, if linked.
    pub fn send_to(&self, peer: PublicKey, m: crate::wire::acme::AcmeShare) -> bool {
        if let Some(r) = &self.inner.redis {
            // Redis has no one-to-one channel: everyone gets it, and the others ignore what is not theirs.
            return r.offer_acme(m);
        }
        lock(&self.inner.links)
            .get(&peer)
            .is_some_and(|l| l.tx.try_send(Msg::Acme(m)).is_ok())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The refusal gate's reason for a rejected statement.
fn verdict_reason(v: Verdict) -> &'static str {
    match v {
        Verdict::UnlistedOrigin => "record_unlisted_origin",
        Verdict::BadSignature => "record_bad_signature",
        Verdict::Malformed => "record_malformed",
        Verdict::TooWide => "record_too_wide",
        Verdict::TooLong => "record_too_long",
        Verdict::OriginFull => "record_origin_full",
        Verdict::FutureVersion => "record_future_version",
        _ => "record_rejected",
    }
}

/// Why an arriving statement was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Applied,
    Duplicate,
    Stale,
    UnlistedOrigin,
    BadSignature,
    Malformed,
    /// A ban wider than the minimum prefix.
    TooWide,
    /// Longer than `max_record_duration`.
    TooLong,
    /// Its origin holds `max_records_per_origin` statements already.
    OriginFull,
    /// Versioned too far ahead of this node's clock.
    FutureVersion,
    /// It won, but the journal failed: not held, so the next anti-entropy round brings it again.
    NotJournaled,
}

impl Cluster {
    /// Loads the node key, binds the link listener and starts the links, the anti-entropy timer and the
    /// ban-table watcher on the current runtime.
    pub async fn start(config: ClusterConfig, bans: Arc<BanTable>) -> Result<Cluster, ClusterError> {
        let key = NodeKey::load(&config.node_key_path)?;
        Self::start_with_key(config, key, bans).await
    }

    pub async fn start_with_key(
        config: ClusterConfig,
        key: NodeKey,
        bans: Arc<BanTable>,
    ) -> Result<Cluster, ClusterError> {
        let me = key.public();
        if let Some((_, k)) = config.peers.iter().find(|(_, k)| *k == me) {
            return Err(ClusterError::SelfPeer(*k));
        }
        let (redis, redis_task) = match &config.backend {
            Backend::Links => (None, None),
            Backend::Redis(r) => {
                let (link, task) = redis::RedisLink::new(r, QUEUE, config.anti_entropy)?;
                (Some(link), Some(task))
            }
        };
        let bind_err = |source| ClusterError::Bind {
            addr: config.listen,
            source,
        };
        let listener = match redis {
            Some(_) => None,
            // Handed over by the previous process of a live upgrade, or by systemd.
            None => match crate::sys::activation::take(config.listen) {
                Some(l) => {
                    l.set_nonblocking(true).map_err(bind_err)?;
                    Some(TcpListener::from_std(l).map_err(bind_err)?)
                }
                None => Some(TcpListener::bind(config.listen).await.map_err(bind_err)?),
            },
        };
        let socket = listener.as_ref().and_then(|l| {
            use std::os::fd::AsFd;
            l.as_fd().try_clone_to_owned().ok()
        });
        let listen = listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or(config.listen);
        let status = config
            .peers
            .iter()
            .map(|&(addr, key)| {
                (
                    key,
                    PeerStatus {
                        addr,
                        key,
                        up: false,
                        since: None,
                        last_sync: None,
                    },
                )
            })
            .collect();
        let inner = Arc::new(Inner {
            key,
            me,
            listen,
            peers: config.peers.clone(),
            bans,
            state: Mutex::new(State::default()),
            links: Mutex::new(HashMap::new()),
            status: Mutex::new(status),
            counters: Counters::default(),
            next_link: AtomicU64::new(1),
            stop: CancellationToken::new(),
            anti_entropy: config.anti_entropy.max(Duration::from_millis(50)),
            cost_settings: config.cost.clone(),
            limits: config.limits,
            sharing: std::sync::OnceLock::new(),
            redis,
            refusal_log: std::sync::OnceLock::new(),
            acme: std::sync::OnceLock::new(),
        });
        // Subscribed before the table is read, so nothing made in between is missed (seen twice at
        // worst, which changes nothing).
        let feed = inner.bans.subscribe();
        // Rebuilds the signed-record store from the table (see the module doc, "Restart").
        inner.publish_table(true);
        if let Some(task) = redis_task {
            tracing::info!(node = %me, peers = inner.peers.len(), "cluster over redis starting");
            tokio::spawn(task.run(inner.clone()));
        }
        if let Some(listener) = listener {
            tracing::info!(node = %me, %listen, peers = inner.peers.len(), "cluster links starting");
            tokio::spawn(inner.clone().accept_loop(listener));
            for &(addr, peer) in &inner.peers {
                if me < peer {
                    tokio::spawn(inner.clone().dial_loop(addr, peer));
                }
            }
        }
        tokio::spawn(inner.clone().timers());
        tokio::spawn(inner.clone().follow_table(feed));
        Ok(Cluster { inner, socket })
    }

    pub fn node(&self) -> PublicKey {
        self.inner.me
    }

    /// The link listener, for a successor process; None under the Redis backend.
    pub fn socket(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.socket.as_ref().map(|s| s.as_fd())
    }

    /// The bound link address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    pub fn stats(&self) -> ClusterStats {
        self.inner.stats()
    }

    pub fn status(&self) -> ClusterStatus {
        self.status_handle().status()
    }

    /// A handle that reads the status without keeping the cluster alive (for the admin API).
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle {
            inner: self.inner.clone(),
        }
    }

    /// Starts cluster-wide cost sharing with `ledger` (once; later calls do nothing), unless the config
    /// turned it off. Peers' figures are taken only once this has been called.
    pub fn share_costs(&self, ledger: Arc<crate::state::cost::Ledger>) {
        let settings = self.inner.cost_settings.clone();
        if !settings.enabled {
            return;
        }
        if self.inner.sharing.set(cost::Sharing::new(ledger, settings)).is_ok() {
            tokio::spawn(self.inner.clone().report_costs());
        }
    }

    /// Logs refused links and rejected messages through the gateway's refusal gate (once per address and
    /// reason per `log.refusal_interval`), so a flood of them cannot flood the log. Later calls do nothing.
    pub fn gate_refusal_logs(&self, log: Arc<crate::telemetry::log_gate::RefusalLog>) {
        let _ = self.inner.refusal_log.set(log);
    }

    /// ACME over the links: the handle that sends to every peer, and the messages peers send with the
    /// sender's id, once (a second call gets None). Under the Redis backend they travel sealed through
    /// Redis when `redis_acme_key_file` is set, and not at all (None) otherwise.
    pub fn acme_links(&self) -> Option<(AcmeLinks, mpsc::Receiver<(String, crate::wire::acme::AcmeShare)>)> {
        if self.inner.redis.as_ref().is_some_and(|r| !r.shares_acme()) {
            return None;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        self.inner.acme.set(tx).ok()?;
        Some((
            AcmeLinks {
                inner: self.inner.clone(),
            },
            rx,
        ))
    }

    /// Compares the whole table with what was published and publishes the difference. The change feed
    /// normally leaves nothing to do; this is its catch-up path.
    pub fn sync_now(&self) {
        self.inner.publish_table(false);
    }

    /// Takes a statement as if a peer had sent it (for tests and for future ban sources); returns what
    /// became of it.
    pub fn ingest(&self, c: Carried) -> Verdict {
        self.inner.ingest(c, None)
    }

    /// Stops every task and closes every link.
    pub fn shutdown(self) {
        self.inner.stop.cancel();
    }
}

impl Inner {
    fn stats(&self) -> ClusterStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClusterStats {
            published: g(&c.published),
            applied: g(&c.applied),
            duplicate: g(&c.duplicate),
            stale: g(&c.stale),
            rejected_unlisted_origin: g(&c.rejected_unlisted_origin),
            rejected_bad_signature: g(&c.rejected_bad_signature),
            rejected_malformed: g(&c.rejected_malformed),
            refused_by_table: g(&c.refused_by_table),
            rejected_too_wide: g(&c.rejected_too_wide),
            rejected_too_long: g(&c.rejected_too_long),
            rejected_origin_full: g(&c.rejected_origin_full),
            rejected_future_version: g(&c.rejected_future_version),
            not_journaled: g(&c.not_journaled),
            cost_figures_ignored: self.sharing.get().map_or(0, |s| g(&s.ignored)),
            refused_links: g(&c.refused_links),
            dropped_sends: g(&c.dropped_sends),
            cost_reports_sent: g(&c.cost_reports_sent),
            cost_reports_received: g(&c.cost_reports_received),
            cost_reports_rejected: g(&c.cost_reports_rejected),
            digests_sent: g(&c.digests_sent),
            summaries_sent: g(&c.summaries_sent),
            bucket_digests_sent: g(&c.bucket_digests_sent),
            digest_bytes_sent: g(&c.digest_bytes_sent),
        }
    }

    fn listed(&self, k: &PublicKey) -> bool {
        self.peers.iter().any(|(_, p)| p == k)
    }

    fn carried(h: &Held, now: SystemTime) -> Carried {
        Carried {
            rec: h.rec.clone(),
            remaining_ms: ms(h.until.duration_since(now).unwrap_or_default()),
        }
    }

    /// Sends to every link but `except`, and to Redis under that backend. `except == Some(me)` marks
    /// statements that came from Redis (no link carries this node's own key): Redis already holds them, at
    /// that rank or newer, so they are not written back.
    fn broadcast(&self, msgs: &[Carried], except: Option<PublicKey>) {
        if msgs.is_empty() {
            return;
        }
        if let Some(r) = &self.redis {
            if except != Some(self.me) {
                for c in msgs {
                    if !r.offer(c) {
                        bump(&self.counters.dropped_sends);
                    }
                }
            }
        }
        let links = lock(&self.links);
        for (peer, l) in links.iter() {
            if Some(*peer) == except {
                continue;
            }
            // One message per batch, not per record: relaying a peer's 100,000-record sync one record at
            // a time would overflow the link's queue and leave the rest to the next anti-entropy round.
            if let [c] = msgs {
                if l.tx.try_send(Msg::Record(c.clone())).is_err() {
                    bump(&self.counters.dropped_sends);
                }
                continue;
            }
            for chunk in msgs.chunks(BATCH) {
                if l.tx.try_send(Msg::Records(chunk.to_vec())).is_err() {
                    self.counters
                        .dropped_sends
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }

    /// Checks an arriving statement and, if it wins, applies it to the ban table and relays it.
    fn ingest(&self, c: Carried, from: Option<PublicKey>) -> Verdict {
        self.ingest_inner(vec![c], from).pop().expect("one verdict per record")
    }

    /// [`Inner::ingest`] for records that arrived together: judged in order, the winners applied to the
    /// table with one journal sync and relayed together.
    fn ingest_batch(&self, batch: Vec<Carried>, from: Option<PublicKey>) {
        self.ingest_inner(batch, from);
    }

    fn ingest_inner(&self, batch: Vec<Carried>, from: Option<PublicKey>) -> Vec<Verdict> {
        let mut verdicts: Vec<Option<Verdict>> = vec![None; batch.len()];
        {
            // A byte-for-byte copy of a held record was verified when it first came (or signed here):
            // anti-entropy resends plenty of those, and a signature check costs far more than this.
            let st = lock(&self.state);
            for (v, c) in verdicts.iter_mut().zip(&batch) {
                if st.records.get(&c.rec.prefix).is_some_and(|h| h.rec == c.rec) {
                    *v = Some(Verdict::Duplicate);
                }
            }
        }
        for (v, c) in verdicts.iter_mut().zip(&batch) {
            let origin = c.rec.origin_key();
            if v.is_none() && origin != self.me && !self.listed(&origin) {
                *v = Some(Verdict::UnlistedOrigin);
            }
        }
        let unsure: Vec<usize> = (0..batch.len()).filter(|&i| verdicts[i].is_none()).collect();
        let checked = verify_all(&unsure.iter().map(|&i| &batch[i].rec).collect::<Vec<_>>());
        let now = SystemTime::now();
        let max_version = now_micros().saturating_add(bans::MAX_VERSION_AHEAD.as_micros() as u64);
        let table_limits = self.bans.limits();
        let max_duration = ms(self.limits.max_duration);
        for (i, good) in unsure.into_iter().zip(checked) {
            let rec = &batch[i].rec;
            verdicts[i] = if !good {
                Some(Verdict::BadSignature)
            } else if normalize(rec.prefix) != rec.prefix || rec.reason.len() > 1024 {
                Some(Verdict::Malformed)
            } else if rec.op == Op::Ban && table_limits.check_width(&rec.prefix).is_err() {
                Some(Verdict::TooWide)
            } else if rec.duration_ms > max_duration {
                Some(Verdict::TooLong)
            } else if rec.version > max_version {
                // Even a record that would lose or has expired: taking it would raise this node's
                // clock past what its own statements could outrank.
                Some(Verdict::FutureVersion)
            } else {
                None
            };
        }
        let mut st = lock(&self.state);
        // The winners, not held until the table has journaled them.
        let mut candidates: Vec<(usize, Held)> = Vec::new();
        let mut statements = Vec::new();
        // Ranks and per-origin additions of earlier winners of this batch, which `st` does not show yet.
        let mut batch_rank: HashMap<IpNetwork, (u64, [u8; 32])> = HashMap::new();
        let mut batch_added: HashMap<[u8; 32], usize> = HashMap::new();
        for (i, (v, c)) in verdicts.iter_mut().zip(batch).enumerate() {
            if v.is_some() {
                continue;
            }
            let rec = c.rec;
            let held_rank = st.records.get(&rec.prefix).map(|h| h.rec.rank());
            let best = held_rank.max(batch_rank.get(&rec.prefix).copied());
            if let Some(best) = best {
                if best >= rec.rank() {
                    *v = Some(if best == rec.rank() {
                        Verdict::Duplicate
                    } else {
                        Verdict::Stale
                    });
                    continue;
                }
            }
            let remaining = Duration::from_millis(c.remaining_ms.min(rec.duration_ms));
            let signed_end = UNIX_EPOCH + Duration::from_millis(rec.created_ms.saturating_add(rec.duration_ms));
            if remaining.is_zero() || signed_end + MAX_SKEW < now {
                *v = Some(Verdict::Stale);
                continue;
            }
            if rec.origin != self.me.0 {
                let added = batch_added.get(&rec.origin).copied().unwrap_or(0);
                if st.origin_full(&rec, self.limits.max_per_origin.saturating_sub(added)) {
                    *v = Some(Verdict::OriginFull);
                    continue;
                }
                *batch_added.entry(rec.origin).or_default() += 1;
            }
            batch_rank.insert(rec.prefix, rec.rank());
            let held = Held {
                until: now + remaining,
                rec,
            };
            let rec = &held.rec;
            statements.push(Statement {
                op: match rec.op {
                    Op::Ban => bans::Op::Ban,
                    Op::Unban => bans::Op::Unban,
                },
                prefix: rec.prefix,
                until: held.until,
                reason: rec.reason.clone(),
                origin: rec.origin_key().to_string(),
                created: UNIX_EPOCH + Duration::from_millis(rec.created_ms),
                version: rec.version,
                attachment: Some(attachment(rec)),
            });
            candidates.push((i, held));
        }
        let mut out = Vec::new();
        // Held and relayed whatever the table makes of them, once journaled: the table may refuse a
        // ban (allowlisted here) that other nodes enforce, or already hold a newer local statement the
        // feed is about to publish. If the journal fails, nothing is held: this node would otherwise
        // relay and count a ban it does not enforce, and anti-entropy (which compares held records)
        // would never bring it again.
        match self.bans.apply_remote_batch(statements) {
            Ok(results) => {
                for r in results {
                    if let Err(e) = r {
                        bump(&self.counters.refused_by_table);
                        if !matches!(e, BanError::Allowlisted { .. } | BanError::TooWide { .. }) {
                            tracing::error!(error = %e, "cluster: the ban table refused a statement");
                        }
                    }
                }
                for (i, held) in candidates {
                    tracing::debug!(prefix = %held.rec.prefix, op = ?held.rec.op, origin = %held.rec.origin_key(), "cluster: statement applied");
                    out.push(Self::carried(&held, now));
                    st.hold(held);
                    verdicts[i] = Some(Verdict::Applied);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = candidates.len(), "cluster: statements not journaled; not held, asked for again at the next anti-entropy round");
                for (i, _) in candidates {
                    verdicts[i] = Some(Verdict::NotJournaled);
                }
            }
        }
        drop(st);
        let verdicts: Vec<Verdict> = verdicts.into_iter().map(|v| v.expect("every record judged")).collect();
        for &v in &verdicts {
            let counter = match v {
                Verdict::Applied => &self.counters.applied,
                Verdict::Duplicate => &self.counters.duplicate,
                Verdict::Stale => &self.counters.stale,
                Verdict::UnlistedOrigin => &self.counters.rejected_unlisted_origin,
                Verdict::BadSignature => &self.counters.rejected_bad_signature,
                Verdict::Malformed => &self.counters.rejected_malformed,
                Verdict::TooWide => &self.counters.rejected_too_wide,
                Verdict::TooLong => &self.counters.rejected_too_long,
                Verdict::OriginFull => &self.counters.rejected_origin_full,
                Verdict::FutureVersion => &self.counters.rejected_future_version,
                Verdict::NotJournaled => &self.counters.not_journaled,
            };
            bump(counter);
            if matches!(
                v,
                Verdict::UnlistedOrigin
                    | Verdict::BadSignature
                    | Verdict::Malformed
                    | Verdict::TooWide
                    | Verdict::TooLong
                    | Verdict::OriginFull
                    | Verdict::FutureVersion
            ) && self.should_log(NO_ADDR, verdict_reason(v))
            {
                tracing::warn!(verdict = ?v, from = from.map(tracing::field::display), "cluster: ban record rejected");
            }
        }
        self.broadcast(&out, from);
        verdicts
    }

    /// Signs a claimed local statement and holds it; returns what to push.
    fn hold_local(&self, st: &mut State, u: Unsigned, now: SystemTime) -> Carried {
        let until = u.until;
        let held = Held {
            rec: u.sign(&self.key),
            until,
        };
        let c = Self::carried(&held, now);
        st.hold(held);
        c
    }

    /// Whether a local statement still needs signing (not published yet, not expired, not overtaken);
    /// marks it published.
    #[allow(clippy::too_many_arguments)]
    fn claim_local(
        &self,
        st: &mut State,
        op: Op,
        prefix: IpNetwork,
        reason: String,
        created: SystemTime,
        until: SystemTime,
        version: u64,
        now: SystemTime,
    ) -> Option<Unsigned> {
        if st.seen.get(&prefix) == Some(&version) {
            return None;
        }
        st.seen.insert(prefix, version);
        if until <= now
            || st
                .records
                .get(&prefix)
                .is_some_and(|h| h.rec.rank() >= (version, self.me.0))
        {
            return None;
        }
        // Whole milliseconds on both ends, as the journal keeps them, so a restart re-signs the very same
        // record.
        let created_ms = unix_ms(created);
        Some(Unsigned {
            op,
            prefix,
            reason,
            created_ms,
            duration_ms: unix_ms(until).saturating_sub(created_ms),
            version,
            until,
        })
    }

    /// Signs one change from the table's feed; None if something newer overtook it.
    fn sign_change(&self, change: BanChange) -> Option<Carried> {
        let now = SystemTime::now();
        let mut st = lock(&self.state);
        let claimed = match change {
            BanChange::Ban(b) => {
                self.claim_local(&mut st, Op::Ban, b.prefix, b.reason, b.created, b.until, b.version, now)
            }
            BanChange::Unban {
                prefix,
                lifted,
                version,
                created,
            } => self.claim_local(
                &mut st,
                Op::Unban,
                prefix,
                String::new(),
                created,
                lifted.until,
                version,
                now,
            ),
        };
        claimed.map(|u| self.hold_local(&mut st, u, now))
    }

    /// Compares the whole table with the signed-record store: local statements not yet published are
    /// signed and published; remote ones the store lacks (only at `startup`, from the journal) are held
    /// again if their origin is still listed.
    fn publish_table(&self, startup: bool) {
        let mut out = Vec::new();
        let restored;
        {
            let mut st = lock(&self.state);
            let now = SystemTime::now();
            let mut remote = Vec::new();
            let mut unsigned = Vec::new();
            for s in self.bans.statements() {
                let op = match s.op {
                    bans::Op::Ban => Op::Ban,
                    bans::Op::Unban => Op::Unban,
                    // Never among the table's statements; here so a new kind of line is a compile error.
                    bans::Op::Offence => continue,
                };
                if s.origin == LOCAL_ORIGIN {
                    unsigned
                        .extend(self.claim_local(&mut st, op, s.prefix, s.reason, s.created, s.until, s.version, now));
                    continue;
                }
                let Some(rec) = from_statement(&s) else {
                    continue;
                };
                if st.records.get(&s.prefix).is_some_and(|h| h.rec.rank() >= rec.rank()) {
                    continue;
                }
                let origin = rec.origin_key();
                if origin == self.me || self.listed(&origin) {
                    remote.push(Held { rec, until: s.until });
                }
            }
            // Not verified again: the journal is this node's own, written after the statement verified
            // on arrival, and whoever could forge a line there could as well forge a local ban. Peers
            // verify whatever this node relays in any case. (Checking 100,000 signatures here held
            // start-up back by seconds.)
            restored = remote.len();
            for h in remote {
                st.hold(h);
            }
            for held in sign_all(&self.key, unsigned) {
                out.push(Self::carried(&held, now));
                st.hold(held);
            }
            st.expire(now);
            let State { records, seen, .. } = &mut *st;
            seen.retain(|p, _| records.contains_key(p));
        }
        if startup {
            tracing::info!(
                published = out.len(),
                restored,
                "cluster: signed records rebuilt from the ban table"
            );
        }
        self.counters.published.fetch_add(out.len() as u64, Ordering::Relaxed);
        self.broadcast(&out, None);
    }

    /// Publishes local changes as the table makes them; catches up with a full comparison if it lagged.
    async fn follow_table(self: Arc<Self>, mut feed: broadcast::Receiver<BanChange>) {
        loop {
            let next = tokio::select! {
                _ = self.stop.cancelled() => return,
                n = feed.recv() => n,
            };
            match next {
                Ok(change) => {
                    // Whatever else is already waiting goes out in the same message: a burst of bans
                    // (a ban list loaded through the API) costs a few messages, not one per ban.
                    let mut out: Vec<Carried> = self.sign_change(change).into_iter().collect();
                    let mut lagged = false;
                    while out.len() < BATCH {
                        match feed.try_recv() {
                            Ok(change) => out.extend(self.sign_change(change)),
                            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                lagged = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.counters.published.fetch_add(out.len() as u64, Ordering::Relaxed);
                    self.broadcast(&out, None);
                    if lagged {
                        tracing::warn!("cluster: ban feed lagged; comparing the whole table");
                        self.publish_table(false);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "cluster: ban feed lagged; comparing the whole table");
                    self.publish_table(false);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn live_ids(&self) -> Vec<u64> {
        let now = SystemTime::now();
        lock(&self.state)
            .records
            .values()
            .filter(|h| h.until > now)
            .map(|h| h.rec.digest_id())
            .collect()
    }

    /// This node's side of an anti-entropy round: every id while it holds few records, bucket
    /// fingerprints once that is smaller.
    fn digest(&self) -> Msg {
        let ids = self.live_ids();
        if ids.len() < summary::FLAT_LIMIT {
            return Msg::Digest(ids);
        }
        let n = summary::bucket_count(ids.len());
        Msg::Summary {
            buckets: summary::fingerprints(ids, n),
        }
    }

    /// Answers a peer's summary: our ids in every bucket whose fingerprint differs from ours, or
    /// nothing if none does (or if the summary is malformed).
    fn answer_summary(&self, theirs: Vec<u64>) -> Vec<Msg> {
        let Some(n) = u32::try_from(theirs.len()).ok().filter(|&n| summary::valid_count(n)) else {
            tracing::warn!(
                buckets = theirs.len(),
                "cluster: summary with a bad bucket count ignored"
            );
            return Vec::new();
        };
        let ids = self.live_ids();
        let mine = summary::fingerprints(ids.iter().copied(), n);
        let which: Vec<u32> = (0..n).filter(|&b| mine[b as usize] != theirs[b as usize]).collect();
        if which.is_empty() {
            return Vec::new();
        }
        let differ: HashSet<u32> = which.iter().copied().collect();
        let ids = ids
            .into_iter()
            .filter(|&id| differ.contains(&summary::bucket_of(id, n)))
            .collect();
        vec![Msg::BucketDigest { buckets: n, which, ids }]
    }

    /// Answers a peer's bucket digest: a digest answer confined to the buckets it lists, since the
    /// ids of the other buckets were not sent and their absence says nothing.
    fn answer_bucket_digest(&self, buckets: u32, which: Vec<u32>, ids: Vec<u64>) -> Vec<Msg> {
        if !summary::valid_count(buckets) || which.iter().any(|&b| b >= buckets) {
            tracing::warn!(buckets, "cluster: bucket digest with bad buckets ignored");
            return Vec::new();
        }
        let which: HashSet<u32> = which.into_iter().collect();
        // Ids outside the listed buckets are the peer's error; wanting them is harmless but unasked.
        let ids = ids
            .into_iter()
            .filter(|&id| which.contains(&summary::bucket_of(id, buckets)))
            .collect();
        self.answer_digest(ids, Some((buckets, &which)))
    }

    /// Answers a peer's digest: what it lacks (as records) and what we lack (as a want), among the
    /// records of the given buckets only if `scope` is set.
    fn answer_digest(&self, theirs: Vec<u64>, scope: Option<(u32, &HashSet<u32>)>) -> Vec<Msg> {
        let theirs: HashSet<u64> = theirs.into_iter().collect();
        let now = SystemTime::now();
        let st = lock(&self.state);
        let mut mine = HashSet::with_capacity(st.records.len());
        let mut send = Vec::new();
        for h in st.records.values().filter(|h| h.until > now) {
            let id = h.rec.digest_id();
            if scope.is_some_and(|(n, which)| !which.contains(&summary::bucket_of(id, n))) {
                continue;
            }
            mine.insert(id);
            if !theirs.contains(&id) {
                send.push(Self::carried(h, now));
            }
        }
        drop(st);
        let want: Vec<u64> = theirs.difference(&mine).copied().collect();
        let mut msgs: Vec<Msg> = send.chunks(BATCH).map(|c| Msg::Records(c.to_vec())).collect();
        if !want.is_empty() {
            msgs.push(Msg::Want(want));
        }
        msgs
    }

    fn answer_want(&self, ids: Vec<u64>) -> Vec<Msg> {
        let ids: HashSet<u64> = ids.into_iter().collect();
        let now = SystemTime::now();
        let send: Vec<Carried> = lock(&self.state)
            .records
            .values()
            .filter(|h| h.until > now && ids.contains(&h.rec.digest_id()))
            .map(|h| Self::carried(h, now))
            .collect();
        send.chunks(BATCH).map(|c| Msg::Records(c.to_vec())).collect()
    }

    /// Notes a peer's anti-entropy round (its digest or summary) for the status.
    fn synced(&self, peer: PublicKey) {
        if let Some(s) = lock(&self.status).get_mut(&peer) {
            s.last_sync = Some(SystemTime::now());
        }
    }

    /// Whether a refusal from `ip` for `reason` is logged now: through the gateway's gate once attached,
    /// always before that (a cluster started on its own, as in tests).
    fn should_log(&self, ip: IpAddr, reason: &'static str) -> bool {
        self.refusal_log.get().is_none_or(|g| g.should_log(ip, reason))
    }

    fn set_up(&self, peer: PublicKey, up: bool) {
        if let Some(s) = lock(&self.status).get_mut(&peer) {
            s.up = up;
            s.since = Some(SystemTime::now());
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.stop.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((stream, addr)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                match link::accept(stream, &me.key, |k| me.listed(k)).await {
                    Ok((peer, r, w)) => me.run_link(peer, r, w).await,
                    Err(e) => {
                        if e.is_auth_failure() {
                            bump(&me.counters.refused_links);
                        }
                        if me.should_log(addr.ip(), e.reason()) {
                            tracing::warn!(%addr, error = %e, "cluster: link refused");
                        }
                    }
                }
            });
        }
    }

    async fn dial_loop(self: Arc<Self>, addr: SocketAddr, peer: PublicKey) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            match link::connect(addr, &self.key, peer).await {
                Ok((r, w)) => {
                    backoff = Duration::from_millis(100);
                    self.clone().run_link(peer, r, w).await;
                }
                Err(e) => {
                    if e.is_auth_failure() {
                        bump(&self.counters.refused_links);
                    }
                    tracing::debug!(%addr, %peer, error = %e, "cluster: dial failed");
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            // Capped at half an anti-entropy interval, so a peer that restarts is linked again (and
            // synced by the digest exchange every link starts with) within the two intervals a
            // restarted node is promised to converge in.
            backoff = (backoff * 2)
                .min(Duration::from_secs(5))
                .min((self.anti_entropy / 2).max(Duration::from_millis(100)));
        }
    }

    /// Serves one authenticated link until it fails or the cluster stops.
    async fn run_link(self: Arc<Self>, peer: PublicKey, mut r: LinkReader, mut w: LinkWriter) {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        let _ = tx.try_send(self.digest());
        lock(&self.links).insert(peer, LinkHandle { id, tx: tx.clone() });
        self.set_up(peer, true);
        tracing::info!(%peer, "cluster: link up");
        let writer = async {
            while let Some(m) = rx.recv().await {
                let kind = match m {
                    Msg::Digest(_) => Some(&self.counters.digests_sent),
                    Msg::Summary { .. } => Some(&self.counters.summaries_sent),
                    Msg::BucketDigest { .. } => Some(&self.counters.bucket_digests_sent),
                    _ => None,
                };
                match w.send(&m).await {
                    Ok(n) => {
                        if let Some(c) = kind {
                            bump(c);
                            self.counters.digest_bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    Err(e) => return e,
                }
            }
            link::LinkError::Io(std::io::ErrorKind::BrokenPipe.into())
        };
        let reader = async {
            loop {
                let m = match r.recv().await {
                    Ok(m) => m,
                    Err(e) => return e,
                };
                let replies = match m {
                    Msg::Record(c) => {
                        self.ingest(c, Some(peer));
                        Vec::new()
                    }
                    Msg::Records(v) => {
                        self.ingest_batch(v, Some(peer));
                        Vec::new()
                    }
                    Msg::Digest(ids) => {
                        self.synced(peer);
                        self.answer_digest(ids, None)
                    }
                    Msg::Summary { buckets } => {
                        self.synced(peer);
                        self.answer_summary(buckets)
                    }
                    Msg::BucketDigest { buckets, which, ids } => self.answer_bucket_digest(buckets, which, ids),
                    Msg::Want(ids) => self.answer_want(ids),
                    Msg::Acme(m) => {
                        // Dropped when the ACME client is busy or absent: every share is asked for or
                        // offered again.
                        if let Some(tx) = self.acme.get() {
                            let _ = tx.try_send((peer.to_string(), m));
                        }
                        Vec::new()
                    }
                    Msg::Costs(figures) => {
                        if let Some(s) = self.sharing.get() {
                            s.receive(peer.0, &figures);
                            bump(&self.counters.cost_reports_received);
                        }
                        Vec::new()
                    }
                };
                for m in replies {
                    if tx.send(m).await.is_err() {
                        return link::LinkError::Io(std::io::ErrorKind::BrokenPipe.into());
                    }
                }
            }
        };
        let err = tokio::select! {
            _ = self.stop.cancelled() => None,
            e = writer => Some(e),
            e = reader => Some(e),
        };
        {
            let mut links = lock(&self.links);
            if links.get(&peer).is_some_and(|l| l.id == id) {
                links.remove(&peer);
                drop(links);
                self.set_up(peer, false);
            }
        }
        tracing::info!(%peer, error = err.map(|e| e.to_string()), "cluster: link down");
    }

    /// Sends this node's cost report to every link (or through Redis) each interval.
    async fn report_costs(self: Arc<Self>) {
        let Some(s) = self.sharing.get() else { return };
        let mut tick = tokio::time::interval(s.settings.interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_was_empty = true;
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(figures) = s.report(&mut last_was_empty) else {
                continue;
            };
            if let Some(r) = &self.redis {
                // Through a shared service reports are signed; the sequence is this node's clock, kept
                // increasing so a receiver never takes a newer report for a replay.
                seq = seq.saturating_add(1).max(now_micros());
                r.offer_cost(&cost::SignedCostReport::sign(&self.key, seq, figures.clone()));
                bump(&self.counters.cost_reports_sent);
            }
            let msg = Msg::Costs(figures);
            for l in lock(&self.links).values() {
                if l.tx.try_send(msg.clone()).is_ok() {
                    bump(&self.counters.cost_reports_sent);
                } else {
                    bump(&self.counters.dropped_sends);
                }
            }
        }
    }

    async fn timers(self: Arc<Self>) {
        let mut ae = tokio::time::interval(self.anti_entropy);
        ae.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = ae.tick() => {
                    let d = self.digest();
                    for l in lock(&self.links).values() {
                        if l.tx.try_send(d.clone()).is_err() {
                            bump(&self.counters.dropped_sends);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
