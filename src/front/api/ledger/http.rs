//! JSON-RPC over HTTP POST, as the node takes it: `{"method": M, "params": [{...}]}`, answered in
//! `result`. Each request is judged and charged here, then sent to the node over this connection's own
//! HTTP connection to it (opened from the front's upstreams on first use, reopened when the node closed
//! it), with only the headers the gateway chooses.

use super::commands::{judge, FeeClass, Fields, Verdict};
use super::errors::{self, NodeError, OVERLOADED};
use super::{load, Reply, Session};
use crate::front::api::forwarded;
use crate::telemetry::metrics::{self, ApiResult};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::atomic::Ordering;

/// The node's content type for JSON-RPC replies.
const JSON: &str = "application/json; charset=UTF-8";

#[derive(Debug, thiserror::Error)]
pub enum NodeCallError {
    #[error("{0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("node connection: {0}")]
    Http(#[from] hyper::Error),
    #[error("the node's reply exceeds {0} bytes")]
    ResponseTooLarge(usize),
    #[error("no reply from the node within {0:?}")]
    Timeout(std::time::Duration),
}

/// This client connection's HTTP connection to the node.
#[derive(Default)]
pub struct Upstream(tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>);

/// A JSON-RPC request, read only as far as judging it needs.
#[derive(Deserialize)]
struct Call<'a> {
    #[serde(default)]
    method: Option<serde_json::Value>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    r
}

/// The node's plain-text refusals (`Unable to parse request`, `Null method`, …), status and text.
fn refusal(status: StatusCode, text: &str) -> Reply {
    reply(status, format!("{text}\r\n"))
}

/// HTTP 503 with the node's status text and body, and the connection closed.
pub fn overloaded() -> Reply {
    let mut r = refusal(StatusCode::SERVICE_UNAVAILABLE, OVERLOADED);
    r.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(OVERLOADED.as_bytes()));
    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// What one command costs and whether it may go to the node.
struct Judged {
    class: FeeClass,
    fee: f64,
    error: Option<NodeError>,
}

fn judged(s: &Session, method: &str, fields: &Fields) -> Judged {
    match judge(method, fields, &s.set.extra_commands) {
        Verdict::Public(class) => Judged {
            class,
            fee: s.set.fees.of(method, class),
            error: None,
        },
        v => Judged {
            class: FeeClass::Malformed,
            fee: s.set.fees.malformed,
            error: Some(if v == Verdict::Admin {
                NodeError::NoPermission
            } else {
                NodeError::UnknownCommand
            }),
        },
    }
}

/// Charges a refused request its fee; the 503 when that reaches the drop threshold.
fn charge_refusal(s: &Session) -> Option<Reply> {
    if load::charge(&s.account, s.set.fees.malformed).drop {
        s.drop_client();
        return Some(overloaded());
    }
    None
}

pub async fn handle(s: &Session, req: Request<Incoming>) -> Reply {
    s.requests.fetch_add(1, Ordering::Relaxed);
    // The node checks the client's standing before it reads the request.
    if s.dropped.load(Ordering::Acquire) || load::now(&s.account).drop {
        s.drop_client();
        metrics::ledger_request(FeeClass::Malformed.index(), ApiResult::Refused);
        return overloaded();
    }
    if req.method() != Method::POST {
        let mut r = refusal(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.set.max_message as u64) {
        return too_large(s);
    }
    let body = match Limited::new(req.into_body(), s.set.max_message).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return too_large(s),
        Err(_) => return refusal(StatusCode::BAD_REQUEST, "Bad Request"),
    };
    s.bytes_in.fetch_add(body.len() as u64, Ordering::Relaxed);
    let refuse = |status: StatusCode, text: &str| {
        metrics::ledger_request(FeeClass::Malformed.index(), ApiResult::Error);
        charge_refusal(s).unwrap_or_else(|| refusal(status, text))
    };
    let call = match serde_json::from_slice::<Call<'_>>(&body) {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("Unable to parse request: {e}")),
    };
    let method = match &call.method {
        None | Some(serde_json::Value::Null) => return refuse(StatusCode::BAD_REQUEST, "Null method"),
        Some(serde_json::Value::String(m)) if m.is_empty() => {
            return refuse(StatusCode::BAD_REQUEST, "method is empty")
        }
        Some(serde_json::Value::String(m)) => m.as_str(),
        Some(_) => return refuse(StatusCode::BAD_REQUEST, "method is not string"),
    };
    if method == "batch" {
        return batch(s, call.params, body.clone()).await;
    }
    let fields: Fields = match call.params {
        None => Fields::new(),
        Some(p) => match serde_json::from_str::<[Option<Fields>; 1]>(p.get()) {
            Ok([f]) => f.unwrap_or_default(),
            Err(_) => return refuse(StatusCode::BAD_REQUEST, "params unparsable"),
        },
    };
    let j = judged(s, method, &fields);
    let l = load::charge(&s.account, j.fee);
    if l.drop {
        s.drop_client();
        metrics::ledger_request(j.class.index(), ApiResult::Refused);
        return overloaded();
    }
    if let Some(e) = j.error {
        metrics::ledger_request(j.class.index(), ApiResult::Refused);
        return reply(StatusCode::OK, errors::rpc_error(e, method, &fields, l.warning));
    }
    forward_and_answer(s, body.clone(), j.class, l.warning).await
}

/// A `batch` goes to the node whole when every item may; one walled-off item refuses it all, as the
/// node refuses a single forbidden request (403).
async fn batch(s: &Session, params: Option<&RawValue>, body: Bytes) -> Reply {
    #[derive(Deserialize)]
    struct Item {
        #[serde(default)]
        method: Option<String>,
        #[serde(flatten)]
        fields: Fields,
    }
    let items = params.and_then(|p| serde_json::from_str::<Vec<Item>>(p.get()).ok());
    let Some(items) = items else {
        metrics::ledger_request(FeeClass::Malformed.index(), ApiResult::Error);
        return charge_refusal(s).unwrap_or_else(|| refusal(StatusCode::BAD_REQUEST, "Malformed batch request"));
    };
    let mut fee = 0.0;
    let mut class = FeeClass::Reference;
    for item in &items {
        let j = judged(s, item.method.as_deref().unwrap_or(""), &item.fields);
        if j.error.is_some() {
            metrics::ledger_request(FeeClass::Malformed.index(), ApiResult::Refused);
            return charge_refusal(s).unwrap_or_else(|| refusal(StatusCode::FORBIDDEN, "Forbidden"));
        }
        fee += j.fee;
        if j.class.index() > class.index() {
            class = j.class;
        }
    }
    let l = load::charge(&s.account, fee);
    if l.drop {
        s.drop_client();
        metrics::ledger_request(class.index(), ApiResult::Refused);
        return overloaded();
    }
    forward_and_answer(s, body, class, false).await
}

fn too_large(s: &Session) -> Reply {
    metrics::ledger_request(FeeClass::Malformed.index(), ApiResult::Error);
    if let Some(r) = charge_refusal(s) {
        return r;
    }
    let mut r = refusal(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large");
    // The unread body would otherwise have to be read past before a next request.
    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn forward_and_answer(s: &Session, body: Bytes, class: FeeClass, warning: bool) -> Reply {
    match forward(s, body).await {
        Ok((status, answer)) => {
            metrics::ledger_request(class.index(), ApiResult::Ok);
            let answer = if warning {
                with_warning(&answer).unwrap_or(answer)
            } else {
                answer
            };
            reply(status, answer)
        }
        Err(e) => {
            metrics::ledger_request(class.index(), ApiResult::Error);
            tracing::warn!(front = %s.front.cfg.name, client = %s.client, error = %e, "ledger api request failed");
            let status = match e {
                NodeCallError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            let text = format!(
                r#"{{"result":{{"error":"{}","error_code":{},"error_message":{},"status":"error"}}}}"#,
                NodeError::Internal.token(),
                NodeError::Internal.code(),
                serde_json::Value::from(e.to_string())
            );
            reply(status, text + "\n")
        }
    }
}

/// The node's reply with `"warning":"load"` added to its `result` object.
fn with_warning(answer: &Bytes) -> Option<Bytes> {
    let text = std::str::from_utf8(answer).ok()?;
    let mut top: Fields = serde_json::from_str(text).ok()?;
    let result = top.get("result")?;
    let warned = errors::with_warning(result.get())?;
    top.insert("result".to_string(), RawValue::from_string(warned).ok()?);
    let mut out = serde_json::to_string(&top).ok()?;
    out.push('\n');
    Some(Bytes::from(out))
}

/// Sends `body` to the node and returns its status and reply.
async fn forward(s: &Session, body: Bytes) -> Result<(StatusCode, Bytes), NodeCallError> {
    let timeout = s.set.request_timeout;
    let max = s.set.max_response;
    let exchange = async {
        let mut slot = s.upstream.0.lock().await;
        let reusable = match slot.as_mut() {
            Some(c) => !c.is_closed() && c.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            *slot = None;
            let (tcp, addr) = s.front.pool.connect(s.client, s.local).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(upstream = %addr, error = %e, "node connection ended");
                }
            });
            *slot = Some(sender);
        }
        let Some(sender) = slot.as_mut() else {
            return Err(NodeCallError::Timeout(timeout));
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = hyper::Uri::from_static("/");
        let h = req.headers_mut();
        if let Some(Ok(v)) = s
            .front
            .cfg
            .upstreams
            .first()
            .map(|a| HeaderValue::from_str(&a.to_string()))
        {
            h.insert(HOST, v);
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if s.set.forwarded {
            h.insert(forwarded::FORWARDED, forwarded::value(s.client.ip()));
        }
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), max)
            .collect()
            .await
            .map_err(|_| NodeCallError::ResponseTooLarge(max))?
            .to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => {
            // The connection may still carry the late reply: the next request opens a new one.
            *s.upstream.0.lock().await = None;
            Err(NodeCallError::Timeout(timeout))
        }
    }
}
