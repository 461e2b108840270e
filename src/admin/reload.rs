//! Reloads asked for through the admin API and what they changed, shared by the server, the composition
//! root that applies them and the CLI.

/// A request to reload the configuration file (from `POST /v1/reload`); the answer goes back on it.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<ReloadSummary, ReloadError>>;

/// Why a reload was refused; the running configuration stays in force. The cause is the configuration's
/// own error (file, line, key) or a new front that could not start; the API answers with its text.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ReloadError(Box<dyn std::error::Error + Send + Sync>);

impl ReloadError {
    pub fn new(cause: impl std::error::Error + Send + Sync + 'static) -> ReloadError {
        ReloadError(Box::new(cause))
    }
}

/// What a reload changed, by front name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
}
