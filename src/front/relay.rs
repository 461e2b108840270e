//! Bidirectional L4 relay between a client and its upstream.
//!
//! Unlike `tokio::io::copy_bidirectional`, a direction holds a buffer only while it has bytes in flight:
//! an idle connection (the common case: wallets parked on subscriptions, peers between blocks) owns no
//! buffer at all, and buffers come from a small per-thread pool. Backpressure is natural: a direction
//! does not read again until its buffer has been written out.
//!
//! A [`Policy`] sees every chunk before it is written on (and may end the relay or, toward the client,
//! rewrite it), paces each direction, and bounds how long the client may leave bytes unread. The plain
//! relay's policy, [`Plain`], does nothing and compiles away.

use crate::listen::CloseReason;
use crate::wire::buf::{give_buf, take_buf, BUF_SIZE};
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
    /// The policy refused what a side sent.
    Refused(CloseReason),
    /// The client left bytes unread longer than the policy allows.
    SlowPeer,
    /// The process-wide memory budget chose this session to be cut.
    MemoryBudget,
}

/// What a relay asks of the session it serves, per chunk and per poll. Every method has a do-nothing
/// default, so [`Plain`] is the relay of old.
pub trait Policy {
    /// Bytes just read from the client, before any of them reaches the upstream.
    fn client_read(&mut self, _data: &[u8]) -> Result<(), CloseReason> {
        Ok(())
    }

    /// Bytes just read from the upstream: true when `out` (empty on entry) holds what the client gets
    /// instead of `data`.
    fn upstream_read(&mut self, _data: &[u8], _out: &mut Vec<u8>) -> bool {
        false
    }

    /// When the client (`toward_upstream`) or upstream side may be read next; None: now.
    fn read_after(&mut self, _toward_upstream: bool, _now: Instant) -> Option<Instant> {
        None
    }

    /// How long bytes toward the client may wait unwritten before the relay ends.
    fn slow_peer_timeout(&self) -> Option<Duration> {
        None
    }

    /// The relay holds `relay_bytes` for this session now; Ready when the session must be cut for it.
    fn poll_held(&mut self, _relay_bytes: usize, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

/// No checks, no limits.
pub struct Plain;

impl Policy for Plain {}

#[derive(Default)]
struct Direction {
    buf: Option<Box<[u8]>>,
    /// A rewritten chunk, written instead of `buf` when `use_alt`; its allocation is kept.
    alt: Vec<u8>,
    use_alt: bool,
    pos: usize,
    end: usize,
    read_done: bool,
    finished: bool,
    need_flush: bool,
    bytes: u64,
    /// Since when the writer has refused bytes we hold.
    stalled_since: Option<Instant>,
    /// Not reading until then (the policy's pacing).
    wait: Option<Instant>,
}

enum Halt {
    Reader(io::Error),
    Writer(io::Error),
    Policy(CloseReason),
}

impl Direction {
    fn held(&self) -> usize {
        if self.use_alt {
            self.alt.capacity()
        } else if self.buf.is_some() {
            BUF_SIZE
        } else {
            0
        }
    }

    /// Moves bytes from `r` to `w` until `r` would block, then returns Pending. Ready(Ok) once `r` hit EOF
    /// and `w` has been shut down.
    #[allow(clippy::too_many_arguments)]
    fn poll_copy<R, W, P>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        active: &mut bool,
        policy: &mut P,
        toward_upstream: bool,
        now: Instant,
    ) -> Poll<Result<(), Halt>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
        P: Policy + ?Sized,
    {
        self.wait = None;
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos < self.end {
                let bytes = if self.use_alt {
                    &self.alt[self.pos..self.end]
                } else {
                    &self.buf.as_ref().expect("bytes pending imply a buffer")[self.pos..self.end]
                };
                let n = match w.as_mut().poll_write(cx, bytes) {
                    Poll::Ready(r) => r.map_err(Halt::Writer)?,
                    Poll::Pending => {
                        self.stalled_since.get_or_insert(now);
                        return Poll::Pending;
                    }
                };
                if n == 0 {
                    return Poll::Ready(Err(Halt::Writer(io::ErrorKind::WriteZero.into())));
                }
                self.stalled_since = None;
                self.pos += n;
                self.bytes += n as u64;
                self.need_flush = true;
                *active = true;
                continue;
            }
            if let Some(b) = self.buf.take() {
                give_buf(b);
            }
            self.use_alt = false;
            self.alt.clear();
            self.pos = 0;
            self.end = 0;
            if self.read_done {
                ready!(w.as_mut().poll_shutdown(cx)).map_err(Halt::Writer)?;
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
            if let Some(t) = policy.read_after(toward_upstream, now) {
                self.wait = Some(t);
                if self.need_flush {
                    ready!(w.as_mut().poll_flush(cx)).map_err(Halt::Writer)?;
                    self.need_flush = false;
                }
                return Poll::Pending;
            }
            let mut buf = take_buf();
            let mut rb = ReadBuf::new(&mut buf);
            match r.as_mut().poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        give_buf(buf);
                        self.read_done = true;
                        continue;
                    }
                    *active = true;
                    if toward_upstream {
                        if let Err(reason) = policy.client_read(&buf[..n]) {
                            give_buf(buf);
                            return Poll::Ready(Err(Halt::Policy(reason)));
                        }
                    } else if policy.upstream_read(&buf[..n], &mut self.alt) {
                        give_buf(buf);
                        self.use_alt = true;
                        self.end = self.alt.len();
                        continue;
                    }
                    self.end = n;
                    self.buf = Some(buf);
                }
                Poll::Ready(Err(e)) => {
                    give_buf(buf);
                    return Poll::Ready(Err(Halt::Reader(e)));
                }
                Poll::Pending => {
                    give_buf(buf);
                    // Nothing more to read for now: push out what the writer buffered (TLS records)
                    // before sleeping, or the peer would wait on bytes we hold.
                    if self.need_flush {
                        ready!(w.as_mut().poll_flush(cx)).map_err(Halt::Writer)?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// A running relay. Poll it to completion (or drop it to abort); counters stay readable afterwards.
pub struct Relay<'a, C: ?Sized, U: ?Sized, P = Plain> {
    client: &'a mut C,
    upstream: &'a mut U,
    policy: P,
    up: Direction,
    down: Direction,
    idle: Duration,
    last_active: Instant,
    timer: Pin<Box<Sleep>>,
    first_closed: Option<bool>,
}

impl<'a, C, U> Relay<'a, C, U, Plain>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    pub fn new(client: &'a mut C, upstream: &'a mut U, idle: Duration) -> Self {
        Relay::with_policy(client, upstream, idle, Plain, &[])
    }
}

impl<'a, C, U, P> Relay<'a, C, U, P>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    P: Policy,
{
    /// A relay under `policy`; `first` (client bytes already read and judged) goes to the upstream first.
    pub fn with_policy(client: &'a mut C, upstream: &'a mut U, idle: Duration, policy: P, first: &[u8]) -> Self {
        let now = Instant::now();
        let mut up = Direction::default();
        if !first.is_empty() {
            up.alt.extend_from_slice(first);
            up.use_alt = true;
            up.end = first.len();
        }
        Relay {
            client,
            upstream,
            policy,
            up,
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

    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// The earliest moment something other than I/O must happen: the idle deadline, the slow-peer
    /// deadline, the end of a pacing wait.
    fn next_deadline(&self) -> Instant {
        let mut next = self.last_active + self.idle;
        if let (Some(t), Some(since)) = (self.policy.slow_peer_timeout(), self.down.stalled_since) {
            next = next.min(since + t);
        }
        for w in [self.up.wait, self.down.wait].into_iter().flatten() {
            next = next.min(w);
        }
        next
    }
}

impl<C, U, P> Future for Relay<'_, C, U, P>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    P: Policy + Unpin,
{
    type Output = RelayEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let this = self.get_mut();
        let mut active = false;
        let now = Instant::now();
        let up = this.up.poll_copy(
            cx,
            Pin::new(&mut *this.client),
            Pin::new(&mut *this.upstream),
            &mut active,
            &mut this.policy,
            true,
            now,
        );
        if let Poll::Ready(Err(halt)) = up {
            return Poll::Ready(match halt {
                // A TLS client that closes TCP without close_notify has simply hung up.
                Halt::Reader(e) if e.kind() == io::ErrorKind::UnexpectedEof => RelayEnd::ClientClosed,
                Halt::Reader(e) => RelayEnd::ClientError(e),
                Halt::Writer(e) => RelayEnd::UpstreamError(e),
                Halt::Policy(r) => RelayEnd::Refused(r),
            });
        }
        let down = this.down.poll_copy(
            cx,
            Pin::new(&mut *this.upstream),
            Pin::new(&mut *this.client),
            &mut active,
            &mut this.policy,
            false,
            now,
        );
        if let Poll::Ready(Err(halt)) = down {
            return Poll::Ready(match halt {
                Halt::Reader(e) => RelayEnd::UpstreamError(e),
                Halt::Writer(e) => RelayEnd::ClientError(e),
                Halt::Policy(r) => RelayEnd::Refused(r),
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
        if this.policy.poll_held(this.up.held() + this.down.held(), cx).is_ready() {
            return Poll::Ready(RelayEnd::MemoryBudget);
        }
        if active {
            this.last_active = now;
        }
        // The timer is re-armed lazily for the idle deadline: activity only records a timestamp, and the
        // deadline moves when the timer fires early. This keeps busy connections from touching the timer
        // wheel on every read. Earlier deadlines (a pacing wait, a stalled client) move it at once.
        let next = this.next_deadline();
        if next < this.timer.deadline() {
            this.timer.as_mut().reset(next);
        }
        loop {
            ready!(this.timer.as_mut().poll(cx));
            let now = Instant::now();
            if this.last_active + this.idle <= now {
                return Poll::Ready(RelayEnd::IdleTimeout);
            }
            if let (Some(t), Some(since)) = (this.policy.slow_peer_timeout(), this.down.stalled_since) {
                if since + t <= now {
                    return Poll::Ready(RelayEnd::SlowPeer);
                }
            }
            let waited = [this.up.wait, this.down.wait].into_iter().flatten().any(|w| w <= now);
            let next = this.next_deadline();
            this.timer.as_mut().reset(next.max(now));
            if waited {
                // A pacing wait is over: the copies run again on the next poll.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}

impl From<RelayEnd> for CloseReason {
    fn from(end: RelayEnd) -> CloseReason {
        match end {
            RelayEnd::ClientClosed => CloseReason::ClientClosed,
            RelayEnd::UpstreamClosed => CloseReason::UpstreamClosed,
            RelayEnd::IdleTimeout => CloseReason::IdleTimeout,
            RelayEnd::ClientError(_) => CloseReason::ClientError,
            RelayEnd::UpstreamError(_) => CloseReason::UpstreamError,
            RelayEnd::Refused(r) => r,
            RelayEnd::SlowPeer => CloseReason::SlowPeer,
            RelayEnd::MemoryBudget => CloseReason::MemoryBudget,
        }
    }
}
