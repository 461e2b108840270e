//! Electrum protocol policy through the real gateway on loopback: garbage and oversized lines, unknown
//! methods, server.version rules, the rewrites of server.features / peers.subscribe / add_peer / banner,
//! batches and the Kevacoin profile.
//!
//! Every test talks to a scripted stub backend that records each line it receives, so a test can prove
//! what the backend never saw. Before such an assertion the client makes one more forwarded call and
//! waits for its answer: a session keeps one upstream connection in order, so by then the backend has
//! read everything the gateway sent it before.

use crate::support::gateway::RELAXED;
use crate::support::{backends, clients, gateway, net};
use gatehouse::Running;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const WAIT: Duration = Duration::from_secs(5);

// ---- stub backend ---------------------------------------------------------------------------------

type Handler = Arc<dyn Fn(&str, &Value) -> Option<Value> + Send + Sync>;

/// A scripted Electrum backend: answers with `handler(method, params)` (`None` = -32601) and records
/// every line it receives.
struct Stub {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Stub {
    fn lines(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Every method the backend was asked for, batch items included, in order.
    fn methods(&self) -> Vec<String> {
        let mut out = Vec::new();
        for line in self.lines() {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            let items = match v {
                Value::Array(a) => a,
                other => vec![other],
            };
            for i in items {
                out.push(i["method"].as_str().unwrap_or("<none>").to_string());
            }
        }
        out
    }

    fn saw(&self, method: &str) -> bool {
        self.methods().iter().any(|m| m == method)
    }

    fn count(&self, method: &str) -> usize {
        self.methods().iter().filter(|m| *m == method).count()
    }
}

/// What a plain backend answers for the common methods.
fn base_answer(method: &str, params: &Value) -> Option<Value> {
    Some(match method {
        // Like ElectrumX: the highest version of the client's range (the gateway already clamped it).
        "server.version" => {
            let v = match &params[1] {
                Value::String(s) => s.clone(),
                Value::Array(r) => r[1].as_str().unwrap_or("1.4").to_string(),
                _ => "1.4".to_string(),
            };
            json!(["StubElectrum 1.0", v])
        }
        "server.ping" => Value::Null,
        "server.banner" => json!("StubElectrum 1.0 on bitcoind 27.0 at backend.internal"),
        "blockchain.scripthash.get_balance" => json!({"confirmed": 150000, "unconfirmed": 0}),
        "blockchain.relayfee" => json!(0.00001),
        "mempool.get_info" => {
            json!({"mempoolminfee": 0.00001, "minrelaytxfee": 0.00001, "incrementalrelayfee": 0.00001})
        }
        "server.add_peer" => json!(true),
        _ => return None,
    })
}

/// Ways a real backend differs from a tidy one.
#[derive(Clone, Copy, Default)]
struct Quirks {
    /// Parses ids as floats and writes them back as such (`5` → `5.0`), as Python servers can.
    float_ids: bool,
    /// Answers two requests at a time, the later one first (a lone request after 50 ms).
    reorder: bool,
    /// Before each answer, also answers an id the gateway never issued, with private peers in it.
    stray: bool,
    /// Never answers this method.
    silent: Option<&'static str>,
}

/// An id as a backend that parses it into a float writes it back.
fn as_float(id: Value) -> Value {
    match id.as_f64() {
        Some(f) if id.is_number() => json!(f),
        _ => id,
    }
}

async fn stub_with(handler: impl Fn(&str, &Value) -> Option<Value> + Send + Sync + 'static) -> Stub {
    stub_quirky(handler, Quirks::default()).await
}

async fn stub_quirky(handler: impl Fn(&str, &Value) -> Option<Value> + Send + Sync + 'static, quirks: Quirks) -> Stub {
    let handler: Handler = Arc::new(handler);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    let addr = backends::serve(move |s| {
        let (handler, rec) = (handler.clone(), rec.clone());
        async move {
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            let mut held: Vec<Vec<u8>> = Vec::new();
            loop {
                // read_until keeps a partial line in `line` when the wait is cut short.
                let read = if quirks.reorder && !held.is_empty() {
                    tokio::time::timeout(Duration::from_millis(50), r.read_until(b'\n', &mut line))
                        .await
                        .ok()
                } else {
                    Some(r.read_until(b'\n', &mut line).await)
                };
                let timed_out = read.is_none();
                match read {
                    Some(Ok(0)) | Some(Err(_)) => return,
                    Some(Ok(_)) => {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        line.clear();
                        rec.lock().unwrap().push(text.clone());
                        let answer = |req: &Value| -> Option<Value> {
                            let mut id = req.get("id")?.clone();
                            if quirks.float_ids {
                                id = as_float(id);
                            }
                            let method = req["method"].as_str().unwrap_or("");
                            if quirks.silent == Some(method) {
                                return None;
                            }
                            Some(match handler(method, &req["params"]) {
                                Some(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                                None => json!({"jsonrpc": "2.0", "id": id,
                                    "error": {"code": -32601, "message": format!("unknown method {method}")}}),
                            })
                        };
                        let reply = match serde_json::from_str::<Value>(&text) {
                            Ok(Value::Array(items)) => Some(Value::Array(items.iter().filter_map(answer).collect())),
                            Ok(v) => answer(&v),
                            Err(_) => Some(json!({"jsonrpc": "2.0", "id": null,
                                "error": {"code": -32700, "message": "parse error"}})),
                        };
                        if let Some(reply) = reply {
                            let mut out = serde_json::to_vec(&reply).unwrap();
                            out.push(b'\n');
                            held.push(out);
                        }
                    }
                    None => {}
                }
                if quirks.reorder && held.len() < 2 && !timed_out {
                    continue;
                }
                for out in held.drain(..).rev() {
                    if quirks.stray {
                        let stray = json!({"jsonrpc": "2.0", "id": 424242,
                            "result": [["10.0.0.5", "stray.backend.lan", ["v1.4"]]]});
                        let _ = w.write_all(format!("{stray}\n").as_bytes()).await;
                    }
                    if w.write_all(&out).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    Stub { addr, seen }
}

async fn stub() -> Stub {
    stub_with(base_answer).await
}

// ---- gateway --------------------------------------------------------------------------------------

/// One plain-TCP Electrum front "el" on `listen` in front of `backend`. `cost` goes inside [cost]
/// (which always groups loopback clients by /24), `global` holds further top-level tables, `electrum`
/// goes inside [front.electrum].
fn config_on(listen: &str, backend: SocketAddr, cost: &str, global: &str, electrum: &str) -> String {
    format!(
        "{RELAXED}[cost]\ngroup_private = true\n{cost}\n\n{global}\n\n[[front]]\nname = \"el\"\nkind = \"electrum\"\n\
         listen = [\"{listen}\"]\ntransport = \"tcp\"\nupstreams = [\"{backend}\"]\n\n[front.electrum]\n{electrum}\n"
    )
}

async fn gateway(backend: SocketAddr, cost: &str, global: &str, electrum: &str) -> Running {
    gateway::start(&config_on("127.0.0.1:0", backend, cost, global, electrum)).await
}

/// The /24 group of an IPv4 loopback client (group_private = true).
fn group(ip: &str) -> IpAddr {
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let o = ip.octets();
    IpAddr::from([o[0], o[1], o[2], 0])
}

fn banned(running: &Running, ip: &str) -> Option<String> {
    running
        .guard()
        .bans()
        .lookup(ip.parse().unwrap())
        .map(|(_, b)| b.reason)
}

// ---- client ---------------------------------------------------------------------------------------

struct Client {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

fn req(id: impl Into<Value>, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id.into(), "method": method, "params": params})
}

fn code(v: &Value) -> Option<i64> {
    v["error"]["code"].as_i64()
}

fn hex32(i: usize) -> String {
    format!("{i:064x}")
}

impl Client {
    async fn connect(from: &str, running: &Running) -> Client {
        let s = net::connect_from(from, running.addr("el")).await.unwrap();
        let (r, w) = s.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    /// Sends one line (a newline is appended); returns its length on the wire.
    async fn send(&mut self, line: &str) -> usize {
        let mut b = line.as_bytes().to_vec();
        b.push(b'\n');
        self.send_raw(&b).await;
        b.len()
    }

    async fn send_json(&mut self, v: &Value) -> usize {
        self.send(&v.to_string()).await
    }

    /// The next line from the gateway, without its newline; panics on close or after 5 s.
    async fn recv_line(&mut self) -> String {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.r.read_line(&mut line))
            .await
            .expect("no reply within 5s")
            .expect("read error");
        assert!(n > 0, "the gateway closed the connection instead of replying");
        line.trim_end_matches('\n').to_string()
    }

    async fn recv(&mut self) -> Value {
        let line = self.recv_line().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    async fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send_json(&req(id, method, params)).await;
        let v = self.recv().await;
        assert_eq!(v["id"], json!(id), "reply to {method}: {v}");
        v
    }

    /// server.version, expected to succeed; returns the negotiated version.
    async fn version(&mut self, range: Value) -> String {
        let v = self.call(0, "server.version", json!(["test-client", range])).await;
        assert!(v.get("error").is_none(), "server.version refused: {v}");
        v["result"][1].as_str().unwrap().to_string()
    }

    /// Asserts the gateway closes the connection (EOF or reset) within 5 s without sending more.
    async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        // A reset counts as closed as much as an EOF does.
        let _ = tokio::time::timeout(WAIT, self.r.read_to_end(&mut rest))
            .await
            .expect("connection still open after 5s");
        assert!(
            rest.is_empty(),
            "unexpected bytes before the close: {}",
            String::from_utf8_lossy(&rest)
        );
    }
}

// ---- 5. garbage and unknown methods ---------------------------------------------------------------

#[tokio::test]
async fn garbage_lines_cost_1100_each_and_the_eleventh_request_hits_the_hard_limit() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "").await;
    let g = group("127.0.3.2");
    let mut c = Client::connect("127.0.3.2", &running).await;
    c.version(json!("1.4")).await;

    for i in 1..=10 {
        let before = running.ledger().group_cost(g);
        let len = c.send(&format!("this is not json #{i:02}")).await;
        let v = c.recv().await;
        assert_eq!(code(&v), Some(-32700), "garbage line {i}: {v}");
        assert_eq!(v["id"], Value::Null, "garbage line {i}: {v}");
        let delta = running.ledger().group_cost(g) - before;
        let want = 1100.0 + len as f64 / 5000.0;
        assert!((delta - want).abs() < 0.5, "garbage line {i} cost {delta}, want {want}");
    }
    assert!(
        banned(&running, "127.0.3.2").is_none(),
        "banned before the 11th request"
    );

    // The 11th request, even a valid one, finds the session past the hard limit (10 × 1100 > 10000).
    let v = c.call(11, "server.ping", json!([])).await;
    assert_eq!(code(&v), Some(-101), "11th request: {v}");
    c.expect_closed().await;
    assert!(
        banned(&running, "127.0.3.2").is_some(),
        "hard limit must ban the address"
    );
    assert!(net::is_refused("127.0.3.2", running.addr("el")).await);
    assert!(!be.saw("server.ping"), "the refused request reached the backend");
}

#[tokio::test]
async fn the_eleventh_protocol_violation_bans_even_below_the_hard_limit() {
    let be = stub().await;
    // Limits far away, so only the violation count (default max_violations = 10) can close the session.
    let running = gateway(be.addr, "soft_limit = 100000\nhard_limit = 1000000", "", "").await;
    let mut c = Client::connect("127.0.3.3", &running).await;
    c.version(json!("1.4")).await;
    for i in 1..=10 {
        c.send("{{{ garbage").await;
        assert_eq!(code(&c.recv().await), Some(-32700), "garbage line {i}");
    }
    // Ten violations are tolerated: the session still serves.
    let v = c.call(1, "server.ping", json!([])).await;
    assert!(v.get("error").is_none(), "after 10 violations: {v}");
    assert!(banned(&running, "127.0.3.3").is_none());

    c.send("{{{ garbage").await;
    assert_eq!(code(&c.recv().await), Some(-32700), "11th garbage line");
    c.expect_closed().await;
    let reason = banned(&running, "127.0.3.3").expect("the 11th violation must ban");
    assert!(reason.contains("unparsable"), "ban reason: {reason}");
}

#[tokio::test]
async fn unknown_methods_cost_100_each_until_the_hard_limit_and_never_reach_the_backend() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "").await;
    let g = group("127.0.4.2");
    let mut c = Client::connect("127.0.4.2", &running).await;
    c.version(json!("1.4")).await;
    let mut cut_at = None;
    for i in 1..=200u64 {
        let before = running.ledger().group_cost(g);
        let len = c.send_json(&req(i, "blockchain.no_such_method", json!([]))).await;
        let v = c.recv().await;
        assert_eq!(v["id"], json!(i), "{v}");
        match code(&v) {
            Some(-32601) => {
                let delta = running.ledger().group_cost(g) - before;
                let want = 100.0 + len as f64 / 5000.0;
                assert!(
                    (delta - want).abs() < 0.5,
                    "unknown method {i} cost {delta}, want {want}"
                );
            }
            Some(-101) => {
                cut_at = Some(i);
                break;
            }
            other => panic!("request {i}: unexpected {other:?}: {v}"),
        }
    }
    let cut_at = cut_at.expect("100 × 100 units never reached the hard limit");
    assert!(
        (95..=106).contains(&cut_at),
        "-101 came at request {cut_at}, expected ≈100"
    );
    c.expect_closed().await;
    assert!(banned(&running, "127.0.4.2").is_some());
    assert!(
        !be.saw("blockchain.no_such_method"),
        "an unknown method reached the backend"
    );
    assert_eq!(be.methods(), vec!["server.version"]);
}

#[tokio::test]
async fn methods_outside_the_negotiated_version_never_reach_the_backend() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "").await;

    // Negotiated 1.4: mempool.get_info (1.6) is unknown, relayfee (gone in 1.6) still exists.
    let mut c = Client::connect("127.0.5.2", &running).await;
    assert_eq!(c.version(json!("1.4")).await, "1.4");
    let v = c.call(1, "mempool.get_info", json!([])).await;
    assert_eq!(code(&v), Some(-32601), "{v}");
    let v = c.call(2, "blockchain.unknown.thing", json!([])).await;
    assert_eq!(code(&v), Some(-32601), "{v}");
    let v = c.call(3, "blockchain.relayfee", json!([])).await;
    assert!(v.get("error").is_none(), "relayfee at 1.4: {v}");
    assert!(
        !be.saw("mempool.get_info"),
        "mempool.get_info reached the backend at 1.4"
    );
    assert!(!be.saw("blockchain.unknown.thing"));

    // Negotiated 1.6: the other way round, so the refusal above is about the version.
    let mut c = Client::connect("127.0.5.3", &running).await;
    assert_eq!(c.version(json!("1.6")).await, "1.6");
    let v = c.call(1, "mempool.get_info", json!([])).await;
    assert!(v.get("error").is_none(), "mempool.get_info at 1.6: {v}");
    let v = c.call(2, "blockchain.relayfee", json!([])).await;
    assert_eq!(code(&v), Some(-32601), "relayfee at 1.6: {v}");
    assert_eq!(be.count("mempool.get_info"), 1);
    assert_eq!(be.count("blockchain.relayfee"), 1);
}

// ---- 7. oversized lines ---------------------------------------------------------------------------

/// Sends `len` bytes of one line without its newline, in chunks, then waits for the -32600 that must
/// come before the line ends (the gateway gives up on it as soon as it is too long); then streams more
/// of the line, ends it, and checks the session still serves (and its address is not banned).
async fn oversized_then_valid(running: &Running, from: &str, len: usize, max_line: usize) {
    let g = group(from);
    let mut c = Client::connect(from, running).await;
    c.version(json!("1.4")).await;
    let before = running.ledger().group_cost(g);
    let chunk = vec![b'a'; 16 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        c.send_raw(&chunk[..n]).await;
        sent += n;
    }
    // No newline yet: the rejection must not wait for one.
    let v = c.recv().await;
    assert_eq!(code(&v), Some(-32600), "oversized line: {v}");
    assert_eq!(v["id"], Value::Null);
    assert!(
        v["error"]["message"].as_str().unwrap().contains(&max_line.to_string()),
        "{v}"
    );
    let cost = running.ledger().group_cost(g) - before;
    assert!(
        cost >= 1100.0,
        "an oversized line costs error + parse error, got {cost}"
    );
    // More of the same line is dropped silently, then the newline ends it.
    for _ in 0..4 {
        c.send_raw(&chunk).await;
    }
    c.send_raw(b"tail\n").await;
    let v = c.call(7, "server.ping", json!([])).await;
    assert!(v.get("error").is_none(), "the session must survive: {v}");
    assert!(banned(running, from).is_none());
}

#[tokio::test]
async fn a_line_over_1_000_000_bytes_is_rejected_early_and_the_session_survives() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "").await;
    oversized_then_valid(&running, "127.0.6.2", 1_000_001, 1_000_000).await;
    // The backend saw only the requests, not a byte of the long line.
    for l in be.lines() {
        assert!(l.len() < 1000, "the backend received a long line ({} bytes)", l.len());
    }
    assert_eq!(be.methods(), vec!["server.version", "server.ping"]);

    // A line of exactly the limit is still a line (here: garbage → -32700, not -32600).
    let mut c = Client::connect("127.0.6.3", &running).await;
    c.version(json!("1.4")).await;
    c.send(&"b".repeat(1_000_000)).await;
    assert_eq!(code(&c.recv().await), Some(-32700));
}

#[tokio::test]
async fn a_small_max_line_behaves_the_same() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "max_line = \"1000B\"").await;
    oversized_then_valid(&running, "127.0.6.4", 5_000, 1_000).await;
    // A valid request longer than max_line is refused the same way, never forwarded.
    let mut c = Client::connect("127.0.6.5", &running).await;
    c.version(json!("1.4")).await;
    let long = req(9, "blockchain.scripthash.get_balance", json!(["ab".repeat(600)]));
    c.send_json(&long).await;
    let v = c.recv().await;
    assert_eq!(code(&v), Some(-32600), "{v}");
    let v = c.call(10, "server.ping", json!([])).await;
    assert!(v.get("error").is_none(), "{v}");
    assert!(!be.saw("blockchain.scripthash.get_balance"));
}

#[tokio::test]
async fn with_max_violations_0_one_oversized_line_ends_the_session_and_bans() {
    let be = stub().await;
    let running = gateway(be.addr, "", "[bans]\nmax_violations = 0", "").await;
    let mut c = Client::connect("127.0.6.6", &running).await;
    c.version(json!("1.4")).await;
    c.send_raw(&vec![b'x'; 1_000_001]).await;
    let v = c.recv().await;
    assert_eq!(code(&v), Some(-32600), "{v}");
    c.expect_closed().await;
    let reason = banned(&running, "127.0.6.6").expect("address not banned");
    assert!(reason.contains("oversized"), "ban reason: {reason}");
    assert!(net::is_refused("127.0.6.6", running.addr("el")).await);
}

// ---- 8. server.version rules ----------------------------------------------------------------------

#[tokio::test]
async fn under_require_a_first_message_other_than_server_version_is_refused_and_ends_the_session() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "version_policy = \"require\"").await;
    let mut c = Client::connect("127.0.7.2", &running).await;
    let v = c.call(5, "server.ping", json!([])).await;
    assert_eq!(code(&v), Some(1), "{v}");
    c.expect_closed().await;

    // A batch is no way around it.
    let mut c = Client::connect("127.0.7.3", &running).await;
    c.send_json(&json!([req(1, "server.ping", json!([]))])).await;
    assert_eq!(code(&c.recv().await), Some(1));
    c.expect_closed().await;

    // The default policy is "require" too.
    let running = gateway(be.addr, "", "", "").await;
    let mut c = Client::connect("127.0.7.4", &running).await;
    let v = c.call(6, "blockchain.relayfee", json!([])).await;
    assert_eq!(code(&v), Some(1), "{v}");
    c.expect_closed().await;
    assert!(be.lines().is_empty(), "the backend saw {:?}", be.lines());
}

#[tokio::test]
async fn under_tolerate_a_session_without_server_version_is_served() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "version_policy = \"tolerate\"").await;
    let mut c = Client::connect("127.0.7.5", &running).await;
    let v = c.call(5, "server.ping", json!([])).await;
    assert!(v.get("error").is_none(), "{v}");
    let v = c.call(6, "blockchain.scripthash.get_balance", json!([hex32(1)])).await;
    assert_eq!(v["result"]["confirmed"], 150000, "{v}");
    assert_eq!(be.methods(), vec!["server.ping", "blockchain.scripthash.get_balance"]);
}

#[tokio::test]
async fn a_second_server_version_is_an_error_and_the_session_continues() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "").await;
    let mut c = Client::connect("127.0.7.6", &running).await;
    c.version(json!("1.4")).await;
    let v = c.call(2, "server.version", json!(["test-client", "1.4"])).await;
    assert_eq!(code(&v), Some(1), "{v}");
    let v = c.call(3, "server.ping", json!([])).await;
    assert!(v.get("error").is_none(), "session must continue: {v}");
    assert_eq!(be.count("server.version"), 1);
}

#[tokio::test]
async fn an_out_of_range_version_is_refused_and_ends_the_session() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "protocol_min = \"1.4\"").await;
    for (i, range) in [
        json!("1.0"),
        json!(["1.0", "1.2"]),
        json!(["1.7", "1.9"]),
        json!("banana"),
    ]
    .into_iter()
    .enumerate()
    {
        let from = format!("127.0.8.{}", i + 2);
        let mut c = Client::connect(&from, &running).await;
        let v = c.call(1, "server.version", json!(["test-client", range])).await;
        assert_eq!(code(&v), Some(1), "{range}: {v}");
        c.expect_closed().await;
    }
    assert!(be.lines().is_empty(), "the backend saw {:?}", be.lines());
}

#[tokio::test]
async fn the_backend_sees_the_clamped_version_range() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "").await;
    let mut c = Client::connect("127.0.8.10", &running).await;
    let v = c
        .call(1, "server.version", json!(["Electrum 4.5", ["1.2", "1.9"]]))
        .await;
    assert_eq!(v["result"][1], "1.6", "{v}");
    let lines = be.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let sent: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(sent["method"], "server.version");
    assert_eq!(sent["params"], json!(["Electrum 4.5", ["1.4", "1.6"]]), "{sent}");
    assert_eq!(sent["id"], 1);

    // A narrower gateway range clamps further.
    let running = gateway(be.addr, "", "", "protocol_min = \"1.4.2\"\nprotocol_max = \"1.5\"").await;
    let mut c = Client::connect("127.0.8.11", &running).await;
    c.call(2, "server.version", json!(["w", ["1.2", "1.9"]])).await;
    let sent: Value = serde_json::from_str(be.lines().last().unwrap()).unwrap();
    assert_eq!(sent["params"], json!(["w", ["1.4.2", "1.5"]]), "{sent}");
}

// ---- 9. rewrites ----------------------------------------------------------------------------------

fn features_answer(backend_port: u16) -> impl Fn(&str, &Value) -> Option<Value> + Send + Sync {
    move |method, params| match method {
        "server.features" => Some(json!({
            "genesis_hash": "00".repeat(32),
            "hosts": {
                "backend.internal": {"tcp_port": backend_port, "ssl_port": null},
                "127.0.0.1": {"tcp_port": backend_port}
            },
            "protocol_max": "1.6", "protocol_min": "1.4", "pruning": null,
            "server_version": "StubElectrum 1.0", "hash_function": "sha256"
        })),
        _ => base_answer(method, params),
    }
}

#[tokio::test]
async fn server_features_announces_the_public_hosts_and_the_gateways_port() {
    let be = stub_with(features_answer(51234)).await;
    // A concrete port, as in production.
    let port = net::free_port();
    let toml = config_on(
        &format!("127.0.0.1:{port}"),
        be.addr,
        "",
        "[electrum]\npublic_hosts = [\"electrum.example.org\"]",
        "",
    );
    let running = gateway::start(&toml).await;
    assert_eq!(running.addr("el").port(), port);
    let mut c = Client::connect("127.0.9.2", &running).await;
    c.version(json!("1.4")).await;
    c.send_json(&req(1, "server.features", json!([]))).await;
    let raw = c.recv_line().await;
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        v["result"]["hosts"],
        json!({"electrum.example.org": {"tcp_port": port}}),
        "{v}"
    );
    assert_eq!(v["result"]["server_version"], "StubElectrum 1.0");
    assert!(!raw.contains("backend.internal") && !raw.contains("127.0.0.1"), "{raw}");
    assert!(!raw.contains("51234"), "{raw}");

    // The same inside a batch.
    c.send_json(&json!([
        req(2, "server.features", json!([])),
        req(3, "server.ping", json!([]))
    ]))
    .await;
    let raw = c.recv_line().await;
    let v: Value = serde_json::from_str(&raw).unwrap();
    let f = v.as_array().unwrap().iter().find(|e| e["id"] == 2).unwrap();
    assert_eq!(
        f["result"]["hosts"],
        json!({"electrum.example.org": {"tcp_port": port}})
    );
    assert!(!raw.contains("backend.internal"), "{raw}");
}

#[tokio::test]
async fn server_features_announces_the_bound_port_when_listening_on_port_0() {
    let be = stub_with(features_answer(50001)).await;
    let running = gateway(be.addr, "", "[electrum]\npublic_hosts = [\"electrum.example.org\"]", "").await;
    let mut c = Client::connect("127.0.9.3", &running).await;
    c.version(json!("1.4")).await;
    let v = c.call(1, "server.features", json!([])).await;
    assert_eq!(
        v["result"]["hosts"],
        json!({"electrum.example.org": {"tcp_port": running.addr("el").port()}}),
        "{v}"
    );
}

#[tokio::test]
async fn peers_subscribe_drops_private_and_loopback_addresses() {
    let be = stub_with(|method, params| match method {
        "server.peers.subscribe" => Some(json!([
            ["10.0.0.5", "backend.lan", ["v1.4", "t50001"]],
            ["192.168.1.7", "home.lan", ["v1.4", "s50002"]],
            ["172.16.3.4", "dc.lan", ["v1.4"]],
            ["127.0.0.1", "localhost", ["v1.4", "t50001"]],
            ["169.254.1.1", "linklocal", ["v1.4"]],
            ["100.64.0.9", "cgnat", ["v1.4"]],
            ["::1", "lo6", ["v1.4"]],
            ["fd00::1", "ula", ["v1.4"]],
            ["fe80::1", "ll6", ["v1.4"]],
            ["8.8.8.8", "electrum.public.example", ["v1.4", "s50002"]],
            ["2001:4860:4860::8888", "v6.public.example", ["v1.4", "s50002"]],
            ["abcdefghijklmnop.onion", "abcdefghijklmnop.onion", ["v1.4", "t50001"]]
        ])),
        _ => base_answer(method, params),
    })
    .await;
    let running = gateway(be.addr, "", "", "").await;
    let mut c = Client::connect("127.0.9.4", &running).await;
    c.version(json!("1.4")).await;
    let v = c.call(1, "server.peers.subscribe", json!([])).await;
    let names: Vec<&str> = v["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|p| p[1].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["electrum.public.example", "v6.public.example", "abcdefghijklmnop.onion"]
    );
    assert!(be.saw("server.peers.subscribe"));
}

/// The backend of the id tests: features that leak the backend, peers that list private ones.
fn leaky_answer(method: &str, params: &Value) -> Option<Value> {
    match method {
        "server.peers.subscribe" => Some(json!([
            ["10.0.0.5", "backend.lan", ["v1.4", "t50001"]],
            ["127.0.0.1", "localhost", ["v1.4"]],
            ["8.8.8.8", "electrum.public.example", ["v1.4", "s50002"]]
        ])),
        _ => features_answer(51234)(method, params),
    }
}

/// The reply's id exactly as it is on the wire.
fn raw_id(entry: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Entry<'a> {
        #[serde(borrow)]
        id: &'a serde_json::value::RawValue,
    }
    let e: Entry = serde_json::from_str(entry).unwrap_or_else(|e| panic!("{e}: {entry}"));
    e.id.get().to_string()
}

/// Checks one reply entry against the policy: peers filtered, features rewritten with the gateway's
/// `port`, no private address.
fn policed(entry: &str, port: u16) {
    for leak in ["10.0.0.5", "backend", "127.0.0.1", "51234", "424242", "stray"] {
        assert!(!entry.contains(leak), "{leak} reached the client: {entry}");
    }
    let v: Value = serde_json::from_str(entry).unwrap();
    match &v["result"] {
        Value::Array(peers) => assert_eq!(peers.len(), 1, "{entry}"),
        Value::Object(f) => assert_eq!(
            f["hosts"],
            json!({"electrum.example.org": {"tcp_port": port}}),
            "{entry}"
        ),
        _ => {}
    }
}

#[tokio::test]
async fn ids_come_back_byte_for_byte_and_policy_holds_whatever_the_backend_does_with_them() {
    // A backend that writes ids back as floats, answers out of order and sends replies to ids nobody
    // asked for.
    let quirks = Quirks {
        float_ids: true,
        reorder: true,
        stray: true,
        silent: Some("blockchain.estimatefee"),
    };
    let be = stub_quirky(leaky_answer, quirks).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "ids-token-0123456789abcdef").unwrap();
    let global = "[electrum]\npublic_hosts = [\"electrum.example.org\"]\n\n\
                  [admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"";
    let toml = config_on("127.0.0.1:0", be.addr, "request_timeout = \"1s\"", global, "");
    let running = gateway::start_in(dir.path(), &toml).await;
    let port = running.addr("el").port();
    let mut c = Client::connect("127.0.14.2", &running).await;

    c.send(r#"{"jsonrpc":"2.0","id":"v\u0031","method":"server.version","params":["t","1.4"]}"#)
        .await;
    let line = c.recv_line().await;
    assert_eq!(raw_id(&line), r#""v\u0031""#, "{line}");

    // Pipelined, with ids a backend would rewrite, and one id used twice.
    let sent = [
        ("12345678901234567890123", "server.peers.subscribe"),
        (r#""\u0061""#, "server.features"),
        ("1e0", "server.ping"),
        ("10.50", "server.peers.subscribe"),
        ("7", "server.peers.subscribe"),
        ("7", "server.ping"),
        (r#""a""#, "server.features"),
        (r#""tab\there""#, "server.ping"),
    ];
    let mut burst = String::new();
    for (id, method) in sent {
        burst += &format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"{method}\",\"params\":[]}}\n");
    }
    c.send_raw(burst.as_bytes()).await;
    let mut got = Vec::new();
    for _ in sent {
        let line = c.recv_line().await;
        policed(&line, port);
        got.push(raw_id(&line));
    }
    let mut want: Vec<String> = sent.iter().map(|(id, _)| id.to_string()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);

    // The same inside a batch, next to an item the gateway answers itself.
    c.send(concat!(
        r#"[{"jsonrpc":"2.0","id":"\u0062","method":"server.features","params":[]},"#,
        r#"{"jsonrpc":"2.0","id":12345678901234567890124,"method":"server.peers.subscribe","params":[]},"#,
        r#"{"jsonrpc":"2.0","id":1E+0,"method":"server.ping","params":[]},"#,
        r#"{"jsonrpc":"2.0","id":-0.0,"method":5}]"#
    ))
    .await;
    let line = c.recv_line().await;
    let entries: Vec<&serde_json::value::RawValue> = serde_json::from_str(&line).unwrap();
    let mut got: Vec<String> = entries.iter().map(|e| raw_id(e.get())).collect();
    for e in &entries {
        policed(e.get(), port);
    }
    got.sort();
    let mut want = vec![r#""\u0062""#, "12345678901234567890124", "1E+0", "-0.0"];
    want.sort();
    assert_eq!(got, want, "{line}");
    let invalid = entries.iter().find(|e| raw_id(e.get()) == "-0.0").unwrap();
    assert_eq!(code(&serde_json::from_str(invalid.get()).unwrap()), Some(-32600));

    // Errors the gateway writes itself carry the client's id too.
    c.send(r#"{"jsonrpc":"2.0","id":1.50,"method":5}"#).await;
    let line = c.recv_line().await;
    assert_eq!(raw_id(&line), "1.50", "{line}");
    c.send(r#"{"jsonrpc":"2.0","id":"late\u0021","method":"blockchain.estimatefee","params":[6]}"#)
        .await;
    let line = c.recv_line().await;
    assert_eq!(raw_id(&line), r#""late\u0021""#, "{line}");
    assert_eq!(code(&serde_json::from_str(&line).unwrap()), Some(-102), "{line}");

    // Every stray reply was dropped, and counted.
    let Some(gatehouse::admin::AdminListen::Tcp(admin)) = running.admin_addr() else {
        panic!("no admin listener")
    };
    let metrics = clients::admin_get(*admin, "ids-token-0123456789abcdef", "/metrics").await;
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_electrum_unmatched_replies_total "))
        .unwrap_or_else(|| panic!("no unmatched replies counter:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(dropped >= 1.0, "{dropped}");
}

#[tokio::test]
async fn a_policed_reply_of_an_unexpected_shape_is_not_passed_on() {
    let be = stub_with(|method, params| match method {
        "server.peers.subscribe" => Some(json!({"peers": [["10.0.0.5", "backend.lan", ["v1.4"]]]})),
        "server.features" => Some(json!("backend.internal:50001")),
        _ => base_answer(method, params),
    })
    .await;
    let running = gateway(be.addr, "", "", "").await;
    let mut c = Client::connect("127.0.9.8", &running).await;
    c.version(json!("1.4")).await;
    for (id, method) in [(1, "server.peers.subscribe"), (2, "server.features")] {
        c.send_json(&req(id, method, json!([]))).await;
        let line = c.recv_line().await;
        assert!(!line.contains("10.0.0.5") && !line.contains("backend."), "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], id, "{v}");
        assert_eq!(code(&v), Some(-32603), "{v}");
    }
}

#[tokio::test]
async fn add_peer_is_answered_false_and_never_forwarded() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "").await;
    let mut c = Client::connect("127.0.9.5", &running).await;
    c.version(json!("1.4")).await;
    let features = json!({"hosts": {"evil.example": {"tcp_port": 50001}}});
    let v = c.call(1, "server.add_peer", json!([features])).await;
    assert_eq!(v["result"], json!(false), "{v}");
    // Flush the backend's view with a forwarded call.
    c.call(2, "server.ping", json!([])).await;
    assert!(!be.saw("server.add_peer"), "the backend saw {:?}", be.methods());
    assert_eq!(be.methods(), vec!["server.version", "server.ping"]);
}

#[tokio::test]
async fn server_banner_is_replaced_when_configured() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "banner = \"Welcome to electrum.example.org\"").await;
    let mut c = Client::connect("127.0.9.6", &running).await;
    c.version(json!("1.4")).await;
    let v = c.call(1, "server.banner", json!([])).await;
    assert_eq!(v["result"], "Welcome to electrum.example.org", "{v}");
    c.call(2, "server.ping", json!([])).await;
    assert!(!be.saw("server.banner"));

    // Without a configured banner the backend's passes through.
    let running = gateway(be.addr, "", "", "").await;
    let mut c = Client::connect("127.0.9.7", &running).await;
    c.version(json!("1.4")).await;
    let v = c.call(1, "server.banner", json!([])).await;
    assert_eq!(
        v["result"], "StubElectrum 1.0 on bitcoind 27.0 at backend.internal",
        "{v}"
    );
}

// ---- 10. batches ----------------------------------------------------------------------------------

fn balance_req(id: u64) -> Value {
    req(id, "blockchain.scripthash.get_balance", json!([hex32(id as usize)]))
}

#[tokio::test]
async fn a_batch_of_100_costs_as_much_as_100_single_requests() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "").await;

    // Group 127.0.10.0/24: one batch of 100.
    let ga = group("127.0.10.2");
    let mut a = Client::connect("127.0.10.2", &running).await;
    a.version(json!("1.4")).await;
    let batch: Vec<Value> = (1000..1100).map(balance_req).collect();
    a.send_json(&Value::Array(batch)).await;
    let reply = a.recv().await;
    let entries = reply.as_array().unwrap_or_else(|| panic!("not an array: {reply}"));
    assert_eq!(entries.len(), 100);
    let ids: BTreeSet<u64> = entries.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1000..1100).collect::<BTreeSet<u64>>());
    for e in entries {
        assert_eq!(e["result"]["confirmed"], 150000, "{e}");
    }
    let batch_cost = running.ledger().group_cost(ga);

    // Fresh group 127.0.11.0/24: the same 100 requests one by one.
    let gb = group("127.0.11.2");
    let mut b = Client::connect("127.0.11.2", &running).await;
    b.version(json!("1.4")).await;
    for id in 1000..1100 {
        b.send_json(&balance_req(id)).await;
        assert_eq!(b.recv().await["id"], id);
    }
    let single_cost = running.ledger().group_cost(gb);

    assert!(batch_cost > 100.0, "a batch of 100 cost only {batch_cost}");
    let rel = (batch_cost - single_cost).abs() / single_cost;
    assert!(
        rel < 0.01,
        "batch {batch_cost} vs 100 singles {single_cost}: {:.2}% apart",
        rel * 100.0
    );
}

#[tokio::test]
async fn empty_and_over_cap_batches_are_invalid_requests() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "max_batch = 50").await;
    let mut c = Client::connect("127.0.12.2", &running).await;
    c.version(json!("1.4")).await;

    c.send("[]").await;
    let v = c.recv().await;
    assert_eq!(code(&v), Some(-32600), "empty batch: {v}");

    c.send_json(&Value::Array((1..=51).map(balance_req).collect())).await;
    let v = c.recv().await;
    assert_eq!(code(&v), Some(-32600), "batch of 51: {v}");
    assert!(
        !be.saw("blockchain.scripthash.get_balance"),
        "the refused batch reached the backend"
    );

    c.send_json(&Value::Array((1..=50).map(balance_req).collect())).await;
    let v = c.recv().await;
    assert_eq!(v.as_array().map(Vec::len), Some(50), "batch of 50: {v}");
    assert_eq!(be.count("blockchain.scripthash.get_balance"), 50);
}

#[tokio::test]
async fn a_mixed_batch_answers_each_item_and_forwards_only_the_valid_one() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "").await;
    let mut c = Client::connect("127.0.12.3", &running).await;
    c.version(json!("1.4")).await;
    c.send_json(&json!([
        balance_req(11),
        req("twelve", "blockchain.no_such_method", json!([])),
        req(13, "server.add_peer", json!([{"hosts": {}}])),
    ]))
    .await;
    let v = c.recv().await;
    let entries = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    assert_eq!(entries.len(), 3, "{v}");
    let by_id = |id: Value| {
        entries
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {v}"))
    };
    assert_eq!(by_id(json!(11))["result"]["confirmed"], 150000);
    assert_eq!(code(by_id(json!("twelve"))), Some(-32601));
    assert_eq!(by_id(json!(13))["result"], json!(false));

    // The one forwarded item went on its own, under the gateway's id.
    let lines = be.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let fwd: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(
        fwd["method"], "blockchain.scripthash.get_balance",
        "the backend got {fwd}"
    );
    assert_eq!(fwd["params"], json!([hex32(11)]), "the backend got {fwd}");
}

#[tokio::test]
async fn json_nested_deeper_than_the_limit_is_refused_and_never_forwarded() {
    let be = stub().await;
    let running = gateway(be.addr, "", "", "extra_methods = [\"x.deep\"]").await;
    let mut c = Client::connect("127.0.12.4", &running).await;
    c.version(json!("1.4")).await;
    // The message is level 1 and its params level 2: 30 more arrays make 32, 31 make 33.
    let nested = |id: u64, extra: usize| {
        format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"x.deep\",\"params\":[{}1{}]}}",
            "[".repeat(extra),
            "]".repeat(extra)
        )
    };
    c.send(&nested(1, 31)).await;
    let v = c.recv().await;
    assert_eq!(code(&v), Some(-32600), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("32"), "{v}");
    c.send(&nested(2, 30)).await;
    let v = c.recv().await;
    assert_eq!(v["id"], 2, "{v}");
    assert_ne!(code(&v), Some(-32600), "32 levels are allowed: {v}");
    // Brackets inside strings are not nesting.
    let v = c.call(3, "x.deep", json!(["[{".repeat(20)])).await;
    assert_ne!(code(&v), Some(-32600), "{v}");
    // A batch counts as a level of its own.
    c.send(&format!("[{}]", nested(4, 30))).await;
    assert_eq!(code(&c.recv().await), Some(-32600));
    c.call(5, "server.ping", json!([])).await;
    let forwarded: Vec<String> = be.lines().into_iter().filter(|l| l.contains("x.deep")).collect();
    assert_eq!(forwarded.len(), 2, "{forwarded:?}");
    assert!(forwarded.iter().all(|l| !l.contains(&"[".repeat(32))), "{forwarded:?}");

    // The limit is configurable.
    let running = gateway(be.addr, "", "", "max_nesting = 4\nextra_methods = [\"x.deep\"]").await;
    let mut c = Client::connect("127.0.12.5", &running).await;
    c.version(json!("1.4")).await;
    c.send_json(&req(6, "x.deep", json!([[[[]]]]))).await;
    assert_eq!(code(&c.recv().await), Some(-32600));
    let v = c.call(7, "x.deep", json!([[[]]])).await;
    assert_ne!(code(&v), Some(-32600), "4 levels are allowed: {v}");
}

// ---- 11. Kevacoin ---------------------------------------------------------------------------------

fn keva_answer(method: &str, params: &Value) -> Option<Value> {
    let kv =
        |i: usize| json!({"key": format!("a2V5{i}"), "value": "dmFsdWU=", "height": 400000 + i, "tx_hash": hex32(i)});
    match method {
        "blockchain.keva.get_keyvalues" if params[0] == "object" => Some(json!({
            "keyvalues": (0..10).map(kv).collect::<Vec<_>>(),
            "min_tx_num": 1234
        })),
        "blockchain.keva.get_keyvalues" => Some(Value::Array((0..10).map(kv).collect())),
        "blockchain.keva.get_transactions_info" => {
            let n = params[0].as_array().map_or(0, Vec::len);
            Some(Value::Array(
                (0..n).map(|i| json!({"txid": hex32(i), "height": 1})).collect(),
            ))
        }
        _ => base_answer(method, params),
    }
}

/// Calls get_keyvalues with `first_param` and returns (cost charged, expected bandwidth cost).
async fn keyvalues_cost(running: &Running, c: &mut Client, g: IpAddr, id: u64, first_param: &str) -> (f64, f64) {
    let before = running.ledger().group_cost(g);
    let sent = c
        .send_json(&req(id, "blockchain.keva.get_keyvalues", json!([first_param, -1])))
        .await;
    let raw = c.recv_line().await;
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert!(v.get("error").is_none(), "{v}");
    let charged = running.ledger().group_cost(g) - before;
    (charged, (sent + raw.len() + 1) as f64 / 5000.0)
}

#[tokio::test]
async fn kevacoin_get_keyvalues_is_forwarded_and_charged_per_returned_item() {
    let be = stub_with(keva_answer).await;
    let running = gateway(be.addr, "", "", "profile = \"kevacoin\"").await;
    let g = group("127.0.13.2");
    let mut c = Client::connect("127.0.13.2", &running).await;
    c.version(json!("1.4")).await;
    let (charged, bytes) = keyvalues_cost(&running, &mut c, g, 1, "array").await;
    // 5 base + 10 items × 0.5, plus the bytes both ways.
    let want = 10.0 + bytes;
    assert!((charged - want).abs() < 0.05, "charged {charged}, want {want}");
    assert_eq!(be.count("blockchain.keva.get_keyvalues"), 1);
}

#[tokio::test]
async fn kevacoin_get_keyvalues_real_reply_shape_is_charged_per_item() {
    let be = stub_with(keva_answer).await;
    let running = gateway(be.addr, "", "", "profile = \"kevacoin\"").await;
    let g = group("127.0.13.3");
    let mut c = Client::connect("127.0.13.3", &running).await;
    c.version(json!("1.4")).await;
    let (charged, bytes) = keyvalues_cost(&running, &mut c, g, 1, "object").await;
    let want = 10.0 + bytes;
    assert!((charged - want).abs() < 0.05, "charged {charged}, want {want}");
}

#[tokio::test]
async fn keva_methods_are_unknown_on_a_bitcoin_front() {
    let be = stub_with(keva_answer).await;
    let running = gateway(be.addr, "", "", "profile = \"bitcoin\"").await;
    let mut c = Client::connect("127.0.13.4", &running).await;
    c.version(json!("1.4")).await;
    let v = c.call(1, "blockchain.keva.get_keyvalues", json!(["array", -1])).await;
    assert_eq!(code(&v), Some(-32601), "{v}");
    let v = c.call(2, "blockchain.block.count", json!([])).await;
    assert_eq!(code(&v), Some(-32601), "{v}");
    c.call(3, "server.ping", json!([])).await;
    assert_eq!(be.methods(), vec!["server.version", "server.ping"]);
}

#[tokio::test]
async fn keva_get_transactions_info_is_capped_at_200_txids() {
    let be = stub_with(keva_answer).await;
    let running = gateway(be.addr, "", "", "profile = \"kevacoin\"").await;
    let mut c = Client::connect("127.0.13.5", &running).await;
    c.version(json!("1.4")).await;
    let txids = |n: usize| Value::Array((0..n).map(|i| json!(hex32(i))).collect());

    let v = c
        .call(1, "blockchain.keva.get_transactions_info", json!([txids(201), true]))
        .await;
    assert!(code(&v).is_some(), "201 txids must be refused: {v}");
    assert!(
        !be.saw("blockchain.keva.get_transactions_info"),
        "201 txids reached the backend"
    );

    let v = c
        .call(2, "blockchain.keva.get_transactions_info", json!([txids(200), true]))
        .await;
    assert_eq!(
        v["result"].as_array().map(Vec::len),
        Some(200),
        "200 txids must be served"
    );
    assert_eq!(be.count("blockchain.keva.get_transactions_info"), 1);
    let fwd = be
        .lines()
        .into_iter()
        .find(|l| l.contains("get_transactions_info"))
        .unwrap();
    let fwd: Value = serde_json::from_str(&fwd).unwrap();
    assert_eq!(fwd["params"][0].as_array().map(Vec::len), Some(200));
}
