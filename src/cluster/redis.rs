//! The Redis backend (`cluster.backend = "redis"`): the cluster's signed statements kept
//! in, and pushed through, a Redis deployment that every gateway of a fleet points at, instead of the
//! embedded links.
//!
//! Choices:
//! - **Trust stays with the signatures.** Redis is trusted for availability only: every value read from
//!   it goes through the same `Inner::ingest` as a record arriving on a link (listed origin, Ed25519
//!   signature, normalised prefix, rank), so whoever can write to Redis can delete bans (or block writes)
//!   but cannot forge one. Rejections are counted exactly as on links.
//! - **Storage**: one string key per prefix, `<prefix>ban:<cidr>`, whose value is
//!   `<version as 16 lowercase hex digits><origin key as 64 lowercase hex digits>|<JSON SignedRecord>`.
//!   The 80-character head makes a byte-wise comparison of two values order them by rank `(version,
//!   origin)`, the order every node judges statements by. The key's TTL (`PX`) is the statement's
//!   remaining lifetime, so Redis forgets a ban when it ends; an unban is stored the same way, as a
//!   tombstone living as long as the lifted ban had left, so a late write of the ban cannot revive it.
//! - **Writes** go through one Lua script ([`SET_SCRIPT`], loaded per connection and run by `EVALSHA`) that
//!   sets the key only if the new head is greater than the stored one, and then publishes the value on
//!   `<prefix>bans`, atomically: gateways writing concurrently cannot replace a newer statement with an
//!   older one, and nothing is announced that was not stored. The script compares bytes itself rather
//!   than with Lua's `<`, which follows the server's collation locale.
//! - **Propagation**: each gateway subscribes to `<prefix>bans` and ingests every message, which is
//!   `<remaining ms> <value>`: expiry travels as a remaining duration (the module doc of
//!   `cluster`), never as an absolute time, so clock skew between gateways does not matter; Redis's own
//!   clock only runs the TTL.
//! - **Resync** on every (re)connect and every `anti_entropy`: after subscribing (so nothing written in
//!   between is missed), SCAN `<prefix>ban:*` (COUNT 1000), read each value with its PTTL (pipelined)
//!   and ingest those whose head outranks what this node holds (the others cost no signature check);
//!   then write every live statement this node holds that Redis lacks or holds an older rank of, so bans
//!   made while Redis was away reach it. Values already rejected are remembered (by hash, for as long as
//!   they stay in Redis) so a bad key is counted once, not at every resync.
//! - **Local statements** reach this task through a bounded channel fed by `Inner::broadcast`; statements
//!   that came from Redis are not written back. While Redis is unreachable the gateway keeps enforcing
//!   (the ban table is local), local statements are dropped rather than queued (the resync after the
//!   reconnect writes everything held), and the connection is retried with a backoff from 100 ms
//!   doubling to 5 s. Reconnects are logged at info, failures at warn, the URL always without its
//!   password.
//! - **Cost reports** (cluster-wide cost, [`super::cost`]): each node publishes its latest signed report on
//!   `<prefix>costs` every interval; they are not stored (each is current for one interval and expires at
//!   the receivers). Anyone who can write to Redis could publish, so reports are signed by their node and
//!   carry a sequence number: unlisted or tampered reports are counted and dropped, and replays of older
//!   ones change nothing.
//! - **ACME shares** (challenge answers, certificates with their keys, requests) travel on `<prefix>acme`
//!   only when `redis_acme_key_file` is set, sealed by [`super::acme_seal`] with that secret, which Redis
//!   never sees; they are not stored (a gateway lacking a certificate keeps asking the orderer).
//! - **TLS** (`rediss://`) is not compiled in: reach Redis over a private network or a local TLS tunnel.

use super::cost::{ReportVerdict, SignedCostReport};
use super::link::Carried;
use super::record::SignedRecord;
use super::{bump, lock, Inner, Verdict, BATCH, NO_ADDR};
use futures_util::StreamExt;
use ipnetwork::IpNetwork;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Compare-and-set by rank, then publish. KEYS: the prefix's key, the channel. ARGV: the value, its TTL
/// in ms. Returns 1 when stored, 0 when Redis already held this rank or a newer one. A key of another
/// type (written by something else) is replaced rather than failing every write to it.
pub const SET_SCRIPT: &str = r"
local cur = redis.pcall('GET', KEYS[1])
if type(cur) == 'table' and cur.err then
  cur = false
end
if cur then
  local newer = false
  for i = 1, 80 do
    local a, b = string.byte(ARGV[1], i) or 0, string.byte(cur, i) or 0
    if a ~= b then
      newer = a > b
      break
    end
  end
  if not newer then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[2] .. ' ' .. ARGV[1])
return 1
";

/// Length of a value's rank head.
const HEAD: usize = 80;
/// Rejected values remembered (so each is counted once, not at every resync). Whoever writes to Redis
/// chooses how many bad values there are; past this many, the rest are simply judged again.
pub const MAX_REJECTED: usize = 10_000;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bounds every connect and command, so a Redis that stops answering (no reset) is noticed.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the fleet's Redis is and which part of it is ours. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    url: String,
    prefix: String,
    /// The secret ACME shares are sealed with (see [`super::acme_seal`]); without it gateways on Redis do
    /// not share certificates and each orders its own.
    acme_key: Option<[u8; super::acme_seal::KEY_LEN]>,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    #[error("TLS (rediss://) is not supported by this build; reach Redis over a private network or a TLS tunnel")]
    Tls,
    #[error("must be redis://[:password@]host[:port][/db]")]
    Scheme,
    // The parser's message is left out: it may quote the URL, password included.
    #[error("not a valid Redis URL (redis://[:password@]host[:port][/db])")]
    Invalid,
}

impl RedisConfig {
    pub fn new(url: &str, prefix: &str) -> Result<RedisConfig, RedisConfigError> {
        if url.starts_with("rediss://") {
            return Err(RedisConfigError::Tls);
        }
        if !url.starts_with("redis://") {
            return Err(RedisConfigError::Scheme);
        }
        ::redis::Client::open(url).map_err(|_| RedisConfigError::Invalid)?;
        Ok(RedisConfig {
            url: url.to_string(),
            prefix: prefix.to_string(),
            acme_key: None,
        })
    }

    /// Shares ACME certificates and challenge answers through Redis, sealed with `key`.
    pub fn with_acme_key(mut self, key: [u8; super::acme_seal::KEY_LEN]) -> RedisConfig {
        self.acme_key = Some(key);
        self
    }

    /// The URL with any credentials replaced by `***`, for logs and status.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("prefix", &self.prefix)
            .field("acme_key", &self.acme_key.map(|_| "***"))
            .finish()
    }
}

fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// The key holding the statement about `net`.
pub fn key(prefix: &str, net: &IpNetwork) -> String {
    format!("{prefix}ban:{net}")
}

/// The channel statements are announced on.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}bans")
}

fn head(rec: &SignedRecord) -> String {
    let mut h = format!("{:016x}", rec.version);
    for b in rec.origin {
        h.push_str(&format!("{b:02x}"));
    }
    h
}

/// A statement as stored under its key (see the module doc).
pub fn encode_value(rec: &SignedRecord) -> String {
    let json = serde_json::to_string(rec).expect("a record always serialises");
    format!("{}|{json}", head(rec))
}

/// A statement as announced on the channel.
pub fn encode_message(c: &Carried) -> String {
    format!("{} {}", c.remaining_ms, encode_value(&c.rec))
}

#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("no rank head")]
    Head,
    #[error("bad record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the rank head does not match the record")]
    RankMismatch,
    #[error("the key does not name the record's prefix")]
    WrongKey,
    #[error("not `<remaining ms> <value>`")]
    Message,
}

pub fn decode_value(value: &[u8]) -> Result<SignedRecord, ValueError> {
    if value.len() <= HEAD || value[HEAD] != b'|' {
        return Err(ValueError::Head);
    }
    let rec: SignedRecord = serde_json::from_slice(&value[HEAD + 1..])?;
    if head(&rec).as_bytes() != &value[..HEAD] {
        return Err(ValueError::RankMismatch);
    }
    Ok(rec)
}

/// A statement as announced on the channel: `<remaining ms> <value>` (for fuzzing the decoder).
pub fn decode_message(payload: &[u8]) -> Result<Carried, ValueError> {
    let (remaining_ms, value) = split_message(payload)?;
    Ok(Carried {
        rec: decode_value(value)?,
        remaining_ms,
    })
}

fn split_message(payload: &[u8]) -> Result<(u64, &[u8]), ValueError> {
    let sp = payload.iter().position(|&b| b == b' ').ok_or(ValueError::Message)?;
    let ms = std::str::from_utf8(&payload[..sp])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ValueError::Message)?;
    Ok((ms, &payload[sp + 1..]))
}

fn value_hash(value: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// Escapes glob metacharacters so the prefix matches itself in `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The Redis connection as `GET /v1/cluster` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStatus {
    /// Without credentials.
    pub url: String,
    pub prefix: String,
    pub connected: bool,
    /// When the connection last came up or went down.
    pub since: Option<SystemTime>,
    /// When the last full resync finished.
    pub last_sync: Option<SystemTime>,
    /// Rejected values remembered so each is counted once (at most `MAX_REJECTED`).
    pub rejected_remembered: usize,
}

/// The cluster's side of the Redis task: where local statements go, and the connection's state.
pub(super) struct RedisLink {
    tx: mpsc::Sender<Carried>,
    /// The latest cost report to publish: only the newest matters, so a slow or absent Redis never
    /// queues old ones.
    costs: tokio::sync::watch::Sender<Option<Arc<String>>>,
    status: Mutex<RedisStatus>,
    /// ACME shares to seal and publish; None without `redis_acme_key_file`.
    acme: Option<mpsc::Sender<crate::wire::acme::AcmeShare>>,
}

/// The channel sealed ACME shares are announced on (they are not stored: a gateway that lacks a
/// certificate keeps asking for it until the orderer answers).
pub fn acme_channel(prefix: &str) -> String {
    format!("{prefix}acme")
}

/// The channel cost reports are announced on (they are not stored: each is current for one interval).
pub fn cost_channel(prefix: &str) -> String {
    format!("{prefix}costs")
}

/// The task that talks to Redis; started by `Cluster::start_with_key`.
pub(super) struct RedisTask {
    client: ::redis::Client,
    prefix: String,
    url: String,
    rx: mpsc::Receiver<Carried>,
    costs: tokio::sync::watch::Receiver<Option<Arc<String>>>,
    anti_entropy: Duration,
    acme: Option<(super::acme_seal::Sealer, mpsc::Receiver<crate::wire::acme::AcmeShare>)>,
}

impl RedisLink {
    pub(super) fn new(
        cfg: &RedisConfig,
        queue: usize,
        anti_entropy: Duration,
    ) -> Result<(RedisLink, RedisTask), RedisConfigError> {
        let client = ::redis::Client::open(cfg.url.as_str()).map_err(|_| RedisConfigError::Invalid)?;
        let (tx, rx) = mpsc::channel(queue);
        let (costs, costs_rx) = tokio::sync::watch::channel(None);
        let (acme_tx, acme) = match &cfg.acme_key {
            Some(k) => {
                let (tx, rx) = mpsc::channel(queue);
                (
                    Some(tx),
                    Some((super::acme_seal::Sealer::new(k, &acme_channel(&cfg.prefix)), rx)),
                )
            }
            None => (None, None),
        };
        let link = RedisLink {
            tx,
            costs,
            acme: acme_tx,
            status: Mutex::new(RedisStatus {
                url: cfg.redacted_url(),
                prefix: cfg.prefix.clone(),
                connected: false,
                since: None,
                last_sync: None,
                rejected_remembered: 0,
            }),
        };
        let task = RedisTask {
            client,
            prefix: cfg.prefix.clone(),
            url: cfg.redacted_url(),
            rx,
            costs: costs_rx,
            anti_entropy: anti_entropy.max(Duration::from_millis(50)),
            acme,
        };
        Ok((link, task))
    }

    /// Queues a statement for Redis; false when the queue is full (the next resync repairs that).
    pub(super) fn offer(&self, c: &Carried) -> bool {
        self.tx.try_send(c.clone()).is_ok()
    }

    /// Hands over this node's latest signed cost report for publishing.
    pub(super) fn offer_cost(&self, r: &SignedCostReport) {
        if let Ok(json) = serde_json::to_string(r) {
            self.costs.send_replace(Some(Arc::new(json)));
        }
    }

    /// Whether ACME shares travel through Redis (a shared secret is configured).
    pub(super) fn shares_acme(&self) -> bool {
        self.acme.is_some()
    }

    /// Queues an ACME share for Redis; false when sharing is off, or the queue is full (every share is
    /// asked for or offered again).
    pub(super) fn offer_acme(&self, m: crate::wire::acme::AcmeShare) -> bool {
        self.acme.as_ref().is_some_and(|tx| tx.try_send(m).is_ok())
    }

    pub(super) fn status(&self) -> RedisStatus {
        lock(&self.status).clone()
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Redis(#[from] ::redis::RedisError),
    #[error("timed out")]
    Timeout,
    #[error("the subscription closed")]
    Closed,
}

async fn timed<T, E: Into<SessionError>>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(SessionError::Timeout),
    }
}

/// One connection's worth of state.
struct Session {
    conn: ::redis::aio::MultiplexedConnection,
    // Held so the subscription stays open.
    _sink: ::redis::aio::PubSubSink,
    messages: ::redis::aio::PubSubStream,
    sha: String,
}

impl RedisTask {
    pub(super) async fn run(mut self, inner: Arc<Inner>) {
        let mut backoff = MIN_BACKOFF;
        let mut rejected = HashSet::new();
        let mut failures = 0u32;
        loop {
            match self.open().await {
                Ok(mut s) => {
                    backoff = MIN_BACKOFF;
                    failures = 0;
                    tracing::info!(url = %self.url, "cluster: connected to redis");
                    set_connected(&inner, true);
                    let err = self.serve(&inner, &mut s, &mut rejected).await;
                    set_connected(&inner, false);
                    match err {
                        None => return,
                        Some(e) => tracing::warn!(url = %self.url, error = %e, "cluster: redis connection lost"),
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(url = %self.url, error = %e, failures, retry_in = ?backoff, "cluster: cannot reach redis");
                }
            }
            // Local statements made meanwhile are dropped, not queued: the resync after the reconnect
            // writes everything this node holds.
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = inner.stop.cancelled() => return,
                    _ = &mut wait => break,
                    m = self.rx.recv() => if m.is_none() { return },
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn open(&self) -> Result<Session, SessionError> {
        let config = ::redis::AsyncConnectionConfig::new()
            .set_connection_timeout(IO_TIMEOUT)
            .set_response_timeout(IO_TIMEOUT);
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let (mut sink, messages) = timed(self.client.get_async_pubsub()).await?.split();
        timed(sink.subscribe(channel(&self.prefix))).await?;
        timed(sink.subscribe(cost_channel(&self.prefix))).await?;
        if self.acme.is_some() {
            timed(sink.subscribe(acme_channel(&self.prefix))).await?;
        }
        let sha: String = ::redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SET_SCRIPT)
            .query_async(&mut conn)
            .await?;
        Ok(Session {
            conn,
            _sink: sink,
            messages,
            sha,
        })
    }

    /// Runs one connection until it fails (`Some`) or the cluster stops (`None`).
    async fn serve(&mut self, inner: &Inner, s: &mut Session, rejected: &mut HashSet<u64>) -> Option<SessionError> {
        if let Err(e) = self.resync(inner, s, rejected).await {
            return Some(e);
        }
        let mut ae = tokio::time::interval_at(tokio::time::Instant::now() + self.anti_entropy, self.anti_entropy);
        ae.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = inner.stop.cancelled() => return None,
                m = s.messages.next() => match m {
                    Some(m) if m.get_channel_name() == cost_channel(&self.prefix) => {
                        on_cost_report(inner, m.get_payload_bytes());
                    }
                    Some(m) if m.get_channel_name() == acme_channel(&self.prefix) => {
                        self.on_acme(inner, m.get_payload_bytes());
                    }
                    Some(m) => self.on_message(inner, m.get_payload_bytes(), rejected),
                    None => return Some(SessionError::Closed),
                },
                changed = self.costs.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let report = self.costs.borrow_and_update().clone();
                    if let Some(report) = report {
                        let published: Result<(), _> = timed(
                            ::redis::cmd("PUBLISH")
                                .arg(cost_channel(&self.prefix))
                                .arg(report.as_str())
                                .query_async(&mut s.conn),
                        )
                        .await;
                        if let Err(e) = published {
                            return Some(e);
                        }
                    }
                }
                Some(share) = recv_acme(&mut self.acme) => {
                    let Some((sealer, _)) = &self.acme else { continue };
                    let Some(sealed) = sealer.seal(&inner.me.to_string(), &share) else { continue };
                    let published: Result<(), _> = timed(
                        ::redis::cmd("PUBLISH")
                            .arg(acme_channel(&self.prefix))
                            .arg(sealed)
                            .query_async(&mut s.conn),
                    )
                    .await;
                    if let Err(e) = published {
                        return Some(e);
                    }
                }
                c = self.rx.recv() => {
                    // The channel closes only when the cluster is gone.
                    let c = c?;
                    let mut batch = vec![c];
                    while batch.len() < BATCH {
                        match self.rx.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = self.write(s, &batch).await {
                        return Some(e);
                    }
                }
                _ = ae.tick() => if let Err(e) = self.resync(inner, s, rejected).await {
                    return Some(e);
                },
            }
        }
    }

    /// A sealed ACME share from another gateway goes to the ACME client; this node's own echo, and what
    /// does not open under the fleet's secret, are dropped.
    fn on_acme(&self, inner: &Inner, payload: &[u8]) {
        let Some((sealer, _)) = &self.acme else { return };
        match sealer.open(payload) {
            Some((from, share)) => {
                if from != inner.me.to_string() {
                    if let Some(tx) = inner.acme.get() {
                        let _ = tx.try_send((from, share));
                    }
                }
            }
            None => {
                bump(&inner.counters.rejected_malformed);
                if inner.should_log(NO_ADDR, "redis_acme_unsealed") {
                    tracing::warn!(
                        "cluster: a message on the redis acme channel does not open under redis_acme_key_file"
                    );
                }
            }
        }
    }

    fn on_message(&self, inner: &Inner, payload: &[u8], rejected: &mut HashSet<u64>) {
        let taken = split_message(payload).and_then(|(remaining_ms, value)| {
            let rec = decode_value(value)?;
            Ok((Carried { rec, remaining_ms }, value))
        });
        match taken {
            Ok((c, value)) => {
                if is_rejection(from_redis(inner, c)) && rejected.len() < MAX_REJECTED {
                    rejected.insert(value_hash(value));
                }
            }
            Err(e) => {
                bump(&inner.counters.rejected_malformed);
                if inner.should_log(NO_ADDR, "redis_malformed_message") {
                    tracing::warn!(error = %e, "cluster: malformed message on the redis channel");
                }
            }
        }
    }

    /// Stores statements through the script (pipelined; the script decides, so no read is needed).
    async fn write(&self, s: &mut Session, batch: &[Carried]) -> Result<(), SessionError> {
        let ch = channel(&self.prefix);
        for chunk in batch.chunks(BATCH) {
            let mut p = ::redis::pipe();
            let mut n = 0;
            for c in chunk.iter().filter(|c| c.remaining_ms > 0) {
                p.cmd("EVALSHA")
                    .arg(&s.sha)
                    .arg(2)
                    .arg(key(&self.prefix, &c.rec.prefix))
                    .arg(&ch)
                    .arg(encode_value(&c.rec))
                    .arg(c.remaining_ms)
                    .ignore();
                n += 1;
            }
            if n > 0 {
                let () = p.query_async(&mut s.conn).await?;
            }
        }
        Ok(())
    }

    /// Reads every statement Redis holds, takes the ones that outrank ours, then writes back the ones
    /// Redis lacks or holds an older rank of.
    async fn resync(&self, inner: &Inner, s: &mut Session, rejected: &mut HashSet<u64>) -> Result<(), SessionError> {
        let pattern = format!("{}ban:*", glob_escape(&self.prefix));
        let key_start = self.prefix.len() + "ban:".len();
        let mut in_redis: HashMap<IpNetwork, Vec<u8>> = HashMap::new();
        let mut still_rejected = HashSet::new();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .cursor_arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(BATCH)
                // Only strings: a GET on a key of another type would fail the whole pipeline, and
                // with it every resync.
                .arg("TYPE")
                .arg("string")
                .query_async(&mut s.conn)
                .await?;
            if !keys.is_empty() {
                let mut p = ::redis::pipe();
                for k in &keys {
                    p.cmd("GET").arg(k).cmd("PTTL").arg(k);
                }
                let values: Vec<::redis::Value> = p.query_async(&mut s.conn).await?;
                for (k, pair) in keys.iter().zip(values.chunks(2)) {
                    let [value, pttl] = pair else { continue };
                    let value: Option<Vec<u8>> = ::redis::from_redis_value(value).unwrap_or(None);
                    let pttl: i64 = ::redis::from_redis_value(pttl).unwrap_or(-2);
                    // -2: gone since the SCAN; -1: stored without a TTL, so only the signed duration bounds it.
                    let (Some(value), true) = (value, pttl != -2) else {
                        continue;
                    };
                    let remaining = u64::try_from(pttl).ok();
                    let Some(net) = k.get(key_start..).and_then(|p| p.parse::<IpNetwork>().ok()) else {
                        continue;
                    };
                    // Only what this node holds needs comparing; a writer filling Redis with keys
                    // must not fill this map too.
                    if value.len() >= HEAD && lock(&inner.state).records.contains_key(&net) {
                        in_redis.insert(net, value[..HEAD].to_vec());
                    }
                    self.take(inner, net, &value, remaining, rejected, &mut still_rejected);
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        *rejected = still_rejected;
        let now = SystemTime::now();
        let missing: Vec<Carried> = lock(&inner.state)
            .records
            .values()
            .filter(|h| h.until > now)
            .filter(|h| {
                in_redis
                    .get(&h.rec.prefix)
                    .is_none_or(|theirs| theirs.as_slice() < head(&h.rec).as_bytes())
            })
            .map(|h| Inner::carried(h, now))
            .collect();
        if !missing.is_empty() {
            tracing::debug!(n = missing.len(), "cluster: writing statements redis lacks");
        }
        self.write(s, &missing).await?;
        if let Some(r) = &inner.redis {
            let mut st = lock(&r.status);
            st.last_sync = Some(SystemTime::now());
            st.rejected_remembered = rejected.len();
        }
        Ok(())
    }

    /// Ingests one stored value unless this node holds its rank or a newer one, or it was already rejected.
    fn take(
        &self,
        inner: &Inner,
        net: IpNetwork,
        value: &[u8],
        remaining: Option<u64>,
        rejected: &HashSet<u64>,
        still_rejected: &mut HashSet<u64>,
    ) {
        let hash = value_hash(value);
        if rejected.contains(&hash) {
            if still_rejected.len() < MAX_REJECTED {
                still_rejected.insert(hash);
            }
            return;
        }
        let held = lock(&inner.state).records.get(&net).map(|h| head(&h.rec));
        if held.is_some_and(|h| value.len() >= HEAD && h.as_bytes() >= &value[..HEAD]) {
            return;
        }
        let rec = decode_value(value).and_then(|rec| {
            if rec.prefix == net {
                Ok(rec)
            } else {
                Err(ValueError::WrongKey)
            }
        });
        match rec {
            Ok(rec) => {
                let remaining_ms = remaining.unwrap_or(rec.duration_ms);
                if is_rejection(from_redis(inner, Carried { rec, remaining_ms })) && still_rejected.len() < MAX_REJECTED
                {
                    still_rejected.insert(hash);
                }
            }
            Err(e) => {
                bump(&inner.counters.rejected_malformed);
                if still_rejected.len() < MAX_REJECTED {
                    still_rejected.insert(hash);
                }
                if inner.should_log(NO_ADDR, "redis_malformed_value") {
                    tracing::warn!(prefix = %net, error = %e, "cluster: malformed value in redis");
                }
            }
        }
    }
}

/// A peer's cost report from the channel: taken if signed by a listed node and newer than its last.
/// The next ACME share to publish; pending forever when sharing is off.
async fn recv_acme(
    acme: &mut Option<(super::acme_seal::Sealer, mpsc::Receiver<crate::wire::acme::AcmeShare>)>,
) -> Option<crate::wire::acme::AcmeShare> {
    match acme {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn on_cost_report(inner: &Inner, payload: &[u8]) {
    let Some(sharing) = inner.sharing.get() else { return };
    let report = match SignedCostReport::decode(payload) {
        Ok(r) => r,
        Err(e) => {
            bump(&inner.counters.cost_reports_rejected);
            if inner.should_log(NO_ADDR, "redis_malformed_cost_report") {
                tracing::warn!(error = %e, "cluster: malformed cost report on the redis channel");
            }
            return;
        }
    };
    if report.origin == inner.me.0 {
        return; // our own, echoed by the subscription
    }
    match sharing.receive_signed(&report, |k| inner.listed(k)) {
        ReportVerdict::Taken => bump(&inner.counters.cost_reports_received),
        ReportVerdict::Stale => {}
        v => {
            bump(&inner.counters.cost_reports_rejected);
            if inner.should_log(NO_ADDR, "redis_cost_report_rejected") {
                tracing::warn!(verdict = ?v, "cluster: cost report on the redis channel rejected");
            }
        }
    }
}

/// Ingests a statement read from Redis; `Some(me)` as the source keeps it from being written back.
fn from_redis(inner: &Inner, c: Carried) -> Verdict {
    inner.ingest(c, Some(inner.me))
}

/// Verdicts that the same value would get again (unlike a full origin, which may free up, or a
/// version ahead of this node's clock, which this clock catches up with).
fn is_rejection(v: Verdict) -> bool {
    matches!(
        v,
        Verdict::UnlistedOrigin | Verdict::BadSignature | Verdict::Malformed | Verdict::TooWide | Verdict::TooLong
    )
}

fn set_connected(inner: &Inner, up: bool) {
    if let Some(r) = &inner.redis {
        let mut st = lock(&r.status);
        st.connected = up;
        st.since = Some(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::keys::NodeKey;
    use crate::cluster::record::Op;

    #[test]
    fn values_order_by_rank_and_round_trip() {
        let (a, b) = (NodeKey::generate(), NodeKey::generate());
        let p: IpNetwork = "192.0.2.0/24".parse().unwrap();
        let rec = |k: &NodeKey, v: u64| SignedRecord::sign(k, Op::Ban, p, "x".into(), 1, 60_000, v);
        let recs = [rec(&a, 9), rec(&b, 9), rec(&a, 10), rec(&b, 0x1_0000_0000)];
        for x in &recs {
            for y in &recs {
                let (ex, ey) = (encode_value(x), encode_value(y));
                assert_eq!(
                    ex.as_bytes()[..HEAD].cmp(&ey.as_bytes()[..HEAD]),
                    x.rank().cmp(&y.rank())
                );
            }
            assert_eq!(&decode_value(encode_value(x).as_bytes()).unwrap(), x);
        }
        let c = Carried {
            rec: recs[0].clone(),
            remaining_ms: 1234,
        };
        let m = encode_message(&c);
        let (ms, v) = split_message(m.as_bytes()).unwrap();
        assert_eq!((ms, decode_value(v).unwrap()), (1234, c.rec));
        // A head that lies about the record is refused before any signature check.
        let mut lying = encode_value(&recs[0]).into_bytes();
        lying[0] = b'f';
        assert!(matches!(decode_value(&lying), Err(ValueError::RankMismatch)));
    }

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        let c = RedisConfig::new("redis://:s3cret@10.0.0.9:6380/2", "gh:").unwrap();
        assert_eq!(c.redacted_url(), "redis://***@10.0.0.9:6380/2");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(redact("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert!(matches!(
            RedisConfig::new("rediss://h:6379", "g:"),
            Err(RedisConfigError::Tls)
        ));
        assert!(matches!(
            RedisConfig::new("http://h", "g:"),
            Err(RedisConfigError::Scheme)
        ));
        assert_eq!(glob_escape("a*b[c]?\\"), "a\\*b\\[c\\]\\?\\\\");
    }
}
