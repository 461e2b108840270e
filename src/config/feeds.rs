//! `[[feeds]]` and `[crowdsec]`: validation of what the operator wrote into `intel::settings`.

use super::raw_feeds::{RawCrowdSec, RawFeed};
use super::{Config, ConfigError, ConfigWarning, Validator};
use crate::intel::http::Url;
use crate::intel::settings::*;
use crate::intel::verify::{parse_minisign_key, parse_sha256};
use crate::wire::units::Duration;
use std::path::Path;
use toml::Spanned;

/// The shortest `interval` / `poll_interval`: anything shorter hammers the list's server.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let s = text.trim();
    if s.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(s.to_string())
}

impl Validator<'_> {
    fn interval(
        &self,
        key: String,
        d: Option<&Spanned<Duration>>,
        default: std::time::Duration,
    ) -> Result<std::time::Duration, ConfigError> {
        match d {
            None => Ok(default),
            Some(d) if d.get_ref().0 < MIN_INTERVAL => Err(self.err(key, Some(d.span()), "must be at least 1s")),
            Some(d) => Ok(d.get_ref().0),
        }
    }

    fn url(&self, key: String, u: &Spanned<String>) -> Result<String, ConfigError> {
        Url::parse(u.get_ref()).map_err(|e| self.err(key, Some(u.span()), e.to_string()))?;
        Ok(u.get_ref().clone())
    }

    /// `journal`: the ban journal's path; its folder is the state directory feeds keep their copies in.
    pub(super) fn feeds(&self, raw: &[RawFeed], journal: Option<&Path>) -> Result<Vec<FeedSettings>, ConfigError> {
        let mut out: Vec<FeedSettings> = Vec::with_capacity(raw.len());
        for (i, f) in raw.iter().enumerate() {
            let key = |k: &str| format!("feeds[{i}].{k}");
            let name = f.name.get_ref();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                || name.starts_with('.')
            {
                return Err(self.err(
                    key("name"),
                    Some(f.name.span()),
                    "a feed name is letters, digits, `-`, `_` and `.` (it names the kept copy and the metrics)",
                ));
            }
            if name == CROWDSEC_SOURCE || out.iter().any(|o| &o.name == name) {
                return Err(self.err(
                    key("name"),
                    Some(f.name.span()),
                    format!("`{name}` is taken (feed names are unique, and `{CROWDSEC_SOURCE}` is the bouncer's)"),
                ));
            }
            let location = match (&f.file, &f.url) {
                (Some(p), None) => FeedLocation::File(self.path(p.get_ref())),
                (None, Some(u)) => FeedLocation::Url(self.url(key("url"), u)?),
                _ => {
                    return Err(self.err(
                        format!("feeds[{i}]"),
                        Some(f.name.span()),
                        "exactly one of `file` and `url` is required",
                    ))
                }
            };
            let format = match &f.format {
                None => FeedFormat::Plain,
                Some(s) => FeedFormat::parse(s.get_ref()).ok_or_else(|| {
                    self.err(
                        key("format"),
                        Some(s.span()),
                        format!("unknown format `{}` (expected {})", s.get_ref(), FeedFormat::NAMES),
                    )
                })?,
            };
            let verify = match (&f.sha256, &f.minisign_key) {
                (Some(_), Some(k)) => {
                    return Err(self.err(
                        key("minisign_key"),
                        Some(k.span()),
                        "use either `sha256` or `minisign_key`, not both",
                    ))
                }
                (Some(h), None) => Verify::Sha256(
                    parse_sha256(h.get_ref())
                        .ok_or_else(|| self.err(key("sha256"), Some(h.span()), "expected 64 hexadecimal digits"))?,
                ),
                (None, Some(k)) => Verify::Minisign {
                    key: parse_minisign_key(k.get_ref())
                        .map_err(|e| self.err(key("minisign_key"), Some(k.span()), e.to_string()))?,
                    signature: match &f.signature {
                        None => None,
                        Some(s) if s.get_ref().starts_with("http://") || s.get_ref().starts_with("https://") => {
                            Some(FeedLocation::Url(self.url(key("signature"), s)?))
                        }
                        Some(s) => Some(FeedLocation::File(self.path(Path::new(s.get_ref())))),
                    },
                },
                (None, None) => {
                    if let Some(s) = &f.signature {
                        return Err(self.err(key("signature"), Some(s.span()), "needs `minisign_key`"));
                    }
                    Verify::None
                }
            };
            let max_entries = match &f.max_entries {
                None => DEFAULT_FEED_MAX_ENTRIES,
                Some(n) if *n.get_ref() == 0 => {
                    return Err(self.err(key("max_entries"), Some(n.span()), "must be at least 1"))
                }
                Some(n) => *n.get_ref(),
            };
            let max_size = match &f.max_size {
                None => DEFAULT_FEED_MAX_SIZE,
                Some(n) if n.get_ref().0 == 0 => {
                    return Err(self.err(key("max_size"), Some(n.span()), "must be greater than 0"))
                }
                Some(n) => n.get_ref().0,
            };
            let ca_file = f.ca_file.as_ref().map(|p| self.path(p.get_ref()));
            if let Some(p) = &ca_file {
                std::fs::metadata(p).map_err(|e| {
                    self.err(
                        key("ca_file"),
                        f.ca_file.as_ref().map(|s| s.span()),
                        format!("{}: {e}", p.display()),
                    )
                })?;
            }
            out.push(FeedSettings {
                name: name.clone(),
                location,
                format,
                interval: self.interval(key("interval"), f.interval.as_ref(), DEFAULT_FEED_INTERVAL)?,
                verify,
                max_size,
                max_entries,
                timeout: self.interval(key("timeout"), f.timeout.as_ref(), DEFAULT_FEED_TIMEOUT)?,
                ca_file,
                cache: journal
                    .and_then(Path::parent)
                    .map(|dir| dir.join(format!("feed-{name}.cache"))),
            });
        }
        Ok(out)
    }

    pub(super) fn crowdsec(&self, raw: Option<&RawCrowdSec>) -> Result<Option<CrowdSecSettings>, ConfigError> {
        let Some(c) = raw else { return Ok(None) };
        let key = |k: &str| format!("crowdsec.{k}");
        let url = self.url(key("url"), &c.url)?;
        let api_key = c
            .api_key_file
            .as_ref()
            .map(|p| read_secret(&self.path(p.get_ref())).map_err(|r| self.err(key("api_key_file"), Some(p.span()), r)))
            .transpose()?;
        let reporter = match (&c.machine_id, &c.password_file) {
            (Some(m), Some(p)) => Some(Reporter {
                machine_id: m.get_ref().clone(),
                password: read_secret(&self.path(p.get_ref()))
                    .map_err(|r| self.err(key("password_file"), Some(p.span()), r))?,
                scenario: c
                    .scenario
                    .as_ref()
                    .map_or_else(|| DEFAULT_CROWDSEC_SCENARIO.to_string(), |s| s.get_ref().clone()),
            }),
            (None, None) => None,
            (Some(m), None) => {
                return Err(self.err(
                    key("password_file"),
                    Some(m.span()),
                    "required with `machine_id` (reporter mode)",
                ))
            }
            (None, Some(p)) => {
                return Err(self.err(
                    key("machine_id"),
                    Some(p.span()),
                    "required with `password_file` (reporter mode)",
                ))
            }
        };
        if api_key.is_none() && reporter.is_none() {
            return Err(self.err(
                "crowdsec",
                Some(c.url.span()),
                "neither bouncer mode (`api_key_file`) nor reporter mode (`machine_id`, `password_file`) is configured",
            ));
        }
        let max_decisions = match &c.max_decisions {
            None => DEFAULT_CROWDSEC_MAX_DECISIONS,
            Some(n) if *n.get_ref() == 0 => {
                return Err(self.err(key("max_decisions"), Some(n.span()), "must be at least 1"))
            }
            Some(n) => *n.get_ref(),
        };
        Ok(Some(CrowdSecSettings {
            url,
            api_key,
            poll_interval: self.interval(key("poll_interval"), c.poll_interval.as_ref(), DEFAULT_CROWDSEC_POLL)?,
            max_decisions,
            max_response: c
                .max_response
                .as_ref()
                .map_or(DEFAULT_CROWDSEC_MAX_RESPONSE, |m| m.get_ref().0),
            timeout: self.interval(key("timeout"), c.timeout.as_ref(), DEFAULT_CROWDSEC_TIMEOUT)?,
            ca_file: c.ca_file.as_ref().map(|p| self.path(p.get_ref())),
            reporter,
        }))
    }
}

/// Feeds without a ban journal have no state directory: their last good copies live in memory only, so
/// after a restart a feed whose source does not answer refuses nothing.
pub(super) fn warnings(c: &Config) -> Vec<ConfigWarning> {
    if c.feeds.is_empty() || c.bans.journal.is_some() {
        return Vec::new();
    }
    vec![ConfigWarning {
        file: c.source.clone(),
        key: "feeds".to_string(),
        reason: "no [bans] journal, so no state directory: the feeds' last good copies are not kept, and after \
                 a restart a feed refuses nothing until its source answers; set [bans] journal"
            .to_string(),
    }]
}
