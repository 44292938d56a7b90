//! Classification (docs/rule-model.md#evaluation-order, steps 4 to 7) by linear
//! bit-vector search over the maps the userspace compiler fills (see `sg_common::maps`
//! for the scheme).
//!
//! Two to four lookups (peer address: a multibit table, for IPv6 over sorted intervals
//! and ending in a short search of a few of them; destination port: a two-level table
//! for TCP and UDP, the port trie otherwise; and, when the best candidate needs them, local address and
//! source port) each return a vector of rules; the lowest bit of their AND is the
//! deciding rule, found by ANDing the summaries first so only chunks non-zero in every
//! vector are read, each from the shared chunk pool. The default pseudo-rule matches
//! every packet, so a lookup that finds nothing means broken maps: the packet is dropped.

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, lpm_trie::Key},
};
use sg_common::{
    ADDR_KEY_FIXED_BITS, AddrKey, CHUNK_WORDS, Decision, IfaceConfig, MAX_BANDS, MAX_CHUNKS, MAX_IFACE_VERSIONS,
    MAX_IFINDEX, MAX_RULESETS, PEER_V6_BOUNDS, PEER_V6_COUNT_SHIFT, PEER_V6_FIRST_MASK, PEER_V6_LEAF_STEPS,
    PORT_BLOCK_REF, PORT_KEY_FIXED_BITS, PacketMeta, PeerV6Bound, PortBlock, PortKey, RULE_NEEDS_LOCAL,
    RULE_NEEDS_SOURCE_PORT, RULESET_HAS_LOCAL, RULESET_HAS_SOURCE_PORT, RuleChunk, RuleInfo, RuleVector, RulesetHeader,
    band_header, config_version, family, field, icmp_key, ip_proto, lowest_bit, port_table, step, v6_words, verdict,
};

// Sizes here are placeholders: userspace sets them from the rule set before loading.
#[map(name = "SG_IFACE_INDEX")]
static SG_IFACE_INDEX: Array<u32> = Array::with_max_entries(MAX_IFINDEX, 0);
#[map(name = "SG_IFACE_CONFIGS")]
static SG_IFACE_CONFIGS: Array<IfaceConfig> = Array::with_max_entries(MAX_IFACE_VERSIONS, 0);
#[map(name = "SG_RULESETS")]
static SG_RULESETS: Array<RulesetHeader> = Array::with_max_entries(MAX_RULESETS * MAX_BANDS, 0);
#[map(name = "SG_ADDR_TRIE")]
static SG_ADDR_TRIE: LpmTrie<AddrKey, u32> = LpmTrie::with_max_entries(1024, 0);
#[map(name = "SG_PORT_TRIE")]
static SG_PORT_TRIE: LpmTrie<PortKey, u32> = LpmTrie::with_max_entries(1024, 0);
#[map(name = "SG_PORT_TABLES")]
static SG_PORT_TABLES: Array<PortBlock> = Array::with_max_entries(64, 0);
#[map(name = "SG_PORT_BLOCKS")]
static SG_PORT_BLOCKS: Array<PortBlock> = Array::with_max_entries(64, 0);
#[map(name = "SG_VECTORS")]
static SG_VECTORS: Array<RuleVector> = Array::with_max_entries(64, 0);
#[map(name = "SG_CHUNKS")]
static SG_CHUNKS: Array<RuleChunk> = Array::with_max_entries(64, 0);
#[map(name = "SG_PEER_V6")]
static SG_PEER_V6: Array<PeerV6Bound> = Array::with_max_entries(64, 0);
#[map(name = "SG_RULE_INFO")]
static SG_RULE_INFO: Array<RuleInfo> = Array::with_max_entries(1024, 0);

/// The configuration id of the interface a packet crosses (0: not enforced).
#[inline(always)]
pub fn interface_id(ifindex: u32) -> u32 {
    SG_IFACE_INDEX.get(ifindex).copied().unwrap_or(0)
}

/// The configuration a non-zero id names: which rule sets apply to the interface.
#[inline(always)]
pub fn interface(id: u32) -> Option<IfaceConfig> {
    SG_IFACE_CONFIGS.get(config_version(id)).copied()
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

/// The vector of `port` in one of a rule set's port tables (`sg_common::PortBlock`).
#[inline(always)]
fn table_vector(header: &RulesetHeader, table: u32, port: u16) -> Option<&'static RuleVector> {
    let first = SG_PORT_TABLES.get(header.port_tables + table)?.entries[usize::from(port >> 8)];
    let index = if first & PORT_BLOCK_REF == 0 {
        first
    } else {
        SG_PORT_BLOCKS.get(first & !PORT_BLOCK_REF)?.entries[usize::from(port & 0xff)]
    };
    SG_VECTORS.get(index)
}

/// The vector of an IPv4 peer address, from the rule set's multibit table (an address
/// byte a level, at most four lookups).
#[inline(always)]
fn peer_v4_vector(header: &RulesetHeader, addr: &[u8; 16]) -> Option<&'static RuleVector> {
    let mut entry = SG_PORT_TABLES.get(header.port_tables + port_table::PEER_V4)?.entries[usize::from(addr[0])];
    for &byte in &addr[1..4] {
        if entry & PORT_BLOCK_REF == 0 {
            break;
        }
        entry = SG_PORT_BLOCKS.get(entry & !PORT_BLOCK_REF)?.entries[usize::from(byte)];
    }
    if entry & PORT_BLOCK_REF != 0 {
        return None;
    }
    SG_VECTORS.get(entry)
}

/// The vector of an IPv6 peer address: the last of the rule set's sorted interval bounds
/// at or below it, found through the rule set's IPv6 peer table (`sg_common::PEER_V6_BOUNDS`):
/// a block per address byte while the entry is one, then a vector, or a leaf of a few
/// bounds that `PEER_V6_LEAF_STEPS` halvings narrow to one.
#[inline(always)]
fn peer_v6_vector(header: &RulesetHeader, addr: &[u8; 16]) -> Option<&'static RuleVector> {
    let mut entry = header.peer_v6_root;
    for &byte in addr {
        if entry & PORT_BLOCK_REF == 0 {
            break;
        }
        entry = SG_PORT_BLOCKS.get(entry & !PORT_BLOCK_REF)?.entries[usize::from(byte)];
    }
    if entry & PORT_BLOCK_REF != 0 {
        return None;
    }
    if entry & PEER_V6_BOUNDS == 0 {
        return SG_VECTORS.get(entry);
    }
    let [hi, lo] = v6_words(addr);
    let mut first = header.peer_v6 + (entry & PEER_V6_FIRST_MASK);
    let mut len = (entry & !PEER_V6_BOUNDS) >> PEER_V6_COUNT_SHIFT;
    for _ in 0..PEER_V6_LEAF_STEPS {
        if len <= 1 {
            break;
        }
        let half = len / 2;
        let bound = SG_PEER_V6.get(first + half)?;
        if bound.start[0] < hi || (bound.start[0] == hi && bound.start[1] <= lo) {
            first += half;
        }
        len -= half;
    }
    if len > 1 {
        return None;
    }
    SG_VECTORS.get(SG_PEER_V6.get(first)?.vector)
}

/// The destination-port vector: TCP and UDP from their tables, ICMP and ICMPv6 from
/// theirs by the message's key (type and code, `sg_common::icmp_key`), other protocols
/// (no ports) from the port trie.
#[inline(always)]
fn destination_vector(band: u32, header: &RulesetHeader, meta: &PacketMeta) -> Option<&'static RuleVector> {
    let (table, key) = match meta.protocol {
        ip_proto::TCP => (port_table::TCP_DESTINATION, meta.dst_port),
        ip_proto::UDP => (port_table::UDP_DESTINATION, meta.dst_port),
        ip_proto::ICMP => (port_table::ICMP, icmp_key(meta.icmp_type, meta.icmp_code)),
        ip_proto::ICMPV6 => (port_table::ICMPV6, icmp_key(meta.icmp_type, meta.icmp_code)),
        _ => return port_vector(band, field::DESTINATION_PORT, meta.protocol, meta.dst_port),
    };
    table_vector(header, table, key)
}

/// The vectors one round of the bit search ANDs.
trait Vectors {
    const N: usize;
    fn vector(&self, i: usize) -> &RuleVector;
}

impl<const N: usize> Vectors for [&RuleVector; N] {
    const N: usize = N;
    #[inline(always)]
    fn vector(&self, i: usize) -> &RuleVector {
        self[i % N]
    }
}

/// The lowest bit set in all the vectors, if any (`None` also when a chunk is missing:
/// broken maps).
///
/// Chunk by chunk, only those non-zero in every vector (the AND of the summaries): each
/// vector's chunk is looked up once, then its eight words are ANDed without further
/// lookups, so the verifier walks at most `MAX_CHUNKS` rounds of straight-line code.
#[inline(always)]
fn first_common_bit<V: Vectors>(vectors: &V) -> Option<u32> {
    let mut summary = u64::MAX;
    for i in 0..V::N {
        summary &= vectors.vector(i).summary;
    }
    // The first 32 chunks by their summary bits. The chunk number is masked, not only
    // compared: LLVM spills it between a bounds check and the index, and verifiers
    // before 6.x do not carry a check over to the spilled copy, but they keep a mask's
    // bound. `black_box` keeps LLVM from dropping the mask as redundant.
    let mut candidates = summary & u64::from(u32::MAX);
    for _ in 0..32 {
        if candidates == 0 {
            break;
        }
        let c = (core::hint::black_box(lowest_bit(candidates)) & 31) as usize;
        if let Some(bit) = common_bit_in_chunk(vectors, c)? {
            return Some(bit);
        }
        candidates &= candidates - 1;
    }
    // The rest (one chunk: the pseudo-rules past 16,384 rules) by constant numbers.
    for c in 32..MAX_CHUNKS {
        if summary >> c & 1 != 0
            && let Some(bit) = common_bit_in_chunk(vectors, c)?
        {
            return Some(bit);
        }
    }
    None
}

/// The lowest bit set in chunk `c` (below `MAX_CHUNKS`) of every vector: `Some(None)`
/// when there is none, `None` when a chunk is missing.
#[inline(always)]
fn common_bit_in_chunk<V: Vectors>(vectors: &V, c: usize) -> Option<Option<u32>> {
    let chunk = |i: usize| SG_CHUNKS.get(*vectors.vector(i).chunks.get(c)?);
    // Unused places (fewer than four vectors) repeat the first chunk.
    let first = chunk(0)?;
    let chunks: [&RuleChunk; 4] = [
        first,
        if V::N > 1 { chunk(1)? } else { first },
        if V::N > 2 { chunk(2)? } else { first },
        if V::N > 3 { chunk(3)? } else { first },
    ];
    for j in 0..CHUNK_WORDS {
        let mut word = u64::MAX;
        for chunk in &chunks[..V::N] {
            word &= chunk.words[j];
        }
        if word != 0 {
            return Some(Some(((c * CHUNK_WORDS + j) * 64) as u32 + lowest_bit(word)));
        }
    }
    Some(None)
}

const BROKEN_MAPS: Decision = Decision::new(verdict::DROP, step::DEFAULT);

/// Decides a parsed IP packet with the rule set in `slot`; `ingress` tells which address
/// is the peer. Called for new flows and for re-checks.
///
/// A rule set of more bits than one vector holds is split into bands (`MAX_BANDS`), each
/// searched like a rule set of its own: one that ends in its next-band pseudo-rule sends
/// the search on to the next band's header.
///
/// The peer address and the destination port are always looked up. The local address
/// and the source port are looked up only when the best candidate so far is a rule that
/// constrains them (`RuleInfo::fields`): a field's vector only removes bits, so a
/// candidate that does not constrain it stays the answer once it is looked up.
///
/// Two calls side by side rather than one inside the other: a round of the bit search
/// holds its vectors across map lookups, and nested frames would pass the 512 bytes of
/// stack older kernels allow.
#[inline(always)]
pub fn classify(slot: u32, meta: &PacketMeta, ingress: bool) -> Decision {
    for b in 0..MAX_BANDS {
        let band = band_header(slot, b);
        let decision = match first_round(band, meta, ingress) {
            FirstRound::Decided(decision) => decision,
            FirstRound::Needs(fields) => constrained(band, meta, ingress, fields),
        };
        if decision.step != step::NEXT_BAND {
            return decision;
        }
    }
    BROKEN_MAPS
}

/// What the peer-address and destination-port round found.
enum FirstRound {
    Decided(Decision),
    /// The best candidate constrains these optional fields (`RULE_NEEDS_*`).
    Needs(u8),
}

/// The vectors of the two fields every packet is looked up by: peer address and
/// destination port.
#[inline(always)]
fn peer_and_port(
    band: u32,
    header: &RulesetHeader,
    meta: &PacketMeta,
    ingress: bool,
) -> Option<(&'static RuleVector, &'static RuleVector)> {
    // Rules name the packet's destination port in both directions; only the addresses
    // swap roles.
    let peer = if ingress { &meta.src } else { &meta.dst };
    // Both peer tables are multibit; the IPv6 one ends in a short search of its bounds.
    let peer_vector =
        if meta.family == family::IPV4 { peer_v4_vector(header, peer) } else { peer_v6_vector(header, peer) }?;
    Some((peer_vector, destination_vector(band, header, meta)?))
}

#[inline(never)]
fn first_round(band: u32, meta: &PacketMeta, ingress: bool) -> FirstRound {
    let broken = FirstRound::Decided(BROKEN_MAPS);
    let Some(header) = SG_RULESETS.get(band) else { return broken };
    let Some((peer_vector, dport_vector)) = peer_and_port(band, header, meta, ingress) else { return broken };
    let Some(bit) = first_common_bit(&[peer_vector, dport_vector]) else { return broken };
    let Some(info) = rule_info(header, bit) else { return broken };
    if info.fields == 0 { FirstRound::Decided(decision(info)) } else { FirstRound::Needs(info.fields) }
}

/// The rule `bit` of a rule set.
#[inline(always)]
fn rule_info(header: &RulesetHeader, bit: u32) -> Option<&'static RuleInfo> {
    if bit >= header.rule_count {
        return None;
    }
    SG_RULE_INFO.get(header.rule_base + bit)
}

#[inline(always)]
fn decision(info: &RuleInfo) -> Decision {
    Decision { rule_id: info.rule_id, verdict: info.verdict, step: info.step, reason: 0, flags: 0 }
}

/// [`classify`] once the best candidate constrains the local address or the source
/// port (`fields`): looks them up as candidates need them. Each round loads at least
/// one more field, so two rounds always decide.
#[inline(never)]
fn constrained(band: u32, meta: &PacketMeta, ingress: bool, mut fields: u8) -> Decision {
    let Some(header) = SG_RULESETS.get(band) else { return BROKEN_MAPS };
    let Some((peer_vector, dport_vector)) = peer_and_port(band, header, meta, ingress) else { return BROKEN_MAPS };
    // Fields not looked up (yet) are stood in for by the peer vector (x & x == x).
    let mut local_vector = peer_vector;
    let mut source_vector = peer_vector;
    let local = if ingress { &meta.dst } else { &meta.src };
    let mut loaded = 0u8;
    for _ in 0..2 {
        let missing = fields & !loaded;
        if missing & RULE_NEEDS_LOCAL != 0 {
            if header.flags & RULESET_HAS_LOCAL == 0 {
                return BROKEN_MAPS;
            }
            match addr_vector(band, field::LOCAL, meta, local) {
                Some(v) => local_vector = v,
                None => return BROKEN_MAPS,
            }
        }
        if missing & RULE_NEEDS_SOURCE_PORT != 0 {
            if header.flags & RULESET_HAS_SOURCE_PORT == 0 {
                return BROKEN_MAPS;
            }
            match table_vector(header, port_table::SOURCE, meta.src_port) {
                Some(v) => source_vector = v,
                None => return BROKEN_MAPS,
            }
        }
        loaded |= missing;
        let Some(bit) = first_common_bit(&[peer_vector, dport_vector, local_vector, source_vector]) else {
            return BROKEN_MAPS;
        };
        let Some(info) = rule_info(header, bit) else { return BROKEN_MAPS };
        if info.fields & !loaded == 0 {
            return decision(info);
        }
        fields = info.fields;
    }
    BROKEN_MAPS
}
