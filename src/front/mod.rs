//! A front: one configured service (Electrum or peer port) with its listeners, admission level, TLS
//! settings and upstream pool, and the session that runs for each admitted connection: the
//! protocol-aware Electrum session, an L4 relay for peer ports, or the node API front (HTTP JSON-RPC).
//!
//! The listener sees a front only as a [`Handler`] trait object; [`FrontState::serve`] dispatches on the
//! front's kind, and [`FrontState::log_close`] writes the one close line every connection gets.

pub mod api;
pub mod drain;
pub mod electrum;
pub mod peer;
pub mod relay;
pub mod settings;

pub use drain::Drain;

use crate::guard::Level;
use crate::listen::stream::ClientStream;
pub use crate::listen::{CloseReason, CloseSide};
use crate::listen::{Conn, Door, Handler, Route};
use crate::telemetry::metrics::FrontMetrics;
use crate::upstream::Pool;
use crate::wire::acl::CidrSet;
pub use settings::{Front, FrontKind, SniRoute, Transport};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_rustls::TlsAcceptor;

/// The current version of a front. A reload stores a new [`FrontState`] here; accept loops read it per
/// connection, and sessions keep the version they started with.
pub struct FrontSlot {
    pub state: arc_swap::ArcSwap<FrontState>,
    /// Cancelled when a reload removes the front (or moves its listeners): its accept loops end.
    pub stop: tokio_util::sync::CancellationToken,
}

impl Door for FrontSlot {
    fn current(&self) -> Arc<dyn Handler> {
        self.state.load_full()
    }

    fn stopped(&self) -> &tokio_util::sync::CancellationToken {
        &self.stop
    }
}

/// What a front's sessions share with the rest of the gateway: the drain signal and the Electrum state.
#[derive(Clone)]
pub struct FrontHandles {
    pub drain: Arc<Drain>,
    pub electrum: Arc<electrum::Handles>,
    /// Subscriptions ledger-profile API sessions hold, per client group.
    pub api_subs: Arc<crate::guard::limits::KeyedCounts>,
    /// Peer protocol violations per address, across the peer fronts.
    pub peer_offences: Arc<peer::offences::Offences>,
    /// Every front's current slot, where SNI routes find their target front.
    pub fronts: Arc<arc_swap::ArcSwap<Vec<Arc<FrontSlot>>>>,
}

impl FrontSlot {
    pub fn new(state: FrontState) -> Arc<FrontSlot> {
        Arc::new(FrontSlot {
            state: arc_swap::ArcSwap::from_pointee(state),
            stop: tokio_util::sync::CancellationToken::new(),
        })
    }
}

pub struct FrontState {
    pub cfg: Front,
    pub level: Arc<Level>,
    pub pool: Pool,
    pub tls: Option<TlsAcceptor>,
    /// Pre-registered metric handles of this front.
    pub metrics: FrontMetrics,
    pub handles: FrontHandles,
    /// What the peer sessions of this front share (unused by other kinds).
    pub peer: peer::PeerFront,
    /// The SNI routes with their pre-registered counters.
    routes: Vec<(SniRoute, prometheus_client::metrics::counter::Counter)>,
}

/// Everything the one log line about a closed connection says.
pub struct CloseLine<'a> {
    pub client: SocketAddr,
    pub via: Option<SocketAddr>,
    pub tls: &'a str,
    pub since: Instant,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub reason: CloseReason,
    /// Electrum sessions only: requests received and the session's own cost at close.
    pub requests: Option<(u64, f64)>,
}

impl FrontState {
    pub fn new(cfg: Front, handles: FrontHandles) -> FrontState {
        Self::with_level(Level::new(cfg.admission.clone()), cfg, handles)
    }

    /// A new version of a front that keeps the connection counts of `level`, so caps hold across a
    /// reload. The caller applies the new admission rules (`level.set_policy`) when it commits.
    pub fn with_level(level: Arc<Level>, cfg: Front, handles: FrontHandles) -> FrontState {
        FrontState {
            level,
            pool: Pool::new(
                &cfg.name,
                &cfg.upstreams,
                cfg.connect_timeout,
                cfg.retry_backoff,
                cfg.send_proxy,
            ),
            tls: cfg.tls.clone().map(TlsAcceptor::from),
            metrics: FrontMetrics::new(&cfg.name, cfg.tls.is_some()),
            peer: peer::PeerFront::new(&cfg),
            routes: cfg
                .sni_routes
                .iter()
                .map(|r| (r.clone(), crate::telemetry::metrics::sni_route(&cfg.name, &r.target)))
                .collect(),
            handles,
            cfg,
        }
    }

    /// Runs one admitted connection to its end and logs one line about it. Each kind's session is boxed on
    /// its own: one future type for every kind is as large as the largest (the API front's HTTP state, about
    /// 6 KiB), and each of tens of thousands of idle wallet sessions would carry it.
    pub fn serve(self: Arc<Self>, conn: Conn) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        match self.cfg.kind {
            FrontKind::Electrum => Box::pin(self.serve_electrum(conn)),
            FrontKind::Peer => Box::pin(async move { peer::serve(&self, conn).await }),
            FrontKind::Api => Box::pin(api::serve(self, conn)),
        }
    }

    /// An Electrum session. Not an `async fn`: that would keep both the argument and a local copy of
    /// `conn` for the session's whole life; the block uses `conn` where it captured it.
    #[allow(clippy::manual_async_fn)]
    fn serve_electrum(self: Arc<Self>, mut conn: Conn) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let tls = conn.stream.tls_version();
            let mut line = CloseLine {
                client: conn.client,
                via: conn.via,
                tls,
                since: conn.accepted_at,
                bytes_in: 0,
                bytes_out: 0,
                reason: CloseReason::ClientClosed,
                requests: None,
            };
            let out = if matches!(self.cfg.transport, Transport::Ws | Transport::Wss) {
                // Boxed, so sessions over tcp and tls do not carry the WebSocket handshake's state.
                let ws = Box::pin(self.electrum_over_ws(conn.stream, conn.client, conn.local, conn.accepted_at));
                match ws.await {
                    Ok(out) => out,
                    Err(reason) => {
                        line.reason = reason;
                        return self.log_close(&line);
                    }
                }
            } else {
                electrum::session::run(&mut conn.stream, conn.client, conn.local, &self, &self.handles.electrum).await
            };
            line.bytes_in = out.bytes_in;
            line.bytes_out = out.bytes_out;
            line.reason = out.reason;
            line.requests = Some((out.requests, out.cost));
            self.log_close_in(&line, out.tier.as_deref().map(|t| t.name.as_str()));
        }
    }

    /// The WebSocket handshake (within the front's handshake timeout), then the Electrum session over it.
    async fn electrum_over_ws(
        &self,
        stream: ClientStream,
        client: SocketAddr,
        local: SocketAddr,
        accepted_at: Instant,
    ) -> Result<electrum::session::Outcome, CloseReason> {
        let max = self
            .cfg
            .electrum
            .as_ref()
            .map_or(electrum::settings::DEFAULT_MAX_LINE, |e| e.max_line);
        let deadline = tokio::time::Instant::from_std(accepted_at + self.cfg.handshake_timeout);
        let mut ws = match tokio::time::timeout_at(deadline, electrum::ws::accept(stream, max)).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => return Err(CloseReason::WebSocketHandshake(e)),
            Err(_) => return Err(CloseReason::HandshakeTimeout),
        };
        Ok(electrum::session::run(&mut ws, client, local, self, &self.handles.electrum).await)
    }

    pub fn log_close(&self, l: &CloseLine<'_>) {
        self.log_close_in(l, None)
    }

    /// The close line of a session accounted in the trusted tier `tier` (by name: never the address).
    pub fn log_close_in(&self, l: &CloseLine<'_>, tier: Option<&str>) {
        tracing::info!(
            front = %self.cfg.name,
            client = %l.client,
            via = l.via.map(tracing::field::display),
            bytes_in = l.bytes_in,
            bytes_out = l.bytes_out,
            duration_ms = l.since.elapsed().as_millis() as u64,
            tls = l.tls,
            requests = l.requests.map(|r| r.0),
            cost = l.requests.map(|r| (r.1 * 10.0).round() / 10.0),
            tier,
            reason = &*l.reason.text(),
            "connection closed"
        );
    }

    /// A close line for a connection that ended before its session started.
    pub fn log_early_close(&self, client: SocketAddr, via: Option<SocketAddr>, since: Instant, reason: CloseReason) {
        self.log_close(&CloseLine {
            client,
            via,
            tls: "none",
            since,
            bytes_in: 0,
            bytes_out: 0,
            reason,
            requests: None,
        });
    }
}

/// The listener's view of a front: what intake needs, and the session it hands the connection to.
impl Handler for FrontState {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn level(&self) -> &Arc<Level> {
        &self.level
    }

    fn proxy_accept_from(&self) -> &CidrSet {
        &self.cfg.proxy_accept_from
    }

    fn handshake_timeout(&self) -> Duration {
        self.cfg.handshake_timeout
    }

    fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    fn acme_challenge(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.cfg.cert_watch.as_ref().and_then(|w| w.challenge_config())
    }

    fn metrics(&self) -> &FrontMetrics {
        &self.metrics
    }

    fn routes_by_sni(&self) -> bool {
        !self.routes.is_empty()
    }

    fn route(&self, server_name: Option<&str>) -> Option<Route> {
        let name = server_name?;
        let (route, routed) = self.routes.iter().find(|(r, _)| r.name.eq_ignore_ascii_case(name))?;
        // The target as configured now; a target a reload removed leaves the connection here.
        let fronts = self.handles.fronts.load();
        let slot = fronts.iter().find(|s| s.state.load().cfg.name == route.target)?;
        Some(Route {
            target: slot.state.load_full(),
            routed: routed.clone(),
        })
    }

    fn log_early_close(&self, client: SocketAddr, via: Option<SocketAddr>, since: Instant, reason: CloseReason) {
        FrontState::log_early_close(self, client, via, since, reason)
    }

    fn serve(self: Arc<Self>, conn: Conn) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        // Boxed per kind already: a wrapping `async` block would hold `conn` a second time for the whole
        // session.
        FrontState::serve(self, conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, F: Future>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What one wallet session holds for its whole life, idle or not: its own state, not the largest front
    /// kind's (the API front's HTTP machinery), nor the WebSocket handshake's or the upstream dial's, which
    /// are boxed apart.
    #[test]
    fn an_electrum_session_future_holds_only_its_own_state() {
        let electrum = future_size(FrontState::serve_electrum);
        assert!(
            electrum <= 3 * 1024,
            "an Electrum session's future takes {electrum} bytes"
        );
    }
}
