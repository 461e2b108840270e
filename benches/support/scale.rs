//! Scale rows (`GATEHOUSE_BENCH_ONLY=scale`): one gateway (the release binary, one worker thread, pinned to
//! its own core) holding a growing number of idle TLS wallet sessions, each of which sent `server.version`,
//! `blockchain.headers.subscribe` and a `blockchain.scripthash.subscribe` of its own and then went quiet. At
//! each step: the gateway's resident memory per session (over the same gateway empty, and for the step
//! alone), and the rate of full TLS handshakes it accepts while holding them (a burst of new connections
//! that each do one request and close), as a ratio to the same gateway's rate when empty.
//!
//! What it takes to hold that many sessions on one machine, and how this file gets it:
//! - Descriptors. The gateway holds two per session (client and upstream). The wallets' ends stay in this
//!   process (one each) and the stub backend runs as a child process of its own (this bench binary again,
//!   with `GATEHOUSE_BENCH_SCALE_STUB` set), so each process needs about one or two per session. RLIMIT_NOFILE
//!   is raised (soft and hard) before the gateway is spawned, so it inherits the limit; raising the hard
//!   limit needs CAP_SYS_RESOURCE, and where that is refused the steps that do not fit are reported as not
//!   run, with the reason, and the curve stops at the largest step that fits.
//! - Ports. One source address has about 28,000 ephemeral ports (ip_local_port_range 32768–60999). Wallets
//!   bind to their own 127.1.x.y address (1,000 sessions per address, as behind a carrier NAT), the probe's
//!   connections to 127.2.x.y, and the gateway's four fronts each relay to their own stub listener, so its
//!   upstream connections (from 127.0.0.1) stay under the limit per destination at 100,000 sessions.
//! - Caps. The bench config lifts every cap that would refuse the sessions: `[admission]` connections in
//!   total, per address and per group, and the per-address connect rate; `[limits] memory_budget` (idle
//!   sessions hold nothing in it, but 100,000 filling at once might); `[cost] max_subscriptions_per_group`;
//!   each front's idle timeout (a whole run can outlast the default 10 minutes). Cost accounting stays on
//!   with its default limits (loopback wallets are accounted per session and stay far below them).
//! - Client memory. A held session keeps only its socket: once its three replies are in, the TLS state is
//!   dropped (the gateway cannot tell: an idle wallet sends nothing), so 100,000 cost this process a
//!   descriptor each. Sessions are opened 64 at a time with TLS 1.3 resumption (a wallet reconnecting);
//!   the probe uses full handshakes.
//! - Kernel. Idle sockets queue nothing, so `net.ipv4.tcp_mem` is not approached; the backlog
//!   (`net.core.somaxconn`) only matters for the 64 connections in flight. No sysctl is changed.

use super::{tls_connector, Gateway, VERSION};
use rustls::pki_types::ServerName;
use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// Electrum fronts (and stub listeners): each relays to its own stub address, so the gateway's upstream
/// connections fit the ephemeral ports one destination allows.
const FRONTS: usize = 4;
/// Sessions opened at once while filling.
const FILL_CONCURRENCY: usize = 64;
/// Sessions per wallet source address.
const PER_SOURCE: usize = 1000;
/// Connections the handshake probe keeps opening at once.
const PROBE_CONCURRENCY: usize = 8;
/// Descriptors each process keeps beyond the sessions (listeners, the runtime, the probe, files).
const FD_SLACK: u64 = 1024;
/// Environment variable that makes the bench binary the stub backend (the child process).
pub(super) const STUB_ROLE: &str = "GATEHOUSE_BENCH_SCALE_STUB";

const HEADERS: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"blockchain.headers.subscribe\",\"params\":[]}\n";

/// A wallet's opening: version, headers and its own scripthash, in one write as wallet libraries send it.
fn opening(i: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(300);
    v.extend_from_slice(VERSION);
    v.extend_from_slice(HEADERS);
    v.extend_from_slice(
        format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"blockchain.scripthash.subscribe\",\"params\":[\"{:064x}\"]}}\n",
            (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) | 1
        )
        .as_bytes(),
    );
    v
}

fn source(base: u8, k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, base, (k / 250 % 250) as u8, (k % 250 + 1) as u8))
}

// ---------------------------------------------------------------------------------------------------------
// The stub backend, in a child process of its own (its descriptors do not count against this one's).

/// Runs as the stub backend when the bench binary is started with `STUB_ROLE` set: binds `FRONTS` listeners
/// on 127.0.0.1, prints their addresses on one line, and answers every request line until its stdin closes
/// (the bench process ended).
pub(super) fn stub_main() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut addrs = Vec::new();
        for _ in 0..FRONTS {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(l.local_addr().unwrap().to_string());
            tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, _)) => {
                            tokio::spawn(stub_conn(s));
                        }
                        // Out of descriptors: the bench reports the sessions that did not get through.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            });
        }
        let mut out = std::io::stdout();
        writeln!(out, "{}", addrs.join(" ")).unwrap();
        out.flush().unwrap();
        std::future::pending::<()>().await;
    });
}

/// One upstream connection of the stub: a small fixed buffer (100,000 of these are held), a reply per line.
async fn stub_conn(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 2048];
    let mut have = 0usize;
    let mut out = Vec::new();
    loop {
        let n = match s.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        have += n;
        let mut start = 0;
        while let Some(p) = buf[start..have].iter().position(|&b| b == b'\n') {
            stub_reply(&buf[start..start + p], &mut out);
            start += p + 1;
        }
        buf.copy_within(start..have, 0);
        have -= start;
        if have == buf.len() {
            return; // a line longer than any the gateway sends for these sessions
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
            out.shrink_to(0);
        }
    }
}

fn stub_reply(line: &[u8], out: &mut Vec<u8>) {
    let has = |pat: &[u8]| line.windows(pat.len()).any(|w| w == pat);
    let id = line
        .windows(5)
        .position(|w| w == b"\"id\":")
        .map(|p| {
            let rest = &line[p + 5..];
            let end = rest.iter().position(|&b| b == b',' || b == b'}').unwrap_or(rest.len());
            &rest[..end]
        })
        .unwrap_or(b"null");
    let result: &[u8] = if has(b"\"server.version\"") {
        b"[\"stub 1.0\",\"1.4\"]"
    } else if has(b"\"blockchain.headers.subscribe\"") {
        b"{\"height\":800000,\"hex\":\"00000020\"}"
    } else {
        b"null"
    };
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"result\":");
    out.extend_from_slice(result);
    out.extend_from_slice(b",\"id\":");
    out.extend_from_slice(id);
    out.extend_from_slice(b"}\n");
}

struct Stub {
    _child: Gateway,
    addrs: Vec<SocketAddr>,
}

fn spawn_stub() -> Stub {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(STUB_ROLE, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the stub backend");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addrs = line.split_whitespace().map(|a| a.parse().unwrap()).collect();
    Stub {
        _child: Gateway { child },
        addrs,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Descriptors.

fn nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct on this stack frame.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (lim.rlim_cur, lim.rlim_max)
}

/// Raises RLIMIT_NOFILE (soft and hard) to `want`; on failure says why and returns the limit in force.
fn raise_nofile_to(want: u64) -> Result<u64, String> {
    let (cur, hard) = nofile();
    if cur >= want {
        return Ok(cur);
    }
    let lim = libc::rlimit {
        rlim_cur: want,
        rlim_max: want.max(hard),
    };
    // SAFETY: setrlimit only reads the struct on this stack frame.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        return Ok(want);
    }
    let err = std::io::Error::last_os_error();
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap_or_default();
    let why = if hard < want {
        "raising the hard limit needs CAP_SYS_RESOURCE (`ulimit -Hn`, systemd's LimitNOFILE, `docker run \
         --ulimit nofile=N:N`)"
    } else {
        "fs.nr_open is below it"
    };
    Err(format!(
        "cannot raise RLIMIT_NOFILE to {want} (soft {cur}, hard {hard}, fs.nr_open {}): {err}; {why}",
        nr_open.trim()
    ))
}

// ---------------------------------------------------------------------------------------------------------
// The gateway.

fn write_config(dir: &Path, ports: &[u16], stubs: &[SocketAddr], nofile: u64) -> String {
    let head = super::open_gates("warn", nofile);
    let mut cfg = format!(
        r#"{head}
[limits]
memory_budget = "8GiB"
[cost]
max_subscriptions_per_group = 10000000
"#
    );
    for (i, (port, stub)) in ports.iter().zip(stubs).enumerate() {
        cfg.push_str(&format!(
            r#"
[[front]]
name = "wallets-{i}"
kind = "electrum"
listen = ["127.0.0.1:{port}"]
transport = "tls"
upstreams = ["{stub}"]
[front.tls]
cert = "{dir}/demo.crt"
key = "{dir}/demo.key"
[front.timeouts]
idle = "2h"
"#,
            dir = dir.display()
        ));
    }
    cfg
}

async fn start_gateway(dir: &Path, stubs: &[SocketAddr], nofile: u64) -> (Gateway, Vec<SocketAddr>) {
    let ports: Vec<u16> = (0..FRONTS).map(|_| super::free_port()).collect();
    let path = dir.join("scale.toml");
    std::fs::write(&path, write_config(dir, &ports, stubs, nofile)).unwrap();
    let gw = match std::env::var("GATEHOUSE_SCALE_WRAP") {
        // For profiling: `GATEHOUSE_SCALE_WRAP="env LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so
        // DUMP_HEAPTRACK_OUTPUT=/tmp/gw.raw"` runs the gateway under that command. Use one that execs the
        // gateway (as `env` does): the bench stops the process it started, and the figures are that process's.
        Ok(wrap) => {
            let mut words = wrap.split_whitespace();
            let child = Command::new(words.next().expect("a command in GATEHOUSE_SCALE_WRAP"))
                .args(words)
                .arg(super::gateway_bin())
                .args(["run", "-c"])
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn the wrapped gateway");
            Gateway { child }
        }
        Err(_) => super::spawn_gateway(&path),
    };
    let fronts: Vec<SocketAddr> = ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect();
    for f in &fronts {
        assert!(
            super::api_http::wait_listening(*f).await,
            "the gateway did not start listening"
        );
    }
    (gw, fronts)
}

fn gateway_nofile(gw: &Gateway) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/limits", gw.pid()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------------------
// Wallets.

async fn connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    let s = sock.connect(dst).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Reads from `t` until `lines` newlines have arrived.
async fn read_lines<S: tokio::io::AsyncRead + Unpin>(t: &mut S, lines: usize) -> std::io::Result<()> {
    let mut buf = [0u8; 1024];
    let mut seen = 0;
    while seen < lines {
        let n = t.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        seen += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
    Ok(())
}

/// One wallet: TLS, its opening, the three replies; then only the socket is kept.
async fn open_wallet(i: usize, fronts: &[SocketAddr], tls: &TlsConnector) -> std::io::Result<std::net::TcpStream> {
    let s = connect_from(source(1, i / PER_SOURCE), fronts[i % fronts.len()]).await?;
    let mut t = tls.connect(ServerName::try_from("localhost").unwrap(), s).await?;
    t.write_all(&opening(i)).await?;
    t.flush().await?;
    read_lines(&mut t, 3).await?;
    t.into_inner().0.into_std()
}

/// Opens wallets `from..to`, `FILL_CONCURRENCY` at a time; the ones that failed are counted, not kept.
async fn fill(
    from: usize,
    to: usize,
    fronts: &[SocketAddr],
    tls: &TlsConnector,
    held: &mut Vec<std::net::TcpStream>,
) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = from;
    let mut failed = 0;
    loop {
        while next < to && tasks.len() < FILL_CONCURRENCY {
            let (fronts, tls) = (fronts.to_vec(), tls.clone());
            let i = next;
            tasks.spawn(async move { open_wallet(i, &fronts, &tls).await });
            next += 1;
        }
        match tasks.join_next().await {
            Some(Ok(Ok(s))) => held.push(s),
            Some(_) => failed += 1,
            None => return failed,
        }
    }
}

/// How many held sessions the gateway has not closed: reads what is pending (session tickets, never
/// replies) and counts the sockets that are still open.
fn alive(held: &[std::net::TcpStream]) -> usize {
    let mut buf = [0u8; 4096];
    held.iter()
        .filter(|s| loop {
            match (&mut &**s).read(&mut buf) {
                Ok(0) => break false,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                Err(_) => break false,
            }
        })
        .count()
}

// ---------------------------------------------------------------------------------------------------------
// The handshake probe.

struct Rate {
    per_sec: f64,
    per_cpu: f64,
}

/// One burst: `PROBE_CONCURRENCY` loops of connect, full handshake, `server.version`, close, for `secs`.
async fn probe_burst(gw: &Gateway, fronts: &[SocketAddr], tls: &TlsConnector, secs: f64, counter: &mut usize) -> Rate {
    let cpu0 = gw.cpu_seconds();
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..PROBE_CONCURRENCY {
        let (fronts, tls) = (fronts.to_vec(), tls.clone());
        // Each loop gets its own run of source addresses, fresh for every burst: the closed connections'
        // TIME_WAIT entries never block a new bind.
        let base = *counter + t * 1_000_000;
        tasks.spawn(async move {
            let mut n = 0usize;
            while Instant::now() < until {
                let i = base + n;
                let s = connect_from(source(2, i / PER_SOURCE), fronts[i % fronts.len()])
                    .await
                    .unwrap();
                let mut t = tls
                    .connect(ServerName::try_from("localhost").unwrap(), s)
                    .await
                    .unwrap();
                t.write_all(VERSION).await.unwrap();
                read_lines(&mut t, 1).await.unwrap();
                let _ = t.shutdown().await;
                n += 1;
            }
            n
        });
    }
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        n += r.unwrap();
    }
    *counter += n.div_ceil(PER_SOURCE) * PER_SOURCE + PER_SOURCE;
    let wall = start.elapsed().as_secs_f64();
    Rate {
        per_sec: n as f64 / wall,
        per_cpu: n as f64 / (gw.cpu_seconds() - cpu0).max(1e-9),
    }
}

/// The median of three bursts (the machine is shared: one burst can be unlucky).
async fn probe(gw: &Gateway, fronts: &[SocketAddr], tls: &TlsConnector, secs: f64, counter: &mut usize) -> Rate {
    let mut r = Vec::new();
    for _ in 0..3 {
        r.push(probe_burst(gw, fronts, tls, secs / 3.0, counter).await);
    }
    let med = |f: fn(&Rate) -> f64| {
        let mut v: Vec<f64> = r.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[1]
    };
    Rate {
        per_sec: med(|r| r.per_sec),
        per_cpu: med(|r| r.per_cpu),
    }
}

async fn settled_rss(gw: &Gateway) -> u64 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.rss_bytes()
}

// ---------------------------------------------------------------------------------------------------------

/// The steps: `GATEHOUSE_SCALE_STEPS=1000,5000,…` overrides the curve.
fn steps(quick: bool) -> Vec<usize> {
    if let Ok(s) = std::env::var("GATEHOUSE_SCALE_STEPS") {
        return s.split(',').filter_map(|x| x.trim().parse().ok()).collect();
    }
    if quick {
        vec![1_000, 5_000, 10_000, 20_000]
    } else {
        vec![5_000, 25_000, 50_000, 100_000]
    }
}

pub(super) async fn run(dir: &Path, quick: bool) {
    let mut curve = steps(quick);
    curve.sort_unstable();
    let top = *curve.last().expect("at least one step");
    let want = 2 * top as u64 + FD_SLACK;
    let mut skipped = Vec::new();
    let limit = match raise_nofile_to(want) {
        Ok(l) => l,
        Err(e) => {
            // Run what fits rather than nothing: the gateway needs two descriptors per session.
            let (_, hard) = nofile();
            let _ = raise_nofile_to(hard);
            let fits = (hard.saturating_sub(FD_SLACK) / 2) as usize / 500 * 500;
            eprintln!("bench: {e}");
            eprintln!("bench: the gateway needs 2 descriptors per session: steps above {fits} sessions are not run");
            skipped = curve.iter().copied().filter(|&n| n > fits).collect();
            curve.retain(|&n| n <= fits);
            if fits > 0 && curve.last() != Some(&fits) {
                curve.push(fits);
            }
            hard
        }
    };
    let probe_secs = if quick { 1.5 } else { 3.0 };

    let stub = spawn_stub();
    // The demo's certificate maker: ECDSA P-256 for localhost, written as demo.crt / demo.key.
    let der = gatehouse::demo::self_signed(dir).unwrap();
    let resuming = tls_connector(&der, true, false);
    let full = tls_connector(&der, false, false);
    let (gw, fronts) = start_gateway(dir, &stub.addrs, limit).await;
    let gw_nofile = gateway_nofile(&gw);
    let mut counter = 0usize;

    // A first burst warms the gateway and this process up (allocator, caches, the CPU's clock); then the
    // empty gateway: its handshake rate, then its resident memory with the probe's leftovers in it
    // (every later figure carries them too).
    probe_burst(&gw, &fronts, &full, probe_secs / 3.0, &mut counter).await;
    let empty = probe(&gw, &fronts, &full, probe_secs, &mut counter).await;
    let rss0 = settled_rss(&gw).await;

    struct Row {
        sessions: usize,
        alive: usize,
        rss: u64,
        per_session: f64,
        marginal: f64,
        rate: Rate,
        fill_secs: f64,
    }
    let mut rows = Vec::new();
    let mut held = Vec::with_capacity(*curve.last().unwrap_or(&0));
    let mut failed = 0;
    let (mut prev_n, mut prev_rss) = (0usize, rss0);
    for &n in &curve {
        let t0 = Instant::now();
        failed += fill(held.len() + failed, n, &fronts, &resuming, &mut held).await;
        let fill_secs = t0.elapsed().as_secs_f64();
        let rss = settled_rss(&gw).await;
        let rate = probe(&gw, &fronts, &full, probe_secs, &mut counter).await;
        let alive = alive(&held);
        let per_session = rss.saturating_sub(rss0) as f64 / alive.max(1) as f64 / 1024.0;
        let marginal = (rss as f64 - prev_rss as f64) / (alive.saturating_sub(prev_n)).max(1) as f64 / 1024.0;
        eprintln!(
            "bench: scale step {n}: {alive} held, RSS {:.1} MiB, {per_session:.2} KiB/session, {:.0} handshakes/s",
            rss as f64 / 1048576.0,
            rate.per_sec
        );
        rows.push(Row {
            sessions: n,
            alive,
            rss,
            per_session,
            marginal,
            rate,
            fill_secs,
        });
        (prev_n, prev_rss) = (alive, rss);
    }

    println!("\n## Scale: idle TLS wallet sessions on one gateway\n");
    println!(
        "One gateway (release binary, 1 worker thread, pinned), {FRONTS} TLS Electrum fronts; each session sent server.version,"
    );
    println!("blockchain.headers.subscribe and its own blockchain.scripthash.subscribe, then idles. Empty gateway: RSS {:.1} MiB,", rss0 as f64 / 1048576.0);
    println!(
        "{:.0} full handshakes/s, {:.0} per gateway CPU second ({PROBE_CONCURRENCY} connections at a time, each one request then close). Gateway RLIMIT_NOFILE {gw_nofile}.\n",
        empty.per_sec, empty.per_cpu
    );
    println!("| sessions | held at the end of the step | gateway RSS | KiB/session (over empty) | KiB/session (this step) | full handshakes/s | vs empty | handshakes per CPU s | vs empty | fill time |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} MiB | {:.2} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {:.1} s |",
            r.sessions,
            r.alive,
            r.rss as f64 / 1048576.0,
            r.per_session,
            r.marginal,
            r.rate.per_sec,
            r.rate.per_sec / empty.per_sec,
            r.rate.per_cpu,
            r.rate.per_cpu / empty.per_cpu,
            r.fill_secs
        );
    }
    for n in &skipped {
        println!("| {n} | not run: RLIMIT_NOFILE {limit} allows the gateway about {} sessions (2 descriptors each) | | | | | | | | |", limit.saturating_sub(FD_SLACK) / 2);
    }
    if failed > 0 {
        println!("\n{failed} sessions could not be opened.");
    }
    // The goal compares with 5,000 sessions when the curve has that step.
    let base = rows.iter().find(|r| r.sessions == 5_000).or(rows.first());
    if let (Some(first), Some(last)) = (base, rows.last()) {
        println!(
            "\nGoals: KiB/session at {} ({:.2}) <= at {} ({:.2}): {}; handshakes/s at {} >= 0.9 x empty ({:.2}): {}.",
            last.sessions,
            last.per_session,
            first.sessions,
            first.per_session,
            if last.per_session <= first.per_session {
                "met"
            } else {
                "missed"
            },
            last.sessions,
            last.rate.per_sec / empty.per_sec,
            if last.rate.per_sec >= 0.9 * empty.per_sec {
                "met"
            } else {
                "missed"
            },
        );
    }
    if let Some(secs) = std::env::var("GATEHOUSE_SCALE_HOLD").ok().and_then(|s| s.parse().ok()) {
        // For profiling the loaded gateway (`perf record -p PID`, `/proc/PID/smaps`).
        eprintln!(
            "bench: holding {} sessions for {secs} s; gateway pid {}",
            held.len(),
            gw.pid()
        );
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    drop(held);
    drop(gw);
}
