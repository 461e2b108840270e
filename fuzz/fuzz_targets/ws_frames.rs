//! Feeds arbitrary bytes through the WebSocket message limiter in reads and writes of varying size,
//! and checks what the WebSocket library and the session rely on: no panic, progress whenever there is
//! input and room, never more bytes out than in, and an output in which no data message carries more
//! than `MAX + 1` payload bytes and no text message is left (they are passed as binary).
#![no_main]

use gatehouse::front::electrum::ws::MessageLimit;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read and write sizes, so cuts land everywhere.
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let (in_step, out_step) = (usize::from(step & 0x0f) + 1, usize::from(step >> 4) + 1);
    let mut limit = MessageLimit::new(MAX);
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut room = [0u8; 16];
    for chunk in rest.chunks(in_step) {
        let mut pos = 0;
        loop {
            let (used, made) = limit.process(&chunk[pos..], &mut room[..out_step]);
            assert!(used <= chunk.len() - pos && made <= out_step);
            if used == 0 && made == 0 {
                assert_eq!(pos, chunk.len(), "no progress with input and room");
                break;
            }
            pos += used;
            consumed += used;
            out.extend_from_slice(&room[..made]);
            assert!(out.len() <= consumed, "more out than in");
        }
    }
    let dropped = limit.take_discarded();
    assert!(dropped as usize <= consumed);
    check_frames(&out);
});

/// Walks the output as the WebSocket library would: the HTTP request up to its blank line, then frames.
fn check_frames(out: &[u8]) {
    let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let mut b = &out[end + 4..];
    let mut in_message = false;
    let mut msg = 0u64;
    while b.len() >= 2 {
        let (b0, b1) = (b[0], b[1]);
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        if b.len() < 2 + ext + mask {
            return;
        }
        let len = match ext {
            2 => u64::from(u16::from_be_bytes([b[2], b[3]])),
            8 => u64::from_be_bytes(b[2..10].try_into().unwrap()),
            _ => u64::from(b1 & 0x7f),
        };
        let opcode = b0 & 0x0f;
        let data = matches!(opcode, 1 | 2) || (opcode == 0 && in_message);
        if data {
            assert_ne!(opcode, 1, "a text message was passed as text");
            if opcode != 0 {
                in_message = true;
                msg = 0;
            }
            msg += len;
            assert!(msg <= MAX as u64 + 1, "a message of {msg} bytes passed");
            if b0 & 0x80 != 0 {
                in_message = false;
            }
        }
        // A declared length near u64::MAX must not wrap around into the middle of the frame.
        let skip = ((2 + ext + mask) as u64).saturating_add(len);
        if skip > b.len() as u64 {
            return;
        }
        b = &b[skip as usize..];
    }
}
