//! Prometheus metrics, served as text (format 0.0.4) at `GET /metrics` on the admin listener.
//!
//! Two kinds of series:
//! - **Counters and histograms the data path bumps** (connections admitted, TLS handshakes, Electrum
//!   requests, cost, throttling, hard-limit disconnects, upstream connect latency, reloads). They live in
//!   one process-wide registry. Every label set a hot path touches is registered up front and its handle
//!   kept ([`FrontMetrics`], [`UpstreamMetrics`], the request matrix), so counting is one relaxed atomic
//!   add: no lock, no allocation, no map lookup per request or connection.
//! - **Values read at scrape time** from the running gateway (a [`LiveSource`]): open connections per front,
//!   refusals by reason (the guard's own counters), ban counts (the ban table's stats)
//!   and upstream up/down (each upstream pool). Nothing is counted twice.
//!
//! Labels are only ever a front's name, a trusted tier's name, an upstream's position in its front ("0", "1", …), a reason, a
//! result, a request class, a ban source or the version. Never a client address, never a backend address.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;
use std::time::Duration;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Seconds; from sub-millisecond loopback connects to a handshake that nearly hits its timeout.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrontLabels {
    pub front: String,
}

/// A served certificate: its front and its name (ACME name, SNI name or `default`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    pub front: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrontResultLabels {
    front: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method_class: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequestLabels {
    profile: String,
    method_class: String,
    result: String,
}

/// Method classes of the API front's cost model, plus `none` for requests refused before a method was read.
pub const API_CLASSES: [&str; 4] = ["cheap", "medium", "heavy", "none"];

/// What the API front did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiResult {
    /// Forwarded, and the node answered.
    Ok,
    /// Refused by policy: a method outside the caller's set, an invalid request, the cost hard limit.
    Refused,
    /// A missing or wrong credential (401).
    Unauthorized,
    /// Malformed (not JSON, too large) or the node failed to answer.
    Error,
}

impl ApiResult {
    const ALL: [ApiResult; 4] = [
        ApiResult::Ok,
        ApiResult::Refused,
        ApiResult::Unauthorized,
        ApiResult::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ApiResult::Ok => "ok",
            ApiResult::Refused => "refused",
            ApiResult::Unauthorized => "unauthorized",
            ApiResult::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub front: String,
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// What kind of Electrum method a request called, by its name space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Server,
    Headers,
    Scripthash,
    Transaction,
    Mempool,
    Keva,
    /// Fee estimates, unknown methods, and messages that are not a request at all.
    Other,
}

impl Class {
    pub const ALL: [Class; 7] = [
        Class::Server,
        Class::Headers,
        Class::Scripthash,
        Class::Transaction,
        Class::Mempool,
        Class::Keva,
        Class::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Server => "server",
            Class::Headers => "headers",
            Class::Scripthash => "scripthash",
            Class::Transaction => "transaction",
            Class::Mempool => "mempool",
            Class::Keva => "keva",
            Class::Other => "other",
        }
    }

    /// The class of a method name: a few prefix comparisons, no allocation.
    pub fn of(method: &str) -> Class {
        if let Some(rest) = method.strip_prefix("blockchain.") {
            if rest.starts_with("scripthash.") || rest.starts_with("address.") {
                Class::Scripthash
            } else if rest.starts_with("transaction.") {
                Class::Transaction
            } else if rest.starts_with("block.") || rest.starts_with("headers.") {
                Class::Headers
            } else if rest.starts_with("keva.") {
                Class::Keva
            } else {
                Class::Other
            }
        } else if method.starts_with("server.") {
            Class::Server
        } else if method.starts_with("mempool.") {
            Class::Mempool
        } else {
            Class::Other
        }
    }
}

/// What the gateway did with an Electrum request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqResult {
    /// Admitted: forwarded to the backend, or answered by the gateway itself.
    Ok,
    /// Malformed: not JSON, not a valid JSON-RPC request, or an oversized line.
    Error,
    /// Refused by policy: unknown or disabled method, bad parameters, subscription cap, cost hard limit,
    /// missing or repeated `server.version`.
    Refused,
}

impl ReqResult {
    const ALL: [ReqResult; 3] = [ReqResult::Ok, ReqResult::Error, ReqResult::Refused];

    fn as_str(self) -> &'static str {
        match self {
            ReqResult::Ok => "ok",
            ReqResult::Error => "error",
            ReqResult::Refused => "refused",
        }
    }
}

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    Error,
    Timeout,
}

impl Handshake {
    const ALL: [Handshake; 3] = [Handshake::Ok, Handshake::Error, Handshake::Timeout];

    fn as_str(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::Error => "error",
            Handshake::Timeout => "timeout",
        }
    }
}

/// Why a new admin API connection could not get a slot of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminShed {
    /// An older connection that had not presented the token and was not being served was closed for it.
    Displaced,
    /// Every slot it could take is busy or authenticated: the new connection is closed.
    Refused,
}

impl AdminShed {
    pub const ALL: [AdminShed; 2] = [AdminShed::Displaced, AdminShed::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminShed::Displaced => "displaced",
            AdminShed::Refused => "refused",
        }
    }
}

struct Metrics {
    accepted: Family<FrontLabels, Counter>,
    handshakes: Family<FrontResultLabels, Counter>,
    handshake_seconds: HistogramFamily<FrontLabels>,
    requests: Family<RequestLabels, Counter>,
    /// `[class][outcome]`, registered once so a request never touches the family's map.
    request_handles: [[Counter; 3]; 7],
    api_requests: Family<ApiRequestLabels, Counter>,
    /// bitcoind profile, `[class][result]`.
    api_handles: [[Counter; 4]; 4],
    cost_units: Counter<f64, AtomicU64>,
    throttled: Counter,
    hard_limit: Counter,
    slow_lines: Counter,
    unmatched_replies: Counter,
    versions_answered: Counter,
    upstream_connect_seconds: HistogramFamily<UpstreamLabels>,
    reloads: Family<ResultLabels, Counter>,
    reload_handles: [Counter; 2],
    build_info: Family<VersionLabels, Gauge>,
    admin_shed: Family<ReasonLabels, Counter>,
    admin_shed_handles: [Counter; AdminShed::ALL.len()],
    tier_sessions: Family<TierLabels, Counter>,
    tier_hard_limit: Family<TierLabels, Counter>,
    tier_bans_spared: Family<TierLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: String,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let requests = Family::<RequestLabels, Counter>::default();
    let request_handles = std::array::from_fn(|c| {
        std::array::from_fn(|o| {
            requests.get_or_create_owned(&RequestLabels {
                method_class: Class::ALL[c].as_str().to_string(),
                result: ReqResult::ALL[o].as_str().to_string(),
            })
        })
    });
    let api_requests = Family::<ApiRequestLabels, Counter>::default();
    let api_handles = std::array::from_fn(|c| {
        std::array::from_fn(|o| {
            api_requests.get_or_create_owned(&ApiRequestLabels {
                profile: "bitcoind".to_string(),
                method_class: API_CLASSES[c].to_string(),
                result: ApiResult::ALL[o].as_str().to_string(),
            })
        })
    });
    let reloads = Family::<ResultLabels, Counter>::default();
    let reload_handles = ["ok", "error"].map(|r| reloads.get_or_create_owned(&ResultLabels { result: r.into() }));
    let admin_shed = Family::<ReasonLabels, Counter>::default();
    let admin_shed_handles = AdminShed::ALL.map(|s| {
        admin_shed.get_or_create_owned(&ReasonLabels {
            reason: s.as_str().into(),
        })
    });
    let build_info = Family::<VersionLabels, Gauge>::default();
    build_info
        .get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .set(1);
    Metrics {
        accepted: Family::default(),
        handshakes: Family::default(),
        handshake_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        requests,
        request_handles,
        api_requests,
        api_handles,
        cost_units: Counter::default(),
        throttled: Counter::default(),
        hard_limit: Counter::default(),
        slow_lines: Counter::default(),
        unmatched_replies: Counter::default(),
        versions_answered: Counter::default(),
        upstream_connect_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        reloads,
        reload_handles,
        build_info,
        admin_shed,
        admin_shed_handles,
        tier_sessions: Family::default(),
        tier_hard_limit: Family::default(),
        tier_bans_spared: Family::default(),
    }
});

/// The handles of one trusted tier, registered when the tier is configured; labelled by the tier's name,
/// never by an address.
#[derive(Clone, Debug)]
pub struct TierMetrics {
    sessions: Counter,
    hard_limit: Counter,
    bans_spared: Counter,
}

impl TierMetrics {
    pub fn new(tier: &str) -> TierMetrics {
        let m = &*METRICS;
        let label = TierLabels { tier: tier.into() };
        TierMetrics {
            sessions: m.tier_sessions.get_or_create_owned(&label),
            hard_limit: m.tier_hard_limit.get_or_create_owned(&label),
            bans_spared: m.tier_bans_spared.get_or_create_owned(&label),
        }
    }

    /// A session (Electrum or API) accounted in the tier.
    pub fn session(&self) {
        self.sessions.inc();
    }

    /// A session of the tier cut at its (multiplied) hard limit.
    pub fn hard_limit(&self) {
        self.hard_limit.inc();
    }

    /// An automatic ban not made because the tier's bans are `never`.
    pub fn ban_spared(&self) {
        self.bans_spared.inc();
    }
}

/// The connection-path handles of one front, registered when the front is built.
#[derive(Clone)]
pub struct FrontMetrics {
    accepted: Counter,
    /// Only fronts that terminate TLS have handshake series.
    tls: Option<([Counter; 3], Histogram)>,
}

impl FrontMetrics {
    pub fn new(front: &str, tls: bool) -> FrontMetrics {
        let m = &*METRICS;
        let label = FrontLabels { front: front.into() };
        FrontMetrics {
            accepted: m.accepted.get_or_create_owned(&label),
            tls: tls.then(|| {
                let counts = Handshake::ALL.map(|h| {
                    m.handshakes.get_or_create_owned(&FrontResultLabels {
                        front: front.into(),
                        result: h.as_str().into(),
                    })
                });
                (counts, m.handshake_seconds.get_or_create_owned(&label))
            }),
        }
    }

    /// A connection the guard admitted.
    pub fn accepted(&self) {
        self.accepted.inc();
    }

    /// A finished TLS handshake; the duration is recorded for completed ones only.
    pub fn handshake(&self, result: Handshake, took: Duration) {
        let Some((counts, seconds)) = &self.tls else { return };
        let i = Handshake::ALL.iter().position(|h| *h == result).unwrap_or(0);
        counts[i].inc();
        if result == Handshake::Ok {
            seconds.observe(took.as_secs_f64());
        }
    }
}

impl std::fmt::Debug for FrontMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrontMetrics")
    }
}

/// Connect-latency histograms of a front's upstreams, by position.
#[derive(Clone)]
pub struct UpstreamMetrics {
    connect_seconds: Vec<Histogram>,
}

impl UpstreamMetrics {
    pub fn new(front: &str, upstreams: usize) -> UpstreamMetrics {
        let m = &*METRICS;
        UpstreamMetrics {
            connect_seconds: (0..upstreams)
                .map(|i| {
                    m.upstream_connect_seconds.get_or_create_owned(&UpstreamLabels {
                        front: front.into(),
                        upstream: i.to_string(),
                    })
                })
                .collect(),
        }
    }

    /// A successful connect (including the PROXY header, when sent) to the upstream at `position`.
    pub fn connected(&self, position: usize, took: Duration) {
        if let Some(h) = self.connect_seconds.get(position) {
            h.observe(took.as_secs_f64());
        }
    }
}

impl std::fmt::Debug for UpstreamMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamMetrics")
    }
}

/// One Electrum request (a batch counts each of its items).
#[inline]
pub fn request(class: Class, outcome: ReqResult) {
    let o = match outcome {
        ReqResult::Ok => 0,
        ReqResult::Error => 1,
        ReqResult::Refused => 2,
    };
    METRICS.request_handles[class as usize][o].inc();
}

/// One request of an API front (each item of a batch counts); `class` indexes [`API_CLASSES`].
#[inline]
pub fn api_request(class: usize, outcome: ApiResult) {
    let o = match outcome {
        ApiResult::Ok => 0,
        ApiResult::Refused => 1,
        ApiResult::Unauthorized => 2,
        ApiResult::Error => 3,
    };
    if let Some(row) = METRICS.api_handles.get(class) {
        row[o].inc();
    }
}

/// Cost units charged to a client's account.
#[inline]
pub fn cost_charged(units: f64) {
    if units.is_finite() && units > 0.0 {
        METRICS.cost_units.inc_by(units);
    }
}

/// A request the throttle delayed (it slept in its slot or waited for one).
#[inline]
pub fn throttled() {
    METRICS.throttled.inc();
}

/// A session closed for reaching the cost hard limit.
pub fn hard_limit_disconnect() {
    METRICS.hard_limit.inc();
}

/// A session closed because its partial request line arrived slower than `min_line_rate`.
pub fn slow_line_disconnect() {
    METRICS.slow_lines.inc();
}

/// A backend reply that answered no request in flight, dropped.
pub fn unmatched_reply() {
    METRICS.unmatched_replies.inc();
}

/// A wallet's server.version answered by the gateway, with no backend connection opened for it.
pub fn version_answered() {
    METRICS.versions_answered.inc();
}

/// A configuration reload, applied (`ok`) or rejected.
pub fn reload(ok: bool) {
    METRICS.reload_handles[usize::from(!ok)].inc();
}

/// An admin connection shed for lack of slots.
pub fn admin_connection_shed(how: AdminShed) {
    METRICS.admin_shed_handles[AdminShed::ALL.iter().position(|&s| s == how).unwrap_or(0)].inc();
}

/// ACME orders by result (`issued`, `failed`), kept apart from [`METRICS`] so the ACME client's one
/// series stays beside its own function.
static ACME_ORDERS: LazyLock<(Family<ResultLabels, Counter>, [Counter; 2])> = LazyLock::new(|| {
    let f = Family::<ResultLabels, Counter>::default();
    let h = ["issued", "failed"].map(|r| f.get_or_create_owned(&ResultLabels { result: r.into() }));
    (f, h)
});

/// An ACME order ended: a certificate `issued`, or `failed`.
pub fn acme_order(issued: bool) {
    ACME_ORDERS.1[usize::from(!issued)].inc();
}

/// Series read from the running gateway at scrape time (open connections, refusals, bans, cluster
/// links). The gateway's owner implements it, so this module reads no gateway state itself.
pub trait LiveSource: Send + Sync {
    /// Registers the series read now, in exposition order.
    fn register(&self, r: &mut Registry);
}

/// The exposition: the process-wide series plus, with `live`, the values read from the gateway now.
pub fn render(live: Option<&dyn LiveSource>) -> String {
    let m = &*METRICS;
    let mut r = Registry::with_prefix("gatehouse");
    r.register(
        "build_info",
        "Always 1; the version label names the running build",
        m.build_info.clone(),
    );
    if let Some(live) = live {
        live.register(&mut r);
    }
    r.register(
        "connections_accepted",
        "Client connections admitted by the guard, per front",
        m.accepted.clone(),
    );
    r.register(
        "tls_handshakes",
        "TLS handshakes, by front and result (ok, error, timeout)",
        m.handshakes.clone(),
    );
    r.register_with_unit(
        "tls_handshake_duration",
        "Duration of completed TLS handshakes, per front",
        Unit::Seconds,
        m.handshake_seconds.clone(),
    );
    r.register(
        "electrum_requests",
        "Electrum requests, by method class and result (ok: admitted; error: malformed; refused: by policy)",
        m.requests.clone(),
    );
    r.register(
        "api_requests",
        "API front requests, by profile, method class (cheap, medium, heavy; none before a method was read) and result (ok, refused, unauthorized, error)",
        m.api_requests.clone(),
    );
    r.register(
        "sni_routed",
        "TLS connections an SNI name routed from the listening front to another front, by front and target",
        SNI_ROUTED.clone(),
    );
    // Creates the ledger profile's rows of api_requests before the family is encoded.
    let ledger = &*LEDGER;
    r.register(
        "api_ledger_subscriptions",
        "Subscriptions (streams, accounts, books, path_find) ledger-profile API sessions hold at the node",
        ledger.subscriptions.clone(),
    );
    r.register(
        "api_ledger_subscriptions_refused",
        "Ledger-profile subscriptions refused by a cap, by scope (session, group)",
        ledger.refused.clone(),
    );
    r.register(
        "electrum_cost_units",
        "Cost units charged to clients' accounts",
        m.cost_units.clone(),
    );
    r.register(
        "electrum_throttled_requests",
        "Electrum requests delayed by the throttle (slept in their slot or waited for one)",
        m.throttled.clone(),
    );
    r.register(
        "electrum_hard_limit_disconnects",
        "Electrum sessions closed for reaching the cost hard limit",
        m.hard_limit.clone(),
    );
    r.register(
        "electrum_slow_line_disconnects",
        "Electrum sessions closed because a request line arrived slower than min_line_rate",
        m.slow_lines.clone(),
    );
    r.register(
        "electrum_unmatched_replies",
        "Electrum backend replies dropped because they answered no request in flight",
        m.unmatched_replies.clone(),
    );
    r.register(
        "electrum_versions_answered",
        "Electrum server.version requests the gateway answered itself, from what the backend said before",
        m.versions_answered.clone(),
    );
    r.register_with_unit(
        "upstream_connect_duration",
        "Duration of successful upstream connects, by front and upstream position",
        Unit::Seconds,
        m.upstream_connect_seconds.clone(),
    );
    r.register(
        "tier_sessions",
        "Sessions accounted in a trusted tier, by tier",
        m.tier_sessions.clone(),
    );
    r.register(
        "tier_hard_limit_disconnects",
        "Sessions of a trusted tier closed at the tier's own cost hard limit, by tier",
        m.tier_hard_limit.clone(),
    );
    r.register(
        "tier_bans_spared",
        "Automatic bans not made because the client's tier has bans = \"never\", by tier",
        m.tier_bans_spared.clone(),
    );
    r.register(
        "reloads",
        "Configuration reloads, by result (ok, error)",
        m.reloads.clone(),
    );
    r.register(
        "admin_connections_shed",
        "Admin API connections shed for lack of slots: displaced (an older one without the token was closed) or refused",
        m.admin_shed.clone(),
    );
    super::peer::register(&mut r);
    super::budget::register(&mut r);
    r.register(
        "acme_orders",
        "ACME orders, by result (issued, failed)",
        ACME_ORDERS.0.clone(),
    );
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &r);
    out
}

/// Fee classes of the API front's ledger profile (the node's own), as the `method_class` label.
pub const LEDGER_CLASSES: [&str; 4] = ["reference", "medium", "high", "malformed"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: String,
}

/// The ledger profile's series: its rows of `api_requests`, registered once so a request never touches
/// the family's map, and its subscriptions.
struct LedgerMetrics {
    /// `[class][result]` of `api_requests{profile="ledger"}`.
    requests: [[Counter; 4]; 4],
    subscriptions: Gauge,
    refused: Family<ScopeLabels, Counter>,
    /// `[session, group]`.
    refused_handles: [Counter; 2],
}

static LEDGER: LazyLock<LedgerMetrics> = LazyLock::new(|| {
    let requests = std::array::from_fn(|c| {
        std::array::from_fn(|o| {
            METRICS.api_requests.get_or_create_owned(&ApiRequestLabels {
                profile: "ledger".to_string(),
                method_class: LEDGER_CLASSES[c].to_string(),
                result: ApiResult::ALL[o].as_str().to_string(),
            })
        })
    });
    let refused = Family::<ScopeLabels, Counter>::default();
    let refused_handles = ["session", "group"].map(|s| refused.get_or_create_owned(&ScopeLabels { scope: s.into() }));
    LedgerMetrics {
        requests,
        subscriptions: Gauge::default(),
        refused,
        refused_handles,
    }
});

/// One request of a ledger-profile API front; `class` indexes [`LEDGER_CLASSES`].
#[inline]
pub fn ledger_request(class: usize, outcome: ApiResult) {
    let o = ApiResult::ALL.iter().position(|r| *r == outcome).unwrap_or(0);
    if let Some(row) = LEDGER.requests.get(class) {
        row[o].inc();
    }
}

/// Subscriptions ledger-profile sessions hold at the node, changed by `delta`.
pub fn api_subscriptions_add(delta: i64) {
    LEDGER.subscriptions.inc_by(delta);
}

/// A subscription refused by the session's cap (`group = false`) or the group's.
pub fn api_subscription_refused(group: bool) {
    LEDGER.refused_handles[usize::from(group)].inc();
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    front: String,
    target: String,
}

/// Routed connections per configured route: labelled by front names only, never by a name a client sent.
static SNI_ROUTED: LazyLock<Family<RouteLabels, Counter>> = LazyLock::new(Family::default);

/// The counter of connections `front` routes to `target` by SNI, registered when the route is configured.
pub fn sni_route(front: &str, target: &str) -> Counter {
    SNI_ROUTED.get_or_create_owned(&RouteLabels {
        front: front.into(),
        target: target.into(),
    })
}

pub fn gauge(v: i64) -> Gauge {
    let g = Gauge::default();
    g.set(v);
    g
}

pub fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_name_spaces() {
        assert_eq!(Class::of("server.version"), Class::Server);
        assert_eq!(Class::of("blockchain.block.headers"), Class::Headers);
        assert_eq!(Class::of("blockchain.headers.subscribe"), Class::Headers);
        assert_eq!(Class::of("blockchain.scripthash.get_history"), Class::Scripthash);
        assert_eq!(Class::of("blockchain.transaction.get"), Class::Transaction);
        assert_eq!(Class::of("mempool.get_fee_histogram"), Class::Mempool);
        assert_eq!(Class::of("blockchain.keva.get_keyvalues"), Class::Keva);
        assert_eq!(Class::of("blockchain.estimatefee"), Class::Other);
        assert_eq!(Class::of("no.such"), Class::Other);
        for (i, c) in Class::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn process_series_render_without_a_gateway() {
        request(Class::Server, ReqResult::Ok);
        reload(true);
        FrontMetrics::new("unit", true).handshake(Handshake::Ok, Duration::from_millis(3));
        let text = render(None);
        assert!(text.contains("gatehouse_build_info{version=\""), "{text}");
        assert!(
            text.contains("# TYPE gatehouse_electrum_requests_total counter"),
            "{text}"
        );
        assert!(text.contains("gatehouse_reloads_total{result=\"error\"}"), "{text}");
        assert!(
            text.contains("# TYPE gatehouse_tls_handshake_duration_seconds histogram"),
            "{text}"
        );
    }
}
