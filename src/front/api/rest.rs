//! Where a bitcoind front's request leads: JSON-RPC (`/` and `/wallet/…`, POST), or REST (`/rest/…`,
//! GET), which is off unless the operator lists path prefixes, each with its cost class.
//!
//! bitcoind dispatches by plain prefix on the raw request path and its REST handlers answer any HTTP
//! method, so anything not matched here must stay at the gateway: a POST to `/rest/…` would otherwise
//! reach REST with a JSON-RPC credential, and an unlisted REST path would reach the node at all.

use super::methods::Class;

/// What bitcoind serves JSON-RPC on: `/` and the per-wallet endpoints.
pub fn is_jsonrpc_path(path: &str) -> bool {
    path == "/" || path.starts_with("/wallet/")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    #[error("a REST prefix starts with `/rest/` and names something after it")]
    NotRest,
    #[error("a REST prefix holds only letters, digits and `/._-`, without `..` or `//`")]
    BadChars,
}

/// The REST path prefixes allowed through, longest first so the most specific class wins.
#[derive(Debug, Clone, Default)]
pub struct RestPolicy {
    prefixes: Vec<(String, Class)>,
}

impl RestPolicy {
    /// Checks one prefix as the operator wrote it.
    pub fn validate(prefix: &str) -> Result<(), RestError> {
        let rest = prefix.strip_prefix("/rest/").ok_or(RestError::NotRest)?;
        if rest.is_empty() {
            return Err(RestError::NotRest);
        }
        let plain = prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'));
        if !plain || prefix.contains("..") || prefix.contains("//") {
            return Err(RestError::BadChars);
        }
        Ok(())
    }

    /// A policy over already validated prefixes.
    pub fn new(mut prefixes: Vec<(String, Class)>) -> RestPolicy {
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        RestPolicy { prefixes }
    }

    /// REST is on when some prefix is listed.
    pub fn enabled(&self) -> bool {
        !self.prefixes.is_empty()
    }

    /// The cost class of a request path (without its query) when a listed prefix allows it.
    pub fn class(&self, path: &str) -> Option<Class> {
        self.prefixes
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|&(_, c)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_listed_prefix_decides() {
        let p = RestPolicy::new(vec![
            ("/rest/block/".into(), Class::Medium),
            ("/rest/block/notxdetails/".into(), Class::Cheap),
            ("/rest/chaininfo.json".into(), Class::Cheap),
        ]);
        assert_eq!(p.class("/rest/block/00.json"), Some(Class::Medium));
        assert_eq!(p.class("/rest/block/notxdetails/00.json"), Some(Class::Cheap));
        assert_eq!(p.class("/rest/chaininfo.json"), Some(Class::Cheap));
        assert_eq!(p.class("/rest/tx/00.json"), None);
        assert_eq!(p.class("/"), None);
        assert!(!RestPolicy::default().enabled());
    }

    #[test]
    fn prefixes_are_checked() {
        assert_eq!(RestPolicy::validate("/rest/tx/"), Ok(()));
        assert_eq!(RestPolicy::validate("/rest/"), Err(RestError::NotRest));
        assert_eq!(RestPolicy::validate("/api/tx/"), Err(RestError::NotRest));
        assert_eq!(RestPolicy::validate("/rest/../"), Err(RestError::BadChars));
        assert_eq!(RestPolicy::validate("/rest/tx?x"), Err(RestError::BadChars));
        assert!(is_jsonrpc_path("/") && is_jsonrpc_path("/wallet/w1"));
        assert!(!is_jsonrpc_path("/rest/tx/00.json") && !is_jsonrpc_path("/x"));
    }
}
