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

use std::{collections::BTreeSet, hash::BuildHasher as _, net::IpAddr, sync::Arc};

use ipnet::IpNet;
// Tens of thousands of chunks and vectors are interned: a fast non-cryptographic hash
// keeps that cheap (the inputs are our own, not an attacker's).
use hashbrown::HashTable;
use rustc_hash::{FxBuildHasher, FxHashMap as HashMap, FxHashSet as HashSet};
use sg_common::{
    CHUNK_WORDS, MAX_BANDS, MAX_PEER_V6_BOUNDS, MAX_RULE_BITS, MAX_USER_RULES, MAX_WORDS, PEER_V6_BOUNDS,
    PORT_BLOCK_REF, PeerV6Bound, PortBlock, RULE_NEEDS_LOCAL, RULE_NEEDS_SOURCE_PORT, RULESET_HAS_LOCAL,
    RULESET_HAS_SOURCE_PORT, RuleChunk, RuleInfo, RuleVector, field, ip_proto, port_table, step, verdict,
};

use super::{
    config::{Action, Config, Direction, Edit, GroupKind, InterfaceBinding, Peer, PortRange, Rule},
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
    /// The band whose trie entries it is ([`Band`]).
    pub band: u8,
    pub field: u8,
    pub net: IpNet,
    pub vector: u32,
}

/// A port-trie entry of the destination-port field: `protocol: None` is the any-protocol
/// entry; otherwise the protocol, any port (TCP and UDP ports are in the port tables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEntry {
    /// The band whose trie entries it is ([`Band`]).
    pub band: u8,
    pub protocol: Option<u8>,
    pub vector: u32,
}

/// One compiled rule set, ready to be written into the maps at any slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// What bit `i` decides: the bits of every band, band after band.
    pub rules: Vec<RuleInfo>,
    /// Where each band's parts are (one band unless the rules need more bits than a
    /// vector holds: `sg_common::MAX_BANDS`).
    pub bands: Vec<Band>,
    /// Distinct vectors; entries refer to them by index. Their chunk numbers index
    /// `chunks`.
    pub vectors: Vec<RuleVector>,
    /// Distinct chunks of the vectors' words.
    pub chunks: Vec<RuleChunk>,
    /// The IPv6 peer intervals, sorted, the first at `::` (vector indices into `vectors`),
    /// band after band.
    pub peer_v6: Vec<PeerV6Bound>,
    pub addr_entries: Vec<AddrEntry>,
    /// Port-trie entries: the any-protocol entry and one per other protocol (no ports).
    pub port_entries: Vec<PortEntry>,
    /// First-level port tables (`sg_common::PORT_TABLES` of them a band, in `port_table`
    /// order): vector indices, or `PORT_BLOCK_REF` | an index into `port_blocks`.
    pub port_tables: Vec<PortBlock>,
    /// Second-level port blocks: vector indices.
    pub port_blocks: Vec<PortBlock>,
}

/// One band of a compiled rule set: the parts of [`Compiled`] its header
/// (`sg_common::RulesetHeader`) points to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Band {
    /// Its first bit in `Compiled::rules`, and how many.
    pub first_rule: u32,
    pub rule_count: u32,
    /// `RULESET_HAS_LOCAL` | `RULESET_HAS_SOURCE_PORT`.
    pub flags: u32,
    /// Its first table in `Compiled::port_tables`.
    pub first_table: u32,
    /// Its first IPv6 peer interval in `Compiled::peer_v6`, and how many.
    pub first_peer_v6: u32,
    pub peer_v6_count: u32,
    /// Where its IPv6 peer table (`sg_common::PEER_V6_BOUNDS`), which narrows a peer to a
    /// few of its intervals, starts: a vector, a leaf (counted from `first_peer_v6`), or
    /// `PORT_BLOCK_REF` | a block of `Compiled::port_blocks`.
    pub peer_v6_root: u32,
}

/// A rule as the compiler sees it: its sets of matching values per field.
#[derive(Clone, PartialEq)]
struct Matcher {
    info: RuleInfo,
    peers: Peers,
    /// `None`: any protocol.
    protocol: Option<u8>,
    destination_ports: PortRange,
    source_ports: Option<PortRange>,
    local: Option<IpNet>,
}

/// The networks a rule matches its peer against: one, or a group's members or a prefix
/// list's entries, shared by every rule naming them (each apply builds the matchers of
/// every rule, and allocating a list per rule was most of that).
#[derive(Clone, Debug, Eq)]
enum Peers {
    One(IpNet),
    Shared(Arc<[IpNet]>),
}

impl std::ops::Deref for Peers {
    type Target = [IpNet];

    fn deref(&self) -> &[IpNet] {
        match self {
            Self::One(net) => std::slice::from_ref(net),
            Self::Shared(nets) => nets,
        }
    }
}

impl PartialEq for Peers {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Shared(a), Self::Shared(b)) if Arc::ptr_eq(a, b) => true,
            _ => **self == **other,
        }
    }
}

impl Matcher {
    fn pseudo(step: u8, action: Action, peers: Vec<IpNet>) -> Self {
        Self {
            info: info(0, action, step),
            peers: Peers::Shared(peers.into()),
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
    let mut peers = PeerLists::new(cfg);
    for rule in rules {
        out.push(rule_matcher(rule, peers.of(cfg, rule.peer)));
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

/// The matcher of user rule `rule`, whose peer is `peers`.
fn rule_matcher(rule: &Rule, peers: Peers) -> Matcher {
    let fields = if rule.local.is_some() { RULE_NEEDS_LOCAL } else { 0 }
        | if rule.source_port_range.is_some() { RULE_NEEDS_SOURCE_PORT } else { 0 };
    Matcher {
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
    }
}

/// The peer lists of a config's groups and prefix lists, each built once and shared by
/// every rule naming it.
struct PeerLists {
    groups: Vec<Option<Arc<[IpNet]>>>,
    lists: Vec<Option<Arc<[IpNet]>>>,
}

impl PeerLists {
    fn new(cfg: &Config) -> Self {
        Self { groups: vec![None; cfg.groups.len()], lists: vec![None; cfg.prefix_lists.len()] }
    }

    /// What a rule with peer `peer` matches its peer against.
    fn of(&mut self, cfg: &Config, peer: Peer) -> Peers {
        match peer {
            Peer::Cidr(net) => Peers::One(net.trunc()),
            Peer::Group { group_index } => Peers::Shared(Arc::clone(
                self.groups[group_index]
                    .get_or_insert_with(|| cfg.groups[group_index].members.iter().copied().map(host_net).collect()),
            )),
            Peer::PrefixList { list_index } => Peers::Shared(Arc::clone(
                self.lists[list_index]
                    .get_or_insert_with(|| cfg.prefix_lists[list_index].entries.iter().map(IpNet::trunc).collect()),
            )),
        }
    }
}

/// How one rule's edit ([`Edit`]) changes the matchers of an interface and direction
/// compiled from the config it was made to.
enum EditedMatchers {
    /// Not at all (the rule is not among them, or matches as it did).
    Same,
    /// The matcher of bit `bit` is now `matcher`; the rule kept its rank.
    Bit { bit: usize, matcher: Matcher },
    /// Otherwise (its rank moved): the matchers are built anew.
    Other,
}

fn edited_matchers(
    cfg: &Config,
    iface: &InterfaceBinding,
    dir: Direction,
    from: &[Matcher],
    edit: Edit,
) -> EditedMatchers {
    let Some(rule) = cfg.rule(edit.rule_id) else { return EditedMatchers::Other };
    if rule.direction != dir || !iface.groups.contains(&rule.group_index) {
        return EditedMatchers::Same;
    }
    if rule.rank() != edit.rank_before {
        return EditedMatchers::Other;
    }
    let Some(bit) = from.iter().position(|m| m.info.step == step::RULE && m.info.rule_id == rule.id) else {
        return EditedMatchers::Other;
    };
    let matcher = rule_matcher(rule, PeerLists::new(cfg).of(cfg, rule.peer));
    if matcher == from[bit] { EditedMatchers::Same } else { EditedMatchers::Bit { bit, matcher } }
}

/// The distinct chunks ([`CHUNK_WORDS`] words) of the vectors being built. A vector
/// under construction is a row of chunk numbers ([`Bits`]), so copying, hashing and
/// comparing one costs its 33 columns rather than its 260 words, and changing a bit
/// re-interns one 64-byte chunk. Number 0 is the all-zero chunk.
///
/// Chunks of intermediate vectors (a port sweep's running set) stay here unused;
/// [`chunked`] keeps only the ones final vectors name.
struct ChunkPool {
    index: HashMap<RuleChunk, u32>,
    chunks: Vec<RuleChunk>,
    /// `a | b` of chunk numbers already computed (`a < b`).
    ors: HashMap<(u32, u32), u32>,
}

impl ChunkPool {
    const ZERO: u32 = 0;

    fn new() -> Self {
        let mut pool = Self { index: HashMap::default(), chunks: Vec::new(), ors: HashMap::default() };
        pool.intern(RuleChunk::default());
        pool
    }

    fn intern(&mut self, chunk: RuleChunk) -> u32 {
        let Self { index, chunks, .. } = self;
        *index.entry(chunk).or_insert_with(|| {
            chunks.push(chunk);
            (chunks.len() - 1) as u32
        })
    }

    fn or(&mut self, a: u32, b: u32) -> u32 {
        if a == b || b == Self::ZERO {
            return a;
        }
        if a == Self::ZERO {
            return b;
        }
        let key = (a.min(b), a.max(b));
        if let Some(&c) = self.ors.get(&key) {
            return c;
        }
        let mut chunk = self.chunks[a as usize];
        for (w, o) in chunk.words.iter_mut().zip(&self.chunks[b as usize].words) {
            *w |= o;
        }
        let c = self.intern(chunk);
        self.ors.insert(key, c);
        c
    }
}

/// A vector being built: the [`ChunkPool`] number of each of its chunks.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u32>);

impl Bits {
    /// All clear, `words` long.
    fn new(words: usize) -> Self {
        Self(vec![ChunkPool::ZERO; words.div_ceil(CHUNK_WORDS)])
    }

    /// Sets or clears `bits` (each chunk they touch is interned once per run of bits in
    /// it, so ascending bits cost one intern a chunk).
    fn update(&mut self, pool: &mut ChunkPool, bits: impl IntoIterator<Item = usize>, on: bool) {
        const CHUNK_BITS: usize = CHUNK_WORDS * 64;
        let mut open: Option<(usize, RuleChunk)> = None;
        for bit in bits {
            let column = bit / CHUNK_BITS;
            if open.as_ref().is_none_or(|(c, _)| *c != column) {
                if let Some((c, chunk)) = open.take() {
                    self.0[c] = pool.intern(chunk);
                }
                open = Some((column, pool.chunks[self.0[column] as usize]));
            }
            let (_, chunk) = open.as_mut().expect("opened above");
            let (word, mask) = ((bit % CHUNK_BITS) / 64, 1u64 << (bit % 64));
            if on {
                chunk.words[word] |= mask;
            } else {
                chunk.words[word] &= !mask;
            }
        }
        if let Some((c, chunk)) = open {
            self.0[c] = pool.intern(chunk);
        }
    }

    fn set(&mut self, pool: &mut ChunkPool, bit: usize) {
        self.update(pool, [bit], true);
    }

    fn clear(&mut self, pool: &mut ChunkPool, bit: usize) {
        self.update(pool, [bit], false);
    }
}

/// Stores each distinct vector once, with the chunk pool its rows point into. The
/// index holds vector numbers only, so each row lives in one allocation.
struct VectorTable {
    index: HashTable<u32>,
    vectors: Vec<Bits>,
    pool: ChunkPool,
}

impl VectorTable {
    fn new() -> Self {
        Self { index: HashTable::new(), vectors: Vec::new(), pool: ChunkPool::new() }
    }

    fn intern(&mut self, bits: Bits) -> u32 {
        let Self { index, vectors, .. } = self;
        let hash = FxBuildHasher.hash_one(&bits);
        if let Some(&i) = index.find(hash, |&i| vectors[i as usize] == bits) {
            return i;
        }
        let i = vectors.len() as u32;
        vectors.push(bits);
        index.insert_unique(hash, i, |&i| FxBuildHasher.hash_one(&vectors[i as usize]));
        i
    }

    fn get(&self, i: u32) -> &Bits {
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
            Some(&(_, vector)) => table.get(vector).clone(),
            None => Bits::new(words),
        };
        bits.update(&mut table.pool, own, true);
        let vector = table.intern(bits);
        entries.push(AddrEntry { band: 0, field, net, vector });
        ancestors.push((net, vector));
    }
    entries
}

/// The elementary intervals of a port field: `[start, end]` with `base` plus the rules
/// whose range covers it; neighbours with equal vectors merged.
fn port_intervals(base: &Bits, ranges: &[(usize, PortRange)], pool: &mut ChunkPool) -> Vec<(u32, u32, Bits)> {
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
    let mut open_count: Vec<u32> = vec![0; ranges.iter().map(|(bit, _)| bit + 1).max().unwrap_or(0)];
    let mut covering = Bits(vec![ChunkPool::ZERO; base.0.len()]);
    // `covering | base`, kept up to date in the chunks an edge changed.
    let mut bits = base.clone();
    let mut changed: Vec<usize> = Vec::new();
    let mut intervals: Vec<(u32, u32, Bits)> = Vec::new();
    const CHUNK_BITS: usize = CHUNK_WORDS * 64;
    for pair in edges.windows(2) {
        let (start, end) = (pair[0], pair[1] - 1);
        while next_close < closing.len() && closing[next_close].0 <= start {
            let bit = closing[next_close].1;
            let count = &mut open_count[bit];
            *count -= 1;
            if *count == 0 {
                covering.clear(pool, bit);
                changed.push(bit / CHUNK_BITS);
            }
            next_close += 1;
        }
        while next_open < opening.len() && opening[next_open].0 <= start {
            let bit = opening[next_open].1;
            open_count[bit] += 1;
            covering.set(pool, bit);
            changed.push(bit / CHUNK_BITS);
            next_open += 1;
        }
        for c in changed.drain(..) {
            bits.0[c] = pool.or(covering.0[c], base.0[c]);
        }
        match intervals.last_mut() {
            Some(last) if last.2 == bits => last.1 = end,
            _ => intervals.push((start, end, bits.clone())),
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
    incremental::cut(&by_port, blocks, &mut Vec::new())
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
    from_matchers(iface, &matchers(cfg, iface, dir)?)
}

/// A rule set the cache holds: what it was compiled from, and how many of its entries
/// nothing may refer to ([`incremental`]).
struct Last {
    from: Vec<Matcher>,
    /// The serial of the config `from` was made of ([`crate::policy::config::Lineage`]).
    serial: u64,
    compiled: Arc<Compiled>,
    garbage: usize,
    /// `compiled`'s vectors and chunks by content, once a recompile built it.
    interned: Option<incremental::Interned>,
}

/// The last rule set compiled for each interface and direction, with the rules it was
/// compiled from. A rule set depends on nothing else, so when an interface's rules in a
/// direction are the same as last time, the same rule set is returned without compiling
/// it again: a one-rule change recompiles one direction of the interfaces that use the
/// rule, not every rule set of the file; and when only that rule's ports, protocol or
/// decision changed, the direction is compiled from its last rule set
/// ([`incremental`]).
#[derive(Default)]
pub struct CompileCache {
    last: HashMap<(String, Direction), Last>,
    /// The entries used since [`CompileCache::keep_used`] last ran.
    used: HashSet<(String, Direction)>,
    /// Rule sets compiled from the one before ([`incremental`]), for tests.
    pub(crate) recompiled: usize,
    /// Compiles that took a config's edit from its lineage, for tests.
    pub(crate) from_edit: usize,
}

impl CompileCache {
    /// [`compile`], or the rule set compiled last time from the same rules.
    pub fn compile(
        &mut self,
        cfg: &Config,
        iface: &InterfaceBinding,
        dir: Direction,
    ) -> Result<Arc<Compiled>, CompileError> {
        let key = (iface.name.clone(), dir);
        self.used.insert(key.clone());
        let serial = cfg.lineage.serial();
        // Set when the edit's own recompile failed: comparing every matcher would find
        // the same one bit and fail the same way.
        let mut edit_failed = false;
        // One rule's edit of the config compiled last: its matcher alone is made again.
        if let Some(last) = self.last.get_mut(&key)
            && let Some(edit) = cfg.lineage.edit_of(Some(last.serial))
        {
            self.from_edit += 1;
            match edited_matchers(cfg, iface, dir, &last.from, edit) {
                EditedMatchers::Same => {
                    last.serial = serial;
                    return Ok(Arc::clone(&last.compiled));
                }
                EditedMatchers::Bit { bit, matcher } => {
                    let (mut garbage, mut interned) = (last.garbage, last.interned.take());
                    let again = incremental::recompile_bit(
                        &last.compiled,
                        (bit, &last.from[bit], &matcher),
                        &mut garbage,
                        &mut interned,
                    );
                    if let Some(compiled) = again {
                        self.recompiled += 1;
                        last.garbage = garbage;
                        last.from[bit] = matcher;
                        last.serial = serial;
                        last.compiled = Arc::new(compiled);
                        last.interned = interned;
                        return Ok(Arc::clone(&last.compiled));
                    }
                    edit_failed = true;
                }
                EditedMatchers::Other => {}
            }
        }
        let matchers = matchers(cfg, iface, dir)?;
        let mut again = None;
        let mut garbage = 0;
        let mut interned = None;
        if let Some(last) = self.last.get_mut(&key) {
            if last.from == matchers {
                last.serial = serial;
                return Ok(Arc::clone(&last.compiled));
            }
            if !edit_failed {
                garbage = last.garbage;
                interned = last.interned.take();
                again = incremental::recompile(&last.compiled, &last.from, &matchers, &mut garbage, &mut interned);
            }
        }
        let compiled = Arc::new(match again {
            Some(compiled) => {
                self.recompiled += 1;
                compiled
            }
            None => {
                interned = None;
                let mut whole = from_matchers(iface, &matchers)?;
                // Numbered like the set before, so writing it over that set's ranges
                // finds its equal entries in place ([`numbering`]).
                garbage = match self.last.get(&key) {
                    Some(last) => numbering::renumber_like(&mut whole, &last.compiled),
                    None => 0,
                };
                if incremental::over_garbage_limit(&whole, garbage) {
                    incremental::compact(&mut whole);
                    garbage = 0;
                }
                whole
            }
        });
        self.last.insert(key, Last { from: matchers, serial, compiled: Arc::clone(&compiled), garbage, interned });
        Ok(compiled)
    }

    /// Forgets the interfaces and directions not compiled since the last call, so the
    /// cache holds what the latest rule file compiled to and no more.
    pub fn keep_used(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.last.retain(|key, _| used.contains(key));
    }
}

/// How many bands (`sg_common::MAX_BANDS`) a rule set of `bits` bits (rules and
/// pseudo-rules) takes: one while they fit a vector, else one per vector's bits less the
/// next-band bit each band but the last ends in.
fn band_count(bits: usize) -> usize {
    if bits <= MAX_RULE_BITS { 1 } else { bits.div_ceil(MAX_RULE_BITS - 1) }
}

/// The bands the rules of `iface` in direction `dir` compile to (for advice: each band a
/// packet passes through costs another round of lookups).
pub fn bands(cfg: &Config, iface: &InterfaceBinding, dir: Direction) -> Result<usize, CompileError> {
    Ok(band_count(matchers(cfg, iface, dir)?.len()))
}

/// Compiles `matchers`, the rules of `iface` in one direction in bit order: in one band
/// when they fit a vector, else in bands of a vector's bits, each but the last ending in
/// the next-band pseudo-rule (`sg_common::MAX_BANDS`).
fn from_matchers(iface: &InterfaceBinding, matchers: &[Matcher]) -> Result<Compiled, CompileError> {
    if band_count(matchers.len()) == 1 {
        return one_band(iface, matchers);
    }
    let pieces: Vec<&[Matcher]> = matchers.chunks(MAX_RULE_BITS - 1).collect();
    debug_assert_eq!(pieces.len(), band_count(matchers.len()));
    if pieces.len() > MAX_BANDS as usize {
        return Err(CompileError::TooWide { iface: iface.name.clone(), count: matchers.len() });
    }
    // The bands depend on nothing of each other: compiled side by side, a thread each.
    let parts: Vec<Result<Compiled, CompileError>> = std::thread::scope(|scope| {
        let last = pieces.len() - 1;
        let threads: Vec<_> = pieces
            .iter()
            .enumerate()
            .map(|(b, piece)| {
                scope.spawn(move || {
                    let mut band = piece.to_vec();
                    if b < last {
                        band.push(Matcher::pseudo(step::NEXT_BAND, Action::Drop, vec![any_net(false), any_net(true)]));
                    }
                    one_band(iface, &band)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    let mut out = Compiled::default();
    for (b, part) in parts.into_iter().enumerate() {
        out.append_band(part?, b as u8);
    }
    Ok(out)
}

/// Compiles `matchers` (at most a vector's bits) as a rule set of one band.
fn one_band(iface: &InterfaceBinding, matchers: &[Matcher]) -> Result<Compiled, CompileError> {
    let words = matchers.len().div_ceil(64);
    if words > MAX_WORDS {
        return Err(CompileError::TooWide { iface: iface.name.clone(), count: matchers.len() });
    }
    let mut table = VectorTable::new();
    let mut compiled = Compiled { rules: matchers.iter().map(|m| m.info).collect(), ..Default::default() };

    let mut peers: HashMap<IpNet, Vec<usize>> = HashMap::default();
    for (bit, m) in matchers.iter().enumerate() {
        for net in m.peers.iter() {
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
    let peer_v6_root = peer_v6::table(&compiled.peer_v6, &mut compiled.port_blocks);
    let mut flags = 0;

    if matchers.iter().any(|m| m.local.is_some()) {
        flags |= RULESET_HAS_LOCAL;
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
    let any_bits = matchers.iter().enumerate().filter(|(_, m)| m.protocol.is_none()).map(|(bit, _)| bit);
    any_protocol.update(&mut table.pool, any_bits, true);
    compiled.port_entries.push(PortEntry { band: 0, protocol: None, vector: table.intern(any_protocol.clone()) });
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
            let intervals = port_intervals(&any_protocol, &ranges, &mut table.pool);
            tables[which as usize] = port_table(intervals, &mut table, &mut compiled.port_blocks);
        } else {
            let mut bits = any_protocol.clone();
            bits.update(&mut table.pool, ranges.iter().map(|(bit, _)| *bit), true);
            let vector = table.intern(bits);
            compiled.port_entries.push(PortEntry { band: 0, protocol: Some(protocol), vector });
        }
    }

    if matchers.iter().any(|m| m.source_ports.is_some()) {
        flags |= RULESET_HAS_SOURCE_PORT;
        let mut unconstrained = Bits::new(words);
        let mut ranges = Vec::new();
        let mut free = Vec::new();
        for (bit, m) in matchers.iter().enumerate() {
            match m.source_ports {
                Some(r) => ranges.push((bit, r)),
                None => free.push(bit),
            }
        }
        unconstrained.update(&mut table.pool, free, true);
        let intervals = port_intervals(&unconstrained, &ranges, &mut table.pool);
        tables[port_table::SOURCE as usize] = port_table(intervals, &mut table, &mut compiled.port_blocks);
    }
    tables[port_table::PEER_V4 as usize] = peer_v4;
    compiled.port_tables = tables;
    (compiled.vectors, compiled.chunks) = chunked(&table.vectors, &table.pool);
    compiled.bands = vec![Band {
        first_rule: 0,
        rule_count: matchers.len() as u32,
        flags,
        first_table: 0,
        first_peer_v6: 0,
        peer_v6_count: compiled.peer_v6.len() as u32,
        peer_v6_root,
    }];
    Ok(compiled)
}

/// The vectors as summaries and rows of chunk numbers, and the chunks they point to:
/// those of `pool` some vector names, numbered in the order vectors first name them.
fn chunked(vectors: &[Bits], pool: &ChunkPool) -> (Vec<RuleVector>, Vec<RuleChunk>) {
    let mut renumbered: Vec<u32> = vec![u32::MAX; pool.chunks.len()];
    let mut chunks: Vec<RuleChunk> = Vec::new();
    let rows = vectors
        .iter()
        .map(|v| {
            let mut row = RuleVector::default();
            for (c, &n) in v.0.iter().enumerate() {
                if n != ChunkPool::ZERO {
                    row.summary |= 1 << c;
                }
                let number = &mut renumbered[n as usize];
                if *number == u32::MAX {
                    chunks.push(pool.chunks[n as usize]);
                    *number = (chunks.len() - 1) as u32;
                }
                row.chunks[c] = *number;
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
    /// The words of the widest band's vectors.
    pub fn words(&self) -> usize {
        self.bands.iter().map(|b| b.rule_count as usize).max().unwrap_or(0).div_ceil(64)
    }

    /// Appends `part`, a rule set of one band, as band `b`: its entries renumbered past
    /// the ones already here.
    fn append_band(&mut self, part: Compiled, b: u8) {
        let [vectors, chunks, blocks] =
            [self.vectors.len(), self.chunks.len(), self.port_blocks.len()].map(|n| n as u32);
        // A table or block entry: a vector, a block, or an IPv6 leaf (counted from the
        // band's own first interval, so it stays).
        let entry = |e: u32| {
            if e & PORT_BLOCK_REF != 0 {
                e + blocks
            } else if e & PEER_V6_BOUNDS != 0 {
                e
            } else {
                e + vectors
            }
        };
        let block = |mut t: PortBlock| {
            t.entries = t.entries.map(entry);
            t
        };
        let own = part.bands[0];
        self.bands.push(Band {
            first_rule: self.rules.len() as u32,
            first_table: self.port_tables.len() as u32,
            first_peer_v6: self.peer_v6.len() as u32,
            peer_v6_root: entry(own.peer_v6_root),
            ..own
        });
        self.rules.extend(part.rules);
        self.vectors.extend(part.vectors.into_iter().map(|mut v| {
            v.chunks = v.chunks.map(|c| c + chunks);
            v
        }));
        self.chunks.extend(part.chunks);
        self.peer_v6.extend(part.peer_v6.into_iter().map(|p| PeerV6Bound { vector: p.vector + vectors, ..p }));
        self.addr_entries.extend(part.addr_entries.into_iter().map(|e| AddrEntry {
            band: b,
            vector: e.vector + vectors,
            ..e
        }));
        self.port_entries.extend(part.port_entries.into_iter().map(|e| PortEntry {
            band: b,
            vector: e.vector + vectors,
            ..e
        }));
        self.port_tables.extend(part.port_tables.into_iter().map(block));
        self.port_blocks.extend(part.port_blocks.into_iter().map(block));
    }

    /// Word `w` of vector `v`, through its chunk as the kernel reads it.
    fn word(&self, v: &RuleVector, w: usize) -> u64 {
        self.chunks[v.chunks[w / CHUNK_WORDS] as usize].words[w % CHUNK_WORDS]
    }

    /// The words of vector `index` (as wide as the widest band).
    pub fn vector_words(&self, index: u32) -> Vec<u64> {
        let v = &self.vectors[index as usize];
        (0..self.words()).map(|w| self.word(v, w)).collect()
    }

    fn addr_lookup(&self, b: usize, field: u8, addr: IpAddr) -> Option<&RuleVector> {
        let band = &self.bands[b];
        if let (field::PEER, IpAddr::V4(v4)) = (field, addr) {
            let root = self.port_tables.get((band.first_table + port_table::PEER_V4) as usize)?;
            let mut entry = root.entries[usize::from(v4.octets()[0])];
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
            let first = band.first_peer_v6 as usize;
            let bounds = self.peer_v6.get(first..first + band.peer_v6_count as usize)?;
            let vector = peer_v6::lookup(band.peer_v6_root, &self.port_blocks, bounds, &v6.octets())?;
            return self.vectors.get(vector as usize);
        }
        self.addr_entries
            .iter()
            .filter(|e| usize::from(e.band) == b && e.field == field && e.net.contains(&addr))
            .max_by_key(|e| e.net.prefix_len())
            .map(|e| &self.vectors[e.vector as usize])
    }

    fn port_lookup(&self, b: usize, field: u8, protocol: u8, port: u16) -> Option<&RuleVector> {
        let table = match (field, protocol) {
            (field::SOURCE_PORT, _) => Some(port_table::SOURCE),
            (_, ip_proto::TCP) => Some(port_table::TCP_DESTINATION),
            (_, ip_proto::UDP) => Some(port_table::UDP_DESTINATION),
            (_, ip_proto::ICMP) => Some(port_table::ICMP),
            (_, ip_proto::ICMPV6) => Some(port_table::ICMPV6),
            _ => None,
        };
        if let Some(table) = table {
            let first =
                self.port_tables.get((self.bands[b].first_table + table) as usize)?.entries[usize::from(port >> 8)];
            let vector = if first & PORT_BLOCK_REF == 0 {
                first
            } else {
                self.port_blocks.get((first & !PORT_BLOCK_REF) as usize)?.entries[usize::from(port & 0xff)]
            };
            return self.vectors.get(vector as usize);
        }
        // Other protocols: their own entry, else the any-protocol one.
        let entries = || self.port_entries.iter().filter(|e| usize::from(e.band) == b);
        entries()
            .find(|e| e.protocol == Some(protocol))
            .or_else(|| entries().find(|e| e.protocol.is_none()))
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
        for (b, band) in self.bands.iter().enumerate() {
            let mut fields = vec![
                self.addr_lookup(b, field::PEER, peer)?,
                self.port_lookup(b, field::DESTINATION_PORT, protocol, dst_port)?,
            ];
            if band.flags & RULESET_HAS_LOCAL != 0 {
                fields.push(self.addr_lookup(b, field::LOCAL, local)?);
            }
            if band.flags & RULESET_HAS_SOURCE_PORT != 0 {
                fields.push(self.port_lookup(b, field::SOURCE_PORT, 0, src_port)?);
            }
            let found = (0..(band.rule_count as usize).div_ceil(64)).find_map(|w| {
                let word = fields.iter().fold(u64::MAX, |acc, v| acc & self.word(v, w));
                (word != 0).then(|| self.rules[band.first_rule as usize + w * 64 + word.trailing_zeros() as usize])
            })?;
            if found.step != step::NEXT_BAND {
                return Some(Simulated { verdict: found.verdict, step: found.step, rule_id: found.rule_id });
            }
        }
        None
    }
}

mod incremental;
mod numbering;
mod peer_v6;
#[cfg(test)]
mod tests;
