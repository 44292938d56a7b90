//! Each check against a fixture that triggers it and one that does not, plus the exact
//! shadowing proof checked against the reference evaluator.

use std::path::PathBuf;

use super::*;
use crate::policy::config::parse_str;

fn fixture(name: &str) -> (String, PathBuf) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/guidance/lint").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (text, path)
}

fn lint_fixture(name: &str, provider: Option<Provider>) -> Vec<Finding> {
    let (text, path) = fixture(name);
    let file = path.display().to_string();
    let cfg = parse_str(&text, &file).unwrap_or_else(|e| panic!("{name} does not validate:\n{e}"));
    lint(&cfg, &text, &file, &LintOptions { provider, max_rules: DEFAULT_MAX_RULES })
}

fn of_check<'f>(findings: &'f [Finding], check: &str) -> Vec<&'f Finding> {
    findings.iter().filter(|f| f.check == check).collect()
}

fn dump(findings: &[Finding]) -> String {
    findings.iter().map(|f| format!("{f}\n")).collect()
}

/// (check, fixture stem, provider)
const CHECKS: &[(&str, &str, Option<Provider>)] = &[
    ("sensitive-port-world", "sensitive-port-world", None),
    ("world-all-ports", "world-all-ports", None),
    ("world-all-protocols", "world-all-protocols", None),
    ("shadowed-rule", "shadowed-rule", None),
    ("rule-matches-nothing", "rule-matches-nothing", None),
    ("same-priority-conflict", "same-priority-conflict", None),
    ("duplicate-rule", "duplicate-rule", None),
    ("database-group-faces-internet", "database-group-faces-internet", None),
    ("egress-whitelist-without-drop", "egress-whitelist-without-drop", None),
    ("drop-all-above-allows", "drop-all-above-allows", None),
    ("over-large-group", "over-large-group", None),
    ("provider-limit", "provider-alibaba", Some(Provider::Alibaba)),
    ("provider-refuses", "provider-aws", Some(Provider::Aws)),
];

#[test]
fn every_check_fires_on_its_bad_fixture_and_not_on_its_good_one() {
    for &(check, stem, provider) in CHECKS {
        let bad = lint_fixture(&format!("{stem}.bad.toml"), provider);
        assert!(!of_check(&bad, check).is_empty(), "{check} did not fire on {stem}.bad.toml:\n{}", dump(&bad));
        let good = lint_fixture(&format!("{stem}.good.toml"), provider);
        assert!(of_check(&good, check).is_empty(), "{check} fired on {stem}.good.toml:\n{}", dump(&good));
    }
}

#[test]
fn the_example_files_are_clean() {
    for name in ["demo.toml", "guide-use-cases.toml"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name);
        let text = std::fs::read_to_string(&path).expect("example");
        let cfg = parse_str(&text, name).expect("valid example");
        let findings = lint(&cfg, &text, name, &LintOptions::default());
        assert!(findings.is_empty(), "{name}:\n{}", dump(&findings));
    }
}

#[test]
fn findings_name_the_rule_its_line_and_a_fix() {
    let findings = lint_fixture("sensitive-port-world.bad.toml", None);
    let ports = of_check(&findings, "sensitive-port-world");
    assert_eq!(ports.len(), 2, "{}", dump(&findings));
    assert_eq!((ports[0].rule.as_deref(), ports[0].line, ports[0].severity), (Some("sg-web#1"), 5, Severity::Warning));
    assert!(ports[0].message.contains("SSH 22") && ports[0].message.contains("0.0.0.0/0"), "{}", ports[0].message);
    assert_eq!((ports[1].rule.as_deref(), ports[1].line, ports[1].severity), (Some("sg-web#2"), 11, Severity::Error));
    assert!(ports[1].message.contains("MySQL 3306") && ports[1].message.contains("::/0"), "{}", ports[1].message);
    assert!(ports.iter().all(|f| f.group.as_deref() == Some("sg-web") && !f.fix.is_empty()));
}

#[test]
fn shadowing_names_every_shadowing_rule_and_the_intra_group_step() {
    let findings = lint_fixture("shadowed-rule.bad.toml", None);
    let shadowed = of_check(&findings, "shadowed-rule");
    let labels: Vec<(&str, Vec<&str>)> = shadowed
        .iter()
        .map(|f| (f.rule.as_deref().unwrap_or(""), f.related.iter().map(|r| r.label.as_str()).collect()))
        .collect();
    assert_eq!(
        labels,
        vec![("sg-web#3", vec!["sg-web#2"]), ("sg-web#5", vec!["intra-group connectivity of sg-app"])],
        "{}",
        dump(&findings)
    );
    assert!(shadowed.iter().all(|f| f.interface.as_deref() == Some("app0")));
}

#[test]
fn a_rule_covered_only_by_several_rules_together_is_shadowed() {
    // Neither rule 1 (ports 1-100) nor rule 2 (ports 50-200) covers rule 3 (40-150) alone.
    let text = r#"
[[security_group]]
id = "sg-a"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "1/100"
  source = "198.18.0.0/24"
  [[security_group.rule]]
  direction = "ingress"
  policy = "drop"
  protocol = "tcp"
  port_range = "50/200"
  source = "198.18.0.0/23"
  [[security_group.rule]]
  direction = "ingress"
  priority = 3
  protocol = "tcp"
  port_range = "40/150"
  source = "198.18.0.128/25"
  [[security_group.rule]]
  direction = "ingress"
  priority = 3
  protocol = "tcp"
  port_range = "40/150"
  source = "198.18.0.0/22"
"#;
    let cfg = parse_str(text, "t.toml").expect("valid");
    let findings = lint(&cfg, text, "t.toml", &LintOptions::default());
    let shadowed = of_check(&findings, "shadowed-rule");
    assert_eq!(shadowed.len(), 1, "{}", dump(&findings));
    assert_eq!(shadowed[0].rule.as_deref(), Some("sg-a#3"));
    let names: Vec<&str> = shadowed[0].related.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(names, vec!["sg-a#1", "sg-a#2"]);
}

#[test]
fn the_table_of_sensitive_ports_is_ordered_and_well_formed() {
    for pair in ports::SENSITIVE_PORTS.windows(2) {
        assert!(pair[0].first <= pair[1].first, "{:?} before {:?}", pair[0], pair[1]);
    }
    for entry in ports::SENSITIVE_PORTS {
        assert!(entry.first <= entry.last && entry.first > 0 && !entry.protocols.is_empty(), "{entry:?}");
    }
    let services: Vec<&str> = ports::SENSITIVE_PORTS.iter().map(|p| p.service).collect();
    for wanted in [
        "SSH",
        "RDP",
        "Telnet",
        "FTP",
        "SMB",
        "MySQL",
        "MS SQL Server",
        "Oracle",
        "PostgreSQL",
        "Redis",
        "MongoDB",
        "Elasticsearch",
        "Memcached",
    ] {
        assert!(services.contains(&wanted), "{wanted} missing from the table");
    }
}

#[test]
fn rules_for_packets_that_never_reach_the_rules_match_nothing() {
    let text = r#"
[[security_group]]
id = "sg-v6"
members = ["2001:db8::10"]
  [[security_group.rule]]
  direction = "ingress"
  policy = "drop"
  protocol = "icmpv6"
  icmp_type = 135
  source = "::/0"
  [[security_group.rule]]
  direction = "ingress"
  protocol = 51
  source = "2001:db8::/32"
  [[security_group.rule]]
  direction = "ingress"
  protocol = 51
  source = "198.18.0.0/16"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "icmpv6"
  icmp_type = 128
  source = "::/0"
"#;
    let cfg = crate::policy::config::parse_str(text, "v6.toml").expect("valid");
    let findings = lint(&cfg, text, "v6.toml", &LintOptions::default());
    let nothing = of_check(&findings, "rule-matches-nothing");
    let lines: Vec<usize> = nothing.iter().map(|f| f.line).collect();
    assert_eq!(lines, vec![5, 11], "{}", dump(&findings));
    assert!(nothing[0].message.contains("neighbour discovery"), "{}", dump(&findings));
    assert!(nothing[1].message.contains("extension header"), "{}", dump(&findings));
    // Alibaba refuses numbered protocols and ICMP types.
    let findings =
        lint(&cfg, text, "v6.toml", &LintOptions { provider: Some(Provider::Alibaba), ..LintOptions::default() });
    let refused: Vec<usize> = of_check(&findings, "provider-refuses").iter().map(|f| f.line).collect();
    assert_eq!(refused, vec![5, 11, 15, 19], "{}", dump(&findings));
}

/// An interface past one band's rules (the lint alone, not the pool analyses, which take
/// seconds at this size) gets an info finding naming the direction and the bands.
#[test]
fn rules_past_one_band_are_reported_with_their_bands() {
    let file = |n: usize| {
        let rules: String = (0..n)
            .map(|i| {
                format!(
                    "[[security_group.rule]]\ndirection = \"ingress\"\nprotocol = \"tcp\"\nport_range = \"{p}/{p}\"\n\
                     source = \"198.19.0.0/16\"\n",
                    p = i + 1
                )
            })
            .collect();
        format!(
            "[[security_group]]\nid = \"sg-a\"\nmembers = [\"198.18.0.1\"]\n{rules}[[interface]]\nname = \"eth0\"\n\
             security_groups = [\"sg-a\"]\n"
        )
    };
    let found = |n: usize| {
        let cfg = parse_str(&file(n), "bands.toml").unwrap();
        let mut linter = Linter { cfg: &cfg, file: "bands.toml", findings: Vec::new() };
        linter.rules_in_bands();
        linter.findings
    };
    // 16,638 rules and the intra-group and default bits fill one band exactly.
    assert!(found(sg_common::MAX_RULE_BITS - 2).is_empty());
    let over = found(sg_common::MAX_RULE_BITS - 1);
    assert_eq!(over.len(), 1, "{}", dump(&over));
    assert_eq!(
        (over[0].check, over[0].severity, over[0].interface.as_deref()),
        ("rules-in-bands", Severity::Info, Some("eth0"))
    );
    assert!(over[0].message.contains("ingress rules") && over[0].message.contains("2 bands"), "{}", over[0].message);
}
