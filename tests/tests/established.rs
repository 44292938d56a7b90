//! Attaching without cutting live connections: TCP connections established before
//! `sgctl run` starts, with real sockets in namespaces, keep working when the rules admit
//! their opening packet and are cut when they do not.

use std::{net::TcpStream, path::PathBuf, time::Duration};

use sg_tests::{
    agent::sgctl,
    deploy::enforce,
    kernel::kernel_tests_enabled,
    netns::instance_and_outside,
    traffic::{Proto, echo_over},
};

const T: Duration = Duration::from_millis(1500);
/// The instance serves SSH-like sessions on ADMITTED (its ingress rules admit it from
/// `out`) and on REFUSED (no rule).
const ADMITTED: u16 = 2222;
const REFUSED: u16 = 2223;
/// `out` serves on OUTBOUND, the one place the instance's egress rules let it connect to.
const OUTBOUND: u16 = 7777;

/// An advanced group: ingress admits ADMITTED from `out` (IPv4 and IPv6), egress only
/// OUTBOUND to `out`. Advanced defaults drop the rest both ways, so the replies of every
/// connection below need a session.
fn config() -> String {
    format!(
        r#"
[[security_group]]
id = "sg-inst"
type = "advanced"
members = ["198.18.1.1", "2001:db8::1:1"]
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "{ADMITTED}/{ADMITTED}"
  source = "198.18.0.1"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "{ADMITTED}/{ADMITTED}"
  source = "2001:db8::1"
  [[security_group.rule]]
  direction = "egress"
  protocol = "tcp"
  port_range = "{OUTBOUND}/{OUTBOUND}"
  destination = "198.18.0.1"
[[interface]]
name = "inst0"
security_groups = ["sg-inst"]
"#
    )
}

fn write_config(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sgctl-established-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("established.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn connections_open_before_attach_survive_when_admitted_and_are_cut_when_not() {
    if !kernel_tests_enabled("connections_open_before_attach") {
        return;
    }
    let (_lab, inst, out) = instance_and_outside("estab").unwrap();
    let _servers = (
        inst.serve(Proto::Tcp, ADMITTED).unwrap(),
        inst.serve(Proto::Tcp, REFUSED).unwrap(),
        out.serve(Proto::Tcp, OUTBOUND).unwrap(),
    );
    // Opened with no sgctl in the way, each used once.
    let mut streams: Vec<(&str, TcpStream)> = vec![
        ("ssh over IPv4", out.connect(inst.ipv4.into(), ADMITTED, T).unwrap()),
        ("ssh over IPv6", out.connect(inst.ipv6.into(), ADMITTED, T).unwrap()),
        ("the instance's own", inst.connect(out.ipv4.into(), OUTBOUND, T).unwrap()),
        ("not admitted", out.connect(inst.ipv4.into(), REFUSED, T).unwrap()),
    ];
    for (what, stream) in &mut streams {
        assert!(echo_over(stream, b"before"), "{what}: echo before sgctl runs");
    }

    let agent = enforce(&inst, &write_config(&config()), &[]).unwrap();
    let report = agent.seen.iter().find(|l| l.contains("established TCP"));
    assert!(
        report.is_some_and(
            |l| l.contains("inst0: 3 established TCP connections entered as sessions, 1 left to the rules")
        ),
        "the agent reports what it did with them: {:#?}",
        agent.seen
    );
    let (refused, admitted) = streams.split_last_mut().unwrap();
    for (what, stream) in admitted {
        for round in 0..3 {
            assert!(echo_over(stream, format!("after attach {round}").as_bytes()), "{what}: cut by attaching");
        }
    }
    assert!(!echo_over(&mut refused.1, b"after attach"), "a connection the rules do not admit is cut");

    let listed = sgctl(&inst, &["sessions", "--json", "--iface", "inst0"]);
    let sessions: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("sessions json");
    let sessions = sessions.as_array().expect("a JSON array");
    let find = |responder: &str| sessions.iter().find(|s| s["responder"] == responder);
    for (responder, opened) in [
        (format!("198.18.1.1:{ADMITTED}"), "ingress"),
        (format!("[2001:db8::1:1]:{ADMITTED}"), "ingress"),
        (format!("198.18.0.1:{OUTBOUND}"), "egress"),
    ] {
        let session = find(&responder).unwrap_or_else(|| panic!("no session to {responder}: {sessions:#?}"));
        assert_eq!(session["state"], "established", "{session}");
        assert_eq!(session["opened"], opened, "{session}");
        assert!(session["rule_handle"].as_u64().is_some_and(|id| id != 0), "the admitting rule is named: {session}");
        assert!(session["packets"].as_u64().is_some_and(|n| n >= 3), "the echoes went by session: {session}");
    }
    assert!(find(&format!("198.18.1.1:{REFUSED}")).is_none(), "no session for the refused one: {sessions:#?}");
}
