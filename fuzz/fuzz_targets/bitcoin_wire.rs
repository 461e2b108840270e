//! Feeds arbitrary bytes to the Bitcoin v1 checks and the addr scrubber, in chunks of varying size, and
//! checks what a peer front relies on: no panic; the streaming check reaches the same verdict however the
//! stream is cut; the opening classifier agrees with the check on a v1 opening's magic; a filtered addr
//! payload is itself a valid addr payload with the count of what was kept; and the scrubber's output is
//! never longer than its input (it only drops) and passes through a stream without address messages as is.
#![no_main]

use gatehouse::wire::bitcoin::{
    classify_opening, command, filter_addr, AddrScrub, Opening, PayloadCaps, V1Check, HEADER_LEN, OPENING_LEN,
};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

const MAGIC: [u8; 4] = [0xda, 0xb5, 0xbf, 0xfa];

fn private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(a) => a.is_private() || a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.is_unique_local(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step & 0x3f) + 1;
    // The magic is prepended half the time, so the check gets past the first four bytes.
    let stream: Vec<u8> = if step % 2 == 0 {
        MAGIC.iter().chain(rest).copied().collect()
    } else {
        rest.to_vec()
    };
    let caps = PayloadCaps {
        default: 4096,
        overrides: vec![(command("block").unwrap(), 1 << 20)],
    };

    let whole = V1Check::new(MAGIC).feed(&stream, &caps);
    let mut cut = V1Check::new(MAGIC);
    let mut total = Ok(0u32);
    for c in stream.chunks(step) {
        match cut.feed(c, &caps) {
            Ok(n) => total = total.map(|t| t + n),
            Err(e) => {
                total = Err(e);
                break;
            }
        }
    }
    assert_eq!(whole, total);

    let firsts = [command("version").unwrap()];
    if stream.len() >= OPENING_LEN && classify_opening(&stream, &MAGIC, &firsts) == Opening::V1 {
        assert_eq!(&stream[..4], &MAGIC);
        assert_eq!(&stream[4..16], &firsts[0]);
    }

    for v2 in [false, true] {
        let mut out = Vec::new();
        if let Ok(f) = filter_addr(rest, v2, &mut private, &mut out) {
            let mut again = Vec::new();
            let g = filter_addr(&out, v2, &mut private, &mut again).expect("a filtered payload parses");
            assert_eq!((g.kept, g.dropped), (f.kept, 0));
            assert_eq!(again, out);
        }
    }

    let mut scrub = AddrScrub::new(MAGIC, 1 << 16);
    let mut out = Vec::new();
    for c in stream.chunks(step) {
        scrub.feed(c, &mut private, &mut out);
    }
    assert!(scrub.held() <= HEADER_LEN + (1 << 16));
    let addr_free = whole.is_ok() && !stream.windows(4).any(|w| w == b"addr");
    if addr_free && scrub.held() == 0 {
        assert_eq!(out, stream);
    }
    // Dropping never grows the stream (a rewritten message is never longer than the one it replaces).
    assert!(out.len() <= stream.len());
});
