//! CIDR sets and maps with longest-prefix match, sized for large ban lists.
//!
//! Entries live in one hash table per (address family, prefix length), so a
//! lookup costs one hash probe per prefix length actually in use — at most 33
//! for IPv4 and 129 for IPv6 — independent of the number of entries.
//!
//! The tables use std's `HashMap` with its default, randomly keyed hasher on
//! purpose: ban lists can be fed from attacker-influenced sources, and a
//! faster unkeyed hasher would let crafted address sets degrade every probe.

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// Unsigned integer form of an address, so masking and hashing are plain
/// integer operations instead of byte-array work.
trait AddrBits: Copy + Eq + Hash {
    const WIDTH: u8;

    fn masked(self, len: u8) -> Self;
}

impl AddrBits for u32 {
    const WIDTH: u8 = 32;

    fn masked(self, len: u8) -> Self {
        // `checked_shl` because shifting a u32 by 32 is an overflow, which is
        // exactly the /0 case.
        self & u32::MAX.checked_shl(u32::from(Self::WIDTH - len)).unwrap_or(0)
    }
}

impl AddrBits for u128 {
    const WIDTH: u8 = 128;

    fn masked(self, len: u8) -> Self {
        self & u128::MAX.checked_shl(u32::from(Self::WIDTH - len)).unwrap_or(0)
    }
}

#[derive(Clone)]
struct LenTable<K, V> {
    len: u8,
    entries: HashMap<K, V>,
}

/// All prefix lengths of one address family. Kept sorted longest first so the
/// first hit during a lookup is the most specific one.
#[derive(Clone)]
struct Family<K, V> {
    tables: Vec<LenTable<K, V>>,
}

impl<K: AddrBits, V> Family<K, V> {
    fn new() -> Self {
        Family { tables: Vec::new() }
    }

    fn position(&self, len: u8) -> Result<usize, usize> {
        // Reversed comparison because the vector is sorted in descending order.
        self.tables.binary_search_by(|t| len.cmp(&t.len))
    }

    fn insert(&mut self, key: K, len: u8, v: V) -> Option<V> {
        let idx = match self.position(len) {
            Ok(idx) => idx,
            Err(idx) => {
                self.tables.insert(
                    idx,
                    LenTable {
                        len,
                        entries: HashMap::new(),
                    },
                );
                idx
            }
        };
        self.tables[idx].entries.insert(key, v)
    }

    fn remove(&mut self, key: K, len: u8) -> Option<V> {
        let idx = self.position(len).ok()?;
        let old = self.tables[idx].entries.remove(&key);
        // An empty table would still cost a probe on every lookup.
        if self.tables[idx].entries.is_empty() {
            self.tables.remove(idx);
        }
        old
    }

    fn get(&self, key: K, len: u8) -> Option<&V> {
        let idx = self.position(len).ok()?;
        self.tables[idx].entries.get(&key)
    }

    fn longest_match(&self, addr: K) -> Option<(K, u8, &V)> {
        self.tables.iter().find_map(|t| {
            let key = addr.masked(t.len);
            t.entries.get(&key).map(|v| (key, t.len, v))
        })
    }

    fn iter(&self) -> impl Iterator<Item = (K, u8, &V)> + '_ {
        self.tables
            .iter()
            .flat_map(|t| t.entries.iter().map(move |(k, v)| (*k, t.len, v)))
    }

    /// Returns how many entries were dropped.
    fn retain(&mut self, mut f: impl FnMut(K, u8, &mut V) -> bool) -> usize {
        let mut dropped = 0;
        for t in &mut self.tables {
            let len = t.len;
            let before = t.entries.len();
            t.entries.retain(|k, v| f(*k, len, v));
            dropped += before - t.entries.len();
        }
        self.tables.retain(|t| !t.entries.is_empty());
        dropped
    }
}

/// Normalised table key of a network. IPv4-mapped IPv6 networks are filed as
/// IPv4 because lookups canonicalise mapped addresses to IPv4; stored in v6
/// form they could never match.
enum NetKey {
    V4(u32, u8),
    V6(u128, u8),
}

fn net_key(net: &IpNetwork) -> NetKey {
    match canonical_net(*net) {
        IpNetwork::V4(n) => {
            let len = n.prefix();
            NetKey::V4(u32::from(n.ip()).masked(len), len)
        }
        IpNetwork::V6(n) => {
            let len = n.prefix();
            NetKey::V6(u128::from(n.ip()).masked(len), len)
        }
    }
}

fn v4_net(key: u32, len: u8) -> IpNetwork {
    IpNetwork::V4(Ipv4Network::new(Ipv4Addr::from(key), len).expect("IPv4 table lengths are always within 0..=32"))
}

fn v6_net(key: u128, len: u8) -> IpNetwork {
    IpNetwork::V6(Ipv6Network::new(Ipv6Addr::from(key), len).expect("IPv6 table lengths are always within 0..=128"))
}

/// Masks host bits and turns IPv4-mapped IPv6 networks of length /96 or
/// longer into the equivalent IPv4 network.
fn canonical_net(net: IpNetwork) -> IpNetwork {
    match net {
        IpNetwork::V4(n) => v4_net(u32::from(n.ip()).masked(n.prefix()), n.prefix()),
        IpNetwork::V6(n) => {
            let len = n.prefix();
            let key = u128::from(n.ip()).masked(len);
            if len >= 96 {
                if let Some(v4) = Ipv6Addr::from(key).to_ipv4_mapped() {
                    return v4_net(u32::from(v4), len - 96);
                }
            }
            v6_net(key, len)
        }
    }
}

/// Map from CIDR prefix to a value, with longest-prefix lookup.
///
/// Networks are normalised on the way in: host bits are masked off and
/// IPv4-mapped IPv6 networks (`::ffff:0:0/96` and longer) are stored as IPv4.
/// Lookups canonicalise IPv4-mapped addresses to IPv4 as well, so a dual-stack
/// listener reporting `::ffff:192.0.2.1` matches an entry for `192.0.2.0/24`.
/// A consequence is that IPv6 entries shorter than /96 (such as `::/0`) never
/// match IPv4-mapped addresses.
pub struct PrefixMap<V> {
    v4: Family<u32, V>,
    v6: Family<u128, V>,
    len: usize,
}

impl<V> PrefixMap<V> {
    pub fn new() -> Self {
        PrefixMap {
            v4: Family::new(),
            v6: Family::new(),
            len: 0,
        }
    }

    /// Inserts `v` for `net` (after normalisation), returning the value it
    /// replaced.
    pub fn insert(&mut self, net: IpNetwork, v: V) -> Option<V> {
        let old = match net_key(&net) {
            NetKey::V4(key, len) => self.v4.insert(key, len, v),
            NetKey::V6(key, len) => self.v6.insert(key, len, v),
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, net: &IpNetwork) -> Option<V> {
        let old = match net_key(net) {
            NetKey::V4(key, len) => self.v4.remove(key, len),
            NetKey::V6(key, len) => self.v6.remove(key, len),
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The value stored for exactly this network (after normalisation), not
    /// for any network containing it.
    pub fn get_exact(&self, net: &IpNetwork) -> Option<&V> {
        match net_key(net) {
            NetKey::V4(key, len) => self.v4.get(key, len),
            NetKey::V6(key, len) => self.v6.get(key, len),
        }
    }

    /// The most specific stored network containing `ip`, and its value.
    pub fn longest_match(&self, ip: IpAddr) -> Option<(IpNetwork, &V)> {
        match ip.to_canonical() {
            IpAddr::V4(a) => self
                .v4
                .longest_match(u32::from(a))
                .map(|(key, len, v)| (v4_net(key, len), v)),
            IpAddr::V6(a) => self
                .v6
                .longest_match(u128::from(a))
                .map(|(key, len, v)| (v6_net(key, len), v)),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.longest_match(ip).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All entries: IPv4 first, then IPv6, each family from longest prefix to
    /// shortest; order within one prefix length is unspecified.
    pub fn iter(&self) -> impl Iterator<Item = (IpNetwork, &V)> + '_ {
        let v4 = self.v4.iter().map(|(k, len, v)| (v4_net(k, len), v));
        let v6 = self.v6.iter().map(|(k, len, v)| (v6_net(k, len), v));
        v4.chain(v6)
    }

    /// Keeps only the entries for which `f` returns true.
    pub fn retain(&mut self, mut f: impl FnMut(&IpNetwork, &mut V) -> bool) {
        let dropped =
            self.v4.retain(|k, len, v| f(&v4_net(k, len), v)) + self.v6.retain(|k, len, v| f(&v6_net(k, len), v));
        self.len -= dropped;
    }
}

// Written out rather than derived so that `V: Default` is not required.
impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Clone> Clone for PrefixMap<V> {
    fn clone(&self) -> Self {
        PrefixMap {
            v4: self.v4.clone(),
            v6: self.v6.clone(),
            len: self.len,
        }
    }
}

// Only the size: dumping 100,000 entries into a log line helps nobody.
impl<V> fmt::Debug for PrefixMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrefixMap")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<V> Extend<(IpNetwork, V)> for PrefixMap<V> {
    fn extend<I: IntoIterator<Item = (IpNetwork, V)>>(&mut self, iter: I) {
        for (net, v) in iter {
            self.insert(net, v);
        }
    }
}

impl<V> FromIterator<(IpNetwork, V)> for PrefixMap<V> {
    fn from_iter<I: IntoIterator<Item = (IpNetwork, V)>>(iter: I) -> Self {
        let mut map = Self::new();
        map.extend(iter);
        map
    }
}

/// A set of networks with longest-prefix membership tests.
pub type CidrSet = PrefixMap<()>;

impl PrefixMap<()> {
    pub fn from_nets(nets: impl IntoIterator<Item = IpNetwork>) -> Self {
        nets.into_iter().map(|n| (n, ())).collect()
    }
}

/// Why a network (CIDR or bare address) did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("empty network (expected e.g. `10.0.0.0/8` or `2001:db8::/32`)")]
    Empty,
    #[error("invalid IP address `{addr}` in `{text}`")]
    Address { addr: String, text: String },
    #[error("invalid prefix length `{prefix}` in `{text}`")]
    PrefixLength { prefix: String, text: String },
    #[error("prefix length `{prefix}` in `{text}` is too long for {family} (max {max})")]
    TooLong {
        prefix: String,
        text: String,
        family: &'static str,
        max: u8,
    },
    #[error("invalid network `{text}`: {source}")]
    Network {
        text: String,
        source: ipnetwork::IpNetworkError,
    },
}

/// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (taken as /32 or
/// /128).
///
/// Host bits are masked off (`10.1.2.3/8` becomes `10.0.0.0/8`) so that list
/// entries written sloppily still mean what their author intended, and
/// IPv4-mapped IPv6 networks (`::ffff:0:0/96` and longer) are converted to
/// IPv4 to match how [`PrefixMap`] looks addresses up.
pub fn parse_cidr(s: &str) -> Result<IpNetwork, CidrError> {
    if s.is_empty() {
        return Err(CidrError::Empty);
    }
    let (addr_text, prefix_text) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| CidrError::Address {
        addr: addr_text.into(),
        text: s.into(),
    })?;
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let prefix = match prefix_text {
        None => max,
        Some(p) => {
            // `u8::from_str` accepts a leading `+`; a list entry like
            // `10.0.0.0/+8` is far more likely a typo than intent.
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CidrError::PrefixLength {
                    prefix: p.into(),
                    text: s.into(),
                });
            }
            match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(CidrError::TooLong {
                        prefix: p.into(),
                        text: s.into(),
                        family: if max == 32 { "IPv4" } else { "IPv6" },
                        max,
                    });
                }
            }
        }
    };
    let net = IpNetwork::new(addr, prefix).map_err(|source| CidrError::Network { text: s.into(), source })?;
    Ok(canonical_net(net))
}

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: CidrError,
    },
}

/// Reads one CIDR (or bare address) per line. Blank lines and `#` comments,
/// whole-line or trailing, are ignored; surrounding whitespace is trimmed.
/// The first malformed line aborts the load, since silently skipping entries
/// of a ban list would leave holes nobody notices.
pub fn load_cidr_file(path: &Path) -> Result<Vec<IpNetwork>, AclError> {
    let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut nets = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let entry = match raw.split_once('#') {
            Some((before, _)) => before,
            None => raw,
        }
        .trim();
        if entry.is_empty() {
            continue;
        }
        let net = parse_cidr(entry).map_err(|reason| AclError::Parse {
            path: path.to_path_buf(),
            line: idx + 1,
            reason,
        })?;
        nets.push(net);
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        parse_cidr(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A file under the system temp dir that is deleted when dropped, named
    /// per test and process so parallel tests do not collide.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &str) -> Self {
            let path = std::env::temp_dir().join(format!("gatehouse-acl-{}-{}.txt", std::process::id(), name));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn longest_match_picks_most_specific() {
        let mut m = PrefixMap::new();
        m.insert(net("0.0.0.0/0"), "default");
        m.insert(net("10.0.0.0/8"), "ten");
        m.insert(net("10.1.0.0/16"), "ten-one");
        m.insert(net("10.1.2.0/24"), "ten-one-two");
        m.insert(net("10.1.2.3/32"), "host");

        let lm = |s: &str| m.longest_match(ip(s)).map(|(n, v)| (n.to_string(), *v));
        assert_eq!(lm("10.1.2.3"), Some(("10.1.2.3/32".into(), "host")));
        assert_eq!(lm("10.1.2.4"), Some(("10.1.2.0/24".into(), "ten-one-two")));
        assert_eq!(lm("10.1.3.4"), Some(("10.1.0.0/16".into(), "ten-one")));
        assert_eq!(lm("10.2.0.1"), Some(("10.0.0.0/8".into(), "ten")));
        assert_eq!(lm("192.0.2.1"), Some(("0.0.0.0/0".into(), "default")));
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn families_are_separate() {
        let mut m = PrefixMap::new();
        m.insert(net("0.0.0.0/0"), 4);
        assert!(m.contains(ip("198.51.100.7")));
        assert!(!m.contains(ip("2001:db8::1")));
        // `::1` is as small an integer as an IPv4 address; sharing tables
        // across families would make it match 0.0.0.0/0.
        assert!(!m.contains(ip("::1")));

        m.insert(net("::/0"), 6);
        assert_eq!(m.longest_match(ip("2001:db8::1")).unwrap().1, &6);
        assert_eq!(m.longest_match(ip("198.51.100.7")).unwrap().1, &4);

        let mut only6 = CidrSet::new();
        only6.insert(net("2001:db8::/32"), ());
        assert!(only6.contains(ip("2001:db8:ffff::1")));
        assert!(!only6.contains(ip("2001:db9::1")));
        assert!(!only6.contains(ip("32.1.13.184")));
    }

    #[test]
    fn mapped_addresses_match_ipv4_entries() {
        let set = CidrSet::from_nets([net("192.0.2.0/24")]);
        assert!(set.contains(ip("::ffff:192.0.2.55")));
        assert!(!set.contains(ip("::ffff:192.0.3.55")));
        let (n, _) = set.longest_match(ip("::ffff:192.0.2.55")).unwrap();
        assert_eq!(n.to_string(), "192.0.2.0/24");

        // Inserting the mapped form directly lands in the IPv4 table too.
        let mut m = PrefixMap::new();
        let mapped = IpNetwork::new(ip("::ffff:198.51.100.0"), 120).unwrap();
        m.insert(mapped, 1);
        assert!(m.contains(ip("198.51.100.9")));
        assert_eq!(m.get_exact(&net("198.51.100.0/24")), Some(&1));
        assert_eq!(m.iter().next().unwrap().0.to_string(), "198.51.100.0/24");

        // Not mapped: the IPv4-compatible form stays IPv6.
        assert!(!set.contains(ip("::192.0.2.55")));
    }

    #[test]
    fn remove_and_get_exact() {
        let mut m = PrefixMap::new();
        assert!(m.is_empty());
        assert_eq!(m.insert(net("10.0.0.0/8"), 1), None);
        assert_eq!(m.insert(net("10.0.0.0/8"), 2), Some(1));
        assert_eq!(m.insert(net("10.9.0.0/16"), 3), None);
        assert_eq!(m.len(), 2);

        assert_eq!(m.get_exact(&net("10.0.0.0/8")), Some(&2));
        // get_exact does not fall back to a covering network.
        assert_eq!(m.get_exact(&net("10.1.0.0/16")), None);
        // Un-normalised input is normalised before lookup.
        let sloppy = IpNetwork::new(ip("10.9.9.9"), 16).unwrap();
        assert_eq!(m.get_exact(&sloppy), Some(&3));

        assert_eq!(m.remove(&net("10.1.0.0/16")), None);
        assert_eq!(m.remove(&sloppy), Some(3));
        assert_eq!(m.len(), 1);
        assert_eq!(m.v4.tables.len(), 1, "empty /16 table is dropped");
        assert_eq!(m.longest_match(ip("10.9.0.1")).unwrap().1, &2);

        assert_eq!(m.remove(&net("10.0.0.0/8")), Some(2));
        assert!(m.is_empty());
        assert!(m.v4.tables.is_empty());
        assert!(!m.contains(ip("10.9.0.1")));
    }

    #[test]
    fn retain_iter_clone_debug() {
        let mut m: PrefixMap<u32> = [
            (net("10.0.0.0/8"), 1),
            (net("10.1.0.0/16"), 2),
            (net("2001:db8::/32"), 3),
            (net("2001:db8:1::/48"), 4),
        ]
        .into_iter()
        .collect();
        let copy = m.clone();

        let mut seen: Vec<String> = m.iter().map(|(n, v)| format!("{n}={v}")).collect();
        seen.sort();
        assert_eq!(
            seen,
            ["10.0.0.0/8=1", "10.1.0.0/16=2", "2001:db8:1::/48=4", "2001:db8::/32=3"]
        );

        m.retain(|n, v| {
            *v *= 10;
            n.prefix() < 40
        });
        assert_eq!(m.len(), 3);
        assert_eq!(m.get_exact(&net("10.1.0.0/16")), Some(&20));
        assert_eq!(m.get_exact(&net("2001:db8:1::/48")), None);
        assert_eq!(m.v6.tables.len(), 1);

        assert_eq!(copy.len(), 4);
        assert_eq!(copy.get_exact(&net("10.1.0.0/16")), Some(&2));
        assert_eq!(format!("{copy:?}"), "PrefixMap { len: 4, .. }");
        assert!(PrefixMap::<u8>::default().is_empty());
    }

    #[test]
    fn parse_bare_addresses_and_masking() {
        assert_eq!(net("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(net("2001:db8::7").to_string(), "2001:db8::7/128");
        assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("10.1.2.3/0").to_string(), "0.0.0.0/0");
        assert_eq!(net("2001:db8:abcd::1/32").to_string(), "2001:db8::/32");
        assert_eq!(net("::ffff:10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(net("::ffff:10.1.2.3/104").to_string(), "10.0.0.0/8");
        assert_eq!(net("::ffff:0:0/96").to_string(), "0.0.0.0/0");
        // Shorter than /96 is no longer purely IPv4-mapped space.
        assert_eq!(net("::ffff:0:0/95").to_string(), "::fffe:0:0/95");
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let err = |s: &str| parse_cidr(s).unwrap_err().to_string();
        assert!(err("").contains("empty"));
        assert_eq!(err("10.0.0.256/8"), "invalid IP address `10.0.0.256` in `10.0.0.256/8`");
        assert_eq!(err("example.com"), "invalid IP address `example.com` in `example.com`");
        assert_eq!(err("10.0.0.0/"), "invalid prefix length `` in `10.0.0.0/`");
        assert_eq!(err("10.0.0.0/+8"), "invalid prefix length `+8` in `10.0.0.0/+8`");
        assert_eq!(err("10.0.0.0/8/9"), "invalid prefix length `8/9` in `10.0.0.0/8/9`");
        assert_eq!(
            err("10.0.0.0/33"),
            "prefix length `33` in `10.0.0.0/33` is too long for IPv4 (max 32)"
        );
        assert_eq!(
            err("::/129"),
            "prefix length `129` in `::/129` is too long for IPv6 (max 128)"
        );
        assert_eq!(
            err("::/99999"),
            "prefix length `99999` in `::/99999` is too long for IPv6 (max 128)"
        );
    }

    #[test]
    fn load_file_with_comments() {
        let f = TempFile::new(
            "comments",
            "# ban list\n\
             \n\
             10.0.0.0/8   # whole-net\n\
             \t192.0.2.7  \n\
             2001:db8::/32#no space before comment\n\
             \x20\x20  # indented comment\n\
             10.1.2.3/16\n",
        );
        let nets = load_cidr_file(&f.0).unwrap();
        let shown: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "10.1.0.0/16"]);
    }

    #[test]
    fn load_file_reports_line_of_bad_entry() {
        let f = TempFile::new(
            "bad-line",
            "# header\n10.0.0.0/8\n\n  # note\n192.0.2.0/24\n10.0.0.0/33 # oops\n::1\n",
        );
        let e = load_cidr_file(&f.0).unwrap_err();
        match &e {
            AclError::Parse { line, reason, path } => {
                assert_eq!(*line, 6);
                assert!(reason.to_string().contains("10.0.0.0/33"), "{reason}");
                assert_eq!(path, &f.0);
            }
            other => panic!("unexpected {other:?}"),
        }
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("{}:6: ", f.0.display())), "{shown}");
    }

    #[test]
    fn load_missing_file_is_read_error() {
        let path = std::env::temp_dir().join("gatehouse-acl-definitely-missing.txt");
        let e = load_cidr_file(&path).unwrap_err();
        assert!(matches!(e, AclError::Read { .. }));
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    /// Deterministic so a failure reproduces.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn value_for(key: u32, len: u8) -> u64 {
        // Derived from the entry itself so duplicate inserts carry the same
        // value and the reference needs no overwrite logic.
        (u64::from(key) << 8) | u64::from(len)
    }

    /// The reference the hashed lookup is checked against: a plain scan over
    /// `(key, mask, len)` triples. Masks are precomputed and the loop kept
    /// bare because tests run unoptimised and this does 200 million
    /// comparisons.
    fn brute_force(entries: &[(u32, u32, u8)], addr: u32) -> Option<(u32, u8)> {
        let mut best: Option<(u32, u8)> = None;
        let mut best_len = -1i16;
        for &(key, mask, len) in entries {
            if addr & mask == key && i16::from(len) > best_len {
                best = Some((key, len));
                best_len = i16::from(len);
            }
        }
        best
    }

    #[test]
    fn hundred_thousand_entries_match_brute_force() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut entries: Vec<(u32, u8)> = Vec::with_capacity(100_000);
        let mut map = PrefixMap::new();
        while entries.len() < 100_000 {
            let len = 24 + rng.below(9) as u8;
            // Half the entries share a /24 with an earlier one, so nested
            // prefixes of several lengths compete for the same addresses;
            // uniformly random entries would almost never overlap.
            let base = if !entries.is_empty() && rng.below(2) == 0 {
                entries[rng.below(entries.len() as u64) as usize].0
            } else {
                rng.next() as u32
            };
            let low = rng.next() as u32 & !u32::MAX.masked(24);
            let key = (base.masked(24) | low).masked(len);
            let n = v4_net(key, len);
            if map.insert(n, value_for(key, len)).is_none() {
                entries.push((key, len));
            }
        }
        assert_eq!(map.len(), entries.len());
        let reference: Vec<(u32, u32, u8)> = entries
            .iter()
            .map(|&(key, len)| (key, u32::MAX.masked(len), len))
            .collect();

        for i in 0..2_000 {
            let addr = match i % 4 {
                // Inside an inserted network, random host bits.
                0 | 1 => {
                    let (key, len) = entries[rng.below(entries.len() as u64) as usize];
                    key | (rng.next() as u32 & !u32::MAX.masked(len))
                }
                // Just past an inserted network: often uncovered.
                2 => {
                    let (key, len) = entries[rng.below(entries.len() as u64) as usize];
                    (key | !u32::MAX.masked(len)).wrapping_add(1)
                }
                // Anywhere: almost always uncovered.
                _ => rng.next() as u32,
            };
            let expected = brute_force(&reference, addr);
            let got = map.longest_match(IpAddr::V4(Ipv4Addr::from(addr)));
            match (expected, got) {
                (None, None) => {}
                (Some((key, len)), Some((n, v))) => {
                    assert_eq!(n, v4_net(key, len), "addr {}", Ipv4Addr::from(addr));
                    assert_eq!(*v, value_for(key, len));
                }
                (e, g) => panic!("addr {}: expected {e:?}, got {g:?}", Ipv4Addr::from(addr)),
            }
        }
    }

    #[test]
    fn large_file_round_trip() {
        let mut rng = XorShift(42);
        let mut text = String::from("# generated\n");
        for _ in 0..100_000 {
            let a = Ipv4Addr::from(rng.next() as u32);
            text.push_str(&format!("{a}/{}\n", 24 + rng.below(9)));
        }
        let f = TempFile::new("large", &text);
        let nets = load_cidr_file(&f.0).unwrap();
        assert_eq!(nets.len(), 100_000);
        let set = CidrSet::from_nets(nets.iter().copied());
        for n in nets.iter().step_by(97) {
            assert!(set.contains(n.ip()));
            assert!(set.get_exact(n).is_some());
        }
    }
}
