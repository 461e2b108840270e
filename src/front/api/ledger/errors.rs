//! The node's own error shapes, for the answers the gateway gives in its place. Real clients (xrpl.js,
//! xrpl-py) read these exactly as they read the node's.
//!
//! Over WebSocket an error is the response object itself, flattened: `error`, `error_code`,
//! `error_message`, the echoed `request`, `"status":"error"`, `"type":"response"` and the client's `id`.
//! Over JSON-RPC it sits in `result` with `"status":"error"` and the request (its `params[0]` with the
//! `command`), under HTTP 200. Keys come out sorted, as the node's JSON writer orders them. Secrets in an
//! echoed request are masked as the node masks them.

use super::commands::Fields;
use serde_json::value::RawValue;

/// Node error codes the gateway answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeError {
    /// An admin command from a public client.
    NoPermission,
    /// A command the front does not know.
    UnknownCommand,
    /// A subscription past the session's or the group's cap.
    SlowDown,
    /// The node could not be reached or did not answer.
    Internal,
}

impl NodeError {
    pub fn token(self) -> &'static str {
        match self {
            NodeError::NoPermission => "noPermission",
            NodeError::UnknownCommand => "unknownCmd",
            NodeError::SlowDown => "slowDown",
            NodeError::Internal => "internal",
        }
    }

    pub fn code(self) -> i32 {
        match self {
            NodeError::NoPermission => 6,
            NodeError::SlowDown => 10,
            NodeError::UnknownCommand => 32,
            NodeError::Internal => 73,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            NodeError::NoPermission => "You don't have permission for this command.",
            NodeError::UnknownCommand => "Unknown method.",
            NodeError::SlowDown => "You are placing too much load on the server.",
            NodeError::Internal => "Internal error.",
        }
    }
}

/// The WebSocket close code and reason the node sends a client past its drop threshold.
pub const DROP_CLOSE_REASON: &str = "threshold exceeded";
/// HTTP status line text and body the node answers a JSON-RPC client past its drop threshold with.
pub const OVERLOADED: &str = "Server is overloaded";

/// Request fields the node never echoes back.
const MASKED: [&str; 4] = ["passphrase", "secret", "seed", "seed_hex"];

fn masked(request: &Fields) -> String {
    let mut out = String::with_capacity(64);
    out.push('{');
    for (i, (k, v)) in request.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::from(k.as_str()).to_string());
        out.push(':');
        if MASKED.contains(&k.as_str()) {
            out.push_str("\"<masked>\"");
        } else {
            out.push_str(v.get());
        }
    }
    out.push('}');
    out
}

fn head(e: NodeError) -> String {
    format!(
        r#""error":"{}","error_code":{},"error_message":{}"#,
        e.token(),
        e.code(),
        serde_json::Value::from(e.message())
    )
}

const WARNING: &str = r#","warning":"load""#;

/// A WebSocket error response to `request` (the client's message).
pub fn ws_error(e: NodeError, request: &Fields, warning: bool) -> String {
    let id = request
        .get("id")
        .map(|v| format!(r#","id":{}"#, v.get()))
        .unwrap_or_default();
    format!(
        r#"{{{}{id},"request":{},"status":"error","type":"response"{}}}"#,
        head(e),
        masked(request),
        if warning { WARNING } else { "" }
    )
}

/// The node's answer to a WebSocket message without `command`.
pub fn ws_missing_command(request: &Fields) -> String {
    let id = request
        .get("id")
        .map(|v| format!(r#","id":{}"#, v.get()))
        .unwrap_or_default();
    format!(
        r#"{{"error":"missingCommand"{id},"request":{},"status":"error","type":"response"}}"#,
        masked(request)
    )
}

/// The node's answer to a WebSocket message that is not a JSON object.
pub fn ws_json_invalid(text: &str) -> String {
    format!(
        r#"{{"error":"jsonInvalid","type":"error","value":{}}}"#,
        serde_json::Value::from(text)
    )
}

/// A JSON-RPC error reply to `method` with `params` (the request's `params[0]`), and the client's `id`
/// when the params carried one.
pub fn rpc_error(e: NodeError, method: &str, params: &Fields, warning: bool) -> String {
    let mut request = params.clone();
    if let Ok(v) = RawValue::from_string(serde_json::Value::from(method).to_string()) {
        request.insert("command".to_string(), v);
    }
    let id = params
        .get("id")
        .map(|v| format!(r#","id":{}"#, v.get()))
        .unwrap_or_default();
    format!(
        r#"{{"result":{{{},"request":{},"status":"error"{}}}{id}}}"#,
        head(e),
        masked(&request),
        if warning { WARNING } else { "" }
    ) + "\n"
}

/// `object` (a JSON object's text) with `"warning":"load"` added, unless the node already put it there.
/// Only the outer braces are touched; the rest is passed on as the node wrote it.
pub fn with_warning(object: &str) -> Option<String> {
    let t = object.trim_end();
    if !t.starts_with('{') || !t.ends_with('}') {
        return None;
    }
    if t.contains(r#""warning":"load""#) {
        return Some(t.to_string());
    }
    let inner = t[1..t.len() - 1].trim();
    Some(if inner.is_empty() {
        r#"{"warning":"load"}"#.to_string()
    } else {
        format!("{}{WARNING}}}", &t[..t.len() - 1])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Fields {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn ws_errors_are_the_node_shape_with_secrets_masked() {
        let r = fields(r#"{"id":7,"command":"wallet_propose","passphrase":"hunter2"}"#);
        let v: serde_json::Value = serde_json::from_str(&ws_error(NodeError::NoPermission, &r, false)).unwrap();
        assert_eq!(v["error"], "noPermission");
        assert_eq!(v["error_code"], 6);
        assert_eq!(v["id"], 7);
        assert_eq!(v["status"], "error");
        assert_eq!(v["type"], "response");
        assert_eq!(v["request"]["passphrase"], "<masked>");
        assert_eq!(v["request"]["command"], "wallet_propose");
        assert!(v.get("warning").is_none());
        let v: serde_json::Value = serde_json::from_str(&ws_error(NodeError::UnknownCommand, &r, true)).unwrap();
        assert_eq!(v["warning"], "load");
        assert_eq!(v["error_code"], 32);
    }

    #[test]
    fn rpc_errors_sit_in_result() {
        let p = fields(r#"{"seed":"s"}"#);
        let v: serde_json::Value =
            serde_json::from_str(&rpc_error(NodeError::NoPermission, "stop", &p, false)).unwrap();
        assert_eq!(v["result"]["error"], "noPermission");
        assert_eq!(v["result"]["status"], "error");
        assert_eq!(v["result"]["request"]["command"], "stop");
        assert_eq!(v["result"]["request"]["seed"], "<masked>");
    }

    #[test]
    fn warning_is_added_once() {
        assert_eq!(with_warning(r#"{"a":1}"#).unwrap(), r#"{"a":1,"warning":"load"}"#);
        assert_eq!(with_warning("{ }").unwrap(), r#"{"warning":"load"}"#);
        assert_eq!(with_warning(r#"{"warning":"load"}"#).unwrap(), r#"{"warning":"load"}"#);
        assert!(with_warning("[1]").is_none());
    }
}
