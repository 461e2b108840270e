//! ACME shares through Redis, sealed: Redis is trusted for availability only, yet these messages carry
//! certificate keys and challenge answers. Each is ChaCha20-Poly1305 under a 32-byte secret only the
//! gateways hold (`cluster.redis_acme_key_file`), with a random nonce per message and the channel name as
//! associated data (so a sealed message cannot be replayed onto another fleet's prefix). A message that
//! does not open was not written by a gateway of this fleet and is dropped.

use crate::wire::acme::AcmeShare;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// Length of the shared secret, in bytes.
pub const KEY_LEN: usize = 32;

/// The largest sealed message taken from Redis: a certificate chain with its key is a few KiB.
pub const MAX_SEALED: usize = 256 * 1024;

/// What a sealed message holds: the share and who sent it (the sender's node key, as `/v1/certs` names
/// the orderer).
#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    share: AcmeShare,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error(
        "must hold 32 bytes: 64 hex digits or the raw bytes (make one with `head -c 32 /dev/urandom | xxd -p -c 64`)"
    )]
    Length,
}

/// Reads the secret from a key file's contents: 64 hex digits (surrounding whitespace ignored) or exactly
/// 32 raw bytes.
pub fn parse_key(bytes: &[u8]) -> Result<[u8; KEY_LEN], KeyFileError> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let t = text.trim();
        if t.len() == 2 * KEY_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut k = [0u8; KEY_LEN];
            for (i, out) in k.iter_mut().enumerate() {
                *out = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| KeyFileError::Length)?;
            }
            return Ok(k);
        }
    }
    bytes.try_into().map_err(|_| KeyFileError::Length)
}

/// Seals and opens ACME shares for one fleet.
pub struct Sealer {
    key: LessSafeKey,
    channel: Vec<u8>,
    rng: SystemRandom,
}

impl Sealer {
    pub fn new(secret: &[u8; KEY_LEN], channel: &str) -> Sealer {
        let key = UnboundKey::new(&CHACHA20_POLY1305, secret).expect("a 32-byte key fits ChaCha20-Poly1305");
        Sealer {
            key: LessSafeKey::new(key),
            channel: channel.as_bytes().to_vec(),
            rng: SystemRandom::new(),
        }
    }

    /// `nonce || ciphertext || tag`; None only if the system's random source fails.
    pub fn seal(&self, from: &str, share: &AcmeShare) -> Option<Vec<u8>> {
        let env = Envelope {
            from: from.to_string(),
            share: share.clone(),
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut body = serde_json::to_vec(&env).ok()?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.channel[..]),
                &mut body,
            )
            .ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + body.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Some(out)
    }

    /// The sender and the share, if `sealed` was sealed under this fleet's secret for this channel.
    pub fn open(&self, sealed: &[u8]) -> Option<(String, AcmeShare)> {
        if sealed.len() > MAX_SEALED || sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(&self.channel[..]), &mut body)
            .ok()?;
        let env: Envelope = serde_json::from_slice(plain).ok()?;
        Some((env.from, env.share))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_shares_open_only_with_the_same_secret_and_channel() {
        let share = AcmeShare::Want { name: "main".into() };
        let a = Sealer::new(&[7; KEY_LEN], "gatehouse:acme");
        let sealed = a.seal("node", &share).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("main"));
        assert_eq!(a.open(&sealed), Some(("node".to_string(), share)));
        assert!(Sealer::new(&[8; KEY_LEN], "gatehouse:acme").open(&sealed).is_none());
        assert!(Sealer::new(&[7; KEY_LEN], "other:acme").open(&sealed).is_none());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(a.open(&tampered).is_none());
        assert!(a.open(b"short").is_none());
    }

    #[test]
    fn key_files_take_hex_or_raw_bytes() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_key(format!("{hex}\n").as_bytes()).unwrap(), [0xab; 32]);
        assert_eq!(parse_key(&[1; 32]).unwrap(), [1; 32]);
        assert!(parse_key(b"too short").is_err());
    }
}
