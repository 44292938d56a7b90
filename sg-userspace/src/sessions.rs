//! The session table seen from userspace: listing, flushing, and the garbage collector
//! that frees expired entries (the kernel already ignores them on lookup).

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, IterableMap as _, Map, MapData};
use serde::Serialize;
use sg_common::{Session, SessionKey, Timeouts, session::state, stats};

use crate::{config::SessionSettings, eval::stateful::addr_from_bytes};

/// CLOCK_MONOTONIC_COARSE in ns: the clock of the kernel's `bpf_ktime_get_coarse_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The rule file's `[sessions]` timeouts (seconds) in the kernel's form (ns).
pub fn timeouts(settings: &SessionSettings) -> Timeouts {
    let ns = |s: u32| u64::from(s) * 1_000_000_000;
    Timeouts {
        tcp_established: ns(settings.tcp_established),
        tcp_opening: ns(settings.tcp_opening),
        tcp_closing: ns(settings.tcp_closing),
        tcp_rst: ns(settings.tcp_rst),
        udp_unreplied: ns(settings.udp_unreplied),
        udp_replied: ns(settings.udp_replied),
        icmp: ns(settings.icmp),
        other: ns(settings.other),
    }
}

/// Bytes one session costs in the kernel, preallocated for every entry of the table:
/// key (44) and value (40) plus the LRU hash element's header and rounding. Measured:
/// `bpftool map show name SG_SESSIONS` reports 39,846,784 bytes of memlock for 262,144
/// entries on kernel 6.18.
pub const BYTES_PER_SESSION: usize = 152;

pub struct SessionTable {
    map: HashMap<MapData, SessionKey, Session>,
}

/// One session, for people and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub ifindex: u32,
    pub protocol: u8,
    /// The end that opened the flow.
    pub opener: String,
    pub responder: String,
    pub state: &'static str,
    pub age_s: f64,
    pub idle_s: f64,
    /// The direction of the opening packet.
    pub opened: &'static str,
    pub rule_id: u32,
    pub packets: u64,
}

fn end(family: u8, (bytes, port): ([u8; 16], u16)) -> String {
    SocketAddr::new(addr_from_bytes(family, &bytes), port).to_string()
}

impl SessionView {
    pub fn of(key: &SessionKey, s: &Session, now: u64) -> Self {
        let (opener, responder) = key.ends(s.opener_is_low != 0);
        Self {
            ifindex: key.ifindex,
            protocol: key.protocol,
            opener: end(key.family, opener),
            responder: end(key.family, responder),
            state: state::NAMES.get(usize::from(s.state)).copied().unwrap_or("?"),
            age_s: now.saturating_sub(s.created_ns) as f64 / 1e9,
            idle_s: now.saturating_sub(s.last_seen_ns) as f64 / 1e9,
            opened: if u32::from(s.opened_on) == stats::HOOK_INGRESS { "ingress" } else { "egress" },
            rule_id: s.rule_id,
            packets: s.packets,
        }
    }
}

impl SessionTable {
    pub fn from_map(map: Map) -> Result<Self> {
        Ok(Self { map: HashMap::try_from(map).context("the session map")? })
    }

    /// Opens the session table of a running sgctl by map id.
    pub fn open(id: u32) -> Result<Self> {
        let data = MapData::from_id(id).with_context(|| format!("opening session map {id}"))?;
        Self::from_map(Map::LruHashMap(data))
    }

    pub fn id(&self) -> Result<u32> {
        Ok(self.map.map().info()?.id())
    }

    pub fn entries(&self) -> Result<Vec<(SessionKey, Session)>> {
        self.map.iter().map(|e| e.map_err(anyhow::Error::from)).collect()
    }

    /// Writes a session (benchmarks and tests set up established flows this way).
    pub fn insert(&mut self, key: &SessionKey, session: &Session) -> Result<()> {
        self.map.insert(key, session, 0).context("inserting a session")
    }

    /// Deletes every session; returns how many.
    pub fn flush(&mut self) -> Result<usize> {
        let keys: Vec<SessionKey> = self.map.keys().collect::<Result<_, _>>()?;
        for key in &keys {
            let _ = self.map.remove(key);
        }
        Ok(keys.len())
    }

    /// Deletes sessions idle past their timeout. Each candidate is read again right
    /// before it is deleted, so a session a packet refreshed meanwhile stays.
    pub fn collect_garbage(&mut self, timeouts: &Timeouts) -> Result<usize> {
        let candidates: Vec<SessionKey> = self
            .entries()?
            .into_iter()
            .filter(|(_, s)| sg_common::session::expired(s.state, s.last_seen_ns, monotonic_ns(), timeouts))
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0;
        for key in candidates {
            let still_expired = self
                .map
                .get(&key, 0)
                .is_ok_and(|s| sg_common::session::expired(s.state, s.last_seen_ns, monotonic_ns(), timeouts));
            if still_expired && self.map.remove(&key).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Where a running `sgctl run` records its session map id for `sgctl sessions`.
pub fn map_id_file() -> std::path::PathBuf {
    crate::attach::state_dir().join("sessions.map-id")
}
