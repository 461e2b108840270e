//! What gateways of one cluster tell each other about ACME: the challenge answers one of them is offering
//! (so a validation that lands on any gateway is answered), the certificates it ordered (with their keys:
//! the cluster links are authenticated and encrypted), and requests for them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AcmeShare {
    /// HTTP-01: the key authorization for `token`, or its withdrawal (None).
    Http {
        token: String,
        key_authorization: Option<String>,
    },
    /// TLS-ALPN-01: the SHA-256 of the key authorization for `domain`, or its withdrawal (None).
    Alpn { domain: String, digest: Option<Vec<u8>> },
    /// A certificate the sender ordered: the chain and its key, PEM.
    Certificate {
        name: String,
        chain_pem: String,
        key_pem: String,
    },
    /// Asks the orderer for its current certificate `name`.
    Want { name: String },
}
