//! CrowdSec, both ways. Bouncer mode polls the Local API's decision stream (the whole list first, then
//! what changed since the last poll) and keeps the `ban` decisions on IPs and ranges as the `crowdsec`
//! source of the deny set; other decision types (captcha, throttle) mean nothing at a TCP gateway and are
//! logged and ignored. Reporter mode logs in with machine credentials and pushes each ban this gateway
//! makes as an alert, so the rest of a CrowdSec fleet learns of it.

use super::http::{Client, HttpError, Url};
use super::settings::{CrowdSecSettings, Reporter};
use crate::state::bans::{BanChange, BanRecord, LOCAL_ORIGIN};
use crate::state::feeds::{FeedFailure, FeedSource, Reports};
use crate::wire::acl::{parse_cidr, CidrSet};
use crate::wire::time::rfc3339;
use hyper::{Method, StatusCode};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// One decision as the stream carries it; only what the bouncer needs is read.
#[derive(Debug, Deserialize)]
struct Decision {
    id: i64,
    scope: String,
    value: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct Stream {
    #[serde(default)]
    new: Option<Vec<Decision>>,
    #[serde(default)]
    deleted: Option<Vec<Decision>>,
}

/// The ban decisions held: by decision id, and how many decisions name each network (two decisions on
/// one address, one deleted, still ban it).
#[derive(Default)]
struct Held {
    by_id: HashMap<i64, IpNetwork>,
    per_net: HashMap<IpNetwork, u32>,
}

impl Held {
    fn set(&self) -> CidrSet {
        CidrSet::from_nets(self.per_net.keys().copied())
    }

    fn remove(&mut self, id: i64) -> bool {
        let Some(net) = self.by_id.remove(&id) else {
            return false;
        };
        if let Some(n) = self.per_net.get_mut(&net) {
            *n -= 1;
            if *n == 0 {
                self.per_net.remove(&net);
            }
        }
        true
    }
}

/// What a decision's scope and value mean at the gateway, if anything.
fn network_of(d: &Decision) -> Option<IpNetwork> {
    match d.scope.to_ascii_lowercase().as_str() {
        "ip" | "range" => parse_cidr(&d.value).ok(),
        _ => None,
    }
}

pub struct Bouncer {
    settings: CrowdSecSettings,
    key: String,
    client: Client,
    base: Url,
    source: Arc<FeedSource>,
    held: Held,
}

impl Bouncer {
    pub fn new(settings: CrowdSecSettings, source: Arc<FeedSource>) -> Result<Option<Bouncer>, HttpError> {
        let Some(key) = settings.api_key.clone() else {
            return Ok(None);
        };
        let base = Url::parse(&settings.url)?;
        let client = Client::new(
            base.tls,
            settings.ca_file.as_deref(),
            settings.timeout,
            settings.max_response,
        )?;
        Ok(Some(Bouncer {
            settings,
            key,
            client,
            base,
            source,
            held: Held::default(),
        }))
    }

    pub async fn run(mut self, stop: CancellationToken) {
        // After a failed poll the next one asks for the whole list again: whatever happened meanwhile
        // (a restarted Local API, a lost answer) is then repaired in one step.
        let mut startup = true;
        loop {
            match self.poll(startup).await {
                Ok(()) => startup = false,
                Err((why, detail)) => {
                    self.source.failed(why, &detail);
                    tracing::warn!(source = "crowdsec", reason = why.as_str(), error = %detail, entries = self.source.len(), "CrowdSec decisions not updated; the last ones stay in force");
                    startup = true;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    async fn poll(&mut self, startup: bool) -> Result<(), (FeedFailure, String)> {
        let path = if startup {
            "/v1/decisions/stream?startup=true"
        } else {
            "/v1/decisions/stream"
        };
        let url = self.base.join(path);
        let resp = self
            .client
            .request(Method::GET, &url, &[("X-Api-Key", &self.key)], None)
            .await
            .map_err(|e| match e {
                HttpError::TooLarge { .. } => (FeedFailure::TooLarge, e.to_string()),
                _ => (FeedFailure::Fetch, e.to_string()),
            })?;
        if resp.status != StatusCode::OK {
            return Err((FeedFailure::Status, format!("decision stream: HTTP {}", resp.status)));
        }
        let stream: Stream =
            serde_json::from_slice(&resp.body).map_err(|e| (FeedFailure::Protocol, format!("decision stream: {e}")))?;
        if startup {
            self.held = Held::default();
        }
        let mut changed = startup;
        for d in stream.deleted.into_iter().flatten() {
            changed |= self.held.remove(d.id);
        }
        let (mut ignored, mut dropped) = (HashMap::<String, u32>::new(), 0u64);
        for d in stream.new.into_iter().flatten() {
            if !d.kind.eq_ignore_ascii_case("ban") {
                *ignored.entry(d.kind).or_default() += 1;
                continue;
            }
            let Some(net) = network_of(&d) else {
                *ignored.entry(format!("{} scope", d.scope)).or_default() += 1;
                continue;
            };
            if self.held.by_id.contains_key(&d.id) {
                continue;
            }
            if self.held.by_id.len() >= self.settings.max_decisions {
                dropped += 1;
                continue;
            }
            self.held.by_id.insert(d.id, net);
            *self.held.per_net.entry(net).or_default() += 1;
            changed = true;
        }
        for (kind, n) in ignored {
            tracing::info!(source = "crowdsec", kind = %kind, decisions = n, "CrowdSec decisions ignored: only bans on IPs and ranges apply at the gateway");
        }
        if dropped > 0 {
            self.source.count_dropped(dropped);
            tracing::warn!(
                source = "crowdsec",
                dropped,
                cap = self.settings.max_decisions,
                "CrowdSec ban decisions left out: crowdsec.max_decisions reached"
            );
        }
        if changed {
            self.source.replace(self.held.set(), SystemTime::now());
        } else {
            self.source.confirmed(SystemTime::now());
        }
        Ok(())
    }
}

/// An alert as the Local API takes it (`POST /v1/alerts`), for one ban.
fn alert(r: &Reporter, b: &BanRecord, now: SystemTime) -> serde_json::Value {
    let (scope, value) = scope_value(&b.prefix);
    let host = scope == "Ip";
    let secs = b.until.duration_since(now).unwrap_or_default().as_secs().max(1);
    let at = rfc3339(b.created);
    let mut source = serde_json::json!({ "scope": scope, "value": value });
    if host {
        source["ip"] = serde_json::Value::String(value.clone());
    } else {
        source["range"] = serde_json::Value::String(value.clone());
    }
    serde_json::json!({
        "scenario": r.scenario,
        "scenario_hash": "",
        "scenario_version": "",
        "message": format!("gatehouse banned {}: {}", b.prefix, b.reason),
        "events_count": 1,
        "start_at": at,
        "stop_at": at,
        "capacity": 0,
        "leakspeed": "0",
        "simulated": false,
        "events": [],
        "source": source,
        "decisions": [{
            "duration": format!("{secs}s"),
            // What CrowdSec's own agents write, so `cscli alerts list` shows these without `--all`.
            "origin": "crowdsec",
            "scenario": r.scenario,
            "scope": scope,
            "type": "ban",
            "value": value,
        }],
    })
}

/// Most alerts one push carries; a burst of bans beyond it goes in the next push.
const MAX_BATCH: usize = 100;
/// Bans waiting for the Local API while it is unreachable; older ones are dropped (and counted) first.
const MAX_QUEUE: usize = 10_000;

pub struct ReporterTask {
    reporter: Reporter,
    client: Client,
    base: Url,
    token: Option<String>,
    reports: Arc<Reports>,
    retry: Duration,
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

impl ReporterTask {
    pub fn new(settings: &CrowdSecSettings, reports: Arc<Reports>) -> Result<Option<ReporterTask>, HttpError> {
        let Some(reporter) = settings.reporter.clone() else {
            return Ok(None);
        };
        let base = Url::parse(&settings.url)?;
        let client = Client::new(base.tls, settings.ca_file.as_deref(), settings.timeout, 1024 * 1024)?;
        Ok(Some(ReporterTask {
            reporter,
            client,
            base,
            token: None,
            reports,
            retry: settings.poll_interval,
        }))
    }

    pub async fn run(mut self, mut feed: broadcast::Receiver<BanChange>, stop: CancellationToken) {
        let mut queue: VecDeque<Report> = VecDeque::new();
        loop {
            if queue.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    change = feed.recv() => match change {
                        Ok(c) => take(c, &mut queue),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            self.reports.count_dropped(n);
                            tracing::warn!(missed = n, "CrowdSec reporter fell behind the ban feed; those bans are not reported");
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
            // Whatever else is already waiting goes in the same push.
            while let Ok(c) = feed.try_recv() {
                take(c, &mut queue);
            }
            let now = SystemTime::now();
            queue.retain(|r| !matches!(r, Report::Ban(b) if !b.is_live(now)));
            if queue.len() > MAX_QUEUE {
                let extra = queue.len() - MAX_QUEUE;
                queue.drain(..extra);
                self.reports.count_dropped(extra as u64);
            }
            // In order: a ban and its lift must reach the Local API in the order they were made.
            let result = match queue.front() {
                None => continue,
                Some(Report::Lift(net)) => {
                    let net = *net;
                    self.lift(net).await.map(|()| {
                        queue.pop_front();
                        self.reports.count_lifted();
                    })
                }
                Some(Report::Ban(_)) => {
                    let batch: Vec<serde_json::Value> = queue
                        .iter()
                        .take(MAX_BATCH)
                        .map_while(|r| match r {
                            Report::Ban(b) => Some(alert(&self.reporter, b, now)),
                            Report::Lift(_) => None,
                        })
                        .collect();
                    let n = batch.len();
                    self.push(&batch).await.map(|()| {
                        queue.drain(..n);
                        self.reports.count_pushed(n as u64);
                    })
                }
            };
            if let Err(e) = result {
                self.reports.count_failed();
                tracing::warn!(error = %e, waiting = queue.len(), "CrowdSec reporter: Local API not updated; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(self.retry) => {}
                }
            }
        }
    }

    async fn login(&mut self) -> Result<String, String> {
        let body = serde_json::json!({
            "machine_id": self.reporter.machine_id,
            "password": self.reporter.password,
            "scenarios": [self.reporter.scenario],
        });
        let resp = self
            .client
            .request(
                Method::POST,
                &self.base.join("/v1/watchers/login"),
                &[("Content-Type", "application/json")],
                Some(body.to_string().into_bytes()),
            )
            .await
            .map_err(|e| e.to_string())?;
        if resp.status != StatusCode::OK {
            return Err(format!("login as `{}`: HTTP {}", self.reporter.machine_id, resp.status));
        }
        let login: Login = serde_json::from_slice(&resp.body).map_err(|e| format!("login answer: {e}"))?;
        self.token = Some(login.token.clone());
        Ok(login.token)
    }

    async fn push(&mut self, batch: &[serde_json::Value]) -> Result<(), String> {
        let body = serde_json::to_vec(batch).map_err(|e| e.to_string())?;
        self.authorised(Method::POST, "/v1/alerts", Some(body)).await
    }

    /// Deletes the decision this gateway's alert made for `net` (only that one: the scenario is ours),
    /// so a ban lifted here stops refusing across the fleet too.
    async fn lift(&mut self, net: IpNetwork) -> Result<(), String> {
        let (scope, value) = scope_value(&net);
        let key = if scope == "Ip" { "ip" } else { "range" };
        let path = format!(
            "/v1/decisions?{key}={}&scenario={}",
            query_escape(&value),
            query_escape(&self.reporter.scenario)
        );
        self.authorised(Method::DELETE, &path, None).await
    }

    async fn authorised(&mut self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<(), String> {
        // A token expires (an hour by default): on 401 log in again once and retry.
        for attempt in 0..2 {
            let token = match (&self.token, attempt) {
                (Some(t), 0) => t.clone(),
                _ => self.login().await?,
            };
            let auth = format!("Bearer {token}");
            let resp = self
                .client
                .request(
                    method.clone(),
                    &self.base.join(path),
                    &[("Content-Type", "application/json"), ("Authorization", &auth)],
                    body.clone(),
                )
                .await
                .map_err(|e| e.to_string())?;
            match resp.status {
                StatusCode::OK | StatusCode::CREATED => return Ok(()),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if attempt == 0 => self.token = None,
                s => return Err(format!("{method} {}: HTTP {s}", path.split('?').next().unwrap_or(path))),
            }
        }
        Err("not authorised after logging in again".into())
    }
}

/// What the gateway tells the Local API, in the order it happened.
enum Report {
    Ban(BanRecord),
    Lift(IpNetwork),
}

/// Only this gateway's own statements: bans learnt from cluster peers are theirs to report.
fn take(change: BanChange, queue: &mut VecDeque<Report>) {
    match change {
        BanChange::Ban(b) if b.origin == LOCAL_ORIGIN => queue.push_back(Report::Ban(b)),
        BanChange::Unban { prefix, lifted, .. } if lifted.origin == LOCAL_ORIGIN => {
            queue.push_back(Report::Lift(prefix))
        }
        _ => {}
    }
}

/// CrowdSec's scope and value for a network: `Ip` for one address, else `Range`.
fn scope_value(net: &IpNetwork) -> (&'static str, String) {
    let host = (net.prefix() == 32 && net.is_ipv4()) || (net.prefix() == 128 && net.is_ipv6());
    if host {
        ("Ip", net.ip().to_string())
    } else {
        ("Range", net.to_string())
    }
}

/// Percent-encodes a query value (addresses, CIDRs and scenario names need little of it).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_name_the_ban_as_crowdsec_expects() {
        let r = Reporter {
            machine_id: "gh".into(),
            password: "pw".into(),
            scenario: "gatehouse/automatic-ban".into(),
        };
        let now = SystemTime::now();
        let b = BanRecord {
            prefix: parse_cidr("192.0.2.7").unwrap(),
            until: now + Duration::from_secs(600),
            reason: "cost hard limit".into(),
            origin: LOCAL_ORIGIN.into(),
            created: now,
            version: 1,
            attachment: None,
        };
        let a = alert(&r, &b, now);
        assert_eq!(a["source"]["scope"], "Ip");
        assert_eq!(a["source"]["value"], "192.0.2.7");
        assert_eq!(a["decisions"][0]["duration"], "600s");
        let range = BanRecord {
            prefix: parse_cidr("192.0.2.0/24").unwrap(),
            ..b
        };
        assert_eq!(alert(&r, &range, now)["decisions"][0]["value"], "192.0.2.0/24");
    }

    #[test]
    fn deleting_one_of_two_decisions_keeps_the_ban() {
        let mut h = Held::default();
        let net = parse_cidr("192.0.2.7").unwrap();
        for id in [1, 2] {
            h.by_id.insert(id, net);
            *h.per_net.entry(net).or_default() += 1;
        }
        assert!(h.remove(1));
        assert!(h.set().contains("192.0.2.7".parse().unwrap()));
        assert!(h.remove(2));
        assert!(h.set().is_empty());
        assert!(!h.remove(2));
    }
}
