//! The ACME files in the state folder: the account (one per directory URL) and each certificate's chain
//! and key. Every file is written whole to a temporary name with mode 0600 and renamed into place, so a
//! crash leaves the old file or the new one, and no other local user can read a key.

use crate::listen::tls::{self, CertFiles, CertSource, Served};
use sha2::Digest;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("acme")
}

pub(crate) fn cert_files(state_dir: &Path, name: &str) -> CertFiles {
    CertFiles {
        cert: dir(state_dir).join(format!("{name}.pem")),
        key: dir(state_dir).join(format!("{name}.key")),
    }
}

/// The account file of a directory: accounts are per CA, so staging and production do not mix.
fn account_file(state_dir: &Path, directory: &str) -> PathBuf {
    let digest = sha2::Sha256::digest(directory.as_bytes());
    let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    dir(state_dir).join(format!("account-{tag}.json"))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    // A temporary name of the file's own (`main.pem` and `main.key` must not share one).
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The certificate kept for `name`, when its files form a valid pair.
pub(crate) fn load_cert(state_dir: &Path, name: &str) -> Option<Served> {
    let files = cert_files(state_dir, name);
    if !files.cert.exists() {
        return None;
    }
    match tls::load_certified_key(&files) {
        Ok(ck) => Some(Served::new(ck, CertSource::Acme)),
        Err(e) => {
            tracing::warn!(certificate = name, error = %e, "kept ACME certificate is unusable; ordering a new one");
            None
        }
    }
}

/// Keeps a new certificate: the key first, so the pair on disk is never a new chain with an old key
/// for longer than one rename.
pub(crate) fn save_cert(state_dir: &Path, name: &str, chain_pem: &str, key_pem: &str) -> std::io::Result<()> {
    let files = cert_files(state_dir, name);
    write_private(&files.key, key_pem.as_bytes())?;
    write_private(&files.cert, chain_pem.as_bytes())
}

pub(crate) fn load_account(state_dir: &Path, directory: &str) -> Option<instant_acme::AccountCredentials> {
    let data = std::fs::read(account_file(state_dir, directory)).ok()?;
    match serde_json::from_slice(&data) {
        Ok(c) => Some(c),
        Err(e) => {
            // The error names a position, never the content.
            tracing::warn!(error = %e, "ACME account file is unreadable; registering a new account");
            None
        }
    }
}

pub(crate) fn save_account(
    state_dir: &Path,
    directory: &str,
    creds: &instant_acme::AccountCredentials,
) -> std::io::Result<()> {
    let data = serde_json::to_vec(creds).map_err(std::io::Error::other)?;
    write_private(&account_file(state_dir, directory), &data)
}
