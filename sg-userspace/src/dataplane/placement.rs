//! Which entries of a compiled rule set to write into its array ranges, given what
//! those ranges already hold, so that writing it changes only the entries that differ.
//!
//! A new rule set is written into ranges no packet reads (beside the live set). When
//! those ranges held the rule set replaced the apply before last, most of the new set
//! is already there: a one-rule change alters a few vectors, the chunks holding the
//! rule's bit and the port blocks pointing to them. Every entry goes to its own index
//! and is written where it differs. That finds the equal entries because the compile
//! keeps the numbering from one set to the next: an incremental compile changes it only
//! where the rule's bit flipped, and a set compiled whole is renumbered like the one
//! before it (`policy::compile`'s numbering). Unknown contents (fresh ranges) mean
//! everything is written.
//!
//! When the ranges hold a compiled set entry for entry (as every write leaves them),
//! comparing the two compiled sets entry by entry finds what differs without relocating
//! anything ([`plan_in_place`]); recorded contents without that set (a write that
//! failed part-way) are compared entry by entry ([`plan_at_own_index`]).

use std::sync::Arc;

use sg_common::{PEER_V6_BOUNDS, PORT_BLOCK_REF, PeerV6Bound, PortBlock, RuleChunk, RuleInfo, RuleVector};

use crate::policy::compile::Compiled;

/// What each entry of a rule set's array ranges holds, as far as userspace knows (`None`:
/// unknown). Each list is as long as its range.
#[derive(Clone, Debug, Default)]
pub struct Contents {
    pub vectors: Vec<Option<RuleVector>>,
    pub chunks: Vec<Option<RuleChunk>>,
    pub peer_v6: Vec<Option<PeerV6Bound>>,
    pub rules: Vec<Option<RuleInfo>>,
    pub tables: Vec<Option<PortBlock>>,
    pub blocks: Vec<Option<PortBlock>>,
    /// The compiled set (and its bits' handles) the ranges hold at its own numbering,
    /// when they do: what [`plan_in_place`] compares with.
    pub in_place: Option<(Arc<Compiled>, Vec<u32>)>,
    /// Every entry is unknown (fresh ranges, nothing recorded since): a plan then writes
    /// everything at its own index and need not look for equal entries.
    pub nothing_known: bool,
}

impl Contents {
    /// Ranges of these lengths whose contents are unknown.
    pub fn unknown(lens: [usize; 6]) -> Self {
        let [vectors, chunks, peer_v6, rules, tables, blocks] = lens;
        Self {
            vectors: vec![None; vectors],
            chunks: vec![None; chunks],
            peer_v6: vec![None; peer_v6],
            rules: vec![None; rules],
            tables: vec![None; tables],
            blocks: vec![None; blocks],
            in_place: None,
            nothing_known: true,
        }
    }

    /// Records that `plan`'s entries were written.
    pub fn record(&mut self, plan: &Plan) {
        self.nothing_known = false;
        fn put<T: Copy>(to: &mut [Option<T>], writes: &Writes<T>) {
            for (at, value) in writes {
                to[*at as usize] = Some(*value);
            }
        }
        put(&mut self.vectors, &plan.vectors);
        put(&mut self.chunks, &plan.chunks);
        put(&mut self.peer_v6, &plan.peer_v6);
        put(&mut self.rules, &plan.rules);
        put(&mut self.tables, &plan.tables);
        put(&mut self.blocks, &plan.blocks);
    }

    /// The lengths of the ranges, in the order of [`Contents::unknown`].
    pub fn lens(&self) -> [usize; 6] {
        [
            self.vectors.len(),
            self.chunks.len(),
            self.peer_v6.len(),
            self.rules.len(),
            self.tables.len(),
            self.blocks.len(),
        ]
    }
}

/// The entries of one array to write: (position in the range, value).
pub type Writes<T> = Vec<(u32, T)>;

/// A compiled rule set laid out over known contents: what to write where, each entry's
/// value already relocated (chunk, vector and block numbers as the maps hold them).
#[derive(Debug, Default)]
pub struct Plan {
    pub chunks: Writes<RuleChunk>,
    pub vectors: Writes<RuleVector>,
    pub peer_v6: Writes<PeerV6Bound>,
    pub rules: Writes<RuleInfo>,
    pub tables: Writes<PortBlock>,
    pub blocks: Writes<PortBlock>,
    /// Each band's IPv6 peer table root entry, relocated.
    pub peer_v6_roots: Vec<u32>,
}

impl Plan {
    /// Entries this plan writes.
    pub fn entries(&self) -> usize {
        self.chunks.len()
            + self.vectors.len()
            + self.peer_v6.len()
            + self.rules.len()
            + self.tables.len()
            + self.blocks.len()
    }
}

/// The first position of each range in its map: relocated numbers are absolute.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bases {
    pub vectors: u32,
    pub chunks: u32,
    pub blocks: u32,
}

/// The plan for `c` over `known` with every entry at its own index, written where the
/// ranges hold something else: what [`plan_in_place`] writes, for ranges whose contents
/// are recorded entry by entry but hold no compiled set at its numbering (a write that
/// failed part-way), at the cost of relocating every entry to compare it. Such a write
/// leaves them at the new set's numbering again. `None` when a range is too short.
pub fn plan_at_own_index(c: &Compiled, handles: &[u32], known: &Contents, bases: Bases) -> Option<Plan> {
    let counts =
        [c.vectors.len(), c.chunks.len(), c.peer_v6.len(), c.rules.len(), c.port_tables.len(), c.port_blocks.len()];
    if counts.iter().zip(known.lens()).any(|(n, len)| *n > len) {
        return None;
    }
    let mut plan = Plan::default();
    for (i, chunk) in c.chunks.iter().enumerate() {
        write_if_new(&mut plan.chunks, &known.chunks, i as u32, *chunk);
    }
    for (i, v) in c.vectors.iter().enumerate() {
        let mut out = *v;
        out.chunks.iter_mut().for_each(|n| *n += bases.chunks);
        write_if_new(&mut plan.vectors, &known.vectors, i as u32, out);
    }
    let relocate = |e: u32| relocate_entry(e, bases);
    for (i, block) in c.port_blocks.iter().enumerate() {
        write_if_new(&mut plan.blocks, &known.blocks, i as u32, relocate_block(block, &relocate));
    }
    for (i, table) in c.port_tables.iter().enumerate() {
        write_if_new(&mut plan.tables, &known.tables, i as u32, relocate_block(table, &relocate));
    }
    for (i, bound) in c.peer_v6.iter().enumerate() {
        let relocated = PeerV6Bound { vector: bases.vectors + bound.vector, ..*bound };
        write_if_new(&mut plan.peer_v6, &known.peer_v6, i as u32, relocated);
    }
    debug_assert_eq!(handles.len(), c.rules.len());
    for (i, (info, handle)) in c.rules.iter().zip(handles).enumerate() {
        write_if_new(&mut plan.rules, &known.rules, i as u32, RuleInfo { rule_id: *handle, ..*info });
    }
    plan.peer_v6_roots = c.bands.iter().map(|b| relocate(b.peer_v6_root)).collect();
    Some(plan)
}

/// The plan for `c` over fresh ranges ([`Contents::nothing_known`]): every entry, each
/// at its own index, without looking for equal ones: [`plan_in_place`] over an empty set.
/// `None` when a range is too short.
pub fn plan_whole(c: &Compiled, handles: &[u32], known: &Contents, bases: Bases) -> Option<Plan> {
    plan_in_place(c, handles, &Compiled::default(), &[], known, bases)
}

/// The plan for `c` (bits' handles `handles`) over ranges that hold `was` (handles
/// `was_handles`) at its numbering: each entry at its own index, written where it
/// differs from `was`'s. `None` when a range is too short.
///
/// A set numbered otherwise than `was` (compiled whole) writes more this way than
/// [`plan`], which finds equal entries wherever they are; the caller picks the plan that
/// writes less (this one when it writes only a few entries, without planning the other).
pub fn plan_in_place(
    c: &Compiled,
    handles: &[u32],
    was: &Compiled,
    was_handles: &[u32],
    known: &Contents,
    bases: Bases,
) -> Option<Plan> {
    let counts =
        [c.vectors.len(), c.chunks.len(), c.peer_v6.len(), c.rules.len(), c.port_tables.len(), c.port_blocks.len()];
    if counts.iter().zip(known.lens()).any(|(n, len)| *n > len) {
        return None;
    }
    fn differing<'a, T: PartialEq>(new: &'a [T], old: &'a [T]) -> impl Iterator<Item = (u32, &'a T)> {
        new.iter().enumerate().filter(move |(i, v)| old.get(*i) != Some(v)).map(|(i, v)| (i as u32, v))
    }
    // Every entry at its own index.
    let relocate = |e: u32| relocate_entry(e, bases);
    let mut plan = Plan {
        chunks: differing(&c.chunks, &was.chunks).map(|(i, v)| (i, *v)).collect(),
        vectors: differing(&c.vectors, &was.vectors)
            .map(|(i, v)| {
                let mut out = *v;
                out.chunks.iter_mut().for_each(|n| *n += bases.chunks);
                (i, out)
            })
            .collect(),
        blocks: differing(&c.port_blocks, &was.port_blocks).map(|(i, b)| (i, relocate_block(b, &relocate))).collect(),
        tables: differing(&c.port_tables, &was.port_tables).map(|(i, b)| (i, relocate_block(b, &relocate))).collect(),
        peer_v6: differing(&c.peer_v6, &was.peer_v6)
            .map(|(i, b)| (i, PeerV6Bound { vector: bases.vectors + b.vector, ..*b }))
            .collect(),
        ..Plan::default()
    };
    debug_assert_eq!(handles.len(), c.rules.len());
    for (i, (info, handle)) in c.rules.iter().zip(handles).enumerate() {
        if was.rules.get(i) != Some(info) || was_handles.get(i) != Some(handle) {
            plan.rules.push((i as u32, RuleInfo { rule_id: *handle, ..*info }));
        }
    }
    plan.peer_v6_roots = c.bands.iter().map(|b| relocate(b.peer_v6_root)).collect();
    Some(plan)
}

fn write_if_new<T: PartialEq + Copy>(writes: &mut Writes<T>, known: &[Option<T>], at: u32, value: T) {
    if known[at as usize] != Some(value) {
        writes.push((at, value));
    }
}

/// A table or block entry as the maps hold it: vector numbers and block references
/// made absolute (the set's numbering plus its range's first position); IPv6 leaves
/// (relative to the set's first bound, which stays positional) as they are.
fn relocate_entry(e: u32, bases: Bases) -> u32 {
    if e & PORT_BLOCK_REF != 0 {
        PORT_BLOCK_REF | (bases.blocks + (e & !PORT_BLOCK_REF))
    } else if e & PEER_V6_BOUNDS != 0 {
        e
    } else {
        bases.vectors + e
    }
}

fn relocate_block(block: &PortBlock, relocate: &impl Fn(u32) -> u32) -> PortBlock {
    let mut out = *block;
    out.entries.iter_mut().for_each(|e| *e = relocate(*e));
    out
}

#[cfg(test)]
mod tests;
