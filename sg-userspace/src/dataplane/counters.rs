//! The counter map (`SG_STATS`) and turning its raw per-CPU slots into totals people
//! read.

use std::collections::HashMap;

use aya::maps::{IterableMap as _, MapData, PerCpuArray};
use serde::Serialize;
use sg_common::{FlowCacheSlot, RuleCounters, malformed, map, stats, step};

use super::{
    MapSource, batch,
    error::{DataplaneError, Doing as _, Result},
    object::Dataplane,
};

impl Dataplane {
    /// Counter values summed over CPUs, indexed by [`sg_common::stats`] slot.
    pub fn counters(&self) -> Result<Vec<u64>> {
        let map = self.ebpf.map(map::STATS).ok_or_else(|| DataplaneError::MissingMap(map::STATS.to_string()))?;
        sum_slots(&PerCpuArray::try_from(map)?)
    }
}

/// Counter values of a pinned generation, summed over CPUs.
pub fn counters_of(source: &mut impl MapSource) -> Result<Vec<u64>> {
    let array: PerCpuArray<MapData, u64> = source.take_map(map::STATS)?;
    sum_slots(&array)
}

/// All of a per-CPU array in one batched read (the counter arrays have thousands of
/// slots, read every second by `sgctl run --interval 1` and on every `sgctl stats`).
fn read_all<T: std::borrow::Borrow<MapData>, V: aya::Pod>(
    array: &PerCpuArray<T, V>,
    what: &str,
) -> Result<batch::PerCpuSlots<V>> {
    batch::read_percpu_array(array.map(), array.len()).doing_with(|| format!("reading {what}"))
}

pub(super) fn sum_slots<T: std::borrow::Borrow<MapData>>(array: &PerCpuArray<T, u64>) -> Result<Vec<u64>> {
    let all = read_all(array, map::STATS)?;
    Ok((0..stats::SLOTS as usize).map(|slot| all.get(slot).iter().sum()).collect())
}

/// What each rule handle decided, summed over CPUs, with the hits flow-cache entries
/// still hold (`FlowCacheEntry::drain`'s counterpart): exact once traffic pauses.
pub fn rule_counters(source: &mut impl MapSource) -> Result<HashMap<u32, RuleCounters>> {
    let rules: PerCpuArray<MapData, RuleCounters> = source.take_map(map::RULE_STATS)?;
    let mut out: HashMap<u32, RuleCounters> = HashMap::new();
    let all = read_all(&rules, map::RULE_STATS)?;
    for (handle, copies) in all.iter().enumerate().skip(1) {
        let mut sum = RuleCounters::default();
        for c in copies {
            sum.packets += c.packets;
            sum.bytes += c.bytes;
            sum.sessions += c.sessions;
        }
        if sum != RuleCounters::default() {
            out.insert(handle as u32, sum);
        }
    }
    let cache: PerCpuArray<MapData, FlowCacheSlot> = source.take_map(map::FLOW_CACHE)?;
    for copies in read_all(&cache, map::FLOW_CACHE)?.iter() {
        for per_cpu in copies {
            for e in &per_cpu.entries {
                if e.uncounted != 0 && e.rule_id != 0 {
                    let c = out.entry(e.rule_id).or_default();
                    c.packets += e.uncounted;
                    c.bytes += e.bytes;
                }
            }
        }
    }
    Ok(out)
}

/// Adds the rule counters of generation `from` (with what its flow cache still holds)
/// into generation `to`'s, handle by handle (the new maps give each rule the handle it
/// had: `Enforcer::seed_handles`).
pub fn carry_rule_counters(from: &mut impl MapSource, to: &mut impl MapSource) -> Result<()> {
    let old = rule_counters(from)?;
    let mut new: PerCpuArray<MapData, RuleCounters> = to.take_map(map::RULE_STATS)?;
    for (handle, c) in old {
        if handle >= new.len() {
            continue;
        }
        let mut now: Vec<RuleCounters> = new.get(&handle, 0)?.iter().copied().collect();
        if let Some(first) = now.first_mut() {
            first.packets += c.packets;
            first.bytes += c.bytes;
            first.sessions += c.sessions;
        }
        new.set(handle, aya::maps::PerCpuValues::try_from(now)?, 0)?;
    }
    Ok(())
}

/// Zeroes the counters of rule handles `handles` on every CPU, in one batch (before
/// they are given to rules).
pub fn zero_rules(rules: &PerCpuArray<MapData, RuleCounters>, handles: &[u32]) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    super::batch::zero_per_cpu::<u32, RuleCounters>(rules.map(), handles, cpus).doing("zeroing rule counters")
}

/// Zeroes interface counter slot `iface`'s blocks on every CPU (before it is given to an
/// interface).
pub fn zero_iface(counters: &mut PerCpuArray<MapData, u64>, iface: u32) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let first = stats::block(iface, 0);
    for slot in first..first + stats::PER_IFACE {
        counters.set(slot, aya::maps::PerCpuValues::try_from(vec![0u64; cpus])?, 0)?;
    }
    Ok(())
}

/// Adds `n` to counter `slot`, on the first CPU's copy: for what userspace counts beside
/// the programs (sessions its garbage collection expired). A read-modify-write: a program
/// bumping the same slot on that CPU meanwhile may be lost from the count; the slots
/// written this way are ones the programs bump rarely.
pub fn add(counters: &mut PerCpuArray<MapData, u64>, slot: u32, n: u64) -> Result<()> {
    let mut values: Vec<u64> = counters.get(&slot, 0)?.iter().copied().collect();
    if let Some(first) = values.first_mut() {
        *first += n;
    }
    counters.set(slot, aya::maps::PerCpuValues::try_from(values)?, 0)?;
    Ok(())
}

/// Adds the counters of generation `from` into generation `to`'s, CPU by CPU, so the
/// totals go on across an upgrade (a packet counted by `to`'s programs while the sum is
/// written may be lost from the count: counters, not accounting).
pub fn carry_counters(from: &mut impl MapSource, to: &mut impl MapSource) -> Result<()> {
    let old: PerCpuArray<MapData, u64> = from.take_map(map::STATS)?;
    let mut new: PerCpuArray<MapData, u64> = to.take_map(map::STATS)?;
    // An older build's counters are laid out differently: they start again.
    if old.len() != new.len() {
        return Ok(());
    }
    let all = read_all(&old, map::STATS)?;
    for slot in 0..stats::SLOTS {
        let before = all.get(slot as usize);
        if before.iter().all(|v| *v == 0) {
            continue;
        }
        let now = new.get(&slot, 0)?;
        let sum: Vec<u64> = before.iter().zip(now.iter()).map(|(a, b)| a + b).collect();
        new.set(slot, aya::maps::PerCpuValues::try_from(sum)?, 0)?;
    }
    Ok(())
}

/// Totals of one hook.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HookCounters {
    pub passed: u64,
    pub dropped: u64,
    /// Drops computed in audit mode: the packets passed.
    pub audit_dropped: u64,
    /// Packets per deciding step, by step name, with their verdict column: `rule/drop`,
    /// `default/audit-drop` etc.
    pub by_step: Vec<(String, u64)>,
    /// Malformed drops by reason name.
    pub malformed: Vec<(String, u64)>,
}

/// Sums the slots of `hook` over every interface slot out of the full counter array.
pub fn hook_counters(slots: &[u64], hook: u32) -> HookCounters {
    let mut out = HookCounters::default();
    for iface in 0..stats::IFACES {
        out.add(&iface_hook_counters(slots, iface, hook));
    }
    out
}

/// The slots of one interface slot and hook.
pub fn iface_hook_counters(slots: &[u64], iface: u32, hook: u32) -> HookCounters {
    let at = |slot: u32| slots.get(slot as usize).copied().unwrap_or(0);
    let mut out = HookCounters::default();
    for s in 0..step::COUNT as u8 {
        for column in 0..stats::COLUMNS {
            let n = at(stats::decision_slot(iface, hook, s, column));
            match column {
                stats::PASS => out.passed += n,
                stats::DROP => out.dropped += n,
                _ => out.audit_dropped += n,
            }
            if n > 0 {
                out.by_step.push((format!("{}/{}", step::NAMES[s as usize], stats::COLUMN_NAMES[column as usize]), n));
            }
        }
    }
    for r in 1..malformed::COUNT as u8 {
        let n = at(stats::malformed_slot(iface, hook, r));
        if n > 0 {
            out.malformed.push((malformed::NAMES[r as usize].to_string(), n));
        }
    }
    out
}

impl HookCounters {
    fn add(&mut self, other: &HookCounters) {
        self.passed += other.passed;
        self.dropped += other.dropped;
        self.audit_dropped += other.audit_dropped;
        for (list, more) in [(&mut self.by_step, &other.by_step), (&mut self.malformed, &other.malformed)] {
            for (name, n) in more {
                match list.iter_mut().find(|(k, _)| k == name) {
                    Some((_, total)) => *total += n,
                    None => list.push((name.clone(), *n)),
                }
            }
        }
    }
}

/// One line of both hooks' totals: `ingress: ... | egress: ...`, or that as JSON.
pub fn counter_line(slots: &[u64], json: bool) -> String {
    let ingress = hook_counters(slots, stats::HOOK_INGRESS);
    let egress = hook_counters(slots, stats::HOOK_EGRESS);
    if json {
        serde_json::json!({ "ingress": ingress, "egress": egress }).to_string()
    } else {
        format!("ingress: {ingress} | egress: {egress}")
    }
}

impl std::fmt::Display for HookCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pass {} drop {}", self.passed, self.dropped)?;
        if self.audit_dropped > 0 {
            write!(f, " audit-drop {}", self.audit_dropped)?;
        }
        let malformed: u64 = self.malformed.iter().map(|(_, n)| n).sum();
        if malformed > 0 {
            write!(f, " (malformed {malformed}:")?;
            for (name, n) in &self.malformed {
                write!(f, " {name}={n}")?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_steps_into_totals_and_names_reasons() {
        let mut slots = vec![0u64; stats::SLOTS as usize];
        slots[stats::decision_slot(0, stats::HOOK_EGRESS, step::NOT_IP, stats::PASS) as usize] = 3;
        slots[stats::decision_slot(5, stats::HOOK_EGRESS, step::MALFORMED, stats::DROP) as usize] = 2;
        slots[stats::malformed_slot(5, stats::HOOK_EGRESS, malformed::IPV4_BAD_IHL) as usize] = 2;
        slots[stats::decision_slot(5, stats::HOOK_EGRESS, step::DEFAULT, stats::AUDIT_DROP) as usize] = 4;
        slots[stats::decision_slot(1, stats::HOOK_INGRESS, step::NOT_IP, stats::PASS) as usize] = 99;
        let egress = hook_counters(&slots, stats::HOOK_EGRESS);
        assert_eq!((egress.passed, egress.dropped, egress.audit_dropped), (3, 2, 4));
        assert_eq!(egress.malformed, vec![("ipv4-bad-ihl".to_string(), 2)]);
        assert_eq!(egress.to_string(), "pass 3 drop 2 audit-drop 4 (malformed 2: ipv4-bad-ihl=2)");
        assert_eq!(iface_hook_counters(&slots, 5, stats::HOOK_EGRESS).passed, 0, "slot 0 is another interface");
    }
}
