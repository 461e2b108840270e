//! The backends' in-flight budgets, through the real gateway in front of a backend of modelled capacity
//! (one request served at a time, a fixed service time per method, the order recorded): an honest
//! wallet's request overtakes an abusive group's queued ones, a light request passes while the heavy
//! budget is full, a request waiting past request_timeout gets -102 and never reaches the backend, the
//! queue cap answers -102 at once, a full queue answers the costly group's newest request busy to let a
//! cheaper wallet in, "off" forwards as before, and the learned window follows the backend's latency on
//! /metrics.
//!
//! Abusers and the honest wallet are in different /24s (127.0.1.x, 127.0.2.x) with `group_private = true`,
//! so the ledger charges them as two groups.

use crate::support::backends::{self, Modelled};
use crate::support::clients::{self, Client};
use crate::support::gateway::{self, RELAXED};
use crate::support::net;
use gatehouse::admin::AdminListen;
use gatehouse::upstream::budget::Budget;
use gatehouse::Running;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const HISTORY: &str = "blockchain.scripthash.get_history";
const BALANCE: &str = "blockchain.scripthash.get_balance";
/// What `[cost.methods]` of [`config`] charges for a get_history: ten of them make a group costly.
const HISTORY_COST: f64 = 50.0;

/// One Electrum front `name` in front of `backend`, throttle limits out of reach, get_history priced at
/// [`HISTORY_COST`]; `upstream` is the `[front.upstream]` body, `more` further top-level tables.
fn config(name: &str, backend: SocketAddr, upstream: &str, cost_extra: &str, more: &str) -> String {
    format!(
        "{RELAXED}[cost]\nsoft_limit = 100000\nhard_limit = 1000000\ninitial_concurrency = 10\ngroup_private = true\n\
         {cost_extra}\n[cost.methods]\n\"{HISTORY}\" = {HISTORY_COST}\n\n{more}\n\
         [[front]]\nname = \"{name}\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\n\
         upstreams = [\"{backend}\"]\n[front.upstream]\n{upstream}\n"
    )
}

fn budget(running: &Running, front: &str, backend: SocketAddr) -> Arc<Budget> {
    running
        .front(front)
        .unwrap()
        .handles
        .electrum
        .budgets
        .get(backend)
        .expect("the backend has a budget")
}

/// History reads take 20 ms, everything else 1 ms.
fn history_20ms(method: &str) -> Duration {
    match method {
        HISTORY => Duration::from_millis(20),
        _ => Duration::from_millis(1),
    }
}

/// History reads take 300 ms, everything else no time: a queue forms behind the first read.
fn slow_history(method: &str) -> Duration {
    match method {
        HISTORY => Duration::from_millis(300),
        _ => Duration::ZERO,
    }
}

/// Four abusive sessions of one /24, each with ten history reads pipelined; returns them (keep them open).
async fn flood(to: SocketAddr) -> Vec<Client> {
    let mut abusers = Vec::new();
    for i in 0..4 {
        abusers.push(Client::open(&format!("127.0.1.{}", i + 2), to).await);
    }
    for (i, c) in abusers.iter_mut().enumerate() {
        for j in 0..10 {
            c.send(HISTORY, &format!("[\"abuse-{i}-{j}\"]"), HISTORY_COST).await;
        }
    }
    abusers
}

/// A gateway `name` in front of `stub` (`upstream` its `[front.upstream]` body) with a soft limit of 200, an
/// honest wallet, and the abusers' flood, their /24 taken over the soft limit first (five history reads of
/// another session of it), so every read of theirs is throttled. Keep what it returns.
async fn throttled_flood(name: &str, stub: &Modelled, upstream: &str) -> (Running, Client, Vec<Client>) {
    let toml = config(name, stub.addr, upstream, "", "").replace("soft_limit = 100000", "soft_limit = 200");
    let running = gateway::start(&toml).await;
    let to = running.addr(name);
    let honest = Client::open("127.0.2.2", to).await;
    let mut first = Client::open("127.0.1.9", to).await;
    for i in 0..5 {
        let r = first.call(HISTORY, &format!("[\"first-{i}\"]"), HISTORY_COST).await;
        assert!(r.v.get("error").is_none(), "{}", r.v);
    }
    let abusers = flood(to).await;
    (running, honest, abusers)
}

/// An honest wallet's history read: how many of the abusers' reads the backend served between the
/// moment it was sent and the moment it was served.
async fn honest_history(stub: &Modelled, honest: &mut Client) -> (usize, usize) {
    let sent_at = stub.served().len();
    let r = honest.call(HISTORY, "[\"honest\"]", HISTORY_COST).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
    let served = stub.served();
    let at = served
        .iter()
        .position(|s| s.params == json!(["honest"]))
        .expect("the honest request reached the backend");
    let abusers_between = served[sent_at..at].iter().filter(|s| s.method == HISTORY).count();
    let abusers_after = 40 - served[..at].iter().filter(|s| s.method == HISTORY).count();
    (abusers_between, abusers_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_request_goes_before_an_abusive_groups_queue() {
    let stub = backends::modelled_backend(history_20ms).await;
    let toml = config("bq_fair", stub.addr, "max_in_flight = 1\nheavy_in_flight = 1\n", "", "");
    let running = gateway::start(&toml).await;
    let to = running.addr("bq_fair");
    let b = budget(&running, "bq_fair", stub.addr);
    let mut honest = Client::open("127.0.2.2", to).await;
    let _abusers = flood(to).await;
    // The abusers' reads wait in the gateway, one at a time reaching the backend.
    assert!(
        net::within(Duration::from_secs(10), async || b.load().2 >= 30)
            .await
            .is_some(),
        "abusers' requests did not queue: {:?}",
        b.load()
    );
    assert!(stub.pending() <= 1, "the backend holds {} requests", stub.pending());
    let (between, after) = honest_history(&stub, &mut honest).await;
    // Its group is cheap: it goes ahead of the abusers' queue, after at most the read in service and the
    // one dispatched as it arrived. Measured in the backend's own order, not in wall-clock time.
    assert!(
        between <= 2,
        "{between} abusive reads were served before the honest one"
    );
    assert!(after >= 25, "only {after} abusive reads were still waiting");
}

/// Room for eight heavy reads at the backend, but the abusive group is throttled (over a low soft limit):
/// its reads reach the backend one at a time, so an honest wallet's read waits for at most the one in
/// service. With the throttled budget "off", the same flood fills the eight places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_group_holds_one_heavy_place_at_the_backend() {
    for (name, key, most) in [
        ("bq_throttled", "", 1),
        ("bq_throttled_off", "throttled_heavy_in_flight = \"off\"\n", 8),
    ] {
        let stub = backends::modelled_backend(history_20ms).await;
        // Versions forwarded at connect: the backend's pending count is then the flood's reads alone, not
        // also the versions that open connections dialled with a read.
        let upstream =
            format!("max_in_flight = 8\nheavy_in_flight = 8\n{key}[front.electrum]\nversion_answer = \"backend\"\n");
        let (running, mut honest, _abusers) = throttled_flood(name, &stub, &upstream).await;
        let b = budget(&running, name, stub.addr);
        let mut held = 0;
        assert!(
            net::within(Duration::from_secs(10), async || {
                held = held.max(stub.pending());
                b.load().2 >= 20 || held >= 8
            })
            .await
            .is_some(),
            "{name}: the abusers' reads neither queued nor filled the backend: {:?}",
            b.load()
        );
        held = held.max(stub.pending());
        assert!(held <= most, "{name}: the backend held {held} abusive reads at once");
        let (between, _) = honest_history(&stub, &mut honest).await;
        if most == 1 {
            assert!(
                between <= 2,
                "{name}: {between} abusive reads were served before the honest one"
            );
        } else {
            assert!(held >= 6, "{name}: the backend held only {held} abusive reads at once");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_forwards_everything_at_once_as_before() {
    let stub = backends::modelled_backend(history_20ms).await;
    let toml = config("bq_unbudgeted", stub.addr, "max_in_flight = \"off\"\n", "", "");
    let running = gateway::start(&toml).await;
    let to = running.addr("bq_unbudgeted");
    assert!(running
        .front("bq_unbudgeted")
        .unwrap()
        .handles
        .electrum
        .budgets
        .get(stub.addr)
        .is_none());
    let mut honest = Client::open("127.0.2.2", to).await;
    let _abusers = flood(to).await;
    // Every read the throttle lets go reaches the backend at once and queues there…
    assert!(
        net::within(Duration::from_secs(10), async || stub.pending() >= 30)
            .await
            .is_some(),
        "the backend holds only {}",
        stub.pending()
    );
    // …so the honest wallet's read waits behind all of them, in the backend's own queue.
    let (between, _) = honest_history(&stub, &mut honest).await;
    assert!(between >= 25, "only {between} abusive reads were served first");
    let text = gatehouse::telemetry::metrics::render(None);
    assert!(
        !text.contains("gatehouse_upstream_window{front=\"bq_unbudgeted\""),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_request_passes_while_the_heavy_budget_is_full() {
    fn slow_history(method: &str) -> Duration {
        match method {
            HISTORY => Duration::from_millis(300),
            _ => Duration::from_millis(1),
        }
    }
    let stub = backends::modelled_backend(slow_history).await;
    let toml = config(
        "bq_heavy",
        stub.addr,
        "max_in_flight = 4\nheavy_in_flight = 1\n",
        "",
        "",
    );
    let running = gateway::start(&toml).await;
    let to = running.addr("bq_heavy");
    let b = budget(&running, "bq_heavy", stub.addr);
    let mut light = Client::open("127.0.2.2", to).await;
    let mut heavy = Client::open("127.0.1.2", to).await;
    for j in 0..3 {
        heavy.send(HISTORY, &format!("[\"h{j}\"]"), HISTORY_COST).await;
    }
    assert!(
        net::within(Duration::from_secs(5), async || b.load() == (1, 1, 2))
            .await
            .is_some(),
        "{:?}",
        b.load()
    );
    let r = light.call(BALANCE, "[\"light\"]", 1.0).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
    let order: Vec<String> = stub
        .served()
        .into_iter()
        .filter(|s| s.method != "server.version")
        .map(|s| s.params[0].as_str().unwrap().to_string())
        .collect();
    // Answered while the first heavy read was in service, before the other heavy ones.
    assert_eq!(order, ["h0", "light"], "served so far");
    for _ in 0..3 {
        let r = heavy.recv().await.expect("heavy reply");
        assert!(r.v.get("error").is_none(), "{}", r.v);
    }
    let order: Vec<String> = stub
        .served()
        .into_iter()
        .filter(|s| s.method != "server.version")
        .map(|s| s.params[0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, ["h0", "light", "h1", "h2"]);
    assert_eq!(b.load(), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_past_request_timeout_gets_102_and_never_reaches_the_backend() {
    fn slow_history(method: &str) -> Duration {
        match method {
            HISTORY => Duration::from_millis(2500),
            _ => Duration::ZERO,
        }
    }
    let stub = backends::modelled_backend(slow_history).await;
    let toml = config(
        "bq_late",
        stub.addr,
        "max_in_flight = 1\n",
        "request_timeout = \"1s\"\n",
        "",
    );
    let running = gateway::start(&toml).await;
    let to = running.addr("bq_late");
    let b = budget(&running, "bq_late", stub.addr);
    let mut slow = Client::open("127.0.1.2", to).await;
    let mut waiter = Client::open("127.0.2.2", to).await;
    slow.send(HISTORY, "[\"slow\"]", HISTORY_COST).await;
    assert!(net::within(Duration::from_secs(5), async || b.load().0 == 1)
        .await
        .is_some());
    let id = waiter.send(BALANCE, "[\"waits\"]", 1.0).await;
    assert!(net::within(Duration::from_secs(5), async || b.load().2 == 1)
        .await
        .is_some());
    let r = waiter.recv().await.expect("a reply");
    assert_eq!(r.id(), id);
    assert_eq!(r.error_code(), Some(-102), "{}", r.v);
    assert_eq!(r.v["error"]["message"], "server busy - request timed out");
    // It left the queue; the slow read, answered -102 too, still holds its slot: the backend works on it.
    assert_eq!(b.load().2, 0);
    assert_eq!(slow.recv().await.unwrap().error_code(), Some(-102));
    assert_eq!(b.load().0, 1);
    assert!(net::within(Duration::from_secs(10), async || b.load().0 == 0)
        .await
        .is_some());
    let served: Vec<String> = stub.served().into_iter().map(|s| s.method).collect();
    assert!(!served.iter().any(|m| m == BALANCE), "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_cap_answers_102_at_once_and_counts() {
    let stub = backends::modelled_backend(slow_history).await;
    let toml = config("bq_capped", stub.addr, "max_in_flight = 1\nmax_queued = 2\n", "", "");
    let running = gateway::start(&toml).await;
    let to = running.addr("bq_capped");
    let mut c = Client::open("127.0.1.2", to).await;
    let mut ids = Vec::new();
    for j in 0..4 {
        ids.push(c.send(HISTORY, &format!("[\"q{j}\"]"), HISTORY_COST).await);
    }
    // One in flight, two queued, the fourth refused before anything is served.
    let first = c.recv().await.unwrap();
    assert_eq!(first.id(), ids[3], "{}", first.v);
    assert_eq!(first.error_code(), Some(-102));
    assert_eq!(first.v["error"]["message"], "server busy - request queue full");
    assert!(stub.served().iter().all(|s| s.method != HISTORY));
    for want in &ids[..3] {
        let r = c.recv().await.unwrap();
        assert_eq!(r.id(), *want);
        assert!(r.v.get("error").is_none(), "{}", r.v);
    }
    let text = gatehouse::telemetry::metrics::render(None);
    assert_eq!(
        clients::sample(
            &text,
            "gatehouse_upstream_queue_refused_total{front=\"bq_capped\",upstream=\"0\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        clients::sample(
            &text,
            "gatehouse_upstream_dispatched_after_wait_total{front=\"bq_capped\",upstream=\"0\"}"
        ),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_the_costly_group_busy_and_lets_the_wallet_in() {
    let stub = backends::modelled_backend(slow_history).await;
    let toml = config(
        "bq_push",
        stub.addr,
        "max_in_flight = 1
max_queued = 2
",
        "",
        "",
    );
    let running = gateway::start(&toml).await;
    let to = running.addr("bq_push");
    // The abuser's group has a slot and fills the queue: three history reads, costly ones.
    let mut abuser = Client::open("127.0.1.2", to).await;
    let mut ids = Vec::new();
    for j in 0..3 {
        ids.push(abuser.send(HISTORY, &format!("[\"a{j}\"]"), HISTORY_COST).await);
    }
    let b = budget(&running, "bq_push", stub.addr);
    assert!(
        net::within(Duration::from_secs(10), async || b.load() == (1, 1, 2))
            .await
            .is_some(),
        "{:?}",
        b.load()
    );
    // A wallet of another /24, which has cost nothing yet, is not refused: the abuser's newest read is
    // answered busy instead of the wallet's server.version, which is served next.
    let mut honest = Client::open("127.0.2.2", to).await;
    let wallet = honest.send(BALANCE, "[\"w\"]", 1.0).await;
    let busy = abuser.recv().await.unwrap();
    assert_eq!(busy.id(), ids[2], "{}", busy.v);
    assert_eq!(busy.error_code(), Some(-102));
    let r = honest.recv().await.unwrap();
    assert_eq!(r.id(), wallet);
    assert!(r.v.get("error").is_none(), "{}", r.v);
    for want in &ids[..2] {
        let r = abuser.recv().await.unwrap();
        assert_eq!(r.id(), *want);
        assert!(r.v.get("error").is_none(), "{}", r.v);
    }
    let text = gatehouse::telemetry::metrics::render(None);
    let series = |name: &str| clients::sample(&text, &format!("{name}{{front=\"bq_push\",upstream=\"0\"}}"));
    assert_eq!(series("gatehouse_upstream_queue_pushed_out_total"), Some(1.0), "{text}");
    assert_eq!(series("gatehouse_upstream_queue_refused_total"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_window_follows_the_backends_latency_on_metrics() {
    fn balance_5ms(method: &str) -> Duration {
        match method {
            BALANCE => Duration::from_millis(5),
            _ => Duration::ZERO,
        }
    }
    const TOKEN: &str = "budget-metrics-token-0123456789";
    let stub = backends::modelled_backend(balance_5ms).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let admin = "[admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n";
    // No max_in_flight: the default is "auto".
    let toml = config("bq_learned", stub.addr, "", "", admin);
    let running = gateway::start_in(dir.path(), &toml).await;
    let admin = match running.admin_addr() {
        Some(AdminListen::Tcp(a)) => *a,
        other => panic!("admin API not on TCP: {other:?}"),
    };
    let window = async || {
        let text = clients::admin_get(admin, TOKEN, "/metrics").await;
        clients::sample(&text, "gatehouse_upstream_window{front=\"bq_learned\",upstream=\"0\"}").unwrap_or(-1.0)
    };
    assert_eq!(
        window().await,
        f64::from(gatehouse::upstream::window::DEFAULT_INITIAL_WINDOW)
    );
    let to = running.addr("bq_learned");
    // Eight wallets keep ten balance lookups each in flight: 80 at once for a backend serving one at a time.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..8 {
        let stop = stop.clone();
        let mut c = Client::open(&format!("127.0.{}.2", i + 1), to).await;
        load.push(tokio::spawn(async move {
            for _ in 0..10 {
                c.send(BALANCE, "[\"w\"]", 1.0).await;
            }
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = c.recv().await.expect("reply");
                assert!(r.v.get("error").is_none(), "{}", r.v);
                c.send(BALANCE, "[\"w\"]", 1.0).await;
            }
        }));
    }
    // Latency rises with the queue inside the backend: the window shrinks to its floor.
    let mut low = f64::MAX;
    let shrunk = net::within(Duration::from_secs(30), async || {
        low = low.min(window().await);
        low <= 8.0
    })
    .await;
    assert!(shrunk.is_some(), "window still {low}");
    // The backend becomes fast: the window grows back.
    stub.scale.store(0, std::sync::atomic::Ordering::SeqCst);
    let grown = net::within(Duration::from_secs(30), async || window().await >= 2.0 * low).await;
    assert!(grown.is_some(), "window {} after falling to {low}", window().await);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in load {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_budget_and_waiting_requests_keep_their_place() {
    let stub = backends::modelled_backend(slow_history).await;
    let dir = tempfile::tempdir().unwrap();
    let narrow = config(
        "bq_reload",
        stub.addr,
        "max_in_flight = 1\nheavy_in_flight = 1\n",
        "",
        "",
    );
    let mut running = gateway::start_in(dir.path(), &narrow).await;
    let to = running.addr("bq_reload");
    let b = budget(&running, "bq_reload", stub.addr);
    let mut c = Client::open("127.0.1.2", to).await;
    for j in 0..4 {
        c.send(HISTORY, &format!("[\"r{j}\"]"), HISTORY_COST).await;
    }
    assert!(net::within(Duration::from_secs(5), async || b.load() == (1, 1, 3))
        .await
        .is_some());
    // A wider budget: one more goes at once, the others stay queued in their order.
    let wide = config(
        "bq_reload",
        stub.addr,
        "max_in_flight = 2\nheavy_in_flight = 2\n",
        "",
        "",
    );
    let cfg = gatehouse::config::Config::parse(&wide, &dir.path().join("gatehouse.toml")).unwrap();
    running.reload(cfg).await.unwrap();
    assert_eq!(b.load(), (2, 2, 2));
    assert!(Arc::ptr_eq(&b, &budget(&running, "bq_reload", stub.addr)));
    for j in 0..4 {
        let r = c.recv().await.unwrap();
        assert!(r.v.get("error").is_none(), "{j}: {}", r.v);
    }
    let order: Vec<String> = stub
        .served()
        .into_iter()
        .filter(|s| s.method == HISTORY)
        .map(|s| s.params[0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, ["r0", "r1", "r2", "r3"]);
    let series = "gatehouse_upstream_window{front=\"bq_reload\",upstream=\"0\"} 2";
    let text = gatehouse::telemetry::metrics::render(None);
    assert!(text.contains(series), "{text}");
    // "off" drops the budget: new sessions go straight to the backend, and its series leave /metrics
    // (the session still open holds the old budget; what it does there is not the backend's budget).
    let off = config("bq_reload", stub.addr, "max_in_flight = \"off\"\n", "", "");
    let cfg = gatehouse::config::Config::parse(&off, &dir.path().join("gatehouse.toml")).unwrap();
    running.reload(cfg).await.unwrap();
    let r = c.call(HISTORY, "[\"after\"]", HISTORY_COST).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
    let text = gatehouse::telemetry::metrics::render(None);
    let left: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("front=\"bq_reload\"") && l.starts_with("gatehouse_upstream_") && !l.contains("connect"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(running
        .front("bq_reload")
        .unwrap()
        .handles
        .electrum
        .budgets
        .get(stub.addr)
        .is_none());
}

/// A throttled group's reads take at most their share of the backend's time: with a 10 % share and 20 ms
/// reads, each is followed by a rest of at least 180 ms, measured where the backend served them, and an
/// honest wallet's read meanwhile waits for at most the one in service. With the share "off" the same
/// reads follow one another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_group_gets_its_share_of_the_backends_time_and_no_more() {
    for (name, share) in [("bq_share", "\"10%\""), ("bq_share_off", "\"off\"")] {
        let stub = backends::modelled_backend(history_20ms).await;
        let upstream = format!("max_in_flight = 8\nheavy_in_flight = 8\nthrottled_heavy_share = {share}\n");
        let (_running, mut honest, _abusers) = throttled_flood(name, &stub, &upstream).await;
        let abusive = |stub: &Modelled| -> Vec<tokio::time::Instant> {
            stub.served()
                .iter()
                .filter(|s| s.params[0].as_str().is_some_and(|p| p.starts_with("abuse-")))
                .map(|s| s.done)
                .collect()
        };
        assert!(
            net::within(Duration::from_secs(20), async || abusive(&stub).len() >= 4)
                .await
                .is_some(),
            "{name}: the abusers' reads were not served"
        );
        let (between, _) = honest_history(&stub, &mut honest).await;
        assert!(
            between <= 1,
            "{name}: {between} abusive reads were served before the honest one"
        );
        let done = abusive(&stub);
        let gaps: Vec<Duration> = done.windows(2).map(|w| w[1] - w[0]).collect();
        let shortest = gaps.iter().min().copied().unwrap();
        if name == "bq_share" {
            assert!(
                shortest >= Duration::from_millis(180),
                "{name}: throttled reads {shortest:?} apart: {gaps:?}"
            );
        } else {
            assert!(
                shortest < Duration::from_millis(100),
                "{name}: throttled reads never followed one another: {gaps:?}"
            );
        }
    }
}
