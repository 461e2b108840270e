//! Live upgrade: the running process starts a new binary and hands it its listening sockets, so the new
//! one accepts at once and the old one drains its own sessions without a single connection waiting.
//!
//! The two talk over a unix socket pair, one JSON object per line; the successor finds its end through
//! `GATEHOUSE_UPGRADE_FD`. In order:
//!
//! 1. old → new, with every listening socket attached (`SCM_RIGHTS`): their names (`front:NAME`,
//!    `admin`, `cluster`). The old process keeps accepting throughout.
//! 2. new: validates its configuration (a bad one is reported back and the new process exits), adopts
//!    the sockets into the socket-activation pool (so it binds nothing twice: a listen address already
//!    bound is taken from the pool, a new one is bound), says `validated`.
//! 3. old: flushes its ban journal and lets go of it (the journal has one writer at a time), says
//!    `journal_released`; from now on each ban or lift it makes goes to the new process as a journal
//!    line, which the new one journals and applies (while the old one drains, too).
//! 4. new: replays the journal, binds, accepts, says `ready`.
//! 5. old: stops accepting (fronts, admin API, cluster listener), tells systemd the new main PID, says
//!    `promoted`, and drains its own sessions under `drain_deadline`.
//!
//! Any failure before `ready` (the binary does not start, exits, refuses its configuration, cannot bind,
//! or stays silent past `runtime.upgrade_timeout`) stops the new process; the old one takes its journal
//! back if it had let go of it, and serves on.

use super::Running;
use crate::admin::reload::UpgradeSummary;
use crate::state::bans::BanTable;
use crate::state::journal::{encode_line, parse_line};
use crate::sys::{handover, sdnotify};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Longest line either side accepts: a journal line is far shorter, a listener list too.
const MAX_LINE: usize = 64 * 1024;

/// One line of the hand-over conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Msg {
    /// old → new, carrying the descriptors: their names, in order.
    Listeners { names: Vec<String> },
    /// new → old: the configuration is valid and the sockets adopted.
    Validated,
    /// old → new: the ban journal is free to take.
    JournalReleased,
    /// new → old: accepting on every listener.
    Ready { pid: u32 },
    /// new → old: it cannot start, and why.
    Failed { reason: String },
    /// old → new: a ban or lift made since the journal was released, as a journal line.
    Statement { line: String },
    /// old → new: systemd was told the new main PID; the service is the new process's now.
    Promoted,
}

impl Msg {
    fn line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("plain enum serialises");
        v.push(b'\n');
        v
    }

    fn parse(line: &[u8]) -> Result<Msg, TakeOverError> {
        serde_json::from_slice(line).map_err(TakeOverError::Unreadable)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot find this process's binary on disk: {0}")]
    OwnBinary(std::io::Error),
    #[error("cannot start {binary}: {source}")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("hand-over socket: {0}")]
    Channel(std::io::Error),
    #[error("the new process did not start: {0}")]
    Refused(String),
    #[error("the new process exited ({0}) before it was ready")]
    Exited(std::process::ExitStatus),
    #[error("the new process did not report ready within {0:?}; it was stopped")]
    Timeout(Duration),
    #[error("the new process broke the hand-over: {0}")]
    Protocol(String),
}

/// Why the new process could not take over from the previous one (it tells the previous one, and exits).
#[derive(Debug, thiserror::Error)]
pub enum TakeOverError {
    #[error(transparent)]
    Env(#[from] handover::EnvFdError),
    #[error("hand-over socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the previous process closed the hand-over socket")]
    Closed,
    #[error("a hand-over line is longer than {MAX_LINE} bytes or cut off")]
    BadLine,
    #[error("unreadable hand-over message: {0}")]
    Unreadable(serde_json::Error),
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error("{names} socket names for {fds} sockets")]
    Count { names: usize, fds: usize },
}

/// The path this process's binary is installed at (where an upgrade puts the new one): the target of
/// `/proc/self/exe`, without the " (deleted)" the kernel appends once the file was replaced.
pub fn own_binary() -> std::io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::fs::read_link("/proc/self/exe")?;
    Ok(match p.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(stem) => PathBuf::from(std::ffi::OsStr::from_bytes(stem)),
        None => p,
    })
}

/// What the old process keeps writing to its successor after the hand-over: its own bans and lifts, until
/// `done` (the drain is over), then whatever is still queued.
async fn forward(
    mut w: tokio::net::unix::OwnedWriteHalf,
    bans: Arc<BanTable>,
    mut feed: tokio::sync::broadcast::Receiver<crate::state::bans::BanChange>,
    done: tokio_util::sync::CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            c = feed.recv() => c,
            _ = done.cancelled() => {
                while let Ok(c) = feed.try_recv() {
                    if w.write_all(&statement_msg(&c.statement()).line()).await.is_err() {
                        return;
                    }
                }
                let _ = w.shutdown().await;
                return;
            }
        };
        let lines: Vec<Msg> = match next {
            Ok(change) => vec![statement_msg(&change.statement())],
            // Missed some: send everything in force; the successor keeps what outranks its own.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                bans.statements().iter().map(statement_msg).collect()
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        for m in lines {
            if w.write_all(&m.line()).await.is_err() {
                return;
            }
        }
    }
}

fn statement_msg(s: &crate::state::bans::Statement) -> Msg {
    let line = encode_line(s);
    Msg::Statement {
        line: String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line)).into_owned(),
    }
}

impl Running {
    /// The listening sockets a successor takes over, named by their use.
    fn handover_sockets(&self) -> Vec<(String, BorrowedFd<'_>)> {
        let mut out = Vec::new();
        for (name, run) in &self.fronts {
            for s in &run.sockets {
                out.push((format!("front:{name}"), s.as_fd()));
            }
        }
        if let Some(fd) = self.admin.as_ref().and_then(|a| a.socket()) {
            out.push(("admin".to_string(), fd));
        }
        if let Some(fd) = self.cluster.as_ref().and_then(|c| c.socket()) {
            out.push(("cluster".to_string(), fd));
        }
        out
    }

    /// Starts `binary` (default: this process's own, as installed now) with `args` as its successor
    /// and hands it every listening socket. On success the successor accepts on all of them, this
    /// process has stopped accepting and told systemd the new main PID, and only draining is left (call
    /// [`Running::shutdown`]). On failure this process serves on as before.
    pub async fn upgrade(
        &mut self,
        binary: Option<PathBuf>,
        args: Vec<OsString>,
    ) -> Result<UpgradeSummary, UpgradeError> {
        let binary = match binary {
            Some(b) => b,
            None => own_binary().map_err(UpgradeError::OwnBinary)?,
        };
        tracing::info!(binary = %binary.display(), "upgrade: starting the new process");
        let (ours, theirs) = UnixStream::pair().map_err(UpgradeError::Channel)?;
        let inherited = handover::inheritable_copy(theirs.as_fd()).map_err(UpgradeError::Channel)?;
        let mut cmd = std::process::Command::new(&binary);
        cmd.args(&args)
            .env(handover::ENV_FD, inherited.as_raw_fd().to_string())
            // Its watchdog pings are its own once it is the main process; systemd's pid is ours.
            .env_remove("WATCHDOG_PID")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .stdin(std::process::Stdio::null());
        let spawned = cmd.spawn();
        drop(inherited);
        drop(theirs);
        let mut child = spawned.map_err(|source| UpgradeError::Spawn {
            binary: binary.clone(),
            source,
        })?;
        let mut released = None;
        let result = self.converse(ours, &mut child, &mut released).await;
        match result {
            Ok((pid, w, feed)) => {
                // Reaped by a thread once it ends (after its own upgrade, say), so it leaves no zombie
                // while this process drains.
                std::thread::spawn(move || child.wait());
                self.stop_accepting().await;
                if let Some(a) = self.admin.as_mut() {
                    a.hand_over();
                }
                if let Some(c) = self.cluster.take() {
                    c.shutdown();
                }
                if let Err(e) = sdnotify::hand_over(pid) {
                    tracing::warn!(error = %e, "upgrade: cannot tell systemd the new main PID");
                }
                let mut w = w;
                let _ = w.write_all(&Msg::Promoted.line()).await;
                let done = tokio_util::sync::CancellationToken::new();
                let task = tokio::spawn(forward(w, self.bans().clone(), feed, done.clone()));
                self.successor = Some((done, task));
                tracing::info!(pid, binary = %binary.display(), "upgrade: the new process accepts on every listener; this one stops accepting and drains");
                Ok(UpgradeSummary { pid, binary })
            }
            Err(e) => {
                let _ = child.kill();
                let _ = exited(&mut child, Duration::from_secs(5)).await;
                if let Some(path) = released {
                    if let Err(je) = self.bans().reattach_journal(&path) {
                        tracing::error!(error = %je, "upgrade: cannot take the ban journal back; bans are held in memory only");
                    }
                }
                tracing::error!(error = %e, binary = %binary.display(), "upgrade failed; this process serves on");
                Err(e)
            }
        }
    }

    /// Steps 1 to 4 from the old side: sockets out, journal released on `validated`, statements
    /// forwarded meanwhile, until `ready`.
    async fn converse(
        &self,
        ours: UnixStream,
        child: &mut std::process::Child,
        released: &mut Option<PathBuf>,
    ) -> Result<
        (
            u32,
            tokio::net::unix::OwnedWriteHalf,
            tokio::sync::broadcast::Receiver<crate::state::bans::BanChange>,
        ),
        UpgradeError,
    > {
        let sockets = self.handover_sockets();
        let names: Vec<String> = sockets.iter().map(|(n, _)| n.clone()).collect();
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
        let sent = handover::send_with_fds(&ours, &Msg::Listeners { names }.line(), &fds);
        drop(sockets);
        ours.set_nonblocking(true).map_err(UpgradeError::Channel)?;
        let (r, mut w) = tokio::net::UnixStream::from_std(ours)
            .map_err(UpgradeError::Channel)?
            .into_split();
        let mut lines = BufReader::new(r);
        let mut buf = Vec::new();
        if let Err(e) = sent {
            // A successor that refused its config may have said so and gone before the sockets reached it:
            // its reason, still readable, is the answer, not the broken pipe.
            return Err(last_words(&mut lines, &mut buf)
                .await
                .map_or(UpgradeError::Channel(e), UpgradeError::Refused));
        }
        let mut feed = self.bans().subscribe();
        let deadline = tokio::time::Instant::now() + self.upgrade_timeout;
        loop {
            let has_journal_out = released.is_some();
            // `buf` is cleared only after a whole line: a read that another branch interrupted has left
            // its bytes there, and the next read goes on from them.
            tokio::select! {
                biased;
                r = read_line(&mut lines, &mut buf) => {
                    let whole = r.map_err(UpgradeError::Channel)?;
                    let msg = std::mem::take(&mut buf);
                    match whole {
                        false => return Err(exit_reason(child).await),
                        true => match Msg::parse(&msg).map_err(|e| UpgradeError::Protocol(e.to_string()))? {
                            Msg::Validated => {
                                *released = self.bans().release_journal();
                                if let Err(e) = w.write_all(&Msg::JournalReleased.line()).await {
                                    return Err(last_words(&mut lines, &mut buf)
                                        .await
                                        .map_or(UpgradeError::Channel(e), UpgradeError::Refused));
                                }
                            }
                            Msg::Ready { pid } => return Ok((pid, w, feed)),
                            Msg::Failed { reason } => return Err(UpgradeError::Refused(reason)),
                            other => return Err(UpgradeError::Protocol(format!("unexpected {other:?}"))),
                        },
                    }
                }
                change = feed.recv(), if has_journal_out => {
                    let msgs: Vec<Msg> = match change {
                        Ok(c) => vec![statement_msg(&c.statement())],
                        Err(_) => self.bans().statements().iter().map(statement_msg).collect(),
                    };
                    for m in msgs {
                        w.write_all(&m.line()).await.map_err(UpgradeError::Channel)?;
                    }
                }
                status = exited(child, Duration::MAX) => {
                    let Some(status) = status else {
                        return Err(UpgradeError::Protocol("its exit status cannot be read".to_string()));
                    };
                    return Err(last_words(&mut lines, &mut buf)
                        .await
                        .map_or(UpgradeError::Exited(status), UpgradeError::Refused));
                }
                _ = tokio::time::sleep_until(deadline) => return Err(UpgradeError::Timeout(self.upgrade_timeout)),
            }
        }
    }
}

/// The reason a successor gave before it went, if it gave one (waited for briefly).
async fn last_words<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut R, buf: &mut Vec<u8>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match read_line(lines, buf).await {
                Ok(true) => {
                    if let Ok(Msg::Failed { reason }) = Msg::parse(&std::mem::take(buf)) {
                        return Some(reason);
                    }
                }
                _ => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Why the successor hung up: its exit status (waited for briefly), or a protocol error.
async fn exit_reason(child: &mut std::process::Child) -> UpgradeError {
    match exited(child, Duration::from_secs(2)).await {
        Some(status) => UpgradeError::Exited(status),
        None => UpgradeError::Protocol("it closed the hand-over socket".to_string()),
    }
}

/// The child's exit status once it has exited, polled (a child's exit is no event the runtime can
/// wait on without tokio's process driver); None after `limit` or if it cannot be read.
async fn exited(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = tokio::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if start.elapsed() < limit => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => return None,
        }
    }
}

/// Reads one line (without its newline) into `buf`, after what an interrupted call left there; false at
/// end of stream. Lines longer than [`MAX_LINE`] are an error. Cancel-safe: bytes read before a cancel
/// stay in `buf`.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    let room = (MAX_LINE + 1).saturating_sub(buf.len()) as u64;
    let n = (&mut *r).take(room).read_until(b'\n', buf).await?;
    if n == 0 && buf.is_empty() {
        return Ok(false);
    }
    if buf.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "hand-over line too long or cut off",
        ));
    }
    buf.pop();
    Ok(true)
}

/// The new process's side: the previous process that started it.
pub struct Predecessor {
    sock: UnixStream,
}

impl Predecessor {
    /// The previous process, when this one was started as its successor. Reads and removes
    /// `GATEHOUSE_UPGRADE_FD`: call it while the process is single-threaded.
    pub fn from_env() -> Result<Option<Predecessor>, TakeOverError> {
        Ok(handover::take_env_fd()?.map(|sock| Predecessor { sock }))
    }

    /// Tells the previous process why this one cannot start (it then serves on). Best effort: it may be
    /// gone.
    pub fn refuse(&mut self, reason: &str) {
        let _ = self.sock.write_all(
            &Msg::Failed {
                reason: reason.to_string(),
            }
            .line(),
        );
    }

    /// Steps 1 to 3 from the new side, before the gateway starts: takes the listening sockets into the
    /// socket-activation pool, says the configuration is valid, and waits until the ban journal is free.
    /// Returns how many sockets were adopted.
    pub fn take_over(&mut self, timeout: Duration) -> Result<usize, TakeOverError> {
        self.sock.set_read_timeout(Some(timeout))?;
        let mut buf = vec![0u8; MAX_LINE];
        let (n, fds) = handover::recv_with_fds(&self.sock, &mut buf)?;
        let line = buf[..n].strip_suffix(b"\n").ok_or(TakeOverError::BadLine)?;
        let names = match Msg::parse(line)? {
            Msg::Listeners { names } => names,
            other => {
                return Err(TakeOverError::Unexpected {
                    expected: "the listening sockets",
                    got: format!("{other:?}"),
                })
            }
        };
        if names.len() != fds.len() {
            return Err(TakeOverError::Count {
                names: names.len(),
                fds: fds.len(),
            });
        }
        let count = fds.len();
        crate::sys::activation::adopt(fds.into_iter().zip(names).collect());
        self.sock.write_all(&Msg::Validated.line())?;
        match self.read_line_blocking()? {
            Msg::JournalReleased => Ok(count),
            other => Err(TakeOverError::Unexpected {
                expected: "the journal",
                got: format!("{other:?}"),
            }),
        }
    }

    /// One line, byte by byte (so nothing is read past it before the socket goes to the runtime).
    fn read_line_blocking(&mut self) -> Result<Msg, TakeOverError> {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        loop {
            match self.sock.read(&mut b)? {
                0 => return Err(TakeOverError::Closed),
                _ if b[0] == b'\n' => return Msg::parse(&line),
                _ if line.len() < MAX_LINE => line.push(b[0]),
                _ => return Err(TakeOverError::BadLine),
            }
        }
    }

    /// Step 4 and after, on the runtime once the gateway accepts: says ready, then journals and applies
    /// the previous process's bans and lifts for as long as it sends them. Resolves `promoted` when the
    /// previous process has made this one systemd's main process.
    pub fn ready(self, bans: Arc<BanTable>) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
        self.sock.set_read_timeout(None)?;
        self.sock.set_nonblocking(true)?;
        let (r, mut w) = tokio::net::UnixStream::from_std(self.sock)?.into_split();
        let (promoted_tx, promoted) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            if let Err(e) = w
                .write_all(
                    &Msg::Ready {
                        pid: std::process::id(),
                    }
                    .line(),
                )
                .await
            {
                tracing::error!(error = %e, "upgrade: cannot report ready to the previous process");
                return;
            }
            let mut promoted_tx = Some(promoted_tx);
            let mut lines = BufReader::new(r);
            let mut buf = Vec::new();
            let mut adopted = 0usize;
            loop {
                buf.clear();
                match read_line(&mut lines, &mut buf).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "upgrade: hand-over socket");
                        break;
                    }
                }
                match Msg::parse(&buf) {
                    Ok(Msg::Statement { line }) => match parse_line(line.as_bytes()) {
                        Ok(s) => match bans.adopt_from_predecessor(vec![s]) {
                            Ok(n) => adopted += n,
                            Err(e) => {
                                tracing::error!(error = %e, "upgrade: a ban of the previous process not taken over")
                            }
                        },
                        Err(e) => tracing::warn!(error = %e, "upgrade: unreadable statement from the previous process"),
                    },
                    Ok(Msg::Promoted) => {
                        if let Some(tx) = promoted_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(other) => {
                        tracing::warn!(message = ?other, "upgrade: unexpected message from the previous process")
                    }
                    Err(e) => tracing::warn!(error = %e, "upgrade: hand-over socket"),
                }
            }
            tracing::info!(bans_taken_over = adopted, "upgrade: the previous process has finished");
        });
        Ok(promoted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_one_line_each() {
        for m in [
            Msg::Listeners {
                names: vec!["front:tls".into(), "admin".into()],
            },
            Msg::Validated,
            Msg::JournalReleased,
            Msg::Ready { pid: 42 },
            Msg::Failed {
                reason: "gatehouse.toml:3: x: y\nz".into(),
            },
            Msg::Promoted,
        ] {
            let line = m.line();
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "{m:?}");
            assert_eq!(Msg::parse(&line[..line.len() - 1]).unwrap(), m);
        }
        assert!(Msg::parse(b"{\"ready\":{\"pid\":1,\"extra\":2}}").is_err());
    }

    #[test]
    fn own_binary_is_a_file() {
        assert!(own_binary().unwrap().is_file());
    }
}
