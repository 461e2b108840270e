//! CrowdSec against a real Local API (Debian package `crowdsec`, started on a free loopback port with its
//! own configuration and SQLite database): a `cscli decisions add` ban refuses the client at the gateway
//! within the poll interval, other decision types do not, `cscli decisions delete` readmits it; and a
//! ban the gateway makes by itself shows in `cscli alerts list`, and lifting it here deletes its decision.

use crate::support::clients::{admin_get, http, sample};
use crate::support::crowdsec::Lapi;
use crate::support::net::{self, is_refused, within};
use crate::support::{backends, gateway};
use gatehouse::admin::AdminListen;
use gatehouse::Running;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "crowdsec-token-0123456789abcdef";

/// A gateway with the admin API, `crowdsec` (the `[crowdsec]` table) and one front: an Electrum front
/// that bans at the first garbage line (`electrum`), else a relay to an echo server (where the probes'
/// bytes are no violation).
async fn start(dir: &Path, crowdsec: &str, electrum: bool) -> (Running, SocketAddr, SocketAddr) {
    let front = if electrum {
        let backend = backends::stub_backend(&[]).await;
        format!(
            "[[front]]\nname = \"gw\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\n\
             upstreams = [\"{backend}\"]\n"
        )
    } else {
        gateway::tcp_front("gw", backends::echo_backend().await, "")
    };
    std::fs::write(dir.join("admin.token"), TOKEN).unwrap();
    let toml = format!(
        "{}[bans]\nmax_violations = 0\n\n\
         [admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n{crowdsec}\n\n{front}",
        gateway::RELAXED
    );
    let running = gateway::start_in(dir, &toml).await;
    let admin = match running.admin_addr() {
        Some(AdminListen::Tcp(a)) => *a,
        other => panic!("admin API not on TCP: {other:?}"),
    };
    let front = running.addr("gw");
    (running, admin, front)
}

/// How long a refusal may take to follow a decision: one poll (1 s) and some slack for a loaded machine.
const WITHIN: Duration = Duration::from_secs(10);

async fn until_refused(from: &str, front: SocketAddr, refused: bool) -> Duration {
    within(WITHIN, async || is_refused(from, front).await == refused)
        .await
        .unwrap_or_else(|| panic!("{from}: refused = {} after {WITHIN:?}", !refused))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bouncer_mode_enforces_ban_decisions_and_drops_deleted_ones() {
    let lapi = tokio::task::spawn_blocking(Lapi::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    lapi.bouncer_key("gatehouse", &dir.path().join("bouncer.key"));
    let url = lapi.url();
    // One decision exists before the gateway starts: the first (startup) poll brings it.
    lapi.cscli(&["decisions", "add", "--ip", "127.0.12.1", "--duration", "1h"]);
    let (running, admin, front) = start(
        dir.path(),
        &format!("[crowdsec]\nurl = \"{url}\"\napi_key_file = \"bouncer.key\"\npoll_interval = \"1s\""),
        false,
    )
    .await;
    until_refused("127.0.12.1", front, true).await;
    assert!(!is_refused("127.0.12.2", front).await);

    // Deltas: a new ban, a range ban, and a captcha (ignored at a TCP gateway).
    let lapi = std::sync::Arc::new(lapi);
    let l = lapi.clone();
    tokio::task::spawn_blocking(move || {
        l.cscli(&["decisions", "add", "--ip", "127.0.12.2", "--duration", "1h"]);
        l.cscli(&["decisions", "add", "--range", "127.0.13.0/24", "--duration", "1h"]);
        l.cscli(&[
            "decisions",
            "add",
            "--ip",
            "127.0.12.3",
            "--type",
            "captcha",
            "--duration",
            "1h",
        ]);
    })
    .await
    .unwrap();
    let added = gateway::now_ms() as f64 / 1000.0;
    let took = until_refused("127.0.12.2", front, true).await;
    // The three may reach the gateway in different polls; the captcha was added last.
    until_refused("127.0.13.77", front, true).await;
    // A poll that finished two seconds after the last cscli call has seen all three.
    let polled = within(WITHIN, async || {
        let text = admin_get(admin, TOKEN, "/metrics").await;
        sample(
            &text,
            "gatehouse_feed_last_success_timestamp_seconds{feed=\"crowdsec\"}",
        )
        .unwrap_or(0.0)
            >= added + 2.0
    })
    .await;
    assert!(polled.is_some(), "no poll after the decisions were added");
    assert!(
        !is_refused("127.0.12.3", front).await,
        "a captcha decision refused the client"
    );
    let text = admin_get(admin, TOKEN, "/metrics").await;
    assert_eq!(
        sample(&text, "gatehouse_feed_entries{feed=\"crowdsec\"}"),
        Some(3.0),
        "{text}"
    );
    assert!(
        sample(&text, "gatehouse_feed_refusals_total{feed=\"crowdsec\"}").unwrap() >= 3.0,
        "{text}"
    );

    let l = lapi.clone();
    tokio::task::spawn_blocking(move || l.cscli(&["decisions", "delete", "--ip", "127.0.12.2"]))
        .await
        .unwrap();
    until_refused("127.0.12.2", front, false).await;
    assert!(
        is_refused("127.0.12.1", front).await,
        "another decision was dropped with it"
    );
    let text = admin_get(admin, TOKEN, "/metrics").await;
    assert_eq!(
        sample(&text, "gatehouse_feed_entries{feed=\"crowdsec\"}"),
        Some(2.0),
        "{text}"
    );
    eprintln!("a new decision refused the client {took:?} after cscli returned");

    // The Local API goes away: the decisions last fetched stay in force, and the metrics say so.
    drop(std::sync::Arc::into_inner(lapi).expect("no cscli call left running"));
    let stale = within(WITHIN, async || {
        let text = admin_get(admin, TOKEN, "/metrics").await;
        sample(&text, "gatehouse_feed_stale{feed=\"crowdsec\"}") == Some(1.0)
            && sample(
                &text,
                "gatehouse_feed_failures_total{feed=\"crowdsec\",reason=\"fetch\"}",
            )
            .unwrap_or(0.0)
                >= 1.0
    })
    .await;
    let text = admin_get(admin, TOKEN, "/metrics").await;
    assert!(stale.is_some(), "no failed poll after the Local API stopped:\n{text}");
    assert!(
        is_refused("127.0.12.1", front).await,
        "the decisions were dropped with the Local API"
    );
    assert!(is_refused("127.0.13.5", front).await);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reporter_mode_pushes_automatic_bans_as_alerts_cscli_lists() {
    let lapi = std::sync::Arc::new(tokio::task::spawn_blocking(Lapi::start).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    lapi.machine(
        "gatehouse-edge",
        "reporter-password-0123",
        &dir.path().join("machine.password"),
    );
    let url = lapi.url();
    let (running, admin, front) = start(
        dir.path(),
        &format!(
            "[crowdsec]\nurl = \"{url}\"\nmachine_id = \"gatehouse-edge\"\npassword_file = \"machine.password\"\n\
             poll_interval = \"1s\""
        ),
        true,
    )
    .await;
    // A protocol violation: the gateway bans the address by itself.
    let mut s = net::connect_from("127.0.14.9", front).await.unwrap();
    s.write_all(b"this is not json\n").await.unwrap();
    net::closed_within(&mut s, Duration::from_secs(10)).await;
    assert!(is_refused("127.0.14.9", front).await);

    let l = lapi.clone();
    let listed = within(Duration::from_secs(20), async || {
        let l = l.clone();
        let out = tokio::task::spawn_blocking(move || l.cscli(&["alerts", "list", "-o", "json"]))
            .await
            .unwrap();
        let alerts: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
        alerts.as_array().is_some_and(|a| {
            a.iter().any(|x| {
                x["source"]["value"] == "127.0.14.9"
                    && x["machine_id"] == "gatehouse-edge"
                    && x["scenario"] == "gatehouse/automatic-ban"
            })
        })
    })
    .await;
    let out = lapi.cscli(&["alerts", "list", "-o", "json"]);
    assert!(listed.is_some(), "the ban is not in cscli alerts list:\n{out}");
    assert!(decided(&lapi, "127.0.14.9").await, "no decision came with the alert");
    let text = admin_get(admin, TOKEN, "/metrics").await;
    assert_eq!(
        sample(&text, "gatehouse_crowdsec_alerts_total{result=\"pushed\"}"),
        Some(1.0),
        "{text}"
    );

    // The operator lifts the ban here: the decision the alert made goes too (and only that one).
    let l = lapi.clone();
    tokio::task::spawn_blocking(move || l.cscli(&["decisions", "add", "--ip", "127.0.14.9", "--duration", "1h"]))
        .await
        .unwrap();
    let auth = format!("Bearer {TOKEN}");
    let (status, v) = http(admin, "DELETE", "/v1/bans/127.0.14.9%2F32", Some(&auth), None).await;
    assert_eq!(status, 200, "{v}");
    let gone = within(Duration::from_secs(20), async || {
        let l = lapi.clone();
        let out = tokio::task::spawn_blocking(move || l.cscli(&["decisions", "list", "-o", "json"]))
            .await
            .unwrap();
        !out.contains("gatehouse/automatic-ban")
    })
    .await;
    let out = lapi.cscli(&["decisions", "list", "-o", "json"]);
    assert!(gone.is_some(), "the lifted ban's decision is still there:\n{out}");
    assert!(
        decided(&lapi, "127.0.14.9").await,
        "the operator's own cscli decision went too"
    );
    let text = admin_get(admin, TOKEN, "/metrics").await;
    assert_eq!(
        sample(&text, "gatehouse_crowdsec_alerts_total{result=\"lifted\"}"),
        Some(1.0),
        "{text}"
    );
    running.shutdown().await;
}

/// Whether `cscli decisions list` shows a decision on `ip`.
async fn decided(lapi: &std::sync::Arc<Lapi>, ip: &str) -> bool {
    let l = lapi.clone();
    let out = tokio::task::spawn_blocking(move || l.cscli(&["decisions", "list", "-o", "json"]))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    v.as_array().is_some_and(|alerts| {
        alerts
            .iter()
            .flat_map(|a| a["decisions"].as_array().into_iter().flatten())
            .any(|d| d["value"] == ip)
    })
}
