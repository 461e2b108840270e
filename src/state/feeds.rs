//! The deny set fed from outside: blocklist feeds and CrowdSec decisions, as the guard reads them.
//!
//! Each source (a configured feed, or the CrowdSec bouncer) owns one CIDR set that its fetcher replaces
//! whole, so the guard sees either the old list or the new one, never half of each. Lookups load each
//! source's set without a lock; there are a handful of sources, each a hashed longest-prefix map, so an
//! accept costs a few probes per source. The sources are fixed when the gateway starts.
//!
//! Beside the sets, each source keeps what the metrics and `/readyz` tell: its entry count, when it last
//! loaded a good copy, its failures by reason and whether it is serving an older copy than it tried to
//! load. No client address is ever recorded here, only counts.

use crate::wire::acl::CidrSet;
use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a source failed to load a new copy (it keeps the last good one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedFailure {
    /// Could not read the file or reach the server.
    Fetch,
    /// The server answered with a status other than 200.
    Status,
    /// Larger than the source's size cap.
    TooLarge,
    /// A line that is not an entry of the feed's format.
    Parse,
    /// More entries than the source's entry cap.
    TooManyEntries,
    /// The SHA-256 pin does not match.
    Checksum,
    /// The signature is missing, malformed or does not verify.
    Signature,
    /// The server answered, but not in the shape expected (CrowdSec's JSON).
    Protocol,
}

impl FeedFailure {
    pub const ALL: [FeedFailure; 8] = [
        FeedFailure::Fetch,
        FeedFailure::Status,
        FeedFailure::TooLarge,
        FeedFailure::Parse,
        FeedFailure::TooManyEntries,
        FeedFailure::Checksum,
        FeedFailure::Signature,
        FeedFailure::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FeedFailure::Fetch => "fetch",
            FeedFailure::Status => "status",
            FeedFailure::TooLarge => "too_large",
            FeedFailure::Parse => "parse",
            FeedFailure::TooManyEntries => "too_many_entries",
            FeedFailure::Checksum => "checksum",
            FeedFailure::Signature => "signature",
            FeedFailure::Protocol => "protocol",
        }
    }

    fn index(self) -> usize {
        FeedFailure::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }
}

impl std::fmt::Display for FeedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One source of the deny set.
pub struct FeedSource {
    name: String,
    set: ArcSwap<CidrSet>,
    /// Unix seconds of the last good copy; 0 = never.
    last_success: AtomicU64,
    failures: [AtomicU64; FeedFailure::ALL.len()],
    /// The last attempt failed: the set is an older copy (or empty, if there never was a good one).
    stale: AtomicBool,
    last_error: Mutex<Option<String>>,
    refused: AtomicU64,
    /// Entries the source had to leave out because its cap was reached (CrowdSec deltas).
    dropped: AtomicU64,
}

impl FeedSource {
    fn new(name: String) -> FeedSource {
        FeedSource {
            name,
            set: ArcSwap::from_pointee(CidrSet::default()),
            last_success: AtomicU64::new(0),
            failures: Default::default(),
            stale: AtomicBool::new(false),
            last_error: Mutex::new(None),
            refused: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn len(&self) -> usize {
        self.set.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts a new copy in force at once, and records it as the last good one (loaded at `at`).
    pub fn replace(&self, set: CidrSet, at: SystemTime) {
        self.set.store(Arc::new(set));
        self.confirmed(at);
    }

    /// The copy in force was fetched again unchanged: it is as fresh as a new one.
    pub fn confirmed(&self, at: SystemTime) {
        self.last_success.store(
            at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            Ordering::Relaxed,
        );
        self.stale.store(false, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// A copy of the set in force (for a source that edits it by deltas).
    pub fn snapshot(&self) -> Arc<CidrSet> {
        self.set.load_full()
    }

    /// A new copy could not be had: the set stays as it is.
    pub fn failed(&self, why: FeedFailure, detail: &str) {
        self.failures[why.index()].fetch_add(1, Ordering::Relaxed);
        self.stale.store(true, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{why}: {detail}"));
    }

    pub fn failures(&self, why: FeedFailure) -> u64 {
        self.failures[why.index()].load(Ordering::Relaxed)
    }

    pub fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub fn status(&self) -> FeedStatus {
        FeedStatus {
            name: self.name.clone(),
            entries: self.len(),
            last_success: self.last_success.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            last_error: self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// A source's state as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStatus {
    pub name: String,
    pub entries: usize,
    /// Unix seconds; 0 = never loaded.
    pub last_success: u64,
    /// The last attempt failed, so the source serves its last good copy.
    pub stale: bool,
    pub last_error: Option<String>,
}

/// What the CrowdSec reporter did with this gateway's bans.
#[derive(Default)]
pub struct Reports {
    enabled: AtomicBool,
    pushed: AtomicU64,
    lifted: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl Reports {
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    pub fn count_pushed(&self, n: u64) {
        self.pushed.fetch_add(n, Ordering::Relaxed);
    }

    pub fn count_lifted(&self) {
        self.lifted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub fn pushed(&self) -> u64 {
        self.pushed.load(Ordering::Relaxed)
    }
}

/// Every source of the deny set.
#[derive(Default)]
pub struct FeedSet {
    sources: Vec<Arc<FeedSource>>,
    reports: Arc<Reports>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedLabels {
    feed: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedReasonLabels {
    feed: String,
    reason: String,
}

impl FeedSet {
    /// One empty source per name, in order.
    pub fn new(names: impl IntoIterator<Item = String>) -> FeedSet {
        FeedSet {
            sources: names.into_iter().map(|n| Arc::new(FeedSource::new(n))).collect(),
            reports: Arc::default(),
        }
    }

    pub fn source(&self, name: &str) -> Option<&Arc<FeedSource>> {
        self.sources.iter().find(|s| s.name == name)
    }

    pub fn reports(&self) -> &Arc<Reports> {
        &self.reports
    }

    pub fn sources(&self) -> &[Arc<FeedSource>] {
        &self.sources
    }

    /// The first source listing `ip`, counted as a refusal of that source.
    pub fn refuse(&self, ip: IpAddr) -> Option<&str> {
        let s = self.sources.iter().find(|s| s.set.load().contains(ip))?;
        s.refused.fetch_add(1, Ordering::Relaxed);
        Some(&s.name)
    }

    pub fn statuses(&self) -> Vec<FeedStatus> {
        self.sources.iter().map(|s| s.status()).collect()
    }

    /// The `gatehouse_feed_*` series, read at scrape time.
    pub fn register_metrics(&self, r: &mut Registry) {
        let rep = &self.reports;
        if rep.enabled.load(Ordering::Relaxed) {
            let alerts = Family::<ResultLabels, Counter>::default();
            for (result, n) in [
                ("pushed", &rep.pushed),
                ("lifted", &rep.lifted),
                ("failed", &rep.failed),
                ("dropped", &rep.dropped),
            ] {
                alerts
                    .get_or_create(&ResultLabels { result: result.into() })
                    .inc_by(n.load(Ordering::Relaxed));
            }
            r.register(
                "crowdsec_alerts",
                "This gateway's bans pushed to the CrowdSec Local API as alerts (lifted: their decisions deleted after a lift here; failed: requests that failed; dropped: bans never pushed)",
                alerts,
            );
        }
        if self.sources.is_empty() {
            return;
        }
        let entries = Family::<FeedLabels, Gauge>::default();
        let success = Family::<FeedLabels, Gauge>::default();
        let stale = Family::<FeedLabels, Gauge>::default();
        let refused = Family::<FeedLabels, Counter>::default();
        let dropped = Family::<FeedLabels, Counter>::default();
        let failures = Family::<FeedReasonLabels, Counter>::default();
        for s in &self.sources {
            let l = FeedLabels { feed: s.name.clone() };
            entries.get_or_create(&l).set(s.len() as i64);
            success
                .get_or_create(&l)
                .set(s.last_success.load(Ordering::Relaxed) as i64);
            stale.get_or_create(&l).set(i64::from(s.stale.load(Ordering::Relaxed)));
            refused.get_or_create(&l).inc_by(s.refused.load(Ordering::Relaxed));
            dropped.get_or_create(&l).inc_by(s.dropped.load(Ordering::Relaxed));
            for f in FeedFailure::ALL {
                failures
                    .get_or_create(&FeedReasonLabels {
                        feed: s.name.clone(),
                        reason: f.as_str().into(),
                    })
                    .inc_by(s.failures(f));
            }
        }
        r.register("feed_entries", "Networks a blocklist source holds now", entries);
        r.register(
            "feed_last_success_timestamp_seconds",
            "Unix time a blocklist source last loaded a good copy (0: never)",
            success,
        );
        r.register(
            "feed_stale",
            "1 while a blocklist source's last load failed and it serves its last good copy",
            stale,
        );
        r.register(
            "feed_failures",
            "Failed loads of a blocklist source, by reason",
            failures,
        );
        r.register(
            "feed_refusals",
            "Connections refused because a blocklist source lists the client",
            refused,
        );
        r.register(
            "feed_dropped",
            "Entries a blocklist source left out because its entry cap was reached",
            dropped,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::acl::parse_cidr;

    #[test]
    fn a_failed_load_keeps_the_last_good_copy_and_says_so() {
        let set = FeedSet::new(["drop".to_string(), "crowdsec".to_string()]);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(set.refuse(ip), None);
        let s = set.source("drop").unwrap();
        s.replace(
            CidrSet::from_nets([parse_cidr("192.0.2.0/24").unwrap()]),
            SystemTime::now(),
        );
        assert_eq!(set.refuse(ip), Some("drop"));
        s.failed(FeedFailure::Checksum, "sha256 mismatch");
        assert_eq!(set.refuse(ip), Some("drop"), "the last good copy stays in force");
        let st = s.status();
        assert!(st.stale);
        assert_eq!(st.entries, 1);
        assert_eq!(st.last_error.as_deref(), Some("checksum: sha256 mismatch"));
        let mut r = Registry::with_prefix("gatehouse");
        set.register_metrics(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains("gatehouse_feed_failures_total{feed=\"drop\",reason=\"checksum\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gatehouse_feed_refusals_total{feed=\"drop\"} 2"),
            "{text}"
        );
        assert!(text.contains("gatehouse_feed_stale{feed=\"drop\"} 1"), "{text}");
        assert!(!text.contains("192.0.2"), "never an address: {text}");
    }
}
