//! The partition against the reference evaluator: every merged region must have the
//! outcome the evaluator gives every point in it, and the regions must cover the space.

use proptest::prelude::*;

use super::*;
use crate::policy::eval::{DecidedBy, evaluate};
use crate::policy::guidance::testgen::{Rng, random_config, random_packet};

fn to_decider(by: &DecidedBy) -> Decider {
    match by {
        DecidedBy::IntraGroupAccept { group_index } => Decider::IntraGroupAccept { group_index: *group_index },
        DecidedBy::Rule { rule_id } => Decider::Rule { rule_id: *rule_id },
        DecidedBy::IntraGroupIsolation { group_index } => Decider::IntraGroupIsolation { group_index: *group_index },
        DecidedBy::Default { .. } => Decider::Default,
    }
}

/// A point of the region, for protocol number `class` of the region.
fn point_in(
    region: &Region<(Decider, Action)>,
    class: u8,
    rng: &mut Rng,
    direction: Direction,
) -> crate::policy::eval::PacketTuple {
    let pick = |rng: &mut Rng, (a, b): (u128, u128)| -> u128 {
        match rng.below(3) {
            0 => a,
            1 => b,
            _ => a + (u128::from(rng.next()) | (u128::from(rng.next()) << 64)) % (b - a).saturating_add(1).max(1),
        }
    };
    let port = |rng: &mut Rng, span: Option<PortSpan>| {
        span.map_or(0, |(a, b)| u16::try_from(pick(rng, (u128::from(a), u128::from(b)))).unwrap_or(a))
    };
    let cell = Cell {
        family: region.family,
        proto: class,
        peer: (pick(rng, region.peer), 0),
        local: (pick(rng, region.local), 0),
        dport: has_key(class).then(|| (port(rng, region.dport.or(Some(crate::policy::guidance::space::ALL_PORTS))), 0)),
        sport: has_ports(class)
            .then(|| (port(rng, region.sport.or(Some(crate::policy::guidance::space::ALL_PORTS))), 0)),
    };
    cell.packet(direction)
}

fn check_file(seed: u64) {
    let (text, cfg) = random_config(seed);
    let mut rng = Rng::new(seed ^ 0xABCD);
    for iface in &cfg.interfaces {
        for direction in [Direction::Ingress, Direction::Egress] {
            let pool = Pool::of_interface(&cfg, iface, direction);
            for family in [Family::Ipv4, Family::Ipv6] {
                let matchers = pool.matchers(family);
                let mut leaf = |_: &Cell, alive: &[usize]| Some(pool.decide(&matchers, alive));
                let regions = partition(&matchers, family, &Bounds::whole(family), &mut leaf);
                for region in &regions {
                    // Every protocol of the region, up to a sample of the big "other" class.
                    let numbers: Vec<u8> = region.protos.numbers().collect();
                    let sample: Vec<u8> =
                        if numbers.len() <= 8 { numbers } else { (0..8).map(|_| *rng.pick(&numbers)).collect() };
                    for class in sample {
                        for _ in 0..4 {
                            let packet = point_in(region, class, &mut rng, direction);
                            let decision = evaluate(&cfg, iface, direction, &packet);
                            assert_eq!(
                                (to_decider(&decision.decided_by), decision.action),
                                region.outcome,
                                "seed {seed}, {direction} {packet:?} in {region:?}\n{text}"
                            );
                        }
                    }
                }
                // The regions cover the space: every probe lies in exactly one.
                for _ in 0..50 {
                    let (_, packet) = random_packet(&mut rng);
                    if Family::of_addr(&packet.src) != family {
                        continue;
                    }
                    let peer = addr_to_u128(packet.peer(direction));
                    let local = addr_to_u128(packet.local(direction));
                    let inside = |r: &&Region<(Decider, Action)>| {
                        r.protos.contains(packet.protocol)
                            && r.peer.0 <= peer
                            && peer <= r.peer.1
                            && r.local.0 <= local
                            && local <= r.local.1
                            && r.dport.is_none_or(|(a, b)| a <= packet.dst_port && packet.dst_port <= b)
                            && r.sport.is_none_or(|(a, b)| a <= packet.src_port && packet.src_port <= b)
                    };
                    let holding: Vec<&Region<(Decider, Action)>> = regions.iter().filter(inside).collect();
                    assert_eq!(holding.len(), 1, "seed {seed}: {packet:?} in {holding:?}\n{text}");
                    let decision = evaluate(&cfg, iface, direction, &packet);
                    assert_eq!(
                        (to_decider(&decision.decided_by), decision.action),
                        holding[0].outcome,
                        "seed {seed}\n{text}"
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn regions_agree_with_the_reference_evaluator(seed in any::<u64>()) {
        check_file(seed);
    }
}

#[test]
fn elementary_intervals_cut_at_every_boundary() {
    assert_eq!(elementary((0, 10), &[(2, 4), (4, 8)]), vec![(0, 1), (2, 3), (4, 4), (5, 8), (9, 10)]);
    assert_eq!(elementary((0, u128::MAX), &[(0, u128::MAX)]), vec![(0, u128::MAX)]);
    assert_eq!(elementary((5, 6), &[(0, 100)]), vec![(5, 6)]);
}

#[test]
fn ranges_print_as_networks_when_they_are_one() {
    assert_eq!(format_range(Family::Ipv4, net_range(&"198.18.0.0/24".parse().expect("net"))), "198.18.0.0/24");
    assert_eq!(format_range(Family::Ipv4, (0, u128::from(u32::MAX))), "0.0.0.0/0");
    assert_eq!(format_range(Family::Ipv6, (0, u128::MAX)), "::/0");
    let (a, _) = net_range(&"198.18.0.5/32".parse().expect("net"));
    assert_eq!(format_range(Family::Ipv4, (a, a)), "198.18.0.5");
    assert_eq!(format_range(Family::Ipv4, (a, a + 3)), "198.18.0.5-198.18.0.8");
}

#[test]
fn protocol_sets_and_icmp_keys_read_as_rules_write_them() {
    let tcp_udp = ProtoSet::one(6).union(ProtoSet::one(17));
    assert_eq!(ProtoSet::ALL.describe(), "any protocol");
    assert_eq!(tcp_udp.describe(), "tcp,udp");
    assert_eq!(ProtoSet::one(50).describe(), "protocol 50");
    assert_eq!(ProtoSet::one(1).union(ProtoSet::one(50)).describe(), "icmp,50");
    assert_eq!(ProtoSet::ALL.minus(tcp_udp.union(ProtoSet::one(50))).describe(), "protocols other than tcp,udp,50");
    assert_eq!(ProtoSet::one(50).words(), vec!["50"]);
    assert_eq!(format_icmp((0x0800, 0x0800)), "type 8 code 0");
    assert_eq!(format_icmp((0x0300, 0x03ff)), "type 3");
    assert_eq!(format_icmp((0x0300, 0x05ff)), "types 3-5");
    assert_eq!(format_icmp(ALL_PORTS), "any type");
}

/// Each number a rule names is a class of its own; the rest is one class, probed with a
/// number no rule names.
#[test]
fn protocol_classes_split_by_the_numbers_rules_name() {
    let text = "[[security_group]]\nid = \"sg\"\n[[security_group.rule]]\ndirection = \"ingress\"\nprotocol = 132\n\
                source = \"0.0.0.0/0\"\n[[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg\"]\n";
    let cfg = crate::policy::config::parse_str(text, "c.toml").expect("valid");
    let pool = Pool::of_interface(&cfg, &cfg.interfaces[0], Direction::Ingress);
    let matchers = pool.matchers(Family::Ipv4);
    let classes = protocol_classes(&matchers, ProtoSet::ALL);
    assert_eq!(classes.len(), 7);
    assert_eq!(classes[5], ProtoSet::one(132));
    let rest = classes[6];
    assert_eq!(rest.len(), 256 - 6);
    assert!(!rest.contains(132) && rest.representative() != Some(132));
}
