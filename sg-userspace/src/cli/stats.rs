//! `sgctl stats [--iface IF] [--json] [--unused [--since DURATION]]`: what each interface,
//! direction and rule decided, from the running agent.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Result, bail};
use sgctl::agent::{
    api::{self, Op},
    observe::{RuleStats, StatsView},
};

#[derive(clap::Args)]
pub struct Args {
    /// Only this interface.
    #[arg(long)]
    iface: Option<String>,
    #[arg(long)]
    json: bool,
    /// Only the rules that decided nothing (no packet, new or of a session they admitted).
    #[arg(long)]
    unused: bool,
    /// With --unused: the rules that decided nothing for this long (e.g. 90s, 30m, 7d);
    /// the agent notes when each rule's counters last moved.
    #[arg(long, value_parser = parse_duration, requires = "unused")]
    since: Option<Duration>,
    /// The agent's control socket (default: this network namespace's).
    #[arg(long)]
    socket: Option<PathBuf>,
}

/// `90s`, `30m`, `12h`, `7d`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len()));
    let n: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 90s, 30m, 7d)"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    Ok(Duration::from_secs_f64(n * scale))
}

/// Whether `r` counts as unused: nothing decided, or nothing for `since`.
fn unused(r: &RuleStats, since: Option<Duration>) -> bool {
    match since {
        None => r.packets == 0,
        Some(d) => r.idle_s >= d.as_secs_f64(),
    }
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let socket = args.socket.clone().unwrap_or_else(api::default_socket);
    let reply = api::call(&socket, Op::Stats, Duration::from_secs(30))?;
    let Some(mut view) = reply.stats else {
        bail!("{}", reply.error.unwrap_or_else(|| "no counters in the reply".into()))
    };
    if let Some(iface) = &args.iface {
        if !view.interfaces.iter().any(|i| &i.iface == iface) {
            bail!("--iface {iface}: the agent enforces on no interface of that name");
        }
        view.interfaces.retain(|i| &i.iface == iface);
        view.rules.retain(|r| &r.iface == iface);
    }
    if args.unused {
        view.rules.retain(|r| r.step == "rule" && unused(r, args.since));
        view.interfaces.clear();
    }
    if args.json {
        println!("{}", serde_json::to_string(&view)?);
    } else {
        print_view(&view, args.unused);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_view(view: &StatsView, unused_only: bool) {
    if !unused_only {
        let e = &view.sessions_evicted;
        println!("session tables: evicted {} opening, {} assured", e.opening, e.assured);
    }
    for i in &view.interfaces {
        let c = &i.counters;
        println!(
            "{} {}: pass {} drop {} audit-drop {}; sessions live {} opened {} expired {} revoked {}",
            i.iface,
            i.direction,
            c.passed,
            c.dropped,
            c.audit_dropped,
            i.sessions_live,
            i.sessions_opened,
            i.sessions_expired,
            i.sessions_revoked
        );
        for (step, n) in c.by_step.iter().filter(|(s, _)| s.ends_with("drop")) {
            println!("  {step}: {n}");
        }
        for (reason, n) in &c.malformed {
            println!("  malformed {reason}: {n}");
        }
        for e in &i.events {
            if e.emitted > 0 {
                println!(
                    "  {} events: emitted {} = delivered {} + suppressed {} + lost {}",
                    e.kind, e.emitted, e.delivered, e.suppressed, e.lost
                );
            }
        }
    }
    if unused_only && view.rules.is_empty() {
        println!("every rule decided something");
    }
    for r in &view.rules {
        let what = if r.rule_id == 0 { r.step.clone() } else { format!("rule {} ({})", r.rule_id, r.group) };
        let description = if r.description.is_empty() { String::new() } else { format!(" \"{}\"", r.description) };
        let location = if r.location.is_empty() { String::new() } else { format!(" at {}", r.location) };
        println!(
            "{} {} {what}{description}{location}: {} packets, {} bytes, {} sessions, idle {:.0} s",
            r.iface, r.direction, r.packets, r.bytes, r.sessions, r.idle_s
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn unused_means_nothing_decided_or_nothing_for_a_while() {
        let r = RuleStats { packets: 3, idle_s: 100.0, ..RuleStats::default() };
        assert!(!unused(&r, None));
        assert!(unused(&r, Some(Duration::from_secs(60))));
        assert!(!unused(&r, Some(Duration::from_secs(600))));
        assert!(unused(&RuleStats::default(), None));
    }
}
