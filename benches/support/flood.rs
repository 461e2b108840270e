//! Honest wallets against abusers, in front of a saturated backend: the load generator, the targets it is
//! pointed at (the backend itself, HAProxy in TCP mode, the gateway with and without its upstream
//! scheduler) and the table the rows make.
//!
//! Honest wallets: one connection each, bound to their own 127.20.N.1 (each its own /24), `server.version`,
//! then get_balance + get_history + listunspent of their own scripthash every 0.5 s, each request's latency
//! recorded. Abusers: connections bound to 127.30.G.A (G groups of /24s, A addresses each, several
//! connections per address), each keeping [`ABUSER_IN_FLIGHT`] heavy requests outstanding and reconnecting
//! whenever cut or refused, after a short doubling back-off (a refused reconnect loop would otherwise burn
//! the load generator's core). First a quiet phase (honest wallets only), then the attack.

use super::{anchors, free_port, Gateway};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{sleep, sleep_until, timeout_at};

/// Requests each abuser connection keeps outstanding.
pub const ABUSER_IN_FLIGHT: usize = 8;
/// How often an honest wallet asks about its scripthash.
const HONEST_PERIOD: Duration = Duration::from_millis(500);
/// An abuser's first wait before reconnecting, doubled on each failure up to [`BACKOFF_MAX`]; reset once
/// a connection has had an answer.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_millis(1600);
/// After the attack, honest wallets wait this long at most for their outstanding answers while the
/// abusers keep going; what is still unanswered then counts with the time it waited.
const DRAIN: Duration = Duration::from_secs(30);
/// An honest wallet reconnects this long after its connection failed.
const HONEST_RECONNECT: Duration = Duration::from_millis(100);
/// A reply line whose first bytes hold `"error"` is an error; results (history, headers) never start so.
const HEAD: usize = 96;

/// One flood's shape.
#[derive(Clone, Copy)]
pub struct Size {
    pub honest: usize,
    pub conns: usize,
    pub addrs: usize,
    pub groups: usize,
}

/// 5 honest wallets; 480 abuser connections from 120 addresses over 4 /24s.
pub const FLOOD: Size = Size {
    honest: 5,
    conns: 480,
    addrs: 120,
    groups: 4,
};
/// Ten times the flood: 4,800 connections from 1,200 addresses over 40 /24s.
pub const FLOOD_10X: Size = Size {
    honest: 5,
    conns: 4800,
    addrs: 1200,
    groups: 40,
};

impl Size {
    fn label(&self) -> String {
        format!("{} conns / {} addrs / {} /24s", self.conns, self.addrs, self.groups)
    }

    /// The source address of abuser connection `i`: connections are spread over addresses, addresses over
    /// groups.
    fn abuser_src(&self, i: usize) -> Ipv4Addr {
        let addr = i % self.addrs;
        let per_group = self.addrs.div_ceil(self.groups);
        let (g, a) = (addr / per_group, addr % per_group);
        Ipv4Addr::new(127, 30 + (g / 256) as u8, (g % 256) as u8, 1 + a as u8)
    }
}

/// The phases' lengths.
#[derive(Clone, Copy)]
pub struct Phases {
    pub quiet: Duration,
    pub attack: Duration,
}

impl Phases {
    /// 15 s quiet then 30 s of attack; `--quick`: 5 s then 10 s.
    pub fn new(quick: bool) -> Phases {
        let (q, a) = if quick { (5, 10) } else { (15, 30) };
        Phases {
            quiet: Duration::from_secs(q),
            attack: Duration::from_secs(a),
        }
    }
}

/// What the wallets and the abusers ask.
pub struct Requests {
    /// Each honest wallet's own scripthash (wallet i asks about `honest[i % len]`).
    pub honest: Vec<String>,
    /// The abusers' heavy requests as (method, params JSON), cycled.
    pub heavy: Vec<(&'static str, String)>,
}

/// What one flood measured.
#[derive(Default)]
pub struct Outcome {
    quiet: Vec<Duration>,
    attack: Vec<Duration>,
    /// Every attack-phase honest request: wallet, method, sent after the attack began, took.
    attack_log: Vec<(usize, usize, Duration, Duration)>,
    honest_errors: u64,
    honest_unanswered: u64,
    honest_answers_attack: u64,
    abuser_answers: u64,
    abuser_errors: u64,
    abuser_connects: u64,
    attack_secs: f64,
}

fn pct(v: &mut [Duration], p: f64) -> Option<Duration> {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied()
}

fn ms(d: Option<Duration>) -> String {
    match d {
        None => "–".to_string(),
        Some(d) => {
            let ms = d.as_secs_f64() * 1e3;
            if ms < 10.0 {
                format!("{ms:.1}")
            } else {
                format!("{:.0}", ms)
            }
        }
    }
}

impl Outcome {
    /// `GATEHOUSE_FLOOD_TRACE`: the slowest honest requests of the attack, with when they were sent, to
    /// tell a start-of-attack transient from a steady tail.
    fn trace_slowest(&mut self, n: usize) {
        const METHODS: [&str; 3] = ["get_balance", "get_history", "listunspent"];
        self.attack_log.sort_by_key(|e| std::cmp::Reverse(e.3));
        for (w, m, at, took) in self.attack_log.iter().take(n) {
            eprintln!(
                "bench: slow honest: wallet {w} {} sent {:.3} s into the attack, took {:.1} ms",
                METHODS[*m],
                at.as_secs_f64(),
                took.as_secs_f64() * 1e3
            );
        }
    }

    /// One markdown row: target, flood, honest p50 and p99 quiet → attack, the p99 ratio, the abusers'
    /// answers/s and share of all answers, honest errors and unanswered requests, the abusers' connects and
    /// error replies.
    fn row(&mut self, target: &str, size: &Size) -> String {
        let (q50, q99) = (pct(&mut self.quiet, 0.5), pct(&mut self.quiet, 0.99));
        let (a50, a99) = (pct(&mut self.attack, 0.5), pct(&mut self.attack, 0.99));
        let ratio = match (q99, a99) {
            (Some(q), Some(a)) if q > Duration::ZERO => {
                let r = a.as_secs_f64() / q.as_secs_f64();
                format!("{r:.2}{}", if r <= 1.5 { " ✓" } else { "" })
            }
            _ => "–".to_string(),
        };
        let all = self.abuser_answers + self.honest_answers_attack;
        let share = if all == 0 {
            "–".to_string()
        } else {
            format!("{:.1} %", self.abuser_answers as f64 * 100.0 / all as f64)
        };
        format!(
            "| {target} | {} | {} → {} ms | {} → {} ms | {ratio} | {:.0} | {share} | {} / {} | {} / {} |",
            size.label(),
            ms(q50),
            ms(a50),
            ms(q99),
            ms(a99),
            self.abuser_answers as f64 / self.attack_secs,
            self.honest_errors,
            self.honest_unanswered,
            self.abuser_connects,
            self.abuser_errors,
        )
    }
}

/// A connection from `src` to `to`, bounded by `deadline`.
async fn connect_from(src: Ipv4Addr, to: SocketAddr, deadline: Instant) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let s = timeout_at(deadline.into(), s.connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

const VERSION: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"server.version\",\"params\":[\"flood\",\"1.4\"]}\n";

fn request(out: &mut Vec<u8>, id: u64, method: &str, params: &str) {
    use std::io::Write;
    let _ = writeln!(
        out,
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"{method}\",\"params\":{params}}}"
    );
}

fn is_error(head: &[u8]) -> bool {
    head.windows(7).any(|w| w == b"\"error\"")
}

#[derive(Default)]
struct HonestStats {
    quiet: Vec<Duration>,
    attack: Vec<Duration>,
    attack_log: Vec<(usize, usize, Duration, Duration)>,
    errors: u64,
    unanswered: u64,
    answers_attack: u64,
}

impl HonestStats {
    fn record(&mut self, sent: Instant, took: Duration, attack_at: Instant, method: usize) {
        if sent < attack_at {
            self.quiet.push(took);
        } else {
            self.attack.push(took);
            self.attack_log.push((0, method, sent - attack_at, took));
        }
    }
}

/// One honest wallet: a request set every [`HONEST_PERIOD`] until `end`, sent on schedule whether or not
/// the previous ones were answered (a wallet that waited would hide the backlog: coordinated omission),
/// then waits for the outstanding answers until `drain_end`. A request still unanswered then counts with
/// the time it waited, and as unanswered; one whose connection was cut counts as an error.
async fn honest(
    src: Ipv4Addr,
    to: SocketAddr,
    scripthash: String,
    attack_at: Instant,
    end: Instant,
    drain_end: Instant,
) -> HonestStats {
    let mut st = HonestStats::default();
    let methods = [
        "blockchain.scripthash.get_balance",
        "blockchain.scripthash.get_history",
        "blockchain.scripthash.listunspent",
    ];
    let params = format!("[\"{scripthash}\"]");
    let mut out = Vec::with_capacity(512);
    let mut line = Vec::with_capacity(4096);
    let mut id = 1u64;
    let mut pending: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    'conn: while Instant::now() < end {
        let Ok(s) = connect_from(src, to, end).await else {
            st.errors += 1;
            sleep(HONEST_RECONNECT).await;
            continue;
        };
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        line.clear();
        if w.write_all(VERSION).await.is_err()
            || !matches!(timeout_at(end.into(), r.read_until(b'\n', &mut line)).await, Ok(Ok(n)) if n > 0)
        {
            if Instant::now() < end {
                st.errors += 1;
                sleep(HONEST_RECONNECT).await;
            }
            continue;
        }
        line.clear();
        let mut tick = tokio::time::interval(HONEST_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sending = Instant::now() < end;
            if !sending && pending.is_empty() {
                break 'conn;
            }
            tokio::select! {
                _ = tick.tick(), if sending => {
                    let t0 = Instant::now();
                    out.clear();
                    for m in methods {
                        request(&mut out, id, m, &params);
                        pending.insert(id, t0);
                        id += 1;
                    }
                    if w.write_all(&out).await.is_err() {
                        st.errors += pending.len() as u64;
                        pending.clear();
                        sleep(HONEST_RECONNECT).await;
                        continue 'conn;
                    }
                }
                // read_until keeps what it read in `line` when the other branch wins: the line continues.
                got = timeout_at(drain_end.into(), r.read_until(b'\n', &mut line)) => match got {
                    Err(_) => {
                        for (i, t0) in pending.drain() {
                            st.record(t0, drain_end - t0, attack_at, (i as usize - 1) % methods.len());
                            st.unanswered += 1;
                        }
                        break 'conn;
                    }
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        st.errors += pending.len() as u64;
                        pending.clear();
                        sleep(HONEST_RECONNECT).await;
                        continue 'conn;
                    }
                    Ok(Ok(_)) => {
                        let now = Instant::now();
                        let reply: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
                        line.clear();
                        let Some((i, t0)) = reply["id"].as_u64().and_then(|i| Some((i, pending.remove(&i)?))) else {
                            continue;
                        };
                        st.record(t0, now - t0, attack_at, (i as usize - 1) % methods.len());
                        if reply.get("error").is_some_and(|e| !e.is_null()) || reply.get("result").is_none() {
                            st.errors += 1;
                        } else if now >= attack_at && now < end {
                            st.answers_attack += 1;
                        }
                    }
                },
            }
        }
    }
    st
}

struct AbuseCounters {
    /// Answers after this are not counted (the abusers keep going while honest answers drain).
    count_until: Instant,
    answers: AtomicU64,
    errors: AtomicU64,
    connects: AtomicU64,
}

/// One abuser connection, reconnecting until `end`: [`ABUSER_IN_FLIGHT`] heavy requests outstanding, a
/// new one sent for each reply. Replies are scanned for newlines in a fixed buffer, never held whole
/// (thousands of connections receive replies of hundreds of KB).
async fn abuser(
    src: Ipv4Addr,
    to: SocketAddr,
    heavy: Arc<Vec<(&'static str, String)>>,
    end: Instant,
    c: Arc<AbuseCounters>,
    first: usize,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(1024);
    let mut backoff = BACKOFF_MIN;
    let mut next = first;
    let mut id = 1u64;
    while Instant::now() < end {
        let answered = match connect_from(src, to, end).await {
            Ok(s) => {
                if Instant::now() < c.count_until {
                    c.connects.fetch_add(1, Relaxed);
                }
                abuse(s, &heavy, end, &c, &mut buf, &mut out, &mut next, &mut id).await
            }
            Err(_) => false,
        };
        if answered {
            backoff = BACKOFF_MIN;
        }
        if Instant::now() + backoff >= end {
            return;
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One abuser connection's life; whether it got any answer.
#[allow(clippy::too_many_arguments)]
async fn abuse(
    s: TcpStream,
    heavy: &[(&'static str, String)],
    end: Instant,
    c: &AbuseCounters,
    buf: &mut [u8],
    out: &mut Vec<u8>,
    next: &mut usize,
    id: &mut u64,
) -> bool {
    let (mut r, mut w) = s.into_split();
    let mut send = |n: usize, out: &mut Vec<u8>| {
        out.clear();
        for _ in 0..n {
            let (m, p) = &heavy[*next % heavy.len()];
            *next += 1;
            request(out, *id, m, p);
            *id += 1;
        }
    };
    if w.write_all(VERSION).await.is_err() {
        return false;
    }
    let mut head = [0u8; HEAD];
    let mut head_len = 0usize;
    let mut versioned = false;
    let mut any = false;
    loop {
        let n = match timeout_at(end.into(), r.read(buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return any,
        };
        let mut replies = 0usize;
        for chunk in buf[..n].split_inclusive(|&b| b == b'\n') {
            let take = chunk.len().min(HEAD - head_len);
            head[head_len..head_len + take].copy_from_slice(&chunk[..take]);
            head_len += take;
            if chunk.last() == Some(&b'\n') {
                if !versioned {
                    versioned = true;
                    replies += ABUSER_IN_FLIGHT;
                } else {
                    let counted = Instant::now() < c.count_until;
                    if is_error(&head[..head_len]) {
                        if counted {
                            c.errors.fetch_add(1, Relaxed);
                        }
                    } else {
                        if counted {
                            c.answers.fetch_add(1, Relaxed);
                        }
                        any = true;
                    }
                    replies += 1;
                }
                head_len = 0;
            }
        }
        if replies > 0 && Instant::now() < end {
            send(replies, out);
            if w.write_all(out).await.is_err() {
                return any;
            }
        }
    }
}

/// Runs one flood against `to`: the quiet phase, then the attack; returns what was measured.
pub async fn run(to: SocketAddr, size: &Size, req: &Requests, phases: &Phases) -> Outcome {
    let start = Instant::now();
    let attack_at = start + phases.quiet;
    let end = attack_at + phases.attack;
    let drain_end = end + DRAIN;
    // The honest wallets run on a thread and runtime of their own: thousands of abuser connections on the
    // same runtime would delay their reads and add the load generator's own queueing to their latency.
    let (done, wallets) = tokio::sync::oneshot::channel();
    let shs: Vec<String> = (0..size.honest)
        .map(|i| req.honest[i % req.honest.len()].clone())
        .collect();
    std::thread::Builder::new()
        .name("honest-wallets".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let stats = rt.block_on(async move {
                let mut set = tokio::task::JoinSet::new();
                for (i, sh) in shs.into_iter().enumerate() {
                    set.spawn(honest(
                        Ipv4Addr::new(127, 20, i as u8, 1),
                        to,
                        sh,
                        attack_at,
                        end,
                        drain_end,
                    ));
                }
                let mut all = Vec::new();
                while let Some(st) = set.join_next().await {
                    all.push(st.expect("honest wallet task"));
                }
                all
            });
            let _ = done.send(stats);
        })
        .expect("spawn the honest wallets' thread");
    sleep_until(attack_at.into()).await;
    let counters = Arc::new(AbuseCounters {
        count_until: end,
        answers: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        connects: AtomicU64::new(0),
    });
    let heavy = Arc::new(req.heavy.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (gone, abusers_gone) = tokio::sync::oneshot::channel::<()>();
    let (conns, src_of, c) = (size.conns, *size, counters.clone());
    std::thread::Builder::new()
        .name("abusers".into())
        .spawn(move || {
            // The abusers stand for other machines: on this one they must not take the load core from the
            // honest wallets and the backend when both want it, or the table would show the load
            // generator's own queueing. The lowest priority lets them have every cycle the others leave.
            lowest_priority();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut abusers = tokio::task::JoinSet::new();
                for i in 0..conns {
                    abusers.spawn(abuser(src_of.abuser_src(i), to, heavy.clone(), drain_end, c.clone(), i));
                }
                let _ = stopped.await;
                // The abusers kept the backend busy until the honest answers were in; closing their sockets
                // now lets the target drop their work.
                abusers.abort_all();
                while abusers.join_next().await.is_some() {}
            });
            let _ = gone.send(());
        })
        .expect("spawn the abusers' thread");
    let mut o = Outcome::default();
    for (w, st) in wallets
        .await
        .expect("the honest wallets' thread")
        .into_iter()
        .enumerate()
    {
        o.quiet.extend(st.quiet);
        o.attack.extend(st.attack);
        o.attack_log
            .extend(st.attack_log.into_iter().map(|(_, m, at, took)| (w, m, at, took)));
        o.honest_errors += st.errors;
        o.honest_unanswered += st.unanswered;
        o.honest_answers_attack += st.answers_attack;
    }
    o.attack_secs = phases.attack.as_secs_f64();
    o.abuser_answers = counters.answers.load(Relaxed);
    o.abuser_errors = counters.errors.load(Relaxed);
    o.abuser_connects = counters.connects.load(Relaxed);
    let _ = stop.send(());
    let _ = abusers_gone.await;
    if o.abuser_connects == 0 {
        panic!("flood against {to}: no abuser connection was accepted (are 127.30.x.y addresses usable here?)");
    }
    if o.quiet.is_empty() {
        panic!("flood against {to}: no honest wallet got an answer in the quiet phase (is the target serving?)");
    }
    o
}

/// Puts the calling thread at nice 19; says so when it cannot. A system call, not `renice`: starting a
/// process forks this one, large after earlier rows, and while the fork copies its memory map every thread
/// here that touches new memory waits, the honest wallets' among them, at the very instant the attack starts.
fn lowest_priority() {
    if let Err(e) = gatehouse::sys::priority::set_this_thread_nice(19) {
        eprintln!(
            "bench: could not lower the abusers' thread priority ({e}); honest latency includes load-core contention"
        );
    }
}

/// Waits until `to` answers an honest wallet's get_balance within 100 ms again (the previous row's backlog
/// drained), for up to `limit`.
pub async fn settle(to: SocketAddr, scripthash: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    request(
        &mut out,
        1,
        "blockchain.scripthash.get_balance",
        &format!("[\"{scripthash}\"]"),
    );
    while Instant::now() < deadline {
        if let Ok(s) = connect_from(Ipv4Addr::new(127, 21, 0, 1), to, deadline).await {
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            if w.write_all(VERSION).await.is_ok()
                && matches!(timeout_at(deadline.into(), r.read_until(b'\n', &mut line)).await, Ok(Ok(n)) if n > 0)
            {
                let t0 = Instant::now();
                line.clear();
                if w.write_all(&out).await.is_ok()
                    && matches!(timeout_at(deadline.into(), r.read_until(b'\n', &mut line)).await, Ok(Ok(n)) if n > 0)
                    && t0.elapsed() < Duration::from_millis(100)
                {
                    return;
                }
            }
        }
        sleep(Duration::from_millis(200)).await;
    }
    panic!("{to} did not answer get_balance within 100 ms again within {limit:?} after the previous row");
}

/// Raises this process's open-file limit to its hard limit, and the hard limit to `want` when it is lower
/// (which needs CAP_SYS_RESOURCE), so the flood's sockets fit; children (the gateway, HAProxy, ElectrumX)
/// inherit it. Stops the bench when fewer than `want` files can be had.
pub fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only touch the struct on this stack frame.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            panic!("getrlimit: {}", std::io::Error::last_os_error());
        }
        let hard = lim.rlim_max;
        lim.rlim_max = hard.max(want);
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            lim.rlim_max = hard;
            lim.rlim_cur = hard;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    assert!(
        lim.rlim_cur >= want,
        "the flood needs {want} open files and the limit is {}: raise `ulimit -Hn` (or run with CAP_SYS_RESOURCE)",
        lim.rlim_cur
    );
}

/// The targets a flood is pointed at.
#[derive(Clone, Copy, PartialEq)]
pub enum Target {
    /// Nothing in front: the backend itself.
    Direct,
    /// HAProxy in TCP mode (no protocol awareness), one thread.
    Haproxy,
    /// The gateway's Electrum front with its scheduler off (`max_in_flight = "off"`, or no key in a build
    /// without the scheduler, which behaves so).
    GatehouseOff,
    /// The gateway with the scheduler's defaults.
    GatehouseDefault,
    /// The gateway with a hand-set budget: [`HAND_SET`], or `GATEHOUSE_FLOOD_UPSTREAM`'s lines.
    GatehouseHandSet,
}

/// The hand-set row's `[front.upstream]` lines: what an operator who knows the backend serves one request
/// at a time would configure, to compare with what the learned window finds.
const HAND_SET: &str = "max_in_flight = 2\nheavy_in_flight = 1";

/// The hand-set row's lines: `GATEHOUSE_FLOOD_UPSTREAM` (`;` between lines) or [`HAND_SET`].
fn hand_set() -> String {
    std::env::var("GATEHOUSE_FLOOD_UPSTREAM")
        .map(|v| v.replace(';', "\n"))
        .unwrap_or_else(|_| HAND_SET.to_string())
}

impl Target {
    pub const ALL: [Target; 5] = [
        Target::Direct,
        Target::Haproxy,
        Target::GatehouseOff,
        Target::GatehouseDefault,
        Target::GatehouseHandSet,
    ];

    /// Its name in `GATEHOUSE_FLOOD_TARGETS`.
    fn key(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Haproxy => "haproxy",
            Target::GatehouseOff => "off",
            Target::GatehouseDefault => "default",
            Target::GatehouseHandSet => "hand",
        }
    }

    fn name(self, direct: &str) -> String {
        match self {
            Target::Direct => direct.to_string(),
            Target::Haproxy => "HAProxy (TCP mode, 1 thread)".to_string(),
            Target::GatehouseOff => "Gatehouse without the scheduler (`max_in_flight = \"off\"`)".to_string(),
            Target::GatehouseDefault => "Gatehouse with the scheduler (defaults)".to_string(),
            Target::GatehouseHandSet => format!(
                "Gatehouse with a hand-set budget (`{}`)",
                hand_set().replace('\n', "`, `")
            ),
        }
    }

    /// The `[front.upstream]` line this target's gateway gets.
    fn upstream_key(self, scheduler: bool) -> String {
        match self {
            Target::GatehouseOff if scheduler => "max_in_flight = \"off\"".to_string(),
            Target::GatehouseHandSet => hand_set(),
            _ => String::new(),
        }
    }
}

/// The gateway's config for the flood rows: one Electrum front on plain TCP, the cost model at its
/// (ElectrumX-compatible) defaults, admission caps and connect rates out of the abusers' way so that what is
/// measured is the cost model and the scheduler, not connection caps. `group_private = true`: the bench's
/// clients come from 127.x.y.z, and are grouped by /24 as public addresses would be.
fn gateway_config(dir: &Path, port: u16, backend: SocketAddr, upstream_key: &str) -> String {
    let head = super::open_gates("error", 200_000);
    format!(
        r#"{head}
{admin}
[cost]
group_private = true

[[front]]
name = "electrum"
kind = "electrum"
listen = ["127.0.0.1:{port}"]
transport = "tcp"
upstreams = ["{backend}"]
[front.upstream]
{upstream_key}
"#,
        admin = trace_admin().map_or(String::new(), |addr| {
            // Beside the config, which names it relative to itself.
            std::fs::write(dir.join(TRACE_TOKEN_FILE), TRACE_TOKEN).expect("write the admin token");
            format!("[admin]\nenabled = true\nlisten = \"{addr}\"\ntoken_file = \"{TRACE_TOKEN_FILE}\"\n")
        }),
    )
}

/// The admin token of a traced row's gateway, and its file beside the gateway's config.
const TRACE_TOKEN: &str = "flood-trace-token";
const TRACE_TOKEN_FILE: &str = "flood-admin.token";
/// The series a traced row prints (those holding one of these), when not zero.
const TRACE_SERIES: [&str; 9] = [
    "close",
    "refus",
    "ban",
    "throttl",
    "hard_limit",
    "sessions",
    "connections",
    "upstream_",
    "versions",
];

/// Under `GATEHOUSE_FLOOD_TRACE`, where the gateway's admin API listens (the same port for every row), so a
/// row can print what the gateway counted: why sessions closed, what was refused, what was banned.
fn trace_admin() -> Option<SocketAddr> {
    static ADMIN: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();
    std::env::var_os("GATEHOUSE_FLOOD_TRACE")?;
    Some(*ADMIN.get_or_init(|| SocketAddr::from(([127, 0, 0, 1], free_port()))))
}

/// Prints the gateway's counters of closes, refusals, bans and throttling (trace mode).
fn trace_counters() {
    let Some(addr) = trace_admin() else { return };
    let out = Command::new("curl")
        .args(["-s", "-H", &format!("Authorization: Bearer {TRACE_TOKEN}")])
        .arg(format!("http://{addr}/metrics"))
        .output();
    let Ok(out) = out else {
        eprintln!("bench: no curl to read the gateway's metrics");
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.starts_with('#') && TRACE_SERIES.iter().any(|w| line.contains(w)) && !line.ends_with(" 0") {
            eprintln!("bench: gateway counted: {line}");
        }
    }
}

/// Whether this build's gateway takes the scheduler's keys: `gatehouse check` on a config with
/// `max_in_flight = "auto"` passes, or refuses the key as unknown (a build without the scheduler). Any other
/// refusal is a broken bench config and stops the bench.
pub fn scheduler_in_build(dir: &Path) -> bool {
    let path = dir.join("flood-probe.toml");
    let cfg = gateway_config(
        dir,
        free_port(),
        "127.0.0.1:9".parse().unwrap(),
        "max_in_flight = \"auto\"",
    );
    std::fs::write(&path, cfg).expect("write flood-probe.toml");
    let out = Command::new(super::gateway_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run gatehouse check");
    if out.status.success() {
        return true;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("max_in_flight") && err.contains("unknown field") {
        return false;
    }
    panic!("gatehouse check refused the flood config: {err}");
}

/// Starts the gateway (pinned like the other rows' processes) in front of `backend`.
async fn start_gateway(dir: &Path, backend: SocketAddr, upstream_key: &str) -> Result<(Gateway, SocketAddr), String> {
    let port = free_port();
    let path = dir.join("flood.toml");
    std::fs::write(&path, gateway_config(dir, port, backend, upstream_key)).map_err(|e| e.to_string())?;
    let child = anchors::pinned(super::gateway_bin())
        .args(["run", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn gatehouse: {e}"))?;
    let gw = Gateway { child };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    if super::api_http::wait_listening(addr).await {
        Ok((gw, addr))
    } else {
        Err("the gateway did not start listening".into())
    }
}

/// The backend a table's rows stand in front of.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// Its address, ready for a new row. A backend that keeps working through a gone client's backlog
    /// (ElectrumX's reader threads do) is restarted here, so that every row starts from an idle backend.
    /// `behind_gateway`: the row puts the gateway in front, and the backend runs as the gateway's
    /// backend advice says (its own per-client limits off: the gateway applies them per real client).
    async fn fresh(&mut self, behind_gateway: bool) -> SocketAddr;
}

/// Every target at every size in front of `backend`, one markdown table. A target that cannot start fails
/// the bench (its rows would be missing silently otherwise), except the scheduler's rows in a build without
/// it, which say so.
pub async fn rows<B: Backend>(
    dir: &Path,
    backend: &mut B,
    direct: &str,
    req: &Requests,
    phases: &Phases,
    sizes: &[Size],
) {
    let scheduler = scheduler_in_build(dir);
    if !scheduler {
        eprintln!("bench: this gatehouse build refuses `max_in_flight` (no upstream scheduler): its rows are skipped");
    }
    // `GATEHOUSE_FLOOD_TARGETS=off,default` and `GATEHOUSE_FLOOD_SIZES=1,10` pick rows, for experiments.
    let picked = |var: &str, key: &str| std::env::var(var).map_or(true, |v| v.split(',').any(|k| k.trim() == key));
    let mut lines = Vec::new();
    for target in Target::ALL
        .into_iter()
        .filter(|t| picked("GATEHOUSE_FLOOD_TARGETS", t.key()))
    {
        for size in sizes
            .iter()
            .filter(|s| picked("GATEHOUSE_FLOOD_SIZES", &(s.conns / FLOOD.conns).to_string()))
        {
            let name = target.name(direct);
            if matches!(target, Target::GatehouseDefault | Target::GatehouseHandSet) && !scheduler {
                lines.push(format!("| {name} | {} | not in this build | | | | | | |", size.label()));
                continue;
            }
            let backend = backend.fresh(!matches!(target, Target::Direct | Target::Haproxy)).await;
            settle(backend, &req.honest[0], Duration::from_secs(60)).await;
            let (_proc, addr) = match target {
                Target::Direct => (None, backend),
                Target::Haproxy => {
                    let (p, a) = anchors::haproxy_tcp(dir, backend)
                        .await
                        .unwrap_or_else(|e| panic!("HAProxy row: {e}"));
                    (Some(p), a)
                }
                _ => {
                    let (g, a) = start_gateway(dir, backend, &target.upstream_key(scheduler))
                        .await
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    (Some(g), a)
                }
            };
            eprintln!("bench: flood row: {name}, {}", size.label());
            let mut o = run(addr, size, req, phases).await;
            if std::env::var_os("GATEHOUSE_FLOOD_TRACE").is_some() {
                o.trace_slowest(20);
                trace_counters();
            }
            let line = o.row(&name, size);
            eprintln!("{line}");
            lines.push(line);
        }
    }
    println!(
        "| target | flood | honest p50 quiet → attack | honest p99 quiet → attack | p99 attack / quiet (goal ≤ 1.5) | abusers' answers/s | abusers' share of answers | honest errors / unanswered | abusers' connects / error replies |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for l in lines {
        println!("{l}");
    }
}
