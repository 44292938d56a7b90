//! Numbering a rule set compiled whole like the rule set compiled before it.
//!
//! A rule set is written over the ranges of the set before last, each entry at its own
//! index where it differs from what the ranges hold (`dataplane::placement`). The pooled
//! entries (chunks, vectors, port and peer blocks) are referred to by number, and a
//! whole compile numbers them in the order it makes them: after a change that adds or
//! removes one distinct vector early (a peer narrowed, a rule's priority moved within
//! its rank), every later number shifts and nearly every entry would be written again,
//! though most are equal to one already in the maps. So a set compiled whole is
//! renumbered here, once, by content: an entry equal to one of the previous set keeps
//! that one's number, the others take numbers nothing equal claimed ([`place`]). Where
//! the new set has fewer entries than the old, the old entries left over stay as they
//! were (nothing refers to them; they count as garbage, as an incremental compile's
//! replaced entries do, until a compaction removes them), so they too are not written.
//!
//! Renumbering changes which number an entry has, never what a lookup finds: every
//! reference (tables, blocks, IPv6 bounds and roots, trie entries) is renumbered with it.

use std::hash::Hash;

use rustc_hash::FxHashMap;
use sg_common::{PEER_V6_BOUNDS, PORT_BLOCK_REF, PortBlock};

use super::Compiled;

/// Renumbers `new` (compiled whole) like `old` (the set compiled before it for the
/// same interface and direction); returns how many of its pooled entries nothing
/// refers to (`old`'s leftovers).
pub(super) fn renumber_like(new: &mut Compiled, old: &Compiled) -> usize {
    let mut garbage = 0;
    let chunk_at = renumbered(&mut new.chunks, &old.chunks, &mut garbage);
    for v in &mut new.vectors {
        v.chunks.iter_mut().for_each(|n| *n = chunk_at.get(*n as usize).copied().unwrap_or(0));
    }
    let vector_at = renumbered(&mut new.vectors, &old.vectors, &mut garbage);
    // An old vector left over may name chunk numbers that now hold other chunks: its
    // summary is made true of them again, so every vector of the set stays one the
    // kernel's search could read (and one an incremental compile may intern to).
    let taken = taken(&vector_at, new.vectors.len());
    for (v, _) in new.vectors.iter_mut().zip(taken).filter(|(_, taken)| !taken) {
        for (column, &n) in v.chunks.iter().enumerate() {
            let nonzero = new.chunks.get(n as usize).is_some_and(|c| c.words.iter().any(|&w| w != 0));
            if nonzero {
                v.summary |= 1 << column;
            } else {
                v.summary &= !(1 << column);
            }
        }
    }
    let slots = padded(&old.port_blocks, new.port_blocks.len());
    let block_at = place_blocks(&new.port_blocks, &slots, &vector_at).expect("slots as long as the blocks");
    let relocate = |e: &mut u32| {
        if *e & PORT_BLOCK_REF != 0 {
            *e = PORT_BLOCK_REF | block_at[(*e & !PORT_BLOCK_REF) as usize];
        } else if *e & PEER_V6_BOUNDS == 0 {
            *e = vector_at[*e as usize];
        }
    };
    let mut blocks = old.port_blocks.clone();
    blocks.resize(slots.len(), PortBlock::default());
    for (i, block) in new.port_blocks.iter().enumerate() {
        let mut block = *block;
        block.entries.iter_mut().for_each(relocate);
        blocks[block_at[i] as usize] = block;
    }
    garbage += blocks.len() - new.port_blocks.len();
    new.port_blocks = blocks;
    new.port_tables.iter_mut().for_each(|t| t.entries.iter_mut().for_each(relocate));
    new.bands.iter_mut().for_each(|b| relocate(&mut b.peer_v6_root));
    new.peer_v6.iter_mut().for_each(|b| b.vector = vector_at[b.vector as usize]);
    new.addr_entries.iter_mut().for_each(|e| e.vector = vector_at[e.vector as usize]);
    new.port_entries.iter_mut().for_each(|e| e.vector = vector_at[e.vector as usize]);
    garbage
}

/// `items` put at the positions [`place`] gives them over `old`'s (old entries left
/// over keep theirs); returns each item's position and adds the leftovers to `garbage`.
fn renumbered<T: Hash + Eq + Copy + Default>(items: &mut Vec<T>, old: &[T], garbage: &mut usize) -> Vec<u32> {
    let slots = padded(old, items.len());
    let at = place(items, &slots).expect("slots as long as the items");
    let mut out = old.to_vec();
    out.resize(slots.len(), T::default());
    for (i, item) in items.iter().enumerate() {
        out[at[i] as usize] = *item;
    }
    *garbage += out.len() - items.len();
    *items = out;
    at
}

/// Which of `len` positions `at` gives to an item.
fn taken(at: &[u32], len: usize) -> Vec<bool> {
    let mut taken = vec![false; len];
    at.iter().for_each(|&p| taken[p as usize] = true);
    taken
}

/// `old` as known slots, with unknown ones after it up to `len`.
fn padded<T: Copy>(old: &[T], len: usize) -> Vec<Option<T>> {
    let mut slots: Vec<Option<T>> = old.iter().copied().map(Some).collect();
    slots.resize(slots.len().max(len), None);
    slots
}

/// Positions for `items` (distinct) in a range holding `slots`: an item equal to a slot
/// not yet taken goes there, its own index first (a compare, no hashing: when nothing
/// shifted, that is every item); the others go to the remaining positions, their own
/// index first when it is free (so an entry that changed in place keeps its number, and
/// what refers to it stays as it is). Returns each item's position, or `None` when the
/// range is shorter than the items.
fn place<T: Hash + Eq>(items: &[T], slots: &[Option<T>]) -> Option<Vec<u32>> {
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

/// [`place`] for blocks, which refer to each other: a block's relocated contents depend
/// on where its children went. Blocks without children are matched first; a block with
/// children is matched once they all were (a changed child changes its parent); the
/// rest are given free positions children first, so every parent is relocated with its
/// children's final places.
fn place_blocks(blocks: &[PortBlock], slots: &[Option<PortBlock>], vector_at: &[u32]) -> Option<Vec<u32>> {
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
                PORT_BLOCK_REF | position[(*e & !PORT_BLOCK_REF) as usize]?
            } else if *e & PEER_V6_BOUNDS != 0 {
                *e
            } else {
                vector_at[*e as usize]
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
