//! Builders for raw frames fed to the programs through BPF_PROG_TEST_RUN.
//!
//! Length fields (IHL, total length, payload length, UDP length) are filled in from what
//! is built; tests that need a lie in a header patch the bytes afterwards. Checksums are
//! left zero: the programs do not verify them.

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Ethernet header with the given VLAN tag protocol ids (outermost first), then payload.
pub fn ether(ethertype: u16, vlan_tpids: &[u16], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * vlan_tpids.len() + payload.len());
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    for (i, tpid) in vlan_tpids.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes()); // VLAN id 100, 101
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 fragment fields: flags and offset (in 8-byte units) as on the wire.
#[derive(Clone, Copy, Debug, Default)]
pub struct Frag4 {
    pub more: bool,
    pub offset_units: u16,
    pub id: u16,
}

/// An IPv4 header (with `options`, padded to 4 bytes) followed by `payload`.
pub fn ipv4(protocol: u8, src: [u8; 4], dst: [u8; 4], options: &[u8], frag: Frag4, payload: &[u8]) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let header_len = 20 + opts.len();
    let total = (header_len + payload.len()) as u16;
    let mut h = vec![0u8; 20];
    h[0] = 0x40 | (header_len / 4) as u8;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&frag.id.to_be_bytes());
    let flags_offset = (u16::from(frag.more) << 13) | (frag.offset_units & 0x1fff);
    h[6..8].copy_from_slice(&flags_offset.to_be_bytes());
    h[8] = 64;
    h[9] = protocol;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    h.extend_from_slice(&opts);
    h.extend_from_slice(payload);
    h
}

/// An IPv6 header followed by `payload` (extension headers included).
pub fn ipv6(next_header: u8, src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = next_header;
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// A hop-by-hop, routing or destination-options header of `8 * (units + 1)` bytes.
pub fn ipv6_ext(next_header: u8, units: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 8 * (usize::from(units) + 1)];
    h[0] = next_header;
    h[1] = units;
    h.extend_from_slice(rest);
    h
}

/// An IPv6 fragment header.
pub fn ipv6_frag(next_header: u8, offset_units: u16, more: bool, id: u32, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0] = next_header;
    h[2..4].copy_from_slice(&((offset_units << 3) | u16::from(more)).to_be_bytes());
    h[4..8].copy_from_slice(&id.to_be_bytes());
    h.extend_from_slice(rest);
    h
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A 20-byte TCP header (data offset 5) followed by `payload`.
pub fn tcp(src_port: u16, dst_port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&src_port.to_be_bytes());
    h[2..4].copy_from_slice(&dst_port.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&64240u16.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// Writes the sequence and acknowledgement numbers into the TCP header at the start of
/// `header` ([`tcp`] leaves both 0).
pub fn set_tcp_numbers(header: &mut [u8], seq: u32, ack: u32) {
    header[4..8].copy_from_slice(&seq.to_be_bytes());
    header[8..12].copy_from_slice(&ack.to_be_bytes());
}

/// A UDP header followed by `payload`.
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&src_port.to_be_bytes());
    h[2..4].copy_from_slice(&dst_port.to_be_bytes());
    h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An ICMP or ICMPv6 header: type, code, and the 4-byte rest (identifier, sequence).
pub fn icmp(kind: u8, code: u8, identifier: u16, sequence: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![kind, code, 0, 0];
    h.extend_from_slice(&identifier.to_be_bytes());
    h.extend_from_slice(&sequence.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// A basic GRE header (no optional fields) carrying `protocol`.
pub fn gre(protocol: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0, 0];
    h.extend_from_slice(&protocol.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// A 16-byte IPv6 address from its text form.
pub fn v6(text: &str) -> [u8; 16] {
    text.parse::<std::net::Ipv6Addr>().expect("valid IPv6 address").octets()
}

/// A 4-byte IPv4 address from its text form.
pub fn v4(text: &str) -> [u8; 4] {
    text.parse::<std::net::Ipv4Addr>().expect("valid IPv4 address").octets()
}

/// Pads a frame to the 60-byte Ethernet minimum, as a NIC would.
pub fn padded(mut frame: Vec<u8>) -> Vec<u8> {
    if frame.len() < 60 {
        frame.resize(60, 0);
    }
    frame
}

/// The one's-complement sum of `data` as 16-bit words, folded.
fn ones_complement_sum(mut sum: u32, data: &[u8]) -> u32 {
    for chunk in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// An untagged IPv4 frame with its IP header checksum and its TCP or UDP checksum filled
/// in, for frames sent on a real link (a bridge filtering with `br_netfilter` drops IPv4
/// with a bad header checksum; a host's stack drops a segment with a bad checksum).
pub fn with_checksums(mut frame: Vec<u8>) -> Vec<u8> {
    assert_eq!(&frame[12..14], &ETHERTYPE_IPV4.to_be_bytes(), "an untagged IPv4 frame");
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let (ip, l4) = (14, 14 + ihl);
    frame[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    let sum = !(ones_complement_sum(0, &frame[ip..l4]) as u16);
    frame[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
    let total = usize::from(u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]));
    let protocol = frame[ip + 9];
    let at = match protocol {
        6 => 16,
        17 => 6,
        _ => return frame,
    };
    let segment_end = (ip + total).min(frame.len());
    frame[l4 + at..l4 + at + 2].copy_from_slice(&[0, 0]);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&frame[ip + 12..ip + 20]);
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&((segment_end - l4) as u16).to_be_bytes());
    let sum = !(ones_complement_sum(ones_complement_sum(0, &pseudo), &frame[l4..segment_end]) as u16);
    frame[l4 + at..l4 + at + 2].copy_from_slice(&sum.to_be_bytes());
    frame
}
