//! `sgctl`: the command line (subcommands in `cli/`).

mod cli;

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Logs (the agent's, and the data plane's warnings) go to stderr, filtered by
    // SGCTL_LOG (`info` by default, e.g. `SGCTL_LOG=debug`); stdout carries the output
    // commands were asked for (tables, JSON, counter lines).
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("SGCTL_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
    match cli::Cli::parse().run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sgctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
