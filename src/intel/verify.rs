//! Checking a feed's copy before it replaces the last good one: a pinned SHA-256, or a minisign
//! signature.
//!
//! Minisign's formats, as its documentation gives them: a public key is base64 of `"Ed"`, an 8-byte key
//! id and the 32-byte Ed25519 key. A signature file has four lines: an untrusted comment, base64 of the
//! algorithm (`"Ed"` signs the file itself, `"ED"` its BLAKE2b-512), the key id and the 64-byte
//! signature, then `trusted comment: TEXT`, then base64 of a global signature over the signature bytes
//! followed by TEXT, so the trusted comment cannot be swapped either.

use super::settings::MinisignKey;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use blake2::{Blake2b512, Digest as _};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("SHA-256 is {got}, the pin is {want}")]
    Checksum { got: String, want: String },
    #[error("minisign signature: {0}")]
    Malformed(&'static str),
    #[error("minisign signature is by key {got}, not the configured key {want}")]
    WrongKey { got: String, want: String },
    #[error("minisign signature does not verify")]
    Invalid,
    #[error("minisign trusted comment does not verify")]
    TrustedComment,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits.
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub fn check_sha256(body: &[u8], want: &[u8; 32]) -> Result<(), VerifyError> {
    let got: [u8; 32] = Sha256::digest(body).into();
    if &got == want {
        Ok(())
    } else {
        Err(VerifyError::Checksum {
            got: hex(&got),
            want: hex(want),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not base64")]
    Base64,
    #[error("a minisign public key is 42 bytes (`Ed`, key id, key) in base64, this is {0} bytes")]
    Length(usize),
    #[error("not an Ed25519 minisign key (algorithm `{0}`)")]
    Algorithm(String),
    #[error("not a valid Ed25519 public key")]
    Point,
}

/// Parses a minisign public key: the base64 line of `minisign.pub` (what `minisign -P` takes).
pub fn parse_minisign_key(s: &str) -> Result<MinisignKey, KeyError> {
    let raw = STANDARD.decode(s.trim()).map_err(|_| KeyError::Base64)?;
    if raw.len() != 42 {
        return Err(KeyError::Length(raw.len()));
    }
    if &raw[..2] != b"Ed" {
        return Err(KeyError::Algorithm(String::from_utf8_lossy(&raw[..2]).into_owned()));
    }
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&raw[2..10]);
    let mut key = [0u8; 32];
    key.copy_from_slice(&raw[10..42]);
    VerifyingKey::from_bytes(&key).map_err(|_| KeyError::Point)?;
    Ok(MinisignKey { key_id, key })
}

/// Key ids are shown as minisign shows them: the 8 bytes little-endian, in upper-case hex.
fn key_id_text(id: &[u8; 8]) -> String {
    format!("{:016X}", u64::from_le_bytes(*id))
}

/// Checks `sig_file` (a `.minisig`) over `body` against `key`.
pub fn check_minisign(body: &[u8], sig_file: &[u8], key: &MinisignKey) -> Result<(), VerifyError> {
    let text = std::str::from_utf8(sig_file).map_err(|_| VerifyError::Malformed("not text"))?;
    let mut lines = text.lines();
    let untrusted = lines.next().ok_or(VerifyError::Malformed("empty"))?;
    if !untrusted.starts_with("untrusted comment:") {
        return Err(VerifyError::Malformed("first line is not an untrusted comment"));
    }
    let sig_line = lines.next().ok_or(VerifyError::Malformed("no signature line"))?;
    let raw = STANDARD
        .decode(sig_line.trim())
        .map_err(|_| VerifyError::Malformed("signature line is not base64"))?;
    if raw.len() != 74 {
        return Err(VerifyError::Malformed("signature line is not 74 bytes"));
    }
    let prehashed = match &raw[..2] {
        b"Ed" => false,
        b"ED" => true,
        _ => return Err(VerifyError::Malformed("unknown signature algorithm")),
    };
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&raw[2..10]);
    if key_id != key.key_id {
        return Err(VerifyError::WrongKey {
            got: key_id_text(&key_id),
            want: key_id_text(&key.key_id),
        });
    }
    let sig_bytes: [u8; 64] = raw[10..74]
        .try_into()
        .map_err(|_| VerifyError::Malformed("signature"))?;
    let trusted = lines
        .next()
        .and_then(|l| l.strip_prefix("trusted comment: "))
        .ok_or(VerifyError::Malformed("no trusted comment line"))?;
    let global: [u8; 64] = lines
        .next()
        .and_then(|l| STANDARD.decode(l.trim()).ok())
        .and_then(|g| g.try_into().ok())
        .ok_or(VerifyError::Malformed("no global signature line"))?;
    let vk = VerifyingKey::from_bytes(&key.key).map_err(|_| VerifyError::Invalid)?;
    let signature = Signature::from_bytes(&sig_bytes);
    let ok = if prehashed {
        vk.verify_strict(&Blake2b512::digest(body), &signature)
    } else {
        vk.verify_strict(body, &signature)
    };
    ok.map_err(|_| VerifyError::Invalid)?;
    let mut signed = Vec::with_capacity(64 + trusted.len());
    signed.extend_from_slice(&sig_bytes);
    signed.extend_from_slice(trusted.as_bytes());
    vk.verify_strict(&signed, &Signature::from_bytes(&global))
        .map_err(|_| VerifyError::TrustedComment)
}

/// Signs `body` as minisign does (prehashed unless `legacy`): the public key line and the signature
/// file. For tests and for operators who want to sign a list without installing minisign.
pub fn minisign_sign(sk: &ed25519_dalek::SigningKey, key_id: [u8; 8], body: &[u8], legacy: bool) -> (String, String) {
    use ed25519_dalek::Signer;
    let mut pk = b"Ed".to_vec();
    pk.extend_from_slice(&key_id);
    pk.extend_from_slice(sk.verifying_key().as_bytes());
    let sig = if legacy {
        sk.sign(body)
    } else {
        sk.sign(&Blake2b512::digest(body))
    };
    let mut line = if legacy { b"Ed".to_vec() } else { b"ED".to_vec() };
    line.extend_from_slice(&key_id);
    line.extend_from_slice(&sig.to_bytes());
    let trusted = "timestamp:0\tfile:feed";
    let mut g = sig.to_bytes().to_vec();
    g.extend_from_slice(trusted.as_bytes());
    let global = sk.sign(&g);
    let file = format!(
        "untrusted comment: signature from gatehouse\n{}\ntrusted comment: {trusted}\n{}\n",
        STANDARD.encode(line),
        STANDARD.encode(global.to_bytes())
    );
    (STANDARD.encode(pk), file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn minisign_prehashed_and_legacy_verify_and_tampering_fails() {
        for legacy in [false, true] {
            let body = b"192.0.2.0/24\n";
            let (pk, sig) = minisign_sign(&key(), [1, 2, 3, 4, 5, 6, 7, 8], body, legacy);
            let k = parse_minisign_key(&pk).unwrap();
            check_minisign(body, sig.as_bytes(), &k).unwrap();
            assert_eq!(
                check_minisign(b"192.0.2.0/25\n", sig.as_bytes(), &k),
                Err(VerifyError::Invalid)
            );
            let swapped = sig.replace("file:feed", "file:other");
            assert_eq!(
                check_minisign(body, swapped.as_bytes(), &k),
                Err(VerifyError::TrustedComment)
            );
        }
        let (_, sig) = minisign_sign(&key(), [9; 8], b"x", false);
        let (pk, _) = minisign_sign(&key(), [1; 8], b"x", false);
        let e = check_minisign(b"x", sig.as_bytes(), &parse_minisign_key(&pk).unwrap()).unwrap_err();
        assert!(matches!(e, VerifyError::WrongKey { .. }), "{e}");
        assert_eq!(
            check_minisign(b"x", b"hello\n", &parse_minisign_key(&pk).unwrap()),
            Err(VerifyError::Malformed("first line is not an untrusted comment"))
        );
    }

    #[test]
    fn keys_and_pins_parse_precisely() {
        assert_eq!(parse_minisign_key("!!"), Err(KeyError::Base64));
        assert_eq!(parse_minisign_key("AAAA"), Err(KeyError::Length(3)));
        let pin = parse_sha256(&"ab".repeat(32)).unwrap();
        assert_eq!(pin[0], 0xab);
        assert!(parse_sha256("abc").is_none());
        let e = check_sha256(b"x", &pin).unwrap_err();
        assert!(e.to_string().starts_with("SHA-256 is 2d711642"), "{e}");
    }
}
