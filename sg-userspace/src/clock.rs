//! The clocks the kernel programs keep time with, read from userspace.

/// CLOCK_MONOTONIC_COARSE in ns: the clock of the kernel's `bpf_ktime_get_coarse_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The length of a jiffy in ns: the resolution of CLOCK_MONOTONIC_COARSE, which moves
/// once per tick (the flow cache keeps time in jiffies, `sg_common::flow_cache`).
pub fn ns_per_jiffy() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 || ts.tv_sec != 0 || ts.tv_nsec <= 0 {
        return 4_000_000;
    }
    ts.tv_nsec as u64
}
