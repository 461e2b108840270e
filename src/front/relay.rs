//! Bidirectional L4 relay between a client and its upstream.
//!
//! Unlike `tokio::io::copy_bidirectional`, a direction holds a buffer only while it has bytes in flight:
//! an idle connection (the common case: wallets parked on subscriptions, peers between blocks) owns no
//! buffer at all, and buffers come from a small per-thread pool. Backpressure is natural: a direction
//! does not read again until its buffer has been written out.

use crate::listen::CloseReason;
use crate::wire::buf::{give_buf, take_buf};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client finished first (EOF), then the upstream finished.
    ClientClosed,
    /// The upstream finished first, then the client.
    UpstreamClosed,
    IdleTimeout,
    ClientError(io::Error),
    UpstreamError(io::Error),
}

#[derive(Default)]
struct Direction {
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    read_done: bool,
    finished: bool,
    need_flush: bool,
    bytes: u64,
}

enum Side {
    Reader,
    Writer,
}

impl Direction {
    /// Moves bytes from `r` to `w` until `r` would block, then returns Pending. Ready(Ok) once `r` hit EOF
    /// and `w` has been shut down. Errors say which side failed.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        active: &mut bool,
    ) -> Poll<Result<(), (Side, io::Error)>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos < self.end {
                let buf = self.buf.as_ref().expect("bytes pending imply a buffer");
                let n = ready!(w.as_mut().poll_write(cx, &buf[self.pos..self.end])).map_err(|e| (Side::Writer, e))?;
                if n == 0 {
                    return Poll::Ready(Err((Side::Writer, io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                self.bytes += n as u64;
                self.need_flush = true;
                *active = true;
                continue;
            }
            if let Some(b) = self.buf.take() {
                give_buf(b);
            }
            self.pos = 0;
            self.end = 0;
            if self.read_done {
                ready!(w.as_mut().poll_shutdown(cx)).map_err(|e| (Side::Writer, e))?;
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
            let mut buf = take_buf();
            let mut rb = ReadBuf::new(&mut buf);
            match r.as_mut().poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        give_buf(buf);
                        self.read_done = true;
                    } else {
                        self.end = n;
                        self.buf = Some(buf);
                        *active = true;
                    }
                }
                Poll::Ready(Err(e)) => {
                    give_buf(buf);
                    return Poll::Ready(Err((Side::Reader, e)));
                }
                Poll::Pending => {
                    give_buf(buf);
                    // Nothing more to read for now: push out what the writer buffered (TLS records)
                    // before sleeping, or the peer would wait on bytes we hold.
                    if self.need_flush {
                        ready!(w.as_mut().poll_flush(cx)).map_err(|e| (Side::Writer, e))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// A running relay. Poll it to completion (or drop it to abort); counters stay readable afterwards.
pub struct Relay<'a, C: ?Sized, U: ?Sized> {
    client: &'a mut C,
    upstream: &'a mut U,
    up: Direction,
    down: Direction,
    idle: Duration,
    last_active: Instant,
    timer: Pin<Box<Sleep>>,
    first_closed: Option<bool>,
}

impl<'a, C, U> Relay<'a, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    pub fn new(client: &'a mut C, upstream: &'a mut U, idle: Duration) -> Self {
        let now = Instant::now();
        Relay {
            client,
            upstream,
            up: Direction::default(),
            down: Direction::default(),
            idle,
            last_active: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            first_closed: None,
        }
    }

    /// Bytes from client to upstream.
    pub fn bytes_in(&self) -> u64 {
        self.up.bytes
    }

    /// Bytes from upstream to client.
    pub fn bytes_out(&self) -> u64 {
        self.down.bytes
    }
}

impl<C, U> Future for Relay<'_, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = RelayEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let this = self.get_mut();
        let mut active = false;
        let up = this.up.poll_copy(
            cx,
            Pin::new(&mut *this.client),
            Pin::new(&mut *this.upstream),
            &mut active,
        );
        if let Poll::Ready(Err((side, e))) = up {
            return Poll::Ready(match side {
                // A TLS client that closes TCP without close_notify has simply hung up.
                Side::Reader if e.kind() == io::ErrorKind::UnexpectedEof => RelayEnd::ClientClosed,
                Side::Reader => RelayEnd::ClientError(e),
                Side::Writer => RelayEnd::UpstreamError(e),
            });
        }
        let down = this.down.poll_copy(
            cx,
            Pin::new(&mut *this.upstream),
            Pin::new(&mut *this.client),
            &mut active,
        );
        if let Poll::Ready(Err((side, e))) = down {
            return Poll::Ready(match side {
                Side::Reader => RelayEnd::UpstreamError(e),
                Side::Writer => RelayEnd::ClientError(e),
            });
        }
        if this.first_closed.is_none() {
            if this.up.read_done {
                this.first_closed = Some(true);
            } else if this.down.read_done {
                this.first_closed = Some(false);
            }
        }
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(if this.first_closed == Some(false) {
                RelayEnd::UpstreamClosed
            } else {
                RelayEnd::ClientClosed
            });
        }
        // The timer is re-armed lazily: activity only records a timestamp, and the deadline moves when the
        // timer fires early. This keeps busy connections from touching the timer wheel on every read.
        let now = Instant::now();
        if active {
            this.last_active = now;
        }
        loop {
            ready!(this.timer.as_mut().poll(cx));
            let deadline = this.last_active + this.idle;
            if deadline <= Instant::now() {
                return Poll::Ready(RelayEnd::IdleTimeout);
            }
            this.timer.as_mut().reset(deadline);
        }
    }
}

impl From<&RelayEnd> for CloseReason {
    fn from(end: &RelayEnd) -> CloseReason {
        match end {
            RelayEnd::ClientClosed => CloseReason::ClientClosed,
            RelayEnd::UpstreamClosed => CloseReason::UpstreamClosed,
            RelayEnd::IdleTimeout => CloseReason::IdleTimeout,
            RelayEnd::ClientError(_) => CloseReason::ClientError,
            RelayEnd::UpstreamError(_) => CloseReason::UpstreamError,
        }
    }
}
