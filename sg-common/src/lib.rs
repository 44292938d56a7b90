//! Types and pure functions shared by the kernel programs (`sg-ebpf`) and userspace.
//!
//! Every type that crosses the kernel/userspace boundary through a BPF map is
//! `#[repr(C)]`, has explicit padding and uses only integer and array fields (no `bool`,
//! enum or `Option`), so both sides agree on its layout byte for byte. With the `user`
//! feature the types implement `aya::Pod` so userspace can read and write them in maps.
#![cfg_attr(target_arch = "bpf", no_std)]

pub mod decision;
pub mod flow_cache;
pub mod maps;
pub mod packet;
pub mod session;
pub mod session_hints;

pub use decision::*;
pub use flow_cache::{FLOW_CACHE_SLOTS, FlowCacheEntry, FlowCacheSlot};
pub use maps::*;
pub use packet::*;
pub use session::{FragmentKey, FragmentVerdict, Session, SessionKey, Timeouts};
