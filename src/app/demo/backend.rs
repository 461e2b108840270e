//! A small Electrum server stand-in: answers the common wallet methods with fixed sample data. Used by
//! `gatehouse demo`, the benchmark and tests; it is not an indexer.

use crate::front::electrum::jsonrpc::ErrorCode;
use serde_json::{json, Value};
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Longest request line the sample backend accepts (as ElectrumX's default).
const MAX_LINE: usize = 1_000_000;

/// Binds on `addr` (port 0 for any) and serves until the task is dropped.
pub async fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr).await?;
    let local = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(session(s));
        }
    });
    Ok(local)
}

async fn session(s: TcpStream) {
    let _ = s.set_nodelay(true);
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    let mut out = Vec::new();
    loop {
        line.clear();
        match (&mut r).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if line.len() > MAX_LINE => return,
            Ok(_) => {}
        }
        out.clear();
        let reply = match serde_json::from_slice::<Value>(&line) {
            Err(_) => Some(error(Value::Null, ErrorCode::ParseError, "parse error")),
            Ok(Value::Array(items)) if !items.is_empty() => {
                let replies: Vec<Value> = items.iter().filter_map(answer).collect();
                Some(Value::Array(replies))
            }
            Ok(v) => answer(&v)
                .or_else(|| (!v.is_object()).then(|| error(Value::Null, ErrorCode::InvalidRequest, "invalid request"))),
        };
        if let Some(reply) = reply {
            let _ = serde_json::to_writer(&mut out, &reply);
            out.push(b'\n');
            if w.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

fn error(id: Value, code: ErrorCode, msg: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code.value(), "message": msg}})
}

/// The reply to one request, or None for a notification (no id).
fn answer(req: &Value) -> Option<Value> {
    let id = req.get("id")?.clone();
    let method = req.get("method").and_then(Value::as_str).unwrap_or("");
    let result = match method {
        "server.version" => json!(["SampleElectrum 1.0", "1.4"]),
        "server.ping" => Value::Null,
        "server.banner" => json!("Sample Electrum backend behind Gatehouse"),
        "server.donation_address" => json!(""),
        "server.features" => json!({
            "genesis_hash": "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
            "hosts": {"backend.internal": {"tcp_port": 50001, "ssl_port": null}},
            "protocol_max": "1.4", "protocol_min": "1.4", "pruning": null,
            "server_version": "SampleElectrum 1.0", "hash_function": "sha256"
        }),
        "server.peers.subscribe" => json!([]),
        "server.add_peer" => json!(true),
        "blockchain.headers.subscribe" => json!({"height": 800000, "hex": "00".repeat(80)}),
        "blockchain.block.header" => json!("00".repeat(80)),
        "blockchain.block.headers" => json!({"count": 1, "hex": "00".repeat(80), "max": 2016}),
        "blockchain.estimatefee" => json!(0.00012),
        "blockchain.relayfee" => json!(0.00001),
        "blockchain.scripthash.get_balance" => json!({"confirmed": 150000, "unconfirmed": 0}),
        "blockchain.scripthash.get_history" => json!([{"height": 799990, "tx_hash": "ab".repeat(32)}]),
        "blockchain.scripthash.get_mempool" => json!([]),
        "blockchain.scripthash.listunspent" => {
            json!([{"height": 799990, "tx_hash": "ab".repeat(32), "tx_pos": 0, "value": 150000}])
        }
        "blockchain.scripthash.subscribe" => Value::Null,
        "blockchain.scripthash.unsubscribe" => json!(true),
        "blockchain.transaction.get" => json!("0200000001".to_string() + &"00".repeat(100)),
        "blockchain.transaction.get_merkle" => json!({"block_height": 799990, "merkle": ["cd".repeat(32)], "pos": 0}),
        "blockchain.transaction.broadcast" => json!("ef".repeat(32)),
        "blockchain.transaction.id_from_pos" => json!("ab".repeat(32)),
        "mempool.get_fee_histogram" => json!([[12.0, 100000]]),
        _ => {
            return Some(error(
                id,
                ErrorCode::MethodNotFound,
                &format!("unknown method {method}"),
            ))
        }
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}
