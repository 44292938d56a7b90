//! Tests of the reference evaluator: each step of docs/rule-model.md#evaluation-order
//! (4 to 7), the total order, and the six use cases of the provider's guide.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::policy::config::{Config, Direction::Egress, Direction::Ingress, parse_str};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const GRE: u8 = 47;

fn config(text: &str) -> Config {
    parse_str(text, "test.toml").unwrap_or_else(|errors| panic!("invalid test config:\n{errors}"))
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn packet(protocol: u8, src: &str, src_port: u16, dst: &str, dst_port: u16) -> PacketTuple {
    PacketTuple { src: ip(src), dst: ip(dst), protocol, src_port, dst_port }
}

/// A TCP packet from an ephemeral port.
fn tcp(src: &str, dst: &str, dst_port: u16) -> PacketTuple {
    packet(TCP, src, 40000, dst, dst_port)
}

/// A packet of a protocol without ports.
fn portless(protocol: u8, src: &str, dst: &str) -> PacketTuple {
    packet(protocol, src, 0, dst, 0)
}

fn decide(cfg: &Config, iface: &str, dir: Direction, pkt: &PacketTuple) -> Decision {
    let binding = cfg.interface(iface).expect("interface bound in test config");
    evaluate(cfg, binding, dir, pkt)
}

/// The label of the deciding rule, or a short name for the other steps.
fn decider(cfg: &Config, decision: &Decision) -> String {
    match &decision.decided_by {
        DecidedBy::Rule { rule_id } => cfg.rule(*rule_id).expect("rule exists").label(cfg),
        DecidedBy::IntraGroupAccept { group_index } => {
            format!("intra-accept {}", cfg.groups[*group_index].id)
        }
        DecidedBy::IntraGroupIsolation { group_index } => {
            format!("isolation {}", cfg.groups[*group_index].id)
        }
        DecidedBy::Default { kind, direction } => format!("default {kind} {direction}"),
    }
}

/// Asserts the verdict and what decided it.
#[track_caller]
fn expect(cfg: &Config, iface: &str, dir: Direction, pkt: PacketTuple, action: Action, by: &str) {
    let decision = decide(cfg, iface, dir, &pkt);
    assert_eq!(
        (decision.action, decider(cfg, &decision).as_str()),
        (action, by),
        "{pkt:?} {dir}\n{}",
        decision.explain(cfg)
    );
}

// ----- step 4: intra-group connectivity -----

const INTRA: &str = r#"
[[security_group]]
id = "sg-web"
members = ["198.18.0.10", "198.18.0.11", "2001:db8::10"]
  [[security_group.rule]]
  direction = "ingress"
  policy = "drop"
  protocol = "all"
  source = "0.0.0.0/0"
  [[security_group.rule]]
  direction = "egress"
  policy = "drop"
  protocol = "all"
  destination = "0.0.0.0/0"
[[interface]]
name = "eth0"
security_groups = ["sg-web"]
"#;

#[test]
fn members_of_a_basic_group_reach_each_other_before_any_rule() {
    let cfg = config(INTRA);
    let accept = "intra-accept sg-web";
    expect(&cfg, "eth0", Ingress, tcp("198.18.0.11", "198.18.0.10", 22), Action::Accept, accept);
    expect(&cfg, "eth0", Egress, tcp("198.18.0.10", "198.18.0.11", 22), Action::Accept, accept);
    let decision = decide(&cfg, "eth0", Ingress, &tcp("198.18.0.11", "198.18.0.10", 22));
    assert!(decision.skipped.is_empty(), "no rule is consulted");
    // Non-members still meet the drop rules.
    expect(&cfg, "eth0", Ingress, tcp("198.18.0.99", "198.18.0.10", 22), Action::Drop, "sg-web#1");
}

#[test]
fn intra_group_accept_picks_the_first_group_in_binding_order() {
    let text = r#"
[[security_group]]
id = "sg-a"
members = ["198.18.0.1"]
[[security_group]]
id = "sg-b"
members = ["198.18.0.1"]
[[interface]]
name = "eth0"
security_groups = ["sg-b", "sg-a"]
"#;
    let cfg = config(text);
    expect(&cfg, "eth0", Ingress, tcp("198.18.0.1", "198.18.0.2", 80), Action::Accept, "intra-accept sg-b");
}

// ----- step 6: isolation ranks below every rule -----

const ISOLATED: &str = r#"
[[security_group]]
id = "sg-iso"
inner_access_policy = "drop"
members = ["198.18.0.10", "198.18.0.11"]
  [[security_group.rule]]
  direction = "ingress"
  priority = 100
  protocol = "tcp"
  port_range = "22/22"
  source = "198.18.0.0/24"
[[interface]]
name = "eth0"
security_groups = ["sg-iso"]
"#;

#[test]
fn isolation_ranks_below_rules() {
    let cfg = config(ISOLATED);
    // A rule, even at the lowest priority, still admits a member.
    expect(&cfg, "eth0", Ingress, tcp("198.18.0.11", "198.18.0.10", 22), Action::Accept, "sg-iso#1");
    // Without a matching rule, members are isolated in both directions.
    let iso = "isolation sg-iso";
    expect(&cfg, "eth0", Ingress, tcp("198.18.0.11", "198.18.0.10", 80), Action::Drop, iso);
    expect(&cfg, "eth0", Egress, tcp("198.18.0.10", "198.18.0.11", 80), Action::Drop, iso);
    // Non-members fall to the basic default: egress accepted.
    expect(&cfg, "eth0", Egress, tcp("198.18.0.10", "198.18.9.9", 80), Action::Accept, "default basic egress");
}

#[test]
fn advanced_groups_isolate_their_members() {
    let text = r#"
[[security_group]]
id = "sg-adv"
type = "advanced"
members = ["198.18.0.10", "198.18.0.11"]
[[interface]]
name = "eth0"
security_groups = ["sg-adv"]
"#;
    let cfg = config(text);
    let pkt = tcp("198.18.0.11", "198.18.0.10", 80);
    expect(&cfg, "eth0", Ingress, pkt, Action::Drop, "isolation sg-adv");
}

// ----- step 7: defaults -----

#[test]
fn defaults_of_basic_and_advanced_groups() {
    let text = r#"
[[security_group]]
id = "sg-basic"
[[security_group]]
id = "sg-adv"
type = "advanced"
[[interface]]
name = "basic0"
security_groups = ["sg-basic"]
[[interface]]
name = "adv0"
security_groups = ["sg-adv"]
"#;
    let cfg = config(text);
    let inbound = tcp("198.18.9.9", "198.18.0.10", 80);
    let outbound = tcp("198.18.0.10", "198.18.9.9", 80);
    expect(&cfg, "basic0", Ingress, inbound, Action::Drop, "default basic ingress");
    expect(&cfg, "basic0", Egress, outbound, Action::Accept, "default basic egress");
    expect(&cfg, "adv0", Ingress, inbound, Action::Drop, "default advanced ingress");
    expect(&cfg, "adv0", Egress, outbound, Action::Drop, "default advanced egress");
    assert_eq!(default_action(GroupKind::Basic, Egress), Action::Accept);
}

// ----- step 5: rules and their order -----

const ORDER: &str = r#"
[[security_group]]
id = "sg-a"
  [[security_group.rule]]
  direction = "ingress"
  priority = 2
  protocol = "tcp"
  port_range = "1/65535"
  source = "0.0.0.0/0"
  description = "accept at 2"
  [[security_group.rule]]
  direction = "ingress"
  policy = "accept"
  priority = 1
  protocol = "tcp"
  port_range = "22/22"
  source = "198.18.0.0/15"
[[security_group]]
id = "sg-b"
  [[security_group.rule]]
  direction = "ingress"
  policy = "drop"
  priority = 1
  protocol = "tcp"
  port_range = "22/22"
  source = "198.18.0.0/15"
  [[security_group.rule]]
  direction = "ingress"
  policy = "drop"
  priority = 3
  protocol = "all"
  source = "0.0.0.0/0"
[[interface]]
name = "eth0"
security_groups = ["sg-a", "sg-b"]
"#;

#[test]
fn smaller_priority_value_wins() {
    let cfg = config(ORDER);
    // Port 80 matches the accept at priority 2 and the drop at priority 3.
    expect(&cfg, "eth0", Ingress, tcp("198.18.5.5", "198.18.0.10", 80), Action::Accept, "sg-a#1");
}

#[test]
fn drop_wins_over_accept_at_equal_priority() {
    let cfg = config(ORDER);
    // sg-a#2 (accept) and sg-b#1 (drop) both match at priority 1: drop decides, even though
    // the accept rule comes first in the file.
    let decision = decide(&cfg, "eth0", Ingress, &tcp("198.18.5.5", "198.18.0.10", 22));
    assert_eq!(decision.action, Action::Drop);
    assert_eq!(decider(&cfg, &decision), "sg-b#1");
    assert!(decision.skipped.is_empty(), "the drop rule ranks first");
}

#[test]
fn equal_rank_falls_back_to_rule_id() {
    let text = r#"
[[security_group]]
id = "sg-a"
  [[security_group.rule]]
  direction = "egress"
  protocol = "all"
  destination = "0.0.0.0/0"
  description = "first"
  [[security_group.rule]]
  direction = "egress"
  protocol = "udp"
  port_range = "1/65535"
  destination = "0.0.0.0/0"
[[interface]]
name = "eth0"
security_groups = ["sg-a"]
"#;
    let cfg = config(text);
    let pkt = packet(UDP, "198.18.0.10", 5353, "198.18.9.9", 53);
    expect(&cfg, "eth0", Egress, pkt, Action::Accept, "sg-a#1");
}

#[test]
fn skipped_lists_higher_ranked_rules_with_every_reason() {
    let cfg = config(ORDER);
    let decision = decide(&cfg, "eth0", Ingress, &packet(UDP, "203.0.113.9", 1000, "198.18.0.10", 53));
    assert_eq!(decider(&cfg, &decision), "sg-b#2");
    let skipped: Vec<(String, Vec<String>)> =
        decision.skipped.iter().map(|m| (cfg.rule(m.rule_id).expect("rule").label(&cfg), m.reasons.clone())).collect();
    let reasons = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        skipped,
        vec![
            (
                "sg-b#1".to_string(),
                reasons(&[
                    "protocol udp does not match tcp",
                    "port 53 not in 22/22",
                    "peer 203.0.113.9 not in 198.18.0.0/15",
                ])
            ),
            (
                "sg-a#2".to_string(),
                reasons(&[
                    "protocol udp does not match tcp",
                    "port 53 not in 22/22",
                    "peer 203.0.113.9 not in 198.18.0.0/15",
                ])
            ),
            ("sg-a#1".to_string(), reasons(&["protocol udp does not match tcp"])),
        ]
    );
}

#[test]
fn when_no_rule_matches_every_rule_is_skipped() {
    let cfg = config(ORDER);
    let decision = decide(&cfg, "eth0", Egress, &tcp("198.18.0.10", "198.18.9.9", 80));
    assert!(decision.skipped.is_empty(), "no egress rules at all");
    let cfg = config(ISOLATED);
    let decision = decide(&cfg, "eth0", Ingress, &tcp("203.0.113.1", "198.18.0.10", 22));
    assert_eq!(decision.skipped.len(), 1);
    assert_eq!(decision.skipped[0].reasons, vec!["peer 203.0.113.1 not in 198.18.0.0/24"]);
}

#[test]
fn source_port_range_is_matched() {
    let text = r#"
[[security_group]]
id = "sg-a"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "udp"
  port_range = "123/123"
  source_port_range = "123/123"
  source = "0.0.0.0/0"
[[interface]]
name = "eth0"
security_groups = ["sg-a"]
"#;
    let cfg = config(text);
    let ntp = packet(UDP, "198.18.9.9", 123, "198.18.0.10", 123);
    expect(&cfg, "eth0", Ingress, ntp, Action::Accept, "sg-a#1");
    let other = packet(UDP, "198.18.9.9", 5000, "198.18.0.10", 123);
    let decision = decide(&cfg, "eth0", Ingress, &other);
    assert_eq!(decision.action, Action::Drop);
    assert_eq!(decision.skipped[0].reasons, vec!["source port 5000 not in 123/123"]);
}

#[test]
fn protocol_numbers_match_only_their_protocol() {
    let text = r#"
[[security_group]]
id = "sg-a"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "gre"
  source = "198.18.0.0/15"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "icmpv6"
  source = "2001:db8::/32"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "all"
  source = "203.0.113.0/24"
[[interface]]
name = "eth0"
security_groups = ["sg-a"]
"#;
    let cfg = config(text);
    expect(&cfg, "eth0", Ingress, portless(GRE, "198.18.9.9", "198.18.0.10"), Action::Accept, "sg-a#1");
    let sctp = portless(132, "198.18.9.9", "198.18.0.10");
    let decision = decide(&cfg, "eth0", Ingress, &sctp);
    assert_eq!(decision.action, Action::Drop);
    assert_eq!(decision.skipped[0].reasons, vec!["protocol protocol 132 does not match gre"]);
    expect(&cfg, "eth0", Ingress, portless(ICMPV6, "2001:db8::9", "2001:db8::10"), Action::Accept, "sg-a#2");
    // `all` matches any protocol number, ports or not.
    expect(&cfg, "eth0", Ingress, portless(132, "203.0.113.1", "198.18.0.10"), Action::Accept, "sg-a#3");
    expect(&cfg, "eth0", Ingress, tcp("203.0.113.1", "198.18.0.10", 1), Action::Accept, "sg-a#3");
}

#[test]
fn local_address_narrowing() {
    let text = r#"
[[security_group]]
id = "sg-web"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "80/80"
  source = "0.0.0.0/0"
  destination = "198.18.0.10"
[[interface]]
name = "eth0"
security_groups = ["sg-web"]
"#;
    let cfg = config(text);
    expect(&cfg, "eth0", Ingress, tcp("203.0.113.1", "198.18.0.10", 80), Action::Accept, "sg-web#1");
    let decision = decide(&cfg, "eth0", Ingress, &tcp("203.0.113.1", "198.18.1.10", 80));
    assert_eq!(decision.action, Action::Drop);
    assert_eq!(decision.skipped[0].reasons, vec!["local 198.18.1.10 not in 198.18.0.10/32"]);
}

#[test]
fn egress_local_address_narrowing_matches_the_source() {
    let text = r#"
[[security_group]]
id = "sg-web"
type = "advanced"
  [[security_group.rule]]
  direction = "egress"
  protocol = "tcp"
  port_range = "443/443"
  destination = "0.0.0.0/0"
  source = "198.18.0.10"
[[interface]]
name = "eth0"
security_groups = ["sg-web"]
"#;
    let cfg = config(text);
    expect(&cfg, "eth0", Egress, tcp("198.18.0.10", "203.0.113.1", 443), Action::Accept, "sg-web#1");
    let decision = decide(&cfg, "eth0", Egress, &tcp("198.18.1.10", "203.0.113.1", 443));
    assert_eq!(decision.action, Action::Drop);
    assert_eq!(decision.skipped[0].reasons, vec!["local 198.18.1.10 not in 198.18.0.10/32"]);
}

#[test]
fn prefix_list_peers() {
    let text = r#"
[[prefix_list]]
id = "pl-office"
family = "ipv4"
entries = ["198.18.64.0/24", "198.18.65.0/24"]
[[security_group]]
id = "sg-a"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "22/22"
  source_prefix_list = "pl-office"
  [[security_group.rule]]
  direction = "egress"
  policy = "drop"
  protocol = "all"
  destination_prefix_list = "pl-office"
[[interface]]
name = "eth0"
security_groups = ["sg-a"]
"#;
    let cfg = config(text);
    expect(&cfg, "eth0", Ingress, tcp("198.18.65.7", "198.18.0.10", 22), Action::Accept, "sg-a#1");
    let decision = decide(&cfg, "eth0", Ingress, &tcp("198.18.66.7", "198.18.0.10", 22));
    assert_eq!(decision.skipped[0].reasons, vec!["peer 198.18.66.7 not in prefix list pl-office"]);
    expect(&cfg, "eth0", Egress, tcp("198.18.0.10", "198.18.64.1", 443), Action::Drop, "sg-a#2");
    expect(&cfg, "eth0", Egress, tcp("198.18.0.10", "198.18.66.1", 443), Action::Accept, "default basic egress");
}

#[test]
fn group_peers_match_members_only() {
    let text = r#"
[[security_group]]
id = "sg-app"
members = ["198.18.2.1", "2001:db8::2:1"]
[[security_group]]
id = "sg-a"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "8080/8080"
  source_group = "sg-app"
[[interface]]
name = "eth0"
security_groups = ["sg-a"]
"#;
    let cfg = config(text);
    expect(&cfg, "eth0", Ingress, tcp("198.18.2.1", "198.18.0.10", 8080), Action::Accept, "sg-a#1");
    expect(&cfg, "eth0", Ingress, tcp("2001:db8::2:1", "2001:db8::10", 8080), Action::Accept, "sg-a#1");
    let decision = decide(&cfg, "eth0", Ingress, &tcp("198.18.2.2", "198.18.0.10", 8080));
    assert_eq!(decision.skipped[0].reasons, vec!["peer 198.18.2.2 is not a member of sg-app"]);
    // Members of a referenced group are not members of the bound group: no intra accept.
    assert!(intra_group_accept(&cfg, &cfg.interfaces[0], ip("198.18.2.1")).is_none());
}

#[test]
fn ipv4_and_ipv6_never_cross() {
    let text = r#"
[[security_group]]
id = "sg-a"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "all"
  source = "0.0.0.0/0"
  [[security_group.rule]]
  direction = "egress"
  policy = "drop"
  protocol = "all"
  destination = "::/0"
[[interface]]
name = "eth0"
security_groups = ["sg-a"]
"#;
    let cfg = config(text);
    expect(&cfg, "eth0", Ingress, tcp("198.18.9.9", "198.18.0.10", 80), Action::Accept, "sg-a#1");
    let v6 = tcp("2001:db8::9", "2001:db8::10", 80);
    let decision = decide(&cfg, "eth0", Ingress, &v6);
    assert_eq!(decision.action, Action::Drop);
    assert_eq!(decision.skipped[0].reasons, vec!["peer 2001:db8::9 not in 0.0.0.0/0"]);
    // A v4-mapped IPv6 address is IPv6, not IPv4.
    let mapped = tcp("::ffff:198.18.9.9", "2001:db8::10", 80);
    assert_eq!(decide(&cfg, "eth0", Ingress, &mapped).action, Action::Drop);
    expect(&cfg, "eth0", Egress, tcp("2001:db8::10", "2001:db8::9", 80), Action::Drop, "sg-a#2");
    expect(&cfg, "eth0", Egress, tcp("198.18.0.10", "198.18.9.9", 80), Action::Accept, "default basic egress");
}

#[test]
fn rules_of_all_groups_on_the_interface_are_pooled() {
    let cfg = config(ORDER);
    // sg-b#2 (drop all at priority 3) applies to a packet no sg-a rule matches.
    expect(&cfg, "eth0", Ingress, portless(ICMP, "198.18.5.5", "198.18.0.10"), Action::Drop, "sg-b#2");
}

// ----- output -----

#[test]
fn explain_names_the_decider_and_the_misses() {
    let cfg = config(ORDER);
    let decision = decide(&cfg, "eth0", Ingress, &packet(UDP, "203.0.113.9", 1000, "198.18.0.10", 53));
    let text = decision.explain(&cfg);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "verdict: drop");
    assert!(
        lines[1].starts_with("decided by: rule sg-b#2 (id 4, line 27): ingress drop all from 0.0.0.0/0, priority 3"),
        "{text}"
    );
    assert_eq!(lines[2], "higher-ranked rules that did not match:");
    assert!(
        lines[3].starts_with("  sg-b#1 (id 3, priority 1, drop): protocol udp does not match tcp; port 53"),
        "{text}"
    );
    let accepted = decide(&cfg, "eth0", Ingress, &tcp("198.18.5.5", "198.18.0.10", 80));
    assert!(accepted.explain(&cfg).contains("-- \"accept at 2\""));
    let cfg = config(INTRA);
    let intra = decide(&cfg, "eth0", Ingress, &tcp("198.18.0.11", "198.18.0.10", 22));
    assert!(intra.explain(&cfg).contains("intra-group connectivity of sg-web"));
}

#[test]
fn json_output_resolves_labels() {
    let cfg = config(ORDER);
    let decision = decide(&cfg, "eth0", Ingress, &packet(UDP, "203.0.113.9", 1000, "198.18.0.10", 53));
    let json = decision.to_json(&cfg);
    assert_eq!(json["action"], "drop");
    assert_eq!(json["decided_by"]["step"], "rule");
    assert_eq!(json["decided_by"]["label"], "sg-b#2");
    assert_eq!(json["decided_by"]["rule_id"], 4);
    assert_eq!(json["decided_by"]["priority"], 3);
    assert_eq!(json["decided_by"]["policy"], "drop");
    assert_eq!(json["skipped"][0]["label"], "sg-b#1");
    assert_eq!(json["skipped"][0]["reasons"][0], "protocol udp does not match tcp");
    let default = decide(&cfg, "eth0", Egress, &tcp("198.18.0.10", "198.18.9.9", 80));
    let json = default.to_json(&cfg);
    assert_eq!(json["decided_by"], serde_json::json!({"step": "default", "kind": "basic", "direction": "egress"}));
}

// ----- the six use cases of the provider's guide -----

/// Case 1: a website open to everyone on TCP 80 and 443, and nothing else.
#[test]
fn use_case_1_web_service() {
    let text = r#"
[[security_group]]
id = "sg-web"
members = ["198.18.0.10"]
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "80/80"
  source = "0.0.0.0/0"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "443/443"
  source = "0.0.0.0/0"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "443/443"
  source = "::/0"
[[interface]]
name = "eth0"
security_groups = ["sg-web"]
"#;
    let cfg = config(text);
    expect(&cfg, "eth0", Ingress, tcp("203.0.113.5", "198.18.0.10", 80), Action::Accept, "sg-web#1");
    expect(&cfg, "eth0", Ingress, tcp("198.19.200.1", "198.18.0.10", 443), Action::Accept, "sg-web#2");
    expect(&cfg, "eth0", Ingress, tcp("2001:db8:ff::1", "2001:db8::10", 443), Action::Accept, "sg-web#3");
    expect(&cfg, "eth0", Ingress, tcp("203.0.113.5", "198.18.0.10", 22), Action::Drop, "default basic ingress");
    expect(
        &cfg,
        "eth0",
        Ingress,
        packet(UDP, "203.0.113.5", 999, "198.18.0.10", 80),
        Action::Drop,
        "default basic ingress",
    );
}

/// Case 2: SSH only from one administrator's address.
#[test]
fn use_case_2_ssh_from_one_admin() {
    let text = r#"
[[security_group]]
id = "sg-linux"
members = ["198.18.0.10"]
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "22/22"
  source = "198.19.0.5"
  description = "admin workstation"
[[interface]]
name = "eth0"
security_groups = ["sg-linux"]
"#;
    let cfg = config(text);
    expect(&cfg, "eth0", Ingress, tcp("198.19.0.5", "198.18.0.10", 22), Action::Accept, "sg-linux#1");
    expect(&cfg, "eth0", Ingress, tcp("198.19.0.6", "198.18.0.10", 22), Action::Drop, "default basic ingress");
    expect(&cfg, "eth0", Ingress, tcp("198.19.0.5", "198.18.0.10", 23), Action::Drop, "default basic ingress");
}

/// Case 3: MySQL reachable from the web tier's group only; a priority-100 drop keeps the
/// port closed to everyone else even if a broad accept is added later.
#[test]
fn use_case_3_database_from_web_group_only() {
    let text = r#"
[[security_group]]
id = "sg-web"
members = ["198.18.0.10", "198.18.0.11"]
[[security_group]]
id = "sg-database"
members = ["198.18.1.20"]
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "3306/3306"
  source_group = "sg-web"
  [[security_group.rule]]
  direction = "ingress"
  policy = "drop"
  priority = 100
  protocol = "tcp"
  port_range = "3306/3306"
  source = "0.0.0.0/0"
  [[security_group.rule]]
  direction = "ingress"
  priority = 50
  protocol = "all"
  source = "198.18.0.0/15"
  description = "broad internal accept, ranked above the final drop"
[[interface]]
name = "db0"
security_groups = ["sg-database"]
"#;
    let cfg = config(text);
    expect(&cfg, "db0", Ingress, tcp("198.18.0.11", "198.18.1.20", 3306), Action::Accept, "sg-database#1");
    expect(&cfg, "db0", Ingress, tcp("203.0.113.7", "198.18.1.20", 3306), Action::Drop, "sg-database#2");
    // Internal non-web hosts are admitted by the priority-50 rule before the drop at 100.
    expect(&cfg, "db0", Ingress, tcp("198.18.7.7", "198.18.1.20", 3306), Action::Accept, "sg-database#3");
}

/// Case 4: only ICMP (ping), and only from one client, v4 and v6.
#[test]
fn use_case_4_icmp_from_one_client() {
    let text = r#"
[[security_group]]
id = "sg-ping"
members = ["198.18.0.10", "2001:db8::10"]
  [[security_group.rule]]
  direction = "ingress"
  protocol = "icmp"
  port_range = "-1/-1"
  source = "198.19.0.7"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "icmpv6"
  source = "2001:db8:7::7"
[[interface]]
name = "eth0"
security_groups = ["sg-ping"]
"#;
    let cfg = config(text);
    expect(&cfg, "eth0", Ingress, portless(ICMP, "198.19.0.7", "198.18.0.10"), Action::Accept, "sg-ping#1");
    expect(&cfg, "eth0", Ingress, portless(ICMPV6, "2001:db8:7::7", "2001:db8::10"), Action::Accept, "sg-ping#2");
    expect(&cfg, "eth0", Ingress, portless(ICMP, "198.19.0.8", "198.18.0.10"), Action::Drop, "default basic ingress");
    expect(&cfg, "eth0", Ingress, tcp("198.19.0.7", "198.18.0.10", 80), Action::Drop, "default basic ingress");
}

/// Case 5: FTP from group A into group B, referencing A by id and by account/id.
#[test]
fn use_case_5_ftp_between_groups() {
    for reference in ["sg-a", "160998252992/sg-a"] {
        let text = format!(
            r#"
[[security_group]]
id = "sg-a"
owner = "160998252992"
members = ["198.18.3.1", "198.18.3.2"]
[[security_group]]
id = "sg-b"
members = ["198.18.4.1"]
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "21/21"
  source_group = "{reference}"
[[interface]]
name = "eth0"
security_groups = ["sg-b"]
"#
        );
        let cfg = config(&text);
        expect(&cfg, "eth0", Ingress, tcp("198.18.3.2", "198.18.4.1", 21), Action::Accept, "sg-b#1");
        expect(&cfg, "eth0", Ingress, tcp("198.18.3.9", "198.18.4.1", 21), Action::Drop, "default basic ingress");
        expect(&cfg, "eth0", Ingress, tcp("198.18.3.1", "198.18.4.1", 22), Action::Drop, "default basic ingress");
    }
}

/// Case 6: egress whitelist: deny everything at priority 2, allow HTTP and HTTPS to two
/// sites at priority 1.
#[test]
fn use_case_6_egress_whitelist() {
    let text = r#"
[[security_group]]
id = "sg-out"
members = ["198.18.0.10"]
  [[security_group.rule]]
  direction = "egress"
  policy = "drop"
  priority = 2
  protocol = "all"
  port_range = "-1/-1"
  destination = "0.0.0.0/0"
  [[security_group.rule]]
  direction = "egress"
  priority = 1
  protocol = "tcp"
  port_range = "80/80"
  destination = "198.19.96.1"
  [[security_group.rule]]
  direction = "egress"
  priority = 1
  protocol = "tcp"
  port_range = "443/443"
  destination = "198.19.199.1"
[[interface]]
name = "eth0"
security_groups = ["sg-out"]
"#;
    let cfg = config(text);
    expect(&cfg, "eth0", Egress, tcp("198.18.0.10", "198.19.96.1", 80), Action::Accept, "sg-out#2");
    expect(&cfg, "eth0", Egress, tcp("198.18.0.10", "198.19.199.1", 443), Action::Accept, "sg-out#3");
    expect(&cfg, "eth0", Egress, tcp("198.18.0.10", "198.19.96.1", 443), Action::Drop, "sg-out#1");
    expect(&cfg, "eth0", Egress, tcp("198.18.0.10", "198.19.5.5", 80), Action::Drop, "sg-out#1");
    expect(&cfg, "eth0", Egress, packet(UDP, "198.18.0.10", 5000, "198.19.5.5", 53), Action::Drop, "sg-out#1");
    // The whitelist says nothing about IPv6, so the basic default (accept) applies.
    expect(&cfg, "eth0", Egress, tcp("2001:db8::10", "2001:db8:9::1", 80), Action::Accept, "default basic egress");
}

// ----- the decider is the first match in the total order -----

const PROPERTY: &str = r#"
[[prefix_list]]
id = "pl"
family = "ipv4"
entries = ["198.18.0.0/30"]
[[security_group]]
id = "sg-peer"
members = ["198.18.0.5", "198.18.0.6"]
[[security_group]]
id = "sg-a"
inner_access_policy = "drop"
members = ["198.18.0.1", "198.18.0.7"]
  [[security_group.rule]]
  direction = "ingress"
  policy = "drop"
  priority = 2
  protocol = "tcp"
  port_range = "1/2"
  source = "198.18.0.0/29"
  [[security_group.rule]]
  direction = "ingress"
  priority = 2
  protocol = "tcp"
  port_range = "2/3"
  source_group = "sg-peer"
  [[security_group.rule]]
  direction = "ingress"
  priority = 1
  protocol = "udp"
  port_range = "1/3"
  source_port_range = "2/2"
  source_prefix_list = "pl"
  destination = "198.18.0.4/31"
  [[security_group.rule]]
  direction = "ingress"
  policy = "drop"
  priority = 3
  protocol = "all"
  source = "198.18.0.4/30"
  [[security_group.rule]]
  direction = "ingress"
  priority = 3
  protocol = "gre"
  source = "198.18.0.0/31"
[[interface]]
name = "eth0"
security_groups = ["sg-a"]
"#;

fn small_packet() -> impl Strategy<Value = PacketTuple> {
    let proto = prop::sample::select(vec![TCP, UDP, GRE, ICMP]);
    (proto, 0u8..8, 0u16..4, 0u8..8, 0u16..4).prop_map(|(protocol, s, sport, d, dport)| {
        let has_ports = protocol == TCP || protocol == UDP;
        PacketTuple {
            src: IpAddr::from([198, 18, 0, s]),
            dst: IpAddr::from([198, 18, 0, d]),
            protocol,
            src_port: if has_ports { sport } else { 0 },
            dst_port: if has_ports { dport } else { 0 },
        }
    })
}

proptest! {
    /// The deciding rule is the matching rule of smallest rank, `skipped` is exactly the
    /// rules ranked above it, and with no match the verdict comes from steps 6 and 7.
    #[test]
    fn decider_is_the_best_ranked_match(pkt in small_packet()) {
        let cfg = config(PROPERTY);
        let iface = &cfg.interfaces[0];
        let decision = evaluate(&cfg, iface, Ingress, &pkt);
        let rules: Vec<&Rule> = cfg.rules().filter(|r| r.direction == Ingress).collect();
        let best = rules
            .iter()
            .filter(|r| miss_reasons(&cfg, r, Ingress, &pkt).is_empty())
            .min_by_key(|r| r.rank());
        match best {
            Some(best) => {
                prop_assert_eq!(&decision.decided_by, &DecidedBy::Rule { rule_id: best.id });
                prop_assert_eq!(decision.action, best.action);
                let above: Vec<u32> = {
                    let mut above: Vec<&&Rule> =
                        rules.iter().filter(|r| r.rank() < best.rank()).collect();
                    above.sort_by_key(|r| r.rank());
                    above.iter().map(|r| r.id).collect()
                };
                let skipped: Vec<u32> = decision.skipped.iter().map(|m| m.rule_id).collect();
                prop_assert_eq!(skipped, above);
            }
            None => {
                prop_assert_eq!(decision.skipped.len(), rules.len());
                let member = cfg.groups[1].members.contains(&pkt.src);
                let expected = if member {
                    DecidedBy::IntraGroupIsolation { group_index: 1 }
                } else {
                    DecidedBy::Default { kind: GroupKind::Basic, direction: Ingress }
                };
                prop_assert_eq!(decision.decided_by, expected);
                prop_assert_eq!(decision.action, Action::Drop);
            }
        }
        prop_assert!(decision.skipped.iter().all(|m| !m.reasons.is_empty()));
    }
}

/// The example rule file shipped in `examples/` loads and behaves as its comments say.
#[test]
fn guide_example_file() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/guide-use-cases.toml");
    let cfg = crate::policy::config::load_file(&path).unwrap_or_else(|errors| panic!("{errors}"));
    expect(&cfg, "web0", Ingress, tcp("203.0.113.5", "198.18.0.10", 443), Action::Accept, "sg-web#2");
    expect(&cfg, "web0", Ingress, tcp("203.0.113.5", "198.18.0.10", 22), Action::Drop, "default basic ingress");
    expect(&cfg, "web0", Ingress, portless(ICMP, "198.19.0.7", "198.18.0.10"), Action::Accept, "sg-web#5");
    expect(&cfg, "db0", Ingress, tcp("198.18.0.11", "198.18.1.20", 3306), Action::Accept, "sg-database#1");
    expect(&cfg, "db0", Ingress, tcp("203.0.113.5", "198.18.1.20", 3306), Action::Drop, "sg-database#2");
    expect(&cfg, "files0", Ingress, tcp("198.18.1.20", "198.18.2.30", 21), Action::Accept, "sg-files#1");
    expect(&cfg, "files0", Egress, tcp("198.18.2.30", "198.19.199.1", 443), Action::Accept, "sg-files#4");
    expect(&cfg, "files0", Egress, tcp("198.18.2.30", "198.19.199.1", 80), Action::Drop, "sg-files#2");
    assert_eq!(cfg.interface("files0").map(|i| i.mode), Some(crate::policy::config::Mode::Audit));
}
