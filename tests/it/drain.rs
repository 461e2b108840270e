//! Graceful drain: after the stop, no new connection is accepted, open sessions carry on, and those
//! still open when the spread window starts are closed at points spread over it, before the deadline.

use crate::support::{backends, gateway, net};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_are_spread_over_the_window_before_the_deadline() {
    let up = backends::echo_backend().await;
    let toml = format!(
        "{}[runtime]\ndrain_deadline = \"3s\"\ndrain_spread = \"2s\"\n{}",
        gateway::RELAXED,
        gateway::tcp_front("p", up, "")
    );
    let running = gateway::start(&toml).await;
    let addr = running.addr("p");
    let mut sessions = Vec::new();
    for i in 0..60 {
        let mut s = net::connect_from(&format!("127.0.1.{}", 2 + i), addr).await.unwrap();
        assert!(net::echoes(&mut s).await);
        sessions.push(s);
    }
    let stop = Instant::now();
    let drain = tokio::spawn(running.shutdown());
    // Each session reports when the gateway closed it.
    let mut closes = tokio::task::JoinSet::new();
    for mut s in sessions {
        closes.spawn(async move {
            let mut buf = [0u8; 16];
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
            stop.elapsed()
        });
    }
    // Listeners close at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a new connection was accepted while draining"
    );
    let mut at = Vec::new();
    while let Some(t) = closes.join_next().await {
        at.push(t.unwrap());
    }
    at.sort();
    let report = drain.await.unwrap();
    let (first, last) = (at[0], at[at.len() - 1]);
    // Nobody is closed before the window (deadline 3 s - spread 2 s) and everyone by the deadline.
    assert!(first >= Duration::from_millis(900), "first close at {first:?}");
    assert!(last <= Duration::from_millis(3500), "last close at {last:?}");
    // Spread, not all at once: the middle half of the closes spans a good part of the window.
    let (q1, q3) = (at[at.len() / 4], at[3 * at.len() / 4]);
    assert!(
        q3 - q1 >= Duration::from_millis(500),
        "closes bunched: q1 {q1:?}, q3 {q3:?}"
    );
    assert_eq!(report.forced, 0, "every session should have been closed by the spread");
    assert!(
        stop.elapsed() < Duration::from_millis(3600),
        "shutdown took {:?}",
        stop.elapsed()
    );
}
