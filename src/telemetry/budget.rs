//! Series of the backends' in-flight budgets: the window, what is in flight and queued, and what waiting
//! cost. Labelled like the upstream connect histogram, by the front that names the backend first and the
//! backend's position in that front's list: never by the backend's address.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::LazyLock;
use std::time::Duration;

/// Seconds waited for a slot: from a queue that barely formed to one as long as `request_timeout`.
const WAIT_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    front: String,
    upstream: String,
}

type Histograms = Family<BackendLabels, Histogram, fn() -> Histogram>;

fn wait_histogram() -> Histogram {
    Histogram::new(WAIT_BUCKETS)
}

struct Series {
    window: Family<BackendLabels, Gauge>,
    heavy_window: Family<BackendLabels, Gauge>,
    in_flight: Family<BackendLabels, Gauge>,
    heavy_in_flight: Family<BackendLabels, Gauge>,
    queued: Family<BackendLabels, Gauge>,
    dispatched: Family<BackendLabels, Counter>,
    refused: Family<BackendLabels, Counter>,
    pushed_out: Family<BackendLabels, Counter>,
    wait: Histograms,
}

static SERIES: LazyLock<Series> = LazyLock::new(|| Series {
    window: Family::default(),
    heavy_window: Family::default(),
    in_flight: Family::default(),
    heavy_in_flight: Family::default(),
    queued: Family::default(),
    dispatched: Family::default(),
    refused: Family::default(),
    pushed_out: Family::default(),
    wait: Family::new_with_constructor(wait_histogram as fn() -> Histogram),
});

/// One backend's handles: each update is a relaxed atomic store or add.
#[derive(Clone)]
pub struct BudgetMetrics {
    window: Gauge,
    heavy_window: Gauge,
    in_flight: Gauge,
    heavy_in_flight: Gauge,
    queued: Gauge,
    dispatched: Counter,
    refused: Counter,
    pushed_out: Counter,
    wait: Histogram,
    /// The series' labels; none when detached.
    labels: Option<BackendLabels>,
}

impl BudgetMetrics {
    /// The handles of the backend at `position` in `front`'s upstream list.
    pub fn new(front: &str, position: usize) -> BudgetMetrics {
        let s = &*SERIES;
        let l = BackendLabels {
            front: front.into(),
            upstream: position.to_string(),
        };
        BudgetMetrics {
            window: s.window.get_or_create_owned(&l),
            heavy_window: s.heavy_window.get_or_create_owned(&l),
            in_flight: s.in_flight.get_or_create_owned(&l),
            heavy_in_flight: s.heavy_in_flight.get_or_create_owned(&l),
            queued: s.queued.get_or_create_owned(&l),
            dispatched: s.dispatched.get_or_create_owned(&l),
            refused: s.refused.get_or_create_owned(&l),
            pushed_out: s.pushed_out.get_or_create_owned(&l),
            wait: s.wait.get_or_create_owned(&l),
            labels: Some(l),
        }
    }

    /// Takes the backend's series off /metrics (its budget was dropped): a budget still held by the
    /// sessions of the old configuration writes to them unseen, and a budget made later for the same front
    /// and position starts series of its own instead of sharing these.
    pub fn unregister(&self) {
        let Some(l) = &self.labels else { return };
        let s = &*SERIES;
        for g in [&s.window, &s.heavy_window, &s.in_flight, &s.heavy_in_flight, &s.queued] {
            g.remove(l);
        }
        for c in [&s.dispatched, &s.refused, &s.pushed_out] {
            c.remove(l);
        }
        s.wait.remove(l);
    }

    /// Handles registered nowhere, for budgets built outside a gateway (unit tests).
    pub fn detached() -> BudgetMetrics {
        BudgetMetrics {
            window: Gauge::default(),
            heavy_window: Gauge::default(),
            in_flight: Gauge::default(),
            heavy_in_flight: Gauge::default(),
            queued: Gauge::default(),
            dispatched: Counter::default(),
            refused: Counter::default(),
            pushed_out: Counter::default(),
            wait: wait_histogram(),
            labels: None,
        }
    }

    /// Sets one gauge of the budget's state: 0 window, 1 heavy window, 2 in flight, 3 heavy in flight,
    /// 4 queued.
    pub fn set(&self, gauge: usize, v: i64) {
        let g = match gauge {
            0 => &self.window,
            1 => &self.heavy_window,
            2 => &self.in_flight,
            3 => &self.heavy_in_flight,
            _ => &self.queued,
        };
        g.set(v);
    }

    /// A request that waited `waited` for its slot and got it.
    pub fn dispatched(&self, waited: Duration) {
        self.dispatched.inc();
        self.wait.observe(waited.as_secs_f64());
    }

    /// A request refused because the queue was at its cap.
    pub fn refused(&self) {
        self.refused.inc();
    }

    /// A queued request pushed out of the full queue by a cheaper group's newcomer.
    pub fn pushed_out(&self) {
        self.pushed_out.inc();
    }

    pub fn pushed_out_total(&self) -> u64 {
        self.pushed_out.get()
    }

    pub fn dispatched_total(&self) -> u64 {
        self.dispatched.get()
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.get()
    }
}

impl std::fmt::Debug for BudgetMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BudgetMetrics")
    }
}

/// Registers the budget series, in exposition order.
pub fn register(r: &mut Registry) {
    let s = &*SERIES;
    r.register(
        "upstream_window",
        "Requests a backend may have in flight at once (its in-flight budget, configured or learned), by front and upstream position",
        s.window.clone(),
    );
    r.register(
        "upstream_heavy_window",
        "Heavy requests (history, unspent, large header reads) a backend may have in flight at once",
        s.heavy_window.clone(),
    );
    r.register(
        "upstream_in_flight",
        "Requests written to a backend and not answered yet, across every session naming it",
        s.in_flight.clone(),
    );
    r.register(
        "upstream_heavy_in_flight",
        "Heavy requests written to a backend and not answered yet",
        s.heavy_in_flight.clone(),
    );
    r.register(
        "upstream_queued",
        "Requests waiting for a slot in a backend's budget",
        s.queued.clone(),
    );
    r.register(
        "upstream_dispatched_after_wait",
        "Requests that waited for a slot in a backend's budget and got one",
        s.dispatched.clone(),
    );
    r.register(
        "upstream_queue_refused",
        "Requests answered -102 at once because a backend's queue was at its cap",
        s.refused.clone(),
    );
    r.register(
        "upstream_queue_pushed_out",
        "Queued requests answered -102 to make room in a backend's full queue for a cheaper group's request (the costliest group's newest first)",
        s.pushed_out.clone(),
    );
    r.register_with_unit(
        "upstream_queue_wait",
        "Time requests that got a slot waited for it",
        Unit::Seconds,
        s.wait.clone(),
    );
}
