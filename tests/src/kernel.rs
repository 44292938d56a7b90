//! Whether kernel tests can run here, and where the `sgctl` binary is.

use std::path::PathBuf;

/// True when this process may load BPF programs and create namespaces.
///
/// Outside CI, a non-root or non-Linux run skips kernel tests with a loud message. Under
/// `CI=true` a skip would hide a broken pipeline, so it panics instead.
pub fn kernel_tests_enabled(test: &str) -> bool {
    let linux = cfg!(target_os = "linux");
    // SAFETY: geteuid has no preconditions.
    let root = linux && unsafe { libc::geteuid() } == 0;
    if linux && root {
        return true;
    }
    let why = if linux { "not root" } else { "not Linux" };
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: kernel tests must run under CI, but this process is {why}");
    }
    eprintln!("\n*** SKIPPED {test}: kernel test needs root on Linux ({why}) ***\n");
    false
}

/// Path of the `sgctl` binary under test: `$SGCTL_BIN`, else the workspace's debug build.
pub fn sgctl_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SGCTL_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug/sgctl");
    assert!(
        path.exists(),
        "{} not found: run `cargo build -p sg-userspace` first (cargo xtask test does)",
        path.display()
    );
    path
}

/// Path of a second `sgctl` build whose kernel object differs (the `upgrade-variant`
/// feature of `sg-ebpf`), for the upgrade test: `$SGCTL_VARIANT_BIN`, else where
/// `cargo xtask test` builds it. `None` (with a loud message) when absent outside CI.
pub fn variant_bin(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("SGCTL_VARIANT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/upgrade-variant/debug/sgctl"));
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {} missing under CI (cargo xtask test builds it)", path.display());
    }
    eprintln!(
        "\n*** SKIPPED {test}: no variant build at {} (SGCTL_EBPF_FEATURES=upgrade-variant cargo build -p \
         sg-userspace --target-dir target/upgrade-variant) ***\n",
        path.display()
    );
    None
}
