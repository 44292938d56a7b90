//! Sessions with real sockets in namespaces: replies of admitted flows pass whatever the
//! other direction's rules say; unsolicited traffic does not; a long-lived stream
//! survives reloads and is cut when its rule goes; idle timeouts; fragmented datagrams.

use std::{path::PathBuf, time::Duration};

use sg_tests::{
    agent::{Agent, sgctl},
    deploy::enforce,
    kernel::kernel_tests_enabled,
    netns::{Host, Lab, instance_and_outside},
    traffic::{Proto, echo_over},
};

const T: Duration = Duration::from_millis(1500);

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sgctl-sessions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn pair(tag: &str) -> (Lab, Host, Host) {
    instance_and_outside(tag).unwrap()
}

fn config(kind: &str, rules: &str, sessions: &str) -> String {
    format!(
        r#"
[[security_group]]
id = "sg-inst"
type = "{kind}"
members = ["198.18.1.1", "2001:db8::1:1"]
{rules}
[[interface]]
name = "inst0"
security_groups = ["sg-inst"]
{sessions}
"#
    )
}

fn rule(direction: &str, protocol: &str, ports: &str, peer: &str) -> String {
    let peer_field = if direction == "ingress" { "source" } else { "destination" };
    let ports = if ports.is_empty() { String::new() } else { format!("port_range = \"{ports}\"\n") };
    format!(
        "  [[security_group.rule]]\n  direction = \"{direction}\"\n  protocol = \"{protocol}\"\n  {ports}  {peer_field} = \"{peer}\"\n"
    )
}

#[test]
fn basic_group_outbound_tcp_udp_and_ping_get_replies_unsolicited_inbound_does_not() {
    if !kernel_tests_enabled("basic_outbound_replies") {
        return;
    }
    let (_lab, inst, out) = pair("basicout");
    // No ingress rule at all: basic ingress default drops, egress default accepts. Closed
    // TCP sessions are kept 60 s instead of the default 3 s, so the listing below still
    // shows the first (IPv4) connection.
    let cfg = write_config("basic-out.toml", &config("basic", "", "[sessions]\ntcp_closing = 60\n"));
    let _agent = enforce(&inst, &cfg, &[]).unwrap();
    let (_tcp, _udp, _inbound) = (
        out.serve(Proto::Tcp, 8080).unwrap(),
        out.serve(Proto::Udp, 53).unwrap(),
        inst.serve(Proto::Tcp, 8080).unwrap(),
    );
    for v6 in [false, true] {
        inst.probe(Proto::Tcp, out.addr(v6), 8080, T).unwrap_or_else(|e| panic!("outbound tcp (v6 {v6}): {e:#}"));
        inst.probe(Proto::Udp, out.addr(v6), 53, T)
            .unwrap_or_else(|e| panic!("outbound DNS-like udp (v6 {v6}): {e:#}"));
        assert!(inst.ping(out.addr(v6)), "ping replies come back (v6 {v6})");
        assert!(!out.reaches(Proto::Tcp, inst.addr(v6), 8080, T), "unsolicited inbound tcp (v6 {v6})");
        assert!(!out.ping(inst.addr(v6)), "unsolicited inbound ping (v6 {v6})");
    }
    // `sgctl sessions` lists them; `--flush` clears them.
    let listed: serde_json::Value =
        serde_json::from_slice(&sgctl(&inst, &["sessions", "--json", "--iface", "inst0"]).stdout).unwrap();
    let listed = listed.as_array().expect("a JSON array");
    assert!(listed.iter().any(|s| s["responder"] == "198.18.0.1:8080" && s["opened"] == "egress"), "{listed:?}");
    assert!(listed.iter().any(|s| s["state"] == "udp-replied"), "{listed:?}");
    let flushed = sgctl(&inst, &["sessions", "--flush"]);
    assert!(String::from_utf8_lossy(&flushed.stdout).starts_with("flushed "), "{flushed:?}");
    let after: serde_json::Value = serde_json::from_slice(&sgctl(&inst, &["sessions", "--json"]).stdout).unwrap();
    assert_eq!(after.as_array().map(Vec::len), Some(0), "{after}");
}

#[test]
fn advanced_group_server_replies_leave_and_nothing_else_does() {
    if !kernel_tests_enabled("advanced_server_replies") {
        return;
    }
    let (_lab, inst, out) = pair("advsrv");
    let cfg = write_config("advanced.toml", &config("advanced", &rule("ingress", "tcp", "80/80", "0.0.0.0/0"), ""));
    let _agent = enforce(&inst, &cfg, &[]).unwrap();
    let (_web, _other) = (inst.serve(Proto::Tcp, 80).unwrap(), out.serve(Proto::Tcp, 80).unwrap());
    out.probe(Proto::Tcp, inst.ipv4.into(), 80, T).expect("the server's replies leave by session");
    assert!(
        !inst.reaches(Proto::Tcp, out.ipv4.into(), 80, T),
        "advanced egress default drops the instance's own connections"
    );
    assert!(!inst.ping(out.ipv4.into()), "and its pings");
}

/// Bulk data both ways, in segments far larger than the bytes the TC program pulls into
/// the linear area: the IP length fields are checked against the whole packet, so a full
/// segment leaving the instance is not taken for a truncated one (it was, before: every
/// egress packet over 512 bytes was dropped as `ipv4-bad-total-length`).
#[test]
fn bulk_tcp_in_full_segments_passes_both_hooks() {
    if !kernel_tests_enabled("bulk_tcp_in_full_segments") {
        return;
    }
    let (_lab, inst, out) = pair("bulk");
    let rules = [rule("ingress", "tcp", "80/80", "0.0.0.0/0"), rule("ingress", "tcp", "80/80", "::/0")].concat();
    let cfg = write_config("bulk.toml", &config("advanced", &rules, ""));
    let agent = enforce(&inst, &cfg, &["--interval", "1"]).unwrap();
    let _web = inst.serve(Proto::Tcp, 80).unwrap();
    for v6 in [false, true] {
        let mut stream = out.connect(inst.addr(v6), 80, Duration::from_secs(5)).unwrap();
        for size in [600, 1400, 9000, 64 * 1024] {
            let message: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            for round in 0..4 {
                assert!(
                    echo_over(&mut stream, &message),
                    "{size}-byte message, round {round} (v6 {v6}): the echo did not come back"
                );
            }
        }
    }
    drop(agent);
}

#[test]
fn idle_timeouts_expire_sessions() {
    if !kernel_tests_enabled("idle_timeouts_expire_sessions") {
        return;
    }
    let (_lab, inst, out) = pair("idle");
    let cfg = write_config("idle.toml", &config("basic", "", "[sessions]\nudp_unreplied = 2\nudp_replied = 2\n"));
    let _agent = enforce(&inst, &cfg, &[]).unwrap();
    // The instance opens a UDP flow from port 40001 (egress default accepts).
    inst.send_udp_from(40001, out.ipv4.into(), 7000, 16).unwrap();
    let sink = inst.sink(40001).unwrap();
    assert!(
        out.send_udp_from(7000, inst.ipv4.into(), 40001, 16).is_ok() && sink.grew_from(0, T),
        "reply within the timeout"
    );
    let unsolicited = sink.count();
    out.send_udp_from(7001, inst.ipv4.into(), 40001, 16).unwrap();
    assert!(!sink.grew_from(unsolicited, Duration::from_millis(500)), "another port has no session");
    std::thread::sleep(Duration::from_millis(3200));
    let before = sink.count();
    out.send_udp_from(7000, inst.ipv4.into(), 40001, 16).unwrap();
    assert!(!sink.grew_from(before, T), "the session expired after 2 s idle");
}

#[test]
fn fragmented_datagrams_follow_their_first_fragment() {
    if !kernel_tests_enabled("fragmented_datagrams_follow_their_first_fragment") {
        return;
    }
    let (_lab, inst, out) = pair("frag");
    // A small MTU on the sender's veth (IPv6's minimum): a 3,000-byte datagram leaves in 3 fragments.
    out.run("ip", &["link", "set", "dev", &out.iface, "mtu", "1280"]).unwrap();
    let rules = rule("ingress", "udp", "9000/9000", "0.0.0.0/0") + &rule("ingress", "udp", "9000/9000", "::/0");
    let cfg = write_config("frag.toml", &config("basic", &rules, ""));
    let mut agent = enforce(&inst, &cfg, &["--json"]).unwrap();
    let (allowed, blocked) = (inst.sink(9000).unwrap(), inst.sink(9001).unwrap());
    for v6 in [false, true] {
        let before = allowed.count();
        out.send_udp_from(41000, inst.addr(v6), 9000, 3000).unwrap();
        if !allowed.grew_from(before, T) {
            std::thread::sleep(Duration::from_millis(1100));
            panic!("allowed fragmented datagram not delivered (v6 {v6}): {}", agent.latest("ingress", T).unwrap());
        }
        out.send_udp_from(41001, inst.addr(v6), 9001, 3000).unwrap();
        assert!(
            !blocked.grew_from(0, Duration::from_millis(800)),
            "dropped fragmented datagram stays dropped (v6 {v6})"
        );
    }
    drop(agent);
}

#[test]
fn long_lived_stream_survives_50_reloads_and_is_cut_when_its_rule_goes() {
    if !kernel_tests_enabled("long_lived_stream_survives_reloads") {
        return;
    }
    let (_lab, inst, out) = pair("reload");
    let admit = rule("ingress", "tcp", "8080/8080", "198.18.0.1");
    let path = write_config("reload.toml", &config("basic", &admit, ""));
    let mut agent: Agent = enforce(&inst, &path, &[]).unwrap();
    let _server = inst.serve(Proto::Tcp, 8080).unwrap();
    let mut stream = out.connect(inst.ipv4.into(), 8080, T).expect("connect");
    assert!(echo_over(&mut stream, b"hello"), "stream works before reloads");
    for i in 0..50u16 {
        // An unrelated rule changes each time.
        let unrelated = rule("ingress", "udp", &format!("{p}/{p}", p = 2000 + i), "198.18.0.0/24");
        std::fs::write(&path, config("basic", &format!("{admit}{unrelated}"), "")).unwrap();
        agent.signal(libc::SIGHUP);
        agent.wait_for(&format!("generation {}", i + 2), Duration::from_secs(10)).expect("reloaded");
        assert!(echo_over(&mut stream, format!("after reload {i}").as_bytes()), "stream cut by unrelated reload {i}");
    }
    // Remove the rule: the next packet of the stream is dropped and its session revoked.
    std::fs::write(&path, config("basic", "", "")).unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for("generation 52", Duration::from_secs(10)).expect("reloaded");
    let before = sgctl(&inst, &["sessions"]);
    let cut = !echo_over(&mut stream, b"after removal");
    let after = sgctl(&inst, &["sessions"]);
    assert!(
        cut,
        "stream must be cut once its rule is removed\nbefore: {}\nafter: {}\n{:?}",
        String::from_utf8_lossy(&before.stdout),
        String::from_utf8_lossy(&after.stdout),
        agent.seen.iter().rev().take(3).collect::<Vec<_>>()
    );
    let listed = sgctl(&inst, &["sessions", "--json"]);
    let sessions: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("sessions json");
    assert!(
        !sessions.as_array().unwrap().iter().any(|s| s["responder"] == "198.18.1.1:8080"),
        "the revoked session is gone: {sessions}"
    );
}

/// The identifier both sides use in the reverse-ping test.
const PING_ID: u16 = 0x5347;

/// Whether the sessions listing holds an echo session with `PING_ID` opened in `opened`.
fn has_ping_session(inst: &Host, opened: &str) -> bool {
    let listed: serde_json::Value =
        serde_json::from_slice(&sgctl(inst, &["sessions", "--json", "--iface", "inst0"]).stdout).unwrap();
    listed.as_array().expect("a JSON array").iter().any(|s| {
        s["opened"] == opened
            && matches!(s["protocol"].as_u64(), Some(1 | 58))
            && s["opener"].as_str().is_some_and(|o| o.ends_with(&format!(":{PING_ID}")))
    })
}

#[test]
fn a_ping_back_with_the_same_identifier_is_judged_by_the_rules() {
    if !kernel_tests_enabled("reverse_ping") {
        return;
    }
    let (_lab, inst, out) = pair("revping");
    // Basic, no ingress rule: the instance's pings leave (egress default accepts) and
    // their replies return by session; pings from outside are dropped.
    let cfg = write_config("reverse-ping.toml", &config("basic", "", ""));
    let mut agent = enforce(&inst, &cfg, &[]).unwrap();
    for v6 in [false, true] {
        assert!(inst.ping_with_id(out.addr(v6), PING_ID).unwrap(), "the instance's ping (v6 {v6})");
        assert!(has_ping_session(&inst, "egress"), "its session (v6 {v6})");
        // The peer pings back with the same identifier while the session lives: the
        // ingress rules drop it, as `sgctl trace` says.
        assert!(!out.ping_with_id(inst.addr(v6), PING_ID).unwrap(), "reverse request passed (v6 {v6})");
        assert!(!out.ping_with_id(inst.addr(v6), PING_ID ^ 1).unwrap(), "another identifier (v6 {v6})");
        // The instance's own ping still works.
        assert!(inst.ping_with_id(out.addr(v6), PING_ID).unwrap(), "the instance's next ping (v6 {v6})");
    }
    let trace = sgctl(
        &inst,
        &[
            "trace",
            cfg.to_str().unwrap(),
            "--iface",
            "inst0",
            "--direction",
            "ingress",
            "--proto",
            "icmp",
            "--src",
            "198.18.0.1",
            "--dst",
            "198.18.1.1",
        ],
    );
    assert!(String::from_utf8_lossy(&trace.stdout).contains("drop"), "{trace:?}");

    // Rules that admit ICMP from outside: the reverse ping passes, as a session of its own.
    let open_icmp = rule("ingress", "icmp", "", "0.0.0.0/0") + &rule("ingress", "icmpv6", "", "::/0");
    std::fs::write(&cfg, config("basic", &open_icmp, "")).unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for("generation 2", Duration::from_secs(10)).unwrap();
    for v6 in [false, true] {
        assert!(inst.ping_with_id(out.addr(v6), PING_ID).unwrap(), "the instance's ping (v6 {v6})");
        assert!(out.ping_with_id(inst.addr(v6), PING_ID).unwrap(), "admitted reverse ping (v6 {v6})");
        assert!(has_ping_session(&inst, "ingress"), "the reverse ping's own session (v6 {v6})");
        assert!(has_ping_session(&inst, "egress"), "beside the instance's (v6 {v6})");
    }
}

#[test]
fn a_ping_from_the_instance_reusing_a_peers_identifier_is_judged_by_the_rules() {
    if !kernel_tests_enabled("reverse_ping_egress") {
        return;
    }
    let (_lab, inst, out) = pair("revpingout");
    // Advanced: pings from outside are admitted; the instance may not ping out.
    let rules = rule("ingress", "icmp", "", "0.0.0.0/0") + &rule("ingress", "icmpv6", "", "::/0");
    let cfg = write_config("reverse-ping-out.toml", &config("advanced", &rules, ""));
    let _agent = enforce(&inst, &cfg, &[]).unwrap();
    for v6 in [false, true] {
        assert!(out.ping_with_id(inst.addr(v6), PING_ID).unwrap(), "the peer's ping (v6 {v6})");
        assert!(!inst.ping_with_id(out.addr(v6), PING_ID).unwrap(), "the instance's ping with its id (v6 {v6})");
        assert!(out.ping_with_id(inst.addr(v6), PING_ID).unwrap(), "the peer's next ping (v6 {v6})");
    }
}
