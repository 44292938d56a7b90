//! The fallbacks older kernels and drivers make sgctl take, forced on this kernel with
//! `SGCTL_FALLBACKS=1` (README, "Trying it on a VM NIC"): a clsact filter instead of TCX,
//! generic XDP where `--xdp-mode auto` would get native (veth has native XDP), the
//! sessions' clock without `bpf_ktime_get_coarse_ns`, and one syscall per map element
//! instead of batched writes. The agent must say which it took, enforce the same rules
//! through real sockets, reload, and leave nothing behind. (The VM suite meets the real
//! ones: clsact and no batched LPM writes on 5.10, clsact on 6.1.)

use std::time::Duration;

use sg_tests::{
    agent::{Agent, sgctl},
    kernel::kernel_tests_enabled,
    netns::instance_and_outside,
    traffic::{Proto, echo_over},
};

const T: Duration = Duration::from_millis(1500);

fn rules(ingress_ports: &str) -> String {
    format!(
        r#"
[[security_group]]
id = "sg-inst"
type = "basic"
members = ["198.18.1.1", "2001:db8::1:1"]
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "{ingress_ports}"
  source = "198.18.0.0/15"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "{ingress_ports}"
  source = "2001:db8::/32"

[[interface]]
name = "inst0"
security_groups = ["sg-inst"]
"#
    )
}

#[test]
fn forced_fallbacks_clsact_generic_xdp_per_element_writes_enforce_and_clean_up() {
    if !kernel_tests_enabled("forced_fallbacks_clsact_generic_xdp_per_element_writes_enforce_and_clean_up") {
        return;
    }
    let (_lab, inst, out) = instance_and_outside("fallbk").unwrap();
    let dir = std::env::temp_dir().join(format!("sgctl-fallbacks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("rules.toml");
    std::fs::write(&config, rules("8080/8080")).unwrap();
    let config_arg = config.to_str().unwrap();
    let mut agent = Agent::start_with_env(
        &inst,
        &["run", "--config", config_arg, "--xdp-mode", "auto"],
        &[("SGCTL_FALLBACKS", "1")],
        "applied",
    )
    .expect("agent with every fallback forced");

    // It says what it took.
    let status = sgctl(&inst, &["status", "--json"]);
    assert!(status.status.success(), "{}\nagent: {:?}", String::from_utf8_lossy(&status.stderr), agent.seen);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let held = &status["held"][0];
    assert_eq!(held["xdp_mode"], "generic", "auto mode must fall back to generic: {status}");
    assert!(held["tc"].as_str().is_some_and(|tc| tc.starts_with("Clsact")), "egress must be a clsact filter: {status}");
    let fallbacks: Vec<&str> =
        status["fallbacks"].as_array().expect("fallbacks").iter().filter_map(|f| f.as_str()).collect();
    for expected in ["bpf_ktime_get_ns", "one syscall per element"] {
        assert!(fallbacks.iter().any(|f| f.contains(expected)), "no {expected:?} fallback in {fallbacks:?}");
    }
    // Independently of sgctl: the filter is on a clsact qdisc and no TCX program is attached.
    let filters = inst.run("tc", &["filter", "show", "dev", "inst0", "egress"]).unwrap();
    assert!(String::from_utf8_lossy(&filters.stdout).contains("sg_egress"), "no clsact filter sg_egress");
    let iface = sgctl(&inst, &["status", "inst0", "--json"]);
    let iface: serde_json::Value = serde_json::from_slice(&iface.stdout).unwrap();
    assert_eq!(iface["clsact_filter"], true, "{iface}");
    assert_eq!(iface["tcx_programs"].as_array().map(Vec::len), Some(0), "{iface}");

    // The rules written one element at a time are the rules in force, both families.
    let _servers = [inst.serve(Proto::Tcp, 8080).unwrap(), inst.serve(Proto::Tcp, 9090).unwrap()];
    let _outside = out.serve(Proto::Tcp, 7070).unwrap();
    for v6 in [false, true] {
        out.probe(Proto::Tcp, inst.addr(v6), 8080, T).unwrap_or_else(|e| panic!("allowed 8080 (v6 {v6}): {e:#}"));
        assert!(!out.reaches(Proto::Tcp, inst.addr(v6), 9090, T), "9090 is not admitted (v6 {v6})");
        // Egress is open and the session (on the ktime clock) lets the replies in.
        inst.probe(Proto::Tcp, out.addr(v6), 7070, T).unwrap_or_else(|e| panic!("outbound 7070 (v6 {v6}): {e:#}"));
    }
    // A long-lived connection opened under the first rules.
    let mut stream = inst.connect(out.addr(false), 7070, T).expect("long-lived outbound connection");
    assert!(echo_over(&mut stream, b"before the reload"));

    // A reload through the same per-element writes (and deletes of the old entries).
    std::fs::write(&config, rules("9090/9090")).unwrap();
    let applied = sgctl(&inst, &["apply", config_arg]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    for v6 in [false, true] {
        out.probe(Proto::Tcp, inst.addr(v6), 9090, T).unwrap_or_else(|e| panic!("9090 after reload (v6 {v6}): {e:#}"));
        assert!(!out.reaches(Proto::Tcp, inst.addr(v6), 8080, T), "8080 is no longer admitted (v6 {v6})");
    }
    assert!(echo_over(&mut stream, b"after the reload"), "the session survives the reload");

    // It leaves nothing behind: no XDP program, no filter, not the qdisc it added.
    let status = agent.stop_with(libc::SIGTERM).expect("stop");
    assert!(status.success(), "sgctl exited with {status}: {:?}", agent.seen);
    let qdisc = inst.run("tc", &["qdisc", "show", "dev", "inst0"]).unwrap();
    assert!(!String::from_utf8_lossy(&qdisc.stdout).contains("clsact"), "the clsact qdisc was left behind");
    let link = inst.run("ip", &["-d", "link", "show", "dev", "inst0"]).unwrap();
    assert!(!String::from_utf8_lossy(&link.stdout).contains("prog/xdp"), "an XDP program is still attached");
    let _ = std::fs::remove_dir_all(&dir);
}
