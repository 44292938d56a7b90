//! `cargo xtask setup`: brings a fresh Debian machine to a state that builds, loads and
//! tests the eBPF programs. Each step checks first and does nothing when already done,
//! so a second run takes seconds. Without root it prints the commands and fails.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Result, bail};

/// bpf-linker must link against the LLVM major version of the nightly rustc (22).
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: &str = "22";

/// Debian packages the build and the tests use.
fn packages() -> Vec<String> {
    let mut p: Vec<String> = [
        "iproute2",     // ip, tc: namespaces, veth, bridges
        "iputils-ping", // ping in scenario tests
        "bpftool",      // tests check what is attached
        "build-essential",
        // The VM harness (`cargo xtask vm`, tests/tests/vm.rs): qemu, the guest's
        // initramfs (busybox, cpio, depmod, module decompression), and in the guest
        // the driver's counters and the scenario's servers and probes.
        "qemu-system-x86",
        "busybox-static",
        "cpio",
        "kmod",
        "zstd",
        "xz-utils",
        "ethtool",
        "socat",
        "netcat-openbsd",
        "file",        // `cargo xtask dist` checks the binary is static
        "curl",        // scrapes the metrics endpoint in tests
        "netsniff-ng", // trafgen: the SYN flood of tests/tests/flood.rs
        // The fleet store (tests/tests/fleet.rs, the fleet benchmark), and protoc with the
        // well-known protobuf types for etcd-client's generated gRPC code.
        "etcd-server",
        "protobuf-compiler",
        "libprotobuf-dev",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    if !bpf_linker_ok() {
        for pkg in ["llvm-{}-dev", "libclang-{}-dev", "clang-{}", "libpolly-{}-dev"] {
            p.push(pkg.replace("{}", LLVM_MAJOR));
        }
    }
    p
}

fn quiet(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed(pkg: &str) -> bool {
    quiet(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn bpf_linker_ok() -> bool {
    quiet(Command::new("bpf-linker").arg("--version")).is_some_and(|v| v.contains(BPF_LINKER_VERSION))
}

fn rust_src_ok() -> bool {
    quiet(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .is_some_and(|l| l.lines().any(|c| c.starts_with("rust-src")))
}

fn nightly_ok() -> bool {
    quiet(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])).is_some()
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| m.lines().any(|l| l.split_whitespace().nth(2) == Some("bpf")))
}

fn is_root() -> bool {
    quiet(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0")
}

pub fn run() -> Result<()> {
    println!("==> setup: checking the machine");
    if !cfg!(target_os = "linux") {
        bail!("sgctl needs Linux (eBPF, XDP, TC, network namespaces)");
    }
    let debian = Path::new("/etc/debian_version").exists();
    let mut todo: Vec<(String, Vec<String>)> = Vec::new();

    let missing: Vec<String> = packages().into_iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("    apt packages: present");
    } else {
        if !debian {
            bail!("not a Debian machine; install the equivalents of: {}", missing.join(" "));
        }
        let mut install = vec!["apt-get".to_string(), "install".into(), "-y".into(), "--no-install-recommends".into()];
        install.extend(missing.iter().cloned());
        todo.push(("apt packages".into(), vec!["apt-get update".into(), install.join(" ")]));
    }
    if !nightly_ok() {
        todo.push(("nightly toolchain".into(), vec!["rustup toolchain install nightly --profile minimal".into()]));
    }
    if !rust_src_ok() {
        todo.push(("rust-src for nightly".into(), vec!["rustup component add rust-src --toolchain nightly".into()]));
    } else {
        println!("    rust-src (nightly): present");
    }
    if bpf_linker_ok() {
        println!("    bpf-linker {BPF_LINKER_VERSION}: present");
    } else {
        todo.push((
            format!("bpf-linker {BPF_LINKER_VERSION}"),
            vec![format!(
                "LLVM_PREFIX=/usr/lib/llvm-{LLVM_MAJOR} cargo install bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features llvm-{LLVM_MAJOR} --locked --force"
            )],
        ));
    }
    if bpffs_mounted() {
        println!("    bpffs: mounted");
    } else {
        todo.push(("bpffs".into(), vec!["mount -t bpf bpf /sys/fs/bpf".into()]));
    }
    if todo.is_empty() {
        println!("==> setup: nothing to do");
        return Ok(());
    }
    let needs_root = todo.iter().any(|(what, _)| what == "apt packages" || what == "bpffs");
    if needs_root && !is_root() {
        eprintln!("setup needs root for some steps; run these, then retry:");
        for (_, cmds) in &todo {
            for c in cmds {
                eprintln!("    {c}");
            }
        }
        bail!("setup incomplete (not root)");
    }
    for (what, cmds) in todo {
        println!("==> setup: {what}");
        for c in cmds {
            println!("    $ {c}");
            let status = Command::new("sh").args(["-c", &c]).env("DEBIAN_FRONTEND", "noninteractive").status()?;
            if !status.success() {
                bail!("setup step `{c}` failed ({status})");
            }
        }
    }
    if !bpf_linker_ok() || !rust_src_ok() {
        bail!("setup ran but bpf-linker or rust-src is still missing");
    }
    println!("==> setup: done");
    Ok(())
}

/// The cargo-fuzz version `cargo xtask fuzz` installs when `cargo fuzz` is missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn cargo_fuzz_ok() -> bool {
    quiet(Command::new("cargo").args(["+nightly", "fuzz", "--version"])).is_some()
}

/// What `cargo xtask fuzz` needs beyond [`run`]: the nightly toolchain (libFuzzer's
/// sanitizer-coverage flags are nightly-only) and cargo-fuzz. Separate from [`run`] so
/// that `cargo xtask test` does not pay for a cargo-fuzz build; checks first, like it.
pub fn fuzz() -> Result<()> {
    println!("==> setup: fuzzing");
    if nightly_ok() {
        println!("    nightly toolchain: present");
    } else {
        step("rustup toolchain install nightly --profile minimal")?;
    }
    if cargo_fuzz_ok() {
        println!("    cargo-fuzz: present");
    } else {
        step(&format!("cargo install cargo-fuzz --version {CARGO_FUZZ_VERSION} --locked"))?;
        if !cargo_fuzz_ok() {
            bail!("cargo-fuzz was installed but `cargo +nightly fuzz` still does not run");
        }
    }
    Ok(())
}

fn step(command: &str) -> Result<()> {
    println!("    $ {command}");
    let status = Command::new("sh").args(["-c", command]).status()?;
    if !status.success() {
        bail!("setup step `{command}` failed ({status})");
    }
    Ok(())
}
