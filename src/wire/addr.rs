//! Client identity: the address admission and accounting are keyed by.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) are the same client as the IPv4 address; treating
/// them apart would let one client hold two budgets.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The network a client belongs to for group caps and group cost: its address with the host bits cleared.
pub fn group_of(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if v4_prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(v4_prefix.min(32)))
            };
            IpAddr::V4(Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if v6_prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(v6_prefix.min(128)))
            };
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_mask_host_bits() {
        let g = group_of("192.0.2.77".parse().unwrap(), 24, 48);
        assert_eq!(g, "192.0.2.0".parse::<IpAddr>().unwrap());
        let g = group_of("2001:db8:1:2:3::9".parse().unwrap(), 24, 48);
        assert_eq!(g, "2001:db8:1::".parse::<IpAddr>().unwrap());
        assert_eq!(
            group_of("10.1.2.3".parse().unwrap(), 0, 0),
            "0.0.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            group_of("10.1.2.3".parse().unwrap(), 32, 128),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let m: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(canonical(m), "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(group_of(m, 24, 48), "198.51.100.0".parse::<IpAddr>().unwrap());
    }
}
