//! Goodput under attack in front of a backend whose capacity is modelled: a stub Electrum server that
//! serves one request at a time, in arrival order across all its connections, each taking a fixed service
//! time for its method (kept on a virtual clock, so the capacity is exact even when the thread oversleeps).
//! A request whose connection closed before its turn is dropped unserved, as an indexer cancels a gone
//! session's work. The flood rows (see `flood.rs`) run in front of it.

use super::flood::{self, Backend, Phases, Requests, FLOOD, FLOOD_10X};
use serde_json::Value;
use sha2::Digest;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What a request is, for its service time and its reply.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Version,
    Balance,
    Unspent,
    History,
    BusyHistory,
    Headers,
    Other,
}

/// The modelled service times.
const SERVICE: [(Kind, Duration, &str); 7] = [
    (Kind::Version, Duration::from_micros(50), "server.version"),
    (Kind::Balance, Duration::from_micros(200), "get_balance"),
    (Kind::Unspent, Duration::from_micros(300), "listunspent (10 coins)"),
    (
        Kind::History,
        Duration::from_micros(300),
        "get_history (a wallet's, 10 entries)",
    ),
    (
        Kind::BusyHistory,
        Duration::from_millis(5),
        "get_history (a busiest scripthash, 2,000 entries)",
    ),
    (Kind::Headers, Duration::from_millis(3), "block.headers (2,016 headers)"),
    (Kind::Other, Duration::from_micros(200), "anything else"),
];
const BUSY: usize = 3;
const BUSY_ENTRIES: usize = 2000;
const WALLET_ENTRIES: usize = 10;
const HEADERS: usize = 2016;

fn service(k: Kind) -> Duration {
    SERVICE.iter().find(|s| s.0 == k).map(|s| s.1).unwrap()
}

/// A synthetic scripthash (hex of a SHA-256).
fn scripthash(what: &str) -> String {
    hex(&sha2::Sha256::digest(what.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The replies' `result` texts, built once.
struct Replies {
    version: Vec<u8>,
    balance: Vec<u8>,
    unspent: Vec<u8>,
    history: Vec<u8>,
    busy_history: Vec<u8>,
    headers: Vec<u8>,
    other: Vec<u8>,
}

fn history(n: usize, tag: &str) -> Vec<u8> {
    let entries: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{\"tx_hash\":\"{}\",\"height\":{}}}",
                scripthash(&format!("{tag} {i}")),
                100 + i
            )
        })
        .collect();
    format!("[{}]", entries.join(",")).into_bytes()
}

impl Replies {
    fn new() -> Replies {
        let coins: Vec<String> = (0..WALLET_ENTRIES)
            .map(|i| {
                format!(
                    "{{\"tx_hash\":\"{}\",\"tx_pos\":0,\"height\":{},\"value\":5000000000}}",
                    scripthash(&format!("coin {i}")),
                    100 + i
                )
            })
            .collect();
        Replies {
            version: b"[\"ModelledIndexer 1.0\",\"1.4\"]".to_vec(),
            balance: b"{\"confirmed\":50000000000,\"unconfirmed\":0}".to_vec(),
            unspent: format!("[{}]", coins.join(",")).into_bytes(),
            history: history(WALLET_ENTRIES, "wallet"),
            busy_history: history(BUSY_ENTRIES, "busy"),
            headers: format!(
                "{{\"count\":{HEADERS},\"hex\":\"{}\",\"max\":2016}}",
                "0".repeat(HEADERS * 160)
            )
            .into_bytes(),
            other: b"null".to_vec(),
        }
    }

    fn of(&self, k: Kind) -> &[u8] {
        match k {
            Kind::Version => &self.version,
            Kind::Balance => &self.balance,
            Kind::Unspent => &self.unspent,
            Kind::History => &self.history,
            Kind::BusyHistory => &self.busy_history,
            Kind::Headers => &self.headers,
            Kind::Other => &self.other,
        }
    }
}

/// One request waiting for the server: its id (JSON text) and where its reply goes.
struct Job {
    id: String,
    kind: Kind,
    reply: mpsc::UnboundedSender<(String, Kind)>,
}

/// The single server: one request at a time, each for its method's service time.
fn serve(rx: std::sync::mpsc::Receiver<Job>) {
    let mut busy_until = Instant::now();
    while let Ok(job) = rx.recv() {
        if job.reply.is_closed() {
            continue;
        }
        busy_until = busy_until.max(Instant::now()) + service(job.kind);
        let now = Instant::now();
        if busy_until > now {
            std::thread::sleep(busy_until - now);
        }
        let _ = job.reply.send((job.id, job.kind));
    }
}

fn kind_of(method: &str, params: &Value, busy: &[String]) -> Kind {
    match method {
        "server.version" => Kind::Version,
        "blockchain.scripthash.get_balance" => Kind::Balance,
        "blockchain.scripthash.listunspent" => Kind::Unspent,
        "blockchain.scripthash.get_history" => {
            let sh = params.get(0).and_then(Value::as_str).unwrap_or("");
            if busy.iter().any(|b| b == sh) {
                Kind::BusyHistory
            } else {
                Kind::History
            }
        }
        "blockchain.block.headers" => Kind::Headers,
        _ => Kind::Other,
    }
}

/// Starts the modelled backend; returns its address.
async fn start(busy: Vec<String>) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the modelled backend");
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let (jobs, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("modelled-backend".into())
        .spawn(move || serve(rx))
        .expect("spawn the modelled backend's server thread");
    let replies = Arc::new(Replies::new());
    let busy = Arc::new(busy);
    // Its connections run on a thread and runtime of their own, so the flood's thousands of client
    // connections on the bench's runtime do not slow the model's intake below its modelled capacity.
    let (ready, listening) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("modelled-conns".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = TcpListener::from_std(l).expect("modelled backend listener");
                let _ = ready.send(());
                accept(l, jobs, replies, busy).await
            });
        })
        .expect("spawn the modelled backend's connection thread");
    listening.await.expect("the modelled backend's connection thread");
    addr
}

/// Accepts the backend's connections: each reads its requests and queues them for the server thread, and
/// writes the replies the server hands back.
async fn accept(l: TcpListener, jobs: std::sync::mpsc::Sender<Job>, replies: Arc<Replies>, busy: Arc<Vec<String>>) {
    while let Ok((s, _)) = l.accept().await {
        let (jobs, replies, busy) = (jobs.clone(), replies.clone(), busy.clone());
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let (r, mut w) = s.into_split();
            let (tx, mut rx) = mpsc::unbounded_channel::<(String, Kind)>();
            let writer = tokio::spawn(async move {
                let mut out = Vec::with_capacity(4096);
                while let Some(first) = rx.recv().await {
                    out.clear();
                    let mut next = Some(first);
                    while let Some((id, k)) = next {
                        out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"result\":");
                        out.extend_from_slice(replies.of(k));
                        out.extend_from_slice(b",\"id\":");
                        out.extend_from_slice(id.as_bytes());
                        out.extend_from_slice(b"}\n");
                        next = rx.try_recv().ok().filter(|_| out.len() < 256 * 1024);
                    }
                    if w.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
            let mut r = BufReader::new(r);
            let mut line = Vec::with_capacity(512);
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let method = v.get("method").and_then(Value::as_str).unwrap_or("");
                let kind = kind_of(method, v.get("params").unwrap_or(&Value::Null), &busy);
                let id = v.get("id").map(Value::to_string).unwrap_or_else(|| "null".into());
                if jobs
                    .send(Job {
                        id,
                        kind,
                        reply: tx.clone(),
                    })
                    .is_err()
                {
                    break;
                }
            }
            // The connection is gone: its queued requests are dropped unserved.
            writer.abort();
        });
    }
}

/// The modelled backend drops a gone connection's queued requests itself: it is ready for the next row as
/// soon as its queue has drained.
struct Modelled(SocketAddr);

impl Backend for Modelled {
    async fn fresh(&mut self, _behind_gateway: bool) -> SocketAddr {
        self.0
    }
}

/// The saturation rows: every flood target, at the flood and at 10 × it, in front of the modelled backend.
pub async fn run(dir: &Path, quick: bool) {
    let busy: Vec<String> = (0..BUSY).map(|k| scripthash(&format!("busy {k}"))).collect();
    let honest: Vec<String> = (0..5).map(|i| scripthash(&format!("wallet {i}"))).collect();
    let mut heavy: Vec<(&'static str, String)> = busy
        .iter()
        .map(|b| ("blockchain.scripthash.get_history", format!("[\"{b}\"]")))
        .collect();
    heavy.extend([0, 1000, 2000].map(|h| ("blockchain.block.headers", format!("[{h},{HEADERS}]"))));
    let req = Requests { honest, heavy };
    let addr = start(busy).await;
    let phases = Phases::new(quick);
    println!("\n## Honest wallets under a flood: modelled backend\n");
    println!("A stub indexer serving one request at a time, in arrival order, each for a fixed service time:");
    let times: Vec<String> = SERVICE
        .iter()
        .map(|(_, d, what)| format!("{what} {} ms", d.as_secs_f64() * 1e3))
        .collect();
    println!("{}.", times.join(", "));
    println!(
        "Honest wallets: 5, get_balance + get_history + listunspent of their own scripthash every 0.5 s. Abusers: {} heavy",
        flood::ABUSER_IN_FLIGHT
    );
    println!(
        "requests in flight per connection (get_history of the {BUSY} busiest scripthashes, 2,016-header reads), reconnecting"
    );
    println!(
        "when cut or refused. {} s quiet, then {} s of attack. Gateway: one worker thread, cost model at its defaults.\n",
        phases.quiet.as_secs(),
        phases.attack.as_secs()
    );
    flood::rows(
        dir,
        &mut Modelled(addr),
        "nothing in front (the modelled backend)",
        &req,
        &phases,
        &[FLOOD, FLOOD_10X],
    )
    .await;
}
