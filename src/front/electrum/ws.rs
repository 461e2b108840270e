//! Electrum over WebSocket (ports 50003/50004): one JSON-RPC message per text frame.
//!
//! [`WsLines`] turns a WebSocket into the newline-delimited byte stream the session speaks, so ws/wss
//! share every rule of tcp/tls. A newline inside a message can only be JSON whitespace (newlines in
//! strings must be escaped), so it is replaced by a space to keep one message per line.
//!
//! An oversized message must meet the same fate as an oversized line: -32600, a violation, its cost,
//! and the session goes on. A WebSocket library that meets a message over its limit can only fail the
//! connection, so the client's frames pass through [`MessageLimit`] first: it cuts every data message
//! to at most one byte over the limit and drops the rest of its payload as it arrives. The session
//! then sees a line one byte too long and treats it exactly as on tcp.

use super::session::ClientIo;
use crate::wire::buf::{give_buf, take_buf};
use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// What tungstenite reads per call. It zeroes this much of its buffer before every read, so its 128 KiB
/// default costs more than the rest of a wallet request's handling; requests are a few hundred bytes.
const READ_BUFFER: usize = 8 * 1024;

pub struct WsLines<S> {
    ws: WebSocketStream<Limited<S>>,
    /// Bytes handed to the WebSocket library up to the last complete message: what it took since is the
    /// part of a message it holds until it completes, which the memory budget and the slow-line floor see.
    mark: u64,
    /// The message being handed to the reader, already converted to a line.
    rd: Vec<u8>,
    rd_pos: usize,
    /// A line being assembled from the session's writes.
    wr: Vec<u8>,
    closed: bool,
}

/// Performs the server side of the WebSocket handshake over an established (TLS or TCP) stream.
pub async fn accept<S>(stream: S, max_message: usize) -> Result<WsLines<S>, tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Messages arrive cut to one byte over the limit, so that one byte is all the room needed.
    let mut cfg = WebSocketConfig::default();
    cfg.read_buffer_size = READ_BUFFER;
    cfg.max_message_size = Some(max_message.saturating_add(1));
    cfg.max_frame_size = Some(max_message.saturating_add(1));
    let stream = Limited {
        inner: stream,
        limit: MessageLimit::new(max_message),
        buf: None,
        pos: 0,
        end: 0,
        passed: 0,
    };
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(cfg)).await?;
    Ok(WsLines {
        mark: ws.get_ref().passed,
        ws,
        rd: Vec::new(),
        rd_pos: 0,
        wr: Vec::new(),
        closed: false,
    })
}

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsLines<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.rd_pos < this.rd.len() {
                let n = (this.rd.len() - this.rd_pos).min(buf.remaining());
                buf.put_slice(&this.rd[this.rd_pos..this.rd_pos + n]);
                this.rd_pos += n;
                if this.rd_pos == this.rd.len() {
                    this.rd = Vec::new();
                    this.rd_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            let msg = match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                Some(Ok(m)) => m,
            };
            this.mark = this.ws.get_ref().passed;
            let data: &[u8] = match &msg {
                Message::Text(t) => t.as_bytes(),
                Message::Binary(b) => b,
                Message::Close(_) => {
                    this.closed = true;
                    return Poll::Ready(Ok(()));
                }
                // Pings are answered by tungstenite itself on the next write or flush.
                _ => continue,
            };
            let mut line = Vec::with_capacity(data.len() + 1);
            line.extend(data.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
            line.push(b'\n');
            this.rd = line;
            this.rd_pos = 0;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsLines<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Backpressure: accept bytes only while the socket can take another frame.
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(to_io)?;
        let mut used = 0;
        if let Some(nl) = memchr::memchr(b'\n', &buf[used..]) {
            this.wr.extend_from_slice(&buf[used..used + nl]);
            used += nl + 1;
            let line = std::mem::take(&mut this.wr);
            let text = match String::from_utf8(line) {
                Ok(s) => Message::Text(Utf8Bytes::from(s)),
                Err(e) => Message::Binary(Bytes::from(e.into_bytes())),
            };
            Pin::new(&mut this.ws).start_send(text).map_err(to_io)?;
            // One frame per poll_ready: report what was consumed so far.
            return Poll::Ready(Ok(used));
        }
        this.wr.extend_from_slice(&buf[used..]);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(to_io)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientIo for WsLines<S> {
    fn pending(&self) -> usize {
        let partial = self.ws.get_ref().passed.saturating_sub(self.mark);
        usize::try_from(partial).unwrap_or(usize::MAX) + (self.rd.len() - self.rd_pos)
    }

    fn take_discarded(&mut self) -> u64 {
        self.ws.get_mut().limit.take_discarded()
    }
}

/// Cuts the client's data messages to at most `max + 1` bytes on their way into the WebSocket library;
/// see the module documentation. A byte-stream transducer: it reads the HTTP upgrade request through
/// unchanged (up to its blank line), then parses frames and rewrites their headers:
///
/// - a data frame passes with its payload cut where its message reaches `max + 1` bytes; the frames
///   that follow in the same message pass with an empty payload (so the message still ends where the
///   client ended it) and the cut bytes are dropped as they arrive, never buffered;
/// - a text message is passed as binary: the session's JSON parser checks UTF-8 itself, and a cut
///   may fall inside a character;
/// - control frames and anything malformed pass unchanged, for the library to judge.
///
/// Masks stay valid: a cut payload keeps its key and its first bytes.
pub struct MessageLimit {
    max: u64,
    /// Still reading the HTTP request: how many bytes of its terminating `\r\n\r\n` were just seen.
    http: Option<u8>,
    /// The header being read, and how many of its bytes are in.
    hdr: [u8; 14],
    have: usize,
    /// The rewritten header, written out before its payload.
    out_hdr: [u8; 14],
    out_len: usize,
    out_pos: usize,
    /// Payload bytes of the current frame still to read; the first `pass` of them are passed on.
    left: u64,
    pass: u64,
    in_message: bool,
    /// Payload bytes of the current message passed on so far (at most `max + 1`).
    msg_len: u64,
    /// Payload bytes dropped, for the session to charge.
    discarded: u64,
}

impl MessageLimit {
    /// `max` is the longest message passed whole, in bytes.
    pub fn new(max: usize) -> MessageLimit {
        MessageLimit {
            max: max as u64,
            http: Some(0),
            hdr: [0; 14],
            have: 0,
            out_hdr: [0; 14],
            out_len: 0,
            out_pos: 0,
            left: 0,
            pass: 0,
            in_message: false,
            msg_len: 0,
            discarded: 0,
        }
    }

    /// Payload bytes dropped since the last call.
    pub fn take_discarded(&mut self) -> u64 {
        std::mem::take(&mut self.discarded)
    }

    /// Reads from `input` and writes to `out`; returns (bytes consumed, bytes written). Stops when the
    /// input is used up or `out` is full; with both non-empty it always makes progress. It never
    /// writes more than it has consumed in total (a rewritten header is never longer than the
    /// original).
    pub fn process(&mut self, input: &[u8], out: &mut [u8]) -> (usize, usize) {
        let (mut i, mut o) = (0, 0);
        loop {
            if self.out_pos < self.out_len {
                let n = (self.out_len - self.out_pos).min(out.len() - o);
                out[o..o + n].copy_from_slice(&self.out_hdr[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                o += n;
                if self.out_pos < self.out_len {
                    return (i, o);
                }
            }
            if let Some(seen) = self.http {
                // Pass the request through, up to and including its blank line.
                let n = (input.len() - i).min(out.len() - o);
                let mut seen = seen;
                let mut taken = n;
                for (k, &b) in input[i..i + n].iter().enumerate() {
                    seen = match (seen, b) {
                        (0 | 2, b'\r') => seen + 1,
                        (1 | 3, b'\n') => seen + 1,
                        (_, b'\r') => 1,
                        _ => 0,
                    };
                    if seen == 4 {
                        taken = k + 1;
                        break;
                    }
                }
                out[o..o + taken].copy_from_slice(&input[i..i + taken]);
                i += taken;
                o += taken;
                self.http = (seen != 4).then_some(seen);
                if self.http.is_some() {
                    return (i, o);
                }
                continue;
            }
            if self.left > 0 {
                let avail = (input.len() - i) as u64;
                if self.pass > 0 {
                    let n = self.pass.min(avail).min((out.len() - o) as u64) as usize;
                    if n == 0 {
                        return (i, o);
                    }
                    out[o..o + n].copy_from_slice(&input[i..i + n]);
                    i += n;
                    o += n;
                    self.pass -= n as u64;
                    self.left -= n as u64;
                } else {
                    let n = self.left.min(avail);
                    if n == 0 {
                        return (i, o);
                    }
                    i += n as usize;
                    self.left -= n;
                    self.discarded += n;
                }
                continue;
            }
            if i == input.len() {
                return (i, o);
            }
            self.hdr[self.have] = input[i];
            self.have += 1;
            i += 1;
            let need = header_len(&self.hdr[..self.have]);
            if self.have == need {
                self.start_frame(need);
                self.have = 0;
            }
        }
    }

    /// A complete header is in `hdr[..n]`: decide what of the frame passes and write its header.
    fn start_frame(&mut self, n: usize) {
        let h = self.hdr;
        let opcode = h[0] & 0x0f;
        let fin = h[0] & 0x80 != 0;
        let masked = h[1] & 0x80 != 0;
        let len = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            l => u64::from(l),
        };
        self.left = len;
        self.out_pos = 0;
        let data = matches!(opcode, 1 | 2) || (opcode == 0 && self.in_message);
        if !data {
            // Control frames, reserved opcodes, a continuation of nothing: as they are.
            self.out_hdr[..n].copy_from_slice(&h[..n]);
            self.out_len = n;
            self.pass = len;
            return;
        }
        if opcode != 0 {
            self.in_message = true;
            self.msg_len = 0;
        }
        let room = (self.max + 1).saturating_sub(self.msg_len);
        self.pass = len.min(room);
        self.msg_len += self.pass;
        if fin {
            self.in_message = false;
        }
        let opcode = if opcode == 1 { 2 } else { opcode };
        self.out_hdr[0] = (h[0] & 0xf0) | opcode;
        let mask_bit = h[1] & 0x80;
        let mut w = 2;
        if self.pass < 126 {
            self.out_hdr[1] = mask_bit | self.pass as u8;
        } else if let Ok(short) = u16::try_from(self.pass) {
            self.out_hdr[1] = mask_bit | 126;
            self.out_hdr[2..4].copy_from_slice(&short.to_be_bytes());
            w = 4;
        } else {
            self.out_hdr[1] = mask_bit | 127;
            self.out_hdr[2..10].copy_from_slice(&self.pass.to_be_bytes());
            w = 10;
        }
        if masked {
            self.out_hdr[w..w + 4].copy_from_slice(&h[n - 4..n]);
            w += 4;
        }
        self.out_len = w;
    }
}

/// The length of the frame header that starts with `h` (2 until the second byte is known).
fn header_len(h: &[u8]) -> usize {
    let Some(&b1) = h.get(1) else { return 2 };
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// The client stream as the WebSocket library reads it: through a [`MessageLimit`]. Reads go through
/// a pooled buffer, held only while it has bytes not yet passed on.
pub struct Limited<S> {
    inner: S,
    limit: MessageLimit,
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    /// Bytes passed on to the library (cut messages count only what passed).
    passed: u64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let input: &[u8] = match &this.buf {
                Some(b) => &b[this.pos..this.end],
                None => &[],
            };
            let (used, made) = this.limit.process(input, out.initialize_unfilled());
            this.pos += used;
            out.advance(made);
            this.passed += made as u64;
            if this.pos == this.end {
                if let Some(b) = this.buf.take() {
                    give_buf(b);
                }
                this.pos = 0;
                this.end = 0;
            }
            if made > 0 {
                return Poll::Ready(Ok(()));
            }
            // Nothing written with room to write: the input is used up (dropped bytes, or a header
            // still incomplete). Read more.
            debug_assert!(this.buf.is_none());
            let mut buf = take_buf();
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        give_buf(buf);
                        return Poll::Ready(Ok(()));
                    }
                    this.buf = Some(buf);
                    this.end = n;
                }
                Poll::Ready(Err(e)) => {
                    give_buf(buf);
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    give_buf(buf);
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let key = [1u8, 2, 3, 4];
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    fn run(limit: &mut MessageLimit, input: &[u8], step: usize) -> Vec<u8> {
        run_with_room(limit, input, step, 7)
    }

    fn run_with_room(limit: &mut MessageLimit, input: &[u8], step: usize, room: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            let mut pos = 0;
            loop {
                let mut room = vec![0u8; room];
                let (used, made) = limit.process(&chunk[pos..], &mut room);
                if used == 0 && made == 0 {
                    break;
                }
                pos += used;
                out.extend_from_slice(&room[..made]);
            }
        }
        out
    }

    #[test]
    fn messages_over_the_limit_are_cut_one_byte_past_it() {
        for step in [1, 3, 1000] {
            let mut limit = MessageLimit::new(4);
            let mut input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
            let mut want = input.clone();
            // A short text message passes, as binary.
            input.extend(frame(0x81, b"abc"));
            want.extend(frame(0x82, b"abc"));
            // A long one is cut to 5 bytes.
            input.extend(frame(0x81, b"0123456789"));
            want.extend(frame(0x82, b"01234"));
            // A ping passes as it is.
            input.extend(frame(0x89, b"p"));
            want.extend(frame(0x89, b"p"));
            // A fragmented one: 3 + 3 (cut to 2) + 300 (cut to 0) bytes.
            input.extend(frame(0x02, b"abc"));
            input.extend(frame(0x00, b"def"));
            input.extend(frame(0x80, &[b'x'; 300]));
            want.extend(frame(0x02, b"abc"));
            want.extend(frame(0x00, b"de"));
            want.extend(frame(0x80, b""));
            // And the next message is whole again.
            input.extend(frame(0x81, b"ok"));
            want.extend(frame(0x82, b"ok"));
            assert_eq!(run(&mut limit, &input, step), want, "step {step}");
            assert_eq!(limit.take_discarded(), 5 + 1 + 300, "step {step}");
        }
    }

    #[test]
    fn random_streams_match_a_model_of_the_cut() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        const MAX: usize = 8;
        for _ in 0..500 {
            let mut limit = MessageLimit::new(MAX);
            let mut input = b"GET / HTTP/1.1\r\n\r\n".to_vec();
            let mut want = input.clone();
            let mut dropped = 0;
            for _ in 0..rand(6) {
                let fragments = 1 + rand(3);
                let mut budget = MAX + 1;
                for f in 0..fragments {
                    let fin = if f + 1 == fragments { 0x80 } else { 0 };
                    let (op_in, op_out) = match (f, rand(2)) {
                        (0, 0) => (1, 2),
                        (0, _) => (2, 2),
                        _ => (0, 0),
                    };
                    let span = if rand(4) == 0 { 300 } else { 12 };
                    let len = rand(span) as usize;
                    let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                    let pass = len.min(budget);
                    budget -= pass;
                    dropped += len - pass;
                    input.extend(frame(fin | op_in, &payload));
                    want.extend(frame(fin | op_out, &payload[..pass]));
                    if rand(3) == 0 {
                        input.extend(frame(0x89, b"ping"));
                        want.extend(frame(0x89, b"ping"));
                    }
                }
            }
            let step = 1 + rand(40) as usize;
            let room = 1 + rand(20) as usize;
            assert_eq!(run_with_room(&mut limit, &input, step, room), want);
            assert_eq!(limit.take_discarded(), dropped as u64);
        }
    }
}
