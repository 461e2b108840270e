//! The settings of one front: what it listens on, how it admits, its TLS and its upstreams.

use super::api::ledger::settings::LedgerSettings;
use super::api::settings::ApiSettings;
use super::electrum::settings::ElectrumSettings;
use super::peer::settings::PeerSettings;
use crate::guard::Admission;
use crate::listen::tls;
use crate::upstream::budget::BudgetSettings;
use crate::upstream::SendProxy;
use crate::wire::acl::CidrSet;
use rustls::ServerConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Default `timeouts.handshake`: PROXY header, TLS and WebSocket upgrade together.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `timeouts.idle`: a session with no request (Electrum) or no byte (relay) this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `upstream.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `upstream.retry_backoff`: how long an upstream that refused stays marked down.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Front {
    pub name: String,
    pub kind: FrontKind,
    pub listen: Vec<SocketAddr>,
    pub transport: Transport,
    pub tls: Option<Arc<ServerConfig>>,
    /// The certificates behind `tls`, reloaded when their files change.
    pub cert_watch: Option<Arc<tls::CertWatch>>,
    pub admission: Admission,
    pub proxy_accept_from: CidrSet,
    pub upstreams: Vec<SocketAddr>,
    pub send_proxy: SendProxy,
    pub connect_timeout: Duration,
    pub retry_backoff: Duration,
    /// The in-flight budget of each upstream (Electrum fronts; "off" for every other kind).
    pub budget: BudgetSettings,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Present exactly for `kind = "electrum"` fronts.
    pub electrum: Option<Arc<ElectrumSettings>>,
    /// Present exactly for `kind = "api"` fronts of profile `bitcoind`.
    pub api: Option<Arc<ApiSettings>>,
    /// Present exactly for `kind = "api"` fronts of profile `ledger`.
    pub ledger: Option<Arc<LedgerSettings>>,
    /// `[[front.tls.sni]] route`: server names whose connections another front serves after this
    /// front's handshake.
    pub sni_routes: Vec<SniRoute>,
    /// `[front.peer]`: the shape check and limits of a `kind = "peer"` front (defaults elsewhere).
    pub peer: Arc<PeerSettings>,
}

/// One server name routed to another front (by that front's name, looked up per connection so a reload
/// of either front takes effect for new connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    /// Lowercase: SNI names compare case-insensitively.
    pub name: String,
    pub target: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FrontKind {
    Electrum,
    Peer,
    /// A node's HTTP JSON-RPC API (`[front.api]`).
    Api,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Tls,
    /// WebSocket over plain TCP (Electrum port 50003).
    Ws,
    /// WebSocket over TLS (Electrum port 50004).
    Wss,
}

impl Transport {
    pub fn uses_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }
}
