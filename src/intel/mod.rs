//! What others know about abusive addresses, brought into the deny set: blocklist feeds (files or
//! HTTP(S) URLs, verified by a SHA-256 pin or a minisign signature, kept in the state directory) and
//! CrowdSec (bouncer: its ban decisions; reporter: this gateway's bans pushed back as alerts).
//!
//! Each feed and the bouncer run as one task that fills its source in [`crate::state::feeds::FeedSet`];
//! the guard reads the sets at accept time and never waits on any of this.

pub mod crowdsec;
pub mod feed;
pub mod format;
pub mod http;
pub mod settings;
pub mod verify;

use crate::state::bans::BanTable;
use crate::state::feeds::FeedSet;
use settings::{CrowdSecSettings, FeedSettings, CROWDSEC_SOURCE};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The deny set's sources for this configuration: one per feed, then `crowdsec` for the bouncer.
pub fn feed_set(feeds: &[FeedSettings], crowdsec: Option<&CrowdSecSettings>) -> FeedSet {
    let mut names: Vec<String> = feeds.iter().map(|f| f.name.clone()).collect();
    if crowdsec.is_some_and(|c| c.api_key.is_some()) {
        names.push(CROWDSEC_SOURCE.to_string());
    }
    FeedSet::new(names)
}

/// Starts a task per feed, the bouncer and the reporter; they stop with `stop`.
pub fn start(
    feeds: &[FeedSettings],
    crowdsec: Option<&CrowdSecSettings>,
    set: &FeedSet,
    bans: &Arc<BanTable>,
    stop: &CancellationToken,
) -> Result<(), http::HttpError> {
    for f in feeds {
        let source = set.source(&f.name).expect("a source per feed").clone();
        let feed = feed::Feed::new(f.clone(), source)?;
        tokio::spawn(feed.run(stop.clone()));
    }
    if let Some(c) = crowdsec {
        if let Some(source) = set.source(CROWDSEC_SOURCE) {
            if let Some(b) = crowdsec::Bouncer::new(c.clone(), source.clone())? {
                tokio::spawn(b.run(stop.clone()));
            }
        }
        if let Some(r) = crowdsec::ReporterTask::new(c, set.reports().clone())? {
            set.reports().enable();
            tokio::spawn(r.run(bans.subscribe(), stop.clone()));
        }
    }
    Ok(())
}
