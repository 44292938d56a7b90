//! Counting: per-CPU counters by interface, hook, step and verdict column (`SG_STATS`),
//! per rule (`SG_RULE_STATS`), and the optional trace record.
//!
//! Every packet costs one increment in `SG_STATS`. A packet decided on the slow path also
//! adds itself to its rule's counters; a flow-cache hit does not: the entry counts it and
//! its bytes, and the kernel adds them to the rule when it folds or replaces the entry
//! (userspace adds what entries still hold when it reads), so the fast path touches no
//! second counter.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use sg_common::{
    DECISION_AUDIT, DECISION_OPENED, Decision, PacketMeta, RuleCounters, TraceRecord, stats, step, verdict,
};

#[map(name = "SG_STATS")]
static SG_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::SLOTS, 0);

/// Sized by userspace (one entry per rule handle, `Capacity::rule_handles`).
#[map(name = "SG_RULE_STATS")]
static SG_RULE_STATS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(1024, 0);

#[map(name = "SG_TRACE")]
static SG_TRACE: PerCpuArray<TraceRecord> = PerCpuArray::with_max_entries(stats::HOOKS, 0);

/// Set to 1 by userspace at load time to record every packet in `SG_TRACE`. A read-only
/// global, so the verifier prunes the tracing code when it is 0.
#[unsafe(no_mangle)]
static SG_TRACE_ENABLED: u8 = 0;

/// Where a packet is counted, beside its decision.
#[repr(C)]
pub struct Counted {
    pub ifindex: u32,
    /// The interface's counter slot (`IfaceConfig::counters`; 0 before it is known).
    pub iface: u32,
    /// The packet's length on the wire.
    pub len: u64,
    /// 1 when the flow cache passed it (its entry counts it for the rule).
    pub cached: u32,
    /// The packet's `flow_ports`, source in the low half: computed once in `decide` for
    /// the hash, the direction and the tuple (each a branch on the protocol and the ICMP
    /// type), and kept here rather than passed, which would cost stack.
    pub ports: u32,
}

#[inline(always)]
pub fn bump(slot: u32) {
    if let Some(counter) = SG_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}

/// The verdict column of a decision: a drop computed in audit mode is its own column.
#[inline(always)]
pub fn column(decision: &Decision) -> u32 {
    if decision.verdict == verdict::PASS {
        stats::PASS
    } else if decision.flags & DECISION_AUDIT != 0 {
        stats::AUDIT_DROP
    } else {
        stats::DROP
    }
}

/// Adds `packets` of `bytes` (and `sessions` opened) to rule handle `rule`.
#[inline(always)]
pub fn add_to_rule(rule: u32, packets: u64, bytes: u64, sessions: u64) {
    if rule == 0 {
        return;
    }
    if let Some(c) = SG_RULE_STATS.get_ptr_mut(rule) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += packets;
            (*c).bytes += bytes;
            (*c).sessions += sessions;
        }
    }
}

/// Counts an entry put into (`what` = inserted) or taken out of a session table.
#[inline(always)]
pub fn ledger(table: u32, what: u32) {
    bump(stats::ledger_slot(stats::LEDGER_KERNEL, table, what));
}

/// An expired session the programs deleted, on interface slot `iface`.
#[inline(always)]
pub fn session_expired(iface: u32, hook: u32) {
    bump(stats::block(iface, hook) + stats::SESSIONS_EXPIRED);
}

/// Counts the decision (one increment; more for a malformed frame, a slow-path packet
/// a rule decided, or an opened session), emits its event, and traces it.
#[inline(always)]
pub fn record(hook: u32, meta: &PacketMeta, decision: &Decision, at: &Counted) {
    let column = column(decision);
    bump(stats::decision_slot(at.iface, hook, decision.step, column));
    if decision.step == step::MALFORMED {
        bump(stats::malformed_slot(at.iface, hook, decision.reason));
    }
    let opened = u64::from(decision.flags & DECISION_OPENED != 0);
    if at.cached == 0 && decision.rule_id != 0 {
        add_to_rule(decision.rule_id, 1, at.len, opened);
    }
    if opened != 0 {
        bump(stats::block(at.iface, hook) + stats::SESSIONS_OPENED);
    }
    if column != stats::PASS || opened != 0 {
        crate::events::emit(hook, meta, decision, at, column);
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
