//! Feeds arbitrary bytes to the line decoder (in reads of varying size) and to the JSON-RPC parsers,
//! and checks the properties the session relies on: no panic, lines within the limit with no
//! newline or trailing whitespace, a memory bound while a line is oversized, requests that borrow
//! from the input, error replies that are valid JSON, reply ids found inside the reply, and a nesting
//! check that is monotonic in its limit, and a one-pass member scan that accepts only JSON.
#![no_main]

use gatehouse::front::electrum::frame::{Frame, LineDecoder};
use gatehouse::front::electrum::jsonrpc::{
    gateway_id, nesting_exceeds, param_array_len, param_count, param_str, param_u64, parse_incoming, parse_message,
    span_of, write_error, Incoming, Message, ParseError, Request,
};
use gatehouse::front::electrum::methods::{lookup, request_cost, validate, Profile, ProtoVersion};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

const MAX_LINE: usize = 256;
const MAX_BATCH: usize = 8;

fn check_request(r: &Request<'_>, input: &[u8]) {
    let range = input.as_ptr_range();
    assert!(range.contains(&r.raw.as_ptr()) || r.raw.is_empty());
    assert!(!r.method.contains('\\'));
    let _ = (
        param_count(r.params),
        param_u64(r.params, 1, "count"),
        param_str(r.params, 0, "raw_tx"),
    );
    let _ = param_array_len(r.params, 0, "tx_hashes");
    for profile in [Profile::Bitcoin, Profile::Kevacoin] {
        if let Some(info) = lookup(r.method, profile, ProtoVersion(1, 4, 2)) {
            let cost = request_cost(info, r.params, &HashMap::new());
            assert!(cost.is_finite() && cost >= 0.0);
            let _ = validate(info, r.params);
        }
    }
}

fn check_line(line: &[u8]) {
    // What the scan accepts, a full parser accepts (values kept raw, as the request parser keeps them).
    if gatehouse::wire::json::object_members(line, |_| {}).is_some() {
        assert!(serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok());
        assert!(matches!(parse_message(line, MAX_BATCH), Ok(Message::Single(_)) | Err(ParseError::Invalid { .. })));
    }
    match parse_message(line, MAX_BATCH) {
        Ok(Message::Single(r)) => check_request(&r, line),
        Ok(Message::Batch(items)) => {
            assert!(!items.is_empty() && items.len() <= MAX_BATCH);
            for item in items.iter().flatten() {
                check_request(item, line);
            }
        }
        Err(e) => {
            let mut out = Vec::new();
            write_error(
                &mut out,
                e.id(),
                e.code(),
                &format!("{e} {}", String::from_utf8_lossy(line)),
            );
            assert!(matches!(parse_incoming(&out), Incoming::Response { .. }));
            if let ParseError::BatchTooLarge { len } = e {
                assert!(len > MAX_BATCH);
            }
        }
    }
    if let Incoming::Response { id } = parse_incoming(line) {
        let _ = gateway_id(id);
        assert!(span_of(line, id.get()).is_some(), "a reply's id lies in the reply");
    }
    // The nesting check is monotonic in its limit, and nothing nests deeper than its length.
    for max in [1, 2, 4, 32] {
        if nesting_exceeds(line, max + 1) {
            assert!(nesting_exceeds(line, max));
        }
    }
    assert!(!nesting_exceeds(line, line.len()));
}

fuzz_target!(|data: &[u8]| {
    check_line(data);

    // The first byte picks the read size, so splits land everywhere.
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    let mut dec = LineDecoder::new(MAX_LINE);
    for (i, chunk) in rest.chunks(step).enumerate() {
        if i % 2 == 0 {
            dec.feed(chunk);
        } else {
            let dst = dec.read_buf(chunk.len());
            dst[..chunk.len()].copy_from_slice(chunk);
            dec.commit(chunk.len());
        }
        assert!(dec.buffered() <= MAX_LINE + step);
        while let Some(frame) = dec.next_frame() {
            match frame {
                Frame::Line(line) => {
                    assert!(!line.is_empty() && line.len() <= MAX_LINE);
                    assert!(!line.contains(&b'\n'));
                    assert!(!matches!(line.last(), Some(b' ' | b'\r' | b'\t')));
                    check_line(line);
                }
                Frame::Oversized { discarded } => assert!(discarded > MAX_LINE),
            }
        }
        if i % 7 == 0 {
            dec.shrink_idle();
        }
    }
});
