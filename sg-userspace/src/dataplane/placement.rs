//! Where each entry of a compiled rule set goes in its array ranges, given what those
//! ranges already hold, so that writing it changes only the entries that differ.
//!
//! A new rule set is written into ranges no packet reads (beside the live set). When
//! those ranges held the rule set replaced the apply before last, and userspace knows
//! their contents entry by entry ([`Contents`]), most of the new set is already there: a
//! one-rule change alters a few vectors, the chunks holding the rule's bit and the port
//! blocks pointing to them. Entries of the pooled arrays (chunks, vectors, port and
//! peer blocks) are referred to by number, so they can go wherever an equal entry
//! already is ([`place`]); the rest (rule info, IPv6 bounds, first-level tables) is
//! positional and written where it differs. Unknown contents (fresh ranges) mean
//! everything is written, as before.
//!
//! When the ranges hold a compiled set entry for entry at its own numbering (as every
//! whole write and every plan that kept each entry at its index leaves them), and the new
//! set numbers its entries mostly as that one did (an incremental compile keeps the
//! numbering), comparing the two compiled sets entry by entry finds what differs without
//! relocating or hashing anything ([`plan_in_place`]).

use std::hash::Hash;
use std::sync::Arc;

use rustc_hash::FxHashMap;

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
    /// Where each of the compiled set's vectors went (a position in the vector range),
    /// for the trie entries.
    pub vector_at: Vec<u32>,
    /// Each band's IPv6 peer table root entry, relocated.
    pub peer_v6_roots: Vec<u32>,
    /// Every chunk, vector and block went to its own index: the ranges then hold the set
    /// at its numbering ([`Contents::in_place`]).
    pub in_place: bool,
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

/// Positions for `items` (distinct) in a range holding `slots`: an item equal to a slot
/// not yet taken goes there, its own index first (a compare, no hashing: when nothing
/// shifted, that is every item); the others go to the remaining positions, their own
/// index first when it is free (so an entry that changed in place keeps its number, and
/// what refers to it stays as it is). Returns each item's position, or `None` when the
/// range is shorter than the items.
pub fn place<T: Hash + Eq>(items: &[T], slots: &[Option<T>]) -> Option<Vec<u32>> {
    if items.len() > slots.len() {
        return None;
    }
    let mut taken = vec![false; slots.len()];
    let mut position: Vec<Option<u32>> = vec![None; items.len()];
    let mut index = Index::default();
    for (i, item) in items.iter().enumerate() {
        if slots[i].as_ref() == Some(item) {
            taken[i] = true;
            position[i] = Some(i as u32);
        }
    }
    for (i, item) in items.iter().enumerate() {
        if position[i].is_none() {
            position[i] = index.take(item, slots, &mut taken);
        }
    }
    fill_the_rest(0..position.len(), &mut position, &mut taken);
    Some(position.into_iter().map(|p| p.expect("every item placed")).collect())
}

/// The positions of a range's known entries not taken yet, by value; built on the first
/// lookup (most plans need none).
struct Index<'a, T> {
    at: Option<FxHashMap<&'a T, Vec<u32>>>,
}

impl<T> Default for Index<'_, T> {
    fn default() -> Self {
        Self { at: None }
    }
}

impl<'a, T: Hash + Eq> Index<'a, T> {
    /// A position holding `item`, not taken yet; taken now.
    fn take(&mut self, item: &T, slots: &'a [Option<T>], taken: &mut [bool]) -> Option<u32> {
        let at = self.at.get_or_insert_with(|| {
            let mut at: FxHashMap<&T, Vec<u32>> = FxHashMap::default();
            for (i, slot) in slots.iter().enumerate().rev() {
                if let (Some(value), false) = (slot, taken[i]) {
                    at.entry(value).or_default().push(i as u32);
                }
            }
            at
        });
        loop {
            let p = at.get_mut(item)?.pop()?;
            if !taken[p as usize] {
                taken[p as usize] = true;
                return Some(p);
            }
        }
    }
}

/// Gives each unplaced item (`None`), in `order`, a free position: its own index when
/// free, else the lowest free one.
fn fill_the_rest(order: impl IntoIterator<Item = usize>, position: &mut [Option<u32>], taken: &mut [bool]) {
    let mut next_free = 0usize;
    for i in order {
        if position[i].is_some() {
            continue;
        }
        let p = if !taken[i] {
            i
        } else {
            while taken[next_free] {
                next_free += 1;
            }
            next_free
        };
        taken[p] = true;
        position[i] = Some(p as u32);
    }
}

/// Lays `c` out over `known` (the ranges' current contents, with their first positions
/// `bases`): `handles` are the rule-info ids of its bits. `None` when a range is too
/// short for the set.
pub fn plan(c: &Compiled, handles: &[u32], known: &Contents, bases: Bases) -> Option<Plan> {
    plan_with(c, handles, known, bases, true)
}

/// The plan for `c` over `known` with every entry at its own index, written where the
/// ranges hold something else: what [`plan_in_place`] writes, for ranges that hold no
/// compiled set at its numbering (a [`plan`] that moved entries wrote them last), at
/// the cost of relocating every entry to compare it. Such a write leaves them at the
/// new set's numbering again. `None` when a range is too short.
pub fn plan_at_own_index(c: &Compiled, handles: &[u32], known: &Contents, bases: Bases) -> Option<Plan> {
    plan_with(c, handles, known, bases, false)
}

/// [`plan`] (`search`: equal entries are looked for wherever they are) or
/// [`plan_at_own_index`].
fn plan_with(c: &Compiled, handles: &[u32], known: &Contents, bases: Bases, search: bool) -> Option<Plan> {
    let counts =
        [c.vectors.len(), c.chunks.len(), c.peer_v6.len(), c.rules.len(), c.port_tables.len(), c.port_blocks.len()];
    if counts.iter().zip(known.lens()).any(|(n, len)| *n > len) {
        return None;
    }
    let own = |n: usize| (0..n as u32).collect::<Vec<u32>>();
    let mut plan = Plan::default();
    let chunk_at = if search { place(&c.chunks, &known.chunks)? } else { own(c.chunks.len()) };
    for (i, chunk) in c.chunks.iter().enumerate() {
        write_if_new(&mut plan.chunks, &known.chunks, chunk_at[i], *chunk);
    }
    let vectors: Vec<RuleVector> = c
        .vectors
        .iter()
        .map(|v| {
            let mut out = *v;
            out.chunks.iter_mut().for_each(|n| *n = bases.chunks + chunk_at.get(*n as usize).copied().unwrap_or(0));
            out
        })
        .collect();
    let vector_at = if search { place(&vectors, &known.vectors)? } else { own(vectors.len()) };
    for (i, v) in vectors.iter().enumerate() {
        write_if_new(&mut plan.vectors, &known.vectors, vector_at[i], *v);
    }
    let block_at =
        if search { place_blocks(&c.port_blocks, &known.blocks, &vector_at, bases)? } else { own(c.port_blocks.len()) };
    let relocate = |e: u32| relocate_entry(e, |v| vector_at[v as usize], |b| block_at[b as usize], bases);
    for (i, block) in c.port_blocks.iter().enumerate() {
        write_if_new(&mut plan.blocks, &known.blocks, block_at[i], relocate_block(block, &relocate));
    }
    for (i, table) in c.port_tables.iter().enumerate() {
        write_if_new(&mut plan.tables, &known.tables, i as u32, relocate_block(table, &relocate));
    }
    for (i, bound) in c.peer_v6.iter().enumerate() {
        let relocated = PeerV6Bound { vector: bases.vectors + vector_at[bound.vector as usize], ..*bound };
        write_if_new(&mut plan.peer_v6, &known.peer_v6, i as u32, relocated);
    }
    debug_assert_eq!(handles.len(), c.rules.len());
    for (i, (info, handle)) in c.rules.iter().zip(handles).enumerate() {
        write_if_new(&mut plan.rules, &known.rules, i as u32, RuleInfo { rule_id: *handle, ..*info });
    }
    plan.peer_v6_roots = c.bands.iter().map(|b| relocate(b.peer_v6_root)).collect();
    let identity = |at: &[u32]| at.iter().enumerate().all(|(i, &p)| p == i as u32);
    plan.in_place = identity(&chunk_at) && identity(&vector_at) && identity(&block_at);
    plan.vector_at = vector_at;
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
    let relocate = |e: u32| relocate_entry(e, |v| v, |b| b, bases);
    let mut plan = Plan { in_place: true, ..Plan::default() };
    plan.chunks = differing(&c.chunks, &was.chunks).map(|(i, v)| (i, *v)).collect();
    plan.vectors = differing(&c.vectors, &was.vectors)
        .map(|(i, v)| {
            let mut out = *v;
            out.chunks.iter_mut().for_each(|n| *n += bases.chunks);
            (i, out)
        })
        .collect();
    plan.blocks = differing(&c.port_blocks, &was.port_blocks).map(|(i, b)| (i, relocate_block(b, &relocate))).collect();
    plan.tables = differing(&c.port_tables, &was.port_tables).map(|(i, b)| (i, relocate_block(b, &relocate))).collect();
    plan.peer_v6 = differing(&c.peer_v6, &was.peer_v6)
        .map(|(i, b)| (i, PeerV6Bound { vector: bases.vectors + b.vector, ..*b }))
        .collect();
    debug_assert_eq!(handles.len(), c.rules.len());
    for (i, (info, handle)) in c.rules.iter().zip(handles).enumerate() {
        if was.rules.get(i) != Some(info) || was_handles.get(i) != Some(handle) {
            plan.rules.push((i as u32, RuleInfo { rule_id: *handle, ..*info }));
        }
    }
    plan.peer_v6_roots = c.bands.iter().map(|b| relocate(b.peer_v6_root)).collect();
    plan.vector_at = (0..c.vectors.len() as u32).collect();
    Some(plan)
}

fn write_if_new<T: PartialEq + Copy>(writes: &mut Writes<T>, known: &[Option<T>], at: u32, value: T) {
    if known[at as usize] != Some(value) {
        writes.push((at, value));
    }
}

/// A table or block entry as the maps hold it: vector numbers and block references
/// moved to where the plan put them (`vector_at`, `block_at`: position in its range of
/// a compiled number); IPv6 leaves (relative to the set's first bound, which stays
/// positional) as they are.
fn relocate_entry(e: u32, vector_at: impl Fn(u32) -> u32, block_at: impl Fn(u32) -> u32, bases: Bases) -> u32 {
    if e & PORT_BLOCK_REF != 0 {
        PORT_BLOCK_REF | (bases.blocks + block_at(e & !PORT_BLOCK_REF))
    } else if e & PEER_V6_BOUNDS != 0 {
        e
    } else {
        bases.vectors + vector_at(e)
    }
}

fn relocate_block(block: &PortBlock, relocate: &impl Fn(u32) -> u32) -> PortBlock {
    let mut out = *block;
    out.entries.iter_mut().for_each(|e| *e = relocate(*e));
    out
}

/// [`place`] for blocks, which refer to each other: a block's relocated contents depend
/// on where its children went. Blocks without children are matched first; a block with
/// children is matched once they all were (a changed child changes its parent); the
/// rest are given free positions children first, so every parent is relocated with its
/// children's final places.
fn place_blocks(
    blocks: &[PortBlock],
    slots: &[Option<PortBlock>],
    vector_at: &[u32],
    bases: Bases,
) -> Option<Vec<u32>> {
    if blocks.len() > slots.len() {
        return None;
    }
    let children = |b: &PortBlock| -> Vec<usize> {
        let mut out: Vec<usize> =
            b.entries.iter().filter(|e| *e & PORT_BLOCK_REF != 0).map(|e| (e & !PORT_BLOCK_REF) as usize).collect();
        out.dedup();
        out
    };
    let order = children_first(blocks.len(), |i| children(&blocks[i]));
    let mut taken = vec![false; slots.len()];
    let mut position: Vec<Option<u32>> = vec![None; blocks.len()];
    let mut index = Index::default();
    let relocated = |i: usize, position: &[Option<u32>]| -> Option<PortBlock> {
        let mut out = blocks[i];
        for e in &mut out.entries {
            *e = if *e & PORT_BLOCK_REF != 0 {
                PORT_BLOCK_REF | (bases.blocks + position[(*e & !PORT_BLOCK_REF) as usize]?)
            } else if *e & PEER_V6_BOUNDS != 0 {
                *e
            } else {
                bases.vectors + vector_at[*e as usize]
            };
        }
        Some(out)
    };
    // Matches, children first: a block whose children all kept an equal entry's place
    // may find its own equal, at its own index first.
    let mut unmatched = Vec::new();
    for &i in &order {
        let Some(content) = relocated(i, &position) else { continue };
        if !taken[i] && slots[i] == Some(content) {
            taken[i] = true;
            position[i] = Some(i as u32);
        } else {
            unmatched.push((i, content));
        }
    }
    // Blocks of changed children cannot match; the others may have moved.
    for (i, content) in &unmatched {
        position[*i] = index.take(content, slots, &mut taken);
    }
    // Parents of blocks matched only now were skipped above: one more pass for them.
    for &i in &order {
        if position[i].is_some() {
            continue;
        }
        if let Some(content) = relocated(i, &position) {
            position[i] = index.take(&content, slots, &mut taken);
        }
    }
    // The rest, children first, so their parents can be relocated after them.
    fill_the_rest(order.iter().copied(), &mut position, &mut taken);
    Some(position.into_iter().map(|p| p.expect("every block placed")).collect())
}

/// The nodes `0..n` in an order where every node comes after its `children` (the block
/// references form a forest: each block has one parent).
fn children_first(n: usize, children: impl Fn(usize) -> Vec<usize>) -> Vec<usize> {
    let mut order = Vec::with_capacity(n);
    let mut visited = vec![false; n];
    for root in 0..n {
        if visited[root] {
            continue;
        }
        // (node, children pushed yet)
        let mut stack = vec![(root, false)];
        while let Some((node, expanded)) = stack.pop() {
            if expanded {
                order.push(node);
                continue;
            }
            if visited[node] {
                continue;
            }
            visited[node] = true;
            stack.push((node, true));
            for child in children(node) {
                if child < n && !visited[child] {
                    stack.push((child, false));
                }
            }
        }
    }
    order
}

#[cfg(test)]
mod tests;
