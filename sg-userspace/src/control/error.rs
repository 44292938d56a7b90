//! What can go wrong applying rules.

use sg_common::{MAX_IFINDEX, MAX_RULESETS};

use crate::{dataplane::DataplaneError, policy::compile::CompileError};

/// An apply, a clear or a collection that did not happen (an apply that fails changes
/// nothing the packets see).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("ifindex {0} is beyond the {MAX_IFINDEX} interfaces sgctl can enforce on")]
    IfindexTooLarge(u32),
    #[error("no free interface-configuration version")]
    NoFreeVersion,
    #[error("all {MAX_RULESETS} rule-set slots in use")]
    NoFreeSlot,
    /// Each enforced interface has a block of counters; there are so many blocks.
    #[error("{count} interfaces to enforce on; one sgctl agent enforces on at most {limit} interfaces")]
    TooManyInterfaces { count: usize, limit: usize },
    /// The maps, sized when the programs loaded, cannot hold the new rule set beside the
    /// live one.
    #[error("no room for {count} more {what} in the maps sized at start; restart sgctl with the new rule file")]
    NoRoom { count: usize, what: &'static str },
}

/// Result of control.
pub type Result<T, E = ControlError> = std::result::Result<T, E>;
