//! Backend pools: upstreams tried in order, failing over on connect errors. An upstream that fails is
//! marked down for a back-off so every client does not pay its connect timeout again. Each backend may
//! also have an in-flight budget with a fair queue in front of it ([`budget`]), its window set or
//! learned from its latency ([`window`]).

pub mod budget;
pub mod window;

use crate::wire::proxy;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SendProxy {
    #[default]
    None,
    V2,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
}

struct Target {
    addr: SocketAddr,
    /// Milliseconds since `Pool::epoch` until which the target is considered down; 0 = up.
    down_until_ms: AtomicU64,
}

pub struct Pool {
    targets: Vec<Target>,
    epoch: Instant,
    connect_timeout: Duration,
    backoff: Duration,
    send_proxy: SendProxy,
    metrics: crate::telemetry::metrics::UpstreamMetrics,
}

impl Pool {
    /// A pool over `upstreams`, tried in order; `name` labels its metrics.
    pub fn new(
        name: &str,
        upstreams: &[SocketAddr],
        connect_timeout: Duration,
        backoff: Duration,
        send_proxy: SendProxy,
    ) -> Pool {
        Pool {
            targets: upstreams
                .iter()
                .map(|&addr| Target {
                    addr,
                    down_until_ms: AtomicU64::new(0),
                })
                .collect(),
            epoch: Instant::now(),
            connect_timeout,
            backoff,
            send_proxy,
            metrics: crate::telemetry::metrics::UpstreamMetrics::new(name, upstreams.len()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether an upstream is currently believed reachable.
    pub fn is_up(&self, addr: SocketAddr) -> bool {
        self.targets
            .iter()
            .find(|t| t.addr == addr)
            .is_some_and(|t| t.down_until_ms.load(Ordering::Relaxed) <= self.now_ms())
    }

    /// The upstream [`Pool::connect`] would try first now: the first one up or, when all are down, the
    /// one that comes back soonest.
    pub fn preferred(&self) -> Option<SocketAddr> {
        let now = self.now_ms();
        self.targets
            .iter()
            .find(|t| t.down_until_ms.load(Ordering::Relaxed) <= now)
            .or_else(|| {
                self.targets
                    .iter()
                    .min_by_key(|t| t.down_until_ms.load(Ordering::Relaxed))
            })
            .map(|t| t.addr)
    }

    /// Connects to the first reachable upstream. `client` and `local` are the original client address
    /// and the address it connected to, carried in a PROXY v2 header when configured.
    pub async fn connect(
        &self,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Result<(TcpStream, SocketAddr), UpstreamError> {
        let mut failures = Vec::new();
        // When every upstream is marked down, still try the one that comes back soonest: with a lone
        // backend that restarted, refusing everyone for the whole back-off would be worse than one
        // client paying a connect attempt.
        let now = self.now_ms();
        let all_down = self
            .targets
            .iter()
            .all(|t| t.down_until_ms.load(Ordering::Relaxed) > now);
        let soonest = all_down
            .then(|| {
                self.targets
                    .iter()
                    .min_by_key(|t| t.down_until_ms.load(Ordering::Relaxed))
                    .map(|t| t.addr)
            })
            .flatten();
        for (position, t) in self.targets.iter().enumerate() {
            if t.down_until_ms.load(Ordering::Relaxed) > self.now_ms() && Some(t.addr) != soonest {
                failures.push(format!("{} marked down", t.addr));
                continue;
            }
            let started = Instant::now();
            match self.try_one(t.addr, client, local).await {
                Ok(s) => {
                    self.metrics.connected(position, started.elapsed());
                    t.down_until_ms.store(0, Ordering::Relaxed);
                    return Ok((s, t.addr));
                }
                Err(e) => {
                    let until = self.now_ms() + self.backoff.as_millis() as u64;
                    t.down_until_ms.store(until.max(1), Ordering::Relaxed);
                    tracing::warn!(upstream = %t.addr, error = %e, backoff = ?self.backoff, "upstream connect failed; marked down");
                    failures.push(format!("{}: {e}", t.addr));
                }
            }
        }
        Err(UpstreamError::Unreachable(failures.join("; ")))
    }

    async fn try_one(&self, addr: SocketAddr, client: SocketAddr, local: SocketAddr) -> std::io::Result<TcpStream> {
        let fut = async {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            if self.send_proxy == SendProxy::V2 {
                let mut hdr = Vec::with_capacity(64);
                proxy::encode_v2(client, local, &mut hdr);
                s.write_all(&hdr).await?;
            }
            Ok(s)
        };
        match tokio::time::timeout(self.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect timed out after {:?}", self.connect_timeout),
            )),
        }
    }
}
