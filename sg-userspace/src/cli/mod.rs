//! The command line: one module per subcommand, argument groups they share in [`args`].

mod apply;
mod args;
mod attach;
mod detach;
mod down;
mod fleet;
mod guidance;
mod log;
mod run;
mod sessions;
mod stats;
mod status;
mod trace;
mod validate;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sgctl", version, about = "Cloud-style security groups for Linux NICs, in eBPF")]
pub struct Cli {
    /// Run in network namespace NAME (/run/netns/NAME, or a path), keeping this mount
    /// namespace: unlike `ip netns exec`, the pins on the BPF filesystem stay shared.
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the programs to an interface and report counters until SIGINT/SIGTERM,
    /// then detach.
    Attach(attach::Args),
    /// Remove sgctl from an interface: stop the sgctl holding it and clean up anything
    /// a killed one left behind.
    Detach(detach::Args),
    /// Enforce a rule file on the interfaces it names (those present here), serving the
    /// control socket; SIGHUP reloads the file atomically. Enforcement is pinned and
    /// outlives the agent: a new one adopts it (`sgctl down` removes it).
    Run(run::Args),
    /// Remove everything sgctl holds in this network namespace: stop the agent, detach
    /// the programs, delete the qdiscs it created, the pins and the state.
    Down(down::Args),
    /// Validate a rule file and apply it through the running agent, waiting for the
    /// result; with --confirm, it is rolled back unless `sgctl confirm` follows in time.
    Apply(apply::Args),
    /// Keep the rules of an `sgctl apply --confirm` that awaits confirmation.
    Confirm(apply::ConfirmArgs),
    /// List the live sessions of the sgctl running in this network namespace.
    Sessions(sessions::Args),
    /// Check a rule file; exit 0 when valid, 1 with every error otherwise.
    Validate(validate::Args),
    /// Explain which rule decides a packet, and why the higher-ranked ones did not match.
    Trace(trace::Args),
    /// Show whether sgctl's programs are attached to an interface.
    Status(status::Args),
    /// Counters by interface, direction and rule; --unused lists the rules that decided
    /// nothing.
    Stats(stats::Args),
    /// The verdict events (drops, audit drops, new sessions) with the rules that decided.
    Log(log::Args),
    /// Check a rule file against the guide's advice; exit 1 when a finding reaches --fail-on.
    Lint(guidance::LintArgs),
    /// Show the flows whose verdict changes between two rule files; exit 1 when any does.
    Diff(guidance::DiffArgs),
    /// Turn provider security groups (Alibaba Cloud, AWS JSON) into a rule file.
    Import(guidance::ImportArgs),
    /// Write a rule file in a provider's JSON format, refusing what it cannot express.
    Export(guidance::ExportArgs),
    /// A fleet's rules and group members in etcd: push a rule file, show what is there.
    Fleet(fleet::Args),
}

impl Cli {
    /// Runs the subcommand.
    pub fn run(self) -> Result<ExitCode> {
        if let Some(name) = &self.netns {
            sgctl::paths::enter_netns(name)?;
        }
        match self.command {
            Command::Attach(args) => attach::run(&args),
            Command::Detach(args) => detach::run(&args),
            Command::Run(args) => run::run(args),
            Command::Down(args) => down::run(&args),
            Command::Apply(args) => apply::run(&args),
            Command::Confirm(args) => apply::confirm(&args),
            Command::Sessions(args) => sessions::run(&args),
            Command::Validate(args) => validate::run(&args),
            Command::Trace(args) => trace::run(&args),
            Command::Status(args) => status::run(&args),
            Command::Stats(args) => stats::run(&args),
            Command::Log(args) => log::run(&args),
            Command::Lint(args) => guidance::lint(args),
            Command::Diff(args) => guidance::diff(args),
            Command::Import(args) => guidance::import(args),
            Command::Export(args) => guidance::export(args),
            Command::Fleet(args) => fleet::run(args),
        }
    }
}
