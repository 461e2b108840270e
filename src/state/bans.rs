//! The ban table the guard consults at accept time, and its durable store.
//!
//! Reads happen on every accept and writes are rare, so a read-mostly lock over a longest-prefix map is
//! enough; lookups never hold it across an await and never touch the journal. Writes go through one
//! mutex that owns the journal: a statement is on disk before it changes the map, so anything a caller
//! was told has happened survives a crash. Automatic bans are the exception: they cut the offender off
//! at once and their lines join a queue that the next sync writes whole, so a burst of offenders costs
//! a few fsyncs (and a crash may forget the last few, which the offenders then earn again).
//!
//! What enters is bounded ([`BanLimits`]): no prefix shorter than the minimum (from anyone, replay
//! included), automatic bans of several addresses of one group become one ban of the group, and
//! automatic bans stop at a cap that operators' bans ignore.
//!
//! Statements about a prefix (a ban or a lift) carry a version; the newest one wins. Versions are a
//! hybrid clock, `max(previous + 1, now in µs)`: strictly increasing per origin even if the wall clock
//! steps back, and close to real time so that statements from different origins (cluster nodes, later)
//! order the way operators expect ("the later unban wins"). Ties between origins break on the origin
//! name, so every node picks the same winner. Every version the table hears of, from any origin, raises
//! the clock, so a local statement always outranks whatever this node had seen for the prefix.
//!
//! Two doors serve the cluster. [`BanTable::apply_remote`] takes another node's statement with its own
//! origin, version and an opaque attachment (the origin's signature), journals all of it, and applies it
//! only if it is newer than what is held; after a restart [`BanTable::statements`] hands everything back
//! so the cluster needs no re-learning. [`BanTable::subscribe`] is a feed of this node's own statements,
//! sent once they are journaled and applied; remote statements never appear on it, so nothing echoes.
//! The feed is sent under the writers' lock, so its order is the version order.

use super::journal::{self, CompactPolicy, Entry, Journal, JournalError};
pub use super::journal::{Entry as Statement, Op};
use crate::wire::acl::{CidrSet, PrefixMap};
use arc_swap::ArcSwap;
use ipnetwork::{IpNetwork, Ipv4Network};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// Default `duration` of an automatic ban (doubled for each earlier offence).
pub const DEFAULT_BAN_DURATION: Duration = Duration::from_secs(600);
/// Default `max_duration`: the doubling stops here.
pub const DEFAULT_MAX_BAN_DURATION: Duration = Duration::from_secs(86_400);
/// Default `max_violations`: protocol violations one session may commit before the next one bans.
pub const DEFAULT_MAX_VIOLATIONS: u32 = 10;

#[derive(Debug, Clone)]
pub struct BanPolicy {
    pub enabled: bool,
    pub duration: Duration,
    pub max_duration: Duration,
    pub max_violations: u32,
    /// Where bans are journaled; None = in memory only.
    pub journal: Option<PathBuf>,
    /// What may enter the ban table, and how automatic bans aggregate.
    pub limits: BanLimits,
}

/// Origin of statements made by this gateway (until cluster nodes have names).
pub const LOCAL_ORIGIN: &str = "local";

/// The widest IPv4 ban accepted from anyone (operator, session, journal, peer): a /8. Wider bans would
/// cover a sizeable part of the Internet, and `0.0.0.0/0` everyone.
pub const DEFAULT_MIN_PREFIX_V4: u8 = 8;
/// The widest IPv6 ban: a /19, narrower than the /12–/16 blocks the registries hand out, so no one
/// ban covers a whole region's allocations.
pub const DEFAULT_MIN_PREFIX_V6: u8 = 19;
/// Automatic bans of an IPv6 client cover its /64: one subscriber is handed at least that many
/// addresses, so banning a single one costs an attacker nothing.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
/// Automatic bans of this many addresses (IPv6: /64s) of one group become one ban of the group.
pub const DEFAULT_ESCALATE_AFTER: u32 = 4;
/// Bans the table holds before automatic ones are refused (operators' always fit).
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// Bounds on what enters the table (`[bans]`), swapped whole on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanLimits {
    /// The shortest prefix a ban may have, per family.
    pub min_prefix_v4: u8,
    pub min_prefix_v6: u8,
    /// What automatic bans escalate to (the cost groups), never wider than the minimum prefix.
    pub group_prefix_v4: u8,
    pub group_prefix_v6: u8,
    /// The prefix an automatic ban of an IPv6 address covers.
    pub ipv6_prefix: u8,
    /// Automatic bans in one group that make the group banned; 0 never escalates.
    pub escalate_after: u32,
    /// Entries (bans and lift tombstones) beyond which automatic bans are refused.
    pub max_entries: usize,
}

impl Default for BanLimits {
    fn default() -> Self {
        BanLimits {
            min_prefix_v4: DEFAULT_MIN_PREFIX_V4,
            min_prefix_v6: DEFAULT_MIN_PREFIX_V6,
            group_prefix_v4: 24,
            group_prefix_v6: 48,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            escalate_after: DEFAULT_ESCALATE_AFTER,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

impl BanLimits {
    /// The shortest prefix allowed for `net`'s family.
    pub fn min_prefix(&self, net: &IpNetwork) -> u8 {
        if net.is_ipv4() {
            self.min_prefix_v4
        } else {
            self.min_prefix_v6
        }
    }

    /// Refuses a (normalised) network wider than the minimum prefix of its family.
    pub fn check_width(&self, net: &IpNetwork) -> Result<(), BanError> {
        let min = self.min_prefix(net);
        if net.prefix() < min {
            return Err(BanError::TooWide { net: *net, min });
        }
        Ok(())
    }

    fn net(ip: IpAddr, len: u8) -> IpNetwork {
        normalize(IpNetwork::new(ip, len).unwrap_or_else(|_| IpNetwork::from(ip)))
    }

    /// What an automatic ban of `ip` covers: the address, or its /64 (`ipv6_prefix`) for IPv6.
    fn automatic(&self, ip: IpAddr) -> IpNetwork {
        match ip {
            IpAddr::V4(_) => IpNetwork::from(ip),
            IpAddr::V6(_) => Self::net(ip, self.ipv6_prefix.clamp(self.min_prefix_v6, 128)),
        }
    }

    /// The group automatic bans of `ip` escalate to.
    fn group(&self, ip: IpAddr) -> IpNetwork {
        match ip {
            IpAddr::V4(_) => Self::net(ip, self.group_prefix_v4.clamp(self.min_prefix_v4, 32)),
            IpAddr::V6(_) => Self::net(ip, self.group_prefix_v6.clamp(self.min_prefix_v6, 128)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanRecord {
    pub prefix: IpNetwork,
    pub until: SystemTime,
    pub reason: String,
    pub origin: String,
    pub created: SystemTime,
    pub version: u64,
    /// What the origin gave to vouch for the statement (see [`Entry::attachment`]); None for local bans.
    pub attachment: Option<String>,
}

impl BanRecord {
    pub fn is_live(&self, now: SystemTime) -> bool {
        self.until > now
    }

    fn entry(&self, op: Op) -> Entry {
        Entry {
            op,
            prefix: self.prefix,
            until: self.until,
            reason: self.reason.clone(),
            origin: self.origin.clone(),
            created: self.created,
            version: self.version,
            attachment: self.attachment.clone(),
        }
    }
}

/// A statement this node made, as the change feed carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BanChange {
    Ban(BanRecord),
    /// A lift: the tombstone lives as long as `lifted` had left.
    Unban {
        prefix: IpNetwork,
        lifted: BanRecord,
        version: u64,
        created: SystemTime,
    },
}

impl BanChange {
    /// The change as the statement the journal and the cluster carry.
    pub fn statement(&self) -> Statement {
        match self {
            BanChange::Ban(b) => b.entry(Op::Ban),
            BanChange::Unban {
                prefix,
                lifted,
                version,
                created,
            } => Entry {
                op: Op::Unban,
                prefix: *prefix,
                until: lifted.until,
                reason: String::new(),
                origin: LOCAL_ORIGIN.to_string(),
                created: *created,
                version: *version,
                attachment: None,
            },
        }
    }
}

/// A local statement as the change feed carries it.
fn local_change(s: &Statement) -> BanChange {
    let record = BanRecord {
        prefix: s.prefix,
        until: s.until,
        reason: s.reason.clone(),
        origin: s.origin.clone(),
        created: s.created,
        version: s.version,
        attachment: s.attachment.clone(),
    };
    match s.op {
        Op::Unban => BanChange::Unban {
            prefix: s.prefix,
            lifted: record,
            version: s.version,
            created: s.created,
        },
        Op::Ban | Op::Offence => BanChange::Ban(record),
    }
}

/// What became of a remote statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteOutcome {
    Applied,
    /// The table already holds a statement for the prefix at least as new.
    Stale,
    /// Its deadline had already passed.
    Expired,
}

/// How far ahead of this node's clock a version heard from elsewhere may raise the table's clock.
pub const MAX_VERSION_AHEAD: Duration = Duration::from_secs(60);

/// How many local changes the feed buffers for a slow subscriber before it must catch up by comparing
/// the whole table.
const FEED_CAPACITY: usize = 4096;

/// Who raised a ban, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanSource {
    /// An Electrum session: cost hard limit or protocol violations.
    Session,
    /// An operator, through the admin API.
    Admin,
}

#[derive(Debug, thiserror::Error)]
pub enum BanError {
    #[error("{net} overlaps the allowlisted network {allowed}; allowlisted networks cannot be banned")]
    Allowlisted { net: IpNetwork, allowed: IpNetwork },
    #[error("a ban needs a duration greater than zero")]
    ZeroDuration,
    /// Replay tells local statements by this name; a remote one carrying it would be taken for ours.
    #[error("a remote statement cannot claim the origin `{LOCAL_ORIGIN}`")]
    ReservedOrigin,
    #[error("{net} is wider than /{min}, the widest ban allowed ([bans] min_prefix_v4 / min_prefix_v6); a ban must never cover everyone")]
    TooWide { net: IpNetwork, min: u8 },
    #[error("the ban table is full ({max} entries, [bans] max_entries); automatic bans are refused until some expire")]
    TableFull { max: usize },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Ban counters for the metrics endpoint (process lifetime; replayed bans are not "added").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BanStats {
    pub added_session: u64,
    pub added_admin: u64,
    /// Bans other cluster nodes made and this table applied.
    pub added_cluster: u64,
    pub lifted: u64,
    pub rejected_allowlisted: u64,
    /// Bans refused for covering more than the minimum prefix allows.
    pub rejected_too_wide: u64,
    /// Automatic bans refused because the table was full.
    pub rejected_table_full: u64,
    /// Groups banned whole because several of their addresses were.
    pub escalated: u64,
    /// Journal writes (each one fsync): automatic bans made together share one.
    pub journal_syncs: u64,
    /// 1 while the last journal write failed (bans in memory, or peers' statements not held).
    pub journal_failing: bool,
    pub expired: u64,
    /// Bans in force now.
    pub active: u64,
}

#[derive(Debug, Default)]
struct Counters {
    added_session: AtomicU64,
    added_admin: AtomicU64,
    added_cluster: AtomicU64,
    lifted: AtomicU64,
    rejected_allowlisted: AtomicU64,
    rejected_too_wide: AtomicU64,
    rejected_table_full: AtomicU64,
    escalated: AtomicU64,
    journal_syncs: AtomicU64,
    expired: AtomicU64,
    /// Unix seconds of the last "table full" warning, so a flood logs one line per interval.
    full_logged: AtomicU64,
}

/// The newest lift of a prefix, kept while an older ban for it could still be live, so a late replay
/// of that ban cannot revive it.
#[derive(Debug, Clone)]
struct Lift {
    until: SystemTime,
    version: u64,
    origin: String,
    created: SystemTime,
    reason: String,
    attachment: Option<String>,
}

impl Lift {
    fn entry(&self, prefix: IpNetwork) -> Entry {
        Entry {
            op: Op::Unban,
            prefix,
            until: self.until,
            reason: self.reason.clone(),
            origin: self.origin.clone(),
            created: self.created,
            version: self.version,
            attachment: self.attachment.clone(),
        }
    }
}

/// A repeat offender's record.
#[derive(Debug, Clone, Copy)]
struct Offence {
    count: u32,
    last: SystemTime,
    /// When it is forgiven (the last offence plus twice the longest ban, as of that offence).
    forgiven: SystemTime,
}

impl Offence {
    fn entry(&self, ip: IpAddr) -> Entry {
        Entry {
            op: Op::Offence,
            prefix: IpNetwork::from(ip),
            until: self.forgiven,
            reason: String::new(),
            origin: LOCAL_ORIGIN.to_string(),
            created: self.last,
            version: u64::from(self.count),
            attachment: None,
        }
    }
}

/// Everything writers serialise on.
#[derive(Debug)]
struct Store {
    journal: Option<Journal>,
    last_version: u64,
    lifts: HashMap<IpNetwork, Lift>,
    /// Lines of automatic bans already in force but not yet written: one sync writes all that piled up
    /// meanwhile, so a burst of offenders costs a few fsyncs, not one each.
    pending: Vec<Entry>,
    /// Automatic bans in force per group, for escalation; each member is a live entry of the map.
    auto: HashMap<IpNetwork, Vec<IpNetwork>>,
    /// Whether the last journal write failed.
    failing: bool,
}

#[derive(Debug)]
pub struct BanTable {
    map: RwLock<PrefixMap<BanRecord>>,
    store: Mutex<Store>,
    /// Serialises flushes of `Store::pending`, so callers that queue while one is syncing share the next.
    flush: Mutex<()>,
    limits: ArcSwap<BanLimits>,
    /// Mirrors `Store::failing` for readers that must not wait for a sync (readiness, metrics).
    journal_failing: std::sync::atomic::AtomicBool,
    /// Networks that can never be banned (the global admission allowlist); swapped whole on reload.
    allow: ArcSwap<CidrSet>,
    /// Networks automatic bans never cover (trusted tiers with `bans = "never"`); operators' and peers'
    /// bans still apply to them. Swapped whole on reload.
    never_auto: ArcSwap<CidrSet>,
    /// Past offences per address, so repeat offenders get longer bans; journaled, so a restart does
    /// not give every offender a first-offence ban again.
    offences: Mutex<HashMap<IpAddr, Offence>>,
    counters: Counters,
    feed: broadcast::Sender<BanChange>,
}

impl Default for BanTable {
    fn default() -> Self {
        BanTable::new(CidrSet::new())
    }
}

/// Host bits cleared and IPv4-mapped IPv6 networks as IPv4, the form the map and the journal key on.
pub fn normalize(net: IpNetwork) -> IpNetwork {
    let net = IpNetwork::new(net.network(), net.prefix()).unwrap_or(net);
    match net {
        IpNetwork::V6(n) if n.prefix() >= 96 => match n.ip().to_ipv4_mapped() {
            Some(v4) => Ipv4Network::new(v4, n.prefix() - 96).map_or(net, IpNetwork::V4),
            None => net,
        },
        _ => net,
    }
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    match (a, b) {
        (IpNetwork::V4(_), IpNetwork::V4(_)) | (IpNetwork::V6(_), IpNetwork::V6(_)) => {
            if a.prefix() <= b.prefix() {
                a.contains(b.network())
            } else {
                b.contains(a.network())
            }
        }
        _ => false,
    }
}

/// An allowlisted network that overlaps `net` (contains it, or lies inside it), if any.
fn allowlisted(allow: &CidrSet, net: &IpNetwork) -> Option<IpNetwork> {
    // Any allowlisted network holding net's first address overlaps it, whether it is wider or narrower.
    if let Some((a, _)) = allow.longest_match(net.network()) {
        return Some(a);
    }
    let host = net.prefix() == if net.is_ipv4() { 32 } else { 128 };
    if host {
        return None;
    }
    // Networks strictly inside `net` that miss its first address: only a scan finds them, and only
    // bans wider than one host (rare, operator-made) pay for it.
    allow.iter().map(|(a, _)| a).find(|a| overlaps(a, net))
}

pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// An fsync can take milliseconds: on a multi-threaded runtime the worker first hands its other tasks to
/// its peers, so one ban does not stall unrelated sessions.
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BanTable {
    /// An in-memory table: bans are lost when the process ends.
    pub fn new(allow: CidrSet) -> BanTable {
        BanTable {
            map: RwLock::new(PrefixMap::new()),
            store: Mutex::new(Store {
                journal: None,
                last_version: 0,
                lifts: HashMap::new(),
                pending: Vec::new(),
                auto: HashMap::new(),
                failing: false,
            }),
            flush: Mutex::new(()),
            limits: ArcSwap::from_pointee(BanLimits::default()),
            journal_failing: std::sync::atomic::AtomicBool::new(false),
            allow: ArcSwap::from_pointee(allow),
            never_auto: ArcSwap::from_pointee(CidrSet::new()),
            offences: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            feed: broadcast::channel(FEED_CAPACITY).0,
        }
    }

    /// A table backed by the journal at `path`, rebuilt from it.
    pub fn open(path: &Path, allow: CidrSet) -> Result<BanTable, JournalError> {
        Self::open_with(path, allow, CompactPolicy::default())
    }

    pub fn open_with(path: &Path, allow: CidrSet, policy: CompactPolicy) -> Result<BanTable, JournalError> {
        Self::open_limited(path, allow, policy, BanLimits::default())
    }

    /// An in-memory table with these limits.
    pub fn with_limits(self, limits: BanLimits) -> BanTable {
        self.limits.store(std::sync::Arc::new(limits));
        self
    }

    /// The table at `path` with these limits from the start, so replay already applies them.
    pub fn open_limited(
        path: &Path,
        allow: CidrSet,
        policy: CompactPolicy,
        limits: BanLimits,
    ) -> Result<BanTable, JournalError> {
        let started = Instant::now();
        // Off the runtime: opening may wait for another process to let go of the journal.
        let (journal, replay) = off_runtime(|| Journal::open(path, policy))?;
        let table = BanTable::new(allow).with_limits(limits);
        let mut too_wide = 0usize;
        let records = replay.entries.len();
        let now = SystemTime::now();
        let (live, needs_compaction) = {
            let mut store = lock(&table.store);
            let mut winners: HashMap<IpNetwork, Entry> = HashMap::with_capacity(records);
            let mut offences = lock(&table.offences);
            for e in replay.entries {
                if e.op == Op::Offence {
                    if e.until > now {
                        let o = Offence {
                            count: u32::try_from(e.version).unwrap_or(u32::MAX),
                            last: e.created,
                            forgiven: e.until,
                        };
                        offences.insert(e.prefix.ip(), o);
                    }
                    continue;
                }
                store.last_version = store.last_version.max(e.version);
                let newer = winners
                    .get(&e.prefix)
                    .is_none_or(|w| (e.version, e.origin.as_str()) > (w.version, w.origin.as_str()));
                if newer {
                    winners.insert(e.prefix, e);
                }
            }
            let mut map = table.map.write().unwrap_or_else(|p| p.into_inner());
            let allow = table.allow.load();
            for (prefix, e) in winners {
                if e.until <= now {
                    continue;
                }
                match e.op {
                    Op::Ban => {
                        // Journaled before the limit existed, or by hand: never applied, and dropped
                        // at the next compaction.
                        if let Err(err) = limits.check_width(&prefix) {
                            tracing::warn!(%prefix, origin = %e.origin, error = %err, "journaled ban not applied: too wide");
                            too_wide += 1;
                            continue;
                        }
                        // The allowlist may have grown since the ban was journaled; it still wins.
                        if let Some(allowed) = allowlisted(&allow, &prefix) {
                            tracing::warn!(%prefix, %allowed, "journaled ban not applied: network is allowlisted");
                            continue;
                        }
                        map.insert(
                            prefix,
                            BanRecord {
                                prefix,
                                until: e.until,
                                reason: e.reason,
                                origin: e.origin,
                                created: e.created,
                                version: e.version,
                                attachment: e.attachment,
                            },
                        );
                    }
                    Op::Unban => {
                        store.lifts.insert(
                            prefix,
                            Lift {
                                until: e.until,
                                version: e.version,
                                origin: e.origin,
                                created: e.created,
                                reason: e.reason,
                                attachment: e.attachment,
                            },
                        );
                    }
                    Op::Offence => {}
                }
            }
            // Automatic bans count toward their group's escalation after a restart as they did before it.
            // The journal does not mark them as such: an automatic ban is a local one of exactly the
            // automatic width whose address has an offence on record.
            for (prefix, b) in map.iter() {
                if b.origin != LOCAL_ORIGIN
                    || prefix != limits.automatic(prefix.ip())
                    || !offences.contains_key(&prefix.network())
                {
                    continue;
                }
                let group = limits.group(prefix.ip());
                if group.prefix() < prefix.prefix() {
                    store.auto.entry(group).or_default().push(prefix);
                }
            }
            drop(offences);
            let live = map.len() + store.lifts.len();
            store.journal = Some(journal);
            let j = store.journal.as_ref().expect("just set");
            (
                map.len(),
                replay.damaged > 0 || too_wide > 0 || j.needs_compaction(live),
            )
        };
        tracing::info!(
            path = %path.display(),
            records,
            live,
            torn_tail = replay.torn_tail,
            damaged = replay.damaged,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "ban journal replayed"
        );
        for d in &replay.dropped {
            tracing::warn!(path = %path.display(), line = d.line, why = %d.why, action = if d.cut { "cut (the last line: an unacknowledged write)" } else { "skipped" }, "ban journal: line dropped");
        }
        if let Some(copy) = &replay.evidence {
            tracing::warn!(
                path = %path.display(),
                copy = %copy.display(),
                lines = ?replay.dropped.iter().map(|d| d.line).collect::<Vec<_>>(),
                "ban journal: damaged lines dropped; the original is kept as the copy"
            );
        }
        if too_wide > 0 {
            tracing::warn!(path = %path.display(), too_wide, "ban journal: bans wider than the minimum prefix were not applied");
        }
        if needs_compaction {
            table.compact_journal()?;
        }
        Ok(table)
    }

    /// Replaces the networks that can never be banned. Bans already in force are left alone.
    pub fn set_allowlist(&self, allow: CidrSet) {
        self.allow.store(std::sync::Arc::new(allow));
    }

    /// Replaces the networks automatic bans never cover, neither by banning an address in them nor by
    /// escalating to a group that holds one.
    pub fn set_never_auto(&self, nets: CidrSet) {
        self.never_auto.store(std::sync::Arc::new(nets));
    }

    pub fn journal_path(&self) -> Option<PathBuf> {
        lock(&self.store).journal.as_ref().map(|j| j.path().to_path_buf())
    }

    /// The feed of this node's own statements from now on. A receiver that lags loses changes
    /// ([`broadcast::error::RecvError::Lagged`]) and must catch up from [`BanTable::statements`].
    pub fn subscribe(&self) -> broadcast::Receiver<BanChange> {
        self.feed.subscribe()
    }

    /// Every statement in force: live bans and live lift tombstones, with origin, version and attachment.
    pub fn statements(&self) -> Vec<Statement> {
        let store = lock(&self.store);
        self.live_entries(&store, SystemTime::now())
    }

    fn live_entries(&self, store: &Store, now: SystemTime) -> Vec<Entry> {
        let mut live: Vec<Entry> = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, b)| b.is_live(now))
            .map(|(_, b)| b.entry(Op::Ban))
            .collect();
        live.extend(
            store
                .lifts
                .iter()
                .filter(|(_, l)| l.until > now)
                .map(|(net, l)| l.entry(*net)),
        );
        live
    }

    /// Applies another node's statement if `(version, origin)` outranks what the table holds for the
    /// prefix (a live ban or a lift tombstone). Journaled (synced) with its origin, version and
    /// attachment before it takes effect, and kept in the record, so listings show the origin and a
    /// restart restores it whole. Not sent on the change feed. `until` is this node's deadline.
    pub fn apply_remote(&self, s: Statement) -> Result<RemoteOutcome, BanError> {
        self.apply_remote_batch(vec![s])?
            .pop()
            .expect("one outcome per statement")
    }

    /// [`BanTable::apply_remote`] for many statements, judged in order, with one journal sync for all
    /// the winners. The outer error is a journal failure: then none of them was applied.
    pub fn apply_remote_batch(&self, batch: Vec<Statement>) -> Result<Vec<Result<RemoteOutcome, BanError>>, BanError> {
        self.merge_batch(batch, false)
    }

    /// Statements of this node's previous process (a live upgrade: its bans and lifts while it drains),
    /// local ones included, merged by rank like a peer's and journaled. Returns how many took effect.
    pub fn adopt_from_predecessor(&self, batch: Vec<Statement>) -> Result<usize, BanError> {
        let outcomes = self.merge_batch(batch, true)?;
        Ok(outcomes
            .iter()
            .filter(|o| matches!(o, Ok(RemoteOutcome::Applied)))
            .count())
    }

    /// Flushes the automatic bans queued for the journal and lets go of the journal and its lock, so a
    /// successor process can take it over; the table goes on in memory (its changes still reach the
    /// feed). Returns the journal's path; None when the table has none.
    pub fn release_journal(&self) -> Option<PathBuf> {
        let _turn = lock(&self.flush);
        let mut store = lock(&self.store);
        if let Err(e) = self.write_journal(&mut store, &[]) {
            tracing::error!(error = %e, queued = store.pending.len(), "ban journal: queued bans not written before handing the journal over");
        }
        let journal = store.journal.take()?;
        let path = journal.path().to_path_buf();
        drop(journal);
        tracing::info!(path = %path.display(), "ban journal released");
        Some(path)
    }

    /// Takes the journal at `path` back after [`BanTable::release_journal`] (the successor failed):
    /// waits for its lock, merges what was written meanwhile, then rewrites it to the table's live
    /// statements, which include every ban made while the journal was away.
    pub fn reattach_journal(&self, path: &Path) -> Result<(), BanError> {
        let (journal, replay) = off_runtime(|| Journal::open(path, CompactPolicy::default()))?;
        lock(&self.store).journal = Some(journal);
        let written: Vec<Entry> = replay.entries.into_iter().filter(|e| e.op != Op::Offence).collect();
        self.merge_batch(written, true)?;
        self.compact_journal()?;
        tracing::info!(path = %path.display(), "ban journal taken back");
        Ok(())
    }

    fn merge_batch(
        &self,
        batch: Vec<Statement>,
        local_ok: bool,
    ) -> Result<Vec<Result<RemoteOutcome, BanError>>, BanError> {
        let now = SystemTime::now();
        let max_version = now_micros().saturating_add(MAX_VERSION_AHEAD.as_micros() as u64);
        let limits = self.limits();
        let mut store = lock(&self.store);
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut winners: Vec<Statement> = Vec::new();
        // Winners earlier in this batch, which the table does not show yet.
        let mut pending: HashMap<IpNetwork, (u64, String)> = HashMap::new();
        {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            let allow = self.allow.load();
            for s in batch {
                if s.origin == LOCAL_ORIGIN && !local_ok {
                    outcomes.push(Err(BanError::ReservedOrigin));
                    continue;
                }
                if s.op == Op::Offence {
                    // Offence memories are this node's own; another node's say nothing here.
                    outcomes.push(Ok(RemoteOutcome::Stale));
                    continue;
                }
                let s = Statement {
                    prefix: normalize(s.prefix),
                    ..s
                };
                // Even a losing statement raises the clock: the next local statement must outrank it
                // wherever it is held. Never beyond a little ahead of now, though: a version from the
                // far future would leave this node's own statements unable to outrank anything.
                store.last_version = store.last_version.max(s.version.min(max_version));
                if s.until <= now {
                    outcomes.push(Ok(RemoteOutcome::Expired));
                    continue;
                }
                let rank = (s.version, s.origin.as_str());
                let outranked = match pending.get(&s.prefix) {
                    Some((v, o)) => (*v, o.as_str()) >= rank,
                    None => {
                        let ban = map.get_exact(&s.prefix).filter(|b| b.is_live(now));
                        let lift = store.lifts.get(&s.prefix).filter(|l| l.until > now);
                        ban.is_some_and(|b| (b.version, b.origin.as_str()) >= rank)
                            || lift.is_some_and(|l| (l.version, l.origin.as_str()) >= rank)
                    }
                };
                if outranked {
                    outcomes.push(Ok(RemoteOutcome::Stale));
                    continue;
                }
                if s.op == Op::Ban {
                    if let Err(e) = limits.check_width(&s.prefix) {
                        self.counters.rejected_too_wide.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(prefix = %s.prefix, origin = %s.origin, "remote ban refused: too wide");
                        outcomes.push(Err(e));
                        continue;
                    }
                    if let Some(allowed) = allowlisted(&allow, &s.prefix) {
                        self.counters.rejected_allowlisted.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(prefix = %s.prefix, %allowed, origin = %s.origin, "remote ban refused: the network is allowlisted");
                        outcomes.push(Err(BanError::Allowlisted { net: s.prefix, allowed }));
                        continue;
                    }
                }
                pending.insert(s.prefix, (s.version, s.origin.clone()));
                outcomes.push(Ok(RemoteOutcome::Applied));
                winners.push(s);
            }
        }
        if winners.is_empty() {
            return Ok(outcomes);
        }
        self.write_journal(&mut store, &winners)?;
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        for s in winners {
            // This node's own statements (from its previous process) go on the feed like any made here:
            // the cluster publishes them, and a successor of this process hears of them in turn.
            if s.origin == LOCAL_ORIGIN {
                let _ = self.feed.send(local_change(&s));
            }
            match s.op {
                Op::Ban => {
                    store.lifts.remove(&s.prefix);
                    map.insert(
                        s.prefix,
                        BanRecord {
                            prefix: s.prefix,
                            until: s.until,
                            reason: s.reason,
                            origin: s.origin,
                            created: s.created,
                            version: s.version,
                            attachment: s.attachment,
                        },
                    );
                    self.counters.added_cluster.fetch_add(1, Ordering::Relaxed);
                }
                Op::Unban => {
                    if map.remove(&s.prefix).is_some_and(|b| b.is_live(now)) {
                        self.counters.lifted.fetch_add(1, Ordering::Relaxed);
                    }
                    store.lifts.insert(
                        s.prefix,
                        Lift {
                            until: s.until,
                            version: s.version,
                            origin: s.origin,
                            created: s.created,
                            reason: s.reason,
                            attachment: s.attachment,
                        },
                    );
                }
                Op::Offence => {}
            }
        }
        drop(map);
        self.maybe_compact(&mut store);
        Ok(outcomes)
    }

    /// An operator's ban (counted as `admin`).
    pub fn ban(&self, net: IpNetwork, duration: Duration, reason: impl Into<String>) -> Result<BanRecord, BanError> {
        self.ban_from(net, duration, reason.into(), BanSource::Admin)
    }

    /// Bans `net` for `duration`. The statement is journaled (and synced) before the ban takes effect;
    /// if journaling fails the ban is not applied and the error returned.
    pub fn ban_from(
        &self,
        net: IpNetwork,
        duration: Duration,
        reason: String,
        source: BanSource,
    ) -> Result<BanRecord, BanError> {
        let net = normalize(net);
        if duration.is_zero() {
            return Err(BanError::ZeroDuration);
        }
        if let Err(e) = self.limits.load().check_width(&net) {
            self.counters.rejected_too_wide.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(prefix = %net, reason, ?source, error = %e, "ban refused: too wide");
            return Err(e);
        }
        if let Some(allowed) = allowlisted(&self.allow.load(), &net) {
            self.counters.rejected_allowlisted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(prefix = %net, %allowed, reason, ?source, "ban refused: the network is allowlisted");
            return Err(BanError::Allowlisted { net, allowed });
        }
        let now = SystemTime::now();
        let mut store = lock(&self.store);
        let record = Self::local_record(&store, net, now, duration, reason);
        self.write_journal(&mut store, &[record.entry(Op::Ban)])?;
        self.install(&mut store, record.clone());
        match source {
            BanSource::Session => &self.counters.added_session,
            BanSource::Admin => &self.counters.added_admin,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.maybe_compact(&mut store);
        Ok(record)
    }

    /// A new local ban, versioned above everything the table has heard of.
    fn local_record(store: &Store, net: IpNetwork, now: SystemTime, duration: Duration, reason: String) -> BanRecord {
        BanRecord {
            prefix: net,
            until: now
                .checked_add(duration)
                .unwrap_or(now + Duration::from_secs(100 * 365 * 86_400)),
            reason,
            origin: LOCAL_ORIGIN.to_string(),
            created: now,
            version: store.last_version.saturating_add(1).max(now_micros()),
            attachment: None,
        }
    }

    /// Puts a journaled (or pending) local ban in force and on the feed.
    fn install(&self, store: &mut Store, record: BanRecord) {
        store.last_version = store.last_version.max(record.version);
        store.lifts.remove(&record.prefix);
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.prefix, record.clone());
        let _ = self.feed.send(BanChange::Ban(record));
    }

    /// Writes the pending automatic-ban lines and then `lines`, with one sync. On failure nothing of
    /// `lines` counts as written and the pending lines wait for the next write.
    fn write_journal(&self, store: &mut Store, lines: &[Entry]) -> Result<(), JournalError> {
        let Store {
            journal,
            pending,
            failing,
            ..
        } = store;
        let Some(j) = journal.as_mut() else {
            pending.clear();
            return Ok(());
        };
        if lines.is_empty() && pending.is_empty() {
            return Ok(());
        }
        let result = if pending.is_empty() {
            off_runtime(|| j.append_all(lines))
        } else {
            let queued = pending.len();
            pending.extend_from_slice(lines);
            let r = off_runtime(|| j.append_all(pending));
            if r.is_ok() {
                pending.clear();
            } else {
                pending.truncate(queued);
            }
            r
        };
        self.counters.journal_syncs.fetch_add(1, Ordering::Relaxed);
        if result.is_err() != *failing {
            *failing = result.is_err();
            self.journal_failing.store(*failing, Ordering::Relaxed);
            if result.is_ok() {
                tracing::info!("ban journal: writes succeed again");
            }
        }
        result
    }

    /// Writes the automatic bans that piled up. Whoever comes while another caller syncs waits for its
    /// turn and then writes everything queued meanwhile (group commit).
    fn flush_pending(&self) {
        let _turn = lock(&self.flush);
        let mut store = lock(&self.store);
        if store.pending.is_empty() {
            return;
        }
        if let Err(e) = self.write_journal(&mut store, &[]) {
            tracing::error!(error = %e, queued = store.pending.len(), "automatic bans in force in memory only until the journal takes writes again");
        }
        self.maybe_compact(&mut store);
    }

    /// Whether the journal is failing writes: automatic bans are then held in memory only, and peers'
    /// statements are not taken (see the cluster).
    pub fn journal_failing(&self) -> bool {
        self.journal_failing.load(Ordering::Relaxed)
    }

    /// The limits in force.
    pub fn limits(&self) -> BanLimits {
        **self.limits.load()
    }

    /// Replaces the limits; bans already in force stay.
    pub fn set_limits(&self, limits: BanLimits) {
        self.limits.store(std::sync::Arc::new(limits));
    }

    /// Logs a refused automatic ban at most once per 10 s.
    fn note_full(&self, ip: IpAddr, max: usize) {
        self.counters.rejected_table_full.fetch_add(1, Ordering::Relaxed);
        let now = unix_ms(SystemTime::now()) / 1000;
        let last = self.counters.full_logged.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .counters
                .full_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let refused = self.counters.rejected_table_full.load(Ordering::Relaxed);
            tracing::warn!(client = %ip, max_entries = max, refused_total = refused, "ban table full: automatic ban refused (operators' bans still fit)");
        }
    }

    /// Bans an offending address (IPv6: its /64) for `base`, doubled for each earlier offence (up to
    /// `max`); offences older than `max` are forgiven. Once `escalate_after` addresses of one group are
    /// banned, the group is banned instead (at least as long as any of them) and their own bans are
    /// lifted. Returns the ban's duration, or None if none was made (allowlisted, or the table is full).
    ///
    /// Unlike [`BanTable::ban`], the ban takes effect before it is journaled: the offender is cut off
    /// now, the journal line is written with whatever other automatic bans queue meanwhile (one sync
    /// for a burst), and a journal failure is logged rather than stopping the ban, since a ban only
    /// lost at the next restart beats no ban.
    pub fn ban_offender(&self, ip: IpAddr, base: Duration, max: Duration, reason: &str) -> Option<Duration> {
        let ip = crate::wire::addr::canonical(ip);
        let limits = self.limits();
        let target = limits.automatic(ip);
        let allow = self.allow.load();
        if let Some(allowed) = allowlisted(&allow, &target) {
            self.counters.rejected_allowlisted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(prefix = %target, %allowed, reason, "ban refused: the network is allowlisted");
            return None;
        }
        let never = self.never_auto.load();
        if allowlisted(&never, &target).is_some() {
            tracing::debug!(prefix = %target, reason, "automatic ban not made: the address's tier has bans = \"never\"");
            return None;
        }
        let now = SystemTime::now();
        let mut store = lock(&self.store);
        // Already covered by a wider ban (its group was banned, or an operator's): nothing to add.
        // Checked under the writers' lock, so an escalation made meanwhile is seen.
        if let Some((net, b)) = self.lookup(ip) {
            if net.prefix() < target.prefix() {
                return Some(remaining(b.until));
            }
        }
        if self.len() >= limits.max_entries {
            drop(store);
            self.note_full(ip, limits.max_entries);
            return None;
        }
        let offence = {
            let mut off = lock(&self.offences);
            if off.len() >= limits.max_entries && !off.contains_key(&target.network()) {
                off.retain(|_, o| o.forgiven > now);
            }
            let remembered = off.len() < limits.max_entries || off.contains_key(&target.network());
            let mut fresh = Offence {
                count: 0,
                last: now,
                forgiven: now,
            };
            let e = if remembered {
                off.entry(target.network()).or_insert(fresh)
            } else {
                // Memory full: this offender is judged as a first offender rather than grow it.
                &mut fresh
            };
            if now.duration_since(e.last).unwrap_or_default() > max + max {
                e.count = 0;
            }
            e.count = e.count.saturating_add(1);
            e.last = now;
            e.forgiven = now.checked_add(max + max).unwrap_or(now);
            *e
        };
        let count = offence.count;
        let factor = 1u32.checked_shl(count.saturating_sub(1)).unwrap_or(u32::MAX);
        let duration = base.checked_mul(factor).unwrap_or(max).min(max);
        let group = limits.group(ip);
        let members: Vec<BanRecord> = {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            store
                .auto
                .get(&group)
                .into_iter()
                .flatten()
                .filter_map(|m| map.get_exact(m))
                .filter(|b| b.is_live(now) && b.origin == LOCAL_ORIGIN && b.prefix != target)
                .cloned()
                .collect()
        };
        let escalate = limits.escalate_after > 0
            && group.prefix() < target.prefix()
            && members.len() + 1 >= limits.escalate_after as usize
            && allowlisted(&allow, &group).is_none()
            && allowlisted(&never, &group).is_none();
        let mut lines = vec![offence.entry(target.network())];
        if escalate {
            let until = members.iter().map(|m| m.until).fold(now + duration, SystemTime::max);
            let record = Self::local_record(
                &store,
                group,
                now,
                until.duration_since(now).unwrap_or(duration),
                format!("{reason} ({} addresses of the group)", members.len() + 1),
            );
            lines.push(record.entry(Op::Ban));
            let mut lifted = Vec::with_capacity(members.len());
            for (version, m) in (record.version + 1..).zip(members) {
                let lift = Lift {
                    until: m.until,
                    version,
                    origin: LOCAL_ORIGIN.to_string(),
                    created: now,
                    reason: String::new(),
                    attachment: None,
                };
                lines.push(lift.entry(m.prefix));
                lifted.push((m, lift));
            }
            store.pending.extend(lines);
            self.install(&mut store, record.clone());
            {
                let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
                for (m, _) in &lifted {
                    map.remove(&m.prefix);
                }
            }
            for (m, lift) in lifted {
                store.last_version = store.last_version.max(lift.version);
                let _ = self.feed.send(BanChange::Unban {
                    prefix: m.prefix,
                    lifted: m.clone(),
                    version: lift.version,
                    created: now,
                });
                store.lifts.insert(m.prefix, lift);
            }
            store.auto.remove(&group);
            self.counters.escalated.fetch_add(1, Ordering::Relaxed);
            self.counters.added_session.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = %ip, prefix = %group, reason, ban_secs = remaining(record.until).as_secs(), "group banned: automatic bans of several of its addresses");
            drop(store);
            self.flush_pending();
            return Some(remaining(record.until));
        }
        let record = Self::local_record(&store, target, now, duration, reason.to_string());
        lines.push(record.entry(Op::Ban));
        store.pending.extend(lines);
        self.install(&mut store, record);
        if group.prefix() < target.prefix() {
            let members = store.auto.entry(group).or_default();
            if !members.contains(&target) {
                members.push(target);
            }
        }
        self.counters.added_session.fetch_add(1, Ordering::Relaxed);
        drop(store);
        tracing::warn!(client = %ip, prefix = %target, reason, ban_secs = duration.as_secs(), offence = count, "address banned");
        self.flush_pending();
        Some(duration)
    }

    /// Lifts the ban on exactly `net` (not bans on networks inside or around it). Returns the lifted
    /// ban, or None if none was in force. The lift is journaled before the ban stops applying.
    pub fn unban(&self, net: IpNetwork) -> Result<Option<BanRecord>, BanError> {
        let net = normalize(net);
        let now = SystemTime::now();
        let mut store = lock(&self.store);
        let current = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get_exact(&net)
            .cloned();
        let Some(current) = current else {
            return Ok(None);
        };
        if !current.is_live(now) {
            if self
                .map
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&net)
                .is_some()
            {
                self.counters.expired.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(None);
        }
        let version = store.last_version.saturating_add(1).max(now_micros());
        let lift = Lift {
            until: current.until,
            version,
            origin: LOCAL_ORIGIN.to_string(),
            created: now,
            reason: String::new(),
            attachment: None,
        };
        self.write_journal(&mut store, &[lift.entry(net)])?;
        store.last_version = version;
        store.lifts.insert(net, lift);
        self.map.write().unwrap_or_else(|p| p.into_inner()).remove(&net);
        let _ = self.feed.send(BanChange::Unban {
            prefix: net,
            lifted: current.clone(),
            version,
            created: now,
        });
        self.counters.lifted.fetch_add(1, Ordering::Relaxed);
        self.maybe_compact(&mut store);
        Ok(Some(current))
    }

    /// The ban covering `ip` that is still in force, if any: the most specific live one. Expiry is
    /// checked here, so an expired ban never refuses anyone even before housekeeping removes it, and
    /// never hides a live broader ban.
    pub fn lookup(&self, ip: IpAddr) -> Option<(IpNetwork, BanRecord)> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return None;
        }
        let (net, ban) = map.longest_match(ip)?;
        let now = SystemTime::now();
        if ban.is_live(now) {
            return Some((net, ban.clone()));
        }
        // Rare (an expired ban not yet purged): probe each shorter prefix length.
        let ip = ip.to_canonical();
        (0..net.prefix()).rev().find_map(|len| {
            let n = IpNetwork::new(ip, len).ok()?;
            map.get_exact(&n)
                .filter(|b| b.is_live(now))
                .map(|b| (normalize(n), b.clone()))
        })
    }

    /// Whether a ban in force covers `ip`: [`BanTable::lookup`] without copying the record, for the accept
    /// path.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return false;
        }
        let Some((net, ban)) = map.longest_match(ip) else {
            return false;
        };
        let now = SystemTime::now();
        if ban.is_live(now) {
            return true;
        }
        let ip = ip.to_canonical();
        (0..net.prefix()).rev().any(|len| {
            IpNetwork::new(ip, len)
                .ok()
                .and_then(|n| map.get_exact(&n))
                .is_some_and(|b| b.is_live(now))
        })
    }

    /// Live bans, ordered by prefix; with a filter, only those inside or around it.
    pub fn list(&self, filter: Option<IpNetwork>) -> Vec<BanRecord> {
        let filter = filter.map(normalize);
        let now = SystemTime::now();
        let mut out: Vec<BanRecord> = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(net, b)| b.is_live(now) && filter.as_ref().is_none_or(|f| overlaps(f, net)))
            .map(|(_, b)| b.clone())
            .collect();
        out.sort_by(|a, b| {
            (a.prefix.is_ipv6(), a.prefix.network(), a.prefix.prefix()).cmp(&(
                b.prefix.is_ipv6(),
                b.prefix.network(),
                b.prefix.prefix(),
            ))
        });
        out
    }

    pub fn purge_expired(&self) {
        let now = SystemTime::now();
        let mut expired = 0u64;
        self.map.write().unwrap_or_else(|p| p.into_inner()).retain(|_, b| {
            let live = b.is_live(now);
            expired += u64::from(!live);
            live
        });
        self.counters.expired.fetch_add(expired, Ordering::Relaxed);
        {
            let mut store = lock(&self.store);
            store.lifts.retain(|_, l| l.until > now);
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            store.auto.retain(|_, members| {
                members.retain(|m| map.get_exact(m).is_some());
                !members.is_empty()
            });
            drop(map);
            self.maybe_compact(&mut store);
        }
        // Automatic bans a failing journal left in memory only get another chance here.
        self.flush_pending();
    }

    /// Stored bans, including expired ones housekeeping has not removed yet.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> BanStats {
        let now = SystemTime::now();
        let active = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, b)| b.is_live(now))
            .count() as u64;
        let c = &self.counters;
        BanStats {
            added_session: c.added_session.load(Ordering::Relaxed),
            added_admin: c.added_admin.load(Ordering::Relaxed),
            added_cluster: c.added_cluster.load(Ordering::Relaxed),
            lifted: c.lifted.load(Ordering::Relaxed),
            rejected_allowlisted: c.rejected_allowlisted.load(Ordering::Relaxed),
            rejected_too_wide: c.rejected_too_wide.load(Ordering::Relaxed),
            rejected_table_full: c.rejected_table_full.load(Ordering::Relaxed),
            escalated: c.escalated.load(Ordering::Relaxed),
            journal_syncs: c.journal_syncs.load(Ordering::Relaxed),
            journal_failing: self.journal_failing.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            active,
        }
    }

    /// Rewrites the journal to the live statements now, whatever its size. Returns false without a
    /// journal.
    pub fn compact_journal(&self) -> Result<bool, JournalError> {
        let mut store = lock(&self.store);
        self.compact_locked(&mut store)
    }

    fn compact_locked(&self, store: &mut Store) -> Result<bool, JournalError> {
        if store.journal.is_none() {
            return Ok(false);
        }
        let now = SystemTime::now();
        let mut live = self.live_entries(store, now);
        {
            let mut off = lock(&self.offences);
            off.retain(|_, o| o.forgiven > now);
            live.extend(off.iter().map(|(ip, o)| o.entry(*ip)));
        }
        let j = store.journal.as_mut().expect("checked above");
        let before = j.bytes();
        let started = Instant::now();
        off_runtime(|| j.compact(live.iter()))?;
        tracing::info!(
            path = %j.path().display(),
            before_bytes = before,
            after_bytes = j.bytes(),
            records = live.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "ban journal compacted"
        );
        // Everything pending is in force, so the rewrite holds it.
        store.pending.clear();
        if store.failing {
            store.failing = false;
            self.journal_failing.store(false, Ordering::Relaxed);
        }
        Ok(true)
    }

    fn maybe_compact(&self, store: &mut Store) {
        let live = self.map.read().unwrap_or_else(|p| p.into_inner()).len() + store.lifts.len();
        if store.journal.as_ref().is_some_and(|j| j.needs_compaction(live)) {
            if let Err(e) = self.compact_locked(store) {
                // The journal still holds everything; only its size suffers. Retried on the next write.
                tracing::error!(error = %e, "ban journal compaction failed");
            }
        }
    }
}

/// Seconds from now until `t` (0 if past).
pub fn remaining(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

/// Milliseconds since the Unix epoch, as the journal stores times.
pub fn unix_ms(t: SystemTime) -> u64 {
    journal::unix_ms(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        crate::wire::acl::parse_cidr(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn expired_specific_ban_does_not_hide_a_broader_live_one() {
        let t = BanTable::default();
        t.ban(net("192.0.2.0/24"), HOUR, "broad").unwrap();
        t.ban(net("192.0.2.7/32"), Duration::from_millis(1), "narrow").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let (n, b) = t.lookup(ip("192.0.2.7")).expect("the /24 still applies");
        assert_eq!(n, net("192.0.2.0/24"));
        assert_eq!(b.reason, "broad");
        assert!(t.is_banned(ip("192.0.2.7")));
        assert!(t.lookup(ip("198.51.100.1")).is_none());
        assert!(!t.is_banned(ip("198.51.100.1")));
        assert_eq!((t.len(), t.stats().active), (2, 1));
        t.purge_expired();
        assert_eq!((t.len(), t.stats().expired), (1, 1));
    }

    #[test]
    fn allowlisted_networks_cannot_be_banned() {
        let t = BanTable::new(CidrSet::from_nets([net("10.0.0.0/8"), net("192.0.2.5")]));
        for n in [
            "10.1.2.3/32",
            "10.0.0.0/8",
            "192.0.2.0/24",
            "192.0.0.0/16",
            "::ffff:10.0.0.1",
        ] {
            let parsed: IpNetwork = n.parse().unwrap();
            assert!(
                matches!(t.ban(parsed, HOUR, "x"), Err(BanError::Allowlisted { .. })),
                "{n} should be refused"
            );
        }
        assert!(t.ban(net("192.0.3.0/24"), HOUR, "x").is_ok());
        assert!(t.ban(net("2001:db8::/32"), HOUR, "x").is_ok());
        assert!(t.unban(net("2001:db8::/32")).unwrap().is_some());
        assert!(t.ban_offender(ip("10.9.9.9"), HOUR, HOUR, "x").is_none());
        assert_eq!(t.ban_offender(ip("192.0.4.1"), HOUR, HOUR, "x"), Some(HOUR));
        let s = t.stats();
        assert_eq!(
            s,
            BanStats {
                added_session: 1,
                added_admin: 2,
                added_cluster: 0,
                lifted: 1,
                rejected_allowlisted: 6,
                expired: 0,
                active: 2,
                journal_syncs: 0,
                ..BanStats::default()
            }
        );
    }

    #[test]
    fn automatic_ipv6_bans_cover_a_64_and_escalate_to_the_48() {
        let t = BanTable::default();
        assert_eq!(t.ban_offender(ip("2001:db8:1:2::1"), HOUR, HOUR, "x"), Some(HOUR));
        assert_eq!(
            t.lookup(ip("2001:db8:1:2:ffff::9")).unwrap().0,
            net("2001:db8:1:2::/64")
        );
        // Another address of the same /64 is the same offender: no new entry.
        t.ban_offender(ip("2001:db8:1:2::2"), HOUR, HOUR, "x").unwrap();
        assert_eq!(t.len(), 1);
        for i in 3..=5 {
            t.ban_offender(ip(&format!("2001:db8:1:{i}::1")), HOUR, HOUR, "x")
                .unwrap();
        }
        let prefixes: Vec<String> = t.list(None).iter().map(|b| b.prefix.to_string()).collect();
        assert_eq!(prefixes, ["2001:db8:1::/48"]);
        assert_eq!(t.stats().escalated, 1);
        assert!(t.is_banned(ip("2001:db8:1:ffff::1")));
        assert!(!t.is_banned(ip("2001:db8:2::1")));
    }

    #[test]
    fn escalation_never_goes_wider_than_the_minimum_prefix() {
        let t = BanTable::default().with_limits(BanLimits {
            group_prefix_v4: 0,
            escalate_after: 2,
            ..BanLimits::default()
        });
        t.ban_offender(ip("198.51.100.1"), HOUR, HOUR, "x").unwrap();
        t.ban_offender(ip("198.2.0.1"), HOUR, HOUR, "x").unwrap();
        let prefixes: Vec<String> = t.list(None).iter().map(|b| b.prefix.to_string()).collect();
        assert_eq!(prefixes, ["198.0.0.0/8"]);
        assert!(!t.is_banned(ip("199.0.0.1")));
    }

    #[test]
    fn list_filters_by_overlap_and_unban_is_exact() {
        let t = BanTable::default();
        t.ban(net("192.0.2.0/24"), HOUR, "a").unwrap();
        t.ban(net("192.0.2.9"), HOUR, "b").unwrap();
        t.ban(net("2001:db8::/32"), HOUR, "c").unwrap();
        let prefixes = |v: Vec<BanRecord>| v.into_iter().map(|b| b.prefix.to_string()).collect::<Vec<_>>();
        assert_eq!(
            prefixes(t.list(None)),
            ["192.0.2.0/24", "192.0.2.9/32", "2001:db8::/32"]
        );
        assert_eq!(
            prefixes(t.list(Some(net("192.0.2.9")))),
            ["192.0.2.0/24", "192.0.2.9/32"]
        );
        assert_eq!(
            prefixes(t.list(Some(net("192.0.0.0/16")))),
            ["192.0.2.0/24", "192.0.2.9/32"]
        );
        assert!(t.unban(net("192.0.2.0/25")).unwrap().is_none());
        assert_eq!(t.unban(net("192.0.2.0/24")).unwrap().unwrap().reason, "a");
        assert_eq!(t.lookup(ip("192.0.2.9")).unwrap().1.reason, "b");
        assert!(t.lookup(ip("192.0.2.8")).is_none());
        assert_eq!(t.stats().lifted, 1);
    }

    #[test]
    fn escalation_counts_automatic_bans_made_before_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let limits = || BanLimits {
            escalate_after: 3,
            ..BanLimits::default()
        };
        let open = || BanTable::open_limited(&path, CidrSet::new(), CompactPolicy::default(), limits()).unwrap();
        {
            let t = open();
            t.ban_offender(ip("203.0.113.1"), HOUR, HOUR, "x").unwrap();
            t.ban_offender(ip("203.0.113.2"), HOUR, HOUR, "x").unwrap();
            // An operator's ban of one address of the group is not an offence and does not count.
            t.ban(net("203.0.113.50"), HOUR, "operator").unwrap();
        }
        let t = open();
        assert_eq!(t.stats().escalated, 0);
        t.ban_offender(ip("203.0.113.3"), HOUR, HOUR, "x").unwrap();
        assert_eq!(t.stats().escalated, 1, "the third automatic ban of the group escalates");
        assert_eq!(t.lookup(ip("203.0.113.200")).unwrap().0, net("203.0.113.0/24"));
    }

    #[test]
    fn journal_replay_restores_live_bans_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        {
            let t = BanTable::open(&path, CidrSet::new()).unwrap();
            t.ban(net("192.0.2.1"), HOUR, "stays").unwrap();
            t.ban(net("192.0.2.2"), Duration::from_millis(1), "expires").unwrap();
            t.ban(net("192.0.2.3"), HOUR, "lifted").unwrap();
            t.unban(net("192.0.2.3")).unwrap().unwrap();
            t.ban_offender(ip("192.0.2.4"), HOUR, HOUR, "session");
        }
        std::thread::sleep(Duration::from_millis(5));
        let t = BanTable::open(&path, CidrSet::new()).unwrap();
        assert_eq!(t.lookup(ip("192.0.2.1")).unwrap().1.reason, "stays");
        assert!(t.lookup(ip("192.0.2.2")).is_none());
        assert!(t.lookup(ip("192.0.2.3")).is_none());
        assert_eq!(t.lookup(ip("192.0.2.4")).unwrap().1.reason, "session");
        // Versions keep rising across restarts.
        let v_before = t.list(None).iter().map(|b| b.version).max().unwrap();
        let b = t.ban(net("192.0.2.5"), HOUR, "new").unwrap();
        assert!(b.version > v_before);
    }

    #[test]
    fn a_released_journal_passes_to_a_successor_and_statements_made_meanwhile_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let old = BanTable::open(&path, CidrSet::new()).unwrap();
        old.ban(net("192.0.2.1"), HOUR, "before").unwrap();
        let mut feed = old.subscribe();
        assert_eq!(old.release_journal().as_deref(), Some(path.as_path()));
        assert!(old.release_journal().is_none());
        // In memory only now, and on the feed.
        old.ban_offender(ip("192.0.2.2"), HOUR, HOUR, "while draining");
        let change = feed.try_recv().unwrap();
        let new = BanTable::open(&path, CidrSet::new()).unwrap();
        assert!(new.is_banned(ip("192.0.2.1")));
        assert!(!new.is_banned(ip("192.0.2.2")));
        assert_eq!(new.adopt_from_predecessor(vec![change.statement()]).unwrap(), 1);
        assert_eq!(
            new.adopt_from_predecessor(vec![change.statement()]).unwrap(),
            0,
            "stale the second time"
        );
        assert!(new.is_banned(ip("192.0.2.2")));
        drop(new);
        let replayed = BanTable::open(&path, CidrSet::new()).unwrap();
        assert_eq!(replayed.lookup(ip("192.0.2.2")).unwrap().1.origin, LOCAL_ORIGIN);
    }

    #[test]
    fn a_journal_taken_back_holds_what_was_banned_while_it_was_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let t = BanTable::open(&path, CidrSet::new()).unwrap();
        t.release_journal().unwrap();
        t.ban(net("192.0.2.7"), HOUR, "while away").unwrap();
        // A successor that failed had written a ban of its own meanwhile.
        BanTable::open(&path, CidrSet::new())
            .unwrap()
            .ban(net("192.0.2.8"), HOUR, "successor")
            .unwrap();
        t.reattach_journal(&path).unwrap();
        assert!(t.is_banned(ip("192.0.2.8")));
        t.ban(net("192.0.2.9"), HOUR, "after").unwrap();
        drop(t);
        let replayed = BanTable::open(&path, CidrSet::new()).unwrap();
        for a in ["192.0.2.7", "192.0.2.8", "192.0.2.9"] {
            assert!(replayed.is_banned(ip(a)), "{a} lost");
        }
    }

    #[test]
    fn repeat_offences_survive_a_restart_and_a_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let (base, max) = (Duration::from_secs(60), HOUR);
        let t = BanTable::open(&path, CidrSet::new()).unwrap();
        assert_eq!(t.ban_offender(ip("203.0.113.9"), base, max, "hard limit"), Some(base));
        assert_eq!(
            t.ban_offender(ip("203.0.113.9"), base, max, "hard limit"),
            Some(base * 2)
        );
        assert_eq!(t.ban_offender(ip("203.0.113.10"), base, max, "hard limit"), Some(base));
        drop(t);
        // The third offence after a restart is still the third.
        let t = BanTable::open(&path, CidrSet::new()).unwrap();
        assert_eq!(
            t.ban_offender(ip("203.0.113.9"), base, max, "hard limit"),
            Some(base * 4)
        );
        // A compaction keeps the memory even of an address whose ban was lifted.
        t.unban(net("203.0.113.10")).unwrap().unwrap();
        assert!(t.compact_journal().unwrap());
        drop(t);
        let t = BanTable::open(&path, CidrSet::new()).unwrap();
        assert_eq!(
            t.ban_offender(ip("203.0.113.10"), base, max, "hard limit"),
            Some(base * 2)
        );
        assert_eq!(
            t.ban_offender(ip("203.0.113.9"), base, max, "hard limit"),
            Some(base * 8)
        );
        // Offence memories are not statements: the cluster never sees them.
        assert!(t.statements().iter().all(|s| s.op != Op::Offence));
    }

    #[test]
    fn compaction_triggers_on_growth_and_keeps_the_live_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let policy = CompactPolicy {
            factor: 4,
            min_bytes: 4096,
        };
        let t = BanTable::open_with(&path, CidrSet::new(), policy).unwrap();
        t.ban(net("198.51.100.0/24"), HOUR, "keep").unwrap();
        for _ in 0..100 {
            t.ban(net("192.0.2.1"), HOUR, "churn").unwrap();
            t.unban(net("192.0.2.1")).unwrap().unwrap();
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 8192, "journal was never compacted: {size} bytes");
        drop(t);
        let t = BanTable::open_with(&path, CidrSet::new(), policy).unwrap();
        let live: Vec<String> = t.list(None).iter().map(|b| b.prefix.to_string()).collect();
        assert_eq!(live, ["198.51.100.0/24"]);
    }

    /// A statement from another node, timed to the millisecond as the journal keeps it.
    fn remote(op: Op, prefix: &str, origin: &str, version: u64) -> Statement {
        let now = journal::from_unix_ms(unix_ms(SystemTime::now()));
        Statement {
            op,
            prefix: net(prefix),
            until: now + HOUR,
            reason: format!("from {origin}"),
            origin: origin.into(),
            created: now,
            version,
            attachment: Some(format!("sig-{origin}-{version}")),
        }
    }

    #[test]
    fn replay_keeps_origin_version_and_attachment_of_remote_statements() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let far = now_micros() + 10_000_000;
        let ban = remote(Op::Ban, "198.51.100.0/24", "node-a", far);
        let lift = remote(Op::Unban, "203.0.113.9/32", "node-b", far + 1);
        {
            let t = BanTable::open(&path, CidrSet::new()).unwrap();
            t.ban(net("192.0.2.1"), HOUR, "mine").unwrap();
            assert_eq!(t.apply_remote(ban.clone()).unwrap(), RemoteOutcome::Applied);
            assert_eq!(t.apply_remote(lift.clone()).unwrap(), RemoteOutcome::Applied);
            assert_eq!(t.stats().added_cluster, 1);
        }
        let t = BanTable::open(&path, CidrSet::new()).unwrap();
        let (_, b) = t.lookup(ip("198.51.100.7")).unwrap();
        assert_eq!(
            (
                b.origin.as_str(),
                b.version,
                b.attachment.as_deref(),
                b.created,
                b.until
            ),
            ("node-a", far, ban.attachment.as_deref(), ban.created, ban.until)
        );
        assert_eq!(t.lookup(ip("192.0.2.1")).unwrap().1.origin, LOCAL_ORIGIN);
        let mut st = t.statements();
        st.sort_by_key(|s| s.version);
        assert_eq!(st.len(), 3);
        assert_eq!(
            (st[0].origin.as_str(), st[0].attachment.as_deref()),
            (LOCAL_ORIGIN, None)
        );
        assert_eq!(st[1], ban);
        assert_eq!(st[2], lift);
        // The tombstone survived the restart: an older ban of that prefix from anyone stays out.
        let replay = remote(Op::Ban, "203.0.113.9/32", "node-z", far);
        assert_eq!(t.apply_remote(replay).unwrap(), RemoteOutcome::Stale);
        // Versions heard from others raise the local clock, so a local statement outranks them.
        assert!(t.ban(net("192.0.2.2"), HOUR, "later").unwrap().version > far + 1);
    }

    #[test]
    fn an_older_or_equal_remote_statement_is_stale() {
        let t = BanTable::default();
        assert_eq!(
            t.apply_remote(remote(Op::Ban, "192.0.2.0/24", "node-b", 10)).unwrap(),
            RemoteOutcome::Applied
        );
        for (origin, v) in [("node-b", 9), ("node-b", 10), ("node-a", 10)] {
            let s = remote(Op::Unban, "192.0.2.0/24", origin, v);
            assert_eq!(t.apply_remote(s).unwrap(), RemoteOutcome::Stale, "{origin} {v}");
        }
        assert!(t.is_banned(ip("192.0.2.1")));
        // Equal versions break on the origin, as on every other node.
        let s = remote(Op::Ban, "192.0.2.0/24", "node-c", 10);
        assert_eq!(t.apply_remote(s).unwrap(), RemoteOutcome::Applied);
        assert_eq!(t.lookup(ip("192.0.2.1")).unwrap().1.origin, "node-c");
        let gone = Statement {
            until: SystemTime::now() - Duration::from_secs(1),
            ..remote(Op::Ban, "198.51.100.1", "node-c", 99)
        };
        assert_eq!(t.apply_remote(gone).unwrap(), RemoteOutcome::Expired);
        assert!(!t.is_banned(ip("198.51.100.1")));
        let local = Statement {
            origin: LOCAL_ORIGIN.into(),
            ..remote(Op::Ban, "198.51.100.2", "x", 99)
        };
        assert!(matches!(t.apply_remote(local), Err(BanError::ReservedOrigin)));
    }

    #[test]
    fn a_remote_unban_beats_an_older_ban_and_its_tombstone_blocks_replays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let t = BanTable::open(&path, CidrSet::new()).unwrap();
        let local = t.ban(net("192.0.2.9"), HOUR, "local").unwrap();
        let lift = remote(Op::Unban, "192.0.2.9/32", "node-a", local.version + 1);
        assert_eq!(t.apply_remote(lift).unwrap(), RemoteOutcome::Applied);
        assert!(!t.is_banned(ip("192.0.2.9")));
        assert_eq!(t.stats().lifted, 1);
        let replay = remote(Op::Ban, "192.0.2.9/32", "node-b", local.version);
        assert_eq!(t.apply_remote(replay.clone()).unwrap(), RemoteOutcome::Stale);
        assert!(!t.is_banned(ip("192.0.2.9")));
        drop(t);
        let t = BanTable::open(&path, CidrSet::new()).unwrap();
        assert!(!t.is_banned(ip("192.0.2.9")));
        assert_eq!(t.apply_remote(replay).unwrap(), RemoteOutcome::Stale);
        assert!(!t.is_banned(ip("192.0.2.9")));
        // A newer ban from anyone still wins over the tombstone.
        let newer = remote(Op::Ban, "192.0.2.9/32", "node-b", local.version + 2);
        assert_eq!(t.apply_remote(newer).unwrap(), RemoteOutcome::Applied);
        assert!(t.is_banned(ip("192.0.2.9")));
    }

    #[test]
    fn the_feed_carries_local_statements_only_and_reports_lag() {
        let t = BanTable::default();
        let mut rx = t.subscribe();
        let b = t.ban(net("192.0.2.1"), HOUR, "admin").unwrap();
        t.apply_remote(remote(Op::Ban, "198.51.100.0/24", "node-a", 1)).unwrap();
        t.apply_remote(remote(Op::Unban, "198.51.100.0/24", "node-a", 2))
            .unwrap();
        t.ban_offender(ip("192.0.2.2"), HOUR, HOUR, "session").unwrap();
        let lifted = t.unban(net("192.0.2.1")).unwrap().unwrap();
        assert_eq!(rx.try_recv().unwrap(), BanChange::Ban(b));
        match rx.try_recv().unwrap() {
            BanChange::Ban(r) => assert_eq!((r.prefix, r.origin.as_str()), (net("192.0.2.2"), LOCAL_ORIGIN)),
            other => panic!("{other:?}"),
        }
        match rx.try_recv().unwrap() {
            BanChange::Unban {
                prefix,
                lifted: l,
                version,
                ..
            } => {
                assert_eq!((prefix, &l), (net("192.0.2.1"), &lifted));
                assert!(version > l.version);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Empty)));
        // A subscriber that falls behind is told so (and recovers from `statements`).
        for i in 0..=FEED_CAPACITY as u32 {
            t.ban(
                IpNetwork::from(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes())),
                HOUR,
                "flood",
            )
            .unwrap();
        }
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Lagged(_))));
    }

    #[test]
    fn a_batch_is_judged_in_order_and_journaled_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let t = BanTable::open(&path, CidrSet::from_nets([net("10.0.0.0/8")])).unwrap();
        let out = t
            .apply_remote_batch(vec![
                remote(Op::Ban, "192.0.2.1", "node-a", 5),
                remote(Op::Unban, "192.0.2.1", "node-a", 6),
                remote(Op::Ban, "192.0.2.1", "node-a", 4),
                remote(Op::Ban, "10.0.0.1", "node-a", 7),
                remote(Op::Ban, "192.0.2.2", "node-b", 8),
            ])
            .unwrap();
        let out: Vec<String> = out.into_iter().map(|o| format!("{o:?}")).collect();
        assert_eq!(out[..3], ["Ok(Applied)", "Ok(Applied)", "Ok(Stale)"]);
        assert!(out[3].starts_with("Err(Allowlisted"), "{}", out[3]);
        assert_eq!(out[4], "Ok(Applied)");
        assert!(!t.is_banned(ip("192.0.2.1")) && t.is_banned(ip("192.0.2.2")));
        drop(t);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 3);
        let t = BanTable::open(&path, CidrSet::new()).unwrap();
        assert!(!t.is_banned(ip("192.0.2.1")) && t.is_banned(ip("192.0.2.2")));
    }

    #[test]
    fn never_auto_networks_are_spared_automatic_bans_only() {
        let t = BanTable::new(CidrSet::new()).with_limits(BanLimits {
            escalate_after: 2,
            ..BanLimits::default()
        });
        t.set_never_auto(CidrSet::from_nets([net("192.0.2.7")]));
        assert_eq!(t.ban_offender(ip("192.0.2.7"), HOUR, HOUR, "x"), None);
        assert!(!t.is_banned(ip("192.0.2.7")));
        // Two strangers of the /24 would escalate to the group, which holds the spared address: not done.
        assert_eq!(t.ban_offender(ip("192.0.2.8"), HOUR, HOUR, "x"), Some(HOUR));
        assert_eq!(t.ban_offender(ip("192.0.2.9"), HOUR, HOUR, "x"), Some(HOUR));
        assert!(t.is_banned(ip("192.0.2.9")) && !t.is_banned(ip("192.0.2.7")));
        // An operator's ban still applies.
        t.ban(net("192.0.2.7"), HOUR, "operator").unwrap();
        assert!(t.is_banned(ip("192.0.2.7")));
    }

    #[test]
    fn allowlisted_networks_refuse_remote_bans_too() {
        let t = BanTable::new(CidrSet::from_nets([net("10.0.0.0/8")]));
        let r = t.apply_remote(remote(Op::Ban, "10.1.0.0/16", "node-a", 5));
        assert!(matches!(r, Err(BanError::Allowlisted { .. })), "{r:?}");
        assert!(!t.is_banned(ip("10.1.2.3")));
        assert_eq!((t.stats().rejected_allowlisted, t.stats().added_cluster), (1, 0));
        // A lift is never refused; it only records that the prefix is clear.
        let lift = remote(Op::Unban, "10.1.0.0/16", "node-a", 6);
        assert_eq!(t.apply_remote(lift).unwrap(), RemoteOutcome::Applied);
        assert_eq!(t.statements().len(), 1);
    }

    /// Not a timing assertion (performance targets live in the benchmarks): prints the cost so the numbers can be read from test output.
    #[test]
    fn lookup_and_replay_cost_with_100k_bans() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        const N: u32 = 100_000;
        {
            // Written straight to the journal: 100,000 fsyncs would measure the disk, not the table.
            let (mut j, _) = Journal::open(&path, CompactPolicy::default()).unwrap();
            let now = SystemTime::now();
            let entries: Vec<Entry> = (0..N)
                .map(|i| Entry {
                    op: Op::Ban,
                    prefix: IpNetwork::from(IpAddr::from((0x0a00_0000u32 + i * 7).to_be_bytes())),
                    until: now + HOUR,
                    reason: "cost hard limit".into(),
                    origin: LOCAL_ORIGIN.into(),
                    created: now,
                    version: u64::from(i) + 1,
                    attachment: None,
                })
                .collect();
            j.compact(entries.iter()).unwrap();
        }
        let started = Instant::now();
        let t = BanTable::open(&path, CidrSet::new()).unwrap();
        let replay = started.elapsed();
        assert_eq!(t.len(), N as usize);
        let probes: Vec<IpAddr> = (0..N)
            .map(|i| IpAddr::from((0x0a00_0000u32 + i * 3).to_be_bytes()))
            .collect();
        let started = Instant::now();
        let mut hits = 0usize;
        for _ in 0..5 {
            for p in &probes {
                hits += usize::from(t.lookup(*p).is_some());
            }
        }
        let per = started.elapsed().as_nanos() / (5 * u128::from(N));
        assert!(hits > 0);
        let started = Instant::now();
        let mut banned = 0usize;
        for _ in 0..5 {
            for p in &probes {
                banned += usize::from(t.is_banned(*p));
            }
        }
        let per_accept = started.elapsed().as_nanos() / (5 * u128::from(N));
        assert_eq!(banned, hits);
        println!(
            "bans: replay of {N} journal records {replay:?}; with {N} bans: lookup {per} ns, is_banned (accept \
             path) {per_accept} ns"
        );
    }
}
