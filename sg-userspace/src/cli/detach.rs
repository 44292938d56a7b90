//! `sgctl detach IFACE`: stop whoever holds the interface and clean up after it.

use std::process::ExitCode;

use anyhow::Result;
use sgctl::{dataplane::attach, privilege::check_privileges};

#[derive(clap::Args)]
pub struct Args {
    iface: String,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let iface = args.iface.as_str();
    check_privileges()?;
    let done = attach::detach_interface(iface)?;
    if done.is_empty() {
        println!("nothing of sgctl's was attached to {iface}");
    }
    for line in done {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
