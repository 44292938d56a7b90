//! The agent is not the firewall: enforcement pinned by `sgctl run` outlives a `kill -9`
//! and a SIGTERM, a new agent adopts it without rewriting it, an upgrade to a build with
//! another kernel object and an apply that outgrows the maps move to a new generation
//! under traffic without losing or leaking a packet, applies attach and detach
//! interfaces, 100 applies under load neither stall a stream nor let a probe through,
//! and `sgctl down` leaves nothing. Real binary, real namespaces, real sockets.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sg_tests::{
    agent::{Agent, sgctl_pinned},
    deploy::DownOnDrop,
    kernel::{kernel_tests_enabled, sgctl_bin, variant_bin},
    netns::{Host, instance_and_outside},
    traffic::{EchoStream, Flood, Proto, Server, Sink, echo_over},
};

const T: Duration = Duration::from_millis(1500);
/// The instance echoes UDP on ECHO_UDP and TCP on ECHO_TCP, both admitted from `out`;
/// PROBE is a sink no rule set admits.
const ECHO_UDP: u16 = 5001;
const PROBE: u16 = 5002;
const ECHO_TCP: u16 = 8080;
/// Admitted only by the "wider" rule sets.
const EXTRA_TCP: u16 = 9090;

/// An advanced group: ingress admits the echo ports (and `extra_port` when given) from
/// `out`, egress admits nothing, so every reply needs its session. `tail` is appended
/// (more rules, `[sessions]`, interfaces).
fn config(extra_port: Option<u16>, tail: &str) -> String {
    let mut rules = String::new();
    let mut port = |proto: &str, p: u16| {
        rules.push_str(&format!(
            "  [[security_group.rule]]\n  direction = \"ingress\"\n  protocol = \"{proto}\"\n  port_range = \
             \"{p}/{p}\"\n  source = \"198.18.0.1\"\n"
        ));
    };
    port("udp", ECHO_UDP);
    port("tcp", ECHO_TCP);
    if let Some(p) = extra_port {
        port("tcp", p);
    }
    format!(
        "[[security_group]]\nid = \"sg-inst\"\ntype = \"advanced\"\nmembers = [\"198.18.1.1\", \"198.18.1.2\"]\n{rules}\
         {tail}"
    )
}

const INST0: &str = "[[interface]]\nname = \"inst0\"\nsecurity_groups = [\"sg-inst\"]\n";

fn write(tag: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sgctl-lifecycle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn run_args(config: &Path) -> Vec<String> {
    ["run", "--config", config.to_str().unwrap(), "--xdp-mode", "generic", "--interval", "0"].map(String::from).to_vec()
}

fn start(bin: &Path, inst: &Host, config: &Path, ready: &str) -> Agent {
    let args = run_args(config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start_pinned(bin, inst, &args, ready).unwrap_or_else(|e| panic!("starting sgctl: {e:#}"))
}

/// The running agent's `status --json`.
fn status(inst: &Host) -> serde_json::Value {
    let out = sgctl_pinned(inst, &["status", "--json"]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status json ({e}): {}{}", text(&out.stdout), text(&out.stderr)))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `ip -j -d link show IFACE` in the host's namespace.
fn link(host: &Host, iface: &str) -> serde_json::Value {
    let out = Command::new("ip").args(["-n", &host.ns, "-j", "-d", "link", "show", iface]).output().unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone()
}

fn xdp_program(host: &Host, iface: &str) -> Option<u64> {
    link(host, iface)["xdp"]["prog"]["id"].as_u64()
}

/// The configuration id generation `generation` publishes for `iface`, read from the
/// pinned map with bpftool: any apply changes it, so an unchanged one means nothing was
/// rewritten.
fn published(pin_dir: &str, generation: u64, host: &Host, iface: &str) -> u32 {
    let ifindex = link(host, iface)["ifindex"].as_u64().unwrap() as u32;
    let key: Vec<String> = ifindex.to_le_bytes().iter().map(u8::to_string).collect();
    let map = format!("{pin_dir}/gen-{generation}/SG_IFACE_INDEX");
    let out = Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned", &map, "key"])
        .args(&key)
        .output()
        .expect("bpftool");
    let value: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool map lookup {map} ({e}): {}", text(&out.stderr)));
    let bytes: Vec<u8> = value["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    u32::from_le_bytes(bytes[..4].try_into().unwrap())
}

/// The instance's servers and the traffic that must get through every change unharmed.
struct Traffic {
    _servers: (Server, Server),
    sink: Sink,
    stream: EchoStream,
    flood: Flood,
    tcp: TcpStream,
}

impl Traffic {
    fn start(inst: &Host, out: &Host) -> Self {
        let servers = (inst.serve(Proto::Udp, ECHO_UDP).unwrap(), inst.serve(Proto::Tcp, ECHO_TCP).unwrap());
        let sink = inst.sink(PROBE).unwrap();
        let to = |port| SocketAddr::new(IpAddr::V4(inst.ipv4), port);
        let mut tcp = out.connect(inst.ipv4.into(), ECHO_TCP, T).unwrap();
        assert!(echo_over(&mut tcp, b"opened"), "the TCP connection works before anything changes");
        let stream = out.echo_stream(to(ECHO_UDP), 250).unwrap();
        let flood = out.flood(to(PROBE), 250).unwrap();
        Self { _servers: servers, sink, stream, flood, tcp }
    }

    /// The TCP connection opened at the start still carries data.
    fn tcp_alive(&mut self, when: &str) {
        assert!(echo_over(&mut self.tcp, when.as_bytes()), "the TCP connection opened before is cut {when}");
    }

    /// Every datagram echoed, no probe delivered; returns the counts.
    fn finish(self) -> (u64, u64) {
        let stream = self.stream.finish().unwrap();
        let probes = self.flood.finish().unwrap();
        assert!(stream.sent > 100, "the stream ran: {stream:?}");
        assert_eq!(stream.echoed, stream.sent, "every datagram of the stream and its echo got through: {stream:?}");
        assert!(probes > 100, "probes were sent: {probes}");
        assert_eq!(self.sink.count(), 0, "none of {probes} probes the rules drop arrived");
        (stream.sent, probes)
    }
}

/// `sgctl down` removed everything: no pins, no programs or links on the interface, no
/// qdisc of ours, and traffic is no longer filtered.
fn assert_down(inst: &Host, out: &Host, pin_dir: &str, program: u64) {
    let done = sgctl_pinned(inst, &["down"]);
    assert!(done.status.success(), "sgctl down: {}{}", text(&done.stdout), text(&done.stderr));
    assert!(!Path::new(pin_dir).exists(), "{pin_dir} removed");
    assert_eq!(xdp_program(inst, "inst0"), None, "no XDP program on inst0");
    let net = Command::new("ip").args(["netns", "exec", &inst.ns, "bpftool", "-j", "net", "show"]).output().unwrap();
    assert!(!text(&net.stdout).contains("sg_"), "no program of ours on any hook: {}", text(&net.stdout));
    let qdisc = Command::new("tc").args(["-n", &inst.ns, "qdisc", "show", "dev", "inst0"]).output().unwrap();
    assert!(!text(&qdisc.stdout).contains("clsact"), "no clsact qdisc left: {}", text(&qdisc.stdout));
    let prog = Command::new("bpftool").args(["prog", "show", "id", &program.to_string()]).output().unwrap();
    assert!(!prog.status.success(), "program {program} is gone from the kernel");
    let sink = inst.sink(PROBE + 1).unwrap();
    assert!(out.delivers(&sink, inst.ipv4.into(), PROBE + 1), "traffic is unfiltered after down");
}

#[test]
fn enforcement_outlives_the_agent_and_the_next_one_adopts_it_untouched() {
    if !kernel_tests_enabled("enforcement_outlives_the_agent") {
        return;
    }
    let (_lab, inst, out) = instance_and_outside("life").unwrap();
    let _down = DownOnDrop(vec![inst.clone()]);
    let first = write("first", &config(None, INST0));
    let mut agent = start(&sgctl_bin(), &inst, &first, "applied");
    let s = status(&inst);
    let pin_dir = s["pin_dir"].as_str().unwrap().to_string();
    let generation = s["programs_generation"].as_u64().unwrap();
    let before = published(&pin_dir, generation, &inst, "inst0");
    let program = xdp_program(&inst, "inst0").expect("an XDP program on inst0");
    let mut traffic = Traffic::start(&inst, &out);
    std::thread::sleep(Duration::from_millis(300));

    // kill -9: nothing in the kernel changes.
    agent.stop_with(libc::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    traffic.tcp_alive("with no agent running");
    assert_eq!(xdp_program(&inst, "inst0"), Some(program), "the same program stays attached");
    assert!(out.probe(Proto::Tcp, inst.ipv4.into(), ECHO_TCP, T).is_ok(), "a new allowed connection opens");
    assert!(out.probe(Proto::Tcp, inst.ipv4.into(), EXTRA_TCP, T).is_err(), "a denied one still fails");

    // A new agent with the same rules adopts them as they are.
    let mut agent = start(&sgctl_bin(), &inst, &first, "applied");
    assert!(
        agent.seen.iter().any(|l| l.contains(&format!("adopted generation {generation} as it was"))),
        "{:#?}",
        agent.seen
    );
    assert_eq!(published(&pin_dir, generation, &inst, "inst0"), before, "no rule was rewritten");
    assert_eq!(xdp_program(&inst, "inst0"), Some(program));

    // SIGTERM: the agent goes, enforcement stays.
    agent.stop_with(libc::SIGTERM).unwrap();
    assert!(agent.seen.iter().any(|l| l.contains("enforcement stays on inst0")), "{:#?}", agent.seen);
    traffic.tcp_alive("after SIGTERM");
    assert!(out.probe(Proto::Tcp, inst.ipv4.into(), EXTRA_TCP, T).is_err(), "still enforced after SIGTERM");

    // Other rules: adopted, then applied like any apply.
    let wider = write("wider", &config(Some(EXTRA_TCP), INST0));
    let _extra = inst.serve(Proto::Tcp, EXTRA_TCP).unwrap();
    let agent = start(&sgctl_bin(), &inst, &wider, "applied");
    assert!(agent.seen.iter().any(|l| l.contains("then applied the new rule file")), "{:#?}", agent.seen);
    assert_ne!(published(&pin_dir, generation, &inst, "inst0"), before, "the new rules were switched in");
    assert!(out.probe(Proto::Tcp, inst.ipv4.into(), EXTRA_TCP, T).is_ok(), "the new rules are in force");
    traffic.tcp_alive("after the new agent applied other rules");
    let (sent, probes) = traffic.finish();
    eprintln!("stream: {sent} datagrams echoed, {probes} probes dropped, across kill -9, SIGTERM and two restarts");
    drop(agent);
    assert_down(&inst, &out, &pin_dir, program);
}

#[test]
fn an_upgrade_under_traffic_moves_to_the_new_programs_losing_and_leaking_nothing() {
    if !kernel_tests_enabled("an_upgrade_under_traffic") {
        return;
    }
    let Some(variant) = variant_bin("an_upgrade_under_traffic") else { return };
    let (_lab, inst, out) = instance_and_outside("upgr").unwrap();
    let _down = DownOnDrop(vec![inst.clone()]);
    let rules = write("upgrade", &config(None, INST0));
    let mut agent = start(&sgctl_bin(), &inst, &rules, "applied");
    let s = status(&inst);
    let (pin_dir, object) = (s["pin_dir"].as_str().unwrap().to_string(), s["object"].clone());
    let mut traffic = Traffic::start(&inst, &out);
    std::thread::sleep(Duration::from_millis(300));
    agent.stop_with(libc::SIGTERM).unwrap();

    // The new build: another object, so a new generation takes over under traffic.
    let mut agent = start(&variant, &inst, &rules, "applied");
    assert!(agent.seen.iter().any(|l| l.contains("moved from generation 1 to 2")), "{:#?}", agent.seen);
    let s = status(&inst);
    assert_eq!(s["programs_generation"], 2);
    assert_ne!(s["object"], object, "the variant runs its own object");
    assert!(!Path::new(&format!("{pin_dir}/gen-1")).exists(), "the old generation is unpinned");
    traffic.tcp_alive("after the upgrade");
    assert!(out.probe(Proto::Tcp, inst.ipv4.into(), EXTRA_TCP, T).is_err(), "still enforced after the upgrade");
    std::thread::sleep(Duration::from_millis(300));
    agent.stop_with(libc::SIGKILL).unwrap();

    // And back (a downgrade is the same move).
    let agent = start(&sgctl_bin(), &inst, &rules, "applied");
    assert!(agent.seen.iter().any(|l| l.contains("moved from generation 2 to 3")), "{:#?}", agent.seen);
    traffic.tcp_alive("after the downgrade");
    let (sent, probes) = traffic.finish();
    eprintln!("upgrade and downgrade under traffic: {sent} datagrams all echoed, {probes} probes all dropped");
    let program = xdp_program(&inst, "inst0").unwrap();
    drop(agent);
    assert_down(&inst, &out, &pin_dir, program);
}

#[test]
fn an_apply_that_outgrows_the_maps_moves_generation_under_traffic() {
    if !kernel_tests_enabled("an_apply_that_outgrows_the_maps") {
        return;
    }
    let (_lab, inst, out) = instance_and_outside("grow").unwrap();
    let _down = DownOnDrop(vec![inst.clone()]);
    let small = write("small", &config(None, INST0));
    let agent = start(&sgctl_bin(), &inst, &small, "applied");
    let vectors = status(&inst)["vector_capacity"].as_u64().unwrap();
    let mut traffic = Traffic::start(&inst, &out);
    std::thread::sleep(Duration::from_millis(300));
    // More distinct ports than the maps were sized for, and a larger session table.
    let mut many = String::new();
    for i in 0..(vectors as u16) {
        let port = 20_000 + i;
        many.push_str(&format!(
            "  [[security_group.rule]]\n  direction = \"ingress\"\n  protocol = \"tcp\"\n  port_range = \
             \"{port}/{port}\"\n  source = \"198.18.0.1\"\n"
        ));
    }
    let big = write("big", &format!("{}{many}[sessions]\nmax_sessions = 300000\n{INST0}", config(None, "")));
    // What the rules counted so far (the traffic's rules have packets).
    let counted = |stats: &serde_json::Value| -> Vec<(u64, String, u64)> {
        stats["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["step"] == "rule" && r["packets"].as_u64() > Some(0))
            .map(|r| {
                (
                    r["rule_id"].as_u64().unwrap(),
                    r["direction"].as_str().unwrap().to_string(),
                    r["packets"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let stats_json = || -> serde_json::Value {
        let out = sgctl_pinned(&inst, &["stats", "--json"]);
        assert!(out.status.success(), "stats: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let before = counted(&stats_json());
    assert!(!before.is_empty(), "the traffic is counted on its rules");
    let reply = sgctl_pinned(&inst, &["apply", big.to_str().unwrap(), "--json"]);
    assert!(reply.status.success(), "apply: {}{}", text(&reply.stdout), text(&reply.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&reply.stdout).unwrap();
    assert_eq!(reply["applied"]["regenerated"], true, "{reply}");
    assert_eq!(reply["applied"]["programs_generation"], 2, "{reply}");
    let s = status(&inst);
    assert_eq!(s["session_capacity"], 300_000);
    assert!(s["vector_capacity"].as_u64().unwrap() > vectors, "{s}");
    traffic.tcp_alive("after the maps grew");
    let after = counted(&stats_json());
    for (rule, direction, packets) in &before {
        let now = after.iter().find(|(r, d, _)| r == rule && d == direction).map_or(0, |(_, _, n)| *n);
        assert!(now >= *packets, "rule {rule} {direction}: {packets} packets before the new maps, {now} after");
    }
    let _far = inst.serve(Proto::Tcp, 20_000 + vectors as u16 - 1).unwrap();
    assert!(out.probe(Proto::Tcp, inst.ipv4.into(), 20_000 + vectors as u16 - 1, T).is_ok(), "the new rules decide");
    let (sent, probes) = traffic.finish();
    eprintln!("maps grown under traffic: {sent} datagrams all echoed, {probes} probes all dropped");
    drop(agent);
}

#[test]
fn applies_attach_and_detach_interfaces() {
    if !kernel_tests_enabled("applies_attach_and_detach_interfaces") {
        return;
    }
    let (mut lab, inst, out) = instance_and_outside("ifaces").unwrap();
    let second =
        lab.add_interface(&inst, "inst1", "198.18.1.2".parse().unwrap(), "2001:db8::1:2".parse().unwrap()).unwrap();
    lab.resolve_neighbours().unwrap();
    let _down = DownOnDrop(vec![inst.clone()]);
    let sink = inst.sink(PROBE + 2).unwrap();
    let delivered = |addr: IpAddr| out.delivers(&sink, addr, PROBE + 2);
    let one = write("one", &config(None, INST0));
    let agent = start(&sgctl_bin(), &inst, &one, "applied");
    assert!(!delivered(inst.ipv4.into()), "inst0 is enforced");
    assert!(delivered(second.ipv4.into()), "inst1 is not, yet");

    let inst1 = "[[interface]]\nname = \"inst1\"\nsecurity_groups = [\"sg-inst\"]\n";
    let both = write("both", &config(None, &format!("{INST0}{inst1}")));
    let reply = sgctl_pinned(&inst, &["apply", both.to_str().unwrap(), "--json"]);
    let reply: serde_json::Value = serde_json::from_slice(&reply.stdout).unwrap();
    assert_eq!(reply["applied"]["attached"], serde_json::json!(["inst1"]), "{reply}");
    assert!(!delivered(second.ipv4.into()), "inst1 is enforced after the apply");
    assert!(xdp_program(&inst, "inst1").is_some());

    let only_second = write("second", &config(None, inst1));
    let reply = sgctl_pinned(&inst, &["apply", only_second.to_str().unwrap(), "--json"]);
    let reply: serde_json::Value = serde_json::from_slice(&reply.stdout).unwrap();
    assert_eq!(reply["applied"]["detached"], serde_json::json!(["inst0"]), "{reply}");
    assert_eq!(xdp_program(&inst, "inst0"), None, "nothing of ours left on inst0");
    assert!(delivered(inst.ipv4.into()), "inst0 is no longer filtered");
    assert!(!delivered(second.ipv4.into()), "inst1 still is");
    drop(agent);
}

#[test]
fn a_hundred_applies_under_load_stall_nothing_and_let_no_probe_through() {
    if !kernel_tests_enabled("a_hundred_applies_under_load") {
        return;
    }
    let (_lab, inst, out) = instance_and_outside("reload").unwrap();
    let _down = DownOnDrop(vec![inst.clone()]);
    let icmp = "  [[security_group.rule]]\n  direction = \"ingress\"\n  protocol = \"icmp\"\n  port_range = \"-1/-1\"\n  \
                source = \"198.18.0.1\"\n";
    let a = write("reload-a", &config(None, &format!("{icmp}{INST0}")));
    let b = write("reload-b", &config(Some(EXTRA_TCP), &format!("{icmp}{INST0}")));
    let agent = start(&sgctl_bin(), &inst, &a, "applied");
    let traffic = Traffic::start(&inst, &out);
    let mut ping = out
        .command("ping")
        .args(["-q", "-i", "0.005", "-w", "60", &inst.ipv4.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A TCP stream: echo after echo, the longest wait between two recorded.
    let mut tcp = out.connect(inst.ipv4.into(), ECHO_TCP, Duration::from_secs(5)).unwrap();
    assert!(echo_over(&mut tcp, &[0x42; 1024]), "the stream works before the applies");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let streamer = std::thread::spawn(move || {
        let (mut longest, mut echoes, mut last) = (Duration::ZERO, 0u64, Instant::now());
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let mut back = [0u8; 1024];
            if let Err(e) = tcp.write_all(&[0x42; 1024]).and_then(|()| tcp.read_exact(&mut back)) {
                return Err(format!("the TCP stream broke after {echoes} echoes: {e}"));
            }
            echoes += 1;
            longest = longest.max(last.elapsed());
            last = Instant::now();
        }
        Ok((longest, echoes))
    });
    let started = Instant::now();
    for i in 0..100 {
        let file = if i % 2 == 0 { &b } else { &a };
        let reply = sgctl_pinned(&inst, &["apply", file.to_str().unwrap(), "--json"]);
        assert!(reply.status.success(), "apply {i}: {}{}", text(&reply.stdout), text(&reply.stderr));
    }
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let joined = streamer.join().unwrap();
    if joined.is_err() {
        let listed = sgctl_pinned(&inst, &["sessions", "--json"]);
        eprintln!("sessions: {}", text(&listed.stdout));
        let st = sgctl_pinned(&inst, &["status", "inst0", "--json"]);
        eprintln!("status: {}", text(&st.stdout));
    }
    let (longest, echoes) = joined.unwrap();
    let _ = ping.kill();
    let _ = ping.wait();
    let (sent, probes) = traffic.finish();
    eprintln!(
        "100 applies in {:.1} s under load: TCP stream {echoes} echoes, longest wait {:.0} ms; {sent} datagrams all \
         echoed; {probes} probes all dropped",
        took.as_secs_f64(),
        longest.as_secs_f64() * 1e3
    );
    // Linux's initial retransmission timeout is 1 s: a wait beyond it means a segment
    // was lost and its retransmission too.
    assert!(longest < Duration::from_secs(1), "the stream stalled {longest:?}");
    assert_eq!(status(&inst)["generation"], 101, "every apply took effect");
    drop(agent);
}

#[test]
fn an_upgrade_whose_sessions_cannot_be_carried_keeps_the_old_programs_unless_replace() {
    if !kernel_tests_enabled("an_upgrade_whose_sessions_cannot_be_carried") {
        return;
    }
    let Some(variant) = variant_bin("an_upgrade_whose_sessions_cannot_be_carried") else { return };
    let (_lab, inst, out) = instance_and_outside("layout").unwrap();
    let _down = DownOnDrop(vec![inst.clone()]);
    let rules = write("layout", &config(None, INST0));
    let mut agent = start(&sgctl_bin(), &inst, &rules, "applied");
    let pin_dir = status(&inst)["pin_dir"].as_str().unwrap().to_string();
    let program = xdp_program(&inst, "inst0").unwrap();
    agent.stop_with(libc::SIGTERM).unwrap();
    // What an older build with another session layout leaves: its pinned session map has
    // other sizes than this build's (a real map, created with bpftool under the name the
    // new agent reads; the old programs keep their own).
    let sessions = format!("{pin_dir}/gen-1/SG_SESSIONS");
    std::fs::remove_file(&sessions).unwrap();
    // A value 8 bytes shorter than this build's (what the build before the sequence
    // anchors had), so it never matches whatever this build's layout is.
    let value = (size_of::<sg_common::Session>() - 8).to_string();
    let made = Command::new("bpftool")
        .args(["map", "create", &sessions, "type", "lru_hash", "key", "44", "value", &value, "entries", "1024"])
        .args(["name", "SG_SESSIONS"])
        .output()
        .unwrap();
    assert!(made.status.success(), "bpftool map create: {}", text(&made.stderr));

    // The new build refuses, and the old programs stay attached and enforcing.
    let args = run_args(&rules);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut refusing = sg_tests::agent::pinned_command(&variant, &inst, &args);
    let refused = sg_tests::agent::output_within(&mut refusing, Duration::from_secs(30)).unwrap();
    let said = text(&refused.stderr);
    assert!(!refused.status.success(), "the new build must refuse: {said}");
    assert!(said.contains("cannot hold the old ones") && said.contains("--replace"), "{said}");
    assert_eq!(xdp_program(&inst, "inst0"), Some(program), "the old programs keep running");
    assert!(out.probe(Proto::Tcp, inst.ipv4.into(), EXTRA_TCP, T).is_err(), "still enforced");
    assert!(Path::new(&format!("{pin_dir}/gen-1")).exists() && !Path::new(&format!("{pin_dir}/gen-2")).exists());

    // Told --replace, it switches without the sessions.
    let mut replace = args.clone();
    replace.push("--replace");
    let agent = Agent::start_pinned(&variant, &inst, &replace, "applied").unwrap();
    assert!(agent.seen.iter().any(|l| l.contains("moved from generation 1 to 2")), "{:#?}", agent.seen);
    assert!(agent.seen.iter().any(|l| l.contains("are not carried over")), "{:#?}", agent.seen);
    assert_ne!(xdp_program(&inst, "inst0"), Some(program), "the new programs are attached");
    let _server = inst.serve(Proto::Tcp, ECHO_TCP).unwrap();
    assert!(out.probe(Proto::Tcp, inst.ipv4.into(), ECHO_TCP, T).is_ok(), "the new programs enforce the rules");
    assert!(out.probe(Proto::Tcp, inst.ipv4.into(), EXTRA_TCP, T).is_err(), "and drop the rest");
    drop(agent);
}
