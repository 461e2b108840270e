//! Feeds arbitrary bytes to the PROXY header parser and checks the properties the listener relies
//! on: no panic, a decision that never depends on bytes past the header, NeedMore on every strict
//! prefix of an accepted header, agreement with `starts_like_proxy`, and that what we encode we parse.
#![no_main]

use gatehouse::wire::proxy::{
    encode_v2, parse, starts_like_proxy, Parsed, ProxyError, MAX_HEADER,
};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};

fuzz_target!(|data: &[u8]| {
    let result = parse(data);

    if !data.is_empty() {
        let not_proxy = result == Err(ProxyError::Malformed("not a PROXY header"));
        assert_eq!(starts_like_proxy(data), !not_proxy);
    }

    let Ok(Parsed::Complete { header, consumed }) = result else {
        return;
    };
    assert!(consumed <= data.len() && consumed <= MAX_HEADER);
    let own = &data[..consumed];
    assert_eq!(parse(own), Ok(Parsed::Complete { header, consumed }));
    for i in 0..consumed {
        assert_eq!(parse(&own[..i]), Ok(Parsed::NeedMore));
    }

    if let (Some(src), Some(dst)) = (header.source, header.destination) {
        let mut out = Vec::new();
        encode_v2(src, dst, &mut out);
        let Ok(Parsed::Complete {
            header: back,
            consumed,
        }) = parse(&out)
        else {
            panic!("encode_v2 output does not parse: {out:?}");
        };
        assert_eq!(consumed, out.len());
        // Mixed families come back as IPv4-mapped IPv6.
        let widen = |a: SocketAddr| match (a.ip(), src.is_ipv4() == dst.is_ipv4()) {
            (IpAddr::V4(v4), false) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
            _ => a,
        };
        assert_eq!(back.source, Some(widen(src)));
        assert_eq!(back.destination, Some(widen(dst)));
    }
});
