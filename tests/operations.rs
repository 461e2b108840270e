//! Operating the real `gatehouse` binary without dropping a wallet: hot reload by
//! SIGHUP and `POST /v1/reload` under 200 open TLS Electrum sessions, certificate renewal by file
//! replacement, and the SIGTERM drain of 1,000 idle sessions spread over the configured window.
//!
//! Every child process is owned by a [`Proc`] guard that kills it on drop (so a failing assertion never
//! leaves a gateway behind), and every wait is bounded. Stub backends run on the test's own threads.

use rustls::pki_types::CertificateDer;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use std::thread;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

mod support;
use support::backends::echo_backend;
use support::clients::{http_blocking, sample};
use support::gateway::RELAXED_KEYS;
use support::net::{connect_from, echoes, free_addr, refused_from};
use support::process::{wait_accepting, Proc};
use support::tls::{localhost_cert, replace, server_name, tls_connector};
const ADMIN_TOKEN: &str = "operations-test-token-0123456789";

// ---------------------------------------------------------------------------------------------------------------
// Sockets, files and HTTP

/// These tests open thousands of client sockets; run one at a time so one test's outgoing connections
/// cannot take the port another has just picked for its gateway.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Lifts this process's soft open-file limit to at least `want` (capped by the hard limit); returns the
/// soft limit now in force.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass, which lives on this frame.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// One exchange with the admin API: (status, JSON body or Null, raw body).
fn http(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, serde_json::Value, String) {
    let (status, body) = http_blocking(admin, method, path, token, "");
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    (status, json, body)
}

// ---------------------------------------------------------------------------------------------------------------
// Stub backends

/// The stub's answer to one JSON-RPC request object.
fn stub_reply(req: &serde_json::Value) -> serde_json::Value {
    let method = req["method"].as_str().unwrap_or("");
    let result = match method {
        "server.version" => {
            let hi = req["params"][1][1].as_str().unwrap_or("1.4").to_string();
            serde_json::json!(["StubElectrum 1.0", hi])
        }
        "blockchain.headers.subscribe" => serde_json::json!({ "height": 800_000, "hex": "00".repeat(80) }),
        "blockchain.scripthash.subscribe" => serde_json::json!("ab".repeat(32)),
        "blockchain.estimatefee" => serde_json::json!(0.00012),
        _ => serde_json::Value::Null,
    };
    serde_json::json!({ "jsonrpc": "2.0", "id": req["id"], "result": result })
}

/// A line-based Electrum backend on std threads (one per connection) that answers server.version,
/// blockchain.headers.subscribe, blockchain.scripthash.subscribe, blockchain.estimatefee and server.ping
/// (and anything else with null), echoing the id; batches get a batch back. Runs until the test ends.
fn stub_electrum() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(s) = conn else { return };
            thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let Ok(mut w) = s.try_clone() else { return };
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    let Ok(req) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    let reply = match &req {
                        serde_json::Value::Array(items) => {
                            serde_json::Value::Array(items.iter().map(stub_reply).collect())
                        }
                        _ => stub_reply(&req),
                    };
                    let mut out = reply.to_string();
                    out.push('\n');
                    if w.write_all(out.as_bytes()).is_err() {
                        break;
                    }
                }
                let _ = w.shutdown(Shutdown::Both);
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------------------------
// Electrum clients

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// One wallet session: newline-delimited JSON-RPC over any stream (plain TCP or TLS).
struct Wallet {
    name: String,
    r: tokio::io::BufReader<BoxRead>,
    w: BoxWrite,
    next_id: u64,
}

impl Wallet {
    fn new<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(name: impl Into<String>, s: S) -> Wallet {
        let (r, w) = tokio::io::split(s);
        Wallet {
            name: name.into(),
            r: tokio::io::BufReader::new(Box::new(r) as BoxRead),
            w: Box::new(w),
            next_id: 1,
        }
    }

    /// Sends one request and returns the reply with its id (notifications in between are skipped).
    /// Errors name the session and what happened: "closed", a timeout, an I/O error.
    async fn call(&mut self, method: &str, params: &str) -> Result<serde_json::Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"{method}\",\"params\":{params}}}\n");
        self.w
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("{}: {method}: write: {e}", self.name))?;
        self.reply_to(id, method, Duration::from_secs(10)).await
    }

    async fn reply_to(&mut self, id: u64, method: &str, limit: Duration) -> Result<serde_json::Value, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut buf = String::new();
            match tokio::time::timeout_at(deadline, self.r.read_line(&mut buf)).await {
                Err(_) => return Err(format!("{}: {method}: no reply within {limit:?}", self.name)),
                Ok(Err(e)) => return Err(format!("{}: {method}: read: {e}", self.name)),
                Ok(Ok(0)) => return Err(format!("{}: {method}: closed", self.name)),
                Ok(Ok(_)) => {}
            }
            let v: serde_json::Value =
                serde_json::from_str(&buf).map_err(|e| format!("{}: {method}: bad JSON {buf:?}: {e}", self.name))?;
            if v["id"] == id {
                return Ok(v);
            }
        }
    }

    /// A request that must succeed: its `result`.
    async fn ok(&mut self, method: &str, params: &str) -> serde_json::Value {
        let v = self.call(method, params).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(v.get("error").is_none(), "{}: {method}: {v}", self.name);
        v["result"].clone()
    }

    /// server.version then blockchain.scripthash.subscribe (and the headers subscription), as a wallet
    /// does when it connects.
    async fn handshake(&mut self) {
        let v = self.ok("server.version", r#"["ops-test", "1.4"]"#).await;
        assert_eq!(v[1], "1.4", "{}: server.version: {v}", self.name);
        let h = self.ok("blockchain.headers.subscribe", "[]").await;
        assert_eq!(h["height"], 800_000, "{}: {h}", self.name);
        let sh = format!("[\"{}\"]", "0f".repeat(32));
        let s = self.ok("blockchain.scripthash.subscribe", &sh).await;
        assert_eq!(s, "ab".repeat(32), "{}", self.name);
    }

    /// True once the gateway has closed the session (EOF or reset) within `limit`.
    async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut buf = String::new();
        loop {
            buf.clear();
            match tokio::time::timeout(limit, self.r.read_line(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// A TLS session from `from` to `to`; returns it with the leaf certificate the gateway presented.
async fn tls_session(
    tls: &TlsConnector,
    from: &str,
    to: SocketAddr,
) -> Result<(TlsStream<tokio::net::TcpStream>, CertificateDer<'static>), String> {
    let tcp = connect_from(from, to).await.map_err(|e| format!("connect: {e}"))?;
    let s = tokio::time::timeout(Duration::from_secs(10), tls.connect(server_name(), tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let leaf = s.get_ref().1.peer_certificates().ok_or("no peer certificate")?[0].clone();
    Ok((s, leaf))
}

/// Pings every session concurrently; panics listing those that did not answer. Returns them in order.
async fn ping_all(sessions: Vec<Wallet>, when: &str) -> Vec<Wallet> {
    let mut set = tokio::task::JoinSet::new();
    let n = sessions.len();
    for (i, mut w) in sessions.into_iter().enumerate() {
        set.spawn(async move {
            let r = w.call("server.ping", "[]").await;
            (i, w, r)
        });
    }
    let mut back: Vec<Option<Wallet>> = (0..n).map(|_| None).collect();
    let mut failed = Vec::new();
    while let Some(j) = set.join_next().await {
        let (i, w, r) = j.unwrap();
        match r {
            Ok(v) if v.get("error").is_none() && v["result"].is_null() => {}
            Ok(v) => failed.push(format!("{}: {v}", w.name)),
            Err(e) => failed.push(e),
        }
        back[i] = Some(w);
    }
    assert!(
        failed.is_empty(),
        "{when}: {} of {n} sessions did not answer a ping: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    back.into_iter().map(Option::unwrap).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Configs

/// Writes the admin token and returns the [admin] table for `admin`.
fn admin_table(dir: &Path, admin: SocketAddr) -> String {
    let token = dir.join("admin.token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
    format!(
        "[admin]\nenabled = true\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n",
        token.display()
    )
}

struct WalletGateway {
    listen: SocketAddr,
    backend: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    admin_table: String,
}

impl WalletGateway {
    /// One Electrum TLS front; `admission` and `cost` are appended to the global tables.
    fn config(&self, admission: &str, cost: &str) -> String {
        format!(
            "[runtime]\ndrain_deadline = \"1s\"\n\n[admission]\n{RELAXED_KEYS}{admission}\n\n\
             [cost]\nmax_sleep = \"100ms\"\n{cost}\n\n{admin}\n\
             [[front]]\nname = \"wallets\"\nkind = \"electrum\"\nlisten = [\"{listen}\"]\ntransport = \"tls\"\n\
             upstreams = [\"{backend}\"]\n\n[front.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n",
            admin = self.admin_table,
            listen = self.listen,
            backend = self.backend,
            cert = self.cert.display(),
            key = self.key.display(),
        )
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 1. 200 TLS Electrum sessions through SIGHUP, a certificate swap and a rejected reload

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_tls_electrum_sessions_survive_reloads() {
    let _serial = SERIAL.lock().await;
    raise_nofile(4096);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der_a) = localhost_cert(dir.path(), "server");
    // The renewal, prepared aside.
    let next = tempfile::tempdir().unwrap();
    let (cert_b, key_b, der_b) = localhost_cert(next.path(), "renewed");
    assert_ne!(der_a, der_b);
    let admin = free_addr();
    let gw_conf = WalletGateway {
        listen: free_addr(),
        backend: stub_electrum(),
        admin_table: admin_table(dir.path(), admin),
        cert,
        key,
    };
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, gw_conf.config("", "")).unwrap();
    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, gw_conf.listen);
    let addr = gw_conf.listen;
    let tls = tls_connector(&[der_a.clone(), der_b.clone()], rustls::DEFAULT_VERSIONS);

    // 200 wallets from 127.0.0.1, each with its version and subscriptions.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let tls = tls.clone();
        set.spawn(async move {
            let (s, leaf) = tls_session(&tls, "127.0.0.1", addr)
                .await
                .unwrap_or_else(|e| panic!("wallet {i}: {e}"));
            let mut w = Wallet::new(format!("wallet {i}"), s);
            w.handshake().await;
            (i, w, leaf)
        });
    }
    let mut wallets: Vec<(usize, Wallet)> = Vec::new();
    while let Some(j) = set.join_next().await {
        let (i, w, leaf) = j.unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));
        assert_eq!(leaf, der_a, "wallet {i} was not shown the configured certificate");
        wallets.push((i, w));
    }
    wallets.sort_by_key(|(i, _)| *i);
    let wallets: Vec<Wallet> = wallets.into_iter().map(|(_, w)| w).collect();

    // A heavier wallet from its own address (it will be banned when it crosses the hard limit): 120
    // estimatefee calls at the default 2.1 units put it near 260 units, where the others sit below 10.
    let (s, _) = tls_session(&tls, "127.0.0.5", addr).await.unwrap();
    let mut heavy = Wallet::new("heavy wallet", s);
    heavy.handshake().await;
    for _ in 0..120 {
        heavy.ok("blockchain.estimatefee", "[2]").await;
    }
    assert!(!refused_from("127.0.0.2", addr), "127.0.0.2 refused before any rule");

    // (a) SIGHUP: deny 127.0.0.2, lower the cost limits between the heavy wallet and the others, and
    // price estimatefee at twice the new hard limit.
    std::fs::write(
        &path,
        gw_conf.config(
            "deny = [\"127.0.0.2/32\"]",
            "soft_limit = 100\nhard_limit = 200\n\n[cost.methods]\n\"blockchain.estimatefee\" = 400.0\n",
        ),
    )
    .unwrap();
    gw.sighup_and_wait_reloaded();
    assert!(
        refused_from("127.0.0.2", addr),
        "127.0.0.2 admitted after the reload denied it:\n{}",
        gw.log()
    );
    // The lowered hard limit applies to the heavy wallet's next request: -101 and closed.
    let r = heavy.call("server.ping", "[]").await;
    let v = r.unwrap_or_else(|e| panic!("heavy wallet: expected -101, got {e}\n{}", gw.log()));
    assert_eq!(
        v["error"]["code"], -101,
        "the lowered hard limit did not apply to an open session's next request: {v}"
    );
    assert!(
        heavy.closed_within(Duration::from_secs(5)).await,
        "session not closed after -101"
    );
    // A wallet that connects now pays the new estimatefee price: the call itself goes through (throttled),
    // the next request is refused with -101.
    let (s, _) = tls_session(&tls, "127.0.0.6", addr).await.unwrap();
    let mut fresh = Wallet::new("fresh wallet", s);
    fresh.ok("server.version", r#"["ops-test", "1.4"]"#).await;
    fresh.call("blockchain.estimatefee", "[2]").await.unwrap();
    let v = fresh.call("server.ping", "[]").await.unwrap();
    assert_eq!(
        v["error"]["code"], -101,
        "the new estimatefee price did not apply to a new session: {v}"
    );
    // Everyone else carries on, unthrottled.
    let t = Instant::now();
    let mut wallets = ping_all(wallets, "after SIGHUP").await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "pings after SIGHUP took {:?}",
        t.elapsed()
    );

    // (b) Certificate swap: certificate first (a mismatched pair, to be ignored), then the key.
    replace(&gw_conf.cert, &std::fs::read(&cert_b).unwrap());
    replace(&gw_conf.key, &std::fs::read(&key_b).unwrap());
    let swapped = Instant::now();
    loop {
        let (_s, leaf) = tls_session(&tls, "127.0.0.1", addr)
            .await
            .unwrap_or_else(|e| panic!("handshake during the swap: {e}\n{}", gw.log()));
        if leaf == der_b {
            break;
        }
        assert_eq!(leaf, der_a, "an unknown certificate was presented");
        assert!(
            swapped.elapsed() < Duration::from_secs(2),
            "the renewed certificate was not served within 2 s:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, leaf) = tls_session(&tls, "127.0.0.1", addr).await.unwrap();
    assert_eq!(leaf, der_b, "the gateway went back to the old certificate");
    let mut renewed = Wallet::new("renewed-cert wallet", s);
    renewed.handshake().await;
    wallets = ping_all(wallets, "after the certificate swap").await;

    // (c) An invalid config through POST /v1/reload: 400 with the reason, the old config stays.
    std::fs::write(
        &path,
        gw_conf.config("deny = [\"127.0.0.3/32\"]", "soft_limit = 300\nhard_limit = 200\n"),
    )
    .unwrap();
    let (status, body, raw) = http(admin, "POST", "/v1/reload", Some(ADMIN_TOKEN));
    assert_eq!(status, 400, "invalid config not rejected: {raw}\n{}", gw.log());
    let reason = body["error"].as_str().unwrap_or_else(|| panic!("no reason: {raw}"));
    assert!(
        reason.contains("gatehouse.toml") && reason.contains("hard_limit"),
        "the reason should name the file and the key: {reason}"
    );
    assert!(
        refused_from("127.0.0.2", addr),
        "the rejected reload lifted the deny rule:\n{}",
        gw.log()
    );
    let (s, leaf) = tls_session(&tls, "127.0.0.3", addr)
        .await
        .unwrap_or_else(|e| panic!("127.0.0.3 after the rejected reload: {e}\n{}", gw.log()));
    assert_eq!(leaf, der_b);
    let mut third = Wallet::new("wallet from 127.0.0.3", s);
    third.handshake().await;
    third.ok("server.ping", "[]").await;
    wallets = ping_all(wallets, "after the rejected reload").await;
    renewed.ok("server.ping", "[]").await;
    assert_eq!(wallets.len(), 200);

    // The reloads were counted.
    let (status, _, text) = http(admin, "GET", "/metrics", Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "{text}");
    let ok = sample(&text, "gatehouse_reloads_total{result=\"ok\"}");
    let err = sample(&text, "gatehouse_reloads_total{result=\"error\"}");
    assert!(
        ok.is_some_and(|n| n >= 1.0) && err.is_some_and(|n| n >= 1.0),
        "reload counters: ok {ok:?}, error {err:?}\n{text}"
    );
    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", gw.log());
}

// ---------------------------------------------------------------------------------------------------------------
// 2. SIGTERM with 1,000 idle sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_thousand_idle_sessions_drains_spread_and_exits_zero() {
    let _serial = SERIAL.lock().await;
    const N: usize = 1000;
    // Client ends plus backend ends of every session, with room to spare.
    let limit = raise_nofile(3 * N as u64 + 256);
    assert!(
        limit >= 2 * N as u64 + 64,
        "open-file limit {limit} too low for {N} sessions"
    );
    let backend = echo_backend().await;
    let listen = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(
        &path,
        format!(
            "[runtime]\ndrain_deadline = \"4s\"\ndrain_spread = \"3s\"\n\n[admission]\n{RELAXED_KEYS}\n\
             [[front]]\nname = \"relay\"\nkind = \"peer\"\nlisten = [\"{listen}\"]\ntransport = \"tcp\"\n\
             upstreams = [\"{backend}\"]\n"
        ),
    )
    .unwrap();
    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, listen);

    // 1,000 sessions, each relayed once end to end so it is open at the backend too, then left idle.
    let mut sessions = Vec::with_capacity(N);
    for chunk in 0..N / 100 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..100 {
            set.spawn(async move {
                let mut s = connect_from("127.0.0.1", listen).await?;
                let msg = format!("session {}\n", chunk * 100 + i);
                s.write_all(msg.as_bytes()).await?;
                let mut back = vec![0u8; msg.len()];
                tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::io::AsyncReadExt::read_exact(&mut s, &mut back),
                )
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo"))??;
                assert_eq!(back, msg.as_bytes());
                Ok::<_, std::io::Error>(s)
            });
        }
        while let Some(j) = set.join_next().await {
            sessions.push(
                j.unwrap()
                    .unwrap_or_else(|e| panic!("opening sessions: {e}\n{}", gw.log())),
            );
        }
    }
    assert_eq!(sessions.len(), N);

    let stop = Instant::now();
    gw.signal(libc::SIGTERM);
    // Each session reports when the gateway closed it (None: still open after 8 s).
    let mut closes = tokio::task::JoinSet::new();
    for mut s in sessions {
        closes.spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                match tokio::time::timeout_at(
                    tokio::time::Instant::from_std(stop + Duration::from_secs(8)),
                    tokio::io::AsyncReadExt::read(&mut s, &mut buf),
                )
                .await
                {
                    Err(_) => return None,
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(stop.elapsed()),
                    Ok(Ok(_)) => {}
                }
            }
        });
    }
    // No new connections once draining.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(listen)).await;
    assert!(
        !matches!(late, Ok(Ok(_))),
        "a new connection was accepted 200 ms after SIGTERM:\n{}",
        gw.log()
    );

    // The process exits 0 before the deadline plus a little.
    let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(8)))
        .unwrap_or_else(|| panic!("gatehouse still running 8 s after SIGTERM:\n{}", gw.log()));
    let exited = stop.elapsed();
    let mut at = Vec::with_capacity(N);
    let mut still_open = 0;
    while let Some(j) = closes.join_next().await {
        match j.unwrap() {
            Some(t) => at.push(t),
            None => still_open += 1,
        }
    }
    let log = tokio::task::block_in_place(|| gw.stderr_until_eof(Duration::from_secs(5)));
    let tail = log[log.len().saturating_sub(30)..].join("\n");
    assert_eq!(status.code(), Some(0), "exit status {status}:\n{tail}");
    assert!(
        exited < Duration::from_millis(5000),
        "exited {exited:?} after SIGTERM:\n{tail}"
    );
    assert_eq!(still_open, 0, "sessions outlived the gateway");
    at.sort();
    let (first, last) = (at[0], at[N - 1]);
    let (q1, q3) = (at[N / 4], at[3 * N / 4]);
    let summary = format!(
        "first {first:?}, q1 {q1:?}, median {:?}, q3 {q3:?}, last {last:?}, exit {exited:?}",
        at[N / 2]
    );
    eprintln!("drain: {summary}");
    // Nobody before the spread window opens (deadline 4 s - spread 3 s = 1 s) ...
    assert!(first >= Duration::from_millis(800), "closed too early: {summary}");
    // ... the closes spread over it rather than bunched ...
    assert!(q3 - q1 >= Duration::from_millis(1000), "closes bunched: {summary}");
    // ... and all done by the deadline.
    assert!(last <= Duration::from_millis(4500), "closed too late: {summary}");
    // The spread closed everyone; nobody waited for the hard stop.
    let stopped = log
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "stopped")
        .unwrap_or_else(|| panic!("no `stopped` line:\n{tail}"));
    let forced = &stopped["forced"];
    assert_eq!(forced, 0, "sessions forced at the deadline ({summary}): {stopped}");
    let shutdown_closes = log
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "shutdown")
        .count();
    assert_eq!(shutdown_closes, N, "close lines with reason \"shutdown\"");
}

// ---------------------------------------------------------------------------------------------------------------
// 3. POST /v1/reload with a good config

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_applies_a_good_config() {
    let _serial = SERIAL.lock().await;
    let backend = echo_backend().await;
    let (a, b, admin) = (free_addr(), free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let front = |name: &str, listen: SocketAddr| {
        format!(
            "[[front]]\nname = \"{name}\"\nkind = \"peer\"\nlisten = [\"{listen}\"]\ntransport = \"tcp\"\n\
             upstreams = [\"{backend}\"]\n\n"
        )
    };
    let top = format!(
        "[runtime]\ndrain_deadline = \"1s\"\n\n[admission]\n{RELAXED_KEYS}\n{}\n",
        admin_table(dir.path(), admin)
    );
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, format!("{top}{}", front("a", a))).unwrap();
    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, a);
    let mut open = connect_from("127.0.0.1", a).await.unwrap();
    assert!(echoes(&mut open).await);

    std::fs::write(&path, format!("{top}{}{}", front("a", a), front("b", b))).unwrap();
    // Without the token: 401, and nothing reloaded.
    let (status, body, raw) = tokio::task::block_in_place(|| http(admin, "POST", "/v1/reload", None));
    assert_eq!(status, 401, "{raw}");
    assert!(body["error"].is_string(), "{raw}");
    let (status, _, raw) =
        tokio::task::block_in_place(|| http(admin, "POST", "/v1/reload", Some("not-the-token-0123456789")));
    assert_eq!(status, 401, "{raw}");
    assert!(
        std::net::TcpStream::connect_timeout(&b, Duration::from_secs(1)).is_err(),
        "an unauthorised reload added front b"
    );

    // With it: 200 with what changed, and the new front serves at once.
    let (status, body, raw) = tokio::task::block_in_place(|| http(admin, "POST", "/v1/reload", Some(ADMIN_TOKEN)));
    assert_eq!(status, 200, "{raw}\n{}", gw.log());
    assert_eq!(body["added"], serde_json::json!(["b"]), "{raw}");
    assert_eq!(body["removed"], serde_json::json!([]), "{raw}");
    assert_eq!(body["updated"], serde_json::json!(["a"]), "{raw}");
    let mut s = connect_from("127.0.0.1", b)
        .await
        .unwrap_or_else(|e| panic!("front b added by reload does not accept: {e}\n{}", gw.log()));
    assert!(echoes(&mut s).await, "front b does not relay");
    assert!(
        echoes(&mut open).await,
        "the open session on front a was cut by the reload"
    );
    let (status, _, text) = tokio::task::block_in_place(|| http(admin, "GET", "/metrics", Some(ADMIN_TOKEN)));
    assert_eq!(status, 200);
    assert!(
        sample(&text, "gatehouse_reloads_total{result=\"ok\"}").is_some_and(|n| n >= 1.0),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 4. A per-method cost override changed by reload, seen by a session that was already open

/// The issue's acceptance: a SIGHUP that changes "a cost setting" applies to new requests at once, and
/// `Running::reload` promises the same for cost settings. The lowered limits do (test 1), the per-method
/// prices do not: an open session keeps the prices it started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_method_cost_applies_to_the_next_request_of_an_open_session() {
    let _serial = SERIAL.lock().await;
    let backend = stub_electrum();
    let listen = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let conf = |cost: &str| {
        format!(
            "[runtime]\ndrain_deadline = \"1s\"\n\n[admission]\n{RELAXED_KEYS}\n[cost]\nmax_sleep = \"100ms\"\n{cost}\n\n\
             [[front]]\nname = \"e\"\nkind = \"electrum\"\nlisten = [\"{listen}\"]\ntransport = \"tcp\"\n\
             upstreams = [\"{backend}\"]\n"
        )
    };
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, conf("")).unwrap();
    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, listen);
    let mut open = Wallet::new("open session", connect_from("127.0.0.7", listen).await.unwrap());
    open.handshake().await;
    open.ok("blockchain.estimatefee", "[2]").await;

    // estimatefee now costs twice the hard limit.
    std::fs::write(&path, conf("[cost.methods]\n\"blockchain.estimatefee\" = 20000.0\n")).unwrap();
    tokio::task::block_in_place(|| gw.sighup_and_wait_reloaded());
    open.call("blockchain.estimatefee", "[2]").await.unwrap();
    let v = open.call("server.ping", "[]").await.unwrap();
    assert_eq!(
        v["error"]["code"], -101,
        "the reloaded estimatefee price did not apply to the open session: {v}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Accept and TLS on threads of their own, at the configured priority

/// The gateway's threads as `ps -L` shows them: (name, nice value), from /proc.
fn threads_of(pid: i32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // "tid (name) state ppid …": the name may hold spaces, so fields are counted from its closing ')';
        // the nice value is the 19th field, the 17th after the name.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let nice = stat[close + 1..].split_whitespace().nth(16).unwrap().parse().unwrap();
        out.push((name, nice));
    }
    out.sort();
    out
}

/// With `intake_threads = 2, intake_nice = 7` the binary runs two intake threads at nice 7 beside workers
/// at 0, and TLS wallets accepted there are served (their sessions handed to the workers); with
/// `intake_threads = 0` there is no intake thread and wallets are served as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_runs_on_its_own_threads_at_the_configured_priority() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = localhost_cert(dir.path(), "server");
    let tls = tls_connector(&[der], rustls::DEFAULT_VERSIONS);
    let backend = stub_electrum();
    for (threads, nice) in [(2, 7), (0, 7)] {
        let gw_conf = WalletGateway {
            listen: free_addr(),
            backend,
            admin_table: String::new(),
            cert: cert.clone(),
            key: key.clone(),
        };
        let conf = gw_conf.config("", "").replacen(
            "[runtime]\n",
            &format!("[runtime]\nintake_threads = {threads}\nintake_nice = {nice}\nworker_threads = 2\n"),
            1,
        );
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, conf).unwrap();
        let mut gw = Proc::run_json(&path);
        wait_accepting(&mut gw, gw_conf.listen);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..20 {
            let tls = tls.clone();
            set.spawn(async move {
                let (s, _) = tls_session(&tls, "127.0.0.1", gw_conf.listen).await?;
                let mut w = Wallet::new(format!("wallet {i}"), s);
                w.handshake().await;
                w.call("server.ping", "[]").await
            });
        }
        while let Some(j) = set.join_next().await {
            let v = j.unwrap().unwrap_or_else(|e| panic!("{e}\n{}", gw.log()));
            assert!(v["result"].is_null(), "{v}");
        }
        let seen = threads_of(gw.pid());
        let intake: Vec<_> = seen.iter().filter(|(n, _)| n.starts_with("gh-intake")).collect();
        assert_eq!(
            intake.len(),
            threads,
            "intake threads with intake_threads = {threads}: {seen:?}"
        );
        assert!(
            intake.iter().all(|(_, n)| *n == nice),
            "intake at nice {nice}: {seen:?}"
        );
        let workers: Vec<_> = seen.iter().filter(|(n, _)| n.starts_with("tokio-rt")).collect();
        assert!(!workers.is_empty(), "{seen:?}");
        assert!(workers.iter().all(|(_, n)| *n == 0), "workers at nice 0: {seen:?}");
    }
}
