//! A backend's in-flight budget, shared by every session of every front that names the backend, and the
//! fair queue in front of it.
//!
//! A request takes a slot when it would be written to the backend and gives it back when the backend
//! answers (or the session ends): the backend then never has more than the window to work on, and what
//! waits, waits here, where the gateway can choose who goes next. Heavy requests also count against a
//! smaller budget of their own, so cheap requests still get through while the heavy ones are served.
//!
//! The queue is start-time fair queuing over cost groups: each request gets a start tag
//! `max(virtual time, its group's last finish tag)` and its group's finish tag moves on by
//! `1 + cost / cost_unit`, so a group's share of the dispatches shrinks as its cost grows. Requests go in
//! tag order; tags only grow within a group (FIFO), and a cheap group's tags race ahead of an expensive
//! group's waiting tag only until they pass it, so no group waits forever. Once nothing is queued the
//! groups are forgotten: a burst after a quiet spell starts everyone level.
//!
//! The scheduler knows nothing of the protocol: it takes a group key, a cost and a heavy flag. Each
//! session holds a [`Lane`]; its queued requests are tokens of that lane, interchangeable within a class
//! (light, heavy): a grant to the lane is counted in its mailbox and the session takes its own oldest
//! waiting request of that class. One mutex guards the state; the uncontended path (a free slot, nobody
//! queued) takes it once and allocates nothing, and it is never held across an await.

use super::window::{AutoWindow, WindowParams};
use crate::telemetry::budget::BudgetMetrics;
use futures_util::task::AtomicWaker;
use std::cmp::Ordering as Cmp;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Default `max_queued`: requests waiting for slots across every session, per backend. Past this a
/// request is answered -102 at once; a queue longer than the backend can serve within the request
/// timeout only turns into -102s later, after holding memory.
pub const DEFAULT_MAX_QUEUED: usize = 8192;
/// Largest configurable `max_in_flight`, `heavy_in_flight` and `max_queued`: far beyond any backend,
/// small enough that a typo is caught.
pub const MAX_CONFIGURED: u32 = 1 << 20;
/// Under `heavy_in_flight = "auto"` this share of the window (at least one slot) is kept for light
/// requests and the heavy budget is the rest, at least 1: a wallet's ordinary mix is about a third heavy
/// (histories, unspent lists, subscriptions), so a smaller heavy budget would queue ordinary traffic on
/// a backend that has room, while a saturated one still keeps a balance lookup's way clear.
pub const DEFAULT_LIGHT_RESERVE: f64 = 0.25;
/// The cost at which a group's share of the dispatches is half a free group's (at ten times it, a
/// group gets an eleventh): a few heavy calls' worth in Electrum units, where a wallet syncing costs tens.
pub const DEFAULT_COST_UNIT: f64 = 100.0;
/// Cancelled tokens beyond the live ones at which the queues are rebuilt without them.
const COMPACT_SLACK: usize = 1024;

/// `max_in_flight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InFlight {
    /// Learned from the backend's latency ([`AutoWindow`]).
    #[default]
    Auto,
    Fixed(u32),
    /// No budget: every request goes straight to the backend.
    Off,
}

/// `heavy_in_flight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeavyInFlight {
    /// The window less [`DEFAULT_LIGHT_RESERVE`] of it, at least 1.
    #[default]
    Auto,
    Fixed(u32),
}

/// A backend's budget, from `[front.upstream]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSettings {
    pub max_in_flight: InFlight,
    pub heavy_in_flight: HeavyInFlight,
    pub max_queued: usize,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            max_in_flight: InFlight::Auto,
            heavy_in_flight: HeavyInFlight::Auto,
            max_queued: DEFAULT_MAX_QUEUED,
        }
    }
}

impl BudgetSettings {
    pub fn is_off(&self) -> bool {
        self.max_in_flight == InFlight::Off
    }
}

/// What [`Lane::enqueue`] did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// It has its slot: write it now.
    Now,
    /// It waits; the lane's mailbox says when it has its slot.
    Queued,
    /// The queue is full: answer it as busy.
    Refused,
}

const LIGHT: usize = 0;
const HEAVY: usize = 1;

fn class(heavy: bool) -> usize {
    usize::from(heavy)
}

/// One queued request: a token of its lane.
#[derive(Debug)]
struct Tag {
    start: f64,
    seq: u64,
    lane: u32,
    gen: u32,
    since: Instant,
}

// Ordered so that the binary heap (a max-heap) yields the lowest start tag first, then the earliest.
impl Ord for Tag {
    fn cmp(&self, other: &Self) -> Cmp {
        other.start.total_cmp(&self.start).then(other.seq.cmp(&self.seq))
    }
}
impl PartialOrd for Tag {
    fn partial_cmp(&self, other: &Self) -> Option<Cmp> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Tag {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Cmp::Equal
    }
}
impl Eq for Tag {}

/// Where a session learns of its grants: counts per class, and the waker of its task.
#[derive(Debug, Default)]
struct Mailbox {
    granted: [AtomicU32; 2],
    waker: AtomicWaker,
}

#[derive(Debug)]
struct LaneState {
    gen: u32,
    live: bool,
    group: u64,
    /// Queued, per class.
    tokens: [u32; 2],
    /// Tokens cancelled while queued, still in the heap: the lane's earliest ones are skipped.
    cancelled: [u32; 2],
    /// Slots held (granted, collected or not).
    held: [u32; 2],
    mailbox: Arc<Mailbox>,
}

#[derive(Debug)]
enum Limit {
    Fixed(u32),
    Auto(AutoWindow),
    /// The budget was switched off or dropped by a reload: whatever waits goes, and nothing waits again.
    Unlimited,
}

#[derive(Debug)]
struct Inner {
    settings: BudgetSettings,
    limit: Limit,
    in_flight: u32,
    heavy_in_flight: u32,
    queued: [usize; 2],
    heaps: [BinaryHeap<Tag>; 2],
    zombies: usize,
    vtime: f64,
    /// Each group's last finish tag, while anything is queued.
    finish: HashMap<u64, f64>,
    seq: u64,
    lanes: Vec<LaneState>,
    free: Vec<u32>,
    cost_unit: f64,
    /// The gauges' values as last set (window, heavy window, in flight, heavy in flight, queued).
    published: [i64; 5],
}

pub struct Budget {
    inner: Mutex<Inner>,
    metrics: BudgetMetrics,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("Budget")
            .field("window", &g.window())
            .field("in_flight", &g.in_flight)
            .field("queued", &g.queued)
            .finish()
    }
}

impl Inner {
    fn window(&self) -> u32 {
        match &self.limit {
            Limit::Fixed(n) => *n,
            Limit::Auto(w) => w.window(),
            Limit::Unlimited => u32::MAX,
        }
    }

    fn heavy_window(&self) -> u32 {
        match (&self.limit, self.settings.heavy_in_flight) {
            (Limit::Unlimited, _) => u32::MAX,
            (_, HeavyInFlight::Fixed(n)) => n,
            (_, HeavyInFlight::Auto) => {
                let w = self.window();
                let reserve = ((f64::from(w) * DEFAULT_LIGHT_RESERVE) as u32).max(1);
                w.saturating_sub(reserve).max(1)
            }
        }
    }

    fn queued_total(&self) -> usize {
        self.queued[LIGHT] + self.queued[HEAVY]
    }

    /// Whether a request of class `c` may have a slot without waiting: room in the budget (and the heavy
    /// budget) and nobody of its class ahead of it.
    fn free_for(&self, c: usize) -> bool {
        self.queued[c] == 0
            && self.in_flight < self.window()
            && (c == LIGHT || self.heavy_in_flight < self.heavy_window())
    }

    fn take(&mut self, lane: u32, c: usize) {
        self.in_flight += 1;
        if c == HEAVY {
            self.heavy_in_flight += 1;
        }
        self.lanes[lane as usize].held[c] += 1;
    }

    fn give_back(&mut self, held: [u32; 2]) {
        self.in_flight = self.in_flight.saturating_sub(held[LIGHT] + held[HEAVY]);
        self.heavy_in_flight = self.heavy_in_flight.saturating_sub(held[HEAVY]);
    }

    fn lane(&mut self, id: u32, gen: u32) -> Option<&mut LaneState> {
        self.lanes.get_mut(id as usize).filter(|l| l.live && l.gen == gen)
    }

    /// Drops cancelled tokens from the head of class `c`'s queue.
    fn skip_cancelled(&mut self, c: usize) {
        while let Some(top) = self.heaps[c].peek() {
            let (id, gen) = (top.lane, top.gen);
            match self.lane(id, gen) {
                Some(l) if l.cancelled[c] == 0 => break,
                Some(l) => l.cancelled[c] -= 1,
                None => {}
            }
            self.heaps[c].pop();
            self.zombies = self.zombies.saturating_sub(1);
        }
    }

    /// Grants slots to queued requests while the budget has room, lowest start tag first.
    fn dispatch(&mut self, now: Instant, m: &BudgetMetrics) {
        while self.in_flight < self.window() {
            self.skip_cancelled(LIGHT);
            self.skip_cancelled(HEAVY);
            let heavy_ok = self.heavy_in_flight < self.heavy_window();
            let c = match (self.heaps[LIGHT].peek(), self.heaps[HEAVY].peek().filter(|_| heavy_ok)) {
                (None, None) => break,
                (Some(_), None) => LIGHT,
                (None, Some(_)) => HEAVY,
                // The heap's order: greater is earlier.
                (Some(l), Some(h)) => {
                    if l > h {
                        LIGHT
                    } else {
                        HEAVY
                    }
                }
            };
            let Some(tag) = self.heaps[c].pop() else { break };
            self.queued[c] = self.queued[c].saturating_sub(1);
            self.vtime = self.vtime.max(tag.start);
            self.take(tag.lane, c);
            let l = &mut self.lanes[tag.lane as usize];
            l.tokens[c] = l.tokens[c].saturating_sub(1);
            l.mailbox.granted[c].fetch_add(1, Ordering::AcqRel);
            l.mailbox.waker.wake();
            m.dispatched(now.saturating_duration_since(tag.since));
        }
        if self.queued_total() == 0 {
            self.finish.clear();
            self.vtime = 0.0;
        }
    }

    /// Rebuilds the queues without their cancelled tokens once those outnumber the live ones: a lane's
    /// cancelled tokens are its earliest, as [`Inner::skip_cancelled`] would have dropped them.
    fn compact(&mut self) {
        if self.zombies <= self.queued_total() + COMPACT_SLACK {
            return;
        }
        for c in 0..2 {
            let heap = std::mem::take(&mut self.heaps[c]);
            let mut kept = Vec::with_capacity(self.queued[c]);
            // into_sorted_vec is ascending in the heap's order, so latest first: walk it backwards.
            for tag in heap.into_sorted_vec().into_iter().rev() {
                match self.lane(tag.lane, tag.gen) {
                    Some(l) if l.cancelled[c] > 0 => l.cancelled[c] -= 1,
                    Some(_) => kept.push(tag),
                    None => {}
                }
            }
            self.heaps[c] = BinaryHeap::from(kept);
        }
        self.zombies = 0;
    }

    /// Sets the gauges that changed since the last call: on the hot path that is one or two of them.
    fn publish(&mut self, m: &BudgetMetrics) {
        let now = [
            i64::from(self.window()),
            i64::from(self.heavy_window()),
            i64::from(self.in_flight),
            i64::from(self.heavy_in_flight),
            self.queued_total() as i64,
        ];
        for (i, v) in now.into_iter().enumerate() {
            if self.published[i] != v {
                self.published[i] = v;
                m.set(i, v);
            }
        }
    }
}

impl Budget {
    /// A budget reporting to `metrics`, with the window learned by `auto` when settings say "auto".
    pub fn new(settings: BudgetSettings, metrics: BudgetMetrics) -> Arc<Budget> {
        Self::with_params(settings, metrics, WindowParams::default(), DEFAULT_COST_UNIT)
    }

    pub fn with_params(
        settings: BudgetSettings,
        metrics: BudgetMetrics,
        auto: WindowParams,
        cost_unit: f64,
    ) -> Arc<Budget> {
        let limit = match settings.max_in_flight {
            InFlight::Auto => Limit::Auto(AutoWindow::new(auto)),
            InFlight::Fixed(n) => Limit::Fixed(n.max(1)),
            InFlight::Off => Limit::Unlimited,
        };
        let mut inner = Inner {
            settings,
            limit,
            in_flight: 0,
            heavy_in_flight: 0,
            queued: [0; 2],
            heaps: [BinaryHeap::new(), BinaryHeap::new()],
            zombies: 0,
            vtime: 0.0,
            finish: HashMap::new(),
            seq: 0,
            lanes: Vec::new(),
            free: Vec::new(),
            cost_unit: if cost_unit > 0.0 { cost_unit } else { DEFAULT_COST_UNIT },
            published: [-1; 5],
        };
        inner.publish(&metrics);
        Arc::new(Budget {
            inner: Mutex::new(inner),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock leaves counts at worst off by one; refusing every request after would be worse.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New settings (a reload). Waiting requests keep their tags; a learned window is kept while the
    /// budget stays "auto"; a larger budget dispatches at once.
    pub fn set_settings(&self, settings: BudgetSettings, now: Instant) {
        let mut g = self.lock();
        g.limit = match (
            settings.max_in_flight,
            std::mem::replace(&mut g.limit, Limit::Unlimited),
        ) {
            (InFlight::Auto, Limit::Auto(w)) => Limit::Auto(w),
            (InFlight::Auto, _) => Limit::Auto(AutoWindow::new(WindowParams::default())),
            (InFlight::Fixed(n), _) => Limit::Fixed(n.max(1)),
            (InFlight::Off, _) => Limit::Unlimited,
        };
        g.settings = settings;
        g.dispatch(now, &self.metrics);
        g.publish(&self.metrics);
    }

    /// Lets everything through from now on (the backend's budget was dropped from the configuration):
    /// sessions still holding a lane to it keep working.
    pub fn retire(&self, now: Instant) {
        self.set_settings(
            BudgetSettings {
                max_in_flight: InFlight::Off,
                ..self.settings()
            },
            now,
        );
    }

    pub fn settings(&self) -> BudgetSettings {
        self.lock().settings
    }

    /// The current window (`u32::MAX` when unlimited).
    pub fn window(&self) -> u32 {
        self.lock().window()
    }

    /// (in flight, heavy in flight, queued)
    pub fn load(&self) -> (u32, u32, usize) {
        let g = self.lock();
        (g.in_flight, g.heavy_in_flight, g.queued_total())
    }

    pub fn metrics(&self) -> &BudgetMetrics {
        &self.metrics
    }

    /// A session's lane; `group` is the cost group it is queued in.
    pub fn lane(self: &Arc<Self>, group: u64) -> Lane {
        let mut g = self.lock();
        let mailbox = Arc::new(Mailbox::default());
        let id = match g.free.pop() {
            Some(id) => {
                let l = &mut g.lanes[id as usize];
                l.live = true;
                l.group = group;
                l.tokens = [0; 2];
                l.cancelled = [0; 2];
                l.held = [0; 2];
                l.mailbox = mailbox.clone();
                id
            }
            None => {
                g.lanes.push(LaneState {
                    gen: 0,
                    live: true,
                    group,
                    tokens: [0; 2],
                    cancelled: [0; 2],
                    held: [0; 2],
                    mailbox: mailbox.clone(),
                });
                (g.lanes.len() - 1) as u32
            }
        };
        let gen = g.lanes[id as usize].gen;
        Lane {
            budget: self.clone(),
            id,
            gen,
            mailbox,
        }
    }
}

/// A session's place at a backend's budget. Dropping it gives back every slot it holds and cancels
/// whatever it has queued.
pub struct Lane {
    budget: Arc<Budget>,
    id: u32,
    gen: u32,
    mailbox: Arc<Mailbox>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").field("id", &self.id).finish()
    }
}

impl Lane {
    /// Takes a slot if one is free and nobody of the class waits: the hot path, one uncontended lock.
    pub fn try_now(&self, heavy: bool) -> bool {
        let c = class(heavy);
        let b = &*self.budget;
        let mut g = b.lock();
        if !g.free_for(c) {
            return false;
        }
        g.take(self.id, c);
        g.publish(&b.metrics);
        true
    }

    /// Takes a slot, or queues the request in its group with the group's current `cost` (any scale
    /// the caller keeps to; [`DEFAULT_COST_UNIT`] halves a share), or refuses it when the queue is full.
    pub fn enqueue(&self, heavy: bool, cost: f64, now: Instant) -> Admit {
        let c = class(heavy);
        let b = &*self.budget;
        let mut g = b.lock();
        if g.free_for(c) {
            g.take(self.id, c);
            g.publish(&b.metrics);
            return Admit::Now;
        }
        if g.queued_total() >= g.settings.max_queued {
            b.metrics.refused();
            return Admit::Refused;
        }
        if g.in_flight >= g.window() {
            if let Limit::Auto(w) = &mut g.limit {
                w.note_full();
            }
        }
        let group = g.lanes[self.id as usize].group;
        let step = 1.0 + cost.max(0.0) / g.cost_unit;
        let step = if step.is_finite() { step } else { f64::MAX / 4.0 };
        let vtime = g.vtime;
        let start = g.finish.get(&group).map_or(vtime, |f| f.max(vtime));
        g.finish.insert(group, start + step);
        g.seq += 1;
        let seq = g.seq;
        g.heaps[c].push(Tag {
            start,
            seq,
            lane: self.id,
            gen: self.gen,
            since: now,
        });
        g.queued[c] += 1;
        g.lanes[self.id as usize].tokens[c] += 1;
        g.publish(&b.metrics);
        Admit::Queued
    }

    /// The backend answered a request of this lane (`latency` after it was written, when it is a fair
    /// sample), or the request is abandoned: its slot goes to the next in line.
    pub fn release(&self, heavy: bool, latency: Option<Duration>, now: Instant) {
        let c = class(heavy);
        let b = &*self.budget;
        let mut g = b.lock();
        let Some(l) = g.lane(self.id, self.gen) else { return };
        if l.held[c] == 0 {
            return;
        }
        l.held[c] -= 1;
        let mut held = [0; 2];
        held[c] = 1;
        g.give_back(held);
        if let (Some(latency), Limit::Auto(w)) = (latency, &mut g.limit) {
            w.sample(latency, heavy);
        }
        g.dispatch(now, &b.metrics);
        g.publish(&b.metrics);
    }

    /// Withdraws one queued request of the class (it timed out, or the session is closing). If its
    /// slot was granted meanwhile, the slot is given back instead.
    pub fn cancel(&self, heavy: bool, now: Instant) {
        let c = class(heavy);
        let b = &*self.budget;
        let mut g = b.lock();
        let Some(l) = g.lane(self.id, self.gen) else { return };
        if l.tokens[c] > 0 {
            l.tokens[c] -= 1;
            l.cancelled[c] += 1;
            g.queued[c] = g.queued[c].saturating_sub(1);
            g.zombies += 1;
            g.compact();
            if g.queued_total() == 0 {
                g.finish.clear();
                g.vtime = 0.0;
            }
            g.publish(&b.metrics);
            return;
        }
        let mb = &self.mailbox.granted[c];
        if mb.load(Ordering::Acquire) > 0 && l.held[c] > 0 {
            mb.fetch_sub(1, Ordering::AcqRel);
            l.held[c] -= 1;
            let mut held = [0; 2];
            held[c] = 1;
            g.give_back(held);
            g.dispatch(now, &b.metrics);
            g.publish(&b.metrics);
        }
    }

    /// Ready with the grants (light, heavy) made to this lane since the last call; registers the task to
    /// be woken by the next one otherwise.
    pub fn poll_granted(&self, cx: &mut Context<'_>) -> Poll<[u32; 2]> {
        let take = |mb: &Mailbox| {
            [
                mb.granted[0].swap(0, Ordering::AcqRel),
                mb.granted[1].swap(0, Ordering::AcqRel),
            ]
        };
        let got = take(&self.mailbox);
        if got != [0, 0] {
            return Poll::Ready(got);
        }
        self.mailbox.waker.register(cx.waker());
        let got = take(&self.mailbox);
        if got != [0, 0] {
            Poll::Ready(got)
        } else {
            Poll::Pending
        }
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        let b = &*self.budget;
        let mut g = b.lock();
        let Some(l) = g.lane(self.id, self.gen) else { return };
        l.live = false;
        l.gen = l.gen.wrapping_add(1);
        let (tokens, held) = (l.tokens, l.held);
        l.tokens = [0; 2];
        l.held = [0; 2];
        l.cancelled = [0; 2];
        g.free.push(self.id);
        g.give_back(held);
        for (c, n) in tokens.into_iter().enumerate() {
            g.queued[c] = g.queued[c].saturating_sub(n as usize);
            g.zombies += n as usize;
        }
        g.compact();
        g.dispatch(Instant::now(), &b.metrics);
        g.publish(&b.metrics);
    }
}

/// One backend named by a front, with the budget settings that front gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSpec {
    pub addr: SocketAddr,
    pub settings: BudgetSettings,
    /// The first front naming the backend and its position there: the metrics' labels.
    pub front: String,
    pub position: usize,
}

/// Every backend's budget, one per address across the gateway's fronts.
#[derive(Debug, Default)]
pub struct Budgets {
    map: Mutex<HashMap<SocketAddr, Arc<Budget>>>,
}

impl Budgets {
    /// Applies the configured budgets: new ones are made, changed ones take their new settings (queues
    /// kept), and those no longer configured (or switched off) let their waiting requests go and are
    /// dropped, so new sessions go straight to those backends.
    pub fn configure(&self, specs: &[BudgetSpec]) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|addr, b| {
            let keep = specs.iter().any(|s| s.addr == *addr && !s.settings.is_off());
            if !keep {
                b.retire(now);
            }
            keep
        });
        for s in specs.iter().filter(|s| !s.settings.is_off()) {
            match map.get(&s.addr) {
                Some(b) => {
                    if b.settings() != s.settings {
                        b.set_settings(s.settings, now);
                    }
                }
                None => {
                    let metrics = BudgetMetrics::new(&s.front, s.position);
                    map.insert(s.addr, Budget::new(s.settings, metrics));
                }
            }
        }
    }

    /// The budget of the backend at `addr`, if it has one.
    pub fn get(&self, addr: SocketAddr) -> Option<Arc<Budget>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(&addr).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn fixed(n: u32, heavy: u32) -> BudgetSettings {
        BudgetSettings {
            max_in_flight: InFlight::Fixed(n),
            heavy_in_flight: HeavyInFlight::Fixed(heavy),
            max_queued: 1000,
        }
    }

    fn budget(s: BudgetSettings) -> Arc<Budget> {
        Budget::new(s, BudgetMetrics::detached())
    }

    fn grants(l: &Lane) -> [u32; 2] {
        let mut cx = Context::from_waker(Waker::noop());
        match l.poll_granted(&mut cx) {
            Poll::Ready(g) => g,
            Poll::Pending => [0, 0],
        }
    }

    /// Queues `queued` ((lane index, cost), in arrival order) behind `hold`'s one slot of a budget of 1,
    /// then serves `n` of them one at a time and returns whose each was, by lane index.
    fn serve_order(hold: Lane, lanes: &[Lane], queued: &[(usize, f64)], n: usize) -> Vec<usize> {
        let now = Instant::now();
        for &(i, cost) in queued {
            assert_eq!(lanes[i].enqueue(false, cost, now), Admit::Queued);
        }
        hold.release(false, None, now);
        drop(hold);
        let mut order = Vec::new();
        let mut current = None;
        for _ in 0..n {
            if let Some(i) = current.take() {
                let l: &Lane = &lanes[i];
                l.release(false, None, now);
            }
            let who = lanes.iter().position(|l| grants(l) == [1, 0]).expect("one grant");
            order.push(who);
            current = Some(who);
        }
        order
    }

    #[test]
    fn free_budget_grants_at_once_and_counts() {
        let b = budget(fixed(2, 1));
        let l = b.lane(1);
        assert!(l.try_now(false));
        assert!(l.try_now(true));
        assert!(!l.try_now(false));
        assert_eq!(b.load(), (2, 1, 0));
        l.release(true, None, Instant::now());
        assert_eq!(b.load(), (1, 0, 0));
        drop(l);
        assert_eq!(b.load(), (0, 0, 0));
    }

    #[test]
    fn fifo_within_a_group() {
        let b = budget(fixed(1, 1));
        let hold = b.lane(9);
        assert!(hold.try_now(false));
        // Three sessions of one group, queued alternately: served in arrival order.
        let lanes: Vec<Lane> = (0..3).map(|_| b.lane(7)).collect();
        let now = Instant::now();
        let mut expect = Vec::new();
        for round in 0..4 {
            for (i, l) in lanes.iter().enumerate() {
                assert_eq!(l.enqueue(false, 50.0 * round as f64, now), Admit::Queued);
                expect.push(i);
            }
        }
        hold.release(false, None, now);
        let mut order = Vec::new();
        let mut last: Option<usize> = None;
        for _ in 0..expect.len() {
            if let Some(i) = last {
                lanes[i].release(false, None, now);
            }
            let who = lanes.iter().position(|l| grants(l) == [1, 0]).unwrap();
            order.push(who);
            last = Some(who);
        }
        assert_eq!(order, expect);
    }

    #[test]
    fn shares_shrink_as_cost_grows() {
        let b = budget(fixed(1, 1));
        let hold = b.lane(99);
        assert!(hold.try_now(false));
        // Group 0 costs nothing, group 1 one cost unit, group 2 nine: shares 1 : 1/2 : 1/10.
        let lanes: Vec<Lane> = (0..3).map(|g| b.lane(g)).collect();
        let mut queued = Vec::new();
        for _ in 0..40 {
            queued.push((0, 0.0));
            queued.push((1, 100.0));
            queued.push((2, 900.0));
        }
        let order = serve_order(hold, &lanes, &queued, 26);
        let count = |g| order.iter().filter(|&&w| w == g).count();
        // In the first 26 dispatches: 16, 8 and 2 (ties go to the earlier arrival).
        assert_eq!((count(0), count(1), count(2)), (16, 8, 2), "{order:?}");
    }

    #[test]
    fn an_expensive_group_is_not_starved() {
        let b = budget(fixed(1, 1));
        let hold = b.lane(99);
        assert!(hold.try_now(false));
        let rich = b.lane(1);
        let cheap = b.lane(2);
        let now = Instant::now();
        // The expensive group's one request waits while cheap requests keep arriving, two per dispatch.
        assert_eq!(rich.enqueue(false, 10_000.0, now), Admit::Queued);
        assert_eq!(cheap.enqueue(false, 0.0, now), Admit::Queued);
        hold.release(false, None, now);
        let mut served_cheap = 0;
        let rich_at = loop {
            cheap.enqueue(false, 0.0, now);
            cheap.enqueue(false, 0.0, now);
            if grants(&rich) == [1, 0] {
                break served_cheap;
            }
            assert_eq!(grants(&cheap), [1, 0]);
            served_cheap += 1;
            assert!(served_cheap < 1000, "the expensive request never went");
            cheap.release(false, None, now);
        };
        // Its start tag was the virtual time it arrived at: the cheap group's own tags pass it after
        // at most one request each time, so it goes first or nearly so.
        assert!(rich_at <= 1, "{rich_at}");
        // And the expensive group's next request waits its step (101 cheap ones) behind.
        rich.release(false, None, now);
        rich.enqueue(false, 10_000.0, now);
        let mut before = 0;
        loop {
            cheap.enqueue(false, 0.0, now);
            if grants(&rich) == [1, 0] {
                break;
            }
            assert_eq!(grants(&cheap), [1, 0]);
            cheap.release(false, None, now);
            before += 1;
            assert!(before < 1000, "starved");
        }
        assert!((95..=110).contains(&before), "{before}");
    }

    #[test]
    fn heavy_budget_lets_light_requests_pass() {
        let b = budget(fixed(4, 1));
        let a = b.lane(1);
        let w = b.lane(2);
        let now = Instant::now();
        assert!(a.try_now(true));
        // A second heavy waits for the heavy budget although the window has room…
        assert!(!a.try_now(true));
        assert_eq!(a.enqueue(true, 0.0, now), Admit::Queued);
        // …while a light request goes at once.
        assert!(w.try_now(false));
        assert_eq!(b.load(), (2, 1, 1));
        a.release(true, Some(Duration::from_millis(5)), now);
        assert_eq!(grants(&a), [0, 1]);
        assert_eq!(b.load(), (2, 1, 0));
    }

    #[test]
    fn queue_cap_refuses() {
        let b = budget(BudgetSettings {
            max_queued: 2,
            ..fixed(1, 1)
        });
        let l = b.lane(1);
        let now = Instant::now();
        assert!(l.try_now(false));
        assert_eq!(l.enqueue(false, 0.0, now), Admit::Queued);
        assert_eq!(l.enqueue(true, 0.0, now), Admit::Queued);
        assert_eq!(l.enqueue(false, 0.0, now), Admit::Refused);
        assert_eq!(b.metrics().refused_total(), 1);
    }

    #[test]
    fn cancelled_and_closed_lanes_give_everything_back() {
        let b = budget(fixed(1, 1));
        let a = b.lane(1);
        let c = b.lane(2);
        let now = Instant::now();
        assert!(a.try_now(false));
        assert_eq!(c.enqueue(false, 0.0, now), Admit::Queued);
        assert_eq!(c.enqueue(false, 0.0, now), Admit::Queued);
        // One times out in the queue: the other keeps its place.
        c.cancel(false, now);
        assert_eq!(b.load(), (1, 0, 1));
        // The session holding the slot ends: its slot goes to the queue.
        drop(a);
        assert_eq!(grants(&c), [1, 0]);
        assert_eq!(b.load(), (1, 0, 0));
        // A grant not collected yet is given back by a cancel.
        let d = b.lane(3);
        assert_eq!(d.enqueue(false, 0.0, now), Admit::Queued);
        c.release(false, None, now);
        d.cancel(false, now);
        assert_eq!(b.load(), (0, 0, 0));
        // A session that ends while queued leaves nothing behind, and no grant goes to it.
        let e = b.lane(4);
        assert!(e.try_now(false));
        let f = b.lane(5);
        assert_eq!(f.enqueue(false, 0.0, now), Admit::Queued);
        drop(f);
        drop(e);
        assert_eq!(b.load(), (0, 0, 0));
        assert_eq!(b.metrics().dispatched_total(), 2);
    }

    #[test]
    fn reload_keeps_the_queue_and_off_lets_it_go() {
        let b = budget(fixed(1, 1));
        let a = b.lane(1);
        let now = Instant::now();
        assert!(a.try_now(false));
        for _ in 0..3 {
            assert_eq!(a.enqueue(false, 0.0, now), Admit::Queued);
        }
        b.set_settings(fixed(2, 1), now);
        assert_eq!(grants(&a), [1, 0]);
        assert_eq!(b.load(), (2, 0, 2));
        b.retire(now);
        assert_eq!(grants(&a), [2, 0]);
        assert_eq!(b.load(), (4, 0, 0));
        assert!(a.try_now(true));
    }

    #[test]
    fn many_cancellations_are_compacted() {
        let b = budget(BudgetSettings {
            max_queued: 100_000,
            ..fixed(1, 1)
        });
        let a = b.lane(1);
        let now = Instant::now();
        assert!(a.try_now(false));
        for _ in 0..3000 {
            assert_eq!(a.enqueue(false, 0.0, now), Admit::Queued);
        }
        let keep = b.lane(2);
        assert_eq!(keep.enqueue(false, 0.0, now), Admit::Queued);
        for _ in 0..3000 {
            a.cancel(false, now);
        }
        assert!(b.lock().heaps[LIGHT].len() < 1100);
        a.release(false, None, now);
        assert_eq!(grants(&keep), [1, 0]);
    }

    #[test]
    fn auto_window_shrinks_on_latency() {
        let b = Budget::with_params(
            BudgetSettings::default(),
            BudgetMetrics::detached(),
            WindowParams {
                initial: 8,
                min: 2,
                ..WindowParams::default()
            },
            DEFAULT_COST_UNIT,
        );
        assert_eq!(b.window(), 8);
        let l = b.lane(1);
        let now = Instant::now();
        for i in 0..40 {
            while l.try_now(false) {}
            l.enqueue(false, 0.0, now);
            let ms = if i < 8 { 1 } else { 50 };
            l.release(false, Some(Duration::from_millis(ms)), now);
            grants(&l);
        }
        assert!(b.window() < 8, "{}", b.window());
    }
}
