//! A front: one configured service (Electrum or peer port) with its listeners, admission level, TLS
//! settings and upstream pool, and the session that runs for each admitted connection.
//!
//! For now both kinds relay bytes at L4; the Electrum kind gains protocol awareness in its own module.

use crate::config::Front;
use crate::guard::Level;
use crate::listen::Conn;
use crate::relay::{Relay, RelayEnd};
use crate::upstream::Pool;
use crate::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio_rustls::TlsAcceptor;

pub struct FrontState {
    pub cfg: Front,
    pub level: Arc<Level>,
    pub pool: Pool,
    pub tls: Option<TlsAcceptor>,
}

impl FrontState {
    pub fn new(cfg: Front) -> FrontState {
        FrontState {
            level: Level::new(cfg.admission.clone()),
            pool: Pool::new(&cfg),
            tls: cfg.tls.clone().map(TlsAcceptor::from),
            cfg,
        }
    }

    /// Runs one admitted connection to its end and logs one line about it.
    pub async fn serve(&self, mut conn: Conn, shared: &crate::Shared) {
        let tls = conn.stream.tls_version();
        let mut upstream = match self.pool.connect(conn.client, conn.local).await {
            Ok((s, _addr)) => s,
            Err(e) => {
                tracing::warn!(front = %self.cfg.name, error = %e, "no upstream reachable");
                self.log_close(
                    conn.client,
                    conn.via,
                    tls,
                    conn.accepted_at,
                    0,
                    0,
                    "upstream unreachable",
                );
                return;
            }
        };
        let (end, bytes_in, bytes_out) = relay(&mut conn, &mut upstream, self, shared).await;
        self.log_close(conn.client, conn.via, tls, conn.accepted_at, bytes_in, bytes_out, end);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn log_close(
        &self,
        client: SocketAddr,
        via: Option<SocketAddr>,
        tls: &str,
        since: Instant,
        bytes_in: u64,
        bytes_out: u64,
        reason: &str,
    ) {
        tracing::info!(
            front = %self.cfg.name,
            client = %client,
            via = ?via,
            bytes_in,
            bytes_out,
            duration_ms = since.elapsed().as_millis() as u64,
            tls,
            reason,
            "connection closed"
        );
    }
}

async fn relay(
    conn: &mut Conn,
    upstream: &mut tokio::net::TcpStream,
    front: &FrontState,
    shared: &Shared,
) -> (&'static str, u64, u64) {
    let mut relay = Relay::new(&mut conn.stream, upstream, front.cfg.idle_timeout);
    let end = tokio::select! {
        end = &mut relay => end,
        _ = shared.force_close.cancelled() => return ("shutdown", relay.bytes_in(), relay.bytes_out()),
    };
    if let RelayEnd::ClientError(e) | RelayEnd::UpstreamError(e) = &end {
        tracing::debug!(front = %front.cfg.name, client = %conn.client, error = %e, "relay i/o error");
    }
    (end.as_str(), relay.bytes_in(), relay.bytes_out())
}
