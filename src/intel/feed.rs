//! One blocklist feed: load the last good copy from the state directory, then every `interval` fetch,
//! verify and parse a new copy; a good one replaces the source's set at once and is kept on disk, a bad
//! one is counted and logged and the last good copy stays in force.

use super::format;
use super::http::{Client, HttpError, Url, Validators};
use super::settings::{FeedLocation, FeedSettings, Verify};
use super::verify;
use crate::state::feeds::{FeedFailure, FeedSource};
use crate::wire::acl::CidrSet;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

pub struct Feed {
    settings: FeedSettings,
    source: Arc<FeedSource>,
    client: Option<Client>,
    /// SHA-256 of the copy in force, so an unchanged list is neither parsed nor written again.
    current: Option<[u8; 32]>,
    /// What the server said identifies the copy in force, so an unchanged list is not downloaded again.
    validators: Validators,
}

/// A copy from a file or a server, or the server's word that the copy in force is still current.
enum Fetched {
    Body(Vec<u8>, Validators),
    NotModified,
}

/// A failed attempt: why, in the metrics' words, and what exactly.
struct Failure(FeedFailure, String);

impl From<HttpError> for Failure {
    fn from(e: HttpError) -> Failure {
        let why = match e {
            HttpError::TooLarge { .. } => FeedFailure::TooLarge,
            _ => FeedFailure::Fetch,
        };
        Failure(why, e.to_string())
    }
}

fn signature_location(settings: &FeedSettings) -> Option<FeedLocation> {
    match &settings.verify {
        Verify::Minisign { signature: Some(s), .. } => Some(s.clone()),
        Verify::Minisign { signature: None, .. } => Some(match &settings.location {
            FeedLocation::File(p) => {
                let mut s = p.clone().into_os_string();
                s.push(".minisig");
                FeedLocation::File(s.into())
            }
            FeedLocation::Url(u) => FeedLocation::Url(format!("{u}.minisig")),
        }),
        _ => None,
    }
}

fn uses_tls(settings: &FeedSettings) -> bool {
    let https = |l: &FeedLocation| matches!(l, FeedLocation::Url(u) if u.starts_with("https://"));
    https(&settings.location) || signature_location(settings).as_ref().is_some_and(https)
}

impl Feed {
    pub fn new(settings: FeedSettings, source: Arc<FeedSource>) -> Result<Feed, HttpError> {
        let remote = matches!(settings.location, FeedLocation::Url(_))
            || matches!(signature_location(&settings), Some(FeedLocation::Url(_)));
        let client = if remote {
            Some(Client::new(
                uses_tls(&settings),
                settings.ca_file.as_deref(),
                settings.timeout,
                settings.max_size,
            )?)
        } else {
            None
        };
        Ok(Feed {
            settings,
            source,
            client,
            current: None,
            validators: Validators::default(),
        })
    }

    /// Runs until `stop`: the cached copy first, then a refresh every interval.
    pub async fn run(mut self, stop: CancellationToken) {
        self.load_cache();
        loop {
            self.refresh().await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
        }
    }

    /// Puts the copy kept by an earlier run in force, so a restart while the source is unreachable
    /// still refuses what it listed.
    fn load_cache(&mut self) {
        let Some(path) = &self.settings.cache else { return };
        let Ok(body) = std::fs::read(path) else { return };
        if let Verify::Sha256(pin) = &self.settings.verify {
            if verify::check_sha256(&body, pin).is_err() {
                tracing::warn!(feed = %self.settings.name, cache = %path.display(), "the kept copy does not match the sha256 pin; not used");
                return;
            }
        }
        match format::parse(&body, self.settings.format, self.settings.max_entries) {
            Ok(set) => {
                let at = std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .unwrap_or_else(|_| SystemTime::now());
                tracing::info!(feed = %self.settings.name, entries = set.len(), "blocklist feed: last good copy loaded from the state directory");
                self.current = Some(Sha256::digest(&body).into());
                self.source.replace(set, at);
            }
            Err(e) => {
                tracing::warn!(feed = %self.settings.name, cache = %path.display(), error = %e, "the kept copy does not parse; not used");
            }
        }
    }

    async fn refresh(&mut self) {
        match self.attempt().await {
            Ok(None) => self.source.confirmed(SystemTime::now()),
            Ok(Some((set, body, digest, validators))) => {
                let entries = set.len();
                // Kept before it takes effect, so a copy in force is one a restart finds.
                if let Some(path) = self.settings.cache.clone() {
                    let kept = tokio::task::spawn_blocking(move || keep(&path, &body).map_err(|e| (path, e))).await;
                    if let Ok(Err((path, e))) = kept {
                        tracing::warn!(feed = %self.settings.name, cache = %path.display(), error = %e, "blocklist feed: cannot keep the new copy in the state directory");
                    }
                }
                self.source.replace(set, SystemTime::now());
                self.current = Some(digest);
                self.validators = validators;
                tracing::info!(feed = %self.settings.name, entries, "blocklist feed loaded");
            }
            Err(Failure(why, detail)) => {
                self.source.failed(why, &detail);
                tracing::warn!(feed = %self.settings.name, reason = why.as_str(), error = %detail, entries = self.source.len(), "blocklist feed not updated; the last good copy stays in force");
            }
        }
    }

    /// A new verified, parsed copy, or None if it is the copy in force already.
    async fn attempt(&self) -> Result<Option<(CidrSet, Vec<u8>, [u8; 32], Validators)>, Failure> {
        // Conditional only while a copy is in force: it was verified, so "not modified" means it still is.
        let ask = if self.current.is_some() {
            self.validators.conditions()
        } else {
            Vec::new()
        };
        let (body, validators) = match self.fetch(&self.settings.location, &ask).await? {
            Fetched::NotModified => return Ok(None),
            Fetched::Body(b, v) => (b, v),
        };
        let digest: [u8; 32] = Sha256::digest(&body).into();
        match &self.settings.verify {
            Verify::None => {}
            Verify::Sha256(pin) => {
                verify::check_sha256(&body, pin).map_err(|e| Failure(FeedFailure::Checksum, e.to_string()))?
            }
            Verify::Minisign { key, .. } => {
                let loc = signature_location(&self.settings).expect("minisign feeds have a signature location");
                let sig = match self.fetch(&loc, &[]).await {
                    Ok(Fetched::Body(sig, _)) => sig,
                    Ok(Fetched::NotModified) => unreachable!("an unconditional request is never answered 304"),
                    Err(Failure(_, d)) => {
                        return Err(Failure(
                            FeedFailure::Signature,
                            format!("cannot fetch the signature: {d}"),
                        ))
                    }
                };
                verify::check_minisign(&body, &sig, key).map_err(|e| Failure(FeedFailure::Signature, e.to_string()))?;
            }
        }
        if self.current == Some(digest) {
            return Ok(None);
        }
        let set = format::parse(&body, self.settings.format, self.settings.max_entries).map_err(|e| {
            let why = match e {
                format::FormatError::TooMany { .. } => FeedFailure::TooManyEntries,
                _ => FeedFailure::Parse,
            };
            Failure(why, e.to_string())
        })?;
        Ok(Some((set, body, digest, validators)))
    }

    async fn fetch(&self, loc: &FeedLocation, ask: &[(&str, &str)]) -> Result<Fetched, Failure> {
        let cap = self.settings.max_size;
        match loc {
            FeedLocation::File(p) => {
                // The runtime has no file I/O of its own: read on the blocking pool (a list is small).
                let path = p.clone();
                let body = tokio::task::spawn_blocking(move || read_capped(&path, cap))
                    .await
                    .map_err(|e| Failure(FeedFailure::Fetch, e.to_string()))??;
                Ok(Fetched::Body(body, Validators::default()))
            }
            FeedLocation::Url(u) => {
                let url = Url::parse(u)?;
                let client = self.client.as_ref().expect("URL feeds have a client");
                let resp = client.request(hyper::Method::GET, &url, ask, None).await?;
                match resp.status {
                    hyper::StatusCode::OK => Ok(Fetched::Body(resp.body, resp.validators)),
                    hyper::StatusCode::NOT_MODIFIED if !ask.is_empty() => Ok(Fetched::NotModified),
                    s => Err(Failure(FeedFailure::Status, format!("{u}: HTTP {s}"))),
                }
            }
        }
    }
}

fn read_capped(p: &Path, cap: u64) -> Result<Vec<u8>, Failure> {
    let len = std::fs::metadata(p)
        .map_err(|e| Failure(FeedFailure::Fetch, format!("{}: {e}", p.display())))?
        .len();
    if len > cap {
        return Err(Failure(
            FeedFailure::TooLarge,
            format!("{}: {len} bytes, more than {cap}", p.display()),
        ));
    }
    std::fs::read(p).map_err(|e| Failure(FeedFailure::Fetch, format!("{}: {e}", p.display())))
}

/// Writes the copy beside its final name, syncs it and renames it over the old one, so a crash leaves
/// either copy whole.
fn keep(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
