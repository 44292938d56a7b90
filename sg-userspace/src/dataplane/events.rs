//! The trace map (`SG_TRACE`): the kernel's record of the last packet each hook saw,
//! with its parse result and decision (loaded with `LoadOptions::trace`; tests).

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use sg_common::{TraceRecord, map};

use super::{
    error::{DataplaneError, Result},
    object::Dataplane,
};

impl Dataplane {
    /// Zeroes the trace record of `hook` on every CPU, so the next one read is fresh.
    pub fn clear_trace(&mut self, hook: u32) -> Result<()> {
        let map = self.ebpf.map_mut(map::TRACE).ok_or_else(|| DataplaneError::MissingMap(map::TRACE.to_string()))?;
        let mut array: PerCpuArray<&mut MapData, TraceRecord> = PerCpuArray::try_from(map)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zeros = PerCpuValues::try_from(vec![TraceRecord::default(); cpus])?;
        array.set(hook, zeros, 0)?;
        Ok(())
    }

    /// The most recent trace record of `hook` over all CPUs (needs `LoadOptions::trace`).
    pub fn last_trace(&self, hook: u32) -> Result<TraceRecord> {
        let map = self.ebpf.map(map::TRACE).ok_or_else(|| DataplaneError::MissingMap(map::TRACE.to_string()))?;
        let array: PerCpuArray<&MapData, TraceRecord> = PerCpuArray::try_from(map)?;
        let per_cpu = array.get(&hook, 0)?;
        per_cpu.iter().max_by_key(|record| record.seq).copied().ok_or_else(|| DataplaneError::Refused("no CPUs".into()))
    }
}
