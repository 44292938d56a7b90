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
    // The netns tests run the real binary; the VM suite (tests/tests/vm.rs) the same one
    // linked statically, as `cargo xtask dist` ships it.
    cargo(&["build", "--package", "sg-userspace"])?;
    let guest_bin = dist::static_debug_build()?;
    run_tests(&variant_bin, &guest_bin, extra)?;
    // The benchmark's smoke mode, so it cannot rot.
    bench(true)
}

/// A `cargo ARGS` running beside the others, its output in `log` (shown when it ends).
struct Beside {
    what: &'static str,
    log: std::path::PathBuf,
    child: std::process::Child,
}

impl Beside {
    fn start(what: &'static str, args: &[String], env: &[(&str, &std::ffi::OsStr)], log: &str) -> Result<Self> {
        let log = target_dir().join(log);
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        println!("==> cargo {} (beside the other tests; output in {})", args.join(" "), log.display());
        let child = Command::new("cargo")
            .args(args)
            .current_dir(workspace_root())
            .envs(env.iter().copied())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Self { what, log, child })
    }

    /// Waits, prints the output and says whether it passed.
    fn finish(mut self) -> Result<()> {
        let status = self.child.wait().with_context(|| format!("waiting for {}", self.what))?;
        println!("==> {}'s output ({}):", self.what, self.log.display());
        print!("{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        if !status.success() {
            bail!("{} failed ({status})", self.what);
        }
        Ok(())
    }
}

/// Every test of the workspace. The VM suite is CPU-bound (qemu without KVM) and the rest
/// mostly wait on real traffic and timeouts, so they run side by side, the VM suite with
/// one guest at a time so the two cores are shared rather than oversubscribed, and the
/// fallback rerun of the session sequences beside them too; their output goes to
/// `target/vm-suite.log` and `target/fallbacks.log` and is shown when they end.
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
    let mut vm_args = base.clone();
    vm_args.extend(["--test", "vm"].map(String::from));
    let vm = Beside::start(
        "the VM suite",
        &with_extra(vm_args),
        &[("SGCTL_VM_GUESTS", "1".as_ref()), ("SGCTL_VM_BIN", guest_bin.as_os_str())],
        "vm-suite.log",
    )?;
    // The kernel programs again with every fallback older kernels take (the sessions'
    // clock without bpf_ktime_get_coarse_ns, clsact, generic XDP, per-element writes), on
    // this kernel. `--workspace` as above, so features resolve the same and nothing is
    // rebuilt.
    let mut fallback_args = base.clone();
    fallback_args.extend(["--test", "session_sequences"].map(String::from));
    let fallbacks =
        Beside::start("the fallback run", &fallback_args, &[("SGCTL_FALLBACKS", "1".as_ref())], "fallbacks.log")?;
    let rest = step(Command::new("cargo").args(with_extra(others)).env("SGCTL_VARIANT_BIN", variant_bin))
        .and_then(|()| step(Command::new("cargo").args(&base).arg("--doc")));
    let fallbacks = fallbacks.finish();
    let vm = vm.finish();
    rest.and(fallbacks).and(vm)
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
