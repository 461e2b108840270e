//! The admin API's settings: where it listens, its token and its connection limits (shared with the CLI).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Admin clients are a handful of operators and scripts; more connections at once is a misbehaving client.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// Default of `[admin] max_connections_per_peer`: connections one address (or one uid, on a unix socket)
/// may hold at once. A CLI, a scraper and a probe need a few; more is one local process hoarding slots.
pub const DEFAULT_ADMIN_CONNECTIONS_PER_PEER: usize = 8;

/// Default admin listen address: loopback, and not a port any blockchain daemon uses.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9180";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminListen::Tcp(a) => write!(f, "{a}"),
            AdminListen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The admin bearer token. Its Debug form is redacted so a logged or printed config never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Shortest token accepted: anything shorter could be guessed by a local process trying tokens.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a token file was refused; never quotes the content.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("token file {} holds {len} characters; at least {MIN_TOKEN_LEN} are required", path.display())]
    TooShort { path: PathBuf, len: usize },
    #[error("token file {} must hold one token of visible ASCII characters without spaces", path.display())]
    NotVisibleAscii { path: PathBuf },
}

/// Reads a token file: content trimmed, at least [`MIN_TOKEN_LEN`] visible ASCII characters without
/// spaces (what fits an `Authorization: Bearer` header). Errors never quote the content.
pub fn read_token_file(path: &Path) -> Result<AdminToken, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let t = text.trim();
    if t.len() < MIN_TOKEN_LEN {
        return Err(TokenFileError::TooShort {
            path: path.to_path_buf(),
            len: t.len(),
        });
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenFileError::NotVisibleAscii {
            path: path.to_path_buf(),
        });
    }
    Ok(AdminToken(t.to_string()))
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub enabled: bool,
    pub listen: AdminListen,
    pub token_file: Option<PathBuf>,
    /// Present exactly when enabled.
    pub token: Option<AdminToken>,
    pub allow_remote: bool,
    /// `GET /metrics` answers without the bearer token.
    pub metrics_public: bool,
    /// Connections one peer may hold at once (at most [`ADMIN_MAX_CONNECTIONS`]).
    pub max_connections_per_peer: usize,
}
