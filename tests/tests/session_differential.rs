//! Differential test of the kernel's sessions against the stateful reference model
//! (`sgctl::eval::stateful`): seeded packet sequences (`sg_tests::sessions_gen`) of flows,
//! replies without sessions, ICMP errors, neighbour discovery and rule changes run through
//! BPF_PROG_TEST_RUN on the hook of their direction, and the model decides the same packets;
//! verdict, step and rule id must agree for every packet.
//!
//! `SG_SDIFF_CASES` (default 2,000) sequences, `SG_SDIFF_STEPS` (default 60) steps each,
//! `SG_SDIFF_SEED` the first seed. A mismatch prints the seed, the rule files, the sequence
//! up to the packet and both outcomes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sg_common::{step, verdict};
use sg_tests::{
    r#gen::GenOptions,
    kernel::kernel_tests_enabled,
    sessions_gen::{SessionCase, SessionGenOptions, Step, monotonic_ns, session_case},
    testrun::{TEST_RUN_IFINDEX, hook_for, run},
};
use sgctl::{
    config::Mode,
    ebpf::{Dataplane, LoadOptions},
    enforce::{Capacity, Enforcer},
    eval::stateful::Outcome,
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
        outcomes.push(format!(
            "kernel {} {} rule {} / model {want}",
            if d.verdict == verdict::PASS { "pass" } else { "drop" },
            step_name(d.step),
            d.rule_id
        ));
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
        let got_outcome = Outcome::new(d.verdict, d.step, d.rule_id);
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
    let mut dp = Dataplane::load(&LoadOptions { trace: true, ..Default::default() }).expect("load");
    let mut enforcer = Enforcer::new(&mut dp, &Capacity::default()).expect("maps");
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
                    } else if sgctl::eval::stateful::is_icmp_error(&p.meta) {
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
