//! A stub stoxumd / rippled API port on loopback: JSON-RPC over HTTP POST and WebSocket on one port,
//! answering in the node's shapes, since no such node installs here. It serves `server_info`, `ledger`,
//! `account_info`, `account_tx`, `submit`, `ping`, `subscribe` (a `ledger` stream subscription is
//! followed by a pushed `ledgerClosed` and a `transaction` message), `path_find` (`create` is followed by a
//! pushed `path_find` update carrying the request's id) and `stub_flood` (pushes `count` transaction
//! messages, for slow-reader tests); anything else gets the node's `unknownCmd`. It records every command
//! and the request headers it saw, so tests can check what reached the node.

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request as WsRequest, Response as WsResponse};
use tokio_tungstenite::tungstenite::Message;

/// What reached the stub: one entry per command, with its transport and the request's headers.
#[derive(Debug, Clone)]
pub struct Seen {
    pub ws: bool,
    pub command: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Clone, Default)]
pub struct Stub {
    pub addr: Option<SocketAddr>,
    seen: Arc<Mutex<Vec<Seen>>>,
    ws_sessions: Arc<Mutex<usize>>,
}

pub const ACCOUNT: &str = "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh";
pub const LEDGER_HASH: &str = "3D3A2B2C1E4F5A6B7C8D9E0F1A2B3C4D5E6F7A8B9C0D1E2F3A4B5C6D7E8F9A0B";
pub const TX_HASH: &str = "C53ECF838647FA5A4C780377025FEC7999AB4182590510CA461444B207AB7A5D";

impl Stub {
    pub async fn start() -> Stub {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stub = Stub {
            addr: Some(l.local_addr().unwrap()),
            ..Stub::default()
        };
        let s = stub.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                tokio::spawn(s.clone().connection(tcp));
            }
        });
        stub
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.unwrap()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn commands(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.command).collect()
    }

    /// WebSocket sessions opened to the stub so far.
    pub fn ws_sessions(&self) -> usize {
        *self.ws_sessions.lock().unwrap()
    }

    fn record(&self, ws: bool, command: &str, headers: &[(String, String)]) {
        self.seen.lock().unwrap().push(Seen {
            ws,
            command: command.to_string(),
            headers: headers.to_vec(),
        });
    }

    async fn connection(self, tcp: TcpStream) {
        // A WebSocket upgrade or a JSON-RPC POST: tell them apart by the request head.
        let mut buf = vec![0u8; 8192];
        let head = loop {
            let n = match tcp.peek(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            if text.contains("\r\n\r\n") || n == buf.len() {
                break text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        };
        if head.contains("upgrade: websocket") {
            self.websocket(tcp).await
        } else {
            self.http(tcp).await
        }
    }

    // tungstenite's handshake callback type fixes the size of its error.
    #[allow(clippy::result_large_err)]
    async fn websocket(self, tcp: TcpStream) {
        let headers = Arc::new(Mutex::new(Vec::new()));
        let h = headers.clone();
        let cb = move |req: &WsRequest, resp: WsResponse| {
            *h.lock().unwrap() = header_list(req.headers());
            Ok(resp)
        };
        let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
            return;
        };
        *self.ws_sessions.lock().unwrap() += 1;
        let headers = headers.lock().unwrap().clone();
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            let Message::Text(t) = msg else {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
                continue;
            };
            let Ok(Value::Object(req)) = serde_json::from_str::<Value>(&t) else {
                continue;
            };
            let command = req.get("command").and_then(Value::as_str).unwrap_or("").to_string();
            self.record(true, &command, &headers);
            let (answer, pushes) = answer(&command, &req);
            let mut out = match answer {
                Ok(result) => json!({"result": result, "status": "success", "type": "response"}),
                Err(mut e) => {
                    e.insert("request".into(), Value::Object(req.clone()));
                    e.insert("status".into(), json!("error"));
                    e.insert("type".into(), json!("response"));
                    Value::Object(e)
                }
            };
            if let Some(id) = req.get("id") {
                out["id"] = id.clone();
            }
            if tx.send(Message::text(out.to_string())).await.is_err() {
                return;
            }
            for mut p in pushes {
                if p["type"] == "path_find" {
                    if let Some(id) = req.get("id") {
                        p["id"] = id.clone();
                    }
                }
                if tx.send(Message::text(p.to_string())).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn http(self, tcp: TcpStream) {
        let me = self.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let me = me.clone();
            async move {
                use http_body_util::BodyExt;
                let headers = header_list(req.headers());
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let method = v["method"].as_str().unwrap_or("").to_string();
                let params = match v["params"].get(0) {
                    Some(Value::Object(m)) => m.clone(),
                    _ => Map::new(),
                };
                me.record(false, &method, &headers);
                let mut result = match answer(&method, &params).0 {
                    Ok(r) => r,
                    Err(mut e) => {
                        let mut rq = params.clone();
                        rq.insert("command".into(), json!(method));
                        e.insert("request".into(), Value::Object(rq));
                        Value::Object(e)
                    }
                };
                let ok = result.get("error").is_none();
                result["status"] = json!(if ok { "success" } else { "error" });
                let mut out = json!({ "result": result });
                // bitcoind-style clients (a bitcoind-profile front pointed here) expect an id back.
                if let Some(id) = v.get("id") {
                    out["id"] = id.clone();
                }
                let mut r = Response::new(http_body_util::Full::new(hyper::body::Bytes::from(
                    out.to_string() + "\n",
                )));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json; charset=UTF-8"),
                );
                Ok::<_, std::convert::Infallible>(r)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), svc)
            .await;
    }
}

fn header_list(h: &hyper::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn ledger_closed(index: u64) -> Value {
    json!({
        "type": "ledgerClosed", "fee_base": 10, "fee_ref": 10, "ledger_hash": LEDGER_HASH,
        "ledger_index": index, "ledger_time": 750000000 + index, "reserve_base": 10000000,
        "reserve_inc": 2000000, "txn_count": 1, "validated_ledgers": format!("1-{index}")
    })
}

fn transaction(index: u64) -> Value {
    json!({
        "type": "transaction", "engine_result": "tesSUCCESS", "engine_result_code": 0,
        "engine_result_message": "The transaction was applied. Only final in a validated ledger.",
        "ledger_hash": LEDGER_HASH, "ledger_index": index, "status": "closed", "validated": true,
        "meta": {"TransactionIndex": 0, "TransactionResult": "tesSUCCESS", "AffectedNodes": []},
        "transaction": {
            "Account": ACCOUNT, "Destination": "rPT1Sjq2YGrBMTttX4GZHjKu9dyfzbpAYe", "Amount": "1000000",
            "Fee": "12", "Flags": 0, "Sequence": 7, "TransactionType": "Payment", "hash": TX_HASH,
            "SigningPubKey": "03AB40A0490F9B7ED8DF29D246BF2D6269820A0EE7742ACDD457BEA7C7D0931EDB",
            "TxnSignature": "3045022100"
        }
    })
}

/// The node's answer to `command`: a result or an error object, and the messages pushed after it.
fn answer(command: &str, req: &Map<String, Value>) -> (Result<Value, Map<String, Value>>, Vec<Value>) {
    let account = req.get("account").and_then(Value::as_str).unwrap_or(ACCOUNT);
    let r = match command {
        "ping" => json!({}),
        "server_info" => json!({"info": {
            "build_version": "2.3.0-stub", "complete_ledgers": "1-100", "hostid": "STUB",
            "load_factor": 1, "peers": 21, "server_state": "full", "network_id": 21337,
            "validated_ledger": {"age": 1, "base_fee_xrp": 0.00001, "hash": LEDGER_HASH,
                "reserve_base_xrp": 10, "reserve_inc_xrp": 2, "seq": 100}
        }}),
        "ledger" => json!({
            "ledger": {"ledger_index": "100", "ledger_hash": LEDGER_HASH, "closed": true,
                "parent_hash": LEDGER_HASH, "transaction_hash": TX_HASH, "account_hash": LEDGER_HASH,
                "close_time": 750000100, "total_coins": "99999999999999999"},
            "ledger_hash": LEDGER_HASH, "ledger_index": 100, "validated": true
        }),
        "account_info" => json!({
            "account_data": {"Account": account, "Balance": "1000000000", "Flags": 0,
                "LedgerEntryType": "AccountRoot", "OwnerCount": 0, "PreviousTxnID": TX_HASH,
                "PreviousTxnLgrSeq": 99, "Sequence": 7, "index": LEDGER_HASH},
            "ledger_current_index": 101, "validated": false
        }),
        "account_tx" => json!({
            "account": account, "ledger_index_min": 1, "ledger_index_max": 100, "limit": 10,
            "transactions": [{"meta": transaction(100)["meta"], "tx": transaction(100)["transaction"], "validated": true}],
            "validated": true
        }),
        "submit" => json!({
            "accepted": true, "applied": true, "broadcast": true, "engine_result": "tesSUCCESS",
            "engine_result_code": 0, "engine_result_message": "The transaction was applied. Only final in a validated ledger.",
            "kept": true, "queued": false,
            "tx_blob": req.get("tx_blob").cloned().unwrap_or(json!("")),
            "tx_json": transaction(101)["transaction"]
        }),
        "subscribe" => {
            let streams: Vec<&str> = req
                .get("streams")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut pushes = Vec::new();
            let mut r = json!({});
            if streams.contains(&"ledger") {
                r = ledger_closed(100);
                r.as_object_mut().unwrap().remove("type");
                r.as_object_mut().unwrap().remove("txn_count");
                pushes.push(ledger_closed(101));
            }
            if streams.contains(&"transactions") || streams.contains(&"ledger") {
                pushes.push(transaction(101));
            }
            return (Ok(r), pushes);
        }
        "unsubscribe" => json!({}),
        "path_find" => {
            let sub = req.get("subcommand").and_then(Value::as_str).unwrap_or("");
            if sub == "create" {
                let base = json!({
                    "alternatives": [], "destination_account": req.get("destination_account").cloned().unwrap_or(json!(ACCOUNT)),
                    "destination_amount": req.get("destination_amount").cloned().unwrap_or(json!("1000000")),
                    "source_account": req.get("source_account").cloned().unwrap_or(json!(ACCOUNT)),
                    "full_reply": false
                });
                let mut update = base.clone();
                update["type"] = json!("path_find");
                update["full_reply"] = json!(true);
                update["alternatives"] = json!([{"paths_computed": [], "source_amount": "1000000"}]);
                return (Ok(base), vec![update]);
            }
            json!({"closed": true})
        }
        "stub_flood" => {
            let n = req.get("count").and_then(Value::as_u64).unwrap_or(100);
            return (Ok(json!({})), (0..n).map(|i| transaction(200 + i)).collect());
        }
        _ => {
            let mut e = Map::new();
            e.insert("error".into(), json!("unknownCmd"));
            e.insert("error_code".into(), json!(32));
            e.insert("error_message".into(), json!("Unknown method."));
            return (Err(e), Vec::new());
        }
    };
    (Ok(r), Vec::new())
}
