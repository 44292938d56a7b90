//! Names of the BPF maps and programs, and the `#[repr(C)]` key and value types of the
//! classification maps, shared so both sides agree byte for byte.
//!
//! Classification is a linear bit-vector search (bpf-iptables' LBVS): the rules of one
//! interface and direction (a *rule set*) are sorted by rank and numbered; each field
//! lookup (peer address, destination port and protocol, optional local address and
//! source port) returns the vector of rules matching that field (from an LPM trie; for
//! IPv4 peers and TCP/UDP ports from direct tables of 256-entry blocks; for IPv6 peers
//! from the same blocks over sorted intervals, [`PEER_V6_BOUNDS`]); the lowest bit set in
//! the AND of the vectors is the deciding rule. Per-packet work does not grow with the
//! number of rules, only with the number of 64-rule words that must be ANDed before a
//! match is found, and a summary level skips chunks of words that are zero in any vector.
//!
//! A vector is stored as a summary and a row of chunk numbers: its words, eight at a
//! time, live in a shared pool of distinct [`RuleChunk`]s. Rules that match broadly
//! (any address, any port, the pseudo-rules) put the same bits in most vectors, so the
//! 19,637 vectors of a realistic 16,384-rule set hold only ~17,600 distinct chunks: a
//! tenth of the memory of storing every word of every vector.

/// Program names (the function names in `sg-ebpf`).
pub mod program {
    pub const INGRESS_XDP: &str = "sg_ingress";
    pub const EGRESS_TC: &str = "sg_egress";
    /// Parse-and-count baselines for benchmarks (not loaded by sgctl).
    pub const BASELINE_XDP: &str = "sg_baseline_xdp";
    pub const BASELINE_TC: &str = "sg_baseline_tc";
    /// The baselines plus finding the flow's cache entry, for benchmarks (not loaded by
    /// sgctl).
    pub const PROBE_XDP: &str = "sg_probe_xdp";
    pub const PROBE_TC: &str = "sg_probe_tc";
    /// The baselines plus the interface lookup and the classification, for benchmarks
    /// (not loaded by sgctl).
    pub const CLASSIFY_XDP: &str = "sg_classify_xdp";
    pub const CLASSIFY_TC: &str = "sg_classify_tc";
}

/// Map names (the static names in `sg-ebpf`).
pub mod map {
    /// Per-CPU array of `u64` counters, laid out by [`crate::stats`].
    pub const STATS: &str = "SG_STATS";
    /// Per-CPU array with one [`crate::TraceRecord`] per hook.
    pub const TRACE: &str = "SG_TRACE";
    /// Array: ifindex -> configuration id (`u32`, 0: not enforced; [`crate::config_version`]
    /// gives its slot in [`IFACE_CONFIGS`]).
    pub const IFACE_INDEX: &str = "SG_IFACE_INDEX";
    /// Array: version -> [`crate::IfaceConfig`], written before its version is published.
    pub const IFACE_CONFIGS: &str = "SG_IFACE_CONFIGS";
    /// Array: rule-set slot -> [`crate::RulesetHeader`].
    pub const RULESETS: &str = "SG_RULESETS";
    /// LPM trie: [`crate::AddrKey`] -> vector index (`u32`).
    pub const ADDR_TRIE: &str = "SG_ADDR_TRIE";
    /// LPM trie: [`crate::PortKey`] -> vector index (`u32`).
    pub const PORT_TRIE: &str = "SG_PORT_TRIE";
    /// Array: rule set's `port_tables` + table -> first-level [`crate::PortBlock`].
    pub const PORT_TABLES: &str = "SG_PORT_TABLES";
    /// Array: block -> second-level [`crate::PortBlock`].
    pub const PORT_BLOCKS: &str = "SG_PORT_BLOCKS";
    /// Array: vector index -> [`crate::RuleVector`].
    pub const VECTORS: &str = "SG_VECTORS";
    /// Array: chunk number -> [`crate::RuleChunk`], the words vectors point to.
    pub const CHUNKS: &str = "SG_CHUNKS";
    /// Array: bound -> [`crate::PeerV6Bound`], each rule set's IPv6 peer intervals.
    pub const PEER_V6: &str = "SG_PEER_V6";
    /// Array: rule-set base + bit -> [`crate::RuleInfo`].
    pub const RULE_INFO: &str = "SG_RULE_INFO";
    /// LRU hash: [`crate::SessionKey`] -> [`crate::Session`]: the assured sessions
    /// (replied to; for TCP established), sized by `max_sessions`.
    pub const SESSIONS: &str = "SG_SESSIONS";
    /// LRU hash, the same shape: sessions not assured yet (a SYN, an unanswered
    /// datagram), a quarter of the size, so a flood of them evicts only its own kind.
    pub const OPENING_SESSIONS: &str = "SG_OPENING";
    /// LRU hash: [`crate::FragmentKey`] -> [`crate::FragmentVerdict`].
    pub const FRAGMENTS: &str = "SG_FRAGMENTS";
    /// Array with one [`crate::Timeouts`].
    pub const TIMEOUTS: &str = "SG_TIMEOUTS";
    /// Per-CPU array: slot -> [`crate::FlowCacheSlot`] (`sg_common::flow_cache`).
    pub const FLOW_CACHE: &str = "SG_FLOW_CACHE";
    /// Array (mmapable) with one [`crate::session_hints::SessionHints`].
    pub const SESSION_HINTS: &str = "SG_SESSION_HINTS";
    /// Array with one `u32`: the flow cache's epoch.
    pub const CACHE_EPOCH: &str = "SG_CACHE_EPOCH";
    /// Per-CPU array: rule handle -> [`crate::RuleCounters`].
    pub const RULE_STATS: &str = "SG_RULE_STATS";
    /// Ring buffer of [`crate::Event`]s.
    pub const EVENTS: &str = "SG_EVENTS";
    /// Array with one [`crate::EventConfig`].
    pub const EVENT_CONFIG: &str = "SG_EVENT_CONFIG";
    /// Per-CPU array: (interface slot, hook, kind) -> [`crate::TokenBucket`].
    pub const EVENT_BUCKETS: &str = "SG_EVENT_BUCKETS";
}

/// Names of the read-only globals userspace sets at load time.
pub mod global {
    /// `u8`: 1 records every packet into the trace map (tests, live trace).
    pub const TRACE_ENABLED: &str = "SG_TRACE_ENABLED";
    /// `u64`: the length of a jiffy in ns (the flow cache's clock, `sg_common::flow_cache`).
    pub const NS_PER_JIFFY: &str = "SG_NS_PER_JIFFY";
    /// `u8`: 1 when the kernel has `bpf_ktime_get_coarse_ns` (5.11+), else 0 and the
    /// sessions' clock is `bpf_ktime_get_ns` (`sg-ebpf/src/clock.rs`).
    pub const COARSE_CLOCK: &str = "SG_COARSE_CLOCK";
}

/// Interfaces with an ifindex below this can be enforced on (the ifindex indexes an
/// array: an inlined lookup instead of a hash-map helper call on every packet).
pub const MAX_IFINDEX: u32 = 65_536;
/// Interface configurations that can exist at once (live ones and ones being replaced).
pub const MAX_IFACE_VERSIONS: u32 = 1024;

/// `SG_IFACE_INDEX` holds a configuration id: the version (its slot in
/// `SG_IFACE_CONFIGS`) in the low bits and a serial above, so every apply publishes an id
/// never seen recently (versions are reused) and the flow cache can check an entry
/// against the id alone, one array lookup. 0: not enforced.
#[inline(always)]
pub fn config_version(id: u32) -> u32 {
    id % MAX_IFACE_VERSIONS
}
const _: () = assert!(MAX_IFACE_VERSIONS.is_power_of_two());

/// Rule-set slots (index 0 means "none"), so several interfaces and a new rule set
/// beside each live one fit.
pub const MAX_RULESETS: u32 = 256;
/// Bits (rules, including the pseudo-rules for intra-group, default and the next band)
/// one vector, and so one band, holds.
pub const MAX_RULE_BITS: usize = MAX_WORDS * 64;
/// 64-bit words of one vector.
pub const MAX_WORDS: usize = 260;
/// Words of one [`RuleChunk`]: 64 bytes, one cache line.
pub const CHUNK_WORDS: usize = 8;
/// Chunks of one vector.
pub const MAX_CHUNKS: usize = MAX_WORDS.div_ceil(CHUNK_WORDS);
/// User rules one interface and direction may hold.
pub const MAX_USER_RULES: usize = 65_536;
/// Bands one rule set may have. A rule set whose bits do not fit one vector is split, in
/// rank order, into bands of at most [`MAX_RULE_BITS`] bits, each with its own tables and
/// vectors as if it were a rule set of its own; every band but the last ends in a
/// pseudo-rule that matches everything and sends the search on to the next band
/// ([`crate::step::NEXT_BAND`]). Band `b` of the rule set in slot `s` has its header at
/// [`band_header`]`(s, b)` and its trie entries under that number. One band, the common
/// case, costs nothing more than before; each further band costs another lookup round
/// for the packets no earlier band decides.
pub const MAX_BANDS: u32 = 4;

/// Where band `band` of the rule set in `slot` has its [`RulesetHeader`] in `SG_RULESETS`,
/// and the `ruleset` of its trie keys.
#[inline(always)]
pub const fn band_header(slot: u32, band: u32) -> u32 {
    slot + band * MAX_RULESETS
}

// The bands hold every user rule plus the three pseudo-rules, each band but the last
// one bit short for its next-band pseudo-rule; the summary covers every chunk.
const _: () = assert!(MAX_BANDS as usize * (MAX_RULE_BITS - 1) >= MAX_USER_RULES + 3);
const _: () = assert!(MAX_CHUNKS <= 64, "a vector's summary is one word, a bit a chunk");

/// `IfaceConfig::flags`: compute and count verdicts but pass every packet.
pub const IFACE_AUDIT: u32 = 1;

/// Per interface: which rule sets are live. A new configuration is written under a new
/// version, then the interface's 4-byte version is switched in one store, so a packet
/// sees either the old pair of rule sets or the new one, never a mixture.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceConfig {
    /// Rule-set slot for ingress (0: none, everything passes).
    pub ingress: u32,
    /// Rule-set slot for egress (0: none).
    pub egress: u32,
    /// Bumped on every apply (sessions use it to re-check after a change).
    pub generation: u32,
    /// [`IFACE_AUDIT`].
    pub flags: u32,
    /// The interface's counter slot in `SG_STATS` (`crate::stats::block`).
    pub counters: u32,
    pub _pad: u32,
}

/// `RulesetHeader::flags`: some rule narrows the local address.
pub const RULESET_HAS_LOCAL: u32 = 1;
/// `RulesetHeader::flags`: some rule has a source-port range.
pub const RULESET_HAS_SOURCE_PORT: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RulesetHeader {
    /// First slot of this rule set's entries in the rule-info array.
    pub rule_base: u32,
    /// Bits used (user rules plus pseudo-rules).
    pub rule_count: u32,
    /// [`RULESET_HAS_LOCAL`] | [`RULESET_HAS_SOURCE_PORT`].
    pub flags: u32,
    /// First of this rule set's [`PORT_TABLES`] first-level port tables.
    pub port_tables: u32,
    /// First of this rule set's [`PeerV6Bound`]s in `SG_PEER_V6`.
    pub peer_v6: u32,
    /// How many (at least one: the bound at `::`).
    pub peer_v6_count: u32,
    /// Where an IPv6 peer's lookup starts ([`PEER_V6_BOUNDS`]): a vector, a leaf, or
    /// [`PORT_BLOCK_REF`] | the block of the address's first byte.
    pub peer_v6_root: u32,
    pub _pad: u32,
}

/// Where an interval of IPv6 peer addresses starts: addresses from `start` up to the
/// next bound's start get `vector`. A rule set's bounds are sorted, the first at `::`;
/// its IPv6 peer table ([`PEER_V6_BOUNDS`]) narrows an address down to a few of them,
/// where the LPM trie walks a node per branching bit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerV6Bound {
    /// The address as two host-order words, high first, so words compare as the address.
    pub start: [u64; 2],
    /// Vector index.
    pub vector: u32,
    pub _pad: u32,
}

/// Bounds one rule set may have (the index bits of a [`PEER_V6_BOUNDS`] entry).
pub const MAX_PEER_V6_BOUNDS: u32 = 1 << 20;

/// A rule set's IPv6 peer table: the IPv4 peer table's multibit trie of 256-entry
/// [`PortBlock`]s, an address byte a level, over the sorted bounds instead of prefixes,
/// so it can stop early: where the range of an entry holds at most
/// [`PEER_V6_LEAF_BOUNDS`] bounds (the one covering its first address and those starting
/// inside), the entry is a leaf, [`PEER_V6_BOUNDS`] | count << [`PEER_V6_COUNT_SHIFT`] |
/// the first of them (counted from the rule set's first), searched in at most
/// [`PEER_V6_LEAF_STEPS`] halvings; where one bound covers it all, the entry is its
/// vector. Blocks exist only where more bounds crowd one range, so a rule set of
/// thousands of IPv6 hosts and prefixes needs a few hundred, and an address costs a
/// lookup per byte down to where its range thins out (seven for a /56) where a binary
/// search over every bound costs a halving per doubling of them, each twice the work.
pub const PEER_V6_BOUNDS: u32 = 1 << 30;
pub const PEER_V6_COUNT_SHIFT: u32 = 24;
/// The bits of a leaf entry that hold its first bound.
pub const PEER_V6_FIRST_MASK: u32 = (1 << PEER_V6_COUNT_SHIFT) - 1;
/// Most bounds a leaf holds; more in one entry's range make a block.
pub const PEER_V6_LEAF_BOUNDS: u32 = 8;
/// Halvings that narrow a leaf's bounds to one.
pub const PEER_V6_LEAF_STEPS: u32 = 3;
const _: () = assert!(1 << PEER_V6_LEAF_STEPS >= PEER_V6_LEAF_BOUNDS);
const _: () = assert!(PEER_V6_LEAF_BOUNDS < 1 << (30 - PEER_V6_COUNT_SHIFT));
const _: () = assert!(MAX_PEER_V6_BOUNDS - 1 <= PEER_V6_FIRST_MASK);

/// The two words [`PeerV6Bound::start`] holds for an address in network order.
#[inline(always)]
pub fn v6_words(addr: &[u8; 16]) -> [u64; 2] {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&addr[..8]);
    lo.copy_from_slice(&addr[8..]);
    [u64::from_be_bytes(hi), u64::from_be_bytes(lo)]
}

/// Port tables of one rule set, in `SG_PORT_TABLES` from `RulesetHeader::port_tables`:
/// TCP destination ports, UDP destination ports, source ports, and the ICMP and ICMPv6
/// keys (`crate::icmp_key`: type and code as one 16-bit "port"). A two-level direct
/// table replaces the LPM trie for these fields: at 16,384 rules the port trie's lookup
/// cost ~150 ns of a ~350 ns packet, the table's two array lookups a few ns. Other
/// protocols (one entry each, no ports) stay in the port trie.
pub const PORT_TABLES: u32 = 6;
pub mod port_table {
    pub const TCP_DESTINATION: u32 = 0;
    pub const UDP_DESTINATION: u32 = 1;
    pub const SOURCE: u32 = 2;
    /// Not a port table: the root of the IPv4 peer-address table, a multibit trie of
    /// 256-entry blocks indexed by the address's bytes in turn (at most four lookups,
    /// where the LPM trie walks a node per branching bit). Its entries and those of
    /// the blocks below are vector indices or [`super::PORT_BLOCK_REF`] | a block.
    pub const PEER_V4: u32 = 3;
    /// ICMP messages by key (`crate::icmp_key`), so rules naming a type and code match
    /// exactly those messages.
    pub const ICMP: u32 = 4;
    /// ICMPv6 messages by key.
    pub const ICMPV6: u32 = 5;
}

/// A 256-entry block of a port table. First level (indexed by `port >> 8`): a vector
/// index, or [`PORT_BLOCK_REF`] | a second-level block (indexed by `port & 0xff`) in
/// `SG_PORT_BLOCKS`, whose entries are vector indices. The IPv4 peer table
/// ([`port_table::PEER_V4`]) uses the same blocks, one level an address byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortBlock {
    pub entries: [u32; 256],
}

impl Default for PortBlock {
    fn default() -> Self {
        Self { entries: [0; 256] }
    }
}

/// Block entry flag: the rest is a block number in `SG_PORT_BLOCKS`.
pub const PORT_BLOCK_REF: u32 = 1 << 31;

/// Which field an LPM entry serves.
pub mod field {
    pub const PEER: u8 = 0;
    pub const LOCAL: u8 = 1;
    pub const DESTINATION_PORT: u8 = 2;
    pub const SOURCE_PORT: u8 = 3;
}

/// Bits of [`AddrKey`] before the address: rule set (32), field (8), family (8), pad (16).
pub const ADDR_KEY_FIXED_BITS: u32 = 64;

/// LPM-trie key data for addresses: every fixed field is matched in full, then
/// `prefix_len - ADDR_KEY_FIXED_BITS` bits of the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrKey {
    /// Rule-set slot, big-endian so the trie compares it as bytes.
    pub ruleset: [u8; 4],
    /// [`field::PEER`] or [`field::LOCAL`].
    pub field: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 2],
    /// Network order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
}

/// Bits of [`PortKey`] before the protocol: rule set (32) and field (8). An entry with
/// exactly this prefix matches every protocol (rules of protocol `all`).
pub const PORT_KEY_FIXED_BITS: u32 = 40;

/// LPM-trie key data for ports: rule set, field, then protocol (8 bits) and port (16
/// bits, big-endian), so a prefix can stop after the field (any protocol), after the
/// protocol (any port), or inside the port (a range piece).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortKey {
    pub ruleset: [u8; 4],
    /// [`field::DESTINATION_PORT`] or [`field::SOURCE_PORT`].
    pub field: u8,
    /// IP protocol (0 for the source-port field, which ignores it).
    pub protocol: u8,
    pub port: [u8; 2],
}

/// What the lowest matching bit decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleInfo {
    /// The user rule's id (step `RULE`), else 0.
    pub rule_id: u32,
    /// [`crate::verdict`].
    pub verdict: u8,
    /// [`crate::step`]: `INTRA_GROUP_ACCEPT`, `RULE`, `INTRA_GROUP_DROP` or `DEFAULT`.
    pub step: u8,
    /// `RULE_NEEDS_*`: the optional fields this rule constrains. The kernel looks those
    /// fields up only when such a rule is the best candidate, so a packet whose decider
    /// constrains neither costs two LPM lookups, not four.
    pub fields: u8,
    pub _pad: u8,
}

/// `RuleInfo::fields`: the rule names a local address (`destination` on ingress).
pub const RULE_NEEDS_LOCAL: u8 = 1;
/// `RuleInfo::fields`: the rule names source ports.
pub const RULE_NEEDS_SOURCE_PORT: u8 = 2;

/// The set of rules of one rule set that match one field value. Bit `b` of word `w`
/// stands for rule `64 * w + b` in rank order; word `w` is word `w % CHUNK_WORDS` of
/// chunk `chunks[w / CHUNK_WORDS]` in `SG_CHUNKS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleVector {
    /// The chunks holding the words, in order (those past the rule set's words: any).
    pub chunks: [u32; MAX_CHUNKS],
    pub _pad: u32,
    /// Bit `c` set when chunk `c` has a non-zero word: the bit search reads only the
    /// chunks non-zero in every vector.
    pub summary: u64,
}

impl Default for RuleVector {
    fn default() -> Self {
        Self { chunks: [0; MAX_CHUNKS], _pad: 0, summary: 0 }
    }
}

/// [`CHUNK_WORDS`] consecutive words of a vector, stored once for every vector that has
/// them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleChunk {
    pub words: [u64; CHUNK_WORDS],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C), integer fields only, no implicit padding (asserted in tests).
    unsafe impl aya::Pod for super::IfaceConfig {}
    unsafe impl aya::Pod for super::RulesetHeader {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::RuleInfo {}
    unsafe impl aya::Pod for super::RuleVector {}
    unsafe impl aya::Pod for super::RuleChunk {}
    unsafe impl aya::Pod for super::PeerV6Bound {}
    unsafe impl aya::Pod for super::PortBlock {}
}

/// Index of the lowest set bit of a non-zero word: the number of ones below it, counted
/// with the branch-free SWAR popcount. Written out because the BPF target has no
/// count-trailing-zeros instruction, and branch-free because every branch inside the
/// bit-search loop would multiply the states the verifier explores.
#[inline(always)]
pub fn lowest_bit(word: u64) -> u32 {
    let below = (word & word.wrapping_neg()).wrapping_sub(1);
    let x = below - ((below >> 1) & 0x5555_5555_5555_5555);
    let x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    let x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    (x.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn map_types_have_no_implicit_padding() {
        assert_eq!(size_of::<IfaceConfig>(), 24);
        assert_eq!(size_of::<RulesetHeader>(), 32);
        assert_eq!(size_of::<PeerV6Bound>(), 24);
        assert_eq!(size_of::<AddrKey>(), 4 + 1 + 1 + 2 + 16);
        assert_eq!(size_of::<PortKey>(), 8);
        assert_eq!(size_of::<RuleInfo>(), 8);
        assert_eq!(size_of::<RuleVector>(), 4 * (MAX_CHUNKS + 1) + 8);
        assert_eq!(size_of::<RuleChunk>(), 64);
        assert_eq!(ADDR_KEY_FIXED_BITS as usize, 8 * 8);
        assert_eq!(PORT_KEY_FIXED_BITS as usize, 5 * 8);
    }

    #[test]
    fn lowest_bit_matches_trailing_zeros() {
        for shift in 0..64 {
            let w = 1u64 << shift;
            assert_eq!(lowest_bit(w), shift);
            assert_eq!(lowest_bit(w | (w << 1) | u64::MAX << 63), w.trailing_zeros());
        }
        assert_eq!(lowest_bit(0b1011_0000), 4);
    }
}
