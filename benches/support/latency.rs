//! The latency row against the anchors: 10 connections with one request in flight each, so every figure is a
//! round trip through the process in the middle rather than a queue in front of it. The direct path, HAProxy,
//! nginx and the gateway's two TLS fronts all stay up, pinned as in the CPU rows, and are measured in
//! interleaved rounds: each round takes every target once, each target's added latency is taken against the
//! direct path of the same round, and the median over rounds is reported, so a burst of load from elsewhere
//! on the machine moves one round, not one target.

use super::anchors;
use super::{start_gateway, Gateway, MIX};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const CONNS: usize = 10;
/// A target of the table: its process (kept alive while measured; `None` for the gateway's own fronts) and
/// address, or why it could not run.
type Target = Result<(Option<Gateway>, SocketAddr), String>;
const ROUNDS: usize = 5;

/// One connection sending one request at a time until `until`: each round trip's latency.
async fn ping_pong<S: AsyncRead + AsyncWrite + Unpin>(s: S, until: Instant, first: usize) -> Vec<Duration> {
    let mut s = BufReader::new(s);
    let mut line = Vec::with_capacity(256);
    let mut lat = Vec::new();
    // server.version first, as a wallet does (the Electrum front requires it); not timed.
    s.write_all(super::VERSION).await.unwrap();
    s.read_until(b'\n', &mut line).await.unwrap();
    let mut i = first;
    while Instant::now() < until {
        line.clear();
        let t0 = Instant::now();
        s.write_all(MIX[i % MIX.len()]).await.unwrap();
        if s.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            break;
        }
        lat.push(t0.elapsed());
        i += 1;
    }
    lat
}

/// p50 and p99 over `CONNS` connections for `secs`.
async fn one(addr: SocketAddr, tls: Option<&TlsConnector>, secs: f64) -> (Duration, Duration) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CONNS {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        match tls {
            None => {
                tasks.spawn(ping_pong(s, until, c));
            }
            Some(conn) => {
                let t = conn
                    .connect(ServerName::try_from("localhost").unwrap(), s)
                    .await
                    .unwrap();
                tasks.spawn(ping_pong(t, until, c));
            }
        }
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        all.get(i).copied().unwrap_or_default()
    };
    (pct(0.5), pct(0.99))
}

/// The middle value (the upper one of an even count); NaN for none.
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The latency table: every target's p50 and p99 added over the direct path, medians of interleaved rounds.
pub(super) async fn run(dir: &Path, backend: SocketAddr, resuming: &TlsConnector, secs: f64) {
    let per = (secs / 5.0).max(0.2);
    let (gw, electrum, relay) = start_gateway(dir, backend).await;
    let haproxy = anchors::haproxy_tls(dir, backend).await;
    let nginx = anchors::nginx_tls(dir, backend).await;
    let mut targets: Vec<(&str, Target)> = vec![
        ("HAProxy 2.6 (TLS → TCP, 1 thread)", haproxy.map(|(g, a)| (Some(g), a))),
        ("nginx stream (TLS → TCP, 1 worker)", nginx.map(|(g, a)| (Some(g), a))),
        ("Gatehouse relay front (TLS → TCP)", Ok((None, relay))),
        ("Gatehouse Electrum front (cost accounting on)", Ok((None, electrum))),
    ];
    // Added latency per target and round, in µs: (p50, p99).
    let mut added: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); targets.len()];
    let mut direct: (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for _ in 0..ROUNDS {
        let (d50, d99) = one(backend, None, per).await;
        direct.0.push(us(d50));
        direct.1.push(us(d99));
        for (i, (_, t)) in targets.iter().enumerate() {
            if let Ok((_, addr)) = t {
                let (p50, p99) = one(*addr, Some(resuming), per).await;
                added[i].0.push(us(p50) - us(d50));
                added[i].1.push(us(p99) - us(d99));
            }
        }
    }
    drop(gw);
    println!("\n## Latency: {CONNS} connections x 1 request in flight\n");
    println!(
        "Added over the direct path (stub alone, {:.0} / {:.0} µs p50 / p99); medians of {ROUNDS} interleaved rounds of {per:.1} s per target.\n",
        median(direct.0.clone()),
        median(direct.1.clone())
    );
    println!("| target | added p50 | added p99 | p50 vs HAProxy | p99 vs HAProxy |");
    println!("|---|---|---|---|---|");
    let base = targets[0]
        .1
        .is_ok()
        .then(|| (median(added[0].0.clone()), median(added[0].1.clone())));
    for (i, (name, t)) in targets.iter_mut().enumerate() {
        match t {
            Ok(_) => {
                let (a50, a99) = (median(added[i].0.clone()), median(added[i].1.clone()));
                let (v50, v99) = base.map_or(("–".to_string(), "–".to_string()), |(b50, b99)| {
                    (format!("{:+.0} µs", a50 - b50), format!("{:+.0} µs", a99 - b99))
                });
                println!("| {name} | {a50:.0} µs | {a99:.0} µs | {v50} | {v99} |");
            }
            Err(e) => println!("| {name} | skipped: {e} | | | |"),
        }
    }
}
