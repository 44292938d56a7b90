//! Classification in the kernel against the reference evaluator, on both hooks, with
//! the use-case rule file; and the per-packet cost at 10 and 16,384 rules.

use sg_tests::{
    r#gen::{GenOptions, case},
    kernel::kernel_tests_enabled,
    testrun::{HOOKS, TEST_RUN_IFINDEX, compare, frame_for, hook_for, named, run},
};
use sgctl::{
    control::Enforcer,
    dataplane::{Capacity, Dataplane, LoadOptions},
    policy::config::{Direction, load_file, parse_str},
    policy::eval::PacketTuple,
};

fn packet(src: &str, dst: &str, protocol: u8, src_port: u16, dst_port: u16) -> PacketTuple {
    PacketTuple { src: src.parse().unwrap(), dst: dst.parse().unwrap(), protocol, src_port, dst_port }
}

#[test]
fn guide_use_cases_match_the_reference_on_both_hooks() {
    if !kernel_tests_enabled("guide_use_cases_match_the_reference_on_both_hooks") {
        return;
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/guide-use-cases.toml");
    let cfg = load_file(std::path::Path::new(path)).expect("example parses");
    let mut dp = Dataplane::load(&LoadOptions { trace: true, ..Default::default() }).expect("load");
    let mut enforcer = Enforcer::new(&mut dp, &Capacity::default()).expect("maps");
    let packets = [
        packet("198.19.0.9", "198.18.0.10", 6, 40000, 80),
        packet("198.19.0.9", "198.18.0.10", 6, 40000, 443),
        packet("198.19.0.9", "198.18.0.10", 6, 40000, 22),
        packet("198.19.0.5", "198.18.0.10", 6, 40000, 22),
        packet("198.19.0.7", "198.18.0.10", 1, 0, 0),
        packet("198.19.0.8", "198.18.0.10", 1, 0, 0),
        packet("198.18.0.10", "198.18.1.20", 6, 40000, 3306),
        packet("198.19.0.9", "198.18.1.20", 6, 40000, 3306),
        packet("2001:db8::99", "2001:db8::10", 6, 40000, 443),
        packet("2001:db8::99", "2001:db8::10", 17, 40000, 53),
        packet("198.18.0.11", "198.18.0.10", 17, 1, 2),
        packet("198.18.0.10", "198.19.0.200", 6, 40000, 80),
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for binding in &cfg.interfaces {
        enforcer.apply(&cfg, &[(TEST_RUN_IFINDEX, binding)]).expect("apply");
        for direction in [Direction::Ingress, Direction::Egress] {
            for p in &packets {
                // Judged alone: no session from an earlier packet may decide it.
                enforcer.sessions().flush().expect("flush");
                let got = run(&mut dp, hook_for(direction), &frame_for(p)).expect("run");
                checked += 1;
                if let Err(e) = compare(&cfg, binding, direction, p, &named(&enforcer, got)) {
                    failures.push(format!("{}: {e}", binding.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn unconfigured_interfaces_and_cleared_ones_pass_everything() {
    if !kernel_tests_enabled("unconfigured_interfaces_and_cleared_ones_pass_everything") {
        return;
    }
    let cfg = parse_str(
        r#"
[[security_group]]
id = "sg-closed"
type = "advanced"
members = ["198.18.0.2"]
[[interface]]
name = "lo"
security_groups = ["sg-closed"]
"#,
        "closed.toml",
    )
    .unwrap();
    let mut dp = Dataplane::load(&LoadOptions { trace: true, ..Default::default() }).expect("load");
    let mut enforcer = Enforcer::new(&mut dp, &Capacity::default()).expect("maps");
    let frame = frame_for(&packet("198.19.0.9", "198.18.0.1", 6, 40000, 80));
    for hook in HOOKS {
        assert_eq!(run(&mut dp, hook, &frame).unwrap().decision.step, sg_common::step::UNCONFIGURED);
    }
    enforcer.apply(&cfg, &[(TEST_RUN_IFINDEX, &cfg.interfaces[0])]).unwrap();
    for hook in HOOKS {
        let got = run(&mut dp, hook, &frame).unwrap();
        assert_eq!((got.verdict, got.decision.step), (sg_common::verdict::DROP, sg_common::step::DEFAULT), "{hook:?}");
    }
    enforcer.clear(TEST_RUN_IFINDEX).unwrap();
    for hook in HOOKS {
        assert_eq!(run(&mut dp, hook, &frame).unwrap().decision.step, sg_common::step::UNCONFIGURED);
    }
}

/// A reload writes the whole new set in batches beside the old one, the switch makes it
/// decide, and retiring deletes exactly the old set's entries.
#[test]
fn a_reload_writes_beside_the_live_set_and_retires_the_old_one() {
    if !kernel_tests_enabled("a_reload_writes_beside_the_live_set_and_retires_the_old_one") {
        return;
    }
    let mut dp = Dataplane::load(&LoadOptions { trace: true, ..Default::default() }).expect("load");
    let mut enforcer = Enforcer::new(&mut dp, &Capacity::default()).expect("maps");
    let (old, new) = (case(101, &GenOptions::large(), 300), case(202, &GenOptions::large(), 300));
    let check = |dp: &mut Dataplane, enforcer: &mut Enforcer, c: &sg_tests::r#gen::Case| {
        let binding = &c.config.interfaces[0];
        let mut checked = 0;
        for probe in c.packets.iter().filter(|p| p.iface == binding.name) {
            enforcer.sessions().flush().expect("flush");
            let got = run(dp, hook_for(probe.direction), &frame_for(&probe.packet)).expect("run");
            compare(&c.config, binding, probe.direction, &probe.packet, &named(enforcer, got))
                .unwrap_or_else(|e| panic!("seed {}: {e}", c.seed));
            checked += 1;
        }
        assert!(checked > 0, "seed {}: no probe on the first interface", c.seed);
    };
    let old_report = enforcer.apply(&old.config, &[(TEST_RUN_IFINDEX, &old.config.interfaces[0])]).expect("apply");
    assert_eq!(enforcer.trie_entries().unwrap(), old_report.trie_entries);
    check(&mut dp, &mut enforcer, &old);

    let new_report = enforcer.apply(&new.config, &[(TEST_RUN_IFINDEX, &new.config.interfaces[0])]).expect("apply");
    assert_eq!(
        enforcer.trie_entries().unwrap(),
        old_report.trie_entries + new_report.trie_entries,
        "the old set stays until it is retired"
    );
    check(&mut dp, &mut enforcer, &new);
    enforcer.retire_pending();
    assert_eq!(enforcer.trie_entries().unwrap(), new_report.trie_entries, "only the new set is left");
    check(&mut dp, &mut enforcer, &new);
}

/// An apply that compiles a direction exactly as it is installed leaves that rule set
/// where it is; when nothing changed at all, the published configuration stands (so the
/// flow cache's entries and the sessions' generation do too). What changed is written
/// and decides, checked against the reference.
#[test]
fn an_apply_rewrites_only_the_rule_sets_that_changed() {
    if !kernel_tests_enabled("an_apply_rewrites_only_the_rule_sets_that_changed") {
        return;
    }
    let rules = |ingress_port: u16, audit: bool| {
        parse_str(
            &format!(
                r#"
[[security_group]]
id = "sg-web"
type = "basic"
members = ["198.18.0.10"]
  [[security_group.rule]]
  direction = "ingress"
  policy = "accept"
  protocol = "tcp"
  port_range = "{ingress_port}/{ingress_port}"
  source = "198.19.0.0/16"
  [[security_group.rule]]
  direction = "egress"
  policy = "accept"
  protocol = "udp"
  port_range = "53/53"
  destination = "198.19.0.53/32"
[[interface]]
name = "lo"
security_groups = ["sg-web"]
mode = "{}"
"#,
                if audit { "audit" } else { "enforce" }
            ),
            "reuse.toml",
        )
        .unwrap()
    };
    let mut dp = Dataplane::load(&LoadOptions { trace: true, ..Default::default() }).expect("load");
    let mut enforcer = Enforcer::new(&mut dp, &Capacity::default()).expect("maps");
    let apply = |enforcer: &mut Enforcer, cfg: &sgctl::policy::config::Config| {
        let report = enforcer.apply(cfg, &[(TEST_RUN_IFINDEX, &cfg.interfaces[0])]).expect("apply");
        enforcer.retire_pending();
        let placed = enforcer.state().interfaces.into_iter().next().expect("one interface");
        (report, placed)
    };
    let check = |dp: &mut Dataplane, enforcer: &mut Enforcer, cfg: &sgctl::policy::config::Config| {
        let probes = [
            (Direction::Ingress, packet("198.19.0.9", "198.18.0.10", 6, 40000, 80)),
            (Direction::Ingress, packet("198.19.0.9", "198.18.0.10", 6, 40000, 8080)),
            (Direction::Egress, packet("198.18.0.10", "198.19.0.53", 17, 40000, 53)),
            (Direction::Egress, packet("198.18.0.10", "198.19.0.54", 17, 40000, 53)),
        ];
        for (direction, p) in &probes {
            enforcer.sessions().flush().expect("flush");
            let got = run(dp, hook_for(*direction), &frame_for(p)).expect("run");
            compare(cfg, &cfg.interfaces[0], *direction, p, &named(enforcer, got)).unwrap_or_else(|e| panic!("{e}"));
        }
    };
    let first = rules(80, false);
    let (report, placed) = apply(&mut enforcer, &first);
    assert_eq!((report.rule_sets, report.unchanged), (2, 0), "the first apply writes both");
    check(&mut dp, &mut enforcer, &first);

    let (report, again) = apply(&mut enforcer, &rules(80, false));
    assert_eq!(report.unchanged, 2, "the same rules again: nothing written");
    assert_eq!(again, placed, "same slots, same published configuration, same generation");
    check(&mut dp, &mut enforcer, &first);

    let moved = rules(8080, false);
    let (report, after) = apply(&mut enforcer, &moved);
    assert_eq!(report.unchanged, 1, "only the ingress rule changed");
    assert_ne!(after.ingress.slot, placed.ingress.slot, "the ingress set is written anew");
    assert_eq!(after.egress, placed.egress, "the egress set stays where it was");
    assert_ne!(after.published, placed.published, "the interface switched to the new ingress set");
    assert_eq!(after.generation, placed.generation + 1, "its sessions are checked again");
    check(&mut dp, &mut enforcer, &moved);

    let audit = rules(8080, true);
    let (report, audited) = apply(&mut enforcer, &audit);
    assert_eq!(report.unchanged, 2, "the mode is not in the rule sets");
    assert_eq!((audited.ingress.slot, audited.egress.slot), (after.ingress.slot, after.egress.slot));
    assert_ne!(audited.published, after.published, "a mode change is published");
    let frame = frame_for(&packet("198.19.0.9", "198.18.0.10", 6, 40000, 80));
    let got = run(&mut dp, hook_for(Direction::Ingress), &frame).expect("run");
    assert_ne!(got.decision.flags & sg_common::DECISION_AUDIT, 0, "decided in audit mode: {got:?}");
}

/// IPv6 peers crowded into one /64 (hosts, short prefixes inside it, a drop of the rest):
/// the IPv6 peer table needs blocks several bytes deep and leaves of a few bounds, and
/// every address at, just below and just above each bound must be decided as the
/// reference decides it, on both hooks.
#[test]
fn crowded_ipv6_peers_match_the_reference_at_every_bound() {
    if !kernel_tests_enabled("crowded_ipv6_peers_match_the_reference_at_every_bound") {
        return;
    }
    use std::fmt::Write as _;
    let mut toml = String::from(
        "[[security_group]]\nid = \"sg-v6\"\ntype = \"advanced\"\nmembers = [\"2001:db8::10\", \"198.18.0.10\"]\n",
    );
    let mut peers: Vec<String> = Vec::new();
    for i in 0..48u32 {
        // Hosts a few apart, some /126 and /120 networks among them.
        let host = 0x100 + 7 * i;
        peers.push(match i % 6 {
            0 => format!("2001:db8:0:1::{:x}/126", host & !3),
            3 => format!("2001:db8:0:1::{:x}/120", host & !0xff),
            _ => format!("2001:db8:0:1::{host:x}"),
        });
    }
    peers.extend(["2001:db8:0:1::/64".into(), "2001:db8:ff::/48".into(), "fd00::/8".into()]);
    for (rank, peer) in peers.iter().enumerate() {
        let (action, port) = if rank % 4 == 3 { ("drop", 443) } else { ("accept", 443 + rank % 3) };
        write!(
            toml,
            "  [[security_group.rule]]\n  direction = \"ingress\"\n  protocol = \"tcp\"\n  port_range = \"{port}/{port}\"\n  \
             source = \"{peer}\"\n  policy = \"{action}\"\n  priority = {}\n  [[security_group.rule]]\n  direction = \
             \"egress\"\n  protocol = \"tcp\"\n  port_range = \"{port}/{port}\"\n  destination = \"{peer}\"\n  policy = \
             \"{action}\"\n  priority = {}\n",
            rank + 1,
            rank + 1
        )
        .unwrap();
    }
    toml.push_str("[[interface]]\nname = \"lo\"\nsecurity_groups = [\"sg-v6\"]\n");
    let cfg = parse_str(&toml, "crowded-v6.toml").unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let binding = &cfg.interfaces[0];
    let compiled = sgctl::policy::compile::compile(&cfg, binding, Direction::Ingress).expect("compiles");
    assert!(compiled.peer_v6.len() > 50, "{} bounds: not crowded", compiled.peer_v6.len());
    assert!(compiled.bands[0].peer_v6_root & sg_common::PORT_BLOCK_REF != 0, "the table must start with a block");

    let mut dp = Dataplane::load(&LoadOptions { trace: true, ..Default::default() }).expect("load");
    let mut enforcer = Enforcer::new(&mut dp, &Capacity::default()).expect("maps");
    enforcer.apply(&cfg, &[(TEST_RUN_IFINDEX, binding)]).expect("apply");
    let mut addresses: Vec<u128> = Vec::new();
    for b in &compiled.peer_v6 {
        let start = (u128::from(b.start[0]) << 64) | u128::from(b.start[1]);
        addresses.extend([start, start.wrapping_sub(1), start.wrapping_add(1)]);
    }
    let mut checked = 0;
    for addr in addresses {
        let peer = std::net::Ipv6Addr::from(addr).to_string();
        for port in [443, 444, 445] {
            for (direction, p) in [
                (Direction::Ingress, packet(&peer, "2001:db8::10", 6, 40000, port)),
                (Direction::Egress, packet("2001:db8::10", &peer, 6, 40000, port)),
            ] {
                enforcer.sessions().flush().expect("flush");
                let got = run(&mut dp, hook_for(direction), &frame_for(&p)).expect("run");
                compare(&cfg, binding, direction, &p, &named(&enforcer, got))
                    .unwrap_or_else(|e| panic!("{peer} port {port} {direction:?}: {e}"));
                checked += 1;
            }
        }
    }
    eprintln!("crowded IPv6 peers: {checked} probes, 0 mismatches");
}
