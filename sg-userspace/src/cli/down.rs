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
/// created, pins, the state file and the socket.
pub fn run(args: &Args) -> Result<ExitCode> {
    check_privileges()?;
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
    let pin_dir = args.pin_dir.clone().unwrap_or_else(paths::pin_dir);
    let done = live::down(&paths::state_file(), &pin_dir)?;
    let _ = std::fs::remove_file(sgctl::agent::api::default_socket());
    let _ = std::fs::remove_file(paths::map_id_file());
    if done.is_empty() {
        println!("nothing of sgctl's is held in this network namespace");
    }
    for line in done {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
