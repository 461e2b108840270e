//! A stoxumd / rippled-family API port behind a `kind = "api"` front of profile `ledger`, driven by clients
//! nobody here wrote: xrpl-py (PyPI) over JSON-RPC and WebSocket, xrpl.js (npm `xrpl`) over WebSocket, run
//! as `python3` / `node` subprocesses (tests/support/scripts) that print their results as JSON. No such
//! node installs here, so the node is the stub of `support::ledger`, which answers in the node's shapes and
//! records what reached it. Tests that need distinct client addresses speak the protocol themselves from
//! 127.0.0.x.

use crate::support::gateway::{self, RELAXED};
use crate::support::ledger::{Stub, ACCOUNT, LEDGER_HASH};
use crate::support::net::{self, connect_from};
use crate::support::parts;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/scripts")
        .join(name)
}

/// Runs the xrpl-py client script with `steps`; its printed results, one per step.
async fn xrpl_py(front: SocketAddr, steps: Value) -> Vec<Value> {
    let out = tokio::process::Command::new("python3")
        .env("PYTHONPATH", parts::xrpl_py())
        .arg(script("xrpl_py_client.py"))
        .arg(format!("http://{front}/"))
        .arg(format!("ws://{front}/"))
        .arg(steps.to_string())
        .output()
        .await
        .expect("run python3");
    parse_output("xrpl-py", out)
}

/// Runs the xrpl.js client script with `steps`.
async fn xrpl_js(front: SocketAddr, steps: Value) -> Vec<Value> {
    let out = tokio::process::Command::new("node")
        .env("NODE_PATH", parts::xrpl_js().join("node_modules"))
        .arg(script("xrpl_js_client.js"))
        .arg(format!("ws://{front}/"))
        .arg(steps.to_string())
        .output()
        .await
        .expect("run node");
    parse_output("xrpl.js", out)
}

fn parse_output(who: &str, out: std::process::Output) -> Vec<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{who} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{who}: {e}: {stdout}"))
}

/// A ledger-profile front named "ledger" on `listen` in front of `node`, with `api` keys of [front.api]
/// (then its sub-tables), after `global` tables.
fn config(node: SocketAddr, listen: &str, api: &str, global: &str) -> String {
    let api = format!("[front.api]\nprofile = \"ledger\"\n{api}\n");
    format!(
        "{RELAXED}{global}{}",
        gateway::front("api", "ledger", listen, "tcp", &[node], &api)
    )
}

/// A WebSocket client of the front from source address `from`.
type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn ws_from(from: &str, front: SocketAddr) -> Ws {
    let tcp = connect_from(from, front).await.unwrap();
    tokio_tungstenite::client_async(format!("ws://{front}/"), tcp)
        .await
        .unwrap()
        .0
}

/// Sends `req` and returns the next message that is a response.
async fn ws_call(ws: &mut Ws, req: Value) -> Value {
    ws.send(Message::text(req.to_string())).await.unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a reply within 5 s")
            .expect("connection open")
            .expect("a message");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "response" {
                return v;
            }
        }
    }
}

/// One raw JSON-RPC exchange from `from`: the whole HTTP response as text.
async fn raw_post(from: &str, front: SocketAddr, body: &str, extra_headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {front}\r\nConnection: close\r\nContent-Type: application/json\r\n{extra_headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = connect_from(from, front).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `gatehouse_api_requests_total` of the ledger profile for one class and result.
fn requests(class: &str, result: &str) -> f64 {
    let text = gatehouse::telemetry::metrics::render(None);
    let series =
        format!("gatehouse_api_requests_total{{profile=\"ledger\",method_class=\"{class}\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrpl_py_and_xrpl_js_get_the_nodes_answers_and_pushed_stream_messages() {
    let stub = Stub::start().await;
    let running = gateway::start(&config(stub.addr(), "127.0.0.1:0", "", "")).await;
    let front = running.addr("ledger");
    let before = requests("reference", "ok");

    let got = xrpl_py(
        front,
        json!([
            {"t": "rpc", "m": "server_info"},
            {"t": "rpc", "m": "account_info", "p": {"account": ACCOUNT}},
            {"t": "rpc", "m": "ledger", "p": {"ledger_index": "validated"}},
            {"t": "ws", "m": "server_info"},
            {"t": "ws", "m": "account_tx", "p": {"account": ACCOUNT}},
            {"t": "ws_sub", "p": {"streams": ["ledger"]}, "n": 2},
        ]),
    )
    .await;
    let all = serde_json::to_string(&got).unwrap();
    for r in &got {
        assert_eq!(r["status"], "success", "{all}");
    }
    assert_eq!(got[0]["result"]["info"]["build_version"], "2.3.0-stub", "{all}");
    assert_eq!(got[1]["result"]["account_data"]["Account"], ACCOUNT, "{all}");
    assert_eq!(got[2]["result"]["ledger_hash"], LEDGER_HASH, "{all}");
    assert_eq!(got[3]["result"]["info"]["server_state"], "full", "{all}");
    assert_eq!(
        got[4]["result"]["transactions"].as_array().map(Vec::len),
        Some(1),
        "{all}"
    );
    // The subscription's reply, then the pushed messages as the node sent them.
    assert_eq!(got[5]["result"]["ledger_index"], 100, "{all}");
    assert_eq!(got[5]["pushed"][0]["type"], "ledgerClosed", "{all}");
    assert_eq!(got[5]["pushed"][0]["ledger_index"], 101, "{all}");
    assert_eq!(got[5]["pushed"][1]["type"], "transaction", "{all}");
    assert_eq!(got[5]["pushed"][1]["engine_result"], "tesSUCCESS", "{all}");

    let got = xrpl_js(
        front,
        json!([
            {"t": "req", "r": {"command": "server_info"}},
            {"t": "req", "r": {"command": "account_info", "account": ACCOUNT}},
            {"t": "events", "r": {"command": "subscribe", "streams": ["ledger"]}, "events": ["ledgerClosed", "transaction"], "n": 2},
            {"t": "events", "r": {"command": "path_find", "subcommand": "create", "source_account": ACCOUNT,
              "destination_account": "rPT1Sjq2YGrBMTttX4GZHjKu9dyfzbpAYe", "destination_amount": "1000000"},
             "events": ["path_find"], "n": 1},
            {"t": "req", "r": {"command": "submit", "tx_blob": "1200002280000000"}},
        ]),
    )
    .await;
    let all = serde_json::to_string(&got).unwrap();
    assert_eq!(got[0]["ok"]["result"]["info"]["hostid"], "STUB", "{all}");
    assert_eq!(got[0]["ok"]["type"], "response", "{all}");
    assert_eq!(got[1]["ok"]["result"]["account_data"]["Sequence"], 7, "{all}");
    let types: Vec<&str> = got[2]["pushed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["type"].as_str())
        .collect();
    assert_eq!(types, ["ledgerClosed", "transaction"], "{all}");
    // The path_find update reaches xrpl.js as the node sent it.
    assert_eq!(got[3]["pushed"][0]["type"], "path_find", "{all}");
    assert_eq!(got[3]["pushed"][0]["full_reply"], true, "{all}");
    assert_eq!(got[4]["ok"]["result"]["engine_result"], "tesSUCCESS", "{all}");
    // Each client request reached the node once, the WebSocket ones over one session per client.
    let commands = stub.commands();
    for c in [
        "server_info",
        "account_info",
        "ledger",
        "account_tx",
        "subscribe",
        "path_find",
        "submit",
    ] {
        assert!(commands.iter().any(|s| s == c), "{c} missing from {commands:?}");
    }
    assert_eq!(stub.ws_sessions(), 2);
    assert!(requests("reference", "ok") - before >= 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_never_reach_the_node_and_get_its_no_permission_error() {
    let stub = Stub::start().await;
    let running = gateway::start(&config(stub.addr(), "127.0.0.1:0", "", "")).await;
    let front = running.addr("ledger");
    let refused_before = requests("malformed", "refused");

    let got = xrpl_py(
        front,
        json!([
            {"t": "rpc", "m": "stop"},
            {"t": "rpc", "m": "wallet_propose", "p": {"passphrase": "masterpassphrase"}},
            {"t": "rpc", "m": "no_such_command"},
            {"t": "ws", "m": "validation_create"},
            {"t": "ws", "m": "peers"},
            {"t": "ws", "m": "no_such_command"},
            {"t": "rpc", "m": "ping"},
        ]),
    )
    .await;
    let all = serde_json::to_string(&got).unwrap();
    for i in [0, 1, 3, 4] {
        assert_eq!(got[i]["status"], "error", "{all}");
        assert_eq!(got[i]["result"]["error"], "noPermission", "{all}");
        assert_eq!(got[i]["result"]["error_code"], 6, "{all}");
        assert_eq!(
            got[i]["result"]["error_message"], "You don't have permission for this command.",
            "{all}"
        );
    }
    // The node masks secrets in the request it echoes; so does the gateway.
    assert_eq!(got[1]["result"]["request"]["passphrase"], "<masked>", "{all}");
    assert_eq!(got[1]["result"]["request"]["command"], "wallet_propose", "{all}");
    for i in [2, 5] {
        assert_eq!(got[i]["result"]["error"], "unknownCmd", "{all}");
        assert_eq!(got[i]["result"]["error_code"], 32, "{all}");
    }
    assert_eq!(got[6]["status"], "success", "{all}");

    let got = xrpl_js(
        front,
        json!([
            {"t": "req", "r": {"command": "ledger_accept"}},
            {"t": "req", "r": {"command": "log_level", "severity": "trace"}},
            {"t": "req", "r": {"command": "server_info"}},
        ]),
    )
    .await;
    let all = serde_json::to_string(&got).unwrap();
    for i in [0, 1] {
        assert_eq!(got[i]["err"]["error"], "noPermission", "{all}");
        assert_eq!(got[i]["err"]["status"], "error", "{all}");
        assert_eq!(got[i]["err"]["type"], "response", "{all}");
    }
    assert_eq!(got[2]["ok"]["result"]["info"]["hostid"], "STUB", "{all}");

    let reached = stub.commands();
    for c in [
        "stop",
        "wallet_propose",
        "validation_create",
        "peers",
        "ledger_accept",
        "log_level",
        "no_such_command",
    ] {
        assert!(!reached.iter().any(|s| s == c), "{c} reached the node: {reached:?}");
    }
    assert!(requests("malformed", "refused") - refused_before >= 8.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_capped_per_session_and_per_group() {
    let stub = Stub::start().await;
    let running = gateway::start(&config(
        stub.addr(),
        "127.0.0.1:0",
        "max_subscriptions = 3\nmax_subscriptions_per_group = 4\n",
        "[cost]\ngroup_private = true\n",
    ))
    .await;
    let front = running.addr("ledger");
    let mut a = ws_from("127.0.0.2", front).await;
    let mut b = ws_from("127.0.0.3", front).await;
    let r = ws_call(
        &mut a,
        json!({"id": 1, "command": "subscribe", "streams": ["ledger"], "accounts": [ACCOUNT]}),
    )
    .await;
    assert_eq!(r["status"], "success", "{r}");
    // Past the session's cap: the node's slowDown, and the request never reaches the node.
    let r = ws_call(
        &mut a,
        json!({"id": 2, "command": "subscribe", "accounts": ["rA1", "rA2"]}),
    )
    .await;
    assert_eq!(r["error"], "slowDown", "{r}");
    assert_eq!(r["error_code"], 10, "{r}");
    assert_eq!(r["id"], 2, "{r}");
    let subscribes = || stub.commands().iter().filter(|c| *c == "subscribe").count();
    assert_eq!(subscribes(), 1);
    // 127.0.0.3 shares the /24 group: 2 more fit the group's 4, a third does not.
    let r = ws_call(
        &mut b,
        json!({"id": "x", "command": "subscribe", "accounts": ["rB1", "rB2"]}),
    )
    .await;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["id"], "x", "{r}");
    let r = ws_call(
        &mut b,
        json!({"id": "y", "command": "subscribe", "streams": ["transactions"]}),
    )
    .await;
    assert_eq!(r["error"], "slowDown", "{r}");
    let metrics = gatehouse::telemetry::metrics::render(None);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gatehouse_api_ledger_subscriptions_refused_total{scope=\"group\"} ")),
        "{metrics}"
    );
    // Unsubscribing hands the slots back to the group.
    let r = ws_call(
        &mut a,
        json!({"id": 3, "command": "unsubscribe", "accounts": [ACCOUNT]}),
    )
    .await;
    assert_eq!(r["status"], "success", "{r}");
    let r = ws_call(
        &mut b,
        json!({"id": "z", "command": "subscribe", "streams": ["transactions"]}),
    )
    .await;
    assert_eq!(r["status"], "success", "{r}");
    // A session's end hands its slots back too.
    drop(a);
    let mut c = ws_from("127.0.0.4", front).await;
    let freed = net::within(Duration::from_secs(3), async || {
        ws_call(
            &mut c,
            json!({"id": 9, "command": "subscribe", "streams": ["validations"]}),
        )
        .await["status"]
            == "success"
    })
    .await;
    assert!(freed.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_notifications_is_cut_off() {
    // About 6 MB: more than the kernel can hold on the way (the gateway's send buffer grows up to 4 MiB
    // with Linux's default tcp_wmem, the client's receive buffer is set to 64 KiB below), so the gateway
    // must queue what it cannot write, whatever the kernel's buffer tuning did. With 1.5 MB the kernel
    // once took it all and the client was served to the end.
    const FLOOD: usize = 20_000;
    let stub = Stub::start().await;
    let running = gateway::start(&config(
        stub.addr(),
        "127.0.0.1:0",
        "extra_commands = [\"stub_flood\"]\nmax_pending_output = \"64KiB\"\nslow_reader_timeout = \"2s\"\n",
        "",
    ))
    .await;
    let front = running.addr("ledger");
    let tcp = connect_from("127.0.0.2", front).await.unwrap();
    // A modest receive buffer, so the kernel holds little of the flood the client does not read. Not
    // much smaller: below a segment or two, window updates are held back (silly-window avoidance) and the
    // gateway's writes crawl along on zero-window probes once the client reads again.
    let sock = socket2::SockRef::from(&tcp);
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{front}/"), tcp)
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"id": 1, "command": "stub_flood", "count": FLOOD}).to_string(),
    ))
    .await
    .unwrap();
    // The client reads nothing; after a while the gateway has cut it and the stream ends.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut n = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = ws.next().await {
            n += 1;
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection is still open after {n} messages");
    assert!(
        n < FLOOD,
        "all {n} notifications were buffered for a client that did not read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_names_the_client_only_when_configured_and_client_headers_never_pass() {
    let stub = Stub::start().await;
    let on = gateway::start(&config(stub.addr(), "127.0.0.1:0", "forwarded = true\n", "")).await;
    let off = gateway::start(&config(stub.addr(), "127.0.0.2:0", "", "")).await;
    let spoof = "Forwarded: for=203.0.113.9\r\nX-Forwarded-For: 203.0.113.10\r\n";
    let body = r#"{"method":"ping","params":[{}]}"#;
    let r = raw_post("127.0.0.5", on.addr("ledger"), body, spoof).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = raw_post("127.0.0.5", off.addr("ledger"), body, spoof).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let mut ws = ws_from("127.0.0.6", on.addr("ledger")).await;
    assert_eq!(
        ws_call(&mut ws, json!({"id": 1, "command": "ping"})).await["status"],
        "success"
    );
    let mut ws = ws_from("127.0.0.6", off.addr("ledger")).await;
    assert_eq!(
        ws_call(&mut ws, json!({"id": 1, "command": "ping"})).await["status"],
        "success"
    );

    let seen = stub.seen();
    let header = |i: usize, name: &str| -> Vec<String> {
        seen[i]
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(header(0, "forwarded"), ["for=127.0.0.5"], "{seen:?}");
    assert!(header(1, "forwarded").is_empty(), "{seen:?}");
    assert_eq!(header(2, "forwarded"), ["for=127.0.0.6"], "{seen:?}");
    assert!(header(3, "forwarded").is_empty(), "{seen:?}");
    for i in 0..4 {
        assert!(header(i, "x-forwarded-for").is_empty(), "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_on_the_bitcoind_profile_too() {
    // The stub records the headers of any JSON-RPC POST, so it stands in for bitcoind here.
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node.password"), "secret\n").unwrap();
    let front = |listen: &str, extra: &str| {
        let api = format!(
            "[front.api]\nprofile = \"bitcoind\"\nbackend_user = \"gw\"\nbackend_password_file = \"node.password\"\n\
             public_methods = [\"ping\"]\n{extra}\n"
        );
        gateway::front("api", "rpc", listen, "tcp", &[stub.addr()], &api)
    };
    let on = gateway::start_in(
        dir.path(),
        &format!("{RELAXED}{}", front("127.0.0.1:0", "forwarded = true")),
    )
    .await;
    let off = gateway::start_in(dir.path(), &format!("{RELAXED}{}", front("127.0.0.2:0", ""))).await;
    let spoof = "Forwarded: for=203.0.113.9\r\nX-Forwarded-For: 203.0.113.10\r\n";
    let body = r#"{"jsonrpc":"1.0","id":1,"method":"ping","params":[]}"#;
    for g in [&on, &off] {
        let r = raw_post("127.0.0.7", g.addr("rpc"), body, spoof).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    let seen = stub.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let forwarded: Vec<Vec<&str>> = seen
        .iter()
        .map(|s| {
            s.headers
                .iter()
                .filter(|(k, _)| k == "forwarded" || k == "x-forwarded-for")
                .map(|(_, v)| v.as_str())
                .collect()
        })
        .collect();
    assert_eq!(forwarded, [vec!["for=127.0.0.7"], vec![]], "{seen:?}");
}

/// The node's balance window, in seconds: a charge adds fee / WINDOW and decays over it.
const WINDOW: f64 = 32.0;
/// `[cost.ledger]` defaults: the warning and drop thresholds.
const WARNING: f64 = 5000.0;
const DROP: f64 = 25000.0;

/// The 1-based request at which a client charging `fee` per request, sending at the times `sent`
/// (seconds), first has a balance of at least `threshold`: each charge adds fee / 32 and decays by
/// e^(-dt/32), hand-computed.
fn predicted(sent: &[f64], fee: f64, threshold: f64, upto: usize) -> usize {
    let at = |k: usize| -> f64 {
        sent[..k]
            .iter()
            .map(|t| fee / WINDOW * (-(sent[k - 1] - t) / WINDOW).exp())
            .sum()
    };
    if let Some(k) = (1..=upto.min(sent.len())).find(|&k| at(k) >= threshold) {
        return k;
    }
    // Not reached by the requests sent: as many more as it takes, sent at once after the last.
    let mut balance = at(sent.len());
    let mut k = sent.len();
    while balance < threshold {
        balance += fee / WINDOW;
        k += 1;
    }
    k
}

/// `actual` is `predicted` within 2 % (at least one request either way, for small counts).
fn near(actual: usize, predicted: usize, what: &str) {
    let slack = ((predicted as f64) * 0.02).ceil().max(1.0) as usize;
    assert!(
        actual + slack >= predicted && actual <= predicted + slack,
        "{what} at request {actual}, predicted {predicted} ± {slack}"
    );
}

/// account_info at `fee`, so the thresholds are reached in a few hundred requests. (Not server_info: xrpl.js
/// sends one of its own when it connects.)
fn priced(fee: f64) -> String {
    format!("[front.api.fees.commands]\naccount_info = {fee}\n")
}

/// How many account_info requests reached the node.
fn account_infos(stub: &Stub) -> usize {
    stub.commands().iter().filter(|c| *c == "account_info").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_load_warning_at_the_predicted_request_then_1008_and_a_ban() {
    let stub = Stub::start().await;
    let fee = 1700.0;
    let running = gateway::start(&config(
        stub.addr(),
        "127.0.0.1:0",
        &priced(fee),
        "[cost]\ngroup_private = true\n",
    ))
    .await;
    let front = running.addr("ledger");
    let got = xrpl_js(
        front,
        json!([{"t": "until_closed", "r": {"command": "account_info", "account": ACCOUNT}, "max": 2000}]),
    )
    .await;
    let r = &got[0];
    let all = r.to_string();
    let sent: Vec<f64> = r["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let warned: Vec<usize> = r["warned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let answered = r["answered"].as_u64().unwrap() as usize;
    // The first reply past the warning threshold carries "warning":"load", and every one after it.
    let first = *warned.first().expect("no reply carried \"warning\":\"load\"");
    near(first, predicted(&sent, fee, WARNING, sent.len()), "warning");
    assert_eq!(warned.len(), answered - first + 1, "{all}");
    // The request that reaches the drop threshold is not answered: the node's close code and reason.
    near(answered + 1, predicted(&sent, fee, DROP, sent.len()), "drop");
    assert_eq!(r["closeCode"], 1008, "{all}");
    assert_eq!(account_infos(&stub), answered, "the dropped request reached the node");
    // The address is banned: a new connection is refused.
    assert!(net::is_refused("127.0.0.1", front).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_load_warning_at_the_predicted_request_then_503_and_a_ban() {
    let stub = Stub::start().await;
    let fee = 8500.0;
    let running = gateway::start(&config(
        stub.addr(),
        "127.0.0.1:0",
        &priced(fee),
        "[cost]\ngroup_private = true\n",
    ))
    .await;
    let front = running.addr("ledger");
    let got = xrpl_py(
        front,
        json!([{"t": "rpc_until", "m": "account_info", "p": {"account": ACCOUNT}, "max": 2000}]),
    )
    .await;
    let r = &got[0];
    let all = r.to_string();
    let sent: Vec<f64> = r["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let warned: Vec<usize> = r["warned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let first = *warned.first().expect("no reply carried \"warning\":\"load\"");
    near(first, predicted(&sent, fee, WARNING, sent.len()), "warning");
    // xrpl-py reports the node's 503 with its body.
    let failed_at = sent.len();
    near(failed_at, predicted(&sent, fee, DROP, sent.len()), "drop");
    assert_eq!(r["error"]["type"], "XRPLRequestFailureException", "{all}");
    assert!(all.contains("503") && all.contains("Server is overloaded"), "{all}");
    assert_eq!(
        stub.commands().len(),
        failed_at - 1,
        "the dropped request reached the node"
    );
    assert!(net::is_refused("127.0.0.1", front).await);
    // The raw reply: the node's status line and body.
    let other = gateway::start(&config(stub.addr(), "127.0.0.2:0", &priced(DROP * WINDOW), "")).await;
    let raw = raw_post(
        "127.0.0.9",
        other.addr("ledger"),
        r#"{"method":"account_info","params":[{}]}"#,
        "",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 503 Server is overloaded\r\n"), "{raw}");
    assert!(raw.ends_with("\r\n\r\nServer is overloaded\r\n"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_at_one_gateway_is_refused_at_another_of_its_cluster() {
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let links: Vec<SocketAddr> = (0..2).map(|_| net::free_addr()).collect();
    let keys = gateway::node_keys(dir.path(), 2);
    let mut gateways = Vec::new();
    for i in 0..2 {
        let peers = gateway::cluster_peers(i, &links, &keys);
        let cluster = format!(
            "[cluster]\nnode_key = \"node{i}.key\"\nlisten = \"{}\"\nanti_entropy = \"1s\"\n{peers}\n",
            links[i]
        );
        let toml = config(
            stub.addr(),
            &format!("127.0.0.{}:0", i + 1),
            &priced(DROP * WINDOW),
            &cluster,
        );
        gateways.push(gateway::start_in(dir.path(), &toml).await);
    }
    let up = net::within(Duration::from_secs(5), async || {
        gateways
            .iter()
            .all(|g| g.cluster().is_some_and(|c| c.status().peers.iter().all(|p| p.up)))
    })
    .await;
    assert!(up.is_some(), "cluster links not up");
    assert!(!net::is_refused("127.0.0.20", gateways[1].addr("ledger")).await);
    // One account_info costs the whole drop threshold: the client is closed with 1008 and banned.
    let mut ws = ws_from("127.0.0.20", gateways[0].addr("ledger")).await;
    ws.send(Message::text(
        json!({"id": 1, "command": "account_info", "account": ACCOUNT}).to_string(),
    ))
    .await
    .unwrap();
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("closed within 5 s")
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "threshold exceeded");
    // The second gateway refuses the address too, at admission.
    let refused = net::within(Duration::from_secs(5), async || {
        net::is_refused("127.0.0.20", gateways[1].addr("ledger")).await
    })
    .await;
    assert!(refused.is_some(), "the ban did not reach the second gateway");
    assert_eq!(account_infos(&stub), 0);
}

/// Reads until the server's close frame; its code and reason.
async fn close_frame(ws: &mut Ws, limit: Duration) -> (u16, String) {
    tokio::time::timeout(limit, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not closed within {limit:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_closed_when_its_group_reaches_the_drop_threshold() {
    let stub = Stub::start().await;
    let running = gateway::start(&config(
        stub.addr(),
        "127.0.0.1:0",
        &priced(DROP * WINDOW),
        "[cost]\ngroup_private = true\n",
    ))
    .await;
    let front = running.addr("ledger");
    // A subscribed session that sends nothing more, and another of the same /24 that crosses the threshold.
    let mut idle = ws_from("127.0.0.30", front).await;
    let r = ws_call(
        &mut idle,
        json!({"id": 1, "command": "subscribe", "streams": ["validations"]}),
    )
    .await;
    assert_eq!(r["status"], "success", "{r}");
    let mut heavy = ws_from("127.0.0.31", front).await;
    heavy
        .send(Message::text(
            json!({"id": 1, "command": "account_info", "account": ACCOUNT}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(
        close_frame(&mut heavy, Duration::from_secs(5)).await,
        (1008, "threshold exceeded".to_string())
    );
    // The idle session hears of it at once, not at its next request.
    assert_eq!(
        close_frame(&mut idle, Duration::from_secs(2)).await,
        (1008, "threshold exceeded".to_string())
    );
    assert_eq!(account_infos(&stub), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fees_spread_over_three_gateways_meet_one_drop_threshold() {
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let links: Vec<SocketAddr> = (0..3).map(|_| net::free_addr()).collect();
    let keys = gateway::node_keys(dir.path(), 3);
    // 60 requests at this fee reach the drop threshold (less what decays meanwhile).
    let fee = DROP * WINDOW / 60.0;
    let mut gateways = Vec::new();
    for i in 0..3 {
        let peers = gateway::cluster_peers(i, &links, &keys);
        let global = format!(
            "[cost]\ngroup_private = true\n\n[cluster]\nnode_key = \"node{i}.key\"\nlisten = \"{}\"\nanti_entropy = \"1s\"\n{peers}\n\
             [cluster.cost]\ninterval = \"100ms\"\nexpiry = \"1s\"\nthreshold = 10\n\n",
            links[i]
        );
        let toml = config(stub.addr(), &format!("127.0.0.{}:0", i + 1), &priced(fee), &global);
        gateways.push(gateway::start_in(dir.path(), &toml).await);
    }
    let up = net::within(Duration::from_secs(5), async || {
        gateways
            .iter()
            .all(|g| g.cluster().is_some_and(|c| c.status().peers.iter().all(|p| p.up)))
    })
    .await;
    assert!(up.is_some(), "cluster links not up");
    // One session per gateway from one address; a request to each in turn, a round every 50 ms, until
    // one of them is closed.
    let mut sessions = Vec::new();
    for g in &gateways {
        sessions.push(ws_from("127.0.3.2", g.addr("ledger")).await);
    }
    let start = std::time::Instant::now();
    let mut sent: Vec<f64> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let closed = 'run: loop {
        tick.tick().await;
        for ws in sessions.iter_mut() {
            sent.push(start.elapsed().as_secs_f64());
            let req = json!({"id": sent.len(), "command": "account_info", "account": ACCOUNT});
            if ws.send(Message::text(req.to_string())).await.is_err() {
                break 'run None;
            }
            loop {
                match tokio::time::timeout(Duration::from_secs(5), ws.next())
                    .await
                    .expect("an answer")
                {
                    Some(Ok(Message::Text(t))) if t.contains("\"type\":\"response\"") => break,
                    Some(Ok(Message::Close(f))) => break 'run f,
                    Some(Ok(_)) => continue,
                    _ => break 'run None,
                }
            }
        }
        assert!(sent.len() < 180, "never cut off after {} requests", sent.len());
    };
    let close = closed.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    // The balance when the client was cut off, hand-computed over everything it sent to the three.
    let last = sent[sent.len() - 1];
    let balance: f64 = sent.iter().map(|t| fee / WINDOW * (-(last - t) / WINDOW).exp()).sum();
    eprintln!("cut off after {} requests at a balance of {balance:.0}", sent.len());
    // Each gateway saw a third; reports lag by an interval or two on a loaded machine.
    assert!(
        (DROP * 0.98..DROP * 1.4).contains(&balance),
        "cut off at a balance of {balance:.0}, the threshold is {DROP}"
    );
    // The cut-off's ban refuses the address at every gateway.
    for g in &gateways {
        let refused = net::within(Duration::from_secs(3), async || {
            net::is_refused("127.0.3.2", g.addr("ledger")).await
        })
        .await;
        assert!(refused.is_some(), "not refused at {}", g.addr("ledger"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_without_subscriptions_is_closed_and_a_subscriber_stays() {
    let stub = Stub::start().await;
    let toml = config(stub.addr(), "127.0.0.1:0", "", "")
        .replace("[front.api]", "[front.timeouts]\nidle = \"1s\"\n\n[front.api]");
    let running = gateway::start(&toml).await;
    let front = running.addr("ledger");
    let mut quiet = ws_from("127.0.0.40", front).await;
    let mut subscriber = ws_from("127.0.0.41", front).await;
    let r = ws_call(
        &mut subscriber,
        json!({"id": 1, "command": "subscribe", "streams": ["validations"]}),
    )
    .await;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(close_frame(&mut quiet, Duration::from_secs(3)).await.0, 1001);
    // Past two idle periods the subscriber still gets answers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        ws_call(&mut subscriber, json!({"id": 2, "command": "ping"})).await["status"],
        "success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_batches_and_malformed_requests_get_the_nodes_answers() {
    let stub = Stub::start().await;
    let running = gateway::start(&config(stub.addr(), "127.0.0.1:0", "", "")).await;
    let front = running.addr("ledger");
    // A batch of public commands goes to the node whole.
    let ok = raw_post(
        "127.0.0.50",
        front,
        r#"{"method":"batch","params":[{"method":"ping"},{"method":"server_info"}]}"#,
        "",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(stub.commands(), ["batch"]);
    // One admin command refuses the whole batch, as the node refuses a forbidden request.
    let walled = raw_post(
        "127.0.0.50",
        front,
        r#"{"method":"batch","params":[{"method":"ping"},{"method":"stop"}]}"#,
        "",
    )
    .await;
    assert!(walled.starts_with("HTTP/1.1 403"), "{walled}");
    assert!(walled.ends_with("\r\n\r\nForbidden\r\n"), "{walled}");
    for (body, status, text) in [
        ("{not json", "400", "Unable to parse request"),
        (r#"{"params":[{}]}"#, "400", "Null method"),
        (r#"{"method":7}"#, "400", "method is not string"),
        (r#"{"method":"ping","params":{"a":1}}"#, "400", "params unparsable"),
    ] {
        let r = raw_post("127.0.0.50", front, body, "").await;
        assert!(r.starts_with(&format!("HTTP/1.1 {status}")), "{body}: {r}");
        assert!(r.contains(text), "{body}: {r}");
    }
    assert_eq!(stub.commands(), ["batch"]);
}
