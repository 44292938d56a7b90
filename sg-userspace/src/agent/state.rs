//! The agent's record of what it left in the kernel, so that the next agent (after a
//! crash, a restart or an upgrade) can take it over: which pinned generation is live,
//! what object it runs, which rule file it enforces, where each rule set lives in the
//! maps and how each interface is held. Written atomically (a new file renamed over the
//! old) after every change; the pins are the truth, this file says how to read them.

use std::{
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    control::enforcer::EnforcerState,
    dataplane::{Capacity, links::HeldInterface, object::KernelFeatures},
};

/// The shape of this file; another shape is not read (its pins are replaced).
pub const STATE_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub format: u32,
    /// The pin directory (the same for every agent of the namespace unless `--pin-dir`).
    pub pin_dir: PathBuf,
    /// The live generation (`gen-<N>` under the pin directory).
    pub generation: u32,
    /// `dataplane::object::identity` of its object.
    pub object: String,
    pub features: KernelFeatures,
    pub capacity: Capacity,
    /// Key and value sizes of its session map, to tell whether sessions carry over.
    pub session_layout: (u32, u32),
    /// The rule file in force: where it came from and its text.
    pub config_path: String,
    pub config_text: String,
    pub enforcer: EnforcerState,
    pub interfaces: Vec<HeldInterface>,
}

impl AgentState {
    /// Reads the state at `path`; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> io::Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let state: Self = serde_json::from_str(&text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?;
        if state.format != STATE_FORMAT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: state format {} (this sgctl reads {STATE_FORMAT})", path.display(), state.format),
            ));
        }
        Ok(Some(state))
    }

    /// Writes the state to `path` atomically.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.new");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(self).map_err(io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}
