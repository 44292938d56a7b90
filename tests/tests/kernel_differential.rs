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
    r#gen::{self as generator, GenOptions, RealisticOptions, Rng},
    kernel::kernel_tests_enabled,
    testrun::{TEST_RUN_IFINDEX, compare, frame_for, hook_for, named, run, test_capacity, test_load_options},
};
use sgctl::{
    control::Enforcer,
    dataplane::{Capacity, Dataplane},
    policy::{
        compile::compile,
        config::{Direction, parse_str},
        eval::PacketTuple,
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

/// Rule sets past one vector's bits, compiled in bands (`sg_common::MAX_BANDS`): a
/// realistic set of 40,000 rules (both hooks), one rule a port over 40,000 ports (each
/// band's rules decide their ports' packets), and the last-ranked rule of 65,536 deciding
/// from the last band, after every band before it passed the search on.
#[test]
fn kernel_agrees_with_the_reference_on_rule_sets_in_bands() {
    if !kernel_tests_enabled("kernel_agrees_with_the_reference_on_rule_sets_in_bands") {
        return;
    }
    let realistic = generator::realistic_ruleset(14, 40_000);
    let last_ranked = RealisticOptions {
        iface: "bench0".to_string(),
        drop_all_from: Some("192.0.2.0/24".to_string()),
        drop_all_from_v6: Some("2001:db8:ffff::/48".to_string()),
    };
    let texts = [
        generator::as_egress(&realistic),
        realistic,
        generator::one_port_each(40_000),
        generator::realistic_ruleset_with(3, sg_common::MAX_USER_RULES, &last_ranked),
    ];
    let configs: Vec<_> = texts.iter().map(|toml| parse_str(toml, "bands.toml").expect("valid")).collect();
    let compiled: Vec<_> = configs
        .iter()
        .flat_map(|cfg| DIRECTIONS.map(|dir| compile(cfg, &cfg.interfaces[0], dir).expect("compiles")))
        .collect();
    assert!(compiled.iter().any(|c| c.bands.len() == sg_common::MAX_BANDS as usize));
    let capacity = Capacity { sessions: test_capacity().sessions, ..Capacity::for_rule_sets(&compiled) };
    let mut dp = Dataplane::load(&sgctl::dataplane::LoadOptions { capacity, ..test_load_options() }).expect("load");
    let mut enforcer = Enforcer::new(&mut dp, &capacity).expect("maps");
    enforcer.set_grace_period(Duration::ZERO);
    let check = |dp: &mut Dataplane,
                 enforcer: &mut Enforcer,
                 cfg: &sgctl::policy::config::Config,
                 dir: Direction,
                 packet: &PacketTuple,
                 what: &str| {
        let binding = &cfg.interfaces[0];
        enforcer.sessions().flush().expect("flush");
        let got = run(dp, hook_for(dir), &frame_for(packet)).expect("test run");
        let got = named(enforcer, got);
        compare(cfg, binding, dir, packet, &got).unwrap_or_else(|e| panic!("{what}, {dir:?}: {e}"));
        got
    };
    let mut probes = 0;
    for (i, cfg) in configs.iter().enumerate() {
        enforcer.apply(cfg, &[(TEST_RUN_IFINDEX, &cfg.interfaces[0])]).expect("apply");
        let binding = &cfg.interfaces[0];
        let mut rng = Rng::new(i as u64);
        match i {
            0 | 1 => {
                for dir in DIRECTIONS {
                    for _ in 0..150 {
                        let packet = generator::packet(cfg, binding, dir, &mut rng);
                        check(&mut dp, &mut enforcer, cfg, dir, &packet, "realistic_ruleset(14, 40000)");
                        probes += 1;
                    }
                }
            }
            2 => {
                for _ in 0..400 {
                    let v6 = rng.below(2) == 1;
                    let (src, dst) = if v6 { ("2001:db8:1::7", "2001:db8::1") } else { ("198.19.3.4", "198.18.0.1") };
                    let (src, dst) = (src.parse().unwrap(), dst.parse().unwrap());
                    let dst_port = 1 + rng.below(41_000) as u16;
                    let packet = PacketTuple { src, dst, protocol: 6, src_port: 40000, dst_port };
                    check(&mut dp, &mut enforcer, cfg, Direction::Ingress, &packet, "one rule a port");
                    probes += 1;
                }
            }
            _ => {
                let members = &cfg.groups[binding.groups[0]].members;
                // The two last-ranked rules: the IPv4 network's drop, then the IPv6 one's.
                let n = sg_common::MAX_USER_RULES as u32;
                for (from, v6, rule) in [("192.0.2.77", false, n - 1), ("2001:db8:ffff::9", true, n)] {
                    let src = from.parse().unwrap();
                    let dst = *members.iter().find(|a| a.is_ipv6() == v6).expect("a member of each family");
                    for (protocol, dst_port) in [(6, 443), (17, 53), (47, 0)] {
                        let packet = PacketTuple { src, dst, protocol, src_port: 40000, dst_port };
                        let got = check(
                            &mut dp,
                            &mut enforcer,
                            cfg,
                            Direction::Ingress,
                            &packet,
                            "the last-ranked of 65,536",
                        );
                        assert_eq!(got.decision.rule_id, rule, "{from} {protocol}");
                        probes += 1;
                    }
                }
            }
        }
    }
    eprintln!("rule sets in bands: {probes} probes, 0 mismatches");
}

const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

/// One-rule changes of a 3,000-rule set, each written over the ranges the set before
/// last used (the enforcer keeps them as the interface's spare, with what they hold):
/// only the entries that differ are written, and every probe after every change is
/// decided as the reference decides it, on both hooks. The changes move a rule's port,
/// narrow a rule's peer, delete a rule (every later bit moves), and go back.
#[test]
fn one_rule_changes_written_over_spares_match_the_reference() {
    if !kernel_tests_enabled("one_rule_changes_written_over_spares_match_the_reference") {
        return;
    }
    use sgctl::policy::config::{Peer, PortRange, Protocol};
    let ingress = generator::realistic_ruleset(21, 3000);
    let base = parse_str(&ingress, "large.toml").expect("valid");
    let tcp_rule = |cfg: &sgctl::policy::config::Config, nth: usize| {
        let rules = cfg.groups.iter().flat_map(|g| g.rules.iter().map(move |r| (g, r)));
        let mut tcp = rules.filter(|(_, r)| r.protocol == Protocol::Tcp && matches!(r.peer, Peer::Cidr(_)));
        tcp.nth(nth).map(|(_, r)| r.id).expect("enough TCP rules")
    };
    let edit = |cfg: &sgctl::policy::config::Config, id: u32, change: &dyn Fn(&mut sgctl::policy::config::Rule)| {
        let mut next = cfg.clone();
        next.groups.iter_mut().flat_map(|g| &mut g.rules).filter(|r| r.id == id).for_each(change);
        next
    };
    let moved = edit(&base, tcp_rule(&base, 10), &|r| r.port_range = PortRange { first: 4444, last: 4444 });
    let narrowed = edit(&moved, tcp_rule(&base, 40), &|r| {
        if let Peer::Cidr(net) = r.peer {
            r.peer = Peer::Cidr(
                net.subnets(net.prefix_len().saturating_add(2).min(net.max_prefix_len())).unwrap().next().unwrap(),
            );
        }
    });
    let mut deleted = narrowed.clone();
    let gone = tcp_rule(&base, 5);
    deleted.groups.iter_mut().for_each(|g| g.rules.retain(|r| r.id != gone));
    let sequence = [&base, &moved, &narrowed, &deleted, &narrowed, &moved, &base];

    let compiled: Vec<_> =
        sequence.iter().map(|cfg| compile(cfg, &cfg.interfaces[0], Direction::Ingress).unwrap()).collect();
    let capacity = Capacity { sessions: test_capacity().sessions, ..Capacity::for_rule_sets(&compiled[..2]) };
    let mut dp = Dataplane::load(&sgctl::dataplane::LoadOptions { capacity, ..test_load_options() }).expect("load");
    let mut enforcer = Enforcer::new(&mut dp, &capacity).expect("maps");
    enforcer.set_grace_period(Duration::ZERO);
    let mut written = Vec::new();
    let mut probes = 0;
    for (step, cfg) in sequence.iter().enumerate() {
        let binding = &cfg.interfaces[0];
        let report = enforcer.apply(cfg, &[(TEST_RUN_IFINDEX, binding)]).expect("apply");
        enforcer.retire_pending();
        written.push(report.entries_written);
        let mut rng = Rng::new(1000 + step as u64);
        for dir in DIRECTIONS {
            for _ in 0..300 {
                let packet = generator::packet(cfg, binding, dir, &mut rng);
                enforcer.sessions().flush().expect("flush");
                let got = run(&mut dp, hook_for(dir), &frame_for(&packet)).expect("test run");
                compare(cfg, binding, dir, &packet, &named(&enforcer, got))
                    .unwrap_or_else(|e| panic!("change {step} of the sequence, {dir:?}: {e}"));
                probes += 1;
            }
        }
    }
    let whole = |c: &sgctl::policy::compile::Compiled| {
        c.vectors.len() + c.chunks.len() + c.peer_v6.len() + c.rules.len() + c.port_tables.len() + c.port_blocks.len()
    };
    eprintln!(
        "one-rule changes: entries written {written:?} (a whole set: {}), {probes} probes, 0 mismatches",
        whole(&compiled[0])
    );
    // The first two applies go to fresh ranges; from the third on, each is written over
    // the set before last. A narrowed peer is compiled whole, and numbered like the set
    // before, so it writes a few entries too. The last differs from the set its ranges
    // hold (`narrowed`) by two rules and writes a few entries at their own indexes; a
    // deletion moves every later bit and rewrites more, but still less than a whole set.
    // (The first apply writes the egress set too: the pseudo-rules alone.)
    assert!(written[0] >= whole(&compiled[0]), "{written:?}");
    for (i, w) in written.iter().enumerate().skip(2) {
        assert!(*w < whole(&compiled[i]), "change {i} wrote {w} entries, a whole set");
    }
    assert!(written[2] * 40 < whole(&compiled[2]), "a peer narrowed: {written:?} of {}", whole(&compiled[2]));
    assert!(written[6] * 40 < whole(&compiled[6]), "two rules apart: {written:?} of {}", whole(&compiled[6]));
}
