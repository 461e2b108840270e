//! Trusted tiers end to end: a tier network gets its multiple of the cost budget (still throttled, still cut
//! at its own hard limit) and of the connection caps and connect rate, in a group of its own, while a
//! stranger of the same /24 gets exactly what it got before; `bans = "never"` spares the tier's address
//! the automatic ban (and its /24 the escalation) while the stranger is banned; an API front credential
//! carries its tier's multiplier; metrics name the tier; a reload applies tier changes to new sessions.

use crate::admission::{admitted, refused};
use crate::support::clients::{sample, Client};
use crate::support::cost::config;
use crate::support::gateway::{self, RELAXED};
use crate::support::net::{self, ip};
use crate::support::{backends, bitcoind::Bitcoind};
use gatehouse::config::Config;
use gatehouse::guard::Refusal;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// `[cost]` of [`config`]: soft and hard limit strangers get.
const SOFT: f64 = 1000.0;
const HARD: f64 = 10000.0;
/// What one `blockchain.estimatefee` costs in these tests: more than a stranger's whole hard limit, about a
/// twentieth of the tier's.
const FEE_COST: f64 = 10300.0;
const MAX_SLEEP: f64 = 2.5;

/// The `[cost.methods]` line that prices estimatefee at [`FEE_COST`].
fn fee_method() -> String {
    format!("\"blockchain.estimatefee\" = {FEE_COST}")
}

fn metric(series: &str) -> f64 {
    sample(&gatehouse::telemetry::metrics::render(None), series).unwrap_or(0.0)
}

/// Calls estimatefee until a reply is -101; returns the 1-based index of that request and the latency of
/// each served one.
async fn until_101(c: &mut Client, limit: usize) -> (usize, Vec<(f64, Duration)>) {
    let mut served = Vec::new();
    for n in 1..=limit {
        let t = Instant::now();
        let r = c.call("blockchain.estimatefee", "[6]", FEE_COST).await;
        if r.error_code() == Some(-101) {
            return (n, served);
        }
        assert!(r.v.get("error").is_none(), "request {n}: {}", r.v);
        served.push((c.modelled(), r.at - t));
    }
    panic!("no -101 within {limit} requests");
}

/// 20× the budget: the tier's /32 is served 20 requests of 10,300 units where a stranger of its /24 is
/// served one. Hand-computed: a request is refused once the cost before it (connection 5, server.version
/// 0.5, bytes) has reached the hard limit. Stranger: 5.5 + 10,300 ≥ 10,000 after request 1, so request 2
/// gets -101. Tier (soft 20,000, hard 200,000): after 19 requests 5.5 + 19 × 10,300 ≈ 195,706 < 200,000
/// (decay only lowers it), after 20 ≈ 206,006 minus at most 20 × 2.5 s × 20 units/s of decay ≥ 200,000,
/// so request 21 gets -101. From its second request on (over 20,000) each reply of the tier is delayed by
/// frac × 2.5 s, frac = (cost − 20,000) / 180,000.
#[tokio::test(start_paused = true)]
async fn a_tier_gets_twenty_times_the_budget_is_still_throttled_and_cut_at_its_own_hard_limit() {
    let backend = backends::stub_backend(&[]).await;
    let toml = format!(
        "{}[[tier]]\nname = \"budget20\"\nnetworks = [\"127.0.0.2/32\"]\ncost = 20\n",
        config(backend, "", &fee_method(), "\"127.0.0.1:0\"", "")
    );
    let running = gateway::start(&toml).await;
    let to = running.addr("electrum");

    // The stranger first: its budget is untouched by the tier sitting in its /24.
    let mut stranger = Client::open("127.0.0.3", to).await;
    let (cut, _) = until_101(&mut stranger, 5).await;
    assert_eq!(cut, 2, "a stranger of the tier's /24 got more than its own budget");
    assert!(
        running.guard().bans().lookup(ip("127.0.0.3")).is_some(),
        "stranger not banned"
    );

    let mut tier = Client::open("127.0.0.2", to).await;
    let (cut, served) = until_101(&mut tier, 40).await;
    assert_eq!(cut, 21, "the tier's hard limit is not 20 × {HARD}");
    for (i, (modelled, lat)) in served.iter().enumerate() {
        let frac = ((modelled - 20.0 * SOFT) / (20.0 * (HARD - SOFT))).clamp(0.0, 1.0);
        let expected = frac * MAX_SLEEP;
        if i == 0 {
            assert_eq!(*lat, Duration::ZERO, "request 1 delayed below the tier's soft limit");
        } else {
            assert!(*lat > Duration::ZERO, "request {} not throttled", i + 1);
            assert!(
                (lat.as_secs_f64() - expected).abs() < 0.03,
                "request {}: latency {lat:?}, expected frac {frac:.4} × 2.5 s = {expected:.3} s",
                i + 1
            );
        }
    }
    tier.closed_after_101().await;
    // Protection stays on: the tier's address is banned like anyone's (its bans are "auto").
    assert!(
        running.guard().bans().lookup(ip("127.0.0.2")).is_some(),
        "tier not banned"
    );
    assert_eq!(metric("gatehouse_tier_sessions_total{tier=\"budget20\"}"), 1.0);
    assert_eq!(
        metric("gatehouse_tier_hard_limit_disconnects_total{tier=\"budget20\"}"),
        1.0
    );
}

/// `bans = "never"`: the tier's address is cut at its hard limit but not banned, and comes back at once;
/// two strangers of its /24 are banned, and the escalation that would ban the /24 (and so the tier) after
/// two is not made.
#[tokio::test(start_paused = true)]
async fn bans_never_keeps_a_tier_address_unbanned_while_strangers_are_banned() {
    let backend = backends::stub_backend(&[]).await;
    let toml = format!(
        "[bans]\nescalate_after = 2\n{}[[tier]]\nname = \"spared\"\nnetworks = [\"127.0.0.2/32\"]\nbans = \"never\"\n",
        config(backend, "", &fee_method(), "\"127.0.0.1:0\"", "")
    );
    let running = gateway::start(&toml).await;
    let to = running.addr("electrum");
    let bans = running.guard().bans();

    let mut tier = Client::open("127.0.0.2", to).await;
    assert_eq!(until_101(&mut tier, 5).await.0, 2, "the tier's budget is 1× here");
    tier.closed_after_101().await;
    assert!(
        bans.lookup(ip("127.0.0.2")).is_none(),
        "tier with bans = \"never\" was banned"
    );
    assert_eq!(metric("gatehouse_tier_bans_spared_total{tier=\"spared\"}"), 1.0);

    // Two strangers of the /24: the first spends the group's budget, the second finds it spent (its group
    // kept the first one's cost); both are cut and banned.
    let mut first = Client::open("127.0.0.3", to).await;
    assert_eq!(until_101(&mut first, 5).await.0, 2);
    first.closed_after_101().await;
    let mut second = Client::connect("127.0.0.4", to).await;
    let r = second.call("server.version", r#"["t", "1.4"]"#, 0.5).await;
    assert_eq!(r.error_code(), Some(-101), "{}", r.v);
    second.closed_after_101().await;
    for stranger in ["127.0.0.3", "127.0.0.4"] {
        assert!(bans.lookup(ip(stranger)).is_some(), "{stranger} not banned");
        assert!(net::is_refused(stranger, to).await, "{stranger} admitted while banned");
    }
    // escalate_after = 2 would now ban the /24, which holds the tier: not done.
    assert!(!bans.is_banned(ip("127.0.0.2")), "the /24 escalation covers the tier");
    assert!(bans.lookup(ip("127.0.0.9")).is_none(), "the /24 was banned");

    // Refusals still apply to the tier: it is admitted, finds its group's retained cost over its hard
    // limit, is cut again, and is still not banned.
    let mut again = Client::connect("127.0.0.2", to).await;
    let r = again.call("server.version", r#"["t", "1.4"]"#, 0.5).await;
    assert_eq!(r.error_code(), Some(-101), "{}", r.v);
    again.closed_after_101().await;
    assert!(!bans.is_banned(ip("127.0.0.2")));
    assert_eq!(metric("gatehouse_tier_bans_spared_total{tier=\"spared\"}"), 2.0);
}

fn caps_config(backend: std::net::SocketAddr, tier: &str) -> String {
    format!(
        "[admission]\nmax_connections_per_ip = 2\nmax_connections_per_group = 3\n\
         connect_rate_per_ip = \"100000/s\"\nconnect_burst_per_ip = 100000\n\n{}{tier}",
        gateway::tcp_front("f", backend, "")
    )
}

const CAPS_TIER: &str = "[[tier]]\nname = \"caps\"\nnetworks = [\"127.0.0.16/30\"]\n\
                         connections_per_ip = 3\nconnections_per_group = 3\n";

/// Caps ×3: per IP 2 → 6 and per group 3 → 9, the group being the tier network 127.0.0.16/30 and not the
/// /24; strangers of the same /24 keep 2 and 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_gets_multiplied_connection_caps_in_a_group_of_its_own() {
    let up = backends::echo_backend().await;
    let running = gateway::start(&caps_config(up, CAPS_TIER)).await;
    let to = running.addr("f");
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(admitted("127.0.0.16", to).await);
    }
    refused(&running, "127.0.0.16", to, Refusal::PerIpCap).await;
    for _ in 0..3 {
        held.push(admitted("127.0.0.17", to).await);
    }
    refused(&running, "127.0.0.17", to, Refusal::PerGroupCap).await;
    // Nine tier connections in the /24, and the strangers' group is still empty: it takes its own 3.
    for _ in 0..2 {
        held.push(admitted("127.0.0.3", to).await);
    }
    refused(&running, "127.0.0.3", to, Refusal::PerIpCap).await;
    held.push(admitted("127.0.0.4", to).await);
    refused(&running, "127.0.0.5", to, Refusal::PerGroupCap).await;
}

/// Connect rate ×4: a burst of 3 becomes 12 for the tier's address, while a stranger of its /24 keeps 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_gets_a_multiplied_connect_rate() {
    let up = backends::echo_backend().await;
    let toml = format!(
        "[admission]\nmax_connections_per_ip = 1000\nmax_connections_per_group = 1000\n\
         connect_rate_per_ip = \"1/min\"\nconnect_burst_per_ip = 3\n\n{}\
         [[tier]]\nname = \"rate4\"\nnetworks = [\"127.0.0.2/32\"]\nconnect_rate = 4\n",
        gateway::tcp_front("f", up, "")
    );
    let running = gateway::start(&toml).await;
    let to = running.addr("f");
    for _ in 0..12 {
        drop(admitted("127.0.0.2", to).await);
    }
    refused(&running, "127.0.0.2", to, Refusal::IpRate).await;
    for _ in 0..3 {
        drop(admitted("127.0.0.3", to).await);
    }
    refused(&running, "127.0.0.3", to, Refusal::IpRate).await;
}

/// A reload that adds a tier applies to the next connection: the address refused at its cap before is
/// admitted up to the tier's multiple after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_tier_changes_to_new_connections() {
    let up = backends::echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let mut running = gateway::start_in(dir.path(), &caps_config(up, "")).await;
    let to = running.addr("f");
    let mut held = vec![admitted("127.0.0.16", to).await, admitted("127.0.0.16", to).await];
    refused(&running, "127.0.0.16", to, Refusal::PerIpCap).await;
    let cfg = Config::parse(&caps_config(up, CAPS_TIER), &dir.path().join("gatehouse.toml")).unwrap();
    running.reload(cfg).await.unwrap();
    for _ in 0..4 {
        held.push(admitted("127.0.0.16", to).await);
    }
    refused(&running, "127.0.0.16", to, Refusal::PerIpCap).await;
}

/// An API front credential in a tier: alice (tier `partner`, cost ×3) is served 10 calls of 100 where bob,
/// with the same password and no tier, is served 3 (hard limit 350: refused once a call takes the
/// account to it; ×3 = 1050). Each client comes from its own address, so neither's ban touches the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_credential_in_a_tier_gets_its_multiplier() {
    const RPCAUTH: &str = "f00d$a9f3bf0bc92f82bedd4ece5ea48898c48216629383a097fa1c913ea8b26af042";
    let node = Bitcoind::start(&[]).await;
    node.mine(1).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("node.password");
    std::fs::write(&pw, format!("{}\n", crate::support::bitcoind::RPC_PASSWORD)).unwrap();
    let users: String = ["alice", "bob"]
        .iter()
        .map(|u| {
            format!("[[front.api.users]]\nname = \"{u}\"\nrpcauth = \"{RPCAUTH}\"\nmethods = [\"gettxoutsetinfo\"]\n")
        })
        .collect();
    let api = format!(
        "[front.api]\nprofile = \"bitcoind\"\nbackend_user = \"{}\"\nbackend_password_file = \"{}\"\n\
         [front.api.method_costs]\ngettxoutsetinfo = 100\n{users}",
        crate::support::bitcoind::RPC_USER,
        pw.display()
    );
    let toml = format!(
        "{RELAXED}[cost]\nsoft_limit = 300\nhard_limit = 350\nconnection_cost = 0\n\n{}\
         [[tier]]\nname = \"partner\"\ncredentials = [\"alice\"]\ncost = 3\n",
        gateway::front("api", "rpc", "127.0.0.1:0", "tcp", &[node.rpc], &api)
    );
    let running = gateway::start(&toml).await;
    let front = running.addr("rpc");
    assert_eq!(statuses("127.0.0.2", front, "alice", 12).await, served_then_503(10));
    assert_eq!(statuses("127.0.0.3", front, "bob", 5).await, served_then_503(3));
    assert!(running.guard().bans().lookup(ip("127.0.0.3")).is_some());
    assert_eq!(
        metric("gatehouse_tier_hard_limit_disconnects_total{tier=\"partner\"}"),
        1.0
    );
}

fn served_then_503(n: usize) -> Vec<u16> {
    let mut v = vec![200; n];
    v.push(503);
    v
}

/// `n` pipelined gettxoutsetinfo calls as `user` from `from` on one connection; the statuses answered
/// before the gateway closed it.
async fn statuses(from: &str, front: std::net::SocketAddr, user: &str, n: usize) -> Vec<u16> {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:wonderland"));
    let body = r#"{"id":1,"method":"gettxoutsetinfo"}"#;
    let one = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = net::connect_from(from, front).await.unwrap();
    s.write_all(one.repeat(n).as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(read.is_ok(), "still open after 30 s: {text}");
    text.lines()
        .filter_map(|l| l.strip_prefix("HTTP/1.1 "))
        .map(|l| l[..3].parse().unwrap())
        .collect()
}

/// Subscribes to the `i`-th made-up scripthash; true if the gateway accepted it.
async fn subscribe(c: &mut Client, i: u32) -> bool {
    let r = c
        .call("blockchain.scripthash.subscribe", &format!("[\"{i:064x}\"]"), 0.0)
        .await;
    match r.v.get("error") {
        None => true,
        Some(e) => {
            assert!(e["message"].as_str().unwrap_or("").contains("subscriptions"), "{}", r.v);
            false
        }
    }
}

/// Subscriptions ×3: per session 2 → 6, per group 3 → 9 in the tier's own group; the strangers of its /24
/// keep 2 per session and 3 for their group, none of which the tier's 6 took.
#[tokio::test(start_paused = true)]
async fn a_tier_gets_multiplied_subscription_caps() {
    let backend = backends::stub_backend(&[]).await;
    let toml = format!(
        "{}[[tier]]\nname = \"subs3\"\nnetworks = [\"127.0.0.2/32\"]\nsubscriptions = 3\n",
        config(
            backend,
            "max_subscriptions_per_group = 3",
            "",
            "\"127.0.0.1:0\"",
            "[front.electrum]\nmax_subscriptions = 2\n"
        )
    );
    let running = gateway::start(&toml).await;
    let to = running.addr("electrum");
    let mut tier = Client::open("127.0.0.2", to).await;
    for i in 0..6 {
        assert!(subscribe(&mut tier, i).await, "tier subscription {}", i + 1);
    }
    assert!(!subscribe(&mut tier, 6).await, "tier's 7th subscription accepted");
    let mut a = Client::open("127.0.0.3", to).await;
    assert!(subscribe(&mut a, 100).await && subscribe(&mut a, 101).await);
    assert!(!subscribe(&mut a, 102).await, "stranger's 3rd subscription accepted");
    let mut b = Client::open("127.0.0.4", to).await;
    assert!(
        subscribe(&mut b, 200).await,
        "the /24's group cap counted the tier's subscriptions"
    );
    assert!(!subscribe(&mut b, 201).await, "the /24's 4th subscription accepted");
}
