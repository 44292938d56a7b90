//! sgctl: the userspace side of the security-group data plane.
//!
//! Layers, each using only those listed before it:
//! - leaf modules: [`clock`], [`paths`], [`privilege`];
//! - [`policy`]: the rule model, rule files, ordering, the reference evaluator and the
//!   compiler (pure: no aya, no tokio);
//! - [`dataplane`]: the kernel object, attaching, typed map handles;
//! - [`control`]: applying and retiring rule sets, session garbage collection;
//! - [`store`]: the fleet's etcd store (reads, pushes);
//! - [`agent`]: `sgctl run`'s lifecycle and signals.
//!
//! The command line (`src/cli/`) sits on top, in the binary.

pub mod clock;
pub mod paths;
pub mod privilege;

pub mod policy;

pub mod dataplane;

pub mod control;

pub mod store;

pub mod agent;
