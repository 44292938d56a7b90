//! Names of the BPF maps and programs, shared so userspace finds what the kernel side
//! declares.

/// Program names (the function names in `sg-ebpf`).
pub mod program {
    pub const INGRESS_XDP: &str = "sg_ingress";
    pub const EGRESS_TC: &str = "sg_egress";
}

/// Map names (the static names in `sg-ebpf`).
pub mod map {
    /// Per-CPU array of `u64` counters, laid out by [`crate::stats`].
    pub const STATS: &str = "SG_STATS";
    /// Per-CPU array with one [`crate::TraceRecord`] per hook.
    pub const TRACE: &str = "SG_TRACE";
}

/// Names of the read-only globals userspace sets at load time.
pub mod global {
    /// `u8`: 1 records every packet into the trace map (tests, live trace).
    pub const TRACE_ENABLED: &str = "SG_TRACE_ENABLED";
}
