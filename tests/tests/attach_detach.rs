//! Attaching to a real veth in a namespace: traffic passes with both programs attached,
//! detaching (by signal or `sgctl detach`) leaves nothing behind, and failures are
//! one-line errors.

use std::{net::Ipv4Addr, time::Duration};

use sg_tests::{
    agent::{Agent, sgctl},
    kernel::kernel_tests_enabled,
    netns::{Host, Lab},
    traffic::Proto,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn two_hosts(tag: &str) -> (Lab, Host, Host) {
    let mut lab = Lab::new(tag).expect("lab");
    let a = lab.add_host("a", Ipv4Addr::new(198, 18, 0, 1), "2001:db8::1".parse().unwrap()).expect("host a");
    let b = lab.add_host("b", Ipv4Addr::new(198, 18, 0, 2), "2001:db8::2".parse().unwrap()).expect("host b");
    lab.resolve_neighbours().expect("neighbours");
    (lab, a, b)
}

/// Asserts that nothing of sgctl's is on `host`'s interface, by three independent views.
fn assert_nothing_attached(host: &Host) {
    let status = sgctl(host, &["status", &host.iface, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(json["attached"], false, "sgctl status: {json}");
    let link = host.run("ip", &["-d", "link", "show", "dev", &host.iface]).expect("ip link");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("prog/xdp"), "an XDP program is still attached:\n{link}");
    let net = host.run("bpftool", &["net", "show", "dev", &host.iface]).expect("bpftool net");
    let net = String::from_utf8_lossy(&net.stdout);
    assert!(!net.contains("sg_ingress") && !net.contains("sg_egress"), "bpftool still sees our programs:\n{net}");
    let qdisc = host.run("tc", &["qdisc", "show", "dev", &host.iface]).expect("tc qdisc");
    assert!(!String::from_utf8_lossy(&qdisc.stdout).contains("clsact"), "a clsact qdisc was left behind");
}

/// Every kind of traffic both ways between `a` (attached) and `b`.
fn exchange_all(a: &Host, b: &Host) -> Vec<String> {
    let mut failures = Vec::new();
    let _servers = [
        a.serve(Proto::Tcp, 8080).unwrap(),
        a.serve(Proto::Udp, 5353).unwrap(),
        b.serve(Proto::Tcp, 8080).unwrap(),
        b.serve(Proto::Udp, 5353).unwrap(),
    ];
    for v6 in [false, true] {
        for (from, to) in [(b, a), (a, b)] {
            for proto in [Proto::Tcp, Proto::Udp] {
                let port = if proto == Proto::Tcp { 8080 } else { 5353 };
                if let Err(e) = from.probe(proto, to.addr(v6), port, TIMEOUT) {
                    failures.push(format!("{proto:?} {} -> {}: {e:#}", from.role, to.addr(v6)));
                }
            }
            if !from.ping(to.addr(v6)) {
                failures.push(format!("ping {} -> {}", from.role, to.addr(v6)));
            }
        }
    }
    failures
}

fn attach_pass_and_detach(mode: &str) {
    let (_lab, a, b) = two_hosts(&format!("att{mode}"));
    let mut agent =
        Agent::start(&a, &["attach", "eth0", "--xdp-mode", mode, "--json", "--interval", "1"], "attached to eth0")
            .expect("attach");
    let status = sgctl(&a, &["status", "eth0", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["attached"], true, "{json}");
    assert!(json["xdp_program"].is_u64() && json["tcx_programs"].as_array().is_some_and(|p| p.len() == 1), "{json}");

    let failures = exchange_all(&a, &b);
    assert!(failures.is_empty(), "traffic failed with sgctl attached ({mode}):\n{}", failures.join("\n"));

    // The counters saw the traffic on both hooks: 12 exchanges each way at least.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let line = agent.wait_for("\"ingress\"", Duration::from_secs(5)).expect("counter line");
        let json: serde_json::Value = serde_json::from_str(&line).expect("json counters");
        let (ingress, egress) =
            (json["ingress"]["passed"].as_u64().unwrap(), json["egress"]["passed"].as_u64().unwrap());
        if ingress >= 12 && egress >= 12 {
            assert_eq!(json["ingress"]["dropped"], 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "counters never caught up: {line}");
    }

    let status = agent.stop_with(libc::SIGTERM).expect("stop");
    assert!(status.success(), "sgctl exited with {status}: {:?}", agent.seen);
    assert!(agent.seen.iter().any(|l| l.contains("detached from eth0")), "{:?}", agent.seen);
    assert_nothing_attached(&a);
    // And traffic still flows without us.
    let failures = exchange_all(&a, &b);
    assert!(failures.is_empty(), "traffic failed after detach:\n{}", failures.join("\n"));
}

#[test]
fn generic_xdp_and_tc_pass_traffic_and_detach_cleanly() {
    if kernel_tests_enabled("generic_xdp_and_tc_pass_traffic_and_detach_cleanly") {
        attach_pass_and_detach("generic");
    }
}

#[test]
fn native_xdp_and_tc_pass_traffic_and_detach_cleanly() {
    if kernel_tests_enabled("native_xdp_and_tc_pass_traffic_and_detach_cleanly") {
        attach_pass_and_detach("native");
    }
}

#[test]
fn sgctl_detach_stops_the_holder_and_cleans_up_after_sigkill() {
    if !kernel_tests_enabled("sgctl_detach_stops_the_holder_and_cleans_up_after_sigkill") {
        return;
    }
    let (_lab, a, _b) = two_hosts("detach");
    // `sgctl detach` stops a running agent.
    let mut agent = Agent::start(&a, &["attach", "eth0", "--interval", "0"], "attached to eth0").expect("attach");
    let out = sgctl(&a, &["detach", "eth0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped sgctl"), "{}", String::from_utf8_lossy(&out.stdout));
    let status = agent.stop_with(0).expect("agent exited");
    assert!(status.success());
    assert_nothing_attached(&a);

    // After SIGKILL nothing runs the cleanup; `sgctl detach` must leave the interface clean.
    let mut agent =
        Agent::start(&a, &["attach", "eth0", "--xdp-mode", "generic", "--interval", "0"], "attached to eth0")
            .expect("attach");
    agent.stop_with(libc::SIGKILL).expect("killed");
    let out = sgctl(&a, &["detach", "eth0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_nothing_attached(&a);
}

#[test]
fn attaching_over_another_xdp_program_is_a_clear_error() {
    if !kernel_tests_enabled("attaching_over_another_xdp_program_is_a_clear_error") {
        return;
    }
    let (_lab, a, _b) = two_hosts("busy");
    let _first = Agent::start(&a, &["attach", "eth0", "--xdp-mode", "generic", "--interval", "0"], "attached to eth0")
        .expect("attach");
    for mode in ["auto", "generic", "native"] {
        let out = sgctl(&a, &["attach", "eth0", "--xdp-mode", mode]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "second attach ({mode}) succeeded");
        assert!(stderr.contains("already has an XDP program"), "{mode}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{mode}: not one line: {stderr}");
    }
}

#[test]
fn failures_are_one_line_errors() {
    if !kernel_tests_enabled("failures_are_one_line_errors") {
        return;
    }
    let (_lab, a, _b) = two_hosts("errors");
    for args in [vec!["attach", "nosuch0"], vec!["detach", "nosuch0"], vec!["status", "nosuch0"]] {
        let out = sgctl(&a, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr.trim(), "sgctl: error: no such interface: nosuch0", "{args:?}");
    }
}
