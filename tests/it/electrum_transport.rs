//! Electrum transports and the session's edges: ws/wss fronts carry the same session as tcp (one JSON
//! message per WebSocket text frame), slow readers are cut off (output cap and timer) without the gateway
//! buffering without bound, backend failures are explained to the client before it is disconnected,
//! notifications pass through byte for byte, the per-session subscription cap holds, and BDK's real
//! `electrum-client` gets through the gateway exactly what it gets from the backend directly.

use crate::support::backends::{self, flood_backend, header_notification, FloodEnd};
use crate::support::gateway::RELAXED;
use crate::support::net::ip;
use crate::support::tls::Certs;
use crate::support::{gateway, net, tls};
use electrum_client::ElectrumApi;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

// ---- configuration helpers ----------------------------------------------------------------------------

/// One Electrum front on 127.0.0.1:0. `tls` adds [front.tls] (needed by "tls" and "wss").
fn front(name: &str, transport: &str, upstreams: &[SocketAddr], tls: Option<&Certs>, electrum: &str) -> String {
    let tls = tls.map(|c| gateway::tls_table(&c.cert, &c.key)).unwrap_or_default();
    let extra = format!("{tls}[front.electrum]\n{electrum}");
    gateway::front("electrum", name, "127.0.0.1:0", transport, upstreams, &extra)
}

/// The whole config: RELAXED admission, loopback clients grouped by /24, `cost` extra lines (which may
/// open [cost.methods]), then the fronts.
fn config(cost: &str, fronts: &[String]) -> String {
    format!("{RELAXED}[cost]\ngroup_private = true\n{cost}\n\n{}", fronts.join("\n"))
}

// ---- clients ------------------------------------------------------------------------------------------

/// An Electrum client over any transport: `send` one JSON message, `recv` one JSON message (a line for
/// tcp/ssl, a text frame for ws/wss); `recv` gives None once the gateway has closed the connection.
enum Client {
    Line(BufReader<TcpStream>),
    Ws(Box<WebSocketStream<TcpStream>>),
    Wss(Box<WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>),
}

const WAIT: Duration = Duration::from_secs(10);

impl Client {
    async fn connect(transport: &str, from: &str, to: SocketAddr, certs: Option<&Certs>) -> Client {
        let tcp = net::connect_from(from, to).await.unwrap();
        match transport {
            "tcp" => Client::Line(BufReader::new(tcp)),
            "ws" => {
                let (ws, _) = tokio_tungstenite::client_async("ws://localhost/", tcp).await.unwrap();
                Client::Ws(Box::new(ws))
            }
            "wss" => {
                let der = &certs.expect("wss needs the certificate").der;
                let tls = tls::tls_connector([der], &[&rustls::version::TLS13])
                    .connect(tls::server_name(), tcp)
                    .await
                    .unwrap();
                let (ws, _) = tokio_tungstenite::client_async("wss://localhost/", tls).await.unwrap();
                Client::Wss(Box::new(ws))
            }
            other => panic!("unknown transport {other}"),
        }
    }

    async fn send(&mut self, msg: &str) {
        self.try_send(msg).await.unwrap()
    }

    async fn try_send(&mut self, msg: &str) -> Result<(), String> {
        match self {
            Client::Line(s) => s
                .get_mut()
                .write_all(format!("{msg}\n").as_bytes())
                .await
                .map_err(|e| e.to_string()),
            Client::Ws(ws) => ws.send(Message::text(msg)).await.map_err(|e| e.to_string()),
            Client::Wss(ws) => ws.send(Message::text(msg)).await.map_err(|e| e.to_string()),
        }
    }

    /// The next message's raw text (a line without its newline, or a whole text frame).
    async fn recv_raw(&mut self) -> Option<String> {
        let fut = async {
            match self {
                Client::Line(s) => {
                    let mut line = String::new();
                    match s.read_line(&mut line).await {
                        Ok(0) | Err(_) => None,
                        // A partial line then EOF: the gateway cut the connection mid-message.
                        Ok(_) if !line.ends_with('\n') => None,
                        Ok(_) => {
                            line.pop();
                            Some(line)
                        }
                    }
                }
                Client::Ws(ws) => ws_recv(ws).await,
                Client::Wss(ws) => ws_recv(ws).await,
            }
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("no message and no close within 10s")
    }

    async fn recv(&mut self) -> Option<Value> {
        let raw = self.recv_raw().await?;
        // One message is exactly one JSON value: from_str rejects anything after it.
        Some(serde_json::from_str(&raw).unwrap_or_else(|e| panic!("not one JSON value ({e}): {raw:?}")))
    }

    /// Sends a request and returns the reply, which must carry the same id.
    async fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send(&req.to_string()).await;
        let reply = self
            .recv()
            .await
            .unwrap_or_else(|| panic!("closed instead of answering {method}"));
        assert_eq!(reply["id"], json!(id), "reply to {method}: {reply}");
        reply
    }

    /// True once the gateway has closed the connection (within 10 s), reading past anything still queued.
    async fn closed(&mut self) -> bool {
        self.closed_within(WAIT).await
    }

    async fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.recv_raw()).await {
                Err(_) => return false,
                Ok(None) => return true,
                Ok(Some(_)) => {}
            }
        }
    }
}

async fn ws_recv<S>(ws: &mut WebSocketStream<S>) -> Option<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            None | Some(Err(_)) => return None,
            Some(Ok(Message::Text(t))) => return Some(t.as_str().to_owned()),
            Some(Ok(Message::Close(_))) => return None,
            Some(Ok(Message::Binary(b))) => panic!("gateway sent a binary frame: {b:?}"),
            Some(Ok(_)) => {}
        }
    }
}

fn version_req(id: u64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "server.version", "params": ["test-wallet", ["1.4", "1.6"]]})
        .to_string()
}

// ---- stub backends ------------------------------------------------------------------------------------

const SH: [&str; 5] = [
    "1111111111111111111111111111111111111111111111111111111111111111",
    "2222222222222222222222222222222222222222222222222222222222222222",
    "3333333333333333333333333333333333333333333333333333333333333333",
    "4444444444444444444444444444444444444444444444444444444444444444",
    "5555555555555555555555555555555555555555555555555555555555555555",
];

#[derive(Clone, Default)]
struct StubOpts {
    /// Close the connection upon receiving this request (1-based count), without answering it.
    close_on_request: Option<usize>,
    /// A line sent right after answering each blockchain.scripthash.subscribe.
    after_subscribe: Option<String>,
}

/// A scripted Electrum backend: answers every request (server.version with protocol 1.4.2; unsubscribe
/// true only for a scripthash this connection subscribed), reports every
/// line it receives on the channel, and behaves as `opts` says.
async fn stub_backend(opts: StubOpts) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = backends::serve(move |s| {
        let (tx, opts) = (tx.clone(), opts.clone());
        async move {
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            let mut n = 0;
            let mut subscribed = std::collections::HashSet::new();
            loop {
                let mut line = String::new();
                match r.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                n += 1;
                let _ = tx.send(line.trim_end().to_string());
                if opts.close_on_request == Some(n) {
                    return;
                }
                let Ok(req) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let method = req["method"].as_str().unwrap_or("").to_string();
                let result = match method.as_str() {
                    "server.version" => json!(["Stub 1.0", "1.4.2"]),
                    "blockchain.headers.subscribe" => json!({"height": 7, "hex": "00".repeat(80)}),
                    "blockchain.scripthash.subscribe" => {
                        subscribed.insert(req["params"][0].to_string());
                        json!(format!("status-{}", req["params"][0]))
                    }
                    "blockchain.scripthash.unsubscribe" => json!(subscribed.remove(&req["params"][0].to_string())),
                    _ => Value::Null,
                };
                if req.get("id").is_some() {
                    let reply = json!({"jsonrpc": "2.0", "id": req["id"], "result": result});
                    if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
                if method == "blockchain.scripthash.subscribe" {
                    if let Some(extra) = &opts.after_subscribe {
                        if w.write_all(extra.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    })
    .await;
    (addr, rx)
}

/// Every line the stub has received so far.
fn drain(rx: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut v = Vec::new();
    while let Ok(l) = rx.try_recv() {
        v.push(l);
    }
    v
}

// ---- 12. ws and wss ------------------------------------------------------------------------------------

/// Over ws and wss (and tcp, for reference) the session is the same: server.version is answered,
/// blockchain.headers.subscribe gives its result, and every reply is exactly one JSON value in its own text
/// frame. A request spread over several lines inside one frame is still one request; pipelined frames
/// get one reply frame each; a batch in one frame gets one frame holding the whole array.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_and_wss_carry_the_electrum_session() {
    let c = tls::certs();
    let backend = gatehouse::demo::backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let toml = config(
        "",
        &[
            front("tcp", "tcp", &[backend], None, ""),
            front("ws", "ws", &[backend], None, ""),
            front("wss", "wss", &[backend], Some(&c), ""),
        ],
    );
    let running = gateway::start_in(c.dir.path(), &toml).await;
    for (t, from) in [("tcp", "127.0.0.2"), ("ws", "127.0.0.3"), ("wss", "127.0.0.4")] {
        let mut cl = Client::connect(t, from, running.addr(t), Some(&c)).await;

        cl.send(&version_req(1)).await;
        let raw = cl
            .recv_raw()
            .await
            .unwrap_or_else(|| panic!("{t}: closed on server.version"));
        assert!(!raw.contains('\n'), "{t}: a reply frame carries a newline: {raw:?}");
        let v: Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{t}: not one JSON value ({e}): {raw:?}"));
        assert_eq!(v["id"], 1, "{t}: {v}");
        assert_eq!(v["result"], json!(["SampleElectrum 1.0", "1.4"]), "{t}: {v}");

        // A pretty-printed request: newlines inside one message are JSON whitespace, not separators.
        let pretty = serde_json::to_string_pretty(
            &json!({"jsonrpc": "2.0", "id": 2, "method": "blockchain.headers.subscribe", "params": []}),
        )
        .unwrap();
        assert!(pretty.contains('\n'));
        if t == "tcp" {
            // On tcp a newline ends a message, so send the compact form there.
            cl.send(&serde_json::to_string(&serde_json::from_str::<Value>(&pretty).unwrap()).unwrap())
                .await;
        } else {
            cl.send(&pretty).await;
        }
        let v = cl
            .recv()
            .await
            .unwrap_or_else(|| panic!("{t}: closed on headers.subscribe"));
        assert_eq!(v["id"], 2, "{t}: {v}");
        assert_eq!(v["result"]["height"], 800000, "{t}: {v}");
        assert_eq!(v["result"]["hex"], "00".repeat(80), "{t}: {v}");

        // Three pipelined messages: three replies, one message each, in order.
        for (id, m) in [
            (3, "server.ping"),
            (4, "blockchain.estimatefee"),
            (5, "blockchain.relayfee"),
        ] {
            let params = if m == "blockchain.estimatefee" {
                json!([6])
            } else {
                json!([])
            };
            cl.send(&json!({"jsonrpc": "2.0", "id": id, "method": m, "params": params}).to_string())
                .await;
        }
        for (id, want) in [(3, Value::Null), (4, json!(0.00012)), (5, json!(0.00001))] {
            let v = cl.recv().await.unwrap_or_else(|| panic!("{t}: closed in a pipeline"));
            assert_eq!(v["id"], id, "{t}: {v}");
            assert_eq!(v["result"], want, "{t}: {v}");
        }

        // A batch is one message both ways.
        cl.send(
            &json!([
                {"jsonrpc": "2.0", "id": 6, "method": "blockchain.scripthash.get_balance", "params": [SH[0]]},
                {"jsonrpc": "2.0", "id": 7, "method": "server.ping", "params": []}
            ])
            .to_string(),
        )
        .await;
        let v = cl.recv().await.unwrap_or_else(|| panic!("{t}: closed on a batch"));
        let items = v
            .as_array()
            .unwrap_or_else(|| panic!("{t}: batch reply is not an array: {v}"));
        assert_eq!(items.len(), 2, "{t}: {v}");
        assert_eq!(items[0]["id"], 6, "{t}: {v}");
        assert_eq!(items[0]["result"]["confirmed"], 150000, "{t}: {v}");
        assert_eq!(items[1]["id"], 7, "{t}: {v}");

        // Same policy as tcp: a second server.version is refused, the session goes on.
        cl.send(&version_req(8)).await;
        let v = cl
            .recv()
            .await
            .unwrap_or_else(|| panic!("{t}: closed on a second server.version"));
        assert_eq!(v["id"], 8, "{t}: {v}");
        assert_eq!(v["error"]["code"], 1, "{t}: {v}");
        let v = cl.call(9, "server.ping", json!([])).await;
        assert_eq!(v["result"], Value::Null, "{t}: {v}");
    }
}

/// An oversized WebSocket message is what an oversized tcp line is: -32600, charged (errors and every
/// byte), a protocol violation, and the session goes on; the 11th violation bans the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_ws_message_is_refused_charged_and_banned_like_a_tcp_line() {
    let c = tls::certs();
    let (backend, _seen) = stub_backend(StubOpts::default()).await;
    let toml = config(
        // Limits far away, so only the violation count can end the session.
        "soft_limit = 100000\nhard_limit = 1000000",
        &[
            front("ws", "ws", &[backend], None, "max_line = \"1000B\""),
            front("wss", "wss", &[backend], Some(&c), "max_line = \"1000B\""),
        ],
    );
    let running = gateway::start_in(c.dir.path(), &toml).await;
    for (t, from) in [("ws", "127.0.30.2"), ("wss", "127.0.31.2")] {
        let group = {
            let o = match ip(from) {
                IpAddr::V4(a) => a.octets(),
                IpAddr::V6(_) => unreachable!(),
            };
            IpAddr::from([o[0], o[1], o[2], 0])
        };
        let mut cl = Client::connect(t, from, running.addr(t), Some(&c)).await;
        cl.call(1, "server.version", json!(["w", "1.4"])).await;
        // A message of exactly the limit is still a message.
        let head = r#"{"jsonrpc":"2.0","id":2,"method":"server.ping","params":[]"#;
        cl.send(&format!("{head}{}}}", " ".repeat(1000 - head.len() - 1))).await;
        let v = cl
            .recv()
            .await
            .unwrap_or_else(|| panic!("{t}: closed on a 1000-byte message"));
        assert_eq!(v["id"], 2, "{t}: {v}");
        assert_eq!(v["result"], Value::Null, "{t}: {v}");
        for i in 1..=10 {
            let before = running.ledger().group_cost(group);
            let started = std::time::Instant::now();
            let big =
                json!({"jsonrpc": "2.0", "id": 100 + i, "method": "server.ping", "params": ["x".repeat(200_000)]})
                    .to_string();
            cl.send(&big).await;
            let v = cl
                .recv()
                .await
                .unwrap_or_else(|| panic!("{t}: closed on oversized message {i}"));
            assert_eq!(v["error"]["code"], -32600, "{t}: {v}");
            assert!(v["error"]["message"].as_str().unwrap().contains("1000"), "{t}: {v}");
            // The cut tail is dropped as it arrives, behind the reply: a ping after it has paid for it.
            let v = cl.call(1000 + i, "server.ping", json!([])).await;
            assert_eq!(v["result"], Value::Null, "{t}: {v}");
            let charged = running.ledger().group_cost(group) - before;
            let want = 1100.0 + big.len() as f64 / 5000.0;
            // What the group's cost decayed meanwhile (hard_limit / 10000 units a second) is not a missed charge.
            let decayed = started.elapsed().as_secs_f64() * running.ledger().params().hard_limit / 10000.0;
            assert!(
                charged >= want - 1.0 - decayed,
                "{t}: message {i} cost {charged}, want about {want}"
            );
        }
        // Ten violations are tolerated, as on tcp.
        let v = cl.call(3, "server.ping", json!([])).await;
        assert_eq!(v["result"], Value::Null, "{t}: {v}");
        assert!(
            running.guard().bans().lookup(ip(from)).is_none(),
            "{t}: banned too early"
        );
        cl.send(&"x".repeat(5000)).await;
        let v = cl.recv().await.unwrap_or_else(|| panic!("{t}: closed without -32600"));
        assert_eq!(v["error"]["code"], -32600, "{t}: {v}");
        assert!(cl.closed().await, "{t}: still open after the 11th violation");
        let (_, ban) = running
            .guard()
            .bans()
            .lookup(ip(from))
            .unwrap_or_else(|| panic!("{t}: the 11th violation must ban"));
        assert!(ban.reason.contains("oversized"), "{t}: {}", ban.reason);
    }
}

/// A session that starts without server.version is refused with error 1 and closed on ws and wss too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_and_wss_require_server_version_first() {
    let c = tls::certs();
    let backend = gatehouse::demo::backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let toml = config(
        "",
        &[
            front("ws", "ws", &[backend], None, ""),
            front("wss", "wss", &[backend], Some(&c), ""),
        ],
    );
    let running = gateway::start_in(c.dir.path(), &toml).await;
    for (t, from) in [("ws", "127.0.0.2"), ("wss", "127.0.0.3")] {
        let mut cl = Client::connect(t, from, running.addr(t), Some(&c)).await;
        let v = cl.call(1, "server.ping", json!([])).await;
        assert_eq!(v["error"]["code"], 1, "{t}: {v}");
        assert!(
            cl.closed_within(Duration::from_secs(2)).await,
            "{t}: session without server.version left open"
        );
    }
}

/// The cost model applies over ws and wss as over tcp: with a method costing 200 (soft 1000, hard
/// 10000), requests are delayed from about the 5th on and the ~51st gets -101, the session closes and the
/// address is banned.
#[tokio::test(start_paused = true)]
async fn ws_and_wss_are_throttled_and_cut_at_the_hard_limit() {
    let c = tls::certs();
    let backend = gatehouse::demo::backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let cost = "soft_limit = 1000\nhard_limit = 10000\nmax_sleep = \"2500ms\"\n\
                [cost.methods]\n\"blockchain.estimatefee\" = 200\n";
    let toml = config(
        cost,
        &[
            front("tcp", "tcp", &[backend], None, ""),
            front("ws", "ws", &[backend], None, ""),
            front("wss", "wss", &[backend], Some(&c), ""),
        ],
    );
    let running = gateway::start_in(c.dir.path(), &toml).await;
    // Each client in its own /24, so their costs do not add up. All connect (and finish their
    // handshakes) before virtual time moves: the gateway's handshake deadline is taken from the real clock.
    let mut clients = Vec::new();
    for (t, from) in [("tcp", "127.0.1.2"), ("ws", "127.0.2.2"), ("wss", "127.0.3.2")] {
        let mut cl = Client::connect(t, from, running.addr(t), Some(&c)).await;
        let v = cl.call(0, "server.version", json!(["w", ["1.4", "1.6"]])).await;
        clients.push((t, from, cl, v));
    }
    for (t, from, mut cl, v) in clients {
        assert!(v["result"].is_array(), "{t}: {v}");
        let mut first_delayed = None;
        let mut cut_at = None;
        for i in 1..=70u64 {
            let start = Instant::now();
            let v = cl.call(i, "blockchain.estimatefee", json!([2])).await;
            let took = start.elapsed();
            if let Some(code) = v["error"]["code"].as_i64() {
                assert_eq!(code, -101, "{t}: request {i}: {v}");
                cut_at = Some(i);
                break;
            }
            assert_eq!(v["result"], json!(0.00012), "{t}: request {i}: {v}");
            if took > Duration::ZERO && first_delayed.is_none() {
                first_delayed = Some(i);
            }
            if first_delayed.is_none() {
                assert_eq!(took, Duration::ZERO, "{t}: request {i} delayed");
            }
        }
        let first_delayed = first_delayed.unwrap_or_else(|| panic!("{t}: never throttled"));
        assert!(
            (1..=10).contains(&first_delayed),
            "{t}: first delay at request {first_delayed}, expected ~5"
        );
        let cut_at = cut_at.unwrap_or_else(|| panic!("{t}: no -101 within 70 requests"));
        assert!(
            (46..=56).contains(&cut_at),
            "{t}: -101 at request {cut_at}, expected ~51"
        );
        // The idle timeout is 600 s: only a prompt close passes.
        assert!(
            cl.closed_within(Duration::from_secs(2)).await,
            "{t}: session left open after -101"
        );
        assert!(
            running.guard().bans().lookup(ip(from)).is_some(),
            "{t}: {from} not banned after -101"
        );
    }
}

// ---- 13. slow readers ----------------------------------------------------------------------------------

/// A client that subscribes and stops reading while the backend floods notifications is disconnected
/// once 1 MiB is queued for it; the backend's connection is closed too, and the backend could only ever
/// write what the kernel buffers and the 1 MiB cap hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_flood_to_a_non_reader_ends_in_a_disconnect() {
    const BUDGET: u64 = 64 << 20;
    let (backend, report) = flood_backend(BUDGET, false).await;
    let toml = config(
        "",
        &[front(
            "tcp",
            "tcp",
            &[backend],
            None,
            "max_pending_output = \"1MiB\"\nslow_reader_timeout = \"60s\"",
        )],
    );
    let running = gateway::start(&toml).await;
    let mut cl = Client::connect("tcp", "127.0.0.2", running.addr("tcp"), None).await;
    let v = cl.call(0, "server.version", json!(["w", "1.4"])).await;
    assert!(v["result"].is_array(), "{v}");
    cl.send(r#"{"jsonrpc":"2.0","id":1,"method":"blockchain.headers.subscribe","params":[]}"#)
        .await;
    // The client reads nothing more until the backend says how the flood ended.
    let r = tokio::time::timeout(Duration::from_secs(20), report)
        .await
        .expect("flood did not end within 20s")
        .expect("flood backend gone");
    assert_eq!(
        r.end,
        FloodEnd::WriteError,
        "gateway did not close the backend connection: {r:?}"
    );
    assert!(r.written < BUDGET, "gateway swallowed {} bytes: {r:?}", r.written);
    assert!(
        r.elapsed < Duration::from_secs(5),
        "the 1 MiB cap took {:?} to act",
        r.elapsed
    );
    assert!(cl.closed().await, "client still connected after the flood");
    let deadline = Instant::now() + Duration::from_secs(5);
    while running.open_sessions() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running.open_sessions(), 0, "session still tracked after the disconnect");
}

/// With a large output cap, the timer rule decides: a client whose socket accepts nothing for
/// slow_reader_timeout (2 s) while output is queued is disconnected after about 2 s.
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_cut_after_slow_reader_timeout() {
    // 16 MiB fills every socket buffer on the way, the rest waits in the gateway (under its 1 GiB cap).
    let (backend, report) = flood_backend(16 << 20, true).await;
    let toml = config(
        "",
        &[front(
            "tcp",
            "tcp",
            &[backend],
            None,
            "max_pending_output = \"1GiB\"\nslow_reader_timeout = \"2s\"",
        )],
    );
    let running = gateway::start(&toml).await;
    let mut cl = Client::connect("tcp", "127.0.0.2", running.addr("tcp"), None).await;
    let v = cl.call(0, "server.version", json!(["w", "1.4"])).await;
    assert!(v["result"].is_array(), "{v}");
    cl.send(r#"{"jsonrpc":"2.0","id":1,"method":"blockchain.headers.subscribe","params":[]}"#)
        .await;
    let r = tokio::time::timeout(Duration::from_secs(60), report)
        .await
        .expect("no report within 60s")
        .expect("flood backend gone");
    assert_eq!(r.end, FloodEnd::Eof, "{r:?}");
    assert!(
        r.elapsed >= Duration::from_secs(1) && r.elapsed <= Duration::from_secs(3),
        "disconnected after {:?}, expected ~2s",
        r.elapsed
    );
    assert!(cl.closed().await, "client still connected");
}

/// A client that keeps reading, only slower than its queue fills, is not a client "whose socket has
/// accepted nothing" (conf/gatehouse.toml on slow_reader_timeout): it must not be cut off while it drains
/// a large backlog that takes longer than slow_reader_timeout.
#[tokio::test(start_paused = true)]
async fn a_slow_but_steady_reader_is_not_cut() {
    let (backend, report) = flood_backend(12 << 20, true).await;
    let toml = config(
        "",
        &[front(
            "tcp",
            "tcp",
            &[backend],
            None,
            "max_pending_output = \"64MiB\"\nslow_reader_timeout = \"2s\"",
        )],
    );
    let running = gateway::start(&toml).await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let mut s = sock.connect(running.addr("tcp")).await.unwrap();
    s.write_all(format!("{}\n", version_req(0)).as_bytes()).await.unwrap();
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"blockchain.headers.subscribe\",\"params\":[]}\n")
        .await
        .unwrap();
    // Read 64 KiB every 50 ms (about 1.3 MiB/s) until the whole backlog has arrived.
    let start = Instant::now();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut newlines = 0u64;
    let mut eof = false;
    let closed_early = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut got = 0;
        while got < buf.len() && !eof {
            match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf[got..])).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => eof = true,
                Ok(Ok(n)) => {
                    newlines += buf[got..got + n].iter().filter(|&&b| b == b'\n').count() as u64;
                    got += n;
                }
            }
        }
        total += got as u64;
        if eof {
            break true;
        }
        // version reply + subscribe reply + every notification.
        if newlines >= 2 + (12 << 20) / header_notification(1).len() as u64 {
            break false;
        }
        if start.elapsed() > Duration::from_secs(60) {
            panic!("backlog not drained after 60s ({total} bytes)");
        }
    };
    assert!(
        !closed_early,
        "steadily reading client cut after {:?} having read {total} bytes",
        start.elapsed()
    );
    assert!(
        start.elapsed() > Duration::from_secs(3),
        "backlog drained too fast to test anything"
    );
    drop(report);
}

// ---- 5. backend errors are explained ------------------------------------------------------------------

/// With every upstream down, server.version gets a JSON-RPC error (not a silent close), then the
/// connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_upstreams_down_is_answered_with_an_error_then_closed() {
    let refusing = [net::refusing_addr(), net::refusing_addr()];
    let dead = [refusing[0].addr, refusing[1].addr];
    let toml = config("", &[front("tcp", "tcp", &dead, None, "")]);
    let running = gateway::start(&toml).await;
    let mut cl = Client::connect("tcp", "127.0.0.2", running.addr("tcp"), None).await;
    cl.send(&version_req(1)).await;
    let v = cl.recv().await.expect("closed without an error reply");
    assert_eq!(v["id"], 1, "{v}");
    assert!(v.get("result").is_none(), "{v}");
    let code = v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no error code: {v}"));
    assert_eq!(code, -32603, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(
        cl.closed_within(Duration::from_secs(2)).await,
        "session left open with no backend"
    );
}

/// When the backend closes mid-session, the request it was holding gets an error reply before the
/// client's connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_mid_session_fails_the_pending_request_then_closes() {
    let (backend, mut seen) = stub_backend(StubOpts {
        close_on_request: Some(2),
        ..Default::default()
    })
    .await;
    let toml = config("", &[front("tcp", "tcp", &[backend], None, "")]);
    let running = gateway::start(&toml).await;
    let mut cl = Client::connect("tcp", "127.0.0.2", running.addr("tcp"), None).await;
    let v = cl.call(1, "server.version", json!(["w", "1.4"])).await;
    assert_eq!(v["result"], json!(["Stub 1.0", "1.4.2"]), "{v}");
    let v = cl.call(2, "blockchain.scripthash.get_balance", json!([SH[0]])).await;
    assert!(v.get("result").is_none(), "{v}");
    assert_eq!(v["error"]["code"], -32603, "{v}");
    assert!(
        cl.closed_within(Duration::from_secs(2)).await,
        "session left open after the backend closed"
    );
    let lines = drain(&mut seen);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("get_balance"), "{lines:?}");
}

/// Every "reply, then close" path closes the connection as soon as the final reply is written, over tcp
/// and ws: no server.version first (error 1), the cost hard limit (-101), no reachable backend (-32603)
/// and the backend closing mid-session (-32603). The idle timeout is 600 s, so only a prompt close passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_close_right_after_their_final_reply() {
    let demo = gatehouse::demo::backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let refusing = net::refusing_addr();
    let dead = refusing.addr;
    let (closing, _seen) = stub_backend(StubOpts {
        close_on_request: Some(2),
        ..Default::default()
    })
    .await;
    let cost = "soft_limit = 1000\nhard_limit = 10000\nmax_sleep = \"10ms\"\n\
                [cost.methods]\n\"blockchain.estimatefee\" = 6000\n";
    let mut fronts = Vec::new();
    for t in ["tcp", "ws"] {
        fronts.push(front(&format!("demo-{t}"), t, &[demo], None, ""));
        fronts.push(front(&format!("dead-{t}"), t, &[dead], None, ""));
        fronts.push(front(&format!("closing-{t}"), t, &[closing], None, ""));
    }
    let running = gateway::start(&config(cost, &fronts)).await;
    let limit = Duration::from_secs(2);
    for (n, t) in ["tcp", "ws"].into_iter().enumerate() {
        let from = |k: usize| format!("127.0.{}.2", 10 + 4 * n + k);

        let mut cl = Client::connect(t, &from(0), running.addr(&format!("demo-{t}")), None).await;
        let v = cl.call(1, "server.ping", json!([])).await;
        assert_eq!(v["error"]["code"], 1, "{t}: {v}");
        assert!(
            cl.closed_within(limit).await,
            "{t}: no close after 'server.version must be first'"
        );

        let mut cl = Client::connect(t, &from(1), running.addr(&format!("demo-{t}")), None).await;
        cl.call(0, "server.version", json!(["w", "1.4"])).await;
        let mut cut = false;
        for i in 1..=5 {
            if cl.call(i, "blockchain.estimatefee", json!([2])).await["error"]["code"] == -101 {
                cut = true;
                break;
            }
        }
        assert!(cut, "{t}: no -101");
        assert!(cl.closed_within(limit).await, "{t}: no close after -101");

        let mut cl = Client::connect(t, &from(2), running.addr(&format!("dead-{t}")), None).await;
        let v = cl.call(1, "server.version", json!(["w", "1.4"])).await;
        assert_eq!(v["error"]["code"], -32603, "{t}: {v}");
        assert!(
            cl.closed_within(limit).await,
            "{t}: no close after 'backend unavailable'"
        );

        let mut cl = Client::connect(t, &from(3), running.addr(&format!("closing-{t}")), None).await;
        cl.call(1, "server.version", json!(["w", "1.4"])).await;
        let v = cl.call(2, "server.ping", json!([])).await;
        assert_eq!(v["error"]["code"], -32603, "{t}: {v}");
        assert!(cl.closed_within(limit).await, "{t}: no close after the backend closed");
    }
}

// ---- 6. subscriptions ----------------------------------------------------------------------------------

/// A notification the backend sends reaches the client byte for byte, over tcp (as a line) and ws (as a
/// text frame), even with unusual spacing and key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_pass_through_byte_identical() {
    let note = format!(
        "{{ \"params\" : [\"{}\",  \"d1f0c3a2b4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d\"], \"method\":\"blockchain.scripthash.subscribe\",\"jsonrpc\":\"2.0\", \"x-extra\": 1.50e3}}",
        SH[0]
    );
    let (backend, _seen) = stub_backend(StubOpts {
        after_subscribe: Some(format!("{note}\n")),
        ..Default::default()
    })
    .await;
    let toml = config(
        "",
        &[
            front("tcp", "tcp", &[backend], None, ""),
            front("ws", "ws", &[backend], None, ""),
        ],
    );
    let running = gateway::start(&toml).await;
    for (t, from) in [("tcp", "127.0.0.2"), ("ws", "127.0.0.3")] {
        let mut cl = Client::connect(t, from, running.addr(t), None).await;
        cl.call(1, "server.version", json!(["w", "1.4"])).await;
        let v = cl.call(2, "blockchain.scripthash.subscribe", json!([SH[0]])).await;
        assert_eq!(v["result"], json!(format!("status-\"{}\"", SH[0])), "{t}: {v}");
        let raw = cl
            .recv_raw()
            .await
            .unwrap_or_else(|| panic!("{t}: closed before the notification"));
        assert_eq!(raw, note, "{t}: notification altered");
    }
}

/// max_subscriptions = 3: the 4th blockchain.scripthash.subscribe gets an error and never reaches the
/// backend; the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_cap_per_session() {
    let (backend, mut seen) = stub_backend(StubOpts::default()).await;
    let toml = config("", &[front("tcp", "tcp", &[backend], None, "max_subscriptions = 3")]);
    let running = gateway::start(&toml).await;
    let mut cl = Client::connect("tcp", "127.0.0.2", running.addr("tcp"), None).await;
    cl.call(1, "server.version", json!(["w", "1.4"])).await;
    for (i, sh) in SH.iter().take(3).enumerate() {
        let v = cl
            .call(10 + i as u64, "blockchain.scripthash.subscribe", json!([sh]))
            .await;
        assert!(v["result"].is_string(), "subscription {}: {v}", i + 1);
    }
    let v = cl.call(13, "blockchain.scripthash.subscribe", json!([SH[3]])).await;
    assert!(v.get("result").is_none(), "4th subscription accepted: {v}");
    assert!(v["error"]["code"].is_i64(), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap_or("").contains("subscriptions"),
        "{v}"
    );
    // The session goes on; the ping's reply proves the backend has seen everything sent before it.
    let v = cl.call(14, "server.ping", json!([])).await;
    assert_eq!(v["result"], Value::Null, "{v}");
    let lines = drain(&mut seen);
    let subs: Vec<&String> = lines.iter().filter(|l| l.contains("scripthash.subscribe")).collect();
    assert_eq!(subs.len(), 3, "backend saw {subs:?}");
    assert!(
        !lines.iter().any(|l| l.contains(SH[3])),
        "4th subscription reached the backend: {lines:?}"
    );
}

/// Unsubscribing frees a slot, but only for a scripthash the session had subscribed: unsubscribing one it
/// never subscribed must not let it exceed the cap (else any client holds unlimited subscriptions by
/// alternating bogus unsubscribes and new subscribes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_cap_not_bypassed_by_bogus_unsubscribe() {
    let (backend, mut seen) = stub_backend(StubOpts::default()).await;
    let toml = config("", &[front("tcp", "tcp", &[backend], None, "max_subscriptions = 3")]);
    let running = gateway::start(&toml).await;
    let mut cl = Client::connect("tcp", "127.0.0.2", running.addr("tcp"), None).await;
    cl.call(1, "server.version", json!(["w", "1.4"])).await;
    for (i, sh) in SH.iter().take(3).enumerate() {
        let v = cl
            .call(10 + i as u64, "blockchain.scripthash.subscribe", json!([sh]))
            .await;
        assert!(v["result"].is_string(), "subscription {}: {v}", i + 1);
    }
    // SH[4] was never subscribed: the backend answers false and nothing is freed.
    let v = cl.call(20, "blockchain.scripthash.unsubscribe", json!([SH[4]])).await;
    assert_eq!(v["result"], json!(false), "{v}");
    let v = cl.call(21, "blockchain.scripthash.subscribe", json!([SH[3]])).await;
    cl.call(22, "server.ping", json!([])).await;
    let lines = drain(&mut seen);
    let live = lines
        .iter()
        .filter(|l| l.contains("\"blockchain.scripthash.subscribe\""))
        .count();
    assert!(
        v.get("error").is_some(),
        "4th live subscription accepted after a bogus unsubscribe ({live} subscribes reached the backend): {v}"
    );
    assert_eq!(live, 3, "{lines:?}");

    // A real unsubscribe (the backend answers true) does free a slot.
    let v = cl.call(23, "blockchain.scripthash.unsubscribe", json!([SH[0]])).await;
    assert_eq!(v["result"], json!(true), "{v}");
    let v = cl.call(24, "blockchain.scripthash.subscribe", json!([SH[3]])).await;
    assert!(v["result"].is_string(), "slot not freed by a real unsubscribe: {v}");
    let v = cl.call(25, "blockchain.scripthash.subscribe", json!([SH[4]])).await;
    assert!(v.get("error").is_some(), "cap exceeded after a real unsubscribe: {v}");
}

// ---- 14. BDK's electrum-client -------------------------------------------------------------------------

/// Runs a wallet's worth of calls with the real `electrum-client` crate and returns each result rendered
/// with Debug, labelled. Blocking: call it from spawn_blocking.
fn wallet_session(url: &str) -> Vec<(String, String)> {
    let cfg = electrum_client::ConfigBuilder::new()
        .timeout(Some(Duration::from_secs(5)))
        .retry(0)
        .validate_domain(false)
        .build();
    let client = electrum_client::Client::from_config(url, cfg).unwrap_or_else(|e| panic!("{url}: connect: {e:?}"));
    let script = |b: u8| bitcoin_script(b);
    let s1 = script(1);
    let s2 = script(2);
    let s3 = script(3);
    let txid: electrum_client::bitcoin::Txid = "ab".repeat(32).parse().unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut rec = |name: &str, v: String| out.push((name.to_string(), v));
    rec("protocol_version", format!("{:?}", client.protocol_version()));
    rec(
        "block_headers_subscribe",
        format!("{:?}", client.block_headers_subscribe()),
    );
    rec("block_header", format!("{:?}", client.block_header(799_990)));
    rec("block_headers", format!("{:?}", client.block_headers(799_990, 1)));
    rec("estimate_fee", format!("{:?}", client.estimate_fee(6, None)));
    rec("relay_fee", format!("{:?}", client.relay_fee()));
    rec("script_subscribe", format!("{:?}", client.script_subscribe(&s1)));
    rec("script_get_balance", format!("{:?}", client.script_get_balance(&s1)));
    rec("script_get_history", format!("{:?}", client.script_get_history(&s1)));
    rec("script_list_unspent", format!("{:?}", client.script_list_unspent(&s1)));
    rec(
        "batch_script_get_balance",
        format!("{:?}", client.batch_script_get_balance([&*s1, &*s2, &*s3])),
    );
    rec(
        "batch_script_get_history",
        format!("{:?}", client.batch_script_get_history([&*s1, &*s2])),
    );
    rec(
        "batch_script_list_unspent",
        format!("{:?}", client.batch_script_list_unspent([&*s2, &*s3])),
    );
    rec(
        "batch_estimate_fee",
        format!("{:?}", client.batch_estimate_fee([1, 6, 25])),
    );
    rec(
        "transaction_get_raw",
        format!("{:?}", client.transaction_get_raw(&txid)),
    );
    rec(
        "transaction_get_merkle",
        format!("{:?}", client.transaction_get_merkle(&txid, 799_990)),
    );
    rec("txid_from_pos", format!("{:?}", client.txid_from_pos(799_990, 0)));
    rec(
        "transaction_broadcast_raw",
        format!("{:?}", client.transaction_broadcast_raw(&[2, 0, 0, 0])),
    );
    rec("ping", format!("{:?}", client.ping()));
    rec(
        "banner",
        format!(
            "{:?}",
            client.raw_call("server.banner", std::iter::empty::<electrum_client::Param>())
        ),
    );
    // ServerFeaturesRes leaves out `hosts`, the one field the gateway rewrites.
    rec("server_features", format!("{:?}", client.server_features()));
    // Not compared: the gateway must announce its own hosts, never the backend's.
    let raw = client.raw_call("server.features", std::iter::empty::<electrum_client::Param>());
    rec("hosts", format!("{:?}", raw.map(|v| v["hosts"].clone())));
    rec("calls_made", format!("{:?}", client.calls_made()));
    out
}

/// A P2WPKH-looking script whose 20-byte hash is all `b`.
fn bitcoin_script(b: u8) -> electrum_client::bitcoin::ScriptBuf {
    let mut bytes = vec![0x00, 0x14];
    bytes.extend_from_slice(&[b; 20]);
    electrum_client::bitcoin::ScriptBuf::from_bytes(bytes)
}

/// BDK's `electrum-client` runs the same wallet session through the gateway (tcp and ssl) as directly
/// against the backend, with identical results (except server.features' hosts, which the gateway
/// rewrites: checked to no longer name the backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn electrum_client_gets_the_same_answers_through_the_gateway() {
    let c = tls::certs();
    let backend = gatehouse::demo::backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let toml = config(
        "",
        &[
            front("tcp", "tcp", &[backend], None, ""),
            front("ssl", "tls", &[backend], Some(&c), ""),
        ],
    );
    let running = gateway::start_in(c.dir.path(), &toml).await;
    let urls = [
        format!("tcp://{backend}"),
        format!("tcp://{}", running.addr("tcp")),
        format!("ssl://{}", running.addr("ssl")),
    ];
    let mut results = Vec::new();
    for url in urls.clone() {
        let r = tokio::task::spawn_blocking(move || wallet_session(&url))
            .await
            .expect("wallet session panicked");
        results.push(r);
    }
    let split = |r: &Vec<(String, String)>| -> (Vec<(String, String)>, String) {
        let hosts = r
            .iter()
            .find(|(k, _)| k == "hosts")
            .map(|x| x.1.clone())
            .unwrap_or_default();
        (r.iter().filter(|(k, _)| k != "hosts").cloned().collect(), hosts)
    };
    let (direct, direct_hosts) = split(&results[0]);
    // The direct session really worked (no errors hiding as equal errors).
    for (k, v) in &direct {
        assert!(!v.starts_with("Err"), "direct {k}: {v}");
    }
    assert!(direct_hosts.contains("backend.internal"), "{direct_hosts}");
    for (url, r) in urls.iter().zip(&results).skip(1) {
        let (via, hosts) = split(r);
        assert_eq!(via.len(), direct.len(), "{url}");
        for ((k, want), (k2, got)) in direct.iter().zip(&via) {
            assert_eq!(k, k2);
            assert_eq!(got, want, "{url}: {k} differs from going direct");
        }
        assert!(
            !hosts.contains("backend.internal"),
            "{url}: backend host leaked: {hosts}"
        );
    }
    // The gateway really carried those sessions: its ledger charged the client's group.
    let group = ip("127.0.0.0");
    assert!(
        running.ledger().retained(group) > 0.0 || running.ledger().group_cost(group) > 0.0,
        "the gateway's ledger never saw 127.0.0.1's sessions"
    );
}
