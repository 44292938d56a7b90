//! `sgctl log [--follow] [--json] [--iface IF] [--verdict drop|accept|audit] [--rule ID]`:
//! the verdict events the running agent read from the kernel, named with their rules.

use std::{io::BufRead as _, io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Result, bail};
use serde_json::Value;
use sgctl::agent::api::{self, Op};

#[derive(clap::Args)]
pub struct Args {
    /// Keep printing events as they come.
    #[arg(long)]
    follow: bool,
    /// One JSON object a line.
    #[arg(long)]
    json: bool,
    #[arg(long)]
    iface: Option<String>,
    #[arg(long, value_parser = ["drop", "accept", "audit"])]
    verdict: Option<String>,
    /// Only events of this rule id.
    #[arg(long)]
    rule: Option<u64>,
    /// The agent's control socket (default: this network namespace's).
    #[arg(long)]
    socket: Option<PathBuf>,
}

fn wanted(args: &Args, event: &Value) -> bool {
    let field = |name: &str| event.get(name).and_then(Value::as_str).unwrap_or("");
    if args.iface.as_deref().is_some_and(|i| field("iface") != i) {
        return false;
    }
    let verdict = match field("verdict") {
        "audit-drop" => "audit",
        "pass" => "accept",
        other => other,
    };
    if args.verdict.as_deref().is_some_and(|v| v != verdict) {
        return false;
    }
    args.rule.is_none_or(|id| event.get("rule_id").and_then(Value::as_u64) == Some(id))
}

/// One line for people.
fn human(event: &Value) -> String {
    let s = |name: &str| event.get(name).map(|v| v.to_string().trim_matches('"').to_string()).unwrap_or_default();
    let ports = match (event.get("src_port"), event.get("icmp_type")) {
        (Some(_), _) => format!("{}:{} -> {}:{}", s("src"), s("src_port"), s("dst"), s("dst_port")),
        (None, Some(_)) => format!("{} -> {} icmp type {} code {}", s("src"), s("dst"), s("icmp_type"), s("icmp_code")),
        _ => format!("{} -> {}", s("src"), s("dst")),
    };
    let rule = match event.get("rule_id") {
        Some(id) => format!(" by rule {id} ({}) \"{}\" at {}", s("group"), s("description"), s("location")),
        None => String::new(),
    };
    let reason = event.get("reason").map(|r| format!(" ({})", r.as_str().unwrap_or(""))).unwrap_or_default();
    format!(
        "{:.3} {} {} {} proto {} {ports}: {} at step {}{reason}{rule}",
        event.get("time").and_then(Value::as_f64).unwrap_or(0.0),
        s("iface"),
        s("direction"),
        s("kind"),
        s("protocol"),
        s("verdict"),
        s("step"),
    )
}

/// `--json` without a filter: the agent already sends one JSON object a line, so what
/// it sends is copied out as it comes, up to 256 KiB a read (no line splitting, no
/// UTF-8 check, one write a read), and each write reaches a follower at once. Stops
/// when the agent closes the stream or the output is gone.
fn passthrough<R: std::io::Read>(reader: std::io::BufReader<R>, out: &mut impl std::io::Write) {
    if out.write_all(reader.buffer()).and_then(|()| out.flush()).is_err() {
        return;
    }
    let mut stream = reader.into_inner();
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if out.write_all(&chunk[..n]).and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let socket = args.socket.clone().unwrap_or_else(api::default_socket);
    let timeout = if args.follow { None } else { Some(Duration::from_secs(10)) };
    let (reply, reader) = api::open(&socket, Op::Log { follow: args.follow }, timeout)?;
    if !reply.ok {
        bail!("{}", reply.error.unwrap_or_else(|| "the agent refused".into()));
    }
    let stdout = std::io::stdout();
    if args.json && args.iface.is_none() && args.verdict.is_none() && args.rule.is_none() {
        passthrough(reader, &mut stdout.lock());
        return Ok(ExitCode::SUCCESS);
    }
    let mut reader = reader;
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = line.trim_end_matches('\n');
        let Ok(event) = serde_json::from_str::<Value>(text) else { continue };
        if !wanted(args, &event) {
            continue;
        }
        let written = if args.json { writeln!(out, "{text}") } else { writeln!(out, "{}", human(&event)) };
        if written.is_err() {
            break;
        }
        // A follower sees each event as it comes: the output is flushed whenever the
        // agent has sent nothing more yet (not on every line: at 200k events/s that
        // would be a write a line).
        if args.follow && reader.buffer().is_empty() && out.flush().is_err() {
            break;
        }
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_copies_the_buffered_part_and_the_rest_byte_for_byte() {
        // Longer than the reader's buffer and than one read, lines cut anywhere.
        let text: String = (0..40_000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let mut reader = std::io::BufReader::with_capacity(100, text.as_bytes());
        let mut first = String::new();
        reader.read_line(&mut first).expect("reads");
        assert!(!reader.buffer().is_empty(), "the reader holds part of what follows");
        let mut out = Vec::new();
        passthrough(reader, &mut out);
        assert_eq!(first.len() + out.len(), text.len());
        assert_eq!(format!("{first}{}", String::from_utf8(out).expect("utf-8")), text);
    }
}
