//! Configuration: parse the operator's TOML, validate everything that can be validated before binding a
//! socket, and produce a typed [`Config`] the rest of the gateway uses without further checks.
//!
//! Every error names the file, the key path (`front[0].tls.cert`) and, where known, the line.

mod acme;
mod budget;
pub mod feeds;
mod ledger_api;
pub mod raw_feeds;
pub mod schema;

use crate::wire::acl::{load_cidr_file, parse_cidr, CidrSet};
use ipnetwork::IpNetwork;
use schema::*;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

use crate::admin::settings::*;
use crate::front::api::auth::{BackendAuth, Token, User};
use crate::front::api::settings::{ApiProfile, ApiSettings};
use crate::front::electrum::methods::{Profile, ProtoVersion};
use crate::front::electrum::settings::*;
use crate::front::peer::settings::PeerSettings;
use crate::front::{Front, FrontKind, SniRoute, Transport};
use crate::guard::policy::*;
use crate::listen::threads::{IntakeSettings, MAX_INTAKE_THREADS, MAX_NICE};
use crate::state::bans::BanPolicy;
use crate::state::cost::{CostConfig, FeeParams};
use crate::state::memory::Limits;
use crate::state::tier::{Scale, Tier, TierBans, Tiers, MAX_SCALE, MAX_TIERS};
use crate::telemetry::LogFormat;
use crate::wire::units::{self, Rate};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Something `gatehouse check` points out without refusing the file: the gateway runs, but probably not
/// as the operator meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub runtime: Runtime,
    pub log: LogSettings,
    pub admission: Admission,
    pub cost: CostConfig,
    pub bans: BanPolicy,
    pub admin: AdminConfig,
    pub limits: Limits,
    /// Ban sharing with other gateways (None = standalone).
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Certificates ordered over ACME (None = none).
    pub acme: Option<crate::listen::acme::AcmeSettings>,
    /// Host names announced in server.features.
    pub public_hosts: Vec<String>,
    pub fronts: Vec<Front>,
    /// Trusted tiers (also in every level's `admission.tiers`).
    pub tiers: Arc<Tiers>,
    /// Blocklist feeds (kept in the ban journal's folder when there is one).
    pub feeds: Vec<crate::intel::settings::FeedSettings>,
    pub crowdsec: Option<crate::intel::settings::CrowdSecSettings>,
}

/// Most Tokio worker threads `runtime.worker_threads` may ask for: more only costs memory and scheduling
/// (the gateway is I/O-bound), and a typo such as `40000` would otherwise make the runtime fail to start.
pub const MAX_WORKER_THREADS: usize = 1024;
#[derive(Debug, Clone)]
pub struct Runtime {
    pub worker_threads: usize,
    pub drain_deadline: Duration,
    /// Never longer than `drain_deadline`.
    pub drain_spread: Duration,
    pub max_open_files: u64,
    /// Accept, PROXY and TLS on threads of their own.
    pub intake: crate::listen::threads::IntakeSettings,
    /// How long the new process of a live upgrade has to report ready.
    pub upgrade_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
    pub refusal_interval: Duration,
    /// Log file (resolved against the config's folder); None = stderr.
    pub file: Option<PathBuf>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            line: None,
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text` as if read from `file`; relative paths inside resolve against the file's folder.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw = Self::raw(text, file)?;
        let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut v = Validator {
            text,
            file,
            base,
            acme: None,
        };
        v.acme = v.acme(raw.acme.as_ref())?;
        v.config(raw)
    }

    /// What is valid but probably not meant: feeds with nowhere to keep their last good copies, and
    /// when every Electrum front listens on loopback only and none takes PROXY headers, every wallet arrives from a loopback address (through a local
    /// proxy or tunnel), and with `cost.group_private = false` each connection is accounted alone, so
    /// reconnecting hands a client a fresh budget. Private listen addresses are not enough to tell: port
    /// forwarding and cloud 1:1 NAT deliver public clients to them with their own addresses.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut out = feeds::warnings(self);
        let mut electrum = self.fronts.iter().filter(|f| f.electrum.is_some()).peekable();
        let local_only = electrum.peek().is_some()
            && electrum.all(|f| {
                f.proxy_accept_from.is_empty() && f.listen.iter().all(|a| a.ip().to_canonical().is_loopback())
            });
        if !local_only || self.cost.group_private {
            return out;
        }
        out.push(ConfigWarning {
            file: self.source.clone(),
            key: "cost.group_private".to_string(),
            reason: "every Electrum front listens on loopback only without [front.proxy_protocol], so every \
                     client arrives from a loopback address and, with group_private = false, gets a fresh \
                     cost budget each time it reconnects; take the clients' real addresses with PROXY intake \
                     (accept_from), or set group_private = true (then all of them share one budget)"
                .to_string(),
        });
        out
    }

    /// Only the `[admin]` section, validated, for the `bans` commands: they run as an operator who need
    /// not be able to read the gateway's certificates or lists.
    pub fn load_admin(path: &Path) -> Result<AdminConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            line: None,
            reason: format!("cannot read: {e}"),
        })?;
        let raw = Self::raw(&text, path)?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Validator {
            text: &text,
            file: path,
            base,
            acme: None,
        }
        .admin(&raw.admin)
    }

    fn raw(text: &str, file: &Path) -> Result<RawConfig, ConfigError> {
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            // A value wrapped in `Spanned` shows up in the path as toml's private field: not the operator's key.
            let key = e.path().to_string().replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            ConfigError {
                file: file.to_path_buf(),
                key: if key == "." { String::new() } else { key },
                line: inner.span().map(|s| line_of(text, s.start)),
                reason: inner.message().to_string(),
            }
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct Validator<'a> {
    text: &'a str,
    file: &'a Path,
    base: PathBuf,
    /// `[acme]`, validated first: fronts' `tls.acme` names its certificates.
    acme: Option<crate::listen::acme::AcmeSettings>,
}

impl Validator<'_> {
    fn err(
        &self,
        key: impl Into<String>,
        span: Option<std::ops::Range<usize>>,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            line: span.map(|s| line_of(self.text, s.start)),
            reason: reason.into(),
        }
    }

    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let mut global = self.admission("admission", &raw.admission, None)?;
        if raw.fronts.is_empty() {
            return Err(self.err("front", None, "at least one [[front]] is required"));
        }
        let mut fronts = Vec::with_capacity(raw.fronts.len());
        for (i, f) in raw.fronts.iter().enumerate() {
            let front = self.front(&format!("front[{i}]"), f, &global)?;
            if fronts.iter().any(|o: &Front| o.name == front.name) {
                return Err(self.err(
                    format!("front[{i}].name"),
                    None,
                    format!("duplicate front name `{}`", front.name),
                ));
            }
            fronts.push(front);
        }
        self.acme_served(&fronts)?;
        self.sni_routes(&fronts, &raw.fronts)?;
        self.budgets_agree(&fronts, &raw.fronts)?;
        let admin = self.admin(&raw.admin)?;
        let admin_addr = match &admin.listen {
            AdminListen::Tcp(a) if admin.enabled && a.port() != 0 => Some(*a),
            _ => None,
        };
        let mut seen: Vec<(SocketAddr, &str)> = Vec::new();
        for (i, (f, rf)) in fronts.iter().zip(&raw.fronts).enumerate() {
            for (j, (a, text)) in f.listen.iter().zip(&rf.listen).enumerate() {
                // Port 0 asks the kernel for a fresh port each time, so it never collides.
                if a.port() == 0 {
                    continue;
                }
                let key = format!("front[{i}].listen[{j}]");
                if let Some((other, name)) = seen.iter().find(|(s, _)| listens_overlap(*s, *a)) {
                    let reason = if other == a {
                        format!("listen address {a} used by both `{name}` and `{}`", f.name)
                    } else {
                        format!(
                            "{a} cannot be bound next to {other} (front `{name}`): a wildcard address takes its \
                             port on every address of its family"
                        )
                    };
                    return Err(self.err(key, Some(text.span()), reason));
                }
                if let Some(m) = admin_addr.filter(|m| listens_overlap(*m, *a)) {
                    return Err(self.err(
                        key,
                        Some(text.span()),
                        format!("{a} takes the admin API's address (admin.listen = {m})"),
                    ));
                }
                seen.push((*a, &f.name));
            }
        }
        if let Some(w) = &raw.runtime.worker_threads {
            if *w.get_ref() > MAX_WORKER_THREADS {
                return Err(self.err(
                    "runtime.worker_threads",
                    Some(w.span()),
                    format!(
                        "{} is more than {MAX_WORKER_THREADS} threads (0 = one per core)",
                        w.get_ref()
                    ),
                ));
            }
        }
        if raw.log.level.parse::<tracing_subscriber::EnvFilter>().is_err() {
            return Err(self.err("log.level", None, format!("invalid log filter `{}`", raw.log.level)));
        }
        let log_file = match &raw.log.file {
            Some(f) if f.get_ref().as_os_str().is_empty() => {
                return Err(self.err(
                    "log.file",
                    Some(f.span()),
                    "empty path (leave it unset to log to stderr)",
                ));
            }
            Some(f) => Some(self.path(f.get_ref())),
            None => None,
        };
        let cost = self.cost(&raw.cost)?;
        for name in cost.method_costs.keys() {
            let extra = fronts
                .iter()
                .any(|f| f.electrum.as_ref().is_some_and(|e| e.extra_methods.contains(name)));
            if !crate::front::electrum::methods::is_known(name) && !extra {
                return Err(self.err(
                    format!("cost.methods.\"{name}\""),
                    None,
                    "unknown Electrum method (list it in a front's electrum.extra_methods to allow it)",
                ));
            }
        }
        let b = &raw.bans;
        if b.enabled && (b.duration.0.is_zero() || b.max_duration.0 < b.duration.0) {
            return Err(self.err("bans", None, "need 0 < duration <= max_duration"));
        }
        if let Some(j) = &b.journal {
            journal_writable(&self.path(j.get_ref()))
                .map_err(|r| self.err("bans.journal", Some(j.span()), r.to_string()))?;
        }
        let ban_limits = self.ban_limits(b, &global)?;
        let tiers = Arc::new(self.tiers(&raw.tiers, &fronts)?);
        global.tiers = tiers.clone();
        for f in &mut fronts {
            f.admission.tiers = tiers.clone();
        }
        let journal = b.journal.as_ref().map(|p| self.path(p.get_ref()));
        let feeds = self.feeds(&raw.feeds, journal.as_deref())?;
        let crowdsec = self.crowdsec(raw.crowdsec.as_ref())?;
        Ok(Config {
            tiers,
            feeds,
            crowdsec,
            cost,
            bans: BanPolicy {
                enabled: b.enabled,
                duration: b.duration.0,
                max_duration: b.max_duration.0,
                max_violations: b.max_violations,
                journal: b.journal.as_ref().map(|p| self.path(p.get_ref())),
                limits: ban_limits,
            },
            admin,
            limits: self.limits(&raw.limits)?,
            cluster: raw.cluster.as_ref().map(|c| self.cluster(c)).transpose()?,
            acme: self.acme.clone(),
            public_hosts: raw.electrum.public_hosts.clone(),
            source: self.file.to_path_buf(),
            runtime: Runtime {
                worker_threads: raw.runtime.worker_threads.as_ref().map_or(0, |w| *w.get_ref()),
                drain_deadline: raw.runtime.drain_deadline.0,
                drain_spread: raw.runtime.drain_spread.0.min(raw.runtime.drain_deadline.0),
                max_open_files: raw.runtime.max_open_files,
                intake: self.intake(&raw.runtime)?,
                upgrade_timeout: match raw.runtime.upgrade_timeout.0 {
                    d if d.is_zero() => {
                        return Err(self.err("runtime.upgrade_timeout", None, "must be greater than 0s"))
                    }
                    d => d,
                },
            },
            log: LogSettings {
                format: raw.log.format,
                level: raw.log.level,
                refusal_interval: raw.log.refusal_interval.0,
                file: log_file,
            },
            admission: global,
            fronts,
        })
    }

    /// `[[tier]]`: names unique and fit for a metric label, networks that overlap no other tier's,
    /// credentials that name an API front's user or token, multipliers above 0.
    fn tiers(&self, raw: &[RawTier], fronts: &[Front]) -> Result<Tiers, ConfigError> {
        if raw.len() > MAX_TIERS {
            return Err(self.err(
                format!("tier[{MAX_TIERS}]"),
                Some(raw[MAX_TIERS].name.span()),
                format!("at most {MAX_TIERS} tiers"),
            ));
        }
        let mut tiers: Vec<Tier> = Vec::with_capacity(raw.len());
        // Every tier network so far, with the tier that holds it, to find overlaps.
        let mut seen: Vec<(IpNetwork, String)> = Vec::new();
        let mut claimed: Vec<(&str, String)> = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let key = format!("tier[{i}]");
            let name = r.name.get_ref();
            let label_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !label_ok {
                return Err(self.err(
                    format!("{key}.name"),
                    Some(r.name.span()),
                    format!("`{name}` must be 1-64 letters, digits, `-` or `_` (it is a metric label)"),
                ));
            }
            if tiers.iter().any(|t| &t.name == name) {
                return Err(self.err(
                    format!("{key}.name"),
                    Some(r.name.span()),
                    format!("duplicate tier name `{name}`"),
                ));
            }
            let mut t = Tier::new(name.clone());
            let mut nets = self.cidrs(&format!("{key}.networks"), &r.networks)?;
            let listed = nets.len();
            if let Some(f) = &r.networks_file {
                self.cidr_files(&format!("{key}.networks_file"), std::slice::from_ref(f), &mut nets)?;
            }
            for (j, n) in nets.iter().enumerate() {
                let (nkey, span) = if j < listed {
                    (format!("{key}.networks[{j}]"), Some(r.networks[j].span()))
                } else {
                    (
                        format!("{key}.networks_file"),
                        r.networks_file.as_ref().map(|f| f.span()),
                    )
                };
                let n = normalize_net(*n);
                if let Some((o, owner)) = seen
                    .iter()
                    .find(|(o, _)| o.contains(n.network()) || n.contains(o.network()))
                {
                    let whose = if owner == name {
                        "listed twice in this tier".to_string()
                    } else {
                        format!("tier `{owner}`")
                    };
                    return Err(self.err(
                        nkey,
                        span,
                        format!("{n} overlaps {o} ({whose}): a client belongs to one tier"),
                    ));
                }
                seen.push((n, name.clone()));
                t.networks.push(n);
            }
            for (j, c) in r.credentials.iter().enumerate() {
                let ckey = format!("{key}.credentials[{j}]");
                let c_name = c.get_ref().as_str();
                let known = fronts
                    .iter()
                    .filter_map(|f| f.api.as_ref())
                    .any(|a| a.users.iter().any(|u| u.name == c_name) || a.tokens.iter().any(|t| t.name == c_name));
                if !known {
                    return Err(self.err(
                        ckey,
                        Some(c.span()),
                        format!("`{c_name}` is no user or token name of any [front.api]"),
                    ));
                }
                if let Some((_, owner)) = claimed.iter().find(|(n, _)| *n == c_name) {
                    return Err(self.err(
                        ckey,
                        Some(c.span()),
                        format!("`{c_name}` already belongs to tier `{owner}`"),
                    ));
                }
                claimed.push((c_name, name.clone()));
                t.credentials.push(c_name.to_string());
            }
            if t.networks.is_empty() && t.credentials.is_empty() {
                return Err(self.err(
                    format!("{key}.networks"),
                    Some(r.name.span()),
                    "a tier needs networks, a networks_file or credentials",
                ));
            }
            for (field, v, slot) in [
                ("connections_per_ip", &r.connections_per_ip, &mut t.connections_per_ip),
                (
                    "connections_per_group",
                    &r.connections_per_group,
                    &mut t.connections_per_group,
                ),
                ("connect_rate", &r.connect_rate, &mut t.connect_rate),
                ("cost", &r.cost, &mut t.cost),
                ("subscriptions", &r.subscriptions, &mut t.subscriptions),
            ] {
                if let Some(v) = v {
                    *slot = match v.get_ref() {
                        RawScale::Times(k) if k.is_finite() && *k > 0.0 && *k <= MAX_SCALE => Scale::Times(*k),
                        RawScale::Word(w) if w == "exempt" => Scale::Exempt,
                        RawScale::Times(k) => {
                            return Err(self.err(
                                format!("{key}.{field}"),
                                Some(v.span()),
                                format!(
                                    "multiplier {k} must be a number greater than 0 and at most {MAX_SCALE} (or \"exempt\")"
                                ),
                            ))
                        }
                        RawScale::Word(w) => {
                            return Err(self.err(
                                format!("{key}.{field}"),
                                Some(v.span()),
                                format!("`{w}` is neither a multiplier nor \"exempt\""),
                            ))
                        }
                    };
                }
            }
            t.bans = match r.bans.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
                None | Some(("auto", _)) => TierBans::Auto,
                Some(("never", _)) => TierBans::Never,
                Some((other, span)) => {
                    return Err(self.err(
                        format!("{key}.bans"),
                        Some(span),
                        format!("`{other}` is neither \"auto\" nor \"never\""),
                    ))
                }
            };
            tiers.push(t);
        }
        Ok(Tiers::new(tiers))
    }

    fn admin(&self, a: &schema::RawAdmin) -> Result<AdminConfig, ConfigError> {
        let listen = match &a.listen {
            None => AdminListen::Tcp(DEFAULT_ADMIN_LISTEN.parse().expect("built-in address")),
            Some(s) => {
                let text = s.get_ref().as_str();
                if let Some(path) = text.strip_prefix("unix:") {
                    if path.is_empty() {
                        return Err(self.err("admin.listen", Some(s.span()), "`unix:` needs a socket path"));
                    }
                    AdminListen::Unix(self.path(Path::new(path)))
                } else {
                    let addr = text.parse::<SocketAddr>().map_err(|e| {
                        self.err(
                            "admin.listen",
                            Some(s.span()),
                            format!("`{text}` is neither IP:PORT nor unix:PATH ({e})"),
                        )
                    })?;
                    if !addr.ip().to_canonical().is_loopback() && !a.allow_remote {
                        return Err(self.err(
                            "admin.listen",
                            Some(s.span()),
                            format!(
                                "{addr} is not a loopback address; the admin API stays on this host unless \
                                 admin.allow_remote = true"
                            ),
                        ));
                    }
                    AdminListen::Tcp(addr)
                }
            }
        };
        let token_file = a.token_file.as_ref().map(|p| self.path(p.get_ref()));
        let token = match (a.enabled, &a.token_file, &token_file) {
            (false, _, _) => None,
            (true, Some(span), Some(path)) => Some(
                read_token_file(path).map_err(|r| self.err("admin.token_file", Some(span.span()), r.to_string()))?,
            ),
            _ => {
                return Err(self.err(
                    "admin.token_file",
                    None,
                    "required when admin.enabled = true (a file holding the bearer token)",
                ))
            }
        };
        let max_connections_per_peer = match &a.max_connections_per_peer {
            None => DEFAULT_ADMIN_CONNECTIONS_PER_PEER,
            Some(n) if (1..=ADMIN_MAX_CONNECTIONS).contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                return Err(self.err(
                    "admin.max_connections_per_peer",
                    Some(n.span()),
                    format!(
                        "must be between 1 and {} (all admin connections)",
                        ADMIN_MAX_CONNECTIONS
                    ),
                ))
            }
        };
        Ok(AdminConfig {
            max_connections_per_peer,
            enabled: a.enabled,
            listen,
            token_file,
            token,
            allow_remote: a.allow_remote,
            metrics_public: a.metrics_public,
        })
    }

    fn intake(&self, r: &schema::RawRuntime) -> Result<IntakeSettings, ConfigError> {
        let mut intake = IntakeSettings::default();
        if let Some(t) = &r.intake_threads {
            intake.threads = *t.get_ref();
            if intake.threads > MAX_INTAKE_THREADS {
                return Err(self.err(
                    "runtime.intake_threads",
                    Some(t.span()),
                    format!(
                        "{} is more than {MAX_INTAKE_THREADS} threads (0 = accept and handshake on the workers)",
                        intake.threads
                    ),
                ));
            }
        }
        if let Some(n) = &r.intake_nice {
            intake.nice = *n.get_ref();
            if !(0..=MAX_NICE).contains(&intake.nice) {
                return Err(self.err(
                    "runtime.intake_nice",
                    Some(n.span()),
                    format!(
                        "{} is not a nice value from 0 (the workers' priority) to {MAX_NICE} (the lowest)",
                        intake.nice
                    ),
                ));
            }
        }
        Ok(intake)
    }

    fn limits(&self, l: &schema::RawLimits) -> Result<Limits, ConfigError> {
        use crate::state::memory::{DEFAULT_MEMORY_BUDGET, MIN_MEMORY_BUDGET};
        let memory_budget = l
            .memory_budget
            .as_ref()
            .map_or(DEFAULT_MEMORY_BUDGET, |b| b.get_ref().0);
        if memory_budget < MIN_MEMORY_BUDGET {
            return Err(self.err(
                "limits.memory_budget",
                span_of(&l.memory_budget),
                format!(
                    "{} is too small: at least {} (one large but legitimate reply must fit)",
                    units::ByteSize(memory_budget),
                    units::ByteSize(MIN_MEMORY_BUDGET)
                ),
            ));
        }
        Ok(Limits { memory_budget })
    }

    fn cost(&self, c: &schema::RawCost) -> Result<CostConfig, ConfigError> {
        let disabled = c.soft_limit == 0.0 && c.hard_limit == 0.0;
        if !(disabled || c.soft_limit >= 0.0 && c.hard_limit > c.soft_limit) {
            return Err(self.err(
                "cost.hard_limit",
                None,
                format!(
                    "must be greater than soft_limit ({} vs {}); set both to 0 to disable throttling",
                    c.hard_limit, c.soft_limit
                ),
            ));
        }
        if c.initial_concurrency == 0 {
            return Err(self.err("cost.initial_concurrency", None, "must be at least 1"));
        }
        if c.bandwidth_unit.0 == 0 {
            return Err(self.err("cost.bandwidth_unit", None, "must be at least 1B"));
        }
        if c.request_timeout.0.is_zero() {
            return Err(self.err("cost.request_timeout", None, "must be greater than 0s"));
        }
        for (name, v) in &c.methods {
            if !(v.is_finite() && *v >= 0.0) {
                return Err(self.err(
                    format!("cost.methods.{name}"),
                    None,
                    "cost must be a non-negative number",
                ));
            }
        }
        Ok(CostConfig {
            soft_limit: c.soft_limit,
            hard_limit: c.hard_limit,
            max_sleep: c.max_sleep.0,
            initial_concurrency: c.initial_concurrency,
            bytes_per_unit: c.bandwidth_unit.0 as f64,
            request_timeout: c.request_timeout.0,
            retained_drain_per_sec: f64::from(c.retained_drain.count) / c.retained_drain.per.as_secs_f64(),
            group_private: c.group_private,
            connection_cost: c.connection_cost,
            error_cost: c.error_cost,
            parse_error_cost: c.parse_error_cost,
            max_subscriptions_per_group: c.max_subscriptions_per_group,
            method_costs: c.methods.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            fee: self.fee(&c.ledger)?,
        })
    }

    fn fee(&self, f: &schema::RawFee) -> Result<FeeParams, ConfigError> {
        let d = FeeParams::default();
        let window = f.window.as_ref().map_or(d.window, |v| v.get_ref().0);
        let remember = f.remember.as_ref().map_or(d.remember, |v| v.get_ref().0);
        let warning = f.warning.as_ref().map_or(d.warning, |v| *v.get_ref());
        let drop = f.drop.as_ref().map_or(d.drop, |v| *v.get_ref());
        for (key, v, span) in [
            ("cost.ledger.window", window, span_of(&f.window)),
            ("cost.ledger.remember", remember, span_of(&f.remember)),
        ] {
            if v.is_zero() {
                return Err(self.err(key, span, "must be greater than 0s"));
            }
        }
        for (key, v, span) in [
            ("cost.ledger.warning", warning, span_of(&f.warning)),
            ("cost.ledger.drop", drop, span_of(&f.drop)),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(self.err(key, span, "must be a non-negative number (0 turns it off)"));
            }
        }
        if warning > 0.0 && drop > 0.0 && drop <= warning {
            let (key, span) = match &f.drop {
                Some(v) => ("cost.ledger.drop", Some(v.span())),
                None => ("cost.ledger.warning", span_of(&f.warning)),
            };
            return Err(self.err(
                key,
                span,
                format!("drop must be greater than warning ({drop} vs {warning})"),
            ));
        }
        Ok(FeeParams {
            window,
            warning,
            drop,
            remember,
        })
    }

    fn electrum(&self, key: &str, e: Option<&schema::RawFrontElectrum>) -> Result<ElectrumSettings, ConfigError> {
        let d = schema::RawFrontElectrum::default();
        let e = e.unwrap_or(&d);
        let profile = match e.profile {
            schema::RawProfile::Bitcoin => Profile::Bitcoin,
            schema::RawProfile::Kevacoin => Profile::Kevacoin,
        };
        let kevacoin = profile == Profile::Kevacoin;
        let version = |v: &Option<Spanned<String>>, k: &str, dflt: &str| -> Result<ProtoVersion, ConfigError> {
            match v {
                None => Ok(dflt.parse().expect("built-in version")),
                Some(s) => s.get_ref().parse().map_err(|_| {
                    self.err(
                        format!("{key}.{k}"),
                        Some(s.span()),
                        format!("`{}` is not a protocol version like \"1.4\"", s.get_ref()),
                    )
                }),
            }
        };
        let protocol_min = version(&e.protocol_min, "protocol_min", "1.4")?;
        let protocol_max = version(&e.protocol_max, "protocol_max", if kevacoin { "1.4.2" } else { "1.6" })?;
        if protocol_min > protocol_max {
            return Err(self.err(format!("{key}.protocol_min"), None, "must not be above protocol_max"));
        }
        let at_least = |v: &Option<Spanned<units::ByteSize>>, k: &str, min: u64| match v {
            Some(b) if b.get_ref().0 < min => Err(self.err(
                format!("{key}.{k}"),
                Some(b.span()),
                format!(
                    "{} is below the smallest useful value, {}",
                    b.get_ref(),
                    units::ByteSize(min)
                ),
            )),
            _ => Ok(v.as_ref().map(|b| b.get_ref().0 as usize)),
        };
        let max_line = at_least(&e.max_line, "max_line", MIN_MAX_LINE)?;
        let max_pending_output = at_least(&e.max_pending_output, "max_pending_output", MIN_PENDING_OUTPUT)?;
        let max_batch = e.max_batch.unwrap_or(DEFAULT_MAX_BATCH);
        if max_batch == 0 {
            return Err(self.err(format!("{key}.max_batch"), None, "must be at least 1"));
        }
        let line_grace = e.line_grace.as_ref().map_or(DEFAULT_LINE_GRACE, |d| d.get_ref().0);
        if line_grace < MIN_LINE_GRACE {
            return Err(self.err(
                format!("{key}.line_grace"),
                span_of(&e.line_grace),
                format!(
                    "must be at least {} (shorter, a line that merely spans two TCP segments could be cut)",
                    units::Duration(MIN_LINE_GRACE)
                ),
            ));
        }
        let max_nesting = e.max_nesting.as_ref().map_or(DEFAULT_MAX_NESTING, |n| *n.get_ref());
        if max_nesting < 2 {
            return Err(self.err(
                format!("{key}.max_nesting"),
                e.max_nesting.as_ref().map(|n| n.span()),
                "must be at least 2 (a request with parameters nests 2 levels)",
            ));
        }
        Ok(ElectrumSettings {
            profile,
            version_policy: e.version_policy,
            version_answer: e.version_answer,
            protocol_min,
            protocol_max,
            max_line: max_line.unwrap_or(DEFAULT_MAX_LINE),
            min_line_rate: e.min_line_rate.unwrap_or(DEFAULT_MIN_LINE_RATE),
            line_grace,
            max_response: e.max_response.map_or(
                if kevacoin {
                    DEFAULT_MAX_RESPONSE_KEVACOIN
                } else {
                    DEFAULT_MAX_RESPONSE
                },
                |b| b.0 as usize,
            ),
            max_batch,
            max_nesting,
            extra_methods: e.extra_methods.clone(),
            banner: e.banner.clone(),
            max_subscriptions: e.max_subscriptions.unwrap_or(DEFAULT_MAX_SUBSCRIPTIONS),
            max_pending_output: max_pending_output.unwrap_or(DEFAULT_MAX_PENDING_OUTPUT),
            slow_reader_timeout: e.slow_reader_timeout.map_or(DEFAULT_SLOW_READER_TIMEOUT, |d| d.0),
        })
    }

    fn ban_limits(
        &self,
        b: &schema::RawBans,
        global: &Admission,
    ) -> Result<crate::state::bans::BanLimits, ConfigError> {
        let d = crate::state::bans::BanLimits::default();
        let pick = |v: &Option<Spanned<u8>>, default: u8| v.as_ref().map_or(default, |v| *v.get_ref());
        let v4 = pick(&b.min_prefix_v4, d.min_prefix_v4);
        let v6 = pick(&b.min_prefix_v6, d.min_prefix_v6);
        let ipv6 = pick(&b.ipv6_prefix, d.ipv6_prefix);
        if !(1..=32).contains(&v4) {
            return Err(self.err(
                "bans.min_prefix_v4",
                span_of(&b.min_prefix_v4),
                "must be 1..=32 (a /0 ban covers everyone)",
            ));
        }
        if !(1..=128).contains(&v6) {
            return Err(self.err(
                "bans.min_prefix_v6",
                span_of(&b.min_prefix_v6),
                "must be 1..=128 (a /0 ban covers everyone)",
            ));
        }
        if !(v6..=128).contains(&ipv6) {
            return Err(self.err(
                "bans.ipv6_prefix",
                span_of(&b.ipv6_prefix),
                format!("must be between bans.min_prefix_v6 ({v6}) and 128"),
            ));
        }
        let max_entries = b.max_entries.as_ref().map_or(d.max_entries, |v| *v.get_ref());
        if max_entries == 0 {
            return Err(self.err("bans.max_entries", span_of(&b.max_entries), "must be at least 1"));
        }
        let escalate_after = b.escalate_after.as_ref().map_or(d.escalate_after, |v| *v.get_ref());
        if escalate_after == 1 {
            return Err(self.err(
                "bans.escalate_after",
                span_of(&b.escalate_after),
                "must be 0 (never) or at least 2: 1 would ban a whole group for one address",
            ));
        }
        Ok(crate::state::bans::BanLimits {
            min_prefix_v4: v4,
            min_prefix_v6: v6,
            group_prefix_v4: global.group_prefix_v4,
            group_prefix_v6: global.group_prefix_v6,
            ipv6_prefix: ipv6,
            escalate_after,
            max_entries,
        })
    }

    fn cluster(&self, c: &schema::RawCluster) -> Result<crate::cluster::ClusterConfig, ConfigError> {
        let addr = |key: &str, s: &Spanned<String>| {
            s.get_ref().parse::<SocketAddr>().map_err(|e| {
                self.err(
                    key.to_string(),
                    Some(s.span()),
                    format!("`{}` is not an address:port ({e})", s.get_ref()),
                )
            })
        };
        let node_key = self.path(c.node_key.get_ref());
        if !node_key.is_file() {
            return Err(self.err(
                "cluster.node_key",
                Some(c.node_key.span()),
                format!(
                    "{}: no such file (make one with `gatehouse keygen --out FILE`)",
                    node_key.display()
                ),
            ));
        }
        let backend = match c.backend.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
            None | Some(("links", _)) => crate::cluster::Backend::Links,
            Some(("redis", span)) => {
                let Some(url) = &c.redis_url else {
                    return Err(self.err(
                        "cluster.redis_url",
                        Some(span),
                        "required when cluster.backend = \"redis\" (redis://[:password@]host[:port][/db])",
                    ));
                };
                let redis = crate::cluster::redis::RedisConfig::new(url.get_ref(), &c.redis_prefix)
                    .map_err(|e| self.err("cluster.redis_url", Some(url.span()), e.to_string()))?;
                let redis = match &c.redis_acme_key_file {
                    None => redis,
                    Some(f) => {
                        let key_err = |reason: String| self.err("cluster.redis_acme_key_file", Some(f.span()), reason);
                        let path = self.path(f.get_ref());
                        let bytes = std::fs::read(&path).map_err(|e| key_err(format!("{}: {e}", path.display())))?;
                        let key = crate::cluster::acme_seal::parse_key(&bytes)
                            .map_err(|e| key_err(format!("{}: {e}", path.display())))?;
                        redis.with_acme_key(key)
                    }
                };
                crate::cluster::Backend::Redis(redis)
            }
            Some((other, span)) => {
                return Err(self.err(
                    "cluster.backend",
                    Some(span),
                    format!("`{other}` is not a cluster backend (\"links\" or \"redis\")"),
                ))
            }
        };
        let links = matches!(backend, crate::cluster::Backend::Links);
        // The Redis backend neither listens nor dials: addresses are optional there and, when absent, left
        // unspecified (the status shows none).
        let optional_addr = |key: &str, s: Option<&Spanned<String>>| match s {
            Some(s) => addr(key, s),
            None if links => Err(self.err(key.to_string(), None, "required by the links backend")),
            None => Ok(crate::cluster::UNSPECIFIED_ADDR),
        };
        let mut peers = Vec::new();
        for (i, p) in c.peers.iter().enumerate() {
            let key = crate::cluster::keys::PublicKey::parse(p.key.get_ref())
                .map_err(|e| self.err(format!("cluster.peers[{i}].key"), Some(p.key.span()), e.to_string()))?;
            peers.push((
                optional_addr(&format!("cluster.peers[{i}].addr"), p.addr.as_ref())?,
                key,
            ));
        }
        if c.anti_entropy.0.is_zero() {
            return Err(self.err("cluster.anti_entropy", None, "must be greater than 0s"));
        }
        let cost = self.cluster_cost(&c.cost)?;
        let d = crate::cluster::RecordLimits::default();
        let limits = crate::cluster::RecordLimits {
            max_duration: c.max_record_duration.as_ref().map_or(d.max_duration, |v| v.get_ref().0),
            max_per_origin: c
                .max_records_per_origin
                .as_ref()
                .map_or(d.max_per_origin, |v| *v.get_ref()),
        };
        if limits.max_duration.is_zero() {
            return Err(self.err(
                "cluster.max_record_duration",
                span_of(&c.max_record_duration),
                "must be greater than 0s",
            ));
        }
        if limits.max_per_origin == 0 {
            return Err(self.err(
                "cluster.max_records_per_origin",
                span_of(&c.max_records_per_origin),
                "must be at least 1",
            ));
        }
        Ok(crate::cluster::ClusterConfig {
            node_key_path: node_key,
            listen: optional_addr("cluster.listen", c.listen.as_ref())?,
            peers,
            anti_entropy: c.anti_entropy.0,
            cost,
            backend,
            limits,
        })
    }

    fn cluster_cost(&self, k: &schema::RawClusterCost) -> Result<crate::cluster::cost::CostSharing, ConfigError> {
        let d = crate::cluster::cost::CostSharing::default();
        let interval = k.interval.as_ref().map_or(d.interval, |v| v.get_ref().0);
        let expiry = k.expiry.as_ref().map_or(d.expiry, |v| v.get_ref().0);
        let threshold = k.threshold.as_ref().map_or(d.threshold, |v| *v.get_ref());
        let max_groups = k.max_groups.as_ref().map_or(d.max_groups, |v| *v.get_ref());
        if interval.is_zero() {
            return Err(self.err("cluster.cost.interval", span_of(&k.interval), "must be greater than 0s"));
        }
        if expiry <= interval {
            return Err(self.err(
                "cluster.cost.expiry",
                span_of(&k.expiry).or(span_of(&k.interval)),
                format!(
                    "must be longer than cluster.cost.interval ({interval:?}), or peers' figures lapse between reports"
                ),
            ));
        }
        if !(threshold.is_finite() && threshold >= 0.0) {
            return Err(self.err(
                "cluster.cost.threshold",
                span_of(&k.threshold),
                "must be a non-negative number",
            ));
        }
        if max_groups == 0 {
            return Err(self.err("cluster.cost.max_groups", span_of(&k.max_groups), "must be at least 1"));
        }
        let max_report_cost = k.max_report_cost.as_ref().map_or(d.max_report_cost, |v| *v.get_ref());
        if !(max_report_cost.is_finite() && max_report_cost > 0.0) {
            return Err(self.err(
                "cluster.cost.max_report_cost",
                span_of(&k.max_report_cost),
                "must be a positive number (of [cost] hard limits)",
            ));
        }
        Ok(crate::cluster::cost::CostSharing {
            enabled: k.enabled.unwrap_or(d.enabled),
            interval,
            threshold,
            expiry,
            max_groups,
            max_report_cost,
        })
    }

    fn cidrs(&self, key: &str, items: &[Spanned<String>]) -> Result<Vec<IpNetwork>, ConfigError> {
        items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_cidr(s.get_ref()).map_err(|r| self.err(format!("{key}[{i}]"), Some(s.span()), r.to_string()))
            })
            .collect()
    }

    fn cidr_files(&self, key: &str, files: &[Spanned<PathBuf>], into: &mut Vec<IpNetwork>) -> Result<(), ConfigError> {
        for (i, f) in files.iter().enumerate() {
            let nets = load_cidr_file(&self.path(f.get_ref()))
                .map_err(|e| self.err(format!("{key}[{i}]"), Some(f.span()), e.to_string()))?;
            into.extend(nets);
        }
        Ok(())
    }

    /// `parent` is the global level a front inherits group prefixes from; caps and rates are not
    /// inherited because they count at their own level.
    fn admission(&self, key: &str, a: &RawAdmission, parent: Option<&Admission>) -> Result<Admission, ConfigError> {
        let mut allow = self.cidrs(&format!("{key}.allow"), &a.allow)?;
        self.cidr_files(&format!("{key}.allow_files"), &a.allow_files, &mut allow)?;
        let mut deny = self.cidrs(&format!("{key}.deny"), &a.deny)?;
        self.cidr_files(&format!("{key}.deny_files"), &a.deny_files, &mut deny)?;
        let (dv4, dv6) = parent.map_or((DEFAULT_GROUP_PREFIX_V4, DEFAULT_GROUP_PREFIX_V6), |p| {
            (p.group_prefix_v4, p.group_prefix_v6)
        });
        let v4 = a.group_prefix_v4.unwrap_or(dv4);
        let v6 = a.group_prefix_v6.unwrap_or(dv6);
        if v4 > 32 {
            return Err(self.err(
                format!("{key}.group_prefix_v4"),
                None,
                format!("{v4} is not an IPv4 prefix length (0-32)"),
            ));
        }
        if v6 > 128 {
            return Err(self.err(
                format!("{key}.group_prefix_v6"),
                None,
                format!("{v6} is not an IPv6 prefix length (0-128)"),
            ));
        }
        let global = parent.is_none();
        let cap = |v: &Option<Spanned<usize>>, k: &str| match v {
            Some(n) if *n.get_ref() == 0 => Err(self.err(
                format!("{key}.{k}"),
                Some(n.span()),
                "must be at least 1 (0 would refuse every connection)",
            )),
            Some(n) => Ok(Some(*n.get_ref())),
            None => Ok(None),
        };
        let rate = |r: Option<Rate>,
                    b: Option<u32>,
                    rk: &str,
                    bk: &str,
                    dflt: Option<RateLimit>|
         -> Result<Option<RateLimit>, ConfigError> {
            match (r, b) {
                (Some(rate), burst) => {
                    let burst = burst.unwrap_or(rate.count.max(1));
                    if burst == 0 {
                        return Err(self.err(format!("{key}.{bk}"), None, "burst must be at least 1"));
                    }
                    Ok(Some(RateLimit { rate, burst }))
                }
                (None, Some(_)) => Err(self.err(format!("{key}.{bk}"), None, format!("set {rk} as well"))),
                (None, None) => Ok(dflt),
            }
        };
        let default_ip_rate = global.then_some(DEFAULT_RATE_PER_IP);
        Ok(Admission {
            allow: CidrSet::from_nets(allow),
            deny: CidrSet::from_nets(deny),
            allowlist_only: a.allowlist_only,
            max_connections: cap(&a.max_connections, "max_connections")?.or(global.then_some(DEFAULT_MAX_CONNECTIONS)),
            max_connections_per_ip: cap(&a.max_connections_per_ip, "max_connections_per_ip")?
                .or(global.then_some(DEFAULT_MAX_CONNECTIONS_PER_IP)),
            max_connections_per_group: cap(&a.max_connections_per_group, "max_connections_per_group")?
                .or(global.then_some(DEFAULT_MAX_CONNECTIONS_PER_GROUP)),
            group_prefix_v4: v4,
            group_prefix_v6: v6,
            rate_per_ip: rate(
                a.connect_rate_per_ip,
                a.connect_burst_per_ip,
                "connect_rate_per_ip",
                "connect_burst_per_ip",
                default_ip_rate,
            )?,
            tiers: Arc::new(Tiers::default()),
            rate_per_group: rate(
                a.connect_rate_per_group,
                a.connect_burst_per_group,
                "connect_rate_per_group",
                "connect_burst_per_group",
                None,
            )?,
        })
    }

    fn front(&self, key: &str, f: &RawFront, global: &Admission) -> Result<Front, ConfigError> {
        if f.name.trim().is_empty() {
            return Err(self.err(format!("{key}.name"), None, "must not be empty"));
        }
        // An empty list is checked in `sni_routes`: only a front that receives routed connections may have it.
        let listen = f
            .listen
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.get_ref().parse::<SocketAddr>().map_err(|e| {
                    self.err(
                        format!("{key}.listen[{i}]"),
                        Some(s.span()),
                        format!("`{}` is not an address:port ({e})", s.get_ref()),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if f.upstreams.is_empty() {
            return Err(self.err(format!("{key}.upstreams"), None, "at least one upstream is required"));
        }
        let mut upstreams = Vec::new();
        for (i, s) in f.upstreams.iter().enumerate() {
            let addr = s
                .get_ref()
                .to_socket_addrs()
                .map_err(|e| {
                    self.err(
                        format!("{key}.upstreams[{i}]"),
                        Some(s.span()),
                        format!("cannot resolve `{}`: {e}", s.get_ref()),
                    )
                })?
                .next()
                .ok_or_else(|| {
                    self.err(
                        format!("{key}.upstreams[{i}]"),
                        Some(s.span()),
                        format!("`{}` resolves to no address", s.get_ref()),
                    )
                })?;
            upstreams.push(addr);
        }
        let (api, ledger) = match (f.kind, &f.api) {
            (FrontKind::Api, Some(a)) if *a.profile.get_ref() == ApiProfile::Ledger => {
                (None, Some(Arc::new(self.ledger_api(&format!("{key}.api"), a)?)))
            }
            (FrontKind::Api, Some(a)) => (Some(Arc::new(self.api(&format!("{key}.api"), a)?)), None),
            (FrontKind::Api, None) => {
                return Err(self.err(
                    format!("{key}.api"),
                    None,
                    "kind = \"api\" needs an [front.api] section with a profile",
                ))
            }
            (_, Some(_)) => {
                return Err(self.err(
                    format!("{key}.api"),
                    None,
                    "an [front.api] section needs kind = \"api\"",
                ))
            }
            (_, None) => (None, None),
        };
        let electrum = match (f.kind, &f.electrum) {
            (FrontKind::Peer | FrontKind::Api, Some(_)) => {
                return Err(self.err(
                    format!("{key}.electrum"),
                    None,
                    "an [front.electrum] section needs kind = \"electrum\"",
                ))
            }
            (FrontKind::Peer | FrontKind::Api, None) => {
                if matches!(f.transport, Transport::Ws | Transport::Wss) {
                    return Err(self.err(
                        format!("{key}.transport"),
                        None,
                        "ws and wss are for kind = \"electrum\" fronts",
                    ));
                }
                None
            }
            (FrontKind::Electrum, e) => Some(Arc::new(self.electrum(&format!("{key}.electrum"), e.as_ref())?)),
        };
        let tls = match (f.transport.uses_tls(), &f.tls) {
            (true, None) => {
                return Err(self.err(
                    format!("{key}.tls"),
                    None,
                    "transport = \"tls\" or \"wss\" needs a [front.tls] section with cert and key, or acme",
                ))
            }
            (false, Some(_)) => {
                return Err(self.err(
                    format!("{key}.tls"),
                    None,
                    "a [front.tls] section needs transport = \"tls\" or \"wss\"",
                ))
            }
            (false, None) => None,
            (true, Some(t)) => Some(self.tls(&format!("{key}.tls"), t)?),
        };
        let (tls, cert_watch) = match tls {
            Some((c, w)) => (Some(c), Some(w)),
            None => (None, None),
        };
        let proxy_accept_from = CidrSet::from_nets(self.cidrs(
            &format!("{key}.proxy_protocol.accept_from"),
            &f.proxy_protocol.accept_from,
        )?);
        let t = &f.timeouts;
        if t.handshake.0.is_zero() {
            return Err(self.err(format!("{key}.timeouts.handshake"), None, "must be greater than 0s"));
        }
        if t.idle.0.is_zero() {
            return Err(self.err(format!("{key}.timeouts.idle"), None, "must be greater than 0s"));
        }
        if f.upstream.connect_timeout.0.is_zero() {
            return Err(self.err(
                format!("{key}.upstream.connect_timeout"),
                None,
                "must be greater than 0s",
            ));
        }
        let budget = self.budget(&format!("{key}.upstream"), f)?;
        Ok(Front {
            name: f.name.clone(),
            kind: f.kind,
            listen,
            transport: f.transport,
            tls,
            cert_watch,
            admission: self.admission(&format!("{key}.admission"), &f.admission, Some(global))?,
            proxy_accept_from,
            upstreams,
            send_proxy: f.upstream.send_proxy,
            connect_timeout: f.upstream.connect_timeout.0,
            retry_backoff: f.upstream.retry_backoff.0,
            budget,
            handshake_timeout: t.handshake.0,
            idle_timeout: t.idle.0,
            electrum,
            api,
            ledger,
            peer: Arc::new(self.peer(key, f)?),
            sni_routes: f
                .tls
                .iter()
                .flat_map(|t| &t.sni)
                .filter_map(|s| {
                    s.route.as_ref().map(|r| SniRoute {
                        name: s.name.to_ascii_lowercase(),
                        target: r.get_ref().clone(),
                    })
                })
                .collect(),
        })
    }

    /// Routes name an existing other front that serves decrypted streams and routes nothing itself (one
    /// step, so no loop); a front without listen addresses must be some route's target.
    fn sni_routes(&self, fronts: &[Front], raw: &[RawFront]) -> Result<(), ConfigError> {
        use crate::front::peer::settings::PeerProtocol;
        for (i, rf) in raw.iter().enumerate() {
            let Some(t) = &rf.tls else { continue };
            for (j, s) in t.sni.iter().enumerate() {
                let Some(r) = &s.route else { continue };
                let key = format!("front[{i}].tls.sni[{j}].route");
                let err = |reason: String| Err(self.err(key.clone(), Some(r.span()), reason));
                let target = r.get_ref();
                if t.sni[..j].iter().any(|o| o.name.eq_ignore_ascii_case(&s.name)) {
                    return err(format!(
                        "`{}` has an earlier [[front.tls.sni]] table on this front",
                        s.name
                    ));
                }
                let Some(to) = fronts.iter().find(|f| &f.name == target) else {
                    return err(format!("no front is named `{target}`"));
                };
                if *target == rf.name {
                    return err("a front cannot route to itself".into());
                }
                if !to.sni_routes.is_empty() {
                    return err(format!(
                        "`{target}` routes by SNI itself; a route goes one step (the handshake happens once)"
                    ));
                }
                if to.peer.protocol == PeerProtocol::Tls {
                    return err(format!(
                        "`{target}` checks that its clients speak TLS, but routed connections arrive decrypted"
                    ));
                }
            }
        }
        for (i, f) in fronts.iter().enumerate() {
            if f.listen.is_empty() && !fronts.iter().any(|o| o.sni_routes.iter().any(|r| r.target == f.name)) {
                return Err(self.err(
                    format!("front[{i}].listen"),
                    None,
                    "at least one listen address is required (a front with none must be the target of another \
                     front's [[front.tls.sni]] route)",
                ));
            }
        }
        Ok(())
    }

    fn peer(&self, key: &str, f: &RawFront) -> Result<PeerSettings, ConfigError> {
        use crate::front::peer::settings::{self as d, BitcoinShape, Pace, PeerLimits, PeerProtocol, V2Policy};
        use crate::wire::bitcoin;
        let key = format!("{key}.peer");
        let Some(p) = &f.peer else {
            return Ok(PeerSettings::default());
        };
        let proto = p.protocol.as_ref().map_or(RawPeerProtocol::Any, |v| *v.get_ref());
        let proto_span = span_of(&p.protocol);
        if f.kind != FrontKind::Peer {
            return Err(self.err(key, proto_span, "a [front.peer] section needs kind = \"peer\""));
        }
        let bitcoin_only = |k: &str, span: Option<std::ops::Range<usize>>| {
            Err(self.err(format!("{key}.{k}"), span, "needs protocol = \"bitcoin\""))
        };
        if proto != RawPeerProtocol::Bitcoin {
            for (k, span) in [
                ("magic", span_of(&p.magic)),
                ("v2", span_of(&p.v2)),
                ("first_commands", span_of(&p.first_commands)),
                ("max_payload", span_of(&p.max_payload)),
                ("filter_addr", span_of(&p.filter_addr)),
                ("message_rate", span_of(&p.message_rate)),
                ("message_burst", span_of(&p.message_burst)),
            ] {
                if span.is_some() {
                    return bitcoin_only(k, span);
                }
            }
            if let Some((k, v)) = p.payload_caps.iter().next() {
                return bitcoin_only(&format!("payload_caps.{k}"), Some(v.span()));
            }
        }
        if proto == RawPeerProtocol::Tls && f.transport.uses_tls() {
            return Err(self.err(
                format!("{key}.protocol"),
                proto_span,
                "protocol = \"tls\" checks TLS the gateway relays untouched; use transport = \"tcp\"",
            ));
        }
        let payload = |k: &str, v: &Spanned<units::ByteSize>| match u32::try_from(v.get_ref().0) {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(self.err(
                format!("{key}.{k}"),
                Some(v.span()),
                "must be between 1 byte and 4GiB - 1",
            )),
        };
        let protocol = match proto {
            RawPeerProtocol::Any => PeerProtocol::Any,
            RawPeerProtocol::Tls => PeerProtocol::Tls,
            RawPeerProtocol::Bitcoin => {
                let Some(m) = &p.magic else {
                    return Err(self.err(
                        format!("{key}.magic"),
                        proto_span,
                        "protocol = \"bitcoin\" needs the chain's magic, e.g. \"f9beb4d9\" (mainnet)",
                    ));
                };
                let text = m.get_ref();
                let magic = (text.len() == 8)
                    .then(|| {
                        let mut b = [0u8; 4];
                        for (i, c) in b.iter_mut().enumerate() {
                            *c = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
                        }
                        Some(b)
                    })
                    .flatten()
                    .ok_or_else(|| {
                        self.err(
                            format!("{key}.magic"),
                            Some(m.span()),
                            format!("`{text}` is not 4 bytes in hex (e.g. \"fabfb5da\")"),
                        )
                    })?;
                let cmd = |k: String, name: &str, span| {
                    bitcoin::command(name).ok_or_else(|| {
                        self.err(
                            k,
                            Some(span),
                            format!("`{name}` is not a command (1 to 12 printable ASCII characters)"),
                        )
                    })
                };
                let first_commands = match &p.first_commands {
                    Some(v) if v.get_ref().is_empty() => {
                        return Err(self.err(
                            format!("{key}.first_commands"),
                            Some(v.span()),
                            "must name at least one command",
                        ))
                    }
                    Some(v) => v
                        .get_ref()
                        .iter()
                        .map(|c| cmd(format!("{key}.first_commands"), c, v.span()))
                        .collect::<Result<Vec<_>, _>>()?,
                    None => d::DEFAULT_FIRST_COMMANDS
                        .iter()
                        .map(|c| bitcoin::command(c).expect("a valid default"))
                        .collect(),
                };
                let mut caps = bitcoin::PayloadCaps::default();
                if let Some(v) = &p.max_payload {
                    caps.default = payload("max_payload", v)?;
                }
                for (name, v) in &p.payload_caps {
                    let k = format!("payload_caps.{name}");
                    let c = cmd(format!("{key}.{k}"), name, v.span())?;
                    caps.overrides.push((c, payload(&k, v)?));
                }
                PeerProtocol::Bitcoin(BitcoinShape {
                    magic,
                    first_commands,
                    caps,
                    v2: match p.v2.as_ref().map(|v| *v.get_ref()) {
                        Some(RawV2::Allow) | None => V2Policy::Allow,
                        Some(RawV2::Refuse) => V2Policy::Refuse,
                    },
                    filter_addr: p.filter_addr.as_ref().is_some_and(|v| *v.get_ref()),
                })
            }
        };
        let bytes =
            |rate: &Option<Spanned<units::ByteSize>>, burst: &Option<Spanned<units::ByteSize>>, k: &str, kb: &str| {
                let Some(r) = rate else {
                    return match burst {
                        Some(b) => Err(self.err(format!("{key}.{kb}"), Some(b.span()), format!("needs {k}"))),
                        None => Ok(None),
                    };
                };
                if r.get_ref().0 == 0 {
                    return Err(self.err(format!("{key}.{k}"), Some(r.span()), "must be greater than 0"));
                }
                let per_second = r.get_ref().0 as f64;
                // A burst below one buffer would make every read wait: the relay reads up to one at a time.
                let floor = crate::wire::buf::BUF_SIZE as f64;
                let burst = match burst {
                    Some(b) if (b.get_ref().0 as f64) < floor => {
                        return Err(self.err(format!("{key}.{kb}"), Some(b.span()), "must be at least 16KiB"))
                    }
                    Some(b) => b.get_ref().0 as f64,
                    None => per_second.max(floor),
                };
                Ok(Some(Pace { per_second, burst }))
            };
        let messages = match (&p.message_rate, &p.message_burst) {
            (Some(r), b) => {
                let per_second = f64::from(r.get_ref().count) / r.get_ref().per.as_secs_f64();
                let burst = match b {
                    Some(b) if *b.get_ref() == 0 => {
                        return Err(self.err(format!("{key}.message_burst"), Some(b.span()), "must be at least 1"))
                    }
                    Some(b) => f64::from(*b.get_ref()),
                    None => per_second.ceil().max(1.0),
                };
                Some(Pace { per_second, burst })
            }
            (None, Some(b)) => {
                return Err(self.err(format!("{key}.message_burst"), Some(b.span()), "needs message_rate"))
            }
            (None, None) => None,
        };
        let max_buffered = match &p.max_buffered {
            Some(b) if (b.get_ref().0 as usize) < d::MIN_MAX_BUFFERED => {
                return Err(self.err(format!("{key}.max_buffered"), Some(b.span()), "must be at least 64KiB"))
            }
            Some(b) => usize::try_from(b.get_ref().0).unwrap_or(usize::MAX),
            None => d::DEFAULT_MAX_BUFFERED,
        };
        let slow_peer_timeout = match &p.slow_peer_timeout {
            Some(t) if t.get_ref().0.is_zero() => {
                return Err(self.err(
                    format!("{key}.slow_peer_timeout"),
                    Some(t.span()),
                    "must be greater than 0s",
                ))
            }
            Some(t) => t.get_ref().0,
            None => d::DEFAULT_SLOW_PEER_TIMEOUT,
        };
        Ok(PeerSettings {
            protocol,
            limits: PeerLimits {
                bytes_in: bytes(&p.bytes_per_second_in, &p.burst_in, "bytes_per_second_in", "burst_in")?,
                bytes_out: bytes(
                    &p.bytes_per_second_out,
                    &p.burst_out,
                    "bytes_per_second_out",
                    "burst_out",
                )?,
                messages,
                max_buffered,
                slow_peer_timeout,
            },
        })
    }

    fn api(&self, key: &str, a: &RawFrontApi) -> Result<ApiSettings, ConfigError> {
        use crate::front::api::settings as d;
        self.ledger_keys_absent(key, a)?;
        let backend = match (&a.backend_user, &a.backend_password_file, &a.backend_cookie_file) {
            (Some(user), Some(file), None) => {
                if user.get_ref().is_empty() || user.get_ref().contains(':') {
                    return Err(self.err(
                        format!("{key}.backend_user"),
                        Some(user.span()),
                        "must be non-empty and hold no `:`",
                    ));
                }
                BackendAuth::from_password_file(user.get_ref(), self.path(file.get_ref()))
                    .map_err(|e| self.err(format!("{key}.backend_password_file"), Some(file.span()), e.to_string()))?
            }
            (None, None, Some(cookie)) => BackendAuth::Cookie(self.path(cookie.get_ref())),
            (_, _, Some(cookie)) => {
                return Err(self.err(
                    format!("{key}.backend_cookie_file"),
                    Some(cookie.span()),
                    "set either backend_cookie_file or backend_user with backend_password_file, not both",
                ))
            }
            (Some(user), None, None) => {
                return Err(self.err(
                    format!("{key}.backend_password_file"),
                    Some(user.span()),
                    "backend_user needs backend_password_file",
                ))
            }
            (None, Some(file), None) => {
                return Err(self.err(
                    format!("{key}.backend_user"),
                    Some(file.span()),
                    "backend_password_file needs backend_user",
                ))
            }
            (None, None, None) => return Err(self.err(
                key.to_string(),
                Some(a.profile.span()),
                "the node's credentials are required: backend_user with backend_password_file, or backend_cookie_file",
            )),
        };
        let mut users: Vec<User> = Vec::with_capacity(a.users.len());
        for (i, u) in a.users.iter().enumerate() {
            let name = u.name.get_ref();
            let k = format!("{key}.users[{i}]");
            if name.is_empty() || name.contains(':') {
                return Err(self.err(
                    format!("{k}.name"),
                    Some(u.name.span()),
                    "must be non-empty and hold no `:`",
                ));
            }
            if users.iter().any(|o| &o.name == name) {
                return Err(self.err(
                    format!("{k}.name"),
                    Some(u.name.span()),
                    format!("duplicate user `{name}`"),
                ));
            }
            if u.methods.is_empty() {
                return Err(self.err(
                    format!("{k}.methods"),
                    Some(u.name.span()),
                    "lists no methods: the user could call nothing",
                ));
            }
            let user = User::new(name.clone(), u.rpcauth.get_ref(), u.methods.iter().cloned().collect())
                .map_err(|e| self.err(format!("{k}.rpcauth"), Some(u.rpcauth.span()), e.to_string()))?;
            users.push(user);
        }
        let mut tokens: Vec<Token> = Vec::with_capacity(a.tokens.len());
        for (i, t) in a.tokens.iter().enumerate() {
            let name = t.name.get_ref();
            let k = format!("{key}.tokens[{i}]");
            if name.is_empty() {
                return Err(self.err(format!("{k}.name"), Some(t.name.span()), "must be non-empty"));
            }
            if tokens.iter().any(|o| &o.name == name) {
                return Err(self.err(
                    format!("{k}.name"),
                    Some(t.name.span()),
                    format!("duplicate token `{name}`"),
                ));
            }
            if t.methods.is_empty() {
                return Err(self.err(
                    format!("{k}.methods"),
                    Some(t.name.span()),
                    "lists no methods: the token could call nothing",
                ));
            }
            let token = Token::new(
                name.clone(),
                t.token_hash.get_ref(),
                t.methods.iter().cloned().collect(),
            )
            .map_err(|e| self.err(format!("{k}.token_hash"), Some(t.token_hash.span()), e.to_string()))?;
            tokens.push(token);
        }
        let mut rest = Vec::with_capacity(a.rest.len());
        for (prefix, class) in &a.rest {
            let k = format!("{key}.rest.\"{prefix}\"");
            crate::front::api::rest::RestPolicy::validate(prefix)
                .map_err(|e| self.err(k.clone(), Some(class.span()), e.to_string()))?;
            let c = match class.get_ref().as_str() {
                "cheap" => crate::front::api::methods::Class::Cheap,
                "medium" => crate::front::api::methods::Class::Medium,
                "heavy" => crate::front::api::methods::Class::Heavy,
                other => {
                    return Err(self.err(
                        k,
                        Some(class.span()),
                        format!("unknown cost class `{other}`: cheap, medium or heavy"),
                    ))
                }
            };
            rest.push((prefix.clone(), c));
        }
        if users.is_empty() && tokens.is_empty() && a.public_methods.is_empty() && rest.is_empty() {
            return Err(self.err(
                format!("{key}.users"),
                Some(a.profile.span()),
                "no users, tokens, public_methods or rest paths: every request would be refused",
            ));
        }
        let size = |v: &Option<Spanned<units::ByteSize>>, k: &str, dflt: usize| match v {
            Some(b) if b.get_ref().0 == 0 => {
                Err(self.err(format!("{key}.{k}"), Some(b.span()), "must be greater than 0"))
            }
            Some(b) => Ok(usize::try_from(b.get_ref().0).unwrap_or(usize::MAX)),
            None => Ok(dflt),
        };
        let time = |v: &Option<Spanned<units::Duration>>, k: &str, dflt: Duration| match v {
            Some(t) if t.get_ref().0.is_zero() => {
                Err(self.err(format!("{key}.{k}"), Some(t.span()), "must be greater than 0s"))
            }
            Some(t) => Ok(t.get_ref().0),
            None => Ok(dflt),
        };
        let max_batch = match &a.max_batch {
            Some(n) if *n.get_ref() == 0 => {
                return Err(self.err(format!("{key}.max_batch"), Some(n.span()), "must be at least 1"))
            }
            Some(n) => *n.get_ref(),
            None => d::DEFAULT_MAX_BATCH,
        };
        let mut method_costs = std::collections::HashMap::new();
        for (m, c) in &a.method_costs {
            let v = *c.get_ref();
            if !v.is_finite() || v < 0.0 {
                return Err(self.err(
                    format!("{key}.method_costs.{m}"),
                    Some(c.span()),
                    "must be a finite number, 0 or more",
                ));
            }
            method_costs.insert(m.clone(), v);
        }
        Ok(ApiSettings {
            profile: *a.profile.get_ref(),
            backend,
            users,
            public_methods: a.public_methods.iter().cloned().collect(),
            max_body: size(&a.max_body, "max_body", d::DEFAULT_MAX_BODY)?,
            max_response: size(&a.max_response, "max_response", d::DEFAULT_MAX_RESPONSE)?,
            max_batch,
            header_timeout: time(&a.header_timeout, "header_timeout", d::DEFAULT_HEADER_TIMEOUT)?,
            keepalive_timeout: time(&a.keepalive_timeout, "keepalive_timeout", d::DEFAULT_KEEPALIVE_TIMEOUT)?,
            request_timeout: time(&a.request_timeout, "request_timeout", d::DEFAULT_REQUEST_TIMEOUT)?,
            method_costs,
            tokens,
            rest: crate::front::api::rest::RestPolicy::new(rest),
            forwarded: a.forwarded.as_ref().is_some_and(|f| *f.get_ref()),
        })
    }
}

/// Whether binding `a` and `b` would collide: the same port and family, and the same address or a wildcard
/// on either side (IPv6 sockets are v6-only, so `0.0.0.0:P` and `[::]:P` do not collide).
fn listens_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Why the ban journal cannot be kept where the configuration puts it.
#[derive(Debug, thiserror::Error)]
enum JournalPlaceError {
    #[error("folder {} does not exist (create it; under systemd, StateDirectory= does)", dir.display())]
    NoFolder { dir: PathBuf },
    #[error("cannot create files in {}: {source}", dir.display())]
    NotWritable { dir: PathBuf, source: std::io::Error },
    #[error("cannot open {} for appending: {source}", path.display())]
    NoAppend { path: PathBuf, source: std::io::Error },
}

/// Whether the gateway can keep its ban journal at `path`: the folder must exist and take new files (the
/// journal, its lock file and its compacted copy are made there), and an existing journal must open for
/// appending. Probing with a real file answers for permissions, ACLs and read-only mounts alike.
fn journal_writable(path: &Path) -> Result<(), JournalPlaceError> {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(JournalPlaceError::NoFolder { dir: dir.to_path_buf() });
    }
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!(".gatehouse-check-{}-{n}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
        }
        Err(source) => {
            return Err(JournalPlaceError::NotWritable {
                dir: dir.to_path_buf(),
                source,
            })
        }
    }
    if path.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|source| JournalPlaceError::NoAppend {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

fn span_of<T>(v: &Option<Spanned<T>>) -> Option<std::ops::Range<usize>> {
    v.as_ref().map(Spanned::span)
}

/// `net` with its host bits cleared, as the tier lookup stores it.
fn normalize_net(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}
