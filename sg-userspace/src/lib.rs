//! sgctl: the userspace side of the security-group data plane: loading and attaching
//! the kernel programs, rule files, the reference evaluator and reporting.

pub mod agent;
pub mod attach;
pub mod batch;
pub mod compile;
pub mod config;
pub mod counters;
pub mod ebpf;
pub mod enforce;
pub mod eval;
pub mod guidance;
pub mod sessions;
