//! Scenarios beyond the guide's use cases, with real sockets in namespaces: the ingress
//! and egress defaults of basic and advanced groups, intra-group connectivity and
//! isolation, IPv6, and one host with two interfaces in different groups.
//!
//! Without sessions a reply is classified like any packet, so these scenarios observe
//! one-way UDP (a sink counts what arrives) where a reply could be dropped by design.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use sg_tests::{
    deploy::enforce,
    kernel::kernel_tests_enabled,
    netns::{Host, Lab},
    traffic::Proto,
};

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sgctl-scenarios-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// An instance `inst` (NIC inst0, 198.18.1.1), a fellow group member `peer`
/// (198.18.1.2) and an outsider `out` (198.18.0.1).
fn trio(tag: &str) -> (Lab, Host, Host, Host) {
    let mut lab = Lab::new(tag).unwrap();
    let inst = lab.add_host_on("inst", "inst0", Ipv4Addr::new(198, 18, 1, 1), v6("2001:db8::1:1")).unwrap();
    let peer = lab.add_host("peer", Ipv4Addr::new(198, 18, 1, 2), v6("2001:db8::1:2")).unwrap();
    let out = lab.add_host("out", Ipv4Addr::new(198, 18, 0, 1), v6("2001:db8::1")).unwrap();
    lab.resolve_neighbours().unwrap();
    (lab, inst, peer, out)
}

fn group_config(kind: &str, inner: Option<&str>, rules: &str) -> String {
    let inner = inner.map(|p| format!("inner_access_policy = \"{p}\"\n")).unwrap_or_default();
    format!(
        r#"
[[security_group]]
id = "sg-x"
type = "{kind}"
{inner}members = ["198.18.1.1", "198.18.1.2", "2001:db8::1:1", "2001:db8::1:2"]
{rules}
[[interface]]
name = "inst0"
security_groups = ["sg-x"]
"#
    )
}

const ALLOW_UDP_7777: &str = r#"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "udp"
  port_range = "7777/7777"
  source = "0.0.0.0/0"
"#;

#[test]
fn basic_and_advanced_defaults_in_both_directions() {
    if !kernel_tests_enabled("basic_and_advanced_defaults_in_both_directions") {
        return;
    }
    for (kind, egress_default_passes) in [("basic", true), ("advanced", false)] {
        let (_lab, inst, _peer, out) = trio(&format!("def{kind}"));
        let config = write_config(&format!("defaults-{kind}.toml"), &group_config(kind, None, ALLOW_UDP_7777));
        let _agent = enforce(&inst, &config, &[]).unwrap();
        let (in_allowed, in_other, out_sink) =
            (inst.sink(7777).unwrap(), inst.sink(9999).unwrap(), out.sink(9999).unwrap());
        assert!(out.delivers(&in_allowed, inst.ipv4.into(), 7777), "{kind}: ingress allowed by a rule");
        assert!(!out.delivers(&in_other, inst.ipv4.into(), 9999), "{kind}: ingress default must drop");
        assert_eq!(inst.delivers(&out_sink, out.ipv4.into(), 9999), egress_default_passes, "{kind}: egress default");
    }
}

#[test]
fn intra_group_accept_isolation_and_rules_above_isolation() {
    if !kernel_tests_enabled("intra_group_accept_isolation_and_rules_above_isolation") {
        return;
    }
    let admit_peer = r#"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "udp"
  port_range = "5000/5000"
  source = "198.18.1.2"
"#;
    // (label, type, inner policy, rules, peer -> 5000 delivered, peer -> 6000 delivered)
    let cases = [
        ("basic-accept", "basic", None, "", true, true),
        ("basic-drop", "basic", Some("drop"), "", false, false),
        ("advanced", "advanced", None, "", false, false),
        ("advanced-rule", "advanced", None, admit_peer, true, false),
        ("basic-drop-rule", "basic", Some("drop"), admit_peer, true, false),
    ];
    for (label, kind, inner, rules, to_5000, to_6000) in cases {
        let (_lab, inst, peer, out) = trio(label);
        let config = write_config(&format!("intra-{label}.toml"), &group_config(kind, inner, rules));
        let _agent = enforce(&inst, &config, &[]).unwrap();
        let (s5000, s6000) = (inst.sink(5000).unwrap(), inst.sink(6000).unwrap());
        assert_eq!(peer.delivers(&s5000, inst.ipv4.into(), 5000), to_5000, "{label}: member -> 5000");
        assert_eq!(peer.delivers(&s6000, inst.ipv4.into(), 6000), to_6000, "{label}: member -> 6000");
        assert!(!out.delivers(&s6000, inst.ipv4.into(), 6000), "{label}: outsider");
    }
}

#[test]
fn ipv6_rules_and_icmpv6() {
    if !kernel_tests_enabled("ipv6_rules_and_icmpv6") {
        return;
    }
    let (_lab, inst, peer, out) = trio("ipv6");
    let rules = r#"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "8080/8080"
  source = "2001:db8::/120"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "icmpv6"
  source = "2001:db8::1"
  [[security_group.rule]]
  direction = "ingress"
  policy = "drop"
  protocol = "all"
  source = "2001:db8::1:2"
"#;
    let config = write_config("ipv6.toml", &group_config("basic", Some("drop"), rules));
    let _agent = enforce(&inst, &config, &[]).unwrap();
    let _web = inst.serve(Proto::Tcp, 8080).unwrap();
    let t = std::time::Duration::from_millis(1500);
    assert!(out.reaches(Proto::Tcp, inst.ipv6.into(), 8080, t), "v6 tcp from the allowed /120");
    assert!(!out.reaches(Proto::Tcp, inst.ipv4.into(), 8080, t), "the IPv6 rule must not admit IPv4");
    assert!(out.ping(inst.ipv6.into()), "icmpv6 from the allowed client");
    assert!(!peer.ping(inst.ipv6.into()), "icmpv6 from the member dropped by a rule");
    assert!(!peer.reaches(Proto::Tcp, inst.ipv6.into(), 8080, t), "peer is outside the /120 and dropped");
}

#[test]
fn one_host_two_interfaces_with_different_groups() {
    if !kernel_tests_enabled("one_host_two_interfaces_with_different_groups") {
        return;
    }
    let mut lab = Lab::new("twoif").unwrap();
    let front = lab.add_host_on("inst", "front0", Ipv4Addr::new(198, 18, 1, 1), v6("2001:db8::1:1")).unwrap();
    let back = lab.add_interface(&front, "back0", Ipv4Addr::new(198, 18, 2, 1), v6("2001:db8::2:1")).unwrap();
    let client = lab.add_host("client", Ipv4Addr::new(198, 18, 0, 1), v6("2001:db8::1")).unwrap();
    lab.resolve_neighbours().unwrap();
    let config = write_config(
        "two-interfaces.toml",
        r#"
[[security_group]]
id = "sg-front"
members = ["198.18.1.1"]
  [[security_group.rule]]
  direction = "ingress"
  protocol = "udp"
  port_range = "80/80"
  source = "0.0.0.0/0"

[[security_group]]
id = "sg-back"
members = ["198.18.2.1"]
  [[security_group.rule]]
  direction = "ingress"
  protocol = "udp"
  port_range = "3306/3306"
  source = "198.18.0.1"

[[interface]]
name = "front0"
security_groups = ["sg-front"]

[[interface]]
name = "back0"
security_groups = ["sg-back"]
"#,
    );
    let agent = enforce(&front, &config, &[]).unwrap();
    assert!(
        agent.seen.iter().any(|l| l.contains("enforcing on front0"))
            && agent.seen.iter().any(|l| l.contains("enforcing on back0"))
    );
    let (s80, s3306) = (front.sink(80).unwrap(), front.sink(3306).unwrap());
    assert!(client.delivers(&s80, front.ipv4.into(), 80), "front0 admits 80");
    assert!(!client.delivers(&s3306, front.ipv4.into(), 3306), "front0 does not admit 3306");
    assert!(client.delivers(&s3306, back.ipv4.into(), 3306), "back0 admits 3306 from the client");
    assert!(!client.delivers(&s80, back.ipv4.into(), 80), "back0 does not admit 80");
}
