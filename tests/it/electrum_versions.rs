//! server.version answered by the gateway, from what the backend answered before: a session opens its
//! backend connection only with its first request (and, behind a full in-flight budget, only once that
//! request is granted), and tells the backend the negotiated version first on it. A backend that no
//! longer speaks that version fails the session cleanly and is asked again.

use crate::support::backends::{self, Versioned};
use crate::support::clients::{sample, Client};
use crate::support::cost;
use crate::support::gateway::{self, RELAXED};
use crate::support::net;
use serde_json::json;
use std::time::Duration;

const BALANCE: &str = "blockchain.scripthash.get_balance";
const HISTORY: &str = "blockchain.scripthash.get_history";

fn config(name: &str, backend: &Versioned, extra: &str) -> String {
    format!(
        "{RELAXED}{}",
        gateway::front("electrum", name, "127.0.0.1:0", "tcp", &[backend.addr], extra)
    )
}

/// The methods the backend saw on connection `conn`, in order.
fn methods_on(backend: &Versioned, conn: usize) -> Vec<String> {
    backend
        .seen()
        .into_iter()
        .filter(|s| s.0 == conn)
        .map(|s| s.1)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_a_version_the_backend_answered_and_dials_with_the_first_request() {
    let backend = backends::versioned_backend("Versioned 2.0", "1.4.3").await;
    let running = gateway::start(&config("ver_local", &backend, "")).await;
    let to = running.addr("ver_local");

    // Nothing known yet: the first wallet's version goes to the backend, clamped to the gateway's range.
    let mut first = Client::connect("127.0.3.2", to).await;
    let r = first.call("server.version", r#"["first", ["1.4", "1.6"]]"#, 0.5).await;
    assert_eq!(r.v["result"], json!(["Versioned 2.0", "1.4.3"]));
    assert_eq!(backend.versions().len(), 1);
    assert_eq!(backend.versions()[0].2, json!(["first", ["1.4", "1.6"]]));
    assert_eq!(backend.connections(), 1);

    // The next wallets are answered by the gateway: had their versions been forwarded, the backend would
    // have seen them before the replies came back.
    let mut second = Client::connect("127.0.3.3", to).await;
    let r = second
        .call("server.version", r#"["second", ["1.4", "1.6"]]"#, 0.5)
        .await;
    assert_eq!(r.v["result"], json!(["Versioned 2.0", "1.4.3"]));
    let mut third = Client::connect("127.0.3.4", to).await;
    let r = third.call("server.version", r#"["third", "1.4.3"]"#, 0.5).await;
    assert_eq!(r.v["result"], json!(["Versioned 2.0", "1.4.3"]));
    assert_eq!(backend.versions().len(), 1, "{:?}", backend.seen());

    // A range whose answer the backend never gave (it would pick 1.4, which it has not answered yet) is
    // forwarded.
    let mut old = Client::connect("127.0.3.5", to).await;
    let r = old.call("server.version", r#"["old", "1.4"]"#, 0.5).await;
    assert_eq!(r.v["result"], json!(["Versioned 2.0", "1.4"]));
    assert_eq!(backend.versions().len(), 2);
    assert_eq!(backend.connections(), 2);

    // The second wallet's first request opens its connection, the negotiated version going first on it.
    let r = second.call(BALANCE, r#"["aa"]"#, 1.0).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
    assert_eq!(
        backend.connections(),
        3,
        "the third wallet, which sent nothing, has no connection"
    );
    assert_eq!(methods_on(&backend, 3), ["server.version", BALANCE]);
    assert_eq!(backend.versions()[2].2, json!(["second", "1.4.3"]));

    // Wallets answered by the gateway are served like the others, at the version they were told.
    let r = third.call("blockchain.headers.subscribe", "[]", 0.25).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
    assert_eq!(
        methods_on(&backend, 4),
        ["server.version", "blockchain.headers.subscribe"]
    );
    let r = first.call(BALANCE, r#"["bb"]"#, 1.0).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
    assert_eq!(backend.connections(), 4, "the first wallet keeps its one connection");
    // A second server.version is refused as before, answered or not.
    let r = second.call("server.version", r#"["again", "1.4"]"#, 0.5).await;
    assert_eq!(r.error_code(), Some(1), "{}", r.v);

    let text = gatehouse::telemetry::metrics::render(None);
    assert!(
        sample(&text, "gatehouse_electrum_versions_answered_total").unwrap_or(0.0) >= 2.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_waiting_at_the_budget_opens_no_backend_connection_until_its_request_is_granted() {
    for (name, answer, connections_while_queued) in [("ver_queued", "gateway", 1), ("ver_forwarded", "backend", 2)] {
        let backend = backends::versioned_backend("Versioned 2.0", "1.4").await;
        let extra = format!(
            "[front.upstream]\nmax_in_flight = 1\nheavy_in_flight = 1\n[front.electrum]\nversion_answer = \"{answer}\"\n"
        );
        let running = gateway::start(&config(name, &backend, &extra)).await;
        let to = running.addr(name);
        let budget = running
            .front(name)
            .unwrap()
            .handles
            .electrum
            .budgets
            .get(backend.addr)
            .unwrap();

        // One wallet's read holds the backend's only place.
        let mut holder = Client::open("127.0.4.2", to).await;
        let held = holder.send(HISTORY, r#"["hold"]"#, 0.5).await;
        assert!(
            net::within(Duration::from_secs(10), async || backend
                .seen()
                .iter()
                .any(|s| s.1 == HISTORY))
            .await
            .is_some(),
            "{name}: the held read never reached the backend"
        );

        // Another wallet negotiates and asks: its request waits in the gateway's queue (and so does its
        // version, when that goes to the backend).
        let mut waiter = Client::connect("127.0.5.2", to).await;
        let version = waiter.send("server.version", r#"["waiter", "1.4"]"#, 0.5).await;
        let asked = waiter.send(BALANCE, r#"["cc"]"#, 1.0).await;
        assert!(
            net::within(Duration::from_secs(10), async || budget.load().2 >= 1)
                .await
                .is_some(),
            "{name}: the request did not queue: {:?}",
            budget.load()
        );
        assert_eq!(
            backend.connections(),
            connections_while_queued,
            "{name}: {:?}",
            backend.seen()
        );

        // Once the place is free the waiting request is written, on a connection opened for it.
        backend.release.notify_one();
        let r = holder.recv().await.unwrap();
        assert_eq!(r.id(), held);
        let r = waiter.recv().await.unwrap();
        assert_eq!(r.id(), version);
        assert_eq!(r.v["result"], json!(["Versioned 2.0", "1.4"]), "{name}");
        let r = waiter.recv().await.unwrap();
        assert_eq!(r.id(), asked);
        assert!(r.v.get("error").is_none(), "{name}: {}", r.v);
        assert_eq!(backend.connections(), 2, "{name}");
        assert_eq!(methods_on(&backend, 2), ["server.version", BALANCE], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_refuses_the_version_it_answered_before_fails_the_session_and_is_asked_again() {
    let backend = backends::versioned_backend("Versioned 2.0", "1.4").await;
    let running = gateway::start(&config("ver_refused", &backend, "")).await;
    let to = running.addr("ver_refused");
    let _first = Client::open("127.0.6.2", to).await;
    let mut second = Client::open("127.0.6.3", to).await;
    assert_eq!(
        backend.versions().len(),
        1,
        "the second version was answered by the gateway"
    );

    // The backend is replaced by one that no longer speaks 1.4.
    backend.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = second.call(BALANCE, r#"["dd"]"#, 1.0).await;
    assert_eq!(r.error_code(), Some(-32603), "{}", r.v);
    assert_eq!(
        r.v["error"]["message"],
        "Electrum backend refused the negotiated protocol version"
    );
    net::closed_within(&mut second.r, Duration::from_secs(10)).await;

    // The next wallet's version goes to the backend again, and gets its answer.
    let mut third = Client::connect("127.0.6.4", to).await;
    let r = third.call("server.version", r#"["third", "1.4"]"#, 0.5).await;
    assert_eq!(r.error_code(), Some(1), "{}", r.v);
    assert_eq!(backend.versions().len(), 3, "{:?}", backend.seen());
}

/// A version the gateway answers goes through the throttle like a forwarded one: a new session of a group
/// over the soft limit gets its answer after the same sleep, and other groups' sessions at once.
#[tokio::test(start_paused = true)]
async fn a_throttled_groups_new_session_waits_for_its_answer_as_for_the_backends() {
    let backend = backends::versioned_backend("Versioned 2.0", "1.4").await;
    let methods = "\"blockchain.estimatefee\" = 5500";
    let running = gateway::start(&cost::config(backend.addr, "", methods, "\"127.0.0.1:0\"", "")).await;
    let to = running.addr("electrum");
    let mut costly = Client::open("127.0.7.2", to).await;
    let r = costly.call("blockchain.estimatefee", "[2]", 5500.0).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);

    for (from, least, most) in [("127.0.7.3", 1.0, 2.5), ("127.0.8.2", 0.0, 0.0)] {
        let mut c = Client::connect(from, to).await;
        let t0 = tokio::time::Instant::now();
        let r = c.call("server.version", r#"["new", "1.4"]"#, 0.5).await;
        assert_eq!(r.v["result"], json!(["Versioned 2.0", "1.4"]));
        let waited = (r.at - t0).as_secs_f64();
        assert!(
            (least..=most).contains(&waited),
            "{from}: answered after {waited} s, expected {least}..={most} s"
        );
    }
    assert_eq!(backend.versions().len(), 1, "{:?}", backend.seen());
}
