//! Verdict events: drops, audit drops and new sessions, written to the `SG_EVENTS` ring
//! buffer behind a per-CPU token bucket per interface, hook and kind.
//!
//! Every event is accounted in `SG_STATS` (`sg_common::stats::event_slot`): emitted, then
//! either suppressed by the bucket, lost because the ring was full, or written. Userspace
//! counts what it reads, so emitted = delivered + suppressed + lost once it has drained
//! the ring.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use sg_common::{Decision, EVENTS_UNLIMITED, Event, EventConfig, PacketMeta, TokenBucket, event_kind, stats};

use crate::stats::{Counted, bump};

/// Sized by userspace at load time (`LoadOptions::event_ring_bytes`).
#[map(name = "SG_EVENTS")]
static SG_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map(name = "SG_EVENT_CONFIG")]
static SG_EVENT_CONFIG: Array<EventConfig> = Array::with_max_entries(1, 0);

#[map(name = "SG_EVENT_BUCKETS")]
static SG_EVENT_BUCKETS: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(stats::IFACES * stats::HOOKS * 2, 0);

/// Takes a token from this CPU's bucket `index` for kind `k` (`TokenBucket::take`).
#[inline(always)]
fn take_token(index: u32, config: &EventConfig, k: usize) -> bool {
    let Some(bucket) = SG_EVENT_BUCKETS.get_ptr_mut(index) else { return false };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    unsafe { (*bucket).take(config, k, crate::flow_cache::jiffies()) }
}

/// Emits the event of a decision whose verdict column is `column` (a drop or audit drop,
/// or an accept that opened a session).
#[inline(never)]
pub fn emit(hook: u32, meta: &PacketMeta, decision: &Decision, at: &Counted, column: u32) {
    let kind = if column == stats::PASS { event_kind::ACCEPT } else { event_kind::DROP };
    let Some(config) = SG_EVENT_CONFIG.get(0) else { return };
    let k = usize::from(kind & 1);
    let rate = config.rate[k];
    if rate == 0 {
        return;
    }
    bump(stats::event_slot(at.iface, hook, kind, stats::EVENT_EMITTED));
    let bucket = ((at.iface % stats::IFACES) * stats::HOOKS + hook % stats::HOOKS) * 2 + u32::from(kind & 1);
    if rate != EVENTS_UNLIMITED && !take_token(bucket, config, k) {
        bump(stats::event_slot(at.iface, hook, kind, stats::EVENT_SUPPRESSED));
        return;
    }
    let Some(mut entry) = SG_EVENTS.reserve::<Event>(0) else {
        bump(stats::event_slot(at.iface, hook, kind, stats::EVENT_LOST));
        return;
    };
    // The clock is read only for an event that is written.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let e = entry.as_mut_ptr();
    // SAFETY: the reserved record is ours until it is submitted; every field is written.
    unsafe {
        (*e).time_ns = now;
        (*e).src = meta.src;
        (*e).dst = meta.dst;
        (*e).src_port = meta.src_port;
        (*e).dst_port = meta.dst_port;
        (*e).ifindex = at.ifindex;
        (*e).rule = decision.rule_id;
        (*e).family = meta.family;
        (*e).protocol = meta.protocol;
        (*e).icmp_type = meta.icmp_type;
        (*e).icmp_code = meta.icmp_code;
        (*e).hook = hook as u8;
        (*e).column = column as u8;
        (*e).step = decision.step;
        (*e).reason = decision.reason;
        (*e).kind = kind;
        (*e)._pad = [0; 11];
    }
    entry.submit(0);
}
