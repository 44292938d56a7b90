//! Classification (SPEC section 3, steps 4 to 7) by linear bit-vector search over the
//! maps the userspace compiler fills (see `sg_common::maps` for the scheme).
//!
//! Two to four LPM lookups (peer address, protocol and destination port, and when the
//! rule set uses them, local address and source port) each return a vector of rules; the
//! lowest bit of their AND is the deciding rule, found by ANDing the summary words first
//! so only words non-zero in every vector are read. The default pseudo-rule matches
//! every packet, so a lookup that finds nothing means broken maps: the packet is dropped.

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, lpm_trie::Key},
};
use sg_common::{
    ADDR_KEY_FIXED_BITS, AddrKey, Decision, IfaceConfig, MAX_IFACE_VERSIONS, MAX_IFINDEX, MAX_RULESETS, MAX_WORDS,
    PORT_KEY_FIXED_BITS, PacketMeta, PortKey, RULESET_HAS_LOCAL, RULESET_HAS_SOURCE_PORT, RuleInfo, RuleVector,
    RulesetHeader, SUMMARY_WORDS, family, field, lowest_bit, step, verdict,
};

// Sizes here are placeholders: userspace sets them from the rule set before loading.
#[map(name = "SG_IFACE_INDEX")]
static SG_IFACE_INDEX: Array<u32> = Array::with_max_entries(MAX_IFINDEX, 0);
#[map(name = "SG_IFACE_CONFIGS")]
static SG_IFACE_CONFIGS: Array<IfaceConfig> = Array::with_max_entries(MAX_IFACE_VERSIONS, 0);
#[map(name = "SG_RULESETS")]
static SG_RULESETS: Array<RulesetHeader> = Array::with_max_entries(MAX_RULESETS, 0);
#[map(name = "SG_ADDR_TRIE")]
static SG_ADDR_TRIE: LpmTrie<AddrKey, u32> = LpmTrie::with_max_entries(1024, 0);
#[map(name = "SG_PORT_TRIE")]
static SG_PORT_TRIE: LpmTrie<PortKey, u32> = LpmTrie::with_max_entries(1024, 0);
#[map(name = "SG_VECTORS")]
static SG_VECTORS: Array<RuleVector> = Array::with_max_entries(64, 0);
#[map(name = "SG_RULE_INFO")]
static SG_RULE_INFO: Array<RuleInfo> = Array::with_max_entries(1024, 0);

/// Which rule sets apply to the interface a packet crosses, if any.
#[inline(always)]
pub fn interface(ifindex: u32) -> Option<IfaceConfig> {
    let version = *SG_IFACE_INDEX.get(ifindex)?;
    if version == 0 {
        return None;
    }
    SG_IFACE_CONFIGS.get(version).copied()
}

#[inline(always)]
fn addr_vector(ruleset: u32, which: u8, meta: &PacketMeta, addr: &[u8; 16]) -> Option<&'static RuleVector> {
    let bits = if meta.family == family::IPV4 { 32 } else { 128 };
    let key = Key::new(
        ADDR_KEY_FIXED_BITS + bits,
        AddrKey { ruleset: ruleset.to_be_bytes(), field: which, family: meta.family, _pad: [0; 2], addr: *addr },
    );
    let index = *SG_ADDR_TRIE.get(&key)?;
    SG_VECTORS.get(index)
}

#[inline(always)]
fn port_vector(ruleset: u32, which: u8, protocol: u8, port: u16) -> Option<&'static RuleVector> {
    let key = Key::new(
        PORT_KEY_FIXED_BITS + 24,
        PortKey { ruleset: ruleset.to_be_bytes(), field: which, protocol, port: port.to_be_bytes() },
    );
    let index = *SG_PORT_TRIE.get(&key)?;
    SG_VECTORS.get(index)
}

/// The lowest bit set in all four vectors, if any.
#[inline(always)]
fn first_common_bit(a: &RuleVector, b: &RuleVector, c: &RuleVector, d: &RuleVector) -> Option<u32> {
    for s in 0..SUMMARY_WORDS {
        let mut candidates = a.summary[s] & b.summary[s] & c.summary[s] & d.summary[s];
        for _ in 0..64 {
            if candidates == 0 {
                break;
            }
            let w = s * 64 + lowest_bit(candidates) as usize;
            if w >= MAX_WORDS {
                return None;
            }
            let word = a.words[w] & b.words[w] & c.words[w] & d.words[w];
            if word != 0 {
                return Some(w as u32 * 64 + lowest_bit(word));
            }
            candidates &= candidates - 1;
        }
    }
    None
}

const BROKEN_MAPS: Decision = Decision::new(verdict::DROP, step::DEFAULT);

/// Decides a parsed IP packet with the rule set in `slot`; `ingress` tells which address
/// is the peer. Not inlined: called for new flows and for re-checks.
#[inline(never)]
pub fn classify(slot: u32, meta: &PacketMeta, ingress: bool) -> Decision {
    let Some(header) = SG_RULESETS.get(slot) else { return BROKEN_MAPS };
    // Rules name the packet's destination port in both directions; only the addresses
    // swap roles.
    let (peer, local) = if ingress { (&meta.src, &meta.dst) } else { (&meta.dst, &meta.src) };
    let Some(peer_vector) = addr_vector(slot, field::PEER, meta, peer) else { return BROKEN_MAPS };
    let Some(dport_vector) = port_vector(slot, field::DESTINATION_PORT, meta.protocol, meta.dst_port) else {
        return BROKEN_MAPS;
    };
    // Fields no rule uses are not looked up: the peer vector stands in (x & x == x).
    let local_vector = if header.flags & RULESET_HAS_LOCAL != 0 {
        match addr_vector(slot, field::LOCAL, meta, local) {
            Some(v) => v,
            None => return BROKEN_MAPS,
        }
    } else {
        peer_vector
    };
    let source_vector = if header.flags & RULESET_HAS_SOURCE_PORT != 0 {
        match port_vector(slot, field::SOURCE_PORT, 0, meta.src_port) {
            Some(v) => v,
            None => return BROKEN_MAPS,
        }
    } else {
        peer_vector
    };
    let Some(bit) = first_common_bit(peer_vector, dport_vector, local_vector, source_vector) else {
        return BROKEN_MAPS;
    };
    if bit >= header.rule_count {
        return BROKEN_MAPS;
    }
    let Some(info) = SG_RULE_INFO.get(header.rule_base + bit) else { return BROKEN_MAPS };
    Decision { rule_id: info.rule_id, verdict: info.verdict, step: info.step, reason: 0, flags: 0 }
}
