//! Why a connection ended: one value per cause, so every stage that ends a connection names the cause
//! the same way and the close line renders it in one place.
//!
//! The rendered text is the `reason` field of the "connection closed" log line; operators and tests
//! match on it, so each variant's text is fixed.

use std::borrow::Cow;
use std::fmt;

/// Which side ended the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseSide {
    /// The client hung up or broke the connection.
    Client,
    /// The backend hung up, broke the connection, or could not be reached.
    Upstream,
    /// The gateway cut it: a timeout, a limit, a policy, or its own shutdown.
    Gateway,
}

/// Why a connection ended, as the close line reports it.
#[derive(Debug)]
pub enum CloseReason {
    /// The client closed its side (for a relay: first, then the upstream followed).
    ClientClosed,
    /// Reading from or writing to the client failed.
    ClientError,
    /// The upstream closed its side (for a relay: first, then the client followed).
    UpstreamClosed,
    /// Reading from or writing to the upstream failed.
    UpstreamError,
    /// No backend of the pool accepted a connection.
    UpstreamUnreachable,
    /// The Electrum backend refused the protocol version the gateway had already agreed with the client
    /// on its behalf (it answered differently before).
    UpstreamRefusedVersion,
    /// Nothing arrived from the client within the front's idle timeout.
    IdleTimeout,
    /// The PROXY header, the TLS handshake or the WebSocket upgrade did not finish in time.
    HandshakeTimeout,
    /// The TLS handshake failed (the client spoke something else, or refused the certificate).
    Tls(std::io::Error),
    /// The intake thread could not hand the connection to the workers (out of descriptors).
    Handover(std::io::Error),
    /// The WebSocket upgrade failed.
    WebSocketHandshake(tokio_tungstenite::tungstenite::Error),
    /// The gateway is shutting down and drained the connection.
    Shutdown,
    /// The client stopped reading its replies.
    SlowReader,
    /// The client's request line arrived too slowly.
    SlowRequestLine,
    /// The client's group went over the cost hard limit.
    CostHardLimit,
    /// The process-wide memory budget was reached and this session was among the largest.
    MemoryBudget,
    /// The client broke the protocol more often than the ban policy allows.
    ProtocolViolations,
    /// The client sent a request before `server.version` where the front requires it first.
    NoServerVersion,
    /// The client's `server.version` carried no readable protocol version.
    BadServerVersion,
    /// The client's protocol range does not meet the one the front polices.
    UnsupportedProtocolVersion,
    /// A peer broke the Bitcoin peer framing the front checks (or opened with something else).
    PeerProtocol(crate::wire::bitcoin::Violation),
    /// A peer of a TLS peer port did not open with a TLS ClientHello.
    NotClientHello(crate::wire::tls_hello::HelloError),
    /// A peer left the node's bytes unread longer than the front's slow-peer timeout.
    SlowPeer,
}

impl CloseReason {
    pub fn side(&self) -> CloseSide {
        match self {
            CloseReason::ClientClosed
            | CloseReason::ClientError
            | CloseReason::Tls(_)
            | CloseReason::WebSocketHandshake(_) => CloseSide::Client,
            CloseReason::UpstreamClosed
            | CloseReason::UpstreamError
            | CloseReason::UpstreamUnreachable
            | CloseReason::UpstreamRefusedVersion => CloseSide::Upstream,
            _ => CloseSide::Gateway,
        }
    }

    /// The close line's text; borrowed for every cause that carries no error of its own.
    pub fn text(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            CloseReason::ClientClosed => "client closed",
            CloseReason::ClientError => "client error",
            CloseReason::UpstreamClosed => "upstream closed",
            CloseReason::UpstreamError => "upstream error",
            CloseReason::UpstreamUnreachable => "upstream unreachable",
            CloseReason::UpstreamRefusedVersion => "upstream refused version",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::HandshakeTimeout => "handshake timeout",
            CloseReason::Tls(e) => return Cow::Owned(format!("tls error: {e}")),
            CloseReason::Handover(e) => return Cow::Owned(format!("handover failed: {e}")),
            CloseReason::WebSocketHandshake(e) => return Cow::Owned(format!("websocket handshake failed: {e}")),
            CloseReason::Shutdown => "shutdown",
            CloseReason::SlowReader => "slow reader",
            CloseReason::SlowRequestLine => "slow request line",
            CloseReason::CostHardLimit => "cost hard limit",
            CloseReason::MemoryBudget => "memory budget",
            CloseReason::ProtocolViolations => "protocol violations",
            CloseReason::NoServerVersion => "no server.version",
            CloseReason::BadServerVersion => "bad server.version",
            CloseReason::UnsupportedProtocolVersion => "unsupported protocol version",
            CloseReason::PeerProtocol(v) => return Cow::Owned(format!("peer protocol: {v}")),
            CloseReason::NotClientHello(e) => return Cow::Owned(format!("not a tls clienthello: {e}")),
            CloseReason::SlowPeer => "slow peer",
        })
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_the_close_line_reasons() {
        let cases = [
            (CloseReason::ClientClosed, "client closed", CloseSide::Client),
            (CloseReason::ClientError, "client error", CloseSide::Client),
            (CloseReason::UpstreamClosed, "upstream closed", CloseSide::Upstream),
            (CloseReason::UpstreamError, "upstream error", CloseSide::Upstream),
            (
                CloseReason::UpstreamUnreachable,
                "upstream unreachable",
                CloseSide::Upstream,
            ),
            (
                CloseReason::UpstreamRefusedVersion,
                "upstream refused version",
                CloseSide::Upstream,
            ),
            (CloseReason::IdleTimeout, "idle timeout", CloseSide::Gateway),
            (CloseReason::HandshakeTimeout, "handshake timeout", CloseSide::Gateway),
            (CloseReason::Shutdown, "shutdown", CloseSide::Gateway),
            (CloseReason::SlowReader, "slow reader", CloseSide::Gateway),
            (CloseReason::SlowRequestLine, "slow request line", CloseSide::Gateway),
            (CloseReason::CostHardLimit, "cost hard limit", CloseSide::Gateway),
            (CloseReason::MemoryBudget, "memory budget", CloseSide::Gateway),
            (
                CloseReason::ProtocolViolations,
                "protocol violations",
                CloseSide::Gateway,
            ),
            (CloseReason::NoServerVersion, "no server.version", CloseSide::Gateway),
            (CloseReason::BadServerVersion, "bad server.version", CloseSide::Gateway),
            (
                CloseReason::UnsupportedProtocolVersion,
                "unsupported protocol version",
                CloseSide::Gateway,
            ),
        ];
        for (reason, text, side) in cases {
            assert_eq!(reason.to_string(), text);
            assert_eq!(reason.side(), side, "{text}");
        }
        let v = CloseReason::PeerProtocol(crate::wire::bitcoin::Violation::BadChecksum);
        assert_eq!(v.to_string(), "peer protocol: bad checksum");
        assert_eq!(v.side(), CloseSide::Gateway);
        let h = CloseReason::NotClientHello(crate::wire::tls_hello::HelloError::NotHandshake);
        assert_eq!(h.to_string(), "not a tls clienthello: not a handshake record");
        assert_eq!(CloseReason::SlowPeer.to_string(), "slow peer");
        let tls = CloseReason::Tls(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad record"));
        assert_eq!(tls.to_string(), "tls error: bad record");
        assert_eq!(tls.side(), CloseSide::Client);
    }
}
