//! Where sgctl keeps its per-namespace state on disk.

use std::{io, path::PathBuf};

/// This network namespace's name in paths: its inode number.
fn netns_id() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .ok()
        .map(|l| l.to_string_lossy().trim_start_matches("net:[").trim_end_matches(']').to_string())
        .unwrap_or_else(|| "default".into())
}

/// Per network namespace state directory: `/run/sgctl/<netns inode>/`. `/run` is shared
/// by every namespace, so interface names alone would clash.
pub fn state_dir() -> PathBuf {
    PathBuf::from("/run/sgctl").join(netns_id())
}

/// Where the BPF filesystem is mounted by default.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Per network namespace pin directory: `/sys/fs/bpf/sgctl/<netns inode>/`.
pub fn pin_dir() -> PathBuf {
    PathBuf::from(BPFFS).join("sgctl").join(netns_id())
}

/// The agent's record of what it pinned (`agent::state`).
pub fn state_file() -> PathBuf {
    state_dir().join("state.json")
}

/// The running agent's pid (`sgctl down` stops it first).
pub fn agent_pid_file() -> PathBuf {
    state_dir().join("agent.pid")
}

/// Moves this process (still single-threaded) into network namespace `name`, as
/// `ip netns exec` would, but keeping the mount namespace, so the pins on the host's BPF
/// filesystem are the same for every agent of that namespace.
pub fn enter_netns(name: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let path = if name.contains('/') { PathBuf::from(name) } else { PathBuf::from("/run/netns").join(name) };
    let file = std::fs::File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    // SAFETY: a valid namespace fd.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("entering network namespace {}: {e}", path.display())));
    }
    Ok(())
}

/// Where a running `sgctl` records its pid per interface, so `sgctl detach` finds it.
pub fn pid_file(iface: &str) -> PathBuf {
    state_dir().join(format!("{iface}.pid"))
}

/// Where a running `sgctl run` records the ids of its session maps for `sgctl sessions`.
pub fn map_id_file() -> PathBuf {
    state_dir().join("sessions.map-id")
}

/// Records this process as the one holding `iface`.
pub fn write_pid_file(iface: &str) -> io::Result<()> {
    write_pid_file_at(&pid_file(iface))
}

/// Writes this process's pid to `path`.
pub fn write_pid_file_at(path: &std::path::Path) -> io::Result<()> {
    let context = |what: String| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(context(format!("creating {}", dir.display())))?;
    }
    std::fs::write(path, std::process::id().to_string()).map_err(context(format!("writing {}", path.display())))
}
