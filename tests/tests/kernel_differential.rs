//! Differential test of the kernel programs against the reference evaluator: proptest
//! draws seeds, each seed makes a random rule file and biased probes (`sg_tests::r#gen`,
//! which builds only valid files), the rule file is compiled into the real maps and every
//! probe runs through BPF_PROG_TEST_RUN on the hook of its direction (ingress: XDP,
//! egress: TC); verdict, deciding step and rule id must equal the evaluator's. Zero
//! mismatches. Sessions are flushed before each probe: this is the stateless half;
//! `session_differential` checks sequences with sessions.
//!
//! `SG_KDIFF_CASES` (default 10,000) rule files of `SG_KDIFF_PACKETS` (default 20) probes;
//! the proptest RNG is deterministic, so a run is repeatable; a failure names the seed,
//! and `SG_KDIFF_SEED=<seed>` reruns just that file.

use std::{cell::RefCell, time::Duration};

use proptest::{
    prelude::*,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner},
};
use sg_tests::{
    r#gen::{self as generator, GenOptions, Rng},
    kernel::kernel_tests_enabled,
    testrun::{TEST_RUN_IFINDEX, compare, frame_for, hook_for, named, run, test_capacity, test_load_options},
};
use sgctl::{
    control::Enforcer,
    dataplane::{Capacity, Dataplane},
    policy::{
        compile::compile,
        config::{Direction, parse_str},
    },
};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?}")))
}

struct Harness {
    dp: Dataplane,
    enforcer: Enforcer,
    probes: [u64; 2],
}

impl Harness {
    /// Runs one rule file; `Err` describes the first mismatch.
    fn check(&mut self, seed: u64, packets: usize) -> Result<(), String> {
        let opts = if seed % 8 == 7 { GenOptions::large() } else { GenOptions::default() };
        let case = generator::case(seed, &opts, packets);
        let cfg = &case.config;
        for binding in &cfg.interfaces {
            self.enforcer
                .apply(cfg, &[(TEST_RUN_IFINDEX, binding)])
                .map_err(|e| format!("seed {seed}: apply: {e:#}"))?;
            for probe in case.packets.iter().filter(|p| p.iface == binding.name) {
                // Each probe is judged alone: no session from an earlier probe may decide it.
                self.enforcer.sessions().flush().map_err(|e| e.to_string())?;
                let got = run(&mut self.dp, hook_for(probe.direction), &frame_for(&probe.packet))
                    .map_err(|e| e.to_string())?;
                self.probes[usize::from(probe.direction == Direction::Egress)] += 1;
                compare(cfg, binding, probe.direction, &probe.packet, &named(&self.enforcer, got))
                    .map_err(|e| format!("SG_KDIFF_SEED={seed}: {}: {e}\n{}", binding.name, case.toml))?;
            }
        }
        Ok(())
    }
}

#[test]
fn kernel_agrees_with_the_reference_evaluator_on_random_rule_sets() {
    if !kernel_tests_enabled("kernel_agrees_with_the_reference_evaluator_on_random_rule_sets") {
        return;
    }
    let packets = env_u64("SG_KDIFF_PACKETS").unwrap_or(20) as usize;
    let mut dp = Dataplane::load(&test_load_options()).expect("load");
    let mut enforcer = Enforcer::new(&mut dp, &test_capacity()).expect("maps");
    // BPF_PROG_TEST_RUN is synchronous: no packet is in flight during a switch.
    enforcer.set_grace_period(Duration::ZERO);
    let harness = RefCell::new(Harness { dp, enforcer, probes: [0; 2] });
    if let Some(seed) = env_u64("SG_KDIFF_SEED") {
        harness.borrow_mut().check(seed, packets).unwrap_or_else(|e| panic!("{e}"));
        return;
    }
    let cases = env_u64("SG_KDIFF_CASES").unwrap_or(10_000) as u32;
    // Seeds shrink to nothing meaningful: report the failing one as it is.
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 0, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let started = std::time::Instant::now();
    let result =
        runner.run(&any::<u64>(), |seed| harness.borrow_mut().check(seed, packets).map_err(TestCaseError::fail));
    let probes = harness.borrow().probes;
    if let Err(e) = result {
        panic!("kernel/reference mismatch: {e}");
    }
    eprintln!(
        "kernel differential: {cases} rule files, {} probes ({} XDP, {} TC), 0 mismatches, {:.1} s",
        probes[0] + probes[1],
        probes[0],
        probes[1],
        started.elapsed().as_secs_f64()
    );
    assert!(probes.iter().all(|&n| n > 0), "both hooks must be exercised");
}

/// Realistic rule sets of many 512-rule chunks (the random files above stay within one):
/// vectors that share some chunks and differ in others, with the bit search crossing
/// chunks, must decide every probe as the reference does, on both hooks.
#[test]
fn kernel_agrees_with_the_reference_on_large_realistic_rule_sets() {
    if !kernel_tests_enabled("kernel_agrees_with_the_reference_on_large_realistic_rule_sets") {
        return;
    }
    let sets: Vec<(u64, usize, String)> = [(11, 600), (12, 3000), (13, 16_384)]
        .into_iter()
        .flat_map(|(seed, n)| {
            let ingress = generator::realistic_ruleset(seed, n);
            let egress = generator::as_egress(&ingress);
            [(seed, n, ingress), (seed, n, egress)]
        })
        .collect();
    let configs: Vec<_> = sets.iter().map(|(_, _, toml)| parse_str(toml, "large.toml").expect("valid")).collect();
    let compiled: Vec<_> = configs
        .iter()
        .flat_map(|cfg| DIRECTIONS.map(|dir| compile(cfg, &cfg.interfaces[0], dir).expect("compiles")))
        .collect();
    let capacity = Capacity { sessions: test_capacity().sessions, ..Capacity::for_rule_sets(&compiled) };
    let mut dp = Dataplane::load(&sgctl::dataplane::LoadOptions { capacity, ..test_load_options() }).expect("load");
    let mut enforcer = Enforcer::new(&mut dp, &capacity).expect("maps");
    enforcer.set_grace_period(Duration::ZERO);
    let mut probes = 0;
    for ((seed, n, toml), cfg) in sets.iter().zip(&configs) {
        let binding = &cfg.interfaces[0];
        enforcer.apply(cfg, &[(TEST_RUN_IFINDEX, binding)]).expect("apply");
        let chunks = DIRECTIONS
            .map(|dir| compile(cfg, binding, dir).expect("compiles").words().div_ceil(sg_common::CHUNK_WORDS))
            .into_iter()
            .max()
            .unwrap_or(0);
        assert!(*n < 1000 || chunks > 1, "{n} rules span {chunks} chunks");
        let mut rng = Rng::new(*seed);
        for dir in DIRECTIONS {
            for _ in 0..200 {
                let packet = generator::packet(cfg, binding, dir, &mut rng);
                enforcer.sessions().flush().expect("flush");
                let got = run(&mut dp, hook_for(dir), &frame_for(&packet)).expect("test run");
                compare(cfg, binding, dir, &packet, &named(&enforcer, got))
                    .unwrap_or_else(|e| panic!("realistic_ruleset({seed}, {n}), {dir:?}: {e}\n{}", &toml[..400]));
                probes += 1;
            }
        }
    }
    eprintln!("large realistic rule sets: {probes} probes, 0 mismatches");
}

const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];
