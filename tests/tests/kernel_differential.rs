//! Differential test of the kernel programs against the reference evaluator: random rule
//! files (`sg_tests::r#gen`) are compiled into the real maps and every probe is run through
//! BPF_PROG_TEST_RUN on the hook of its direction (ingress: XDP, egress: TC); verdict,
//! deciding step and rule id must equal the evaluator's. Zero mismatches. Sessions are
//! flushed before each probe: this is the stateless half; `session_differential` checks
//! sequences with sessions.
//!
//! `SG_KDIFF_CASES` (default 10,000) rule files, `SG_KDIFF_PACKETS` (default 20) probes
//! each, `SG_KDIFF_SEED` the first seed; set more for longer runs. A mismatch prints the
//! seed to rerun it alone.

use std::time::{Duration, Instant};

use sg_tests::{
    r#gen::{self as generator, GenOptions},
    kernel::kernel_tests_enabled,
    testrun::{TEST_RUN_IFINDEX, compare, frame_for, hook_for, run},
};
use sgctl::{
    config::Direction,
    ebpf::{Dataplane, LoadOptions},
    enforce::{Capacity, Enforcer},
};

const BASE_SEED: u64 = 0x4b44_6966_0000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?}")))
}

#[test]
fn kernel_agrees_with_the_reference_evaluator_on_random_rule_sets() {
    if !kernel_tests_enabled("kernel_agrees_with_the_reference_evaluator_on_random_rule_sets") {
        return;
    }
    let cases = env_u64("SG_KDIFF_CASES", 10_000);
    let packets = env_u64("SG_KDIFF_PACKETS", 20) as usize;
    let seed = env_u64("SG_KDIFF_SEED", BASE_SEED);
    let mut dp = Dataplane::load(&LoadOptions { trace: true, ..Default::default() }).expect("load");
    let mut enforcer = Enforcer::new(&mut dp, &Capacity::default()).expect("maps");
    // BPF_PROG_TEST_RUN is synchronous: no packet is in flight during a switch.
    enforcer.set_grace_period(Duration::ZERO);
    let started = Instant::now();
    let (mut probes, mut per_hook, mut mismatches) = (0u64, [0u64; 2], Vec::new());
    for i in 0..cases {
        let case_seed = seed + i;
        let opts = if case_seed % 8 == 7 { GenOptions::large() } else { GenOptions::default() };
        let case = generator::case(case_seed, &opts, packets);
        let cfg = &case.config;
        for binding in &cfg.interfaces {
            enforcer
                .apply(cfg, &[(TEST_RUN_IFINDEX, binding)])
                .unwrap_or_else(|e| panic!("seed {case_seed}: apply: {e:#}"));
            for probe in case.packets.iter().filter(|p| p.iface == binding.name) {
                // Each probe is judged alone: no session from an earlier probe may decide it.
                enforcer.sessions().flush().expect("flush sessions");
                let got = run(&mut dp, hook_for(probe.direction), &frame_for(&probe.packet)).expect("test run");
                probes += 1;
                per_hook[usize::from(probe.direction == Direction::Egress)] += 1;
                if let Err(e) = compare(cfg, binding, probe.direction, &probe.packet, &got) {
                    mismatches.push(format!(
                        "SG_KDIFF_SEED={case_seed} SG_KDIFF_CASES=1: {}: {e}\n{}",
                        binding.name, case.toml
                    ));
                }
            }
        }
        assert!(mismatches.len() < 3, "kernel/reference mismatches:\n{}", mismatches.join("\n\n"));
    }
    eprintln!(
        "kernel differential: {cases} rule files, {probes} probes ({} XDP, {} TC), 0 mismatches, {:.1} s",
        per_hook[0],
        per_hook[1],
        started.elapsed().as_secs_f64()
    );
    assert!(mismatches.is_empty(), "kernel/reference mismatches:\n{}", mismatches.join("\n\n"));
    assert!(per_hook.iter().all(|&n| n > 0), "both hooks must be exercised");
}
