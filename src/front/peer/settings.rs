//! The settings of a peer front (`[front.peer]`): which protocol its peers must speak, and the limits
//! every peer gets.

use crate::wire::bitcoin::{Command, Magic, PayloadCaps};
use std::time::Duration;

/// Default `protocol`: no shape check, today's L4 relay.
pub const DEFAULT_PROTOCOL: &str = "any";
/// Default `first_commands`: what a v1 peer must open with (BSV-family nodes also open a second stream of
/// an association with `createstrm`; list it for them).
pub const DEFAULT_FIRST_COMMANDS: [&str; 1] = ["version"];
/// Default `max_buffered`: what one peer's session may hold beyond the relay's own two buffers (a node's
/// `addr` message being filtered; one of 1,000 IPv6 entries is 30 KB, an `addrv2` of Tor entries more).
pub const DEFAULT_MAX_BUFFERED: usize = 256 * 1024;
/// Default `slow_peer_timeout`: how long a peer may leave the node's bytes unread. Generous for a slow
/// link (the kernel's send buffer alone holds hundreds of KiB), short next to the idle timeout.
pub const DEFAULT_SLOW_PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// Smallest `max_buffered` accepted: below it an ordinary `addr` message would always be dropped.
pub const MIN_MAX_BUFFERED: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerProtocol {
    /// Any bytes: only the limits apply.
    Any,
    /// TLS end to end (stoxumd / rippled peer ports): the first record must be a ClientHello.
    Tls,
    /// Bitcoin's v1 framing, checked continuously; BIP324 v2 by `v2`.
    Bitcoin(BitcoinShape),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V2Policy {
    Allow,
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitcoinShape {
    pub magic: Magic,
    pub first_commands: Vec<Command>,
    pub caps: PayloadCaps,
    pub v2: V2Policy,
    /// Drop private, loopback and upstream addresses from the node's `addr` / `addrv2` messages.
    pub filter_addr: bool,
}

/// A byte or message budget: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerLimits {
    /// Bytes per second from the peer toward the node.
    pub bytes_in: Option<Pace>,
    /// Bytes per second from the node toward the peer.
    pub bytes_out: Option<Pace>,
    /// v1 messages per second from the peer (bitcoin fronts only).
    pub messages: Option<Pace>,
    pub max_buffered: usize,
    pub slow_peer_timeout: Duration,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            bytes_in: None,
            bytes_out: None,
            messages: None,
            max_buffered: DEFAULT_MAX_BUFFERED,
            slow_peer_timeout: DEFAULT_SLOW_PEER_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerSettings {
    pub protocol: PeerProtocol,
    pub limits: PeerLimits,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            protocol: PeerProtocol::Any,
            limits: PeerLimits::default(),
        }
    }
}
