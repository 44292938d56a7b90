//! The guide's advice as tools: `sgctl lint`, `sgctl diff`, and importing and exporting
//! provider security groups. Pure policy code over [`crate::policy::config`] and
//! [`crate::policy::eval`]: no kernel, no maps.

pub mod diff;
pub mod export;
pub mod import;
pub mod lint;
pub mod space;
#[cfg(test)]
mod testgen;
