//! The drain signal every session listens to: close at once when forced, or at the session's own point in
//! the spread window.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
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
    /// session's own point within the spread window. Cheap to poll on every wake-up of a busy session: the
    /// tokens are looked at again only after one of them (or the spread timer) has woken it.
    pub fn signal(&self, peer: SocketAddr) -> impl Future<Output = ()> + '_ {
        WokenOnly::new(self.signal_now(peer))
    }

    async fn signal_now(&self, peer: SocketAddr) {
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

/// Polls `inner` only when `inner` itself asked to be woken since its last poll (or on the first poll).
///
/// A session polls its drain signal on every wake-up, and a busy session wakes for every read; each poll of a
/// cancellation token takes its lock and re-registers a waiter. Here `inner` is polled with a waker of its
/// own that raises a flag before waking the task, so the polls between carry no work but one atomic swap
/// and a comparison of the task's waker with the one registered.
struct WokenOnly<F> {
    inner: Pin<Box<F>>,
    flag: Arc<Flag>,
    waker: Waker,
    /// The task waker last handed to `flag` (compared without its lock).
    task: Option<Waker>,
}

struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(t) = task {
            t.wake();
        }
    }
}

impl<F: Future> WokenOnly<F> {
    fn new(inner: F) -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        WokenOnly {
            inner: Box::pin(inner),
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
        }
    }
}

impl<F: Future> Future for WokenOnly<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let first = this.task.is_none();
        // Registered before the flag is read, so a wake between the two is not lost.
        if !this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            *this.flag.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            this.task = Some(cx.waker().clone());
        }
        if !first && !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.as_mut().poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pending<F: Future>(f: Pin<&mut F>) -> bool {
        let mut f = Some(f);
        std::future::poll_fn(|cx| Poll::Ready(f.take().is_some_and(|f| f.poll(cx).is_pending()))).await
    }

    #[tokio::test]
    async fn a_signal_polled_many_times_still_sees_the_cancel() {
        let drain = Drain::new(Duration::ZERO);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut sig = std::pin::pin!(drain.signal(peer));
        for _ in 0..3 {
            assert!(pending(sig.as_mut()).await);
        }
        drain.force_close.cancel();
        assert!(!pending(sig.as_mut()).await);

        let drain = Drain::new(Duration::from_millis(1));
        let mut sig = std::pin::pin!(drain.signal(peer));
        assert!(pending(sig.as_mut()).await);
        drain.spread_close.cancel();
        tokio::time::timeout(Duration::from_secs(5), sig)
            .await
            .expect("the spread close ends the signal");
    }
}
