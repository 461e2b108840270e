//! Credentials on both sides of the API front: the node's (held by the gateway, injected as `Basic`) and
//! the clients' own users, checked against bitcoind-style `rpcauth` entries (`salt$hex(HMAC-SHA256(key =
//! salt, message = password))`).

use aws_lc_rs::hmac;
use base64::Engine;
use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0} is empty")]
    Empty(PathBuf),
    #[error("the cookie file {0} holds no `user:password` line")]
    BadCookie(PathBuf),
    #[error("the node credentials are not a valid header value")]
    BadHeader,
    #[error("must be `salt$hash` with a 64-digit hex hash")]
    BadSaltedHash,
}

/// How the gateway authenticates to the node. Debug never prints the secret.
#[derive(Clone)]
pub enum BackendAuth {
    /// `Basic` header value, built once from `backend_user` and the password file.
    Fixed(String),
    /// bitcoind's `.cookie`, read per request: the node writes a new one each time it starts.
    Cookie(PathBuf),
}

impl fmt::Debug for BackendAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAuth::Fixed(_) => f.write_str("Fixed(<redacted>)"),
            BackendAuth::Cookie(p) => f.debug_tuple("Cookie").field(p).finish(),
        }
    }
}

fn basic(user_pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass))
}

impl BackendAuth {
    /// `user` with the first line of `password_file`.
    pub fn from_password_file(user: &str, password_file: PathBuf) -> Result<BackendAuth, AuthError> {
        let text = std::fs::read_to_string(&password_file).map_err(|source| AuthError::Read {
            path: password_file.clone(),
            source,
        })?;
        let password = text.lines().next().unwrap_or("").trim_end();
        if password.is_empty() {
            return Err(AuthError::Empty(password_file));
        }
        Ok(BackendAuth::Fixed(basic(&format!("{user}:{password}"))))
    }

    /// The `Authorization` header value for the next request to the node.
    pub fn header(&self) -> Result<String, AuthError> {
        match self {
            BackendAuth::Fixed(h) => Ok(h.clone()),
            BackendAuth::Cookie(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
                    path: path.clone(),
                    source,
                })?;
                let line = text.lines().next().unwrap_or("").trim_end();
                if !line.contains(':') {
                    return Err(AuthError::BadCookie(path.clone()));
                }
                Ok(basic(line))
            }
        }
    }
}

/// A stored secret: `salt$hex(HMAC-SHA256(key = salt, message = secret))`, bitcoind's `rpcauth` shape.
/// The secret itself is never kept.
#[derive(Clone)]
struct SaltedHash {
    salt: String,
    hash: [u8; 32],
}

impl SaltedHash {
    fn parse(entry: &str) -> Result<SaltedHash, AuthError> {
        let (salt, hex) = entry.split_once('$').ok_or(AuthError::BadSaltedHash)?;
        if salt.is_empty() || hex.len() != 64 {
            return Err(AuthError::BadSaltedHash);
        }
        let mut hash = [0u8; 32];
        for (i, b) in hash.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or(AuthError::BadSaltedHash)?;
            *b = u8::from_str_radix(pair, 16).map_err(|_| AuthError::BadSaltedHash)?;
        }
        Ok(SaltedHash {
            salt: salt.to_string(),
            hash,
        })
    }

    /// Whether `secret` matches, compared in constant time.
    fn verify(&self, secret: &str) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.salt.as_bytes());
        hmac::verify(&key, secret.as_bytes(), &self.hash).is_ok()
    }
}

/// One client user: its `rpcauth` entry and the methods it may call.
#[derive(Clone)]
pub struct User {
    pub name: String,
    secret: SaltedHash,
    pub methods: HashSet<String>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("methods", &self.methods)
            .finish_non_exhaustive()
    }
}

impl User {
    pub fn new(name: String, rpcauth: &str, methods: HashSet<String>) -> Result<User, AuthError> {
        Ok(User {
            name,
            secret: SaltedHash::parse(rpcauth)?,
            methods,
        })
    }

    /// Whether `password` matches, compared in constant time.
    pub fn verify(&self, password: &str) -> bool {
        self.secret.verify(password)
    }
}

/// One bearer token a client presents as `Authorization: Bearer <token>`: its name (for the operator),
/// its salted hash and the methods it may call.
#[derive(Clone)]
pub struct Token {
    pub name: String,
    secret: SaltedHash,
    pub methods: HashSet<String>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("methods", &self.methods)
            .finish_non_exhaustive()
    }
}

impl Token {
    pub fn new(name: String, token_hash: &str, methods: HashSet<String>) -> Result<Token, AuthError> {
        Ok(Token {
            name,
            secret: SaltedHash::parse(token_hash)?,
            methods,
        })
    }

    /// The entry whose secret `token` is. Every entry is checked, each in constant time, so the time taken
    /// does not depend on where (or whether) the match is.
    pub fn find<'a>(tokens: &'a [Token], token: &str) -> Option<&'a Token> {
        let mut found = None;
        for t in tokens {
            if t.secret.verify(token) && found.is_none() {
                found = Some(t);
            }
        }
        found
    }
}

/// A new random token (32 bytes, hex) and its `salt$hash` entry for `token_hash`.
pub fn new_token() -> (String, String) {
    use rand_core::{OsRng, RngCore};
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut secret = [0u8; 32];
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut secret);
    OsRng.fill_bytes(&mut salt);
    let (token, salt) = (hex(&secret), hex(&salt));
    let entry = format!("{salt}${}", hex(&hmac_sha256(salt.as_bytes(), token.as_bytes())));
    (token, entry)
}

/// HMAC-SHA256 (RFC 2104), as bitcoind's `rpcauth` uses it.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The token of a `Bearer` `Authorization` header value; None when it is not one.
pub fn parse_bearer(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

/// The user and password of a `Basic` `Authorization` header value; None when it is not one.
pub fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn rpcauth_entries_verify_their_password_only() {
        let mac = hmac_sha256(b"cafe", b"secret");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        let u = User::new("alice".into(), &format!("cafe${hex}"), HashSet::new()).expect("valid entry");
        assert!(u.verify("secret"));
        assert!(!u.verify("secreT"));
        assert!(User::new("x".into(), "nodollar", HashSet::new()).is_err());
        assert!(User::new("x".into(), "s$zz", HashSet::new()).is_err());
    }

    #[test]
    fn basic_headers_parse() {
        assert_eq!(
            parse_basic(b"Basic YWxpY2U6cHc6eA=="),
            Some(("alice".to_string(), "pw:x".to_string()))
        );
        assert_eq!(parse_basic(b"Bearer abc"), None);
        assert_eq!(parse_bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(parse_bearer(b"bearer  abc "), Some("abc"));
        assert_eq!(parse_bearer(b"Basic abc"), None);
        assert_eq!(parse_bearer(b"Bearer "), None);
    }

    #[test]
    fn new_tokens_match_their_entries_only() {
        let (token, entry) = new_token();
        let (other, _) = new_token();
        assert_eq!(token.len(), 64);
        let t = Token::new("svc".into(), &entry, HashSet::new()).expect("valid entry");
        let tokens = [t];
        assert!(Token::find(&tokens, &token).is_some());
        assert!(Token::find(&tokens, &other).is_none());
    }
}
