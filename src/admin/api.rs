//! The admin API's request and response bodies, one type per shape, used by the server to write them
//! and by the CLI to read them, so the two cannot drift apart.
//!
//! Bodies go out through [`to_json`]: a `serde_json::Value` keeps object keys sorted, so the bytes of
//! an answer do not depend on the order fields are declared in below.

use serde::{Deserialize, Serialize};

/// Renders a body as compact JSON with its object keys sorted. The bodies hold only strings, numbers,
/// booleans and lists, so rendering them cannot fail.
pub fn to_json<T: Serialize>(body: &T) -> String {
    serde_json::to_value(body).unwrap_or_default().to_string()
}

/// Every refusal: `{"error": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl ErrorBody {
    pub fn new(msg: impl std::fmt::Display) -> ErrorBody {
        ErrorBody { error: msg.to_string() }
    }
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    /// Why the gateway is not ready, when that is not plain from the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `/readyz`: each blocklist source (feeds, `crowdsec`); a stale one serves its last good copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<FeedHealth>,
}

/// One blocklist source as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedHealth {
    pub name: String,
    pub entries: usize,
    /// `ok`, `stale` (the last load failed: the last good copy is in force) or `empty` (never loaded).
    pub state: String,
    /// RFC 3339, UTC; absent if never loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// `/healthz`: the process answers.
    Ok,
    /// `/readyz`: accepting connections, bans holding.
    Ready,
    /// `/readyz`: shutting down, no longer accepting.
    Draining,
    /// `/readyz`: running, but bans it is told about may not hold.
    Degraded,
}

impl Health {
    pub fn new(status: HealthStatus) -> Health {
        Health {
            status,
            reason: None,
            feeds: Vec::new(),
        }
    }
}

/// `POST /v1/bans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBan {
    /// An address or CIDR prefix.
    pub prefix: String,
    /// With its unit: `30m`, `1h`, `7d`.
    pub duration: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A ban as the API and the CLI show it: an entry of `GET /v1/bans`, and the answer to
/// `POST /v1/bans` and `DELETE /v1/bans/{prefix}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub prefix: String,
    pub reason: String,
    /// `local`, or the cluster node (public key) that issued it.
    pub origin: String,
    pub version: u64,
    /// RFC 3339, UTC.
    pub created: String,
    /// RFC 3339, UTC.
    pub until: String,
    pub expires_in_secs: u64,
}

/// `GET /v1/bans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanList {
    pub bans: Vec<Ban>,
}

/// `POST /v1/reload`: the fronts the new configuration added, removed and changed, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadAnswer {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
}

/// `POST /v1/upgrade` body: the new binary (absolute path); absent: the running binary's path on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUpgrade {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
}

/// `POST /v1/upgrade`: the process that now serves, once it accepts on every listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeAnswer {
    pub pid: u32,
    pub binary: String,
}

/// `GET /v1/cluster`, one shape per cluster backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum ClusterStatus {
    /// Not part of a cluster.
    #[serde(rename = "none")]
    Standalone {
        /// Always empty.
        peers: Vec<TrustedPeer>,
    },
    /// Noise links between the gateways themselves.
    Embedded {
        /// This node's public key.
        node: String,
        listen: String,
        /// Statements held (bans and unban tombstones).
        records: u64,
        cost_sharing: bool,
        peers: Vec<LinkPeer>,
        stats: ClusterCounters,
    },
    /// Statements carried by Redis: no links, the peers are the trusted origins.
    Redis {
        node: String,
        /// Always null: nothing listens for links.
        listen: Option<String>,
        records: u64,
        cost_sharing: bool,
        peers: Vec<TrustedPeer>,
        redis: RedisLink,
        stats: ClusterCounters,
    },
}

/// A peer gateway reached over a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPeer {
    pub addr: String,
    pub key: String,
    pub up: bool,
    /// Unix seconds at which the link last came up or went down.
    pub since: Option<u64>,
    /// Unix seconds of the last anti-entropy exchange.
    pub last_sync: Option<u64>,
    /// Milliseconds since the last anti-entropy exchange.
    pub lag_ms: Option<u64>,
}

/// An origin whose statements this node trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedPeer {
    pub key: String,
}

/// The connection to Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisLink {
    /// Without credentials.
    pub url: String,
    pub prefix: String,
    pub connected: bool,
    /// Unix seconds at which the connection last came up or went down.
    pub since: Option<u64>,
    /// Unix seconds at which the last full resync finished.
    pub last_sync: Option<u64>,
    /// Milliseconds since the last full resync.
    pub lag_ms: Option<u64>,
}

/// The cluster's counters, as `GET /v1/cluster` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCounters {
    pub published: u64,
    pub applied: u64,
    pub duplicate: u64,
    pub stale: u64,
    pub rejected_unlisted_origin: u64,
    pub rejected_bad_signature: u64,
    pub rejected_malformed: u64,
    pub refused_by_table: u64,
    pub refused_links: u64,
    pub dropped_sends: u64,
    pub cost_reports_sent: u64,
    pub cost_reports_received: u64,
    pub cost_reports_rejected: u64,
    pub digests_sent: u64,
    pub summaries_sent: u64,
    pub bucket_digests_sent: u64,
    pub digest_bytes_sent: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_keep_their_json_layout() {
        let none = ClusterStatus::Standalone { peers: Vec::new() };
        assert_eq!(to_json(&none), r#"{"backend":"none","peers":[]}"#);
        let ready = Health {
            status: HealthStatus::Degraded,
            reason: Some("why".into()),
            feeds: Vec::new(),
        };
        assert_eq!(to_json(&ready), r#"{"reason":"why","status":"degraded"}"#);
        assert_eq!(to_json(&Health::new(HealthStatus::Ok)), r#"{"status":"ok"}"#);
        let ban = NewBan {
            prefix: "192.0.2.1".into(),
            duration: "1h".into(),
            reason: None,
        };
        assert_eq!(to_json(&ban), r#"{"duration":"1h","prefix":"192.0.2.1"}"#);
        let redis = ClusterStatus::Redis {
            node: "n".into(),
            listen: None,
            records: 2,
            cost_sharing: false,
            peers: vec![TrustedPeer { key: "k".into() }],
            redis: RedisLink {
                url: "redis://h".into(),
                prefix: "p:".into(),
                connected: true,
                since: Some(5),
                last_sync: None,
                lag_ms: None,
            },
            stats: ClusterCounters::default(),
        };
        let text = to_json(&redis);
        assert!(
            text.starts_with(r#"{"backend":"redis","cost_sharing":false,"listen":null,"node":"n","#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<ClusterStatus>(&text).unwrap(), redis);
        assert_eq!(serde_json::from_str::<ClusterStatus>(&to_json(&none)).unwrap(), none);
    }
}

/// `GET /v1/certs`: every certificate the gateway serves, or orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertList {
    pub certificates: Vec<CertEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertEntry {
    /// The front serving it; None for an ACME certificate no front serves.
    pub front: Option<String>,
    /// The `[[acme.certificate]]` name, else the SNI name, else `default`.
    pub name: String,
    /// The SNI name it is chosen for (None: the default certificate).
    pub sni: Option<String>,
    /// `file`, `acme` or `placeholder`.
    pub source: String,
    pub issuer: String,
    /// DNS names of the leaf.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// ACME: when the next order is due (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_renewal: Option<i64>,
    /// ACME: orders failed since the last success, and the last failure.
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// ACME in a cluster: the gateway (its node key) that ordered the certificate served here; absent
    /// when this gateway ordered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered_by: Option<String>,
}
