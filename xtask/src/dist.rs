//! `cargo xtask dist`: what a person copies onto a test VM. A statically linked `sgctl`
//! (glibc with `+crt-static`; the eBPF object is embedded) and a Debian package holding it,
//! an example rule file and a systemd unit, built with `dpkg-deb` (no extra tool).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{step, target_dir, workspace_root};

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Where `dist` puts its output.
pub fn dist_dir() -> PathBuf {
    target_dir().join("dist")
}

/// Builds the static `sgctl` (release) into `target/dist/sgctl`; returns its path.
pub fn static_sgctl() -> Result<PathBuf> {
    let built = static_release_build()?;
    let out = dist_dir();
    fs::create_dir_all(&out)?;
    let dest = out.join("sgctl");
    // Copy through a temporary name: a guest may be running the old binary.
    let tmp = out.join(".sgctl.new");
    fs::copy(&built, &tmp).with_context(|| format!("copying {}", built.display()))?;
    fs::rename(&tmp, &dest)?;
    Ok(dest)
}

/// Builds the release `sgctl` statically linked for `TARGET` (build scripts and proc
/// macros stay dynamic); checks that it is static and returns its path.
fn static_release_build() -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "--release", "--package", "sg-userspace", "--bin", "sgctl", "--target", TARGET]);
    // Only the target's code: build scripts and proc macros stay dynamic.
    step(cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static"))?;
    let built = target_dir().join(TARGET).join("release").join("sgctl");
    check_static(&built)?;
    Ok(built)
}

/// The VM suite's guest runs the debug `sgctl` linked statically, into
/// `target/vm-bin/sgctl`. `cargo rustc` gives `+crt-static` to the final link of the
/// binary alone, so every dependency of the plain debug build is reused (a `--target`
/// build compiles each of them again: minutes on a fresh machine, against about 15 s
/// here); the plain dynamic binary is then restored from cargo's cache.
pub fn static_debug_build() -> Result<PathBuf> {
    step(Command::new("cargo").args([
        "rustc",
        "--package",
        "sg-userspace",
        "--bin",
        "sgctl",
        "--",
        "-C",
        "target-feature=+crt-static",
    ]))?;
    let built = target_dir().join("debug/sgctl");
    check_static(&built)?;
    let out = target_dir().join("vm-bin");
    fs::create_dir_all(&out)?;
    let dest = out.join("sgctl");
    let tmp = out.join(".sgctl.new");
    fs::copy(&built, &tmp).with_context(|| format!("copying {}", built.display()))?;
    fs::rename(&tmp, &dest)?;
    step(Command::new("cargo").args(["build", "--package", "sg-userspace"]))?;
    Ok(dest)
}

fn check_static(built: &Path) -> Result<()> {
    let file = Command::new("file").arg(built).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if let Ok(file) = &file
        && !file.contains("statically linked")
        && !file.contains("static-pie")
    {
        bail!("{} is not statically linked: {file}", built.display());
    }
    Ok(())
}

fn version() -> Result<String> {
    let manifest = fs::read_to_string(workspace_root().join("Cargo.toml"))?;
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.trim().strip_prefix("version = ").map(|v| v.trim_matches('"').to_string()))
        .context("no [workspace.package] version in Cargo.toml")
}

/// The static binary and `target/dist/sgctl_<version>_amd64.deb`.
pub fn run() -> Result<()> {
    let sgctl = static_sgctl()?;
    let version = version()?;
    let root = dist_dir().join("deb-root");
    let _ = fs::remove_dir_all(&root);
    // The unit is the documented example itself, so the two cannot drift apart.
    let files: [(&str, PathBuf, u32); 5] = [
        ("usr/sbin/sgctl", sgctl.clone(), 0o755),
        ("lib/systemd/system/sgctl.service", workspace_root().join("examples/sgctl.service"), 0o644),
        ("usr/share/doc/sgctl/agent.md", workspace_root().join("docs/agent.md"), 0o644),
        ("etc/sgctl/rules.toml", workspace_root().join("dist/rules.toml"), 0o644),
        ("usr/share/doc/sgctl/demo.toml", workspace_root().join("examples/demo.toml"), 0o644),
    ];
    for (at, from, mode) in &files {
        let dest = root.join(at);
        fs::create_dir_all(dest.parent().unwrap_or(&root))?;
        fs::copy(from, &dest).with_context(|| format!("copying {}", from.display()))?;
        set_mode(&dest, *mode)?;
    }
    let size_kib = files.iter().map(|(_, f, _)| fs::metadata(f).map_or(0, |m| m.len())).sum::<u64>().div_ceil(1024);
    fs::create_dir_all(root.join("DEBIAN"))?;
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: sgctl\nVersion: {version}\nArchitecture: amd64\nMaintainer: sgctl developers <sgctl@example.invalid>\n\
             Installed-Size: {size_kib}\nDepends: iproute2\nRecommends: bpftool\nSection: net\nPriority: optional\n\
             Description: cloud-style security groups for Linux NICs, in eBPF\n \
             sgctl enforces AWS-style security groups (stateful, per interface) with XDP on\n \
             ingress and TC (TCX or clsact) on egress. Statically linked; needs Linux 5.10+.\n"
        ),
    )?;
    fs::write(root.join("DEBIAN/conffiles"), "/etc/sgctl/rules.toml\n")?;
    let deb = dist_dir().join(format!("sgctl_{version}_amd64.deb"));
    step(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&root).arg(&deb))?;
    fs::remove_dir_all(&root)?;
    println!("==> dist: {} (static) and {}", sgctl.display(), deb.display());
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}
