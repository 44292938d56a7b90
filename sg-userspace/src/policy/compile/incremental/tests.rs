//! Incremental compiles against whole ones: every lookup of every field gives the same
//! rules, over chains of edits each compiled from the one before.

use std::net::IpAddr;

use sg_common::field;

use super::super::{CompileCache, Compiled, compile};
use crate::policy::config::{Action, Config, Direction, PortRange, Protocol, parse_str};

/// A deterministic generator (the tests need no crate for it).
pub(in crate::policy::compile) struct Lcg(pub(in crate::policy::compile) u64);

impl Lcg {
    pub(in crate::policy::compile) fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// `n` rules of mixed protocols, ports and peers (some with source ports, one with a
/// local address) in one basic group on `eth0`.
pub(in crate::policy::compile) fn rules_file(n: usize, rng: &mut Lcg) -> String {
    let mut text = String::from("[[security_group]]\nid = \"sg-a\"\nmembers = [\"198.18.0.10\", \"2001:db8::10\"]\n");
    for i in 0..n {
        let (protocol, ports) = match rng.next(6) {
            0 | 1 => ("tcp", true),
            2 => ("udp", true),
            3 => ("icmp", false),
            4 => ("icmpv6", false),
            _ => ("all", false),
        };
        let v6 = protocol == "icmpv6" || (protocol != "icmp" && rng.next(3) == 0);
        let peer: ipnet::IpNet = if v6 {
            format!("2001:db8:{:x}::/{}", rng.next(64), 32 + rng.next(33))
        } else {
            format!("198.{}.{}.0/{}", 18 + rng.next(2), rng.next(256), 8 + rng.next(17))
        }
        .parse()
        .expect("a network");
        let peer = peer.trunc();
        text.push_str(&format!(
            "  [[security_group.rule]]\n  direction = \"ingress\"\n  protocol = \"{protocol}\"\n  priority = {}\n  \
             source = \"{peer}\"\n  policy = \"{}\"\n",
            1 + rng.next(20),
            if rng.next(4) == 0 { "drop" } else { "accept" }
        ));
        if ports {
            let first = 1 + rng.next(2000);
            text.push_str(&format!("  port_range = \"{first}/{}\"\n", first + rng.next(3) * rng.next(300)));
            if rng.next(8) == 0 {
                text.push_str("  source_port_range = \"1024/65535\"\n");
            }
        }
        if i == 7 && !v6 {
            text.push_str("  destination = \"198.18.0.10\"\n");
        }
    }
    text.push_str("[[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-a\"]\n");
    text
}

/// Vector words of every lookup the kernel makes, equal in both.
pub(in crate::policy::compile) fn assert_same_decisions(inc: &Compiled, full: &Compiled, cfg: &Config) {
    assert_eq!(inc.rules, full.rules);
    let shape = |c: &Compiled| c.bands.iter().map(|b| (b.flags, b.rule_count)).collect::<Vec<_>>();
    assert_eq!(shape(inc), shape(full));
    let words = |c: &Compiled, v: &sg_common::RuleVector| (0..c.words()).map(|w| c.word(v, w)).collect::<Vec<_>>();
    for protocol in [6u8, 17, 1, 58, 47, 0] {
        for port in 0..=u16::MAX {
            let (a, b) = (
                inc.port_lookup(0, field::DESTINATION_PORT, protocol, port),
                full.port_lookup(0, field::DESTINATION_PORT, protocol, port),
            );
            assert_eq!(a.map(|v| words(inc, v)), b.map(|v| words(full, v)), "protocol {protocol} port {port}");
            if protocol != 6 && protocol != 17 && protocol != 1 && protocol != 58 {
                break;
            }
        }
    }
    if full.bands[0].flags & sg_common::RULESET_HAS_SOURCE_PORT != 0 {
        for port in 0..=u16::MAX {
            let (a, b) =
                (inc.port_lookup(0, field::SOURCE_PORT, 0, port), full.port_lookup(0, field::SOURCE_PORT, 0, port));
            assert_eq!(a.map(|v| words(inc, v)), b.map(|v| words(full, v)), "source port {port}");
        }
    }
    // Peers: every rule's network, its neighbours and the ends of the space.
    let mut addrs: Vec<IpAddr> =
        vec!["0.0.0.0".parse().unwrap(), "255.255.255.255".parse().unwrap(), "::".parse().unwrap()];
    for rule in cfg.rules() {
        if let crate::policy::config::Peer::Cidr(net) = rule.peer {
            addrs.push(net.network());
            addrs.push(net.broadcast());
        }
    }
    for addr in addrs {
        for f in [field::PEER, field::LOCAL] {
            let (a, b) = (inc.addr_lookup(0, f, addr), full.addr_lookup(0, f, addr));
            assert_eq!(a.map(|v| words(inc, v)), b.map(|v| words(full, v)), "field {f} address {addr}");
        }
    }
    // The summary the kernel's bit search skips chunks by: a bit per non-zero chunk.
    for v in &inc.vectors {
        for column in 0..inc.words().div_ceil(sg_common::CHUNK_WORDS) {
            let nonzero = inc.chunks[v.chunks[column] as usize].words.iter().any(|&w| w != 0);
            assert_eq!(v.summary >> column & 1 == 1, nonzero, "summary of column {column}");
        }
    }
    // What no lookup reaches is kept to a sixty-fourth of the set (and a few more of the
    // blocks, which a whole compile has none of).
    let whole = full.vectors.len() + full.chunks.len() + full.port_blocks.len();
    let total = inc.vectors.len() + inc.chunks.len() + inc.port_blocks.len();
    assert!(total <= whole + whole / 64 + 4, "{total} entries, a whole compile {whole}");
}

#[test]
fn chains_of_port_protocol_and_action_edits_decide_as_whole_compiles() {
    let mut rng = Lcg(0x1c0de);
    let text = rules_file(300, &mut rng);
    let mut cfg = parse_str(&text, "inc.toml").unwrap_or_else(|e| panic!("{}", e.errors[0]));
    let iface = cfg.interfaces[0].clone();
    let mut cache = CompileCache::default();
    cache.compile(&cfg, &iface, Direction::Ingress).expect("compiles");
    let mut incremental = 0;
    for round in 0..60 {
        let ported: Vec<usize> = (0..cfg.groups[0].rules.len()).collect();
        let rule = &mut cfg.groups[0].rules[ported[rng.next(ported.len() as u64) as usize]];
        match rng.next(5) {
            // A port range (any protocol with tables takes one: ICMP keys too).
            0..=2 if rule.protocol != Protocol::All => {
                let first = rng.next(3000) as u16;
                rule.port_range = PortRange { first, last: first + rng.next(400) as u16 };
            }
            3 if matches!(rule.protocol, Protocol::Tcp | Protocol::Udp) => {
                rule.protocol = if rule.protocol == Protocol::Tcp { Protocol::Udp } else { Protocol::Tcp };
            }
            _ => rule.action = if rule.action == Action::Accept { Action::Drop } else { Action::Accept },
        }
        let before = cache.recompiled;
        let inc = cache.compile(&cfg, &iface, Direction::Ingress).expect("compiles");
        incremental += cache.recompiled - before;
        let full = compile(&cfg, &iface, Direction::Ingress).expect("compiles");
        assert_same_decisions(&inc, &full, &cfg);
        let _ = round;
    }
    // Action flips reorder rules of one priority, which compiles whole; most edits do not.
    assert!(incremental >= 30, "only {incremental} of 60 edits compiled from the set before");
}

/// Edits the reader reads as one rule's (ports, actions, priorities, peers), compiled
/// through the cache from the lineage alone (the edited rule's matcher made again, not
/// every rule's), decide as whole compiles, and leave the cache holding the matchers a
/// whole build makes.
#[test]
fn reader_edits_compiled_from_their_lineage_decide_as_whole_compiles() {
    let mut rng = Lcg(0x11ea6e);
    let mut text = rules_file(300, &mut rng);
    let mut reader = crate::policy::config::Reader::default();
    let mut cache = CompileCache::default();
    let cfg = reader.read(&text, "inc.toml").unwrap_or_else(|e| panic!("{}", e.errors[0]));
    let iface = cfg.interfaces[0].clone();
    cache.compile(cfg, &iface, Direction::Ingress).expect("compiles");
    let mut one_rule_reads = 0;
    for round in 0..40 {
        // The nth rule's table, edited in one of its lines.
        let starts: Vec<usize> = text.match_indices("[[security_group.rule]]").map(|(at, _)| at).collect();
        let n = rng.next(starts.len() as u64) as usize;
        let end = starts.get(n + 1).copied().unwrap_or_else(|| text.find("[[interface]]").expect("interface"));
        let table = &text[starts[n]..end];
        let edited = match round % 4 {
            0 if table.contains("port_range") => {
                let first = 1 + rng.next(3000);
                let at = table.find("port_range = \"").expect("ports");
                let close = at + table[at..].find('\n').expect("line end");
                format!("{}port_range = \"{first}/{}\"{}", &table[..at], first + rng.next(50), &table[close..])
            }
            1 => table
                .replacen("\"accept\"", "\"@\"", 1)
                .replacen("\"drop\"", "\"accept\"", 1)
                .replacen("\"@\"", "\"drop\"", 1),
            2 => {
                let at = table.find("priority = ").expect("priority");
                let close = at + table[at..].find('\n').expect("line end");
                format!("{}priority = {}{}", &table[..at], 1 + rng.next(20), &table[close..])
            }
            _ => {
                let at = table.find("source = \"").expect("a source");
                let close = at + table[at..].find('\n').expect("line end");
                format!("{}source = \"198.19.{}.0/24\"{}", &table[..at], rng.next(256), &table[close..])
            }
        };
        let next = format!("{}{edited}{}", &text[..starts[n]], &text[end..]);
        let Ok(cfg) = reader.read(&next, "inc.toml") else { continue };
        let inc = cache.compile(cfg, &iface, Direction::Ingress).expect("compiles");
        let full = compile(cfg, &iface, Direction::Ingress).expect("compiles");
        assert_same_decisions(&inc, &full, cfg);
        let key = (iface.name.clone(), Direction::Ingress);
        let kept = &cache.last[&key].from;
        assert!(*kept == super::super::matchers(cfg, &iface, Direction::Ingress).expect("builds"), "round {round}");
        text = next;
        one_rule_reads += usize::from(reader.last_kind() == Some(crate::policy::config::ReadKind::OneRule));
    }
    assert!(one_rule_reads >= 25, "only {one_rule_reads} of 40 edits read as one rule's");
    assert_eq!(cache.from_edit, one_rule_reads, "every one-rule read compiled from its lineage");
    assert!(cache.recompiled >= 5, "only {} compiled from the set before", cache.recompiled);
}
