//! Operating-system glue, the only place with `unsafe`: socket activation, descriptor passing for live
//! upgrades, sd_notify, the journal's fcntl lock and the open-file limit.

pub mod activation;
pub mod handover;
pub mod journal_lock;
pub mod rlimit;
pub mod sdnotify;
