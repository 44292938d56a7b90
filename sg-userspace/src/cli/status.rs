//! `sgctl status [IFACE]`: the running agent's view (rules, generation, pins, held
//! interfaces, uptime, how full each map is), or with IFACE whether our programs are on that interface.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Result, bail};
use sgctl::{
    agent::api::{self, Op},
    dataplane::{attach, capacity::Fill},
};

#[derive(clap::Args)]
pub struct Args {
    /// Only look at this interface's hooks (no agent needed).
    iface: Option<String>,
    #[arg(long)]
    json: bool,
    /// The agent's control socket (default: this network namespace's).
    #[arg(long)]
    socket: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let Some(iface) = &args.iface else { return agent_status(args) };
    let found = attach::presence(iface)?;
    if args.json {
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

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
fn uptime(seconds: f64) -> String {
    let s = seconds as u64;
    match (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60) {
        (0, 0, 0, sec) => format!("{sec}s"),
        (0, 0, min, sec) => format!("{min}m {sec}s"),
        (0, h, min, _) => format!("{h}h {min}m"),
        (d, h, _, _) => format!("{d}d {h}h"),
    }
}

fn percent(fill: Fill) -> String {
    if fill.capacity == 0 {
        return "-".into();
    }
    format!("{:.1}%", fill.used as f64 * 100.0 / fill.capacity as f64)
}

fn agent_status(args: &Args) -> Result<ExitCode> {
    let socket = args.socket.clone().unwrap_or_else(api::default_socket);
    let reply = api::call(&socket, Op::Status, Duration::from_secs(10))?;
    let Some(s) = reply.status else { bail!("{}", reply.error.unwrap_or_else(|| "no status in the reply".into())) };
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("rules:       {} ({} rules, rule-set generation {})", s.config, s.rules, s.generation);
    println!("programs:    generation {} pinned under {} (object {})", s.programs_generation, s.pin_dir, s.object);
    for h in &s.held {
        println!("interface:   {} (ifindex {}): XDP {}, egress {}", h.iface, h.ifindex, h.xdp_mode, h.tc);
    }
    for f in &s.fallbacks {
        println!("fallback:    {f}");
    }
    println!("uptime:      {}", uptime(s.uptime_s));
    if let Some(store) = &s.store {
        let state = if store.connected {
            "connected".to_string()
        } else {
            "UNREACHABLE: the rules last applied stay in force".to_string()
        };
        println!(
            "store:       {} as host {}: {state}; revision {} (rules from {}), {} members registered",
            store.url, store.host, store.revision, store.composed_revision, store.members
        );
        if let Some(e) = &store.last_error {
            println!("store error: {e}");
        }
    }
    match &s.maps {
        Some(m) => {
            for (name, fill) in m.named() {
                let name = name.replace('_', " ");
                println!("map fill:    {name:<16} {:>9} of {:>9} ({})", fill.used, fill.capacity, percent(fill));
            }
            println!("evicted:     {} opening sessions, {} assured", m.evicted.opening, m.evicted.assured);
        }
        None => println!("maps:        {} sessions, {} rule vectors", s.session_capacity, s.vector_capacity),
    }
    if let Some(left) = s.confirm_within_s {
        println!("pending:     rolled back in {left:.0} s unless `sgctl confirm`");
    }
    Ok(ExitCode::SUCCESS)
}
