//! One order, start to end: account, new order, a challenge answer per name, finalization with a fresh
//! key, the chain. The answers offered are withdrawn however the order ends.

use super::registry::Registry;
use super::settings::{AcmeCert, AcmeSettings, Challenge};
use super::store;
use crate::wire::acme::AcmeShare;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("cannot make a key or request: {0}")]
    Key(#[from] rcgen::Error),
    #[error("cannot keep the account or certificate in the state folder: {0}")]
    Store(#[from] std::io::Error),
    #[error("the CA offers no {0} challenge for {1}")]
    NoChallenge(&'static str, String),
    #[error("authorization for {0} is {1:?}")]
    Authorization(String, AuthorizationStatus),
    #[error("order ended {0:?}")]
    Order(OrderStatus),
    #[error("too many challenges in flight")]
    Crowded,
    #[error("the issued chain is unusable: {0}")]
    Chain(#[from] crate::listen::tls::TlsError),
    #[error("the order took longer than {0:?}")]
    Timeout(Duration),
}

/// The account, registered on first use and kept in the state folder.
pub async fn account(settings: &AcmeSettings, http: super::client::Https) -> Result<Account, IssueError> {
    let builder = Account::builder_with_http(Box::new(http));
    if let Some(creds) = store::load_account(&settings.state_dir, &settings.directory) {
        return Ok(builder.from_credentials(creds).await?);
    }
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let (account, creds) = builder
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await?;
    store::save_account(&settings.state_dir, &settings.directory, &creds)?;
    tracing::info!(directory = %settings.directory, "ACME account registered");
    Ok(account)
}

/// Sends a message to the cluster's other gateways.
pub type Share = dyn Fn(AcmeShare) -> usize + Send + Sync;

/// The answers this order offered (here and to the cluster's other gateways), withdrawn when it ends.
struct Offered<'a> {
    registry: &'a Registry,
    share: Option<&'a Share>,
    http: Vec<String>,
    alpn: Vec<String>,
}

impl Drop for Offered<'_> {
    fn drop(&mut self) {
        for t in &self.http {
            self.registry.withdraw_http(t);
            if let Some(share) = self.share {
                share(AcmeShare::Http {
                    token: t.clone(),
                    key_authorization: None,
                });
            }
        }
        for d in &self.alpn {
            self.registry.withdraw_alpn(d);
            if let Some(share) = self.share {
                share(AcmeShare::Alpn {
                    domain: d.clone(),
                    digest: None,
                });
            }
        }
    }
}

/// The new chain (PEM) and its key (PEM).
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

pub async fn order(
    account: &Account,
    challenge: Challenge,
    registry: &Arc<Registry>,
    cert: &AcmeCert,
    share: Option<&Share>,
) -> Result<Issued, IssueError> {
    let ids: Vec<Identifier> = cert.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut offered = Offered {
        registry,
        share,
        http: Vec::new(),
        alpn: Vec::new(),
    };
    let kind = match challenge {
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        Challenge::Http01 => ChallengeType::Http01,
    };
    let mut authz = order.authorizations();
    while let Some(a) = authz.next().await {
        let mut a = a?;
        match a.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(IssueError::Authorization(a.identifier().to_string(), other)),
        }
        let domain = a.identifier().to_string();
        let mut ch = a
            .challenge(kind.clone())
            .ok_or_else(|| IssueError::NoChallenge(challenge.as_str(), domain.clone()))?;
        let ka = ch.key_authorization();
        // The CA may reach any gateway behind the name: every one offers the answer.
        let (ok, msg) = match challenge {
            Challenge::Http01 => {
                offered.http.push(ch.token.clone());
                (
                    registry.offer_http(&ch.token, ka.as_str()),
                    AcmeShare::Http {
                        token: ch.token.clone(),
                        key_authorization: Some(ka.as_str().to_string()),
                    },
                )
            }
            Challenge::TlsAlpn01 => {
                offered.alpn.push(domain.clone());
                (
                    registry.offer_alpn(&domain, ka.digest().as_ref())?,
                    AcmeShare::Alpn {
                        domain: domain.clone(),
                        digest: Some(ka.digest().as_ref().to_vec()),
                    },
                )
            }
        };
        if let Some(share) = share {
            share(msg);
        }
        if !ok {
            return Err(IssueError::Crowded);
        }
        ch.set_ready().await?;
    }
    let poll = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(120));
    let status = order.poll_ready(&poll).await?;
    if status != OrderStatus::Ready {
        return Err(IssueError::Order(status));
    }
    let mut params = rcgen::CertificateParams::new(cert.domains.clone())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate()?;
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&poll).await?;
    drop(offered);
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}
