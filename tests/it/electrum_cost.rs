//! Electrum cost accounting end to end: throttling (per-request sleep and fewer concurrent
//! slots) from the soft limit, -101 plus close plus ban at the hard limit, per-/24 and per-/48 groups that
//! share a budget and keep a retained cost after a disconnect, decay, the capped `block.headers` charge and
//! -102 for requests the backend does not answer in time.
//!
//! Every test runs on paused tokio time: the gateway, the stub backend and the clients share one
//! current-thread runtime, and the cost ledger's clock is tokio's, so sleeps, decay and timeouts are exact and
//! cost no real time. The stub backend answers every request at once with `"result":null`, so a request's
//! cost is exactly its method cost plus its bytes (request line and reply line, newline included) / 5000.

use crate::support::backends::{self, stub_backend};
use crate::support::clients::Client;
use crate::support::cost::{bytes, config, start_crossing, CROSSING_COST, SCRIPTHASH};
use crate::support::gateway;
use crate::support::net::{self, ip};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

const SOFT: f64 = 1000.0;
const HARD: f64 = 10000.0;
const MAX_SLEEP: f64 = 2.5;
const PING_COST: f64 = 0.1;

/// The throttle position for an effective cost.
fn frac(effective: f64) -> f64 {
    ((effective - SOFT) / (HARD - SOFT)).max(0.0)
}

/// Waits (a millisecond of tokio time at a time) until `cond` holds; panics after `limit` tries.
async fn wait_for(mut cond: impl FnMut() -> bool, limit: usize, what: &str) {
    for _ in 0..limit {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Sizes of the waves in which replies arrived: replies less than `gap` apart belong to one wave.
fn waves(at: &[Instant], gap: Duration) -> (Vec<usize>, Vec<Instant>) {
    let mut sorted = at.to_vec();
    sorted.sort();
    let mut sizes = Vec::new();
    let mut starts = Vec::new();
    for (i, t) in sorted.iter().enumerate() {
        if i == 0 || *t - sorted[i - 1] >= gap {
            sizes.push(0);
            starts.push(*t);
        }
        *sizes.last_mut().unwrap() += 1;
    }
    (sizes, starts)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Items 1 and 2: a client paying ~20 units a request runs free until the soft limit (~49 requests),
/// is then slowed (sleep = frac × 2.5 s, fewer slots), gets -101 and a close at the hard limit and is
/// banned; clients of another /24 and on ::1 see no delay throughout.
#[tokio::test(start_paused = true)]
async fn throttle_then_hard_limit_then_ban() {
    let backend = stub_backend(&[]).await;
    let running = gateway::start(&config(
        backend,
        "",
        "\"blockchain.scripthash.get_balance\" = 20",
        "\"127.0.0.1:0\", \"[::1]:0\"",
        "",
    ))
    .await;
    let v4 = running.addrs("electrum")[0];
    let v6 = running.addrs("electrum")[1];
    assert!(v6.is_ipv6());

    let mut a = Client::open("127.0.0.2", v4).await;
    let mut other = Client::open("127.0.1.2", v4).await;
    let mut six = Client::open("::1", v6).await;
    let initial = a.charged;

    // Others never wait, however throttled A is.
    async fn others_not_delayed(other: &mut Client, six: &mut Client, when: &str) {
        let (_, lat) = other.balance(20.0).await;
        assert_eq!(lat, Duration::ZERO, "127.0.1.2 delayed {when}");
        let (_, lat) = six.balance(20.0).await;
        assert_eq!(lat, Duration::ZERO, "::1 delayed {when}");
    }

    let mut n = 0u32; // A's requests so far (after server.version)
    let mut first_slept = None;
    let mut burst_checked = false;
    let hard_at = loop {
        // The request at which the model says the hard limit is reached: it pays its bytes first.
        let line_len = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"blockchain.scripthash.get_balance","params":[{SCRIPTHASH}]}}"#,
            a.next_id
        )
        .len();
        let predicted_over = a.modelled() + bytes(line_len + 1) >= HARD;

        // At about frac 0.45, ten pipelined requests: they must not all run at once.
        if !burst_checked && a.modelled() > 5000.0 {
            burst_checked = true;
            let t0 = Instant::now();
            let mut expected_first_wave = 0;
            let mut waiting = false;
            for _ in 0..10 {
                a.send("blockchain.scripthash.get_balance", &format!("[{SCRIPTHASH}]"), 20.0)
                    .await;
                let conc = ((1.0 - frac(a.modelled()).min(1.0)) * 10.0).ceil() as usize;
                if !waiting && expected_first_wave < conc {
                    expected_first_wave += 1;
                } else {
                    waiting = true;
                }
            }
            let mut at = Vec::new();
            for _ in 0..10 {
                at.push(a.recv().await.expect("reply").at);
            }
            n += 10;
            let (sizes, starts) = waves(&at, Duration::from_millis(500));
            assert!(
                sizes.len() >= 2,
                "10 pipelined requests at frac ~0.45 ran at once: {sizes:?}"
            );
            assert!(sizes[0] < 10, "{sizes:?}");
            assert_eq!(sizes[0], expected_first_wave, "first wave: {sizes:?}");
            let first = secs(starts[0] - t0);
            assert!((first - 0.45 * MAX_SLEEP).abs() < 0.1, "first wave after {first} s");
            continue;
        }

        let send_at = Instant::now();
        let id = a
            .send("blockchain.scripthash.get_balance", &format!("[{SCRIPTHASH}]"), 20.0)
            .await;
        let expected_sleep = frac(a.modelled()).min(1.0) * MAX_SLEEP;
        if n % 100 == 50 {
            // While A's request sleeps in its slot.
            others_not_delayed(&mut other, &mut six, &format!("at A's request {}", n + 1)).await;
        }
        let r = a.recv().await.expect("A's connection closed without -101");
        n += 1;
        assert_eq!(r.id(), id);
        if let Some(code) = r.error_code() {
            assert_eq!(code, -101, "{}", r.v);
            assert!(predicted_over, "-101 at request {n}, model cost {}", a.modelled());
            break n;
        }
        assert!(!predicted_over, "request {n} served at model cost {}", a.modelled());
        let lat = r.at - send_at;
        if n <= 48 {
            assert_eq!(lat, Duration::ZERO, "request {n} delayed by {lat:?}");
        }
        if lat > Duration::ZERO && first_slept.is_none() {
            first_slept = Some(n);
        }
        assert!(
            (secs(lat) - expected_sleep).abs() < 0.01,
            "request {n}: latency {lat:?}, expected frac × 2.5 s = {expected_sleep} s"
        );
    };
    // Connection cost 5 + version 0.5 + 49 × 20.03: the 50th request crosses 1000.
    let first_slept = first_slept.expect("never throttled");
    assert!((48..=52).contains(&first_slept), "first delayed request: {first_slept}");

    // Expected count from elapsed time: every request pays c, the session sheds 1 unit per second.
    let elapsed = secs(Instant::now() - a.opened);
    let per_request = (a.charged - initial) / f64::from(n);
    let expected = ((HARD - initial + elapsed) / per_request).floor() + 1.0;
    assert!(
        (f64::from(hard_at) - expected).abs() <= 5.0,
        "-101 at request {hard_at}, expected ~{expected} ({elapsed:.0} s elapsed, {per_request} a request)"
    );
    assert!((500..=560).contains(&hard_at), "-101 at request {hard_at}");

    assert!(
        running.guard().bans().lookup(ip("127.0.0.2")).is_some(),
        "address not banned after -101"
    );
    assert!(net::is_refused("127.0.0.2", v4).await, "banned address admitted");
    others_not_delayed(&mut other, &mut six, "after A's ban").await;
    assert!(running.guard().bans().lookup(ip("127.0.1.2")).is_none());
    assert!(running.guard().bans().lookup(ip("::1")).is_none());
    // Nothing follows the -101 but the close (promptness: see hard_limit_closes_at_once).
    a.closed_after_101().await;
}

/// two clients of one /24 share the budget (B throttled by A's cost), and A's cost stays with the
/// group as retained cost after A leaves, draining at 2 units/s.
#[tokio::test(start_paused = true)]
async fn group_shares_budget_and_retains_cost() {
    let backend = stub_backend(&[]).await;
    let running = gateway::start(&config(
        backend,
        "",
        "\"blockchain.estimatefee\" = 5990",
        "\"127.0.0.1:0\"",
        "",
    ))
    .await;
    let addr = running.addr("electrum");
    let g = ip("127.0.0.0");

    let mut a = Client::open("127.0.0.2", addr).await;
    let r = a.call("blockchain.estimatefee", "[6]", 5990.0).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
    let a_cost = running.ledger().group_cost(g);
    assert!(
        (a_cost - a.modelled()).abs() < 0.01,
        "ledger {a_cost}, model {}",
        a.modelled()
    );
    assert!((a_cost - 6000.0).abs() < 10.0, "A at {a_cost}");

    // B alone would be free; with A in its /24 it runs at frac ≈ 0.556.
    let mut b = Client::open("127.0.0.3", addr).await;
    let before = running.ledger().group_cost(g);
    let t = Instant::now();
    let r = b.call("server.ping", "[]", PING_COST).await;
    let lat = secs(r.at - t);
    let f = frac(before + PING_COST);
    assert!((f - 0.556).abs() < 0.01, "frac {f}");
    assert!(
        (lat - f * MAX_SLEEP).abs() < 0.01,
        "B's ping took {lat} s, expected {}",
        f * MAX_SLEEP
    );
    assert!((lat - 1.39).abs() < 0.05, "B's ping took {lat} s");

    // Ten pipelined pings: concurrency ceil((1 - 0.556) × 10) = 5, so two waves of 5, ~1.39 s apart.
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(b.send("server.ping", "[]", PING_COST).await);
    }
    let mut at = Vec::new();
    for _ in 0..10 {
        let r = b.recv().await.expect("reply");
        assert!(ids.contains(&r.id()));
        at.push(r.at);
    }
    let (sizes, starts) = waves(&at, Duration::from_millis(500));
    assert_eq!(sizes, vec![5, 5], "pipelined pings of B");
    let first = secs(starts[0] - t0);
    let gap = secs(starts[1] - starts[0]);
    assert!((first - 1.39).abs() < 0.05, "first wave after {first} s");
    assert!((gap - 1.39).abs() < 0.05, "second wave {gap} s after the first");

    // A leaves: its cost stays with the group.
    let a_left = a.modelled();
    drop(a);
    let ledger = running.ledger().clone();
    wait_for(|| ledger.retained(g) > 0.0, 1000, "A's session to close").await;
    let retained = running.ledger().retained(g);
    assert!((retained - a_left).abs() < 1.0, "retained {retained}, A had {a_left}");
    assert!((retained - 6000.0).abs() < 20.0, "retained {retained}");

    // B is still throttled by it.
    let t = Instant::now();
    let r = b.call("server.ping", "[]", PING_COST).await;
    assert!(
        secs(r.at - t) > 1.3,
        "B no longer throttled after A left: {:?}",
        r.at - t
    );

    // Retained cost drains at 600/300 s = 2 units/s.
    let retained = running.ledger().retained(g);
    tokio::time::sleep(Duration::from_secs(100)).await;
    let after = running.ledger().retained(g);
    assert!(
        (retained - after - 200.0).abs() < 0.01,
        "drained {} in 100 s",
        retained - after
    );
    assert!((after - 5800.0).abs() < 20.0, "retained {after} after 100 s");
}

/// a session at ~2000 that only pings decays at 1 unit/s: ≈ 1400 after 600 s.
#[tokio::test(start_paused = true)]
async fn cost_decays_one_unit_per_second() {
    let backend = stub_backend(&[]).await;
    let running = gateway::start(&config(
        backend,
        "",
        "\"blockchain.estimatefee\" = 1994",
        "\"127.0.0.1:0\"",
        "",
    ))
    .await;
    let addr = running.addr("electrum");
    let g = ip("127.0.2.0");
    let mut c = Client::open("127.0.2.2", addr).await;
    c.call("blockchain.estimatefee", "[6]", 1994.0).await;

    let t0 = Instant::now();
    let c0 = running.ledger().group_cost(g);
    assert!((c0 - 2000.0).abs() < 1.0, "start at {c0}");
    let charged0 = c.charged;
    // A ping every 30 s keeps the session inside its 600 s idle timeout.
    for i in 1..20u32 {
        tokio::time::sleep_until(t0 + Duration::from_secs(30) * i).await;
        let r = c.call("server.ping", "[]", PING_COST).await;
        assert!(r.v.get("error").is_none(), "{}", r.v);
    }
    tokio::time::sleep_until(t0 + Duration::from_secs(600)).await;
    let c1 = running.ledger().group_cost(g);
    let pings = c.charged - charged0;
    assert!(
        (c1 - (c0 - 600.0 + pings)).abs() < 0.01,
        "cost {c1}: from {c0}, 600 s, pings {pings}"
    );
    assert!((c1 - 1400.0).abs() < 10.0, "cost {c1} after 600 s");
}

/// `blockchain.block.headers(0, 1000000)` is charged on min(count, 2016) = 40.32 units, so a fresh
/// session trips -101 after ~248 of them (plus what it sheds meanwhile), not after one.
#[tokio::test(start_paused = true)]
async fn block_headers_cost_is_capped() {
    let backend = stub_backend(&[]).await;
    let running = gateway::start(&config(backend, "", "", "\"127.0.0.1:0\"", "")).await;
    let addr = running.addr("electrum");
    let g = ip("127.0.0.0");
    let mut c = Client::open("127.0.0.2", addr).await;
    let initial = c.charged;
    let capped = 2016.0 / 50.0;

    let r = c.call("blockchain.block.headers", "[0, 1000000]", capped).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
    let cost = running.ledger().group_cost(g);
    assert!(
        (cost - c.modelled()).abs() < 0.01,
        "one headers request: ledger {cost}, model {}",
        c.modelled()
    );
    assert!(cost < initial + 41.0, "charged {} for one request", cost - initial);

    let mut n = 1u32;
    loop {
        let id = c.send("blockchain.block.headers", "[0, 1000000]", capped).await;
        let r = c.recv().await.expect("closed without -101");
        n += 1;
        assert_eq!(r.id(), id);
        if let Some(code) = r.error_code() {
            assert_eq!(code, -101, "{}", r.v);
            break;
        }
        assert!(n < 1000, "no -101 after {n} requests");
    }
    let elapsed = secs(Instant::now() - c.opened);
    let per_request = (c.charged - initial) / f64::from(n);
    assert!((per_request - 40.34).abs() < 0.02, "{per_request} a request");
    let expected = ((HARD - initial + elapsed) / per_request).floor() + 1.0;
    assert!(
        (f64::from(n) - expected).abs() <= 5.0,
        "-101 at request {n}, expected ~{expected} ({elapsed:.0} s elapsed)"
    );
    // Charged on count = 1000000 (20000 units), the second request would already be refused.
    assert!(n > 240, "-101 at request {n}");
    assert!(
        running.guard().bans().lookup(ip("127.0.0.2")).is_some(),
        "address not banned after -101"
    );
    c.closed_after_101().await;
}

/// -102: a request the backend never answers is failed after request_timeout (3 s) while the session's
/// other requests are answered normally; the error costs 100.
#[tokio::test(start_paused = true)]
async fn unanswered_request_gets_102() {
    let backend = stub_backend(&["blockchain.transaction.get"]).await;
    let running = gateway::start(&config(backend, "request_timeout = \"3s\"", "", "\"127.0.0.1:0\"", "")).await;
    let addr = running.addr("electrum");
    let g = ip("127.0.0.0");
    let mut c = Client::open("127.0.0.2", addr).await;

    let t0 = Instant::now();
    let txid = "\"4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b\"";
    let slow = c.send("blockchain.transaction.get", &format!("[{txid}]"), 1.0).await;
    for _ in 0..3 {
        let t = Instant::now();
        let r = c.call("server.ping", "[]", PING_COST).await;
        assert!(r.v.get("error").is_none(), "{}", r.v);
        assert_eq!(r.at - t, Duration::ZERO, "ping delayed by the pending request");
    }
    let before = running.ledger().group_cost(g);
    let before_at = Instant::now();
    let r = c.recv().await.expect("closed instead of -102");
    assert_eq!(r.id(), slow, "{}", r.v);
    assert_eq!(r.error_code(), Some(-102), "{}", r.v);
    let waited = secs(r.at - t0);
    assert!((waited - 3.0).abs() < 1.0, "-102 after {waited} s");
    // The -102 reply costs error_cost (100) plus its bytes; the session shed 1 unit/s meanwhile.
    let after = running.ledger().group_cost(g) + secs(Instant::now() - before_at);
    assert!((after - before - 100.0).abs() < 0.1, "-102 cost {}", after - before);

    // The session goes on.
    let r = c.call("server.ping", "[]", PING_COST).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
}

/// -101 is followed by the close at once, not at the idle timeout.
#[tokio::test(start_paused = true)]
async fn hard_limit_closes_at_once() {
    let backend = stub_backend(&[]).await;
    let running = start_crossing(backend).await;
    let mut c = Client::open("127.0.0.2", running.addr("electrum")).await;
    // Served (after a 2.5 s sleep), and leaves the session over the hard limit.
    let r = c.call("blockchain.estimatefee", "[6]", CROSSING_COST).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
    let r = c.call("server.ping", "[]", PING_COST).await;
    assert_eq!(r.error_code(), Some(-101), "{}", r.v);
    let t = Instant::now();
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), c.r.read_line(&mut line)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "connection not closed within 5 s of -101 ({:?} later: {n:?} {line:?})",
        Instant::now() - t
    );
}

/// A backend that spends `delay` on every request it receives (batch items and requests without an id
/// included), answers those with an id with `"result":null`, and reports the most requests it ever
/// had in hand at once and how many it received.
async fn slow_backend(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let most = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let (m, t) = (most.clone(), total.clone());
    let addr = backends::serve(move |s| {
        let (most, total) = (m.clone(), t.clone());
        async move {
            let (r, w) = s.into_split();
            let w = Arc::new(tokio::sync::Mutex::new(w));
            let busy = Arc::new(AtomicUsize::new(0));
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let items = match serde_json::from_str::<Value>(&line) {
                    Ok(Value::Array(items)) => items,
                    Ok(v) => vec![v],
                    Err(_) => continue,
                };
                total.fetch_add(items.len(), Ordering::SeqCst);
                let now = busy.fetch_add(items.len(), Ordering::SeqCst) + items.len();
                most.fetch_max(now, Ordering::SeqCst);
                let (w, busy) = (w.clone(), busy.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let replies: Vec<String> = items
                        .iter()
                        .filter_map(|i| i.get("id"))
                        .map(|id| format!(r#"{{"jsonrpc":"2.0","id":{id},"result":null}}"#))
                        .collect();
                    let out = match (replies.len(), items.len()) {
                        (0, _) => String::new(),
                        (_, 1) => format!("{}\n", replies[0]),
                        _ => format!("[{}]\n", replies.join(",")),
                    };
                    busy.fetch_sub(items.len(), Ordering::SeqCst);
                    let _ = w.lock().await.write_all(out.as_bytes()).await;
                });
            }
        }
    })
    .await;
    (addr, most, total)
}

/// Each batch item and each notification is one request for the throttle: 40 notifications and four
/// batches of 200 never put more than `initial_concurrency` (10) requests at the backend at once.
#[tokio::test(start_paused = true)]
async fn batch_items_and_notifications_each_hold_a_throttle_slot() {
    let (backend, most, total) = slow_backend(Duration::from_millis(100)).await;
    let running = gateway::start(&config(backend, "", "", "\"127.0.0.1:0\"", "")).await;
    let mut c = Client::open("127.0.40.2", running.addr("electrum")).await;
    let ping = |id: Option<usize>| match id {
        Some(id) => format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"server.ping","params":[]}}"#),
        None => r#"{"jsonrpc":"2.0","method":"server.ping","params":[]}"#.to_string(),
    };
    let mut burst = String::new();
    for _ in 0..40 {
        burst += &ping(None);
        burst.push('\n');
    }
    for b in 1..=4 {
        let items: Vec<String> = (0..200).map(|k| ping(Some(b * 1000 + k))).collect();
        burst += &format!("[{}]\n", items.join(","));
    }
    c.w.write_all(burst.as_bytes()).await.unwrap();
    for b in 1..=4 {
        let r = c.recv().await.expect("closed instead of answering a batch");
        let ids: Vec<u64> =
            r.v.as_array()
                .unwrap_or_else(|| panic!("{}", r.v))
                .iter()
                .map(|e| e["id"].as_u64().unwrap())
                .collect();
        assert_eq!(ids.len(), 200, "batch {b}");
        assert!(ids.iter().all(|&id| id / 1000 == b as u64), "batch {b}: {ids:?}");
    }
    // server.version, 40 notifications and 800 batch items, each forwarded on its own slot.
    assert_eq!(total.load(Ordering::SeqCst), 841);
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= 10,
        "{most} requests at the backend at once, against a concurrency of 10"
    );
}

/// The hard limit applies to each item of a batch: the item that finds the session past it gets -101,
/// the rest never reach the backend, and the session closes and is banned.
#[tokio::test(start_paused = true)]
async fn a_batch_crossing_the_hard_limit_is_cut_at_the_item_that_crosses_it() {
    let (backend, _, total) = slow_backend(Duration::ZERO).await;
    let running = gateway::start(&config(
        backend,
        "",
        "\"blockchain.scripthash.get_balance\" = 1000",
        "\"127.0.0.1:0\"",
        "",
    ))
    .await;
    let mut c = Client::open("127.0.41.2", running.addr("electrum")).await;
    let items: Vec<String> = (1..=20)
        .map(|id| {
            format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"blockchain.scripthash.get_balance","params":[{SCRIPTHASH}]}}"#
            )
        })
        .collect();
    c.w.write_all(format!("[{}]\n", items.join(",")).as_bytes())
        .await
        .unwrap();
    let r = c.recv().await.expect("closed instead of answering the batch");
    let entries = r.v.as_array().unwrap_or_else(|| panic!("{}", r.v));
    let cut: Vec<&Value> = entries.iter().filter(|e| e["error"]["code"] == -101).collect();
    assert_eq!(cut.len(), 1, "{}", r.v);
    // 1000 units each: the 11th finds the session at 10000 (plus bytes and the connection).
    assert_eq!(cut[0]["id"], 11, "{}", r.v);
    assert!(c.recv().await.is_none(), "the session must close after -101");
    assert!(
        total.load(Ordering::SeqCst) <= 11,
        "{} requests reached the backend",
        total.load(Ordering::SeqCst)
    );
    assert!(running.guard().bans().lookup(ip("127.0.41.2")).is_some(), "not banned");
}
