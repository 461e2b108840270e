//! Stub backends on loopback, as tokio tasks on the test's runtime (and one on std threads, for tests that
//! have no runtime): echo, recording, a null-answering Electrum server, a silent server, a notification
//! flood, an Electrum server of modelled capacity (one request at a time, a service time per method).

use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Listens on 127.0.0.1:0 and runs `handle` on every accepted connection as its own task, until the
/// runtime ends.
pub async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(handle(s));
        }
    });
    addr
}

/// A backend that echoes every byte back (cheap enough for a thousand sessions).
pub async fn echo_backend() -> SocketAddr {
    serve(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// A backend that accepts, reads everything and never answers (a node that hangs).
pub async fn silent_backend() -> SocketAddr {
    serve(|mut s| async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
    .await
}

/// A blocking echo server on std threads (one a connection), for tests without a runtime; runs until the
/// test process ends.
pub fn echo_backend_thread() -> SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

/// A backend that records the first `n` bytes of every connection (e.g. a PROXY header) on a channel,
/// then echoes.
pub async fn recording_backend(n: usize) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = serve(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut head = vec![0u8; n];
            if s.read_exact(&mut head).await.is_err() {
                return;
            }
            let _ = tx.send(head);
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    })
    .await;
    (addr, rx)
}

/// An Electrum backend that answers every request (and every request of a batch) with `"result":null` at
/// once, except the methods in `silent`, which it never answers.
pub async fn stub_backend(silent: &'static [&'static str]) -> SocketAddr {
    serve(move |s| async move {
        let _ = s.set_nodelay(true);
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let answer = |req: &Value| -> Option<String> {
                let id = req.get("id")?;
                let method = req.get("method").and_then(Value::as_str).unwrap_or("");
                if silent.contains(&method) {
                    return None;
                }
                Some(format!(r#"{{"jsonrpc":"2.0","id":{id},"result":null}}"#))
            };
            let out = match serde_json::from_str::<Value>(&line) {
                Ok(Value::Array(items)) => {
                    let replies: Vec<String> = items.iter().filter_map(answer).collect();
                    (!replies.is_empty()).then(|| format!("[{}]", replies.join(",")))
                }
                Ok(v) => answer(&v),
                Err(_) => None,
            };
            if let Some(mut out) = out {
                out.push('\n');
                if w.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum FloodEnd {
    /// A write failed: the gateway closed (or reset) the connection.
    WriteError,
    /// A write made no progress for 3 s: the gateway stopped reading but kept the connection.
    Stuck,
    /// The byte budget was used up without the gateway objecting.
    Budget,
    /// (wait mode) The gateway closed the connection after the flood.
    Eof,
    /// (wait mode) The connection was still open 30 s after the flood.
    StillOpen,
}

#[derive(Debug)]
pub struct FloodReport {
    pub written: u64,
    pub end: FloodEnd,
    /// From the subscribe's reply to the end.
    pub elapsed: Duration,
}

/// A headers notification of about 1 KiB.
pub fn header_notification(height: u64) -> String {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"blockchain.headers.subscribe\",\"params\":[{{\"height\":{height},\"hex\":\"{}\"}}]}}\n",
        "00".repeat(470)
    )
}

/// A backend that answers server.version, and after blockchain.headers.subscribe sends headers
/// notifications as fast as it can, up to `budget` bytes. With `wait`, it then keeps the connection open
/// and reports when the gateway closes it; otherwise it reports how the flood ended.
pub async fn flood_backend(budget: u64, wait: bool) -> (SocketAddr, oneshot::Receiver<FloodReport>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let Ok((s, _)) = l.accept().await else { return };
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let req: Value = serde_json::from_str(&line).unwrap();
            match req["method"].as_str() {
                Some("server.version") => {
                    let reply = json!({"jsonrpc": "2.0", "id": req["id"], "result": ["Flood 1.0", "1.4"]});
                    w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                }
                Some("blockchain.headers.subscribe") => {
                    let reply =
                        json!({"jsonrpc": "2.0", "id": req["id"], "result": {"height": 0, "hex": "00".repeat(80)}});
                    w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                    break;
                }
                _ => {}
            }
        }
        let start = Instant::now();
        let mut written = 0u64;
        let mut height = 1u64;
        let mut end = FloodEnd::Budget;
        while written < budget {
            // 64 notifications per write: one line each, about 64 KiB.
            let mut chunk = String::with_capacity(64 * 1024);
            for _ in 0..64 {
                chunk += &header_notification(height);
                height += 1;
            }
            match tokio::time::timeout(Duration::from_secs(3), w.write_all(chunk.as_bytes())).await {
                Ok(Ok(())) => written += chunk.len() as u64,
                Ok(Err(_)) => {
                    end = FloodEnd::WriteError;
                    break;
                }
                Err(_) => {
                    end = FloodEnd::Stuck;
                    break;
                }
            }
        }
        if wait && end == FloodEnd::Budget {
            let mut buf = [0u8; 1024];
            end = match tokio::time::timeout(Duration::from_secs(30), r.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => FloodEnd::Eof,
                Ok(Ok(_)) => FloodEnd::StillOpen,
                Err(_) => FloodEnd::StillOpen,
            };
        }
        let _ = tx.send(FloodReport {
            written,
            end,
            elapsed: start.elapsed(),
        });
    });
    (addr, rx)
}

/// A blocking Electrum backend that answers every request with `server.version`'s shape, naming itself
/// `software`; runs until the test process ends.
pub fn version_backend_thread(software: &'static str) -> SocketAddr {
    use std::io::{BufRead, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(s) = conn else { continue };
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                for line in std::io::BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    let Ok(req) = serde_json::from_str::<serde_json::Value>(&line) else {
                        break;
                    };
                    let reply = serde_json::json!({"jsonrpc": "2.0", "id": req["id"], "result": [software, "1.4"]});
                    if writeln!(w, "{reply}").is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// One request a [`modelled_backend`] served: its method and params as sent, and when it was served.
#[derive(Debug, Clone)]
pub struct Served {
    pub method: String,
    pub params: Value,
    pub done: Instant,
}

/// A backend whose capacity is modelled: every connection's requests go to one server that serves one
/// request at a time, in the order they arrived, each taking its method's service time (times `scale`
/// per mille, which a test may change while it runs), and records what it served in that order. It
/// answers `server.version` with a version and everything else with `"result":null`.
pub struct Modelled {
    pub addr: SocketAddr,
    pub served: std::sync::Arc<std::sync::Mutex<Vec<Served>>>,
    /// Requests received and not yet served (queued at the server, or in service).
    pub pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Service times are multiplied by this per mille (1000 = as given).
    pub scale: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Modelled {
    /// What has been served so far.
    pub fn served(&self) -> Vec<Served> {
        self.served.lock().unwrap().clone()
    }

    /// Requests waiting or in service at the backend now.
    pub fn pending(&self) -> usize {
        self.pending.load(std::sync::atomic::Ordering::SeqCst)
    }
}

pub async fn modelled_backend(service: fn(&str) -> Duration) -> Modelled {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    type Job = (Value, tokio::sync::mpsc::UnboundedSender<String>);
    let (jobs_tx, mut jobs) = tokio::sync::mpsc::unbounded_channel::<Job>();
    let served = Arc::new(Mutex::new(Vec::new()));
    let pending = Arc::new(AtomicUsize::new(0));
    let scale = Arc::new(AtomicU64::new(1000));
    {
        let (served, pending, scale) = (served.clone(), pending.clone(), scale.clone());
        tokio::spawn(async move {
            while let Some((req, out)) = jobs.recv().await {
                let method = req["method"].as_str().unwrap_or("").to_string();
                let took = service(&method).mul_f64(scale.load(Ordering::SeqCst) as f64 / 1000.0);
                if !took.is_zero() {
                    tokio::time::sleep(took).await;
                }
                let result = if method == "server.version" {
                    json!(["Modelled 1.0", "1.4"])
                } else {
                    Value::Null
                };
                served.lock().unwrap().push(Served {
                    method,
                    params: req["params"].clone(),
                    done: Instant::now(),
                });
                pending.fetch_sub(1, Ordering::SeqCst);
                if let Some(id) = req.get("id") {
                    let _ = out.send(json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string());
                }
            }
        });
    }
    let pending2 = pending.clone();
    let addr = serve(move |s| {
        let jobs_tx = jobs_tx.clone();
        let pending = pending2.clone();
        async move {
            let _ = s.set_nodelay(true);
            let (r, mut w) = s.into_split();
            let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            tokio::spawn(async move {
                while let Some(mut line) = out_rx.recv().await {
                    line.push('\n');
                    if w.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(req) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                pending.fetch_add(1, Ordering::SeqCst);
                if jobs_tx.send((req, out_tx.clone())).is_err() {
                    return;
                }
            }
        }
    })
    .await;
    Modelled {
        addr,
        served,
        pending,
        scale,
    }
}

/// What a [`versioned_backend`] was sent: the connection (counted from 1 in accept order), the method and
/// the params.
pub type Seen = (usize, String, Value);

/// An Electrum backend that negotiates `server.version` as ElectrumX does (the highest version up to
/// `best` within the range asked, else error 1) and answers everything else with `"result":null`,
/// recording every request with its connection. `refuse` makes it refuse every version from then on;
/// a `get_history` of the scripthash "hold" is answered only once `release` is notified.
pub struct Versioned {
    pub addr: SocketAddr,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub refuse: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub release: std::sync::Arc<tokio::sync::Notify>,
}

impl Versioned {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The `server.version` requests seen so far.
    pub fn versions(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.1 == "server.version").collect()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

pub async fn versioned_backend(software: &'static str, best: &'static str) -> Versioned {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let refuse = Arc::new(AtomicBool::new(false));
    let release = Arc::new(tokio::sync::Notify::new());
    let (s2, c2, r2, h2) = (seen.clone(), connections.clone(), refuse.clone(), release.clone());
    let addr = serve(move |s| {
        let (seen, refuse, release) = (s2.clone(), r2.clone(), h2.clone());
        let conn = c2.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let _ = s.set_nodelay(true);
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(req) = serde_json::from_str::<Value>(&line) else {
                    return;
                };
                let method = req["method"].as_str().unwrap_or("").to_string();
                seen.lock().unwrap().push((conn, method.clone(), req["params"].clone()));
                let outcome = match method.as_str() {
                    "server.version" => {
                        let range = &req["params"][1];
                        let (lo, hi) = match range {
                            Value::Array(r) => (r[0].as_str().unwrap_or(""), r[1].as_str().unwrap_or("")),
                            v => (v.as_str().unwrap_or(""), v.as_str().unwrap_or("")),
                        };
                        let v = if hi < best { hi } else { best };
                        if refuse.load(Ordering::SeqCst) || v < lo {
                            Err(json!({"code": 1, "message": "unsupported protocol version"}))
                        } else {
                            Ok(json!([software, v]))
                        }
                    }
                    "blockchain.scripthash.get_history" if req["params"][0] == "hold" => {
                        release.notified().await;
                        Ok(json!([]))
                    }
                    _ => Ok(Value::Null),
                };
                let reply = match outcome {
                    Ok(result) => json!({"jsonrpc": "2.0", "id": req["id"], "result": result}),
                    Err(error) => json!({"jsonrpc": "2.0", "id": req["id"], "error": error}),
                };
                if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    Versioned {
        addr,
        seen,
        connections,
        refuse,
        release,
    }
}
