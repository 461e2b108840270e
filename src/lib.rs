//! Gatehouse: a hardened frontline gateway for Electrum indexers and blockchain peer ports.
//!
//! Data path: `listen` (accept, PROXY intake, TLS) → `guard` (admission) → `front` (protocol session) →
//! `upstream` (backend pool). [`Gatehouse::start`] runs it all on the current tokio runtime; `main.rs`
//! only parses the command line.

pub mod config;
pub mod demo;
pub mod front;
pub mod guard;
pub mod listen;
pub mod relay;
pub mod sdnotify;
pub mod telemetry;
pub mod upstream;

use config::Config;
use front::FrontState;
use guard::bans::BanTable;
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
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
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
    fronts: Vec<Arc<FrontState>>,
    addrs: BTreeMap<String, Vec<SocketAddr>>,
    drain_deadline: Duration,
    accept_loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Gatehouse {
    /// Binds every listener (all or nothing) and starts serving on the current runtime.
    pub async fn start(config: Config) -> Result<Running, StartError> {
        let bans = Arc::new(BanTable::default());
        let shared = Arc::new(Shared {
            guard: Guard::new(config.admission.clone(), bans, config.log.refusal_interval),
            stop_accepting: CancellationToken::new(),
            force_close: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let mut listeners = Vec::new();
        let mut addrs = BTreeMap::new();
        let mut fronts = Vec::new();
        for f in config.fronts {
            let state = Arc::new(FrontState::new(f));
            let mut bound = Vec::new();
            for &addr in &state.cfg.listen {
                let l = listen::bind(addr).map_err(|source| StartError::Bind {
                    front: state.cfg.name.clone(),
                    addr,
                    source,
                })?;
                bound.push(l.local_addr().unwrap_or(addr));
                listeners.push((l, state.clone()));
            }
            addrs.insert(state.cfg.name.clone(), bound);
            fronts.push(state);
        }
        let accept_loops = listeners
            .into_iter()
            .map(|(l, f)| {
                tracing::info!(front = %f.cfg.name, addr = l.local_addr().ok().map(tracing::field::display), kind = ?f.cfg.kind, transport = ?f.cfg.transport, "listening");
                tokio::spawn(listen::accept_loop(l, f, shared.clone()))
            })
            .collect();
        tokio::spawn(housekeeping(
            shared.clone(),
            fronts.iter().map(|f| f.level.clone()).collect(),
        ));
        Ok(Running {
            shared,
            fronts,
            addrs,
            drain_deadline: config.runtime.drain_deadline,
            accept_loops,
        })
    }
}

async fn housekeeping(shared: Arc<Shared>, levels: Vec<Arc<guard::Level>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop_accepting.cancelled() => return,
            _ = tick.tick() => shared.guard.housekeep(&levels),
        }
    }
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
        self.addrs.get(front).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The first bound address of a front; panics if the front does not exist (a caller bug).
    pub fn addr(&self, front: &str) -> SocketAddr {
        self.addrs(front)[0]
    }

    pub fn guard(&self) -> &Guard {
        &self.shared.guard
    }

    pub fn front(&self, name: &str) -> Option<&Arc<FrontState>> {
        self.fronts.iter().find(|f| f.cfg.name == name)
    }

    /// Connection tasks still running (including those in handshake).
    pub fn open_sessions(&self) -> usize {
        self.shared.tracker.len()
    }

    /// Stops accepting now; waits for the listeners to close.
    pub async fn stop_accepting(&mut self) {
        self.shared.stop_accepting.cancel();
        for h in self.accept_loops.drain(..) {
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
        let forced = match tokio::time::timeout(self.drain_deadline, self.shared.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let n = self.shared.tracker.len();
                tracing::info!(open = n, "drain deadline reached; closing remaining sessions");
                self.force_close();
                self.shared.tracker.wait().await;
                n
            }
        };
        DrainReport { forced }
    }
}
