//! The session table seen from userspace: listing, inserting, flushing and deleting
//! entries, and the session hints in front of it. When expired entries are freed (the
//! kernel already ignores them on lookup) is decided in `control::gc`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, IterableMap as _, Map, MapData, PerCpuArray, PerCpuValues};
use serde::Serialize;
use sg_common::{
    FlowCacheSlot, FragmentKey, FragmentVerdict, Session, SessionKey, Timeouts,
    flow_cache::slot_of_key,
    ip_proto, map,
    session::{anchor, assures, echo_identifier, later_ack, state, table},
    session_hints::{HINT_FLAGS, SessionHints, key_bit},
    stats,
};

use super::{
    MapSource,
    capacity::Fill,
    error::{DataplaneError, Doing as _, Result},
};
use crate::{
    clock::ns_per_jiffy,
    policy::{addr::addr_from_bytes, config::SessionSettings},
};

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

/// How full the fragment table (`SG_FRAGMENTS`) of `dp` is; stale verdicts count until
/// the LRU reuses their places.
pub fn fragment_fill(dp: &mut impl MapSource) -> Result<Fill> {
    let map: HashMap<MapData, FragmentKey, FragmentVerdict> =
        HashMap::try_from(dp.take_raw_map(map::FRAGMENTS)?).doing("the fragment map")?;
    let used = map.keys().filter(Result::is_ok).count() as u64;
    let capacity = u64::from(map.map().info().doing("the fragment map's size")?.max_entries());
    Ok(Fill { used, capacity })
}

/// Bytes one session costs in the kernel, preallocated for every entry of the table:
/// key (44) and value (48) plus the LRU hash element's header and rounding. Measured:
/// `bpftool map show name SG_SESSIONS` reports 41,944,000 bytes of memlock for 262,144
/// entries on kernel 6.18 (`session_sequences::a_session_costs_the_documented_bytes`).
pub const BYTES_PER_SESSION: usize = 160;

/// The session tables (assured and opening, `sg_common::session::table`) and the
/// per-CPU flow cache in front of them: what a session looks like is its table entry
/// plus the hits the cache has not folded into it yet.
pub struct SessionTable {
    /// `SG_SESSIONS`: the assured sessions.
    map: HashMap<MapData, SessionKey, Session>,
    /// `SG_OPENING`: those not assured yet.
    opening: HashMap<MapData, SessionKey, Session>,
    cache: PerCpuArray<MapData, FlowCacheSlot>,
    epoch: Array<MapData, u32>,
    ns_per_jiffy: u64,
    /// The session hints, when this process owns the data plane (`sgctl run`, tests).
    hints: Option<HintMap>,
    /// A flush left hints of deleted sessions: the next collection rebuilds them.
    hints_stale: bool,
    /// Entries this process put into and took out of each table (`[table][what]`, see
    /// `sg_common::stats::LEDGER_USER`), not yet added to the ledger in `SG_STATS`.
    ledger: [[u64; 2]; 2],
    /// `SG_STATS`, when this table was opened by id (`sgctl sessions --flush`): the
    /// ledger goes straight in. The agent's enforcer holds it otherwise.
    stats: Option<PerCpuArray<MapData, u64>>,
}

/// Sessions the LRU evicted from each table (what was put in, less what was taken out,
/// less what is there): exact when no packet moves meanwhile, off by the packets in
/// flight otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Evictions {
    pub assured: u64,
    pub opening: u64,
}

/// Which table a session written by userspace belongs in: assured when its value or its
/// state says so (a replied flow's state does, but for echo and other protocols).
fn table_for(session: &Session) -> u32 {
    if session.assured == table::ASSURED_VALUE || assures(session.state, false) {
        table::ASSURED
    } else {
        table::OPENING
    }
}

/// The session-hint map (`sg_common::session_hints`) mapped into this process, so flags
/// are set with plain byte stores, never a read-modify-write of the kernel's bytes.
struct HintMap {
    _map: MapData,
    hints: *mut SessionHints,
    len: usize,
    /// When the kernel was last switched to the other array: the array it left may be
    /// cleared only once no program can still be reading it.
    last_switch: Instant,
}

// SAFETY: the mapping is plain shared memory, valid until `drop` unmaps it; `&mut self`
// serialises this process's writers.
unsafe impl Send for HintMap {}

impl HintMap {
    fn new(map: MapData) -> Result<Self> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let page = 4096;
        let len = size_of::<SessionHints>().div_ceil(page) * page;
        // SAFETY: maps the map's value area (the map was created BPF_F_MMAPABLE);
        // checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).doing("mapping the session hints");
        }
        Ok(Self { _map: map, hints: ptr.cast(), len, last_switch: Instant::now() })
    }

    fn set(&mut self, array: usize, flag: u32) {
        // SAFETY: in bounds (`array` < 2, `flag` < HINT_FLAGS); a volatile byte store, so
        // it is neither merged nor reordered away.
        unsafe { std::ptr::write_volatile(&raw mut (*self.hints).flags[array][flag as usize], 1) };
    }

    /// Notes a session's flow in both arrays.
    fn note(&mut self, key: &SessionKey) {
        let flag = key_bit(key);
        self.set(0, flag);
        self.set(1, flag);
    }

    /// Clears the array the kernel does not read, once `grace` has passed since the
    /// kernel left it; returns it.
    fn clear_inactive(&mut self, grace: Duration) -> usize {
        std::thread::sleep(grace.saturating_sub(self.last_switch.elapsed()));
        // SAFETY: in bounds; volatile, as the kernel reads the memory.
        let active = unsafe { std::ptr::read_volatile(&raw const (*self.hints).active) } & 1;
        let inactive = 1 - active as usize;
        for flag in 0..HINT_FLAGS as usize {
            // SAFETY: in bounds.
            unsafe { std::ptr::write_volatile(&raw mut (*self.hints).flags[inactive][flag], 0) };
        }
        inactive
    }

    /// Makes `array` the one the kernel reads.
    fn switch_to(&mut self, array: usize) {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: in bounds.
        unsafe { std::ptr::write_volatile(&raw mut (*self.hints).active, array as u64) };
        self.last_switch = Instant::now();
    }
}

impl Drop for HintMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.hints.cast(), self.len) };
    }
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
    /// The admitting rule's handle (`control::handles`; `sgctl stats --json` names it).
    pub rule_handle: u32,
    pub packets: u64,
    /// TCP: the acknowledgement number of the instance's latest segment, near which an
    /// arriving RST or FIN must fall to end the session (none before the instance has
    /// acknowledged anything).
    pub instance_ack: Option<u32>,
}

fn end(family: u8, (bytes, port): ([u8; 16], u16)) -> String {
    SocketAddr::new(addr_from_bytes(family, &bytes), port).to_string()
}

impl SessionView {
    pub fn of(key: &SessionKey, s: &Session, now: u64) -> Self {
        let (mut opener, mut responder) = key.ends(s.opener_is_low != 0);
        if matches!(key.protocol, ip_proto::ICMP | ip_proto::ICMPV6) {
            // Both ends show the echo identifier (the key holds its complement at the
            // responder's end, see `sg_common::session::flow_ports`).
            let id = echo_identifier(key, s.opener_is_low != 0);
            (opener.1, responder.1) = (id, id);
        }
        Self {
            ifindex: key.ifindex,
            protocol: key.protocol,
            opener: end(key.family, opener),
            responder: end(key.family, responder),
            state: state::NAMES.get(usize::from(s.state)).copied().unwrap_or("?"),
            age_s: now.saturating_sub(s.created_ns) as f64 / 1e9,
            idle_s: now.saturating_sub(s.last_seen_ns) as f64 / 1e9,
            opened: if u32::from(s.opened_on) == stats::HOOK_INGRESS { "ingress" } else { "egress" },
            rule_handle: s.rule_id,
            packets: s.packets,
            instance_ack: (key.protocol == ip_proto::TCP && s.anchors & anchor::INSTANCE_ACK != 0)
                .then_some(s.instance_ack),
        }
    }
}

impl SessionTable {
    /// Takes the session maps out of `dp`, with the hints: this process owns the data plane.
    pub fn take(dp: &mut impl MapSource) -> Result<Self> {
        Self::from_maps(
            [dp.take_raw_map(map::SESSIONS)?, dp.take_raw_map(map::OPENING_SESSIONS)?],
            dp.take_raw_map(map::FLOW_CACHE)?,
            dp.take_raw_map(map::CACHE_EPOCH)?,
            Some(dp.take_raw_map(map::SESSION_HINTS)?),
        )
    }

    /// The table from the loaded maps (`SG_SESSIONS` and `SG_OPENING`, `SG_FLOW_CACHE`,
    /// `SG_CACHE_EPOCH`, and `SG_SESSION_HINTS` when this process owns the data plane).
    pub fn from_maps([sessions, opening]: [Map; 2], cache: Map, epoch: Map, hints: Option<Map>) -> Result<Self> {
        let hints = match hints {
            Some(Map::Array(data)) => Some(HintMap::new(data)?),
            Some(_) => return Err(DataplaneError::Refused(format!("{} is not an array map", map::SESSION_HINTS))),
            None => None,
        };
        Ok(Self {
            map: HashMap::try_from(sessions).doing("the session map")?,
            opening: HashMap::try_from(opening).doing("the opening session map")?,
            cache: PerCpuArray::try_from(cache).doing("the flow cache map")?,
            epoch: Array::try_from(epoch).doing("the cache epoch map")?,
            ns_per_jiffy: ns_per_jiffy(),
            hints,
            hints_stale: false,
            ledger: [[0; 2]; 2],
            stats: None,
        })
    }

    /// Opens the session table of a running sgctl from the map ids it recorded
    /// ([`SessionTable::ids`]).
    pub fn open(ids: &str) -> Result<Self> {
        let ids: Vec<u32> = ids.split_whitespace().map(str::parse).collect::<Result<_, _>>().doing("map ids")?;
        let [sessions, opening, cache, epoch, stats_id] = ids[..] else {
            return Err(DataplaneError::Refused(format!(
                "expected five map ids, found {} (an agent of another version?)",
                ids.len()
            )));
        };
        let open = |id: u32, what: &str| MapData::from_id(id).doing_with(|| format!("opening {what} map {id}"));
        let mut table = Self::from_maps(
            [Map::LruHashMap(open(sessions, map::SESSIONS)?), Map::LruHashMap(open(opening, map::OPENING_SESSIONS)?)],
            Map::PerCpuArray(open(cache, map::FLOW_CACHE)?),
            Map::Array(open(epoch, map::CACHE_EPOCH)?),
            None,
        )?;
        table.stats = Some(PerCpuArray::try_from(Map::PerCpuArray(open(stats_id, map::STATS)?)).doing("the counters")?);
        Ok(table)
    }

    /// The ids of the maps, for `sgctl sessions` to open them; `stats` is `SG_STATS`'s.
    pub fn ids(&self, stats: u32) -> Result<String> {
        Ok(format!(
            "{} {} {} {} {stats}",
            self.map.map().info()?.id(),
            self.opening.map().info()?.id(),
            self.cache.map().info()?.id(),
            self.epoch.map().info()?.id()
        ))
    }

    /// Both tables, with their `sg_common::session::table` numbers, assured first.
    fn tables(&self) -> [(u32, &HashMap<MapData, SessionKey, Session>); 2] {
        [(table::ASSURED, &self.map), (table::OPENING, &self.opening)]
    }

    fn table_mut(&mut self, which: u32) -> &mut HashMap<MapData, SessionKey, Session> {
        if which == table::ASSURED { &mut self.map } else { &mut self.opening }
    }

    /// Counts an entry put into or taken out of `which` by this process; straight into
    /// `SG_STATS` when this table holds it, else kept for [`SessionTable::take_ledger`].
    fn count(&mut self, which: u32, what: u32) {
        self.ledger[which as usize % 2][what as usize % 2] += 1;
        if self.stats.is_some() {
            let _ = self.flush_ledger_to_stats();
        }
    }

    fn flush_ledger_to_stats(&mut self) -> Result<()> {
        let ledger = self.take_ledger();
        let Some(counters) = &mut self.stats else { return Ok(()) };
        for (slot, n) in ledger {
            super::counters::add(counters, slot, n)?;
        }
        Ok(())
    }

    /// What this process counted since the last call, as (`SG_STATS` slot, count).
    pub fn take_ledger(&mut self) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        for which in [table::ASSURED, table::OPENING] {
            for what in [stats::LEDGER_INSERTED, stats::LEDGER_REMOVED] {
                let n = std::mem::take(&mut self.ledger[which as usize][what as usize]);
                if n != 0 {
                    out.push((stats::ledger_slot(stats::LEDGER_USER, which, what), n));
                }
            }
        }
        out
    }

    /// Evictions from each table, from the ledger in `counters` (`SG_STATS`, summed over
    /// CPUs, with [`SessionTable::take_ledger`] already added) and the entries the tables
    /// hold, `live` (assured, opening: read after the counters, so a session the
    /// programs open meanwhile is not taken for an eviction).
    pub fn evictions(counters: &[u64], live: [u64; 2]) -> Evictions {
        let at = |slot: u32| counters.get(slot as usize).copied().unwrap_or(0);
        let mut evicted = [0u64; 2];
        for which in [table::ASSURED, table::OPENING] {
            let put = at(stats::ledger_slot(stats::LEDGER_KERNEL, which, stats::LEDGER_INSERTED))
                + at(stats::ledger_slot(stats::LEDGER_USER, which, stats::LEDGER_INSERTED));
            let taken = at(stats::ledger_slot(stats::LEDGER_KERNEL, which, stats::LEDGER_REMOVED))
                + at(stats::ledger_slot(stats::LEDGER_USER, which, stats::LEDGER_REMOVED));
            evicted[which as usize] = put.saturating_sub(taken).saturating_sub(live[which as usize]);
        }
        Evictions { assured: evicted[table::ASSURED as usize], opening: evicted[table::OPENING as usize] }
    }

    fn current_epoch(&self) -> Result<u32> {
        self.epoch.get(&0, 0).doing("reading the cache epoch")
    }

    /// Every session as it stands: the table's entry with the flow cache's pending hits
    /// (packets and the latest one) added.
    /// `assured` says which table holds the entry (a key in both, for the moment of its
    /// move, is listed once, as assured).
    pub fn entries(&self) -> Result<Vec<(SessionKey, Session)>> {
        let mut sessions: Vec<(SessionKey, Session)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (which, map) in self.tables() {
            for entry in map.iter() {
                let (key, mut session) = entry.doing("reading the session table")?;
                if seen.insert(key) {
                    session.assured = if which == table::ASSURED { table::ASSURED_VALUE } else { table::OPENING_VALUE };
                    sessions.push((key, session));
                }
            }
        }
        let epoch = self.current_epoch()?;
        let mut slots: std::collections::HashMap<u32, PerCpuValues<FlowCacheSlot>> = Default::default();
        for (key, session) in &mut sessions {
            let index = slot_of_key(key);
            let slot = match slots.entry(index) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(self.cache.get(&index, 0).doing("reading the flow cache")?)
                }
            };
            add_pending(key, session, slot, epoch, self.ns_per_jiffy);
        }
        Ok(sessions)
    }

    /// Entries of both tables by the interface and hook that opened them (without the
    /// flow cache: only the counts are wanted).
    pub fn live_by_origin(&self) -> Result<std::collections::HashMap<(u32, u32), u64>> {
        let mut counts = std::collections::HashMap::new();
        for (_, map) in self.tables() {
            for entry in map.iter() {
                let Ok((key, session)) = entry else { continue };
                *counts.entry((key.ifindex, u32::from(session.opened_on))).or_default() += 1;
            }
        }
        Ok(counts)
    }

    /// Live entries (expired ones not yet collected included) of the assured table.
    pub fn fill(&self) -> Result<Fill> {
        Self::fill_of(&self.map)
    }

    /// The same for the opening table.
    pub fn opening_fill(&self) -> Result<Fill> {
        Self::fill_of(&self.opening)
    }

    fn fill_of(map: &HashMap<MapData, SessionKey, Session>) -> Result<Fill> {
        let used = map.keys().filter(Result::is_ok).count() as u64;
        let capacity = u64::from(map.map().info().doing("the session map's size")?.max_entries());
        Ok(Fill { used, capacity })
    }

    /// A session as its table holds it, without the flow cache's pending hits.
    pub fn stored(&self, key: &SessionKey) -> Option<Session> {
        self.map.get(key, 0).ok().or_else(|| self.opening.get(key, 0).ok())
    }

    /// One session as it stands (see [`SessionTable::entries`]).
    pub fn effective(&self, key: &SessionKey) -> Option<Session> {
        let mut session = self.stored(key)?;
        let slot = self.cache.get(&slot_of_key(key), 0).ok()?;
        add_pending(key, &mut session, &slot, self.current_epoch().ok()?, self.ns_per_jiffy);
        Some(session)
    }

    /// Writes a session into the table its state belongs in (benchmarks and tests set up
    /// established flows this way, the agent enters the connections open at attach),
    /// replacing one of the same key in either.
    pub fn insert(&mut self, key: &SessionKey, session: &Session) -> Result<()> {
        self.write(key, session, true)
    }

    /// The same for a session carried over from an older generation, whose ledger
    /// counted it already (it is carried over with the counters).
    pub fn carry(&mut self, key: &SessionKey, session: &Session) -> Result<()> {
        self.write(key, session, false)
    }

    fn write(&mut self, key: &SessionKey, session: &Session, counted: bool) -> Result<()> {
        // The hint first, as the kernel does: no packet may see the session without it.
        match &mut self.hints {
            Some(hints) => hints.note(key),
            None => {
                return Err(DataplaneError::Refused(
                    "inserting sessions needs the session hints (the process that loaded sgctl)".into(),
                ));
            }
        }
        let which = table_for(session);
        let other = if which == table::ASSURED { table::OPENING } else { table::ASSURED };
        let mut session = *session;
        session.assured = if which == table::ASSURED { table::ASSURED_VALUE } else { table::OPENING_VALUE };
        let new = self.table_mut(which).get(key, 0).is_err();
        self.table_mut(which).insert(key, session, 0).doing("inserting a session")?;
        let moved = self.table_mut(other).remove(key).is_ok();
        if counted {
            if new {
                self.count(which, stats::LEDGER_INSERTED);
            }
            if moved {
                self.count(other, stats::LEDGER_REMOVED);
            }
        }
        Ok(())
    }

    /// Whether the kernel would look `key` up (its hint flag is set in the array the
    /// kernel reads); `None` without the hint map.
    pub fn hinted(&self, key: &SessionKey) -> Option<bool> {
        let hints = self.hints.as_ref()?;
        // SAFETY: in bounds; volatile reads of memory the kernel writes.
        Some(unsafe {
            let active = std::ptr::read_volatile(&raw const (*hints.hints).active) & 1;
            std::ptr::read_volatile(&raw const (*hints.hints).flags[active as usize][key_bit(key) as usize]) != 0
        })
    }

    /// Drops the hints of deleted sessions: clears the array the kernel does not read,
    /// waits out (`grace`) programs that noted a session before the clear but had not
    /// inserted it yet, notes every session now in the table, and switches the kernel
    /// to it.
    pub fn rebuild_hints(&mut self, grace: Duration) -> Result<()> {
        self.hints_stale = false;
        let Some(hints) = &mut self.hints else { return Ok(()) };
        let array = hints.clear_inactive(grace);
        std::thread::sleep(grace);
        for map in [&self.map, &self.opening] {
            for key in map.keys() {
                let key = key.doing("listing sessions")?;
                hints.set(array, key_bit(&key));
            }
        }
        hints.switch_to(array);
        Ok(())
    }

    /// Deletes every session; returns how many. The cache epoch moves first, so no
    /// cached entry vouches for a deleted session.
    pub fn flush(&mut self) -> Result<usize> {
        let epoch = self.current_epoch()?;
        self.epoch.set(0, epoch.wrapping_add(1), 0).doing("bumping the cache epoch")?;
        let mut flushed = 0;
        for which in [table::ASSURED, table::OPENING] {
            let keys: Vec<SessionKey> = self.table_mut(which).keys().collect::<Result<_, _>>()?;
            for key in &keys {
                if self.table_mut(which).remove(key).is_ok() {
                    self.ledger[which as usize][stats::LEDGER_REMOVED as usize] += 1;
                    flushed += 1;
                }
            }
        }
        if self.stats.is_some() {
            self.flush_ledger_to_stats()?;
        }
        // The hints stay: stale ones cost a lookup, and the next collection sheds them.
        self.hints_stale = true;
        Ok(flushed)
    }

    /// Deletes the session of `key` from either table; false when there was none.
    pub fn remove(&mut self, key: &SessionKey) -> bool {
        let mut removed = false;
        for which in [table::ASSURED, table::OPENING] {
            if self.table_mut(which).remove(key).is_ok() {
                self.count(which, stats::LEDGER_REMOVED);
                removed = true;
            }
        }
        removed
    }

    /// Whether a flush left hints of deleted sessions (the next collection rebuilds them).
    pub fn hints_stale(&self) -> bool {
        self.hints_stale
    }
}

/// Adds the hits every CPU's cache slot holds for `session` and has not folded yet.
fn add_pending(
    key: &SessionKey,
    session: &mut Session,
    slot: &PerCpuValues<FlowCacheSlot>,
    epoch: u32,
    ns_per_jiffy: u64,
) {
    // The instance's latest acknowledgement: the one furthest ahead of the pending egress
    // hits', on any CPU (their hit times are jiffies, too coarse to order two segments).
    for cpu in slot.iter() {
        for entry in &cpu.entries {
            if let Some((packets, last_seen)) = entry.pending_for(key, session, epoch, ns_per_jiffy) {
                session.packets += packets;
                session.last_seen_ns = session.last_seen_ns.max(last_seen);
                if let Some(ack) = entry.pending_ack()
                    && session.anchors & anchor::INSTANCE_ACK != 0
                {
                    session.instance_ack = later_ack(session.instance_ack, ack);
                }
            }
        }
    }
}
