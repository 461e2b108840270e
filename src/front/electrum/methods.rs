//! The method table: which Electrum methods exist for which protocol version and chain profile, what
//! the gateway does with them beyond forwarding, and what they cost.
//!
//! Costs follow ElectrumX's defaults so an operator's `COST_*` settings carry over, with
//! two deliberate differences: `blockchain.block.headers` is charged on the count the backend will
//! actually serve (at most 2016) rather than on the count asked for, and methods whose answer size
//! varies are charged a base here and pay the rest through their response bytes.
//!
//! Version ranges are from the Electrum protocol's change log: a method unknown at the negotiated
//! version is refused at the gateway, so a client cannot reach backend code paths the negotiated
//! protocol does not define.

use super::jsonrpc::{param_array_len, param_raw, param_str, param_u64, ErrorCode, RawJson, RpcError};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Bitcoin,
    /// The Kevacoin ElectrumX fork: Bitcoin's methods up to protocol 1.4.2 plus `blockchain.keva.*`
    /// and `blockchain.block.count`.
    Kevacoin,
}

/// An Electrum protocol version; "1.4" is `ProtoVersion(1, 4, 0)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtoVersion(pub u16, pub u16, pub u16);

impl ProtoVersion {
    /// Parses "1", "1.4" or "1.4.2".
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('.');
        let mut next = |required: bool| match parts.next() {
            None if !required => Some(0),
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok(),
            _ => None,
        };
        let v = ProtoVersion(next(true)?, next(false)?, next(false)?);
        parts.next().is_none().then_some(v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid protocol version {0:?} (expected e.g. \"1.4\" or \"1.4.2\")")]
pub struct BadVersion(pub String);

impl FromStr for ProtoVersion {
    type Err = BadVersion;
    fn from_str(s: &str) -> Result<Self, BadVersion> {
        ProtoVersion::parse(s).ok_or_else(|| BadVersion(s.to_owned()))
    }
}

/// Written the way ElectrumX writes it: "1.4", "1.4.2".
impl fmt::Display for ProtoVersion {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)?;
        if self.2 != 0 {
            write!(f, ".{}", self.2)?;
        }
        Ok(())
    }
}

/// What the gateway does with a method beyond forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    None,
    /// `server.version`: negotiated by the gateway (first message, only once).
    Version,
    /// `server.features`: the reply names the backend's host and ports; rewrite it.
    Features,
    /// `server.peers.subscribe`: drop private, loopback and backend addresses from the reply.
    Peers,
    /// `server.add_peer`: answer `false` locally; forwarded, the backend would record our address.
    AddPeer,
    /// `server.banner`: may be replaced, it can leak the daemon version.
    Banner,
    /// Counts toward subscription caps (`blockchain.scripthash.subscribe`). Not used for
    /// `blockchain.headers.subscribe`: that is one idempotent subscription per session, and ElectrumX
    /// does not count it either.
    Subscribe,
    Unsubscribe,
}

/// How a method's cost depends on its parameters or its answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CostKind {
    /// The base cost only.
    Fixed,
    /// Base + min(count, 2016) / 50, count = params[1] or "count"; + 1.0 with a non-zero
    /// `cp_height` (params[2]), as ElectrumX charges for the merkle proof.
    BlockHeaders,
    /// Base (0.25), + 1.0 with a non-zero `cp_height` (params[1]).
    BlockHeader,
    /// Base + hex length / 5000 of params[0] (a raw transaction, or for a package the array of them).
    Broadcast,
    /// Base at request time, + this much per returned item, charged on the response
    /// ([`reply_item_cost`]).
    PerReplyItem(f64),
    /// Base at request time; the answer's bytes pay the rest through the bandwidth charge.
    ResponseSize,
}

/// Whether a method is heavy for the backend: it counts against the backend's heavy in-flight budget
/// as well as its window (see `upstream::budget`). Heavy means reading a lot of the index (a history, the
/// unspent outputs, a mempool slice, thousands of headers) or asking the node for a decoded transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heavy {
    No,
    Yes,
    /// `blockchain.block.headers` asking for more than [`HEAVY_HEADERS`].
    LargeCount,
    /// `blockchain.transaction.get` with `verbose` true (the node decodes the transaction).
    Verbose,
}

/// Header counts above this make `blockchain.block.headers` heavy: two cost units' worth, beyond what a
/// wallet catching up a few blocks asks for.
pub const HEAVY_HEADERS: u64 = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct MethodInfo {
    pub name: &'static str,
    pub min: ProtoVersion,
    /// Inclusive upper bound; `None` = still current.
    pub max: Option<ProtoVersion>,
    /// `None` = every profile.
    pub profile: Option<Profile>,
    pub base_cost: f64,
    pub special: Special,
    pub cost_kind: CostKind,
    pub heavy: Heavy,
}

/// ElectrumX's MAX_CHUNK_SIZE: `blockchain.block.headers` never returns more.
pub const MAX_HEADERS: u64 = 2016;
/// The Kevacoin fork refuses larger `blockchain.keva.get_transactions_info` requests.
pub const MAX_KEVA_TXIDS: usize = 200;

const V1_0: ProtoVersion = ProtoVersion(1, 0, 0);
const V1_1: ProtoVersion = ProtoVersion(1, 1, 0);
const V1_2: ProtoVersion = ProtoVersion(1, 2, 0);
const V1_3: ProtoVersion = ProtoVersion(1, 3, 0);
const V1_4: ProtoVersion = ProtoVersion(1, 4, 0);
const V1_4_2: ProtoVersion = ProtoVersion(1, 4, 2);
const V1_6: ProtoVersion = ProtoVersion(1, 6, 0);
/// Last version before 1.6 (1.5 was skipped; the newest before it is 1.4.3).
const BEFORE_1_6: ProtoVersion = ProtoVersion(1, 5, u16::MAX);

const fn m(name: &'static str, min: ProtoVersion, base_cost: f64) -> MethodInfo {
    MethodInfo {
        name,
        min,
        max: None,
        profile: None,
        base_cost,
        special: Special::None,
        cost_kind: CostKind::Fixed,
        heavy: Heavy::No,
    }
}

const fn heavy(mut info: MethodInfo, heavy: Heavy) -> MethodInfo {
    info.heavy = heavy;
    info
}

const fn special(mut info: MethodInfo, special: Special) -> MethodInfo {
    info.special = special;
    info
}

const fn kind(mut info: MethodInfo, cost_kind: CostKind) -> MethodInfo {
    info.cost_kind = cost_kind;
    info
}

const fn keva(name: &'static str, base_cost: f64, cost_kind: CostKind) -> MethodInfo {
    MethodInfo {
        name,
        // The fork serves these at every protocol version it speaks (it stops at 1.4.2).
        min: V1_0,
        max: None,
        profile: Some(Profile::Kevacoin),
        base_cost,
        special: Special::None,
        cost_kind,
        // Each reads up to thousands of entries (keyvalues, hashtags, reactions) or 200 transactions.
        heavy: Heavy::Yes,
    }
}

/// Every method the gateway forwards or answers. Names are unique.
pub static METHODS: &[MethodInfo] = &[
    special(m("server.version", V1_0, 0.5), Special::Version),
    m("server.ping", V1_2, 0.1),
    special(m("server.features", V1_1, 0.2), Special::Features),
    special(m("server.banner", V1_0, 0.5), Special::Banner),
    // Not in ElectrumX's cost table; priced like the banner, its sibling static text.
    m("server.donation_address", V1_0, 0.5),
    special(m("server.peers.subscribe", V1_0, 1.0), Special::Peers),
    special(m("server.add_peer", V1_1, 100.0), Special::AddPeer),
    m("blockchain.headers.subscribe", V1_0, 0.25),
    kind(m("blockchain.block.header", V1_3, 0.25), CostKind::BlockHeader),
    heavy(
        kind(m("blockchain.block.headers", V1_2, 0.0), CostKind::BlockHeaders),
        Heavy::LargeCount,
    ),
    m("blockchain.estimatefee", V1_0, 2.1),
    MethodInfo {
        max: Some(BEFORE_1_6),
        ..m("blockchain.relayfee", V1_0, 1.0)
    },
    m("mempool.get_fee_histogram", V1_2, 1.0),
    m("mempool.get_info", V1_6, 1.0),
    heavy(m("blockchain.transaction.get", V1_0, 1.0), Heavy::Verbose),
    kind(m("blockchain.transaction.broadcast", V1_0, 0.25), CostKind::Broadcast),
    // New in 1.6, no ElectrumX price to follow: charged like a broadcast of all its transactions.
    kind(
        m("blockchain.transaction.broadcast_package", V1_6, 0.25),
        CostKind::Broadcast,
    ),
    m("blockchain.transaction.get_merkle", V1_0, 0.5),
    m("blockchain.transaction.id_from_pos", V1_4, 0.5),
    m("blockchain.scripthash.get_balance", V1_1, 1.0),
    heavy(m("blockchain.scripthash.listunspent", V1_1, 1.0), Heavy::Yes),
    heavy(
        kind(
            m("blockchain.scripthash.get_history", V1_1, 0.5),
            CostKind::ResponseSize,
        ),
        Heavy::Yes,
    ),
    // Not in ElectrumX's cost table; its answer grows with the mempool like get_history's, so priced alike.
    heavy(
        kind(
            m("blockchain.scripthash.get_mempool", V1_1, 0.5),
            CostKind::ResponseSize,
        ),
        Heavy::Yes,
    ),
    // The status it answers is a hash of the whole history: the same reads as get_history.
    heavy(
        special(
            kind(m("blockchain.scripthash.subscribe", V1_1, 0.5), CostKind::ResponseSize),
            Special::Subscribe,
        ),
        Heavy::Yes,
    ),
    special(
        m("blockchain.scripthash.unsubscribe", V1_4_2, 0.1),
        Special::Unsubscribe,
    ),
    heavy(keva("blockchain.block.count", 0.25, CostKind::Fixed), Heavy::No),
    keva("blockchain.keva.get_keyvalues", 5.0, CostKind::PerReplyItem(0.5)),
    keva("blockchain.keva.get_hashtag", 5.0, CostKind::PerReplyItem(0.5)),
    // Reads up to 2000 replies per call.
    keva(
        "blockchain.keva.get_keyvalue_reactions",
        25.0,
        CostKind::PerReplyItem(0.5),
    ),
    keva(
        "blockchain.keva.get_transactions_info",
        5.0,
        CostKind::PerReplyItem(0.5),
    ),
];

impl MethodInfo {
    pub fn allowed(&self, profile: Profile, negotiated: ProtoVersion) -> bool {
        self.profile.is_none_or(|p| p == profile)
            && negotiated >= self.min
            && self.max.is_none_or(|max| negotiated <= max)
    }
}

/// `None` = unknown, or not available for that profile at that version.
pub fn lookup(name: &str, profile: Profile, negotiated: ProtoVersion) -> Option<&'static MethodInfo> {
    METHODS
        .iter()
        .find(|m| m.name == name)
        .filter(|m| m.allowed(profile, negotiated))
}

/// Whether `name` is in the table for any profile or version (config validation of cost overrides).
pub fn is_known(name: &str) -> bool {
    METHODS.iter().any(|m| m.name == name)
}

/// The `server.version` entry, which the session handles before a version is negotiated.
pub fn version_info() -> &'static MethodInfo {
    &METHODS[0]
}

/// Entry for a method the operator allowed explicitly (`extra_methods`) although `lookup` refused
/// it: the table's entry whatever its version and profile, else a generic one (`name` "extra",
/// cost 1.0, no special handling), since a method outside the table has no known price. `None` only
/// for an empty name.
pub fn extra(name: &str) -> Option<&'static MethodInfo> {
    if name.is_empty() {
        return None;
    }
    Some(METHODS.iter().find(|m| m.name == name).unwrap_or(&EXTRA))
}

static EXTRA: MethodInfo = m("extra", V1_0, 1.0);

/// Whether this request of the method is heavy for the backend (see [`Heavy`]).
pub fn is_heavy(info: &MethodInfo, params: Option<RawJson>) -> bool {
    match info.heavy {
        Heavy::No => false,
        Heavy::Yes => true,
        // An unreadable count is served as a full chunk, as it is charged.
        Heavy::LargeCount => param_u64(params, 1, "count").is_none_or(|c| c > HEAVY_HEADERS),
        Heavy::Verbose => param_raw(params, 1, "verbose").is_some_and(|v| v.get() == "true"),
    }
}

/// Cost of a request before forwarding: base (or its configured override) plus the part that
/// depends on the parameters. Parameters the gateway cannot read are charged as their worst case:
/// the backend may still read them (or `validate` rejects them first).
pub fn request_cost(info: &MethodInfo, params: Option<RawJson>, overrides: &HashMap<String, f64>) -> f64 {
    let base = overrides.get(info.name).copied().unwrap_or(info.base_cost);
    let cp_extra = |index| match param_raw(params, index, "cp_height") {
        None => 0.0,
        Some(_) => match param_u64(params, index, "cp_height") {
            Some(0) => 0.0,
            _ => 1.0,
        },
    };
    match info.cost_kind {
        CostKind::Fixed | CostKind::PerReplyItem(_) | CostKind::ResponseSize => base,
        CostKind::BlockHeader => base + cp_extra(1),
        CostKind::BlockHeaders => {
            let count = param_u64(params, 1, "count").map_or(MAX_HEADERS, |c| c.min(MAX_HEADERS));
            // ElectrumX skips the proof (and its charge) when no headers come back.
            let proof = if count == 0 { 0.0 } else { cp_extra(2) };
            base + count as f64 / 50.0 + proof
        }
        CostKind::Broadcast => base + broadcast_hex_len(params) as f64 / 5000.0,
    }
}

/// Hex characters in params[0]: the transaction for a broadcast; for a package, the raw length of
/// the array (within a few bytes per transaction of the hex total, and never less).
fn broadcast_hex_len(params: Option<RawJson>) -> usize {
    if let Some(hex) = param_str(params, 0, "raw_tx") {
        return hex.len();
    }
    param_raw(params, 0, "raw_tx")
        .or_else(|| param_raw(params, 0, "raw_txs"))
        .map_or(0, |raw| raw.get().len())
}

/// The response-time part of a [`CostKind::PerReplyItem`] method's cost (0 for other kinds).
pub fn reply_item_cost(info: &MethodInfo, items: usize) -> f64 {
    match info.cost_kind {
        CostKind::PerReplyItem(each) => each * items as f64,
        _ => 0.0,
    }
}

/// Request-time checks beyond the method name, for arguments the cost depends on or that are
/// expensive to let through. Errors carry ElectrumX's BAD_REQUEST code (1) and the message the
/// gateway answers with; the backend still validates everything else.
pub fn validate(info: &MethodInfo, params: Option<RawJson>) -> Result<(), RpcError> {
    match info.name {
        "blockchain.block.header" => {
            non_negative(params, 0, "height", true)?;
            non_negative(params, 1, "cp_height", false)
        }
        "blockchain.block.headers" => {
            non_negative(params, 0, "start_height", true)?;
            non_negative(params, 1, "count", true)?;
            non_negative(params, 2, "cp_height", false)
        }
        "blockchain.keva.get_transactions_info" => {
            let n = param_array_len(params, 0, "tx_hashes").ok_or_else(|| {
                RpcError::new(
                    ErrorCode::BadRequest,
                    "tx_hashes should be an array of transaction hashes",
                )
            })?;
            if n > MAX_KEVA_TXIDS {
                return Err(RpcError::new(
                    ErrorCode::BadRequest,
                    format!("too many txids: {n} > {MAX_KEVA_TXIDS}"),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn non_negative(params: Option<RawJson>, index: usize, name: &str, required: bool) -> Result<(), RpcError> {
    let present = param_raw(params, index, name).is_some();
    if (present || required) && param_u64(params, index, name).is_none() {
        return Err(RpcError::new(
            ErrorCode::BadRequest,
            format!("{name} should be a non-negative integer"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_4_3: ProtoVersion = ProtoVersion(1, 4, 3);

    fn p(s: &str) -> RawJson<'_> {
        RawJson::parse(s).unwrap()
    }

    fn cost(name: &str, params: &str) -> f64 {
        let info = lookup(name, Profile::Bitcoin, V1_4)
            .or_else(|| lookup(name, Profile::Kevacoin, V1_4))
            .unwrap();
        request_cost(info, Some(p(params)), &HashMap::new())
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn versions_parse_order_and_display() {
        assert_eq!(ProtoVersion::parse("1.4"), Some(ProtoVersion(1, 4, 0)));
        assert_eq!(ProtoVersion::parse("1.4.2"), Some(ProtoVersion(1, 4, 2)));
        assert_eq!(ProtoVersion::parse("2"), Some(ProtoVersion(2, 0, 0)));
        for bad in ["", "1.", ".4", "1.4.2.1", "1.x", "-1.4", "1.4 ", "+1.4", "1.70000"] {
            assert_eq!(ProtoVersion::parse(bad), None, "{bad:?}");
        }
        assert!("1.4.2".parse::<ProtoVersion>().unwrap() > "1.4".parse().unwrap());
        assert!(ProtoVersion(1, 10, 0) > ProtoVersion(1, 9, 9));
        assert_eq!(ProtoVersion(1, 4, 0).to_string(), "1.4");
        assert_eq!(ProtoVersion(1, 4, 2).to_string(), "1.4.2");
        assert!("junk".parse::<ProtoVersion>().is_err());
    }

    #[test]
    fn helpers_for_config_and_session() {
        assert_eq!(version_info().name, "server.version");
        assert_eq!(version_info().special, Special::Version);
        assert!(is_known("blockchain.keva.get_hashtag"));
        assert!(is_known("blockchain.relayfee"));
        assert!(!is_known("blockchain.outpoint.subscribe"));
        assert_eq!(extra("blockchain.relayfee").unwrap().name, "blockchain.relayfee");
        let e = extra("blockchain.outpoint.subscribe").unwrap();
        assert_eq!((e.name, e.base_cost, e.special), ("extra", 1.0, Special::None));
        assert!(extra("").is_none());
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in METHODS.iter().enumerate() {
            assert!(METHODS[i + 1..].iter().all(|b| b.name != a.name), "{}", a.name);
        }
    }

    #[test]
    fn lookup_by_version_and_profile() {
        let b = Profile::Bitcoin;
        let k = Profile::Kevacoin;
        assert!(lookup("no.such.method", b, V1_4).is_none());
        assert!(lookup("", b, V1_4).is_none());
        assert!(lookup("server.version", b, V1_0).is_some());

        assert!(lookup("blockchain.relayfee", b, V1_4_3).is_some());
        assert!(lookup("blockchain.relayfee", b, V1_6).is_none());
        assert!(lookup("mempool.get_info", b, V1_4_3).is_none());
        assert!(lookup("mempool.get_info", b, V1_6).is_some());
        assert!(lookup("blockchain.transaction.broadcast_package", b, V1_4).is_none());
        assert!(lookup("blockchain.transaction.broadcast_package", b, V1_6).is_some());
        assert!(lookup("blockchain.scripthash.unsubscribe", b, V1_4).is_none());
        assert!(lookup("blockchain.scripthash.unsubscribe", b, V1_4_2).is_some());
        assert!(lookup("blockchain.scripthash.get_history", b, V1_0).is_none());
        assert!(lookup("blockchain.scripthash.get_history", b, V1_1).is_some());
        assert!(lookup("blockchain.block.header", b, V1_2).is_none());
        assert!(lookup("blockchain.block.header", b, V1_3).is_some());

        // Kevacoin methods only for the Kevacoin profile; common methods for both.
        for name in [
            "blockchain.block.count",
            "blockchain.keva.get_keyvalues",
            "blockchain.keva.get_hashtag",
            "blockchain.keva.get_keyvalue_reactions",
            "blockchain.keva.get_transactions_info",
        ] {
            assert!(lookup(name, b, V1_4).is_none(), "{name}");
            assert!(lookup(name, k, V1_4_2).is_some(), "{name}");
        }
        assert!(lookup("blockchain.scripthash.subscribe", k, V1_4).is_some());

        let sub = lookup("blockchain.scripthash.subscribe", b, V1_4).unwrap();
        assert_eq!(
            (sub.special, sub.cost_kind),
            (Special::Subscribe, CostKind::ResponseSize)
        );
        assert_eq!(lookup("server.add_peer", b, V1_4).unwrap().special, Special::AddPeer);
        assert_eq!(lookup("server.features", b, V1_4).unwrap().special, Special::Features);
        assert_eq!(
            lookup("server.peers.subscribe", b, V1_4).unwrap().special,
            Special::Peers
        );
        assert_eq!(lookup("server.banner", b, V1_4).unwrap().special, Special::Banner);
        assert_eq!(lookup("server.version", b, V1_4).unwrap().special, Special::Version);
        assert_eq!(
            lookup("blockchain.scripthash.unsubscribe", b, V1_6).unwrap().special,
            Special::Unsubscribe
        );
    }

    #[test]
    fn default_costs() {
        for (name, want) in [
            ("server.version", 0.5),
            ("server.ping", 0.1),
            ("server.features", 0.2),
            ("server.banner", 0.5),
            ("server.donation_address", 0.5),
            ("server.peers.subscribe", 1.0),
            ("server.add_peer", 100.0),
            ("blockchain.headers.subscribe", 0.25),
            ("blockchain.estimatefee", 2.1),
            ("blockchain.relayfee", 1.0),
            ("mempool.get_fee_histogram", 1.0),
            ("blockchain.transaction.get", 1.0),
            ("blockchain.transaction.get_merkle", 0.5),
            ("blockchain.transaction.id_from_pos", 0.5),
            ("blockchain.scripthash.get_balance", 1.0),
            ("blockchain.scripthash.listunspent", 1.0),
            ("blockchain.scripthash.get_history", 0.5),
            ("blockchain.scripthash.get_mempool", 0.5),
            ("blockchain.scripthash.subscribe", 0.5),
            ("blockchain.block.count", 0.25),
            ("blockchain.keva.get_keyvalues", 5.0),
            ("blockchain.keva.get_hashtag", 5.0),
            ("blockchain.keva.get_keyvalue_reactions", 25.0),
            ("blockchain.keva.get_transactions_info", 5.0),
        ] {
            assert!(close(cost(name, "[]"), want), "{name}: {}", cost(name, "[]"));
        }
        assert_eq!(
            METHODS.iter().find(|m| m.name == "mempool.get_info").unwrap().base_cost,
            1.0
        );
        let info = lookup("blockchain.keva.get_keyvalue_reactions", Profile::Kevacoin, V1_4).unwrap();
        assert!(close(reply_item_cost(info, 2000), 1000.0));
        let info = lookup("blockchain.transaction.get", Profile::Bitcoin, V1_4).unwrap();
        assert_eq!(reply_item_cost(info, 10), 0.0);
    }

    #[test]
    fn block_headers_cost_is_capped_at_one_chunk() {
        assert!(close(cost("blockchain.block.headers", "[0, 1000000]"), 40.32));
        assert!(close(cost("blockchain.block.headers", "[0, 2016]"), 40.32));
        assert!(close(cost("blockchain.block.headers", "[0, 100]"), 2.0));
        assert!(close(cost("blockchain.block.headers", "[0, 0]"), 0.0));
        assert!(close(
            cost("blockchain.block.headers", r#"{"start_height":0,"count":50}"#),
            1.0
        ));
        assert!(close(cost("blockchain.block.headers", "[0, 100, 800000]"), 3.0));
        assert!(close(cost("blockchain.block.headers", "[0, 0, 800000]"), 0.0));
        // Unreadable counts are charged as a full chunk.
        assert!(close(cost("blockchain.block.headers", "[0]"), 40.32));
        assert!(close(cost("blockchain.block.headers", "[0, -5]"), 40.32));
    }

    #[test]
    fn block_header_cost() {
        assert!(close(cost("blockchain.block.header", "[5]"), 0.25));
        assert!(close(cost("blockchain.block.header", "[5, 0]"), 0.25));
        assert!(close(cost("blockchain.block.header", "[5, 100]"), 1.25));
        assert!(close(
            cost("blockchain.block.header", r#"{"height":5,"cp_height":100}"#),
            1.25
        ));
        assert!(close(cost("blockchain.block.header", r#"[5, "x"]"#), 1.25));
    }

    #[test]
    fn broadcast_cost() {
        let tx = "ab".repeat(2500);
        assert!(close(
            cost("blockchain.transaction.broadcast", &format!("[\"{tx}\"]")),
            1.25
        ));
        assert!(close(
            cost("blockchain.transaction.broadcast", &format!("{{\"raw_tx\":\"{tx}\"}}")),
            1.25
        ));
        assert!(close(cost("blockchain.transaction.broadcast", "[]"), 0.25));
        let info = lookup("blockchain.transaction.broadcast_package", Profile::Bitcoin, V1_6).unwrap();
        let pkg = format!("[[\"{tx}\",\"{tx}\"]]");
        let c = request_cost(info, Some(p(&pkg)), &HashMap::new());
        assert!((2.25..2.26).contains(&c), "{c}");
    }

    #[test]
    fn overrides_replace_the_base() {
        let overrides = HashMap::from([
            ("server.ping".to_owned(), 3.0),
            ("blockchain.block.headers".to_owned(), 1.0),
        ]);
        let ping = lookup("server.ping", Profile::Bitcoin, V1_4).unwrap();
        assert_eq!(request_cost(ping, None, &overrides), 3.0);
        let headers = lookup("blockchain.block.headers", Profile::Bitcoin, V1_4).unwrap();
        assert!(close(request_cost(headers, Some(p("[0,100]")), &overrides), 3.0));
        let banner = lookup("server.banner", Profile::Bitcoin, V1_4).unwrap();
        assert_eq!(request_cost(banner, None, &overrides), 0.5);
    }

    #[test]
    fn heavy_methods() {
        let b = |name| lookup(name, Profile::Bitcoin, V1_4).unwrap();
        let heavy = |name, params: &str| is_heavy(b(name), Some(p(params)));
        for name in [
            "blockchain.scripthash.get_history",
            "blockchain.scripthash.listunspent",
            "blockchain.scripthash.get_mempool",
            "blockchain.scripthash.subscribe",
        ] {
            assert!(heavy(name, "[\"00\"]"), "{name}");
        }
        for name in [
            "server.ping",
            "blockchain.scripthash.get_balance",
            "blockchain.headers.subscribe",
            "blockchain.estimatefee",
        ] {
            assert!(!heavy(name, "[]"), "{name}");
        }
        assert!(!heavy("blockchain.block.headers", "[0, 100]"));
        assert!(heavy("blockchain.block.headers", "[0, 2016]"));
        assert!(heavy("blockchain.block.headers", r#"{"start_height":0,"count":101}"#));
        assert!(!heavy("blockchain.transaction.get", "[\"ab\"]"));
        assert!(!heavy("blockchain.transaction.get", "[\"ab\", false]"));
        assert!(heavy("blockchain.transaction.get", "[\"ab\", true]"));
        assert!(heavy(
            "blockchain.transaction.get",
            r#"{"tx_hash":"ab","verbose":true}"#
        ));
        let k = |name| lookup(name, Profile::Kevacoin, V1_4).unwrap();
        assert!(is_heavy(k("blockchain.keva.get_keyvalue_reactions"), None));
        assert!(!is_heavy(k("blockchain.block.count"), None));
    }

    #[test]
    fn validation() {
        let k = |name| lookup(name, Profile::Kevacoin, V1_4).unwrap();
        let b = |name| lookup(name, Profile::Bitcoin, V1_4).unwrap();
        let txids = |n: usize| format!("[[{}], true]", vec!["\"00\""; n].join(","));

        let info = k("blockchain.keva.get_transactions_info");
        assert_eq!(validate(info, Some(p(&txids(200)))), Ok(()));
        assert_eq!(
            validate(info, Some(p(&txids(201)))),
            Err(RpcError::new(ErrorCode::BadRequest, "too many txids: 201 > 200"))
        );
        assert_eq!(validate(info, Some(p(r#"{"tx_hashes":[]}"#))), Ok(()));
        assert!(validate(info, Some(p(r#"["00"]"#))).is_err());
        assert!(validate(info, None).is_err());

        let headers = b("blockchain.block.headers");
        assert_eq!(validate(headers, Some(p("[0, 2016]"))), Ok(()));
        assert_eq!(validate(headers, Some(p(r#"[0, "10", 5]"#))), Ok(()));
        for bad in [
            "[0]",
            "[0, -1]",
            "[0, 1.5]",
            "[0, \"ten\"]",
            "[-1, 5]",
            "[0, 5, -2]",
            "[0, 5, null]",
        ] {
            let e = validate(headers, Some(p(bad))).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad}");
        }
        assert_eq!(
            validate(headers, Some(p("[0, -1]"))),
            Err(RpcError::new(
                ErrorCode::BadRequest,
                "count should be a non-negative integer"
            ))
        );
        assert!(validate(headers, None).is_err());

        let header = b("blockchain.block.header");
        assert_eq!(validate(header, Some(p("[5]"))), Ok(()));
        assert!(validate(header, Some(p("[]"))).is_err());
        assert!(validate(header, Some(p("[5, true]"))).is_err());

        assert_eq!(validate(b("server.ping"), None), Ok(()));
    }
}
