//! The per-CPU flow cache in the kernel (the scheme is in `sg_common::flow_cache`): the
//! cache array and the epoch userspace bumps to invalidate every entry at once.

use aya_ebpf::{
    helpers::bpf_jiffies64,
    macros::map,
    maps::{Array, PerCpuArray},
};
use sg_common::{FLOW_CACHE_SLOTS, FlowCacheEntry, FlowCacheSlot};

#[map(name = "SG_FLOW_CACHE")]
static SG_FLOW_CACHE: PerCpuArray<FlowCacheSlot> = PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

/// One bit a slot, per CPU (kept in the per-CPU scratch, `CacheWork::used`): set once an
/// entry was ever written there. A probe of a slot whose bit is clear is skipped: a cold
/// slot is a cache miss in the CPU's caches too, which costs new flows ~6% of throughput
/// when nothing is cached (measured with `sg-bench --quick --only 2`). Bits are never
/// cleared; a stale one costs a probe.
pub const USED_WORDS: usize = FLOW_CACHE_SLOTS as usize / 64;

/// Whether slot `index` ever held an entry on this CPU.
#[inline(always)]
pub fn slot_used(used: &[u64; USED_WORDS], index: u32) -> bool {
    used[(index as usize / 64) % USED_WORDS] & (1 << (index % 64)) != 0
}

/// Marks slot `index` as holding an entry on this CPU.
#[inline(always)]
pub fn mark_used(used: &mut [u64; USED_WORDS], index: u32) {
    used[(index as usize / 64) % USED_WORDS] |= 1 << (index % 64);
}

/// Bumped by every flush of the session table.
#[map(name = "SG_CACHE_EPOCH")]
static SG_CACHE_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// The entry of direction `dir` (0 or 1) in this CPU's slot `index`.
#[inline(always)]
pub fn entry(index: u32, dir: usize) -> Option<&'static mut FlowCacheEntry> {
    let slot = SG_FLOW_CACHE.get_ptr_mut(index)?;
    // SAFETY: per-CPU, and no other program runs on this CPU until this one returns.
    let slot = unsafe { &mut *slot };
    Some(if dir == 0 { &mut slot.entries[0] } else { &mut slot.entries[1] })
}

/// This CPU's slot `index`, both entries.
#[inline(always)]
pub fn slot(index: u32) -> Option<&'static mut FlowCacheSlot> {
    // SAFETY: as above.
    SG_FLOW_CACHE.get_ptr_mut(index).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn epoch() -> u32 {
    SG_CACHE_EPOCH.get(0).copied().unwrap_or(0)
}

/// The length of a jiffy in ns; userspace sets it at load time from
/// `clock_getres(CLOCK_MONOTONIC_COARSE)`.
#[unsafe(no_mangle)]
static SG_NS_PER_JIFFY: u64 = 4_000_000;

#[inline(always)]
pub fn ns_per_jiffy() -> u64 {
    // SAFETY: reading a plain global.
    unsafe { core::ptr::read_volatile(&SG_NS_PER_JIFFY) }
}

/// The cache's clock: a memory read, where `bpf_ktime_get_coarse_ns` costs ~20 ns.
#[inline(always)]
pub fn jiffies() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_jiffies64() }
}
