//! Socket activation: listening sockets inherited from systemd (`gatehouse.socket`) or any supervisor that
//! speaks the same protocol (`sd_listen_fds(3)`), implemented by hand without libsystemd.
//!
//! Protocol: when `LISTEN_PID` equals our pid and `LISTEN_FDS=N`, descriptors `3 .. 3+N` are listening
//! sockets handed to this process; `LISTEN_FDNAMES` optionally names them (colon-separated). Because the
//! supervisor keeps its own copy of each socket, the port stays open while Gatehouse restarts: the kernel
//! queues new connections in the socket's backlog until the next process accepts them, so none is refused.
//!
//! [`init`] reads the variables once, takes ownership of the descriptors and removes the variables so that
//! children do not inherit them. [`take`] hands out the inherited socket bound to a given address (used by
//! `listen::bind`, the admin API and the cluster listener; [`take_unix`] for a unix-socket admin API);
//! [`close_unused`] closes, with a warning, any that nobody asked for.
//!
//! A live upgrade hands sockets over the same way: the previous process passes them over a unix socket
//! and the new one [`adopt`]s them into this pool, named by their use, before it binds anything.

use socket2::{SockRef, Type};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// An inherited listening socket that no front has claimed yet.
struct Inherited {
    fd: OwnedFd,
    /// Local address, from `getsockname`; None if it is not an IP stream socket.
    addr: Option<SocketAddr>,
    /// The path of a listening unix stream socket.
    path: Option<PathBuf>,
    name: Option<String>,
}

/// What [`init`] found. The mutex is held only to move descriptors in and out.
static INHERITED: OnceLock<Mutex<Vec<Inherited>>> = OnceLock::new();

/// Reads `LISTEN_PID` / `LISTEN_FDS` / `LISTEN_FDNAMES` once, takes the descriptors they announce and
/// removes the variables from the environment. Idempotent; later calls do nothing.
///
/// Call it early, while the process is still single-threaded (`gatehouse run` does so before starting the
/// runtime): removing environment variables races with `getenv` in other threads. `listen::bind` also
/// calls it, so library users who start a gateway without calling it still get their sockets.
pub fn init() {
    INHERITED.get_or_init(|| Mutex::new(read_env()));
}

fn read_env() -> Vec<Inherited> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    if pid.is_none() && fds.is_none() {
        return Vec::new();
    }
    // Whatever they say, the variables are meant for this process only: a child must not take them as
    // its own (it would fail the pid check anyway, but a stale variable is confusing in /proc/PID/environ).
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        tracing::warn!("socket activation: LISTEN_PID and LISTEN_FDS must both be set; ignoring them");
        return Vec::new();
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (e.g. we were started by a service that was itself activated).
        tracing::debug!(listen_pid = %pid, "socket activation: LISTEN_PID is not ours; ignoring");
        return Vec::new();
    }
    let n: RawFd = match fds.trim().parse() {
        Ok(n) if (0..=4096).contains(&n) => n,
        _ => {
            tracing::warn!(listen_fds = %fds, "socket activation: LISTEN_FDS is not a count; ignoring");
            return Vec::new();
        }
    };
    let mut names = names
        .map(|s| s.split(':').map(str::to_string).collect::<Vec<_>>())
        .unwrap_or_default();
    names.resize(n as usize, String::new());
    let mut out = Vec::new();
    for (raw, name) in (FIRST_FD..FIRST_FD + n).zip(names) {
        let name = (!name.is_empty()).then_some(name);
        // A descriptor number that is not open must not be wrapped in an OwnedFd (closing it later could
        // close an unrelated descriptor that reused the number).
        // SAFETY: F_GETFD only queries the descriptor table entry; no memory is passed.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
        if flags < 0 {
            tracing::warn!(
                fd = raw,
                name = name.as_deref(),
                "socket activation: announced descriptor is not open"
            );
            continue;
        }
        // SAFETY: ownership. By the sd_listen_fds protocol, descriptors 3..3+LISTEN_FDS are passed to the
        // process whose pid is LISTEN_PID, which we checked is this one, and nothing else in Gatehouse
        // refers to descriptors by number. We just checked this one is open. It is wrapped exactly once:
        // this function runs once per process (inside OnceLock::get_or_init) and the environment variables
        // that announce the descriptors are removed above, so no later reader can wrap them again. From here
        // on the OwnedFd is the only owner and closes the descriptor when dropped.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Like sd_listen_fds(): the sockets are ours alone, not for programs we might exec.
        // SAFETY: F_SETFD on a descriptor we own; no memory is passed.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        let (addr, path) = listening_addr(&fd);
        out.push(Inherited { fd, addr, path, name });
    }
    if !out.is_empty() {
        let list: Vec<String> = out
            .iter()
            .map(|i| {
                i.addr
                    .map_or_else(|| format!("fd {}", i.fd.as_raw_fd()), |a| a.to_string())
            })
            .collect();
        tracing::info!(sockets = %list.join(", "), "socket activation: inherited listening sockets");
    }
    out
}

/// The local address of `fd` if it is a listening TCP socket, or its path if it is a listening unix one.
fn listening_addr(fd: &OwnedFd) -> (Option<SocketAddr>, Option<PathBuf>) {
    let sock = SockRef::from(fd);
    let ok = sock.r#type().ok() == Some(Type::STREAM) && sock.is_listener().unwrap_or(false);
    if !ok {
        tracing::warn!(
            fd = fd.as_raw_fd(),
            "socket activation: inherited descriptor is not a listening stream socket; it will be closed"
        );
        return (None, None);
    }
    let local = sock.local_addr().ok();
    (
        local.as_ref().and_then(|a| a.as_socket()),
        local.as_ref().and_then(|a| a.as_pathname()).map(Path::to_path_buf),
    )
}

/// Adds listening sockets handed over by a previous Gatehouse process (a live upgrade) to the pool, each
/// under the name the sender gave it. They are then taken by address like systemd's.
pub fn adopt(sockets: Vec<(OwnedFd, String)>) {
    init();
    let Some(m) = INHERITED.get() else { return };
    let mut list = m.lock().unwrap_or_else(|e| e.into_inner());
    for (fd, name) in sockets {
        let (addr, path) = listening_addr(&fd);
        tracing::debug!(
            name,
            addr = addr.map(tracing::field::display),
            "upgrade: adopted a listening socket"
        );
        list.push(Inherited {
            fd,
            addr,
            path,
            name: Some(name),
        });
    }
}

/// Takes the inherited listening unix socket bound to `path`, if there is one.
pub fn take_unix(path: &Path) -> Option<std::os::unix::net::UnixListener> {
    init();
    let mut list = INHERITED.get()?.lock().unwrap_or_else(|e| e.into_inner());
    let i = list.iter().position(|s| s.path.as_deref() == Some(path))?;
    let s = list.swap_remove(i);
    tracing::debug!(path = %path.display(), name = s.name.as_deref(), "using an inherited unix socket");
    Some(s.fd.into())
}

/// Takes the inherited listening socket bound to `addr` (same IP and port), if there is one.
///
/// An IPv6 socket that is not v6-only (systemd's default `BindIPv6Only=default` makes `[::]:P` dual-stack)
/// is still used, with a warning: it also receives IPv4 clients, so a separate `0.0.0.0:P` cannot exist.
pub fn take(addr: SocketAddr) -> Option<std::net::TcpListener> {
    init();
    let mut list = INHERITED.get()?.lock().unwrap_or_else(|e| e.into_inner());
    let i = list.iter().position(|s| {
        s.addr
            .is_some_and(|a| a.ip() == addr.ip() && a.port() == addr.port() && addr.port() != 0)
    })?;
    let s = list.swap_remove(i);
    let sock = socket2::Socket::from(s.fd);
    if addr.is_ipv6() && !sock.only_v6().unwrap_or(true) {
        tracing::warn!(%addr, "socket activation: inherited IPv6 socket is dual-stack; set BindIPv6Only=ipv6-only in the .socket unit");
    }
    tracing::debug!(%addr, name = s.name.as_deref(), "socket activation: using inherited socket");
    Some(sock.into())
}

/// Closes inherited sockets that no listen address claimed, each with a warning. Call once every front is
/// bound. (systemd keeps its own copy, so the port stays open and queues connections nobody accepts: the
/// .socket unit and the config should list the same addresses.)
pub fn close_unused() {
    let Some(m) = INHERITED.get() else { return };
    let unused = std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner()));
    for s in unused {
        tracing::warn!(
            fd = s.fd.as_fd().as_raw_fd(),
            addr = s.addr.map(tracing::field::display),
            path = s.path.as_ref().map(|p| tracing::field::display(p.display())),
            name = s.name.as_deref(),
            "inherited socket: no front listens on this inherited socket, nor the admin API or the cluster; closing it (list the same addresses in the config and in gatehouse.socket)"
        );
        drop(s.fd);
    }
}
