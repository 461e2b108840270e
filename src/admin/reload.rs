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

/// A request to hand the listeners over to a new process (from `POST /v1/upgrade`): the binary to start
/// (None: this process's own, as installed on disk now) and where the outcome goes.
pub struct UpgradeRequest {
    pub binary: Option<std::path::PathBuf>,
    pub done: tokio::sync::oneshot::Sender<Result<UpgradeSummary, UpgradeFailure>>,
}

/// Why an upgrade did not happen; this process goes on serving. The API answers with its text.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct UpgradeFailure(Box<dyn std::error::Error + Send + Sync>);

impl UpgradeFailure {
    pub fn new(cause: impl std::error::Error + Send + Sync + 'static) -> UpgradeFailure {
        UpgradeFailure(Box::new(cause))
    }
}

/// The process that took over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeSummary {
    pub pid: u32,
    pub binary: std::path::PathBuf,
}
