//! JSON-RPC parsing limited to what policy needs: id, method and params, all borrowed from the line.
//!
//! Forwarded bytes are never re-serialised: the gateway passes the client's exact bytes upstream
//! (`Request::raw`) with only the id replaced by its own, so what it judged is what the backend sees,
//! and re-encoding cannot introduce differences. Both JSON-RPC 2.0 and 1.0 (no `"jsonrpc"` member) are accepted.
//!
//! A batch parses into one `Result` per item ([`Message::Batch`]) because JSON-RPC answers each bad
//! item on its own and still serves the good ones; only a batch that is not JSON at all, empty, or
//! too long fails as a whole.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;
use std::io::Write;

pub use crate::wire::json::RawJson;

/// The error codes the gateway writes: JSON-RPC 2.0's own, plus the Electrum ones. A closed set, so a
/// reply can only carry a code a wallet knows how to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum ErrorCode {
    ParseError = -32700,
    /// Also "response too large" and the gateway's own limits on a request's shape.
    InvalidRequest = -32600,
    MethodNotFound = -32601,
    InvalidParams = -32602,
    InternalError = -32603,
    /// ElectrumX's BAD_REQUEST: the method exists but its arguments are unacceptable.
    BadRequest = 1,
    DaemonError = 2,
    /// The client is over the cost hard limit; the connection closes after it.
    ExcessiveResourceUsage = -101,
    ServerBusy = -102,
}

impl ErrorCode {
    /// The number on the wire.
    pub const fn value(self) -> i64 {
        self as i64
    }
}

/// An error the gateway answers a request with: its code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

/// One request (or notification) as the client sent it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `None` for a notification (no `id` member); a JSON `null` id is `Some` with raw text `null`.
    pub id: Option<RawJson<'a>>,
    /// Method names never need escapes, so one that has them is rejected rather than unescaped.
    pub method: &'a str,
    /// `None` when absent or `null`; otherwise an array or an object.
    pub params: Option<RawJson<'a>>,
    /// The item's exact bytes: the whole line for a single request, the element for a batch item.
    pub raw: &'a [u8],
}

impl Request<'_> {
    pub fn is_notification(&self) -> bool {
        self.id.is_none()
    }
}

#[derive(Debug)]
pub enum Message<'a> {
    Single(Request<'a>),
    /// Items in order; an invalid item is `Err(ParseError::Invalid { .. })` and is answered on its
    /// own. The only allocation of parsing: one `Vec` per batch.
    Batch(Vec<Result<Request<'a>, ParseError<'a>>>),
}

#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum ParseError<'a> {
    /// Not JSON.
    #[error("parse error")]
    Parse,
    /// JSON, but not a request object with a string method. `id` is the request's id when one
    /// could be read and is a legal id (string, number or null).
    #[error("invalid request")]
    Invalid { id: Option<RawJson<'a>> },
    #[error("empty batch")]
    EmptyBatch,
    #[error("batch too large: {len} items")]
    BatchTooLarge { len: usize },
}

impl<'a> ParseError<'a> {
    /// The JSON-RPC error code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ParseError::Parse => ErrorCode::ParseError,
            _ => ErrorCode::InvalidRequest,
        }
    }

    /// The id to answer with (`None` → `null`).
    pub fn id(&self) -> Option<RawJson<'a>> {
        match self {
            ParseError::Invalid { id } => *id,
            _ => None,
        }
    }
}

/// Parses one line (tcp/ssl) or one WebSocket text message.
pub fn parse_message(line: &[u8], max_batch: usize) -> Result<Message<'_>, ParseError<'_>> {
    if first_byte(line) == Some(b'[') {
        parse_batch(line, max_batch)
    } else {
        parse_item(line).map(Message::Single)
    }
}

fn parse_batch(line: &[u8], max_batch: usize) -> Result<Message<'_>, ParseError<'_>> {
    struct Items {
        max: usize,
    }
    impl<'de> Visitor<'de> for Items {
        type Value = (Vec<Result<Request<'de>, ParseError<'de>>>, usize);
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            let mut len = 0usize;
            // Keep reading past `max` so the whole line is still checked to be JSON and the
            // reported length is true; items past `max` are not parsed.
            while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                len += 1;
                if len <= self.max {
                    items.push(parse_item(raw.get().as_bytes()));
                }
            }
            Ok((items, len))
        }
    }

    let mut de = serde_json::Deserializer::from_slice(line);
    let (items, len) = de
        .deserialize_seq(Items { max: max_batch })
        .map_err(|_| ParseError::Parse)?;
    de.end().map_err(|_| ParseError::Parse)?;
    if len == 0 {
        Err(ParseError::EmptyBatch)
    } else if len > max_batch {
        Err(ParseError::BatchTooLarge { len })
    } else {
        Ok(Message::Batch(items))
    }
}

#[derive(Deserialize)]
struct RequestFields<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

/// Keeps a JSON `null` as `Some("null")`: `{"id": null}` is a request, `{}` a notification.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

fn parse_item(bytes: &[u8]) -> Result<Request<'_>, ParseError<'_>> {
    match scan_fields(bytes) {
        Some(fields) => request_from(fields, bytes),
        None => parse_item_fully(bytes),
    }
}

/// [`parse_item`] by a full parse: for every item the scan leaves aside, and the reference it must agree with.
fn parse_item_fully(bytes: &[u8]) -> Result<Request<'_>, ParseError<'_>> {
    // Serde's derived struct visitor also accepts arrays positionally; a request must be an object.
    if first_byte(bytes) != Some(b'{') {
        return Err(invalid_or_parse(bytes));
    }
    let fields: RequestFields = match serde_json::from_slice(bytes) {
        Ok(f) => f,
        Err(e) if e.is_data() => return Err(invalid_or_parse(bytes)),
        Err(_) => return Err(ParseError::Parse),
    };
    request_from(
        Fields {
            id: fields.id.map(RawJson::from),
            method: fields.method.map(RawJson::from).and_then(plain_str),
            params: fields.params.map(RawJson::from),
        },
        bytes,
    )
}

/// A request's members as read; `method` is `None` when absent or not an escape-free string.
struct Fields<'a> {
    id: Option<RawJson<'a>>,
    method: Option<&'a str>,
    params: Option<RawJson<'a>>,
}

/// The request's members from one scan of the common shape; `None` sends the item to the full parse,
/// which then also decides every error (not JSON, a repeated member, an escaped key, non-ASCII text).
fn scan_fields(bytes: &[u8]) -> Option<Fields<'_>> {
    let mut found: [Option<RawJson>; 3] = [None; 3];
    let mut repeated = false;
    crate::wire::json::object_members(bytes, |m| {
        let slot = match m.key {
            b"id" => 0,
            b"method" => 1,
            b"params" => 2,
            _ => return,
        };
        repeated |= found[slot].replace(m.value).is_some();
    })?;
    if repeated {
        return None;
    }
    let [id, method, params] = found;
    Some(Fields {
        // A null id is kept (it marks a request rather than a notification); null params read as
        // absent, as a derived `Option` member reads them.
        id,
        method: method.and_then(plain_str),
        params: params.filter(|p| p.get() != "null"),
    })
}

fn request_from<'a>(fields: Fields<'a>, bytes: &'a [u8]) -> Result<Request<'a>, ParseError<'a>> {
    let id = match fields.id {
        Some(id) if !legal_id(id) => return Err(ParseError::Invalid { id: None }),
        id => id,
    };
    let Some(method) = fields.method else {
        return Err(ParseError::Invalid { id });
    };
    if let Some(p) = fields.params {
        if !matches!(first_byte(p.get().as_bytes()), Some(b'[' | b'{')) {
            return Err(ParseError::Invalid { id });
        }
    }
    Ok(Request {
        id,
        method,
        params: fields.params,
        raw: bytes,
    })
}

/// A data error (wrong shape, duplicate member) can be raised before a later syntax error is seen,
/// so check the whole text before calling it "valid JSON, invalid request".
fn invalid_or_parse(bytes: &[u8]) -> ParseError<'_> {
    if serde_json::from_slice::<IgnoredAny>(bytes).is_ok() {
        ParseError::Invalid { id: None }
    } else {
        ParseError::Parse
    }
}

/// JSON-RPC ids are strings, numbers or null; echoing anything else back would be wrong.
fn legal_id(id: RawJson) -> bool {
    matches!(first_byte(id.get().as_bytes()), Some(b'"' | b'-' | b'0'..=b'9' | b'n'))
}

/// The contents of a JSON string without escapes, borrowed; `None` for other values and for strings
/// with escapes (none of the names and hex strings the gateway reads legitimately contains one).
fn plain_str(raw: RawJson<'_>) -> Option<&str> {
    let s = raw.get();
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

fn first_byte(bytes: &[u8]) -> Option<u8> {
    bytes
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// What the backend sent, as far as routing needs to know.
#[derive(Debug, Clone)]
pub enum Incoming<'a> {
    /// A reply to one of our requests.
    Response { id: RawJson<'a> },
    /// A subscription notification (`method`, no id or a null id).
    Notification { method: &'a str },
    /// A batch reply whose every item is a response with an id: (id, the item's exact bytes).
    Batch(Vec<(RawJson<'a>, &'a [u8])>),
    /// Anything else: not JSON, not an object, a batch with non-response items, or a request from
    /// the server (an object with both a method and a non-null id, which 1.6 allows for
    /// `server.ping`).
    Other,
}

#[derive(Deserialize)]
struct IncomingFields<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
}

/// Classifies a backend line. Parses only `id`, `method` and `error`; `result` is skipped unread.
pub fn parse_incoming(line: &[u8]) -> Incoming<'_> {
    match first_byte(line) {
        Some(b'{') => match fast_response_id(line) {
            Some(id) => Incoming::Response { id },
            None => incoming_object(line),
        },
        Some(b'[') => incoming_batch(line),
        _ => Incoming::Other,
    }
}

/// The id of a reply in one of the shapes Electrum servers write, found without reading the result:
/// first key `"id"`, or `"jsonrpc":"2.0"` then `"id"` (electrs, Fulcrum), or `"id"` as the last key
/// (ElectrumX). A key at the very start or end of the outer object is a top-level key, so a nested
/// `"id"` cannot be mistaken for it. `None` sends the line to the full parse. Backend lines are
/// trusted for shape; the full parse still handles everything unusual.
fn fast_response_id(line: &[u8]) -> Option<RawJson<'_>> {
    let line = trim_ws(line);
    let inner = line.strip_prefix(b"{")?.strip_suffix(b"}")?;
    if mentions_method(inner) {
        return None;
    }
    let head = trim_ws_start(inner);
    let after_jsonrpc = key_value(head, b"\"jsonrpc\"").and_then(|(v, rest)| {
        (v == b"\"2.0\"").then_some(())?;
        trim_ws_start(rest).strip_prefix(b",").map(trim_ws_start)
    });
    for candidate in [Some(head), after_jsonrpc].into_iter().flatten() {
        if let Some((v, rest)) = key_value(candidate, b"\"id\"") {
            let rest = trim_ws_start(rest);
            if rest.is_empty() || rest[0] == b',' {
                return raw(v);
            }
        }
    }
    // Last key: `... , "id" : VALUE`
    let tail = trim_ws_end(inner);
    let start = scalar_start(tail)?;
    let (before, value) = tail.split_at(start);
    let before = trim_ws_end(before).strip_suffix(b":")?;
    let before = trim_ws_end(before).strip_suffix(b"\"id\"")?;
    trim_ws_end(before).strip_suffix(b",")?;
    raw(value)
}

fn raw(v: &[u8]) -> Option<RawJson<'_>> {
    RawJson::parse(std::str::from_utf8(v).ok()?)
}

/// Whether a backend line has a `"method"` key anywhere (a notification, or a request from the
/// server). The searcher is built once: building it costs more than searching a short reply.
fn mentions_method(hay: &[u8]) -> bool {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"method\""));
    FINDER.find(hay).is_some()
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim_ws_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&c| is_ws(c)).count();
    &b[n..]
}

fn trim_ws_end(b: &[u8]) -> &[u8] {
    let n = b.iter().rev().take_while(|&&c| is_ws(c)).count();
    &b[..b.len() - n]
}

fn trim_ws(b: &[u8]) -> &[u8] {
    trim_ws_end(trim_ws_start(b))
}

/// At `key : VALUE` where VALUE is a number or an escape-free string: (VALUE, what follows).
fn key_value<'a>(b: &'a [u8], key: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let rest = trim_ws_start(b.strip_prefix(key)?);
    let rest = trim_ws_start(rest.strip_prefix(b":")?);
    let len = scalar_len(rest)?;
    Some(rest.split_at(len))
}

fn scalar_len(b: &[u8]) -> Option<usize> {
    if b.first() == Some(&b'"') {
        let end = b[1..].iter().position(|&c| c == b'"' || c == b'\\')?;
        (b[1 + end] == b'"').then_some(end + 2)
    } else {
        let n = b
            .iter()
            .take_while(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .count();
        (n > 0).then_some(n)
    }
}

/// Start of the number or escape-free string that ends `b`.
fn scalar_start(b: &[u8]) -> Option<usize> {
    if b.last() == Some(&b'"') {
        let body = &b[..b.len() - 1];
        let open = body.iter().rposition(|&c| c == b'"')?;
        (!body[open + 1..].contains(&b'\\')).then_some(open)
    } else {
        let n = b
            .iter()
            .rev()
            .take_while(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .count();
        (n > 0).then_some(b.len() - n)
    }
}

fn incoming_object(bytes: &[u8]) -> Incoming<'_> {
    let Ok(f) = serde_json::from_slice::<IncomingFields>(bytes) else {
        return Incoming::Other;
    };
    let real_id = f.id.filter(|id| id.get() != "null");
    match (f.method, real_id, f.id) {
        (Some(m), None, _) => plain_str(m.into()).map_or(Incoming::Other, |method| Incoming::Notification { method }),
        (Some(_), Some(_), _) => Incoming::Other,
        (None, _, Some(id)) => Incoming::Response { id: id.into() },
        (None, _, None) => Incoming::Other,
    }
}

fn incoming_batch(line: &[u8]) -> Incoming<'_> {
    struct Items;
    impl<'de> Visitor<'de> for Items {
        type Value = Option<Vec<(RawJson<'de>, &'de [u8])>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            let mut all_responses = true;
            while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                if !all_responses {
                    continue;
                }
                let bytes = raw.get().as_bytes();
                // Checked first: the derived visitor would also read an array positionally.
                let response = match first_byte(bytes) {
                    Some(b'{') => incoming_object(bytes),
                    _ => Incoming::Other,
                };
                match response {
                    Incoming::Response { id, .. } => items.push((id, bytes)),
                    _ => all_responses = false,
                }
            }
            Ok((all_responses && !items.is_empty()).then_some(items))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(line);
    match de.deserialize_seq(Items) {
        Ok(Some(items)) if de.end().is_ok() => Incoming::Batch(items),
        _ => Incoming::Other,
    }
}

/// Whether arrays and objects nest more than `max` levels deep anywhere in `bytes` (the outermost
/// value is level 1). One linear pass that builds nothing, so a deep message costs no more to refuse
/// than a flat one of the same length; brackets inside strings do not count. Syntax is not checked.
pub fn nesting_exceeds(bytes: &[u8], max: usize) -> bool {
    // Wallet requests hold a handful of brackets: counting them is a stateless pass the compiler
    // vectorises, and settles nearly every message without the scan below.
    if bracket_count(bytes) <= max {
        return false;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// How many `[` and `{` bytes `bytes` holds. Counted per 128-byte block into a byte-wide sum, which the
/// compiler turns into wide vector compares (a sum as wide as `usize` per byte vectorises poorly).
fn bracket_count(bytes: &[u8]) -> usize {
    bytes
        .chunks(128)
        .map(|block| {
            let n: u8 = block.iter().map(|&b| u8::from(b == b'[' || b == b'{')).sum();
            usize::from(n)
        })
        .sum()
}

/// Where `part`, a value borrowed from `whole` by the parsers above, lies in `whole`; `None` if it
/// does not lie there.
pub fn span_of(whole: &[u8], part: &str) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some(start..end)
}

/// The integer id the gateway gave a request, as a backend wrote it back: `7`, or `7.0` / `7e0` from a
/// backend that parses ids as floats. `None` for anything else (strings, fractions, negatives).
pub fn gateway_id(id: RawJson) -> Option<u64> {
    let text = id.get();
    // What the gateway wrote, back as written: plain digits (at most 19, so no overflow).
    if (1..=19).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(text.bytes().fold(0, |n, b| n * 10 + u64::from(b - b'0')));
    }
    if let Ok(n) = text.parse::<u64>() {
        return Some(n);
    }
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let f: f64 = text.parse().ok()?;
    // Below 2^53 a float holds every integer exactly.
    (f.fract() == 0.0 && f < 9_007_199_254_740_992.0).then_some(f as u64)
}

/// Appends a JSON-RPC error reply and a newline to `out`; `id` `None` is written as `null`.
pub fn write_error(out: &mut Vec<u8>, id: Option<RawJson>, code: ErrorCode, message: &str) {
    out.extend_from_slice(br#"{"jsonrpc":"2.0","error":{"code":"#);
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{}", code.value());
    out.extend_from_slice(br#","message":"#);
    write_json_str(out, message);
    out.extend_from_slice(br#"},"id":"#);
    write_id(out, id);
    out.extend_from_slice(b"}\n");
}

/// Appends a JSON-RPC result reply and a newline to `out`; `result_json` must be valid JSON.
pub fn write_result(out: &mut Vec<u8>, id: Option<RawJson>, result_json: &str) {
    out.extend_from_slice(br#"{"jsonrpc":"2.0","result":"#);
    out.extend_from_slice(result_json.as_bytes());
    out.extend_from_slice(br#","id":"#);
    write_id(out, id);
    out.extend_from_slice(b"}\n");
}

fn write_id(out: &mut Vec<u8>, id: Option<RawJson>) {
    out.extend_from_slice(id.map_or("null", RawJson::get).as_bytes());
}

/// Escapes per RFC 8259: quote, backslash and control characters; everything else (UTF-8
/// included) is copied in runs.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// The raw value of a parameter: `params[index]` when params are positional, `params[name]` when
/// named (the last occurrence of a repeated name, as the Python and serde_json backends read it).
pub fn param_raw<'a>(params: Option<RawJson<'a>>, index: usize, name: &str) -> Option<RawJson<'a>> {
    let text = params?.get();
    let mut de = serde_json::Deserializer::from_str(text);
    match text.as_bytes().first()? {
        b'[' => de.deserialize_seq(Nth(index)).ok().flatten(),
        b'{' => de.deserialize_map(Named(name)).ok().flatten(),
        _ => None,
    }
    .map(RawJson::from)
}

/// Number of parameters: positional count or named member count (0 without params).
pub fn param_count(params: Option<RawJson>) -> usize {
    params.map_or(0, |p| {
        let mut de = serde_json::Deserializer::from_str(p.get());
        match p.get().as_bytes().first() {
            Some(b'[') => de.deserialize_seq(Count).unwrap_or(0),
            Some(b'{') => de.deserialize_map(Count).unwrap_or(0),
            _ => 0,
        }
    })
}

/// A parameter as a non-negative integer. Accepts a JSON integer or a string of decimal digits (the
/// Python backends convert with `int()`, so `"2016"` means 2016 to them); rejects fractions,
/// exponents, signs and anything else, so the gateway never reads a number differently from the
/// backend.
pub fn param_u64(params: Option<RawJson>, index: usize, name: &str) -> Option<u64> {
    let raw = param_raw(params, index, name)?.get();
    let digits = raw.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A string parameter, borrowed; `None` if it is not a string or contains escapes.
pub fn param_str<'a>(params: Option<RawJson<'a>>, index: usize, name: &str) -> Option<&'a str> {
    plain_str(param_raw(params, index, name)?)
}

/// The length of an array parameter; `None` if it is not an array.
pub fn param_array_len(params: Option<RawJson>, index: usize, name: &str) -> Option<usize> {
    let raw = param_raw(params, index, name)?.get();
    if !raw.starts_with('[') {
        return None;
    }
    serde_json::Deserializer::from_str(raw).deserialize_seq(Count).ok()
}

/// Skips to element `.0` of an array; the rest must still be consumed or serde_json reports an error.
struct Nth(usize);

impl<'de> Visitor<'de> for Nth {
    type Value = Option<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        for _ in 0..self.0 {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(None);
            }
        }
        let found = seq.next_element::<&'de RawValue>()?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(found)
    }
}

struct Named<'n>(&'n str);

impl<'de> Visitor<'de> for Named<'_> {
    type Value = Option<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(hit) = map.next_key_seed(KeyIs(self.0))? {
            if hit {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Compares a map key with a name without allocating, escaped keys included.
struct KeyIs<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

struct Count;

impl<'de> Visitor<'de> for Count {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array or object")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(n)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(line: &str) -> Request<'_> {
        match parse_message(line.as_bytes(), 10) {
            Ok(Message::Single(r)) => r,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn err(line: &str) -> ParseError<'_> {
        match parse_message(line.as_bytes(), 10) {
            Err(e) => e,
            other => panic!("{line}: expected an error, got {other:?}"),
        }
    }

    fn raw(v: Option<RawJson<'_>>) -> Option<&str> {
        v.map(RawJson::get)
    }

    #[test]
    fn jsonrpc_2_and_1_requests() {
        let line = r#"{"jsonrpc":"2.0","id":7,"method":"server.version","params":["wallet","1.4"]}"#;
        let r = single(line);
        assert_eq!(raw(r.id), Some("7"));
        assert_eq!(r.method, "server.version");
        assert_eq!(raw(r.params), Some(r#"["wallet","1.4"]"#));
        assert_eq!(r.raw, line.as_bytes());
        assert!(!r.is_notification());

        let r = single(r#"{"id": "a-b", "method": "server.ping", "params": []}"#);
        assert_eq!(raw(r.id), Some(r#""a-b""#));
        assert_eq!(r.method, "server.ping");
    }

    #[test]
    fn ids_number_string_null_absent() {
        assert_eq!(raw(single(r#"{"id":-12.5e3,"method":"m"}"#).id), Some("-12.5e3"));
        assert_eq!(raw(single(r#"{"id":"x\"y","method":"m"}"#).id), Some(r#""x\"y""#));
        assert_eq!(raw(single(r#"{"id":null,"method":"m"}"#).id), Some("null"));
        let r = single(r#"{"method":"m"}"#);
        assert!(r.id.is_none() && r.is_notification());
        assert!(r.params.is_none());
        // Ids of other types are not echoed.
        for bad in [
            r#"{"id":{},"method":"m"}"#,
            r#"{"id":[1],"method":"m"}"#,
            r#"{"id":true,"method":"m"}"#,
        ] {
            assert!(matches!(err(bad), ParseError::Invalid { id: None }), "{bad}");
        }
    }

    #[test]
    fn escapes_and_unicode_in_params_are_kept_verbatim() {
        let line = r#"{"id":1,"method":"server.version","params":["Elec\"trum\\ \u00e9 ☃ 😀","1.4"]}"#;
        let r = single(line);
        assert_eq!(raw(r.params), Some(r#"["Elec\"trum\\ \u00e9 ☃ 😀","1.4"]"#));
        assert_eq!(param_str(r.params, 1, "protocol_version"), Some("1.4"));
        // Escaped strings are not borrowed as-is.
        assert_eq!(param_str(r.params, 0, "client_name"), None);
        let r = single(r#"{"id":1,"method":"m","params":["☃"]}"#);
        assert_eq!(param_str(r.params, 0, "x"), Some("☃"));
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "",
            "   ",
            "{",
            "{\"id\":1,",
            "nope",
            "{\"id\":1}x",
            "[1,",
            "\u{1}",
            "{\"id\":1,\"method\":\"m\"} {}",
        ] {
            assert!(matches!(err(bad), ParseError::Parse), "{bad:?}");
        }
        assert!(matches!(
            parse_message(b"{\"method\":\"\xff\"}", 10),
            Err(ParseError::Parse)
        ));
        assert_eq!(err("{").code(), ErrorCode::ParseError);
    }

    #[test]
    fn invalid_requests() {
        // JSON but not a request object.
        for bad in ["1", "\"s\"", "null", "true"] {
            assert!(matches!(err(bad), ParseError::Invalid { id: None }), "{bad}");
        }
        // Missing, non-string, escaped or null method: the id is kept.
        for bad in [
            r#"{"id":3}"#,
            r#"{"id":3,"method":5}"#,
            r#"{"id":3,"method":null}"#,
            r#"{"id":3,"method":["m"]}"#,
            r#"{"id":3,"method":"server\u002eping"}"#,
            r#"{"id":3,"method":"m","params":5}"#,
            r#"{"id":3,"method":"m","params":"x"}"#,
        ] {
            let e = err(bad);
            assert!(matches!(e, ParseError::Invalid { .. }), "{bad}");
            assert_eq!(raw(e.id()), Some("3"), "{bad}");
            assert_eq!(e.code(), ErrorCode::InvalidRequest);
        }
        // Duplicate members are refused rather than guessed at.
        assert!(matches!(
            err(r#"{"id":1,"method":"a","method":"b"}"#),
            ParseError::Invalid { id: None }
        ));
        // ... but a duplicate followed by broken JSON is a parse error.
        assert!(matches!(err(r#"{"id":1,"method":"a","method":"b""#), ParseError::Parse));
        // Null params mean no params.
        assert!(single(r#"{"id":1,"method":"m","params":null}"#).params.is_none());
    }

    #[test]
    fn batches() {
        let line =
            r#"[{"id":1,"method":"a"}, 5, {"method":"b","params":{"k":"v"}}, {"id":"z"}, {"id":null,"method":"c"}]"#;
        let Ok(Message::Batch(items)) = parse_message(line.as_bytes(), 10) else {
            panic!()
        };
        assert_eq!(items.len(), 5);
        let r0 = items[0].as_ref().unwrap();
        assert_eq!(
            (raw(r0.id), r0.method, r0.raw),
            (Some("1"), "a", br#"{"id":1,"method":"a"}"#.as_slice())
        );
        assert!(matches!(items[1], Err(ParseError::Invalid { id: None })));
        let r2 = items[2].as_ref().unwrap();
        assert!(r2.is_notification());
        assert_eq!(raw(r2.params), Some(r#"{"k":"v"}"#));
        assert!(matches!(items[3], Err(ParseError::Invalid { id: Some(id) }) if id.get() == r#""z""#));
        assert_eq!(raw(items[4].as_ref().unwrap().id), Some("null"));

        assert!(matches!(err("[]"), ParseError::EmptyBatch));
        assert!(matches!(err(" [ ] "), ParseError::EmptyBatch));
        assert_eq!(err("[]").code(), ErrorCode::InvalidRequest);
        assert!(matches!(
            err("[1,2,3,4,5,6,7,8,9,10,11,12]"),
            ParseError::BatchTooLarge { len: 12 }
        ));
        assert!(matches!(err("[{\"id\":1,\"method\":\"a\"},"), ParseError::Parse));
        assert!(matches!(err("[1] 2"), ParseError::Parse));
        // Nested arrays are items, and invalid ones.
        let Ok(Message::Batch(items)) = parse_message(b"[[{\"id\":1,\"method\":\"a\"}]]", 10) else {
            panic!()
        };
        assert!(matches!(items[0], Err(ParseError::Invalid { id: None })));
    }

    #[test]
    fn fast_path_finds_top_level_ids_only() {
        let id = |l: &[u8]| fast_response_id(l).map(|r| r.get().to_string());
        assert_eq!(
            id(br#"{"jsonrpc": "2.0", "result": {"a": [1, {"id": 9}]}, "id": 17}"#).as_deref(),
            Some("17")
        );
        assert_eq!(
            id(br#"{"id":"ab-1","jsonrpc":"2.0","result":null}"#).as_deref(),
            Some(r#""ab-1""#)
        );
        assert_eq!(
            id(br#"{"jsonrpc":"2.0","id":3,"result":{"id":4}}"#).as_deref(),
            Some("3")
        );
        // The last key is a nested object holding "id": not top-level, so no fast answer.
        assert_eq!(id(br#"{"jsonrpc":"2.0","result":{"id":4}}"#), None);
        // Escaped strings and notifications go to the full parse.
        assert_eq!(id(br#"{"result":1,"id":"a"b"}"#), None);
        assert_eq!(id(br#"{"jsonrpc":"2.0","method":"x","params":[],"id":1}"#), None);
        assert_eq!(id(br#"{"jsonrpc":"2.0","result":"x","id":null}"#), None);
    }

    #[test]
    fn incoming() {
        let r = parse_incoming(br#"{"jsonrpc":"2.0","result":{"big":[1,2,3]},"id":5}"#);
        assert!(matches!(r, Incoming::Response { id } if id.get() == "5"));
        let r = parse_incoming(br#"{"jsonrpc":"2.0","error":{"code":1,"message":"x"},"id":"q"}"#);
        assert!(matches!(r, Incoming::Response { id } if id.get() == r#""q""#));
        let r = parse_incoming(br#"{"jsonrpc":"2.0","result":null,"error":null,"id":null}"#);
        assert!(matches!(r, Incoming::Response { id } if id.get() == "null"));
        let r = parse_incoming(
            br#"{"jsonrpc":"2.0","method":"blockchain.headers.subscribe","params":[{"hex":"00","height":1}]}"#,
        );
        assert!(matches!(
            r,
            Incoming::Notification {
                method: "blockchain.headers.subscribe"
            }
        ));
        let r = parse_incoming(br#"{"jsonrpc":"2.0","method":"server.ping","id":9}"#);
        assert!(matches!(r, Incoming::Other));
        let r = parse_incoming(br#"[{"id":1,"result":1}, {"id":2,"error":{"code":1}}]"#);
        let Incoming::Batch(items) = r else { panic!("{r:?}") };
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].0.get(), "2");
        assert_eq!(items[1].1, br#"{"id":2,"error":{"code":1}}"#);
        for other in [
            &b"[]"[..],
            b"[{\"id\":1,\"result\":1}, 3]",
            b"[{\"id\":1,\"result\":1}, {\"method\":\"m\"}]",
            b"{}",
            b"{\"result\":1}",
            b"nonsense",
            b"{\"id\":1,\"result\":1",
            b"5",
            b"[[1,null,null]]",
        ] {
            assert!(
                matches!(parse_incoming(other), Incoming::Other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        assert!(!nesting_exceeds(br#"{"id":1,"method":"m","params":[[1]]}"#, 3));
        assert!(nesting_exceeds(br#"{"id":1,"method":"m","params":[[[1]]]}"#, 3));
        assert!(nesting_exceeds(br#"[{"params":[{}]}]"#, 3));
        assert!(!nesting_exceeds(br#"{"params":["[[[[[[", "\"[[[[", "\\"]}"#, 2));
        assert!(nesting_exceeds(br#"{"params":["\\",[[]]]}"#, 3));
        // Closing brackets bring the depth back down.
        assert!(!nesting_exceeds(b"[[]][[]][[]]", 2));
        let long = br#"{"a":[{"b":"[x]"}]} "#.repeat(100);
        assert_eq!(
            bracket_count(&long),
            long.iter().filter(|&&b| b == b'[' || b == b'{').count()
        );
        assert!(!nesting_exceeds(&b"[".repeat(32), 32));
        assert!(nesting_exceeds(&b"[".repeat(33), 32));
    }

    #[test]
    fn gateway_ids_survive_float_reserialisation() {
        let id = |s: &str| gateway_id(p(s));
        assert_eq!(id("7"), Some(7));
        assert_eq!(id("7.0"), Some(7));
        assert_eq!(id("7e0"), Some(7));
        assert_eq!(id("70E-1"), Some(7));
        assert_eq!(id("18446744073709551615"), Some(u64::MAX));
        for other in ["7.5", "-7", "\"7\"", "null", "1e300", "123456789012345678901234567890"] {
            assert_eq!(id(other), None, "{other}");
        }
        let line = br#"{"id": 42 ,"result":1}"#;
        let Incoming::Response { id } = parse_incoming(line) else {
            panic!()
        };
        assert_eq!(span_of(line, id.get()), Some(7..9));
        assert_eq!(span_of(&line[..8], id.get()), None);
    }

    #[test]
    fn replies_are_valid_json() {
        let mut out = Vec::new();
        let id = p("\"abc\"");
        let msg = "bad \"thing\" \\ \n\t\u{1}\u{1f} é ☃ 😀";
        write_error(&mut out, Some(id), ErrorCode::InvalidRequest, msg);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["code"], -32600);
        assert_eq!(v["error"]["message"], msg);
        assert_eq!(v["id"], "abc");
        assert_eq!(v["jsonrpc"], "2.0");

        out.clear();
        write_error(&mut out, None, ErrorCode::BadRequest, "");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["id"].is_null());

        let before = out.len();
        write_result(&mut out, Some(id), "false");
        let v: serde_json::Value = serde_json::from_slice(&out[before..]).unwrap();
        assert_eq!(v["result"], false);
        assert_eq!(v["id"], "abc");
        assert_eq!(out.last(), Some(&b'\n'));
    }

    fn p(s: &str) -> RawJson<'_> {
        RawJson::parse(s).unwrap()
    }

    #[test]
    fn params_positional_and_named() {
        let pos = p(r#"[100, "2016", {"x":[1,2]}, [1,2,3], "abc", -1, 1.5, 1e3, ""]"#);
        let pos = Some(pos);
        assert_eq!(param_count(pos), 9);
        assert_eq!(param_u64(pos, 0, "a"), Some(100));
        assert_eq!(param_u64(pos, 1, "a"), Some(2016));
        assert_eq!(param_u64(pos, 2, "a"), None);
        assert_eq!(param_array_len(pos, 3, "a"), Some(3));
        assert_eq!(param_array_len(pos, 2, "a"), None);
        assert_eq!(param_str(pos, 4, "a"), Some("abc"));
        for i in 5..9 {
            assert_eq!(param_u64(pos, i, "a"), None, "index {i}");
        }
        assert_eq!(param_raw(pos, 9, "a").map(RawJson::get), None);
        assert_eq!(param_u64(Some(p("[18446744073709551616]")), 0, "a"), None);

        let named = p(r#"{"start_height": 5, "count": 10, "c\u006funt": 20, "txids": ["a","b"]}"#);
        let named = Some(named);
        assert_eq!(param_count(named), 4);
        assert_eq!(param_u64(named, 0, "start_height"), Some(5));
        // Escaped keys compare by value; the last occurrence wins.
        assert_eq!(param_u64(named, 1, "count"), Some(20));
        assert_eq!(param_array_len(named, 0, "txids"), Some(2));
        assert_eq!(param_u64(named, 0, "missing"), None);

        assert_eq!(param_count(None), 0);
        assert_eq!(param_u64(None, 0, "a"), None);
        assert_eq!(param_array_len(Some(p("[]")), 0, "a"), None);
        assert_eq!(param_array_len(Some(p("[[]]")), 0, "a"), Some(0));
    }

    /// Byte mutations of request-shaped seeds: the one-pass scan must give the full parse's answer
    /// (the same request borrowed from the same bytes, or the same error) for every one of them.
    #[test]
    fn the_scan_agrees_with_the_full_parse() {
        let seeds: [&[u8]; 12] = [
            br#"{"jsonrpc":"2.0","id":7,"method":"blockchain.scripthash.get_history","params":["8b01df4e"]}"#,
            br#"{"id":"a","method":"server.version","params":["x",[1,4]]}"#,
            br#"{"method":"m","params":{"count":2016,"start_height":"1"},"id":null}"#,
            br#" { "id" : -1.5e3 , "method" : "m" , "params" : [ true , false , null , { } , [ ] ] } "#,
            br#"{"id":1,"method":"m","params":null}"#,
            br#"{"id":1,"method":"m","params":"x"}"#,
            br#"{"id":1,"method":7}"#,
            br#"{"id":[1],"method":"m"}"#,
            br#"{"id":1,"id":2,"method":"m"}"#,
            br#"{"i\u0064":1,"method":"a\"b","params":["\u00e9\n"]}"#,
            "{\"id\":1,\"method\":\"m\",\"params\":[\"é\"]}".as_bytes(),
            br#"{"id":1,"method":"m","x":{"y":[{"z":"\\"}]}}"#,
        ];
        const ALPHABET: &[u8] = b"{}[]\":,\\ 0123456789-+.eEtrufalsnd\t\r\n\x01\xc3\xa9";
        let mut next = crate::wire::testing::xorshift(0x9e37_79b9_7f4a_7c15u64);
        let (mut scanned, mut total) = (0, 0);
        for round in 0..60_000 {
            let mut b = seeds[round % seeds.len()].to_vec();
            for _ in 0..round % 4 {
                let at = next(b.len() + 1);
                match next(4) {
                    0 if at < b.len() => {
                        b.remove(at);
                    }
                    1 if at < b.len() => b[at] = ALPHABET[next(ALPHABET.len())],
                    2 => b.insert(at, ALPHABET[next(ALPHABET.len())]),
                    _ => {
                        let from = next(b.len() + 1);
                        let piece = b[from.min(at)..from.max(at)].to_vec();
                        b.splice(at..at, piece);
                    }
                }
            }
            total += 1;
            scanned += usize::from(scan_fields(&b).is_some());
            let (fast, full) = (parse_item(&b), parse_item_fully(&b));
            let text = String::from_utf8_lossy(&b);
            assert_eq!(format!("{fast:?}"), format!("{full:?}"), "{text}");
            if let (Ok(f), Ok(g)) = (fast, full) {
                let at = |v: Option<RawJson>| v.map(|v| v.get().as_ptr());
                assert_eq!(
                    (at(f.id), at(f.params), f.method.as_ptr()),
                    (at(g.id), at(g.params), g.method.as_ptr())
                );
            }
        }
        // The test means nothing unless the scan answers a good share of the cases itself.
        assert!(scanned * 5 > total, "the scan answered {scanned} of {total}");
    }
}
