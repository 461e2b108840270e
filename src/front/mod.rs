//! A front: one configured service (Electrum or peer port) with its listeners, admission level, TLS
//! settings and upstream pool, and the session that runs for each admitted connection.
//!
//! For now both kinds relay bytes at L4; the Electrum kind gains protocol awareness in its own module.

use crate::config::{Front, FrontKind};
use crate::guard::Level;
use crate::listen::stream::ClientStream;
use crate::listen::Conn;
use crate::relay::{give_buf, take_buf};
use crate::relay::{Relay, RelayEnd};
use crate::upstream::Pool;
use crate::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
        // Electrum clients always speak first. Waiting for their first bytes before dialling the backend
        // means scanners and clients that only handshake never cost the indexer a connection.
        let first = if self.cfg.kind == FrontKind::Electrum {
            match tokio::time::timeout(self.cfg.idle_timeout, first_bytes(&mut conn.stream)).await {
                Ok(Ok(Some(b))) => Some(b),
                Ok(Ok(None)) => {
                    return self.log_close(conn.client, conn.via, tls, conn.accepted_at, 0, 0, "client closed")
                }
                Ok(Err(_)) => {
                    return self.log_close(conn.client, conn.via, tls, conn.accepted_at, 0, 0, "client error")
                }
                Err(_) => return self.log_close(conn.client, conn.via, tls, conn.accepted_at, 0, 0, "idle timeout"),
            }
        } else {
            None
        };
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
        let mut first_len = 0;
        if let Some((buf, n)) = first {
            let sent = upstream.write_all(&buf[..n]).await;
            give_buf(buf);
            if sent.is_err() {
                return self.log_close(
                    conn.client,
                    conn.via,
                    tls,
                    conn.accepted_at,
                    n as u64,
                    0,
                    "upstream error",
                );
            }
            first_len = n as u64;
        }
        let (end, bytes_in, bytes_out) = relay(&mut conn, &mut upstream, self, shared).await;
        let bytes_in = bytes_in + first_len;
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
            via = via.map(tracing::field::display),
            bytes_in,
            bytes_out,
            duration_ms = since.elapsed().as_millis() as u64,
            tls,
            reason,
            "connection closed"
        );
    }
}

/// The client's first chunk, in a pooled buffer; None if it closed without sending anything.
async fn first_bytes(s: &mut ClientStream) -> std::io::Result<Option<(Box<[u8]>, usize)>> {
    let mut buf = take_buf();
    match s.read(&mut buf).await {
        Ok(0) => {
            give_buf(buf);
            Ok(None)
        }
        Ok(n) => Ok(Some((buf, n))),
        Err(e) => {
            give_buf(buf);
            Err(e)
        }
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
