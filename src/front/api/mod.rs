//! The node API front (`kind = "api"`): HTTP/1.1 JSON-RPC on the admitted connection (hyper's server),
//! the clients' own users and method sets, per-method cost in the shared ledger, and the node's
//! credentials injected toward it over the front's upstream pool. Profile `bitcoind` only for now.
//!
//! A refused method is answered here in bitcoind's own shape and never reaches the node; a client at the
//! cost hard limit gets 503 and its address is banned, as on the Electrum front.

pub mod auth;
pub mod forwarded;
pub mod ledger;
pub mod methods;
pub mod rest;
pub mod settings;

use super::FrontState;
use crate::listen::{CloseReason, Conn};
use crate::state::cost::Account;
use crate::telemetry::metrics::{self, ApiResult};
use auth::{parse_basic, parse_bearer, Token};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::value::RawValue;
use settings::ApiSettings;
use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// JSON-RPC error codes the gateway answers with itself.
const METHOD_NOT_FOUND: i32 = -32601;
const INVALID_REQUEST: i32 = -32600;
const PARSE_ERROR: i32 = -32700;
const INTERNAL_ERROR: i32 = -32603;
/// The server-error range of JSON-RPC 2.0: bitcoind has no code of its own for "refused for load".
const EXCESSIVE_USE: i32 = -32000;

/// The metric class of requests refused before a method was read.
const NO_CLASS: usize = 3;

/// How often the keep-alive watchdog looks at an idle connection.
const IDLE_CHECK: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("node credentials: {0}")]
    Credentials(#[from] auth::AuthError),
    #[error("node connection: {0}")]
    Http(#[from] hyper::Error),
    #[error("the node refused the gateway's credentials (HTTP {0})")]
    NodeRefused(u16),
    #[error("the node's reply exceeds {0} bytes")]
    ResponseTooLarge(usize),
    #[error("the node's reply to a batch is not a batch of the same length")]
    BadBatchReply,
    #[error("no connection to the node")]
    NoConnection,
    #[error("no reply from the node within {0:?}")]
    Timeout(Duration),
}

type Reply = Response<Full<Bytes>>;

/// One admitted connection's state, shared by its requests.
struct Session {
    front: Arc<FrontState>,
    set: Arc<ApiSettings>,
    client: SocketAddr,
    local: SocketAddr,
    /// Swapped when a request authenticates with a credential of a trusted tier: the session is then
    /// accounted in that tier from its next charge on.
    account: arc_swap::ArcSwap<Account>,
    upstream: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
    in_flight: AtomicUsize,
    last_activity: Mutex<Instant>,
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    over_limit: AtomicBool,
}

/// One JSON-RPC call, parsed only as far as policy needs.
#[derive(Deserialize)]
struct Call<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    method: Option<serde_json::Value>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

/// The gateway's verdict on one call.
enum Verdict {
    /// Cost units and the method class's metric index.
    Forward(f64, usize),
    /// A reply made here: HTTP status and body.
    Answer(StatusCode, String),
}

fn rpc_error(id: Option<&RawValue>, code: i32, message: &str) -> String {
    let id = id.map_or("null", RawValue::get);
    let message = serde_json::Value::from(message);
    format!(r#"{{"result":null,"error":{{"code":{code},"message":{message}}},"id":{id}}}"#)
}

fn json_reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A reply without a body, so without a content type: JSON clients read the status alone.
fn empty(status: StatusCode) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn unauthorized() -> Reply {
    let mut r = empty(StatusCode::UNAUTHORIZED);
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"jsonrpc\""));
    r
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one admitted connection of an API front to its end and logs its close line.
pub async fn serve(front: Arc<FrontState>, conn: Conn) {
    if let Some(l) = front.cfg.ledger.clone() {
        return ledger::serve(front, conn, l).await;
    }
    let tls = conn.stream.tls_version();
    let Some(set) = front.cfg.api.clone() else {
        tracing::error!(front = %front.cfg.name, "api front without api settings");
        return;
    };
    let handles = &front.handles.electrum;
    let account = handles.ledger.open(conn.client.ip());
    account.charge(handles.cost.load().connection_cost);
    let session = Arc::new(Session {
        front: front.clone(),
        set: set.clone(),
        client: conn.client,
        local: conn.local,
        account: arc_swap::ArcSwap::from_pointee(account),
        upstream: tokio::sync::Mutex::new(None),
        in_flight: AtomicUsize::new(0),
        last_activity: Mutex::new(Instant::now()),
        requests: AtomicU64::new(0),
        bytes_in: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
        over_limit: AtomicBool::new(false),
    });
    let svc_session = session.clone();
    let svc = hyper::service::service_fn(move |req| {
        let s = svc_session.clone();
        async move {
            s.in_flight.fetch_add(1, Ordering::AcqRel);
            let reply = s.handle(req).await;
            let n = hyper::body::Body::size_hint(reply.body()).exact().unwrap_or(0);
            s.bytes_out.fetch_add(n, Ordering::Relaxed);
            *lock(&s.last_activity) = Instant::now();
            s.in_flight.fetch_sub(1, Ordering::AcqRel);
            Ok::<_, Infallible>(reply)
        }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(set.header_timeout)
        .max_buf_size(settings::MAX_HEADER_BYTES)
        .keep_alive(true)
        .serve_connection(TokioIo::new(conn.stream), svc);
    tokio::pin!(http);
    let mut reason = None;
    let drain = front.handles.drain.clone();
    let drained = drain.signal(conn.client);
    tokio::pin!(drained);
    // A graceful shutdown still waits for the request in progress and its reply being written; a client
    // that never reads the reply is cut once the node's time and another keep-alive period have passed.
    let grace = set.request_timeout + set.keepalive_timeout;
    let mut shutdown_at: Option<Instant> = None;
    // Set when the group reached the hard limit while a request of this connection was in progress:
    // looked at again once it is answered.
    let mut alerted = false;
    let result = loop {
        tokio::select! {
            r = http.as_mut() => break Some(r),
            _ = std::future::poll_fn(|cx| session.account.load().poll_alert(cx)), if shutdown_at.is_none() => {
                alerted = true;
                if session.cut_if_over_limit() {
                    reason = Some(CloseReason::CostHardLimit);
                    shutdown_at = Some(Instant::now());
                    http.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep(IDLE_CHECK) => {
                if let Some(at) = shutdown_at {
                    if at.elapsed() >= grace {
                        break None;
                    }
                    continue;
                }
                if alerted && session.in_flight.load(Ordering::Acquire) == 0 {
                    alerted = false;
                    if session.cut_if_over_limit() {
                        reason = Some(CloseReason::CostHardLimit);
                        shutdown_at = Some(Instant::now());
                        http.as_mut().graceful_shutdown();
                        continue;
                    }
                }
                let idle = session.in_flight.load(Ordering::Acquire) == 0
                    && lock(&session.last_activity).elapsed() >= set.keepalive_timeout;
                if idle {
                    reason = Some(CloseReason::IdleTimeout);
                    shutdown_at = Some(Instant::now());
                    http.as_mut().graceful_shutdown();
                }
            }
            _ = &mut drained, if shutdown_at.is_none() => {
                reason = Some(CloseReason::Shutdown);
                shutdown_at = Some(Instant::now());
                http.as_mut().graceful_shutdown();
            }
        }
    };
    if let Some(Err(e)) = &result {
        tracing::debug!(front = %front.cfg.name, client = %conn.client, error = %e, "api connection error");
    }
    let reason = if session.over_limit.load(Ordering::Acquire) {
        CloseReason::CostHardLimit
    } else {
        reason.unwrap_or(match result {
            Some(Err(_)) => CloseReason::ClientError,
            _ => CloseReason::ClientClosed,
        })
    };
    let account = session.account.load_full();
    let line = super::CloseLine {
        client: conn.client,
        via: conn.via,
        tls,
        since: conn.accepted_at,
        bytes_in: session.bytes_in.load(Ordering::Relaxed),
        bytes_out: session.bytes_out.load(Ordering::Relaxed),
        reason,
        requests: Some((session.requests.load(Ordering::Relaxed), account.cost())),
    };
    front.log_close_in(&line, account.tier().map(|t| t.name.as_str()));
}

impl Session {
    async fn handle(&self, req: Request<Incoming>) -> Reply {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.account.load().throttle().over_hard {
            metrics::api_request(NO_CLASS, ApiResult::Refused);
            return self.hard_limit(None);
        }
        // hyper bounds its read buffer (`max_buf_size`) but may still parse a head that arrived whole in
        // one larger read: the cap is checked here as well.
        let head: usize = req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
            + req.uri().authority().map_or(0, |a| a.as_str().len());
        if head > settings::MAX_HEADER_BYTES {
            let mut r = empty(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        if !rest::is_jsonrpc_path(req.uri().path()) {
            return self.rest(&req).await;
        }
        if req.method() != Method::POST {
            let mut r = empty(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        let Some(allowed) = self.authenticate(&req) else {
            // Guessing passwords costs like any other error, so a guesser reaches the hard limit and is
            // banned.
            metrics::api_request(NO_CLASS, ApiResult::Unauthorized);
            if req.headers().contains_key(AUTHORIZATION) && self.charge_error() {
                return self.hard_limit(None);
            }
            return unauthorized();
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.set.max_body as u64) {
            return self.too_large();
        }
        let path = req
            .uri()
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        let body = match Limited::new(req.into_body(), self.set.max_body).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return self.too_large(),
            Err(_) => return empty(StatusCode::BAD_REQUEST),
        };
        self.account.load().charge_bytes(body.len());
        self.bytes_in.fetch_add(body.len() as u64, Ordering::Relaxed);
        let Ok(text) = std::str::from_utf8(&body) else {
            return self.parse_error();
        };
        let Ok(raw) = serde_json::from_str::<&RawValue>(text) else {
            return self.parse_error();
        };
        if raw.get().starts_with('[') {
            self.batch(raw, allowed, &path, body.clone()).await
        } else {
            self.single(raw, allowed, &path, body.clone()).await
        }
    }

    /// A request outside JSON-RPC's paths: a listed REST prefix (GET only) goes to the node at its class's
    /// cost; anything else gets bitcoind's answer to a path it does not serve, 404 without a body, and pays
    /// `error_cost`, so a scanner of paths reaches the hard limit like a guesser of passwords.
    async fn rest(&self, req: &Request<Incoming>) -> Reply {
        let Some(class) = self.set.rest.class(req.uri().path()) else {
            metrics::api_request(NO_CLASS, ApiResult::Refused);
            if self.charge_error() {
                return self.hard_limit(None);
            }
            return empty(StatusCode::NOT_FOUND);
        };
        if req.method() != Method::GET {
            metrics::api_request(class.index(), ApiResult::Refused);
            if self.charge_error() {
                return self.hard_limit(None);
            }
            let mut r = empty(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
            return r;
        }
        if !self.charge(class.cost()).await {
            metrics::api_request(class.index(), ApiResult::Refused);
            return self.hard_limit(None);
        }
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        match self.exchange(Method::GET, path, Bytes::new()).await {
            Ok((status, kind, body)) => {
                metrics::api_request(class.index(), ApiResult::Ok);
                self.account.load().charge_bytes(body.len());
                let mut r = Response::new(Full::new(body));
                *r.status_mut() = status;
                if let Some(kind) = kind {
                    r.headers_mut().insert(CONTENT_TYPE, kind);
                }
                r
            }
            Err(e) => {
                metrics::api_request(class.index(), ApiResult::Error);
                self.upstream_failed(None, &e)
            }
        }
    }

    /// The caller's method set: its user's or token's, or the public one without credentials. None = 401.
    fn authenticate(&self, req: &Request<Incoming>) -> Option<&HashSet<String>> {
        match req.headers().get(AUTHORIZATION) {
            None if !self.set.public_methods.is_empty() => Some(&self.set.public_methods),
            None => None,
            Some(v) => {
                if let Some(token) = parse_bearer(v.as_bytes()) {
                    let t = Token::find(&self.set.tokens, token)?;
                    self.enter_tier_of(&t.name);
                    return Some(&t.methods);
                }
                let (name, password) = parse_basic(v.as_bytes())?;
                let Some(user) = self.set.users.iter().find(|u| u.name == name) else {
                    // The same HMAC work for an unknown name as for a known one, so the time taken does
                    // not tell which user names exist.
                    auth::hmac_sha256(name.as_bytes(), password.as_bytes());
                    return None;
                };
                if !user.verify(&password) {
                    return None;
                }
                self.enter_tier_of(&user.name);
                Some(&user.methods)
            }
        }
    }

    fn judge(&self, raw: &RawValue, allowed: &HashSet<String>) -> Verdict {
        let Ok(call) = serde_json::from_str::<Call<'_>>(raw.get()) else {
            return Verdict::Answer(
                StatusCode::BAD_REQUEST,
                rpc_error(None, INVALID_REQUEST, "Invalid Request object"),
            );
        };
        let Some(serde_json::Value::String(method)) = &call.method else {
            return Verdict::Answer(
                StatusCode::BAD_REQUEST,
                rpc_error(call.id, INVALID_REQUEST, "Method must be a string"),
            );
        };
        if !allowed.contains(method) {
            return Verdict::Answer(
                StatusCode::NOT_FOUND,
                rpc_error(call.id, METHOD_NOT_FOUND, "Method not found"),
            );
        }
        let (class, units) = methods::cost(method, call.params, &self.set.method_costs);
        tracing::trace!(front = %self.front.cfg.name, method = %method, class = class.name(), units, "api call");
        Verdict::Forward(units, class.index())
    }

    async fn single(&self, raw: &RawValue, allowed: &HashSet<String>, path: &str, body: Bytes) -> Reply {
        let id = serde_json::from_str::<Call<'_>>(raw.get()).ok().and_then(|c| c.id);
        match self.judge(raw, allowed) {
            Verdict::Answer(status, text) => {
                metrics::api_request(NO_CLASS, ApiResult::Refused);
                if self.charge_error() {
                    return self.hard_limit(id);
                }
                json_reply(status, text)
            }
            Verdict::Forward(units, class) => {
                if !self.charge(units).await {
                    metrics::api_request(class, ApiResult::Refused);
                    return self.hard_limit(id);
                }
                match self.forward(path, body).await {
                    Ok((status, reply)) => {
                        metrics::api_request(class, ApiResult::Ok);
                        self.account.load().charge_bytes(reply.len());
                        json_reply(status, reply)
                    }
                    Err(e) => {
                        metrics::api_request(class, ApiResult::Error);
                        self.upstream_failed(id, &e)
                    }
                }
            }
        }
    }

    /// Each item is judged alone: the allowed ones travel to the node as one batch, the refused ones are
    /// answered here, and the replies are put back in the client's order.
    async fn batch(&self, raw: &RawValue, allowed: &HashSet<String>, path: &str, body: Bytes) -> Reply {
        let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
            return self.parse_error();
        };
        if items.is_empty() || items.len() > self.set.max_batch {
            let msg = format!("a batch holds 1 to {} requests", self.set.max_batch);
            return json_reply(StatusCode::BAD_REQUEST, rpc_error(None, INVALID_REQUEST, &msg));
        }
        let mut answers: Vec<Option<String>> = Vec::with_capacity(items.len());
        let mut forward: Vec<&str> = Vec::new();
        let mut units = 0.0;
        let mut refused = 0usize;
        let mut classes = Vec::new();
        for item in &items {
            match self.judge(item, allowed) {
                Verdict::Answer(_, text) => {
                    metrics::api_request(NO_CLASS, ApiResult::Refused);
                    refused += 1;
                    answers.push(Some(text));
                }
                Verdict::Forward(u, class) => {
                    classes.push(class);
                    units += u;
                    forward.push(item.get());
                    answers.push(None);
                }
            }
        }
        let error_cost = self.front.handles.electrum.cost.load().error_cost;
        units += error_cost * refused as f64;
        let count = |outcome: ApiResult| {
            for &c in &classes {
                metrics::api_request(c, outcome);
            }
        };
        if !self.charge(units).await {
            count(ApiResult::Refused);
            return self.hard_limit(None);
        }
        if !forward.is_empty() {
            let sent = if forward.len() == items.len() {
                body
            } else {
                Bytes::from(format!("[{}]", forward.join(",")))
            };
            let replies = match self.forward(path, sent).await {
                Ok((_, reply)) => {
                    self.account.load().charge_bytes(reply.len());
                    match serde_json::from_slice::<Vec<Box<RawValue>>>(&reply) {
                        Ok(r) if r.len() == forward.len() => r,
                        _ => {
                            count(ApiResult::Error);
                            return self.upstream_failed(None, &ApiError::BadBatchReply);
                        }
                    }
                }
                Err(e) => {
                    count(ApiResult::Error);
                    return self.upstream_failed(None, &e);
                }
            };
            count(ApiResult::Ok);
            let mut replies = replies.into_iter();
            for a in answers.iter_mut().filter(|a| a.is_none()) {
                *a = replies.next().map(|r| r.get().to_string());
            }
        }
        let joined: Vec<String> = answers.into_iter().map(Option::unwrap_or_default).collect();
        json_reply(StatusCode::OK, format!("[{}]", joined.join(",")))
    }

    /// Sends a JSON-RPC `body` to the node: its status and reply.
    async fn forward(&self, path: &str, body: Bytes) -> Result<(StatusCode, Bytes), ApiError> {
        let (status, _, reply) = self.exchange(Method::POST, path, body).await?;
        Ok((status, reply))
    }

    /// Sends one request to the node over this session's upstream connection (opened on first use,
    /// reopened when the node closed it) with the gateway's credentials: its status, content type and body.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Option<HeaderValue>, Bytes), ApiError> {
        let auth = self.set.backend.header()?;
        let timeout = self.set.request_timeout;
        let max = self.set.max_response;
        let exchange = async {
            let mut slot = self.upstream.lock().await;
            let reusable = match slot.as_mut() {
                Some(s) => !s.is_closed() && s.ready().await.is_ok(),
                None => false,
            };
            if !reusable {
                *slot = None;
                let (tcp, addr) = self.front.pool.connect(self.client, self.local).await?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(upstream = %addr, error = %e, "node connection ended");
                    }
                });
                *slot = Some(sender);
            }
            let Some(sender) = slot.as_mut() else {
                return Err(ApiError::NoConnection);
            };
            let host = self
                .front
                .cfg
                .upstreams
                .first()
                .map_or_else(String::new, |a| a.to_string());
            let mut req = Request::new(Full::new(body));
            *req.method_mut() = method;
            *req.uri_mut() = path.parse().unwrap_or_else(|_| hyper::Uri::from_static("/"));
            let h = req.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&host) {
                h.insert(HOST, v);
            }
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if self.set.forwarded {
                h.insert(forwarded::FORWARDED, forwarded::value(self.client.ip()));
            }
            let mut v = HeaderValue::from_str(&auth).map_err(|_| auth::AuthError::BadHeader)?;
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(ApiError::NodeRefused(status.as_u16()));
            }
            let kind = resp.headers().get(CONTENT_TYPE).cloned();
            let body = Limited::new(resp.into_body(), max)
                .collect()
                .await
                .map_err(|_| ApiError::ResponseTooLarge(max))?
                .to_bytes();
            Ok((status, kind, body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => {
                // The connection may still carry the late reply: start the next request on a new one.
                *self.upstream.lock().await = None;
                Err(ApiError::Timeout(timeout))
            }
        }
    }

    fn upstream_failed(&self, id: Option<&RawValue>, e: &ApiError) -> Reply {
        tracing::warn!(front = %self.front.cfg.name, client = %self.client, error = %e, "api request failed");
        let (status, msg) = match e {
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "request timed out"),
            ApiError::ResponseTooLarge(_) => (StatusCode::BAD_GATEWAY, "response too large"),
            _ => (StatusCode::BAD_GATEWAY, "node unavailable"),
        };
        json_reply(status, rpc_error(id, INTERNAL_ERROR, msg))
    }

    /// Charges `units`; false at the hard limit. Above the soft limit the request first sleeps its share
    /// of `max_sleep`, as Electrum sessions do, so a heavy client slows down before it is refused.
    async fn charge(&self, units: f64) -> bool {
        let th = self.account.load().charge(units);
        if th.over_hard {
            return false;
        }
        if !th.sleep.is_zero() {
            tokio::time::sleep(th.sleep).await;
        }
        true
    }

    /// Charges a refused request's `error_cost`; true at the hard limit.
    fn charge_error(&self) -> bool {
        let units = self.front.handles.electrum.cost.load().error_cost;
        self.account.load().charge(units).over_hard
    }

    fn parse_error(&self) -> Reply {
        metrics::api_request(NO_CLASS, ApiResult::Error);
        self.account
            .load()
            .charge(self.front.handles.electrum.cost.load().parse_error_cost);
        json_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            rpc_error(None, PARSE_ERROR, "Parse error"),
        )
    }

    fn too_large(&self) -> Reply {
        metrics::api_request(NO_CLASS, ApiResult::Error);
        let mut r = empty(StatusCode::PAYLOAD_TOO_LARGE);
        // The unread body would otherwise have to be read past before a next request.
        r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        r
    }

    /// A keep-alive connection waiting for its next request, whose group (through other sessions, on any
    /// front, or a peer gateway's report) is at the hard limit: closed now and its address banned, as its
    /// next request would be refused anyway. HTTP has no way to tell it first. True when it is cut; a
    /// request in progress is left to finish (its connection is looked at again once it is answered).
    fn cut_if_over_limit(&self) -> bool {
        if self.in_flight.load(Ordering::Acquire) != 0 || !self.account.load().throttle().over_hard {
            return false;
        }
        tracing::info!(front = %self.front.cfg.name, client = %self.client, "group at the cost hard limit; closing an idle connection");
        self.mark_over_limit();
        true
    }

    /// Moves the session into the tier the credential `name` belongs to, unless it is accounted there
    /// already. Its cost so far stays where it was charged.
    fn enter_tier_of(&self, name: &str) {
        let ledger = &self.front.handles.electrum.ledger;
        let params = ledger.params();
        let Some(m) = params.tiers.by_credential(name, self.client.ip()) else {
            return;
        };
        if self.account.load().tier().is_some_and(|t| Arc::ptr_eq(t, m.tier)) {
            return;
        }
        self.account.store(Arc::new(ledger.open_tier(self.client.ip(), &m)));
    }

    /// The hard limit's ban and metric, once per connection.
    fn mark_over_limit(&self) {
        if !self.over_limit.swap(true, Ordering::AcqRel) {
            metrics::hard_limit_disconnect();
            let account = self.account.load();
            let tier = account.tier();
            if let Some(t) = tier {
                t.metrics.hard_limit();
            }
            let p = self.front.handles.electrum.ban_policy.load();
            if let Some(t) = tier.filter(|t| t.bans == crate::state::tier::TierBans::Never) {
                t.metrics.ban_spared();
            } else if p.enabled {
                self.front.handles.electrum.bans.ban_offender(
                    self.client.ip(),
                    p.duration,
                    p.max_duration,
                    "cost hard limit",
                );
            }
        }
    }

    /// Hard limit: 503 with a JSON-RPC error, the connection closed, the address banned.
    fn hard_limit(&self, id: Option<&RawValue>) -> Reply {
        self.mark_over_limit();
        let mut r = json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            rpc_error(id, EXCESSIVE_USE, "excessive resource usage"),
        );
        r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        r
    }
}
