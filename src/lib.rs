//! Gatehouse: a hardened frontline gateway for Electrum indexers and blockchain peer ports.
//!
//! Data path: `listen` (accept, PROXY intake, TLS) → `guard` (admission) → `front` (protocol session) →
//! `upstream` (backend pool). [`Gatehouse::start`] runs it all on the current tokio runtime; `main.rs`
//! only parses the command line.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod electrum;
pub mod front;
pub mod guard;
pub mod listen;
pub mod relay;
pub mod sdnotify;
pub mod telemetry;
pub mod upstream;

use arc_swap::ArcSwap;
use config::{BanPolicy, Config, CostConfig, FrontKind, Transport};
use front::{FrontSlot, FrontState};
use guard::bans::BanTable;
use guard::cost::{Clock, CostParams, Ledger};
use guard::limits::KeyedCounts;
use guard::Guard;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State shared by every task of a running gateway.
pub struct Shared {
    pub guard: Guard,
    /// Cancelled when the gateway stops accepting (start of drain).
    pub stop_accepting: CancellationToken,
    /// Cancelled when open sessions must end now (drain deadline passed).
    pub force_close: CancellationToken,
    /// Cancelled when the drain enters its spread window: each session then closes after its own delay
    /// within `drain_spread`, so thousands of wallets do not reconnect elsewhere in the same second.
    pub spread_close: CancellationToken,
    pub drain_spread: Duration,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Electrum cost accounting, shared by every Electrum front so a client's budget spans them.
    pub ledger: Arc<Ledger>,
    /// Swapped whole on reload; sessions pick the new value up before their next request.
    pub cost: ArcSwap<CostConfig>,
    pub ban_policy: ArcSwap<BanPolicy>,
    /// Subscriptions held per client group.
    pub group_subs: KeyedCounts,
    /// Bytes buffered by every Electrum session together, against `[limits] memory_budget`.
    pub memory: Arc<guard::memory::MemoryBudget>,
    /// Every front's current slot (for housekeeping and certificate watching, which follow reloads).
    pub fronts: ArcSwap<Vec<Arc<FrontSlot>>>,
    /// The `hosts` object announced in server.features.
    pub features_hosts: ArcSwap<serde_json::Value>,
}

impl Shared {
    /// Resolves when the session of `peer` must close for the drain: at once when forced, or at this
    /// session's own point within the spread window.
    pub async fn drain_signal(&self, peer: SocketAddr) {
        let spread = async {
            self.spread_close.cancelled().await;
            tokio::time::sleep(spread_delay(peer, self.drain_spread)).await;
        };
        tokio::select! {
            _ = self.force_close.cancelled() => {}
            _ = spread => {}
        }
    }
}

/// A random point in the spread window for one session (the address only seeds the hash), so closes
/// land evenly without a registry of sessions.
fn spread_delay(peer: SocketAddr, spread: Duration) -> Duration {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one(peer);
    let frac = (h >> 11) as f64 / (1u64 << 53) as f64;
    spread.mul_f64(frac)
}

/// The ledger's clock: tokio's, so tests that pause and advance tokio time move cost decay with it.
pub struct TokioClock {
    epoch: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock {
            epoch: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}

fn cost_params(config: &Config) -> CostParams {
    let c = &config.cost;
    CostParams {
        soft_limit: c.soft_limit,
        hard_limit: c.hard_limit,
        max_sleep: c.max_sleep,
        initial_concurrency: c.initial_concurrency,
        bytes_per_unit: c.bytes_per_unit,
        retained_drain: c.retained_drain_per_sec,
        group_prefix_v4: config.admission.group_prefix_v4,
        group_prefix_v6: config.admission.group_prefix_v6,
        group_private: c.group_private,
        exempt: config.admission.allow.clone(),
    }
}

/// Gatehouse's own public ports per Electrum transport (as bound, so port 0 shows the real port), for
/// server.features.
fn public_ports(fronts: &[&FrontState], addrs: &BTreeMap<String, Vec<SocketAddr>>) -> Vec<(&'static str, u16)> {
    let mut ports = Vec::new();
    for f in fronts.iter().filter(|f| f.cfg.kind == FrontKind::Electrum) {
        let key = match f.cfg.transport {
            Transport::Tcp => "tcp_port",
            Transport::Tls => "ssl_port",
            Transport::Ws => "ws_port",
            Transport::Wss => "wss_port",
        };
        if let Some(a) = addrs.get(&f.cfg.name).and_then(|v| v.first()) {
            if !ports.iter().any(|(k, _)| *k == key) {
                ports.push((key, a.port()));
            }
        }
    }
    ports
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Journal(#[from] guard::journal::JournalError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("front `{front}`: cannot listen on {addr}: {source}")]
    Bind {
        front: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Gatehouse;

/// A started gateway. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    shared: Arc<Shared>,
    fronts: BTreeMap<String, FrontRun>,
    drain_deadline: Duration,
    admin: Option<admin::AdminServer>,
    cluster: Option<cluster::Cluster>,
    reload_requests: Option<tokio::sync::mpsc::Receiver<ReloadRequest>>,
}

/// A running front: its slot, the addresses asked for and bound, and its accept loops.
struct FrontRun {
    slot: Arc<FrontSlot>,
    listen: Vec<SocketAddr>,
    bound: Vec<SocketAddr>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

/// A front whose listeners are bound but not yet serving (so a reload can fail before changing anything).
struct Bound {
    state: FrontState,
    listeners: Vec<tokio::net::TcpListener>,
    bound: Vec<SocketAddr>,
}

fn bind_front(state: FrontState) -> Result<Bound, StartError> {
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for &addr in &state.cfg.listen {
        let l = listen::bind(addr).map_err(|source| StartError::Bind {
            front: state.cfg.name.clone(),
            addr,
            source,
        })?;
        bound.push(l.local_addr().unwrap_or(addr));
        listeners.push(l);
    }
    Ok(Bound {
        state,
        listeners,
        bound,
    })
}

fn serve_front(b: Bound, shared: &Arc<Shared>) -> FrontRun {
    let listen = b.state.cfg.listen.clone();
    let slot = FrontSlot::new(b.state);
    let loops = b
        .listeners
        .into_iter()
        .map(|l| {
            let f = slot.state.load();
            tracing::info!(front = %f.cfg.name, addr = l.local_addr().ok().map(tracing::field::display), kind = ?f.cfg.kind, transport = ?f.cfg.transport, "listening");
            tokio::spawn(listen::accept_loop(l, slot.clone(), shared.clone()))
        })
        .collect();
    FrontRun {
        slot,
        listen,
        bound: b.bound,
        loops,
    }
}

impl Gatehouse {
    /// Binds every listener (all or nothing) and starts serving on the current runtime.
    pub async fn start(config: Config) -> Result<Running, StartError> {
        Self::start_with_clock(config, Arc::new(TokioClock::new())).await
    }

    /// As [`Gatehouse::start`], with the clock the cost ledger decays by.
    pub async fn start_with_clock(mut config: Config, clock: Arc<dyn Clock>) -> Result<Running, StartError> {
        // The journal first: a gateway that cannot remember its bans must not start serving.
        let allow = config.admission.allow.clone();
        let bans = Arc::new(match &config.bans.journal {
            Some(path) => BanTable::open_limited(path, allow, Default::default(), config.bans.limits)?,
            None => BanTable::new(allow).with_limits(config.bans.limits),
        });
        let mut bound = Vec::new();
        for f in std::mem::take(&mut config.fronts) {
            bound.push(bind_front(FrontState::new(f))?);
        }
        let addrs: BTreeMap<String, Vec<SocketAddr>> = bound
            .iter()
            .map(|b| (b.state.cfg.name.clone(), b.bound.clone()))
            .collect();
        let states: Vec<&FrontState> = bound.iter().map(|b| &b.state).collect();
        let features_hosts = electrum::rewrite::hosts_json(&config.public_hosts, &public_ports(&states, &addrs));
        let admin_listener = match (&config.admin.enabled, &config.admin.token) {
            (true, Some(_)) => Some(admin::AdminListener::bind(&config.admin.listen).await?),
            _ => None,
        };
        let shared = Arc::new(Shared {
            ledger: Ledger::new(cost_params(&config), clock),
            cost: ArcSwap::from_pointee(config.cost.clone()),
            ban_policy: ArcSwap::from_pointee(config.bans.clone()),
            group_subs: KeyedCounts::default(),
            memory: guard::memory::MemoryBudget::new(config.limits.memory_budget),
            features_hosts: ArcSwap::from_pointee(features_hosts),
            fronts: ArcSwap::from_pointee(Vec::new()),
            guard: Guard::new(config.admission.clone(), bans, config.log.refusal_interval),
            stop_accepting: CancellationToken::new(),
            force_close: CancellationToken::new(),
            spread_close: CancellationToken::new(),
            drain_spread: config.runtime.drain_spread,
            tracker: TaskTracker::new(),
        });
        let fronts: BTreeMap<String, FrontRun> = bound
            .into_iter()
            .map(|b| (b.state.cfg.name.clone(), serve_front(b, &shared)))
            .collect();
        shared
            .fronts
            .store(Arc::new(fronts.values().map(|r| r.slot.clone()).collect()));
        tokio::spawn(watch_certificates(shared.clone()));
        // Bans shared with the other gateways of the cluster, both ways, through the ban table.
        let cluster = match &config.cluster {
            Some(c) => {
                let cluster = cluster::Cluster::start(c.clone(), shared.guard.bans().clone()).await?;
                cluster.gate_refusal_logs(shared.guard.refusal_log().clone());
                cluster.share_costs(shared.ledger.clone());
                Some(cluster)
            }
            None => None,
        };
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        let admin = admin_listener.zip(config.admin.token.as_ref()).map(|(l, token)| {
            let state = admin::AdminState::new(shared.guard.bans().clone(), token, shared.stop_accepting.clone())
                .with_metrics(
                    telemetry::metrics::Live::new(shared.clone())
                        .with_cluster(cluster.as_ref().map(cluster::Cluster::status_handle)),
                    config.admin.metrics_public,
                )
                .with_reload(reload_tx)
                .with_cluster(cluster.as_ref().map(cluster::Cluster::status_handle))
                .with_connections_per_peer(config.admin.max_connections_per_peer);
            admin::AdminServer::spawn(l, Arc::new(state))
        });
        tokio::spawn(housekeeping(shared.clone()));
        Ok(Running {
            shared,
            fronts,
            drain_deadline: config.runtime.drain_deadline,
            admin,
            cluster,
            reload_requests: Some(reload_rx),
        })
    }
}

/// Polls certificate files once a second: renewal tools replace files rather than notify anyone, and a
/// stat per file per second costs nothing.
async fn watch_certificates(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop_accepting.cancelled() => return,
            _ = tick.tick() => {
                for slot in shared.fronts.load().iter() {
                    if let Some(w) = &slot.state.load().cfg.cert_watch {
                        w.check();
                    }
                }
            }
        }
    }
}

async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop_accepting.cancelled() => return,
            _ = tick.tick() => {
                let levels: Vec<_> = shared.fronts.load().iter().map(|s| s.state.load().level.clone()).collect();
                shared.guard.housekeep(&levels);
                shared.ledger.housekeep();
            }
        }
    }
}

/// A request to reload the configuration file (from `POST /v1/reload`); the answer goes back on it.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<ReloadSummary, ReloadError>>;

/// Why a reload was refused; the running configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
}

/// What a reload changed, by front name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
}

enum Plan {
    Update(Arc<FrontSlot>, FrontState),
    Add(Bound),
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions still open at the deadline, closed by force.
    pub forced: usize,
}

impl Running {
    /// The bound addresses of a front (useful when the config asked for port 0).
    pub fn addrs(&self, front: &str) -> &[SocketAddr] {
        self.fronts.get(front).map(|r| r.bound.as_slice()).unwrap_or(&[])
    }

    /// The first bound address of a front; panics if the front does not exist (a caller bug).
    pub fn addr(&self, front: &str) -> SocketAddr {
        self.addrs(front)[0]
    }

    pub fn guard(&self) -> &Guard {
        &self.shared.guard
    }

    /// The ban table (also reachable through the guard).
    pub fn bans(&self) -> &Arc<BanTable> {
        self.shared.guard.bans()
    }

    /// Where the admin API listens (the real port when the config asked for port 0); None when disabled.
    pub fn admin_addr(&self) -> Option<&config::AdminListen> {
        self.admin.as_ref().map(admin::AdminServer::addr)
    }

    /// The cluster link state, when this gateway is part of a cluster.
    pub fn cluster(&self) -> Option<&cluster::Cluster> {
        self.cluster.as_ref()
    }

    /// The Electrum cost ledger (group costs, retained cost).
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.shared.ledger
    }

    /// The process-wide budget for bytes Electrum sessions buffer.
    pub fn memory(&self) -> &Arc<guard::memory::MemoryBudget> {
        &self.shared.memory
    }

    /// The current version of a front.
    pub fn front(&self, name: &str) -> Option<Arc<FrontState>> {
        self.fronts.get(name).map(|r| r.slot.state.load_full())
    }

    /// Applies a new, already validated configuration without touching open sessions. Admission rules,
    /// allowlists, cost settings, ban policy, certificates and front settings apply to new connections
    /// and new requests at once; fronts are added and removed (a removed front stops accepting while
    /// its sessions run to their end). New listeners are bound before anything is swapped, so a port
    /// that cannot be bound leaves the old configuration in force — except for fronts whose listen
    /// addresses changed, which are stopped first to free their ports. Runtime and log settings need a
    /// restart.
    pub async fn reload(&mut self, mut config: Config) -> Result<ReloadSummary, StartError> {
        let new_fronts = std::mem::take(&mut config.fronts);
        let mut summary = ReloadSummary::default();
        let keep: Vec<&str> = new_fronts.iter().map(|f| f.name.as_str()).collect();
        let moved: Vec<String> = self
            .fronts
            .iter()
            .filter(|(name, run)| {
                !keep.contains(&name.as_str()) || new_fronts.iter().any(|f| &f.name == *name && f.listen != run.listen)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &moved {
            if let Some(run) = self.fronts.remove(name) {
                run.slot.stop.cancel();
                for h in run.loops {
                    let _ = h.await;
                }
                if !keep.contains(&name.as_str()) {
                    summary.removed.push(name.clone());
                }
            }
        }
        let mut plan = Vec::new();
        for f in new_fronts {
            match self.fronts.get(&f.name) {
                Some(run) => {
                    let level = run.slot.state.load().level.clone();
                    plan.push(Plan::Update(run.slot.clone(), FrontState::with_level(level, f)));
                }
                None => plan.push(Plan::Add(bind_front(FrontState::new(f))?)),
            }
        }
        // Commit: nothing below can fail.
        for p in plan {
            match p {
                Plan::Update(slot, state) => {
                    state.level.set_policy(state.cfg.admission.clone());
                    summary.updated.push(state.cfg.name.clone());
                    slot.state.store(Arc::new(state));
                }
                Plan::Add(b) => {
                    let name = b.state.cfg.name.clone();
                    summary.added.push(name.clone());
                    self.fronts.insert(name, serve_front(b, &self.shared));
                }
            }
        }
        let shared = &self.shared;
        shared.guard.global().set_policy(config.admission.clone());
        shared.guard.bans().set_allowlist(config.admission.allow.clone());
        shared.guard.bans().set_limits(config.bans.limits);
        shared.ledger.set_params(cost_params(&config));
        shared.cost.store(Arc::new(config.cost.clone()));
        shared.ban_policy.store(Arc::new(config.bans.clone()));
        shared.memory.set_limit(config.limits.memory_budget);
        let states: Vec<Arc<FrontState>> = self.fronts.values().map(|r| r.slot.state.load_full()).collect();
        let refs: Vec<&FrontState> = states.iter().map(|s| s.as_ref()).collect();
        let addrs: BTreeMap<String, Vec<SocketAddr>> =
            self.fronts.iter().map(|(n, r)| (n.clone(), r.bound.clone())).collect();
        shared.features_hosts.store(Arc::new(electrum::rewrite::hosts_json(
            &config.public_hosts,
            &public_ports(&refs, &addrs),
        )));
        shared
            .fronts
            .store(Arc::new(self.fronts.values().map(|r| r.slot.clone()).collect()));
        tracing::info!(added = ?summary.added, removed = ?summary.removed, updated = ?summary.updated, "configuration reloaded");
        Ok(summary)
    }

    /// Reload requests from the admin API (`POST /v1/reload`), for the owner of the configuration file to
    /// serve; taken once. Until taken (in-process use), the API answers 503.
    pub fn take_reload_requests(&mut self) -> Option<tokio::sync::mpsc::Receiver<ReloadRequest>> {
        self.reload_requests.take()
    }

    /// Connection tasks still running (including those in handshake).
    pub fn open_sessions(&self) -> usize {
        self.shared.tracker.len()
    }

    /// Stops accepting now; waits for the listeners to close.
    pub async fn stop_accepting(&mut self) {
        self.shared.stop_accepting.cancel();
        for h in self.fronts.values_mut().flat_map(|r| r.loops.drain(..)) {
            let _ = h.await;
        }
    }

    /// Closes every open session now.
    pub fn force_close(&self) {
        self.shared.force_close.cancel();
    }

    /// A handle that closes every open session when cancelled, usable while `shutdown` runs.
    pub fn force_close_token(&self) -> CancellationToken {
        self.shared.force_close.clone()
    }

    /// Graceful stop: no new connections, open sessions may finish until the configured drain deadline,
    /// then the rest are closed.
    pub async fn shutdown(mut self) -> DrainReport {
        self.stop_accepting().await;
        self.shared.tracker.close();
        let open = self.shared.tracker.len();
        tracing::info!(open, deadline = ?self.drain_deadline, "draining");
        let spread = self.shared.drain_spread.min(self.drain_deadline);
        let quiet = self.drain_deadline - spread;
        let mut forced = 0;
        if tokio::time::timeout(quiet, self.shared.tracker.wait()).await.is_err() {
            let n = self.shared.tracker.len();
            tracing::info!(open = n, window = ?spread, "closing remaining sessions, spread over the window");
            self.shared.spread_close.cancel();
            // A little beyond the window, so the last spread closes are not overtaken by the hard stop.
            let grace = spread + Duration::from_millis(200);
            if tokio::time::timeout(grace, self.shared.tracker.wait()).await.is_err() {
                forced = self.shared.tracker.len();
                tracing::info!(open = forced, "drain deadline reached; closing the rest now");
                self.force_close();
                self.shared.tracker.wait().await;
            }
        }
        if let Some(c) = self.cluster.take() {
            c.shutdown();
        }
        // Last, so /healthz answers (and /readyz says "draining") for as long as sessions drain.
        if let Some(a) = self.admin.take() {
            a.stop().await;
        }
        DrainReport { forced }
    }
}
