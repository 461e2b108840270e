//! The drain signal every session listens to: close at once when forced, or at the session's own point in
//! the spread window.

use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a session reads to know when the gateway's drain closes it.
pub struct Drain {
    /// Cancelled when open sessions must end now (drain deadline passed).
    pub force_close: CancellationToken,
    /// Cancelled when the drain enters its spread window: each session then closes after its own delay
    /// within `spread`, so thousands of wallets do not reconnect elsewhere in the same second.
    pub spread_close: CancellationToken,
    pub spread: Duration,
}

impl Drain {
    pub fn new(spread: Duration) -> Drain {
        Drain {
            force_close: CancellationToken::new(),
            spread_close: CancellationToken::new(),
            spread,
        }
    }

    /// Resolves when the session of `peer` must close for the drain: at once when forced, or at this
    /// session's own point within the spread window.
    pub async fn signal(&self, peer: SocketAddr) {
        let spread = async {
            self.spread_close.cancelled().await;
            tokio::time::sleep(spread_delay(peer, self.spread)).await;
        };
        tokio::select! {
            _ = self.force_close.cancelled() => {}
            _ = spread => {}
        }
    }
}

/// A random point in the spread window for one session (the address only seeds the hash), so closes
/// land evenly without a registry of sessions.
fn spread_delay(peer: SocketAddr, spread: Duration) -> Duration {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one(peer);
    let frac = (h >> 11) as f64 / (1u64 << 53) as f64;
    spread.mul_f64(frac)
}
