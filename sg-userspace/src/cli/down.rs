//! `sgctl down`: remove everything sgctl holds in this network namespace.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Result;
use sgctl::{agent::live, paths, privilege::check_privileges};

#[derive(clap::Args)]
pub struct Args {
    /// The pin directory, when the agent ran with --pin-dir and left no state file.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
}

/// Stops the agent (its pid file names it), then removes links, filters, qdiscs it
/// created, pins, the state file, the socket and the state directory. Refuses, before
/// stopping anything, where the recorded pins cannot be seen (under `ip netns exec`).
pub fn run(args: &Args) -> Result<ExitCode> {
    check_privileges()?;
    let pin_dir = args.pin_dir.clone().unwrap_or_else(paths::pin_dir);
    live::ensure_reachable(live::recorded_state(&paths::state_file()).as_ref(), &pin_dir)?;
    let pid_path = paths::agent_pid_file();
    if let Ok(text) = std::fs::read_to_string(&pid_path)
        && let Ok(pid) = text.trim().parse::<i32>()
    {
        // SAFETY: kill has no memory preconditions.
        if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
            let deadline = Instant::now() + Duration::from_secs(15);
            // SAFETY: as above; signal 0 only probes.
            while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            println!("stopped the agent (pid {pid})");
        }
        let _ = std::fs::remove_file(&pid_path);
    }
    let done = live::down(&paths::state_file(), &pin_dir)?;
    let _ = std::fs::remove_file(sgctl::agent::api::default_socket());
    let _ = std::fs::remove_file(paths::map_id_file());
    remove_dead_pid_files();
    // Empty now unless something else lives there; then it stays.
    let _ = std::fs::remove_dir(paths::state_dir());
    if done.is_empty() {
        println!("nothing of sgctl's is held in this network namespace");
    }
    for line in done {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes the per-interface pid files of processes that are gone (an agent killed with
/// SIGKILL leaves them), so nothing of sgctl's stays in the state directory.
fn remove_dead_pid_files() {
    let Ok(entries) = std::fs::read_dir(paths::state_dir()) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "pid") {
            continue;
        }
        let pid = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<i32>().ok());
        // SAFETY: signal 0 only probes whether the process exists.
        if pid.is_none_or(|pid| unsafe { libc::kill(pid, 0) } != 0) {
            let _ = std::fs::remove_file(&path);
        }
    }
}
