//! The process-wide memory budget and the slow-line floor, on real sockets in real time: clients that
//! park big partial lines or stop reading a flood of notifications are cut, largest first, once the
//! sessions together buffer more than `[limits] memory_budget`, while an honest wallet on another
//! address keeps its answers; a request line trickled slower than `min_line_rate` is answered -32600 and
//! closed, while a line that merely arrives in two parts is served.

use crate::support::backends::{flood_backend, stub_backend, FloodEnd};
use crate::support::clients::Client;
use crate::support::gateway::RELAXED;
use crate::support::{clients, gateway, net};
use futures_util::{SinkExt, StreamExt};
use gatehouse::admin::AdminListen;
use gatehouse::Running;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const TOKEN: &str = "memory-budget-token-0123456789";

/// A line-level client that can leave a line unfinished.
struct Raw {
    s: BufReader<TcpStream>,
}

impl Raw {
    /// Connects from `from` and negotiates with server.version.
    async fn open(from: &str, to: SocketAddr) -> Raw {
        let mut raw = Raw {
            s: BufReader::new(net::connect_from(from, to).await.unwrap()),
        };
        raw.write(r#"{"jsonrpc":"2.0","id":0,"method":"server.version","params":["park","1.4"]}"#.to_owned() + "\n")
            .await;
        let v = raw.line().await.expect("server.version answered");
        assert!(v.get("error").is_none(), "{v}");
        raw
    }

    async fn write(&mut self, data: String) {
        self.s.get_mut().write_all(data.as_bytes()).await.unwrap();
    }

    /// The next line as JSON, or None once the gateway has closed the connection.
    async fn line(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.s.read_line(&mut line))
            .await
            .expect("no line and no close within 10 s")
            .unwrap_or(0);
        (n > 0 && line.ends_with('\n')).then(|| serde_json::from_str(&line).unwrap())
    }
}

/// The start of a server.ping whose parameter is `n` bytes long; `PARK_END` finishes it.
fn parked_line(n: usize) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"server.ping","params":["{}"#,
        "a".repeat(n)
    )
}
const PARK_END: &str = "\"]}\n";

async fn admin_addr(running: &Running) -> SocketAddr {
    match running.admin_addr() {
        Some(AdminListen::Tcp(a)) => *a,
        other => panic!("admin listens on {other:?}"),
    }
}

/// The value of an unlabelled sample in the exposition.
async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let text = clients::admin_get(admin, TOKEN, "/metrics").await;
    clients::sample(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Budget 1 MiB. Two clients in turn park 600 KB partial lines: as the second one's line grows past
/// the budget, the first (then the largest) is closed; a third cuts the second the same way, and is
/// itself still served when it finishes its line. A client that stops reading a notification flood is
/// cut as its queued output passes the budget, long before its own 64 MiB cap. The honest wallet on
/// 127.0.0.2 is answered throughout, and the metrics count three cuts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_buffers_are_cut_when_the_memory_budget_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let backend = stub_backend(&[]).await;
    let (flood, report) = flood_backend(32 << 20, false).await;
    let toml = format!(
        "{RELAXED}[limits]\nmemory_budget = \"1MiB\"\n\n\
         [admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n\
         [[front]]\nname = \"electrum\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\n\
         upstreams = [\"{backend}\"]\n\n\
         [[front]]\nname = \"flood\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\n\
         upstreams = [\"{flood}\"]\n\
         [front.electrum]\nmax_pending_output = \"64MiB\"\nslow_reader_timeout = \"60s\"\n"
    );
    let running = gateway::start_in(dir.path(), &toml).await;
    let admin = admin_addr(&running).await;
    let addr = running.addr("electrum");
    assert_eq!(metric(admin, "gatehouse_memory_budget_bytes").await, 1048576.0);
    let mut honest = Client::open("127.0.0.2", addr).await;
    let budget = running.memory().clone();

    let mut parked = Vec::new();
    for (i, from) in ["127.0.0.3", "127.0.0.4", "127.0.0.5"].into_iter().enumerate() {
        let mut p = Raw::open(from, addr).await;
        p.write(parked_line(600_000)).await;
        // The gateway has taken the whole line in (what the others hold was cut or stays below 1 MiB).
        let b = budget.clone();
        net::within(Duration::from_secs(10), async || b.used() >= 600_000)
            .await
            .unwrap_or_else(|| panic!("the gateway never buffered client {i}'s line"));
        parked.push(p);
        if i > 0 {
            // The previous parker, the largest when this one's line grew past the budget, is gone.
            let prev = &mut parked[i - 1];
            net::closed_within(prev.s.get_mut(), Duration::from_secs(5)).await;
        }
        let r = honest.call("server.ping", "[]", 0.1).await;
        assert!(r.v.get("error").is_none(), "{}", r.v);
    }
    // The last parker was never cut: its finished line is answered.
    let last = parked.last_mut().unwrap();
    last.write(PARK_END.to_owned()).await;
    let reply = last.line().await.expect("the last parker was cut");
    assert_eq!(reply["id"], 1, "{reply}");

    // A client that subscribes to a notification flood and reads nothing.
    let mut sink = Raw::open("127.0.0.6", running.addr("flood")).await;
    sink.write(r#"{"jsonrpc":"2.0","id":1,"method":"blockchain.headers.subscribe","params":[]}"#.to_owned() + "\n")
        .await;
    // The gateway drops the session, upstream connection included, as its queued output passes the
    // budget: the flood backend sees its connection closed before it has sent all 32 MiB.
    let report = tokio::time::timeout(Duration::from_secs(20), report)
        .await
        .expect("the gateway still held the flooded session after 20 s")
        .unwrap();
    assert!(
        matches!(report.end, FloodEnd::WriteError | FloodEnd::Eof) && report.written < 32 << 20,
        "{report:?}"
    );
    // Reading now only drains what the kernel holds.
    net::closed_within(sink.s.get_mut(), Duration::from_secs(10)).await;

    let r = honest.call("server.ping", "[]", 0.1).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
    assert_eq!(metric(admin, "gatehouse_memory_budget_cuts_total").await, 3.0);
    assert!(metric(admin, "gatehouse_memory_buffered_bytes").await < 1048576.0);

    // A reload moves the budget.
    let mut running = running;
    let bigger = toml.replace("memory_budget = \"1MiB\"", "memory_budget = \"2MiB\"");
    let cfg = gatehouse::config::Config::parse(&bigger, &dir.path().join("gatehouse.toml")).unwrap();
    running.reload(cfg).await.unwrap();
    assert_eq!(metric(admin, "gatehouse_memory_budget_bytes").await, 2097152.0);
}

/// `min_line_rate = "100/s"`, `line_grace = "1s"`: a client trickling a request line at 10 bytes a
/// second is answered -32600 "request line arrives too slowly" and closed after about 1.1 s; a client
/// whose line arrives in two parts 300 ms apart, and another one's ordinary requests, are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_trickled_below_the_floor_rate_is_cut() {
    let backend = stub_backend(&[]).await;
    let toml = format!(
        "{RELAXED}[[front]]\nname = \"electrum\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\n\
         transport = \"tcp\"\nupstreams = [\"{backend}\"]\n\
         [front.electrum]\nmin_line_rate = \"100/s\"\nline_grace = \"1s\"\n"
    );
    let running = gateway::start(&toml).await;
    let addr = running.addr("electrum");
    let mut honest = Client::open("127.0.0.2", addr).await;

    let slow = Raw::open("127.0.0.3", addr).await;
    let (r, mut w) = slow.s.into_inner().into_split();
    let mut r = BufReader::new(r);
    let trickle = tokio::spawn(async move {
        let line = r#"{"jsonrpc":"2.0","id":2,"method":"server.ping","params":[]}"#;
        for b in line.bytes() {
            if w.write_all(&[b]).await.is_err() {
                return;
            }
            // The attack's pace: 10 bytes a second.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let start = std::time::Instant::now();
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
        .await
        .expect("the trickling client got nothing within 5 s")
        .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(v["error"]["code"], -32600, "{v}");
    assert_eq!(v["error"]["message"], "request line arrives too slowly", "{v}");
    net::closed_within(&mut r, Duration::from_secs(2)).await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "cut after {took:?}");
    trickle.abort();

    // A line in two parts, well within the grace, is an ordinary request.
    let mut split = Raw::open("127.0.0.4", addr).await;
    split.write(r#"{"jsonrpc":"2.0","id":5,"#.to_owned()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    split
        .write(r#""method":"server.ping","params":[]}"#.to_owned() + "\n")
        .await;
    let v = split.line().await.expect("the split line's sender was cut");
    assert_eq!(v["id"], 5, "{v}");
    assert!(v.get("error").is_none(), "{v}");
    let r = honest.call("server.ping", "[]", 0.1).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
}

/// A client frame header for a masked text frame of `len` payload bytes (mask 0: the payload as is).
fn ws_text_header(len: usize) -> Vec<u8> {
    let mut h = vec![0x81];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// A WebSocket client from `from`, negotiated with server.version.
async fn ws_open(from: &str, to: SocketAddr) -> WebSocketStream<TcpStream> {
    let tcp = net::connect_from(from, to).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://localhost/", tcp).await.unwrap();
    ws.send(Message::text(
        r#"{"jsonrpc":"2.0","id":0,"method":"server.version","params":["ws","1.4"]}"#,
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("server.version answered within 10 s");
    assert!(matches!(reply, Some(Ok(Message::Text(_)))), "{reply:?}");
    ws
}

/// On a ws front the floor applies to a WebSocket message as it does to a line: a text frame whose
/// payload trickles in at 10 bytes a second is answered -32600 and the session closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_message_trickled_below_the_floor_rate_is_cut() {
    let backend = stub_backend(&[]).await;
    let toml = format!(
        "{RELAXED}[[front]]\nname = \"ws\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\n\
         transport = \"ws\"\nupstreams = [\"{backend}\"]\n\
         [front.electrum]\nmin_line_rate = \"100/s\"\nline_grace = \"1s\"\n"
    );
    let running = gateway::start(&toml).await;
    let mut ws = ws_open("127.0.0.3", running.addr("ws")).await;
    let payload = br#"{"jsonrpc":"2.0","id":2,"method":"server.ping","params":[]}"#;
    ws.get_mut().write_all(&ws_text_header(payload.len())).await.unwrap();
    let start = std::time::Instant::now();
    let mut got = None;
    for &b in payload.iter() {
        ws.get_mut().write_all(&[b]).await.unwrap();
        // The attack's pace, 10 bytes a second, spent waiting for the gateway's answer.
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
            got = m;
            break;
        }
    }
    let Some(Ok(Message::Text(t))) = got else {
        panic!("no error message while the frame trickled in: {got:?}")
    };
    let v: Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(v["error"]["code"], -32600, "{v}");
    assert_eq!(v["error"]["message"], "request line arrives too slowly", "{v}");
    let end = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .expect("not closed");
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "cut after {:?}",
        start.elapsed()
    );
}

/// The part of a WebSocket message the gateway holds counts against the budget like a partial line: a
/// client parking 900 KB of a frame is the largest, and is cut when a line parked on another front
/// passes the 1 MiB budget; the line's owner is served when it finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_websocket_message_counts_against_the_memory_budget() {
    let backend = stub_backend(&[]).await;
    let toml = format!(
        "{RELAXED}[limits]\nmemory_budget = \"1MiB\"\n\n\
         [[front]]\nname = \"ws\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"ws\"\n\
         upstreams = [\"{backend}\"]\n\n\
         [[front]]\nname = \"tcp\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\n\
         upstreams = [\"{backend}\"]\n"
    );
    let running = gateway::start(&toml).await;
    let budget = running.memory().clone();
    let mut ws = ws_open("127.0.0.3", running.addr("ws")).await;
    ws.get_mut().write_all(&ws_text_header(950_000)).await.unwrap();
    ws.get_mut().write_all(&vec![b' '; 900_000]).await.unwrap();
    let b = budget.clone();
    net::within(Duration::from_secs(10), async || b.used() >= 900_000)
        .await
        .expect("the partial WebSocket message was never charged");

    let mut line = Raw::open("127.0.0.4", running.addr("tcp")).await;
    line.write(parked_line(300_000)).await;
    net::closed_within(ws.get_mut(), Duration::from_secs(5)).await;
    line.write(PARK_END.to_owned()).await;
    let reply = line.line().await.expect("the line's owner was cut");
    assert_eq!(reply["id"], 1, "{reply}");
    assert_eq!(budget.cuts(), 1);
}
