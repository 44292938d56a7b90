//! Sessions (docs/rule-model.md#sessions) in the kernel: the LRU session table, the fragment table,
//! and the idle timeouts userspace sets from the rule file's `[sessions]` table.

use aya_ebpf::bindings::BPF_F_MMAPABLE;
use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use sg_common::{
    FragmentKey, FragmentVerdict, PacketMeta, Session, SessionKey, Timeouts,
    session::table,
    session_hints::{HINT_FLAGS, SessionHints},
    stats,
};

/// `BPF_NOEXIST`: insert only where the key has no entry.
const BPF_NOEXIST: u64 = 1;

/// The assured sessions (`sg_common::session::table`), sized by userspace from
/// `max_sessions` before loading; a full table evicts its least recently used entries,
/// whose flows are then classified again (never a hole).
#[map(name = "SG_SESSIONS")]
static SG_SESSIONS: LruHashMap<SessionKey, Session> = LruHashMap::with_max_entries(262_144, 0);

/// Sessions not assured yet, in an LRU of their own (a quarter of `max_sessions`): a
/// flood of SYNs or unanswered datagrams evicts only these.
#[map(name = "SG_OPENING")]
static SG_OPENING: LruHashMap<SessionKey, Session> = LruHashMap::with_max_entries(65_536, 0);

/// Which flows may have a session (`sg_common::session_hints`); mmapable, so userspace
/// can set flags with plain stores beside the kernel.
#[map(name = "SG_SESSION_HINTS")]
static SG_SESSION_HINTS: Array<SessionHints> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// False when the flow of hint `flag` certainly has no session.
#[inline(always)]
pub fn may_have_session(flag: u32) -> bool {
    let Some(hints) = SG_SESSION_HINTS.get(0) else { return true };
    let i = (flag % HINT_FLAGS) as usize;
    let flags = if hints.active & 1 == 0 { &hints.flags[0] } else { &hints.flags[1] };
    flags[i] != 0
}

/// Notes that the flow of hint `flag` has a session, in both arrays (before the session
/// is inserted, so no reader can see the session without its flag).
#[inline(always)]
fn note_session(flag: u32) {
    let Some(hints) = SG_SESSION_HINTS.get_ptr_mut(0) else { return };
    let i = (flag % HINT_FLAGS) as usize;
    // SAFETY: a map value pointer, valid for this program run. Every writer stores the
    // same value, so concurrent stores cannot undo one another.
    unsafe {
        (*hints).flags[0][i] = 1;
        (*hints).flags[1][i] = 1;
    }
}

/// Fragment verdicts kept. The `upgrade-variant` feature changes only this, so the
/// upgrade test has a second build whose object differs.
const FRAGMENT_ENTRIES: u32 = if cfg!(feature = "upgrade-variant") { 16_383 } else { 16_384 };

#[map(name = "SG_FRAGMENTS")]
static SG_FRAGMENTS: LruHashMap<FragmentKey, FragmentVerdict> = LruHashMap::with_max_entries(FRAGMENT_ENTRIES, 0);

/// Per-CPU room for the session step's larger temporaries: BPF gives a call chain only
/// 512 bytes of stack. Programs do not nest on one CPU, so one slot per CPU suffices.
#[repr(C)]
pub struct Scratch {
    /// The packet being decided.
    pub meta: PacketMeta,
    /// Where it is counted (kept here, not on the stack: the deepest call chain is
    /// within a few bytes of BPF's 512).
    pub at: crate::stats::Counted,
    pub work: Work,
}

/// The session steps' temporaries.
#[repr(C)]
pub struct Work {
    pub key: SessionKey,
    pub quoted_key: SessionKey,
    pub quoted: PacketMeta,
    pub opening: PacketMeta,
    pub cache: CacheWork,
}

/// The flow cache's per-CPU state beside the cache itself.
#[repr(C)]
pub struct CacheWork {
    /// Room for the key of a flow whose entry is replaced.
    pub spare_key: SessionKey,
    pub _pad: u32,
    /// Which slots ever held an entry on this CPU (`flow_cache::slot_used`).
    pub used: [u64; crate::flow_cache::USED_WORDS],
}

#[map(name = "SG_SCRATCH")]
static SG_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch space.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU, and no other program runs on this CPU until this one returns.
    SG_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[map(name = "SG_TIMEOUTS")]
static SG_TIMEOUTS: Array<Timeouts> = Array::with_max_entries(1, 0);

/// CLOCK_MONOTONIC_COARSE: tick resolution (a few ms) is plenty for idle timeouts of
/// seconds, and it costs a memory read instead of a clock-source read, which in a VM can
/// be tens of nanoseconds on every packet (`crate::clock`: CLOCK_MONOTONIC before 5.11).
#[inline(always)]
pub fn now() -> u64 {
    crate::clock::now()
}

/// The configured timeouts (userspace writes them with every rule set).
#[inline(always)]
pub fn timeouts() -> Option<&'static Timeouts> {
    SG_TIMEOUTS.get(0)
}

/// The live entry of `key` in either table (the assured one first: that is where
/// established flows are), to update in place.
#[inline(always)]
pub fn lookup(key: &SessionKey) -> Option<*mut Session> {
    SG_SESSIONS.get_ptr_mut(key).or_else(|| SG_OPENING.get_ptr_mut(key))
}

/// Inserts a new session into the opening table; `hint` is its flow's hint bit. Only
/// where the key has no entry (a CPU racing this one may have just opened the flow), so
/// every insert the ledger counts adds an entry. Whether it was inserted (a failed insert
/// only means the flow's next packet is classified again).
#[inline(always)]
pub fn insert(key: &SessionKey, session: &Session, hint: u32) -> bool {
    note_session(hint);
    let inserted = SG_OPENING.insert(key, session, BPF_NOEXIST).is_ok();
    if inserted {
        crate::stats::ledger(table::OPENING, stats::LEDGER_INSERTED);
    }
    inserted
}

/// Deletes the session of `key` from whichever table holds it.
#[inline(always)]
pub fn remove(key: &SessionKey) {
    if SG_SESSIONS.remove(key).is_ok() {
        crate::stats::ledger(table::ASSURED, stats::LEDGER_REMOVED);
    }
    if SG_OPENING.remove(key).is_ok() {
        crate::stats::ledger(table::OPENING, stats::LEDGER_REMOVED);
    }
}

/// Moves the session `entry` of `key` to the assured table when the packet just passed
/// marked it ([`table::PROMOTE`]). The copy goes in first (a lookup meanwhile finds one
/// of the two), then the opening entry goes; `entry` points at freed memory after this,
/// so this is the last use of it.
#[inline(never)]
pub fn promote(key: &SessionKey, entry: *mut Session) {
    // SAFETY: a map value pointer, valid for this program run (until the delete below).
    let s = unsafe { &mut *entry };
    if s.assured != table::PROMOTE {
        return;
    }
    s.assured = table::ASSURED_VALUE;
    if SG_SESSIONS.insert(key, s, BPF_NOEXIST).is_ok() {
        crate::stats::ledger(table::ASSURED, stats::LEDGER_INSERTED);
    }
    if SG_OPENING.remove(key).is_ok() {
        crate::stats::ledger(table::OPENING, stats::LEDGER_REMOVED);
    }
}

#[inline(always)]
pub fn remember_fragment(key: &FragmentKey, verdict: &FragmentVerdict) {
    let _ = SG_FRAGMENTS.insert(key, verdict, 0);
}

#[inline(always)]
pub fn fragment_verdict(key: &FragmentKey) -> Option<FragmentVerdict> {
    // SAFETY: the value is copied out at once.
    SG_FRAGMENTS.get_ptr(key).map(|p| unsafe { *p })
}
