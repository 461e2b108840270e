//! PROXY protocol (HAProxy spec, versions 1 and 2): reading the header a load balancer puts in front
//! of a connection, and writing a v2 header towards an upstream.
//!
//! The parser is a pure function over a byte slice so it can be fuzzed and unit tested without
//! sockets; [`read_header`] only feeds it. Every rejection happens as early as the bytes allow, so a
//! peer that sends garbage is refused without waiting for the rest of a header that can never be
//! valid.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

/// What the load balancer says about the original connection. None for LOCAL (v2) / UNKNOWN (v1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    pub version: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
    #[error("connection closed inside PROXY header")]
    Truncated,
    #[error("i/o error reading PROXY header: {0}")]
    Io(String),
}

/// Outcome of [`parse`] on a buffer that is not (yet) known to be invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header; `consumed` bytes belong to it, the rest of the buffer is payload.
    Complete { header: ProxyHeader, consumed: usize },
    /// The buffer is a strict prefix of a header that may still turn out valid.
    NeedMore,
}

/// Longest header we accept (v2 with TLVs): 16 + 520 bytes. Anything announcing more is TooLong.
pub const MAX_HEADER: usize = 536;

const V1_SIG: &[u8] = b"PROXY ";
/// The spec caps a v1 line, CRLF included, at 107 bytes ("PROXY UNKNOWN" with two full IPv6
/// addresses and ports), so a receiver never has to buffer more to find the end.
const V1_MAX: usize = 107;

const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/protocol, 16-bit length.
const V2_FIXED: usize = 16;
const V2_CMD_LOCAL: u8 = 0x0;
const V2_CMD_PROXY: u8 = 0x1;
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
const V2_UNSPEC: u8 = 0x00;
const V2_TCP4_LEN: usize = 12;
const V2_TCP6_LEN: usize = 36;

const NOT_PROXY: ProxyError = ProxyError::Malformed("not a PROXY header");

/// Where `buf` stands against a fixed signature.
#[derive(PartialEq, Eq)]
enum Sig {
    Mismatch,
    /// `buf` is shorter than the signature but agrees with it so far.
    Prefix,
    Full,
}

fn match_sig(buf: &[u8], sig: &[u8]) -> Sig {
    let n = buf.len().min(sig.len());
    if buf[..n] != sig[..n] {
        Sig::Mismatch
    } else if n < sig.len() {
        Sig::Prefix
    } else {
        Sig::Full
    }
}

/// Parse a header at the start of `buf` (v1 text or v2 binary, detected by signature).
/// NeedMore if buf is a strict prefix of a possibly valid header. Never panics on any input.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    // The signatures differ in their first byte, so at most one of them can match.
    match (match_sig(buf, V1_SIG), match_sig(buf, V2_SIG)) {
        (Sig::Full, _) => parse_v1(buf),
        (_, Sig::Full) => parse_v2(buf),
        (Sig::Prefix, _) | (_, Sig::Prefix) => Ok(Parsed::NeedMore),
        (Sig::Mismatch, Sig::Mismatch) => Err(NOT_PROXY),
    }
}

/// True when `buf` (a connection's first bytes, possibly only 1) is a prefix of,
/// or starts with, a v1 ("PROXY ") or v2 (12-byte signature) header. Used to refuse headers from untrusted peers.
///
/// Nothing read says nothing about the peer (it is what EOF looks like), so it is `false`.
pub fn starts_like_proxy(buf: &[u8]) -> bool {
    !buf.is_empty() && (match_sig(buf, V1_SIG) != Sig::Mismatch || match_sig(buf, V2_SIG) != Sig::Mismatch)
}

/// Read exactly one header from the stream. Reads in chunks (not byte by byte) into a small stack/heap buffer;
/// returns the header plus any bytes read past it (which belong to the payload, e.g. a TLS ClientHello).
pub async fn read_header<S: AsyncRead + Unpin>(s: &mut S) -> Result<(ProxyHeader, Vec<u8>), ProxyError> {
    // No valid header is longer than MAX_HEADER, so a buffer of that size always suffices; bytes
    // read beyond the header are handed back rather than lost.
    let mut buf = [0u8; MAX_HEADER];
    let mut filled = 0;
    loop {
        if let Parsed::Complete { header, consumed } = parse(&buf[..filled])? {
            return Ok((header, buf[consumed..filled].to_vec()));
        }
        if filled == buf.len() {
            // parse() decides every header by MAX_HEADER bytes; this only guards against a read
            // into an empty slice, which would look like EOF.
            return Err(ProxyError::TooLong(MAX_HEADER));
        }
        let n = match s.read(&mut buf[filled..]).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ProxyError::Io(e.to_string())),
        };
        if n == 0 {
            return Err(ProxyError::Truncated);
        }
        filled += n;
    }
}

/// Append a v2 PROXY header (command PROXY, STREAM over INET/INET6) for src→dst to `out`.
/// If the two addresses' families differ, encode both as IPv6 (IPv4-mapped). No TLVs.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    out.reserve(V2_FIXED + V2_TCP6_LEN);
    out.extend_from_slice(V2_SIG);
    out.push(0x20 | V2_CMD_PROXY);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(V2_TCP4);
            out.extend_from_slice(&(V2_TCP4_LEN as u16).to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(V2_TCP6);
            out.extend_from_slice(&(V2_TCP6_LEN as u16).to_be_bytes());
            out.extend_from_slice(&as_v6(s).octets());
            out.extend_from_slice(&as_v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

// ---------------------------------------------------------------------------------------------
// Version 1 (text)

/// `buf` starts with "PROXY ".
fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    if let Some(lf) = window.iter().position(|&b| b == b'\n') {
        let line = window[..lf]
            .strip_suffix(b"\r")
            .ok_or(ProxyError::Malformed("line not terminated by CRLF"))?;
        let header = v1_line(line)?;
        return Ok(Parsed::Complete {
            header,
            consumed: lf + 1,
        });
    }
    if buf.len() >= V1_MAX {
        return Err(ProxyError::Malformed("no CRLF within 107 bytes"));
    }
    match window.strip_suffix(b"\r") {
        // Only the LF is missing, so the line itself can be judged in full already.
        Some(line) => v1_line(line).map(|_| ())?,
        None => v1_prefix(window)?,
    }
    Ok(Parsed::NeedMore)
}

/// The spec restricts v1 to US-ASCII; refusing control bytes also stops a stray CR inside the line.
fn v1_text(bytes: &[u8]) -> Result<&str, ProxyError> {
    if !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(ProxyError::Malformed("non-printable byte in v1 header"));
    }
    std::str::from_utf8(bytes).map_err(|_| ProxyError::Malformed("non-printable byte in v1 header"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum V1Family {
    Tcp4,
    Tcp6,
}

/// A complete line without its CRLF.
fn v1_line(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let body = v1_text(line)?.strip_prefix("PROXY ").ok_or(NOT_PROXY)?;
    let (proto, rest) = match body.split_once(' ') {
        Some((proto, rest)) => (proto, Some(rest)),
        None => (body, None),
    };
    let family = match proto {
        // The spec tells receivers to ignore whatever follows UNKNOWN.
        "UNKNOWN" => {
            return Ok(ProxyHeader {
                source: None,
                destination: None,
                version: 1,
            })
        }
        "TCP4" => V1Family::Tcp4,
        "TCP6" => V1Family::Tcp6,
        _ => return Err(ProxyError::Malformed("unknown v1 protocol")),
    };
    let mut fields = rest.ok_or(ProxyError::Malformed("missing addresses"))?.split(' ');
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::Malformed("expected 4 fields after protocol"));
    };
    let src = v1_addr(src, family)?;
    let dst = v1_addr(dst, family)?;
    Ok(ProxyHeader {
        source: Some(SocketAddr::new(src, v1_port(sport)?)),
        destination: Some(SocketAddr::new(dst, v1_port(dport)?)),
        version: 1,
    })
}

/// A line cut short before its CRLF: reject it only if no continuation could make it valid. The last
/// field may be incomplete, so it gets the lenient check; every earlier one gets the full check.
fn v1_prefix(partial: &[u8]) -> Result<(), ProxyError> {
    let body = v1_text(partial)?.strip_prefix("PROXY ").ok_or(NOT_PROXY)?;
    let Some((proto, rest)) = body.split_once(' ') else {
        let could_be = ["TCP4", "TCP6", "UNKNOWN"].iter().any(|p| p.starts_with(body));
        return if could_be {
            Ok(())
        } else {
            Err(ProxyError::Malformed("unknown v1 protocol"))
        };
    };
    let family = match proto {
        "UNKNOWN" => return Ok(()),
        "TCP4" => V1Family::Tcp4,
        "TCP6" => V1Family::Tcp6,
        _ => return Err(ProxyError::Malformed("unknown v1 protocol")),
    };
    let mut fields = rest.split(' ').enumerate().peekable();
    while let Some((i, field)) = fields.next() {
        let last = fields.peek().is_none();
        match (i, last) {
            (0 | 1, false) => v1_addr(field, family).map(|_| ())?,
            (0 | 1, true) => v1_addr_prefix(field, family)?,
            (2, false) => v1_port(field).map(|_| ())?,
            (2 | 3, true) => v1_port_prefix(field)?,
            _ => return Err(ProxyError::Malformed("expected 4 fields after protocol")),
        }
    }
    Ok(())
}

fn v1_addr(field: &str, family: V1Family) -> Result<IpAddr, ProxyError> {
    let v4 = field.parse::<Ipv4Addr>();
    let v6 = field.parse::<Ipv6Addr>();
    match (family, v4, v6) {
        (V1Family::Tcp4, Ok(ip), _) => Ok(IpAddr::V4(ip)),
        (V1Family::Tcp6, _, Ok(ip)) => Ok(IpAddr::V6(ip)),
        (_, Ok(_), _) | (_, _, Ok(_)) => Err(ProxyError::Malformed("address family mismatch")),
        _ => Err(ProxyError::Malformed("bad address")),
    }
}

/// Charset and length only: enough to drop obvious garbage early, never a valid prefix.
fn v1_addr_prefix(field: &str, family: V1Family) -> Result<(), ProxyError> {
    let ok = match family {
        // "255.255.255.255"
        V1Family::Tcp4 => field.len() <= 15 && field.bytes().all(|b| b.is_ascii_digit() || b == b'.'),
        // "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
        V1Family::Tcp6 => field.len() <= 45 && field.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.'),
    };
    if ok {
        Ok(())
    } else {
        Err(ProxyError::Malformed("bad address"))
    }
}

/// Plain decimal only: `u16::from_str` alone would also take "+80", and leading zeros are refused
/// for the same reason the standard library refuses them in IPv4 octets (no ambiguity about base).
fn v1_port(field: &str) -> Result<u16, ProxyError> {
    let bad = ProxyError::Malformed("bad port");
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) || (field.len() > 1 && field.starts_with('0')) {
        return Err(bad);
    }
    field.parse().map_err(|_| bad)
}

fn v1_port_prefix(field: &str) -> Result<(), ProxyError> {
    if field.is_empty() {
        Ok(())
    } else {
        v1_port(field).map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------------
// Version 2 (binary)

/// `buf` starts with the 12-byte signature. Each fixed byte is checked as soon as it arrives.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parsed::NeedMore);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("unsupported version"));
    }
    let local = match ver_cmd & 0x0f {
        V2_CMD_LOCAL => true,
        V2_CMD_PROXY => false,
        _ => return Err(ProxyError::Malformed("unsupported command")),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(Parsed::NeedMore);
    };
    // LOCAL (health checks from the balancer itself) must be accepted whatever the family says:
    // the spec has the receiver discard the whole address block and use the real endpoints.
    let addr_len = match (local, fam) {
        (true, _) => 0,
        (false, V2_UNSPEC) => 0,
        (false, V2_TCP4) => V2_TCP4_LEN,
        (false, V2_TCP6) => V2_TCP6_LEN,
        (false, _) => return Err(ProxyError::Malformed("unsupported family")),
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(Parsed::NeedMore);
    };
    let total = V2_FIXED + usize::from(u16::from_be_bytes([hi, lo]));
    if total > MAX_HEADER {
        return Err(ProxyError::TooLong(MAX_HEADER));
    }
    if total - V2_FIXED < addr_len {
        return Err(ProxyError::Malformed("length shorter than address block"));
    }
    let Some(block) = buf.get(V2_FIXED..total) else {
        return Ok(Parsed::NeedMore);
    };
    let (source, destination) = match (local, fam) {
        (false, V2_TCP4) => {
            v2_check_tlvs(&block[V2_TCP4_LEN..])?;
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(block[at], block[at + 1], block[at + 2], block[at + 3]));
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            (SocketAddr::new(ip(0), port(8)), SocketAddr::new(ip(4), port(10)))
        }
        (false, V2_TCP6) => {
            v2_check_tlvs(&block[V2_TCP6_LEN..])?;
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                // IPv4-mapped addresses are passed on untouched; the caller canonicalises.
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            (SocketAddr::new(ip(0), port(32)), SocketAddr::new(ip(16), port(34)))
        }
        _ => {
            return Ok(Parsed::Complete {
                header: ProxyHeader {
                    source: None,
                    destination: None,
                    version: 2,
                },
                consumed: total,
            })
        }
    };
    Ok(Parsed::Complete {
        header: ProxyHeader {
            source: Some(source),
            destination: Some(destination),
            version: 2,
        },
        consumed: total,
    })
}

/// TLVs carry nothing we use, but a TLV running past the announced length means the sender and we
/// disagree about the framing, and then the payload boundary cannot be trusted either.
fn v2_check_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyError> {
    while !tlvs.is_empty() {
        let [_kind, hi, lo, rest @ ..] = tlvs else {
            return Err(ProxyError::Malformed("truncated TLV"));
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        tlvs = rest.get(len..).ok_or(ProxyError::Malformed("truncated TLV"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, consumed }) => (header, consumed),
            other => panic!("expected a complete header for {buf:?}, got {other:?}"),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn malformed(buf: &[u8]) -> &'static str {
        match parse(buf) {
            Err(ProxyError::Malformed(why)) => why,
            other => panic!("expected Malformed for {buf:?}, got {other:?}"),
        }
    }

    /// Every strict prefix of a valid header must ask for more, never be rejected.
    fn assert_prefixes_need_more(header: &[u8]) {
        for i in 0..header.len() {
            assert_eq!(
                parse(&header[..i]),
                Ok(Parsed::NeedMore),
                "prefix of {i} bytes of {header:?}"
            );
        }
    }

    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    const V4_BODY: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 7, 0x30, 0x39, 0x01, 0xbb];

    fn v6_body() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&"::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
        b
    }

    #[test]
    fn v1_tcp4() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.7 12345 443\r\n";
        let mut buf = h.to_vec();
        buf.extend_from_slice(b"\x16\x03\x01");
        let (header, consumed) = complete(&buf);
        assert_eq!(consumed, h.len());
        assert_eq!(
            header,
            ProxyHeader {
                source: Some(sa("192.0.2.1:12345")),
                destination: Some(sa("198.51.100.7:443")),
                version: 1,
            }
        );
        assert_prefixes_need_more(h);
    }

    #[test]
    fn v1_tcp6() {
        let h = b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 0 65535\r\n";
        let (header, consumed) = complete(h);
        assert_eq!(consumed, h.len());
        assert_eq!(header.source, Some(sa("[2001:db8::1]:0")));
        // Mapped addresses are returned as sent.
        assert_eq!(header.destination, Some(sa("[::ffff:10.0.0.1]:65535")));
        assert_eq!(header.version, 1);
        assert_prefixes_need_more(h);
    }

    #[test]
    fn v1_unknown() {
        let none = ProxyHeader {
            source: None,
            destination: None,
            version: 1,
        };
        assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (none, 15));
        // The longest line the spec allows: exactly 107 bytes.
        let longest = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), V1_MAX);
        assert_eq!(complete(longest), (none, V1_MAX));
        assert_prefixes_need_more(longest);
        assert_prefixes_need_more(b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v1_malformed() {
        let cases: &[&[u8]] = &[
            b"PROXY TCP4 192.0.2.256 198.51.100.7 1 2\r\n",
            b"PROXY TCP4 192.0.2.01 198.51.100.7 1 2\r\n",
            b"PROXY TCP4 192.0.2 198.51.100.7 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 65536 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 +1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 01 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1 -2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1 \r\n",
            b"PROXY TCP4 192.0.2.1  198.51.100.7 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 \r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 3\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n",
            b"PROXY TCP4\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1\r2\r\n",
            b"PROXY TCP5 192.0.2.1 198.51.100.7 1 2\r\n",
            b"PROXY tcp4 192.0.2.1 198.51.100.7 1 2\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
            b"PROXY  TCP4 192.0.2.1 198.51.100.7 1 2\r\n",
            b"PROXY TCP6 2001:db8::1%eth0 ::1 1 2\r\n",
            b"PROXY UNKNOWN \xff\r\n",
        ];
        for case in cases {
            malformed(case);
        }
        assert_eq!(
            malformed(b"PROXY TCP4 2001:db8::1 198.51.100.7 1 2\r\n"),
            "address family mismatch"
        );
        assert_eq!(
            malformed(b"PROXY TCP6 2001:db8::1 198.51.100.7 1 2\r\n"),
            "address family mismatch"
        );
        assert_eq!(malformed(b"PROXY TCP4 192.0.2.1 198.51.100.7 1 99999\r\n"), "bad port");
        // 107 bytes and still no CRLF: no valid line can follow.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX, b'a');
        assert_eq!(malformed(&long), "no CRLF within 107 bytes");
        long.truncate(V1_MAX - 1);
        assert_eq!(parse(&long), Ok(Parsed::NeedMore));
        // LF at byte 108 is one too far.
        long.extend_from_slice(b"\r\n");
        assert_eq!(long.len(), V1_MAX + 1);
        malformed(&long);
    }

    #[test]
    fn v1_garbage_rejected_before_crlf() {
        for partial in [
            &b"PROXY TCP7"[..],
            b"PROXY TCP4 1.2.3.x",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 123456",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r",
            b"PROXY TCP4 1.2.3.4  ",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00",
        ] {
            malformed(partial);
        }
    }

    #[test]
    fn not_proxy() {
        for buf in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"GET / HTTP/1.1\r\n",
            b"PROXz",
            b"\r\n\r\n\0\r\nQUIT\r",
        ] {
            assert_eq!(parse(buf), Err(NOT_PROXY));
        }
        assert_eq!(parse(b""), Ok(Parsed::NeedMore));
    }

    #[test]
    fn starts_like() {
        assert!(starts_like_proxy(b"P"));
        assert!(starts_like_proxy(b"PROXY"));
        assert!(starts_like_proxy(b"PROXY TCP4 garbage"));
        assert!(starts_like_proxy(b"\r"));
        assert!(starts_like_proxy(b"\r\n\r\n\0"));
        assert!(starts_like_proxy(&v2(0x21, 0x11, &V4_BODY)));
        assert!(!starts_like_proxy(b""));
        assert!(!starts_like_proxy(b"\x16\x03\x01"));
        assert!(!starts_like_proxy(b"PROXX"));
        assert!(!starts_like_proxy(b"PROXYTCP4"));
        assert!(!starts_like_proxy(b"\r\n\r\n\0\r\nQUIT!"));
    }

    #[test]
    fn v2_tcp4() {
        let h = v2(0x21, 0x11, &V4_BODY);
        let mut buf = h.clone();
        buf.extend_from_slice(b"payload");
        let (header, consumed) = complete(&buf);
        assert_eq!(consumed, 28);
        assert_eq!(
            header,
            ProxyHeader {
                source: Some(sa("192.0.2.1:12345")),
                destination: Some(sa("198.51.100.7:443")),
                version: 2,
            }
        );
        assert_prefixes_need_more(&h);
    }

    #[test]
    fn v2_tcp6() {
        let h = v2(0x21, 0x21, &v6_body());
        let (header, consumed) = complete(&h);
        assert_eq!(consumed, 52);
        assert_eq!(header.source, Some(sa("[2001:db8::1]:12345")));
        assert_eq!(header.destination, Some(sa("[::ffff:10.0.0.1]:443")));
        assert_prefixes_need_more(&h);
    }

    #[test]
    fn v2_local_and_unspec() {
        let none = ProxyHeader {
            source: None,
            destination: None,
            version: 2,
        };
        assert_eq!(complete(&v2(0x20, 0x00, &[])), (none, 16));
        // LOCAL ignores whatever family and addresses come with it.
        assert_eq!(complete(&v2(0x20, 0x11, &V4_BODY)), (none, 28));
        assert_eq!(complete(&v2(0x20, 0x31, &[0; 216])), (none, 232));
        assert_eq!(complete(&v2(0x20, 0x11, &[])), (none, 16));
        assert_eq!(complete(&v2(0x21, 0x00, &[1, 2, 3])), (none, 19));
        assert_prefixes_need_more(&v2(0x20, 0x11, &V4_BODY));
    }

    #[test]
    fn v2_with_tlvs() {
        let mut body = V4_BODY.to_vec();
        // An ALPN TLV, then a NOOP with an empty value, then an AUTHORITY.
        body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x00]);
        body.extend_from_slice(&[0x02, 0x00, 0x03, b'a', b'.', b'b']);
        let h = v2(0x21, 0x11, &body);
        let (header, consumed) = complete(&h);
        assert_eq!(consumed, h.len());
        assert_eq!(header.source, Some(sa("192.0.2.1:12345")));
        assert_prefixes_need_more(&h);

        // The largest block allowed still parses; one more byte is TooLong.
        let mut big = v6_body();
        let pad = MAX_HEADER - V2_FIXED - big.len() - 3;
        big.extend_from_slice(&[0x04, (pad >> 8) as u8, pad as u8]);
        big.resize(MAX_HEADER - V2_FIXED, 0);
        let h = v2(0x21, 0x21, &big);
        assert_eq!(complete(&h).1, MAX_HEADER);
        big.push(0);
        let h = v2(0x21, 0x21, &big);
        // Refused as soon as the length field is in, without waiting for the body.
        assert_eq!(parse(&h[..16]), Err(ProxyError::TooLong(MAX_HEADER)));
        assert_eq!(parse(&h), Err(ProxyError::TooLong(MAX_HEADER)));

        let mut bad = V4_BODY.to_vec();
        bad.extend_from_slice(&[0x01, 0x00, 0x05, b'h', b'2']);
        assert_eq!(malformed(&v2(0x21, 0x11, &bad)), "truncated TLV");
        let mut bad = V4_BODY.to_vec();
        bad.extend_from_slice(&[0x01, 0x00]);
        assert_eq!(malformed(&v2(0x21, 0x11, &bad)), "truncated TLV");
    }

    #[test]
    fn v2_malformed() {
        assert_eq!(malformed(&v2(0x11, 0x11, &V4_BODY)), "unsupported version");
        assert_eq!(malformed(&v2(0x31, 0x11, &V4_BODY)), "unsupported version");
        assert_eq!(malformed(&v2(0x22, 0x11, &V4_BODY)), "unsupported command");
        assert_eq!(malformed(&v2(0x2f, 0x11, &V4_BODY)), "unsupported command");
        for fam in [0x12, 0x22, 0x31, 0x32, 0x10, 0x01, 0x20, 0x41] {
            assert_eq!(malformed(&v2(0x21, fam, &[0; 216])), "unsupported family");
        }
        assert_eq!(
            malformed(&v2(0x21, 0x11, &V4_BODY[..11])),
            "length shorter than address block"
        );
        assert_eq!(
            malformed(&v2(0x21, 0x21, &V4_BODY)),
            "length shorter than address block"
        );
        // Bad fixed bytes are caught before the rest arrives.
        assert_eq!(malformed(&v2(0x11, 0x11, &V4_BODY)[..13]), "unsupported version");
        assert_eq!(malformed(&v2(0x21, 0x31, &V4_BODY)[..14]), "unsupported family");
    }

    #[test]
    fn v2_truncated_needs_more() {
        let h = v2(0x21, 0x21, &v6_body());
        assert_eq!(parse(&h[..h.len() - 1]), Ok(Parsed::NeedMore));
        assert_eq!(parse(&h[..12]), Ok(Parsed::NeedMore));
        assert_eq!(parse(&h[..15]), Ok(Parsed::NeedMore));
    }

    #[test]
    fn encode_round_trip() {
        for (src, dst, len, fam) in [
            ("192.0.2.1:12345", "198.51.100.7:443", 28, 0x11),
            ("[2001:db8::1]:1", "[2001:db8::2]:65535", 52, 0x21),
            ("192.0.2.1:12345", "[2001:db8::2]:443", 52, 0x21),
            ("[2001:db8::1]:0", "198.51.100.7:443", 52, 0x21),
        ] {
            let (src, dst) = (sa(src), sa(dst));
            let mut out = b"prefix".to_vec();
            encode_v2(src, dst, &mut out);
            assert_eq!(&out[..6], b"prefix");
            let h = &out[6..];
            assert_eq!(h.len(), len);
            assert_eq!(h[12], 0x21);
            assert_eq!(h[13], fam);
            let (header, consumed) = complete(h);
            assert_eq!(consumed, len);
            let mapped = |a: SocketAddr| {
                if fam == 0x21 {
                    SocketAddr::new(IpAddr::V6(as_v6(a.ip())), a.port())
                } else {
                    a
                }
            };
            assert_eq!(header.source, Some(mapped(src)));
            assert_eq!(header.destination, Some(mapped(dst)));
            assert_eq!(header.version, 2);
        }
    }

    /// Hands out the given chunks one read at a time, so headers arrive split across reads.
    struct Chunked(Vec<Vec<u8>>);

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if !self.0.is_empty() {
                let chunk = self.0.remove(0);
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.insert(0, chunk[n..].to_vec());
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn read_header_returns_leftover() {
        let mut s = Chunked(vec![
            b"PROXY TCP4 192.0.2.1 ".to_vec(),
            b"198.51.100.7 12345 443\r\n\x16\x03".to_vec(),
            b"\x01rest".to_vec(),
        ]);
        let (header, rest) = read_header(&mut s).await.unwrap();
        assert_eq!(header.source, Some(sa("192.0.2.1:12345")));
        assert_eq!(rest, b"\x16\x03");

        let mut h = v2(0x21, 0x11, &V4_BODY);
        h.extend_from_slice(b"hello");
        let mut s = std::io::Cursor::new(h);
        let (header, rest) = read_header(&mut s).await.unwrap();
        assert_eq!(header.destination, Some(sa("198.51.100.7:443")));
        assert_eq!(rest, b"hello");
    }

    #[tokio::test]
    async fn read_header_over_duplex() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut h = Vec::new();
            encode_v2(sa("[2001:db8::1]:5"), sa("[2001:db8::2]:6"), &mut h);
            // Split inside the fixed part to exercise the NeedMore path.
            client.write_all(&h[..14]).await.unwrap();
            tokio::task::yield_now().await;
            client.write_all(&h[14..]).await.unwrap();
            client.write_all(b"\x16").await.unwrap();
            client
        });
        let (header, rest) = read_header(&mut server).await.unwrap();
        assert_eq!(header.source, Some(sa("[2001:db8::1]:5")));
        // The payload byte may or may not have arrived with the header; it is never lost.
        let _client = writer.await.unwrap();
        let mut rest = rest;
        if rest.is_empty() {
            let mut b = [0u8; 1];
            server.read_exact(&mut b).await.unwrap();
            rest.push(b[0]);
        }
        assert_eq!(rest, b"\x16");
    }

    #[tokio::test]
    async fn read_header_errors() {
        let mut s = std::io::Cursor::new(b"PROXY TCP4 192.0.2.1".to_vec());
        assert_eq!(read_header(&mut s).await, Err(ProxyError::Truncated));
        let mut s = std::io::Cursor::new(Vec::new());
        assert_eq!(read_header(&mut s).await, Err(ProxyError::Truncated));
        let mut s = std::io::Cursor::new(b"\x16\x03\x01\x00".to_vec());
        assert_eq!(read_header(&mut s).await, Err(NOT_PROXY));
        let mut s = std::io::Cursor::new(v2(0x21, 0x11, &[0; 600]));
        assert_eq!(read_header(&mut s).await, Err(ProxyError::TooLong(MAX_HEADER)));
    }

    /// Deterministic noise: xorshift64, so failures reproduce without a rand dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        // Pure noise rarely gets past the first byte, so most inputs start from a real header
        // prefix and then turn random, to reach the deeper branches.
        let seeds: [&[u8]; 6] = [
            b"",
            b"PROXY ",
            b"PROXY TCP4 ",
            b"PROXY TCP6 2001:db8::",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24",
        ];
        let alphabet = b"0123456789abcdefABCDEF.: \r\nPROXYTCP46UNKOW\x00\xff";
        let mut buf = Vec::with_capacity(700);
        let (mut complete, mut need_more, mut rejected) = (0, 0, 0);
        for _ in 0..10_000 {
            let r = rng.next();
            buf.clear();
            buf.extend_from_slice(seeds[(r % seeds.len() as u64) as usize]);
            let len = (rng.next() % 600) as usize;
            let textual = r & 0x100 != 0;
            for _ in 0..len {
                let x = rng.next();
                buf.push(if textual {
                    alphabet[(x % alphabet.len() as u64) as usize]
                } else {
                    x as u8
                });
            }
            let result = parse(&buf);
            if !buf.is_empty() {
                assert_eq!(starts_like_proxy(&buf), result != Err(NOT_PROXY));
            }
            match result {
                Ok(Parsed::Complete { header, consumed }) => {
                    assert!(consumed <= buf.len() && consumed <= MAX_HEADER);
                    // Deciding must not depend on bytes past the header.
                    assert_eq!(parse(&buf[..consumed]), Ok(Parsed::Complete { header, consumed }));
                    complete += 1;
                }
                Ok(Parsed::NeedMore) => {
                    assert!(buf.len() < MAX_HEADER);
                    need_more += 1;
                }
                Err(_) => rejected += 1,
            }
        }
        // Guards the generator itself: every outcome must be exercised.
        assert!(
            complete > 100 && need_more > 100 && rejected > 100,
            "{complete} {need_more} {rejected}"
        );
    }
}
