//! Differential test of the compiler against the reference evaluator, host only (no root,
//! no kernel): random rule files from `sg_tests::r#gen` (`gen` is reserved in edition 2024),
//! each interface compiled in both directions, and every probe classified by `Compiled::simulate` (the kernel's lookup in
//! plain Rust) and by `evaluate` (docs/rule-model.md#evaluation-order, steps 4 to 7).
//! They must agree on the verdict, the deciding step and, for rules, the rule id.
//!
//! `SG_DIFF_CASES` (default 3000) sets the number of rule files, `SG_DIFF_PACKETS`
//! (default 20) the probes per file, and `SG_DIFF_SEED` the seed of the first file (the
//! others follow it: seed + 1, seed + 2, ...). A mismatch prints the seed to rerun it
//! alone: `SG_DIFF_SEED=<seed> SG_DIFF_CASES=1 SG_DIFF_PACKETS=<n>`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use sg_common::{step, verdict};
use sg_tests::r#gen::{self as generator, Case, GenOptions, Probe, RealisticOptions, Rng};
use sg_tests::testrun::expected;
use sgctl::policy::compile::{Compiled, Simulated, compile};
use sgctl::policy::config::{Action, Config, Direction, parse_str};
use sgctl::policy::eval::{DecidedBy, PacketTuple, evaluate};
use sgctl::policy::order::pooled_rules;

const BASE_SEED: u64 = 0x5347_6469_6666_0000;
const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];
/// Stop after this many mismatches (each is printed in full).
const MAX_REPORTED: usize = 5;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number"))
        }
        Err(_) => default,
    }
}

/// How often each (step, verdict) decided, to show the generator reaches every step.
#[derive(Default)]
struct Tally {
    probes: u64,
    decided: BTreeMap<(u8, u8), u64>,
    max_rules: usize,
}

fn step_name(step: u8) -> &'static str {
    step::NAMES.get(usize::from(step)).copied().unwrap_or("?")
}

/// Every interface of `cfg` compiled in both directions.
fn compile_all(case: &Case) -> HashMap<(String, Direction), Compiled> {
    let cfg = &case.config;
    let mut out = HashMap::new();
    for iface in &cfg.interfaces {
        for dir in DIRECTIONS {
            let compiled = compile(cfg, iface, dir).unwrap_or_else(|e| {
                panic!(
                    "seed {:#x}: compiling {} {dir} failed: {e:#}\n--- rule file ---\n{}",
                    case.seed, iface.name, case.toml
                )
            });
            out.insert((iface.name.clone(), dir), compiled);
        }
    }
    out
}

/// Compares one probe; `Err` holds a full report (probe, both results, rule file).
fn check_probe(cfg: &Config, toml: &str, compiled: &Compiled, probe: &Probe) -> Result<(u8, u8), String> {
    let iface = cfg.interface(&probe.iface).expect("probe on a bound interface");
    let p = &probe.packet;
    let decision = evaluate(cfg, iface, probe.direction, p);
    let (want_verdict, want_step, want_rule) = expected(&decision);
    let got = compiled.simulate(probe.peer(), probe.local(), p.protocol, p.src_port, p.dst_port);
    let agrees = got.is_some_and(|Simulated { verdict, step, rule_id }| {
        verdict == want_verdict && step == want_step && (step != step::RULE || rule_id == want_rule)
    });
    if agrees {
        return Ok((want_step, want_verdict));
    }
    let got_text = match got {
        Some(s) => format!(
            "verdict {} ({}), step {} ({}), rule id {}",
            s.verdict,
            if s.verdict == verdict::PASS { "pass" } else { "drop" },
            s.step,
            step_name(s.step),
            s.rule_id
        ),
        None => "no bit set (the default pseudo-rule should always match)".to_string(),
    };
    Err(format!(
        "probe: {probe}\n\
         packet: {p:?}\n\
         compiled (simulate): {got_text}\n\
         evaluator: verdict {want_verdict}, step {want_step} ({}), rule id {want_rule}; {:?}\n\
         {}\n\
         --- rule file ---\n{}",
        step_name(want_step),
        decision.decided_by,
        decision.explain(cfg),
        toml,
    ))
}

fn check_case(case: &Case, tally: &mut Tally, mismatches: &mut Vec<String>) {
    let compiled = compile_all(case);
    for iface in &case.config.interfaces {
        for dir in DIRECTIONS {
            tally.max_rules = tally.max_rules.max(pooled_rules(&case.config, iface, dir).len());
        }
    }
    for probe in &case.packets {
        let compiled = &compiled[&(probe.iface.clone(), probe.direction)];
        tally.probes += 1;
        match check_probe(&case.config, &case.toml, compiled, probe) {
            Ok(key) => *tally.decided.entry(key).or_default() += 1,
            Err(report) => {
                let report = format!(
                    "MISMATCH, seed {seed:#x} (rerun alone: SG_DIFF_SEED={seed:#x} SG_DIFF_CASES=1 \
                     SG_DIFF_PACKETS={packets})\n{report}",
                    seed = case.seed,
                    packets = case.packets.len()
                );
                eprintln!("{report}\n");
                mismatches.push(report);
                if mismatches.len() >= MAX_REPORTED {
                    return;
                }
            }
        }
    }
}

#[test]
fn compiled_rule_sets_agree_with_the_evaluator() {
    let cases = env_u64("SG_DIFF_CASES", 3000);
    let packets = env_u64("SG_DIFF_PACKETS", 20) as usize;
    let base = env_u64("SG_DIFF_SEED", BASE_SEED);
    let small = GenOptions::default();
    let large = GenOptions::large();
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut mismatches = Vec::new();
    for i in 0..cases {
        let seed = base.wrapping_add(i);
        // One file in eight is large, so rule vectors span several words (chosen by the
        // seed, so that a seed reruns alone).
        let opts = if seed % 8 == 7 { &large } else { &small };
        let case = generator::case(seed, opts, packets);
        check_case(&case, &mut tally, &mut mismatches);
        if mismatches.len() >= MAX_REPORTED {
            break;
        }
    }
    eprintln!(
        "{cases} rule files from seed {base:#x}, {} probes, largest interface+direction {} rules, in {:.1?}",
        tally.probes,
        tally.max_rules,
        started.elapsed()
    );
    for ((step, verdict), count) in &tally.decided {
        let action = if *verdict == verdict::PASS { "pass" } else { "drop" };
        eprintln!("  {:<20} {action:<4} {count}", step_name(*step));
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatch(es) between compile+simulate and evaluate; see above",
        mismatches.len()
    );

    // The generator must reach every step with both verdicts where the step has both.
    if cases >= 200 && packets >= 10 {
        let expected_keys = [
            (step::INTRA_GROUP_ACCEPT, verdict::PASS),
            (step::RULE, verdict::PASS),
            (step::RULE, verdict::DROP),
            (step::INTRA_GROUP_DROP, verdict::DROP),
            (step::DEFAULT, verdict::PASS),
            (step::DEFAULT, verdict::DROP),
        ];
        for key in expected_keys {
            assert!(tally.decided.get(&key).is_some_and(|&n| n >= 10), "the generator rarely reaches {key:?}");
        }
        assert!(tally.max_rules > 64, "no rule set spans two vector words");
    }
}

#[test]
fn generation_is_deterministic() {
    let opts = GenOptions::default();
    for seed in [0, 1, u64::MAX] {
        let (a, b) = (generator::case(seed, &opts, 10), generator::case(seed, &opts, 10));
        assert_eq!(a.toml, b.toml);
        assert_eq!(a.packets, b.packets);
    }
    assert_ne!(generator::case(1, &opts, 0).toml, generator::case(2, &opts, 0).toml);
    assert_eq!(generator::realistic_ruleset(7, 50), generator::realistic_ruleset(7, 50));
}

fn parse(toml: &str) -> Config {
    parse_str(toml, "realistic.toml").unwrap_or_else(|e| panic!("{e}\n---\n{toml}"))
}

#[test]
fn realistic_rule_sets_parse_compile_and_agree() {
    for n in [0, 10, 65, 100, 1000] {
        for seed in [1, 2] {
            let toml = generator::realistic_ruleset(seed, n);
            let cfg = parse(&toml);
            assert_eq!(cfg.rules().count(), n, "seed {seed}, n {n}");
            assert_eq!(cfg.interfaces.len(), 1);
            let iface = &cfg.interfaces[0];
            assert_eq!(iface.groups.len(), 1);
            assert_eq!(pooled_rules(&cfg, iface, Direction::Ingress).len(), n);
            let mut rng = Rng::new(seed ^ n as u64);
            for dir in DIRECTIONS {
                let compiled = compile(&cfg, iface, dir).unwrap_or_else(|e| panic!("seed {seed}, n {n}: {e:#}"));
                for _ in 0..300 {
                    let packet = generator::packet(&cfg, iface, dir, &mut rng);
                    let probe = Probe { iface: iface.name.clone(), direction: dir, packet };
                    if let Err(report) = check_probe(&cfg, &toml, &compiled, &probe) {
                        panic!("realistic_ruleset({seed}, {n}):\n{report}");
                    }
                }
            }
        }
    }
}

#[test]
fn realistic_drop_all_from_is_decided_by_the_last_ranked_rule() {
    let opts = RealisticOptions {
        iface: "bench0".to_string(),
        drop_all_from: Some("192.0.2.0/24".to_string()),
        drop_all_from_v6: None,
    };
    let from: IpAddr = "192.0.2.77".parse().unwrap();
    for n in [1, 10, 100, 1000] {
        let toml = generator::realistic_ruleset_with(3, n, &opts);
        let cfg = parse(&toml);
        assert_eq!(cfg.rules().count(), n);
        let iface = cfg.interface("bench0").expect("bound");
        let last = *pooled_rules(&cfg, iface, Direction::Ingress).last().expect("rules");
        assert_eq!((last.id, last.action), (n as u32, Action::Drop));
        let local = cfg.groups[iface.groups[0]].members.iter().copied().find(IpAddr::is_ipv4).expect("v4 member");
        let compiled = compile(&cfg, iface, Direction::Ingress).unwrap();
        for (protocol, src_port, dst_port) in [(6, 40000, 443), (17, 5353, 53), (1, 0, 0), (47, 0, 0), (132, 0, 0)] {
            let packet = PacketTuple { src: from, dst: local, protocol, src_port, dst_port };
            let decision = evaluate(&cfg, iface, Direction::Ingress, &packet);
            assert_eq!(decision.decided_by, DecidedBy::Rule { rule_id: n as u32 }, "{}", decision.explain(&cfg));
            assert_eq!(decision.skipped.len(), n - 1, "every other rule is consulted first");
            let got = compiled.simulate(from, local, protocol, src_port, dst_port).expect("a bit matches");
            assert_eq!((got.verdict, got.step, got.rule_id), (verdict::DROP, step::RULE, n as u32));
        }
    }
}

/// The band of `compiled` whose bits hold user rule `rule_id`.
fn band_of(compiled: &Compiled, rule_id: u32) -> usize {
    let bit = compiled.rules.iter().position(|r| r.step == step::RULE && r.rule_id == rule_id).expect("a rule's bit");
    compiled.bands.iter().position(|b| (b.first_rule..b.first_rule + b.rule_count).contains(&(bit as u32))).unwrap()
}

/// Rule sets of more bits than a vector holds are compiled in bands
/// (`sg_common::MAX_BANDS`), each ending in a next-band pseudo-rule but the last: every
/// probe is decided as the reference decides it, by rules of every band, and the
/// last-ranked of 65,536 rules decides from the last band.
#[test]
fn rule_sets_in_bands_agree_with_the_evaluator() {
    // Realistic sets: broad rules rank early and decide most probes.
    for (seed, n, bands) in [(21, 20_000, 2), (22, 40_000, 3)] {
        let toml = generator::realistic_ruleset(seed, n);
        let cfg = parse(&toml);
        let iface = &cfg.interfaces[0];
        let mut rng = Rng::new(seed);
        for dir in DIRECTIONS {
            let compiled = compile(&cfg, iface, dir).unwrap_or_else(|e| panic!("seed {seed}, n {n}: {e:#}"));
            let want_bands = if dir == Direction::Ingress { bands } else { 1 };
            assert_eq!(compiled.bands.len(), want_bands, "{n} rules, {dir:?}");
            let next_band = compiled.rules.iter().filter(|r| r.step == step::NEXT_BAND).count();
            assert_eq!(next_band, want_bands - 1, "one next-band pseudo-rule ends each band but the last");
            for _ in 0..100 {
                let packet = generator::packet(&cfg, iface, dir, &mut rng);
                let probe = Probe { iface: iface.name.clone(), direction: dir, packet };
                if let Err(report) = check_probe(&cfg, &toml, &compiled, &probe) {
                    panic!("realistic_ruleset({seed}, {n}):\n{}", &report[..report.len().min(4000)]);
                }
            }
        }
    }
    // One rule a port: each band's rules decide their ports' probes.
    let toml = generator::one_port_each(40_000);
    let cfg = parse(&toml);
    let iface = &cfg.interfaces[0];
    let compiled = compile(&cfg, iface, Direction::Ingress).unwrap();
    assert_eq!(compiled.bands.len(), 3);
    let mut rng = Rng::new(5);
    let mut decided_in = vec![0; compiled.bands.len()];
    for _ in 0..600 {
        let v6 = rng.below(2) == 1;
        let src: IpAddr = if v6 { "2001:db8:1::7".parse().unwrap() } else { "198.19.3.4".parse().unwrap() };
        let dst: IpAddr = if v6 { "2001:db8::1".parse().unwrap() } else { "198.18.0.1".parse().unwrap() };
        let packet = PacketTuple { src, dst, protocol: 6, src_port: 40000, dst_port: 1 + rng.below(41_000) as u16 };
        let probe = Probe { iface: iface.name.clone(), direction: Direction::Ingress, packet };
        match check_probe(&cfg, &toml, &compiled, &probe) {
            Ok((step::RULE, _)) => {
                let got = compiled.simulate(src, dst, 6, 40000, probe.packet.dst_port).expect("a bit");
                decided_in[band_of(&compiled, got.rule_id)] += 1;
            }
            Ok(_) => {}
            Err(report) => panic!("one rule a port:\n{}", &report[..report.len().min(4000)]),
        }
    }
    assert!(decided_in.iter().all(|&d| d > 20), "rules of every band decide probes: {decided_in:?}");
    // The last-ranked of the most rules one interface and direction holds.
    let opts = RealisticOptions {
        iface: "bench0".to_string(),
        drop_all_from: Some("192.0.2.0/24".to_string()),
        drop_all_from_v6: Some("2001:db8:ffff::/48".to_string()),
    };
    let cfg = parse(&generator::realistic_ruleset_with(3, sg_common::MAX_USER_RULES, &opts));
    let iface = cfg.interface("bench0").expect("bound");
    let compiled = compile(&cfg, iface, Direction::Ingress).unwrap();
    assert_eq!(compiled.bands.len(), sg_common::MAX_BANDS as usize);
    let members = &cfg.groups[iface.groups[0]].members;
    for (from, v6) in [("192.0.2.77", false), ("2001:db8:ffff::9", true)] {
        let from: IpAddr = from.parse().unwrap();
        let local = *members.iter().find(|a| a.is_ipv6() == v6).expect("a member of each family");
        let got = compiled.simulate(from, local, 6, 40000, 443).expect("a bit matches");
        let packet = PacketTuple { src: from, dst: local, protocol: 6, src_port: 40000, dst_port: 443 };
        let want = expected(&evaluate(&cfg, iface, Direction::Ingress, &packet));
        assert_eq!((got.verdict, got.step, got.rule_id), want, "{from}");
        assert_eq!(got.step, step::RULE);
        assert_eq!(band_of(&compiled, got.rule_id), sg_common::MAX_BANDS as usize - 1, "decided in the last band");
    }
}
