//! Asks an Electrum backend who it is, and says where its own defaults would punish every wallet at once.
//!
//! Behind the gateway every wallet reaches the indexer from the gateway's address, because no mainstream
//! indexer accepts the PROXY protocol. Indexers that limit per client address then count all wallets as one
//! client. What the operator must change depends on the implementation and on the address the backend sees
//! (the probe connection's own local address), so both are read from a real exchange, not from the config.

use crate::front::settings::{Front, FrontKind};
use crate::upstream::SendProxy;
use crate::wire::proxy;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long one probe may take, connect included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest reply line read; `server.features` is a few hundred bytes.
const MAX_REPLY: u64 = 64 * 1024;

/// ElectrumX's default `MAX_SESSIONS`.
const ELECTRUMX_MAX_SESSIONS: usize = 1000;
/// Fulcrum's default `max_clients_per_ip`.
const FULCRUM_MAX_CLIENTS_PER_IP: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the backend closed the connection before answering server.version")]
    Closed,
    #[error("server.version answer is not [software, protocol]: {0}")]
    BadReply(String),
}

/// The implementations whose per-address defaults matter behind a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    ElectrumX,
    Fulcrum,
    Electrs,
    Other,
}

/// What a backend said about itself, and the address it sees the gateway as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub upstream: SocketAddr,
    pub seen_as: IpAddr,
    /// The software string as sent (`server.version`'s first element), e.g. "Fulcrum 1.9.8".
    pub software: String,
    pub protocol: String,
    pub implementation: Implementation,
    /// Major and minor version, when the software string carries one.
    pub version: Option<(u32, u32)>,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (protocol {}), sees this gateway as {}",
            self.software, self.protocol, self.seen_as
        )
    }
}

/// One change the operator should make on the backend, or on the gateway, for the pair to work as meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advice {
    /// Fulcrum counts every wallet as the gateway's address against its per-address limits.
    FulcrumPerIpLimits { seen_as: IpAddr },
    /// ElectrumX shares one session group's cost among every wallet behind the gateway.
    ElectrumXOneGroup { seen_as: IpAddr, old: bool },
    /// The gateway admits more sessions than ElectrumX's default MAX_SESSIONS; past it ElectrumX stops
    /// listening and the gateway marks it down.
    ElectrumXMaxSessions { admitted: usize },
}

impl fmt::Display for Advice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Advice::FulcrumPerIpLimits { seen_as } => write!(
                f,
                "Fulcrum counts every wallet behind this gateway as one client ({seen_as}): its max_clients_per_ip \
                 (default {FULCRUM_MAX_CLIENTS_PER_IP}) refuses the wallet after that, and max_subs_per_ip and max_batch are \
                 shared by all; add {} to subnets_to_exclude_from_per_ip_limits in fulcrum.conf (Gatehouse limits each \
                 client itself)",
                host_net(*seen_as)
            ),
            Advice::ElectrumXOneGroup { seen_as, old: true } => write!(
                f,
                "this ElectrumX (before 1.16) puts every wallet behind this gateway ({seen_as}) into one session group, so \
                 one costly wallet throttles all: upgrade to ElectrumX 1.16 or later and reach it over a private or \
                 loopback address (no longer grouped), or set COST_SOFT_LIMIT=0 and COST_HARD_LIMIT=0 there (Gatehouse \
                 applies the same cost model per real client)"
            ),
            Advice::ElectrumXOneGroup { seen_as, old: false } => write!(
                f,
                "ElectrumX groups sessions by public address and sees every wallet as {seen_as}: one costly wallet \
                 throttles all; reach it over a private or loopback address (ElectrumX does not group those), or set \
                 COST_SOFT_LIMIT=0 and COST_HARD_LIMIT=0 there (Gatehouse applies the same cost model per real client)"
            ),
            Advice::ElectrumXMaxSessions { admitted } => write!(
                f,
                "ElectrumX's MAX_SESSIONS (default {ELECTRUMX_MAX_SESSIONS}) counts every wallet of this gateway, which \
                 admits up to {admitted}: past it ElectrumX stops listening and new wallets are refused; set \
                 MAX_SESSIONS to at least {admitted} (and its open-file limit to match), or lower max_connections"
            ),
        }
    }
}

/// The address as a one-host network, as an exclusion list writes it.
fn host_net(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Python's `is_private`, which ElectrumX uses to exempt addresses from session groups.
fn is_private(ip: IpAddr) -> bool {
    match crate::wire::addr::canonical(ip) {
        IpAddr::V4(a) => a.is_private() || a.is_loopback() || a.is_link_local() || a.is_unspecified(),
        IpAddr::V6(a) => a.is_loopback() || a.is_unique_local() || a.is_unicast_link_local() || a.is_unspecified(),
    }
}

/// What to change for this backend, given how many sessions the front may admit (`None`: no cap).
pub fn advise(id: &Identity, admitted: Option<usize>) -> Vec<Advice> {
    let mut out = Vec::new();
    match id.implementation {
        Implementation::Fulcrum => {
            // Fulcrum excludes only these two from its per-address limits unless told otherwise.
            let excluded = matches!(id.seen_as, IpAddr::V4(a) if a == std::net::Ipv4Addr::LOCALHOST)
                || id.seen_as == IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
            if !excluded {
                out.push(Advice::FulcrumPerIpLimits { seen_as: id.seen_as });
            }
        }
        Implementation::ElectrumX => {
            let old = id.version.is_some_and(|v| v < (1, 16));
            if old || !is_private(id.seen_as) {
                out.push(Advice::ElectrumXOneGroup {
                    seen_as: id.seen_as,
                    old,
                });
            }
            if admitted.is_none_or(|n| n > ELECTRUMX_MAX_SESSIONS) {
                out.push(Advice::ElectrumXMaxSessions {
                    admitted: admitted.unwrap_or(usize::MAX),
                });
            }
        }
        Implementation::Electrs | Implementation::Other => {}
    }
    out
}

/// Names the implementation and its version from `server.version`'s software string.
fn identify(software: &str) -> (Implementation, Option<(u32, u32)>) {
    let lower = software.to_ascii_lowercase();
    let (name, rest) = lower.split_once([' ', '/']).unwrap_or((lower.as_str(), ""));
    let implementation = match name {
        "electrumx" => Implementation::ElectrumX,
        "fulcrum" => Implementation::Fulcrum,
        n if n.starts_with("electrs") => Implementation::Electrs,
        _ => Implementation::Other,
    };
    let mut parts = rest.trim_start_matches('v').split('.');
    let version = match (
        parts.next().and_then(|p| p.parse().ok()),
        parts
            .next()
            .and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok()),
    ) {
        (Some(major), Some(minor)) => Some((major, minor)),
        _ => None,
    };
    (implementation, version)
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    result: Option<(String, String)>,
}

/// Asks `upstream` for `server.version`, sending a PROXY v2 header first when the front does (naming the
/// probe connection itself, so the backend sees the gateway as it would).
pub async fn probe(upstream: SocketAddr, send_proxy: SendProxy) -> Result<Identity, ProbeError> {
    match tokio::time::timeout(PROBE_TIMEOUT, exchange(upstream, send_proxy)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(PROBE_TIMEOUT)),
    }
}

async fn exchange(upstream: SocketAddr, send_proxy: SendProxy) -> Result<Identity, ProbeError> {
    let mut s = TcpStream::connect(upstream).await?;
    let seen_as = crate::wire::addr::canonical(s.local_addr()?.ip());
    let mut out = Vec::with_capacity(160);
    if send_proxy == SendProxy::V2 {
        proxy::encode_v2(s.local_addr()?, upstream, &mut out);
    }
    out.extend_from_slice(
        br#"{"jsonrpc":"2.0","id":"gatehouse-probe","method":"server.version","params":["Gatehouse probe","1.4"]}"#,
    );
    out.push(b'\n');
    s.write_all(&out).await?;
    let mut r = BufReader::new(s).take(MAX_REPLY);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Err(ProbeError::Closed);
        }
        // Notifications may come first on some servers; only our id answers.
        let Ok(reply) = serde_json::from_str::<Reply<'_>>(&line) else {
            return Err(ProbeError::BadReply(line.trim().chars().take(200).collect()));
        };
        if reply.id.map(RawValue::get) != Some("\"gatehouse-probe\"") {
            continue;
        }
        let Some((software, protocol)) = reply.result else {
            return Err(ProbeError::BadReply(line.trim().chars().take(200).collect()));
        };
        let (implementation, version) = identify(&software);
        return Ok(Identity {
            upstream,
            seen_as,
            software,
            protocol,
            implementation,
            version,
        });
    }
}

/// The most sessions `front` may admit, given the global cap: `None` when neither level caps them.
pub fn admitted(front: &Front, global: &crate::guard::Admission) -> Option<usize> {
    match (front.admission.max_connections, global.max_connections) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Probes every upstream of an Electrum front in the background and logs what each is, then one warning
/// per piece of advice. A backend that cannot be probed is only noted: the front serves regardless.
pub fn spawn_advice(front: &Front, global: &crate::guard::Admission) {
    if front.kind != FrontKind::Electrum {
        return;
    }
    let admitted = admitted(front, global);
    for &upstream in &front.upstreams {
        let name = front.name.clone();
        let send_proxy = front.send_proxy;
        tokio::spawn(async move {
            match probe(upstream, send_proxy).await {
                Ok(id) => {
                    tracing::info!(front = %name, %upstream, software = %id.software, protocol = %id.protocol, seen_as = %id.seen_as, "backend identified");
                    for a in advise(&id, admitted) {
                        tracing::warn!(front = %name, %upstream, software = %id.software, "backend advice: {a}");
                    }
                }
                Err(e) => tracing::info!(front = %name, %upstream, error = %e, "backend not identified"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(software: &str, seen_as: &str) -> Identity {
        let (implementation, version) = identify(software);
        Identity {
            upstream: "127.0.0.1:50001".parse().unwrap(),
            seen_as: seen_as.parse().unwrap(),
            software: software.into(),
            protocol: "1.4".into(),
            implementation,
            version,
        }
    }

    #[test]
    fn implementations_and_versions_are_read_from_the_software_string() {
        assert_eq!(identify("ElectrumX 1.16.0"), (Implementation::ElectrumX, Some((1, 16))));
        assert_eq!(identify("Fulcrum 1.9.8"), (Implementation::Fulcrum, Some((1, 9))));
        assert_eq!(identify("electrs/0.10.1"), (Implementation::Electrs, Some((0, 10))));
        assert_eq!(
            identify("electrs-esplora 0.4.1"),
            (Implementation::Electrs, Some((0, 4)))
        );
        assert_eq!(
            identify("ElectrumX 1.15.0-keva"),
            (Implementation::ElectrumX, Some((1, 15)))
        );
        assert_eq!(
            identify("ElectrumPersonalServer 0.2.4"),
            (Implementation::Other, Some((0, 2)))
        );
        assert_eq!(identify(""), (Implementation::Other, None));
    }

    #[test]
    fn fulcrum_needs_the_gateway_excluded_unless_it_comes_from_its_default_exclusions() {
        assert!(advise(&id("Fulcrum 1.9.8", "127.0.0.1"), Some(100)).is_empty());
        assert!(advise(&id("Fulcrum 1.9.8", "::1"), Some(100)).is_empty());
        let a = advise(&id("Fulcrum 1.9.8", "10.0.0.2"), Some(100));
        assert_eq!(
            a,
            [Advice::FulcrumPerIpLimits {
                seen_as: "10.0.0.2".parse().unwrap()
            }]
        );
        assert!(a[0]
            .to_string()
            .contains("add 10.0.0.2/32 to subnets_to_exclude_from_per_ip_limits"));
    }

    #[test]
    fn electrumx_groups_public_addresses_and_old_releases_group_everything() {
        assert!(advise(&id("ElectrumX 1.18.0", "127.0.0.1"), Some(1000)).is_empty());
        assert!(advise(&id("ElectrumX 1.18.0", "10.1.2.3"), Some(1000)).is_empty());
        let public = advise(&id("ElectrumX 1.18.0", "198.51.100.7"), Some(1000));
        assert!(matches!(public[..], [Advice::ElectrumXOneGroup { old: false, .. }]));
        let old = advise(&id("ElectrumX 1.15.0", "127.0.0.1"), Some(1000));
        assert!(matches!(old[..], [Advice::ElectrumXOneGroup { old: true, .. }]));
        assert!(old[0].to_string().contains("COST_SOFT_LIMIT=0"));
    }

    #[test]
    fn electrumx_max_sessions_must_cover_what_the_gateway_admits() {
        let a = advise(&id("ElectrumX 1.18.0", "127.0.0.1"), Some(20_000));
        assert_eq!(a, [Advice::ElectrumXMaxSessions { admitted: 20_000 }]);
        assert!(a[0].to_string().contains("set MAX_SESSIONS to at least 20000"));
    }

    #[test]
    fn electrs_and_unknown_servers_get_no_advice() {
        assert!(advise(&id("electrs/0.10.1", "198.51.100.7"), None).is_empty());
        assert!(advise(&id("SomethingElse 3.0", "198.51.100.7"), None).is_empty());
    }
}
