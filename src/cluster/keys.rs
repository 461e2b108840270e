//! Node keys: an Ed25519 key per node, stored as the base64 of its 32-byte seed; public keys (node ids)
//! are the base64 of the 32-byte Ed25519 public key.
//!
//! The link layer (Noise, X25519) uses the same key in its Montgomery form (the standard Ed25519 →
//! X25519 map, as libsodium's `crypto_sign_ed25519_*_to_curve25519`), so the config names one public
//! key per peer and there is one secret file per node.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use std::fmt;
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("key file {path}: not the base64 of a 32-byte Ed25519 seed")]
    BadSeed { path: String },
    #[error("`{0}` is not the base64 of a 32-byte Ed25519 public key")]
    BadPublic(String),
    #[error("key file {path} already exists; refusing to overwrite it")]
    Exists { path: String },
}

/// A node's public key; its base64 form is the node id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn parse(s: &str) -> Result<PublicKey, KeyError> {
        let bytes = B64.decode(s.trim()).map_err(|_| KeyError::BadPublic(s.to_string()))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| KeyError::BadPublic(s.to_string()))?;
        VerifyingKey::from_bytes(&arr).map_err(|_| KeyError::BadPublic(s.to_string()))?;
        Ok(PublicKey(arr))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// Whether `sig` is this key's signature of `msg` (strict verification: no malleable signatures).
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let Ok(vk) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig))
            .is_ok()
    }

    /// The X25519 public key the link layer uses for this node.
    pub fn x25519(&self) -> Option<[u8; 32]> {
        VerifyingKey::from_bytes(&self.0)
            .ok()
            .map(|vk| vk.to_montgomery().to_bytes())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::parse(s)
    }
}

/// A node's secret key.
pub struct NodeKey {
    signing: SigningKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.public())
    }
}

impl NodeKey {
    pub fn generate() -> NodeKey {
        NodeKey {
            signing: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// 32 random bytes for [`NodeKey::from_seed`].
    pub fn generate_seed() -> [u8; 32] {
        SigningKey::generate(&mut rand_core::OsRng).to_bytes()
    }

    pub fn from_seed(seed: [u8; 32]) -> NodeKey {
        NodeKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// The X25519 private key for the link layer (the clamped scalar of the Ed25519 seed).
    pub fn x25519_secret(&self) -> [u8; 32] {
        self.signing.to_scalar_bytes()
    }

    /// Reads a key file: the base64 of the 32-byte seed (surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<NodeKey, KeyError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: p.clone(),
            source,
        })?;
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| KeyError::BadSeed { path: p.clone() })?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::BadSeed { path: p })?;
        Ok(NodeKey::from_seed(seed))
    }

    /// Writes a new key file (mode 0600, never over an existing file) and returns the key; what
    /// `gatehouse keygen` does.
    pub fn generate_file(path: &Path) -> Result<NodeKey, KeyError> {
        let p = path.display().to_string();
        let key = NodeKey::generate();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists { path: p.clone() }
            } else {
                KeyError::Io {
                    path: p.clone(),
                    source,
                }
            }
        })?;
        let line = format!("{}\n", B64.encode(key.signing.to_bytes()));
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|source| KeyError::Io { path: p, source })?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_and_x25519_agreement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let k = NodeKey::generate_file(&path).unwrap();
        assert!(matches!(NodeKey::generate_file(&path), Err(KeyError::Exists { .. })));
        let again = NodeKey::load(&path).unwrap();
        assert_eq!(k.public(), again.public());
        assert_eq!(PublicKey::parse(&k.public().to_base64()).unwrap(), k.public());
        let sig = k.sign(b"hello");
        assert!(k.public().verify(b"hello", &sig));
        assert!(!k.public().verify(b"hellO", &sig));
        // X25519 agreement between the derived keys is exercised by the Noise handshakes in link.rs.
        assert!(k.public().x25519().is_some());
        assert!(PublicKey::parse("not base64!").is_err());
    }
}
