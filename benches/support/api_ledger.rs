//! The ledger profile's rows: a stoxumd / rippled-style API port answering `ping` from memory, over
//! JSON-RPC (HTTP/1.1 keep-alive) and over WebSocket, direct, through the gateway's `ledger` profile (the
//! command judged against the node's table, its fee charged, a node WebSocket per client session) and
//! through HAProxy in HTTP mode; requests/s and CPU seconds per 100k requests of the process in the middle.

use super::api_http::{haproxy_binary, read_message, start_api_gateway, start_haproxy, CONNS};
use super::Gateway;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const RPC_REPLY: &[u8] = br#"{"result":{"status":"success"}}"#;

/// The id in a WebSocket request (`"id":N,`).
fn ws_id(text: &str) -> &str {
    let start = text.find("\"id\":").map_or(0, |p| p + 5);
    let len = text[start..].find([',', '}']).unwrap_or(0);
    &text[start..start + len]
}

/// A stub node: JSON-RPC POSTs get `ping`'s answer; WebSocket messages get it with their id.
async fn stub_node() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut head = [0u8; 512];
                let n = s.peek(&mut head).await.unwrap_or(0);
                if String::from_utf8_lossy(&head[..n])
                    .to_ascii_lowercase()
                    .contains("upgrade: websocket")
                {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                        return;
                    };
                    while let Some(Ok(Message::Text(t))) = ws.next().await {
                        let reply = format!(
                            r#"{{"id":{},"result":{{}},"status":"success","type":"response"}}"#,
                            ws_id(&t)
                        );
                        if ws.send(Message::text(reply)).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let (mut line, mut body, mut out) = (String::new(), Vec::new(), Vec::with_capacity(256));
                while read_message(&mut r, &mut line, &mut body).await {
                    out.clear();
                    out.extend_from_slice(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                            RPC_REPLY.len()
                        )
                        .as_bytes(),
                    );
                    out.extend_from_slice(RPC_REPLY);
                    if w.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One keep-alive JSON-RPC connection: `ping`, its reply, again, until `until`.
async fn drive_rpc(addr: SocketAddr, until: Instant) -> u64 {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let (mut line, mut body) = (String::new(), Vec::new());
    let payload = r#"{"method":"ping","params":[{}]}"#;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    let mut done = 0u64;
    while Instant::now() < until {
        w.write_all(req.as_bytes()).await.unwrap();
        assert!(read_message(&mut r, &mut line, &mut body).await, "connection closed");
        assert!(body.starts_with(b"{\"result\""), "{}", String::from_utf8_lossy(&body));
        done += 1;
    }
    done
}

/// One WebSocket session: `ping`, its reply, again, until `until`.
async fn drive_ws(addr: SocketAddr, until: Instant) -> u64 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
        .await
        .unwrap();
    let mut done = 0u64;
    while Instant::now() < until {
        ws.send(Message::text(format!(r#"{{"id":{done},"command":"ping"}}"#)))
            .await
            .unwrap();
        match ws.next().await {
            Some(Ok(Message::Text(t))) => assert!(t.contains("\"success\""), "{t}"),
            other => panic!("no reply: {other:?}"),
        }
        done += 1;
    }
    done
}

/// Requests/s over [`CONNS`] connections for `secs`, and the requests made.
async fn load(addr: SocketAddr, secs: f64, ws: bool) -> (f64, u64) {
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNS {
        if ws {
            tasks.spawn(drive_ws(addr, until));
        } else {
            tasks.spawn(drive_rpc(addr, until));
        }
    }
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        n += r.unwrap();
    }
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

/// The gateway binary with one `ledger` API front (fees that never warn or drop: cost limits are off).
async fn start_gateway(dir: &Path, node: SocketAddr) -> (Gateway, SocketAddr) {
    start_api_gateway(dir, "ledger", node, "profile = \"ledger\"").await
}

/// One transport's row pair: (direct, gateway, HAProxy) requests/s and CPU per 100k requests.
async fn rows(dir: &Path, node: SocketAddr, secs: f64, ws: bool) -> (f64, f64, f64, Result<(f64, f64), String>) {
    let (direct, _) = load(node, secs, ws).await;
    let (gw, front) = start_gateway(dir, node).await;
    let cpu0 = gw.cpu_seconds();
    let (via_gw, n_gw) = load(front, secs, ws).await;
    let cpu_gw = (gw.cpu_seconds() - cpu0) / n_gw as f64 * 100_000.0;
    drop(gw);
    let haproxy = match haproxy_binary() {
        Ok(bin) => match start_haproxy(&bin, dir, node).await {
            Ok((hp, addr)) => {
                let cpu0 = hp.cpu_seconds();
                let (rps, n) = load(addr, secs, ws).await;
                Ok((rps, (hp.cpu_seconds() - cpu0) / n as f64 * 100_000.0))
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    (direct, via_gw, cpu_gw, haproxy)
}

/// Measures the rows and prints their table.
pub async fn run(dir: &Path, secs: f64) {
    let node = stub_node().await;
    println!("\n## Node API front (profile ledger)\n");
    println!(
        "`ping` over JSON-RPC (HTTP/1.1 keep-alive) and over WebSocket, {CONNS} connections x 1 in flight, {secs}s per"
    );
    println!("column, in front of a stub node answering from memory.\n");
    println!("| measure | direct to the stub | gateway, ledger profile | HAProxy 1 thread, HTTP mode |");
    println!("|---|---|---|---|");
    for (ws, what) in [(false, "JSON-RPC"), (true, "WebSocket")] {
        let (direct, via_gw, cpu_gw, haproxy) = rows(dir, node, secs, ws).await;
        let (hp_rps, hp_cpu) = match &haproxy {
            Ok((rps, cpu)) => (format!("{rps:.0} ({:.2} x direct)", rps / direct), format!("{cpu:.3}")),
            Err(e) => (format!("skipped: {e}"), "–".to_string()),
        };
        let ratio = match &haproxy {
            Ok((_, cpu)) if *cpu > 0.0 => format!(" ({:.2} x HAProxy)", cpu_gw / cpu),
            _ => String::new(),
        };
        println!(
            "| {what} requests/s | {direct:.0} | {via_gw:.0} ({:.2} x direct) | {hp_rps} |",
            via_gw / direct
        );
        println!("| {what} CPU s per 100k requests (the process in the middle) | – | {cpu_gw:.3}{ratio} | {hp_cpu} |");
    }
}
