//! The opening SYN of a connection as a wire frame, for BPF_PROG_TEST_RUN.
//!
//! The programs parse lengths (IPv4 total length and header length, IPv6 payload length,
//! TCP data offset) and drop a frame whose lengths disagree with its size as malformed,
//! so those are exact. Checksums are filled in too, although the programs do not check
//! them: the frame is then one the wire could carry, whatever reads it.

use std::net::{IpAddr, SocketAddr};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
/// Locally administered placeholders: neither program looks at the MAC addresses.
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const TCP_SYN: u8 = 0x02;
const TCP_HEADER_LEN: usize = 20;

/// An Ethernet frame carrying a bare TCP SYN (no options, no payload) from `src` to
/// `dst`; `None` when the two are of different address families.
pub fn tcp_syn(src: SocketAddr, dst: SocketAddr) -> Option<Vec<u8>> {
    let mut tcp = vec![0u8; TCP_HEADER_LEN];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    // Sequence number 1, acknowledgment 0 (no ACK flag).
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = ((TCP_HEADER_LEN / 4) as u8) << 4;
    tcp[13] = TCP_SYN;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let (ethertype, ip) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let sum = checksum(&[&pseudo_v4(&s.octets(), &d.octets(), tcp.len()), &tcp]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            (ETHERTYPE_IPV4, ipv4(s.octets(), d.octets(), &tcp))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let sum = checksum(&[&pseudo_v6(&s.octets(), &d.octets(), tcp.len()), &tcp]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            (ETHERTYPE_IPV6, ipv6(s.octets(), d.octets(), &tcp))
        }
        _ => return None,
    };
    let mut frame = Vec::with_capacity(14 + ip.len());
    frame.extend_from_slice(&DST_MAC);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(&ip);
    Some(frame)
}

fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    // Don't fragment, as Linux sends a SYN.
    h[6] = 0x40;
    h[8] = 64;
    h[9] = IPPROTO_TCP;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let sum = checksum(&[&h]);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn ipv6(src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = IPPROTO_TCP;
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// The IPv4 pseudo-header the TCP checksum covers (RFC 793).
fn pseudo_v4(src: &[u8; 4], dst: &[u8; 4], len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    p.extend_from_slice(&[0, IPPROTO_TCP]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

/// The IPv6 pseudo-header the TCP checksum covers (RFC 8200, section 8.1).
fn pseudo_v6(src: &[u8; 16], dst: &[u8; 16], len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, IPPROTO_TCP]);
    p
}

/// The Internet checksum (RFC 1071) over `parts` laid end to end; every part but the
/// last has an even length.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_syn_has_exact_lengths_and_valid_checksums() {
        let f = tcp_syn(addr("198.18.0.1:40000"), addr("198.18.1.1:22")).unwrap();
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(&f[12..14], &ETHERTYPE_IPV4.to_be_bytes());
        let ip = &f[14..34];
        assert_eq!(ip[0], 0x45, "version 4, 5 words of header");
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 40, "total length");
        assert_eq!(ip[9], IPPROTO_TCP);
        assert_eq!(&ip[12..16], &[198, 18, 0, 1]);
        assert_eq!(&ip[16..20], &[198, 18, 1, 1]);
        assert_eq!(checksum(&[ip]), 0, "header checksum verifies");
        let tcp = &f[34..];
        assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 40000);
        assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 22);
        assert_eq!(tcp[12] >> 4, 5, "data offset");
        assert_eq!(tcp[13], TCP_SYN, "SYN alone");
        assert_eq!(checksum(&[&pseudo_v4(&[198, 18, 0, 1], &[198, 18, 1, 1], tcp.len()), tcp]), 0);
    }

    #[test]
    fn ipv6_syn_has_exact_lengths_and_valid_checksum() {
        let (s, d) = (addr("[2001:db8::1:1]:51000"), addr("[2001:db8::1]:443"));
        let f = tcp_syn(s, d).unwrap();
        assert_eq!(f.len(), 14 + 40 + 20);
        assert_eq!(&f[12..14], &ETHERTYPE_IPV6.to_be_bytes());
        let ip = &f[14..54];
        assert_eq!(ip[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 20, "payload length");
        assert_eq!(ip[6], IPPROTO_TCP, "next header");
        let tcp = &f[54..];
        assert_eq!(tcp[13], TCP_SYN);
        let (IpAddr::V6(s6), IpAddr::V6(d6)) = (s.ip(), d.ip()) else { unreachable!() };
        assert_eq!(checksum(&[&pseudo_v6(&s6.octets(), &d6.octets(), tcp.len()), tcp]), 0);
    }

    #[test]
    fn mixed_families_make_no_frame() {
        assert!(tcp_syn(addr("198.18.0.1:1"), addr("[2001:db8::1]:2")).is_none());
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071, section 3: the sum of these words is 0xddf2, so the checksum is !0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), !0xddf2);
    }
}
