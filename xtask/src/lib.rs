//! What `cargo xtask` shares with the test suite: the VM harness.

pub mod vm;
