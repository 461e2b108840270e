//! A session's side of its backend's in-flight budget (`upstream::budget`): requests the per-session
//! throttle has let go wait here for a slot at the backend, in their cost group's fair queue.
//!
//! The budget is per backend address. A session whose `server.version` the gateway answered binds its
//! lane at once, to the backend the pool would dial first, and dials only when a request is granted.
//! Otherwise which backend a session gets is known only once it has connected (the pool fails over), so
//! requests let go before that wait here without a place in any queue; the session dials, binds its lane,
//! and they take their places in order. A front whose `max_in_flight` is "off" never holds anything here.

use crate::state::cost::Account;
use crate::upstream::budget::{Admit, Budgets, Lane};
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// A request waiting for its slot.
pub struct Waiting<T> {
    pub item: T,
    pub heavy: bool,
    pub arrived: Instant,
}

/// What became of a request offered to the gate.
pub enum Offer<T> {
    /// It has its slot: write it now.
    Go(T),
    /// It waits for its slot.
    Waits,
    /// The backend's queue is full: answer it busy.
    Refused(T),
}

pub struct Gate<T> {
    /// The front budgets its backends.
    on: bool,
    /// The backend is known (the session connected).
    bound: bool,
    /// The lane at the backend's budget; none while unbound, or when the backend has no budget.
    lane: Option<Lane>,
    waiting: VecDeque<Waiting<T>>,
    /// Grants collected and not yet paired with a waiting request, per class (light, heavy).
    granted: [u32; 2],
    /// Push-outs collected and not yet paired with a waiting request, per class.
    pushed_out: [u32; 2],
    /// The cost model throttles the session: its heavy requests count against the throttled budget.
    throttled: bool,
}

impl<T> Gate<T> {
    pub fn new(on: bool) -> Gate<T> {
        Gate {
            on,
            bound: false,
            lane: None,
            waiting: VecDeque::new(),
            granted: [0; 2],
            pushed_out: [0; 2],
            throttled: false,
        }
    }

    /// Whether the cost model throttles the session, for the requests it lets go from now on.
    pub fn set_throttled(&mut self, throttled: bool) {
        self.throttled = throttled;
    }

    /// Whether a request may be written now, taking its slot if so: one uncontended lock when budgeted.
    pub fn try_now(&self, heavy: bool) -> bool {
        if !self.on {
            return true;
        }
        match (&self.lane, self.bound) {
            (_, false) => false,
            (None, true) => true,
            // The budget's own queues say whether anyone (this session included) waits ahead.
            (Some(l), true) => l.try_now(heavy, self.throttled),
        }
    }

    /// Offers a request that [`Gate::try_now`] did not let through; `cost` is its group's current
    /// relative cost (read only here, on the path that waits).
    pub fn offer(&mut self, item: T, heavy: bool, arrived: Instant, cost: f64, now: Instant) -> Offer<T> {
        let Some(lane) = self.lane.as_ref().filter(|_| self.bound) else {
            if self.bound {
                return Offer::Go(item);
            }
            self.waiting.push_back(Waiting { item, heavy, arrived });
            return Offer::Waits;
        };
        match lane.enqueue(heavy, self.throttled, cost, now.into_std()) {
            Admit::Now => Offer::Go(item),
            Admit::Queued => {
                self.waiting.push_back(Waiting { item, heavy, arrived });
                Offer::Waits
            }
            Admit::Refused => Offer::Refused(item),
        }
    }

    /// Requests wait for the backend to be known: the session must dial.
    pub fn wants_backend(&self) -> bool {
        self.on && !self.bound && !self.waiting.is_empty()
    }

    /// The session connected to `addr`: takes a lane at its budget (if it has one) and gives the waiting
    /// requests their slots or places, in order. Returns the requests to write now and those refused.
    pub fn bind(&mut self, budgets: &Budgets, addr: SocketAddr, account: &Account, now: Instant) -> (Vec<T>, Vec<T>) {
        if !self.on || self.bound {
            return (Vec::new(), Vec::new());
        }
        self.bound = true;
        self.lane = budgets.get(addr).map(|b| b.lane(group_key(account)));
        let (mut go, mut refused) = (Vec::new(), Vec::new());
        let cost = account.relative_cost();
        for w in std::mem::take(&mut self.waiting) {
            if self.try_now(w.heavy) {
                go.push(w.item);
                continue;
            }
            match self.offer(w.item, w.heavy, w.arrived, cost, now) {
                Offer::Go(item) => go.push(item),
                Offer::Waits => {}
                Offer::Refused(item) => refused.push(item),
            }
        }
        (go, refused)
    }

    /// Ready when slots were granted to this session's waiting requests; take them with
    /// [`Gate::next_granted`].
    pub fn poll_granted(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Grants only ever go to waiting requests: a session with none skips the mailbox's atomics, and
        // registers its waker on the first poll after it queues one (a grant made before that is found
        // by the count).
        let Some(lane) = self.lane.as_ref().filter(|_| !self.waiting.is_empty()) else {
            return Poll::Pending;
        };
        match lane.poll_granted(cx) {
            Poll::Ready(news) => {
                for c in 0..2 {
                    self.granted[c] += news.granted[c];
                    self.pushed_out[c] += news.pushed_out[c];
                }
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The oldest waiting request of a class a slot was granted to. Within a class grants come in the
    /// order the requests queued, so the oldest is the one granted.
    pub fn next_granted(&mut self, now: Instant) -> Option<Waiting<T>> {
        for c in 0..2 {
            while self.granted[c] > 0 {
                self.granted[c] -= 1;
                let heavy = c == 1;
                if let Some(pos) = self.waiting.iter().position(|w| w.heavy == heavy) {
                    return self.waiting.remove(pos);
                }
                // Nothing left to pair it with: give the slot back.
                self.release(heavy, None, now);
            }
        }
        None
    }

    /// The newest waiting request of a class the backend's full queue pushed out: answer it busy. Its
    /// place in the queue is already gone.
    pub fn next_pushed_out(&mut self) -> Option<Waiting<T>> {
        for c in 0..2 {
            while self.pushed_out[c] > 0 {
                self.pushed_out[c] -= 1;
                let heavy = c == 1;
                if let Some(pos) = self.waiting.iter().rposition(|w| w.heavy == heavy) {
                    return self.waiting.remove(pos);
                }
            }
        }
        None
    }

    /// A forwarded request was answered (`latency` after it was written) or abandoned: its slot goes back.
    pub fn release(&self, heavy: bool, latency: Option<Duration>, now: Instant) {
        if let Some(l) = &self.lane {
            l.release(heavy, latency, now.into_std());
        }
    }

    /// Takes out the requests that arrived before `cutoff` (they waited past the request timeout), their
    /// places withdrawn.
    pub fn expire(&mut self, cutoff: Instant, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].arrived <= cutoff {
                if let Some(w) = self.waiting.remove(i) {
                    self.withdraw(w.heavy, now);
                    out.push(w.item);
                }
            } else {
                i += 1;
            }
        }
        out
    }

    /// Takes out every waiting request (the session is closing or its backend failed).
    pub fn drain(&mut self, now: Instant) -> Vec<T> {
        let all: Vec<Waiting<T>> = self.waiting.drain(..).collect();
        for w in &all {
            self.withdraw(w.heavy, now);
        }
        all.into_iter().map(|w| w.item).collect()
    }

    fn withdraw(&self, heavy: bool, now: Instant) {
        if let (Some(l), true) = (&self.lane, self.bound) {
            l.cancel(heavy, now.into_std());
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// When the longest-waiting request arrived.
    pub fn oldest(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.arrived).min()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.waiting.iter().map(|w| &w.item)
    }
}

/// The cost group the ledger charges a session in: its tier group, its address group, or (accounted
/// alone) its own address.
pub fn group_key(account: &Account) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match (account.tier(), account.tier_group(), account.group()) {
        (Some(t), Some(net), _) => (0u8, t.name.as_str(), net).hash(&mut h),
        (_, _, Some(g)) => (1u8, g).hash(&mut h),
        _ => (2u8, account.ip()).hash(&mut h),
    }
    h.finish()
}

/// The budgets the Electrum fronts give their backends, in front order (the first front naming a backend
/// labels its series).
pub fn budget_specs(fronts: &[crate::front::Front]) -> Vec<crate::upstream::budget::BudgetSpec> {
    fronts
        .iter()
        .filter(|f| f.electrum.is_some())
        .flat_map(|f| {
            f.upstreams
                .iter()
                .enumerate()
                .map(|(position, &addr)| crate::upstream::budget::BudgetSpec {
                    addr,
                    settings: f.budget,
                    front: f.name.clone(),
                    position,
                })
        })
        .collect()
}
