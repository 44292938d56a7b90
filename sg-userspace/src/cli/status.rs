//! `sgctl status IFACE`: whether our programs are on an interface.

use std::process::ExitCode;

use anyhow::Result;
use sgctl::dataplane::attach;

#[derive(clap::Args)]
pub struct Args {
    iface: String,
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let Args { iface, json } = args;
    let found = attach::presence(iface)?;
    if *json {
        println!(
            "{}",
            serde_json::json!({
                "iface": iface,
                "attached": !found.is_empty(),
                "xdp_program": found.xdp_program,
                "tcx_programs": found.tcx_programs,
                "clsact_filter": found.clsact_filter,
            })
        );
    } else if found.is_empty() {
        println!("{iface}: not attached");
    } else {
        println!("{iface}: {found:?}");
    }
    Ok(ExitCode::SUCCESS)
}
