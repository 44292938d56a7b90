//! Typed handles of the classification maps (docs/rule-model.md explains what they
//! decide; `sg_common::maps` has the scheme): writing one compiled rule set at a given
//! place, deleting its trie entries, publishing an interface's configuration.
//!
//! Where a rule set goes (slots, index ranges, versions) and when the old one may be
//! deleted is decided above, in `control`.

use std::{ops::Range, sync::Arc};

use aya::maps::{Array, IterableMap as _, LpmTrie, MapData, PerCpuArray, lpm_trie::Key};
use sg_common::{
    ADDR_KEY_FIXED_BITS, AddrKey, IfaceConfig, MAX_RULESETS, MAX_WORDS, PORT_KEY_FIXED_BITS, PeerV6Bound, PortBlock,
    PortKey, RuleChunk, RuleCounters, RuleInfo, RuleVector, RulesetHeader, Timeouts, band_header, field, map,
};

use super::{
    MapSource, batch, counters,
    error::{DataplaneError, Doing as _, Result},
    placement::{self, Bases, Contents, Writes},
};
use crate::policy::compile::Compiled;

/// A rule set living in the maps: its slot, its ranges of the array maps, and the trie
/// keys written for it.
pub struct Installed {
    pub slot: u32,
    pub vectors: Range<u32>,
    pub chunks: Range<u32>,
    pub peer_v6: Range<u32>,
    pub rules: Range<u32>,
    pub tables: Range<u32>,
    pub blocks: Range<u32>,
    pub addr_keys: Vec<Key<AddrKey>>,
    pub port_keys: Vec<Key<PortKey>>,
    /// Each bit's rule handle (`control::handles`), written as its `RuleInfo::rule_id`.
    pub handles: Vec<u32>,
    /// What the array ranges hold, entry by entry, as far as this process knows.
    pub contents: Contents,
}

/// The classification maps and the timeouts map, taken out of a loaded [`Dataplane`].
pub struct RuleSetMaps {
    iface_index: Array<MapData, u32>,
    iface_configs: Array<MapData, IfaceConfig>,
    rulesets: Array<MapData, RulesetHeader>,
    addr_trie: LpmTrie<MapData, AddrKey, u32>,
    port_trie: LpmTrie<MapData, PortKey, u32>,
    vectors: Array<MapData, RuleVector>,
    chunks: Array<MapData, RuleChunk>,
    peer_v6: Array<MapData, PeerV6Bound>,
    rule_info: Array<MapData, RuleInfo>,
    port_tables: Array<MapData, PortBlock>,
    port_blocks: Array<MapData, PortBlock>,
    timeouts: Array<MapData, Timeouts>,
    counters: PerCpuArray<MapData, u64>,
    rule_counters: PerCpuArray<MapData, RuleCounters>,
}

/// The trie keys compiled rule set `c` has in `slot`: what [`RuleSetMaps::write`] writes
/// and a deletion must remove (an agent adopting pinned maps recomputes them).
pub fn trie_keys(c: &Compiled, slot: u32) -> (Vec<Key<AddrKey>>, Vec<Key<PortKey>>) {
    let ruleset = |band: u8| band_header(slot, u32::from(band)).to_be_bytes();
    let addr = c
        .addr_entries
        .iter()
        .map(|e| {
            let (family, addr, bits) = match e.net.network() {
                std::net::IpAddr::V4(a) => {
                    let mut addr = [0u8; 16];
                    addr[..4].copy_from_slice(&a.octets());
                    (4, addr, e.net.prefix_len())
                }
                std::net::IpAddr::V6(a) => (6, a.octets(), e.net.prefix_len()),
            };
            Key::new(
                ADDR_KEY_FIXED_BITS + u32::from(bits),
                AddrKey { ruleset: ruleset(e.band), field: e.field, family, _pad: [0; 2], addr },
            )
        })
        .collect();
    let port = c
        .port_entries
        .iter()
        .map(|e| {
            // The protocol matched in full (8 bits), any port; or nothing: any protocol.
            let (protocol, bits) = e.protocol.map_or((0, 0), |p| (p, 8));
            Key::new(
                PORT_KEY_FIXED_BITS + bits,
                PortKey { ruleset: ruleset(e.band), field: field::DESTINATION_PORT, protocol, port: [0; 2] },
            )
        })
        .collect();
    (addr, port)
}

impl RuleSetMaps {
    /// The configuration id `ifindex` has published (0: not enforced).
    pub fn published(&self, ifindex: u32) -> Result<u32> {
        self.iface_index.get(&ifindex, 0).doing_with(|| format!("reading ifindex {ifindex}"))
    }

    /// Deletes trie entries of rule-set slots not in `live` (left by an agent that died
    /// between writing a rule set and recording it); returns how many.
    pub fn delete_orphans(&mut self, live: &[u32]) -> Result<usize> {
        // A band's entries are keyed by its header, `band_header` of the set's slot.
        let slot_of = |ruleset: [u8; 4]| u32::from_be_bytes(ruleset) % MAX_RULESETS;
        let addr: Vec<Key<AddrKey>> = self
            .addr_trie
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .doing("listing address entries")?
            .into_iter()
            .filter(|k| !live.contains(&slot_of(k.data().ruleset)))
            .collect();
        let port: Vec<Key<PortKey>> = self
            .port_trie
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .doing("listing port entries")?
            .into_iter()
            .filter(|k| !live.contains(&slot_of(k.data().ruleset)))
            .collect();
        for k in &addr {
            let _ = self.addr_trie.remove(k);
        }
        for k in &port {
            let _ = self.port_trie.remove(k);
        }
        Ok(addr.len() + port.len())
    }

    /// Takes the maps out of `dp`.
    pub fn take(dp: &mut impl MapSource) -> Result<Self> {
        Ok(Self {
            iface_index: dp.take_map(map::IFACE_INDEX)?,
            iface_configs: dp.take_map(map::IFACE_CONFIGS)?,
            rulesets: dp.take_map(map::RULESETS)?,
            addr_trie: dp.take_map(map::ADDR_TRIE)?,
            port_trie: dp.take_map(map::PORT_TRIE)?,
            vectors: dp.take_map(map::VECTORS)?,
            chunks: dp.take_map(map::CHUNKS)?,
            peer_v6: dp.take_map(map::PEER_V6)?,
            rule_info: dp.take_map(map::RULE_INFO)?,
            port_tables: dp.take_map(map::PORT_TABLES)?,
            port_blocks: dp.take_map(map::PORT_BLOCKS)?,
            timeouts: dp.take_map(map::TIMEOUTS)?,
            counters: dp.take_map(map::STATS)?,
            rule_counters: dp.take_map(map::RULE_STATS)?,
        })
    }

    /// Zeroes rule handles' counters (one batch), before rules start using them.
    pub fn zero_rule_counters(&mut self, handles: &[u32]) -> Result<()> {
        counters::zero_rules(&self.rule_counters, handles)
    }

    /// Zeroes an interface counter slot, before an interface starts using it.
    pub fn zero_iface_counters(&mut self, slot: u32) -> Result<()> {
        counters::zero_iface(&mut self.counters, slot)
    }

    /// `SG_STATS` summed over CPUs, indexed by `sg_common::stats` slot.
    pub fn counters(&self) -> Result<Vec<u64>> {
        counters::sum_slots(&self.counters)
    }

    /// The kernel's id of `SG_STATS`.
    pub fn counters_id(&self) -> Result<u32> {
        Ok(self.counters.map().info().doing("the counters' id")?.id())
    }

    /// Adds `n` to counter `slot` of `SG_STATS` (`counters::add`).
    pub fn add_to_counter(&mut self, slot: u32, n: u64) -> Result<()> {
        counters::add(&mut self.counters, slot, n)
    }

    /// The configuration written under `version`.
    pub fn iface_config(&self, version: u32) -> Result<IfaceConfig> {
        self.iface_configs.get(&version, 0).doing("reading an interface configuration")
    }

    /// The rule handles written in rule-info entries `range`.
    pub fn handles(&self, range: Range<u32>) -> Result<Vec<u32>> {
        range.map(|i| Ok(self.rule_info.get(&i, 0).doing("reading rule info")?.rule_id)).collect()
    }

    /// Writes the session timeouts.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) -> Result<()> {
        self.timeouts.set(0, timeouts, 0).doing("writing session timeouts")
    }

    /// Writes an interface configuration under `version` (not yet published).
    pub fn set_iface_config(&mut self, version: u32, config: IfaceConfig) -> Result<()> {
        self.iface_configs.set(version, config, 0).doing("writing the interface configuration")
    }

    /// Publishes configuration id `id` for `ifindex` (one 4-byte store); 0 stops enforcing.
    pub fn switch(&mut self, ifindex: u32, id: u32) -> Result<()> {
        self.iface_index.set(ifindex, id, 0).doing_with(|| format!("switching ifindex {ifindex}"))
    }

    /// Stops enforcing on `ifindex` (its packets pass as unconfigured).
    pub fn clear(&mut self, ifindex: u32) -> Result<()> {
        self.iface_index.set(ifindex, 0, 0).doing_with(|| format!("clearing ifindex {ifindex}"))
    }

    /// How many entries the address and port tries hold, counted in the kernel.
    pub fn trie_entries(&self) -> Result<usize> {
        let addr = self.addr_trie.keys().collect::<Result<Vec<_>, _>>().doing("listing address entries")?;
        let port = self.port_trie.keys().collect::<Result<Vec<_>, _>>().doing("listing port entries")?;
        Ok(addr.len() + port.len())
    }

    /// Deletes the trie entries of `installed` (its array ranges are simply reused).
    pub fn delete_keys(&mut self, installed: &Installed) {
        // A batch stops at the first missing key (an install that failed part-way):
        // then fall back to deleting one by one.
        if batch::delete(self.addr_trie.map(), &installed.addr_keys).is_err() {
            for key in &installed.addr_keys {
                let _ = self.addr_trie.remove(key);
            }
        }
        if batch::delete(self.port_trie.map(), &installed.port_keys).is_err() {
            for key in &installed.port_keys {
                let _ = self.port_trie.remove(key);
            }
        }
    }

    /// Writes compiled rule set `c` at the place `at` reserves (its slot and index
    /// ranges), recording the trie keys it writes in `at`; live rule sets are not touched.
    /// Only the entries that differ from what `at.contents` says the ranges hold are
    /// written (everything, when they are unknown); returns how many.
    pub fn write(&mut self, c: &Arc<Compiled>, at: &mut Installed) -> Result<usize> {
        debug_assert!(c.words() <= MAX_WORDS);
        let bases = Bases { vectors: at.vectors.start, chunks: at.chunks.start, blocks: at.blocks.start };
        // Every entry at its own index, written where it differs: a compare against the
        // set the ranges hold when there is one, else against their recorded contents.
        // (The compile numbers each set like the one before, so equal entries are found
        // at their own index; see `placement`.)
        let plan = match &at.contents.in_place {
            Some((was, was_handles)) => placement::plan_in_place(c, &at.handles, was, was_handles, &at.contents, bases),
            // Fresh ranges: everything is written, with nothing to compare.
            None if at.contents.nothing_known => placement::plan_whole(c, &at.handles, &at.contents, bases),
            None => placement::plan_at_own_index(c, &at.handles, &at.contents, bases),
        }
        .ok_or_else(|| DataplaneError::Refused("a rule set's ranges are shorter than the rule set".into()))?;
        // Until the ranges hold `c` (below), they hold no set entry for entry.
        at.contents.in_place = None;
        fn update<V: aya::Pod>(map: &MapData, start: u32, writes: &Writes<V>) -> std::io::Result<()> {
            let keys: Vec<u32> = writes.iter().map(|(at, _)| start + at).collect();
            let values: Vec<V> = writes.iter().map(|(_, v)| *v).collect();
            batch::update(map, &keys, &values)
        }
        // What the others point to first: chunks, vectors, bounds, rule info, then the
        // tries, blocks and tables pointing to them, and the header last.
        update(self.chunks.map(), at.chunks.start, &plan.chunks).doing("writing rule vector chunks")?;
        update(self.vectors.map(), at.vectors.start, &plan.vectors).doing("writing rule vectors")?;
        update(self.peer_v6.map(), at.peer_v6.start, &plan.peer_v6).doing("writing IPv6 peer intervals")?;
        update(self.rule_info.map(), at.rules.start, &plan.rules).doing("writing rule info")?;
        // Recorded before writing, so a failed batch is undone in full by `remove`.
        (at.addr_keys, at.port_keys) = trie_keys(c, at.slot);
        let vector = |v: u32| at.vectors.start + v;
        let addr_values: Vec<u32> = c.addr_entries.iter().map(|e| vector(e.vector)).collect();
        batch::update(self.addr_trie.map(), &at.addr_keys, &addr_values).doing("writing address entries")?;
        let port_values: Vec<u32> = c.port_entries.iter().map(|e| vector(e.vector)).collect();
        batch::update(self.port_trie.map(), &at.port_keys, &port_values).doing("writing port entries")?;
        update(self.port_blocks.map(), at.blocks.start, &plan.blocks).doing("writing port blocks")?;
        update(self.port_tables.map(), at.tables.start, &plan.tables).doing("writing port tables")?;
        // Later bands first: band 0's header, written last, is the one the slot names.
        for (b, band) in c.bands.iter().enumerate().rev() {
            let header = RulesetHeader {
                rule_base: at.rules.start + band.first_rule,
                rule_count: band.rule_count,
                flags: band.flags,
                port_tables: at.tables.start + band.first_table,
                peer_v6: at.peer_v6.start + band.first_peer_v6,
                peer_v6_count: band.peer_v6_count,
                peer_v6_root: plan.peer_v6_roots[b],
                _pad: 0,
            };
            self.rulesets.set(band_header(at.slot, b as u32), header, 0).doing("writing a rule-set header")?;
        }
        at.contents.record(&plan);
        at.contents.in_place = Some((Arc::clone(c), at.handles.clone()));
        Ok(plan.entries())
    }
}
