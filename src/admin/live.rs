//! The metrics read from the running gateway at scrape time: open connections and upstream state per
//! front, refusals by reason, the memory budget, bans and the cluster links.

use crate::front::{FrontSlot, FrontState};
use crate::guard::{Guard, Refusal};
use crate::state::memory::MemoryBudget;
use crate::telemetry::metrics::{
    counter, gauge, CertLabels, FrontLabels, KindLabels, LiveSource, ReasonLabels, SourceLabels, UpstreamLabels,
};
use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The running gateway's state that a scrape reads.
pub struct Live {
    fronts: Arc<ArcSwap<Vec<Arc<FrontSlot>>>>,
    guard: Arc<Guard>,
    memory: Arc<MemoryBudget>,
    cluster: Option<crate::cluster::StatusHandle>,
    certs: Option<super::certs::Certs>,
}

impl Live {
    pub fn new(fronts: Arc<ArcSwap<Vec<Arc<FrontSlot>>>>, guard: Arc<Guard>, memory: Arc<MemoryBudget>) -> Live {
        Live {
            fronts,
            guard,
            memory,
            cluster: None,
            certs: None,
        }
    }

    /// Adds every served certificate's expiry to the scrape.
    pub fn with_certs(mut self, certs: super::certs::Certs) -> Live {
        self.certs = Some(certs);
        self
    }

    /// Adds the cluster links' state to the scrape.
    pub fn with_cluster(mut self, cluster: Option<crate::cluster::StatusHandle>) -> Live {
        self.cluster = cluster;
        self
    }

    /// The fronts as configured now (read per scrape, so reloads are followed).
    fn fronts(&self) -> Vec<Arc<FrontState>> {
        self.fronts.load().iter().map(|s| s.state.load_full()).collect()
    }
}

impl LiveSource for Live {
    fn register(&self, r: &mut Registry) {
        let fronts = self.fronts();
        let open = Family::<FrontLabels, Gauge>::default();
        let up = Family::<UpstreamLabels, Gauge>::default();
        for f in &fronts {
            let label = FrontLabels {
                front: f.cfg.name.clone(),
            };
            // Summed, so a removed front still draining and its re-added namesake do not clash.
            open.get_or_create(&label).inc_by(f.level.open_connections() as i64);
            for (i, addr) in f.cfg.upstreams.iter().enumerate() {
                up.get_or_create(&UpstreamLabels {
                    front: f.cfg.name.clone(),
                    upstream: i.to_string(),
                })
                .set(i64::from(f.pool.is_up(*addr)));
            }
        }
        r.register(
            "connections_open",
            "Admitted client connections open now (including those still in handshake), per front",
            open,
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        for reason in Refusal::ALL {
            refused
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str().into(),
                })
                .inc_by(self.guard.refused(reason));
        }
        r.register("connections_refused", "Connections refused, by reason", refused);
        if let Some(c) = &self.certs {
            let expiry = Family::<CertLabels, Gauge>::default();
            let soon = crate::listen::acme::registry::unix_now() + crate::listen::acme::EXPIRY_ALARM.as_secs() as i64;
            let mut expiring = 0;
            for e in c.list().certificates {
                expiring += i64::from(e.not_after < soon);
                expiry
                    .get_or_create(&CertLabels {
                        front: e.front.unwrap_or_default(),
                        name: e.name,
                    })
                    .set(e.not_after);
            }
            r.register(
                "tls_certificate_expiry_timestamp_seconds",
                "When each served certificate expires (Unix seconds), by front and name (ACME name, SNI name or default; front empty for an ACME certificate no front serves)",
                expiry,
            );
            r.register(
                "tls_certificates_expiring",
                "Certificates that expire within 7 days",
                gauge(expiring),
            );
        }
        self.guard.feeds().register_metrics(r);
        r.register(
            "upstream_up",
            "1 when the upstream (by position in its front) is believed reachable, 0 while marked down",
            up,
        );
        if let Some(c) = &self.cluster {
            let st = c.status();
            let now = std::time::SystemTime::now();
            // Under Redis the one link is the Redis connection, and the lag is since the last resync.
            let up = match &st.redis {
                Some(r) => usize::from(r.connected),
                None => st.peers.iter().filter(|p| p.up).count(),
            };
            r.register(
                "cluster_peers",
                "Cluster peers configured",
                gauge(st.peers.len() as i64),
            );
            r.register(
                "cluster_links_up",
                "Cluster links up now (under the Redis backend: 1 while Redis is connected)",
                gauge(up as i64),
            );
            // The oldest last sync among the peers; a peer never synced counts from process start.
            let since = |t: Option<std::time::SystemTime>| {
                t.and_then(|t| now.duration_since(t).ok())
                    .map_or(-1, |d| d.as_millis() as i64)
            };
            let lag = match &st.redis {
                Some(r) => since(r.last_sync),
                None => st.peers.iter().map(|p| since(p.last_sync)).max().unwrap_or(0),
            };
            r.register(
                "cluster_sync_lag_milliseconds",
                "Time since the least recent anti-entropy exchange with a peer, or Redis resync (-1: never synced)",
                gauge(lag),
            );
            let x = st.stats;
            let received = Family::<ReasonLabels, Counter>::default();
            for (reason, n) in [
                ("applied", x.applied),
                ("duplicate", x.duplicate),
                ("stale", x.stale),
                ("unlisted_origin", x.rejected_unlisted_origin),
                ("bad_signature", x.rejected_bad_signature),
                ("malformed", x.rejected_malformed),
                ("refused_by_table", x.refused_by_table),
                ("too_wide", x.rejected_too_wide),
                ("too_long", x.rejected_too_long),
                ("origin_full", x.rejected_origin_full),
                ("future_version", x.rejected_future_version),
                ("not_journaled", x.not_journaled),
            ] {
                received
                    .get_or_create(&ReasonLabels { reason: reason.into() })
                    .inc_by(n);
            }
            r.register(
                "cluster_records_received",
                "Ban records received from peers, by what became of them",
                received,
            );
            r.register(
                "cluster_records_published",
                "Local ban records signed and published",
                counter(x.published),
            );
            let ae = Family::<KindLabels, Counter>::default();
            for (kind, n) in [
                ("digest", x.digests_sent),
                ("summary", x.summaries_sent),
                ("bucket_digest", x.bucket_digests_sent),
            ] {
                ae.get_or_create(&KindLabels { kind: kind.into() }).inc_by(n);
            }
            r.register(
                "cluster_antientropy_messages_sent",
                "Anti-entropy messages sent, by kind (digest: every id; summary: bucket fingerprints; bucket_digest: the ids of differing buckets)",
                ae,
            );
            r.register(
                "cluster_antientropy_bytes_sent",
                "Bytes of anti-entropy messages sent",
                counter(x.digest_bytes_sent),
            );
            r.register(
                "cluster_cost_reports_sent",
                "Cost reports sent to peers (one per link per report)",
                counter(x.cost_reports_sent),
            );
            r.register(
                "cluster_cost_reports_received",
                "Cost reports taken from peers",
                counter(x.cost_reports_received),
            );
            r.register(
                "cluster_cost_reports_rejected",
                "Cost reports refused (through Redis: unlisted origin, bad signature, malformed)",
                counter(x.cost_reports_rejected),
            );
            if let Some(redis) = &st.redis {
                r.register(
                    "cluster_redis_rejected_remembered",
                    "Rejected values in Redis remembered so each is counted once (at most 10000; past that they are judged again)",
                    gauge(redis.rejected_remembered as i64),
                );
            }
            r.register(
                "cluster_cost_figures_ignored",
                "Figures of peers' cost reports ignored: past the report's group cap, repeated, or past its cost cap",
                counter(x.cost_figures_ignored),
            );
            r.register(
                "cluster_links_refused",
                "Cluster connections refused (unlisted node, failed handshake)",
                counter(x.refused_links),
            );
        }
        let mem = &self.memory;
        r.register(
            "memory_budget_bytes",
            "Bytes all Electrum and peer sessions together may buffer ([limits] memory_budget)",
            gauge(mem.limit() as i64),
        );
        r.register(
            "memory_buffered_bytes",
            "Bytes Electrum and peer sessions buffer now (partial lines, queued output and requests, relay buffers), in 4 KiB steps",
            gauge(mem.used() as i64),
        );
        r.register(
            "memory_budget_cuts",
            "Sessions disconnected, largest first, because the memory budget was reached",
            counter(mem.cuts()),
        );
        let s = self.guard.bans().stats();
        r.register("bans_active", "Bans in force now", gauge(s.active as i64));
        r.register(
            "bans_max_entries",
            "Entries beyond which automatic bans are refused ([bans] max_entries)",
            gauge(i64::try_from(self.guard.bans().limits().max_entries).unwrap_or(i64::MAX)),
        );
        let added = Family::<SourceLabels, Counter>::default();
        for (source, n) in [
            ("session", s.added_session),
            ("admin", s.added_admin),
            ("cluster", s.added_cluster),
        ] {
            added.get_or_create(&SourceLabels { source: source.into() }).inc_by(n);
        }
        r.register(
            "bans_added",
            "Bans added by this process, by source (session: automatic; admin: the API; cluster: other nodes)",
            added,
        );
        r.register(
            "bans_lifted",
            "Bans lifted before their end by an operator",
            counter(s.lifted),
        );
        r.register("bans_expired", "Bans that reached their end", counter(s.expired));
        let rejected = Family::<ReasonLabels, Counter>::default();
        for (reason, n) in [
            ("allowlisted", s.rejected_allowlisted),
            ("too_wide", s.rejected_too_wide),
            ("table_full", s.rejected_table_full),
        ] {
            rejected
                .get_or_create(&ReasonLabels { reason: reason.into() })
                .inc_by(n);
        }
        r.register("bans_rejected", "Bans refused, by reason", rejected);
        r.register(
            "bans_escalated",
            "Groups banned whole because several of their addresses were banned automatically",
            counter(s.escalated),
        );
        r.register(
            "bans_journal_syncs",
            "Ban journal writes, each one fsync (automatic bans made together share one)",
            counter(s.journal_syncs),
        );
        r.register(
            "bans_journal_failing",
            "1 while the ban journal fails writes (the node is degraded: see /readyz)",
            gauge(i64::from(s.journal_failing)),
        );
    }
}
