//! The cost hard limit reaches sessions that send nothing: when a group goes over it, through another
//! member's requests or through the figure a cluster peer reports, its idle sessions get an unsolicited
//! -101 (id null) and are closed and banned within a second, without waiting for their next line.

use crate::support::backends::stub_backend;
use crate::support::clients::Client;
use crate::support::cost::{abuse, start_crossing, three_gateways, CLUSTER_HARD as HARD, CROSSING_COST, SCRIPTHASH};
use crate::support::net::ip;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// The idle client's next message must be the unsolicited -101, then the close, both within `limit`.
async fn cut_with_101(idle: &mut Client, limit: Duration) {
    let start = Instant::now();
    let r = tokio::time::timeout(limit, idle.recv())
        .await
        .unwrap_or_else(|_| panic!("idle session still open and silent {limit:?} after its group went over"))
        .expect("closed without -101");
    assert_eq!(r.error_code(), Some(-101), "{}", r.v);
    assert!(r.v["id"].is_null(), "{}", r.v);
    let left = limit.saturating_sub(start.elapsed());
    let end = tokio::time::timeout(left, idle.recv())
        .await
        .unwrap_or_else(|_| panic!("not closed within {limit:?} of going over"));
    assert!(end.is_none(), "data after -101: {:?}", end.map(|r| r.v));
}

/// Two sessions of one /24: one idle, the other takes the group over the hard limit with one request.
/// The idle one is cut within a second (tokio time) and its address banned; the busy one's request is
/// still served and its next request gets -101 as the reply, as before.
#[tokio::test(start_paused = true)]
async fn an_idle_session_is_cut_when_its_group_goes_over_the_hard_limit() {
    let backend = stub_backend(&[]).await;
    let running = start_crossing(backend).await;
    let addr = running.addr("electrum");
    let mut idle = Client::open("127.0.0.2", addr).await;
    let mut busy = Client::open("127.0.0.3", addr).await;
    let mut stranger = Client::open("127.0.1.2", addr).await;

    let busy_call = tokio::spawn(async move {
        let r = busy.call("blockchain.estimatefee", "[6]", CROSSING_COST).await;
        (busy, r)
    });
    cut_with_101(&mut idle, Duration::from_secs(1)).await;
    assert!(
        running.guard().bans().lookup(ip("127.0.0.2")).is_some(),
        "the idle session's address was not banned"
    );

    let (mut busy, r) = busy_call.await.unwrap();
    assert!(r.v.get("error").is_none(), "{}", r.v);
    let r = busy.call("server.ping", "[]", 0.1).await;
    assert_eq!(r.error_code(), Some(-101), "{}", r.v);

    // Another /24 is not touched.
    let r = stranger.call("server.ping", "[]", 0.1).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
}

/// Twenty idle sessions of one /24 when a twenty-first takes the group over: each is cut with -101 within
/// a second, but not all in the same instant. Cut together, a flood's thousands of sessions stalled the
/// gateway for tens of milliseconds at once; spread over a few hundred milliseconds they do not.
#[tokio::test(start_paused = true)]
async fn a_groups_sessions_are_cut_at_spread_times_within_a_second() {
    let backend = stub_backend(&[]).await;
    let running = start_crossing(backend).await;
    let addr = running.addr("electrum");
    let mut idle = Vec::new();
    for i in 2..22 {
        idle.push(Client::open(&format!("127.0.0.{i}"), addr).await);
    }
    let mut busy = Client::open("127.0.0.30", addr).await;
    let start = Instant::now();
    let mut cuts = tokio::task::JoinSet::new();
    for mut c in idle {
        cuts.spawn(async move {
            cut_with_101(&mut c, Duration::from_secs(1)).await;
            start.elapsed()
        });
    }
    busy.send("blockchain.estimatefee", "[6]", CROSSING_COST).await;
    let mut at = Vec::new();
    while let Some(t) = cuts.join_next().await {
        at.push(t.unwrap());
    }
    let (first, last) = (at.iter().min().unwrap(), at.iter().max().unwrap());
    assert!(*last < Duration::from_secs(1), "cut at {at:?}");
    assert!(
        *last - *first >= Duration::from_millis(100),
        "twenty sessions cut within {:?} of each other: {at:?}",
        *last - *first
    );
}

/// A session of the group whose request the backend never answers is cut within a second as well: that
/// request gets the -101 as its reply, instead of the session waiting up to `request_timeout` for it.
#[tokio::test(start_paused = true)]
async fn a_session_waiting_on_the_backend_is_cut_with_its_request_answered_101() {
    let backend = stub_backend(&["blockchain.scripthash.get_history"]).await;
    let running = start_crossing(backend).await;
    let addr = running.addr("electrum");
    let mut waiting = Client::open("127.0.0.2", addr).await;
    let mut busy = Client::open("127.0.0.3", addr).await;
    let id = waiting
        .send("blockchain.scripthash.get_history", &format!("[{SCRIPTHASH}]"), 0.5)
        .await;
    // The request is at the backend (which never answers) before the group goes over.
    let r = busy.call("server.ping", "[]", 0.1).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);
    let r = busy.call("blockchain.estimatefee", "[6]", CROSSING_COST).await;
    assert!(r.v.get("error").is_none(), "{}", r.v);

    let limit = Duration::from_secs(1);
    let start = Instant::now();
    let r = tokio::time::timeout(limit, waiting.recv())
        .await
        .expect("the waiting session was not answered within a second of its group going over")
        .expect("closed without -101");
    assert_eq!(r.error_code(), Some(-101), "{}", r.v);
    assert_eq!(r.id(), id, "{}", r.v);
    let end = tokio::time::timeout(limit.saturating_sub(start.elapsed()), waiting.recv())
        .await
        .expect("not closed within a second of going over");
    assert!(end.is_none(), "data after -101: {:?}", end.map(|r| r.v));
    assert!(running.guard().bans().lookup(ip("127.0.0.2")).is_some());
}

/// Three clustered gateways: a client pings gateway 0 until it is cut off there. Gateway 1 only hears
/// of that cost through gateway 0's reports, and that figure takes the group over at gateway 1: its idle
/// session of the same /24 is cut with -101 without sending anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_reported_cost_cuts_an_idle_session_of_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let backend = stub_backend(&[]).await;
    let gateways = three_gateways(
        dir.path(),
        backend,
        "interval = \"100ms\"\nexpiry = \"1s\"\nthreshold = 10",
    )
    .await;
    let fronts: Vec<SocketAddr> = gateways.iter().map(|g| g.addr("electrum")).collect();
    let mut idle = Client::open("127.0.3.2", fronts[1]).await;

    let run = abuse("127.0.3.3", &fronts[..1], 2.0 * HARD).await;
    assert!(run.cut_at.is_some(), "{run:?}");
    // A report interval, the cut's grace and a loaded machine's slack.
    cut_with_101(&mut idle, Duration::from_secs(3)).await;
    assert!(gateways[1].ledger().remote_cost(ip("127.0.3.0")) > 0.0);
    assert!(
        gateways[1].bans().lookup(ip("127.0.3.2")).is_some(),
        "the idle session's address was not banned"
    );
}
