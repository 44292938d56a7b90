//! A memory cgroup with a limit, for tests that need a real allocation failure: since
//! kernel 5.11 BPF maps are charged to the memory cgroup of the process that creates
//! them (not to `RLIMIT_MEMLOCK`), so a process moved into a small one gets `ENOMEM`
//! when it creates a map past the limit, exactly as on a host out of memory.
//!
//! cgroup v1 (a `memory` hierarchy) and v2 (the unified hierarchy with the memory
//! controller) are both handled; the cgroup is made below the test's own (v1) or the
//! root (v2), named after the test process, and removed on drop, also on panic, once the
//! processes moved into it are gone (they are moved back to the parent first).

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};

pub struct MemoryCgroup {
    dir: PathBuf,
    /// `cgroup.procs` of the parent, where processes go back before the removal.
    parent_procs: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// A new cgroup named after `tag` with a memory limit of `limit` bytes.
    pub fn new(tag: &str, limit: u64) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("sgctl-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let (parent, v2) = parent_cgroup()?;
        let dir = parent.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let group = Self { parent_procs: parent.join("cgroup.procs"), dir, v2 };
        let (file, value) =
            if group.v2 { ("memory.max", limit.to_string()) } else { ("memory.limit_in_bytes", limit.to_string()) };
        std::fs::write(group.dir.join(file), value).with_context(|| format!("setting {file}"))?;
        Ok(group)
    }

    /// Moves process `pid` (all its threads) into the cgroup; what it allocates from then
    /// on counts against the limit.
    pub fn add(&self, pid: u32) -> Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.dir.display()))
    }

    /// How often an allocation hit the limit (v1 `memory.failcnt`, v2 `memory.events`'s
    /// `max`).
    pub fn limit_hits(&self) -> u64 {
        let read = |file: &str| std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        if self.v2 {
            read("memory.events")
                .lines()
                .find_map(|l| l.strip_prefix("max "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        } else {
            read("memory.failcnt").trim().parse().unwrap_or(0)
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(&self.parent_procs, pid);
            }
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

/// Where to make the cgroup, and whether it is cgroup v2.
fn parent_cgroup() -> Result<(PathBuf, bool)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() || v1.join("cgroup.procs").exists() {
        // `N:memory:/path`: below the test's own memory cgroup.
        let path = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.trim_start_matches('/').to_string()))
            .unwrap_or_default();
        return Ok((v1.join(path), false));
    }
    let root = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "memory") {
        bail!("no memory cgroup controller (neither /sys/fs/cgroup/memory nor memory in cgroup v2)");
    }
    // The root may hold processes and still hand the controller to its children.
    let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
    Ok((root.to_path_buf(), true))
}
