//! Gatehouse: a hardened frontline gateway for Electrum indexers and blockchain peer ports.

pub mod admin;
pub mod app;
pub mod cluster;
pub mod config;
pub mod front;
pub mod guard;
pub mod listen;
pub mod state;
pub mod sys;
pub mod telemetry;
pub mod upstream;
pub mod wire;

pub use admin::reload::{ReloadRequest, ReloadSummary};
pub use app::demo;
pub use app::{DrainReport, Gatehouse, Running, StartError, TokioClock};
