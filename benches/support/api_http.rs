//! The node API front's rows: JSON-RPC over HTTP/1.1 keep-alive connections to a stub bitcoind, direct,
//! through the gateway's `bitcoind` profile, and through HAProxy in HTTP mode in front of the same stub;
//! requests/s and CPU seconds per 100k requests of the process in the middle.
//!
//! The stub answers from memory (a real node is far slower than either proxy and would hide them), and
//! each connection keeps one request in flight, as JSON-RPC client libraries do.

use super::{free_port, spawn_gateway, Gateway};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub(super) const CONNS: usize = 50;
const USER: &str = "bench";
/// `bench`'s rpcauth entry: salt `f00d`, HMAC-SHA256(key = "f00d", message = "wonderland").
const RPCAUTH: &str = "f00d$a9f3bf0bc92f82bedd4ece5ea48898c48216629383a097fa1c913ea8b26af042";
/// base64("bench:wonderland").
const BASIC: &str = "YmVuY2g6d29uZGVybGFuZA==";

/// The id in a request body (`"id":N,`), found by a cheap scan.
fn id_of(body: &[u8]) -> &[u8] {
    let start = body.windows(5).position(|w| w == b"\"id\":").map_or(0, |p| p + 5);
    let len = body[start..].iter().position(|&b| b == b',' || b == b'}').unwrap_or(0);
    &body[start..start + len]
}

/// Reads one HTTP message head and its Content-Length body into `body`; false at EOF.
pub(super) async fn read_message<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut String,
    body: &mut Vec<u8>,
) -> bool {
    let mut len = 0usize;
    loop {
        line.clear();
        match r.read_line(line).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    body.resize(len, 0);
    r.read_exact(body).await.is_ok()
}

/// A stub bitcoind: every POST gets `getblockcount`'s answer with the request's id.
async fn stub_node() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let (mut line, mut body, mut out) = (String::new(), Vec::new(), Vec::with_capacity(256));
                while read_message(&mut r, &mut line, &mut body).await {
                    let id = id_of(&body);
                    let len = br#"{"result":800000,"error":null,"id":}"#.len() + id.len();
                    out.clear();
                    out.extend_from_slice(
                        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
                            .as_bytes(),
                    );
                    out.extend_from_slice(br#"{"result":800000,"error":null,"id":"#);
                    out.extend_from_slice(id);
                    out.push(b'}');
                    if w.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One keep-alive connection: a request, its reply, again, until `until`; the replies counted.
async fn drive(addr: SocketAddr, until: Instant) -> u64 {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let (mut line, mut body) = (String::new(), Vec::new());
    let mut done = 0u64;
    while Instant::now() < until {
        let payload = format!(r#"{{"jsonrpc":"1.0","id":{done},"method":"getblockcount","params":[]}}"#);
        let req = format!(
            "POST / HTTP/1.1\r\nHost: node\r\nAuthorization: Basic {BASIC}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{payload}",
            payload.len()
        );
        w.write_all(req.as_bytes()).await.unwrap();
        assert!(read_message(&mut r, &mut line, &mut body).await, "connection closed");
        assert!(
            body.starts_with(b"{\"result\":800000"),
            "{}",
            String::from_utf8_lossy(&body)
        );
        done += 1;
    }
    done
}

/// Requests/s over [`CONNS`] connections for `secs`, and the requests made.
async fn load(addr: SocketAddr, secs: f64) -> (f64, u64) {
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNS {
        tasks.spawn(drive(addr, until));
    }
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        n += r.unwrap();
    }
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

pub(super) async fn wait_listening(addr: SocketAddr) -> bool {
    // Up to 20 s: a process started under valgrind takes seconds to reach its listen call.
    for _ in 0..800 {
        if TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// The gateway binary with one API front named `name` (one worker thread, cost limits off) whose
/// `[front.api]` table is `api`.
pub(super) async fn start_api_gateway(dir: &Path, name: &str, node: SocketAddr, api: &str) -> (Gateway, SocketAddr) {
    let port = free_port();
    let cfg = format!(
        r#"
[runtime]
worker_threads = 1
[log]
level = "warn"
[admission]
max_connections_per_ip = 100000
max_connections_per_group = 100000
connect_rate_per_ip = "100000/s"
connect_burst_per_ip = 100000
[cost]
soft_limit = 0
hard_limit = 0

[[front]]
name = "{name}"
kind = "api"
listen = ["127.0.0.1:{port}"]
transport = "tcp"
upstreams = ["{node}"]
[front.api]
{api}
"#
    );
    let path = dir.join(format!("bench-{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    let gw = spawn_gateway(&path);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_listening(addr).await, "gateway did not start listening");
    (gw, addr)
}

/// The gateway binary with one `bitcoind` API front.
async fn start_gateway(dir: &Path, node: SocketAddr) -> (Gateway, SocketAddr) {
    std::fs::write(dir.join("node.password"), "regtest\n").unwrap();
    let api = format!(
        "profile = \"bitcoind\"\nbackend_user = \"gatehouse\"\nbackend_password_file = \"node.password\"\n\
         [[front.api.users]]\nname = \"{USER}\"\nrpcauth = \"{RPCAUTH}\"\nmethods = [\"getblockcount\"]\n"
    );
    start_api_gateway(dir, "rpc", node, &api).await
}

/// HAProxy's binary, installed with apt-get when missing; Err says why there is none.
pub(super) fn haproxy_binary() -> Result<String, String> {
    let found = || {
        ["/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .map(str::to_string)
    };
    if let Some(p) = found() {
        return Ok(p);
    }
    eprintln!("bench: installing haproxy (apt-get) for the API front's anchor row");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "haproxy"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        install();
    }
    found().ok_or_else(|| "haproxy is not installed and `apt-get install haproxy` failed".to_string())
}

/// HAProxy in HTTP mode with one thread (as the gateway has one worker), keep-alive both ways.
pub(super) async fn start_haproxy(bin: &str, dir: &Path, node: SocketAddr) -> Result<(Gateway, SocketAddr), String> {
    let port = free_port();
    let cfg = format!(
        "global\n  nbthread 1\n  maxconn 2000\n\
         defaults\n  mode http\n  option http-keep-alive\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend api\n  bind 127.0.0.1:{port}\n  default_backend node\n\
         backend node\n  http-reuse always\n  server n1 {node}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = super::anchors::pinned(bin)
        .args(["-db", "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {bin}: {e}"))?;
    let hp = Gateway { child };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    if !wait_listening(addr).await {
        return Err("haproxy did not start listening".into());
    }
    Ok((hp, addr))
}

/// Measures the rows and prints their table.
pub async fn run(dir: &Path, secs: f64) {
    let node = stub_node().await;
    let (direct, _) = load(node, secs).await;
    let (gw, front) = start_gateway(dir, node).await;
    let cpu0 = gw.cpu_seconds();
    let (via_gw, n_gw) = load(front, secs).await;
    let cpu_gw = (gw.cpu_seconds() - cpu0) / n_gw as f64 * 100_000.0;
    drop(gw);
    let haproxy = match haproxy_binary() {
        Ok(bin) => match start_haproxy(&bin, dir, node).await {
            Ok((hp, addr)) => {
                let cpu0 = hp.cpu_seconds();
                let (rps, n) = load(addr, secs).await;
                Ok((rps, (hp.cpu_seconds() - cpu0) / n as f64 * 100_000.0))
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    println!("\n## Node API front (profile bitcoind)\n");
    println!("JSON-RPC getblockcount over HTTP/1.1 keep-alive, {CONNS} connections x 1 in flight, {secs}s per column,");
    println!("in front of a stub bitcoind answering from memory; the gateway checks each request's rpcauth user.\n");
    println!("| measure | direct to the stub | gateway, bitcoind profile | HAProxy 1 thread, HTTP mode |");
    println!("|---|---|---|---|");
    let (hp_rps, hp_cpu) = match &haproxy {
        Ok((rps, cpu)) => (format!("{rps:.0} ({:.2} x direct)", rps / direct), format!("{cpu:.3}")),
        Err(e) => (format!("skipped: {e}"), "–".to_string()),
    };
    println!(
        "| requests/s | {direct:.0} | {via_gw:.0} ({:.2} x direct) | {hp_rps} |",
        via_gw / direct
    );
    let ratio = match &haproxy {
        Ok((_, cpu)) if *cpu > 0.0 => format!(" ({:.2} x HAProxy)", cpu_gw / cpu),
        _ => String::new(),
    };
    println!("| CPU s per 100k requests (the process in the middle) | – | {cpu_gw:.3}{ratio} | {hp_cpu} |");
}
