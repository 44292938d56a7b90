//! What the kernel parser extracts from a frame.

/// IP protocol numbers the data plane looks at.
pub mod ip_proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const GRE: u8 = 47;
    pub const ICMPV6: u8 = 58;
}

/// Address family of a parsed packet (`PacketMeta::family`).
pub mod family {
    /// Not an IP packet (ARP, LLDP, ...).
    pub const NONE: u8 = 0;
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// ICMP and ICMPv6 error types, which quote the packet that caused them.
#[inline(always)]
pub fn is_icmp_error(protocol: u8, icmp_type: u8) -> bool {
    match protocol {
        ip_proto::ICMP => matches!(icmp_type, 3 | 11 | 12),
        ip_proto::ICMPV6 => matches!(icmp_type, 1..=4),
        _ => false,
    }
}

/// The ICMP key of an ICMP or ICMPv6 message, `type << 8 | code`: rules naming an ICMP
/// type (and code) are compiled into the port tables as a range of these keys, the way
/// TCP and UDP rules are compiled as ranges of destination ports, so one lookup of the
/// packet's key answers them (a type alone is the range `type << 8 ..= type << 8 | 0xff`).
#[inline(always)]
pub fn icmp_key(icmp_type: u8, icmp_code: u8) -> u16 {
    (u16::from(icmp_type) << 8) | u16::from(icmp_code)
}

/// The echo request type of `protocol` (8 for ICMP, 128 for ICMPv6). An ICMP session is
/// only ever opened by an echo request, so a re-check of one after the rules changed
/// rebuilds its opening packet as this type with code 0 (the reply is not what the
/// rules admitted).
#[inline(always)]
pub fn echo_request_type(protocol: u8) -> u8 {
    if protocol == ip_proto::ICMPV6 { 128 } else { 8 }
}

/// ICMPv6 neighbour discovery (router and neighbour solicitation and advertisement,
/// 133-136) and multicast listener discovery (MLD queries, reports and done, 130-132,
/// and MLDv2 reports, 143): IPv6 needs both whatever the rules say. Without MLD, a
/// snooping switch stops forwarding the solicited-node multicast neighbour discovery
/// relies on to an instance whose egress rules drop its reports.
#[inline(always)]
pub fn is_neighbour_discovery(protocol: u8, icmp_type: u8) -> bool {
    protocol == ip_proto::ICMPV6 && matches!(icmp_type, 130..=136 | 143)
}

/// Fragment position of a parsed packet (`PacketMeta::fragment`).
pub mod fragment {
    /// A whole datagram.
    pub const NONE: u8 = 0;
    /// Offset 0 with more fragments to follow: carries the transport header.
    pub const FIRST: u8 = 1;
    /// Offset > 0: no transport header, ports are unknown.
    pub const LATER: u8 = 2;
}

/// The parsed view of one frame, in host byte order except the addresses, which keep
/// network order (IPv4 in the first four bytes, the rest zero).
///
/// 8-byte aligned so the addresses can be read as 64-bit words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketMeta {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// TCP/UDP source port; 0 for other protocols.
    pub src_port: u16,
    /// TCP/UDP destination port; 0 for other protocols.
    pub dst_port: u16,
    /// ICMP/ICMPv6 echo identifier; 0 otherwise.
    pub icmp_id: u16,
    /// GRE protocol type; 0 otherwise.
    pub gre_proto: u16,
    /// IPv4 identification or IPv6 fragment-header identification; 0 when not a fragment.
    pub frag_id: u32,
    /// One of [`family`].
    pub family: u8,
    /// IP protocol of the transport header (after IPv6 extension headers).
    pub protocol: u8,
    /// One of [`fragment`].
    pub fragment: u8,
    /// Number of VLAN tags in front of the IP header (0..=2).
    pub vlan_depth: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10); 0 otherwise.
    pub tcp_flags: u8,
    /// Number of IPv6 extension headers walked.
    pub ext_headers: u8,
    /// Offset of the transport header from the frame start (0 when not reached).
    pub l4_offset: u16,
    pub _pad: u16,
    /// TCP sequence and acknowledgement numbers; 0 otherwise. Sessions check an
    /// arriving RST or FIN against the instance's own acknowledgements
    /// (`session::tcp_plausible`).
    pub tcp_seq: u32,
    pub tcp_ack: u32,
}

impl PacketMeta {
    /// Zeroes every field with eight word stores. `*meta = PacketMeta::default()`
    /// compiles to a call of a byte-at-a-time `memset` on the BPF target: 64 stores and
    /// a loop, on every packet.
    #[inline(always)]
    pub fn clear(&mut self) {
        let words = (self as *mut Self).cast::<u64>();
        for i in 0..size_of::<Self>() / 8 {
            // SAFETY: `Self` is 8-byte aligned, 64 bytes long and all integers, so eight
            // u64 zeros are a valid value.
            unsafe { words.add(i).write_volatile(0) };
        }
    }

    /// The source and destination addresses as four native-order words (source's
    /// first 8 bytes, its last 8, then the destination's), read as aligned 64-bit loads.
    /// Read through `&[u8; 16]` once inlined, LLVM can lose the struct's alignment and
    /// assemble each word from eight byte loads on the BPF target: it did so in the flow
    /// cache's tuple check, ~100 instructions on every established-flow packet.
    #[inline(always)]
    pub fn addr_words(&self) -> [u64; 4] {
        // SAFETY: `src` and `dst` are the first 32 bytes of this 8-byte aligned struct
        // (asserted below), and any bytes are a valid u64.
        unsafe { core::ptr::read((self as *const Self).cast::<[u64; 4]>()) }
    }
}

const _: () = assert!(size_of::<PacketMeta>().is_multiple_of(8) && align_of::<PacketMeta>() == 8);
const _: () = assert!(core::mem::offset_of!(PacketMeta, src) == 0 && core::mem::offset_of!(PacketMeta, dst) == 16);

#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields only, no implicit padding (asserted in tests).
unsafe impl aya::Pod for PacketMeta {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_keys_order_by_type_then_code() {
        assert_eq!(icmp_key(8, 0), 0x0800);
        assert_eq!(icmp_key(3, 4), 0x0304);
        assert_eq!(icmp_key(255, 255), u16::MAX);
        assert_eq!((echo_request_type(ip_proto::ICMP), echo_request_type(ip_proto::ICMPV6)), (8, 128));
    }

    #[test]
    fn packet_meta_has_no_implicit_padding() {
        // 16 + 16 + 4*2 + 4 + 8*1 + 2*2 + 2*4 = 64 bytes, 8-byte aligned.
        assert_eq!(core::mem::size_of::<PacketMeta>(), 64);
        assert_eq!(core::mem::align_of::<PacketMeta>(), 8);
    }

    #[test]
    fn clear_zeroes_every_field() {
        let mut m = PacketMeta { src: [7; 16], dst: [9; 16], src_port: 1, l4_offset: 3, _pad: 4, ..Default::default() };
        m.clear();
        assert_eq!(m, PacketMeta::default());
    }

    #[test]
    fn addr_words_are_the_addresses_native_order_words() {
        let src: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        let dst: [u8; 16] = core::array::from_fn(|i| 0xf0 - i as u8);
        let m = PacketMeta { src, dst, src_port: 0xaaaa, ..Default::default() };
        let word = |a: &[u8; 16], at: usize| u64::from_ne_bytes(a[at..at + 8].try_into().unwrap());
        assert_eq!(m.addr_words(), [word(&src, 0), word(&src, 8), word(&dst, 0), word(&dst, 8)]);
    }
}
