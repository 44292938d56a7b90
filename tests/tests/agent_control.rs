//! The agent's control socket with the real binary in namespaces: `sgctl apply` changes
//! the rules of a running agent and reports what it did, a bad file changes nothing,
//! `--confirm` rolls back unless confirmed, `--watch` follows the file, and the socket
//! is root's alone and survives malformed requests.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use sg_tests::{
    agent::sgctl,
    deploy::enforce,
    kernel::{kernel_tests_enabled, sgctl_bin},
    netns::{Host, Lab, instance_and_outside},
    traffic::Proto,
};

const T: Duration = Duration::from_millis(800);

fn dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sgctl-control-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A basic group on inst0 admitting TCP on `port` from anywhere.
fn rules(port: u16) -> String {
    format!(
        r#"
[[security_group]]
id = "sg-inst"
type = "basic"
members = ["198.18.1.1"]
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "{port}/{port}"
  source = "0.0.0.0/0"
[[interface]]
name = "inst0"
security_groups = ["sg-inst"]
"#
    )
}

fn write(name: &str, text: &str) -> PathBuf {
    let path = dir().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn pair(tag: &str) -> (Lab, Host, Host) {
    instance_and_outside(tag).unwrap()
}

/// Which of ports 8080 and 9090 `out` reaches on the instance (a refused connection
/// counts: the packets got through).
fn open_ports(out: &Host) -> (bool, bool) {
    let inst: IpAddr = Ipv4Addr::new(198, 18, 1, 1).into();
    (out.reaches(Proto::Tcp, inst, 8080, T), out.reaches(Proto::Tcp, inst, 9090, T))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits up to `timeout` for `open_ports` to say `want`.
fn eventually(out: &Host, want: (bool, bool), timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if open_ports(out) == want {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

#[test]
fn apply_switches_a_running_agent_and_a_bad_file_changes_nothing() {
    if !kernel_tests_enabled("apply_switches_a_running_agent") {
        return;
    }
    let (_lab, inst, out) = pair("ctlapply");
    let first = write("apply-8080.toml", &rules(8080));
    let _agent = enforce(&inst, &first, &[]).unwrap();
    assert_eq!(open_ports(&out), (true, false), "the first file's rules");

    let second = write("apply-9090.toml", &rules(9090));
    let applied = sgctl(&inst, &["apply", second.to_str().unwrap()]);
    assert!(applied.status.success(), "{applied:?}");
    let said = text(&applied.stdout);
    assert!(said.starts_with(&format!("applied {}: generation 2 on inst0", second.display())), "{said}");
    assert!(said.contains(" read ") && said.contains(" compile "), "the apply's phases: {said}");
    assert_eq!(open_ports(&out), (false, true), "the applied file's rules");

    // A bad file: every error with file:line:col, exit 1, nothing changes.
    let bad = write("apply-bad.toml", &rules(8080).replace("8080/8080", "8080/80"));
    let refused = sgctl(&inst, &["apply", bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let errors = text(&refused.stderr);
    assert!(errors.contains(&format!("{}:9:", bad.display())) && errors.contains("port_range"), "{errors}");
    assert_eq!(open_ports(&out), (false, true), "the old rules still enforce");

    // --json: the agent's reply as it sent it.
    let json = sgctl(&inst, &["apply", "--json", first.to_str().unwrap()]);
    let reply: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(reply["version"], 1, "{reply}");
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["applied"]["rules_after"], reply["applied"]["rules_before"], "{reply}");
    assert!(reply["applied"]["rules_after"].as_u64().is_some_and(|n| n > 0), "{reply}");
    assert!(reply["applied"]["generation"].as_u64().is_some_and(|g| g >= 3), "{reply}");
    // The agent times its own read of the file: a real, positive figure.
    assert!(reply["applied"]["parse_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{reply}");
    assert_eq!(open_ports(&out), (true, false));

    // The same file again: both rule sets are kept as they are, nothing is switched.
    let generation = reply["applied"]["generation"].clone();
    let again = sgctl(&inst, &["apply", "--json", first.to_str().unwrap()]);
    let reply: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(reply["applied"]["unchanged"], 2, "{reply}");
    assert_eq!(reply["applied"]["rule_sets"], 2, "{reply}");
    assert_eq!(reply["applied"]["generation"], generation, "no new generation: {reply}");
    let said = text(&sgctl(&inst, &["apply", first.to_str().unwrap()]).stdout);
    assert!(said.contains("2 of 2 rule sets unchanged"), "{said}");
    assert!(said.contains("(same)"), "read as the text before: {said}");
    assert_eq!(open_ports(&out), (true, false), "the rules still enforce");

    // The same file edited in one rule: the agent reads that rule alone, and the edit is
    // in force; then edited back.
    for (port, open) in [(9090, (false, true)), (8080, (true, false))] {
        write("apply-8080.toml", &rules(port));
        let edited = sgctl(&inst, &["apply", "--json", first.to_str().unwrap()]);
        let reply: serde_json::Value = serde_json::from_slice(&edited.stdout).unwrap();
        assert_eq!(reply["applied"]["read"], "one rule", "{reply}");
        assert_eq!(reply["applied"]["unchanged"], 1, "the egress set is kept: {reply}");
        assert_eq!(open_ports(&out), open, "port {port} after the edit");
    }
    // An invalid edit of that rule is refused with the whole read's errors.
    write("apply-8080.toml", &rules(8080).replace("8080/8080", "8080/80"));
    let refused = sgctl(&inst, &["apply", first.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(text(&refused.stderr).contains(&format!("{}:9:", first.display())), "{refused:?}");
    assert_eq!(open_ports(&out), (true, false), "the old rules still enforce");
}

#[test]
fn confirm_keeps_an_apply_and_its_absence_rolls_it_back() {
    if !kernel_tests_enabled("confirm_or_roll_back") {
        return;
    }
    let (_lab, inst, out) = pair("ctlconfirm");
    let first = write("confirm-8080.toml", &rules(8080));
    let second = write("confirm-9090.toml", &rules(9090));
    let mut agent = enforce(&inst, &first, &[]).unwrap();

    let applied = sgctl(&inst, &["apply", "--confirm", "2s", second.to_str().unwrap()]);
    assert!(applied.status.success(), "{applied:?}");
    assert!(text(&applied.stdout).contains("sgctl confirm"), "{applied:?}");
    assert_eq!(open_ports(&out), (false, true), "the new rules, unconfirmed");
    agent.wait_for("rolling back", Duration::from_secs(10)).unwrap();
    assert!(eventually(&out, (true, false), Duration::from_secs(3)), "rolled back to the first file");

    let applied = sgctl(&inst, &["apply", "--confirm", "3s", second.to_str().unwrap()]);
    assert!(applied.status.success(), "{applied:?}");
    let confirmed = sgctl(&inst, &["confirm"]);
    assert!(confirmed.status.success(), "{confirmed:?}");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(open_ports(&out), (false, true), "confirmed rules stay past the window");
    let nothing = sgctl(&inst, &["confirm"]);
    assert_eq!(nothing.status.code(), Some(1), "nothing awaits confirmation: {nothing:?}");
}

#[test]
fn watch_applies_the_rule_file_when_it_changes() {
    if !kernel_tests_enabled("watch_applies_changes") {
        return;
    }
    let (_lab, inst, out) = pair("ctlwatch");
    let file = write("watched.toml", &rules(8080));
    let mut agent = enforce(&inst, &file, &["--watch"]).unwrap();
    assert_eq!(open_ports(&out), (true, false));
    std::fs::write(&file, rules(9090)).unwrap();
    agent.wait_for("applied", Duration::from_secs(5)).unwrap();
    assert!(eventually(&out, (false, true), Duration::from_secs(3)), "the changed file's rules");
    // A broken edit is rejected; the rules stay.
    std::fs::write(&file, "[[security_group]\n").unwrap();
    agent.wait_for("rejected", Duration::from_secs(5)).unwrap();
    assert_eq!(open_ports(&out), (false, true));
}

/// Sends raw bytes to the socket and returns what comes back.
fn raw_request(socket: &Path, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The agent stops reading an oversized request and answers at once: the rest of the
    // write may then fail, and the answer is still there to read.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    text(&reply)
}

#[test]
fn the_control_socket_is_roots_alone_and_survives_bad_requests() {
    if !kernel_tests_enabled("control_socket_guarded") {
        return;
    }
    let (_lab, inst, out) = pair("ctlsock");
    let socket = dir().join("agent.sock");
    let first = write("socket-8080.toml", &rules(8080));
    let _agent = enforce(&inst, &first, &["--socket", socket.to_str().unwrap()]).unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    // Another user cannot even connect.
    let second = write("socket-9090.toml", &rules(9090));
    let as_nobody = std::process::Command::new("ip")
        .args(["netns", "exec", &inst.ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(sgctl_bin())
        .args(["apply", "--socket", socket.to_str().unwrap(), second.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!as_nobody.status.success(), "{as_nobody:?}");
    assert!(text(&as_nobody.stderr).contains("no sgctl agent answers"), "{as_nobody:?}");
    assert_eq!(open_ports(&out), (true, false), "nothing changed");

    // Malformed, wrong-version and oversized requests get an error; the agent carries on.
    for (bytes, expect) in [
        (b"this is not json\n".to_vec(), "malformed request"),
        (b"{\"version\":99,\"op\":\"status\"}\n".to_vec(), "API version 99"),
        (b"{\"version\":1,\"op\":\"reformat\"}\n".to_vec(), "malformed request"),
        (vec![b'x'; 17 << 20], "larger than"),
    ] {
        let reply = raw_request(&socket, &bytes);
        assert!(reply.contains(r#""ok":false"#) && reply.contains(expect), "{expect}: {reply}");
    }
    let status = raw_request(&socket, b"{\"version\":1,\"op\":\"status\"}\n");
    assert!(status.contains(r#""ok":true"#) && status.contains("socket-8080.toml"), "{status}");
    let applied = sgctl(&inst, &["apply", "--socket", socket.to_str().unwrap(), second.to_str().unwrap()]);
    assert!(applied.status.success(), "{applied:?}");
    assert_eq!(open_ports(&out), (false, true), "the agent still applies");
}
