//! Session hints: a bitmap that says which flows may have a session, so a packet of a
//! flow that certainly has none skips the session-table lookup.
//!
//! The table is a hash of 262,144 buckets (4 MiB): for a packet of a new flow, the
//! lookup is a cache miss that finds nothing, and a flood of new flows (random sources,
//! the throughput benchmark's traffic) pays it on every packet. One byte a flow hash,
//! 65,536 of them (64 KiB), mostly stays in the CPU's caches.
//!
//! A flag is set to 1 before its session is inserted, by the kernel or by userspace
//! through an `mmap` of the map: plain byte stores of one value, so writers never undo
//! each other (a bitmap would need atomic read-modify-writes, which the BPF target's
//! `core` does not offer). A clear flag proves there is no session. Flags are never
//! cleared in place: deleted sessions leave stale flags, which only cost a lookup. To
//! shed them, userspace rebuilds: there are two flag arrays, every session is noted in
//! both, and the kernel reads the `active` one. A rebuild clears the other, waits until
//! any program that noted a session before the clear has inserted it, notes every
//! session in the table into it, and makes it the active one.

use crate::flow_cache::{key_hash, packet_hash};
use crate::{PacketMeta, SessionKey};

/// Flags in each array (a power of two).
pub const HINT_FLAGS: u32 = 65_536;
const _: () = assert!(HINT_FLAGS.is_power_of_two());

/// The one value of the hint map.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SessionHints {
    /// Which array the kernel reads: 0 or 1 (only the low bit counts).
    pub active: u64,
    pub flags: [[u8; HINT_FLAGS as usize]; 2],
}

/// The hint flag of a flow hash: bits apart from the ones that pick the cache slot.
#[inline(always)]
pub fn bit_of_hash(hash: u64) -> u32 {
    (hash >> 8) as u32 & (HINT_FLAGS - 1)
}

/// A packet's hint flag.
#[inline(always)]
pub fn packet_bit(ifindex: u32, meta: &PacketMeta) -> u32 {
    bit_of_hash(packet_hash(ifindex, meta))
}

/// A session's hint flag (the same as its packets', either direction).
pub fn key_bit(key: &SessionKey) -> u32 {
    bit_of_hash(key_hash(key))
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields only, no padding (8 + 2 * HINT_FLAGS bytes).
unsafe impl aya::Pod for SessionHints {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{family, ip_proto};

    #[test]
    fn a_session_and_both_directions_of_its_flow_share_the_bit() {
        let mut m = PacketMeta {
            family: family::IPV4,
            protocol: ip_proto::UDP,
            src_port: 5353,
            dst_port: 53,
            ..Default::default()
        };
        m.src[..4].copy_from_slice(&[198, 18, 0, 1]);
        m.dst[..4].copy_from_slice(&[198, 18, 0, 2]);
        let back = PacketMeta { src: m.dst, dst: m.src, src_port: m.dst_port, dst_port: m.src_port, ..m };
        let (key, _) = SessionKey::of(7, &m);
        assert_eq!(packet_bit(7, &m), packet_bit(7, &back));
        assert_eq!(packet_bit(7, &m), key_bit(&key));
        assert!(packet_bit(7, &m) < HINT_FLAGS);
        assert_eq!(size_of::<SessionHints>(), 8 + 2 * HINT_FLAGS as usize);
    }

    #[test]
    fn bits_spread_flows() {
        let mut used = std::collections::HashSet::new();
        for i in 0..20_000u32 {
            let mut m = PacketMeta { family: family::IPV4, protocol: ip_proto::UDP, ..Default::default() };
            m.src[..4].copy_from_slice(&[198, 19, (i >> 8) as u8, i as u8]);
            m.dst[..4].copy_from_slice(&[198, 18, 0, 2]);
            m.src_port = 40000 + (i % 256) as u16;
            m.dst_port = 9000;
            used.insert(packet_bit(1, &m));
        }
        // 20,000 flows over 65,536 flags: about 17,500 distinct ones if spread evenly.
        assert!(used.len() > 16_500, "{} distinct bits", used.len());
    }
}
