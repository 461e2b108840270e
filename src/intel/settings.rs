//! What the operator configures for blocklist feeds (`[[feeds]]`) and CrowdSec (`[crowdsec]`), with the
//! defaults `config` fills in.

use std::path::PathBuf;
use std::time::Duration;

/// Default `interval`: lists such as Spamhaus DROP change a few times a day and ask to be fetched at most
/// hourly.
pub const DEFAULT_FEED_INTERVAL: Duration = Duration::from_secs(3600);
/// Default `max_size`: Spamhaus DROP is about 50 KiB, FireHOL level 1 about 100 KiB; 16 MiB leaves room
/// for big lists without letting a hostile server fill memory.
pub const DEFAULT_FEED_MAX_SIZE: u64 = 16 * 1024 * 1024;
/// Default `max_entries`: a copy with more networks than this is refused (the last good one stays).
pub const DEFAULT_FEED_MAX_ENTRIES: usize = 200_000;
/// Default `timeout` of one fetch (connect, headers and body together).
pub const DEFAULT_FEED_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `poll_interval` of the CrowdSec bouncer (CrowdSec's own bouncers poll every 10 s).
pub const DEFAULT_CROWDSEC_POLL: Duration = Duration::from_secs(10);
/// Default `max_decisions`: ban decisions the bouncer holds at once; more are dropped and counted.
pub const DEFAULT_CROWDSEC_MAX_DECISIONS: usize = 200_000;
/// Default `max_response`: the largest decision stream answer read (a startup stream of a big fleet is
/// megabytes).
pub const DEFAULT_CROWDSEC_MAX_RESPONSE: u64 = 64 * 1024 * 1024;
/// Default `timeout` of one Local API request.
pub const DEFAULT_CROWDSEC_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `scenario` of the alerts the reporter pushes.
pub const DEFAULT_CROWDSEC_SCENARIO: &str = "gatehouse/automatic-ban";
/// The name the CrowdSec bouncer's decisions carry in metrics and `/readyz` (no feed may take it).
pub const CROWDSEC_SOURCE: &str = "crowdsec";

/// How a feed's text lists networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedFormat {
    /// One CIDR or address per line; `#` starts a comment (FireHOL netsets, most hand-made lists).
    Plain,
    /// Spamhaus DROP/EDROP text: `CIDR ; SBL123456`, comments start with `;`.
    Spamhaus,
    /// Spamhaus's JSON lines (`drop_v4.json`, `drop_v6.json`): one object per line with a `cidr`; the
    /// closing metadata line has none.
    SpamhausJson,
}

impl FeedFormat {
    pub const NAMES: &'static str = "`plain`, `spamhaus` or `spamhaus-json`";

    pub fn parse(s: &str) -> Option<FeedFormat> {
        match s {
            "plain" => Some(FeedFormat::Plain),
            "spamhaus" => Some(FeedFormat::Spamhaus),
            "spamhaus-json" => Some(FeedFormat::SpamhausJson),
            _ => None,
        }
    }
}

/// Where a feed comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedLocation {
    File(PathBuf),
    /// `http://` or `https://`.
    Url(String),
}

/// A minisign public key: the key id it signs under and the Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinisignKey {
    pub key_id: [u8; 8],
    pub key: [u8; 32],
}

/// How a copy is checked before it replaces the last good one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    None,
    /// The copy's SHA-256 must be this.
    Sha256([u8; 32]),
    /// A minisign signature (at `signature`, or the copy's location plus `.minisig`) by this key.
    Minisign {
        key: MinisignKey,
        signature: Option<FeedLocation>,
    },
}

#[derive(Debug, Clone)]
pub struct FeedSettings {
    pub name: String,
    pub location: FeedLocation,
    pub format: FeedFormat,
    pub interval: Duration,
    pub verify: Verify,
    pub max_size: u64,
    pub max_entries: usize,
    pub timeout: Duration,
    /// PEM roots for `https://` (None: the system bundle).
    pub ca_file: Option<PathBuf>,
    /// Where the last good copy is kept across restarts (None: not kept).
    pub cache: Option<PathBuf>,
}

/// Machine credentials of reporter mode.
#[derive(Clone)]
pub struct Reporter {
    pub machine_id: String,
    pub password: String,
    pub scenario: String,
}

// Written out so the password never reaches a log line through `{:?}`.
impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("machine_id", &self.machine_id)
            .field("scenario", &self.scenario)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct CrowdSecSettings {
    /// The Local API's base, `http(s)://host:port/`.
    pub url: String,
    /// Bouncer mode: the bouncer's API key (None: no bouncer).
    pub api_key: Option<String>,
    pub poll_interval: Duration,
    pub max_decisions: usize,
    pub max_response: u64,
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
    /// Reporter mode (None: Gatehouse's bans are not pushed).
    pub reporter: Option<Reporter>,
}

impl std::fmt::Debug for CrowdSecSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrowdSecSettings")
            .field("url", &self.url)
            .field("bouncer", &self.api_key.is_some())
            .field("poll_interval", &self.poll_interval)
            .field("max_decisions", &self.max_decisions)
            .field("reporter", &self.reporter)
            .finish_non_exhaustive()
    }
}
