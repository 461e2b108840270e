//! The WebSocket side of the ledger profile: `{"id": …, "command": M, …}` messages, judged and charged one
//! by one, forwarded over a WebSocket to the node of this session's own (subscriptions bind to it).
//!
//! Requests travel to the node under ids the session issues, and each reply goes back with the client's id
//! restored (or none, if it sent none): a reply is matched to its request exactly, whatever order the node
//! answers in, so `"warning":"load"` lands on the reply of the request that earned it and a refused
//! subscription is handed back. Everything else the node sends (stream messages: `ledgerClosed`,
//! `transaction`, …) passes through unchanged, except the id of the session's `path_find` updates, which
//! is the client's again.
//!
//! Replies and notifications wait for the client in a queue of at most `max_pending_output` bytes, and
//! each message must be taken within `slow_reader_timeout`: a client that stops reading is cut off
//! rather than buffered for.

use super::commands::{judge, string, FeeClass, Fields, Verdict};
use super::errors::{self, NodeError, DROP_CLOSE_REASON};
use super::subs::{self, Subs};
use super::{load, Session};
use crate::front::api::forwarded;
use crate::listen::CloseReason;
use crate::telemetry::metrics::{self, ApiResult};
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Requests one session may have at the node at once; past it the session stops reading the client
/// until replies come back, so the table of pending ids stays small.
const MAX_IN_FLIGHT: usize = 256;

/// How long a closing session waits for its last messages (a close frame among them) to be taken.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A request at the node, by the id the session gave it.
struct Pending {
    client_id: Option<Box<RawValue>>,
    warning: bool,
    class: FeeClass,
    /// Subscriptions taken for it, handed back if the node refuses it.
    taken: Vec<String>,
    path_find: bool,
}

/// The first fields of a node message: enough to tell a reply from a notification.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
}

/// Where a message's top-level id is.
#[derive(Deserialize)]
struct IdAt<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// What a client message led to.
enum Step {
    Go,
    /// The client reached the drop threshold.
    Drop,
    End(CloseReason),
}

/// What tungstenite reads per call. It zeroes this much of its buffer before every read, so its 128 KiB
/// default cost more CPU than all else a message takes; API messages are mostly under a kilobyte.
const READ_BUFFER: usize = 8 * 1024;

fn config(max: usize) -> WebSocketConfig {
    let mut cfg = WebSocketConfig::default();
    cfg.read_buffer_size = READ_BUFFER;
    cfg.max_message_size = Some(max);
    cfg.max_frame_size = Some(max);
    cfg
}

fn close(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

#[derive(Debug, thiserror::Error)]
enum NodeWsError {
    #[error("{0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("websocket to the node: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("no websocket handshake with the node within {0:?}")]
    Timeout(Duration),
}

type NodeWs = WebSocketStream<tokio::net::TcpStream>;

async fn connect_node(s: &Session) -> Result<NodeWs, NodeWsError> {
    let (tcp, addr) = s.front.pool.connect(s.client, s.local).await?;
    let mut req = format!("ws://{addr}/").into_client_request()?;
    if s.set.forwarded {
        req.headers_mut()
            .insert(forwarded::FORWARDED, forwarded::value(s.client.ip()));
    }
    let handshake = tokio_tungstenite::client_async_with_config(req, tcp, Some(config(s.set.max_response)));
    match tokio::time::timeout(s.set.request_timeout, handshake).await {
        Ok(r) => Ok(r?.0),
        Err(_) => Err(NodeWsError::Timeout(s.set.request_timeout)),
    }
}

/// Takes queued messages to the client, each within `timeout`; ends with the reason the client was cut,
/// or None once the queue closed (or a close frame went out).
async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::UnboundedReceiver<Message>,
    queued: Arc<AtomicUsize>,
    s: Arc<Session>,
) -> Option<CloseReason>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = s.set.slow_reader_timeout;
    while let Some(msg) = rx.recv().await {
        let n = msg.len();
        let last = matches!(msg, Message::Close(_));
        match tokio::time::timeout(timeout, sink.send(msg)).await {
            Err(_) => return Some(CloseReason::SlowReader),
            Ok(Err(_)) => return Some(CloseReason::ClientError),
            Ok(Ok(())) => {}
        }
        queued.fetch_sub(n, Ordering::AcqRel);
        s.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        if last {
            return None;
        }
    }
    let _ = tokio::time::timeout(timeout, sink.close()).await;
    None
}

struct Run<'a> {
    s: &'a Session,
    out: mpsc::UnboundedSender<Message>,
    queued: Arc<AtomicUsize>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    subs: Subs<'a>,
    /// The node's id of the session's current path_find request, and the client's.
    path_find: Option<(u64, Option<Box<RawValue>>)>,
}

impl Run<'_> {
    /// Queues `msg` for the client; false once the queue is over `max_pending_output`.
    fn queue(&self, msg: Message) -> bool {
        let n = msg.len();
        let total = self.queued.fetch_add(n, Ordering::AcqRel) + n;
        if total > self.s.set.max_pending_output {
            return false;
        }
        self.out.send(msg).is_ok()
    }

    fn answer(&self, text: String) -> Step {
        if self.queue(Message::text(text)) {
            Step::Go
        } else {
            Step::End(CloseReason::SlowReader)
        }
    }

    /// A refused request: charged as malformed, then answered with `text(warning)`.
    fn refuse(&self, class: FeeClass, text: impl FnOnce(bool) -> String) -> Step {
        metrics::ledger_request(class.index(), ApiResult::Refused);
        let l = load::charge(&self.s.account, self.s.set.fees.malformed);
        if l.drop {
            return Step::Drop;
        }
        self.answer(text(l.warning))
    }

    async fn on_client<N>(&mut self, text: &str, node: &mut N) -> Step
    where
        N: futures_util::Sink<Message> + Unpin,
    {
        let s = self.s;
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.bytes_in.fetch_add(text.len() as u64, Ordering::Relaxed);
        // The node checks the client's standing before it reads the message.
        if load::now(&s.account).drop {
            return Step::Drop;
        }
        let Ok(mut fields) = serde_json::from_str::<Fields>(text) else {
            return self.refuse(FeeClass::Malformed, |_| errors::ws_json_invalid(text));
        };
        let Some(command) = string(&fields, "command").or_else(|| string(&fields, "method")) else {
            return self.refuse(FeeClass::Malformed, |_| errors::ws_missing_command(&fields));
        };
        let class = match judge(&command, &fields, &s.set.extra_commands) {
            Verdict::Public(c) => c,
            Verdict::Admin => {
                return self.refuse(FeeClass::Malformed, |w| {
                    errors::ws_error(NodeError::NoPermission, &fields, w)
                })
            }
            Verdict::Unknown => {
                return self.refuse(FeeClass::Malformed, |w| {
                    errors::ws_error(NodeError::UnknownCommand, &fields, w)
                })
            }
        };
        let change = subs::change(&command, &fields);
        let path_find = change.add.iter().any(|k| k == "path_find");
        let taken = match self
            .subs
            .apply(change, s.set.max_subscriptions, s.set.max_subscriptions_per_group)
        {
            Ok(t) => t,
            Err(_) => {
                return self.refuse(class, |w| errors::ws_error(NodeError::SlowDown, &fields, w));
            }
        };
        let l = load::charge(&s.account, s.set.fees.of(&command, class));
        if l.drop {
            self.subs.undo(&taken);
            metrics::ledger_request(class.index(), ApiResult::Refused);
            return Step::Drop;
        }
        let id = self.next_id;
        self.next_id += 1;
        let client_id = fields.remove("id");
        // The client's message goes on as it came, only its id replaced (or one added).
        let at = serde_json::from_str::<IdAt<'_>>(text).ok().and_then(|h| h.id);
        let forward = splice_id(text, at.map(RawValue::get), &id.to_string());
        self.pending.insert(
            id,
            Pending {
                client_id,
                warning: l.warning,
                class,
                taken,
                path_find,
            },
        );
        if node.send(Message::text(forward)).await.is_err() {
            return Step::End(CloseReason::UpstreamError);
        }
        Step::Go
    }

    fn on_node(&mut self, text: tokio_tungstenite::tungstenite::Utf8Bytes) -> Step {
        let head = serde_json::from_str::<Head<'_>>(&text).ok();
        let id = head
            .as_ref()
            .and_then(|h| h.id)
            .and_then(|r| r.get().parse::<u64>().ok());
        let is_reply = head.as_ref().is_some_and(|h| h.kind.as_deref() == Some("response"));
        let Some(p) = id
            .filter(|_| is_reply)
            .and_then(|id| self.pending.remove(&id).map(|p| (id, p)))
        else {
            // A notification. The session's path_find updates carry the id of its path_find request.
            if let (Some((pf, client_id)), Some(id)) = (&self.path_find, id) {
                if *pf == id && head.as_ref().is_some_and(|h| h.kind.as_deref() == Some("path_find")) {
                    let at = head.as_ref().and_then(|h| h.id).map(RawValue::get);
                    let out = restore_id(&text, at, client_id.as_deref(), false, false);
                    return self.answer(out.unwrap_or_else(|| text.to_string()));
                }
            }
            return if self.queue(Message::Text(text)) {
                Step::Go
            } else {
                Step::End(CloseReason::SlowReader)
            };
        };
        let (id, p) = p;
        let ok = head.as_ref().and_then(|h| h.status.as_deref()) == Some("success");
        metrics::ledger_request(p.class.index(), ApiResult::Ok);
        if !ok {
            self.subs.undo(&p.taken);
        } else if p.path_find {
            self.path_find = Some((id, p.client_id.as_ref().map(|c| c.to_owned())));
        }
        let at = head.as_ref().and_then(|h| h.id).map(RawValue::get);
        match restore_id(&text, at, p.client_id.as_deref(), p.warning, !ok) {
            Some(out) => self.answer(out),
            None => self.answer(text.to_string()),
        }
    }
}

/// `text` (a JSON object) with the value `at` (its top-level id, a slice of `text`) replaced by `with`, or
/// with `"id":with` added first when `at` is None.
fn splice_id(text: &str, at: Option<&str>, with: &str) -> String {
    let mut out = String::with_capacity(text.len() + with.len() + 8);
    let start = at.and_then(|a| (a.as_ptr() as usize).checked_sub(text.as_ptr() as usize));
    match (at, start) {
        (Some(a), Some(s)) if s + a.len() <= text.len() && text.get(s..s + a.len()) == Some(a) => {
            out.push_str(&text[..s]);
            out.push_str(with);
            out.push_str(&text[s + a.len()..]);
        }
        _ => {
            let brace = text.find('{').map_or(0, |b| b + 1);
            let empty = text[brace..].trim_start().starts_with('}');
            out.push_str(&text[..brace]);
            out.push_str("\"id\":");
            out.push_str(with);
            if !empty {
                out.push(',');
            }
            out.push_str(&text[brace..]);
        }
    }
    out
}

/// `text` (a node reply, whose top-level id is the slice `at`) with the client's id in place of the
/// session's (or none), the echoed request's id too on an error, and `"warning":"load"` when earned. The
/// usual reply (a success, to a request with an id) keeps the node's bytes, its id replaced.
fn restore_id(
    text: &str,
    at: Option<&str>,
    client_id: Option<&RawValue>,
    warning: bool,
    error: bool,
) -> Option<String> {
    if let (Some(c), Some(_), false) = (client_id, at, error) {
        let out = splice_id(text, at, c.get());
        return Some(if warning {
            errors::with_warning(&out).unwrap_or(out)
        } else {
            out
        });
    }
    let mut f: Fields = serde_json::from_str(text).ok()?;
    match client_id {
        Some(c) => {
            f.insert("id".to_string(), c.to_owned());
        }
        None => {
            f.remove("id");
        }
    }
    if error {
        if let Some(req) = f.get("request") {
            let mut r: Fields = serde_json::from_str(req.get()).ok()?;
            match client_id {
                Some(c) => r.insert("id".to_string(), c.to_owned()),
                None => r.remove("id"),
            };
            f.insert(
                "request".to_string(),
                RawValue::from_string(serde_json::to_string(&r).ok()?).ok()?,
            );
        }
    }
    if warning {
        f.insert(
            "warning".to_string(),
            RawValue::from_string("\"load\"".to_string()).ok()?,
        );
    }
    serde_json::to_string(&f).ok()
}

/// Runs the WebSocket session on the upgraded connection to its end; returns why it ended.
pub async fn run<S>(s: &Arc<Session>, io: S) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = WebSocketStream::from_raw_socket(io, Role::Server, Some(config(s.set.max_message))).await;
    let node = match connect_node(s).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::warn!(front = %s.front.cfg.name, error = %e, "no websocket to the node");
            let (mut tx, _) = client.split();
            let _ = tokio::time::timeout(CLOSE_GRACE, tx.send(close(CloseCode::Error, "node unavailable"))).await;
            return CloseReason::UpstreamUnreachable;
        }
    };
    let (client_tx, mut client_rx) = client.split();
    let (mut node_tx, mut node_rx) = node.split();
    let queued = Arc::new(AtomicUsize::new(0));
    let (out, rx) = mpsc::unbounded_channel();
    let mut writer = tokio::spawn(write_loop(client_tx, rx, queued.clone(), s.clone()));
    let mut r = Run {
        s,
        out,
        queued,
        pending: HashMap::new(),
        next_id: 1,
        subs: Subs::new(&s.front.handles.api_subs, s.group()),
        path_find: None,
    };
    let drained = s.front.handles.drain.signal(s.client);
    tokio::pin!(drained);
    // A session that holds no subscription and waits for no reply may sit idle for the front's idle
    // timeout; one that holds subscriptions is what a subscriber looks like, and stays.
    let idle_timeout = s.front.cfg.idle_timeout;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut writer_done = false;
    let reason = loop {
        let step = tokio::select! {
            _ = &mut idle => {
                if r.subs.is_empty() && r.pending.is_empty() {
                    r.queue(close(CloseCode::Away, "idle"));
                    Step::End(CloseReason::IdleTimeout)
                } else {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    Step::Go
                }
            }
            m = client_rx.next(), if r.pending.len() < MAX_IN_FLIGHT => match m {
                None | Some(Ok(Message::Close(_))) => Step::End(CloseReason::ClientClosed),
                Some(Err(_)) => Step::End(CloseReason::ClientError),
                Some(Ok(Message::Text(t))) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    r.on_client(&t, &mut node_tx).await
                }
                Some(Ok(Message::Binary(b))) => match std::str::from_utf8(&b) {
                    Ok(t) => r.on_client(t, &mut node_tx).await,
                    Err(_) => r.refuse(FeeClass::Malformed, |_| errors::ws_json_invalid("")),
                },
                Some(Ok(_)) => Step::Go,
            },
            m = node_rx.next() => match m {
                None | Some(Ok(Message::Close(_))) => Step::End(CloseReason::UpstreamClosed),
                Some(Err(_)) => Step::End(CloseReason::UpstreamError),
                Some(Ok(Message::Text(t))) => r.on_node(t),
                Some(Ok(_)) => Step::Go,
            },
            _ = std::future::poll_fn(|cx| s.account.poll_alert(cx)) => {
                if load::now(&s.account).drop { Step::Drop } else { Step::Go }
            }
            _ = &mut drained => {
                r.queue(close(CloseCode::Away, "shutdown"));
                Step::End(CloseReason::Shutdown)
            }
            w = &mut writer => {
                writer_done = true;
                Step::End(w.ok().flatten().unwrap_or(CloseReason::ClientClosed))
            }
        };
        match step {
            Step::Go => continue,
            Step::End(reason) => break reason,
            Step::Drop => {
                s.drop_client();
                // Past the queue cap too: the close frame must go out.
                let _ = r.out.send(close(CloseCode::Policy, DROP_CLOSE_REASON));
                break CloseReason::CostHardLimit;
            }
        }
    };
    drop(r);
    // A slow reader is not waited for; otherwise the last messages (a close frame among them) get a
    // moment to go out.
    let slow = matches!(reason, CloseReason::SlowReader);
    if !writer_done && (slow || tokio::time::timeout(CLOSE_GRACE, &mut writer).await.is_err()) {
        writer.abort();
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, node_tx.send(Message::Close(None))).await;
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_spliced_in_place() {
        let text = r#"{"command":"ping","id":"abc","x":[1]}"#;
        let at = serde_json::from_str::<IdAt<'_>>(text).unwrap().id.map(RawValue::get);
        assert_eq!(splice_id(text, at, "7"), r#"{"command":"ping","id":7,"x":[1]}"#);
        assert_eq!(
            splice_id(r#"{"command":"ping"}"#, None, "7"),
            r#"{"id":7,"command":"ping"}"#
        );
        assert_eq!(splice_id(" { } ", None, "7"), r#" {"id":7 } "#);
        // A slice from elsewhere is not trusted: the id is added instead.
        assert_eq!(splice_id(r#"{"a":1}"#, Some("1"), "7"), r#"{"id":7,"a":1}"#);
        let reply = r#"{"id":7,"result":{},"status":"success","type":"response"}"#;
        let at = serde_json::from_str::<IdAt<'_>>(reply).unwrap().id.map(RawValue::get);
        let client: Box<RawValue> = RawValue::from_string("\"abc\"".into()).unwrap();
        assert_eq!(
            restore_id(reply, at, Some(&client), true, false).unwrap(),
            r#"{"id":"abc","result":{},"status":"success","type":"response","warning":"load"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&restore_id(reply, at, None, false, false).unwrap()).unwrap();
        assert!(v.get("id").is_none());
    }
}
