//! The client-side byte stream, whatever it arrived as: plain TCP or TLS, possibly with bytes already read
//! past a PROXY header that must be replayed before the socket's own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A stream with some bytes to replay first. Empty `prefix` costs no allocation.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed { prefix, pos: 0, inner }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                // Free the replay buffer as soon as it is spent.
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // rustls hands its queued records over as a vector, usually of one record. A one-slice `writev` costs
        // the kernel's iovec import and VFS layer; `send` goes straight to the socket. Several slices still
        // go out in one `writev`.
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        match (nonempty.next(), nonempty.next()) {
            (None, _) => Poll::Ready(Ok(0)),
            (Some(one), None) => Pin::new(&mut self.inner).poll_write(cx, one),
            _ => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

pub type Tcp = Prefixed<TcpStream>;

impl Tcp {
    /// Moves the socket's readiness events to the runtime this is called on. A socket is watched by the
    /// reactor of the runtime that registered it: one accepted on an intake thread would otherwise keep
    /// waking that thread, and wait for it, for every read of its session. The socket is registered again
    /// under a duplicate descriptor, then the first is deregistered and closed; the connection itself, and
    /// anything TLS has buffered above it, is untouched.
    pub fn rehome(&mut self) -> io::Result<()> {
        let dup = std::os::fd::AsFd::as_fd(&self.inner).try_clone_to_owned()?;
        let fresh = TcpStream::from_std(std::net::TcpStream::from(dup))?;
        drop(std::mem::replace(&mut self.inner, fresh));
        Ok(())
    }
}

/// What a front's protocol session reads from and writes to.
pub enum ClientStream {
    Plain(Tcp),
    Tls(Box<TlsStream<Tcp>>),
}

impl ClientStream {
    /// See [`Tcp::rehome`].
    pub fn rehome(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(t) => t.rehome(),
            ClientStream::Tls(t) => t.get_mut().0.rehome(),
        }
    }

    /// "TLSv1.3", "TLSv1.2" or "none", for logs.
    pub fn tls_version(&self) -> &'static str {
        match self {
            ClientStream::Plain(_) => "none",
            ClientStream::Tls(t) => match t.get_ref().1.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "unknown",
            },
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            ClientStream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            ClientStream::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection accepted on one runtime and moved to another keeps working after the first runtime is
    /// gone: its readiness events come from the runtime that now polls it.
    #[test]
    fn a_rehomed_socket_outlives_the_runtime_that_accepted_it() {
        let intake = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (mut accepted, mut peer) = intake.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().await.unwrap();
            (Prefixed::new(b"early".to_vec(), s), peer)
        });
        let home = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        home.block_on(async {
            accepted.rehome().unwrap();
        });
        drop(intake);
        home.block_on(async {
            std::io::Write::write_all(&mut peer, b" late").unwrap();
            let mut got = [0u8; 10];
            tokio::time::timeout(std::time::Duration::from_secs(5), accepted.read_exact(&mut got))
                .await
                .expect("the read waits on the runtime that accepted the socket")
                .unwrap();
            assert_eq!(&got, b"early late");
            accepted.write_all(b"answer").await.unwrap();
        });
        let mut back = [0u8; 6];
        std::io::Read::read_exact(&mut peer, &mut back).unwrap();
        assert_eq!(&back, b"answer");
    }
}
