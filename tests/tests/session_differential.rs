//! Differential test of the kernel's sessions against the stateful reference model
//! (`sgctl::policy::eval::stateful`): seeded packet sequences (`sg_tests::sessions_gen`) of flows,
//! replies without sessions, ICMP errors, neighbour discovery and rule changes run through
//! BPF_PROG_TEST_RUN on the hook of their direction, and the model decides the same packets;
//! verdict, step and rule id must agree for every packet, and after every packet the
//! kernel's session table must hold the model's sessions (state, opener, direction, rule,
//! step, packet count and generation; not the timestamps).
//!
//! `SG_SDIFF_CASES` (default 2,000) sequences, `SG_SDIFF_STEPS` (default 60) steps each,
//! `SG_SDIFF_SEED` the first seed. A mismatch prints the seed, the rule files, the sequence
//! up to the packet and both outcomes.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use sg_common::{
    Session, SessionKey, Timeouts, ip_proto,
    session::{state, table},
    step, verdict,
};
use sg_tests::{
    r#gen::GenOptions,
    kernel::kernel_tests_enabled,
    sessions_gen::{
        SeqPacket, SessionCase, SessionGenOptions, Step, TCP_PSH, icmp_error, monotonic_ns, reversed, session_case,
    },
    testrun::{TEST_RUN_IFINDEX, hook_for, run, test_capacity, test_load_options},
};
use sgctl::{
    control::Enforcer,
    dataplane::Dataplane,
    policy::config::{Direction, Mode, SessionSettings, parse_str},
    policy::eval::{
        PacketTuple,
        stateful::{Outcome, Tracker},
    },
};

const BASE_SEED: u64 = 0x5344_6966_0000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?}")))
}

fn options(seed: u64, steps: usize) -> SessionGenOptions {
    let rules = if seed % 8 == 7 { GenOptions::large() } else { GenOptions::default() };
    SessionGenOptions { rules, steps, ..SessionGenOptions::default() }
}

/// The sequence up to step `last`, the rule files, and what went wrong.
fn report(case: &SessionCase, last: usize, outcomes: &[String], problem: &str) -> String {
    let mut text = format!("SG_SDIFF_SEED={} SG_SDIFF_CASES=1: step {last}: {problem}\n", case.seed);
    text.push_str(&case.configs_text());
    text.push_str("\n--- sequence ---\n");
    for (i, step) in case.steps.iter().enumerate().take(last + 1) {
        text.push_str(&format!("#{i:>3} {step}"));
        if let Some(outcome) = outcomes.get(i).filter(|o| !o.is_empty()) {
            text.push_str(&format!("  => {outcome}"));
        }
        text.push('\n');
    }
    text
}

fn step_name(code: u8) -> &'static str {
    step::NAMES.get(usize::from(code)).copied().unwrap_or("?")
}

/// The fields of a session both sides must agree on, with the generation counted back from
/// the current one (the kernel's generations keep growing across cases).
/// The kernel's `assured` is the table the session is in (`SessionTable::entries`), so
/// this also checks that every session sits in the table the model puts it in.
fn comparable(
    s: &Session,
    current_generation: u32,
    rule_id: u32,
) -> (&'static str, u8, u8, u32, u8, u64, u32, &'static str) {
    let state = state::NAMES.get(usize::from(s.state)).copied().unwrap_or("?");
    let age = current_generation.wrapping_sub(s.generation);
    let table = if s.assured == table::ASSURED_VALUE { "assured" } else { "opening" };
    (state, s.opener_is_low, s.opened_on, rule_id, s.step, s.packets, age, table)
}

/// `ifindex 1 protocol 6 198.18.0.1 port 40000 <-> 198.18.0.2 port 80`.
fn key_text(key: &SessionKey) -> String {
    let addr = |bytes: &[u8; 16]| sgctl::policy::addr::addr_from_bytes(key.family, bytes);
    format!(
        "ifindex {} protocol {} {} port {} <-> {} port {}",
        key.ifindex,
        key.protocol,
        addr(&key.low_addr),
        key.low_port,
        addr(&key.high_addr),
        key.high_port
    )
}

/// `Err` describes how the kernel's session table differs from the model's.
fn compare_tables(enforcer: &mut Enforcer, model: &Tracker) -> Result<(), String> {
    let kernel_generation = enforcer.generation(TEST_RUN_IFINDEX).unwrap_or(0);
    let kernel: HashMap<SessionKey, Session> =
        enforcer.sessions().entries().map_err(|e| format!("reading the session table: {e:#}"))?.into_iter().collect();
    let mut problems = Vec::new();
    for (key, want) in model.sessions() {
        let want = comparable(want, model.generation(), want.rule_id);
        match kernel.get(key) {
            None => problems.push(format!("missing in the kernel: {} {want:?}", key_text(key))),
            Some(got) => {
                let got = comparable(got, kernel_generation, enforcer.handles().rule_id_of(got.rule_id));
                if got != want {
                    problems.push(format!(
                        "{}\n    kernel (state, opener_is_low, opened_on, rule, step, packets, generations ago, table) \
                         {got:?}\n    model  {want:?}",
                        key_text(key)
                    ));
                }
            }
        }
    }
    for (key, got) in &kernel {
        if !model.sessions().contains_key(key) {
            problems.push(format!(
                "only in the kernel: {} {:?}",
                key_text(key),
                comparable(got, kernel_generation, enforcer.handles().rule_id_of(got.rule_id))
            ));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(format!("session tables differ:\n  {}", problems.join("\n  "))) }
}

/// Runs one sequence through the kernel and the model; `Err` describes the first
/// disagreement (later packets would only repeat it, the tables having diverged).
fn run_case(
    dp: &mut Dataplane,
    enforcer: &mut Enforcer,
    case: &SessionCase,
    steps_seen: &mut BTreeMap<(u8, u8), u64>,
) -> Result<usize, String> {
    enforcer.sessions().flush().map_err(|e| format!("seed {}: flushing sessions: {e:#}", case.seed))?;
    let apply = |enforcer: &mut Enforcer, index: usize| {
        enforcer
            .apply(case.config(index), &[(TEST_RUN_IFINDEX, case.binding(index))])
            .map(|_| ())
            .map_err(|e| format!("seed {}: apply config #{index}: {e:#}", case.seed))
    };
    apply(enforcer, 0)?;
    let mut model = case.tracker();
    let mut current = 0;
    let mut outcomes: Vec<String> = Vec::with_capacity(case.steps.len());
    let mut packets = 0;
    for (i, step) in case.steps.iter().enumerate() {
        let packet = match step {
            Step::Apply(index) => {
                apply(enforcer, *index)?;
                model.replace_config(case.config(*index));
                current = *index;
                outcomes.push(String::new());
                continue;
            }
            Step::Packet(packet) => packet,
        };
        let binding = case.binding(current);
        let now = monotonic_ns();
        let want = model.packet_with_embedded(
            binding,
            TEST_RUN_IFINDEX,
            packet.direction,
            &packet.meta,
            packet.embedded.as_ref(),
            now,
        );
        let got = run(dp, hook_for(packet.direction), &packet.frame)
            .map_err(|e| format!("seed {}: step {i}: test run: {e:#}", case.seed))?;
        packets += 1;
        let d = got.decision;
        let got_outcome = Outcome::new(d.verdict, d.step, enforcer.handles().rule_id_of(d.rule_id));
        outcomes.push(if got_outcome == want {
            format!("{want}")
        } else {
            format!("kernel {got_outcome}, model {want}")
        });
        let m = &got.meta;
        let e = &packet.meta;
        let parsed = (m.family, m.protocol, m.src, m.dst, m.src_port, m.dst_port, m.tcp_flags, m.icmp_type, m.icmp_id);
        let built = (e.family, e.protocol, e.src, e.dst, e.src_port, e.dst_port, e.tcp_flags, e.icmp_type, e.icmp_id);
        if parsed != built {
            return Err(report(
                case,
                i,
                &outcomes,
                &format!("the kernel parsed {m:?}\nthe generator expected {e:?}\n(a generator or parser bug)"),
            ));
        }
        // Audit mode passes every packet whatever the computed verdict.
        let returned = if binding.mode == Mode::Audit { verdict::PASS } else { want.verdict };
        if got_outcome != want || got.verdict != returned {
            return Err(report(
                case,
                i,
                &outcomes,
                &format!(
                    "kernel {got_outcome} (returned {}, flags {:#x}), model {want} (must return {returned}), mode {:?}",
                    got.verdict, d.flags, binding.mode
                ),
            ));
        }
        *steps_seen.entry((want.step, want.verdict)).or_default() += 1;
        if let Err(problem) = compare_tables(enforcer, &model) {
            return Err(report(case, i, &outcomes, &problem));
        }
    }
    Ok(packets)
}

#[test]
fn kernel_sessions_agree_with_the_stateful_model() {
    if !kernel_tests_enabled("kernel_sessions_agree_with_the_stateful_model") {
        return;
    }
    let cases = env_u64("SG_SDIFF_CASES", 2_000);
    let steps = env_u64("SG_SDIFF_STEPS", 60) as usize;
    let seed = env_u64("SG_SDIFF_SEED", BASE_SEED);
    let mut dp = Dataplane::load(&test_load_options()).expect("load");
    let mut enforcer = Enforcer::new(&mut dp, &test_capacity()).expect("maps");
    // BPF_PROG_TEST_RUN is synchronous: no packet is in flight during a switch.
    enforcer.set_grace_period(Duration::ZERO);
    let started = Instant::now();
    let (mut packets, mut mismatches) = (0usize, Vec::new());
    let mut steps_seen = BTreeMap::new();
    for i in 0..cases {
        let case_seed = seed + i;
        let case = session_case(case_seed, &options(case_seed, steps));
        match run_case(&mut dp, &mut enforcer, &case, &mut steps_seen) {
            Ok(n) => packets += n,
            Err(e) => mismatches.push(e),
        }
        assert!(mismatches.len() < 3, "kernel/model mismatches:\n{}", mismatches.join("\n\n"));
    }
    let seen: Vec<String> = steps_seen
        .iter()
        .map(|((s, v), n)| format!("{} {}: {n}", step_name(*s), if *v == verdict::PASS { "pass" } else { "drop" }))
        .collect();
    eprintln!(
        "session differential: {cases} sequences, {packets} packets, {} mismatches, {:.1} s\n  {}",
        mismatches.len(),
        started.elapsed().as_secs_f64(),
        seen.join("\n  ")
    );
    assert!(mismatches.is_empty(), "kernel/model mismatches:\n{}", mismatches.join("\n\n"));
    if cases >= 200 {
        for wanted in
            [step::SESSION, step::RELATED, step::REVOKED, step::NEIGHBOUR_DISCOVERY, step::RULE, step::DEFAULT]
        {
            assert!(steps_seen.keys().any(|(s, _)| *s == wanted), "step {} never exercised", step_name(wanted));
        }
    }
}

/// The generator alone (no kernel needed): sequences exercise every session path of the
/// model, so the kernel test compares something worth comparing.
#[test]
fn sequences_exercise_every_session_path_of_the_model() {
    let cases = env_u64("SG_SDIFF_MODEL_CASES", 300);
    let mut seen: BTreeMap<(u8, u8), u64> = BTreeMap::new();
    let (mut applies, mut related_quotes, mut unparsable_quotes) = (0, 0, 0);
    for i in 0..cases {
        let seed = BASE_SEED + i;
        let case = session_case(seed, &options(seed, 60));
        assert_eq!(case.steps.len(), 60);
        for binding in case.configs.iter().map(|c| &c.config.interfaces[0]) {
            assert_eq!(binding.name, case.binding(0).name, "seed {seed}: one interface name throughout");
        }
        let outcomes = case.model_outcomes(TEST_RUN_IFINDEX, 1_000_000_000, 1_000);
        for (step, outcome) in case.steps.iter().zip(&outcomes) {
            match (step, outcome) {
                (Step::Apply(index), None) => {
                    assert!(*index < case.configs.len());
                    applies += 1;
                }
                (Step::Packet(p), Some(o)) => {
                    *seen.entry((o.step, o.verdict)).or_default() += 1;
                    assert!(usize::from(o.step) < step::COUNT);
                    assert!(
                        o.rule_id == 0 || o.step == step::RULE || o.step == step::SESSION || o.step == step::REVOKED
                    );
                    if p.embedded.is_some() {
                        related_quotes += 1;
                    } else if sgctl::policy::eval::stateful::is_icmp_error(&p.meta) {
                        unparsable_quotes += 1;
                    }
                    // Frames start with an Ethernet header of the packet's family.
                    let ethertype = u16::from_be_bytes([p.frame[12], p.frame[13]]);
                    assert_eq!(ethertype, if p.tuple.src.is_ipv4() { 0x0800 } else { 0x86dd });
                }
                _ => panic!("seed {seed}: outcome {outcome:?} for step {step}"),
            }
        }
    }
    let expect = [
        (step::SESSION, verdict::PASS),
        (step::RELATED, verdict::PASS),
        (step::REVOKED, verdict::DROP),
        (step::NEIGHBOUR_DISCOVERY, verdict::PASS),
        (step::RULE, verdict::PASS),
        (step::RULE, verdict::DROP),
        (step::DEFAULT, verdict::PASS),
        (step::DEFAULT, verdict::DROP),
        (step::INTRA_GROUP_ACCEPT, verdict::PASS),
        (step::INTRA_GROUP_DROP, verdict::DROP),
    ];
    let summary: Vec<String> = seen.iter().map(|((s, v), n)| format!("{} {v}: {n}", step_name(*s))).collect();
    eprintln!(
        "model over {cases} sequences: {applies} rule changes, {related_quotes} parsable quotes, {unparsable_quotes} short quotes\n  {}",
        summary.join("\n  ")
    );
    for (s, v) in expect {
        assert!(seen.contains_key(&(s, v)), "({}, verdict {v}) never reached: {summary:?}", step_name(s));
    }
    assert!(applies > 0 && related_quotes > 0 && unparsable_quotes > 0);
    // Sessions carry most replies: a good share of packets pass by session.
    assert!(seen[&(step::SESSION, verdict::PASS)] * 8 > seen.values().sum::<u64>());
}

/// Every idle timeout 1 s; a basic group without rules: egress passes, ingress drops.
const SHORT_TIMEOUTS: &str = r#"
[[security_group]]
id = "sg-host"
members = ["10.1.0.10", "2001:db8:1::10"]

[[interface]]
name = "eth0"
security_groups = ["sg-host"]

[sessions]
tcp_established = 1
tcp_opening = 1
tcp_closing = 1
tcp_rst = 1
udp_unreplied = 1
udp_replied = 1
icmp = 1
other = 1
"#;

/// The model's form of a `[sessions]` table.
fn timeouts_of(s: &SessionSettings) -> Timeouts {
    let ns = |seconds: u32| u64::from(seconds) * 1_000_000_000;
    Timeouts {
        tcp_established: ns(s.tcp_established),
        tcp_opening: ns(s.tcp_opening),
        tcp_closing: ns(s.tcp_closing),
        tcp_rst: ns(s.tcp_rst),
        udp_unreplied: ns(s.udp_unreplied),
        udp_replied: ns(s.udp_replied),
        icmp: ns(s.icmp),
        other: ns(s.other),
    }
}

/// Idle expiry with the real clock: flows of every kind opened on egress, their replies
/// passing by session at once and classified (dropped) after 1.3 s of silence, in the
/// kernel and in the model (given the same timeouts and CLOCK_MONOTONIC_COARSE).
#[test]
fn kernel_session_expiry_agrees_with_the_model() {
    if !kernel_tests_enabled("kernel_session_expiry_agrees_with_the_model") {
        return;
    }
    let cfg = parse_str(SHORT_TIMEOUTS, "short.toml").unwrap_or_else(|e| panic!("{e}"));
    let binding = &cfg.interfaces[0];
    let mut dp = Dataplane::load(&test_load_options()).expect("load");
    let mut enforcer = Enforcer::new(&mut dp, &test_capacity()).expect("maps");
    enforcer.set_grace_period(Duration::ZERO);
    enforcer.sessions().flush().expect("flush");
    enforcer.apply(&cfg, &[(TEST_RUN_IFINDEX, binding)]).expect("apply");
    let mut model = Tracker::new(&cfg, timeouts_of(&cfg.sessions));

    let (host, server) = ("10.1.0.10".parse().expect("v4"), "203.0.113.9".parse().expect("v4"));
    let (host6, server6) = ("2001:db8:1::10".parse().expect("v6"), "2001:db8:9::9".parse().expect("v6"));
    let tuple = |src, dst, protocol, src_port, dst_port| PacketTuple { src, dst, protocol, src_port, dst_port };
    let egress = |t: PacketTuple, flags: u8, icmp_type: u8, id: u16, what: &str| {
        SeqPacket::new(Direction::Egress, t, flags, icmp_type, id, what)
    };
    let ingress = |t: PacketTuple, flags: u8, icmp_type: u8, id: u16, what: &str| {
        SeqPacket::new(Direction::Ingress, reversed(&t), flags, icmp_type, id, what)
    };
    let (syn, syn_ack, ack, rst, data) = (0x02, 0x12, 0x10, 0x04, TCP_PSH | 0x10);
    let opening = tuple(host, server, ip_proto::TCP, 40000, 443);
    let established = tuple(host, server, ip_proto::TCP, 40001, 443);
    let reset = tuple(host, server, ip_proto::TCP, 40002, 443);
    let udp = tuple(host, server, ip_proto::UDP, 5353, 53);
    let ping = tuple(host, server, ip_proto::ICMP, 0, 0);
    let gre = tuple(host, server, ip_proto::GRE, 0, 0);
    let udp6 = tuple(host6, server6, ip_proto::UDP, 5353, 53);
    let ping6 = tuple(host6, server6, ip_proto::ICMPV6, 0, 0);
    let udp_query = egress(udp, 0, 0, 0, "udp");
    let router = "192.0.2.1".parse().expect("v4");
    let error = icmp_error(Direction::Ingress, (router, host), (3, 3), &udp_query, &[], Some(8), "error about udp");
    // Opened on egress, answered on ingress at once: every flow in a different state.
    let live = [
        (egress(opening, syn, 0, 0, "syn"), step::DEFAULT),
        (ingress(opening, syn_ack, 0, 0, "syn-ack"), step::SESSION),
        (egress(established, syn, 0, 0, "syn"), step::DEFAULT),
        (ingress(established, syn_ack, 0, 0, "syn-ack"), step::SESSION),
        (egress(established, ack, 0, 0, "ack"), step::SESSION),
        (ingress(established, data, 0, 0, "data"), step::SESSION),
        (egress(reset, syn, 0, 0, "syn"), step::DEFAULT),
        (ingress(reset, syn_ack, 0, 0, "syn-ack"), step::SESSION),
        (egress(reset, rst, 0, 0, "rst"), step::SESSION),
        (udp_query.clone(), step::DEFAULT),
        (ingress(udp, 0, 0, 0, "udp reply"), step::SESSION),
        (egress(ping, 0, 8, 5, "echo request"), step::DEFAULT),
        (ingress(ping, 0, 0, 5, "echo reply"), step::SESSION),
        (egress(gre, 0, 0, 0, "gre"), step::DEFAULT),
        (ingress(gre, 0, 0, 0, "gre back"), step::SESSION),
        (egress(udp6, 0, 0, 0, "udp6"), step::DEFAULT),
        (egress(ping6, 0, 128, 6, "echo request"), step::DEFAULT),
        (ingress(ping6, 0, 129, 6, "echo reply"), step::SESSION),
        (error.clone(), step::RELATED),
    ];
    // After 1.3 s of silence every session has expired: the server's packets are
    // classified (ingress drops by default).
    let expired = [
        (error.clone(), step::DEFAULT),
        (ingress(opening, syn_ack, 0, 0, "syn-ack"), step::DEFAULT),
        (ingress(established, data, 0, 0, "data"), step::DEFAULT),
        (ingress(reset, data, 0, 0, "data"), step::DEFAULT),
        (ingress(udp, 0, 0, 0, "udp reply"), step::DEFAULT),
        (ingress(ping, 0, 0, 5, "echo reply"), step::DEFAULT),
        (ingress(gre, 0, 0, 0, "gre back"), step::DEFAULT),
        (ingress(udp6, 0, 0, 0, "udp6 reply"), step::DEFAULT),
        (ingress(ping6, 0, 129, 6, "echo reply"), step::DEFAULT),
    ];

    let mut log = Vec::new();
    let mut check = |dp: &mut Dataplane, model: &mut Tracker, packet: &SeqPacket, want_step: u8| {
        let now = monotonic_ns();
        let want = model.packet_with_embedded(
            binding,
            TEST_RUN_IFINDEX,
            packet.direction,
            &packet.meta,
            packet.embedded.as_ref(),
            now,
        );
        let got = run(dp, hook_for(packet.direction), &packet.frame).expect("test run");
        let got =
            Outcome::new(got.decision.verdict, got.decision.step, enforcer.handles().rule_id_of(got.decision.rule_id));
        log.push(format!("{packet} => kernel {got}, model {want}"));
        assert_eq!(got, want, "kernel and model disagree:\n{}", log.join("\n"));
        assert_eq!(want.step, want_step, "unexpected step:\n{}", log.join("\n"));
    };
    for (packet, want_step) in &live {
        check(&mut dp, &mut model, packet, *want_step);
    }
    assert_eq!(model.sessions().len(), 8);
    std::thread::sleep(Duration::from_millis(1300));
    for (packet, want_step) in &expired {
        check(&mut dp, &mut model, packet, *want_step);
    }
    assert!(model.sessions().is_empty(), "every session expired and was deleted");
}
