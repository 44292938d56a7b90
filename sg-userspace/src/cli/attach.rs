//! `sgctl attach IFACE`: the programs without rules, counters until stopped.

use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use sgctl::{
    dataplane::{
        Dataplane, LoadOptions,
        attach::{self, Attachment},
        counters::counter_line,
    },
    paths,
};
use tokio::signal::unix::{SignalKind, signal};

use super::args::AttachOptions;

#[derive(clap::Args)]
pub struct Args {
    /// The interface (its ingress gets XDP, its egress TC).
    iface: String,
    #[command(flatten)]
    options: AttachOptions,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let Args { iface, options: AttachOptions { xdp_mode, interval, json } } = args;
    let iface = iface.as_str();
    attach::ifindex(iface)?;
    let mut dp = Dataplane::load(&LoadOptions::default())?;
    let attachment = Attachment::attach(&mut dp, iface, *xdp_mode)?;
    paths::write_pid_file(iface)?;
    let pid_path = paths::pid_file(iface);
    println!(
        "attached to {iface}: ingress XDP ({}), egress TC ({:?}); SIGINT/SIGTERM or `sgctl detach {iface}` detaches",
        attachment.xdp_mode, attachment.tc_hook
    );
    let watched =
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(watch(&dp, *interval, *json));
    let detached = attachment.detach(&mut dp);
    let _ = std::fs::remove_file(&pid_path);
    watched?;
    detached?;
    println!("detached from {iface}");
    Ok(ExitCode::SUCCESS)
}

/// Prints counters every `interval` seconds until SIGINT or SIGTERM.
async fn watch(dp: &Dataplane, interval: u64, json: bool) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let period = Duration::from_secs(interval.max(1));
    loop {
        tokio::select! {
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            _ = tokio::time::sleep(period) => {
                if interval == 0 {
                    continue;
                }
                println!("{}", counter_line(&dp.counters()?, json));
            }
        }
    }
}
