//! A real node behind a `kind = "api"` front (profile `bitcoind`), driven by a JSON-RPC client nobody here
//! wrote: python-bitcoinrpc from PyPI (`tests/run` installs it and names its folder in GATEHOUSE_PYLIB),
//! run as a `python3` subprocess that prints its results as JSON.
//!
//! The gateway holds the node's credentials; the client has a user of its own with a method set. Allowed
//! calls answer as the node does directly; others get bitcoind's -32601 without reaching the node; a wrong
//! password gets 401; the node's credentials show in no reply and no log line; heavy calls up to the cost
//! hard limit get 503 and the address banned.

use crate::support::bitcoind::{Bitcoind, RPC_AUTH, RPC_PASSWORD, RPC_USER};
use crate::support::gateway::{self, RELAXED};
use crate::support::net::ip;
use crate::support::parts;
use crate::support::process::{wait_accepting, Proc};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
/// `alice`'s rpcauth entry: salt `f00d`, hash = HMAC-SHA256(key = "f00d", message = "wonderland").
const RPCAUTH: &str = "f00d$a9f3bf0bc92f82bedd4ece5ea48898c48216629383a097fa1c913ea8b26af042";

/// The client script: one AuthServiceProxy (one keep-alive connection, reopened by http.client when the
/// server closes it) runs each call of argv[2] (`[[method, [params…]], …]`, or `["batch", [[method,
/// params]…]]`) and prints `{"ok": result}`, `{"err": the JSON-RPC error}` or `{"exc": what failed}` each.
const CLIENT: &str = r#"
import json, sys
from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException
proxy = AuthServiceProxy(sys.argv[1], timeout=30)
out = []
for method, params in json.loads(sys.argv[2]):
    try:
        if method == "batch":
            out.append({"ok": proxy.batch_(params)})
        else:
            out.append({"ok": getattr(proxy, method)(*params)})
    except JSONRPCException as e:
        out.append({"err": e.error})
    except Exception as e:
        out.append({"exc": type(e).__name__ + ": " + str(e)})
print(json.dumps(out, default=str))
"#;

/// python-bitcoinrpc's folder: GATEHOUSE_PYLIB (set by `tests/run`), else its cache.
fn pylib() -> PathBuf {
    parts::folder(
        "GATEHOUSE_PYLIB",
        "pylib-python-bitcoinrpc-1.0",
        "bitcoinrpc/authproxy.py",
        "python-bitcoinrpc (PyPI)",
    )
}

/// Runs [`CLIENT`] against `url` with `calls`; its printed results, one per call.
async fn client(url: &str, calls: Value) -> Vec<Value> {
    let out = tokio::process::Command::new("python3")
        .env("PYTHONPATH", pylib())
        .arg("-c")
        .arg(CLIENT)
        .arg(url)
        .arg(calls.to_string())
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// An api front on `listen` in front of the node at `node`, holding its credentials (password file in `dir`), with `alice`
/// allowed `methods`, then `extra` keys of [front.api].
fn config(dir: &Path, listen: &str, node: std::net::SocketAddr, methods: &[&str], extra: &str, global: &str) -> String {
    let pw = dir.join("node.password");
    std::fs::write(&pw, format!("{RPC_PASSWORD}\n")).unwrap();
    let methods = methods
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let api = format!(
        "[front.api]\nprofile = \"bitcoind\"\nbackend_user = \"{RPC_USER}\"\nbackend_password_file = \"{}\"\n{extra}\n\
         [[front.api.users]]\nname = \"{USER}\"\nrpcauth = \"{RPCAUTH}\"\nmethods = [{methods}]\n",
        pw.display()
    );
    format!(
        "{RELAXED}{global}{}",
        gateway::front("api", "rpc", listen, "tcp", &[node], &api)
    )
}

/// One raw HTTP exchange, for what the client library hides: the status line and headers.
async fn raw_http(addr: std::net::SocketAddr, auth: &str, body: &str) -> String {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// `gatehouse_api_requests_total` of the bitcoind profile for one class and result, from the exposition.
fn api_requests(class: &str, result: &str) -> f64 {
    let text = gatehouse::telemetry::metrics::render(None);
    let series =
        format!("gatehouse_api_requests_total{{profile=\"bitcoind\",method_class=\"{class}\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// Run as the real binary, so "never in a log line" is checked against the log operators get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_user_gets_its_methods_and_nothing_else_and_never_sees_the_node_credentials() {
    let node = Bitcoind::start(&[]).await;
    node.mine(5).await;
    let dir = tempfile::tempdir().unwrap();
    let front = crate::support::net::free_addr();
    let text = format!(
        "[log]\nlevel = \"gatehouse=trace\"\n{}",
        config(
            dir.path(),
            &front.to_string(),
            node.rpc,
            &["getblockcount", "getblockhash", "getbestblockhash"],
            "",
            "",
        )
    );
    let file = dir.path().join("gatehouse.toml");
    std::fs::write(&file, text).unwrap();
    let mut gatehouse = Proc::run_json(&file);
    wait_accepting(&mut gatehouse, front);

    let url = format!("http://{USER}:{PASSWORD}@{front}");

    let got = client(
        &url,
        json!([
            ["getblockcount", []],
            ["getblockhash", [3]],
            ["stop", []],
            ["setban", ["10.1.2.3", "add"]],
            ["getwalletinfo", []],
            ["batch", [["getblockcount"], ["getblockhash", 2]]],
            ["batch", [["getbestblockhash"], ["stop"]]],
            ["getbestblockhash", []],
        ]),
    )
    .await;
    let all = serde_json::to_string(&got).unwrap();
    assert_eq!(got[0], json!({"ok": node.block_count().await}), "{all}");
    assert_eq!(
        got[1],
        json!({"ok": node.rpc("getblockhash", json!([3])).await}),
        "{all}"
    );
    for (i, m) in [(2, "stop"), (3, "setban"), (4, "getwalletinfo"), (6, "stop in a batch")] {
        assert_eq!(
            got[i]["err"],
            json!({"code": -32601, "message": "Method not found"}),
            "{m}: {all}"
        );
    }
    assert_eq!(
        got[5],
        json!({"ok": [node.block_count().await, node.rpc("getblockhash", json!([2])).await]}),
        "{all}"
    );
    assert_eq!(
        got[7],
        json!({"ok": node.rpc("getbestblockhash", json!([])).await}),
        "{all}"
    );
    // stop never reached the node.
    assert_eq!(node.block_count().await, 5);

    // The refusal is bitcoind's own: HTTP 404 and the id given back byte for byte.
    let raw = raw_http(
        front,
        &basic(USER, PASSWORD),
        r#"{"jsonrpc":"1.0","id":"x\u0041 7","method":"stop"}"#,
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    assert!(
        raw.ends_with(r#"{"result":null,"error":{"code":-32601,"message":"Method not found"},"id":"x\u0041 7"}"#),
        "{raw}"
    );

    // A wrong password and no credentials at all: 401 with bitcoind's challenge.
    let wrong = client(&format!("http://{USER}:nope@{front}"), json!([["getblockcount", []]])).await;
    let wrong = serde_json::to_string(&wrong).unwrap();
    assert!(wrong.contains("401"), "{wrong}");
    let raw401 = raw_http(front, &basic(USER, "nope"), r#"{"id":1,"method":"getblockcount"}"#).await;
    assert!(raw401.starts_with("HTTP/1.1 401"), "{raw401}");
    assert!(raw401.contains("www-authenticate: Basic realm=\"jsonrpc\""), "{raw401}");
    // The node's own credentials are not a user of the gateway.
    let as_node = raw_http(front, RPC_AUTH, r#"{"id":1,"method":"getblockcount"}"#).await;
    assert!(as_node.starts_with("HTTP/1.1 401"), "{as_node}");
    let allowed = raw_http(front, &basic(USER, PASSWORD), r#"{"id":1,"method":"getblockcount"}"#).await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");

    gatehouse.signal(libc::SIGTERM);
    let log = gatehouse.stderr_until_eof(Duration::from_secs(10)).join("\n");
    assert!(
        log.contains("method=getblockhash") || log.contains("\"method\":\"getblockhash\""),
        "the front's lines are missing:\n{log}"
    );
    assert!(log.contains("connection closed"), "no close lines:\n{log}");
    for text in [all, wrong, raw, raw401, as_node, allowed, log] {
        for secret in [RPC_AUTH, RPC_PASSWORD] {
            assert!(
                !text.contains(secret),
                "the node's credential {secret} shows in:\n{text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_calls_reach_the_hard_limit_and_the_address_is_banned() {
    let node = Bitcoind::start(&[]).await;
    node.mine(2).await;
    let dir = tempfile::tempdir().unwrap();
    // Each gettxoutsetinfo costs 100; the fourth takes the client to the hard limit of 350.
    let running = gateway::start(&config(
        dir.path(),
        "127.0.0.1:0",
        node.rpc,
        &["getblockcount", "gettxoutsetinfo"],
        "[front.api.method_costs]\ngettxoutsetinfo = 100\n",
        "[cost]\nsoft_limit = 300\nhard_limit = 350\nconnection_cost = 0\n",
    ))
    .await;
    let front = running.addr("rpc");
    let url = format!("http://{USER}:{PASSWORD}@{front}");
    let (ok_before, refused_before) = (api_requests("heavy", "ok"), api_requests("heavy", "refused"));
    let calls: Vec<Value> = (0..5).map(|_| json!(["gettxoutsetinfo", []])).collect();
    let got = client(&url, Value::Array(calls)).await;
    let all = serde_json::to_string(&got).unwrap();
    // Counters are process-wide and other tests run beside this one: at least this test's calls show.
    assert!(api_requests("heavy", "ok") - ok_before >= 3.0, "{all}");
    assert!(api_requests("heavy", "refused") - refused_before >= 1.0, "{all}");
    for r in &got[..3] {
        assert!(r["ok"]["bestblock"].is_string(), "{all}");
    }
    assert_eq!(got[3]["err"]["message"], "excessive resource usage", "{all}");
    assert!(got[4].get("exc").is_some(), "served after the ban: {all}");
    assert!(
        running.guard().bans().lookup(ip("127.0.0.1")).is_some(),
        "the address was not banned: {all}"
    );
    // A new connection is refused, and the node is unharmed.
    let again = client(&url, json!([["getblockcount", []]])).await;
    assert!(again[0].get("exc").is_some(), "{again:?}");
    assert_eq!(node.block_count().await, 2);
}

/// HTTP hardening, answered by the gateway alone (the upstream is a closed port): a body over `max_body`
/// gets 413 unread, headers that never finish are cut at `header_timeout`, and a keep-alive connection
/// idle for `keepalive_timeout` is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_slow_headers_and_idle_keepalive_connections_are_cut() {
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let nowhere = crate::support::net::free_addr();
    let running = gateway::start(&config(
        dir.path(),
        "127.0.0.1:0",
        nowhere,
        &["getblockcount"],
        "max_body = \"1KiB\"\nheader_timeout = \"1s\"\nkeepalive_timeout = \"1s\"\n",
        "",
    ))
    .await;
    let front = running.addr("rpc");

    let big = format!(
        r#"{{"id":1,"method":"getblockcount","params":["{}"]}}"#,
        "a".repeat(2000)
    );
    let raw = raw_http(front, &basic(USER, PASSWORD), &big).await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");

    // A request head over 64 KiB.
    let mut huge = tokio::net::TcpStream::connect(front).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(100_000)
    );
    let _ = huge.write_all(head.as_bytes()).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), huge.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");

    // Headers that never end.
    let mut slow = tokio::net::TcpStream::connect(front).await.unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let start = Instant::now();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut sink)).await;
    assert!(
        read.is_ok(),
        "a request whose headers never end is still open after 5 s"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "cut after {:?}",
        start.elapsed()
    );

    // A keep-alive connection: served, then closed once idle.
    let mut idle = tokio::net::TcpStream::connect(front).await.unwrap();
    let body = r#"{"id":7,"method":"stop"}"#;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nContent-Length: {}\r\n\r\n{body}",
        basic(USER, PASSWORD),
        body.len()
    );
    idle.write_all(req.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        read.is_ok(),
        "an idle keep-alive connection is still open after 5 s: {text}"
    );
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(text.contains(r#""id":7}"#), "{text}");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed after {:?}",
        start.elapsed()
    );
}

/// Wrong passwords cost `error_cost` each, so a guesser on one connection reaches the hard limit: 503,
/// the connection closed and the address banned (the node is never asked: its address is a closed port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_reaches_the_hard_limit_and_the_address_is_banned() {
    let dir = tempfile::tempdir().unwrap();
    let running = gateway::start(&config(
        dir.path(),
        "127.0.0.1:0",
        crate::support::net::free_addr(),
        &["getblockcount"],
        "",
        "[cost]\nsoft_limit = 300\nhard_limit = 350\nconnection_cost = 0\nerror_cost = 100\n",
    ))
    .await;
    let front = running.addr("rpc");
    let body = r#"{"id":1,"method":"getblockcount"}"#;
    let one = |password: &str| {
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nContent-Length: {}\r\n\r\n{body}",
            basic(USER, password),
            body.len()
        )
    };
    // Pipelined on one connection: answered in order until the hard limit closes it.
    let guesses: String = (0..6).map(|i| one(&format!("guess{i}"))).collect();
    let mut s = tokio::net::TcpStream::connect(front).await.unwrap();
    s.write_all(guesses.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(read.is_ok(), "still open after 5 s: {text}");
    let statuses: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .map(|l| &l[9..12])
        .collect();
    assert_eq!(statuses, ["401", "401", "401", "503"], "{text}");
    assert!(
        running.guard().bans().lookup(ip("127.0.0.1")).is_some(),
        "the guesser was not banned"
    );
}

/// With `backend_cookie_file` the gateway reads the node's cookie per request: a node that restarts with
/// a new cookie is followed without a reload, and a wrong cookie is the gateway's problem (502), never
/// shown to the client as the node's 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_cookie_is_read_per_request() {
    let node = Bitcoind::start(&[]).await;
    node.mine(3).await;
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join(".cookie");
    std::fs::write(&cookie, "gatehouse:wrong").unwrap();
    let pw = dir.path().join("node.password");
    let text = config(dir.path(), "127.0.0.1:0", node.rpc, &["getblockcount"], "", "").replace(
        &format!(
            "backend_user = \"{RPC_USER}\"\nbackend_password_file = \"{}\"\n",
            pw.display()
        ),
        &format!("backend_cookie_file = \"{}\"\n", cookie.display()),
    );
    assert!(text.contains("backend_cookie_file"), "{text}");
    let running = gateway::start(&text).await;
    let front = running.addr("rpc");
    let url = format!("http://{USER}:{PASSWORD}@{front}");

    let refused = client(&url, json!([["getblockcount", []]])).await;
    assert_eq!(refused[0]["err"]["message"], "node unavailable", "{refused:?}");
    std::fs::write(&cookie, format!("{RPC_USER}:{RPC_PASSWORD}")).unwrap();
    let got = client(&url, json!([["getblockcount", []]])).await;
    assert_eq!(got[0], json!({"ok": 3}), "{got:?}");
}
