//! Per-CPU counters and the optional trace record.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use sg_common::{Decision, PacketMeta, TraceRecord, stats, step};

#[map(name = "SG_STATS")]
static SG_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::SLOTS, 0);

#[map(name = "SG_TRACE")]
static SG_TRACE: PerCpuArray<TraceRecord> = PerCpuArray::with_max_entries(stats::HOOKS, 0);

/// Set to 1 by userspace at load time to record every packet in `SG_TRACE`. A read-only
/// global, so the verifier prunes the tracing code when it is 0.
#[unsafe(no_mangle)]
static SG_TRACE_ENABLED: u8 = 0;

#[inline(always)]
fn bump(slot: u32) {
    if let Some(counter) = SG_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Counts the decision (one increment, two for a malformed frame) and traces it.
#[inline(always)]
pub fn record(hook: u32, meta: &PacketMeta, decision: &Decision) {
    bump(stats::decision_slot(hook, decision.step, decision.verdict));
    if decision.step == step::MALFORMED {
        bump(stats::malformed_slot(hook, decision.reason));
    }
    // SAFETY: reading a plain global.
    if unsafe { core::ptr::read_volatile(&SG_TRACE_ENABLED) } != 0
        && let Some(trace) = SG_TRACE.get_ptr_mut(hook)
    {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*trace).seq += 1;
            (*trace).meta = *meta;
            (*trace).decision = *decision;
        }
    }
}
