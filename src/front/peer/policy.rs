//! What a peer session asks of the relay: the v1 check of the peer's bytes, the address filter on the
//! node's, the paces, the slow-peer cut-off and the session's share of the memory budget.

use super::limits::Bucket;
use super::settings::PeerLimits;
use crate::front::relay::Policy;
use crate::listen::CloseReason;
use crate::state::memory::Charge;
use crate::telemetry::peer::PeerMetrics;
use crate::wire::bitcoin::{AddrScrub, PayloadCaps, V1Check, Violation};
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// Addresses a node's `addr` messages must not reveal to a peer.
#[derive(Debug, Clone)]
pub struct Hidden {
    pub upstreams: Vec<IpAddr>,
}

impl Hidden {
    pub fn hides(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let internal = match ip {
            IpAddr::V4(a) => a.is_private() || a.is_loopback() || a.is_link_local() || a.is_unspecified(),
            IpAddr::V6(a) => a.is_loopback() || a.is_unique_local() || a.is_unicast_link_local() || a.is_unspecified(),
        };
        internal || self.upstreams.contains(&ip)
    }
}

pub struct PeerPolicy {
    pub check: Option<(V1Check, Arc<PayloadCaps>)>,
    pub scrub: Option<(AddrScrub, Arc<Hidden>)>,
    pub bytes_in: Option<Bucket>,
    pub bytes_out: Option<Bucket>,
    pub messages: Option<Bucket>,
    pub slow: Duration,
    pub charge: Charge,
    /// What this session adds to the process-wide gauge of peer buffers.
    pub reported: i64,
    pub metrics: PeerMetrics,
    /// The violation that ended the session, for the ban count.
    pub violation: Option<Violation>,
    /// Per pace, until when the current wait runs (so one wait counts once).
    waiting: [Option<Instant>; 3],
}

impl PeerPolicy {
    pub fn new(limits: &PeerLimits, charge: Charge, metrics: PeerMetrics) -> PeerPolicy {
        let now = Instant::now();
        PeerPolicy {
            check: None,
            scrub: None,
            bytes_in: limits.bytes_in.map(|p| Bucket::new(p, now)),
            bytes_out: limits.bytes_out.map(|p| Bucket::new(p, now)),
            messages: None,
            slow: limits.slow_peer_timeout,
            charge,
            reported: 0,
            metrics,
            violation: None,
            waiting: [None; 3],
        }
    }

    fn wait(&mut self, pace: usize, until: Option<Instant>, now: Instant) -> Option<Instant> {
        let until = until?;
        if self.waiting[pace].is_none_or(|t| t <= now) {
            self.metrics.throttled(pace);
        }
        self.waiting[pace] = Some(until);
        Some(until)
    }
}

impl Policy for PeerPolicy {
    fn client_read(&mut self, data: &[u8]) -> Result<(), CloseReason> {
        let now = Instant::now();
        if let Some(b) = &mut self.bytes_in {
            b.take(data.len() as f64, now);
        }
        if let Some((check, caps)) = &mut self.check {
            match check.feed(data, caps) {
                Ok(n) => {
                    if let Some(m) = &mut self.messages {
                        m.take(f64::from(n), now);
                    }
                }
                Err(v) => {
                    self.violation = Some(v);
                    return Err(CloseReason::PeerProtocol(v));
                }
            }
        }
        Ok(())
    }

    fn upstream_read(&mut self, data: &[u8], out: &mut Vec<u8>) -> bool {
        if let Some(b) = &mut self.bytes_out {
            b.take(data.len() as f64, Instant::now());
        }
        let Some((scrub, hidden)) = &mut self.scrub else {
            return false;
        };
        let (e, m) = (scrub.entries_dropped, scrub.messages_dropped);
        scrub.feed(data, &mut |ip| hidden.hides(ip), out);
        if scrub.entries_dropped != e || scrub.messages_dropped != m {
            self.metrics
                .addr_filtered(scrub.entries_dropped - e, scrub.messages_dropped - m);
        }
        true
    }

    fn read_after(&mut self, toward_upstream: bool, now: Instant) -> Option<Instant> {
        if toward_upstream {
            let bytes = self.bytes_in.as_mut().and_then(|b| b.ready_at(now));
            let msgs = self.messages.as_mut().and_then(|b| b.ready_at(now));
            let a = self.wait(0, bytes, now);
            let b = self.wait(2, msgs, now);
            a.max(b)
        } else {
            let bytes = self.bytes_out.as_mut().and_then(|b| b.ready_at(now));
            self.wait(1, bytes, now)
        }
    }

    fn slow_peer_timeout(&self) -> Option<Duration> {
        Some(self.slow)
    }

    fn poll_held(&mut self, relay_bytes: usize, cx: &mut Context<'_>) -> Poll<()> {
        let held = relay_bytes + self.scrub.as_ref().map_or(0, |(s, _)| s.held());
        let now = i64::try_from(held).unwrap_or(i64::MAX);
        if now != self.reported {
            crate::telemetry::peer::buffered(now - self.reported);
            self.reported = now;
            self.charge.set(held);
        }
        self.charge.poll_cut(cx)
    }
}

impl Drop for PeerPolicy {
    fn drop(&mut self) {
        crate::telemetry::peer::buffered(-self.reported);
    }
}
