//! Writing compiled rule sets into the kernel maps and switching interfaces to them.
//!
//! An apply compiles everything first (an error leaves the maps untouched), writes each
//! new rule set beside the live one (its own slot, vector, rule-info and table-block
//! ranges, trie entries keyed by the new slot; batched writes), writes the interface's
//! new [`IfaceConfig`] under a free version, then switches the interface with one 4-byte
//! store of a new configuration id, so no packet sees a mixture of two rule sets. The
//! replaced rule sets are deleted afterwards ([`Enforcer::retire_pending`]), after a grace
//! period longer than any program run.

use std::{collections::HashMap, ops::Range, time::Duration, time::Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{Array, IterableMap as _, LpmTrie, MapData, lpm_trie::Key};
use sg_common::{
    ADDR_KEY_FIXED_BITS, AddrKey, IFACE_AUDIT, IfaceConfig, MAX_IFACE_VERSIONS, MAX_IFINDEX, MAX_RULESETS, MAX_WORDS,
    PORT_BLOCK_REF, PORT_KEY_FIXED_BITS, PortBlock, PortKey, RuleInfo, RuleVector, RulesetHeader, Timeouts, field, map,
};

use crate::{
    batch,
    compile::{Compiled, compile},
    config::{Config, Direction, InterfaceBinding, Mode},
    ebpf::Dataplane,
    sessions::{self, SessionTable},
};

/// Map sizes, fixed when the programs are loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Session table entries (`max_sessions`).
    pub sessions: u32,
    pub vectors: u32,
    pub rule_info: u32,
    pub addr_entries: u32,
    pub port_entries: u32,
    /// First-level port tables (`PORT_TABLES` per rule set).
    pub port_tables: u32,
    /// Second-level port blocks.
    pub port_blocks: u32,
}

impl Default for Capacity {
    /// Enough for a few interfaces with some thousand rules (about 9 MiB of vectors).
    fn default() -> Self {
        Self {
            sessions: 262_144,
            vectors: 4096,
            rule_info: 65_536,
            addr_entries: 65_536,
            port_entries: 4096,
            port_tables: sg_common::PORT_TABLES * MAX_RULESETS,
            port_blocks: 1024,
        }
    }
}

impl Capacity {
    /// Room for twice what `compiled` needs (a new rule set is written beside the live
    /// one), and never less than the default.
    pub fn for_rule_sets<'a>(compiled: impl IntoIterator<Item = &'a Compiled>) -> Self {
        let mut need = Self {
            sessions: 0,
            vectors: 0,
            rule_info: 0,
            addr_entries: 0,
            port_entries: 0,
            port_tables: 0,
            port_blocks: 0,
        };
        for c in compiled {
            need.vectors += c.vectors.len() as u32;
            need.rule_info += c.rules.len() as u32;
            need.addr_entries += c.addr_entries.len() as u32;
            need.port_entries += c.port_entries.len() as u32;
            need.port_blocks += c.port_blocks.len() as u32;
        }
        let d = Self::default();
        Self {
            sessions: d.sessions,
            vectors: (need.vectors * 2 + 64).max(d.vectors),
            rule_info: (need.rule_info * 2 + 64).max(d.rule_info),
            addr_entries: (need.addr_entries * 2 + 64).max(d.addr_entries),
            port_entries: (need.port_entries * 2 + 64).max(d.port_entries),
            port_tables: d.port_tables,
            port_blocks: (need.port_blocks * 2 + 64).max(d.port_blocks),
        }
    }

    /// Bytes of map memory the vectors, rule-info and port-table arrays take (the tries
    /// grow with their entries, about 100 bytes each).
    pub fn array_bytes(&self) -> u64 {
        u64::from(self.vectors) * size_of::<RuleVector>() as u64
            + u64::from(self.rule_info) * size_of::<RuleInfo>() as u64
            + u64::from(self.port_tables + self.port_blocks) * size_of::<PortBlock>() as u64
    }
}

/// First-fit allocator of index ranges in an array map.
#[derive(Debug)]
struct Ranges {
    free: Vec<Range<u32>>,
}

impl Ranges {
    fn new(len: u32) -> Self {
        #[expect(clippy::single_range_in_vec_init, reason = "one free range, the whole array")]
        let free = vec![0..len];
        Self { free }
    }

    fn take(&mut self, n: u32) -> Option<Range<u32>> {
        if n == 0 {
            return Some(0..0);
        }
        let i = self.free.iter().position(|r| r.end - r.start >= n)?;
        let start = self.free[i].start;
        self.free[i].start += n;
        if self.free[i].is_empty() {
            self.free.remove(i);
        }
        Some(start..start + n)
    }

    fn give(&mut self, range: Range<u32>) {
        if range.is_empty() {
            return;
        }
        let i = self.free.partition_point(|r| r.start < range.start);
        self.free.insert(i, range);
        // Merge with the neighbours.
        if i + 1 < self.free.len() && self.free[i].end == self.free[i + 1].start {
            self.free[i].end = self.free.remove(i + 1).end;
        }
        if i > 0 && self.free[i - 1].end == self.free[i].start {
            self.free[i - 1].end = self.free.remove(i).end;
        }
    }
}

/// A rule set living in the maps.
struct Installed {
    slot: u32,
    vectors: Range<u32>,
    rules: Range<u32>,
    tables: Range<u32>,
    blocks: Range<u32>,
    addr_keys: Vec<Key<AddrKey>>,
    port_keys: Vec<Key<PortKey>>,
}

#[derive(Default)]
struct InterfaceState {
    ingress: Option<Installed>,
    egress: Option<Installed>,
    generation: u32,
    /// The published version of its configuration (0: none yet).
    version: u32,
}

/// Figures from one apply.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ApplyReport {
    pub rule_sets: usize,
    pub rules: usize,
    pub vectors: usize,
    pub trie_entries: usize,
    pub compile_time: Duration,
    pub write_time: Duration,
}

/// Rule sets replaced by a switch, deleted once no program run can still read them.
struct Retiring {
    switched: Instant,
    sets: Vec<Installed>,
    versions: Vec<u32>,
}

/// Both directions of one interface, compiled.
pub struct CompiledInterface {
    pub ifindex: u32,
    pub mode: Mode,
    pub ingress: Compiled,
    pub egress: Compiled,
}

/// Compiles every (ifindex, binding) in both directions; the first error stops it.
pub fn compile_targets(cfg: &Config, targets: &[(u32, &InterfaceBinding)]) -> Result<Vec<CompiledInterface>> {
    targets
        .iter()
        .map(|(ifindex, binding)| {
            Ok(CompiledInterface {
                ifindex: *ifindex,
                mode: binding.mode,
                ingress: compile(cfg, binding, Direction::Ingress)?,
                egress: compile(cfg, binding, Direction::Egress)?,
            })
        })
        .collect()
}

/// Owns the classification maps and what is installed in them.
pub struct Enforcer {
    iface_index: Array<MapData, u32>,
    iface_configs: Array<MapData, IfaceConfig>,
    free_versions: Vec<u32>,
    /// Counts applies, for configuration ids.
    config_serial: u32,
    rulesets: Array<MapData, RulesetHeader>,
    addr_trie: LpmTrie<MapData, AddrKey, u32>,
    port_trie: LpmTrie<MapData, PortKey, u32>,
    vectors: Array<MapData, RuleVector>,
    rule_info: Array<MapData, RuleInfo>,
    port_tables: Array<MapData, PortBlock>,
    port_blocks: Array<MapData, PortBlock>,
    vector_ranges: Ranges,
    rule_ranges: Ranges,
    table_ranges: Ranges,
    block_ranges: Ranges,
    free_slots: Vec<u32>,
    installed: HashMap<u32, InterfaceState>,
    retiring: Vec<Retiring>,
    grace: Duration,
    sessions: SessionTable,
    timeouts: Array<MapData, Timeouts>,
    current_timeouts: Timeouts,
}

fn take<T>(dp: &mut Dataplane, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = dp.ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing (already taken?)"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

impl Enforcer {
    /// Takes the classification maps out of `dp` (loaded with `capacity`).
    pub fn new(dp: &mut Dataplane, capacity: &Capacity) -> Result<Self> {
        Ok(Self {
            iface_index: take(dp, map::IFACE_INDEX)?,
            iface_configs: take(dp, map::IFACE_CONFIGS)?,
            // Version 0 means "not enforced".
            free_versions: (1..MAX_IFACE_VERSIONS).rev().collect(),
            config_serial: 0,
            rulesets: take(dp, map::RULESETS)?,
            addr_trie: take(dp, map::ADDR_TRIE)?,
            port_trie: take(dp, map::PORT_TRIE)?,
            vectors: take(dp, map::VECTORS)?,
            rule_info: take(dp, map::RULE_INFO)?,
            port_tables: take(dp, map::PORT_TABLES)?,
            port_blocks: take(dp, map::PORT_BLOCKS)?,
            vector_ranges: Ranges::new(capacity.vectors),
            rule_ranges: Ranges::new(capacity.rule_info),
            table_ranges: Ranges::new(capacity.port_tables),
            block_ranges: Ranges::new(capacity.port_blocks),
            // Slot 0 means "none".
            free_slots: (1..MAX_RULESETS).rev().collect(),
            installed: HashMap::new(),
            retiring: Vec::new(),
            grace: Duration::from_millis(5),
            sessions: {
                let mut take = |name: &str| dp.ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing"));
                SessionTable::from_maps(
                    take(map::SESSIONS)?,
                    take(map::FLOW_CACHE)?,
                    take(map::CACHE_EPOCH)?,
                    Some(take(map::SESSION_HINTS)?),
                )?
            },
            timeouts: take(dp, map::TIMEOUTS)?,
            current_timeouts: Timeouts::default(),
        })
    }

    /// Applies `cfg` to the interfaces in `targets` (ifindex, binding): all or nothing.
    pub fn apply(&mut self, cfg: &Config, targets: &[(u32, &InterfaceBinding)]) -> Result<ApplyReport> {
        let started = Instant::now();
        let compiled = compile_targets(cfg, targets)?;
        let compile_time = started.elapsed();
        let mut report = self.apply_compiled(cfg, &compiled)?;
        report.compile_time = compile_time;
        Ok(report)
    }

    /// [`Enforcer::apply`] for rule sets already compiled with [`compile_targets`].
    pub fn apply_compiled(&mut self, cfg: &Config, compiled: &[CompiledInterface]) -> Result<ApplyReport> {
        if let Some(c) = compiled.iter().find(|c| c.ifindex >= MAX_IFINDEX) {
            bail!("ifindex {} is beyond the {MAX_IFINDEX} interfaces sgctl can enforce on", c.ifindex);
        }
        // Make room: what an earlier apply replaced goes now.
        self.retire_pending();
        let mut report = ApplyReport::default();
        // Timeouts first: they only loosen or tighten idle expiry, never admit a packet.
        let timeouts = sessions::timeouts(&cfg.sessions);
        self.timeouts.set(0, timeouts, 0).context("writing session timeouts")?;
        self.current_timeouts = timeouts;
        let written = Instant::now();
        let mut fresh = Vec::with_capacity(compiled.len());
        for CompiledInterface { ifindex, mode, ingress, egress } in compiled {
            let pair = self.install(ingress).and_then(|i| match self.install(egress) {
                Ok(e) => Ok((i, e)),
                Err(err) => {
                    self.remove(i);
                    Err(err)
                }
            });
            match pair {
                Ok(pair) => fresh.push((*ifindex, *mode, pair)),
                Err(err) => {
                    // Nothing was switched yet: drop what this apply wrote.
                    for (_, _, (i, e)) in fresh {
                        self.remove(i);
                        self.remove(e);
                    }
                    return Err(err);
                }
            }
            for c in [ingress, egress] {
                report.rule_sets += 1;
                report.rules += c.rules.len();
                report.vectors += c.vectors.len();
                report.trie_entries += c.addr_entries.len() + c.port_entries.len();
            }
        }
        let mut retired = Vec::new();
        let mut retired_versions = Vec::new();
        for (ifindex, mode, (ingress, egress)) in fresh {
            let version = self.free_versions.pop().ok_or_else(|| anyhow!("no free interface-configuration version"))?;
            let state = self.installed.entry(ifindex).or_default();
            state.generation = state.generation.wrapping_add(1);
            let config = IfaceConfig {
                ingress: ingress.slot,
                egress: egress.slot,
                generation: state.generation,
                flags: if mode == Mode::Audit { IFACE_AUDIT } else { 0 },
            };
            self.iface_configs.set(version, config, 0).context("writing the interface configuration")?;
            // The switch: one 4-byte store publishes the new configuration, under an id
            // no recent apply used (see `sg_common::config_version`).
            self.config_serial = (self.config_serial + 1) % (u32::MAX / MAX_IFACE_VERSIONS);
            let id = version + self.config_serial * MAX_IFACE_VERSIONS;
            self.iface_index.set(ifindex, id, 0).with_context(|| format!("switching ifindex {ifindex}"))?;
            retired_versions.extend((state.version != 0).then_some(state.version));
            state.version = version;
            retired.extend(state.ingress.replace(ingress));
            retired.extend(state.egress.replace(egress));
        }
        report.write_time = written.elapsed();
        // The new rules are in force; deleting the old ones is cleanup that can wait
        // for `retire_pending` (the agent calls it right after reporting the apply).
        self.retiring.push(Retiring { switched: Instant::now(), sets: retired, versions: retired_versions });
        Ok(report)
    }

    /// Stops enforcing on `ifindex` (its packets pass as unconfigured).
    pub fn clear(&mut self, ifindex: u32) -> Result<()> {
        if let Some(state) = self.installed.remove(&ifindex) {
            self.iface_index.set(ifindex, 0, 0).with_context(|| format!("clearing ifindex {ifindex}"))?;
            let sets = state.ingress.into_iter().chain(state.egress).collect();
            self.retiring.push(Retiring { switched: Instant::now(), sets, versions: vec![state.version] });
            self.retire_pending();
        }
        Ok(())
    }

    /// How long a replaced rule set stays readable after the switch. Zero is only right
    /// when no packet can be in flight (BPF_PROG_TEST_RUN, which runs synchronously).
    pub fn set_grace_period(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// The session table.
    pub fn sessions(&mut self) -> &mut SessionTable {
        &mut self.sessions
    }

    /// Frees expired sessions; returns how many.
    pub fn collect_garbage(&mut self) -> Result<usize> {
        self.sessions.collect_garbage(&self.current_timeouts)
    }

    /// How many entries the address and port tries hold, counted in the kernel: every
    /// installed rule set's, plus those of replaced sets not yet retired.
    pub fn trie_entries(&self) -> Result<usize> {
        let addr = self.addr_trie.keys().collect::<Result<Vec<_>, _>>().context("listing address entries")?;
        let port = self.port_trie.keys().collect::<Result<Vec<_>, _>>().context("listing port entries")?;
        Ok(addr.len() + port.len())
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> &Timeouts {
        &self.current_timeouts
    }

    /// The generation of `ifindex`'s rule sets (bumped by every apply).
    pub fn generation(&self, ifindex: u32) -> Option<u32> {
        self.installed.get(&ifindex).map(|s| s.generation)
    }

    /// Deletes the rule sets earlier applies replaced, once no program run can still be
    /// reading them; returns how long it took.
    pub fn retire_pending(&mut self) -> Duration {
        let started = Instant::now();
        for Retiring { switched, sets, versions } in std::mem::take(&mut self.retiring) {
            // Programs run to completion in microseconds; a packet that read the old slot
            // before the switch is long done after the grace period.
            std::thread::sleep(self.grace.saturating_sub(switched.elapsed()));
            for installed in sets {
                self.remove(installed);
            }
            self.free_versions.extend(versions);
        }
        started.elapsed()
    }

    fn remove(&mut self, installed: Installed) {
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
        self.vector_ranges.give(installed.vectors);
        self.rule_ranges.give(installed.rules);
        self.table_ranges.give(installed.tables);
        self.block_ranges.give(installed.blocks);
        self.free_slots.push(installed.slot);
    }

    /// Writes one compiled rule set into free space; live rule sets are not touched.
    fn install(&mut self, c: &Compiled) -> Result<Installed> {
        let slot = self.free_slots.pop().ok_or_else(|| anyhow!("all {MAX_RULESETS} rule-set slots in use"))?;
        let Some(vectors) = self.vector_ranges.take(c.vectors.len() as u32) else {
            self.free_slots.push(slot);
            bail!(
                "no room for {} more vectors in the maps sized at start; restart sgctl with the new rule file",
                c.vectors.len()
            );
        };
        let Some(rules) = self.rule_ranges.take(c.rules.len() as u32) else {
            self.free_slots.push(slot);
            self.vector_ranges.give(vectors);
            bail!(
                "no room for {} more rules in the maps sized at start; restart sgctl with the new rule file",
                c.rules.len()
            );
        };
        let tables = self.table_ranges.take(c.port_tables.len() as u32);
        let blocks = self.block_ranges.take(c.port_blocks.len() as u32);
        let (Some(tables), Some(blocks)) = (tables.clone(), blocks.clone()) else {
            self.free_slots.push(slot);
            self.vector_ranges.give(vectors);
            self.rule_ranges.give(rules);
            self.table_ranges.give(tables.unwrap_or(0..0));
            self.block_ranges.give(blocks.unwrap_or(0..0));
            bail!(
                "no room for {} more port blocks in the maps sized at start; restart sgctl with the new rule file",
                c.port_blocks.len()
            );
        };
        let mut installed =
            Installed { slot, vectors, rules, tables, blocks, addr_keys: Vec::new(), port_keys: Vec::new() };
        match self.write(c, &mut installed) {
            Ok(()) => Ok(installed),
            Err(e) => {
                self.remove(installed);
                Err(e)
            }
        }
    }

    fn write(&mut self, c: &Compiled, at: &mut Installed) -> Result<()> {
        let words = c.words();
        debug_assert!(words <= MAX_WORDS);
        // Vectors go in chunks: each is 2 KiB, and a chunk's buffer is reused.
        const CHUNK: usize = 256;
        let mut indices = Vec::with_capacity(CHUNK);
        let mut values = Vec::with_capacity(CHUNK);
        for (chunk_no, chunk) in c.vectors.chunks(CHUNK).enumerate() {
            indices.clear();
            values.clear();
            for (i, v) in chunk.iter().enumerate() {
                let mut value = RuleVector::default();
                value.words[..words].copy_from_slice(v);
                for (w, word) in v.iter().enumerate() {
                    if *word != 0 {
                        value.summary[w / 64] |= 1 << (w % 64);
                    }
                }
                indices.push(at.vectors.start + (chunk_no * CHUNK + i) as u32);
                values.push(value);
            }
            batch::update(self.vectors.map(), &indices, &values).context("writing rule vectors")?;
        }
        let rule_indices: Vec<u32> = (0..c.rules.len() as u32).map(|i| at.rules.start + i).collect();
        batch::update(self.rule_info.map(), &rule_indices, &c.rules).context("writing rule info")?;
        let ruleset = at.slot.to_be_bytes();
        let mut addr_values = Vec::with_capacity(c.addr_entries.len());
        for e in &c.addr_entries {
            let (family, addr, bits) = match e.net.network() {
                std::net::IpAddr::V4(a) => {
                    let mut addr = [0u8; 16];
                    addr[..4].copy_from_slice(&a.octets());
                    (4, addr, e.net.prefix_len())
                }
                std::net::IpAddr::V6(a) => (6, a.octets(), e.net.prefix_len()),
            };
            at.addr_keys.push(Key::new(
                ADDR_KEY_FIXED_BITS + u32::from(bits),
                AddrKey { ruleset, field: e.field, family, _pad: [0; 2], addr },
            ));
            addr_values.push(at.vectors.start + e.vector);
        }
        // Recorded before writing, so a failed batch is undone in full by `remove`.
        batch::update(self.addr_trie.map(), &at.addr_keys, &addr_values).context("writing address entries")?;
        let mut port_values = Vec::with_capacity(c.port_entries.len());
        for e in &c.port_entries {
            // The protocol matched in full (8 bits), any port; or nothing: any protocol.
            let (protocol, bits) = e.protocol.map_or((0, 0), |p| (p, 8));
            at.port_keys.push(Key::new(
                PORT_KEY_FIXED_BITS + bits,
                PortKey { ruleset, field: field::DESTINATION_PORT, protocol, port: [0; 2] },
            ));
            port_values.push(at.vectors.start + e.vector);
        }
        batch::update(self.port_trie.map(), &at.port_keys, &port_values).context("writing port entries")?;
        // Port and IPv4 peer tables: vector indices move to this set's vector range, block
        // references to its block range.
        let relocate = |block: &PortBlock| {
            let mut out = *block;
            for e in &mut out.entries {
                *e = if *e & PORT_BLOCK_REF != 0 {
                    PORT_BLOCK_REF | (at.blocks.start + (*e & !PORT_BLOCK_REF))
                } else {
                    at.vectors.start + *e
                };
            }
            out
        };
        let blocks: Vec<PortBlock> = c.port_blocks.iter().map(relocate).collect();
        let block_indices: Vec<u32> = at.blocks.clone().collect();
        batch::update(self.port_blocks.map(), &block_indices, &blocks).context("writing port blocks")?;
        let tables: Vec<PortBlock> = c.port_tables.iter().map(relocate).collect();
        let table_indices: Vec<u32> = at.tables.clone().collect();
        batch::update(self.port_tables.map(), &table_indices, &tables).context("writing port tables")?;
        let header = RulesetHeader {
            rule_base: at.rules.start,
            rule_count: c.rules.len() as u32,
            flags: c.flags,
            port_tables: at.tables.start,
        };
        self.rulesets.set(at.slot, header, 0).context("writing the rule-set header")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Ranges;

    #[test]
    fn ranges_are_reused_and_merged() {
        let mut r = Ranges::new(100);
        let a = r.take(30).unwrap();
        let b = r.take(30).unwrap();
        let c = r.take(40).unwrap();
        assert_eq!((a.clone(), b.clone(), c.clone()), (0..30, 30..60, 60..100));
        assert!(r.take(1).is_none());
        r.give(b);
        r.give(a);
        assert_eq!(r.take(60), Some(0..60), "freed neighbours merge");
        r.give(c);
        assert!(r.take(41).is_none());
        assert_eq!(r.take(40), Some(60..100));
    }
}
