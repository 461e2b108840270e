//! Clients of the gateway: a line-oriented Electrum client that keeps the cost model of its session,
//! hand-written HTTP/1.1 exchanges with the admin API (async, and blocking for the tests of the binary),
//! and reading one sample out of its metrics.

use super::cost::{bytes, CONNECTION_COST, SCRIPTHASH, VERSION_COST};
use super::net::connect_from;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// A line-oriented Electrum client bound to a chosen source address.
pub struct Client {
    pub r: BufReader<OwnedReadHalf>,
    pub w: OwnedWriteHalf,
    pub next_id: u64,
    /// When the connection was made (the gateway opens the session's account at that tokio instant).
    pub opened: Instant,
    /// Everything this session has been charged so far, by the cost model of the gateway, before decay.
    pub charged: f64,
}

/// One reply, with when it arrived.
pub struct Reply {
    pub v: Value,
    pub at: Instant,
}

impl Reply {
    pub fn id(&self) -> u64 {
        self.v["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("reply without a numeric id: {}", self.v))
    }

    pub fn error_code(&self) -> Option<i64> {
        self.v.get("error").and_then(|e| e["code"].as_i64())
    }
}

impl Client {
    pub async fn connect(from: &str, to: SocketAddr) -> Client {
        let s = connect_from(from, to).await.unwrap();
        let (r, w) = s.into_split();
        Client {
            r: BufReader::new(r),
            w,
            next_id: 1,
            opened: Instant::now(),
            charged: CONNECTION_COST,
        }
    }

    /// Connects and negotiates (server.version is charged 0.5 plus bytes).
    pub async fn open(from: &str, to: SocketAddr) -> Client {
        let mut c = Client::connect(from, to).await;
        let r = c.call("server.version", r#"["test", "1.4"]"#, VERSION_COST).await;
        assert!(r.v.get("error").is_none(), "server.version failed: {}", r.v);
        c
    }

    /// Sends one request line and charges its method cost and bytes to the model; returns its id.
    pub async fn send(&mut self, method: &str, params: &str, method_cost: f64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#);
        self.charged += method_cost + bytes(line.len() + 1);
        self.w.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        id
    }

    /// The next reply line, or None once the gateway has closed the connection. The reply's bytes are
    /// charged to the model (the gateway passes the backend's line through unchanged).
    pub async fn recv(&mut self) -> Option<Reply> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(120), self.r.read_line(&mut line))
            .await
            .expect("no reply within 120 s")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        let at = Instant::now();
        let v: Value = serde_json::from_str(line.trim_end()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        if v.get("result").is_some() {
            self.charged += bytes(line.trim_end().len() + 1);
        }
        Some(Reply { v, at })
    }

    pub async fn call(&mut self, method: &str, params: &str, method_cost: f64) -> Reply {
        let id = self.send(method, params, method_cost).await;
        let r = self.recv().await.expect("connection closed instead of a reply");
        assert_eq!(r.id(), id, "reply to another request: {}", r.v);
        r
    }

    /// A request that costs `cost` plus bytes (blockchain.scripthash.get_balance, priced by the test's
    /// `[cost.methods]`). Returns the reply and its latency.
    pub async fn balance(&mut self, cost: f64) -> (Reply, Duration) {
        let t = Instant::now();
        let r = self
            .call("blockchain.scripthash.get_balance", &format!("[{SCRIPTHASH}]"), cost)
            .await;
        assert!(r.v.get("error").is_none(), "get_balance failed: {}", r.v);
        let lat = r.at - t;
        (r, lat)
    }

    /// After a -101: the session sends nothing more and closes. Waits past the 600 s idle timeout, because
    /// the gateway currently closes only then (see `hard_limit_closes_at_once`).
    pub async fn closed_after_101(&mut self) {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(601), self.r.read_line(&mut line))
            .await
            .expect("connection still open 601 s after -101")
            .unwrap_or(0);
        assert_eq!(n, 0, "data after -101: {line:?}");
    }

    /// The model's effective cost of a session alone in its group, now.
    pub fn modelled(&self) -> f64 {
        self.charged - Instant::now().duration_since(self.opened).as_secs_f64()
    }
}

/// One HTTP/1.1 exchange written by hand, so the tests depend on nothing but the wire format: (status,
/// header lines, body). `auth` is the whole `Authorization` value.
pub async fn http_exchange(
    admin: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let body = body.unwrap_or("");
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("admin API answered within 10s")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {text:?}"));
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// [`http_exchange`] with the body as JSON (`Null` when empty).
pub async fn http(admin: SocketAddr, method: &str, path: &str, auth: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let (status, _, body) = http_exchange(admin, method, path, auth, body).await;
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
    };
    (status, v)
}

/// The body of `GET path` on an admin API, with `token`.
pub async fn admin_get(admin: SocketAddr, token: &str, path: &str) -> String {
    let auth = format!("Bearer {token}");
    http_exchange(admin, "GET", path, Some(&auth), None).await.2
}

/// The blocking form of [`http_exchange`], for tests without a runtime (or inside `block_in_place`): one
/// exchange with `Authorization: Bearer TOKEN` when `token` is given; (status, body).
pub fn http_blocking(admin: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2)).expect("connect to admin API");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("admin API reply");
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {out:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The value of one sample line (`name{labels} value`) in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}
