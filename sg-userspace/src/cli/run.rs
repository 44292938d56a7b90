//! `sgctl run --config FILE`: hand over to the agent.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use sgctl::agent::{self, RunOptions};

use super::args::AttachOptions;

#[derive(clap::Args)]
pub struct Args {
    /// The rule file.
    #[arg(long)]
    config: PathBuf,
    /// Only this interface of the file (repeatable).
    #[arg(long = "iface")]
    only: Vec<String>,
    /// Apply the rule file again whenever it changes (debounced), as SIGHUP does.
    #[arg(long)]
    watch: bool,
    /// The control socket (default: /run/sgctl/<netns>/control.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Where the programs, maps and links are pinned (default:
    /// /sys/fs/bpf/sgctl/<netns>/).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Take over pinned programs of another build even when their sessions cannot be
    /// carried over (connections then depend on the rules alone).
    #[arg(long)]
    replace: bool,
    #[command(flatten)]
    options: AttachOptions,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let Args { config, only, watch, socket, pin_dir, replace, options: AttachOptions { xdp_mode, interval, json } } =
        args;
    agent::run(&RunOptions { config, only, xdp_mode, interval, json, watch, socket, pin_dir, replace })?;
    Ok(ExitCode::SUCCESS)
}
