//! Writing compiled rule sets into the kernel maps and switching interfaces to them.
//!
//! An apply compiles everything first (an error leaves the maps untouched), writes each
//! new rule set beside the live one (its own slot, vector, rule-info and table-block
//! ranges, trie entries keyed by the new slot; batched writes), writes the interface's
//! new [`IfaceConfig`] under a free version, then switches the interface with one 4-byte
//! store of a new configuration id, so no packet sees a mixture of two rule sets. The
//! replaced rule sets are deleted afterwards ([`Enforcer::retire_pending`]), after the
//! grace period ([`super::GRACE_PERIOD`]).

use std::{collections::HashMap, ops::Range, sync::Arc, time::Duration, time::Instant};

use sg_common::{IFACE_AUDIT, IfaceConfig, MAX_IFACE_VERSIONS, MAX_IFINDEX, MAX_RULESETS, Timeouts, stats, step};

use super::{
    GRACE_PERIOD,
    error::{ControlError, Result},
    gc,
    handles::{HandleKey, Handles},
};
use crate::{
    dataplane::{
        Capacity, MapSource,
        capacity::{Fill, with_slack},
        placement::Contents,
        rulesets::{Installed, RuleSetMaps, trie_keys},
        sessions::{self, Evictions, SessionTable},
    },
    policy::{
        compile::{CompileCache, Compiled},
        config::{Config, Direction, Identities, InterfaceBinding, Mode},
    },
};

/// The handle keys of a compiled rule set's bits, in bit order, from the rules'
/// identities ([`Identities::name`] named the rules of the config it was compiled from).
fn handle_keys(identities: &Identities, c: &Compiled, ifindex: u32, hook: u32) -> Vec<HandleKey> {
    c.rules
        .iter()
        .map(|info| {
            let identity: Arc<str> = match identities.get(info.rule_id) {
                Some(identity) if info.step == step::RULE => Arc::clone(identity),
                _ if info.step == step::NEXT_BAND => "pseudo:next-band".into(),
                _ => format!("pseudo:{}", step::NAMES[usize::from(info.step) % step::COUNT]).into(),
            };
            HandleKey { ifindex, hook, identity }
        })
        .collect()
}

/// First-fit allocator of index ranges in an array map.
#[derive(Debug)]
struct Ranges {
    free: Vec<Range<u32>>,
    len: u32,
}

impl Ranges {
    fn new(len: u32) -> Self {
        #[expect(clippy::single_range_in_vec_init, reason = "one free range, the whole array")]
        let free = vec![0..len];
        Self { free, len }
    }

    /// How full the array is: (entries in use, entries).
    fn fill(&self) -> Fill {
        let free: u32 = self.free.iter().map(|r| r.end - r.start).sum();
        Fill { used: u64::from(self.len - free), capacity: u64::from(self.len) }
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

    /// Marks `range` as used (an adopted rule set's place); false when it is not free.
    fn reserve(&mut self, range: &Range<u32>) -> bool {
        if range.is_empty() {
            return true;
        }
        let Some(i) = self.free.iter().position(|r| r.start <= range.start && range.end <= r.end) else {
            return false;
        };
        let whole = self.free.remove(i);
        let (before, after) = (whole.start..range.start, range.end..whole.end);
        for part in [after, before] {
            if !part.is_empty() {
                self.free.insert(i, part);
            }
        }
        true
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

/// Takes `counts[i]` entries from `ranges[i]` for every `i`, or nothing: at the first
/// array without room, what was taken is given back and that array's index returned.
fn take_all<const N: usize>(mut ranges: [&mut Ranges; N], counts: [u32; N]) -> Result<[Range<u32>; N], usize> {
    let mut taken: Vec<Range<u32>> = Vec::with_capacity(N);
    for (i, &count) in counts.iter().enumerate() {
        match ranges[i].take(count) {
            Some(range) => taken.push(range),
            None => {
                give_all(&mut ranges[..i], taken);
                return Err(i);
            }
        }
    }
    Ok(taken.try_into().unwrap_or_else(|_| unreachable!("one range per array")))
}

/// Gives each range back to its array (`ranges[i]` gets the `i`th).
fn give_all(ranges: &mut [&mut Ranges], taken: impl IntoIterator<Item = Range<u32>>) {
    for (to, range) in ranges.iter_mut().zip(taken) {
        to.give(range);
    }
}

#[derive(Default)]
struct InterfaceState {
    ingress: Option<Installed>,
    egress: Option<Installed>,
    /// What the installed rule sets were written from, when this enforcer wrote them (not
    /// when it adopted them): an apply that compiles the same again keeps them.
    ingress_source: Option<Source>,
    egress_source: Option<Source>,
    /// `IfaceConfig::flags` as published, when this enforcer published them.
    flags: Option<u32>,
    generation: u32,
    /// The published version of its configuration (0: none yet).
    version: u32,
    /// The configuration id published for it (version and serial).
    published: u32,
}

/// A compiled rule set and the handle keys of its bits: equal ones write equal maps and
/// count under the same handles, so the installed set can stay as it is.
#[derive(PartialEq)]
struct Source {
    compiled: Arc<Compiled>,
    keys: Vec<HandleKey>,
}

impl InterfaceState {
    /// The installed set of `hook`.
    fn installed(&self, hook: u32) -> Option<&Installed> {
        if hook == stats::HOOK_INGRESS { self.ingress.as_ref() } else { self.egress.as_ref() }
    }

    /// Whether the installed set of `hook` was written from `compiled` with `keys`.
    fn holds(&self, hook: u32, compiled: &Arc<Compiled>, keys: &[HandleKey]) -> bool {
        let source = if hook == stats::HOOK_INGRESS { &self.ingress_source } else { &self.egress_source };
        // The compile cache returns the very rule set it compiled before when the rules did
        // not change, so the same set is the same `Arc` (comparing contents would read
        // megabytes to find the first difference of a changed one).
        self.installed(hook).is_some()
            && source.as_ref().is_some_and(|s| Arc::ptr_eq(&s.compiled, compiled) && s.keys == keys)
    }
}

/// Where an installed rule set lives in the maps, as the agent's state file records it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlacedSet {
    pub slot: u32,
    pub vectors: Range<u32>,
    /// Absent from state files written before vectors were chunked (their maps are
    /// replaced, not adopted).
    #[serde(default)]
    pub chunks: Range<u32>,
    #[serde(default)]
    pub peer_v6: Range<u32>,
    pub rules: Range<u32>,
    pub tables: Range<u32>,
    pub blocks: Range<u32>,
}

/// One enforced interface in the state file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlacedInterface {
    pub ifindex: u32,
    pub generation: u32,
    pub version: u32,
    pub published: u32,
    pub ingress: PlacedSet,
    pub egress: PlacedSet,
}

/// What an [`Enforcer`] has put where: enough for another process to adopt the maps
/// ([`Enforcer::adopt`]) without rewriting anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnforcerState {
    pub config_serial: u32,
    pub interfaces: Vec<PlacedInterface>,
}

/// Why pinned maps cannot be adopted as the state file describes them.
#[derive(Debug, thiserror::Error)]
#[error("the pinned maps do not match the recorded state: {0}")]
pub struct NotAdoptable(pub String);

/// How full each map with a fixed size is, for `sgctl status` and the metrics: map
/// pressure shows before an apply fails or the session table starts evicting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MapFills {
    /// Live entries of the assured session table (expired ones not yet collected
    /// included).
    pub sessions: Fill,
    /// The same for the opening table (sessions not assured yet).
    #[serde(default)]
    pub opening_sessions: Fill,
    /// Sessions each table's LRU evicted to make room.
    #[serde(default)]
    pub evicted: Evictions,
    /// Remembered first-fragment verdicts.
    pub fragments: Fill,
    /// Rule vectors, their chunks, rule-info entries and port blocks: the rule sets in
    /// force, those a switch replaced that are not retired yet, and the ranges of
    /// retired ones kept for the next apply to write over (each interface and
    /// direction's spare, given back when an apply needs the room).
    pub rule_vectors: Fill,
    #[serde(default)]
    pub rule_chunks: Fill,
    pub rule_info: Fill,
    /// Port-table and peer-table blocks.
    pub port_blocks: Fill,
    /// The IPv6 peer intervals' bounds (`sg_common::PeerV6Bound`).
    #[serde(default)]
    pub ipv6_peer_bounds: Fill,
    /// Rule counter handles (one for each distinct rule of an interface and direction).
    pub rule_handles: Fill,
}

impl MapFills {
    /// Each map's fill with its name (`sessions`, `opening_sessions`, `fragments`,
    /// `rule_vectors`, `rule_chunks`, `rule_info`, `port_blocks`, `ipv6_peer_bounds`,
    /// `rule_handles`), in that order.
    pub fn named(&self) -> [(&'static str, Fill); 9] {
        [
            ("sessions", self.sessions),
            ("opening_sessions", self.opening_sessions),
            ("fragments", self.fragments),
            ("rule_vectors", self.rule_vectors),
            ("rule_chunks", self.rule_chunks),
            ("rule_info", self.rule_info),
            ("port_blocks", self.port_blocks),
            ("ipv6_peer_bounds", self.ipv6_peer_bounds),
            ("rule_handles", self.rule_handles),
        ]
    }
}

/// Figures from one apply: the rule sets in force after it, and how many of them it
/// kept as they were.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ApplyReport {
    pub rule_sets: usize,
    /// Rule sets the apply found compiled exactly as the installed ones (same rules, in
    /// the same order, under the same handles) and left in place, writing nothing.
    pub unchanged: usize,
    pub rules: usize,
    pub vectors: usize,
    pub trie_entries: usize,
    pub compile_time: Duration,
    pub write_time: Duration,
    /// Array entries written (vectors, chunks, blocks, bounds, rule info, tables): a
    /// rule set written over its spare writes only what differs.
    pub entries_written: usize,
}

/// What an apply wrote for one interface before switching it: the new rule set of each
/// direction and what it was written from, or `None` where the installed one stays.
struct Fresh {
    ingress: Option<(Installed, Source)>,
    egress: Option<(Installed, Source)>,
}

/// Rule sets replaced by a switch, deleted once no program run can still read them.
struct Retiring {
    switched: Instant,
    /// Each with the (ifindex, hook) whose spare it becomes, if any.
    sets: Vec<(Option<(u32, u32)>, Installed)>,
    versions: Vec<u32>,
}

/// The array ranges of a retired rule set, kept for the next rule set of the same
/// interface and direction with what they hold: written over them, it changes only the
/// entries that differ (`dataplane::placement`). Nothing reads them (they are past the
/// grace period), so they are free space the enforcer gives back when it needs room.
struct Spare {
    /// In the order of [`Enforcer::arrays`].
    ranges: [Range<u32>; 6],
    contents: Contents,
}

/// Both directions of one interface, compiled (shared with the compile cache and the
/// record of what is installed: a rule set is megabytes).
pub struct CompiledInterface {
    pub ifindex: u32,
    pub mode: Mode,
    pub ingress: Arc<Compiled>,
    pub egress: Arc<Compiled>,
}

/// Compiles every (ifindex, binding) in both directions; the first error stops it.
pub fn compile_targets(cfg: &Config, targets: &[(u32, &InterfaceBinding)]) -> Result<Vec<CompiledInterface>> {
    compile_targets_with(&mut CompileCache::default(), cfg, targets)
}

/// [`compile_targets`] through `cache`: rule sets whose rules did not change since the
/// cache's last compile are taken from it as they are.
pub fn compile_targets_with(
    cache: &mut CompileCache,
    cfg: &Config,
    targets: &[(u32, &InterfaceBinding)],
) -> Result<Vec<CompiledInterface>> {
    let compiled = targets
        .iter()
        .map(|(ifindex, binding)| {
            Ok(CompiledInterface {
                ifindex: *ifindex,
                mode: binding.mode,
                ingress: cache.compile(cfg, binding, Direction::Ingress)?,
                egress: cache.compile(cfg, binding, Direction::Egress)?,
            })
        })
        .collect();
    cache.keep_used();
    compiled
}

/// An adoption that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(transparent)]
    Stale(NotAdoptable),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Dataplane(#[from] crate::dataplane::DataplaneError),
}

/// Owns the classification maps and what is installed in them.
pub struct Enforcer {
    maps: RuleSetMaps,
    free_versions: Vec<u32>,
    /// Counts applies, for configuration ids.
    config_serial: u32,
    vector_ranges: Ranges,
    chunk_ranges: Ranges,
    peer_v6_ranges: Ranges,
    rule_ranges: Ranges,
    table_ranges: Ranges,
    block_ranges: Ranges,
    free_slots: Vec<u32>,
    installed: HashMap<u32, InterfaceState>,
    retiring: Vec<Retiring>,
    spares: HashMap<(u32, u32), Spare>,
    grace: Duration,
    sessions: SessionTable,
    current_timeouts: Timeouts,
    handles: Handles,
    /// Interface counter slots (`IfaceConfig::counters`) by ifindex, and the free ones.
    iface_slots: HashMap<u32, u32>,
    free_iface_slots: Vec<u32>,
    compile_cache: CompileCache,
    /// The identities of the rules applied last, for the handle keys.
    identities: Identities,
}

impl Enforcer {
    /// Takes the classification maps out of `dp` (loaded with `capacity`).
    pub fn new(dp: &mut impl MapSource, capacity: &Capacity) -> Result<Self> {
        Ok(Self {
            maps: RuleSetMaps::take(dp)?,
            // Version 0 means "not enforced".
            free_versions: (1..MAX_IFACE_VERSIONS).rev().collect(),
            config_serial: 0,
            vector_ranges: Ranges::new(capacity.vectors),
            chunk_ranges: Ranges::new(capacity.chunks),
            peer_v6_ranges: Ranges::new(capacity.peer_v6),
            rule_ranges: Ranges::new(capacity.rule_info),
            table_ranges: Ranges::new(capacity.port_tables),
            block_ranges: Ranges::new(capacity.port_blocks),
            // Slot 0 means "none".
            free_slots: (1..MAX_RULESETS).rev().collect(),
            installed: HashMap::new(),
            retiring: Vec::new(),
            spares: HashMap::new(),
            grace: GRACE_PERIOD,
            sessions: SessionTable::take(dp)?,
            current_timeouts: Timeouts::default(),
            // One handle a rule-info entry at most, and 0 means none.
            handles: Handles::new(capacity.rule_info + 1),
            iface_slots: HashMap::new(),
            free_iface_slots: (1..stats::IFACES).rev().collect(),
            compile_cache: CompileCache::default(),
            identities: Identities::default(),
        })
    }

    /// Compiles `targets` (ifindex, binding) through this enforcer's compile cache
    /// ([`compile_targets_with`]).
    pub fn compile(&mut self, cfg: &Config, targets: &[(u32, &InterfaceBinding)]) -> Result<Vec<CompiledInterface>> {
        compile_targets_with(&mut self.compile_cache, cfg, targets)
    }

    /// Applies `cfg` to the interfaces in `targets` (ifindex, binding): all or nothing.
    pub fn apply(&mut self, cfg: &Config, targets: &[(u32, &InterfaceBinding)]) -> Result<ApplyReport> {
        let started = Instant::now();
        let compiled = self.compile(cfg, targets)?;
        let compile_time = started.elapsed();
        let mut report = self.apply_compiled(cfg, &compiled)?;
        report.compile_time = compile_time;
        Ok(report)
    }

    /// [`Enforcer::apply`] for rule sets already compiled with [`compile_targets`].
    pub fn apply_compiled(&mut self, cfg: &Config, compiled: &[CompiledInterface]) -> Result<ApplyReport> {
        if let Some(c) = compiled.iter().find(|c| c.ifindex >= MAX_IFINDEX) {
            return Err(ControlError::IfindexTooLarge(c.ifindex));
        }
        crate::dataplane::fault::apply_started();
        // Make room: what an earlier apply replaced goes now.
        self.retire_pending();
        // What the fixed-size tables can take is checked before anything is written, so
        // a file naming too many interfaces fails whole, with the limit in the message.
        let new_interfaces = compiled.iter().filter(|c| !self.iface_slots.contains_key(&c.ifindex)).count();
        if new_interfaces > self.free_iface_slots.len() {
            return Err(ControlError::TooManyInterfaces {
                count: self.iface_slots.len() + new_interfaces,
                limit: self.iface_slots.len() + self.free_iface_slots.len(),
            });
        }
        if compiled.len() * 2 > self.free_slots.len() || compiled.len() > self.free_versions.len() {
            return Err(ControlError::NoFreeSlot);
        }
        let mut report = ApplyReport::default();
        let written = Instant::now();
        self.identities.name(cfg);
        let mut fresh = Vec::with_capacity(compiled.len());
        for CompiledInterface { ifindex, mode, ingress, egress } in compiled {
            let keys_in = handle_keys(&self.identities, ingress, *ifindex, stats::HOOK_INGRESS);
            let keys_out = handle_keys(&self.identities, egress, *ifindex, stats::HOOK_EGRESS);
            // A rule set compiled exactly as the installed one stays where it is.
            let holds =
                |hook, c, keys: &[HandleKey]| self.installed.get(ifindex).is_some_and(|s| s.holds(hook, c, keys));
            let keep_in = holds(stats::HOOK_INGRESS, ingress, &keys_in);
            let keep_out = holds(stats::HOOK_EGRESS, egress, &keys_out);
            let mut pair = Fresh { ingress: None, egress: None };
            let mut written = Ok(());
            for (keep, hook, c, keys, place) in [
                (keep_in, stats::HOOK_INGRESS, ingress, keys_in, &mut pair.ingress),
                (keep_out, stats::HOOK_EGRESS, egress, keys_out, &mut pair.egress),
            ] {
                if keep {
                    report.unchanged += 1;
                    continue;
                }
                let spare = self.spares.remove(&(*ifindex, hook));
                // The handles of the set this one replaces, bit by bit: most bits are the
                // same rule as before.
                let hints = self.installed.get(ifindex).and_then(|s| s.installed(hook)).map(|i| i.handles.clone());
                match self.install(c, &keys, hints.as_deref().unwrap_or_default(), spare) {
                    Ok((installed, written)) => {
                        report.entries_written += written;
                        *place = Some((installed, Source { compiled: Arc::clone(c), keys }));
                    }
                    Err(err) => {
                        written = Err(err);
                        break;
                    }
                }
            }
            if let Err(err) = written {
                // Nothing was switched yet: drop what this apply wrote.
                fresh.push((*ifindex, *mode, pair));
                self.discard(fresh);
                return Err(err);
            }
            fresh.push((*ifindex, *mode, pair));
            for c in [ingress, egress] {
                report.rule_sets += 1;
                report.rules += c.rules.len();
                report.vectors += c.vectors.len();
                report.trie_entries += c.addr_entries.len() + c.port_entries.len();
            }
        }
        // Timeouts once every rule set is written (a failure above leaves the old ones):
        // they only loosen or tighten idle expiry, never admit a packet.
        let timeouts = sessions::timeouts(&cfg.sessions);
        if let Err(err) = self.maps.set_timeouts(timeouts) {
            self.discard(fresh);
            return Err(err.into());
        }
        // Flow-cache entries are trusted for a time derived from the timeouts: new ones
        // need every interface's configuration published anew, so none outlives them.
        let timeouts_changed = timeouts != self.current_timeouts;
        self.current_timeouts = timeouts;
        let mut retired = Vec::new();
        let mut retired_versions = Vec::new();
        for (ifindex, mode, Fresh { ingress, egress }) in fresh {
            let flags = if mode == Mode::Audit { IFACE_AUDIT } else { 0 };
            let state = self.installed.entry(ifindex).or_default();
            if ingress.is_none() && egress.is_none() && state.flags == Some(flags) && !timeouts_changed {
                // The same rules in the same mode: the published configuration stands, and
                // with it the flow cache's entries and every session's generation.
                continue;
            }
            let version = self.free_versions.pop().ok_or(ControlError::NoFreeVersion)?;
            let counters = self.iface_slot(ifindex)?;
            let state = self.installed.entry(ifindex).or_default();
            let slot = |new: &Option<(Installed, Source)>, old: &Option<Installed>| match (new, old) {
                (Some((installed, _)), _) | (None, Some(installed)) => installed.slot,
                (None, None) => 0,
            };
            let (ingress_slot, egress_slot) = (slot(&ingress, &state.ingress), slot(&egress, &state.egress));
            state.generation = state.generation.wrapping_add(1);
            let config = IfaceConfig {
                ingress: ingress_slot,
                egress: egress_slot,
                generation: state.generation,
                flags,
                counters,
                _pad: 0,
            };
            self.maps.set_iface_config(version, config)?;
            // The switch: one 4-byte store publishes the new configuration, under an id
            // no recent apply used (see `sg_common::config_version`).
            self.config_serial = (self.config_serial + 1) % (u32::MAX / MAX_IFACE_VERSIONS);
            let id = version + self.config_serial * MAX_IFACE_VERSIONS;
            self.maps.switch(ifindex, id)?;
            retired_versions.extend((state.version != 0).then_some(state.version));
            state.version = version;
            state.published = id;
            state.flags = Some(flags);
            if let Some((installed, source)) = ingress {
                retired.extend(state.ingress.replace(installed).map(|i| (Some((ifindex, stats::HOOK_INGRESS)), i)));
                state.ingress_source = Some(source);
            }
            if let Some((installed, source)) = egress {
                retired.extend(state.egress.replace(installed).map(|i| (Some((ifindex, stats::HOOK_EGRESS)), i)));
                state.egress_source = Some(source);
            }
        }
        report.write_time = written.elapsed();
        // The new rules are in force; deleting the old ones is cleanup that can wait
        // for `retire_pending` (the agent calls it right after reporting the apply).
        self.retiring.push(Retiring { switched: Instant::now(), sets: retired, versions: retired_versions });
        Ok(report)
    }

    /// Takes over maps an earlier process filled, as `state` records them, for the rule
    /// sets `compiled` (the same rule file compiled again: it gives the trie keys to
    /// delete later). Nothing is written, except that trie entries of slots no interface
    /// uses (an apply cut short) are deleted. Fails when the maps or the rule file do not
    /// match the record.
    pub fn adopt(
        dp: &mut impl MapSource,
        capacity: &Capacity,
        state: &EnforcerState,
        (cfg, compiled): (&Config, &[CompiledInterface]),
        timeouts: Timeouts,
    ) -> std::result::Result<Self, AdoptError> {
        let mut this = Self::new(dp, capacity)?;
        this.identities.name(cfg);
        this.config_serial = state.config_serial;
        this.current_timeouts = timeouts;
        let stale = |why: String| AdoptError::Stale(NotAdoptable(why));
        let mut slots = Vec::new();
        for placed in &state.interfaces {
            let c = compiled
                .iter()
                .find(|c| c.ifindex == placed.ifindex)
                .ok_or_else(|| stale(format!("ifindex {} is not in the rule file", placed.ifindex)))?;
            let live = this.maps.published(placed.ifindex)?;
            if live != placed.published {
                return Err(stale(format!(
                    "ifindex {} publishes configuration {live}, the record says {}",
                    placed.ifindex, placed.published
                )));
            }
            let mut place =
                |p: &PlacedSet, rules: &Compiled, hook: u32| -> std::result::Result<Installed, AdoptError> {
                    // Ranges have some room beyond what the set needs (`with_slack`).
                    let fits = p.vectors.len() >= rules.vectors.len()
                        && p.chunks.len() >= rules.chunks.len()
                        && p.peer_v6.len() >= rules.peer_v6.len()
                        && p.rules.len() >= rules.rules.len()
                        && p.tables.len() >= rules.port_tables.len()
                        && p.blocks.len() >= rules.port_blocks.len();
                    let free = this.vector_ranges.reserve(&p.vectors)
                        && this.chunk_ranges.reserve(&p.chunks)
                        && this.peer_v6_ranges.reserve(&p.peer_v6)
                        && this.rule_ranges.reserve(&p.rules)
                        && this.table_ranges.reserve(&p.tables)
                        && this.block_ranges.reserve(&p.blocks)
                        && this.free_slots.contains(&p.slot);
                    if !fits || !free {
                        return Err(stale(format!("rule set in slot {} does not match the rule file", p.slot)));
                    }
                    this.free_slots.retain(|s| *s != p.slot);
                    let (addr_keys, port_keys) = trie_keys(rules, p.slot);
                    // The handles the kernel counts these rules by, as the maps hold them.
                    let handles = this.maps.handles(p.rules.start..p.rules.start + rules.rules.len() as u32)?;
                    let keys = handle_keys(&this.identities, rules, placed.ifindex, hook);
                    for ((handle, key), info) in handles.iter().zip(keys).zip(&rules.rules) {
                        this.handles.adopt(*handle, key, info.rule_id, info.step);
                    }
                    Ok(Installed {
                        slot: p.slot,
                        vectors: p.vectors.clone(),
                        chunks: p.chunks.clone(),
                        peer_v6: p.peer_v6.clone(),
                        rules: p.rules.clone(),
                        tables: p.tables.clone(),
                        blocks: p.blocks.clone(),
                        addr_keys,
                        port_keys,
                        handles,
                        // What an earlier process wrote there is not known here: the
                        // next rule set goes to fresh ranges, written whole.
                        contents: Contents::unknown(
                            [&p.vectors, &p.chunks, &p.peer_v6, &p.rules, &p.tables, &p.blocks].map(|r| r.len()),
                        ),
                    })
                };
            let ingress = place(&placed.ingress, &c.ingress, stats::HOOK_INGRESS)?;
            let egress = place(&placed.egress, &c.egress, stats::HOOK_EGRESS)?;
            let slot = this.maps.iface_config(placed.version)?.counters;
            if slot != 0 && slot < stats::IFACES {
                this.free_iface_slots.retain(|s| *s != slot);
                this.iface_slots.insert(placed.ifindex, slot);
            }
            slots.extend([ingress.slot, egress.slot]);
            this.free_versions.retain(|v| *v != placed.version);
            this.installed.insert(
                placed.ifindex,
                InterfaceState {
                    ingress: Some(ingress),
                    egress: Some(egress),
                    // Sources unknown: the first apply writes both sets anew.
                    ingress_source: None,
                    egress_source: None,
                    flags: None,
                    generation: placed.generation,
                    version: placed.version,
                    published: placed.published,
                },
            );
        }
        let orphans = this.maps.delete_orphans(&slots)?;
        if orphans > 0 {
            tracing::info!("deleted {orphans} trie entries of rule sets no interface uses");
        }
        Ok(this)
    }

    /// What is installed where, for the state file.
    pub fn state(&self) -> EnforcerState {
        let place = |i: &Installed| PlacedSet {
            slot: i.slot,
            vectors: i.vectors.clone(),
            chunks: i.chunks.clone(),
            peer_v6: i.peer_v6.clone(),
            rules: i.rules.clone(),
            tables: i.tables.clone(),
            blocks: i.blocks.clone(),
        };
        let mut interfaces: Vec<PlacedInterface> = self
            .installed
            .iter()
            .filter_map(|(ifindex, s)| {
                Some(PlacedInterface {
                    ifindex: *ifindex,
                    generation: s.generation,
                    version: s.version,
                    published: s.published,
                    ingress: place(s.ingress.as_ref()?),
                    egress: place(s.egress.as_ref()?),
                })
            })
            .collect();
        interfaces.sort_by_key(|i| i.ifindex);
        EnforcerState { config_serial: self.config_serial, interfaces }
    }

    /// Starts `ifindex`'s generation count at `generation` (a successor generation of the
    /// programs continues the count, so sessions re-check after the first apply).
    pub fn continue_generation(&mut self, ifindex: u32, generation: u32) {
        self.installed.entry(ifindex).or_default().generation = generation;
    }

    /// The interfaces rules are installed for.
    pub fn interfaces(&self) -> Vec<u32> {
        let mut all: Vec<u32> = self.installed.iter().filter(|(_, s)| s.ingress.is_some()).map(|(i, _)| *i).collect();
        all.sort_unstable();
        all
    }

    /// Stops enforcing on `ifindex` (its packets pass as unconfigured).
    pub fn clear(&mut self, ifindex: u32) -> Result<()> {
        if let Some(slot) = self.iface_slots.remove(&ifindex) {
            self.free_iface_slots.push(slot);
        }
        if let Some(state) = self.installed.remove(&ifindex) {
            self.maps.clear(ifindex)?;
            let sets = state.ingress.into_iter().chain(state.egress).map(|i| (None, i)).collect();
            self.retiring.push(Retiring { switched: Instant::now(), sets, versions: vec![state.version] });
            self.retire_pending();
        }
        for hook in [stats::HOOK_INGRESS, stats::HOOK_EGRESS] {
            if let Some(spare) = self.spares.remove(&(ifindex, hook)) {
                give_all(&mut self.arrays(), spare.ranges);
            }
        }
        Ok(())
    }

    /// How long a replaced rule set stays readable after the switch, and the session
    /// hints after a rebuild ([`GRACE_PERIOD`] by default). Zero is only right when no
    /// packet can be in flight (BPF_PROG_TEST_RUN, which runs synchronously).
    pub fn set_grace_period(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// The session table.
    pub fn sessions(&mut self) -> &mut SessionTable {
        &mut self.sessions
    }

    /// Frees expired sessions, counting each as expired on its interface and hook (as
    /// the programs count those they find expired); returns how many.
    pub fn collect_garbage(&mut self) -> Result<usize> {
        let removed = gc::collect_garbage(&mut self.sessions, &self.current_timeouts, self.grace)?;
        self.record_session_ledger()?;
        let mut by_slot: HashMap<u32, u64> = HashMap::new();
        for (ifindex, hook) in &removed {
            if let Some(iface) = self.iface_slots.get(ifindex) {
                *by_slot.entry(stats::block(*iface, hook % stats::HOOKS) + stats::SESSIONS_EXPIRED).or_default() += 1;
            }
        }
        for (slot, n) in by_slot {
            self.maps.add_to_counter(slot, n)?;
        }
        Ok(removed.len())
    }

    /// How many entries the address and port tries hold, counted in the kernel: every
    /// installed rule set's, plus those of replaced sets not yet retired.
    pub fn trie_entries(&self) -> Result<usize> {
        Ok(self.maps.trie_entries()?)
    }

    /// The ids of the session maps and `SG_STATS`, for `sgctl sessions`.
    pub fn session_map_ids(&self) -> Result<String> {
        Ok(self.sessions.ids(self.maps.counters_id()?)?)
    }

    /// Adds what userspace put into and took out of the session tables to the ledger in
    /// `SG_STATS` (`sg_common::stats::LEDGER_USER`).
    pub fn record_session_ledger(&mut self) -> Result<()> {
        for (slot, n) in self.sessions.take_ledger() {
            self.maps.add_to_counter(slot, n)?;
        }
        Ok(())
    }

    /// How full the maps are, and the sessions each table's LRU evicted since the
    /// programs were loaded (carried across upgrades with the counters); `fragments` is
    /// the fragment table's, which the enforcer does not hold
    /// ([`crate::dataplane::sessions::fragment_fill`]).
    pub fn fills(&mut self, fragments: Fill) -> Result<MapFills> {
        self.record_session_ledger()?;
        let counters = self.maps.counters()?;
        let (sessions, opening_sessions) = (self.sessions.fill()?, self.sessions.opening_fill()?);
        Ok(MapFills {
            sessions,
            opening_sessions,
            evicted: SessionTable::evictions(&counters, [sessions.used, opening_sessions.used]),
            fragments,
            rule_vectors: self.vector_ranges.fill(),
            rule_chunks: self.chunk_ranges.fill(),
            rule_info: self.rule_ranges.fill(),
            port_blocks: self.block_ranges.fill(),
            ipv6_peer_bounds: self.peer_v6_ranges.fill(),
            rule_handles: self.handles.fill(),
        })
    }

    /// The packet counters (`SG_STATS`, which the enforcer holds), summed over CPUs.
    pub fn counters(&self) -> Result<Vec<u64>> {
        Ok(self.maps.counters()?)
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
            for (owner, installed) in sets {
                match owner {
                    Some(owner) => self.keep_as_spare(owner, installed),
                    None => self.remove(installed),
                }
            }
            self.free_versions.extend(versions);
        }
        started.elapsed()
    }

    /// The counter slot of `ifindex`, given (and zeroed) on its first apply.
    fn iface_slot(&mut self, ifindex: u32) -> Result<u32> {
        if let Some(slot) = self.iface_slots.get(&ifindex) {
            return Ok(*slot);
        }
        let slot =
            self.free_iface_slots.pop().ok_or(ControlError::NoRoom { count: 1, what: "interface counter slots" })?;
        self.maps.zero_iface_counters(slot)?;
        self.iface_slots.insert(ifindex, slot);
        Ok(slot)
    }

    /// The counter slot of each enforced interface.
    pub fn iface_slots(&self) -> &HashMap<u32, u32> {
        &self.iface_slots
    }

    /// The rule handles in use.
    pub fn handles(&self) -> &Handles {
        &self.handles
    }

    /// Before the first apply into new maps: each rule keeps the handle `from` gave it.
    pub fn seed_handles(&mut self, from: &Handles) {
        for (handle, u) in from.in_use() {
            self.handles.reserve(handle, u.key.clone(), u.rule_id, u.step);
        }
    }

    /// After that apply: frees the seeded handles no rule took.
    pub fn drop_unused_handles(&mut self) {
        self.handles.drop_unused();
    }

    /// Deletes the rule sets an apply wrote before it failed, none of them switched in.
    fn discard<T, M>(&mut self, fresh: Vec<(T, M, Fresh)>) {
        for (_, _, Fresh { ingress, egress }) in fresh {
            for (installed, _) in ingress.into_iter().chain(egress) {
                self.remove(installed);
            }
        }
    }

    /// Retires `installed` but keeps its array ranges, with what they hold, as the
    /// spare of `owner` (replacing an older spare, whose ranges go back).
    fn keep_as_spare(&mut self, owner: (u32, u32), installed: Installed) {
        for handle in &installed.handles {
            self.handles.release(*handle);
        }
        self.maps.delete_keys(&installed);
        self.free_slots.push(installed.slot);
        let Installed { vectors, chunks, peer_v6, rules, tables, blocks, contents, .. } = installed;
        let spare = Spare { ranges: [vectors, chunks, peer_v6, rules, tables, blocks], contents };
        if let Some(old) = self.spares.insert(owner, spare) {
            give_all(&mut self.arrays(), old.ranges);
        }
    }

    /// Gives every spare's ranges back (an install needs the room).
    fn drop_spares(&mut self) {
        for (_, spare) in std::mem::take(&mut self.spares) {
            give_all(&mut self.arrays(), spare.ranges);
        }
    }

    fn remove(&mut self, installed: Installed) {
        for handle in &installed.handles {
            self.handles.release(*handle);
        }
        self.maps.delete_keys(&installed);
        let Installed { slot, vectors, chunks, peer_v6, rules, tables, blocks, .. } = installed;
        give_all(&mut self.arrays(), [vectors, chunks, peer_v6, rules, tables, blocks]);
        self.free_slots.push(slot);
    }

    /// The allocators of the rule-set arrays, in the order of [`Self::ARRAYS`].
    fn arrays(&mut self) -> [&mut Ranges; 6] {
        [
            &mut self.vector_ranges,
            &mut self.chunk_ranges,
            &mut self.peer_v6_ranges,
            &mut self.rule_ranges,
            &mut self.table_ranges,
            &mut self.block_ranges,
        ]
    }

    /// What the arrays of [`Self::arrays`] hold, for the error that one is full.
    const ARRAYS: [&str; 6] =
        ["vectors", "vector chunks", "IPv6 peer intervals", "rules", "port tables", "port blocks"];

    /// Writes one compiled rule set into free space, over `spare` when the set fits its
    /// ranges (only the entries that differ are written); live rule sets are not
    /// touched. Returns it and the entries written. A spare it does not use, or that it
    /// fails before using, goes back to free space.
    fn install(
        &mut self,
        c: &Arc<Compiled>,
        keys: &[HandleKey],
        hints: &[u32],
        spare: Option<Spare>,
    ) -> Result<(Installed, usize)> {
        let mut spare = spare;
        let result = self.install_over(c, keys, hints, &mut spare);
        if let Some(unused) = spare {
            give_all(&mut self.arrays(), unused.ranges);
        }
        result
    }

    /// [`Enforcer::install`]; takes `spare` out of its option when it writes over it.
    fn install_over(
        &mut self,
        c: &Arc<Compiled>,
        keys: &[HandleKey],
        hints: &[u32],
        spare: &mut Option<Spare>,
    ) -> Result<(Installed, usize)> {
        let mut handles = Vec::with_capacity(keys.len());
        // Handles new to a rule start their counters at zero (all in one batch).
        let mut new_handles = Vec::new();
        let release = |this: &mut Self, handles: &[u32]| handles.iter().for_each(|h| this.handles.release(*h));
        for (bit, (key, info)) in keys.iter().zip(&c.rules).enumerate() {
            match self.handles.acquire_hinted(key, hints.get(bit).copied(), info.rule_id, info.step) {
                Some((handle, fresh)) => {
                    handles.push(handle);
                    if fresh {
                        new_handles.push(handle);
                    }
                }
                None => {
                    release(self, &handles);
                    return Err(ControlError::NoRoom { count: c.rules.len(), what: "rule handles" });
                }
            }
        }
        if let Err(e) = self.maps.zero_rule_counters(&new_handles) {
            release(self, &handles);
            return Err(e.into());
        }
        let Some(slot) = self.free_slots.pop() else {
            release(self, &handles);
            return Err(ControlError::NoFreeSlot);
        };
        let counts =
            [c.vectors.len(), c.chunks.len(), c.peer_v6.len(), c.rules.len(), c.port_tables.len(), c.port_blocks.len()];
        let fits = |s: &Spare| counts.iter().zip(&s.ranges).all(|(n, r)| *n <= r.len());
        let (space, contents) = match spare.take_if(|s| fits(s)) {
            Some(spare) => (spare.ranges, spare.contents),
            None => {
                if let Some(small) = spare.take() {
                    give_all(&mut self.arrays(), small.ranges);
                }
                // Every set has the same number of first-level tables: no slack there.
                let mut want = counts.map(with_slack);
                want[4] = counts[4] as u32;
                let space = match take_all(self.arrays(), want) {
                    Ok(space) => Ok(space),
                    Err(_) => {
                        // Spares are free space: give them back and try again.
                        self.drop_spares();
                        take_all(self.arrays(), want)
                    }
                };
                match space {
                    Ok(space) => {
                        let lens = space.clone().map(|r| r.len());
                        (space, Contents::unknown(lens))
                    }
                    Err(full) => {
                        self.free_slots.push(slot);
                        release(self, &handles);
                        return Err(ControlError::NoRoom { count: counts[full], what: Self::ARRAYS[full] });
                    }
                }
            }
        };
        let [vectors, chunks, peer_v6, rules, tables, blocks] = space;
        let mut installed = Installed {
            slot,
            vectors,
            chunks,
            peer_v6,
            rules,
            tables,
            blocks,
            addr_keys: Vec::new(),
            port_keys: Vec::new(),
            handles,
            contents,
        };
        match self.maps.write(c, &mut installed) {
            Ok(written) => Ok((installed, written)),
            Err(e) => {
                self.remove(installed);
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Ranges, take_all};

    #[test]
    fn taking_space_for_a_rule_set_is_all_or_nothing() {
        let (mut a, mut b, mut c) = (Ranges::new(10), Ranges::new(10), Ranges::new(10));
        assert_eq!(take_all([&mut a, &mut b, &mut c], [4, 11, 2]), Err(1), "the second array is too small");
        assert_eq!(take_all([&mut a, &mut b, &mut c], [10, 10, 10]), Ok([0..10, 0..10, 0..10]), "nothing was kept");
        assert_eq!(take_all([&mut a, &mut b, &mut c], [0, 0, 1]), Err(2));
        assert_eq!(take_all([&mut a, &mut b, &mut c], [0, 0, 0]), Ok([0..0, 0..0, 0..0]));
    }

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
