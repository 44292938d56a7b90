//! A session-table flood through a real veth: `trafgen` sends spoofed SYNs, from random
//! addresses and ports, at many times the table's size towards a port the rules admit,
//! while real TCP connections are opened and long-lived ones carry data. The SYNs only
//! ever fill the opening table (`sg_common::session::table`): allowed new connections
//! still connect, denied ones still fail, and no established connection is cut, although
//! its return direction passes only by its session. The agent's counts of evictions by
//! table must say so.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Stdio,
    time::{Duration, Instant},
};

use sg_tests::{
    agent::{Agent, sgctl},
    kernel::kernel_tests_enabled,
    netns::{Host, instance_and_outside},
    procfs::cpu_and_rss,
    traffic::{Proto, echo_over},
};

const T: Duration = Duration::from_millis(1500);
/// The assured table; the opening table holds a quarter as many.
const MAX_SESSIONS: u64 = 4096;
/// Spoofed SYNs: 25 times both tables together.
const FLOOD: u64 = 128_000;
const LONG_LIVED: usize = 24;

/// Admits TCP 8080 from the lab and nothing else inbound: the replies of the instance's
/// own connections to the outside's port 7070 pass only by their sessions.
const RULES: &str = r#"
[[security_group]]
id = "sg-inst"
type = "basic"
members = ["198.18.1.1"]
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "8080/8080"
  source = "198.18.0.0/15"

[[interface]]
name = "inst0"
security_groups = ["sg-inst"]

[sessions]
max_sessions = 4096
"#;

/// trafgen's description of one SYN from a random 198.19.x.y and port to `inst`:8080.
fn syn_flood_conf(inst: &Host, out: &Host) -> String {
    let bytes = |mac: &str| mac.split(':').map(|b| format!("0x{b}")).collect::<Vec<_>>().join(", ");
    let [d0, d1, d2, d3] = inst.ipv4.octets();
    format!(
        "{{\n  {}, {},\n  c16(0x0800),\n  \
         0x45, 0x00, c16(40), drnd(2), c16(0x4000), 64, 6, csumip(14, 33),\n  \
         198, 19, drnd(1), drnd(1),\n  {d0}, {d1}, {d2}, {d3},\n  \
         drnd(2), c16(8080), drnd(4), c32(0),\n  0x50, 0x02, c16(64240), csumtcp(14, 34), c16(0),\n}}\n",
        bytes(&inst.mac),
        bytes(&out.mac),
    )
}

fn status(inst: &Host) -> serde_json::Value {
    let out = sgctl(inst, &["status", "--json"]);
    assert!(out.status.success(), "sgctl status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status json")
}

#[test]
fn a_syn_flood_fills_only_the_opening_table_and_cuts_no_connection() {
    if !kernel_tests_enabled("a_syn_flood_fills_only_the_opening_table_and_cuts_no_connection") {
        return;
    }
    let (_lab, inst, out) = instance_and_outside("synflood").unwrap();
    let dir = std::env::temp_dir().join(format!("sgctl-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("rules.toml");
    std::fs::write(&config, RULES).unwrap();
    let agent = Agent::start(&inst, &["run", "--config", config.to_str().unwrap(), "--xdp-mode", "generic"], "applied")
        .expect("agent");
    let _servers = [inst.serve(Proto::Tcp, 8080).unwrap(), inst.serve(Proto::Tcp, 8081).unwrap()];
    let _outside = out.serve(Proto::Tcp, 7070).unwrap();

    // Long-lived outbound connections, established before the flood.
    let mut streams: Vec<TcpStream> = (0..LONG_LIVED)
        .map(|i| {
            let mut s = inst.connect(out.addr(false), 7070, T).unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
            assert!(echo_over(&mut s, b"hello"), "connection {i} before the flood");
            s.set_read_timeout(Some(T)).unwrap();
            s
        })
        .collect();
    let before = status(&inst);
    assert_eq!(before["maps"]["evicted"]["assured"], 0, "{before}");

    let conf = dir.join("syn.trafgen");
    std::fs::write(&conf, syn_flood_conf(&inst, &out)).unwrap();
    let (cpu_before, _) = cpu_and_rss(agent.pid());
    let started = Instant::now();
    let mut trafgen = out
        .command("trafgen")
        .args(["--dev", &out.iface, "--conf"])
        .arg(&conf)
        .args(["--num", &FLOOD.to_string(), "--cpus", "1", "--no-sock-mem", "--notouch-irq", "--no-cpu-stats"])
        .args(["--rate", "40000pps"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("trafgen (netsniff-ng, installed by setup)");

    // While it runs: data on every long-lived connection, new allowed connections
    // connect, denied ones fail.
    let (mut rounds, mut peak_rss) = (0u32, 0u64);
    let mut failures = Vec::new();
    loop {
        let running = trafgen.try_wait().expect("trafgen status").is_none();
        for (i, s) in streams.iter_mut().enumerate() {
            let message = format!("round {rounds} on {i}");
            let mut buf = vec![0u8; message.len()];
            if s.write_all(message.as_bytes()).and_then(|()| s.read_exact(&mut buf)).is_err()
                || buf != message.as_bytes()
            {
                failures.push(format!("long-lived connection {i} cut in round {rounds}"));
            }
        }
        if let Err(e) = out.probe(Proto::Tcp, inst.addr(false), 8080, T) {
            failures.push(format!("a new allowed connection failed in round {rounds}: {e:#}"));
        }
        if out.reaches(Proto::Tcp, inst.addr(false), 8081, Duration::from_millis(300)) {
            failures.push(format!("a denied connection succeeded in round {rounds}"));
        }
        // The agent answers during the flood.
        let _ = status(&inst);
        peak_rss = peak_rss.max(cpu_and_rss(agent.pid()).1);
        rounds += 1;
        if !running {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "trafgen did not finish");
    }
    let flood_time = started.elapsed();
    let trafgen = trafgen.wait_with_output().unwrap();
    assert!(trafgen.status.success(), "trafgen: {}", String::from_utf8_lossy(&trafgen.stderr));
    let (cpu_after, rss) = cpu_and_rss(agent.pid());
    assert!(failures.is_empty(), "during the flood:\n{}", failures.join("\n"));
    assert!(rounds >= 2, "only {rounds} rounds of checks ran during the flood");

    let after = status(&inst);
    let maps = &after["maps"];
    let evicted_opening = maps["evicted"]["opening"].as_u64().unwrap();
    let opening = &maps["opening_sessions"];
    let assured = &maps["sessions"];
    eprintln!(
        "flood: {FLOOD} spoofed SYNs in {:.1} s ({rounds} rounds of checks); agent CPU {:.2} s, RSS {} KiB \
         (peak {peak_rss} KiB); opening table {} of {}, assured {} of {}; evicted: \
         {evicted_opening} opening, {} assured",
        flood_time.as_secs_f64(),
        (cpu_after - cpu_before) as f64 / 100.0,
        rss,
        opening["used"],
        opening["capacity"],
        assured["used"],
        assured["capacity"],
        maps["evicted"]["assured"],
    );
    assert_eq!(maps["evicted"]["assured"], 0, "no assured session was evicted: {after}");
    assert_eq!(opening["capacity"].as_u64(), Some(MAX_SESSIONS / 4), "{after}");
    // Most SYNs opened a session that the LRU then evicted (some may share a random
    // address and port with another, and the table holds the last ones).
    assert!(evicted_opening >= FLOOD * 9 / 10 - MAX_SESSIONS / 4, "only {evicted_opening} evicted: {after}");
    for (i, s) in streams.iter_mut().enumerate() {
        assert!(echo_over(s, b"after the flood"), "long-lived connection {i} after the flood");
    }
    // `sgctl stats` says the same, with the live sessions by who opened them: the
    // long-lived ones on egress, the flood's on ingress.
    let stats = sgctl(&inst, &["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats json");
    let at = |direction: &str| {
        stats["interfaces"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["iface"] == "inst0" && i["direction"] == direction))
            .and_then(|i| i["sessions_live"].as_u64())
            .unwrap_or_else(|| panic!("no {direction} sessions_live in {stats}"))
    };
    assert!(at("egress") >= LONG_LIVED as u64, "{stats}");
    assert!(at("ingress") >= opening["used"].as_u64().unwrap(), "the flood's sessions were opened on ingress: {stats}");
    assert_eq!(stats["sessions_evicted"]["assured"], 0, "{stats}");
    assert!(stats["sessions_evicted"]["opening"].as_u64().unwrap() >= evicted_opening, "{stats}");
    let _ = std::fs::remove_dir_all(&dir);
}
