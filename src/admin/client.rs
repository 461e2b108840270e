//! A minimal admin API client for the `gatehouse bans …` commands: one HTTP/1.1 request per connection,
//! over TCP or a unix socket.

use super::settings::{AdminListen, AdminToken};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// A full ban list of 100,000 entries is about 20 MB of JSON; this leaves room without being unbounded.
const REPLY_LIMIT: usize = 256 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not an admin address (expected http://IP:PORT, IP:PORT or unix:PATH)")]
    BadAddress(String),
    #[error("cannot connect to the admin API at {target}: {source}")]
    Connect {
        target: AdminListen,
        source: std::io::Error,
    },
    #[error("admin API at {target}: {reason}")]
    Http { target: AdminListen, reason: String },
    #[error("admin API at {target}: no answer within {limit:?}")]
    Timeout { target: AdminListen, limit: Duration },
    #[error("admin API answered with an unexpected body: {0}")]
    Body(#[source] serde_json::Error),
}

/// Parses `--admin`: `http://127.0.0.1:9180`, `127.0.0.1:9180`, `[::1]:9180` or `unix:/run/…/admin.sock`.
pub fn parse_target(s: &str) -> Result<AdminListen, ClientError> {
    if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err(ClientError::BadAddress(s.to_string()));
        }
        return Ok(AdminListen::Unix(PathBuf::from(p)));
    }
    let hostport = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    hostport
        .parse()
        .map(AdminListen::Tcp)
        .map_err(|_| ClientError::BadAddress(s.to_string()))
}

pub struct Reply {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl Reply {
    /// The server's `{"error": …}` message, or the status line when the body has none.
    pub fn error_message(&self) -> String {
        super::api::ErrorBody::deserialize(&self.body).map_or_else(|_| self.status.to_string(), |b| b.error)
    }

    /// The body read as one of the API's types (`super::api`).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        T::deserialize(&self.body).map_err(ClientError::Body)
    }
}

/// Sends one request and reads the JSON reply.
pub async fn request(
    target: &AdminListen,
    token: &AdminToken,
    method: Method,
    path_and_query: &str,
    body: Option<serde_json::Value>,
) -> Result<Reply, ClientError> {
    request_within(TIMEOUT, target, token, method, path_and_query, body).await
}

/// [`request`] with its own limit, for requests the server answers only when a long job is done (an
/// upgrade waits for the new process, up to the server's own `runtime.upgrade_timeout`).
pub async fn request_within(
    limit: Duration,
    target: &AdminListen,
    token: &AdminToken,
    method: Method,
    path_and_query: &str,
    body: Option<serde_json::Value>,
) -> Result<Reply, ClientError> {
    match tokio::time::timeout(limit, exchange(target, token, method, path_and_query, body)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            target: target.clone(),
            limit,
        }),
    }
}

async fn exchange(
    target: &AdminListen,
    token: &AdminToken,
    method: Method,
    path_and_query: &str,
    body: Option<serde_json::Value>,
) -> Result<Reply, ClientError> {
    let connect_err = |source| ClientError::Connect {
        target: target.clone(),
        source,
    };
    let http_err = |reason: String| ClientError::Http {
        target: target.clone(),
        reason,
    };
    let (host, io): (String, Box<dyn super::AsyncStream>) = match target {
        AdminListen::Tcp(a) => (
            a.to_string(),
            Box::new(tokio::net::TcpStream::connect(a).await.map_err(connect_err)?),
        ),
        AdminListen::Unix(p) => (
            "localhost".to_string(),
            Box::new(tokio::net::UnixStream::connect(p).await.map_err(connect_err)?),
        ),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| http_err(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let mut req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(HOST, host)
        .header(AUTHORIZATION, format!("Bearer {}", token.expose()));
    if !bytes.is_empty() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    let req = req.body(Full::new(bytes)).map_err(|e| http_err(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| http_err(e.to_string()))?;
    let status = resp.status();
    let data = Limited::new(resp.into_body(), REPLY_LIMIT)
        .collect()
        .await
        .map_err(|e| http_err(format!("reading the reply: {e}")))?
        .to_bytes();
    driver.abort();
    let body = if data.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&data)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&data).into_owned()))
    };
    Ok(Reply { status, body })
}
