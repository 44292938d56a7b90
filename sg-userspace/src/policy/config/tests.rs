//! Tests of the rule-file parser and validator: one test per rejection of docs/rule-file.md,
//! plus positions, defaults, duplicates and references.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::policy::order::pooled_rules;

const FILE: &str = "test.toml";

/// Two prefix lists and two groups; rules written after it belong to `sg-web`, whose
/// first rule is therefore `security_group[2].rule[1]`.
const BASE: &str = r#"
[[prefix_list]]
id = "pl-v4"
family = "ipv4"
entries = ["198.18.64.0/24"]

[[prefix_list]]
id = "pl-v6"
family = "ipv6"
entries = ["2001:db8:64::/48"]

[[security_group]]
id = "sg-db"
owner = "1234"
members = ["198.18.1.20"]

[[security_group]]
id = "sg-web"
members = ["198.18.0.10", "2001:db8::10"]
"#;

const RULE: &str = "security_group[2].rule[1]";

fn with_rule(rule: &str) -> String {
    format!("{BASE}\n[[security_group.rule]]\n{rule}\n")
}

fn parse(text: &str) -> Config {
    parse_str(text, FILE).unwrap_or_else(|errors| panic!("unexpected errors:\n{errors}"))
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse_str(text, FILE) {
        Ok(_) => panic!("the file should have been rejected:\n{text}"),
        Err(errors) => errors.errors,
    }
}

/// Asserts that `text` is rejected with an error on `field` whose message contains every
/// one of `words`, and returns that error.
fn rejected(text: &str, field: &str, words: &[&str]) -> ConfigError {
    let all = errors(text);
    all.iter()
        .find(|e| e.field == field && words.iter().all(|w| e.message.contains(w)))
        .cloned()
        .unwrap_or_else(|| panic!("no error on `{field}` mentioning {words:?}; got:\n{}", ConfigErrors { errors: all }))
}

fn rule_rejected(rule: &str, key: &str, words: &[&str]) -> ConfigError {
    rejected(&with_rule(rule), &format!("{RULE}.{key}"), words)
}

fn only_rule(cfg: &Config) -> &Rule {
    let rules: Vec<&Rule> = cfg.rules().collect();
    assert_eq!(rules.len(), 1, "{rules:?}");
    rules[0]
}

fn net(text: &str) -> IpNet {
    text.parse().expect("test CIDR")
}

fn addr(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

// ----- accepted files and defaults -----

const SPEC_EXAMPLE: &str = r#"
[[security_group]]
id = "sg-web"
type = "basic"
inner_access_policy = "accept"
members = ["10.0.1.10", "10.0.1.11"]

  [[security_group.rule]]
  direction = "ingress"
  policy = "accept"
  priority = 1
  protocol = "tcp"
  port_range = "80/80"
  source = "0.0.0.0/0"
  description = "public HTTP"

[[security_group]]
id = "sg-database"
type = "basic"
members = ["10.0.2.20"]

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

[[prefix_list]]
id = "pl-office"
family = "ipv4"
entries = ["203.0.113.0/24"]

[[interface]]
name = "eth0"
security_groups = ["sg-web"]
mode = "enforce"
"#;

#[test]
fn spec_example_parses() {
    let cfg = parse(SPEC_EXAMPLE);
    assert_eq!(cfg.groups.len(), 2);
    let web = &cfg.groups[0];
    assert_eq!(web.id, "sg-web");
    assert_eq!(web.kind, GroupKind::Basic);
    assert_eq!(web.inner_access, Action::Accept);
    assert_eq!(web.members, vec![addr("10.0.1.10"), addr("10.0.1.11")]);
    let http = &web.rules[0];
    assert_eq!(http.id, 1);
    assert_eq!(http.line, 8);
    assert_eq!(http.protocol, Protocol::Tcp);
    assert_eq!(http.port_range, PortRange { first: 80, last: 80 });
    assert_eq!(http.peer, Peer::Cidr(net("0.0.0.0/0")));
    assert_eq!(http.description, "public HTTP");
    let db = &cfg.groups[1];
    assert_eq!(db.rules[0].peer, Peer::Group { group_index: 0 });
    assert_eq!(db.rules[0].id, 2);
    assert_eq!(db.rules[1].id, 3);
    assert_eq!(db.rules[1].action, Action::Drop);
    assert_eq!(db.rules[1].priority, 100);
    assert_eq!(cfg.prefix_lists[0].entries, vec![net("203.0.113.0/24")]);
    let eth0 = cfg.interface("eth0").expect("eth0 is bound");
    assert_eq!(eth0.groups, vec![0]);
    assert_eq!(eth0.mode, Mode::Enforce);
    assert_eq!(cfg.sessions, SessionSettings::default());
    // The provider's documented connection-tracking defaults.
    let d = SessionSettings::default();
    assert_eq!((d.tcp_established, d.tcp_closing, d.udp_unreplied, d.udp_replied), (910, 3, 30, 30));
    assert!(cfg.interface("eth1").is_none());
}

#[test]
fn defaults_are_applied() {
    let cfg = parse(&format!(
        "{}\n[[security_group]]\nid = \"sg-adv\"\ntype = \"advanced\"\n\
         [[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-web\"]\n",
        with_rule("direction = \"ingress\"\nprotocol = \"icmp\"\nsource = \"198.18.0.0/15\"")
    ));
    let rule = &cfg.groups[1].rules[0];
    assert_eq!(rule.action, Action::Accept, "policy defaults to accept");
    assert_eq!(rule.priority, 1, "priority defaults to 1");
    assert_eq!(rule.port_range, PortRange::ANY, "non-tcp/udp defaults to -1/-1");
    assert_eq!(rule.source_port_range, None);
    assert_eq!(rule.local, None);
    assert_eq!(rule.description, "");
    assert_eq!(cfg.groups[1].kind, GroupKind::Basic, "type defaults to basic");
    assert_eq!(cfg.groups[1].inner_access, Action::Accept, "basic: accept");
    assert_eq!(cfg.groups[2].inner_access, Action::Drop, "advanced: drop");
    assert_eq!(cfg.interfaces[0].mode, Mode::Enforce, "mode defaults to enforce");
}

#[test]
fn keywords_are_case_insensitive_and_accept_aliases() {
    let cfg = parse(&with_rule(
        "direction = \"Ingress\"\npolicy = \"DENY\"\nprotocol = \"TCP\"\nport_range = \"22/22\"\n\
         source = \"198.18.0.1\"",
    ));
    let rule = only_rule(&cfg);
    assert_eq!(rule.direction, Direction::Ingress);
    assert_eq!(rule.action, Action::Drop);
    assert_eq!(rule.protocol, Protocol::Tcp);
    let cfg = parse(&with_rule(
        "direction = \"EGRESS\"\npolicy = \"Allow\"\nprotocol = \"Udp\"\nport_range = \"53/53\"\n\
         destination = \"198.18.0.1\"",
    ));
    assert_eq!(only_rule(&cfg).action, Action::Accept);
    assert_eq!("Accept".parse::<Action>(), Ok(Action::Accept));
    assert_eq!("icmpV6".parse::<Protocol>(), Ok(Protocol::Icmpv6));
}

#[test]
fn single_addresses_and_host_prefixes_are_accepted() {
    for (source, expected) in [
        ("198.18.0.1", "198.18.0.1/32"),
        ("198.18.0.1/32", "198.18.0.1/32"),
        ("198.18.0.0/24", "198.18.0.0/24"),
        ("2001:db8::1", "2001:db8::1/128"),
        ("2001:db8::/32", "2001:db8::/32"),
    ] {
        let cfg = parse(&with_rule(&format!("direction = \"ingress\"\nprotocol = \"all\"\nsource = \"{source}\"")));
        assert_eq!(only_rule(&cfg).peer, Peer::Cidr(net(expected)), "{source}");
    }
}

#[test]
fn ingress_destination_narrows_the_local_address() {
    let cfg = parse(&with_rule(
        "direction = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"80/80\"\n\
         source = \"0.0.0.0/0\"\ndestination = \"198.18.0.10\"",
    ));
    assert_eq!(only_rule(&cfg).local, Some(net("198.18.0.10/32")));
}

#[test]
fn source_port_range_is_kept_for_tcp() {
    let cfg = parse(&with_rule(
        "direction = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"80/80\"\n\
         source_port_range = \"1024/65535\"\nsource = \"0.0.0.0/0\"",
    ));
    assert_eq!(only_rule(&cfg).source_port_range, Some(PortRange { first: 1024, last: 65535 }));
}

#[test]
fn exact_duplicate_rules_are_collapsed() {
    let text = format!(
        "{BASE}
[[security_group.rule]]
direction = \"ingress\"
protocol = \"tcp\"
port_range = \"80/80\"
source = \"0.0.0.0/0\"
description = \"first\"

[[security_group.rule]]
direction = \"ingress\"
protocol = \"TCP\"
port_range = \"80/80\"
source = \"0.0.0.0/0\"
description = \"same rule, other words\"

[[security_group.rule]]
direction = \"ingress\"
protocol = \"tcp\"
port_range = \"443/443\"
source = \"0.0.0.0/0\"
"
    );
    let cfg = parse(&text);
    let rules = &cfg.groups[1].rules;
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].description, "first");
    assert_eq!((rules[0].id, rules[1].id), (1, 2), "ids count collapsed rules once");
    assert_eq!(rules[1].index_in_group, 3, "labels keep the written position");
    assert_eq!(rules[1].label(&cfg), "sg-web#3");
}

#[test]
fn rules_differing_in_any_field_are_not_collapsed() {
    let text = format!(
        "{BASE}
[[security_group.rule]]
direction = \"ingress\"
protocol = \"tcp\"
port_range = \"80/80\"
source = \"0.0.0.0/0\"

[[security_group.rule]]
direction = \"ingress\"
priority = 2
protocol = \"tcp\"
port_range = \"80/80\"
source = \"0.0.0.0/0\"
"
    );
    assert_eq!(parse(&text).groups[1].rules.len(), 2);
}

#[test]
fn rule_ids_run_in_file_order_over_all_groups() {
    let cfg = parse(SPEC_EXAMPLE);
    let ids: Vec<(u32, String)> = cfg.rules().map(|r| (r.id, r.label(&cfg))).collect();
    assert_eq!(
        ids,
        vec![(1, "sg-web#1".to_string()), (2, "sg-database#1".to_string()), (3, "sg-database#2".to_string())]
    );
    assert_eq!(cfg.rule(3).map(|r| r.priority), Some(100));
}

#[test]
fn group_references_by_id_and_by_account() {
    for reference in ["sg-db", "1234/sg-db"] {
        let cfg = parse(&with_rule(&format!(
            "direction = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"21/21\"\n\
             source_group = \"{reference}\""
        )));
        assert_eq!(only_rule(&cfg).peer, Peer::Group { group_index: 0 });
        assert_eq!(only_rule(&cfg).peer.describe(&cfg), "group 1234/sg-db");
    }
}

#[test]
fn account_reference_to_another_owner_is_rejected() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"21/21\"\n\
         source_group = \"9999/sg-db\"",
        "source_group",
        &["belongs to account 1234, not 9999"],
    );
}

#[test]
fn account_reference_to_a_group_without_owner_is_rejected() {
    let mut text = BASE.replace("id = \"sg-web\"", "id = \"sg-web\"\nowner = \"1234\"");
    text.push_str("\n[[security_group]]\nid = \"sg-other\"\n");
    text.push_str(
        "[[security_group.rule]]\ndirection = \"ingress\"\nprotocol = \"all\"\n\
         source_group = \"1234/sg-db\"\n",
    );
    parse(&text);
    let text = with_rule("direction = \"ingress\"\nprotocol = \"all\"\nsource_group = \"1234/sg-web\"");
    rejected(&text, &format!("{RULE}.source_group"), &["has no owner"]);
}

#[test]
fn prefix_list_peers_resolve() {
    let cfg = parse(&with_rule("direction = \"egress\"\nprotocol = \"all\"\ndestination_prefix_list = \"pl-v6\""));
    assert_eq!(only_rule(&cfg).peer, Peer::PrefixList { list_index: 1 });
}

#[test]
fn sessions_table_is_read() {
    let cfg = parse("[sessions]\nmax_sessions = 1024\ntcp_established = 3600\nicmp = 5\n");
    assert_eq!(cfg.sessions.max_sessions, 1024);
    assert_eq!(cfg.sessions.tcp_established, 3600);
    assert_eq!(cfg.sessions.icmp, 5);
    assert_eq!(cfg.sessions.udp_replied, 30, "unset fields keep their default");
    // Dotted keys are plain TOML too.
    assert_eq!(parse("sessions.other = 60\n").sessions.other, 60);
}

#[test]
fn empty_file_is_an_empty_config() {
    let cfg = parse("");
    assert!(cfg.groups.is_empty() && cfg.interfaces.is_empty());
}

#[test]
fn pooled_rules_use_the_total_order() {
    let text = r#"
[[security_group]]
id = "sg-a"
  [[security_group.rule]]
  direction = "ingress"
  priority = 5
  protocol = "all"
  source = "0.0.0.0/0"
  [[security_group.rule]]
  direction = "ingress"
  priority = 1
  protocol = "all"
  source = "198.18.0.0/15"
  [[security_group.rule]]
  direction = "egress"
  protocol = "all"
  destination = "0.0.0.0/0"
[[security_group]]
id = "sg-b"
  [[security_group.rule]]
  direction = "ingress"
  policy = "drop"
  priority = 5
  protocol = "all"
  source = "198.18.0.0/16"
  [[security_group.rule]]
  direction = "ingress"
  priority = 1
  protocol = "tcp"
  port_range = "1/65535"
  source = "198.18.0.0/15"
[[interface]]
name = "eth0"
security_groups = ["sg-b", "sg-a"]
"#;
    let cfg = parse(text);
    let iface = cfg.interface("eth0").expect("bound");
    let order: Vec<u32> = pooled_rules(&cfg, iface, Direction::Ingress).iter().map(|r| r.id).collect();
    // priority 1: ids 2 and 5 (id order); priority 5: drop (4) before accept (1).
    assert_eq!(order, vec![2, 5, 4, 1]);
    let egress: Vec<u32> = pooled_rules(&cfg, iface, Direction::Egress).iter().map(|r| r.id).collect();
    assert_eq!(egress, vec![3]);
}

// ----- error reporting: all errors, positions, format -----

#[test]
fn all_errors_of_a_file_are_reported() {
    let text = r#"[[security_group]]
id = "sg-a"
members = ["198.18.0.0/24"]
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "-1/-1"
  source = "0.0.0.0/0"
  [[security_group.rule]]
  direction = "ingress"
  priority = 101
  protocol = "icmp"
  source = "2001:db8::/32"
  [[security_group.rule]]
  direction = "sideways"
  protocol = "tcp"
  port_range = "90/80"
  source = "198.18.0.1/24"
[[security_group]]
id = "sg-a"
[[interface]]
name = "eth0"
security_groups = ["sg-nope"]
colour = "blue"
"#;
    let all = errors(text);
    let found: Vec<(usize, &str)> = all.iter().map(|e| (e.line, e.field.as_str())).collect();
    let expected = [
        (3, "security_group[1].members[1]"),
        (7, "security_group[1].rule[1].port_range"),
        (11, "security_group[1].rule[2].priority"),
        (13, "security_group[1].rule[2].source"),
        (15, "security_group[1].rule[3].direction"),
        (17, "security_group[1].rule[3].port_range"),
        (18, "security_group[1].rule[3].source"),
        (20, "security_group[2].id"),
        (23, "interface[1].security_groups[1]"),
        (24, "interface[1].colour"),
    ];
    assert_eq!(found, expected, "\n{}", ConfigErrors { errors: all.clone() });
}

#[test]
fn positions_point_at_the_offending_value() {
    let text = "[[security_group]]\nid = \"sg-a\"\n\n  [[security_group.rule]]\n  \
                direction = \"ingress\"\n  protocol = \"tcp\"\n  port_range =   \"22/-5\"\n  \
                source = \"0.0.0.0/0\"\n";
    let error = &errors(text)[0];
    assert_eq!((error.line, error.column), (7, 18));
    assert_eq!(error.field, "security_group[1].rule[1].port_range");
    assert_eq!(error.value, "\"22/-5\"");
    assert_eq!(error.file, FILE);
}

#[test]
fn positions_count_characters_not_bytes() {
    let text = "[[security_group]]\nid = \"sg-a\"\n[[security_group.rule]]\n\
                description = \"é\"\nbogus = 1\ndirection = \"ingress\"\nprotocol = \"all\"\n\
                source = \"0.0.0.0/0\"\n# ünïcode\n  [sessions]\n    icmp = \"é\"\n";
    let all = errors(text);
    let positions: Vec<(usize, usize)> = all.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(positions, vec![(5, 1), (11, 12)], "{all:?}");
}

#[test]
fn missing_fields_point_at_their_table() {
    let text = "[[security_group]]\nid = \"sg-a\"\n\n  [[security_group.rule]]\n  \
                protocol = \"all\"\n  source = \"0.0.0.0/0\"\n";
    let error = rejected(text, "security_group[1].rule[1].direction", &["required"]);
    assert_eq!((error.line, error.column), (4, 3));
    assert_eq!(error.value, "");
}

#[test]
fn display_format_is_file_line_column_field_value_message() {
    let error = rule_rejected(
        "direction = \"ingress\"\npriority = 0\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"",
        "priority",
        &["out of range"],
    );
    let line = error.to_string();
    assert!(
        line.starts_with(&format!(
            "test.toml:{}:12: security_group[2].rule[1].priority = 0: priority 0 is out of range",
            error.line
        )),
        "{line}"
    );
    let missing = rule_rejected("protocol = \"all\"\nsource = \"0.0.0.0/0\"", "direction", &[]);
    assert!(missing.to_string().contains("direction = <missing>: "), "{missing}");
}

#[test]
fn errors_serialize_to_json() {
    let errors = parse_str("bogus = 1\n", FILE).expect_err("rejected");
    let json = serde_json::to_value(&errors).expect("serializable");
    assert_eq!(json["errors"][0]["field"], "bogus");
    assert_eq!(json["errors"][0]["line"], 1);
}

#[test]
fn syntax_errors_have_a_position() {
    let all = errors("[[security_group]]\nid = \"sg-a\nmembers = []\n");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].line, 2);
    assert!(!all[0].message.contains('\n'));
}

#[test]
fn load_file_reads_and_names_the_file() {
    let dir = std::env::temp_dir().join(format!("sgctl-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("rules.toml");
    std::fs::write(&path, SPEC_EXAMPLE).expect("write");
    assert_eq!(load_file(&path).map(|c| c.groups.len()), Ok(2));
    std::fs::write(&path, "bogus = 1\n").expect("write");
    let errors = load_file(&path).expect_err("rejected");
    assert!(errors.to_string().starts_with(&path.display().to_string()));
    std::fs::remove_dir_all(&dir).expect("cleanup");
    let missing = load_file(&dir.join("absent.toml")).expect_err("missing file");
    assert!(missing.to_string().contains("cannot read file"), "{missing}");
}

// ----- one test per rejection -----

#[test]
fn rejects_tcp_without_ports() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"-1/-1\"\nsource = \"0.0.0.0/0\"",
        "port_range",
        &["protocol/port mismatch", "tcp needs a port range"],
    );
}

#[test]
fn rejects_tcp_with_port_range_missing() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"udp\"\nsource = \"0.0.0.0/0\"",
        "port_range",
        &["required for udp"],
    );
}

#[test]
fn rejects_icmp_with_ports() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"icmp\"\nport_range = \"22/22\"\nsource = \"0.0.0.0/0\"",
        "port_range",
        &["protocol/port mismatch", "icmp has no ports"],
    );
}

#[test]
fn rejects_first_port_above_last() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"90/80\"\nsource = \"0.0.0.0/0\"",
        "port_range",
        &["first port 90 is greater than last port 80"],
    );
}

#[test]
fn rejects_ports_out_of_range() {
    for (range, bad) in [("0/80", "0"), ("80/65536", "65536"), ("-5/80", "-5")] {
        rule_rejected(
            &format!(
                "direction = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"{range}\"\n\
                 source = \"0.0.0.0/0\""
            ),
            "port_range",
            &[&format!("port {bad} is out of range")],
        );
    }
}

#[test]
fn rejects_port_range_garbage() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"http/https\"\nsource = \"0.0.0.0/0\"",
        "port_range",
        &["not a port number"],
    );
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"80\"\nsource = \"0.0.0.0/0\"",
        "port_range",
        &["not a port range", "p/p"],
    );
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"tcp\"\nport_range = 80\nsource = \"0.0.0.0/0\"",
        "port_range",
        &["expected a string, found an integer"],
    );
}

#[test]
fn rejects_priority_out_of_range() {
    for priority in ["0", "101", "-1", "1000"] {
        rule_rejected(
            &format!(
                "direction = \"ingress\"\npriority = {priority}\nprotocol = \"all\"\n\
                 source = \"0.0.0.0/0\""
            ),
            "priority",
            &[&format!("priority {priority} is out of range")],
        );
    }
    rule_rejected(
        "direction = \"ingress\"\npriority = \"1\"\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"",
        "priority",
        &["expected an integer"],
    );
}

#[test]
fn rejects_cidr_with_host_bits() {
    let error = rule_rejected(
        "direction = \"ingress\"\nprotocol = \"all\"\nsource = \"198.18.0.1/24\"",
        "source",
        &["host bits are set", "198.18.0.0/24"],
    );
    assert_eq!(error.value, "\"198.18.0.1/24\"");
    rule_rejected(
        "direction = \"egress\"\nprotocol = \"all\"\ndestination = \"2001:db8::1/64\"",
        "destination",
        &["host bits are set"],
    );
}

#[test]
fn rejects_peer_that_is_not_an_address() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"all\"\nsource = \"sg-db\"",
        "source",
        &["not an IP address or CIDR block"],
    );
}

#[test]
fn rejects_icmp_with_ipv6_peer() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"icmp\"\nsource = \"2001:db8::/32\"",
        "source",
        &["icmp is ipv4 only", "icmpv6"],
    );
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"icmp\"\nsource_prefix_list = \"pl-v6\"",
        "source_prefix_list",
        &["icmp is ipv4 only"],
    );
}

#[test]
fn rejects_icmpv6_with_ipv4_peer() {
    rule_rejected(
        "direction = \"egress\"\nprotocol = \"icmpv6\"\ndestination = \"198.18.0.0/15\"",
        "destination",
        &["icmpv6 is ipv6 only"],
    );
    rule_rejected(
        "direction = \"egress\"\nprotocol = \"icmpv6\"\ndestination_prefix_list = \"pl-v4\"",
        "destination_prefix_list",
        &["icmpv6 is ipv6 only"],
    );
}

#[test]
fn icmp_with_group_peer_is_fine() {
    parse(&with_rule("direction = \"ingress\"\nprotocol = \"icmpv6\"\nsource_group = \"sg-db\""));
}

#[test]
fn rejects_local_address_of_another_family() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"all\"\nsource = \"198.18.0.0/15\"\n\
         destination = \"2001:db8::10\"",
        "destination",
        &["could never match"],
    );
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"icmp\"\nsource_group = \"sg-db\"\n\
         destination = \"2001:db8::10\"",
        "destination",
        &["icmp is ipv4 only", "the local address"],
    );
}

#[test]
fn rejects_unknown_group_reference() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"all\"\nsource_group = \"sg-nope\"",
        "source_group",
        &["unknown security group `sg-nope`"],
    );
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"all\"\nsource_group = \"1234/\"",
        "source_group",
        &["account/group-id"],
    );
}

#[test]
fn rejects_unknown_prefix_list_reference() {
    rule_rejected(
        "direction = \"egress\"\nprotocol = \"all\"\ndestination_prefix_list = \"pl-nope\"",
        "destination_prefix_list",
        &["unknown prefix list `pl-nope`"],
    );
}

#[test]
fn rejects_group_referencing_itself() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"all\"\nsource_group = \"sg-web\"",
        "source_group",
        &["cannot reference itself"],
    );
}

#[test]
fn rejects_advanced_group_referencing_a_group() {
    let text = "[[security_group]]\nid = \"sg-b\"\nmembers = [\"198.18.0.1\"]\n\n\
                [[security_group]]\nid = \"sg-a\"\ntype = \"advanced\"\n\
                [[security_group.rule]]\ndirection = \"ingress\"\nprotocol = \"all\"\nsource_group = \"sg-b\"\n";
    let error = rejected(
        text,
        "security_group[2].rule[1].source_group",
        &["source_group = \"sg-b\"", "`sg-a` is an advanced group", "cannot reference security groups"],
    );
    assert_eq!((error.line, error.column), (11, 16), "{error:?}");
    assert!(error.to_string().contains("test.toml:11:16"), "{error}");
}

#[test]
fn rejects_referencing_an_advanced_group() {
    let text = format!(
        "{BASE}\n[[security_group]]\nid = \"sg-adv\"\ntype = \"advanced\"\n\n\
         [[security_group]]\nid = \"sg-basic\"\n\
         [[security_group.rule]]\ndirection = \"egress\"\nprotocol = \"all\"\ndestination_group = \"sg-adv\"\n"
    );
    rejected(
        &text,
        "security_group[4].rule[1].destination_group",
        &["destination_group = \"sg-adv\"", "`sg-adv` is an advanced group", "cannot be referenced"],
    );
    // Basic to basic stays valid.
    parse(&with_rule("direction = \"ingress\"\nprotocol = \"all\"\nsource_group = \"sg-db\""));
}

#[test]
fn rejects_more_than_one_peer_kind() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"\n\
         source_group = \"sg-db\"",
        "source_group",
        &["more than one peer", "`source` and `source_group`"],
    );
    rule_rejected(
        "direction = \"egress\"\nprotocol = \"all\"\ndestination = \"0.0.0.0/0\"\n\
         destination_prefix_list = \"pl-v4\"",
        "destination_prefix_list",
        &["more than one peer"],
    );
}

#[test]
fn rejects_ingress_rule_without_peer() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"all\"\ndestination = \"198.18.0.10\"",
        "source",
        &["missing peer", "source, source_group, source_prefix_list"],
    );
}

#[test]
fn rejects_egress_rule_without_peer() {
    rule_rejected(
        "direction = \"egress\"\nprotocol = \"all\"",
        "destination",
        &["missing peer", "destination, destination_group, destination_prefix_list"],
    );
}

#[test]
fn rejects_group_or_prefix_list_as_ingress_destination() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"\n\
         destination_group = \"sg-db\"",
        "destination_group",
        &["only `destination`"],
    );
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"\n\
         destination_prefix_list = \"pl-v4\"",
        "destination_prefix_list",
        &["only `destination`"],
    );
}

#[test]
fn rejects_source_group_and_prefix_list_on_egress() {
    for (key, value) in [("source_group", "sg-db"), ("source_prefix_list", "pl-v4")] {
        rule_rejected(
            &format!(
                "direction = \"egress\"\nprotocol = \"all\"\ndestination = \"0.0.0.0/0\"\n\
                 {key} = \"{value}\""
            ),
            key,
            &["egress rules take only `source`", &format!("not `{key}`")],
        );
    }
}

#[test]
fn egress_source_narrows_the_local_address() {
    let cfg = parse(&with_rule(
        "direction = \"egress\"\nprotocol = \"tcp\"\nport_range = \"443/443\"\n\
         destination = \"0.0.0.0/0\"\nsource = \"198.18.0.10\"",
    ));
    let rule = only_rule(&cfg);
    assert_eq!((rule.direction, rule.local), (Direction::Egress, Some(net("198.18.0.10/32"))));
    assert_eq!(rule.peer, Peer::Cidr(net("0.0.0.0/0")));
    // Families are checked as on ingress.
    rule_rejected(
        "direction = \"egress\"\nprotocol = \"all\"\ndestination = \"0.0.0.0/0\"\nsource = \"2001:db8::10\"",
        "source",
        &["the local address is ipv6 but the peer is ipv4"],
    );
}

#[test]
fn rejects_source_port_range_on_non_tcp_udp() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"icmp\"\nsource_port_range = \"1/2\"\n\
         source = \"0.0.0.0/0\"",
        "source_port_range",
        &["only allowed for tcp and udp"],
    );
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"80/80\"\n\
         source_port_range = \"-1/-1\"\nsource = \"0.0.0.0/0\"",
        "source_port_range",
        &["omit it"],
    );
}

#[test]
fn rejects_mixing_basic_and_advanced_on_one_interface() {
    let text = format!(
        "{BASE}\n[[security_group]]\nid = \"sg-adv\"\ntype = \"advanced\"\n\
         [[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-web\", \"sg-adv\"]\n"
    );
    rejected(
        &text,
        "interface[1].security_groups[2]",
        &["mixing basic and advanced", "`sg-adv` is advanced", "`sg-web` is basic"],
    );
}

#[test]
fn rejects_duplicate_group_ids() {
    let error = rejected(
        &format!("{BASE}\n[[security_group]]\nid = \"sg-db\"\n"),
        "security_group[3].id",
        &["duplicate security group id `sg-db`", "line 13"],
    );
    assert_eq!(error.value, "\"sg-db\"");
}

#[test]
fn rejects_duplicate_prefix_list_ids() {
    rejected(
        &format!("{BASE}\n[[prefix_list]]\nid = \"pl-v4\"\nfamily = \"ipv4\"\n"),
        "prefix_list[3].id",
        &["duplicate prefix list id `pl-v4`"],
    );
}

#[test]
fn rejects_duplicate_interface_names() {
    let text = format!(
        "{BASE}\n[[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-web\"]\n\
         [[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-db\"]\n"
    );
    rejected(&text, "interface[2].name", &["duplicate interface `eth0`"]);
}

#[test]
fn rejects_invalid_interface_names() {
    for name in ["", "a-name-far-too-long", "eth0/1", "eth 0"] {
        let text = format!("[[interface]]\nname = \"{name}\"\nsecurity_groups = []\n");
        rejected(&text, "interface[1].name", &["not a valid interface name"]);
    }
}

#[test]
fn rejects_interface_referencing_unknown_group() {
    let text = format!("{BASE}\n[[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-nope\"]\n");
    rejected(&text, "interface[1].security_groups[1]", &["unknown security group `sg-nope`"]);
}

#[test]
fn rejects_interface_without_groups() {
    let text = "[[interface]]\nname = \"eth0\"\nsecurity_groups = []\n";
    rejected(text, "interface[1].security_groups", &["at least one"]);
    rejected("[[interface]]\nname = \"eth0\"\n", "interface[1].security_groups", &["needs"]);
}

#[test]
fn rejects_group_listed_twice_on_an_interface() {
    let text = format!("{BASE}\n[[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-web\", \"sg-web\"]\n");
    rejected(&text, "interface[1].security_groups[2]", &["listed twice"]);
}

#[test]
fn rejects_more_than_ten_groups_on_an_interface() {
    let mut text = String::new();
    let mut ids = Vec::new();
    for i in 0..11 {
        text.push_str(&format!("[[security_group]]\nid = \"sg-{i}\"\n"));
        ids.push(format!("\"sg-{i}\""));
    }
    text.push_str(&format!("[[interface]]\nname = \"eth0\"\nsecurity_groups = [{}]\n", ids.join(", ")));
    rejected(&text, "interface[1].security_groups", &["11 groups", "at most 10"]);
    // Ten is fine.
    let ten = text.replace(", \"sg-10\"]", "]");
    assert_eq!(parse(&ten).interfaces[0].groups.len(), 10);
}

#[test]
fn rejects_accept_inner_access_on_advanced_group() {
    rejected(
        "[[security_group]]\nid = \"sg-adv\"\ntype = \"advanced\"\ninner_access_policy = \"accept\"\n",
        "security_group[1].inner_access_policy",
        &["advanced groups always isolate"],
    );
    let cfg = parse("[[security_group]]\nid = \"sg-b\"\ninner_access_policy = \"drop\"\n");
    assert_eq!(cfg.groups[0].inner_access, Action::Drop, "basic may isolate");
}

#[test]
fn rejects_prefix_list_entry_of_the_wrong_family() {
    rejected(
        "[[prefix_list]]\nid = \"pl\"\nfamily = \"ipv4\"\nentries = [\"198.18.0.0/15\", \"2001:db8::/32\"]\n",
        "prefix_list[1].entries[2]",
        &["not an ipv4 network"],
    );
}

#[test]
fn rejects_prefix_list_entry_with_host_bits() {
    rejected(
        "[[prefix_list]]\nid = \"pl\"\nfamily = \"ipv6\"\nentries = [\"2001:db8::1/48\"]\n",
        "prefix_list[1].entries[1]",
        &["host bits are set"],
    );
}

#[test]
fn rejects_prefix_list_over_the_entry_limit() {
    let entries: Vec<String> = (0..=MAX_PREFIX_LIST_ENTRIES as u32)
        .map(|i| format!("\"{}\"", std::net::Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let text = format!("[[prefix_list]]\nid = \"pl\"\nfamily = \"ipv4\"\nentries = [{}]\n", entries.join(","));
    let error = rejected(&text, "prefix_list[1].entries", &["16385 entries", "at most 16384"]);
    assert!(error.value.len() < 100, "long values are cut: {}", error.value);
}

#[test]
fn rejects_description_over_512_characters() {
    let long = "é".repeat(513);
    rule_rejected(
        &format!(
            "direction = \"ingress\"\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"\n\
             description = \"{long}\""
        ),
        "description",
        &["513 characters", "at most 512"],
    );
    let fits = "é".repeat(512);
    parse(&with_rule(&format!(
        "direction = \"ingress\"\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"\n\
         description = \"{fits}\""
    )));
}

#[test]
fn rejects_members_that_are_not_single_addresses() {
    rejected(
        "[[security_group]]\nid = \"sg-a\"\nmembers = [\"198.18.0.1\", \"198.18.0.0/24\"]\n",
        "security_group[1].members[2]",
        &["single addresses"],
    );
    rejected(
        "[[security_group]]\nid = \"sg-a\"\nmembers = [\"web-1\"]\n",
        "security_group[1].members[1]",
        &["not an IP address"],
    );
    let cfg = parse("[[security_group]]\nid = \"sg-a\"\nmembers = [\"198.18.0.1/32\", \"198.18.0.1\"]\n");
    assert_eq!(cfg.groups[0].members, vec![addr("198.18.0.1")], "/32 is one address");
}

#[test]
fn rejects_unknown_protocol() {
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"sctp\"\nsource = \"0.0.0.0/0\"",
        "protocol",
        &["unknown protocol `sctp`", "tcp, udp, icmp, icmpv6, gre, all"],
    );
}

#[test]
fn rejects_unknown_direction() {
    rule_rejected(
        "direction = \"inbound\"\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"",
        "direction",
        &["unknown direction `inbound`"],
    );
}

#[test]
fn rejects_unknown_policy() {
    rule_rejected(
        "direction = \"ingress\"\npolicy = \"reject\"\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"",
        "policy",
        &["unknown policy `reject`", "accept, drop, allow, deny"],
    );
}

#[test]
fn rejects_unknown_group_type() {
    rejected(
        "[[security_group]]\nid = \"sg-a\"\ntype = \"enterprise\"\n",
        "security_group[1].type",
        &["unknown type `enterprise`", "basic, advanced"],
    );
}

#[test]
fn rejects_unknown_mode() {
    rejected(
        &format!("{BASE}\n[[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-web\"]\nmode = \"monitor\"\n"),
        "interface[1].mode",
        &["unknown mode `monitor`", "enforce, audit"],
    );
}

#[test]
fn rejects_unknown_family() {
    rejected(
        "[[prefix_list]]\nid = \"pl\"\nfamily = \"inet\"\nentries = []\n",
        "prefix_list[1].family",
        &["unknown family `inet`", "ipv4, ipv6"],
    );
}

#[test]
fn rejects_unknown_fields_anywhere() {
    rejected("colour = 1\n", "colour", &["unknown field `colour`"]);
    rejected("[[security_group]]\nid = \"a\"\nname = \"web\"\n", "security_group[1].name", &["unknown field `name`"]);
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"\nport = 80",
        "port",
        &["unknown field `port`"],
    );
    rejected(
        "[[prefix_list]]\nid = \"p\"\nfamily = \"ipv4\"\nentry = []\n",
        "prefix_list[1].entry",
        &["unknown field `entry`"],
    );
    rejected("[[interface]]\nname = \"eth0\"\ngroups = []\n", "interface[1].groups", &["unknown field `groups`"]);
    rejected("[sessions]\ntcp_timeout = 5\n", "sessions.tcp_timeout", &["unknown field"]);
}

#[test]
fn rejects_zero_session_settings() {
    rejected(
        "[sessions]\nmax_sessions = 0\n",
        "sessions.max_sessions",
        &["max_sessions = 0 is out of range", "entries"],
    );
    rejected("[sessions]\ntcp_rst = 0\n", "sessions.tcp_rst", &["1 to 3600 seconds"]);
    rejected("[sessions]\nudp_replied = -3\n", "sessions.udp_replied", &["udp_replied = -3 is out of range"]);
    rejected("[sessions]\ntcp_closing = 3601\n", "sessions.tcp_closing", &["tcp_closing = 3601", "1 to 3600 seconds"]);
    rejected(
        "[sessions]\ntcp_established = 432001\n",
        "sessions.tcp_established",
        &["tcp_established = 432001 is out of range", "1 to 432000 seconds"],
    );
    let edges = parse("[sessions]\ntcp_established = 432000\ntcp_closing = 3600\nudp_replied = 1\n");
    assert_eq!((edges.sessions.tcp_established, edges.sessions.tcp_closing), (432_000, 3_600));
    rejected("[sessions]\nicmp = \"30s\"\n", "sessions.icmp", &["expected an integer"]);
}

#[test]
fn rejects_missing_ids_and_bad_ids() {
    rejected("[[security_group]]\nmembers = []\n", "security_group[1].id", &["needs an `id`"]);
    rejected("[[security_group]]\nid = \"a/b\"\n", "security_group[1].id", &["'/'"]);
    rejected("[[prefix_list]]\nfamily = \"ipv4\"\n", "prefix_list[1].id", &["needs an `id`"]);
}

#[test]
fn rejects_single_table_where_an_array_is_expected() {
    rejected("[security_group]\nid = \"a\"\n", "security_group", &["[[security_group]]"]);
}

proptest! {
    /// Any written range prints back as itself and parses to the same range.
    #[test]
    fn port_ranges_round_trip(a in 1u16..=u16::MAX, b in 1u16..=u16::MAX) {
        let (first, last) = (a.min(b), a.max(b));
        let cfg = parse(&with_rule(&format!(
            "direction = \"ingress\"\nprotocol = \"udp\"\nport_range = \"{first}/{last}\"\n\
             source = \"0.0.0.0/0\""
        )));
        let range = only_rule(&cfg).port_range;
        prop_assert_eq!(range, PortRange { first, last });
        prop_assert_eq!(range.to_string(), format!("{first}/{last}"));
        prop_assert!(!range.is_any());
    }
}

// ----- protocols by number, ICMP types and codes -----

#[test]
fn protocols_by_number_are_accepted_and_named_numbers_normalised() {
    for (written, expected) in [
        ("50", Protocol::Number(50)),
        ("\"132\"", Protocol::Number(132)),
        ("0", Protocol::Number(0)),
        ("255", Protocol::Number(255)),
        ("\"47\"", Protocol::Gre),
        ("1", Protocol::Icmp),
    ] {
        let cfg = parse(&with_rule(&format!("direction = \"ingress\"\nprotocol = {written}\nsource = \"0.0.0.0/0\"")));
        let rule = only_rule(&cfg);
        assert_eq!((rule.protocol, rule.port_range), (expected, PortRange::ANY), "{written}");
    }
    // 6 is tcp: its port range is required and kept.
    let cfg =
        parse(&with_rule("direction = \"ingress\"\nprotocol = 6\nport_range = \"22/22\"\nsource = \"0.0.0.0/0\""));
    assert_eq!(only_rule(&cfg).protocol, Protocol::Tcp);
    assert_eq!(only_rule(&cfg).port_range, PortRange { first: 22, last: 22 });
    rule_rejected("direction = \"ingress\"\nprotocol = \"17\"\nsource = \"0.0.0.0/0\"", "port_range", &["udp"]);
    // 58 is icmpv6: IPv6 only.
    rule_rejected("direction = \"ingress\"\nprotocol = 58\nsource = \"0.0.0.0/0\"", "source", &["icmpv6 is ipv6 only"]);
    // A numbered protocol has no ports.
    rule_rejected(
        "direction = \"ingress\"\nprotocol = 50\nport_range = \"1/2\"\nsource = \"0.0.0.0/0\"",
        "port_range",
        &["50 has no ports"],
    );
    let text = with_rule("direction = \"ingress\"\nprotocol = 50\nsource = \"0.0.0.0/0\"");
    let cfg = parse(&text);
    assert!(only_rule(&cfg).summary(&cfg).contains("accept protocol 50 from"), "{}", only_rule(&cfg).summary(&cfg));
}

#[test]
fn rejects_protocol_numbers_out_of_range() {
    let e = rule_rejected("direction = \"ingress\"\nprotocol = 256\nsource = \"0.0.0.0/0\"", "protocol", &["0 to 255"]);
    assert_eq!(e.value, "256");
    rule_rejected("direction = \"ingress\"\nprotocol = -1\nsource = \"0.0.0.0/0\"", "protocol", &["out of range"]);
    rule_rejected("direction = \"ingress\"\nprotocol = \"300\"\nsource = \"0.0.0.0/0\"", "protocol", &["0 to 255"]);
    rule_rejected("direction = \"ingress\"\nprotocol = \"esp\"\nsource = \"0.0.0.0/0\"", "protocol", &["number"]);
}

#[test]
fn icmp_type_and_code_become_a_range_of_icmp_keys() {
    let rule = |extra: &str| {
        let cfg =
            parse(&with_rule(&format!("direction = \"ingress\"\nprotocol = \"icmp\"\n{extra}source = \"0.0.0.0/0\"")));
        let rule = only_rule(&cfg).clone();
        (rule.port_range, rule.icmp(), rule.summary(&cfg))
    };
    let (range, icmp, summary) = rule("icmp_type = 8\nicmp_code = 0\n");
    assert_eq!(range, PortRange { first: 0x0800, last: 0x0800 });
    assert_eq!(icmp, Some(IcmpMatch { icmp_type: 8, code: Some(0) }));
    assert!(summary.contains("icmp type 8 code 0 from"), "{summary}");
    let (range, icmp, _) = rule("icmp_type = 3\n");
    assert_eq!(range, PortRange { first: 0x0300, last: 0x03ff });
    assert_eq!(icmp, Some(IcmpMatch { icmp_type: 3, code: None }));
    let (range, icmp, _) = rule("icmp_type = 0\nicmp_code = 255\n");
    assert_eq!(
        (range, icmp),
        (PortRange { first: 0x00ff, last: 0x00ff }, Some(IcmpMatch { icmp_type: 0, code: Some(255) }))
    );
    let (range, icmp, _) = rule("port_range = \"-1/-1\"\n");
    assert_eq!((range, icmp), (PortRange::ANY, None));
    // icmpv6 too; two rules differing only in their type are two rules.
    let text = with_rule(
        "direction = \"ingress\"\nprotocol = \"icmpv6\"\nicmp_type = 128\nsource = \"::/0\"\n\
         [[security_group.rule]]\ndirection = \"ingress\"\nprotocol = \"icmpv6\"\nicmp_type = 129\nsource = \"::/0\"",
    );
    let cfg = parse(&text);
    let types: Vec<Option<IcmpMatch>> = cfg.rules().map(Rule::icmp).collect();
    assert_eq!(
        types,
        vec![Some(IcmpMatch { icmp_type: 128, code: None }), Some(IcmpMatch { icmp_type: 129, code: None })]
    );
}

#[test]
fn rejects_icmp_code_without_type_and_values_out_of_range() {
    let icmp = |extra: &str| format!("direction = \"ingress\"\nprotocol = \"icmp\"\n{extra}\nsource = \"0.0.0.0/0\"");
    let e = rule_rejected(&icmp("icmp_code = 4"), "icmp_code", &["needs an icmp_type"]);
    assert_eq!(e.value, "4");
    let e = rule_rejected(&icmp("icmp_type = 256"), "icmp_type", &["icmp_type 256 is out of range", "0 to 255"]);
    assert_eq!(e.value, "256");
    rule_rejected(&icmp("icmp_type = -1"), "icmp_type", &["out of range"]);
    rule_rejected(&icmp("icmp_type = 3\nicmp_code = 300"), "icmp_code", &["icmp_code 300", "codes are 0 to 255"]);
    rule_rejected(&icmp("icmp_type = \"8\""), "icmp_type", &["expected an integer"]);
    // Only icmp and icmpv6 rules have types; a port range is still refused on icmp.
    rule_rejected(
        "direction = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"22/22\"\nicmp_type = 8\nsource = \"0.0.0.0/0\"",
        "icmp_type",
        &["only allowed for icmp and icmpv6 rules, not tcp"],
    );
    rule_rejected(
        "direction = \"ingress\"\nprotocol = 50\nicmp_code = 0\nsource = \"0.0.0.0/0\"",
        "icmp_code",
        &["not protocol 50"],
    );
    rule_rejected(&icmp("icmp_type = 8\nport_range = \"8/8\""), "port_range", &["icmp has no ports"]);
    // The error names the file, line and field.
    let text = with_rule(&icmp("icmp_type = 999"));
    let line = text.lines().position(|l| l.starts_with("icmp_type")).expect("line") + 1;
    let shown = errors(&text)[0].to_string();
    assert!(shown.starts_with(&format!("{FILE}:{line}:")), "{shown}");
    assert!(shown.contains("security_group[2].rule[1].icmp_type = 999"), "{shown}");
}

#[test]
fn rejects_an_interface_whose_groups_hold_more_rules_than_the_maps() {
    // Two groups of 32,769 ingress rules each: each group is fine alone, together they
    // exceed what one interface and direction holds, and the error is at the interface.
    let group = |id: &str| {
        let rules: String = (0..32_769)
            .map(|i| {
                format!(
                    "[[security_group.rule]]\ndirection = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"{p}/{p}\"\nsource = \"198.18.0.0/15\"\n",
                    p = 1 + i
                )
            })
            .collect();
        format!("[[security_group]]\nid = \"{id}\"\ntype = \"basic\"\nmembers = [\"198.18.1.1\"]\n{rules}")
    };
    let one = format!("{}[[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-a\"]\n", group("sg-a"));
    assert!(parse_str(&one, "one.toml").is_ok());
    let two = format!(
        "{}{}[[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-a\", \"sg-b\"]\n",
        group("sg-a"),
        group("sg-b")
    );
    let error = rejected(&two, "interface[1].security_groups", &["65538 ingress rules", "at most 65536 per direction"]);
    assert!(error.line > 0, "{error:?}");
}

#[test]
fn interface_addresses_are_members_of_its_groups() {
    let cfg = parse(
        "[[security_group]]\nid = \"sg-a\"\nmembers = [\"198.18.0.1\"]\n[[security_group]]\nid = \"sg-b\"\n\
         [[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-a\", \"sg-b\"]\naddresses = [\"198.18.0.1\", \"2001:db8::7\"]\n",
    );
    assert_eq!(cfg.interfaces[0].addresses, vec![addr("198.18.0.1"), addr("2001:db8::7")]);
    assert_eq!(cfg.groups[0].members, vec![addr("198.18.0.1"), addr("2001:db8::7")], "no duplicate");
    assert_eq!(cfg.groups[1].members, vec![addr("198.18.0.1"), addr("2001:db8::7")]);
    rejected(
        "[[security_group]]\nid = \"sg-a\"\n[[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-a\"]\naddresses = [\"198.18.0.0/24\"]\n",
        "interface[1].addresses[1]",
        &["single addresses"],
    );
}

/// Rule counters follow a rule by its identity across applies, agent restarts and
/// upgrades (handles are adopted by it): its text must not change between versions.
#[test]
fn rule_identities_keep_their_exact_text() {
    let text = format!(
        "{BASE}
[[security_group.rule]]
direction = \"ingress\"
protocol = \"tcp\"
port_range = \"80/80\"
source = \"198.18.64.0/24\"
policy = \"accept\"
priority = 5

[[security_group.rule]]
direction = \"ingress\"
protocol = \"udp\"
port_range = \"53/53\"
source_port_range = \"1024/2047\"
source_group = \"sg-db\"
destination = \"198.18.0.10\"
policy = \"drop\"
priority = 2

[[security_group.rule]]
direction = \"egress\"
protocol = \"tcp\"
port_range = \"443/443\"
destination_prefix_list = \"pl-v6\"
"
    );
    let cfg = parse_str(&text, FILE).expect("valid");
    let identities: Vec<String> = cfg.rules().map(|r| r.identity(&cfg)).collect();
    assert_eq!(
        identities,
        [
            "sg-web|Ingress|Accept|5|tcp|80/80||198.18.64.0/24|",
            "sg-web|Ingress|Drop|2|udp|53/53|1024/2047|group:sg-db|198.18.0.10/32",
            "sg-web|Egress|Accept|1|tcp|443/443||prefix-list:pl-v6|",
        ]
    );
}
