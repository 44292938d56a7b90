//! `sg_tests::fuzzing::kernel_parser` under libFuzzer (the checks live there, shared with
//! `tests/tests/fuzz_regressions.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sg_tests::fuzzing::kernel_parser(data));
