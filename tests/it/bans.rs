//! The durable ban store and the admin API through the real gateway: bans raised over HTTP refuse
//! clients at accept, survive restarts (and a torn journal tail), lifts survive too, expired bans stay
//! dead, compaction keeps the live set, and the API's auth and error answers.

use crate::support::backends::echo_backend;
use crate::support::clients::http;
use crate::support::gateway::journaled_ban;
use crate::support::net::is_refused;
use crate::support::{backends, clients, gateway, net};
use gatehouse::admin::AdminListen;
use gatehouse::config::Config;
use gatehouse::Running;
use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "test-token-0123456789abcdef";

/// Writes the token file and returns a config with a journal and the admin API on a free loopback port.
fn config(dir: &Path, backend: SocketAddr, extra_admission: &str) -> String {
    std::fs::write(dir.join("admin.token"), format!("  {TOKEN}\n")).unwrap();
    format!(
        "[runtime]\ndrain_deadline = \"1s\"\n\n\
         [admission]\nmax_connections_per_ip = 100000\nmax_connections_per_group = 100000\n\
         connect_rate_per_ip = \"100000/s\"\nconnect_burst_per_ip = 100000\n{extra_admission}\n\n\
         [bans]\njournal = \"state/bans.journal\"\n\n\
         [admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n{}",
        gateway::tcp_front("relay", backend, "")
    )
}

struct Gw {
    running: Running,
    admin: SocketAddr,
    front: SocketAddr,
}

async fn start(dir: &Path, toml: &str) -> Gw {
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let running = gateway::start_in(dir, toml).await;
    let admin = match running.admin_addr() {
        Some(AdminListen::Tcp(a)) => *a,
        other => panic!("admin API not on TCP: {other:?}"),
    };
    let front = running.addr("relay");
    Gw { running, admin, front }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

async fn post_ban(admin: SocketAddr, prefix: &str, duration: &str) -> (u16, Value) {
    let body = json!({ "prefix": prefix, "duration": duration, "reason": "test" }).to_string();
    http(admin, "POST", "/v1/bans", Some(&bearer()), Some(&body)).await
}

async fn listed(admin: SocketAddr) -> Vec<String> {
    let (status, v) = http(admin, "GET", "/v1/bans", Some(&bearer()), None).await;
    assert_eq!(status, 200, "{v}");
    v["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["prefix"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_ban_refuses_at_accept_survives_restart_and_a_delete_readmits() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(dir.path(), backend, "");
    let gw = start(dir.path(), &toml).await;
    assert!(!is_refused("127.0.0.2", gw.front).await, "admitted before the ban");

    let (status, rec) = post_ban(gw.admin, "127.0.0.2", "1h").await;
    assert_eq!(status, 201, "{rec}");
    assert_eq!(rec["prefix"], "127.0.0.2/32");
    assert_eq!(rec["reason"], "test");
    assert_eq!(rec["origin"], "local");
    assert!(rec["expires_in_secs"].as_u64().unwrap() > 3500, "{rec}");
    assert!(is_refused("127.0.0.2", gw.front).await, "refused right after 201");
    assert!(!is_refused("127.0.0.3", gw.front).await, "a neighbour is not");
    let s = gw.running.bans().stats();
    assert_eq!((s.added_admin, s.active), (1, 1));
    gw.running.shutdown().await;

    let gw = start(dir.path(), &toml).await;
    assert!(
        is_refused("127.0.0.2", gw.front).await,
        "the ban was forgotten by a restart"
    );
    assert_eq!(listed(gw.admin).await, ["127.0.0.2/32"]);

    let (status, rec) = http(gw.admin, "DELETE", "/v1/bans/127.0.0.2%2F32", Some(&bearer()), None).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["prefix"], "127.0.0.2/32");
    assert!(!is_refused("127.0.0.2", gw.front).await, "readmitted after DELETE");
    let (status, v) = http(gw.admin, "DELETE", "/v1/bans/127.0.0.2", Some(&bearer()), None).await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(gw.running.bans().stats().lifted, 1);
    gw.running.shutdown().await;

    // The lift is durable too.
    let gw = start(dir.path(), &toml).await;
    assert!(
        !is_refused("127.0.0.2", gw.front).await,
        "a restart revived a lifted ban"
    );
    assert!(listed(gw.admin).await.is_empty());
    gw.running.shutdown().await;
}

#[tokio::test]
async fn an_expired_ban_is_not_revived_by_a_restart() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(dir.path(), backend, "");
    let gw = start(dir.path(), &toml).await;
    assert_eq!(post_ban(gw.admin, "127.0.0.2", "1s").await.0, 201);
    assert_eq!(post_ban(gw.admin, "127.0.0.3", "1h").await.0, 201);
    assert!(is_refused("127.0.0.2", gw.front).await);
    gw.running.shutdown().await;

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let gw = start(dir.path(), &toml).await;
    assert!(!is_refused("127.0.0.2", gw.front).await, "an expired ban came back");
    assert!(is_refused("127.0.0.3", gw.front).await);
    assert_eq!(listed(gw.admin).await, ["127.0.0.3/32"]);
    gw.running.shutdown().await;
}

#[tokio::test]
async fn a_torn_last_journal_line_is_ignored_and_appends_after_it_are_clean() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(dir.path(), backend, "");
    let journal = dir.path().join("state/bans.journal");
    let gw = start(dir.path(), &toml).await;
    assert_eq!(post_ban(gw.admin, "127.0.0.2", "1h").await.0, 201);
    assert_eq!(post_ban(gw.admin, "127.0.0.3", "1h").await.0, 201);
    gw.running.shutdown().await;

    // A crash while writing a third statement: the ban on 127.0.0.3's line written again, cut in half.
    let text = std::fs::read_to_string(&journal).unwrap();
    let last = text.lines().last().unwrap().replace("127.0.0.3/32", "127.0.0.4/32");
    let mut f = std::fs::OpenOptions::new().append(true).open(&journal).unwrap();
    f.write_all(&last.as_bytes()[..last.len() / 2]).unwrap();
    drop(f);

    let gw = start(dir.path(), &toml).await;
    assert!(is_refused("127.0.0.2", gw.front).await);
    assert!(is_refused("127.0.0.3", gw.front).await);
    assert!(
        !is_refused("127.0.0.4", gw.front).await,
        "a torn, unacknowledged line was applied"
    );
    assert_eq!(post_ban(gw.admin, "127.0.0.5", "1h").await.0, 201);
    gw.running.shutdown().await;

    let gw = start(dir.path(), &toml).await;
    assert_eq!(
        listed(gw.admin).await,
        ["127.0.0.2/32", "127.0.0.3/32", "127.0.0.5/32"],
        "the append after the torn line was lost or mangled"
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn compaction_keeps_exactly_the_live_set() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(dir.path(), backend, "");
    let journal = dir.path().join("state/bans.journal");
    let gw = start(dir.path(), &toml).await;
    for i in 0..20 {
        assert_eq!(post_ban(gw.admin, &format!("127.0.1.{i}"), "1h").await.0, 201);
    }
    for i in 0..20 {
        if i % 4 != 0 {
            let path = format!("/v1/bans/127.0.1.{i}");
            assert_eq!(http(gw.admin, "DELETE", &path, Some(&bearer()), None).await.0, 200);
        }
    }
    assert_eq!(post_ban(gw.admin, "127.0.2.0/24", "1s").await.0, 201);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = std::fs::read_to_string(&journal).unwrap().lines().count();
    assert_eq!(before, 20 + 15 + 1);
    assert!(gw.running.bans().compact_journal().unwrap());
    let text = std::fs::read_to_string(&journal).unwrap();
    // 5 live bans plus the 15 lifts, which are kept while the bans they lifted would still be in force.
    assert_eq!(text.lines().count(), 20, "{text}");
    assert!(
        !text.contains("127.0.2.0/24"),
        "an expired ban was carried over:\n{text}"
    );
    let want: Vec<String> = (0..20).step_by(4).map(|i| format!("127.0.1.{i}/32")).collect();
    assert_eq!(listed(gw.admin).await, want);
    // The journal keeps working after the rename.
    assert_eq!(post_ban(gw.admin, "127.0.3.1", "1h").await.0, 201);
    gw.running.shutdown().await;

    let gw = start(dir.path(), &toml).await;
    let mut want = want;
    want.push("127.0.3.1/32".into());
    assert_eq!(listed(gw.admin).await, want);
    assert!(is_refused("127.0.1.4", gw.front).await);
    assert!(!is_refused("127.0.1.5", gw.front).await);
    gw.running.shutdown().await;
}

#[tokio::test]
async fn admin_api_auth_and_errors() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(dir.path(), backend, "allow = [\"127.0.0.9\", \"::1\"]");
    let gw = start(dir.path(), &toml).await;
    let a = gw.admin;

    // Probes need no token.
    assert_eq!(
        http(a, "GET", "/healthz", None, None).await,
        (200, json!({"status": "ok"}))
    );
    assert_eq!(http(a, "GET", "/readyz", None, None).await.0, 200);

    // No token, wrong token, wrong scheme: 401 with a JSON error, and nothing changes.
    let body = json!({"prefix": "127.0.0.2", "duration": "1h"}).to_string();
    for auth in [None, Some("Bearer wrong-token-0123456789"), Some("Basic dGVzdDp0ZXN0")] {
        for (m, p, b) in [
            ("GET", "/v1/bans", None),
            ("POST", "/v1/bans", Some(body.as_str())),
            ("DELETE", "/v1/bans/127.0.0.2", None),
            ("GET", "/v1/cluster", None),
        ] {
            let (status, v) = http(a, m, p, auth, b).await;
            assert_eq!(status, 401, "{m} {p} with {auth:?}: {v}");
            assert!(v["error"].is_string(), "{v}");
        }
    }
    assert!(gw.running.bans().list(None).is_empty());
    // The scheme name is case-insensitive (RFC 7235).
    assert_eq!(
        http(a, "GET", "/v1/bans", Some(&format!("bearer {TOKEN}")), None)
            .await
            .0,
        200
    );

    let auth = Some(bearer());
    let auth = auth.as_deref();
    let bad = |prefix: &str, duration: &str| json!({"prefix": prefix, "duration": duration}).to_string();
    for (body, needle) in [
        (bad("300.0.0.1/24", "1h"), "prefix"),
        (bad("10.0.0.0/33", "1h"), "prefix"),
        (bad("not an address", "1h"), "prefix"),
        (bad("192.0.2.1", "soon"), "duration"),
        (bad("192.0.2.1", "0s"), "duration"),
        (bad("192.0.2.1", "60"), "duration"),
        ("{\"prefix\": \"192.0.2.1\"".to_string(), "JSON"),
        ("{\"prefix\": \"192.0.2.1\"}".to_string(), "duration"),
        (
            json!({"prefix": "192.0.2.1", "duration": "1h", "extra": 1}).to_string(),
            "extra",
        ),
        (
            json!({"prefix": "192.0.2.1", "duration": "1h", "reason": "a\nb"}).to_string(),
            "reason",
        ),
    ] {
        let (status, v) = http(a, "POST", "/v1/bans", auth, Some(&body)).await;
        assert_eq!(status, 400, "{body}: {v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert!(msg.contains(needle), "{body}: error {msg:?} does not mention {needle}");
    }
    let (status, v) = http(a, "GET", "/v1/bans?prefix=10.0.0.0%2F99", auth, None).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("prefix"), "{v}");
    let (status, v) = http(a, "DELETE", "/v1/bans/999.1.1.1", auth, None).await;
    assert_eq!(status, 400, "{v}");

    // Allowlisted networks: the address itself, a network around it, and an IPv6 one.
    for prefix in ["127.0.0.9", "127.0.0.0/24", "::1"] {
        let (status, v) = http(a, "POST", "/v1/bans", auth, Some(&bad(prefix, "1h"))).await;
        assert_eq!(status, 409, "{prefix}: {v}");
        assert!(v["error"].as_str().unwrap().contains("allowlisted"), "{v}");
    }
    assert!(!is_refused("127.0.0.9", gw.front).await);
    assert_eq!(gw.running.bans().stats().rejected_allowlisted, 3);

    // Body limit: refused on the declared length, before the body is sent (sending it would race the
    // server's close against our read).
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    let head = format!(
        "POST /v1/bans HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 70000\r\n\r\n",
        bearer()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"HTTP/1.1 413");

    // Unknown paths and methods.
    assert_eq!(http(a, "GET", "/v1/nothing", auth, None).await.0, 404);
    assert_eq!(http(a, "GET", "/", auth, None).await.0, 404);
    assert_eq!(http(a, "PUT", "/v1/bans", auth, Some("{}")).await.0, 405);
    assert_eq!(
        http(a, "GET", "/v1/cluster", auth, None).await,
        (200, json!({"backend": "none", "peers": []}))
    );

    // The filter: bans inside or around the prefix.
    assert_eq!(
        http(a, "POST", "/v1/bans", auth, Some(&bad("192.0.2.0/24", "1h")))
            .await
            .0,
        201
    );
    assert_eq!(
        http(a, "POST", "/v1/bans", auth, Some(&bad("198.51.100.7", "1h")))
            .await
            .0,
        201
    );
    let (status, v) = http(a, "GET", "/v1/bans?prefix=192.0.2.77", auth, None).await;
    assert_eq!(status, 200);
    assert_eq!(v["bans"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["bans"][0]["prefix"], "192.0.2.0/24");

    // Not ready once the gateway stops accepting; still healthy.
    let mut running = gw.running;
    running.stop_accepting().await;
    assert_eq!(http(a, "GET", "/readyz", None, None).await.0, 503);
    assert_eq!(http(a, "GET", "/healthz", None, None).await.0, 200);
    running.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(a).await.is_err(),
        "the admin API outlived the gateway"
    );
}

#[tokio::test]
async fn admin_api_on_a_unix_socket() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(dir.path(), backend, "").replace("listen = \"127.0.0.1:0\"", "listen = \"unix:admin.sock\"");
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    // A stale socket file from a crashed run is replaced.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("admin.sock")).unwrap());
    let running = gateway::start_in(dir.path(), &toml).await;
    let sock = dir.path().join("admin.sock");
    assert_eq!(running.admin_addr(), Some(&AdminListen::Unix(sock.clone())));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    let token = gatehouse::admin::settings::read_token_file(&dir.path().join("admin.token")).unwrap();
    let target = AdminListen::Unix(sock.clone());
    let body = json!({"prefix": "127.0.0.2", "duration": "10m", "reason": "unix"});
    let r = gatehouse::admin::client::request(&target, &token, hyper::Method::POST, "/v1/bans", Some(body))
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert!(is_refused("127.0.0.2", running.addr("relay")).await);
    running.shutdown().await;
    assert!(!sock.exists(), "the socket file was left behind");
}

fn parse(dir: &Path, toml: &str) -> Result<Config, gatehouse::config::ConfigError> {
    Config::parse(toml, &dir.join("gatehouse.toml"))
}

#[test]
fn admin_config_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    std::fs::write(dir.path().join("short.token"), "abc\n").unwrap();
    let front = gateway::tcp_front("relay", "127.0.0.1:1".parse().unwrap(), "");
    let with = |admin: &str| format!("[admin]\n{admin}\n\n{front}");

    let e = parse(
        dir.path(),
        &with("enabled = true\nlisten = \"0.0.0.0:9180\"\ntoken_file = \"admin.token\""),
    )
    .unwrap_err();
    assert_eq!(e.key, "admin.listen", "{e}");
    assert!(e.reason.contains("allow_remote"), "{e}");
    assert_eq!(e.line, Some(3), "{e}");
    let e = parse(dir.path(), &with("listen = \"192.0.2.1:9180\"")).unwrap_err();
    assert_eq!(e.key, "admin.listen", "{e}");
    let ok = parse(
        dir.path(),
        &with("enabled = true\nlisten = \"0.0.0.0:9180\"\ntoken_file = \"admin.token\"\nallow_remote = true"),
    )
    .unwrap();
    assert_eq!(ok.admin.listen, AdminListen::Tcp("0.0.0.0:9180".parse().unwrap()));
    assert_eq!(ok.admin.token.as_ref().unwrap().expose(), TOKEN);
    assert!(
        !format!("{ok:?}").contains(TOKEN),
        "the token shows in the config's Debug form"
    );
    let ok = parse(
        dir.path(),
        &with("enabled = true\nlisten = \"[::1]:9180\"\ntoken_file = \"admin.token\""),
    )
    .unwrap();
    assert!(ok.admin.enabled);

    let e = parse(dir.path(), &with("enabled = true")).unwrap_err();
    assert_eq!(e.key, "admin.token_file", "{e}");
    let e = parse(dir.path(), &with("enabled = true\ntoken_file = \"missing.token\"")).unwrap_err();
    assert_eq!(e.key, "admin.token_file", "{e}");
    assert!(e.reason.contains("missing.token"), "{e}");
    let e = parse(dir.path(), &with("enabled = true\ntoken_file = \"short.token\"")).unwrap_err();
    assert!(e.reason.contains("at least 16"), "{e}");
    let e = parse(dir.path(), &with("listen = \"localhost\"")).unwrap_err();
    assert_eq!(e.key, "admin.listen", "{e}");

    // Disabled by default; a disabled section needs no token.
    let d = parse(dir.path(), &front).unwrap();
    assert!(!d.admin.enabled && d.admin.token.is_none());
    assert_eq!(d.admin.listen, AdminListen::Tcp("127.0.0.1:9180".parse().unwrap()));
    assert!(d.bans.journal.is_none());
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let j = parse(
        dir.path(),
        &format!("[bans]\njournal = \"state/bans.journal\"\n\n{front}"),
    )
    .unwrap();
    assert_eq!(j.bans.journal, Some(dir.path().join("state/bans.journal")));
}

#[tokio::test]
async fn a_journal_that_cannot_be_opened_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[bans]\njournal = \"no-such-dir/bans.journal\"\n\n{}",
        gateway::tcp_front("relay", "127.0.0.1:1".parse().unwrap(), "")
    );
    // The folder is there when the file is checked and gone by the start.
    std::fs::create_dir(dir.path().join("no-such-dir")).unwrap();
    let cfg = parse(dir.path(), &toml).unwrap();
    std::fs::remove_dir(dir.path().join("no-such-dir")).unwrap();
    let err = match gatehouse::Gatehouse::start(cfg).await {
        Ok(_) => panic!("started without its journal"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no-such-dir/bans.journal"), "{err}");
    assert!(err.contains("cannot open"), "{err}");
}

#[tokio::test]
async fn no_ban_may_cover_everyone_whether_from_the_api_or_the_journal() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config(dir.path(), backend, "");
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    // A ban of everyone already in the journal (an older version, or a hand edit) must not lock
    // everyone out at the next start.
    let planted = journaled_ban("0.0.0.0/0") + &journaled_ban("127.0.0.9/32");
    std::fs::write(dir.path().join("state/bans.journal"), planted).unwrap();
    let gw = start(dir.path(), &toml).await;
    assert!(
        !is_refused("127.0.0.2", gw.front).await,
        "a journaled 0.0.0.0/0 was applied"
    );
    assert!(
        is_refused("127.0.0.9", gw.front).await,
        "the narrow journaled ban was lost"
    );

    for (prefix, widest) in [
        ("0.0.0.0/0", "/8"),
        ("::/0", "/19"),
        // The IPv4-mapped form of 0.0.0.0/0 is 0.0.0.0/0.
        ("::ffff:0.0.0.0/96", "/8"),
        ("10.0.0.0/7", "/8"),
        ("2001::/18", "/19"),
    ] {
        let (status, v) = post_ban(gw.admin, prefix, "1h").await;
        assert_eq!(status, 400, "{prefix}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(&format!("wider than {widest}")), "{prefix}: {msg}");
    }
    let (status, v) = post_ban(gw.admin, "::ffff:0.0.0.0/96", "1h").await;
    assert!(v["error"].as_str().unwrap().starts_with("0.0.0.0/0 "), "{status} {v}");
    assert!(!is_refused("127.0.0.2", gw.front).await);
    // The limit itself is allowed.
    assert_eq!(post_ban(gw.admin, "10.0.0.0/8", "1h").await.0, 201);
    assert_eq!(listed(gw.admin).await, ["10.0.0.0/8", "127.0.0.9/32"]);
    let metrics = clients::admin_get(gw.admin, TOKEN, "/metrics").await;
    assert!(
        metrics.contains("gatehouse_bans_rejected_total{reason=\"too_wide\"} 6"),
        "{metrics}"
    );
    gw.running.shutdown().await;
}

/// A gateway whose Electrum front bans at the first garbage line, with a journal and the admin API;
/// `bans` joins the [bans] table.
async fn electrum_gateway(dir: &Path, bans: &str) -> (Running, SocketAddr, SocketAddr) {
    let backend = backends::stub_backend(&[]).await;
    std::fs::write(dir.join("admin.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let toml = format!(
        "{}[bans]\njournal = \"state/bans.journal\"\nmax_violations = 0\n{bans}\n\n\
         [admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n\
         [[front]]\nname = \"electrum\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\n\
         upstreams = [\"{backend}\"]\n",
        gateway::RELAXED
    );
    let running = gateway::start_in(dir, &toml).await;
    let admin = match running.admin_addr() {
        Some(AdminListen::Tcp(a)) => *a,
        other => panic!("admin API not on TCP: {other:?}"),
    };
    let front = running.addr("electrum");
    (running, admin, front)
}

/// One garbage line from `from` (a violation, so a ban), read until the gateway closes; false if the
/// connection was refused at once (already banned).
async fn offend(from: String, front: SocketAddr) -> bool {
    let Ok(mut s) = net::connect_from(&from, front).await else {
        return false;
    };
    if s.write_all(b"this is not json\n").await.is_err() {
        return false;
    }
    net::closed_within(&mut s, Duration::from_secs(10)).await;
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offenders_from_one_24_end_as_one_ban_of_the_24() {
    let dir = tempfile::tempdir().unwrap();
    let (running, admin, front) = electrum_gateway(dir.path(), "").await;
    // 250 addresses of one /24, fifty at a time.
    let hosts: Vec<String> = (1..=250).map(|i| format!("127.0.7.{i}")).collect();
    for chunk in hosts.chunks(50) {
        futures_util::future::join_all(chunk.iter().map(|h| offend(h.clone(), front))).await;
    }
    assert_eq!(listed(admin).await, ["127.0.7.0/24"]);
    for h in ["127.0.7.1", "127.0.7.128", "127.0.7.254"] {
        assert!(is_refused(h, front).await, "{h} admitted");
    }
    // On disk: a handful of lines (the first addresses, their lifts, the /24), not 250 bans.
    let journal = std::fs::read_to_string(dir.path().join("state/bans.journal")).unwrap();
    let bans: Vec<&str> = journal.lines().filter(|l| l.contains(r#""op":"ban""#)).collect();
    assert!(bans.len() <= 4, "{journal}");
    assert!(bans.last().unwrap().contains("127.0.7.0/24"), "{journal}");
    let metrics = clients::admin_get(admin, TOKEN, "/metrics").await;
    assert!(metrics.contains("\ngatehouse_bans_escalated_total 1\n"), "{metrics}");
    let syncs: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_bans_journal_syncs_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no journal syncs counted:\n{metrics}"));
    assert!(syncs <= 8, "{syncs} syncs for one escalation");
    running.shutdown().await;

    // The escalation survives a restart whole: the /24, and none of the lifted single bans.
    let (running, admin, _) = electrum_gateway(dir.path(), "").await;
    assert_eq!(listed(admin).await, ["127.0.7.0/24"]);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ban_table_refuses_automatic_bans_but_never_an_operators() {
    let dir = tempfile::tempdir().unwrap();
    let (running, admin, front) = electrum_gateway(dir.path(), "max_entries = 5\nescalate_after = 0").await;
    for i in 1..=8 {
        assert!(offend(format!("127.0.{}.9", 20 + i), front).await);
    }
    assert_eq!(listed(admin).await.len(), 5);
    assert!(is_refused("127.0.21.9", front).await);
    assert!(
        !listed(admin).await.contains(&"127.0.28.9/32".to_string()),
        "banned past the cap"
    );
    let (status, v) = post_ban(admin, "192.0.2.0/24", "1h").await;
    assert_eq!(status, 201, "an operator's ban did not fit: {v}");
    assert_eq!(listed(admin).await.len(), 6);
    let metrics = clients::admin_get(admin, TOKEN, "/metrics").await;
    assert!(
        metrics.contains("gatehouse_bans_rejected_total{reason=\"table_full\"} 3"),
        "{metrics}"
    );
    running.shutdown().await;
}
