//! `diff` against brute force: random pairs of small rule files, probed at many
//! boundary-biased points with the reference evaluator. Every point whose verdicts differ
//! must lie in a reported range with the right old and new deciders, and no reported range
//! may hold a point whose verdicts agree.

use proptest::prelude::*;

use super::*;
use crate::policy::config::parse_str;
use crate::policy::eval::{DecidedBy, PacketTuple, evaluate};
use crate::policy::guidance::space::{addr_to_u128, has_key, has_ports};
use crate::policy::guidance::testgen::{Rng, random_config, random_file, random_packet};

/// The verdict of a file for a packet, as the reference evaluator gives it.
fn reference(cfg: &Config, iface: &str, direction: Direction, packet: &PacketTuple) -> Verdict {
    match cfg.interface(iface) {
        None => Verdict { action: Action::Accept, decider: Decider::NotBound },
        Some(binding) => {
            let decision = evaluate(cfg, binding, direction, packet);
            let decider = match decision.decided_by {
                DecidedBy::IntraGroupAccept { group_index } => Decider::IntraGroupAccept { group_index },
                DecidedBy::Rule { rule_id } => Decider::Rule { rule_id },
                DecidedBy::IntraGroupIsolation { group_index } => Decider::IntraGroupIsolation { group_index },
                DecidedBy::Default { .. } => Decider::Default,
            };
            Verdict { action: decision.action, decider }
        }
    }
}

fn contains(region: &Region<Change>, direction: Direction, packet: &PacketTuple) -> bool {
    let peer = packet.peer(direction);
    let local = packet.local(direction);
    Family::of_addr(&peer) == region.family
        && region.protos.contains(packet.protocol)
        && (region.peer.0..=region.peer.1).contains(&addr_to_u128(peer))
        && (region.local.0..=region.local.1).contains(&addr_to_u128(local))
        && region.dport.is_none_or(|(a, b)| (a..=b).contains(&packet.dst_port))
        && region.sport.is_none_or(|(a, b)| (a..=b).contains(&packet.src_port))
}

/// A new file: an independent one, or the old one with one line changed.
fn new_text(old: &str, rng: &mut Rng) -> String {
    if rng.chance(30) {
        return random_file(rng);
    }
    let lines: Vec<&str> = old.lines().collect();
    let editable: Vec<usize> = (0..lines.len())
        .filter(|&i| {
            let l = lines[i].trim_start();
            l.starts_with("priority")
                || l.starts_with("port_range")
                || l.starts_with("source =")
                || l.starts_with("destination =")
                || l.starts_with("policy")
                || l.starts_with("members")
                || l.starts_with("inner_access_policy")
                || l.starts_with("icmp_type")
                || l.starts_with("icmp_code")
        })
        .collect();
    if editable.is_empty() {
        return old.to_string();
    }
    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_string()).collect();
    for _ in 0..1 + rng.below(2) {
        let i = *rng.pick(&editable);
        let key = lines[i].trim_start().split(' ').next().unwrap_or("");
        out[i] = match key {
            "priority" => format!("  priority = {}", 1 + rng.below(3)),
            "port_range" => format!("  port_range = \"{}\"", rng.pick(&["20/30", "25/26", "1/65535", "443/443"])),
            "policy" => "  policy = \"accept\"".to_string(),
            "icmp_type" => format!("  icmp_type = {}", rng.pick(&[0, 3, 8, 128, 129])),
            "icmp_code" => format!("  icmp_code = {}", rng.pick(&[0, 1, 4])),
            "inner_access_policy" => "inner_access_policy = \"accept\"".to_string(),
            "members" => format!("members = [\"{}\"]", rng.pick(crate::policy::guidance::testgen::MEMBERS)),
            "source" | "destination" => {
                let v6 = lines[i].contains(':');
                let nets = if v6 {
                    crate::policy::guidance::testgen::V6_NETS
                } else {
                    crate::policy::guidance::testgen::V4_NETS
                };
                format!("  {key} = \"{}\"", rng.pick(nets))
            }
            _ => out[i].clone(),
        };
    }
    let text = out.join("\n") + "\n";
    if parse_str(&text, "new.toml").is_ok() { text } else { old.to_string() }
}

fn check_pair(seed: u64) -> usize {
    let (old_text, old) = random_config(seed);
    let mut rng = Rng::new(seed ^ 0x5EED);
    let new_text = new_text(&old_text, &mut rng);
    let new = parse_str(&new_text, "new.toml").expect("new file is valid");
    let report = diff(&old, &new, None).expect("diff");
    let context = || format!("seed {seed}\n--- old\n{old_text}\n--- new\n{new_text}");
    // Every point whose verdicts differ is inside a range, with the right deciders; no
    // point whose verdicts agree is.
    for section in &report.sections {
        for _ in 0..400 {
            let (_, packet) = random_packet(&mut rng);
            let a = reference(&old, &section.interface, section.direction, &packet);
            let b = reference(&new, &section.interface, section.direction, &packet);
            let holding: Vec<&Region<Change>> =
                section.regions.iter().filter(|r| contains(r, section.direction, &packet)).collect();
            if a.action == b.action {
                assert!(holding.is_empty(), "{packet:?} agrees ({a:?}) but is reported in {holding:?}\n{}", context());
            } else {
                assert_eq!(
                    holding.len(),
                    1,
                    "{packet:?} differs ({a:?} -> {b:?}) but is in {holding:?}\n{}",
                    context()
                );
                assert_eq!(holding[0].outcome, Change { old: a, new: b }, "{packet:?}\n{}", context());
            }
        }
        // Points drawn inside each reported range: their verdicts differ as reported.
        for region in &section.regions {
            for _ in 0..8 {
                let packet = point_in(region, section.direction, &mut rng);
                let a = reference(&old, &section.interface, section.direction, &packet);
                let b = reference(&new, &section.interface, section.direction, &packet);
                assert_eq!(Change { old: a, new: b }, region.outcome, "{packet:?} in {region:?}\n{}", context());
            }
        }
    }
    report.change_count()
}

fn point_in(region: &Region<Change>, direction: Direction, rng: &mut Rng) -> PacketTuple {
    let pick = |rng: &mut Rng, (a, b): (u128, u128)| -> u128 {
        match rng.below(3) {
            0 => a,
            1 => b,
            _ => a + (u128::from(rng.next()) | (u128::from(rng.next()) << 64)) % (b - a).saturating_add(1).max(1),
        }
    };
    let port = |rng: &mut Rng, span: Option<(u16, u16)>| {
        span.map_or(0, |(a, b)| u16::try_from(pick(rng, (u128::from(a), u128::from(b)))).unwrap_or(a))
    };
    let numbers: Vec<u8> = region.protos.numbers().collect();
    let proto = *rng.pick(&numbers);
    let cell = crate::policy::guidance::space::Cell {
        family: region.family,
        proto,
        peer: (pick(rng, region.peer), 0),
        local: (pick(rng, region.local), 0),
        dport: has_key(proto).then(|| (port(rng, region.dport.or(Some(crate::policy::guidance::space::ALL_PORTS))), 0)),
        sport: has_ports(proto)
            .then(|| (port(rng, region.sport.or(Some(crate::policy::guidance::space::ALL_PORTS))), 0)),
    };
    cell.packet(direction)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn diff_matches_brute_force(seed in any::<u64>()) {
        check_pair(seed);
    }
}

#[test]
fn brute_force_sees_changes_often_enough_to_mean_something() {
    let changed = (0..200u64).filter(|&seed| check_pair(seed) > 0).count();
    assert!(changed >= 60, "only {changed} of 200 pairs changed anything");
}

#[test]
fn a_file_against_itself_changes_nothing() {
    for seed in 0..100 {
        let (_, cfg) = random_config(seed);
        let report = diff(&cfg, &cfg, None).expect("diff");
        assert!(!report.changed(), "seed {seed}");
    }
}

#[test]
fn the_guide_case_6_pitfall_as_a_diff() {
    let old = r#"
[[security_group]]
id = "sg-office"
  [[security_group.rule]]
  direction = "egress"
  policy = "drop"
  priority = 2
  protocol = "all"
  destination = "0.0.0.0/0"
  [[security_group.rule]]
  direction = "egress"
  priority = 1
  protocol = "tcp"
  port_range = "443/443"
  destination = "198.19.199.1"
[[interface]]
name = "office0"
security_groups = ["sg-office"]
"#;
    // The drop-all moved to priority 1: it now ranks above the allow.
    let new = old.replace("priority = 2", "priority = 1");
    let old = parse_str(old, "old.toml").expect("old");
    let new = parse_str(&new, "new.toml").expect("new");
    let report = diff(&old, &new, Some("office0")).expect("diff");
    let regions: Vec<&Region<Change>> = report.sections.iter().flat_map(|s| &s.regions).collect();
    assert_eq!(regions.len(), 1, "{regions:?}");
    let region = regions[0];
    assert_eq!(region.protos, crate::policy::guidance::space::ProtoSet::one(6));
    assert_eq!(format_range(Family::Ipv4, region.peer), "198.19.199.1");
    assert_eq!(region.dport, Some((443, 443)));
    assert_eq!(region.sport, None);
    assert_eq!(region.outcome.old, Verdict { action: Action::Accept, decider: Decider::Rule { rule_id: 2 } });
    assert_eq!(region.outcome.new, Verdict { action: Action::Drop, decider: Decider::Rule { rule_id: 1 } });
    let text = to_text(&report, &old, &new);
    assert!(
        text.contains("tcp port 443 to 198.19.199.1: accept by sg-office#2 (line 10) -> drop by sg-office#1 (line 4)"),
        "{text}"
    );
    assert!(matches!(diff(&old, &new, Some("nope")), Err(DiffError::UnknownInterface(_))));
}
