//! The `Forwarded` header (RFC 7239) the API front sends toward the node when configured: the client's
//! address as the gateway knows it (after PROXY intake). Requests to the node are built afresh, so a
//! `Forwarded` or `X-Forwarded-For` header a client sent never reaches it.

use hyper::header::{HeaderName, HeaderValue};
use std::net::IpAddr;

pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// `for=<ip>`; an IPv6 address is bracketed and quoted, as the RFC's grammar requires.
pub fn value(client: IpAddr) -> HeaderValue {
    let text = match client {
        IpAddr::V4(a) => format!("for={a}"),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => format!("for={v4}"),
            None => format!("for=\"[{a}]\""),
        },
    };
    // Built from an address's digits, dots, colons, brackets and quotes: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("for=unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_rfc_7239() {
        assert_eq!(value("192.0.2.60".parse().unwrap()), "for=192.0.2.60");
        assert_eq!(value("2001:db8::1".parse().unwrap()), "for=\"[2001:db8::1]\"");
        assert_eq!(value("::ffff:192.0.2.1".parse().unwrap()), "for=192.0.2.1");
    }
}
