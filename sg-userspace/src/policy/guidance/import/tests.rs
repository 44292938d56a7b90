//! Import fixtures (shaped like the providers' documented responses), refusals naming
//! the field, and round trips through export and back, checked with `diff`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::Value;

use super::alibaba::Options;
use super::*;
use crate::policy::config::{Config, GroupKind, Peer, parse_str};
use crate::policy::guidance::diff::diff;
use crate::policy::guidance::export;

fn fixture_path(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/guidance/import").join(name).display().to_string()
}

fn inputs(names: &[&str]) -> Vec<(String, Vec<Value>)> {
    names.iter().map(|n| (n.to_string(), read_values(&fixture_path(n)).expect("fixture"))).collect()
}

fn members(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<IpAddr>> {
    pairs.iter().map(|(g, m)| (g.to_string(), m.iter().map(|a| a.parse().expect("addr")).collect())).collect()
}

fn refused(result: Result<(String, Vec<Problem>), ImportError>) -> Vec<Problem> {
    match result {
        Err(ImportError::Refused(problems)) => problems,
        Ok((text, _)) => panic!("should have been refused:\n{text}"),
        Err(e) => panic!("refused for another reason: {e}"),
    }
}

fn has(problems: &[Problem], severity: ProblemKind, location_end: &str, words: &str) -> bool {
    problems.iter().any(|p| p.severity == severity && p.location.ends_with(location_end) && p.message.contains(words))
}

fn rule_lines(cfg: &Config) -> Vec<String> {
    cfg.rules()
        .map(|r| {
            let peer = match &r.peer {
                Peer::Group { group_index } => format!("group {}", cfg.groups[*group_index].id),
                other => other.describe(cfg),
            };
            format!(
                "{} {} {} {} {} {:?} {peer} {:?} {:?}",
                cfg.groups[r.group_index].id,
                r.direction,
                r.action,
                r.priority,
                r.protocol,
                (r.port_range, r.source_port_range),
                r.local,
                r.description
            )
        })
        .collect()
}

#[test]
fn alibaba_responses_import_with_pages_precedence_and_placeholders() {
    let options = Options {
        kind: GroupKind::Basic,
        kinds: BTreeMap::new(),
        members: members(&[("sg-web", &["198.18.0.10", "198.18.0.11"]), ("sg-db", &["198.18.1.20"])]),
        interface: Some("eth0".into()),
    };
    let (text, problems) =
        alibaba::import(&inputs(&["alibaba-web.json", "alibaba-db.json"]), &options).expect("imports");
    let cfg = parse_str(&text, "imported.toml").expect("validates");
    let web = cfg.group("sg-web").expect("sg-web");
    // Both pages of sg-web: 3 + 4 permissions.
    assert_eq!(web.rules.len(), 7, "{text}");
    assert_eq!(web.inner_access, Action::Accept);
    // Priority as a string, DestCidrIp narrowing the local address on ingress.
    let ssh = &web.rules[2];
    assert_eq!((ssh.priority, ssh.local.map(|n| n.to_string())), (5, Some("198.18.0.10/32".to_string())));
    // Enums in any case: "INGRESS", "accept", "tcp".
    assert_eq!(web.rules[1].peer, Peer::Cidr("::/0".parse().expect("net")));
    // A CIDR over a group: the group is ignored, with a warning.
    assert_eq!(web.rules[6].peer, Peer::Cidr("198.19.7.0/24".parse().expect("net")));
    assert!(has(&problems, ProblemKind::Warning, "Permission[7].SourceGroupId", "precedence"));
    // Unresolved references become placeholders, reported.
    assert!(has(&problems, ProblemKind::Warning, "Permission[2].SourceGroupId", "sg-reporting"));
    let reporting = cfg.group("sg-reporting").expect("placeholder");
    assert_eq!((reporting.owner.as_deref(), reporting.members.len()), (Some("160998252992"), 0));
    assert!(has(&problems, ProblemKind::Warning, "Permission[6].DestPrefixListId", "placeholder"));
    assert!(cfg.prefix_lists.iter().any(|l| l.id == "pl-resolvers" && l.entries.is_empty()));
    // Unknown fields are reported, and written into the file as comments.
    assert!(has(&problems, ProblemKind::Warning, "Permission[3].Labels", "unknown field"));
    assert!(text.contains("# ") && text.contains("Labels: unknown field"));
    assert_eq!(cfg.group("sg-db").expect("sg-db").inner_access, Action::Drop);
    assert_eq!(cfg.interface("eth0").expect("eth0").groups.len(), 2);
}

#[test]
fn alibaba_refuses_what_the_model_cannot_express_naming_the_field() {
    let options = Options { kind: GroupKind::Basic, kinds: BTreeMap::new(), members: BTreeMap::new(), interface: None };
    let problems = refused(alibaba::import(&inputs(&["alibaba-unsupported.json"]), &options));
    assert!(has(&problems, ProblemKind::Error, "Permission[1].PortRangeListId", "port lists"), "{problems:#?}");
    assert!(has(&problems, ProblemKind::Error, "Permission[2].Priority", "1 to 100"));
    assert!(has(&problems, ProblemKind::Error, "Permission[2].IpProtocol", "sctp"));
    assert!(has(&problems, ProblemKind::Error, "Permission[2].IpProtocol", "would widen it"));
    assert!(has(&problems, ProblemKind::Error, "Permission[3].Ipv6SourceCidrIp", "ipv4 only"));
}

#[test]
fn alibaba_egress_source_cidr_narrows_the_local_address_exactly() {
    let options = Options {
        kind: GroupKind::Basic,
        kinds: BTreeMap::new(),
        members: members(&[("sg-out", &["198.18.0.10", "2001:db8::10"])]),
        interface: Some("eth0".into()),
    };
    let (text, problems) = alibaba::import(&inputs(&["alibaba-egress-local.json"]), &options).expect("imports");
    assert!(!problems.iter().any(|p| p.severity == ProblemKind::Error), "{problems:#?}");
    assert!(text.contains("source = \"198.18.0.10\""), "{text}");
    let cfg = parse_str(&text, "imported.toml").expect("validates");
    let out = cfg.group("sg-out").expect("sg-out");
    let locals: Vec<_> = out.rules.iter().map(|r| (r.direction, r.local.map(|n| n.to_string()))).collect();
    assert_eq!(
        locals,
        [
            (Direction::Egress, Some("198.18.0.10/32".to_string())),
            (Direction::Egress, Some("2001:db8::10/128".to_string()))
        ]
    );
    // And back: the export writes SourceCidrIp / Ipv6SourceCidrIp again.
    let exported = export::alibaba(&cfg, "imported.toml").expect("exports");
    let json = serde_json::to_string(&exported.document).expect("json");
    assert!(json.contains("\"SourceCidrIp\":\"198.18.0.10/32\""), "{json}");
    assert!(json.contains("\"Ipv6SourceCidrIp\":\"2001:db8::10/128\""), "{json}");
}

#[test]
fn alibaba_type_advanced_with_intra_group_accept_is_refused() {
    let options =
        Options { kind: GroupKind::Advanced, kinds: BTreeMap::new(), members: BTreeMap::new(), interface: None };
    let problems = refused(alibaba::import(&inputs(&["alibaba-web.json"]), &options));
    assert!(has(&problems, ProblemKind::Error, "sg-web: InnerAccessPolicy", "advanced"));
}

#[test]
fn aws_output_imports_with_union_semantics_and_self_references() {
    let options = aws::Options {
        members: members(&[("sg-0web", &["198.18.0.10", "2001:db8::10"]), ("sg-0db", &["198.18.1.20"])]),
        interface: Some("eth0".into()),
    };
    let (text, problems) = aws::import(&inputs(&["aws-groups.json"]), &options).expect("imports");
    let cfg = parse_str(&text, "imported.toml").expect("validates");
    let web = cfg.group("sg-0web").expect("sg-0web");
    assert!(web.rules.iter().all(|r| r.action == Action::Accept && r.priority == 1), "{text}");
    assert_eq!(web.inner_access, Action::Drop);
    // The self-reference points at a companion holding the same members.
    let companion = cfg.group("sg-0web-members").expect("companion");
    assert_eq!(companion.members, web.members);
    assert!(web.rules.iter().any(|r| r.protocol == crate::policy::config::Protocol::All
        && matches!(r.peer, Peer::Group { group_index } if cfg.groups[group_index].id == "sg-0web-members")));
    // Another account's group: ACCOUNT/GROUP with a placeholder owned by that account.
    assert_eq!(cfg.group("sg-0lb").and_then(|g| g.owner.as_deref()), Some("444455556666"));
    assert!(has(&problems, ProblemKind::Warning, "UserIdGroupPairs[1].GroupId", "sg-0lb"));
    // No egress rules: no egress (a drop-all per family below the accepts).
    let db = cfg.group("sg-0db").expect("sg-0db");
    let drops: Vec<_> = db.rules.iter().filter(|r| r.action == Action::Drop).collect();
    assert_eq!(drops.len(), 2);
    assert!(drops.iter().all(|r| r.priority == 100 && r.direction == crate::policy::config::Direction::Egress));
    // sg-0web allows all egress: no drop-all.
    assert!(web.rules.iter().all(|r| r.action == Action::Accept));
    // Tags, VpcId, SecurityGroupArn are known and carry no matching meaning: no warning.
    assert!(!problems.iter().any(|p| p.message.contains("unknown field")), "{problems:#?}");
}

#[test]
fn aws_icmp_types_and_protocol_numbers_import_exactly() {
    use crate::policy::config::{Direction, IcmpMatch, Protocol};
    use crate::policy::eval::{PacketTuple, evaluate};
    let input = inputs(&["aws-icmp-numbers.json"]);
    let options = aws::Options { members: members(&[("sg-0odd", &["198.18.0.10", "2001:db8::10"])]), interface: None };
    let (text, problems) = aws::import(&input, &options).expect("imports");
    assert!(has(&problems, ProblemKind::Warning, "sg-0odd.FutureField", "unknown field"), "{problems:#?}");
    let cfg = parse_str(&text, "imported.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let ingress: Vec<(Protocol, Option<IcmpMatch>)> =
        cfg.rules().filter(|r| r.direction == Direction::Ingress).map(|r| (r.protocol, r.icmp())).collect();
    let icmp = |icmp_type, code| Some(IcmpMatch { icmp_type, code });
    assert_eq!(
        ingress,
        vec![
            (Protocol::Icmp, icmp(8, Some(0))),
            (Protocol::Number(50), None),
            (Protocol::Icmpv6, icmp(128, None)),
            (Protocol::Tcp, None),
            (Protocol::Icmp, icmp(3, None)),
            (Protocol::Number(132), None),
            (Protocol::Icmp, None),
        ],
        "{text}"
    );
    // "Echo request only" stays that: the reply, and any other type, is not admitted.
    let text = text + "\n[[interface]]\nname = \"eth0\"\nsecurity_groups = [\"sg-0odd\"]\n";
    let cfg = parse_str(&text, "bound.toml").expect("validates");
    let iface = &cfg.interfaces[0];
    let verdict = |src: &str, icmp_type, code| {
        let packet =
            PacketTuple::icmp(src.parse().expect("addr"), "198.18.0.10".parse().expect("addr"), icmp_type, code);
        evaluate(&cfg, iface, Direction::Ingress, &packet).action
    };
    assert_eq!(verdict("198.19.7.1", 8, 0), Action::Accept);
    assert_eq!(verdict("198.19.7.1", 0, 0), Action::Drop);
    assert_eq!(verdict("198.19.7.1", 8, 1), Action::Drop);
    assert_eq!(verdict("198.19.11.1", 0, 0), Action::Accept);
    assert_eq!(verdict("203.0.113.1", 3, 4), Action::Accept);
    assert_eq!(verdict("203.0.113.1", 11, 0), Action::Drop);
    let esp = PacketTuple {
        src: "198.19.8.1".parse().expect("addr"),
        dst: "198.18.0.10".parse().expect("addr"),
        protocol: 50,
        src_port: 0,
        dst_port: 0,
    };
    assert_eq!(evaluate(&cfg, iface, Direction::Ingress, &esp).action, Action::Accept);
    assert_eq!(evaluate(&cfg, iface, Direction::Ingress, &PacketTuple { protocol: 51, ..esp }).action, Action::Drop);
    // Exported back, every permission is the one imported (the protocol names and
    // numbers as AWS reports them normalised: "6" is "tcp").
    let exported = export::aws(&cfg, "bound.toml").expect("exports");
    let permissions: Vec<String> = exported.document["SecurityGroups"][0]["IpPermissions"]
        .as_array()
        .expect("permissions")
        .iter()
        .map(|p| format!("{} {} {}", p["IpProtocol"], p["FromPort"], p["ToPort"]))
        .collect();
    assert_eq!(
        permissions,
        [
            "\"icmp\" 8 0",
            "\"50\" null null",
            "\"icmpv6\" 128 -1",
            "\"tcp\" 22 22",
            "\"icmp\" 3 -1",
            "\"132\" null null",
            "\"icmp\" -1 -1"
        ]
    );
    let (again, _) = aws::import(&[("exported.json".into(), vec![exported.document])], &options).expect("re-imports");
    let again = parse_str(&(again + &interfaces_text(&cfg)), "again.toml").expect("validates");
    let report = diff(&cfg, &again, None).expect("diff");
    assert!(!report.changed(), "{}", crate::policy::guidance::diff::to_text(&report, &cfg, &again));
}

#[test]
fn aws_icmp_types_and_protocols_out_of_range_are_refused_not_widened() {
    let problems = refused(aws::import(&inputs(&["aws-unsupported.json"]), &aws::Options::default()));
    assert!(has(&problems, ProblemKind::Error, "IpPermissions[1].FromPort", "ICMP type 300"), "{problems:#?}");
    assert!(has(&problems, ProblemKind::Error, "IpPermissions[2].IpProtocol", "`256`"), "{problems:#?}");
    assert!(has(&problems, ProblemKind::Error, "IpPermissions[3].IpProtocol", "`esp`"), "{problems:#?}");
    assert!(has(&problems, ProblemKind::Error, "IpPermissions[4].ToPort", "needs a type"), "{problems:#?}");
}

#[test]
fn alibaba_export_refuses_protocol_numbers_and_icmp_types() {
    let text = r#"
[[security_group]]
id = "sg-x"
members = ["198.18.0.10"]
  [[security_group.rule]]
  direction = "ingress"
  protocol = 50
  source = "198.19.8.0/24"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "icmp"
  icmp_type = 8
  source = "0.0.0.0/0"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "icmp"
  source = "0.0.0.0/0"
"#;
    let cfg = parse_str(text, "x.toml").expect("valid");
    let Err(export::ExportError::Refused(refusals)) = export::alibaba(&cfg, "x.toml") else { panic!("exported") };
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(refusals[0].contains("x.toml:5: rule sg-x#1") && refusals[0].contains("not protocol 50"), "{refusals:?}");
    assert!(refusals[1].contains("x.toml:9: rule sg-x#2") && refusals[1].contains("ICMP type or code (type 8)"));
}

/// The original's interfaces, written after an imported file so both bind the same groups.
fn interfaces_text(cfg: &Config) -> String {
    let mut out = String::new();
    for iface in &cfg.interfaces {
        let groups: Vec<String> = iface.groups.iter().map(|&g| format!("\"{}\"", cfg.groups[g].id)).collect();
        out.push_str(&format!(
            "\n[[interface]]\nname = \"{}\"\nsecurity_groups = [{}]\nmode = \"{}\"\n",
            iface.name,
            groups.join(", "),
            iface.mode
        ));
    }
    out
}

/// The entries of prefix lists (not part of provider responses) given back to placeholders.
fn restore_lists(text: &str, cfg: &Config) -> String {
    let mut text = text.to_string();
    for list in &cfg.prefix_lists {
        let placeholder = format!("id = \"{}\"\nfamily = \"{}\"\nentries = []", list.id, list.family);
        let entries: Vec<String> = list.entries.iter().map(|e| format!("\"{e}\"")).collect();
        let real = format!("id = \"{}\"\nfamily = \"{}\"\nentries = [{}]", list.id, list.family, entries.join(", "));
        text = text.replace(&placeholder, &real);
    }
    text
}

fn members_of(cfg: &Config) -> BTreeMap<String, Vec<IpAddr>> {
    cfg.groups.iter().map(|g| (g.id.clone(), g.members.clone())).collect()
}

fn load_example(path: &str) -> Config {
    let text = std::fs::read_to_string(path).expect("file");
    parse_str(&text, path).expect("valid")
}

#[test]
fn alibaba_round_trips_the_examples_exactly() {
    for name in [
        "../examples/demo.toml",
        "../examples/guide-use-cases.toml",
        "tests/fixtures/guidance/import/aws-roundtrip.toml",
    ] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name).display().to_string();
        let original = load_example(&path);
        let exported = export::alibaba(&original, &path).expect("exports");
        let options =
            Options { kind: GroupKind::Basic, kinds: BTreeMap::new(), members: members_of(&original), interface: None };
        let (text, _) = alibaba::import(
            &[("exported.json".into(), parse_values(&exported.document.to_string(), "x").expect("json"))],
            &options,
        )
        .expect("re-imports");
        let text = restore_lists(&text, &original) + &interfaces_text(&original);
        let back = parse_str(&text, "back.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(rule_lines(&back), rule_lines(&original), "{name}");
        for (a, b) in original.groups.iter().zip(&back.groups) {
            assert_eq!((&a.id, a.kind, a.inner_access, &a.members), (&b.id, b.kind, b.inner_access, &b.members));
        }
        let report = diff(&original, &back, None).expect("diff");
        assert!(!report.changed(), "{name}: {}", crate::policy::guidance::diff::to_text(&report, &original, &back));
    }
}

#[test]
fn aws_output_round_trips_through_a_rule_file() {
    let input = inputs(&["aws-groups.json"]);
    let options = aws::Options {
        members: members(&[("sg-0web", &["198.18.0.10", "2001:db8::10"]), ("sg-0db", &["198.18.1.20"])]),
        interface: None,
    };
    let (text, _) = aws::import(&input, &options).expect("imports");
    let cfg = parse_str(&text, "imported.toml").expect("validates");
    let exported = export::aws(&cfg, "imported.toml").expect("exports");
    let flatten = |doc: &Value, only: &[&str]| -> Vec<String> {
        let mut out = Vec::new();
        for group in doc["SecurityGroups"].as_array().into_iter().flatten() {
            let id = group["GroupId"].as_str().unwrap_or("");
            if !only.contains(&id) {
                continue;
            }
            for key in ["IpPermissions", "IpPermissionsEgress"] {
                for p in group[key].as_array().into_iter().flatten() {
                    let head = format!("{id} {key} {} {} {}", p["IpProtocol"], p["FromPort"], p["ToPort"]);
                    for peers in ["IpRanges", "Ipv6Ranges", "PrefixListIds", "UserIdGroupPairs"] {
                        for peer in p[peers].as_array().into_iter().flatten() {
                            let mut peer = peer.clone();
                            if let Some(o) = peer.as_object_mut() {
                                o.remove("GroupName");
                                o.remove("VpcId");
                            }
                            out.push(format!("{head} {peers} {peer}"));
                        }
                    }
                }
            }
        }
        out.sort();
        out
    };
    let ids = ["sg-0web", "sg-0db"];
    assert_eq!(flatten(&exported.document, &ids), flatten(&input[0].1[0], &ids));
}

#[test]
fn accept_only_rule_files_round_trip_through_aws_with_equal_verdicts() {
    let path = fixture_path("aws-roundtrip.toml");
    let original = load_example(&path);
    let exported = export::aws(&original, &path).expect("exports");
    let options = aws::Options { members: members_of(&original), interface: None };
    let (text, _) = aws::import(&[("exported.json".into(), vec![exported.document])], &options).expect("re-imports");
    let text = restore_lists(&text, &original) + &interfaces_text(&original);
    let back = parse_str(&text, "back.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let report = diff(&original, &back, None).expect("diff");
    assert!(!report.changed(), "{}\n{text}", crate::policy::guidance::diff::to_text(&report, &original, &back));
}

#[test]
fn export_refuses_what_the_provider_cannot_express() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/guide-use-cases.toml").display().to_string();
    let cfg = load_example(&path);
    let Err(export::ExportError::Refused(refusals)) = export::aws(&cfg, &path) else { panic!("drops exported to AWS") };
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(refusals[0].contains(":62: rule sg-database#2") && refusals[0].contains("no drop rules"), "{refusals:?}");
    // The validator refuses group references in or to advanced groups; a Config built
    // another way is still refused by the exporter.
    let referencing = r#"
[[security_group]]
id = "sg-a"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "22/22"
  source_group = "sg-b"
[[security_group]]
id = "sg-b"
members = ["198.18.0.1"]
"#;
    let mut cfg = parse_str(referencing, "adv.toml").expect("valid");
    for group in &mut cfg.groups {
        group.kind = crate::policy::config::GroupKind::Advanced;
        group.inner_access = crate::policy::config::Action::Drop;
    }
    let Err(export::ExportError::Refused(refusals)) = export::alibaba(&cfg, "adv.toml") else { panic!("exported") };
    assert!(refusals[0].contains("advanced groups cannot reference"), "{refusals:?}");
    let isolating = "[[security_group]]\nid = \"sg-i\"\ninner_access_policy = \"drop\"\nmembers = [\"198.18.0.1\"]\n";
    let mixed = std::fs::read_to_string(fixture_path("aws-roundtrip.toml")).expect("fixture")
        + "\n[[interface]]\nname = \"both0\"\nsecurity_groups = [\"sg-web\", \"sg-office\"]\n";
    let cfg = parse_str(&mixed, "mixed.toml").expect("valid");
    let Err(export::ExportError::Refused(refusals)) = export::aws(&cfg, "mixed.toml") else { panic!("exported") };
    assert!(refusals.iter().any(|r| r.contains("interface both0") && r.contains("opens it")), "{refusals:?}");
    let cfg = parse_str(isolating, "iso.toml").expect("valid");
    assert!(export::aws(&cfg, "iso.toml").is_err(), "egress isolation is not expressible with AWS's allow-all egress");
}

#[test]
fn alibaba_members_and_types_come_from_context_responses() {
    let mut context = context::Context::default();
    let mut problems = Problems::default();
    for name in ["alibaba-nics.json", "alibaba-groups.json"] {
        context::read(name, &read_values(&fixture_path(name)).expect("fixture"), &mut context, &mut problems);
    }
    assert!(!problems.has_errors(), "{:?}", problems.list);
    let options = Options { kind: GroupKind::Basic, kinds: context.kinds, members: context.members, interface: None };
    let (text, _) = alibaba::import(&inputs(&["alibaba-web.json", "alibaba-db.json"]), &options).expect("imports");
    let cfg = parse_str(&text, "imported.toml").expect("validates");
    let web = cfg.group("sg-web").expect("sg-web");
    let addrs: Vec<IpAddr> = ["198.18.0.10", "198.18.0.12", "2001:db8::10", "198.18.0.11"]
        .iter()
        .map(|a| a.parse().expect("addr"))
        .collect();
    assert_eq!(web.members, addrs);
    assert_eq!(cfg.group("sg-db").map(|g| (g.kind, g.members.len())), Some((GroupKind::Basic, 1)));
    // An enterprise group is advanced; its InnerAccessPolicy Accept is then refused.
    let mut kinds = BTreeMap::new();
    kinds.insert("sg-web".to_string(), GroupKind::Advanced);
    let options = Options { kind: GroupKind::Basic, kinds, members: BTreeMap::new(), interface: None };
    let problems = refused(alibaba::import(&inputs(&["alibaba-web.json"]), &options));
    assert!(has(&problems, ProblemKind::Error, "sg-web: InnerAccessPolicy", "advanced"));
}
