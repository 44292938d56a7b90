//! Compiling again after one rule's ports, protocol or action changed, from the rule
//! set compiled before rather than from every rule.
//!
//! A rule keeps its bit when its rank does not move, and then every vector of the new
//! set is a vector of the old one with that bit set or cleared where the rule's match
//! changed. When the rule's peers, local address and source ports are as before, only
//! the destination-port tables of its old and new protocol can change: each is expanded
//! to its 65,536 entries, the entries whose ports the rule now matches differently get
//! their vector with the bit flipped (interned, so equal vectors stay one), and the table
//! is cut into blocks again as a whole compile cuts it ([`cut`]), its new blocks taking
//! the places of its old ones. What nothing refers to any more (a vector the flip
//! replaced, a block no longer needed) stays until it adds up to a sixty-fourth of the
//! set, well within the room a spare range leaves ([`crate::dataplane::capacity`]'s
//! slack): then it is removed, the last entry moving into each hole, a pass over every
//! reference. Either way the numbering stays mostly as it was, so writing the set over
//! its predecessor's ranges finds most entries in place. Any other change is compiled
//! whole.
//!
//! The result decides every packet as a whole compile of the new rules does; it may
//! number vectors, chunks and blocks differently and hold a few entries no lookup
//! reaches (so can a whole compile: a prefix every address of which a longer one takes).

use std::hash::{BuildHasher as _, Hash};

use hashbrown::HashTable;
use rustc_hash::{FxBuildHasher, FxHashMap as HashMap};
use sg_common::{CHUNK_WORDS, PEER_V6_BOUNDS, PORT_BLOCK_REF, PortBlock, ip_proto, port_table};

use super::{Compiled, Matcher};

/// The port table of a protocol with tables.
fn table_of(protocol: Option<u8>) -> Option<u32> {
    match protocol? {
        ip_proto::TCP => Some(port_table::TCP_DESTINATION),
        ip_proto::UDP => Some(port_table::UDP_DESTINATION),
        ip_proto::ICMP => Some(port_table::ICMP),
        ip_proto::ICMPV6 => Some(port_table::ICMPV6),
        _ => None,
    }
}

/// `old` (compiled from `before`) turned into the rule set of `after`, when they differ
/// in one rule's destination ports, table protocol or decision only; `None` otherwise.
/// `garbage` counts the entries of `old` nothing may refer to; updated.
pub(super) fn recompile(
    old: &Compiled,
    before: &[Matcher],
    after: &[Matcher],
    garbage: &mut usize,
    interned: &mut Option<Interned>,
) -> Option<Compiled> {
    // A matcher added or removed moves the bits after it: compiled whole.
    if before.len() != after.len() {
        return None;
    }
    let mut differing = before.iter().zip(after).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i);
    let Some(bit) = differing.next() else { return Some(old.clone()) };
    if differing.next().is_some() {
        return None;
    }
    recompile_bit(old, (bit, &before[bit], &after[bit]), garbage, interned)
}

/// [`recompile`] when the matchers differ in bit `bit` alone, matcher `was` before and
/// `now` after.
pub(super) fn recompile_bit(
    old: &Compiled,
    (bit, was, now): (usize, &Matcher, &Matcher),
    garbage: &mut usize,
    interned: &mut Option<Interned>,
) -> Option<Compiled> {
    // A rule set in bands numbers its bits otherwise than its rules (the next-band
    // pseudo-rules between them): compiled whole.
    if old.bands.len() != 1 || bit >= old.rules.len() {
        return None;
    }
    if was.peers != now.peers || was.local != now.local || was.source_ports != now.source_ports {
        return None;
    }
    let (from, to) = (table_of(was.protocol)?, table_of(now.protocol)?);
    let mut c = old.clone();
    c.rules[bit] = now.info;
    if was.protocol == now.protocol && was.destination_ports == now.destination_ports {
        return Some(c);
    }
    let grown = c.vectors.len() + c.chunks.len();
    // Taken out: a recompile that fails part-way leaves none (the next one builds it).
    let mut flipper = Flipper::new(&c, bit, interned.take());
    let tables = if from == to { vec![from] } else { vec![from, to] };
    for table in tables {
        let mut by_port = expand(&c, table);
        // Ports of this table the rule matched before, and matches now.
        let (had, has) = (
            |port: u16| from == table && was.destination_ports.contains(port),
            |port: u16| to == table && now.destination_ports.contains(port),
        );
        for (t, range) in [(from, was.destination_ports), (to, now.destination_ports)] {
            if t != table {
                continue;
            }
            let ports = by_port.iter_mut().enumerate().take(usize::from(range.last) + 1).skip(usize::from(range.first));
            for (port, vector) in ports {
                let (had, has) = (had(port as u16), has(port as u16));
                if had != has {
                    *vector = flipper.flip(&mut c, *vector, has)?;
                }
            }
        }
        let mut places: Vec<usize> = c.port_tables[table as usize]
            .entries
            .iter()
            .filter_map(|&e| match entry(e) {
                Entry::Block(b) => Some(b),
                _ => None,
            })
            .collect();
        places.reverse();
        c.port_tables[table as usize] = cut(&by_port, &mut c.port_blocks, &mut places);
        *garbage += places.len();
    }
    // Each new vector or chunk may have replaced one nothing refers to now.
    *garbage += c.vectors.len() + c.chunks.len() - grown;
    if over_garbage_limit(&c, *garbage) {
        // Entries move: the index is built again when next needed.
        compact(&mut c);
        *garbage = 0;
    } else {
        *interned = Some(flipper.interned);
    }
    Some(c)
}

/// Whether `garbage` entries nothing refers to are more than a sixty-fourth of `c`'s
/// pooled entries: then [`compact`] removes them.
pub(super) fn over_garbage_limit(c: &Compiled, garbage: usize) -> bool {
    garbage * 64 > c.vectors.len() + c.chunks.len() + c.port_blocks.len()
}

/// Where each distinct vector and chunk of a compiled set is, by content: what a flip
/// interns against. Indexing a 16,384-rule set takes longer than the rest of a
/// recompile, so it is kept with the set from one recompile to the next (new entries
/// are added as they are appended; a compaction, which moves entries, drops it).
/// Lookups compare contents, so an entry that does not hold what it held when indexed
/// is never taken for it.
#[derive(Default)]
pub(super) struct Interned {
    vectors: HashTable<(u64, u32)>,
    chunks: HashTable<(u64, u32)>,
}

impl Interned {
    fn of(c: &Compiled) -> Self {
        let mut this = Self::default();
        index_all(&mut this.vectors, &c.vectors);
        index_all(&mut this.chunks, &c.chunks);
        this
    }
}

/// Records each entry of `items` not equal to an earlier one (the first of equals wins).
fn index_all<T: Hash + Eq>(table: &mut HashTable<(u64, u32)>, items: &[T]) {
    for (i, item) in items.iter().enumerate() {
        let hash = FxBuildHasher.hash_one(item);
        if find(table, items, item, hash).is_none() {
            table.insert_unique(hash, (hash, i as u32), |&(h, _)| h);
        }
    }
}

/// The number of an indexed entry of `items` equal to `item` (of hash `hash`).
fn find<T: Eq>(table: &HashTable<(u64, u32)>, items: &[T], item: &T, hash: u64) -> Option<u32> {
    table.find(hash, |&(h, i)| h == hash && items.get(i as usize) == Some(item)).map(|&(_, i)| i)
}

/// The number of an entry of `items` equal to `item`, appended and indexed if none is.
fn intern<T: Hash + Eq>(table: &mut HashTable<(u64, u32)>, items: &mut Vec<T>, item: T) -> u32 {
    let hash = FxBuildHasher.hash_one(&item);
    if let Some(i) = find(table, items, &item, hash) {
        return i;
    }
    items.push(item);
    let i = (items.len() - 1) as u32;
    table.insert_unique(hash, (hash, i), |&(h, _)| h);
    i
}

/// Vectors with the bit flipped, interned among the set's.
struct Flipper {
    bit: usize,
    interned: Interned,
    done: HashMap<(u32, bool), u32>,
}

impl Flipper {
    fn new(c: &Compiled, bit: usize, interned: Option<Interned>) -> Self {
        Self { bit, interned: interned.unwrap_or_else(|| Interned::of(c)), done: HashMap::default() }
    }

    /// Vector `v` with the bit `on`; `None` when it already was (the set is not what
    /// the rules before compiled to).
    fn flip(&mut self, c: &mut Compiled, v: u32, on: bool) -> Option<u32> {
        if let Some(&done) = self.done.get(&(v, on)) {
            return Some(done);
        }
        const CHUNK_BITS: usize = CHUNK_WORDS * 64;
        let (column, word, mask) = (self.bit / CHUNK_BITS, (self.bit % CHUNK_BITS) / 64, 1u64 << (self.bit % 64));
        let mut vector = *c.vectors.get(v as usize)?;
        let mut chunk = c.chunks[vector.chunks[column] as usize];
        if (chunk.words[word] & mask != 0) == on {
            return None;
        }
        chunk.words[word] ^= mask;
        vector.chunks[column] = intern(&mut self.interned.chunks, &mut c.chunks, chunk);
        if chunk.words.iter().any(|&w| w != 0) {
            vector.summary |= 1 << column;
        } else {
            vector.summary &= !(1 << column);
        }
        let flipped = intern(&mut self.interned.vectors, &mut c.vectors, vector);
        self.done.insert((v, on), flipped);
        Some(flipped)
    }
}

/// Port table `table` as the vector of each of the 65,536 ports.
fn expand(c: &Compiled, table: u32) -> Vec<u32> {
    let mut by_port = vec![0u32; 65536];
    for (high, &entry) in c.port_tables[table as usize].entries.iter().enumerate() {
        let ports = &mut by_port[high * 256..(high + 1) * 256];
        if entry & PORT_BLOCK_REF == 0 {
            ports.fill(entry);
        } else {
            ports.copy_from_slice(&c.port_blocks[(entry & !PORT_BLOCK_REF) as usize].entries);
        }
    }
    by_port
}

/// The first-level table over `by_port` (the vector of each port): an entry per 256
/// ports, the vector when they all have the same, else a reference to a second-level
/// block of them, written over `places` (taken from the end) and then appended to
/// `blocks`. Whole compiles cut their tables the same way, with no places.
pub(super) fn cut(by_port: &[u32], blocks: &mut Vec<PortBlock>, places: &mut Vec<usize>) -> PortBlock {
    let mut first = PortBlock::default();
    for (high, ports) in by_port.chunks(256).enumerate() {
        first.entries[high] = if ports.iter().all(|&v| v == ports[0]) {
            ports[0]
        } else {
            let mut block = PortBlock::default();
            block.entries.copy_from_slice(ports);
            let at = match places.pop() {
                Some(at) => {
                    blocks[at] = block;
                    at
                }
                None => {
                    blocks.push(block);
                    blocks.len() - 1
                }
            };
            PORT_BLOCK_REF | at as u32
        };
    }
    first
}

/// What a table or block entry refers to.
enum Entry {
    Vector(usize),
    Block(usize),
    /// An IPv6 peer leaf: bounds, which refer to vectors themselves.
    Leaf,
}

fn entry(e: u32) -> Entry {
    if e & PORT_BLOCK_REF != 0 {
        Entry::Block((e & !PORT_BLOCK_REF) as usize)
    } else if e & PEER_V6_BOUNDS != 0 {
        Entry::Leaf
    } else {
        Entry::Vector(e as usize)
    }
}

/// Removes the blocks, vectors and chunks nothing reachable refers to, and renumbers
/// the references.
pub(super) fn compact(c: &mut Compiled) {
    // Blocks reachable from the tables and the IPv6 root.
    let mut live_blocks = vec![false; c.port_blocks.len()];
    let mut stack: Vec<usize> = c
        .port_tables
        .iter()
        .flat_map(|t| t.entries.iter())
        .chain(c.bands.iter().map(|b| &b.peer_v6_root))
        .filter_map(|&e| match entry(e) {
            Entry::Block(b) => Some(b),
            _ => None,
        })
        .collect();
    while let Some(b) = stack.pop() {
        if std::mem::replace(&mut live_blocks[b], true) {
            continue;
        }
        stack.extend(c.port_blocks[b].entries.iter().filter_map(|&e| match entry(e) {
            Entry::Block(child) => Some(child),
            _ => None,
        }));
    }
    let block_to = fill_holes(&mut c.port_blocks, &live_blocks);
    // Vectors referred to by live entries, bounds and trie entries.
    let mut live_vectors = vec![false; c.vectors.len()];
    let tables = c.port_tables.iter().chain(&c.port_blocks);
    for &e in tables.flat_map(|t| t.entries.iter()).chain(c.bands.iter().map(|b| &b.peer_v6_root)) {
        if let Entry::Vector(v) = entry(e) {
            live_vectors[v] = true;
        }
    }
    for v in c.peer_v6.iter().map(|b| b.vector).chain(c.addr_entries.iter().map(|e| e.vector)) {
        live_vectors[v as usize] = true;
    }
    for v in c.port_entries.iter().map(|e| e.vector) {
        live_vectors[v as usize] = true;
    }
    let vector_to = fill_holes(&mut c.vectors, &live_vectors);
    let renumber = |e: &mut u32| match entry(*e) {
        Entry::Block(b) => *e = PORT_BLOCK_REF | block_to[b],
        Entry::Vector(v) => *e = vector_to[v],
        Entry::Leaf => {}
    };
    for t in c.port_tables.iter_mut().chain(c.port_blocks.iter_mut()) {
        t.entries.iter_mut().for_each(renumber);
    }
    c.bands.iter_mut().for_each(|b| renumber(&mut b.peer_v6_root));
    c.peer_v6.iter_mut().for_each(|b| b.vector = vector_to[b.vector as usize]);
    c.addr_entries.iter_mut().for_each(|e| e.vector = vector_to[e.vector as usize]);
    c.port_entries.iter_mut().for_each(|e| e.vector = vector_to[e.vector as usize]);
    // Chunks the remaining vectors' rows name.
    let mut live_chunks = vec![false; c.chunks.len()];
    for v in &c.vectors {
        v.chunks.iter().for_each(|&n| live_chunks[n as usize] = true);
    }
    let chunk_to = fill_holes(&mut c.chunks, &live_chunks);
    for v in &mut c.vectors {
        v.chunks.iter_mut().for_each(|n| *n = chunk_to[*n as usize]);
    }
}

/// Removes the items not `live`, moving the last live item into each hole; returns each
/// old index's new one (dead ones: `u32::MAX`).
fn fill_holes<T: Copy>(items: &mut Vec<T>, live: &[bool]) -> Vec<u32> {
    let mut to: Vec<u32> = (0..items.len() as u32).collect();
    let mut live = live.to_vec();
    let mut hole = 0;
    let mut end = items.len();
    loop {
        while hole < end && live[hole] {
            hole += 1;
        }
        while end > hole && !live[end - 1] {
            to[end - 1] = u32::MAX;
            end -= 1;
        }
        if hole >= end {
            break;
        }
        // `hole` is dead, `end - 1` live: move it down.
        to[hole] = u32::MAX;
        items[hole] = items[end - 1];
        to[end - 1] = hole as u32;
        live[hole] = true;
        end -= 1;
    }
    items.truncate(end);
    to
}

#[cfg(test)]
pub(super) mod tests;
