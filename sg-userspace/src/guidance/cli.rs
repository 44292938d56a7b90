//! The `sgctl` subcommands of this module: argument structs and their commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use super::lint::{self, DEFAULT_MAX_RULES, LintOptions, Provider, Severity};
use crate::config::{self, Config};

/// Exit code for an unreadable or invalid input file (1 is kept for "findings" / "changes").
const EXIT_INVALID: u8 = 2;

#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// The rule file.
    pub file: PathBuf,
    /// Print the findings as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when a finding of this severity or worse is found.
    #[arg(long, value_enum, default_value_t = Severity::Error)]
    pub fail_on: Severity,
    /// Also report what this provider would refuse or limit.
    #[arg(long, value_enum)]
    pub provider: Option<Provider>,
    /// Rules per group above which a group is reported as over-large.
    #[arg(long, default_value_t = DEFAULT_MAX_RULES)]
    pub max_rules: usize,
}

/// Reads and validates a rule file; on failure prints the errors (or their JSON) and
/// returns the exit code to use.
fn load(path: &Path, json: bool) -> Result<(Config, String), ExitCode> {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            let errors = config::ConfigErrors::whole_file(&name, format!("cannot read file: {e}"));
            report_invalid(&name, &errors, json);
            return Err(ExitCode::from(EXIT_INVALID));
        }
    };
    match config::parse_str(&text, &name) {
        Ok(cfg) => Ok((cfg, text)),
        Err(errors) => {
            report_invalid(&name, &errors, json);
            Err(ExitCode::from(EXIT_INVALID))
        }
    }
}

fn report_invalid(name: &str, errors: &config::ConfigErrors, json: bool) {
    if json {
        println!("{}", json!({ "file": name, "valid": false, "errors": errors.errors }));
    } else {
        eprintln!("{errors}");
        eprintln!("{name}: invalid rule file ({} error(s))", errors.errors.len());
    }
}

/// `sgctl lint`: exit 0 when no finding reaches `--fail-on`, 1 when one does, 2 when the
/// file is invalid.
pub fn lint(args: LintArgs) -> Result<ExitCode> {
    let (cfg, text) = match load(&args.file, args.json) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let name = args.file.display().to_string();
    let options = LintOptions { provider: args.provider, max_rules: args.max_rules };
    let findings = lint::lint(&cfg, &text, &name, &options);
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let failed = findings.iter().any(|f| f.severity >= args.fail_on);
    if args.json {
        println!(
            "{}",
            json!({
                "file": name,
                "valid": true,
                "findings": findings,
                "counts": { "error": count(Severity::Error), "warning": count(Severity::Warning), "info": count(Severity::Info) },
                "fail_on": args.fail_on,
                "failed": failed,
            })
        );
    } else {
        for finding in &findings {
            println!("{finding}");
        }
        println!(
            "{name}: {} finding(s): {} error(s), {} warning(s), {} info",
            findings.len(),
            count(Severity::Error),
            count(Severity::Warning),
            count(Severity::Info)
        );
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The rule file in force now.
    pub old: PathBuf,
    /// The rule file to compare it with.
    pub new: PathBuf,
    /// Only this interface.
    #[arg(long)]
    pub iface: Option<String>,
    /// Print the changes as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `sgctl diff`: exit 0 when no flow changes verdict, 1 when some do, 2 on invalid input.
pub fn diff(args: DiffArgs) -> Result<ExitCode> {
    let (old, _) = match load(&args.old, args.json) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let (new, _) = match load(&args.new, args.json) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let report = match super::diff::diff(&old, &new, args.iface.as_deref()) {
        Ok(report) => report,
        Err(e) => {
            if args.json {
                println!("{}", json!({ "error": e.to_string() }));
            } else {
                eprintln!("sgctl: error: {e}");
            }
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    if args.json {
        let (old_name, new_name) = (args.old.display().to_string(), args.new.display().to_string());
        println!("{}", super::diff::to_json(&report, &old, &new, &old_name, &new_name));
    } else {
        println!("{}", super::diff::to_text(&report, &old, &new));
    }
    Ok(if report.changed() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
