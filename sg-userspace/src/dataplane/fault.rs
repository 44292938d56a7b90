//! Fault injection, for the tests of what a failed apply leaves behind.
//!
//! `SGCTL_FAULT_APPLY=A:W` makes the `W`-th batched map write of this process's `A`-th
//! apply fail (several, comma-separated: `2:4,4:3`), as a map that cannot take an element would (the kernel's batch stops at
//! the first failing element the same way). Applies count from 1 (an agent's first apply
//! is the one at start). The write fails before it reaches the kernel, so what the apply
//! wrote until then is in the maps and must be undone by the caller, exactly as after a
//! real failure. Without the variable nothing is counted but two atomics.

use std::{
    io,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

static APPLIES: AtomicU32 = AtomicU32::new(0);
static WRITES: AtomicU32 = AtomicU32::new(0);

fn specs() -> &'static [(u32, u32)] {
    static SPECS: OnceLock<Vec<(u32, u32)>> = OnceLock::new();
    SPECS.get_or_init(|| {
        let Ok(value) = std::env::var("SGCTL_FAULT_APPLY") else { return Vec::new() };
        let parsed: Option<Vec<(u32, u32)>> = value
            .split(',')
            .map(|one| one.split_once(':').and_then(|(a, w)| Some((a.trim().parse().ok()?, w.trim().parse().ok()?))))
            .collect();
        match parsed {
            Some(specs) => {
                tracing::warn!("SGCTL_FAULT_APPLY={value}: these writes of these applies will fail");
                specs
            }
            None => {
                tracing::warn!("SGCTL_FAULT_APPLY={value} ignored: expected APPLY:WRITE[,APPLY:WRITE...], e.g. 2:5");
                Vec::new()
            }
        }
    })
}

/// An apply begins: its writes count from 1.
pub fn apply_started() {
    APPLIES.fetch_add(1, Ordering::Relaxed);
    WRITES.store(0, Ordering::Relaxed);
}

/// Before each batched write: the injected failure, when this is a write named.
pub fn before_write() -> io::Result<()> {
    let specs = specs();
    if specs.is_empty() {
        return Ok(());
    }
    let n = WRITES.fetch_add(1, Ordering::Relaxed) + 1;
    let apply = APPLIES.load(Ordering::Relaxed);
    if specs.contains(&(apply, n)) {
        return Err(io::Error::other(format!("injected fault: write {n} of apply {apply} (SGCTL_FAULT_APPLY)")));
    }
    Ok(())
}
