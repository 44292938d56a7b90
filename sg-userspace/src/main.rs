//! `sgctl`: the command line (subcommands in `cli/`).

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    match cli::Cli::parse().run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sgctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
