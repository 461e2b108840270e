//! Listening sockets and connection intake: accept, establish the client's identity (PROXY protocol from
//! trusted load balancers), ask the guard, and terminate TLS. What comes out is an admitted [`Conn`].

pub mod acme;
mod close;
pub mod stream;
pub mod threads;
pub mod tls;

pub use close::{CloseReason, CloseSide};

use crate::guard::{Guard, Level};
use crate::guard::{Permit, Refusal};
use crate::sys::activation;
use crate::telemetry::metrics::FrontMetrics;
use crate::telemetry::metrics::Handshake;
use crate::wire::acl::CidrSet;
use crate::wire::proxy;
use socket2::{Domain, Protocol, Socket, Type};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stream::{ClientStream, Prefixed};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Binds a listening socket. IPv6 sockets are v6-only so that `0.0.0.0:P` and `[::]:P` can both be
/// listed, as operators expect from other daemons. A socket inherited by socket activation (systemd's
/// `gatehouse.socket`) bound to `addr` is used instead of binding a new one.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if let Some(l) = activation::take(addr) {
        l.set_nonblocking(true)?;
        return TcpListener::from_std(l);
    }
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    TcpListener::from_std(sock.into())
}

/// An admitted client connection, ready for its protocol session.
pub struct Conn {
    pub stream: ClientStream,
    /// The client's real address (from PROXY when via a trusted load balancer).
    pub client: SocketAddr,
    /// The load balancer the connection came through, if any.
    pub via: Option<SocketAddr>,
    /// The address the client connected to (as the load balancer reported it, if any).
    pub local: SocketAddr,
    pub accepted_at: Instant,
    pub permit: Permit,
}

/// What the listener hands an admitted connection to: one front as configured now. Intake reads its
/// name, trusted balancers, handshake deadline, admission level and TLS; `serve` runs the session. The
/// listener knows no front kind, so a new kind plugs in without touching this module.
pub trait Handler: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn level(&self) -> &Arc<Level>;
    /// Load balancers whose PROXY header is believed.
    fn proxy_accept_from(&self) -> &CidrSet;
    fn handshake_timeout(&self) -> Duration;
    fn tls(&self) -> Option<&TlsAcceptor>;
    /// The server config for TLS-ALPN-01 validation handshakes (ALPN `acme-tls/1`), when the front
    /// serves an ACME certificate; such a handshake gets the challenge certificate and is then closed.
    fn acme_challenge(&self) -> Option<&Arc<rustls::ServerConfig>> {
        None
    }
    fn metrics(&self) -> &FrontMetrics;
    /// Whether some server names hand the connection to another front: intake then reads the
    /// ClientHello before it completes the handshake (with this front's certificates).
    fn routes_by_sni(&self) -> bool {
        false
    }
    /// The front that serves a client asking for `server_name` after this front's handshake; `None`
    /// keeps the connection here (no name, an unknown name, or no routes).
    fn route(&self, _server_name: Option<&str>) -> Option<Route> {
        None
    }
    /// Logs the close line of a connection that ended before its session started.
    fn log_early_close(&self, client: SocketAddr, via: Option<SocketAddr>, since: Instant, reason: CloseReason);
    /// Runs one admitted connection to its end.
    fn serve(self: Arc<Self>, conn: Conn) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// A connection's way to another front, chosen by the SNI name of its ClientHello.
pub struct Route {
    pub target: Arc<dyn Handler>,
    /// Counts connections that completed the handshake and went this way.
    pub routed: prometheus_client::metrics::counter::Counter,
}

/// Where an accept loop finds its front's current version (a reload swaps it) and its own stop signal.
pub trait Door: Send + Sync + 'static {
    fn current(&self) -> Arc<dyn Handler>;
    /// Cancelled when a reload removes the front (or moves its listeners).
    fn stopped(&self) -> &CancellationToken;
}

/// What every accept loop shares: the guard it asks, the tracker its connection tasks join, and the
/// signal that ends accepting.
#[derive(Clone)]
pub struct Intake {
    pub guard: Arc<Guard>,
    pub tracker: TaskTracker,
    /// Cancelled when the gateway stops accepting (start of drain).
    pub stop_accepting: CancellationToken,
    /// Where sessions run when intake runs on threads of its own (the workers' runtime); `None` when
    /// intake runs on the workers too.
    pub home: Option<tokio::runtime::Handle>,
}

impl Intake {
    /// Runs one connection: its intake here, its session here or, when intake has threads of its own,
    /// on the workers.
    fn spawn_connection(&self, intake: IntakeFuture) {
        let Some(home) = &self.home else {
            self.tracker.spawn(Connection::Intake(intake));
            return;
        };
        let (home, tracker) = (home.clone(), self.tracker.clone());
        self.tracker.spawn(async move {
            if let Some(arrived) = intake.await {
                // Tracked before the intake task ends, so a drain never sees the connection gone between.
                home.spawn(tracker.track_future(Connection::Arrived(Some(Box::new(arrived)))));
            }
        });
    }
}

/// Connections accepted before the accept loop lets every other ready task run once. In a flood of
/// connects the runtime's own budget lets a loop accept 128 per turn, and each new session's first work
/// (its version, its upstream dial, its first requests to judge and charge) then lands ahead of an
/// established wallet's next read in the worker's queue, turn after turn; measured on one worker thread,
/// an honest wallet's requests waited up to 0.4 s behind such waves. The kernel's backlog holds the rest
/// meanwhile.
const ACCEPTS_PER_TURN: u32 = 16;

/// Counts an accept loop's connections and yields to the other tasks every [`ACCEPTS_PER_TURN`].
#[derive(Default)]
struct Pace {
    in_turn: u32,
}

impl Pace {
    async fn step(&mut self) {
        self.in_turn += 1;
        if self.in_turn > ACCEPTS_PER_TURN {
            self.in_turn = 1;
            tokio::task::yield_now().await;
        }
    }
}

/// Accepts until shutdown. Connections from untrusted peers are judged here, before any task or buffer
/// is spent on them.
pub async fn accept_loop(listener: TcpListener, slot: Arc<dyn Door>, shared: Intake) {
    let mut pace = Pace::default();
    loop {
        pace.step().await;
        let accepted = tokio::select! {
            _ = shared.stop_accepting.cancelled() => break,
            _ = slot.stopped().cancelled() => break,
            r = listener.accept() => r,
        };
        // The front as currently configured: a reload takes effect from the next connection on.
        let front = slot.current();
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors or similar: back off briefly instead of spinning on the error.
                tracing::warn!(front = %front.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let accepted_at = Instant::now();
        let peer = SocketAddr::new(crate::wire::addr::canonical(peer.ip()), peer.port());
        let local = match sock.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let _ = sock.set_nodelay(true);
        if front.proxy_accept_from().contains(peer.ip()) {
            let (front, shared2) = (front.clone(), shared.clone());
            shared.spawn_connection(Box::pin(async move {
                intake_proxied(sock, peer, local, accepted_at, &front, &shared2).await
            }));
            continue;
        }
        let permit = match shared.guard.admit(front.level(), peer.ip()) {
            Ok(p) => p,
            Err(r) => {
                log_refusal(&*front, &shared, peer.ip(), None, r);
                continue;
            }
        };
        let (front, shared2) = (front.clone(), shared.clone());
        shared.spawn_connection(Box::pin(async move {
            let client = Identity {
                client: peer,
                via: None,
                local,
            };
            finish_intake(sock, Vec::new(), client, accepted_at, permit, &front, &shared2).await
        }));
    }
    tracing::info!(front = %slot.current().name(), addr = listener.local_addr().ok().map(tracing::field::display), "listener closed");
}

type IntakeFuture = Pin<Box<dyn Future<Output = Option<(Conn, Arc<dyn Handler>)>> + Send>>;

/// One connection's task: the intake (PROXY header, TLS handshake), then the front's session. Each stage
/// is a boxed future of its own and the task holds one at a time, so a session's task keeps nothing of the
/// intake: an `async` block awaiting both would keep room for the intake's arguments and its result
/// (about 560 bytes) beside every session, idle or not, for the session's whole life.
enum Connection {
    Intake(IntakeFuture),
    /// Handed over by an intake thread: its socket moves to this runtime's reactor before the session starts.
    Arrived(Option<Box<(Conn, Arc<dyn Handler>)>>),
    Serving(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl Future for Connection {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::task::Poll;
        loop {
            match &mut *self {
                Connection::Intake(intake) => match intake.as_mut().poll(cx) {
                    Poll::Ready(Some((conn, serving))) => *self = Connection::Serving(serving.serve(conn)),
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                },
                Connection::Arrived(arrived) => {
                    let Some(arrived) = arrived.take() else {
                        return Poll::Ready(());
                    };
                    let (mut conn, serving) = *arrived;
                    if let Err(e) = conn.stream.rehome() {
                        serving.log_early_close(conn.client, conn.via, conn.accepted_at, CloseReason::Handover(e));
                        return Poll::Ready(());
                    }
                    *self = Connection::Serving(serving.serve(conn));
                }
                Connection::Serving(session) => return session.as_mut().poll(cx),
            }
        }
    }
}

pub(crate) fn log_refusal(front: &dyn Handler, shared: &Intake, ip: IpAddr, via: Option<SocketAddr>, r: Refusal) {
    if shared.guard.should_log(ip, r) {
        tracing::info!(front = %front.name(), client = %ip, via = via.map(tracing::field::display), reason = %format_args!("refused:{r}"), "connection refused");
    }
}

struct Identity {
    client: SocketAddr,
    via: Option<SocketAddr>,
    local: SocketAddr,
}

/// Reads the PROXY header a trusted load balancer sends, then admits the carried client address.
async fn intake_proxied(
    mut sock: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    accepted_at: Instant,
    front: &Arc<dyn Handler>,
    shared: &Intake,
) -> Option<(Conn, Arc<dyn Handler>)> {
    let timeout = front.handshake_timeout();
    let (header, rest) = match tokio::time::timeout(timeout, proxy::read_header(&mut sock)).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            shared.guard.count(Refusal::ProxyMalformed);
            // Gated like every refusal: a broken balancer must not flood the log either.
            if shared.guard.should_log(peer.ip(), Refusal::ProxyMalformed) {
                tracing::info!(front = %front.name(), via = %peer, error = %e, reason = "refused:proxy_malformed", "connection refused");
            }
            return None;
        }
        Err(_) => {
            front.log_early_close(peer, None, accepted_at, CloseReason::HandshakeTimeout);
            return None;
        }
    };
    // LOCAL / UNKNOWN: the balancer speaks for itself (health checks), so it is the client.
    let client = header
        .source
        .map(|s| SocketAddr::new(crate::wire::addr::canonical(s.ip()), s.port()))
        .unwrap_or(peer);
    let local = header
        .destination
        .map(|d| SocketAddr::new(crate::wire::addr::canonical(d.ip()), d.port()))
        .unwrap_or(local);
    let permit = match shared.guard.admit(front.level(), client.ip()) {
        Ok(p) => p,
        Err(r) => {
            log_refusal(&**front, shared, client.ip(), Some(peer), r);
            return None;
        }
    };
    let id = Identity {
        client,
        via: Some(peer),
        local,
    };
    finish_intake(sock, rest, id, accepted_at, permit, front, shared).await
}

/// Refuses a PROXY header from a peer that is not a trusted balancer (it may be forging its address),
/// then terminates TLS when the front asks for it. Returns the connection and the front that serves it:
/// this one, or the one its SNI name routes to.
async fn finish_intake(
    mut sock: TcpStream,
    mut prefix: Vec<u8>,
    id: Identity,
    accepted_at: Instant,
    permit: Permit,
    front: &Arc<dyn Handler>,
    shared: &Intake,
) -> Option<(Conn, Arc<dyn Handler>)> {
    let timeout = front.handshake_timeout();
    let deadline = tokio::time::Instant::from_std(accepted_at + timeout);
    if id.via.is_none() && !front.proxy_accept_from().is_empty() {
        match tokio::time::timeout_at(deadline, read_unless_proxy(&mut sock)).await {
            Ok(None) => {
                shared.guard.count(Refusal::ProxyUntrusted);
                log_refusal(&**front, shared, id.client.ip(), None, Refusal::ProxyUntrusted);
                return None;
            }
            Ok(Some(first)) => prefix = first,
            Err(_) => {
                front.log_early_close(id.client, None, accepted_at, CloseReason::HandshakeTimeout);
                return None;
            }
        }
    }
    front.metrics().accepted();
    let tcp = Prefixed::new(prefix, sock);
    let started = Instant::now();
    let mut serving = None;
    let stream = match front.tls() {
        None => ClientStream::Plain(tcp),
        Some(acceptor) => match tokio::time::timeout_at(deadline, handshake(acceptor, &**front, tcp)).await {
            Ok(Ok(None)) => {
                front.metrics().handshake(Handshake::Ok, started.elapsed());
                tracing::info!(front = %front.name(), client = %id.client, "answered an ACME TLS-ALPN-01 validation");
                return None;
            }
            Ok(Ok(Some((s, route)))) => {
                front.metrics().handshake(Handshake::Ok, started.elapsed());
                if let Some(r) = route {
                    r.routed.inc();
                    serving = Some(r.target);
                }
                ClientStream::Tls(Box::new(s))
            }
            Ok(Err(e)) => {
                front.metrics().handshake(Handshake::Error, started.elapsed());
                front.log_early_close(id.client, id.via, accepted_at, CloseReason::Tls(e));
                return None;
            }
            Err(_) => {
                front.metrics().handshake(Handshake::Timeout, started.elapsed());
                front.log_early_close(id.client, id.via, accepted_at, CloseReason::HandshakeTimeout);
                return None;
            }
        },
    };
    let conn = Conn {
        stream,
        client: id.client,
        via: id.via,
        local: id.local,
        accepted_at,
        permit,
    };
    Some((conn, serving.unwrap_or_else(|| front.clone())))
}

type TlsServerStream = tokio_rustls::server::TlsStream<Prefixed<TcpStream>>;

/// Terminates TLS. When the front serves an ACME certificate or routes by SNI, the ClientHello is read
/// first: one offering ALPN `acme-tls/1` is a CA's validation and gets the challenge config, its handshake
/// is completed and the connection closed (`None`); any other hello gets the front's own config, and its
/// server name picks the front that serves the connection (the route, if any).
async fn handshake(
    acceptor: &TlsAcceptor,
    front: &dyn Handler,
    tcp: Prefixed<TcpStream>,
) -> std::io::Result<Option<(TlsServerStream, Option<Route>)>> {
    let challenge = front.acme_challenge();
    if challenge.is_none() && !front.routes_by_sni() {
        return acceptor.accept(tcp).await.map(|s| Some((s, None)));
    }
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let hello = start.client_hello();
    let challenge = challenge.filter(|_| {
        hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == acme::ACME_TLS_ALPN))
    });
    let Some(challenge) = challenge else {
        let route = front.route(hello.server_name());
        return start
            .into_stream(acceptor.config().clone())
            .await
            .map(|s| Some((s, route)));
    };
    let mut s = start.into_stream(challenge.clone()).await?;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
    Ok(None)
}

/// Reads a direct client's first bytes, as many as it takes to tell them from a PROXY signature, and
/// returns them for the session to replay; `None` when they are a PROXY header. Reading (rather than
/// peeking) makes every wait a wait for new bytes: a peer that stops inside a signature costs nothing until
/// it sends more or the caller's deadline ends the wait.
async fn read_unless_proxy(sock: &mut TcpStream) -> Option<Vec<u8>> {
    // A v2 signature is 12 bytes and v1's "PROXY " 6: never consume more than it takes to decide.
    let mut buf = [0u8; 12];
    let mut n = 0;
    loop {
        match sock.read(&mut buf[n..]).await {
            // What arrived so far goes to the session, which then sees the end or the error itself.
            Ok(0) | Err(_) => return Some(buf[..n].to_vec()),
            Ok(k) => n += k,
        }
        if !proxy::starts_like_proxy(&buf[..n]) {
            return Some(buf[..n].to_vec());
        }
        if n == buf.len() || buf[..n].starts_with(b"PROXY ") {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that became ready while the accept loop takes a flood of connections runs after at most
    /// one turn's worth of them, not after the flood.
    #[tokio::test(flavor = "current_thread")]
    async fn an_accept_loop_lets_other_tasks_run_every_turn() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let accepted = Arc::new(AtomicU32::new(0));
        let seen_at = Arc::new(AtomicU32::new(u32::MAX));
        let (a, s) = (accepted.clone(), seen_at.clone());
        // Ready now; runs only when the loop below lets it.
        tokio::spawn(async move { s.store(a.load(Ordering::SeqCst), Ordering::SeqCst) });
        let mut pace = Pace::default();
        for _ in 0..10 * ACCEPTS_PER_TURN {
            pace.step().await;
            accepted.fetch_add(1, Ordering::SeqCst);
        }
        assert_eq!(seen_at.load(Ordering::SeqCst), ACCEPTS_PER_TURN);
    }

    /// A connection's task is one boxed stage at a time (two pointers and a tag): nothing of the intake
    /// stays beside a session for its life.
    #[test]
    fn a_connection_task_holds_one_boxed_stage() {
        assert!(std::mem::size_of::<super::Connection>() <= 24);
    }
}
