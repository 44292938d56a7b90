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
    #[command(flatten)]
    options: AttachOptions,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let Args { config, only, options: AttachOptions { xdp_mode, interval, json } } = args;
    agent::run(&RunOptions { config, only, xdp_mode, interval, json })?;
    Ok(ExitCode::SUCCESS)
}
