//! What can go wrong in the data plane.

use std::io;

use crate::privilege::NotRoot;

/// An error of the data plane: loading, attaching, or a map operation.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    NotRoot(#[from] NotRoot),
    #[error("this sgctl was built with AYA_BUILD_SKIP=1 and carries no eBPF object")]
    NoObject,
    /// A verifier rejection, with the last lines of its log.
    #[error("the verifier rejected {program} ({io_error}): {tail}")]
    Rejected { program: String, io_error: io::Error, tail: String },
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(String),
    #[error("map {0} missing (already taken?)")]
    MissingMap(String),
    #[error("bad interface name {0:?}")]
    BadInterfaceName(String),
    #[error("no such interface: {0}")]
    NoSuchInterface(String),
    #[error(
        "{0} already has an XDP program attached; sgctl does not replace it \
         (remove it first, e.g. `ip link set dev {0} xdp off`, or `sgctl detach {0}` if it is ours)"
    )]
    Occupied(String),
    /// Something else the kernel refused or sgctl found wrong, in one line.
    #[error("{0}")]
    Refused(String),
    /// A kernel or system call failed while doing something: what, and why.
    #[error("{doing}")]
    Failed {
        doing: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Map(#[from] aya::maps::MapError),
    #[error(transparent)]
    Program(#[from] aya::programs::ProgramError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Result of the data plane.
pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// Adds what sgctl was doing to a failed call, like `anyhow::Context`.
pub trait Doing<T> {
    fn doing(self, what: impl Into<String>) -> Result<T>;
    fn doing_with<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Doing<T> for std::result::Result<T, E> {
    fn doing(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| DataplaneError::Failed { doing: what.into(), source: Box::new(e) })
    }

    fn doing_with<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| DataplaneError::Failed { doing: what().into(), source: Box::new(e) })
    }
}
