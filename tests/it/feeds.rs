//! Blocklist feeds through the real gateway: a file feed and an HTTP feed refuse what they list at
//! accept, a copy that fails its SHA-256 pin or its minisign signature (signed by the real `minisign`)
//! leaves the last good copy in force and says so in the metrics and `/readyz`, the last good copy
//! survives a restart with the server gone, and the size and entry caps refuse oversized copies.

use crate::support::clients::{admin_get, http, sample};
use crate::support::net::{is_refused, within};
use crate::support::{backends, files, gateway};
use gatehouse::admin::AdminListen;
use gatehouse::Running;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "feeds-token-0123456789abcdef";

struct Gw {
    running: Running,
    admin: SocketAddr,
    front: SocketAddr,
}

/// A relay front with a ban journal in `state/` (the state directory feeds keep their copies in), the
/// admin API, and `feeds` (`[[feeds]]` tables).
async fn start(dir: &Path, feeds: &str) -> Gw {
    let backend = backends::echo_backend().await;
    std::fs::write(dir.join("admin.token"), TOKEN).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let toml = format!(
        "{}[bans]\njournal = \"state/bans.journal\"\n\n\
         [admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n{feeds}\n{}",
        gateway::RELAXED,
        gateway::tcp_front("relay", backend, "")
    );
    let running = gateway::start_in(dir, &toml).await;
    let admin = match running.admin_addr() {
        Some(AdminListen::Tcp(a)) => *a,
        other => panic!("admin API not on TCP: {other:?}"),
    };
    let front = running.addr("relay");
    Gw { running, admin, front }
}

async fn metric(admin: SocketAddr, series: &str) -> f64 {
    sample(&admin_get(admin, TOKEN, "/metrics").await, series).unwrap_or(-1.0)
}

/// Waits (up to 10 s) until `from` is refused (`true`) or admitted (`false`).
async fn until_refused(from: &str, front: SocketAddr, refused: bool) {
    let waited = within(Duration::from_secs(10), async || {
        is_refused(from, front).await == refused
    })
    .await;
    assert!(waited.is_some(), "{from}: refused = {} after 10 s", !refused);
}

/// Waits until `series` reaches at least `n`.
async fn until_metric(admin: SocketAddr, series: &str, n: f64) {
    let ok = within(Duration::from_secs(10), async || metric(admin, series).await >= n).await;
    let text = admin_get(admin, TOKEN, "/metrics").await;
    assert!(ok.is_some(), "{series} < {n} after 10 s:\n{text}");
}

async fn readyz_feed(admin: SocketAddr, name: &str) -> serde_json::Value {
    let (status, v) = http(admin, "GET", "/readyz", None, None).await;
    assert_eq!(status, 200, "{v}");
    v["feeds"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no feed {name} in /readyz: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_feed_refuses_what_it_lists_and_follows_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("drop.txt");
    std::fs::write(&list, "; Spamhaus DROP\n127.0.3.0/24 ; SBL000001\n").unwrap();
    let gw = start(
        dir.path(),
        "[[feeds]]\nname = \"drop\"\nfile = \"drop.txt\"\nformat = \"spamhaus\"\ninterval = \"1s\"\n",
    )
    .await;
    until_refused("127.0.3.9", gw.front, true).await;
    assert!(
        !is_refused("127.0.4.9", gw.front).await,
        "a network the feed does not list"
    );
    let text = admin_get(gw.admin, TOKEN, "/metrics").await;
    assert!(
        sample(&text, "gatehouse_connections_refused_total{reason=\"feed\"}").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "gatehouse_feed_refusals_total{feed=\"drop\"}").unwrap() >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "gatehouse_feed_entries{feed=\"drop\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("127.0.3"), "an address in the metrics:\n{text}");
    let f = readyz_feed(gw.admin, "drop").await;
    assert_eq!(
        (f["state"].as_str(), f["entries"].as_u64()),
        (Some("ok"), Some(1)),
        "{f}"
    );

    // The operator edits the file: the next refresh swaps the list whole.
    // Written aside and renamed, as editors do, so the feed never reads half a file.
    crate::support::tls::replace(&list, b"127.0.4.0/24 ; SBL000002\n");
    until_refused("127.0.3.9", gw.front, false).await;
    assert!(is_refused("127.0.4.9", gw.front).await);
    gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_feed_keeps_its_last_good_copy_through_a_pin_mismatch_and_a_restart() {
    let (server, files) = files::serve().await;
    let good = "# firehol level 1 style\n127.0.5.0/24\n";
    files.put("/list.netset", good);
    let pin: String = Sha256::digest(good.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let feeds = format!(
        "[[feeds]]\nname = \"firehol\"\nurl = \"http://{server}/list.netset\"\nsha256 = \"{pin}\"\ninterval = \"1s\"\n"
    );
    let gw = start(dir.path(), &feeds).await;
    until_refused("127.0.5.1", gw.front, true).await;
    let kept = dir.path().join("state/feed-firehol.cache");
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap(),
        good,
        "the good copy is kept in the state directory"
    );
    assert!(
        metric(
            gw.admin,
            "gatehouse_feed_last_success_timestamp_seconds{feed=\"firehol\"}"
        )
        .await
            > 1.0e9
    );

    // The server now serves something else: it fails the pin, the last good copy stays in force.
    files.put("/list.netset", "127.0.6.0/24\n");
    until_metric(
        gw.admin,
        "gatehouse_feed_failures_total{feed=\"firehol\",reason=\"checksum\"}",
        1.0,
    )
    .await;
    assert_eq!(metric(gw.admin, "gatehouse_feed_stale{feed=\"firehol\"}").await, 1.0);
    assert!(
        is_refused("127.0.5.1", gw.front).await,
        "the last good copy was dropped"
    );
    assert!(
        !is_refused("127.0.6.1", gw.front).await,
        "an unverified copy took effect"
    );
    let f = readyz_feed(gw.admin, "firehol").await;
    assert_eq!(f["state"], "stale", "{f}");
    assert!(
        f["last_error"].as_str().unwrap().starts_with("checksum: SHA-256 is"),
        "{f}"
    );
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap(),
        good,
        "the kept copy was overwritten"
    );
    gw.running.shutdown().await;

    // A restart with the server gone: the kept copy is in force from the start.
    let gone = format!(
        "[[feeds]]\nname = \"firehol\"\nurl = \"http://{}/list.netset\"\nsha256 = \"{pin}\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
        crate::support::net::free_addr()
    );
    let gw = start(dir.path(), &gone).await;
    until_refused("127.0.5.2", gw.front, true).await;
    until_metric(
        gw.admin,
        "gatehouse_feed_failures_total{feed=\"firehol\",reason=\"fetch\"}",
        1.0,
    )
    .await;
    assert!(is_refused("127.0.5.3", gw.front).await);
    assert_eq!(metric(gw.admin, "gatehouse_feed_entries{feed=\"firehol\"}").await, 1.0);
    gw.running.shutdown().await;
}

fn minisign(dir: &Path, args: &[&str]) {
    let bin = Path::new("/usr/bin/minisign");
    assert!(
        bin.is_file(),
        "minisign (Debian package minisign) is missing: run tests/run (the README's test command), which installs it"
    );
    let out = Command::new(bin).args(args).current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "minisign {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minisign_signed_feed_takes_only_copies_its_key_signed() {
    let keys = tempfile::tempdir().unwrap();
    let k = keys.path();
    minisign(k, &["-G", "-W", "-p", "feed.pub", "-s", "feed.key"]);
    minisign(k, &["-G", "-W", "-p", "other.pub", "-s", "other.key"]);
    let pubkey = std::fs::read_to_string(k.join("feed.pub"))
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    let sign = |body: &str, key: &str, legacy: bool| -> Vec<u8> {
        std::fs::write(k.join("list.txt"), body).unwrap();
        let mut args = vec!["-S", "-s", key, "-m", "list.txt", "-x", "list.sig"];
        if legacy {
            args.push("-l");
        }
        minisign(k, &args);
        std::fs::read(k.join("list.sig")).unwrap()
    };
    let (server, files) = files::serve().await;
    let first = "127.0.8.0/24\n";
    files.put("/list.txt", first);
    files.put("/list.txt.minisig", sign(first, "feed.key", false));
    let dir = tempfile::tempdir().unwrap();
    let feeds = format!(
        "[[feeds]]\nname = \"signed\"\nurl = \"http://{server}/list.txt\"\nminisign_key = \"{pubkey}\"\ninterval = \"1s\"\n"
    );
    let gw = start(dir.path(), &feeds).await;
    until_refused("127.0.8.1", gw.front, true).await;

    // Signed by another key: refused, the first copy stays.
    let second = "127.0.9.0/24\n";
    files.put("/list.txt", second);
    files.put("/list.txt.minisig", sign(second, "other.key", false));
    until_metric(
        gw.admin,
        "gatehouse_feed_failures_total{feed=\"signed\",reason=\"signature\"}",
        1.0,
    )
    .await;
    assert!(is_refused("127.0.8.1", gw.front).await);
    assert!(!is_refused("127.0.9.1", gw.front).await);
    // The right key's signature, but over another file: refused too.
    files.put("/list.txt.minisig", sign(first, "feed.key", false));
    until_metric(
        gw.admin,
        "gatehouse_feed_failures_total{feed=\"signed\",reason=\"signature\"}",
        2.0,
    )
    .await;
    assert!(!is_refused("127.0.9.1", gw.front).await);
    // Signed by the key (legacy, unhashed form): taken.
    files.put("/list.txt.minisig", sign(second, "feed.key", true));
    until_refused("127.0.9.1", gw.front, true).await;
    until_refused("127.0.8.1", gw.front, false).await;
    gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_over_the_size_or_entry_cap_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("small.txt"), "127.0.10.1\n127.0.10.2\n").unwrap();
    std::fs::write(dir.path().join("tiny.txt"), "127.0.11.1\n").unwrap();
    let gw = start(
        dir.path(),
        "[[feeds]]\nname = \"capped\"\nfile = \"small.txt\"\nmax_entries = 2\ninterval = \"1s\"\n\n\
         [[feeds]]\nname = \"sized\"\nfile = \"tiny.txt\"\nmax_size = \"16B\"\ninterval = \"1s\"\n",
    )
    .await;
    until_refused("127.0.10.1", gw.front, true).await;
    until_refused("127.0.11.1", gw.front, true).await;
    let replace = crate::support::tls::replace;
    replace(&dir.path().join("small.txt"), b"127.0.10.1\n127.0.10.2\n127.0.10.3\n");
    replace(&dir.path().join("tiny.txt"), b"127.0.11.1\n127.0.11.2\n");
    until_metric(
        gw.admin,
        "gatehouse_feed_failures_total{feed=\"capped\",reason=\"too_many_entries\"}",
        1.0,
    )
    .await;
    until_metric(
        gw.admin,
        "gatehouse_feed_failures_total{feed=\"sized\",reason=\"too_large\"}",
        1.0,
    )
    .await;
    assert!(
        !is_refused("127.0.10.3", gw.front).await,
        "a copy over the entry cap took effect"
    );
    assert!(
        !is_refused("127.0.11.2", gw.front).await,
        "a copy over the size cap took effect"
    );
    assert!(
        is_refused("127.0.10.2", gw.front).await,
        "the last good copy was dropped"
    );
    assert_eq!(metric(gw.admin, "gatehouse_feed_entries{feed=\"capped\"}").await, 2.0);
    gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_feed_is_fetched_with_its_ca_file_and_refused_without_it() {
    let certs = crate::support::tls::certs();
    let (server, files) = files::serve_tls(certs.der.clone(), &certs.key).await;
    // Spamhaus's JSON lines, closing metadata line included.
    files.put(
        "/list.txt",
        "{\"cidr\":\"127.0.15.0/24\",\"sblid\":\"SBL000003\",\"rir\":\"ripencc\"}\n\
         {\"type\":\"metadata\",\"timestamp\":1796600000,\"size\":1,\"records\":1}\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let feeds = format!(
        "[[feeds]]\nname = \"tls\"\nurl = \"https://{server}/list.txt\"\nformat = \"spamhaus-json\"\nca_file = \"{}\"\n\
         interval = \"1s\"\n\n\
         [[feeds]]\nname = \"untrusted\"\nurl = \"https://{server}/list.txt\"\ninterval = \"1s\"\n",
        certs.cert.display()
    );
    let gw = start(dir.path(), &feeds).await;
    until_refused("127.0.15.1", gw.front, true).await;
    // The same server is no one the system's roots vouch for.
    until_metric(
        gw.admin,
        "gatehouse_feed_failures_total{feed=\"untrusted\",reason=\"fetch\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(gw.admin, "gatehouse_feed_entries{feed=\"untrusted\"}").await,
        0.0
    );
    assert_eq!(readyz_feed(gw.admin, "untrusted").await["state"], "stale");
    gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_list_is_asked_for_with_its_etag_and_not_downloaded_again() {
    let (server, files) = files::serve().await;
    files.put("/list.txt", "127.0.16.0/24\n");
    let dir = tempfile::tempdir().unwrap();
    let feeds = format!("[[feeds]]\nname = \"etag\"\nurl = \"http://{server}/list.txt\"\ninterval = \"1s\"\n");
    let gw = start(dir.path(), &feeds).await;
    until_refused("127.0.16.1", gw.front, true).await;
    let asked = within(Duration::from_secs(10), async || files.not_modified() >= 2).await;
    assert!(asked.is_some(), "no conditional request answered 304");
    assert_eq!(files.bodies(), 1, "the unchanged list was downloaded again");
    assert_eq!(metric(gw.admin, "gatehouse_feed_stale{feed=\"etag\"}").await, 0.0);
    // A change is fetched whole (the ETag no longer matches).
    files.put("/list.txt", "127.0.17.0/24\n");
    until_refused("127.0.17.1", gw.front, true).await;
    assert_eq!(files.bodies(), 2);
    gw.running.shutdown().await;
}
