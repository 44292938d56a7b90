//! `sgctl apply FILE [--confirm DURATION]` and `sgctl confirm`: change the rules of the
//! running agent through its control socket, and wait for the result.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Result, bail};
use sgctl::agent::api::{self, Op, Reply};

#[derive(clap::Args)]
pub struct Args {
    /// The rule file.
    file: PathBuf,
    /// Roll back to the rules in force before this apply unless `sgctl confirm` follows
    /// within this time (e.g. `60s`, `5m`, `90`: seconds).
    #[arg(long, value_parser = parse_duration)]
    confirm: Option<Duration>,
    /// The agent's control socket (default: this network namespace's).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Print the agent's reply as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ConfirmArgs {
    #[arg(long)]
    socket: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// `60s`, `5m`, `1h`, `250ms` or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len()));
    let value: f64 = number.parse().map_err(|_| format!("`{text}`: not a duration (e.g. 60s, 5m)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!("`{text}`: must be more than 0 and at most 24 h"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// An apply compiles and writes up to 65,536 rules; give it time.
const APPLY_TIMEOUT: Duration = Duration::from_secs(120);

pub fn run(args: &Args) -> Result<ExitCode> {
    let path = args.file.display().to_string();
    let text = match std::fs::read_to_string(&args.file) {
        Ok(text) => text,
        Err(e) => bail!("{path}: cannot read file: {e}"),
    };
    // Not validated here: the agent validates it anyway and replies with every error
    // (file, line, field, value), and a second pass over a 16,384-rule file would double
    // the time an apply takes. `sgctl validate` checks a file without an agent.
    let socket = args.socket.clone().unwrap_or_else(api::default_socket);
    let op = Op::Apply { path: path.clone(), text, confirm_s: args.confirm.map(|d| d.as_secs_f64()) };
    let reply = api::call(&socket, op, APPLY_TIMEOUT)?;
    Ok(show(&reply, args.json))
}

pub fn confirm(args: &ConfirmArgs) -> Result<ExitCode> {
    let socket = args.socket.clone().unwrap_or_else(api::default_socket);
    let reply = api::call(&socket, Op::Confirm, Duration::from_secs(10))?;
    Ok(show(&reply, args.json))
}

/// Prints a reply for people or as JSON; exit 0 when the agent did what was asked.
fn show(reply: &Reply, json: bool) -> ExitCode {
    if json {
        println!("{}", serde_json::to_string_pretty(reply).unwrap_or_default());
    } else {
        for error in &reply.errors {
            eprintln!("{error}");
        }
        if let Some(error) = &reply.error {
            eprintln!("sgctl: error: {error}");
        }
        if let Some(a) = &reply.applied {
            println!(
                "applied {}: generation {} on {}, {} rules (was {}), {} of {} rule sets unchanged, read {:.1} ms ({}), \
                 compile {:.1} ms, write and switch {:.1} ms ({} entries), old rules removed in {:.1} ms",
                a.config,
                a.generation,
                a.interfaces.join(", "),
                a.rules_after,
                a.rules_before,
                a.unchanged,
                a.rule_sets,
                a.parse_ms,
                a.read,
                a.compile_ms,
                a.switch_ms,
                a.entries_written,
                a.retire_ms
            );
            if let Some(s) = a.confirm_within_s {
                println!("run `sgctl confirm` within {s} s to keep these rules, or they are rolled back");
            }
        }
        if let Some(message) = &reply.message {
            println!("{message}");
        }
    }
    if reply.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["0s", "-1s", "soon", "10 parsecs", "25h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
