//! The append-only ban journal: one checksummed line per ban or lift, fsync'd before the caller may act
//! on it, replayed at start and compacted when most of it is history.
//!
//! Line format: `CRC32-HEX SP JSON LF`, the CRC (IEEE) taken over the JSON bytes. A crash can leave at
//! most the last line torn (partly written, or written but not yet synced); its CRC or missing newline
//! gives it away, and it is cut off at open so the next append starts on a clean line. A torn line was
//! never acknowledged, because acknowledgement waits for the fsync.

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a journal line states about a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Ban,
    /// A lift. Its `until` is that of the ban it lifted: the statement matters as long as an older ban
    /// for the prefix could still be in force somewhere.
    Unban,
    /// Not a statement about the prefix but the memory of a repeat offender (one address), so ban
    /// doubling survives restarts: `version` holds the offence count, `created` the last offence and
    /// `until` when it is forgiven. It never enters the table, the cluster or the change feed.
    Offence,
}

/// One statement about a prefix, as journaled (and, later, as exchanged between cluster nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub op: Op,
    pub prefix: IpNetwork,
    pub until: SystemTime,
    pub reason: String,
    pub origin: String,
    pub created: SystemTime,
    pub version: u64,
    /// Opaque to the table: what a statement's source needs to vouch for it again after a restart (the
    /// cluster keeps the origin's signature here). None for statements made by this node.
    pub attachment: Option<String>,
}

/// The JSON form: times as Unix milliseconds so a line is readable with `jq` and needs no date parser.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    op: Op,
    prefix: String,
    until_ms: u64,
    #[serde(borrow)]
    reason: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    origin: std::borrow::Cow<'a, str>,
    created_ms: u64,
    version: u64,
    /// Absent from journals written before remote statements were journaled, and from local lines, so
    /// those read (and write) exactly as before.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    sig: Option<std::borrow::Cow<'a, str>>,
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        let wire = Wire {
            op: self.op,
            prefix: self.prefix.to_string(),
            until_ms: unix_ms(self.until),
            reason: self.reason.as_str().into(),
            origin: self.origin.as_str().into(),
            created_ms: unix_ms(self.created),
            version: self.version,
            sig: self.attachment.as_deref().map(Into::into),
        };
        let json = serde_json::to_vec(&wire).expect("a journal entry always serialises");
        let crc = crc32fast::hash(&json);
        out.extend_from_slice(format!("{crc:08x} ").as_bytes());
        out.extend_from_slice(&json);
        out.push(b'\n');
    }

    /// `line` without its newline.
    fn decode(line: &[u8]) -> Result<Entry, LineError> {
        let (crc, json) = match (line.get(..8), line.get(9..)) {
            (Some(c), Some(j)) => (c, j),
            _ => return Err(LineError::Short),
        };
        if line[8] != b' ' {
            return Err(LineError::Separator);
        }
        let crc = std::str::from_utf8(crc)
            .ok()
            .and_then(|c| u32::from_str_radix(c, 16).ok())
            .ok_or(LineError::ChecksumField)?;
        if crc32fast::hash(json) != crc {
            return Err(LineError::Checksum);
        }
        let w: Wire = serde_json::from_slice(json).map_err(|e| LineError::Json(e.to_string()))?;
        let prefix = crate::wire::acl::parse_cidr(&w.prefix).map_err(LineError::Prefix)?;
        Ok(Entry {
            op: w.op,
            prefix,
            until: from_unix_ms(w.until_ms),
            reason: w.reason.into_owned(),
            origin: w.origin.into_owned(),
            created: from_unix_ms(w.created_ms),
            version: w.version,
            attachment: w.sig.map(std::borrow::Cow::into_owned),
        })
    }
}

/// Why a journal line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("shorter than a checksum and a separator")]
    Short,
    #[error("no space after the checksum")]
    Separator,
    #[error("the checksum is not 8 hex digits")]
    ChecksumField,
    #[error("checksum mismatch")]
    Checksum,
    #[error("not a journal record: {0}")]
    Json(String),
    #[error("bad prefix: {0}")]
    Prefix(crate::wire::acl::CidrError),
    #[error("no newline (torn write)")]
    Unterminated,
}

/// Parses one journal line (without its newline), as replay does; for tools and fuzzing.
pub fn parse_line(line: &[u8]) -> Result<Entry, LineError> {
    Entry::decode(line)
}

/// One journal line for `e`, newline included, as appends write it.
pub fn encode_line(e: &Entry) -> Vec<u8> {
    let mut out = Vec::new();
    e.encode(&mut out);
    out
}

/// A line replay dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedLine {
    /// 1-based line number in the file as found.
    pub line: usize,
    pub why: LineError,
    /// Cut off the end of the file (a possibly unacknowledged last write) rather than skipped.
    pub cut: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("ban journal {path}: cannot open: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("ban journal {path}: cannot lock {}: {source}", crate::sys::journal_lock::lock_path(path).display())]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("ban journal {path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("ban journal {path}: cannot write: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("ban journal {path}: cannot compact: {source}")]
    Compact { path: PathBuf, source: std::io::Error },
    /// An earlier failed write could not be rolled back, so appending could glue a new record onto a
    /// torn one; the journal refuses writes until the gateway restarts (and cuts the torn tail).
    #[error("ban journal {path}: unusable after an earlier write failure")]
    Poisoned { path: PathBuf },
}

/// When to compact: the file holds more than `factor` lines per live statement and is at least
/// `min_bytes` long (below that, rewriting saves too little to be worth an fsync'd rename).
#[derive(Debug, Clone, Copy)]
pub struct CompactPolicy {
    pub factor: u64,
    pub min_bytes: u64,
}

impl Default for CompactPolicy {
    fn default() -> Self {
        CompactPolicy {
            factor: 4,
            min_bytes: 1 << 20,
        }
    }
}

/// What open found in the file.
#[derive(Debug, Default)]
pub struct Replay {
    /// Every intact statement, in file order.
    pub entries: Vec<Entry>,
    /// A torn last line that was cut off.
    pub torn_tail: bool,
    /// Damaged lines before the last one (not a crash pattern: disk or manual damage); skipped.
    pub damaged: usize,
    /// Every line dropped, skipped or cut, in file order.
    pub dropped: Vec<DroppedLine>,
    /// Where the file as found was copied before anything was dropped from it.
    pub evidence: Option<PathBuf>,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    /// This process's claim on the journal (see `journal_lock`).
    _lock: crate::sys::journal_lock::JournalLock,
    /// Bytes and lines of the file as written and synced.
    bytes: u64,
    lines: u64,
    policy: CompactPolicy,
    poisoned: bool,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("bytes", &self.bytes)
            .field("lines", &self.lines)
            .finish_non_exhaustive()
    }
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Copies the journal's bytes as found to `<journal>.damaged-<unix ms>` (a fresh name), synced.
fn keep_evidence(path: &Path, data: &[u8]) -> std::io::Result<PathBuf> {
    let stamp = unix_ms(SystemTime::now());
    let mut n = 0u32;
    loop {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".damaged-{stamp}"));
        if n > 0 {
            name.push(format!("-{n}"));
        }
        let copy = path.with_file_name(name);
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&copy) {
            Ok(mut f) => {
                f.write_all(data)?;
                f.sync_all()?;
                sync_dir(&copy)?;
                return Ok(copy);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
            Err(e) => return Err(e),
        }
    }
}

impl Journal {
    /// Opens (creating if needed) and reads the journal. A torn last line is cut off on disk.
    pub fn open(path: &Path, policy: CompactPolicy) -> Result<(Journal, Replay), JournalError> {
        let open_err = |source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        };
        // Before reading: what another process appends or compacts meanwhile would be lost.
        let lock_file = crate::sys::journal_lock::open(path).map_err(open_err)?;
        let lock = crate::sys::journal_lock::lock(lock_file, path).map_err(|source| JournalError::Lock {
            path: path.to_path_buf(),
            source,
        })?;
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(open_err)?;
        if !existed {
            // The new file's directory entry must survive a crash too, or the first acknowledged ban
            // could vanish with it.
            sync_dir(path).map_err(open_err)?;
        }
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(|source| JournalError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut replay = Replay::default();
        let mut good_len = 0usize;
        let mut lines = 0u64;
        let mut pos = 0usize;
        let mut number = 0usize;
        while pos < data.len() {
            number += 1;
            let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') else {
                replay.torn_tail = true;
                replay.dropped.push(DroppedLine {
                    line: number,
                    why: LineError::Unterminated,
                    cut: true,
                });
                break;
            };
            let line = &data[pos..pos + nl];
            let next = pos + nl + 1;
            match Entry::decode(line) {
                Ok(e) => {
                    replay.entries.push(e);
                    good_len = next;
                    lines += 1;
                }
                Err(why) if next == data.len() => {
                    replay.torn_tail = true;
                    replay.dropped.push(DroppedLine {
                        line: number,
                        why,
                        cut: true,
                    });
                    break;
                }
                Err(why) => {
                    replay.damaged += 1;
                    replay.dropped.push(DroppedLine {
                        line: number,
                        why,
                        cut: false,
                    });
                    good_len = next;
                    lines += 1;
                }
            }
            pos = next;
        }
        if !replay.dropped.is_empty() {
            // Before anything is cut or rewritten: what was dropped may be all an operator has to find
            // out what went wrong (or to recover a ban by hand).
            replay.evidence = Some(keep_evidence(path, &data).map_err(|source| JournalError::Write {
                path: path.to_path_buf(),
                source,
            })?);
        }
        if replay.torn_tail {
            file.set_len(good_len as u64)
                .and_then(|()| file.sync_all())
                .map_err(|source| JournalError::Write {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                _lock: lock,
                bytes: good_len as u64,
                lines,
                policy,
                poisoned: false,
                buf: Vec::with_capacity(256),
            },
            replay,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Lines in the file (statements, including superseded ones).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Appends `e` and waits until it is on disk.
    pub fn append(&mut self, e: &Entry) -> Result<(), JournalError> {
        self.append_all(std::slice::from_ref(e))
    }

    /// Appends every entry with one write and one sync: a thousand statements from a peer cost one
    /// fsync, not a thousand. All or none of them count as written.
    pub fn append_all(&mut self, entries: &[Entry]) -> Result<(), JournalError> {
        if entries.is_empty() {
            return Ok(());
        }
        if self.poisoned {
            return Err(JournalError::Poisoned {
                path: self.path.clone(),
            });
        }
        self.buf.clear();
        for e in entries {
            e.encode(&mut self.buf);
        }
        let result = self.file.write_all(&self.buf).and_then(|()| self.file.sync_data());
        if let Err(source) = result {
            // Roll the partial line back so the next append does not land behind garbage.
            if self
                .file
                .set_len(self.bytes)
                .and_then(|()| self.file.sync_data())
                .is_err()
            {
                self.poisoned = true;
            }
            return Err(JournalError::Write {
                path: self.path.clone(),
                source,
            });
        }
        self.bytes += self.buf.len() as u64;
        self.lines += entries.len() as u64;
        if self.buf.capacity() > 1 << 16 {
            // A big batch should not pin its buffer for the life of the process.
            self.buf = Vec::with_capacity(256);
        }
        Ok(())
    }

    /// Whether the file has grown past the policy for a table of `live` statements.
    pub fn needs_compaction(&self, live: usize) -> bool {
        self.bytes >= self.policy.min_bytes && self.lines > self.policy.factor.saturating_mul(live.max(1) as u64)
    }

    /// Replaces the file with exactly `live`: written to a temporary file, synced, renamed over the
    /// journal, and the directory synced, so a crash at any step leaves either the old file or the new
    /// one, each complete.
    pub fn compact<'a>(&mut self, live: impl IntoIterator<Item = &'a Entry>) -> Result<(), JournalError> {
        let err = |source| JournalError::Compact {
            path: self.path.clone(),
            source,
        };
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".compact");
        let tmp = self.path.with_file_name(tmp_name);
        let mut data = Vec::new();
        let mut lines = 0u64;
        for e in live {
            e.encode(&mut data);
            lines += 1;
        }
        let write = || -> std::io::Result<File> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &self.path)?;
            sync_dir(&self.path)?;
            OpenOptions::new().read(true).append(true).open(&self.path)
        };
        match write() {
            Ok(f) => {
                self.file = f;
                self.bytes = data.len() as u64;
                self.lines = lines;
                self.poisoned = false;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prefix: &str, version: u64) -> Entry {
        Entry {
            op: Op::Ban,
            prefix: prefix.parse().unwrap(),
            until: from_unix_ms(4_000_000_000_000),
            reason: "test \"quoted\"\nnewline".into(),
            origin: "local".into(),
            created: from_unix_ms(1_700_000_000_123),
            version,
            attachment: None,
        }
    }

    #[test]
    fn attachments_round_trip_and_old_lines_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        // A line as journals before attachments existed wrote it.
        let json = br#"{"op":"ban","prefix":"192.0.2.1/32","until_ms":4000000000000,"reason":"r","origin":"local","created_ms":1700000000123,"version":5}"#;
        let mut old = format!("{:08x} ", crc32fast::hash(json)).into_bytes();
        old.extend_from_slice(json);
        old.push(b'\n');
        std::fs::write(&path, &old).unwrap();
        let (mut j, r) = Journal::open(&path, CompactPolicy::default()).unwrap();
        assert_eq!((r.entries.len(), r.entries[0].attachment.as_deref()), (1, None));
        let remote = Entry {
            origin: "bm9kZS1h".into(),
            attachment: Some("sig:with \"quotes\"".into()),
            ..entry("198.51.100.0/24", 9)
        };
        j.append(&remote).unwrap();
        j.append(&entry("192.0.2.2/32", 10)).unwrap();
        drop(j);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.matches("\"sig\"").count(),
            1,
            "local lines carry no sig field: {text}"
        );
        let (_, r) = Journal::open(&path, CompactPolicy::default()).unwrap();
        assert_eq!(r.entries[1], remote);
        assert_eq!(r.entries[2], entry("192.0.2.2/32", 10));
    }

    #[test]
    fn round_trips_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.journal");
        let (mut j, r) = Journal::open(&path, CompactPolicy::default()).unwrap();
        assert!(r.entries.is_empty() && !r.torn_tail);
        j.append(&entry("192.0.2.0/24", 1)).unwrap();
        j.append(&entry("2001:db8::/48", 2)).unwrap();
        drop(j);
        let good = std::fs::metadata(&path).unwrap().len();
        // A crash mid-write: half a line, no newline.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"0badc0de {\"op\":\"ban\",\"pre").unwrap();
        drop(f);
        let (mut j, r) = Journal::open(&path, CompactPolicy::default()).unwrap();
        assert!(r.torn_tail);
        assert_eq!(r.entries, vec![entry("192.0.2.0/24", 1), entry("2001:db8::/48", 2)]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        j.append(&entry("198.51.100.7/32", 3)).unwrap();
        drop(j);
        let (_, r) = Journal::open(&path, CompactPolicy::default()).unwrap();
        assert_eq!(r.entries.len(), 3);
        assert!(!r.torn_tail);
    }

    #[test]
    fn a_complete_line_with_a_bad_checksum_at_the_end_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, _) = Journal::open(&path, CompactPolicy::default()).unwrap();
        j.append(&entry("192.0.2.1/32", 1)).unwrap();
        drop(j);
        let mut text = std::fs::read(&path).unwrap();
        let copy = text.clone();
        text.extend_from_slice(&copy);
        let n = text.len();
        text[n - 5] ^= 0x01; // flip a bit inside the second line's JSON
        std::fs::write(&path, &text).unwrap();
        let (_, r) = Journal::open(&path, CompactPolicy::default()).unwrap();
        assert!(r.torn_tail);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(std::fs::read(&path).unwrap(), copy);
    }

    #[test]
    fn compaction_keeps_exactly_the_given_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let policy = CompactPolicy {
            factor: 4,
            min_bytes: 0,
        };
        let (mut j, _) = Journal::open(&path, policy).unwrap();
        for v in 0..20 {
            j.append(&entry("192.0.2.1/32", v)).unwrap();
        }
        assert!(j.needs_compaction(1));
        assert!(!j.needs_compaction(5));
        let keep = [entry("192.0.2.1/32", 19)];
        j.compact(keep.iter()).unwrap();
        assert_eq!(j.lines(), 1);
        j.append(&entry("192.0.2.2/32", 20)).unwrap();
        drop(j);
        let (_, r) = Journal::open(&path, policy).unwrap();
        assert_eq!(r.entries, vec![entry("192.0.2.1/32", 19), entry("192.0.2.2/32", 20)]);
        assert!(!dir.path().join("j.compact").exists());
    }
}
