//! A backend's in-flight budget, shared by every session of every front that names the backend, and the
//! fair queue in front of it.
//!
//! A request takes a slot when it would be written to the backend and gives it back when the backend
//! answers (or the session ends): the backend then never has more than the window to work on, and what
//! waits, waits here, where the gateway can choose who goes next. Heavy requests also count against a
//! smaller budget of their own, so cheap requests still get through while the heavy ones are served.
//!
//! The queue is self-clocked fair queuing over cost groups, one per class: each group queues its requests
//! in arrival order, and only its oldest waiting request holds a turn, tagged
//! `max(class virtual time, the group's last tag) + 1 + cost / cost_unit` with the group's cost as it is
//! when the request reaches the front of its group. Turns go lowest tag first, and the class's virtual
//! time becomes the tag served, so a group's share of the dispatches shrinks as its cost grows, a cheap
//! newcomer goes ahead of every group costlier than itself, and no group waits forever. Tagging only the
//! front request, with the cost of the moment (and tagging it again when the group's cost has grown since),
//! matters under attack: a flood's requests queued while its groups were still cheap would otherwise keep
//! their cheap tags until served, and an honest wallet arriving later would wait behind all of them. Each
//! class keeps its own virtual time: light requests dispatched while the heavy budget is full must not
//! push a newcomer's heavy tag behind heavy requests queued long before. A group is forgotten once it has
//! nothing queued: a burst after a quiet spell starts everyone level.
//!
//! When the queue is at its cap, a newcomer pushes out the newest queued request of the costliest group,
//! if that group costs more than the newcomer's: the flood's surplus is answered -102, not the honest
//! wallet that arrives while the queue is full.
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
use std::collections::{BinaryHeap, HashMap, VecDeque};
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
/// Default `throttled_heavy_in_flight`: heavy requests of sessions the cost model throttles (their group is
/// over the soft limit) that the backend may hold at once, all such sessions together. However fair the
/// queue, a heavy read the backend has begun cannot be taken back: each one inside it is one an honest
/// wallet's request may have to wait for. Clients the cost model already slows get one at a time.
pub const DEFAULT_THROTTLED_HEAVY_IN_FLIGHT: u32 = 1;
/// Default `throttled_heavy_share`: the share of the backend's time throttled sessions' heavy requests may
/// take, all together. Each such read holds the backend for as long as it takes; after it the throttled
/// budget rests long enough that reads cover at most this share of the time. A wallet's request then
/// rarely finds a costly group's read in service, however many costly sessions wait: the backend idles
/// for them rather than work for them without pause.
pub const DEFAULT_THROTTLED_HEAVY_SHARE: Share = Share(50);

/// A share of the backend's time, in thousandths (1 to 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share(pub u16);

impl Share {
    pub fn fraction(self) -> f64 {
        f64::from(self.0.clamp(1, 1000)) / 1000.0
    }
}
/// Where the learned heavy window starts (it is also learned on its own, from heavy answers alone, and is
/// at most the share above): a flood's heavy requests arriving at once find this many places inside the
/// backend before the first round tells how slow they are, so it is small.
pub const DEFAULT_HEAVY_INITIAL_WINDOW: u32 = 4;
/// The cost at which a group's share of the dispatches is half a free group's (at ten times it, a
/// group gets an eleventh): a few heavy calls' worth in Electrum units, where a wallet syncing costs tens.
pub const DEFAULT_COST_UNIT: f64 = 100.0;
/// Cancelled tokens beyond the live ones at which the queues are rebuilt without them.
const COMPACT_SLACK: usize = 1024;
/// The largest step a group's turn moves the virtual time by (a billion free groups' worth): tags stay
/// far below 2^53, where adding a free group's step of 1 is still exact, whatever a cost reads.
const MAX_STEP: f64 = 1e9;

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
    /// `None`: throttled sessions' heavy requests share the heavy budget like any others.
    pub throttled_heavy_in_flight: Option<u32>,
    /// `None`: throttled heavy requests follow one another without rest.
    pub throttled_heavy_share: Option<Share>,
    pub max_queued: usize,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            max_in_flight: InFlight::Auto,
            heavy_in_flight: HeavyInFlight::Auto,
            throttled_heavy_in_flight: Some(DEFAULT_THROTTLED_HEAVY_IN_FLIGHT),
            throttled_heavy_share: Some(DEFAULT_THROTTLED_HEAVY_SHARE),
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

/// One queued request: a token of its lane, in its group's queue.
#[derive(Debug, Clone, Copy)]
struct Token {
    lane: u32,
    gen: u32,
    since: Instant,
}

/// A cost group's queued requests, per class.
#[derive(Debug, Default)]
struct Flow {
    queue: [VecDeque<Token>; 2],
    /// The tag of the group's current turn (or its last, once served), per class.
    finish: [f64; 2],
    /// Where the current turn's tag started from, to tag it again when the cost grows.
    start: [f64; 2],
    /// The sequence number of the group's valid turn in the class's heap; 0 when it has none. Turns
    /// tagged again leave their old entry behind, skipped when it surfaces.
    turn: [u64; 2],
    /// The group's cost as its sessions last reported it.
    cost: f64,
    /// Whether its sessions are throttled, as they last reported it.
    throttled: bool,
}

impl Flow {
    fn is_idle(&self) -> bool {
        self.turn == [0, 0] && self.queue[LIGHT].is_empty() && self.queue[HEAVY].is_empty()
    }
}

/// A group's turn in a class.
#[derive(Debug)]
struct Turn {
    tag: f64,
    seq: u64,
    group: u64,
}

// Ordered so that the binary heap (a max-heap) yields the lowest tag first, then the earliest.
impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Cmp {
        other.tag.total_cmp(&self.tag).then(other.seq.cmp(&self.seq))
    }
}
impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Cmp> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Turn {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Cmp::Equal
    }
}
impl Eq for Turn {}

/// Where a session learns of its grants and of its requests pushed out of a full queue: counts per
/// class, and the waker of its task.
#[derive(Debug, Default)]
struct Mailbox {
    granted: [AtomicU32; 2],
    pushed_out: [AtomicU32; 2],
    waker: AtomicWaker,
}

/// What [`Lane::poll_granted`] found in the mailbox, per class (light, heavy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct News {
    /// Slots granted to the lane's oldest waiting requests.
    pub granted: [u32; 2],
    /// The lane's newest waiting requests pushed out of the full queue: answer them busy.
    pub pushed_out: [u32; 2],
}

impl News {
    pub fn is_empty(&self) -> bool {
        *self == News::default()
    }
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
    /// Of the slots held, per class, those taken while throttled.
    held_throttled: [u32; 2],
    mailbox: Arc<Mailbox>,
}

#[derive(Debug)]
enum Limit {
    Fixed(u32),
    /// The window learned from every answer, and the heavy window learned from heavy answers alone.
    Auto(Box<(AutoWindow, AutoWindow)>),
    /// The budget was switched off or dropped by a reload: whatever waits goes, and nothing waits again.
    Unlimited,
}

#[derive(Debug)]
struct Inner {
    settings: BudgetSettings,
    limit: Limit,
    in_flight: u32,
    heavy_in_flight: u32,
    /// Slots held by throttled sessions, per class.
    throttled_in_flight: [u32; 2],
    /// Until when the throttled budget rests after a read (see [`DEFAULT_THROTTLED_HEAVY_SHARE`]).
    throttled_rest: Option<Instant>,
    /// A task ends the rests (there is a runtime to run it on).
    paced: bool,
    /// Live queued requests per class (cancelled ones still in a group's queue are not counted).
    queued: [usize; 2],
    /// The groups with anything queued.
    flows: HashMap<u64, Flow>,
    /// Per class, the groups' turns, lowest tag first.
    turns: [BinaryHeap<Turn>; 2],
    /// Throttled groups' heavy turns that surfaced while the throttled budget had no room: set aside so
    /// the unthrottled turns behind them go on, and put back once it has.
    parked: Vec<Turn>,
    /// Cancelled tokens still in the groups' queues.
    zombies: usize,
    /// Per class, the tag of the last turn served.
    vtime: [f64; 2],
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
    /// Wakes the task that ends the throttled budget's rests.
    pacer: Arc<tokio::sync::Notify>,
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

fn live_lane(lanes: &mut [LaneState], id: u32, gen: u32) -> Option<&mut LaneState> {
    lanes.get_mut(id as usize).filter(|l| l.live && l.gen == gen)
}

impl Inner {
    fn window(&self) -> u32 {
        match &self.limit {
            Limit::Fixed(n) => *n,
            Limit::Auto(l) => l.0.window(),
            Limit::Unlimited => u32::MAX,
        }
    }

    fn heavy_window(&self) -> u32 {
        match (&self.limit, self.settings.heavy_in_flight) {
            (Limit::Unlimited, _) => u32::MAX,
            (_, HeavyInFlight::Fixed(n)) => n,
            (limit, HeavyInFlight::Auto) => {
                let w = self.window();
                let reserve = ((f64::from(w) * DEFAULT_LIGHT_RESERVE) as u32).max(1);
                let share = w.saturating_sub(reserve).max(1);
                // Light answers alone can make the whole window look calm (a flood's cheap requests are
                // served in no time) while every heavy place holds a long read: the heavy window answers
                // to the heavy answers' own latency as well.
                match limit {
                    Limit::Auto(l) => share.min(l.1.window()),
                    _ => share,
                }
            }
        }
    }

    fn queued_total(&self) -> usize {
        self.queued[LIGHT] + self.queued[HEAVY]
    }

    /// Whether a request of class `c` may have a slot without waiting: room in the budget (and the heavy
    /// budget, and for a throttled session's heavy request the throttled budget) and nobody of its class
    /// ahead of it.
    fn free_for(&self, c: usize, throttled: bool) -> bool {
        self.queued[c] == 0
            && self.in_flight < self.window()
            && (c == LIGHT || (self.heavy_in_flight < self.heavy_window() && self.throttled_room(throttled)))
    }

    /// Room for one more heavy request of a session throttled (or not): for a throttled one, a place in
    /// the throttled budget while no unthrottled request is inside the backend. A backend serves what it
    /// holds in its own order: a throttled read written beside a wallet's requests may be served first, and
    /// the wallet then waits the whole read, whatever order the gateway chose.
    fn throttled_room(&self, throttled: bool) -> bool {
        match self.settings.throttled_heavy_in_flight {
            Some(n) if throttled && !matches!(self.limit, Limit::Unlimited) => {
                self.throttled_in_flight[HEAVY] < n.max(1)
                    && self.in_flight == self.throttled_in_flight[LIGHT] + self.throttled_in_flight[HEAVY]
                    && self.throttled_rest.is_none()
            }
            _ => true,
        }
    }

    fn take(&mut self, lane: u32, c: usize, throttled: bool) {
        self.in_flight += 1;
        let l = &mut self.lanes[lane as usize];
        l.held[c] += 1;
        if c == HEAVY {
            self.heavy_in_flight += 1;
        }
        if throttled {
            self.throttled_in_flight[c] += 1;
            l.held_throttled[c] += 1;
        }
    }

    /// Slots given back: `held` per class, `throttled` of them per class taken while throttled.
    fn give_back(&mut self, held: [u32; 2], throttled: [u32; 2]) {
        self.in_flight = self.in_flight.saturating_sub(held[LIGHT] + held[HEAVY]);
        self.heavy_in_flight = self.heavy_in_flight.saturating_sub(held[HEAVY]);
        for c in [LIGHT, HEAVY] {
            self.throttled_in_flight[c] = self.throttled_in_flight[c].saturating_sub(throttled[c]);
        }
    }

    /// One slot of class `c` given back by a lane; it counts as throttled while the lane holds any of the
    /// class taken so (which of its requests was answered does not matter: they are alike). Returns
    /// whether it did.
    fn give_back_one(&mut self, lane: u32, c: usize) -> bool {
        let l = &mut self.lanes[lane as usize];
        l.held[c] -= 1;
        let mut held = [0; 2];
        held[c] = 1;
        let mut throttled = [0; 2];
        throttled[c] = u32::from(l.held_throttled[c] > 0);
        l.held_throttled[c] -= throttled[c];
        self.give_back(held, throttled);
        throttled[c] > 0
    }

    /// A throttled heavy read took `took` at the backend: the throttled budget rests long enough that
    /// such reads fill at most their share of the time. Returns whether a rest began or grew.
    fn rest_after(&mut self, took: Duration, now: Instant) -> bool {
        let Some(share) = self.settings.throttled_heavy_share.filter(|_| self.paced) else {
            return false;
        };
        let share = share.fraction();
        let until = now + took.mul_f64((1.0 - share) / share);
        if self.throttled_rest.is_some_and(|t| t >= until) {
            return false;
        }
        self.throttled_rest = Some(until);
        true
    }

    fn lane(&mut self, id: u32, gen: u32) -> Option<&mut LaneState> {
        live_lane(&mut self.lanes, id, gen)
    }

    fn step(&self, cost: f64) -> f64 {
        (1.0 + cost.max(0.0) / self.cost_unit).min(MAX_STEP)
    }

    /// Gives `group` its turn in class `c`, tagged with the group's cost of the moment.
    fn give_turn(&mut self, group: u64, c: usize) {
        let vtime = self.vtime[c];
        let Some(f) = self.flows.get(&group) else { return };
        let start = f.finish[c].max(vtime);
        let tag = start + self.step(f.cost);
        self.seq += 1;
        let seq = self.seq;
        let f = self.flows.get_mut(&group).expect("looked up above");
        f.start[c] = start;
        f.finish[c] = tag;
        f.turn[c] = seq;
        self.turns[c].push(Turn { tag, seq, group });
    }

    /// The group's cost grew while its turn waited: tags the turn again at the new cost, when that moves
    /// it back by at least one step of a free group. The old entry stays in the heap, skipped when it
    /// surfaces; the heap is rebuilt once such entries outnumber the groups.
    fn retag(&mut self, group: u64, c: usize) {
        let Some(f) = self.flows.get(&group) else { return };
        if f.turn[c] == 0 {
            return;
        }
        let tag = f.start[c] + self.step(f.cost);
        if tag < f.finish[c] + 1.0 {
            return;
        }
        self.seq += 1;
        let seq = self.seq;
        let f = self.flows.get_mut(&group).expect("looked up above");
        f.finish[c] = tag;
        f.turn[c] = seq;
        self.turns[c].push(Turn { tag, seq, group });
        if self.turns[c].len() > 2 * self.flows.len() + COMPACT_SLACK {
            let flows = &self.flows;
            self.turns[c].retain(|t| flows.get(&t.group).is_some_and(|f| f.turn[c] == t.seq));
        }
    }

    /// Drops stale turns from the top of class `c`'s heap; the top is then a group's valid turn.
    fn skip_stale(&mut self, c: usize) {
        while let Some(top) = self.turns[c].peek() {
            if self.flows.get(&top.group).is_some_and(|f| f.turn[c] == top.seq) {
                break;
            }
            self.turns[c].pop();
        }
    }

    /// Takes the oldest live token of `group`'s class-`c` queue, dropping cancelled ones (a lane's
    /// cancelled tokens are its earliest) and those of ended lanes.
    fn pop_live(&mut self, group: u64, c: usize) -> Option<Token> {
        let f = self.flows.get_mut(&group)?;
        while let Some(t) = f.queue[c].pop_front() {
            match live_lane(&mut self.lanes, t.lane, t.gen) {
                Some(l) if l.cancelled[c] > 0 => l.cancelled[c] -= 1,
                Some(_) => return Some(t),
                None => {}
            }
            self.zombies = self.zombies.saturating_sub(1);
        }
        None
    }

    /// Grants slots to queued requests while the budget has room, lowest tag first; between the classes,
    /// the turn least ahead of its class's virtual time goes first (light on a tie).
    fn dispatch(&mut self, now: Instant, m: &BudgetMetrics) {
        if !self.parked.is_empty() && self.throttled_room(true) {
            for t in std::mem::take(&mut self.parked) {
                self.turns[HEAVY].push(t);
            }
        }
        while self.in_flight < self.window() {
            self.skip_stale(LIGHT);
            self.skip_stale(HEAVY);
            // A throttled group's turn at the head of the heavy queue waits for the throttled budget, out
            // of the way: the unthrottled turns behind it go on meanwhile (a rest can last many reads).
            if !self.throttled_room(true) {
                while self.turns[HEAVY]
                    .peek()
                    .and_then(|t| self.flows.get(&t.group))
                    .is_some_and(|f| f.throttled)
                {
                    let t = self.turns[HEAVY].pop().expect("peeked");
                    self.parked.push(t);
                    self.skip_stale(HEAVY);
                }
                // Turns tagged again while set aside leave their old entries here: drop those in bulk.
                if self.parked.len() > 2 * self.flows.len() + COMPACT_SLACK {
                    let flows = &self.flows;
                    self.parked
                        .retain(|t| flows.get(&t.group).is_some_and(|f| f.turn[HEAVY] == t.seq));
                }
            }
            let head_throttled = self.turns[HEAVY]
                .peek()
                .and_then(|t| self.flows.get(&t.group))
                .is_some_and(|f| f.throttled);
            let heavy_ok = self.heavy_in_flight < self.heavy_window() && self.throttled_room(head_throttled);
            let lead = |c: usize| self.turns[c].peek().map(|t| t.tag - self.vtime[c]);
            let c = match (lead(LIGHT), lead(HEAVY).filter(|_| heavy_ok)) {
                (None, None) => break,
                (Some(_), None) => LIGHT,
                (None, Some(_)) => HEAVY,
                (Some(l), Some(h)) => {
                    if h < l {
                        HEAVY
                    } else {
                        LIGHT
                    }
                }
            };
            let Some(turn) = self.turns[c].pop() else { break };
            let token = self.pop_live(turn.group, c);
            let Some(f) = self.flows.get_mut(&turn.group) else {
                continue;
            };
            let throttled = f.throttled;
            f.turn[c] = 0;
            if !f.queue[c].is_empty() {
                self.give_turn(turn.group, c);
            } else if f.is_idle() {
                self.flows.remove(&turn.group);
            }
            let Some(t) = token else { continue };
            self.vtime[c] = self.vtime[c].max(turn.tag);
            self.queued[c] = self.queued[c].saturating_sub(1);
            self.take(t.lane, c, throttled);
            let l = &mut self.lanes[t.lane as usize];
            l.tokens[c] = l.tokens[c].saturating_sub(1);
            l.mailbox.granted[c].fetch_add(1, Ordering::AcqRel);
            l.mailbox.waker.wake();
            m.dispatched(now.saturating_duration_since(t.since));
        }
        // A class with no turn left starts its virtual time over, so tags stay small numbers; the groups
        // still queued in the other class keep no tag of this one.
        for c in [LIGHT, HEAVY] {
            if self.turns[c].is_empty() && (c == LIGHT || self.parked.is_empty()) && self.vtime[c] != 0.0 {
                self.vtime[c] = 0.0;
                for f in self.flows.values_mut() {
                    f.start[c] = 0.0;
                    f.finish[c] = 0.0;
                }
            }
        }
    }

    /// Makes room in a full queue for a request of `group` costing `cost`: the costliest group (if it
    /// costs more) loses its newest queued request, heavy first, and its session is told to answer it
    /// busy. Returns whether room was made.
    fn push_out(&mut self, group: u64, cost: f64) -> bool {
        loop {
            let victim = self
                .flows
                .iter()
                .filter(|(g, f)| {
                    **g != group && f.cost > cost && !(f.queue[LIGHT].is_empty() && f.queue[HEAVY].is_empty())
                })
                .max_by(|a, b| a.1.cost.total_cmp(&b.1.cost))
                .map(|(g, _)| *g);
            let Some(victim) = victim else { return false };
            let f = self.flows.get_mut(&victim).expect("found above");
            let c = if f.queue[HEAVY].is_empty() { LIGHT } else { HEAVY };
            let t = f.queue[c].pop_back().expect("not empty");
            if f.is_idle() {
                self.flows.remove(&victim);
            }
            // The newest token of a lane with live tokens is live: its cancelled ones are its earliest.
            match live_lane(&mut self.lanes, t.lane, t.gen) {
                Some(l) if l.tokens[c] > 0 => {
                    l.tokens[c] -= 1;
                    l.mailbox.pushed_out[c].fetch_add(1, Ordering::AcqRel);
                    l.mailbox.waker.wake();
                    self.queued[c] = self.queued[c].saturating_sub(1);
                    return true;
                }
                Some(l) => {
                    l.cancelled[c] = l.cancelled[c].saturating_sub(1);
                    self.zombies = self.zombies.saturating_sub(1);
                }
                None => self.zombies = self.zombies.saturating_sub(1),
            }
        }
    }

    /// Drops the cancelled tokens from the groups' queues once they outnumber the live ones.
    fn compact(&mut self) {
        if self.zombies <= self.queued_total() + COMPACT_SLACK {
            return;
        }
        let lanes = &mut self.lanes;
        for f in self.flows.values_mut() {
            for (c, q) in f.queue.iter_mut().enumerate() {
                // Front to back, so that each lane's earliest tokens are the ones dropped.
                q.retain(|t| match live_lane(lanes, t.lane, t.gen) {
                    Some(l) if l.cancelled[c] > 0 => {
                        l.cancelled[c] -= 1;
                        false
                    }
                    Some(_) => true,
                    None => false,
                });
            }
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

/// A learned budget: the window from `auto`, the heavy window from the same limits with its own start
/// and a floor of one.
fn learned(auto: WindowParams) -> Limit {
    let heavy = WindowParams {
        min: 1,
        initial: DEFAULT_HEAVY_INITIAL_WINDOW.min(auto.initial),
        ..auto
    };
    Limit::Auto(Box::new((AutoWindow::new(auto), AutoWindow::new(heavy))))
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
            InFlight::Auto => learned(auto),
            InFlight::Fixed(n) => Limit::Fixed(n.max(1)),
            InFlight::Off => Limit::Unlimited,
        };
        let mut inner = Inner {
            settings,
            limit,
            in_flight: 0,
            heavy_in_flight: 0,
            throttled_in_flight: [0; 2],
            throttled_rest: None,
            paced: tokio::runtime::Handle::try_current().is_ok(),
            queued: [0; 2],
            flows: HashMap::new(),
            turns: [BinaryHeap::new(), BinaryHeap::new()],
            parked: Vec::new(),
            zombies: 0,
            vtime: [0.0; 2],
            seq: 0,
            lanes: Vec::new(),
            free: Vec::new(),
            cost_unit: if cost_unit > 0.0 { cost_unit } else { DEFAULT_COST_UNIT },
            published: [-1; 5],
        };
        inner.publish(&metrics);
        let paced = inner.paced;
        let budget = Arc::new(Budget {
            inner: Mutex::new(inner),
            metrics,
            pacer: Arc::new(tokio::sync::Notify::new()),
        });
        if paced {
            tokio::spawn(pace(Arc::downgrade(&budget), budget.pacer.clone()));
        }
        budget
    }

    /// Ends the throttled budget's rest if it is over by `now`, and grants what then may go.
    pub fn end_rest(&self, now: Instant) {
        let mut g = self.lock();
        if g.throttled_rest.is_some_and(|t| t <= now) {
            g.throttled_rest = None;
            g.dispatch(now, &self.metrics);
            g.publish(&self.metrics);
        }
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
            (InFlight::Auto, Limit::Auto(l)) => Limit::Auto(l),
            (InFlight::Auto, _) => learned(WindowParams::default()),
            (InFlight::Fixed(n), _) => Limit::Fixed(n.max(1)),
            (InFlight::Off, _) => Limit::Unlimited,
        };
        g.settings = settings;
        if settings.throttled_heavy_share.is_none() {
            g.throttled_rest = None;
        }
        g.dispatch(now, &self.metrics);
        g.publish(&self.metrics);
    }

    /// Lets everything through from now on (the backend's budget was dropped from the configuration):
    /// sessions still holding a lane to it keep working, and its series leave /metrics.
    pub fn retire(&self, now: Instant) {
        self.set_settings(
            BudgetSettings {
                max_in_flight: InFlight::Off,
                ..self.settings()
            },
            now,
        );
        self.metrics.unregister();
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
                l.held_throttled = [0; 2];
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
                    held_throttled: [0; 2],
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
    /// `throttled`: the session is throttled by the cost model (see [`DEFAULT_THROTTLED_HEAVY_IN_FLIGHT`]).
    pub fn try_now(&self, heavy: bool, throttled: bool) -> bool {
        let c = class(heavy);
        let b = &*self.budget;
        let mut g = b.lock();
        if !g.free_for(c, throttled) {
            return false;
        }
        g.take(self.id, c, throttled);
        g.publish(&b.metrics);
        true
    }

    /// Takes a slot, or queues the request in its group with the group's current `cost` (any scale
    /// the caller keeps to; [`DEFAULT_COST_UNIT`] halves a share), or refuses it when the queue is full.
    pub fn enqueue(&self, heavy: bool, throttled: bool, cost: f64, now: Instant) -> Admit {
        let c = class(heavy);
        let b = &*self.budget;
        let mut g = b.lock();
        if g.free_for(c, throttled) {
            g.take(self.id, c, throttled);
            g.publish(&b.metrics);
            return Admit::Now;
        }
        let group = g.lanes[self.id as usize].group;
        let cost = if cost.is_nan() { 0.0 } else { cost.max(0.0) };
        if g.queued_total() >= g.settings.max_queued {
            if !g.push_out(group, cost) {
                b.metrics.refused();
                return Admit::Refused;
            }
            b.metrics.pushed_out();
        }
        let heavy_full = c == HEAVY && g.heavy_in_flight >= g.heavy_window();
        let in_flight = g.in_flight;
        if let Limit::Auto(l) = &mut g.limit {
            let (w, h) = &mut **l;
            if in_flight >= w.window() {
                w.note_full();
            }
            if heavy_full {
                h.note_full();
            }
        }
        let f = g.flows.entry(group).or_default();
        let grew = cost > f.cost;
        f.cost = cost;
        f.throttled = throttled;
        f.queue[c].push_back(Token {
            lane: self.id,
            gen: self.gen,
            since: now,
        });
        if f.turn[c] == 0 {
            g.give_turn(group, c);
        }
        if grew {
            g.retag(group, LIGHT);
            g.retag(group, HEAVY);
        }
        g.queued[c] += 1;
        g.lanes[self.id as usize].tokens[c] += 1;
        // Requests may wait while the window has room (throttled ones held back, or a full heavy budget):
        // a newcomer then goes at once if its turn comes first.
        if g.in_flight < g.window() {
            g.dispatch(now, &b.metrics);
        }
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
        let throttled = g.give_back_one(self.id, c);
        let rests = match latency {
            Some(took) if heavy && throttled => g.rest_after(took, now),
            _ => false,
        };
        if let (Some(latency), Limit::Auto(l)) = (latency, &mut g.limit) {
            let (w, h) = &mut **l;
            w.sample(latency, heavy);
            if heavy {
                h.sample(latency, true);
            }
        }
        g.dispatch(now, &b.metrics);
        g.publish(&b.metrics);
        drop(g);
        if rests {
            b.pacer.notify_one();
        }
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
            g.publish(&b.metrics);
            return;
        }
        let mb = &self.mailbox.granted[c];
        if mb.load(Ordering::Acquire) > 0 && l.held[c] > 0 {
            mb.fetch_sub(1, Ordering::AcqRel);
            g.give_back_one(self.id, c);
            g.dispatch(now, &b.metrics);
            g.publish(&b.metrics);
        }
    }

    /// Ready with the grants made to this lane, and its requests pushed out, since the last call;
    /// registers the task to be woken by the next one otherwise.
    pub fn poll_granted(&self, cx: &mut Context<'_>) -> Poll<News> {
        let take = |mb: &Mailbox| News {
            granted: [
                mb.granted[0].swap(0, Ordering::AcqRel),
                mb.granted[1].swap(0, Ordering::AcqRel),
            ],
            pushed_out: [
                mb.pushed_out[0].swap(0, Ordering::AcqRel),
                mb.pushed_out[1].swap(0, Ordering::AcqRel),
            ],
        };
        let got = take(&self.mailbox);
        if !got.is_empty() {
            return Poll::Ready(got);
        }
        self.mailbox.waker.register(cx.waker());
        let got = take(&self.mailbox);
        if !got.is_empty() {
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
        let (tokens, held, throttled) = (l.tokens, l.held, l.held_throttled);
        l.tokens = [0; 2];
        l.held = [0; 2];
        l.held_throttled = [0; 2];
        l.cancelled = [0; 2];
        g.free.push(self.id);
        g.give_back(held, throttled);
        for (c, n) in tokens.into_iter().enumerate() {
            g.queued[c] = g.queued[c].saturating_sub(n as usize);
            g.zombies += n as usize;
        }
        g.compact();
        g.dispatch(Instant::now(), &b.metrics);
        g.publish(&b.metrics);
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        // The pacing task holds only a weak reference: woken, it finds the budget gone and ends.
        self.pacer.notify_one();
    }
}

/// Ends each of the throttled budget's rests when it is over; waits to be told of the next one.
async fn pace(budget: std::sync::Weak<Budget>, wake: Arc<tokio::sync::Notify>) {
    loop {
        let rest = match budget.upgrade() {
            Some(b) => b.lock().throttled_rest,
            None => return,
        };
        match rest {
            Some(until) => tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await,
            None => wake.notified().await,
        }
        match budget.upgrade() {
            Some(b) => b.end_rest(tokio::time::Instant::now().into_std()),
            None => return,
        }
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
            throttled_heavy_in_flight: Some(DEFAULT_THROTTLED_HEAVY_IN_FLIGHT),
            throttled_heavy_share: Some(DEFAULT_THROTTLED_HEAVY_SHARE),
            max_queued: 1000,
        }
    }

    fn budget(s: BudgetSettings) -> Arc<Budget> {
        Budget::new(s, BudgetMetrics::detached())
    }

    fn grants(l: &Lane) -> [u32; 2] {
        news(l).granted
    }

    /// Queues `queued` ((lane index, cost), in arrival order) behind `hold`'s one slot of a budget of 1,
    /// then serves `n` of them one at a time and returns whose each was, by lane index.
    fn serve_order(hold: Lane, lanes: &[Lane], queued: &[(usize, f64)], n: usize) -> Vec<usize> {
        let now = Instant::now();
        for &(i, cost) in queued {
            assert_eq!(lanes[i].enqueue(false, false, cost, now), Admit::Queued);
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
        assert!(l.try_now(false, false));
        assert!(l.try_now(true, false));
        assert!(!l.try_now(false, false));
        assert_eq!(b.load(), (2, 1, 0));
        l.release(true, None, Instant::now());
        assert_eq!(b.load(), (1, 0, 0));
        drop(l);
        assert_eq!(b.load(), (0, 0, 0));
    }

    #[test]
    fn throttled_sessions_share_one_heavy_place() {
        let b = budget(fixed(8, 6));
        let (abuser, other_abuser, wallet) = (b.lane(1), b.lane(2), b.lane(3));
        let now = Instant::now();
        // One throttled heavy request inside the backend; a second waits, whichever group it is of,
        // though five heavy places are free.
        assert!(abuser.try_now(true, true));
        assert!(!other_abuser.try_now(true, true));
        assert_eq!(other_abuser.enqueue(true, true, 5000.0, now), Admit::Queued);
        // Their light requests go at once; an unthrottled wallet's heavy ones queue (one waits already)
        // and are granted at once, ahead of the throttled one.
        assert!(abuser.try_now(false, true));
        assert_eq!(wallet.enqueue(true, false, 0.0, now), Admit::Queued);
        assert_eq!(wallet.enqueue(true, false, 0.0, now), Admit::Queued);
        assert_eq!(grants(&wallet), [0, 2]);
        assert_eq!(grants(&other_abuser), [0, 0]);
        // The throttled place comes free while the wallet's requests are inside the backend: the waiting
        // throttled request is not written beside them, and goes once they are answered.
        abuser.release(true, None, now);
        assert_eq!(grants(&other_abuser), [0, 0]);
        wallet.release(true, None, now);
        assert_eq!(grants(&other_abuser), [0, 0]);
        wallet.release(true, None, now);
        assert_eq!(grants(&other_abuser), [0, 1]);
        assert!(!abuser.try_now(true, true));
        // A lane dropped with its throttled place gives it back.
        drop(other_abuser);
        assert!(abuser.try_now(true, true));
        // Off: throttled sessions use the heavy budget like any others.
        let b = budget(BudgetSettings {
            throttled_heavy_in_flight: None,
            ..fixed(8, 6)
        });
        let l = b.lane(1);
        assert!(l.try_now(true, true) && l.try_now(true, true) && l.try_now(true, true));
    }

    /// After a throttled read the throttled budget rests nine times as long as the read took (a 10 % share):
    /// a cheap throttled group's turn steps aside meanwhile, so an unthrottled group queued behind it goes at
    /// once, and the throttled one goes when the rest is over. The rest is ended by the budget's own task,
    /// on the runtime's (paused) clock; "off" rests not at all.
    #[tokio::test(start_paused = true)]
    async fn a_throttled_read_makes_the_throttled_budget_rest_while_others_go_on() {
        let settings = BudgetSettings {
            throttled_heavy_share: Some(Share(100)),
            ..fixed(4, 4)
        };
        let b = budget(settings);
        let (abuser, cheap_abuser, wallet) = (b.lane(1), b.lane(2), b.lane(3));
        let read = Duration::from_millis(10);
        let start = tokio::time::Instant::now().into_std();
        assert!(abuser.try_now(true, true));
        // Throttled, yet the cheapest group: its turn heads the heavy queue.
        assert_eq!(cheap_abuser.enqueue(true, true, 0.0, start), Admit::Queued);
        abuser.release(true, Some(read), start);
        assert_eq!(grants(&cheap_abuser), [0, 0], "granted during the rest");
        assert_eq!(wallet.enqueue(true, false, 50.0, start), Admit::Queued);
        assert_eq!(grants(&wallet), [0, 1], "the wallet waited behind a resting turn");
        wallet.release(true, Some(read), start);
        assert_eq!(grants(&cheap_abuser), [0, 0]);
        tokio::time::sleep(Duration::from_millis(89)).await;
        assert_eq!(grants(&cheap_abuser), [0, 0], "the rest ended early");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(grants(&cheap_abuser), [0, 1], "the rest did not end");
        // Off: the next throttled read goes as soon as the place is free.
        b.set_settings(
            BudgetSettings {
                throttled_heavy_share: None,
                ..settings
            },
            tokio::time::Instant::now().into_std(),
        );
        assert_eq!(abuser.enqueue(true, true, 0.0, start), Admit::Queued);
        cheap_abuser.release(true, Some(read), tokio::time::Instant::now().into_std());
        assert_eq!(grants(&abuser), [0, 1]);
    }

    /// A throttled session's heavy request is not written while an unthrottled light request is inside the
    /// backend either (throttled light ones do not hold it back), though every place is free.
    #[test]
    fn a_throttled_heavy_request_waits_for_unthrottled_requests_to_be_answered() {
        let b = budget(fixed(8, 6));
        let (abuser, wallet) = (b.lane(1), b.lane(3));
        let now = Instant::now();
        assert!(abuser.try_now(false, true));
        assert!(wallet.try_now(false, false));
        assert!(!abuser.try_now(true, true));
        assert_eq!(abuser.enqueue(true, true, 5000.0, now), Admit::Queued);
        assert_eq!(grants(&abuser), [0, 0]);
        // Another wallet's heavy request queues behind the held-back one, and is granted at once: the
        // budget has room and its turn comes first.
        let other = b.lane(4);
        assert_eq!(other.enqueue(true, false, 0.0, now), Admit::Queued);
        assert_eq!(grants(&other), [0, 1]);
        assert_eq!(grants(&abuser), [0, 0]);
        wallet.release(false, None, now);
        other.release(true, None, now);
        assert_eq!(grants(&abuser), [0, 1]);
        // With the throttled budget off, nothing holds it back.
        let b = budget(BudgetSettings {
            throttled_heavy_in_flight: None,
            ..fixed(8, 6)
        });
        let (abuser, wallet) = (b.lane(1), b.lane(3));
        assert!(wallet.try_now(false, false));
        assert!(abuser.try_now(true, true));
    }

    #[test]
    fn fifo_within_a_group() {
        let b = budget(fixed(1, 1));
        let hold = b.lane(9);
        assert!(hold.try_now(false, false));
        // Three sessions of one group, queued alternately: served in arrival order.
        let lanes: Vec<Lane> = (0..3).map(|_| b.lane(7)).collect();
        let now = Instant::now();
        let mut expect = Vec::new();
        for round in 0..4 {
            for (i, l) in lanes.iter().enumerate() {
                assert_eq!(l.enqueue(false, false, 50.0 * round as f64, now), Admit::Queued);
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
        assert!(hold.try_now(false, false));
        // Group 0 costs nothing, group 1 one cost unit, group 2 nine: shares 1 : 1/2 : 1/10.
        let lanes: Vec<Lane> = (0..3).map(|g| b.lane(g)).collect();
        let mut queued = Vec::new();
        for _ in 0..120 {
            queued.push((0, 0.0));
            queued.push((1, 100.0));
            queued.push((2, 900.0));
        }
        let order = serve_order(hold, &lanes, &queued, 160);
        let count = |g| order.iter().filter(|&&w| w == g).count();
        // In the first 160 dispatches: 100, 50 and 10.
        assert_eq!((count(0), count(1), count(2)), (100, 50, 10), "{order:?}");
    }

    #[test]
    fn a_group_of_any_cost_leaves_the_queue_fair_for_the_next_ones() {
        let b = budget(fixed(1, 1));
        let hold = b.lane(99);
        assert!(hold.try_now(false, false));
        let now = Instant::now();
        // A group whose cost reads as large as a float goes (nobody else waits) …
        let huge = b.lane(7);
        assert_eq!(huge.enqueue(false, false, f64::MAX, now), Admit::Queued);
        assert_eq!(huge.enqueue(false, false, f64::INFINITY, now), Admit::Queued);
        hold.release(false, None, now);
        assert_eq!(grants(&huge), [1, 0]);
        huge.release(false, None, now);
        assert_eq!(grants(&huge), [1, 0]);
        // … and groups queued behind its last request still share by cost (2 : 1 at 0 and 100), not by
        // arrival: the tags have not run out of precision.
        let lanes: Vec<Lane> = (0..2).map(|g| b.lane(g)).collect();
        for _ in 0..30 {
            assert_eq!(lanes[0].enqueue(false, false, 0.0, now), Admit::Queued);
            assert_eq!(lanes[1].enqueue(false, false, 100.0, now), Admit::Queued);
        }
        huge.release(false, None, now);
        let mut order = Vec::new();
        for _ in 0..30 {
            let who = lanes.iter().position(|l| grants(l) == [1, 0]).expect("one grant");
            order.push(who);
            lanes[who].release(false, None, now);
        }
        let first = order.iter().filter(|&&w| w == 0).count();
        assert!((19..=21).contains(&first), "{order:?}");
    }

    #[test]
    fn an_expensive_group_is_not_starved() {
        let b = budget(fixed(1, 1));
        let hold = b.lane(99);
        assert!(hold.try_now(false, false));
        let rich = b.lane(1);
        let cheap = b.lane(2);
        let now = Instant::now();
        // The expensive group's one request waits while cheap requests keep arriving, two per dispatch.
        assert_eq!(rich.enqueue(false, false, 10_000.0, now), Admit::Queued);
        assert_eq!(cheap.enqueue(false, false, 0.0, now), Admit::Queued);
        hold.release(false, None, now);
        let mut served_cheap = 0;
        let rich_at = loop {
            cheap.enqueue(false, false, 0.0, now);
            cheap.enqueue(false, false, 0.0, now);
            if grants(&rich) == [1, 0] {
                break served_cheap;
            }
            assert_eq!(grants(&cheap), [1, 0]);
            served_cheap += 1;
            assert!(served_cheap < 1000, "the expensive request never went");
            cheap.release(false, None, now);
        };
        // Its turn was tagged one step of its cost (101 free steps) past the virtual time it arrived at:
        // cheaper requests arriving meanwhile go first, up to that step, and then it goes.
        assert!((95..=110).contains(&rich_at), "{rich_at}");
        // And so does its next request.
        rich.release(false, None, now);
        rich.enqueue(false, false, 10_000.0, now);
        let mut before = 0;
        loop {
            cheap.enqueue(false, false, 0.0, now);
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
        assert!(a.try_now(true, false));
        // A second heavy waits for the heavy budget although the window has room…
        assert!(!a.try_now(true, false));
        assert_eq!(a.enqueue(true, false, 0.0, now), Admit::Queued);
        // …while a light request goes at once.
        assert!(w.try_now(false, false));
        assert_eq!(b.load(), (2, 1, 1));
        a.release(true, Some(Duration::from_millis(5)), now);
        assert_eq!(grants(&a), [0, 1]);
        assert_eq!(b.load(), (2, 1, 0));
    }

    fn news(l: &Lane) -> News {
        let mut cx = Context::from_waker(Waker::noop());
        match l.poll_granted(&mut cx) {
            Poll::Ready(n) => n,
            Poll::Pending => News::default(),
        }
    }

    #[test]
    fn a_newcomer_passes_a_backlog_queued_while_its_groups_were_cheap() {
        let b = budget(BudgetSettings {
            max_queued: 10_000,
            ..fixed(2, 1)
        });
        let now = Instant::now();
        let heavy_hold = b.lane(90);
        assert!(heavy_hold.try_now(true, false));
        let light_hold = b.lane(91);
        assert!(light_hold.try_now(false, false));
        // A flood's groups queue heavy and light requests while they still cost nothing…
        let flood: Vec<Lane> = (1..=4).map(|g| b.lane(g)).collect();
        for l in &flood {
            for _ in 0..10 {
                assert_eq!(l.enqueue(true, false, 0.0, now), Admit::Queued);
                assert_eq!(l.enqueue(false, false, 0.0, now), Admit::Queued);
            }
        }
        // …and their light requests are served while the heavy budget stays full.
        light_hold.release(false, None, now);
        for _ in 0..20 {
            let who = flood.iter().find(|l| grants(l) == [1, 0]).expect("a light grant");
            who.release(false, None, now);
        }
        // By now the flood costs a lot; an honest wallet's heavy request arrives.
        for l in &flood {
            l.enqueue(false, false, 5000.0, now);
        }
        let honest = b.lane(50);
        assert_eq!(honest.enqueue(true, false, 0.0, now), Admit::Queued);
        // The next heavy slot is the wallet's, not one of the forty heavy requests queued before it.
        heavy_hold.release(true, None, now);
        assert_eq!(grants(&honest), [0, 1]);
        assert!(flood.iter().all(|l| grants(l)[1] == 0));
    }

    #[test]
    fn a_full_queue_pushes_out_the_costliest_groups_newest() {
        let b = budget(BudgetSettings {
            max_queued: 3,
            ..fixed(1, 1)
        });
        let now = Instant::now();
        let hold = b.lane(90);
        assert!(hold.try_now(false, false));
        let flood = b.lane(1);
        let other = b.lane(2);
        assert_eq!(flood.enqueue(false, false, 5000.0, now), Admit::Queued);
        assert_eq!(flood.enqueue(true, false, 5000.0, now), Admit::Queued);
        assert_eq!(other.enqueue(false, false, 300.0, now), Admit::Queued);
        // Full. The flood's own newcomer and a costlier one find no one costlier to push out.
        assert_eq!(flood.enqueue(false, false, 5000.0, now), Admit::Refused);
        assert_eq!(b.lane(3).enqueue(false, false, 9000.0, now), Admit::Refused);
        assert_eq!(b.metrics().refused_total(), 2);
        assert!(news(&flood).is_empty());
        // A cheaper wallet's request takes the place of the costliest group's newest (its heavy one).
        let honest = b.lane(4);
        assert_eq!(honest.enqueue(false, false, 0.0, now), Admit::Queued);
        assert_eq!(
            news(&flood),
            News {
                granted: [0, 0],
                pushed_out: [0, 1]
            }
        );
        assert_eq!(b.metrics().pushed_out_total(), 1);
        assert_eq!(b.load(), (1, 0, 3));
        // And the wallet goes first.
        hold.release(false, None, now);
        assert_eq!(grants(&honest), [1, 0]);
        // The flood's session withdrawing a request it was told is gone changes nothing.
        flood.cancel(true, now);
        assert_eq!(b.load(), (1, 0, 2));
    }

    #[test]
    fn queue_cap_refuses() {
        let b = budget(BudgetSettings {
            max_queued: 2,
            ..fixed(1, 1)
        });
        let l = b.lane(1);
        let now = Instant::now();
        assert!(l.try_now(false, false));
        assert_eq!(l.enqueue(false, false, 0.0, now), Admit::Queued);
        assert_eq!(l.enqueue(true, false, 0.0, now), Admit::Queued);
        assert_eq!(l.enqueue(false, false, 0.0, now), Admit::Refused);
        assert_eq!(b.metrics().refused_total(), 1);
    }

    #[test]
    fn cancelled_and_closed_lanes_give_everything_back() {
        let b = budget(fixed(1, 1));
        let a = b.lane(1);
        let c = b.lane(2);
        let now = Instant::now();
        assert!(a.try_now(false, false));
        assert_eq!(c.enqueue(false, false, 0.0, now), Admit::Queued);
        assert_eq!(c.enqueue(false, false, 0.0, now), Admit::Queued);
        // One times out in the queue: the other keeps its place.
        c.cancel(false, now);
        assert_eq!(b.load(), (1, 0, 1));
        // The session holding the slot ends: its slot goes to the queue.
        drop(a);
        assert_eq!(grants(&c), [1, 0]);
        assert_eq!(b.load(), (1, 0, 0));
        // A grant not collected yet is given back by a cancel.
        let d = b.lane(3);
        assert_eq!(d.enqueue(false, false, 0.0, now), Admit::Queued);
        c.release(false, None, now);
        d.cancel(false, now);
        assert_eq!(b.load(), (0, 0, 0));
        // A session that ends while queued leaves nothing behind, and no grant goes to it.
        let e = b.lane(4);
        assert!(e.try_now(false, false));
        let f = b.lane(5);
        assert_eq!(f.enqueue(false, false, 0.0, now), Admit::Queued);
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
        assert!(a.try_now(false, false));
        for _ in 0..3 {
            assert_eq!(a.enqueue(false, false, 0.0, now), Admit::Queued);
        }
        b.set_settings(fixed(2, 1), now);
        assert_eq!(grants(&a), [1, 0]);
        assert_eq!(b.load(), (2, 0, 2));
        b.retire(now);
        assert_eq!(grants(&a), [2, 0]);
        assert_eq!(b.load(), (4, 0, 0));
        assert!(a.try_now(true, false));
    }

    #[test]
    fn many_cancellations_are_compacted() {
        let b = budget(BudgetSettings {
            max_queued: 100_000,
            ..fixed(1, 1)
        });
        let a = b.lane(1);
        let now = Instant::now();
        assert!(a.try_now(false, false));
        for _ in 0..3000 {
            assert_eq!(a.enqueue(false, false, 0.0, now), Admit::Queued);
        }
        let keep = b.lane(2);
        assert_eq!(keep.enqueue(false, false, 0.0, now), Admit::Queued);
        for _ in 0..3000 {
            a.cancel(false, now);
        }
        let left: usize = b.lock().flows.values().map(|f| f.queue[LIGHT].len()).sum();
        assert!(left < 1100, "{left}");
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
            while l.try_now(false, false) {}
            l.enqueue(false, false, 0.0, now);
            let ms = if i < 8 { 1 } else { 50 };
            l.release(false, Some(Duration::from_millis(ms)), now);
            grants(&l);
        }
        assert!(b.window() < 8, "{}", b.window());
    }

    #[test]
    fn the_heavy_window_follows_heavy_answers_alone() {
        let b = Budget::with_params(
            BudgetSettings {
                throttled_heavy_in_flight: None,
                ..BudgetSettings::default()
            },
            BudgetMetrics::detached(),
            WindowParams {
                initial: 16,
                min: 2,
                ..WindowParams::default()
            },
            DEFAULT_COST_UNIT,
        );
        let heavy_window = |b: &Budget| b.lock().heavy_window();
        assert_eq!((b.window(), heavy_window(&b)), (16, DEFAULT_HEAVY_INITIAL_WINDOW));
        let l = b.lane(1);
        let now = Instant::now();
        // A base for each class: a heavy read takes 1 ms with nothing ahead of it.
        assert!(l.try_now(true, false));
        l.release(true, Some(Duration::from_millis(1)), now);
        // Then light answers come back at their base while heavy ones wait 40 ms (but one in twenty, a
        // wallet's small read, which keeps the heavy base where it is): the window stays open, the heavy
        // window closes to one or two.
        for i in 0..400 {
            while l.try_now(false, false) {}
            while l.try_now(true, false) {}
            l.enqueue(true, false, 0.0, now);
            l.enqueue(false, false, 0.0, now);
            l.release(false, Some(Duration::from_micros(100)), now);
            if b.load().1 > 0 {
                let ms = if i % 20 == 0 { 1 } else { 40 };
                l.release(true, Some(Duration::from_millis(ms)), now);
            }
            grants(&l);
        }
        assert!(b.window() >= 16, "{}", b.window());
        assert!(heavy_window(&b) <= 2, "{}", heavy_window(&b));
    }
}
