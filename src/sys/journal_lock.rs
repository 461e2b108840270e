//! One writer per ban journal. Two gateways appending to and compacting the same journal would lose
//! bans: a compaction renames a new file over the journal, and the other process goes on appending to
//! the old, unlinked one. So each journal has a lock file beside it (`<journal>.lock`), write-locked by
//! the process that owns the journal for as long as it runs.
//!
//! POSIX record locks (`fcntl`), not `flock`: they belong to the process, so reopening a journal inside
//! the same process (a gateway restarted in-process, as tests do) never waits for itself, while a second
//! process does. The lock goes with the process, whatever way it exits, `kill -9` included. A process
//! that finds the journal taken waits for it, saying which process holds it: that is the upgrade path
//! where a new gateway starts while the old one drains, and it starts serving as soon as the old one is
//! gone (connections meanwhile queue in the listen backlog of sockets systemd keeps open).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a waiting process retries.
const RETRY: Duration = Duration::from_millis(100);

/// Held while the journal is in use; dropping it (or exiting) releases the lock.
#[derive(Debug)]
pub struct JournalLock {
    _file: File,
}

/// The lock file's path: the journal's name with `.lock` appended.
pub fn lock_path(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

fn whole_file_lock(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0, // to the end of the file, however long it grows
        l_pid: 0,
    }
}

/// Tries to write-lock `f`: Ok(None) when locked, Ok(Some(pid)) when another process holds it.
fn try_lock(f: &File) -> std::io::Result<Option<libc::pid_t>> {
    let fl = whole_file_lock(libc::F_WRLCK);
    // SAFETY: the descriptor belongs to `f`, which outlives the call; `fl` is a fully initialised
    // `struct flock` that F_SETLK only reads, and it lives until the call returns. fcntl touches no
    // other memory of ours.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl as *const libc::flock) } == 0 {
        return Ok(None);
    }
    let e = std::io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
        return Err(e);
    }
    let mut probe = whole_file_lock(libc::F_WRLCK);
    // SAFETY: as above; F_GETLK writes only into `probe`, which is exclusively borrowed for the call.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut probe as *mut libc::flock) };
    // The holder may have let go between the two calls; 0 then means "retry".
    Ok(Some(if r == 0 && probe.l_type != libc::F_UNLCK as libc::c_short {
        probe.l_pid
    } else {
        0
    }))
}

/// Opens (creating) the journal's lock file; fails where the journal itself could not be opened.
pub fn open(journal: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lock_path(journal))
}

/// Takes the journal's lock through its lock `file`, waiting (and saying so) while another process holds it.
pub fn lock(file: File, journal: &Path) -> std::io::Result<JournalLock> {
    let mut waited = false;
    loop {
        match try_lock(&file)? {
            None => {
                if waited {
                    tracing::info!(journal = %journal.display(), "ban journal lock taken; going on");
                }
                return Ok(JournalLock { _file: file });
            }
            Some(pid) => {
                if !waited {
                    tracing::warn!(
                        journal = %journal.display(),
                        holder_pid = pid,
                        "ban journal in use by another process; waiting for it to exit (two gateways must not share a journal)"
                    );
                    waited = true;
                }
                std::thread::sleep(RETRY);
            }
        }
    }
}
