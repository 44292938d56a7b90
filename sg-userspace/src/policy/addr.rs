//! Addresses in the form the data plane holds them (`PacketMeta`, `SessionKey`): 16
//! bytes, IPv4 in the first four. Shared by the reference evaluator and the session
//! listing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sg_common::family;

/// An address as `PacketMeta` and `SessionKey` hold it: IPv4 in the first four bytes
/// (network order), the rest zero; IPv6 in all sixteen.
pub fn addr_to_bytes(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            bytes
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The inverse of [`addr_to_bytes`] for an address of `fam` (`family::IPV4` or
/// `family::IPV6`; anything else is read as IPv6).
pub fn addr_from_bytes(fam: u8, bytes: &[u8; 16]) -> IpAddr {
    if fam == family::IPV4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        for (fam, addr) in [(family::IPV4, "198.18.0.1"), (family::IPV6, "2001:db8::1")] {
            let addr: IpAddr = addr.parse().unwrap();
            assert_eq!(addr_from_bytes(fam, &addr_to_bytes(addr)), addr);
        }
    }
}
