//! One Electrum client session: frames the client's JSON-RPC lines, applies version and method policy,
//! charges the cost ledger, throttles (concurrency + sleep), forwards what is allowed to the session's own
//! upstream connection, and polices what comes back (rewrites, size limits, slow readers).
//!
//! The session is one task driving both sockets from a single poll function, so it holds no lock and
//! spawns nothing. Forwarded requests are the client's own bytes with one change: the id is the
//! gateway's (a per-session counter), and replies are matched by it and given back the client's id
//! byte for byte. Nothing else is re-serialised except the `result` of the few replies the gateway
//! rewrites (server.features, server.peers.subscribe) and server.version's clamped range.

use super::frame::{Frame, LineDecoder};
use super::gate::{Gate, Offer};
use super::jsonrpc::{self, ErrorCode, Incoming, Message, ParseError, RawJson, Request, RpcError};
use super::methods::{self, CostKind, MethodInfo, ProtoVersion, Special};
use super::settings::{ElectrumSettings, VersionAnswer, VersionPolicy};
use super::Handles;
use crate::front::{CloseReason, FrontState};
use crate::guard::limits::KeyedCounts;
use crate::state::bans::BanPolicy;
use crate::state::cost::CostConfig;
use crate::state::cost::{Account, Throttle};
use crate::state::memory::Charge;
use crate::state::tier::{Tier, TierBans, DEFAULT_SCALE};
use crate::telemetry::metrics::{self, Class, ReqResult};
use crate::wire::buf::{give_buf, take_buf};
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Queue length at which the session stops reading the client: a pipelining client then waits in its
/// own socket buffer instead of in gateway memory.
const MAX_QUEUED: usize = 64;
/// Bytes queued towards the upstream at which the session stops reading the client.
const MAX_UP_OUT: usize = 1 << 20;
/// How long a session found over the cost hard limit may still send its next request (which then gets
/// the -101 as its reply, as ElectrumX does) before it is cut with an unsolicited -101.
const HARD_LIMIT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
/// Each session's grace is longer by a random share of this. A group goes over for all its sessions at
/// once: without the spread a flood's thousands of sessions were all cut in the same instant, and the
/// wave of replies and closes held the gateway's worker for tens of milliseconds while honest
/// requests waited behind it. Random, so that a client cannot line its sessions' cuts up again.
const HARD_LIMIT_SPREAD: std::time::Duration = std::time::Duration::from_millis(400);

/// What a session reports when it ends.
pub struct Outcome {
    pub reason: CloseReason,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub requests: u64,
    pub cost: f64,
    /// The trusted tier the session was accounted in.
    pub tier: Option<Arc<Tier>>,
}

/// A client's JSON-RPC id, kept byte for byte so the reply carries exactly what the client sent; small
/// ids stay inline so tracking allocates nothing.
#[derive(Clone, PartialEq, Eq)]
enum IdKey {
    Inline([u8; 22], u8),
    Heap(Box<[u8]>),
}

impl IdKey {
    fn new(raw: RawJson) -> IdKey {
        let b = raw.get().as_bytes();
        if b.len() <= 22 {
            let mut a = [0u8; 22];
            a[..b.len()].copy_from_slice(b);
            IdKey::Inline(a, b.len() as u8)
        } else {
            IdKey::Heap(b.into())
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            IdKey::Inline(a, n) => &a[..*n as usize],
            IdKey::Heap(b) => b,
        }
    }

    fn raw(&self) -> &str {
        std::str::from_utf8(self.bytes()).unwrap_or("null")
    }

    /// The id as a JSON value for the reply writers (a borrowing check: no allocation).
    fn json(&self) -> Option<RawJson<'_>> {
        RawJson::parse(self.raw())
    }
}

/// Where the gateway's own id goes in a forwarded request: it replaces the client's id, or (for a
/// notification, which has none) is inserted as the object's first member. `Local`: the request is
/// answered by the gateway, and its bytes are the result to answer with.
#[derive(Clone, Copy)]
enum IdSlot {
    Replace(u32, u32),
    Insert(u32),
    Local,
}

/// What the session owes the client for one forwarded request.
struct Track {
    /// The client's id; `None` for a notification, whose answer is dropped (it is forwarded with a
    /// gateway id all the same, so it holds its throttle slot until the backend has answered).
    id: Option<IdKey>,
    info: &'static MethodInfo,
    /// The client batch this request is an item of.
    batch: Option<u64>,
    /// Counts against the backend's heavy budget too.
    heavy: bool,
}

/// A client batch being answered: its items go to the backend one by one as throttle slots allow, and
/// the reply array goes out once every item is answered.
struct BatchReply {
    key: u64,
    /// Entries so far, comma-separated: the gateway's own answers, then the backend's as they come.
    out: Vec<u8>,
    /// Forwarded items not answered yet.
    waiting: usize,
}

/// One reply entry, written with the client's id.
enum Entry<'a> {
    /// The backend's reply; `id` is where the gateway's id sits in it.
    Backend {
        line: &'a [u8],
        id: std::ops::Range<usize>,
    },
    /// A result the gateway wrote itself (valid JSON).
    Result(&'a str),
    Error(ErrorCode, &'a str),
}

/// A request waiting for a slot or sleeping in its slot before being forwarded.
struct Queued {
    bytes: Vec<u8>,
    slot: IdSlot,
    track: Track,
    arrived: Instant,
    wake: Instant,
}

/// A forwarded request, known by the id the gateway gave it.
struct InFlight {
    gid: u64,
    track: Track,
    arrived: Instant,
    /// When it was written upstream: the backend's latency, for a learned in-flight window.
    sent: Instant,
    /// Already answered with -102; the backend's late reply is dropped.
    timed_out: bool,
}

enum Event {
    Client(Box<[u8]>, usize),
    ClientEof,
    ClientError,
    Upstream(Box<[u8]>, usize),
    UpstreamEof,
    UpstreamError,
    Timer,
    Flushed,
    Shutdown,
    /// The backend's budget granted slots to requests waiting in the gate, or pushed some out.
    Granted,
    /// The process-wide memory budget chose this session to be cut.
    MemoryCut,
    /// The session's group reached the cost hard limit (possibly through others' charges).
    CostAlert,
}

struct Session<'a> {
    front: &'a FrontState,
    shared: &'a Handles,
    set: &'a ElectrumSettings,
    client: SocketAddr,
    local: SocketAddr,
    account: Account,
    /// Cost settings, refreshed from the Electrum handles when a reload swaps them (limits live in the ledger).
    cost: Arc<CostConfig>,
    ban_policy: Arc<BanPolicy>,
    /// Throttle state as of the last charge; decay only lowers cost, so between charges this errs strict.
    th: Throttle,
    /// Time of the event being handled: one clock read per event, not per message.
    now: Instant,
    negotiated: Option<ProtoVersion>,
    version_seen: bool,
    /// The clamped range of a server.version forwarded to the backend, to learn from its answer.
    asked_version: Option<(ProtoVersion, ProtoVersion)>,
    /// A server.version the gateway answered itself: the line that opens the backend connection once one
    /// is needed.
    promised_version: Option<Vec<u8>>,
    /// The backend the session is connected to.
    backend: Option<SocketAddr>,
    waiting: VecDeque<Queued>,
    sleeping: Vec<Queued>,
    /// Let go by the throttle, waiting for a slot at the backend's in-flight budget.
    gate: Gate<Queued>,
    /// In the order forwarded, so by increasing `gid`.
    inflight: VecDeque<InFlight>,
    /// The last id the gateway gave a forwarded request (per session: replies come back on the
    /// session's own upstream connection).
    last_gid: u64,
    batches: Vec<BatchReply>,
    last_batch: u64,
    client_out: Vec<u8>,
    up_out: Vec<u8>,
    client_blocked_since: Option<Instant>,
    last_request: Instant,
    violations: u32,
    subs: usize,
    group_subs: usize,
    requests: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Set when the session must end once `client_out` is flushed.
    closing: Option<CloseReason>,
    /// Set when the session must end now, without flushing.
    abort: Option<CloseReason>,
    upstream_failed: bool,
    /// This session's share of the process-wide memory budget.
    mem: Charge,
    /// Bytes held by both line decoders (partial client lines and partial backend replies).
    dec_bytes: usize,
    /// Bytes the client transport holds of a message not yet handed over (WebSocket framing).
    transport_bytes: usize,
    /// Bytes of the client's partial line (in the decoder or the transport), and since when it has been
    /// arriving.
    partial: usize,
    line_started: Option<Instant>,
    /// When to check again whether the session, over the hard limit, must be cut though it sends nothing.
    hard_check: Option<Instant>,
    /// This session's own charge took its group over the hard limit: its pending requests are still
    /// served (ElectrumX judges a request when it arrives) and its next request gets the -101.
    crossed_here: bool,
}

/// The client side of a session: a byte stream, what its transport holds of a message not yet handed
/// over, and what it dropped on the way.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin {
    /// Bytes the transport holds of a message it has not handed over yet (WebSocket framing), so the
    /// memory budget and the slow-line floor see them too.
    fn pending(&self) -> usize {
        0
    }

    /// Bytes read from the client but dropped before the session saw them (the cut tail of an
    /// oversized WebSocket message) since the last call; charged like any bytes read.
    fn take_discarded(&mut self) -> u64 {
        0
    }
}

impl ClientIo for crate::listen::stream::ClientStream {}

/// Runs a session to its end. `client` is the already admitted (and TLS-terminated) client stream.
pub async fn run<C>(
    client: &mut C,
    peer: SocketAddr,
    local: SocketAddr,
    front: &FrontState,
    shared: &Handles,
) -> Outcome
where
    C: ClientIo + ?Sized,
{
    let set = front
        .cfg
        .electrum
        .as_deref()
        .expect("electrum front has electrum settings");
    let account = shared.ledger.open(peer.ip());
    let cost = shared.cost.load_full();
    let ban_policy = shared.ban_policy.load_full();
    let th = account.charge(cost.connection_cost);
    let now = Instant::now();
    let mut s = Session {
        front,
        shared,
        set,
        client: peer,
        local,
        account,
        cost,
        ban_policy,
        th,
        now,
        negotiated: None,
        version_seen: false,
        asked_version: None,
        promised_version: None,
        backend: None,
        waiting: VecDeque::new(),
        sleeping: Vec::new(),
        gate: Gate::new(!front.cfg.budget.is_off()),
        inflight: VecDeque::new(),
        last_gid: 0,
        batches: Vec::new(),
        last_batch: 0,
        client_out: Vec::new(),
        up_out: Vec::new(),
        client_blocked_since: None,
        last_request: now,
        violations: 0,
        subs: 0,
        group_subs: 0,
        requests: 0,
        bytes_in: 0,
        bytes_out: 0,
        closing: None,
        abort: None,
        upstream_failed: false,
        mem: shared.memory.open(),
        dec_bytes: 0,
        transport_bytes: 0,
        partial: 0,
        line_started: None,
        hard_check: None,
        crossed_here: false,
    };
    s.gate.set_throttled(s.th.frac > 0.0);
    let mut client_dec = LineDecoder::new(set.max_line);
    let mut up_dec = LineDecoder::new(set.max_response);
    let mut upstream: Option<TcpStream> = None;
    let mut timer = Box::pin(tokio::time::sleep_until(s.next_deadline()));
    let cancel = shared.drain.signal(peer);
    tokio::pin!(cancel);
    let reason = loop {
        if let Some(r) = s.abort.take() {
            break r;
        }
        if s.client_out.is_empty() {
            if let Some(r) = s.closing.take() {
                let _ = std::future::poll_fn(|cx| Pin::new(&mut *client).poll_shutdown(cx)).await;
                break r;
            }
        }
        // Dial the backend only once there is something to send to it.
        if upstream.is_none() && (!s.up_out.is_empty() || s.gate.wants_backend()) && !s.upstream_failed {
            // Boxed: the dial's state is needed once, and inline it would make every idle session's
            // future larger by as much.
            match Box::pin(front.pool.connect(s.client, s.local)).await {
                Ok((u, addr)) => {
                    upstream = Some(u);
                    s.now = Instant::now();
                    s.backend = Some(addr);
                    if let Some(line) = &s.promised_version {
                        // Ahead of whatever was granted meanwhile: the backend must hear the version first.
                        s.up_out.splice(0..0, line.iter().copied());
                    }
                    s.bind_gate(addr);
                }
                Err(e) => {
                    s.now = Instant::now();
                    tracing::warn!(front = %front.cfg.name, error = %e, "no upstream reachable");
                    s.upstream_failed = true;
                    s.fail_all(
                        ErrorCode::InternalError,
                        "Electrum backend unavailable, try again later",
                    );
                    s.closing = Some(CloseReason::UpstreamUnreachable);
                    continue;
                }
            }
        }
        s.account_memory();
        // The timer only ever moves earlier here; when it fires early, the Timer event re-arms it. Busy
        // sessions thus do not touch the timer wheel per message.
        let deadline = s.next_deadline();
        if deadline < timer.deadline() {
            timer.as_mut().reset(deadline);
        }
        let ev = std::future::poll_fn(|cx| {
            s.poll_event(cx, &mut *client, upstream.as_mut(), timer.as_mut(), cancel.as_mut())
        })
        .await;
        s.now = Instant::now();
        match ev {
            Event::Client(buf, n) => {
                s.refresh_settings();
                let n_all = n + client.take_discarded() as usize;
                s.bytes_in += n_all as u64;
                s.charge_bytes(n_all);
                // Whole lines are handled straight from the read buffer; only a partial line is copied.
                let mut rest = &buf[..n];
                let mut framed = false;
                while s.closing.is_none() && s.abort.is_none() {
                    let frame = match client_dec.next_direct(&mut rest) {
                        Some(f) => Some(f),
                        None => client_dec.next_frame(),
                    };
                    match frame {
                        Some(Frame::Line(line)) => s.on_client_line(line),
                        Some(Frame::Oversized { discarded }) => s.on_oversized(discarded),
                        None => break,
                    }
                    framed = true;
                }
                // Left unframed by a close: kept, as a fed read would have kept it.
                client_dec.feed(rest);
                give_buf(buf);
                client_dec.shrink_idle();
                s.transport_bytes = client.pending();
                s.note_partial(client_dec.buffered() + s.transport_bytes, framed);
                s.dec_bytes = client_dec.buffered() + up_dec.buffered();
            }
            Event::Upstream(buf, n) => {
                s.charge_bytes(n);
                let mut rest = &buf[..n];
                while s.abort.is_none() {
                    let frame = match up_dec.next_direct(&mut rest) {
                        Some(f) => Some(f),
                        None => up_dec.next_frame(),
                    };
                    match frame {
                        Some(Frame::Line(line)) => s.on_upstream_line(line),
                        Some(Frame::Oversized { .. }) => s.on_response_too_large(),
                        None => break,
                    }
                }
                up_dec.feed(rest);
                give_buf(buf);
                up_dec.shrink_idle();
                s.dec_bytes = client_dec.buffered() + up_dec.buffered();
            }
            Event::ClientEof => break CloseReason::ClientClosed,
            Event::ClientError => break CloseReason::ClientError,
            Event::UpstreamEof | Event::UpstreamError => {
                upstream = None;
                s.upstream_failed = true;
                if s.has_pending() {
                    s.fail_all(ErrorCode::InternalError, "Electrum backend closed the connection");
                }
                s.closing = Some(CloseReason::UpstreamClosed);
            }
            Event::Timer => {
                s.on_timer();
                timer.as_mut().reset(s.next_deadline());
            }
            Event::Flushed => {}
            Event::Granted => {
                while let Some(w) = s.gate.next_granted(s.now) {
                    let q = w.item;
                    s.forward(&q.bytes, q.slot, q.track, q.arrived);
                }
                while let Some(w) = s.gate.next_pushed_out() {
                    s.busy(&w.item.track);
                }
            }
            Event::Shutdown => break CloseReason::Shutdown,
            Event::MemoryCut => {
                tracing::warn!(front = %front.cfg.name, client = %s.client, held = s.mem.held(), "memory budget reached; disconnecting one of the largest sessions");
                s.abort = Some(CloseReason::MemoryBudget);
            }
            Event::CostAlert => s.on_cost_alert(),
        }
    };
    s.release_group_subs();
    Outcome {
        reason,
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
        requests: s.requests,
        cost: s.account.cost(),
        tier: s.account.tier().cloned(),
    }
}

impl Session<'_> {
    /// Picks up reloaded cost and ban settings before the next requests: one pointer comparison when
    /// nothing changed.
    fn refresh_settings(&mut self) {
        let cost = self.shared.cost.load();
        if !Arc::ptr_eq(&self.cost, &cost) {
            self.cost = arc_swap::Guard::into_inner(cost);
        }
        let bans = self.shared.ban_policy.load();
        if !Arc::ptr_eq(&self.ban_policy, &bans) {
            self.ban_policy = arc_swap::Guard::into_inner(bans);
        }
    }

    fn charge(&mut self, units: f64) {
        let th = self.account.charge_at(units, self.now);
        self.note_throttle(th);
    }

    /// Bytes in or out, charged per read rather than per message (the total is the same).
    fn charge_bytes(&mut self, n: usize) {
        let th = self.account.charge_bytes_at(n, self.now);
        self.note_throttle(th);
    }

    /// Remembers whether this session's own charge took its group over the hard limit.
    fn note_throttle(&mut self, th: Throttle) {
        if th.over_hard != self.th.over_hard {
            self.crossed_here = th.over_hard;
        }
        self.th = th;
        self.gate.set_throttled(th.frac > 0.0);
    }

    /// Re-reads the throttle without charging (decay, or others' charges): a crossing seen here is not
    /// this session's, and once the group is back under the limit no earlier crossing counts either.
    fn refresh_throttle(&mut self) {
        self.th = self.account.throttle();
        self.gate.set_throttled(self.th.frac > 0.0);
        if !self.th.over_hard {
            self.crossed_here = false;
        }
    }

    fn has_pending(&self) -> bool {
        !(self.inflight.is_empty() && self.waiting.is_empty() && self.sleeping.is_empty() && self.gate.is_empty())
    }

    /// Drives writes as far as they go, then reports the first read or timer event.
    fn poll_event<C: ClientIo + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        mut upstream: Option<&mut TcpStream>,
        mut timer: Pin<&mut Sleep>,
        cancel: Pin<&mut impl Future<Output = ()>>,
    ) -> Poll<Event> {
        if cancel.poll(cx).is_ready() {
            return Poll::Ready(Event::Shutdown);
        }
        if self.account.poll_alert(cx).is_ready() {
            return Poll::Ready(Event::CostAlert);
        }
        if self.gate.poll_granted(cx).is_ready() {
            return Poll::Ready(Event::Granted);
        }
        let mut wrote = false;
        // Client writes.
        while !self.client_out.is_empty() {
            match Pin::new(&mut *client).poll_write(cx, &self.client_out) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Event::ClientError),
                Poll::Ready(Ok(n)) => {
                    wrote = true;
                    self.client_out.drain(..n);
                    self.bytes_out += n as u64;
                    // Any progress resets the slow-reader clock: only a client that takes nothing is cut.
                    self.client_blocked_since = None;
                }
                Poll::Pending => break,
            }
        }
        if self.client_out.is_empty() && self.closing.is_some() {
            // Everything owed to the client is written: the loop can finish the close now.
            return Poll::Ready(Event::Flushed);
        }
        if self.client_out.is_empty() {
            self.client_blocked_since = None;
            if self.client_out.capacity() > 16 * 1024 {
                self.client_out = Vec::new();
            }
            if let Poll::Ready(Err(_)) = Pin::new(&mut *client).poll_flush(cx) {
                return Poll::Ready(Event::ClientError);
            }
        } else if self.client_blocked_since.is_none() {
            self.client_blocked_since = Some(Instant::now());
        }
        // Upstream writes.
        if let Some(up) = upstream.as_deref_mut() {
            while !self.up_out.is_empty() {
                match Pin::new(&mut *up).poll_write(cx, &self.up_out) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Event::UpstreamError),
                    Poll::Ready(Ok(n)) => {
                        wrote = true;
                        self.up_out.drain(..n);
                    }
                    Poll::Pending => break,
                }
            }
            if self.up_out.is_empty() && self.up_out.capacity() > 16 * 1024 {
                self.up_out = Vec::new();
            }
        }
        if wrote {
            // What was written is no longer held: give it back to the budget before sleeping.
            self.account_memory();
        }
        // Upstream reads: always, so notifications keep flowing until the slow-reader limit decides.
        if let Some(up) = upstream {
            let mut buf = take_buf();
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(up).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        give_buf(buf);
                        return Poll::Ready(Event::UpstreamEof);
                    }
                    return Poll::Ready(Event::Upstream(buf, n));
                }
                Poll::Ready(Err(_)) => {
                    give_buf(buf);
                    return Poll::Ready(Event::UpstreamError);
                }
                Poll::Pending => give_buf(buf),
            }
        }
        // Client reads, unless the session is backed up or closing.
        // Queued requests are copies of client lines (up to max_line each): bound them by bytes as well
        // as by count, so a throttled client cannot park megabytes in the gateway.
        let queued_bytes: usize = self.waiting.iter().map(|q| q.bytes.len()).sum();
        let paused = self.closing.is_some()
            || self.waiting.len() >= MAX_QUEUED
            || queued_bytes >= MAX_UP_OUT
            || self.up_out.len() >= MAX_UP_OUT;
        if paused && self.line_started.is_some() {
            // The gateway, not the client, holds the line up: its clock restarts with the next read.
            self.line_started = None;
        }
        if !paused {
            let mut buf = take_buf();
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut *client).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        give_buf(buf);
                        return Poll::Ready(Event::ClientEof);
                    }
                    return Poll::Ready(Event::Client(buf, n));
                }
                Poll::Ready(Err(e)) => {
                    give_buf(buf);
                    // A TCP close without TLS close_notify is how most wallets hang up.
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        return Poll::Ready(Event::ClientEof);
                    }
                    return Poll::Ready(Event::ClientError);
                }
                Poll::Pending => give_buf(buf),
            }
            self.note_transport(client.pending(), timer.as_mut());
        }
        // Last, after everything above that may have grown the session's charge: a charge that makes it a
        // candidate for cutting only then has a waker to be woken by.
        if self.mem.poll_cut(cx).is_ready() {
            return Poll::Ready(Event::MemoryCut);
        }
        if timer.poll(cx).is_ready() {
            return Poll::Ready(Event::Timer);
        }
        Poll::Pending
    }

    fn next_deadline(&self) -> Instant {
        let timeout = self.cost.request_timeout;
        let mut d = self.last_request + self.front.cfg.idle_timeout;
        if let Some(b) = self.client_blocked_since {
            d = d.min(b + self.set.slow_reader_timeout);
        }
        for q in &self.sleeping {
            d = d.min(q.wake).min(q.arrived + timeout);
        }
        if let Some(q) = self.waiting.front() {
            d = d.min(q.arrived + timeout);
        }
        if let Some(a) = self.gate.oldest() {
            d = d.min(a + timeout);
        }
        if let Some(f) = self.inflight.iter().find(|f| !f.timed_out) {
            d = d.min(f.arrived + timeout);
        }
        if let Some(l) = self.slow_line_deadline() {
            d = d.min(l);
        }
        if let Some(h) = self.hard_check {
            d = d.min(h);
        }
        d
    }

    // ---- memory, slow lines and the hard limit between requests ----------------------------------

    /// Reports what the session buffers to the process-wide budget (cheap unless a step is crossed).
    fn account_memory(&mut self) {
        let queued: usize = self
            .waiting
            .iter()
            .chain(self.sleeping.iter())
            .chain(self.gate.iter())
            .map(|q| q.bytes.len())
            .sum();
        self.mem
            .set(self.dec_bytes + self.transport_bytes + self.client_out.len() + self.up_out.len() + queued);
    }

    /// While no complete message arrives, the transport may still be taking in one's bytes: charge them,
    /// and start the line's clock with the first of them (arming the timer, which only moves earlier).
    fn note_transport(&mut self, pending: usize, timer: Pin<&mut Sleep>) {
        if pending == self.transport_bytes {
            return;
        }
        self.partial = (self.partial + pending).saturating_sub(self.transport_bytes);
        if pending > self.transport_bytes && self.line_started.is_none() {
            self.line_started = Some(Instant::now());
        }
        self.transport_bytes = pending;
        self.account_memory();
        if let Some(d) = self.slow_line_deadline() {
            if d < timer.deadline() {
                timer.reset(d);
            }
        }
    }

    /// After a read: `pending` bytes of a line without its newline are buffered. A line's clock starts
    /// when its first byte is left over, and restarts whenever a complete line was taken.
    fn note_partial(&mut self, pending: usize, framed: bool) {
        if pending == 0 {
            self.line_started = None;
        } else if framed || self.line_started.is_none() {
            self.line_started = Some(self.now);
        }
        self.partial = pending;
    }

    /// When the partial line is too slow: it may take `line_grace` plus its length at `min_line_rate`.
    fn slow_line_deadline(&self) -> Option<Instant> {
        let started = self.line_started?;
        let rate = self.set.min_line_rate;
        let per_byte = rate.per.as_secs_f64() / f64::from(rate.count.max(1));
        let allowed =
            std::time::Duration::try_from_secs_f64(self.partial as f64 * per_byte).unwrap_or(std::time::Duration::MAX);
        Some(started + self.set.line_grace.saturating_add(allowed))
    }

    fn on_cost_alert(&mut self) {
        // Each alert costs a pass over the group: once a check is due, later alerts add nothing.
        if self.closing.is_some() || self.hard_check.is_some() {
            return;
        }
        self.refresh_throttle();
        if self.th.over_hard {
            let spread = HARD_LIMIT_SPREAD
                .mul_f64(f64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng)) / 2f64.powi(32));
            self.hard_check = Some(self.now + HARD_LIMIT_GRACE + spread);
        }
    }

    /// Requests the client is still owed an answer for.
    fn awaits_replies(&self) -> bool {
        !(self.waiting.is_empty() && self.sleeping.is_empty() && self.gate.is_empty())
            || self.inflight.iter().any(|f| !f.timed_out)
    }

    // ---- output helpers -------------------------------------------------------------------------

    fn reply_error(&mut self, id: Option<RawJson>, code: ErrorCode, msg: &str) {
        jsonrpc::write_error(&mut self.client_out, id, code, msg);
        self.charge(self.cost.error_cost);
        self.check_output();
    }

    fn reply_result(&mut self, id: Option<RawJson>, result_json: &str) {
        jsonrpc::write_result(&mut self.client_out, id, result_json);
        self.check_output();
    }

    fn check_output(&mut self) {
        if self.client_out.len() > self.set.max_pending_output {
            tracing::info!(front = %self.front.cfg.name, client = %self.client, pending = self.client_out.len(), "client does not read its replies; disconnecting");
            self.abort = Some(CloseReason::SlowReader);
        }
    }

    /// Answers every request not yet answered with an error (backend gone).
    fn fail_all(&mut self, code: ErrorCode, msg: &str) {
        let mut tracks: Vec<Track> = Vec::new();
        tracks.extend(self.waiting.drain(..).map(|q| q.track));
        tracks.extend(self.sleeping.drain(..).map(|q| q.track));
        tracks.extend(self.gate.drain(self.now).into_iter().map(|q| q.track));
        for f in &self.inflight {
            self.gate.release(f.track.heavy, None, self.now);
        }
        tracks.extend(self.inflight.drain(..).filter(|f| !f.timed_out).map(|f| f.track));
        for t in tracks {
            self.finish(&t, Entry::Error(code, msg));
        }
    }

    /// Writes one reply entry with the client's id, to the client or into its batch; a batch goes
    /// out when its last item is answered. A notification gets nothing, but still completes its item.
    fn finish(&mut self, track: &Track, entry: Entry<'_>) {
        if track.id.is_some() && matches!(entry, Entry::Error(..)) {
            self.charge(self.cost.error_cost);
        }
        let Some(key) = track.batch else {
            if let Some(id) = &track.id {
                write_entry(&mut self.client_out, id, &entry);
                self.client_out.push(b'\n');
                self.check_output();
            }
            return;
        };
        let Some(pos) = self.batches.iter().position(|b| b.key == key) else {
            return;
        };
        let b = &mut self.batches[pos];
        if let Some(id) = &track.id {
            if !b.out.is_empty() {
                b.out.push(b',');
            }
            write_entry(&mut b.out, id, &entry);
        }
        b.waiting -= 1;
        if b.waiting == 0 {
            let b = self.batches.swap_remove(pos);
            self.emit_batch(&b.out);
        }
    }

    /// A batch's reply array; nothing when every item was a notification.
    fn emit_batch(&mut self, entries: &[u8]) {
        if entries.is_empty() || self.abort.is_some() {
            return;
        }
        self.client_out.push(b'[');
        self.client_out.extend_from_slice(entries);
        self.client_out.extend_from_slice(b"]\n");
        self.check_output();
    }

    fn close_with(&mut self, reason: CloseReason) {
        self.closing = Some(reason);
        self.waiting.clear();
        self.sleeping.clear();
        self.gate.drain(self.now);
    }

    /// Hard limit: answer -101, close, and ban the address.
    fn hard_limit(&mut self, id: Option<RawJson>) {
        self.reply_error(id, ErrorCode::ExcessiveResourceUsage, "excessive resource usage");
        self.cut_off();
    }

    /// The hard limit's close and ban, once its -101 is written.
    fn cut_off(&mut self) {
        metrics::hard_limit_disconnect();
        if let Some(t) = self.account.tier() {
            t.metrics.hard_limit();
        }
        self.close_with(CloseReason::CostHardLimit);
        self.ban("cost hard limit");
    }

    fn violation(&mut self, what: &'static str) {
        self.violations += 1;
        if self.ban_policy.enabled && self.violations > self.ban_policy.max_violations {
            self.close_with(CloseReason::ProtocolViolations);
            self.ban(what);
        }
    }

    /// The automatic ban of this client, unless its tier's bans are `never` (the session is cut all the same).
    fn ban(&self, reason: &str) {
        let p = &self.ban_policy;
        if !p.enabled {
            return;
        }
        if let Some(t) = self.account.tier().filter(|t| t.bans == TierBans::Never) {
            t.metrics.ban_spared();
            return;
        }
        self.shared
            .bans
            .ban_offender(self.client.ip(), p.duration, p.max_duration, reason);
    }

    // ---- client side ----------------------------------------------------------------------------

    fn on_oversized(&mut self, discarded: usize) {
        self.requests += 1;
        self.last_request = self.now;
        let _ = discarded; // its bytes were charged as they arrived
        metrics::request(Class::Other, ReqResult::Error);
        self.charge(self.cost.parse_error_cost);
        let msg = format!("request line exceeds {} bytes", self.set.max_line);
        self.reply_error(None, ErrorCode::InvalidRequest, &msg);
        self.violation("oversized request line");
    }

    fn on_client_line(&mut self, line: &[u8]) {
        self.requests += 1;
        self.last_request = self.now;
        let th = self.th;
        let max_batch = self.set.max_batch;
        // Before any parse: a backend written in Python recurses per level of nesting, and what it
        // cannot parse must never reach it.
        if jsonrpc::nesting_exceeds(line, self.set.max_nesting) {
            metrics::request(Class::Other, ReqResult::Error);
            if th.over_hard {
                return self.hard_limit(None);
            }
            let msg = format!("JSON nested deeper than {} levels", self.set.max_nesting);
            self.reply_error(None, ErrorCode::InvalidRequest, &msg);
            return self.violation("JSON nested too deep");
        }
        let parsed = jsonrpc::parse_message(line, max_batch);
        if th.over_hard {
            let (id, class) = match &parsed {
                Ok(Message::Single(r)) => (r.id, Class::of(r.method)),
                _ => (None, Class::Other),
            };
            metrics::request(class, ReqResult::Refused);
            return self.hard_limit(id);
        }
        if parsed.is_err() {
            metrics::request(Class::Other, ReqResult::Error);
        }
        match parsed {
            Err(ParseError::Parse) => {
                self.charge(self.cost.parse_error_cost);
                self.reply_error(None, ErrorCode::ParseError, "parse error");
                self.violation("unparsable request");
            }
            Err(ParseError::Invalid { id }) => {
                self.reply_error(id, ErrorCode::InvalidRequest, "invalid request");
            }
            Err(ParseError::EmptyBatch) => self.reply_error(None, ErrorCode::InvalidRequest, "empty batch"),
            Err(ParseError::BatchTooLarge { len }) => {
                let msg = format!("batch of {len} requests exceeds the limit of {max_batch}");
                self.reply_error(None, ErrorCode::InvalidRequest, &msg)
            }
            Ok(Message::Single(req)) => self.on_request(req),
            Ok(Message::Batch(items)) => self.on_batch(items),
        }
    }

    /// The method's entry if the session may call it now, or the error to answer.
    fn admit_method(&mut self, req: &Request<'_>) -> Result<&'static MethodInfo, RpcError> {
        let negotiated = self.negotiated.unwrap_or(self.set.protocol_max);
        let info = methods::lookup(req.method, self.set.profile, negotiated)
            .or_else(|| {
                self.set
                    .extra_methods
                    .iter()
                    .any(|m| m == req.method)
                    .then(|| methods::extra(req.method))
                    .flatten()
            })
            .ok_or_else(|| RpcError::new(ErrorCode::MethodNotFound, format!("unknown method \"{}\"", req.method)))?;
        methods::validate(info, req.params)?;
        if info.special == Special::Subscribe {
            let scale = self.account.tier().map_or(DEFAULT_SCALE, |t| t.subscriptions);
            let group_cap = scale.cap(Some(self.cost.max_subscriptions_per_group));
            let session_cap = scale.cap(Some(self.set.max_subscriptions));
            if session_cap.is_some_and(|c| self.subs >= c) {
                return Err(RpcError::new(
                    ErrorCode::InvalidRequest,
                    format!("too many subscriptions (limit {})", session_cap.unwrap_or_default()),
                ));
            }
            if let Some((counts, g)) = self.subs_slot() {
                if !counts.try_acquire(g, group_cap) {
                    return Err(RpcError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "too many subscriptions from your network (limit {})",
                            group_cap.unwrap_or_default()
                        ),
                    ));
                }
                self.group_subs += 1;
            }
            self.subs += 1;
            self.account.set_subscriptions(self.subs as u32);
        }
        Ok(info)
    }

    /// The request's cost; operator-added methods cost their configured override or 1.0.
    fn cost_of(&self, info: &MethodInfo, req: &Request<'_>) -> f64 {
        let costs = &self.cost.method_costs;
        if info.name == "extra" {
            return costs.get(req.method).copied().unwrap_or(info.base_cost);
        }
        methods::request_cost(info, req.params, costs)
    }

    fn on_request(&mut self, req: Request<'_>) {
        let id = req.id;
        if req.method == "server.version" {
            return self.on_version(req);
        }
        if self.negotiated.is_none() {
            match self.set.version_policy {
                VersionPolicy::Require => {
                    metrics::request(Class::of(req.method), ReqResult::Refused);
                    self.reply_error(id, ErrorCode::BadRequest, "server.version must be the first request");
                    self.close_with(CloseReason::NoServerVersion);
                    return;
                }
                VersionPolicy::Tolerate => self.negotiated = Some(self.set.protocol_max),
            }
        }
        let class = Class::of(req.method);
        let info = match self.admit_method(&req) {
            Ok(i) => i,
            Err(e) => {
                metrics::request(class, ReqResult::Refused);
                return self.reply_error(id, e.code, &e.message);
            }
        };
        metrics::request(class, ReqResult::Ok);
        self.charge(self.cost_of(info, &req));
        match info.special {
            Special::AddPeer => return self.reply_result(req.id, "false"),
            Special::Banner => {
                if let Some(b) = &self.set.banner {
                    let json = serde_json::to_string(b).unwrap_or_else(|_| "\"\"".into());
                    return self.reply_result(req.id, &json);
                }
            }
            _ => {}
        }
        let Some(slot) = id_slot(&req) else {
            return self.reply_error(id, ErrorCode::InternalError, "internal error");
        };
        let track = Track {
            id: req.id.map(IdKey::new),
            info,
            batch: None,
            heavy: methods::is_heavy(info, req.params),
        };
        self.enqueue(req.raw, slot, track);
    }

    fn on_version(&mut self, req: Request<'_>) {
        let id = req.id;
        if self.version_seen {
            metrics::request(Class::Server, ReqResult::Refused);
            return self.reply_error(id, ErrorCode::BadRequest, "server.version already sent");
        }
        self.version_seen = true;
        self.charge(methods::request_cost(
            methods::lookup("server.version", self.set.profile, self.set.protocol_min)
                .unwrap_or(methods::version_info()),
            req.params,
            &self.cost.method_costs,
        ));
        let (cmin, cmax) = match client_range(req.params) {
            Some(r) => r,
            None => {
                metrics::request(Class::Server, ReqResult::Refused);
                self.reply_error(id, ErrorCode::BadRequest, "invalid protocol version");
                return self.close_with(CloseReason::BadServerVersion);
            }
        };
        let lo = cmin.max(self.set.protocol_min);
        let hi = cmax.min(self.set.protocol_max);
        if hi < lo {
            let msg = format!(
                "unsupported protocol version: this server speaks {} to {}",
                self.set.protocol_min, self.set.protocol_max
            );
            metrics::request(Class::Server, ReqResult::Refused);
            self.reply_error(id, ErrorCode::BadRequest, &msg);
            return self.close_with(CloseReason::UnsupportedProtocolVersion);
        }
        metrics::request(Class::Server, ReqResult::Ok);
        let name = jsonrpc::param_str(req.params, 0, "client_name").unwrap_or("");
        if let Some(answer) = self.known_version(lo, hi) {
            return self.answer_version(id, name, answer);
        }
        self.negotiated = Some(hi);
        self.asked_version = Some((lo, hi));
        // The backend sees the clamped range, so it cannot negotiate a version the gateway does not police.
        // The gateway's id goes in at the front, as for any forwarded request.
        let mut fwd = Vec::with_capacity(128);
        fwd.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"method\":\"server.version\",\"params\":[");
        let _ = serde_json::to_writer(&mut fwd, name);
        fwd.extend_from_slice(format!(",[\"{lo}\",\"{hi}\"]]}}").as_bytes());
        let track = Track {
            id: req.id.map(IdKey::new),
            info: methods::version_info(),
            batch: None,
            heavy: false,
        };
        self.enqueue(&fwd, IdSlot::Insert(1), track);
    }

    /// What the backend this session would be connected to said before, when the client's clamped range
    /// `lo..=hi` holds the version it negotiates.
    fn known_version(&self, lo: ProtoVersion, hi: ProtoVersion) -> Option<(SocketAddr, ProtoVersion, String)> {
        if self.set.version_answer != VersionAnswer::Gateway {
            return None;
        }
        let backend = self.front.pool.preferred()?;
        let (version, result) = self.shared.versions.answer(backend, lo, hi)?;
        Some((backend, version, result))
    }

    /// Answers server.version as `backend` did before, without a backend connection: the session opens
    /// one with its first request, and tells the backend the negotiated version on it first.
    fn answer_version(
        &mut self,
        id: Option<RawJson>,
        name: &str,
        (backend, version, result): (SocketAddr, ProtoVersion, String),
    ) {
        metrics::version_answered();
        self.negotiated = Some(version);
        // Id 0 is never a forwarded request's: theirs count up from 1.
        let mut line = Vec::with_capacity(128);
        line.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"server.version\",\"params\":[");
        let _ = serde_json::to_writer(&mut line, name);
        line.extend_from_slice(format!(",\"{version}\"]}}\n").as_bytes());
        self.promised_version = Some(line);
        // Requests take their places at that backend's budget at once; the dial waits for a granted one.
        self.bind_gate(backend);
        let track = Track {
            id: id.map(IdKey::new),
            info: methods::version_info(),
            batch: None,
            heavy: false,
        };
        // Through the throttle like a forwarded version: a costly group's new sessions wait for their
        // answer as they would for the backend's, and do not all pile their requests in at once.
        self.enqueue(result.as_bytes(), IdSlot::Local, track);
    }

    /// A request the throttle let go that the gateway answers itself; the client pays for the answer's
    /// bytes as it would for the backend's.
    fn answer_here(&mut self, result: &[u8], track: &Track) {
        let before = self.client_out.len();
        match std::str::from_utf8(result) {
            Ok(result) => self.finish(track, Entry::Result(result)),
            Err(_) => self.finish(track, Entry::Error(ErrorCode::InternalError, "internal error")),
        }
        self.charge_bytes(self.client_out.len().saturating_sub(before));
    }

    /// The backend's answer to the version the gateway agreed on its behalf. A backend that now refuses
    /// it is no longer the one that answered before: the session cannot go on at that version, and the
    /// next sessions forward their versions to it again.
    fn on_promised_version(&mut self, line: &[u8]) {
        if version_reply(line).map(|(_, v)| v) == self.negotiated {
            return;
        }
        if let Some(backend) = self.backend {
            self.shared.versions.forget(backend);
        }
        tracing::warn!(front = %self.front.cfg.name, backend = ?self.backend, "the Electrum backend refused the protocol version it negotiated before; versions go to it again");
        self.fail_all(
            ErrorCode::InternalError,
            "Electrum backend refused the negotiated protocol version",
        );
        self.closing = Some(CloseReason::UpstreamRefusedVersion);
    }

    fn on_batch(&mut self, items: Vec<Result<Request<'_>, ParseError<'_>>>) {
        if self.negotiated.is_none() && self.set.version_policy == VersionPolicy::Require {
            metrics::request(Class::Other, ReqResult::Refused);
            self.reply_error(None, ErrorCode::BadRequest, "server.version must be the first request");
            return self.close_with(CloseReason::NoServerVersion);
        }
        if self.negotiated.is_none() {
            self.negotiated = Some(self.set.protocol_max);
        }
        // Every item is a request of its own: for the close line's count, the throttle and the cost.
        self.requests += items.len().saturating_sub(1) as u64;
        self.last_batch += 1;
        let key = self.last_batch;
        let mut local = Vec::new();
        let mut forwarded = 0usize;
        let mut cut = false;
        for item in items {
            let before = local.len();
            // The hard limit applies to each item as to a single request: the rest of the batch is
            // not served.
            if self.th.over_hard {
                let (id, class) = item
                    .as_ref()
                    .map_or((None, Class::Other), |r| (r.id, Class::of(r.method)));
                metrics::request(class, ReqResult::Refused);
                jsonrpc::write_error(
                    &mut local,
                    id,
                    ErrorCode::ExcessiveResourceUsage,
                    "excessive resource usage",
                );
                local.pop();
                self.charge(self.cost.error_cost);
                cut = true;
                break;
            }
            match item {
                Err(ParseError::Invalid { id }) => {
                    metrics::request(Class::Other, ReqResult::Error);
                    jsonrpc::write_error(&mut local, id, ErrorCode::InvalidRequest, "invalid request");
                    self.charge(self.cost.error_cost);
                }
                Err(_) => {
                    metrics::request(Class::Other, ReqResult::Error);
                    jsonrpc::write_error(&mut local, None, ErrorCode::InvalidRequest, "invalid request");
                    self.charge(self.cost.error_cost);
                }
                // JSON-RPC: a valid notification (no id) gets no reply, not even an error.
                Ok(req) if req.method == "server.version" => {
                    metrics::request(Class::Server, ReqResult::Refused);
                    if req.id.is_some() {
                        jsonrpc::write_error(
                            &mut local,
                            req.id,
                            ErrorCode::BadRequest,
                            "server.version cannot be batched",
                        );
                    }
                    self.charge(self.cost.error_cost);
                }
                Ok(req) => match self.admit_method(&req) {
                    Err(e) => {
                        metrics::request(Class::of(req.method), ReqResult::Refused);
                        if req.id.is_some() {
                            jsonrpc::write_error(&mut local, req.id, e.code, &e.message);
                        }
                        self.charge(self.cost.error_cost);
                    }
                    Ok(info) => {
                        metrics::request(Class::of(req.method), ReqResult::Ok);
                        self.charge(methods::request_cost(info, req.params, &self.cost.method_costs));
                        let answer = match info.special {
                            Special::AddPeer => Some("false".to_string()),
                            Special::Banner => self
                                .set
                                .banner
                                .as_ref()
                                .map(|b| serde_json::to_string(b).unwrap_or_default()),
                            _ => None,
                        };
                        match (answer, id_slot(&req)) {
                            (Some(result), _) => {
                                if req.id.is_some() {
                                    jsonrpc::write_result(&mut local, req.id, &result);
                                }
                            }
                            (None, Some(slot)) => {
                                let track = Track {
                                    id: req.id.map(IdKey::new),
                                    info,
                                    batch: Some(key),
                                    heavy: methods::is_heavy(info, req.params),
                                };
                                forwarded += 1;
                                self.enqueue(req.raw, slot, track);
                            }
                            (None, None) => {
                                jsonrpc::write_error(&mut local, req.id, ErrorCode::InternalError, "internal error")
                            }
                        }
                    }
                },
            }
            // The writers end each entry with '\n'; entries of a batch are comma-separated.
            if local.len() > before {
                local.pop();
                local.push(b',');
            }
        }
        if local.last() == Some(&b',') {
            local.pop();
        }
        if cut {
            // Items already forwarded are not waited for: the session closes once this is written.
            self.emit_batch(&local);
            return self.cut_off();
        }
        if forwarded == 0 {
            return self.emit_batch(&local);
        }
        self.batches.push(BatchReply {
            key,
            out: local,
            waiting: forwarded,
        });
    }

    /// Forwards now, or queues behind the throttle: `concurrency` slots, each request first sleeping
    /// `sleep` in its slot (ElectrumX semantics). A slot is held from here until the backend answers;
    /// batch items and notifications take one each like any request.
    fn enqueue(&mut self, bytes: &[u8], slot: IdSlot, track: Track) {
        let th = self.th;
        let now = self.now;
        let slots = self.inflight.len() + self.sleeping.len() + self.gate.len();
        if self.waiting.is_empty() && slots < th.concurrency as usize {
            if th.sleep.is_zero() {
                self.send(bytes, slot, track, now);
            } else {
                metrics::throttled();
                self.sleeping.push(Queued {
                    bytes: bytes.to_vec(),
                    slot,
                    track,
                    arrived: now,
                    wake: now + th.sleep,
                });
            }
        } else {
            metrics::throttled();
            self.waiting.push_back(Queued {
                bytes: bytes.to_vec(),
                slot,
                track,
                arrived: now,
                wake: now,
            });
        }
    }

    /// Writes the request upstream if the backend's in-flight budget has a slot for it, else leaves it
    /// waiting for one in the gate (or answers it busy when the backend's queue is full).
    fn send(&mut self, bytes: &[u8], slot: IdSlot, track: Track, arrived: Instant) {
        if let IdSlot::Local = slot {
            return self.answer_here(bytes, &track);
        }
        if self.gate.try_now(track.heavy) {
            return self.forward(bytes, slot, track, arrived);
        }
        let heavy = track.heavy;
        let q = Queued {
            bytes: bytes.to_vec(),
            slot,
            track,
            arrived,
            wake: arrived,
        };
        match self
            .gate
            .offer(q, heavy, arrived, self.account.relative_cost(), self.now)
        {
            Offer::Go(q) => self.forward(&q.bytes, q.slot, q.track, q.arrived),
            Offer::Waits => {}
            Offer::Refused(q) => self.busy(&q.track),
        }
    }

    /// The session now knows its backend: requests waiting for it take their slots or places.
    fn bind_gate(&mut self, addr: SocketAddr) {
        let (go, refused) = self.gate.bind(&self.shared.budgets, addr, &self.account, self.now);
        for q in go {
            self.forward(&q.bytes, q.slot, q.track, q.arrived);
        }
        for q in refused {
            self.busy(&q.track);
        }
    }

    /// -102 at once: the backend's queue is at its cap.
    fn busy(&mut self, track: &Track) {
        self.finish(
            track,
            Entry::Error(ErrorCode::ServerBusy, "server busy - request queue full"),
        );
    }

    /// Writes the request upstream under a fresh gateway id. Replies are matched by that id alone, so
    /// neither the client's choice of ids (duplicates, big integers, escapes) nor the way a backend
    /// re-serialises them can route a reply past the rewrites.
    fn forward(&mut self, bytes: &[u8], slot: IdSlot, track: Track, arrived: Instant) {
        self.last_gid += 1;
        let gid = self.last_gid;
        match slot {
            IdSlot::Replace(start, end) => {
                self.up_out.extend_from_slice(&bytes[..start as usize]);
                push_decimal(&mut self.up_out, gid);
                self.up_out.extend_from_slice(&bytes[end as usize..]);
            }
            IdSlot::Local => return self.answer_here(bytes, &track),
            IdSlot::Insert(at) => {
                self.up_out.extend_from_slice(&bytes[..at as usize]);
                self.up_out.extend_from_slice(b"\"id\":");
                push_decimal(&mut self.up_out, gid);
                self.up_out.push(b',');
                self.up_out.extend_from_slice(&bytes[at as usize..]);
            }
        }
        self.up_out.push(b'\n');
        self.inflight.push_back(InFlight {
            gid,
            track,
            arrived,
            sent: self.now,
            timed_out: false,
        });
    }

    fn on_timer(&mut self) {
        let now = self.now;
        // Decay has lowered the cost since the last charge: let the throttle relax.
        self.refresh_throttle();
        if now >= self.last_request + self.front.cfg.idle_timeout {
            self.abort = Some(CloseReason::IdleTimeout);
            return;
        }
        if self
            .client_blocked_since
            .is_some_and(|b| now >= b + self.set.slow_reader_timeout)
        {
            tracing::info!(front = %self.front.cfg.name, client = %self.client, "client stopped reading; disconnecting");
            self.abort = Some(CloseReason::SlowReader);
            return;
        }
        if self.slow_line_deadline().is_some_and(|d| now >= d) && self.closing.is_none() {
            tracing::info!(front = %self.front.cfg.name, client = %self.client, partial = self.partial, "request line arrives too slowly; disconnecting");
            self.line_started = None;
            metrics::slow_line_disconnect();
            self.reply_error(None, ErrorCode::InvalidRequest, "request line arrives too slowly");
            return self.close_with(CloseReason::SlowRequestLine);
        }
        if self.hard_check.is_some_and(|h| now >= h) {
            self.hard_check = None;
            if self.th.over_hard && self.closing.is_none() {
                if self.awaits_replies() {
                    if self.crossed_here {
                        // Its own requests crossed the limit: they are answered first (within
                        // request_timeout), then this check comes round again.
                        self.hard_check = Some(now + HARD_LIMIT_GRACE);
                        return;
                    }
                    // Others took the group over: waiting for the backend could take up to
                    // request_timeout, so every request still owed an answer gets the -101 as its reply
                    // instead, and the session goes now.
                    self.fail_all(ErrorCode::ExcessiveResourceUsage, "excessive resource usage");
                    return self.cut_off();
                }
                // No request to answer with -101: say it unsolicited (id null), then close and ban.
                return self.hard_limit(None);
            }
        }
        let timeout = self.cost.request_timeout;
        // Requests that could not be served in time get -102 and pay for the error.
        let mut expired = Vec::new();
        let mut i = 0;
        while i < self.sleeping.len() {
            if now >= self.sleeping[i].arrived + timeout {
                expired.push(self.sleeping.swap_remove(i).track);
            } else {
                i += 1;
            }
        }
        while self.waiting.front().is_some_and(|q| now >= q.arrived + timeout) {
            if let Some(q) = self.waiting.pop_front() {
                expired.push(q.track);
            }
        }
        if let Some(cutoff) = now.checked_sub(timeout) {
            expired.extend(self.gate.expire(cutoff, now).into_iter().map(|q| q.track));
        }
        // A late request keeps its slot until the backend answers: the backend is still busy with it.
        let mut late = Vec::new();
        for f in self
            .inflight
            .iter_mut()
            .filter(|f| !f.timed_out && now >= f.arrived + timeout)
        {
            f.timed_out = true;
            late.push(f.gid);
        }
        for t in expired {
            self.finish(
                &t,
                Entry::Error(ErrorCode::ServerBusy, "server busy - request timed out"),
            );
        }
        for gid in late {
            if let Some(pos) = self.inflight_position(gid) {
                // Answered now: the entry stays only to hold the slot.
                let f = &mut self.inflight[pos];
                let t = Track {
                    id: f.track.id.take(),
                    info: f.track.info,
                    batch: f.track.batch.take(),
                    heavy: f.track.heavy,
                };
                self.finish(
                    &t,
                    Entry::Error(ErrorCode::ServerBusy, "server busy - request timed out"),
                );
            }
        }
        self.promote(now);
    }

    /// Moves sleepers whose time has come to the backend and fills free slots from the wait queue.
    fn promote(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.sleeping.len() {
            if self.sleeping[i].wake <= now {
                let q = self.sleeping.swap_remove(i);
                self.send(&q.bytes, q.slot, q.track, q.arrived);
            } else {
                i += 1;
            }
        }
        let th = self.th;
        while !self.waiting.is_empty()
            && self.inflight.len() + self.sleeping.len() + self.gate.len() < th.concurrency as usize
        {
            let Some(mut q) = self.waiting.pop_front() else { break };
            if th.sleep.is_zero() {
                self.send(&q.bytes, q.slot, q.track, q.arrived);
            } else {
                q.wake = now + th.sleep;
                self.sleeping.push(q);
            }
        }
    }

    // ---- upstream side --------------------------------------------------------------------------

    fn on_response_too_large(&mut self) {
        // The oversized reply was never buffered whole, so its id is unknown: the oldest request still
        // waiting is the one it answers in the common (ordered) case.
        if let Some(f) = self.inflight.pop_front() {
            self.gate.release(f.track.heavy, None, self.now);
            if !f.timed_out {
                self.finish(&f.track, Entry::Error(ErrorCode::InvalidRequest, "response too large"));
            }
        }
        self.promote(self.now);
    }

    fn on_upstream_line(&mut self, line: &[u8]) {
        match jsonrpc::parse_incoming(line) {
            Incoming::Response { id } => self.on_reply(line, id),
            // The gateway never sends the backend a batch, but a backend that answers in one is
            // matched item by item all the same.
            Incoming::Batch(items) => {
                for (id, item) in items {
                    self.on_reply(item, id);
                }
            }
            Incoming::Notification { .. } => self.emit(line),
            Incoming::Other => {
                tracing::debug!(front = %self.front.cfg.name, "dropping a backend line that is not JSON-RPC");
            }
        }
    }

    /// One reply from the backend: matched by the gateway's id, policed, and passed on with the
    /// client's id. A reply that matches nothing in flight (an id the gateway never issued, or a second
    /// answer to one already answered) is dropped and counted: passing it on would skip the rewrites.
    fn on_reply(&mut self, line: &[u8], id: RawJson) {
        let gid = jsonrpc::gateway_id(id);
        if gid == Some(0) && self.promised_version.is_some() {
            return self.on_promised_version(line);
        }
        let pos = gid.and_then(|gid| self.inflight_position(gid));
        let (Some(pos), Some(at)) = (pos, jsonrpc::span_of(line, id.get())) else {
            metrics::unmatched_reply();
            tracing::debug!(front = %self.front.cfg.name, client = %self.client, "dropping a backend reply that answers no request in flight");
            return;
        };
        let f = self.inflight.remove(pos).expect("position is valid");
        self.gate.release(
            f.track.heavy,
            Some(self.now.saturating_duration_since(f.sent)),
            self.now,
        );
        self.promote(self.now);
        if f.timed_out {
            return;
        }
        let info = f.track.info;
        self.charge_response(info, line);
        let policed = match info.special {
            Special::Version => {
                if let Some((software, v)) = version_reply(line) {
                    self.negotiated = Some(v);
                    if let (Some(asked), Some(backend)) = (self.asked_version, self.backend) {
                        let ceiling = self.set.protocol_max;
                        self.shared.versions.learn(backend, &software, asked, v, ceiling);
                    }
                }
                None
            }
            Special::Features => Some(super::rewrite::features(line, &self.shared.features_hosts.load())),
            Special::Peers => Some(super::rewrite::peers(line, &self.front.cfg.upstreams)),
            Special::Unsubscribe => {
                // Only the backend knows whether the scripthash was subscribed: count the release
                // when it says so, or unsubscribing unknown hashes would lift the cap.
                if result_is_true(line) {
                    self.drop_subscription();
                }
                None
            }
            _ => None,
        };
        match policed {
            Some(Some(result)) => self.finish(&f.track, Entry::Result(&result)),
            // Neither a result the policy can read nor an error: none of it can be passed on safely.
            Some(None) if !super::rewrite::is_error(line) => {
                tracing::debug!(front = %self.front.cfg.name, method = info.name, "backend reply of an unexpected shape");
                self.finish(
                    &f.track,
                    Entry::Error(ErrorCode::InternalError, "unexpected reply from the Electrum backend"),
                )
            }
            _ => {
                // The reply's bytes were charged as read; the client's id may be longer than the
                // gateway's, and the client pays for what it receives.
                let grow = f
                    .track
                    .id
                    .as_ref()
                    .map_or(0, |id| id.bytes().len().saturating_sub(at.len()));
                if grow > 0 {
                    self.charge_bytes(grow);
                }
                self.finish(&f.track, Entry::Backend { line, id: at })
            }
        }
    }

    /// Where the request with gateway id `gid` is in flight. Replies mostly come in order, so the
    /// oldest is tried first.
    fn inflight_position(&self, gid: u64) -> Option<usize> {
        if self.inflight.front()?.gid == gid {
            return Some(0);
        }
        self.inflight.binary_search_by_key(&gid, |f| f.gid).ok()
    }

    /// Costs that depend on the answer.
    fn charge_response(&mut self, info: &MethodInfo, reply: &[u8]) {
        match info.cost_kind {
            CostKind::ResponseSize => {
                self.account
                    .charge_at(reply.len() as f64 / self.cost.bytes_per_unit, self.now);
            }
            CostKind::PerReplyItem(per) => {
                let n = result_items(reply);
                self.charge(per * n as f64);
            }
            _ => {}
        }
    }

    fn emit(&mut self, line: &[u8]) {
        if self.abort.is_some() {
            return;
        }
        self.client_out.extend_from_slice(line);
        self.client_out.push(b'\n');
        self.check_output();
    }

    fn drop_subscription(&mut self) {
        if self.subs == 0 {
            return;
        }
        self.subs -= 1;
        self.account.set_subscriptions(self.subs as u32);
        if self.group_subs > 0 {
            if let Some((counts, g)) = self.subs_slot() {
                counts.release(g);
            }
            self.group_subs -= 1;
        }
    }

    fn release_group_subs(&mut self) {
        if let Some((counts, g)) = self.subs_slot() {
            for _ in 0..self.group_subs {
                counts.release(g);
            }
        }
        self.group_subs = 0;
    }

    /// Where this session's subscriptions count per group: its tier group, or its address group.
    fn subs_slot(&self) -> Option<(&KeyedCounts, IpAddr)> {
        let shared = self.shared;
        match self.account.tier_group() {
            Some(net) => Some((&shared.tier_subs, net.network())),
            None => self.account.group().map(|g| (&shared.group_subs, g)),
        }
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Where the gateway's id goes in the request's bytes.
fn id_slot(req: &Request<'_>) -> Option<IdSlot> {
    let pos = |n: usize| u32::try_from(n).ok();
    match req.id {
        Some(id) => {
            let at = jsonrpc::span_of(req.raw, id.get())?;
            Some(IdSlot::Replace(pos(at.start)?, pos(at.end)?))
        }
        None => {
            let open = req.raw.iter().position(|&b| b == b'{')?;
            Some(IdSlot::Insert(pos(open + 1)?))
        }
    }
}

/// Appends one reply object (no newline) carrying the client's id `id`.
fn write_entry(out: &mut Vec<u8>, id: &IdKey, entry: &Entry<'_>) {
    match entry {
        Entry::Backend { line, id: at } => {
            out.extend_from_slice(&line[..at.start]);
            out.extend_from_slice(id.bytes());
            out.extend_from_slice(&line[at.end..]);
        }
        Entry::Result(json) => {
            jsonrpc::write_result(out, id.json(), json);
            out.pop(); // the writers end with '\n'
        }
        Entry::Error(code, msg) => {
            jsonrpc::write_error(out, id.json(), *code, msg);
            out.pop();
        }
    }
}

/// The client's requested protocol range: a version string or `[min, max]`; absent means 1.4.
fn client_range(params: Option<RawJson>) -> Option<(ProtoVersion, ProtoVersion)> {
    let default = ProtoVersion(1, 4, 0);
    let Some(params) = params else {
        return Some((default, default));
    };
    let v: serde_json::Value = serde_json::from_str(params.get()).ok()?;
    let pv = match &v {
        serde_json::Value::Array(a) => a.get(1).cloned(),
        serde_json::Value::Object(o) => o.get("protocol_version").cloned(),
        _ => return None,
    };
    match pv {
        None | Some(serde_json::Value::Null) => Some((default, default)),
        Some(serde_json::Value::String(s)) => {
            let v: ProtoVersion = s.parse().ok()?;
            Some((v, v))
        }
        Some(serde_json::Value::Array(r)) if r.len() == 2 => {
            let lo: ProtoVersion = r[0].as_str()?.parse().ok()?;
            let hi: ProtoVersion = r[1].as_str()?.parse().ok()?;
            (lo <= hi).then_some((lo, hi))
        }
        _ => None,
    }
}

/// The software and protocol version in a server.version reply: `{"result": [software, version]}`.
fn version_reply(line: &[u8]) -> Option<(String, ProtoVersion)> {
    #[derive(serde::Deserialize)]
    struct Reply {
        result: Option<(String, String)>,
    }
    let r: Reply = serde_json::from_slice(line).ok()?;
    let (software, version) = r.result?;
    Some((software, version.parse().ok()?))
}

/// Number of items in an array `result` (for per-item charges).
fn result_items(reply: &[u8]) -> usize {
    #[derive(serde::Deserialize)]
    struct Reply<'a> {
        #[serde(borrow)]
        result: Option<&'a RawValue>,
    }
    let Some(result) = serde_json::from_slice::<Reply<'_>>(reply).ok().and_then(|r| r.result) else {
        return 0;
    };
    // A bare array, or (as the Kevacoin fork answers) an object holding the item array.
    if let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(result.get()) {
        return items.len();
    }
    serde_json::from_str::<std::collections::HashMap<&str, &RawValue>>(result.get())
        .ok()
        .and_then(|fields| {
            fields
                .values()
                .find_map(|v| serde_json::from_str::<Vec<&RawValue>>(v.get()).ok().map(|a| a.len()))
        })
        .unwrap_or(0)
}

/// Whether a reply's result is JSON `true`.
fn result_is_true(reply: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Reply {
        result: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Reply>(reply).ok().and_then(|r| r.result) == Some(serde_json::Value::Bool(true))
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} requests)", self.reason, self.requests)
    }
}
