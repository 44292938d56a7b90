//! Sessions (docs/rule-model.md#sessions): the table's key and value, and the protocol
//! state machines as pure functions, shared by the kernel and the host tests.
//!
//! A key holds the two (address, port) ends of a flow in a fixed order, low end first, so
//! both directions of a flow find the same entry; the value remembers which end opened
//! the flow. A session passes only what continues its flow in the right direction
//! ([`continues_session`]): replies from the responder, requests from the opener.
//!
//! ICMP echo flows are keyed by direction as well as identifier: the requester's end
//! carries the identifier X and the responder's end its complement !X ([`flow_ports`]).
//! A ping from A to B and a ping from B to A with the same identifier are then two
//! flows, each with its own session, and a request from B can never find A's session
//! (the two keys would need X = !X).

use crate::{PacketMeta, fragment, ip_proto};

/// Session and protocol states (`Session::state`).
pub mod state {
    /// The opener sent a SYN.
    pub const TCP_SYN_SENT: u8 = 1;
    /// The responder answered with SYN-ACK.
    pub const TCP_SYN_RECEIVED: u8 = 2;
    pub const TCP_ESTABLISHED: u8 = 3;
    /// The opener sent a FIN.
    pub const TCP_FIN_FROM_OPENER: u8 = 4;
    /// The responder sent a FIN.
    pub const TCP_FIN_FROM_RESPONDER: u8 = 5;
    /// Both sides sent a FIN.
    pub const TCP_CLOSING: u8 = 6;
    /// A RST was seen.
    pub const TCP_CLOSED: u8 = 7;
    pub const UDP_UNREPLIED: u8 = 8;
    pub const UDP_REPLIED: u8 = 9;
    /// ICMP or ICMPv6 echo.
    pub const ICMP: u8 = 10;
    /// GRE and any other protocol, by address pair.
    pub const OTHER: u8 = 11;
    pub const COUNT: usize = 12;

    pub const NAMES: [&str; COUNT] = [
        "none",
        "syn-sent",
        "syn-received",
        "established",
        "fin-from-opener",
        "fin-from-responder",
        "closing",
        "closed",
        "udp-unreplied",
        "udp-replied",
        "icmp",
        "other",
    ];
}

/// The two session tables and `Session::assured`. A session starts in the opening
/// table; the first packet that makes it assured ([`assures`]) moves it to the assured
/// table. Each table is an LRU of its own, so a flood of SYNs or unanswered datagrams,
/// however large, evicts only opening sessions, never an established connection's
/// (conntrack's early drop of unassured entries, as two tables).
pub mod table {
    /// `SG_SESSIONS` (`Session::assured` = [`ASSURED`]).
    pub const ASSURED: u32 = 0;
    /// `SG_OPENING` (`Session::assured` = [`OPENING`], or [`PROMOTE`] for the moment
    /// between the packet that assured it and its move).
    pub const OPENING: u32 = 1;
    pub const NAMES: [&str; 2] = ["assured", "opening"];

    /// `Session::assured` values.
    pub const OPENING_VALUE: u8 = 0;
    pub const ASSURED_VALUE: u8 = 1;
    pub const PROMOTE: u8 = 2;

    /// The opening table's size for an assured table of `sessions`: a quarter, at
    /// least 64.
    pub const fn opening_entries(sessions: u32) -> u32 {
        let quarter = sessions / 4;
        if quarter < 64 { 64 } else { quarter }
    }
}

/// Whether a session in `state` is assured once `reply` (a packet from the responder)
/// has passed: TCP once established (a SYN-ACK to a spoofed SYN assures nothing: the
/// handshake must complete), UDP once replied to, echo and other protocols on a reply.
#[inline(always)]
pub fn assures(state: u8, reply: bool) -> bool {
    match state {
        state::TCP_ESTABLISHED | state::TCP_FIN_FROM_OPENER | state::TCP_FIN_FROM_RESPONDER | state::TCP_CLOSING => {
            true
        }
        state::UDP_REPLIED => true,
        state::ICMP | state::OTHER => reply,
        _ => false,
    }
}

/// TCP flag bits (`PacketMeta::tcp_flags`).
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Idle timeouts in nanoseconds, per kind of state (the `[sessions]` table).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_established: u64,
    pub tcp_opening: u64,
    pub tcp_closing: u64,
    pub tcp_rst: u64,
    pub udp_unreplied: u64,
    pub udp_replied: u64,
    pub icmp: u64,
    pub other: u64,
}

const SECOND: u64 = 1_000_000_000;

impl Default for Timeouts {
    /// The documented defaults (docs/rule-model.md#sessions; the provider's figures: TCP
    /// established 910 s, TCP closing 3 s, UDP 30 s).
    fn default() -> Self {
        Self {
            tcp_established: 910 * SECOND,
            tcp_opening: 120 * SECOND,
            tcp_closing: 3 * SECOND,
            tcp_rst: 10 * SECOND,
            udp_unreplied: 30 * SECOND,
            udp_replied: 30 * SECOND,
            icmp: 30 * SECOND,
            other: 600 * SECOND,
        }
    }
}

impl Timeouts {
    /// The idle timeout of a session in `state`.
    #[inline(always)]
    pub fn for_state(&self, state: u8) -> u64 {
        match state {
            state::TCP_SYN_SENT | state::TCP_SYN_RECEIVED => self.tcp_opening,
            state::TCP_ESTABLISHED => self.tcp_established,
            state::TCP_FIN_FROM_OPENER | state::TCP_FIN_FROM_RESPONDER | state::TCP_CLOSING => self.tcp_closing,
            state::TCP_CLOSED => self.tcp_rst,
            state::UDP_UNREPLIED => self.udp_unreplied,
            state::UDP_REPLIED => self.udp_replied,
            state::ICMP => self.icmp,
            _ => self.other,
        }
    }
}

/// True when a session last seen at `last_seen` (ns) in `state` has expired at `now`.
#[inline(always)]
pub fn expired(state: u8, last_seen: u64, now: u64, timeouts: &Timeouts) -> bool {
    now.saturating_sub(last_seen) > timeouts.for_state(state)
}

/// The state a session starts in when `meta` is accepted, or `None` when the packet
/// does not start a flow: a TCP segment other than a SYN (so a flow cut by a rule change
/// is not picked up again mid-stream by the other direction's rules), an ICMP error or
/// echo reply.
#[inline(always)]
pub fn opening_state(meta: &PacketMeta) -> Option<u8> {
    match meta.protocol {
        ip_proto::TCP => {
            let flags = meta.tcp_flags;
            let syn_only = flags & (tcp_flag::SYN | tcp_flag::ACK | tcp_flag::RST | tcp_flag::FIN) == tcp_flag::SYN;
            syn_only.then_some(state::TCP_SYN_SENT)
        }
        ip_proto::UDP => Some(state::UDP_UNREPLIED),
        ip_proto::ICMP if meta.icmp_type == 8 => Some(state::ICMP),
        ip_proto::ICMPV6 if meta.icmp_type == 128 => Some(state::ICMP),
        ip_proto::ICMP | ip_proto::ICMPV6 => None,
        _ => Some(state::OTHER),
    }
}

/// Whether a packet can belong to a session at all: ICMP and ICMPv6 only as echo
/// requests and replies (other ICMP messages are errors, handled as related traffic, or
/// stand-alone messages); every other protocol always. Which session, and whether in
/// the right direction, is [`continues_session`]'s question.
#[inline(always)]
pub fn belongs_to_session(meta: &PacketMeta) -> bool {
    match meta.protocol {
        ip_proto::ICMP => matches!(meta.icmp_type, 0 | 8),
        ip_proto::ICMPV6 => matches!(meta.icmp_type, 128 | 129),
        _ => true,
    }
}

/// True for an ICMP or ICMPv6 echo request.
#[inline(always)]
pub fn is_echo_request(meta: &PacketMeta) -> bool {
    match meta.protocol {
        ip_proto::ICMP => meta.icmp_type == 8,
        ip_proto::ICMPV6 => meta.icmp_type == 128,
        _ => false,
    }
}

/// Whether a packet of a live session's flow, sent by the opener (`from_opener`) or the
/// responder, continues that session in `session_state`. A packet that does not is a
/// new flow: it goes through the rules (and, if they admit an opening packet, opens a
/// session of its own), exactly as if the session did not exist.
///
/// - ICMP and ICMPv6 echo: requests only from the opener, replies only from the
///   responder (the responder's own ping is a flow of its own, see [`flow_ports`]).
/// - TCP ([`tcp_continues`]): a SYN only from the opener, only while the handshake is
///   open or to reuse a closed connection; a SYN-ACK only from the responder, only
///   during the handshake; every other segment from either side.
/// - UDP: any datagram of the same 5-tuple either way (return traffic, as conntrack).
/// - Other protocols: any packet of the address pair either way.
#[inline(always)]
pub fn continues_session(session_state: u8, from_opener: bool, meta: &PacketMeta) -> bool {
    match meta.protocol {
        ip_proto::TCP => tcp_continues(session_state, from_opener, meta.tcp_flags),
        ip_proto::ICMP | ip_proto::ICMPV6 => belongs_to_session(meta) && is_echo_request(meta) == from_opener,
        _ => true,
    }
}

/// [`continues_session`] for TCP. RST ends the connection from either side, so it always
/// continues (and closes) it. A SYN without ACK continues only from the opener, in
/// SYN-SENT or SYN-RECEIVED (a retransmission) or in CLOSING or CLOSED (the tuple's
/// reuse, which restarts the session). A SYN from the responder, or a SYN from the
/// opener on an established or half-closed connection, is a new connection attempt and
/// is judged by the rules. A SYN-ACK continues only from the responder during the
/// handshake. Before that SYN-ACK (SYN-SENT) nothing else is part of the connection yet
/// but the responder's bare ACK (the challenge ACK of RFC 5961 that a stale connection
/// answers a SYN with, which conntrack lets through too): a FIN or data from either
/// side there, a forged one say, is judged by the rules and moves no state. After it,
/// segments without SYN continue from either side in every state.
#[inline(always)]
pub fn tcp_continues(current: u8, from_opener: bool, flags: u8) -> bool {
    if flags & tcp_flag::RST != 0 {
        return true;
    }
    if flags & tcp_flag::SYN == 0 {
        return current != state::TCP_SYN_SENT || (!from_opener && flags & tcp_flag::FIN == 0);
    }
    if flags & tcp_flag::ACK != 0 {
        return !from_opener && matches!(current, state::TCP_SYN_SENT | state::TCP_SYN_RECEIVED);
    }
    from_opener
        && matches!(current, state::TCP_SYN_SENT | state::TCP_SYN_RECEIVED | state::TCP_CLOSING | state::TCP_CLOSED)
}

/// The TCP state after a segment with `flags`, sent by the opener or the responder.
#[inline(always)]
pub fn tcp_next(current: u8, from_opener: bool, flags: u8) -> u8 {
    let syn = flags & tcp_flag::SYN != 0;
    let ack = flags & tcp_flag::ACK != 0;
    let fin = flags & tcp_flag::FIN != 0;
    if flags & tcp_flag::RST != 0 {
        return state::TCP_CLOSED;
    }
    // A new SYN from the opener on a finished connection reuses the tuple.
    if syn && !ack && from_opener && matches!(current, state::TCP_CLOSING | state::TCP_CLOSED) {
        return state::TCP_SYN_SENT;
    }
    match current {
        state::TCP_SYN_SENT if syn && ack && !from_opener => state::TCP_SYN_RECEIVED,
        state::TCP_SYN_RECEIVED if ack && !syn && from_opener => {
            if fin {
                state::TCP_FIN_FROM_OPENER
            } else {
                state::TCP_ESTABLISHED
            }
        }
        state::TCP_SYN_SENT | state::TCP_SYN_RECEIVED | state::TCP_ESTABLISHED if fin => {
            if from_opener {
                state::TCP_FIN_FROM_OPENER
            } else {
                state::TCP_FIN_FROM_RESPONDER
            }
        }
        state::TCP_FIN_FROM_OPENER if fin && !from_opener => state::TCP_CLOSING,
        state::TCP_FIN_FROM_RESPONDER if fin && from_opener => state::TCP_CLOSING,
        other => other,
    }
}

/// The state after any packet of a live session.
#[inline(always)]
pub fn next_state(current: u8, from_opener: bool, meta: &PacketMeta) -> u8 {
    match meta.protocol {
        ip_proto::TCP => tcp_next(current, from_opener, meta.tcp_flags),
        ip_proto::UDP if !from_opener => state::UDP_REPLIED,
        _ => current,
    }
}

/// `Session::anchors` bits.
pub mod anchor {
    /// `Session::instance_ack` holds the instance's latest acknowledgement.
    pub const INSTANCE_ACK: u8 = 1;
    /// `Session::instance_syn` holds the instance's SYN's sequence number + 1.
    pub const INSTANCE_SYN: u8 = 2;
}

/// How far past the instance's latest acknowledgement an arriving RST or FIN may fall:
/// data the peer sent after its last segment the instance acknowledged (in flight, or
/// acknowledged by a segment the session has not seen yet on another CPU's flow cache).
pub const RECEIVE_AHEAD: u32 = 4 << 20;
/// How far before it: a RST answering an older, reordered or retransmitted segment.
pub const RECEIVE_BEHIND: u32 = 64 << 10;

/// Whether a TCP segment arriving at the instance (`ingress`) may end the session by
/// its sequence number. A RST or FIN from the peer must fall near the start of the
/// instance's receive window (its latest acknowledgement, `Session::instance_ack`):
/// from [`RECEIVE_BEHIND`] before to [`RECEIVE_AHEAD`] after it. Before the instance has
/// acknowledged anything, on a flow the instance opened, a RST must acknowledge its SYN
/// (RFC 793's test in SYN-SENT). A blind attacker who does not see the flow must then
/// guess a sequence number in a window of about 4 MiB out of 4 GiB to cut the flow,
/// where any RST or FIN of the flow's 5-tuple did before.
///
/// Only arriving segments are checked: what the instance sends is its own stack's
/// (trusted, like the acknowledgements the anchor is taken from). Segments without RST
/// or FIN move no state the flow depends on and are not checked (the instance's stack
/// checks their sequence numbers). Where no anchor is known yet (the instance has not
/// answered a peer's SYN), any is plausible.
#[inline(always)]
pub fn tcp_plausible(s: &Session, ingress: bool, meta: &PacketMeta) -> bool {
    let flags = meta.tcp_flags;
    if !ingress || meta.protocol != ip_proto::TCP || flags & (tcp_flag::RST | tcp_flag::FIN) == 0 {
        return true;
    }
    if s.anchors & anchor::INSTANCE_ACK != 0 {
        let ahead = meta.tcp_seq.wrapping_sub(s.instance_ack);
        return ahead <= RECEIVE_AHEAD || ahead.wrapping_neg() <= RECEIVE_BEHIND;
    }
    if s.anchors & anchor::INSTANCE_SYN != 0 && flags & tcp_flag::RST != 0 {
        return flags & tcp_flag::ACK != 0 && meta.tcp_ack == s.instance_syn;
    }
    true
}

/// The anchors of a session that `meta` opens, `(anchors, instance_ack, instance_syn)`:
/// a SYN the instance sends (`!ingress`; a TCP segment opens a session only as a bare
/// SYN) sets [`anchor::INSTANCE_SYN`]. The two numbers are taken whatever the protocol
/// (only the bits say which mean anything), so the kernel's new session has no run of
/// zero fields for LLVM to merge into a `memset` call, which would take its deepest
/// call chain past the 512-byte stack.
#[inline(always)]
pub fn opening_anchors(ingress: bool, meta: &PacketMeta) -> (u8, u32, u32) {
    let instance_syn = !ingress && meta.protocol == ip_proto::TCP;
    (if instance_syn { anchor::INSTANCE_SYN } else { 0 }, meta.tcp_ack, meta.tcp_seq.wrapping_add(1))
}

/// Takes the sequence anchors from a TCP segment the instance sent (`!ingress`) that
/// passed as the session, or opened it: a SYN sets [`anchor::INSTANCE_SYN`] (and, as a
/// new connection on the tuple, forgets the old acknowledgement); a segment with ACK and
/// without RST sets [`anchor::INSTANCE_ACK`] to its acknowledgement number. A SYN
/// arriving (`ingress`) that continues the session starts the handshake again: the
/// anchors of the connection before are forgotten.
#[inline(always)]
pub fn take_anchors(s: &mut Session, ingress: bool, meta: &PacketMeta) {
    if meta.protocol != ip_proto::TCP {
        return;
    }
    let flags = meta.tcp_flags;
    let bare_syn = flags & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN;
    if ingress {
        if bare_syn {
            s.anchors = 0;
        }
        return;
    }
    if bare_syn {
        s.anchors = anchor::INSTANCE_SYN;
        s.instance_syn = meta.tcp_seq.wrapping_add(1);
    }
    if flags & tcp_flag::ACK != 0 && flags & tcp_flag::RST == 0 {
        s.instance_ack =
            if s.anchors & anchor::INSTANCE_ACK != 0 { later_ack(s.instance_ack, meta.tcp_ack) } else { meta.tcp_ack };
        s.anchors |= anchor::INSTANCE_ACK;
    }
}

/// The later of two of the instance's acknowledgements of one connection, in sequence
/// space. They only advance, so the one further ahead is the latest, whichever CPU saw
/// it and whenever it is folded in: segments of one connection may leave on two CPUs
/// within one jiffy, and an older one must not move the anchor back (a RST at the
/// anchor would then miss the instance's receive window start, which its stack takes
/// as a challenge rather than a reset).
#[inline(always)]
pub fn later_ack(current: u32, candidate: u32) -> u32 {
    if (candidate.wrapping_sub(current) as i32) > 0 { candidate } else { current }
}

/// The key of a session: interface, protocol, and the two ends, low end first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub ifindex: u32,
    /// 4 or 6.
    pub family: u8,
    pub protocol: u8,
    pub _pad: [u8; 2],
    pub low_addr: [u8; 16],
    pub high_addr: [u8; 16],
    pub low_port: u16,
    pub high_port: u16,
}

/// One end of a flow: an address and a port (the echo identifier for ICMP echo, 0 for
/// protocols without ports).
pub type End = ([u8; 16], u16);

impl SessionKey {
    /// The key of the flow between `src` and `dst`, and whether `src` is the low end.
    #[inline(always)]
    pub fn between(ifindex: u32, family: u8, protocol: u8, src: End, dst: End) -> (Self, bool) {
        let src_is_low = src <= dst;
        let (low, high) = if src_is_low { (src, dst) } else { (dst, src) };
        let key = Self {
            ifindex,
            family,
            protocol,
            _pad: [0; 2],
            low_addr: low.0,
            high_addr: high.0,
            low_port: low.1,
            high_port: high.1,
        };
        (key, src_is_low)
    }

    /// The key of the flow a parsed packet belongs to, and whether its source is the low
    /// end.
    #[inline(always)]
    pub fn of(ifindex: u32, meta: &PacketMeta) -> (Self, bool) {
        let mut key = Self::default();
        let src_is_low = key.set(ifindex, meta);
        (key, src_is_low)
    }

    /// [`SessionKey::of`] in place (the kernel keeps keys off its small stack).
    #[inline(always)]
    pub fn set(&mut self, ifindex: u32, meta: &PacketMeta) -> bool {
        let (sport, dport) = flow_ports(meta);
        self.set_between(ifindex, meta.family, meta.protocol, (&meta.src, sport), (&meta.dst, dport))
    }

    /// [`SessionKey::between`] in place; returns whether `src` is the low end.
    #[inline(always)]
    pub fn set_between(
        &mut self,
        ifindex: u32,
        family: u8,
        protocol: u8,
        src: (&[u8; 16], u16),
        dst: (&[u8; 16], u16),
    ) -> bool {
        // Addresses compared as big-endian integers: the same order as bytewise, without
        // the byte loop (a memcmp call) it compiles to on the BPF target.
        let src_is_low = (u128::from_be_bytes(*src.0), src.1) <= (u128::from_be_bytes(*dst.0), dst.1);
        let (low, high) = if src_is_low { (src, dst) } else { (dst, src) };
        self.ifindex = ifindex;
        self.family = family;
        self.protocol = protocol;
        self._pad = [0; 2];
        self.low_addr = *low.0;
        self.high_addr = *high.0;
        self.low_port = low.1;
        self.high_port = high.1;
        src_is_low
    }

    /// The end that opened the flow and the other one, given `Session::opener_is_low`.
    pub fn ends(&self, opener_is_low: bool) -> (End, End) {
        let low = (self.low_addr, self.low_port);
        let high = (self.high_addr, self.high_port);
        if opener_is_low { (low, high) } else { (high, low) }
    }
}

/// The ports a flow is keyed by, (source, destination): TCP/UDP ports; for ICMP echo the
/// identifier X at the requester's end and its complement !X at the responder's, so a
/// request has (X, !X) and its reply (!X, X); 0 for other ICMP messages and protocols
/// without ports.
#[inline(always)]
pub fn flow_ports(meta: &PacketMeta) -> (u16, u16) {
    match meta.protocol {
        ip_proto::TCP | ip_proto::UDP => (meta.src_port, meta.dst_port),
        ip_proto::ICMP | ip_proto::ICMPV6 if belongs_to_session(meta) => {
            if is_echo_request(meta) {
                (meta.icmp_id, !meta.icmp_id)
            } else {
                (!meta.icmp_id, meta.icmp_id)
            }
        }
        _ => (0, 0),
    }
}

/// The echo identifier of an ICMP or ICMPv6 echo session, from its key and which end
/// opened it (the requester's port, see [`flow_ports`]).
pub fn echo_identifier(key: &SessionKey, opener_is_low: bool) -> u16 {
    if opener_is_low { key.low_port } else { key.high_port }
}

/// A session's value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Session {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) of the latest packet.
    pub last_seen_ns: u64,
    pub created_ns: u64,
    /// Packets in both directions.
    pub packets: u64,
    /// The rule that admitted the flow (0 for intra-group or default steps).
    pub rule_id: u32,
    /// The interface's rule-set generation when the flow was admitted or last re-checked.
    pub generation: u32,
    /// One of [`state`].
    pub state: u8,
    /// 1 when the opener is the key's low end.
    pub opener_is_low: u8,
    /// `stats::HOOK_INGRESS` or `stats::HOOK_EGRESS`: the direction of the opening packet.
    pub opened_on: u8,
    /// The step that admitted the flow.
    pub step: u8,
    /// Which table holds it ([`table`]: opening, assured, or about to move).
    pub assured: u8,
    /// Which of the TCP sequence anchors below are known ([`anchor`] bits).
    pub anchors: u8,
    pub _pad: [u8; 2],
    /// The acknowledgement number of the instance's latest segment (egress): where its
    /// receive window starts, which an arriving RST or FIN must fall near
    /// ([`tcp_plausible`]).
    pub instance_ack: u32,
    /// The instance's SYN's sequence number + 1, when the instance opened the flow: what
    /// an arriving RST must acknowledge before the handshake is done.
    pub instance_syn: u32,
}

/// Key of the fragment table: a datagram's addresses, protocol and identification.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentKey {
    pub ifindex: u32,
    pub family: u8,
    pub protocol: u8,
    pub _pad: [u8; 2],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
}

impl FragmentKey {
    #[inline(always)]
    pub fn of(ifindex: u32, meta: &PacketMeta) -> Self {
        Self {
            ifindex,
            family: meta.family,
            protocol: meta.protocol,
            _pad: [0; 2],
            src: meta.src,
            dst: meta.dst,
            id: meta.frag_id,
        }
    }
}

/// The verdict of a datagram's first fragment, applied to the following ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentVerdict {
    pub seen_ns: u64,
    pub rule_id: u32,
    pub verdict: u8,
    pub step: u8,
    pub _pad: [u8; 2],
}

/// How long a first fragment's verdict is remembered (the IPv4/IPv6 reassembly timeout).
pub const FRAGMENT_TIMEOUT_NS: u64 = 30 * SECOND;

/// True when `meta` is the first fragment of a fragmented datagram.
#[inline(always)]
pub fn is_first_fragment(meta: &PacketMeta) -> bool {
    meta.fragment == fragment::FIRST
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C), integer fields only, no implicit padding (asserted in tests).
    unsafe impl aya::Pod for super::SessionKey {}
    unsafe impl aya::Pod for super::Session {}
    unsafe impl aya::Pod for super::Timeouts {}
    unsafe impl aya::Pod for super::FragmentKey {}
    unsafe impl aya::Pod for super::FragmentVerdict {}
}

#[cfg(test)]
mod tests;
