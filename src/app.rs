//! The composition root: builds every stage's handles from the validated settings, starts the listeners,
//! the admin API and the cluster, applies reloads and drains on shutdown.

pub mod demo;
pub mod upgrade;

use crate::admin;
use crate::admin::reload::{ReloadRequest, ReloadSummary, UpgradeRequest};
use crate::cluster;
use crate::config::Config;
use crate::front::electrum;
use crate::front::{Drain, FrontHandles, FrontKind, FrontSlot, FrontState, Transport};
use crate::guard::limits::KeyedCounts;
use crate::guard::Guard;
use crate::listen::{self, Door};
use crate::state;
use crate::state::bans::BanTable;
use crate::state::cost::{Clock, CostParams, Ledger};
use crate::state::memory::MemoryBudget;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the composition root keeps to build fronts, apply reloads and drain. No stage sees it whole:
/// the listeners get [`listen::Intake`], sessions their [`FrontHandles`], the admin API and the cluster
/// the parts they serve.
struct Stages {
    guard: Arc<Guard>,
    intake: listen::Intake,
    /// Accept, PROXY and TLS off the workers, when configured; the threads end with the gateway.
    intake_threads: Option<listen::threads::IntakeThreads>,
    drain: Arc<Drain>,
    electrum: Arc<electrum::Handles>,
    api_subs: Arc<KeyedCounts>,
    peer_offences: Arc<crate::front::peer::offences::Offences>,
    /// Every front's current slot (for housekeeping, certificate watching and the metrics scrape, which
    /// follow reloads).
    fronts: Arc<ArcSwap<Vec<Arc<FrontSlot>>>>,
}

impl Stages {
    fn front_handles(&self) -> FrontHandles {
        FrontHandles {
            drain: self.drain.clone(),
            electrum: self.electrum.clone(),
            api_subs: self.api_subs.clone(),
            peer_offences: self.peer_offences.clone(),
            fronts: self.fronts.clone(),
        }
    }
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

    fn at(&self, at: tokio::time::Instant) -> Duration {
        at.saturating_duration_since(self.epoch)
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
        fee: c.fee,
        tiers: config.tiers.clone(),
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
    Journal(#[from] state::journal::JournalError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    Acme(#[from] listen::acme::AcmeStartError),
    #[error("blocklist feeds: {0}")]
    Feeds(#[from] crate::intel::http::HttpError),
    #[error("cannot start the intake threads: {0}")]
    IntakeThreads(std::io::Error),
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
    shared: Arc<Stages>,
    fronts: BTreeMap<String, FrontRun>,
    drain_deadline: Duration,
    admin: Option<admin::AdminServer>,
    cluster: Option<cluster::Cluster>,
    /// The ACME client, when `[acme]` is set; its registry as the admin API reads it.
    acme: Option<listen::acme::AcmeRun>,
    /// The cluster's side of ACME, kept for the client a reload starts.
    acme_peers: Option<listen::acme::Peers>,
    acme_registry: Arc<arc_swap::ArcSwapOption<listen::acme::Registry>>,
    reload_requests: Option<tokio::sync::mpsc::Receiver<ReloadRequest>>,
    upgrade_requests: Option<tokio::sync::mpsc::Receiver<UpgradeRequest>>,
    /// How long a successor process has to report ready (`runtime.upgrade_timeout`).
    upgrade_timeout: Duration,
    /// After a live upgrade: the task passing this process's bans to its successor, and the signal that
    /// the drain is over (it then sends what is left and ends).
    successor: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

/// A running front: its slot, the addresses asked for and bound, and its accept loops.
struct FrontRun {
    slot: Arc<FrontSlot>,
    listen: Vec<SocketAddr>,
    bound: Vec<SocketAddr>,
    loops: Vec<tokio::task::JoinHandle<()>>,
    /// Copies of the listening sockets, for a successor process (a live upgrade); dropped when the
    /// front stops accepting, so a stopped front's ports close.
    sockets: Vec<std::os::fd::OwnedFd>,
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

fn serve_front(b: Bound, shared: &Stages) -> FrontRun {
    let listen = b.state.cfg.listen.clone();
    let sockets = b
        .listeners
        .iter()
        .filter_map(|l| std::os::fd::AsFd::as_fd(l).try_clone_to_owned().ok())
        .collect();
    let slot = FrontSlot::new(b.state);
    let loops = b
        .listeners
        .into_iter()
        .flat_map(|l| {
            let f = slot.state.load();
            tracing::info!(front = %f.cfg.name, addr = l.local_addr().ok().map(tracing::field::display), kind = ?f.cfg.kind, transport = ?f.cfg.transport, "listening");
            let accept = |l| listen::accept_loop(l, slot.clone() as Arc<dyn Door>, shared.intake.clone());
            if let Some(threads) = &shared.intake_threads {
                match threads.spawn_accept(&l, accept) {
                    // The copies on the intake threads accept; this one leaves the workers' reactor.
                    Ok(loops) => return loops,
                    Err(e) => {
                        tracing::warn!(front = %f.cfg.name, error = %e, "cannot accept on the intake threads; accepting on the workers")
                    }
                }
            }
            vec![tokio::spawn(accept(l))]
        })
        .collect();
    FrontRun {
        slot,
        listen,
        bound: b.bound,
        loops,
        sockets,
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
        bans.set_never_auto(config.tiers.never_banned());
        let feeds = Arc::new(crate::intel::feed_set(&config.feeds, config.crowdsec.as_ref()));
        let guard = Arc::new(
            Guard::new(config.admission.clone(), bans.clone(), config.log.refusal_interval).with_feeds(feeds.clone()),
        );
        let drain = Arc::new(Drain::new(config.runtime.drain_spread));
        let electrum = Arc::new(electrum::Handles {
            ledger: Ledger::new(cost_params(&config), clock),
            cost: ArcSwap::from_pointee(config.cost.clone()),
            ban_policy: ArcSwap::from_pointee(config.bans.clone()),
            group_subs: KeyedCounts::default(),
            tier_subs: KeyedCounts::default(),
            memory: MemoryBudget::new(config.limits.memory_budget),
            // Known once the listeners are bound (port 0 shows the real port).
            features_hosts: ArcSwap::from_pointee(serde_json::Value::Null),
            bans: bans.clone(),
            drain: drain.clone(),
            budgets: Default::default(),
            versions: Default::default(),
        });
        electrum
            .budgets
            .configure(&electrum::gate::budget_specs(&config.fronts));
        let intake_threads =
            listen::threads::IntakeThreads::start(config.runtime.intake).map_err(StartError::IntakeThreads)?;
        let shared = Arc::new(Stages {
            intake: listen::Intake {
                guard: guard.clone(),
                tracker: TaskTracker::new(),
                stop_accepting: CancellationToken::new(),
                home: intake_threads.as_ref().map(|_| tokio::runtime::Handle::current()),
            },
            intake_threads,
            guard,
            drain,
            electrum,
            api_subs: Arc::new(KeyedCounts::default()),
            peer_offences: Default::default(),
            fronts: Arc::new(ArcSwap::from_pointee(Vec::new())),
        });
        let mut bound = Vec::new();
        for f in std::mem::take(&mut config.fronts) {
            bound.push(bind_front(FrontState::new(f, shared.front_handles()))?);
        }
        // Once every listener is bound and before any serves: the kept copies of the feeds go in force first.
        crate::intel::start(
            &config.feeds,
            config.crowdsec.as_ref(),
            &feeds,
            &bans,
            &shared.intake.stop_accepting,
        )?;
        let addrs: BTreeMap<String, Vec<SocketAddr>> = bound
            .iter()
            .map(|b| (b.state.cfg.name.clone(), b.bound.clone()))
            .collect();
        let states: Vec<&FrontState> = bound.iter().map(|b| &b.state).collect();
        let features_hosts = electrum::rewrite::hosts_json(&config.public_hosts, &public_ports(&states, &addrs));
        shared.electrum.features_hosts.store(Arc::new(features_hosts));
        let admin_listener = match (&config.admin.enabled, &config.admin.token) {
            (true, Some(_)) => Some(admin::AdminListener::bind(&config.admin.listen).await?),
            _ => None,
        };
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
                cluster.share_costs(shared.electrum.ledger.clone());
                Some(cluster)
            }
            None => None,
        };
        // Behind one name the cluster orders each certificate once: one gateway orders and shares it
        // (and its challenge answers) over the links.
        let acme_peers = cluster.as_ref().and_then(acme_peers);
        let acme = match config.acme.clone() {
            Some(a) => Some(listen::acme::AcmeRun::start(a, acme_peers.clone()).await?),
            None => None,
        };
        let acme_registry = Arc::new(arc_swap::ArcSwapOption::new(
            acme.as_ref().map(|a| a.registry().clone()),
        ));
        let certs = admin::certs::Certs::new(shared.fronts.clone(), acme_registry.clone());
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        let (upgrade_tx, upgrade_rx) = tokio::sync::mpsc::channel(1);
        let admin = admin_listener.zip(config.admin.token.as_ref()).map(|(l, token)| {
            let state =
                admin::AdminState::new(shared.guard.bans().clone(), token, shared.intake.stop_accepting.clone())
                    .with_metrics(
                        admin::live::Live::new(
                            shared.fronts.clone(),
                            shared.guard.clone(),
                            shared.electrum.memory.clone(),
                        )
                        .with_cluster(cluster.as_ref().map(cluster::Cluster::status_handle))
                        .with_certs(certs.clone()),
                        config.admin.metrics_public,
                    )
                    .with_certs(certs.clone())
                    .with_reload(reload_tx)
                    .with_upgrade(upgrade_tx)
                    .with_cluster(cluster.as_ref().map(cluster::Cluster::status_handle))
                    .with_connections_per_peer(config.admin.max_connections_per_peer)
                    .with_feeds(feeds.clone());
            admin::AdminServer::spawn(l, Arc::new(state))
        });
        tokio::spawn(housekeeping(shared.clone()));
        Ok(Running {
            shared,
            fronts,
            drain_deadline: config.runtime.drain_deadline,
            admin,
            cluster,
            acme,
            acme_peers,
            acme_registry,
            reload_requests: Some(reload_rx),
            upgrade_requests: Some(upgrade_rx),
            upgrade_timeout: config.runtime.upgrade_timeout,
            successor: None,
        })
    }
}

/// The ACME client's view of the cluster links (None under the Redis backend, which has none).
fn acme_peers(c: &cluster::Cluster) -> Option<listen::acme::Peers> {
    let (links, inbound) = c.acme_links()?;
    let orders = links.orders();
    Some(listen::acme::Peers {
        orders,
        send: Arc::new(move |m| links.send(m)),
        inbound: Arc::new(tokio::sync::Mutex::new(inbound)),
    })
}

/// Polls certificate files once a second: renewal tools replace files rather than notify anyone, and a
/// stat per file per second costs nothing.
async fn watch_certificates(shared: Arc<Stages>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.intake.stop_accepting.cancelled() => return,
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

async fn housekeeping(shared: Arc<Stages>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.intake.stop_accepting.cancelled() => return,
            _ = tick.tick() => {
                let levels: Vec<_> = shared.fronts.load().iter().map(|s| s.state.load().level.clone()).collect();
                shared.guard.housekeep(&levels);
                shared.electrum.ledger.housekeep();
            }
        }
    }
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
    pub fn admin_addr(&self) -> Option<&admin::AdminListen> {
        self.admin.as_ref().map(admin::AdminServer::addr)
    }

    /// The cluster link state, when this gateway is part of a cluster.
    pub fn cluster(&self) -> Option<&cluster::Cluster> {
        self.cluster.as_ref()
    }

    /// The Electrum cost ledger (group costs, retained cost).
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.shared.electrum.ledger
    }

    /// The process-wide budget for bytes Electrum sessions buffer.
    pub fn memory(&self) -> &Arc<state::memory::MemoryBudget> {
        &self.shared.electrum.memory
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
    /// addresses changed, which are stopped first to free their ports. Runtime and log settings, blocklist
    /// feeds and CrowdSec need a restart.
    pub async fn reload(&mut self, mut config: Config) -> Result<ReloadSummary, StartError> {
        self.reload_acme(config.acme.clone()).await?;
        let budgets = electrum::gate::budget_specs(&config.fronts);
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
                    plan.push(Plan::Update(
                        run.slot.clone(),
                        FrontState::with_level(level, f, self.shared.front_handles()),
                    ));
                }
                None => plan.push(Plan::Add(bind_front(FrontState::new(f, self.shared.front_handles()))?)),
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
        shared.guard.bans().set_never_auto(config.tiers.never_banned());
        shared.electrum.ledger.set_params(cost_params(&config));
        shared.electrum.cost.store(Arc::new(config.cost.clone()));
        shared.electrum.ban_policy.store(Arc::new(config.bans.clone()));
        shared.electrum.memory.set_limit(config.limits.memory_budget);
        shared.electrum.budgets.configure(&budgets);
        let states: Vec<Arc<FrontState>> = self.fronts.values().map(|r| r.slot.state.load_full()).collect();
        let refs: Vec<&FrontState> = states.iter().map(|s| s.as_ref()).collect();
        let addrs: BTreeMap<String, Vec<SocketAddr>> =
            self.fronts.iter().map(|(n, r)| (n.clone(), r.bound.clone())).collect();
        shared
            .electrum
            .features_hosts
            .store(Arc::new(electrum::rewrite::hosts_json(
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
        self.shared.intake.tracker.len()
    }

    /// Upgrade requests from the admin API (`POST /v1/upgrade`), for the owner of the process to serve
    /// with [`Running::upgrade`]; taken once. Until taken, the API answers 503.
    pub fn take_upgrade_requests(&mut self) -> Option<tokio::sync::mpsc::Receiver<UpgradeRequest>> {
        self.upgrade_requests.take()
    }

    /// Stops accepting now; waits for the listeners to close.
    pub async fn stop_accepting(&mut self) {
        self.shared.intake.stop_accepting.cancel();
        for r in self.fronts.values_mut() {
            r.sockets.clear();
        }
        for h in self.fronts.values_mut().flat_map(|r| r.loops.drain(..)) {
            let _ = h.await;
        }
    }

    /// Closes every open session now.
    pub fn force_close(&self) {
        self.shared.drain.force_close.cancel();
    }

    /// A handle that closes every open session when cancelled, usable while `shutdown` runs.
    pub fn force_close_token(&self) -> CancellationToken {
        self.shared.drain.force_close.clone()
    }

    /// Graceful stop: no new connections, open sessions may finish until the configured drain deadline,
    /// then the rest are closed.
    /// Restarts the ACME client when `[acme]` changed (certificates already issued stay in their slots).
    /// A new client that cannot start leaves the old one running.
    async fn reload_acme(&mut self, wanted: Option<listen::acme::AcmeSettings>) -> Result<(), StartError> {
        if wanted.as_ref() == self.acme.as_ref().map(|a| a.settings()) {
            return Ok(());
        }
        let old = self.acme.take();
        if let Some(o) = &old {
            o.stop();
        }
        if let Some(s) = wanted {
            match listen::acme::AcmeRun::start(s, self.acme_peers.clone()).await {
                Ok(run) => self.acme = Some(run),
                Err(e) => {
                    if let Some(o) = old {
                        self.acme = listen::acme::AcmeRun::start(o.settings().clone(), self.acme_peers.clone())
                            .await
                            .ok();
                    }
                    return Err(e.into());
                }
            }
        }
        self.acme_registry
            .store(self.acme.as_ref().map(|a| a.registry().clone()));
        Ok(())
    }

    /// The ACME client's HTTP-01 listener as bound.
    pub fn acme_http_addr(&self) -> Option<SocketAddr> {
        self.acme.as_ref().and_then(|a| a.http_addr())
    }

    pub async fn shutdown(mut self) -> DrainReport {
        if let Some(a) = self.acme.take() {
            a.stop();
        }
        self.stop_accepting().await;
        self.shared.intake.tracker.close();
        let open = self.shared.intake.tracker.len();
        tracing::info!(open, deadline = ?self.drain_deadline, "draining");
        let spread = self.shared.drain.spread.min(self.drain_deadline);
        let quiet = self.drain_deadline - spread;
        let mut forced = 0;
        if tokio::time::timeout(quiet, self.shared.intake.tracker.wait())
            .await
            .is_err()
        {
            let n = self.shared.intake.tracker.len();
            tracing::info!(open = n, window = ?spread, "closing remaining sessions, spread over the window");
            self.shared.drain.spread_close.cancel();
            // A little beyond the window, so the last spread closes are not overtaken by the hard stop.
            let grace = spread + Duration::from_millis(200);
            if tokio::time::timeout(grace, self.shared.intake.tracker.wait())
                .await
                .is_err()
            {
                forced = self.shared.intake.tracker.len();
                tracing::info!(open = forced, "drain deadline reached; closing the rest now");
                self.force_close();
                self.shared.intake.tracker.wait().await;
            }
        }
        if let Some((done, forwarder)) = self.successor.take() {
            // The last sessions' bans must reach the successor before this process exits.
            done.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), forwarder).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_reads_a_given_moment_as_its_own_time() {
        let clock = TokioClock::new();
        tokio::time::advance(Duration::from_secs(5)).await;
        let read = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_secs(2)).await;
        // The moment given, not the time of the call: what a session read when its event came.
        assert_eq!(clock.at(read), Duration::from_secs(5));
        assert_eq!(clock.now(), Duration::from_secs(7));
        // A moment before the clock began is its start, never a panic.
        let clock = TokioClock::new();
        assert_eq!(clock.at(read), Duration::ZERO);
    }
}
