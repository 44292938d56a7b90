//! The flow cache: the fast path for packets of established sessions.
//!
//! A packet of a live session otherwise costs a normalised 44-byte key and an LRU-hash
//! lookup. The cache is a per-CPU, direct-mapped array: the packet's own tuple picks a
//! slot (both directions of a flow share it, one entry each), and a hit is a handful of
//! integer compares. The session table stays the authority; an entry is only trusted
//!
//! - for the session incarnation it was made from (`created_ns`),
//! - under the interface configuration it was made under (every apply publishes a new
//!   configuration id, so a rule change re-checks the session on the slow path at once),
//! - in the cache epoch it was made in (every flush of the session table bumps it),
//! - for [`validity`] after the slow-path packet that made it: half the shortest idle
//!   timeout, at most a second. A hit therefore never passes a packet the session table
//!   would have expired, whatever state the flow reached meanwhile on another CPU.
//!
//! Hits keep time in jiffies (`bpf_jiffies64`, a plain memory read) rather than
//! `bpf_ktime_get_coarse_ns` (measured at ~20 ns a call here, a fifth of the fast
//! path). An entry records the coarse-ns and jiffies time of the packet that made it, so
//! a hit's time converts back to the sessions' clock: both advance once per tick, and
//! `clock_getres(CLOCK_MONOTONIC_COARSE)` is the tick in ns (the `SG_NS_PER_JIFFY`
//! global, set at load).
//!
//! Entries are only made for sessions in a state that packets without SYN, FIN or RST
//! never change (TCP established, UDP replied, ICMP echo, other protocols), and only such
//! packets hit, so a hit never has a state change to record. It does count: the entry's
//! `packets` and `last_seen_ns` are folded into the session on the flow's next slow-path
//! packet on that CPU, and userspace adds the ones still pending when it lists sessions
//! or collects garbage ([`FlowCacheEntry::pending_for`]).

use crate::{
    PacketMeta, Session, SessionKey, Timeouts, fragment, ip_proto,
    session::{anchor, belongs_to_session, flow_ports, state, tcp_flag},
    stats,
};

/// Slots per CPU (a power of two). Two entries each, 128 bytes an entry: 2 MiB a CPU.
pub const FLOW_CACHE_SLOTS: u32 = 8192;
const SLOT_BITS: u32 = FLOW_CACHE_SLOTS.trailing_zeros();
const _: () = assert!(FLOW_CACHE_SLOTS.is_power_of_two());

/// The longest an entry is trusted after the slow-path packet that made it.
pub const MAX_VALIDITY_NS: u64 = 1_000_000_000;

/// One direction of one flow, as last confirmed by the session table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheEntry {
    /// The packet's addresses and flow ports ([`flow_ports`]), in its own direction.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub ifindex: u32,
    /// [`kind`] of family, protocol and hook.
    pub kind: u32,
    /// The interface's configuration id (`SG_IFACE_INDEX`) when the entry was made.
    pub config: u32,
    /// `DECISION_AUDIT` when the interface is in audit mode, for the hit's decision.
    pub decision_flags: u16,
    /// The interface's counter slot (`IfaceConfig::counters`, below 64), for the hit's
    /// counters.
    pub counters: u16,
    /// The TCP acknowledgement number of the latest hit; on an egress entry, the
    /// instance's, which [`FlowCacheEntry::fold_into`] hands to the session
    /// (`Session::instance_ack`). Kept in the 4 bytes before the counts, so an entry
    /// stays two cache lines.
    pub acked: u32,
    /// The session's `created_ns`: which incarnation of the flow this is.
    pub created_ns: u64,
    /// When the slow-path packet that made the entry went by: coarse ns and jiffies.
    pub made_ns: u64,
    pub made_jiffies: u64,
    /// 0: empty.
    pub valid_until_jiffies: u64,
    /// Latest hit, not yet folded into the session.
    pub last_hit_jiffies: u64,
    /// Hits not yet folded into the session.
    pub packets: u64,
    /// Hits, and their bytes, not yet added to the rule's counters (`SG_RULE_STATS`):
    /// the kernel adds them when it folds or replaces the entry, userspace when it
    /// reads the counters ([`FlowCacheEntry::drain`]).
    pub uncounted: u64,
    pub bytes: u64,
    pub epoch: u32,
    /// The session's rule, reported with every hit.
    pub rule_id: u32,
}

/// A slot: one entry for each direction of a flow ([`position`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheSlot {
    pub entries: [FlowCacheEntry; 2],
}

/// Family, protocol and hook in one word, compared at once.
#[inline(always)]
pub fn kind(family: u8, protocol: u8, hook: u32) -> u32 {
    u32::from(family) | u32::from(protocol) << 8 | hook << 16
}

/// An address as two native-order words (compares without a byte loop).
#[inline(always)]
fn words(addr: &[u8; 16]) -> (u64, u64) {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&addr[..8]);
    hi.copy_from_slice(&addr[8..]);
    (u64::from_ne_bytes(lo), u64::from_ne_bytes(hi))
}

/// `*to = *from`, as two word stores: a plain assignment can become a `memmove` call
/// (a subprogram in BPF, see [`FlowCacheEntry::confirm`]) when LLVM cannot tell the two
/// apart.
#[inline(always)]
fn copy_addr(to: &mut [u8; 16], from: &[u8; 16]) {
    let (lo, hi) = words(from);
    // SAFETY: `to` is 16 valid, exclusive bytes; unaligned stores of two words.
    unsafe {
        core::ptr::write_unaligned(to.as_mut_ptr().cast::<u64>(), lo);
        core::ptr::write_unaligned(to.as_mut_ptr().add(8).cast::<u64>(), hi);
    }
}

/// A 64-bit hash of the flow between `(a, port_a)` and `(b, port_b)`: the same whichever
/// end is given first, so both directions (and a session key) get it. The flow cache's
/// slot and the session hint's bit are taken from it.
#[inline(always)]
pub fn flow_hash(ifindex: u32, protocol: u8, a: &[u8; 16], port_a: u16, b: &[u8; 16], port_b: u16) -> u64 {
    let (a0, a1) = words(a);
    let (b0, b1) = words(b);
    hash_words(ifindex, protocol, (a0, a1, port_a), (b0, b1, port_b))
}

/// [`flow_hash`] of the ends as address words and port.
#[inline(always)]
fn hash_words(ifindex: u32, protocol: u8, (a0, a1, port_a): (u64, u64, u16), (b0, b1, port_b): (u64, u64, u16)) -> u64 {
    // The ports in a fixed order (neither their sum nor their XOR: an ICMP echo flow's
    // ports are X and !X, whose sum and XOR are the same for every X).
    let (lo, hi) = if port_a <= port_b { (port_a, port_b) } else { (port_b, port_a) };
    let tail = u64::from(lo) | u64::from(hi) << 16 | u64::from(ifindex) << 32;
    // Two products that do not wait for each other, then one that mixes both. The
    // addresses' last words share a product with the ports: bits that cancel there cost
    // a shared cache slot or hint flag, never a wrong verdict (entries and sessions are
    // matched by their whole tuple).
    let x = (a0 ^ b0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let y = (a1 ^ b1 ^ tail).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    let h = x ^ y.rotate_left(32);
    // The shift brings the well-mixed high bits down to the ones the hint flag uses.
    (h ^ h >> 29 ^ u64::from(protocol)).wrapping_mul(0x1656_67b1_9e37_79f9)
}

/// The cache slot of a flow hash.
#[inline(always)]
pub fn slot_of_hash(hash: u64) -> u32 {
    (hash >> (64 - SLOT_BITS)) as u32
}

/// The hash of a packet's flow ([`flow_hash`]).
#[inline(always)]
pub fn packet_hash(ifindex: u32, meta: &PacketMeta) -> u64 {
    packet_hash_with_ports(ifindex, meta, flow_ports(meta))
}

/// [`packet_hash`] with the packet's [`flow_ports`] at hand (the fast path computes them
/// once, see [`direction_with_ports`]).
#[inline(always)]
pub fn packet_hash_with_ports(ifindex: u32, meta: &PacketMeta, (sport, dport): (u16, u16)) -> u64 {
    let [a0, a1, b0, b1] = meta.addr_words();
    hash_words(ifindex, meta.protocol, (a0, a1, sport), (b0, b1, dport))
}

/// The hash of a session's flow ([`flow_hash`]).
pub fn key_hash(key: &SessionKey) -> u64 {
    flow_hash(key.ifindex, key.protocol, &key.low_addr, key.low_port, &key.high_addr, key.high_port)
}

/// Where a packet's flow lives in the cache: the slot (the same for both directions) and
/// the entry of the packet's direction ([`direction`]).
#[inline(always)]
pub fn position(ifindex: u32, meta: &PacketMeta) -> (u32, usize) {
    (slot_of_hash(packet_hash(ifindex, meta)), direction(meta))
}

/// The entry of a packet's direction in its slot: 0 when its source sorts first. Any
/// order that tells the two ends apart will do (entries are matched by their tuple);
/// native-order words compare without the byte swaps of [`SessionKey::set`]'s order.
#[inline(always)]
pub fn direction(meta: &PacketMeta) -> usize {
    direction_with_ports(meta, flow_ports(meta))
}

/// [`direction`] with the packet's [`flow_ports`] at hand: the fast path computes them
/// once for the direction and the tuple (each a branch on the protocol).
#[inline(always)]
pub fn direction_with_ports(meta: &PacketMeta, (sport, dport): (u16, u16)) -> usize {
    let [s0, s1, d0, d1] = meta.addr_words();
    usize::from(((s0, s1), sport) > ((d0, d1), dport))
}

/// The slot of a session's flow (userspace, to find its pending hits).
pub fn slot_of_key(key: &SessionKey) -> u32 {
    slot_of_hash(key_hash(key))
}

/// Whether a packet may be decided by the cache at all: not a fragment, part of a
/// session (ICMP only as echo), and, for TCP, without SYN, FIN or RST.
#[inline(always)]
pub fn packet_may_hit(meta: &PacketMeta) -> bool {
    meta.fragment == fragment::NONE
        && belongs_to_session(meta)
        && (meta.protocol != ip_proto::TCP || meta.tcp_flags & (tcp_flag::SYN | tcp_flag::FIN | tcp_flag::RST) == 0)
}

/// Whether a session in `state` may be cached: one that packets allowed to hit
/// ([`packet_may_hit`]) never change.
#[inline(always)]
pub fn state_is_stable(session_state: u8) -> bool {
    matches!(session_state, state::TCP_ESTABLISHED | state::UDP_REPLIED | state::ICMP | state::OTHER)
}

/// [`validity`] in jiffies of `ns_per_jiffy`.
#[inline(always)]
pub fn validity_jiffies(t: &Timeouts, ns_per_jiffy: u64) -> u64 {
    validity(t) / if ns_per_jiffy == 0 { 1 } else { ns_per_jiffy }
}

/// How long an entry made at a slow-path packet is trusted: half the shortest idle
/// timeout (so no state's timeout can run out meanwhile), at most [`MAX_VALIDITY_NS`].
#[inline(always)]
pub fn validity(t: &Timeouts) -> u64 {
    let mut shortest = MAX_VALIDITY_NS * 2;
    for v in
        [t.tcp_established, t.tcp_opening, t.tcp_closing, t.tcp_rst, t.udp_unreplied, t.udp_replied, t.icmp, t.other]
    {
        if v < shortest {
            shortest = v;
        }
    }
    shortest / 2
}

/// What identifies a packet's entry, besides its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub ifindex: u32,
    pub kind: u32,
    pub ports: u32,
}

impl Tuple {
    #[inline(always)]
    pub fn of(ifindex: u32, hook: u32, meta: &PacketMeta) -> Self {
        Self::with_ports(ifindex, hook, meta, flow_ports(meta))
    }

    /// [`Tuple::of`] with the packet's [`flow_ports`] at hand (see [`direction_with_ports`]).
    #[inline(always)]
    pub fn with_ports(ifindex: u32, hook: u32, meta: &PacketMeta, (sport, dport): (u16, u16)) -> Self {
        Self { ifindex, kind: kind(meta.family, meta.protocol, hook), ports: u32::from(sport) | u32::from(dport) << 16 }
    }
}

impl FlowCacheEntry {
    /// Whether this entry's ends are the packet's, in the packet's direction or (with
    /// `reversed`) the other way.
    #[inline(always)]
    fn ends_match(&self, tuple: &Tuple, meta: &PacketMeta, reversed: bool) -> bool {
        let [m0, m1, m2, m3] = meta.addr_words();
        let ((f0, f1), (t0, t1), ports) = if reversed {
            ((m2, m3), (m0, m1), tuple.ports.rotate_left(16))
        } else {
            ((m0, m1), (m2, m3), tuple.ports)
        };
        let (s0, s1) = words(&self.src);
        let (d0, d1) = words(&self.dst);
        (u32::from(self.src_port) | u32::from(self.dst_port) << 16) == ports
            && s0 == f0
            && s1 == f1
            && d0 == t0
            && d1 == t1
    }

    /// Whether this entry is the packet's direction of the packet's flow.
    #[inline(always)]
    pub fn is_for(&self, tuple: &Tuple, meta: &PacketMeta) -> bool {
        self.ifindex == tuple.ifindex && self.kind == tuple.kind && self.ends_match(tuple, meta, false)
    }

    /// Whether this entry is either direction of the packet's flow, on either hook: the
    /// same session, if also the same incarnation.
    #[inline(always)]
    pub fn same_flow(&self, tuple: &Tuple, meta: &PacketMeta) -> bool {
        self.ifindex == tuple.ifindex
            && self.kind & 0xffff == tuple.kind & 0xffff
            && (self.ends_match(tuple, meta, false) || self.ends_match(tuple, meta, true))
    }

    /// Whether a packet this entry [`is_for`](Self::is_for) passes at `jiffies` without
    /// the session table, under configuration id `config`.
    #[inline(always)]
    pub fn trusted(&self, config: u32, epoch: u32, jiffies: u64) -> bool {
        self.config == config && self.epoch == epoch && jiffies < self.valid_until_jiffies
    }

    /// Records a hit.
    #[inline(always)]
    pub fn hit(&mut self, jiffies: u64, len: u64, ack: u32) {
        self.last_hit_jiffies = jiffies;
        self.acked = ack;
        self.packets += 1;
        self.uncounted += 1;
        self.bytes += len;
    }

    /// Takes the hits (packets, bytes) not yet in the rule's counters.
    #[inline(always)]
    pub fn drain(&mut self) -> (u64, u64) {
        let taken = (self.uncounted, self.bytes);
        clear(&mut self.uncounted);
        clear(&mut self.bytes);
        taken
    }

    /// The latest hit on the sessions' clock (coarse ns).
    #[inline(always)]
    pub fn last_hit_ns(&self, ns_per_jiffy: u64) -> u64 {
        self.made_ns + self.last_hit_jiffies.saturating_sub(self.made_jiffies) * ns_per_jiffy
    }

    /// Makes this the entry for a packet of `session` that the slow path just passed at
    /// `now` (coarse ns and jiffies) under configuration `config` (id, decision flags,
    /// counter slot), trusted for `validity` jiffies. Whatever it held is overwritten:
    /// take its uncounted hits first.
    ///
    /// Written in place, and the counts cleared with volatile stores: LLVM merges
    /// adjacent zero stores into a `memset` call, which bpf-linker leaves as a call to a
    /// subprogram, and on kernels before 6.7 every call level costs at least 32 bytes of
    /// the 512-byte stack the deepest chain (`stateful`, `cache_session`) already fills.
    #[inline(always)]
    pub fn confirm(
        &mut self,
        (meta, tuple, session): (&PacketMeta, &Tuple, &Session),
        (config, decision_flags, counters): (u32, u32, u32),
        (epoch, now): (u32, (u64, u64)),
        validity: u64,
    ) {
        copy_addr(&mut self.src, &meta.src);
        copy_addr(&mut self.dst, &meta.dst);
        self.src_port = tuple.ports as u16;
        self.dst_port = (tuple.ports >> 16) as u16;
        self.ifindex = tuple.ifindex;
        self.kind = tuple.kind;
        self.config = config;
        self.decision_flags = decision_flags as u16;
        self.counters = counters as u16;
        self.acked = meta.tcp_ack;
        self.created_ns = session.created_ns;
        self.made_ns = now.0;
        self.made_jiffies = now.1;
        self.valid_until_jiffies = now.1 + validity;
        self.last_hit_jiffies = now.1;
        clear(&mut self.packets);
        clear(&mut self.uncounted);
        clear(&mut self.bytes);
        self.epoch = epoch;
        self.rule_id = session.rule_id;
    }

    /// The instance's latest acknowledgement among the hits not folded yet: on an egress
    /// TCP entry with hits, the latest hit's.
    #[inline(always)]
    pub fn pending_ack(&self) -> Option<u32> {
        let egress_tcp = self.kind >> 16 == stats::HOOK_EGRESS && (self.kind >> 8) as u8 == ip_proto::TCP;
        (self.packets != 0 && egress_tcp).then_some(self.acked)
    }

    /// Hits of `session` (under `key`) this entry holds that the session does not have
    /// yet: `(packets, latest hit)`, or `None` when the entry is another flow's, another
    /// incarnation's, from an older epoch or holds nothing.
    pub fn pending_for(
        &self,
        key: &SessionKey,
        session: &Session,
        epoch: u32,
        ns_per_jiffy: u64,
    ) -> Option<(u64, u64)> {
        if self.valid_until_jiffies == 0 || self.epoch != epoch || self.created_ns != session.created_ns {
            return None;
        }
        let mut own = SessionKey::default();
        self.session_key(&mut own);
        (own == *key && self.packets > 0).then_some((self.packets, self.last_hit_ns(ns_per_jiffy)))
    }

    /// The session key of this entry's flow, written into `key` (the kernel keeps keys
    /// off its small stack).
    #[inline(always)]
    pub fn session_key(&self, key: &mut SessionKey) {
        key.set_between(
            self.ifindex,
            self.kind as u8,
            (self.kind >> 8) as u8,
            (&self.src, self.src_port),
            (&self.dst, self.dst_port),
        );
    }

    /// Moves this entry's pending hits into `session` (the slow path, before judging
    /// the session's idle time).
    #[inline(always)]
    pub fn fold_into(&mut self, session: &mut Session, epoch: u32, ns_per_jiffy: u64) {
        if self.valid_until_jiffies != 0 && self.epoch == epoch && self.created_ns == session.created_ns {
            if self.packets != 0 {
                let last_hit = self.last_hit_ns(ns_per_jiffy);
                if last_hit > session.last_seen_ns {
                    session.last_seen_ns = last_hit;
                }
            }
            // An egress entry's hits are the instance's segments: the latest one's
            // acknowledgement is this CPU's latest; another CPU may have folded a later
            // one already, so the anchor only moves ahead.
            if let Some(ack) = self.pending_ack()
                && session.anchors & anchor::INSTANCE_ACK != 0
            {
                session.instance_ack = crate::session::later_ack(session.instance_ack, ack);
            }
            session.packets += self.packets;
            self.packets = 0;
        }
    }
}

/// Sets a count to 0 with a store LLVM cannot merge into a `memset` call
/// ([`FlowCacheEntry::confirm`] says why that matters).
#[inline(always)]
fn clear(count: &mut u64) {
    // SAFETY: a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(count, 0) };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integer fields only, no implicit padding (asserted in tests).
    unsafe impl aya::Pod for super::FlowCacheEntry {}
    unsafe impl aya::Pod for super::FlowCacheSlot {}
}

#[cfg(test)]
mod tests;
