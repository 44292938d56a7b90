//! Where sgctl keeps its per-namespace state on disk.

use std::{io, path::PathBuf};

/// Per network namespace state directory: `/run/sgctl/<netns inode>/`. `/run` is shared
/// by every namespace, so interface names alone would clash.
pub fn state_dir() -> PathBuf {
    let netns = std::fs::read_link("/proc/self/ns/net")
        .ok()
        .map(|l| l.to_string_lossy().trim_start_matches("net:[").trim_end_matches(']').to_string())
        .unwrap_or_else(|| "default".into());
    PathBuf::from("/run/sgctl").join(netns)
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
    let path = pid_file(iface);
    let context = |what: String| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(context(format!("creating {}", dir.display())))?;
    }
    std::fs::write(&path, std::process::id().to_string()).map_err(context(format!("writing {}", path.display())))
}
