//! Reloads asked for through the admin API and what they changed, shared by the server, the composition
//! root that applies them and the CLI.

/// A request to reload the configuration file (from `POST /v1/reload`); the answer goes back on it.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<ReloadSummary, String>>;

/// What a reload changed, by front name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
}
