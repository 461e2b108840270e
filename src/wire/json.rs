//! A one-pass scan of a JSON object's top-level members that builds nothing.
//!
//! Request routing needs three members of a small object (a JSON-RPC request), not a parsed value. A
//! general deserializer matches keys through a visitor, buffers raw values and validates UTF-8 per
//! value; this walks the bytes once, checks the whole text is JSON, and hands back each top-level
//! member's key and value as spans of the input.
//!
//! It handles the common case only and says so: text it leaves to a full parser (a key with escapes,
//! any byte outside ASCII, nesting deeper than [`MAX_DEPTH`]) and text that is not JSON both give
//! `None`, so a caller that falls back to a full parser on `None` gets that parser's verdict, errors
//! included. When it returns members, the text is JSON by RFC 8259's grammar.

/// Deeper nesting than this is left to a full parser (whose own limit is higher): the scan recurses
/// once per level, and requests that need more than a few levels are not the common case.
pub const MAX_DEPTH: usize = 32;

/// The exact text of one JSON value, borrowed from the message it was read in. Only a scan or a full
/// parse makes one, so its text is always a single valid JSON value and can be written out as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawJson<'a>(&'a str);

impl<'a> RawJson<'a> {
    pub fn get(self) -> &'a str {
        self.0
    }

    /// `text` if it is exactly one JSON value (no surrounding whitespace); the scan decides the
    /// common case and a full parser the rest.
    pub fn parse(text: &'a str) -> Option<RawJson<'a>> {
        let mut c = Cursor {
            b: text.as_bytes(),
            i: 0,
        };
        match c.value(0) {
            Some(()) if c.i == text.len() => Some(RawJson(text)),
            _ => serde_json::from_str::<&serde_json::value::RawValue>(text)
                .ok()
                .filter(|v| v.get().len() == text.len())
                .map(RawJson::from),
        }
    }
}

impl<'a> From<&'a serde_json::value::RawValue> for RawJson<'a> {
    fn from(v: &'a serde_json::value::RawValue) -> Self {
        RawJson(v.get())
    }
}

/// One top-level member: its key (between the quotes, escape-free) and its value, borrowed from the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub key: &'a [u8],
    pub value: RawJson<'a>,
}

/// Calls `member` for each top-level member of the object `text`, in order, after which the whole of
/// `text` (surrounding whitespace allowed) is known to be one JSON object. `None`: not JSON, not an
/// object, or left to a full parser (see the module documentation); members already reported must
/// then be ignored.
pub fn object_members<'a>(text: &'a [u8], mut member: impl FnMut(Member<'a>)) -> Option<()> {
    // Text that is not UTF-8 is not ASCII either: the full parser's to judge. Converted once here, so
    // each member's value below is a slice of checked text.
    let whole = std::str::from_utf8(text).ok()?;
    let mut c = Cursor { b: text, i: 0 };
    c.ws();
    if c.peek()? != b'{' {
        return None;
    }
    c.i += 1;
    c.ws();
    if c.peek()? == b'}' {
        c.i += 1;
    } else {
        loop {
            let key = c.key()?;
            c.ws();
            c.expect(b':')?;
            c.ws();
            let start = c.i;
            c.value(1)?;
            let value = RawJson(whole.get(start..c.i)?);
            member(Member { key, value });
            c.ws();
            match c.next()? {
                b',' => c.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    c.ws();
    (c.i == text.len()).then_some(())
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    /// A member's key: a string without escapes, returned without its quotes.
    fn key(&mut self) -> Option<&'a [u8]> {
        if self.next()? != b'"' {
            return None;
        }
        let start = self.i;
        let len = plain_run(&self.b[start..]);
        self.i += len;
        // Anything but the closing quote (an escape, a control or non-ASCII byte, the end) is for
        // the full parser to judge.
        self.expect(b'"')?;
        Some(&self.b[start..start + len])
    }

    /// One value at nesting level `depth` (the outer object is level 1 for its members' values).
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(),
            b'{' => self.container(depth + 1, b'}'),
            b'[' => self.container(depth + 1, b']'),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// An object (`close` is `}`: members) or an array (`close` is `]`: elements).
    fn container(&mut self, depth: usize, close: u8) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.i += 1;
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            if close == b'}' {
                if self.peek()? != b'"' {
                    return None;
                }
                self.string()?;
                self.ws();
                self.expect(b':')?;
                self.ws();
            }
            self.value(depth)?;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                c if c == close => return Some(()),
                _ => return None,
            }
        }
    }

    /// A string value: escapes are checked for form only, as a full parser does for a value it
    /// keeps raw.
    fn string(&mut self) -> Option<()> {
        self.i += 1;
        loop {
            self.i += plain_run(&self.b[self.i..]);
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let hex = self.b.get(self.i..self.i + 4)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        self.i += 4;
                    }
                    _ => return None,
                },
                // A control character, or a byte outside ASCII left to the full parser.
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? != word {
            return None;
        }
        self.i += word.len();
        Some(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.some_digits()?;
        }
        // A digit straight after a leading zero ("01") is not a number.
        (!matches!(self.peek(), Some(b'0'..=b'9'))).then_some(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }
}

/// Length of the run of string bytes that need no attention: printable ASCII other than the quote
/// and the backslash. Eight bytes are judged at a time with word arithmetic: a wallet's strings are
/// mostly 64-digit hex, and a per-byte loop or a library search call costs more than the rest of the
/// scan.
fn plain_run(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const TOPS: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(word) = b.get(i..i + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        let quote = x ^ (ONES * u64::from(b'"'));
        let slash = x ^ (ONES * u64::from(b'\\'));
        // Per byte, the top bit is set for: a byte below 0x20 (the subtraction borrows), a byte at or
        // above 0x80, and a zero byte of `quote` or `slash`. A borrow runs only upward from a byte that
        // is itself a hit, so the lowest set bit always marks the first byte that needs attention.
        let hits = (x.wrapping_sub(ONES * 0x20)
            | x
            | (quote.wrapping_sub(ONES) & !quote)
            | (slash.wrapping_sub(ONES) & !slash))
            & TOPS;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c))
        .unwrap_or(b.len() - i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(text: &str) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        object_members(text.as_bytes(), |m| {
            out.push((String::from_utf8(m.key.to_vec()).unwrap(), m.value.get().to_string()))
        })?;
        Some(out)
    }

    #[test]
    fn reports_top_level_members_as_spans() {
        let got = members(r#" {"id" : 7, "method":"a.b", "params":["x", {"id": 1}], "n": null} "#).unwrap();
        let want = [
            ("id", "7"),
            ("method", "\"a.b\""),
            ("params", r#"["x", {"id": 1}]"#),
            ("n", "null"),
        ];
        assert_eq!(got.len(), want.len());
        for ((k, v), (wk, wv)) in got.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str()), (wk, wv));
        }
        assert_eq!(members("{}").unwrap(), vec![]);
        assert_eq!(members("\t{ }\r\n").unwrap(), vec![]);
    }

    #[test]
    fn accepts_every_json_value_kind() {
        for v in [
            "0",
            "-0",
            "1.5",
            "-12e3",
            "1E+2",
            "2.5e-7",
            "true",
            "false",
            "null",
            "\"\"",
            r#""a\"b\\c\/\b\f\n\r\t""#,
            r#""\u00e9\uD83D\uDE00""#,
            "[]",
            "[1,[2,[3]]]",
            r#"{"a":{"b":[]}}"#,
        ] {
            let text = format!("{{\"v\":{v}}}");
            assert!(members(&text).is_some(), "{text}");
            serde_json::from_str::<serde_json::Value>(&text).unwrap();
        }
    }

    #[test]
    fn refuses_what_is_not_json() {
        for text in [
            "",
            " ",
            "[]",
            "1",
            "{",
            "}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,}",
            "{\"a\":1 \"b\":2}",
            "{a:1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":-}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "{\"a\":[1,]}",
            "{\"a\":[1 2]}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":\"open}",
            "{\"a\":1} x",
            "{\"a\":1}{}",
            "{\"a\":{\"b\"}}",
            "{\"a\":{1:2}}",
            "{\"a\":[}",
            "{\"a\":{]}",
            "{\"a\":NaN}",
            "{\"a\":1}\u{0}",
        ] {
            assert!(members(text).is_none(), "{text:?}");
            assert!(serde_json::from_str::<serde_json::Value>(text).is_err() || !text.trim_start().starts_with('{'));
        }
    }

    #[test]
    fn leaves_the_unusual_to_a_full_parser() {
        // Valid JSON every one, but not the common case.
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        for text in [r#"{"i\u0064":1}"#, "{\"é\":1}", "{\"a\":\"é\"}", deep.as_str()] {
            serde_json::from_str::<serde_json::Value>(text).unwrap();
            assert!(members(text).is_none(), "{text}");
        }
        let shallow = format!("{{\"a\":{}{}}}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert!(members(&shallow).is_some());
    }

    #[test]
    fn a_single_value_parses_whole_or_not_at_all() {
        for v in ["7", "\"a\\\"b\"", "null", "[1,{\"a\":[]}]", "\"é\"", "-1.5e3"] {
            assert_eq!(RawJson::parse(v).map(RawJson::get), Some(v), "{v}");
        }
        for v in ["", " 7", "7 ", "7,", "[1", "01", "\"\\x\"", "nul", "1 2"] {
            assert_eq!(RawJson::parse(v), None, "{v:?}");
        }
    }

    #[test]
    fn the_word_at_a_time_run_stops_where_a_byte_loop_would() {
        let slow = |b: &[u8]| {
            b.iter()
                .position(|&c| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c))
                .unwrap_or(b.len())
        };
        let stoppers = [
            b'"', b'\\', 0x00, 0x1f, 0x7f, 0x80, 0xc3, 0xff, b' ', b'!', b'#', b'[', b']', b'~',
        ];
        for len in 0..20 {
            for at in 0..len {
                for &stop in &stoppers {
                    for &after in &[b'a', 0x00, b'"', 0xff] {
                        let mut b = vec![b'a'; len];
                        b[at] = stop;
                        if at + 1 < len {
                            b[at + 1] = after;
                        }
                        assert_eq!(plain_run(&b), slow(&b), "{b:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn never_reads_past_a_truncated_text() {
        let full = r#"{"id":12,"method":"m","params":["ab\u00e9",-1.5e3,true,false,null,{"k":[]}]}"#;
        for n in 0..full.len() {
            assert!(members(&full[..n]).is_none(), "{}", &full[..n]);
        }
        assert!(members(full).is_some());
    }
}
