//! The IPv6 peer table: multibit blocks over the rule set's sorted interval bounds
//! (`sg_common::PEER_V6_BOUNDS` has the layout and why).
//!
//! Built top down: the range of an entry holding at most `PEER_V6_LEAF_BOUNDS` bounds
//! (the one covering the range's first address and those starting inside) becomes a
//! leaf, or just the vector when one bound covers it all; a larger one becomes a block
//! indexed by the next address byte, each entry built the same way. Below the last byte
//! a range is one address, which only its covering bound answers for, so there are at
//! most 16 levels of blocks.

use sg_common::{
    PEER_V6_BOUNDS, PEER_V6_COUNT_SHIFT, PEER_V6_FIRST_MASK, PEER_V6_LEAF_BOUNDS, PEER_V6_LEAF_STEPS, PORT_BLOCK_REF,
    PeerV6Bound, PortBlock, v6_words,
};

/// The table over `bounds` (sorted, the first at `::`): its root entry; its blocks go at
/// the end of `blocks` and are referred to by their index there.
pub(super) fn table(bounds: &[PeerV6Bound], blocks: &mut Vec<PortBlock>) -> u32 {
    let starts: Vec<u128> = bounds.iter().map(|b| start(b.start)).collect();
    let mut builder = Builder { starts: &starts, bounds, blocks };
    // The whole address space, covered from `::` by the first bound.
    builder.entry(0, bounds.len(), 0, 0)
}

fn start([hi, lo]: [u64; 2]) -> u128 {
    (u128::from(hi) << 64) | u128::from(lo)
}

struct Builder<'a> {
    starts: &'a [u128],
    bounds: &'a [PeerV6Bound],
    blocks: &'a mut Vec<PortBlock>,
}

impl Builder<'_> {
    /// The entry for the range of addresses whose first `depth` bytes are `prefix`'s:
    /// bound `cover` covers its first address and bounds `cover + 1..end` start inside.
    fn entry(&mut self, cover: usize, end: usize, prefix: u128, depth: u32) -> u32 {
        let count = end - cover;
        if count == 1 {
            return self.bounds[cover].vector;
        }
        if count <= PEER_V6_LEAF_BOUNDS as usize {
            return PEER_V6_BOUNDS | ((count as u32) << PEER_V6_COUNT_SHIFT) | cover as u32;
        }
        debug_assert!(depth < 16, "a one-address range has only its covering bound");
        let index = self.blocks.len();
        self.blocks.push(PortBlock::default());
        let shift = 120 - 8 * depth;
        let mut sub_cover = cover;
        for byte in 0..256u32 {
            let sub_first = prefix | (u128::from(byte) << shift);
            let sub_last = sub_first | u128::MAX.checked_shr(8 * (depth + 1)).unwrap_or(0);
            // The last bound at or below the sub-range's first address, and the end of
            // those inside it; both only move forward.
            sub_cover += self.starts[sub_cover + 1..end].partition_point(|&s| s <= sub_first);
            let sub_end = sub_cover + 1 + self.starts[sub_cover + 1..end].partition_point(|&s| s <= sub_last);
            let entry = self.entry(sub_cover, sub_end, sub_first, depth + 1);
            self.blocks[index].entries[byte as usize] = entry;
        }
        PORT_BLOCK_REF | index as u32
    }
}

/// The vector index an address gets from the table, walked as the kernel walks it: a
/// block per address byte while the entry is one, then a leaf's bounds.
pub(super) fn lookup(root: u32, blocks: &[PortBlock], bounds: &[PeerV6Bound], addr: &[u8; 16]) -> Option<u32> {
    let mut entry = root;
    for &byte in addr {
        if entry & PORT_BLOCK_REF == 0 {
            break;
        }
        entry = blocks.get((entry & !PORT_BLOCK_REF) as usize)?.entries[usize::from(byte)];
    }
    if entry & PORT_BLOCK_REF != 0 {
        return None;
    }
    if entry & PEER_V6_BOUNDS == 0 {
        return Some(entry);
    }
    let key = v6_words(addr);
    let mut first = entry & PEER_V6_FIRST_MASK;
    let mut len = (entry & !PEER_V6_BOUNDS) >> PEER_V6_COUNT_SHIFT;
    for _ in 0..PEER_V6_LEAF_STEPS {
        if len <= 1 {
            break;
        }
        let half = len / 2;
        if bounds.get((first + half) as usize)?.start <= key {
            first += half;
        }
        len -= half;
    }
    (len <= 1).then_some(())?;
    Some(bounds.get(first as usize)?.vector)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random bounds clustered like real IPv6 rule sets (shared /64s, hosts, short
    /// prefixes), the first at `::`.
    fn clustered(seed: u64, n: usize) -> Vec<PeerV6Bound> {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut starts: Vec<u128> = vec![0];
        for _ in 0..n {
            let r = next();
            let addr = match r % 4 {
                0 => (0x2001_0db8u128 << 96) | (u128::from(next() % 4) << 64) | u128::from(next() % 65_536),
                1 => (0x2001_0db8u128 << 96) | (u128::from(next()) << 32),
                2 => (0xfdu128 << 120) | (u128::from(next()) << 56),
                _ => (u128::from(next()) << 64) | u128::from(next()),
            };
            starts.push(addr);
            if r % 3 == 0 {
                starts.push(addr.saturating_add(1));
            }
        }
        starts.sort_unstable();
        starts.dedup();
        starts.iter().enumerate().map(|(i, &s)| PeerV6Bound { start: words(s), vector: i as u32, _pad: 0 }).collect()
    }

    fn words(addr: u128) -> [u64; 2] {
        [(addr >> 64) as u64, addr as u64]
    }

    fn oracle(bounds: &[PeerV6Bound], addr: u128) -> u32 {
        let key = words(addr);
        bounds[bounds.partition_point(|b| b.start <= key) - 1].vector
    }

    #[test]
    fn the_index_finds_the_interval_the_binary_search_finds() {
        for (seed, n) in [(1, 0), (2, 3), (3, 7), (4, 8), (5, 100), (6, 3000)] {
            let bounds = clustered(seed, n);
            let mut blocks = Vec::new();
            let root = table(&bounds, &mut blocks);
            let mut probes: Vec<u128> = vec![0, u128::MAX];
            for b in &bounds {
                let s = start(b.start);
                probes.extend([s, s.wrapping_sub(1), s.wrapping_add(1), s ^ 0xff, s | 0xffff_ffff]);
            }
            for addr in probes {
                let got = lookup(root, &blocks, &bounds, &addr.to_be_bytes());
                assert_eq!(got, Some(oracle(&bounds, addr)), "seed {seed}, n {n}, address {addr:#x}");
            }
        }
    }

    #[test]
    fn leaves_hold_few_bounds_and_blocks_are_few() {
        let bounds = clustered(7, 3000);
        let mut blocks = Vec::new();
        let root = table(&bounds, &mut blocks);
        assert!(root & PORT_BLOCK_REF != 0);
        for block in &blocks {
            for &e in &block.entries {
                if e & PEER_V6_BOUNDS != 0 {
                    let count = (e & !PEER_V6_BOUNDS) >> PEER_V6_COUNT_SHIFT;
                    assert!((2..=PEER_V6_LEAF_BOUNDS).contains(&count));
                    assert!((e & PEER_V6_FIRST_MASK) as usize + count as usize <= bounds.len());
                }
            }
        }
        // Blocks only where bounds crowd: far fewer than one per bound.
        assert!(blocks.len() < bounds.len() / 4, "{} blocks for {} bounds", blocks.len(), bounds.len());
    }

    #[test]
    fn one_bound_is_its_vector_and_a_few_a_leaf() {
        let only = [PeerV6Bound { start: [0, 0], vector: 9, _pad: 0 }];
        let mut blocks = Vec::new();
        assert_eq!(table(&only, &mut blocks), 9);
        let few = clustered(8, 3);
        let root = table(&few, &mut blocks);
        assert!(blocks.is_empty());
        assert_eq!(root, PEER_V6_BOUNDS | (few.len() as u32) << PEER_V6_COUNT_SHIFT);
    }
}
