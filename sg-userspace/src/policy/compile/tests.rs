use std::net::IpAddr;

use sg_common::{step, verdict};

use super::*;
use crate::policy::config::parse_str;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const WEB: &str = r#"
[[security_group]]
id = "sg-web"
members = ["198.18.0.10", "2001:db8::10"]

  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "80/80"
  source = "0.0.0.0/0"

  [[security_group.rule]]
  direction = "ingress"
  policy = "drop"
  priority = 5
  protocol = "tcp"
  port_range = "1/65535"
  source = "198.19.0.0/16"

  [[security_group.rule]]
  direction = "ingress"
  protocol = "udp"
  port_range = "53/53"
  source = "198.19.0.0/16"
  source_port_range = "1024/65535"

[[interface]]
name = "eth0"
security_groups = ["sg-web"]
"#;

#[test]
fn pseudo_rules_frame_the_user_rules_in_rank_order() {
    let cfg = parse_str(WEB, "web.toml").unwrap();
    let c = compile(&cfg, &cfg.interfaces[0], Direction::Ingress).unwrap();
    let steps: Vec<u8> = c.rules.iter().map(|r| r.step).collect();
    assert_eq!(steps, vec![step::INTRA_GROUP_ACCEPT, step::RULE, step::RULE, step::RULE, step::DEFAULT]);
    // Priority 1 rules (ids 1 and 3) before the priority 5 drop (id 2).
    let ids: Vec<u32> = c.rules[1..4].iter().map(|r| r.rule_id).collect();
    assert_eq!(ids, vec![1, 3, 2]);
    assert_eq!(c.rules[4].verdict, verdict::DROP, "basic ingress default is drop");
    assert_eq!(c.bands[0].flags, RULESET_HAS_SOURCE_PORT);
}

#[test]
fn simulated_lookups_find_the_deciding_rule() {
    let cfg = parse_str(WEB, "web.toml").unwrap();
    let c = compile(&cfg, &cfg.interfaces[0], Direction::Ingress).unwrap();
    let local = ip("198.18.0.10");
    let sim = |peer: &str, proto: u8, sport: u16, dport: u16| c.simulate(ip(peer), local, proto, sport, dport).unwrap();
    // Anyone on 80, the accept outranks the drop.
    assert_eq!(sim("198.19.1.1", 6, 40000, 80).rule_id, 1);
    // The drop covers other TCP ports from 198.19/16.
    let s = sim("198.19.1.1", 6, 40000, 22);
    assert_eq!((s.step, s.verdict, s.rule_id), (step::RULE, verdict::DROP, 2));
    // Elsewhere: the default.
    assert_eq!(sim("198.20.0.1", 6, 40000, 22).step, step::DEFAULT);
    // UDP 53 needs a source port >= 1024.
    assert_eq!(sim("198.19.1.1", 17, 5353, 53).rule_id, 3);
    assert_eq!(sim("198.19.1.1", 17, 53, 53).step, step::DEFAULT);
    // A member is accepted before any rule; IPv6 rules do not see IPv4 CIDRs.
    assert_eq!(sim("198.18.0.10", 6, 1, 22).step, step::INTRA_GROUP_ACCEPT);
    let v6 = c.simulate(ip("2001:db8::99"), ip("2001:db8::10"), 6, 40000, 80).unwrap();
    assert_eq!(v6.step, step::DEFAULT);
}

#[test]
fn equal_vectors_are_stored_once() {
    let cfg = parse_str(WEB, "web.toml").unwrap();
    let c = compile(&cfg, &cfg.interfaces[0], Direction::Ingress).unwrap();
    let mut seen = std::collections::HashSet::new();
    assert!((0..c.vectors.len() as u32).all(|i| seen.insert(c.vector_words(i))));
    let mut chunks = std::collections::HashSet::new();
    assert!(c.chunks.iter().all(|chunk| chunks.insert(*chunk)));
}

/// Each vector's summary marks exactly its non-zero chunks, and its chunk row covers
/// every word of the rule set.
#[test]
fn vectors_are_summaries_over_shared_chunks() {
    let cfg = parse_str(WEB, "web.toml").unwrap();
    let c = compile(&cfg, &cfg.interfaces[0], Direction::Ingress).unwrap();
    assert!(c.chunks.len() <= c.vectors.len() * c.words().div_ceil(sg_common::CHUNK_WORDS));
    for (i, v) in c.vectors.iter().enumerate() {
        let words = c.vector_words(i as u32);
        for (n, part) in words.chunks(sg_common::CHUNK_WORDS).enumerate() {
            assert_eq!(v.summary >> n & 1 == 1, part.iter().any(|w| *w != 0), "vector {i} chunk {n}");
        }
        let used = c.words().div_ceil(sg_common::CHUNK_WORDS);
        assert!(v.summary >> used == 0, "no summary bits past the rule set's chunks");
        assert!(v.chunks[..used].iter().all(|&n| (n as usize) < c.chunks.len()));
    }
}

/// Every port of every table, against the rules' ranges directly: blocks shared where a
/// 256-port block is uniform, second-level blocks where ranges start or end inside one.
#[test]
fn port_tables_give_every_port_the_rules_covering_it() {
    let text = r#"
[[security_group]]
id = "sg-ports"
members = ["198.18.0.10"]

  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "80/80"
  source = "0.0.0.0/0"

  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "1000/2047"
  source = "0.0.0.0/0"

  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "8000/65535"
  source = "0.0.0.0/0"
  source_port_range = "1024/1279"

  [[security_group.rule]]
  direction = "ingress"
  protocol = "udp"
  port_range = "53/53"
  source = "0.0.0.0/0"

  [[security_group.rule]]
  direction = "ingress"
  protocol = "icmp"
  source = "0.0.0.0/0"

[[interface]]
name = "eth0"
security_groups = ["sg-ports"]
"#;
    let cfg = parse_str(text, "ports.toml").unwrap();
    let c = compile(&cfg, &cfg.interfaces[0], Direction::Ingress).unwrap();
    assert_eq!(c.port_tables.len(), sg_common::PORT_TABLES as usize);
    // Second-level blocks only where an edge falls inside a 256-port block: TCP 80,
    // 1000 and 8000 (2047 ends on a block edge), UDP 53, source 1024-1279 none; and three
    // for the IPv4 peer table (the member's /32, for the intra-group pseudo-rule).
    assert_eq!(c.port_blocks.len(), 4 + 3);
    let local = ip("198.18.0.10");
    for port in 0..=u16::MAX {
        let tcp = c.simulate(ip("198.19.0.1"), local, 6, 40000, port).unwrap();
        let want = match port {
            80 => 1,
            1000..=2047 => 2,
            _ => 0,
        };
        assert_eq!(tcp.rule_id, want, "tcp port {port}");
        let with_source = c.simulate(ip("198.19.0.1"), local, 6, port, 9000).unwrap();
        assert_eq!(with_source.rule_id, if (1024..=1279).contains(&port) { 3 } else { 0 }, "source port {port}");
        let udp = c.simulate(ip("198.19.0.1"), local, 17, 40000, port).unwrap();
        assert_eq!(udp.rule_id, if port == 53 { 4 } else { 0 }, "udp port {port}");
    }
    assert_eq!(c.simulate(ip("198.19.0.1"), local, 1, 0, 0).unwrap().rule_id, 5, "ICMP from the port trie");
    assert_eq!(c.simulate(ip("198.19.0.1"), local, 47, 0, 0).unwrap().step, step::DEFAULT, "GRE: no rule");
}

/// The IPv4 peer table answers like a longest-prefix match over the entries it was built
/// from, at every prefix edge and around it.
#[test]
fn v4_table_is_a_longest_prefix_match() {
    let nets = [
        "0.0.0.0/0",
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.0/24",
        "10.1.2.3/32",
        "10.1.2.128/25",
        "10.1.2.192/26",
        "192.168.0.0/17",
        "192.168.128.0/18",
        "172.16.0.0/12",
        "172.20.1.0/30",
        "198.18.0.0/15",
        "200.0.0.0/7",
    ];
    let entries: Vec<AddrEntry> = nets
        .iter()
        .enumerate()
        .map(|(i, n)| AddrEntry { band: 0, field: field::PEER, net: n.parse().unwrap(), vector: i as u32 })
        .collect();
    let mut blocks = Vec::new();
    let root = v4_table(entries.clone(), &mut blocks);
    let lookup = |addr: std::net::Ipv4Addr| {
        let mut entry = root.entries[usize::from(addr.octets()[0])];
        for &byte in &addr.octets()[1..] {
            if entry & PORT_BLOCK_REF == 0 {
                break;
            }
            entry = blocks[(entry & !PORT_BLOCK_REF) as usize].entries[usize::from(byte)];
        }
        assert_eq!(entry & PORT_BLOCK_REF, 0, "{addr}: four levels end in a vector");
        entry
    };
    let brute = |addr: std::net::Ipv4Addr| {
        entries
            .iter()
            .filter(|e| e.net.contains(&IpAddr::V4(addr)))
            .max_by_key(|e| e.net.prefix_len())
            .map(|e| e.vector)
            .unwrap()
    };
    for e in &entries {
        let IpNet::V4(net) = e.net else { unreachable!() };
        let (first, last) = (u32::from(net.network()), u32::from(net.broadcast()));
        for edge in [first, last] {
            for delta in [-2i64, -1, 0, 1, 2] {
                let Ok(a) = u32::try_from(i64::from(edge) + delta) else { continue };
                let addr = std::net::Ipv4Addr::from(a);
                assert_eq!(lookup(addr), brute(addr), "{addr}");
            }
        }
    }
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let addr = std::net::Ipv4Addr::from(x);
        assert_eq!(lookup(addr), brute(addr), "{addr}");
    }
}

/// A rule file of `n` ingress rules over varied ports and sources, spread over many
/// chunks, plus one egress rule.
fn many_rules(n: usize, first_port: u16) -> String {
    let mut text = String::from(
        "[[security_group]]\nid = \"sg-many\"\nmembers = [\"198.18.0.10\"]\n\n  [[security_group.rule]]\n  \
         direction = \"egress\"\n  protocol = \"udp\"\n  port_range = \"53/53\"\n  destination = \"198.19.0.0/16\"\n",
    );
    for i in 0..n {
        let port = first_port + (i as u16 * 37) % 2000;
        let (proto, range) = match i % 3 {
            0 => ("tcp", format!("{port}/{port}")),
            1 => ("udp", format!("{port}/{}", port + (i as u16 % 300))),
            _ => ("icmp", String::new()),
        };
        let range = if range.is_empty() { String::new() } else { format!("  port_range = \"{range}\"\n") };
        let (a, b) = (18 + i % 2, (i / 7) % 256);
        let source = match i % 5 {
            0 => format!("198.{a}.0.0/16"),
            1 | 2 => format!("198.{a}.{b}.0/24"),
            _ => format!("198.{a}.{b}.{}", i % 256),
        };
        text += &format!(
            "\n  [[security_group.rule]]\n  direction = \"ingress\"\n  protocol = \"{proto}\"\n{range}  source = \
             \"{source}\"\n"
        );
    }
    text + "\n[[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-many\"]\n"
}

/// Vectors are built as rows of interned chunks (and a port sweep interns chunks of
/// running sets no final vector keeps): the rule set keeps only chunks some vector
/// names, each once, and each vector's words are what the rules say.
#[test]
fn a_large_rule_set_keeps_only_the_chunks_its_vectors_name() {
    let cfg = parse_str(&many_rules(1500, 1000), "many.toml").unwrap();
    let c = compile(&cfg, &cfg.interfaces[0], Direction::Ingress).unwrap();
    let used = c.words().div_ceil(sg_common::CHUNK_WORDS);
    assert!(used > 2, "spread over several chunks");
    let named: std::collections::HashSet<u32> = c.vectors.iter().flat_map(|v| v.chunks[..used].to_vec()).collect();
    assert_eq!(named.len(), c.chunks.len(), "every chunk is named, none twice");
    let mut distinct = std::collections::HashSet::new();
    assert!(c.chunks.iter().all(|chunk| distinct.insert(*chunk)));
    // A TCP packet to port 1000 from 198.18.0.1: the first ingress rule (tcp 1000,
    // 198.18.0.0/16) decides it.
    let first = c.rules.iter().find(|r| r.step == step::RULE).unwrap();
    let s = c.simulate(ip("198.18.0.1"), ip("198.18.0.10"), ip_proto::TCP, 40000, 1000).unwrap();
    assert_eq!((s.step, s.rule_id), (step::RULE, first.rule_id));
}

/// The compile cache hands back the very rule set it compiled when an interface's rules
/// in a direction did not change, and compiles again (to what a plain compile gives)
/// where they did.
#[test]
fn the_cache_compiles_again_only_what_changed() {
    let before = parse_str(&many_rules(700, 1000), "many.toml").unwrap();
    let after = parse_str(&many_rules(700, 1001), "many.toml").unwrap();
    let iface = |cfg: &Config| cfg.interfaces[0].clone();
    let mut cache = CompileCache::default();
    let ingress = cache.compile(&before, &iface(&before), Direction::Ingress).unwrap();
    let egress = cache.compile(&before, &iface(&before), Direction::Egress).unwrap();
    cache.keep_used();
    assert!(Arc::ptr_eq(&ingress, &cache.compile(&before, &iface(&before), Direction::Ingress).unwrap()));
    let changed = cache.compile(&after, &iface(&after), Direction::Ingress).unwrap();
    assert!(!Arc::ptr_eq(&ingress, &changed));
    assert_eq!(*changed, compile(&after, &after.interfaces[0], Direction::Ingress).unwrap());
    assert_ne!(*changed, *ingress);
    assert!(Arc::ptr_eq(&egress, &cache.compile(&after, &iface(&after), Direction::Egress).unwrap()));
    // What the latest compile did not ask for is forgotten.
    cache.keep_used();
    cache.compile(&after, &iface(&after), Direction::Ingress).unwrap();
    cache.keep_used();
    let again = cache.compile(&after, &iface(&after), Direction::Egress).unwrap();
    assert!(!Arc::ptr_eq(&egress, &again));
    assert_eq!(*again, *egress);
}
