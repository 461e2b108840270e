//! Feeds arbitrary bytes to the cluster's record decoders: a link's application message and a Redis
//! value or channel message. No panic; a decoded record verifies (or not) without panicking, and what
//! Redis decodes re-encodes to a value that decodes to the same record.
#![no_main]

use gatehouse::cluster::link::{decode_message, Msg};
use gatehouse::cluster::redis::{decode_value, encode_message, encode_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Msg::Record(c)) = decode_message(data) {
        let _ = c.rec.verify();
        let _ = c.rec.digest_id();
    } else if let Ok(Msg::Records(v)) = decode_message(data) {
        for c in v.iter().take(16) {
            let _ = c.rec.verify();
        }
    }
    if let Ok(rec) = decode_value(data) {
        let _ = rec.verify();
        let again = encode_value(&rec);
        assert_eq!(decode_value(again.as_bytes()).ok(), Some(rec));
    }
    if let Ok(c) = gatehouse::cluster::redis::decode_message(data) {
        let again = encode_message(&c);
        assert_eq!(gatehouse::cluster::redis::decode_message(again.as_bytes()).ok(), Some(c));
    }
});
