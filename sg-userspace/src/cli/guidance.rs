//! The `sgctl` subcommands of this module: argument structs and their commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use sgctl::policy::config::{self, Config};
use sgctl::policy::guidance::lint::{self, DEFAULT_MAX_RULES, LintOptions, Provider, Severity};

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
    let report = match sgctl::policy::guidance::diff::diff(&old, &new, args.iface.as_deref()) {
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
        println!("{}", sgctl::policy::guidance::diff::to_json(&report, &old, &new, &old_name, &new_name));
    } else {
        println!("{}", sgctl::policy::guidance::diff::to_text(&report, &old, &new));
    }
    Ok(if report.changed() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub provider: ImportProvider,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImportProvider {
    /// Alibaba Cloud ECS DescribeSecurityGroupAttribute responses (one or more groups,
    /// pages concatenated).
    Alibaba(AlibabaImportArgs),
    /// AWS EC2 describe-security-groups output.
    Aws(AwsImportArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupType {
    Basic,
    Advanced,
}

#[derive(Debug, clap::Args)]
pub struct ImportCommon {
    /// Members of a group: GROUP=ADDR[,ADDR...] (repeatable); the responses do not carry them.
    #[arg(long = "members", value_name = "GROUP=ADDRS")]
    pub members: Vec<String>,
    /// Bind every imported group to an interface of this name.
    #[arg(long)]
    pub iface: Option<String>,
    /// Write the rule file here instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Fail (exit 1, nothing written) on warnings too: placeholders, unknown fields.
    #[arg(long)]
    pub strict: bool,
    /// Print a JSON report (problems, and the rule file when not written with -o).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct AlibabaImportArgs {
    /// Response files: a JSON object, an array of them, or several one after another.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The type of the imported groups (the response does not say).
    #[arg(long = "type", value_enum, default_value_t = GroupType::Basic)]
    pub kind: GroupType,
    /// DescribeNetworkInterfaces (members) or DescribeSecurityGroups (types) responses
    /// (repeatable); members add to --members, types override --type.
    #[arg(long = "context", value_name = "FILE")]
    pub context: Vec<PathBuf>,
    #[command(flatten)]
    pub common: ImportCommon,
}

#[derive(Debug, clap::Args)]
pub struct AwsImportArgs {
    /// describe-security-groups output files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub common: ImportCommon,
}

/// `sgctl import`: exit 0 with the rule file written, 1 when the input holds something the
/// rule model cannot express (nothing written), 2 when a file cannot be read or parsed.
pub fn import(args: ImportArgs) -> Result<ExitCode> {
    use sgctl::policy::guidance::import::{ImportError, ProblemKind, alibaba, aws, parse_members, read_values};
    let (files, common) = match &args.provider {
        ImportProvider::Alibaba(a) => (&a.files, &a.common),
        ImportProvider::Aws(a) => (&a.files, &a.common),
    };
    let fail = |message: String, code: u8| -> Result<ExitCode> {
        if common.json {
            println!("{}", json!({ "ok": false, "error": message }));
        } else {
            eprintln!("sgctl: error: {message}");
        }
        Ok(ExitCode::from(code))
    };
    let members = match parse_members(&common.members) {
        Ok(members) => members,
        Err(message) => return fail(message, EXIT_INVALID),
    };
    let mut inputs = Vec::new();
    for file in files {
        let name = file.display().to_string();
        match read_values(&name) {
            Ok(values) => inputs.push((name, values)),
            Err(e) => return fail(e.to_string(), EXIT_INVALID),
        }
    }
    let result = match &args.provider {
        ImportProvider::Alibaba(a) => {
            let kind = match a.kind {
                GroupType::Basic => config::GroupKind::Basic,
                GroupType::Advanced => config::GroupKind::Advanced,
            };
            let mut context = sgctl::policy::guidance::import::context::Context { members, ..Default::default() };
            let mut problems = sgctl::policy::guidance::import::Problems::default();
            for file in &a.context {
                let name = file.display().to_string();
                match read_values(&name) {
                    Ok(values) => {
                        sgctl::policy::guidance::import::context::read(&name, &values, &mut context, &mut problems)
                    }
                    Err(e) => return fail(e.to_string(), EXIT_INVALID),
                }
            }
            if problems.has_errors() {
                Err(ImportError::Refused(problems.list))
            } else {
                let options = alibaba::Options {
                    kind,
                    kinds: context.kinds,
                    members: context.members,
                    interface: common.iface.clone(),
                };
                alibaba::import(&inputs, &options).map(|(text, mut found)| {
                    found.splice(0..0, problems.list);
                    (text, found)
                })
            }
        }
        ImportProvider::Aws(_) => aws::import(&inputs, &aws::Options { members, interface: common.iface.clone() }),
    };
    let (text, problems) = match result {
        Ok(done) => done,
        Err(ImportError::Refused(problems)) => {
            if common.json {
                println!("{}", json!({ "ok": false, "problems": problems }));
            } else {
                for problem in &problems {
                    eprintln!("{problem}");
                }
                eprintln!("sgctl: import refused: nothing written");
            }
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return fail(e.to_string(), EXIT_INVALID),
    };
    let warnings = problems.iter().filter(|p| p.severity == ProblemKind::Warning).count();
    if common.strict && warnings > 0 {
        if common.json {
            println!("{}", json!({ "ok": false, "problems": problems }));
        } else {
            for problem in &problems {
                eprintln!("{problem}");
            }
            eprintln!("sgctl: {warnings} warning(s) with --strict: nothing written");
        }
        return Ok(ExitCode::FAILURE);
    }
    if let Some(path) = &common.output {
        std::fs::write(path, &text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if common.json {
        println!(
            "{}",
            json!({
                "ok": true,
                "problems": problems,
                "output": common.output.as_ref().map(|p| p.display().to_string()),
                "rule_file": if common.output.is_none() { Some(&text) } else { None },
            })
        );
    } else {
        for problem in &problems {
            eprintln!("{problem}");
        }
        if common.output.is_none() {
            print!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The provider's format.
    #[arg(value_enum)]
    pub provider: Provider,
    /// The rule file.
    pub file: PathBuf,
    /// Write the JSON here instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// `sgctl export`: exit 0 with the provider JSON, 1 when a rule cannot be expressed by the
/// provider (nothing written), 2 when the rule file is invalid.
pub fn export(args: ExportArgs) -> Result<ExitCode> {
    let (cfg, _) = match load(&args.file, false) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let name = args.file.display().to_string();
    let exported = match args.provider {
        Provider::Alibaba => sgctl::policy::guidance::export::alibaba(&cfg, &name),
        Provider::Aws => sgctl::policy::guidance::export::aws(&cfg, &name),
    };
    let exported = match exported {
        Ok(exported) => exported,
        Err(e) => {
            eprintln!("sgctl: error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let text = serde_json::to_string_pretty(&exported.document)? + "\n";
    for note in &exported.notes {
        eprintln!("note: {note}");
    }
    match &args.output {
        Some(path) => std::fs::write(path, &text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
