//! One TLS port, many services: the SNI name of a rustls client picks the front (its upstreams, its
//! Electrum profile) that serves the decrypted stream; admission, bans and cost stay per client.

use crate::support::backends::version_backend_thread;
use crate::support::clients::sample;
use crate::support::gateway::{start_in, RELAXED};
use crate::support::net::{connect_from, ip};
use crate::support::tls::{tls_connector, write_cert_names};
use futures_util::{SinkExt, StreamExt};
use gatehouse::Running;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const BTC: &str = "btc.example.org";
const KEVA: &str = "keva.example.org";
const WS: &str = "ws.example.org";
const UNKNOWN: &str = "other.example.org";

/// What the routed set-up serves: the listening front `{p}-main` (default upstream), `{p}-btc` and
/// `{p}-keva` (no listen addresses of their own), and the certificates clients trust.
struct Routed {
    dir: tempfile::TempDir,
    toml: String,
    prefix: String,
    running: Running,
    /// The default certificate (localhost, btc, the unknown name, 127.0.0.1) and keva's own.
    default_der: CertificateDer<'static>,
    keva_der: CertificateDer<'static>,
}

/// `cost` is the `[cost]` table body; `[cost.methods]` prices `server.ping` at `ping`.
async fn routed(p: &str, cost: &str, ping: f64) -> Routed {
    let dir = tempfile::tempdir().unwrap();
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let (cert, key, default_der) = write_cert_names(dir.path(), "default", &["localhost", BTC, WS, UNKNOWN], alg);
    let (kcert, kkey, keva_der) = write_cert_names(dir.path(), "keva", &[KEVA], alg);
    let default_up = version_backend_thread("default-backend");
    let btc_up = version_backend_thread("btc-backend");
    let keva_up = version_backend_thread("keva-backend");
    let ws_up = version_backend_thread("ws-backend");
    let toml = format!(
        "{RELAXED}[cost]\n{cost}\n[cost.methods]\n\"server.ping\" = {ping}\n\n\
         [[front]]\nname = \"{p}-main\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tls\"\n\
         upstreams = [\"{default_up}\"]\n[front.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[front.tls.sni]]\nname = \"{BTC}\"\nroute = \"{p}-btc\"\n\
         [[front.tls.sni]]\nname = \"{WS}\"\nroute = \"{p}-ws\"\n\
         [[front.tls.sni]]\nname = \"{KEVA}\"\nroute = \"{p}-keva\"\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [[front]]\nname = \"{p}-btc\"\nkind = \"electrum\"\nlisten = []\ntransport = \"tcp\"\n\
         upstreams = [\"{btc_up}\"]\n\n\
         [[front]]\nname = \"{p}-ws\"\nkind = \"electrum\"\nlisten = []\ntransport = \"ws\"\n\
         upstreams = [\"{ws_up}\"]\n\n\
         [[front]]\nname = \"{p}-keva\"\nkind = \"electrum\"\nlisten = []\ntransport = \"tcp\"\n\
         upstreams = [\"{keva_up}\"]\n[front.electrum]\nprofile = \"kevacoin\"\n",
        cert.display(),
        key.display(),
        kcert.display(),
        kkey.display(),
    );
    let running = start_in(dir.path(), &toml).await;
    Routed {
        dir,
        toml,
        prefix: p.to_string(),
        running,
        default_der,
        keva_der,
    }
}

type Session = BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A rustls client from `from` that sends `sni` (None: connects by IP, which sends no SNI); `None` when
/// the gateway closes before the handshake completes.
async fn connect(r: &Routed, from: &str, sni: Option<&str>) -> Option<Session> {
    let addr: SocketAddr = r.running.addr(&format!("{}-main", r.prefix));
    let tcp = connect_from(from, addr).await.ok()?;
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_string()).unwrap(),
        None => ServerName::IpAddress(ip("127.0.0.1").into()),
    };
    let connector = tls_connector([&r.default_der, &r.keva_der], rustls::DEFAULT_VERSIONS);
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .ok()?;
    Some(BufReader::new(tls))
}

async fn call(s: &mut Session, id: u64, method: &str, params: &str) -> Option<Value> {
    let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"{method}\",\"params\":{params}}}\n");
    s.get_mut().write_all(line.as_bytes()).await.ok()?;
    let mut reply = String::new();
    match tokio::time::timeout(Duration::from_secs(5), s.read_line(&mut reply)).await {
        Ok(Ok(n)) if n > 0 => Some(serde_json::from_str(&reply).unwrap()),
        _ => None,
    }
}

/// The software string the backend behind `sni` answers `server.version` with.
async fn software(r: &Routed, from: &str, sni: Option<&str>) -> String {
    let mut s = connect(r, from, sni).await.expect("handshake");
    let v = call(&mut s, 1, "server.version", r#"["test", "1.4"]"#)
        .await
        .expect("a reply");
    v["result"][0].as_str().unwrap_or_else(|| panic!("{v}")).to_string()
}

fn routed_count(p: &str, target: &str) -> f64 {
    let text = gatehouse::telemetry::metrics::render(None);
    sample(
        &text,
        &format!("gatehouse_sni_routed_total{{front=\"{p}-main\",target=\"{p}-{target}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn each_server_name_reaches_its_front_and_others_get_the_default() {
    let r = routed("snia", "", 1.0).await;
    assert_eq!(software(&r, "127.0.0.2", Some(BTC)).await, "btc-backend");
    // keva's name gets keva's own certificate (a client trusting only it completes the handshake).
    let tcp = connect_from("127.0.0.2", r.running.addr("snia-main")).await.unwrap();
    let only_keva = tls_connector([&r.keva_der], rustls::DEFAULT_VERSIONS);
    only_keva
        .connect(ServerName::try_from(KEVA).unwrap(), tcp)
        .await
        .expect("keva's certificate");
    assert_eq!(software(&r, "127.0.0.2", Some(KEVA)).await, "keva-backend");
    // Case does not matter in SNI names.
    assert_eq!(software(&r, "127.0.0.2", Some("BTC.Example.ORG")).await, "btc-backend");
    assert_eq!(software(&r, "127.0.0.2", None).await, "default-backend");
    assert_eq!(software(&r, "127.0.0.2", Some(UNKNOWN)).await, "default-backend");
    assert_eq!(software(&r, "127.0.0.2", Some("localhost")).await, "default-backend");
    // The routed front runs its own profile: kevacoin knows blockchain.block.count, bitcoin does not.
    let mut keva = connect(&r, "127.0.0.2", Some(KEVA)).await.unwrap();
    call(&mut keva, 1, "server.version", r#"["test", "1.4"]"#)
        .await
        .unwrap();
    let v = call(&mut keva, 2, "blockchain.block.count", "[]").await.unwrap();
    assert!(v.get("error").is_none(), "{v}");
    let mut btc = connect(&r, "127.0.0.2", Some(BTC)).await.unwrap();
    call(&mut btc, 1, "server.version", r#"["test", "1.4"]"#).await.unwrap();
    let v = call(&mut btc, 2, "blockchain.block.count", "[]").await.unwrap();
    assert_eq!(v["error"]["code"], -32601, "{v}");
    // The WebSocket front answers WebSocket inside the one TLS session (wss on the shared port).
    let tls = connect(&r, "127.0.0.2", Some(WS)).await.unwrap().into_inner();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://ws.example.org/", tls)
        .await
        .expect("WebSocket upgrade on the routed front");

    let req = r#"{"jsonrpc":"2.0","id":1,"method":"server.version","params":["test","1.4"]}"#;
    ws.send(tokio_tungstenite::tungstenite::Message::text(req))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a reply in time")
        .expect("a message")
        .unwrap();
    assert!(reply.to_text().unwrap().contains("ws-backend"), "{reply}");
    // Counted by configured front names; the unknown name and no-SNI clients are not routes.
    assert_eq!(routed_count("snia", "btc"), 3.0);
    assert_eq!(routed_count("snia", "keva"), 3.0);
    assert_eq!(routed_count("snia", "ws"), 1.0);
    let text = gatehouse::telemetry::metrics::render(None);
    assert!(!text.contains(UNKNOWN), "a client's name reached the metrics");
}

#[tokio::test]
async fn a_banned_client_is_refused_on_every_name() {
    let r = routed("snib", "", 1.0).await;
    assert_eq!(software(&r, "127.0.0.3", Some(BTC)).await, "btc-backend");
    r.running
        .bans()
        .ban("127.0.0.3/32".parse().unwrap(), Duration::from_secs(600), "test")
        .unwrap();
    for sni in [Some(BTC), Some(KEVA), None] {
        assert!(
            connect(&r, "127.0.0.3", sni).await.is_none(),
            "a banned client completed a handshake for {sni:?}"
        );
    }
    // Another client is still served.
    assert_eq!(software(&r, "127.0.0.4", Some(KEVA)).await, "keva-backend");
}

#[tokio::test]
async fn a_clients_cost_adds_up_across_names() {
    // One ping costs 6000 of the group's hard limit of 10000: one per name is fine, the second crosses.
    let cost = "soft_limit = 1000\nhard_limit = 10000\nmax_sleep = \"100ms\"\ngroup_private = true";
    let r = routed("snic", cost, 6000.0).await;
    let group = ip("127.0.5.0");
    let mut btc = connect(&r, "127.0.5.2", Some(BTC)).await.unwrap();
    let v = call(&mut btc, 1, "server.version", r#"["test", "1.4"]"#).await.unwrap();
    assert_eq!(v["result"][0], "btc-backend", "{v}");
    let v = call(&mut btc, 2, "server.ping", "[]").await.unwrap();
    assert!(v.get("error").is_none(), "{v}");
    let one = r.running.ledger().group_cost(group);
    assert!(one >= 6000.0, "group cost after one ping: {one}");
    let mut keva = connect(&r, "127.0.5.2", Some(KEVA)).await.unwrap();
    let v = call(&mut keva, 1, "server.version", r#"["test", "1.4"]"#)
        .await
        .unwrap();
    assert_eq!(v["result"][0], "keva-backend", "{v}");
    let _ = call(&mut keva, 2, "server.ping", "[]").await;
    let two = r.running.ledger().group_cost(group);
    assert!(two >= 11000.0, "group cost after a ping on each name: {two}");
    // The btc session paid 6000 itself, under the limit; the group's total (both names) is over it, so
    // it is cut off too (-101, then closed).
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        match tokio::time::timeout(Duration::from_secs(5), btc.read_line(&mut line)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => seen.push_str(&line),
            Err(_) => panic!("the btc session stayed open over the group's hard limit: {seen}"),
        }
    }
    assert!(seen.contains("-101"), "{seen}");
}

#[tokio::test]
async fn a_reload_changes_where_a_name_goes_for_new_connections() {
    let mut r = routed("snid", "", 1.0).await;
    let mut before = connect(&r, "127.0.0.6", Some(BTC)).await.unwrap();
    assert_eq!(software(&r, "127.0.0.6", Some(BTC)).await, "btc-backend");
    // The two names swap fronts.
    let toml = r
        .toml
        .replace("route = \"snid-btc\"", "route = \"swap\"")
        .replace("route = \"snid-keva\"", "route = \"snid-btc\"")
        .replace("route = \"swap\"", "route = \"snid-keva\"");
    let cfg = gatehouse::config::Config::parse(&toml, &r.dir.path().join("gatehouse.toml")).unwrap();
    r.running.reload(cfg).await.unwrap();
    assert_eq!(software(&r, "127.0.0.6", Some(BTC)).await, "keva-backend");
    assert_eq!(software(&r, "127.0.0.6", Some(KEVA)).await, "btc-backend");
    // A session that began before the reload stays where it was routed.
    let v = call(&mut before, 1, "server.version", r#"["test", "1.4"]"#)
        .await
        .unwrap();
    assert_eq!(v["result"][0], "btc-backend", "{v}");
}
