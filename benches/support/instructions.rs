//! User-space instructions per request, counted by valgrind's callgrind: the same count for the same
//! binary and inputs whatever else the machine is doing, where CPU seconds on a shared virtual machine move
//! by tens of per cent between runs. Each target (HAProxy, nginx, the gateway's relay and Electrum fronts)
//! runs under callgrind twice, serving a small and a large number of wallet-mix requests over one TLS
//! connection; the difference divided by the difference in requests is the cost of a request, with
//! start-up, the handshake and shutdown cancelled out. That is done twice: one request at a time, and in
//! lockstep batches of [`BATCH`] (the batch written at once, its answers read before the next), which is
//! how the CPU rows' 8 in flight reach a target. Not a free-running 8 in flight: then how many requests
//! share a read would depend on how fast the slowed-down process runs, and the count would move with it.
//! The kernel's share (the socket work) is not in these counts: read them as the user-space part of the
//! per-request CPU rows.

use super::anchors::{self, apt_install};
use super::{start_gateway, Gateway, MIX, VERSION};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const VALGRIND: &str = "/usr/bin/valgrind";
/// Requests of the small and the large run; the large one's extra requests are what is measured. The gap
/// is wide so that what still varies between runs (where the allocator's arenas land, how many wake-ups
/// a shutdown takes) is a small fraction of a request's cost once divided.
const SMALL: u64 = 500;
const LARGE: u64 = 3_000;
/// Requests written together in the batched column: the CPU rows' requests in flight per connection.
const BATCH: u64 = 8;

/// The instruction rows: one line per target, each as a ratio to HAProxy's.
pub(super) async fn run(dir: &Path, backend: SocketAddr, tls: &TlsConnector) {
    if !Path::new(VALGRIND).is_file() {
        eprintln!("bench: installing valgrind (apt-get) for the instruction rows");
        apt_install(&["valgrind"]);
    }
    if !Path::new(VALGRIND).is_file() {
        println!("instruction rows skipped: valgrind is not installed and apt-get could not install it");
        return;
    }
    let targets = [
        ("HAProxy 2.6 (TLS → TCP, 1 thread)", Target::Haproxy),
        ("nginx stream (TLS → TCP, 1 worker)", Target::Nginx),
        ("Gatehouse relay front (TLS → TCP)", Target::Relay),
        ("Gatehouse Electrum front (cost accounting on)", Target::Electrum),
    ];
    // For profiling one target: `GATEHOUSE_INSTRUCTION_TARGETS=electrum,relay` runs only those rows, and
    // `GATEHOUSE_CALLGRIND_KEEP=DIR` keeps each run's output there for `callgrind_annotate`.
    let only = std::env::var("GATEHOUSE_INSTRUCTION_TARGETS").ok();
    let mut rows = Vec::new();
    for (name, target) in targets {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|t| t.trim() == target.key()))
        {
            continue;
        }
        let single = per_request(dir, backend, tls, target, 1).await;
        let batched = per_request(dir, backend, tls, target, BATCH).await;
        rows.push((name, single, batched));
    }
    if rows.is_empty() {
        println!(
            "instruction rows skipped: GATEHOUSE_INSTRUCTION_TARGETS names none of haproxy, nginx, relay, electrum"
        );
        return;
    }
    println!("\n## User-space instructions per request (callgrind)\n");
    println!(
        "One TLS connection, wallet-mix requests one at a time and in batches of {BATCH}; ({LARGE} − {SMALL} requests) between two runs of each target.\n"
    );
    println!("| target | one at a time | vs HAProxy | batches of {BATCH} | vs HAProxy |");
    println!("|---|---|---|---|---|");
    // Ratios only against HAProxy measured in this run.
    let haproxy = rows.iter().find(|r| r.0.starts_with("HAProxy"));
    let single_base = haproxy.and_then(|r| r.1.as_ref().ok().copied());
    let batched_base = haproxy.and_then(|r| r.2.as_ref().ok().copied());
    for (name, single, batched) in &rows {
        println!(
            "| {name} | {} | {} |",
            cells(single, single_base),
            cells(batched, batched_base)
        );
    }
}

/// A count and its ratio to `base`, as two table cells.
fn cells(figure: &Result<u64, String>, base: Option<u64>) -> String {
    match figure {
        Ok(n) => {
            let ratio = base.map_or("–".to_string(), |b| format!("{:.2}", *n as f64 / b as f64));
            format!("{n} | {ratio}")
        }
        Err(e) => format!("not measured: {e} | –"),
    }
}

#[derive(Clone, Copy)]
enum Target {
    Haproxy,
    Nginx,
    Relay,
    Electrum,
}

impl Target {
    fn key(self) -> &'static str {
        match self {
            Target::Haproxy => "haproxy",
            Target::Nginx => "nginx",
            Target::Relay => "relay",
            Target::Electrum => "electrum",
        }
    }
}

async fn per_request(
    dir: &Path,
    backend: SocketAddr,
    tls: &TlsConnector,
    target: Target,
    batch: u64,
) -> Result<u64, String> {
    let small = counted_run(dir, backend, tls, target, SMALL, batch).await?;
    let large = counted_run(dir, backend, tls, target, LARGE, batch).await?;
    large
        .checked_sub(small)
        .map(|extra| extra / (LARGE - SMALL))
        .ok_or_else(|| format!("the larger run counted fewer instructions ({large} < {small})"))
}

/// Starts `target` under callgrind, serves `requests` through it, stops it and returns its instruction count.
async fn counted_run(
    dir: &Path,
    backend: SocketAddr,
    tls: &TlsConnector,
    target: Target,
    requests: u64,
    batch: u64,
) -> Result<u64, String> {
    let out: PathBuf = dir.join(format!("callgrind.{requests}.out"));
    let _ = std::fs::remove_file(&out);
    anchors::wrap_starts(Some(vec![
        VALGRIND.to_string(),
        "-q".to_string(),
        "--tool=callgrind".to_string(),
        format!("--callgrind-out-file={}", out.display()),
    ]));
    let started = match target {
        Target::Haproxy => anchors::haproxy_tls(dir, backend).await,
        Target::Nginx => anchors::nginx_tls(dir, backend).await,
        Target::Relay => Ok(start_gateway(dir, backend).await).map(|(g, _, relay)| (g, relay)),
        Target::Electrum => Ok(start_gateway(dir, backend).await).map(|(g, electrum, _)| (g, electrum)),
    };
    anchors::wrap_starts(None);
    let (process, addr) = started?;
    // Bounded, so a target that stops answering under valgrind costs a row, not the run.
    let served = tokio::time::timeout(std::time::Duration::from_secs(120), serve(addr, tls, requests, batch))
        .await
        .unwrap_or(0);
    stop(process, addr)?;
    if served != requests {
        return Err(format!("{served} of {requests} requests answered"));
    }
    if let Ok(keep) = std::env::var("GATEHOUSE_CALLGRIND_KEEP") {
        let kept = Path::new(&keep).join(format!("callgrind.{}.{batch}.{requests}.out", target.key()));
        if let Err(e) = std::fs::create_dir_all(&keep).and_then(|()| std::fs::copy(&out, &kept)) {
            eprintln!("bench: could not keep {}: {e}", kept.display());
        }
    }
    callgrind_total(&out).ok_or_else(|| format!("no instruction total in {}", out.display()))
}

/// `n` wallet-mix requests over one TLS connection, `batch` written at once and all of them answered
/// before the next batch; returns the answers counted.
async fn serve(addr: SocketAddr, tls: &TlsConnector, n: u64, batch: u64) -> u64 {
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return 0;
    };
    let _ = tcp.set_nodelay(true);
    let Ok(s) = tls.connect(ServerName::try_from("localhost").unwrap(), tcp).await else {
        return 0;
    };
    let mut s = BufReader::new(s);
    let mut line = Vec::new();
    if s.write_all(VERSION).await.is_err() || s.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
        return 0;
    }
    let mut requests = MIX.iter().copied().cycle().take(n as usize).peekable();
    let mut out = Vec::new();
    let mut answered = 0u64;
    'serving: while requests.peek().is_some() {
        out.clear();
        let mut written = 0;
        for request in requests.by_ref().take(batch as usize) {
            out.extend_from_slice(request);
            written += 1;
        }
        if s.write_all(&out).await.is_err() {
            break;
        }
        for _ in 0..written {
            line.clear();
            if s.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                break 'serving;
            }
            answered += 1;
        }
    }
    let _ = s.shutdown().await;
    answered
}

/// Asks the process to stop (callgrind writes its counts at exit) and waits up to 60 s for it to go. Under
/// valgrind a process waiting for events may not see the signal until an event comes, so a connection
/// to `addr` wakes it every half second.
fn stop(mut process: Gateway, addr: SocketAddr) -> Result<(), String> {
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &process.pid().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    if !signalled {
        return Err("could not signal the process to stop".into());
    }
    for i in 0..600 {
        if let Ok(Some(_)) = process.child.try_wait() {
            return Ok(());
        }
        if i % 5 == 4 {
            let _ = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(100));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Dropping it kills it.
    Err("the process did not stop within 60 s of SIGTERM".into())
}

/// The `totals:` (or `summary:`) line of a callgrind output file.
fn callgrind_total(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|n| n.trim().parse().ok())
}
