//! Batched map writes (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`), which aya does
//! not wrap. A 16,384-rule set is ~20,000 vectors and ~40,000 trie entries: one syscall
//! each costs more than the kernel's work on the element, so they go in batches.
//!
//! The kernel applies a batch element by element and stops at the first failure; the
//! error then says how many were done, and the caller undoes what it wrote (the maps
//! are written beside the live rule set, so nothing half-written is ever read).

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn call(cmd: libc::c_long, map: &MapData, keys: *const u8, values: *const u8, count: usize) -> io::Result<()> {
    let mut attr = BatchAttr {
        keys: keys as u64,
        values: values as u64,
        count: u32::try_from(count).map_err(|_| io::Error::other("batch too large"))?,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; the key and value
    // buffers hold `count` elements of the map's key and value sizes (checked by the
    // callers' types) and outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, &raw mut attr, size_of::<BatchAttr>() as libc::c_uint) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(err.kind(), format!("{err} after {} of {count} elements", attr.count)));
    }
    Ok(())
}

/// Writes `keys[i] -> values[i]` for every `i`, in one syscall.
pub fn update<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    call(BPF_MAP_UPDATE_BATCH, map, keys.as_ptr().cast(), values.as_ptr().cast(), keys.len())
}

/// Deletes every key of `keys`, in one syscall.
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    call(BPF_MAP_DELETE_BATCH, map, keys.as_ptr().cast(), std::ptr::null(), keys.len())
}
