//! Signed ban statements and their canonical encoding.

use super::keys::{NodeKey, PublicKey};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Ban,
    Unban,
}

/// One statement about a prefix, as its origin signed it. Relays forward it unchanged.
///
/// Expiry is `created_ms` (origin's clock, informational and bounded) plus `duration_ms`; see the
/// module doc for how receivers turn it into a local deadline. For an unban, the duration is how long
/// the lifted ban had left: the statement is kept (as a tombstone) that long, so a replay of the ban
/// cannot revive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    pub op: Op,
    /// Normalised (host bits clear, mapped IPv6 as IPv4), as the ban table keys on.
    #[serde(with = "prefix_serde")]
    pub prefix: IpNetwork,
    pub reason: String,
    pub created_ms: u64,
    pub duration_ms: u64,
    /// Newest wins per prefix; ties break on the origin key, so every node picks the same winner.
    pub version: u64,
    pub origin: [u8; 32],
    #[serde(with = "sig_serde")]
    pub sig: [u8; 64],
}

/// As text (`192.0.2.0/24`), so gatehouse needs no serde feature of `ipnetwork`.
mod prefix_serde {
    use ipnetwork::IpNetwork;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(p: &IpNetwork, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(p)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<IpNetwork, D::Error> {
        String::deserialize(de)?.parse().map_err(serde::de::Error::custom)
    }
}

pub(super) mod sig_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(s: &[u8; 64], ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_bytes(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<[u8; 64], D::Error> {
        let v: Vec<u8> = Vec::deserialize(de)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("signature must be 64 bytes"))
    }
}

/// An address in signed bytes: its family, then its octets.
pub(super) fn push_ip(b: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            b.push(4);
            b.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            b.push(6);
            b.extend_from_slice(&a.octets());
        }
    }
}

/// Domain separation: a signature over a ban statement can never be mistaken for anything else.
const DOMAIN: &[u8] = b"gatehouse/cluster/ban-record/v1\0";

impl SignedRecord {
    /// The bytes the origin signs: fixed-width big-endian fields, length-prefixed reason, no
    /// serialisation library in the loop (so every version and every node encodes alike).
    pub fn canonical_bytes(
        op: Op,
        prefix: &IpNetwork,
        reason: &str,
        created_ms: u64,
        duration_ms: u64,
        version: u64,
        origin: &[u8; 32],
    ) -> Vec<u8> {
        let mut b = Vec::with_capacity(DOMAIN.len() + 96 + reason.len());
        b.extend_from_slice(DOMAIN);
        b.push(match op {
            Op::Ban => 1,
            Op::Unban => 2,
        });
        push_ip(&mut b, prefix.network());
        b.push(prefix.prefix());
        b.extend_from_slice(&version.to_be_bytes());
        b.extend_from_slice(&created_ms.to_be_bytes());
        b.extend_from_slice(&duration_ms.to_be_bytes());
        b.extend_from_slice(&(reason.len() as u32).to_be_bytes());
        b.extend_from_slice(reason.as_bytes());
        b.extend_from_slice(origin);
        b
    }

    pub fn sign(
        key: &NodeKey,
        op: Op,
        prefix: IpNetwork,
        reason: String,
        created_ms: u64,
        duration_ms: u64,
        version: u64,
    ) -> SignedRecord {
        let origin = key.public().0;
        let msg = Self::canonical_bytes(op, &prefix, &reason, created_ms, duration_ms, version, &origin);
        SignedRecord {
            op,
            prefix,
            reason,
            created_ms,
            duration_ms,
            version,
            origin,
            sig: key.sign(&msg),
        }
    }

    pub fn origin_key(&self) -> PublicKey {
        PublicKey(self.origin)
    }

    /// Whether the signature is the origin's over exactly these fields.
    pub fn verify(&self) -> bool {
        let msg = Self::canonical_bytes(
            self.op,
            &self.prefix,
            &self.reason,
            self.created_ms,
            self.duration_ms,
            self.version,
            &self.origin,
        );
        self.origin_key().verify(&msg, &self.sig)
    }

    /// The order statements about one prefix are judged by.
    pub fn rank(&self) -> (u64, [u8; 32]) {
        (self.version, self.origin)
    }

    /// A short identity of (prefix, version, origin, op) for anti-entropy digests. Not a security
    /// boundary: records are verified on arrival whatever their digest said.
    pub fn digest_id(&self) -> u64 {
        // FNV-1a over the identifying fields: stable across processes and versions, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &x in bytes {
                h ^= u64::from(x);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        match self.prefix.network() {
            IpAddr::V4(a) => eat(&a.octets()),
            IpAddr::V6(a) => eat(&a.octets()),
        }
        eat(&[self.prefix.prefix(), self.op as u8]);
        eat(&self.version.to_be_bytes());
        eat(&self.origin);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_covers_every_field() {
        let k = NodeKey::generate();
        let r = SignedRecord::sign(
            &k,
            Op::Ban,
            "192.0.2.0/24".parse().unwrap(),
            "abuse".into(),
            1000,
            60_000,
            7,
        );
        assert!(r.verify());
        let tampered: Vec<SignedRecord> = vec![
            SignedRecord {
                op: Op::Unban,
                ..r.clone()
            },
            SignedRecord {
                prefix: "192.0.2.0/23".parse().unwrap(),
                ..r.clone()
            },
            SignedRecord {
                reason: "abusE".into(),
                ..r.clone()
            },
            SignedRecord {
                created_ms: 1001,
                ..r.clone()
            },
            SignedRecord {
                duration_ms: 60_001,
                ..r.clone()
            },
            SignedRecord {
                version: 8,
                ..r.clone()
            },
            SignedRecord {
                origin: NodeKey::generate().public().0,
                ..r.clone()
            },
        ];
        for t in tampered {
            assert!(!t.verify(), "{t:?}");
        }
        let json = serde_json::to_string(&r).unwrap();
        let back: SignedRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert!(back.verify());
    }
}
