//! Spoofing across interfaces and namespaces, through real veths: a host on the lab's
//! bridge crafts the replies of an instance's real TCP connection (the peer's address
//! and port, the instance's address and port, ACK, FIN, RST, SYN-ACK) and sends them to
//! another interface of the same instance, and to another namespace whose own agent
//! enforces the same rules. Sessions are keyed by the interface, and every agent has its
//! own maps: the forged segments are dropped by the rules there, as any unsolicited
//! segment, and the connection's session is neither closed nor refreshed. The same
//! frames sent to the interface the connection uses do pass as its session, so the
//! crafting itself is sound.
//!
//! Then blind RSTs and FINs on the connection's own interface: with sequence numbers
//! away from the instance's receive window they are dropped and cut nothing; one at the
//! window's start passes and resets the instance's real socket.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    thread::sleep,
    time::Duration,
};

use serde_json::Value;
use sg_tests::{
    agent::sgctl,
    deploy::enforce,
    frames::*,
    kernel::kernel_tests_enabled,
    netns::{Host, Lab},
    traffic::{Proto, echo_over},
};

const T: Duration = Duration::from_millis(1500);
const SERVER_PORT: u16 = 7070;
const OUT: [u8; 4] = [198, 18, 0, 1];
const INST: [u8; 4] = [198, 18, 1, 1];

fn rules(members: &[&str], interfaces: &[&str]) -> String {
    let members: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    let mut s = format!(
        r#"
[[security_group]]
id = "sg-inst"
type = "basic"
members = [{}]
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "8080/8080"
  source = "198.18.0.0/15"
"#,
        members.join(", ")
    );
    for i in interfaces {
        s.push_str(&format!("[[interface]]\nname = \"{i}\"\nsecurity_groups = [\"sg-inst\"]\n"));
    }
    s
}

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sgctl-spoof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn json_lines(host: &Host, args: &[&str]) -> Vec<Value> {
    let out = sgctl(host, args);
    assert!(out.status.success(), "sgctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The session of the instance's connection from `client_port`.
fn session(inst: &Host, client_port: u16) -> Value {
    let all = json_lines(inst, &["sessions", "--json"]).pop().expect("one JSON array");
    let opener = format!("198.18.1.1:{client_port}");
    all.as_array()
        .unwrap()
        .iter()
        .find(|s| s["opener"] == opener.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no session of {opener} in {all}"))
}

/// Drop events of `host`'s agent on `iface` for segments from the server to `client_port`.
fn forged_drops(host: &Host, iface: &str, client_port: u16) -> usize {
    json_lines(host, &["log", "--json", "--iface", iface, "--verdict", "drop"])
        .iter()
        .filter(|e| e["src"] == "198.18.0.1" && e["src_port"] == SERVER_PORT && e["dst_port"] == client_port)
        .count()
}

fn ingress_passed(host: &Host, iface: &str) -> u64 {
    let stats = json_lines(host, &["stats", "--json"]).pop().expect("stats");
    stats["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["iface"] == iface && i["direction"] == "ingress")
        .and_then(|i| i["counters"]["passed"].as_u64())
        .unwrap_or_else(|| panic!("no {iface} ingress in {stats}"))
}

#[test]
fn segments_forged_on_another_interface_or_namespace_leave_the_session_alone() {
    if !kernel_tests_enabled("segments_forged_on_another_interface_or_namespace_leave_the_session_alone") {
        return;
    }
    let mut lab = Lab::new("spoof").unwrap();
    let inst =
        lab.add_host_on("inst", "inst0", Ipv4Addr::new(198, 18, 1, 1), "2001:db8::1:1".parse().unwrap()).unwrap();
    let inst1 =
        lab.add_interface(&inst, "inst1", Ipv4Addr::new(198, 18, 1, 2), "2001:db8::1:2".parse().unwrap()).unwrap();
    // Another namespace with an interface of the same name (and, both being the first
    // veth of a fresh namespace, most likely the same ifindex) and an agent of its own.
    let other =
        lab.add_host_on("other", "inst0", Ipv4Addr::new(198, 18, 1, 3), "2001:db8::1:3".parse().unwrap()).unwrap();
    let out = lab.add_host("out", Ipv4Addr::new(198, 18, 0, 1), "2001:db8::1".parse().unwrap()).unwrap();
    let evil = lab.add_host("evil", Ipv4Addr::new(198, 18, 0, 66), "2001:db8::66".parse().unwrap()).unwrap();
    lab.resolve_neighbours().unwrap();
    // Both of the instance's NICs are on the lab's prefix: the connection goes by inst0.
    inst.run("ip", &["route", "replace", "198.18.0.1/32", "dev", "inst0"]).unwrap();

    let a = write("inst.toml", &rules(&["198.18.1.1", "198.18.1.2"], &["inst0", "inst1"]));
    let _agent = enforce(&inst, &a, &["--drop-events", "unlimited"]).unwrap();
    let b = write("other.toml", &rules(&["198.18.1.3"], &["inst0"]));
    let _other_agent = enforce(&other, &b, &["--drop-events", "unlimited"]).unwrap();

    let _server = out.serve(Proto::Tcp, SERVER_PORT).unwrap();
    let mut stream = inst.connect(IpAddr::V4(OUT.into()), SERVER_PORT, T).unwrap();
    assert!(echo_over(&mut stream, b"before"), "the connection carries data");
    let client_port = stream.local_addr().unwrap().port();
    let before = session(&inst, client_port);
    assert_eq!(before["state"], "established", "{before}");
    // Let the session idle, so a refresh would show.
    sleep(Duration::from_millis(1500));

    let reply = |flags: u8| from_server(client_port, flags, 0, 0);
    let forged: Vec<Vec<u8>> =
        [TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST, TCP_RST | TCP_ACK, TCP_SYN | TCP_ACK].map(reply).to_vec();
    // To the instance's other NIC, and to the other namespace's.
    evil.send_frames(&inst1.mac, &forged).unwrap();
    evil.send_frames(&other.mac, &forged).unwrap();
    sleep(Duration::from_millis(300));

    let after = session(&inst, client_port);
    assert_eq!(after["state"], "established", "a forged FIN or RST elsewhere closed it: {after}");
    assert!(after["idle_s"].as_f64().unwrap() >= 1.4, "a forged segment elsewhere refreshed it: {after}");
    assert_eq!(after["packets"], before["packets"], "{after}");
    assert_eq!(forged_drops(&inst, "inst1", client_port), forged.len(), "each dropped on inst1 by the rules");
    assert_eq!(forged_drops(&other, "inst0", client_port), forged.len(), "each dropped by the other agent");
    let others = json_lines(&other, &["sessions", "--json"]).pop().unwrap();
    assert_eq!(others.as_array().map(Vec::len), Some(0), "the other agent opened nothing: {others}");
    assert!(echo_over(&mut stream, b"after"), "the connection still carries data");

    // The same crafted ACK sent to inst0 is the session's: it passes, no drop.
    let passed = ingress_passed(&inst, "inst0");
    evil.send_frames(&inst.mac, &[reply(TCP_ACK), reply(TCP_ACK), reply(TCP_ACK)]).unwrap();
    sleep(Duration::from_millis(300));
    assert_eq!(forged_drops(&inst, "inst0", client_port), 0, "the session carries them on inst0");
    assert!(ingress_passed(&inst, "inst0") >= passed + 3, "the crafted frames reached inst0's program");
    assert!(echo_over(&mut stream, b"still"), "the connection still carries data");
}

/// A segment from the server to the instance's `client_port` with `flags`, `seq` and `ack`,
/// framed for the bridge (with checksums).
fn from_server(client_port: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut segment = tcp(SERVER_PORT, client_port, flags, b"");
    set_tcp_numbers(&mut segment, seq, ack);
    with_checksums(ether(ETHERTYPE_IPV4, &[], &ipv4(6, OUT, INST, &[], Frag4::default(), &segment)))
}

#[test]
fn a_blind_rst_or_fin_cuts_nothing_and_one_in_the_window_resets_the_socket() {
    if !kernel_tests_enabled("a_blind_rst_or_fin_cuts_nothing_and_one_in_the_window_resets_the_socket") {
        return;
    }
    use sg_common::session::RECEIVE_AHEAD;
    let mut lab = Lab::new("blind").unwrap();
    let inst =
        lab.add_host_on("inst", "inst0", Ipv4Addr::new(198, 18, 1, 1), "2001:db8::1:1".parse().unwrap()).unwrap();
    let out = lab.add_host("out", Ipv4Addr::new(198, 18, 0, 1), "2001:db8::1".parse().unwrap()).unwrap();
    let evil = lab.add_host("evil", Ipv4Addr::new(198, 18, 0, 66), "2001:db8::66".parse().unwrap()).unwrap();
    lab.resolve_neighbours().unwrap();
    let a = write("blind.toml", &rules(&["198.18.1.1"], &["inst0"]));
    let _agent = enforce(&inst, &a, &["--drop-events", "unlimited"]).unwrap();

    // A closed port answers the SYN with a RST+ACK acknowledging it: that one passes.
    let refused = inst.connect(IpAddr::V4(OUT.into()), SERVER_PORT + 1, T).expect_err("nothing listens there");
    let kind = refused.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
    assert_eq!(kind, Some(std::io::ErrorKind::ConnectionRefused), "{refused:#}");

    let _server = out.serve(Proto::Tcp, SERVER_PORT).unwrap();
    let mut stream = inst.connect(IpAddr::V4(OUT.into()), SERVER_PORT, T).unwrap();
    assert!(echo_over(&mut stream, b"before"), "the connection carries data");
    let client_port = stream.local_addr().unwrap().port();
    // Past any delayed ACK: the instance has acknowledged everything it received.
    sleep(Duration::from_millis(500));
    let anchor = |inst: &Host| session(inst, client_port)["instance_ack"].as_u64().expect("an acknowledgement") as u32;
    let ack = anchor(&inst);

    // Blind guesses: far across the sequence space, and just past the window.
    let blind: Vec<Vec<u8>> = [
        (TCP_RST, ack.wrapping_add(1 << 31)),
        (TCP_RST | TCP_ACK, ack.wrapping_add(RECEIVE_AHEAD + 1)),
        (TCP_FIN | TCP_ACK, ack.wrapping_add(1 << 31)),
        (TCP_FIN | TCP_ACK, ack.wrapping_sub(1 << 20)),
    ]
    .map(|(flags, seq)| from_server(client_port, flags, seq, 0))
    .to_vec();
    evil.send_frames(&inst.mac, &blind).unwrap();
    sleep(Duration::from_millis(300));
    assert_eq!(forged_drops(&inst, "inst0", client_port), blind.len(), "each dropped by the rules");
    let after = session(&inst, client_port);
    assert_eq!(after["state"], "established", "a blind RST or FIN moved the session: {after}");
    assert!(echo_over(&mut stream, b"after"), "the connection still carries data");

    // A RST exactly where the instance's receive window starts: the session's, and the
    // instance's own stack takes it too (RFC 5961), so the socket is reset.
    sleep(Duration::from_millis(500));
    let ack = anchor(&inst);
    evil.send_frames(&inst.mac, &[from_server(client_port, TCP_RST, ack, 0)]).unwrap();
    sleep(Duration::from_millis(300));
    assert_eq!(forged_drops(&inst, "inst0", client_port), blind.len(), "the RST in the window passed");
    assert_eq!(session(&inst, client_port)["state"], "closed");
    let mut byte = [0u8; 1];
    let read = std::io::Read::read(&mut stream, &mut byte);
    assert_eq!(
        read.as_ref().map_err(std::io::Error::kind).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "the instance's socket was reset: {read:?}"
    );
}
