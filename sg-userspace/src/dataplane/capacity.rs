//! The sizes of the classification and session maps, fixed when the programs load.

use sg_common::{MAX_RULESETS, PeerV6Bound, PortBlock, RuleChunk, RuleInfo, RuleVector};

use crate::policy::compile::Compiled;

/// How full one map is: entries in use and entries it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fill {
    pub used: u64,
    pub capacity: u64,
}

/// Map sizes, fixed when the programs are loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Capacity {
    /// Assured session table entries (`max_sessions`); the opening table holds a
    /// quarter as many ([`Capacity::opening_sessions`]).
    pub sessions: u32,
    pub vectors: u32,
    /// Distinct vector chunks (`sg_common::RuleChunk`). State files written before
    /// vectors were chunked lack it; their programs differ, so their maps are replaced.
    #[serde(default = "default_chunks")]
    pub chunks: u32,
    /// IPv6 peer interval bounds (`sg_common::PeerV6Bound`); absent from older state
    /// files, as `chunks` is.
    #[serde(default = "default_peer_v6")]
    pub peer_v6: u32,
    pub rule_info: u32,
    pub addr_entries: u32,
    pub port_entries: u32,
    /// First-level port tables (`PORT_TABLES` per rule set).
    pub port_tables: u32,
    /// Second-level port blocks.
    pub port_blocks: u32,
}

fn default_chunks() -> u32 {
    Capacity::default().chunks
}

fn default_peer_v6() -> u32 {
    Capacity::default().peer_v6
}

impl Default for Capacity {
    /// Enough for a few interfaces with some thousand rules (about 2 MiB of vectors).
    fn default() -> Self {
        Self {
            sessions: 262_144,
            vectors: 4096,
            chunks: 16_384,
            peer_v6: 16_384,
            rule_info: 65_536,
            addr_entries: 65_536,
            port_entries: 4096,
            port_tables: sg_common::PORT_TABLES * MAX_RULESETS,
            port_blocks: 1024,
        }
    }
}

/// The entries a rule set of `n` gets in an array: a few more than it needs, so a later
/// rule set of the same interface and direction one or two entries larger still fits
/// those ranges, written over them (`control::enforcer`'s spares).
pub fn with_slack(n: usize) -> u32 {
    (n + n / 32 + 4) as u32
}

impl Capacity {
    /// The opening session table's entries (`sg_common::session::table::opening_entries`).
    pub fn opening_sessions(&self) -> u32 {
        sg_common::session::table::opening_entries(self.sessions)
    }

    /// Room for twice what `compiled` needs, with each set's slack ([`with_slack`]): a
    /// new rule set is written beside the live one. Never less than the default.
    pub fn for_rule_sets<'a>(compiled: impl IntoIterator<Item = &'a Compiled>) -> Self {
        let mut need = Self {
            sessions: 0,
            vectors: 0,
            chunks: 0,
            peer_v6: 0,
            rule_info: 0,
            addr_entries: 0,
            port_entries: 0,
            port_tables: 0,
            port_blocks: 0,
        };
        for c in compiled {
            need.vectors += with_slack(c.vectors.len());
            need.chunks += with_slack(c.chunks.len());
            need.peer_v6 += with_slack(c.peer_v6.len());
            need.rule_info += with_slack(c.rules.len());
            need.addr_entries += c.addr_entries.len() as u32;
            need.port_entries += c.port_entries.len() as u32;
            need.port_blocks += with_slack(c.port_blocks.len());
            need.port_tables += with_slack(c.port_tables.len());
        }
        let d = Self::default();
        Self {
            sessions: d.sessions,
            vectors: (need.vectors * 2 + 64).max(d.vectors),
            chunks: (need.chunks * 2 + 64).max(d.chunks),
            peer_v6: (need.peer_v6 * 2 + 64).max(d.peer_v6),
            rule_info: (need.rule_info * 2 + 64).max(d.rule_info),
            addr_entries: (need.addr_entries * 2 + 64).max(d.addr_entries),
            port_entries: (need.port_entries * 2 + 64).max(d.port_entries),
            port_tables: (need.port_tables * 2 + 64).max(d.port_tables),
            port_blocks: (need.port_blocks * 2 + 64).max(d.port_blocks),
        }
    }

    /// Whether maps of this size hold everything maps of size `need` hold.
    pub fn holds(&self, need: &Capacity) -> bool {
        self.sessions >= need.sessions
            && self.vectors >= need.vectors
            && self.chunks >= need.chunks
            && self.peer_v6 >= need.peer_v6
            && self.rule_info >= need.rule_info
            && self.addr_entries >= need.addr_entries
            && self.port_entries >= need.port_entries
            && self.port_tables >= need.port_tables
            && self.port_blocks >= need.port_blocks
    }

    /// Bytes of map memory the vectors, rule-info and port-table arrays take (the tries
    /// grow with their entries, about 100 bytes each).
    pub fn array_bytes(&self) -> u64 {
        u64::from(self.vectors) * size_of::<RuleVector>() as u64
            + u64::from(self.chunks) * size_of::<RuleChunk>() as u64
            + u64::from(self.peer_v6) * size_of::<PeerV6Bound>() as u64
            + u64::from(self.rule_info) * size_of::<RuleInfo>() as u64
            + u64::from(self.port_tables + self.port_blocks) * size_of::<PortBlock>() as u64
    }
}
