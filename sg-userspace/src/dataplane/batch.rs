//! Batched map operations (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`, and
//! `BPF_MAP_LOOKUP_BATCH` for reading whole per-CPU arrays), which aya does not wrap. A
//! 16,384-rule set is ~20,000 vectors and ~40,000 trie entries, and the counter arrays
//! hold 8,328 (interface counters) and up to 65,537 (rule counters) slots: one syscall
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

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
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

/// Sets every CPU's copy of each slot in `keys` of a per-CPU map to `V::default()`, in
/// one syscall (a per-CPU value is one `V` for each of the `cpus` possible CPUs).
pub fn zero_per_cpu<K: Pod, V: Pod + Default>(map: &MapData, keys: &[K], cpus: usize) -> io::Result<()> {
    // The kernel lays each CPU's copy out at a multiple of 8 bytes.
    assert_eq!(size_of::<V>() % 8, 0, "per-CPU values padded to 8 bytes");
    if keys.is_empty() {
        return Ok(());
    }
    super::fault::before_write()?;
    let values = vec![V::default(); keys.len() * cpus];
    let layout = Layout { key: size_of::<K>(), value: size_of::<V>() * cpus };
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

/// Every slot of a per-CPU array, each CPU's copy: what `BPF_MAP_LOOKUP_BATCH` returns
/// for the whole map in one syscall.
#[derive(Clone, Debug)]
pub struct PerCpuSlots<V> {
    cpus: usize,
    values: Vec<V>,
}

impl<V> PerCpuSlots<V> {
    /// Slots read (the map's size).
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.cpus).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slot `index`'s value on every possible CPU (empty past the end).
    pub fn get(&self, index: usize) -> &[V] {
        self.values.get(index * self.cpus..(index + 1) * self.cpus).unwrap_or(&[])
    }

    /// Each slot's copies, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &[V]> {
        self.values.chunks(self.cpus.max(1))
    }
}

/// Reads all `entries` slots of a per-CPU array at once. The kernel lays each slot out
/// as one value per possible CPU, each rounded up to 8 bytes; `V` is a multiple of 8
/// (the map types of `sg_common` are), so a `Vec<V>` is that layout. Kernels without
/// batched lookups on arrays (before 5.6) or `SGCTL_FALLBACKS=1` read slot by slot.
pub fn read_percpu_array<V: Pod>(map: &MapData, entries: u32) -> io::Result<PerCpuSlots<V>> {
    assert_eq!(size_of::<V>() % 8, 0, "per-CPU values are laid out 8-byte aligned");
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let count = entries as usize;
    // SAFETY: `Pod` types are plain data, for which all zeroes is a value.
    let mut values: Vec<V> = (0..count * cpus).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut keys: Vec<u32> = vec![0; count];
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    if count == 0 {
        return Ok(PerCpuSlots { cpus, values });
    }
    if !super::object::fallbacks_forced() {
        let mut next_key = 0u32;
        let mut attr = BatchAttr {
            out_batch: (&raw mut next_key) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: entries,
            map_fd: fd,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; `keys` holds
        // `entries` u32 keys, `values` `entries` times the map's per-CPU value size,
        // `next_key` one key, and all outlive the call.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, size_of::<BatchAttr>() as libc::c_uint)
        };
        let err = io::Error::last_os_error();
        // ENOENT: the whole map was read (the end was reached); `count` says how much.
        if rc == 0 || err.raw_os_error() == Some(libc::ENOENT) {
            if attr.count != entries || keys.iter().enumerate().any(|(i, &k)| k as usize != i) {
                return Err(io::Error::other(format!(
                    "batched lookup returned {} of {entries} slots, not in order",
                    attr.count
                )));
            }
            return Ok(PerCpuSlots { cpus, values });
        }
        if !matches!(err.raw_os_error(), Some(ENOTSUPP | libc::EINVAL)) {
            return Err(io::Error::new(err.kind(), format!("batched lookup of {entries} slots: {err}")));
        }
    }
    PER_ELEMENT_USED.store(true, std::sync::atomic::Ordering::Relaxed);
    for index in 0..entries {
        let mut key = index;
        let mut attr = ElemAttr {
            map_fd: fd,
            key: (&raw mut key) as u64,
            // SAFETY: slot `index`'s copies are in bounds of `values`.
            value: unsafe { values.as_mut_ptr().add(index as usize * cpus) } as u64,
            ..Default::default()
        };
        // SAFETY: one key and one slot's per-CPU values, both live across the call.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_ELEM, &raw mut attr, size_of::<ElemAttr>() as libc::c_uint)
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(err.kind(), format!("{err} reading slot {index} of {entries}")));
        }
    }
    Ok(PerCpuSlots { cpus, values })
}
