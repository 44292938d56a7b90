//! `sgctl sessions`: the live sessions of the `sgctl run` in this network namespace.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use sgctl::{
    clock::monotonic_ns,
    dataplane::{
        attach,
        sessions::{SessionTable, SessionView},
    },
    paths::map_id_file,
    policy::config::protocol_name,
    privilege::check_privileges,
};

#[derive(clap::Args)]
pub struct Args {
    /// Only sessions of this interface.
    #[arg(long)]
    iface: Option<String>,
    #[arg(long)]
    json: bool,
    /// Delete every session instead (flows are classified again on their next packet).
    #[arg(long)]
    flush: bool,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let Args { iface, json, flush } = args;
    check_privileges()?;
    let id_file = map_id_file();
    let ids = std::fs::read_to_string(&id_file).context("no `sgctl run` is active in this network namespace")?;
    let mut table = SessionTable::open(&ids)?;
    if *flush {
        let n = table.flush()?;
        println!("flushed {n} sessions");
        return Ok(ExitCode::SUCCESS);
    }
    let only = iface.as_deref().map(attach::ifindex).transpose()?;
    let now = monotonic_ns();
    let views: Vec<SessionView> = table
        .entries()?
        .iter()
        .filter(|(k, _)| only.is_none_or(|i| k.ifindex == i))
        .map(|(k, s)| SessionView::of(k, s, now))
        .collect();
    if *json {
        println!("{}", serde_json::to_string(&views)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<5} {:<46} {:<46} {:<18} {:>8} {:>8} {:<8} {:>11} {:>8}",
        "proto", "opener", "responder", "state", "age s", "idle s", "opened", "rule handle", "packets"
    );
    for v in &views {
        println!(
            "{:<5} {:<46} {:<46} {:<18} {:>8.1} {:>8.1} {:<8} {:>11} {:>8}",
            protocol_name(v.protocol),
            v.opener,
            v.responder,
            v.state,
            v.age_s,
            v.idle_s,
            v.opened,
            v.rule_handle,
            v.packets
        );
    }
    println!("{} sessions", views.len());
    Ok(ExitCode::SUCCESS)
}
