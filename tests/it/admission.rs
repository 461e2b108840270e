//! Admission through the real gateway: allow/deny lists (inline and from files), allowlist-only mode,
//! connection caps (per IP, per group, total), connection-rate limits and IPv4-mapped addresses.
//!
//! Every refusal is checked twice: from the client (closed without a byte) and on the guard's counter
//! for the expected reason, so a test cannot pass because the connection died for some other cause.

use crate::support::gateway::{counters, plus, tcp_front_at, RELAXED};
use crate::support::{backends, gateway, net};
use gatehouse::guard::Refusal;
use gatehouse::Running;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpStream;

/// Connects from `from` and checks the session works end to end; returns it still open.
pub(crate) async fn admitted(from: &str, to: SocketAddr) -> TcpStream {
    let mut s = net::connect_from(from, to)
        .await
        .unwrap_or_else(|e| panic!("{from}: connect to {to}: {e}"));
    assert!(net::echoes(&mut s).await, "{from} should be admitted by {to}");
    s
}

/// Checks `from` is refused by `to` for `reason`, and that this refusal is the only one counted.
pub(crate) async fn refused(running: &Running, from: &str, to: SocketAddr, reason: Refusal) {
    let before = counters(running);
    assert!(net::is_refused(from, to).await, "{from} should be refused ({reason})");
    assert_eq!(
        counters(running),
        plus(&before, reason, 1),
        "{from}: refusal counters (order {:?})",
        Refusal::ALL
    );
}

/// Retries a connection from `from` a bounded number of times until it is admitted, for slots the
/// gateway frees only once it has noticed a client's close.
async fn admitted_eventually(from: &str, to: SocketAddr) -> TcpStream {
    for _ in 0..100 {
        let mut s = net::connect_from(from, to).await.unwrap();
        if net::echoes(&mut s).await {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{from} never admitted again by {to}");
}

fn front(extra: &str, upstream: SocketAddr) -> String {
    format!("{RELAXED}{}", gateway::tcp_front("f", upstream, extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_deny_refuses_listed_address_only() {
    let up = backends::echo_backend().await;
    let running = gateway::start(&front("[front.admission]\ndeny = [\"127.0.0.2/32\"]", up)).await;
    let to = running.addr("f");
    refused(&running, "127.0.0.2", to, Refusal::Denied).await;
    let _ok = admitted("127.0.0.3", to).await;
    refused(&running, "127.0.0.2", to, Refusal::Denied).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_deny_refuses_on_every_front() {
    let up = backends::echo_backend().await;
    // RELAXED opens the [admission] table; the deny key joins it.
    let toml = format!(
        "{RELAXED}deny = [\"127.0.0.2/32\"]\n{}{}",
        gateway::tcp_front("a", up, ""),
        tcp_front_at("b", "127.0.0.10:0", up, "")
    );
    let running = gateway::start(&toml).await;
    for f in ["a", "b"] {
        let to = running.addr(f);
        refused(&running, "127.0.0.2", to, Refusal::Denied).await;
        let _ok = admitted("127.0.0.3", to).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_of_a_network_covers_its_addresses() {
    let up = backends::echo_backend().await;
    let running = gateway::start(&front("[front.admission]\ndeny = [\"127.0.0.0/24\"]", up)).await;
    let to = running.addr("f");
    refused(&running, "127.0.0.2", to, Refusal::Denied).await;
    refused(&running, "127.0.0.77", to, Refusal::Denied).await;
    let _ok = admitted("127.0.1.2", to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_only_admits_listed_v4_and_v6() {
    let up = backends::echo_backend().await;
    let toml = format!(
        "{RELAXED}[[front]]\nname = \"f\"\nkind = \"peer\"\nlisten = [\"127.0.0.1:0\", \"[::1]:0\"]\n\
         transport = \"tcp\"\nupstreams = [\"{up}\"]\n\
         [front.admission]\nallowlist_only = true\nallow = [\"127.0.0.3/32\", \"::1/128\"]\n"
    );
    let running = gateway::start(&toml).await;
    let addrs = running.addrs("f");
    assert_eq!(addrs.len(), 2);
    let v4 = *addrs.iter().find(|a| a.is_ipv4()).unwrap();
    let v6 = *addrs.iter().find(|a| a.is_ipv6()).unwrap();
    refused(&running, "127.0.0.2", v4, Refusal::NotAllowlisted).await;
    let _a = admitted("127.0.0.3", v4).await;
    let _b = admitted("::1", v6).await;
    refused(&running, "127.0.0.4", v4, Refusal::NotAllowlisted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_allowlist_only_applies_to_every_front() {
    let up = backends::echo_backend().await;
    let toml = format!(
        "{RELAXED}allowlist_only = true\nallow = [\"127.0.0.3/32\"]\n{}{}",
        gateway::tcp_front("a", up, ""),
        tcp_front_at("b", "127.0.0.10:0", up, "")
    );
    let running = gateway::start(&toml).await;
    for f in ["a", "b"] {
        let to = running.addr(f);
        refused(&running, "127.0.0.2", to, Refusal::NotAllowlisted).await;
        let _ok = admitted("127.0.0.3", to).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_without_allowlist_only_does_not_restrict() {
    let up = backends::echo_backend().await;
    let running = gateway::start(&front("[front.admission]\nallow = [\"127.0.0.3/32\"]", up)).await;
    let to = running.addr("f");
    let before = counters(&running);
    let _a = admitted("127.0.0.2", to).await;
    let _b = admitted("127.0.0.3", to).await;
    assert_eq!(counters(&running), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_beats_allow() {
    let up = backends::echo_backend().await;
    // Same front, both lists match 127.0.0.2; the allow entry is even the more specific one.
    let running = gateway::start(&front(
        "[front.admission]\nallowlist_only = true\nallow = [\"127.0.0.0/24\", \"127.0.0.2/32\"]\n\
         deny = [\"127.0.0.2/32\", \"127.0.0.4/30\"]",
        up,
    ))
    .await;
    let to = running.addr("f");
    refused(&running, "127.0.0.2", to, Refusal::Denied).await;
    refused(&running, "127.0.0.5", to, Refusal::Denied).await;
    let _ok = admitted("127.0.0.3", to).await;
    refused(&running, "127.0.1.2", to, Refusal::NotAllowlisted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_beats_allow_across_levels() {
    let up = backends::echo_backend().await;
    // Global allow vs front deny, and global deny vs front allow.
    let toml = format!(
        "{RELAXED}allow = [\"127.0.0.2/32\"]\ndeny = [\"127.0.0.3/32\"]\n{}",
        gateway::tcp_front(
            "f",
            up,
            "[front.admission]\ndeny = [\"127.0.0.2/32\"]\nallow = [\"127.0.0.3/32\"]"
        )
    );
    let running = gateway::start(&toml).await;
    let to = running.addr("f");
    refused(&running, "127.0.0.2", to, Refusal::Denied).await;
    refused(&running, "127.0.0.3", to, Refusal::Denied).await;
    let _ok = admitted("127.0.0.4", to).await;
}

/// A deny list of `n` distinct /32s in 10.0.0.0/8, with comments of every kind, plus 127.0.0.2/32.
fn big_deny_list(n: u32) -> String {
    let mut text = String::with_capacity(n as usize * 16 + 256);
    text.push_str("# generated deny list\n\n   # indented comment\n");
    for i in 0..n {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000u32 + i + 1);
        if i % 1000 == 0 {
            text.push_str(&format!("{ip}/32   # trailing comment {i}\n"));
        } else {
            text.push_str(&format!("{ip}/32\n"));
        }
    }
    text.push_str("\n127.0.0.2/32 # the test client\n# end\n");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_file_with_100k_entries_loads_and_applies() {
    let up = backends::echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lists")).unwrap();
    std::fs::write(dir.path().join("lists/deny.txt"), big_deny_list(100_000)).unwrap();
    // Relative to the config file's folder.
    let toml = front("[front.admission]\ndeny_files = [\"lists/deny.txt\"]", up);
    let running = gateway::start_in(dir.path(), &toml).await;
    assert_eq!(running.front("f").unwrap().cfg.admission.deny.len(), 100_001);
    let to = running.addr("f");
    refused(&running, "127.0.0.2", to, Refusal::Denied).await;
    let _ok = admitted("127.0.0.3", to).await;
    // Entries from the file's middle and end are in force too (checked without a socket: 10/8 is not local).
    let level = running.front("f").unwrap().level.clone();
    for ip in ["10.0.0.1", "10.0.195.80", "10.1.134.160"] {
        assert_eq!(
            running.guard().admit(&level, ip.parse().unwrap()).err(),
            Some(Refusal::Denied),
            "{ip}"
        );
    }
    assert!(running.guard().admit(&level, "10.1.134.161".parse().unwrap()).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_deny_file_applies() {
    let up = backends::echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deny.txt"),
        "# ops list\n127.0.0.2 # bare address = /32\n",
    )
    .unwrap();
    let toml = format!(
        "{RELAXED}deny_files = [\"deny.txt\"]\n{}",
        gateway::tcp_front("f", up, "")
    );
    let running = gateway::start_in(dir.path(), &toml).await;
    let to = running.addr("f");
    refused(&running, "127.0.0.2", to, Refusal::Denied).await;
    let _ok = admitted("127.0.0.3", to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_file_with_allowlist_only() {
    let up = backends::echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("allow.txt"),
        "# trusted peers\n\n127.0.0.3/32   # peer A\n  ::1/128\n192.0.2.0/24#no space\n",
    )
    .unwrap();
    let toml = front(
        "[front.admission]\nallowlist_only = true\nallow_files = [\"allow.txt\"]",
        up,
    );
    let running = gateway::start_in(dir.path(), &toml).await;
    let to = running.addr("f");
    refused(&running, "127.0.0.2", to, Refusal::NotAllowlisted).await;
    let _ok = admitted("127.0.0.3", to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_cap_refuses_beyond_cap_and_frees_on_close() {
    let up = backends::echo_backend().await;
    let running = gateway::start(&front("[front.admission]\nmax_connections_per_ip = 2", up)).await;
    let to = running.addr("f");
    let first = admitted("127.0.0.2", to).await;
    let mut second = admitted("127.0.0.2", to).await;
    refused(&running, "127.0.0.2", to, Refusal::PerIpCap).await;
    let mut other = admitted("127.0.0.3", to).await;
    // The sessions that hold the slots still work.
    assert!(net::echoes(&mut second).await);
    assert!(net::echoes(&mut other).await);
    drop(first);
    let mut again = admitted_eventually("127.0.0.2", to).await;
    assert!(net::echoes(&mut again).await);
    // Full again: the freed slot was taken, not the cap reset.
    refused(&running, "127.0.0.2", to, Refusal::PerIpCap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_per_ip_cap_default_is_32() {
    let up = backends::echo_backend().await;
    // Defaults everywhere except the rate, so 33 quick connects are not refused by the connect rate.
    let toml = format!(
        "[admission]\nconnect_rate_per_ip = \"100000/s\"\nconnect_burst_per_ip = 100000\n\n{}",
        gateway::tcp_front("f", up, "")
    );
    let running = gateway::start(&toml).await;
    let to = running.addr("f");
    let mut held = Vec::new();
    for _ in 0..32 {
        held.push(admitted("127.0.0.2", to).await);
    }
    refused(&running, "127.0.0.2", to, Refusal::PerIpCap).await;
    let _ok = admitted("127.0.0.3", to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_group_cap_counts_the_v4_prefix() {
    let up = backends::echo_backend().await;
    let running = gateway::start(&front(
        "[front.admission]\nmax_connections_per_group = 2\ngroup_prefix_v4 = 24",
        up,
    ))
    .await;
    let to = running.addr("f");
    let _a = admitted("127.0.0.2", to).await;
    let _b = admitted("127.0.0.3", to).await;
    refused(&running, "127.0.0.4", to, Refusal::PerGroupCap).await;
    refused(&running, "127.0.0.2", to, Refusal::PerGroupCap).await;
    let _c = admitted("127.0.1.2", to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_group_cap_follows_configured_prefix() {
    let up = backends::echo_backend().await;
    // A /16 group puts 127.0.0.x and 127.0.1.x together.
    let running = gateway::start(&front(
        "[front.admission]\nmax_connections_per_group = 2\ngroup_prefix_v4 = 16",
        up,
    ))
    .await;
    let to = running.addr("f");
    let _a = admitted("127.0.0.2", to).await;
    let _b = admitted("127.0.1.2", to).await;
    refused(&running, "127.0.2.2", to, Refusal::PerGroupCap).await;
    let _c = admitted("127.1.0.2", to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlisted_addresses_skip_group_cap_but_keep_ip_cap() {
    let up = backends::echo_backend().await;
    let running = gateway::start(&front(
        "[front.admission]\nmax_connections_per_group = 1\nmax_connections_per_ip = 2\nallow = [\"127.0.0.3/32\"]",
        up,
    ))
    .await;
    let to = running.addr("f");
    let _a = admitted("127.0.0.2", to).await;
    refused(&running, "127.0.0.4", to, Refusal::PerGroupCap).await;
    let _b = admitted("127.0.0.3", to).await;
    let _c = admitted("127.0.0.3", to).await;
    refused(&running, "127.0.0.3", to, Refusal::PerIpCap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_max_connections() {
    let up = backends::echo_backend().await;
    let toml = format!(
        "{RELAXED}{}{}",
        gateway::tcp_front("f", up, "[front.admission]\nmax_connections = 1"),
        tcp_front_at("g", "127.0.0.10:0", up, "")
    );
    let running = gateway::start(&toml).await;
    let to = running.addr("f");
    let first = admitted("127.0.0.2", to).await;
    refused(&running, "127.0.0.3", to, Refusal::MaxConnections).await;
    refused(&running, "127.0.0.2", to, Refusal::MaxConnections).await;
    // Another front has its own count.
    let _g = admitted("127.0.0.3", running.addr("g")).await;
    drop(first);
    let _again = admitted_eventually("127.0.0.3", to).await;
    refused(&running, "127.0.0.4", to, Refusal::MaxConnections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_connect_rate_with_burst() {
    let up = backends::echo_backend().await;
    let running = gateway::start(&front(
        "[front.admission]\nconnect_rate_per_ip = \"5/s\"\nconnect_burst_per_ip = 3",
        up,
    ))
    .await;
    let to = running.addr("f");
    let before = counters(&running);
    // Four connects back to back, well within one refill period (200 ms), then judge each.
    let mut socks = Vec::new();
    for _ in 0..4 {
        socks.push(net::connect_from("127.0.0.2", to).await.unwrap());
    }
    let mut fourth = socks.pop().unwrap();
    for s in &mut socks {
        assert!(net::echoes(s).await, "burst of 3 should be admitted");
    }
    let t = net::closed_within(&mut fourth, Duration::from_secs(5)).await;
    assert!(t < Duration::from_secs(5));
    assert_eq!(counters(&running), plus(&before, Refusal::IpRate, 1));
    let _other = admitted("127.0.0.3", to).await;
    // One token refills every 200 ms at 5/s.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let _again = admitted("127.0.0.2", to).await;
    assert_eq!(counters(&running), plus(&before, Refusal::IpRate, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_default_rate_is_burst_20() {
    let up = backends::echo_backend().await;
    // Defaults except the caps, so 21 held admissions are not refused by the per-IP cap.
    let toml = format!(
        "[admission]\nmax_connections_per_ip = 1000\nmax_connections_per_group = 1000\n\n{}",
        gateway::tcp_front("f", up, "")
    );
    let running = gateway::start(&toml).await;
    let to = running.addr("f");
    let level = running.front("f").unwrap().level.clone();
    let ip: IpAddr = "127.0.0.2".parse().unwrap();
    // The burst is spent through the guard directly (microseconds, far inside one 100 ms refill at
    // 10/s), then a real connection must be refused. Should a stalled machine let a token refill
    // before that connection is judged, spend it and try again, a bounded number of times.
    let mut held = Vec::new();
    for attempt in 0..5 {
        let mut n = 0;
        let refusal = loop {
            match running.guard().admit(&level, ip) {
                Ok(p) => {
                    held.push(p);
                    n += 1;
                    assert!(n <= 20, "more than the default burst of 20 admitted at once");
                }
                Err(r) => break r,
            }
        };
        assert_eq!(refusal, Refusal::IpRate);
        if attempt == 0 {
            assert_eq!(n, 20, "default burst");
        }
        let before = counters(&running);
        let mut s = net::connect_from("127.0.0.2", to).await.unwrap();
        if net::echoes(&mut s).await {
            held.clear();
            continue;
        }
        assert_eq!(counters(&running), plus(&before, Refusal::IpRate, 1));
        let _other = admitted("127.0.0.3", to).await;
        return;
    }
    panic!("127.0.0.2 was never refused by the default rate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_group_connect_rate() {
    let up = backends::echo_backend().await;
    let running = gateway::start(&front(
        "[front.admission]\nconnect_rate_per_group = \"1/min\"\nconnect_burst_per_group = 2",
        up,
    ))
    .await;
    let to = running.addr("f");
    let _a = admitted("127.0.0.2", to).await;
    let _b = admitted("127.0.0.3", to).await;
    refused(&running, "127.0.0.4", to, Refusal::GroupRate).await;
    let _c = admitted("127.0.1.2", to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_by_cap_does_not_spend_rate() {
    let up = backends::echo_backend().await;
    // Rate comes last: connections refused by the cap must not drain the burst.
    let running = gateway::start(&front(
        "[front.admission]\nmax_connections_per_ip = 1\nconnect_rate_per_ip = \"1/min\"\nconnect_burst_per_ip = 2",
        up,
    ))
    .await;
    let to = running.addr("f");
    let first = admitted("127.0.0.2", to).await;
    for _ in 0..3 {
        refused(&running, "127.0.0.2", to, Refusal::PerIpCap).await;
    }
    drop(first);
    let _second = admitted_eventually("127.0.0.2", to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_mapped_address_is_the_ipv4_client() {
    let up = backends::echo_backend().await;
    let running = gateway::start(&front(
        "[front.admission]\ndeny = [\"127.0.0.2/32\"]\nmax_connections_per_ip = 1",
        up,
    ))
    .await;
    let level = running.front("f").unwrap().level.clone();
    let mapped = |s: &str| -> IpAddr { s.parse().unwrap() };
    let before = counters(&running);
    assert_eq!(
        running.guard().admit(&level, mapped("::ffff:127.0.0.2")).err(),
        Some(Refusal::Denied)
    );
    assert_eq!(counters(&running), plus(&before, Refusal::Denied, 1));
    // The mapped form shares the IPv4 address's budget: a real session from 127.0.0.3 holds its only slot.
    let _held = admitted("127.0.0.3", running.addr("f")).await;
    assert_eq!(
        running.guard().admit(&level, mapped("::ffff:127.0.0.3")).err(),
        Some(Refusal::PerIpCap)
    );
    let permit = running.guard().admit(&level, mapped("::ffff:127.0.0.4"));
    assert!(permit.is_ok());
    // ... and the other way round: the permit taken for the mapped form blocks the IPv4 address.
    refused(&running, "127.0.0.4", running.addr("f"), Refusal::PerIpCap).await;
    drop(permit);
    let _ok = admitted("127.0.0.4", running.addr("f")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_mapped_deny_entry_matches_ipv4_clients() {
    let up = backends::echo_backend().await;
    let running = gateway::start(&front("[front.admission]\ndeny = [\"::ffff:127.0.0.2/128\"]", up)).await;
    let to = running.addr("f");
    refused(&running, "127.0.0.2", to, Refusal::Denied).await;
    let _ok = admitted("127.0.0.3", to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_group_cap_uses_v6_prefix() {
    let up = backends::echo_backend().await;
    let toml = format!(
        "{RELAXED}[[front]]\nname = \"f\"\nkind = \"peer\"\nlisten = [\"[::1]:0\"]\n\
         transport = \"tcp\"\nupstreams = [\"{up}\"]\n\
         [front.admission]\nmax_connections_per_group = 1\n"
    );
    let running = gateway::start(&toml).await;
    let to = running.addr("f");
    let level = running.front("f").unwrap().level.clone();
    let _a = admitted("::1", to).await;
    // Another address of ::/48 is in the same group as ::1; 2001:db8::1 is not.
    let before = counters(&running);
    assert_eq!(
        running.guard().admit(&level, "::2".parse().unwrap()).err(),
        Some(Refusal::PerGroupCap)
    );
    assert_eq!(counters(&running), plus(&before, Refusal::PerGroupCap, 1));
    assert!(running.guard().admit(&level, "2001:db8::1".parse().unwrap()).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_by_front_rate_does_not_spend_global_rate() {
    let up = backends::echo_backend().await;
    // Global: 2 connects per IP, then one a minute. Front f: 1, then one a minute. Front g: no own rate.
    let toml = format!(
        "[admission]\nmax_connections_per_ip = 1000\nmax_connections_per_group = 1000\n\
         connect_rate_per_ip = \"1/min\"\nconnect_burst_per_ip = 2\n\n{}{}",
        gateway::tcp_front(
            "f",
            up,
            "[front.admission]\nconnect_rate_per_ip = \"1/min\"\nconnect_burst_per_ip = 1"
        ),
        tcp_front_at("g", "127.0.0.10:0", up, "")
    );
    let running = gateway::start(&toml).await;
    let _a = admitted("127.0.0.2", running.addr("f")).await;
    refused(&running, "127.0.0.2", running.addr("f"), Refusal::IpRate).await;
    // The refusal above must not have cost 127.0.0.2 its second global connect.
    let before = counters(&running);
    let refused_now = net::is_refused("127.0.0.2", running.addr("g")).await;
    assert_eq!(
        counters(&running),
        before,
        "refusal counters (order {:?})",
        Refusal::ALL
    );
    assert!(!refused_now);
}
