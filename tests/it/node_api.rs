//! A real node behind a `kind = "api"` front (profile `bitcoind`), driven by a JSON-RPC client nobody here
//! wrote: python-bitcoinrpc from PyPI (`tests/run` installs it and names its folder in GATEHOUSE_PYLIB),
//! run as a `python3` subprocess that prints its results as JSON.
//!
//! The gateway holds the node's credentials; the client has a user of its own with a method set. Allowed
//! calls answer as the node does directly; others get bitcoind's -32601 without reaching the node; a wrong
//! password gets 401; the node's credentials show in no reply and no log line; heavy calls up to the cost
//! hard limit get 503 and the address banned. Then, on the wire: REST allowlisting against the node's own
//! `-rest` answers, bearer tokens, idle connections cut when their group crosses the hard limit, failover
//! between nodes, the request timeout, and PROXY intake.

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

/// One request on a kept-alive connection, written by hand: the status, the head and the body (read by
/// its Content-Length). `auth` is the whole `Authorization` value.
async fn exchange(
    s: &mut tokio::net::TcpStream,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no reply within 10 s")
            .unwrap();
        assert!(n > 0, "closed before a reply: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let mut more = async |got: &mut Vec<u8>| {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed inside a reply");
        got.extend_from_slice(&buf[..n]);
    };
    if head.contains("transfer-encoding: chunked") {
        // The node's own larger replies come chunked.
        let mut body = Vec::new();
        let mut at = head_end;
        loop {
            let line_end = loop {
                if let Some(p) = got[at..].windows(2).position(|w| w == b"\r\n") {
                    break at + p;
                }
                more(&mut got).await;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&got[at..line_end]).unwrap().trim(), 16).unwrap();
            while got.len() < line_end + 2 + size + 2 {
                more(&mut got).await;
            }
            body.extend_from_slice(&got[line_end + 2..line_end + 2 + size]);
            at = line_end + 2 + size + 2;
            if size == 0 {
                return (status, head, String::from_utf8_lossy(&body).into_owned());
            }
        }
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    while got.len() < head_end + len {
        more(&mut got).await;
    }
    let body = String::from_utf8_lossy(&got[head_end..head_end + len]).into_owned();
    (status, head, body)
}

/// The node's own answer to a REST GET: status and body.
async fn direct_get(node: &Bitcoind, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(node.rpc).await.unwrap();
    let (status, _, body) = exchange(&mut s, "GET", path, None, "").await;
    (status, body)
}

/// REST is off unless prefixes are listed: every `/rest/…` request (and any path bitcoind does not serve
/// JSON-RPC on, whatever the HTTP method) gets bitcoind's bare 404 from the gateway, even with a user's
/// credentials and a JSON-RPC body that the node itself would answer from its REST handler. Listed
/// prefixes pass GET (only) to the node at their class's cost; unlisted ones stay 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_is_off_by_default_and_then_only_listed_prefixes_reach_the_node() {
    let node = Bitcoind::start(&["-rest"]).await;
    let hashes = node.mine(3).await;
    let dir = tempfile::tempdir().unwrap();
    let alice = format!("Basic {}", basic(USER, PASSWORD));
    let rpc_body = r#"{"id":1,"method":"getblockcount"}"#;

    // The node answers REST (and JSON-RPC bodies POSTed to REST paths) to anyone who reaches it.
    let (status, direct_info) = direct_get(&node, "/rest/chaininfo.json").await;
    assert_eq!(status, 200, "{direct_info}");
    assert_eq!(direct_get(&node, "/rest/mempool/info.json").await.0, 200);
    let mut d = tokio::net::TcpStream::connect(node.rpc).await.unwrap();
    let (status, _, body) = exchange(&mut d, "POST", "/rest/chaininfo.json", None, rpc_body).await;
    assert!(status == 200 && body.contains("bestblockhash"), "{status} {body}");

    let off = gateway::start(&config(dir.path(), "127.0.0.1:0", node.rpc, &["getblockcount"], "", "")).await;
    let mut s = tokio::net::TcpStream::connect(off.addr("rpc")).await.unwrap();
    for (method, path, auth) in [
        ("GET", "/rest/chaininfo.json", None),
        ("POST", "/rest/chaininfo.json", Some(alice.as_str())),
        ("POST", "/rest/mempool/info.json", Some(alice.as_str())),
        ("POST", "/anything", Some(alice.as_str())),
        ("GET", "/rest/block/00.json", None),
    ] {
        let (status, head, body) = exchange(&mut s, method, path, auth, rpc_body).await;
        assert_eq!((status, body.as_str()), (404, ""), "{method} {path}: {head}");
    }
    // JSON-RPC on the same connection still works.
    let (status, _, body) = exchange(&mut s, "POST", "/", Some(&alice), rpc_body).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""result":3"#), "{body}");

    let rest = "[front.api.rest]\n\"/rest/chaininfo.json\" = \"cheap\"\n\"/rest/block/\" = \"medium\"\n\
                \"/rest/headers/\" = \"cheap\"\n";
    let on = gateway::start(&config(
        dir.path(),
        "127.0.0.1:0",
        node.rpc,
        &["getblockcount"],
        rest,
        "",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(on.addr("rpc")).await.unwrap();
    let medium_ok = api_requests("medium", "ok");
    let (status, head, info) = exchange(&mut s, "GET", "/rest/chaininfo.json", None, "").await;
    assert_eq!(status, 200, "{head}{info}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let (a, b): (Value, Value) = (
        serde_json::from_str(&info).unwrap(),
        serde_json::from_str(&direct_info).unwrap(),
    );
    assert_eq!((&a["blocks"], &a["bestblockhash"]), (&b["blocks"], &b["bestblockhash"]));
    let path = format!("/rest/block/{}.json", hashes[1]);
    let (status, _, block) = exchange(&mut s, "GET", &path, None, "").await;
    assert_eq!(status, 200, "{block}");
    assert_eq!(block, direct_get(&node, &path).await.1);
    assert!(
        api_requests("medium", "ok") - medium_ok >= 1.0,
        "the block was not counted as medium"
    );
    // The node's own refusals pass through as it gave them.
    let (status, head, bad) = exchange(&mut s, "GET", "/rest/block/zz.json", None, "").await;
    assert_eq!((status, bad.as_str()), (400, "Invalid hash: zz\r\n"), "{head}");
    assert!(head.contains("content-type: text/plain"), "{head}");
    let path = format!("/rest/headers/2/{}.hex", hashes[0]);
    let (status, _, headers) = exchange(&mut s, "GET", &path, None, "").await;
    assert_eq!((status, headers.len()), (200, 2 * 2 * 80 + 1), "{headers}");
    // Unlisted paths and other methods on listed ones stay here.
    for (method, path, want) in [
        ("GET", "/rest/mempool/info.json", 404),
        ("GET", "/rest/tx/00.json", 404),
        ("POST", "/rest/chaininfo.json", 405),
        ("GET", "/", 405),
    ] {
        let (status, head, _) = exchange(&mut s, method, path, None, "").await;
        assert_eq!(status, want, "{method} {path}: {head}");
    }

    // The class prices the path: as heavy (500), the third block crosses a hard limit of 1200.
    let priced = gateway::start(&config(
        dir.path(),
        "127.0.0.1:0",
        node.rpc,
        &["getblockcount"],
        "[front.api.rest]\n\"/rest/block/\" = \"heavy\"\n\"/rest/chaininfo.json\" = \"cheap\"\n",
        "[cost]\nsoft_limit = 1100\nhard_limit = 1200\nconnection_cost = 0\n",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(priced.addr("rpc")).await.unwrap();
    for _ in 0..20 {
        let (status, _, _) = exchange(&mut s, "GET", "/rest/chaininfo.json", None, "").await;
        assert_eq!(status, 200);
    }
    let path = format!("/rest/block/{}.json", hashes[2]);
    let statuses = [
        exchange(&mut s, "GET", &path, None, "").await.0,
        exchange(&mut s, "GET", &path, None, "").await.0,
        exchange(&mut s, "GET", &path, None, "").await.0,
    ];
    assert_eq!(statuses, [200, 200, 503]);
    assert!(priced.guard().bans().lookup(ip("127.0.0.1")).is_some(), "not banned");
}

/// `alice`'s methods for a token: `tok-7f3e9a1c`, stored as salt `beef` and HMAC-SHA256(key = "beef",
/// message = the token).
const TOKEN: &str = "tok-7f3e9a1c";
const TOKEN_HASH: &str = "beef$debd023fb9659b577fc630ceb5c883c42039cd3c80e7bf7a3f8611be75a0bfdd";

/// Bearer tokens authenticate like users, each with its own method set; the stored hash is not a token,
/// a wrong token gets 401 and costs `error_cost`, and users keep working beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_authenticate_with_their_own_method_set() {
    let node = Bitcoind::start(&[]).await;
    let hashes = node.mine(2).await;
    let dir = tempfile::tempdir().unwrap();
    let (fresh, fresh_hash) = gatehouse::front::api::auth::new_token();
    let tokens = format!(
        "[[front.api.tokens]]\nname = \"explorer\"\ntoken_hash = \"{TOKEN_HASH}\"\nmethods = [\"getblockhash\"]\n\
         [[front.api.tokens]]\nname = \"fresh\"\ntoken_hash = \"{fresh_hash}\"\nmethods = [\"getbestblockhash\"]\n"
    );
    let text = config(dir.path(), "127.0.0.1:0", node.rpc, &["getblockcount"], "", "");
    let running = gateway::start(&format!("{text}{tokens}")).await;
    let mut s = tokio::net::TcpStream::connect(running.addr("rpc")).await.unwrap();
    let call = |m: &str, p: &str| format!(r#"{{"jsonrpc":"1.0","id":5,"method":"{m}","params":{p}}}"#);
    let bearer = format!("Bearer {TOKEN}");

    let (status, _, body) = exchange(&mut s, "POST", "/", Some(&bearer), &call("getblockhash", "[1]")).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"], json!(hashes[0]), "{body}");
    // Outside the token's set (alice's method included): bitcoind's refusal, never the node.
    for m in ["getblockcount", "stop", "getbestblockhash"] {
        let (status, _, body) = exchange(&mut s, "POST", "/", Some(&bearer), &call(m, "[]")).await;
        assert_eq!(status, 404, "{m}: {body}");
        assert!(body.contains("-32601"), "{m}: {body}");
    }
    let (status, _, body) = exchange(
        &mut s,
        "POST",
        "/",
        Some(&format!("Bearer {fresh}")),
        &call("getbestblockhash", "[]"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Near misses: another token's entry, the stored hash itself, a changed byte, an empty token.
    for wrong in [
        format!("Bearer {TOKEN_HASH}"),
        format!("Bearer {fresh_hash}"),
        format!("Bearer {}X", &TOKEN[..TOKEN.len() - 1]),
        "Bearer ".to_string(),
        format!("Basic {}", basic("explorer", TOKEN)),
    ] {
        let (status, head, _) = exchange(&mut s, "POST", "/", Some(&wrong), &call("getblockhash", "[1]")).await;
        assert_eq!(status, 401, "{wrong}: {head}");
    }
    // Users work beside tokens.
    let alice = format!("Basic {}", basic(USER, PASSWORD));
    let (status, _, body) = exchange(&mut s, "POST", "/", Some(&alice), &call("getblockcount", "[]")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""result":2"#), "{body}");
}

/// A keep-alive connection waiting between requests is closed as soon as its group crosses the hard
/// limit through another client's calls (not at its next request, nor after `keepalive_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keepalive_connection_is_closed_when_its_group_crosses_the_hard_limit() {
    let node = Bitcoind::start(&[]).await;
    node.mine(1).await;
    let dir = tempfile::tempdir().unwrap();
    let running = gateway::start(&config(
        dir.path(),
        "127.0.0.1:0",
        node.rpc,
        &["getblockcount", "gettxoutsetinfo"],
        "keepalive_timeout = \"60s\"\n[front.api.method_costs]\ngettxoutsetinfo = 1000\n",
        "[cost]\nsoft_limit = 300\nhard_limit = 350\nconnection_cost = 0\ngroup_private = true\n",
    ))
    .await;
    let front = running.addr("rpc");
    let alice = format!("Basic {}", basic(USER, PASSWORD));
    let count = r#"{"id":1,"method":"getblockcount"}"#;
    let mut idle = crate::support::net::connect_from("127.0.0.2", front).await.unwrap();
    let (status, _, _) = exchange(&mut idle, "POST", "/", Some(&alice), count).await;
    assert_eq!(status, 200);

    let mut heavy = crate::support::net::connect_from("127.0.0.3", front).await.unwrap();
    let (status, _, body) = exchange(
        &mut heavy,
        "POST",
        "/",
        Some(&alice),
        r#"{"id":2,"method":"gettxoutsetinfo"}"#,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let took = crate::support::net::closed_within(&mut idle, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    for who in ["127.0.0.2", "127.0.0.3"] {
        assert!(running.guard().bans().lookup(ip(who)).is_some(), "{who} not banned");
    }
}

/// `upstreams` are tried in order: a dead first entry is skipped, and when the node a client's
/// connection uses goes down, its next request is served by the next node on the same client connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_fail_over_to_the_next_node() {
    let first = Bitcoind::start(&[]).await;
    first.mine(2).await;
    let second = Bitcoind::start(&[]).await;
    second.mine(4).await;
    let dir = tempfile::tempdir().unwrap();
    let refusing = crate::support::net::refusing_addr();
    let dead = refusing.addr;
    let text = config(dir.path(), "127.0.0.1:0", first.rpc, &["getblockcount"], "", "").replace(
        &format!("upstreams = [\"{}\"]", first.rpc),
        &format!("upstreams = [\"{dead}\", \"{}\", \"{}\"]", first.rpc, second.rpc),
    );
    assert!(text.contains(&dead.to_string()), "{text}");
    let running = gateway::start(&text).await;
    let alice = format!("Basic {}", basic(USER, PASSWORD));
    let count = r#"{"id":1,"method":"getblockcount"}"#;
    let mut s = tokio::net::TcpStream::connect(running.addr("rpc")).await.unwrap();
    let (status, _, body) = exchange(&mut s, "POST", "/", Some(&alice), count).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""result":2"#), "not the first live node: {body}");
    drop(first);
    let (status, _, body) = exchange(&mut s, "POST", "/", Some(&alice), count).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""result":4"#), "not the second node: {body}");
}

/// A node that never answers: the client gets the gateway's 504 with a JSON-RPC error carrying its id
/// once `request_timeout` has passed, and its connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_answers_is_cut_at_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let hung = crate::support::backends::silent_backend().await;
    let running = gateway::start(&config(
        dir.path(),
        "127.0.0.1:0",
        hung,
        &["getblockcount"],
        "request_timeout = \"1s\"\n",
        "",
    ))
    .await;
    let alice = format!("Basic {}", basic(USER, PASSWORD));
    let mut s = tokio::net::TcpStream::connect(running.addr("rpc")).await.unwrap();
    for id in ["\"a\"", "2"] {
        let start = std::time::Instant::now();
        let body = format!(r#"{{"id":{id},"method":"getblockcount"}}"#);
        let (status, _, reply) = exchange(&mut s, "POST", "/", Some(&alice), &body).await;
        let took = start.elapsed();
        assert_eq!(status, 504, "{reply}");
        assert_eq!(
            reply,
            format!(r#"{{"result":null,"error":{{"code":-32603,"message":"request timed out"}},"id":{id}}}"#)
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
}

/// PROXY intake as on the other fronts: behind a trusted load balancer, the client the header names is
/// the one charged and banned (wrong passwords up to the hard limit), not the balancer's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_the_named_client_is_charged_and_banned() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        dir.path(),
        "127.0.0.1:0",
        crate::support::net::free_addr(),
        &["getblockcount"],
        "",
        "[cost]\nsoft_limit = 300\nhard_limit = 350\nconnection_cost = 0\nerror_cost = 100\n",
    );
    let running = gateway::start(&format!(
        "{text}[front.proxy_protocol]\naccept_from = [\"127.0.0.9/32\"]\n"
    ))
    .await;
    let mut s = crate::support::net::connect_from("127.0.0.9", running.addr("rpc"))
        .await
        .unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8332\r\n")
        .await
        .unwrap();
    let body = r#"{"id":1,"method":"getblockcount"}"#;
    let mut statuses = Vec::new();
    for i in 0..4 {
        let wrong = format!("Basic {}", basic(USER, &format!("guess{i}")));
        statuses.push(exchange(&mut s, "POST", "/", Some(&wrong), body).await.0);
    }
    assert_eq!(statuses, [401, 401, 401, 503]);
    let bans = running.guard().bans();
    assert!(
        bans.lookup(ip("203.0.113.7")).is_some(),
        "the named client was not banned"
    );
    assert!(bans.lookup(ip("127.0.0.9")).is_none(), "the balancer was banned");
}

/// The same through another front: an Electrum session of the group takes it over the hard limit, and
/// the API front's idle connection is closed at once (one ledger for both fronts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_electrum_session_crossing_the_hard_limit_closes_the_groups_idle_api_connection() {
    let dir = tempfile::tempdir().unwrap();
    let electrum = crate::support::backends::stub_backend(&[]).await;
    let api = config(
        dir.path(),
        "127.0.0.1:0",
        crate::support::net::free_addr(),
        &["getblockcount"],
        "",
        "[cost]\nsoft_limit = 300\nhard_limit = 350\nconnection_cost = 0\ngroup_private = true\n\
         [cost.methods]\n\"blockchain.estimatefee\" = 1000\n",
    );
    let text = format!(
        "{api}{}",
        gateway::front("electrum", "el", "127.0.0.5:0", "tcp", &[electrum], "")
    );
    let running = gateway::start(&text).await;
    let alice = format!("Basic {}", basic(USER, PASSWORD));
    let mut idle = crate::support::net::connect_from("127.0.0.2", running.addr("rpc"))
        .await
        .unwrap();
    // Answered by the gateway itself (the node's address is a closed port): the connection is kept.
    let (status, _, _) = exchange(&mut idle, "POST", "/", Some(&alice), r#"{"id":1,"method":"stop"}"#).await;
    assert_eq!(status, 404);

    let mut wallet = crate::support::clients::Client::open("127.0.0.3", running.addr("el")).await;
    let _ = wallet.send("blockchain.estimatefee", "[2]", 1000.0).await;
    let took = crate::support::net::closed_within(&mut idle, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        running.guard().bans().lookup(ip("127.0.0.2")).is_some(),
        "the idle client was not banned"
    );
}
