//! The sessions' clock, chosen at load time.
//!
//! `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE, a memory read) exists from Linux
//! 5.11; before that only `bpf_ktime_get_ns` (CLOCK_MONOTONIC, a clock-source read). The
//! userspace loader probes the kernel for the coarse helper and sets `SG_COARSE_CLOCK`.
//! It is a read-only global, so the verifier knows its value, checks only the branch
//! taken and removes the other one: no cost on the packet path, and no unknown helper
//! call left in the program on an older kernel. Both clocks count from boot, so
//! timestamps agree with userspace's CLOCK_MONOTONIC_COARSE within a tick.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};

/// 1: use `bpf_ktime_get_coarse_ns`; 0: `bpf_ktime_get_ns` (kernels before 5.11).
#[unsafe(no_mangle)]
static SG_COARSE_CLOCK: u8 = 1;

/// Monotonic ns since boot.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: reading a plain global; the helpers take no arguments.
    unsafe {
        if core::ptr::read_volatile(&SG_COARSE_CLOCK) != 0 { bpf_ktime_get_coarse_ns() } else { bpf_ktime_get_ns() }
    }
}
