//! `cargo xtask fuzz [--seconds N] [TARGET]`: runs the cargo-fuzz targets of `tests/fuzz/`
//! (the checks are `sg_tests::fuzzing`), one after the other, each for N seconds.
//!
//! Built with `--sanitizer none --debug-assertions`: the code under test is safe Rust, so
//! AddressSanitizer would find nothing the bounds checks do not, at several times the
//! cost per execution; debug assertions keep overflow checks and `debug_assert!`s on.
//! Each target reads its seed corpus (`tests/fuzz/corpus/<target>/`) and past findings
//! (`tests/fuzz/regressions/<target>/`) and writes what it discovers under
//! `target/fuzz/`, never into the repository.

use std::{path::PathBuf, process::Command, time::SystemTime};

use anyhow::{Context as _, Result, bail};

use crate::{setup, target_dir, workspace_root};

/// The targets, in the order they run (`tests/fuzz/Cargo.toml`'s `[[bin]]`s).
pub const TARGETS: &[&str] = &["rule_file", "import_aws", "import_alibaba", "kernel_parser", "classifier"];

/// A run longer than this for one input counts as a finding (a hang or a blow-up).
const TIMEOUT_SECONDS: u32 = 30;

pub fn run(seconds: u64, only: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match only {
        Some(name) if TARGETS.contains(&name) => vec![name],
        Some(name) => bail!("no fuzz target {name}; the targets: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    setup::run()?;
    setup::fuzz()?;
    // Absolute, without `xtask/..`: the paths are printed for the user to open.
    let root = workspace_root().canonicalize().context("the workspace root")?;
    let scratch = target_dir().join("fuzz");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let scratch = scratch.canonicalize().context("target/fuzz")?;
    let mut failed = Vec::new();
    for target in targets {
        let corpus = scratch.join("corpus").join(target);
        let artifacts = scratch.join("artifacts").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        std::fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
        let mut inputs = vec![corpus.clone(), root.join("tests/fuzz/corpus").join(target)];
        let regressions = root.join("tests/fuzz/regressions").join(target);
        if regressions.is_dir() {
            inputs.push(regressions);
        }
        let started = SystemTime::now();
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run", "--fuzz-dir", "tests/fuzz", "--sanitizer", "none", "--debug-assertions"])
            .arg("--target-dir")
            .arg(scratch.join("build"))
            .arg(target)
            .args(&inputs)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={TIMEOUT_SECONDS}"))
            .arg("-print_final_stats=1")
            // libFuzzer wants the trailing slash: the prefix is prepended to the file name.
            .arg(format!("-artifact_prefix={}/", artifacts.display()));
        let outcome = crate::step(&mut cmd);
        let found = new_files(&artifacts, started);
        if outcome.is_err() || !found.is_empty() {
            eprintln!("xtask fuzz: {target} found a failure; the input:");
            for file in &found {
                eprintln!("    {}", file.display());
            }
            eprintln!(
                "    fix it, keep the input as tests/fuzz/regressions/{target}/<name>, and rerun \
                 `cargo test -p sg-tests --test fuzz_regressions`"
            );
            failed.push(target);
        } else {
            println!("==> fuzz: {target}: {seconds} s, no failure; new corpus entries in {}", corpus.display());
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets with failures: {}", failed.join(", "));
    }
    Ok(())
}

/// Files of `dir` written since `since` (the artifacts of this run).
fn new_files(dir: &std::path::Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since))
        .map(|e| e.path())
        .collect()
}
