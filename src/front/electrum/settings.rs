//! Protocol settings of an Electrum front, with their bounds and defaults.

use super::methods::{Profile, ProtoVersion};
use crate::wire::units::Rate;
use serde::Deserialize;
use std::time::Duration;

/// Smallest `max_line` accepted: below it a wallet's first request (`server.version`, about 80 bytes)
/// would already be refused, so every client would be turned away.
pub const MIN_MAX_LINE: u64 = 128;
/// Smallest `max_pending_output` accepted: below it ordinary replies (a history, a chunk of headers) would
/// count as a slow reader and cut every client that asks for them.
pub const MIN_PENDING_OUTPUT: u64 = 64 * 1024;

/// Default `max_line`: the longest request line a session reads (and the WebSocket message limit).
pub const DEFAULT_MAX_LINE: usize = 1_000_000;
/// Default `max_batch`: requests in one JSON-RPC batch.
pub const DEFAULT_MAX_BATCH: usize = 200;
/// Default `max_subscriptions`: scripthash subscriptions one session may hold.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 50_000;
/// Default `max_pending_output`: bytes queued for a client before it counts as a slow reader.
pub const DEFAULT_MAX_PENDING_OUTPUT: usize = 8 << 20;
/// Default `min_line_rate`: 500 bytes per second, as Apache's mod_reqtimeout demands of request headers.
pub const DEFAULT_MIN_LINE_RATE: Rate = Rate {
    count: 500,
    per: Duration::from_secs(1),
};
/// Default `max_response`: ElectrumX's `MAX_SEND` (8,100,000 bytes) and the Kevacoin fork's larger one,
/// whose keva.* replies carry up to 2,000 items.
pub const DEFAULT_MAX_RESPONSE: usize = 8_100_000;
pub const DEFAULT_MAX_RESPONSE_KEVACOIN: usize = 10_000_000;
/// Default `slow_reader_timeout`: how long a client may take nothing of what is queued for it.
pub const DEFAULT_SLOW_READER_TIMEOUT: Duration = Duration::from_secs(20);
/// Default `line_grace`: time any request line gets before its rate is judged.
pub const DEFAULT_LINE_GRACE: Duration = Duration::from_secs(20);
/// Shortest `line_grace` accepted.
pub const MIN_LINE_GRACE: Duration = Duration::from_secs(1);
/// How deeply a client's JSON may nest arrays and objects: Electrum requests need 5 levels at most
/// (a batched server.add_peer), and a Python backend's parser recurses once per level.
pub const DEFAULT_MAX_NESTING: usize = 32;

/// Protocol settings of one Electrum front.
#[derive(Debug, Clone)]
pub struct ElectrumSettings {
    pub profile: Profile,
    pub version_policy: VersionPolicy,
    pub version_answer: VersionAnswer,
    pub protocol_min: ProtoVersion,
    pub protocol_max: ProtoVersion,
    pub max_line: usize,
    /// Bytes per second a partial request line must average once `line_grace` has passed (a line may
    /// take `line_grace + its length / min_line_rate` to arrive); slower lines are a slowloris.
    pub min_line_rate: Rate,
    pub line_grace: Duration,
    pub max_response: usize,
    pub max_batch: usize,
    /// Deeper messages are refused with -32600 and never forwarded.
    pub max_nesting: usize,
    pub extra_methods: Vec<String>,
    pub banner: Option<String>,
    pub max_subscriptions: usize,
    pub max_pending_output: usize,
    pub slow_reader_timeout: Duration,
}

/// Who answers a wallet's `server.version`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VersionAnswer {
    /// The gateway, from what the backend answered before, when the client's range holds the backend's
    /// best version; the session opens its backend connection with its first request.
    #[default]
    Gateway,
    /// Always the backend: every session opens its backend connection with its `server.version`.
    Backend,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VersionPolicy {
    #[default]
    Require,
    Tolerate,
}
