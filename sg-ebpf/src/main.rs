//! sgctl kernel side: `sg_ingress` (XDP) and `sg_egress` (TC) evaluate each packet
//! against the security groups of the interface it crosses.
//!
//! Both hooks share one pipeline ([`evaluate`]): parse, then decide. The programs are thin
//! wrappers that map the decision to their hook's return code.
#![no_std]
#![no_main]

mod classify;
mod clock;
mod events;
mod flow_cache;
mod parse;
mod session;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use sg_common::{
    DECISION_AUDIT, DECISION_OPENED, Decision, FlowCacheEntry, FragmentKey, FragmentVerdict, IFACE_AUDIT, IfaceConfig,
    PacketMeta, Session, SessionKey, Timeouts, echo_request_type, family,
    flow_cache::{
        Tuple, direction, direction_with_ports, packet_hash_with_ports, packet_may_hit, position, slot_of_hash,
        state_is_stable, validity_jiffies,
    },
    fragment, is_icmp_error, is_neighbour_discovery,
    session::{
        FRAGMENT_TIMEOUT_NS, assures, belongs_to_session, continues_session, expired, flow_ports, next_state,
        opening_anchors, opening_state, table, take_anchors, tcp_plausible,
    },
    session_hints, stats as slots, step, verdict,
};

use crate::{
    parse::{Frame, parse},
    session::{CacheWork, Scratch, Work},
    stats::Counted,
};

/// How much of a TC packet is made linear before parsing, so headers that sit in
/// paged data are visible.
const TC_PULL_LEN: u32 = 512;

#[xdp]
pub fn sg_ingress(ctx: XdpContext) -> u32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    if passes(&evaluate(&frame, slots::HOOK_INGRESS, ctx.ingress_ifindex() as u32)) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[classifier]
pub fn sg_egress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    let wanted = if len < TC_PULL_LEN { len } else { TC_PULL_LEN };
    if ctx.data_end() - ctx.data() < wanted as usize {
        // A failed pull leaves the frame as it was; the parser then sees it as short.
        let _ = ctx.pull_data(wanted);
    }
    // The IP length fields are checked against the whole packet, most of which may
    // stay outside the pulled bytes.
    let frame = Frame::with_wire_len(ctx.data(), ctx.data_end(), len as usize);
    // SAFETY: `skb` is the context the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if passes(&evaluate(&frame, slots::HOOK_EGRESS, ifindex)) { TC_ACT_OK } else { TC_ACT_SHOT }
}

/// Baseline for benchmarks: the same parse and counting as `sg_ingress`, no decision.
/// Not loaded by sgctl itself.
#[xdp]
pub fn sg_baseline_xdp(ctx: XdpContext) -> u32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let _ = baseline(&frame, slots::HOOK_INGRESS);
    xdp_action::XDP_PASS
}

/// Baseline for benchmarks on the TC hook (see `sg_baseline_xdp`).
#[classifier]
pub fn sg_baseline_tc(ctx: TcContext) -> i32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let _ = baseline(&frame, slots::HOOK_EGRESS);
    TC_ACT_OK
}

/// The floor of the fast path, for benchmarks: the baseline plus what finding a flow's
/// cached verdict takes before it can be trusted (the interface lookup, the flow hash, one
/// probe of this CPU's flow cache and the tuple compared), deciding nothing. What the
/// established flow costs beyond this is the verdict itself: the entry's trust checks and
/// its hit counts. Passes a frame whose entry it found and drops the others, so the
/// benchmark can check it measures a hit. Not loaded by sgctl itself.
#[xdp]
pub fn sg_probe_xdp(ctx: XdpContext) -> u32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    if probe(&frame, slots::HOOK_INGRESS, ctx.ingress_ifindex() as u32).step == step::SESSION {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// The fast path's floor on the TC hook (see `sg_probe_xdp`).
#[classifier]
pub fn sg_probe_tc(ctx: TcContext) -> i32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    // SAFETY: `skb` is the context the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if probe(&frame, slots::HOOK_EGRESS, ifindex).step == step::SESSION { TC_ACT_OK } else { TC_ACT_SHOT }
}

#[inline(always)]
fn probe(frame: &Frame, hook: u32, ifindex: u32) -> Decision {
    let Some(scratch) = session::scratch() else {
        return Decision::new(verdict::DROP, step::DEFAULT);
    };
    scratch.at = Counted { ifindex, iface: 0, len: frame.len() as u64, cached: 0, ports: 0 };
    let decision = match parse_packet(frame, scratch) {
        Err(reason) => Decision::malformed(reason),
        Ok(()) => probe_cache(&scratch.meta, hook, &mut scratch.at),
    };
    stats::record(hook, &scratch.meta, &decision, &scratch.at);
    decision
}

/// [`decide`] and [`cached`] up to the entry's tuple check, with the same steps.
#[inline(always)]
fn probe_cache(meta: &PacketMeta, hook: u32, at: &mut Counted) -> Decision {
    let unconfigured = Decision::new(verdict::PASS, step::UNCONFIGURED);
    let ifindex = at.ifindex;
    if meta.family == family::NONE || classify::interface_id(ifindex) == 0 || !packet_may_hit(meta) {
        return unconfigured;
    }
    let (sport, dport) = flow_ports(meta);
    at.ports = u32::from(sport) | u32::from(dport) << 16;
    let hash = packet_hash_with_ports(ifindex, meta, unpack_ports(at));
    let ports = unpack_ports(at);
    let Some(entry) = flow_cache::entry(slot_of_hash(hash), direction_with_ports(meta, ports)) else {
        return unconfigured;
    };
    if entry.is_for(&Tuple::with_ports(ifindex, hook, meta, ports), meta) {
        Decision::new(verdict::PASS, step::SESSION)
    } else {
        unconfigured
    }
}

/// The floor of a new flow, for benchmarks: the baseline plus the interface lookup and
/// the classification by the interface's rule set, counted (and its event emitted) like
/// sgctl's, without the flow cache or sessions. What a new flow costs beyond this is the
/// stateful part. Not loaded by sgctl itself.
#[xdp]
pub fn sg_classify_xdp(ctx: XdpContext) -> u32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    if passes(&classify_only(&frame, slots::HOOK_INGRESS, ctx.ingress_ifindex() as u32)) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// The new flow's floor on the TC hook (see `sg_classify_xdp`).
#[classifier]
pub fn sg_classify_tc(ctx: TcContext) -> i32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    // SAFETY: `skb` is the context the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if passes(&classify_only(&frame, slots::HOOK_EGRESS, ifindex)) { TC_ACT_OK } else { TC_ACT_SHOT }
}

#[inline(always)]
fn classify_only(frame: &Frame, hook: u32, ifindex: u32) -> Decision {
    let Some(scratch) = session::scratch() else {
        return Decision::new(verdict::DROP, step::DEFAULT);
    };
    scratch.at = Counted { ifindex, iface: 0, len: frame.len() as u64, cached: 0, ports: 0 };
    let decision = match parse_packet(frame, scratch) {
        Err(reason) => Decision::malformed(reason),
        Ok(()) => classify_parsed(&scratch.meta, hook, &mut scratch.at),
    };
    stats::record(hook, &scratch.meta, &decision, &scratch.at);
    decision
}

/// [`decide`]'s interface steps, then the rule set's verdict.
#[inline(always)]
fn classify_parsed(meta: &PacketMeta, hook: u32, at: &mut Counted) -> Decision {
    let unconfigured = Decision::new(verdict::PASS, step::UNCONFIGURED);
    let config = classify::interface_id(at.ifindex);
    if meta.family == family::NONE || config == 0 {
        return unconfigured;
    }
    let Some(iface) = classify::interface(config) else { return unconfigured };
    at.iface = iface.counters;
    let ingress = hook == slots::HOOK_INGRESS;
    let slot = if ingress { iface.ingress } else { iface.egress };
    if slot == 0 {
        return unconfigured;
    }
    classify::classify(slot, meta, ingress)
}

#[inline(always)]
fn baseline(frame: &Frame, hook: u32) -> Decision {
    let Some(scratch) = session::scratch() else {
        return Decision::new(verdict::DROP, step::DEFAULT);
    };
    let decision = match parse_packet(frame, scratch) {
        Err(reason) => Decision::malformed(reason),
        Ok(()) => Decision::new(verdict::PASS, step::UNCONFIGURED),
    };
    scratch.at = Counted { ifindex: 0, iface: 0, len: frame.len() as u64, cached: 0, ports: 0 };
    stats::record(hook, &scratch.meta, &decision, &scratch.at);
    decision
}

/// Parses `frame` into the per-CPU scratch space (not the 512-byte stack); a malformed
/// frame leaves no partly filled fields behind.
#[inline(always)]
fn parse_packet(frame: &Frame, scratch: &mut Scratch) -> Result<(), u8> {
    scratch.meta.clear();
    parse(frame, &mut scratch.meta).inspect_err(|_| scratch.meta.clear())
}

/// Whether the hook lets the packet through: its verdict, unless in audit mode.
#[inline(always)]
fn passes(decision: &Decision) -> bool {
    decision.verdict == verdict::PASS || decision.flags & DECISION_AUDIT != 0
}

/// Parses and decides one frame crossing `ifindex`, then counts it (and, if enabled,
/// emits its event and traces it).
#[inline(always)]
fn evaluate(frame: &Frame, hook: u32, ifindex: u32) -> Decision {
    let Some(scratch) = session::scratch() else {
        return Decision::new(verdict::DROP, step::DEFAULT);
    };
    scratch.at = Counted { ifindex, iface: 0, len: frame.len() as u64, cached: 0, ports: 0 };
    let decision = match parse_packet(frame, scratch) {
        Err(reason) => {
            scratch.at.iface = counter_slot(ifindex);
            Decision::malformed(reason)
        }
        Ok(()) if scratch.meta.family == family::NONE => {
            scratch.at.iface = counter_slot(ifindex);
            Decision::new(verdict::PASS, step::NOT_IP)
        }
        Ok(()) => decide(frame, &scratch.meta, hook, &mut scratch.at, &mut scratch.work),
    };
    stats::record(hook, &scratch.meta, &decision, &scratch.at);
    decision
}

/// The counter slot of an interface, for packets counted before `decide` looks it up.
#[inline(never)]
fn counter_slot(ifindex: u32) -> u32 {
    match classify::interface_id(ifindex) {
        0 => 0,
        id => classify::interface(id).map_or(0, |iface| iface.counters),
    }
}

/// A parsed packet and where it is: bundled because BPF calls take at most five
/// arguments.
#[derive(Clone, Copy)]
struct Packet<'a> {
    frame: &'a Frame,
    meta: &'a PacketMeta,
    hook: u32,
    ifindex: u32,
    /// The rule-set slot of this interface and direction.
    slot: u32,
    /// `flow_cache::packet_hash`: picks the flow-cache slot and the session hint, computed
    /// once.
    hash: u64,
    /// The interface's configuration id (`sg_common::config_version`).
    config: u32,
    /// `DECISION_AUDIT` in audit mode, else 0.
    audit: u8,
    /// The interface's counter slot (`IfaceConfig::counters`).
    counters: u32,
}

/// The evaluation order (docs/rule-model.md) from step 2 on, for a well-formed IP packet.
#[inline(always)]
fn decide(frame: &Frame, meta: &PacketMeta, hook: u32, at: &mut Counted, work: &mut Work) -> Decision {
    let ifindex = at.ifindex;
    let config = classify::interface_id(ifindex);
    if config == 0 {
        return Decision::new(verdict::PASS, step::UNCONFIGURED);
    }
    let (sport, dport) = flow_ports(meta);
    at.ports = u32::from(sport) | u32::from(dport) << 16;
    let hash = packet_hash_with_ports(ifindex, meta, unpack_ports(at));
    // The fast path needs only the configuration id: an entry made under it was made
    // with this interface's rule sets in force.
    if let Some(hit) = cached(meta, hook, (config, hash), at, &work.cache.used) {
        return hit;
    }
    let Some(iface) = classify::interface(config) else {
        return Decision::new(verdict::PASS, step::UNCONFIGURED);
    };
    at.iface = iface.counters;
    let ingress = hook == slots::HOOK_INGRESS;
    let slot = if ingress { iface.ingress } else { iface.egress };
    if slot == 0 {
        return Decision::new(verdict::PASS, step::UNCONFIGURED);
    }
    let audit = if iface.flags & IFACE_AUDIT != 0 { DECISION_AUDIT } else { 0 };
    let packet = Packet { frame, meta, hook, ifindex, slot, hash, config, audit, counters: iface.counters };
    let mut decision = stateful(&packet, &iface, work);
    decision.flags |= audit;
    decision
}

/// Step 2's fast path: a packet of a session the flow cache vouches for passes without
/// the session table (see `sg_common::flow_cache` for when an entry is trusted). The
/// entry counts the hit for the session's rule and names the interface's counter slot.
#[inline(always)]
fn cached(
    meta: &PacketMeta,
    hook: u32,
    (config, hash): (u32, u64),
    at: &mut Counted,
    used: &[u64; flow_cache::USED_WORDS],
) -> Option<Decision> {
    let ifindex = at.ifindex;
    if !packet_may_hit(meta) {
        return None;
    }
    let index = slot_of_hash(hash);
    if !flow_cache::slot_used(used, index) {
        return None;
    }
    let ports = unpack_ports(at);
    let entry = flow_cache::entry(index, direction_with_ports(meta, ports))?;
    let tuple = Tuple::with_ports(ifindex, hook, meta, ports);
    let jiffies = flow_cache::jiffies();
    if !(entry.is_for(&tuple, meta) && entry.trusted(config, flow_cache::epoch(), jiffies)) {
        return None;
    }
    entry.hit(jiffies, at.len, meta.tcp_ack);
    at.iface = u32::from(entry.counters);
    at.cached = 1;
    let decision = Decision { rule_id: entry.rule_id, ..Decision::new(verdict::PASS, step::SESSION) };
    Some(Decision { flags: entry.decision_flags as u8, ..decision })
}

/// The flow ports `decide` stored in `at`. Read back from the scratch space rather than
/// kept in a register: a live pair spills, and 8 more bytes of `sg_ingress`'s frame took
/// its deepest call chain past 512 bytes.
#[inline(always)]
fn unpack_ports(at: &Counted) -> (u16, u16) {
    // SAFETY: reading a field through a valid reference.
    let ports = unsafe { core::ptr::read_volatile(&at.ports) };
    (ports as u16, (ports >> 16) as u16)
}

/// Moves the hits this CPU's cache holds for the packet's session (both directions)
/// into the session, so its idle time and packet count are exact before it is judged.
#[inline(never)]
fn fold_cached(ifindex: u32, meta: &PacketMeta, s: &mut Session) {
    let (index, _) = position(ifindex, meta);
    let Some(slot) = flow_cache::slot(index) else { return };
    let epoch = flow_cache::epoch();
    let ns_per_jiffy = flow_cache::ns_per_jiffy();
    // The hook does not matter to `same_flow`.
    let tuple = Tuple::of(ifindex, 0, meta);
    for entry in &mut slot.entries {
        // The entry keeps its hits for the rule's counters (`cache_session` hands them
        // over before it overwrites the entry, userspace adds them when it reads): a
        // counter update here would take this frame, four calls deep, past the 512
        // bytes kernels before 6.7 allow once they round each frame to 32.
        if entry.same_flow(&tuple, meta) {
            entry.fold_into(s, epoch, ns_per_jiffy);
        }
    }
}

/// After the session table passed a packet: caches the flow's direction when the
/// session is in a state the fast path may serve, and forgets the flow on this CPU when
/// it left those states (a FIN, RST or reusing SYN went by).
#[inline(never)]
fn cache_session(packet: &Packet, s: &Session, timeouts: &Timeouts, now: u64, work: &mut CacheWork) {
    let meta = packet.meta;
    // The packet's hash, computed once in `decide`.
    let (index, dir) = (slot_of_hash(packet.hash), direction(meta));
    let Some(slot) = flow_cache::slot(index) else { return };
    if !state_is_stable(s.state) {
        forget_cached(packet);
        return;
    }
    let tuple = Tuple::of(packet.ifindex, packet.hook, meta);
    if !packet_may_hit(meta) {
        return;
    }
    let entry = if dir == 0 { &mut slot.entries[0] } else { &mut slot.entries[1] };
    let epoch = flow_cache::epoch();
    if entry.packets != 0 && !entry.is_for(&tuple, meta) {
        evict(entry, &mut work.spare_key, epoch);
    }
    // Hits the entry still holds go to its rule before it is overwritten (which clears
    // them: no need to drain).
    stats::add_to_rule(entry.rule_id, entry.uncounted, entry.bytes, 0);
    let validity = validity_jiffies(timeouts, flow_cache::ns_per_jiffy());
    flow_cache::mark_used(&mut work.used, index);
    let config = (packet.config, u32::from(packet.audit), packet.counters);
    entry.confirm((meta, &tuple, s), config, (epoch, (now, flow_cache::jiffies())), validity);
}

/// Stops this CPU's cache serving the packet's flow (both directions), after the slow
/// path saw the flow leave the states the cache may serve, or replaced its session.
/// `fold_cached` already moved the entries' hits into the session. Inlined: one call
/// level more would take the deepest chain past BPF's 512-byte stack.
#[inline(always)]
fn forget_cached(packet: &Packet) {
    let Some(slot) = flow_cache::slot(slot_of_hash(packet.hash)) else { return };
    let tuple = Tuple::of(packet.ifindex, packet.hook, packet.meta);
    for entry in &mut slot.entries {
        if entry.same_flow(&tuple, packet.meta) {
            entry.valid_until_jiffies = 0;
        }
    }
}

/// Hands the pending hits of an entry about to be replaced (another flow sharing the
/// slot) to that flow's session, so no packet goes uncounted. Inlined: as a call of its
/// own it made the deepest call chain (`sg_ingress`, `stateful`, `cache_session`, `evict`)
/// 544 bytes of stack for kernels before 6.7, which round every frame up to 32 bytes.
#[inline(always)]
fn evict(entry: &mut FlowCacheEntry, key: &mut SessionKey, epoch: u32) {
    entry.session_key(key);
    if let Some(s) = session::lookup(key) {
        // SAFETY: a map value pointer, valid for this program run.
        entry.fold_into(unsafe { &mut *s }, epoch, flow_cache::ns_per_jiffy());
    }
}

/// Steps 2 to 7: neighbour discovery, fragments, sessions, related ICMP errors, then
/// classification; an accepted packet that starts a flow opens a session. Split into
/// functions that are not inlined, so each keeps its own stack frame small: BPF allows
/// 512 bytes for the whole call chain.
#[inline(never)]
fn stateful(packet: &Packet, iface: &IfaceConfig, work: &mut Work) -> Decision {
    let meta = packet.meta;
    if is_neighbour_discovery(meta.protocol, meta.icmp_type) {
        return Decision::new(verdict::PASS, step::NEIGHBOUR_DISCOVERY);
    }
    if meta.fragment == fragment::LATER {
        return later_fragment(packet);
    }
    let Some(timeouts) = session::timeouts() else {
        return classify::classify(packet.slot, meta, packet.hook == slots::HOOK_INGRESS);
    };
    // Most packets that reach this point are new flows: the session key is built, and
    // the clock (~20 ns) read, only once the hints say a session may exist, or when
    // one is opened.
    let hint = session_hints::bit_of_hash(packet.hash);
    let hinted = belongs_to_session(meta) && session::may_have_session(hint);
    let src_is_low = hinted && work.key.set(packet.ifindex, meta);
    let mut flow = Flow { packet, iface, key: &work.key, src_is_low, timeouts, now: 0 };
    let mut decision = Decision::new(verdict::DROP, step::DEFAULT);
    let live = if hinted { live_session(&mut flow) } else { None };
    // A packet that does not continue its flow's session in its direction (a request or
    // SYN from the responder, say) is a new flow, judged by the rules.
    if let Some(entry) = live.filter(|&entry| continues(&flow, entry)) {
        decision = on_session(&flow, entry, &mut work.opening);
        if decision.step == step::SESSION {
            // SAFETY: a map value pointer, valid for this program run.
            cache_session(packet, unsafe { &*entry }, timeouts, flow.now, &mut work.cache);
            // Last: it may free `entry`.
            session::promote(flow.key, entry);
        }
    } else {
        let icmp_error = is_icmp_error(meta.protocol, meta.icmp_type);
        if !(icmp_error && related(&flow, &mut work.quoted, &mut work.quoted_key, &mut decision)) {
            decision = classify::classify(packet.slot, meta, packet.hook == slots::HOOK_INGRESS);
            if decision.verdict == verdict::PASS
                && !icmp_error
                && open_session(&flow, &decision, hint, &mut work.quoted_key)
            {
                decision.flags |= DECISION_OPENED;
            }
        }
    }
    if meta.fragment == fragment::FIRST {
        remember_first_fragment(packet, &decision);
    }
    decision
}

/// What the session steps need, bundled (BPF calls take at most five arguments).
struct Flow<'a> {
    packet: &'a Packet<'a>,
    iface: &'a IfaceConfig,
    /// Set only when the hints say a session may exist (see [`stateful`]).
    key: &'a SessionKey,
    /// Whether the packet's source is the key's low end.
    src_is_low: bool,
    timeouts: &'a Timeouts,
    /// Coarse ns; read by [`live_session`] once it finds the session (0 before, and
    /// when the flow has none).
    now: u64,
}

/// Step 2: the flow's live session, if any; an expired one is deleted.
#[inline(never)]
fn live_session(flow: &mut Flow) -> Option<*mut Session> {
    let entry = session::lookup(flow.key)?;
    flow.now = session::now();
    // SAFETY: a map value pointer, valid for this program run.
    let s = unsafe { &mut *entry };
    fold_cached(flow.packet.ifindex, flow.packet.meta, s);
    if expired(s.state, s.last_seen_ns, flow.now, flow.timeouts) {
        session::remove(flow.key);
        stats::session_expired(flow.packet.counters, flow.packet.hook);
        return None;
    }
    Some(entry)
}

/// Whether the packet continues the live session `entry` in its direction
/// (`sg_common::session::continues_session`).
#[inline(always)]
fn continues(flow: &Flow, entry: *mut Session) -> bool {
    // SAFETY: a map value pointer, valid for this program run.
    let s = unsafe { &*entry };
    let meta = flow.packet.meta;
    continues_session(s.state, flow.src_is_low == (s.opener_is_low != 0), meta)
        && tcp_plausible(s, flow.packet.hook == slots::HOOK_INGRESS, meta)
}

/// Step 2 for a live session: re-check it if the rules changed since it was admitted
/// (revoking it when its opening packet would now be dropped), else pass and refresh.
#[inline(always)]
fn on_session(flow: &Flow, entry: *mut Session, opening: &mut PacketMeta) -> Decision {
    // SAFETY: a map value pointer, valid for this program run.
    let s = unsafe { &mut *entry };
    if s.generation != flow.iface.generation {
        // Classified from here, not from inside `opening_packet`: one call level less
        // keeps the deepest chain within BPF's 512-byte stack.
        let ingress = u32::from(s.opened_on) == slots::HOOK_INGRESS;
        let recheck = match opening_packet(flow.key, s, flow.iface, opening) {
            0 => Decision::new(verdict::PASS, step::UNCONFIGURED),
            slot => classify::classify(slot, opening, ingress),
        };
        if recheck.verdict != verdict::PASS {
            session::remove(flow.key);
            return Decision { step: step::REVOKED, ..recheck };
        }
        s.generation = flow.iface.generation;
        s.rule_id = recheck.rule_id;
    }
    refresh(flow, s)
}

/// Passes a packet of a live session and moves the session along.
#[inline(never)]
fn refresh(flow: &Flow, s: &mut Session) -> Decision {
    let from_opener = flow.src_is_low == (s.opener_is_low != 0);
    s.state = next_state(s.state, from_opener, flow.packet.meta);
    take_anchors(s, flow.packet.hook == slots::HOOK_INGRESS, flow.packet.meta);
    if s.assured == table::OPENING_VALUE && assures(s.state, !from_opener) {
        // `stateful` moves it to the assured table once done with it.
        s.assured = table::PROMOTE;
    }
    s.last_seen_ns = flow.now;
    s.packets += 1;
    Decision { rule_id: s.rule_id, ..Decision::new(verdict::PASS, step::SESSION) }
}

/// Step 3: an ICMP error quoting a packet of a live session passes.
#[inline(never)]
fn related(flow: &Flow, quoted: &mut PacketMeta, key: &mut SessionKey, decision: &mut Decision) -> bool {
    let Flow { packet, timeouts, .. } = flow;
    quoted.clear();
    if parse::quoted(packet.frame, packet.meta, quoted).is_none() {
        return false;
    }
    key.set(packet.ifindex, quoted);
    let Some(entry) = session::lookup(key) else { return false };
    // SAFETY: as above.
    let s = unsafe { &mut *entry };
    fold_cached(packet.ifindex, quoted, s);
    if expired(s.state, s.last_seen_ns, session::now(), timeouts) {
        return false;
    }
    *decision = Decision::new(verdict::PASS, step::RELATED);
    true
}

/// An accepted packet that starts a flow opens a session; `key` is room for its key.
/// Whether it did.
#[inline(never)]
fn open_session(flow: &Flow, decision: &Decision, hint: u32, key: &mut SessionKey) -> bool {
    let Some(state) = opening_state(flow.packet.meta) else { return false };
    if flow.now != 0 {
        // The flow had a session, which this one replaces (the packet did not continue
        // it, or it had expired): hits this CPU cached for it must not count for this
        // one, and the old session's were folded into it already. The old entry goes
        // (from either table): the new one starts in the opening table.
        forget_cached(flow.packet);
        session::remove(flow.key);
    }
    let src_is_low = key.set(flow.packet.ifindex, flow.packet.meta);
    let now = session::now();
    let (anchors, instance_ack, instance_syn) =
        opening_anchors(flow.packet.hook == slots::HOOK_INGRESS, flow.packet.meta);
    let opened = Session {
        last_seen_ns: now,
        created_ns: now,
        packets: 1,
        rule_id: decision.rule_id,
        generation: flow.iface.generation,
        state,
        opener_is_low: u8::from(src_is_low),
        opened_on: flow.packet.hook as u8,
        step: decision.step,
        assured: table::OPENING_VALUE,
        anchors,
        _pad: [0; 2],
        instance_ack,
        instance_syn,
    };
    session::insert(key, &opened, hint)
}

/// Rebuilds a session's opening packet into `opening`, to classify it again with the
/// interface's current rules; returns the rule-set slot of the direction it was opened
/// in (0: that direction is not enforced any more).
#[inline(never)]
fn opening_packet(key: &SessionKey, s: &Session, iface: &IfaceConfig, opening: &mut PacketMeta) -> u32 {
    let (opener, other) = key.ends(s.opener_is_low != 0);
    *opening =
        PacketMeta { family: key.family, protocol: key.protocol, src: opener.0, dst: other.0, ..PacketMeta::default() };
    opening.src_port = opener.1;
    opening.dst_port = other.1;
    // Only an echo request opens an ICMP session: that is what the rules admitted, and
    // what they must still admit (an echo-request-only rule must not revoke it). Other
    // protocols' classification never reads the type.
    opening.icmp_type = echo_request_type(key.protocol);
    if u32::from(s.opened_on) == slots::HOOK_INGRESS { iface.ingress } else { iface.egress }
}

/// A first fragment's verdict is remembered for the datagram's other fragments.
#[inline(never)]
fn remember_first_fragment(packet: &Packet, decision: &Decision) {
    let remembered = FragmentVerdict {
        seen_ns: session::now(),
        rule_id: decision.rule_id,
        verdict: decision.verdict,
        step: decision.step,
        _pad: [0; 2],
    };
    session::remember_fragment(&FragmentKey::of(packet.ifindex, packet.meta), &remembered);
}

/// A non-first fragment gets its first fragment's verdict, or is dropped when that was
/// never seen (or too long ago).
#[inline(never)]
fn later_fragment(packet: &Packet) -> Decision {
    match session::fragment_verdict(&FragmentKey::of(packet.ifindex, packet.meta)) {
        Some(first) if session::now().saturating_sub(first.seen_ns) <= FRAGMENT_TIMEOUT_NS => {
            Decision { rule_id: first.rule_id, ..Decision::new(first.verdict, step::FRAGMENT) }
        }
        _ => Decision::new(verdict::DROP, step::FRAGMENT_UNKNOWN),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
