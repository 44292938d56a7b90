//! Seeded packet sequences for differential tests of sessions: the kernel programs and the
//! stateful reference model ([`sgctl::policy::eval::stateful`]) see the same packets and must
//! report the same verdict, step and rule for each.
//!
//! A [`SessionCase`] starts from a random rule file ([`crate::r#gen::case`]) and uses its
//! first interface only (the kernel test runs everything on one ifindex). Its steps are
//! realistic flows, interleaved: TCP handshakes, data, closes by either side, simultaneous
//! closes, resets, tuple reuse, segments of connections never seen opening; UDP exchanges; ICMP/ICMPv6 echo with
//! random identifiers; GRE and other protocols both ways. Between them: replies whose
//! opening packet was never sent, ICMP errors quoting a packet of a flow (related) or of
//! an unknown flow, neighbour discovery, and rule changes (another random rule file with
//! the same interface names, or the same one again: a generation bump, except for the
//! same file again, which changes nothing).
//!
//! Every packet comes with its frame, the [`PacketMeta`] the kernel parser must extract
//! from it, and for ICMP errors the quoted packet as the kernel parses it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sg_common::session::{RECEIVE_AHEAD, RECEIVE_BEHIND};
use sg_common::{PacketMeta, Timeouts, family, ip_proto};
use sgctl::policy::addr::addr_to_bytes;
use sgctl::policy::config::{Config, Direction, InterfaceBinding};
use sgctl::policy::eval::PacketTuple;
use sgctl::policy::eval::stateful::{Outcome, Tracker};

use crate::frames::{self, Frag4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::r#gen::{self as generator, Case, GenOptions, Rng};
use crate::testrun::frame_with;

/// TCP PSH, for data segments.
pub const TCP_PSH: u8 = 0x08;

/// Bounds of the sequences [`session_case`] writes.
#[derive(Debug, Clone)]
pub struct SessionGenOptions {
    /// Rule files (the first and any replacement).
    pub rules: GenOptions,
    /// Steps (packets and rule changes) per case.
    pub steps: usize,
    /// At most this many rule changes per case.
    pub max_config_changes: usize,
}

impl Default for SessionGenOptions {
    fn default() -> Self {
        SessionGenOptions { rules: GenOptions::default(), steps: 60, max_config_changes: 3 }
    }
}

/// A packet sequence over one interface, with the rule files it switches between.
#[derive(Debug, Clone)]
pub struct SessionCase {
    pub seed: u64,
    /// `configs[0]` is in force first; [`Step::Apply`] switches. All have the same
    /// interface names; only the first interface's binding is used.
    pub configs: Vec<Case>,
    pub steps: Vec<Step>,
}

/// One step of a sequence.
#[derive(Debug, Clone)]
pub enum Step {
    /// Apply `configs[index]` (its first interface): a generation bump, unless it is the
    /// rule file already in force (then the apply keeps every rule set and switches
    /// nothing).
    Apply(usize),
    Packet(Box<SeqPacket>),
}

/// A packet of a sequence.
#[derive(Debug, Clone)]
pub struct SeqPacket {
    pub direction: Direction,
    /// Outer addresses, protocol and ports (0 unless TCP or UDP).
    pub tuple: PacketTuple,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// The ICMP identifier field as written (echo only; 0 otherwise).
    pub icmp_id: u16,
    /// What the kernel parser must extract from `frame`.
    pub meta: PacketMeta,
    /// For an ICMP error, the quoted packet as the kernel parses it; `None` when the
    /// packet is not an error or its quote is too short to parse.
    pub embedded: Option<PacketMeta>,
    pub frame: Vec<u8>,
    /// What the packet is in the sequence: `flow 3 opener`, `orphan reply`, ...
    pub what: String,
}

impl SessionCase {
    pub fn config(&self, index: usize) -> &Config {
        &self.configs[index].config
    }

    /// The binding the sequence runs on, in `configs[index]`.
    pub fn binding(&self, index: usize) -> &InterfaceBinding {
        &self.config(index).interfaces[0]
    }

    /// A model at the start of the sequence (default timeouts).
    pub fn tracker(&self) -> Tracker<'_> {
        Tracker::new(self.config(0), Timeouts::default())
    }

    /// Runs the model alone over the sequence on `ifindex`, the clock starting at
    /// `start_ns` and advancing `tick_ns` per packet; `None` for rule changes.
    pub fn model_outcomes(&self, ifindex: u32, start_ns: u64, tick_ns: u64) -> Vec<Option<Outcome>> {
        let mut tracker = self.tracker();
        let mut current = 0;
        let mut now = start_ns;
        self.steps
            .iter()
            .map(|step| match step {
                Step::Apply(index) => {
                    tracker.replace_config(self.config(*index));
                    current = *index;
                    None
                }
                Step::Packet(p) => {
                    now += tick_ns;
                    let binding = self.binding(current);
                    Some(tracker.packet_with_embedded(binding, ifindex, p.direction, &p.meta, p.embedded.as_ref(), now))
                }
            })
            .collect()
    }

    /// The rule files, each headed by its index and seed.
    pub fn configs_text(&self) -> String {
        self.configs
            .iter()
            .enumerate()
            .map(|(i, case)| format!("--- config #{i} (rule-file seed {}) ---\n{}", case.seed, case.toml))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Apply(index) => write!(f, "apply config #{index}"),
            Step::Packet(p) => p.fmt(f),
        }
    }
}

impl fmt::Display for SeqPacket {
    /// `egress tcp 198.18.0.1 port 40000 -> 198.18.0.2 port 80 [SYN] (flow 3 opener)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.tuple;
        write!(f, "{} {} {}", self.direction, sgctl::policy::config::protocol_name(t.protocol), t.src)?;
        if has_ports(t.protocol) {
            write!(f, " port {}", t.src_port)?;
        }
        write!(f, " -> {}", t.dst)?;
        if has_ports(t.protocol) {
            write!(f, " port {}", t.dst_port)?;
        }
        match t.protocol {
            ip_proto::TCP => write!(f, " [{}]", flags_text(self.tcp_flags))?,
            ip_proto::ICMP | ip_proto::ICMPV6 => {
                write!(f, " [type {} code {} id {}]", self.icmp_type, self.icmp_code, self.icmp_id)?
            }
            _ => {}
        }
        if let Some(q) = &self.embedded {
            let (src, dst) = (addr_of(q.family, &q.src), addr_of(q.family, &q.dst));
            write!(
                f,
                " quoting protocol {} {src} port {} -> {dst} port {} id {}",
                q.protocol, q.src_port, q.dst_port, q.icmp_id
            )?;
        }
        write!(f, " ({})", self.what)
    }
}

/// `SYN+ACK`, `none` for no flags.
pub fn flags_text(flags: u8) -> String {
    let names = [(TCP_SYN, "SYN"), (TCP_FIN, "FIN"), (TCP_RST, "RST"), (TCP_PSH, "PSH"), (TCP_ACK, "ACK")];
    let parts: Vec<&str> = names.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, name)| *name).collect();
    if parts.is_empty() { "none".to_string() } else { parts.join("+") }
}

fn has_ports(protocol: u8) -> bool {
    matches!(protocol, ip_proto::TCP | ip_proto::UDP)
}

fn addr_of(fam: u8, bytes: &[u8; 16]) -> IpAddr {
    sgctl::policy::addr::addr_from_bytes(fam, bytes)
}

/// Whether `icmp_type` is an echo request or reply of `protocol` (ICMP 8/0, ICMPv6
/// 128/129): the only messages whose identifier the parser reads.
pub fn is_echo(protocol: u8, icmp_type: u8) -> bool {
    match protocol {
        ip_proto::ICMP => matches!(icmp_type, 0 | 8),
        ip_proto::ICMPV6 => matches!(icmp_type, 128 | 129),
        _ => false,
    }
}

/// The [`PacketMeta`] the kernel parses from `testrun::frame_with(tuple, tcp_flags,
/// icmp_type, icmp_id)` (ICMP code 0; other codes: set `icmp_code` afterwards).
pub fn meta_of(tuple: &PacketTuple, tcp_flags: u8, icmp_type: u8, icmp_id: u16) -> PacketMeta {
    let mut meta = PacketMeta {
        family: if tuple.src.is_ipv4() { family::IPV4 } else { family::IPV6 },
        protocol: tuple.protocol,
        src: addr_to_bytes(tuple.src),
        dst: addr_to_bytes(tuple.dst),
        ..PacketMeta::default()
    };
    match tuple.protocol {
        ip_proto::TCP => {
            meta.src_port = tuple.src_port;
            meta.dst_port = tuple.dst_port;
            meta.tcp_flags = tcp_flags;
        }
        ip_proto::UDP => {
            meta.src_port = tuple.src_port;
            meta.dst_port = tuple.dst_port;
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            meta.icmp_type = icmp_type;
            if is_echo(tuple.protocol, icmp_type) {
                meta.icmp_id = icmp_id;
            }
        }
        // `frame_with` carries IPv4 in GRE.
        ip_proto::GRE => meta.gre_proto = 0x0800,
        _ => {}
    }
    meta
}

/// The packet going the other way: addresses and ports swapped.
pub fn reversed(tuple: &PacketTuple) -> PacketTuple {
    PacketTuple {
        src: tuple.dst,
        dst: tuple.src,
        protocol: tuple.protocol,
        src_port: tuple.dst_port,
        dst_port: tuple.src_port,
    }
}

pub fn opposite(direction: Direction) -> Direction {
    match direction {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    }
}

impl SeqPacket {
    /// An ordinary packet, framed by [`frame_with`].
    pub fn new(
        direction: Direction,
        tuple: PacketTuple,
        tcp_flags: u8,
        icmp_type: u8,
        icmp_id: u16,
        what: impl Into<String>,
    ) -> Self {
        let is_icmp = matches!(tuple.protocol, ip_proto::ICMP | ip_proto::ICMPV6);
        let tcp_flags = if tuple.protocol == ip_proto::TCP { tcp_flags } else { 0 };
        let (icmp_type, icmp_id) = if is_icmp { (icmp_type, icmp_id) } else { (0, 0) };
        SeqPacket {
            direction,
            tuple,
            tcp_flags,
            icmp_type,
            icmp_code: 0,
            icmp_id,
            meta: meta_of(&tuple, tcp_flags, icmp_type, icmp_id),
            embedded: None,
            frame: frame_with(&tuple, tcp_flags, icmp_type, icmp_id),
            what: what.into(),
        }
    }

    /// Writes a TCP segment's sequence and acknowledgement numbers into its frame and
    /// meta (frames of [`SeqPacket::new`]: no VLAN tag, no IP options or extensions).
    pub fn set_tcp_numbers(&mut self, seq: u32, ack: u32) {
        assert_eq!(self.tuple.protocol, ip_proto::TCP, "{}", self.what);
        let at = 14 + if self.tuple.src.is_ipv4() { usize::from(self.frame[14] & 0x0f) * 4 } else { 40 };
        frames::set_tcp_numbers(&mut self.frame[at..], seq, ack);
        self.meta.tcp_seq = seq;
        self.meta.tcp_ack = ack;
    }

    /// The IP packet inside the frame (the frames of [`SeqPacket::new`] have no VLAN tag).
    pub fn ip_packet(&self) -> &[u8] {
        &self.frame[14..]
    }
}

/// An ICMP (IPv4) or ICMPv6 error from `src` to `dst` quoting `quoted`: the quoted
/// packet's IP header (with `ipv4_options` added to an IPv4 one, padded to 4 bytes) and
/// the first `transport_bytes` of its transport header (fewer if it has fewer; `None`:
/// all of it). `quoted` must be of the same family as `src` and `dst`.
pub fn icmp_error(
    direction: Direction,
    (src, dst): (IpAddr, IpAddr),
    (icmp_type, icmp_code): (u8, u8),
    quoted: &SeqPacket,
    ipv4_options: &[u8],
    transport_bytes: Option<usize>,
    what: impl Into<String>,
) -> SeqPacket {
    let protocol = if src.is_ipv4() { ip_proto::ICMP } else { ip_proto::ICMPV6 };
    let tuple = PacketTuple { src, dst, protocol, src_port: 0, dst_port: 0 };
    let q = &quoted.tuple;
    let original = quoted.ip_packet();
    let (header, transport) = match (q.src, q.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let transport = &original[20..];
            let rebuilt = frames::ipv4(q.protocol, s.octets(), d.octets(), ipv4_options, Frag4::default(), transport);
            let header_len = usize::from(rebuilt[0] & 0x0f) * 4;
            (rebuilt[..header_len].to_vec(), transport)
        }
        (IpAddr::V6(_), IpAddr::V6(_)) => (original[..40].to_vec(), &original[40..]),
        _ => panic!("mixed address families in {q:?}"),
    };
    let kept = transport_bytes.map_or(transport.len(), |n| n.min(transport.len()));
    let mut quote = header;
    quote.extend_from_slice(&transport[..kept]);
    // The parser reads 8 bytes of the quoted transport header or gives up.
    let embedded = (kept >= 8).then(|| quoted_meta(quoted));
    let body = frames::icmp(icmp_type, icmp_code, 0, 0, &quote);
    let frame = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => frames::ether(
            frames::ETHERTYPE_IPV4,
            &[],
            &frames::ipv4(protocol, s.octets(), d.octets(), &[], Frag4::default(), &body),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frames::ether(frames::ETHERTYPE_IPV6, &[], &frames::ipv6(protocol, s.octets(), d.octets(), &body))
        }
        _ => panic!("mixed address families in {src} -> {dst}"),
    };
    let mut meta = meta_of(&tuple, 0, icmp_type, 0);
    meta.icmp_code = icmp_code;
    SeqPacket {
        direction,
        tuple,
        tcp_flags: 0,
        icmp_type,
        icmp_code,
        icmp_id: 0,
        meta,
        embedded,
        frame,
        what: what.into(),
    }
}

/// A quoted packet as the kernel parses a quote: addresses and protocol; TCP/UDP ports;
/// for ICMP, the type and the identifier field (bytes 4-5, read whatever the type).
fn quoted_meta(quoted: &SeqPacket) -> PacketMeta {
    let q = &quoted.tuple;
    let mut meta = PacketMeta {
        family: if q.src.is_ipv4() { family::IPV4 } else { family::IPV6 },
        protocol: q.protocol,
        src: addr_to_bytes(q.src),
        dst: addr_to_bytes(q.dst),
        ..PacketMeta::default()
    };
    match q.protocol {
        ip_proto::TCP | ip_proto::UDP => {
            meta.src_port = q.src_port;
            meta.dst_port = q.dst_port;
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            meta.icmp_type = quoted.icmp_type;
            meta.icmp_id = quoted.icmp_id;
        }
        _ => {}
    }
    meta
}

/// The kernel's session clock, read from userspace.
pub use sgctl::clock::monotonic_ns;

// ----- sequences -----

/// One flow of a sequence and the packets it has left to send.
struct Flow {
    id: usize,
    /// The direction of the opener's packets.
    direction: Direction,
    /// From the opener to the responder.
    tuple: PacketTuple,
    icmp_id: u16,
    /// (from the opener, TCP flags) of the packets to come.
    script: Vec<(bool, u8)>,
    next: usize,
    /// TCP sequence numbers: its own stream, so a sequence does not shift when they
    /// change. Every segment the instance sends carries `instance_seq` and
    /// `instance_ack`; an arriving RST or FIN a sequence number near `instance_ack` or
    /// far from it, and a RST an acknowledgement of `instance_seq` + 1 or not
    /// (`sg_common::session::tcp_plausible`).
    numbers: Rng,
    instance_seq: u32,
    instance_ack: u32,
}

const OPENER: bool = true;
const RESPONDER: bool = false;
/// In a datagram script: an ICMP echo packet of the other type than its side sends in
/// the flow (a request from the responder, a reply from the opener). Not a TCP flag:
/// datagram scripts carry no flags otherwise.
const SWAP_ECHO: u8 = 0x80;

impl Flow {
    fn packet(&self, from_opener: bool, flags: u8, what: &str) -> SeqPacket {
        let (direction, tuple) =
            if from_opener { (self.direction, self.tuple) } else { (opposite(self.direction), reversed(&self.tuple)) };
        // ICMP echo: a request from the opener, a reply from the responder, unless the
        // script swaps them (the responder's own ping with the same identifier).
        let icmp_type = echo_type(self.tuple.protocol, from_opener != (flags & SWAP_ECHO != 0));
        let side = if from_opener { "opener" } else { "responder" };
        SeqPacket::new(direction, tuple, flags, icmp_type, self.icmp_id, format!("flow {} {side}{what}", self.id))
    }

    /// The sequence and acknowledgement numbers of a TCP segment of this flow going
    /// `direction` with `flags` (see [`Flow::numbers`]).
    fn tcp_numbers(&mut self, direction: Direction, flags: u8) -> (u32, u32) {
        if direction == Direction::Egress {
            return (self.instance_seq, self.instance_ack);
        }
        if flags & (TCP_RST | TCP_FIN) == 0 {
            return (0, 0);
        }
        let r = &mut self.numbers;
        let seq = match r.below(5) {
            0 => self.instance_ack,
            1 => self.instance_ack.wrapping_add(r.below(u64::from(RECEIVE_AHEAD) + 2) as u32),
            2 => self.instance_ack.wrapping_sub(r.below(u64::from(RECEIVE_BEHIND) + 2) as u32),
            3 => self.instance_ack.wrapping_add(1 << 31),
            _ => r.next_u64() as u32,
        };
        let ack = if r.chance(0.7) { self.instance_seq.wrapping_add(1) } else { r.next_u64() as u32 };
        (seq, ack)
    }
}

/// Echo request (from the opener) or reply (from the responder) of `protocol`.
fn echo_type(protocol: u8, request: bool) -> u8 {
    match (protocol, request) {
        (ip_proto::ICMP, true) => 8,
        (ip_proto::ICMP, false) => 0,
        (_, true) => 128,
        (_, false) => 129,
    }
}

/// A TCP conversation: handshake (or none: a connection already open), data, a close of some kind,
/// perhaps a reuse of the tuple, with the odd stray segment.
fn tcp_script(rng: &mut Rng) -> Vec<(bool, u8)> {
    let mut s = Vec::new();
    if rng.chance(0.1) {
        // Mid-stream, as after a restart: only a SYN opens a session, so this flow never
        // gets one.
        s.push((OPENER, TCP_ACK | TCP_PSH));
    } else {
        s.push((OPENER, TCP_SYN));
        match rng.weighted(&[80, 10, 10]) {
            0 => s.extend([(RESPONDER, TCP_SYN | TCP_ACK), (OPENER, TCP_ACK)]),
            // Refused.
            1 => s.push((RESPONDER, TCP_RST | TCP_ACK)),
            // Retransmitted, then answered.
            _ => s.extend([(OPENER, TCP_SYN), (RESPONDER, TCP_SYN | TCP_ACK), (OPENER, TCP_ACK)]),
        }
    }
    for _ in 0..rng.between(0, 4) {
        let flags = if rng.chance(0.7) { TCP_PSH | TCP_ACK } else { TCP_ACK };
        s.push((rng.chance(0.5), flags));
    }
    match rng.weighted(&[30, 20, 15, 15, 20]) {
        0 => s.extend([
            (OPENER, TCP_FIN | TCP_ACK),
            (RESPONDER, TCP_ACK),
            (RESPONDER, TCP_FIN | TCP_ACK),
            (OPENER, TCP_ACK),
        ]),
        1 => s.extend([
            (RESPONDER, TCP_FIN | TCP_ACK),
            (OPENER, TCP_ACK),
            (OPENER, TCP_FIN | TCP_ACK),
            (RESPONDER, TCP_ACK),
        ]),
        2 => {
            // Simultaneous close.
            let first = rng.chance(0.5);
            s.extend([(first, TCP_FIN | TCP_ACK), (!first, TCP_FIN | TCP_ACK), (first, TCP_ACK), (!first, TCP_ACK)]);
        }
        3 => s.push((rng.chance(0.5), if rng.chance(0.5) { TCP_RST } else { TCP_RST | TCP_ACK })),
        _ => {}
    }
    if rng.chance(0.15) {
        // A connection attempt the session must not carry: from the responder (perhaps
        // answered by the opener), or from the opener on a connection that is open.
        let at = rng.between(1, s.len() as u64) as usize;
        match rng.weighted(&[40, 30, 30]) {
            0 => s.insert(at, (RESPONDER, TCP_SYN)),
            1 => {
                let reverse_handshake = [(RESPONDER, TCP_SYN), (OPENER, TCP_SYN | TCP_ACK), (RESPONDER, TCP_ACK)];
                s.splice(at..at, reverse_handshake);
            }
            _ => s.insert(at, (OPENER, TCP_SYN)),
        }
    }
    if rng.chance(0.2) {
        // The opener reuses the tuple.
        s.extend([(OPENER, TCP_SYN), (RESPONDER, TCP_SYN | TCP_ACK), (OPENER, TCP_ACK), (OPENER, TCP_PSH | TCP_ACK)]);
    }
    if rng.chance(0.15) {
        let stray = *rng.pick(&[TCP_SYN, TCP_SYN | TCP_ACK, TCP_FIN, TCP_RST | TCP_ACK, TCP_ACK, 0, TCP_SYN | TCP_FIN]);
        let at = rng.between(1, s.len() as u64) as usize;
        s.insert(at, (rng.chance(0.5), stray));
    }
    s
}

/// UDP, ICMP echo, GRE and the rest: the opener first, then either side.
fn datagram_script(rng: &mut Rng) -> Vec<(bool, u8)> {
    let mut s = vec![(OPENER, 0)];
    if rng.chance(0.8) {
        s.push((RESPONDER, 0));
    }
    for _ in 0..rng.between(0, 4) {
        // For ICMP echo, now and then the other type: the responder pings the opener with
        // the flow's identifier, or the opener sends a reply (other protocols ignore it).
        let swapped = if rng.chance(0.2) { SWAP_ECHO } else { 0 };
        s.push((rng.chance(0.5), swapped));
    }
    s
}

struct Writer<'o> {
    rng: Rng,
    opts: &'o SessionGenOptions,
    names: Vec<String>,
    configs: Vec<Case>,
    current: usize,
    flows: Vec<Flow>,
    /// Packets sent so far that an ICMP error may quote (no errors, no ND).
    quotable: Vec<SeqPacket>,
    steps: Vec<Step>,
    changes: usize,
}

/// Generates a sequence from `seed` within `opts`.
pub fn session_case(seed: u64, opts: &SessionGenOptions) -> SessionCase {
    let first = generator::case(seed, &opts.rules, 0);
    let names = first.config.interfaces.iter().map(|i| i.name.clone()).collect();
    let mut w = Writer {
        rng: Rng::new(seed ^ 0x5345_5353_494f_4e53),
        opts,
        names,
        configs: vec![first],
        current: 0,
        flows: Vec::new(),
        quotable: Vec::new(),
        steps: Vec::new(),
        changes: 0,
    };
    while w.steps.len() < opts.steps {
        match w.rng.weighted(&[22, 45, 8, 11, 6, 4, 4]) {
            0 => w.open_flow(),
            1 => w.continue_flow(),
            2 => w.orphan(),
            3 => w.error(),
            4 => w.neighbour_discovery(),
            5 => w.stateless_probe(),
            _ => w.change_config(),
        }
    }
    SessionCase { seed, configs: w.configs, steps: w.steps }
}

impl Writer<'_> {
    fn config(&self) -> &Config {
        &self.configs[self.current].config
    }

    fn direction(&mut self) -> Direction {
        if self.rng.chance(0.5) { Direction::Ingress } else { Direction::Egress }
    }

    /// A packet biased to the current rules of the interface, in `direction`.
    fn tuple(&mut self, direction: Direction) -> PacketTuple {
        let cfg = &self.configs[self.current].config;
        generator::packet(cfg, &cfg.interfaces[0], direction, &mut self.rng)
    }

    fn icmp_id(&mut self) -> u16 {
        if self.rng.chance(0.03) { 0 } else { self.rng.between(1, 65535) as u16 }
    }

    fn emit(&mut self, packet: SeqPacket, quotable: bool) {
        if quotable {
            self.quotable.push(packet.clone());
        }
        self.steps.push(Step::Packet(Box::new(packet)));
    }

    fn open_flow(&mut self) {
        let direction = self.direction();
        let tuple = self.tuple(direction);
        let icmp_id = self.icmp_id();
        let script =
            if tuple.protocol == ip_proto::TCP { tcp_script(&mut self.rng) } else { datagram_script(&mut self.rng) };
        let mut numbers = Rng::new(self.rng.next_u64());
        let (instance_seq, instance_ack) = (numbers.next_u64() as u32, numbers.next_u64() as u32);
        let id = self.flows.len();
        self.flows.push(Flow { id, direction, tuple, icmp_id, script, next: 0, numbers, instance_seq, instance_ack });
        let last = self.flows.len() - 1;
        self.advance(last);
    }

    fn continue_flow(&mut self) {
        let live: Vec<usize> =
            (0..self.flows.len()).filter(|&f| self.flows[f].next < self.flows[f].script.len()).collect();
        match self.rng.pick_opt(&live) {
            Some(&flow) => self.advance(flow),
            None => self.open_flow(),
        }
    }

    /// Sends the next packet of flow `index`.
    fn advance(&mut self, index: usize) {
        let flow = &mut self.flows[index];
        let (from_opener, flags) = flow.script[flow.next];
        let what = if flow.next == 0 { " (opening)" } else { "" };
        flow.next += 1;
        let mut packet = flow.packet(from_opener, flags, what);
        if packet.tuple.protocol == ip_proto::TCP {
            let (seq, ack) = flow.tcp_numbers(packet.direction, flags);
            packet.set_tcp_numbers(seq, ack);
        }
        self.emit(packet, true);
    }

    /// A reply whose opening packet was never sent.
    fn orphan(&mut self) {
        let direction = self.direction();
        let tuple = self.tuple(direction);
        let flags =
            *self.rng.pick(&[TCP_SYN | TCP_ACK, TCP_ACK, TCP_PSH | TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST | TCP_ACK]);
        let icmp_id = self.icmp_id();
        let packet = SeqPacket::new(
            opposite(direction),
            reversed(&tuple),
            flags,
            echo_type(tuple.protocol, false),
            icmp_id,
            "reply without a session",
        );
        self.emit(packet, true);
    }

    /// A packet of a random kind, not part of a flow: SYN, echo request or any TCP flags.
    fn stateless_probe(&mut self) {
        let direction = self.direction();
        let tuple = self.tuple(direction);
        let flags = *self.rng.pick(&[TCP_SYN, TCP_ACK, TCP_RST, TCP_FIN, 0, TCP_SYN | TCP_ACK]);
        let request = self.rng.chance(0.8);
        let icmp_id = self.icmp_id();
        let packet = SeqPacket::new(direction, tuple, flags, echo_type(tuple.protocol, request), icmp_id, "probe");
        self.emit(packet, true);
    }

    /// An ICMP error quoting a packet sent earlier, or one of a flow never seen.
    fn error(&mut self) {
        let (quoted, about) = match self.quotable.len() {
            n if n > 0 && self.rng.chance(0.75) => {
                let index = self.rng.index(n);
                (self.quotable[index].clone(), "an earlier packet")
            }
            _ => {
                let direction = self.direction();
                let tuple = self.tuple(direction);
                let icmp_id = self.icmp_id();
                let request = echo_type(tuple.protocol, true);
                (SeqPacket::new(direction, tuple, TCP_SYN, request, icmp_id, "never sent"), "an unknown flow")
            }
        };
        let v6 = quoted.tuple.src.is_ipv6();
        let direction = opposite(quoted.direction);
        let dst = quoted.tuple.src;
        let src = match self.rng.weighted(&[50, 25, 25]) {
            0 => quoted.tuple.dst,
            1 => {
                let peer = self.tuple(direction).peer(direction);
                if peer.is_ipv6() == v6 { peer } else { router(&mut self.rng, v6) }
            }
            _ => router(&mut self.rng, v6),
        };
        let kind = if v6 {
            *self.rng.pick(&[(1, 4), (1, 4), (1, 4), (1, 1), (2, 0), (3, 0), (4, 0)])
        } else {
            *self.rng.pick(&[(3, 3), (3, 3), (3, 3), (3, 1), (3, 4), (11, 0), (12, 0)])
        };
        let options: &[u8] = if !v6 && self.rng.chance(0.2) { &[1, 1, 1, 1, 1, 1, 1, 0] } else { &[] };
        let transport = match self.rng.weighted(&[70, 20, 10]) {
            0 => Some(8),
            1 => None,
            _ => Some(self.rng.between(0, 7) as usize),
        };
        let what = format!("ICMP error about {about}: {}", quoted.what);
        let packet = icmp_error(direction, (src, dst), kind, &quoted, options, transport, what);
        self.emit(packet, false);
    }

    fn neighbour_discovery(&mut self) {
        let cfg = self.config();
        let members: Vec<IpAddr> = cfg.interfaces[0]
            .groups
            .iter()
            .flat_map(|&g| cfg.groups[g].members.iter().copied())
            .filter(IpAddr::is_ipv6)
            .collect();
        let local = match self.rng.pick_opt(&members) {
            Some(&addr) if self.rng.chance(0.6) => addr,
            _ => IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, self.rng.between(1, 0xffff) as u16)),
        };
        let remote = match self.rng.index(3) {
            0 => IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)),
            1 => IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, self.rng.between(0, 0xffff) as u16)),
            _ => IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
        };
        let direction = self.direction();
        let (src, dst) = match direction {
            Direction::Egress => (local, remote),
            Direction::Ingress => (remote, local),
        };
        // Neighbour discovery, and multicast listener discovery now and then.
        let icmp_type = *self.rng.pick(&[135, 135, 136, 136, 133, 134, 130, 131, 132, 143]);
        let tuple = PacketTuple { src, dst, protocol: ip_proto::ICMPV6, src_port: 0, dst_port: 0 };
        self.emit(SeqPacket::new(direction, tuple, 0, icmp_type, 0, "neighbour discovery"), false);
    }

    /// Applies the same rule file again, or another with the same interface names.
    fn change_config(&mut self) {
        if self.changes >= self.opts.max_config_changes {
            return self.continue_flow();
        }
        self.changes += 1;
        if self.rng.chance(0.3) {
            self.steps.push(Step::Apply(self.current));
            return;
        }
        for _ in 0..64 {
            let seed = self.rng.next_u64();
            let case = generator::case(seed, &self.opts.rules, 0);
            if case.config.interfaces.iter().map(|i| &i.name).eq(self.names.iter()) {
                self.configs.push(case);
                self.current = self.configs.len() - 1;
                self.steps.push(Step::Apply(self.current));
                return;
            }
        }
        self.steps.push(Step::Apply(self.current));
    }
}

/// A router's address: in 192.0.2.0/24 or 2001:db8:ffff::/64.
fn router(rng: &mut Rng, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, rng.between(1, 0xffff) as u16))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, rng.between(1, 254) as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_deterministic_and_sized() {
        let opts = SessionGenOptions::default();
        let a = session_case(7, &opts);
        let b = session_case(7, &opts);
        assert_eq!(a.steps.len(), opts.steps);
        assert_eq!(
            a.steps.iter().map(ToString::to_string).collect::<Vec<_>>(),
            b.steps.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
        assert_eq!(a.configs.len(), b.configs.len());
    }

    #[test]
    fn meta_of_reads_ports_flags_and_echo_identifiers() {
        let tcp = PacketTuple {
            src: "198.18.0.1".parse().expect("address"),
            dst: "198.18.0.2".parse().expect("address"),
            protocol: ip_proto::TCP,
            src_port: 40000,
            dst_port: 80,
        };
        let meta = meta_of(&tcp, TCP_SYN, 8, 9);
        assert_eq!((meta.family, meta.src_port, meta.dst_port, meta.tcp_flags), (family::IPV4, 40000, 80, TCP_SYN));
        assert_eq!((meta.icmp_type, meta.icmp_id), (0, 0));
        assert_eq!(&meta.src[..4], &[198, 18, 0, 1]);
        let echo = PacketTuple { protocol: ip_proto::ICMP, src_port: 0, dst_port: 0, ..tcp };
        assert_eq!(meta_of(&echo, 0, 8, 9).icmp_id, 9);
        assert_eq!(meta_of(&echo, 0, 0, 9).icmp_id, 9);
        assert_eq!(meta_of(&echo, 0, 3, 9).icmp_id, 0, "only echo carries an identifier");
        let v6 = PacketTuple {
            src: "2001:db8::1".parse().expect("address"),
            dst: "2001:db8::2".parse().expect("address"),
            protocol: ip_proto::ICMPV6,
            src_port: 0,
            dst_port: 0,
        };
        let meta = meta_of(&v6, 0, 129, 4);
        assert_eq!((meta.family, meta.icmp_type, meta.icmp_id), (family::IPV6, 129, 4));
    }

    #[test]
    fn icmp_errors_quote_the_packet_they_name() {
        let tuple = PacketTuple {
            src: "198.18.0.1".parse().expect("address"),
            dst: "198.18.0.2".parse().expect("address"),
            protocol: ip_proto::UDP,
            src_port: 5353,
            dst_port: 53,
        };
        let sent = SeqPacket::new(Direction::Egress, tuple, 0, 0, 0, "sent");
        let router: IpAddr = "192.0.2.1".parse().expect("address");
        let error = icmp_error(Direction::Ingress, (router, tuple.src), (3, 3), &sent, &[1, 1, 1, 1], Some(8), "e");
        let ip = &error.frame[14..];
        // Outer IPv4 header, ICMP header, quoted header with one option word, 8 bytes.
        assert_eq!(ip.len(), 20 + 8 + 24 + 8);
        assert_eq!((ip[9], ip[20], ip[21]), (ip_proto::ICMP, 3, 3));
        let quote = &ip[28..];
        assert_eq!(quote[0], 0x46);
        assert_eq!(&quote[24..28], &[0x14, 0xe9, 0, 53]);
        let embedded = error.embedded.expect("parsable");
        assert_eq!((embedded.src_port, embedded.dst_port, embedded.protocol), (5353, 53, ip_proto::UDP));
        assert_eq!((error.meta.icmp_type, error.meta.icmp_code, error.meta.icmp_id), (3, 3, 0));
        // Too short a quote cannot be parsed.
        let short = icmp_error(Direction::Ingress, (router, tuple.src), (3, 3), &sent, &[], Some(4), "e");
        assert!(short.embedded.is_none());
        // IPv6: the quoted fixed header and the whole transport header.
        let v6 = PacketTuple {
            src: "2001:db8::1".parse().expect("address"),
            dst: "2001:db8::2".parse().expect("address"),
            protocol: ip_proto::ICMPV6,
            src_port: 0,
            dst_port: 0,
        };
        let ping = SeqPacket::new(Direction::Egress, v6, 0, 128, 0x77, "ping");
        let error = icmp_error(Direction::Ingress, (v6.dst, v6.src), (1, 4), &ping, &[], None, "e");
        assert_eq!(error.frame.len(), 14 + 40 + 8 + ping.ip_packet().len());
        let embedded = error.embedded.expect("parsable");
        assert_eq!((embedded.icmp_type, embedded.icmp_id), (128, 0x77));
    }
}
