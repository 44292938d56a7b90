//! What the agent reports, with the real binary and real traffic in namespaces: per-rule
//! counters (kept across an apply that keeps the rule, zero for a changed one, flow-cache
//! hits included), `sgctl stats --unused`, verdict events with their rule, group and
//! 5-tuple, the rate limit and the lost-event accounting (emitted = delivered +
//! suppressed + lost), and audit mode recorded as audit-drop.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;
use sg_tests::{
    agent::sgctl,
    deploy::enforce,
    kernel::kernel_tests_enabled,
    netns::{Host, instance_and_outside},
    traffic::{Proto, echo_over, in_netns},
};

const INST: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

fn write(tag: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sgctl-observe-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rules.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// sg-inst on inst0: web on `web_port` ("web"), echo requests ("ping"), UDP 5353 that
/// nothing will send to ("mdns, unused"), and a drop of UDP 7000 ("block 7000"); `mode`
/// is the interface's.
fn rules(web_port: u16, mode: &str, ping_first: bool) -> String {
    let ping = r#"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "icmp"
  icmp_type = 8
  source = "0.0.0.0/0"
  description = "ping"
"#;
    let web = format!(
        r#"
  [[security_group.rule]]
  direction = "ingress"
  protocol = "tcp"
  port_range = "{web_port}/{web_port}"
  source = "0.0.0.0/0"
  description = "web"
"#
    );
    let (first, second) = if ping_first { (ping.to_string(), web) } else { (web, ping.to_string()) };
    format!(
        r#"
[[security_group]]
id = "sg-inst"
type = "basic"
members = ["198.18.1.1"]
{first}{second}
  [[security_group.rule]]
  direction = "ingress"
  protocol = "udp"
  port_range = "5353/5353"
  source = "0.0.0.0/0"
  description = "mdns, unused"

  [[security_group.rule]]
  direction = "ingress"
  policy = "drop"
  protocol = "udp"
  port_range = "7000/7000"
  source = "0.0.0.0/0"
  description = "block 7000"

[[interface]]
name = "inst0"
security_groups = ["sg-inst"]
mode = "{mode}"
"#
    )
}

fn json(host: &Host, args: &[&str]) -> Value {
    let out = sgctl(host, args);
    assert!(out.status.success(), "sgctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("sgctl {args:?}: {e}: {:?}", out.stdout))
}

/// The `sgctl stats --json` row of the rule described `description`.
fn rule<'v>(stats: &'v Value, description: &str) -> &'v Value {
    stats["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["description"] == description)
        .unwrap_or_else(|| panic!("no rule {description:?} in {stats}"))
}

fn counts(r: &Value) -> (u64, u64, u64) {
    (r["packets"].as_u64().unwrap(), r["bytes"].as_u64().unwrap(), r["sessions"].as_u64().unwrap())
}

/// Packets the rules and sessions passed on inst0, both directions (what the rule
/// counters must add up to when only rule-admitted traffic flows).
fn decided(stats: &Value) -> u64 {
    stats["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["counters"]["by_step"].as_array().unwrap().clone())
        .filter(|pair| {
            let name = pair[0].as_str().unwrap();
            name.starts_with("rule/") || name.starts_with("session/")
        })
        .map(|pair| pair[1].as_u64().unwrap())
        .sum()
}

/// `n` datagrams from one socket (source port `port + 1`) to the instance's `port`.
fn send_udp(out: &Host, port: u16, n: usize) {
    in_netns(&out.ns, move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port + 1))?;
        for _ in 0..n {
            socket.send_to(b"observed", SocketAddr::new(INST.into(), port))?;
        }
        Ok(())
    })
    .unwrap();
}

fn events(host: &Host) -> Vec<Value> {
    let out = sgctl(host, &["log", "--json"]);
    assert!(out.status.success(), "sgctl log: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The ingress drop-event counts of inst0.
fn drop_events(stats: &Value) -> (u64, u64, u64, u64) {
    let iface = stats["interfaces"].as_array().unwrap().iter().find(|i| i["direction"] == "ingress").expect("ingress");
    let e = iface["events"].as_array().unwrap().iter().find(|e| e["kind"] == "drop").expect("drop events");
    let n = |k: &str| e[k].as_u64().unwrap();
    (n("emitted"), n("delivered"), n("suppressed"), n("lost"))
}

/// The packets inst0 dropped on ingress, by any step: each one an event. Not only the
/// test's datagrams: the default may drop an IPv6 multicast listener report meanwhile.
fn ingress_drops(stats: &Value) -> u64 {
    let iface = stats["interfaces"].as_array().unwrap().iter().find(|i| i["direction"] == "ingress").expect("ingress");
    iface["counters"]["dropped"].as_u64().unwrap()
}

/// Polls `sgctl stats` until `done` holds (the agent reads the ring as it fills).
fn stats_until(host: &Host, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = json(host, &["stats", "--json"]);
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rule_counters_follow_real_traffic_and_survive_an_apply_that_keeps_the_rule() {
    if !kernel_tests_enabled("rule_counters_follow_real_traffic_and_survive_an_apply_that_keeps_the_rule") {
        return;
    }
    let (_lab, inst, out) = instance_and_outside("obs-count").unwrap();
    let config = write("count", &rules(8080, "enforce", true));
    let _agent = enforce(&inst, &config, &[]).unwrap();
    let inst_addr: IpAddr = INST.into();
    // Five pings: each a new session (request by the rule, reply by its session), 98
    // bytes a frame.
    for _ in 0..5 {
        assert!(out.ping(inst_addr), "ping passes");
    }
    let stats = json(&inst, &["stats", "--json"]);
    assert_eq!(counts(rule(&stats, "ping")), (10, 980, 5), "{stats}");
    // `sgctl status` shows how full the maps are: five ICMP sessions; a handle for each
    // compiled rule (the file's four and each direction's intra-group and default steps).
    let status = json(&inst, &["status", "--json"]);
    let maps = &status["maps"];
    assert_eq!(maps["sessions"]["used"], 5, "{status}");
    assert_eq!(maps["sessions"]["capacity"], 262_144, "{status}");
    assert_eq!(maps["rule_handles"]["used"], status["rules"], "one handle a rule: {status}");
    // Rule info is taken in ranges with a little room beyond each set's rules
    // (`capacity::with_slack`: 4 + 1/32 more), so the next set fits them.
    let in_force = status["rules"].as_u64().unwrap();
    let rule_info = maps["rule_info"]["used"].as_u64().unwrap();
    assert!(rule_info >= in_force && rule_info <= in_force + in_force / 32 + 2 * 4, "{status}");
    assert!(maps["rule_vectors"]["used"].as_u64().unwrap() > 0, "{status}");
    // Every rule set has at least the IPv6 bound at `::`: two rule sets, two bounds.
    assert!(maps["ipv6_peer_bounds"]["used"].as_u64().unwrap() >= 2, "{status}");
    assert!(maps["ipv6_peer_bounds"]["capacity"].as_u64().unwrap() > 0, "{status}");
    assert!(maps["fragments"]["capacity"].as_u64().unwrap() > 0, "{status}");
    assert!(status["uptime_s"].as_f64().unwrap() > 0.0, "{status}");
    // A TCP connection carrying 200 echoes: most of its packets are flow-cache hits.
    let _server = inst.serve(Proto::Tcp, 8080).unwrap();
    let before = decided(&stats);
    let mut stream = out.connect(inst_addr, 8080, Duration::from_secs(2)).unwrap();
    for i in 0..200 {
        assert!(echo_over(&mut stream, format!("message {i}").as_bytes()), "echo {i}");
    }
    drop(stream);
    std::thread::sleep(Duration::from_millis(300));
    let stats = json(&inst, &["stats", "--json"]);
    let (packets, bytes, sessions) = counts(rule(&stats, "web"));
    assert_eq!(sessions, 1, "{stats}");
    assert!(packets >= 400, "both directions of 200 echoes: {packets}");
    assert_eq!(packets, decided(&stats) - before, "every packet the rules and sessions passed is on its rule: {stats}");
    assert!(bytes >= packets * 66, "{bytes} bytes for {packets} packets");
    let unused = json(&inst, &["stats", "--json", "--unused"]);
    let names: Vec<&str> =
        unused["rules"].as_array().unwrap().iter().map(|r| r["description"].as_str().unwrap()).collect();
    assert_eq!(names, ["mdns, unused", "block 7000"], "exactly the rules no packet touched");

    // The same rules in another order, under other ids: the counts stay.
    std::fs::write(&config, rules(8080, "enforce", false)).unwrap();
    let applied = sgctl(&inst, &["apply", config.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let kept = json(&inst, &["stats", "--json"]);
    assert_eq!(counts(rule(&kept, "ping")), (10, 980, 5), "moved, not changed: {kept}");
    assert_eq!(counts(rule(&kept, "web")), (packets, bytes, 1));
    // The web rule on another port is another rule: it starts at zero.
    std::fs::write(&config, rules(8081, "enforce", false)).unwrap();
    let applied = sgctl(&inst, &["apply", config.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let changed = json(&inst, &["stats", "--json"]);
    assert_eq!(counts(rule(&changed, "web")), (0, 0, 0), "{changed}");
    assert_eq!(counts(rule(&changed, "ping")), (10, 980, 5));
}

#[test]
fn drops_become_events_with_their_rule_and_every_event_is_accounted() {
    if !kernel_tests_enabled("drops_become_events_with_their_rule_and_every_event_is_accounted") {
        return;
    }
    let (_lab, inst, out) = instance_and_outside("obs-events").unwrap();
    let config = write("events", &rules(8080, "enforce", true));
    // Ten events a second at most, ten at once.
    let mut agent = enforce(&inst, &config, &["--drop-events", "10", "--event-burst", "10"]).unwrap();
    send_udp(&out, 7000, 50);
    let stats = stats_until(&inst, |s| drop_events(s).0 >= 50);
    let (emitted, delivered, suppressed, lost) = drop_events(&stats);
    assert_eq!(emitted, ingress_drops(&stats), "one event per drop: {stats}");
    assert_eq!(delivered + suppressed + lost, emitted, "{stats}");
    assert!(suppressed >= 30 && delivered >= 1, "the limit holds back most of a burst of 50: {stats}");
    assert_eq!(counts(rule(&stats, "block 7000")).0, 50, "every datagram sent was dropped by its rule");
    let log = events(&inst);
    let e = log.iter().find(|e| e["dst_port"] == 7000).unwrap_or_else(|| panic!("no event of the drop in {log:?}"));
    assert_eq!(e["verdict"], "drop");
    assert_eq!(e["kind"], "drop");
    assert_eq!(e["step"], "rule");
    assert_eq!(e["group"], "sg-inst");
    assert_eq!(e["description"], "block 7000");
    assert_eq!(e["rule_id"], 4, "the fourth rule of the file");
    assert_eq!((e["src"].as_str(), e["dst"].as_str()), (Some("198.18.0.1"), Some("198.18.1.1")), "{e}");
    assert_eq!((e["src_port"].as_u64(), e["protocol"].as_u64()), (Some(7001), Some(17)));
    assert_eq!(e["iface"], "inst0");
    assert_eq!(e["direction"], "ingress");

    // With the agent stopped, nobody reads the ring: past its size, events are lost,
    // and counted.
    drop(agent.stop_with(libc::SIGTERM));
    agent = enforce(&inst, &config, &["--drop-events", "unlimited", "--event-ring-kib", "4"]).unwrap();
    let before_stats = json(&inst, &["stats", "--json"]);
    let before = drop_events(&before_stats);
    let before_rule = counts(rule(&before_stats, "block 7000")).0;
    agent.signal(libc::SIGSTOP);
    send_udp(&out, 7000, 500);
    agent.signal(libc::SIGCONT);
    let stats = stats_until(&inst, |s| drop_events(s).0 >= before.0 + 500);
    let (emitted, delivered, suppressed, lost) = drop_events(&stats);
    assert_eq!(counts(rule(&stats, "block 7000")).0 - before_rule, 500, "counted at the sender: {stats}");
    assert_eq!(emitted - before.0, ingress_drops(&stats) - ingress_drops(&before_stats), "{stats}");
    assert_eq!(delivered + suppressed + lost, emitted, "the three counts add up: {stats}");
    assert!(lost - before.3 >= 400, "a 4 KiB ring holds some 50 events: {stats}");
    assert_eq!(suppressed, before.2, "no limit");
}

#[test]
fn audit_mode_passes_and_records_audit_drops() {
    if !kernel_tests_enabled("audit_mode_passes_and_records_audit_drops") {
        return;
    }
    let (_lab, inst, out) = instance_and_outside("obs-audit").unwrap();
    let config = write("audit", &rules(8080, "audit", true));
    inst.run("ip", &["link", "set", "lo", "up"]).unwrap();
    let _agent = enforce(&inst, &config, &["--metrics", "127.0.0.1:9464"]).unwrap();
    let sink = inst.sink(7000).unwrap();
    let inst_addr: IpAddr = INST.into();
    assert!(out.delivers(&sink, inst_addr, 7000), "audit mode drops nothing");
    let stats = stats_until(&inst, |s| drop_events(s).1 >= 1);
    let ingress =
        stats["interfaces"].as_array().unwrap().iter().find(|i| i["direction"] == "ingress").expect("ingress");
    assert!(ingress["counters"]["audit_dropped"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(ingress["counters"]["dropped"], 0, "an audit drop is not a drop: {stats}");
    assert!(counts(rule(&stats, "block 7000")).0 >= 1);
    let log = events(&inst);
    let e = log.iter().find(|e| e["dst_port"] == 7000).unwrap_or_else(|| panic!("no event in {log:?}"));
    assert_eq!(e["verdict"], "audit-drop");
    let only_audit = sgctl(&inst, &["log", "--json", "--verdict", "audit"]);
    assert!(String::from_utf8_lossy(&only_audit.stdout).contains("audit-drop"));
    let no_drops = sgctl(&inst, &["log", "--json", "--verdict", "drop"]);
    assert!(no_drops.stdout.is_empty(), "nothing was dropped");
    let text = scrape(&inst, 9464).expect("scrape");
    let audit = metric(&text, r#"sgctl_packets_total{iface="inst0",direction="ingress",verdict="audit-drop"}"#);
    assert!(audit >= 1, "{text}");
    assert_eq!(metric(&text, r#"sgctl_packets_total{iface="inst0",direction="ingress",verdict="drop"}"#), 0);
}

/// `GET /metrics` on `port` of `host`'s loopback with curl: the body, or why not.
fn scrape(host: &Host, port: u16) -> Result<String, String> {
    let out = host
        .command("curl")
        .args(["-sS", "--fail", "--max-time", "10", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of the sample `series` (name and labels as exposed) in `text`.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}")) as u64
}

#[test]
fn the_metrics_endpoint_serves_the_counters_and_answers_during_applies() {
    if !kernel_tests_enabled("the_metrics_endpoint_serves_the_counters_and_answers_during_applies") {
        return;
    }
    let (_lab, inst, out) = instance_and_outside("obs-metrics").unwrap();
    inst.run("ip", &["link", "set", "lo", "up"]).unwrap();
    let config = write("metrics", &rules(8080, "enforce", true));
    let _agent = enforce(&inst, &config, &["--metrics", "127.0.0.1:9465"]).unwrap();
    for _ in 0..3 {
        assert!(out.ping(INST.into()));
    }
    send_udp(&out, 7000, 20);
    let text = scrape(&inst, 9465).expect("scrape");
    let ping = r#"{iface="inst0",direction="ingress",group="sg-inst",rule="1",step="rule"}"#;
    assert_eq!(metric(&text, &format!("sgctl_rule_packets_total{ping}")), 6, "{text}");
    assert_eq!(metric(&text, &format!("sgctl_rule_bytes_total{ping}")), 588);
    assert_eq!(metric(&text, &format!("sgctl_rule_sessions_total{ping}")), 3);
    assert_eq!(metric(&text, r#"sgctl_drops_total{iface="inst0",direction="ingress",reason="rule"}"#), 20);
    let emitted = r#"sgctl_events_total{iface="inst0",direction="ingress",kind="drop",outcome="emitted"}"#;
    // Every ingress drop is an event: the 20 datagrams, and whatever else the default
    // dropped meanwhile (an IPv6 multicast listener report, say).
    let all_drops: u64 = text
        .lines()
        .filter(|l| l.starts_with(r#"sgctl_drops_total{iface="inst0",direction="ingress","#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(all_drops >= 20, "{text}");
    assert_eq!(metric(&text, emitted), all_drops, "{text}");
    assert!(text.contains("sgctl_last_apply_seconds"), "{text}");
    assert!(text.contains("sgctl_session_capacity 262144"), "{text}");
    assert_eq!(metric(&text, r#"sgctl_map_entries{map="sessions"}"#), 3, "three ICMP sessions: {text}");
    assert_eq!(metric(&text, r#"sgctl_map_capacity{map="sessions"}"#), 262_144);
    assert_eq!(metric(&text, r#"sgctl_sessions_live{iface="inst0",direction="ingress"}"#), 3, "{text}");
    assert_eq!(metric(&text, r#"sgctl_sessions_live{iface="inst0",direction="egress"}"#), 0, "{text}");
    assert_eq!(metric(&text, r#"sgctl_map_entries{map="rule_handles"}"#), metric(&text, "sgctl_rules"));
    assert!(metric(&text, r#"sgctl_map_capacity{map="ipv6_peer_bounds"}"#) > 0, "{text}");
    // Scrapes while applies switch the rules back and forth: every one answers.
    let path = config.to_str().unwrap().to_string();
    let applier = {
        let inst = inst.clone();
        let other = write("metrics-other", &rules(8081, "enforce", false));
        std::thread::spawn(move || {
            for i in 0..20 {
                let file = if i % 2 == 0 { other.to_str().unwrap().to_string() } else { path.clone() };
                let applied = sgctl(&inst, &["apply", &file]);
                assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
            }
        })
    };
    let mut scrapes = 0;
    while !applier.is_finished() {
        let text = scrape(&inst, 9465).unwrap_or_else(|e| panic!("scrape {scrapes} during the applies failed: {e}"));
        assert!(text.ends_with("# EOF\n"), "a whole exposition: {text}");
        scrapes += 1;
    }
    applier.join().unwrap();
    assert!(scrapes >= 2, "{scrapes} scrapes");
    let text = scrape(&inst, 9465).unwrap();
    assert_eq!(metric(&text, "sgctl_applies_total"), 20, "{text}");
}
