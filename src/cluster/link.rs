//! Authenticated, encrypted links between cluster nodes.
//!
//! Wire format, over TCP:
//! 1. The dialer sends a cleartext hello: `MAGIC`, its own public key, the public key it expects the
//!    listener to hold (64 bytes of keys). The listener drops the connection at once unless the dialer's
//!    key is listed in its config and the expected key is its own; nothing else is parsed before that.
//! 2. A Noise `KK` handshake (`Noise_KK_25519_ChaChaPoly_BLAKE2s`, both static keys known in advance,
//!    X25519 keys derived from the Ed25519 node keys), with the hello bound in as the prologue. Only
//!    holders of the listed secret keys complete it: a node that merely claims a listed key fails here.
//! 3. Transport: every Noise message travels as `u16 big-endian length || ciphertext`; an application
//!    message is one or more Noise messages whose plaintexts start with a "more follows" byte. Messages
//!    are JSON-encoded [`Msg`] values, at most [`MAX_MESSAGE`] bytes.

use super::keys::{NodeKey, PublicKey};
use super::record::SignedRecord;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub const NOISE_PARAMS: &str = "Noise_KK_25519_ChaChaPoly_BLAKE2s";
const MAGIC: &[u8; 8] = b"GHCLUS01";
/// Largest application message (a flat digest of 100,000 records would be about 2 MB of JSON; nodes that
/// hold that many send bucket summaries instead, but a `Records` answer can still be large).
pub const MAX_MESSAGE: usize = 32 << 20;
const NOISE_MAX: usize = 65535;
const TAG: usize = 16;
/// Plaintext per Noise message: the limit less the tag and the "more" byte.
const CHUNK: usize = NOISE_MAX - TAG - 1;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A record as carried on one hop: the origin's signed statement plus how long it has left by the
/// sender's clock (see the module doc of `cluster` for why expiry travels this way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    pub rec: SignedRecord,
    pub remaining_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// A new statement, pushed as soon as it is made or first received.
    Record(Carried),
    /// Anti-entropy: the digest ids of every statement the sender holds (sent while it holds few).
    Digest(Vec<u64>),
    /// Anti-entropy for a node holding many statements: per bucket (`digest id % buckets.len()`), a
    /// fingerprint of the ids in it (see `cluster::summary`).
    Summary { buckets: Vec<u64> },
    /// The answer to a `Summary` whose fingerprints differ from the receiver's: the receiver's digest
    /// ids in the buckets `which` (of `buckets` buckets). Answered like a `Digest` limited to them.
    BucketDigest {
        buckets: u32,
        which: Vec<u32>,
        ids: Vec<u64>,
    },
    /// The statements the sender lacks, by digest id.
    Want(Vec<u64>),
    /// Statements, in answer to a digest or a want.
    Records(Vec<Carried>),
    /// The sender's own cost of its costliest groups (see `cluster::cost`).
    Costs(Vec<crate::state::cost::GroupCost>),
    /// ACME: challenge answers, certificates and requests for them (see `cluster::AcmeLinks`).
    Acme(crate::wire::acme::AcmeShare),
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    #[error("handshake timed out")]
    Timeout,
    #[error("not a gatehouse cluster hello")]
    BadHello,
    #[error("node {0} is not listed")]
    Unlisted(PublicKey),
    #[error("the dialer expected node {0}, not this one")]
    WrongNode(PublicKey),
    #[error("message too large ({0} bytes)")]
    TooLarge(usize),
    #[error("bad message: {0}")]
    Decode(#[from] serde_json::Error),
}

impl LinkError {
    /// A short name of the failure, for the refusal log gate.
    pub fn reason(&self) -> &'static str {
        match self {
            LinkError::Io(_) => "io",
            LinkError::Noise(_) => "noise",
            LinkError::Timeout => "handshake_timeout",
            LinkError::BadHello => "bad_hello",
            LinkError::Unlisted(_) => "unlisted",
            LinkError::WrongNode(_) => "wrong_node",
            LinkError::TooLarge(_) => "too_large",
            LinkError::Decode(_) => "bad_message",
        }
    }

    /// Whether the failure says the peer is not (provably) a listed node, as opposed to a network fault.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            LinkError::Noise(_) | LinkError::BadHello | LinkError::Unlisted(_) | LinkError::WrongNode(_)
        )
    }
}

type Noise = Arc<Mutex<snow::TransportState>>;

pub struct LinkReader {
    r: OwnedReadHalf,
    noise: Noise,
    peer: PublicKey,
}

pub struct LinkWriter {
    w: OwnedWriteHalf,
    noise: Noise,
    peer: PublicKey,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn write_frame(w: &mut (impl AsyncWriteExt + Unpin), data: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(2 + data.len());
    buf.extend_from_slice(&(data.len() as u16).to_be_bytes());
    buf.extend_from_slice(data);
    w.write_all(&buf).await
}

async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let mut data = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut data).await?;
    Ok(data)
}

fn prologue(dialer: &PublicKey, listener: &PublicKey) -> Vec<u8> {
    let mut p = MAGIC.to_vec();
    p.extend_from_slice(&dialer.0);
    p.extend_from_slice(&listener.0);
    p
}

fn builder<'a>(secret: &'a [u8; 32], remote: &'a [u8; 32], prologue: &'a [u8]) -> snow::Builder<'a> {
    snow::Builder::new(NOISE_PARAMS.parse().expect("valid noise params"))
        .local_private_key(secret)
        .remote_public_key(remote)
        .prologue(prologue)
}

fn split(stream: TcpStream, t: snow::TransportState, peer: PublicKey) -> (LinkReader, LinkWriter) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let noise = Arc::new(Mutex::new(t));
    (
        LinkReader {
            r,
            noise: noise.clone(),
            peer,
        },
        LinkWriter { w, noise, peer },
    )
}

/// Dials `addr` and authenticates as `key` to the node holding `peer`.
pub async fn connect(addr: SocketAddr, key: &NodeKey, peer: PublicKey) -> Result<(LinkReader, LinkWriter), LinkError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await?;
        let me = key.public();
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&me.0);
        hello.extend_from_slice(&peer.0);
        s.write_all(&hello).await?;
        let secret = key.x25519_secret();
        let remote = peer.x25519().ok_or(LinkError::Unlisted(peer))?;
        let pro = prologue(&me, &peer);
        let mut hs = builder(&secret, &remote, &pro).build_initiator()?;
        let mut buf = vec![0u8; NOISE_MAX];
        let n = hs.write_message(&[], &mut buf)?;
        write_frame(&mut s, &buf[..n]).await?;
        let reply = read_frame(&mut s).await?;
        hs.read_message(&reply, &mut buf)?;
        Ok(split(s, hs.into_transport_mode()?, peer))
    })
    .await
    .map_err(|_| LinkError::Timeout)?
}

/// Authenticates an accepted connection: the dialer must hold a key `listed` approves of.
pub async fn accept(
    mut s: TcpStream,
    key: &NodeKey,
    listed: impl Fn(&PublicKey) -> bool,
) -> Result<(PublicKey, LinkReader, LinkWriter), LinkError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut hello = [0u8; 8 + 64];
        s.read_exact(&mut hello).await?;
        if &hello[..8] != MAGIC {
            return Err(LinkError::BadHello);
        }
        let dialer = PublicKey(hello[8..40].try_into().expect("32 bytes"));
        let expected = PublicKey(hello[40..72].try_into().expect("32 bytes"));
        let me = key.public();
        if !listed(&dialer) {
            return Err(LinkError::Unlisted(dialer));
        }
        if expected != me {
            return Err(LinkError::WrongNode(expected));
        }
        let secret = key.x25519_secret();
        let remote = dialer.x25519().ok_or(LinkError::Unlisted(dialer))?;
        let pro = prologue(&dialer, &me);
        let mut hs = builder(&secret, &remote, &pro).build_responder()?;
        let mut buf = vec![0u8; NOISE_MAX];
        let first = read_frame(&mut s).await?;
        hs.read_message(&first, &mut buf)?;
        let n = hs.write_message(&[], &mut buf)?;
        write_frame(&mut s, &buf[..n]).await?;
        let (r, w) = split(s, hs.into_transport_mode()?, dialer);
        Ok((dialer, r, w))
    })
    .await
    .map_err(|_| LinkError::Timeout)?
}

impl LinkWriter {
    pub fn peer(&self) -> PublicKey {
        self.peer
    }

    /// Sends one message; returns its encoded size (before encryption and framing).
    pub async fn send(&mut self, msg: &Msg) -> Result<usize, LinkError> {
        let data = serde_json::to_vec(msg)?;
        if data.len() > MAX_MESSAGE {
            return Err(LinkError::TooLarge(data.len()));
        }
        let mut out = Vec::with_capacity(data.len() + data.len() / CHUNK * (TAG + 3) + TAG + 3);
        {
            let mut noise = lock(&self.noise);
            let mut chunks = data.chunks(CHUNK).peekable();
            let mut plain = Vec::with_capacity(CHUNK + 1);
            let mut ct = vec![0u8; NOISE_MAX];
            loop {
                let chunk = chunks.next().unwrap_or(&[]);
                let more = chunks.peek().is_some();
                plain.clear();
                plain.push(u8::from(more));
                plain.extend_from_slice(chunk);
                let n = noise.write_message(&plain, &mut ct)?;
                out.extend_from_slice(&(n as u16).to_be_bytes());
                out.extend_from_slice(&ct[..n]);
                if !more {
                    break;
                }
            }
        }
        self.w.write_all(&out).await?;
        Ok(data.len())
    }
}

impl LinkReader {
    pub fn peer(&self) -> PublicKey {
        self.peer
    }

    /// The next message; an error ends the link (a tampered frame fails decryption).
    pub async fn recv(&mut self) -> Result<Msg, LinkError> {
        let mut data = Vec::new();
        let mut plain = vec![0u8; NOISE_MAX];
        loop {
            let frame = read_frame(&mut self.r).await?;
            let n = lock(&self.noise).read_message(&frame, &mut plain)?;
            if n == 0 {
                return Err(LinkError::BadHello);
            }
            data.extend_from_slice(&plain[1..n]);
            if data.len() > MAX_MESSAGE {
                return Err(LinkError::TooLarge(data.len()));
            }
            if plain[0] == 0 {
                break;
            }
        }
        decode_message(&data)
    }
}

/// A decrypted application message as a link reads it (for fuzzing the decoder).
pub fn decode_message(data: &[u8]) -> Result<Msg, LinkError> {
    if data.len() > MAX_MESSAGE {
        return Err(LinkError::TooLarge(data.len()));
    }
    Ok(serde_json::from_slice(data)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair_listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    #[tokio::test]
    async fn listed_nodes_talk_and_large_messages_are_chunked() {
        let (a, b) = (NodeKey::generate(), NodeKey::generate());
        let (l, addr) = pair_listener().await;
        let a_pub = a.public();
        let b_pub = b.public();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (peer, mut r, mut w) = accept(s, &b, |k| *k == a_pub).await.unwrap();
            assert_eq!(peer, a_pub);
            let m = r.recv().await.unwrap();
            w.send(&m).await.unwrap();
        });
        let (mut r, mut w) = connect(addr, &a, b_pub).await.unwrap();
        let big = Msg::Digest((0..200_000u64).collect());
        w.send(&big).await.unwrap();
        assert_eq!(r.recv().await.unwrap(), big);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn unlisted_and_impostor_dialers_are_refused() {
        let (a, b, stranger) = (NodeKey::generate(), NodeKey::generate(), NodeKey::generate());
        let (l, addr) = pair_listener().await;
        let a_pub = a.public();
        let b_pub = b.public();
        let server = tokio::spawn(async move {
            let mut errs = Vec::new();
            for _ in 0..2 {
                let (s, _) = l.accept().await.unwrap();
                errs.push(accept(s, &b, |k| *k == a_pub).await.err().unwrap());
            }
            errs
        });
        // A stranger under its own key: refused at the hello.
        let e1 = connect(addr, &stranger, b_pub).await.err().expect("refused");
        assert!(matches!(e1, LinkError::Io(_)), "{e1:?}");
        // A stranger claiming A's key without A's secret: the Noise handshake fails.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&a_pub.0);
        hello.extend_from_slice(&b_pub.0);
        s.write_all(&hello).await.unwrap();
        let pro = prologue(&a_pub, &b_pub);
        let secret = stranger.x25519_secret();
        let remote = b_pub.x25519().unwrap();
        let mut hs = builder(&secret, &remote, &pro).build_initiator().unwrap();
        let mut buf = vec![0u8; NOISE_MAX];
        let n = hs.write_message(&[], &mut buf).unwrap();
        write_frame(&mut s, &buf[..n]).await.unwrap();
        assert!(read_frame(&mut s).await.is_err(), "the listener must close");
        let errs = server.await.unwrap();
        assert!(
            matches!(errs[0], LinkError::Unlisted(k) if k == stranger.public()),
            "{:?}",
            errs[0]
        );
        assert!(matches!(errs[1], LinkError::Noise(_)), "{:?}", errs[1]);
    }
}
