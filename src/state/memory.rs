//! Process-wide budget for the bytes sessions buffer: for Electrum, partial request lines in the framing,
//! output queued toward clients, requests queued toward the backend and partial backend replies; for peer
//! fronts, the relay's buffers and an address message being filtered.
//!
//! Each session's buffers are bounded on their own, but those bounds multiplied by the connection caps
//! allow gigabytes. Every session therefore reports what it holds to one [`MemoryBudget`]; when the total
//! passes the budget, the largest holders are cut, one at a time, until what they hold covers the excess.
//! Sessions holding less than [`MIN_CUT`] are never cut: an honest wallet's request and reply fit in that,
//! so a budget filled by an attacker's big buffers never costs small sessions their connection.
//!
//! The hot path is one comparison per event: a session's charge moves in [`STEP`]s, and only a change of
//! step touches the shared counter (one atomic add). The registry of candidates is a sharded map that a
//! session enters once, the first time it holds [`MIN_CUT`], and leaves when it ends; it is scanned only
//! when the budget is exceeded, at most once per [`RECLAIM_INTERVAL`].

use futures_util::task::AtomicWaker;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Process-wide resource limits (`[limits]`); reloadable.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes all Electrum and peer sessions together may buffer (see [`MemoryBudget`]).
    pub memory_budget: u64,
}

/// The budget unless `[limits] memory_budget` says otherwise: a quarter of a 1 GiB VPS, which also runs
/// the indexer. With the default caps, an ordinary wallet session holds a few KiB at most.
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 << 20;

/// The smallest budget `gatehouse check` accepts: below it, one big but legitimate reply would fill it.
pub const MIN_MEMORY_BUDGET: u64 = 1 << 20;

/// Charges move in steps of this many bytes (rounded up), so a session touches the shared counter only
/// when its buffers cross a step, not per message.
pub const STEP: usize = 4096;

/// Sessions holding less than this are never cut.
pub const MIN_CUT: usize = 64 * 1024;

/// While the budget stays exceeded (e.g. by many small sessions, which are never cut), the candidates
/// are scanned at most this often; a charge that finds the budget exceeded within this time of the last
/// scan leaves it to the next charge that finds it so.
const RECLAIM_INTERVAL: Duration = Duration::from_millis(10);

const SHARDS: usize = 16;

/// Part of the registry of sessions that may be cut, by session id.
type Shard = Mutex<HashMap<u64, Arc<Meter>>>;

/// What one session holds, shared between its [`Charge`] and the registry.
#[derive(Debug, Default)]
struct Meter {
    held: AtomicUsize,
    cut: AtomicBool,
    waker: AtomicWaker,
}

/// The budget shared by every session of the process.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
    cuts: AtomicU64,
    next_id: AtomicU64,
    epoch: Instant,
    /// Milliseconds since `epoch` before which no scan runs, so a budget that stays full is not scanned
    /// per event.
    next_reclaim: AtomicU64,
    reclaiming: AtomicBool,
    /// Sessions that have held at least `MIN_CUT`: the only ones that can be cut.
    large: Box<[Shard]>,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit: AtomicUsize::new(to_usize(limit)),
            used: AtomicUsize::new(0),
            cuts: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            next_reclaim: AtomicU64::new(0),
            reclaiming: AtomicBool::new(false),
            large: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    /// Takes effect at the next charge that grows a session's buffers.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(to_usize(limit), Ordering::Relaxed);
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes charged by all sessions now (each session's charge rounded up to a step).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Sessions cut for the budget since start.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }

    /// A new session's account, holding nothing.
    pub fn open(self: &Arc<Self>) -> Charge {
        Charge {
            budget: self.clone(),
            meter: None,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            charged: 0,
        }
    }

    fn shard(&self, id: u64) -> &Shard {
        &self.large[(id % SHARDS as u64) as usize]
    }

    /// Cuts the largest sessions until what they hold covers the excess. Sessions already cut count as
    /// freed (their memory goes as soon as their task ends), so a burst of charges does not cut more.
    fn reclaim(&self) {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if now_ms < self.next_reclaim.load(Ordering::Relaxed) {
            return;
        }
        if self.reclaiming.swap(true, Ordering::Acquire) {
            return;
        }
        let interval = u64::try_from(RECLAIM_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        self.next_reclaim
            .store(now_ms.saturating_add(interval), Ordering::Relaxed);
        let used = self.used();
        let limit = self.limit();
        if used > limit {
            let excess = used - limit;
            let mut freeing = 0usize;
            let mut candidates: Vec<(usize, Arc<Meter>)> = Vec::new();
            for shard in self.large.iter() {
                let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
                for m in shard.values() {
                    let held = m.held.load(Ordering::Relaxed);
                    if m.cut.load(Ordering::Relaxed) {
                        freeing += held;
                    } else if held >= MIN_CUT {
                        candidates.push((held, m.clone()));
                    }
                }
            }
            candidates.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
            for (held, m) in candidates {
                if freeing >= excess {
                    break;
                }
                m.cut.store(true, Ordering::Release);
                m.waker.wake();
                self.cuts.fetch_add(1, Ordering::Relaxed);
                freeing += held;
            }
        }
        self.reclaiming.store(false, Ordering::Release);
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// One session's share of the budget; dropping it releases the share.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    /// Made, and entered in the registry, the first time the session holds `MIN_CUT`: most sessions
    /// never do, and then cost neither the allocation nor a waker registration per poll.
    meter: Option<Arc<Meter>>,
    id: u64,
    /// What this session has added to the budget's counter (a multiple of `STEP`).
    charged: usize,
}

impl Charge {
    /// Reports the bytes the session buffers now. Cheap when nothing crossed a step.
    pub fn set(&mut self, bytes: usize) {
        let rounded = bytes.div_ceil(STEP).saturating_mul(STEP);
        if rounded == self.charged {
            return;
        }
        if let Some(m) = &self.meter {
            m.held.store(rounded, Ordering::Relaxed);
        }
        if rounded < self.charged {
            let freed = self.charged - rounded;
            self.charged = rounded;
            let used = self.budget.used.fetch_sub(freed, Ordering::Relaxed) - freed;
            // A scan skipped for the rate limit is made up at the next change of any session.
            if used > self.budget.limit() {
                self.budget.reclaim();
            }
            return;
        }
        let delta = rounded - self.charged;
        self.charged = rounded;
        let used = self.budget.used.fetch_add(delta, Ordering::Relaxed) + delta;
        if rounded >= MIN_CUT && self.meter.is_none() {
            let m = Arc::new(Meter::default());
            m.held.store(rounded, Ordering::Relaxed);
            let mut shard = self.budget.shard(self.id).lock().unwrap_or_else(|p| p.into_inner());
            shard.insert(self.id, m.clone());
            self.meter = Some(m);
        }
        if used > self.budget.limit() {
            self.budget.reclaim();
        }
    }

    /// What this session is charged now (its buffered bytes rounded up to a step).
    pub fn held(&self) -> usize {
        self.charged
    }

    /// Ready once the budget has chosen this session to be cut; registers the task to be woken then. The
    /// session must poll this after each [`set`](Self::set) that grew its charge, before it sleeps.
    pub fn poll_cut(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Never registered: never a candidate.
        let Some(m) = &self.meter else { return Poll::Pending };
        if m.cut.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        m.waker.register(cx.waker());
        if m.cut.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.charged > 0 {
            self.budget.used.fetch_sub(self.charged, Ordering::Relaxed);
        }
        if self.meter.is_some() {
            let mut shard = self.budget.shard(self.id).lock().unwrap_or_else(|p| p.into_inner());
            shard.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn is_cut(c: &Charge) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        c.poll_cut(&mut cx).is_ready()
    }

    #[test]
    fn charges_move_in_steps_and_are_released() {
        let b = MemoryBudget::new(DEFAULT_MEMORY_BUDGET);
        let mut a = b.open();
        a.set(1);
        assert_eq!(b.used(), STEP);
        a.set(STEP);
        assert_eq!(b.used(), STEP);
        a.set(STEP + 1);
        assert_eq!(b.used(), 2 * STEP);
        let mut c = b.open();
        c.set(10 * STEP);
        assert_eq!(b.used(), 12 * STEP);
        a.set(0);
        assert_eq!(b.used(), 10 * STEP);
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn the_largest_are_cut_first_and_small_sessions_never() {
        let b = MemoryBudget::new(1 << 20);
        let mut small: Vec<Charge> = (0..10).map(|_| b.open()).collect();
        for s in &mut small {
            s.set(MIN_CUT - STEP);
        }
        let mut mid = b.open();
        mid.set(300 * 1024);
        assert_eq!(b.cuts(), 0);
        // 600 KiB of small sessions + 300 KiB + 400 KiB: over by about 276 KiB; the biggest alone covers it.
        let mut big = b.open();
        big.set(400 * 1024);
        assert!(is_cut(&big), "the largest session is cut");
        assert!(!is_cut(&mid));
        assert!(small.iter().all(|s| !is_cut(s)));
        assert_eq!(b.cuts(), 1);
        // Until the cut session has gone, its bytes count as freed: no second cut.
        std::thread::sleep(RECLAIM_INTERVAL);
        let mut late = b.open();
        late.set(MIN_CUT);
        assert!(!is_cut(&late) && !is_cut(&mid));
        assert_eq!(b.cuts(), 1);
        drop(big);
        // Only small sessions left over the budget: nobody is cut.
        mid.set(0);
        late.set(0);
        b.set_limit(100 * 1024);
        std::thread::sleep(RECLAIM_INTERVAL);
        small[0].set(MIN_CUT - 2 * STEP);
        small[0].set(MIN_CUT - STEP);
        assert!(b.used() > b.limit());
        assert!(small.iter().all(|s| !is_cut(s)));
        assert_eq!(b.cuts(), 1);
    }

    #[test]
    fn a_cut_wakes_the_session() {
        let b = MemoryBudget::new(1 << 20);
        let mut victim = b.open();
        let flag = Arc::new(WakeFlag::default());
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        victim.set(900 * 1024);
        // A session polls after each charge; only a candidate registers its task.
        assert!(victim.poll_cut(&mut cx).is_pending());
        let mut other = b.open();
        other.set(200 * 1024);
        assert!(flag.0.load(Ordering::SeqCst), "the cut session's task was woken");
        assert!(victim.poll_cut(&mut cx).is_ready());
    }

    #[derive(Default)]
    struct WakeFlag(AtomicBool);

    impl std::task::Wake for WakeFlag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}
