//! `sgctl`: the command line.

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use sg_common::stats;
use sgctl::{
    attach::{self, Attachment, XdpModeChoice},
    config::{self, Direction, Protocol},
    counters::hook_counters,
    ebpf::{Dataplane, LoadOptions},
};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(name = "sgctl", version, about = "Cloud-style security groups for Linux NICs, in eBPF")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the programs to an interface and report counters until SIGINT/SIGTERM,
    /// then detach.
    Attach {
        /// The interface (its ingress gets XDP, its egress TC).
        iface: String,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t)]
        xdp_mode: XdpModeChoice,
        /// Seconds between counter lines (0: no counter lines).
        #[arg(long, default_value_t = 1)]
        interval: u64,
        /// Print counter lines as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove sgctl from an interface: stop the sgctl holding it and clean up anything
    /// a killed one left behind.
    Detach { iface: String },
    /// Enforce a rule file on the interfaces it names (those present here) until
    /// SIGINT/SIGTERM; SIGHUP reloads the file atomically.
    Run {
        /// The rule file.
        #[arg(long)]
        config: PathBuf,
        /// Only this interface of the file (repeatable).
        #[arg(long = "iface")]
        only: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        xdp_mode: XdpModeChoice,
        /// Seconds between counter lines (0: none).
        #[arg(long, default_value_t = 1)]
        interval: u64,
        #[arg(long)]
        json: bool,
    },
    /// List the live sessions of the sgctl running in this network namespace.
    Sessions {
        /// Only sessions of this interface.
        #[arg(long)]
        iface: Option<String>,
        #[arg(long)]
        json: bool,
        /// Delete every session instead (flows are classified again on their next packet).
        #[arg(long)]
        flush: bool,
    },
    /// Check a rule file; exit 0 when valid, 1 with every error otherwise.
    Validate {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Explain which rule decides a packet, and why the higher-ranked ones did not match.
    Trace(TraceArgs),
    /// Show whether sgctl's programs are attached to an interface.
    Status {
        iface: String,
        #[arg(long)]
        json: bool,
    },
    /// Check a rule file against the guide's advice; exit 1 when a finding reaches --fail-on.
    Lint(sgctl::guidance::cli::LintArgs),
    /// Show the flows whose verdict changes between two rule files; exit 1 when any does.
    Diff(sgctl::guidance::cli::DiffArgs),
    /// Turn provider security groups (Alibaba Cloud, AWS JSON) into a rule file.
    Import(sgctl::guidance::cli::ImportArgs),
    /// Write a rule file in a provider's JSON format, refusing what it cannot express.
    Export(sgctl::guidance::cli::ExportArgs),
}

#[derive(clap::Args)]
struct TraceArgs {
    /// The rule file.
    file: PathBuf,
    /// Interface (as named in the rule file's `[[interface]]`).
    #[arg(long)]
    iface: String,
    /// ingress or egress.
    #[arg(long)]
    direction: Direction,
    /// tcp, udp, icmp, icmpv6, gre, or an IP protocol number.
    #[arg(long)]
    proto: String,
    #[arg(long)]
    src: IpAddr,
    #[arg(long)]
    dst: IpAddr,
    #[arg(long, default_value_t = 0)]
    sport: u16,
    #[arg(long, default_value_t = 0)]
    dport: u16,
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attach { iface, xdp_mode, interval, json } => attach_and_watch(&iface, xdp_mode, interval, json),
        Command::Detach { iface } => detach(&iface),
        Command::Status { iface, json } => status(&iface, json),
        Command::Validate { file, json } => validate(&file, json),
        Command::Run { config, only, xdp_mode, interval, json } => {
            sgctl::agent::run(&sgctl::agent::RunOptions { config, only, xdp_mode, interval, json })
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Trace(args) => trace(&args),
        Command::Sessions { iface, json, flush } => sessions(iface.as_deref(), json, flush),
        Command::Lint(args) => sgctl::guidance::cli::lint(args),
        Command::Diff(args) => sgctl::guidance::cli::diff(args),
        Command::Import(args) => sgctl::guidance::cli::import(args),
        Command::Export(args) => sgctl::guidance::cli::export(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sgctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn attach_and_watch(iface: &str, mode: XdpModeChoice, interval: u64, json: bool) -> Result<ExitCode> {
    attach::ifindex(iface)?;
    let mut dp = Dataplane::load(&LoadOptions::default())?;
    let attachment = Attachment::attach(&mut dp, iface, mode)?;
    attach::write_pid_file(iface)?;
    let pid_path = attach::pid_file(iface);
    println!(
        "attached to {iface}: ingress XDP ({}), egress TC ({:?}); SIGINT/SIGTERM or `sgctl detach {iface}` detaches",
        attachment.xdp_mode, attachment.tc_hook
    );
    let watched =
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(watch(&dp, interval, json));
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
                let slots = dp.counters()?;
                let ingress = hook_counters(&slots, stats::HOOK_INGRESS);
                let egress = hook_counters(&slots, stats::HOOK_EGRESS);
                if json {
                    println!("{}", serde_json::json!({ "ingress": ingress, "egress": egress }));
                } else {
                    println!("ingress: {ingress} | egress: {egress}");
                }
            }
        }
    }
}

fn detach(iface: &str) -> Result<ExitCode> {
    sgctl::ebpf::check_privileges()?;
    let done = attach::detach_interface(iface)?;
    if done.is_empty() {
        println!("nothing of sgctl's was attached to {iface}");
    }
    for line in done {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

fn status(iface: &str, json: bool) -> Result<ExitCode> {
    let found = attach::presence(iface)?;
    if json {
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

fn validate(file: &std::path::Path, json: bool) -> Result<ExitCode> {
    match config::load_file(file) {
        Ok(cfg) => {
            let rules = cfg.rules().count();
            if json {
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
            if json {
                println!("{}", serde_json::json!({ "file": file, "valid": false, "errors": errors.errors }));
            } else {
                eprintln!("{errors}");
                eprintln!("{}: {} error(s); nothing applied", file.display(), errors.errors.len());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// An IP protocol number from a name or a number.
fn protocol_number(text: &str) -> Result<u8> {
    if let Ok(n) = text.parse::<u8>() {
        return Ok(n);
    }
    text.parse::<Protocol>()
        .ok()
        .and_then(|p| p.ip_proto())
        .with_context(|| format!("--proto {text}: expected tcp, udp, icmp, icmpv6, gre or a protocol number"))
}

fn trace(args: &TraceArgs) -> Result<ExitCode> {
    let cfg = match config::load_file(&args.file) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprintln!("{errors}");
            anyhow::bail!("{}: invalid rule file", args.file.display());
        }
    };
    let iface = cfg
        .interface(&args.iface)
        .with_context(|| format!("{} has no [[interface]] named {}", args.file.display(), args.iface))?;
    if args.src.is_ipv4() != args.dst.is_ipv4() {
        anyhow::bail!("--src and --dst must be of one address family");
    }
    let packet = sgctl::eval::PacketTuple {
        src: args.src,
        dst: args.dst,
        protocol: protocol_number(&args.proto)?,
        src_port: args.sport,
        dst_port: args.dport,
    };
    let decision = sgctl::eval::evaluate(&cfg, iface, args.direction, &packet);
    if args.json {
        println!("{}", decision.to_json(&cfg));
    } else {
        println!("{}", decision.explain(&cfg));
    }
    Ok(ExitCode::SUCCESS)
}

fn sessions(iface: Option<&str>, json: bool, flush: bool) -> Result<ExitCode> {
    use sgctl::sessions::{SessionTable, SessionView, map_id_file, monotonic_ns};
    sgctl::ebpf::check_privileges()?;
    let id_file = map_id_file();
    let ids = std::fs::read_to_string(&id_file).context("no `sgctl run` is active in this network namespace")?;
    let mut table = SessionTable::open(&ids)?;
    if flush {
        let n = table.flush()?;
        println!("flushed {n} sessions");
        return Ok(ExitCode::SUCCESS);
    }
    let only = iface.map(attach::ifindex).transpose()?;
    let now = monotonic_ns();
    let views: Vec<SessionView> = table
        .entries()?
        .iter()
        .filter(|(k, _)| only.is_none_or(|i| k.ifindex == i))
        .map(|(k, s)| SessionView::of(k, s, now))
        .collect();
    if json {
        println!("{}", serde_json::to_string(&views)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<5} {:<46} {:<46} {:<18} {:>8} {:>8} {:<8} {:>5} {:>8}",
        "proto", "opener", "responder", "state", "age s", "idle s", "opened", "rule", "packets"
    );
    for v in &views {
        println!(
            "{:<5} {:<46} {:<46} {:<18} {:>8.1} {:>8.1} {:<8} {:>5} {:>8}",
            sgctl::eval::protocol_name(v.protocol),
            v.opener,
            v.responder,
            v.state,
            v.age_s,
            v.idle_s,
            v.opened,
            v.rule_id,
            v.packets
        );
    }
    println!("{} sessions", views.len());
    Ok(ExitCode::SUCCESS)
}
