//! Cost ledger: per-session cost, per-group sharing and retained cost, and the throttle they imply.
//!
//! Costs decay continuously, but nothing ticks: each value is stored with the time it was last settled and
//! decayed on read. That keeps an idle session free (no timer per connection) and makes every charge see the
//! cost as of now, with no lag.
//!
//! Cluster-wide cost: each group also holds the latest figure every peer gateway reported
//! for it. A figure counts as reported until the same peer's next report replaces or drops it, or until it
//! expires (the peer stopped reporting: down, partitioned, or the group fell below its sharing threshold
//! and the report that said so was lost). Figures are never decayed here: reports come every second or so
//! and carry the peer's own decayed value, so decaying them again would count decay twice. Only local cost
//! is ever reported, so figures do not echo between gateways.
//!
//! Lock order is shard → group → session. A grouped session's charge takes its group's lock, then its own
//! session's; the group keeps its live sessions' costs summed as they change (see [`FallingSum`]), so a charge
//! costs O(log members) rather than a walk over every member, and never touches a lock shared by unrelated
//! clients.

use super::falling_sum::{FallingSum, Slot};
use super::tier::{Tier, TierMatch, Tiers};
use crate::wire::acl::CidrSet;
use crate::wire::addr;
use arc_swap::ArcSwap;
use futures_util::task::AtomicWaker;
use ipnetwork::IpNetwork;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

// Defaults follow ElectrumX, so an operator's COST_* settings carry over.
/// Default `soft_limit` (ElectrumX `COST_SOFT_LIMIT`).
pub const DEFAULT_SOFT_LIMIT: f64 = 1000.0;
/// Default `hard_limit` (ElectrumX `COST_HARD_LIMIT`).
pub const DEFAULT_HARD_LIMIT: f64 = 10000.0;
/// Default `max_sleep`: the longest a throttled request sleeps in its slot (ElectrumX `REQUEST_SLEEP`).
pub const DEFAULT_MAX_SLEEP: std::time::Duration = std::time::Duration::from_millis(2500);
/// Default `initial_concurrency` (ElectrumX `INITIAL_CONCURRENT`).
pub const DEFAULT_INITIAL_CONCURRENCY: u32 = 10;
/// Default `bandwidth_unit`: bytes in or out that cost one unit (ElectrumX `BW_UNIT_COST`).
pub const DEFAULT_BANDWIDTH_UNIT: u64 = 5000;
/// Default `request_timeout`: a request not served by then gets -102.
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Default `retained_drain`: what a group's retained cost loses, 600 units per 300 s.
pub const DEFAULT_RETAINED_DRAIN_UNITS: u32 = 600;
pub const DEFAULT_RETAINED_DRAIN_PER: std::time::Duration = std::time::Duration::from_secs(300);
/// Default `connection_cost`, `error_cost` and `parse_error_cost`.
pub const DEFAULT_CONNECTION_COST: f64 = 5.0;
pub const DEFAULT_ERROR_COST: f64 = 100.0;
pub const DEFAULT_PARSE_ERROR_COST: f64 = 1000.0;
/// Default `max_subscriptions_per_group`.
pub const DEFAULT_MAX_SUBSCRIPTIONS_PER_GROUP: usize = 75_000;

// The node-fee model follows the ledger node's own resource manager, so its operators' intuition carries over.
/// Default `[cost.ledger] window`: fees decay exponentially with this time constant, so a steady C fee per
/// second settles at a balance of about C.
pub const DEFAULT_FEE_WINDOW: Duration = Duration::from_secs(32);
/// Default `[cost.ledger] warning`: the balance at which replies carry the load warning.
pub const DEFAULT_FEE_WARNING: f64 = 5000.0;
/// Default `[cost.ledger] drop`: the balance at which the client is cut off and banned.
pub const DEFAULT_FEE_DROP: f64 = 25000.0;
/// Default `[cost.ledger] remember`: how long an inactive client's balance is kept.
pub const DEFAULT_FEE_REMEMBER: Duration = Duration::from_secs(300);

/// Electrum cost model settings, shared by every Electrum front.
#[derive(Debug, Clone)]
pub struct CostConfig {
    pub soft_limit: f64,
    pub hard_limit: f64,
    pub max_sleep: Duration,
    pub initial_concurrency: u32,
    pub bytes_per_unit: f64,
    pub request_timeout: Duration,
    pub retained_drain_per_sec: f64,
    pub group_private: bool,
    pub connection_cost: f64,
    pub error_cost: f64,
    pub parse_error_cost: f64,
    pub max_subscriptions_per_group: usize,
    pub method_costs: HashMap<String, f64>,
    pub fee: FeeParams,
}

/// Time source, so tests can advance time. Monotonic, as a Duration since an arbitrary epoch.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Duration;

    /// `at`, a moment its caller read from tokio's clock just now, as this clock's time: a session charges
    /// with the time it read when its event came instead of reading the clock again. A clock that does
    /// not follow tokio's reads itself.
    fn at(&self, at: tokio::time::Instant) -> Duration {
        let _ = at;
        self.now()
    }
}

/// The real clock. `Instant` rather than wall time, so a system clock step cannot refund or double anyone's
/// decay.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    epoch: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock { epoch: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}

/// A clock that moves only when told to; starts at 0.
#[derive(Debug, Default)]
pub struct TestClock {
    nanos: AtomicU64,
}

impl TestClock {
    pub fn new() -> TestClock {
        TestClock::default()
    }

    pub fn advance(&self, d: Duration) {
        self.nanos.fetch_add(nanos(d), Ordering::SeqCst);
    }

    pub fn set(&self, d: Duration) {
        self.nanos.store(nanos(d), Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone)]
pub struct CostParams {
    /// Effective cost at which throttling starts. `soft = hard = 0` disables throttling and the hard limit.
    pub soft_limit: f64,
    /// Effective cost at which the session is refused (`over_hard`); also scales the decay rate.
    pub hard_limit: f64,
    /// Sleep per request at the hard limit.
    pub max_sleep: Duration,
    /// Concurrent requests allowed below the soft limit.
    pub initial_concurrency: u32,
    /// Bytes (in or out) that cost one unit.
    pub bytes_per_unit: f64,
    /// Units per second a group's retained cost drains.
    pub retained_drain: f64,
    pub group_prefix_v4: u8,
    pub group_prefix_v6: u8,
    /// Whether private, loopback, link-local and unique-local clients are grouped. Off by default because
    /// such clients usually sit behind one NAT or proxy on the operator's side, where a /24 means nothing.
    pub group_private: bool,
    /// Allowlisted networks: no group accounting, but each session still has its own hard limit.
    pub exempt: CidrSet,
    /// The node-fee profile's balance, thresholds and decay.
    pub fee: FeeParams,
    /// Trusted tiers: their clients get a multiple of the limits above and a group of their own.
    pub tiers: Arc<Tiers>,
}

/// The node-fee profile: per-command fees summed into a balance that decays exponentially.
///
/// Both profiles charge one ledger. To compare them, each is read as a fraction of its own cut-off: a group at
/// half the fee drop threshold and half the Electrum hard limit is at its limit on either front. A group's fee
/// balance therefore counts `hard_limit / drop` Electrum units per unit, which is also how it travels in
/// cluster cost reports (peers report in Electrum units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeeParams {
    /// Time constant of the exponential decay.
    pub window: Duration,
    /// Balance at which replies carry the load warning; 0 never.
    pub warning: f64,
    /// Balance at which the client is cut off; 0 never.
    pub drop: f64,
    /// An inactive balance is forgotten after this long.
    pub remember: Duration,
}

impl Default for FeeParams {
    fn default() -> Self {
        FeeParams {
            window: DEFAULT_FEE_WINDOW,
            warning: DEFAULT_FEE_WARNING,
            drop: DEFAULT_FEE_DROP,
            remember: DEFAULT_FEE_REMEMBER,
        }
    }
}

impl FeeParams {
    /// Electrum units one unit of fee balance counts for, or 0 when either model has no cut-off to scale by.
    fn electrum_per_unit(&self, hard_limit: f64) -> f64 {
        if self.drop > 0.0 && hard_limit > 0.0 {
            hard_limit / self.drop
        } else {
            0.0
        }
    }
}

/// Fees charged and not yet decayed, as of `at`. The balance is `sum / window` (in seconds), as in the node's
/// own decaying sample: one charge of C raises it by C / window, and a steady C per second settles at C.
#[derive(Debug, Default, Clone, Copy)]
struct FeeSample {
    sum: f64,
    at: Duration,
}

impl FeeSample {
    fn value(&self, now: Duration, f: &FeeParams) -> f64 {
        if self.sum <= 0.0 {
            return 0.0;
        }
        let dt = now.saturating_sub(self.at);
        if dt >= f.remember {
            return 0.0;
        }
        let w = f.window.as_secs_f64();
        if w > 0.0 {
            self.sum * (-dt.as_secs_f64() / w).exp()
        } else {
            0.0
        }
    }

    /// The balance as of `now`.
    fn balance(&self, now: Duration, f: &FeeParams) -> f64 {
        let w = f.window.as_secs_f64();
        if w > 0.0 {
            self.value(now, f) / w
        } else {
            0.0
        }
    }

    fn settle(&mut self, now: Duration, f: &FeeParams) {
        self.sum = self.value(now, f);
        self.at = self.at.max(now);
    }

    /// `cost` (Electrum units) with this balance added in the same units. Costs nothing while no fee was
    /// ever charged, which is every Electrum session's case.
    fn added_to(&self, cost: f64, now: Duration, p: &CostParams) -> f64 {
        let fee = self.balance(now, &p.fee);
        if fee > 0.0 {
            cost + fee * p.fee.electrum_per_unit(p.hard_limit)
        } else {
            cost
        }
    }

    fn add(&mut self, now: Duration, f: &FeeParams, sum: f64) {
        self.settle(now, f);
        self.sum += sum;
    }
}

/// Where an account stands in the node-fee model: its group's balance (its own when ungrouped), with the
/// Electrum cost of the same group and peers' reports counted in, and the thresholds it has reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeeLoad {
    pub balance: f64,
    /// At or over the warning threshold: replies should carry the load warning.
    pub warning: bool,
    /// At or over the drop threshold: cut the client off. Coincides with [`Throttle::over_hard`].
    pub drop: bool,
}

impl FeeLoad {
    /// `scale` multiplies both thresholds (a tier's budget); infinite means neither is ever reached.
    fn compute(balance: f64, f: &FeeParams, scale: f64) -> FeeLoad {
        FeeLoad {
            balance,
            warning: f.warning > 0.0 && balance >= f.warning * scale,
            drop: f.drop > 0.0 && balance >= f.drop * scale,
        }
    }
}

impl Default for CostParams {
    fn default() -> Self {
        CostParams {
            soft_limit: 1000.0,
            hard_limit: 10000.0,
            max_sleep: Duration::from_millis(2500),
            initial_concurrency: 10,
            bytes_per_unit: 5000.0,
            retained_drain: 600.0 / 300.0,
            group_prefix_v4: 24,
            group_prefix_v6: 48,
            group_private: false,
            exempt: CidrSet::new(),
            fee: FeeParams::default(),
            tiers: Arc::new(Tiers::default()),
        }
    }
}

impl CostParams {
    /// Units per second a session holding `subs` subscriptions sheds. Subscriptions slow it because a wallet
    /// holding many of them costs the backend notifications the per-request charges never see.
    fn decay_rate(&self, subs: u32) -> f64 {
        if self.hard_limit > 0.0 {
            self.hard_limit / (10000.0 + 5.0 * f64::from(subs))
        } else {
            0.0
        }
    }

    /// The group a session's cost is shared with, or `None` when it is accounted alone.
    fn group_for(&self, ip: IpAddr) -> Option<IpAddr> {
        if self.exempt.contains(ip) || (!self.group_private && is_local(ip)) {
            return None;
        }
        Some(addr::group_of(ip, self.group_prefix_v4, self.group_prefix_v6))
    }
}

fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_private() || a.is_loopback() || a.is_link_local() || a.is_unspecified(),
        IpAddr::V6(a) => a.is_loopback() || a.is_unique_local() || a.is_unicast_link_local() || a.is_unspecified(),
    }
}

/// What a session must do before its next request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttle {
    /// Position between the soft (0) and hard (1) limits. Not clamped, so callers can see how far past the
    /// hard limit a session is.
    pub frac: f64,
    /// Requests the session may have in flight; at least 1 so a throttled session still progresses.
    pub concurrency: u32,
    /// Delay each request serves while holding its slot.
    pub sleep: Duration,
    /// The session has reached the hard limit: refuse the next request and close.
    pub over_hard: bool,
}

impl Throttle {
    pub fn compute(effective: f64, p: &CostParams) -> Throttle {
        Self::compute_scaled(effective, p, 1.0)
    }

    /// As [`Throttle::compute`] with the soft and hard limits multiplied by `scale` (a tier's budget). An
    /// infinite scale (the tier is exempt from cost limits) never throttles.
    pub fn compute_scaled(effective: f64, p: &CostParams, scale: f64) -> Throttle {
        if !scale.is_finite() {
            return Throttle {
                frac: 0.0,
                concurrency: p.initial_concurrency.max(1),
                sleep: Duration::ZERO,
                over_hard: false,
            };
        }
        let (soft, hard) = (p.soft_limit * scale, p.hard_limit * scale);
        let span = hard - soft;
        // `f64::max` maps a NaN to 0, so garbage parameters cannot make `mul_f64` below panic.
        let frac = if span > 0.0 {
            ((effective - soft) / span).max(0.0)
        } else {
            0.0
        };
        let over_hard = hard > 0.0 && effective >= hard;
        if frac == 0.0 {
            // Below the soft limit, as nearly every charge is: nothing to scale (what follows gives the
            // same, through a float-to-duration conversion on every charge).
            return Throttle {
                frac,
                concurrency: p.initial_concurrency.max(1),
                sleep: Duration::ZERO,
                over_hard,
            };
        }
        let f = frac.min(1.0);
        let concurrency = ((1.0 - f) * f64::from(p.initial_concurrency)).ceil() as u32;
        Throttle {
            frac,
            concurrency: concurrency.max(1),
            sleep: p.max_sleep.mul_f64(f),
            over_hard,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a lock was held leaves at worst one stale number; refusing all later accounting would be worse.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One session's cost as of `at`, and its node fees.
#[derive(Debug)]
struct Meter {
    cost: f64,
    at: Duration,
    subs: u32,
    fee: FeeSample,
    /// A tier's session decays this many times as fast, as it has that many times the budget (1 otherwise).
    decay: f64,
}

impl Meter {
    fn value(&self, now: Duration, p: &CostParams) -> f64 {
        let dt = now.saturating_sub(self.at).as_secs_f64();
        (self.cost - p.decay_rate(self.subs) * self.decay * dt).max(0.0)
    }

    /// Cost and fees together, in Electrum units.
    fn load(&self, now: Duration, p: &CostParams) -> f64 {
        self.fee.added_to(self.value(now, p), now, p)
    }

    fn settle(&mut self, now: Duration, p: &CostParams) {
        self.cost = self.value(now, p);
        self.at = self.at.max(now);
    }

    /// Units per second this meter sheds.
    fn slope(&self, p: &CostParams) -> f64 {
        p.decay_rate(self.subs) * self.decay
    }
}

#[derive(Debug)]
struct Session {
    meter: Mutex<Meter>,
    /// This session's place in its group's sum of live costs; `None` when ungrouped.
    slot: Option<Slot>,
    /// Set when the session's group (or the session alone, if ungrouped) has reached the hard limit, so a
    /// session that sends nothing can be cut without waiting for its next line.
    alerted: AtomicBool,
    waker: AtomicWaker,
}

impl Session {
    /// Does nothing for a session told already and not yet listening: while a group stays over the hard
    /// limit every charge of every member alerts the whole group, and two atomic writes per member per
    /// charge (the flag and the waker's) made a wave of cut-off sessions cost the square of its size. A
    /// plain read of a flag already set costs nothing of the sort.
    fn alert(&self) {
        if !self.alerted.load(Ordering::Acquire) && !self.alerted.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }
}

/// A group's retained cost as of `at`, and the fees of its departed sessions (which decay on their own).
#[derive(Debug)]
struct Pool {
    value: f64,
    at: Duration,
    fee: FeeSample,
    /// A tier group drains this many times as fast (1 otherwise).
    drain: f64,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            value: 0.0,
            at: Duration::ZERO,
            fee: FeeSample::default(),
            drain: 1.0,
        }
    }
}

impl Pool {
    fn value(&self, now: Duration, p: &CostParams) -> f64 {
        let dt = now.saturating_sub(self.at).as_secs_f64();
        (self.value - p.retained_drain.max(0.0) * self.drain * dt).max(0.0)
    }

    /// Retained cost and fees together, in Electrum units.
    fn load(&self, now: Duration, p: &CostParams) -> f64 {
        self.fee.added_to(self.value(now, p), now, p)
    }

    fn settle(&mut self, now: Duration, p: &CostParams) {
        self.value = self.value(now, p);
        self.at = self.at.max(now);
    }
}

/// A peer gateway's latest figure for a group.
#[derive(Debug)]
struct Remote {
    peer: PeerId,
    value: f64,
    expires: Duration,
}

#[derive(Debug, Default)]
struct GroupState {
    members: Vec<Arc<Session>>,
    /// The members' meters, summed: each member's line is replaced whenever its meter changes.
    live: FallingSum,
    /// The hard limit the lines in `live` were drawn with (decay rates scale with it).
    live_hard: f64,
    /// Whether any member was ever charged a node fee; until then the members' fees are all zero and
    /// need no walk.
    fees: bool,
    retained: Pool,
    /// One entry per peer reporting this group; a handful at most, so a Vec beats a map.
    remote: Vec<Remote>,
}

impl GroupState {
    /// Redraws every member's line when the hard limit (and so every decay rate) changed since they were
    /// drawn; the old rates then apply to nobody, as a meter read with new parameters would do anyway.
    fn refresh(&mut self, p: &CostParams) {
        if self.live_hard.to_bits() == p.hard_limit.to_bits() {
            return;
        }
        self.live_hard = p.hard_limit;
        for s in &self.members {
            if let Some(slot) = s.slot {
                let m = lock(&s.meter);
                self.live.set(slot, m.cost, m.at.as_secs_f64(), m.slope(p));
            }
        }
    }

    /// Puts a member's meter, as it now stands, into the sum.
    fn redraw(&mut self, slot: Slot, m: &Meter, p: &CostParams) {
        self.live.set(slot, m.cost, m.at.as_secs_f64(), m.slope(p));
    }

    /// This gateway's share: live sessions plus retained cost, fees included, in Electrum units.
    fn local(&mut self, now: Duration, p: &CostParams) -> f64 {
        self.refresh(p);
        let mut live = self.live.total(now.as_secs_f64());
        if self.fees {
            let k = p.fee.electrum_per_unit(p.hard_limit);
            if k > 0.0 {
                let fees: f64 = self
                    .members
                    .iter()
                    .map(|s| lock(&s.meter).fee.balance(now, &p.fee))
                    .sum();
                live += fees * k;
            }
        }
        live + self.retained.load(now, p)
    }

    /// The fee balance of live and departed sessions alone.
    fn fee_balance(&self, now: Duration, p: &CostParams) -> f64 {
        let live: f64 = self
            .members
            .iter()
            .map(|s| lock(&s.meter).fee.balance(now, &p.fee))
            .sum();
        live + self.retained.fee.balance(now, &p.fee)
    }

    fn remote(&self, now: Duration) -> f64 {
        self.remote.iter().filter(|r| r.expires > now).map(|r| r.value).sum()
    }

    fn total(&mut self, now: Duration, p: &CostParams) -> f64 {
        let local = self.local(now, p);
        if self.remote.is_empty() {
            local
        } else {
            local + self.remote(now)
        }
    }

    fn is_idle(&self, now: Duration, p: &CostParams) -> bool {
        self.members.is_empty()
            && self.retained.load(now, p) <= DRAINED
            && self.retained.fee.value(now, &p.fee) <= DRAINED
            && self.remote.iter().all(|r| r.expires <= now)
    }
}

/// Identifies a peer gateway in the ledger (its cluster public key).
pub type PeerId = [u8; 32];

/// A group's cost as gateways report it to each other.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupCost {
    pub group: IpAddr,
    pub cost: f64,
}

/// What became of a peer's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteTaken {
    pub taken: usize,
    /// Repeated groups and figures past the report's cost budget.
    pub ignored: usize,
}

/// Figures above this are treated as this: a listed peer is trusted, but one bad float must not poison a group.
const MAX_REPORTED: f64 = 1e12;

#[derive(Debug, Default)]
struct Group {
    state: Mutex<GroupState>,
}

type Shard = Mutex<HashMap<IpAddr, Arc<Group>>>;

/// A tier group: the tier's name and the tier network (or, for a credential's tier, the client address).
/// Kept apart from the address groups, so a tier network never shares a key with the /24 it sits in.
type TierKey = (String, IpNetwork);

/// Spreads groups over shards so opening and closing sessions of different groups do not contend.
const SHARDS: usize = 32;

/// Below this a drained group holds nothing worth remembering.
const DRAINED: f64 = 1e-6;

/// Shared by all sessions of all fronts.
pub struct Ledger {
    params: ArcSwap<CostParams>,
    clock: Arc<dyn Clock>,
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// The groups each peer named in its last report, so a group it leaves out next time stops counting at
    /// once rather than at expiry.
    reported: Mutex<HashMap<PeerId, Vec<IpAddr>>>,
    /// Tier groups. Only opening, closing and housekeeping take this lock; charges go to the group's own.
    tiered: Mutex<HashMap<TierKey, Arc<Group>>>,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("groups", &self.groups())
            .finish_non_exhaustive()
    }
}

impl Ledger {
    pub fn new(params: CostParams, clock: Arc<dyn Clock>) -> Arc<Ledger> {
        Arc::new(Ledger {
            params: ArcSwap::from_pointee(params),
            clock,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            reported: Mutex::new(HashMap::new()),
            tiered: Mutex::new(HashMap::new()),
        })
    }

    /// Takes effect on the next charge or read. A session's group is fixed when it opens, so prefix, exempt
    /// and `group_private` changes apply to new sessions only. Groups that new limits put over the hard limit
    /// are alerted now, so their idle sessions are cut without waiting for their next request (an ungrouped
    /// session is checked at its next request).
    pub fn set_params(&self, params: CostParams) {
        let p = Arc::new(params);
        self.params.store(p.clone());
        if p.hard_limit <= 0.0 {
            return;
        }
        let now = self.clock.now();
        for shard in self.shards.iter() {
            let groups: Vec<Arc<Group>> = lock(shard).values().cloned().collect();
            for g in groups {
                let mut st = lock(&g.state);
                if !st.members.is_empty() && st.total(now, &p) >= p.hard_limit {
                    for m in &st.members {
                        m.alert();
                    }
                }
            }
        }
    }

    pub fn params(&self) -> Arc<CostParams> {
        self.params.load_full()
    }

    pub fn now(&self) -> Duration {
        self.clock.now()
    }

    fn shard(&self, group: IpAddr) -> &Shard {
        &self.shards[(self.hasher.hash_one(group) % SHARDS as u64) as usize]
    }

    /// A new session; charges nothing itself. A client inside a tier network is accounted in its tier.
    pub fn open(self: &Arc<Self>, ip: IpAddr) -> Account {
        let ip = addr::canonical(ip);
        let p = self.params.load();
        if let Some(m) = p.tiers.lookup(ip) {
            return self.open_tier(ip, &m);
        }
        self.open_plain(ip, &p)
    }

    /// A new session in `tier`'s group `tier.group`, with the tier's budget; for a tier found by an API
    /// credential ([`Tiers::by_credential`]) as for one found by address.
    pub fn open_tier(self: &Arc<Self>, ip: IpAddr, tier: &TierMatch<'_>) -> Account {
        let ip = addr::canonical(ip);
        let scale = tier.tier.cost.factor();
        let decay = if scale.is_finite() { scale } else { 1.0 };
        let key = (tier.tier.name.clone(), tier.group);
        let (g, session) = {
            let mut map = lock(&self.tiered);
            let g = map
                .entry(key)
                .or_insert_with(|| {
                    let g = Group::default();
                    lock(&g.state).retained.drain = decay;
                    Arc::new(g)
                })
                .clone();
            let session = self.join(&g, decay);
            (g, session)
        };
        tier.tier.metrics.session();
        Account {
            ledger: self.clone(),
            session,
            group: Some((None, g)),
            ip,
            tier: Some((tier.tier.clone(), tier.group)),
            scale,
        }
    }

    fn session(&self, decay: f64, slot: Option<Slot>) -> Arc<Session> {
        Arc::new(Session {
            meter: Mutex::new(Meter {
                cost: 0.0,
                at: self.clock.now(),
                subs: 0,
                fee: FeeSample::default(),
                decay,
            }),
            slot,
            alerted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        })
    }

    /// A new session, member of `g`.
    fn join(&self, g: &Group, decay: f64) -> Arc<Session> {
        let mut st = lock(&g.state);
        let slot = st.live.insert();
        let session = self.session(decay, Some(slot));
        st.members.push(session.clone());
        session
    }

    fn open_plain(self: &Arc<Self>, ip: IpAddr, p: &CostParams) -> Account {
        let mut session = None;
        let group = p.group_for(ip).map(|key| {
            // The member is added under the shard lock so housekeeping cannot drop the group between lookup
            // and join, which would leave this session counting into an orphan.
            let mut shard = lock(self.shard(key));
            let g = shard.entry(key).or_default().clone();
            session = Some(self.join(&g, 1.0));
            (Some(key), g)
        });
        let session = session.unwrap_or_else(|| self.session(1.0, None));
        Account {
            ledger: self.clone(),
            session,
            group,
            ip,
            tier: None,
            scale: 1.0,
        }
    }

    fn find(&self, group: IpAddr) -> Option<Arc<Group>> {
        lock(self.shard(group)).get(&group).cloned()
    }

    /// Live sessions' decayed cost plus retained cost of `group` (a network address as [`Account::group`]
    /// returns it).
    pub fn group_cost(&self, group: IpAddr) -> f64 {
        let Some(g) = self.find(group) else { return 0.0 };
        let p = self.params.load();
        let now = self.clock.now();
        let total = lock(&g.state).total(now, &p);
        total
    }

    pub fn retained(&self, group: IpAddr) -> f64 {
        let Some(g) = self.find(group) else { return 0.0 };
        let p = self.params.load();
        let now = self.clock.now();
        let v = lock(&g.state).retained.value(now, &p);
        v
    }

    /// The figures peers reported for `group` and that still count.
    pub fn remote_cost(&self, group: IpAddr) -> f64 {
        let Some(g) = self.find(group) else { return 0.0 };
        let now = self.clock.now();
        let v = lock(&g.state).remote(now);
        v
    }

    /// This gateway's own cost (live plus retained, without peers' figures) of every group at or above
    /// `threshold`, highest first, at most `max` of them: what a cluster report carries.
    pub fn local_costs(&self, threshold: f64, max: usize) -> Vec<GroupCost> {
        let p = self.params.load();
        let now = self.clock.now();
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let groups: Vec<(IpAddr, Arc<Group>)> = lock(shard).iter().map(|(k, g)| (*k, g.clone())).collect();
            for (group, g) in groups {
                let cost = lock(&g.state).local(now, &p);
                if cost >= threshold && cost > DRAINED {
                    out.push(GroupCost { group, cost });
                }
            }
        }
        if out.len() > max {
            out.select_nth_unstable_by(max, |a, b| b.cost.total_cmp(&a.cost));
            out.truncate(max);
        }
        out.sort_unstable_by(|a, b| b.cost.total_cmp(&a.cost));
        out
    }

    /// Takes a peer's report: its figures replace the ones it sent before, groups it no longer names stop
    /// counting, and every figure expires after `ttl` unless a later report renews it. Groups are mapped
    /// onto this gateway's own prefixes; networks it does not group and non-finite figures are ignored. Returns how
    /// many figures were taken.
    pub fn apply_remote(&self, peer: PeerId, figures: &[GroupCost], ttl: Duration) -> usize {
        self.apply_remote_bounded(peer, figures, ttl, None).taken
    }

    /// [`Ledger::apply_remote`] with a budget: with `Some(n)`, each figure counts at most one hard limit
    /// (beyond it a group is cut off anyway) and the report's figures together at most `n` hard
    /// limits; the rest are ignored, so a listed peer cannot cut off more than `n` groups at once. A
    /// group named twice counts once, the first time. Returns what was taken and ignored.
    pub fn apply_remote_bounded(
        &self,
        peer: PeerId,
        figures: &[GroupCost],
        ttl: Duration,
        hard_limits: Option<f64>,
    ) -> RemoteTaken {
        let p = self.params.load();
        let now = self.clock.now();
        let expires = now + ttl;
        let (per_figure, mut budget) = match hard_limits {
            Some(n) if p.hard_limit > 0.0 => (p.hard_limit, n * p.hard_limit),
            _ => (MAX_REPORTED, f64::INFINITY),
        };
        let mut named = Vec::with_capacity(figures.len());
        let mut seen = std::collections::HashSet::with_capacity(figures.len());
        let mut ignored = 0usize;
        for f in figures {
            if !f.cost.is_finite() || f.cost <= 0.0 {
                continue;
            }
            // The same grouping as local sessions get: a figure for a network no session here would join
            // (exempt, or private while `group_private` is off) would only take memory.
            let Some(key) = p.group_for(addr::canonical(f.group)) else {
                continue;
            };
            if budget <= 0.0 || !seen.insert(key) {
                ignored += 1;
                continue;
            }
            let value = f.cost.min(MAX_REPORTED).min(per_figure).min(budget);
            budget -= value;
            {
                // Under the shard lock (shard → group is the lock order), so housekeeping cannot drop the
                // group between lookup and update and leave the figure in an orphan.
                let mut shard = lock(self.shard(key));
                let g = shard.entry(key).or_default();
                let mut st = lock(&g.state);
                match st.remote.iter_mut().find(|r| r.peer == peer) {
                    Some(r) => {
                        r.value = value;
                        r.expires = expires;
                    }
                    None => st.remote.push(Remote { peer, value, expires }),
                }
                // The peers' figure alone can push the group over: its local sessions must hear of it now,
                // not at their next request.
                if !st.members.is_empty() && p.hard_limit > 0.0 && st.total(now, &p) >= p.hard_limit {
                    for m in &st.members {
                        m.alert();
                    }
                }
            }
            named.push(key);
        }
        let taken = named.len();
        named.sort_unstable();
        named.dedup();
        let before = lock(&self.reported).insert(peer, named.clone()).unwrap_or_default();
        for gone in before.into_iter().filter(|k| named.binary_search(k).is_err()) {
            if let Some(g) = self.find(gone) {
                lock(&g.state).remote.retain(|r| r.peer != peer);
            }
        }
        RemoteTaken { taken, ignored }
    }

    /// Forgets everything `peer` reported (it left the cluster or cost sharing was turned off).
    pub fn forget_remote(&self, peer: PeerId) {
        let before = lock(&self.reported).remove(&peer).unwrap_or_default();
        for k in before {
            if let Some(g) = self.find(k) {
                lock(&g.state).remote.retain(|r| r.peer != peer);
            }
        }
    }

    /// Drops groups with no live session, no retained cost left and no peer figure still counting.
    pub fn housekeep(&self) {
        let p = self.params.load();
        let now = self.clock.now();
        for shard in self.shards.iter() {
            lock(shard).retain(|_, g| {
                let mut st = lock(&g.state);
                st.remote.retain(|r| r.expires > now);
                !st.is_idle(now, &p)
            });
        }
        lock(&self.tiered).retain(|_, g| !lock(&g.state).is_idle(now, &p));
    }

    /// Groups held, tier groups included.
    pub fn groups(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum::<usize>() + lock(&self.tiered).len()
    }
}

/// One session's account. Dropping it moves its (decayed) cost into its group's retained cost, so a reconnect
/// does not reset the budget.
pub struct Account {
    ledger: Arc<Ledger>,
    session: Arc<Session>,
    /// The group and its address key; a tier group has no address key.
    group: Option<(Option<IpAddr>, Arc<Group>)>,
    ip: IpAddr,
    /// The tier and the tier group's network.
    tier: Option<(Arc<Tier>, IpNetwork)>,
    /// What the soft and hard limits are multiplied by: 1, a tier's factor, or infinite (exempt).
    scale: f64,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("ip", &self.ip)
            .field("group", &self.group())
            .field("cost", &self.cost())
            .finish()
    }
}

impl Account {
    /// Adds a node fee (in the fee profile's units), then returns where the group stands in that model.
    /// Non-finite or negative fees are ignored, as charges are.
    pub fn charge_fee(&self, fee: f64) -> FeeLoad {
        let p = self.ledger.params.load();
        let now = self.ledger.clock.now();
        if fee.is_finite() && fee > 0.0 {
            if let Some((_, g)) = &self.group {
                lock(&g.state).fees = true;
            }
            lock(&self.session.meter).fee.add(now, &p.fee, fee);
        }
        let load = self.fee_load_at(now, &p);
        if load.drop || Throttle::compute_scaled(self.effective_at(now, &p), &p, self.scale).over_hard {
            self.alert_group();
        }
        load
    }

    /// Where the group stands in the node-fee model now, without charging.
    pub fn fee_load(&self) -> FeeLoad {
        let p = self.ledger.params.load();
        self.fee_load_at(self.ledger.clock.now(), &p)
    }

    fn fee_load_at(&self, now: Duration, p: &CostParams) -> FeeLoad {
        let k = p.fee.electrum_per_unit(p.hard_limit);
        let balance = if k > 0.0 {
            // Everything the group costs (Electrum cost, fees, peers' reports) in fee units.
            self.effective_at(now, p) / k
        } else {
            match &self.group {
                Some((_, g)) => lock(&g.state).fee_balance(now, p),
                None => lock(&self.session.meter).fee.balance(now, &p.fee),
            }
        };
        FeeLoad::compute(balance, &p.fee, self.scale)
    }

    /// Adds `units`, then returns the throttle recomputed now. Non-finite or negative charges are ignored: a
    /// NaN would otherwise poison the whole group's cost for good.
    pub fn charge(&self, units: f64) -> Throttle {
        self.charge_under(units, &self.ledger.params.load(), self.ledger.clock.now())
    }

    /// [`Account::charge`] as of `at`, a time the caller read from tokio's clock just now.
    pub fn charge_at(&self, units: f64, at: tokio::time::Instant) -> Throttle {
        self.charge_under(units, &self.ledger.params.load(), self.ledger.clock.at(at))
    }

    /// [`Account::charge`] with the parameters already loaded (a session charges on every read and every
    /// request: one load and one lock of its meter each, not two).
    fn charge_under(&self, units: f64, p: &CostParams, now: Duration) -> Throttle {
        let added = if units.is_finite() && units > 0.0 { units } else { 0.0 };
        let add = |m: &mut Meter| {
            m.settle(now, p);
            if added > 0.0 {
                m.cost += added;
                crate::telemetry::metrics::cost_charged(added);
            }
        };
        match (&self.group, self.session.slot) {
            (Some((_, g)), Some(slot)) => {
                let mut st = lock(&g.state);
                st.refresh(p);
                {
                    let mut m = lock(&self.session.meter);
                    add(&mut m);
                    st.redraw(slot, &m, p);
                }
                let total = st.total(now, p);
                let t = Throttle::compute_scaled(total, p, self.scale);
                // The members hear of it when this charge takes the group over. While it stays over, the
                // charging session is told again and the others have been told already: telling every
                // member at every charge cost the square of the group's size.
                if t.over_hard {
                    if Throttle::compute_scaled(total - added, p, self.scale).over_hard {
                        self.session.alert();
                    } else {
                        for m in &st.members {
                            m.alert();
                        }
                    }
                }
                t
            }
            _ => {
                // Ungrouped, the session's own meter is its effective cost: read it under the same lock.
                let load = {
                    let mut m = lock(&self.session.meter);
                    add(&mut m);
                    m.load(now, p)
                };
                let t = Throttle::compute_scaled(load, p, self.scale);
                if t.over_hard {
                    self.session.alert();
                }
                t
            }
        }
    }

    /// Tells every session of the group (or this one alone, if ungrouped) that the hard limit is reached.
    fn alert_group(&self) {
        match &self.group {
            Some((_, g)) => {
                for m in &lock(&g.state).members {
                    m.alert();
                }
            }
            None => self.session.alert(),
        }
    }

    /// Ready once a charge (this session's, a group member's, or a peer gateway's report) has taken the
    /// group to the hard limit since the last time this returned Ready; registers the task to be woken
    /// then. The caller re-reads [`Account::throttle`]: decay may have brought the cost back down.
    pub fn poll_alert(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.session.alerted.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.session.waker.register(cx.waker());
        if self.session.alerted.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub fn charge_bytes(&self, n: usize) -> Throttle {
        self.charge_bytes_under(n, self.ledger.clock.now())
    }

    /// [`Account::charge_bytes`] as of `at`, a time the caller read from tokio's clock just now.
    pub fn charge_bytes_at(&self, n: usize, at: tokio::time::Instant) -> Throttle {
        self.charge_bytes_under(n, self.ledger.clock.at(at))
    }

    fn charge_bytes_under(&self, n: usize, now: Duration) -> Throttle {
        let p = self.ledger.params.load();
        let per = p.bytes_per_unit;
        let units = if per > 0.0 { n as f64 / per } else { 0.0 };
        self.charge_under(units, &p, now)
    }

    pub fn throttle(&self) -> Throttle {
        let p = self.ledger.params.load();
        let now = self.ledger.clock.now();
        Throttle::compute_scaled(self.effective_at(now, &p), &p, self.scale)
    }

    /// Own cost, decayed to now.
    pub fn cost(&self) -> f64 {
        let p = self.ledger.params.load();
        let now = self.ledger.clock.now();
        let v = lock(&self.session.meter).value(now, &p);
        v
    }

    /// Own cost plus the other live sessions of the group plus the group's retained cost, all as of now.
    pub fn effective_cost(&self) -> f64 {
        let p = self.ledger.params.load();
        self.effective_at(self.ledger.clock.now(), &p)
    }

    /// [`Account::effective_cost`] in units of this account's own budget: a tier's group with ten times
    /// the limits counts a tenth, an exempt one nothing. Comparable across groups and tiers.
    pub fn relative_cost(&self) -> f64 {
        let cost = self.effective_cost();
        if self.scale.is_finite() && self.scale > 0.0 {
            cost / self.scale
        } else {
            0.0
        }
    }

    fn effective_at(&self, now: Duration, p: &CostParams) -> f64 {
        match &self.group {
            Some((_, g)) => lock(&g.state).total(now, p),
            None => lock(&self.session.meter).load(now, p),
        }
    }

    /// Changes this session's decay rate from now on; decay up to now is settled at the old rate.
    pub fn set_subscriptions(&self, n: u32) {
        let p = self.ledger.params.load();
        let now = self.ledger.clock.now();
        let set = |m: &mut Meter| {
            m.settle(now, &p);
            m.subs = n;
        };
        match (&self.group, self.session.slot) {
            (Some((_, g)), Some(slot)) => {
                let mut st = lock(&g.state);
                st.refresh(&p);
                let mut m = lock(&self.session.meter);
                set(&mut m);
                st.redraw(slot, &m, &p);
            }
            _ => set(&mut lock(&self.session.meter)),
        }
    }

    /// The network this session's cost is shared with; `None` for exempt and ungrouped clients, and for a
    /// tier's clients (they share with their tier group alone: see [`Account::tier`]).
    pub fn group(&self) -> Option<IpAddr> {
        self.group.as_ref().and_then(|(k, _)| *k)
    }

    /// The trusted tier this session is accounted in.
    pub fn tier(&self) -> Option<&Arc<Tier>> {
        self.tier.as_ref().map(|(t, _)| t)
    }

    /// The network a tier session shares its budget with: the tier network, or its own address for a
    /// credential's tier.
    pub fn tier_group(&self) -> Option<IpNetwork> {
        self.tier.as_ref().map(|(_, n)| *n)
    }

    /// The client address, canonicalised.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let Some((_, g)) = &self.group else { return };
        let p = self.ledger.params.load();
        let now = self.ledger.clock.now();
        // Leaving and retaining happen under one lock, so a concurrent reader never sees the cost twice or not
        // at all.
        let mut st = lock(&g.state);
        let (own, own_fee) = {
            let mut m = lock(&self.session.meter);
            m.fee.settle(now, &p.fee);
            (m.value(now, &p), m.fee.sum)
        };
        if let Some(i) = st.members.iter().position(|s| Arc::ptr_eq(s, &self.session)) {
            st.members.swap_remove(i);
        }
        if let Some(slot) = self.session.slot {
            st.live.remove(slot);
        }
        st.retained.settle(now, &p);
        st.retained.value += own;
        st.retained.fee.add(now, &p.fee, own_fee);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn test_params() -> CostParams {
        CostParams {
            group_private: true,
            ..CostParams::default()
        }
    }

    fn ledger(p: CostParams) -> (Arc<Ledger>, Arc<TestClock>) {
        let clock = Arc::new(TestClock::new());
        (Ledger::new(p, clock.clone()), clock)
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Returns the 1-based index of the first request that reaches the hard limit, checking the soft-limit
    /// figures on the way.
    fn requests_until_hard(step: Duration) -> usize {
        let (l, clock) = ledger(test_params());
        let a = l.open(ip("127.0.0.2"));
        assert_eq!(a.charge(5.0).frac, 0.0);
        for n in 1..=1000 {
            clock.advance(step);
            let t = a.charge(20.0);
            if n <= 49 {
                assert_eq!(t.frac, 0.0, "request {n}");
                assert_eq!(t.concurrency, 10);
                assert_eq!(t.sleep, Duration::ZERO);
            } else if step.is_zero() {
                assert!(t.frac > 0.0, "request {n}");
            }
            if t.over_hard {
                assert!(t.frac >= 1.0);
                assert_eq!(t.concurrency, 1);
                assert_eq!(t.sleep, Duration::from_millis(2500));
                return n;
            }
        }
        panic!("never reached the hard limit");
    }

    #[test]
    fn hard_limit_without_time() {
        assert_eq!(requests_until_hard(Duration::ZERO), 500);
    }

    #[test]
    fn hard_limit_with_decay() {
        // 5 + 19.9·n ≥ 10000 first at n = 503.
        assert_eq!(requests_until_hard(Duration::from_millis(100)), 503);
    }

    #[test]
    fn soft_limit_crossed_at_fiftieth_request() {
        let (l, _) = ledger(test_params());
        let a = l.open(ip("127.0.0.2"));
        a.charge(5.0);
        for _ in 0..49 {
            assert_eq!(a.charge(20.0).frac, 0.0);
        }
        assert!(close(a.cost(), 985.0, 1e-9));
        let t = a.charge(20.0);
        assert!(close(t.frac, 5.0 / 9000.0, 1e-12));
        assert_eq!(t.concurrency, 10);
        assert!(!t.over_hard);
    }

    #[test]
    fn other_groups_are_unaffected() {
        let (l, _) = ledger(test_params());
        let a = l.open(ip("127.0.0.2"));
        let other4 = l.open(ip("127.0.1.2"));
        let other6 = l.open(ip("::1"));
        other4.charge(5.0);
        other6.charge(5.0);
        a.charge(5.0);
        for _ in 0..500 {
            a.charge(20.0);
            assert_eq!(other4.throttle().frac, 0.0);
            assert_eq!(other6.charge(0.0).frac, 0.0);
        }
        assert!(a.throttle().over_hard);
        assert_eq!(a.group(), Some(ip("127.0.0.0")));
        assert_eq!(other4.group(), Some(ip("127.0.1.0")));
        assert_eq!(other6.group(), Some(ip("::")));
        assert!(close(other4.effective_cost(), 5.0, 1e-9));
        assert!(close(other6.effective_cost(), 5.0, 1e-9));
        assert!(!other4.throttle().over_hard && !other6.throttle().over_hard);
    }

    #[test]
    fn group_shares_and_retains() {
        let (l, clock) = ledger(test_params());
        let a = l.open(ip("127.0.0.2"));
        let b = l.open(ip("127.0.0.3"));
        a.charge(6000.0);
        assert_eq!(b.cost(), 0.0);
        let t = b.throttle();
        assert!(close(t.frac, 5000.0 / 9000.0, 1e-9), "{t:?}");
        assert_eq!(t.concurrency, 5);
        assert!(close(t.sleep.as_secs_f64(), 1.3889, 1e-3), "{t:?}");
        assert!(!t.over_hard);

        drop(a);
        let g = ip("127.0.0.0");
        assert!(close(l.retained(g), 6000.0, 1e-9));
        assert!(close(b.effective_cost(), 6000.0, 1e-9));

        b.charge(50.0);
        clock.advance(Duration::from_secs(100));
        assert!(close(l.retained(g), 5800.0, 1e-6));
        // B's own 50 has decayed away over the same 100 s.
        assert_eq!(b.cost(), 0.0);
        assert!(close(b.effective_cost(), 5800.0 + b.cost(), 1e-6));
        assert!(close(l.group_cost(g), b.effective_cost(), 1e-9));

        // A reconnect from the same network inherits the retained cost.
        let a2 = l.open(ip("127.0.0.2"));
        assert!(close(a2.effective_cost(), 5800.0, 1e-6));
        clock.advance(Duration::from_secs(10_000));
        assert_eq!(a2.effective_cost(), 0.0);
    }

    #[test]
    fn mapped_ipv6_shares_with_ipv4() {
        let (l, _) = ledger(test_params());
        let a = l.open(ip("127.0.0.2"));
        let m = l.open(ip("::ffff:127.0.0.9"));
        assert_eq!(m.ip(), ip("127.0.0.9"));
        assert_eq!(m.group(), a.group());
        a.charge(3000.0);
        assert!(close(m.effective_cost(), 3000.0, 1e-9));
    }

    #[test]
    fn decay_with_pings() {
        let (l, clock) = ledger(test_params());
        let a = l.open(ip("127.0.0.2"));
        a.charge(2000.0);
        for _ in 0..60 {
            clock.advance(Duration::from_secs(10));
            a.charge(0.1);
        }
        assert!(close(a.cost(), 1400.0, 10.0), "{}", a.cost());
        assert!(close(a.cost(), 1406.0, 1e-6), "{}", a.cost());
    }

    #[test]
    fn decay_never_below_zero() {
        let (l, clock) = ledger(test_params());
        let a = l.open(ip("127.0.0.2"));
        a.charge(10.0);
        clock.advance(Duration::from_secs(100));
        assert_eq!(a.cost(), 0.0);
        a.charge(7.0);
        assert!(close(a.cost(), 7.0, 1e-12));
    }

    #[test]
    fn subscriptions_slow_decay() {
        let (l, clock) = ledger(test_params());
        let a = l.open(ip("127.0.0.2"));
        a.charge(1000.0);
        clock.advance(Duration::from_secs(10));
        a.set_subscriptions(10_000);
        // The first 10 s decayed at 1/s, before the subscriptions existed.
        assert!(close(a.cost(), 990.0, 1e-9));
        clock.advance(Duration::from_secs(60));
        let rate = (990.0 - a.cost()) / 60.0;
        assert!(close(rate, 10000.0 / 60000.0, 1e-9), "{rate}");
        a.set_subscriptions(0);
        clock.advance(Duration::from_secs(10));
        assert!(close(a.cost(), 980.0 - 10.0, 1e-9), "{}", a.cost());
    }

    #[test]
    fn ungrouped_private_address() {
        let (l, _) = ledger(CostParams::default());
        let a = l.open(ip("10.0.0.1"));
        let b = l.open(ip("10.0.0.2"));
        assert_eq!(a.group(), None);
        assert_eq!(b.group(), None);
        assert_eq!(l.groups(), 0);
        a.charge(6000.0);
        assert_eq!(b.throttle().frac, 0.0);
        assert!(close(a.effective_cost(), 6000.0, 1e-9));
        assert!(!a.charge(3999.0).over_hard);
        assert!(a.charge(1.0).over_hard);
        assert_eq!(b.effective_cost(), 0.0);
        // Nothing is retained for ungrouped clients, and public ones are still grouped.
        drop(a);
        let c = l.open(ip("10.0.0.1"));
        assert_eq!(c.effective_cost(), 0.0);
        assert!(l.open(ip("192.0.2.1")).group().is_some());
    }

    #[test]
    fn tier_has_a_multiplied_budget_and_a_group_of_its_own() {
        use crate::state::tier::{Scale, Tier, Tiers};
        let mut t = Tier::new("tor");
        t.networks = vec!["127.0.0.2/32".parse().unwrap()];
        t.cost = Scale::Times(20.0);
        let mut free = Tier::new("free");
        free.networks = vec!["127.0.9.0/28".parse().unwrap()];
        free.cost = Scale::Exempt;
        let p = CostParams {
            tiers: Arc::new(Tiers::new(vec![t, free])),
            ..test_params()
        };
        let (l, _) = ledger(p);
        let a = l.open(ip("127.0.0.2"));
        let stranger = l.open(ip("127.0.0.3"));
        assert_eq!(a.tier().map(|t| t.name.as_str()), Some("tor"));
        assert_eq!((a.group(), stranger.group()), (None, Some(ip("127.0.0.0"))));
        a.charge(5.0);
        // 5 + 20·n ≥ 20 × 10000 first at n = 9,999.75 → 10,000; the soft limit 20 × 1000 at n = 1000.
        let mut hard = None;
        for n in 1..=20_000 {
            let th = a.charge(20.0);
            if n < 1000 {
                assert_eq!(th.frac, 0.0, "request {n}");
            }
            if n == 5000 {
                assert!(th.frac > 0.0 && th.sleep > Duration::ZERO, "still throttled: {th:?}");
            }
            if th.over_hard {
                hard = Some(n);
                break;
            }
        }
        assert_eq!(hard, Some(10_000));
        assert_eq!(stranger.effective_cost(), 0.0, "the tier's cost is not the /24's");
        assert!(!stranger.throttle().over_hard);
        let ex = l.open(ip("127.0.9.5"));
        ex.charge(1e9);
        assert!(!ex.throttle().over_hard && ex.throttle().sleep == Duration::ZERO);
        drop(a);
        assert_eq!(l.groups(), 3, "two tier groups and the strangers' /24");
    }

    #[test]
    fn exempt_network() {
        let p = CostParams {
            exempt: CidrSet::from_nets(["127.0.5.1/32".parse().unwrap()]),
            ..test_params()
        };
        let (l, _) = ledger(p);
        let ex = l.open(ip("127.0.5.1"));
        let neighbour = l.open(ip("127.0.5.2"));
        assert_eq!(ex.group(), None);
        assert_eq!(neighbour.group(), Some(ip("127.0.5.0")));
        ex.charge(6000.0);
        assert_eq!(neighbour.throttle().frac, 0.0);
        neighbour.charge(2000.0);
        assert!(close(ex.effective_cost(), 6000.0, 1e-9));
        assert!(!ex.charge(3999.0).over_hard);
        assert!(ex.charge(1.0).over_hard);
        drop(ex);
        assert_eq!(l.retained(ip("127.0.5.0")), 0.0);
    }

    #[test]
    fn housekeeping() {
        let (l, clock) = ledger(test_params());
        let empty = l.open(ip("127.0.1.1"));
        let costly = l.open(ip("127.0.2.1"));
        let live = l.open(ip("127.0.3.1"));
        costly.charge(100.0);
        assert_eq!(l.groups(), 3);
        drop(empty);
        drop(costly);
        l.housekeep();
        assert_eq!(l.groups(), 2);
        assert!(close(l.retained(ip("127.0.2.0")), 100.0, 1e-9));
        clock.advance(Duration::from_secs(49));
        l.housekeep();
        assert_eq!(l.groups(), 2);
        clock.advance(Duration::from_secs(1));
        l.housekeep();
        assert_eq!(l.groups(), 1);
        assert_eq!(live.group(), Some(ip("127.0.3.0")));
        drop(live);
        l.housekeep();
        assert_eq!(l.groups(), 0);
    }

    #[test]
    fn concurrent_charges_add_up() {
        const THREADS: usize = 4;
        const CHARGES: usize = 10_000;
        let (l, _) = ledger(test_params());
        let accounts: Arc<Vec<Account>> = Arc::new(
            (0..THREADS)
                .map(|i| l.open(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i as u8))))
                .collect(),
        );
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let accounts = accounts.clone();
                std::thread::spawn(move || {
                    // Alternating with a neighbour's account makes two threads charge each session at once.
                    let mut last = 0.0;
                    for n in 0..CHARGES {
                        let t = accounts[(i + n % 2) % THREADS].charge(0.25);
                        assert!(t.frac >= last, "frozen clock: effective cost can only grow");
                        last = t.frac;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let expected = (THREADS * CHARGES) as f64 * 0.25;
        assert!(close(l.group_cost(ip("127.0.0.0")), expected, 1e-6));
        let own: f64 = accounts.iter().map(Account::cost).sum();
        assert!(close(own, expected, 1e-6));
        for a in accounts.iter() {
            assert!(close(a.cost(), expected / THREADS as f64, 1e-6));
        }
    }

    #[test]
    fn disabled_limits() {
        let p = CostParams {
            soft_limit: 0.0,
            hard_limit: 0.0,
            ..test_params()
        };
        let (l, _) = ledger(p);
        let a = l.open(ip("127.0.0.2"));
        let t = a.charge(1e9);
        assert_eq!(
            t,
            Throttle {
                frac: 0.0,
                concurrency: 10,
                sleep: Duration::ZERO,
                over_hard: false
            }
        );
    }

    #[test]
    fn params_apply_on_next_charge() {
        let (l, _) = ledger(test_params());
        let a = l.open(ip("127.0.0.2"));
        assert_eq!(a.charge(1500.0).frac, 500.0 / 9000.0);
        l.set_params(CostParams {
            soft_limit: 2000.0,
            ..test_params()
        });
        assert_eq!(a.charge(0.0).frac, 0.0);
        assert_eq!(a.charge_bytes(2_500_000).frac, 0.0);
        assert!(close(a.cost(), 2000.0, 1e-9));
        assert!(a.charge_bytes(5000).frac > 0.0);
    }

    #[test]
    fn bad_charges_are_ignored() {
        let (l, _) = ledger(test_params());
        let a = l.open(ip("127.0.0.2"));
        a.charge(10.0);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -5.0] {
            a.charge(bad);
        }
        assert!(close(a.cost(), 10.0, 1e-12));
    }

    #[test]
    fn throttle_shape() {
        let p = CostParams::default();
        let t = Throttle::compute(5500.0, &p);
        assert!(close(t.frac, 0.5, 1e-12));
        assert_eq!(t.concurrency, 5);
        assert_eq!(t.sleep, Duration::from_millis(1250));
        let t = Throttle::compute(9999.0, &p);
        assert_eq!(t.concurrency, 1);
        assert!(!t.over_hard);
        let t = Throttle::compute(20000.0, &p);
        assert!(t.frac > 2.0);
        assert_eq!(t.concurrency, 1);
        assert_eq!(t.sleep, p.max_sleep);
        assert!(t.over_hard);
        // Below the soft limit: full concurrency, no sleep.
        for cost in [0.0, p.soft_limit, -1.0, f64::NAN] {
            let t = Throttle::compute(cost, &p);
            assert_eq!(
                (t.frac, t.concurrency, t.sleep, t.over_hard),
                (0.0, p.initial_concurrency, Duration::ZERO, false)
            );
        }
        // No span between the limits: nothing is scaled, but the hard limit still holds.
        let flat = CostParams {
            soft_limit: 100.0,
            hard_limit: 100.0,
            ..CostParams::default()
        };
        let t = Throttle::compute(100.0, &flat);
        assert_eq!((t.frac, t.sleep, t.over_hard), (0.0, Duration::ZERO, true));
    }

    #[test]
    fn clock_going_back_does_not_refund() {
        let (l, clock) = ledger(test_params());
        clock.set(Duration::from_secs(100));
        let a = l.open(ip("127.0.0.2"));
        a.charge(50.0);
        clock.set(Duration::from_secs(10));
        assert!(close(a.cost(), 50.0, 1e-12));
        a.charge(1.0);
        clock.set(Duration::from_secs(110));
        assert!(close(a.cost(), 41.0, 1e-9));
    }

    const PEER_A: PeerId = [1; 32];
    const PEER_B: PeerId = [2; 32];

    fn report(group: &str, cost: f64) -> GroupCost {
        GroupCost { group: ip(group), cost }
    }

    #[test]
    fn peers_figures_add_to_a_groups_cost_until_they_expire() {
        let (l, clock) = ledger(test_params());
        let a = l.open(ip("10.1.2.3"));
        a.charge(100.0);
        // A peer's figure for any address of the group lands on the group (mapped to this ledger's /24).
        assert_eq!(
            l.apply_remote(PEER_A, &[report("10.1.2.77", 300.0)], Duration::from_secs(3)),
            1
        );
        l.apply_remote(PEER_B, &[report("10.1.2.0", 250.0)], Duration::from_secs(3));
        assert!(close(a.effective_cost(), 650.0, 1e-6), "{}", a.effective_cost());
        assert!(close(l.remote_cost(ip("10.1.2.0")), 550.0, 1e-9));
        // A renewal replaces the figure instead of adding to it.
        l.apply_remote(PEER_A, &[report("10.1.2.0", 400.0)], Duration::from_secs(3));
        assert!(close(l.remote_cost(ip("10.1.2.0")), 650.0, 1e-9));
        // Local cost alone is what this gateway reports, so figures never echo.
        let mine = l.local_costs(0.0, 10);
        assert_eq!(mine.len(), 1);
        assert!(close(mine[0].cost, 100.0, 1e-6));
        clock.advance(Duration::from_secs(3));
        assert!(close(l.remote_cost(ip("10.1.2.0")), 0.0, 1e-9));
        assert!(a.effective_cost() < 100.0);
    }

    #[test]
    fn a_group_left_out_of_the_next_report_stops_counting_at_once() {
        let (l, _clock) = ledger(test_params());
        l.apply_remote(
            PEER_A,
            &[report("10.1.2.0", 300.0), report("10.9.9.0", 50.0)],
            Duration::from_secs(60),
        );
        l.apply_remote(PEER_B, &[report("10.1.2.0", 10.0)], Duration::from_secs(60));
        l.apply_remote(PEER_A, &[report("10.9.9.0", 70.0)], Duration::from_secs(60));
        assert!(close(l.remote_cost(ip("10.1.2.0")), 10.0, 1e-9));
        assert!(close(l.remote_cost(ip("10.9.9.0")), 70.0, 1e-9));
        l.forget_remote(PEER_B);
        assert_eq!(l.remote_cost(ip("10.1.2.0")), 0.0);
    }

    #[test]
    fn a_new_session_starts_with_the_clusters_figure_for_its_group() {
        let (l, _clock) = ledger(test_params());
        l.apply_remote(PEER_A, &[report("10.1.2.0", 9000.0)], Duration::from_secs(60));
        let a = l.open(ip("10.1.2.3"));
        let t = a.charge(1000.0);
        assert!(t.over_hard, "{t:?}");
    }

    #[test]
    fn bad_figures_and_exempt_networks_are_ignored() {
        let mut p = test_params();
        p.exempt = CidrSet::from_nets(["10.7.0.0/16".parse().unwrap()]);
        let (l, _clock) = ledger(p);
        let taken = l.apply_remote(
            PEER_A,
            &[
                report("10.1.2.0", f64::NAN),
                report("10.1.3.0", f64::INFINITY),
                report("10.1.4.0", -5.0),
                report("10.7.1.0", 500.0),
                report("10.1.5.0", 1e300),
            ],
            Duration::from_secs(60),
        );
        assert_eq!(taken, 1);
        assert_eq!(l.remote_cost(ip("10.1.2.0")), 0.0);
        assert_eq!(l.remote_cost(ip("10.7.1.0")), 0.0);
        assert_eq!(l.remote_cost(ip("10.1.5.0")), MAX_REPORTED);
    }

    #[test]
    fn figures_for_networks_this_gateway_does_not_group_are_ignored() {
        // group_private off (the default): loopback and private clients are accounted alone here.
        let (l, _clock) = ledger(CostParams::default());
        let taken = l.apply_remote(
            PEER_A,
            &[
                report("127.0.0.0", 500.0),
                report("192.168.1.0", 500.0),
                report("203.0.113.0", 500.0),
            ],
            Duration::from_secs(60),
        );
        assert_eq!(taken, 1);
        assert_eq!(l.groups(), 1);
        assert_eq!(l.remote_cost(ip("203.0.113.0")), 500.0);
    }

    #[test]
    fn reports_hold_the_costliest_groups_above_the_threshold() {
        let (l, _clock) = ledger(test_params());
        let accounts: Vec<Account> = (1..=5).map(|i| l.open(ip(&format!("10.0.{i}.1")))).collect();
        for (i, a) in accounts.iter().enumerate() {
            a.charge(100.0 * (i + 1) as f64);
        }
        let r = l.local_costs(150.0, 3);
        let groups: Vec<IpAddr> = r.iter().map(|g| g.group).collect();
        assert_eq!(groups, vec![ip("10.0.5.0"), ip("10.0.4.0"), ip("10.0.3.0")]);
        assert!(l.local_costs(1000.0, 10).is_empty());
    }

    fn alerted(a: &Account) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        a.poll_alert(&mut cx).is_ready()
    }

    #[test]
    fn reaching_the_hard_limit_alerts_every_session_of_the_group() {
        let (l, _clock) = ledger(test_params());
        let idle = l.open(ip("10.1.2.3"));
        let busy = l.open(ip("10.1.2.4"));
        let elsewhere = l.open(ip("10.1.3.4"));
        busy.charge(9000.0);
        assert!(!alerted(&idle) && !alerted(&busy));
        busy.charge(1000.0);
        assert!(alerted(&idle) && alerted(&busy));
        assert!(!alerted(&elsewhere));
        // Taken once: the next poll waits for the next alert.
        assert!(!alerted(&idle));
        // An ungrouped session is alerted by its own charges only.
        let (l, _clock) = ledger(CostParams::default());
        let lone = l.open(ip("10.0.0.1"));
        lone.charge(10_000.0);
        assert!(alerted(&lone));
    }

    #[test]
    fn a_peers_report_that_takes_a_group_over_alerts_its_sessions() {
        let (l, _clock) = ledger(test_params());
        let a = l.open(ip("10.1.2.3"));
        a.charge(100.0);
        l.apply_remote(PEER_A, &[report("10.1.2.0", 5000.0)], Duration::from_secs(5));
        assert!(!alerted(&a));
        l.apply_remote(PEER_A, &[report("10.1.2.0", 9950.0)], Duration::from_secs(5));
        assert!(alerted(&a));
        assert!(a.throttle().over_hard);
    }

    #[test]
    fn housekeeping_keeps_a_group_while_a_peers_figure_counts() {
        let (l, clock) = ledger(test_params());
        l.apply_remote(PEER_A, &[report("10.1.2.0", 300.0)], Duration::from_secs(5));
        l.housekeep();
        assert_eq!(l.groups(), 1);
        clock.advance(Duration::from_secs(5));
        l.housekeep();
        assert_eq!(l.groups(), 0);
    }

    #[test]
    fn lowering_the_hard_limit_alerts_groups_now_over_it() {
        let (l, _clock) = ledger(test_params());
        let over = l.open(ip("203.0.113.9"));
        let under = l.open(ip("198.51.100.9"));
        over.charge(6000.0);
        under.charge(1000.0);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(over.poll_alert(&mut cx).is_pending());
        l.set_params(CostParams {
            soft_limit: 500.0,
            hard_limit: 5000.0,
            ..test_params()
        });
        assert!(
            over.poll_alert(&mut cx).is_ready(),
            "over the new hard limit: alerted at once"
        );
        assert!(over.throttle().over_hard);
        assert!(under.poll_alert(&mut cx).is_pending());
    }

    /// The first of `max` back-to-back fees of `fee` at which `hit` holds.
    fn first_request(a: &Account, fee: f64, max: usize, hit: impl Fn(&FeeLoad) -> bool) -> Option<usize> {
        (1..=max).find(|_| hit(&a.charge_fee(fee)))
    }

    #[test]
    fn a_burst_of_fees_warns_and_drops_at_the_hand_computed_request() {
        // Each 3000 fee raises the balance by 3000 / 32 = 93.75: warning 5000 at request ceil(53.3) = 54, drop
        // 25000 at request ceil(266.7) = 267.
        let (l, _clock) = ledger(test_params());
        let a = l.open(ip("203.0.113.9"));
        assert_eq!(first_request(&a, 3000.0, 1000, |f| f.warning), Some(54));
        assert!(close(a.fee_load().balance, 54.0 * 93.75, 1e-6));
        let (l, _clock) = ledger(test_params());
        let a = l.open(ip("203.0.113.9"));
        assert_eq!(first_request(&a, 3000.0, 1000, |f| f.drop), Some(267));
        // The drop coincides with the Electrum hard limit: the same group is cut off on either front.
        assert!(a.throttle().over_hard);
        let waker = futures_util::task::noop_waker();
        assert!(a.poll_alert(&mut Context::from_waker(&waker)).is_ready());
    }

    #[test]
    fn a_steady_fee_rate_settles_at_its_own_size_and_decays_by_the_window() {
        let (l, clock) = ledger(test_params());
        let a = l.open(ip("203.0.113.9"));
        for _ in 0..600 {
            a.charge_fee(400.0);
            clock.advance(Duration::from_secs(1));
        }
        // 400 per second settles at about 400 (the node's model; within 2 % of the continuous figure).
        let settled = a.fee_load().balance;
        assert!((settled - 400.0).abs() <= 8.0, "{settled}");
        clock.advance(Duration::from_secs(32));
        assert!(close(a.fee_load().balance, settled / std::f64::consts::E, 1e-6));
    }

    #[test]
    fn a_departed_clients_fees_stay_with_its_group_for_the_remember_time() {
        let (l, clock) = ledger(test_params());
        let a = l.open(ip("203.0.113.9"));
        for _ in 0..100 {
            a.charge_fee(3000.0);
        }
        drop(a);
        clock.advance(Duration::from_secs(10));
        let b = l.open(ip("203.0.113.77"));
        let expect = 100.0 * 3000.0 / 32.0 * (-10.0f64 / 32.0).exp();
        assert!(close(b.fee_load().balance, expect, 1e-6));
        assert!(b.fee_load().warning);
        drop(b);
        l.housekeep();
        assert_eq!(l.groups(), 1, "kept while remembered");
        clock.advance(DEFAULT_FEE_REMEMBER);
        l.housekeep();
        assert_eq!(l.groups(), 0, "forgotten after the remember time");
        assert_eq!(l.open(ip("203.0.113.9")).fee_load().balance, 0.0);
    }

    #[test]
    fn fees_and_electrum_cost_add_up_for_one_group() {
        let (l, _clock) = ledger(test_params());
        let wallet = l.open(ip("203.0.113.9"));
        let api = l.open(ip("203.0.113.10"));
        // Half the hard limit in Electrum cost, then fees to half the drop threshold: the group is at its limit.
        wallet.charge(DEFAULT_HARD_LIMIT / 2.0);
        assert!(
            api.fee_load().warning,
            "Electrum cost alone brings the group to the warning"
        );
        assert!(close(api.fee_load().balance, DEFAULT_FEE_DROP / 2.0, 1e-6));
        let before = api.charge_fee(DEFAULT_FEE_DROP / 2.0 * 32.0 - 32.0);
        assert!(!before.drop);
        assert!(!wallet.throttle().over_hard);
        assert!(api.charge_fee(32.0).drop);
        assert!(
            wallet.throttle().over_hard,
            "the Electrum session of the group is over too"
        );
        // A client elsewhere is untouched.
        assert_eq!(l.open(ip("198.51.100.1")).fee_load().balance, 0.0);
    }

    #[test]
    fn fees_travel_in_cluster_reports_as_electrum_units() {
        let (l, _clock) = ledger(test_params());
        let a = l.open(ip("203.0.113.9"));
        // A balance of 10000 is 0.4 of the drop threshold: 4000 Electrum units.
        a.charge_fee(10000.0 * 32.0);
        let report = l.local_costs(0.0, 10);
        assert_eq!(report.len(), 1);
        assert!(close(report[0].cost, 4000.0, 1e-6));
        // Three gateways: two peers report 4000 each for the group; here the group is then at 1.2 of the
        // threshold in all: 30000 fee units.
        let group = report[0].group;
        l.apply_remote([1; 32], &[GroupCost { group, cost: 4000.0 }], Duration::from_secs(5));
        l.apply_remote([2; 32], &[GroupCost { group, cost: 4000.0 }], Duration::from_secs(5));
        let load = a.fee_load();
        assert!(close(load.balance, 30000.0, 1e-6), "{load:?}");
        assert!(load.drop);
    }

    #[test]
    fn fee_thresholds_of_zero_turn_the_profile_off() {
        let p = CostParams {
            fee: FeeParams {
                warning: 0.0,
                drop: 0.0,
                ..FeeParams::default()
            },
            ..test_params()
        };
        let (l, _clock) = ledger(p);
        let a = l.open(ip("203.0.113.9"));
        let load = a.charge_fee(1e9);
        assert!(!load.warning && !load.drop);
        assert!(
            !a.throttle().over_hard,
            "fees without a drop threshold do not count as Electrum cost"
        );
        assert!(a.charge_fee(f64::NAN).balance.is_finite());
    }
}
