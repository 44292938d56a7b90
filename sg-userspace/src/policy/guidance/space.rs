//! The rule space and its exact geometry, shared by `sgctl lint` and `sgctl diff`.
//!
//! A packet, as far as rules can tell packets apart, is a point of
//! protocol x peer address x local address x destination port x source port, per address
//! family (an interface and a direction pick the rules). Every rule matches a union of boxes
//! in that space: a set of protocols, a union of peer intervals (a CIDR is one interval, a
//! group's members are points, a prefix list is a union), one local interval and, for tcp
//! and udp, two port intervals, for icmp and icmpv6 one interval of ICMP keys (`type << 8
//! | code`). Protocols are told apart by number: every number a rule names is its own
//! class, and the numbers no rule names form one more.
//!
//! [`partition`] splits the space exactly: dimension by dimension it cuts the current
//! range at every boundary of the matchers still alive there into elementary intervals,
//! keeps only the matchers that contain each interval, and recurses (cutting next the
//! dimension that leaves the least work: the order changes the speed, never the answer). Inside a leaf cell
//! every matcher either contains the whole cell or none of it, so one representative point
//! decides the whole cell. Adjacent intervals whose sub-results are equal are merged on the
//! way back up, so the answer is a small set of ranges rather than a grid. Nothing is
//! sampled.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serialize;

use crate::policy::config::{Action, Config, Direction, Family, GroupKind, Peer, Protocol, Rule};
use crate::policy::order::pooled_rules;

#[cfg(test)]
mod tests;

/// An inclusive interval of addresses (IPv4 addresses in `0..=u32::MAX`).
pub type AddrRange = (u128, u128);
/// An inclusive interval of ports.
pub type PortSpan = (u16, u16);

pub const ALL_PORTS: PortSpan = (0, u16::MAX);

/// The protocols named in rule files, in the order regions list them.
const NAMED: [u8; 5] = [6, 17, 1, 58, 47];

/// Whether packets of IP protocol `number` carry ports rules look at (tcp and udp).
pub fn has_ports(number: u8) -> bool {
    matches!(number, 6 | 17)
}

/// Whether packets of IP protocol `number` have a destination "port" rules look at: the
/// ports of tcp and udp, the ICMP key (`type << 8 | code`) of icmp and icmpv6.
pub fn has_key(number: u8) -> bool {
    matches!(number, 6 | 17 | 1 | 58)
}

/// A set of IP protocol numbers (0 to 255). Rules match one number or all of them
/// (`protocol = "all"`), and a rule naming a protocol by number (`50`) tells it apart
/// from every other, so the space is split by number, not by a handful of classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ProtoSet([u64; 4]);

impl ProtoSet {
    pub const ALL: ProtoSet = ProtoSet([u64::MAX; 4]);

    pub fn of_protocol(protocol: Protocol) -> ProtoSet {
        protocol.ip_proto().map_or(ProtoSet::ALL, ProtoSet::one)
    }

    pub fn one(number: u8) -> ProtoSet {
        let mut set = ProtoSet::default();
        set.0[usize::from(number / 64)] |= 1 << (number % 64);
        set
    }

    pub fn contains(self, number: u8) -> bool {
        self.0[usize::from(number / 64)] & (1 << (number % 64)) != 0
    }

    pub fn intersects(self, other: ProtoSet) -> bool {
        !self.intersection(other).is_empty()
    }

    pub fn intersection(self, other: ProtoSet) -> ProtoSet {
        ProtoSet(std::array::from_fn(|i| self.0[i] & other.0[i]))
    }

    pub fn union(self, other: ProtoSet) -> ProtoSet {
        ProtoSet(std::array::from_fn(|i| self.0[i] | other.0[i]))
    }

    pub fn minus(self, other: ProtoSet) -> ProtoSet {
        ProtoSet(std::array::from_fn(|i| self.0[i] & !other.0[i]))
    }

    pub fn is_empty(self) -> bool {
        self.0 == [0; 4]
    }

    pub fn len(self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }

    /// The numbers in the set, ascending.
    pub fn numbers(self) -> impl Iterator<Item = u8> {
        (0..=u8::MAX).filter(move |&n| self.contains(n))
    }

    /// The number a cell of this set is probed with: 132 (SCTP) when it is in the set,
    /// else the smallest. `None` for the empty set.
    pub fn representative(self) -> Option<u8> {
        if self.contains(132) { Some(132) } else { self.numbers().next() }
    }

    /// The protocols in words: `any protocol`, `tcp,udp`, `protocol 50`, `icmp,50`, or,
    /// for a set of most numbers, `protocols other than tcp,udp,50`.
    pub fn describe(self) -> String {
        if self == ProtoSet::ALL {
            return "any protocol".to_string();
        }
        if let (1, Some(number)) = (self.len(), self.representative())
            && !NAMED.contains(&number)
        {
            return format!("protocol {number}");
        }
        let list = |set: ProtoSet| -> String {
            let mut names: Vec<String> =
                NAMED.iter().filter(|&&n| set.contains(n)).map(|&n| protocol_word(n)).collect();
            names.extend(set.numbers().filter(|n| !NAMED.contains(n)).map(|n| n.to_string()));
            names.join(",")
        };
        if self.len() > 128 { format!("protocols other than {}", list(ProtoSet::ALL.minus(self))) } else { list(self) }
    }

    /// The protocols as a list for JSON: names for the named ones, numbers otherwise, or
    /// `["all"]`.
    pub fn words(self) -> Vec<String> {
        if self == ProtoSet::ALL {
            return vec!["all".to_string()];
        }
        let mut out: Vec<String> = NAMED.iter().filter(|&&n| self.contains(n)).map(|&n| protocol_word(n)).collect();
        out.extend(self.numbers().filter(|n| !NAMED.contains(n)).map(|n| n.to_string()));
        out
    }
}

impl Serialize for ProtoSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.words().serialize(serializer)
    }
}

fn protocol_word(number: u8) -> String {
    Protocol::from_number(number).to_string()
}

/// The protocol classes to partition `bounds` by: one per number some matcher names
/// (tcp, udp, icmp, icmpv6 and gre always), and one for every other number, which no
/// matcher tells apart. Exact because a matcher's protocols are one number or all.
pub fn protocol_classes(matchers: &[Matcher], bounds: ProtoSet) -> Vec<ProtoSet> {
    let mut named: Vec<u8> = NAMED.to_vec();
    let mut extra: Vec<u8> = matchers
        .iter()
        .filter(|m| m.protos != ProtoSet::ALL)
        .flat_map(|m| m.protos.numbers())
        .filter(|n| !NAMED.contains(n))
        .collect();
    extra.sort_unstable();
    extra.dedup();
    named.extend(extra);
    let mut classes = Vec::new();
    let mut rest = bounds;
    for number in named {
        let one = ProtoSet::one(number);
        if bounds.intersects(one) {
            classes.push(one);
        }
        rest = rest.minus(one);
    }
    if !rest.is_empty() {
        classes.push(rest);
    }
    classes
}

/// `type 8`, `type 3 code 4`, `types 3-5`, `type 3 code 1-3`, or `any` for an ICMP key
/// span (`type << 8 | code`).
pub fn format_icmp(span: PortSpan) -> String {
    let ([t1, c1], [t2, c2]) = (span.0.to_be_bytes(), span.1.to_be_bytes());
    match (t1 == t2, c1, c2) {
        _ if span == ALL_PORTS => "any type".to_string(),
        (true, 0, 255) => format!("type {t1}"),
        (true, a, b) if a == b => format!("type {t1} code {a}"),
        (true, a, b) => format!("type {t1} code {a}-{b}"),
        (false, 0, 255) => format!("types {t1}-{t2}"),
        _ => format!("type {t1} code {c1} to type {t2} code {c2}"),
    }
}

/// The largest address of a family, as a `u128`.
pub fn max_addr(family: Family) -> u128 {
    match family {
        Family::Ipv4 => u128::from(u32::MAX),
        Family::Ipv6 => u128::MAX,
    }
}

pub fn addr_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub fn u128_to_addr(family: Family, value: u128) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).unwrap_or(u32::MAX))),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// The interval a network covers.
pub fn net_range(net: &IpNet) -> AddrRange {
    (addr_to_u128(net.network()), addr_to_u128(net.broadcast()))
}

/// `198.18.0.0/24` when the range is exactly one network, `any` for the whole family,
/// `198.18.0.1` for one address, otherwise `198.18.0.5-198.18.0.9`.
pub fn format_range(family: Family, range: AddrRange) -> String {
    let (first, last) = range;
    if first == 0 && last == max_addr(family) {
        return match family {
            Family::Ipv4 => "0.0.0.0/0".to_string(),
            Family::Ipv6 => "::/0".to_string(),
        };
    }
    let first_addr = u128_to_addr(family, first);
    if first == last {
        return first_addr.to_string();
    }
    let size = last.wrapping_sub(first).wrapping_add(1);
    if size.is_power_of_two() && first % size == 0 {
        let bits = match family {
            Family::Ipv4 => 32,
            Family::Ipv6 => 128,
        };
        let prefix = bits - size.trailing_zeros();
        if let Ok(prefix) = u8::try_from(prefix)
            && let Ok(net) = IpNet::new(first_addr, prefix)
        {
            return net.to_string();
        }
    }
    format!("{first_addr}-{}", u128_to_addr(family, last))
}

/// `80`, `80-443`, or `any` for the whole port space.
pub fn format_ports(span: PortSpan) -> String {
    match span {
        ALL_PORTS => "any".to_string(),
        (a, b) if a == b => a.to_string(),
        (a, b) => format!("{a}-{b}"),
    }
}

/// What a matcher stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A user rule, by id.
    Rule { rule_id: u32 },
    /// Step 4: a basic group with intra-group connectivity on the interface (its members).
    IntraAccept { group_index: usize },
    /// Step 6: an isolated group on the interface (its members).
    Isolation { group_index: usize },
}

/// The part of the rule space one rule (or one pseudo-rule) matches, in one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub source: Source,
    pub protos: ProtoSet,
    /// Sorted, disjoint, non-adjacent intervals; empty: matches nothing in this family.
    pub peer: Vec<AddrRange>,
    pub local: AddrRange,
    /// Only for the protocols with a key ([`has_key`]): ports, or ICMP keys.
    pub dport: PortSpan,
    pub sport: PortSpan,
}

/// Sorts and merges intervals into a canonical union.
pub fn normalize(mut ranges: Vec<AddrRange>) -> Vec<AddrRange> {
    ranges.sort_unstable();
    let mut out: Vec<AddrRange> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(prev) if prev.1 == u128::MAX || first <= prev.1 + 1 => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

/// Whether two canonical unions share a point.
pub fn unions_intersect(a: &[AddrRange], b: &[AddrRange]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].1 < b[j].0 {
            i += 1;
        } else if b[j].1 < a[i].0 {
            j += 1;
        } else {
            return true;
        }
    }
    false
}

fn spans_intersect<T: Ord>(a: (T, T), b: (T, T)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// The peer addresses of `family` a rule's peer stands for.
pub fn peer_ranges(cfg: &Config, peer: &Peer, family: Family) -> Vec<AddrRange> {
    let ranges = match peer {
        Peer::Cidr(net) => {
            if Family::of_net(net) == family {
                vec![net_range(net)]
            } else {
                Vec::new()
            }
        }
        Peer::Group { group_index } => {
            cfg.groups.get(*group_index).map(|g| member_ranges(&g.members, family)).unwrap_or_default()
        }
        Peer::PrefixList { list_index } => cfg
            .prefix_lists
            .get(*list_index)
            .map(|list| list.entries.iter().filter(|n| Family::of_net(n) == family).map(net_range).collect())
            .unwrap_or_default(),
    };
    normalize(ranges)
}

fn member_ranges(members: &[IpAddr], family: Family) -> Vec<AddrRange> {
    members
        .iter()
        .filter(|a| Family::of_addr(a) == family)
        .map(|a| {
            let v = addr_to_u128(*a);
            (v, v)
        })
        .collect()
}

impl Matcher {
    /// The space `rule` matches in `family`.
    pub fn of_rule(cfg: &Config, rule: &Rule, family: Family) -> Matcher {
        let local = match rule.local {
            None => (0, max_addr(family)),
            Some(net) if Family::of_net(&net) == family => net_range(&net),
            // A local network of the other family: nothing of this family matches.
            Some(_) => (1, 0),
        };
        let mut peer = peer_ranges(cfg, &rule.peer, family);
        if local.0 > local.1 {
            peer.clear();
        }
        let (dport, sport) = if rule.protocol.has_ports() {
            (
                (rule.port_range.first, rule.port_range.last),
                rule.source_port_range.map_or(ALL_PORTS, |r| (r.first, r.last)),
            )
        } else if rule.protocol.is_icmp() {
            // The ICMP key range of the rule's type and code.
            ((rule.port_range.first, rule.port_range.last), ALL_PORTS)
        } else {
            (ALL_PORTS, ALL_PORTS)
        };
        let local = if local.0 > local.1 { (0, max_addr(family)) } else { local };
        Matcher {
            source: Source::Rule { rule_id: rule.id },
            protos: ProtoSet::of_protocol(rule.protocol),
            peer,
            local,
            dport,
            sport,
        }
    }

    /// A pseudo-rule matching every packet whose peer is one of `members`.
    pub fn of_members(source: Source, members: &[IpAddr], family: Family) -> Matcher {
        Matcher {
            source,
            protos: ProtoSet::ALL,
            peer: normalize(member_ranges(members, family)),
            local: (0, max_addr(family)),
            dport: ALL_PORTS,
            sport: ALL_PORTS,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.peer.is_empty() || self.protos == ProtoSet::default()
    }

    /// Whether some packet matches both.
    pub fn intersects(&self, other: &Matcher) -> bool {
        if !self.protos.intersects(other.protos)
            || !unions_intersect(&self.peer, &other.peer)
            || !spans_intersect(self.local, other.local)
        {
            return false;
        }
        let shared = self.protos.intersection(other.protos);
        // A protocol without a key needs nothing more; one with a key needs the
        // destination spans to meet, and one with ports the source spans too.
        let keyed = ProtoSet::one(6).union(ProtoSet::one(17)).union(ProtoSet::one(1)).union(ProtoSet::one(58));
        !shared.minus(keyed).is_empty()
            || shared.numbers().filter(|&n| has_key(n)).any(|n| {
                spans_intersect(self.dport, other.dport) && (!has_ports(n) || spans_intersect(self.sport, other.sport))
            })
    }

    fn boundaries(&self, level: Level, out: &mut Vec<AddrRange>) {
        match level {
            Level::Peer => out.extend_from_slice(&self.peer),
            Level::Local => out.push(self.local),
            Level::Dport => out.push((u128::from(self.dport.0), u128::from(self.dport.1))),
            Level::Sport => out.push((u128::from(self.sport.0), u128::from(self.sport.1))),
        }
    }
}

/// A box of the rule space to look at: the whole space by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub protos: ProtoSet,
    pub peer: AddrRange,
    pub local: AddrRange,
    pub dport: PortSpan,
    pub sport: PortSpan,
}

impl Bounds {
    pub fn whole(family: Family) -> Bounds {
        Bounds {
            protos: ProtoSet::ALL,
            peer: (0, max_addr(family)),
            local: (0, max_addr(family)),
            dport: ALL_PORTS,
            sport: ALL_PORTS,
        }
    }
}

/// One elementary cell: every matcher contains all of it or none of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    pub family: Family,
    /// The protocol number the cell is probed with (a cell of the "every other number"
    /// class stands for all of them: no matcher tells them apart).
    pub proto: u8,
    pub peer: AddrRange,
    pub local: AddrRange,
    /// `None` for protocols without a key ([`has_key`]); ICMP keys for icmp and icmpv6.
    pub dport: Option<PortSpan>,
    /// `None` for protocols without ports.
    pub sport: Option<PortSpan>,
}

impl Cell {
    /// The representative packet of the cell (its first point), for `direction`.
    pub fn packet(&self, direction: Direction) -> crate::policy::eval::PacketTuple {
        let peer = u128_to_addr(self.family, self.peer.0);
        let local = u128_to_addr(self.family, self.local.0);
        let (src, dst) = match direction {
            Direction::Ingress => (peer, local),
            Direction::Egress => (local, peer),
        };
        crate::policy::eval::PacketTuple {
            src,
            dst,
            protocol: self.proto,
            src_port: self.sport.map_or(0, |s| s.0),
            dst_port: self.dport.map_or(0, |d| d.0),
        }
    }
}

/// A merged region of the rule space with one outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region<O> {
    pub family: Family,
    /// The protocol numbers of the region.
    pub protos: ProtoSet,
    pub peer: AddrRange,
    pub local: AddrRange,
    pub dport: Option<PortSpan>,
    pub sport: Option<PortSpan>,
    pub outcome: O,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Peer,
    Local,
    Dport,
    Sport,
}

/// Splits `bounds` of `family` into cells over `matchers`, asks `leaf` for the outcome
/// of each (given the indexes of the matchers containing the cell, ascending), and
/// returns the regions with an outcome, adjacent equal ones merged.
pub fn partition<O: Clone + PartialEq>(
    matchers: &[Matcher],
    family: Family,
    bounds: &Bounds,
    leaf: &mut dyn FnMut(&Cell, &[usize]) -> Option<O>,
) -> Vec<Region<O>> {
    let mut out: Vec<Region<O>> = Vec::new();
    // Protocol classes with equal sub-results are merged into one region list.
    let mut per_class: Vec<(ProtoSet, Vec<Region<O>>)> = Vec::new();
    for class in protocol_classes(matchers, bounds.protos) {
        let Some(number) = class.representative() else { continue };
        // Every matcher holds all of a class or none of it.
        let alive: Vec<usize> = (0..matchers.len())
            .filter(|&i| matchers[i].protos.intersects(class) && !matchers[i].peer.is_empty())
            .collect();
        let cell = Cell {
            family,
            proto: number,
            peer: bounds.peer,
            local: bounds.local,
            dport: has_key(number).then_some(bounds.dport),
            sport: has_ports(number).then_some(bounds.sport),
        };
        let mut sub = split(matchers, &alive, &[Level::Peer, Level::Local, Level::Dport, Level::Sport], cell, leaf);
        // A port range spanning every port is no constraint: say so with `None`, so that
        // tcp and udp ranges can merge with the port-less protocols.
        for region in &mut sub {
            region.protos = class;
            if region.sport == Some(ALL_PORTS) {
                region.sport = None;
            }
            if region.sport.is_none() && region.dport == Some(ALL_PORTS) {
                region.dport = None;
            }
        }
        per_class.push((class, sub));
    }
    let mut used = vec![false; per_class.len()];
    for i in 0..per_class.len() {
        if used[i] || per_class[i].1.is_empty() {
            continue;
        }
        let mut classes = per_class[i].0;
        for j in i + 1..per_class.len() {
            if !used[j] && same_shape(&per_class[i].1, &per_class[j].1) {
                used[j] = true;
                classes = classes.union(per_class[j].0);
            }
        }
        for mut region in per_class[i].1.clone() {
            region.protos = classes;
            out.push(region);
        }
    }
    out
}

/// Equal regions, protocol lists aside (ports are compared: tcp and icmp never merge
/// unless both have no ports, which makes their shapes equal only when the sub-results
/// are port-free on both).
fn same_shape<O: PartialEq>(a: &[Region<O>], b: &[Region<O>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.peer == y.peer && x.local == y.local && x.dport == y.dport && x.sport == y.sport && x.outcome == y.outcome
        })
}

fn split<O: Clone + PartialEq>(
    matchers: &[Matcher],
    alive: &[usize],
    remaining: &[Level],
    cell: Cell,
    leaf: &mut dyn FnMut(&Cell, &[usize]) -> Option<O>,
) -> Vec<Region<O>> {
    // The dimensions still to cut (port dimensions only for classes with ports), and their
    // elementary pieces over the matchers alive here.
    let mut best: Option<(usize, Level, Vec<AddrRange>)> = None;
    for &level in remaining {
        let Some(range) = level_range(&cell, level) else { continue };
        let mut spans = Vec::new();
        for &i in alive {
            matchers[i].boundaries(level, &mut spans);
        }
        let pieces = elementary(range, &spans);
        // Cut first where the least work follows: the sum over pieces of the matchers
        // alive in each. Exact whatever the order; the order only decides how fast.
        let cost: usize = spans.iter().map(|&span| covered(&pieces, range, span).map_or(0, |(a, b)| b - a + 1)).sum();
        if best.as_ref().is_none_or(|(c, _, _)| cost < *c) {
            best = Some((cost, level, pieces));
        }
    }
    let Some((_, level, pieces)) = best else {
        return leaf_regions(alive, cell, leaf);
    };
    let range = level_range(&cell, level).unwrap_or((0, 0));
    let rest: Vec<Level> = remaining.iter().copied().filter(|&l| l != level).collect();
    // Who is alive in each piece, by sweeping each matcher over the pieces it covers
    // (matchers in ascending order, so each list stays ascending).
    let mut per_piece: Vec<Vec<usize>> = vec![Vec::new(); pieces.len()];
    let mut spans = Vec::new();
    for &i in alive {
        spans.clear();
        matchers[i].boundaries(level, &mut spans);
        for &span in &spans {
            if let Some((first, last)) = covered(&pieces, range, span) {
                for list in &mut per_piece[first..=last] {
                    list.push(i);
                }
            }
        }
    }
    let mut merged: Vec<(AddrRange, Vec<Region<O>>)> = Vec::new();
    for (piece, sub_alive) in pieces.into_iter().zip(per_piece) {
        let sub = split(matchers, &sub_alive, &rest, with_level(cell, level, piece), leaf);
        match merged.last_mut() {
            Some((prev, prev_sub)) if same_shape_level(prev_sub, &sub, level) => prev.1 = piece.1,
            _ => merged.push((piece, sub)),
        }
    }
    let mut out = Vec::new();
    for (piece, sub) in merged {
        for region in sub {
            out.push(set_level(region, level, piece));
        }
    }
    out
}

/// The cell's extent in `level`, `None` for port levels of classes without ports.
fn level_range(cell: &Cell, level: Level) -> Option<AddrRange> {
    match level {
        Level::Peer => Some(cell.peer),
        Level::Local => Some(cell.local),
        Level::Dport => cell.dport.map(|(a, b)| (u128::from(a), u128::from(b))),
        Level::Sport => cell.sport.map(|(a, b)| (u128::from(a), u128::from(b))),
    }
}

/// The indexes of the first and last elementary pieces `span` covers within `range`.
fn covered(pieces: &[AddrRange], range: AddrRange, span: AddrRange) -> Option<(usize, usize)> {
    let (first, last) = (span.0.max(range.0), span.1.min(range.1));
    if first > last {
        return None;
    }
    let start = pieces.partition_point(|p| p.1 < first);
    let end = pieces.partition_point(|p| p.0 <= last).checked_sub(1)?;
    (start <= end).then_some((start, end))
}

/// Sub-results of two adjacent pieces are equal when everything but the current level's
/// own coordinate (which the pieces differ in) agrees.
fn same_shape_level<O: PartialEq>(a: &[Region<O>], b: &[Region<O>], level: Level) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.outcome == y.outcome
                && x.protos == y.protos
                && (level == Level::Peer || x.peer == y.peer)
                && (level == Level::Local || x.local == y.local)
                && (level == Level::Dport || x.dport == y.dport)
                && (level == Level::Sport || x.sport == y.sport)
        })
}

fn leaf_regions<O: Clone + PartialEq>(
    alive: &[usize],
    cell: Cell,
    leaf: &mut dyn FnMut(&Cell, &[usize]) -> Option<O>,
) -> Vec<Region<O>> {
    match leaf(&cell, alive) {
        Some(outcome) => vec![Region {
            family: cell.family,
            protos: ProtoSet::one(cell.proto),
            peer: cell.peer,
            local: cell.local,
            dport: cell.dport,
            sport: cell.sport,
            outcome,
        }],
        None => Vec::new(),
    }
}

fn with_level(mut cell: Cell, level: Level, piece: AddrRange) -> Cell {
    let port = |v: u128| u16::try_from(v).unwrap_or(u16::MAX);
    match level {
        Level::Peer => cell.peer = piece,
        Level::Local => cell.local = piece,
        Level::Dport => cell.dport = Some((port(piece.0), port(piece.1))),
        Level::Sport => cell.sport = Some((port(piece.0), port(piece.1))),
    }
    cell
}

fn set_level<O>(mut region: Region<O>, level: Level, piece: AddrRange) -> Region<O> {
    let port = |v: u128| u16::try_from(v).unwrap_or(u16::MAX);
    match level {
        Level::Peer => region.peer = piece,
        Level::Local => region.local = piece,
        Level::Dport => region.dport = Some((port(piece.0), port(piece.1))),
        Level::Sport => region.sport = Some((port(piece.0), port(piece.1))),
    }
    region
}

/// Cuts `range` at every start and every end of `spans` into elementary intervals.
fn elementary(range: AddrRange, spans: &[AddrRange]) -> Vec<AddrRange> {
    let (lo, hi) = range;
    let mut cuts: Vec<u128> = vec![lo];
    for &(first, last) in spans {
        if first > lo && first <= hi {
            cuts.push(first);
        }
        if last >= lo && last < hi {
            cuts.push(last + 1);
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::with_capacity(cuts.len());
    for (i, &start) in cuts.iter().enumerate() {
        let end = cuts.get(i + 1).map_or(hi, |next| next - 1);
        out.push((start, end));
    }
    out
}

/// The rules of one interface and direction (or of one group alone), ranked, with the
/// pseudo-rules of steps 4 and 6, as matchers per family.
pub struct Pool<'c> {
    pub cfg: &'c Config,
    /// The interface's name, or `None` for a group looked at on its own.
    pub iface: Option<&'c str>,
    pub groups: Vec<usize>,
    pub kind: GroupKind,
    pub direction: Direction,
    /// In rank order.
    pub rules: Vec<&'c Rule>,
}

/// Who decides a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Decider {
    IntraGroupAccept {
        group_index: usize,
    },
    Rule {
        rule_id: u32,
    },
    IntraGroupIsolation {
        group_index: usize,
    },
    Default,
    /// The interface is not in the file: nothing is enforced on it.
    NotBound,
}

impl<'c> Pool<'c> {
    pub fn of_interface(
        cfg: &'c Config,
        iface: &'c crate::policy::config::InterfaceBinding,
        direction: Direction,
    ) -> Pool<'c> {
        Pool {
            cfg,
            iface: Some(&iface.name),
            groups: iface.groups.clone(),
            kind: iface.kind(cfg),
            direction,
            rules: pooled_rules(cfg, iface, direction),
        }
    }

    /// A group as if it were alone on an interface.
    pub fn of_group(cfg: &'c Config, group_index: usize, direction: Direction) -> Pool<'c> {
        let binding = crate::policy::config::InterfaceBinding {
            name: String::new(),
            groups: vec![group_index],
            mode: crate::policy::config::Mode::Enforce,
            addresses: Vec::new(),
        };
        let rules = pooled_rules(cfg, &binding, direction);
        Pool { cfg, iface: None, groups: vec![group_index], kind: binding.kind(cfg), direction, rules }
    }

    /// Rule matchers in rank order, then intra-group accept pseudo-rules (binding order),
    /// then isolation pseudo-rules (binding order).
    pub fn matchers(&self, family: Family) -> Vec<Matcher> {
        let mut out: Vec<Matcher> = self.rules.iter().map(|r| Matcher::of_rule(self.cfg, r, family)).collect();
        for &g in &self.groups {
            let group = &self.cfg.groups[g];
            if group.kind == GroupKind::Basic && group.inner_access == Action::Accept {
                out.push(Matcher::of_members(Source::IntraAccept { group_index: g }, &group.members, family));
            }
        }
        for &g in &self.groups {
            let group = &self.cfg.groups[g];
            if group.inner_access == Action::Drop {
                out.push(Matcher::of_members(Source::Isolation { group_index: g }, &group.members, family));
            }
        }
        out
    }

    /// Evaluation steps 4 to 7 (docs/rule-model.md) over the matchers containing a cell (indexes into
    /// [`Pool::matchers`], ascending).
    pub fn decide(&self, matchers: &[Matcher], alive: &[usize]) -> (Decider, Action) {
        let sources = alive.iter().map(|&i| matchers[i].source);
        if let Some(Source::IntraAccept { group_index }) =
            sources.clone().find(|s| matches!(s, Source::IntraAccept { .. }))
        {
            return (Decider::IntraGroupAccept { group_index }, Action::Accept);
        }
        // Rule matchers come first and in rank order, so the first alive one decides.
        if let Some(&i) = alive.first()
            && let Source::Rule { rule_id } = matchers[i].source
        {
            let action = self.cfg.rule(rule_id).map_or(Action::Drop, |r| r.action);
            return (Decider::Rule { rule_id }, action);
        }
        if let Some(Source::Isolation { group_index }) = sources.clone().find(|s| matches!(s, Source::Isolation { .. }))
        {
            return (Decider::IntraGroupIsolation { group_index }, Action::Drop);
        }
        (Decider::Default, crate::policy::order::default_action(self.kind, self.direction))
    }
}
