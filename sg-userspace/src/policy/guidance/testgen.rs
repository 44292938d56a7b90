//! Random small rule files for the exactness tests of `space`, `lint` and `diff`, and
//! boundary-biased packets to probe them with.
//!
//! Addresses come from a handful of overlapping networks in 198.18.0.0/15 and
//! 2001:db8::/32 (plus the whole Internet), ports from a handful of overlapping ranges, so
//! that random rules overlap, shadow and tie often.

use std::net::IpAddr;

use crate::policy::config::{Config, Direction, parse_str};
use crate::policy::eval::PacketTuple;

/// xorshift64*: deterministic from the seed proptest draws.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    #[expect(clippy::should_implement_trait, reason = "an endless generator, not an iterator")]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

pub const V4_NETS: &[&str] = &[
    "0.0.0.0/0",
    "198.18.0.0/24",
    "198.18.0.0/26",
    "198.18.0.64/26",
    "198.18.0.128/25",
    "198.18.0.7",
    "198.18.0.200/29",
    "198.19.0.0/16",
];
pub const V6_NETS: &[&str] = &["::/0", "2001:db8::/120", "2001:db8::80/121", "2001:db8::5", "2001:db8:1::/48"];
pub const MEMBERS: &[&str] =
    &["198.18.0.5", "198.18.0.70", "198.18.0.129", "198.18.1.1", "198.18.0.7", "2001:db8::5", "2001:db8::81"];
const PORTS: &[&str] = &["1/65535", "20/30", "25/25", "28/40", "100/200", "443/443"];
const SOURCE_PORTS: &[&str] = &["1/1024", "1000/2000", "25/25"];
const PROTOCOLS: &[&str] = &["tcp", "udp", "icmp", "icmpv6", "gre", "all", "tcp", "udp", "icmp", "50", "132", "0"];
/// ICMP and ICMPv6 types and codes rules and packets pick from, so that they meet often.
const ICMP_TYPES: &[u8] = &[0, 3, 8, 11, 128, 129, 1, 255];
const ICMP_CODES: &[u8] = &[0, 1, 3, 4, 255];

/// A random valid rule file with interfaces `eth0` (and sometimes `eth1`).
pub fn random_file(rng: &mut Rng) -> String {
    let advanced = rng.chance(20);
    let groups = 1 + rng.below(3);
    let mut out = String::new();
    for g in 0..groups {
        out.push_str(&format!("[[security_group]]\nid = \"sg-{g}\"\n"));
        if advanced {
            out.push_str("type = \"advanced\"\n");
        } else if rng.chance(30) {
            out.push_str("inner_access_policy = \"drop\"\n");
        }
        let members: Vec<String> = MEMBERS.iter().filter(|_| rng.chance(30)).map(|m| format!("\"{m}\"")).collect();
        out.push_str(&format!("members = [{}]\n", members.join(", ")));
        for _ in 0..rng.below(6) {
            out.push_str(&random_rule(rng, g, groups, advanced));
        }
    }
    out.push_str("[[prefix_list]]\nid = \"pl-4\"\nfamily = \"ipv4\"\n");
    let v4: Vec<String> = (0..1 + rng.below(2)).map(|_| format!("\"{}\"", rng.pick(&V4_NETS[1..]))).collect();
    out.push_str(&format!("entries = [{}]\n", v4.join(", ")));
    out.push_str("[[prefix_list]]\nid = \"pl-6\"\nfamily = \"ipv6\"\n");
    let v6: Vec<String> = (0..1 + rng.below(2)).map(|_| format!("\"{}\"", rng.pick(&V6_NETS[1..]))).collect();
    out.push_str(&format!("entries = [{}]\n", v6.join(", ")));
    let bound: Vec<String> = (0..groups).filter(|_| rng.chance(70)).map(|g| format!("\"sg-{g}\"")).collect();
    let bound = if bound.is_empty() { vec!["\"sg-0\"".to_string()] } else { bound };
    out.push_str(&format!("[[interface]]\nname = \"eth0\"\nsecurity_groups = [{}]\n", bound.join(", ")));
    if rng.chance(30) {
        out.push_str(&format!("[[interface]]\nname = \"eth1\"\nsecurity_groups = [\"sg-{}\"]\n", rng.below(groups)));
    }
    out
}

fn random_rule(rng: &mut Rng, own: usize, groups: usize, advanced: bool) -> String {
    let ingress = rng.chance(60);
    let protocol = *rng.pick(PROTOCOLS);
    let mut rule = String::from("  [[security_group.rule]]\n");
    rule.push_str(&format!("  direction = \"{}\"\n", if ingress { "ingress" } else { "egress" }));
    if rng.chance(40) {
        rule.push_str("  policy = \"drop\"\n");
    }
    rule.push_str(&format!("  priority = {}\n", 1 + rng.below(3)));
    if protocol.starts_with(|c: char| c.is_ascii_digit()) && rng.chance(50) {
        rule.push_str(&format!("  protocol = {protocol}\n"));
    } else {
        rule.push_str(&format!("  protocol = \"{protocol}\"\n"));
    }
    if (protocol == "icmp" || protocol == "icmpv6") && rng.chance(60) {
        rule.push_str(&format!("  icmp_type = {}\n", rng.pick(ICMP_TYPES)));
        if rng.chance(50) {
            rule.push_str(&format!("  icmp_code = {}\n", rng.pick(ICMP_CODES)));
        }
    }
    if protocol == "tcp" || protocol == "udp" {
        rule.push_str(&format!("  port_range = \"{}\"\n", rng.pick(PORTS)));
        if rng.chance(20) {
            rule.push_str(&format!("  source_port_range = \"{}\"\n", rng.pick(SOURCE_PORTS)));
        }
    }
    let family_v6 = match protocol {
        "icmp" => false,
        "icmpv6" => true,
        _ => rng.chance(35),
    };
    let side = if ingress { "source" } else { "destination" };
    // Advanced groups neither reference groups nor are referenced.
    let other_groups: Vec<usize> = (0..groups).filter(|&g| g != own && !advanced).collect();
    let kind = rng.below(10);
    let cidr_peer = if kind < 2 && !other_groups.is_empty() && protocol != "icmp" && protocol != "icmpv6" {
        rule.push_str(&format!("  {side}_group = \"sg-{}\"\n", rng.pick(&other_groups)));
        false
    } else if kind < 4 {
        rule.push_str(&format!("  {side}_prefix_list = \"{}\"\n", if family_v6 { "pl-6" } else { "pl-4" }));
        true
    } else {
        let nets = if family_v6 { V6_NETS } else { V4_NETS };
        rule.push_str(&format!("  {side} = \"{}\"\n", rng.pick(nets)));
        true
    };
    if rng.chance(20) {
        let v6 = if cidr_peer { family_v6 } else { rng.chance(35) };
        let nets = if v6 { V6_NETS } else { V4_NETS };
        let local_key = if ingress { "destination" } else { "source" };
        rule.push_str(&format!("  {local_key} = \"{}\"\n", rng.pick(&nets[1..])));
    }
    rule
}

pub fn random_config(seed: u64) -> (String, Config) {
    let text = random_file(&mut Rng::new(seed));
    let cfg = parse_str(&text, "random.toml").unwrap_or_else(|e| panic!("generated an invalid file:\n{e}\n{text}"));
    (text, cfg)
}

/// Addresses at and around every boundary of the pools, and random ones.
pub fn random_addr(rng: &mut Rng, v6: bool) -> IpAddr {
    use super::space::{addr_to_u128, net_range, u128_to_addr};
    use crate::policy::config::Family;
    let family = if v6 { Family::Ipv6 } else { Family::Ipv4 };
    let nets = if v6 { V6_NETS } else { V4_NETS };
    let max = super::space::max_addr(family);
    let value = match rng.below(4) {
        0 => {
            let members: Vec<&&str> = MEMBERS.iter().filter(|m| m.contains(':') == v6).collect();
            addr_to_u128(rng.pick(&members).parse().expect("member"))
        }
        1 | 2 => {
            let text = *rng.pick(nets);
            let net: ipnet::IpNet =
                text.parse().unwrap_or_else(|_| ipnet::IpNet::from(text.parse::<IpAddr>().expect("addr")));
            let (first, last) = net_range(&net);
            match rng.below(4) {
                0 => first.saturating_sub(1),
                1 => first,
                2 => last,
                _ => last.saturating_add(1).min(max),
            }
        }
        _ => {
            let base = if v6 {
                addr_to_u128("2001:db8::".parse().expect("v6"))
            } else {
                addr_to_u128("198.18.0.0".parse().expect("v4"))
            };
            if rng.chance(80) { base + u128::from(rng.next() % 512) } else { u128::from(rng.next()) & max }
        }
    };
    u128_to_addr(family, value)
}

pub fn random_port(rng: &mut Rng) -> u16 {
    const EDGES: &[u16] = &[
        0, 1, 19, 20, 24, 25, 26, 27, 28, 30, 31, 40, 41, 99, 100, 200, 201, 442, 443, 444, 999, 1000, 1024, 1025,
        2000, 2001, 65535,
    ];
    if rng.chance(85) { *rng.pick(EDGES) } else { u16::try_from(rng.next() % 65536).unwrap_or(0) }
}

pub fn random_packet(rng: &mut Rng) -> (Direction, PacketTuple) {
    const PROTOS: &[u8] = &[6, 17, 1, 58, 47, 132, 0, 6, 17, 50, 51, 4, 255, 1, 58];
    let v6 = rng.chance(40);
    let direction = if rng.chance(50) { Direction::Ingress } else { Direction::Egress };
    let protocol = *rng.pick(PROTOS);
    // ICMP messages carry their type and code as the key rules match (`PacketTuple`).
    let dst_port = if matches!(protocol, 1 | 58) && rng.chance(85) {
        crate::policy::config::IcmpMatch { icmp_type: *rng.pick(ICMP_TYPES), code: Some(*rng.pick(ICMP_CODES)) }
            .key_range()
            .first
    } else {
        random_port(rng)
    };
    let packet = PacketTuple {
        src: random_addr(rng, v6),
        dst: random_addr(rng, v6),
        protocol,
        src_port: random_port(rng),
        dst_port,
    };
    (direction, packet)
}
