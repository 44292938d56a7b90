//! `cargo xtask`: sets the machine up and orchestrates builds, tests, the demo and the
//! benchmark. The work itself lives in the crates; this only runs them in order.

mod dist;
mod fuzz;
mod setup;
mod vm_task;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; fast when done).
    Setup,
    /// Build sgctl (and the eBPF object it embeds).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Setup, formatting and lint checks, then every test, kernel tests included.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build a namespace topology, enforce on it and drive traffic, printing verdicts.
    Demo,
    /// Measure per-packet cost, control-plane time and memory; writes bench/RESULTS.md.
    Bench {
        /// A seconds-long smoke run (also part of `test`); writes target/bench-quick/.
        #[arg(long)]
        quick: bool,
    },
    /// A statically linked sgctl and a Debian package with a systemd unit, in target/dist/.
    Dist,
    /// Run the cargo-fuzz targets of tests/fuzz/ (all, or TARGET), each for N seconds;
    /// fails when one finds a crash, naming the input it wrote under target/fuzz/.
    Fuzz {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// rule_file, import_aws, import_alibaba, kernel_parser or classifier.
        target: Option<String>,
    },
    /// Boot a throw-away guest (virtio-net NICs, native XDP) and run COMMAND in it, or a
    /// shell with sgctl enforcing examples/vm.toml; exits with the guest command's status.
    Vm {
        /// Guest kernel: 6.12 (bookworm-backports), 6.1 (bookworm) or 5.10 (bullseye).
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// The command to run in the guest (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    let task = Cli::parse().command;
    if let Task::Vm { kernel, command } = &task {
        return vm_task::main(kernel, command);
    }
    match run(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::run(),
        Task::Build { release } => build(release),
        Task::Test { no_lint, args } => test(no_lint, &args),
        Task::Demo => demo(),
        Task::Bench { quick } => bench(quick),
        Task::Dist => {
            setup::run()?;
            dist::run()
        }
        Task::Fuzz { seconds, target } => fuzz::run(seconds, target.as_deref()),
        Task::Vm { .. } => unreachable!("handled in main"),
    }
}

/// Runs a command from the workspace root, failing on a non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    step(Command::new("cargo").args(args))
}

pub fn step(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(workspace_root());
    let shown = format!("{cmd:?}").replace('"', "");
    println!("==> {shown}");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Where cargo puts binaries: `$CARGO_TARGET_DIR`, else `target/` in the workspace.
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), std::path::PathBuf::from)
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn build(release: bool) -> Result<()> {
    setup::run()?;
    let mut args = vec!["build", "--package", "sg-userspace"];
    if release {
        args.push("--release");
    }
    cargo(&args)
}

fn test(no_lint: bool, extra: &[String]) -> Result<()> {
    setup::run()?;
    if !no_lint {
        cargo(&["fmt", "--all", "--check"])?;
        cargo(&["clippy", "--workspace", "--exclude", "sg-ebpf", "--all-targets", "--", "-D", "warnings"])?;
        // The kernel crate is linted for its own target.
        step(
            Command::new("cargo")
                .args([
                    "+nightly",
                    "clippy",
                    "--package",
                    "sg-ebpf",
                    "--release",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--",
                    "-D",
                    "warnings",
                ])
                .current_dir(workspace_root().join("sg-ebpf")),
        )?;
    }
    // A second build whose kernel object differs, for the upgrade test. It is built in the
    // same target directory (sharing every dependency) and copied aside before the plain
    // build replaces it.
    let variant_dir = target_dir().join("upgrade-variant");
    let variant_bin = variant_dir.join("debug/sgctl");
    step(
        Command::new("cargo")
            .args(["build", "--package", "sg-userspace"])
            .env("SGCTL_EBPF_FEATURES", "upgrade-variant"),
    )?;
    std::fs::create_dir_all(variant_bin.parent().expect("has a parent"))?;
    std::fs::copy(target_dir().join("debug/sgctl"), &variant_bin)
        .with_context(|| format!("copying the variant to {}", variant_bin.display()))?;
    // The netns tests run the real binary; the VM suite (tests/tests/vm.rs) a static one,
    // built as `cargo xtask dist` builds it but unoptimised (the release build of every
    // dependency cost CI over 3 minutes).
    cargo(&["build", "--package", "sg-userspace"])?;
    let guest_bin = dist::static_build(false)?;
    run_tests(&variant_bin, &guest_bin, extra)?;
    // The kernel programs again with every fallback older kernels take (the sessions'
    // clock without bpf_ktime_get_coarse_ns), on this kernel.
    step(
        Command::new("cargo")
            // `--workspace` as above, so features resolve the same and nothing is rebuilt.
            .args(["test", "--workspace", "--exclude", "sg-ebpf", "--test", "session_sequences"])
            .env("SGCTL_FALLBACKS", "1"),
    )?;
    // The benchmark's smoke mode, so it cannot rot.
    bench(true)
}

/// Every test of the workspace. The VM suite is CPU-bound (qemu without KVM) and the rest
/// mostly wait on real traffic and timeouts, so the two run side by side, the VM suite
/// with one guest at a time so the two cores are shared rather than oversubscribed; its
/// output goes to `target/vm-suite.log` and is shown when it ends.
fn run_tests(variant_bin: &std::path::Path, guest_bin: &std::path::Path, extra: &[String]) -> Result<()> {
    let with_extra = |mut args: Vec<String>| {
        if !extra.is_empty() {
            args.push("--".into());
            args.extend(extra.iter().cloned());
        }
        args
    };
    let base = ["test", "--workspace", "--exclude", "sg-ebpf"].map(String::from).to_vec();
    step(Command::new("cargo").args(&base).arg("--no-run"))?;
    let mut others = base.clone();
    others.extend(["--lib", "--bins"].map(String::from));
    for dir in ["tests/tests", "sg-userspace/tests"] {
        let mut names: Vec<String> = std::fs::read_dir(workspace_root().join(dir))
            .with_context(|| format!("listing {dir}"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".rs").map(String::from))
            .filter(|name| name != "vm")
            .collect();
        names.sort();
        for name in names {
            others.extend(["--test".into(), name]);
        }
    }
    let log_path = target_dir().join("vm-suite.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut vm_args = base.clone();
    vm_args.extend(["--test", "vm"].map(String::from));
    let vm_args = with_extra(vm_args);
    println!("==> cargo {} (beside the other tests; output in {})", vm_args.join(" "), log_path.display());
    let mut vm = Command::new("cargo")
        .args(&vm_args)
        .current_dir(workspace_root())
        .env("SGCTL_VM_GUESTS", "1")
        .env("SGCTL_VM_BIN", guest_bin)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the VM suite")?;
    let rest = step(Command::new("cargo").args(with_extra(others)).env("SGCTL_VARIANT_BIN", variant_bin))
        .and_then(|()| step(Command::new("cargo").args(&base).arg("--doc")));
    let vm_status = vm.wait().context("waiting for the VM suite")?;
    println!("==> the VM suite's output ({}):", log_path.display());
    print!("{}", std::fs::read_to_string(&log_path).unwrap_or_default());
    rest?;
    if !vm_status.success() {
        bail!("the VM suite failed ({vm_status})");
    }
    Ok(())
}

fn bench(quick: bool) -> Result<()> {
    setup::run()?;
    if quick {
        cargo(&["build", "--package", "sg-tests", "--bin", "sg-bench"])?;
        step(Command::new(target_dir().join("debug/sg-bench")).arg("--quick"))
    } else {
        // The agents and `sgctl log` it starts run optimised too, as users run them.
        cargo(&["build", "--release", "--package", "sg-userspace", "--package", "sg-tests", "--bins"])?;
        step(Command::new(target_dir().join("release/sg-bench")).env("SGCTL_BIN", target_dir().join("release/sgctl")))
    }
}

fn demo() -> Result<()> {
    setup::run()?;
    cargo(&["build", "--package", "sg-userspace", "--package", "sg-tests", "--bins"])?;
    let bin = target_dir().join("debug");
    step(Command::new(bin.join("sg-demo")).env("SGCTL_BIN", bin.join("sgctl")))
}
