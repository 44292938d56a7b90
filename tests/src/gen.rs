//! Seeded random rule files and packets, for differential tests of the compiler against
//! the reference evaluator and for benchmark rule sets.
//!
//! Everything is deterministic from a `u64` seed and needs nothing beyond the workspace
//! crates (the generator is a small splitmix64 [`Rng`]), so the library, integration tests
//! and benchmark binaries can all use it.
//!
//! [`case`] writes a small rule file exercising every feature of docs/rule-file.md (both
//! families, CIDRs of every length, group references with and without the account, prefix
//! lists, port ranges, source ports, priority ties, both policies, basic and advanced
//! groups, intra-group accept and isolation, local narrowing both ways, exact duplicates)
//! and packets biased to land on the edges of its rules. [`realistic_ruleset`] writes one
//! large interface's worth of rules for benchmarks.
//!
//! `gen` is a reserved keyword in edition 2024: the module is declared `pub mod r#gen;`
//! and used as `sg_tests::r#gen` (e.g. `use sg_tests::r#gen as generator;`).

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sgctl::policy::config::{Config, Direction, Family, GroupKind, InterfaceBinding, Peer, Protocol, Rule, parse_str};
use sgctl::policy::eval::PacketTuple;
use sgctl::policy::order::pooled_rules;

// ----- random numbers -----

/// A seeded pseudo-random generator (splitmix64): small, fast, and plenty for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn next_u128(&mut self) -> u128 {
        (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64())
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "Rng::between({lo}, {hi})");
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64(),
        }
    }

    /// Uniform in `0..len` (`len > 0`).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// A uniformly chosen item; panics on an empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    /// A uniformly chosen item, `None` for an empty slice.
    pub fn pick_opt<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() { None } else { Some(self.pick(items)) }
    }

    /// An index into `weights`, each chosen in proportion to its weight.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut roll = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if roll < u64::from(w) {
                return i;
            }
            roll -= u64::from(w);
        }
        unreachable!("roll below the total weight")
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.index(i + 1);
            items.swap(i, j);
        }
    }
}

// ----- public types -----

/// Bounds of the rule files [`case`] writes. Counts are drawn uniformly up to the bound.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// 1 to this many interfaces.
    pub interfaces: usize,
    /// 1 to this many groups of each interface's own (plus, sometimes, one shared with an
    /// earlier interface of the same type); at most 10 in all.
    pub max_groups_per_iface: usize,
    /// 0 to this many rules per group (before exact duplicates are collapsed).
    pub max_rules_per_group: usize,
    /// 0 to this many members per group.
    pub max_members_per_group: usize,
    /// 0 to this many groups bound to no interface (only referenced by rules).
    pub max_unbound_groups: usize,
    /// 0 to this many prefix lists.
    pub max_prefix_lists: usize,
    /// 0 to this many entries per prefix list.
    pub max_prefix_list_entries: usize,
}

impl Default for GenOptions {
    /// Small sets: 1-2 interfaces, 1-4 groups per interface, 0-12 rules per group.
    fn default() -> Self {
        GenOptions {
            interfaces: 2,
            max_groups_per_iface: 4,
            max_rules_per_group: 12,
            max_members_per_group: 4,
            max_unbound_groups: 2,
            max_prefix_lists: 3,
            max_prefix_list_entries: 6,
        }
    }
}

impl GenOptions {
    /// Larger sets (up to several hundred rules per interface and direction), so rule
    /// vectors span more than one 64-bit word.
    pub fn large() -> Self {
        GenOptions {
            interfaces: 2,
            max_groups_per_iface: 8,
            max_rules_per_group: 60,
            max_members_per_group: 8,
            max_unbound_groups: 3,
            max_prefix_lists: 4,
            max_prefix_list_entries: 12,
        }
    }
}

/// A generated rule file, its validated form and packets to try on it.
#[derive(Debug, Clone)]
pub struct Case {
    pub seed: u64,
    pub toml: String,
    pub config: Config,
    pub packets: Vec<Probe>,
}

/// A packet crossing one interface in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub iface: String,
    pub direction: Direction,
    pub packet: PacketTuple,
}

impl Probe {
    /// The address rules match: the source on ingress, the destination on egress.
    pub fn peer(&self) -> IpAddr {
        self.packet.peer(self.direction)
    }

    /// The instance's own address.
    pub fn local(&self) -> IpAddr {
        self.packet.local(self.direction)
    }
}

impl fmt::Display for Probe {
    /// `eth0 ingress protocol 6 198.18.0.1 port 40000 -> 198.18.0.10 port 80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.packet;
        write!(
            f,
            "{} {} protocol {} {} port {} -> {} port {} (peer {}, local {})",
            self.iface,
            self.direction,
            p.protocol,
            p.src,
            p.src_port,
            p.dst,
            p.dst_port,
            self.peer(),
            self.local()
        )
    }
}

/// Generates a rule file from `seed` within `opts`, and `packets` probes for it.
///
/// Panics (with the text and the errors) if the file does not validate: that is a bug of
/// the generator.
pub fn case(seed: u64, opts: &GenOptions, packets: usize) -> Case {
    let mut rng = Rng::new(seed);
    let toml = CaseWriter::new(&mut rng, opts).write();
    let config = parse_generated(&toml);
    let packets = probes(&config, &mut rng, packets);
    Case { seed, toml, config, packets }
}

/// Parses generated rule-file text; panics with the text and the errors if it is invalid.
pub fn parse_generated(toml: &str) -> Config {
    parse_str(toml, "generated.toml")
        .unwrap_or_else(|errors| panic!("generator bug: the generated rule file is invalid:\n{errors}\n---\n{toml}"))
}

/// `n` packets on random interfaces and directions of `cfg`, biased to hit its rules.
pub fn probes(cfg: &Config, rng: &mut Rng, n: usize) -> Vec<Probe> {
    if cfg.interfaces.is_empty() {
        return Vec::new();
    }
    (0..n)
        .map(|_| {
            let iface = rng.pick(&cfg.interfaces);
            let direction = if rng.chance(0.5) { Direction::Ingress } else { Direction::Egress };
            Probe { iface: iface.name.clone(), direction, packet: packet(cfg, iface, direction, rng) }
        })
        .collect()
}

/// A packet crossing `iface` in `dir`, biased to hit the rules and groups there: peers
/// from rule CIDRs (inside, at and just beyond their edges), group members and prefix-list
/// entries; locals from members and `destination`s; ports at range edges.
///
/// Source and destination are of one family; protocol 1 only with IPv4, 58 only with
/// IPv6, 0, 43, 44, 51 and 60 only with IPv4 (in IPv6 they are extension headers); ports
/// are 0 unless the protocol is tcp or udp; ICMP messages carry their key (type and
/// code) in `dst_port`, near the types and codes of the rules.
pub fn packet(cfg: &Config, iface: &InterfaceBinding, dir: Direction, rng: &mut Rng) -> PacketTuple {
    let rules = pooled_rules(cfg, iface, dir);
    let iface_members: Vec<IpAddr> = iface.groups.iter().flat_map(|&g| cfg.groups[g].members.iter().copied()).collect();
    let peer = match rng.weighted(&[40, 20, 10, 10, 20]) {
        0 => rng.pick_opt(&rules).and_then(|rule| sample_peer(cfg, &rule.peer, rng)),
        1 => rng.pick_opt(&iface_members).copied(),
        2 => {
            let all: Vec<IpAddr> = cfg.groups.iter().flat_map(|g| g.members.iter().copied()).collect();
            rng.pick_opt(&all).copied()
        }
        3 => {
            let all: Vec<&Rule> = cfg.rules().collect();
            rng.pick_opt(&all).and_then(|rule| sample_peer(cfg, &rule.peer, rng))
        }
        _ => None,
    };
    let peer = peer.unwrap_or_else(|| {
        let v6 = rng.chance(0.5);
        random_addr(rng, v6)
    });
    let v6 = peer.is_ipv6();

    let local_nets: Vec<Net> = rules
        .iter()
        .filter_map(|rule| rule.local.map(|net| Net::new(net.network(), net.prefix_len())))
        .filter(|net| net.v6 == v6)
        .collect();
    let local_members: Vec<IpAddr> = iface_members.iter().copied().filter(|a| a.is_ipv6() == v6).collect();
    let local = match rng.weighted(&[30, 50, 20]) {
        0 => rng.pick_opt(&local_nets).copied().map(|net| net.sample(rng)),
        1 => rng.pick_opt(&local_members).copied(),
        _ => None,
    };
    let local = local.unwrap_or_else(|| random_addr(rng, v6));

    let protocol = match rng.pick_opt(&rules) {
        Some(rule) if rng.chance(0.6) => rule.protocol.ip_proto().unwrap_or_else(|| random_protocol(rng)),
        _ => random_protocol(rng),
    };
    // In IPv6, 0 (hop-by-hop), 43, 44, 51 (AH) and 60 name extension headers the parser
    // walks, never the transport protocol.
    let protocol = match (protocol, v6) {
        (1, true) => 58,
        (58, false) => 1,
        (0 | 43 | 44 | 51 | 60, true) => 255,
        (p, _) => p,
    };
    let (src_port, dst_port) = if protocol == 1 || protocol == 58 {
        // The ICMP key (`PacketTuple`): a rule's type and code, one beside them, or another.
        let named: Vec<(u8, Option<u8>)> =
            rules.iter().filter_map(|r| r.icmp()).map(|m| (m.icmp_type, m.code)).collect();
        let (icmp_type, code) = match rng.pick_opt(&named) {
            Some(&(t, code)) if rng.chance(0.6) => match rng.index(4) {
                0 => (t, code.unwrap_or_else(|| icmp_code_of(rng))),
                1 => (t, code.map_or_else(|| icmp_code_of(rng), |c| c.wrapping_add(1))),
                2 => (t.wrapping_add(1), code.unwrap_or(0)),
                _ => (t.wrapping_sub(1), 255),
            },
            _ => (icmp_type_of(rng, v6), icmp_code_of(rng)),
        };
        // Neighbour discovery and MLD pass before the rules: not a classification probe.
        let icmp_type = if v6 && ((130..=136).contains(&icmp_type) || icmp_type == 143) { 137 } else { icmp_type };
        (0, sg_common::icmp_key(icmp_type, code))
    } else if protocol == 6 || protocol == 17 {
        let destination_ranges: Vec<(u16, u16)> =
            rules.iter().filter(|r| r.protocol.has_ports()).map(|r| (r.port_range.first, r.port_range.last)).collect();
        let source_ranges: Vec<(u16, u16)> =
            rules.iter().filter_map(|r| r.source_port_range).map(|r| (r.first, r.last)).collect();
        (sample_port(rng, &source_ranges, true), sample_port(rng, &destination_ranges, false))
    } else {
        (0, 0)
    };
    let (src, dst) = match dir {
        Direction::Ingress => (peer, local),
        Direction::Egress => (local, peer),
    };
    PacketTuple { src, dst, protocol, src_port, dst_port }
}

fn sample_peer(cfg: &Config, peer: &Peer, rng: &mut Rng) -> Option<IpAddr> {
    match peer {
        Peer::Cidr(net) => Some(Net::new(net.network(), net.prefix_len()).sample(rng)),
        Peer::Group { group_index } => rng.pick_opt(&cfg.groups[*group_index].members).copied(),
        Peer::PrefixList { list_index } => rng
            .pick_opt(&cfg.prefix_lists[*list_index].entries)
            .map(|net| Net::new(net.network(), net.prefix_len()).sample(rng)),
    }
}

fn random_protocol(rng: &mut Rng) -> u8 {
    *rng.pick(&[6, 6, 17, 17, 1, 1, 58, 58, 47, 47, 132, 0, 255, 4, 50, 51, 41, 89, 2, 254])
}

/// The protocol numbers generated rules name (common ones and rare ones, IPv4-only
/// extension-header numbers included: 0 and 51).
const RULE_PROTOCOL_NUMBERS: [u8; 9] = [50, 51, 132, 4, 41, 89, 0, 255, 2];

/// An ICMP (or, with `v6`, ICMPv6) type: echo request and reply, errors, and others;
/// never neighbour discovery or MLD, which pass before rules are consulted.
fn icmp_type_of(rng: &mut Rng, v6: bool) -> u8 {
    if rng.chance(0.1) {
        let t = rng.below(256) as u8;
        return if v6 && ((130..=136).contains(&t) || t == 143) { 137 } else { t };
    }
    if v6 { *rng.pick(&[128, 129, 128, 1, 2, 3, 4, 137, 0, 255]) } else { *rng.pick(&[8, 0, 8, 3, 11, 12, 5, 13, 255]) }
}

fn icmp_code_of(rng: &mut Rng) -> u8 {
    if rng.chance(0.1) { rng.below(256) as u8 } else { *rng.pick(&[0, 0, 1, 3, 4, 255]) }
}

/// A port near the edges of `ranges` (one below, first, last, one above, inside), or 0,
/// 65535, an ephemeral or a random one.
fn sample_port(rng: &mut Rng, ranges: &[(u16, u16)], source: bool) -> u16 {
    if let Some(&(first, last)) = rng.pick_opt(ranges)
        && rng.chance(0.6)
    {
        return match rng.index(5) {
            0 => first.saturating_sub(1),
            1 => first,
            2 => last,
            3 => last.saturating_add(1),
            _ => rng.between(u64::from(first), u64::from(last)) as u16,
        };
    }
    match rng.weighted(&[10, 10, 20, 20, 40]) {
        0 => 0,
        1 => 65535,
        2 if source => rng.between(32768, 60999) as u16,
        2 | 3 => *rng.pick(PORTS),
        _ => rng.next_u64() as u16,
    }
}

// ----- addresses -----

/// A network with host bits cleared; IPv4 in the low 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Net {
    v6: bool,
    bits: u128,
    len: u8,
}

fn width(v6: bool) -> u8 {
    if v6 { 128 } else { 32 }
}

fn all_ones(v6: bool) -> u128 {
    if v6 { u128::MAX } else { u128::from(u32::MAX) }
}

/// The bits below a `len`-bit prefix.
fn host_mask(v6: bool, len: u8) -> u128 {
    if len >= width(v6) { 0 } else { all_ones(v6) >> len }
}

fn addr_bits(addr: IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn bits_addr(v6: bool, bits: u128) -> IpAddr {
    if v6 { IpAddr::V6(Ipv6Addr::from(bits)) } else { IpAddr::V4(Ipv4Addr::from(bits as u32)) }
}

impl Net {
    fn new(addr: IpAddr, len: u8) -> Net {
        let (v6, bits) = addr_bits(addr);
        let len = len.min(width(v6));
        Net { v6, bits: bits & !host_mask(v6, len), len }
    }

    fn parse(text: &str) -> Option<Net> {
        match text.split_once('/') {
            Some((addr, len)) => Some(Net::new(addr.trim().parse().ok()?, len.trim().parse().ok()?)),
            None => text.trim().parse().ok().map(|addr: IpAddr| Net::new(addr, 128)),
        }
    }

    fn first(&self) -> u128 {
        self.bits
    }

    fn last(&self) -> u128 {
        self.bits | host_mask(self.v6, self.len)
    }

    fn overlaps(&self, other: &Net) -> bool {
        self.v6 == other.v6 && self.first() <= other.last() && other.first() <= self.last()
    }

    fn sample_inside(&self, rng: &mut Rng) -> IpAddr {
        bits_addr(self.v6, self.bits | (rng.next_u128() & host_mask(self.v6, self.len)))
    }

    /// Mostly an address inside; sometimes the first or last one, or the one just before
    /// or after the network.
    fn sample(&self, rng: &mut Rng) -> IpAddr {
        let mask = all_ones(self.v6);
        let bits = match rng.weighted(&[60, 10, 10, 10, 10]) {
            0 => return self.sample_inside(rng),
            1 => self.first(),
            2 => self.last(),
            3 => self.first().wrapping_sub(1) & mask,
            _ => self.last().wrapping_add(1) & mask,
        };
        bits_addr(self.v6, bits)
    }

    /// As written in a rule file: `addr/len`, or a host alone sometimes.
    fn text(&self, rng: &mut Rng) -> String {
        let addr = bits_addr(self.v6, self.bits);
        if self.len == width(self.v6) && rng.chance(0.5) { addr.to_string() } else { format!("{addr}/{}", self.len) }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", bits_addr(self.v6, self.bits), self.len)
    }
}

const TEST_NET_V4: u128 = 0xC612_0000; // 198.18.0.0/15
const TEST_NET_V6: u128 = 0x2001_0db8 << 96; // 2001:db8::/32

/// An address, clustered so that members, rules and packets meet: mostly in
/// 198.18.0.0/22 or 2001:db8:0:0-3::/112-ish, then 198.18.0.0/15 and 2001:db8::/32, then
/// 10.0.0.0/8 and fd00::/8, then anywhere.
fn random_addr(rng: &mut Rng, v6: bool) -> IpAddr {
    let bits = if v6 {
        match rng.weighted(&[70, 15, 10, 5]) {
            0 => TEST_NET_V6 | (u128::from(rng.below(4)) << 64) | u128::from(rng.below(1 << 16)),
            1 => TEST_NET_V6 | (rng.next_u128() & ((1 << 96) - 1)),
            2 => (0xfd << 120) | (rng.next_u128() >> 8),
            _ => rng.next_u128(),
        }
    } else {
        match rng.weighted(&[70, 15, 10, 5]) {
            0 => TEST_NET_V4 | (u128::from(rng.below(4)) << 8) | u128::from(rng.below(256)),
            1 => TEST_NET_V4 | u128::from(rng.below(1 << 17)),
            2 => 0x0A00_0000 | u128::from(rng.below(1 << 24)),
            _ => u128::from(rng.next_u64() as u32),
        }
    };
    bits_addr(v6, bits)
}

/// A network of any length (0 to 32 or 128), often around the addresses of `pool`.
fn random_net(rng: &mut Rng, v6: bool, pool: &[IpAddr]) -> Net {
    let near: Vec<IpAddr> = pool.iter().copied().filter(|a| a.is_ipv6() == v6).collect();
    let addr = match rng.pick_opt(&near) {
        Some(&addr) if rng.chance(0.5) => addr,
        _ => random_addr(rng, v6),
    };
    let w = width(v6);
    let len = match rng.weighted(&[25, 6, 30, 39]) {
        0 => w,
        1 => 0,
        2 => rng.between(0, u64::from(w)) as u8,
        _ if v6 => {
            if rng.chance(0.5) {
                rng.between(32, 64) as u8
            } else {
                rng.between(100, 127) as u8
            }
        }
        _ => rng.between(20, 31) as u8,
    };
    Net::new(addr, len)
}

// ----- rule-file text -----

const PORTS: &[u16] =
    &[1, 2, 20, 21, 22, 23, 53, 80, 123, 443, 1023, 1024, 3306, 8080, 32767, 32768, 49152, 65534, 65535];

fn random_port(rng: &mut Rng) -> u16 {
    if rng.chance(0.8) { *rng.pick(PORTS) } else { rng.between(1, 65535) as u16 }
}

/// A written port range `a/b` (1 <= a <= b <= 65535).
fn random_port_range(rng: &mut Rng) -> (u16, u16) {
    match rng.weighted(&[40, 20, 20, 10, 10]) {
        0 => {
            let p = random_port(rng);
            (p, p)
        }
        1 => {
            let a = random_port(rng);
            (a, a.saturating_add(rng.between(1, 100) as u16))
        }
        2 => {
            let (a, b) = (random_port(rng), random_port(rng));
            (a.min(b), a.max(b))
        }
        3 => (1, 65535),
        _ => {
            let a = rng.between(1, 65535);
            (a as u16, rng.between(a, 65535) as u16)
        }
    }
}

fn port_text(rng: &mut Rng, (first, last): (u16, u16)) -> String {
    if rng.chance(0.03) { format!("{first} / {last}") } else { format!("{first}/{last}") }
}

/// A keyword as written: usually lowercase, sometimes upper or capitalised (keywords are
/// case-insensitive).
fn keyword(rng: &mut Rng, word: &str) -> String {
    match rng.weighted(&[90, 5, 5]) {
        0 => word.to_string(),
        1 => word.to_ascii_uppercase(),
        _ => {
            let mut chars = word.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        }
    }
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn quoted_list<I: IntoIterator<Item = String>>(items: I) -> String {
    let items: Vec<String> = items.into_iter().map(|s| quote(&s)).collect();
    format!("[{}]", items.join(", "))
}

/// A rule as it will be written; `None` fields are omitted.
#[derive(Debug, Clone)]
struct RuleText {
    direction: String,
    policy: Option<String>,
    priority: Option<u8>,
    protocol: String,
    /// Write the protocol as a bare integer (`protocol = 50`) rather than a string.
    protocol_bare: bool,
    port_range: Option<String>,
    source_port_range: Option<String>,
    /// `icmp_type` and `icmp_code` of an icmp or icmpv6 rule.
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
    peer_key: &'static str,
    peer_value: String,
    /// The local-address narrowing (`destination` on ingress, `source` on egress).
    local: Option<String>,
    description: Option<String>,
}

impl RuleText {
    fn write(&self, out: &mut String, indent: &str) {
        out.push_str(&format!("{indent}[[security_group.rule]]\n"));
        let mut field = |key: &str, value: String| out.push_str(&format!("{indent}{key} = {value}\n"));
        field("direction", quote(&self.direction));
        if let Some(policy) = &self.policy {
            field("policy", quote(policy));
        }
        if let Some(priority) = self.priority {
            field("priority", priority.to_string());
        }
        field("protocol", if self.protocol_bare { self.protocol.clone() } else { quote(&self.protocol) });
        if let Some(range) = &self.port_range {
            field("port_range", quote(range));
        }
        if let Some(range) = &self.source_port_range {
            field("source_port_range", quote(range));
        }
        if let Some(icmp_type) = self.icmp_type {
            field("icmp_type", icmp_type.to_string());
        }
        if let Some(code) = self.icmp_code {
            field("icmp_code", code.to_string());
        }
        field(self.peer_key, quote(&self.peer_value));
        if let Some(local) = &self.local {
            let key = if self.direction.eq_ignore_ascii_case("ingress") { "destination" } else { "source" };
            field(key, quote(local));
        }
        if let Some(description) = &self.description {
            field("description", quote(description));
        }
        out.push('\n');
    }

    /// Everything but the description: equal keys are duplicates (given canonical
    /// spellings). `ACCOUNT/sg-x` and `sg-x` name the same group.
    fn key(&self) -> String {
        let peer = match self.peer_value.split_once('/') {
            Some((_, id)) if self.peer_key.ends_with("_group") => id,
            _ => &self.peer_value,
        };
        // `6` is `tcp`: the protocol as the validator reads it.
        let protocol = self.protocol.parse::<Protocol>().map_or_else(|_| self.protocol.clone(), |p| p.to_string());
        format!(
            "{} {:?} {:?} {} {:?} {:?} {:?} {:?} {} {} {:?}",
            self.direction,
            self.policy,
            self.priority,
            protocol,
            self.port_range,
            self.source_port_range,
            self.icmp_type,
            self.icmp_code,
            self.peer_key,
            peer,
            self.local
        )
    }
}

struct GroupText {
    id: String,
    owner: Option<String>,
    /// `type`, as written (omitted: basic).
    kind_text: Option<String>,
    /// Advanced groups neither reference groups nor are referenced.
    advanced: bool,
    inner_access_text: Option<String>,
    /// Members as written.
    members: Vec<String>,
    member_addrs: Vec<IpAddr>,
    rules: Vec<RuleText>,
}

impl GroupText {
    fn write(&self, out: &mut String, rng: &mut Rng) {
        out.push_str("[[security_group]]\n");
        out.push_str(&format!("id = {}\n", quote(&self.id)));
        if let Some(kind) = &self.kind_text {
            out.push_str(&format!("type = {}\n", quote(kind)));
        }
        if let Some(inner) = &self.inner_access_text {
            out.push_str(&format!("inner_access_policy = {}\n", quote(inner)));
        }
        if let Some(owner) = &self.owner {
            out.push_str(&format!("owner = {}\n", quote(owner)));
        }
        if !self.members.is_empty() || rng.chance(0.3) {
            out.push_str(&format!("members = {}\n", quoted_list(self.members.iter().cloned())));
        }
        out.push('\n');
        let indent = if rng.chance(0.5) { "  " } else { "" };
        for rule in &self.rules {
            rule.write(out, indent);
        }
    }
}

struct ListText {
    id: String,
    v6: bool,
    entries: Vec<Net>,
}

const DESCRIPTIONS: &[&str] = &[
    "",
    "public HTTP",
    "SSH from the admin workstation",
    "quote \" and backslash \\ inside",
    "tab\tand unicode: ü → ✓",
    "monitoring ping",
    "MySQL from the web tier",
];

fn random_owner(rng: &mut Rng) -> String {
    format!("{:012}", rng.below(1_000_000_000_000))
}

/// Writes one rule file for [`case`].
struct CaseWriter<'r, 'o> {
    rng: &'r mut Rng,
    opts: &'o GenOptions,
    /// Addresses members are drawn from, and rule networks are often built around.
    pool: Vec<IpAddr>,
    groups: Vec<GroupText>,
    lists: Vec<ListText>,
}

impl<'r, 'o> CaseWriter<'r, 'o> {
    fn new(rng: &'r mut Rng, opts: &'o GenOptions) -> Self {
        let pool_size = rng.between(6, 14);
        let pool = (0..pool_size)
            .map(|_| {
                let v6 = rng.chance(0.45);
                random_addr(rng, v6)
            })
            .collect();
        CaseWriter { rng, opts, pool, groups: Vec::new(), lists: Vec::new() }
    }

    fn write(mut self) -> String {
        // Interfaces and the groups on them: all groups of one interface of one type.
        let interfaces = self.rng.between(1, self.opts.interfaces.max(1) as u64) as usize;
        let mut bindings: Vec<(GroupKind, Vec<usize>)> = Vec::new();
        for _ in 0..interfaces {
            let kind = if self.rng.chance(0.65) { GroupKind::Basic } else { GroupKind::Advanced };
            let own = self.rng.between(1, self.opts.max_groups_per_iface.clamp(1, 10) as u64) as usize;
            let mut groups: Vec<usize> = (0..own).map(|_| self.new_group(kind)).collect();
            let shareable: Vec<usize> = bindings
                .iter()
                .filter(|(k, _)| *k == kind)
                .flat_map(|(_, g)| g.iter().copied())
                .filter(|g| !groups.contains(g))
                .collect();
            if groups.len() < 10
                && self.rng.chance(0.4)
                && let Some(&shared) = self.rng.pick_opt(&shareable)
            {
                groups.push(shared);
            }
            self.rng.shuffle(&mut groups);
            bindings.push((kind, groups));
        }
        for _ in 0..self.rng.between(0, self.opts.max_unbound_groups as u64) {
            let kind = if self.rng.chance(0.6) { GroupKind::Basic } else { GroupKind::Advanced };
            self.new_group(kind);
        }
        for index in 0..self.rng.between(0, self.opts.max_prefix_lists as u64) {
            self.new_list(index as usize);
        }
        for group in 0..self.groups.len() {
            let count = self.rng.between(0, self.opts.max_rules_per_group as u64);
            for _ in 0..count {
                let rule = match self.groups[group].rules.last() {
                    Some(previous) if self.rng.chance(0.08) => {
                        // An exact duplicate (perhaps described differently): collapsed.
                        let mut copy = previous.clone();
                        if self.rng.chance(0.5) {
                            copy.description = Some("duplicate".to_string());
                        }
                        copy
                    }
                    _ => self.new_rule(group),
                };
                self.groups[group].rules.push(rule);
            }
        }

        // Sections in random order; a group's rules follow its header.
        let mut sections: Vec<String> = Vec::new();
        for group in &self.groups {
            let mut text = String::new();
            group.write(&mut text, self.rng);
            sections.push(text);
        }
        for list in &self.lists {
            let mut text = format!("[[prefix_list]]\nid = {}\n", quote(&list.id));
            let family = keyword(self.rng, if list.v6 { "ipv6" } else { "ipv4" });
            text.push_str(&format!("family = {}\n", quote(&family)));
            let entries: Vec<String> = list.entries.iter().map(|net| net.text(self.rng)).collect();
            if !entries.is_empty() || self.rng.chance(0.5) {
                text.push_str(&format!("entries = {}\n", quoted_list(entries)));
            }
            sections.push(text + "\n");
        }
        let names = ["eth0", "eth1", "veth-sg0", "tap7"];
        for (i, (_, groups)) in bindings.iter().enumerate() {
            let name = names.get(i).map_or_else(|| format!("eth{i}"), |n| n.to_string());
            let mut text = format!("[[interface]]\nname = {}\n", quote(&name));
            let ids = groups.iter().map(|&g| self.groups[g].id.clone());
            text.push_str(&format!("security_groups = {}\n", quoted_list(ids)));
            match self.rng.weighted(&[60, 25, 15]) {
                0 => {}
                1 => text.push_str(&format!("mode = {}\n", quote(&keyword(self.rng, "enforce")))),
                _ => text.push_str(&format!("mode = {}\n", quote(&keyword(self.rng, "audit")))),
            }
            sections.push(text + "\n");
        }
        if self.rng.chance(0.05) {
            let max = self.rng.between(1, 1 << 20);
            sections.push(format!("[sessions]\nmax_sessions = {max}\ntcp_established = 300\n\n"));
        }
        self.rng.shuffle(&mut sections);
        let mut out = format!("# generated by sg_tests::gen::case\n\n{}", sections.concat());
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    }

    /// Adds a group of `kind` with members and no rules yet; returns its index.
    fn new_group(&mut self, kind: GroupKind) -> usize {
        let index = self.groups.len();
        let rng = &mut *self.rng;
        let id = format!("sg-{}{index}", ["web", "db", "app", "mgmt", "x"][rng.index(5)]);
        let owner = rng.chance(0.35).then(|| random_owner(rng));
        let kind_text = match kind {
            GroupKind::Basic if rng.chance(0.4) => None,
            GroupKind::Basic => Some(keyword(rng, "basic")),
            GroupKind::Advanced => Some(keyword(rng, "advanced")),
        };
        let inner_access_text = match kind {
            GroupKind::Basic => match rng.weighted(&[40, 25, 35]) {
                0 => None,
                1 => Some(keyword(rng, "accept")),
                _ => Some(keyword(rng, "drop")),
            },
            GroupKind::Advanced => rng.chance(0.5).then(|| keyword(rng, "drop")),
        };
        let mut members = Vec::new();
        let mut member_addrs = Vec::new();
        for _ in 0..rng.between(0, self.opts.max_members_per_group as u64) {
            let addr = if rng.chance(0.8) {
                *rng.pick(&self.pool)
            } else {
                let v6 = rng.chance(0.45);
                random_addr(rng, v6)
            };
            // Members may also be written as a full-length prefix.
            let text = if rng.chance(0.15) { format!("{addr}/{}", width(addr.is_ipv6())) } else { addr.to_string() };
            members.push(text);
            member_addrs.push(addr);
        }
        self.groups.push(GroupText {
            id,
            owner,
            kind_text,
            advanced: kind == GroupKind::Advanced,
            inner_access_text,
            members,
            member_addrs,
            rules: Vec::new(),
        });
        index
    }

    fn new_list(&mut self, index: usize) {
        let v6 = self.rng.chance(0.45);
        let count = self.rng.between(0, self.opts.max_prefix_list_entries as u64);
        let entries = (0..count).map(|_| random_net(self.rng, v6, &self.pool)).collect();
        self.lists.push(ListText { id: format!("pl-{}{index}", if v6 { "six" } else { "four" }), v6, entries });
    }

    fn new_rule(&mut self, group: usize) -> RuleText {
        let rng = &mut *self.rng;
        let ingress = rng.chance(0.55);
        let protocol = [
            Protocol::Tcp,
            Protocol::Tcp,
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Udp,
            Protocol::Icmp,
            Protocol::Icmp,
            Protocol::Icmpv6,
            Protocol::Icmpv6,
            Protocol::Gre,
            Protocol::All,
            Protocol::All,
            Protocol::Number(*rng.pick(&RULE_PROTOCOL_NUMBERS)),
        ][rng.index(13)];
        // icmp and icmpv6 rules name a type (and a code) more often than not.
        let (icmp_type, icmp_code) = match protocol {
            Protocol::Icmp | Protocol::Icmpv6 if rng.chance(0.6) => {
                let icmp_type = icmp_type_of(rng, protocol == Protocol::Icmpv6);
                (Some(icmp_type), rng.chance(0.5).then(|| icmp_code_of(rng)))
            }
            _ => (None, None),
        };
        let policy = match rng.weighted(&[25, 30, 30, 5, 5, 5]) {
            0 => None,
            1 => Some(keyword(rng, "accept")),
            2 => Some(keyword(rng, "drop")),
            3 => Some("allow".to_string()),
            4 => Some("deny".to_string()),
            _ => Some("Deny".to_string()),
        };
        let priority = match rng.weighted(&[15, 45, 40]) {
            0 => None,
            1 => Some(*rng.pick(&[1, 1, 2, 3, 10, 50, 100])),
            _ => Some(rng.between(1, 100) as u8),
        };
        let (port_range, source_port_range) = if protocol.has_ports() {
            let range = random_port_range(rng);
            let source = rng.chance(0.2).then(|| {
                let source = random_port_range(rng);
                port_text(rng, source)
            });
            (Some(port_text(rng, range)), source)
        } else {
            (rng.chance(0.5).then(|| "-1/-1".to_string()), None)
        };
        // The family the peer and local address must have, if the protocol decides it.
        let required_v6 = protocol.family().map(|f| f == Family::Ipv6);

        // Advanced groups cannot reference groups, nor be referenced.
        let other_groups: Vec<usize> = (0..self.groups.len())
            .filter(|&g| g != group && !self.groups[g].advanced && !self.groups[group].advanced)
            .collect();
        let lists: Vec<usize> =
            (0..self.lists.len()).filter(|&l| required_v6.is_none_or(|v6| self.lists[l].v6 == v6)).collect();
        let (kind, value, peer_v6) = match rng.weighted(&[60, 20, 20]) {
            1 if !other_groups.is_empty() => {
                let target = &self.groups[*rng.pick(&other_groups)];
                let value = match &target.owner {
                    Some(owner) if rng.chance(0.5) => format!("{owner}/{}", target.id),
                    _ => target.id.clone(),
                };
                ("group", value, None)
            }
            2 if !lists.is_empty() => {
                let list = &self.lists[*rng.pick(&lists)];
                ("prefix_list", list.id.clone(), Some(list.v6))
            }
            _ => {
                let v6 = required_v6.unwrap_or_else(|| rng.chance(0.45));
                let net = random_net(rng, v6, &self.pool);
                ("cidr", net.text(rng), Some(v6))
            }
        };
        let peer_key = match (ingress, kind) {
            (true, "group") => "source_group",
            (true, "prefix_list") => "source_prefix_list",
            (true, _) => "source",
            (false, "group") => "destination_group",
            (false, "prefix_list") => "destination_prefix_list",
            (false, _) => "destination",
        };
        let local = rng.chance(0.2).then(|| {
            let v6 = peer_v6.or(required_v6).unwrap_or_else(|| rng.chance(0.45));
            let own: Vec<IpAddr> =
                self.groups[group].member_addrs.iter().copied().filter(|a| a.is_ipv6() == v6).collect();
            let net = match rng.pick_opt(&own) {
                Some(&addr) if rng.chance(0.6) => {
                    let w = width(v6);
                    let len = if rng.chance(0.5) { w } else { rng.between(0, u64::from(w)) as u8 };
                    Net::new(addr, len)
                }
                _ => random_net(rng, v6, &self.pool),
            };
            net.text(rng)
        });
        let description = match rng.weighted(&[60, 40]) {
            0 => None,
            _ => Some(rng.pick(DESCRIPTIONS).to_string()),
        };
        // Named protocols are sometimes written by number (`6` is tcp), numbered ones
        // sometimes as a bare integer.
        let (protocol_text, protocol_bare) = match protocol.ip_proto() {
            Some(number) if rng.chance(0.15) => (number.to_string(), rng.chance(0.5)),
            _ if matches!(protocol, Protocol::Number(_)) => (protocol.to_string(), rng.chance(0.5)),
            _ => (keyword(rng, &protocol.to_string()), false),
        };
        RuleText {
            direction: keyword(rng, if ingress { "ingress" } else { "egress" }),
            policy,
            priority,
            protocol: protocol_text,
            protocol_bare,
            port_range,
            source_port_range,
            icmp_type,
            icmp_code,
            peer_key,
            peer_value: value,
            local,
            description,
        }
    }
}

// ----- benchmark rule sets -----

/// The group [`realistic_ruleset`] binds to its interface.
pub const REALISTIC_GROUP: &str = "sg-bench";
/// The group its group-reference rules name (bound nowhere).
pub const REALISTIC_PEER_GROUP: &str = "sg-peers";
/// The owner of [`REALISTIC_PEER_GROUP`] (some rules name it as `OWNER/sg-peers`).
pub const REALISTIC_PEER_OWNER: &str = "160998252992";

/// Options of [`realistic_ruleset_with`].
#[derive(Debug, Clone)]
pub struct RealisticOptions {
    /// The interface the group is bound to.
    pub iface: String,
    /// An address or CIDR. When set (and `n >= 1`), the last of the `n` rules is a
    /// priority-100 `drop` of every protocol from it, every other rule has a priority
    /// below 100, and no other rule's network, prefix-list entry or group member overlaps
    /// it: traffic from there misses every other rule and is dropped by the last-ranked
    /// one. Must be narrow enough to leave room (a /8 is fine, a /0 is not).
    pub drop_all_from: Option<String>,
    /// The same for a second network (of the other family), dropped by the last-ranked
    /// rule after `drop_all_from`'s: so benchmarks measure IPv4 and IPv6 on like work.
    pub drop_all_from_v6: Option<String>,
}

impl Default for RealisticOptions {
    fn default() -> Self {
        RealisticOptions { iface: "eth0".to_string(), drop_all_from: None, drop_all_from_v6: None }
    }
}

/// A benchmark rule file: interface `eth0` with one basic group holding `n` distinct
/// ingress rules of a realistic mix (CIDRs of varied lengths, IPv4 and IPv6; tcp/udp
/// single ports and ranges, some icmp, icmpv6, gre and all; a few references to a second
/// group with members, some with the owner's account; two prefix lists).
pub fn realistic_ruleset(seed: u64, n: usize) -> String {
    realistic_ruleset_with(seed, n, &RealisticOptions::default())
}

/// The same rule file with every ingress rule turned into an egress rule (the peer
/// fields renamed `destination*`), for benchmarking the egress hook.
pub fn as_egress(toml: &str) -> String {
    let mut out = String::with_capacity(toml.len());
    for line in toml.lines() {
        let trimmed = line.trim_start();
        out.push_str(&line[..line.len() - trimmed.len()]);
        let peer_field = trimmed
            .strip_prefix("source")
            .filter(|rest| [" =", "_group =", "_prefix_list ="].iter().any(|key| rest.starts_with(key)));
        match peer_field {
            _ if trimmed == r#"direction = "ingress""# => out.push_str(r#"direction = "egress""#),
            Some(rest) => {
                out.push_str("destination");
                out.push_str(rest);
            }
            None => out.push_str(trimmed),
        }
        out.push('\n');
    }
    out
}

/// [`realistic_ruleset`] with options, e.g. a last-ranked drop for the load generator's
/// traffic.
pub fn realistic_ruleset_with(seed: u64, n: usize, opts: &RealisticOptions) -> String {
    let out = realistic_ruleset_text(seed, n, opts);
    let config = parse_generated(&out);
    assert_eq!(config.rules().count(), n, "generator bug: duplicate rules in a realistic rule set");
    out
}

/// The text of [`realistic_ruleset_with`], not checked: also for sizes past what one
/// interface may hold, to show what sgctl says of them.
pub fn realistic_ruleset_text(seed: u64, n: usize, opts: &RealisticOptions) -> String {
    let mut rng = Rng::new(seed);
    let avoid: Vec<Net> = [&opts.drop_all_from, &opts.drop_all_from_v6]
        .into_iter()
        .flatten()
        .map(|text| Net::parse(text).unwrap_or_else(|| panic!("drop_all_from {text:?} is not an address or CIDR")))
        .collect();
    let avoid = avoid.as_slice();
    let rng = &mut rng;

    let bench_members: Vec<IpAddr> =
        [false, false, true].into_iter().map(|v6| realistic_net(rng, v6, 128, avoid).sample_inside(rng)).collect();
    let peer_members: Vec<IpAddr> = (0..8)
        .map(|i| {
            let v6 = i >= 6;
            realistic_net(rng, v6, 128, avoid).sample_inside(rng)
        })
        .collect();
    let v4_entries: Vec<Net> = (0..rng.between(10, 40)).map(|_| realistic_net(rng, false, 0, avoid)).collect();
    let v6_entries: Vec<Net> = (0..rng.between(4, 16)).map(|_| realistic_net(rng, true, 0, avoid)).collect();
    let lists = [("pl-bench-v4", false), ("pl-bench-v6", true)];

    let drop_rules: Vec<RuleText> = avoid
        .iter()
        .take(n)
        .map(|net| RuleText {
            direction: "ingress".to_string(),
            policy: Some("drop".to_string()),
            priority: Some(100),
            protocol: "all".to_string(),
            protocol_bare: false,
            port_range: None,
            source_port_range: None,
            icmp_type: None,
            icmp_code: None,
            peer_key: "source",
            peer_value: net.to_string(),
            local: None,
            description: Some("drop everything from the load generator".to_string()),
        })
        .collect();
    let max_priority = if drop_rules.is_empty() { 100 } else { 99 };
    let mut rules: Vec<RuleText> = Vec::with_capacity(n);
    let mut seen: HashSet<String> = drop_rules.iter().map(RuleText::key).collect();
    while rules.len() + drop_rules.len() < n {
        let rule = realistic_rule(rng, avoid, max_priority, &lists, rules.len() + 1);
        if seen.insert(rule.key()) {
            rules.push(rule);
        }
    }
    rules.extend(drop_rules);

    let mut out = String::from("# generated by sg_tests::gen::realistic_ruleset\n\n");
    out.push_str(&format!("[[security_group]]\nid = {}\ntype = \"basic\"\n", quote(REALISTIC_GROUP)));
    out.push_str(&format!("members = {}\n\n", quoted_list(bench_members.iter().map(IpAddr::to_string))));
    for rule in &rules {
        rule.write(&mut out, "  ");
    }
    out.push_str(&format!(
        "[[security_group]]\nid = {}\nowner = {}\nmembers = {}\n\n",
        quote(REALISTIC_PEER_GROUP),
        quote(REALISTIC_PEER_OWNER),
        quoted_list(peer_members.iter().map(IpAddr::to_string))
    ));
    for ((id, v6), entries) in lists.iter().zip([&v4_entries, &v6_entries]) {
        out.push_str(&format!(
            "[[prefix_list]]\nid = {}\nfamily = \"{}\"\nentries = {}\n\n",
            quote(id),
            if *v6 { "ipv6" } else { "ipv4" },
            quoted_list(entries.iter().map(Net::to_string))
        ));
    }
    out.push_str(&format!(
        "[[interface]]\nname = {}\nsecurity_groups = [{}]\n",
        quote(&opts.iface),
        quote(REALISTIC_GROUP)
    ));
    out
}

/// A network as rule files hold them, not overlapping `avoid`; `len` 0 picks a realistic
/// length, otherwise it is the length.
fn realistic_net(rng: &mut Rng, v6: bool, len: u8, avoid: &[Net]) -> Net {
    for _ in 0..10_000 {
        let bits = if v6 {
            match rng.weighted(&[80, 10, 10]) {
                0 => TEST_NET_V6 | (rng.next_u128() & ((1 << 96) - 1)),
                1 => (0xfd << 120) | (rng.next_u128() >> 8),
                _ => rng.next_u128(),
            }
        } else {
            match rng.weighted(&[60, 20, 10, 10]) {
                0 => TEST_NET_V4 | u128::from(rng.below(1 << 17)),
                1 => 0x0A00_0000 | u128::from(rng.below(1 << 24)),
                2 => 0xAC10_0000 | u128::from(rng.below(1 << 20)),
                _ => u128::from(rng.next_u64() as u32),
            }
        };
        let len = match len {
            0 if v6 => match rng.weighted(&[30, 30, 15, 25]) {
                0 => 128,
                1 => 64,
                2 => 48,
                _ => rng.between(32, 127) as u8,
            },
            0 => match rng.weighted(&[35, 20, 10, 35]) {
                0 => 32,
                1 => 24,
                2 => 16,
                _ => rng.between(8, 31) as u8,
            },
            len => len,
        };
        let net = Net::new(bits_addr(v6, bits), len);
        if avoid.iter().all(|avoid| !avoid.overlaps(&net)) {
            return net;
        }
    }
    let avoid: Vec<String> = avoid.iter().map(Net::to_string).collect();
    panic!("drop_all_from {} is too broad: cannot keep other networks out of it", avoid.join(", "))
}

fn realistic_rule(
    rng: &mut Rng,
    avoid: &[Net],
    max_priority: u8,
    lists: &[(&str, bool); 2],
    number: usize,
) -> RuleText {
    let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Icmp, Protocol::Icmpv6, Protocol::All, Protocol::Gre]
        [rng.weighted(&[55, 20, 6, 4, 10, 5])];
    let (port_range, source_port_range) = if protocol.has_ports() {
        let range = match rng.weighted(&[50, 20, 20, 10]) {
            0 => {
                let p = *rng.pick(&[22, 25, 53, 80, 123, 443, 3306, 5432, 6379, 8080, 8443, 9090, 27017]);
                (p, p)
            }
            1 => {
                let p = rng.between(1, 65535) as u16;
                (p, p)
            }
            2 => {
                let a = rng.between(1, 60000) as u16;
                (a, a + rng.between(1, 5000) as u16)
            }
            _ => *rng.pick(&[(1024, 65535), (1, 65535), (32768, 60999)]),
        };
        let source = rng.chance(0.05).then(|| "1024/65535".to_string());
        (Some(format!("{}/{}", range.0, range.1)), source)
    } else {
        (None, None)
    };
    let required_v6 = protocol.family().map(|f| f == Family::Ipv6);
    let (peer_key, peer_value) = match rng.weighted(&[80, 8, 12]) {
        1 => {
            let value = if rng.chance(0.5) {
                format!("{REALISTIC_PEER_OWNER}/{REALISTIC_PEER_GROUP}")
            } else {
                REALISTIC_PEER_GROUP.to_string()
            };
            ("source_group", value)
        }
        2 => {
            let v6 = required_v6.unwrap_or_else(|| rng.chance(0.3));
            let (id, _) = lists.iter().find(|(_, list_v6)| *list_v6 == v6).expect("one list per family");
            ("source_prefix_list", id.to_string())
        }
        _ => {
            let v6 = required_v6.unwrap_or_else(|| rng.chance(0.3));
            ("source", realistic_net(rng, v6, 0, avoid).to_string())
        }
    };
    RuleText {
        direction: "ingress".to_string(),
        policy: Some(if rng.chance(0.85) { "accept" } else { "drop" }.to_string()),
        priority: Some(if rng.chance(0.4) { 1 } else { rng.between(1, u64::from(max_priority)) as u8 }),
        protocol: protocol.to_string(),
        protocol_bare: false,
        port_range,
        source_port_range,
        icmp_type: None,
        icmp_code: None,
        peer_key,
        peer_value,
        local: None,
        description: Some(format!("rule {number}")),
    }
}

/// `n` ingress rules, rule `i` of TCP port `1 + i` (each port named by one rule), from
/// 198.19.0.0/16 (even `i`) or 2001:db8:1::/48 (odd), every fifth a drop; members
/// 198.18.0.1 and 2001:db8::1, bound to `eth0`. Past one vector's bits the set is
/// compiled in bands (`sg_common::MAX_BANDS`), and each band's rules decide the packets
/// to their own ports.
pub fn one_port_each(n: usize) -> String {
    let mut text = String::from("[[security_group]]\nid = \"sg-ports\"\nmembers = [\"198.18.0.1\", \"2001:db8::1\"]\n");
    for i in 0..n {
        let policy = if i % 5 == 4 { "  policy = \"drop\"\n" } else { "" };
        let source = if i % 2 == 0 { "198.19.0.0/16" } else { "2001:db8:1::/48" };
        text += &format!(
            "[[security_group.rule]]\ndirection = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"{p}/{p}\"\n\
             source = \"{source}\"\n{policy}",
            p = i + 1
        );
    }
    text + "[[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-ports\"]\n"
}
