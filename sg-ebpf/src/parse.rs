//! Frame parser: Ethernet, up to two VLAN tags, IPv4 (options honoured), IPv6 with a
//! bounded extension-header chain, and the TCP, UDP, ICMP, ICMPv6 and GRE headers.
//!
//! Contract:
//! - Every byte is read through [`Frame::read`], the one bounds-checked cursor: it clamps
//!   the offset to [`MAX_HEADER_OFFSET`] (so the verifier can bound it) and checks
//!   `offset + size_of::<T>() <=` the bytes the packet pointers cover before
//!   dereferencing. Nothing else touches packet memory. The IP length fields are checked
//!   against the packet's length on the wire ([`Frame::len`]), which on TC exceeds what
//!   the pointers cover when the skb is not linear. Reads are at least two bytes wide: LLVM rewrites a one-byte check
//!   `p + 1 > end` into `p >= end`, from which the verifier learns no range.
//! - Header fields are network byte order in the frame. [`Frame::be16`] and the
//!   `from_be_bytes` conversions return host-order integers; addresses are copied as bytes, still in network order.
//! - [`parse`] fills a zeroed `PacketMeta` and returns `Ok(())` for a well-formed IP
//!   packet and for any non-IP frame (`meta.family == family::NONE`), and `Err(reason)`
//!   with a [`malformed`] code for a frame that claims to be IP but is cut short or
//!   inconsistent; the caller then discards what was filled in, so a malformed frame is
//!   never half-classified.
//! - Results go through `&mut` rather than by value: each copy of a `PacketMeta` costs
//!   BPF stack, which is 512 bytes for the whole call chain.
//! - Non-first fragments carry no transport header: their ports stay 0 and
//!   `meta.fragment == fragment::LATER`.

use core::mem::size_of;

use sg_common::{PacketMeta, family, fragment, ip_proto, malformed};

/// The furthest offset a header may start at. Bounds every variable offset for the
/// verifier; a header chain reaching beyond it counts as truncated.
pub const MAX_HEADER_OFFSET: usize = 1024;
/// Covers every offset up to MAX_HEADER_OFFSET (see [`quoted`]).
const L4_OFFSET_MASK: usize = 2 * MAX_HEADER_OFFSET - 1;
/// IPv6 extension headers walked before the chain counts as too long.
pub const MAX_IPV6_EXTENSIONS: usize = 6;

const ETH_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTIONS: u8 = 60;

/// A frame between two packet pointers, and the length of the packet on the wire: on
/// TC only the first bytes are pulled into the linear area the pointers cover (the rest
/// stays in fragments), so the IP length fields are checked against the wire length and
/// headers are read from the pointers.
pub struct Frame {
    start: usize,
    end: usize,
    wire_len: usize,
}

impl Frame {
    /// A frame whose pointers cover the whole packet (XDP, whose buffer is linear).
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end, wire_len: end - start }
    }

    /// A frame whose pointers cover the first bytes of a `wire_len`-byte packet (a TC
    /// skb; `wire_len` is `skb->len`, never less than what the pointers cover).
    #[inline(always)]
    pub fn with_wire_len(start: usize, end: usize, wire_len: usize) -> Self {
        let covered = end - start;
        Self { start, end, wire_len: if wire_len < covered { covered } else { wire_len } }
    }

    /// The packet's length on the wire (what the IP length fields must fit in).
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.wire_len
    }

    /// Reads a `T` at `offset`, or `None` when it does not fit in the frame.
    #[inline(always)]
    pub fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        if offset > MAX_HEADER_OFFSET {
            return None;
        }
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: `at .. at + size_of::<T>()` lies inside the frame (checked above).
        Some(unsafe { core::ptr::read_unaligned(at as *const T) })
    }

    #[inline(always)]
    pub fn be16(&self, offset: usize) -> Option<u16> {
        self.read::<[u8; 2]>(offset).map(u16::from_be_bytes)
    }

    /// True when `len` bytes starting at `offset` are inside the frame.
    #[inline(always)]
    pub fn has(&self, offset: usize, len: usize) -> bool {
        offset <= MAX_HEADER_OFFSET && self.start + offset + len <= self.end
    }
}

/// Parses `frame`; see the module contract. Not inlined, so its stack frame is gone
/// before the decision's is needed.
#[inline(never)]
pub fn parse(frame: &Frame, meta: &mut PacketMeta) -> Result<(), u8> {
    let mut ethertype = frame.be16(12).ok_or(malformed::TRUNCATED_ETHERNET)?;
    let mut offset = ETH_HEADER_LEN;
    // Up to two tags: 802.1Q, or 802.1ad outer + 802.1Q inner.
    for _ in 0..2 {
        if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
            ethertype = frame.be16(offset + 2).ok_or(malformed::TRUNCATED_VLAN)?;
            offset += 4;
            meta.vlan_depth += 1;
        }
    }
    match ethertype {
        ETHERTYPE_VLAN | ETHERTYPE_QINQ => Err(malformed::VLAN_TOO_DEEP),
        ETHERTYPE_IPV4 => parse_ipv4(frame, offset, meta),
        ETHERTYPE_IPV6 => parse_ipv6(frame, offset, meta),
        _ => Ok(()),
    }
}

#[inline(always)]
fn parse_ipv4(frame: &Frame, offset: usize, meta: &mut PacketMeta) -> Result<(), u8> {
    let header: [u8; 20] = frame.read(offset).ok_or(malformed::TRUNCATED_IPV4)?;
    if header[0] >> 4 != 4 {
        return Err(malformed::IPV4_BAD_VERSION);
    }
    let header_len = usize::from(header[0] & 0x0f) * 4;
    if header_len < 20 {
        return Err(malformed::IPV4_BAD_IHL);
    }
    if !frame.has(offset, header_len) {
        return Err(malformed::TRUNCATED_IPV4);
    }
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if total_len < header_len || offset + total_len > frame.len() {
        return Err(malformed::IPV4_BAD_TOTAL_LENGTH);
    }
    meta.family = family::IPV4;
    meta.protocol = header[9];
    meta.src[..4].copy_from_slice(&header[12..16]);
    meta.dst[..4].copy_from_slice(&header[16..20]);
    let flags_fragment = u16::from_be_bytes([header[6], header[7]]);
    let more_fragments = flags_fragment & 0x2000 != 0;
    let fragment_offset = flags_fragment & 0x1fff;
    if fragment_offset != 0 || more_fragments {
        meta.frag_id = u32::from(u16::from_be_bytes([header[4], header[5]]));
        meta.fragment = if fragment_offset != 0 { fragment::LATER } else { fragment::FIRST };
    }
    if meta.fragment == fragment::LATER {
        return Ok(());
    }
    parse_transport(frame, offset + header_len, meta)
}

#[inline(always)]
fn parse_ipv6(frame: &Frame, offset: usize, meta: &mut PacketMeta) -> Result<(), u8> {
    let first: [u8; 8] = frame.read(offset).ok_or(malformed::TRUNCATED_IPV6)?;
    let src: [u8; 16] = frame.read(offset + 8).ok_or(malformed::TRUNCATED_IPV6)?;
    let dst: [u8; 16] = frame.read(offset + 24).ok_or(malformed::TRUNCATED_IPV6)?;
    if first[0] >> 4 != 6 {
        return Err(malformed::IPV6_BAD_VERSION);
    }
    let payload_len = usize::from(u16::from_be_bytes([first[4], first[5]]));
    if offset + 40 + payload_len > frame.len() {
        return Err(malformed::IPV6_BAD_PAYLOAD_LENGTH);
    }
    meta.family = family::IPV6;
    meta.src = src;
    meta.dst = dst;

    let mut next_header = first[6];
    let mut offset = offset + 40;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        if !is_extension(next_header) {
            break;
        }
        // Every extension header starts with (next header, length); the fragment header
        // is fixed at 8 bytes, so read all of it at once.
        let head: [u8; 8] = frame.read(offset).ok_or(malformed::TRUNCATED_IPV6_EXTENSION)?;
        let header_len = match next_header {
            IPV6_FRAGMENT => 8,
            IPV6_AUTH => (usize::from(head[1]) + 2) * 4,
            _ => (usize::from(head[1]) + 1) * 8,
        };
        if !frame.has(offset, header_len) {
            return Err(malformed::TRUNCATED_IPV6_EXTENSION);
        }
        if next_header == IPV6_FRAGMENT {
            let offset_flags = u16::from_be_bytes([head[2], head[3]]);
            meta.frag_id = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            let later = offset_flags >> 3 != 0;
            meta.fragment = if later { fragment::LATER } else { fragment::FIRST };
        }
        meta.ext_headers += 1;
        next_header = head[0];
        offset += header_len;
        if meta.fragment == fragment::LATER {
            meta.protocol = next_header;
            return Ok(());
        }
    }
    if is_extension(next_header) {
        return Err(malformed::IPV6_EXTENSION_CHAIN_TOO_LONG);
    }
    meta.protocol = next_header;
    parse_transport(frame, offset, meta)
}

/// The IPv6 extension headers the parser walks (RFC 8200 section 4, plus AH).
#[inline(always)]
fn is_extension(next_header: u8) -> bool {
    matches!(next_header, IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AUTH | IPV6_DEST_OPTIONS)
}

/// Reads the transport header of a whole datagram or a first fragment.
#[inline(always)]
fn parse_transport(frame: &Frame, offset: usize, meta: &mut PacketMeta) -> Result<(), u8> {
    meta.l4_offset = offset as u16;
    match meta.protocol {
        ip_proto::TCP => {
            let header: [u8; 14] = frame.read(offset).ok_or(malformed::TRUNCATED_TCP)?;
            let data_offset = usize::from(header[12] >> 4) * 4;
            if data_offset < 20 {
                return Err(malformed::TCP_BAD_DATA_OFFSET);
            }
            if !frame.has(offset, data_offset) {
                return Err(malformed::TRUNCATED_TCP);
            }
            meta.src_port = u16::from_be_bytes([header[0], header[1]]);
            meta.dst_port = u16::from_be_bytes([header[2], header[3]]);
            meta.tcp_flags = header[13];
            meta.tcp_seq = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
            meta.tcp_ack = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        }
        ip_proto::UDP => {
            let header: [u8; 8] = frame.read(offset).ok_or(malformed::TRUNCATED_UDP)?;
            meta.src_port = u16::from_be_bytes([header[0], header[1]]);
            meta.dst_port = u16::from_be_bytes([header[2], header[3]]);
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            let header: [u8; 8] = frame.read(offset).ok_or(malformed::TRUNCATED_ICMP)?;
            meta.icmp_type = header[0];
            meta.icmp_code = header[1];
            let echo = if meta.protocol == ip_proto::ICMP {
                header[0] == 0 || header[0] == 8
            } else {
                header[0] == 128 || header[0] == 129
            };
            if echo {
                meta.icmp_id = u16::from_be_bytes([header[4], header[5]]);
            }
        }
        ip_proto::GRE => {
            let header: [u8; 4] = frame.read(offset).ok_or(malformed::TRUNCATED_GRE)?;
            meta.gre_proto = u16::from_be_bytes([header[2], header[3]]);
        }
        _ => {}
    }
    Ok(())
}

/// Parses the packet an ICMP or ICMPv6 error quotes (after the 8-byte ICMP header): its IP
/// header (IPv4 options honoured; IPv6 taken as 40 bytes, its next header as the
/// protocol) and the first 8 bytes of its transport header, which RFC 792 and 4443
/// guarantee: TCP/UDP ports, or the identifier of a quoted echo. `None` when the quote is
/// cut short or not IP of the outer packet's family.
#[inline(never)]
pub fn quoted(frame: &Frame, outer: &PacketMeta, inner: &mut PacketMeta) -> Option<()> {
    // The outer ICMP header was read at `l4_offset`, so it is at most MAX_HEADER_OFFSET and
    // the mask changes nothing. It bounds the offset for verifiers before 6.10, which do
    // not carry the bound `read` checks on the sum back to `l4_offset` (LLVM checks
    // `l4_offset > MAX_HEADER_OFFSET - 8` and adds 8 in another register: 6.1 rejected it
    // with "R3 offset is outside of the packet").
    let offset = (usize::from(outer.l4_offset) & L4_OFFSET_MASK) + 8;
    inner.family = outer.family;
    let transport = if outer.family == family::IPV4 {
        let header: [u8; 20] = frame.read(offset)?;
        let header_len = usize::from(header[0] & 0x0f) * 4;
        if header[0] >> 4 != 4 || header_len < 20 {
            return None;
        }
        inner.protocol = header[9];
        inner.src[..4].copy_from_slice(&header[12..16]);
        inner.dst[..4].copy_from_slice(&header[16..20]);
        offset + header_len
    } else {
        let header: [u8; 40] = frame.read(offset)?;
        if header[0] >> 4 != 6 {
            return None;
        }
        inner.protocol = header[6];
        inner.src.copy_from_slice(&header[8..24]);
        inner.dst.copy_from_slice(&header[24..40]);
        offset + 40
    };
    let head: [u8; 8] = frame.read(transport)?;
    match inner.protocol {
        ip_proto::TCP | ip_proto::UDP => {
            inner.src_port = u16::from_be_bytes([head[0], head[1]]);
            inner.dst_port = u16::from_be_bytes([head[2], head[3]]);
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            inner.icmp_type = head[0];
            inner.icmp_id = u16::from_be_bytes([head[4], head[5]]);
        }
        _ => {}
    }
    Some(())
}
