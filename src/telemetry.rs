//! Logging setup: human lines on a terminal, JSON lines for log shippers, to stderr or to a file that
//! `SIGUSR1` reopens (for logrotate); Prometheus metrics in [`metrics`].

pub mod budget;
pub mod log_gate;
pub mod metrics;
pub mod peer;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriter};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Installs the global subscriber writing to stderr. `RUST_LOG` overrides the configured level when set,
/// so an operator can raise verbosity for one run without editing the config.
pub fn init(format: &LogFormat, level: &str) {
    install(format, level, None);
}

/// Like [`init`], but writes to `file` when given (appending, created with mode 0640 before the umask).
/// Returns the handle that [`LogFile::reopen`]s it; an unopenable file is an error naming the path and
/// leaves no subscriber installed.
pub fn init_with_file(format: &LogFormat, level: &str, file: Option<&Path>) -> io::Result<Option<LogFile>> {
    let log = file.map(LogFile::open).transpose()?;
    install(format, level, log.clone());
    Ok(log)
}

fn install(format: &LogFormat, level: &str, file: Option<LogFile>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = file.is_none() && io::IsTerminal::is_terminal(&io::stderr());
    let writer = match file {
        Some(f) => BoxMakeWriter::new(f),
        None => BoxMakeWriter::new(io::stderr),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Human => builder.with_ansi(ansi).try_init(),
    };
    // A second init (tests, demo inside a process that already logs) keeps the first subscriber.
    let _ = result;
}

/// A log file that can be reopened at the same path, so that after logrotate renames it new lines go to a
/// fresh file. Clones share the file. The fmt layer formats each event into a buffer and writes it with one
/// `write_all` while holding the lock (never across an await: the subscriber is synchronous), so lines are
/// never split between the old and the new file, nor interleaved.
#[derive(Clone, Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl LogFile {
    /// Opens `path` for appending, creating it (mode 0640 before the umask) if needed. The error names the path.
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(open_append(path)?)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again and switches to the new file; on failure the current file stays in use.
    pub fn reopen(&self) -> io::Result<()> {
        let fresh = open_append(&self.path)?;
        let old = std::mem::replace(&mut *self.lock(), fresh);
        drop(old);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, File> {
        // A panic while writing a line leaves nothing half-updated worth refusing to log over.
        self.file.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open log file {}: {e}", path.display())))
}

/// The writer for one event: holds the lock until the event's line has been written.
pub struct LogFileWriter<'a>(MutexGuard<'a, File>);

impl Write for LogFileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogFileWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        LogFileWriter(self.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_follows_a_rename_and_a_failed_reopen_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.log");
        let log = LogFile::open(&path).unwrap();
        log.make_writer().write_all(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("g.log.1")).unwrap();
        log.make_writer().write_all(b"two\n").unwrap();
        log.reopen().unwrap();
        log.make_writer().write_all(b"three\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("g.log.1")).unwrap(),
            "one\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");

        // The folder disappears: reopen fails, lines keep going to the open file.
        std::fs::rename(dir.path(), dir.path().with_extension("moved")).unwrap();
        let err = log.reopen().unwrap_err();
        assert!(err.to_string().contains("g.log"), "{err}");
        log.make_writer().write_all(b"four\n").unwrap();
        let moved = dir.path().with_extension("moved");
        assert_eq!(std::fs::read_to_string(moved.join("g.log")).unwrap(), "three\nfour\n");
        std::fs::rename(&moved, dir.path()).unwrap();
    }

    #[test]
    fn open_names_the_path_on_failure() {
        let err = LogFile::open(Path::new("/nonexistent-gatehouse-dir/g.log")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-gatehouse-dir/g.log"), "{err}");
    }
}
