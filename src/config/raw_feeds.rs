//! `[[feeds]]` and `[crowdsec]` as the operator writes them (see `conf/gatehouse.toml`).

use crate::wire::units::{ByteSize, Duration};
use serde::Deserialize;
use std::path::PathBuf;
use toml::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeed {
    pub name: Spanned<String>,
    pub file: Option<Spanned<PathBuf>>,
    pub url: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub interval: Option<Spanned<Duration>>,
    pub sha256: Option<Spanned<String>>,
    /// The minisign public key (the base64 line of `minisign.pub`).
    pub minisign_key: Option<Spanned<String>>,
    /// Where the `.minisig` is (a path or URL); default: the feed's own location plus `.minisig`.
    pub signature: Option<Spanned<String>>,
    pub max_size: Option<Spanned<ByteSize>>,
    pub max_entries: Option<Spanned<usize>>,
    pub timeout: Option<Spanned<Duration>>,
    pub ca_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCrowdSec {
    /// The Local API, `http://127.0.0.1:8080/`.
    pub url: Spanned<String>,
    /// Bouncer mode: a file holding the key `cscli bouncers add NAME` printed.
    pub api_key_file: Option<Spanned<PathBuf>>,
    pub poll_interval: Option<Spanned<Duration>>,
    pub max_decisions: Option<Spanned<usize>>,
    pub max_response: Option<Spanned<ByteSize>>,
    pub timeout: Option<Spanned<Duration>>,
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Reporter mode: the machine `cscli machines add NAME --password …` registered.
    pub machine_id: Option<Spanned<String>>,
    pub password_file: Option<Spanned<PathBuf>>,
    pub scenario: Option<Spanned<String>>,
}
