//! The data plane: everything that touches the kernel through aya. The embedded object
//! and loading it ([`object`]), map sizes ([`capacity`]), attaching to interfaces
//! ([`attach`]), typed map handles: the classification maps ([`rulesets`]), sessions
//! ([`sessions`]), counters ([`counters`]), the trace records ([`events`]), batched
//! writes ([`batch`]) with their fault injection ([`fault`]), and entering the connections already open at attach as sessions
//! ([`established`]). It says how to change the kernel's state, not when: that is
//! `control`'s. It uses `policy` for what it writes, nothing above.

pub mod attach;
pub mod batch;
pub mod capacity;
pub mod counters;
pub mod error;
pub mod established;
pub mod events;
pub mod fault;
pub mod links;
pub mod object;
pub mod pins;
pub mod placement;
pub mod rulesets;
pub mod sessions;

pub use capacity::Capacity;
pub use error::DataplaneError;
pub use object::{Dataplane, LoadOptions};

/// Where typed map handles come from: a freshly loaded object ([`Dataplane`]) or a
/// pinned generation ([`pins::Generation`]).
pub trait MapSource {
    /// Map `name` as it is.
    fn take_raw_map(&mut self, name: &str) -> error::Result<aya::maps::Map>;

    /// Map `name` as a typed handle.
    fn take_map<T>(&mut self, name: &str) -> error::Result<T>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        use error::Doing as _;
        T::try_from(self.take_raw_map(name)?).doing_with(|| format!("map {name}"))
    }
}
