//! Bitcoin's v1 peer framing, as a gateway checks it without terminating the connection: how a
//! connection opens (v1 `version`, a BIP324 v2 candidate, or something else), a streaming header and
//! checksum check that never buffers a payload, and the scrubbing of `addr` / `addrv2` payloads.
//!
//! Every function here is pure: bytes in, a verdict (and for the scrubber, bytes) out.

use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Magic, command, length, checksum.
pub const HEADER_LEN: usize = 24;
pub const COMMAND_LEN: usize = 12;
/// What decides v1 against a v2 candidate: the magic and the first command (BIP324's rule).
pub const OPENING_LEN: usize = 16;
/// Bitcoin Core's `MAX_PROTOCOL_MESSAGE_LENGTH`: no message a Core node accepts is longer.
pub const PROTOCOL_MAX_PAYLOAD: u32 = 4_000_000;
/// BIP155's cap on entries of one `addr` / `addrv2` message.
pub const MAX_ADDR_ENTRIES: u64 = 1000;

pub type Magic = [u8; 4];
pub type Command = [u8; COMMAND_LEN];

/// Why a client's bytes are not the peer protocol the front expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A v1 header with another network's magic (a node of another chain, or a misconfigured one).
    #[error("wrong network magic")]
    WrongMagic,
    /// An HTTP request (scanners, browsers).
    #[error("http request")]
    Http,
    /// The right magic, but the connection did not open with an accepted first command.
    #[error("first message is not version")]
    FirstNotVersion,
    /// Not v1 and the front refuses BIP324 v2 (also random bytes, which v2 cannot be told apart from).
    #[error("not v1 (v2 refused)")]
    V2Refused,
    /// A command that is not NUL-padded printable ASCII.
    #[error("malformed command")]
    BadCommand,
    /// A payload length above the command's cap.
    #[error("payload too large")]
    Oversized,
    /// The payload does not match the header's checksum.
    #[error("bad checksum")]
    BadChecksum,
}

impl Violation {
    pub const ALL: [Violation; 7] = [
        Violation::WrongMagic,
        Violation::Http,
        Violation::FirstNotVersion,
        Violation::V2Refused,
        Violation::BadCommand,
        Violation::Oversized,
        Violation::BadChecksum,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Violation::WrongMagic => "wrong_magic",
            Violation::Http => "http",
            Violation::FirstNotVersion => "first_not_version",
            Violation::V2Refused => "v2_refused",
            Violation::BadCommand => "bad_command",
            Violation::Oversized => "oversized",
            Violation::BadChecksum => "bad_checksum",
        }
    }

    /// Whether it counts toward a ban. A refused v2 attempt does not: a v2-capable node that is refused
    /// reconnects at once with v1, as BIP324 has it, and must not be banned for trying.
    pub fn is_offence(self) -> bool {
        self != Violation::V2Refused
    }
}

/// A command name as it sits in a header: ASCII, NUL-padded. None when `name` is empty, too long or not
/// printable.
pub fn command(name: &str) -> Option<Command> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > COMMAND_LEN || !b.iter().all(|c| c.is_ascii_graphic()) {
        return None;
    }
    let mut c = [0u8; COMMAND_LEN];
    c[..b.len()].copy_from_slice(b);
    Some(c)
}

/// Printable ASCII, then NULs only to the end, at least one printable byte.
pub fn command_is_valid(c: &Command) -> bool {
    let n = c.iter().position(|&b| b == 0).unwrap_or(COMMAND_LEN);
    n > 0 && c[..n].iter().all(u8::is_ascii_graphic) && c[n..].iter().all(|&b| b == 0)
}

/// First 4 bytes of the double SHA-256 of `payload`.
pub fn checksum(payload: &[u8]) -> [u8; 4] {
    let d = Sha256::digest(Sha256::digest(payload));
    [d[0], d[1], d[2], d[3]]
}

/// What a connection's first [`OPENING_LEN`] bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// The magic and an accepted first command: a v1 peer.
    V1,
    /// Nothing v1 or HTTP recognisable: a BIP324 v2 candidate (64 random-looking bytes), or noise.
    V2Candidate,
    /// Something the front refuses whatever its v2 setting.
    Refused(Violation),
}

const HTTP_METHODS: [&[u8]; 9] = [
    b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"CONN", b"PATC", b"PRI ",
];

/// Classifies a connection by its first bytes (at least [`OPENING_LEN`] of them; fewer only at EOF).
pub fn classify_opening(first: &[u8], magic: &Magic, first_commands: &[Command]) -> Opening {
    if first.len() >= OPENING_LEN && first[..4] == magic[..] {
        let cmd: &[u8] = &first[4..OPENING_LEN];
        if first_commands.iter().any(|c| c[..] == *cmd) {
            return Opening::V1;
        }
        return Opening::Refused(Violation::FirstNotVersion);
    }
    if first.len() >= 4 && HTTP_METHODS.iter().any(|m| first[..4] == m[..]) {
        return Opening::Refused(Violation::Http);
    }
    if first.len() >= OPENING_LEN {
        let mut c = [0u8; COMMAND_LEN];
        c.copy_from_slice(&first[4..OPENING_LEN]);
        if command_is_valid(&c) {
            return Opening::Refused(Violation::WrongMagic);
        }
    }
    Opening::V2Candidate
}

/// The largest payload each command may carry: a default and a few overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadCaps {
    pub default: u32,
    pub overrides: Vec<(Command, u32)>,
}

impl PayloadCaps {
    pub fn cap(&self, c: &Command) -> u32 {
        self.overrides
            .iter()
            .find(|(k, _)| k == c)
            .map_or(self.default, |(_, v)| *v)
    }
}

impl Default for PayloadCaps {
    fn default() -> Self {
        PayloadCaps {
            default: PROTOCOL_MAX_PAYLOAD,
            overrides: Vec::new(),
        }
    }
}

/// Checks a v1 byte stream as it passes, one chunk at a time: every header's magic, command and
/// length, and every payload's checksum. Holds 24 bytes of header and a hash state, never a payload.
#[derive(Clone)]
pub struct V1Check {
    magic: Magic,
    header: [u8; HEADER_LEN],
    have: usize,
    remaining: u32,
    expect: [u8; 4],
    hash: Sha256,
    messages: u64,
}

impl V1Check {
    pub fn new(magic: Magic) -> V1Check {
        V1Check {
            magic,
            header: [0; HEADER_LEN],
            have: 0,
            remaining: 0,
            expect: [0; 4],
            hash: Sha256::new(),
            messages: 0,
        }
    }

    /// Messages completed (checksum verified) so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Whether the stream sits between messages.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Feeds the next bytes of the stream; the messages completed in them, or the first violation.
    pub fn feed(&mut self, mut data: &[u8], caps: &PayloadCaps) -> Result<u32, Violation> {
        let mut done = 0u32;
        while !data.is_empty() {
            if self.have < HEADER_LEN {
                let n = (HEADER_LEN - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                // The magic is judged as soon as it is in, so a stream of garbage stops at its 4th byte.
                if self.have >= 4 && self.header[..4] != self.magic {
                    return Err(Violation::WrongMagic);
                }
                if self.have < HEADER_LEN {
                    continue;
                }
                let mut cmd = [0u8; COMMAND_LEN];
                cmd.copy_from_slice(&self.header[4..16]);
                if !command_is_valid(&cmd) {
                    return Err(Violation::BadCommand);
                }
                let len = u32::from_le_bytes([self.header[16], self.header[17], self.header[18], self.header[19]]);
                if len > caps.cap(&cmd) {
                    return Err(Violation::Oversized);
                }
                self.expect.copy_from_slice(&self.header[20..24]);
                self.remaining = len;
                self.hash = Sha256::new();
            } else {
                let n = (self.remaining as usize).min(data.len());
                self.hash.update(&data[..n]);
                self.remaining -= n as u32;
                data = &data[n..];
            }
            if self.have == HEADER_LEN && self.remaining == 0 {
                let first = std::mem::take(&mut self.hash).finalize();
                let d = Sha256::digest(first);
                if d[..4] != self.expect {
                    return Err(Violation::BadChecksum);
                }
                self.have = 0;
                self.messages += 1;
                done += 1;
            }
        }
        Ok(done)
    }
}

/// Why an `addr` / `addrv2` payload could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("truncated")]
    Truncated,
    #[error("more than {MAX_ADDR_ENTRIES} entries")]
    TooMany,
    #[error("trailing bytes")]
    Trailing,
}

/// What [`filter_addr`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filtered {
    pub kept: u64,
    pub dropped: u64,
}

fn compact_size(b: &[u8], at: &mut usize) -> Result<u64, AddrError> {
    let first = *b.get(*at).ok_or(AddrError::Truncated)?;
    let width = match first {
        0xfd => 2,
        0xfe => 4,
        0xff => 8,
        n => {
            *at += 1;
            return Ok(u64::from(n));
        }
    };
    let bytes = b.get(*at + 1..*at + 1 + width).ok_or(AddrError::Truncated)?;
    let mut v = [0u8; 8];
    v[..width].copy_from_slice(bytes);
    *at += 1 + width;
    Ok(u64::from_le_bytes(v))
}

fn put_compact_size(n: u64, out: &mut Vec<u8>) {
    match n {
        0..=0xfc => out.push(n as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xfe);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        _ => {
            out.push(0xff);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// Copies an `addr` (`v2 = false`: time, services, 16-byte address, port) or `addrv2` (BIP155) payload
/// to `out` without the entries whose address `drop` names; the count is rewritten. Entries of
/// networks other than IPv4 and IPv6 (Tor, I2P, CJDNS) are kept. On error `out` holds a partial copy.
pub fn filter_addr(
    payload: &[u8],
    v2: bool,
    drop: &mut dyn FnMut(IpAddr) -> bool,
    out: &mut Vec<u8>,
) -> Result<Filtered, AddrError> {
    let mut at = 0;
    let count = compact_size(payload, &mut at)?;
    if count > MAX_ADDR_ENTRIES {
        return Err(AddrError::TooMany);
    }
    // The new count goes first and is known only at the end: entries are gathered as ranges.
    let count_at = out.len();
    let mut f = Filtered { kept: 0, dropped: 0 };
    let mut entries: Vec<(usize, usize)> = Vec::new();
    for _ in 0..count {
        let start = at;
        let ip = if v2 {
            at += 4;
            if at > payload.len() {
                return Err(AddrError::Truncated);
            }
            compact_size(payload, &mut at)?;
            let net = *payload.get(at).ok_or(AddrError::Truncated)?;
            at += 1;
            let len = compact_size(payload, &mut at)?;
            let len = usize::try_from(len).map_err(|_| AddrError::Truncated)?;
            let a = payload.get(at..at.saturating_add(len)).ok_or(AddrError::Truncated)?;
            at += len;
            match (net, a.len()) {
                (1, 4) => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
                (2, 16) => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(a).expect("16 bytes")))),
                _ => None,
            }
        } else {
            let a = payload.get(at + 12..at + 28).ok_or(AddrError::Truncated)?;
            at += 28;
            Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(a).expect("16 bytes"))).to_canonical())
        };
        at += 2;
        if at > payload.len() {
            return Err(AddrError::Truncated);
        }
        if ip.is_some_and(&mut *drop) {
            f.dropped += 1;
        } else {
            f.kept += 1;
            entries.push((start, at));
        }
    }
    if at != payload.len() {
        return Err(AddrError::Trailing);
    }
    out.truncate(count_at);
    put_compact_size(f.kept, out);
    for (s, e) in entries {
        out.extend_from_slice(&payload[s..e]);
    }
    Ok(f)
}

/// Appends one v1 message (header with length and checksum, then `payload`) to `out`.
pub fn write_message(magic: &Magic, command: &Command, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(magic);
    out.extend_from_slice(command);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(payload));
    out.extend_from_slice(payload);
}

/// Rewrites a node's v1 stream toward a peer, one chunk at a time, dropping `addr` / `addrv2` entries
/// that `drop` names. Other messages pass unchanged; an address message is held whole (up to
/// `max_held` bytes; a larger one is dropped whole) and sent on rewritten. A stream that stops being v1
/// framing (it comes from the operator's own node, so this means another protocol) is passed on as is.
pub struct AddrScrub {
    magic: Magic,
    max_held: usize,
    header: [u8; HEADER_LEN],
    have: usize,
    state: ScrubState,
    held: Vec<u8>,
    /// Address entries dropped, and address messages dropped whole (too large or malformed).
    pub entries_dropped: u64,
    pub messages_dropped: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScrubState {
    Header,
    Pass(u32),
    Hold { v2: bool, left: u32 },
    Skip(u32),
    Opaque,
}

const ADDR: Command = *b"addr\0\0\0\0\0\0\0\0";
const ADDRV2: Command = *b"addrv2\0\0\0\0\0\0";

impl AddrScrub {
    pub fn new(magic: Magic, max_held: usize) -> AddrScrub {
        AddrScrub {
            magic,
            max_held,
            header: [0; HEADER_LEN],
            have: 0,
            state: ScrubState::Header,
            held: Vec::new(),
            entries_dropped: 0,
            messages_dropped: 0,
        }
    }

    /// Bytes held now (a partial header, an address message being gathered).
    pub fn held(&self) -> usize {
        self.have + self.held.len()
    }

    /// Feeds the next chunk from the node; appends what the peer gets now to `out`.
    pub fn feed(&mut self, mut data: &[u8], drop: &mut dyn FnMut(IpAddr) -> bool, out: &mut Vec<u8>) {
        while !data.is_empty() {
            match self.state {
                ScrubState::Opaque => {
                    out.extend_from_slice(data);
                    return;
                }
                ScrubState::Header => {
                    let n = (HEADER_LEN - self.have).min(data.len());
                    self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                    self.have += n;
                    data = &data[n..];
                    if self.have < HEADER_LEN {
                        continue;
                    }
                    self.have = 0;
                    let len = u32::from_le_bytes([self.header[16], self.header[17], self.header[18], self.header[19]]);
                    let cmd: &[u8] = &self.header[4..16];
                    if self.header[..4] != self.magic {
                        out.extend_from_slice(&self.header);
                        self.state = ScrubState::Opaque;
                    } else if cmd == ADDR || cmd == ADDRV2 {
                        let v2 = cmd == ADDRV2;
                        if len as usize > self.max_held {
                            self.messages_dropped += 1;
                            self.state = ScrubState::Skip(len);
                        } else {
                            self.held.clear();
                            self.state = ScrubState::Hold { v2, left: len };
                        }
                    } else {
                        out.extend_from_slice(&self.header);
                        self.state = ScrubState::Pass(len);
                    }
                }
                ScrubState::Pass(left) => {
                    let n = (left as usize).min(data.len());
                    out.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    self.state = ScrubState::Pass(left - n as u32);
                }
                ScrubState::Skip(left) => {
                    let n = (left as usize).min(data.len());
                    data = &data[n..];
                    self.state = ScrubState::Skip(left - n as u32);
                }
                ScrubState::Hold { v2, left } => {
                    let n = (left as usize).min(data.len());
                    self.held.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    self.state = ScrubState::Hold {
                        v2,
                        left: left - n as u32,
                    };
                }
            }
            match self.state {
                ScrubState::Pass(0) | ScrubState::Skip(0) => self.state = ScrubState::Header,
                ScrubState::Hold { v2, left: 0 } => {
                    self.state = ScrubState::Header;
                    self.emit_held(v2, drop, out);
                }
                _ => {}
            }
        }
    }

    fn emit_held(&mut self, v2: bool, drop: &mut dyn FnMut(IpAddr) -> bool, out: &mut Vec<u8>) {
        let held = std::mem::take(&mut self.held);
        let cmd = if v2 { ADDRV2 } else { ADDR };
        let mut payload = Vec::with_capacity(held.len());
        match filter_addr(&held, v2, drop, &mut payload) {
            Ok(f) if f.dropped == 0 => {
                out.extend_from_slice(&self.header);
                out.extend_from_slice(&held);
            }
            Ok(f) => {
                self.entries_dropped += f.dropped;
                if f.kept > 0 {
                    write_message(&self.magic, &cmd, &payload, out);
                } else {
                    self.messages_dropped += 1;
                }
            }
            // An address message the gateway cannot read cannot be vouched for: it does not go out.
            Err(_) => self.messages_dropped += 1,
        }
        // Keep the allocation for the next one, unless it was unusually large.
        let mut held = held;
        held.clear();
        if held.capacity() <= 64 * 1024 {
            self.held = held;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: Magic = [0xda, 0xb5, 0xbf, 0xfa];

    fn msg(cmd: &str, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_message(&MAGIC, &command(cmd).unwrap(), payload, &mut v);
        v
    }

    fn firsts() -> Vec<Command> {
        vec![command("version").unwrap(), command("createstrm").unwrap()]
    }

    #[test]
    fn openings_are_classified() {
        let v = msg("version", &[1; 100]);
        assert_eq!(classify_opening(&v[..16], &MAGIC, &firsts()), Opening::V1);
        let c = msg("createstrm", &[1; 10]);
        assert_eq!(classify_opening(&c[..16], &MAGIC, &firsts()), Opening::V1);
        let p = msg("ping", &[1; 8]);
        assert_eq!(
            classify_opening(&p[..16], &MAGIC, &firsts()),
            Opening::Refused(Violation::FirstNotVersion)
        );
        let mut other = v.clone();
        other[..4].copy_from_slice(&[0xf9, 0xbe, 0xb4, 0xd9]);
        assert_eq!(
            classify_opening(&other[..16], &MAGIC, &firsts()),
            Opening::Refused(Violation::WrongMagic)
        );
        assert_eq!(
            classify_opening(b"GET / HTTP/1.1\r\nHost", &MAGIC, &firsts()),
            Opening::Refused(Violation::Http)
        );
        let random: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(97).wrapping_add(13)).collect();
        assert_eq!(classify_opening(&random, &MAGIC, &firsts()), Opening::V2Candidate);
    }

    #[test]
    fn a_stream_of_good_messages_passes_in_any_chunking() {
        let mut s = msg("version", &[7; 123]);
        s.extend(msg("verack", &[]));
        s.extend(msg("ping", &[1, 2, 3, 4, 5, 6, 7, 8]));
        for step in [1, 2, 7, 24, 25, 1000] {
            let mut c = V1Check::new(MAGIC);
            let mut n = 0;
            for chunk in s.chunks(step) {
                n += c.feed(chunk, &PayloadCaps::default()).unwrap();
            }
            assert_eq!(n, 3, "step {step}");
            assert!(c.at_boundary());
        }
    }

    #[test]
    fn each_violation_is_named() {
        let caps = PayloadCaps {
            default: 1000,
            overrides: vec![(command("block").unwrap(), 5000)],
        };
        let feed = |b: &[u8]| V1Check::new(MAGIC).feed(b, &caps);
        let mut bad = msg("ping", &[1; 8]);
        bad[20] ^= 1;
        assert_eq!(feed(&bad), Err(Violation::BadChecksum));
        assert_eq!(feed(&msg("ping", &[0; 1001])), Err(Violation::Oversized));
        assert_eq!(feed(&msg("block", &[0; 1001])), Ok(1));
        let mut cmd = msg("ping", &[]);
        cmd[6] = 0;
        cmd[7] = b'x';
        assert_eq!(feed(&cmd), Err(Violation::BadCommand));
        assert_eq!(feed(&[0xda, 0xb5, 0xbf, 0x00]), Err(Violation::WrongMagic));
        // A second message with another magic is caught too.
        let mut two = msg("ping", &[]);
        two.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(feed(&two), Err(Violation::WrongMagic));
    }

    fn v1_entry(ip: [u8; 16], port: u16) -> Vec<u8> {
        let mut e = vec![1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0];
        e.extend_from_slice(&ip);
        e.extend_from_slice(&port.to_be_bytes());
        e
    }

    fn mapped(a: [u8; 4]) -> [u8; 16] {
        Ipv4Addr::from(a).to_ipv6_mapped().octets()
    }

    fn private(ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => a.is_private() || a.is_loopback(),
            IpAddr::V6(a) => a.is_loopback(),
        }
    }

    #[test]
    fn addr_entries_are_filtered_and_the_count_rewritten() {
        let mut p = vec![3];
        p.extend(v1_entry(mapped([8, 8, 8, 8]), 8333));
        p.extend(v1_entry(mapped([10, 0, 0, 5]), 8333));
        p.extend(v1_entry(Ipv6Addr::LOCALHOST.octets(), 8333));
        let mut out = Vec::new();
        let f = filter_addr(&p, false, &mut private, &mut out).unwrap();
        assert_eq!(f, Filtered { kept: 1, dropped: 2 });
        assert_eq!(out[0], 1);
        assert_eq!(&out[1..], &v1_entry(mapped([8, 8, 8, 8]), 8333)[..]);

        // addrv2: IPv4 private dropped, Tor kept.
        let mut p = vec![2];
        p.extend([0, 0, 0, 0, 1, 1, 4, 192, 168, 1, 1, 0x20, 0x8d]);
        p.extend([0, 0, 0, 0, 1, 4, 32]);
        p.extend([7u8; 32]);
        p.extend([0x20, 0x8d]);
        let mut out = Vec::new();
        let f = filter_addr(&p, true, &mut private, &mut out).unwrap();
        assert_eq!(f, Filtered { kept: 1, dropped: 1 });
        assert_eq!(out[0], 1);
        assert_eq!(
            filter_addr(&p[..10], true, &mut private, &mut Vec::new()),
            Err(AddrError::Truncated)
        );
        let mut long = p.clone();
        long.push(0);
        assert_eq!(
            filter_addr(&long, true, &mut private, &mut Vec::new()),
            Err(AddrError::Trailing)
        );
    }

    #[test]
    fn the_scrubber_rewrites_addr_in_any_chunking() {
        let mut p = vec![2];
        p.extend(v1_entry(mapped([8, 8, 4, 4]), 8333));
        p.extend(v1_entry(mapped([127, 0, 0, 1]), 8333));
        let mut stream = msg("ping", &[1; 8]);
        stream.extend(msg("addr", &p));
        stream.extend(msg("pong", &[2; 8]));
        let mut kept = vec![1];
        kept.extend(v1_entry(mapped([8, 8, 4, 4]), 8333));
        let mut want = msg("ping", &[1; 8]);
        want.extend(msg("addr", &kept));
        want.extend(msg("pong", &[2; 8]));
        for step in [1, 3, 24, 31, 4096] {
            let mut s = AddrScrub::new(MAGIC, 1 << 16);
            let mut out = Vec::new();
            for c in stream.chunks(step) {
                s.feed(c, &mut private, &mut out);
            }
            assert_eq!(out, want, "step {step}");
            assert_eq!(s.entries_dropped, 1);
            // The rewritten message passes the v1 check.
            assert_eq!(V1Check::new(MAGIC).feed(&out, &PayloadCaps::default()), Ok(3));
        }
        // Too large to hold: dropped whole.
        let mut s = AddrScrub::new(MAGIC, 10);
        let mut out = Vec::new();
        s.feed(&stream, &mut private, &mut out);
        assert_eq!(out, [msg("ping", &[1; 8]), msg("pong", &[2; 8])].concat());
        assert_eq!(s.messages_dropped, 1);
    }
}
