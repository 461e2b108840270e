//! The TOML schema as written by the operator. Every struct denies unknown keys so a typo is an error,
//! not a silently ignored setting. Defaults live here so `conf/gatehouse.toml` and the code agree.

use crate::front::electrum::settings::{VersionAnswer, VersionPolicy};
use crate::front::{FrontKind, Transport};
use crate::state::{bans, cost};
use crate::telemetry::LogFormat;
use crate::upstream::SendProxy;
use crate::wire::units::{ByteSize, Duration, Rate};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use toml::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub log: RawLog,
    /// Admission applied to every front before the front's own rules.
    #[serde(default)]
    pub admission: RawAdmission,
    /// Electrum cost accounting shared by every Electrum front (groups span fronts).
    #[serde(default)]
    pub cost: RawCost,
    #[serde(default)]
    pub bans: RawBans,
    #[serde(default)]
    pub electrum: RawElectrum,
    #[serde(default)]
    pub admin: RawAdmin,
    /// Process-wide resource limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Ban sharing with the operator's other gateways; absent = this gateway stands alone.
    pub cluster: Option<RawCluster>,
    /// Certificates the gateway orders itself; fronts name them in `[front.tls] acme`.
    pub acme: Option<RawAcme>,
    /// Blocklist feeds merged into the deny set.
    #[serde(default)]
    pub feeds: Vec<super::raw_feeds::RawFeed>,
    /// CrowdSec Local API: bouncer and/or reporter.
    pub crowdsec: Option<super::raw_feeds::RawCrowdSec>,
    #[serde(default, rename = "front")]
    pub fronts: Vec<RawFront>,
    /// Trusted tiers: networks and API credentials with their own multiples of the limits.
    #[serde(default, rename = "tier")]
    pub tiers: Vec<RawTier>,
}

/// `[[tier]]`: one trusted tier. Each limit is a multiplier of what strangers get, or `"exempt"`; unset
/// limits stay as they are (`state::tier::DEFAULT_SCALE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub name: Spanned<String>,
    #[serde(default)]
    pub networks: Vec<Spanned<String>>,
    /// A file of CIDRs, one a line (`#` comments), added to `networks`.
    pub networks_file: Option<Spanned<PathBuf>>,
    /// API front user (`[[front.api.users]]`) and token (`[[front.api.tokens]]`) names.
    #[serde(default)]
    pub credentials: Vec<Spanned<String>>,
    pub connections_per_ip: Option<Spanned<RawScale>>,
    pub connections_per_group: Option<Spanned<RawScale>>,
    pub connect_rate: Option<Spanned<RawScale>>,
    pub cost: Option<Spanned<RawScale>>,
    pub subscriptions: Option<Spanned<RawScale>>,
    /// `"auto"` (the default) or `"never"`.
    pub bans: Option<Spanned<String>>,
}

/// A multiplier (`20`, `2.5`) or a word (`"exempt"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawScale {
    Times(f64),
    Word(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// This node's Ed25519 key file (`gatehouse keygen --out FILE`).
    pub node_key: Spanned<PathBuf>,
    /// Where the other gateways connect to this one (links backend; unused with Redis).
    pub listen: Option<Spanned<String>>,
    #[serde(default = "default_anti_entropy")]
    pub anti_entropy: Duration,
    #[serde(default)]
    pub peers: Vec<RawClusterPeer>,
    #[serde(default)]
    pub cost: RawClusterCost,
    /// How records travel: "links" (embedded, the default) or "redis".
    pub backend: Option<Spanned<String>>,
    /// `redis://[:password@]host[:port][/db]`; required when `backend = "redis"`.
    pub redis_url: Option<Spanned<String>>,
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// 32 secret bytes every gateway of the fleet holds: ACME certificates and challenge answers travel
    /// through Redis sealed with it (without it each gateway orders its own).
    pub redis_acme_key_file: Option<Spanned<PathBuf>>,
    /// The longest statement a peer may make (`cluster::DEFAULT_MAX_RECORD_DURATION`).
    pub max_record_duration: Option<Spanned<Duration>>,
    /// Statements held per peer (`cluster::DEFAULT_MAX_RECORDS_PER_ORIGIN`).
    pub max_records_per_origin: Option<Spanned<usize>>,
}

fn default_redis_prefix() -> String {
    crate::cluster::DEFAULT_REDIS_PREFIX.to_string()
}

fn default_anti_entropy() -> Duration {
    Duration(crate::cluster::DEFAULT_ANTI_ENTROPY)
}

/// `[cluster.cost]`: cluster-wide abuse cost. Unset fields take `cluster::cost::CostSharing`'s defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClusterCost {
    pub enabled: Option<bool>,
    pub interval: Option<Spanned<Duration>>,
    pub threshold: Option<Spanned<f64>>,
    pub expiry: Option<Spanned<Duration>>,
    pub max_groups: Option<Spanned<usize>>,
    /// What one peer's report may add, in `[cost] hard_limit`s.
    pub max_report_cost: Option<Spanned<f64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClusterPeer {
    /// Required by the links backend; the Redis backend needs only the key.
    pub addr: Option<Spanned<String>>,
    /// The peer's public key as `gatehouse keygen` printed it.
    pub key: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCost {
    pub soft_limit: f64,
    pub hard_limit: f64,
    pub max_sleep: Duration,
    pub initial_concurrency: u32,
    pub bandwidth_unit: ByteSize,
    pub request_timeout: Duration,
    pub retained_drain: Rate,
    pub group_private: bool,
    pub connection_cost: f64,
    pub error_cost: f64,
    pub parse_error_cost: f64,
    pub max_subscriptions_per_group: usize,
    /// Per-method base cost overrides.
    pub methods: BTreeMap<String, f64>,
    /// The node-fee profile (API fronts of the ledger profile).
    pub ledger: RawFee,
}

/// `[cost.ledger]`: thresholds and decay of the node-fee balance. Unset fields take `state::cost`'s
/// `DEFAULT_FEE_*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFee {
    pub window: Option<Spanned<Duration>>,
    pub warning: Option<Spanned<f64>>,
    pub drop: Option<Spanned<f64>>,
    pub remember: Option<Spanned<Duration>>,
}

impl Default for RawCost {
    fn default() -> Self {
        RawCost {
            soft_limit: cost::DEFAULT_SOFT_LIMIT,
            hard_limit: cost::DEFAULT_HARD_LIMIT,
            max_sleep: Duration(cost::DEFAULT_MAX_SLEEP),
            initial_concurrency: cost::DEFAULT_INITIAL_CONCURRENCY,
            bandwidth_unit: ByteSize(cost::DEFAULT_BANDWIDTH_UNIT),
            request_timeout: Duration(cost::DEFAULT_REQUEST_TIMEOUT),
            retained_drain: Rate {
                count: cost::DEFAULT_RETAINED_DRAIN_UNITS,
                per: cost::DEFAULT_RETAINED_DRAIN_PER,
            },
            group_private: false,
            connection_cost: cost::DEFAULT_CONNECTION_COST,
            error_cost: cost::DEFAULT_ERROR_COST,
            parse_error_cost: cost::DEFAULT_PARSE_ERROR_COST,
            max_subscriptions_per_group: cost::DEFAULT_MAX_SUBSCRIPTIONS_PER_GROUP,
            methods: BTreeMap::new(),
            ledger: RawFee::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBans {
    pub enabled: bool,
    pub duration: Duration,
    pub max_duration: Duration,
    /// Protocol violations (garbage or oversized lines) one session may commit; the next one bans its address.
    pub max_violations: u32,
    /// Append-only ban journal; unset = bans live in memory only.
    pub journal: Option<Spanned<PathBuf>>,
    /// The widest ban anyone may make, per family (`state::bans::DEFAULT_MIN_PREFIX_V4` / `_V6`).
    pub min_prefix_v4: Option<Spanned<u8>>,
    pub min_prefix_v6: Option<Spanned<u8>>,
    /// What an automatic ban of an IPv6 client covers (`DEFAULT_IPV6_PREFIX`).
    pub ipv6_prefix: Option<Spanned<u8>>,
    /// Automatic bans in one group before the group is banned; 0 never (`DEFAULT_ESCALATE_AFTER`).
    pub escalate_after: Option<Spanned<u32>>,
    /// Entries beyond which automatic bans are refused (`DEFAULT_MAX_ENTRIES`).
    pub max_entries: Option<Spanned<usize>>,
}

impl Default for RawBans {
    fn default() -> Self {
        RawBans {
            enabled: true,
            duration: Duration(bans::DEFAULT_BAN_DURATION),
            max_duration: Duration(bans::DEFAULT_MAX_BAN_DURATION),
            max_violations: bans::DEFAULT_MAX_VIOLATIONS,
            journal: None,
            min_prefix_v4: None,
            min_prefix_v6: None,
            ipv6_prefix: None,
            escalate_after: None,
            max_entries: None,
        }
    }
}

/// `[limits]`: process-wide resource limits. Unset fields take the defaults named in `state::memory`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Bytes all Electrum sessions together may buffer before the largest are cut.
    pub memory_budget: Option<Spanned<ByteSize>>,
}

/// The HTTP admin API (bans, health).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub enabled: bool,
    /// `IP:PORT`, or `unix:PATH` for a unix socket. Default "127.0.0.1:9180".
    pub listen: Option<Spanned<String>>,
    /// File holding the bearer token; required when enabled.
    pub token_file: Option<Spanned<PathBuf>>,
    /// Permits a non-loopback TCP listen address.
    pub allow_remote: bool,
    /// Serves `GET /metrics` without the bearer token.
    pub metrics_public: bool,
    /// Connections one peer (address, or uid on a unix socket) may hold at once.
    pub max_connections_per_peer: Option<Spanned<usize>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawElectrum {
    /// Host names wallets should use, announced in server.features instead of the backend's.
    pub public_hosts: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawProfile {
    #[default]
    Bitcoin,
    Kevacoin,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFrontElectrum {
    #[serde(default)]
    pub profile: RawProfile,
    #[serde(default)]
    pub version_policy: VersionPolicy,
    #[serde(default)]
    pub version_answer: VersionAnswer,
    pub protocol_min: Option<Spanned<String>>,
    pub protocol_max: Option<Spanned<String>>,
    pub max_line: Option<Spanned<ByteSize>>,
    /// Bytes per second a partial request line must keep arriving at, once `line_grace` has passed.
    pub min_line_rate: Option<Rate>,
    pub line_grace: Option<Spanned<Duration>>,
    pub max_response: Option<ByteSize>,
    pub max_batch: Option<usize>,
    pub max_nesting: Option<Spanned<usize>>,
    #[serde(default)]
    pub extra_methods: Vec<String>,
    pub banner: Option<String>,
    pub max_subscriptions: Option<usize>,
    pub max_pending_output: Option<Spanned<ByteSize>>,
    pub slow_reader_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    /// 0 = one per core.
    #[serde(default)]
    pub worker_threads: Option<Spanned<usize>>,
    #[serde(default = "default_drain")]
    pub drain_deadline: Duration,
    /// The last part of the drain, over which remaining sessions are closed a few at a time.
    #[serde(default = "default_spread")]
    pub drain_spread: Duration,
    #[serde(default = "default_nofile")]
    pub max_open_files: u64,
    /// 0 = accept and handshake on the workers.
    #[serde(default)]
    pub intake_threads: Option<Spanned<usize>>,
    #[serde(default)]
    pub intake_nice: Option<Spanned<i32>>,
    /// How long a new process started by `gatehouse upgrade` has to report ready.
    #[serde(default = "default_upgrade_timeout")]
    pub upgrade_timeout: Duration,
}

/// Default `runtime.drain_deadline`: how long open sessions may finish after SIGTERM.
pub const DEFAULT_DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
/// Default `runtime.drain_spread`: closes all at once at the deadline.
pub const DEFAULT_DRAIN_SPREAD: std::time::Duration = std::time::Duration::ZERO;
/// Default `runtime.max_open_files`: the soft RLIMIT_NOFILE asked for at start.
pub const DEFAULT_MAX_OPEN_FILES: u64 = 65536;
/// Default `runtime.upgrade_timeout`: the new process of a live upgrade must accept on every listener
/// within this, or it is stopped and the old one serves on.
pub const DEFAULT_UPGRADE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// Default `log.level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default `log.refusal_interval`: one line per address and reason at most this often.
pub const DEFAULT_REFUSAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

fn default_spread() -> Duration {
    Duration(DEFAULT_DRAIN_SPREAD)
}

fn default_drain() -> Duration {
    Duration(DEFAULT_DRAIN_DEADLINE)
}
fn default_upgrade_timeout() -> Duration {
    Duration(DEFAULT_UPGRADE_TIMEOUT)
}
fn default_nofile() -> u64 {
    DEFAULT_MAX_OPEN_FILES
}

impl Default for RawRuntime {
    fn default() -> Self {
        RawRuntime {
            worker_threads: None,
            drain_deadline: default_drain(),
            drain_spread: default_spread(),
            max_open_files: default_nofile(),
            intake_threads: None,
            intake_nice: None,
            upgrade_timeout: default_upgrade_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default)]
    pub format: LogFormat,
    /// tracing-subscriber filter directive, e.g. "info" or "gatehouse=debug".
    #[serde(default = "default_level")]
    pub level: String,
    /// A refused address is logged once per reason within this interval.
    #[serde(default = "default_refusal_interval")]
    pub refusal_interval: Duration,
    /// Log to this file (appending) instead of stderr; SIGUSR1 reopens it. Relative to the config's folder.
    #[serde(default)]
    pub file: Option<Spanned<PathBuf>>,
}

fn default_level() -> String {
    DEFAULT_LOG_LEVEL.into()
}
fn default_refusal_interval() -> Duration {
    Duration(DEFAULT_REFUSAL_INTERVAL)
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::Human,
            level: default_level(),
            refusal_interval: default_refusal_interval(),
            file: None,
        }
    }
}

/// Admission rules. Used globally and per front; at each level every field is optional so that a
/// front states only what it changes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmission {
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow_files: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    pub deny_files: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    pub allowlist_only: bool,
    pub max_connections: Option<Spanned<usize>>,
    pub max_connections_per_ip: Option<Spanned<usize>>,
    pub max_connections_per_group: Option<Spanned<usize>>,
    pub group_prefix_v4: Option<u8>,
    pub group_prefix_v6: Option<u8>,
    pub connect_rate_per_ip: Option<Rate>,
    pub connect_burst_per_ip: Option<u32>,
    pub connect_rate_per_group: Option<Rate>,
    pub connect_burst_per_group: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFront {
    pub name: String,
    pub kind: FrontKind,
    pub listen: Vec<Spanned<String>>,
    pub transport: Transport,
    pub upstreams: Vec<Spanned<String>>,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub admission: RawAdmission,
    #[serde(default)]
    pub proxy_protocol: RawProxyIntake,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Protocol settings of an Electrum front.
    pub electrum: Option<RawFrontElectrum>,
    /// Protocol settings of a node API front.
    pub api: Option<RawFrontApi>,
    /// Shape check and per-peer limits of a peer front.
    pub peer: Option<RawFrontPeer>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawPeerProtocol {
    #[default]
    Any,
    Tls,
    Bitcoin,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawV2 {
    Allow,
    Refuse,
}

/// `[front.peer]`: unset fields take `front::peer::settings`' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFrontPeer {
    /// Default "any".
    pub protocol: Option<Spanned<RawPeerProtocol>>,
    /// The chain's network magic as 8 hex digits, as it appears on the wire (bitcoin only).
    pub magic: Option<Spanned<String>>,
    pub v2: Option<Spanned<RawV2>>,
    pub first_commands: Option<Spanned<Vec<String>>>,
    /// The payload cap of every command not in `payload_caps`.
    pub max_payload: Option<Spanned<ByteSize>>,
    #[serde(default)]
    pub payload_caps: BTreeMap<String, Spanned<ByteSize>>,
    pub filter_addr: Option<Spanned<bool>>,
    pub bytes_per_second_in: Option<Spanned<ByteSize>>,
    pub bytes_per_second_out: Option<Spanned<ByteSize>>,
    pub burst_in: Option<Spanned<ByteSize>>,
    pub burst_out: Option<Spanned<ByteSize>>,
    pub message_rate: Option<Spanned<Rate>>,
    pub message_burst: Option<Spanned<u32>>,
    pub max_buffered: Option<Spanned<ByteSize>>,
    pub slow_peer_timeout: Option<Spanned<Duration>>,
}

/// `[front.api]`: a node's JSON-RPC API. Unset limits take `front::api::settings`' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFrontApi {
    pub profile: Spanned<crate::front::api::settings::ApiProfile>,
    /// The node's RPC user, with `backend_password_file`.
    pub backend_user: Option<Spanned<String>>,
    pub backend_password_file: Option<Spanned<PathBuf>>,
    /// The node's `.cookie` file, instead of user and password.
    pub backend_cookie_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub users: Vec<RawApiUser>,
    /// Methods callable without credentials.
    #[serde(default)]
    pub public_methods: Vec<String>,
    pub max_body: Option<Spanned<ByteSize>>,
    pub max_response: Option<Spanned<ByteSize>>,
    pub max_batch: Option<Spanned<usize>>,
    pub header_timeout: Option<Spanned<Duration>>,
    pub keepalive_timeout: Option<Spanned<Duration>>,
    pub request_timeout: Option<Spanned<Duration>>,
    /// Per-method cost overrides, in `[cost]` units.
    #[serde(default)]
    pub method_costs: BTreeMap<String, Spanned<f64>>,
    /// Bearer tokens, a second way for clients to authenticate.
    #[serde(default)]
    pub tokens: Vec<RawApiToken>,
    /// REST path prefixes let through, each with its cost class; empty: REST off.
    #[serde(default)]
    pub rest: BTreeMap<String, Spanned<String>>,
    /// Both profiles: send the client's address to the node as `Forwarded: for=…`.
    pub forwarded: Option<Spanned<bool>>,
    // Profile `ledger` only; unset ones take `front::api::ledger::settings`' defaults.
    /// `[front.api.fees]`: the node's fee classes and per-command fees.
    pub fees: Option<RawLedgerFees>,
    #[serde(default)]
    pub extra_commands: Vec<Spanned<String>>,
    pub max_subscriptions: Option<Spanned<usize>>,
    pub max_subscriptions_per_group: Option<Spanned<usize>>,
    pub max_message: Option<Spanned<ByteSize>>,
    pub max_pending_output: Option<Spanned<ByteSize>>,
    pub slow_reader_timeout: Option<Spanned<Duration>>,
}

/// `[[front.api.tokens]]`: one bearer token of an API front, stored as its salted hash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiToken {
    pub name: Spanned<String>,
    /// `salt$hex(HMAC-SHA256(key = salt, message = token))`.
    pub token_hash: Spanned<String>,
    #[serde(default)]
    pub methods: Vec<String>,
}

/// `[front.api.fees]` of a ledger-profile front.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedgerFees {
    pub reference: Option<Spanned<f64>>,
    pub medium: Option<Spanned<f64>>,
    pub high: Option<Spanned<f64>>,
    pub malformed: Option<Spanned<f64>>,
    /// `[front.api.fees.commands]`: command name → fee.
    #[serde(default)]
    pub commands: BTreeMap<String, Spanned<f64>>,
}

/// `[[front.api.users]]`: one client user of an API front.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiUser {
    pub name: Spanned<String>,
    /// bitcoind's `rpcauth` format: `salt$hex(HMAC-SHA256(key = salt, message = password))`.
    pub rpcauth: Spanned<String>,
    #[serde(default)]
    pub methods: Vec<String>,
}

/// `[front.tls]`: the default certificate, from files (`cert` and `key`) or from `[acme]` (`acme`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<Spanned<PathBuf>>,
    pub key: Option<Spanned<PathBuf>>,
    pub acme: Option<Spanned<String>>,
    #[serde(default)]
    pub sni: Vec<RawSniCert>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSniCert {
    pub name: String,
    /// Another front, by name, that serves connections asking for `name`.
    pub route: Option<Spanned<String>>,
    pub cert: Option<Spanned<PathBuf>>,
    pub key: Option<Spanned<PathBuf>>,
    pub acme: Option<Spanned<String>>,
}

/// `[acme]`. Unset fields take `listen::acme`'s `DEFAULT_*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: Option<Spanned<String>>,
    #[serde(default)]
    pub contact: Vec<Spanned<String>>,
    pub state_dir: Spanned<PathBuf>,
    pub ca_root: Option<Spanned<PathBuf>>,
    pub challenge: Option<Spanned<crate::listen::acme::Challenge>>,
    pub http_listen: Option<Spanned<String>>,
    pub retry_min: Option<Spanned<Duration>>,
    pub retry_max: Option<Spanned<Duration>>,
    pub orderer_grace: Option<Spanned<Duration>>,
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<RawAcmeCert>,
}

/// `[[acme.certificate]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcmeCert {
    pub name: Spanned<String>,
    pub domains: Spanned<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyIntake {
    /// Load balancers allowed to send a PROXY v1/v2 header. Empty = PROXY intake off.
    #[serde(default)]
    pub accept_from: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default)]
    pub send_proxy: SendProxy,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: Duration,
    /// Electrum fronts: `"auto"`, a count or `"off"`.
    pub max_in_flight: Option<Spanned<RawCount>>,
    /// Electrum fronts: a count or `"auto"`.
    pub heavy_in_flight: Option<Spanned<RawCount>>,
    /// Electrum fronts: a count or `"off"`.
    pub throttled_heavy_in_flight: Option<Spanned<RawCount>>,
    /// Electrum fronts: a percentage like `"5%"`, or `"off"`.
    pub throttled_heavy_share: Option<Spanned<String>>,
    /// Electrum fronts: a count.
    pub max_queued: Option<Spanned<i64>>,
}

/// A count (`8`) or a word (`"auto"`, `"off"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawCount {
    Count(i64),
    Word(String),
}

fn default_connect_timeout() -> Duration {
    Duration(crate::front::settings::DEFAULT_CONNECT_TIMEOUT)
}
fn default_retry_backoff() -> Duration {
    Duration(crate::front::settings::DEFAULT_RETRY_BACKOFF)
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            send_proxy: SendProxy::None,
            connect_timeout: default_connect_timeout(),
            retry_backoff: default_retry_backoff(),
            max_in_flight: None,
            heavy_in_flight: None,
            throttled_heavy_in_flight: None,
            throttled_heavy_share: None,
            max_queued: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    #[serde(default = "default_handshake")]
    pub handshake: Duration,
    #[serde(default = "default_idle")]
    pub idle: Duration,
}

fn default_handshake() -> Duration {
    Duration(crate::front::settings::DEFAULT_HANDSHAKE_TIMEOUT)
}
fn default_idle() -> Duration {
    Duration(crate::front::settings::DEFAULT_IDLE_TIMEOUT)
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts {
            handshake: default_handshake(),
            idle: default_idle(),
        }
    }
}
