//! Profile `ledger`: a stoxumd / rippled-family node's public API port behind the gateway. JSON-RPC over
//! HTTP POST and WebSocket on one port, as the node serves them, through hyper (HTTP/1.1 keep-alive and
//! the upgrade).
//!
//! Every command is judged against the node's handler table ([`commands`]): admin commands never reach
//! the node, and the client gets the node's own error for them ([`errors`]). Each command is charged the
//! node's fee into the client's account in the shared cost ledger ([`load`]); past the warning threshold
//! replies carry `"warning":"load"`, at the drop threshold the WebSocket closes with 1008 "threshold
//! exceeded" or HTTP answers 503, and the address is banned like an Electrum hard-limit offender.
//! WebSocket sessions ([`ws`]) get a WebSocket of their own to the node, whose notifications pass through
//! unchanged; their subscriptions are capped ([`subs`]).

pub mod commands;
pub mod errors;
pub mod http;
pub mod load;
pub mod settings;
pub mod subs;
pub mod ws;

use super::super::{CloseLine, FrontState};
use crate::listen::{CloseReason, Conn};
use crate::state::cost::Account;
use crate::telemetry::metrics;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use settings::LedgerSettings;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type Reply = Response<Full<Bytes>>;

/// How often the keep-alive watchdog looks at an idle connection.
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// The largest request head accepted (the bitcoind profile's cap: JSON-RPC and WebSocket clients send a
/// few hundred bytes of headers).
const MAX_HEADER_BYTES: usize = super::settings::MAX_HEADER_BYTES;

/// One admitted connection's state, shared by its HTTP requests and its WebSocket session.
pub struct Session {
    pub front: Arc<FrontState>,
    pub set: Arc<LedgerSettings>,
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub account: Account,
    pub requests: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Set once the client reached the drop threshold (and was banned).
    pub dropped: AtomicBool,
    in_flight: AtomicUsize,
    last_activity: Mutex<Instant>,
    /// The upgraded connection, once a WebSocket handshake was answered.
    upgrade: Mutex<Option<hyper::upgrade::OnUpgrade>>,
    /// This connection's HTTP connection to the node, opened on first use.
    pub(crate) upstream: http::Upstream,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    /// The client's group, where its subscriptions are counted: its cost group, or its own address.
    pub fn group(&self) -> IpAddr {
        self.account.group().unwrap_or(self.client.ip())
    }

    /// The drop threshold is reached: counted once, and the address banned as an Electrum hard-limit
    /// offender is.
    pub fn drop_client(&self) {
        if self.dropped.swap(true, Ordering::AcqRel) {
            return;
        }
        metrics::hard_limit_disconnect();
        let h = &self.front.handles.electrum;
        let p = h.ban_policy.load();
        if p.enabled {
            h.bans
                .ban_offender(self.client.ip(), p.duration, p.max_duration, "cost hard limit");
        }
        tracing::info!(front = %self.front.cfg.name, client = %self.client, "ledger api client over the drop threshold");
    }
}

fn empty(status: StatusCode) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.method() == Method::GET
        && req
            .headers()
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Answers a WebSocket handshake with 101 and keeps the upgrade for the session to take over.
fn accept_upgrade(s: &Session, mut req: Request<Incoming>) -> Reply {
    if load::now(&s.account).drop {
        s.drop_client();
        return http::overloaded();
    }
    let key = req.headers().get(SEC_WEBSOCKET_KEY).cloned();
    let version_ok = req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = key.filter(|_| version_ok) else {
        let mut r = empty(StatusCode::BAD_REQUEST);
        r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        return r;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    *lock(&s.upgrade) = Some(hyper::upgrade::on(&mut req));
    let mut r = empty(StatusCode::SWITCHING_PROTOCOLS);
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// Runs one admitted connection of a ledger-profile API front to its end and logs its close line.
pub async fn serve(front: Arc<FrontState>, conn: Conn, set: Arc<LedgerSettings>) {
    let tls = conn.stream.tls_version();
    let account = front.handles.electrum.ledger.open(conn.client.ip());
    let session = Arc::new(Session {
        front: front.clone(),
        set: set.clone(),
        client: conn.client,
        local: conn.local,
        account,
        requests: AtomicU64::new(0),
        bytes_in: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
        dropped: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        last_activity: Mutex::new(Instant::now()),
        upgrade: Mutex::new(None),
        upstream: http::Upstream::default(),
    });
    let svc_session = session.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let s = svc_session.clone();
        async move {
            s.in_flight.fetch_add(1, Ordering::AcqRel);
            let reply = if is_upgrade(&req) {
                accept_upgrade(&s, req)
            } else {
                http::handle(&s, req).await
            };
            let n = hyper::body::Body::size_hint(reply.body()).exact().unwrap_or(0);
            s.bytes_out.fetch_add(n, Ordering::Relaxed);
            *lock(&s.last_activity) = Instant::now();
            s.in_flight.fetch_sub(1, Ordering::AcqRel);
            Ok::<_, Infallible>(reply)
        }
    });
    let conn_http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(set.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true)
        .serve_connection(TokioIo::new(conn.stream), svc)
        .with_upgrades();
    tokio::pin!(conn_http);
    let mut reason = None;
    let drained = front.handles.drain.signal(conn.client);
    tokio::pin!(drained);
    let grace = set.request_timeout + set.keepalive_timeout;
    let mut shutdown_at: Option<Instant> = None;
    let result = loop {
        tokio::select! {
            r = conn_http.as_mut() => break Some(r),
            _ = tokio::time::sleep(IDLE_CHECK) => {
                if let Some(at) = shutdown_at {
                    if at.elapsed() >= grace {
                        break None;
                    }
                    continue;
                }
                let idle = session.in_flight.load(Ordering::Acquire) == 0
                    && lock(&session.last_activity).elapsed() >= set.keepalive_timeout;
                if idle {
                    reason = Some(CloseReason::IdleTimeout);
                    shutdown_at = Some(Instant::now());
                    conn_http.as_mut().graceful_shutdown();
                }
            }
            _ = &mut drained, if shutdown_at.is_none() => {
                reason = Some(CloseReason::Shutdown);
                shutdown_at = Some(Instant::now());
                conn_http.as_mut().graceful_shutdown();
            }
        }
    };
    if let Some(Err(e)) = &result {
        tracing::debug!(front = %front.cfg.name, client = %conn.client, error = %e, "api connection error");
    }
    let upgrade = lock(&session.upgrade).take();
    let mut reason = match (upgrade, &result) {
        (Some(on), Some(Ok(()))) => match on.await {
            Ok(io) => ws::run(&session, TokioIo::new(io)).await,
            Err(e) => {
                tracing::debug!(front = %front.cfg.name, client = %conn.client, error = %e, "websocket upgrade failed");
                CloseReason::ClientError
            }
        },
        _ => reason.unwrap_or(match result {
            Some(Err(_)) => CloseReason::ClientError,
            _ => CloseReason::ClientClosed,
        }),
    };
    if session.dropped.load(Ordering::Acquire) {
        reason = CloseReason::CostHardLimit;
    }
    front.log_close(&CloseLine {
        client: conn.client,
        via: conn.via,
        tls,
        since: conn.accepted_at,
        bytes_in: session.bytes_in.load(Ordering::Relaxed),
        bytes_out: session.bytes_out.load(Ordering::Relaxed),
        reason,
        requests: Some((session.requests.load(Ordering::Relaxed), session.account.cost())),
    });
}
