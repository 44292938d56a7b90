//! The counter map (`SG_STATS`) and turning its raw per-CPU slots into totals people
//! read.

use aya::maps::{MapData, PerCpuArray};
use serde::Serialize;
use sg_common::{malformed, map, stats, step, verdict};

use super::{
    MapSource,
    error::{DataplaneError, Result},
    object::Dataplane,
};

impl Dataplane {
    /// Counter values summed over CPUs, indexed by [`sg_common::stats`] slot.
    pub fn counters(&self) -> Result<Vec<u64>> {
        let map = self.ebpf.map(map::STATS).ok_or_else(|| DataplaneError::MissingMap(map::STATS.to_string()))?;
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        (0..stats::SLOTS).map(|slot| Ok(array.get(&slot, 0)?.iter().sum())).collect()
    }
}

/// Counter values of a pinned generation, summed over CPUs.
pub fn counters_of(source: &mut impl MapSource) -> Result<Vec<u64>> {
    let array: PerCpuArray<MapData, u64> = source.take_map(map::STATS)?;
    (0..stats::SLOTS).map(|slot| Ok(array.get(&slot, 0)?.iter().sum())).collect()
}

/// Adds the counters of generation `from` into generation `to`'s, CPU by CPU, so the
/// totals go on across an upgrade (a packet counted by `to`'s programs while the sum is
/// written may be lost from the count: counters, not accounting).
pub fn carry_counters(from: &mut impl MapSource, to: &mut impl MapSource) -> Result<()> {
    let old: PerCpuArray<MapData, u64> = from.take_map(map::STATS)?;
    let mut new: PerCpuArray<MapData, u64> = to.take_map(map::STATS)?;
    for slot in 0..stats::SLOTS {
        let before = old.get(&slot, 0)?;
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HookCounters {
    pub passed: u64,
    pub dropped: u64,
    /// Packets per deciding step, by step name, with their verdict: `rule/drop` etc.
    pub by_step: Vec<(String, u64)>,
    /// Malformed drops by reason name.
    pub malformed: Vec<(String, u64)>,
}

/// Sums the slots of `hook` out of the full counter array.
pub fn hook_counters(slots: &[u64], hook: u32) -> HookCounters {
    let at = |slot: u32| slots.get(slot as usize).copied().unwrap_or(0);
    let mut out = HookCounters::default();
    for s in 0..step::COUNT as u8 {
        for (v, name) in [(verdict::PASS, "pass"), (verdict::DROP, "drop")] {
            let n = at(stats::decision_slot(hook, s, v));
            if v == verdict::PASS {
                out.passed += n;
            } else {
                out.dropped += n;
            }
            if n > 0 {
                out.by_step.push((format!("{}/{name}", step::NAMES[s as usize]), n));
            }
        }
    }
    for r in 1..malformed::COUNT as u8 {
        let n = at(stats::malformed_slot(hook, r));
        if n > 0 {
            out.malformed.push((malformed::NAMES[r as usize].to_string(), n));
        }
    }
    out
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
        slots[stats::decision_slot(stats::HOOK_EGRESS, step::NOT_IP, verdict::PASS) as usize] = 3;
        slots[stats::decision_slot(stats::HOOK_EGRESS, step::MALFORMED, verdict::DROP) as usize] = 2;
        slots[stats::malformed_slot(stats::HOOK_EGRESS, malformed::IPV4_BAD_IHL) as usize] = 2;
        slots[stats::decision_slot(stats::HOOK_INGRESS, step::NOT_IP, verdict::PASS) as usize] = 99;
        let egress = hook_counters(&slots, stats::HOOK_EGRESS);
        assert_eq!((egress.passed, egress.dropped), (3, 2));
        assert_eq!(egress.malformed, vec![("ipv4-bad-ihl".to_string(), 2)]);
        assert_eq!(egress.to_string(), "pass 3 drop 2 (malformed 2: ipv4-bad-ihl=2)");
    }
}
