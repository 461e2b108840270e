//! `[acme]` as the ACME client reads it: the account, the CA, the certificates, and the limits on them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Let's Encrypt's production directory: what operators want unless they say otherwise.
pub const DEFAULT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// First wait after a failed order; doubled on each further failure up to `retry_max`.
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_secs(60);
/// Longest wait between failed orders: a certificate that cannot be renewed is retried at least this often.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(6 * 3600);
/// A certificate this close to its end is an error (log and metric), whatever the renewal says.
pub const EXPIRY_ALARM: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most certificates one gateway orders: each is a task, a slot and files.
pub const MAX_CERTIFICATES: usize = 64;
/// Most names on one certificate (Let's Encrypt's own limit).
pub const MAX_DOMAINS: usize = 100;
/// In a cluster, how long a gateway that does not order waits for the orderer's certificate before it
/// orders itself (the orderer may be down for good).
pub const DEFAULT_ORDERER_GRACE: Duration = Duration::from_secs(600);
/// Longest one order may take, challenges and polling included, before it counts as failed.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// How the CA checks that this gateway answers for the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Challenge {
    /// RFC 8737: a handshake offering ALPN `acme-tls/1` to a TLS front on port 443 gets a certificate
    /// proving the key authorization.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// RFC 8555 §8.3: `GET /.well-known/acme-challenge/<token>` on port 80 (`http_listen`).
    #[serde(rename = "http-01")]
    Http01,
}

impl Challenge {
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        }
    }
}

/// One certificate to order, by the name fronts reference it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeCert {
    pub name: String,
    /// Lower-case DNS names; the first is the subject.
    pub domains: Vec<String>,
}

/// `[acme]`: the account, the CA and the certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub directory: String,
    /// `mailto:` URLs given to the CA for expiry notices.
    pub contact: Vec<String>,
    /// Where the account key and certificates are kept (`<state_dir>/acme/`).
    pub state_dir: PathBuf,
    /// PEM roots trusted for the directory's HTTPS instead of the built-in web roots (a test CA's).
    pub ca_root: Option<PathBuf>,
    pub challenge: Challenge,
    /// Where HTTP-01 is answered (port 80 in production).
    pub http_listen: Option<SocketAddr>,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub orderer_grace: Duration,
    pub certificates: Vec<AcmeCert>,
}

/// Why a name cannot be a certificate's name: it becomes a file name in the state folder.
pub fn check_cert_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("may hold only letters, digits, '-' and '_' (it names files in the state folder)");
    }
    Ok(())
}

/// Why a DNS name cannot be ordered (wildcards need DNS-01, which the gateway does not answer).
pub fn check_domain(d: &str) -> Result<(), &'static str> {
    if d.is_empty() || d.len() > 253 {
        return Err("must be 1 to 253 characters");
    }
    if d.starts_with("*.") {
        return Err("wildcards need the DNS-01 challenge, which the gateway does not answer");
    }
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address cannot be validated by tls-alpn-01 or http-01 here; use a DNS name");
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !d.contains('.') || !d.split('.').all(ok_label) {
        return Err("is not a fully qualified DNS name");
    }
    Ok(())
}
