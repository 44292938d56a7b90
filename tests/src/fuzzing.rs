//! The checks of the fuzz targets (`tests/fuzz/fuzz_targets/*.rs` are one-line wrappers),
//! here so that the same code runs under libFuzzer and in `tests/tests/fuzz_regressions.rs`
//! over the committed corpus and every input a fuzzer ever found. Each function takes
//! the fuzzer's bytes and panics on a bug; an input the code rightly refuses (a rule file
//! that does not validate, JSON that is not a security group) returns quietly.
//!
//! - [`rule_file`]: the parser and validator, then everything that consumes a validated
//!   file (compiler, lint, diff, the reference evaluator and its explanations, the
//!   exporters) must not panic, and diff must find a file equal to itself.
//! - [`import_aws`], [`import_alibaba`]: an import that succeeds must write a rule file
//!   that validates (and survives [`rule_file`]'s checks).
//! - [`kernel_parser`]: the kernel's frame parser on both hooks against
//!   [`crate::ref_parse`], field by field.
//! - [`classifier`]: random rule files applied to a loaded data plane, random packets
//!   through BPF_PROG_TEST_RUN, against the reference evaluator.

use std::{
    hash::{Hash as _, Hasher as _},
    sync::{Mutex, OnceLock},
    time::Duration,
};

use sg_common::{PacketMeta, family, ip_proto, step, verdict};
use sgctl::{
    control::Enforcer,
    dataplane::Dataplane,
    policy::{
        compile::compile,
        config::{Direction, GroupKind, parse_str},
        eval::{PacketTuple, evaluate},
        guidance::{
            diff::{self, diff},
            export,
            import::{self, ImportError, alibaba, aws, parse_values},
            lint::{LintOptions, Provider, lint},
            testgen,
        },
    },
};

use crate::{
    r#gen::{self as generator, GenOptions},
    ref_parse,
    testrun::{
        HOOKS, Hook, TEST_RUN_IFINDEX, compare, frame_for, hook_for, named, run, test_capacity, test_load_options,
    },
};

/// The fuzz targets by name, for the regression test and `cargo xtask fuzz`.
/// A fuzz target's check: panics on a bug.
pub type Check = fn(&[u8]);

pub const TARGETS: &[(&str, Check)] = &[
    ("rule_file", rule_file),
    ("import_aws", import_aws),
    ("import_alibaba", import_alibaba),
    ("kernel_parser", kernel_parser),
    ("classifier", classifier),
];

/// Targets that load BPF programs (root only).
pub const KERNEL_TARGETS: &[&str] = &["kernel_parser", "classifier"];

const FILE: &str = "fuzz.toml";

/// A deterministic seed from the input, for the packets the rule-file checks probe with.
fn seed_of(data: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// Arbitrary bytes as a rule file (lossily decoded, so every input reaches the parser).
pub fn rule_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_rule_text(&text, seed_of(data));
}

/// Everything downstream of the validator, on `text` if it validates.
fn check_rule_text(text: &str, seed: u64) {
    let Ok(cfg) = parse_str(text, FILE) else { return };
    // Parsing is a function of the text: a second parse validates too, and equals the first
    // in every verdict (diff finds no change).
    let again = parse_str(text, FILE).unwrap_or_else(|e| panic!("the second parse of one text failed:\n{e}"));
    for binding in &cfg.interfaces {
        for direction in [Direction::Ingress, Direction::Egress] {
            // Refusals (too many rules for the maps, ...) are errors, not panics.
            let _ = compile(&cfg, binding, direction);
        }
    }
    for provider in [None, Some(Provider::Alibaba), Some(Provider::Aws)] {
        let findings = lint(&cfg, text, FILE, &LintOptions { provider, ..LintOptions::default() });
        for finding in &findings {
            assert!(finding.line <= text.lines().count() + 1, "lint names line {} of a shorter file", finding.line);
        }
    }
    for (other, what) in [(&cfg, "itself"), (&again, "a second parse")] {
        let report = diff(&cfg, other, None).unwrap_or_else(|e| panic!("diff against {what}: {e}"));
        assert!(
            !report.changed(),
            "diff of a file against {what} reports changes:\n{}",
            diff::to_text(&report, &cfg, other)
        );
        let _ = diff::to_json(&report, &cfg, other, FILE, FILE);
    }
    if let Some(first) = cfg.interfaces.first() {
        let report =
            diff(&cfg, &again, Some(&first.name)).unwrap_or_else(|e| panic!("diff --iface {}: {e}", first.name));
        assert!(!report.changed(), "diff --iface {} of a file against itself reports changes", first.name);
    }
    // `sgctl trace` on a few packets per interface and direction: the evaluator, its
    // explanation and its JSON; the same packet decides the same on both parses.
    let mut rng = testgen::Rng::new(seed);
    for binding in &cfg.interfaces {
        let twin = again.interface(&binding.name).expect("the second parse has the same interfaces");
        for _ in 0..4 {
            let (direction, packet) = testgen::random_packet(&mut rng);
            let decision = evaluate(&cfg, binding, direction, &packet);
            let _ = decision.explain(&cfg);
            let _ = decision.to_json(&cfg);
            assert_eq!(
                decision,
                evaluate(&again, twin, direction, &packet),
                "{direction:?} {packet:?} decides differently on a second parse"
            );
        }
    }
    if let Ok(exported) = export::aws(&cfg, FILE) {
        let _ = serde_json::to_string(&exported.document);
    }
    if let Ok(exported) = export::alibaba(&cfg, FILE) {
        let _ = serde_json::to_string(&exported.document);
    }
}

/// What an importer made of the input: a written rule file must validate.
fn check_import(result: Result<(String, Vec<import::Problem>), ImportError>, importer: &str, seed: u64) {
    match result {
        Ok((text, _problems)) => {
            if let Err(errors) = parse_str(&text, "imported.toml") {
                panic!("{importer} import wrote a rule file that does not validate:\n{errors}\n---\n{text}");
            }
            check_rule_text(&text, seed);
        }
        Err(ImportError::Invalid(message)) => panic!("{importer} import generated an invalid rule file:\n{message}"),
        // Refusals and unreadable input are the importer's answers, not bugs.
        Err(_) => {}
    }
}

/// The JSON documents of the input, or `None` when it is not JSON.
fn json_inputs(data: &[u8]) -> Option<Vec<(String, Vec<serde_json::Value>)>> {
    let text = String::from_utf8_lossy(data);
    let values = parse_values(&text, "fuzz.json").ok()?;
    Some(vec![("fuzz.json".to_string(), values)])
}

/// Bytes as `aws ec2 describe-security-groups` output.
pub fn import_aws(data: &[u8]) {
    let Some(inputs) = json_inputs(data) else { return };
    let seed = seed_of(data);
    for interface in [None, Some("eth0".to_string())] {
        let options = aws::Options { interface, ..aws::Options::default() };
        check_import(aws::import(&inputs, &options), "aws", seed);
    }
}

/// Bytes as an Alibaba Cloud `DescribeSecurityGroupAttribute` response.
pub fn import_alibaba(data: &[u8]) {
    let Some(inputs) = json_inputs(data) else { return };
    let seed = seed_of(data);
    for (kind, interface) in [(GroupKind::Basic, None), (GroupKind::Advanced, Some("eth0".to_string()))] {
        let options = alibaba::Options { kind, kinds: Default::default(), members: Default::default(), interface };
        check_import(alibaba::import(&inputs, &options), "alibaba", seed);
    }
}

/// A data plane loaded once per process (loading verifies both programs: a second or
/// more), behind a mutex because the regression test runs targets on several threads.
fn shared<T>(cell: &'static OnceLock<Mutex<T>>, make: impl FnOnce() -> T) -> std::sync::MutexGuard<'static, T> {
    cell.get_or_init(|| Mutex::new(make())).lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Frames longer than this are cut: BPF_PROG_TEST_RUN refuses frames beyond about a page
/// less headroom, and every header the parser may read starts by offset 1024.
pub const MAX_FRAME: usize = 2048;

/// The frame a `kernel_parser` input stands for: the first byte chooses whether the IP
/// length fields are set to what the frame holds (so that mutations reach the transport
/// headers instead of stopping at the length checks), the rest is the frame.
pub fn parser_frame(data: &[u8]) -> Vec<u8> {
    let Some((&mode, rest)) = data.split_first() else { return Vec::new() };
    let mut frame = rest[..rest.len().min(MAX_FRAME)].to_vec();
    if mode & 1 == 1 {
        fix_lengths(&mut frame);
    }
    frame
}

/// Sets the IPv4 total length or IPv6 payload length to the rest of the frame, behind up
/// to two tags (found the simple way; the reference parser judges the result).
fn fix_lengths(frame: &mut [u8]) {
    let mut at = 12;
    for _ in 0..3 {
        let Some(t) = frame.get(at..at + 2) else { return };
        let ethertype = u16::from_be_bytes([t[0], t[1]]);
        let rest = frame.len().saturating_sub(at + 2);
        match ethertype {
            0x8100 | 0x88a8 => at += 4,
            0x0800 if rest >= 20 => {
                let total = u16::try_from(rest).unwrap_or(u16::MAX);
                frame[at + 4..at + 6].copy_from_slice(&total.to_be_bytes());
                return;
            }
            0x86dd if rest >= 40 => {
                let payload = u16::try_from(rest - 40).unwrap_or(u16::MAX);
                frame[at + 6..at + 8].copy_from_slice(&payload.to_be_bytes());
                return;
            }
            _ => return,
        }
    }
}

static PARSER_DP: OnceLock<Mutex<Dataplane>> = OnceLock::new();

/// A frame through both hooks of a data plane without rule set; the verdict, the step,
/// the malformed reason and every field of the traced `PacketMeta` must equal what
/// [`ref_parse::parse`] says.
pub fn kernel_parser(data: &[u8]) {
    let frame = parser_frame(data);
    let mut dp = shared(&PARSER_DP, || Dataplane::load(&test_load_options()).expect("load the programs"));
    if let Err(mismatch) = check_frame(&mut dp, &frame) {
        panic!("kernel parser and reference disagree on {} bytes {:02x?}:\n{mismatch}", frame.len(), frame);
    }
}

/// [`kernel_parser`]'s comparison on both hooks; `Err` describes the first disagreement.
pub fn check_frame(dp: &mut Dataplane, frame: &[u8]) -> Result<(), String> {
    let want = ref_parse::parse(frame);
    for hook in HOOKS {
        let got = match run(dp, hook, frame) {
            Ok(got) => got,
            // The test-run itself refuses frames shorter than an Ethernet header (both
            // hooks), and on TC IP frames shorter than their IP header: nothing else.
            Err(_) if frame.len() < 14 => continue,
            Err(_) if hook == Hook::Tc && ref_parse::tc_refuses(frame) => continue,
            Err(e) => return Err(format!("{hook:?}: test run failed: {e:#}")),
        };
        if hook == Hook::Tc && ref_parse::tc_refuses(frame) {
            return Err("TC: test-run accepted an IP frame shorter than its IP header".into());
        }
        let (want_verdict, want_step, want_reason, want_meta) = match want {
            Err(reason) => (verdict::DROP, step::MALFORMED, reason, PacketMeta::default()),
            Ok(meta) if meta.family == family::NONE => (verdict::PASS, step::NOT_IP, 0, meta),
            Ok(meta) => (verdict::PASS, step::UNCONFIGURED, 0, meta),
        };
        let got_tuple = (got.verdict, got.decision.step, got.decision.reason);
        if got_tuple != (want_verdict, want_step, want_reason) {
            return Err(format!(
                "{hook:?}: kernel verdict/step/reason {got_tuple:?} ({}), reference {:?} ({})",
                sg_common::malformed::NAMES.get(usize::from(got_tuple.2)).unwrap_or(&"?"),
                (want_verdict, want_step, want_reason),
                sg_common::malformed::NAMES[usize::from(want_reason)],
            ));
        }
        if got.meta != want_meta {
            return Err(format!("{hook:?}: kernel parsed\n  {:?}\nreference\n  {want_meta:?}", got.meta));
        }
    }
    Ok(())
}

/// A data plane with an enforcer, for [`classifier`].
struct Classifier {
    dp: Dataplane,
    enforcer: Enforcer,
}

static CLASSIFIER_DP: OnceLock<Mutex<Classifier>> = OnceLock::new();

/// Probes per input at most: each costs a session flush and a test run.
const MAX_PROBES: usize = 32;

/// The seed, the generator's options and the probes an input stands for: bytes 0-7 the
/// rule file's seed, byte 8 its shape (bit 0: the generator's large options; bit 1: the
/// unit tests' small files of `testgen` instead of `sg_tests::gen`'s), then one 8-byte
/// chunk per probe (none: 8 probes biased to the file's rules). Every bit changes what
/// runs, so libFuzzer's coverage guidance can steer the file and each probe on its own.
struct ClassifierInput {
    seed: u64,
    large: bool,
    small_files: bool,
    probes: Vec<u64>,
}

impl ClassifierInput {
    fn of(data: &[u8]) -> Self {
        let mut seed = [0u8; 8];
        let head = &data[..data.len().min(8)];
        seed[..head.len()].copy_from_slice(head);
        let shape = data.get(8).copied().unwrap_or(0);
        let probes = data
            .get(9..)
            .unwrap_or(&[])
            .chunks(8)
            .take(MAX_PROBES)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect();
        ClassifierInput { seed: u64::from_le_bytes(seed), large: shape & 1 == 1, small_files: shape & 2 == 2, probes }
    }
}

/// A probe from a `testgen` packet, made to fit what [`frame_for`] builds and the kernel
/// can see (`sg_tests::gen::packet`'s domain): no IPv6 extension-header numbers as the
/// protocol (the kernel walks them as headers), ICMP only over IPv4 and ICMPv6 only over
/// IPv6, ports only for TCP and UDP (the frame of another protocol carries none).
/// Neighbour discovery and MLD stay in: [`classifier`] checks that they pass before the
/// rules (the fuzzer's first finding was an MLDv2 report compared with `evaluate`).
fn fit(mut packet: PacketTuple) -> Option<PacketTuple> {
    let v6 = packet.src.is_ipv6();
    match packet.protocol {
        0 | 43 | 44 | 51 | 60 if v6 => return None,
        ip_proto::ICMP if v6 => return None,
        ip_proto::ICMPV6 if !v6 => return None,
        ip_proto::TCP | ip_proto::UDP => {}
        ip_proto::ICMP | ip_proto::ICMPV6 => packet.src_port = 0,
        _ => (packet.src_port, packet.dst_port) = (0, 0),
    }
    Some(packet)
}

/// A random rule file applied to a real data plane and random packets through
/// BPF_PROG_TEST_RUN on the hook of their direction: verdict, deciding step and rule id
/// must equal the reference evaluator's (`sg_tests::testrun::compare`), as in
/// `tests/tests/kernel_differential.rs`, whose generator this reuses.
pub fn classifier(data: &[u8]) {
    let input = ClassifierInput::of(data);
    let (toml, cfg) = if input.small_files {
        testgen::random_config(input.seed)
    } else {
        let opts = if input.large { GenOptions::large() } else { GenOptions::default() };
        let case = generator::case(input.seed, &opts, 0);
        (case.toml, case.config)
    };
    if cfg.interfaces.is_empty() {
        return;
    }
    // (binding index, direction, packet) for every probe.
    let mut probes: Vec<(usize, Direction, PacketTuple)> = Vec::new();
    if input.probes.is_empty() {
        let mut rng = generator::Rng::new(input.seed);
        for probe in generator::probes(&cfg, &mut rng, 8) {
            let index = cfg.interfaces.iter().position(|b| b.name == probe.iface).expect("probe of a bound interface");
            probes.push((index, probe.direction, probe.packet));
        }
    }
    for &chunk in &input.probes {
        let index = (chunk >> 56) as usize % cfg.interfaces.len();
        let direction = if chunk & 1 == 0 { Direction::Ingress } else { Direction::Egress };
        // Bit 1: a packet biased to the file's rules, or one of `testgen`'s edge packets.
        let packet = if chunk & 2 == 0 {
            generator::packet(&cfg, &cfg.interfaces[index], direction, &mut generator::Rng::new(chunk))
        } else {
            let (_, packet) = testgen::random_packet(&mut testgen::Rng::new(chunk));
            match fit(packet) {
                Some(packet) => packet,
                None => continue,
            }
        };
        probes.push((index, direction, packet));
    }
    let mut guard = shared(&CLASSIFIER_DP, || {
        let mut dp = Dataplane::load(&test_load_options()).expect("load the programs");
        let mut enforcer = Enforcer::new(&mut dp, &test_capacity()).expect("create the maps");
        // BPF_PROG_TEST_RUN is synchronous: no packet is in flight during a switch.
        enforcer.set_grace_period(Duration::ZERO);
        Classifier { dp, enforcer }
    });
    let Classifier { dp, enforcer } = &mut *guard;
    for (index, binding) in cfg.interfaces.iter().enumerate() {
        let mine: Vec<_> = probes.iter().filter(|p| p.0 == index).collect();
        if mine.is_empty() {
            continue;
        }
        enforcer
            .apply(&cfg, &[(TEST_RUN_IFINDEX, binding)])
            .unwrap_or_else(|e| panic!("apply of a generated file failed: {e:#}\n{toml}"));
        for &&(_, direction, packet) in &mine {
            // Each probe is judged alone: no session from an earlier probe may decide it.
            enforcer.sessions().flush().expect("flush the sessions");
            let got = run(dp, hook_for(direction), &frame_for(&packet)).expect("test run");
            let [icmp_type, _] = packet.dst_port.to_be_bytes();
            if sg_common::is_neighbour_discovery(packet.protocol, icmp_type) {
                // Step 1 of the evaluation order, before the rules `evaluate` (steps 4-7)
                // models: neighbour discovery and MLD pass whatever the rules say.
                let want = (verdict::PASS, verdict::PASS, step::NEIGHBOUR_DISCOVERY, 0);
                let got_tuple = (got.verdict, got.decision.verdict, got.decision.step, got.decision.rule_id);
                assert_eq!(
                    got_tuple, want,
                    "{}: {direction:?} {packet:?}: neighbour discovery/MLD must pass before the rules \
                     (returned, verdict, step, rule)\n{toml}",
                    binding.name
                );
                continue;
            }
            if let Err(mismatch) = compare(&cfg, binding, direction, &packet, &named(enforcer, got)) {
                panic!(
                    "kernel/reference mismatch (seed {}, large {}, small files {}): {}: {mismatch}\n{toml}",
                    input.seed, input.large, input.small_files, binding.name
                );
            }
        }
    }
}
