//! Newline-delimited framing for the tcp/ssl Electrum transports.
//!
//! A client controls how long its lines are, so the decoder never holds more than `max_line` bytes of
//! one line plus the chunk being read: a line that grows past the limit is reported once, as soon as
//! it is known to be too long, and its remaining bytes are dropped as they arrive. Waiting for the
//! newline before reporting would let a client park a megabyte-sized buffer on every connection.
//!
//! Lines borrow from the decoder's buffer. Consumed bytes are reclaimed by moving the unconsumed tail
//! to the front before the next read, so the buffer's size tracks the longest partial line rather
//! than the total traffic.

/// One unit handed to the protocol layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A line without its `\n` and without trailing spaces, `\r` and `\t` (ElectrumX ≥ 1.18 pads
    /// with spaces; some clients send `\r\n`). Never empty.
    Line(&'a [u8]),
    /// A line longer than the limit. Reported once: when its newline arrives if it came complete in
    /// one read, otherwise as soon as its buffered part exceeds the limit; its later bytes up to and
    /// including the next `\n` are dropped silently. `discarded` counts the bytes dropped at report
    /// time (always more than the limit).
    Oversized { discarded: usize },
}

/// Reads run through this decoder; see the module documentation.
#[derive(Debug)]
pub struct LineDecoder {
    /// `buf[..buf.len()]` is initialised storage (so reads can go straight into it without unsafe);
    /// only `buf[start..end]` holds unconsumed bytes.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes after `start` already searched for `\n` without finding one, so a line that arrives
    /// in many small reads is scanned once, not once per read.
    scanned: usize,
    max_line: usize,
    /// Inside an oversized line: drop everything up to and including the next `\n`.
    discarding: bool,
    /// An oversized line detected while appending, to be reported by the next `next_frame`.
    unreported: Option<usize>,
}

impl LineDecoder {
    /// `max_line` is the longest accepted line in bytes, excluding the newline.
    pub fn new(max_line: usize) -> Self {
        LineDecoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            scanned: 0,
            max_line,
            discarding: false,
            unreported: None,
        }
    }

    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Appends freshly read bytes. Internally keeps at most `max_line` plus one appended chunk:
    /// bytes of an oversized line are dropped as they arrive. That bound assumes the caller drains
    /// [`next_frame`](Self::next_frame) after each call, as a session loop does.
    pub fn feed(&mut self, mut data: &[u8]) {
        if self.discarding {
            // Skip the copy for bytes that would be thrown away anyway.
            match find_newline(data) {
                None => return,
                Some(i) => {
                    self.discarding = false;
                    data = &data[i + 1..];
                }
            }
        }
        // A caller handing over one huge slice must not get a huge buffer: append piecewise so an
        // oversized line is detected and dropped every `FEED_PIECE` bytes.
        for piece in data.chunks(FEED_PIECE) {
            if self.discarding {
                match find_newline(piece) {
                    None => continue,
                    Some(i) => {
                        self.discarding = false;
                        self.append(&piece[i + 1..]);
                    }
                }
            } else {
                self.append(piece);
            }
        }
    }

    fn append(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let dst = self.read_buf(data.len());
        dst[..data.len()].copy_from_slice(data);
        self.end += data.len();
        self.check_partial();
    }

    /// Spare room to read into directly, at least `min` bytes long; follow with [`commit`](Self::commit).
    pub fn read_buf(&mut self, min: usize) -> &mut [u8] {
        self.compact();
        let need = self.end + min;
        if self.buf.len() < need {
            // Double for amortised growth, but never past the limit plus one read: beyond that a
            // line is oversized and its bytes are not kept.
            let target = need.max(self.buf.len().saturating_mul(2).min(self.max_line.saturating_add(min)));
            self.buf.reserve_exact(target - self.buf.len());
            self.buf.resize(target, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of the slice returned by [`read_buf`](Self::read_buf) as filled.
    ///
    /// # Panics
    /// If `n` exceeds the slice `read_buf` returned (a caller bug).
    pub fn commit(&mut self, n: usize) {
        assert!(n <= self.buf.len() - self.end, "commit beyond the read buffer");
        let mut n = n;
        if self.discarding {
            match find_newline(&self.buf[self.end..self.end + n]) {
                None => return,
                Some(i) => {
                    self.discarding = false;
                    let from = self.end + i + 1;
                    self.buf.copy_within(from..self.end + n, self.end);
                    n -= i + 1;
                }
            }
        }
        self.end += n;
        self.check_partial();
    }

    /// Frames freshly read bytes in place while nothing is buffered: returns the next complete line of
    /// `data`, borrowed from it, and moves `data` past that line, so a read that holds whole lines (the
    /// usual case) is never copied. Once that stops (bytes of an earlier read are buffered, or `data` has
    /// no newline left), the rest of `data` is fed into the buffer, `data` is left empty, and `None`
    /// says to go on with [`next_frame`](Self::next_frame). Together they give the frames that
    /// [`feed`](Self::feed) then `next_frame` would.
    pub fn next_direct<'a>(&mut self, data: &mut &'a [u8]) -> Option<Frame<'a>> {
        // Beyond one feed piece, `feed` may report an oversized line before its newline arrives: leave
        // such reads to it, so both ways count the same discarded bytes.
        while self.start == self.end && !self.discarding && self.unreported.is_none() && data.len() <= FEED_PIECE {
            let Some(i) = find_newline(data) else { break };
            let (line, rest) = data.split_at(i);
            *data = &rest[1..];
            if line.len() > self.max_line {
                return Some(Frame::Oversized { discarded: line.len() });
            }
            let kept = trimmed_len(line);
            if kept > 0 {
                return Some(Frame::Line(&line[..kept]));
            }
        }
        if !data.is_empty() {
            self.feed(data);
            *data = &[];
        }
        None
    }

    /// Next complete frame, if any; call repeatedly until `None`.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        if let Some(discarded) = self.unreported.take() {
            return Some(Frame::Oversized { discarded });
        }
        loop {
            if self.start == self.end {
                // Nothing pending: restart at the front so the next read needs no compaction.
                self.start = 0;
                self.end = 0;
                self.scanned = 0;
                return None;
            }
            let from = self.start + self.scanned;
            let Some(i) = find_newline(&self.buf[from..self.end]) else {
                self.scanned = self.end - self.start;
                return self.enter_discard_if_oversized();
            };
            let line_start = self.start;
            let nl = from + i;
            self.start = nl + 1;
            self.scanned = 0;
            if nl - line_start > self.max_line {
                return Some(Frame::Oversized {
                    discarded: nl - line_start,
                });
            }
            let kept = trimmed_len(&self.buf[line_start..nl]);
            if kept > 0 {
                return Some(Frame::Line(&self.buf[line_start..line_start + kept]));
            }
        }
    }

    /// Bytes buffered and not yet returned as frames (for memory accounting and tests).
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Heap bytes the decoder holds.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Releases the buffer beyond what pending bytes need, so an idle session (the common case:
    /// wallets park connections for their subscriptions) holds no large buffer. Call after draining
    /// frames.
    pub fn shrink_idle(&mut self) {
        self.compact();
        if self.end == 0 {
            self.buf = Vec::new();
        } else {
            self.buf.truncate(self.end);
            self.buf.shrink_to_fit();
        }
    }

    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        if self.start < self.end {
            self.buf.copy_within(self.start..self.end, 0);
        }
        self.end -= self.start;
        self.start = 0;
    }

    /// After appending: if the pending bytes hold no newline and already exceed the limit, stop
    /// keeping them, even if the caller has not asked for frames yet.
    fn check_partial(&mut self) {
        let from = self.start + self.scanned;
        match find_newline(&self.buf[from..self.end]) {
            Some(i) => self.scanned = from + i - self.start,
            None => {
                self.scanned = self.end - self.start;
                if let Some(Frame::Oversized { discarded }) = self.enter_discard_if_oversized() {
                    *self.unreported.get_or_insert(0) += discarded;
                }
            }
        }
    }

    /// Called when `buf[start..end]` is known to hold no newline.
    fn enter_discard_if_oversized(&mut self) -> Option<Frame<'static>> {
        let pending = self.end - self.start;
        if pending <= self.max_line {
            return None;
        }
        self.discarding = true;
        self.start = 0;
        self.end = 0;
        self.scanned = 0;
        Some(Frame::Oversized { discarded: pending })
    }
}

/// Pieces `feed` appends at a time; also the "one read chunk" of its memory bound.
const FEED_PIECE: usize = 64 * 1024;

fn find_newline(data: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', data)
}

fn trimmed_len(line: &[u8]) -> usize {
    line.iter()
        .rposition(|&b| !matches!(b, b' ' | b'\r' | b'\t'))
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(d: &mut LineDecoder) -> Vec<Result<Vec<u8>, usize>> {
        let mut out = Vec::new();
        while let Some(f) = d.next_frame() {
            out.push(match f {
                Frame::Line(l) => Ok(l.to_vec()),
                Frame::Oversized { discarded } => Err(discarded),
            });
        }
        out
    }

    fn lines(items: &[&str]) -> Vec<Result<Vec<u8>, usize>> {
        items.iter().map(|s| Ok(s.as_bytes().to_vec())).collect()
    }

    /// Frames of one read the way a session takes them: in place first, then from the buffer.
    fn drain_direct(d: &mut LineDecoder, mut data: &[u8]) -> Vec<Result<Vec<u8>, usize>> {
        let mut out = Vec::new();
        loop {
            let frame = match d.next_direct(&mut data) {
                Some(f) => Some(f),
                None => d.next_frame(),
            };
            match frame {
                Some(Frame::Line(l)) => out.push(Ok(l.to_vec())),
                Some(Frame::Oversized { discarded }) => out.push(Err(discarded)),
                None => break,
            }
        }
        assert!(data.is_empty(), "every byte is framed or buffered");
        out
    }

    #[test]
    fn framing_in_place_gives_the_frames_of_feeding() {
        // Short and oversized lines, blank and padded ones, split into reads at random places: after
        // every read both ways must give the same frames and hold the same bytes.
        let mut next = crate::wire::testing::xorshift(0x2545_f491_4f6c_dd1du64);
        for round in 0..3_000 {
            let mut input = Vec::new();
            for _ in 0..1 + next(8) {
                let len = match next(4) {
                    0 => 0,
                    1 => next(40),
                    2 => 40 + next(40),
                    _ => next(200),
                };
                input.extend((0..len).map(|i| b"ab{}\\"[i % 5]));
                input.extend_from_slice([&b""[..], b" ", b"\r", b"\t "][next(4)]);
                if next(6) > 0 {
                    input.push(b'\n');
                }
            }
            let mut fed = LineDecoder::new(64);
            let mut direct = LineDecoder::new(64);
            let mut at = 0;
            while at < input.len() {
                let read = &input[at..(at + 1 + next(150)).min(input.len())];
                at += read.len();
                fed.feed(read);
                let want = drain(&mut fed);
                assert_eq!(
                    drain_direct(&mut direct, read),
                    want,
                    "round {round}, read ending at {at}"
                );
                assert_eq!(direct.buffered(), fed.buffered(), "round {round}, read ending at {at}");
            }
        }
        // Whole lines in one read are not copied: the decoder allocates nothing for them.
        let mut d = LineDecoder::new(64);
        assert_eq!(
            drain_direct(&mut d, b"{\"id\":1}\n{\"id\":2}\n"),
            lines(&[r#"{"id":1}"#, r#"{"id":2}"#])
        );
        assert_eq!(d.capacity(), 0);
    }

    #[test]
    fn split_at_every_position() {
        let input = b"{\"id\":1,\"method\":\"server.ping\"}\n  \r\n{\"id\":2}  \r\n\n{\"x\":3}\t\n";
        let want = lines(&[r#"{"id":1,"method":"server.ping"}"#, r#"{"id":2}"#, r#"{"x":3}"#]);
        for cut in 0..=input.len() {
            let mut d = LineDecoder::new(100);
            let mut got = Vec::new();
            d.feed(&input[..cut]);
            got.extend(drain(&mut d));
            d.feed(&input[cut..]);
            got.extend(drain(&mut d));
            assert_eq!(got, want, "cut at {cut}");
            assert_eq!(d.buffered(), 0);
        }
        // And one byte at a time, through the zero-copy path.
        let mut d = LineDecoder::new(100);
        let mut got = Vec::new();
        for &b in input.iter() {
            let dst = d.read_buf(1);
            dst[0] = b;
            d.commit(1);
            got.extend(drain(&mut d));
        }
        assert_eq!(got, want);
    }

    #[test]
    fn several_lines_in_one_feed_and_partial_tail() {
        let mut d = LineDecoder::new(100);
        d.feed(b"a\nbb\nccc\ndd");
        assert_eq!(drain(&mut d), lines(&["a", "bb", "ccc"]));
        assert_eq!(d.buffered(), 2);
        d.feed(b"d \r\n");
        assert_eq!(drain(&mut d), lines(&["ddd"]));
    }

    #[test]
    fn whitespace_only_lines_are_not_frames() {
        let mut d = LineDecoder::new(10);
        d.feed(b"\n \n\r\n\t \r\n");
        assert!(d.next_frame().is_none());
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn leading_whitespace_is_kept_trailing_is_trimmed() {
        let mut d = LineDecoder::new(10);
        d.feed(b" x \t\r\n");
        assert_eq!(drain(&mut d), lines(&[" x"]));
    }

    #[test]
    fn line_at_the_limit_passes_one_more_byte_does_not() {
        let mut d = LineDecoder::new(4);
        d.feed(b"abcd\nabcde\nok\n");
        assert_eq!(drain(&mut d), vec![Ok(b"abcd".to_vec()), Err(5), Ok(b"ok".to_vec())]);
        // Trailing padding counts: the limit is on what the client made us buffer.
        d.feed(b"abcd  \nok\n");
        assert_eq!(drain(&mut d), vec![Err(6), Ok(b"ok".to_vec())]);
    }

    #[test]
    fn megabyte_line_without_newline_is_dropped_as_it_arrives() {
        const MAX: usize = 1_000_000;
        const CHUNK: usize = 64 * 1024;
        let mut d = LineDecoder::new(MAX);
        let line = vec![b'x'; MAX + 1];
        let mut reports = Vec::new();
        for chunk in line.chunks(CHUNK) {
            d.feed(chunk);
            assert!(d.buffered() <= MAX + CHUNK, "buffered {}", d.buffered());
            assert!(d.capacity() <= MAX + CHUNK, "capacity {}", d.capacity());
            reports.extend(drain(&mut d));
        }
        assert_eq!(reports.len(), 1);
        assert!(matches!(reports[0], Err(n) if n > MAX));
        assert_eq!(d.buffered(), 0);

        // More of the same line: silently dropped, nothing kept.
        for _ in 0..20 {
            d.feed(&line[..CHUNK]);
            assert!(d.next_frame().is_none());
            assert_eq!(d.buffered(), 0);
        }

        // The line ends; the next line is intact, even when it shares the chunk.
        d.feed(b"tail of the big line\n{\"id\":7,\"method\":\"server.ping\"}\n");
        assert_eq!(drain(&mut d), lines(&[r#"{"id":7,"method":"server.ping"}"#]));
    }

    #[test]
    fn oversized_via_read_buf_and_commit() {
        const MAX: usize = 1000;
        let mut d = LineDecoder::new(MAX);
        let mut reports = 0;
        for _ in 0..50 {
            let dst = d.read_buf(100);
            dst[..100].fill(b'y');
            d.commit(100);
            assert!(d.buffered() <= MAX + 100);
            assert!(d.capacity() <= MAX + 100);
            reports += drain(&mut d).len();
        }
        assert_eq!(reports, 1);
        let msg = b"yyy\nnext\n";
        d.read_buf(msg.len())[..msg.len()].copy_from_slice(msg);
        d.commit(msg.len());
        assert_eq!(drain(&mut d), lines(&["next"]));
    }

    #[test]
    fn oversized_is_reported_even_if_frames_are_not_drained_between_feeds() {
        let mut d = LineDecoder::new(10);
        d.feed(&[b'z'; 30]);
        d.feed(&[b'z'; 30]);
        d.feed(b"\nok\n");
        assert_eq!(drain(&mut d), vec![Err(30), Ok(b"ok".to_vec())]);
    }

    #[test]
    fn one_huge_feed_is_bounded() {
        let mut d = LineDecoder::new(1000);
        let mut data = vec![b'q'; 5_000_000];
        data.extend_from_slice(b"\nfine\n");
        d.feed(&data);
        assert!(d.capacity() <= 1000 + FEED_PIECE);
        assert_eq!(drain(&mut d), vec![Err(FEED_PIECE), Ok(b"fine".to_vec())]);
    }

    #[test]
    fn consumed_bytes_are_reclaimed_not_grown() {
        let mut d = LineDecoder::new(1000);
        let mut stream = Vec::new();
        for i in 0..10_000 {
            stream.extend_from_slice(format!("{{\"id\":{i},\"method\":\"server.ping\"}}\n").as_bytes());
        }
        // Reads that do not line up with lines, so a partial tail is pending after every drain.
        let mut n = 0;
        for chunk in stream.chunks(37) {
            d.feed(chunk);
            n += drain(&mut d).len();
            assert!(d.capacity() <= 1000, "capacity {}", d.capacity());
        }
        assert_eq!(n, 10_000);
    }

    #[test]
    fn shrink_idle_frees_memory() {
        let mut d = LineDecoder::new(1_000_000);
        let mut big = vec![b'a'; 500_000];
        big.push(b'\n');
        d.feed(&big);
        assert_eq!(drain(&mut d).len(), 1);
        assert!(d.capacity() >= 500_000);
        d.shrink_idle();
        assert_eq!(d.capacity(), 0);

        // With a partial line pending, only that much is kept, and it survives.
        d.feed(&big[..400_000]);
        drain(&mut d);
        d.feed(b"\nabc");
        assert_eq!(drain(&mut d).len(), 1);
        d.shrink_idle();
        assert!(d.capacity() < 100, "capacity {}", d.capacity());
        d.feed(b"d\n");
        assert_eq!(drain(&mut d), lines(&["abcd"]));
    }
}
