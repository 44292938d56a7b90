//! `sgctl validate FILE`: every error of a rule file, or that it is valid.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use sgctl::policy::config;

#[derive(clap::Args)]
pub struct Args {
    file: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let Args { file, json } = args;
    match config::load_file(file) {
        Ok(cfg) => {
            let rules = cfg.rules().count();
            if *json {
                println!("{}", serde_json::json!({ "file": file, "valid": true, "errors": [] }));
            } else {
                println!(
                    "{}: valid ({} groups, {rules} rules, {} prefix lists, {} interfaces)",
                    file.display(),
                    cfg.groups.len(),
                    cfg.prefix_lists.len(),
                    cfg.interfaces.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            if *json {
                println!("{}", serde_json::json!({ "file": file, "valid": false, "errors": errors.errors }));
            } else {
                eprintln!("{errors}");
                eprintln!("{}: {} error(s); nothing applied", file.display(), errors.errors.len());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
