//! Peer fronts: a node's P2P port behind the gateway. Every peer session is an L4 relay (the node sees
//! the peer's bytes untouched, TLS included); on top of it, judgement the node cannot make for itself
//! when every peer reaches it from the gateway's address:
//!
//! - a shape check before the node sees a byte: a TLS ClientHello (`protocol = "tls"`), or Bitcoin's
//!   v1 framing checked message by message with BIP324 v2 allowed or refused (`protocol = "bitcoin"`);
//! - violations counted per address across connections and banned through the shared ban path;
//! - per-peer paces in each direction, a message pace, a slow-peer cut-off, buffers bounded per peer
//!   and charged to the process-wide memory budget;
//! - optionally, the node's `addr` / `addrv2` messages scrubbed of private and upstream addresses.

pub mod limits;
pub mod offences;
pub mod policy;
pub mod settings;

use crate::front::relay::{Relay, RelayEnd};
use crate::front::{CloseLine, FrontState};
use crate::listen::{CloseReason, Conn};
use crate::telemetry::peer::PeerMetrics;
use crate::wire::bitcoin::{self, AddrScrub, Opening, V1Check, Violation};
use crate::wire::tls_hello::{self, HelloError};
use limits::Bucket;
use policy::{Hidden, PeerPolicy};
use settings::{PeerProtocol, V2Policy};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What the sessions of one peer front share: the metric handles, the payload caps, the addresses the
/// address filter hides. (Violation counts span fronts: they live in the front handles.)
#[derive(Debug)]
pub struct PeerFront {
    pub metrics: PeerMetrics,
    pub hidden: Arc<Hidden>,
    pub caps: Arc<bitcoin::PayloadCaps>,
}

impl PeerFront {
    pub fn new(front: &crate::front::Front) -> PeerFront {
        let caps = match &front.peer.protocol {
            PeerProtocol::Bitcoin(b) => b.caps.clone(),
            _ => bitcoin::PayloadCaps::default(),
        };
        PeerFront {
            metrics: PeerMetrics::new(&front.name),
            hidden: Arc::new(Hidden {
                upstreams: front.upstreams.iter().map(|a| a.ip().to_canonical()).collect(),
            }),
            caps: Arc::new(caps),
        }
    }
}

/// Reads until `buf` is full or the client closes; how much arrived.
async fn read_prefix<S: AsyncRead + Unpin + ?Sized>(s: &mut S, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = s.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// The most a v1 peer's first message may carry: `version` is a few hundred bytes at most (its user
/// agent is capped at 256), BSV's `createstrm` a few dozen. It is read whole before the node is
/// connected to, so a malformed first message never reaches the node.
pub const FIRST_PAYLOAD_MAX: usize = 1024;
const FIRST_MAX: usize = bitcoin::HEADER_LEN + FIRST_PAYLOAD_MAX;

/// Reads and judges the connection's opening: for `tls` the ClientHello's first bytes, for `bitcoin` the
/// first 16 bytes and, for v1, the whole first message. `n` tracks what was read, as it arrives.
async fn opening<S: AsyncRead + Unpin + ?Sized>(
    protocol: &PeerProtocol,
    caps: &bitcoin::PayloadCaps,
    s: &mut S,
    first: &mut [u8; FIRST_MAX],
    n: &mut usize,
    check: &mut Option<V1Check>,
) -> std::io::Result<Verdict> {
    match protocol {
        PeerProtocol::Any => Ok(Verdict::Pass),
        PeerProtocol::Tls => {
            *n = read_prefix(s, &mut first[..tls_hello::HELLO_PREFIX]).await?;
            Ok(match tls_hello::check_client_hello(&first[..*n]) {
                _ if *n == 0 => Verdict::Closed,
                Ok(()) => Verdict::Pass,
                // A client that closed mid-hello is not judged on what it never sent.
                Err(HelloError::Truncated) => Verdict::Closed,
                Err(e) => Verdict::Refuse {
                    reason: CloseReason::NotClientHello(e),
                    label: "not_client_hello",
                    offence: true,
                },
            })
        }
        PeerProtocol::Bitcoin(b) => {
            *n = read_prefix(s, &mut first[..bitcoin::OPENING_LEN]).await?;
            if *n == 0 {
                return Ok(Verdict::Closed);
            }
            match bitcoin::classify_opening(&first[..*n], &b.magic, &b.first_commands) {
                Opening::V1 => {}
                Opening::V2Candidate if b.v2 == V2Policy::Allow => return Ok(Verdict::Pass),
                Opening::V2Candidate => return Ok(refuse(Violation::V2Refused)),
                Opening::Refused(v) => return Ok(refuse(v)),
            }
            *n += read_prefix(s, &mut first[*n..bitcoin::HEADER_LEN]).await?;
            let len = u32::from_le_bytes([first[16], first[17], first[18], first[19]]) as usize;
            if *n < bitcoin::HEADER_LEN {
                return Ok(Verdict::Closed);
            }
            if len > FIRST_PAYLOAD_MAX {
                return Ok(refuse(Violation::Oversized));
            }
            *n += read_prefix(s, &mut first[*n..bitcoin::HEADER_LEN + len]).await?;
            let mut c = V1Check::new(b.magic);
            match c.feed(&first[..*n], caps) {
                Ok(1) => {
                    *check = Some(c);
                    Ok(Verdict::Pass)
                }
                Ok(_) => Ok(Verdict::Closed),
                Err(v) => Ok(refuse(v)),
            }
        }
    }
}

/// How the opening went.
enum Verdict {
    /// The node may be connected to.
    Pass,
    /// The client closed before its opening was complete.
    Closed,
    /// The opening is refused: `label` names it in the metrics, and an `offence` counts toward a ban.
    Refuse {
        reason: CloseReason,
        label: &'static str,
        offence: bool,
    },
}

/// Runs one peer session: the shape check, the upstream, the relay under the front's policy.
pub async fn serve(front: &FrontState, mut conn: Conn) {
    let set = &front.cfg.peer;
    let peer = &front.peer;
    let mut line = CloseLine {
        client: conn.client,
        via: conn.via,
        tls: conn.stream.tls_version(),
        since: conn.accepted_at,
        bytes_in: 0,
        bytes_out: 0,
        reason: CloseReason::UpstreamUnreachable,
        requests: None,
    };
    let mut first = [0u8; FIRST_MAX];
    let mut n = 0;
    let mut check = None;
    let deadline = tokio::time::Instant::from_std(conn.accepted_at + front.cfg.handshake_timeout);
    let verdict = match tokio::time::timeout_at(
        deadline,
        opening(
            &set.protocol,
            &peer.caps,
            &mut conn.stream,
            &mut first,
            &mut n,
            &mut check,
        ),
    )
    .await
    {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => {
            line.reason = CloseReason::ClientError;
            return front.log_close(&line);
        }
        Err(_) => {
            // Silence or slowloris: refused before the node hears of it, not banned (a port scan that
            // connects and waits is not worth a ban-table entry).
            peer.metrics.refused("timeout");
            line.reason = CloseReason::HandshakeTimeout;
            return front.log_close(&line);
        }
    };
    line.bytes_in = n as u64;
    if let Verdict::Closed = verdict {
        line.reason = CloseReason::ClientClosed;
        return front.log_close(&line);
    }
    if let Verdict::Refuse { reason, label, offence } = verdict {
        peer.metrics.refused(label);
        line.reason = reason;
        front.log_close(&line);
        if offence {
            offend(front, &conn, label);
        }
        return;
    }
    let mut upstream = match front.pool.connect(conn.client, conn.local).await {
        Ok((s, _addr)) => s,
        Err(e) => {
            tracing::warn!(front = %front.cfg.name, error = %e, "no upstream reachable");
            return front.log_close(&line);
        }
    };
    let mut policy = PeerPolicy::new(&set.limits, front.handles.electrum.memory.open(), peer.metrics.clone());
    if let PeerProtocol::Bitcoin(b) = &set.protocol {
        // A v2 stream is opaque: only the byte-level limits apply to it.
        if let Some(c) = check {
            policy.check = Some((c, peer.caps.clone()));
            let now = tokio::time::Instant::now();
            policy.messages = set.limits.messages.map(|p| Bucket::new(p, now));
            if b.filter_addr {
                policy.scrub = Some((AddrScrub::new(b.magic, set.limits.max_buffered), peer.hidden.clone()));
            }
        }
    }
    let mut relay = Relay::with_policy(
        &mut conn.stream,
        &mut upstream,
        front.cfg.idle_timeout,
        policy,
        &first[..n],
    );
    let end = tokio::select! {
        end = &mut relay => Some(end),
        _ = front.handles.drain.signal(conn.client) => None,
    };
    // The relay wrote the opening on first and counted it with the rest.
    line.bytes_in = relay.bytes_in();
    line.bytes_out = relay.bytes_out();
    let violation = relay.policy().violation;
    drop(relay);
    if let Some(RelayEnd::ClientError(e) | RelayEnd::UpstreamError(e)) = &end {
        tracing::debug!(front = %front.cfg.name, client = %conn.client, error = %e, "relay i/o error");
    }
    if let Some(RelayEnd::SlowPeer) = &end {
        peer.metrics.slow_peer();
    }
    line.reason = end.map_or(CloseReason::Shutdown, CloseReason::from);
    front.log_close(&line);
    if let Some(v) = violation {
        peer.metrics.refused(v.label());
        if v.is_offence() {
            offend(front, &conn, v.label());
        }
    }
}

fn refuse(v: Violation) -> Verdict {
    Verdict::Refuse {
        reason: CloseReason::PeerProtocol(v),
        label: v.label(),
        offence: v.is_offence(),
    }
}

/// Counts a violation of the client's address; past `max_violations`, the address is banned.
fn offend(front: &FrontState, conn: &Conn, what: &'static str) {
    let h = &front.handles;
    let policy = h.electrum.ban_policy.load();
    if h.peer_offences
        .record(conn.client.ip(), &policy, &h.electrum.bans, what)
    {
        tracing::info!(front = %front.cfg.name, client = %conn.client, reason = what, "peer banned for protocol violations");
    }
}
