//! Gateway benchmark: `cargo bench --bench gateway` (add `-- --quick` for a short run).
//!
//! Runs the real `gatehouse` binary (one worker thread) in front of a fast stub Electrum backend, and a
//! load generator in this process, all on loopback. Everything is measured in one run and reported as
//! ratios against the direct path, so the figures compare on any machine.

use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

#[path = "support/anchors.rs"]
mod anchors;
#[path = "support/api_http.rs"]
mod api_http;
#[path = "support/api_ledger.rs"]
mod api_ledger;
#[path = "support/electrumx.rs"]
mod electrumx;
#[path = "support/flood.rs"]
mod flood;
#[path = "support/instructions.rs"]
mod instructions;
#[path = "support/latency.rs"]
mod latency;
#[path = "support/saturation.rs"]
mod saturation;
#[path = "support/scale.rs"]
mod scale;

const CONNS: usize = 50;
const IN_FLIGHT: usize = 8;
const VERSION: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"server.version\",\"params\":[\"bench\",\"1.4\"]}\n";
/// The wallet request mix: what a wallet sends while syncing and idling.
const MIX: [&[u8]; 8] = [
    b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"blockchain.scripthash.get_balance\",\"params\":[\"8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161\"]}\n",
    b"{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"blockchain.scripthash.get_history\",\"params\":[\"8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161\"]}\n",
    b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"blockchain.scripthash.listunspent\",\"params\":[\"8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161\"]}\n",
    b"{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"blockchain.scripthash.subscribe\",\"params\":[\"8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161\"]}\n",
    b"{\"jsonrpc\":\"2.0\",\"id\":11,\"method\":\"blockchain.transaction.get\",\"params\":[\"f4184fc596403b9d638783cf57adfe4c75c605f6356fbc91338530e9831e9e16\"]}\n",
    b"{\"jsonrpc\":\"2.0\",\"id\":12,\"method\":\"blockchain.transaction.get_merkle\",\"params\":[\"f4184fc596403b9d638783cf57adfe4c75c605f6356fbc91338530e9831e9e16\",170]}\n",
    b"{\"jsonrpc\":\"2.0\",\"id\":13,\"method\":\"blockchain.headers.subscribe\",\"params\":[]}\n",
    b"{\"jsonrpc\":\"2.0\",\"id\":14,\"method\":\"blockchain.estimatefee\",\"params\":[2]}\n",
];
const REPLY_HEAD: &[u8] = b"{\"jsonrpc\":\"2.0\",\"result\":{\"confirmed\":150000,\"unconfirmed\":0},\"id\":";

/// The id in a request line of the mix (`"id":N,`), found by a cheap scan.
fn id_of(line: &[u8]) -> &[u8] {
    let start = line.windows(5).position(|w| w == b"\"id\":").map_or(0, |p| p + 5);
    let len = line[start..].iter().position(|&b| b == b',').unwrap_or(0);
    &line[start..start + len]
}

struct Gateway {
    child: Child,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds consumed so far.
    fn cpu_seconds(&self) -> f64 {
        let (user, system) = self.cpu_split();
        user + system
    }

    /// User and system (kernel) CPU seconds consumed so far.
    fn cpu_split(&self) -> (f64, f64) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th overall.
        let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no memory-safety preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (ticks(11) / hz, ticks(12) / hz)
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only touch the struct on this stack frame.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A stub Electrum backend that answers every line with a fixed reply: as cheap as a backend can be, so
/// the benchmark measures the gateway.
async fn stub_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let mut line = Vec::with_capacity(256);
                let mut out = Vec::with_capacity(4096);
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            out.extend_from_slice(REPLY_HEAD);
                            out.extend_from_slice(id_of(&line));
                            out.extend_from_slice(b"}\n");
                        }
                    }
                    // Answer everything already buffered in one write, as a real server's writer would.
                    if r.buffer().is_empty() {
                        if w.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                    }
                }
            });
        }
    });
    addr
}

/// The start of every bench gateway's config: one worker thread, a quick drain, and admission caps and
/// connect rates lifted out of the load generator's way (the rows measure the gateway's work, not its caps).
fn open_gates(log_level: &str, max_open_files: u64) -> String {
    format!(
        r#"
[runtime]
worker_threads = 1
max_open_files = {max_open_files}
drain_deadline = "1s"
[log]
level = "{log_level}"
[admission]
max_connections = 10000000
max_connections_per_ip = 10000000
max_connections_per_group = 10000000
connect_rate_per_ip = "10000000/s"
connect_burst_per_ip = 10000000
"#
    )
}

fn write_config(dir: &Path, backend: SocketAddr, electrum_port: u16, relay_port: u16) -> String {
    // One certificate per run, so clients built for the first gateway trust the later ones.
    if !dir.join("bench.der").exists() {
        // The demo's certificate maker: ECDSA P-256 for localhost, written as demo.crt / demo.key.
        let der = gatehouse::demo::self_signed(dir).unwrap();
        std::fs::write(dir.join("bench.der"), der).unwrap();
    }
    let head = open_gates("warn", 200_000);
    format!(
        r#"{head}
[cost]
# The benchmark measures the gateway's work, not its throttle.
soft_limit = 0
hard_limit = 0

[[front]]
name = "electrum"
kind = "electrum"
listen = ["127.0.0.1:{electrum_port}"]
transport = "tls"
upstreams = ["{backend}"]
[front.tls]
cert = "demo.crt"
key = "demo.key"
[front.electrum]
max_subscriptions = 10000000

[[front]]
name = "relay"
kind = "peer"
listen = ["127.0.0.1:{relay_port}"]
transport = "tls"
upstreams = ["{backend}"]
[front.tls]
cert = "demo.crt"
key = "demo.key"
"#
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The gateway binary the rows measure, as an operator's `cargo build --release` makes it. The one cargo
/// builds for this bench carries the dev-dependencies' features: tokio's `test-util` routes every time
/// read through a mockable clock behind a lock, about 4 % of a request's user-space instructions. So the
/// first call builds the release binary (a no-op when it is current; the first time it compiles tokio and
/// what depends on it once more) and keeps it under a name of its own; `GATEHOUSE_BENCH_BIN` names another
/// binary to measure instead. If the build fails, the bench's own binary is used, and the bench says so.
fn gateway_bin() -> std::path::PathBuf {
    GATEWAY_BIN
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("GATEHOUSE_BENCH_BIN").filter(|p| !p.is_empty()) {
                return p.into();
            }
            match release_binary() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("bench: measuring the bench's own build of the gateway (tokio test-util on): {e}");
                    env!("CARGO_BIN_EXE_gatehouse").into()
                }
            }
        })
        .clone()
}

/// Builds the release binary with cargo and keeps it under a name of its own, so another build cannot swap
/// it mid-run.
fn release_binary() -> Result<std::path::PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("bench: building the release binary the rows measure (cargo build --release)");
    let out = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            // The lock file the bench itself was built from: never rewritten behind the user's back.
            "--locked",
            "--bin",
            "gatehouse",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo build --release failed ({})", out.status));
    }
    let built = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "gatehouse")
        .find_map(|m| m["executable"].as_str().map(std::path::PathBuf::from))
        .ok_or("cargo reported no gatehouse executable")?;
    // A second name for the same file where the file system allows (a later build replaces the file
    // cargo names, not this one), else a copy.
    let copy = bench_copy_path();
    let _ = std::fs::remove_file(&copy);
    std::fs::hard_link(&built, &copy)
        .or_else(|_| std::fs::copy(&built, &copy).map(drop))
        .map_err(|e| format!("copying {}: {e}", built.display()))?;
    Ok(copy)
}

static GATEWAY_BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

fn bench_copy_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("gatehouse-bench-{}", std::process::id()))
}

/// Runs the gateway binary on the config at `path`.
fn spawn_gateway(path: &Path) -> Gateway {
    let child = anchors::pinned(gateway_bin())
        .args(["run", "-c"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn gatehouse");
    Gateway { child }
}

/// Starts the gateway binary; returns it with its Electrum-aware and byte-relay TLS addresses.
async fn start_gateway(dir: &Path, backend: SocketAddr) -> (Gateway, SocketAddr, SocketAddr) {
    let (ep, rp) = (free_port(), free_port());
    let path = dir.join("bench.toml");
    std::fs::write(&path, write_config(dir, backend, ep, rp)).unwrap();
    let gw = spawn_gateway(&path);
    let electrum: SocketAddr = format!("127.0.0.1:{ep}").parse().unwrap();
    let relay: SocketAddr = format!("127.0.0.1:{rp}").parse().unwrap();
    for _ in 0..200 {
        if TcpStream::connect(electrum).await.is_ok() && TcpStream::connect(relay).await.is_ok() {
            return (gw, electrum, relay);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gateway did not start listening");
}

/// A client trusting the bench certificate. `pq` offers the post-quantum hybrid X25519MLKEM768 key
/// exchange first (rustls's default); otherwise X25519 alone, as most wallets' TLS stacks do today.
fn tls_connector(der: &[u8], resume: bool, pq: bool) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der.to_vec())).unwrap();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !pq {
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        cfg.resumption = Resumption::disabled();
    }
    TlsConnector::from(Arc::new(cfg))
}

struct LoadResult {
    requests: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl LoadResult {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(i).copied().unwrap_or_default()
    }
}

/// One connection: server.version, then `IN_FLIGHT` requests of the wallet mix outstanding until
/// `until`. Replies are counted by newline and answered with as many new requests in one write, as a
/// pipelining wallet library would.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(s: S, until: Instant) -> (u64, Vec<Duration>) {
    let (r, mut w) = tokio::io::split(s);
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut line = Vec::new();
    w.write_all(VERSION).await.unwrap();
    r.read_until(b'\n', &mut line).await.unwrap();
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(IN_FLIGHT);
    let mut lat = Vec::new();
    let mut next = 0usize;
    let mut out = Vec::with_capacity(4096);
    let mut push = |n: usize, out: &mut Vec<u8>| {
        out.clear();
        for _ in 0..n {
            out.extend_from_slice(MIX[next % MIX.len()]);
            next += 1;
        }
    };
    let now = Instant::now();
    sent.extend(std::iter::repeat_n(now, IN_FLIGHT));
    push(IN_FLIGHT, &mut out);
    w.write_all(&out).await.unwrap();
    let mut done = 0u64;
    while !sent.is_empty() {
        let buf = match r.fill_buf().await {
            Ok(b) if !b.is_empty() => b,
            _ => break,
        };
        let n = buf.len();
        let replies = buf.iter().filter(|&&b| b == b'\n').count();
        r.consume(n);
        let now = Instant::now();
        for _ in 0..replies {
            if let Some(t0) = sent.pop_front() {
                lat.push(now - t0);
                done += 1;
            }
        }
        if replies > 0 && now < until {
            sent.extend(std::iter::repeat_n(now, replies));
            push(replies, &mut out);
            w.write_all(&out).await.unwrap();
        }
    }
    (done, lat)
}

async fn load(addr: SocketAddr, tls: Option<&TlsConnector>, secs: f64) -> LoadResult {
    let mut streams_plain = Vec::new();
    let mut streams_tls = Vec::new();
    for _ in 0..CONNS {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        match tls {
            None => streams_plain.push(s),
            Some(c) => streams_tls.push(c.connect(ServerName::try_from("localhost").unwrap(), s).await.unwrap()),
        }
    }
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for s in streams_plain {
        tasks.spawn(drive(s, until));
    }
    for s in streams_tls {
        tasks.spawn(drive(s, until));
    }
    let mut res = LoadResult {
        requests: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    while let Some(r) = tasks.join_next().await {
        let (n, lat) = r.unwrap();
        res.requests += n;
        res.latencies.extend(lat);
    }
    res.elapsed = start.elapsed();
    res
}

async fn handshakes(addr: SocketAddr, conn: &TlsConnector, secs: f64) -> u64 {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let c = conn.clone();
        tasks.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                let s = TcpStream::connect(addr).await.unwrap();
                let mut t = c.connect(ServerName::try_from("localhost").unwrap(), s).await.unwrap();
                let _ = t.shutdown().await;
                n += 1;
            }
            n
        });
    }
    let mut total = 0;
    while let Some(n) = tasks.join_next().await {
        total += n.unwrap();
    }
    total
}

/// Opens `n` TLS sessions that each complete one request (so the gateway holds the upstream side too),
/// then leaves them idle.
async fn idle_sessions(
    addr: SocketAddr,
    conn: &TlsConnector,
    n: usize,
    requests: &[&[u8]],
) -> Vec<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut v = Vec::with_capacity(n);
    let mut line = Vec::new();
    for _ in 0..n {
        let s = TcpStream::connect(addr).await.unwrap();
        let t = conn
            .connect(ServerName::try_from("localhost").unwrap(), s)
            .await
            .unwrap();
        let mut b = BufReader::new(t);
        for req in requests {
            b.write_all(req).await.unwrap();
            line.clear();
            b.read_until(b'\n', &mut line).await.unwrap();
        }
        v.push(b.into_inner());
    }
    v
}

/// Gateway RSS growth per session while `n` sessions made by `requests` sit idle.
async fn rss_per_session(gw: &Gateway, addr: SocketAddr, conn: &TlsConnector, n: usize, requests: &[&[u8]]) -> f64 {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = gw.rss_bytes();
    let held = idle_sessions(addr, conn, n, requests).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss1 = gw.rss_bytes();
    drop(held);
    rss1.saturating_sub(rss0) as f64 / n as f64 / 1024.0
}

/// Loads a 100,000-line CIDR file and times lookups (hits and misses) against it.
fn cidr_list() -> (Duration, f64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deny.txt");
    let mut text = String::from("# generated deny list\n");
    let mut x: u32 = 0x9E37_79B9;
    for i in 0..100_000u32 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let len = 16 + (x % 17);
        let net = std::net::Ipv4Addr::from(x & (u32::MAX << (32 - len)));
        text.push_str(&format!("{net}/{len}{}\n", if i % 10 == 0 { "  # note" } else { "" }));
    }
    std::fs::write(&path, text).unwrap();
    let t0 = Instant::now();
    let set = gatehouse::wire::acl::CidrSet::from_nets(gatehouse::wire::acl::load_cidr_file(&path).unwrap());
    let load = t0.elapsed();
    let probes: Vec<std::net::IpAddr> = (0..1_000_000u32)
        .map(|i| std::net::Ipv4Addr::from(i.wrapping_mul(2_654_435_761)).into())
        .collect();
    let t0 = Instant::now();
    let hits = probes.iter().filter(|ip| set.contains(**ip)).count();
    let per = t0.elapsed().as_nanos() as f64 / probes.len() as f64;
    std::hint::black_box(hits);
    (load, per)
}

/// Peer fronts of the throughput rows: the plain relay (`protocol = "any"`) and the Bitcoin guard, plain
/// TCP, in front of a sink that counts what reaches it.
fn write_peer_config(dir: &Path, sink: SocketAddr, plain_port: u16, guard_port: u16) -> String {
    let _ = dir;
    format!(
        r#"
[runtime]
worker_threads = 1
drain_deadline = "1s"
[log]
level = "warn"

[[front]]
name = "plain"
kind = "peer"
listen = ["127.0.0.1:{plain_port}"]
transport = "tcp"
upstreams = ["{sink}"]

[[front]]
name = "guard"
kind = "peer"
listen = ["127.0.0.1:{guard_port}"]
transport = "tcp"
upstreams = ["{sink}"]
[front.peer]
protocol = "bitcoin"
magic = "f9beb4d9"
v2 = "refuse"
"#
    )
}

/// A node stand-in that reads and discards everything, counting the bytes.
async fn sink_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t = total.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let t = t.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    t.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    (addr, total)
}

/// One v1 message with a valid header (mainnet magic) and `payload`.
fn v1_message(cmd: &[u8], payload: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut m = vec![0xf9, 0xbe, 0xb4, 0xd9];
    let mut c = [0u8; 12];
    c[..cmd.len()].copy_from_slice(cmd);
    m.extend_from_slice(&c);
    m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let d = sha2::Sha256::digest(sha2::Sha256::digest(payload));
    m.extend_from_slice(&d[..4]);
    m.extend_from_slice(payload);
    m
}

/// `PEER_CONNS` peers each send a `version`, then 256 KiB `block` messages for `secs`: bytes/s that reached
/// the sink, and gateway CPU seconds per GB relayed.
async fn peer_throughput(
    gw: &Gateway,
    front: SocketAddr,
    sink: &std::sync::atomic::AtomicU64,
    secs: f64,
) -> (f64, f64) {
    const PEER_CONNS: usize = 4;
    let payload: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let burst = Arc::new(v1_message(b"block", &payload).repeat(4));
    let version = v1_message(b"version", &[1u8; 100]);
    let before = sink.load(std::sync::atomic::Ordering::Relaxed);
    let cpu0 = gw.cpu_seconds();
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..PEER_CONNS {
        let burst = burst.clone();
        let version = version.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(front).await.unwrap();
            s.write_all(&version).await.unwrap();
            while Instant::now() < until {
                if s.write_all(&burst).await.is_err() {
                    return;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let took = start.elapsed().as_secs_f64();
    let bytes = (sink.load(std::sync::atomic::Ordering::Relaxed) - before) as f64;
    let cpu = gw.cpu_seconds() - cpu0;
    (bytes / took, cpu / (bytes / 1e9))
}

/// One process in the middle, measured as the gateway's rows are: CPU per 100k requests of the wallet mix,
/// latency, and full handshakes per CPU second.
async fn measure(p: &Gateway, addr: SocketAddr, resuming: &TlsConnector, full: &TlsConnector, secs: f64) -> Figures {
    let (user0, system0) = p.cpu_split();
    let mut r = load(addr, Some(resuming), secs).await;
    let (user1, system1) = p.cpu_split();
    let per_100k = 100_000.0 / r.requests as f64;
    let (user, system) = ((user1 - user0) * per_100k, (system1 - system0) * per_100k);
    let cpu0 = p.cpu_seconds();
    let hs = handshakes(addr, full, secs).await;
    let hs_per_cpu = hs as f64 / (p.cpu_seconds() - cpu0).max(1e-9);
    Figures {
        cpu: user + system,
        kernel: system,
        p50: r.pct(0.5),
        p99: r.pct(0.99),
        handshakes: hs_per_cpu,
    }
}

/// One target's figures in one round (or the medians of the rounds).
#[derive(Clone, Copy)]
struct Figures {
    /// CPU s per 100k requests.
    cpu: f64,
    /// The kernel's part of `cpu`: the socket work, which every target does alike; the rest is the
    /// target's own code.
    kernel: f64,
    p50: Duration,
    p99: Duration,
    /// Full handshakes per CPU second.
    handshakes: f64,
}
/// A process and the address it serves on, or why it is not running.
type AnchorTarget<'a> = Result<(&'a Gateway, SocketAddr), String>;

/// Rounds of the anchor rows: each figure is the median of this many, every target measured once per
/// round in turn, so a machine that speeds up or slows down over the run moves every row alike.
const ANCHOR_ROUNDS: usize = 3;

/// HAProxy, nginx and a fresh gateway's two fronts in front of the same stub, all up at once and measured
/// in interleaved rounds; the gateway's figures as ratios to HAProxy's.
async fn anchor_rows(dir: &Path, backend: SocketAddr, resuming: &TlsConnector, full: &TlsConnector, secs: f64) {
    let (gw, electrum, relay) = start_gateway(dir, backend).await;
    let haproxy = anchors::haproxy_tls(dir, backend).await;
    let nginx = anchors::nginx_tls(dir, backend).await;
    let targets: [(&str, AnchorTarget); 4] = [
        (
            "HAProxy 2.6 (TLS → TCP, 1 thread)",
            haproxy.as_ref().map(|(p, a)| (p, *a)).map_err(Clone::clone),
        ),
        (
            "nginx stream (TLS → TCP, 1 worker)",
            nginx.as_ref().map(|(p, a)| (p, *a)).map_err(Clone::clone),
        ),
        ("Gatehouse relay front (TLS → TCP)", Ok((&gw, relay))),
        ("Gatehouse Electrum front (cost accounting on)", Ok((&gw, electrum))),
    ];
    // Untimed first: TLS session caches filled, the Electrum front's backend window learned.
    for (_, t) in &targets {
        if let Ok((_, addr)) = t {
            load(*addr, Some(resuming), 1.0).await;
        }
    }
    let mut rounds: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
    for _ in 0..ANCHOR_ROUNDS {
        for (i, (_, t)) in targets.iter().enumerate() {
            if let Ok((p, addr)) = t {
                rounds[i].push(measure(p, *addr, resuming, full, secs).await);
            }
        }
    }
    let figures: Vec<Result<Figures, String>> = targets
        .iter()
        .zip(&rounds)
        .map(|((_, t), r)| match t {
            Ok(_) => {
                let median = |of: fn(&Figures) -> f64| latency::median(r.iter().map(of).collect());
                Ok(Figures {
                    cpu: median(|f| f.cpu),
                    kernel: median(|f| f.kernel),
                    p50: Duration::from_secs_f64(median(|f| f.p50.as_secs_f64())),
                    p99: Duration::from_secs_f64(median(|f| f.p99.as_secs_f64())),
                    handshakes: median(|f| f.handshakes),
                })
            }
            Err(e) => Err(e.clone()),
        })
        .collect();
    let base = figures[0].as_ref().ok().copied();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("\n## Against the proxies operators would otherwise pick\n");
    println!("Same stub backend, same certificate (ECDSA P-256, TLS 1.3), the wallet mix as above, one worker each,");
    println!("the process under test pinned to one core and the load generator to the other (when taskset is there);");
    println!("every target up at once, medians of {ANCHOR_ROUNDS} interleaved rounds.\n");
    println!("| target | CPU s per 100k requests | vs HAProxy | of which kernel / user space | p50 / p99 latency | full handshakes per CPU second | vs HAProxy |");
    println!("|---|---|---|---|---|---|---|");
    for ((name, _), f) in targets.iter().zip(&figures) {
        match f {
            Ok(f) => {
                let (rc, rh) = base.map_or(("–".to_string(), "–".to_string()), |b| {
                    (
                        format!("{:.2}", f.cpu / b.cpu),
                        format!("{:.2}", f.handshakes / b.handshakes),
                    )
                });
                println!(
                    "| {name} | {:.3} | {rc} | {:.3} / {:.3} | {:.0} / {:.0} µs | {:.0} | {rh} |",
                    f.cpu,
                    f.kernel,
                    f.cpu - f.kernel,
                    us(f.p50),
                    us(f.p99),
                    f.handshakes
                );
            }
            Err(e) => println!("| {name} | skipped: {e} | | | | | |"),
        }
    }
    if std::env::var_os("GATEHOUSE_ANCHOR_ROUNDS_SHOWN").is_some() {
        // Every round's CPU figure, to see how far the machine moved.
        for ((name, _), r) in targets.iter().zip(&rounds) {
            let each: Vec<String> = r.iter().map(|f| format!("{:.3}", f.cpu)).collect();
            println!("rounds: {name}: {}", each.join(" "));
        }
    }
}

/// The peer rows: the plain relay against the Bitcoin guard, on a gateway of their own.
async fn peer_rows(dir: &Path, secs: f64) {
    let (sink, total) = sink_backend().await;
    let (pp, gp) = (free_port(), free_port());
    let path = dir.join("peer.toml");
    std::fs::write(&path, write_peer_config(dir, sink, pp, gp)).unwrap();
    let gw = spawn_gateway(&path);
    let plain: SocketAddr = format!("127.0.0.1:{pp}").parse().unwrap();
    let guard: SocketAddr = format!("127.0.0.1:{gp}").parse().unwrap();
    for _ in 0..200 {
        if TcpStream::connect(plain).await.is_ok() && TcpStream::connect(guard).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (plain_bps, plain_cpu) = peer_throughput(&gw, plain, &total, secs).await;
    let (guard_bps, guard_cpu) = peer_throughput(&gw, guard, &total, secs).await;
    println!("\n| peer front, 4 peers streaming 256 KiB `block` messages | relayed bytes/s | gateway CPU s per GB |");
    println!("|---|---|---|");
    println!(
        "| plain relay (`protocol = \"any\"`) | {:.0} MB/s | {plain_cpu:.3} |",
        plain_bps / 1e6
    );
    println!(
        "| Bitcoin guard (`protocol = \"bitcoin\"`: headers and checksums) | {:.0} MB/s ({:.2} x plain) | {guard_cpu:.3} ({:.2} x plain) |",
        guard_bps / 1e6,
        guard_bps / plain_bps,
        guard_cpu / plain_cpu
    );
}

fn main() {
    if std::env::var_os(scale::STUB_ROLE).is_some() {
        // The scale rows' stub backend, in a process of its own (see support/scale.rs).
        scale::stub_main();
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 1.5 } else { 5.0 };
    let idle_n = if quick { 1000 } else { 5000 };
    raise_nofile();
    if !anchors::pin_load_generator() {
        eprintln!("bench: taskset is not available: processes are not pinned to cores");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        if std::env::var("GATEHOUSE_BENCH_ONLY").is_ok_and(|p| p == "api") {
            // The node API front's rows alone (about 3 x 1.5 s with --quick).
            api_http::run(dir.path(), secs).await;
            return;
        }
        if std::env::var("GATEHOUSE_BENCH_ONLY").is_ok_and(|p| p == "ledger") {
            // The ledger profile's rows alone (about 6 x 1.5 s with --quick).
            api_ledger::run(dir.path(), secs).await;
            return;
        }
        if std::env::var("GATEHOUSE_BENCH_ONLY").is_ok_and(|p| p == "saturation") {
            // Honest wallets against a flood, in front of a modelled backend (about 4 min with --quick).
            flood::raise_nofile(16_000);
            saturation::run(dir.path(), quick).await;
            return;
        }
        if std::env::var("GATEHOUSE_BENCH_ONLY").is_ok_and(|p| p == "electrumx") {
            // The same in front of a real ElectrumX over a real node (about 5 min with --quick, plus a
            // one-time setup of about a minute).
            flood::raise_nofile(16_000);
            electrumx::run(dir.path(), quick).await;
            return;
        }
        if std::env::var("GATEHOUSE_BENCH_ONLY").is_ok_and(|p| p == "scale") {
            // Idle TLS wallet sessions held by one gateway: memory and handshake rate as they grow.
            scale::run(dir.path(), quick).await;
            return;
        }
        let backend = stub_backend().await;
        let (gw, electrum, relay) = start_gateway(dir.path(), backend).await;
        let der = std::fs::read(dir.path().join("bench.der")).unwrap();
        let resuming = tls_connector(&der, true, false);
        let full = tls_connector(&der, false, false);
        let full_pq = tls_connector(&der, false, true);
        if std::env::var("GATEHOUSE_BENCH_ONLY").as_deref() == Ok("anchors") {
            // The gateway against HAProxy and nginx alone.
            drop(gw);
            anchor_rows(dir.path(), backend, &resuming, &full, secs).await;
            latency::run(dir.path(), backend, &resuming, secs).await;
            return;
        }
        if std::env::var("GATEHOUSE_BENCH_ONLY").as_deref() == Ok("instructions") {
            // User-space instructions per request under callgrind, against HAProxy and nginx, one at a time and in
            // batches (about 4 min).
            drop(gw);
            instructions::run(dir.path(), backend, &resuming).await;
            return;
        }
        if std::env::var("GATEHOUSE_BENCH_ONLY").as_deref() == Ok("latency") {
            // The latency rows alone: 10 connections x 1 in flight against the anchors.
            drop(gw);
            latency::run(dir.path(), backend, &resuming, secs).await;
            return;
        }
        if std::env::var("GATEHOUSE_BENCH_ONLY").as_deref() == Ok("peer") {
            peer_rows(dir.path(), secs).await;
            return;
        }
        if let Ok(phase) = std::env::var("GATEHOUSE_BENCH_ONLY") {
            // For profiling one phase: `GATEHOUSE_BENCH_ONLY=electrum perf record -p <gateway pid>`; `haproxy`
            // and `nginx` load that anchor the same way, so the two profiles read side by side.
            if phase == "haproxy" || phase == "nginx" {
                drop(gw);
                let started = if phase == "haproxy" {
                    anchors::haproxy_tls(dir.path(), backend).await
                } else {
                    anchors::nginx_tls(dir.path(), backend).await
                };
                match started {
                    Ok((process, addr)) => {
                        println!("{phase}: pid {}", process.pid());
                        let r = load(addr, Some(&resuming), 10.0).await;
                        println!("{phase}: {} requests in {:.2} s ({:.0}/s)", r.requests, r.elapsed.as_secs_f64(), r.rps());
                    }
                    Err(e) => println!("{phase}: not run: {e}"),
                }
                return;
            }
            let target = if phase == "relay" { relay } else { electrum };
            if phase == "handshake" {
                handshakes(electrum, &full, 10.0).await;
            } else {
                let r = load(target, Some(&resuming), 10.0).await;
                // Requests served, so a profile's counts (samples, syscalls) can be read per request.
                println!("{phase}: {} requests in {:.2} s ({:.0}/s)", r.requests, r.elapsed.as_secs_f64(), r.rps());
            }
            return;
        }

        let mut direct = load(backend, None, secs).await;
        let cpu0 = gw.cpu_seconds();
        let mut via_relay = load(relay, Some(&resuming), secs).await;
        let cpu_relay = gw.cpu_seconds() - cpu0;
        let cpu0 = gw.cpu_seconds();
        let mut via_el = load(electrum, Some(&resuming), secs).await;
        let cpu_el = gw.cpu_seconds() - cpu0;

        let cpu0 = gw.cpu_seconds();
        let hs_relay = handshakes(relay, &full, secs).await;
        let cpu_hs_relay = gw.cpu_seconds() - cpu0;
        let cpu0 = gw.cpu_seconds();
        let hs = handshakes(electrum, &full, secs).await;
        let cpu_hs = gw.cpu_seconds() - cpu0;
        let cpu0 = gw.cpu_seconds();
        let hs_pq = handshakes(electrum, &full_pq, secs).await;
        let cpu_hs_pq = gw.cpu_seconds() - cpu0;
        drop(gw);

        // Memory on fresh gateways: the heap freed by earlier rows would otherwise absorb new sessions.
        let (gw, _, relay) = start_gateway(dir.path(), backend).await;
        let mem_relay = rss_per_session(&gw, relay, &resuming, idle_n, &[MIX[0]]).await;
        drop(gw);
        let (gw, electrum, _) = start_gateway(dir.path(), backend).await;
        let mem_el = rss_per_session(&gw, electrum, &resuming, idle_n, &[VERSION, MIX[3], MIX[6]]).await;
        drop(gw);
        let (cidr_load, cidr_ns) = cidr_list();

        let per100k = |cpu: f64, r: &LoadResult| cpu / r.requests as f64 * 100_000.0;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let (d50, d99) = (direct.pct(0.5), direct.pct(0.99));
        let (r50, r99) = (via_relay.pct(0.5), via_relay.pct(0.99));
        let (e50, e99) = (via_el.pct(0.5), via_el.pct(0.99));
        println!("\n## Gatehouse gateway benchmark\n");
        println!("Wallet request mix (get_balance, get_history, listunspent, scripthash.subscribe, transaction.get,");
        println!("get_merkle, headers.subscribe, estimatefee), {CONNS} connections x {IN_FLIGHT} in flight, {secs}s per column,");
        println!("gateway = the release binary on 1 worker thread; load generator and stub backend share the other core.\n");
        println!("| measure | direct plain TCP | gateway TLS, byte relay | gateway TLS, Electrum-aware |");
        println!("|---|---|---|---|");
        println!("| requests/s | {:.0} | {:.0} ({:.2} x direct) | {:.0} ({:.2} x direct) |", direct.rps(), via_relay.rps(), via_relay.rps() / direct.rps(), via_el.rps(), via_el.rps() / direct.rps());
        println!("| p50 latency | {:.0} µs | {:.0} µs | {:.0} µs |", us(d50), us(r50), us(e50));
        println!("| p99 latency | {:.0} µs | {:.0} µs | {:.0} µs |", us(d99), us(r99), us(e99));
        println!("| gateway CPU s per 100k requests | – | {:.3} | {:.3} ({:.2} x relay) |", per100k(cpu_relay, &via_relay), per100k(cpu_el, &via_el), per100k(cpu_el, &via_el) / per100k(cpu_relay, &via_relay));
        println!("| gateway RSS per idle session ({idle_n} sessions, upstream included) | – | {mem_relay:.1} KiB | {mem_el:.1} KiB (subscribed) |");
        println!();
        println!("| other measure | value |");
        println!("|---|---|");
        println!("| full TLS 1.3 handshakes (ECDSA P-256, X25519, no resumption) per gateway CPU second, relay front | {:.0} |", hs_relay as f64 / cpu_hs_relay.max(1e-9));
        println!("| the same on the Electrum front | {:.0} |", hs as f64 / cpu_hs.max(1e-9));
        println!("| the same with the post-quantum hybrid X25519MLKEM768 | {:.0} |", hs_pq as f64 / cpu_hs_pq.max(1e-9));
        println!("| handshakes/s wall clock on the Electrum front (client shares the machine) | {:.0} |", hs as f64 / secs);
        println!("| load a 100,000-entry CIDR file | {:.0} ms |", cidr_load.as_secs_f64() * 1e3);
        println!("| CIDR lookup in that set (17 prefix lengths) | {cidr_ns:.0} ns |");
        anchor_rows(dir.path(), backend, &resuming, &full, secs).await;
        latency::run(dir.path(), backend, &resuming, secs).await;
        api_http::run(dir.path(), secs).await;
        peer_rows(dir.path(), secs).await;
        api_ledger::run(dir.path(), secs).await;
    });
    drop(rt);
    // The copy of the release binary, if one was made.
    if let Some(bin) = GATEWAY_BIN.get().filter(|b| **b == bench_copy_path()) {
        let _ = std::fs::remove_file(bin);
    }
}
