//! The guide's advice as tools: `sgctl lint`, `sgctl diff`, and importing and exporting
//! provider security groups. Pure policy code over [`crate::policy::config`] and
//! [`crate::policy::eval`]: no kernel, no maps.

pub mod diff;
pub mod export;
pub mod import;
pub mod lint;
pub mod space;
/// Random rule files and packets: the unit tests' generators, public for the fuzz targets
/// of `sg-tests` (`tests/src/fuzzing.rs`), which drive them from libFuzzer's input.
#[doc(hidden)]
pub mod testgen;
