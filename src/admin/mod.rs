//! The HTTP admin API (HTTP/1.1, hyper) on loopback TCP or a unix socket.
//!
//! `GET /healthz` and `GET /readyz` answer anyone who can reach the socket (probes carry no secrets);
//! everything else needs `Authorization: Bearer <token>`, including `GET /metrics` (Prometheus text)
//! unless `[admin] metrics_public = true`. Every mutation, allowed or not, leaves one
//! audit line (target `gatehouse::audit`) naming the peer, the action and the result, never the token.

pub mod api;
pub mod certs;
pub mod client;
pub mod live;
pub mod reload;
pub mod settings;

use crate::state::bans::{BanError, BanRecord, BanTable};
use crate::telemetry::metrics::AdminShed as Shed;
use crate::wire::acl::parse_cidr;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
pub use settings::{AdminConfig, AdminListen, AdminToken};
use settings::{ADMIN_MAX_CONNECTIONS as MAX_CONNECTIONS, DEFAULT_ADMIN_CONNECTIONS_PER_PEER};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;
/// A connection that sends nothing useful for this long is dropped, so idle clients cannot pin slots.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections shed for lack of room are logged at most this often (with how many since the last line),
/// so a local process hammering the API cannot flood the log either.
const SHED_LOG_INTERVAL: Duration = Duration::from_secs(60);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Longest ban an operator can set; longer is almost certainly a typo (`1000d`).
const MAX_BAN: Duration = Duration::from_secs(10 * 365 * 86_400);
const MAX_REASON: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin API: cannot listen on {listen}: {source}")]
    Bind {
        listen: AdminListen,
        source: std::io::Error,
    },
    #[error("admin API: {path} exists and is not a stale socket; remove it or choose another admin.listen")]
    PathInUse { path: PathBuf },
}

/// What the handlers need from the gateway.
pub struct AdminState {
    bans: Arc<BanTable>,
    token_digest: [u8; 32],
    /// Cancelled when the gateway stops accepting: from then on it is not ready.
    stop_accepting: CancellationToken,
    /// The gateway state `/metrics` reads at scrape time; without it only process-wide series are shown.
    metrics: Option<live::Live>,
    /// `/metrics` answers without the token.
    metrics_public: bool,
    /// Where `POST /v1/reload` asks the process that owns the configuration file to reload it.
    reload: Option<tokio::sync::mpsc::Sender<reload::ReloadRequest>>,
    /// Where `POST /v1/upgrade` asks that process to hand its listeners to a new one.
    upgrade: Option<tokio::sync::mpsc::Sender<reload::UpgradeRequest>>,
    /// The cluster links, when this gateway is part of a cluster.
    cluster: Option<crate::cluster::StatusHandle>,
    /// Connections one peer may hold at once.
    per_peer: usize,
    /// The served certificates, for `GET /v1/certs` and `/readyz`.
    certs: Option<certs::Certs>,
    /// The blocklist sources, for `/readyz`.
    feeds: Option<Arc<crate::state::feeds::FeedSet>>,
}

impl AdminState {
    /// Lets `GET /v1/cluster` report the cluster links.
    pub fn with_cluster(mut self, cluster: Option<crate::cluster::StatusHandle>) -> AdminState {
        self.cluster = cluster;
        self
    }

    /// Lets `/readyz` tell each blocklist source's state.
    pub fn with_feeds(mut self, feeds: Arc<crate::state::feeds::FeedSet>) -> AdminState {
        self.feeds = Some(feeds);
        self
    }

    fn feed_health(&self) -> Vec<api::FeedHealth> {
        let Some(f) = &self.feeds else { return Vec::new() };
        f.statuses()
            .into_iter()
            .map(|s| api::FeedHealth {
                state: match (s.stale, s.last_success) {
                    (true, _) => "stale",
                    (false, 0) => "empty",
                    (false, _) => "ok",
                }
                .to_string(),
                last_success: (s.last_success > 0).then(|| rfc3339(UNIX_EPOCH + Duration::from_secs(s.last_success))),
                name: s.name,
                entries: s.entries,
                last_error: s.last_error,
            })
            .collect()
    }

    /// Caps the connections one peer (address, or uid on a unix socket) may hold at once.
    pub fn with_connections_per_peer(mut self, n: usize) -> AdminState {
        self.per_peer = n.clamp(1, MAX_CONNECTIONS);
        self
    }

    /// Lets `POST /v1/reload` send requests to whoever owns the configuration file.
    pub fn with_reload(mut self, tx: tokio::sync::mpsc::Sender<reload::ReloadRequest>) -> AdminState {
        self.reload = Some(tx);
        self
    }

    /// Lets `POST /v1/upgrade` send requests to whoever owns the process and its listeners.
    pub fn with_upgrade(mut self, tx: tokio::sync::mpsc::Sender<reload::UpgradeRequest>) -> AdminState {
        self.upgrade = Some(tx);
        self
    }

    pub fn new(bans: Arc<BanTable>, token: &AdminToken, stop_accepting: CancellationToken) -> AdminState {
        AdminState {
            bans,
            token_digest: Sha256::digest(token.expose().as_bytes()).into(),
            stop_accepting,
            metrics: None,
            metrics_public: false,
            reload: None,
            upgrade: None,
            cluster: None,
            per_peer: DEFAULT_ADMIN_CONNECTIONS_PER_PEER,
            certs: None,
            feeds: None,
        }
    }

    /// Lets `GET /v1/certs` list the certificates and `/readyz` name placeholders.
    pub fn with_certs(mut self, certs: certs::Certs) -> AdminState {
        self.certs = Some(certs);
        self
    }

    /// Serves the gateway's live values at `/metrics`; `public` lets it answer without the token.
    pub fn with_metrics(mut self, live: live::Live, public: bool) -> AdminState {
        self.metrics = Some(live);
        self.metrics_public = public;
        self
    }

    /// Compares digests so the comparison is constant-time and its length reveals nothing.
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(v) = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some((scheme, token)) = v.split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let d: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        d.ct_eq(&self.token_digest).into()
    }
}

pub enum AdminListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl AdminListener {
    /// Binds `listen`. A leftover socket file from a crashed run is replaced; anything else at the path
    /// (a live gateway's socket, a regular file) is an error. A listening socket handed over by the
    /// previous process (a live upgrade) or by systemd for this address is used instead.
    pub async fn bind(listen: &AdminListen) -> Result<AdminListener, AdminError> {
        let bind_err = |source| AdminError::Bind {
            listen: listen.clone(),
            source,
        };
        match listen {
            AdminListen::Tcp(addr) => match crate::sys::activation::take(*addr) {
                Some(l) => {
                    l.set_nonblocking(true).map_err(bind_err)?;
                    Ok(AdminListener::Tcp(TcpListener::from_std(l).map_err(bind_err)?))
                }
                None => Ok(AdminListener::Tcp(TcpListener::bind(addr).await.map_err(bind_err)?)),
            },
            AdminListen::Unix(path) => {
                if let Some(l) = crate::sys::activation::take_unix(path) {
                    l.set_nonblocking(true).map_err(bind_err)?;
                    return Ok(AdminListener::Unix(
                        UnixListener::from_std(l).map_err(bind_err)?,
                        path.clone(),
                    ));
                }
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    let stale = meta.file_type().is_socket() && tokio::net::UnixStream::connect(path).await.is_err();
                    if !stale {
                        return Err(AdminError::PathInUse { path: path.clone() });
                    }
                    std::fs::remove_file(path).map_err(bind_err)?;
                }
                let l = UnixListener::bind(path).map_err(bind_err)?;
                // Only the gateway's user may even reach the socket; the token is a second lock.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
                Ok(AdminListener::Unix(l, path.clone()))
            }
        }
    }

    /// The bound address (with the real port when the config asked for port 0).
    pub fn local(&self) -> AdminListen {
        match self {
            AdminListener::Tcp(l) => {
                AdminListen::Tcp(l.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0))))
            }
            AdminListener::Unix(_, p) => AdminListen::Unix(p.clone()),
        }
    }
}

/// A running admin server; [`AdminServer::stop`] closes it and its connections.
pub struct AdminServer {
    addr: AdminListen,
    stop: CancellationToken,
    /// Cancelled when a successor process takes the listener over.
    handed_over: CancellationToken,
    /// A copy of the listening socket, to hand over to a successor process.
    socket: Option<std::os::fd::OwnedFd>,
    task: tokio::task::JoinHandle<()>,
}

/// How long open admin connections may finish after the listener went to a successor (the request that
/// asked for the upgrade waits for its answer).
const HANDOVER_GRACE: Duration = Duration::from_secs(5);

impl AdminServer {
    pub fn spawn(listener: AdminListener, state: Arc<AdminState>) -> AdminServer {
        use std::os::fd::AsFd;
        let addr = listener.local();
        let socket = match &listener {
            AdminListener::Tcp(l) => l.as_fd().try_clone_to_owned(),
            AdminListener::Unix(l, _) => l.as_fd().try_clone_to_owned(),
        }
        .ok();
        let stop = CancellationToken::new();
        let handed_over = CancellationToken::new();
        tracing::info!(listen = %addr, "admin API listening");
        let task = tokio::spawn(serve(listener, state, stop.clone(), handed_over.clone()));
        AdminServer {
            addr,
            stop,
            handed_over,
            socket,
            task,
        }
    }

    pub fn addr(&self) -> &AdminListen {
        &self.addr
    }

    /// The listening socket, for a successor process.
    pub fn socket(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.socket.as_ref().map(|s| s.as_fd())
    }

    /// A successor process serves the API now: stop accepting, leave a unix socket's path to it, and let
    /// open connections finish (for a few seconds).
    pub fn hand_over(&mut self) {
        self.handed_over.cancel();
        self.socket = None;
    }

    /// Closes the listener and every connection. After [`AdminServer::hand_over`] it waits instead for the
    /// open connections to finish (a few seconds at most), so the answer to the request that asked for the
    /// upgrade is not cut off by a drain that has nothing to wait for.
    pub async fn stop(self) {
        if !self.handed_over.is_cancelled() {
            self.stop.cancel();
        }
        let _ = self.task.await;
    }
}

/// Who a connection comes from, for the per-peer cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKey {
    Ip(IpAddr),
    Uid(u32),
    /// A unix-socket peer whose credentials could not be read: all such share one cap.
    Unknown,
}

/// One open admin connection.
struct Slot {
    id: u64,
    peer: PeerKey,
    /// A request on this connection carried the token: the operator's, never displaced.
    authenticated: AtomicBool,
    /// A request is being handled right now.
    busy: AtomicBool,
    /// Cancelled to close the connection when it is displaced.
    close: CancellationToken,
}

/// The open connections, oldest first. Kept by the connections themselves (each removes its own entry
/// when it ends), so the count is never stale, and capped at [`MAX_CONNECTIONS`].
struct Slots {
    open: Mutex<Vec<Arc<Slot>>>,
    per_peer: usize,
    next_id: AtomicU64,
    shed_log: Mutex<ShedLog>,
}

#[derive(Default)]
struct ShedLog {
    last: Option<Instant>,
    since: u64,
}

impl Slots {
    fn new(per_peer: usize) -> Slots {
        Slots {
            open: Mutex::new(Vec::with_capacity(MAX_CONNECTIONS)),
            per_peer,
            next_id: AtomicU64::new(0),
            shed_log: Mutex::new(ShedLog::default()),
        }
    }

    /// A slot for a new connection from `peer`. When the peer is at its cap (or the table is full), the
    /// oldest connection of that peer (or of anyone) that is neither authenticated nor being served
    /// makes room: it has not shown the token and is only waiting, while the newcomer may be the operator.
    /// `None` when nothing can make room.
    fn take(&self, peer: PeerKey) -> Option<Arc<Slot>> {
        let mut open = lock(&self.open);
        let mine = open.iter().filter(|s| s.peer == peer).count();
        let room = if mine >= self.per_peer {
            Some(peer)
        } else if open.len() >= MAX_CONNECTIONS {
            None
        } else {
            let slot = self.slot(peer);
            open.push(slot.clone());
            return Some(slot);
        };
        let victim = open.iter().position(|s| {
            room.is_none_or(|p| s.peer == p)
                && !s.authenticated.load(Ordering::Acquire)
                && !s.busy.load(Ordering::Acquire)
        });
        let Some(i) = victim else {
            drop(open);
            self.shed(peer, Shed::Refused);
            return None;
        };
        open.remove(i).close.cancel();
        let slot = self.slot(peer);
        open.push(slot.clone());
        drop(open);
        self.shed(peer, Shed::Displaced);
        Some(slot)
    }

    fn slot(&self, peer: PeerKey) -> Arc<Slot> {
        Arc::new(Slot {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            authenticated: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            close: CancellationToken::new(),
        })
    }

    fn release(&self, id: u64) {
        lock(&self.open).retain(|s| s.id != id);
    }

    fn shed(&self, peer: PeerKey, how: Shed) {
        crate::telemetry::metrics::admin_connection_shed(how);
        let mut log = lock(&self.shed_log);
        log.since += 1;
        let now = Instant::now();
        if log.last.is_none_or(|t| now.duration_since(t) >= SHED_LOG_INTERVAL) {
            tracing::warn!(
                ?peer,
                last = how.as_str(),
                shed = log.since,
                "admin API: connection slots exhausted; shedding connections that have not shown the token"
            );
            log.last = Some(now);
            log.since = 0;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Gives the slot back when the connection's task ends, however it ends.
struct Release(Arc<Slots>, u64);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// Marks a slot busy while one request is handled.
struct Busy(Arc<Slot>);

impl Busy {
    fn enter(slot: &Arc<Slot>) -> Busy {
        slot.busy.store(true, Ordering::Release);
        Busy(slot.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

async fn serve(
    listener: AdminListener,
    state: Arc<AdminState>,
    stop: CancellationToken,
    handed_over: CancellationToken,
) {
    let mut conns = JoinSet::new();
    let slots = Arc::new(Slots::new(state.per_peer));
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            _ = handed_over.cancelled() => break,
            a = accept(&listener) => a,
        };
        let (io, peer, key) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "admin API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = slots.take(key) else { continue };
        let release = Release(slots.clone(), slot.id);
        let state = state.clone();
        conns.spawn(async move {
            let _release = release;
            let close = slot.close.clone();
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let peer = peer.clone();
                let slot = slot.clone();
                async move {
                    let _busy = Busy::enter(&slot);
                    let authorized = state.authorized(&req);
                    if authorized {
                        slot.authenticated.store(true, Ordering::Release);
                    }
                    let mut reply = handle(&state, &peer, authorized, req).await;
                    if !authorized {
                        // No keep-alive without the token: a probe or a stranger gets its answer and the
                        // connection ends, so unauthenticated clients cannot sit on slots between requests.
                        reply
                            .headers_mut()
                            .insert(CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(reply)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, svc);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {}
                _ = close.cancelled() => {}
            }
        });
    }
    if handed_over.is_cancelled() {
        // The socket (and a unix socket's path) belongs to the successor now; only our open connections
        // are left to finish.
        drop(listener);
        let finish = async { while conns.join_next().await.is_some() {} };
        tokio::select! {
            _ = tokio::time::timeout(HANDOVER_GRACE, finish) => {}
            _ = stop.cancelled() => {}
        }
        conns.shutdown().await;
        return;
    }
    conns.shutdown().await;
    if let AdminListener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}

type Io = TokioIo<Box<dyn AsyncStream>>;

pub(crate) trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AsyncStream for T {}

/// The peer as audit lines name it (its address, or the uid/pid of a unix-socket client) and as the
/// per-peer cap counts it (its address without the port, or its uid).
async fn accept(l: &AdminListener) -> std::io::Result<(Io, String, PeerKey)> {
    match l {
        AdminListener::Tcp(l) => {
            let (s, a) = l.accept().await?;
            let key = PeerKey::Ip(crate::wire::addr::canonical(a.ip()));
            Ok((TokioIo::new(Box::new(s)), a.to_string(), key))
        }
        AdminListener::Unix(l, _) => {
            let (s, _) = l.accept().await?;
            let (who, key) = match s.peer_cred() {
                Ok(c) => (
                    format!("unix:uid={},pid={}", c.uid(), c.pid().map_or(-1, |p| p)),
                    PeerKey::Uid(c.uid()),
                ),
                Err(_) => ("unix".to_string(), PeerKey::Unknown),
            };
            Ok((TokioIo::new(Box::new(s)), who, key))
        }
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: &impl serde::Serialize) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(api::to_json(body))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Reply {
    reply(status, &api::ErrorBody::new(msg))
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    r
}

async fn handle(state: &AdminState, peer: &str, authorized: bool, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return reply(StatusCode::OK, &api::Health::new(api::HealthStatus::Ok)),
        (&Method::GET, "/readyz") => {
            return if state.stop_accepting.is_cancelled() {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &api::Health::new(api::HealthStatus::Draining),
                )
            } else if state.bans.journal_failing() {
                // Bans it is told about may not hold here: better out of rotation than a hole.
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &api::Health {
                        status: api::HealthStatus::Degraded,
                        reason: Some("the ban journal is failing writes".to_string()),
                        feeds: state.feed_health(),
                    },
                )
            } else {
                // Ready (the fronts serve, and a TLS-ALPN-01 validation may well arrive through the load
                // balancer), but a wallet would not trust a placeholder: say so.
                let placeholders = state.certs.as_ref().map(certs::Certs::placeholders).unwrap_or_default();
                let reason = (!placeholders.is_empty()).then(|| {
                    format!(
                        "serving a self-signed placeholder for {} until its ACME order succeeds",
                        placeholders.join(", ")
                    )
                });
                let ready = api::Health {
                    reason,
                    feeds: state.feed_health(),
                    ..api::Health::new(api::HealthStatus::Ready)
                };
                reply(StatusCode::OK, &ready)
            };
        }
        (_, "/healthz" | "/readyz") => return method_not_allowed("GET"),
        (&Method::GET, "/metrics") if state.metrics_public => return metrics(state),
        _ => {}
    }
    if !authorized {
        if method != Method::GET {
            tracing::warn!(target: "gatehouse::audit", peer, %method, path, result = "unauthorized", "admin request refused");
        }
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gatehouse\""));
        return r;
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/v1/bans") => list_bans(state, req.uri().query()),
        (&Method::POST, "/v1/bans") => add_ban(state, peer, req).await,
        (_, "/v1/bans") => method_not_allowed("GET, POST"),
        (&Method::DELETE, p) if p.starts_with("/v1/bans/") => remove_ban(state, peer, &p["/v1/bans/".len()..]),
        (_, p) if p.starts_with("/v1/bans/") => method_not_allowed("DELETE"),
        (&Method::GET, "/v1/cluster") => reply(StatusCode::OK, &cluster_status(state)),
        (_, "/v1/cluster") => method_not_allowed("GET"),
        (&Method::GET, "/v1/certs") => match &state.certs {
            Some(c) => reply(StatusCode::OK, &c.list()),
            None => reply(
                StatusCode::OK,
                &api::CertList {
                    certificates: Vec::new(),
                },
            ),
        },
        (_, "/v1/certs") => method_not_allowed("GET"),
        (&Method::GET, "/metrics") => metrics(state),
        (_, "/metrics") => method_not_allowed("GET"),
        (&Method::POST, "/v1/reload") => reload(state, peer).await,
        (_, "/v1/reload") => method_not_allowed("POST"),
        (&Method::POST, "/v1/upgrade") => upgrade(state, peer, req).await,
        (_, "/v1/upgrade") => method_not_allowed("POST"),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {method} {path}")),
    }
}

/// Same path as SIGHUP: the config file is read and validated whole; a bad file leaves the running
/// configuration in force and the reason comes back as a 400.
async fn reload(state: &AdminState, peer: &str) -> Reply {
    let Some(tx) = &state.reload else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload is not available in this process",
        );
    };
    let (done, result) = tokio::sync::oneshot::channel();
    if tx.send(done).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the gateway is shutting down");
    }
    match result.await {
        Ok(Ok(summary)) => {
            tracing::info!(target: "gatehouse::audit", peer, action = "reload", result = "ok", "admin reload");
            let answer = api::ReloadAnswer {
                added: summary.added,
                removed: summary.removed,
                updated: summary.updated,
            };
            reply(StatusCode::OK, &answer)
        }
        Ok(Err(e)) => {
            tracing::warn!(target: "gatehouse::audit", peer, action = "reload", result = "rejected", error = %e, "admin reload");
            error(StatusCode::BAD_REQUEST, e)
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the gateway is shutting down"),
    }
}

/// Starts a new process (the binary given, or this one's own) and hands it the listeners; answers once
/// the new process accepts on all of them, or with the reason it did not (this process then serves on).
async fn upgrade(state: &AdminState, peer: &str, req: Request<Incoming>) -> Reply {
    let Some(tx) = &state.upgrade else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "upgrade is not available in this process",
        );
    };
    let body = match Limited::new(req.into_body(), BODY_LIMIT).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot read request body: {e}")),
    };
    let asked: api::NewUpgrade = if body.is_empty() {
        api::NewUpgrade::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
        }
    };
    let binary = asked.binary.map(PathBuf::from);
    if binary.as_ref().is_some_and(|b| !b.is_absolute()) {
        return error(StatusCode::BAD_REQUEST, "binary must be an absolute path");
    }
    let (done, result) = tokio::sync::oneshot::channel();
    if tx.send(reload::UpgradeRequest { binary, done }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the gateway is shutting down");
    }
    match result.await {
        Ok(Ok(s)) => {
            tracing::info!(target: "gatehouse::audit", peer, action = "upgrade", result = "ok", pid = s.pid, binary = %s.binary.display(), "admin upgrade");
            let answer = api::UpgradeAnswer {
                pid: s.pid,
                binary: s.binary.display().to_string(),
            };
            reply(StatusCode::OK, &answer)
        }
        Ok(Err(e)) => {
            tracing::warn!(target: "gatehouse::audit", peer, action = "upgrade", result = "failed", error = %e, "admin upgrade");
            error(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the gateway is shutting down"),
    }
}

/// Peers, link state (or the Redis connection), last sync and lag (time since the last anti-entropy
/// exchange), and counters.
fn cluster_status(state: &AdminState) -> api::ClusterStatus {
    let Some(h) = &state.cluster else {
        return api::ClusterStatus::Standalone { peers: Vec::new() };
    };
    let st = h.status();
    let now = std::time::SystemTime::now();
    let unix = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    let lag_ms =
        |t: Option<std::time::SystemTime>| t.and_then(|t| now.duration_since(t).ok()).map(|d| d.as_millis() as u64);
    let s = &st.stats;
    let stats = api::ClusterCounters {
        published: s.published,
        applied: s.applied,
        duplicate: s.duplicate,
        stale: s.stale,
        rejected_unlisted_origin: s.rejected_unlisted_origin,
        rejected_bad_signature: s.rejected_bad_signature,
        rejected_malformed: s.rejected_malformed,
        refused_by_table: s.refused_by_table,
        refused_links: s.refused_links,
        dropped_sends: s.dropped_sends,
        cost_reports_sent: s.cost_reports_sent,
        cost_reports_received: s.cost_reports_received,
        cost_reports_rejected: s.cost_reports_rejected,
        digests_sent: s.digests_sent,
        summaries_sent: s.summaries_sent,
        bucket_digests_sent: s.bucket_digests_sent,
        digest_bytes_sent: s.digest_bytes_sent,
    };
    // Under Redis there are no links: the peers are the trusted origins (keys only) and the one
    // connection that matters is to Redis.
    if let Some(r) = &st.redis {
        return api::ClusterStatus::Redis {
            node: st.node.to_string(),
            listen: None,
            records: st.records as u64,
            cost_sharing: st.cost_sharing,
            peers: st
                .peers
                .iter()
                .map(|p| api::TrustedPeer { key: p.key.to_string() })
                .collect(),
            redis: api::RedisLink {
                url: r.url.clone(),
                prefix: r.prefix.clone(),
                connected: r.connected,
                since: unix(r.since),
                last_sync: unix(r.last_sync),
                lag_ms: lag_ms(r.last_sync),
            },
            stats,
        };
    }
    api::ClusterStatus::Embedded {
        node: st.node.to_string(),
        listen: st.listen.to_string(),
        records: st.records as u64,
        cost_sharing: st.cost_sharing,
        peers: st
            .peers
            .iter()
            .map(|p| api::LinkPeer {
                addr: p.addr.to_string(),
                key: p.key.to_string(),
                up: p.up,
                since: unix(p.since),
                last_sync: unix(p.last_sync),
                lag_ms: lag_ms(p.last_sync),
            })
            .collect(),
        stats,
    }
}

fn metrics(state: &AdminState) -> Reply {
    let text = crate::telemetry::metrics::render(
        state
            .metrics
            .as_ref()
            .map(|l| l as &dyn crate::telemetry::metrics::LiveSource),
    );
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::telemetry::metrics::CONTENT_TYPE),
    );
    r
}

/// A ban as the API and the CLI show it.
pub fn ban_body(b: &BanRecord) -> api::Ban {
    api::Ban {
        prefix: b.prefix.to_string(),
        reason: b.reason.clone(),
        origin: b.origin.clone(),
        version: b.version,
        created: rfc3339(b.created),
        until: rfc3339(b.until),
        expires_in_secs: crate::state::bans::remaining(b.until).as_secs(),
    }
}

fn list_bans(state: &AdminState, query: Option<&str>) -> Reply {
    let mut filter = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (percent_decode(k, true), percent_decode(v, true)) else {
            return error(StatusCode::BAD_REQUEST, "malformed percent-encoding in the query");
        };
        match k.as_str() {
            "prefix" => match parse_cidr(&v) {
                Ok(n) => filter = Some(n),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("prefix: {e}")),
            },
            _ => return error(StatusCode::BAD_REQUEST, format!("unknown query parameter `{k}`")),
        }
    }
    let list = api::BanList {
        bans: state.bans.list(filter).iter().map(ban_body).collect(),
    };
    reply(StatusCode::OK, &list)
}

/// Why a `POST /v1/bans` body was refused before it reached the ban table.
#[derive(Debug, thiserror::Error)]
enum BadBan {
    #[error("prefix: {0}")]
    Prefix(crate::wire::acl::CidrError),
    #[error("duration: {0}")]
    Duration(crate::wire::units::DurationError),
    #[error(
        "duration: must be greater than 0s and at most {}",
        crate::wire::units::Duration(MAX_BAN)
    )]
    Length,
    #[error("reason: at most {MAX_REASON} bytes, without control characters")]
    Reason,
}

async fn add_ban(state: &AdminState, peer: &str, req: Request<Incoming>) -> Reply {
    let audit_refused = |what: &str, status: StatusCode, why: &str| {
        tracing::warn!(target: "gatehouse::audit", peer, action = "ban", what, status = status.as_u16(), result = why, "admin ban refused");
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        // Refused before reading, so an oversized upload is never received at all.
        let msg = format!("request body exceeds {BODY_LIMIT} bytes");
        audit_refused("", StatusCode::PAYLOAD_TOO_LARGE, &msg);
        return error(StatusCode::PAYLOAD_TOO_LARGE, msg);
    }
    let body = match Limited::new(req.into_body(), BODY_LIMIT).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let (status, msg) = if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body exceeds {BODY_LIMIT} bytes"),
                )
            } else {
                (StatusCode::BAD_REQUEST, format!("cannot read request body: {e}"))
            };
            audit_refused("", status, &msg);
            return error(status, msg);
        }
    };
    let nb: api::NewBan = match serde_json::from_slice(&body) {
        Ok(nb) => nb,
        Err(e) => {
            let msg = format!("body must be JSON {{\"prefix\", \"duration\", \"reason\"}}: {e}");
            audit_refused("", StatusCode::BAD_REQUEST, &msg);
            return error(StatusCode::BAD_REQUEST, msg);
        }
    };
    let checked = (|| {
        let net = parse_cidr(nb.prefix.trim()).map_err(BadBan::Prefix)?;
        let d: crate::wire::units::Duration = nb.duration.trim().parse().map_err(BadBan::Duration)?;
        if d.0.is_zero() || d.0 > MAX_BAN {
            return Err(BadBan::Length);
        }
        let reason = nb.reason.unwrap_or_else(|| "banned by operator".to_string());
        if reason.len() > MAX_REASON || reason.chars().any(char::is_control) {
            return Err(BadBan::Reason);
        }
        Ok((net, d.0, reason))
    })();
    let (net, duration, reason) = match checked {
        Ok(x) => x,
        Err(e) => {
            audit_refused(&nb.prefix, StatusCode::BAD_REQUEST, &e.to_string());
            return error(StatusCode::BAD_REQUEST, e);
        }
    };
    match state.bans.ban(net, duration, reason.clone()) {
        Ok(rec) => {
            tracing::info!(target: "gatehouse::audit", peer, action = "ban", prefix = %net, duration_secs = duration.as_secs(), reason, status = 201, result = "banned", "admin ban");
            reply(StatusCode::CREATED, &ban_body(&rec))
        }
        Err(e) => {
            let status = match e {
                BanError::Allowlisted { .. } => StatusCode::CONFLICT,
                BanError::ZeroDuration | BanError::TooWide { .. } => StatusCode::BAD_REQUEST,
                BanError::TableFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
                BanError::Journal(_) | BanError::ReservedOrigin => StatusCode::INTERNAL_SERVER_ERROR,
            };
            audit_refused(&net.to_string(), status, &e.to_string());
            error(status, e)
        }
    }
}

fn remove_ban(state: &AdminState, peer: &str, raw: &str) -> Reply {
    let Some(text) = percent_decode(raw, false) else {
        return error(StatusCode::BAD_REQUEST, "prefix: malformed percent-encoding");
    };
    let net = match parse_cidr(&text) {
        Ok(n) => n,
        Err(e) => {
            let msg = format!("prefix: {e}");
            tracing::warn!(target: "gatehouse::audit", peer, action = "unban", what = text, status = 400, result = msg, "admin unban refused");
            return error(StatusCode::BAD_REQUEST, msg);
        }
    };
    match state.bans.unban(net) {
        Ok(Some(rec)) => {
            tracing::info!(target: "gatehouse::audit", peer, action = "unban", prefix = %net, status = 200, result = "lifted", "admin unban");
            reply(StatusCode::OK, &ban_body(&rec))
        }
        Ok(None) => {
            tracing::info!(target: "gatehouse::audit", peer, action = "unban", prefix = %net, status = 404, result = "no such ban", "admin unban");
            error(StatusCode::NOT_FOUND, format!("no ban in force on exactly {net}"))
        }
        Err(e) => {
            tracing::error!(target: "gatehouse::audit", peer, action = "unban", prefix = %net, status = 500, result = %e, "admin unban failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
    }
}

/// Decodes `%XX` escapes (and `+` as space in query strings). None on a malformed escape or non-UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Escapes everything but RFC 3986 unreserved characters, so a prefix (with its `/`) is one path segment.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub use crate::wire::time::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn percent_coding_round_trips_prefixes() {
        for p in ["203.0.113.0/24", "2001:db8::/32", "::ffff:1.2.3.4"] {
            assert_eq!(percent_decode(&percent_encode(p), false).unwrap(), p);
        }
        assert_eq!(percent_encode("203.0.113.0/24"), "203.0.113.0%2F24");
        assert!(percent_decode("%2", false).is_none());
        assert!(percent_decode("%zz", false).is_none());
    }
}
