//! Builds the kernel-side crate for the BPF target and leaves the object in `OUT_DIR`,
//! where `src/ebpf.rs` embeds it (the aya-template arrangement).
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

const EBPF_PACKAGE: &str = "sg-ebpf";

fn main() -> anyhow::Result<()> {
    // `AYA_BUILD_SKIP=1` lets `cargo check`/clippy of host code run without a BPF
    // toolchain; the embedded object is then empty and loading it fails loudly.
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = PathBuf::from(env::var("OUT_DIR")?).join(EBPF_PACKAGE);
        if !out.exists() {
            fs::write(&out, b"")?;
        }
    }
    let cargo_metadata::Metadata { packages, target_directory, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|p| p.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("{EBPF_PACKAGE} package not found"))?;
    let root_dir =
        ebpf_package.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf_package.manifest_path))?;
    // `SGCTL_EBPF_FEATURES=a,b`: features of the kernel crate (the upgrade test builds a
    // second sgctl with `upgrade-variant`).
    println!("cargo:rerun-if-env-changed=SGCTL_EBPF_FEATURES");
    let features = env::var("SGCTL_EBPF_FEATURES").unwrap_or_default();
    let features: Vec<&str> = features.split(',').map(str::trim).filter(|f| !f.is_empty()).collect();
    share_ebpf_target_dir(target_directory.as_std_path(), &features)?;
    isolate_inner_cargo();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf_package.name.as_str(),
            root_dir: root_dir.as_str(),
            features: &features,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

/// aya-build compiles the kernel crate (and `core`, with build-std) in a target directory
/// inside this build script's `OUT_DIR`, which is new for every profile, target and feature
/// set of this crate: a plain build, clippy, `cargo test`, the static release binary each
/// paid about 40 s for the same object. Pointing that directory at one per kernel-feature
/// set under the workspace's target directory lets cargo reuse its own incremental build
/// (cargo's lock on that directory keeps concurrent builds apart). A directory that is
/// already there (an older build) is left as it is; a link is re-pointed, since the
/// features can change under the same `OUT_DIR`.
fn share_ebpf_target_dir(workspace_target: &std::path::Path, features: &[&str]) -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let private = out_dir.join("aya-build").join("target").join(EBPF_PACKAGE);
    match private.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => fs::remove_file(&private)?,
        Ok(_) => return Ok(()),
        Err(_) => {}
    }
    let key = if features.is_empty() { "default".to_owned() } else { features.join("+") };
    let shared = workspace_target.join("ebpf-build").join(key);
    fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    fs::create_dir_all(private.parent().expect("has a parent"))?;
    std::os::unix::fs::symlink(&shared, &private)
        .with_context(|| format!("linking {} to {}", private.display(), shared.display()))
}

/// Keeps the host build's compiler flags out of the inner BPF build. aya-build spawns
/// `cargo build --target bpfel-unknown-none` with this process's environment, and cargo
/// hands a build script the host target's flags (`CARGO_ENCODED_RUSTFLAGS`) and whatever
/// the user exported (`RUSTFLAGS`, `CARGO_BUILD_RUSTFLAGS`, `RUSTDOCFLAGS`). cargo-fuzz
/// exports sanitizer-coverage flags (`-Cpasses=sancov-module`, `-Zsanitizer=...`,
/// `--cfg fuzzing`) that the BPF target cannot take: the inner build would fail, or
/// instrument the kernel programs. aya-build sets its own `CARGO_ENCODED_RUSTFLAGS` for
/// the inner cargo, so removing ours loses nothing the BPF object needs.
fn isolate_inner_cargo() {
    for key in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "RUSTDOCFLAGS", "CARGO_BUILD_TARGET"] {
        // A change of these must not rebuild the object: they never reach it.
        // SAFETY: a build script is single-threaded here; nothing reads the environment
        // concurrently.
        unsafe { env::remove_var(key) };
    }
    // Target-specific flags (`CARGO_TARGET_<TRIPLE>_RUSTFLAGS`) would apply to the inner
    // build too if they named the BPF target; cargo-fuzz sets none, but a user might.
    let target_flags: Vec<_> = env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("CARGO_TARGET_") && k.ends_with("_RUSTFLAGS"))
        .collect();
    for key in target_flags {
        // SAFETY: as above.
        unsafe { env::remove_var(&key) };
    }
}
