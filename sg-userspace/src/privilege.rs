//! Privilege checks, so a missing capability is one clear line rather than an EPERM
//! from deep inside a load.

/// Not running as root: loading and attaching BPF programs needs CAP_BPF and
/// CAP_NET_ADMIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sgctl needs root (CAP_BPF and CAP_NET_ADMIN) to load and attach its programs")]
pub struct NotRoot;

/// Fails with a one-line message when we lack the privileges to load BPF programs.
pub fn check_privileges() -> Result<(), NotRoot> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(NotRoot);
    }
    Ok(())
}
