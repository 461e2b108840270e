//! Gateways sharing bans through a real Redis (`cluster.backend = "redis"`): a ban on one is enforced by
//! the other within a second and lifted by either; Redis going away changes no enforcement and its
//! return heals it; records by unlisted or tampered signers are refused and counted. The tests need
//! `redis-server` (`tests/run` installs it) and fail without it.

use crate::support::gateway::now_ms;
use crate::support::{backends, clients, gateway, net};
use gatehouse::cluster::keys::NodeKey;
use gatehouse::cluster::link::Carried;
use gatehouse::cluster::record::{Op, SignedRecord};
use gatehouse::cluster::redis::{channel, encode_value, key, MAX_REJECTED, SET_SCRIPT};
use gatehouse::config::Config;
use gatehouse::Running;
use ipnetwork::IpNetwork;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "cluster-redis-test-token-0123456789";
const PREFIX: &str = "gatehouse:";

fn redis_server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.is_file()))
        .expect("redis-server is missing: run tests/run (the README's test command), which installs it, or apt-get install redis-server")
}

/// A throwaway redis-server on a loopback port, without persistence; killed on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    async fn start() -> RedisServer {
        let port = net::free_port();
        let mut s = RedisServer { port, child: None };
        s.restart().await;
        s
    }

    /// Starts (again) on the same port, empty.
    async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(redis_server_binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Ok(mut c) = self.conn().await {
                if redis::cmd("PING").query_async::<String>(&mut c).await.is_ok() {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn conn(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    async fn get(&self, k: &str) -> Option<String> {
        let mut c = self.conn().await.unwrap();
        redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap()
    }

    /// Stores and announces a value the way gateways do (the same script), as a rogue writer could.
    async fn write(&self, c: &Carried) {
        let mut conn = self.conn().await.unwrap();
        let stored: i64 = redis::cmd("EVAL")
            .arg(SET_SCRIPT)
            .arg(2)
            .arg(key(PREFIX, &c.rec.prefix))
            .arg(channel(PREFIX))
            .arg(encode_value(&c.rec))
            .arg(c.remaining_ms)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(stored, 1);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Gateway `i` of `keys.len()` on Redis `url`: lists the others' keys only (no addresses, no listen).
fn config(i: usize, keys: &[String], url: &str, upstream: SocketAddr, extra: &str) -> String {
    let peers = gateway::cluster_peers(i, &[], keys);
    format!(
        "{}{extra}[cluster]\nbackend = \"redis\"\nredis_url = \"{url}\"\nnode_key = \"node{i}.key\"\n\
         anti_entropy = \"1s\"\n{peers}\n{}",
        gateway::RELAXED,
        gateway::tcp_front("p", upstream, "")
    )
}

/// A throwaway Redis and gateway 0 of a two-node fleet on it (keys for both in `dir`), connected.
async fn one_gateway_on_redis() -> (RedisServer, tempfile::TempDir, Running) {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let up = backends::echo_backend().await;
    let keys = gateway::node_keys(dir.path(), 2);
    let a = gateway::start_in(dir.path(), &config(0, &keys, &redis.url(), up, "")).await;
    assert!(redis_connected(&a).await, "not connected to redis");
    (redis, dir, a)
}

async fn redis_connected(g: &Running) -> bool {
    net::within(Duration::from_secs(5), async || {
        g.cluster()
            .and_then(|c| c.status().redis)
            .is_some_and(|r| r.connected && r.last_sync.is_some())
    })
    .await
    .is_some()
}

async fn refused_within(g: &Running, ip: &str, limit: Duration) -> bool {
    let addr = g.addr("p");
    net::within(limit, async || net::is_refused(ip, addr).await)
        .await
        .is_some()
}

async fn admitted_within(g: &Running, ip: &str, limit: Duration) -> bool {
    let addr = g.addr("p");
    net::within(limit, async || !net::is_refused(ip, addr).await)
        .await
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_through_redis_is_enforced_by_all_and_lifted_by_any() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let up = backends::echo_backend().await;
    let keys = gateway::node_keys(dir.path(), 2);
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let admin = "[admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n";
    let a = gateway::start_in(dir.path(), &config(0, &keys, &redis.url(), up, admin)).await;
    let b = gateway::start_in(dir.path(), &config(1, &keys, &redis.url(), up, "")).await;
    assert!(
        redis_connected(&a).await && redis_connected(&b).await,
        "not connected to redis"
    );

    // Status and metrics name the backend and its connection.
    let admin = match a.admin_addr() {
        Some(gatehouse::admin::AdminListen::Tcp(a)) => *a,
        other => panic!("admin not on TCP: {other:?}"),
    };
    let v: serde_json::Value = serde_json::from_str(&clients::admin_get(admin, TOKEN, "/v1/cluster").await).unwrap();
    assert_eq!(v["backend"], "redis", "{v}");
    assert_eq!(v["redis"]["connected"], true, "{v}");
    assert_eq!(v["redis"]["url"], redis.url(), "{v}");
    assert_eq!(v["peers"][0]["key"], keys[1].as_str(), "{v}");
    let metrics = clients::admin_get(admin, TOKEN, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "gatehouse_cluster_links_up 1"),
        "{metrics}"
    );

    for g in [&a, &b] {
        assert!(!net::is_refused("127.0.0.2", g.addr("p")).await);
    }
    let x: IpNetwork = "127.0.0.2/32".parse().unwrap();
    a.bans().ban(x, Duration::from_secs(600), "test").unwrap();
    assert!(
        refused_within(&b, "127.0.0.2", Duration::from_secs(1)).await,
        "B still admits after 1 s"
    );
    assert!(
        !net::is_refused("127.0.0.3", b.addr("p")).await,
        "others are unaffected"
    );
    // Stored under its key with a TTL of the ban's remaining time.
    let stored = redis.get(&key(PREFIX, &x)).await.expect("the ban is in redis");
    assert!(stored.contains("\"Ban\""), "{stored}");
    let mut c = redis.conn().await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key(PREFIX, &x))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(pttl > 590_000 && pttl <= 600_000, "pttl {pttl}");

    b.bans().unban(x).unwrap();
    assert!(
        admitted_within(&a, "127.0.0.2", Duration::from_secs(1)).await,
        "A still refuses after the lift on B"
    );
    let stored = redis.get(&key(PREFIX, &x)).await.expect("the tombstone is in redis");
    assert!(stored.contains("\"Unban\""), "{stored}");
    assert_eq!(a.cluster().unwrap().stats().rejected_bad_signature, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_keep_enforcing_while_redis_is_away_and_heal_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let up = backends::echo_backend().await;
    let keys = gateway::node_keys(dir.path(), 2);
    let a = gateway::start_in(dir.path(), &config(0, &keys, &redis.url(), up, "")).await;
    let b = gateway::start_in(dir.path(), &config(1, &keys, &redis.url(), up, "")).await;
    assert!(
        redis_connected(&a).await && redis_connected(&b).await,
        "not connected to redis"
    );
    let x: IpNetwork = "127.0.0.2/32".parse().unwrap();
    let y: IpNetwork = "127.0.0.3/32".parse().unwrap();
    a.bans().ban(x, Duration::from_secs(600), "x").unwrap();
    assert!(
        refused_within(&b, "127.0.0.2", Duration::from_secs(1)).await,
        "B never got X"
    );

    redis.kill();
    let down = net::within(Duration::from_secs(5), async || {
        [&a, &b]
            .iter()
            .all(|g| g.cluster().and_then(|c| c.status().redis).is_some_and(|r| !r.connected))
    })
    .await;
    assert!(down.is_some(), "the lost connection is not reported");
    for g in [&a, &b] {
        assert!(net::is_refused("127.0.0.2", g.addr("p")).await, "X no longer enforced");
    }
    // Raised while Redis is away: enforced locally at once, shared when Redis is back.
    a.bans().ban(y, Duration::from_secs(600), "y").unwrap();
    assert!(refused_within(&a, "127.0.0.3", Duration::from_secs(1)).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for g in [&a, &b] {
        assert!(net::is_refused("127.0.0.2", g.addr("p")).await, "X no longer enforced");
    }
    assert!(
        !net::is_refused("127.0.0.3", b.addr("p")).await,
        "Y reached B without Redis?"
    );

    // Back, empty (no persistence), on the same port.
    redis.restart().await;
    assert!(
        refused_within(&b, "127.0.0.3", Duration::from_secs(8)).await,
        "B never got Y after Redis returned"
    );
    let healed = net::within(Duration::from_secs(3), async || {
        redis.get(&key(PREFIX, &x)).await.is_some() && redis.get(&key(PREFIX, &y)).await.is_some()
    })
    .await;
    assert!(healed.is_some(), "redis did not get the held statements back");
    for g in [&a, &b] {
        assert!(net::is_refused("127.0.0.2", g.addr("p")).await);
        assert!(g.cluster().unwrap().status().redis.unwrap().connected);
    }
}

/// Writes `rec` into Redis as a rogue writer would and waits (1 s at most) for `counted`.
async fn write_and_await(redis: &RedisServer, rec: SignedRecord, counted: impl AsyncFnMut() -> bool) {
    redis
        .write(&Carried {
            rec,
            remaining_ms: 600_000,
        })
        .await;
    assert!(
        net::within(Duration::from_secs(1), counted).await.is_some(),
        "the rogue record was not counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_by_unlisted_or_tampered_signers_are_refused_and_counted() {
    let (redis, dir, a) = one_gateway_on_redis().await;
    let cluster = a.cluster().unwrap();

    // Signed by a key nobody lists.
    let stranger = NodeKey::generate();
    let s: IpNetwork = "127.0.0.4/32".parse().unwrap();
    let rec = SignedRecord::sign(&stranger, Op::Ban, s, "rogue".into(), now_ms(), 600_000, u64::MAX / 2);
    write_and_await(&redis, rec, async || cluster.stats().rejected_unlisted_origin >= 1).await;

    // Signed by a listed node (B), then altered.
    let b_key = NodeKey::load(&dir.path().join("node1.key")).unwrap();
    let t: IpNetwork = "127.0.0.5/32".parse().unwrap();
    let mut rec = SignedRecord::sign(&b_key, Op::Ban, t, "genuine".into(), now_ms(), 600_000, 1);
    rec.reason = "tampered".into();
    write_and_await(&redis, rec, async || cluster.stats().rejected_bad_signature >= 1).await;

    // Neither changed anything, and the resyncs that reread them do not count them again.
    let before = cluster.stats();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = cluster.stats();
    assert_eq!(
        after.rejected_unlisted_origin, before.rejected_unlisted_origin,
        "{after:?}"
    );
    assert_eq!(after.rejected_bad_signature, before.rejected_bad_signature, "{after:?}");
    assert_eq!(after.applied, 0, "{after:?}");
    assert_eq!(cluster.status().records, 0);
    assert!(a.bans().list(None).is_empty(), "{:?}", a.bans().list(None));
    assert!(!net::is_refused("127.0.0.4", a.addr("p")).await);
    assert!(!net::is_refused("127.0.0.5", a.addr("p")).await);
}

#[test]
fn redis_backend_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = gateway::node_keys(dir.path(), 2);
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let parse = |toml: &str| Config::parse(toml, &dir.path().join("gatehouse.toml"));
    let base = config(0, &keys, "redis://127.0.0.1:6379/0", up, "");

    // The Redis backend needs neither listen nor the peers' addresses.
    let ok = parse(&base).unwrap_or_else(|e| panic!("{e}"));
    let c = ok.cluster.unwrap();
    assert!(matches!(c.backend, gatehouse::cluster::Backend::Redis(_)));

    let no_url = base.replace("redis_url = \"redis://127.0.0.1:6379/0\"\n", "");
    let e = parse(&no_url).unwrap_err();
    assert_eq!(e.key, "cluster.redis_url", "{e}");
    assert!(e.to_string().contains("cluster.redis_url"), "{e}");

    let e = parse(&base.replace("backend = \"redis\"", "backend = \"etcd\"")).unwrap_err();
    assert_eq!(e.key, "cluster.backend", "{e}");
    assert!(e.line.is_some(), "{e}");

    let e = parse(&base.replace("redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6379/0")).unwrap_err();
    assert_eq!(e.key, "cluster.redis_url", "{e}");

    // A bad URL is refused without echoing its password.
    let e = parse(&base.replace("redis://127.0.0.1:6379/0", "redis://:hunter2@[::1/0")).unwrap_err();
    assert_eq!(e.key, "cluster.redis_url", "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    let with_password = parse(&base.replace("redis://127.0.0.1", "redis://:hunter2@127.0.0.1")).unwrap();
    assert!(!format!("{:?}", with_password.cluster).contains("hunter2"));

    // The ACME secret must be 32 bytes; the error names the key and its line, never the contents.
    std::fs::write(dir.path().join("short.secret"), "c0ffee").unwrap();
    let with_secret = |f: &str| base.replace("anti_entropy", &format!("redis_acme_key_file = \"{f}\"\nanti_entropy"));
    let e = parse(&with_secret("short.secret")).unwrap_err();
    assert_eq!(e.key, "cluster.redis_acme_key_file", "{e}");
    assert!(
        e.line.is_some() && e.to_string().contains("32 bytes") && !e.to_string().contains("c0ffee"),
        "{e}"
    );
    let e = parse(&with_secret("missing.secret")).unwrap_err();
    assert_eq!(e.key, "cluster.redis_acme_key_file", "{e}");
    std::fs::write(dir.path().join("good.secret"), [9u8; 32]).unwrap();
    let ok = parse(&with_secret("good.secret")).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !format!("{:?}", ok.cluster).contains("[9, 9"),
        "the secret is never shown"
    );

    // The links backend still needs both.
    let links = base.replace("backend = \"redis\"", "backend = \"links\"");
    let e = parse(&links).unwrap_err();
    assert_eq!(e.key, "cluster.peers[0].addr", "{e}");
    let e = parse(&links.replace("[[cluster.peers]]\n", "[[cluster.peers]]\naddr = \"127.0.0.1:9190\"\n")).unwrap_err();
    assert_eq!(e.key, "cluster.listen", "{e}");
}

/// Gateway `i` on Redis `url` with one Electrum front priced as in `cluster_cost`, sharing cost every
/// 100 ms.
fn electrum_config(i: usize, keys: &[String], url: &str, backend: SocketAddr) -> String {
    use crate::support::cost::{CLUSTER_HARD as HARD, CLUSTER_PING as PING};
    let peers = gateway::cluster_peers(i, &[], keys);
    format!(
        "{}[cost]\nsoft_limit = 2000\nhard_limit = {HARD}\nmax_sleep = \"20ms\"\ngroup_private = true\n\
         [cost.methods]\n\"server.ping\" = {PING}\n\n\
         [cluster]\nbackend = \"redis\"\nredis_url = \"{url}\"\nnode_key = \"node{i}.key\"\nanti_entropy = \"1s\"\n\
         {peers}\n[cluster.cost]\ninterval = \"100ms\"\nexpiry = \"1s\"\nthreshold = 10\n\n\
         [[front]]\nname = \"electrum\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\n\
         upstreams = [\"{backend}\"]\n",
        gateway::RELAXED
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_cost_is_shared_through_redis() {
    use crate::support::cost::{abuse, CLUSTER_HARD as HARD};
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = backends::stub_backend(&[]).await;
    let keys = gateway::node_keys(dir.path(), 2);
    let mut gateways = Vec::new();
    for i in 0..2 {
        let g = gateway::start_in(dir.path(), &electrum_config(i, &keys, &redis.url(), backend)).await;
        assert!(redis_connected(&g).await, "not connected to redis");
        gateways.push(g);
    }
    let fronts: Vec<SocketAddr> = gateways.iter().map(|g| g.addr("electrum")).collect();
    let alone = abuse("127.0.1.2", &fronts[..1], 2.0 * HARD).await;
    let alone_at = alone.cut_at.expect("one gateway alone never cut the client off");
    let spread = abuse("127.0.2.2", &fronts, 2.0 * HARD).await;
    eprintln!(
        "cut off through redis: alone at {alone_at:.1}, spread at {:?}",
        spread.cut_at
    );
    let spread_at = spread
        .cut_at
        .unwrap_or_else(|| panic!("never cut off across two gateways: {spread:?}"));
    // The upper bound leaves room for a report interval or two of lag on a loaded machine; without
    // sharing the client is never cut off below twice the budget.
    assert!(
        spread_at <= alone_at * 1.4 && spread_at >= alone_at * 0.9,
        "cut off at {spread_at:.0} over two gateways vs {alone_at:.0} on one"
    );
    let group: std::net::IpAddr = "127.0.2.0".parse().unwrap();
    assert!(gateways[0].ledger().remote_cost(group) > 0.0 || gateways[1].ledger().remote_cost(group) > 0.0);
    let st = gateways[0].cluster().unwrap().stats();
    assert!(st.cost_reports_sent > 0 && st.cost_reports_received > 0, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_reports_through_redis_must_be_signed_by_a_listed_node_and_new() {
    use gatehouse::cluster::cost::SignedCostReport;
    use gatehouse::cluster::redis::cost_channel;
    use gatehouse::state::cost::GroupCost;
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let backend = backends::stub_backend(&[]).await;
    let keys = gateway::node_keys(dir.path(), 2);
    let a = gateway::start_in(dir.path(), &electrum_config(0, &keys, &redis.url(), backend)).await;
    assert!(redis_connected(&a).await, "not connected to redis");
    let cluster = a.cluster().unwrap();
    let group: std::net::IpAddr = "127.0.3.0".parse().unwrap();
    let figures = |cost| vec![GroupCost { group, cost }];
    let publish = async |r: &SignedCostReport| {
        let mut c = redis.conn().await.unwrap();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(cost_channel(PREFIX))
            .arg(serde_json::to_string(r).unwrap())
            .query_async(&mut c)
            .await
            .unwrap();
    };
    let b_key = NodeKey::load(&dir.path().join("node1.key")).unwrap();
    let stranger = NodeKey::generate();

    // A stranger's report, a listed node's report altered, and garbage: refused, counted, no effect.
    publish(&SignedCostReport::sign(&stranger, 1, figures(5000.0))).await;
    let mut tampered = SignedCostReport::sign(&b_key, 1, figures(5.0));
    tampered.figures[0].cost = 5000.0;
    publish(&tampered).await;
    let mut c = redis.conn().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(cost_channel(PREFIX))
        .arg("{not a report")
        .query_async(&mut c)
        .await
        .unwrap();
    let counted = net::within(Duration::from_secs(2), async || {
        cluster.stats().cost_reports_rejected >= 3
    })
    .await;
    assert!(counted.is_some(), "{:?}", cluster.stats());
    assert_eq!(a.ledger().remote_cost(group), 0.0);

    // B's genuine report counts; an older one replayed afterwards changes nothing.
    publish(&SignedCostReport::sign(&b_key, 20, figures(700.0))).await;
    let taken = net::within(Duration::from_secs(2), async || a.ledger().remote_cost(group) == 700.0).await;
    assert!(taken.is_some(), "{:?}", cluster.stats());
    publish(&SignedCostReport::sign(&b_key, 10, figures(2900.0))).await;
    publish(&SignedCostReport::sign(&b_key, 21, figures(650.0))).await;
    let newer = net::within(Duration::from_secs(2), async || a.ledger().remote_cost(group) == 650.0).await;
    assert!(newer.is_some(), "remote cost {}", a.ledger().remote_cost(group));
    // A new session of the group starts with B's figure.
    let mut c = clients::Client::open("127.0.3.7", a.addr("electrum")).await;
    let r = c.call("server.ping", "[]", 50.0).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
    assert!(a.ledger().group_cost(group) > 650.0);
}

/// Something else wrote keys of other types under the ban prefix: the sync neither stalls nor loops on
/// them, and a ban for that prefix replaces the foreign key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_another_type_do_not_stop_the_sync() {
    let redis = RedisServer::start().await;
    let mut c = redis.conn().await.unwrap();
    let foreign = key(PREFIX, &"127.0.0.6/32".parse().unwrap());
    let _: i64 = redis::cmd("HSET")
        .arg(&foreign)
        .arg("field")
        .arg("value")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: i64 = redis::cmd("RPUSH")
        .arg(format!("{PREFIX}ban:not-a-prefix"))
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let up = backends::echo_backend().await;
    let keys = gateway::node_keys(dir.path(), 2);
    let a = gateway::start_in(dir.path(), &config(0, &keys, &redis.url(), up, "")).await;
    let b = gateway::start_in(dir.path(), &config(1, &keys, &redis.url(), up, "")).await;
    assert!(
        redis_connected(&a).await && redis_connected(&b).await,
        "not connected to redis"
    );
    a.bans()
        .ban("127.0.0.6/32".parse().unwrap(), Duration::from_secs(600), "over a hash")
        .unwrap();
    assert!(
        refused_within(&b, "127.0.0.6", Duration::from_secs(1)).await,
        "B still admits after 1 s"
    );
    let stored = redis.get(&foreign).await.expect("the ban replaced the foreign key");
    assert!(stored.contains("over a hash"), "{stored}");
    // Resyncs keep completing: both stay connected, and the last sync moves on.
    let first = b.cluster().unwrap().status().redis.unwrap().last_sync;
    let moved = net::within(Duration::from_secs(3), async || {
        let r = b.cluster().unwrap().status().redis.unwrap();
        r.connected && r.last_sync > first
    })
    .await;
    assert!(moved.is_some(), "{:?}", b.cluster().unwrap().status().redis);
}

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_with(&self, text: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(text))
            .count()
    }
}

/// Whoever can publish on the fleet's Redis channels can send garbage as fast as Redis relays it: each
/// message is refused and counted, but the log gets one line per reason per `log.refusal_interval`, as for
/// refused connections on the fronts.
#[test]
fn malformed_messages_on_the_redis_channels_do_not_flood_the_log() {
    use gatehouse::cluster::redis::cost_channel;
    const SENT: u64 = 500;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);
    // One thread runs the gateway and its Redis link, so every line they log reaches the subscriber above.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (redis, _dir, a) = one_gateway_on_redis().await;
        let cluster = a.cluster().unwrap();
        let mut c = redis.conn().await.unwrap();
        for i in 0..SENT {
            for ch in [channel(PREFIX), cost_channel(PREFIX)] {
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(ch)
                    .arg(format!("garbage {i}"))
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        }
        let counted = net::within(Duration::from_secs(10), async || {
            let s = cluster.stats();
            s.rejected_malformed >= SENT && s.cost_reports_rejected >= SENT
        })
        .await;
        assert!(counted.is_some(), "{:?}", cluster.stats());
    });
    for message in [
        "cluster: malformed message on the redis channel",
        "cluster: malformed cost report on the redis channel",
    ] {
        assert_eq!(captured.lines_with(message), 1, "`{message}` for {SENT} messages");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_nodes_bounds_hold_through_redis_and_a_writer_cannot_grow_the_rejected_set() {
    let (redis, dir, a) = one_gateway_on_redis().await;
    let cluster = a.cluster().unwrap();

    // Validly signed by the listed node B: a ban of everyone, and one for ten years.
    let b_key = NodeKey::load(&dir.path().join("node1.key")).unwrap();
    let everyone: IpNetwork = "0.0.0.0/0".parse().unwrap();
    let rec = SignedRecord::sign(&b_key, Op::Ban, everyone, "forged".into(), now_ms(), 600_000, 1);
    write_and_await(&redis, rec, async || cluster.stats().rejected_too_wide >= 1).await;
    let long: IpNetwork = "127.0.0.6/32".parse().unwrap();
    let ten_years = 10 * 365 * 86_400_000;
    let rec = SignedRecord::sign(&b_key, Op::Ban, long, "forged".into(), now_ms(), ten_years, 2);
    write_and_await(&redis, rec, async || cluster.stats().rejected_too_long >= 1).await;
    assert!(a.bans().list(None).is_empty(), "{:?}", a.bans().list(None));
    assert!(!net::is_refused("127.0.0.2", a.addr("p")).await);
    assert!(!net::is_refused("127.0.0.6", a.addr("p")).await);

    // A writer fills Redis with junk under well-formed keys: every value is refused, but only so many
    // are remembered, whatever the writer adds.
    let junk = MAX_REJECTED + 500;
    let mut conn = redis.conn().await.unwrap();
    let mut p = ::redis::pipe();
    for i in 0..junk {
        p.cmd("SET")
            .arg(format!("{PREFIX}ban:10.{}.{}.0/24", i / 256, i % 256))
            .arg(format!("junk {i}"))
            .ignore();
    }
    let () = p.query_async(&mut conn).await.unwrap();
    let remembered = net::within(Duration::from_secs(10), async || {
        let s = cluster.status();
        s.stats.rejected_malformed >= junk as u64 && s.redis.unwrap().rejected_remembered > 0
    })
    .await;
    assert!(remembered.is_some(), "{:?}", cluster.status());
    let st = cluster.status().redis.unwrap();
    assert!(
        st.rejected_remembered <= MAX_REJECTED,
        "{} remembered",
        st.rejected_remembered
    );
}

/// Gateway `i` of a two-node fleet on Redis `url` with the ACME certificate `main` for `domain` served by
/// an Electrum TLS front on `front`, sharing ACME through Redis with the secret in `acme.secret`.
fn acme_config(
    i: usize,
    keys: &[String],
    url: &str,
    acme_keys: &str,
    domain: &str,
    front: SocketAddr,
    up: SocketAddr,
) -> String {
    let peers = gateway::cluster_peers(i, &[], keys);
    format!(
        "{}[admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n\
         [cluster]\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_acme_key_file = \"acme.secret\"\n\
         node_key = \"node{i}.key\"\n{peers}\n\
         [acme]\n{acme_keys}retry_min = \"1s\"\nretry_max = \"2s\"\n\
         [[acme.certificate]]\nname = \"main\"\ndomains = [\"{domain}\"]\n\n\
         [[front]]\nname = \"wallets\"\nkind = \"electrum\"\nlisten = [\"{front}\"]\ntransport = \"tls\"\n\
         upstreams = [\"{up}\"]\n[front.tls]\nacme = \"main\"\n",
        gateway::RELAXED
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_redis_end_with_one_order_and_the_same_certificate_sealed_in_transit() {
    use crate::support::pebble::{connect_trusting, free_port_on, presented, Pebble};
    use futures_util::StreamExt;
    const DOMAIN: &str = "electrum.example.com";
    let redis = RedisServer::start().await;
    // Everything on the ACME channel, as anyone with access to Redis sees it.
    let mut pubsub = redis::Client::open(redis.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.subscribe(format!("{PREFIX}acme")).await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let recorder = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(m) = messages.next().await {
                seen.lock().unwrap().push(m.get_payload_bytes().to_vec());
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    std::fs::write(dir.path().join("acme.secret"), format!("{}\n", "5a".repeat(32))).unwrap();
    let keys = gateway::node_keys(dir.path(), 2);
    let pk = |i: usize| gatehouse::cluster::keys::PublicKey::parse(&keys[i]).unwrap();
    // The lowest key orders; the CA's validation goes to the other gateway, which can answer it only with
    // the challenge the orderer shared through Redis.
    let orderer = if pk(0) < pk(1) { 0 } else { 1 };
    let follower = 1 - orderer;
    let ips = [net::ip("127.0.0.78"), net::ip("127.0.0.79")];
    let port = free_port_on(ips[0]);
    let fronts = ips.map(|a| SocketAddr::new(a, port));
    let pebble = Pebble::start(ips[follower], free_port_on(ips[follower]), port, None);
    let up = backends::stub_backend(&[]).await;
    let states = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut gateways = Vec::new();
    for i in 0..2 {
        let toml = acme_config(
            i,
            &keys,
            &redis.url(),
            &pebble.acme_keys(states[i].path()),
            DOMAIN,
            fronts[i],
            up,
        );
        gateways.push(gateway::start_in(dir.path(), &toml).await);
    }
    let root = pebble.root().await;
    for (i, front) in fronts.iter().enumerate() {
        let ok = net::within(Duration::from_secs(60), async || {
            connect_trusting(&root, *front, DOMAIN).await.is_ok()
        })
        .await;
        assert!(ok.is_some(), "gateway {i} has no Pebble certificate");
    }
    // One order: both serve the very same certificate, and the follower names who ordered it.
    assert_eq!(
        presented(fronts[0], DOMAIN).await[0],
        presented(fronts[1], DOMAIN).await[0]
    );
    let admin = |g: &Running| match g.admin_addr() {
        Some(gatehouse::admin::AdminListen::Tcp(a)) => *a,
        other => panic!("{other:?}"),
    };
    let auth = format!("Bearer {TOKEN}");
    let (_, _, body) = clients::http_exchange(admin(&gateways[follower]), "GET", "/v1/certs", Some(&auth), None).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["certificates"][0]["ordered_by"], keys[orderer].as_str(), "{v}");
    // The shares went through Redis, and neither the key, the certificate nor the name is readable there.
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    recorder.abort();
    assert!(seen.len() >= 2, "only {} messages on the acme channel", seen.len());
    for m in &seen {
        let text = String::from_utf8_lossy(m);
        assert!(
            !text.contains("PRIVATE KEY")
                && !text.contains("CERTIFICATE")
                && !text.contains(DOMAIN)
                && !text.contains("main")
        );
    }
    for g in gateways {
        g.shutdown().await;
    }
}
