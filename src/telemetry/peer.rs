//! Series of the peer fronts: refusals by reason, pacing waits, address entries filtered, slow peers,
//! and what peer sessions hold. Handles are registered per front when it is built, so a session counts
//! with one relaxed atomic add.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

/// Why a peer front refused a peer, as the `reason` label says it.
pub const REFUSALS: [&str; 9] = [
    "wrong_magic",
    "http",
    "first_not_version",
    "v2_refused",
    "bad_command",
    "oversized",
    "bad_checksum",
    "not_client_hello",
    "timeout",
];

/// Which pace made a peer wait.
pub const PACES: [&str; 3] = ["bytes_in", "bytes_out", "messages"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrontLabels {
    front: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrontReasonLabels {
    front: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrontPaceLabels {
    front: String,
    pace: String,
}

struct PeerSeries {
    refusals: Family<FrontReasonLabels, Counter>,
    throttled: Family<FrontPaceLabels, Counter>,
    addr_entries: Family<FrontLabels, Counter>,
    addr_messages: Family<FrontLabels, Counter>,
    slow: Family<FrontLabels, Counter>,
    buffered: Gauge,
    offenders: Gauge,
}

static SERIES: LazyLock<PeerSeries> = LazyLock::new(|| PeerSeries {
    refusals: Family::default(),
    throttled: Family::default(),
    addr_entries: Family::default(),
    addr_messages: Family::default(),
    slow: Family::default(),
    buffered: Gauge::default(),
    offenders: Gauge::default(),
});

/// One peer front's handles.
#[derive(Clone)]
pub struct PeerMetrics {
    refusals: [Counter; REFUSALS.len()],
    throttled: [Counter; PACES.len()],
    addr_entries: Counter,
    addr_messages: Counter,
    slow: Counter,
}

impl PeerMetrics {
    pub fn new(front: &str) -> PeerMetrics {
        let s = &*SERIES;
        let label = FrontLabels { front: front.into() };
        PeerMetrics {
            refusals: REFUSALS.map(|r| {
                s.refusals.get_or_create_owned(&FrontReasonLabels {
                    front: front.into(),
                    reason: r.into(),
                })
            }),
            throttled: PACES.map(|p| {
                s.throttled.get_or_create_owned(&FrontPaceLabels {
                    front: front.into(),
                    pace: p.into(),
                })
            }),
            addr_entries: s.addr_entries.get_or_create_owned(&label),
            addr_messages: s.addr_messages.get_or_create_owned(&label),
            slow: s.slow.get_or_create_owned(&label),
        }
    }

    /// A refusal; `reason` is one of [`REFUSALS`].
    pub fn refused(&self, reason: &str) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
            self.refusals[i].inc();
        }
    }

    /// A pacing wait began; `pace` indexes [`PACES`].
    pub fn throttled(&self, pace: usize) {
        if let Some(c) = self.throttled.get(pace) {
            c.inc();
        }
    }

    pub fn addr_filtered(&self, entries: u64, messages: u64) {
        self.addr_entries.inc_by(entries);
        self.addr_messages.inc_by(messages);
    }

    pub fn slow_peer(&self) {
        self.slow.inc();
    }
}

impl std::fmt::Debug for PeerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerMetrics")
    }
}

/// Bytes peer sessions hold, moved by the change.
pub fn buffered(delta: i64) {
    SERIES.buffered.inc_by(delta);
}

/// Addresses the peer fronts remember violations of.
pub fn offenders(n: usize) {
    SERIES.offenders.set(i64::try_from(n).unwrap_or(i64::MAX));
}

pub fn register(r: &mut Registry) {
    let s = &*SERIES;
    r.register(
        "peer_refusals",
        "Peers refused by a peer front's shape check or ban, by front and reason",
        s.refusals.clone(),
    );
    r.register(
        "peer_throttled",
        "Pacing waits of peer sessions, by front and pace (bytes_in, bytes_out, messages)",
        s.throttled.clone(),
    );
    r.register(
        "peer_addr_entries_dropped",
        "addr/addrv2 entries naming private, loopback or upstream addresses, dropped before they reached a peer",
        s.addr_entries.clone(),
    );
    r.register(
        "peer_addr_messages_dropped",
        "addr/addrv2 messages dropped whole (larger than max_buffered, unreadable, or left empty)",
        s.addr_messages.clone(),
    );
    r.register(
        "peer_slow_disconnects",
        "Peers cut off for leaving the node's bytes unread past slow_peer_timeout",
        s.slow.clone(),
    );
    r.register(
        "peer_buffered_bytes",
        "Bytes peer sessions hold now (relay buffers and address messages being filtered)",
        s.buffered.clone(),
    );
    r.register(
        "peer_offenders",
        "Addresses whose peer protocol violations are remembered toward a ban",
        s.offenders.clone(),
    );
}
