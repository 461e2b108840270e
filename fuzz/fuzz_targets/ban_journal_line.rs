//! Feeds arbitrary bytes to the ban journal's line parser, as replay reads each line: no panic, and a
//! line that parses re-encodes to a line that parses to the same statement.
#![no_main]

use gatehouse::state::journal::{encode_line, parse_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = parse_line(data) else { return };
    let line = encode_line(&entry);
    assert_eq!(line.last(), Some(&b'\n'));
    assert_eq!(parse_line(&line[..line.len() - 1]), Ok(entry));
});
