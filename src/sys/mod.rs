//! Operating-system glue, the only place with `unsafe`: socket activation, descriptor passing for live
//! upgrades, sd_notify, the journal's fcntl lock, the open-file limit and thread priority.

pub mod activation;
pub mod handover;
pub mod journal_lock;
pub mod priority;
pub mod rlimit;
pub mod sdnotify;
