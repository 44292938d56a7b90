//! This file exists so that `sg-userspace` can list `sg-ebpf` as a build-dependency;
//! the programs live in the binary target (`main.rs`).
#![no_std]
