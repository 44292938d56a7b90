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
    let cargo_metadata::Metadata { packages, .. } =
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
