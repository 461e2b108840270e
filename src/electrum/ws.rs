//! Electrum over WebSocket (ports 50003/50004): one JSON-RPC message per text frame.
//!
//! [`WsLines`] turns a WebSocket into the newline-delimited byte stream the session speaks, so ws/wss
//! share every rule of tcp/tls. A newline inside a message can only be JSON whitespace (newlines in
//! strings must be escaped), so it is replaced by a space to keep one message per line.

use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

pub struct WsLines<S> {
    ws: WebSocketStream<Counted<S>>,
    /// Socket bytes read up to the last complete message: what was read since is (about) the part of a
    /// message tungstenite holds until it completes, which the memory budget and the slow-line floor see.
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
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(max_message);
    cfg.max_frame_size = Some(max_message);
    let ws = tokio_tungstenite::accept_async_with_config(Counted { inner: stream, read: 0 }, Some(cfg)).await?;
    Ok(WsLines {
        mark: ws.get_ref().read,
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
            this.mark = this.ws.get_ref().read;
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

impl<S: AsyncRead + AsyncWrite + Unpin> super::session::ClientIo for WsLines<S> {
    fn pending(&self) -> usize {
        let partial = self.ws.get_ref().read.saturating_sub(self.mark);
        usize::try_from(partial).unwrap_or(usize::MAX) + (self.rd.len() - self.rd_pos)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsLines<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Backpressure: accept bytes only while the socket can take another frame.
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(to_io)?;
        let mut used = 0;
        if let Some(nl) = buf[used..].iter().position(|&b| b == b'\n') {
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

/// The stream under the WebSocket, counting the bytes read from it.
pub struct Counted<S> {
    inner: S,
    read: u64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.read += (buf.filled().len() - before) as u64;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
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
