//! An independent host-side frame parser: what the kernel's parser (`sg-ebpf/src/parse.rs`)
//! must produce for a frame, written a second time from its contract and the fixture
//! table (`tests/tests/parser_fixtures.rs`), not from its code, so that the
//! `kernel_parser` fuzz target compares two implementations rather than one with itself.
//!
//! It works on a plain byte slice with explicit lengths: every check is "are these bytes
//! there", with the same order of checks the contract documents (a header is truncated
//! before its fields are judged). The one limit it shares with the kernel on purpose is
//! [`MAX_HEADER_START`]: the contract makes a header that starts beyond that offset count
//! as truncated.

use sg_common::{PacketMeta, family, fragment, ip_proto, malformed};

/// The furthest offset a header may start at (the contract's `MAX_HEADER_OFFSET`).
pub const MAX_HEADER_START: usize = 1024;
/// IPv6 extension headers walked before the chain counts as too long.
pub const MAX_EXTENSIONS: usize = 6;

/// What the kernel reports for a frame: the parsed fields, or the malformed reason (the
/// fields of a malformed frame are discarded, so there are none to compare).
pub type Parsed = Result<PacketMeta, u8>;

/// The bytes `at .. at + n` of `frame`, if the header starting at `at` is inside the frame
/// and may start there.
fn bytes(frame: &[u8], at: usize, n: usize) -> Option<&[u8]> {
    if at > MAX_HEADER_START {
        return None;
    }
    frame.get(at..at.checked_add(n)?)
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// Parses `frame` as both hooks see it (a linear buffer whose length is the wire length).
pub fn parse(frame: &[u8]) -> Parsed {
    let mut meta = PacketMeta::default();
    let eth = bytes(frame, 0, 14).ok_or(malformed::TRUNCATED_ETHERNET)?;
    let mut ethertype = u16_at(eth, 12);
    let mut at = 14;
    // 802.1Q (0x8100) or 802.1ad (0x88a8): a 4-byte tag (TCI, then the next type). Two
    // are accepted; a third is too deep.
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        if meta.vlan_depth == 2 {
            return Err(malformed::VLAN_TOO_DEEP);
        }
        let tag = bytes(frame, at, 4).ok_or(malformed::TRUNCATED_VLAN)?;
        ethertype = u16_at(tag, 2);
        at += 4;
        meta.vlan_depth += 1;
    }
    match ethertype {
        0x0800 => ipv4(frame, at, &mut meta)?,
        0x86dd => ipv6(frame, at, &mut meta)?,
        // Not IP: passed as it is, with the tags counted.
        _ => {}
    }
    Ok(meta)
}

fn ipv4(frame: &[u8], at: usize, meta: &mut PacketMeta) -> Result<(), u8> {
    let h = bytes(frame, at, 20).ok_or(malformed::TRUNCATED_IPV4)?;
    let version = h[0] >> 4;
    let ihl_bytes = usize::from(h[0] & 15) * 4;
    if version != 4 {
        return Err(malformed::IPV4_BAD_VERSION);
    }
    if ihl_bytes < 20 {
        return Err(malformed::IPV4_BAD_IHL);
    }
    // The options must be there too.
    bytes(frame, at, ihl_bytes).ok_or(malformed::TRUNCATED_IPV4)?;
    let total = usize::from(u16_at(h, 2));
    if total < ihl_bytes || at + total > frame.len() {
        return Err(malformed::IPV4_BAD_TOTAL_LENGTH);
    }
    meta.family = family::IPV4;
    meta.protocol = h[9];
    meta.src[..4].copy_from_slice(&h[12..16]);
    meta.dst[..4].copy_from_slice(&h[16..20]);
    let more = h[6] & 0x20 != 0;
    let offset_units = u16_at(h, 6) & 0x1fff;
    if more || offset_units != 0 {
        meta.frag_id = u32::from(u16_at(h, 4));
        if offset_units != 0 {
            // A later fragment has no transport header.
            meta.fragment = fragment::LATER;
            return Ok(());
        }
        meta.fragment = fragment::FIRST;
    }
    transport(frame, at + ihl_bytes, meta)
}

fn ipv6(frame: &[u8], at: usize, meta: &mut PacketMeta) -> Result<(), u8> {
    let h = bytes(frame, at, 40).ok_or(malformed::TRUNCATED_IPV6)?;
    if h[0] >> 4 != 6 {
        return Err(malformed::IPV6_BAD_VERSION);
    }
    let payload = usize::from(u16_at(h, 4));
    if at + 40 + payload > frame.len() {
        return Err(malformed::IPV6_BAD_PAYLOAD_LENGTH);
    }
    meta.family = family::IPV6;
    meta.src.copy_from_slice(&h[8..24]);
    meta.dst.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut at = at + 40;
    let mut walked = 0;
    // Hop-by-hop 0, routing 43, fragment 44, AH 51, destination options 60.
    while matches!(next, 0 | 43 | 44 | 51 | 60) {
        if walked == MAX_EXTENSIONS {
            return Err(malformed::IPV6_EXTENSION_CHAIN_TOO_LONG);
        }
        // Every extension header is at least 8 bytes long.
        let e = bytes(frame, at, 8).ok_or(malformed::TRUNCATED_IPV6_EXTENSION)?;
        let len = match next {
            44 => 8,
            // AH counts 4-byte units, less 2 (RFC 4302).
            51 => (usize::from(e[1]) + 2) * 4,
            // The others count 8-byte units beyond the first (RFC 8200).
            _ => (usize::from(e[1]) + 1) * 8,
        };
        bytes(frame, at, len).ok_or(malformed::TRUNCATED_IPV6_EXTENSION)?;
        let kind = next;
        next = e[0];
        at += len;
        walked += 1;
        meta.ext_headers += 1;
        if kind == 44 {
            meta.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
            // The offset is the upper 13 bits of bytes 2-3.
            if u16_at(e, 2) >> 3 != 0 {
                meta.fragment = fragment::LATER;
                meta.protocol = next;
                return Ok(());
            }
            meta.fragment = fragment::FIRST;
        }
    }
    meta.protocol = next;
    transport(frame, at, meta)
}

fn transport(frame: &[u8], at: usize, meta: &mut PacketMeta) -> Result<(), u8> {
    meta.l4_offset = at as u16;
    match meta.protocol {
        ip_proto::TCP => {
            // Ports, sequence numbers, data offset and flags: 14 bytes before judging.
            let t = bytes(frame, at, 14).ok_or(malformed::TRUNCATED_TCP)?;
            let header = usize::from(t[12] >> 4) * 4;
            if header < 20 {
                return Err(malformed::TCP_BAD_DATA_OFFSET);
            }
            bytes(frame, at, header).ok_or(malformed::TRUNCATED_TCP)?;
            meta.src_port = u16_at(t, 0);
            meta.dst_port = u16_at(t, 2);
            meta.tcp_flags = t[13];
            meta.tcp_seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            meta.tcp_ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
        }
        ip_proto::UDP => {
            let u = bytes(frame, at, 8).ok_or(malformed::TRUNCATED_UDP)?;
            meta.src_port = u16_at(u, 0);
            meta.dst_port = u16_at(u, 2);
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            let i = bytes(frame, at, 8).ok_or(malformed::TRUNCATED_ICMP)?;
            meta.icmp_type = i[0];
            meta.icmp_code = i[1];
            // Echo request/reply carry an identifier: 8/0 for ICMP, 128/129 for ICMPv6.
            let echo = match meta.protocol {
                ip_proto::ICMP => matches!(i[0], 0 | 8),
                _ => matches!(i[0], 128 | 129),
            };
            if echo {
                meta.icmp_id = u16_at(i, 4);
            }
        }
        ip_proto::GRE => {
            let g = bytes(frame, at, 4).ok_or(malformed::TRUNCATED_GRE)?;
            meta.gre_proto = u16_at(g, 2);
        }
        _ => {}
    }
    Ok(())
}

/// True when BPF_PROG_TEST_RUN for TC refuses `frame` (EINVAL): its Ethernet type is
/// IPv4 or IPv6 but it holds less than a whole IP header after the 14-byte Ethernet
/// header (the kernel's test-run pulls the network header for those types).
pub fn tc_refuses(frame: &[u8]) -> bool {
    let Some(eth) = frame.get(..14) else { return false };
    let rest = frame.len() - 14;
    match u16_at(eth, 12) {
        0x0800 => rest < 20,
        0x86dd => rest < 40,
        _ => false,
    }
}
