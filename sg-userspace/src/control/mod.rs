//! Control: deciding what goes into the data plane and when. Applying compiled rule
//! sets and retiring the ones they replaced ([`enforcer`]), and freeing expired
//! sessions ([`gc`]). Uses `policy` (what to enforce) and `dataplane` (the maps); the
//! agent and the CLI drive it.

pub mod enforcer;
pub mod error;
pub mod gc;
pub mod handles;

use std::time::Duration;

pub use enforcer::{ApplyReport, CompiledInterface, Enforcer, compile_targets, compile_targets_with};
pub use error::ControlError;

/// How long a program run can still be reading memory it looked up before a change: a
/// replaced rule set, or the session-hint array the kernel was switched away from, is
/// deleted or cleared only this long after the switch. Programs run to completion in
/// microseconds, so 5 ms is ample.
pub const GRACE_PERIOD: Duration = Duration::from_millis(5);
