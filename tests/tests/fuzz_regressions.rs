//! Every committed fuzz input through its target's checks (`sg_tests::fuzzing`), on the
//! stable toolchain: the seed corpora (`tests/fuzz/corpus/<target>/`) and every input a
//! fuzzer found a bug with (`tests/fuzz/regressions/<target>/`), so that a fixed bug stays
//! fixed without cargo-fuzz. The kernel targets need root (mandatory under CI=true).

use std::path::{Path, PathBuf};

use sg_tests::{
    fuzzing::{KERNEL_TARGETS, TARGETS},
    kernel::kernel_tests_enabled,
};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `tests/fuzz/{corpus,regressions}/<target>/`, sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else { continue };
        files.extend(entries.map(|e| e.expect("directory entry").path()).filter(|p| p.is_file()));
    }
    files.sort();
    files
}

/// Runs every input of `target`; a panic names the file.
fn run_target(target: &str) {
    let (_, check) = TARGETS.iter().find(|(name, _)| *name == target).expect("a known target");
    let files = inputs(target);
    assert!(!files.is_empty(), "{target}: no committed inputs under {}", fuzz_dir().display());
    for file in &files {
        let data = std::fs::read(file).expect("read input");
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "{target}: {} fails its check (see the panic above)", file.display());
    }
    eprintln!("{target}: {} inputs passed", files.len());
}

#[test]
fn every_target_has_a_directory_and_no_stray_ones_exist() {
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind)) else { continue };
        for entry in entries {
            let entry = entry.expect("directory entry");
            if !entry.path().is_dir() {
                continue;
            }
            let name = entry.file_name().into_string().expect("utf-8 name");
            assert!(TARGETS.iter().any(|(t, _)| *t == name), "tests/fuzz/{kind}/{name}: no such fuzz target");
        }
    }
    for (target, _) in TARGETS {
        assert!(fuzz_dir().join("fuzz_targets").join(format!("{target}.rs")).is_file(), "{target}: no wrapper");
    }
}

#[test]
fn rule_file_inputs() {
    run_target("rule_file");
}

#[test]
fn import_aws_inputs() {
    run_target("import_aws");
}

#[test]
fn import_alibaba_inputs() {
    run_target("import_alibaba");
}

#[test]
fn kernel_parser_inputs() {
    assert!(KERNEL_TARGETS.contains(&"kernel_parser"));
    if kernel_tests_enabled("kernel_parser_inputs") {
        run_target("kernel_parser");
    }
}

#[test]
fn classifier_inputs() {
    assert!(KERNEL_TARGETS.contains(&"classifier"));
    if kernel_tests_enabled("classifier_inputs") {
        run_target("classifier");
    }
}
