//! Batched map writes (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`), which aya does
//! not wrap. A 16,384-rule set is ~20,000 vectors and ~40,000 trie entries: one syscall
//! each costs more than the kernel's work on the element, so they go in batches.
//!
//! The kernel applies a batch element by element and stops at the first failure; the
//! error then says how many were done, and the caller undoes what it wrote (the maps
//! are written beside the live rule set, so nothing half-written is ever read).
//!
//! Where a map type has no batch operations (5.10's LPM tries answer ENOTSUPP), the
//! same elements are written one syscall each, with the same
//! stop-at-the-first-failure contract (also with `SGCTL_FALLBACKS=1`, which the tests use
//! to run this path on a kernel that has batches).

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's ENOTSUPP (not in libc): a map type without batch operations.
const ENOTSUPP: i32 = 524;

/// Set once any write went one element per syscall (a map type without batches, or
/// `SGCTL_FALLBACKS=1`), for `sgctl status` to say so.
static PER_ELEMENT_USED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process wrote some map one element per syscall.
pub fn per_element_used() -> bool {
    PER_ELEMENT_USED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The element members of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The sizes of one key and one value.
#[derive(Clone, Copy)]
struct Layout {
    key: usize,
    value: usize,
}

/// One element at a time: `keys[i]` (and `values[i]` for updates), stopping at the first
/// failure.
fn one_by_one(
    cmd: libc::c_long,
    map: &MapData,
    keys: *const u8,
    values: *const u8,
    count: usize,
    layout: Layout,
) -> io::Result<()> {
    PER_ELEMENT_USED.store(true, std::sync::atomic::Ordering::Relaxed);
    for i in 0..count {
        let mut attr = ElemAttr {
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            // SAFETY (both): the buffers hold `count` elements of these sizes.
            key: unsafe { keys.add(i * layout.key) } as u64,
            value: if values.is_null() { 0 } else { (unsafe { values.add(i * layout.value) }) as u64 },
            ..Default::default()
        };
        // SAFETY: as for the batch call, one element.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, &raw mut attr, size_of::<ElemAttr>() as libc::c_uint) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(err.kind(), format!("{err} after {i} of {count} elements")));
        }
    }
    Ok(())
}

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

fn call(
    cmd: libc::c_long,
    map: &MapData,
    keys: *const u8,
    values: *const u8,
    count: usize,
    layout: Layout,
) -> io::Result<()> {
    if super::object::fallbacks_forced() {
        let single = if cmd == BPF_MAP_UPDATE_BATCH { BPF_MAP_UPDATE_ELEM } else { BPF_MAP_DELETE_ELEM };
        return one_by_one(single, map, keys, values, count, layout);
    }
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
        if err.raw_os_error() == Some(ENOTSUPP) {
            let single = if cmd == BPF_MAP_UPDATE_BATCH { BPF_MAP_UPDATE_ELEM } else { BPF_MAP_DELETE_ELEM };
            return one_by_one(single, map, keys, values, count, layout);
        }
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
    super::fault::before_write()?;
    let layout = Layout { key: size_of::<K>(), value: size_of::<V>() };
    call(BPF_MAP_UPDATE_BATCH, map, keys.as_ptr().cast(), values.as_ptr().cast(), keys.len(), layout)
}

/// Deletes every key of `keys`, in one syscall.
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let layout = Layout { key: size_of::<K>(), value: 0 };
    call(BPF_MAP_DELETE_BATCH, map, keys.as_ptr().cast(), std::ptr::null(), keys.len(), layout)
}
