//! Compiles the pooled, ordered rules of one interface and direction into the contents
//! of the classification maps (see `sg_common::maps` for the scheme).
//!
//! Every rule becomes one bit, in rank order. Intra-group connectivity, intra-group
//! isolation and the group type's default become three pseudo-rules (first, after the
//! user rules, and last), so the kernel has a single mechanism: the lowest bit of the AND
//! of the field vectors decides, and the default pseudo-rule matches everything, so some
//! bit always does.
//!
//! For each field the compiler lists the distinct prefixes (addresses) or elementary
//! intervals (ports) that rules mention, and gives each one the vector of rules matching
//! every value under it: an LPM lookup then returns the complete answer for that field.
//! Equal vectors are stored once, and so are equal chunks of them (`sg_common::RuleChunk`):
//! a vector is a row of chunk numbers.

use std::{collections::BTreeSet, hash::BuildHasher as _, net::IpAddr};

use ipnet::IpNet;
// Vectors are kilobytes long and there are tens of thousands: a fast non-cryptographic
// hash keeps interning them cheap (the inputs are our own, not an attacker's).
use hashbrown::HashTable;
use rustc_hash::{FxBuildHasher, FxHashMap as HashMap};
use sg_common::{
    CHUNK_WORDS, MAX_PEER_V6_BOUNDS, MAX_USER_RULES, MAX_WORDS, PORT_BLOCK_REF, PeerV6Bound, PortBlock,
    RULE_NEEDS_LOCAL, RULE_NEEDS_SOURCE_PORT, RULESET_HAS_LOCAL, RULESET_HAS_SOURCE_PORT, RuleChunk, RuleInfo,
    RuleVector, field, ip_proto, port_table, step, verdict,
};

use super::{
    config::{Action, Config, Direction, GroupKind, InterfaceBinding, Peer, PortRange},
    order::{default_action, pooled_rules},
};

/// A rule set the maps cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("{iface}: {count} {direction:?} rules, more than the {MAX_USER_RULES} one interface and direction holds")]
    TooManyRules { iface: String, direction: Direction, count: usize },
    #[error("{iface}: {count} rules do not fit a vector")]
    TooWide { iface: String, count: usize },
    #[error("{iface}: {count} IPv6 peer intervals, more than the {MAX_PEER_V6_BOUNDS} one rule set holds")]
    TooManyPeerV6 { iface: String, count: usize },
}

/// An address-trie entry: `field` value within `net` maps to `vector`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrEntry {
    pub field: u8,
    pub net: IpNet,
    pub vector: u32,
}

/// A port-trie entry of the destination-port field: `protocol: None` is the any-protocol
/// entry; otherwise the protocol, any port (TCP and UDP ports are in the port tables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEntry {
    pub protocol: Option<u8>,
    pub vector: u32,
}

/// One compiled rule set, ready to be written into the maps at any slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// What bit `i` decides.
    pub rules: Vec<RuleInfo>,
    /// `RULESET_HAS_LOCAL` | `RULESET_HAS_SOURCE_PORT`.
    pub flags: u32,
    /// Distinct vectors; entries refer to them by index. Their chunk numbers index
    /// `chunks`.
    pub vectors: Vec<RuleVector>,
    /// Distinct chunks of the vectors' words.
    pub chunks: Vec<RuleChunk>,
    /// The IPv6 peer intervals, sorted, the first at `::` (vector indices into `vectors`).
    pub peer_v6: Vec<PeerV6Bound>,
    /// Where the IPv6 peer table (`sg_common::PEER_V6_BOUNDS`), which narrows a peer to a
    /// few of `peer_v6`, starts: a vector, a leaf, or `PORT_BLOCK_REF` | a block of
    /// `port_blocks`.
    pub peer_v6_root: u32,
    pub addr_entries: Vec<AddrEntry>,
    /// Port-trie entries: the any-protocol entry and one per other protocol (no ports).
    pub port_entries: Vec<PortEntry>,
    /// First-level port tables (`sg_common::PORT_TABLES` of them, in `port_table` order):
    /// vector indices, or `PORT_BLOCK_REF` | an index into `port_blocks`.
    pub port_tables: Vec<PortBlock>,
    /// Second-level port blocks: vector indices.
    pub port_blocks: Vec<PortBlock>,
}

/// A rule as the compiler sees it: its sets of matching values per field.
struct Matcher {
    info: RuleInfo,
    peers: Vec<IpNet>,
    /// `None`: any protocol.
    protocol: Option<u8>,
    destination_ports: PortRange,
    source_ports: Option<PortRange>,
    local: Option<IpNet>,
}

impl Matcher {
    fn pseudo(step: u8, action: Action, peers: Vec<IpNet>) -> Self {
        Self {
            info: info(0, action, step),
            peers,
            protocol: None,
            destination_ports: PortRange::ANY,
            source_ports: None,
            local: None,
        }
    }
}

fn info(rule_id: u32, action: Action, step: u8) -> RuleInfo {
    let verdict = match action {
        Action::Accept => verdict::PASS,
        Action::Drop => verdict::DROP,
    };
    RuleInfo { rule_id, verdict, step, fields: 0, _pad: 0 }
}

fn host_net(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

fn any_net(v6: bool) -> IpNet {
    if v6 { "::/0".parse().expect("valid") } else { "0.0.0.0/0".parse().expect("valid") }
}

/// The matchers of `iface` in `dir`, in bit order.
fn matchers(cfg: &Config, iface: &InterfaceBinding, dir: Direction) -> Result<Vec<Matcher>, CompileError> {
    let rules = pooled_rules(cfg, iface, dir);
    if rules.len() > MAX_USER_RULES {
        return Err(CompileError::TooManyRules { iface: iface.name.clone(), direction: dir, count: rules.len() });
    }
    let groups = || iface.groups.iter().map(|&g| &cfg.groups[g]);
    let mut out = Vec::with_capacity(rules.len() + 3);
    let connected: Vec<IpNet> = groups()
        .filter(|g| g.kind == GroupKind::Basic && g.inner_access == Action::Accept)
        .flat_map(|g| g.members.iter().copied().map(host_net))
        .collect();
    if !connected.is_empty() {
        out.push(Matcher::pseudo(step::INTRA_GROUP_ACCEPT, Action::Accept, connected));
    }
    for rule in rules {
        let peers = match &rule.peer {
            Peer::Cidr(net) => vec![net.trunc()],
            Peer::Group { group_index } => cfg.groups[*group_index].members.iter().copied().map(host_net).collect(),
            Peer::PrefixList { list_index } => cfg.prefix_lists[*list_index].entries.iter().map(IpNet::trunc).collect(),
        };
        let fields = if rule.local.is_some() { RULE_NEEDS_LOCAL } else { 0 }
            | if rule.source_port_range.is_some() { RULE_NEEDS_SOURCE_PORT } else { 0 };
        out.push(Matcher {
            info: RuleInfo { fields, ..info(rule.id, rule.action, step::RULE) },
            peers,
            protocol: rule.protocol.ip_proto(),
            // TCP/UDP ports, or the ICMP key range of an icmp rule's type and code.
            destination_ports: if rule.protocol.has_ports() || rule.protocol.is_icmp() {
                rule.port_range
            } else {
                PortRange::ANY
            },
            source_ports: rule.source_port_range,
            local: rule.local.map(|n| n.trunc()),
        });
    }
    let isolated: Vec<IpNet> = groups()
        .filter(|g| g.inner_access == Action::Drop)
        .flat_map(|g| g.members.iter().copied().map(host_net))
        .collect();
    if !isolated.is_empty() {
        out.push(Matcher::pseudo(step::INTRA_GROUP_DROP, Action::Drop, isolated));
    }
    let kind = iface.kind(cfg);
    out.push(Matcher::pseudo(step::DEFAULT, default_action(kind, dir), vec![any_net(false), any_net(true)]));
    Ok(out)
}

/// A growing set of bits, `words` long.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(words: usize) -> Self {
        Self(vec![0; words])
    }
    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }
    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }
}

/// Stores each distinct vector once. The index holds vector numbers (and their hashes)
/// only, so each kilobytes-long vector lives in one allocation.
struct VectorTable {
    /// (hash, vector index): the hash is kept so growing the table rehashes without
    /// reading every 2 KiB vector again (that was a seventh of a 16,384-rule compile).
    index: HashTable<(u64, u32)>,
    vectors: Vec<Vec<u64>>,
}

impl VectorTable {
    fn new() -> Self {
        Self { index: HashTable::new(), vectors: Vec::new() }
    }

    fn hash(words: &[u64]) -> u64 {
        FxBuildHasher.hash_one(words)
    }

    fn intern(&mut self, bits: Bits) -> u32 {
        let hash = Self::hash(&bits.0);
        let Self { index, vectors } = self;
        if let Some(&(_, i)) = index.find(hash, |&(h, i)| h == hash && vectors[i as usize] == bits.0) {
            return i;
        }
        let i = vectors.len() as u32;
        vectors.push(bits.0);
        index.insert_unique(hash, (hash, i), |&(h, _)| h);
        i
    }

    fn get(&self, i: u32) -> &[u64] {
        &self.vectors[i as usize]
    }
}

/// Vectors for an address field: `direct` lists, per prefix, the rules naming exactly
/// that prefix. Each prefix's vector is its nearest listed ancestor's plus its own, so
/// the longest-prefix match answers for every rule whose prefix covers the address.
///
/// Sorted by (network, length), every prefix comes after its ancestors, and the ones
/// still containing it form a stack: one pass, no per-length ancestor search.
fn address_vectors(
    field: u8,
    mut direct: HashMap<IpNet, Vec<usize>>,
    words: usize,
    table: &mut VectorTable,
) -> Vec<AddrEntry> {
    for v6 in [false, true] {
        direct.entry(any_net(v6)).or_default();
    }
    let mut nets: Vec<(IpNet, Vec<usize>)> = direct.into_iter().collect();
    nets.sort_unstable_by_key(|(n, _)| (n.network(), n.prefix_len()));
    let mut ancestors: Vec<(IpNet, u32)> = Vec::new();
    let mut entries = Vec::with_capacity(nets.len());
    for (net, own) in nets {
        while ancestors.last().is_some_and(|(a, _)| !a.contains(&net)) {
            ancestors.pop();
        }
        let mut bits = match ancestors.last() {
            Some(&(_, vector)) => Bits(table.get(vector).to_vec()),
            None => Bits::new(words),
        };
        for bit in own {
            bits.set(bit);
        }
        let vector = table.intern(bits);
        entries.push(AddrEntry { field, net, vector });
        ancestors.push((net, vector));
    }
    entries
}

/// The elementary intervals of a port field: `[start, end]` with `base` plus the rules
/// whose range covers it; neighbours with equal vectors merged.
fn port_intervals(base: &Bits, ranges: &[(usize, PortRange)]) -> Vec<(u32, u32, Bits)> {
    let mut edges: Vec<u32> = Vec::with_capacity(2 * ranges.len() + 2);
    edges.extend([0, 65536]);
    for (_, r) in ranges {
        edges.extend([u32::from(r.first), u32::from(r.last) + 1]);
    }
    edges.sort_unstable();
    edges.dedup();
    // A sweep over the edges: ranges open at their first port and close after their
    // last, so each interval costs its own changes, not a pass over every range.
    let mut opening: Vec<(u32, usize)> = ranges.iter().map(|(bit, r)| (u32::from(r.first), *bit)).collect();
    let mut closing: Vec<(u32, usize)> = ranges.iter().map(|(bit, r)| (u32::from(r.last) + 1, *bit)).collect();
    opening.sort_unstable();
    closing.sort_unstable();
    let (mut next_open, mut next_close) = (0, 0);
    // How many of the open ranges carry each bit (a rule could be listed twice).
    let mut open_count: HashMap<usize, u32> = HashMap::default();
    let mut covering = Bits::new(base.0.len());
    let mut intervals: Vec<(u32, u32, Bits)> = Vec::new();
    for pair in edges.windows(2) {
        let (start, end) = (pair[0], pair[1] - 1);
        while next_close < closing.len() && closing[next_close].0 <= start {
            let bit = closing[next_close].1;
            let count = open_count.entry(bit).or_default();
            *count -= 1;
            if *count == 0 {
                covering.clear(bit);
            }
            next_close += 1;
        }
        while next_open < opening.len() && opening[next_open].0 <= start {
            let bit = opening[next_open].1;
            *open_count.entry(bit).or_default() += 1;
            covering.set(bit);
            next_open += 1;
        }
        let mut bits = covering.clone();
        for (word, base_word) in bits.0.iter_mut().zip(&base.0) {
            *word |= base_word;
        }
        match intervals.last_mut() {
            Some(last) if last.2 == bits => last.1 = end,
            _ => intervals.push((start, end, bits)),
        }
    }
    intervals
}

/// A two-level port table from intervals covering 0..=65535: a first-level block whose
/// entries are vectors, or references to second-level blocks (appended to `blocks`)
/// where a 256-port block holds more than one vector.
fn port_table(intervals: Vec<(u32, u32, Bits)>, table: &mut VectorTable, blocks: &mut Vec<PortBlock>) -> PortBlock {
    let mut by_port = vec![0u32; 65536];
    for (start, end, bits) in intervals {
        let vector = table.intern(bits);
        by_port[start as usize..=end as usize].fill(vector);
    }
    let mut first = PortBlock::default();
    for (high, ports) in by_port.chunks(256).enumerate() {
        first.entries[high] = if ports.iter().all(|&v| v == ports[0]) {
            ports[0]
        } else {
            let mut block = PortBlock::default();
            block.entries.copy_from_slice(ports);
            blocks.push(block);
            PORT_BLOCK_REF | (blocks.len() - 1) as u32
        };
    }
    first
}

/// The IPv6 peer intervals from the address entries of the peer field (prefixes with the
/// vector answering for addresses under them, `::/0` among them): where each interval
/// starts and the vector of the longest prefix covering it, neighbours with equal
/// vectors merged.
///
/// Sorted by (network, length), the prefixes still containing the next one form a stack;
/// a prefix opens an interval at its network, and closing one resumes its parent's
/// vector after its last address.
fn v6_bounds(mut entries: Vec<AddrEntry>) -> Vec<PeerV6Bound> {
    let as_u128 = |net: &IpNet| match net.network() {
        IpAddr::V6(a) => u128::from(a),
        IpAddr::V4(_) => unreachable!("IPv6 entries only"),
    };
    let last_of = |net: &IpNet| as_u128(net) | u128::MAX.checked_shr(u32::from(net.prefix_len())).unwrap_or(0);
    entries.sort_unstable_by_key(|e| (as_u128(&e.net), e.net.prefix_len()));
    let mut starts: Vec<(u128, u32)> = Vec::with_capacity(2 * entries.len() + 1);
    // The prefixes containing the current point: (last address, vector).
    let mut open: Vec<(u128, u32)> = Vec::new();
    let close_before = |open: &mut Vec<(u128, u32)>, starts: &mut Vec<(u128, u32)>, at: Option<u128>| {
        while let Some(&(last, _)) = open.last() {
            if at.is_some_and(|at| last >= at) {
                break;
            }
            open.pop();
            if let (Some(&(_, parent)), Some(next)) = (open.last(), last.checked_add(1)) {
                starts.push((next, parent));
            }
        }
    };
    for e in &entries {
        let first = as_u128(&e.net);
        close_before(&mut open, &mut starts, Some(first));
        starts.push((first, e.vector));
        open.push((last_of(&e.net), e.vector));
    }
    close_before(&mut open, &mut starts, None);
    // A later start at the same address wins (a prefix beginning where its parent
    // resumed), and neighbours that answer alike merge.
    let mut bounds: Vec<PeerV6Bound> = Vec::with_capacity(starts.len());
    for (start, vector) in starts {
        if bounds.last().is_some_and(|b| b.start == v6_start(start)) {
            bounds.pop();
        }
        if bounds.last().is_some_and(|b| b.vector == vector) {
            continue;
        }
        bounds.push(PeerV6Bound { start: v6_start(start), vector, _pad: 0 });
    }
    bounds
}

fn v6_start(addr: u128) -> [u64; 2] {
    [(addr >> 64) as u64, addr as u64]
}

/// The IPv4 peer table from the address entries of the peer field (each a prefix and the
/// vector answering for addresses under it): a root block indexed by the first address
/// byte, and blocks below it for the following bytes where a longer prefix needs one.
/// Prefixes go in by increasing length, so a longer one overwrites the entries of the
/// shorter ones it lies in, and a new block starts as a copy of the entry it replaces.
fn v4_table(mut entries: Vec<AddrEntry>, blocks: &mut Vec<PortBlock>) -> PortBlock {
    entries.sort_by_key(|e| e.net.prefix_len());
    let root_vector = entries.iter().find(|e| e.net.prefix_len() == 0).map_or(0, |e| e.vector);
    // The root lives in `blocks` while building (index `root`), then moves out.
    let root = blocks.len();
    blocks.push(uniform_table(root_vector));
    for e in &entries {
        let IpAddr::V4(addr) = e.net.network() else { continue };
        let len = u32::from(e.net.prefix_len());
        if len == 0 {
            continue;
        }
        let bytes = addr.octets();
        // The level (byte) where the prefix ends, and the span of entries it covers there.
        let level = ((len - 1) / 8) as usize;
        let span = 1usize << (8 * (level as u32 + 1) - len);
        let mut block = root;
        for &byte in &bytes[..level] {
            let entry = blocks[block].entries[usize::from(byte)];
            block = if entry & PORT_BLOCK_REF != 0 {
                (entry & !PORT_BLOCK_REF) as usize
            } else {
                blocks.push(uniform_table(entry));
                let child = blocks.len() - 1;
                blocks[block].entries[usize::from(byte)] = PORT_BLOCK_REF | child as u32;
                child
            };
        }
        let start = usize::from(bytes[level]);
        for slot in &mut blocks[block].entries[start..start + span] {
            // Shorter prefixes came first, so nothing below this level exists yet.
            debug_assert_eq!(*slot & PORT_BLOCK_REF, 0);
            *slot = e.vector;
        }
    }
    // Block references count from the first block after the root.
    let mut root_block = blocks.remove(root);
    let fix = |entry: &mut u32| {
        if *entry & PORT_BLOCK_REF != 0 {
            // Every reference is to a block made after the root: one place down now.
            *entry -= 1;
        }
    };
    for entry in &mut root_block.entries {
        fix(entry);
    }
    for block in &mut blocks[root..] {
        for entry in &mut block.entries {
            fix(entry);
        }
    }
    root_block
}

/// A table that maps every port to `vector`.
fn uniform_table(vector: u32) -> PortBlock {
    PortBlock { entries: [vector; 256] }
}

/// Compiles the rules of `iface` in direction `dir`.
pub fn compile(cfg: &Config, iface: &InterfaceBinding, dir: Direction) -> Result<Compiled, CompileError> {
    let matchers = matchers(cfg, iface, dir)?;
    let words = matchers.len().div_ceil(64);
    if words > MAX_WORDS {
        return Err(CompileError::TooWide { iface: iface.name.clone(), count: matchers.len() });
    }
    let mut table = VectorTable::new();
    let mut compiled = Compiled { rules: matchers.iter().map(|m| m.info).collect(), ..Default::default() };

    let mut peers: HashMap<IpNet, Vec<usize>> = HashMap::default();
    for (bit, m) in matchers.iter().enumerate() {
        for net in &m.peers {
            peers.entry(*net).or_default().push(bit);
        }
    }
    compiled.addr_entries = address_vectors(field::PEER, peers, words, &mut table);
    // IPv4 peers go in a multibit table, IPv6 peers in sorted intervals with a multibit
    // table over them.
    let (v4, v6): (Vec<AddrEntry>, Vec<AddrEntry>) =
        compiled.addr_entries.drain(..).partition(|e| matches!(e.net, IpNet::V4(_)));
    let peer_v4 = v4_table(v4, &mut compiled.port_blocks);
    compiled.peer_v6 = v6_bounds(v6);
    if compiled.peer_v6.len() > MAX_PEER_V6_BOUNDS as usize {
        return Err(CompileError::TooManyPeerV6 { iface: iface.name.clone(), count: compiled.peer_v6.len() });
    }
    compiled.peer_v6_root = peer_v6::table(&compiled.peer_v6, &mut compiled.port_blocks);

    if matchers.iter().any(|m| m.local.is_some()) {
        compiled.flags |= RULESET_HAS_LOCAL;
        let mut locals: HashMap<IpNet, Vec<usize>> = HashMap::default();
        for (bit, m) in matchers.iter().enumerate() {
            match m.local {
                Some(net) => locals.entry(net).or_default().push(bit),
                None => {
                    for v6 in [false, true] {
                        locals.entry(any_net(v6)).or_default().push(bit);
                    }
                }
            }
        }
        compiled.addr_entries.extend(address_vectors(field::LOCAL, locals, words, &mut table));
    }

    // Destination port and protocol: rules of any protocol are in every entry.
    let mut any_protocol = Bits::new(words);
    for (bit, m) in matchers.iter().enumerate() {
        if m.protocol.is_none() {
            any_protocol.set(bit);
        }
    }
    compiled.port_entries.push(PortEntry { protocol: None, vector: table.intern(any_protocol.clone()) });
    let protocols: BTreeSet<u8> = matchers.iter().filter_map(|m| m.protocol).collect();
    // TCP and UDP destination ports, and ICMP and ICMPv6 keys, go in tables (a protocol
    // no rule names gets the any-protocol vector throughout); other protocols have no
    // ports: one trie entry.
    let any_vector = compiled.port_entries[0].vector;
    let mut tables = vec![uniform_table(any_vector); port_table::ICMPV6 as usize + 1];
    for protocol in protocols {
        let ranges: Vec<(usize, PortRange)> = matchers
            .iter()
            .enumerate()
            .filter(|(_, m)| m.protocol == Some(protocol))
            .map(|(bit, m)| (bit, m.destination_ports))
            .collect();
        let which = match protocol {
            ip_proto::TCP => Some(port_table::TCP_DESTINATION),
            ip_proto::UDP => Some(port_table::UDP_DESTINATION),
            ip_proto::ICMP => Some(port_table::ICMP),
            ip_proto::ICMPV6 => Some(port_table::ICMPV6),
            _ => None,
        };
        if let Some(which) = which {
            let intervals = port_intervals(&any_protocol, &ranges);
            tables[which as usize] = port_table(intervals, &mut table, &mut compiled.port_blocks);
        } else {
            let mut bits = any_protocol.clone();
            for (bit, _) in &ranges {
                bits.set(*bit);
            }
            let vector = table.intern(bits);
            compiled.port_entries.push(PortEntry { protocol: Some(protocol), vector });
        }
    }

    if matchers.iter().any(|m| m.source_ports.is_some()) {
        compiled.flags |= RULESET_HAS_SOURCE_PORT;
        let mut unconstrained = Bits::new(words);
        let mut ranges = Vec::new();
        for (bit, m) in matchers.iter().enumerate() {
            match m.source_ports {
                Some(r) => ranges.push((bit, r)),
                None => unconstrained.set(bit),
            }
        }
        let intervals = port_intervals(&unconstrained, &ranges);
        tables[port_table::SOURCE as usize] = port_table(intervals, &mut table, &mut compiled.port_blocks);
    }
    tables[port_table::PEER_V4 as usize] = peer_v4;
    compiled.port_tables = tables;
    (compiled.vectors, compiled.chunks) = chunked(table.vectors, words);
    Ok(compiled)
}

/// The vectors (each `words` long) as summaries and rows of chunk numbers, and the
/// distinct chunks they point to.
fn chunked(vectors: Vec<Vec<u64>>, words: usize) -> (Vec<RuleVector>, Vec<RuleChunk>) {
    let mut chunks: Vec<RuleChunk> = Vec::new();
    let mut numbers: HashMap<RuleChunk, u32> = HashMap::default();
    // Vectors come in the order they were made, each mostly its predecessor's words:
    // comparing a chunk with the one before it in its column skips most hash lookups.
    let mut previous: Vec<Option<(RuleChunk, u32)>> = vec![None; words.div_ceil(CHUNK_WORDS)];
    let rows = vectors
        .iter()
        .map(|v| {
            debug_assert_eq!(v.len(), words);
            let mut row = RuleVector::default();
            for (c, part) in v.chunks(CHUNK_WORDS).enumerate() {
                if part.iter().any(|w| *w != 0) {
                    row.summary |= 1 << c;
                }
                let mut chunk = RuleChunk::default();
                chunk.words[..part.len()].copy_from_slice(part);
                row.chunks[c] = match previous[c] {
                    Some((last, number)) if last == chunk => number,
                    _ => {
                        let number = *numbers.entry(chunk).or_insert_with(|| {
                            chunks.push(chunk);
                            (chunks.len() - 1) as u32
                        });
                        previous[c] = Some((chunk, number));
                        number
                    }
                };
            }
            row
        })
        .collect();
    (rows, chunks)
}

/// What a compiled rule set decides for one packet, found the way the kernel finds it
/// (longest-prefix lookups, AND, lowest bit), but in plain Rust: lets host tests check
/// the compiler without a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Simulated {
    pub verdict: u8,
    pub step: u8,
    pub rule_id: u32,
}

impl Compiled {
    pub fn words(&self) -> usize {
        self.rules.len().div_ceil(64)
    }

    /// Word `w` of vector `v`, through its chunk as the kernel reads it.
    fn word(&self, v: &RuleVector, w: usize) -> u64 {
        self.chunks[v.chunks[w / CHUNK_WORDS] as usize].words[w % CHUNK_WORDS]
    }

    /// The words of vector `index`.
    pub fn vector_words(&self, index: u32) -> Vec<u64> {
        let v = &self.vectors[index as usize];
        (0..self.words()).map(|w| self.word(v, w)).collect()
    }

    fn addr_lookup(&self, field: u8, addr: IpAddr) -> Option<&RuleVector> {
        if let (field::PEER, IpAddr::V4(v4)) = (field, addr) {
            let mut entry = self.port_tables.get(port_table::PEER_V4 as usize)?.entries[usize::from(v4.octets()[0])];
            for &byte in &v4.octets()[1..] {
                if entry & PORT_BLOCK_REF == 0 {
                    break;
                }
                entry = self.port_blocks.get((entry & !PORT_BLOCK_REF) as usize)?.entries[usize::from(byte)];
            }
            return (entry & PORT_BLOCK_REF == 0).then(|| &self.vectors[entry as usize]);
        }
        if let (field::PEER, IpAddr::V6(v6)) = (field, addr) {
            // The last interval starting at or below the address, found through the
            // index as the kernel finds it.
            let vector = peer_v6::lookup(self.peer_v6_root, &self.port_blocks, &self.peer_v6, &v6.octets())?;
            return self.vectors.get(vector as usize);
        }
        self.addr_entries
            .iter()
            .filter(|e| e.field == field && e.net.contains(&addr))
            .max_by_key(|e| e.net.prefix_len())
            .map(|e| &self.vectors[e.vector as usize])
    }

    fn port_lookup(&self, field: u8, protocol: u8, port: u16) -> Option<&RuleVector> {
        let table = match (field, protocol) {
            (field::SOURCE_PORT, _) => Some(port_table::SOURCE),
            (_, ip_proto::TCP) => Some(port_table::TCP_DESTINATION),
            (_, ip_proto::UDP) => Some(port_table::UDP_DESTINATION),
            (_, ip_proto::ICMP) => Some(port_table::ICMP),
            (_, ip_proto::ICMPV6) => Some(port_table::ICMPV6),
            _ => None,
        };
        if let Some(table) = table {
            let first = self.port_tables.get(table as usize)?.entries[usize::from(port >> 8)];
            let vector = if first & PORT_BLOCK_REF == 0 {
                first
            } else {
                self.port_blocks.get((first & !PORT_BLOCK_REF) as usize)?.entries[usize::from(port & 0xff)]
            };
            return self.vectors.get(vector as usize);
        }
        // Other protocols: their own entry, else the any-protocol one.
        self.port_entries
            .iter()
            .find(|e| e.protocol == Some(protocol))
            .or_else(|| self.port_entries.iter().find(|e| e.protocol.is_none()))
            .map(|e| &self.vectors[e.vector as usize])
    }

    /// Simulates the kernel's classification of a packet.
    pub fn simulate(
        &self,
        peer: IpAddr,
        local: IpAddr,
        protocol: u8,
        src_port: u16,
        dst_port: u16,
    ) -> Option<Simulated> {
        let mut fields =
            vec![self.addr_lookup(field::PEER, peer)?, self.port_lookup(field::DESTINATION_PORT, protocol, dst_port)?];
        if self.flags & RULESET_HAS_LOCAL != 0 {
            fields.push(self.addr_lookup(field::LOCAL, local)?);
        }
        if self.flags & RULESET_HAS_SOURCE_PORT != 0 {
            fields.push(self.port_lookup(field::SOURCE_PORT, 0, src_port)?);
        }
        (0..self.words()).find_map(|w| {
            let word = fields.iter().fold(u64::MAX, |acc, v| acc & self.word(v, w));
            (word != 0).then(|| {
                let info = self.rules[w * 64 + word.trailing_zeros() as usize];
                Simulated { verdict: info.verdict, step: info.step, rule_id: info.rule_id }
            })
        })
    }
}

mod peer_v6;
#[cfg(test)]
mod tests;
